// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! One whole simulated machine: guest memory, SynIC, hypercalls, the host
//! bus with its devices, the guest, the seeded scheduler and the fault
//! injector, run to completion.

use crate::bus::Bus;
use crate::devices::echo::{EchoDevice, ECHO_INTERFACE};
use crate::fault::{FaultKind, FaultRecord, MessageFault, Outcome, PacketFault, Refusal, RescindPoint};
use crate::guest::{Guest, GuestConfig, GuestPhase, GuestStats, Phase};
use crate::hypercall::Hypercalls;
use crate::memory::GuestMemory;
use crate::report::{OfferSummary, Report};
use crate::scenario::Scenario;
use crate::sched::{Actor, Scheduler, SplitMix64};
use crate::synic::Synic;
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use vmbus_core::guid::{interface, Guid};
use vmbus_core::host::{ReplyKinds, ServerConfig};
use vmbus_core::hv::{HvMessage, HvMessageHeader, MESSAGE_PAYLOAD_SIZE, VMBUS_MESSAGE_TYPE};
use vmbus_core::message::{
    ChannelMessage, GpadlCreated, MessageHeader, MessageType, OfferChannel, OpenResult, VersionResponse,
};
use vmbus_core::packet::{PacketDescriptor, PacketType};
use vmbus_core::version::Version;
use zerocopy::IntoBytes;

/// How a simulated machine is built and driven.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Versions the host accepts (empty: all it knows).
    pub host_versions: Vec<Version>,
    /// Echo devices offered.
    pub echo_devices: u32,
    /// Sub-channels the host offers for the first echo device once it is open.
    pub subchannels: u16,
    /// Also offer a few devices the guest does not open (shutdown, heartbeat).
    pub extra_offers: bool,
    /// Guest behaviour.
    pub guest: GuestConfig,
    /// The fault to inject, if any.
    pub fault: Option<FaultKind>,
    /// A chaos plan: these faults, one after another during the traffic
    /// phase, each once the guest has reacted to the previous one (replaces `fault`).
    pub chaos: Vec<FaultKind>,
    /// Scheduler step budget.
    pub step_budget: u64,
    /// Guest memory size in pages.
    pub memory_pages: usize,
}

impl SimConfig {
    /// The default machine for `seed`: two echo devices plus two offers the
    /// guest ignores, 48 packets per channel, no fault.
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            host_versions: Vec::new(),
            echo_devices: 2,
            subchannels: 0,
            extra_offers: true,
            guest: GuestConfig { open_interfaces: vec![ECHO_INTERFACE], ..GuestConfig::default() },
            fault: None,
            chaos: Vec::new(),
            step_budget: 200_000,
            memory_pages: 256,
        }
    }
}

/// Fault-injection progress.
#[derive(Clone, Copy, Debug, Default)]
struct Injector {
    /// Packets the guest must have received before a traffic-phase fault fires.
    threshold: u64,
    /// A preparatory switch was set (drop reply, hold opens).
    prepared: bool,
    injected: bool,
    target: Option<u32>,
    before: Option<GuestStats>,
    /// Length of the guest's observation log at the injection.
    observed_from: usize,
    step: u64,
}

/// A simulated machine. Fields drop in order: the guest and bus (holding
/// ring halves) go before the memory they keep alive anyway.
pub struct Sim {
    guest: Guest,
    bus: Bus,
    synic: Synic,
    hv: Hypercalls,
    mem: GuestMemory,
    sched: Scheduler,
    rng: SplitMix64,
    config: SimConfig,
    injector: Injector,
    echo_relids: Vec<u32>,
    subchannels_offered: bool,
    idle_ticks: u64,
    /// Chaos faults fired so far: kind, step, start of their observation window.
    chaos_fired: Vec<(FaultKind, u64, usize)>,
}

impl core::fmt::Debug for Sim {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sim").field("guest", &self.guest).field("bus", &self.bus).finish()
    }
}

/// Idle ticks after which a run is declared stuck.
const IDLE_LIMIT: u64 = 10_000;

