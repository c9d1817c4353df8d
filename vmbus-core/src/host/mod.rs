// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The host side of the VMBus control protocol, as a sans-I/O state machine.
//!
//! [`Server`] takes every message the guest posts with HvPostMessage
//! ([`Server::handle_guest_message`]) and produces two queues that its owner
//! (the simulated host) drains:
//!
//! * host-to-guest channel messages ([`Server::pop_outgoing`]), to be placed
//!   in the guest's SynIC message slot;
//! * [`ServerEvent`]s for the device models and the memory mapper (a GPADL
//!   was created or torn down, a channel asks to be opened, was closed, ...).
//!
//! The guest is treated as untrusted exactly like the guest treats the host:
//! every relid, handle, count and offset is checked, a bad message yields a
//! [`HostError`] and a counter, and nothing panics. Both queues are bounded.
//!
//! Device-facing calls ([`Server::add_offer`], [`Server::offer_subchannels`],
//! [`Server::rescind`], [`Server::complete_open`]) are the host's own actions.
//! [`HostFaults`] lets a fault injector make the host drop replies, fail
//! opens and GPADLs, or stop answering.
//!
//! No threads, locks or OS types: the owner serialises calls (`&mut self`).
//!
//! A simulated host drives it like this:
//!
//! ```
//! use vmbus_core::guid::Guid;
//! use vmbus_core::host::{OfferSpec, Server, ServerConfig, ServerEvent};
//! use vmbus_core::message::{ChannelMessage, InitiateContact, OutgoingMessage};
//! use vmbus_core::version::Version;
//!
//! let mut server = Server::new(ServerConfig::default()).unwrap();
//! let relid = server.add_offer(OfferSpec::new(Guid::ZERO, Guid::ZERO)).unwrap();
//!
//! // HvPostMessage from the guest: the hypercall layer first asks whether
//! // the connection id is a message connection right now.
//! let contact = InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0x1000, 0x2000));
//! let post = OutgoingMessage::new(&ChannelMessage::InitiateContact(contact)).unwrap();
//! assert!(server.is_valid_message_connection(4));
//! server.handle_guest_message(4, post.as_bytes()).unwrap();
//!
//! // Deliver replies into the guest's SynIC message slot...
//! while let Some(reply) = server.pop_outgoing() {
//!     let _bytes: &[u8] = reply.as_bytes();
//! }
//! // ...and hand events to the device models / memory mapper.
//! while let Some(event) = server.pop_event() {
//!     if let ServerEvent::Connected(info) = event {
//!         assert_eq!(info.msg_conn_id, 0x2A);
//!     }
//! }
//! // HvSignalEvent on a channel's connection id maps back to its relid.
//! let signal_id = server.channel(relid).unwrap().signal_connection_id();
//! assert_eq!(server.channel_by_signal_connection(signal_id), Some(relid));
//! ```

mod gpadl;

pub use gpadl::{Gpadl, GpadlRange, HV_PAGE_SIZE, MAX_PFN};

use crate::guid::Guid;
use crate::hv::{
    CONNECTION_ID_MASK, EVENT_CONNECTION_ID, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4, MONITOR_CONNECTION_ID,
};
use crate::message::{
    ChannelMessage, CloseChannel, GpadlBodyMessage, GpadlCreated, GpadlHeader, GpadlHeaderMessage, GpadlTeardown,
    GpadlTorndown, MessageError, MessageHeader, MessageType, ModifyChannel, ModifyChannelResponse, OfferChannel,
    OfferFlags, OpenChannel, OpenResult, OutgoingMessage, RelidReleased, RescindChannelOffer, VersionResponse,
    MAX_USER_DEFINED_BYTES,
};
use crate::version::Version;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;
use gpadl::PendingGpadl;
use zerocopy::little_endian::U64;
use zerocopy::FromBytes;

/// NTSTATUS STATUS_UNSUCCESSFUL: the failure status this host puts in
/// OpenResult, GpadlCreated and ModifyChannelResponse when it refuses.
pub const STATUS_UNSUCCESSFUL: u32 = 0xC000_0001;
/// NTSTATUS STATUS_INSUFFICIENT_RESOURCES: used when a configured limit is hit.
pub const STATUS_INSUFFICIENT_RESOURCES: u32 = 0xC000_009A;

/// Number of message-type slots in the per-type counters (types 0..=24).
pub const MESSAGE_TYPE_SLOTS: usize = 25;
/// Relids must stay below this (the SynIC event-flag bitmap has 2048 bits).
pub const RELID_LIMIT: u32 = 2048;
/// Monitor ids available (4 groups of 32).
pub const MONITOR_ID_COUNT: u8 = 128;
/// VersionResponse `connection_state` for an accepted contact.
pub const CONNECTION_STATE_SUCCESSFUL: u8 = 0;

/// Every version the server can speak, oldest first (the default supported set).
pub const ALL_VERSIONS: [Version; 10] = [
    Version::WS2008,
    Version::WIN7,
    Version::WIN8,
    Version::WIN8_1,
    Version::WIN10,
    Version::WIN10_V4_1,
    Version::WIN10_V5,
    Version::WIN10_V5_1,
    Version::WIN10_V5_2,
    Version::WIN10_V5_3,
];

/// How GpadlBody `msgnumber`s are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgnumberRule {
    /// The bodies of one GPADL must carry `first`, `first + 1`, ... in order.
    Sequential {
        /// msgnumber of the first body message.
        first: u32,
    },
    /// The default: the bodies of one GPADL carry either `first`, `first + 1`,
    /// ... in order (what this crate's guest sends) or all 0 (Linux and
    /// FreeBSD leave the field zeroed). Mixing the two is refused. Bodies are
    /// taken in arrival order either way.
    SequentialOrZero {
        /// msgnumber of the first body message in the numbered form.
        first: u32,
    },
    /// msgnumber is not checked (bodies are still taken in arrival order).
    Ignore,
}

/// Static configuration of a [`Server`].
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Versions the host accepts in InitiateContact (any order).
    pub versions: Vec<Version>,
    /// Connection id returned in VersionResponse for 5.0 and later; afterwards
    /// the only valid message connection id. Default 0x2A, so a guest that
    /// keeps posting on 4 or 1 is caught.
    pub msg_conn_id: u32,
    /// Signal (HvSignalEvent) connection id of relid `r` is
    /// `signal_connection_base + r`.
    pub signal_connection_base: u32,
    /// Highest relid handed out (at most 2047).
    pub max_relid: u32,
    /// Number of virtual processors; `target_vcpu` / `target_vp` must be below it.
    pub vp_count: u32,
    /// Bound on PFNs over all GPADLs (established and being assembled).
    pub max_gpadl_pages: usize,
    /// Bound on established GPADLs.
    pub max_gpadls: usize,
    /// Bound on GPADLs whose body messages are still outstanding.
    pub max_pending_gpadls: usize,
    /// GpadlBody msgnumber rule (default [`MsgnumberRule::SequentialOrZero`] from 1,
    /// which takes both this crate's numbered bodies and Linux's zeroed ones).
    pub msgnumber_rule: MsgnumberRule,
    /// Capacity of the outgoing-message queue.
    pub outbox_capacity: usize,
    /// Capacity of the event queue.
    pub event_capacity: usize,
    /// Answer OpenChannel with success at once (still emitting
    /// [`ServerEvent::OpenRequest`] and [`ServerEvent::Opened`]) instead of
    /// waiting for [`Server::complete_open`].
    pub auto_accept_open: bool,
    /// How guest messages that crossed a rescind are treated (see
    /// [`RescindCrossings`]). Default [`RescindCrossings::Tolerate`], as a real host
    /// must: the guest's messages cross the rescind in flight.
    pub rescind_crossings: RescindCrossings,
}

/// What the host does with guest messages that crossed its own rescind in
/// flight.
///
/// The guest posts on one message connection, in order. Until its
/// RelidReleased for a rescinded channel arrives, any OpenChannel,
/// ModifyChannel, GpadlHeader, GpadlBody or GpadlTeardown naming that channel
/// may have been posted before the guest saw the RescindChannelOffer: the
/// host cannot tell, so it treats every such message as a crossing. (A
/// guest that has seen the rescind stops sending these; it only closes the
/// channel and releases the relid, which are never crossings.) After
/// RelidReleased the relid is unknown again and such a message is refused
/// as [`HostError::UnknownRelid`]. Messages that are wrong whatever the
/// rescind did stay refusals in both modes: a duplicate GPADL handle, a
/// teardown of an unknown GPADL or of the ring GPADL of a still-open
/// channel, a message the version does not have, and (under `Tolerate`)
/// opening a channel that is still open ([`HostError::AlreadyOpen`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RescindCrossings {
    /// Refuse them as [`HostError::Rescinded`] (counted in
    /// [`HostCounters::rejected`]), answering where the guest waits; the
    /// GpadlBody messages of a refused header are refused as
    /// [`HostError::GpadlBodyWithoutHeader`]. The strict behaviour, for tests
    /// that want every crossing reported as an error.
    Refuse,
    /// Tolerate them as Hyper-V does (the default): each is answered or swallowed, counted
    /// in [`HostCounters::crossed_rescind`] and never as a rejection:
    ///
    /// * OpenChannel of a rescinded, closed channel: answered with a failed
    ///   OpenResult (the guest takes it as its one late answer); nothing opens.
    /// * ModifyChannel: answered with a failed ModifyChannelResponse (5.3 and
    ///   later); the target VP is not changed.
    /// * GpadlHeader: answered with a failed GpadlCreated; its GpadlBody
    ///   messages are then swallowed until the declared length is used up
    ///   (at most `max_pending_gpadls` such headers are remembered; the oldest
    ///   is forgotten first, and a body longer than the rest is refused).
    /// * GpadlBody of a GPADL whose header came before the rescind: taken as
    ///   usual (the GPADL is built, answered, and dropped with the relid).
    /// * GpadlTeardown of an established GPADL: served and answered as usual.
    #[default]
    Tolerate,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            versions: ALL_VERSIONS.to_vec(),
            msg_conn_id: 0x2A,
            signal_connection_base: 0x1000,
            max_relid: RELID_LIMIT - 1,
            vp_count: 64,
            max_gpadl_pages: 1 << 18,
            max_gpadls: 4096,
            max_pending_gpadls: 64,
            msgnumber_rule: MsgnumberRule::SequentialOrZero { first: 1 },
            outbox_capacity: 4096,
            event_capacity: 16384,
            auto_accept_open: false,
            rescind_crossings: RescindCrossings::Tolerate,
        }
    }
}

