// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! A simulated Hyper-V host for testing VMBus guest code end to end.
//!
//! The pieces, bottom up:
//!
//! * [`memory`]: guest-physical memory (an arena addressed by frame number),
//!   the guest's shared-memory allocator and the host's view of GPADL pages;
//! * [`synic`]: the SINT 2 message slot with the hypervisor's queue behind
//!   it (msg_pending, EOM) and the 2048 event flags;
//! * [`hypercall`]: HvPostMessage and HvSignalEvent with real status codes;
//! * [`bus`]: the host: `vmbus_core::host::Server` wired to the above, ring
//!   mapping on open, device models run when their channel is signalled;
//! * [`devices`]: host-side device models ([`devices::echo`] for now);
//! * [`guest`]: the simulated guest OS around `vmbus_core::client` and the
//!   channel endpoints;
//! * [`sched`]: the deterministic seeded scheduler (SplitMix64);
//! * [`fault`]: fault kinds and how the guest handled each;
//! * [`sim`]: one whole machine, run to completion, with the fault injector;
//! * [`scenario`]: named, seeded scenarios with their expectations;
//! * [`report`]: what a run produced.
//!
//! The core is `no_std` + `alloc` so a kernel module can embed it; the `std`
//! feature adds the `vmbus-sim` command (demo, scenarios, a threaded soak).
//!
//! `unsafe` is confined to [`memory`] (the arena and ring descriptions).
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