/// Instance GUID of echo device `n` (simulator-only).
pub fn echo_instance(n: u32) -> Guid {
    Guid::from_fields(0x5ec1_0000 + n, 0xec40, 0x4d5e, [0x8e, 0x1f, 0x65, 0x63, 0x68, 0x6f, 0, n as u8])
}

impl Sim {
    /// Builds the machine; `None` if the configuration is unusable.
    pub fn new(config: SimConfig) -> Option<Sim> {
        let mem = GuestMemory::new(config.memory_pages, GuestMemory::DEFAULT_BASE_PFN)?;
        let hv = Hypercalls::new(64);
        let synic = Synic::new(256);
        let mut server_config = ServerConfig::default();
        if !config.host_versions.is_empty() {
            server_config.versions = config.host_versions.clone();
        }
        let mut bus = Bus::new(server_config, &hv, &mem)?;
        let mut echo_relids = Vec::new();
        for n in 0..config.echo_devices {
            echo_relids.push(bus.add_device(Box::new(EchoDevice::new()), echo_instance(n), &hv)?);
        }
        if config.extra_offers {
            bus.add_offer_only(interface::SHUTDOWN, Guid::from_fields(0x5d00_0001, 0, 0, [0; 8]), &hv)?;
            bus.add_offer_only(interface::HEARTBEAT, Guid::from_fields(0x5d00_0002, 0, 0, [0; 8]), &hv)?;
        }
        let mut rng = SplitMix64::new(config.seed ^ 0xFA17_0000_0000_0000);
        let injector = Injector { threshold: rng.below(24), ..Injector::default() };
        let guest = Guest::new(config.guest.clone(), config.seed, &mem);
        Some(Sim {
            guest,
            bus,
            synic,
            hv,
            mem,
            sched: Scheduler::new(config.seed, config.step_budget),
            rng,
            config,
            injector,
            echo_relids,
            subchannels_offered: false,
            idle_ticks: 0,
            chaos_fired: Vec::new(),
        })
    }

    /// The guest.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// The host.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// Runs to completion (or the step budget) and reports.
    pub fn run(mut self) -> Report {
        self.prepare_fault();
        let mut stuck = false;
        loop {
            self.maybe_offer_subchannels();
            self.maybe_inject();
            let host_ready = self.bus.ready(&self.hv);
            let guest_ready = self.guest.ready(&self.synic);
            match self.sched.next(host_ready, guest_ready) {
                Some(Actor::Host) => {
                    self.bus.step(&self.mem, &self.hv, &mut self.synic);
                }
                Some(Actor::Guest) => {
                    self.guest.step(&self.mem, &self.hv, &mut self.synic);
                }
                None => {
                    if self.sched.exhausted() || (self.guest.finished() && !host_ready) {
                        break;
                    }
                    // Nothing can move: virtual time passes for the guest's waits.
                    self.guest.tick();
                    self.idle_ticks += 1;
                    if self.idle_ticks > IDLE_LIMIT {
                        stuck = true;
                        break;
                    }
                }
            }
        }
        self.report(stuck)
    }

    fn maybe_offer_subchannels(&mut self) {
        if self.config.subchannels == 0 || self.subchannels_offered {
            return;
        }
        let Some(&primary) = self.echo_relids.first() else { return };
        if self.guest.channel_phase(primary) == Some(Phase::Open) {
            self.subchannels_offered = true;
            let subs = self.bus.offer_subchannels(primary, self.config.subchannels, &self.hv);
            self.echo_relids.extend(subs);
        }
    }

    /// Switches that must be set before the run starts.
    fn prepare_fault(&mut self) {
        let Some(kind) = self.config.fault else { return };
        match kind {
            FaultKind::DroppedReply(t) if t == MessageType::VERSION_RESPONSE || t == MessageType::UNLOAD_RESPONSE => {
                self.bus.server_mut().faults_mut().drop_once = ReplyKinds::of(t);
                self.injector.prepared = true;
            }
            FaultKind::Rescind(RescindPoint::DuringOpen) => {
                self.bus.set_hold_opens(true);
                self.injector.prepared = true;
            }
            FaultKind::HostRefuses(Refusal::Open) => {
                self.bus.refuse_next_open();
                self.record_injection();
            }
            _ => {}
        }
    }

