// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Configuration, events, errors and counters of the guest client.

use crate::gpadl::GpadlError;
use crate::hv::{HvStatus, VMBUS_MESSAGE_SINT};
use crate::message::{MessageError, MessageType, OfferChannel, TlConnectResult};
use crate::version::Version;
use core::fmt;

/// What the OS glue tells the client before [`start`](super::Client::start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// VP that receives host messages (InitiateContact `target_vcpu`; Linux uses CPU 0's VP).
    pub target_vcpu: u32,
    /// SINT the host posts messages to (versions 5.0 and later); normally [`VMBUS_MESSAGE_SINT`].
    pub msg_sint: u8,
    /// GPA of the interrupt page (sent to hosts older than 5.0; the glue allocates it).
    pub interrupt_page_gpa: u64,
    /// GPAs of the two monitor pages (parent-to-child, child-to-parent).
    pub monitor_page_gpas: (u64, u64),
    /// Newest version to propose (`None`: the newest the crate knows).
    pub max_version: Option<Version>,
    /// Oldest version to accept (`None`: 2.4). Isolated (confidential) guests use 5.2.
    pub min_version: Option<Version>,
    /// Channel table size for [`Client::new`](super::Client::new) (clamped to 1..=2047).
    pub max_channels: usize,
}

impl ClientConfig {
    /// A configuration with SINT 2, every known version and 256 channels.
    pub const fn new(target_vcpu: u32, interrupt_page_gpa: u64, monitor_page_gpas: (u64, u64)) -> Self {
        ClientConfig {
            target_vcpu,
            msg_sint: VMBUS_MESSAGE_SINT,
            interrupt_page_gpa,
            monitor_page_gpas,
            max_version: None,
            min_version: None,
            max_channels: 256,
        }
    }
}

/// Where the connection to the host stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not started (or reset).
    Idle,
    /// InitiateContact for `version` posted, waiting for VersionResponse.
    Contacting {
        /// Proposed version.
        version: Version,
    },
    /// Version agreed; channel messages flow.
    Connected,
    /// Unload posted, waiting for UnloadResponse.
    Unloading,
    /// The host answered Unload: all channels are gone. `start` may reconnect.
    Unloaded,
    /// Contact failed (see the [`ClientEvent::ContactFailed`] or error that said why).
    Failed,
}

/// Why contact failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContactFailure {
    /// The host refused every version we may propose.
    NoCommonVersion,
    /// The host accepted a 5.0+ version but gave an unusable connection id.
    BadConnectionId(u32),
    /// Posting InitiateContact failed with this status.
    Post(HvStatus),
}

impl fmt::Display for ContactFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContactFailure::NoCommonVersion => f.write_str("no VMBus version in common with the host"),
            ContactFailure::BadConnectionId(id) => write!(f, "host gave unusable message connection id {id:#x}"),
            ContactFailure::Post(s) => write!(f, "posting InitiateContact failed: {s}"),
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpStatus {
    /// The host reported success.
    Success,
    /// The host reported this non-zero status.
    Failed(u32),
    /// The channel was rescinded before the host answered; nothing more will come.
    Rescinded,
    /// The connection was unloaded before the host answered.
    Unloaded,
}

impl OpStatus {
    /// Maps a host status word (0 = success).
    pub const fn from_host(status: u32) -> OpStatus {
        if status == 0 {
            OpStatus::Success
        } else {
            OpStatus::Failed(status)
        }
    }
    /// Whether the operation succeeded.
    pub const fn is_success(self) -> bool {
        matches!(self, OpStatus::Success)
    }
}

/// A channel offer, as delivered to the glue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferEvent {
    /// The relid (also in `offer`).
    pub relid: u32,
    /// For a sub-channel (`sub_channel_index > 0`): its primary's relid.
    pub primary_relid: Option<u32>,
    /// The whole offer as the host sent it (validated: relid, monitor id).
    pub offer: OfferChannel,
}

