//! The files behind a submission's `file_path_lister` or `delimited_files` (Cortex's field
//! names: the list is still called `s3_paths`): local paths, `file://` URLs, and `s3://`,
//! `gs://`, `az://` and `https://` URLs read through `gyrus-remote`'s object storage.
//!
//! Each path is one file, or a directory / prefix whose files are all taken, recursively and
//! in name order. `includes` and `excludes` are glob patterns; a file is kept when it matches
//! one of the `includes` (or there are none) and none of the `excludes`. A pattern is tried
//! against the file's full path or URL and against its path below the listed directory, and
//! `*` also matches `/`, so `*.jsonl`, `**/*.jsonl` and `s3://bucket/in/*.jsonl` all mean what
//! they look like.
//!
//! `file_path_lister` makes each file one item (its path or URL, as the predictor would open
//! it); `delimited_files` reads each file as JSON lines, one item per non-empty line.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use gyrus_remote::FetchOptions;
use serde_json::{Map, Value};

use super::submission::{SubmissionError, MAX_ITEMS};

/// The most bytes of JSON lines one job may read, over all its files.
pub const MAX_DELIMITED_BYTES: u64 = 256 * 1024 * 1024;

/// Which of Cortex's two file sources a submission used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilesKind {
    /// `file_path_lister`: an item per file, the file's path or URL.
    PathLister,
    /// `delimited_files`: an item per line of JSON.
    Delimited,
}

impl FilesKind {
    pub fn field(self) -> &'static str {
        match self {
            FilesKind::PathLister => "file_path_lister",
            FilesKind::Delimited => "delimited_files",
        }
    }
}

/// A checked `file_path_lister` or `delimited_files` object.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSource {
    pub kind: FilesKind,
    pub paths: Vec<String>,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
}

/// One file a source names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundFile {
    /// The absolute path of a local file, or the object's URL.
    pub name: String,
    pub size: u64,
    local: bool,
}

fn invalid(message: impl Into<String>) -> SubmissionError {
    SubmissionError::Invalid(message.into())
}

fn strings(
    map: &Map<String, Value>,
    field: &str,
    key: &str,
) -> Result<Vec<String>, SubmissionError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(values)) => values
            .iter()
            .enumerate()
            .map(|(n, v)| match v {
                Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                other => Err(invalid(format!(
                    "{field}.{key}[{n}] must be a non-empty string, not {other}"
                ))),
            })
            .collect(),
        Some(other) => Err(invalid(format!(
            "{field}.{key} must be a list of strings, not {other}"
        ))),
    }
}

