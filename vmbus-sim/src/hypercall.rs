// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The two hypercalls VMBus makes, as the simulated hypervisor answers them.
//!
//! [`Hypercalls`] implements [`vmbus_core::platform::Hypervisor`] for the
//! simulated guest. It keeps the hypervisor's port table (which connection
//! ids exist), checks each call like Hyper-V does and returns real status
//! codes:
//!
//! * HvPostMessage: reserved connection-id bits set or a bad input block →
//!   `INVALID_PARAMETER`; payload over 240 bytes → `INVALID_PARAMETER`;
//!   a message type other than 1 → `INVALID_PARAMETER`; an unknown
//!   connection id → `INVALID_CONNECTION_ID`; the host's queue full →
//!   `INSUFFICIENT_BUFFERS` (the guest retries);
//! * HvSignalEvent: an unknown connection id → `INVALID_CONNECTION_ID`.
//!
//! Accepted messages wait in a bounded inbox until the simulated host takes
//! them; signals are recorded per connection id.
//!
//! The hypercalls take `&self` (the trait's contract), so the state lives in
//! a `RefCell`: the simulator is single-threaded.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use vmbus_core::hv::{HvPostMessageInput, HvStatus, CONNECTION_ID_MASK, MESSAGE_PAYLOAD_SIZE, VMBUS_MESSAGE_TYPE};
use vmbus_core::platform::Hypervisor;

/// A message the guest posted, waiting for the host.
#[derive(Clone, Copy)]
pub struct PostedMessage {
    /// Connection id it was posted to.
    pub connection_id: u32,
    len: u8,
    buf: [u8; MESSAGE_PAYLOAD_SIZE],
}

impl PostedMessage {
    /// The payload.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl fmt::Debug for PostedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostedMessage").field("connection_id", &self.connection_id).field("len", &self.len).finish()
    }
}

/// Hypercall counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallStats {
    /// HvPostMessage calls.
    pub post_calls: u64,
    /// Calls that returned SUCCESS.
    pub post_ok: u64,
    /// Calls refused with INVALID_CONNECTION_ID.
    pub post_invalid_connection: u64,
    /// Calls refused with INVALID_PARAMETER.
    pub post_invalid_parameter: u64,
    /// Calls refused with INSUFFICIENT_BUFFERS.
    pub post_insufficient_buffers: u64,
    /// HvSignalEvent calls.
    pub signal_calls: u64,
    /// Signals refused with INVALID_CONNECTION_ID.
    pub signal_invalid_connection: u64,
}

struct State {
    message_ports: Vec<u32>,
    event_ports: Vec<u32>,
    inbox: VecDeque<PostedMessage>,
    inbox_limit: usize,
    /// Event connection ids signalled and not yet taken by the host, in order, without duplicates.
    signalled: Vec<u32>,
    /// Fault injection: refuse this many posts with INSUFFICIENT_BUFFERS.
    refuse_posts: u32,
    stats: HypercallStats,
}

/// The simulated hypervisor's hypercall entry points.
pub struct Hypercalls {
    state: RefCell<State>,
}

impl fmt::Debug for Hypercalls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state.borrow();
        f.debug_struct("Hypercalls")
            .field("message_ports", &s.message_ports)
            .field("event_ports", &s.event_ports)
            .field("inbox", &s.inbox.len())
            .field("stats", &s.stats)
            .finish()
    }
}

impl Hypercalls {
    /// A hypervisor with no ports yet and a host inbox of `inbox_limit` messages.
    pub fn new(inbox_limit: usize) -> Hypercalls {
        Hypercalls {
            state: RefCell::new(State {
                message_ports: Vec::new(),
                event_ports: Vec::new(),
                inbox: VecDeque::new(),
                inbox_limit,
                signalled: Vec::new(),
                refuse_posts: 0,
                stats: HypercallStats::default(),
            }),
        }
    }

