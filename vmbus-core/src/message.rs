// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Channel messages: the control protocol carried in SynIC messages
//! (host to guest) and HvPostMessage (guest to host).
//!
//! Every message starts with an 8-byte [`MessageHeader`]. Each fixed-size
//! message is a `#[repr(C)]` zerocopy struct that *includes* its header, so
//! `size_of` equals the wire size that `reference/` gives and the field
//! offsets can be pinned with `static_assertions`. 64-bit fields use
//! zerocopy's little-endian `U64` (alignment 1) because the C structs are
//! packed.
//!
//! [`ChannelMessage::parse`] is the only way host bytes become a message: it
//! checks the type, the minimum length of that type and every variable-length
//! tail, and never panics.

use crate::guid::Guid;
use crate::hv::MESSAGE_PAYLOAD_SIZE;
use crate::version::Version;
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

#[cfg(target_endian = "big")]
compile_error!("VMBus wire structs use native little-endian integers");

/// A channel message type (`vmbus_channel_message_type`), an open set: an
/// unknown value is representable and rejected by [`ChannelMessage::parse`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(transparent)]
pub struct MessageType(pub u32);

macro_rules! message_types {
    ($( $konst:ident = $val:literal, )*) => {
        impl MessageType {
            $(
                #[doc = concat!("Message type ", stringify!($val), ".")]
                pub const $konst: MessageType = MessageType($val);
            )*
            /// Name for logs.
            pub const fn name(self) -> &'static str {
                match self.0 {
                    $( $val => stringify!($konst), )*
                    _ => "UNKNOWN",
                }
            }
        }
    };
}

message_types! {
    INVALID = 0,
    OFFER_CHANNEL = 1,
    RESCIND_CHANNEL_OFFER = 2,
    REQUEST_OFFERS = 3,
    ALL_OFFERS_DELIVERED = 4,
    OPEN_CHANNEL = 5,
    OPEN_CHANNEL_RESULT = 6,
    CLOSE_CHANNEL = 7,
    GPADL_HEADER = 8,
    GPADL_BODY = 9,
    GPADL_CREATED = 10,
    GPADL_TEARDOWN = 11,
    GPADL_TORNDOWN = 12,
    RELID_RELEASED = 13,
    INITIATE_CONTACT = 14,
    VERSION_RESPONSE = 15,
    UNLOAD = 16,
    UNLOAD_RESPONSE = 17,
    TL_CONNECT_REQUEST = 21,
    MODIFY_CHANNEL = 22,
    TL_CONNECT_RESULT = 23,
    MODIFY_CHANNEL_RESPONSE = 24,
}

impl core::fmt::Debug for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// The 8-byte header of every channel message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct MessageHeader {
    /// Message type.
    pub msgtype: MessageType,
    /// Padding, zero on send, ignored on receipt.
    pub padding: u32,
}

impl MessageHeader {
    /// A header for `msgtype`.
    pub const fn new(msgtype: MessageType) -> MessageHeader {
        MessageHeader { msgtype, padding: 0 }
    }
}

/// `user_defined` bytes in an offer and in OpenChannel.
pub const MAX_USER_DEFINED_BYTES: usize = 120;
/// A relid no channel has.
pub const INVALID_RELID: u32 = 0xFFFF_FFFF;

bitflags::bitflags! {
    /// `chn_flags` of an offer.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct OfferFlags: u16 {
        /// Enumerate the device interface.
        const ENUMERATE_DEVICE_INTERFACE = 0x0001;
        /// Legacy "transfer pages"; VMBus 6.0: confidential ring buffer.
        const CONFIDENTIAL_RING_BUFFER = 0x0002;
        /// Legacy "GPADLs"; VMBus 6.0: confidential external memory.
        const CONFIDENTIAL_EXTERNAL_MEMORY = 0x0004;
        /// Named pipe mode (user bytes start with `pipe_mode`).
        const NAMED_PIPE_MODE = 0x0010;
        /// Loopback offer.
        const LOOPBACK_OFFER = 0x0100;
        /// Parent offer.
        const PARENT_OFFER = 0x0200;
        /// The host asks for monitored notification.
        const REQUEST_MONITORED_NOTIFICATION = 0x0400;
        /// hv_sock channel: its GUIDs are per connection, not a device class.
        const TLNPI_PROVIDER_OFFER = 0x2000;
    }
}

