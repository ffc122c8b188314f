//! The messages on a hand-off channel: one `SOCK_SEQPACKET` message each, a tag byte, the
//! connection's slot (u32, little-endian), then the carried bytes.

use bytes::Bytes;

const CONN: u8 = 1;
const SLOTS: u8 = 2;
const CLOSED: u8 = 3;
const RETURNED: u8 = 4;

/// From the daemon to a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToReplica {
    /// The slot table's memory (its descriptor rides with the message). Always first.
    Slots,
    /// A client connection (its descriptor rides with the message), the bytes the daemon read
    /// from it, and after how many milliseconds of service the replica should give it back
    /// once idle (0: never), so that connections spread over replicas added since.
    Conn {
        slot: u32,
        return_after_ms: u32,
        carried: Bytes,
    },
}

/// From a replica to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToDaemon {
    /// The replica ended the connection (and shut the socket down).
    Closed { slot: u32 },
    /// The replica gives the connection back, idle, with the bytes it had read and not used.
    Returned { slot: u32, carried: Bytes },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed hand-off message ({0} bytes)")]
pub struct Malformed(pub usize);

fn header(tag: u8, slot: u32) -> [u8; 5] {
    let s = slot.to_le_bytes();
    [tag, s[0], s[1], s[2], s[3]]
}

fn split(msg: &[u8]) -> Result<(u8, u32, &[u8]), Malformed> {
    if msg.len() < 5 {
        return Err(Malformed(msg.len()));
    }
    let slot = u32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
    Ok((msg[0], slot, &msg[5..]))
}

impl ToReplica {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToReplica::Slots => header(SLOTS, 0).to_vec(),
            ToReplica::Conn {
                slot,
                return_after_ms,
                carried,
            } => {
                let mut v = Vec::with_capacity(9 + carried.len());
                v.extend_from_slice(&header(CONN, *slot));
                v.extend_from_slice(&return_after_ms.to_le_bytes());
                v.extend_from_slice(carried);
                v
            }
        }
    }

    pub fn decode(msg: &[u8]) -> Result<Self, Malformed> {
        match split(msg)? {
            (SLOTS, _, _) => Ok(ToReplica::Slots),
            (CONN, slot, rest) if rest.len() >= 4 => Ok(ToReplica::Conn {
                slot,
                return_after_ms: u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]),
                carried: Bytes::copy_from_slice(&rest[4..]),
            }),
            _ => Err(Malformed(msg.len())),
        }
    }
}

impl ToDaemon {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            ToDaemon::Closed { slot } => header(CLOSED, *slot).to_vec(),
            ToDaemon::Returned { slot, carried } => {
                let mut v = Vec::with_capacity(5 + carried.len());
                v.extend_from_slice(&header(RETURNED, *slot));
                v.extend_from_slice(carried);
                v
            }
        }
    }

    pub fn decode(msg: &[u8]) -> Result<Self, Malformed> {
        match split(msg)? {
            (CLOSED, slot, _) => Ok(ToDaemon::Closed { slot }),
            (RETURNED, slot, rest) => Ok(ToDaemon::Returned {
                slot,
                carried: Bytes::copy_from_slice(rest),
            }),
            _ => Err(Malformed(msg.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [
            ToReplica::Slots,
            ToReplica::Conn {
                slot: 7,
                return_after_ms: 2000,
                carried: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            },
        ] {
            assert_eq!(ToReplica::decode(&m.encode()), Ok(m));
        }
        for m in [
            ToDaemon::Closed { slot: 65_535 },
            ToDaemon::Returned {
                slot: 1,
                carried: Bytes::new(),
            },
        ] {
            assert_eq!(ToDaemon::decode(&m.encode()), Ok(m));
        }
        assert_eq!(ToDaemon::decode(&[3, 0]), Err(Malformed(2)));
        assert_eq!(ToReplica::decode(&[9, 0, 0, 0, 0]), Err(Malformed(5)));
        assert_eq!(ToReplica::decode(&[1, 0, 0, 0, 0, 1]), Err(Malformed(6)));
    }
}
