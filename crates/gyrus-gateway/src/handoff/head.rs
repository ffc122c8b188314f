//! Reading one request head off a socket without consuming more than the daemon can carry
//! along: enough to know where the request goes, and nothing parsed twice by the daemon.

use bytes::BytesMut;
use http::Method;
use tokio::io::AsyncReadExt;

use super::MAX_CARRIED_BYTES;

/// What the first bytes of a connection turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A whole request head: its method and path (without the query).
    Complete { method: Method, path: String },
    /// The peer closed the connection before sending a whole head.
    Closed,
    /// Not a request head the daemon routes (malformed, too long, an absolute-form URI):
    /// served by the daemon's own HTTP server, which answers it properly.
    Other,
}

/// Parses what `buf` holds so far: `None` while the head is incomplete.
pub fn parse(buf: &[u8]) -> Option<Head> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let (Some(method), Some(target)) = (req.method, req.path) else {
                return Some(Head::Other);
            };
            let Ok(method) = Method::from_bytes(method.as_bytes()) else {
                return Some(Head::Other);
            };
            if !target.starts_with('/') {
                return Some(Head::Other);
            }
            let path = target.split(['?', '#']).next().unwrap_or(target);
            Some(Head::Complete {
                method,
                path: path.to_owned(),
            })
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_CARRIED_BYTES => None,
        _ => Some(Head::Other),
    }
}

/// Reads from `io` into `buf` until it holds a whole request head (or something that will
/// never be one). The caller bounds the wait.
pub async fn read<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<Head> {
    loop {
        if !buf.is_empty() {
            if let Some(head) = parse(buf) {
                return Ok(head);
            }
        }
        buf.reserve(4096.min(MAX_CARRIED_BYTES - buf.len()).max(1));
        let room = MAX_CARRIED_BYTES - buf.len();
        let n = (&mut *io).take(room as u64).read_buf(buf).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        assert_eq!(
            parse(b"POST /iris/v2/models/x/infer?debug=true HTTP/1.1\r\nHost: a\r\n\r\n{}"),
            Some(Head::Complete {
                method: Method::POST,
                path: "/iris/v2/models/x/infer".into()
            })
        );
        assert_eq!(parse(b"GET /iris HTTP/1.1\r\nHost"), None);
        assert_eq!(
            parse(b"GET http://x/iris HTTP/1.1\r\n\r\n"),
            Some(Head::Other)
        );
        assert_eq!(parse(b"\x16\x03\x01 tls"), Some(Head::Other));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_CARRIED_BYTES));
        assert_eq!(parse(long.as_bytes()), Some(Head::Other));
    }

    #[tokio::test]
    async fn reads_a_head_in_pieces() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            client.write_all(b"GET /a HT").await.unwrap();
            tokio::task::yield_now().await;
            client.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
            client
        });
        let mut buf = BytesMut::new();
        let head = read(&mut server, &mut buf).await.unwrap();
        assert!(matches!(head, Head::Complete { ref path, .. } if path == "/a"));
        drop(writer.await.unwrap());
        let mut buf = BytesMut::new();
        assert_eq!(read(&mut server, &mut buf).await.unwrap(), Head::Closed);
    }
}
