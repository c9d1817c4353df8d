// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Simulated guest-physical memory.
//!
//! One page-aligned arena stands for the guest's RAM that the host can see.
//! Page `i` of the arena has guest frame number `base_pfn + i`; frames
//! outside the arena do not exist, so a PFN the guest made up (or a
//! malformed GPADL) is refused instead of touching random host memory.
//!
//! The guest allocates from the arena through
//! [`vmbus_core::platform::SharedMemory`] (contiguous runs, like Linux's
//! single contiguous ring allocation). The host reaches guest memory by
//! frame number: [`GuestMemory::read`] / [`GuestMemory::write`] for byte
//! copies and [`GuestMemory::map_contiguous`] for the one mapping the ring
//! code needs.
//!
//! This is the only module of the crate that uses `unsafe`: it owns the raw
//! arena. All access goes through raw pointers (never a `&`/`&mut` into the
//! arena), because both simulated sides write it.
#![allow(unsafe_code)]

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::ptr::NonNull;
use vmbus_core::platform::{AllocError, SharedMemory, SharedRegion, HV_PAGE_SIZE};
use vmbus_core::ring::{Mapping as RingMapping, RingMemory};

/// Why a guest-physical access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryError {
    /// A frame number outside the arena.
    BadFrame(u64),
    /// An address range that leaves the arena.
    OutOfRange {
        /// First guest-physical address.
        gpa: u64,
        /// Length in bytes.
        len: usize,
    },
    /// A page list that is not one contiguous run (the ring code needs one mapping).
    NotContiguous {
        /// Index in the list of the first frame that breaks the run.
        index: usize,
    },
    /// An empty page list.
    Empty,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryError::BadFrame(pfn) => write!(f, "frame {pfn:#x} is not guest memory"),
            MemoryError::OutOfRange { gpa, len } => write!(f, "{len} bytes at {gpa:#x} leave guest memory"),
            MemoryError::NotContiguous { index } => write!(f, "page list breaks contiguity at entry {index}"),
            MemoryError::Empty => f.write_str("empty page list"),
        }
    }
}

/// A host-side view of a contiguous run of guest pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Host pointer to the first byte of the first page.
    pub ptr: NonNull<u8>,
    /// Length in bytes (whole pages).
    pub len: usize,
    /// First frame number.
    pub first_pfn: u64,
}

/// The raw allocation behind a [`GuestMemory`]. Reference-counted so that
/// whoever holds ring halves pointing into it (the simulated host and guest
/// hold an [`ArenaRef`]) keeps it alive.
struct Arena {
    base: NonNull<u8>,
    layout: Layout,
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `base` came from `alloc_zeroed(self.layout)` and is freed once, here.
        unsafe { dealloc(self.base.as_ptr(), self.layout) };
    }
}

/// Keeps a [`GuestMemory`]'s arena alive; held next to ring halves that point into it.
#[derive(Clone)]
pub struct ArenaRef(Rc<Arena>);

impl fmt::Debug for ArenaRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArenaRef").field(&self.0.base).finish()
    }
}

impl ArenaRef {
    /// Whether this keeps `mem`'s arena alive.
    pub fn is_of(&self, mem: &GuestMemory) -> bool {
        Rc::ptr_eq(&self.0, &mem.arena)
    }
}

/// Simulated guest RAM: a zeroed, 4096-aligned arena and a page allocator over it.
pub struct GuestMemory {
    arena: Rc<Arena>,
    base: NonNull<u8>,
    layout: Layout,
    pages: usize,
    base_pfn: u64,
    /// `used[i]` is true while page `i` is allocated.
    used: RefCell<Vec<bool>>,
    stats: RefCell<MemoryStats>,
}

/// Allocation counters (leak detection in scenarios).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Regions handed out.
    pub allocs: u64,
    /// Regions returned.
    pub frees: u64,
    /// Pages currently allocated.
    pub pages_in_use: usize,
    /// Allocation requests refused (no contiguous run large enough).
    pub alloc_failures: u64,
}

impl fmt::Debug for GuestMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemory")
            .field("pages", &self.pages)
            .field("base_pfn", &self.base_pfn)
            .field("stats", &*self.stats.borrow())
            .finish()
    }
}

impl GuestMemory {
    /// Default first frame number: frame 0 is deliberately not RAM, so a
    /// zeroed PFN is always caught.
    pub const DEFAULT_BASE_PFN: u64 = 0x100;

