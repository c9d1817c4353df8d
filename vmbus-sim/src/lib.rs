// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Simulated Hyper-V host (work in progress).
#![no_std]
#[cfg(feature = "std")]
extern crate std;