    /// Creates a message port (the host does this for connection ids 1 and,
    /// from VMBus 5.0, 4 and the id it hands out).
    pub fn add_message_port(&self, connection_id: u32) {
        let mut s = self.state.borrow_mut();
        if !s.message_ports.contains(&connection_id) {
            s.message_ports.push(connection_id);
        }
    }

    /// Creates an event port (one per offered channel, its offer's connection id).
    pub fn add_event_port(&self, connection_id: u32) {
        let mut s = self.state.borrow_mut();
        if !s.event_ports.contains(&connection_id) {
            s.event_ports.push(connection_id);
        }
    }

    /// Deletes an event port (channel rescinded and released).
    pub fn remove_event_port(&self, connection_id: u32) {
        let mut s = self.state.borrow_mut();
        s.event_ports.retain(|&c| c != connection_id);
        s.signalled.retain(|&c| c != connection_id);
    }

    /// Deletes every port (a host that went away).
    pub fn remove_all_ports(&self) {
        let mut s = self.state.borrow_mut();
        s.message_ports.clear();
        s.event_ports.clear();
    }

    /// Makes the next `count` posts fail with INSUFFICIENT_BUFFERS.
    pub fn refuse_next_posts(&self, count: u32) {
        self.state.borrow_mut().refuse_posts = count;
    }

    /// Counters.
    pub fn stats(&self) -> HypercallStats {
        self.state.borrow().stats
    }

    /// Host side: takes the oldest posted message.
    pub fn take_message(&self) -> Option<PostedMessage> {
        self.state.borrow_mut().inbox.pop_front()
    }

    /// The oldest posted message, left in place (fault injection looks ahead).
    pub fn peek_message(&self) -> Option<PostedMessage> {
        self.state.borrow().inbox.front().copied()
    }

    /// Messages waiting for the host.
    pub fn pending_messages(&self) -> usize {
        self.state.borrow().inbox.len()
    }

    /// Host side: takes the event connection ids signalled since the last call.
    pub fn take_signals(&self) -> Vec<u32> {
        core::mem::take(&mut self.state.borrow_mut().signalled)
    }

    /// Whether a signal waits for the host.
    pub fn signals_pending(&self) -> bool {
        !self.state.borrow().signalled.is_empty()
    }

    /// HvPostMessage with a complete input block, as the hypercall page sees it.
    pub fn post_message_input(&self, input: &HvPostMessageInput) -> HvStatus {
        let mut s = self.state.borrow_mut();
        s.stats.post_calls += 1;
        let status = Self::check_post(&s, input);
        match status {
            HvStatus::SUCCESS => {
                let mut msg =
                    PostedMessage { connection_id: input.connection_id, len: input.payload_size as u8, buf: [0; 240] };
                msg.buf = input.payload;
                s.inbox.push_back(msg);
                s.stats.post_ok += 1;
            }
            HvStatus::INVALID_CONNECTION_ID => s.stats.post_invalid_connection += 1,
            HvStatus::INSUFFICIENT_BUFFERS => {
                s.refuse_posts = s.refuse_posts.saturating_sub(1);
                s.stats.post_insufficient_buffers += 1
            }
            _ => s.stats.post_invalid_parameter += 1,
        }
        status
    }

    fn check_post(s: &State, input: &HvPostMessageInput) -> HvStatus {
        if input.connection_id & !CONNECTION_ID_MASK != 0 || input.reserved != 0 {
            return HvStatus::INVALID_PARAMETER;
        }
        if input.payload_size as usize > MESSAGE_PAYLOAD_SIZE || input.message_type != VMBUS_MESSAGE_TYPE {
            return HvStatus::INVALID_PARAMETER;
        }
        if !s.message_ports.contains(&input.connection_id) {
            return HvStatus::INVALID_CONNECTION_ID;
        }
        if s.refuse_posts > 0 || s.inbox.len() >= s.inbox_limit {
            return HvStatus::INSUFFICIENT_BUFFERS;
        }
        HvStatus::SUCCESS
    }
}

