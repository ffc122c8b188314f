//! Request body decompression by `Content-Encoding` (gzip, deflate, identity), with a hard
//! limit on the decompressed size so a small compressed body cannot expand into gigabytes.

use std::borrow::Cow;
use std::io::{self, Read};

use crate::error::OipError;

/// More codings than this in one header is not a real client; refusing bounds the work.
const MAX_CODINGS: usize = 4;

#[derive(Clone, Copy)]
enum Coding {
    Gzip,
    Deflate,
}

/// Decodes a request body according to its `Content-Encoding` header value.
///
/// `None`, empty and `identity` leave the body as it is (borrowed, not copied); `gzip` (also
/// `x-gzip`, and concatenated gzip members) and `deflate` (zlib-wrapped as HTTP specifies, or
/// raw deflate, which some clients send, when the zlib header is missing) are decompressed.
/// Names are case-insensitive; a comma-separated list is undone last coding first. Any other
/// coding is [`OipError::UnsupportedEncoding`]. A result longer than `limit` bytes
/// is [`OipError::TooLarge`]; decompression stops there and never holds more than `limit + 1`
/// bytes of output.
pub fn decompress<'a>(
    body: &'a [u8],
    content_encoding: Option<&str>,
    limit: usize,
) -> Result<Cow<'a, [u8]>, OipError> {
    let header = content_encoding.unwrap_or("");
    let mut codings = Vec::new();
    for name in header.split(',').map(str::trim) {
        let coding = if name.is_empty() || name.eq_ignore_ascii_case("identity") {
            continue;
        } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            Coding::Gzip
        } else if name.eq_ignore_ascii_case("deflate") {
            Coding::Deflate
        } else {
            return Err(OipError::UnsupportedEncoding(name.to_owned()));
        };
        codings.push(coding);
    }
    if codings.len() > MAX_CODINGS {
        return Err(OipError::UnsupportedEncoding(header.to_owned()));
    }
    let mut data = Cow::Borrowed(body);
    for coding in codings.into_iter().rev() {
        let input: &[u8] = &data;
        let decoded = match coding {
            Coding::Gzip => {
                read_limited(flate2::read::MultiGzDecoder::new(input), input.len(), limit)
                    .map_err(|e| failed("gzip", e))
            }
            Coding::Deflate => inflate(input, limit).map_err(|e| failed("deflate", e)),
        }?;
        data = Cow::Owned(decoded);
    }
    if data.len() > limit {
        return Err(OipError::TooLarge { limit });
    }
    Ok(data)
}

/// Either the limit was hit or the stream is corrupt.
enum ReadError {
    TooLarge(usize),
    Io(io::Error),
}

fn failed(encoding: &str, e: ReadError) -> OipError {
    match e {
        ReadError::TooLarge(limit) => OipError::TooLarge { limit },
        ReadError::Io(e) => OipError::Decompress {
            encoding: encoding.to_owned(),
            message: e.to_string(),
        },
    }
}

/// HTTP's `deflate` is zlib-wrapped, but some clients send raw deflate. A raw stream can start
/// with bytes that pass the zlib header check by chance, so a zlib failure falls back to raw.
fn inflate(input: &[u8], limit: usize) -> Result<Vec<u8>, ReadError> {
    let raw = || read_limited(flate2::read::DeflateDecoder::new(input), input.len(), limit);
    if !has_zlib_header(input) {
        return raw();
    }
    match read_limited(flate2::read::ZlibDecoder::new(input), input.len(), limit) {
        Err(ReadError::Io(zlib_error)) => raw().map_err(|e| match e {
            ReadError::Io(_) => ReadError::Io(zlib_error),
            too_large => too_large,
        }),
        other => other,
    }
}

/// RFC 1950: compression method 8 with a window of at most 32 KiB, and a header checksum.
fn has_zlib_header(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => {
            cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0
        }
        _ => false,
    }
}

