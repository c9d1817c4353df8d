// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! `vmbus-sim`: runs the simulated Hyper-V host against the simulated guest.
//!
//! ```text
//! vmbus-sim demo [--seed N]            every scenario, printed readably
//! vmbus-sim scenario <name> [--seed N] one scenario
//! vmbus-sim list                       scenario names
//! ```
//!
//! Exit status 0 when every expectation held, 1 otherwise, 2 on bad usage.

use std::process::ExitCode;
use vmbus_sim::scenario::Scenario;

const USAGE: &str = "usage: vmbus-sim demo [--seed N] | scenario <name> [--seed N] | list";

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
            println!("vmbus-sim demo: simulated Hyper-V host vs. the vmbus-core guest, seed {seed:#x}\n");
            let mut failed = Vec::new();
            let all = Scenario::all();
            for s in &all {
                let r = s.run(seed);
                println!("{r}");
                if !r.passed() {
                    failed.push(s.name());
                }
            }
            println!("{} scenarios, {} passed, {} failed", all.len(), all.len() - failed.len(), failed.len());
            for f in &failed {
                println!("  FAILED: {f}");
            }
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
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
