//! One replica's hand-off channel: a `SOCK_SEQPACKET` socket pair, so that each message arrives
//! whole and the descriptor sent with it arrives with it, never with a neighbour's bytes.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The largest message either side sends (carried bytes plus the header).
pub const MAX_MESSAGE: usize = super::MAX_CARRIED_BYTES + 64;

/// One end of a channel, registered with the tokio reactor of the runtime that made it.
#[derive(Debug)]
pub struct Channel {
    fd: AsyncFd<OwnedFd>,
}

fn errno(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

impl Channel {
    /// A new pair: this end (close-on-exec) and the other, for a child process. Both are
    /// non-blocking; the child's end is close-on-exec too until the launcher moves it to
    /// [`super::REPLICA_CHANNEL_FD`].
    pub fn pair() -> std::io::Result<(Channel, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )
        .map_err(errno)?;
        Ok((Channel::from_fd(ours)?, theirs))
    }

    /// Wraps an end received from a parent (sets it non-blocking and close-on-exec, so that the
    /// replica's Python workers do not inherit it).
    pub fn from_fd(fd: OwnedFd) -> std::io::Result<Channel> {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with integer arguments only.
        unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(raw, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: an OwnedFd stays open, and is the same descriptor, for as long as it lives.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(std::io::Error::from)?;
        Ok(Channel { fd })
    }

    /// Takes the channel end at `raw` (inherited from the parent).
    ///
    /// # Safety
    /// `raw` must be an open descriptor that nothing else in this process owns.
    pub unsafe fn from_raw_fd(raw: RawFd) -> std::io::Result<Channel> {
        Channel::from_fd(OwnedFd::from_raw_fd(raw))
    }

    /// Sends one message, with a descriptor if given (the receiver gets its own copy).
    pub async fn send(&self, msg: &[u8], fd: Option<RawFd>) -> std::io::Result<()> {
        let fds;
        let cmsgs: &[ControlMessage<'_>] = match fd {
            Some(fd) => {
                fds = [fd];
                &[ControlMessage::ScmRights(&fds)]
            }
            None => &[],
        };
        loop {
            let mut ready = self.fd.writable().await?;
            let sent = ready.try_io(|inner| {
                sendmsg::<()>(
                    inner.as_raw_fd(),
                    &[IoSlice::new(msg)],
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(errno)
            });
            match sent {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// The next message and the descriptor that came with it; `None` once the other end is
    /// closed (its process exited).
    pub async fn recv(&self) -> std::io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut ready = self.fd.readable().await?;
            let received = ready.try_io(|inner| {
                let mut space = nix::cmsg_space!(RawFd);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    inner.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(errno)?;
                let mut fd = None;
                // A truncated control message would leak descriptors: the sender sends one at
                // most, so this only happens to a peer that is not ours.
                for cmsg in msg.cmsgs().map_err(errno)? {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        for raw in fds {
                            // SAFETY: the kernel just installed this descriptor for us.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            if fd.is_none() {
                                fd = Some(owned);
                            }
                        }
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "hand-off message longer than the largest allowed",
                    ));
                }
                Ok((msg.bytes, fd))
            });
            match received {
                Ok(Ok((0, None))) => return Ok(None),
                Ok(Ok((n, fd))) => {
                    buf.truncate(n);
                    return Ok(Some((buf, fd)));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_and_descriptors_cross_whole() {
        let (a, b) = Channel::pair().unwrap();
        let b = Channel::from_fd(b).unwrap();
        let file = tempfile_fd();
        a.send(b"one", Some(file.as_raw_fd())).await.unwrap();
        a.send(b"two", None).await.unwrap();
        let (m1, fd1) = b.recv().await.unwrap().unwrap();
        let (m2, fd2) = b.recv().await.unwrap().unwrap();
        assert_eq!((m1.as_slice(), m2.as_slice()), (&b"one"[..], &b"two"[..]));
        assert!(fd1.is_some() && fd2.is_none());
        drop(a);
        assert!(b.recv().await.unwrap().is_none());
    }

    fn tempfile_fd() -> OwnedFd {
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        x.into()
    }
}