/// OfferChannel (type 1, 196 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OfferChannel {
    /// Header.
    pub header: MessageHeader,
    /// Device class.
    pub if_type: Guid,
    /// Device instance.
    pub if_instance: Guid,
    /// Reserved.
    pub reserved1: U64,
    /// Reserved.
    pub reserved2: U64,
    /// [`OfferFlags`] bits.
    pub chn_flags: u16,
    /// MMIO space the device wants, in MiB.
    pub mmio_megabytes: u16,
    /// Class-specific bytes (pipe offers: `pipe_mode` u32 then 116 bytes).
    pub user_defined: [u8; MAX_USER_DEFINED_BYTES],
    /// 0 for a primary channel, > 0 for a sub-channel.
    pub sub_channel_index: u16,
    /// Reserved.
    pub reserved3: u16,
    /// Relid of the channel (event bit and message key).
    pub child_relid: u32,
    /// Monitor id (group = id / 32, bit = id % 32).
    pub monitor_id: u8,
    /// Bit 0: a monitor id was allocated.
    pub monitor_allocated: u8,
    /// Bit 0: the channel has a dedicated interrupt.
    pub is_dedicated_interrupt: u16,
    /// Connection id to signal this channel with (HvSignalEvent input).
    pub connection_id: u32,
}

impl OfferChannel {
    /// The offer flags.
    pub fn flags(&self) -> OfferFlags {
        OfferFlags::from_bits_retain(self.chn_flags)
    }
    /// Whether a monitor id was allocated.
    pub fn has_monitor(&self) -> bool {
        self.monitor_allocated & 1 != 0
    }
    /// Whether the channel has a dedicated interrupt.
    pub fn dedicated_interrupt(&self) -> bool {
        self.is_dedicated_interrupt & 1 != 0
    }
}

/// RescindChannelOffer (type 2, 12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RescindChannelOffer {
    /// Header.
    pub header: MessageHeader,
    /// Relid being withdrawn.
    pub child_relid: u32,
}

/// OpenChannel (type 5, 148 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OpenChannel {
    /// Header.
    pub header: MessageHeader,
    /// Relid to open.
    pub child_relid: u32,
    /// Guest-chosen id echoed in the result.
    pub openid: u32,
    /// GPADL holding both rings.
    pub ringbuffer_gpadl_handle: u32,
    /// VP that receives this channel's interrupts.
    pub target_vp: u32,
    /// Page offset of the host-to-guest ring inside the GPADL.
    pub downstream_ringbuffer_pageoffset: u32,
    /// Class-specific bytes.
    pub user_data: [u8; MAX_USER_DEFINED_BYTES],
}

/// OpenChannelResult (type 6, 20 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OpenResult {
    /// Header.
    pub header: MessageHeader,
    /// Relid.
    pub child_relid: u32,
    /// The openid the guest sent.
    pub openid: u32,
    /// 0 on success.
    pub status: u32,
}

/// CloseChannel (type 7, 12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CloseChannel {
    /// Header.
    pub header: MessageHeader,
    /// Relid.
    pub child_relid: u32,
}

/// The fixed part of GpadlHeader (type 8, 20 bytes, followed by `range_buflen`
/// bytes of [`GpaRange`] records with their PFNs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlHeader {
    /// Header.
    pub header: MessageHeader,
    /// Channel the GPADL belongs to.
    pub child_relid: u32,
    /// Guest-chosen GPADL handle.
    pub gpadl: u32,
    /// Bytes of all range records including every PFN (also those in body messages).
    pub range_buflen: u16,
    /// Number of ranges.
    pub rangecount: u16,
}

/// The fixed part of a GPA range record (8 bytes, followed by its PFNs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpaRange {
    /// Bytes described by the range.
    pub byte_count: u32,
    /// Offset of the first byte in the first page.
    pub byte_offset: u32,
}

/// The fixed part of GpadlBody (type 9, 16 bytes, followed by PFNs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlBody {
    /// Header.
    pub header: MessageHeader,
    /// Sequence number of this body message.
    pub msgnumber: u32,
    /// GPADL handle.
    pub gpadl: u32,
}

/// GpadlCreated (type 10, 20 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlCreated {
    /// Header.
    pub header: MessageHeader,
    /// Relid.
    pub child_relid: u32,
    /// GPADL handle.
    pub gpadl: u32,
    /// 0 on success.
    pub creation_status: u32,
}

/// GpadlTeardown (type 11, 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlTeardown {
    /// Header.
    pub header: MessageHeader,
    /// Relid.
    pub child_relid: u32,
    /// GPADL handle.
    pub gpadl: u32,
}

