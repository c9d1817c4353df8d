// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! What a scenario run produced: the numbers the demo prints and the tests assert.

use crate::bus::{Direction, TraceEntry};
use crate::fault::{FaultRecord, Outcome};
use crate::guest::GuestStats;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use vmbus_core::guid::{device_class, Guid};
use vmbus_core::version::Version;

/// One offer the guest saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferSummary {
    /// Relid.
    pub relid: u32,
    /// Device class.
    pub interface: Guid,
    /// Device instance.
    pub instance: Guid,
    /// Sub-channel index (0 = primary).
    pub sub_channel_index: u16,
}

/// A failed expectation of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expectation {
    /// The guest did not reach the connected state.
    NotConnected,
    /// The negotiated version differs from the expected one.
    WrongVersion {
        /// Expected.
        expected: Option<Version>,
        /// Got.
        got: Option<Version>,
    },
    /// Fewer channels opened than expected.
    TooFewChannels {
        /// Expected.
        expected: u32,
        /// Got.
        got: u32,
    },
    /// Echoed data did not match what was sent.
    DataMismatch,
    /// Fewer packets came back than were sent.
    PacketsLost {
        /// Sent.
        sent: u64,
        /// Received.
        received: u64,
    },
    /// An injected fault was not detected by the guest.
    FaultNotDetected(usize),
    /// Expected a fault to be injected but none was.
    NoFaultInjected,
    /// The run hit its step budget without finishing.
    StepBudgetExhausted,
    /// Shared memory was still allocated after teardown.
    MemoryLeaked {
        /// Pages still in use.
        pages: usize,
    },
    /// A counter that should have moved did not.
    CounterDidNotMove(&'static str),
    /// Unload did not complete.
    UnloadIncomplete,
    /// Neither side could move and the guest was not waiting on anything.
    Stuck,
    /// A fault outcome outside the accepted set.
    UnexpectedOutcome(Outcome),
    /// The guest rejected host input in a run without faults.
    SpuriousRejection,
}

/// A scenario's result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Scenario name.
    pub scenario_name: String,
    /// Seed.
    pub seed: u64,
    /// Versions the host accepts (empty = all).
    pub host_versions: Vec<Version>,
    /// Negotiated version.
    pub version: Option<Version>,
    /// InitiateContact attempts the guest made.
    pub contact_attempts: u32,
    /// Offers the guest saw.
    pub offers: Vec<OfferSummary>,
    /// Channels that reached the open state.
    pub channels_opened: u32,
    /// Channels closed by the guest.
    pub channels_closed: u32,
    /// Packets the guest sent.
    pub packets_sent: u64,
    /// Packets the guest received (echoes and completions).
    pub packets_received: u64,
    /// Payload bytes the guest sent.
    pub bytes_sent: u64,
    /// Payload bytes the guest received.
    pub bytes_received: u64,
    /// Completions the guest matched to an outstanding transaction id.
    pub completions: u64,
    /// Echoed payloads that matched what was sent.
    pub echoes_verified: u64,
    /// HvSignalEvent calls by the guest.
    pub guest_signals: u64,
    /// HvPostMessage calls by the guest.
    pub guest_posts: u64,
    /// Event-flag interrupts raised to the guest.
    pub event_interrupts: u64,
    /// Interrupts of every kind raised to the guest.
    pub interrupts: u64,
    /// Channel messages the host sent.
    pub host_messages: u64,
    /// Faults injected and the guest's reaction.
    pub faults: Vec<FaultRecord>,
    /// Whether unload completed.
    pub unloaded: bool,
    /// Scheduler steps.
    pub steps: u64,
    /// Every guest counter.
    pub guest: GuestStats,
    /// Shared-memory pages still allocated at the end.
    pub pages_in_use: usize,
    /// The run stopped because nothing could move.
    pub stuck: bool,
    /// The run stopped at the step budget.
    pub budget_exhausted: bool,
    /// The first channel messages of the run.
    pub trace: Vec<TraceEntry>,
    /// Failed expectations (empty = pass).
    pub failures: Vec<Expectation>,
}

impl Report {
    /// The message trace, one line per message (empty if not recorded).
    pub fn trace_lines(&self) -> TraceLines<'_> {
        TraceLines(&self.trace)
    }

    /// Whether every expectation held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

impl Report {
    /// One line: name, verdict and the essentials (for the demo's tables).
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }
}