/// Why a [`ServerConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// No version to accept.
    NoVersions,
    /// `max_relid` is 0 or not below 2048.
    BadMaxRelid(u32),
    /// `msg_conn_id` is 0, an event/monitor id, wider than 24 bits or inside the signal range.
    BadMsgConnId(u32),
    /// The signal range overlaps the fixed connection ids or leaves 24 bits.
    BadSignalBase(u32),
    /// A capacity or limit is zero.
    ZeroLimit,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoVersions => f.write_str("no supported version"),
            ConfigError::BadMaxRelid(r) => write!(f, "max relid {r} outside 1..2048"),
            ConfigError::BadMsgConnId(c) => write!(f, "message connection id {c:#x} unusable"),
            ConfigError::BadSignalBase(c) => write!(f, "signal connection base {c:#x} overlaps or overflows"),
            ConfigError::ZeroLimit => f.write_str("a capacity or limit is zero"),
        }
    }
}

bitflags::bitflags! {
    /// Kinds of host-to-guest message, for [`HostFaults::drop_replies`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct ReplyKinds: u32 {
        /// OfferChannel.
        const OFFER_CHANNEL = 1 << 1;
        /// RescindChannelOffer.
        const RESCIND_CHANNEL_OFFER = 1 << 2;
        /// AllOffersDelivered.
        const ALL_OFFERS_DELIVERED = 1 << 4;
        /// OpenResult.
        const OPEN_RESULT = 1 << 6;
        /// GpadlCreated.
        const GPADL_CREATED = 1 << 10;
        /// GpadlTorndown.
        const GPADL_TORNDOWN = 1 << 12;
        /// VersionResponse.
        const VERSION_RESPONSE = 1 << 15;
        /// UnloadResponse.
        const UNLOAD_RESPONSE = 1 << 17;
        /// ModifyChannelResponse.
        const MODIFY_CHANNEL_RESPONSE = 1 << 24;
    }
}

impl ReplyKinds {
    /// The kind bit of a message type (empty for types the host never sends).
    pub fn of(t: MessageType) -> ReplyKinds {
        if t.0 < 32 {
            ReplyKinds::from_bits_truncate(1 << t.0)
        } else {
            ReplyKinds::empty()
        }
    }
}

/// Faults the simulator's injector can switch on at any time. Malformed
/// bytes are injected by the simulator itself, not here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostFaults {
    /// Host-to-guest messages of these kinds are silently not sent (the
    /// state change still happens, as if the message were lost).
    pub drop_replies: ReplyKinds,
    /// One-shot variant: the next host-to-guest message of each kind here is
    /// not sent, then its bit is cleared.
    pub drop_once: ReplyKinds,
    /// Answer every valid OpenChannel with this non-zero status (no
    /// [`ServerEvent::OpenRequest`]).
    pub fail_open: Option<u32>,
    /// Answer every complete, valid GPADL with this non-zero status (the
    /// GPADL is not kept).
    pub fail_gpadl: Option<u32>,
    /// Answer every valid ModifyChannel (5.3 and later) with this status.
    pub fail_modify: Option<u32>,
    /// The host has hung: guest messages are counted and otherwise ignored.
    pub silent: bool,
}

/// Counters, per message type where it makes sense (index = type number).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// Guest messages received, by the type in their header (types 0..=24),
    /// counted before any check, so rejected ones are included.
    pub received: [u64; MESSAGE_TYPE_SLOTS],
    /// Guest messages refused (malformed, wrong state, bad values), by type.
    pub rejected: [u64; MESSAGE_TYPE_SLOTS],
    /// Guest messages that crossed a rescind and were answered or swallowed
    /// under [`RescindCrossings::Tolerate`] (never also in `rejected`), by type.
    pub crossed_rescind: [u64; MESSAGE_TYPE_SLOTS],
    /// Host messages queued for the guest, by type.
    pub sent: [u64; MESSAGE_TYPE_SLOTS],
    /// Host messages not sent because of [`HostFaults::drop_replies`], by type.
    pub dropped_by_fault: [u64; MESSAGE_TYPE_SLOTS],
    /// Guest messages that did not parse at all.
    pub malformed: u64,
    /// Guest messages posted on a connection id that is not valid now.
    pub wrong_connection: u64,
    /// Guest messages ignored because [`HostFaults::silent`] was set.
    pub ignored_silent: u64,
    /// Host messages lost because the outbox was full.
    pub outbox_overflow: u64,
    /// Events lost because the event queue was full.
    pub event_overflow: u64,
    /// InitiateContact answered with `version_supported = 0`.
    pub versions_refused: u64,
}

impl HostCounters {
    fn slot(t: MessageType) -> Option<usize> {
        let i = t.0 as usize;
        (i < MESSAGE_TYPE_SLOTS).then_some(i)
    }
    /// Sum of `received`.
    pub fn total_received(&self) -> u64 {
        self.received.iter().sum()
    }
    /// Sum of `rejected`.
    pub fn total_rejected(&self) -> u64 {
        self.rejected.iter().sum()
    }
    /// Sum of `crossed_rescind`.
    pub fn total_crossed_rescind(&self) -> u64 {
        self.crossed_rescind.iter().sum()
    }
    /// Sum of `sent`.
    pub fn total_sent(&self) -> u64 {
        self.sent.iter().sum()
    }
}

