// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The simulated guest OS: what the kernel glue does around
//! [`vmbus_core::client::Client`] and the channel endpoints.
//!
//! It contacts the host, requests offers, opens the channels of the
//! interfaces it is told to open (allocate ring pages, GPADL, open), moves
//! packets through [`ChannelSender`] and [`ChannelReceiver`] and checks what
//! comes back, handles rescinds (close locally, tear down, free, release the
//! relid), shuts a channel down when its ring is corrupt, closes everything
//! and unloads.
//!
//! Like Linux it waits for host answers without a protocol timeout, but a
//! simulated guest must not hang: when the simulation is idle, virtual time
//! advances ([`Guest::tick`]) and a wait older than
//! [`GuestConfig::timeout_ticks`] is abandoned and counted. Memory the host
//! may still map is then kept, never freed (a leak beats a host writing into
//! reused memory); an unload releases it.

use crate::hypercall::Hypercalls;
use crate::memory::{ArenaRef, GuestMemory};
use crate::sched::SplitMix64;
use crate::synic::Synic;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;
use vmbus_core::channel::{ChannelError, ChannelReceiver, ChannelSender};
use vmbus_core::client::{
    post_with_retry, ChannelState, Client, ClientConfig, ClientError, ClientEvent, ConnectionState, OpStatus,
    OpenParams, TeardownOutcome,
};
use vmbus_core::gpadl::GpaRangeRef;
use vmbus_core::guid::Guid;
use vmbus_core::hv::{HvMessage, HvStatus, SynicMessageError};
use vmbus_core::message::MessageType;
use vmbus_core::packet::{PacketType, FLAG_COMPLETION_REQUESTED};
use vmbus_core::platform::{Hypervisor, SharedMemory, SharedRegion};
use vmbus_core::reqid::VecRequestTable;
use vmbus_core::ring::{RingReader, RingWriter, WriteError};
use vmbus_core::version::Version;

/// What the simulated guest does.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// Interfaces whose channels the guest opens (others are only listed).
    pub open_interfaces: Vec<Guid>,
    /// Pages per ring, control page included (both rings get the same).
    pub ring_pages: usize,
    /// Packets to send on each open channel.
    pub packets_per_channel: u32,
    /// Largest payload sent.
    pub max_payload: usize,
    /// Packets handled per poll.
    pub poll_budget: usize,
    /// Idle ticks after which a wait is abandoned.
    pub timeout_ticks: u64,
    /// Newest version to propose (`None` = newest known).
    pub max_version: Option<Version>,
    /// Unload at the end.
    pub unload: bool,
    /// Channels to wait for before finishing (hot-added sub-channels).
    pub min_channels: usize,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            open_interfaces: Vec::new(),
            ring_pages: 4,
            packets_per_channel: 48,
            max_payload: 1500,
            poll_budget: 16,
            timeout_ticks: 50,
            max_version: None,
            unload: true,
            min_channels: 0,
        }
    }
}

/// Guest counters (the numbers fault outcomes are judged by).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// InitiateContact attempts (one per version proposed).
    pub contact_attempts: u32,
    /// SynIC slots refused before parsing (bad `payload_size`).
    pub bad_slots: u64,
    /// Host messages the client rejected.
    pub messages_rejected: u64,
    /// Channels opened.
    pub channels_opened: u32,
    /// Channels closed by the guest after their traffic.
    pub channels_closed: u32,
    /// Channels shut down because their ring was corrupt.
    pub channels_shut_down: u32,
    /// Channels rescinded before they were open (open sequence aborted).
    pub opens_aborted: u32,
    /// Open channels removed after a rescind.
    pub channels_removed: u32,
    /// Relids released.
    pub relids_released: u32,
    /// Opens or GPADLs the host refused.
    pub host_refusals: u32,
    /// Waits abandoned after the timeout.
    pub timeouts: u32,
    /// HvPostMessage retries (transient statuses).
    pub post_retries: u64,
    /// Posts that failed for good.
    pub post_failures: u64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Packets received (in-band and completions).
    pub packets_received: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Echoes that matched what was sent.
    pub echoes_verified: u64,
    /// Echoes whose payload differed.
    pub echo_mismatches: u64,
    /// Completions matched to an outstanding id.
    pub completions: u64,
    /// Packets refused by the guest (unknown type, id not outstanding).
    pub packets_rejected: u64,
    /// Packets the ring reader skipped (malformed extended header, too large).
    pub packets_skipped: u64,
    /// Times a send found the ring full.
    pub ring_full: u64,
    /// Unload completed.
    pub unloaded: bool,
}

