//! Python environments for predictors. An API without `requirements.txt` runs on the base
//! interpreter (`GYRUS_PYTHON`, else `python3`). With one, it runs in a virtual environment
//! under `GYRUS_HOME/envs/<key>`, where the key hashes the file's content and the interpreter,
//! so a second deploy with the same requirements installs nothing. Environments are built with
//! `uv` when it is available (much faster), else `venv` + pip; a `.gyrus-complete` marker is
//! written last, so a half-built environment is never used.
//!
//! ONNX APIs also need `libonnxruntime`, which comes from the `onnxruntime` wheel. It is found
//! (see [`PythonEnvs::resolve_onnx`]) through `ORT_DYLIB_PATH`, else in the API's own
//! environment when its requirements install onnxruntime, else in an environment gyrus
//! manages under `GYRUS_HOME/runtime/`, installed on first use with onnxruntime and numpy.
//! That managed environment is also the interpreter of ONNX predictors without
//! `requirements.txt` (numpy is pre-installed for predictors, as in Cortex).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::home::GyrusHome;

/// An install that takes longer than this is stopped and reported, never left hanging.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const COMPLETE_MARKER: &str = ".gyrus-complete";

/// The onnxruntime wheel gyrus installs when no library is given; the engine needs at least
/// [`gyrus_engine::MIN_LIBRARY_VERSION`].
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// What an ONNX API runs with.
#[derive(Debug, Clone)]
pub struct OnnxSetup {
    /// The Python of the predictor (unused by model APIs).
    pub python: PathBuf,
    pub library: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("no Python interpreter found ({0}); install python3 or set GYRUS_PYTHON")]
    NoPython(String),
    #[error("installing requirements.txt failed ({status}):\n{output}")]
    InstallFailed { status: String, output: String },
    #[error("{0}")]
    Io(String),
    #[error("ORT_DYLIB_PATH={0}: no such file; point it at a libonnxruntime.so, or unset it to let gyrus install ONNX Runtime")]
    BadOrtPath(String),
    #[error("installing ONNX Runtime {ONNXRUNTIME_VERSION} failed ({status}):\n{output}")]
    OnnxInstallFailed { status: String, output: String },
}

#[derive(Debug, Clone)]
pub struct BasePython {
    pub executable: PathBuf,
    pub version: String,
}

pub struct PythonEnvs {
    home: GyrusHome,
    base: Result<BasePython, String>,
    building: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl PythonEnvs {
    pub async fn discover(home: GyrusHome) -> Self {
        let base = find_base_python().await;
        match &base {
            Ok(b) => tracing::info!("python: {} ({})", b.executable.display(), b.version),
            Err(e) => tracing::warn!("no usable python: {e}"),
        }
        Self {
            home,
            base,
            building: Mutex::new(HashMap::new()),
        }
    }

    pub fn base(&self) -> Result<&BasePython, EnvError> {
        self.base
            .as_ref()
            .map_err(|e| EnvError::NoPython(e.clone()))
    }

    /// The interpreter an API in `project_dir` runs with, building its environment if needed.
    /// Installer output is appended to `log`.
    pub async fn resolve(&self, project_dir: &Path, log: &Path) -> Result<PathBuf, EnvError> {
        Ok(self
            .resolve_with(project_dir, &[], log)
            .await?
            .unwrap_or(self.base()?.executable.clone()))
    }

    /// The interpreter and ONNX Runtime library of an ONNX API. `needs_python`: the API has
    /// a predictor (ONNXPredictor), not only models.
    pub async fn resolve_onnx(
        &self,
        project_dir: &Path,
        needs_python: bool,
        log: &Path,
    ) -> Result<OnnxSetup, EnvError> {
        let given = std::env::var_os("ORT_DYLIB_PATH").filter(|s| !s.is_empty());
        if let Some(p) = &given {
            if !Path::new(p).is_file() {
                return Err(EnvError::BadOrtPath(p.to_string_lossy().into_owned()));
            }
        }
        let own_env = if needs_python || given.is_none() {
            self.resolve_with(project_dir, &["numpy"], log).await?
        } else {
            None
        };
        let own_library = own_env.as_deref().and_then(library_in_env);
        let managed =
            if (given.is_none() && own_library.is_none()) || (needs_python && own_env.is_none()) {
                Some(self.managed_onnx(log).await?)
            } else {
                None
            };
        let library = given
            .map(PathBuf::from)
            .or(own_library)
            .or_else(|| managed.as_ref().map(|m| m.library.clone()))
            .ok_or_else(|| EnvError::Io("no ONNX Runtime library".into()))?;
        let python = own_env
            .or_else(|| managed.as_ref().map(|m| m.python.clone()))
            .unwrap_or(self.base()?.executable.clone());
        Ok(OnnxSetup { python, library })
    }

    /// Only the ONNX Runtime library, for work that is no API's (validating a model at save):
    /// `ORT_DYLIB_PATH`, else the managed environment. No project's requirements are read.
    pub async fn onnx_library(&self, log: &Path) -> Result<PathBuf, EnvError> {
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|s| !s.is_empty()) {
            if !Path::new(&p).is_file() {
                return Err(EnvError::BadOrtPath(p.to_string_lossy().into_owned()));
            }
            return Ok(PathBuf::from(p));
        }
        Ok(self.managed_onnx(log).await?.library)
    }

