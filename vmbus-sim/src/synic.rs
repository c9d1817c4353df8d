// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The simulated synthetic interrupt controller (SynIC) of the VP that
//! receives VMBus traffic: the SINT 2 message slot with the queue the
//! hypervisor keeps behind it, and the SINT 2 event-flag bitmap.
//!
//! Message slot rules (reference §1.1): the hypervisor puts a message in the
//! slot only when the slot is free. If more messages wait behind it, the
//! slot's `msg_pending` flag is set; the guest copies the slot out, frees it
//! (message type back to `HVMSG_NONE`) and, if `msg_pending` was set, writes
//! end-of-message (EOM) so the hypervisor delivers the next one. A message
//! arriving while the slot is free is delivered at once.
//!
//! Event flags: 2048 bits, bit = channel relid, bit 0 reserved for the
//! message connection. Setting a clear bit raises an interrupt; the guest
//! takes (reads and clears) the bits it handles.

use alloc::collections::VecDeque;
use core::fmt;
use vmbus_core::hv::{
    HvMessage, HvMessageHeader, EVENT_FLAGS_COUNT, HVMSG_NONE, MESSAGE_FLAG_PENDING, MESSAGE_PAYLOAD_SIZE,
    VMBUS_MESSAGE_TYPE,
};
use zerocopy::IntoBytes;

/// Words of the event-flag bitmap.
pub const EVENT_WORDS: usize = EVENT_FLAGS_COUNT / 64;

/// Why the SynIC refused a host action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynicError {
    /// The payload exceeds 240 bytes.
    PayloadTooLong(usize),
    /// The hypervisor's queue for this SINT is full.
    QueueFull,
    /// Relid 0 (reserved) or beyond the 2048 event flags.
    BadEventBit(u32),
}

impl fmt::Display for SynicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SynicError::PayloadTooLong(n) => write!(f, "message payload of {n} bytes exceeds 240"),
            SynicError::QueueFull => f.write_str("SINT message queue full"),
            SynicError::BadEventBit(b) => write!(f, "event flag {b} does not exist or is reserved"),
        }
    }
}

/// SynIC counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynicStats {
    /// Messages the host queued.
    pub messages_queued: u64,
    /// Messages placed in the slot (each raises an interrupt).
    pub messages_delivered: u64,
    /// End-of-message writes by the guest.
    pub eoms: u64,
    /// Interrupts raised for an event flag going from clear to set.
    pub event_interrupts: u64,
    /// Event-flag sets that found the bit already set (coalesced, no new interrupt).
    pub events_coalesced: u64,
    /// Interrupts raised in total (message deliveries + event interrupts).
    pub interrupts: u64,
}

/// SINT 2 of one VP.
pub struct Synic {
    slot: HvMessage,
    queue: VecDeque<HvMessage>,
    queue_limit: usize,
    flags: [u64; EVENT_WORDS],
    stats: SynicStats,
}

impl fmt::Debug for Synic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Synic")
            .field("slot_type", &self.slot.header.message_type)
            .field("queued", &self.queue.len())
            .field("stats", &self.stats)
            .finish()
    }
}

const EMPTY_SLOT: HvMessage = HvMessage {
    header: HvMessageHeader { message_type: HVMSG_NONE, payload_size: 0, message_flags: 0, reserved: 0, sender: 0 },
    payload: [0; MESSAGE_PAYLOAD_SIZE],
};