impl Hypervisor for Hypercalls {
    fn post_message(&self, connection_id: u32, message: &[u8]) -> HvStatus {
        if message.len() > MESSAGE_PAYLOAD_SIZE {
            // The guest cannot even build an input block for this.
            let mut s = self.state.borrow_mut();
            s.stats.post_calls += 1;
            s.stats.post_invalid_parameter += 1;
            return HvStatus::INVALID_PARAMETER;
        }
        let mut input = HvPostMessageInput {
            connection_id,
            reserved: 0,
            message_type: VMBUS_MESSAGE_TYPE,
            payload_size: message.len() as u32,
            payload: [0; MESSAGE_PAYLOAD_SIZE],
        };
        input.payload[..message.len()].copy_from_slice(message);
        self.post_message_input(&input)
    }

    fn signal_event(&self, connection_id: u32) -> HvStatus {
        let mut s = self.state.borrow_mut();
        s.stats.signal_calls += 1;
        if !s.event_ports.contains(&connection_id) {
            s.stats.signal_invalid_connection += 1;
            return HvStatus::INVALID_CONNECTION_ID;
        }
        if !s.signalled.contains(&connection_id) {
            s.signalled.push(connection_id);
        }
        HvStatus::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_message_statuses() {
        let hv = Hypercalls::new(2);
        assert_eq!(hv.post_message(1, &[0; 8]), HvStatus::INVALID_CONNECTION_ID);
        hv.add_message_port(1);
        assert_eq!(hv.post_message(1, &[0; 241]), HvStatus::INVALID_PARAMETER);
        assert_eq!(hv.post_message(0x0100_0001, &[0; 8]), HvStatus::INVALID_PARAMETER);
        let mut input =
            HvPostMessageInput { connection_id: 1, reserved: 0, message_type: 2, payload_size: 8, payload: [0; 240] };
        assert_eq!(hv.post_message_input(&input), HvStatus::INVALID_PARAMETER);
        input.message_type = 1;
        input.payload_size = 241;
        assert_eq!(hv.post_message_input(&input), HvStatus::INVALID_PARAMETER);
        assert_eq!(hv.post_message(1, &[7; 8]), HvStatus::SUCCESS);
        assert_eq!(hv.post_message(1, &[8; 12]), HvStatus::SUCCESS);
        assert_eq!(hv.post_message(1, &[9; 8]), HvStatus::INSUFFICIENT_BUFFERS);
        let m = hv.take_message().unwrap();
        assert_eq!((m.connection_id, m.bytes()), (1, &[7u8; 8][..]));
        hv.refuse_next_posts(1);
        assert_eq!(hv.post_message(1, &[9; 8]), HvStatus::INSUFFICIENT_BUFFERS);
        assert_eq!(hv.post_message(1, &[9; 8]), HvStatus::SUCCESS);
        assert_eq!(hv.take_message().unwrap().bytes(), &[8u8; 12][..]);
        let st = hv.stats();
        assert_eq!(st.post_calls, 10);
        assert_eq!(st.post_ok, 3);
        assert_eq!(st.post_invalid_connection, 1);
        assert_eq!(st.post_invalid_parameter, 4);
        assert_eq!(st.post_insufficient_buffers, 2);
    }

    #[test]
    fn signal_event_statuses() {
        let hv = Hypercalls::new(2);
        assert_eq!(hv.signal_event(0x2001), HvStatus::INVALID_CONNECTION_ID);
        hv.add_event_port(0x2001);
        assert_eq!(hv.signal_event(0x2001), HvStatus::SUCCESS);
        assert_eq!(hv.signal_event(0x2001), HvStatus::SUCCESS);
        assert_eq!(hv.take_signals(), [0x2001]);
        assert!(hv.take_signals().is_empty());
        hv.remove_event_port(0x2001);
        assert_eq!(hv.signal_event(0x2001), HvStatus::INVALID_CONNECTION_ID);
        assert_eq!(hv.stats().signal_calls, 4);
        assert_eq!(hv.stats().signal_invalid_connection, 2);
    }
}
