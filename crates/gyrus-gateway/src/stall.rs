//! Request bodies that stop arriving. A client that sends its headers and then trickles (or
//! never sends) its body would hold a connection to the daemon and one to a replica for as
//! long as it likes; the gateway forwards bodies through [`StallGuard`], which fails the body
//! once less than [`MIN_PROGRESS`] bytes came in its timeout, and the request is answered 408.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a body must bring in each period of the timeout (a byte now and then is a stall).
pub(crate) const MIN_PROGRESS: usize = 8 * 1024;

/// The error a stalled body ends with (found again in the proxy's error chain).
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving: less than 8 KiB in {}s", .0.as_secs())]
pub struct BodyStalled(pub Duration);

pub struct StallGuard<B> {
    inner: Pin<Box<B>>,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// Bytes since the deadline was last moved.
    progress: usize,
}

impl<B> StallGuard<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner: Box::pin(inner),
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            progress: 0,
        }
    }
}

impl<B> Body for StallGuard<B>
where
    B: Body,
    B::Data: Buf,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.inner.as_mut().poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(Ok(f)) = &frame {
                    self.progress += f.data_ref().map(|d| d.remaining()).unwrap_or(0);
                }
                if self.progress >= MIN_PROGRESS {
                    self.progress = 0;
                    let next = Instant::now() + self.timeout;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    Poll::Ready(Some(Err(Box::new(BodyStalled(self.timeout)))))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (or what caused it) is a stalled body.
pub fn is_stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyStalled>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    /// A body fed chunk by chunk through the returned sender.
    fn channel_body() -> (
        tokio::sync::mpsc::Sender<Bytes>,
        impl Body<Data = Bytes, Error = std::convert::Infallible>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
        });
        (tx, StreamBody::new(stream))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_fails_after_the_timeout() {
        let (tx, body) = channel_body();
        let guarded = StallGuard::new(body, Duration::from_secs(30));
        let collect = tokio::spawn(async move { guarded.collect().await.map(|_| ()) });
        tx.send(Bytes::from(vec![0u8; MIN_PROGRESS])).await.unwrap();
        // Each 8 KiB gives it another 30 s ...
        tokio::time::sleep(Duration::from_secs(29)).await;
        tx.send(Bytes::from(vec![0u8; MIN_PROGRESS])).await.unwrap();
        // ... a byte now and then does not ...
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(14)).await;
            tx.send(Bytes::from_static(b"x")).await.unwrap();
        }
        assert!(!collect.is_finished());
        // ... and 30 s without 8 KiB ends it (the sender is still open: a stalled client).
        let err = collect.await.unwrap().unwrap_err();
        assert!(is_stalled(&*err), "{err}");
        assert!(err.to_string().contains("less than 8 KiB in 30s"), "{err}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_coming_is_untouched() {
        let (tx, body) = channel_body();
        let guarded = StallGuard::new(body, Duration::from_secs(1));
        let collect = tokio::spawn(async move { guarded.collect().await.map(|c| c.to_bytes()) });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(900)).await;
            tx.send(Bytes::from(vec![7u8; MIN_PROGRESS])).await.unwrap();
        }
        drop(tx);
        assert_eq!(collect.await.unwrap().unwrap().len(), 5 * MIN_PROGRESS);
    }
}
