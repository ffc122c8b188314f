//! The slot table: one byte per connection a replica holds, in a memory file that the daemon
//! makes and both processes map. The replica writes each connection's [`SlotState`] as its
//! requests come and go (a store, no system call); the daemon reads them only when the replica
//! has died, to decide what each of its connections needs.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU8, Ordering};

/// Where a handed connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    /// Between requests: nothing read of the next one. Another process can carry on.
    Idle = 0,
    /// Bytes of a request were read and no byte of its response was written.
    Request = 1,
    /// Part of a response may have been written.
    Responding = 2,
    /// The response was produced and may not all be flushed yet.
    Done = 3,
}

impl SlotState {
    fn from_u8(v: u8) -> SlotState {
        match v {
            0 => SlotState::Idle,
            1 => SlotState::Request,
            2 => SlotState::Responding,
            _ => SlotState::Done,
        }
    }
}

/// A shared table of [`SlotState`]s.
#[derive(Debug)]
pub struct SlotTable {
    map: memmap2::MmapRaw,
}

impl SlotTable {
    /// A new table of `len` slots, all idle, and the descriptor to send to the replica.
    pub fn create(len: u32) -> std::io::Result<(SlotTable, OwnedFd)> {
        let fd =
            nix::sys::memfd::memfd_create(c"gyrus-slots", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
        let file = std::fs::File::from(fd);
        file.set_len(u64::from(len.max(1)))?;
        let map = memmap2::MmapOptions::new().map_raw(&file)?;
        Ok((SlotTable { map }, file.into()))
    }

    /// Maps a table received from the daemon.
    pub fn open(fd: OwnedFd) -> std::io::Result<SlotTable> {
        let file = std::fs::File::from(fd);
        let map = memmap2::MmapOptions::new().map_raw(&file)?;
        Ok(SlotTable { map })
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    fn cell(&self, slot: u32) -> Option<&AtomicU8> {
        let i = slot as usize;
        (i < self.map.len()).then(|| {
            // SAFETY: `i` is inside the mapping, which lives as long as `self`; the other
            // process only ever accesses it through the same atomic bytes.
            unsafe { AtomicU8::from_ptr(self.map.as_mut_ptr().add(i)) }
        })
    }

    pub fn set(&self, slot: u32, state: SlotState) {
        if let Some(c) = self.cell(slot) {
            c.store(state as u8, Ordering::Release);
        }
    }

    pub fn get(&self, slot: u32) -> SlotState {
        self.cell(slot)
            .map(|c| SlotState::from_u8(c.load(Ordering::Acquire)))
            .unwrap_or(SlotState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_mappings_see_the_same_states() {
        let (ours, fd) = SlotTable::create(16).unwrap();
        let theirs = SlotTable::open(fd).unwrap();
        assert_eq!(theirs.len(), 16);
        assert_eq!(ours.get(3), SlotState::Idle);
        theirs.set(3, SlotState::Responding);
        assert_eq!(ours.get(3), SlotState::Responding);
        // Outside the table: never taken for idle.
        theirs.set(99, SlotState::Idle);
        assert_eq!(ours.get(99), SlotState::Done);
    }
}