/// GpadlTorndown (type 12, 12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct GpadlTorndown {
    /// Header.
    pub header: MessageHeader,
    /// GPADL handle.
    pub gpadl: u32,
}

/// RelidReleased (type 13, 12 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RelidReleased {
    /// Header.
    pub header: MessageHeader,
    /// Relid the host may reuse.
    pub child_relid: u32,
}

/// InitiateContact (type 14, 40 bytes).
///
/// Bytes 16..24 are a union: before VMBus 5.0 the GPA of the interrupt page;
/// from 5.0 on `msg_sint` (byte 16), `msg_vtl` (byte 17), two reserved bytes
/// and, in 6.0 only, `feature_flags` (bytes 20..24).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct InitiateContact {
    /// Header.
    pub header: MessageHeader,
    /// Proposed version.
    pub vmbus_version_requested: u32,
    /// VP that receives host messages.
    pub target_vcpu: u32,
    /// Interrupt page GPA (< 5.0) or `msg_sint`/`msg_vtl`/flags (>= 5.0).
    pub interrupt_page_or_sint: U64,
    /// Parent-to-child monitor page GPA.
    pub monitor_page1: U64,
    /// Child-to-parent monitor page GPA.
    pub monitor_page2: U64,
}

impl InitiateContact {
    /// The SINT the host must use for messages (meaningful from 5.0 on).
    pub fn msg_sint(&self) -> u8 {
        self.interrupt_page_or_sint.get() as u8
    }
    /// The VTL the host must target (meaningful from 5.0 on).
    pub fn msg_vtl(&self) -> u8 {
        (self.interrupt_page_or_sint.get() >> 8) as u8
    }
    /// Packs `msg_sint` and `msg_vtl` into the union (5.0 and later).
    pub fn sint_union(msg_sint: u8, msg_vtl: u8) -> U64 {
        U64::new(msg_sint as u64 | (msg_vtl as u64) << 8)
    }
}

/// VersionResponse (type 15, 16 bytes; pre-Win8 hosts send only the first 9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct VersionResponse {
    /// Header.
    pub header: MessageHeader,
    /// Non-zero when the proposed version is accepted.
    pub version_supported: u8,
    /// Connection state.
    pub connection_state: u8,
    /// Padding.
    pub padding: u16,
    /// Connection id for all later messages (5.0 and later).
    pub msg_conn_id: u32,
}

/// The legacy length of a VersionResponse (header + `version_supported`).
pub const VERSION_RESPONSE_LEGACY_LEN: usize = 9;

/// TlConnectRequest (type 21, 40 bytes; hv_sock connect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TlConnectRequest {
    /// Header.
    pub header: MessageHeader,
    /// Guest endpoint.
    pub guest_endpoint_id: Guid,
    /// Host service.
    pub host_service_id: Guid,
}

/// ModifyChannel (type 22, 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ModifyChannel {
    /// Header.
    pub header: MessageHeader,
    /// Relid.
    pub child_relid: u32,
    /// New interrupt target VP.
    pub target_vp: u32,
}

/// TlConnectResult (type 23, 44 bytes). Linux has no handler and no layout
/// for it; this is the host's layout as OpenVMM declares it (endpoint,
/// service, NTSTATUS). The guest only parses and counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct TlConnectResult {
    /// Header.
    pub header: MessageHeader,
    /// Service id.
    pub service_id: Guid,
    /// Endpoint id.
    pub endpoint_id: Guid,
    /// NTSTATUS.
    pub status: u32,
}

/// ModifyChannelResponse (type 24, 16 bytes; VMBus 5.3 and later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct ModifyChannelResponse {
    /// Header.
    pub header: MessageHeader,
    /// Relid.
    pub child_relid: u32,
    /// 0 on success.
    pub status: u32,
}

