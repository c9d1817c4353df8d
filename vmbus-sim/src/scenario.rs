// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Named, seeded full-system scenarios and what each must show.
//!
//! Every scenario builds a [`Sim`], runs it and checks its [`Report`]
//! against expectations; a failed expectation is recorded in
//! [`Report::failures`], never a panic.

use crate::fault::{FaultKind, IndexFault, MessageFault, Outcome, PacketFault, Refusal, RescindPoint};
use crate::report::{Expectation, Report};
use crate::sim::{Sim, SimConfig};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use vmbus_core::message::MessageType;
use vmbus_core::version::Version;

/// A scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Newest version, two echo channels, traffic, close, unload.
    Happy,
    /// The host accepts only this version; the guest must fall back to it.
    VersionFallback(Version),
    /// The host offers sub-channels of an open echo channel; the guest opens them too.
    SubChannels,
    /// One injected fault.
    Fault(FaultKind),
    /// Four echo channels and a seeded series of faults, one after another:
    /// non-fatal ones of every kind plus at most two that cost a channel.
    Chaos,
}

/// Every message fault.
pub const MESSAGE_FAULTS: [MessageFault; 7] = [
    MessageFault::Truncated,
    MessageFault::UnknownType,
    MessageFault::WrongRelid,
    MessageFault::BadGpadlHandle,
    MessageFault::Garbage,
    MessageFault::OversizedSlot,
    MessageFault::Unsolicited,
];

/// Every packet fault.
pub const PACKET_FAULTS: [PacketFault; 5] = [
    PacketFault::LenTooSmall,
    PacketFault::LenBeyondRing,
    PacketFault::OffsetBeyondLen,
    PacketFault::UnknownType,
    PacketFault::UnexpectedCompletion,
];

/// Every ring-index fault.
pub const INDEX_FAULTS: [IndexFault; 3] = [
    IndexFault::InboundWriteIndexOutOfRange,
    IndexFault::InboundWriteIndexMisaligned,
    IndexFault::OutboundReadIndexOutOfRange,
];

/// Replies the host drops in the dropped-reply scenarios.
pub const DROPPED_REPLIES: [MessageType; 4] = [
    MessageType::VERSION_RESPONSE,
    MessageType::GPADL_CREATED,
    MessageType::OPEN_CHANNEL_RESULT,
    MessageType::UNLOAD_RESPONSE,
];

fn slug_message(m: MessageFault) -> &'static str {
    match m {
        MessageFault::Truncated => "truncated",
        MessageFault::UnknownType => "unknown-type",
        MessageFault::WrongRelid => "wrong-relid",
        MessageFault::BadGpadlHandle => "bad-gpadl-handle",
        MessageFault::Garbage => "garbage",
        MessageFault::OversizedSlot => "oversized-slot",
        MessageFault::Unsolicited => "unsolicited",
    }
}

fn slug_packet(p: PacketFault) -> &'static str {
    match p {
        PacketFault::LenTooSmall => "len-too-small",
        PacketFault::LenBeyondRing => "len-beyond-ring",
        PacketFault::OffsetBeyondLen => "offset-beyond-len",
        PacketFault::UnknownType => "unknown-type",
        PacketFault::UnexpectedCompletion => "unexpected-completion",
    }
}

fn slug_index(i: IndexFault) -> &'static str {
    match i {
        IndexFault::InboundWriteIndexOutOfRange => "inbound-write-out-of-range",
        IndexFault::InboundWriteIndexMisaligned => "inbound-write-misaligned",
        IndexFault::OutboundReadIndexOutOfRange => "outbound-read-out-of-range",
    }
}

fn slug_rescind(r: RescindPoint) -> &'static str {
    match r {
        RescindPoint::AfterOffer => "after-offer",
        RescindPoint::DuringGpadl => "during-gpadl",
        RescindPoint::AfterGpadlCreated => "after-gpadl-created",
        RescindPoint::DuringOpen => "during-open",
        RescindPoint::MidTraffic => "mid-traffic",
        RescindPoint::DuringTeardown => "during-teardown",
    }
}

