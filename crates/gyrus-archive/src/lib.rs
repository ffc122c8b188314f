//! `gyrus-archive`: safe extraction of tar archives into a directory, for every archive gyrus
//! accepts (the project archives of `gyrus deploy`, model export archives, the uploads of
//! `gyrus models save`). Archives are hostile input; the rules are the same for all of them:
//!
//! - **Paths** ([`check_path`]): UTF-8, relative, '/'-separated normal components: no absolute
//!   path, no `..`, `.` or empty component, no NUL, no backslash, at most
//!   [`MAX_COMPONENT_BYTES`] a component and [`MAX_PATH_BYTES`] in all. Nothing is normalised:
//!   a name is taken as written or refused. A directory entry may end in one `/`.
//! - **Kinds**: regular files and directories only. Symbolic and hard links, devices, FIFOs,
//!   sparse and contiguous files, pax global headers are refused, naming the entry.
//! - **Bytes**: one budget ([`Limits::bytes`]) of bytes actually written, counted as they are
//!   written; an entry's announced size ([`tar::Entry::size`], a PAX `size` included) is
//!   checked against what is left before any of its data is read.
//! - **Entries**: at most [`Limits::entries`] (files and directories: each costs an inode).
//! - **The stream**: the (decompressed) tar stream may hold at most [`Limits::stream`] bytes,
//!   and no more than an entry announces: at most [`HEADER_ALLOWANCE`] of headers (long names,
//!   pax records) before each entry and after the end of the archive. Reading past either is
//!   an error, never an early end, so a gzip bomb is refused after a few headers; what is left
//!   after the end of the archive is read (bounded) so a gzip checksum is verified.
//! - **Names clash** ([`Clash`]): a file where an earlier entry made a directory, a directory
//!   or file inside an earlier file, a file twice. These are the archive's fault, told before
//!   the file system is asked, unlike a file-system error on the destination
//!   ([`ArchiveError::Write`]).
//!
//! Callers drive the extraction entry by entry ([`Extractor::entries`],
//! [`Entries::next_entry`]), so they can handle special entries themselves: read one into
//! memory instead of writing it ([`Entry::read_to_end`]), check an entry against a manifest
//! before it is written ([`Entry::admit`], then [`Entry::extract_with`] to hash what is
//! written), or refuse it. Without a destination (`dest` `None`) the same checks run and
//! nothing is written. Errors are typed ([`ArchiveError`]: which entry, which rule) for callers
//! to map to their own.
//!
//! ```
//! use gyrus_archive::{ArchiveError, Extractor, Kind, Limits};
//!
//! fn unpack(gz: &[u8], dest: &std::path::Path) -> Result<Option<Vec<u8>>, ArchiveError> {
//!     let mut archive = Extractor::gzip(gz, Some(dest), Limits::new(1 << 30, 10_000));
//!     let mut config = None;
//!     let mut entries = archive.entries()?;
//!     while let Some(entry) = entries.next_entry()? {
//!         if entry.kind() == Kind::File && entry.path() == "config.yaml" {
//!             config = Some(entry.read_to_end(1 << 20)?); // kept in memory, not written
//!         } else {
//!             entry.extract()?;
//!         }
//!     }
//!     archive.finish()?;
//!     Ok(config)
//! }
//! # let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), Default::default()));
//! # for (name, data) in [("config.yaml", &b"a: 1"[..]), ("src/main.py", b"print(1)")] {
//! #     let mut header = tar::Header::new_gnu();
//! #     header.set_size(data.len() as u64);
//! #     tar.append_data(&mut header, name, data).unwrap();
//! # }
//! # let gz = tar.into_inner().unwrap().finish().unwrap();
//! # let dir = tempfile::tempdir().unwrap();
//! assert_eq!(unpack(&gz, dir.path()).unwrap().unwrap(), b"a: 1");
//! assert!(dir.path().join("src/main.py").is_file());
//! assert!(!dir.path().join("config.yaml").exists());
//! ```

mod error;
mod meter;
mod path;

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;

