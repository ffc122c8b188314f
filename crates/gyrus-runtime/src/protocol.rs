//! Frames of the worker protocol (docs/architecture.md, "Worker protocol").
//!
//! Every frame is `u32 len` (bytes after this field), `u8 kind`, `u64 id`, then the body, all
//! little-endian. Requests are encoded straight into one buffer (the body travels separately
//! as a second `IoSlice`), responses are cut out of the read buffer without copying.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::unix::OwnedReadHalf;

use crate::{Call, PredictRequest, PredictResponse, RuntimeError};

pub(crate) const INIT: u8 = 1;
pub(crate) const REQUEST: u8 = 2;
pub(crate) const SHUTDOWN: u8 = 3;
pub(crate) const INFER_RESULT: u8 = 4;
pub(crate) const INFER_ERROR: u8 = 5;
pub(crate) const READY: u8 = 101;
pub(crate) const INIT_FAILED: u8 = 102;
pub(crate) const RESPONSE: u8 = 103;
pub(crate) const INFER: u8 = 104;

/// `u32 len` + `u8 kind` + `u64 id`.
const FRAME_HEAD: usize = 13;
/// `u8 flags`, `u16 ctype_len`, `u32 query_len`, `u32 headers_len`.
const REQUEST_META: usize = 11;
/// `u16 status`, `u16 ctype_len`.
const RESPONSE_META: usize = 4;
const FLAG_DEBUG: u8 = 1;
/// A batch API's call: `predict(payload, batch_id)` with the batch id as the query string.
const FLAG_BATCH: u8 = 2;
/// A batch API's `on_job_complete()`; the body is empty.
const FLAG_JOB_COMPLETE: u8 = 4;
/// After the headers: `u8 len` and the request id, for the worker's log lines.
const FLAG_REQUEST_ID: u8 = 8;

/// A frame read from a worker; `body` shares the read buffer.
pub(crate) struct Frame {
    pub kind: u8,
    pub id: u64,
    pub body: Bytes,
}

fn put_head(out: &mut Vec<u8>, len_after: usize, kind: u8, id: u64) -> Result<(), RuntimeError> {
    let len = u32::try_from(len_after + FRAME_HEAD - 4)
        .map_err(|_| RuntimeError::InvalidRequest("frame is larger than 4 GiB".into()))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&id.to_le_bytes());
    Ok(())
}

/// A frame whose body is complete in memory (INIT, SHUTDOWN).
pub(crate) fn encode_frame(kind: u8, id: u64, body: &[u8]) -> Result<Vec<u8>, RuntimeError> {
    let mut out = Vec::with_capacity(FRAME_HEAD + body.len());
    put_head(&mut out, body.len(), kind, id)?;
    out.extend_from_slice(body);
    Ok(out)
}

/// Everything of a REQUEST frame except the body, which the caller writes after it.
///
/// The query string and headers are only sent when the predictor asked for them, so the
/// common case carries nothing but the content type.
pub(crate) fn encode_request_head(
    id: u64,
    req: &PredictRequest,
    send_query: bool,
    send_headers: bool,
) -> Result<Vec<u8>, RuntimeError> {
    let ctype = req.content_type.as_bytes();
    let ctype_len = u16::try_from(ctype.len()).map_err(|_| {
        RuntimeError::InvalidRequest("Content-Type is longer than 65535 bytes".into())
    })?;
    let (query, call_flag) = match &req.call {
        Call::Predict if send_query => (req.query.as_bytes(), 0),
        Call::Predict => (&b""[..], 0),
        Call::Batch { batch_id } => (batch_id.as_bytes(), FLAG_BATCH),
        Call::JobComplete => (&b""[..], FLAG_JOB_COMPLETE),
    };
    let query_len = u32::try_from(query.len())
        .map_err(|_| RuntimeError::InvalidRequest("query string is too long".into()))?;
    let headers_estimate = if send_headers {
        req.headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 6)
            .sum::<usize>()
            + 2
    } else {
        0
    };

    let mut out = Vec::with_capacity(
        FRAME_HEAD + REQUEST_META + ctype.len() + query.len() + headers_estimate,
    );
    // The length is patched in once the headers' JSON size is known.
    put_head(&mut out, 0, REQUEST, id)?;
    // Ids come from the replica's X-Request-ID check (at most 128 visible ASCII characters);
    // anything longer is left out rather than cut.
    let request_id = Some(req.request_id.as_bytes()).filter(|id| !id.is_empty() && id.len() <= 255);
    out.push(
        if req.debug { FLAG_DEBUG } else { 0 }
            | if request_id.is_some() {
                FLAG_REQUEST_ID
            } else {
                0
            }
            | call_flag,
    );
    out.extend_from_slice(&ctype_len.to_le_bytes());
    out.extend_from_slice(&query_len.to_le_bytes());
    let headers_len_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(ctype);
    out.extend_from_slice(query);
    if send_headers {
        let start = out.len();
        write_headers_json(&mut out, &req.headers);
        let headers_len = u32::try_from(out.len() - start)
            .map_err(|_| RuntimeError::InvalidRequest("headers are too large".into()))?;
        out[headers_len_at..headers_len_at + 4].copy_from_slice(&headers_len.to_le_bytes());
    }
    if let Some(id) = request_id {
        out.push(id.len() as u8);
        out.extend_from_slice(id);
    }
    let len = u32::try_from(out.len() - 4 + req.body.len())
        .map_err(|_| RuntimeError::InvalidRequest("request body is larger than 4 GiB".into()))?;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// Writes the headers as a JSON object with lower-case names. Hand-written because it is
