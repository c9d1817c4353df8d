// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The simulated guest OS: what the kernel glue does around
//! [`vmbus_core::client::Client`] and the channel endpoints.
//!
//! It contacts the host, requests offers, opens the channels of the
//! interfaces it is told to open, moves packets through the channel
//! endpoints and checks what comes back, handles rescinds, shuts a channel
//! down when its ring is corrupt, closes everything and unloads. The open and
//! close sequences themselves (ring pages, GPADL, open, teardown, rescind
//! cleanup, when memory may be freed) are vmbus-core's
//! [`ChannelLifecycle`], the same code a kernel glue runs; this module adds
//! the traffic, the observations and the timeouts.
//!
//! Like Linux it waits for host answers without a protocol timeout, but a
//! simulated guest must not hang: when the simulation is idle, virtual time
//! advances ([`Guest::tick`]) and a wait older than
//! [`GuestConfig::timeout_ticks`] is abandoned ([`ChannelLifecycle::abandon`])
//! and counted. Memory the host may still map is then kept, never freed (a
//! leak beats a host writing into reused memory); an unload releases it.

use crate::hypercall::Hypercalls;
use crate::memory::{ArenaRef, GuestMemory};
use crate::sched::SplitMix64;
use crate::synic::Synic;
use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::Cell;
use core::fmt;
use vmbus_core::channel::ChannelError;
use vmbus_core::client::{post_with_retry, Client, ClientConfig, ClientError, ClientEvent, ConnectionState};
use vmbus_core::guid::Guid;
use vmbus_core::hv::{HvMessage, HvStatus, SynicMessageError};
use vmbus_core::lifecycle::{ChannelLifecycle, LifecycleState, OpenRequest, Progress};
use vmbus_core::message::MessageType;
use vmbus_core::packet::{PacketType, FLAG_COMPLETION_REQUESTED};
use vmbus_core::platform::Hypervisor;
use vmbus_core::reqid::VecRequestTable;
use vmbus_core::ring::WriteError;
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
    /// Posts that failed for good (the client's count).
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

/// What a channel is waiting for, or where it ended (the lifecycle's
/// [`LifecycleState`], in the simulator's words).
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
    /// Abandoned after a timeout or a local failure (memory kept until unload).
    Abandoned,
    /// The host refused the GPADL or the open.
    Refused,
}

impl From<LifecycleState> for Phase {
    fn from(s: LifecycleState) -> Phase {
        match s {
            LifecycleState::Idle => Phase::Offered,
            LifecycleState::CreatingGpadl => Phase::CreatingGpadl,
            LifecycleState::Opening => Phase::Opening,
            LifecycleState::Open => Phase::Open,
            LifecycleState::TearingDown => Phase::TearingDown,
            // After an unload every channel is gone and its memory freed.
            LifecycleState::Closed | LifecycleState::Unloaded => Phase::Closed,
            LifecycleState::Refused => Phase::Refused,
            LifecycleState::Rescinded => Phase::Rescinded,
            LifecycleState::Released => Phase::Released,
            LifecycleState::Abandoned | LifecycleState::Failed => Phase::Abandoned,
        }
    }
}

/// One transaction the guest waits on.
struct Outstanding {
    payload: Vec<u8>,
    completion: bool,
}

/// A channel as the guest tracks it.
struct GuestChannel {
    relid: u32,
    /// Open/close sequence, ring memory and endpoints.
    life: ChannelLifecycle<GuestMemory, Vec<u8>>,
    /// Tick at which the current wait began.
    wait_since: u64,
    to_send: u32,
    outstanding: VecRequestTable<Outstanding>,
    /// Waiting for the host to free ring space (it will signal).
    blocked: bool,
    /// The channel was shut down for corruption (close in progress).
    shut_down: bool,
}

