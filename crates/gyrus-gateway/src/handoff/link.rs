//! The daemon's side of one replica's hand-off channel: it hands connections over, keeps a
//! duplicate of each, and tells the connection's task how its stay in the replica ended.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::channel::Channel;
use super::slots::{SlotState, SlotTable};
use super::wire::{ToDaemon, ToReplica};
use super::MAX_SLOTS;

/// How a handed connection came back.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The replica ended it.
    Closed,
    /// Idle, with the bytes the replica read and did not use: the daemon serves it on.
    Returned(Bytes),
    /// The replica died holding it, in this state.
    Died(SlotState),
}

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("the replica's hand-off channel is closed")]
    Gone,
    #[error("the replica holds {MAX_SLOTS} connections already")]
    Full,
    #[error("sending a connection to the replica: {0}")]
    Send(std::io::Error),
}

#[derive(Debug, Default)]
struct Slots {
    free: Vec<u32>,
    next: u32,
    waiting: HashMap<u32, oneshot::Sender<Outcome>>,
}

/// See the module documentation. Made by the launcher with the channel; the controller puts
/// it on the replica's route target.
#[derive(Debug)]
pub struct HandoffLink {
    channel: Channel,
    table: SlotTable,
    slots: Mutex<Slots>,
    dead: AtomicBool,
    held: AtomicUsize,
}

impl HandoffLink {
    /// A link over the daemon's end of a channel pair; sends the replica its slot table, and
    /// listens to the replica until its end closes. Must be called within a tokio runtime.
    pub fn start(channel: Channel) -> std::io::Result<Arc<HandoffLink>> {
        let (table, memfd) = SlotTable::create(MAX_SLOTS)?;
        let link = Arc::new(HandoffLink {
            channel,
            table,
            slots: Mutex::new(Slots::default()),
            dead: AtomicBool::new(false),
            held: AtomicUsize::new(0),
        });
        let listener = link.clone();
        tokio::spawn(async move {
            let hello = ToReplica::Slots.encode();
            if listener
                .channel
                .send(&hello, Some(memfd.as_raw_fd()))
                .await
                .is_ok()
            {
                drop(memfd);
                listener.listen().await;
            }
            listener.died();
        });
        Ok(link)
    }

    /// Connections the replica holds now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        // Plain maps and counters: whatever panicked left them usable.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands `socket` over with the bytes read from it. The daemon keeps `socket` (it must not
    /// read it meanwhile) until the receiver says how the connection came back.
    pub async fn hand(
        &self,
        socket: &impl AsRawFd,
        carried: Bytes,
        return_after_ms: u32,
    ) -> Result<oneshot::Receiver<Outcome>, HandoffError> {
        let (tx, rx) = oneshot::channel();
        let slot = {
            let mut s = self.lock();
            if self.is_dead() {
                return Err(HandoffError::Gone);
            }
            let slot = match s.free.pop() {
                Some(slot) => slot,
                None if s.next < MAX_SLOTS => {
                    s.next += 1;
                    s.next - 1
                }
                None => return Err(HandoffError::Full),
            };
            s.waiting.insert(slot, tx);
            slot
        };
        // The first request is read: if the replica dies before touching it, it gets a 503.
        self.table.set(slot, SlotState::Request);
        self.held.fetch_add(1, Ordering::Relaxed);
        let msg = ToReplica::Conn {
            slot,
            return_after_ms,
            carried,
        }
        .encode();
        if let Err(e) = self.channel.send(&msg, Some(socket.as_raw_fd())).await {
            self.release(slot);
            return Err(if self.is_dead() {
                HandoffError::Gone
            } else {
                HandoffError::Send(e)
            });
        }
        Ok(rx)
    }

    /// Frees `slot`; its waiter, if still there, is returned.
    fn release(&self, slot: u32) -> Option<oneshot::Sender<Outcome>> {
        let mut s = self.lock();
        let waiter = s.waiting.remove(&slot);
        if waiter.is_some() {
            self.table.set(slot, SlotState::Idle);
            s.free.push(slot);
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        waiter
    }

    async fn listen(&self) {
        loop {
            let msg = match self.channel.recv().await {
                Ok(Some((msg, _fd))) => msg,
                Ok(None) | Err(_) => return,
            };
            let (slot, outcome) = match ToDaemon::decode(&msg) {
                Ok(ToDaemon::Closed { slot }) => (slot, Outcome::Closed),
                Ok(ToDaemon::Returned { slot, carried }) => (slot, Outcome::Returned(carried)),
                Err(e) => {
                    tracing::warn!("hand-off channel: {e}");
                    continue;
                }
            };
            if let Some(waiter) = self.release(slot) {
                let _ = waiter.send(outcome);
            }
        }
    }

    /// The replica is gone: every connection it held comes back, with the state it was in.
    fn died(&self) {
        let waiting: Vec<(u32, oneshot::Sender<Outcome>)> = {
            let mut s = self.lock();
            self.dead.store(true, Ordering::Release);
            s.waiting.drain().collect()
        };
        self.held.store(0, Ordering::Relaxed);
        for (slot, waiter) in waiting {
            let _ = waiter.send(Outcome::Died(self.table.get(slot)));
        }
    }
}

/// Makes a channel pair and starts the daemon's side: the link, and the replica's end.
pub fn pair() -> std::io::Result<(Arc<HandoffLink>, OwnedFd)> {
    let (ours, theirs) = Channel::pair()?;
    Ok((HandoffLink::start(ours)?, theirs))
}
