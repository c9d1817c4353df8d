// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The Hyper-V transport under VMBus: hypercall status codes, connection ids,
//! the SynIC message slot and the HvPostMessage input block.

use core::fmt;
use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A hypercall status (the low 16 bits of the hypercall result).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HvStatus(pub u16);

impl HvStatus {
    /// Success.
    pub const SUCCESS: HvStatus = HvStatus(0x0000);
    /// Unknown hypercall code.
    pub const INVALID_HYPERCALL_CODE: HvStatus = HvStatus(0x0002);
    /// Malformed hypercall input.
    pub const INVALID_HYPERCALL_INPUT: HvStatus = HvStatus(0x0003);
    /// Misaligned input.
    pub const INVALID_ALIGNMENT: HvStatus = HvStatus(0x0004);
    /// A parameter is out of range (e.g. payload longer than 240 bytes).
    pub const INVALID_PARAMETER: HvStatus = HvStatus(0x0005);
    /// The caller may not do this.
    pub const ACCESS_DENIED: HvStatus = HvStatus(0x0006);
    /// The partition is not in a state that allows the call.
    pub const INVALID_PARTITION_STATE: HvStatus = HvStatus(0x0007);
    /// Refused.
    pub const OPERATION_DENIED: HvStatus = HvStatus(0x0008);
    /// Out of memory: retry later.
    pub const INSUFFICIENT_MEMORY: HvStatus = HvStatus(0x000B);
    /// Bad VP index.
    pub const INVALID_VP_INDEX: HvStatus = HvStatus(0x000E);
    /// Unknown port.
    pub const INVALID_PORT_ID: HvStatus = HvStatus(0x0011);
    /// Unknown connection id (for InitiateContact: an old host; try id 1).
    pub const INVALID_CONNECTION_ID: HvStatus = HvStatus(0x0012);
    /// The receiver's message queue is full: retry later.
    pub const INSUFFICIENT_BUFFERS: HvStatus = HvStatus(0x0013);

    /// Whether the call succeeded.
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }
    /// Whether the post-message retry policy retries this status.
    pub const fn is_transient(self) -> bool {
        matches!(self.0, 0x000B | 0x0013)
    }
}

impl fmt::Debug for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            0x0000 => "SUCCESS",
            0x0002 => "INVALID_HYPERCALL_CODE",
            0x0003 => "INVALID_HYPERCALL_INPUT",
            0x0004 => "INVALID_ALIGNMENT",
            0x0005 => "INVALID_PARAMETER",
            0x0006 => "ACCESS_DENIED",
            0x0007 => "INVALID_PARTITION_STATE",
            0x0008 => "OPERATION_DENIED",
            0x000B => "INSUFFICIENT_MEMORY",
            0x000E => "INVALID_VP_INDEX",
            0x0011 => "INVALID_PORT_ID",
            0x0012 => "INVALID_CONNECTION_ID",
            0x0013 => "INSUFFICIENT_BUFFERS",
            _ => return write!(f, "HvStatus({:#06x})", self.0),
        };
        f.write_str(name)
    }
}

impl fmt::Display for HvStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Hypercall code of HvPostMessage.
pub const HVCALL_POST_MESSAGE: u16 = 0x005C;
/// Hypercall code of HvSignalEvent (a fast hypercall).
pub const HVCALL_SIGNAL_EVENT: u16 = 0x005D;

/// SINT used for VMBus messages and channel events.
pub const VMBUS_MESSAGE_SINT: u8 = 2;
/// Connection id for channel messages before VMBus 5.0.
pub const MESSAGE_CONNECTION_ID: u32 = 1;
/// Connection id for InitiateContact from VMBus 5.0 on.
pub const MESSAGE_CONNECTION_ID_4: u32 = 4;
/// Legacy event connection id (the interrupt page path).
pub const EVENT_CONNECTION_ID: u32 = 2;
/// Monitor connection id.
pub const MONITOR_CONNECTION_ID: u32 = 3;
/// A connection id is 24 bits; the top 8 are reserved.
pub const CONNECTION_ID_MASK: u32 = 0x00FF_FFFF;

/// SynIC message type of a free slot.
pub const HVMSG_NONE: u32 = 0;
/// Message type VMBus uses for channel messages (both directions).
pub const VMBUS_MESSAGE_TYPE: u32 = 1;
/// Timer-expired message type that can share the VMBus SINT.
pub const HVMSG_TIMER_EXPIRED: u32 = 0x8000_0010;

/// Payload bytes in one SynIC message / HvPostMessage input.
pub const MESSAGE_PAYLOAD_SIZE: usize = 240;
/// Event flags per SINT (bits), so also the largest relid + 1 that can be signalled.
pub const EVENT_FLAGS_COUNT: usize = 2048;

/// Bit 0 of `message_flags`: another message is queued behind this one (write EOM).
pub const MESSAGE_FLAG_PENDING: u8 = 0x01;

