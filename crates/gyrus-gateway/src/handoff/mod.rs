//! Connection hand-off: how a client's TCP connection moves from the daemon, which accepted it,
//! to the replica that runs its model, so that each request is parsed once, by the process that
//! answers it (one hop, as a Kubernetes Service balances connections rather than requests).
//!
//! The daemon accepts, reads the first request head ([`head`]), picks a ready replica and sends
//! it the socket (`SCM_RIGHTS`) with the bytes already read, over a `SOCK_SEQPACKET` pair made
//! at launch ([`channel`]). The replica serves the connection with its own HTTP server. The
//! daemon keeps a duplicate of every socket it handed out, and each replica publishes the state
//! of its connections (idle, request read, response under way) in memory both processes map
//! ([`slots`]), so that when a replica dies the daemon knows, connection by connection, what
//! to do: carry on serving an idle one, answer 503 to a request that was cut off, close one
//! whose response was half sent. A replica that stops, drains, or has served a connection for a
//! while gives it back with the bytes it had read and not used ([`wire::ToDaemon::Returned`]);
//! the daemon reads the next request head and hands it on again, which is also how connections
//! spread over replicas added later.
//!
//! [`link::HandoffLink`] is the daemon's side of one replica's channel; the replica's side lives
//! in `gyrus-replica`. [`io`] has the socket wrappers both sides share.

pub mod channel;
pub mod head;
pub mod io;
pub mod link;
pub mod slots;
pub mod wire;

/// The descriptor number a local replica finds its end of the channel at.
pub const REPLICA_CHANNEL_FD: i32 = 3;

/// The most bytes read ahead of a request that travel with a connection (a request head is
/// at most this long; anything longer is answered by the daemon, with 431).
pub const MAX_CARRIED_BYTES: usize = 64 * 1024;

/// Connections one replica may hold at once (the size of its slot table).
pub const MAX_SLOTS: u32 = 65_536;