/// One-line form of a [`Report`].
#[derive(Debug)]
pub struct Summary<'a>(&'a Report);

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        write!(f, "{:<4} {:<42}", if r.passed() { "PASS" } else { "FAIL" }, r.scenario_name)?;
        match r.version {
            Some(v) => write!(f, " v{v:<4} ({} contact)", r.contact_attempts)?,
            None => write!(f, " no version ({} contact)", r.contact_attempts)?,
        }
        write!(
            f,
            " {} open, {}/{} echoed, {} sig out, {} irq in, unload {}",
            r.channels_opened,
            r.echoes_verified,
            r.packets_sent,
            r.guest_signals,
            r.event_interrupts,
            if r.unloaded { "ok" } else { "-" }
        )?;
        for fr in &r.faults {
            write!(f, "\n       fault at step {}: {}", fr.step, fr.kind)?;
            if let Some(o) = &fr.observed {
                write!(f, "\n         guest saw: {o}")?;
            }
            write!(f, "\n         handled:   {}", fr.outcome)?;
        }
        for e in &r.failures {
            write!(f, "\n       EXPECTATION FAILED: {e:?}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "=== scenario {} (seed {:#x}) : {}",
            self.scenario_name,
            self.seed,
            if self.passed() { "PASS" } else { "FAIL" }
        )?;
        if !self.host_versions.is_empty() {
            write!(f, "  host accepts versions:")?;
            for v in &self.host_versions {
                write!(f, " {v}")?;
            }
            writeln!(f)?;
        }
        match self.version {
            Some(v) => writeln!(
                f,
                "  negotiated VMBus version {v} after {} InitiateContact attempt(s)",
                self.contact_attempts
            )?,
            None => writeln!(f, "  no version negotiated ({} attempt(s))", self.contact_attempts)?,
        }
        writeln!(f, "  offers: {}", self.offers.len())?;
        for o in &self.offers {
            let class = device_class(&o.interface).map(|c| c.name).unwrap_or(
                if o.interface == crate::devices::echo::ECHO_INTERFACE { "echo (simulator)" } else { "unknown" },
            );
            writeln!(
                f,
                "    relid {:>3}  {:<18} instance {}  sub-channel {}",
                o.relid, class, o.instance, o.sub_channel_index
            )?;
        }
        write!(f, "  channels opened: {}, closed: {}", self.channels_opened, self.channels_closed)?;
        let g = &self.guest;
        for (n, what) in [
            (g.channels_shut_down, "shut down (corrupt ring)"),
            (g.channels_removed, "removed (rescinded after open)"),
            (g.opens_aborted, "open aborted (rescind)"),
            (g.host_refusals, "refused by host"),
            (g.timeouts, "wait(s) abandoned"),
        ] {
            if n > 0 {
                write!(f, ", {n} {what}")?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "  packets: {} sent ({} bytes), {} received ({} bytes), {} echoes verified, {} completions",
            self.packets_sent,
            self.bytes_sent,
            self.packets_received,
            self.bytes_received,
            self.echoes_verified,
            self.completions
        )?;
        writeln!(
            f,
            "  signals: guest->host {} HvSignalEvent, host->guest {} event interrupts ({} interrupts in all); {} HvPostMessage, {} host messages",
            self.guest_signals, self.event_interrupts, self.interrupts, self.guest_posts, self.host_messages
        )?;
        if let Some(per_k) = (self.guest_signals * 1000).checked_div(self.packets_sent) {
            writeln!(
                f,
                "  batching: {} guest signals per 1000 packets sent, {} interrupts per 1000 packets received; ring full {} time(s)",
                per_k,
                self.event_interrupts * 1000 / self.packets_received.max(1),
                self.guest.ring_full
            )?;
        }
        if self.faults.is_empty() {
            writeln!(f, "  faults injected: none")?;
        } else {
            writeln!(f, "  faults injected: {}", self.faults.len())?;
            for r in &self.faults {
                writeln!(f, "    step {:>5}: {}", r.step, r.kind)?;
                if let Some(o) = &r.observed {
                    writeln!(f, "                 guest saw: {o}")?;
                }
                writeln!(f, "                 handled:   {}", r.outcome)?;
            }
        }
        writeln!(f, "  unload: {}   steps: {}", if self.unloaded { "complete" } else { "not done" }, self.steps)?;
        for e in &self.failures {
            writeln!(f, "  EXPECTATION FAILED: {e:?}")?;
        }
        Ok(())
    }
}

/// Printable form of a message trace.
#[derive(Debug)]
pub struct TraceLines<'a>(&'a [TraceEntry]);

impl fmt::Display for TraceLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in self.0 {
            let arrow = match e.direction {
                Direction::ToHost => "guest -> host ",
                Direction::ToGuest => "host  -> guest",
            };
            write!(f, "    {arrow}  {}", e.msgtype.name())?;
            if let Some(r) = e.relid {
                write!(f, " (relid {r})")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