// Sizes and offsets from reference/linux-drivers-hv.md §1.3 and the compiled
// layouts in vectors/vmbus-messages.json.
const_assert_eq!(size_of::<MessageHeader>(), 8);
const_assert_eq!(size_of::<OfferChannel>(), 196);
const_assert_eq!(offset_of!(OfferChannel, if_type), 8);
const_assert_eq!(offset_of!(OfferChannel, if_instance), 24);
const_assert_eq!(offset_of!(OfferChannel, reserved1), 40);
const_assert_eq!(offset_of!(OfferChannel, reserved2), 48);
const_assert_eq!(offset_of!(OfferChannel, chn_flags), 56);
const_assert_eq!(offset_of!(OfferChannel, mmio_megabytes), 58);
const_assert_eq!(offset_of!(OfferChannel, user_defined), 60);
const_assert_eq!(offset_of!(OfferChannel, sub_channel_index), 180);
const_assert_eq!(offset_of!(OfferChannel, reserved3), 182);
const_assert_eq!(offset_of!(OfferChannel, child_relid), 184);
const_assert_eq!(offset_of!(OfferChannel, monitor_id), 188);
const_assert_eq!(offset_of!(OfferChannel, monitor_allocated), 189);
const_assert_eq!(offset_of!(OfferChannel, is_dedicated_interrupt), 190);
const_assert_eq!(offset_of!(OfferChannel, connection_id), 192);
const_assert_eq!(size_of::<RescindChannelOffer>(), 12);
const_assert_eq!(size_of::<OpenChannel>(), 148);
const_assert_eq!(offset_of!(OpenChannel, child_relid), 8);
const_assert_eq!(offset_of!(OpenChannel, openid), 12);
const_assert_eq!(offset_of!(OpenChannel, ringbuffer_gpadl_handle), 16);
const_assert_eq!(offset_of!(OpenChannel, target_vp), 20);
const_assert_eq!(offset_of!(OpenChannel, downstream_ringbuffer_pageoffset), 24);
const_assert_eq!(offset_of!(OpenChannel, user_data), 28);
const_assert_eq!(size_of::<OpenResult>(), 20);
const_assert_eq!(offset_of!(OpenResult, openid), 12);
const_assert_eq!(offset_of!(OpenResult, status), 16);
const_assert_eq!(size_of::<CloseChannel>(), 12);
const_assert_eq!(size_of::<GpadlHeader>(), 20);
const_assert_eq!(offset_of!(GpadlHeader, gpadl), 12);
const_assert_eq!(offset_of!(GpadlHeader, range_buflen), 16);
const_assert_eq!(offset_of!(GpadlHeader, rangecount), 18);
const_assert_eq!(size_of::<GpaRange>(), 8);
const_assert_eq!(size_of::<GpadlBody>(), 16);
const_assert_eq!(offset_of!(GpadlBody, msgnumber), 8);
const_assert_eq!(offset_of!(GpadlBody, gpadl), 12);
const_assert_eq!(size_of::<GpadlCreated>(), 20);
const_assert_eq!(offset_of!(GpadlCreated, creation_status), 16);
const_assert_eq!(size_of::<GpadlTeardown>(), 16);
const_assert_eq!(size_of::<GpadlTorndown>(), 12);
const_assert_eq!(size_of::<RelidReleased>(), 12);
const_assert_eq!(size_of::<InitiateContact>(), 40);
const_assert_eq!(offset_of!(InitiateContact, vmbus_version_requested), 8);
const_assert_eq!(offset_of!(InitiateContact, target_vcpu), 12);
const_assert_eq!(offset_of!(InitiateContact, interrupt_page_or_sint), 16);
const_assert_eq!(offset_of!(InitiateContact, monitor_page1), 24);
const_assert_eq!(offset_of!(InitiateContact, monitor_page2), 32);
const_assert_eq!(size_of::<VersionResponse>(), 16);
const_assert_eq!(offset_of!(VersionResponse, version_supported), 8);
const_assert_eq!(offset_of!(VersionResponse, connection_state), 9);
const_assert_eq!(offset_of!(VersionResponse, msg_conn_id), 12);
const_assert_eq!(size_of::<TlConnectRequest>(), 40);
const_assert_eq!(offset_of!(TlConnectRequest, host_service_id), 24);
const_assert_eq!(size_of::<ModifyChannel>(), 16);
const_assert_eq!(offset_of!(ModifyChannel, target_vp), 12);
const_assert_eq!(size_of::<TlConnectResult>(), 44);
const_assert_eq!(size_of::<ModifyChannelResponse>(), 16);
const_assert_eq!(offset_of!(ModifyChannelResponse, status), 12);

/// PFNs that fit in a GpadlHeader message with one range: (240 - 20 - 8) / 8.
pub const GPADL_HEADER_MAX_PFNS: usize = (MESSAGE_PAYLOAD_SIZE - size_of::<GpadlHeader>() - size_of::<GpaRange>()) / 8;
/// PFNs that fit in one GpadlBody message: (240 - 16) / 8.
pub const GPADL_BODY_MAX_PFNS: usize = (MESSAGE_PAYLOAD_SIZE - size_of::<GpadlBody>()) / 8;
const_assert_eq!(GPADL_HEADER_MAX_PFNS, 26);
const_assert_eq!(GPADL_BODY_MAX_PFNS, 28);