/// Something the guest noticed about the host's behaviour (kept in a
/// bounded log, so a fault's effect can be shown next to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observation {
    /// The client rejected a host message.
    MessageRejected(ClientError),
    /// A SynIC slot was refused before parsing.
    SlotRejected(SynicMessageError),
    /// A channel's ring failed; the channel is being shut down.
    RingFailed {
        /// Channel.
        relid: u32,
        /// Why.
        error: ChannelError,
    },
    /// A packet was refused (unknown type, or an id not outstanding).
    PacketRejected {
        /// Channel.
        relid: u32,
        /// Packet type.
        packet_type: u16,
        /// Transaction id.
        transaction_id: u64,
    },
    /// The host rescinded a channel the guest was using.
    Rescinded {
        /// Channel.
        relid: u32,
        /// Where the channel was.
        phase: Phase,
    },
    /// A wait on a channel was abandoned.
    ChannelTimedOut {
        /// Channel.
        relid: u32,
        /// What it waited in.
        phase: Phase,
    },
    /// A connection-level wait was abandoned.
    ConnectionTimedOut(GuestPhase),
    /// The host answered a GPADL or an open with a failure status.
    HostRefused {
        /// Channel.
        relid: u32,
        /// The answer (GpadlCreated or OpenResult).
        answer: MessageType,
        /// The status.
        status: u32,
    },
    /// Posting needed retries (transient statuses).
    PostRetried {
        /// Retries in one guest step.
        retries: u64,
    },
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::MessageRejected(e) => write!(f, "client rejected: {e}"),
            Observation::SlotRejected(e) => write!(f, "SynIC slot refused: {e:?}"),
            Observation::RingFailed { relid, error } => write!(f, "relid {relid}: {error}"),
            Observation::PacketRejected { relid, packet_type, transaction_id } => {
                write!(f, "relid {relid}: packet type {packet_type} with transaction id {transaction_id:#x} refused")
            }
            Observation::Rescinded { relid, phase } => write!(f, "relid {relid} rescinded while {phase:?}"),
            Observation::ChannelTimedOut { relid, phase } => write!(f, "relid {relid}: gave up waiting in {phase:?}"),
            Observation::ConnectionTimedOut(p) => write!(f, "gave up waiting in {p:?}"),
            Observation::PostRetried { retries } => write!(f, "HvPostMessage retried {retries} time(s)"),
            Observation::HostRefused { relid, answer, status } => {
                write!(f, "relid {relid}: {} with status {status:#x}", answer.name())
            }
        }
    }
}

/// Observations kept.
const OBSERVATION_LOG: usize = 256;

/// What a channel is waiting for, or where it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Offered; the guest has not started opening it.
    Offered,
    /// GPADL posted, waiting for GpadlCreated.
    CreatingGpadl,
    /// OpenChannel posted, waiting for OpenResult.
    Opening,
    /// Open: traffic flows.
    Open,
    /// Closed by the guest, ring GPADL teardown posted.
    TearingDown,
    /// Closed and freed.
    Closed,
    /// Rescinded; cleanup (local close, teardown, free, release) pending.
    Rescinded,
    /// Relid released after a rescind.
    Released,
    /// Abandoned after a timeout (memory kept until unload).
    Abandoned,
    /// The host refused the GPADL or the open.
    Refused,
}

/// One transaction the guest waits on.
struct Outstanding {
    payload: Vec<u8>,
    completion: bool,
}

/// A channel as the guest tracks it.
struct GuestChannel {
    relid: u32,
    connection_id: u32,
    phase: Phase,
    region: Option<SharedRegion>,
    /// Frame of the region's first page.
    first_pfn: u64,
    gpadl: Option<u32>,
    sender: Option<ChannelSender>,
    receiver: Option<ChannelReceiver<Vec<u8>>>,
    /// Tick at which the current wait began.
    wait_since: u64,
    to_send: u32,
    outstanding: VecRequestTable<Outstanding>,
    /// Waiting for the host to free ring space (it will signal).
    blocked: bool,
    /// The channel was shut down for corruption (close in progress).
    shut_down: bool,
    /// Was rescinded after it had been open (as opposed to during the open sequence).
    rescinded_open: bool,
    /// The channel reached the open state at some point.
    was_open: bool,
}

/// An offer the guest saw (kept for the report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeenOffer {
    /// Relid.
    pub relid: u32,
    /// Device class.
    pub interface: Guid,
    /// Instance.
    pub instance: Guid,
    /// Sub-channel index.
    pub sub_channel_index: u16,
}

