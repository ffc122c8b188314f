//! Python environments for predictors. An API without `requirements.txt` runs on the base
//! interpreter (`GYRUS_PYTHON`, else `python3`). With one, it runs in a virtual environment
//! under `GYRUS_HOME/envs/<key>`, where the key hashes the file's content and the interpreter,
//! so a second deploy with the same requirements installs nothing. Environments are built with
//! `uv` when it is available (much faster), else `venv` + pip; a `.gyrus-complete` marker is
//! written last, so a half-built environment is never used.
//!
//! ONNX and TensorFlow APIs also need their runtime's shared library, from its wheel: see
//! [`runtimes`] and [`PythonEnvs::resolve_runtime`].

pub mod preinstalled;
mod runtimes;

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

pub use runtimes::{Runtime, ONNX_RUNTIME, TENSORFLOW};

/// Told each step of an install as the installer prints it ("Resolved 32 packages in 1.9s"),
/// for `gyrus deploy` to show live.
pub type Steps<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// A `Steps` that shows nothing.
pub fn no_steps(_: &str) {}

/// What an API that loads models runs with.
#[derive(Debug, Clone)]
pub struct RuntimeSetup {
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
    #[error("{}={path}: no such file; point it at a {}, or unset it to let gyrus install {}", runtime.override_var, runtime.library_file, runtime.name)]
    BadLibraryPath {
        runtime: &'static Runtime,
        path: String,
    },
    #[error(
        "installing {} ({}) failed ({status}):\n{output}\n\
         gyrus installs it on the first deploy that needs it. To use one installed already, \
         `pip install {}` and set {} to its {} (in site-packages)",
        runtime.name, runtime.requirement(), runtime.requirement(), runtime.override_var, runtime.library_file
    )]
    RuntimeInstallFailed {
        runtime: &'static Runtime,
        status: String,
        output: String,
    },
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

    /// The interpreter an API in `project_dir` runs with, building its environment if needed
    /// (requirements.txt, and the `added` packages). Installer output is appended to `log`.
    pub async fn resolve(
        &self,
        project_dir: &Path,
        added: &[preinstalled::Added],
        log: &Path,
        steps: Steps<'_>,
    ) -> Result<PathBuf, EnvError> {
        Ok(self
            .resolve_with(project_dir, &[], added, log, steps)
            .await?
            .unwrap_or(self.base()?.executable.clone()))
    }

    /// The packages Cortex had pre-installed for `kind` that the project imports and neither
    /// its requirements.txt nor the base interpreter provides ([`preinstalled`]).
    pub async fn preinstalled(
        &self,
        kind: gyrus_spec::PredictorType,
        project_dir: &Path,
    ) -> Result<Vec<preinstalled::Added>, EnvError> {
        let scan = preinstalled::scan(self.base()?, project_dir).await?;
        let requirements = std::fs::read_to_string(project_dir.join("requirements.txt")).ok();
        let runtime = match kind {
            gyrus_spec::PredictorType::Onnx => Some(("onnxruntime", ONNX_RUNTIME.requirement())),
            gyrus_spec::PredictorType::Tensorflow => Some(("tensorflow", TENSORFLOW.requirement())),
            gyrus_spec::PredictorType::Python => None,
        };
        let mut added = preinstalled::select(kind, &scan, requirements.as_deref(), runtime.clone());
        // Without requirements.txt a model predictor runs in the managed runtime environment,
        // which has the runtime and numpy already.
        if let (None, Some((module, _))) = (&requirements, &runtime) {
            added.retain(|a| a.module != "numpy" && a.module != *module);
        }
        Ok(added)
    }

    /// The interpreter and `runtime`'s library of an API that loads models. `needs_python`:
    /// the API has a predictor (ONNXPredictor, TensorFlowPredictor), not only models.
    pub async fn resolve_runtime(
        &self,
        runtime: &'static Runtime,
        project_dir: &Path,
        needs_python: bool,
        added: &[preinstalled::Added],
        log: &Path,
        steps: Steps<'_>,
    ) -> Result<RuntimeSetup, EnvError> {
        let given = given_library(runtime)?;
        // An environment of added packages (no requirements.txt) also holds the runtime, as
        // the managed one it stands in for does, so that the predictor can still import it.
        let pinned = runtime.requirement();
        let extra: Vec<&str> = if added.is_empty() || project_dir.join("requirements.txt").exists()
        {
            vec!["numpy"]
        } else {
            vec!["numpy", pinned.as_str()]
        };
        let own_env = if needs_python || given.is_none() {
            self.resolve_with(project_dir, &extra, added, log, steps)
                .await?
        } else {
            None
        };
        let own_library = own_env.as_deref().and_then(|p| runtime.library_in_env(p));
        let managed =
            if (given.is_none() && own_library.is_none()) || (needs_python && own_env.is_none()) {
                Some(self.managed(runtime, log, steps).await?)
            } else {
                None
            };
        let library = given
            .or(own_library)
            .or_else(|| managed.as_ref().map(|m| m.library.clone()))
            .ok_or_else(|| EnvError::Io(format!("no {} library", runtime.name)))?;
        let python = own_env
            .or_else(|| managed.as_ref().map(|m| m.python.clone()))
            .unwrap_or(self.base()?.executable.clone());
        Ok(RuntimeSetup { python, library })
    }

    /// Only `runtime`'s library, for work that is no API's (validating a model at save): the
    /// override variable, else the managed environment. No project's requirements are read.
    pub async fn runtime_library(
        &self,
        runtime: &'static Runtime,
        log: &Path,
    ) -> Result<PathBuf, EnvError> {
        if let Some(p) = given_library(runtime)? {
            return Ok(p);
        }
        Ok(self.managed(runtime, log, &no_steps).await?.library)
    }

    /// The environment gyrus manages for `runtime`, installed on first use.
    async fn managed(
        &self,
        runtime: &'static Runtime,
        log: &Path,
        steps: Steps<'_>,
    ) -> Result<RuntimeSetup, EnvError> {
        let base = self.base()?.clone();
        let mut h = Sha256::new();
        h.update(base.executable.as_os_str().as_encoded_bytes());
        h.update(base.version.as_bytes());
        let key = format!(
            "{}-{}-{}",
            runtime.package,
            runtime.version,
            &hex::encode(h.finalize())[..8]
        );
        let env_dir = self.home.root().join("runtime").join(&key);
        let python = env_dir.join("bin").join("python");
        let found = |dir: &Path| {
            runtime.library_in_env(dir).map(|library| RuntimeSetup {
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
                "installing {} ({}) and numpy into {} (first use only)",
                runtime.name,
                runtime.requirement(),
                env_dir.display()
            ),
        );
        let packages = [runtime.requirement(), "numpy".to_string()];
        let parent = env_dir.parent().unwrap_or(&env_dir).to_path_buf();
        let result = build_env(
            &base,
            &env_dir,
            Install::Packages(&packages),
            &parent,
            log,
            steps,
        )
        .await;
        match result {
            Ok(()) => {}
            Err(EnvError::InstallFailed { status, output }) => {
                let _ = std::fs::remove_dir_all(&env_dir);
                return Err(EnvError::RuntimeInstallFailed {
                    runtime,
                    status,
                    output,
                });
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&env_dir);
                return Err(e);
            }
        }
        let setup = found(&env_dir).ok_or_else(|| {
            EnvError::Io(format!(
                "{} was installed into {} but {} was not found in it",
                runtime.package,
                env_dir.display(),
                runtime.library_file
            ))
        })?;
        std::fs::write(env_dir.join(COMPLETE_MARKER), b"")
            .map_err(|e| EnvError::Io(format!("writing {COMPLETE_MARKER}: {e}")))?;
        Ok(setup)
    }

    /// The interpreter of the API's environment: its requirements.txt with `extra` packages
    /// (numpy for model predictors) and the `added` ones; without requirements.txt, an
    /// environment of `extra` and `added` over the base interpreter when anything is added.
    /// `None` when the base interpreter serves as it is.
    async fn resolve_with(
        &self,
        project_dir: &Path,
        extra: &[&str],
        added: &[preinstalled::Added],
        log: &Path,
        steps: Steps<'_>,
    ) -> Result<Option<PathBuf>, EnvError> {
        let base = self.base()?.clone();
        let req_path = project_dir.join("requirements.txt");
        let requirements = std::fs::read(&req_path).ok();
        if requirements.is_none() && added.is_empty() {
            return Ok(None);
        }
        let packages: Vec<String> = extra
            .iter()
            .map(|e| e.to_string())
            .chain(added.iter().map(|a| a.package.to_string()))
            .collect();
        let mut h = Sha256::new();
        match &requirements {
            Some(r) => h.update(r),
            // Never the key of a requirements file's environment.
            None => h.update(b"\0no requirements.txt\0"),
        }
        h.update(base.executable.as_os_str().as_encoded_bytes());
        h.update(base.version.as_bytes());
        for p in &packages {
            h.update(b"\0");
            h.update(p.as_bytes());
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
        let install = match requirements {
            Some(_) => Install::Requirements(&req_path, &packages),
            None => Install::Packages(&packages),
        };
        let result = build_env(&base, &env_dir, install, project_dir, log, steps).await;
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

/// The library named by `runtime`'s override variable, if set (it must exist).
fn given_library(runtime: &'static Runtime) -> Result<Option<PathBuf>, EnvError> {
    match std::env::var_os(runtime.override_var).filter(|s| !s.is_empty()) {
        Some(p) if Path::new(&p).is_file() => Ok(Some(PathBuf::from(p))),
        Some(p) => Err(EnvError::BadLibraryPath {
            runtime,
            path: p.to_string_lossy().into_owned(),
        }),
        None => Ok(None),
    }
}

/// What to install into a new environment.
enum Install<'a> {
    /// A project's requirements.txt, plus packages gyrus adds (numpy for model predictors).
    Requirements(&'a Path, &'a [String]),
    Packages(&'a [String]),
}

async fn build_env(
    base: &BasePython,
    env_dir: &Path,
    install: Install<'_>,
    project_dir: &Path,
    log: &Path,
    steps: Steps<'_>,
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
    let commands: Vec<(PathBuf, Vec<String>)> = match find_uv(base) {
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
    for (program, args) in commands {
        run_logged(&program, &args, project_dir, log, steps).await?;
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
    steps: Steps<'_>,
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
            if let Some(step) = install_step(&l) {
                steps(step);
            }
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

/// A line of uv's or pip's output that says where the install is ("Resolved 32 packages in
/// 1.9s", "Downloading tensorflow-cpu (252.0MiB)", "Installing collected packages: ..."), as
/// opposed to one line per package.
fn install_step(line: &str) -> Option<&str> {
    const STEPS: &[&str] = &[
        "Resolved ",
        "Prepared ",
        "Installed ",
        "Uninstalled ",
        "Downloading ",
        "Downloaded ",
        "Building ",
        "Built ",
        "Collecting ",
        "Installing collected packages",
        "Successfully installed",
    ];
    let line = line.trim_end();
    STEPS
        .iter()
        .any(|s| line.starts_with(s))
        .then(|| match line.char_indices().nth(120) {
            // One line of a terminal, not a list of every package.
            Some((cut, _)) => &line[..cut],
            None => line,
        })
}

#[cfg(test)]
mod step_tests {
    #[test]
    fn steps_of_an_install() {
        use super::install_step;
        assert_eq!(
            install_step("Resolved 32 packages in 1.97s"),
            Some("Resolved 32 packages in 1.97s")
        );
        assert_eq!(
            install_step("Downloading tensorflow-cpu (252.0MiB)"),
            Some("Downloading tensorflow-cpu (252.0MiB)")
        );
        assert_eq!(install_step(" + numpy==2.4.6"), None);
        assert_eq!(install_step("Using Python 3.11.7 environment at: x"), None);
        let long = format!("Successfully installed {}", "pkg-1.0 ".repeat(40));
        assert_eq!(install_step(&long).map(|s| s.chars().count()), Some(120));
    }
}