impl FileSource {
    /// Checks the object; returns it with its `batch_size`.
    pub fn parse(
        kind: FilesKind,
        value: Option<Value>,
    ) -> Result<(FileSource, u64), SubmissionError> {
        let field = kind.field();
        let Some(Value::Object(map)) = value else {
            return Err(invalid(format!(
                "{field} must be an object: {{\"s3_paths\": [...], \"includes\": [...], \"excludes\": [...], \"batch_size\": n}}"
            )));
        };
        let known = ["s3_paths", "includes", "excludes", "batch_size"];
        if let Some(unknown) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown field {unknown:?} in {field}; expected {}",
                known.join(", ")
            )));
        }
        let batch_size = match map.get("batch_size").and_then(Value::as_u64) {
            Some(n) if n > 0 => n,
            _ if map.get("batch_size").is_none() => {
                return Err(invalid(format!("{field}.batch_size is required")))
            }
            _ => {
                return Err(invalid(format!(
                    "{field}.batch_size must be a whole number of at least 1, not {}",
                    map["batch_size"]
                )))
            }
        };
        let paths = strings(&map, field, "s3_paths")?;
        if paths.is_empty() {
            return Err(invalid(format!(
                "{field}.s3_paths is required: the files, directories or URL prefixes to read"
            )));
        }
        for (n, path) in paths.iter().enumerate() {
            check_path(path).map_err(|why| invalid(format!("{field}.s3_paths[{n}] {why}")))?;
        }
        let source = FileSource {
            kind,
            includes: strings(&map, field, "includes")?,
            excludes: strings(&map, field, "excludes")?,
            paths,
        };
        source.filter()?;
        Ok((source, batch_size))
    }

    fn filter(&self) -> Result<Filter, SubmissionError> {
        let field = self.kind.field();
        let set = |key: &str, patterns: &[String]| -> Result<GlobSet, SubmissionError> {
            let mut builder = GlobSetBuilder::new();
            for (n, pattern) in patterns.iter().enumerate() {
                let glob = GlobBuilder::new(pattern)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| {
                        invalid(format!(
                            "{field}.{key}[{n}] {pattern:?} is not a glob pattern: {}",
                            e.kind()
                        ))
                    })?;
                builder.add(glob);
            }
            builder
                .build()
                .map_err(|e| invalid(format!("{field}.{key}: {e}")))
        };
        Ok(Filter {
            includes: (!self.includes.is_empty())
                .then(|| set("includes", &self.includes))
                .transpose()?,
            excludes: set("excludes", &self.excludes)?,
        })
    }

    /// Every file the source names, after `includes` and `excludes`, in the order of
    /// `s3_paths` and by name within each.
    pub async fn list(&self, opts: &FetchOptions) -> Result<Vec<FoundFile>, SubmissionError> {
        let field = self.kind.field();
        let filter = self.filter()?;
        let mut found = Vec::new();
        for (n, raw) in self.paths.iter().enumerate() {
            let at = format!("{field}.s3_paths[{n}]");
            let listed = match local_path(raw) {
                Some(path) => {
                    let here = at.clone();
                    tokio::task::spawn_blocking(move || list_local(&path, &here))
                        .await
                        .map_err(|e| invalid(format!("{at}: {e}")))??
                }
                None => gyrus_remote::list(raw, opts)
                    .await
                    .map_err(|source| SubmissionError::Fetch {
                        at: at.clone(),
                        source,
                    })?
                    .into_iter()
                    .map(|o| FoundFile {
                        name: o.url,
                        size: o.size,
                        local: false,
                    })
                    .collect(),
            };
            let root = match local_path(raw) {
                Some(path) => path.display().to_string(),
                None => raw.clone(),
            };
            let root = root.trim_end_matches('/');
            let before = found.len();
            for file in listed {
                let relative = file
                    .name
                    .strip_prefix(root)
                    .map(|r| r.trim_start_matches('/'))
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| file_name(&file.name));
                if filter.keeps(&file.name, relative) {
                    found.push(file);
                }
                if found.len() > MAX_ITEMS {
                    return Err(SubmissionError::TooLarge {
                        what: format!("{field}.s3_paths"),
                        actual: format!("more than {MAX_ITEMS} files"),
                        limit: format!("{MAX_ITEMS} items"),
                    });
                }
            }
            if found.len() == before {
                return Err(invalid(format!(
                    "{at} {raw:?} has no files{}",
                    if self.includes.is_empty() && self.excludes.is_empty() {
                        String::new()
                    } else {
                        " that match includes/excludes".to_owned()
                    }
                )));
            }
        }
        Ok(found)
    }

    /// The job's items from its files: their names for `file_path_lister`, their JSON lines
    /// for `delimited_files`.
    pub async fn items(
        &self,
        files: &[FoundFile],
        opts: &FetchOptions,
    ) -> Result<Vec<Value>, SubmissionError> {
        if self.kind == FilesKind::PathLister {
            return Ok(files
                .iter()
                .map(|f| Value::String(f.name.clone()))
                .collect());
        }
        let total: u64 = files.iter().map(|f| f.size).sum();
        if total > MAX_DELIMITED_BYTES {
            return Err(too_many_bytes(total));
        }
        let mut items = Vec::new();
        let mut read: u64 = 0;
        for file in files {
            let left = MAX_DELIMITED_BYTES - read;
            let bytes = if file.local {
                let path = PathBuf::from(&file.name);
                tokio::task::spawn_blocking(move || read_local(&path, left))
                    .await
                    .map_err(|e| invalid(format!("{}: {e}", file.name)))??
            } else {
                gyrus_remote::read(&file.name, opts, left)
                    .await
                    .map_err(|source| match source {
                        gyrus_remote::FetchError::TooLarge { size, .. } => {
                            too_many_bytes(read + size)
                        }
                        source => SubmissionError::Fetch {
                            at: "delimited_files".into(),
                            source,
                        },
                    })?
                    .to_vec()
            };
            read += bytes.len() as u64;
            json_lines(&file.name, &bytes, &mut items)?;
        }
        Ok(items)
    }
}

