//! The meter on the decompressed tar stream: it counts what is read and refuses to read past
//! the stream limit or past what the accepted entries announce (so a gzip bomb stops early).

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::{ArchiveError, BLOCK, HEADER_ALLOWANCE};

/// An error reading the stream: the limits' if one was hit, else the stream's own.
pub(crate) fn read_error(
    meter: &Cell<Meter>,
    entry: Option<&str>,
    source: io::Error,
) -> ArchiveError {
    let meter = meter.get();
    match meter.fault {
        Some(Fault::Unannounced) => ArchiveError::Unannounced,
        Some(Fault::Stream) => ArchiveError::StreamTooLong { limit: meter.limit },
        None => ArchiveError::Malformed {
            entry: entry.map(str::to_owned),
            source,
        },
    }
}

/// Counts the bytes read from the (decompressed) tar stream and refuses to read past the
/// stream limit or past `allowed`, which grows as entries are accepted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meter {
    pub(crate) read: u64,
    pub(crate) allowed: u64,
    pub(crate) limit: u64,
    pub(crate) fault: Option<Fault>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Past what the accepted entries announce.
    Unannounced,
    /// Past [`Limits::stream`].
    Stream,
}

/// Allows reading the data of an entry starting at `data_at` of `size` bytes (padded to
/// whole blocks), and the headers after it.
pub(crate) fn allow(meter: &Cell<Meter>, data_at: u64, size: u64) {
    let mut m = meter.get();
    let end = data_at
        .saturating_add(size.div_ceil(BLOCK).saturating_mul(BLOCK))
        .saturating_add(HEADER_ALLOWANCE);
    m.allowed = m.allowed.max(end);
    meter.set(m);
}

/// The tar stream, read through its [`Meter`]. Reading past the meter's bounds is an error,
/// never an early end, which the tar reader would take for the end of the archive; the end of
/// the stream right at a bound is fine.
pub(crate) struct Metered<R> {
    pub(crate) inner: R,
    pub(crate) meter: Rc<Cell<Meter>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut m = self.meter.get();
        if m.fault.is_some() {
            return Err(io::Error::other("the archive was refused"));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let left = m.allowed.min(m.limit).saturating_sub(m.read);
        if left == 0 {
            // At a bound: only the end of the stream is still acceptable.
            let mut probe = [0u8; 1];
            let n = loop {
                match self.inner.read(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                return Ok(0);
            }
            let fault = if m.limit < m.allowed {
                Fault::Stream
            } else {
                Fault::Unannounced
            };
            m.fault = Some(fault);
            self.meter.set(m);
            return Err(io::Error::other(match fault {
                Fault::Stream => "the archive expands to more than its limit",
                Fault::Unannounced => "more data than the archive's entries announce",
            }));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..want])?;
        m.read += got as u64;
        self.meter.set(m);
        Ok(got)
    }
}