/// What happened, for the glue (see [`Client::handle_message`](super::Client::handle_message)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Version agreed. Every later message goes to `msg_conn_id`.
    Connected {
        /// The agreed version.
        version: Version,
        /// Connection id for channel messages.
        msg_conn_id: u32,
    },
    /// Contact failed; the client is in [`ConnectionState::Failed`].
    ContactFailed(ContactFailure),
    /// A new channel (primary or sub-channel).
    Offer(OfferEvent),
    /// The host has delivered every boot-time offer (later offers are hot-adds).
    AllOffersDelivered,
    /// A GPADL create finished (on failure or rescind the handle is free again).
    GpadlCreated {
        /// Channel.
        relid: u32,
        /// Handle.
        handle: u32,
        /// Outcome.
        status: OpStatus,
    },
    /// A GPADL teardown finished: the host no longer maps the pages.
    GpadlTornDown {
        /// Channel.
        relid: u32,
        /// Handle.
        handle: u32,
        /// `Success`, or `Rescinded`/`Unloaded` (treated as released, as Linux does).
        status: OpStatus,
    },
    /// An open finished (on failure or rescind the channel is closed again).
    OpenResult {
        /// Channel.
        relid: u32,
        /// Outcome.
        status: OpStatus,
    },
    /// A ModifyChannel was answered (5.3 and later) or cancelled.
    ModifyChannelResponse {
        /// Channel.
        relid: u32,
        /// Outcome.
        status: OpStatus,
    },
    /// The host withdrew the channel: stop writing to its rings, close it,
    /// tear down its GPADLs (locally), then call
    /// [`release_relid`](super::Client::release_relid). Pending operations
    /// on it complete with [`OpStatus::Rescinded`] in the events that follow.
    Rescinded {
        /// Channel.
        relid: u32,
    },
    /// The host answered Unload: every channel is gone and every GPADL is
    /// released (the glue may free all ring and buffer memory). Pending
    /// operations were completed with [`OpStatus::Unloaded`] just before.
    UnloadComplete,
    /// A TlConnectResult (hv_sock); passed through, not interpreted.
    TlConnectResult(TlConnectResult),
}

impl ClientEvent {
    /// The channel the event is about, if any.
    pub fn relid(&self) -> Option<u32> {
        match *self {
            ClientEvent::Offer(OfferEvent { relid, .. })
            | ClientEvent::GpadlCreated { relid, .. }
            | ClientEvent::GpadlTornDown { relid, .. }
            | ClientEvent::OpenResult { relid, .. }
            | ClientEvent::ModifyChannelResponse { relid, .. }
            | ClientEvent::Rescinded { relid } => Some(relid),
            ClientEvent::Connected { .. }
            | ClientEvent::ContactFailed(_)
            | ClientEvent::AllOffersDelivered
            | ClientEvent::UnloadComplete
            | ClientEvent::TlConnectResult(_) => None,
        }
    }
}

/// Kinds of rejected host input, one counter each (see [`ClientCounters::rejected`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum RejectKind {
    /// Unparseable bytes.
    Malformed = 0,
    /// A message type only a guest sends.
    WrongDirection,
    /// A message that is not valid in the current connection state.
    UnexpectedMessage,
    /// Relid 0 or not below 2048.
    BadRelid,
    /// A relid that has no channel.
    UnknownRelid,
    /// An offer for a relid that is still live (not yet released).
    DuplicateOffer,
    /// A primary offer duplicating a live primary's type and instance.
    DuplicatePrimary,
    /// A sub-channel offer without a live primary.
    OrphanSubChannel,
    /// A monitor id outside the monitor page.
    BadMonitorId,
    /// The channel table is full.
    TableFull,
    /// A GPADL answer for a handle not pending on that channel.
    UnknownGpadl,
    /// An OpenResult with the wrong openid.
    BadOpenId,
    /// A response with no request outstanding.
    NoRequestOutstanding,
    /// An unusable message connection id.
    BadConnectionId,
    /// A second rescind of the same relid.
    DuplicateRescind,
}