fn too_many_bytes(total: u64) -> SubmissionError {
    SubmissionError::TooLarge {
        what: "the files of delimited_files".into(),
        actual: format!("{total} bytes"),
        limit: format!("{MAX_DELIMITED_BYTES} bytes (256 MiB)"),
    }
}

/// Appends the items of one JSON-lines file, naming the file and line of a bad one.
fn json_lines(name: &str, bytes: &[u8], items: &mut Vec<Value>) -> Result<(), SubmissionError> {
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = serde_json::from_slice(line).map_err(|e| {
            invalid(format!(
                "{name}:{}: not a line of JSON ({e}); delimited_files are JSON lines, one item per line",
                n + 1
            ))
        })?;
        items.push(item);
        if items.len() > MAX_ITEMS {
            return Err(SubmissionError::TooLarge {
                what: "the lines of delimited_files".into(),
                actual: format!("more than {MAX_ITEMS} items"),
                limit: format!("{MAX_ITEMS} items"),
            });
        }
    }
    Ok(())
}

struct Filter {
    includes: Option<GlobSet>,
    excludes: GlobSet,
}

impl Filter {
    fn keeps(&self, full: &str, relative: &str) -> bool {
        let matches = |set: &GlobSet| set.is_match(full) || set.is_match(relative);
        self.includes.as_ref().is_none_or(matches) && !matches(&self.excludes)
    }
}

fn file_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// The local path a source names: a plain path or a `file://` URL. `None` for other URLs.
fn local_path(raw: &str) -> Option<PathBuf> {
    // Rebuilt from its components, so "dir/" and "dir//x" name files as "dir/x".
    if let Some(rest) = raw.strip_prefix("file://") {
        return Some(Path::new(rest).components().collect());
    }
    (!raw.contains("://")).then(|| Path::new(raw).components().collect())
}

/// Why a path cannot be used, before anything is read.
fn check_path(raw: &str) -> Result<(), String> {
    match local_path(raw) {
        Some(path) if !path.is_absolute() => Err(format!(
            "{raw:?} is a relative path; give an absolute path or a file:// URL (the daemon does not know your working directory; `gyrus job submit` makes relative paths absolute)"
        )),
        Some(_) => Ok(()),
        None => {
            let scheme = raw.split("://").next().unwrap_or("");
            if gyrus_spec::MODEL_URL_SCHEMES.contains(&scheme) {
                Ok(())
            } else {
                Err(format!(
                    "{raw:?} has an unsupported scheme {scheme:?}; use a local path, file://, or {}",
                    gyrus_spec::model_url_schemes_text()
                ))
            }
        }
    }
}

fn list_local(path: &Path, at: &str) -> Result<Vec<FoundFile>, SubmissionError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(format!("{at}: cannot read {}: {e}", path.display())))?;
    if meta.is_file() {
        return Ok(vec![FoundFile {
            name: path.display().to_string(),
            size: meta.len(),
            local: true,
        }]);
    }
    let mut files = Vec::new();
    // Symbolic links to directories are not followed, so a link loop cannot list forever.
    for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
        let entry =
            entry.map_err(|e| invalid(format!("{at}: cannot list {}: {e}", path.display())))?;
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if meta.is_file() {
            files.push(FoundFile {
                name: entry.path().display().to_string(),
                size: meta.len(),
                local: true,
            });
            if files.len() > MAX_ITEMS {
                break;
            }
        }
    }
    Ok(files)
}

