// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! A simulated Hyper-V host for testing VMBus guest code end to end.
//!
//! The pieces, bottom up:
//!
//! * [`memory`]: guest-physical memory (an arena addressed by frame number)
//!   and the guest's shared-memory allocator;
//! * [`synic`]: the SINT 2 message slot with its queue, EOM, and the event flags;
//! * [`hypercall`]: HvPostMessage and HvSignalEvent with real status codes;
//! * [`sched`]: the deterministic seeded scheduler.
//!
//! The core is `no_std` + `alloc` so a kernel module can embed it; the `std`
//! feature adds the command-line demo.
#![no_std]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod bus;
pub mod devices;
pub mod fault;
pub mod guest;
pub mod hypercall;
pub mod memory;
pub mod report;
pub mod scenario;
pub mod sched;
pub mod sim;
pub mod synic;
