// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The traits the OS glue (or the simulator) implements for the guest side.
//!
//! Kept deliberately small, in the spirit of virtio-drivers' `Hal`: one
//! trait for memory the host may see, one for the two hypercalls VMBus
//! needs. Incoming traffic is *pushed* into the core by the glue: it hands
//! each SynIC message to [`crate::client`] and polls the channels whose
//! event bits are set.

// Declaring an unsafe trait is the point of this module: it states the
// contract the ring and GPADL code rely on.
#![allow(unsafe_code)]

use crate::hv::HvStatus;
use core::ptr::NonNull;

/// Hyper-V's page size. PFNs in GPADLs and GPA-direct ranges are always in
/// 4 KiB units, whatever the guest's own page size.
pub const HV_PAGE_SIZE: usize = 4096;
/// `log2(HV_PAGE_SIZE)`.
pub const HV_PAGE_SHIFT: u32 = 12;

/// A run of whole 4 KiB pages that the host may read and write.
#[derive(Debug)]
pub struct SharedRegion {
    /// Virtual address of the first byte, 4096-aligned.
    pub vaddr: NonNull<u8>,
    /// Length in 4 KiB pages.
    pub pages: usize,
    /// Opaque value for the allocator (e.g. its own handle); the core never reads it.
    pub token: usize,
}

impl SharedRegion {
    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.pages * HV_PAGE_SIZE
    }
    /// Whether the region has no pages.
    pub const fn is_empty(&self) -> bool {
        self.pages == 0
    }
}

/// Why the platform could not allocate shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocError;

/// Memory the host can see (ring buffers, GPADL buffers).
///
/// # Safety
///
/// An implementation promises that a region returned by
/// [`alloc_shared`](SharedMemory::alloc_shared) is zeroed, 4096-aligned, valid
/// for reads and writes of `pages * 4096` bytes until it is passed to
/// [`free_shared`](SharedMemory::free_shared), not used by anything else in
/// the guest, and reachable by the host at exactly the frames
/// [`frame`](SharedMemory::frame) reports. The core relies on this to build
/// GPADLs and to access rings through raw pointers.
pub unsafe trait SharedMemory {
    /// Allocates `pages` zeroed, host-visible 4 KiB pages. The pages need not
    /// be physically contiguous, but they are virtually contiguous.
    fn alloc_shared(&self, pages: usize) -> Result<SharedRegion, AllocError>;

    /// Releases a region.
    ///
    /// # Safety
    ///
    /// `region` came from `alloc_shared` on this allocator, and the host can
    /// no longer reach it (its GPADL has been torn down, or the host is gone).
    unsafe fn free_shared(&self, region: SharedRegion);

    /// Guest-physical frame number (4 KiB units) of page `index` of `region`.
    /// Returns `None` for an index outside the region.
    fn frame(&self, region: &SharedRegion, index: usize) -> Option<u64>;

    /// Guest-physical frame number of the 4 KiB page holding `vaddr`, for
    /// buffers sent to the host by GPA-direct packets. `None` when the address
    /// cannot be translated.
    fn frame_of(&self, vaddr: *const u8) -> Option<u64>;
}

/// The two hypercalls VMBus makes.
///
/// Methods take `&self` so that ring writers on different CPUs can signal
/// without sharing a lock; an implementation uses per-CPU hypercall input
/// pages or its own locking.
pub trait Hypervisor {
    /// HvPostMessage: sends one channel message (at most 240 bytes) to
    /// `connection_id` with message type [`crate::hv::VMBUS_MESSAGE_TYPE`].
    fn post_message(&self, connection_id: u32, message: &[u8]) -> HvStatus;

    /// HvSignalEvent: interrupts the host for the channel whose offer carried
    /// `connection_id`.
    fn signal_event(&self, connection_id: u32) -> HvStatus;
}

/// A shared reference to a hypervisor is a hypervisor, so adapters such as
/// `client::RetryingHypervisor` can wrap a borrowed one.
impl<T: Hypervisor + ?Sized> Hypervisor for &T {
    fn post_message(&self, connection_id: u32, message: &[u8]) -> HvStatus {
        (**self).post_message(connection_id, message)
    }

    fn signal_event(&self, connection_id: u32) -> HvStatus {
        (**self).signal_event(connection_id)
    }
}