fn slug_reply(t: MessageType) -> &'static str {
    match t {
        MessageType::VERSION_RESPONSE => "version-response",
        MessageType::GPADL_CREATED => "gpadl-created",
        MessageType::OPEN_CHANNEL_RESULT => "open-result",
        MessageType::UNLOAD_RESPONSE => "unload-response",
        _ => "other",
    }
}

impl Scenario {
    /// Every scenario, in the order the demo runs them.
    pub fn all() -> Vec<Scenario> {
        let mut v = vec![Scenario::Happy];
        // The newest version is the happy path; each older one gets its own host.
        for &ver in Version::GUEST_PREFERENCE.iter().skip(1) {
            v.push(Scenario::VersionFallback(ver));
        }
        v.push(Scenario::SubChannels);
        v.extend(MESSAGE_FAULTS.iter().map(|&m| Scenario::Fault(FaultKind::MalformedMessage(m))));
        v.extend(PACKET_FAULTS.iter().map(|&p| Scenario::Fault(FaultKind::MalformedPacket(p))));
        v.extend(INDEX_FAULTS.iter().map(|&i| Scenario::Fault(FaultKind::CorruptRingIndex(i))));
        v.extend(RescindPoint::ALL.iter().map(|&r| Scenario::Fault(FaultKind::Rescind(r))));
        v.extend(DROPPED_REPLIES.iter().map(|&t| Scenario::Fault(FaultKind::DroppedReply(t))));
        v.push(Scenario::Fault(FaultKind::HostStopsAnswering));
        v.push(Scenario::Fault(FaultKind::HypercallBusy));
        v.push(Scenario::Fault(FaultKind::HostRefuses(Refusal::Gpadl)));
        v.push(Scenario::Fault(FaultKind::HostRefuses(Refusal::Open)));
        v.push(Scenario::Chaos);
        v
    }

    /// The chaos plan for `seed`: six faults, at most two of them fatal to a channel.
    pub fn chaos_plan(seed: u64) -> Vec<FaultKind> {
        let mut rng = crate::sched::SplitMix64::new(seed ^ 0xC4A0_5000_0000_0000);
        let mut benign: Vec<FaultKind> = MESSAGE_FAULTS.iter().map(|&m| FaultKind::MalformedMessage(m)).collect();
        benign.push(FaultKind::MalformedPacket(PacketFault::UnknownType));
        benign.push(FaultKind::MalformedPacket(PacketFault::UnexpectedCompletion));
        benign.push(FaultKind::HypercallBusy);
        let mut fatal: Vec<FaultKind> = INDEX_FAULTS.iter().map(|&i| FaultKind::CorruptRingIndex(i)).collect();
        fatal.push(FaultKind::MalformedPacket(PacketFault::LenTooSmall));
        fatal.push(FaultKind::MalformedPacket(PacketFault::LenBeyondRing));
        fatal.push(FaultKind::MalformedPacket(PacketFault::OffsetBeyondLen));
        fatal.push(FaultKind::Rescind(RescindPoint::MidTraffic));
        let mut plan = Vec::new();
        let mut fatal_left = 2;
        while plan.len() < 6 {
            let pick_fatal = fatal_left > 0 && rng.chance(35);
            let pool = if pick_fatal { &fatal } else { &benign };
            plan.push(pool[rng.below(pool.len() as u64) as usize]);
            fatal_left -= u32::from(pick_fatal);
        }
        plan
    }

    /// The scenario's command-line name.
    pub fn name(&self) -> String {
        match *self {
            Scenario::Happy => "happy".into(),
            Scenario::VersionFallback(v) => format!("version-{v}"),
            Scenario::SubChannels => "subchannels".into(),
            Scenario::Fault(FaultKind::MalformedMessage(m)) => format!("malformed-message-{}", slug_message(m)),
            Scenario::Fault(FaultKind::MalformedPacket(p)) => format!("malformed-packet-{}", slug_packet(p)),
            Scenario::Fault(FaultKind::CorruptRingIndex(i)) => format!("corrupt-index-{}", slug_index(i)),
            Scenario::Fault(FaultKind::Rescind(r)) => format!("rescind-{}", slug_rescind(r)),
            Scenario::Fault(FaultKind::DroppedReply(t)) => format!("dropped-reply-{}", slug_reply(t)),
            Scenario::Fault(FaultKind::HostStopsAnswering) => "host-stops-answering".into(),
            Scenario::Fault(FaultKind::HypercallBusy) => "hypercall-busy".into(),
            Scenario::Fault(FaultKind::HostRefuses(Refusal::Gpadl)) => "host-refuses-gpadl".into(),
            Scenario::Fault(FaultKind::HostRefuses(Refusal::Open)) => "host-refuses-open".into(),
            Scenario::Chaos => "chaos".into(),
        }
    }

