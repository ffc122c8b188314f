//! `gyrus-store`: the local, versioned model store under `GYRUS_HOME/models`, as
//! `docs/model-store.md` lays it out. It owns the directory layout (`<name>/<version>/`,
//! `latest`, `.staging/`), `model.yaml` and its types, version generation, tag resolution
//! (`name`, `name:latest`, full versions, unique prefixes), deletion, and the export and
//! import archives, whose import is written for hostile input: nothing reaches the store
//! before every file is checked against `model.yaml`.
//!
//! Modules: [`info`] (`model.yaml` and the model-file rule), `version` (versions and random
//! names), `store` ([`ModelStore`], [`Staging`]) and `archive` (export, import, upload
//! unpacking; the safe-extraction rules they share with the daemon are `gyrus-archive`'s).

mod archive;
pub mod info;
mod store;
mod version;

use std::path::PathBuf;

pub use info::{model_file, Context, FileEntry, ModelInfo, Signature, TensorSpec};
pub use store::{ModelStore, NewModel, Staging, StoredModel};

/// The largest model the store takes in, in bytes (all files but `model.yaml`): an import
/// whose `model.yaml` claims more is refused before anything is extracted, and the daemon
/// caps uploads at it.
pub const MAX_MODEL_BYTES: u64 = 64 << 30;

/// How many names a message lists before saying "and N more".
const LIST_AT_MOST: usize = 5;

/// Everything the store can refuse or fail at. [`StoreError::is_client_error`] separates what
/// the caller asked wrongly (a 4xx for the daemon) from what went wrong on this machine.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// A name or version breaking the tag rule; the message quotes the rule.
    #[error("{0}")]
    InvalidTag(String),
    /// No such model. `available` holds the versions of that name as full tags
    /// (`iris:c5r…`, newest first) when the name is known, else the model names in the store
    /// (no `:`), else nothing when the store is empty.
    #[error("{}", not_found_message(tag, available))]
    NotFound { tag: String, available: Vec<String> },
    /// A version prefix matching several versions (`candidates`, newest first).
    #[error("{}", ambiguous_message(tag, candidates))]
    Ambiguous {
        tag: String,
        candidates: Vec<String>,
    },
    /// An import of `name:version` that is already stored.
    #[error("{0} is already in the store; delete it first to import again")]
    Exists(String),
    /// An import or upload refused: which entry, which rule.
    #[error("{0}")]
    BadArchive(String),
    /// A directory with no model file, or more than one candidate; `found` is what it holds.
    #[error("{}", no_model_file_message(dir, found))]
    NoModelFile { dir: PathBuf, found: Vec<String> },
    /// A stored file the store cannot read or make sense of.
    #[error("{}: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether the caller is at fault (a bad tag or archive, a missing or existing model)
    /// rather than this machine (I/O, a corrupt store).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            StoreError::InvalidTag(_)
                | StoreError::NotFound { .. }
                | StoreError::Ambiguous { .. }
                | StoreError::Exists(_)
                | StoreError::BadArchive(_)
                | StoreError::NoModelFile { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// `a, b, c, d, e and 3 more`.
fn short_list(items: &[String]) -> String {
    let shown = items[..items.len().min(LIST_AT_MOST)].join(", ");
    match items.len().saturating_sub(LIST_AT_MOST) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn not_found_message(tag: &str, available: &[String]) -> String {
    let name = tag.split(':').next().unwrap_or(tag);
    let hint = if available.is_empty() {
        "the store is empty; save one with `gyrus models save`".to_string()
    } else if available.iter().any(|a| a.contains(':')) {
        format!(
            "versions of {name}, newest first: {}",
            short_list(available)
        )
    } else {
        let names = available.iter().map(String::as_str);
        format!(
            "models in the store: {}{}",
            short_list(available),
            gyrus_spec::suggest::did_you_mean(name, names)
        )
    };
    format!("model {tag:?} is not in the store; {hint}")
}

fn ambiguous_message(tag: &str, candidates: &[String]) -> String {
    let (name, prefix) = tag.split_once(':').unwrap_or((tag, ""));
    format!(
        "version prefix {prefix:?} of {name} matches {}; give more characters",
        short_list(candidates)
    )
}

fn no_model_file_message(dir: &std::path::Path, found: &[String]) -> String {
    let found = if found.is_empty() {
        "found nothing".to_string()
    } else {
        format!("found {}", short_list_long(found))
    };
    format!(
        "no model file in {}: expected an ONNX model ({} or exactly one top-level *.onnx \
         file) or a TensorFlow SavedModel ({} with its variables/); {found}",
        dir.display(),
        info::SAVED_MODEL,
        info::TF_SAVED_MODEL_PB
    )
}

/// Like [`short_list`] with room for a directory listing.
fn short_list_long(items: &[String]) -> String {
    const AT_MOST: usize = 10;
    let shown = items[..items.len().min(AT_MOST)].join(", ");
    match items.len().saturating_sub(AT_MOST) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let versions: Vec<String> = (1..=8).map(|i| format!("iris:v{i}")).collect();
        assert_eq!(
            StoreError::NotFound {
                tag: "iris:abc".into(),
                available: versions
            }
            .to_string(),
            "model \"iris:abc\" is not in the store; versions of iris, newest first: \
             iris:v1, iris:v2, iris:v3, iris:v4, iris:v5 and 3 more"
        );
        assert_eq!(
            StoreError::NotFound {
                tag: "irsi:latest".into(),
                available: vec!["iris".into(), "resnet".into()]
            }
            .to_string(),
            "model \"irsi:latest\" is not in the store; models in the store: iris, resnet; \
             did you mean \"iris\"?"
        );
        assert_eq!(
            StoreError::NotFound {
                tag: "iris:latest".into(),
                available: vec![]
            }
            .to_string(),
            "model \"iris:latest\" is not in the store; the store is empty; save one with \
             `gyrus models save`"
        );
        assert_eq!(
            StoreError::Ambiguous {
                tag: "iris:ab".into(),
                candidates: vec!["abcd".into(), "abef".into()]
            }
            .to_string(),
            "version prefix \"ab\" of iris matches abcd, abef; give more characters"
        );
        assert_eq!(
            StoreError::Exists("iris:xyz".into()).to_string(),
            "iris:xyz is already in the store; delete it first to import again"
        );
        assert!(StoreError::Exists("a:b".into()).is_client_error());
        assert!(!StoreError::io("x", std::io::Error::other("y")).is_client_error());
        assert!(!StoreError::Corrupt {
            path: "p".into(),
            reason: "r".into()
        }
        .is_client_error());
    }
}