    /// The environment gyrus manages for ONNX Runtime, installed on first use.
    async fn managed_onnx(&self, log: &Path) -> Result<OnnxSetup, EnvError> {
        let base = self.base()?.clone();
        let mut h = Sha256::new();
        h.update(base.executable.as_os_str().as_encoded_bytes());
        h.update(base.version.as_bytes());
        let key = format!(
            "onnxruntime-{ONNXRUNTIME_VERSION}-{}",
            &hex::encode(h.finalize())[..8]
        );
        let env_dir = self.home.root().join("runtime").join(&key);
        let python = env_dir.join("bin").join("python");
        let found = |dir: &Path| {
            library_in_env(dir).map(|library| OnnxSetup {
                python: python.clone(),
                library,
            })
        };
        if env_dir.join(COMPLETE_MARKER).exists() {
            if let Some(setup) = found(&env_dir) {
                return Ok(setup);
            }
        }
        let lock = {
            let mut map = self.building.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if env_dir.join(COMPLETE_MARKER).exists() {
            if let Some(setup) = found(&env_dir) {
                return Ok(setup);
            }
        }
        let _ = std::fs::remove_dir_all(&env_dir);
        if let Some(parent) = env_dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| EnvError::Io(format!("creating {}: {e}", parent.display())))?;
        }
        crate::logs::append(
            log,
            &format!(
                "installing ONNX Runtime {ONNXRUNTIME_VERSION} and numpy into {} (first use only)",
                env_dir.display()
            ),
        );
        let packages = [
            format!("onnxruntime=={ONNXRUNTIME_VERSION}"),
            "numpy".to_string(),
        ];
        let parent = env_dir.parent().unwrap_or(&env_dir).to_path_buf();
        let result = build_env(&base, &env_dir, Install::Packages(&packages), &parent, log).await;
        match result {
            Ok(()) => {}
            Err(EnvError::InstallFailed { status, output }) => {
                let _ = std::fs::remove_dir_all(&env_dir);
                return Err(EnvError::OnnxInstallFailed { status, output });
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&env_dir);
                return Err(e);
            }
        }
        let setup = found(&env_dir).ok_or_else(|| {
            EnvError::Io(format!(
                "onnxruntime was installed into {} but libonnxruntime.so was not found in it",
                env_dir.display()
            ))
        })?;
        std::fs::write(env_dir.join(COMPLETE_MARKER), b"")
            .map_err(|e| EnvError::Io(format!("writing {COMPLETE_MARKER}: {e}")))?;
        Ok(setup)
    }

    /// The interpreter of the API's requirements environment (with `extra` packages added),
    /// or `None` when the project has no requirements.txt.
    async fn resolve_with(
        &self,
        project_dir: &Path,
        extra: &[&str],
        log: &Path,
    ) -> Result<Option<PathBuf>, EnvError> {
        let base = self.base()?.clone();
        let req_path = project_dir.join("requirements.txt");
        let Ok(requirements) = std::fs::read(&req_path) else {
            return Ok(None);
        };
        let mut h = Sha256::new();
        h.update(&requirements);
        h.update(base.executable.as_os_str().as_encoded_bytes());
        h.update(base.version.as_bytes());
        for e in extra {
            h.update(b"\0");
            h.update(e.as_bytes());
        }
        let key = hex::encode(h.finalize())[..16].to_owned();
        let env_dir = self.home.envs().join(&key);
        let python = env_dir.join("bin").join("python");
        if env_dir.join(COMPLETE_MARKER).exists() {
            return Ok(Some(python));
        }

        let lock = {
            let mut map = self.building.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if env_dir.join(COMPLETE_MARKER).exists() {
            return Ok(Some(python));
        }
        let _ = std::fs::remove_dir_all(&env_dir);
        let extra: Vec<String> = extra.iter().map(|e| e.to_string()).collect();
        let install = Install::Requirements(&req_path, &extra);
        let result = build_env(&base, &env_dir, install, project_dir, log).await;
        match result {
            Ok(()) => {
                std::fs::write(env_dir.join(COMPLETE_MARKER), b"")
                    .map_err(|e| EnvError::Io(format!("writing {COMPLETE_MARKER}: {e}")))?;
                Ok(Some(python))
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&env_dir);
                Err(e)
            }
        }
    }
}

async fn find_base_python() -> Result<BasePython, String> {
    let candidate = std::env::var("GYRUS_PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".to_owned());
    let out = tokio::process::Command::new(&candidate)
        .args([
            "-c",
            "import sys; print(sys.executable); print('%d.%d.%d' % sys.version_info[:3])",
        ])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{candidate}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{candidate} exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let exe = lines.next().unwrap_or_default().trim().to_owned();
    let version = lines.next().unwrap_or_default().trim().to_owned();
    if exe.is_empty() {
        return Err(format!("{candidate} did not report sys.executable"));
    }
    Ok(BasePython {
        executable: PathBuf::from(exe),
        version,
    })
}