    /// Looks a scenario up by name.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Scenario::all().into_iter().find(|s| s.name() == name)
    }

    /// The machine this scenario runs for `seed`.
    pub fn config(&self, seed: u64) -> SimConfig {
        let mut c = SimConfig::new(seed);
        match *self {
            Scenario::Happy => {}
            Scenario::VersionFallback(v) => c.host_versions = vec![v],
            Scenario::SubChannels => {
                c.subchannels = 2;
                // Wait for the sub-channel offers before finishing.
                c.guest.min_channels = 4;
            }
            Scenario::Fault(kind) => c.fault = Some(kind),
            Scenario::Chaos => {
                c.echo_devices = 4;
                c.chaos = Scenario::chaos_plan(seed);
            }
        }
        c
    }

    /// The outcomes accepted for this scenario's fault.
    pub fn accepted_outcomes(&self) -> &'static [Outcome] {
        match *self {
            Scenario::Fault(FaultKind::MalformedMessage(_)) => &[Outcome::MessageRejected],
            Scenario::Fault(FaultKind::MalformedPacket(PacketFault::UnknownType))
            | Scenario::Fault(FaultKind::MalformedPacket(PacketFault::UnexpectedCompletion)) => {
                &[Outcome::PacketRejected]
            }
            Scenario::Fault(FaultKind::MalformedPacket(_)) | Scenario::Fault(FaultKind::CorruptRingIndex(_)) => {
                &[Outcome::ChannelShutDown]
            }
            Scenario::Fault(FaultKind::Rescind(RescindPoint::MidTraffic))
            | Scenario::Fault(FaultKind::Rescind(RescindPoint::DuringTeardown)) => &[Outcome::ChannelRemoved],
            // A rescind racing the open sequence ends it wherever it is (an
            // open may just have completed when the rescind arrives).
            Scenario::Fault(FaultKind::Rescind(_)) => &[Outcome::OpenAborted, Outcome::ChannelRemoved],
            Scenario::Fault(FaultKind::DroppedReply(_)) | Scenario::Fault(FaultKind::HostStopsAnswering) => {
                &[Outcome::TimedOut]
            }
            Scenario::Fault(FaultKind::HypercallBusy) => &[Outcome::Retried],
            Scenario::Fault(FaultKind::HostRefuses(_)) => &[Outcome::Refused],
            _ => &[],
        }
    }

    /// Runs the scenario with `seed` and checks its expectations.
    pub fn run(&self, seed: u64) -> Report {
        let config = self.config(seed);
        let packets_per_channel = u64::from(config.guest.packets_per_channel);
        let mut report = match Sim::new(config) {
            Some(sim) => sim.run(),
            None => {
                let mut r = Report { seed, ..Report::default() };
                r.failures.push(Expectation::NotConnected);
                r
            }
        };
        report.scenario_name = self.name();
        self.check(&mut report, packets_per_channel);
        report
    }

    /// Checks `r` against this scenario's expectations (each guest channel
    /// was to move `per_channel` packets), appending failures.
    pub fn check(&self, r: &mut Report, per_channel: u64) {
        let fail = |e: Expectation, r: &mut Report| {
            if !r.failures.contains(&e) {
                r.failures.push(e)
            }
        };
        if r.budget_exhausted {
            fail(Expectation::StepBudgetExhausted, r);
        }
        // Whatever happens, data that did come back must be intact.
        if r.guest.echo_mismatches > 0 {
            fail(Expectation::DataMismatch, r);
        }
        let expected_version = match *self {
            Scenario::VersionFallback(v) => Some(v),
            Scenario::Fault(FaultKind::DroppedReply(MessageType::VERSION_RESPONSE)) => None,
            _ => Some(Version::GUEST_PREFERENCE[0]),
        };
        if r.version != expected_version {
            fail(Expectation::WrongVersion { expected: expected_version, got: r.version }, r);
        }
        let clean = match *self {
            Scenario::Happy | Scenario::VersionFallback(_) | Scenario::SubChannels => true,
            // Faults the guest absorbs without losing a channel.
            Scenario::Fault(FaultKind::MalformedMessage(_))
            | Scenario::Fault(FaultKind::HypercallBusy)
            | Scenario::Fault(FaultKind::MalformedPacket(PacketFault::UnknownType))
            | Scenario::Fault(FaultKind::MalformedPacket(PacketFault::UnexpectedCompletion)) => true,
            _ => false,
        };
        let channels = match *self {
            Scenario::SubChannels | Scenario::Chaos => 4,
            _ => 2,
        };
        if clean {
            if r.channels_opened != channels {
                fail(Expectation::TooFewChannels { expected: channels, got: r.channels_opened }, r);
            }
            if r.echoes_verified != r.packets_sent || r.packets_sent != per_channel * u64::from(channels) {
                fail(Expectation::PacketsLost { sent: r.packets_sent, received: r.echoes_verified }, r);
            }
            if r.guest_signals == 0 {
                fail(Expectation::CounterDidNotMove("guest signals"), r);
            }
            if r.event_interrupts == 0 {
                fail(Expectation::CounterDidNotMove("event interrupts"), r);
            }
        }
        if matches!(*self, Scenario::Happy | Scenario::VersionFallback(_) | Scenario::SubChannels)
            && (r.guest.messages_rejected > 0 || r.guest.packets_rejected > 0 || r.guest.timeouts > 0)
        {
            fail(Expectation::SpuriousRejection, r);
        }
        // Unload: every host that has it (3.0+) and still answers.
        let host_answers_unload = !matches!(
            *self,
            Scenario::Fault(FaultKind::DroppedReply(MessageType::VERSION_RESPONSE))
                | Scenario::Fault(FaultKind::DroppedReply(MessageType::UNLOAD_RESPONSE))
                | Scenario::Fault(FaultKind::HostStopsAnswering)
        );
        let unload_supported = r.version.is_some_and(|v| v.supports_unload());
        if host_answers_unload && unload_supported && !r.unloaded {
            fail(Expectation::UnloadIncomplete, r);
        }
        // No leak: after an unload, or when every channel closed cleanly.
        if (r.unloaded || (clean && r.version.is_some())) && r.pages_in_use != 0 {
            fail(Expectation::MemoryLeaked { pages: r.pages_in_use }, r);
        }
        if let Scenario::Chaos = *self {
            if r.faults.is_empty() {
                fail(Expectation::NoFaultInjected, r);
            }
            let missed: Vec<usize> =
                r.faults.iter().enumerate().filter(|(_, f)| !f.outcome.handled()).map(|(i, _)| i).collect();
            for i in missed {
                fail(Expectation::FaultNotDetected(i), r);
            }
            // At most two channels lost: the others move all their packets.
            if r.echoes_verified < 2 * per_channel {
                fail(Expectation::PacketsLost { sent: r.packets_sent, received: r.echoes_verified }, r);
            }
        }
        if let Scenario::Fault(_) = *self {
            match r.faults.first() {
                None => fail(Expectation::NoFaultInjected, r),
                Some(f) if f.outcome == Outcome::NotDetected => fail(Expectation::FaultNotDetected(0), r),
                Some(f) if !self.accepted_outcomes().contains(&f.outcome) => {
                    fail(Expectation::UnexpectedOutcome(f.outcome), r)
                }
                Some(_) => {}
            }
            // The channel not hit by the fault still moves all its packets.
            let survivor_ok = match *self {
                Scenario::Fault(FaultKind::DroppedReply(MessageType::VERSION_RESPONSE))
                | Scenario::Fault(FaultKind::HostStopsAnswering) => true,
                _ => r.echoes_verified >= per_channel,
            };
            if !survivor_ok {
                fail(Expectation::PacketsLost { sent: r.packets_sent, received: r.echoes_verified }, r);
            }
        }
    }
}