impl GuestChannel {
    fn phase(&self) -> Phase {
        self.life.state().into()
    }
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
        // Every post goes through the client, which counts those that failed for good.
        s.post_failures = self.client.counters().post_failures;
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
        self.channels.get(&relid).map(GuestChannel::phase)
    }

    /// Relids of the channels the guest is opening or has opened.
    pub fn channel_relids(&self) -> Vec<u32> {
        self.channels.keys().copied().collect()
    }

    /// Whether `relid` is open and healthy (not being shut down).
    pub fn channel_usable(&self, relid: u32) -> bool {
        self.channels.get(&relid).is_some_and(|c| c.phase() == Phase::Open && !c.shut_down)
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
                self.channels.values().any(|c| match c.phase() {
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
                .all(|c| matches!(c.phase(), Phase::Closed | Phase::Released | Phase::Abandoned | Phase::Refused))
    }

    /// Whether the guest waits on the host (so idle time counts against a timeout).
    pub fn waiting(&self) -> bool {
        match self.phase {
            GuestPhase::Contacting | GuestPhase::Enumerating | GuestPhase::Unloading => true,
            GuestPhase::Running if self.channels.len() < self.config.min_channels => true,
            GuestPhase::Running => self.channels.values().any(|c| {
                matches!(c.phase(), Phase::CreatingGpadl | Phase::Opening | Phase::TearingDown)
                    || (c.phase() == Phase::Open && (!c.outstanding.is_empty() || c.blocked))
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
                    let waiting =
                        c.life.is_waiting() || (c.phase() == Phase::Open && (!c.outstanding.is_empty() || c.blocked));
                    if waiting && self.now - c.wait_since > limit {
                        self.stats.timeouts += 1;
                        observe(
                            &mut self.observations,
                            Observation::ChannelTimedOut { relid: c.relid, phase: c.phase() },
                        );
                        // Drops the endpoints; memory the host may map is kept until unload.
                        c.life.abandon(&mut self.client);
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
                // A failure is counted by the client (see `stats`).
                let _ = self.client.request_offers(hv);
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
                            life: ChannelLifecycle::new(o.relid),
                            wait_since: self.now,
                            to_send: self.config.packets_per_channel,
                            outstanding: VecRequestTable::with_capacity(256),
                            blocked: false,
                            shut_down: false,
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
            ClientEvent::GpadlCreated { relid, .. }
            | ClientEvent::OpenResult { relid, .. }
            | ClientEvent::GpadlTornDown { relid, .. } => {
                let Some(c) = self.channels.get_mut(&relid) else { return };
                let progress = c.life.on_event(&e, &mut self.client, mem, hv);
                match progress {
                    Progress::Waiting => c.wait_since = self.now,
                    Progress::Opened => {
                        c.wait_since = self.now;
                        self.stats.channels_opened += 1;
                    }
                    Progress::Refused { answer, status } => {
                        c.wait_since = self.now;
                        observe(&mut self.observations, Observation::HostRefused { relid, answer, status });
                        self.stats.host_refusals += 1;
                    }
                    _ => {}
                }
            }
            ClientEvent::Rescinded { relid } => {
                if let Some(c) = self.channels.get_mut(&relid) {
                    observe(&mut self.observations, Observation::Rescinded { relid, phase: c.phase() });
                    // Stops touching the rings at once; cleanup follows in a later step.
                    c.life.on_event(&e, &mut self.client, mem, hv);
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
                    c.life.on_event(&e, &mut self.client, mem, hv);
                }
            }
            ClientEvent::ModifyChannelResponse { .. } | ClientEvent::TlConnectResult(_) => {}
        }
    }

    /// Finishes a rescinded channel: local close, local GPADL teardown,
    /// free, RelidReleased (the lifecycle's cleanup), and counts it.
    fn cleanup_rescinded(&mut self, relid: u32, mem: &GuestMemory, hv: &GuestHv<'_>) {
        let Some(c) = self.channels.get_mut(&relid) else { return };
        let Ok(progress) = c.life.cleanup_rescinded(&mut self.client, mem, hv) else { return };
        if c.life.holds_memory() {
            // Failed before the pages could be freed: kept until unload.
            return;
        }
        if c.life.was_open() {
            self.stats.channels_removed += 1;
        } else {
            self.stats.opens_aborted += 1;
        }
        if progress == Progress::Released {
            self.stats.relids_released += 1;
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
                    .filter(|c| match c.phase() {
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
                let phase = self.channels.get(&relid).map(GuestChannel::phase);
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
        // A failed post is counted by the client (see `stats`).
        if self.config.unload
            && can_unload
            && self.client.state() == ConnectionState::Connected
            && self.client.unload(hv).is_ok()
        {
            self.phase = GuestPhase::Unloading;
            self.wait_since = self.now;
            return;
        }
        self.phase = GuestPhase::Done;
    }

    fn begin_open(&mut self, relid: u32, mem: &GuestMemory, hv: &GuestHv<'_>) {
        let Some(c) = self.channels.get_mut(&relid) else { return };
        let request = OpenRequest {
            out_pages: self.config.ring_pages,
            in_pages: self.config.ring_pages,
            target_vp: 0,
            user_data: &[],
        };
        c.wait_since = self.now;
        let buffer = vec![0u8; GUEST_PACKET_BUFFER];
        if c.life.open(&mut self.client, &request, buffer, mem, hv).is_err() {
            // An unusable configuration: give the channel up (nothing allocated).
            c.life.abandon(&mut self.client);
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
            c.wait_since = self.now;
            // Drops the endpoints; frees once the host confirms the teardown.
            let _ = c.life.close(&mut self.client, mem, hv);
            return;
        }
        let Some((sender, _)) = c.life.endpoints_mut() else { return };
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
        let Some((sender, receiver)) = c.life.endpoints_mut() else { return };
        // A signal also means "space freed" for a blocked sender.
        if c.blocked {
            c.blocked = false;
            sender.writer_mut().clear_space_request();
        }
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

fn observe(log: &mut Vec<Observation>, o: Observation) {
    if log.len() < OBSERVATION_LOG {
        log.push(o);
    }
}
