// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Fault injection: what the simulated host can do wrong, and how the guest
//! answered each time.
//!
//! A scenario injects faults through the bus ([`crate::bus`]); each injection
//! is recorded as a [`FaultRecord`] whose [`Outcome`] is filled in from what
//! the guest visibly did (an error counter moved, a channel was shut down,
//! an open failed, a wait timed out...). `Outcome::NotDetected` means the
//! guest did not react, which scenarios treat as a failed expectation.

use crate::guest::Observation;
use core::fmt;
use vmbus_core::message::MessageType;

/// A malformed channel message (host to guest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageFault {
    /// A valid message cut short (an offer of 100 bytes).
    Truncated,
    /// A message type that does not exist.
    UnknownType,
    /// An OpenResult / GpadlCreated / Rescind for a relid that was never offered.
    WrongRelid,
    /// A GpadlCreated for a handle the guest never used.
    BadGpadlHandle,
    /// Random bytes.
    Garbage,
    /// A SynIC slot whose `payload_size` exceeds 240.
    OversizedSlot,
    /// A reply nobody asked for (a VersionResponse after the connection is up).
    Unsolicited,
}

/// A malformed packet written into the guest's inbound ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketFault {
    /// `len8` smaller than the descriptor.
    LenTooSmall,
    /// `len8` larger than the bytes in the ring.
    LenBeyondRing,
    /// `offset8` beyond `len8`.
    OffsetBeyondLen,
    /// A packet type the guest does not know.
    UnknownType,
    /// A completion for a transaction id that is not outstanding.
    UnexpectedCompletion,
}

/// A ring index the host corrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexFault {
    /// The inbound ring's `write_index` (the host is its producer) set past the data area.
    InboundWriteIndexOutOfRange,
    /// The inbound ring's `write_index` set to a misaligned value.
    InboundWriteIndexMisaligned,
    /// The outbound ring's `read_index` (the host is its consumer) set past the data area.
    OutboundReadIndexOutOfRange,
}

/// Where in a channel's life the host rescinds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RescindPoint {
    /// Right after the offer, before the guest does anything.
    AfterOffer,
    /// While the GPADL is being created (after the header, before GpadlCreated).
    DuringGpadl,
    /// After GpadlCreated, before OpenChannel.
    AfterGpadlCreated,
    /// After OpenChannel, before OpenResult.
    DuringOpen,
    /// With packets in flight.
    MidTraffic,
    /// While the guest closes the channel (its GpadlTeardown not yet handled).
    DuringTeardown,
}

impl RescindPoint {
    /// Every point, in protocol order.
    pub const ALL: [RescindPoint; 6] = [
        RescindPoint::AfterOffer,
        RescindPoint::DuringGpadl,
        RescindPoint::AfterGpadlCreated,
        RescindPoint::DuringOpen,
        RescindPoint::MidTraffic,
        RescindPoint::DuringTeardown,
    ];
}

/// A request the host answers with a failure status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// GpadlCreated with a non-zero status.
    Gpadl,
    /// OpenResult with a non-zero status.
    Open,
}

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A malformed channel message.
    MalformedMessage(MessageFault),
    /// A malformed packet in the inbound ring.
    MalformedPacket(PacketFault),
    /// A corrupt ring index.
    CorruptRingIndex(IndexFault),
    /// A rescind at some point of the channel's life.
    Rescind(RescindPoint),
    /// The host drops its reply of this type.
    DroppedReply(MessageType),
    /// The host stops answering anything.
    HostStopsAnswering,
    /// The hypervisor refuses posts with INSUFFICIENT_BUFFERS for a while.
    HypercallBusy,
    /// The host refuses one GPADL or one open with a failure status.
    HostRefuses(Refusal),
}

/// How the guest handled a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The guest refused the message and counted it; the connection carried on.
    MessageRejected,
    /// The channel refused the packet and counted it; the channel carried on.
    PacketRejected,
    /// The channel saw the corruption and was shut down cleanly.
    ChannelShutDown,
    /// The open sequence stopped cleanly: resources freed, relid released.
    OpenAborted,
    /// An open channel was closed and released after the rescind.
    ChannelRemoved,
    /// The guest gave up waiting for a reply after its timeout, freeing what it held.
    TimedOut,
    /// The guest retried a transient hypercall status and succeeded.
    Retried,
    /// The guest took the host's failure status, freed what it held and left the channel closed.
    Refused,
    /// The guest did not react (a failed expectation).
    NotDetected,
}