impl RejectKind {
    /// Number of kinds.
    pub const COUNT: usize = 15;
    /// Every kind, in counter order.
    pub const ALL: [RejectKind; Self::COUNT] = [
        RejectKind::Malformed,
        RejectKind::WrongDirection,
        RejectKind::UnexpectedMessage,
        RejectKind::BadRelid,
        RejectKind::UnknownRelid,
        RejectKind::DuplicateOffer,
        RejectKind::DuplicatePrimary,
        RejectKind::OrphanSubChannel,
        RejectKind::BadMonitorId,
        RejectKind::TableFull,
        RejectKind::UnknownGpadl,
        RejectKind::BadOpenId,
        RejectKind::NoRequestOutstanding,
        RejectKind::BadConnectionId,
        RejectKind::DuplicateRescind,
    ];
}

/// Client errors: rejected host input (counted per [`RejectKind`]) and
/// refused or failed local operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    // --- host input ---
    /// The bytes are not a channel message.
    Malformed(MessageError),
    /// A type only the guest sends (e.g. OpenChannel, InitiateContact).
    WrongDirection(MessageType),
    /// Not valid in the current connection state.
    UnexpectedMessage {
        /// Type received.
        msgtype: MessageType,
        /// State at the time.
        state: ConnectionState,
    },
    /// Relid 0 or >= 2048 (the event-flag limit).
    BadRelid {
        /// Type received.
        msgtype: MessageType,
        /// The relid.
        relid: u32,
    },
    /// No channel has this relid.
    UnknownRelid {
        /// Type received.
        msgtype: MessageType,
        /// The relid.
        relid: u32,
    },
    /// Offer for a relid still live (the host must wait for RelidReleased).
    DuplicateOffer(u32),
    /// A second primary with the same type and instance GUIDs.
    DuplicatePrimary(u32),
    /// Sub-channel offer whose primary is not live, or whose index is already taken.
    OrphanSubChannel(u32),
    /// Monitor id >= 128 with `monitor_allocated` set.
    BadMonitorId {
        /// The relid.
        relid: u32,
        /// The monitor id.
        monitor_id: u8,
    },
    /// No room in the channel table for this offer.
    TableFull(u32),
    /// A GPADL answer for a handle not pending.
    UnknownGpadl {
        /// Type received.
        msgtype: MessageType,
        /// The handle.
        handle: u32,
    },
    /// OpenResult with an openid we did not send.
    BadOpenId {
        /// The relid.
        relid: u32,
        /// The openid received.
        openid: u32,
    },
    /// A response with no request outstanding.
    NoRequestOutstanding {
        /// Type received.
        msgtype: MessageType,
        /// The relid (0 where the message has none).
        relid: u32,
    },
    /// A rescind for a channel already rescinded.
    DuplicateRescind(u32),
    /// The host accepted a version but its connection id is unusable.
    BadConnectionId(u32),

    // --- local operations ---
    /// Contact could not be started (see [`ContactFailure`]).
    Contact(ContactFailure),
    /// The operation needs a connected client.
    NotConnected,
    /// `start` while contact is under way or connected.
    AlreadyStarted,
    /// `request_offers` a second time.
    OffersAlreadyRequested,
    /// No channel with this relid.
    NoSuchChannel(u32),
    /// The channel has been rescinded.
    ChannelRescinded(u32),
    /// The channel is not in a state that allows this.
    InvalidChannelState(u32),
    /// The glue abandoned the channel ([`Client::abandon`](super::Client::abandon)): nothing new starts on it.
    ChannelAbandoned(u32),
    /// The negotiated version does not support this operation.
    NotSupported {
        /// The operation's message type.
        msgtype: MessageType,
        /// The negotiated version.
        version: Version,
    },
    /// The GPADL is invalid or no handle is free.
    Gpadl(GpadlError),
    /// The channel already has the most GPADLs the client tracks.
    TooManyGpadls(u32),
    /// No GPADL with this handle on this channel (or not in the needed state).
    NoSuchGpadl {
        /// The relid.
        relid: u32,
        /// The handle.
        handle: u32,
    },
    /// The GPADL holds the rings of an open (or opening) channel.
    GpadlInUse(u32),
    /// A request of this kind is already outstanding on the channel.
    Busy(u32),
    /// More than 120 bytes of open user data.
    UserDataTooLong(usize),
    /// The rescinded channel still has GPADLs or is open: not ready for RelidReleased.
    NotReleasable(u32),
    /// HvPostMessage failed.
    Post {
        /// The message type being posted.
        msgtype: MessageType,
        /// The status.
        status: HvStatus,
    },
}