impl Synic {
    /// A SynIC whose hidden message queue holds at most `queue_limit` messages.
    pub fn new(queue_limit: usize) -> Synic {
        Synic {
            slot: EMPTY_SLOT,
            queue: VecDeque::new(),
            queue_limit,
            flags: [0; EVENT_WORDS],
            stats: SynicStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> SynicStats {
        self.stats
    }

    /// Whether the slot holds a message.
    pub fn slot_full(&self) -> bool {
        self.slot.header.message_type != HVMSG_NONE
    }

    /// Messages waiting behind the slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Host side: queues a VMBus channel message for the guest.
    pub fn post(&mut self, payload: &[u8]) -> Result<(), SynicError> {
        let msg = HvMessage::new(VMBUS_MESSAGE_TYPE, payload).ok_or(SynicError::PayloadTooLong(payload.len()))?;
        self.post_raw(msg)
    }

    /// Host side: queues a raw slot image, whatever its header says (fault
    /// injection uses this for slots with a bad `payload_size`).
    pub fn post_raw(&mut self, msg: HvMessage) -> Result<(), SynicError> {
        if self.queue.len() >= self.queue_limit {
            return Err(SynicError::QueueFull);
        }
        self.stats.messages_queued += 1;
        self.queue.push_back(msg);
        self.deliver();
        Ok(())
    }

    /// Moves the next queued message into a free slot, or marks the
    /// occupied slot `msg_pending` so the guest will write EOM.
    fn deliver(&mut self) {
        if self.slot_full() {
            if !self.queue.is_empty() {
                self.slot.header.message_flags |= MESSAGE_FLAG_PENDING;
            }
            return;
        }
        if let Some(mut next) = self.queue.pop_front() {
            if self.queue.is_empty() {
                next.header.message_flags &= !MESSAGE_FLAG_PENDING;
            } else {
                next.header.message_flags |= MESSAGE_FLAG_PENDING;
            }
            self.slot = next;
            self.stats.messages_delivered += 1;
            self.stats.interrupts += 1;
        }
    }

    /// Guest side: copies the slot out (all 256 bytes, as the guest copies
    /// the shared slot before parsing it) and frees it. Returns the copy and
    /// whether `msg_pending` was set, i.e. whether the guest must call
    /// [`Synic::eom`]. `None` if the slot is empty.
    pub fn take_slot(&mut self) -> Option<([u8; 256], bool)> {
        if !self.slot_full() {
            return None;
        }
        let mut copy = [0u8; 256];
        copy.copy_from_slice(self.slot.as_bytes());
        let pending = self.slot.header.message_flags & MESSAGE_FLAG_PENDING != 0;
        self.slot = EMPTY_SLOT;
        Some((copy, pending))
    }

    /// Guest side: end-of-message. The hypervisor delivers the next queued message.
    pub fn eom(&mut self) {
        self.stats.eoms += 1;
        self.deliver();
    }

    /// Drops every queued message and empties the slot (a guest that resets
    /// its SynIC, e.g. after unload).
    pub fn clear_messages(&mut self) {
        self.queue.clear();
        self.slot = EMPTY_SLOT;
    }

    /// Host side: sets event flag `relid`. Returns whether this raised an
    /// interrupt (the bit was clear).
    pub fn set_event(&mut self, relid: u32) -> Result<bool, SynicError> {
        let bit = relid as usize;
        if relid == 0 || bit >= EVENT_FLAGS_COUNT {
            return Err(SynicError::BadEventBit(relid));
        }
        let (word, mask) = (bit / 64, 1u64 << (bit % 64));
        if self.flags[word] & mask != 0 {
            self.stats.events_coalesced += 1;
            return Ok(false);
        }
        self.flags[word] |= mask;
        self.stats.event_interrupts += 1;
        self.stats.interrupts += 1;
        Ok(true)
    }

    /// Whether any event flag is set.
    pub fn events_pending(&self) -> bool {
        self.flags.iter().any(|&w| w != 0)
    }

    /// Guest side: takes (reads and clears) every set event flag, lowest relid first.
    pub fn take_events(&mut self) -> EventBits {
        let bits = EventBits { words: self.flags, next: 0 };
        self.flags = [0; EVENT_WORDS];
        bits
    }
}

/// Relids whose event flags were set, in ascending order.
#[derive(Clone, Debug)]
pub struct EventBits {
    words: [u64; EVENT_WORDS],
    next: usize,
}

impl Iterator for EventBits {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        while self.next < EVENT_WORDS {
            let w = self.words[self.next];
            if w == 0 {
                self.next += 1;
                continue;
            }
            let bit = w.trailing_zeros();
            self.words[self.next] &= !(1u64 << bit);
            return Some((self.next * 64) as u32 + bit);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn slot_pending_and_eom() {
        let mut s = Synic::new(8);
        assert!(s.take_slot().is_none());
        s.post(&[1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(s.stats().messages_delivered, 1);
        s.post(&[2, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        // The second waits and marks the slot pending.
        let (raw, pending) = s.take_slot().unwrap();
        assert!(pending);
        assert_eq!(raw[16], 1);
        assert_eq!(raw[4], 8);
        // No delivery until EOM.
        assert!(!s.slot_full());
        s.eom();
        let (raw, pending) = s.take_slot().unwrap();
        assert_eq!(raw[16], 2);
        assert!(!pending);
        // A message into a free slot with an empty queue is delivered at once.
        s.post(&[3; 8]).unwrap();
        assert!(s.slot_full());
        assert_eq!(s.stats().messages_delivered, 3);
        assert_eq!(s.stats().eoms, 1);
    }

    #[test]
    fn queue_limit_and_long_payload() {
        let mut s = Synic::new(1);
        s.post(&[1; 8]).unwrap(); // delivered to the slot
        s.post(&[1; 8]).unwrap(); // queued
        assert_eq!(s.post(&[1; 8]), Err(SynicError::QueueFull));
        assert_eq!(s.post(&[0; 241]), Err(SynicError::PayloadTooLong(241)));
    }

    #[test]
    fn event_flags() {
        let mut s = Synic::new(1);
        assert_eq!(s.set_event(0), Err(SynicError::BadEventBit(0)));
        assert_eq!(s.set_event(2048), Err(SynicError::BadEventBit(2048)));
        assert_eq!(s.set_event(5), Ok(true));
        assert_eq!(s.set_event(5), Ok(false));
        assert_eq!(s.set_event(2047), Ok(true));
        assert_eq!(s.set_event(64), Ok(true));
        assert!(s.events_pending());
        let got: Vec<u32> = s.take_events().collect();
        assert_eq!(got, [5, 64, 2047]);
        assert!(!s.events_pending());
        assert_eq!(s.stats().event_interrupts, 3);
        assert_eq!(s.stats().events_coalesced, 1);
    }
}