pub use error::{ArchiveError, Clash};
use meter::{allow, read_error, Meter, Metered};
pub use path::{ancestors, check_path, PathError, MAX_COMPONENT_BYTES, MAX_PATH_BYTES};

/// Bytes of the stream allowed past the end of an accepted entry's data: the next entry's
/// header blocks (with long names and pax records), or the end-of-archive blocks and record
/// padding.
pub const HEADER_ALLOWANCE: u64 = 64 * 1024;
const BLOCK: u64 = 512;

/// What an extraction may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of file data written in all.
    pub bytes: u64,
    /// Entries (files and directories), counting those the caller handles itself.
    pub entries: usize,
    /// Bytes of the (decompressed) tar stream in all: headers, padding, the data of every
    /// entry whether written, read into memory or skipped.
    pub stream: u64,
}

impl Limits {
    /// What one entry may add to the stream besides its data: a header, an extension header
    /// with a path of [`MAX_PATH_BYTES`], and padding.
    pub const PER_ENTRY_OVERHEAD: u64 = 8 * 1024;
    /// What the stream may hold besides the entries' overhead and the files written: entries
    /// read into memory, the end-of-archive blocks.
    pub const BASE_OVERHEAD: u64 = 4 * 1024 * 1024;

    /// `bytes` written and `entries` at most, and a stream of at most what those take with
    /// their headers ([`Self::PER_ENTRY_OVERHEAD`] each) and [`Self::BASE_OVERHEAD`].
    pub fn new(bytes: u64, entries: usize) -> Self {
        let overhead = u64::try_from(entries)
            .unwrap_or(u64::MAX)
            .saturating_mul(Self::PER_ENTRY_OVERHEAD);
        Self {
            bytes,
            entries,
            stream: bytes
                .saturating_add(overhead)
                .saturating_add(Self::BASE_OVERHEAD),
        }
    }
}

/// The kind of an accepted entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::File => "regular file",
            Kind::Dir => "directory",
        })
    }
}

/// What an extraction did, once [`Extractor::finish`] has read the stream to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Entries in the archive.
    pub entries: usize,
    /// Bytes of file data written (or, without a destination, that would have been).
    pub written: u64,
}

/// Extracts one tar stream. Create it with [`Extractor::new`] (an uncompressed tar) or
/// [`Extractor::gzip`], walk [`Extractor::entries`] to its end, then call
/// [`Extractor::finish`].
pub struct Extractor<R: Read> {
    tar: tar::Archive<Metered<R>>,
    meter: Rc<Cell<Meter>>,
    state: State,
}

impl<R: Read> Extractor<GzDecoder<R>> {
    /// Extracts a gzip-compressed tar; the limits count decompressed bytes.
    pub fn gzip(input: R, dest: Option<&Path>, limits: Limits) -> Self {
        Extractor::new(GzDecoder::new(input), dest, limits)
    }
}

impl<R: Read> Extractor<R> {
    /// Extracts the tar `input` into `dest`, which should be a new, empty directory; with
    /// `None`, every check runs and nothing is written.
    pub fn new(input: R, dest: Option<&Path>, limits: Limits) -> Self {
        let meter = Rc::new(Cell::new(Meter {
            read: 0,
            allowed: HEADER_ALLOWANCE,
            limit: limits.stream,
            fault: None,
        }));
        Extractor {
            tar: tar::Archive::new(Metered {
                inner: input,
                meter: Rc::clone(&meter),
            }),
            meter,
            state: State {
                dest: dest.map(Path::to_path_buf),
                limits,
                sync: false,
                header_modes: false,
                files: HashSet::new(),
                dirs: HashSet::new(),
                written: 0,
                count: 0,
            },
        }
    }

    /// Flushes every file to disk once written (`fsync`), for a tree that is renamed into
    /// place afterwards.
    pub fn sync_files(mut self, sync: bool) -> Self {
        self.state.sync = sync;
        self
    }

    /// Gives files their header's permission bits, masked to `0o755` with owner read and write
    /// (`mode & 0o755 | 0o600`), rather than the default of a new file.
    pub fn header_modes(mut self, keep: bool) -> Self {
        self.state.header_modes = keep;
        self
    }