impl ClientError {
    /// The counter this error bumps, if it is rejected host input.
    pub fn reject_kind(&self) -> Option<RejectKind> {
        Some(match self {
            ClientError::Malformed(_) => RejectKind::Malformed,
            ClientError::WrongDirection(_) => RejectKind::WrongDirection,
            ClientError::UnexpectedMessage { .. } => RejectKind::UnexpectedMessage,
            ClientError::BadRelid { .. } => RejectKind::BadRelid,
            ClientError::UnknownRelid { .. } => RejectKind::UnknownRelid,
            ClientError::DuplicateOffer(_) => RejectKind::DuplicateOffer,
            ClientError::DuplicatePrimary(_) => RejectKind::DuplicatePrimary,
            ClientError::OrphanSubChannel(_) => RejectKind::OrphanSubChannel,
            ClientError::BadMonitorId { .. } => RejectKind::BadMonitorId,
            ClientError::TableFull(_) => RejectKind::TableFull,
            ClientError::UnknownGpadl { .. } => RejectKind::UnknownGpadl,
            ClientError::BadOpenId { .. } => RejectKind::BadOpenId,
            ClientError::NoRequestOutstanding { .. } => RejectKind::NoRequestOutstanding,
            ClientError::DuplicateRescind(_) => RejectKind::DuplicateRescind,
            ClientError::BadConnectionId(_) => RejectKind::BadConnectionId,
            _ => return None,
        })
    }