/// Why a guest message was refused. Every refusal is also counted in
/// [`HostCounters::rejected`]; where the guest waits for an answer, a
/// failure reply has been queued as well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// The bytes are not a channel message.
    Malformed(MessageError),
    /// Posted on a connection id that is not a valid message connection now.
    WrongConnection(u32),
    /// InitiateContact for `version` on the wrong connection id (4 from 5.0 on, else 1).
    ContactOnWrongConnection {
        /// Requested version.
        version: Version,
        /// Connection id used.
        connection_id: u32,
    },
    /// A type only the host sends.
    NotGuestMessage(MessageType),
    /// A type this host does not implement (TlConnectRequest).
    Unsupported(MessageType),
    /// Anything but InitiateContact before contact.
    NotConnected(MessageType),
    /// InitiateContact while connected.
    AlreadyConnected,
    /// InitiateContact names a VP outside `vp_count`.
    BadVp(u32),
    /// InitiateContact (5.0+) names a SINT above 15.
    BadSint(u8),
    /// RequestOffers a second time on one connection.
    OffersAlreadyRequested,
    /// Unload below 3.0 or ModifyChannel below 4.1.
    NotInVersion {
        /// The message.
        msgtype: MessageType,
        /// Negotiated version.
        version: Version,
    },
    /// No channel with that relid.
    UnknownRelid(u32),
    /// The channel was rescinded and the message crossed the rescind
    /// (only under [`RescindCrossings::Refuse`]; see there).
    Rescinded(u32),
    /// OpenChannel for a channel already open.
    AlreadyOpen(u32),
    /// OpenChannel while an open of the channel is pending.
    OpenPending(u32),
    /// CloseChannel / ModifyChannel for a channel that is not open.
    NotOpen(u32),
    /// RelidReleased for a channel that was not rescinded and is in use
    /// (open, opening or holding GPADLs). An unused channel may be released:
    /// the guest declines the offer.
    NotRescinded(u32),
    /// OpenChannel ring-offset problem: the offset must leave at least one
    /// header page and one data page on each side.
    BadRingOffset {
        /// Relid.
        relid: u32,
        /// Offset in pages.
        offset: u32,
        /// Pages in the GPADL.
        pages: usize,
    },
    /// The ring GPADL does not consist of whole pages.
    RingNotPageAligned(u32),
    /// A GPADL handle that is not established (or is still being assembled).
    UnknownGpadl(u32),
    /// The GPADL belongs to another channel.
    GpadlWrongChannel {
        /// Handle.
        handle: u32,
        /// Relid in the message.
        relid: u32,
    },
    /// GpadlHeader reuses a handle that is established or being assembled.
    DuplicateGpadl(u32),
    /// GpadlBody for a handle with no header outstanding.
    GpadlBodyWithoutHeader(u32),
    /// GpadlBody with an out-of-order msgnumber.
    GpadlBadMsgnumber {
        /// Handle.
        handle: u32,
        /// Expected.
        expected: u32,
        /// Received.
        got: u32,
    },
    /// More PFN bytes than `range_buflen` declared.
    GpadlTooManyPfns {
        /// Handle.
        handle: u32,
    },
    /// Range records inconsistent with their byte counts or the declared length.
    GpadlBadRanges {
        /// Handle.
        handle: u32,
    },
    /// A PFN beyond the guest-physical address space.
    GpadlBadPfn {
        /// Handle.
        handle: u32,
    },
    /// A GPADL limit (pages, count, pending count) would be exceeded.
    GpadlLimit {
        /// Handle.
        handle: u32,
    },
    /// GpadlTeardown of a GPADL that backs an open (or opening) channel's rings.
    GpadlInUse(u32),
    /// A VP number outside `vp_count` in OpenChannel / ModifyChannel.
    BadTargetVp(u32),
    /// [`HostFaults::silent`]: the message was ignored.
    Silent,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Malformed(e) => write!(f, "malformed message: {e}"),
            HostError::WrongConnection(c) => write!(f, "message on invalid connection id {c:#x}"),
            HostError::ContactOnWrongConnection { version, connection_id } => {
                write!(f, "InitiateContact {version} on connection id {connection_id:#x}")
            }
            HostError::NotGuestMessage(t) => write!(f, "{t:?} is a host-to-guest message"),
            HostError::Unsupported(t) => write!(f, "{t:?} not supported by this host"),
            HostError::NotConnected(t) => write!(f, "{t:?} before contact"),
            HostError::AlreadyConnected => f.write_str("InitiateContact while connected"),
            HostError::BadVp(v) => write!(f, "target vcpu {v} out of range"),
            HostError::BadSint(s) => write!(f, "message SINT {s} out of range"),
            HostError::OffersAlreadyRequested => f.write_str("RequestOffers repeated"),
            HostError::NotInVersion { msgtype, version } => write!(f, "{msgtype:?} not allowed in version {version}"),
            HostError::UnknownRelid(r) => write!(f, "unknown relid {r}"),
            HostError::Rescinded(r) => write!(f, "relid {r} was rescinded"),
            HostError::AlreadyOpen(r) => write!(f, "relid {r} already open"),
            HostError::OpenPending(r) => write!(f, "relid {r} has an open pending"),
            HostError::NotOpen(r) => write!(f, "relid {r} not open"),
            HostError::NotRescinded(r) => write!(f, "relid {r} released while in use and not rescinded"),
            HostError::BadRingOffset { relid, offset, pages } => {
                write!(f, "relid {relid}: ring offset {offset} invalid in a {pages}-page GPADL")
            }
            HostError::RingNotPageAligned(h) => write!(f, "ring GPADL {h:#x} not whole pages"),
            HostError::UnknownGpadl(h) => write!(f, "unknown GPADL {h:#x}"),
            HostError::GpadlWrongChannel { handle, relid } => write!(f, "GPADL {handle:#x} not owned by relid {relid}"),
            HostError::DuplicateGpadl(h) => write!(f, "duplicate GPADL handle {h:#x}"),
            HostError::GpadlBodyWithoutHeader(h) => write!(f, "GPADL body for {h:#x} without header"),
            HostError::GpadlBadMsgnumber { handle, expected, got } => {
                write!(f, "GPADL {handle:#x}: body msgnumber {got}, expected {expected}")
            }
            HostError::GpadlTooManyPfns { handle } => write!(f, "GPADL {handle:#x}: more PFNs than declared"),
            HostError::GpadlBadRanges { handle } => write!(f, "GPADL {handle:#x}: inconsistent ranges"),
            HostError::GpadlBadPfn { handle } => write!(f, "GPADL {handle:#x}: PFN out of range"),
            HostError::GpadlLimit { handle } => write!(f, "GPADL {handle:#x}: limit exceeded"),
            HostError::GpadlInUse(h) => write!(f, "GPADL {h:#x} backs an open channel"),
            HostError::BadTargetVp(v) => write!(f, "target VP {v} out of range"),
            HostError::Silent => f.write_str("host is silent"),
        }
    }
}

/// Why a call from the simulator / device side was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostApiError {
    /// No free relid below `max_relid`.
    NoFreeRelid,
    /// An offer with the same type, instance and sub-channel index is live.
    DuplicateOffer,
    /// A sub-channel offer without a live primary with the same GUIDs.
    NoPrimary,
    /// `monitor_id` not below 128.
    BadMonitorId(u8),
    /// No channel with that relid.
    UnknownRelid(u32),
    /// The channel is already rescinded.
    AlreadyRescinded(u32),
    /// `complete_open` for a channel with no open pending.
    NoOpenPending(u32),
    /// `offer_subchannels` on a channel that is itself a sub-channel.
    NotPrimary(u32),
}

impl fmt::Display for HostApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostApiError::NoFreeRelid => f.write_str("no free relid"),
            HostApiError::DuplicateOffer => f.write_str("duplicate offer"),
            HostApiError::NoPrimary => f.write_str("sub-channel without primary"),
            HostApiError::BadMonitorId(m) => write!(f, "monitor id {m} out of range"),
            HostApiError::UnknownRelid(r) => write!(f, "unknown relid {r}"),
            HostApiError::AlreadyRescinded(r) => write!(f, "relid {r} already rescinded"),
            HostApiError::NoOpenPending(r) => write!(f, "relid {r} has no open pending"),
            HostApiError::NotPrimary(r) => write!(f, "relid {r} is not a primary channel"),
        }
    }
}

/// What a device model offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferSpec {
    /// Device class.
    pub if_type: Guid,
    /// Device instance.
    pub if_instance: Guid,
    /// 0 for a primary channel.
    pub sub_channel_index: u16,
    /// Class-specific bytes.
    pub user_defined: [u8; MAX_USER_DEFINED_BYTES],
    /// Offer flags.
    pub flags: OfferFlags,
    /// MMIO space in MiB.
    pub mmio_megabytes: u16,
    /// Monitor id (below 128) if the channel is monitored.
    pub monitor_id: Option<u8>,
    /// Dedicated-interrupt bit.
    pub dedicated_interrupt: bool,
}

impl OfferSpec {
    /// A primary, unmonitored offer with no flags and zeroed user bytes.
    pub fn new(if_type: Guid, if_instance: Guid) -> OfferSpec {
        OfferSpec {
            if_type,
            if_instance,
            sub_channel_index: 0,
            user_defined: [0; MAX_USER_DEFINED_BYTES],
            flags: OfferFlags::empty(),
            mmio_megabytes: 0,
            monitor_id: None,
            dedicated_interrupt: false,
        }
    }
}

/// The parameters of an OpenChannel the host accepted (or is deciding on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenParams {
    /// Guest's open id, echoed in OpenResult.
    pub openid: u32,
    /// GPADL that holds both rings.
    pub gpadl: u32,
    /// Page offset of the host-to-guest ring (the guest-to-host ring starts at 0).
    pub downstream_offset: u32,
    /// VP for channel interrupts (changed by ModifyChannel).
    pub target_vp: u32,
    /// Class-specific bytes.
    pub user_data: [u8; MAX_USER_DEFINED_BYTES],
}

/// Where a channel is in its open/close life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Not open.
    Closed,
    /// OpenChannel accepted by validation, waiting for [`Server::complete_open`].
    Opening(OpenParams),
    /// Open.
    Open(OpenParams),
}

/// A channel as the server tracks it.
#[derive(Clone, Debug)]
pub struct Channel {
    offer: OfferChannel,
    state: ChannelState,
    /// The offer has been sent to the guest on the current connection.
    offered: bool,
    rescinded: bool,
}

impl Channel {
    /// The offer message (relid and signal connection id filled in).
    pub fn offer(&self) -> &OfferChannel {
        &self.offer
    }
    /// Relid.
    pub fn relid(&self) -> u32 {
        self.offer.child_relid
    }
    /// HvSignalEvent connection id of the channel.
    pub fn signal_connection_id(&self) -> u32 {
        self.offer.connection_id
    }
    /// Open state.
    pub fn state(&self) -> ChannelState {
        self.state
    }
    /// Whether the channel is open (rings live).
    pub fn is_open(&self) -> bool {
        matches!(self.state, ChannelState::Open(_))
    }
    /// Whether the offer was sent to the guest on this connection (and not
    /// declined by an early RelidReleased).
    pub fn is_offered(&self) -> bool {
        self.offered
    }
    /// Whether the channel was rescinded (relid held until RelidReleased).
    pub fn is_rescinded(&self) -> bool {
        self.rescinded
    }
    fn ring_gpadl(&self) -> Option<u32> {
        match self.state {
            ChannelState::Opening(p) | ChannelState::Open(p) => Some(p.gpadl),
            ChannelState::Closed => None,
        }
    }
}

/// What the guest negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Negotiated version.
    pub version: Version,
    /// VP that receives host messages.
    pub target_vcpu: u32,
    /// SINT for host messages (5.0 and later; `None` means SINT 2 by convention).
    pub msg_sint: Option<u8>,
    /// Interrupt page GPA (before 5.0).
    pub interrupt_page: Option<u64>,
    /// Parent-to-child monitor page GPA.
    pub monitor_page1: u64,
    /// Child-to-parent monitor page GPA.
    pub monitor_page2: u64,
    /// The connection id the guest must post on from now on.
    pub msg_conn_id: u32,
}