/// A GpadlHeader with its range bytes (validated to be whole records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpadlHeaderMessage<'a> {
    /// Fixed part.
    pub fixed: GpadlHeader,
    /// The range bytes carried in this message (a prefix of `range_buflen`
    /// bytes; the rest arrives in body messages). Always a multiple of 8.
    pub range_bytes: &'a [u8],
}

/// A GpadlBody with its PFN bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpadlBodyMessage<'a> {
    /// Fixed part.
    pub fixed: GpadlBody,
    /// PFNs as little-endian u64s; always a multiple of 8 bytes.
    pub pfn_bytes: &'a [u8],
}

/// Iterates the little-endian u64s in `bytes` (trailing bytes ignored).
pub fn u64s(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks_exact(8).map(|c| {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        u64::from_le_bytes(w)
    })
}

impl GpadlBodyMessage<'_> {
    /// The PFNs in this body message.
    pub fn pfns(&self) -> impl Iterator<Item = u64> + '_ {
        u64s(self.pfn_bytes)
    }
}

/// Every channel message, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelMessage<'a> {
    /// 1.
    OfferChannel(OfferChannel),
    /// 2.
    RescindChannelOffer(RescindChannelOffer),
    /// 3.
    RequestOffers,
    /// 4.
    AllOffersDelivered,
    /// 5.
    OpenChannel(OpenChannel),
    /// 6.
    OpenResult(OpenResult),
    /// 7.
    CloseChannel(CloseChannel),
    /// 8.
    GpadlHeader(GpadlHeaderMessage<'a>),
    /// 9.
    GpadlBody(GpadlBodyMessage<'a>),
    /// 10.
    GpadlCreated(GpadlCreated),
    /// 11.
    GpadlTeardown(GpadlTeardown),
    /// 12.
    GpadlTorndown(GpadlTorndown),
    /// 13.
    RelidReleased(RelidReleased),
    /// 14.
    InitiateContact(InitiateContact),
    /// 15. A 9-byte legacy response is widened with zeroed tail fields.
    VersionResponse(VersionResponse),
    /// 16.
    Unload,
    /// 17.
    UnloadResponse,
    /// 21.
    TlConnectRequest(TlConnectRequest),
    /// 22.
    ModifyChannel(ModifyChannel),
    /// 23.
    TlConnectResult(TlConnectResult),
    /// 24.
    ModifyChannelResponse(ModifyChannelResponse),
}

/// Why bytes were not a valid channel message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// Fewer than 8 bytes.
    NoHeader,
    /// More than 240 bytes.
    TooLong(usize),
    /// A type outside 1..=24 or one of the unused slots 18..=20.
    UnknownType(u32),
    /// Shorter than that type's minimum.
    TooShort {
        /// Type.
        msgtype: MessageType,
        /// Bytes present.
        len: usize,
        /// Bytes required.
        min: usize,
    },
    /// A GPADL message whose variable part is inconsistent.
    BadGpadl,
    /// Output buffer too small for `emit`.
    BufferTooSmall,
}

impl core::fmt::Display for MessageError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MessageError::NoHeader => f.write_str("message shorter than its header"),
            MessageError::TooLong(n) => write!(f, "message of {n} bytes exceeds 240"),
            MessageError::UnknownType(t) => write!(f, "unknown message type {t}"),
            MessageError::TooShort { msgtype, len, min } => {
                write!(f, "{msgtype:?} of {len} bytes, needs {min}")
            }
            MessageError::BadGpadl => f.write_str("inconsistent GPADL message"),
            MessageError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

fn read<T: FromBytes>(bytes: &[u8], msgtype: MessageType) -> Result<T, MessageError> {
    T::read_from_prefix(bytes).map(|(v, _)| v).map_err(|_| MessageError::TooShort {
        msgtype,
        len: bytes.len(),
        min: size_of::<T>(),
    })
}

