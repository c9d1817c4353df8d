// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The command-line front end: output and exit codes.

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmbus-sim")).args(args).output().expect("run vmbus-sim");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn list_names_every_scenario() {
    let (code, out) = sim(&["list"]);
    assert_eq!(code, 0);
    let names: Vec<&str> = out.lines().collect();
    assert_eq!(names.len(), vmbus_sim::scenario::Scenario::all().len());
    assert!(names.contains(&"happy") && names.contains(&"chaos") && names.contains(&"rescind-during-open"));
}

#[test]
fn demo_prints_the_essentials_and_passes() {
    let (code, out) = sim(&["demo", "--seed", "0x2a"]);
    assert_eq!(code, 0, "{out}");
    for needle in [
        "negotiated VMBus version 5.3",
        "offers: 4",
        "channels opened: 2",
        "echoes verified",
        "HvSignalEvent",
        "event interrupts",
        "guest saw:",
        "handled:",
        "scenarios:",
        "0 failed",
    ] {
        assert!(out.contains(needle), "demo output lacks {needle:?}");
    }
}

#[test]
fn scenario_and_usage_exit_codes() {
    let (code, out) = sim(&["scenario", "rescind-mid-traffic", "--seed", "9"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("rescind mid-traffic"));
    assert_eq!(sim(&["scenario", "no-such-thing"]).0, 2);
    assert_eq!(sim(&["demo", "--seed", "nope"]).0, 2);
    assert_eq!(sim(&[]).0, 2);
    assert_eq!(sim(&["bogus"]).0, 2);
}
