// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Opening and closing one channel around [`Client`], as a sans-I/O state
//! machine: what every guest OS glue does between "the host offered a
//! channel" and "here are its ring endpoints", and back.
//!
//! [`ChannelLifecycle`] owns the channel's ring memory (one [`SharedRegion`]:
//! the outbound ring's control page and data pages, then the inbound ring's)
//! and its two endpoints. The glue calls:
//!
//! * [`open`](ChannelLifecycle::open): allocates the pages, initialises both
//!   ring control pages, creates the ring GPADL;
//! * [`on_event`](ChannelLifecycle::on_event) with every [`ClientEvent`] the
//!   client reports (events about other channels are ignored): on
//!   GpadlCreated it posts OpenChannel (downstream ring at page offset
//!   `out_pages`), on OpenResult it builds the endpoints
//!   ([`endpoints_mut`](ChannelLifecycle::endpoints_mut));
//! * [`close`](ChannelLifecycle::close): drops the endpoints, posts
//!   CloseChannel and the ring GPADL's teardown; the pages are freed when
//!   GpadlTorndown arrives;
//! * after [`Progress::Rescinded`],
//!   [`cleanup_rescinded`](ChannelLifecycle::cleanup_rescinded) (right away
//!   or later): local close, local teardown, free, RelidReleased;
//! * [`abandon`](ChannelLifecycle::abandon) when it stops waiting (a timeout).
//!
//! # When memory is freed
//!
//! The region is returned to the allocator only once the host can no longer
//! reach it: its GPADL was never (completely) posted, the host refused it,
//! the host confirmed its teardown, the channel was rescinded and the GPADL
//! torn down locally, or the connection was unloaded
//! ([`ClientEvent::UnloadComplete`]). After an [`abandon`](ChannelLifecycle::abandon)
//! or a local failure while the host may map the pages, they are kept
//! (leaked) until an unload: a leak beats a host writing into reused memory.
//! Dropping a lifecycle that still holds its region leaks it for the same
//! reason (no allocator is at hand to free it).
//!
//! The endpoints are owned here and only lent out, so no ring half can
//! outlive the pages it points into: they are dropped before any free, and
//! as soon as the channel is closed, rescinded or abandoned.
//!
//! A rescinded, abandoned or failed lifecycle frees its memory at the
//! latest on unload; an abandoned or failed one ignores a later rescind (the
//! client keeps the relid until unload).

use crate::channel::{ChannelReceiver, ChannelSender};
use crate::client::{
    ChannelSlot, ChannelState, Client, ClientError, ClientEvent, OpStatus, OpenParams, TeardownOutcome,
};
use crate::gpadl::GpaRangeRef;
use crate::message::{MessageType, MAX_USER_DEFINED_BYTES};
use crate::platform::{Hypervisor, SharedMemory, SharedRegion, HV_PAGE_SIZE};
use crate::ring::{Mapping, RingMemory, RingReader, RingSetupError, RingWriter};
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// Where a channel's lifecycle stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleState {
    /// Nothing started; no memory held.
    Idle,
    /// Ring GPADL posted, waiting for GpadlCreated.
    CreatingGpadl,
    /// OpenChannel posted, waiting for OpenResult.
    Opening,
    /// Open: the endpoints are available.
    Open,
    /// CloseChannel and GpadlTeardown posted, waiting for GpadlTorndown.
    TearingDown,
    /// Closed by the guest and freed.
    Closed,
    /// The host refused the GPADL or the open; freed.
    Refused,
    /// Rescinded: call [`ChannelLifecycle::cleanup_rescinded`].
    Rescinded,
    /// Rescind cleanup done: freed, relid released.
    Released,
    /// The glue stopped waiting; memory the host may map is kept until unload.
    Abandoned,
    /// A local operation failed (allocation, post); memory the host may map
    /// is kept until unload.
    Failed,
    /// The connection was unloaded; freed.
    Unloaded,
}

impl LifecycleState {
    /// Whether the lifecycle waits for a host answer.
    pub const fn is_waiting(self) -> bool {
        matches!(self, LifecycleState::CreatingGpadl | LifecycleState::Opening | LifecycleState::TearingDown)
    }
    /// Whether nothing more will happen (except an unload freeing kept memory).
    pub const fn is_done(self) -> bool {
        matches!(
            self,
            LifecycleState::Closed
                | LifecycleState::Refused
                | LifecycleState::Released
                | LifecycleState::Abandoned
                | LifecycleState::Failed
                | LifecycleState::Unloaded
        )
    }
}