/// The 16-byte header of a SynIC message slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvMessageHeader {
    /// Message type; [`HVMSG_NONE`] when the slot is free.
    pub message_type: u32,
    /// Bytes of payload in use.
    pub payload_size: u8,
    /// Bit 0 = message pending.
    pub message_flags: u8,
    /// Reserved.
    pub reserved: u16,
    /// Sender / port id.
    pub sender: u64,
}

/// One SynIC message slot (256 bytes; 16 slots make the message page).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvMessage {
    /// Header.
    pub header: HvMessageHeader,
    /// Payload bytes (only `payload_size` are meaningful).
    pub payload: [u8; MESSAGE_PAYLOAD_SIZE],
}

/// The input block of HvPostMessage (256 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct HvPostMessageInput {
    /// Target connection id (24 bits used).
    pub connection_id: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Message type ([`VMBUS_MESSAGE_TYPE`]).
    pub message_type: u32,
    /// Bytes of payload in use (at most 240).
    pub payload_size: u32,
    /// Payload.
    pub payload: [u8; MESSAGE_PAYLOAD_SIZE],
}

const_assert_eq!(core::mem::size_of::<HvMessageHeader>(), 16);
const_assert_eq!(core::mem::offset_of!(HvMessageHeader, payload_size), 4);
const_assert_eq!(core::mem::offset_of!(HvMessageHeader, message_flags), 5);
const_assert_eq!(core::mem::offset_of!(HvMessageHeader, sender), 8);
const_assert_eq!(core::mem::size_of::<HvMessage>(), 256);
const_assert_eq!(core::mem::offset_of!(HvMessage, payload), 16);
const_assert_eq!(core::mem::size_of::<HvPostMessageInput>(), 256);
const_assert_eq!(core::mem::offset_of!(HvPostMessageInput, message_type), 8);
const_assert_eq!(core::mem::offset_of!(HvPostMessageInput, payload_size), 12);
const_assert_eq!(core::mem::offset_of!(HvPostMessageInput, payload), 16);

/// Why a SynIC message slot was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynicMessageError {
    /// The slot is shorter than 256 bytes.
    Truncated,
    /// The slot holds no message.
    Empty,
    /// `payload_size` is larger than 240.
    PayloadTooLong(u8),
}

impl HvMessage {
    /// Parses a slot that was already copied out of the shared message page,
    /// returning the header and the meaningful payload bytes.
    pub fn parse(slot: &[u8]) -> Result<(HvMessageHeader, &[u8]), SynicMessageError> {
        if slot.len() < core::mem::size_of::<HvMessage>() {
            return Err(SynicMessageError::Truncated);
        }
        let (header, payload) = HvMessageHeader::read_from_prefix(slot).map_err(|_| SynicMessageError::Truncated)?;
        if header.message_type == HVMSG_NONE {
            return Err(SynicMessageError::Empty);
        }
        let len = header.payload_size as usize;
        if len > MESSAGE_PAYLOAD_SIZE {
            return Err(SynicMessageError::PayloadTooLong(header.payload_size));
        }
        Ok((header, &payload[..len]))
    }

    /// Builds a slot holding `payload` (at most 240 bytes; longer is refused).
    pub fn new(message_type: u32, payload: &[u8]) -> Option<HvMessage> {
        if payload.len() > MESSAGE_PAYLOAD_SIZE {
            return None;
        }
        let mut msg = HvMessage {
            header: HvMessageHeader { message_type, payload_size: payload.len() as u8, ..Default::default() },
            payload: [0; MESSAGE_PAYLOAD_SIZE],
        };
        msg.payload[..payload.len()].copy_from_slice(payload);
        Some(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_parse_rejects_bad_lengths() {
        let mut raw = [0u8; 256];
        assert_eq!(HvMessage::parse(&raw[..100]).unwrap_err(), SynicMessageError::Truncated);
        assert_eq!(HvMessage::parse(&raw).unwrap_err(), SynicMessageError::Empty);
        raw[0] = 1;
        raw[4] = 241;
        assert_eq!(HvMessage::parse(&raw).unwrap_err(), SynicMessageError::PayloadTooLong(241));
        raw[4] = 12;
        let (h, p) = HvMessage::parse(&raw).unwrap();
        assert_eq!(h.message_type, 1);
        assert_eq!(p.len(), 12);
    }

    proptest::proptest! {
        /// Any slot contents: parse never panics and never returns more than
        /// 240 payload bytes or more than the header's payload_size.
        #[test]
        fn slot_parse_is_total(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok((h, p)) = HvMessage::parse(&raw) {
                proptest::prop_assert!(p.len() <= MESSAGE_PAYLOAD_SIZE);
                proptest::prop_assert_eq!(p.len(), usize::from(h.payload_size));
                proptest::prop_assert!(h.message_type != HVMSG_NONE);
            }
        }
    }

    #[test]
    fn statuses() {
        assert!(HvStatus::INSUFFICIENT_BUFFERS.is_transient());
        assert!(!HvStatus::INVALID_CONNECTION_ID.is_transient());
        assert_eq!(std::format!("{}", HvStatus(0x77)), "HvStatus(0x0077)");
    }
}