/// the only JSON on the request path and a serde round trip would allocate per header.
fn write_headers_json(out: &mut Vec<u8>, headers: &[(String, String)]) {
    out.push(b'{');
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_string(out, name, true);
        out.push(b':');
        write_json_string(out, value, false);
    }
    out.push(b'}');
}

fn write_json_string(out: &mut Vec<u8>, s: &str, lowercase: bool) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            // Bytes of multi-byte UTF-8 characters are >= 0x80 and pass through unchanged.
            _ if lowercase => out.push(b.to_ascii_lowercase()),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Decodes the body of a RESPONSE frame.
pub(crate) fn parse_response(mut body: Bytes) -> Result<PredictResponse, RuntimeError> {
    if body.len() < RESPONSE_META {
        return Err(RuntimeError::Protocol("RESPONSE frame is too short".into()));
    }
    let status = body.get_u16_le();
    let ctype_len = usize::from(body.get_u16_le());
    if body.len() < ctype_len {
        return Err(RuntimeError::Protocol(
            "RESPONSE content type is truncated".into(),
        ));
    }
    let content_type = std::str::from_utf8(&body[..ctype_len])
        .map_err(|_| RuntimeError::Protocol("RESPONSE content type is not UTF-8".into()))?
        .to_owned();
    body.advance(ctype_len);
    Ok(PredictResponse {
        status,
        content_type,
        body,
        worker_time: std::time::Duration::ZERO,
    })
}

/// Reads frames from a worker's socket into one growing buffer.
pub(crate) struct FrameReader {
    read: OwnedReadHalf,
    buf: BytesMut,
}

impl FrameReader {
    const CHUNK: usize = 64 * 1024;

    pub fn new(read: OwnedReadHalf) -> Self {
        Self {
            read,
            buf: BytesMut::with_capacity(Self::CHUNK),
        }
    }

    /// The next frame already in the buffer, if it is complete.
    pub fn next_buffered(&mut self) -> Result<Option<Frame>, RuntimeError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len < FRAME_HEAD - 4 {
            return Err(RuntimeError::Protocol(format!(
                "frame length {len} is too short"
            )));
        }
        if self.buf.len() < 4 + len {
            // Make room for the whole frame so it arrives in as few reads as possible.
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(4 + len).freeze();
        frame.advance(4);
        let kind = frame.get_u8();
        let id = frame.get_u64_le();
        Ok(Some(Frame {
            kind,
            id,
            body: frame,
        }))
    }

    /// Reads more bytes; `Ok(0)` is EOF. Cancel safe (it is `read_buf`).
    pub async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(Self::CHUNK);
        }
        self.read.read_buf(&mut self.buf).await
    }

    /// The next frame, or `None` at EOF.
    pub async fn next(&mut self) -> Result<Option<Frame>, RuntimeError> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(RuntimeError::Protocol(
                    "connection closed in the middle of a frame".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_layout() {
        let req = PredictRequest {
            content_type: "application/json".into(),
            query: "a=1".into(),
            headers: vec![("X-Key".into(), "v\"\n\u{e9}".into())],
            body: Bytes::from_static(b"{}"),
            debug: true,
            call: Default::default(),
            request_id: String::new(),
        };
        let head = encode_request_head(7, &req, true, true).unwrap();
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        assert_eq!(len, head.len() - 4 + req.body.len());
        assert_eq!(head[4], REQUEST);
        assert_eq!(u64::from_le_bytes(head[5..13].try_into().unwrap()), 7);
        assert_eq!(head[13], FLAG_DEBUG);
        assert_eq!(u16::from_le_bytes([head[14], head[15]]), 16);
        assert_eq!(u32::from_le_bytes(head[16..20].try_into().unwrap()), 3);
        let headers_len = u32::from_le_bytes(head[20..24].try_into().unwrap()) as usize;
        let json = &head[24 + 16 + 3..];
        assert_eq!(json.len(), headers_len);
        let parsed: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(parsed, serde_json::json!({"x-key": "v\"\n\u{e9}"}));
    }

    #[test]
    fn request_head_omits_unwanted_parts() {
        let req = PredictRequest {
            content_type: "text/plain".into(),
            query: "a=1".into(),
            headers: vec![("a".into(), "b".into())],
            body: Bytes::new(),
            debug: false,
            call: Default::default(),
            request_id: String::new(),
        };
        let head = encode_request_head(1, &req, false, false).unwrap();
        assert_eq!(head.len(), FRAME_HEAD + REQUEST_META + "text/plain".len());
    }

    #[test]
    fn request_id_follows_the_headers() {
        let req = PredictRequest {
            content_type: "text/plain".into(),
            request_id: "abc-1".into(),
            ..Default::default()
        };
        let head = encode_request_head(1, &req, false, false).unwrap();
        assert_eq!(head[13], FLAG_REQUEST_ID);
        assert!(head.ends_with(b"text/plain\x05abc-1"));
        let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
        assert_eq!(len, head.len() - 4);
    }

    #[test]
    fn oversized_content_type_is_a_request_error() {
        let req = PredictRequest {
            content_type: "x".repeat(70_000),
            ..PredictRequest::default()
        };
        assert!(matches!(
            encode_request_head(1, &req, false, false),
            Err(RuntimeError::InvalidRequest(_))
        ));
    }

    #[test]
    fn response_parsing() {
        let mut body = vec![];
        body.extend_from_slice(&200u16.to_le_bytes());
        body.extend_from_slice(&4u16.to_le_bytes());
        body.extend_from_slice(b"a/b!rest");
        let resp = parse_response(Bytes::from(body)).unwrap();
        assert_eq!(
            (resp.status, resp.content_type.as_str(), &resp.body[..]),
            (200, "a/b!", &b"rest"[..])
        );
        assert!(parse_response(Bytes::from_static(&[1, 0, 9, 0, b'x'])).is_err());
    }
}