    /// The entries, one at a time. Call once.
    pub fn entries(&mut self) -> Result<Entries<'_, R>, ArchiveError> {
        let inner = self
            .tar
            .entries()
            .map_err(|e| read_error(&self.meter, None, e))?;
        Ok(Entries {
            inner,
            meter: &self.meter,
            state: &mut self.state,
            pending: None,
        })
    }

    /// Reads what follows the end of the archive (bounded by [`HEADER_ALLOWANCE`]), so that a
    /// gzip stream's checksum is verified and data after the end is refused. Call once
    /// [`Entries::next_entry`] has returned `None`.
    pub fn finish(self) -> Result<Summary, ArchiveError> {
        let Extractor { tar, meter, state } = self;
        let mut rest = tar.into_inner();
        io::copy(&mut rest, &mut io::sink()).map_err(|e| read_error(&meter, None, e))?;
        Ok(Summary {
            entries: state.count,
            written: state.written,
        })
    }
}

/// The entries of an [`Extractor`]; see [`Entries::next_entry`].
pub struct Entries<'a, R: Read> {
    inner: tar::Entries<'a, Metered<R>>,
    meter: &'a Cell<Meter>,
    state: &'a mut State,
    /// Where the data of the entry last returned starts, and its size: read past it (as
    /// skipped) if the caller did not handle it.
    pending: Option<(u64, u64)>,
}

impl<'a, R: Read> Entries<'a, R> {
    /// The next entry, its kind and path checked (and the entry count), or `None` at the end
    /// of the archive. The caller extracts it ([`Entry::extract`]), reads it into memory
    /// ([`Entry::read_to_end`]) or drops it, which skips it: its data is read past (within
    /// [`Limits::stream`]) and nothing is recorded.
    pub fn next_entry(&mut self) -> Result<Option<Entry<'_, 'a, R>>, ArchiveError> {
        if let Some((at, size)) = self.pending.take() {
            allow(self.meter, at, size);
        }
        let inner = match self.inner.next() {
            None => return Ok(None),
            Some(entry) => entry.map_err(|e| read_error(self.meter, None, e))?,
        };
        self.state.count += 1;
        if self.state.count > self.state.limits.entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.state.limits.entries,
            });
        }
        let raw = inner.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = match inner.header().entry_type() {
            EntryType::Regular => Kind::File,
            EntryType::Directory => Kind::Dir,
            other => {
                return Err(ArchiveError::Kind {
                    entry: name,
                    kind: kind_name(other),
                })
            }
        };
        let trimmed = match kind {
            Kind::Dir => raw.strip_suffix(b"/").unwrap_or(&raw),
            Kind::File => &raw[..],
        };
        let path = match check_path(trimmed) {
            Ok(path) => path.to_owned(),
            Err(reason) => {
                return Err(ArchiveError::Path {
                    entry: name,
                    kind,
                    reason,
                })
            }
        };
        let size = inner.size();
        self.pending = Some((inner.raw_file_position(), size));
        Ok(Some(Entry {
            inner,
            name,
            path,
            kind,
            size,
            admitted: false,
            state: self.state,
            meter: self.meter,
        }))
    }

    /// Lowers the budget of bytes written to `bytes` (once a manifest says what to expect),
    /// and the stream limit to at most [`Limits::new`]`(bytes, entries)`'s.
    pub fn restrict_bytes(&mut self, bytes: u64) {
        let limits = &mut self.state.limits;
        limits.bytes = limits.bytes.min(bytes);
        limits.stream = limits
            .stream
            .min(Limits::new(limits.bytes, limits.entries).stream);
        let mut meter = self.meter.get();
        meter.limit = limits.stream;
        self.meter.set(meter);
    }

    /// Bytes of file data written so far.
    pub fn written(&self) -> u64 {
        self.state.written
    }
}

/// One entry whose kind and path passed; see [`Entries::next_entry`].
pub struct Entry<'e, 'a, R: Read> {
    inner: tar::Entry<'a, Metered<R>>,
    name: String,
    path: String,
    kind: Kind,
    size: u64,
    admitted: bool,
    state: &'e mut State,
    meter: &'e Cell<Meter>,
}