impl<'a> ChannelMessage<'a> {
    /// Parses a message already copied out of shared memory. Trailing bytes
    /// after a fixed-size message are ignored (hosts may pad); GPADL messages
    /// must carry whole 8-byte records.
    pub fn parse(bytes: &'a [u8]) -> Result<ChannelMessage<'a>, MessageError> {
        if bytes.len() > MESSAGE_PAYLOAD_SIZE {
            return Err(MessageError::TooLong(bytes.len()));
        }
        let header = MessageHeader::read_from_prefix(bytes).map_err(|_| MessageError::NoHeader)?.0;
        let t = header.msgtype;
        Ok(match t {
            MessageType::OFFER_CHANNEL => ChannelMessage::OfferChannel(read(bytes, t)?),
            MessageType::RESCIND_CHANNEL_OFFER => ChannelMessage::RescindChannelOffer(read(bytes, t)?),
            MessageType::REQUEST_OFFERS => ChannelMessage::RequestOffers,
            MessageType::ALL_OFFERS_DELIVERED => ChannelMessage::AllOffersDelivered,
            MessageType::OPEN_CHANNEL => ChannelMessage::OpenChannel(read(bytes, t)?),
            MessageType::OPEN_CHANNEL_RESULT => ChannelMessage::OpenResult(read(bytes, t)?),
            MessageType::CLOSE_CHANNEL => ChannelMessage::CloseChannel(read(bytes, t)?),
            MessageType::GPADL_HEADER => {
                let fixed: GpadlHeader = read(bytes, t)?;
                let rest = &bytes[size_of::<GpadlHeader>()..];
                let buflen = fixed.range_buflen as usize;
                // The header carries at least one range record, whole 8-byte
                // units only, and no more than the declared total.
                if fixed.rangecount == 0
                    || buflen < size_of::<GpaRange>()
                    || buflen % 8 != 0
                    || rest.len() < size_of::<GpaRange>()
                {
                    return Err(MessageError::BadGpadl);
                }
                let carried = (rest.len() / 8 * 8).min(buflen);
                ChannelMessage::GpadlHeader(GpadlHeaderMessage { fixed, range_bytes: &rest[..carried] })
            }
            MessageType::GPADL_BODY => {
                let fixed: GpadlBody = read(bytes, t)?;
                let rest = &bytes[size_of::<GpadlBody>()..];
                let whole = rest.len() / 8 * 8;
                if whole == 0 {
                    return Err(MessageError::BadGpadl);
                }
                ChannelMessage::GpadlBody(GpadlBodyMessage { fixed, pfn_bytes: &rest[..whole] })
            }
            MessageType::GPADL_CREATED => ChannelMessage::GpadlCreated(read(bytes, t)?),
            MessageType::GPADL_TEARDOWN => ChannelMessage::GpadlTeardown(read(bytes, t)?),
            MessageType::GPADL_TORNDOWN => ChannelMessage::GpadlTorndown(read(bytes, t)?),
            MessageType::RELID_RELEASED => ChannelMessage::RelidReleased(read(bytes, t)?),
            MessageType::INITIATE_CONTACT => ChannelMessage::InitiateContact(read(bytes, t)?),
            MessageType::VERSION_RESPONSE => {
                if bytes.len() < VERSION_RESPONSE_LEGACY_LEN {
                    return Err(MessageError::TooShort {
                        msgtype: t,
                        len: bytes.len(),
                        min: VERSION_RESPONSE_LEGACY_LEN,
                    });
                }
                let mut full = [0u8; size_of::<VersionResponse>()];
                let n = bytes.len().min(full.len());
                full[..n].copy_from_slice(&bytes[..n]);
                ChannelMessage::VersionResponse(read(&full, t)?)
            }
            MessageType::UNLOAD => ChannelMessage::Unload,
            MessageType::UNLOAD_RESPONSE => ChannelMessage::UnloadResponse,
            MessageType::TL_CONNECT_REQUEST => ChannelMessage::TlConnectRequest(read(bytes, t)?),
            MessageType::MODIFY_CHANNEL => ChannelMessage::ModifyChannel(read(bytes, t)?),
            MessageType::TL_CONNECT_RESULT => ChannelMessage::TlConnectResult(read(bytes, t)?),
            MessageType::MODIFY_CHANNEL_RESPONSE => ChannelMessage::ModifyChannelResponse(read(bytes, t)?),
            other => return Err(MessageError::UnknownType(other.0)),
        })
    }

    /// The message's type.
    pub fn message_type(&self) -> MessageType {
        match self {
            ChannelMessage::OfferChannel(_) => MessageType::OFFER_CHANNEL,
            ChannelMessage::RescindChannelOffer(_) => MessageType::RESCIND_CHANNEL_OFFER,
            ChannelMessage::RequestOffers => MessageType::REQUEST_OFFERS,
            ChannelMessage::AllOffersDelivered => MessageType::ALL_OFFERS_DELIVERED,
            ChannelMessage::OpenChannel(_) => MessageType::OPEN_CHANNEL,
            ChannelMessage::OpenResult(_) => MessageType::OPEN_CHANNEL_RESULT,
            ChannelMessage::CloseChannel(_) => MessageType::CLOSE_CHANNEL,
            ChannelMessage::GpadlHeader(_) => MessageType::GPADL_HEADER,
            ChannelMessage::GpadlBody(_) => MessageType::GPADL_BODY,
            ChannelMessage::GpadlCreated(_) => MessageType::GPADL_CREATED,
            ChannelMessage::GpadlTeardown(_) => MessageType::GPADL_TEARDOWN,
            ChannelMessage::GpadlTorndown(_) => MessageType::GPADL_TORNDOWN,
            ChannelMessage::RelidReleased(_) => MessageType::RELID_RELEASED,
            ChannelMessage::InitiateContact(_) => MessageType::INITIATE_CONTACT,
            ChannelMessage::VersionResponse(_) => MessageType::VERSION_RESPONSE,
            ChannelMessage::Unload => MessageType::UNLOAD,
            ChannelMessage::UnloadResponse => MessageType::UNLOAD_RESPONSE,
            ChannelMessage::TlConnectRequest(_) => MessageType::TL_CONNECT_REQUEST,
            ChannelMessage::ModifyChannel(_) => MessageType::MODIFY_CHANNEL,
            ChannelMessage::TlConnectResult(_) => MessageType::TL_CONNECT_RESULT,
            ChannelMessage::ModifyChannelResponse(_) => MessageType::MODIFY_CHANNEL_RESPONSE,
        }
    }

    /// Serialises into `buf`, returning the number of bytes written. The
    /// header's type is always set from the variant.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, MessageError> {
        fn put<T: IntoBytes + Immutable>(v: &T, buf: &mut [u8]) -> Result<usize, MessageError> {
            let b = v.as_bytes();
            buf.get_mut(..b.len()).ok_or(MessageError::BufferTooSmall)?.copy_from_slice(b);
            Ok(b.len())
        }
        fn put_tail<T: IntoBytes + Immutable>(v: &T, tail: &[u8], buf: &mut [u8]) -> Result<usize, MessageError> {
            let n = put(v, buf)?;
            buf.get_mut(n..n + tail.len()).ok_or(MessageError::BufferTooSmall)?.copy_from_slice(tail);
            Ok(n + tail.len())
        }
        let n = match self {
            ChannelMessage::OfferChannel(m) => put(m, buf)?,
            ChannelMessage::RescindChannelOffer(m) => put(m, buf)?,
            ChannelMessage::OpenChannel(m) => put(m, buf)?,
            ChannelMessage::OpenResult(m) => put(m, buf)?,
            ChannelMessage::CloseChannel(m) => put(m, buf)?,
            ChannelMessage::GpadlHeader(m) => put_tail(&m.fixed, m.range_bytes, buf)?,
            ChannelMessage::GpadlBody(m) => put_tail(&m.fixed, m.pfn_bytes, buf)?,
            ChannelMessage::GpadlCreated(m) => put(m, buf)?,
            ChannelMessage::GpadlTeardown(m) => put(m, buf)?,
            ChannelMessage::GpadlTorndown(m) => put(m, buf)?,
            ChannelMessage::RelidReleased(m) => put(m, buf)?,
            ChannelMessage::InitiateContact(m) => put(m, buf)?,
            ChannelMessage::VersionResponse(m) => put(m, buf)?,
            ChannelMessage::TlConnectRequest(m) => put(m, buf)?,
            ChannelMessage::ModifyChannel(m) => put(m, buf)?,
            ChannelMessage::TlConnectResult(m) => put(m, buf)?,
            ChannelMessage::ModifyChannelResponse(m) => put(m, buf)?,
            ChannelMessage::RequestOffers
            | ChannelMessage::AllOffersDelivered
            | ChannelMessage::Unload
            | ChannelMessage::UnloadResponse => put(&MessageHeader::default(), buf)?,
        };
        let t = self.message_type();
        buf[..4].copy_from_slice(&t.0.to_le_bytes());
        Ok(n)
    }
}