/// Why a lifecycle operation was refused or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleError {
    /// Not allowed in this state (nothing changed).
    InvalidState(LifecycleState),
    /// A ring needs at least 2 pages (control page + data), and the whole
    /// region must stay describable (u32 offsets, ring sizes).
    BadRingPages {
        /// Outbound ring pages asked for.
        out_pages: usize,
        /// Inbound ring pages asked for.
        in_pages: usize,
    },
    /// More than 120 bytes of open user data.
    UserDataTooLong(usize),
    /// The allocator had no memory.
    Alloc,
    /// The allocator reported no frame for page `index` of the region.
    NoFrame(usize),
    /// The ring memory could not be described (misaligned region).
    Ring(RingSetupError),
    /// A client operation failed (a post, or the channel is gone).
    Client(ClientError),
    /// A different allocator than the one that allocated the region was
    /// passed; the region was kept rather than freed into the wrong allocator.
    ForeignAllocator,
}

impl fmt::Display for LifecycleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LifecycleError::InvalidState(s) => write!(f, "not allowed while {s:?}"),
            LifecycleError::BadRingPages { out_pages, in_pages } => {
                write!(f, "unusable ring sizes: {out_pages} outbound and {in_pages} inbound pages")
            }
            LifecycleError::UserDataTooLong(n) => write!(f, "{n} bytes of open user data, at most 120"),
            LifecycleError::Alloc => f.write_str("no shared memory for the rings"),
            LifecycleError::NoFrame(i) => write!(f, "no frame number for ring page {i}"),
            LifecycleError::Ring(e) => write!(f, "ring setup: {e}"),
            LifecycleError::Client(e) => write!(f, "client: {e}"),
            LifecycleError::ForeignAllocator => f.write_str("region not freed: passed a different allocator"),
        }
    }
}

impl core::error::Error for LifecycleError {}

impl From<ClientError> for LifecycleError {
    fn from(e: ClientError) -> Self {
        LifecycleError::Client(e)
    }
}

/// What a call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing (an event about another channel or step; nothing to do).
    Unchanged,
    /// A step finished and the next was posted; still waiting for the host.
    Waiting,
    /// The channel is open: use [`ChannelLifecycle::endpoints_mut`].
    Opened,
    /// The host refused the GPADL (`answer` GpadlCreated; freed now) or the
    /// open (`answer` OpenResult; freed once the teardown completes).
    Refused {
        /// The refusing answer's type.
        answer: MessageType,
        /// Its status.
        status: u32,
    },
    /// The ring GPADL is torn down and the pages freed.
    Closed,
    /// The host withdrew the channel; the endpoints are gone. Call
    /// [`ChannelLifecycle::cleanup_rescinded`].
    Rescinded,
    /// Rescind cleanup finished: freed, relid released.
    Released,
    /// The connection was unloaded: any pages held are freed.
    Unloaded,
    /// A local operation failed; the state is [`LifecycleState::Failed`]
    /// (memory the host may map is kept until unload).
    Failed(LifecycleError),
}

/// What [`ChannelLifecycle::open`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenRequest<'a> {
    /// Pages of the guest-to-host ring, control page included (at least 2).
    pub out_pages: usize,
    /// Pages of the host-to-guest ring, control page included (at least 2).
    pub in_pages: usize,
    /// VP for the channel's interrupts.
    pub target_vp: u32,
    /// Class-specific open bytes (at most 120).
    pub user_data: &'a [u8],
}

