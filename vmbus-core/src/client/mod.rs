// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The guest side of the VMBus control protocol, as a sans-I/O state machine.
//!
//! [`Client`] owns no threads, locks or timers. The OS glue:
//!
//! 1. calls [`Client::start`] (posts InitiateContact, newest version first);
//! 2. hands every SynIC message payload (already copied out of the message
//!    page) to [`Client::handle_message`], which validates it against the
//!    current state and reports what happened through an event callback
//!    ([`ClientEvent`]), or rejects it with a typed [`ClientError`] and a
//!    per-kind counter ([`ClientCounters`]);
//! 3. drives channels with [`Client::request_offers`],
//!    [`Client::create_gpadl`], [`Client::open_channel`],
//!    [`Client::close_channel`], [`Client::teardown_gpadl`],
//!    [`Client::modify_channel`], [`Client::release_relid`] and
//!    [`Client::unload`], and waits (its own way) for the matching events.
//!
//! Every operation that expects an answer is recorded in the channel table
//! and matched exactly: GpadlCreated by (relid, handle), OpenResult by
//! (relid, openid = relid), GpadlTorndown by a handle being torn down,
//! ModifyChannelResponse by a pending modify (5.3 and later). A rescind
//! completes every pending operation of the channel with
//! [`OpStatus::Rescinded`], so no wait hangs forever. The host's answer to
//! such an operation may cross the rescind in flight: until the relid is
//! released, exactly one late answer per cancelled operation is accepted and
//! dropped with no event (counted in [`ClientCounters::late_after_rescind`]);
//! a second one, or one for an operation that was not pending, is rejected.
//!
//! Giving up: when the glue stops waiting for the host (a timeout), it calls
//! [`Client::abandon`]. That completes the channel's pending operations
//! locally, with no events (the glue asked, it knows), and remembers their
//! answers as owed exactly like a rescind does: a late answer is accepted and
//! dropped (counted in [`ClientCounters::late_after_abandon`]), a second one is
//! rejected. An abandoned channel starts nothing new (no GPADL, open or
//! modify: their answers could not be told from the owed ones); it may still
//! be closed, have created GPADLs torn down, be rescinded and released.
//!
//! Posting: each message is posted once through [`Hypervisor::post_message`];
//! a failure is returned as [`ClientError::Post`]. Retrying transient statuses
//! is the glue's job (see [`post_with_retry`] and [`RetryingHypervisor`]).
//!
//! Storage: the channel table is a slice of [`ChannelSlot`]s given at
//! construction ([`Client::with_storage`]) or allocated once
//! ([`Client::new`], feature `alloc`); nothing is allocated afterwards.
//!
//! Ordering of events: a rescind yields [`ClientEvent::Rescinded`] first, then
//! one completion (status [`OpStatus::Rescinded`]) per operation that was
//! pending on the channel. An UnloadResponse yields one completion (status
//! [`OpStatus::Unloaded`]) per pending operation, then
//! [`ClientEvent::UnloadComplete`]; the table is then empty.
//!
//! ```
//! use vmbus_core::client::{ChannelSlot, Client, ClientConfig, ClientEvent};
//! use vmbus_core::hv::HvStatus;
//! use vmbus_core::platform::Hypervisor;
//!
//! struct Hv; // the glue's hypercalls (here: every post succeeds)
//! impl Hypervisor for Hv {
//!     fn post_message(&self, _conn: u32, _msg: &[u8]) -> HvStatus { HvStatus::SUCCESS }
//!     fn signal_event(&self, _conn: u32) -> HvStatus { HvStatus::SUCCESS }
//! }
//!
//! let config = ClientConfig::new(0, 0x1000, (0x2000, 0x3000));
//! let mut client = Client::with_storage(config, [ChannelSlot::EMPTY; 16]);
//! client.start(&Hv).unwrap(); // InitiateContact 5.3 on connection id 4
//! // The host accepts and names connection id 11 (a 16-byte VersionResponse).
//! let mut resp = [0u8; 16];
//! resp[0] = 15; // VERSION_RESPONSE
//! resp[8] = 1; // version_supported
//! resp[12] = 11; // msg_conn_id
//! let mut events = Vec::new();
//! client.handle_message(&resp, &Hv, &mut |e| events.push(e)).unwrap();
//! assert!(matches!(events[0], ClientEvent::Connected { msg_conn_id: 11, .. }));
//! client.request_offers(&Hv).unwrap();
//! ```

mod retry;
mod types;

pub use retry::{
    backoff_delay, post_with_retry, should_retry, RetryingHypervisor, BACKOFF_DOUBLINGS, MAX_POST_ATTEMPTS,
};
pub use types::{
    ClientConfig, ClientCounters, ClientError, ClientEvent, ConnectionState, ContactFailure, OfferEvent, OpStatus,
    RejectKind,
};

use crate::gpadl::{GpaRangeRef, GpadlHandleAllocator, GpadlMessages};
use crate::guid::Guid;
use crate::hv::{CONNECTION_ID_MASK, EVENT_FLAGS_COUNT, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4};
use crate::message::{
    ChannelMessage, CloseChannel, GpadlTeardown, InitiateContact, MessageHeader, MessageType, ModifyChannel,
    OfferChannel, OfferFlags, OpenChannel, OutgoingMessage, RelidReleased, VersionResponse, MAX_USER_DEFINED_BYTES,
};
use crate::platform::Hypervisor;
use crate::version::Version;

/// GPADLs tracked per channel (ring, plus e.g. NetVSC's send and receive buffers).
pub const MAX_GPADLS_PER_CHANNEL: usize = 8;
/// Monitor ids the monitor pages have room for (4 groups of 32).
pub const MONITOR_ID_COUNT: u8 = 128;
/// The most channels a table can hold (relids 1..2048).
pub const MAX_CHANNELS: usize = EVENT_FLAGS_COUNT - 1;

/// Where a channel stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Offered, not open (also after a close or a failed open).
    Closed,
    /// OpenChannel posted, waiting for OpenResult.
    Opening {
        /// GPADL holding the rings.
        ring_gpadl: u32,
    },
    /// Open.
    Open {
        /// GPADL holding the rings.
        ring_gpadl: u32,
    },
}

impl ChannelState {
    fn ring_gpadl(self) -> Option<u32> {
        match self {
            ChannelState::Closed => None,
            ChannelState::Opening { ring_gpadl } | ChannelState::Open { ring_gpadl } => Some(ring_gpadl),
        }
    }
}

/// Where a GPADL stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpadlState {
    /// Header and bodies posted, waiting for GpadlCreated.
    Creating,
    /// The host maps the pages.
    Created,
    /// GpadlTeardown posted, waiting for GpadlTorndown.
    TearingDown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GpadlRecord {
    handle: u32,
    state: GpadlState,
}

/// A snapshot of one channel, for the glue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelInfo {
    /// Relid.
    pub relid: u32,
    /// Device class.
    pub if_type: Guid,
    /// Device instance.
    pub if_instance: Guid,
    /// 0 for a primary channel.
    pub sub_channel_index: u16,
    /// The primary's relid, for a sub-channel.
    pub primary_relid: Option<u32>,
    /// Connection id to signal (HvSignalEvent).
    pub connection_id: u32,
    /// Monitor id, if the host allocated one (always < 128).
    pub monitor_id: Option<u8>,
    /// Offer flags.
    pub flags: OfferFlags,
    /// Whether the channel has a dedicated interrupt.
    pub dedicated_interrupt: bool,
    /// Open state.
    pub state: ChannelState,
    /// The host withdrew the channel (sticky until `release_relid`).
    pub rescinded: bool,
    /// A ModifyChannel awaits its response.
    pub modify_pending: bool,
}