/// Where the guest's connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestPhase {
    /// Not started.
    Boot,
    /// Waiting for VersionResponse.
    Contacting,
    /// Waiting for offers.
    Enumerating,
    /// Opening channels and moving traffic.
    Running,
    /// Unload posted.
    Unloading,
    /// Finished (unloaded, or nothing left to do).
    Done,
    /// Contact failed or timed out.
    Failed,
}

/// The HvPostMessage path the guest uses: the project's retry policy over
/// the simulated hypercalls, counting retries instead of sleeping.
struct GuestHv<'a> {
    hv: &'a Hypercalls,
    retries: &'a Cell<u64>,
    contacts: &'a Cell<u32>,
}

impl Hypervisor for GuestHv<'_> {
    fn post_message(&self, connection_id: u32, message: &[u8]) -> HvStatus {
        if message.get(..4) == Some(&MessageType::INITIATE_CONTACT.0.to_le_bytes()[..]) {
            self.contacts.set(self.contacts.get() + 1);
        }
        post_with_retry(self.hv, connection_id, message, |_| self.retries.set(self.retries.get() + 1))
    }
    fn signal_event(&self, connection_id: u32) -> HvStatus {
        self.hv.signal_event(connection_id)
    }
}

/// The simulated guest. See the module docs.
pub struct Guest {
    /// Keeps guest memory alive while ring halves point into it.
    arena: ArenaRef,
    config: GuestConfig,
    client: Client<Vec<vmbus_core::client::ChannelSlot>>,
    phase: GuestPhase,
    wait_since: u64,
    now: u64,
    channels: BTreeMap<u32, GuestChannel>,
    offers: Vec<SeenOffer>,
    /// Channels whose event flag was seen and not yet polled.
    to_poll: Vec<u32>,
    stats: GuestStats,
    rng: SplitMix64,
    observations: Vec<Observation>,
}

impl fmt::Debug for Guest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guest").field("phase", &self.phase).field("stats", &self.stats).finish()
    }
}

/// Largest packet the guest accepts from the host.
pub const GUEST_PACKET_BUFFER: usize = 8192;