/// One channel's open/close sequence (see the module docs). `M` is the
/// allocator type, `B` the receive buffer (e.g. `Vec<u8>` or `&mut [u8]`;
/// its length is the largest packet accepted).
///
/// The allocator passed to the methods must be the one passed to
/// [`open`](Self::open): the lifecycle remembers its address (with `M`, its
/// identity; instances of a zero-sized `M` count as one allocator) and keeps
/// the region rather than free it into another
/// ([`LifecycleError::ForeignAllocator`]).
///
/// Not `Send` (it holds a [`SharedRegion`]); a glue that moves channels
/// between CPUs keeps it where its lock is.
pub struct ChannelLifecycle<M: SharedMemory + ?Sized, B: AsMut<[u8]>> {
    relid: u32,
    state: LifecycleState,
    region: Option<SharedRegion>,
    /// Address of the allocator `region` came from (with `M`, its identity).
    allocator: usize,
    out_pages: usize,
    in_pages: usize,
    gpadl: Option<u32>,
    connection_id: u32,
    target_vp: u32,
    user_data: [u8; MAX_USER_DEFINED_BYTES],
    user_data_len: usize,
    rx_buffer: Option<B>,
    endpoints: Option<(ChannelSender, ChannelReceiver<B>)>,
    was_open: bool,
    /// The host refused the open: the teardown in progress ends in `Refused`.
    open_refused: bool,
    _allocator: PhantomData<fn(&M)>,
}

impl<M: SharedMemory + ?Sized, B: AsMut<[u8]>> fmt::Debug for ChannelLifecycle<M, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelLifecycle")
            .field("relid", &self.relid)
            .field("state", &self.state)
            .field("gpadl", &self.gpadl)
            .field("holds_memory", &self.region.is_some())
            .finish()
    }
}

fn allocator_id<M: SharedMemory + ?Sized>(mem: &M) -> usize {
    core::ptr::from_ref(mem).cast::<u8>() as usize
}

/// Describes the two rings inside `region`: the outbound ring (control page,
/// then `out_pages - 1` data pages) at page 0, the inbound ring at page
/// `out_pages`. Building halves over the result is sound only while the
/// region is allocated; see the caller's obligations below.
///
/// Callers (this module only) guarantee: `region` came from
/// [`SharedMemory::alloc_shared`] and is not freed while any returned value
/// or half built from it exists (the lifecycle drops them before freeing);
/// each call's results are either only initialised and dropped at once, or
/// turned into exactly one writer (outbound) and one reader (inbound), once
/// per region.
#[allow(unsafe_code)] // RingMemory::new is the one way to describe shared ring pages.
fn ring_memories(
    region: &SharedRegion,
    out_pages: usize,
    in_pages: usize,
) -> Result<(RingMemory, RingMemory), LifecycleError> {
    let bad = LifecycleError::BadRingPages { out_pages, in_pages };
    if out_pages < 2 || in_pages < 2 || out_pages.checked_add(in_pages) != Some(region.pages) {
        return Err(bad);
    }
    let base = region.vaddr.as_ptr();
    let page = |i: usize| NonNull::new(base.wrapping_add(i * HV_PAGE_SIZE)).ok_or(bad);
    let (out_header, out_data, in_header, in_data) = (page(0)?, page(1)?, page(out_pages)?, page(out_pages + 1)?);
    // SAFETY: by `SharedMemory`'s contract the region is
    // 4096-aligned, virtually contiguous and valid for reads and writes of
    // `region.pages * 4096` bytes until `free_shared`, and nothing else in the
    // guest uses it. The outbound ring spans pages [0, out_pages) and the
    // inbound ring [out_pages, out_pages + in_pages) = [.., region.pages)
    // (checked above), so each control page and data area lies inside the
    // region and the two rings do not overlap; `wrapping_add` stayed in
    // bounds. The callers keep the region allocated while these values or
    // their halves live, build at most one writer and one reader per ring,
    // and touch the pages only through them (control words atomically, as the
    // ring code does). The data pages are mapped once: `Mapping::Plain`.
    let (out, inb) = unsafe {
        (
            RingMemory::new(out_header, out_data, (out_pages - 1) * HV_PAGE_SIZE, Mapping::Plain),
            RingMemory::new(in_header, in_data, (in_pages - 1) * HV_PAGE_SIZE, Mapping::Plain),
        )
    };
    Ok((out.map_err(LifecycleError::Ring)?, inb.map_err(LifecycleError::Ring)?))
}