/// The answers the host still owes for operations a rescind completed
/// locally. The host's answer may already be in flight when its rescind
/// arrives (the messages cross), so exactly one late answer per cancelled
/// operation is accepted and dropped (counted in
/// [`ClientCounters::late_after_rescind`]); anything more stays a violation.
/// Fixed size: a rescinded channel can start no new operation, so the GPADL
/// handles fit the slots the cancelled records occupied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct OwedAnswers {
    /// [`OWED_OPEN_RESULT`] and [`OWED_MODIFY_RESPONSE`] bits.
    flags: u8,
    /// Handle `k` (0 = none: 0 is never a GPADL handle) is a GPADL whose
    /// create or teardown the rescind cancelled; kept at the index of the
    /// record it came from.
    gpadl_handles: [u32; MAX_GPADLS_PER_CHANNEL],
    /// Bit `k`: `gpadl_handles[k]` is owed a GpadlCreated (clear: a GpadlTorndown).
    gpadl_creating: u8,
}

/// An OpenResult is owed.
const OWED_OPEN_RESULT: u8 = 1 << 0;
/// A ModifyChannelResponse is owed.
const OWED_MODIFY_RESPONSE: u8 = 1 << 1;

// `OwedAnswers::gpadl_creating` has one bit per GPADL slot.
const _: () = assert!(MAX_GPADLS_PER_CHANNEL <= u8::BITS as usize);

impl OwedAnswers {
    const NONE: OwedAnswers = OwedAnswers { flags: 0, gpadl_handles: [0; MAX_GPADLS_PER_CHANNEL], gpadl_creating: 0 };

    fn is_empty(&self) -> bool {
        *self == Self::NONE
    }
    /// Takes the owed flag `bit`; false if it was not owed.
    fn take_flag(&mut self, bit: u8) -> bool {
        let owed = self.flags & bit != 0;
        self.flags &= !bit;
        owed
    }
    /// Index of the owed GPADL answer for `handle` (`creating`: GpadlCreated, else GpadlTorndown).
    fn gpadl(&self, handle: u32, creating: bool) -> Option<usize> {
        if handle == 0 {
            return None;
        }
        (0..MAX_GPADLS_PER_CHANNEL)
            .find(|&k| self.gpadl_handles.get(k) == Some(&handle) && (self.gpadl_creating & (1 << k) != 0) == creating)
    }
    fn remember_gpadl(&mut self, k: usize, handle: u32, creating: bool) {
        if let Some(h) = self.gpadl_handles.get_mut(k) {
            *h = handle;
            if creating {
                self.gpadl_creating |= 1 << k;
            } else {
                self.gpadl_creating &= !(1 << k);
            }
        }
    }
    fn take_gpadl(&mut self, k: usize) {
        if let Some(h) = self.gpadl_handles.get_mut(k) {
            *h = 0;
            self.gpadl_creating &= !(1 << k);
        }
    }
    fn handles(&self) -> impl Iterator<Item = u32> + '_ {
        self.gpadl_handles.iter().copied().filter(|&h| h != 0)
    }
}

#[derive(Clone, Copy, Debug)]
struct ChannelEntry {
    info: ChannelInfo,
    gpadls: [Option<GpadlRecord>; MAX_GPADLS_PER_CHANNEL],
    /// Late answers still owed after a rescind or an abandon (empty otherwise).
    owed: OwedAnswers,
    /// The glue gave up waiting on this channel ([`Client::abandon`]); sticky.
    abandoned: bool,
}

impl ChannelEntry {
    fn gpadl(&self, handle: u32, state: GpadlState) -> Option<usize> {
        self.gpadls.iter().position(|g| *g == Some(GpadlRecord { handle, state }))
    }
    /// Whether `handle` is in use here: a GPADL record, or a handle whose
    /// late answer is still owed (so it is not handed out again meanwhile and
    /// a GpadlTorndown, matched by handle alone, stays unambiguous).
    fn has_handle(&self, handle: u32) -> bool {
        self.gpadls.iter().flatten().any(|g| g.handle == handle) || self.owed.handles().any(|h| h == handle)
    }
}

/// One entry of the channel table (opaque). Build storage with
/// [`ChannelSlot::EMPTY`], e.g. `[ChannelSlot::EMPTY; 64]`.
#[derive(Clone, Copy, Debug)]
pub struct ChannelSlot(Option<ChannelEntry>);

impl ChannelSlot {
    /// A free slot.
    pub const EMPTY: ChannelSlot = ChannelSlot(None);
}

impl Default for ChannelSlot {
    fn default() -> Self {
        Self::EMPTY
    }
}

/// What `teardown_gpadl` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TeardownOutcome {
    /// GpadlTeardown posted; wait for [`ClientEvent::GpadlTornDown`].
    Pending,
    /// The channel was rescinded: the GPADL counts as released now (no
    /// message sent, no event follows), as in Linux.
    CompletedLocally,
}

/// What `modify_channel` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModifyOutcome {
    /// Posted; hosts before 5.3 do not answer (they may keep interrupting the
    /// old VP for a while).
    Done,
    /// Posted; wait for [`ClientEvent::ModifyChannelResponse`].
    AwaitResponse,
}

/// Arguments of [`Client::open_channel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenParams<'a> {
    /// A created GPADL of this channel holding both rings.
    pub ring_gpadl: u32,
    /// Page offset of the host-to-guest ring inside that GPADL.
    pub downstream_page_offset: u32,
    /// VP for the channel's interrupts.
    pub target_vp: u32,
    /// Class-specific bytes (at most 120; zero-padded).
    pub user_data: &'a [u8],
}

/// A broken internal invariant (found by [`Client::check_invariants`]; a bug if ever seen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvariantViolation {
    /// A relid outside 1..2048 is in the table.
    RelidOutOfRange(u32),
    /// Two entries share a relid.
    DuplicateRelid(u32),
    /// Two GPADL records share a handle, or a handle is 0.
    BadGpadlHandle(u32),
    /// A rescinded channel still has an operation pending.
    PendingAfterRescind(u32),
    /// An opening or open channel whose ring GPADL is not a created GPADL of it.
    RingGpadlMissing(u32),
    /// Channels exist while not connected.
    ChannelsWhileDisconnected,
    /// A ModifyChannel is pending on a channel that is not open.
    ModifyWhileNotOpen(u32),
    /// Late answers are recorded as owed on a channel that was neither rescinded nor abandoned,
    /// or an owed OpenResult on a channel that is not closed, or a creating
    /// bit without a handle.
    BadOwedAnswers(u32),
}

/// The guest side of the VMBus control protocol. `S` is the channel table's
/// storage: `Vec<ChannelSlot>`, `[ChannelSlot; N]` or `&mut [ChannelSlot]`.
#[derive(Debug)]
pub struct Client<S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>> {
    config: ClientConfig,
    state: ConnectionState,
    /// Index in `Version::GUEST_PREFERENCE` of the version being proposed or agreed.
    candidate: usize,
    version: Option<Version>,
    msg_conn_id: u32,
    offers_requested: bool,
    all_offers_delivered: bool,
    channels: S,
    handles: GpadlHandleAllocator,
    counters: ClientCounters,
}