impl Guest {
    /// A guest that will run `config`, drawing its traffic from `seed`.
    pub fn new(config: GuestConfig, seed: u64, mem: &GuestMemory) -> Guest {
        let mut cc = ClientConfig::new(0, 0, (0, 0));
        cc.max_version = config.max_version;
        Guest {
            arena: mem.arena_ref(),
            client: Client::new(cc),
            config,
            phase: GuestPhase::Boot,
            wait_since: 0,
            now: 0,
            channels: BTreeMap::new(),
            offers: Vec::new(),
            to_poll: Vec::new(),
            stats: GuestStats::default(),
            rng: SplitMix64::new(seed ^ 0x6775_6573_7400_0000),
            observations: Vec::new(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> GuestStats {
        let mut s = self.stats;
        s.messages_rejected = self.client.counters().rejected_total();
        s
    }

    /// What the guest noticed, oldest first (bounded).
    pub fn observations(&self) -> &[Observation] {
        &self.observations
    }

    fn observe(&mut self, o: Observation) {
        observe(&mut self.observations, o);
    }

    /// The connection phase.
    pub fn phase(&self) -> GuestPhase {
        self.phase
    }

    /// The negotiated version.
    pub fn version(&self) -> Option<Version> {
        self.client.version()
    }

    /// Offers seen.
    pub fn offers(&self) -> &[SeenOffer] {
        &self.offers
    }

    /// The phase of channel `relid`.
    pub fn channel_phase(&self, relid: u32) -> Option<Phase> {
        self.channels.get(&relid).map(|c| c.phase)
    }

    /// Relids of the channels the guest is opening or has opened.
    pub fn channel_relids(&self) -> Vec<u32> {
        self.channels.keys().copied().collect()
    }

    /// Whether `relid` is open and healthy (not being shut down).
    pub fn channel_usable(&self, relid: u32) -> bool {
        self.channels.get(&relid).is_some_and(|c| c.phase == Phase::Open && !c.shut_down)
    }

    /// Packets still to send on `relid`.
    pub fn packets_left(&self, relid: u32) -> u32 {
        self.channels.get(&relid).map_or(0, |c| c.to_send)
    }

    /// Whether the guest has finished (done or failed).
    pub fn finished(&self) -> bool {
        matches!(self.phase, GuestPhase::Done | GuestPhase::Failed)
    }

    /// Whether the guest can do something now.
    pub fn ready(&self, synic: &Synic) -> bool {
        if self.finished() {
            return false;
        }
        synic.slot_full() || synic.events_pending() || !self.to_poll.is_empty() || self.has_work()
    }

    fn has_work(&self) -> bool {
        match self.phase {
            GuestPhase::Boot => true,
            GuestPhase::Running => {
                self.channels.values().any(|c| match c.phase {
                    Phase::Offered | Phase::Rescinded => true,
                    Phase::Open => {
                        c.shut_down || (c.to_send > 0 && !c.blocked) || (c.to_send == 0 && c.outstanding.is_empty())
                    }
                    _ => false,
                }) || self.all_settled()
            }
            _ => false,
        }
    }

    /// Every channel has reached an end state.
    fn all_settled(&self) -> bool {
        self.channels.len() >= self.config.min_channels
            && self
                .channels
                .values()
                .all(|c| matches!(c.phase, Phase::Closed | Phase::Released | Phase::Abandoned | Phase::Refused))
    }

    /// Whether the guest waits on the host (so idle time counts against a timeout).
    pub fn waiting(&self) -> bool {
        match self.phase {
            GuestPhase::Contacting | GuestPhase::Enumerating | GuestPhase::Unloading => true,
            GuestPhase::Running if self.channels.len() < self.config.min_channels => true,
            GuestPhase::Running => self.channels.values().any(|c| {
                matches!(c.phase, Phase::CreatingGpadl | Phase::Opening | Phase::TearingDown)
                    || (c.phase == Phase::Open && (!c.outstanding.is_empty() || c.blocked))
            }),
            _ => false,
        }
    }

    /// Virtual time passes while nothing else can happen: abandons waits
    /// older than the timeout.
    pub fn tick(&mut self) {
        self.now += 1;
        let limit = self.config.timeout_ticks;
        match self.phase {
            GuestPhase::Contacting | GuestPhase::Enumerating if self.now - self.wait_since > limit => {
                self.stats.timeouts += 1;
                observe(&mut self.observations, Observation::ConnectionTimedOut(self.phase));
                self.phase = GuestPhase::Failed;
            }
            GuestPhase::Unloading if self.now - self.wait_since > limit => {
                self.stats.timeouts += 1;
                observe(&mut self.observations, Observation::ConnectionTimedOut(self.phase));
                self.phase = GuestPhase::Done;
            }
            GuestPhase::Running => {
                if self.channels.len() < self.config.min_channels && self.now - self.wait_since > limit {
                    // The expected (hot-added) channels never came: stop waiting for them.
                    self.stats.timeouts += 1;
                    observe(&mut self.observations, Observation::ConnectionTimedOut(self.phase));
                    self.config.min_channels = 0;
                }
                for c in self.channels.values_mut() {
                    let waiting = matches!(c.phase, Phase::CreatingGpadl | Phase::Opening | Phase::TearingDown)
                        || (c.phase == Phase::Open && (!c.outstanding.is_empty() || c.blocked));
                    if waiting && self.now - c.wait_since > limit {
                        self.stats.timeouts += 1;
                        observe(
                            &mut self.observations,
                            Observation::ChannelTimedOut { relid: c.relid, phase: c.phase },
                        );
                        c.sender = None;
                        c.receiver = None;
                        c.phase = Phase::Abandoned;
                    }
                }
            }
            _ => {}
        }
    }

    /// One guest step: handles a SynIC message, polls a signalled channel or
    /// does the next piece of its own work, chosen at random among those
    /// possible. Returns whether anything happened.
    pub fn step(&mut self, mem: &GuestMemory, hv: &Hypercalls, synic: &mut Synic) -> bool {
        if !self.arena.is_of(mem) {
            // Ring halves point into the memory this guest was built with.
            return false;
        }
        if synic.events_pending() {
            for relid in synic.take_events() {
                if !self.to_poll.contains(&relid) {
                    self.to_poll.push(relid);
                }
            }
        }
        let choices =
            [u32::from(synic.slot_full()) * 2, u32::from(!self.to_poll.is_empty()) * 2, u32::from(self.has_work())];
        let retries = Cell::new(0);
        let contacts = Cell::new(0);
        let ghv = GuestHv { hv, retries: &retries, contacts: &contacts };
        let worked = match self.rng.pick_weighted(&choices) {
            Some(0) => {
                self.handle_slot(mem, &ghv, synic);
                true
            }
            Some(1) => {
                let i = self.rng.below(self.to_poll.len() as u64) as usize;
                let relid = self.to_poll.swap_remove(i);
                self.poll_channel(relid, &ghv);
                true
            }
            Some(2) => self.do_work(mem, &ghv),
            _ => false,
        };
        self.stats.post_retries += retries.get();
        if retries.get() > 0 {
            self.observe(Observation::PostRetried { retries: retries.get() });
        }
        self.stats.contact_attempts += contacts.get();
        worked
    }

    fn handle_slot(&mut self, mem: &GuestMemory, hv: &GuestHv<'_>, synic: &mut Synic) {
        let Some((raw, pending)) = synic.take_slot() else {
            return;
        };
        // The slot was copied out; parse the private copy only.
        match HvMessage::parse(&raw) {
            Ok((_, payload)) => {
                let mut events = Vec::new();
                if let Err(e) = self.client.handle_message(payload, hv, &mut |e| events.push(e)) {
                    self.observe(Observation::MessageRejected(e));
                }
                for e in events {
                    self.on_event(e, mem, hv);
                }
            }
            Err(e) => {
                self.stats.bad_slots += 1;
                self.observe(Observation::SlotRejected(e));
            }
        }
        if pending {
            synic.eom();
        }
    }

    fn on_event(&mut self, e: ClientEvent, mem: &GuestMemory, hv: &GuestHv<'_>) {
        match e {
            ClientEvent::Connected { .. } => {
                self.phase = GuestPhase::Enumerating;
                self.wait_since = self.now;
                if self.client.request_offers(hv).is_err() {
                    self.stats.post_failures += 1;
                }
            }
            ClientEvent::ContactFailed(_) => self.phase = GuestPhase::Failed,
            ClientEvent::Offer(o) => {
                self.offers.push(SeenOffer {
                    relid: o.relid,
                    interface: o.offer.if_type,
                    instance: o.offer.if_instance,
                    sub_channel_index: o.offer.sub_channel_index,
                });
                if self.config.open_interfaces.contains(&o.offer.if_type) {
                    self.channels.insert(
                        o.relid,
                        GuestChannel {
                            relid: o.relid,
                            connection_id: o.offer.connection_id,
                            phase: Phase::Offered,
                            region: None,
                            first_pfn: 0,
                            gpadl: None,
                            sender: None,
                            receiver: None,
                            wait_since: self.now,
                            to_send: self.config.packets_per_channel,
                            outstanding: VecRequestTable::with_capacity(256),
                            blocked: false,
                            shut_down: false,
                            rescinded_open: false,
                            was_open: false,
                        },
                    );
                }
            }
            ClientEvent::AllOffersDelivered => {
                if self.phase == GuestPhase::Enumerating {
                    self.phase = GuestPhase::Running;
                    self.wait_since = self.now;
                }
            }
            ClientEvent::GpadlCreated { relid, handle, status } => {
                let Some(c) = self.channels.get_mut(&relid) else { return };
                if c.phase != Phase::CreatingGpadl || c.gpadl != Some(handle) {
                    return;
                }
                match status {
                    OpStatus::Success => {
                        let params = OpenParams {
                            ring_gpadl: handle,
                            downstream_page_offset: self.config.ring_pages as u32,
                            target_vp: 0,
                            user_data: &[],
                        };
                        c.wait_since = self.now;
                        if self.client.open_channel(relid, &params, hv).is_ok() {
                            c.phase = Phase::Opening;
                        } else {
                            self.stats.post_failures += 1;
                            c.phase = Phase::Abandoned;
                        }
                    }
                    OpStatus::Failed(status) => {
                        let answer = MessageType::GPADL_CREATED;
                        observe(&mut self.observations, Observation::HostRefused { relid, answer, status });
                        // The host never mapped the pages: free them.
                        c.gpadl = None;
                        free_region(mem, c);
                        c.phase = Phase::Refused;
                        self.stats.host_refusals += 1;
                    }
                    // The rescind path cleans up.
                    OpStatus::Rescinded | OpStatus::Unloaded => c.gpadl = None,
                }
            }
            ClientEvent::OpenResult { relid, status } => {
                let Some(c) = self.channels.get_mut(&relid) else { return };
                if c.phase != Phase::Opening {
                    return;
                }
                match status {
                    OpStatus::Success => {
                        if attach_rings(c, mem, self.config.ring_pages) {
                            c.phase = Phase::Open;
                            c.was_open = true;
                            c.wait_since = self.now;
                            self.stats.channels_opened += 1;
                        } else {
                            c.phase = Phase::Abandoned;
                        }
                    }
                    OpStatus::Failed(status) => {
                        let answer = MessageType::OPEN_CHANNEL_RESULT;
                        observe(&mut self.observations, Observation::HostRefused { relid, answer, status });
                        self.stats.host_refusals += 1;
                        c.phase = Phase::TearingDown;
                        c.wait_since = self.now;
                        start_teardown(&mut self.client, c, mem, hv, &mut self.stats);
                        if c.phase == Phase::Closed {
                            c.phase = Phase::Refused;
                        }
                    }
                    OpStatus::Rescinded | OpStatus::Unloaded => {}
                }
            }
            ClientEvent::GpadlTornDown { relid, handle, .. } => {
                let Some(c) = self.channels.get_mut(&relid) else { return };
                if c.gpadl == Some(handle) && c.phase == Phase::TearingDown {
                    c.gpadl = None;
                    free_region(mem, c);
                    c.phase = Phase::Closed;
                }
            }
            ClientEvent::Rescinded { relid } => {
                if let Some(c) = self.channels.get_mut(&relid) {
                    c.rescinded_open = c.was_open;
                    observe(&mut self.observations, Observation::Rescinded { relid, phase: c.phase });
                    // Stop touching the rings at once.
                    c.sender = None;
                    c.receiver = None;
                    if !matches!(c.phase, Phase::Abandoned) {
                        c.phase = Phase::Rescinded;
                    }
                } else if self.client.channel(relid).is_some() {
                    // A channel the guest never used: release it straight away.
                    let _ = self.client.release_relid(relid, hv);
                }
            }
            ClientEvent::UnloadComplete => {
                self.stats.unloaded = true;
                self.phase = GuestPhase::Done;
                // The host has dropped every mapping: all ring memory is ours again.
                for c in self.channels.values_mut() {
                    c.sender = None;
                    c.receiver = None;
                    free_region(mem, c);
                }
            }
            ClientEvent::ModifyChannelResponse { .. } | ClientEvent::TlConnectResult(_) => {}
        }
    }

    /// Finishes a rescinded channel: local close, local GPADL teardown,
    /// free, RelidReleased.
    fn cleanup_rescinded(&mut self, relid: u32, mem: &GuestMemory, hv: &GuestHv<'_>) {
        let Some(c) = self.channels.get_mut(&relid) else { return };
        if let Some(info) = self.client.channel(relid) {
            if matches!(info.state, ChannelState::Open { .. }) {
                let _ = self.client.close_channel(relid, hv);
            }
            if matches!(info.state, ChannelState::Opening { .. }) {
                // The client completes a pending open on rescind; nothing to do yet.
                return;
            }
        }
        let handles: Vec<u32> = self.client.gpadls(relid).map(|(h, _)| h).collect();
        for h in handles {
            if let Ok(TeardownOutcome::CompletedLocally) = self.client.teardown_gpadl(relid, h, hv) {
                if c.gpadl == Some(h) {
                    c.gpadl = None;
                }
            }
        }
        if self.client.gpadls(relid).next().is_some() {
            // A GPADL still being created: the host may map it; keep waiting.
            return;
        }
        free_region(mem, c);
        if c.rescinded_open {
            self.stats.channels_removed += 1;
        } else {
            self.stats.opens_aborted += 1;
        }
        match self.client.release_relid(relid, hv) {
            Ok(()) => {
                self.stats.relids_released += 1;
                c.phase = Phase::Released;
            }
            Err(_) => {
                self.stats.post_failures += 1;
                c.phase = Phase::Abandoned;
            }
        }
    }

    fn do_work(&mut self, mem: &GuestMemory, hv: &GuestHv<'_>) -> bool {
        match self.phase {
            GuestPhase::Boot => {
                let r = self.client.start(hv);
                self.wait_since = self.now;
                self.phase = if r.is_ok() { GuestPhase::Contacting } else { GuestPhase::Failed };
                true
            }
            GuestPhase::Running => {
                // Pick one channel with work, at random.
                let ready: Vec<u32> = self
                    .channels
                    .values()
                    .filter(|c| match c.phase {
                        Phase::Offered | Phase::Rescinded => true,
                        Phase::Open => {
                            c.shut_down || (c.to_send > 0 && !c.blocked) || (c.to_send == 0 && c.outstanding.is_empty())
                        }
                        _ => false,
                    })
                    .map(|c| c.relid)
                    .collect();
                if ready.is_empty() {
                    if self.all_settled() {
                        self.finish(hv);
                        return true;
                    }
                    return false;
                }
                let relid = ready[self.rng.below(ready.len() as u64) as usize];
                let phase = self.channels.get(&relid).map(|c| c.phase);
                match phase {
                    Some(Phase::Offered) => self.begin_open(relid, mem, hv),
                    Some(Phase::Rescinded) => self.cleanup_rescinded(relid, mem, hv),
                    Some(Phase::Open) => self.channel_work(relid, mem, hv),
                    _ => {}
                }
                true
            }
            _ => false,
        }
    }

    fn finish(&mut self, hv: &GuestHv<'_>) {
        let can_unload = self.client.version().is_some_and(|v| v.supports_unload());
        if self.config.unload && can_unload && self.client.state() == ConnectionState::Connected {
            if self.client.unload(hv).is_ok() {
                self.phase = GuestPhase::Unloading;
                self.wait_since = self.now;
                return;
            }
            self.stats.post_failures += 1;
        }
        self.phase = GuestPhase::Done;
    }

    fn begin_open(&mut self, relid: u32, mem: &GuestMemory, hv: &GuestHv<'_>) {
        let Some(c) = self.channels.get_mut(&relid) else { return };
        let pages = self.config.ring_pages * 2;
        let Ok(region) = mem.alloc_shared(pages) else {
            c.phase = Phase::Abandoned;
            return;
        };
        let pfns: Vec<u64> = (0..pages).filter_map(|i| mem.frame(&region, i)).collect();
        c.first_pfn = pfns.first().copied().unwrap_or(0);
        // Both ring control pages start from a clean state before the host sees them.
        for half in 0..2u64 {
            if let Ok(ring) =
                mem.ring_memory(c.first_pfn + half * self.config.ring_pages as u64, self.config.ring_pages)
            {
                ring.initialize();
            }
        }
        c.region = Some(region);
        c.wait_since = self.now;
        match self.client.create_gpadl(relid, GpaRangeRef::whole_pages(&pfns), hv) {
            Ok(handle) => {
                c.gpadl = Some(handle);
                c.phase = Phase::CreatingGpadl;
            }
            Err(_) => {
                // Nothing reached the host (or a post failed part-way): the
                // host cannot have mapped an incomplete GPADL, so free.
                self.stats.post_failures += 1;
                free_region(mem, c);
                c.phase = Phase::Abandoned;
            }
        }
    }

    /// Sends a burst, or closes a finished or broken channel.
    fn channel_work(&mut self, relid: u32, mem: &GuestMemory, hv: &GuestHv<'_>) {
        let Some(c) = self.channels.get_mut(&relid) else { return };
        if c.shut_down || (c.to_send == 0 && c.outstanding.is_empty()) {
            if c.shut_down {
                self.stats.channels_shut_down += 1;
            } else {
                self.stats.channels_closed += 1;
            }
            c.sender = None;
            c.receiver = None;
            c.phase = Phase::TearingDown;
            c.wait_since = self.now;
            if self.client.close_channel(relid, hv).is_err() {
                self.stats.post_failures += 1;
            }
            start_teardown(&mut self.client, c, mem, hv, &mut self.stats);
            return;
        }
        let Some(sender) = c.sender.as_mut() else { return };
        let burst = 1 + self.rng.below(8) as u32;
        let mut sent = 0;
        while sent < burst && c.to_send > 0 {
            let len = 1 + self.rng.below(self.config.max_payload as u64) as usize;
            let mut payload = vec![0u8; len];
            self.rng.fill(&mut payload);
            let completion = self.rng.chance(33);
            let flags = if completion { FLAG_COMPLETION_REQUESTED } else { 0 };
            let Ok(tid) = c.outstanding.insert(Outstanding { payload, completion }) else { break };
            let payload = match c.outstanding.get(tid) {
                Some(o) => &o.payload,
                None => break,
            };
            match sender.send_inband(PacketType::DATA_INBAND, flags, tid, payload) {
                Ok(()) => {
                    self.stats.packets_sent += 1;
                    self.stats.bytes_sent += len as u64;
                    c.to_send -= 1;
                    sent += 1;
                }
                Err(ChannelError::Write(WriteError::Full { needed, .. })) => {
                    c.outstanding.take(tid);
                    self.stats.ring_full += 1;
                    // Ask the host to signal once it has drained enough.
                    match sender.writer_mut().request_space(needed) {
                        Ok(true) => {}
                        Ok(false) => c.blocked = true,
                        Err(c2) => {
                            c.shut_down = true;
                            observe(
                                &mut self.observations,
                                Observation::RingFailed { relid, error: ChannelError::Corrupt(c2) },
                            );
                        }
                    }
                    break;
                }
                Err(error) => {
                    c.outstanding.take(tid);
                    c.shut_down = true;
                    observe(&mut self.observations, Observation::RingFailed { relid, error });
                    break;
                }
            }
        }
        if let Err(error) = sender.flush(hv) {
            c.shut_down = true;
            observe(&mut self.observations, Observation::RingFailed { relid, error });
        }
        if sent > 0 {
            c.wait_since = self.now;
        }
    }

    fn poll_channel(&mut self, relid: u32, hv: &GuestHv<'_>) {
        let Some(c) = self.channels.get_mut(&relid) else { return };
        if c.phase != Phase::Open {
            return;
        }
        // A signal also means "space freed" for a blocked sender.
        if c.blocked {
            c.blocked = false;
            if let Some(s) = c.sender.as_mut() {
                s.writer_mut().clear_space_request();
            }
        }
        let Some(receiver) = c.receiver.as_mut() else { return };
        let mut got: Vec<(u16, u16, u64, Vec<u8>)> = Vec::new();
        let skipped_before = receiver.ring_counters().skipped;
        let result = receiver.poll(hv, self.config.poll_budget, |p| {
            got.push((p.packet_type.0, p.flags, p.trans_id, p.payload.to_vec()));
        });
        self.stats.packets_skipped += receiver.ring_counters().skipped - skipped_before;
        match result {
            Ok(outcome) => {
                if outcome.more && !self.to_poll.contains(&relid) {
                    self.to_poll.push(relid);
                }
            }
            Err(error) => {
                c.shut_down = true;
                observe(&mut self.observations, Observation::RingFailed { relid, error });
            }
        }
        for (ptype, _flags, tid, payload) in got {
            self.stats.packets_received += 1;
            self.stats.bytes_received += payload.len() as u64;
            c.wait_since = self.now;
            match PacketType(ptype) {
                PacketType::DATA_INBAND => {
                    let wants_completion = c.outstanding.get(tid).map(|o| o.completion);
                    // In-band payloads come back padded to 8 bytes (the
                    // descriptor carries no exact length): the echo must be
                    // the sent bytes followed by fewer than 8 bytes of padding.
                    let matches =
                        |o: &Outstanding| payload.starts_with(&o.payload) && payload.len() - o.payload.len() < 8;
                    let ok = match wants_completion {
                        Some(true) => c.outstanding.get(tid).is_some_and(matches),
                        Some(false) => c.outstanding.take_if(tid, matches).is_some(),
                        None => false,
                    };
                    if ok {
                        self.stats.echoes_verified += 1;
                    } else if wants_completion.is_some() {
                        self.stats.echo_mismatches += 1;
                    } else {
                        self.stats.packets_rejected += 1;
                        let o = Observation::PacketRejected { relid, packet_type: ptype, transaction_id: tid };
                        observe(&mut self.observations, o);
                    }
                }
                // Only for an id that is outstanding and asked for one.
                PacketType::COMPLETION if c.outstanding.take_if(tid, |o| o.completion).is_some() => {
                    self.stats.completions += 1;
                }
                _ => {
                    self.stats.packets_rejected += 1;
                    let o = Observation::PacketRejected { relid, packet_type: ptype, transaction_id: tid };
                    observe(&mut self.observations, o);
                }
            }
        }
    }
}

/// Builds the guest's ring halves after a successful open: the writer on
/// the outbound ring (first half), the reader on the inbound ring.
fn attach_rings(c: &mut GuestChannel, mem: &GuestMemory, ring_pages: usize) -> bool {
    if c.region.is_none() {
        return false;
    }
    let (Ok(out), Ok(inb)) =
        (mem.ring_memory(c.first_pfn, ring_pages), mem.ring_memory(c.first_pfn + ring_pages as u64, ring_pages))
    else {
        return false;
    };
    c.sender = Some(ChannelSender::new(RingWriter::new(out), c.connection_id));
    c.receiver = Some(ChannelReceiver::new(RingReader::new(inb), vec![0u8; GUEST_PACKET_BUFFER], c.connection_id));
    true
}

/// Posts the ring GPADL's teardown; frees at once if nothing is pending.
fn start_teardown(
    client: &mut Client<Vec<vmbus_core::client::ChannelSlot>>,
    c: &mut GuestChannel,
    mem: &GuestMemory,
    hv: &GuestHv<'_>,
    stats: &mut GuestStats,
) {
    let Some(handle) = c.gpadl else {
        free_region(mem, c);
        c.phase = Phase::Closed;
        return;
    };
    match client.teardown_gpadl(c.relid, handle, hv) {
        Ok(TeardownOutcome::Pending) => {}
        Ok(TeardownOutcome::CompletedLocally) => {
            c.gpadl = None;
            free_region(mem, c);
            c.phase = Phase::Closed;
        }
        Err(_) => {
            stats.post_failures += 1;
            c.phase = Phase::Abandoned;
        }
    }
}

fn free_region(mem: &GuestMemory, c: &mut GuestChannel) {
    c.sender = None;
    c.receiver = None;
    if let Some(region) = c.region.take() {
        // The ring halves over it were dropped just above, and every caller
        // has established that the host no longer maps it (GPADL never
        // created, torn down, rescinded and released locally, or unloaded).
        mem.release(region);
    }
}

fn observe(log: &mut Vec<Observation>, o: Observation) {
    if log.len() < OBSERVATION_LOG {
        log.push(o);
    }
}