    /// Allocates an arena of `pages` zeroed 4 KiB pages whose first frame is
    /// `base_pfn`. Returns `None` if the host allocation fails or the size overflows.
    pub fn new(pages: usize, base_pfn: u64) -> Option<GuestMemory> {
        if pages == 0 {
            return None;
        }
        let bytes = pages.checked_mul(HV_PAGE_SIZE)?;
        base_pfn.checked_add(pages as u64)?;
        let layout = Layout::from_size_align(bytes, HV_PAGE_SIZE).ok()?;
        // SAFETY: `layout` has a non-zero size (pages > 0) and a valid power-of-two alignment.
        let raw = unsafe { alloc_zeroed(layout) };
        let base = NonNull::new(raw)?;
        Some(GuestMemory {
            arena: Rc::new(Arena { base, layout }),
            base,
            layout,
            pages,
            base_pfn,
            used: RefCell::new(vec![false; pages]),
            stats: RefCell::new(MemoryStats::default()),
        })
    }

    /// Number of pages in the arena.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Frame number of the first page.
    pub fn base_pfn(&self) -> u64 {
        self.base_pfn
    }

    /// Allocation counters.
    pub fn stats(&self) -> MemoryStats {
        *self.stats.borrow()
    }

    /// Whether `pfn` names a page of the arena.
    pub fn contains_pfn(&self, pfn: u64) -> bool {
        pfn >= self.base_pfn && pfn - self.base_pfn < self.pages as u64
    }

    /// Frame number of the page holding host pointer `ptr`, if it is inside the arena.
    pub fn pfn_of(&self, ptr: *const u8) -> Option<u64> {
        let off = (ptr as usize).checked_sub(self.base.as_ptr() as usize)?;
        if off >= self.layout.size() {
            return None;
        }
        Some(self.base_pfn + (off / HV_PAGE_SIZE) as u64)
    }

    /// Host pointer to the first byte of frame `pfn` (null if it is not guest memory).
    pub fn frame_of_ptr(&self, pfn: u64) -> *mut u8 {
        if !self.contains_pfn(pfn) {
            return core::ptr::null_mut();
        }
        self.base.as_ptr().wrapping_add((pfn - self.base_pfn) as usize * HV_PAGE_SIZE)
    }

    /// Byte offset in the arena of `[gpa, gpa + len)`, if the whole range is inside.
    fn offset_of(&self, gpa: u64, len: usize) -> Result<usize, MemoryError> {
        let err = MemoryError::OutOfRange { gpa, len };
        let start = gpa.checked_sub(self.base_pfn.checked_mul(HV_PAGE_SIZE as u64).ok_or(err)?).ok_or(err)?;
        let end = start.checked_add(len as u64).ok_or(err)?;
        if end > self.layout.size() as u64 {
            return Err(err);
        }
        Ok(start as usize)
    }