/// Something the simulator or a device model must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// The guest connected (VersionResponse accepted was queued).
    Connected(ConnectionInfo),
    /// The guest asked for offers (they have been queued).
    OffersRequested,
    /// A GPADL was established; map it with [`Server::gpadl`].
    GpadlCreated {
        /// Owning channel.
        relid: u32,
        /// Handle.
        handle: u32,
    },
    /// A GPADL is gone (teardown, rescind release or unload); unmap it.
    GpadlTornDown {
        /// Owning channel.
        relid: u32,
        /// Handle.
        handle: u32,
    },
    /// The guest asks to open a channel; answer with [`Server::complete_open`]
    /// (unless auto-accept is on, then [`ServerEvent::Opened`] follows).
    OpenRequest {
        /// Relid.
        relid: u32,
        /// Guest open id.
        openid: u32,
        /// Ring GPADL handle.
        gpadl: u32,
        /// Page offset of the host-to-guest ring.
        downstream_offset: u32,
        /// Interrupt target VP.
        target_vp: u32,
        /// Class-specific bytes.
        user_data: [u8; MAX_USER_DEFINED_BYTES],
    },
    /// The open succeeded; the rings are live.
    Opened {
        /// Relid.
        relid: u32,
    },
    /// The channel is closed (guest close, open cancelled by rescind, unload,
    /// or an open completed with failure). Stop using its rings.
    Closed {
        /// Relid.
        relid: u32,
    },
    /// The guest moved the channel's interrupts.
    ModifyChannel {
        /// Relid.
        relid: u32,
        /// New VP.
        target_vp: u32,
    },
    /// The guest released a rescinded relid; it is free again.
    RelidReleased {
        /// Relid.
        relid: u32,
    },
    /// A channel is gone without a RelidReleased: a rescinded offer the
    /// guest never saw, or, at Unload / [`Server::reset`], a rescinded
    /// channel or a sub-channel (sub-channels are re-requested by the
    /// device protocol after re-contact). Its relid is free.
    OfferRemoved {
        /// Relid.
        relid: u32,
    },
    /// The guest unloaded; every channel is closed and every GPADL gone.
    Unloaded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Connection {
    Disconnected,
    Connected { info: ConnectionInfo, offers_requested: bool },
}

/// The host side of VMBus. See the module docs.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    faults: HostFaults,
    connection: Connection,
    channels: BTreeMap<u32, Channel>,
    gpadls: BTreeMap<u32, Gpadl>,
    pending_gpadls: BTreeMap<u32, PendingGpadl>,
    /// PFNs in `gpadls` plus PFNs declared by `pending_gpadls`.
    gpadl_pages: usize,
    /// GPADL headers that crossed a rescind and were refused under
    /// [`RescindCrossings::Tolerate`], whose bodies are still to be
    /// swallowed; oldest first, at most `max_pending_gpadls`.
    crossed_gpadls: VecDeque<CrossedGpadl>,
    outbox: VecDeque<OutgoingMessage>,
    events: VecDeque<ServerEvent>,
    counters: HostCounters,
}

/// A GpadlHeader refused because it crossed a rescind: its bodies follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CrossedGpadl {
    handle: u32,
    relid: u32,
    /// Body bytes still to come (`range_buflen` minus what arrived).
    remaining: usize,
}

/// The result of handling one guest message.
pub type HostResult = Result<(), HostError>;

impl Server {
    /// A server with `config`, after checking it.
    pub fn new(config: ServerConfig) -> Result<Server, ConfigError> {
        if config.versions.is_empty() {
            return Err(ConfigError::NoVersions);
        }
        if config.max_relid == 0 || config.max_relid >= RELID_LIMIT {
            return Err(ConfigError::BadMaxRelid(config.max_relid));
        }
        if config.outbox_capacity == 0
            || config.event_capacity == 0
            || config.max_gpadls == 0
            || config.max_pending_gpadls == 0
            || config.max_gpadl_pages == 0
            || config.vp_count == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        let base = config.signal_connection_base;
        let top = base.checked_add(config.max_relid).filter(|&t| t <= CONNECTION_ID_MASK);
        if top.is_none() || base < MESSAGE_CONNECTION_ID_4 {
            return Err(ConfigError::BadSignalBase(base));
        }
        let m = config.msg_conn_id;
        if m == 0
            || m == EVENT_CONNECTION_ID
            || m == MONITOR_CONNECTION_ID
            || m > CONNECTION_ID_MASK
            || (m > base && m <= base + config.max_relid)
        {
            return Err(ConfigError::BadMsgConnId(m));
        }
        Ok(Server {
            config,
            faults: HostFaults::default(),
            connection: Connection::Disconnected,
            channels: BTreeMap::new(),
            gpadls: BTreeMap::new(),
            pending_gpadls: BTreeMap::new(),
            gpadl_pages: 0,
            crossed_gpadls: VecDeque::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            counters: HostCounters::default(),
        })
    }