/// `GYRUS_UV`, `uv` on PATH, or `uv` next to the base interpreter (where `pip install uv` puts
/// it).
fn find_uv(base: &BasePython) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GYRUS_UV").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("uv"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let beside = base.executable.parent()?.join("uv");
        beside.is_file().then_some(beside)
    })
}

/// `libonnxruntime.so.*` inside an environment's onnxruntime package, if it is new enough for
/// the engine.
fn library_in_env(python_or_env: &Path) -> Option<PathBuf> {
    // An interpreter path is `<env>/bin/python`.
    let env = if python_or_env.ends_with("bin/python") {
        python_or_env.parent()?.parent()?
    } else {
        python_or_env
    };
    let lib = std::fs::read_dir(env.join("lib")).ok()?;
    for entry in lib.flatten() {
        let capi = entry.path().join("site-packages/onnxruntime/capi");
        let Ok(files) = std::fs::read_dir(&capi) else {
            continue;
        };
        for f in files.flatten() {
            let path = f.path();
            let Some(version) = gyrus_engine::library_version(&path) else {
                continue;
            };
            if (version.0, version.1) >= gyrus_engine::MIN_LIBRARY_VERSION {
                return Some(path);
            }
        }
    }
    None
}

/// What to install into a new environment.
enum Install<'a> {
    /// A project's requirements.txt, plus packages gyrus adds (numpy for ONNX predictors).
    Requirements(&'a Path, &'a [String]),
    Packages(&'a [String]),
}

async fn build_env(
    base: &BasePython,
    env_dir: &Path,
    install: Install<'_>,
    project_dir: &Path,
    log: &Path,
) -> Result<(), EnvError> {
    let env_str = env_dir.to_string_lossy().into_owned();
    let what: Vec<String> = match install {
        Install::Requirements(req, extra) => {
            let mut v = vec!["-r".to_string(), req.to_string_lossy().into_owned()];
            v.extend(extra.iter().cloned());
            v
        }
        Install::Packages(packages) => packages.to_vec(),
    };
    let py = env_dir.join("bin").join("python");
    let py_str = py.to_string_lossy().into_owned();
    let base_str = base.executable.to_string_lossy().into_owned();
    let steps: Vec<(PathBuf, Vec<String>)> = match find_uv(base) {
        Some(uv) => vec![
            (
                uv.clone(),
                vec![
                    "venv".into(),
                    "--quiet".into(),
                    "--system-site-packages".into(),
                    "--python".into(),
                    base_str,
                    env_str,
                ],
            ),
            (
                uv,
                ["pip", "install", "--python", &py_str]
                    .into_iter()
                    .map(String::from)
                    .chain(what.iter().cloned())
                    .collect(),
            ),
        ],
        None => vec![
            (
                base.executable.clone(),
                vec![
                    "-m".into(),
                    "venv".into(),
                    "--system-site-packages".into(),
                    env_str,
                ],
            ),
            (
                py,
                [
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                ]
                .into_iter()
                .map(String::from)
                .chain(what.iter().cloned())
                .collect(),
            ),
        ],
    };
    for (program, args) in steps {
        run_logged(&program, &args, project_dir, log).await?;
    }
    Ok(())
}

/// Runs an installer step, copying its output into the API log as it comes and keeping the
/// tail for the error message.
async fn run_logged(
    program: &Path,
    args: &[String],
    cwd: &Path,
    log: &Path,
) -> Result<(), EnvError> {
    let mut log_file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .await
        .map_err(|e| EnvError::Io(format!("opening {}: {e}", log.display())))?;
    let line = format!("$ {} {}\n", program.display(), args.join(" "));
    let _ = log_file.write_all(line.as_bytes()).await;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PIP_NO_INPUT", "1")
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| EnvError::InstallFailed {
            status: "could not start".into(),
            output: format!("{}: {e}", program.display()),
        })?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let collect = async {
        while let Some(l) = rx.recv().await {
            let _ = log_file.write_all(format!("{l}\n").as_bytes()).await;
            if tail.len() == 40 {
                tail.pop_front();
            }
            tail.push_back(l);
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(INSTALL_TIMEOUT, collect).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            return Err(EnvError::Io(format!(
                "waiting for {}: {e}",
                program.display()
            )))
        }
        Err(_) => {
            return Err(EnvError::InstallFailed {
                status: format!("timed out after {}s", INSTALL_TIMEOUT.as_secs()),
                output: tail.into_iter().collect::<Vec<_>>().join("\n"),
            })
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(EnvError::InstallFailed {
            status: status.to_string(),
            output: tail.into_iter().collect::<Vec<_>>().join("\n"),
        })
    }
}
