//! What an extraction can refuse or fail at: which entry, which rule.

use std::io;

use crate::{Kind, PathError};

/// Why an extraction stopped. Every variant but [`ArchiveError::Write`] is the archive's fault
/// (see [`ArchiveError::is_archive_fault`]); callers map them to their own error types.
///
/// `entry` is the entry's name as the archive spells it (lossily decoded, a directory's
/// trailing `/` kept), except in [`ArchiveError::Write`], which names the checked path written.
/// The messages start with `entry "<name>"` where they concern one entry, so a caller can put
/// its own word in front ("upload entry …").
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The stream is not a valid tar (or gzip): a bad header, a truncated stream, a bad
    /// checksum. `entry` is set when it broke inside that entry's data.
    #[error("{}", malformed(entry.as_deref(), source))]
    Malformed {
        entry: Option<String>,
        #[source]
        source: io::Error,
    },
    /// More data than the entries announce: over [`crate::HEADER_ALLOWANCE`] of headers (long
    /// names, pax records) before one entry, or that much data after the end of the archive.
    #[error(
        "the archive holds more than its entries announce (over 64 KiB of headers for one \
         entry, or data after the end of the tar)"
    )]
    Unannounced,
    /// The (decompressed) stream is longer than [`crate::Limits::stream`].
    #[error("the archive expands to more than {limit} bytes")]
    StreamTooLong { limit: u64 },
    /// More entries than [`crate::Limits::entries`].
    #[error("the archive has more than {limit} entries")]
    TooManyEntries { limit: usize },
    /// The entry's path breaks the path rule ([`crate::check_path`]).
    #[error("entry {entry:?}: {reason}")]
    Path {
        entry: String,
        kind: Kind,
        reason: PathError,
    },
    /// A link, hard link, device, FIFO or any other kind of entry but a regular file or a
    /// directory; `kind` says which, in words ("symbolic link").
    #[error("entry {entry:?} is a {kind}; only regular files and directories are allowed")]
    Kind { entry: String, kind: String },
    /// A directory entry announcing data.
    #[error("entry {entry:?} is a directory with {size} bytes of data")]
    DirWithData { entry: String, size: u64 },
    /// A file entry whose path an earlier entry already wrote.
    #[error("entry {entry:?} appears twice")]
    Duplicate { entry: String },
    /// A file where an earlier entry made a directory, or the reverse.
    #[error("entry {entry:?} {clash}")]
    Clash { entry: String, clash: Clash },
    /// The entry would take the bytes written past [`crate::Limits::bytes`]; refused on its
    /// announced size before any of its data is read, and counted again as it is written.
    #[error("entry {entry:?} takes the bytes written past the limit of {limit}")]
    TooLarge { entry: String, limit: u64 },
    /// An entry read into memory announces more than the caller takes.
    #[error("entry {entry:?} is {size} bytes; at most {max} are read")]
    TooLong { entry: String, size: u64, max: u64 },
    /// The archive ends inside the entry's data.
    #[error("entry {entry:?} is truncated: {copied} of its {size} bytes are in the archive")]
    Truncated {
        entry: String,
        copied: u64,
        size: u64,
    },
    /// The file system refused to create or write what the entry needs. The path rule and the
    /// clash checks have passed, so this is the destination's doing (a full disk, missing
    /// permissions, something already in the destination), not the archive's.
    #[error("entry {entry:?} cannot be written: {source}")]
    Write {
        entry: String,
        #[source]
        source: io::Error,
    },
}

fn malformed(entry: Option<&str>, source: &io::Error) -> String {
    match entry {
        Some(entry) => format!("entry {entry:?}: {source}"),
        None => source.to_string(),
    }
}

/// How an entry clashes with what earlier entries made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Clash {
    /// A file entry at a path an earlier entry made a directory (itself or as a parent).
    FileOverDir,
    /// A directory entry at the path of an earlier file.
    DirOverFile,
    /// An entry whose parent (the path held here) is an earlier file.
    InsideFile(String),
}

impl std::fmt::Display for Clash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Clash::FileOverDir => {
                f.write_str("is a file, but an earlier entry made it a directory")
            }
            Clash::DirOverFile => f.write_str("is a directory but also a file"),
            Clash::InsideFile(file) => write!(f, "lies inside {file:?}, which is a file"),
        }
    }
}

impl ArchiveError {
    /// Whether the archive is at fault (a client error) rather than the destination.
    pub fn is_archive_fault(&self) -> bool {
        !matches!(self, ArchiveError::Write { .. })
    }

    /// The entry the error concerns, if one.
    pub fn entry(&self) -> Option<&str> {
        match self {
            ArchiveError::Malformed { entry, .. } => entry.as_deref(),
            ArchiveError::Unannounced
            | ArchiveError::StreamTooLong { .. }
            | ArchiveError::TooManyEntries { .. } => None,
            ArchiveError::Path { entry, .. }
            | ArchiveError::Kind { entry, .. }
            | ArchiveError::DirWithData { entry, .. }
            | ArchiveError::Duplicate { entry }
            | ArchiveError::Clash { entry, .. }
            | ArchiveError::TooLarge { entry, .. }
            | ArchiveError::TooLong { entry, .. }
            | ArchiveError::Truncated { entry, .. }
            | ArchiveError::Write { entry, .. } => Some(entry),
        }
    }
}