/// Returns `region` to `mem`.
///
/// Callers (this module only) guarantee: `region` came from `alloc_shared`
/// on `mem` (checked by allocator identity before the call), every ring
/// half over it has been dropped, and the host can no longer reach it (see
/// "When memory is freed" in the module docs).
#[allow(unsafe_code)] // SharedMemory::free_shared is unsafe by contract.
fn free_region_to<M: SharedMemory + ?Sized>(mem: &M, region: SharedRegion) {
    // SAFETY: exactly `free_shared`'s contract, which the callers establish
    // as stated above.
    unsafe { mem.free_shared(region) }
}

impl<M: SharedMemory + ?Sized, B: AsMut<[u8]>> ChannelLifecycle<M, B> {
    /// A lifecycle for channel `relid`, not started.
    pub fn new(relid: u32) -> Self {
        ChannelLifecycle {
            relid,
            state: LifecycleState::Idle,
            region: None,
            allocator: 0,
            out_pages: 0,
            in_pages: 0,
            gpadl: None,
            connection_id: 0,
            target_vp: 0,
            user_data: [0; MAX_USER_DEFINED_BYTES],
            user_data_len: 0,
            rx_buffer: None,
            endpoints: None,
            was_open: false,
            open_refused: false,
            _allocator: PhantomData,
        }
    }

    /// The channel.
    pub fn relid(&self) -> u32 {
        self.relid
    }
    /// Where it stands.
    pub fn state(&self) -> LifecycleState {
        self.state
    }
    /// Whether nothing more will happen (see [`LifecycleState::is_done`]).
    pub fn is_done(&self) -> bool {
        self.state.is_done()
    }
    /// Whether it waits for a host answer.
    pub fn is_waiting(&self) -> bool {
        self.state.is_waiting()
    }
    /// Whether it holds the ring pages (allocated and not yet freed).
    pub fn holds_memory(&self) -> bool {
        self.region.is_some()
    }
    /// The ring GPADL handle, while the client tracks it.
    pub fn ring_gpadl(&self) -> Option<u32> {
        self.gpadl
    }
    /// Whether the channel was open at some point.
    pub fn was_open(&self) -> bool {
        self.was_open
    }
    /// The endpoints, while open.
    pub fn endpoints_mut(&mut self) -> Option<(&mut ChannelSender, &mut ChannelReceiver<B>)> {
        self.endpoints.as_mut().map(|(s, r)| (s, r))
    }

    /// Starts opening: allocates `out_pages + in_pages` shared pages,
    /// initialises both ring control pages and posts the ring GPADL.
    /// `rx_buffer` becomes the receiver's packet buffer.
    ///
    /// `Err` (nothing changed) when not [`LifecycleState::Idle`] or the
    /// request is unusable. Otherwise [`Progress::Waiting`] (wait for the
    /// GpadlCreated event) or [`Progress::Failed`] (allocation or post failed;
    /// no memory is kept: an incompletely posted GPADL is never mapped).
    pub fn open<S, H>(
        &mut self,
        client: &mut Client<S>,
        request: &OpenRequest<'_>,
        rx_buffer: B,
        mem: &M,
        hv: &H,
    ) -> Result<Progress, LifecycleError>
    where
        S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>,
        H: Hypervisor + ?Sized,
    {
        if self.state != LifecycleState::Idle {
            return Err(LifecycleError::InvalidState(self.state));
        }
        let (out_pages, in_pages) = (request.out_pages, request.in_pages);
        let bad = LifecycleError::BadRingPages { out_pages, in_pages };
        let pages = out_pages.checked_add(in_pages).ok_or(bad)?;
        // Each ring's data area is a u32 with room to double (ring rules);
        // the downstream offset is a u32 page count.
        let max_ring_pages = (u32::MAX / 2) as usize / HV_PAGE_SIZE;
        if out_pages < 2 || in_pages < 2 || out_pages > max_ring_pages || in_pages > max_ring_pages {
            return Err(bad);
        }
        if request.user_data.len() > MAX_USER_DEFINED_BYTES {
            return Err(LifecycleError::UserDataTooLong(request.user_data.len()));
        }
        let info = client.channel(self.relid).ok_or(ClientError::NoSuchChannel(self.relid))?;
        // Checked just above: the slice fits.
        if let Some(user_data) = self.user_data.get_mut(..request.user_data.len()) {
            user_data.copy_from_slice(request.user_data);
        }
        self.user_data_len = request.user_data.len();
        self.connection_id = info.connection_id;
        self.out_pages = out_pages;
        self.in_pages = in_pages;
        self.target_vp = request.target_vp;

        let Ok(region) = mem.alloc_shared(pages) else {
            return Ok(self.fail(LifecycleError::Alloc));
        };
        let mut pfns = Vec::with_capacity(pages);
        let missing = (0..pages).find(|&i| match mem.frame(&region, i) {
            Some(pfn) => {
                pfns.push(pfn);
                false
            }
            None => true,
        });
        self.allocator = allocator_id(mem);
        self.region = Some(region);
        if let Some(i) = missing {
            // The host has not seen the pages yet.
            return Ok(self.fail_and_free(LifecycleError::NoFrame(i), mem));
        }
        // Both control pages start clean before the host can see them. The
        // descriptions are dropped at once; halves are built only on open.
        let init = self.region.as_ref().map(|r| ring_memories(r, out_pages, in_pages));
        match init {
            Some(Ok((out, inb))) => {
                out.initialize();
                inb.initialize();
            }
            Some(Err(e)) => return Ok(self.fail_and_free(e, mem)),
            None => return Ok(self.fail(LifecycleError::Alloc)),
        }
        self.rx_buffer = Some(rx_buffer);
        match client.create_gpadl(self.relid, GpaRangeRef::whole_pages(&pfns), hv) {
            Ok(handle) => {
                self.gpadl = Some(handle);
                self.state = LifecycleState::CreatingGpadl;
                Ok(Progress::Waiting)
            }
            // Nothing, or an incomplete GPADL, reached the host: it cannot
            // map the pages, so they are freed.
            Err(e) => Ok(self.fail_and_free(LifecycleError::Client(e), mem)),
        }
    }