/// Reads everything, growing the buffer geometrically but never past `limit + 1` bytes, so
/// going over the limit is detected without holding more than that.
fn read_limited(
    mut reader: impl Read,
    input_len: usize,
    limit: usize,
) -> Result<Vec<u8>, ReadError> {
    let cap = limit.saturating_add(1);
    let mut buf = vec![0u8; input_len.saturating_mul(4).clamp(4096, 1 << 20).min(cap)];
    let mut filled = 0usize;
    loop {
        if filled == buf.len() {
            if filled >= cap {
                return Err(ReadError::TooLarge(limit));
            }
            let grown = buf.len().saturating_mul(2).min(cap);
            buf.reserve_exact(grown - buf.len());
            buf.resize(grown, 0);
        }
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    if filled > limit {
        return Err(ReadError::TooLarge(limit));
    }
    buf.truncate(filled);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    use super::*;
    use crate::OipErrorKind;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn identity_borrows() {
        for header in [None, Some(""), Some("identity"), Some("IDENTITY")] {
            let out = decompress(b"abc", header, 10).unwrap();
            assert!(matches!(out, Cow::Borrowed(b"abc")));
        }
        assert_eq!(
            decompress(b"abc", None, 2).unwrap_err(),
            OipError::TooLarge { limit: 2 }
        );
    }

    #[test]
    fn gzip_and_deflate() {
        let data = b"{\"inputs\": []}".repeat(100);
        for header in ["gzip", "GZip", "x-gzip", " gzip "] {
            assert_eq!(
                &*decompress(&gzip(&data), Some(header), 1 << 20).unwrap(),
                &data[..]
            );
        }
        assert_eq!(
            &*decompress(&zlib(&data), Some("deflate"), 1 << 20).unwrap(),
            &data[..]
        );
        assert_eq!(
            &*decompress(&raw_deflate(&data), Some("Deflate"), 1 << 20).unwrap(),
            &data[..]
        );
        let mut two = gzip(b"ab");
        two.extend(gzip(b"cd"));
        assert_eq!(&*decompress(&two, Some("gzip"), 10).unwrap(), b"abcd");
        let layered = gzip(&zlib(&data));
        assert_eq!(
            &*decompress(&layered, Some("deflate, gzip"), 1 << 20).unwrap(),
            &data[..]
        );
        assert_eq!(&*decompress(&gzip(b""), Some("gzip"), 0).unwrap(), b"");
    }

    #[test]
    fn unsupported_and_corrupt() {
        let e = decompress(b"x", Some("br"), 10).unwrap_err();
        assert_eq!(e, OipError::UnsupportedEncoding("br".into()));
        assert_eq!(e.kind(), OipErrorKind::UnsupportedEncoding);
        let e = decompress(b"x", Some("gzip, gzip, gzip, gzip, gzip"), 10).unwrap_err();
        assert_eq!(e.kind(), OipErrorKind::UnsupportedEncoding);
        let e = decompress(b"not gzip at all", Some("gzip"), 10).unwrap_err();
        assert!(matches!(e, OipError::Decompress { .. }), "{e:?}");
        assert_eq!(e.kind(), OipErrorKind::InvalidRequest);
        let mut truncated = gzip(b"hello world");
        truncated.truncate(truncated.len() - 5);
        assert!(decompress(&truncated, Some("gzip"), 100).is_err());
    }

    #[test]
    fn bombs_stop_at_the_limit() {
        let zeros = vec![0u8; 16 << 20];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 64 << 10);
        let e = decompress(&bomb, Some("gzip"), 1 << 20).unwrap_err();
        assert_eq!(e, OipError::TooLarge { limit: 1 << 20 });
        assert_eq!(e.kind(), OipErrorKind::TooLarge);
        let exact = gzip(&zeros[..1000]);
        assert_eq!(decompress(&exact, Some("gzip"), 1000).unwrap().len(), 1000);
        assert!(decompress(&exact, Some("gzip"), 999).is_err());
    }

    #[test]
    fn zlib_header_detection() {
        assert!(has_zlib_header(&zlib(b"x")));
        assert!(!has_zlib_header(&raw_deflate(b"x")));
        assert!(!has_zlib_header(b"x"));
    }
}