    /// Whether the error is the host's fault (rejected input).
    pub fn is_host_violation(&self) -> bool {
        self.reject_kind().is_some()
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Malformed(e) => write!(f, "malformed host message: {e}"),
            ClientError::WrongDirection(t) => write!(f, "host sent guest-only message {t:?}"),
            ClientError::UnexpectedMessage { msgtype, state } => write!(f, "unexpected {msgtype:?} in state {state:?}"),
            ClientError::BadRelid { msgtype, relid } => write!(f, "{msgtype:?} with invalid relid {relid}"),
            ClientError::UnknownRelid { msgtype, relid } => write!(f, "{msgtype:?} for unknown relid {relid}"),
            ClientError::DuplicateOffer(r) => write!(f, "offer for live relid {r}"),
            ClientError::DuplicatePrimary(r) => write!(f, "offer {r} duplicates a live primary channel"),
            ClientError::OrphanSubChannel(r) => write!(f, "sub-channel offer {r} has no primary (or a taken index)"),
            ClientError::BadMonitorId { relid, monitor_id } => write!(f, "offer {relid} has monitor id {monitor_id}"),
            ClientError::TableFull(r) => write!(f, "channel table full, offer {r} dropped"),
            ClientError::UnknownGpadl { msgtype, handle } => write!(f, "{msgtype:?} for GPADL {handle:#x} not pending"),
            ClientError::BadOpenId { relid, openid } => write!(f, "OpenResult for relid {relid} with openid {openid}"),
            ClientError::NoRequestOutstanding { msgtype, relid } => {
                write!(f, "{msgtype:?} (relid {relid}) with no request outstanding")
            }
            ClientError::DuplicateRescind(r) => write!(f, "relid {r} rescinded twice"),
            ClientError::BadConnectionId(id) => write!(f, "unusable message connection id {id:#x}"),
            ClientError::Contact(c) => write!(f, "contact failed: {c}"),
            ClientError::NotConnected => f.write_str("not connected"),
            ClientError::AlreadyStarted => f.write_str("contact already started"),
            ClientError::OffersAlreadyRequested => f.write_str("offers already requested"),
            ClientError::NoSuchChannel(r) => write!(f, "no channel with relid {r}"),
            ClientError::ChannelRescinded(r) => write!(f, "channel {r} was rescinded"),
            ClientError::InvalidChannelState(r) => write!(f, "channel {r} is in the wrong state"),
            ClientError::ChannelAbandoned(r) => write!(f, "channel {r} was abandoned"),
            ClientError::NotSupported { msgtype, version } => write!(f, "{msgtype:?} not supported by VMBus {version}"),
            ClientError::Gpadl(e) => write!(f, "GPADL: {e}"),
            ClientError::TooManyGpadls(r) => write!(f, "channel {r} has too many GPADLs"),
            ClientError::NoSuchGpadl { relid, handle } => write!(f, "no usable GPADL {handle:#x} on channel {relid}"),
            ClientError::GpadlInUse(h) => write!(f, "GPADL {h:#x} holds the rings of an open channel"),
            ClientError::Busy(r) => write!(f, "a request is already outstanding on channel {r}"),
            ClientError::UserDataTooLong(n) => write!(f, "{n} bytes of user data, at most 120"),
            ClientError::NotReleasable(r) => write!(f, "channel {r} is not ready to release"),
            ClientError::Post { msgtype, status } => write!(f, "posting {msgtype:?} failed: {status}"),
        }
    }
}

impl core::error::Error for ClientError {}

impl core::error::Error for ContactFailure {}

impl From<GpadlError> for ClientError {
    fn from(e: GpadlError) -> Self {
        ClientError::Gpadl(e)
    }
}

/// Counters for the glue's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// Messages given to `handle_message`.
    pub messages: u64,
    /// Messages accepted.
    pub handled: u64,
    /// Messages rejected, by [`RejectKind`] (index with `kind as usize`).
    pub rejected_by_kind: [u64; RejectKind::COUNT],
    /// Offers accepted (primaries and sub-channels).
    pub offers: u64,
    /// Of which sub-channels.
    pub sub_channel_offers: u64,
    /// Rescinds accepted.
    pub rescinds: u64,
    /// Pending operations completed by a rescind or unload.
    pub cancelled_operations: u64,
    /// Late host answers (OpenResult, GpadlCreated, GpadlTorndown,
    /// ModifyChannelResponse) to an operation a rescind had already
    /// completed: the messages crossed. Accepted and dropped with no event,
    /// at most one per cancelled operation; not a violation.
    pub late_after_rescind: u64,
    /// Late host answers to an operation [`Client::abandon`](super::Client::abandon)
    /// completed (the glue stopped waiting; the host answered after all).
    /// Accepted and dropped with no event, at most one per cancelled
    /// operation; not a violation.
    pub late_after_abandon: u64,
    /// Versions the host refused.
    pub version_refusals: u64,
    /// UnloadResponse with no Unload outstanding (tolerated, like Linux).
    pub spurious_unload_responses: u64,
    /// Messages posted successfully.
    pub posts: u64,
    /// Posts that failed.
    pub post_failures: u64,
    /// TlConnectResult messages passed through.
    pub tl_connect_results: u64,
}

impl ClientCounters {
    /// Messages rejected for `kind`.
    pub fn rejected(&self, kind: RejectKind) -> u64 {
        self.rejected_by_kind.get(kind as usize).copied().unwrap_or(0)
    }
    /// All rejected messages.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_by_kind.iter().sum()
    }
}