    /// Feeds one client event. Events about other channels, or not awaited
    /// in the current state, yield [`Progress::Unchanged`].
    pub fn on_event<S, H>(&mut self, event: &ClientEvent, client: &mut Client<S>, mem: &M, hv: &H) -> Progress
    where
        S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>,
        H: Hypervisor + ?Sized,
    {
        if event.relid().is_some_and(|r| r != self.relid) {
            return Progress::Unchanged;
        }
        match *event {
            ClientEvent::GpadlCreated { handle, status, .. }
                if self.state == LifecycleState::CreatingGpadl && self.gpadl == Some(handle) =>
            {
                match status {
                    OpStatus::Success => self.post_open(client, handle, hv),
                    OpStatus::Failed(status) => {
                        // The host never mapped the pages.
                        self.gpadl = None;
                        if let Err(e) = self.free_region(mem) {
                            return self.fail(e);
                        }
                        self.state = LifecycleState::Refused;
                        Progress::Refused { answer: MessageType::GPADL_CREATED, status }
                    }
                    // The Rescinded event (before) or UnloadComplete (after) handles these.
                    OpStatus::Rescinded | OpStatus::Unloaded => Progress::Unchanged,
                }
            }
            ClientEvent::OpenResult { status, .. } if self.state == LifecycleState::Opening => match status {
                OpStatus::Success => self.attach_endpoints(),
                OpStatus::Failed(status) => {
                    self.open_refused = true;
                    let after = self.start_teardown(client, mem, hv);
                    match after {
                        Progress::Failed(_) => after,
                        _ => Progress::Refused { answer: MessageType::OPEN_CHANNEL_RESULT, status },
                    }
                }
                OpStatus::Rescinded | OpStatus::Unloaded => Progress::Unchanged,
            },
            ClientEvent::GpadlTornDown { handle, .. }
                if self.state == LifecycleState::TearingDown && self.gpadl == Some(handle) =>
            {
                // Success: the host let go. Unloaded: so did it (and Rescinded
                // never gets here: the Rescinded event came first).
                self.gpadl = None;
                self.finish_close(mem)
            }
            ClientEvent::Rescinded { .. } => match self.state {
                LifecycleState::Idle
                | LifecycleState::CreatingGpadl
                | LifecycleState::Opening
                | LifecycleState::Open
                | LifecycleState::TearingDown
                | LifecycleState::Closed
                | LifecycleState::Refused => {
                    // Stop touching the rings at once.
                    self.endpoints = None;
                    self.state = LifecycleState::Rescinded;
                    Progress::Rescinded
                }
                _ => Progress::Unchanged,
            },
            ClientEvent::UnloadComplete => {
                // The host dropped every mapping; the client table is empty.
                self.endpoints = None;
                self.gpadl = None;
                let held = self.region.is_some();
                if let Err(e) = self.free_region(mem) {
                    return self.fail(e);
                }
                if held || !self.state.is_done() {
                    self.state = LifecycleState::Unloaded;
                    Progress::Unloaded
                } else {
                    Progress::Unchanged
                }
            }
            _ => Progress::Unchanged,
        }
    }