/// A channel message serialised into a fixed buffer, ready to post.
#[derive(Clone, Copy)]
pub struct OutgoingMessage {
    buf: [u8; MESSAGE_PAYLOAD_SIZE],
    len: u8,
}

impl OutgoingMessage {
    /// Serialises `msg`. Fails only if the message does not fit in 240 bytes.
    pub fn new(msg: &ChannelMessage<'_>) -> Result<OutgoingMessage, MessageError> {
        let mut buf = [0u8; MESSAGE_PAYLOAD_SIZE];
        let len = msg.emit(&mut buf)?;
        Ok(OutgoingMessage { buf, len: len as u8 })
    }
    /// The bytes to post.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
    /// The message type.
    pub fn message_type(&self) -> MessageType {
        MessageType(u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]))
    }
}

impl core::fmt::Debug for OutgoingMessage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OutgoingMessage").field("type", &self.message_type()).field("len", &self.len).finish()
    }
}

/// Builders for the fixed-size messages, so callers need not spell out headers.
impl InitiateContact {
    /// InitiateContact for `version`. From 5.0 on the union carries
    /// `msg_sint`; before, the interrupt page GPA.
    pub fn new(
        version: Version,
        target_vcpu: u32,
        msg_sint: u8,
        interrupt_page: u64,
        monitor_pages: (u64, u64),
    ) -> Self {
        let union = if version.uses_msg_sint() { Self::sint_union(msg_sint, 0) } else { U64::new(interrupt_page) };
        InitiateContact {
            header: MessageHeader::new(MessageType::INITIATE_CONTACT),
            vmbus_version_requested: version.0,
            target_vcpu,
            interrupt_page_or_sint: union,
            monitor_page1: U64::new(monitor_pages.0),
            monitor_page2: U64::new(monitor_pages.1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_only_messages_round_trip() {
        for m in [
            ChannelMessage::RequestOffers,
            ChannelMessage::AllOffersDelivered,
            ChannelMessage::Unload,
            ChannelMessage::UnloadResponse,
        ] {
            let out = OutgoingMessage::new(&m).unwrap();
            assert_eq!(out.as_bytes().len(), 8);
            assert_eq!(ChannelMessage::parse(out.as_bytes()).unwrap(), m);
        }
    }

    #[test]
    fn rejects_unknown_and_short() {
        let mut b = [0u8; 16];
        b[0] = 19;
        assert_eq!(ChannelMessage::parse(&b), Err(MessageError::UnknownType(19)));
        b[0] = 1;
        assert!(matches!(ChannelMessage::parse(&b), Err(MessageError::TooShort { min: 196, .. })));
        assert_eq!(ChannelMessage::parse(&b[..7]), Err(MessageError::NoHeader));
        assert_eq!(ChannelMessage::parse(&[0u8; 241]), Err(MessageError::TooLong(241)));
    }

    proptest::proptest! {
        /// Whatever the peer sends: parse never panics, every accepted message
        /// re-emits within 240 bytes and re-parses to the same message, and a
        /// GPADL message's variable part is whole 8-byte units.
        #[test]
        fn parse_is_total_and_round_trips(
            typ in 0u32..30,
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..260),
        ) {
            let mut bytes = typ.to_le_bytes().to_vec();
            bytes.extend_from_slice(&body);
            // Also the raw prefix shorter than a header.
            for cut in [0, 3, 7].into_iter().filter(|&c| c <= bytes.len()) {
                proptest::prop_assert_eq!(ChannelMessage::parse(&bytes[..cut]), Err(MessageError::NoHeader));
            }
            let Ok(m) = ChannelMessage::parse(&bytes) else { return Ok(()) };
            proptest::prop_assert!(bytes.len() <= MESSAGE_PAYLOAD_SIZE);
            proptest::prop_assert_eq!(m.message_type().0, typ);
            match &m {
                ChannelMessage::GpadlHeader(h) => {
                    proptest::prop_assert!(h.range_bytes.len() % 8 == 0 && !h.range_bytes.is_empty());
                    proptest::prop_assert!(h.range_bytes.len() <= usize::from(h.fixed.range_buflen));
                }
                ChannelMessage::GpadlBody(b) => {
                    proptest::prop_assert!(b.pfn_bytes.len() % 8 == 0 && !b.pfn_bytes.is_empty());
                }
                _ => {}
            }
            let out = OutgoingMessage::new(&m).unwrap();
            proptest::prop_assert!(out.as_bytes().len() <= MESSAGE_PAYLOAD_SIZE);
            proptest::prop_assert_eq!(ChannelMessage::parse(out.as_bytes()), Ok(m));
        }
    }

    #[test]
    fn legacy_version_response() {
        let mut b = [0u8; 9];
        b[0] = 15;
        b[8] = 1;
        match ChannelMessage::parse(&b).unwrap() {
            ChannelMessage::VersionResponse(v) => {
                assert_eq!(v.version_supported, 1);
                assert_eq!(v.msg_conn_id, 0);
            }
            other => panic!("{other:?}"),
        }
    }
}
