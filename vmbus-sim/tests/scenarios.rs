// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Every full-system scenario with several seeds: the expectations in
//! `Scenario::check` must hold, and a run must be a pure function of its seed.

use vmbus_sim::fault::{FaultKind, Outcome};
use vmbus_sim::scenario::Scenario;
use vmbus_sim::sim::{Sim, SimConfig};

const SEEDS: [u64; 6] = [1, 2, 3, 0xDEAD_BEEF, 42, 0x5EED_0000_0001];

fn assert_passes(s: Scenario, seed: u64) -> vmbus_sim::report::Report {
    let r = s.run(seed);
    assert!(r.passed(), "{} seed {seed:#x} failed:\n{r}", s.name());
    r
}

#[test]
fn every_scenario_passes_with_several_seeds() {
    for s in Scenario::all() {
        for seed in SEEDS {
            assert_passes(s, seed);
        }
    }
}

#[test]
fn same_seed_same_report() {
    for s in Scenario::all() {
        let a = s.run(7);
        let b = s.run(7);
        assert_eq!(a, b, "{} is not deterministic", s.name());
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let a = Scenario::Happy.run(1);
    let b = Scenario::Happy.run(2);
    // Same totals (the workload is fixed) but different bytes and interleavings.
    assert_eq!(a.packets_sent, b.packets_sent);
    assert_ne!((a.bytes_sent, a.steps), (b.bytes_sent, b.steps));
}

#[test]
fn happy_path_moves_every_packet_and_frees_everything() {
    for seed in SEEDS {
        let r = assert_passes(Scenario::Happy, seed);
        assert_eq!(r.version, Some(vmbus_core::version::Version::WIN10_V5_3));
        assert_eq!(r.contact_attempts, 1);
        assert_eq!(r.offers.len(), 4);
        assert_eq!(r.channels_opened, 2);
        assert_eq!(r.channels_closed, 2);
        assert_eq!(r.packets_sent, 96);
        assert_eq!(r.echoes_verified, 96);
        // Every packet comes back once, plus one completion per request.
        assert_eq!(r.packets_received, r.packets_sent + r.completions);
        assert!(r.completions > 0);
        assert!(r.bytes_received >= r.bytes_sent);
        assert!(r.unloaded);
        assert_eq!(r.pages_in_use, 0);
        assert_eq!(r.guest.timeouts, 0);
        // Signalling is batched: far fewer signals than packets.
        assert!(r.guest_signals > 0 && r.guest_signals < r.packets_sent);
        assert!(r.event_interrupts > 0 && r.event_interrupts < r.packets_received);
    }
}

#[test]
fn version_fallback_reaches_each_older_version() {
    for (i, &v) in vmbus_core::version::Version::GUEST_PREFERENCE.iter().enumerate().skip(1) {
        for seed in SEEDS {
            let r = assert_passes(Scenario::VersionFallback(v), seed);
            assert_eq!(r.version, Some(v));
            // One InitiateContact per version tried, newest first; a host
            // without 5.0 refuses connection id 4 with INVALID_CONNECTION_ID
            // and the guest skips straight to the pre-5.0 versions on id 1.
            let expected = if v.uses_msg_sint() { i + 1 } else { 1 + (i - 4 + 1) };
            assert_eq!(r.contact_attempts as usize, expected, "version {v}");
            assert_eq!(r.unloaded, v.supports_unload());
            assert_eq!(r.echoes_verified, 96);
        }
    }
}

#[test]
fn subchannels_are_opened_and_carry_traffic() {
    for seed in SEEDS {
        let r = assert_passes(Scenario::SubChannels, seed);
        assert_eq!(r.offers.iter().filter(|o| o.sub_channel_index > 0).count(), 2);
        assert_eq!(r.channels_opened, 4);
        assert_eq!(r.echoes_verified, 4 * 48);
    }
}

#[test]
fn every_fault_kind_is_injected_and_handled() {
    let mut kinds = 0;
    for s in Scenario::all() {
        let Scenario::Fault(kind) = s else { continue };
        kinds += 1;
        for seed in SEEDS {
            let r = assert_passes(s, seed);
            assert_eq!(r.faults.len(), 1, "{}", s.name());
            let f = r.faults[0];
            assert_eq!(f.kind, kind);
            assert!(f.outcome.handled());
            assert!(s.accepted_outcomes().contains(&f.outcome), "{}: {:?}", s.name(), f.outcome);
            match kind {
                FaultKind::MalformedMessage(_) => {
                    assert!(r.guest.messages_rejected + r.guest.bad_slots >= 1)
                }
                FaultKind::HypercallBusy => assert!(r.guest.post_retries >= 3),
                FaultKind::Rescind(_) => assert_eq!(r.guest.relids_released, 1),
                _ => {}
            }
            if f.outcome == Outcome::ChannelShutDown {
                assert_eq!(r.guest.channels_shut_down, 1);
            }
        }
    }
    assert_eq!(kinds, 7 + 5 + 3 + 6 + 4 + 1 + 1 + 2);
}

#[test]
fn the_checker_can_fail() {
    // A fault scenario whose machine never injects is reported as failed.
    let s = Scenario::Fault(FaultKind::HostStopsAnswering);
    let mut config = s.config(1);
    config.fault = None;
    let mut r = Sim::new(config).unwrap().run();
    assert!(r.faults.is_empty());
    s.check(&mut r, 48);
    assert!(r.failures.contains(&vmbus_sim::report::Expectation::NoFaultInjected), "{r}");
    // A run that lost a channel does not pass as the happy path.
    let mut r = Sim::new(Scenario::Fault(FaultKind::Rescind(vmbus_sim::fault::RescindPoint::MidTraffic)).config(1))
        .unwrap()
        .run();
    Scenario::Happy.check(&mut r, 48);
    assert!(!r.passed());
    // Wrong version expectation.
    let mut r = Scenario::VersionFallback(vmbus_core::version::Version::WIN8).run(1);
    assert!(r.passed());
    Scenario::Happy.check(&mut r, 48);
    assert!(!r.passed());
}

#[test]
fn step_budget_bounds_a_run() {
    let mut config = SimConfig::new(3);
    config.step_budget = 20;
    let r = Sim::new(config).unwrap().run();
    assert!(r.budget_exhausted);
    assert_eq!(r.steps, 20);
}

#[test]
fn every_scenario_passes_for_forty_consecutive_seeds() {
    // Sweeps interleavings and injection points; each run is a few ms.
    for s in Scenario::all() {
        for seed in 100..140 {
            assert_passes(s, seed);
        }
    }
}

#[test]
fn chaos_injects_a_series_and_the_guest_handles_each() {
    for seed in SEEDS {
        let r = assert_passes(Scenario::Chaos, seed);
        let plan = Scenario::chaos_plan(seed);
        assert!(!r.faults.is_empty() && r.faults.len() <= plan.len());
        // Fired in plan order, at increasing steps.
        for (f, k) in r.faults.iter().zip(&plan) {
            assert_eq!(f.kind, *k);
        }
        assert!(r.faults.windows(2).all(|w| w[0].step <= w[1].step));
        assert!(r.faults.iter().all(|f| f.outcome.handled() && f.observed.is_some()));
        assert!(r.unloaded);
        assert_eq!(r.pages_in_use, 0);
    }
    // Plans differ between seeds.
    assert_ne!(Scenario::chaos_plan(1), Scenario::chaos_plan(2));
}

#[test]
fn a_guest_waiting_for_channels_that_never_come_gives_up() {
    // The guest expects 4 channels but the host offers no sub-channels.
    let mut config = SimConfig::new(5);
    config.guest.min_channels = 4;
    let r = Sim::new(config).unwrap().run();
    assert!(!r.stuck && !r.budget_exhausted);
    assert_eq!(r.guest.timeouts, 1);
    assert!(r.unloaded);
    assert_eq!(r.echoes_verified, 96);
}
