//! Version strings and the random names the store uses for staging directories and temporary
//! files. A version is 16 lowercase base32hex characters (RFC 4648 section 7, alphabet
//! `0-9a-v`, no padding) of 10 bytes: the Unix time in milliseconds (6 bytes, big-endian) then
//! 4 random bytes. It carries its creation time, sorts by it as a plain string (the alphabet
//! is in ASCII order), and two saves in the same millisecond still differ.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use data_encoding::BASE32HEX_NOPAD;
use sha2::{Digest, Sha256};

/// The creation time of a new save: now, but at least a millisecond later than the last one
/// this process handed out, so that quick saves get versions (and times) in save order, as
/// the Python module's saves do.
pub(crate) fn next_instant() -> DateTime<Utc> {
    static LAST_MILLIS: AtomicI64 = AtomicI64::new(i64::MIN);
    let now = Utc::now();
    let millis = now.timestamp_millis();
    let previous = LAST_MILLIS
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
            Some(millis.max(last.saturating_add(1)))
        })
        .unwrap_or(i64::MIN);
    if millis > previous {
        now
    } else {
        DateTime::from_timestamp_millis(previous.saturating_add(1)).unwrap_or(now)
    }
}

/// The version for a model created at `time` (the same instant its `creation_time` records).
pub(crate) fn version_at(time: DateTime<Utc>) -> String {
    let millis = u64::try_from(time.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0u8; 10];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random_bytes::<4>());
    BASE32HEX_NOPAD.encode(&bytes).to_ascii_lowercase()
}

/// The millisecond timestamp a version carries, if it is one of ours.
pub(crate) fn version_millis(version: &str) -> Option<u64> {
    let bytes = BASE32HEX_NOPAD
        .decode(version.to_ascii_uppercase().as_bytes())
        .ok()?;
    let head: [u8; 6] = bytes.get(..6)?.try_into().ok()?;
    (bytes.len() == 10).then(|| {
        let mut wide = [0u8; 8];
        wide[2..].copy_from_slice(&head);
        u64::from_be_bytes(wide)
    })
}

/// A random lowercase hex name for staging directories and `latest.<random>` files.
pub(crate) fn random_name() -> String {
    hex::encode(random_bytes::<8>())
}

/// Random bytes from the OS (`getrandom`). Uniqueness is all the store needs from them, so if
/// the OS cannot give them (a sandbox) they are derived from the time, the process id and a
/// counter instead of failing the save.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if getrandom::fill(&mut out).is_err() {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut hash = Sha256::new();
        hash.update(nanos.to_le_bytes());
        hash.update(std::process::id().to_le_bytes());
        hash.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let digest = hash.finalize();
        for (o, d) in out.iter_mut().zip(digest.iter()) {
            *o = *d;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_time() {
        let now = Utc::now();
        let v = version_at(now);
        assert_eq!(v.len(), 16);
        assert!(v
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'v').contains(&b)));
        gyrus_spec::check_tag_part("version", &v).unwrap();
        assert_eq!(version_millis(&v), Some(now.timestamp_millis() as u64));
        assert_ne!(version_at(next_instant()), version_at(next_instant()));
        // Later times sort later as strings.
        let later = version_at(now + chrono::Duration::milliseconds(1));
        assert!(later > v, "{later} > {v}");
        // 48 bits of time fill 9 characters and 3 bits of the tenth.
        assert_eq!(version_at(DateTime::UNIX_EPOCH)[..9], *"000000000");
        assert_eq!(version_millis("not-a-version"), None);
    }

    #[test]
    fn instants_increase() {
        let mut last = next_instant();
        for _ in 0..1000 {
            let next = next_instant();
            assert!(next.timestamp_millis() > last.timestamp_millis());
            last = next;
        }
    }

    #[test]
    fn random_names_differ() {
        let a = random_name();
        assert_eq!(a.len(), 16);
        assert_ne!(a, random_name());
    }
}
