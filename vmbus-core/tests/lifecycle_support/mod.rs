// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Test world for the channel lifecycle: the scripted client harness, a
//! `SharedMemory` that records every allocation and free and fails the test
//! if a region is freed while the (scripted) host may still map it, and a
//! driver that feeds host messages to the client and its events to the
//! lifecycle.
#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::ptr::NonNull;

use crate::client_support::*;
use vmbus_core::client::ClientEvent;
use vmbus_core::lifecycle::{ChannelLifecycle, OpenRequest, Progress};
use vmbus_core::message::{ChannelMessage, MessageType};
use vmbus_core::platform::{AllocError, SharedMemory, SharedRegion, HV_PAGE_SIZE};

/// First frame number handed out; region `t` starts at `FRAME_BASE + t * 0x1000`.
pub const FRAME_BASE: u64 = 0x10_0000;

struct Slot {
    base: NonNull<u8>,
    layout: Layout,
    freed: bool,
    /// The host may reach the pages (GPADL posted, not yet let go).
    mapped: bool,
}

/// Records allocations; panics on a free while the host may map the region,
/// on a double free and on a foreign region.
#[derive(Default)]
pub struct TrackingMemory {
    slots: RefCell<Vec<Slot>>,
    pub allocs: Cell<u32>,
    pub frees: Cell<u32>,
    pub fail_alloc: Cell<bool>,
}

impl TrackingMemory {
    /// The region whose frames start at `pfn`, if any.
    pub fn token_of_frame(&self, pfn: u64) -> Option<usize> {
        let t = (pfn.checked_sub(FRAME_BASE)? / 0x1000) as usize;
        (t < self.slots.borrow().len()).then_some(t)
    }
    /// The host may now reach region `token`.
    pub fn host_maps(&self, token: usize) {
        self.slots.borrow_mut()[token].mapped = true;
    }
    /// The host let go of region `token`.
    pub fn host_unmaps(&self, token: usize) {
        self.slots.borrow_mut()[token].mapped = false;
    }
    /// The host let go of everything (unload).
    pub fn host_unmaps_all(&self) {
        self.slots.borrow_mut().iter_mut().for_each(|s| s.mapped = false);
    }
    pub fn is_mapped(&self, token: usize) -> bool {
        self.slots.borrow()[token].mapped
    }
    pub fn is_freed(&self, token: usize) -> bool {
        self.slots.borrow()[token].freed
    }
    pub fn live(&self) -> u32 {
        self.allocs.get() - self.frees.get()
    }
    /// Reads a little-endian u32 at byte `offset` of live region `token`.
    pub fn read_u32(&self, token: usize, offset: usize) -> u32 {
        let slots = self.slots.borrow();
        let s = &slots[token];
        assert!(!s.freed && offset + 4 <= s.layout.size());
        let mut b = [0u8; 4];
        // SAFETY: the range is inside the live allocation (checked above); a
        // byte copy out of it, no reference into it is kept.
        unsafe { std::ptr::copy_nonoverlapping(s.base.as_ptr().add(offset), b.as_mut_ptr(), 4) };
        u32::from_le_bytes(b)
    }
    /// Copies bytes out of live region `token`.
    pub fn read(&self, token: usize, offset: usize, buf: &mut [u8]) {
        let slots = self.slots.borrow();
        let s = &slots[token];
        assert!(!s.freed && offset + buf.len() <= s.layout.size());
        // SAFETY: as in `read_u32`.
        unsafe { std::ptr::copy_nonoverlapping(s.base.as_ptr().add(offset), buf.as_mut_ptr(), buf.len()) };
    }
}

// SAFETY: every region is a fresh zeroed, 4096-aligned allocation of
// `pages * 4096` bytes, freed only by `free_shared` (or when the tracker is
// dropped, after every lifecycle using it); frames are unique per page.
unsafe impl SharedMemory for TrackingMemory {
    fn alloc_shared(&self, pages: usize) -> Result<SharedRegion, AllocError> {
        if self.fail_alloc.get() || pages == 0 || pages > 0x800 {
            return Err(AllocError);
        }
        let layout = Layout::from_size_align(pages * HV_PAGE_SIZE, HV_PAGE_SIZE).map_err(|_| AllocError)?;
        // SAFETY: non-zero size.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(AllocError)?;
        let mut slots = self.slots.borrow_mut();
        slots.push(Slot { base, layout, freed: false, mapped: false });
        self.allocs.set(self.allocs.get() + 1);
        Ok(SharedRegion { vaddr: base, pages, token: slots.len() - 1 })
    }

    unsafe fn free_shared(&self, region: SharedRegion) {
        let mut slots = self.slots.borrow_mut();
        let s = slots.get_mut(region.token).expect("freed a region this allocator never made");
        assert_eq!(s.base, region.vaddr, "foreign region");
        assert!(!s.freed, "double free of region {}", region.token);
        assert!(!s.mapped, "region {} freed while the host may still map it", region.token);
        s.freed = true;
        // SAFETY: allocated in `alloc_shared` with this layout, freed once (checked).
        unsafe { dealloc(s.base.as_ptr(), s.layout) };
        self.frees.set(self.frees.get() + 1);
    }

    fn frame(&self, region: &SharedRegion, index: usize) -> Option<u64> {
        (index < region.pages).then(|| FRAME_BASE + region.token as u64 * 0x1000 + index as u64)
    }

    fn frame_of(&self, _vaddr: *const u8) -> Option<u64> {
        None
    }
}