    // ----- accessors -------------------------------------------------------------------------

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }
    /// Switches auto-accept of OpenChannel on or off.
    pub fn set_auto_accept_open(&mut self, on: bool) {
        self.config.auto_accept_open = on;
    }
    /// Switches how guest messages that crossed a rescind are treated.
    pub fn set_rescind_crossings(&mut self, mode: RescindCrossings) {
        self.config.rescind_crossings = mode;
    }
    /// The fault switches.
    pub fn faults(&self) -> &HostFaults {
        &self.faults
    }
    /// The fault switches, for the injector.
    pub fn faults_mut(&mut self) -> &mut HostFaults {
        &mut self.faults
    }
    /// Counters.
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }
    /// The negotiated connection, if any.
    pub fn connection(&self) -> Option<&ConnectionInfo> {
        match &self.connection {
            Connection::Connected { info, .. } => Some(info),
            Connection::Disconnected => None,
        }
    }
    /// Whether the guest has sent RequestOffers on this connection.
    pub fn offers_requested(&self) -> bool {
        matches!(self.connection, Connection::Connected { offers_requested: true, .. })
    }
    /// A channel by relid (including rescinded ones awaiting RelidReleased).
    pub fn channel(&self, relid: u32) -> Option<&Channel> {
        self.channels.get(&relid)
    }
    /// Every relid in use, ascending.
    pub fn relids(&self) -> impl Iterator<Item = u32> + '_ {
        self.channels.keys().copied()
    }
    /// An established GPADL.
    pub fn gpadl(&self, handle: u32) -> Option<&Gpadl> {
        self.gpadls.get(&handle)
    }
    /// Every established GPADL.
    pub fn gpadls(&self) -> impl Iterator<Item = &Gpadl> + '_ {
        self.gpadls.values()
    }
    /// GPADLs whose body messages are still outstanding.
    pub fn pending_gpadl_count(&self) -> usize {
        self.pending_gpadls.len()
    }
    /// PFNs held by established and pending GPADLs.
    pub fn gpadl_page_total(&self) -> usize {
        self.gpadl_pages
    }
    /// The relid whose signal connection id is `connection_id` (for HvSignalEvent).
    pub fn channel_by_signal_connection(&self, connection_id: u32) -> Option<u32> {
        let relid = connection_id.checked_sub(self.config.signal_connection_base)?;
        self.channels.contains_key(&relid).then_some(relid)
    }
    /// Whether HvPostMessage on `connection_id` reaches the VMBus server now.
    /// Before contact: 1, and 4 if any supported version is 5.0 or later.
    /// After contact: 1 below 5.0, the configured `msg_conn_id` from 5.0 on.
    pub fn is_valid_message_connection(&self, connection_id: u32) -> bool {
        match &self.connection {
            Connection::Disconnected => {
                connection_id == MESSAGE_CONNECTION_ID
                    || (connection_id == MESSAGE_CONNECTION_ID_4
                        && self.config.versions.iter().any(|v| v.uses_msg_sint()))
            }
            Connection::Connected { info, .. } => connection_id == info.msg_conn_id,
        }
    }

    // ----- output queues ----------------------------------------------------------------------

    /// The next host-to-guest message, oldest first.
    pub fn pop_outgoing(&mut self) -> Option<OutgoingMessage> {
        self.outbox.pop_front()
    }
    /// Messages waiting in the outbox.
    pub fn outgoing_len(&self) -> usize {
        self.outbox.len()
    }
    /// The next event, oldest first.
    pub fn pop_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }
    /// Events waiting.
    pub fn event_len(&self) -> usize {
        self.events.len()
    }

    fn send(&mut self, msg: ChannelMessage<'_>) {
        let t = msg.message_type();
        let slot = HostCounters::slot(t);
        let kind = ReplyKinds::of(t);
        let once = !kind.is_empty() && self.faults.drop_once.contains(kind);
        if once {
            self.faults.drop_once.remove(kind);
        }
        if once || (!kind.is_empty() && self.faults.drop_replies.contains(kind)) {
            if let Some(i) = slot {
                self.counters.dropped_by_fault[i] += 1;
            }
            return;
        }
        if self.outbox.len() >= self.config.outbox_capacity {
            self.counters.outbox_overflow += 1;
            return;
        }
        // Every message this server builds is fixed-size and at most 196
        // bytes, so serialisation cannot fail; a failure would be counted.
        match OutgoingMessage::new(&msg) {
            Ok(out) => {
                self.outbox.push_back(out);
                if let Some(i) = slot {
                    self.counters.sent[i] += 1;
                }
            }
            Err(_) => self.counters.outbox_overflow += 1,
        }
    }

    fn event(&mut self, e: ServerEvent) {
        if self.events.len() >= self.config.event_capacity {
            self.counters.event_overflow += 1;
        } else {
            self.events.push_back(e);
        }
    }

    // ----- host actions -----------------------------------------------------------------------

    /// Offers a channel; returns its relid. Sent at once if the guest has
    /// already requested offers (hot add), else with the next RequestOffers.
    pub fn add_offer(&mut self, spec: OfferSpec) -> Result<u32, HostApiError> {
        if let Some(m) = spec.monitor_id {
            if m >= MONITOR_ID_COUNT {
                return Err(HostApiError::BadMonitorId(m));
            }
        }
        let same = |c: &Channel, index: u16| {
            !c.rescinded
                && c.offer.if_type == spec.if_type
                && c.offer.if_instance == spec.if_instance
                && c.offer.sub_channel_index == index
        };
        if self.channels.values().any(|c| same(c, spec.sub_channel_index)) {
            return Err(HostApiError::DuplicateOffer);
        }
        if spec.sub_channel_index != 0 && !self.channels.values().any(|c| same(c, 0)) {
            return Err(HostApiError::NoPrimary);
        }
        let relid =
            (1..=self.config.max_relid).find(|r| !self.channels.contains_key(r)).ok_or(HostApiError::NoFreeRelid)?;
        let offer = OfferChannel {
            header: MessageHeader::new(MessageType::OFFER_CHANNEL),
            if_type: spec.if_type,
            if_instance: spec.if_instance,
            reserved1: U64::new(0),
            reserved2: U64::new(0),
            chn_flags: spec.flags.bits(),
            mmio_megabytes: spec.mmio_megabytes,
            user_defined: spec.user_defined,
            sub_channel_index: spec.sub_channel_index,
            reserved3: 0,
            child_relid: relid,
            monitor_id: spec.monitor_id.unwrap_or(0),
            monitor_allocated: u8::from(spec.monitor_id.is_some()),
            is_dedicated_interrupt: u16::from(spec.dedicated_interrupt),
            connection_id: self.config.signal_connection_base + relid,
        };
        let mut channel = Channel { offer, state: ChannelState::Closed, offered: false, rescinded: false };
        if self.offers_requested() {
            channel.offered = true;
            self.send(ChannelMessage::OfferChannel(offer));
        }
        self.channels.insert(relid, channel);
        Ok(relid)
    }

    /// Offers `count` sub-channels of `primary_relid` (same GUIDs, the next
    /// free indexes starting at 1). Returns their relids; on an error the
    /// sub-channels offered so far stay.
    pub fn offer_subchannels(&mut self, primary_relid: u32, count: u16) -> Result<Vec<u32>, HostApiError> {
        let primary = self.channels.get(&primary_relid).ok_or(HostApiError::UnknownRelid(primary_relid))?;
        if primary.rescinded {
            return Err(HostApiError::AlreadyRescinded(primary_relid));
        }
        if primary.offer.sub_channel_index != 0 {
            return Err(HostApiError::NotPrimary(primary_relid));
        }
        let template = primary.offer;
        let mut relids = Vec::new();
        let mut index: u16 = 1;
        while relids.len() < usize::from(count) {
            let taken = self.channels.values().any(|c| {
                !c.rescinded
                    && c.offer.if_type == template.if_type
                    && c.offer.if_instance == template.if_instance
                    && c.offer.sub_channel_index == index
            });
            if !taken {
                let mut spec = OfferSpec::new(template.if_type, template.if_instance);
                spec.sub_channel_index = index;
                spec.flags = template.flags();
                spec.mmio_megabytes = template.mmio_megabytes;
                spec.user_defined = template.user_defined;
                spec.dedicated_interrupt = template.dedicated_interrupt();
                relids.push(self.add_offer(spec)?);
            }
            index = index.checked_add(1).ok_or(HostApiError::NoFreeRelid)?;
        }
        Ok(relids)
    }

    /// Withdraws a channel. If the guest has seen the offer, RescindChannelOffer
    /// is sent and the relid stays reserved until the guest's RelidReleased; a
    /// pending open is cancelled ([`ServerEvent::Closed`]). An offer the guest
    /// never saw is simply removed.
    pub fn rescind(&mut self, relid: u32) -> Result<(), HostApiError> {
        let channel = self.channels.get_mut(&relid).ok_or(HostApiError::UnknownRelid(relid))?;
        if channel.rescinded {
            return Err(HostApiError::AlreadyRescinded(relid));
        }
        if !channel.offered {
            self.remove_channel(relid);
            self.event(ServerEvent::OfferRemoved { relid });
            return Ok(());
        }
        channel.rescinded = true;
        let cancelled = matches!(channel.state, ChannelState::Opening(_));
        if cancelled {
            channel.state = ChannelState::Closed;
        }
        self.send(ChannelMessage::RescindChannelOffer(RescindChannelOffer {
            header: MessageHeader::new(MessageType::RESCIND_CHANNEL_OFFER),
            child_relid: relid,
        }));
        if cancelled {
            self.event(ServerEvent::Closed { relid });
        }
        Ok(())
    }

    /// Answers a pending OpenChannel: status 0 opens the channel, anything
    /// else refuses it. Sends OpenResult.
    pub fn complete_open(&mut self, relid: u32, status: u32) -> Result<(), HostApiError> {
        let channel = self.channels.get_mut(&relid).ok_or(HostApiError::UnknownRelid(relid))?;
        let ChannelState::Opening(params) = channel.state else {
            return Err(HostApiError::NoOpenPending(relid));
        };
        if status == 0 {
            channel.state = ChannelState::Open(params);
        } else {
            channel.state = ChannelState::Closed;
        }
        self.send_open_result(relid, params.openid, status);
        self.event(if status == 0 { ServerEvent::Opened { relid } } else { ServerEvent::Closed { relid } });
        Ok(())
    }

    /// Back to the disconnected state as if the guest had unloaded (without
    /// the reply and the [`ServerEvent::Unloaded`] event): channels closed,
    /// GPADLs, rescinded channels and sub-channels dropped, with events.
    /// Used by a simulated host or VM reset.
    pub fn reset(&mut self) {
        self.drop_connection_state();
        self.connection = Connection::Disconnected;
    }

    /// Removes a channel that the guest never saw or has released, with its GPADLs.
    fn remove_channel(&mut self, relid: u32) {
        if let Some(c) = self.channels.remove(&relid) {
            if !matches!(c.state, ChannelState::Closed) {
                self.event(ServerEvent::Closed { relid });
            }
        }
        let handles: Vec<u32> = self.gpadls.values().filter(|g| g.relid == relid).map(|g| g.handle).collect();
        for handle in handles {
            self.remove_gpadl(handle);
        }
        let pending: Vec<u32> = self.pending_gpadls.iter().filter(|(_, p)| p.relid == relid).map(|(&h, _)| h).collect();
        for handle in pending {
            self.abort_pending(handle);
        }
        // Bodies of a crossed header precede the RelidReleased on the wire.
        self.crossed_gpadls.retain(|c| c.relid != relid);
    }

    fn remove_gpadl(&mut self, handle: u32) {
        if let Some(g) = self.gpadls.remove(&handle) {
            self.gpadl_pages = self.gpadl_pages.saturating_sub(g.page_count());
            self.event(ServerEvent::GpadlTornDown { relid: g.relid, handle });
        }
    }

    fn abort_pending(&mut self, handle: u32) -> Option<PendingGpadl> {
        let p = self.pending_gpadls.remove(&handle)?;
        self.gpadl_pages = self.gpadl_pages.saturating_sub(p.declared_len / 8);
        Some(p)
    }

    /// Closes every channel, drops every GPADL, every rescinded channel and
    /// every sub-channel, and marks the remaining (primary) offers as not yet
    /// sent: they are re-offered after re-contact.
    fn drop_connection_state(&mut self) {
        let relids: Vec<u32> = self.channels.keys().copied().collect();
        for relid in relids {
            let Some(c) = self.channels.get_mut(&relid) else { continue };
            let was_active = !matches!(c.state, ChannelState::Closed);
            c.state = ChannelState::Closed;
            c.offered = false;
            let remove = c.rescinded || c.offer.sub_channel_index != 0;
            if was_active {
                self.event(ServerEvent::Closed { relid });
            }
            if remove {
                self.channels.remove(&relid);
                self.event(ServerEvent::OfferRemoved { relid });
            }
        }
        let handles: Vec<u32> = self.gpadls.keys().copied().collect();
        for handle in handles {
            self.remove_gpadl(handle);
        }
        self.pending_gpadls.clear();
        self.crossed_gpadls.clear();
        self.gpadl_pages = 0;
    }

    // ----- guest messages ---------------------------------------------------------------------

    /// A channel the guest can know about: its offer went out on this
    /// connection. A relid the guest was never offered is as unknown as one
    /// that does not exist.
    fn guest_channel(&self, relid: u32) -> Option<&Channel> {
        self.channels.get(&relid).filter(|c| c.offered)
    }

    fn guest_channel_mut(&mut self, relid: u32) -> Option<&mut Channel> {
        self.channels.get_mut(&relid).filter(|c| c.offered)
    }

    /// Whether a message naming `relid` is to be tolerated as a crossing
    /// of the rescind (see [`RescindCrossings`]): the mode is `Tolerate` and
    /// the channel is rescinded but not released yet.
    fn tolerates_crossing(&self, relid: u32) -> bool {
        self.config.rescind_crossings == RescindCrossings::Tolerate
            && self.guest_channel(relid).is_some_and(|c| c.rescinded)
    }

    fn count_crossing(&mut self, t: MessageType) {
        if let Some(i) = HostCounters::slot(t) {
            self.counters.crossed_rescind[i] += 1;
        }
    }

    /// Number of GPADL headers that crossed a rescind whose body messages
    /// are still expected (and will be swallowed).
    pub fn crossed_gpadl_count(&self) -> usize {
        self.crossed_gpadls.len()
    }

    /// Handles one HvPostMessage payload the guest posted on `connection_id`.
    /// Replies are queued for [`Server::pop_outgoing`], events for
    /// [`Server::pop_event`].
    pub fn handle_guest_message(&mut self, connection_id: u32, bytes: &[u8]) -> HostResult {
        let typ = MessageHeader::read_from_prefix(bytes).ok().map(|(h, _)| h.msgtype);
        let slot = typ.and_then(HostCounters::slot);
        if let Some(i) = slot {
            self.counters.received[i] += 1;
        }
        if self.faults.silent {
            self.counters.ignored_silent += 1;
            return Err(HostError::Silent);
        }
        let result = self.dispatch(connection_id, bytes);
        if let Err(e) = result {
            match e {
                HostError::Malformed(_) => {
                    self.counters.malformed += 1;
                    if let Some(i) = slot {
                        self.counters.rejected[i] += 1;
                    }
                }
                HostError::WrongConnection(_) => {
                    self.counters.wrong_connection += 1;
                    if let Some(i) = slot {
                        self.counters.rejected[i] += 1;
                    }
                }
                _ => {
                    if let Some(i) = slot {
                        self.counters.rejected[i] += 1;
                    }
                }
            }
        }
        result
    }

    fn dispatch(&mut self, connection_id: u32, bytes: &[u8]) -> HostResult {
        // A real hypercall layer refuses a post on an invalid connection id
        // before the server sees it; check that first so nothing else
        // (not even a failure reply) results from such a post.
        if !self.is_valid_message_connection(connection_id) {
            return Err(HostError::WrongConnection(connection_id));
        }
        let msg = match ChannelMessage::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.reply_to_malformed_gpadl_header(bytes, e);
                return Err(HostError::Malformed(e));
            }
        };
        let t = msg.message_type();
        let version = match (&self.connection, &msg) {
            (_, ChannelMessage::InitiateContact(c)) => {
                return self.on_initiate_contact(connection_id, c);
            }
            (Connection::Disconnected, _) => {
                return Err(if is_guest_message(t) {
                    HostError::NotConnected(t)
                } else {
                    HostError::NotGuestMessage(t)
                })
            }
            (Connection::Connected { info, .. }, _) => info.version,
        };
        match msg {
            ChannelMessage::RequestOffers => self.on_request_offers(),
            ChannelMessage::OpenChannel(m) => self.on_open(&m),
            ChannelMessage::CloseChannel(m) => self.on_close(&m),
            ChannelMessage::GpadlHeader(m) => self.on_gpadl_header(&m),
            ChannelMessage::GpadlBody(m) => self.on_gpadl_body(&m),
            ChannelMessage::GpadlTeardown(m) => self.on_gpadl_teardown(&m),
            ChannelMessage::RelidReleased(m) => self.on_relid_released(&m),
            ChannelMessage::Unload => self.on_unload(version),
            ChannelMessage::ModifyChannel(m) => self.on_modify(version, &m),
            ChannelMessage::TlConnectRequest(_) => Err(HostError::Unsupported(t)),
            _ => Err(HostError::NotGuestMessage(t)),
        }
    }

    fn on_initiate_contact(&mut self, connection_id: u32, c: &crate::message::InitiateContact) -> HostResult {
        if matches!(self.connection, Connection::Connected { .. }) {
            return Err(HostError::AlreadyConnected);
        }
        let version = Version(c.vmbus_version_requested);
        let required = if version.uses_msg_sint() { MESSAGE_CONNECTION_ID_4 } else { MESSAGE_CONNECTION_ID };
        if connection_id != required {
            return Err(HostError::ContactOnWrongConnection { version, connection_id });
        }
        let refuse = |s: &mut Server| {
            s.counters.versions_refused += 1;
            s.send(ChannelMessage::VersionResponse(VersionResponse {
                header: MessageHeader::new(MessageType::VERSION_RESPONSE),
                version_supported: 0,
                connection_state: CONNECTION_STATE_SUCCESSFUL,
                padding: 0,
                msg_conn_id: 0,
            }));
        };
        if !self.config.versions.contains(&version) {
            refuse(self);
            return Ok(());
        }
        if c.target_vcpu >= self.config.vp_count {
            refuse(self);
            return Err(HostError::BadVp(c.target_vcpu));
        }
        let (msg_sint, interrupt_page, msg_conn_id) = if version.uses_msg_sint() {
            if c.msg_sint() > 15 {
                refuse(self);
                return Err(HostError::BadSint(c.msg_sint()));
            }
            (Some(c.msg_sint()), None, self.config.msg_conn_id)
        } else {
            (None, Some(c.interrupt_page_or_sint.get()), MESSAGE_CONNECTION_ID)
        };
        let info = ConnectionInfo {
            version,
            target_vcpu: c.target_vcpu,
            msg_sint,
            interrupt_page,
            monitor_page1: c.monitor_page1.get(),
            monitor_page2: c.monitor_page2.get(),
            msg_conn_id,
        };
        self.connection = Connection::Connected { info, offers_requested: false };
        self.send(ChannelMessage::VersionResponse(VersionResponse {
            header: MessageHeader::new(MessageType::VERSION_RESPONSE),
            version_supported: 1,
            connection_state: CONNECTION_STATE_SUCCESSFUL,
            padding: 0,
            msg_conn_id: if version.uses_msg_sint() { msg_conn_id } else { 0 },
        }));
        self.event(ServerEvent::Connected(info));
        Ok(())
    }

    fn on_request_offers(&mut self) -> HostResult {
        match &mut self.connection {
            Connection::Connected { offers_requested, .. } => {
                if *offers_requested {
                    return Err(HostError::OffersAlreadyRequested);
                }
                *offers_requested = true;
            }
            Connection::Disconnected => return Err(HostError::NotConnected(MessageType::REQUEST_OFFERS)),
        }
        let live: Vec<u32> = self.channels.iter().filter(|(_, c)| !c.rescinded).map(|(&r, _)| r).collect();
        for relid in live {
            if let Some(c) = self.channels.get_mut(&relid) {
                c.offered = true;
                let offer = c.offer;
                self.send(ChannelMessage::OfferChannel(offer));
            }
        }
        self.send(ChannelMessage::AllOffersDelivered);
        self.event(ServerEvent::OffersRequested);
        Ok(())
    }

    fn send_open_result(&mut self, relid: u32, openid: u32, status: u32) {
        self.send(ChannelMessage::OpenResult(OpenResult {
            header: MessageHeader::new(MessageType::OPEN_CHANNEL_RESULT),
            child_relid: relid,
            openid,
            status,
        }));
    }

    fn on_open(&mut self, m: &OpenChannel) -> HostResult {
        let relid = m.child_relid;
        if self.tolerates_crossing(relid) {
            // A rescind cancels an open in progress, so the channel is
            // closed or (rescinded while open) still open.
            if self.channels.get(&relid).is_some_and(Channel::is_open) {
                self.send_open_result(relid, m.openid, STATUS_UNSUCCESSFUL);
                return Err(HostError::AlreadyOpen(relid));
            }
            self.send_open_result(relid, m.openid, STATUS_UNSUCCESSFUL);
            self.count_crossing(MessageType::OPEN_CHANNEL);
            return Ok(());
        }
        let result = self.validate_open(m);
        let params = match result {
            Ok(p) => p,
            Err(e) => {
                self.send_open_result(relid, m.openid, STATUS_UNSUCCESSFUL);
                return Err(e);
            }
        };
        if let Some(status) = self.faults.fail_open.filter(|&s| s != 0) {
            self.send_open_result(relid, m.openid, status);
            return Ok(());
        }
        if let Some(c) = self.channels.get_mut(&relid) {
            c.state = ChannelState::Opening(params);
        }
        self.event(ServerEvent::OpenRequest {
            relid,
            openid: params.openid,
            gpadl: params.gpadl,
            downstream_offset: params.downstream_offset,
            target_vp: params.target_vp,
            user_data: params.user_data,
        });
        if self.config.auto_accept_open {
            // The channel was just put in Opening, so this cannot fail.
            let _ = self.complete_open(relid, 0);
        }
        Ok(())
    }

    fn validate_open(&self, m: &OpenChannel) -> Result<OpenParams, HostError> {
        let relid = m.child_relid;
        let channel = self.guest_channel(relid).ok_or(HostError::UnknownRelid(relid))?;
        if channel.rescinded {
            return Err(HostError::Rescinded(relid));
        }
        match channel.state {
            ChannelState::Closed => {}
            ChannelState::Opening(_) => return Err(HostError::OpenPending(relid)),
            ChannelState::Open(_) => return Err(HostError::AlreadyOpen(relid)),
        }
        let handle = m.ringbuffer_gpadl_handle;
        let gpadl = self.gpadls.get(&handle).ok_or(HostError::UnknownGpadl(handle))?;
        if gpadl.relid != relid {
            return Err(HostError::GpadlWrongChannel { handle, relid });
        }
        if !gpadl.is_page_aligned() {
            return Err(HostError::RingNotPageAligned(handle));
        }
        let pages = gpadl.page_count();
        let offset = m.downstream_ringbuffer_pageoffset;
        // Each ring needs its header page and at least one data page.
        let offset_ok = offset >= 2 && (offset as usize).checked_add(2).is_some_and(|end| end <= pages);
        if !offset_ok {
            return Err(HostError::BadRingOffset { relid, offset, pages });
        }
        if m.target_vp >= self.config.vp_count {
            return Err(HostError::BadTargetVp(m.target_vp));
        }
        Ok(OpenParams {
            openid: m.openid,
            gpadl: handle,
            downstream_offset: offset,
            target_vp: m.target_vp,
            user_data: m.user_data,
        })
    }

    fn on_close(&mut self, m: &CloseChannel) -> HostResult {
        let relid = m.child_relid;
        let channel = self.guest_channel_mut(relid).ok_or(HostError::UnknownRelid(relid))?;
        match channel.state {
            ChannelState::Closed if channel.rescinded => Ok(()),
            ChannelState::Closed => Err(HostError::NotOpen(relid)),
            ChannelState::Opening(_) | ChannelState::Open(_) => {
                channel.state = ChannelState::Closed;
                self.event(ServerEvent::Closed { relid });
                Ok(())
            }
        }
    }

    fn send_gpadl_created(&mut self, relid: u32, handle: u32, status: u32) {
        self.send(ChannelMessage::GpadlCreated(GpadlCreated {
            header: MessageHeader::new(MessageType::GPADL_CREATED),
            child_relid: relid,
            gpadl: handle,
            creation_status: status,
        }));
    }

    /// A GpadlHeader that failed to parse still owes the guest an answer if
    /// its fixed part is readable (the guest waits on the handle).
    fn reply_to_malformed_gpadl_header(&mut self, bytes: &[u8], e: MessageError) {
        if e != MessageError::BadGpadl {
            return;
        }
        if let Ok((h, _)) = GpadlHeader::read_from_prefix(bytes) {
            if h.header.msgtype == MessageType::GPADL_HEADER
                && matches!(self.connection, Connection::Connected { .. })
                && !self.gpadls.contains_key(&h.gpadl)
                && !self.pending_gpadls.contains_key(&h.gpadl)
            {
                self.send_gpadl_created(h.child_relid, h.gpadl, STATUS_UNSUCCESSFUL);
            }
        }
    }

    fn on_gpadl_header(&mut self, m: &GpadlHeaderMessage<'_>) -> HostResult {
        let relid = m.fixed.child_relid;
        let handle = m.fixed.gpadl;
        // A new header for the handle of a crossed one: the guest has
        // finished (or abandoned) the old bodies, posts being in order.
        self.crossed_gpadls.retain(|c| c.handle != handle);
        if self.gpadls.contains_key(&handle) || self.pending_gpadls.contains_key(&handle) {
            // The existing GPADL is left alone; the duplicate is refused.
            self.send_gpadl_created(relid, handle, STATUS_UNSUCCESSFUL);
            return Err(HostError::DuplicateGpadl(handle));
        }
        let check = match self.guest_channel(relid) {
            None => Err(HostError::UnknownRelid(relid)),
            Some(c) if c.rescinded => Err(HostError::Rescinded(relid)),
            Some(_) => Ok(()),
        };
        if let Err(e) = check {
            self.send_gpadl_created(relid, handle, STATUS_UNSUCCESSFUL);
            if self.tolerates_crossing(relid) {
                self.remember_crossed_gpadl(m, relid);
                self.count_crossing(MessageType::GPADL_HEADER);
                return Ok(());
            }
            return Err(e);
        }
        let declared_len = usize::from(m.fixed.range_buflen);
        // Upper bound of the PFNs this GPADL can hold, charged against the
        // page limit while it is assembled.
        let declared_pages = declared_len / 8;
        if self.pending_gpadls.len() >= self.config.max_pending_gpadls
            || self.gpadls.len() >= self.config.max_gpadls
            || self.gpadl_pages.saturating_add(declared_pages) > self.config.max_gpadl_pages
        {
            self.send_gpadl_created(relid, handle, STATUS_INSUFFICIENT_RESOURCES);
            return Err(HostError::GpadlLimit { handle });
        }
        let mut pending = PendingGpadl::new(relid, m.fixed.rangecount, declared_len, self.config.msgnumber_rule);
        // `parse` guarantees range_bytes is no longer than range_buflen.
        if pending.append(handle, m.range_bytes).is_err() {
            self.send_gpadl_created(relid, handle, STATUS_UNSUCCESSFUL);
            return Err(HostError::GpadlTooManyPfns { handle });
        }
        self.gpadl_pages += declared_pages;
        self.pending_gpadls.insert(handle, pending);
        self.try_finish_gpadl(handle)
    }

    /// Remembers a header refused as a crossing so its bodies are
    /// swallowed; bounded by `max_pending_gpadls` (oldest forgotten first).
    fn remember_crossed_gpadl(&mut self, m: &GpadlHeaderMessage<'_>, relid: u32) {
        // `parse` guarantees range_bytes is no longer than range_buflen.
        let remaining = usize::from(m.fixed.range_buflen).saturating_sub(m.range_bytes.len());
        if remaining == 0 {
            return;
        }
        while self.crossed_gpadls.len() >= self.config.max_pending_gpadls {
            self.crossed_gpadls.pop_front();
        }
        self.crossed_gpadls.push_back(CrossedGpadl { handle: m.fixed.gpadl, relid, remaining });
    }

    /// A body of a header that crossed a rescind: swallowed while it fits
    /// what the header declared. `None` if `handle` is not such a header.
    fn swallow_crossed_body(&mut self, handle: u32, len: usize) -> Option<HostResult> {
        let i = self.crossed_gpadls.iter().position(|c| c.handle == handle)?;
        let entry = self.crossed_gpadls.get_mut(i)?;
        if len > entry.remaining {
            self.crossed_gpadls.remove(i);
            return Some(Err(HostError::GpadlTooManyPfns { handle }));
        }
        entry.remaining -= len;
        if entry.remaining == 0 {
            self.crossed_gpadls.remove(i);
        }
        self.count_crossing(MessageType::GPADL_BODY);
        Some(Ok(()))
    }

    fn on_gpadl_body(&mut self, m: &GpadlBodyMessage<'_>) -> HostResult {
        let handle = m.fixed.gpadl;
        let rule = self.config.msgnumber_rule;
        let Some(pending) = self.pending_gpadls.get_mut(&handle) else {
            if let Some(r) = self.swallow_crossed_body(handle, m.pfn_bytes.len()) {
                return r;
            }
            return Err(HostError::GpadlBodyWithoutHeader(handle));
        };
        let relid = pending.relid;
        let step = match rule {
            MsgnumberRule::Ignore => Ok(()),
            MsgnumberRule::Sequential { .. } | MsgnumberRule::SequentialOrZero { .. } => {
                pending.check_msgnumber(handle, m.fixed.msgnumber)
            }
        }
        .and_then(|()| pending.append(handle, m.pfn_bytes));
        if let Err(e) = step {
            self.abort_pending(handle);
            self.send_gpadl_created(relid, handle, STATUS_UNSUCCESSFUL);
            return Err(e);
        }
        pending.next_msgnumber = pending.next_msgnumber.wrapping_add(1);
        // A body of a header taken before the rescind is served as usual.
        if self.tolerates_crossing(relid) {
            self.count_crossing(MessageType::GPADL_BODY);
        }
        self.try_finish_gpadl(handle)
    }

    fn try_finish_gpadl(&mut self, handle: u32) -> HostResult {
        let Some(pending) = self.pending_gpadls.get(&handle) else { return Ok(()) };
        if !pending.is_complete() {
            return Ok(());
        }
        let ranges = pending.finish(handle);
        let Some(pending) = self.abort_pending(handle) else { return Ok(()) };
        let relid = pending.relid;
        let ranges = match ranges {
            Ok(r) => r,
            Err(e) => {
                self.send_gpadl_created(relid, handle, STATUS_UNSUCCESSFUL);
                return Err(e);
            }
        };
        if let Some(status) = self.faults.fail_gpadl.filter(|&s| s != 0) {
            self.send_gpadl_created(relid, handle, status);
            return Ok(());
        }
        // Several GPADLs may have been pending when the last slot was taken.
        if self.gpadls.len() >= self.config.max_gpadls {
            self.send_gpadl_created(relid, handle, STATUS_INSUFFICIENT_RESOURCES);
            return Err(HostError::GpadlLimit { handle });
        }
        let gpadl = Gpadl { handle, relid, ranges };
        self.gpadl_pages += gpadl.page_count();
        self.gpadls.insert(handle, gpadl);
        self.send_gpadl_created(relid, handle, 0);
        self.event(ServerEvent::GpadlCreated { relid, handle });
        Ok(())
    }

    fn on_gpadl_teardown(&mut self, m: &GpadlTeardown) -> HostResult {
        let handle = m.gpadl;
        let relid = m.child_relid;
        let gpadl = self.gpadls.get(&handle).ok_or(HostError::UnknownGpadl(handle))?;
        if gpadl.relid != relid {
            return Err(HostError::GpadlWrongChannel { handle, relid });
        }
        if self.channels.get(&relid).and_then(Channel::ring_gpadl) == Some(handle) {
            return Err(HostError::GpadlInUse(handle));
        }
        if self.tolerates_crossing(relid) {
            self.count_crossing(MessageType::GPADL_TEARDOWN);
        }
        self.remove_gpadl(handle);
        self.send(ChannelMessage::GpadlTorndown(GpadlTorndown {
            header: MessageHeader::new(MessageType::GPADL_TORNDOWN),
            gpadl: handle,
        }));
        Ok(())
    }

    fn on_relid_released(&mut self, m: &RelidReleased) -> HostResult {
        let relid = m.child_relid;
        let channel = self.guest_channel(relid).ok_or(HostError::UnknownRelid(relid))?;
        if !channel.rescinded {
            // A guest that could not take an offer (Linux: the channel
            // allocation failed) releases its relid at once. Such a channel
            // is unused: closed, without GPADLs. It stays with its device and
            // is offered again on the next connection; on this one the guest
            // does not know it. A channel in use is refused.
            let in_use = !matches!(channel.state, ChannelState::Closed)
                || self.gpadls.values().any(|g| g.relid == relid)
                || self.pending_gpadls.values().any(|p| p.relid == relid);
            if in_use {
                return Err(HostError::NotRescinded(relid));
            }
            if let Some(c) = self.channels.get_mut(&relid) {
                c.offered = false;
            }
            return Ok(());
        }
        // A guest that releases without closing or tearing down gets its
        // channel closed and its GPADLs dropped here, so nothing leaks.
        self.remove_channel(relid);
        self.event(ServerEvent::RelidReleased { relid });
        Ok(())
    }

    fn on_unload(&mut self, version: Version) -> HostResult {
        if !version.supports_unload() {
            return Err(HostError::NotInVersion { msgtype: MessageType::UNLOAD, version });
        }
        self.drop_connection_state();
        self.connection = Connection::Disconnected;
        self.send(ChannelMessage::UnloadResponse);
        self.event(ServerEvent::Unloaded);
        Ok(())
    }

    fn on_modify(&mut self, version: Version, m: &ModifyChannel) -> HostResult {
        if !version.supports_modify_channel() {
            return Err(HostError::NotInVersion { msgtype: MessageType::MODIFY_CHANNEL, version });
        }
        let relid = m.child_relid;
        if self.tolerates_crossing(relid) {
            // Interrupts of a channel being withdrawn are not moved.
            if version.has_modify_channel_response() {
                self.send(ChannelMessage::ModifyChannelResponse(ModifyChannelResponse {
                    header: MessageHeader::new(MessageType::MODIFY_CHANNEL_RESPONSE),
                    child_relid: relid,
                    status: STATUS_UNSUCCESSFUL,
                }));
            }
            self.count_crossing(MessageType::MODIFY_CHANNEL);
            return Ok(());
        }
        let vp_count = self.config.vp_count;
        let fail = self.faults.fail_modify.filter(|&s| s != 0);
        let check = match self.guest_channel_mut(relid) {
            None => Err(HostError::UnknownRelid(relid)),
            Some(c) if c.rescinded => Err(HostError::Rescinded(relid)),
            Some(_) if m.target_vp >= vp_count => Err(HostError::BadTargetVp(m.target_vp)),
            Some(c) => match &mut c.state {
                ChannelState::Open(p) => {
                    if fail.is_none() {
                        p.target_vp = m.target_vp;
                    }
                    Ok(())
                }
                _ => Err(HostError::NotOpen(relid)),
            },
        };
        let status = match (&check, fail) {
            (Err(_), _) => STATUS_UNSUCCESSFUL,
            (Ok(()), Some(s)) => s,
            (Ok(()), None) => 0,
        };
        if version.has_modify_channel_response() {
            self.send(ChannelMessage::ModifyChannelResponse(ModifyChannelResponse {
                header: MessageHeader::new(MessageType::MODIFY_CHANNEL_RESPONSE),
                child_relid: relid,
                status,
            }));
        }
        check?;
        if status == 0 {
            self.event(ServerEvent::ModifyChannel { relid, target_vp: m.target_vp });
        }
        Ok(())
    }
}