impl<R: Read> Entry<'_, '_, R> {
    /// The name as the archive spells it (a directory's trailing `/` kept), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The checked relative path (without a directory's trailing `/`).
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The size the tar reader yields: the header's, or a PAX `size`.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The header's permission bits, if they parse.
    pub fn mode(&self) -> Option<u32> {
        self.inner.header().mode().ok()
    }

    /// Checks the entry against what earlier entries made and the budget, and records it:
    /// a file must be new ([`ArchiveError::Duplicate`]), not where a directory is nor inside a
    /// file ([`ArchiveError::Clash`]), and fit in what is left of [`Limits::bytes`]
    /// ([`ArchiveError::TooLarge`]); a directory must not be, or be inside, a file and have no
    /// data. [`Entry::extract`] does this itself; call it first to check the entry before
    /// checks of your own that should come after these.
    pub fn admit(&mut self) -> Result<(), ArchiveError> {
        if !self.admitted {
            self.state
                .admit(&self.name, &self.path, self.kind, self.size, true)?;
            self.admitted = true;
        }
        Ok(())
    }

    /// Extracts the entry (see [`Entry::extract_with`]); returns the bytes written.
    pub fn extract(self) -> Result<u64, ArchiveError> {
        self.extract_with(|_| {})
    }

    /// Admits the entry ([`Entry::admit`]) and creates it under the destination: a directory
    /// with its parents, a file (new; its parent directories created) with its data, counted
    /// against the budget as it is written and passed to `inspect` (to hash it, say).
    /// Returns the bytes written.
    pub fn extract_with(mut self, mut inspect: impl FnMut(&[u8])) -> Result<u64, ArchiveError> {
        self.admit()?;
        allow(self.meter, self.inner.raw_file_position(), self.size);
        let write_error = |source| ArchiveError::Write {
            entry: self.path.clone(),
            source,
        };
        let dest = self.state.dest.clone();
        if self.kind == Kind::Dir {
            if let Some(dest) = dest {
                fs::create_dir_all(dest.join(&self.path)).map_err(write_error)?;
            }
            return Ok(0);
        }
        let mut file = match &dest {
            None => None,
            Some(dest) => {
                if let Some((parent, _)) = self.path.rsplit_once('/') {
                    fs::create_dir_all(dest.join(parent)).map_err(write_error)?;
                }
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dest.join(&self.path))
                    .map_err(write_error)?;
                Some(file)
            }
        };
        let mut sink = io::sink();
        let to: &mut dyn Write = match file.as_mut() {
            Some(file) => file,
            None => &mut sink,
        };
        let limit = self.state.limits.bytes;
        let copied = copy(
            &mut self.inner,
            to,
            &mut self.state.written,
            limit,
            &mut inspect,
        )
        .map_err(|e| match e {
            CopyError::Read(e) => read_error(self.meter, Some(&self.name), e),
            CopyError::Write(e) => write_error(e),
            CopyError::OverBudget => ArchiveError::TooLarge {
                entry: self.name.clone(),
                limit,
            },
        })?;
        if copied != self.size {
            return Err(ArchiveError::Truncated {
                entry: self.name.clone(),
                copied,
                size: self.size,
            });
        }
        if let Some(file) = file {
            if self.state.header_modes {
                if let Some(mode) = self.mode() {
                    set_mode(&file, mode & 0o755 | 0o600);
                }
            }
            if self.state.sync {
                file.sync_all().map_err(write_error)?;
            }
        }
        Ok(copied)
    }

    /// Reads the entry's data into memory instead of writing it: refused
    /// ([`ArchiveError::TooLong`]) before anything is read if it announces more than `max`
    /// bytes. The entry is recorded as [`Entry::admit`] does (a file may not appear twice or
    /// clash) but is not counted against [`Limits::bytes`]. A directory reads as empty.
    pub fn read_to_end(mut self, max: u64) -> Result<Vec<u8>, ArchiveError> {
        if self.size > max {
            return Err(ArchiveError::TooLong {
                entry: self.name,
                size: self.size,
                max,
            });
        }
        if !self.admitted {
            self.state
                .admit(&self.name, &self.path, self.kind, self.size, false)?;
            self.admitted = true;
        }
        allow(self.meter, self.inner.raw_file_position(), self.size);
        let mut data = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        self.inner
            .read_to_end(&mut data)
            .map_err(|e| read_error(self.meter, Some(&self.name), e))?;
        if data.len() as u64 != self.size {
            return Err(ArchiveError::Truncated {
                entry: self.name,
                copied: data.len() as u64,
                size: self.size,
            });
        }
        Ok(data)
    }
}