    /// Echo channels the guest has open with at least `min_left` packets still to send.
    fn open_echo_channels(&self, min_left: u32) -> Vec<u32> {
        self.echo_relids
            .iter()
            .copied()
            .filter(|&r| {
                self.guest.channel_usable(r) && self.bus.is_serviced(r) && self.guest.packets_left(r) >= min_left
            })
            .collect()
    }

    /// Picks the fault's target among `candidates` (at random, once).
    fn choose_target(&mut self, candidates: &[u32]) -> Option<u32> {
        if self.injector.target.is_none() && !candidates.is_empty() {
            let i = self.rng.below(candidates.len() as u64) as usize;
            self.injector.target = Some(candidates[i]);
        }
        self.injector.target
    }

    /// Whether the fault may fire now; sets the target for channel faults.
    /// `threshold` (seeded) spreads injections over the traffic phase.
    fn trigger_holds(&mut self, kind: FaultKind) -> bool {
        let running = self.guest.phase() == GuestPhase::Running;
        let received = self.guest.stats().packets_received;
        let threshold = self.injector.threshold;
        match kind {
            FaultKind::MalformedMessage(_) | FaultKind::HypercallBusy => {
                running && received >= threshold && !self.open_echo_channels(0).is_empty()
            }
            FaultKind::MalformedPacket(_)
            | FaultKind::HostStopsAnswering
            | FaultKind::Rescind(RescindPoint::MidTraffic) => {
                if !running || received < 2 + threshold {
                    return false;
                }
                // A channel with sends left: the guest keeps reading it, so
                // it meets the fault instead of closing the channel first.
                let open = self.open_echo_channels(2);
                !open.is_empty() && self.choose_target(&open).is_some()
            }
            FaultKind::CorruptRingIndex(_) => {
                // The outbound fault is only seen by a guest that still sends.
                if !running || received < 1 + threshold / 4 {
                    return false;
                }
                let open = self.open_echo_channels(8);
                !open.is_empty() && self.choose_target(&open).is_some()
            }
            FaultKind::Rescind(RescindPoint::AfterOffer) => {
                if !self.bus.server().offers_requested() {
                    return false;
                }
                // The guest tracks nothing yet: pick among the offered echo channels.
                let all = self.echo_relids.clone();
                self.choose_target(&all).is_some()
            }
            FaultKind::DroppedReply(_) => running,
            _ => false,
        }
    }

    /// Arms and fires the configured fault at the right moment.
    fn maybe_inject(&mut self) {
        if !self.config.chaos.is_empty() {
            return self.maybe_inject_chaos();
        }
        // A one-GPADL refusal ends once the host has taken that header.
        if self.config.fault == Some(FaultKind::HostRefuses(Refusal::Gpadl))
            && self.injector.prepared
            && self.next_gpadl_header_relid() != self.injector.target
        {
            self.bus.server_mut().faults_mut().fail_gpadl = None;
            self.injector.prepared = false;
        }
        let Some(kind) = self.config.fault else { return };
        if self.injector.injected {
            return;
        }
        // Faults tied to a precise protocol moment fire without delay.
        match kind {
            FaultKind::Rescind(RescindPoint::DuringGpadl) => return self.inject_rescind_during_gpadl(),
            FaultKind::Rescind(RescindPoint::AfterGpadlCreated) => return self.inject_rescind_after_gpadl(),
            FaultKind::Rescind(RescindPoint::DuringTeardown) => {
                // The guest's GpadlTeardown waits in the host's inbox: rescind first.
                if let Some(relid) = self.next_teardown_relid().filter(|r| self.echo_relids.contains(r)) {
                    self.injector.target = Some(relid);
                    self.record_injection();
                    self.bus.rescind(relid);
                }
                return;
            }
            FaultKind::Rescind(RescindPoint::DuringOpen) => {
                if let Some(&relid) = self.bus.held_open_relids().first() {
                    self.record_injection();
                    self.bus.rescind(relid);
                    self.bus.release_held_opens(&self.mem);
                }
                return;
            }
            FaultKind::DroppedReply(t) if t == MessageType::VERSION_RESPONSE || t == MessageType::UNLOAD_RESPONSE => {
                self.record_injection();
                return;
            }
            FaultKind::HostRefuses(Refusal::Gpadl) => {
                // Fail exactly the GPADL whose header waits at the head of the host's inbox.
                if let Some(relid) = self.next_gpadl_header_relid().filter(|r| self.echo_relids.contains(r)) {
                    self.injector.target = Some(relid);
                    self.record_injection();
                    self.injector.prepared = true;
                    self.bus.server_mut().faults_mut().fail_gpadl = Some(vmbus_core::host::STATUS_UNSUCCESSFUL);
                }
                return;
            }
            _ => {}
        }
        if !self.trigger_holds(kind) {
            return;
        }
        self.record_injection();
        if !self.fire(kind) {
            // Nothing reached the guest (queue or ring full): try again later.
            self.injector.injected = false;
            self.injector.target = None;
        }
    }