#[cfg(feature = "alloc")]
impl Client<alloc::vec::Vec<ChannelSlot>> {
    /// A client whose channel table (`config.max_channels` slots, at most
    /// 2047) is allocated now, once.
    pub fn new(config: ClientConfig) -> Self {
        let n = config.max_channels.clamp(1, MAX_CHANNELS);
        Self::with_storage(config, alloc::vec![ChannelSlot::EMPTY; n])
    }
}

fn check_relid(msgtype: MessageType, relid: u32) -> Result<(), ClientError> {
    if relid == 0 || relid as usize >= EVENT_FLAGS_COUNT {
        Err(ClientError::BadRelid { msgtype, relid })
    } else {
        Ok(())
    }
}

impl<S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>> Client<S> {
    /// A client over caller-provided channel storage (one slot per channel;
    /// slots beyond 2047 are never used). Existing contents are cleared.
    pub fn with_storage(config: ClientConfig, mut channels: S) -> Self {
        for s in channels.as_mut() {
            *s = ChannelSlot::EMPTY;
        }
        Client {
            config,
            state: ConnectionState::Idle,
            candidate: 0,
            version: None,
            msg_conn_id: MESSAGE_CONNECTION_ID,
            offers_requested: false,
            all_offers_delivered: false,
            channels,
            handles: GpadlHandleAllocator::new(),
            counters: ClientCounters::default(),
        }
    }