#[cfg(unix)]
fn set_mode(file: &fs::File, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    // Best effort: the data is written; a mode the file system refuses is not worth failing.
    let _ = file.set_permissions(fs::Permissions::from_mode(mode));
}

#[cfg(not(unix))]
fn set_mode(_file: &fs::File, _mode: u32) {}

/// The names extracted so far and the bytes written.
struct State {
    dest: Option<PathBuf>,
    limits: Limits,
    sync: bool,
    header_modes: bool,
    files: HashSet<String>,
    /// The directories the entries so far make: those announced and the files' parents.
    dirs: HashSet<String>,
    written: u64,
    count: usize,
}

impl State {
    /// Checks and records an entry of `size` bytes, counted against the budget if `budgeted`.
    fn admit(
        &mut self,
        name: &str,
        path: &str,
        kind: Kind,
        size: u64,
        budgeted: bool,
    ) -> Result<(), ArchiveError> {
        let clash = |clash| ArchiveError::Clash {
            entry: name.to_owned(),
            clash,
        };
        if let Some(file) = ancestors(path).find(|a| self.files.contains(*a)) {
            return Err(clash(Clash::InsideFile(file.to_owned())));
        }
        match kind {
            Kind::Dir => {
                if self.files.contains(path) {
                    return Err(clash(Clash::DirOverFile));
                }
                if size != 0 {
                    return Err(ArchiveError::DirWithData {
                        entry: name.to_owned(),
                        size,
                    });
                }
                self.dirs.extend(ancestors(path).map(str::to_owned));
                self.dirs.insert(path.to_owned());
            }
            Kind::File => {
                if self.files.contains(path) {
                    return Err(ArchiveError::Duplicate {
                        entry: name.to_owned(),
                    });
                }
                if self.dirs.contains(path) {
                    return Err(clash(Clash::FileOverDir));
                }
                if budgeted && self.written.saturating_add(size) > self.limits.bytes {
                    return Err(ArchiveError::TooLarge {
                        entry: name.to_owned(),
                        limit: self.limits.bytes,
                    });
                }
                self.dirs.extend(ancestors(path).map(str::to_owned));
                self.files.insert(path.to_owned());
            }
        }
        Ok(())
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    OverBudget,
}

/// Copies `from` to `to`, counting what is written in `written` and stopping before it would
/// pass `limit`; tells the archive's read errors from the destination's write errors.
fn copy(
    from: &mut impl Read,
    to: &mut dyn Write,
    written: &mut u64,
    limit: u64,
    inspect: &mut dyn FnMut(&[u8]),
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        let total = written
            .checked_add(n as u64)
            .filter(|t| *t <= limit)
            .ok_or(CopyError::OverBudget)?;
        inspect(&buf[..n]);
        to.write_all(&buf[..n]).map_err(CopyError::Write)?;
        *written = total;
        copied += n as u64;
    }
}

/// What kind of entry a tar header announces, in words, for refusals.
fn kind_name(kind: EntryType) -> String {
    match kind {
        EntryType::Regular => "regular file".into(),
        EntryType::Link => "hard link".into(),
        EntryType::Symlink => "symbolic link".into(),
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Directory => "directory".into(),
        EntryType::Fifo => "FIFO".into(),
        EntryType::Continuous => "contiguous file".into(),
        EntryType::XGlobalHeader => "pax global header".into(),
        EntryType::GNUSparse => "sparse file".into(),
        other => format!("entry of type {:?}", char::from(other.as_byte())),
    }
}

#[cfg(test)]
mod tests;