    /// Fires a traffic-phase fault (its target, if any, already chosen).
    fn fire(&mut self, kind: FaultKind) -> bool {
        match kind {
            FaultKind::MalformedMessage(m) => self.inject_message(m),
            FaultKind::MalformedPacket(p) => self.inject_packet(p),
            FaultKind::CorruptRingIndex(i) => match self.injector.target {
                Some(t) => self.bus.corrupt_ring_index(t, i, &self.mem, &mut self.synic),
                None => false,
            },
            FaultKind::Rescind(_) => self.injector.target.is_some_and(|t| self.bus.rescind(t)),
            FaultKind::DroppedReply(t) => {
                self.bus.server_mut().faults_mut().drop_once = ReplyKinds::of(t);
                true
            }
            FaultKind::HostStopsAnswering => {
                self.bus.set_silent(true);
                true
            }
            FaultKind::HypercallBusy => {
                let n = 3 + self.rng.below(40) as u32;
                self.hv.refuse_next_posts(n);
                true
            }
            // Set up at a precise protocol moment elsewhere.
            FaultKind::HostRefuses(_) => false,
        }
    }

    /// Chaos: fires the next planned fault once the guest has reacted to
    /// the previous one and made some progress.
    fn maybe_inject_chaos(&mut self) {
        let idx = self.chaos_fired.len();
        let Some(&kind) = self.config.chaos.get(idx) else { return };
        if let Some(&(_, _, from)) = self.chaos_fired.last() {
            if self.guest.observations().len() <= from {
                return;
            }
        }
        if !self.trigger_holds(kind) {
            return;
        }
        let record = (kind, self.sched.steps(), self.guest.observations().len());
        if !self.fire(kind) {
            self.injector.target = None;
            return;
        }
        self.chaos_fired.push(record);
        // The next fault: a fresh target, after a few more packets.
        self.injector.target = None;
        self.injector.threshold = self.guest.stats().packets_received + 2 + self.rng.below(12);
    }

    /// Judges chaos faults by what the guest observed between each injection and the next.
    fn chaos_records(&self) -> Vec<FaultRecord> {
        let obs = self.guest.observations();
        let mut out = Vec::new();
        for (i, &(kind, step, from)) in self.chaos_fired.iter().enumerate() {
            let to = self.chaos_fired.get(i + 1).map_or(obs.len(), |n| n.2);
            let window = obs.get(from..to).unwrap_or(&[]);
            let outcome = Scenario::Fault(kind)
                .accepted_outcomes()
                .iter()
                .copied()
                .find(|o| window.iter().any(|w| o.matches(w)))
                .unwrap_or(Outcome::NotDetected);
            let observed = window.iter().find(|w| outcome.matches(w)).or(window.first()).copied();
            out.push(FaultRecord { step, kind, outcome, observed });
        }
        out
    }

