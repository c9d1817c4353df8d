// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Portable VMBus protocol core.
//!
//! Everything a Hyper-V guest (or a simulated host) needs to speak VMBus,
//! written as sans-I/O state machines over bytes and a few small traits:
//!
//! * [`guid`], [`version`], [`hv`]: identifiers, protocol versions and the
//!   SynIC / hypercall constants underneath VMBus;
//! * [`message`]: every channel message (types 1 to 24) with checked parse and emit;
//! * [`packet`]: ring packet descriptors and their extended headers;
//! * [`ring`]: the shared ring buffer, a writer half and a reader half;
//! * [`gpadl`]: splitting page lists into GPADL header and body messages;
//! * [`reqid`]: transaction-id tables, so a completion is taken only for an
//!   outstanding id;
//! * [`channel`]: a guest channel endpoint (ring halves + signalling);
//! * [`client`]: the guest side (contact, offers, open/close, rescind, unload);
//! * `lifecycle` (feature `alloc`): one channel's open and close sequence
//!   around the client, owning its ring memory;
//! * `host` (feature `host`): the same protocol from the host's seat;
//! * [`platform`]: the traits the OS glue implements (memory, hypervisor).
//!
//! The host is untrusted: every value read from a host message or from shared
//! memory is validated before use, and bad input yields an error value and a
//! counter, never a panic.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(any(test, feature = "std"))]
extern crate std;

pub mod channel;
pub mod client;
pub mod gpadl;
pub mod guid;
#[cfg(feature = "host")]
pub mod host;
pub mod hv;
#[cfg(feature = "alloc")]
pub mod lifecycle;
pub mod message;
pub mod packet;
pub mod platform;
pub mod reqid;
pub mod ring;
pub mod version;