fn read_local(path: &Path, limit: u64) -> Result<Vec<u8>, SubmissionError> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > limit {
        return Err(too_many_bytes(MAX_DELIMITED_BYTES + 1));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source(v: Value) -> Result<FileSource, String> {
        FileSource::parse(FilesKind::Delimited, Some(v))
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn local_directories_are_listed_filtered_and_read_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("in/sub")).unwrap();
        std::fs::write(root.join("in/a.jsonl"), "[1, 2]\n\n{\"x\": 3}\r\n").unwrap();
        std::fs::write(root.join("in/sub/b.jsonl"), "4\n").unwrap();
        std::fs::write(root.join("in/skip.jsonl"), "5\n").unwrap();
        std::fs::write(root.join("in/notes.txt"), "not json\n").unwrap();
        let s = source(json!({
            "s3_paths": [format!("file://{}/in/", root.display())],
            "includes": ["*.jsonl"], "excludes": ["skip*"], "batch_size": 2
        }))
        .unwrap();
        let opts = FetchOptions::default();
        let files = s.list(&opts).await.unwrap();
        let names: Vec<_> = files.iter().map(|f| file_name(&f.name)).collect();
        assert_eq!(names, ["a.jsonl", "b.jsonl"]);
        let items = s.items(&files, &opts).await.unwrap();
        assert_eq!(items, vec![json!([1, 2]), json!({"x": 3}), json!(4)]);

        let lister = FileSource {
            kind: FilesKind::PathLister,
            ..s.clone()
        };
        let paths = lister.items(&files, &opts).await.unwrap();
        assert_eq!(
            paths[1],
            json!(root.join("in/sub/b.jsonl").display().to_string())
        );

        // A bad line is named by file and line.
        let bad = FileSource {
            includes: vec![],
            excludes: vec!["*.jsonl".into()],
            ..s.clone()
        };
        let files = bad.list(&opts).await.unwrap();
        let e = bad.items(&files, &opts).await.unwrap_err().to_string();
        assert!(e.ends_with("notes.txt:1: not a line of JSON (expected ident at line 1 column 2); delimited_files are JSON lines, one item per line"), "{e}");

        // Nothing left after the filters is an error naming the path.
        let none = FileSource {
            includes: vec!["*.csv".into()],
            ..s
        };
        let e = none.list(&opts).await.unwrap_err().to_string();
        assert!(
            e.contains("has no files that match includes/excludes"),
            "{e}"
        );
    }

    #[test]
    fn every_mistake_is_named() {
        for (body, wanted) in [
            (
                json!({"s3_paths": ["/d"]}),
                "delimited_files.batch_size is required",
            ),
            (
                json!({"s3_paths": ["/d"], "batch_size": 0}),
                "delimited_files.batch_size must be a whole number of at least 1, not 0",
            ),
            (
                json!({"batch_size": 1}),
                "delimited_files.s3_paths is required",
            ),
            (
                json!({"s3_paths": ["data/"], "batch_size": 1}),
                "delimited_files.s3_paths[0] \"data/\" is a relative path",
            ),
            (
                json!({"s3_paths": ["ftp://h/x"], "batch_size": 1}),
                "has an unsupported scheme \"ftp\"",
            ),
            (
                json!({"s3_paths": ["/d"], "includes": ["a[b"], "batch_size": 1}),
                "delimited_files.includes[0] \"a[b\" is not a glob pattern",
            ),
            (
                json!({"s3_paths": ["/d"], "excludes": "x", "batch_size": 1}),
                "delimited_files.excludes must be a list of strings",
            ),
            (
                json!({"s3_paths": ["/d"], "batch_size": 1, "paths": []}),
                "unknown field \"paths\" in delimited_files",
            ),
        ] {
            let got = source(body.clone()).err().unwrap_or_default();
            assert!(
                got.contains(wanted),
                "{body}: {got:?} should contain {wanted:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_local_path_is_named() {
        let s = source(json!({"s3_paths": ["/nonexistent/gyrus/in"], "batch_size": 1})).unwrap();
        let e = s
            .list(&FetchOptions::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("delimited_files.s3_paths[0]: cannot read /nonexistent/gyrus/in:"),
            "{e}"
        );
    }
}