    fn record_injection(&mut self) {
        self.injector.injected = true;
        self.injector.before = Some(self.guest.stats());
        self.injector.observed_from = self.guest.observations().len();
        self.injector.step = self.sched.steps();
    }

    /// Rescinds the target right after the host takes its GpadlHeader, with
    /// the GpadlCreated reply suppressed: the guest's GPADL is pending.
    fn inject_rescind_during_gpadl(&mut self) {
        if self.injector.prepared {
            let c = self.bus.server().counters();
            if c.dropped_by_fault[MessageType::GPADL_CREATED.0 as usize] > 0 {
                let target = self.injector.target;
                self.record_injection();
                if let Some(t) = target {
                    self.bus.rescind(t);
                }
            }
            return;
        }
        if let Some(relid) = self.next_gpadl_header_relid() {
            if self.echo_relids.contains(&relid) {
                self.injector.target = Some(relid);
                self.injector.prepared = true;
                self.bus.server_mut().faults_mut().drop_once = ReplyKinds::GPADL_CREATED;
            }
        }
    }

    /// Rescinds the target once its GpadlCreated has gone out, before OpenChannel.
    fn inject_rescind_after_gpadl(&mut self) {
        if self.injector.prepared {
            let sent = self.bus.server().counters().sent[MessageType::GPADL_CREATED.0 as usize];
            if sent > 0 {
                self.record_injection();
                if let Some(t) = self.injector.target {
                    self.bus.rescind(t);
                }
            }
            return;
        }
        if let Some(relid) = self.next_gpadl_header_relid() {
            if self.echo_relids.contains(&relid) {
                self.injector.target = Some(relid);
                self.injector.prepared = true;
            }
        }
    }

    /// The relid of a GpadlTeardown waiting in the host's inbox.
    fn next_teardown_relid(&self) -> Option<u32> {
        let m = self.hv.peek_message()?;
        match ChannelMessage::parse(m.bytes()) {
            Ok(ChannelMessage::GpadlTeardown(t)) => Some(t.child_relid),
            _ => None,
        }
    }

    /// The relid of a GpadlHeader waiting in the host's inbox.
    fn next_gpadl_header_relid(&self) -> Option<u32> {
        let m = self.hv.peek_message()?;
        match ChannelMessage::parse(m.bytes()) {
            Ok(ChannelMessage::GpadlHeader(h)) => Some(h.fixed.child_relid),
            _ => None,
        }
    }

    fn inject_message(&mut self, fault: MessageFault) -> bool {
        let target = self.open_echo_channels(0).first().copied().unwrap_or(1);
        let bytes: Vec<u8> = match fault {
            MessageFault::Truncated => fake_offer(target + 100).as_bytes()[..100].to_vec(),
            MessageFault::UnknownType => {
                let t = [0u32, 18, 19, 20, 25, 0x7FFF_FFFF][self.rng.below(6) as usize];
                MessageHeader { msgtype: MessageType(t), padding: 0 }.as_bytes().to_vec()
            }
            MessageFault::WrongRelid => {
                let m = OpenResult {
                    header: MessageHeader::new(MessageType::OPEN_CHANNEL_RESULT),
                    child_relid: 1500 + self.rng.below(500) as u32,
                    openid: 7,
                    status: 0,
                };
                m.as_bytes().to_vec()
            }
            MessageFault::BadGpadlHandle => {
                let m = GpadlCreated {
                    header: MessageHeader::new(MessageType::GPADL_CREATED),
                    child_relid: target,
                    gpadl: 0xBAD0_0000 | self.rng.below(0x1_0000) as u32,
                    creation_status: 0,
                };
                m.as_bytes().to_vec()
            }
            MessageFault::Garbage => {
                let len = 8 + self.rng.below((MESSAGE_PAYLOAD_SIZE - 8) as u64) as usize;
                let mut b = vec![0u8; len];
                self.rng.fill(&mut b);
                // A type no message has, so the bytes are garbage for sure.
                let t = 25 + self.rng.below(1 << 20) as u32;
                b[..4].copy_from_slice(&t.to_le_bytes());
                b
            }
            MessageFault::OversizedSlot => {
                let msg = HvMessage {
                    header: HvMessageHeader {
                        message_type: VMBUS_MESSAGE_TYPE,
                        payload_size: 241 + self.rng.below(15) as u8,
                        message_flags: 0,
                        reserved: 0,
                        sender: 0,
                    },
                    payload: [0xA5; MESSAGE_PAYLOAD_SIZE],
                };
                return self.synic.post_raw(msg).is_ok();
            }
            MessageFault::Unsolicited => {
                let m = VersionResponse {
                    header: MessageHeader::new(MessageType::VERSION_RESPONSE),
                    version_supported: 1,
                    connection_state: 0,
                    padding: 0,
                    msg_conn_id: 5,
                };
                m.as_bytes().to_vec()
            }
        };
        self.bus.inject_message(&mut self.synic, &bytes)
    }