    // ----- accessors -----

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }
    /// The connection state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }
    /// The agreed version, once connected.
    pub fn version(&self) -> Option<Version> {
        self.version
    }
    /// The connection id channel messages go to (1 before 5.0, the host's choice after).
    pub fn msg_conn_id(&self) -> u32 {
        self.msg_conn_id
    }
    /// Counters.
    pub fn counters(&self) -> &ClientCounters {
        &self.counters
    }
    /// Whether RequestOffers was sent.
    pub fn offers_requested(&self) -> bool {
        self.offers_requested
    }
    /// Whether AllOffersDelivered arrived.
    pub fn all_offers_delivered(&self) -> bool {
        self.all_offers_delivered
    }
    /// A snapshot of channel `relid`.
    pub fn channel(&self, relid: u32) -> Option<ChannelInfo> {
        self.find(relid).and_then(|i| self.entry(i)).map(|e| e.info)
    }
    /// Every channel in the table.
    pub fn channels(&self) -> impl Iterator<Item = ChannelInfo> + '_ {
        self.channels.as_ref().iter().filter_map(|s| s.0.as_ref().map(|e| e.info))
    }
    /// The live (not rescinded) sub-channels of primary `relid`.
    pub fn sub_channels(&self, relid: u32) -> impl Iterator<Item = u32> + '_ {
        self.channels().filter(move |c| c.primary_relid == Some(relid) && !c.rescinded).map(|c| c.relid)
    }
    /// The GPADLs of channel `relid` and their states.
    pub fn gpadls(&self, relid: u32) -> impl Iterator<Item = (u32, GpadlState)> + '_ {
        self.find(relid)
            .and_then(|i| self.entry(i))
            .into_iter()
            .flat_map(|e| e.gpadls.iter().flatten().map(|g| (g.handle, g.state)))
    }

    // ----- table helpers -----

    fn find(&self, relid: u32) -> Option<usize> {
        self.channels.as_ref().iter().position(|s| s.0.as_ref().is_some_and(|e| e.info.relid == relid))
    }
    fn entry(&self, index: usize) -> Option<&ChannelEntry> {
        self.channels.as_ref().get(index)?.0.as_ref()
    }
    fn entry_mut(&mut self, index: usize) -> Option<&mut ChannelEntry> {
        self.channels.as_mut().get_mut(index)?.0.as_mut()
    }
    /// The entry for `relid`, for a local operation.
    fn local_entry(&mut self, relid: u32) -> Result<(usize, ChannelEntry), ClientError> {
        let i = self.find(relid).ok_or(ClientError::NoSuchChannel(relid))?;
        let e = *self.entry(i).ok_or(ClientError::NoSuchChannel(relid))?;
        Ok((i, e))
    }
    fn live_entry(&mut self, relid: u32) -> Result<(usize, ChannelEntry), ClientError> {
        let (i, e) = self.local_entry(relid)?;
        if e.info.rescinded {
            return Err(ClientError::ChannelRescinded(relid));
        }
        if e.abandoned {
            return Err(ClientError::ChannelAbandoned(relid));
        }
        Ok((i, e))
    }
    /// The entry for `relid` named in a host message.
    fn host_entry(&self, msgtype: MessageType, relid: u32) -> Result<usize, ClientError> {
        check_relid(msgtype, relid)?;
        self.find(relid).ok_or(ClientError::UnknownRelid { msgtype, relid })
    }
    fn clear_table(&mut self) {
        for s in self.channels.as_mut() {
            *s = ChannelSlot::EMPTY;
        }
    }

    fn require_connected(&self) -> Result<Version, ClientError> {
        match (self.state, self.version) {
            (ConnectionState::Connected, Some(v)) => Ok(v),
            _ => Err(ClientError::NotConnected),
        }
    }

    // ----- posting -----

    fn post_to<H: Hypervisor + ?Sized>(&mut self, hv: &H, conn: u32, msg: &OutgoingMessage) -> Result<(), ClientError> {
        let status = hv.post_message(conn, msg.as_bytes());
        if status.is_success() {
            self.counters.posts += 1;
            Ok(())
        } else {
            self.counters.post_failures += 1;
            Err(ClientError::Post { msgtype: msg.message_type(), status })
        }
    }

    fn post<H: Hypervisor + ?Sized>(&mut self, hv: &H, msg: &ChannelMessage<'_>) -> Result<(), ClientError> {
        // Only fixed-size messages of at most 196 bytes come through here, so
        // serialising cannot fail; the mapping exists to avoid a panic path.
        let out = OutgoingMessage::new(msg).map_err(ClientError::Malformed)?;
        self.post_to(hv, self.msg_conn_id, &out)
    }

    // ----- contact -----

    fn allowed(&self, v: Version) -> bool {
        self.config.max_version.is_none_or(|m| v <= m) && self.config.min_version.is_none_or(|m| v >= m)
    }

    /// Proposes the first allowed version at or after `idx`; on
    /// INVALID_CONNECTION_ID for a 5.0+ version moves on to the pre-5.0
    /// versions on connection id 1. The loop is bounded: `idx` only grows.
    fn contact_from<H: Hypervisor + ?Sized>(&mut self, mut idx: usize, hv: &H) -> Result<(), ContactFailure> {
        let prefs = Version::GUEST_PREFERENCE;
        loop {
            let Some(i) = (idx..prefs.len()).find(|&i| prefs.get(i).is_some_and(|&v| self.allowed(v))) else {
                self.state = ConnectionState::Failed;
                return Err(ContactFailure::NoCommonVersion);
            };
            let Some(&v) = prefs.get(i) else {
                self.state = ConnectionState::Failed;
                return Err(ContactFailure::NoCommonVersion);
            };
            let conn = if v.uses_msg_sint() { MESSAGE_CONNECTION_ID_4 } else { MESSAGE_CONNECTION_ID };
            let c = &self.config;
            let msg = InitiateContact::new(v, c.target_vcpu, c.msg_sint, c.interrupt_page_gpa, c.monitor_page_gpas);
            let out = OutgoingMessage::new(&ChannelMessage::InitiateContact(msg))
                .map_err(|_| ContactFailure::NoCommonVersion)?;
            match self.post_to(hv, conn, &out) {
                Ok(()) => {
                    self.candidate = i;
                    self.state = ConnectionState::Contacting { version: v };
                    return Ok(());
                }
                Err(ClientError::Post { status, .. })
                    if status == crate::hv::HvStatus::INVALID_CONNECTION_ID && v.uses_msg_sint() =>
                {
                    // An old host: it has no connection id 4. Skip every 5.x version.
                    idx = (i + 1..prefs.len())
                        .find(|&j| prefs.get(j).is_some_and(|v| !v.uses_msg_sint()))
                        .unwrap_or(prefs.len());
                }
                Err(ClientError::Post { status, .. }) => {
                    self.state = ConnectionState::Failed;
                    return Err(ContactFailure::Post(status));
                }
                Err(_) => {
                    self.state = ConnectionState::Failed;
                    return Err(ContactFailure::NoCommonVersion);
                }
            }
        }
    }

    /// Starts (or restarts after unload or failure) contact: posts
    /// InitiateContact with the newest allowed version (5.0+ on connection id
    /// 4 with `msg_sint`, older on id 1 with the interrupt page). Wait for
    /// [`ClientEvent::Connected`] or [`ClientEvent::ContactFailed`].
    pub fn start<H: Hypervisor + ?Sized>(&mut self, hv: &H) -> Result<(), ClientError> {
        match self.state {
            ConnectionState::Idle | ConnectionState::Failed | ConnectionState::Unloaded => {}
            _ => return Err(ClientError::AlreadyStarted),
        }
        self.clear_table();
        self.version = None;
        self.msg_conn_id = MESSAGE_CONNECTION_ID;
        self.offers_requested = false;
        self.all_offers_delivered = false;
        self.contact_from(0, hv).map_err(ClientError::Contact)
    }

    fn on_version_response<H: Hypervisor + ?Sized>(
        &mut self,
        r: VersionResponse,
        hv: &H,
        events: &mut impl FnMut(ClientEvent),
    ) -> Result<(), ClientError> {
        let ConnectionState::Contacting { version } = self.state else {
            return Err(ClientError::NoRequestOutstanding { msgtype: MessageType::VERSION_RESPONSE, relid: 0 });
        };
        if r.version_supported != 0 {
            let conn = if version.uses_msg_sint() { r.msg_conn_id } else { MESSAGE_CONNECTION_ID };
            if conn == 0 || conn & !CONNECTION_ID_MASK != 0 {
                self.state = ConnectionState::Failed;
                events(ClientEvent::ContactFailed(ContactFailure::BadConnectionId(conn)));
                return Err(ClientError::BadConnectionId(conn));
            }
            self.version = Some(version);
            self.msg_conn_id = conn;
            self.state = ConnectionState::Connected;
            events(ClientEvent::Connected { version, msg_conn_id: conn });
            return Ok(());
        }
        self.counters.version_refusals += 1;
        if let Err(f) = self.contact_from(self.candidate + 1, hv) {
            events(ClientEvent::ContactFailed(f));
        }
        Ok(())
    }

    // ----- incoming -----

    /// Handles one host message (the SynIC payload, already copied into
    /// private memory). Events go to `events`, in order; a rejected message
    /// returns an error, bumps its [`RejectKind`] counter and changes nothing.
    /// Never panics, whatever `bytes` hold.
    pub fn handle_message<H: Hypervisor + ?Sized>(
        &mut self,
        bytes: &[u8],
        hv: &H,
        events: &mut impl FnMut(ClientEvent),
    ) -> Result<(), ClientError> {
        self.counters.messages += 1;
        let r = self.dispatch(bytes, hv, events);
        match &r {
            Ok(()) => self.counters.handled += 1,
            Err(e) => {
                if let Some(slot) = e.reject_kind().and_then(|k| self.counters.rejected_by_kind.get_mut(k as usize)) {
                    *slot += 1;
                }
            }
        }
        r
    }

    fn dispatch<H: Hypervisor + ?Sized>(
        &mut self,
        bytes: &[u8],
        hv: &H,
        events: &mut impl FnMut(ClientEvent),
    ) -> Result<(), ClientError> {
        let msg = ChannelMessage::parse(bytes).map_err(ClientError::Malformed)?;
        let t = msg.message_type();
        match msg {
            ChannelMessage::RequestOffers
            | ChannelMessage::OpenChannel(_)
            | ChannelMessage::CloseChannel(_)
            | ChannelMessage::GpadlHeader(_)
            | ChannelMessage::GpadlBody(_)
            | ChannelMessage::GpadlTeardown(_)
            | ChannelMessage::RelidReleased(_)
            | ChannelMessage::InitiateContact(_)
            | ChannelMessage::Unload
            | ChannelMessage::TlConnectRequest(_)
            | ChannelMessage::ModifyChannel(_) => return Err(ClientError::WrongDirection(t)),
            ChannelMessage::VersionResponse(r) => return self.on_version_response(r, hv, events),
            ChannelMessage::UnloadResponse => {
                self.on_unload_response(events);
                return Ok(());
            }
            _ => {}
        }
        // Everything else needs a connection.
        match self.state {
            ConnectionState::Connected | ConnectionState::Unloading => {}
            state => return Err(ClientError::UnexpectedMessage { msgtype: t, state }),
        }
        match msg {
            ChannelMessage::OfferChannel(o) => self.on_offer(o, events),
            ChannelMessage::RescindChannelOffer(r) => self.on_rescind(r.child_relid, events),
            ChannelMessage::AllOffersDelivered => {
                if !self.offers_requested || self.all_offers_delivered {
                    return Err(ClientError::UnexpectedMessage { msgtype: t, state: self.state });
                }
                self.all_offers_delivered = true;
                events(ClientEvent::AllOffersDelivered);
                Ok(())
            }
            ChannelMessage::OpenResult(r) => {
                let i = self.host_entry(t, r.child_relid)?;
                let e = self.entry_mut(i).ok_or(ClientError::UnknownRelid { msgtype: t, relid: r.child_relid })?;
                // Like Linux, the openid is the relid.
                let bad_openid = ClientError::BadOpenId { relid: r.child_relid, openid: r.openid };
                let ChannelState::Opening { ring_gpadl } = e.info.state else {
                    if e.owed.flags & OWED_OPEN_RESULT == 0 {
                        return Err(ClientError::NoRequestOutstanding { msgtype: t, relid: r.child_relid });
                    }
                    if r.openid != r.child_relid {
                        return Err(bad_openid);
                    }
                    e.owed.take_flag(OWED_OPEN_RESULT);
                    let abandoned = e.abandoned && !e.info.rescinded;
                    self.count_late(abandoned);
                    return Ok(());
                };
                if r.openid != r.child_relid {
                    return Err(bad_openid);
                }
                let status = OpStatus::from_host(r.status);
                e.info.state =
                    if status.is_success() { ChannelState::Open { ring_gpadl } } else { ChannelState::Closed };
                events(ClientEvent::OpenResult { relid: r.child_relid, status });
                Ok(())
            }
            ChannelMessage::GpadlCreated(g) => {
                let i = self.host_entry(t, g.child_relid)?;
                let e = self.entry_mut(i).ok_or(ClientError::UnknownRelid { msgtype: t, relid: g.child_relid })?;
                let unknown = ClientError::UnknownGpadl { msgtype: t, handle: g.gpadl };
                let Some(k) = e.gpadl(g.gpadl, GpadlState::Creating) else {
                    // The rescind completed this create; its answer crossed.
                    let k = e.owed.gpadl(g.gpadl, true).ok_or(unknown)?;
                    e.owed.take_gpadl(k);
                    let abandoned = e.abandoned && !e.info.rescinded;
                    self.count_late(abandoned);
                    return Ok(());
                };
                let status = OpStatus::from_host(g.creation_status);
                if let Some(rec) = e.gpadls.get_mut(k) {
                    *rec = if status.is_success() {
                        Some(GpadlRecord { handle: g.gpadl, state: GpadlState::Created })
                    } else {
                        None
                    };
                }
                events(ClientEvent::GpadlCreated { relid: g.child_relid, handle: g.gpadl, status });
                Ok(())
            }
            ChannelMessage::GpadlTorndown(g) => {
                let found = self.channels.as_mut().iter_mut().find_map(|s| {
                    let e = s.0.as_mut()?;
                    let k = e.gpadl(g.gpadl, GpadlState::TearingDown)?;
                    Some((e.info.relid, e.gpadls.get_mut(k)?))
                });
                let Some((relid, rec)) = found else {
                    // A teardown the rescind completed locally; its answer crossed.
                    let owed = self.channels.as_mut().iter_mut().find_map(|s| {
                        let e = s.0.as_mut()?;
                        let k = e.owed.gpadl(g.gpadl, false)?;
                        e.owed.take_gpadl(k);
                        Some(e.abandoned && !e.info.rescinded)
                    });
                    let Some(abandoned) = owed else {
                        return Err(ClientError::UnknownGpadl { msgtype: t, handle: g.gpadl });
                    };
                    self.count_late(abandoned);
                    return Ok(());
                };
                *rec = None;
                events(ClientEvent::GpadlTornDown { relid, handle: g.gpadl, status: OpStatus::Success });
                Ok(())
            }
            ChannelMessage::ModifyChannelResponse(m) => {
                let i = self.host_entry(t, m.child_relid)?;
                let e = self.entry_mut(i).ok_or(ClientError::UnknownRelid { msgtype: t, relid: m.child_relid })?;
                if !e.info.modify_pending {
                    // A modify the rescind completed; its answer crossed.
                    if !e.owed.take_flag(OWED_MODIFY_RESPONSE) {
                        return Err(ClientError::NoRequestOutstanding { msgtype: t, relid: m.child_relid });
                    }
                    let abandoned = e.abandoned && !e.info.rescinded;
                    self.count_late(abandoned);
                    return Ok(());
                }
                e.info.modify_pending = false;
                events(ClientEvent::ModifyChannelResponse {
                    relid: m.child_relid,
                    status: OpStatus::from_host(m.status),
                });
                Ok(())
            }
            ChannelMessage::TlConnectResult(r) => {
                self.counters.tl_connect_results += 1;
                events(ClientEvent::TlConnectResult(r));
                Ok(())
            }
            // Handled above; kept exhaustive so a new variant is a compile error here.
            ChannelMessage::RequestOffers
            | ChannelMessage::OpenChannel(_)
            | ChannelMessage::CloseChannel(_)
            | ChannelMessage::GpadlHeader(_)
            | ChannelMessage::GpadlBody(_)
            | ChannelMessage::GpadlTeardown(_)
            | ChannelMessage::RelidReleased(_)
            | ChannelMessage::InitiateContact(_)
            | ChannelMessage::Unload
            | ChannelMessage::TlConnectRequest(_)
            | ChannelMessage::ModifyChannel(_)
            | ChannelMessage::VersionResponse(_)
            | ChannelMessage::UnloadResponse => Err(ClientError::WrongDirection(t)),
        }
    }

    fn on_offer(&mut self, o: OfferChannel, events: &mut impl FnMut(ClientEvent)) -> Result<(), ClientError> {
        let t = MessageType::OFFER_CHANNEL;
        if !self.offers_requested || self.state != ConnectionState::Connected {
            return Err(ClientError::UnexpectedMessage { msgtype: t, state: self.state });
        }
        let relid = o.child_relid;
        check_relid(t, relid)?;
        if self.find(relid).is_some() {
            return Err(ClientError::DuplicateOffer(relid));
        }
        if o.has_monitor() && o.monitor_id >= MONITOR_ID_COUNT {
            return Err(ClientError::BadMonitorId { relid, monitor_id: o.monitor_id });
        }
        let same_device = |c: &ChannelInfo| !c.rescinded && c.if_type == o.if_type && c.if_instance == o.if_instance;
        let primary_relid = if o.sub_channel_index == 0 {
            if self.channels().any(|c| same_device(&c) && c.sub_channel_index == 0) {
                return Err(ClientError::DuplicatePrimary(relid));
            }
            None
        } else {
            let primary = self
                .channels()
                .find(|c| same_device(c) && c.sub_channel_index == 0)
                .ok_or(ClientError::OrphanSubChannel(relid))?;
            if self.channels().any(|c| same_device(&c) && c.sub_channel_index == o.sub_channel_index) {
                return Err(ClientError::OrphanSubChannel(relid));
            }
            Some(primary.relid)
        };
        let free = self
            .channels
            .as_mut()
            .iter_mut()
            .take(MAX_CHANNELS)
            .find(|s| s.0.is_none())
            .ok_or(ClientError::TableFull(relid))?;
        *free = ChannelSlot(Some(ChannelEntry {
            info: ChannelInfo {
                relid,
                if_type: o.if_type,
                if_instance: o.if_instance,
                sub_channel_index: o.sub_channel_index,
                primary_relid,
                connection_id: o.connection_id,
                monitor_id: o.has_monitor().then_some(o.monitor_id),
                flags: o.flags(),
                dedicated_interrupt: o.dedicated_interrupt(),
                state: ChannelState::Closed,
                rescinded: false,
                modify_pending: false,
            },
            gpadls: [None; MAX_GPADLS_PER_CHANNEL],
            owed: OwedAnswers::NONE,
            abandoned: false,
        }));
        self.counters.offers += 1;
        if primary_relid.is_some() {
            self.counters.sub_channel_offers += 1;
        }
        events(ClientEvent::Offer(OfferEvent { relid, primary_relid, offer: o }));
        Ok(())
    }

    /// Completes every pending operation of entry `i` with `status`. With
    /// `owe_answers` (a rescind) the host's answers to them are remembered
    /// as still owed, so a late one that crossed the rescind is not taken for
    /// a protocol violation.
    fn cancel_pending(
        &mut self,
        i: usize,
        status: OpStatus,
        owe_answers: bool,
        events: &mut impl FnMut(ClientEvent),
    ) -> u64 {
        let mut cancelled = 0;
        if let Some(e) = self.entry_mut(i) {
            let relid = e.info.relid;
            if let ChannelState::Opening { .. } = e.info.state {
                e.info.state = ChannelState::Closed;
                cancelled += 1;
                if owe_answers {
                    e.owed.flags |= OWED_OPEN_RESULT;
                }
                events(ClientEvent::OpenResult { relid, status });
            }
            for (k, rec) in e.gpadls.iter_mut().enumerate() {
                let (handle, creating) = match *rec {
                    Some(GpadlRecord { handle, state: GpadlState::Creating }) => (handle, true),
                    Some(GpadlRecord { handle, state: GpadlState::TearingDown }) => (handle, false),
                    _ => continue,
                };
                *rec = None;
                cancelled += 1;
                if owe_answers {
                    e.owed.remember_gpadl(k, handle, creating);
                }
                events(if creating {
                    ClientEvent::GpadlCreated { relid, handle, status }
                } else {
                    ClientEvent::GpadlTornDown { relid, handle, status }
                });
            }
            if e.info.modify_pending {
                e.info.modify_pending = false;
                cancelled += 1;
                if owe_answers {
                    e.owed.flags |= OWED_MODIFY_RESPONSE;
                }
                events(ClientEvent::ModifyChannelResponse { relid, status });
            }
        }
        self.counters.cancelled_operations += cancelled;
        cancelled
    }

    /// Counts a late answer to an operation a rescind or an abandon completed.
    fn count_late(&mut self, abandoned: bool) {
        if abandoned {
            self.counters.late_after_abandon += 1;
        } else {
            self.counters.late_after_rescind += 1;
        }
    }

    fn on_rescind(&mut self, relid: u32, events: &mut impl FnMut(ClientEvent)) -> Result<(), ClientError> {
        let t = MessageType::RESCIND_CHANNEL_OFFER;
        let i = self.host_entry(t, relid)?;
        let e = self.entry_mut(i).ok_or(ClientError::UnknownRelid { msgtype: t, relid })?;
        if e.info.rescinded {
            return Err(ClientError::DuplicateRescind(relid));
        }
        e.info.rescinded = true;
        self.counters.rescinds += 1;
        events(ClientEvent::Rescinded { relid });
        self.cancel_pending(i, OpStatus::Rescinded, true, events);
        Ok(())
    }

    fn on_unload_response(&mut self, events: &mut impl FnMut(ClientEvent)) {
        if self.state != ConnectionState::Unloading {
            // Linux tolerates a spurious UnloadResponse; so do we.
            self.counters.spurious_unload_responses += 1;
            return;
        }
        for i in 0..self.channels.as_ref().len() {
            self.cancel_pending(i, OpStatus::Unloaded, false, events);
        }
        self.clear_table();
        self.state = ConnectionState::Unloaded;
        events(ClientEvent::UnloadComplete);
    }

    // ----- operations -----

    /// Posts RequestOffers (once per connection). Offers then arrive as
    /// [`ClientEvent::Offer`], followed by [`ClientEvent::AllOffersDelivered`].
    pub fn request_offers<H: Hypervisor + ?Sized>(&mut self, hv: &H) -> Result<(), ClientError> {
        self.require_connected()?;
        if self.offers_requested {
            return Err(ClientError::OffersAlreadyRequested);
        }
        self.post(hv, &ChannelMessage::RequestOffers)?;
        self.offers_requested = true;
        Ok(())
    }

    /// Creates a single-range GPADL on channel `relid`: posts the header and
    /// body messages and returns the new handle. Wait for
    /// [`ClientEvent::GpadlCreated`] before using it.
    ///
    /// If a post fails part-way the handle is dropped (and never reused
    /// soon: the counter moves on) and the error returned.
    pub fn create_gpadl<H: Hypervisor + ?Sized>(
        &mut self,
        relid: u32,
        range: GpaRangeRef<'_>,
        hv: &H,
    ) -> Result<u32, ClientError> {
        self.create_gpadl_with(relid, hv, |handle| GpadlMessages::new(relid, handle, range))
    }

    /// Like [`create_gpadl`](Self::create_gpadl) with several ranges.
    pub fn create_gpadl_multi<H: Hypervisor + ?Sized>(
        &mut self,
        relid: u32,
        ranges: &[GpaRangeRef<'_>],
        hv: &H,
    ) -> Result<u32, ClientError> {
        self.create_gpadl_with(relid, hv, |handle| GpadlMessages::multi(relid, handle, ranges))
    }

    fn create_gpadl_with<'r, H: Hypervisor + ?Sized>(
        &mut self,
        relid: u32,
        hv: &H,
        build: impl FnOnce(u32) -> Result<GpadlMessages<'r>, crate::gpadl::GpadlError>,
    ) -> Result<u32, ClientError> {
        self.require_connected()?;
        let (i, e) = self.live_entry(relid)?;
        let k = e.gpadls.iter().position(Option::is_none).ok_or(ClientError::TooManyGpadls(relid))?;
        let channels = self.channels.as_ref();
        let handle =
            self.handles.allocate(|h| channels.iter().any(|s| s.0.as_ref().is_some_and(|e| e.has_handle(h))))?;
        let messages = build(handle)?;
        for m in messages {
            self.post_to(hv, self.msg_conn_id, &m)?;
        }
        if let Some(rec) = self.entry_mut(i).and_then(|e| e.gpadls.get_mut(k)) {
            *rec = Some(GpadlRecord { handle, state: GpadlState::Creating });
        }
        Ok(handle)
    }

    /// Posts OpenChannel (openid = relid). Wait for [`ClientEvent::OpenResult`].
    pub fn open_channel<H: Hypervisor + ?Sized>(
        &mut self,
        relid: u32,
        params: &OpenParams<'_>,
        hv: &H,
    ) -> Result<(), ClientError> {
        self.require_connected()?;
        let (i, e) = self.live_entry(relid)?;
        if e.info.state != ChannelState::Closed {
            return Err(ClientError::InvalidChannelState(relid));
        }
        if e.gpadl(params.ring_gpadl, GpadlState::Created).is_none() {
            return Err(ClientError::NoSuchGpadl { relid, handle: params.ring_gpadl });
        }
        let mut user_data = [0u8; MAX_USER_DEFINED_BYTES];
        user_data
            .get_mut(..params.user_data.len())
            .ok_or(ClientError::UserDataTooLong(params.user_data.len()))?
            .copy_from_slice(params.user_data);
        let msg = OpenChannel {
            header: MessageHeader::new(MessageType::OPEN_CHANNEL),
            child_relid: relid,
            openid: relid,
            ringbuffer_gpadl_handle: params.ring_gpadl,
            target_vp: params.target_vp,
            downstream_ringbuffer_pageoffset: params.downstream_page_offset,
            user_data,
        };
        self.post(hv, &ChannelMessage::OpenChannel(msg))?;
        if let Some(e) = self.entry_mut(i) {
            e.info.state = ChannelState::Opening { ring_gpadl: params.ring_gpadl };
        }
        Ok(())
    }

    /// Closes an open channel: posts CloseChannel (no reply) unless the
    /// channel was rescinded, in which case the close is local. The ring
    /// GPADL stays; tear it down next. Refused with [`ClientError::Busy`]
    /// while a ModifyChannel awaits its response.
    pub fn close_channel<H: Hypervisor + ?Sized>(&mut self, relid: u32, hv: &H) -> Result<(), ClientError> {
        let (i, e) = self.local_entry(relid)?;
        if !matches!(e.info.state, ChannelState::Open { .. }) {
            return Err(ClientError::InvalidChannelState(relid));
        }
        // A ModifyChannel awaiting its response must finish first, so that its
        // completion event is never lost (a rescind also completes it).
        if e.info.modify_pending {
            return Err(ClientError::Busy(relid));
        }
        if !e.info.rescinded {
            self.require_connected()?;
            let msg = CloseChannel { header: MessageHeader::new(MessageType::CLOSE_CHANNEL), child_relid: relid };
            self.post(hv, &ChannelMessage::CloseChannel(msg))?;
        }
        if let Some(e) = self.entry_mut(i) {
            e.info.state = ChannelState::Closed;
        }
        Ok(())
    }

    /// Tears down a created GPADL. On a live channel posts GpadlTeardown
    /// (wait for [`ClientEvent::GpadlTornDown`]); on a rescinded channel the
    /// GPADL is released at once ([`TeardownOutcome::CompletedLocally`]).
    /// The ring GPADL of an open or opening channel is refused.
    pub fn teardown_gpadl<H: Hypervisor + ?Sized>(
        &mut self,
        relid: u32,
        handle: u32,
        hv: &H,
    ) -> Result<TeardownOutcome, ClientError> {
        let (i, e) = self.local_entry(relid)?;
        let k = e.gpadl(handle, GpadlState::Created).ok_or(ClientError::NoSuchGpadl { relid, handle })?;
        if e.info.state.ring_gpadl() == Some(handle) {
            return Err(ClientError::GpadlInUse(handle));
        }
        let outcome = if e.info.rescinded {
            TeardownOutcome::CompletedLocally
        } else {
            self.require_connected()?;
            let msg = GpadlTeardown {
                header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
                child_relid: relid,
                gpadl: handle,
            };
            self.post(hv, &ChannelMessage::GpadlTeardown(msg))?;
            TeardownOutcome::Pending
        };
        if let Some(rec) = self.entry_mut(i).and_then(|e| e.gpadls.get_mut(k)) {
            *rec = match outcome {
                TeardownOutcome::Pending => Some(GpadlRecord { handle, state: GpadlState::TearingDown }),
                TeardownOutcome::CompletedLocally => None,
            };
        }
        Ok(outcome)
    }

    /// Moves an open channel's interrupts to `target_vp` (VMBus 4.1 and later).
    pub fn modify_channel<H: Hypervisor + ?Sized>(
        &mut self,
        relid: u32,
        target_vp: u32,
        hv: &H,
    ) -> Result<ModifyOutcome, ClientError> {
        let version = self.require_connected()?;
        if !version.supports_modify_channel() {
            return Err(ClientError::NotSupported { msgtype: MessageType::MODIFY_CHANNEL, version });
        }
        let (i, e) = self.live_entry(relid)?;
        if !matches!(e.info.state, ChannelState::Open { .. }) {
            return Err(ClientError::InvalidChannelState(relid));
        }
        if e.info.modify_pending {
            return Err(ClientError::Busy(relid));
        }
        let msg =
            ModifyChannel { header: MessageHeader::new(MessageType::MODIFY_CHANNEL), child_relid: relid, target_vp };
        self.post(hv, &ChannelMessage::ModifyChannel(msg))?;
        if version.has_modify_channel_response() {
            if let Some(e) = self.entry_mut(i) {
                e.info.modify_pending = true;
            }
            Ok(ModifyOutcome::AwaitResponse)
        } else {
            Ok(ModifyOutcome::Done)
        }
    }

    /// Tells the host a rescinded channel is fully freed (RelidReleased) and
    /// drops it from the table; the host may then reuse the relid. The
    /// channel must be closed and have no GPADLs left.
    pub fn release_relid<H: Hypervisor + ?Sized>(&mut self, relid: u32, hv: &H) -> Result<(), ClientError> {
        self.require_connected()?;
        let (i, e) = self.local_entry(relid)?;
        if !e.info.rescinded {
            return Err(ClientError::InvalidChannelState(relid));
        }
        if e.info.state != ChannelState::Closed || e.gpadls.iter().any(Option::is_some) {
            return Err(ClientError::NotReleasable(relid));
        }
        let msg = RelidReleased { header: MessageHeader::new(MessageType::RELID_RELEASED), child_relid: relid };
        self.post(hv, &ChannelMessage::RelidReleased(msg))?;
        if let Some(s) = self.channels.as_mut().get_mut(i) {
            *s = ChannelSlot::EMPTY;
        }
        Ok(())
    }

    /// Gives up waiting on channel `relid` (the glue's timeout): every pending
    /// operation (GPADL create or teardown, open, modify) is completed locally
    /// with no event and its answer is remembered as owed, so a late answer is
    /// accepted and dropped (counted in [`ClientCounters::late_after_abandon`])
    /// and a second one rejected, exactly as after a rescind. Returns how many
    /// operations were cancelled (0 if none was pending). The channel is marked
    /// abandoned for good: [`create_gpadl`](Self::create_gpadl),
    /// [`open_channel`](Self::open_channel) and
    /// [`modify_channel`](Self::modify_channel) are refused with
    /// [`ClientError::ChannelAbandoned`]; closing, tearing down created
    /// GPADLs, a rescind and [`release_relid`](Self::release_relid) work as
    /// before. Posts nothing.
    ///
    /// The host may still map any GPADL whose create or teardown was
    /// abandoned: the glue must keep that memory until an unload (or a
    /// rescind and release) says the host has let go.
    pub fn abandon(&mut self, relid: u32) -> Result<u64, ClientError> {
        let (i, _) = self.local_entry(relid)?;
        let cancelled = self.cancel_pending(i, OpStatus::Rescinded, true, &mut |_| {});
        if let Some(e) = self.entry_mut(i) {
            e.abandoned = true;
        }
        Ok(cancelled)
    }

    /// Whether the glue abandoned channel `relid` ([`abandon`](Self::abandon)).
    pub fn is_abandoned(&self, relid: u32) -> bool {
        self.find(relid).and_then(|i| self.entry(i)).is_some_and(|e| e.abandoned)
    }

    /// Posts Unload (VMBus 3.0 and later). Wait for [`ClientEvent::UnloadComplete`].
    pub fn unload<H: Hypervisor + ?Sized>(&mut self, hv: &H) -> Result<(), ClientError> {
        let version = self.require_connected()?;
        if !version.supports_unload() {
            return Err(ClientError::NotSupported { msgtype: MessageType::UNLOAD, version });
        }
        self.post(hv, &ChannelMessage::Unload)?;
        self.state = ConnectionState::Unloading;
        Ok(())
    }

    /// Checks the table's internal consistency (for tests and fuzzing).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let connected = matches!(self.state, ConnectionState::Connected | ConnectionState::Unloading);
        let all = self.channels.as_ref();
        for (n, e) in all.iter().enumerate().filter_map(|(n, s)| Some((n, s.0.as_ref()?))) {
            let relid = e.info.relid;
            if !connected {
                return Err(InvariantViolation::ChannelsWhileDisconnected);
            }
            if relid == 0 || relid as usize >= EVENT_FLAGS_COUNT {
                return Err(InvariantViolation::RelidOutOfRange(relid));
            }
            let later = all.iter().skip(n + 1).filter_map(|s| s.0.as_ref());
            for other in later {
                if other.info.relid == relid {
                    return Err(InvariantViolation::DuplicateRelid(relid));
                }
                let mut handles = e.gpadls.iter().flatten().map(|g| g.handle).chain(e.owed.handles());
                if let Some(h) = handles.find(|&h| other.has_handle(h)) {
                    return Err(InvariantViolation::BadGpadlHandle(h));
                }
            }
            for (k, g) in e.gpadls.iter().enumerate() {
                let Some(g) = g else { continue };
                let dup = e.gpadls.iter().skip(k + 1).flatten().any(|h| h.handle == g.handle);
                if g.handle == 0 || dup {
                    return Err(InvariantViolation::BadGpadlHandle(g.handle));
                }
                if e.info.rescinded && g.state != GpadlState::Created {
                    return Err(InvariantViolation::PendingAfterRescind(relid));
                }
            }
            if e.info.rescinded && (e.info.modify_pending || matches!(e.info.state, ChannelState::Opening { .. })) {
                return Err(InvariantViolation::PendingAfterRescind(relid));
            }
            if e.info.modify_pending && !matches!(e.info.state, ChannelState::Open { .. }) {
                return Err(InvariantViolation::ModifyWhileNotOpen(relid));
            }
            if let Some(ring) = e.info.state.ring_gpadl() {
                if e.gpadl(ring, GpadlState::Created).is_none() {
                    return Err(InvariantViolation::RingGpadlMissing(relid));
                }
            }
            let owed = &e.owed;
            let open_owed_while_not_closed = owed.flags & OWED_OPEN_RESULT != 0 && e.info.state != ChannelState::Closed;
            let creating_without_handle =
                owed.gpadl_handles.iter().enumerate().any(|(k, &h)| h == 0 && owed.gpadl_creating & (1 << k) != 0);
            let unknown_flags = owed.flags & !(OWED_OPEN_RESULT | OWED_MODIFY_RESPONSE) != 0;
            if (!e.info.rescinded && !e.abandoned && !owed.is_empty())
                || open_owed_while_not_closed
                || creating_without_handle
                || unknown_flags
            {
                return Err(InvariantViolation::BadOwedAnswers(relid));
            }
            // Owed handles are unique, within the channel and against its records.
            for (k, h) in owed.gpadl_handles.iter().enumerate().filter(|(_, &h)| h != 0) {
                let dup = owed.gpadl_handles.iter().skip(k + 1).any(|o| o == h)
                    || e.gpadls.iter().flatten().any(|g| g.handle == *h);
                if dup {
                    return Err(InvariantViolation::BadGpadlHandle(*h));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[cfg(feature = "alloc")]
mod tests {
    use super::*;

    #[test]
    fn new_allocates_the_table_once() {
        let mut c = ClientConfig::new(0, 0, (0, 0));
        c.max_channels = 5000;
        let client = Client::new(c);
        assert_eq!(client.channels.len(), MAX_CHANNELS);
        c.max_channels = 0;
        assert_eq!(Client::new(c).channels.len(), 1);
        assert_eq!(client.state(), ConnectionState::Idle);
        assert_eq!(client.check_invariants(), Ok(()));
    }

    fn with_channel(rescinded: bool, owed: OwedAnswers) -> Client<[ChannelSlot; 2]> {
        let mut client = Client::with_storage(ClientConfig::new(0, 0, (0, 0)), [ChannelSlot::EMPTY; 2]);
        client.state = ConnectionState::Connected;
        client.version = Some(Version::WIN10_V5_3);
        let info = ChannelInfo {
            relid: 3,
            if_type: Guid::ZERO,
            if_instance: Guid::ZERO,
            sub_channel_index: 0,
            primary_relid: None,
            connection_id: 0,
            monitor_id: None,
            flags: OfferFlags::empty(),
            dedicated_interrupt: false,
            state: ChannelState::Closed,
            rescinded,
            modify_pending: false,
        };
        client.channels[0] =
            ChannelSlot(Some(ChannelEntry { info, gpadls: [None; MAX_GPADLS_PER_CHANNEL], owed, abandoned: false }));
        client
    }

    #[test]
    fn invariants_cover_owed_answers() {
        let mut owed = OwedAnswers::NONE;
        owed.flags = OWED_OPEN_RESULT | OWED_MODIFY_RESPONSE;
        owed.remember_gpadl(2, 0x55, true);
        owed.remember_gpadl(5, 0x56, false);
        assert_eq!(with_channel(true, owed).check_invariants(), Ok(()));
        // Owed answers on a live channel.
        assert_eq!(with_channel(false, owed).check_invariants(), Err(InvariantViolation::BadOwedAnswers(3)));
        // A creating bit with no handle; an unknown flag.
        let mut bad = owed;
        bad.gpadl_creating |= 1 << 0;
        assert_eq!(with_channel(true, bad).check_invariants(), Err(InvariantViolation::BadOwedAnswers(3)));
        let mut bad = owed;
        bad.flags |= 0x80;
        assert_eq!(with_channel(true, bad).check_invariants(), Err(InvariantViolation::BadOwedAnswers(3)));
        // An owed OpenResult while the channel is not closed.
        let mut c = with_channel(true, owed);
        c.channels[0].0.as_mut().unwrap().gpadls[0] = Some(GpadlRecord { handle: 9, state: GpadlState::Created });
        c.channels[0].0.as_mut().unwrap().info.state = ChannelState::Open { ring_gpadl: 9 };
        assert_eq!(c.check_invariants(), Err(InvariantViolation::BadOwedAnswers(3)));
        // An owed handle twice, or also held as a record.
        let mut bad = owed;
        bad.remember_gpadl(6, 0x55, false);
        assert_eq!(with_channel(true, bad).check_invariants(), Err(InvariantViolation::BadGpadlHandle(0x55)));
        let mut c = with_channel(true, owed);
        c.channels[0].0.as_mut().unwrap().gpadls[0] = Some(GpadlRecord { handle: 0x56, state: GpadlState::Created });
        assert_eq!(c.check_invariants(), Err(InvariantViolation::BadGpadlHandle(0x56)));
        // An owed handle held by another channel.
        let mut c = with_channel(true, owed);
        let mut other = c.channels[0].0.unwrap();
        other.info.relid = 4;
        other.info.rescinded = false;
        other.owed = OwedAnswers::NONE;
        other.gpadls[0] = Some(GpadlRecord { handle: 0x56, state: GpadlState::Created });
        c.channels[1] = ChannelSlot(Some(other));
        assert_eq!(c.check_invariants(), Err(InvariantViolation::BadGpadlHandle(0x56)));
        // Taking an answer clears its handle and bit.
        let mut o = owed;
        assert_eq!(o.gpadl(0x55, false), None);
        let k = o.gpadl(0x55, true).unwrap();
        o.take_gpadl(k);
        assert_eq!((o.gpadl(0x55, true), o.gpadl_creating), (None, 0));
        assert_eq!(o.gpadl(0, false), None, "0 is never an owed handle");
        assert!(o.take_flag(OWED_OPEN_RESULT));
        assert!(!o.take_flag(OWED_OPEN_RESULT));
    }
}
