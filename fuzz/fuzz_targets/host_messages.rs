// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Arbitrary sequences of guest messages (well-formed, malformed and raw)
//! interleaved with host-side actions (offers, rescinds, open completions,
//! faults, resets) into the host server. After every step the server's
//! invariants hold (bounded queues and GPADL limits, every kept GPADL
//! consistent and owned by a live channel), every message it sends parses,
//! and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_fuzz::host_check::{apply, check_invariants, drain, small_server, Step};

fuzz_target!(|steps: Vec<Step>| {
    let mut server = small_server();
    for step in steps.iter().take(256) {
        apply(&mut server, step);
    }
    drain(&mut server);
    check_invariants(&server);
});