    fn inject_packet(&mut self, fault: PacketFault) -> bool {
        let Some(target) = self.injector.target else { return false };
        let tid = 0xDEAD_0000_0000 | self.rng.below(1 << 16);
        // (type, offset8, len8) written over 32 bytes of packet.
        let (ptype, offset8, len8) = match fault {
            PacketFault::LenTooSmall => (PacketType::DATA_INBAND.0, 2, 1),
            PacketFault::LenBeyondRing => (PacketType::DATA_INBAND.0, 2, 0xFFFF),
            PacketFault::OffsetBeyondLen => (PacketType::DATA_INBAND.0, 5, 4),
            PacketFault::UnknownType => (0x7F, 2, 4),
            PacketFault::UnexpectedCompletion => (PacketType::COMPLETION.0, 2, 4),
        };
        let mut bytes = [0u8; 32];
        let d = PacketDescriptor::raw(ptype, offset8, len8, 0, tid);
        bytes[..16].copy_from_slice(d.as_bytes());
        bytes[16..].fill(0x5A);
        self.bus.inject_raw_packet(target, &bytes, &mut self.synic).is_ok()
    }

    fn judge(&self, kind: FaultKind) -> Outcome {
        let Some(before) = self.injector.before else { return Outcome::NotDetected };
        let after = self.guest.stats();
        let moved = |o: Outcome| -> bool {
            match o {
                Outcome::ChannelShutDown => after.channels_shut_down > before.channels_shut_down,
                Outcome::OpenAborted => after.opens_aborted > before.opens_aborted,
                Outcome::ChannelRemoved => after.channels_removed > before.channels_removed,
                Outcome::PacketRejected => {
                    after.packets_rejected + after.packets_skipped > before.packets_rejected + before.packets_skipped
                }
                Outcome::MessageRejected => {
                    after.messages_rejected + after.bad_slots > before.messages_rejected + before.bad_slots
                }
                Outcome::TimedOut => after.timeouts > before.timeouts,
                Outcome::Retried => after.post_retries > before.post_retries,
                Outcome::Refused => after.host_refusals > before.host_refusals,
                Outcome::NotDetected => false,
            }
        };
        let preferred: &[Outcome] = match kind {
            FaultKind::MalformedMessage(_) => &[Outcome::MessageRejected],
            FaultKind::MalformedPacket(_) | FaultKind::CorruptRingIndex(_) => {
                &[Outcome::ChannelShutDown, Outcome::PacketRejected]
            }
            FaultKind::Rescind(RescindPoint::MidTraffic) => &[Outcome::ChannelRemoved, Outcome::OpenAborted],
            FaultKind::Rescind(_) => &[Outcome::OpenAborted, Outcome::ChannelRemoved],
            FaultKind::DroppedReply(_) | FaultKind::HostStopsAnswering => &[Outcome::TimedOut],
            FaultKind::HypercallBusy => &[Outcome::Retried],
            FaultKind::HostRefuses(_) => &[Outcome::Refused],
        };
        const ALL: [Outcome; 8] = [
            Outcome::Refused,
            Outcome::ChannelShutDown,
            Outcome::OpenAborted,
            Outcome::ChannelRemoved,
            Outcome::PacketRejected,
            Outcome::MessageRejected,
            Outcome::TimedOut,
            Outcome::Retried,
        ];
        preferred.iter().chain(ALL.iter()).copied().find(|&o| moved(o)).unwrap_or(Outcome::NotDetected)
    }