    /// Closes an open channel: drops the endpoints, posts CloseChannel and
    /// the ring GPADL's teardown. [`Progress::Waiting`] (the pages are freed
    /// on GpadlTorndown), or [`Progress::Failed`] (a post failed; the pages
    /// are kept until unload). `Err` (nothing changed) when not open.
    pub fn close<S, H>(&mut self, client: &mut Client<S>, mem: &M, hv: &H) -> Result<Progress, LifecycleError>
    where
        S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>,
        H: Hypervisor + ?Sized,
    {
        if self.state != LifecycleState::Open {
            return Err(LifecycleError::InvalidState(self.state));
        }
        self.endpoints = None;
        if let Err(e) = client.close_channel(self.relid, hv) {
            // Still open at the host: its GPADL stays mapped.
            return Ok(self.fail(LifecycleError::Client(e)));
        }
        Ok(self.start_teardown(client, mem, hv))
    }

    /// Finishes a rescinded channel: local close, local teardown of the ring
    /// GPADL, free, RelidReleased. Other GPADLs of the channel (owned by
    /// others) must be torn down first, or the release is refused
    /// ([`Progress::Failed`], the pages already freed). `Err` (nothing
    /// changed) unless [`LifecycleState::Rescinded`].
    pub fn cleanup_rescinded<S, H>(
        &mut self,
        client: &mut Client<S>,
        mem: &M,
        hv: &H,
    ) -> Result<Progress, LifecycleError>
    where
        S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>,
        H: Hypervisor + ?Sized,
    {
        if self.state != LifecycleState::Rescinded {
            return Err(LifecycleError::InvalidState(self.state));
        }
        self.endpoints = None;
        let Some(info) = client.channel(self.relid) else {
            // Gone from the table (unloaded meanwhile): nothing maps the pages.
            self.gpadl = None;
            if let Err(e) = self.free_region(mem) {
                return Ok(self.fail(e));
            }
            self.state = LifecycleState::Released;
            return Ok(Progress::Released);
        };
        if matches!(info.state, ChannelState::Open { .. }) {
            if let Err(e) = client.close_channel(self.relid, hv) {
                return Ok(self.fail(LifecycleError::Client(e)));
            }
        }
        if let Some(handle) = self.gpadl {
            // A rescind completes a pending create or teardown (the record is
            // gone); a created GPADL is released locally.
            if client.gpadls(self.relid).any(|(h, _)| h == handle) {
                match client.teardown_gpadl(self.relid, handle, hv) {
                    Ok(TeardownOutcome::CompletedLocally) => {}
                    Ok(TeardownOutcome::Pending) => {
                        // Not rescinded after all (cannot happen): keep waiting safely.
                        self.state = LifecycleState::TearingDown;
                        return Ok(Progress::Waiting);
                    }
                    Err(e) => return Ok(self.fail(LifecycleError::Client(e))),
                }
            }
            self.gpadl = None;
        }
        // Rescinded, and the GPADL released: the host no longer maps the pages.
        if let Err(e) = self.free_region(mem) {
            return Ok(self.fail(e));
        }
        if let Err(e) = client.release_relid(self.relid, hv) {
            return Ok(self.fail(LifecycleError::Client(e)));
        }
        self.state = LifecycleState::Released;
        Ok(Progress::Released)
    }