impl Drop for TrackingMemory {
    fn drop(&mut self) {
        for s in self.slots.borrow_mut().iter_mut().filter(|s| !s.freed) {
            // SAFETY: a leaked (kept) region: allocated with this layout, not yet freed;
            // its lifecycle was dropped before the tracker (field order in `World`).
            unsafe { dealloc(s.base.as_ptr(), s.layout) };
            s.freed = true;
        }
    }
}

pub type Life = ChannelLifecycle<TrackingMemory, Vec<u8>>;

pub const RELID: u32 = 7;
pub const OUT_PAGES: usize = 4;
pub const IN_PAGES: usize = 3;

pub fn request() -> OpenRequest<'static> {
    OpenRequest { out_pages: OUT_PAGES, in_pages: IN_PAGES, target_vp: 2, user_data: &[0xAB, 0xCD] }
}

/// The client harness, one lifecycle for `RELID` and the tracking memory.
/// Field order matters: the lifecycle (and its ring halves) drops first.
pub struct World {
    pub life: Life,
    pub h: Harness,
    pub mem: TrackingMemory,
}

impl World {
    /// Connected at 5.3 with `RELID` offered.
    pub fn new() -> World {
        let mut h = Harness::connected();
        h.offer_primary(RELID);
        World { life: Life::new(RELID), h, mem: TrackingMemory::default() }
    }

    /// Posted messages since the last call; the host "maps" the region of any
    /// GPADL header among them.
    pub fn posted(&mut self) -> Vec<super::client_support::Posted> {
        let posted = self.h.hv.take();
        for p in &posted {
            if let ChannelMessage::GpadlHeader(g) = p.parse() {
                let first = g.range_bytes.get(8..16).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
                if let Some(t) = first.and_then(|pfn| self.mem.token_of_frame(pfn)) {
                    self.mem.host_maps(t);
                }
            }
        }
        posted
    }

    pub fn types(&mut self) -> Vec<MessageType> {
        self.posted().iter().map(|p| p.msgtype()).collect()
    }

    /// Starts the open (which must post the GPADL); returns the posted message types.
    pub fn open(&mut self) -> Vec<MessageType> {
        let r = self.life.open(&mut self.h.client, &request(), vec![0u8; 4096], &self.mem, &self.h.hv);
        assert_eq!(r, Ok(Progress::Waiting));
        self.types()
    }

    /// The host sends `bytes` (having first let go of what that message
    /// says it let go of); the client's events go to the lifecycle.
    pub fn host_sends(&mut self, bytes: &[u8]) -> Vec<Progress> {
        self.host_unmaps_for(bytes);
        self.h.feed(bytes).expect("client rejected a legitimate host message");
        self.deliver()
    }

    /// Like `host_sends`, returning the client's verdict.
    pub fn host_sends_raw(&mut self, bytes: &[u8]) -> Result<Vec<Progress>, vmbus_core::client::ClientError> {
        self.host_unmaps_for(bytes);
        self.h.feed(bytes)?;
        Ok(self.deliver())
    }

    fn host_unmaps_for(&mut self, bytes: &[u8]) {
        let token = self.current_token();
        match ChannelMessage::parse(bytes) {
            // Only messages about this lifecycle's channel and GPADL let go of its pages.
            Ok(ChannelMessage::GpadlCreated(g)) if g.creation_status != 0 && g.child_relid == RELID => {
                if let Some(t) = token {
                    self.mem.host_unmaps(t)
                }
            }
            Ok(ChannelMessage::GpadlTorndown(g)) if Some(g.gpadl) == self.life.ring_gpadl() => {
                if let Some(t) = token {
                    self.mem.host_unmaps(t)
                }
            }
            Ok(ChannelMessage::RescindChannelOffer(r)) if r.child_relid == RELID => {
                if let Some(t) = token {
                    self.mem.host_unmaps(t)
                }
            }
            Ok(ChannelMessage::UnloadResponse) => self.mem.host_unmaps_all(),
            _ => {}
        }
    }

    /// The most recent region (the lifecycle's, in these tests).
    pub fn current_token(&self) -> Option<usize> {
        let n = self.mem.allocs.get() as usize;
        n.checked_sub(1)
    }

    /// Hands the collected client events to the lifecycle; returns what
    /// it did, leaving out `Unchanged`.
    pub fn deliver(&mut self) -> Vec<Progress> {
        let events: Vec<ClientEvent> = self.h.take_events();
        let mut out = Vec::new();
        for e in &events {
            let p = self.life.on_event(e, &mut self.h.client, &self.mem, &self.h.hv);
            self.h.client.check_invariants().expect("invariant broken");
            if p != Progress::Unchanged {
                out.push(p);
            }
        }
        out
    }

    /// Opens fully (GPADL created, open succeeded); returns the GPADL handle.
    pub fn open_fully(&mut self) -> u32 {
        self.open();
        let handle = self.life.ring_gpadl().unwrap();
        assert_eq!(self.host_sends(&gpadl_created(RELID, handle, 0)), vec![Progress::Waiting]);
        self.types();
        assert_eq!(self.host_sends(&open_result(RELID, RELID, 0)), vec![Progress::Opened]);
        handle
    }

    /// The client posts Unload and the host answers.
    pub fn unload(&mut self) -> Vec<Progress> {
        self.h.client.unload(&self.h.hv).unwrap();
        self.types();
        self.host_sends(&unload_response())
    }
}