    fn report(&self, stuck: bool) -> Report {
        let gs = self.guest.stats();
        let hs = self.hv.stats();
        let ss = self.synic.stats();
        let mut faults = self.chaos_records();
        if let (Some(kind), true) = (self.config.fault, self.config.chaos.is_empty()) {
            if self.injector.injected {
                let outcome = self.judge(kind);
                let after = self.guest.observations().get(self.injector.observed_from..).unwrap_or(&[]);
                let observed = after.iter().find(|o| outcome.matches(o)).or(after.first()).copied();
                faults.push(FaultRecord { step: self.injector.step, kind, outcome, observed });
            }
        }
        let mut report = Report {
            scenario_name: String::new(),
            seed: self.config.seed,
            host_versions: self.config.host_versions.clone(),
            version: self.guest.version(),
            contact_attempts: gs.contact_attempts,
            offers: self
                .guest
                .offers()
                .iter()
                .map(|o| OfferSummary {
                    relid: o.relid,
                    interface: o.interface,
                    instance: o.instance,
                    sub_channel_index: o.sub_channel_index,
                })
                .collect(),
            channels_opened: gs.channels_opened,
            channels_closed: gs.channels_closed,
            packets_sent: gs.packets_sent,
            packets_received: gs.packets_received,
            bytes_sent: gs.bytes_sent,
            bytes_received: gs.bytes_received,
            completions: gs.completions,
            echoes_verified: gs.echoes_verified,
            guest_signals: hs.signal_calls,
            guest_posts: hs.post_calls,
            event_interrupts: ss.event_interrupts,
            interrupts: ss.interrupts,
            host_messages: self.bus.stats().messages_out,
            faults,
            unloaded: gs.unloaded,
            steps: self.sched.steps(),
            guest: gs,
            pages_in_use: self.mem.stats().pages_in_use,
            stuck,
            budget_exhausted: self.sched.exhausted(),
            trace: self.bus.trace().to_vec(),
            failures: Vec::new(),
        };
        if stuck {
            report.failures.push(crate::report::Expectation::Stuck);
        }
        report
    }
}

/// A well-formed offer for a relid the host never assigned (cut short by
/// the truncated-message fault).
fn fake_offer(relid: u32) -> OfferChannel {
    OfferChannel {
        header: MessageHeader::new(MessageType::OFFER_CHANNEL),
        if_type: ECHO_INTERFACE,
        if_instance: echo_instance(99),
        reserved1: Default::default(),
        reserved2: Default::default(),
        chn_flags: 0,
        mmio_megabytes: 0,
        user_defined: [0; 120],
        sub_channel_index: 0,
        reserved3: 0,
        child_relid: relid,
        monitor_id: 0,
        monitor_allocated: 0,
        is_dedicated_interrupt: 0,
        connection_id: 0x1000 + relid,
    }
}

/// Builds raw packet descriptors (for malformed-packet injection).
trait RawDescriptor {
    fn raw(packet_type: u16, offset8: u16, len8: u16, flags: u16, trans_id: u64) -> PacketDescriptor;
}

impl RawDescriptor for PacketDescriptor {
    fn raw(packet_type: u16, offset8: u16, len8: u16, flags: u16, trans_id: u64) -> PacketDescriptor {
        use zerocopy::little_endian::{U16, U64};
        PacketDescriptor {
            packet_type: U16::new(packet_type),
            offset8: U16::new(offset8),
            len8: U16::new(len8),
            flags: U16::new(flags),
            trans_id: U64::new(trans_id),
        }
    }
}