/// Whether the guest may send this type at all.
fn is_guest_message(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::REQUEST_OFFERS
            | MessageType::OPEN_CHANNEL
            | MessageType::CLOSE_CHANNEL
            | MessageType::GPADL_HEADER
            | MessageType::GPADL_BODY
            | MessageType::GPADL_TEARDOWN
            | MessageType::RELID_RELEASED
            | MessageType::INITIATE_CONTACT
            | MessageType::UNLOAD
            | MessageType::TL_CONNECT_REQUEST
            | MessageType::MODIFY_CHANNEL
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::GpaRange;
    use zerocopy::IntoBytes;

    #[test]
    fn reply_kind_bits_are_the_message_numbers() {
        let pairs = [
            (MessageType::OFFER_CHANNEL, ReplyKinds::OFFER_CHANNEL),
            (MessageType::RESCIND_CHANNEL_OFFER, ReplyKinds::RESCIND_CHANNEL_OFFER),
            (MessageType::ALL_OFFERS_DELIVERED, ReplyKinds::ALL_OFFERS_DELIVERED),
            (MessageType::OPEN_CHANNEL_RESULT, ReplyKinds::OPEN_RESULT),
            (MessageType::GPADL_CREATED, ReplyKinds::GPADL_CREATED),
            (MessageType::GPADL_TORNDOWN, ReplyKinds::GPADL_TORNDOWN),
            (MessageType::VERSION_RESPONSE, ReplyKinds::VERSION_RESPONSE),
            (MessageType::UNLOAD_RESPONSE, ReplyKinds::UNLOAD_RESPONSE),
            (MessageType::MODIFY_CHANNEL_RESPONSE, ReplyKinds::MODIFY_CHANNEL_RESPONSE),
        ];
        for (t, k) in pairs {
            assert_eq!(ReplyKinds::of(t), k, "{t:?}");
        }
        // Guest-to-host types and out-of-range values map to nothing.
        assert!(ReplyKinds::of(MessageType::OPEN_CHANNEL).is_empty());
        assert!(ReplyKinds::of(MessageType(40)).is_empty());
    }

    #[test]
    fn guest_message_set_matches_the_direction_table() {
        let guest: Vec<u32> = (0..32).filter(|&t| is_guest_message(MessageType(t))).collect();
        assert_eq!(guest, [3, 5, 7, 8, 9, 11, 13, 14, 16, 21, 22]);
    }

    #[test]
    fn default_config_is_valid_and_distinct() {
        let s = Server::new(ServerConfig::default()).unwrap();
        let c = s.config();
        assert_eq!(c.versions.len(), 10);
        assert!(![1, 2, 3, 4].contains(&c.msg_conn_id));
        // No signal id collides with a message/event/monitor connection.
        for relid in 1..=c.max_relid {
            let id = c.signal_connection_base + relid;
            assert!(id > 4 && id != c.msg_conn_id && id <= CONNECTION_ID_MASK);
        }
    }

    fn pending(rangecount: u16, bytes: Vec<u8>) -> PendingGpadl {
        let mut p = PendingGpadl::new(1, rangecount, bytes.len(), MsgnumberRule::Sequential { first: 1 });
        p.bytes = bytes;
        p
    }

    fn range(byte_offset: u32, byte_count: u32, pfns: &[u64]) -> Vec<u8> {
        let mut v = GpaRange { byte_count, byte_offset }.as_bytes().to_vec();
        for p in pfns {
            v.extend_from_slice(&p.to_le_bytes());
        }
        v
    }

    #[test]
    fn range_page_counts_follow_offset_and_length() {
        // 1 byte at offset 4095 is one page; 2 bytes there span two.
        assert_eq!(pending(1, range(4095, 1, &[7])).finish(0).unwrap()[0].pfns, [7]);
        assert_eq!(pending(1, range(4095, 2, &[7, 8])).finish(0).unwrap()[0].pfns, [7, 8]);
        assert_eq!(pending(1, range(4095, 2, &[7])).finish(0), Err(HostError::GpadlBadRanges { handle: 0 }));
        // u32::MAX bytes: 2^20 pages needed, far more than present, no overflow.
        assert_eq!(pending(1, range(100, u32::MAX, &[1])).finish(0), Err(HostError::GpadlBadRanges { handle: 0 }));
        // A second range announced but absent.
        assert_eq!(pending(2, range(0, 4096, &[1])).finish(3), Err(HostError::GpadlBadRanges { handle: 3 }));
        // Trailing bytes after the last range.
        let mut b = range(0, 4096, &[1]);
        b.extend_from_slice(&[0; 8]);
        assert_eq!(pending(1, b).finish(0), Err(HostError::GpadlBadRanges { handle: 0 }));
        assert_eq!(pending(1, range(0, 4096, &[MAX_PFN + 1])).finish(0), Err(HostError::GpadlBadPfn { handle: 0 }));
        assert_eq!(pending(1, range(0, 4096, &[MAX_PFN])).finish(0).unwrap()[0].pfns, [MAX_PFN]);
    }

    #[test]
    fn append_never_exceeds_the_declared_length() {
        let mut p = PendingGpadl::new(1, 1, 16, MsgnumberRule::Sequential { first: 1 });
        p.append(5, &[0; 8]).unwrap();
        assert_eq!(p.append(5, &[0; 16]), Err(HostError::GpadlTooManyPfns { handle: 5 }));
        assert_eq!(p.bytes.len(), 8);
        p.append(5, &[0; 8]).unwrap();
        assert!(p.is_complete());
    }

    #[test]
    fn drop_once_drops_a_single_message() {
        let mut s = Server::new(ServerConfig::default()).unwrap();
        s.faults_mut().drop_once = ReplyKinds::VERSION_RESPONSE;
        let ic = crate::message::InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0));
        let bytes = OutgoingMessage::new(&ChannelMessage::InitiateContact(ic)).unwrap();
        s.handle_guest_message(MESSAGE_CONNECTION_ID_4, bytes.as_bytes()).unwrap();
        assert!(s.pop_outgoing().is_none());
        assert!(s.faults().drop_once.is_empty());
        assert_eq!(s.counters().dropped_by_fault[MessageType::VERSION_RESPONSE.0 as usize], 1);
        // The state changed as if the reply had been lost, and other kinds
        // still go out.
        let req = OutgoingMessage::new(&ChannelMessage::RequestOffers).unwrap();
        s.handle_guest_message(0x2A, req.as_bytes()).unwrap();
        assert_eq!(s.pop_outgoing().map(|m| m.message_type()), Some(MessageType::ALL_OFFERS_DELIVERED));
    }
}