    /// Copies `buf.len()` bytes from guest-physical address `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let off = self.offset_of(gpa, buf.len())?;
        // SAFETY: `offset_of` checked that `off + buf.len()` lies inside the
        // arena, which is live for `self`'s lifetime; `buf` is private memory
        // that cannot overlap the arena (no reference into the arena is ever
        // handed out). The other side may write concurrently only in the
        // threaded variant; the copy reads bytes, and callers parse the copy.
        unsafe { core::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `data` to guest-physical address `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let off = self.offset_of(gpa, data.len())?;
        // SAFETY: as in `read`: the destination range is inside the live arena
        // and `data` is outside it.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), self.base.as_ptr().add(off), data.len()) };
        Ok(())
    }

    /// Reads a little-endian u32 at `gpa`.
    pub fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Writes a little-endian u32 at `gpa`.
    pub fn write_u32(&self, gpa: u64, value: u32) -> Result<(), MemoryError> {
        self.write(gpa, &value.to_le_bytes())
    }

    /// Maps a page list for the host. Every frame must be guest memory and
    /// the list one ascending contiguous run, so the ring code gets a single
    /// mapping; anything else is refused.
    pub fn map_contiguous(&self, pfns: &[u64]) -> Result<Mapping, MemoryError> {
        let first = *pfns.first().ok_or(MemoryError::Empty)?;
        for (i, &pfn) in pfns.iter().enumerate() {
            if !self.contains_pfn(pfn) {
                return Err(MemoryError::BadFrame(pfn));
            }
            if pfn != first + i as u64 {
                return Err(MemoryError::NotContiguous { index: i });
            }
        }
        let off = (first - self.base_pfn) as usize * HV_PAGE_SIZE;
        // SAFETY: `first` is inside the arena, so `off` is within the
        // allocation and the result is non-null.
        let ptr = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(off)) };
        Ok(Mapping { ptr, len: pfns.len() * HV_PAGE_SIZE, first_pfn: first })
    }

    /// Finds and marks a run of `pages` free pages (first fit).
    fn take_run(&self, pages: usize) -> Option<usize> {
        let mut used = self.used.borrow_mut();
        let mut run = 0;
        for i in 0..used.len() {
            if used[i] {
                run = 0;
                continue;
            }
            run += 1;
            if run == pages {
                let start = i + 1 - pages;
                used[start..=i].iter_mut().for_each(|u| *u = true);
                return Some(start);
            }
        }
        None
    }
}

impl GuestMemory {
    /// A handle that keeps the arena alive (for holders of ring halves).
    pub fn arena_ref(&self) -> ArenaRef {
        ArenaRef(self.arena.clone())
    }

    /// Describes the ring whose control page is frame `first_pfn`, followed
    /// by `ring_pages - 1` data pages, all inside the arena.
    ///
    /// Crate-internal contract (why this is safe to call): the caller keeps an
    /// [`ArenaRef`] of this memory for as long as halves built from the
    /// result exist (the bus and the guest hold one and check it on every
    /// step), and builds at most one writer and one reader per ring.
    pub(crate) fn ring_memory(&self, first_pfn: u64, ring_pages: usize) -> Result<RingMemory, MemoryError> {
        if ring_pages < 2 {
            return Err(MemoryError::Empty);
        }
        let last = first_pfn.checked_add(ring_pages as u64 - 1).ok_or(MemoryError::BadFrame(first_pfn))?;
        if !self.contains_pfn(first_pfn) {
            return Err(MemoryError::BadFrame(first_pfn));
        }
        if !self.contains_pfn(last) {
            return Err(MemoryError::BadFrame(last));
        }
        let off = (first_pfn - self.base_pfn) as usize * HV_PAGE_SIZE;
        // SAFETY: both offsets are inside the arena (every page of the ring
        // was checked above), so the pointers are in bounds and non-null.
        let (header, data) = unsafe {
            (
                NonNull::new_unchecked(self.base.as_ptr().add(off)),
                NonNull::new_unchecked(self.base.as_ptr().add(off + HV_PAGE_SIZE)),
            )
        };
        // SAFETY: the control page and `(ring_pages - 1) * 4096` data bytes
        // lie inside the arena, which stays allocated while any `ArenaRef`
        // lives (the caller's contract above); the arena is only accessed
        // through raw pointers (no references into it exist), the ring code
        // uses atomics for the control words, and the caller builds one
        // writer and one reader per ring. `Mapping::Plain`: the data area is
        // mapped once.
        unsafe { RingMemory::new(header, data, (ring_pages - 1) * HV_PAGE_SIZE, RingMapping::Plain) }.map_err(|_| {
            MemoryError::OutOfRange { gpa: first_pfn * HV_PAGE_SIZE as u64, len: ring_pages * HV_PAGE_SIZE }
        })
    }

    /// Returns a region to the allocator (safe form of `free_shared` for the
    /// simulator): the arena stays allocated whatever happens, so a host that
    /// still touches the pages sees zeroes or the next owner's bytes, never
    /// freed memory. The simulated guest frees only what the host no longer maps.
    pub fn release(&self, region: SharedRegion) {
        // SAFETY: `region` came from this allocator (`free_shared` ignores
        // foreign tokens); the pages remain inside the live arena, so no
        // access anywhere can become a use-after-free.
        unsafe { self.free_shared(region) }
    }
}

// SAFETY: regions are carved from the zeroed, 4096-aligned arena, which lives
// as long as `self`; a run is marked used until `free_shared`, so no two
// regions overlap; pages are zeroed again on free so the next allocation is
// zeroed; `frame` reports `base_pfn + page index`, which is exactly the frame
// the simulated host resolves back to the same bytes.
unsafe impl SharedMemory for GuestMemory {
    fn alloc_shared(&self, pages: usize) -> Result<SharedRegion, AllocError> {
        if pages == 0 {
            return Err(AllocError);
        }
        let Some(start) = self.take_run(pages) else {
            self.stats.borrow_mut().alloc_failures += 1;
            return Err(AllocError);
        };
        let mut stats = self.stats.borrow_mut();
        stats.allocs += 1;
        stats.pages_in_use += pages;
        // SAFETY: `start + pages <= self.pages`, so the offset is inside the arena and non-null.
        let vaddr = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(start * HV_PAGE_SIZE)) };
        Ok(SharedRegion { vaddr, pages, token: start })
    }

    unsafe fn free_shared(&self, region: SharedRegion) {
        let start = region.token;
        let mut used = self.used.borrow_mut();
        let Some(run) = used.get_mut(start..start + region.pages) else {
            // Not one of ours: the caller broke the contract; leak rather than corrupt.
            return;
        };
        run.iter_mut().for_each(|u| *u = false);
        // SAFETY: the run `start..start + pages` is inside the arena (checked by
        // `get_mut` above) and the caller promises nothing uses it any more.
        unsafe { core::ptr::write_bytes(self.base.as_ptr().add(start * HV_PAGE_SIZE), 0, region.pages * HV_PAGE_SIZE) };
        let mut stats = self.stats.borrow_mut();
        stats.frees += 1;
        stats.pages_in_use = stats.pages_in_use.saturating_sub(region.pages);
    }

    fn frame(&self, region: &SharedRegion, index: usize) -> Option<u64> {
        if index >= region.pages {
            return None;
        }
        self.pfn_of(region.vaddr.as_ptr()).map(|first| first + index as u64)
    }

    fn frame_of(&self, vaddr: *const u8) -> Option<u64> {
        self.pfn_of(vaddr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_is_contiguous_zeroed_and_translates() {
        let mem = GuestMemory::new(16, 0x100).unwrap();
        let a = mem.alloc_shared(3).unwrap();
        let b = mem.alloc_shared(2).unwrap();
        assert_eq!(mem.frame(&a, 0), Some(0x100));
        assert_eq!(mem.frame(&a, 2), Some(0x102));
        assert_eq!(mem.frame(&a, 3), None);
        assert_eq!(mem.frame(&b, 0), Some(0x103));
        assert_eq!(a.vaddr.as_ptr() as usize % HV_PAGE_SIZE, 0);
        // Host writes by frame, guest sees it through its pointer.
        mem.write(0x101 * 4096 + 8, &[1, 2, 3]).unwrap();
        let mut buf = [0u8; 3];
        mem.read(0x101 * 4096 + 8, &mut buf).unwrap();
        assert_eq!(buf, [1, 2, 3]);
        assert_eq!(mem.frame_of(a.vaddr.as_ptr().wrapping_add(4096 + 8)), Some(0x101));
        assert_eq!(mem.stats().pages_in_use, 5);
        // SAFETY: `a` came from this allocator and nothing maps it.
        unsafe { mem.free_shared(a) };
        // The freed run is zeroed and reused first-fit.
        let c = mem.alloc_shared(3).unwrap();
        mem.read(0x101 * 4096 + 8, &mut buf).unwrap();
        assert_eq!(buf, [0, 0, 0]);
        assert_eq!(mem.frame(&c, 0), Some(0x100));
        assert_eq!(mem.stats().allocs, 3);
        assert_eq!(mem.stats().frees, 1);
    }

    #[test]
    fn refuses_bad_frames_and_ranges() {
        let mem = GuestMemory::new(4, 0x100).unwrap();
        assert_eq!(mem.map_contiguous(&[]), Err(MemoryError::Empty));
        assert_eq!(mem.map_contiguous(&[0]), Err(MemoryError::BadFrame(0)));
        assert_eq!(mem.map_contiguous(&[0x103, 0x104]), Err(MemoryError::BadFrame(0x104)));
        assert_eq!(mem.map_contiguous(&[0x100, 0x102]), Err(MemoryError::NotContiguous { index: 1 }));
        let m = mem.map_contiguous(&[0x101, 0x102]).unwrap();
        assert_eq!(m.len, 8192);
        assert_eq!(mem.pfn_of(m.ptr.as_ptr()), Some(0x101));
        assert!(mem.read(0x104 * 4096 - 2, &mut [0u8; 4]).is_err());
        assert!(mem.read(u64::MAX - 1, &mut [0u8; 4]).is_err());
        assert!(mem.write(0, &[1]).is_err());
        assert!(mem.alloc_shared(5).is_err());
        assert!(mem.alloc_shared(0).is_err());
        assert_eq!(mem.stats().alloc_failures, 1);
        assert!(GuestMemory::new(0, 0).is_none());
        assert!(GuestMemory::new(2, u64::MAX).is_none());
    }
}