    /// Stops waiting (the glue's timeout, or it gives up on the channel):
    /// drops the endpoints, tells the client to forget the pending
    /// operations ([`Client::abandon`]) and keeps any pages, which the host
    /// may map, until an unload frees them. The state becomes
    /// [`LifecycleState::Abandoned`], whatever it was, unless already done.
    /// Returns whether pages are kept.
    pub fn abandon<S>(&mut self, client: &mut Client<S>) -> bool
    where
        S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>,
    {
        if self.state.is_done() {
            return self.region.is_some();
        }
        self.endpoints = None;
        if self.state != LifecycleState::Idle {
            // Only fails for a relid the client no longer has: nothing to forget then.
            let _ = client.abandon(self.relid);
        }
        self.state = LifecycleState::Abandoned;
        self.region.is_some()
    }

    // ----- steps -----

    fn post_open<S, H>(&mut self, client: &mut Client<S>, handle: u32, hv: &H) -> Progress
    where
        S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>,
        H: Hypervisor + ?Sized,
    {
        let params = OpenParams {
            ring_gpadl: handle,
            // Checked in `open`: at most u32::MAX / 2 / 4096 pages.
            downstream_page_offset: u32::try_from(self.out_pages).unwrap_or(u32::MAX),
            target_vp: self.target_vp,
            user_data: self.user_data.get(..self.user_data_len).unwrap_or(&[]),
        };
        match client.open_channel(self.relid, &params, hv) {
            Ok(()) => {
                self.state = LifecycleState::Opening;
                Progress::Waiting
            }
            // The host maps the GPADL: keep the pages.
            Err(e) => self.fail(LifecycleError::Client(e)),
        }
    }

    fn attach_endpoints(&mut self) -> Progress {
        let (Some(region), Some(buffer)) = (self.region.as_ref(), self.rx_buffer.take()) else {
            return self.fail(LifecycleError::InvalidState(self.state));
        };
        match ring_memories(region, self.out_pages, self.in_pages) {
            Ok((out, inb)) => {
                let sender = ChannelSender::new(RingWriter::new(out), self.connection_id);
                let receiver = ChannelReceiver::new(RingReader::new(inb), buffer, self.connection_id);
                self.endpoints = Some((sender, receiver));
                self.state = LifecycleState::Open;
                self.was_open = true;
                Progress::Opened
            }
            // Open at the host: keep the pages.
            Err(e) => self.fail(e),
        }
    }

    /// Posts the ring GPADL's teardown (the channel is closed in the client).
    fn start_teardown<S, H>(&mut self, client: &mut Client<S>, mem: &M, hv: &H) -> Progress
    where
        S: AsRef<[ChannelSlot]> + AsMut<[ChannelSlot]>,
        H: Hypervisor + ?Sized,
    {
        let Some(handle) = self.gpadl else {
            return self.finish_close(mem);
        };
        match client.teardown_gpadl(self.relid, handle, hv) {
            Ok(TeardownOutcome::Pending) => {
                self.state = LifecycleState::TearingDown;
                Progress::Waiting
            }
            Ok(TeardownOutcome::CompletedLocally) => {
                self.gpadl = None;
                self.finish_close(mem)
            }
            Err(e) => self.fail(LifecycleError::Client(e)),
        }
    }

    fn finish_close(&mut self, mem: &M) -> Progress {
        if let Err(e) = self.free_region(mem) {
            return self.fail(e);
        }
        self.state = if self.open_refused { LifecycleState::Refused } else { LifecycleState::Closed };
        Progress::Closed
    }

    fn fail(&mut self, e: LifecycleError) -> Progress {
        self.endpoints = None;
        self.state = LifecycleState::Failed;
        Progress::Failed(e)
    }

    /// For failures before the host could map the pages.
    fn fail_and_free(&mut self, e: LifecycleError, mem: &M) -> Progress {
        self.gpadl = None;
        let freed = self.free_region(mem);
        self.fail(freed.err().unwrap_or(e))
    }

    /// Frees the region, if held. Every caller has established that the host
    /// can no longer reach it; the endpoints are dropped here first.
    fn free_region(&mut self, mem: &M) -> Result<(), LifecycleError> {
        self.endpoints = None;
        if self.region.is_none() {
            return Ok(());
        }
        if allocator_id(mem) != self.allocator {
            return Err(LifecycleError::ForeignAllocator);
        }
        if let Some(region) = self.region.take() {
            free_region_to(mem, region);
        }
        Ok(())
    }
}
