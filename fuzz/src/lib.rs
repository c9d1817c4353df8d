// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Shared pieces of the fuzz targets: structured (`arbitrary`) guest and host
//! messages that are often well-formed, so the fuzzer gets past the parsers
//! into the state machines, plus raw bytes so it also sees the malformed
//! paths; and the invariants the host server must keep after every step.

pub mod guest;
pub mod host_check;
