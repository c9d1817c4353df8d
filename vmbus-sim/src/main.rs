// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! `vmbus-sim`: runs the simulated Hyper-V host against the simulated guest.
//!
//! ```text
//! vmbus-sim demo [--seed N]            every scenario, printed readably
//! vmbus-sim scenario <name> [--seed N] one scenario
//! vmbus-sim list                       scenario names
//! vmbus-sim soak [--seeds N] [--jobs J] every scenario with seeds 1..=N on J threads
//! vmbus-sim bench                      end-to-end packets/s through the simulated host
//! ```
//!
//! Exit status 0 when every expectation held, 1 otherwise, 2 on bad usage.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use vmbus_sim::report::Report;
use vmbus_sim::scenario::Scenario;

const USAGE: &str =
    "usage: vmbus-sim demo [--seed N] | scenario <name> [--seed N] | list | soak [--seeds N] [--jobs N] | bench";

fn parse_seed(args: &[String]) -> Result<u64, String> {
    let mut seed = 1;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--seed" => {
                let v = args.get(i + 1).ok_or("--seed needs a value")?;
                seed = if let Some(hex) = v.strip_prefix("0x") { u64::from_str_radix(hex, 16) } else { v.parse() }
                    .map_err(|_| format!("bad seed {v:?}"))?;
                i += 2;
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    Ok(seed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match cmd.as_str() {
        "list" => {
            for s in Scenario::all() {
                println!("{}", s.name());
            }
            ExitCode::SUCCESS
        }
        "demo" => {
            let seed = match parse_seed(&args[1..]) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            };
            if demo(seed) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        "soak" => match parse_soak(&args[1..]) {
            Ok((seeds, jobs)) => {
                if soak(seeds, jobs) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        "bench" => {
            bench();
            ExitCode::SUCCESS
        }
        "scenario" => {
            let Some(name) = args.get(1) else {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            };
            let Some(s) = Scenario::from_name(name) else {
                eprintln!("unknown scenario {name:?}; try `vmbus-sim list`");
                return ExitCode::from(2);
            };
            let seed = match parse_seed(&args[2..]) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}\n{USAGE}");
                    return ExitCode::from(2);
                }
            };
            let r = s.run(seed);
            println!("{r}");
            if r.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Runs every scenario with `seed`, printing the happy path and the
/// sub-channel run in full and the rest as one block each. Returns whether all passed.
fn demo(seed: u64) -> bool {
    println!("vmbus-sim demo: the vmbus-core guest against the simulated Hyper-V host, seed {seed:#x}");
    let all = Scenario::all();
    let reports: Vec<(Scenario, Report)> = all.iter().map(|s| (*s, s.run(seed))).collect();
    let section = |title: &str| println!("\n--- {title} ---");
    section("happy path (full report)");
    for (s, r) in &reports {
        if matches!(s, Scenario::Happy) {
            print!("{r}");
            println!("  channel messages, in order:");
            print!("{}", r.trace_lines());
        }
    }
    section("version negotiation: host restricted to one older version each");
    for (s, r) in &reports {
        if matches!(s, Scenario::VersionFallback(_)) {
            println!("{}", r.summary());
        }
    }
    section("sub-channels (full report)");
    for (s, r) in &reports {
        if matches!(s, Scenario::SubChannels) {
            print!("{r}");
        }
    }
    section("fault injection: one fault per run, how the guest handled it");
    for (s, r) in &reports {
        if let Scenario::Fault(kind) = s {
            let _ = kind;
            println!("{}", r.summary());
        }
    }
    section("chaos: a seeded series of faults in one run (full report)");
    for (s, r) in &reports {
        if matches!(s, Scenario::Chaos) {
            print!("{r}");
        }
    }
    let failed: Vec<&Report> = reports.iter().map(|(_, r)| r).filter(|r| !r.passed()).collect();
    let packets: u64 = reports.iter().map(|(_, r)| r.packets_sent + r.packets_received).sum();
    let bytes: u64 = reports.iter().map(|(_, r)| r.bytes_sent + r.bytes_received).sum();
    let faults: usize = reports.iter().map(|(_, r)| r.faults.len()).sum();
    println!(
        "\n{} scenarios: {} passed, {} failed; {} packets and {} bytes moved in all; {} faults injected, {} handled",
        reports.len(),
        reports.len() - failed.len(),
        failed.len(),
        packets,
        bytes,
        faults,
        reports.iter().flat_map(|(_, r)| &r.faults).filter(|f| f.outcome.handled()).count()
    );
    for r in &failed {
        println!("  FAILED: {}", r.scenario_name);
    }
    failed.is_empty()
}

fn parse_soak(args: &[String]) -> Result<(u64, usize), String> {
    let (mut seeds, mut jobs) = (20u64, 2usize);
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).ok_or(format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--seeds" => seeds = v.parse().map_err(|_| format!("bad count {v:?}"))?,
            "--jobs" => jobs = v.parse().map_err(|_| format!("bad count {v:?}"))?,
            other => return Err(format!("unexpected argument {other:?}")),
        }
        i += 2;
    }
    Ok((seeds, jobs.max(1)))
}

/// Every scenario with seeds 1..=`seeds`, spread over `jobs` threads (each
/// simulation is single-threaded and self-contained). Prints failures only.
fn soak(seeds: u64, jobs: usize) -> bool {
    let work: Vec<(Scenario, u64)> =
        Scenario::all().into_iter().flat_map(|s| (1..=seeds).map(move |seed| (s, seed))).collect();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(s, seed)) = work.get(i) else { break };
                let r = s.run(seed);
                if !r.passed() {
                    failures.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{r}"));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    for f in &failures {
        println!("{f}");
    }
    println!("soak: {} runs on {jobs} thread(s), {} failed", work.len(), failures.len());
    failures.is_empty()
}

/// End-to-end throughput of guest -> ring -> echo device -> ring -> guest,
/// with the control plane included (a few seconds at most).
fn bench() {
    use vmbus_sim::sim::{Sim, SimConfig};
    for (payload, ring_pages) in [(64usize, 16usize), (1500, 16), (1500, 64)] {
        let mut config = SimConfig::new(1);
        config.extra_offers = false;
        config.guest.packets_per_channel = 20_000;
        config.guest.max_payload = payload;
        config.guest.ring_pages = ring_pages;
        config.guest.poll_budget = 64;
        config.step_budget = 10_000_000;
        config.memory_pages = 1024;
        let Some(sim) = Sim::new(config) else {
            println!("bench: could not build the machine");
            return;
        };
        let start = std::time::Instant::now();
        let r = sim.run();
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let packets = r.packets_sent + r.packets_received;
        println!(
            "payload 1..={payload:>4} B, rings {ring_pages:>2} pages: {:>8.0} packets/s, {:>7.1} MB/s, {} echoes verified, \
             {} guest signals and {} interrupts per 1000 packets{}",
            packets as f64 / secs,
            (r.bytes_sent + r.bytes_received) as f64 / secs / 1e6,
            r.echoes_verified,
            r.guest_signals * 1000 / r.packets_sent.max(1),
            r.event_interrupts * 1000 / r.packets_received.max(1),
            if r.passed() { "" } else { " (run incomplete)" }
        );
    }
}