impl Outcome {
    /// Whether the guest noticed and handled the fault.
    pub fn handled(self) -> bool {
        self != Outcome::NotDetected
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::MalformedMessage(m) => write!(
                f,
                "malformed message ({})",
                match m {
                    MessageFault::Truncated => "truncated offer",
                    MessageFault::UnknownType => "unknown type",
                    MessageFault::WrongRelid => "wrong relid",
                    MessageFault::BadGpadlHandle => "bad GPADL handle",
                    MessageFault::Garbage => "garbage bytes",
                    MessageFault::OversizedSlot => "slot payload_size > 240",
                    MessageFault::Unsolicited => "unsolicited reply",
                }
            ),
            FaultKind::MalformedPacket(p) => write!(
                f,
                "malformed packet ({})",
                match p {
                    PacketFault::LenTooSmall => "len8 below descriptor",
                    PacketFault::LenBeyondRing => "len8 beyond ring data",
                    PacketFault::OffsetBeyondLen => "offset8 beyond len8",
                    PacketFault::UnknownType => "unknown packet type",
                    PacketFault::UnexpectedCompletion => "completion for unknown transaction id",
                }
            ),
            FaultKind::CorruptRingIndex(i) => write!(
                f,
                "corrupt ring index ({})",
                match i {
                    IndexFault::InboundWriteIndexOutOfRange => "inbound write_index past data",
                    IndexFault::InboundWriteIndexMisaligned => "inbound write_index misaligned",
                    IndexFault::OutboundReadIndexOutOfRange => "outbound read_index past data",
                }
            ),
            FaultKind::Rescind(p) => write!(
                f,
                "rescind {}",
                match p {
                    RescindPoint::AfterOffer => "right after the offer",
                    RescindPoint::DuringGpadl => "during GPADL creation",
                    RescindPoint::AfterGpadlCreated => "after GPADL created",
                    RescindPoint::DuringOpen => "during open",
                    RescindPoint::MidTraffic => "mid-traffic",
                    RescindPoint::DuringTeardown => "during close/teardown",
                }
            ),
            FaultKind::DroppedReply(t) => write!(f, "dropped reply {}", t.name()),
            FaultKind::HostStopsAnswering => f.write_str("host stops answering"),
            FaultKind::HypercallBusy => f.write_str("HvPostMessage busy (INSUFFICIENT_BUFFERS)"),
            FaultKind::HostRefuses(Refusal::Gpadl) => f.write_str("host refuses a GPADL (failure status)"),
            FaultKind::HostRefuses(Refusal::Open) => f.write_str("host refuses an open (failure status)"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::MessageRejected => "message rejected and counted, connection carried on",
            Outcome::PacketRejected => "packet rejected and counted, channel carried on",
            Outcome::ChannelShutDown => "corruption detected, channel shut down cleanly",
            Outcome::OpenAborted => "open aborted cleanly, memory freed, relid released",
            Outcome::ChannelRemoved => "channel closed and released",
            Outcome::TimedOut => "guest gave up the wait (no hang); memory the host may map kept until unload",
            Outcome::Retried => "transient status retried, message delivered",
            Outcome::Refused => "failure status taken, memory freed, channel left closed",
            Outcome::NotDetected => "NOT DETECTED",
        })
    }
}

/// One injected fault and the guest's reaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// Scheduler step of the injection.
    pub step: u64,
    /// What was injected.
    pub kind: FaultKind,
    /// How the guest handled it.
    pub outcome: Outcome,
    /// The first thing the guest noticed after the injection.
    pub observed: Option<Observation>,
}

impl Outcome {
    /// Whether `o` is the kind of observation that goes with this outcome.
    pub fn matches(self, o: &Observation) -> bool {
        matches!(
            (self, o),
            (Outcome::MessageRejected, Observation::MessageRejected(_) | Observation::SlotRejected(_))
                | (Outcome::PacketRejected, Observation::PacketRejected { .. })
                | (Outcome::ChannelShutDown, Observation::RingFailed { .. })
                | (Outcome::OpenAborted | Outcome::ChannelRemoved, Observation::Rescinded { .. })
                | (Outcome::TimedOut, Observation::ChannelTimedOut { .. } | Observation::ConnectionTimedOut(_))
                | (Outcome::Retried, Observation::PostRetried { .. })
                | (Outcome::Refused, Observation::HostRefused { .. })
        )
    }
}
