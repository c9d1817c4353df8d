// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The VMBus ring buffer: one control page followed by a data area, written
//! by one side and read by the other.
//!
//! * [`RingMemory`] describes the shared pages (plain or double mapped) and
//!   is created through an `unsafe` constructor that states the contract.
//! * [`RingWriter`] and [`RingReader`] are the two halves. Each is an
//!   independent object (usable on different CPUs) that keeps its private
//!   state (cached peer index, committed index, next index) on its own cache
//!   line. Writes and reads are batched: several packets, then ONE `commit`
//!   that publishes the index and says whether the peer must be signalled.
//! * [`protocol`] holds the control-word decision code (commit and signal,
//!   interrupt mask re-check, pending-send-size crossing) behind a small
//!   trait so that the very same code is model-checked with loom.
//!
//! ```
//! # #[cfg(feature = "alloc")] {
//! use vmbus_core::packet::{inband_header, PacketType};
//! use vmbus_core::ring::OwnedRing;
//!
//! // Private memory for the example; a driver builds its halves with
//! // `RingMemory::new` over the pages it shares with the host.
//! let mut ring = OwnedRing::new(4).unwrap();
//! let header = inband_header(PacketType::DATA_INBAND, 0, 7, 5).unwrap();
//! ring.writer.write(&[&header, b"hello"]).unwrap();
//! let signal_reader = ring.writer.commit().unwrap(); // empty -> non-empty
//! assert!(signal_reader);
//!
//! let mut buf = [0u8; 256]; // private copy, sized for the largest packet
//! ring.reader.begin_read();
//! while let Some(packet) = ring.reader.read(&mut buf).unwrap() {
//!     assert_eq!(&packet.payload[..5], b"hello");
//! }
//! let signal_writer = ring.reader.commit().unwrap(); // only if it asked for space
//! assert!(!signal_writer);
//! assert!(!ring.reader.end_read().unwrap()); // true would mean: drain again
//! # }
//! ```
//!
//! The peer is untrusted. Every index it writes is validated on every load;
//! a packet whose framing is out of range is corruption. Corruption puts the
//! half into a sticky error state: every later call returns the same error,
//! nothing panics, nothing loops.
//!
//! Data is copied with raw (non-atomic) copies between shared memory and
//! private buffers, as every VMBus implementation does: the peer may race
//! with those copies, but the values copied are only interpreted after they
//! sit in private memory, and only indices that were validated are used to
//! form addresses. The peer's concurrent writes can make the copied bytes
//! garbage, never make us touch memory outside the ring.

// This module accesses shared memory through raw pointers and atomics
// created from pointers; that needs `unsafe`, confined to RingMemory,
// SharedControl, the copy helpers and the contiguous fast paths of
// `RingWriter::write_segments` and `RingReader::read_raw`.
#![allow(unsafe_code)]

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use crossbeam_utils::CachePadded;

use crate::packet::{ring_control, IncomingPacket, PacketError, DESCRIPTOR_SIZE, MAX_PACKET_LEN, TRAILER_SIZE};
use crate::platform::HV_PAGE_SIZE;

/// Distance from `from` to `to` going forward around a ring of `size` bytes.
/// Both must be `< size`.
#[inline]
const fn ring_distance(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

/// `(pos + n) mod size` for `pos < size` and `n <= size` (no division on
/// the data path; `size <= u32::MAX / 2` so the sum cannot overflow).
#[inline]
const fn advance(pos: u32, n: u32, size: u32) -> u32 {
    let x = pos + n;
    if x >= size {
        x - size
    } else {
        x
    }
}

/// Which control word a corruption was seen in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corruption {
    /// The peer's write index is not below the data size.
    WriteIndexOutOfRange {
        /// Value read.
        value: u32,
    },
    /// The peer's write index is not a multiple of 8.
    WriteIndexUnaligned {
        /// Value read.
        value: u32,
    },
    /// The peer's write index moved behind data we already consumed.
    WriteIndexInconsistent {
        /// Value read.
        value: u32,
    },
    /// The peer's read index is not below the data size.
    ReadIndexOutOfRange {
        /// Value read.
        value: u32,
    },
    /// The peer's read index is not a multiple of 8.
    ReadIndexUnaligned {
        /// Value read.
        value: u32,
    },
    /// The peer's read index moved backwards or past what we committed.
    ReadIndexInconsistent {
        /// Value read.
        value: u32,
    },
    /// A packet descriptor with `len8 < 2`, `offset8 < 2` or `offset8 > len8`.
    BadPacketFraming {
        /// len8 copied out of the ring.
        len8: u16,
        /// offset8 copied out of the ring.
        offset8: u16,
    },
    /// A packet (plus trailer) longer than the bytes the writer published.
    PacketBeyondWriteIndex {
        /// Packet length plus trailer.
        needed: u32,
        /// Bytes available.
        available: u32,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Corruption::WriteIndexOutOfRange { value } => write!(f, "ring write index {value:#x} out of range"),
            Corruption::WriteIndexUnaligned { value } => write!(f, "ring write index {value:#x} not 8-aligned"),
            Corruption::WriteIndexInconsistent { value } => write!(f, "ring write index {value:#x} moved backwards"),
            Corruption::ReadIndexOutOfRange { value } => write!(f, "ring read index {value:#x} out of range"),
            Corruption::ReadIndexUnaligned { value } => write!(f, "ring read index {value:#x} not 8-aligned"),
            Corruption::ReadIndexInconsistent { value } => {
                write!(f, "ring read index {value:#x} outside the committed region")
            }
            Corruption::BadPacketFraming { len8, offset8 } => {
                write!(f, "ring packet framing invalid (len8 {len8}, offset8 {offset8})")
            }
            Corruption::PacketBeyondWriteIndex { needed, available } => {
                write!(f, "ring packet needs {needed} bytes, only {available} published")
            }
        }
    }
}

/// Checks an index the peer wrote. `write` selects which error variants to use.
#[inline]
fn check_index(value: u32, size: u32, write: bool) -> Result<u32, Corruption> {
    if value >= size {
        Err(if write { Corruption::WriteIndexOutOfRange { value } } else { Corruption::ReadIndexOutOfRange { value } })
    } else if value % 8 != 0 {
        Err(if write { Corruption::WriteIndexUnaligned { value } } else { Corruption::ReadIndexUnaligned { value } })
    } else {
        Ok(value)
    }
}

pub mod protocol {
    //! The control-word protocol, generic over how the four control words
    //! are reached, so that the production code (atomics created from the
    //! shared page's pointer) and the loom model check run the SAME decision
    //! code. Public only so that `tests/loom_ring.rs` can implement
    //! [`ControlWords`] with loom atomics; drivers use
    //! [`RingWriter`](super::RingWriter) and [`RingReader`](super::RingReader).
    //!
    //! Memory-ordering argument (the pairs that matter):
    //!
    //! 1. Data publication. The writer copies packet bytes, then stores
    //!    `write_index` with Release; the reader loads `write_index` with
    //!    Acquire before copying. Symmetrically the reader copies bytes out,
    //!    then stores `read_index` with Release; the writer loads
    //!    `read_index` with Acquire before overwriting the freed space.
    //! 2. Empty-to-non-empty signal vs interrupt mask (a store-then-load
    //!    "Dekker" pattern on both sides): the writer stores `write_index`
    //!    then loads `interrupt_mask`; the reader stores `interrupt_mask = 0`
    //!    then loads `write_index`. Release/Acquire cannot forbid both loads
    //!    from seeing old values, so each side puts a SeqCst fence between its
    //!    store and its load: then at least one side sees the other's store,
    //!    i.e. either the writer signals or the reader finds the new data in
    //!    `end_read` and loops. No wake-up is lost.
    //! 3. Pending send size (the same pattern reversed): the blocked writer
    //!    stores `pending_send_sz` then loads `read_index`; the reader stores
    //!    `read_index` then loads `pending_send_sz`; SeqCst fences between.
    //!    Either the writer sees the freed space itself or the reader sees the
    //!    request and signals.

    use super::{check_index, ring_distance, Corruption};
    use core::sync::atomic::Ordering;

    /// Access to the four control words of one ring plus a full fence.
    pub trait ControlWords {
        /// Loads `write_index`.
        fn load_write_index(&self, order: Ordering) -> u32;
        /// Stores `write_index`.
        fn store_write_index(&self, value: u32, order: Ordering);
        /// Loads `read_index`.
        fn load_read_index(&self, order: Ordering) -> u32;
        /// Stores `read_index`.
        fn store_read_index(&self, value: u32, order: Ordering);
        /// Loads `interrupt_mask`.
        fn load_interrupt_mask(&self, order: Ordering) -> u32;
        /// Stores `interrupt_mask`.
        fn store_interrupt_mask(&self, value: u32, order: Ordering);
        /// Loads `pending_send_sz`.
        fn load_pending_send_size(&self, order: Ordering) -> u32;
        /// Stores `pending_send_sz`.
        fn store_pending_send_size(&self, value: u32, order: Ordering);
        /// Loads `feature_bits`.
        fn load_feature_bits(&self, order: Ordering) -> u32;
        /// A sequentially consistent fence (core's or loom's).
        fn fence_seq_cst(&self);
    }

    /// Loads the peer's `read_index` (writer side) and checks that it lies in
    /// the circular interval `[cached_read, committed_write]`: the reader
    /// never moves backwards and never passes what we published.
    pub fn load_read_index<C: ControlWords>(
        c: &C,
        size: u32,
        cached_read: u32,
        committed_write: u32,
    ) -> Result<u32, Corruption> {
        // Acquire: pairs with the reader's Release store of read_index, so
        // its copies out of the freed space happen before we overwrite it.
        let value = check_index(c.load_read_index(Ordering::Acquire), size, false)?;
        if ring_distance(cached_read, value, size) > ring_distance(cached_read, committed_write, size) {
            return Err(Corruption::ReadIndexInconsistent { value });
        }
        Ok(value)
    }

    /// Loads the peer's `write_index` (reader side) and checks that it is
    /// not behind `next_read` as seen from `committed_read`: the writer
    /// never takes back data, so available bytes never exceed what it could
    /// have written.
    pub fn load_write_index<C: ControlWords>(
        c: &C,
        size: u32,
        committed_read: u32,
        next_read: u32,
    ) -> Result<u32, Corruption> {
        // Acquire: pairs with the writer's Release store, so the packet bytes
        // it copied before publishing are visible to our copies.
        let value = check_index(c.load_write_index(Ordering::Acquire), size, true)?;
        if ring_distance(committed_read, value, size) < ring_distance(committed_read, next_read, size) {
            return Err(Corruption::WriteIndexInconsistent { value });
        }
        Ok(value)
    }

    /// Result of a writer commit.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct WriterCommit {
        /// Whether the reader must be signalled.
        pub signal: bool,
        /// The read index seen (validated).
        pub read_index: u32,
    }

    /// Publishes `new_write` and decides whether to signal: only if the ring
    /// was empty before this commit (`read_index == old_write`) and the
    /// reader's interrupt mask is clear.
    pub fn writer_commit<C: ControlWords>(
        c: &C,
        size: u32,
        cached_read: u32,
        old_write: u32,
        new_write: u32,
    ) -> Result<WriterCommit, Corruption> {
        // Release: the packet bytes written before become visible to a reader
        // that Acquire-loads this value.
        c.store_write_index(new_write, Ordering::Release);
        // Store write_index, then load interrupt_mask/read_index: the Dekker
        // pattern (module docs, point 2) needs a full fence in between.
        c.fence_seq_cst();
        // Acquire: if we see the reader's `mask = 0` (stored with Release
        // after it published read_index), we also see that read_index.
        let mask = c.load_interrupt_mask(Ordering::Acquire);
        let read_index = load_read_index(c, size, cached_read, new_write)?;
        Ok(WriterCommit { signal: mask == 0 && read_index == old_write, read_index })
    }

    /// Publishes `new_read` and decides whether to signal the writer: only if
    /// it advertised pending-send-size support, asked for space, and the free
    /// space crossed from `<= pending` to `> pending` in this pass.
    pub fn reader_commit<C: ControlWords>(c: &C, size: u32, old_read: u32, new_read: u32) -> Result<bool, Corruption> {
        // Release: our copies out of the ring happen before the writer (which
        // Acquire-loads read_index) reuses the space.
        c.store_read_index(new_read, Ordering::Release);
        // The feature word is set once at init; any value is harmless.
        if c.load_feature_bits(Ordering::Relaxed) & super::ring_control::FEATURE_PENDING_SEND_SIZE == 0 {
            return Ok(false);
        }
        // Store read_index, then load pending_send_sz (module docs, point 3).
        c.fence_seq_cst();
        let pending = c.load_pending_send_size(Ordering::Relaxed) & !7;
        if pending == 0 {
            return Ok(false);
        }
        let write = load_write_index(c, size, old_read, new_read)?;
        let free_before = size - ring_distance(old_read, write, size);
        let free_now = size - ring_distance(new_read, write, size);
        Ok(free_before <= pending && free_now > pending)
    }

    /// Sets the interrupt mask before draining ("do not interrupt me").
    pub fn begin_read<C: ControlWords>(c: &C) {
        c.store_interrupt_mask(1, Ordering::Relaxed);
        // Make the mask visible before we look at the ring, so that a writer
        // committing from now on most likely skips the signal.
        c.fence_seq_cst();
    }

    /// Clears the interrupt mask and returns the write index seen after it
    /// (validated): if it differs from our read position, data arrived while
    /// the mask was set and the caller must drain again.
    pub fn end_read<C: ControlWords>(c: &C, size: u32, committed_read: u32, next_read: u32) -> Result<u32, Corruption> {
        // Release: a writer that sees mask = 0 also sees our read_index.
        c.store_interrupt_mask(0, Ordering::Release);
        // Store mask, then load write_index (module docs, point 2).
        c.fence_seq_cst();
        load_write_index(c, size, committed_read, next_read)
    }

    /// Asks the reader to signal when more than `bytes` are free, then
    /// re-reads `read_index` (validated) so the caller can re-check the space
    /// itself: the request may have raced with the reader's last commit.
    pub fn writer_request_space<C: ControlWords>(
        c: &C,
        size: u32,
        bytes: u32,
        cached_read: u32,
        committed_write: u32,
    ) -> Result<u32, Corruption> {
        c.store_pending_send_size(bytes, Ordering::Relaxed);
        // Store pending_send_sz, then load read_index (module docs, point 3).
        c.fence_seq_cst();
        load_read_index(c, size, cached_read, committed_write)
    }
}

use protocol::ControlWords;

/// The shared pages of one ring.
///
/// Not `Clone`: each [`RingWriter`]/[`RingReader`] consumes one.
#[derive(Debug)]
pub struct RingMemory {
    header: NonNull<u8>,
    data: NonNull<u8>,
    data_size: u32,
    double_mapped: bool,
}

/// How the data area is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    /// `data_size` bytes; copies wrap at the end explicitly.
    Plain,
    /// The data pages are mapped twice back to back (`2 * data_size` bytes
    /// of address space), so a wrapping packet is contiguous.
    Double,
}

/// Why a [`RingMemory`] could not be described.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingSetupError {
    /// The data size is zero, not a multiple of 4096 or does not fit in u32.
    BadDataSize {
        /// The size given.
        data_size: usize,
    },
    /// The header or data pointer is not 4096-aligned.
    Misaligned,
}

impl fmt::Display for RingSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RingSetupError::BadDataSize { data_size } => write!(f, "bad ring data size {data_size}"),
            RingSetupError::Misaligned => f.write_str("ring pages not 4096-aligned"),
        }
    }
}

impl RingMemory {
    /// Describes a ring: a 4096-byte control page at `header` and a data area
    /// of `data_size` bytes at `data` (mapped once or twice, see [`Mapping`]).
    ///
    /// # Safety
    ///
    /// * `header` is valid for atomic 4-byte reads and writes of its first
    ///   4096 bytes, and `data` for reads and writes of `data_size` bytes
    ///   (`2 * data_size` bytes for [`Mapping::Double`], where byte
    ///   `data_size + i` must alias byte `i`), for as long as the returned
    ///   value or any half built from it exists;
    /// * nothing in this address space accesses that memory other than
    ///   through the halves built from `RingMemory` values; for one ring at
    ///   most one [`RingWriter`] and one [`RingReader`] exist at a time
    ///   (the peer on the other side of the ring may do anything);
    /// * the control words are only accessed atomically by this address space
    ///   (the ring code does so).
    pub unsafe fn new(
        header: NonNull<u8>,
        data: NonNull<u8>,
        data_size: usize,
        mapping: Mapping,
    ) -> Result<Self, RingSetupError> {
        // Indices and distances are u32 and must be 8-aligned; `2 * size`
        // must not overflow either.
        if data_size == 0 || data_size % HV_PAGE_SIZE != 0 || data_size > (u32::MAX / 2) as usize {
            return Err(RingSetupError::BadDataSize { data_size });
        }
        if header.as_ptr() as usize % HV_PAGE_SIZE != 0 || data.as_ptr() as usize % HV_PAGE_SIZE != 0 {
            return Err(RingSetupError::Misaligned);
        }
        Ok(RingMemory { header, data, data_size: data_size as u32, double_mapped: mapping == Mapping::Double })
    }

    /// Data area size in bytes.
    pub fn data_size(&self) -> u32 {
        self.data_size
    }

    /// Resets the control page for a new ring: indices, mask and pending
    /// size to 0, feature bits to "pending send size supported". Done by the
    /// side that allocates the ring (the guest, before opening the channel).
    pub fn initialize(&self) {
        let c = self.control();
        c.store_write_index(0, Ordering::Relaxed);
        c.store_read_index(0, Ordering::Relaxed);
        c.store_interrupt_mask(0, Ordering::Relaxed);
        c.store_pending_send_size(0, Ordering::Relaxed);
        c.word(ring_control::FEATURE_BITS).store(ring_control::FEATURE_PENDING_SEND_SIZE, Ordering::Release);
    }

    fn control(&self) -> SharedControl {
        SharedControl { header: self.header }
    }

    /// Whether `len` bytes from `offset` (both < data_size) are contiguous in
    /// the mapping: always for a double mapping, otherwise if they do not
    /// cross the end (no overflow: both are below 2^31).
    #[inline]
    fn contiguous(&self, offset: u32, len: u32) -> bool {
        self.double_mapped || offset + len <= self.data_size
    }

    /// Copies `src` into the data area at `offset` (< data_size), wrapping.
    #[inline]
    fn copy_in(&self, offset: u32, src: &[u8]) {
        let (offset, len) = (offset as usize, src.len());
        let size = self.data_size as usize;
        debug_assert!(offset < size && len < size);
        let first = if self.double_mapped { len } else { len.min(size - offset) };
        // SAFETY: offset < size (callers pass validated or self-computed
        // indices) and len < size, so [offset, offset + first) lies inside the
        // mapping: within `size` bytes for a plain mapping (first <= size -
        // offset), within `2 * size` for a double mapping. The rest goes to
        // [0, len - first), also inside. `src` is private memory and cannot
        // overlap the shared mapping. Raw copies: see the module docs.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), self.data.as_ptr().add(offset), first);
            if first < len {
                core::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data.as_ptr(), len - first);
            }
        }
    }

    /// Copies `dst.len()` bytes out of the data area at `offset`, wrapping.
    #[inline]
    fn copy_out(&self, offset: u32, dst: &mut [u8]) {
        let (offset, len) = (offset as usize, dst.len());
        let size = self.data_size as usize;
        debug_assert!(offset < size && len < size);
        let first = if self.double_mapped { len } else { len.min(size - offset) };
        // SAFETY: same bounds argument as `copy_in`; `dst` is private memory.
        unsafe {
            core::ptr::copy_nonoverlapping(self.data.as_ptr().add(offset), dst.as_mut_ptr(), first);
            if first < len {
                core::ptr::copy_nonoverlapping(self.data.as_ptr(), dst.as_mut_ptr().add(first), len - first);
            }
        }
    }
}

/// `copy_nonoverlapping` for the short copies of the data path: lengths
/// that are multiples of 8 up to 64 bytes (descriptors, small payloads)
/// become fixed-size copies the compiler emits as a few inline moves,
/// instead of a `memcpy` call that must first dispatch on the length.
///
/// # Safety
///
/// As `core::ptr::copy_nonoverlapping(src, dst, len)`.
#[inline(always)]
unsafe fn copy_bytes(src: *const u8, dst: *mut u8, len: usize) {
    /// A copy of exactly `N` bytes.
    ///
    /// # Safety
    ///
    /// As `core::ptr::copy_nonoverlapping(src, dst, N)`.
    #[inline(always)]
    unsafe fn fixed<const N: usize>(src: *const u8, dst: *mut u8) {
        // SAFETY: the caller's contract with len == N.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, N) }
    }
    // SAFETY: the caller's contract; in every arm the length copied
    // equals `len`.
    unsafe {
        match len {
            8 => fixed::<8>(src, dst),
            16 => fixed::<16>(src, dst),
            24 => fixed::<24>(src, dst),
            32 => fixed::<32>(src, dst),
            40 => fixed::<40>(src, dst),
            48 => fixed::<48>(src, dst),
            56 => fixed::<56>(src, dst),
            64 => fixed::<64>(src, dst),
            _ => core::ptr::copy_nonoverlapping(src, dst, len),
        }
    }
}

/// Production [`ControlWords`]: atomics created from the control page pointer.
#[derive(Clone, Copy)]
struct SharedControl {
    header: NonNull<u8>,
}

impl SharedControl {
    #[inline]
    fn word(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is 4-aligned and < 4096 (a ring_control constant,
        // or an offset RingPeer checked) and the header is 4096-aligned and valid for atomic
        // access while the RingMemory/half exists (RingMemory::new contract);
        // the returned reference does not outlive `self`, which lives no
        // longer than its half. Shared access through an AtomicU32 is the
        // sanctioned way to touch memory the peer writes concurrently.
        unsafe { AtomicU32::from_ptr(self.header.as_ptr().add(offset).cast::<u32>()) }
    }
}

impl ControlWords for SharedControl {
    #[inline]
    fn load_write_index(&self, order: Ordering) -> u32 {
        self.word(ring_control::WRITE_INDEX).load(order)
    }
    #[inline]
    fn store_write_index(&self, value: u32, order: Ordering) {
        self.word(ring_control::WRITE_INDEX).store(value, order)
    }
    #[inline]
    fn load_read_index(&self, order: Ordering) -> u32 {
        self.word(ring_control::READ_INDEX).load(order)
    }
    #[inline]
    fn store_read_index(&self, value: u32, order: Ordering) {
        self.word(ring_control::READ_INDEX).store(value, order)
    }
    #[inline]
    fn load_interrupt_mask(&self, order: Ordering) -> u32 {
        self.word(ring_control::INTERRUPT_MASK).load(order)
    }
    #[inline]
    fn store_interrupt_mask(&self, value: u32, order: Ordering) {
        self.word(ring_control::INTERRUPT_MASK).store(value, order)
    }
    #[inline]
    fn load_pending_send_size(&self, order: Ordering) -> u32 {
        self.word(ring_control::PENDING_SEND_SIZE).load(order)
    }
    #[inline]
    fn store_pending_send_size(&self, value: u32, order: Ordering) {
        self.word(ring_control::PENDING_SEND_SIZE).store(value, order)
    }
    #[inline]
    fn load_feature_bits(&self, order: Ordering) -> u32 {
        self.word(ring_control::FEATURE_BITS).load(order)
    }
    #[inline]
    fn fence_seq_cst(&self) {
        core::sync::atomic::fence(Ordering::SeqCst)
    }
}

/// Per-half counters (monotonic, wrapping never in practice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Packets written or read (including skipped ones on the read side).
    pub packets: u64,
    /// Packet bytes written or read (`len8 * 8`, without the trailer).
    pub bytes: u64,
    /// Commits that published a new index.
    pub commits: u64,
    /// Commits that asked for the peer to be signalled.
    pub signals: u64,
    /// Writes refused because the ring was full.
    pub full: u64,
    /// Corruption events (the first one makes the half sticky-corrupt; later
    /// calls that are refused because of it count too).
    pub corrupt: u64,
    /// Read side: packets skipped because their extended header was invalid
    /// or they did not fit the caller's buffer.
    pub skipped: u64,
}

/// Why a write failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// Not enough free space now (not an error of the peer): `needed` bytes
    /// (packet + trailer) must be free, plus 8 so the ring never fills
    /// completely. Retry after the reader frees space (see
    /// [`RingWriter::request_space`]).
    Full {
        /// Ring bytes the packet takes (padded packet + 8-byte trailer).
        needed: u32,
        /// Free bytes seen.
        free: u32,
    },
    /// The packet can never fit this ring (or exceeds the len8 limit).
    TooLarge {
        /// Packet length in bytes.
        len: usize,
    },
    /// (`write` only) the segments do not start with a descriptor whose
    /// offset8/len8 match the packet.
    BadDescriptor,
    /// The ring is corrupt (sticky).
    Corrupt(Corruption),
}

impl WriteError {
    /// Whether this is the (non-corruption) "ring full, retry later" outcome.
    pub fn is_full(&self) -> bool {
        matches!(self, WriteError::Full { .. })
    }
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WriteError::Full { needed, free } => write!(f, "ring full: need {needed} bytes, {free} free"),
            WriteError::TooLarge { len } => write!(f, "packet of {len} bytes cannot fit the ring"),
            WriteError::BadDescriptor => f.write_str("packet descriptor does not match the packet length"),
            WriteError::Corrupt(c) => write!(f, "{c}"),
        }
    }
}

/// Why a read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The ring is corrupt (sticky).
    Corrupt(Corruption),
    /// The packet did not fit the caller's buffer; it was skipped.
    TooLarge {
        /// Packet length (`len8 * 8`).
        len: usize,
    },
    /// The packet's framing was fine but its extended header was not; it
    /// was skipped.
    Malformed(PacketError),
}

impl ReadError {
    /// Whether the ring is now (stickily) corrupt, as opposed to one packet
    /// having been skipped.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, ReadError::Corrupt(_))
    }
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ReadError::Corrupt(c) => write!(f, "{c}"),
            ReadError::TooLarge { len } => write!(f, "packet of {len} bytes exceeds the receive buffer; skipped"),
            ReadError::Malformed(e) => write!(f, "malformed packet skipped: {e}"),
        }
    }
}

struct WriterState {
    mem: RingMemory,
    /// Last read index seen (validated).
    cached_read: u32,
    /// Write index last published.
    committed_write: u32,
    /// Where the next packet goes (uncommitted packets lie in between).
    next_write: u32,
    corrupt: Option<Corruption>,
    counters: RingCounters,
}

/// The producer half of a ring.
pub struct RingWriter {
    // Padded so that the writer's hot state never shares a cache line with a
    // reader half living next to it.
    state: CachePadded<WriterState>,
}

// SAFETY: a RingWriter only holds pointers into the ring's shared memory,
// which RingMemory::new's contract keeps valid and reserved for this one
// writer; moving it to another thread moves that exclusive role along.
unsafe impl Send for RingWriter {}

impl fmt::Debug for RingWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingWriter")
            .field("data_size", &self.state.mem.data_size)
            .field("committed_write", &self.state.committed_write)
            .field("next_write", &self.state.next_write)
            .field("cached_read", &self.state.cached_read)
            .field("corrupt", &self.state.corrupt)
            .field("counters", &self.state.counters)
            .finish()
    }
}

impl RingWriter {
    /// Takes the producer role on `mem`. Picks up the indices currently in
    /// the control page (0 and 0 for a fresh ring); if they are invalid the
    /// writer starts out corrupt.
    pub fn new(mem: RingMemory) -> Self {
        let c = mem.control();
        let size = mem.data_size;
        let mut corrupt = None;
        let write = match check_index(c.load_write_index(Ordering::Relaxed), size, true) {
            Ok(w) => w,
            Err(e) => {
                corrupt = Some(e);
                0
            }
        };
        let read = match check_index(c.load_read_index(Ordering::Acquire), size, false) {
            Ok(r) => r,
            Err(e) => {
                corrupt = corrupt.or(Some(e));
                write
            }
        };
        let counters = RingCounters { corrupt: corrupt.is_some() as u64, ..RingCounters::default() };
        RingWriter {
            state: CachePadded::new(WriterState {
                mem,
                cached_read: read,
                committed_write: write,
                next_write: write,
                corrupt,
                counters,
            }),
        }
    }

    /// Data area size in bytes.
    pub fn data_size(&self) -> u32 {
        self.state.mem.data_size
    }

    /// Counters.
    pub fn counters(&self) -> RingCounters {
        self.state.counters
    }

    /// The sticky corruption, if any.
    pub fn corruption(&self) -> Option<Corruption> {
        self.state.corrupt
    }

    fn fail(&mut self, e: Corruption) -> Corruption {
        let s = &mut *self.state;
        s.counters.corrupt += 1;
        *s.corrupt.get_or_insert(e)
    }

    fn check_sticky(&mut self) -> Result<(), Corruption> {
        match self.state.corrupt {
            Some(e) => {
                self.state.counters.corrupt += 1;
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn free_with(&self, read: u32) -> u32 {
        let s = &*self.state;
        s.mem.data_size - ring_distance(read, s.next_write, s.mem.data_size)
    }

    /// Free bytes after the uncommitted packets, refreshing the peer's read
    /// index. A packet of `n` bytes (padded, plus trailer) fits when `free > n`.
    pub fn free_bytes(&mut self) -> Result<u32, Corruption> {
        self.check_sticky()?;
        self.refresh_read()?;
        Ok(self.free_with(self.state.cached_read))
    }

    fn refresh_read(&mut self) -> Result<(), Corruption> {
        let s = &*self.state;
        match protocol::load_read_index(&s.mem.control(), s.mem.data_size, s.cached_read, s.committed_write) {
            Ok(r) => {
                self.state.cached_read = r;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Appends one packet made of `segments` (which together start with a
    /// [`crate::packet::PacketDescriptor`] whose `len8` covers them, padded
    /// to 8): writes the segments, zero padding and the trailer. Not visible
    /// to the reader until [`commit`](Self::commit).
    pub fn write(&mut self, segments: &[&[u8]]) -> Result<(), WriteError> {
        let mut desc = [0u8; DESCRIPTOR_SIZE];
        // Common case: the first segment holds the whole descriptor.
        match segments.first().and_then(|s| s.get(..DESCRIPTOR_SIZE)) {
            Some(head) => desc.copy_from_slice(head),
            None => {
                let mut filled = 0;
                for seg in segments {
                    if filled == DESCRIPTOR_SIZE {
                        break;
                    }
                    let n = seg.len().min(DESCRIPTOR_SIZE - filled);
                    desc[filled..filled + n].copy_from_slice(&seg[..n]);
                    filled += n;
                }
                if filled < DESCRIPTOR_SIZE {
                    return Err(WriteError::BadDescriptor);
                }
            }
        }
        let total = segments.iter().fold(0usize, |acc, s| acc.saturating_add(s.len()));
        let offset8 = u16::from_le_bytes([desc[2], desc[3]]);
        let len8 = u16::from_le_bytes([desc[4], desc[5]]);
        if offset8 < 2 || offset8 > len8 || len8 as usize != total.div_ceil(8) {
            return Err(WriteError::BadDescriptor);
        }
        self.write_segments(segments, total)
    }

    /// Like [`write`](Self::write) but without checking the descriptor, so a
    /// test or a simulated host can inject malformed packets. The packet
    /// length still has to be at least 16 and fit the ring.
    pub fn write_raw(&mut self, segments: &[&[u8]]) -> Result<(), WriteError> {
        let total = segments.iter().fold(0usize, |acc, s| acc.saturating_add(s.len()));
        self.write_segments(segments, total)
    }

    /// Writes a packet of `total` bytes (the sum of the segment lengths).
    #[inline]
    fn write_segments(&mut self, segments: &[&[u8]], total: usize) -> Result<(), WriteError> {
        self.check_sticky().map_err(WriteError::Corrupt)?;
        // Bound `total` before rounding it up: a saturated sum near
        // usize::MAX would overflow `div_ceil(8) * 8` (a panic in debug builds).
        if !(DESCRIPTOR_SIZE..=MAX_PACKET_LEN).contains(&total) {
            return Err(WriteError::TooLarge { len: total });
        }
        // MAX_PACKET_LEN is a multiple of 8, so padded <= MAX_PACKET_LEN.
        let padded = total.div_ceil(8) * 8;
        let needed = padded + TRAILER_SIZE;
        if needed >= self.state.mem.data_size as usize {
            return Err(WriteError::TooLarge { len: total });
        }
        let needed = needed as u32;
        // The cached read index is at or behind the real one, so the free
        // space it gives is a lower bound: only when it is too small do we
        // load (and validate) the peer's index again.
        if self.free_with(self.state.cached_read) <= needed {
            self.refresh_read().map_err(WriteError::Corrupt)?;
            let free = self.free_with(self.state.cached_read);
            // Never fill the ring completely: read == write means empty.
            if free <= needed {
                self.state.counters.full += 1;
                return Err(WriteError::Full { needed, free });
            }
        }
        let s = &mut *self.state;
        let size = s.mem.data_size;
        let start = s.next_write;
        let trailer = (start as u64) << 32;
        if s.mem.contiguous(start, needed) {
            let pad = padded - total;
            // SAFETY: `start` < size is our own index and `needed` < size
            // bytes from it are inside the mapping (`contiguous`). `start`
            // and `padded` are multiples of 8 and the data area is
            // page-aligned, so the two u64 stores are aligned. The segments
            // are private memory (they cannot overlap the shared mapping)
            // and add up to `total` = `padded - pad` bytes. The zero qword
            // for the padding is stored first and then partly overwritten
            // by the packet's last bytes. Raw stores: see the module docs.
            unsafe {
                let dst = s.mem.data.as_ptr().add(start as usize);
                if pad != 0 {
                    dst.add(padded - 8).cast::<u64>().write(0);
                }
                let mut at = 0;
                for seg in segments {
                    copy_bytes(seg.as_ptr(), dst.add(at), seg.len());
                    at += seg.len();
                }
                dst.add(padded).cast::<u64>().write(trailer.to_le());
            }
        } else {
            let mut pos = start;
            for seg in segments.iter().filter(|s| !s.is_empty()) {
                s.mem.copy_in(pos, seg);
                pos = advance(pos, seg.len() as u32, size);
            }
            let pad = padded - total;
            if pad != 0 {
                s.mem.copy_in(pos, &[0u8; 8][..pad]);
                pos = advance(pos, pad as u32, size);
            }
            s.mem.copy_in(pos, &trailer.to_le_bytes());
        }
        s.next_write = advance(start, needed, size);
        s.counters.packets += 1;
        s.counters.bytes += padded as u64;
        Ok(())
    }

    /// Drops the packets written since the last commit.
    pub fn revert(&mut self) {
        self.state.next_write = self.state.committed_write;
    }

    /// Bytes written but not committed yet.
    pub fn uncommitted_bytes(&self) -> u32 {
        ring_distance(self.state.committed_write, self.state.next_write, self.state.mem.data_size)
    }

    /// Publishes the packets written since the last commit. Returns whether
    /// the reader must be signalled (the ring went from empty to non-empty
    /// and the reader's interrupt mask is clear). Committing nothing is a
    /// no-op returning `false`.
    pub fn commit(&mut self) -> Result<bool, Corruption> {
        self.check_sticky()?;
        let s = &*self.state;
        if s.next_write == s.committed_write {
            return Ok(false);
        }
        let r =
            protocol::writer_commit(&s.mem.control(), s.mem.data_size, s.cached_read, s.committed_write, s.next_write);
        let s = &mut *self.state;
        s.committed_write = s.next_write;
        s.counters.commits += 1;
        match r {
            Ok(c) => {
                s.cached_read = c.read_index;
                s.counters.signals += c.signal as u64;
                Ok(c.signal)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Call when blocked on [`WriteError::Full`]: asks the reader to signal
    /// once more than `needed` bytes are free (`needed` from the error).
    /// Returns `true` if the space is already there (the request is cleared
    /// again; retry the write at once), `false` if the caller should wait
    /// for the signal.
    pub fn request_space(&mut self, needed: u32) -> Result<bool, Corruption> {
        self.check_sticky()?;
        let s = &*self.state;
        let c = s.mem.control();
        match protocol::writer_request_space(&c, s.mem.data_size, needed, s.cached_read, s.committed_write) {
            Ok(r) => {
                self.state.cached_read = r;
                if self.free_with(r) > needed {
                    c.store_pending_send_size(0, Ordering::Relaxed);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Clears a space request (after the signal came, or when giving up).
    pub fn clear_space_request(&mut self) {
        self.state.mem.control().store_pending_send_size(0, Ordering::Relaxed);
    }
}

struct ReaderState {
    mem: RingMemory,
    /// Last write index seen (validated).
    cached_write: u32,
    /// Read index last published.
    committed_read: u32,
    /// Where the next packet starts.
    next_read: u32,
    corrupt: Option<Corruption>,
    counters: RingCounters,
}

/// The consumer half of a ring.
pub struct RingReader {
    // Padded: see RingWriter.
    state: CachePadded<ReaderState>,
}

// SAFETY: as for RingWriter: exclusive reader role over memory kept valid by
// RingMemory::new's contract.
unsafe impl Send for RingReader {}

impl fmt::Debug for RingReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingReader")
            .field("data_size", &self.state.mem.data_size)
            .field("committed_read", &self.state.committed_read)
            .field("next_read", &self.state.next_read)
            .field("cached_write", &self.state.cached_write)
            .field("corrupt", &self.state.corrupt)
            .field("counters", &self.state.counters)
            .finish()
    }
}

impl RingReader {
    /// Takes the consumer role on `mem`, starting at the read index in the
    /// control page (0 for a fresh ring); an invalid index makes the reader
    /// start out corrupt.
    pub fn new(mem: RingMemory) -> Self {
        let c = mem.control();
        let (read, corrupt) = match check_index(c.load_read_index(Ordering::Relaxed), mem.data_size, false) {
            Ok(r) => (r, None),
            Err(e) => (0, Some(e)),
        };
        let counters = RingCounters { corrupt: corrupt.is_some() as u64, ..RingCounters::default() };
        RingReader {
            state: CachePadded::new(ReaderState {
                mem,
                cached_write: read,
                committed_read: read,
                next_read: read,
                corrupt,
                counters,
            }),
        }
    }

    /// Data area size in bytes.
    pub fn data_size(&self) -> u32 {
        self.state.mem.data_size
    }

    /// Counters.
    pub fn counters(&self) -> RingCounters {
        self.state.counters
    }

    /// The sticky corruption, if any.
    pub fn corruption(&self) -> Option<Corruption> {
        self.state.corrupt
    }

    fn fail(&mut self, e: Corruption) -> Corruption {
        let s = &mut *self.state;
        s.counters.corrupt += 1;
        *s.corrupt.get_or_insert(e)
    }

    fn check_sticky(&mut self) -> Result<(), Corruption> {
        match self.state.corrupt {
            Some(e) => {
                self.state.counters.corrupt += 1;
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn refresh_write(&mut self) -> Result<(), Corruption> {
        let s = &*self.state;
        match protocol::load_write_index(&s.mem.control(), s.mem.data_size, s.committed_read, s.next_read) {
            Ok(w) => {
                self.state.cached_write = w;
                Ok(())
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Bytes published by the writer and not yet read (refreshes the write index).
    pub fn available_bytes(&mut self) -> Result<u32, Corruption> {
        self.check_sticky()?;
        self.refresh_write()?;
        let s = &*self.state;
        Ok(ring_distance(s.next_read, s.cached_write, s.mem.data_size))
    }

    /// Copies the next packet (exactly `len8 * 8` bytes) into `buf` and
    /// returns its length, or `None` if the ring is empty. The framing is
    /// validated on the private copy of the descriptor; the rest of the
    /// packet is copied after that, so there is no double fetch.
    pub fn read_raw(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        self.check_sticky().map_err(ReadError::Corrupt)?;
        let size = self.state.mem.data_size;
        let mut available = ring_distance(self.state.next_read, self.state.cached_write, size);
        if available == 0 {
            self.refresh_write().map_err(ReadError::Corrupt)?;
            available = ring_distance(self.state.next_read, self.state.cached_write, size);
            if available == 0 {
                return Ok(None);
            }
        }
        let mut desc = [0u8; DESCRIPTOR_SIZE];
        let min = (DESCRIPTOR_SIZE + TRAILER_SIZE) as u32;
        if available < min {
            return Err(ReadError::Corrupt(self.fail(Corruption::PacketBeyondWriteIndex { needed: min, available })));
        }
        let start = self.state.next_read;
        if self.state.mem.contiguous(start, DESCRIPTOR_SIZE as u32) {
            // SAFETY: `start` < size is our own index and the 16 bytes from
            // it are inside the mapping (`contiguous`); `desc` is private.
            // A fixed-size copy compiles to two loads and stores.
            unsafe {
                let src = self.state.mem.data.as_ptr().add(start as usize);
                core::ptr::copy_nonoverlapping(src, desc.as_mut_ptr(), DESCRIPTOR_SIZE);
            }
        } else {
            self.state.mem.copy_out(start, &mut desc);
        }
        let offset8 = u16::from_le_bytes([desc[2], desc[3]]);
        let len8 = u16::from_le_bytes([desc[4], desc[5]]);
        if len8 < 2 || offset8 < 2 || offset8 > len8 {
            return Err(ReadError::Corrupt(self.fail(Corruption::BadPacketFraming { len8, offset8 })));
        }
        let len = len8 as usize * 8;
        let needed = len as u32 + TRAILER_SIZE as u32;
        if needed > available {
            return Err(ReadError::Corrupt(self.fail(Corruption::PacketBeyondWriteIndex { needed, available })));
        }
        let s = &mut *self.state;
        s.next_read = advance(start, needed, size);
        s.counters.packets += 1;
        s.counters.bytes += len as u64;
        let Some(dst) = buf.get_mut(..len) else {
            s.counters.skipped += 1;
            return Err(ReadError::TooLarge { len });
        };
        // The descriptor goes in from the validated private copy (no second
        // fetch from shared memory); the rest is copied after it.
        let (head, rest) = dst.split_at_mut(DESCRIPTOR_SIZE);
        head.copy_from_slice(&desc);
        let rest_at = advance(start, DESCRIPTOR_SIZE as u32, size);
        if s.mem.contiguous(rest_at, rest.len() as u32) {
            // SAFETY: `rest_at` < size and the `len - 16` < size bytes from
            // it are inside the mapping (`contiguous`); `rest` is private
            // and exactly that long.
            unsafe { copy_bytes(s.mem.data.as_ptr().add(rest_at as usize), rest.as_mut_ptr(), rest.len()) };
        } else {
            s.mem.copy_out(rest_at, rest);
        }
        Ok(Some(len))
    }

    /// Reads and parses the next packet into `buf` (see
    /// [`read_raw`](Self::read_raw)); `None` if the ring is empty.
    pub fn read<'b>(&mut self, buf: &'b mut [u8]) -> Result<Option<IncomingPacket<'b>>, ReadError> {
        let Some(len) = self.read_raw(buf)? else {
            return Ok(None);
        };
        match IncomingPacket::parse(buf.get(..len).unwrap_or(&[])) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                self.state.counters.skipped += 1;
                Err(ReadError::Malformed(e))
            }
        }
    }

    /// Publishes the read position after the packets read since the last
    /// commit. Returns whether the writer must be signalled (it asked for
    /// space with pending_send_sz and the free space crossed that amount in
    /// this pass). Committing nothing is a no-op returning `false`.
    pub fn commit(&mut self) -> Result<bool, Corruption> {
        self.check_sticky()?;
        let s = &*self.state;
        if s.next_read == s.committed_read {
            return Ok(false);
        }
        let r = protocol::reader_commit(&s.mem.control(), s.mem.data_size, s.committed_read, s.next_read);
        let s = &mut *self.state;
        s.committed_read = s.next_read;
        s.counters.commits += 1;
        match r {
            Ok(signal) => {
                s.counters.signals += signal as u64;
                Ok(signal)
            }
            Err(e) => Err(self.fail(e)),
        }
    }

    /// Masks interrupts from the writer while draining.
    pub fn begin_read(&mut self) {
        protocol::begin_read(&self.state.mem.control());
    }

    /// Unmasks interrupts and returns whether data arrived meanwhile; if so
    /// the caller must drain again (calling `begin_read` first), or it could
    /// miss data for which the writer decided not to signal.
    pub fn end_read(&mut self) -> Result<bool, Corruption> {
        self.check_sticky()?;
        let s = &*self.state;
        match protocol::end_read(&s.mem.control(), s.mem.data_size, s.committed_read, s.next_read) {
            Ok(w) => {
                self.state.cached_write = w;
                Ok(w != self.state.next_read)
            }
            Err(e) => Err(self.fail(e)),
        }
    }
}

#[cfg(feature = "alloc")]
pub use owned::{OwnedRing, RingPeer};

#[cfg(feature = "alloc")]
mod owned {
    use super::*;
    use alloc::alloc::{alloc_zeroed, dealloc, Layout};

    /// A ring in private heap memory with both halves, for tests, fuzzing
    /// and benchmarks (NOT for drivers: the memory is not shared with any
    /// host). It also lets a test play a misbehaving peer by poking the
    /// control page and data area.
    pub struct OwnedRing {
        base: NonNull<u8>,
        layout: Layout,
        data_size: u32,
        /// The producer half.
        pub writer: RingWriter,
        /// The consumer half.
        pub reader: RingReader,
    }

    impl fmt::Debug for OwnedRing {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("OwnedRing").field("writer", &self.writer).field("reader", &self.reader).finish()
        }
    }

    // SAFETY: the halves are Send and the allocation is owned.
    unsafe impl Send for OwnedRing {}

    impl OwnedRing {
        /// A fresh, initialized ring with `data_pages` 4 KiB data pages
        /// (plain mapping). Returns `None` if the size is unusable or the
        /// allocation fails.
        pub fn new(data_pages: usize) -> Option<Self> {
            Self::with_contents(&[], &[], data_pages)
        }

        /// A ring whose control page starts with `control` and whose data
        /// area starts with `data` (both truncated to fit), WITHOUT
        /// initialization: for driving the reader/writer from arbitrary bytes.
        pub fn from_bytes(control: &[u8], data: &[u8], data_pages: usize) -> Option<Self> {
            Self::build(control, data, data_pages, false)
        }

        fn with_contents(control: &[u8], data: &[u8], data_pages: usize) -> Option<Self> {
            Self::build(control, data, data_pages, true)
        }

        fn build(control: &[u8], data: &[u8], data_pages: usize, init: bool) -> Option<Self> {
            let data_size = data_pages.checked_mul(HV_PAGE_SIZE)?;
            let total = data_size.checked_add(HV_PAGE_SIZE)?;
            let layout = Layout::from_size_align(total, HV_PAGE_SIZE).ok()?;
            if data_size == 0 || data_size > (u32::MAX / 2) as usize {
                return None;
            }
            // SAFETY: layout has non-zero size.
            let base = NonNull::new(unsafe { alloc_zeroed(layout) })?;
            let c = control.len().min(HV_PAGE_SIZE);
            let d = data.len().min(data_size);
            // SAFETY: base is a fresh allocation of `total` bytes; the copies
            // stay within the control page and the data area.
            unsafe {
                core::ptr::copy_nonoverlapping(control.as_ptr(), base.as_ptr(), c);
                core::ptr::copy_nonoverlapping(data.as_ptr(), base.as_ptr().add(HV_PAGE_SIZE), d);
            }
            // SAFETY: base + 4096 is inside the allocation and non-null.
            let data_ptr = unsafe { NonNull::new_unchecked(base.as_ptr().add(HV_PAGE_SIZE)) };
            // SAFETY: the allocation is valid, page-aligned, lives until Drop
            // (after both halves, which drop with `self`), and is accessed only
            // through the two halves built here and the poke helpers below.
            let make = || unsafe { RingMemory::new(base, data_ptr, data_size, Mapping::Plain) };
            let (Ok(wm), Ok(rm)) = (make(), make()) else {
                // SAFETY: allocated above with this layout.
                unsafe { dealloc(base.as_ptr(), layout) };
                return None;
            };
            if init {
                wm.initialize();
            }
            Some(OwnedRing {
                base,
                layout,
                data_size: data_size as u32,
                writer: RingWriter::new(wm),
                reader: RingReader::new(rm),
            })
        }

        /// Both halves at once, plus a handle to play the peer with.
        pub fn halves(&mut self) -> (&mut RingWriter, &mut RingReader, RingPeer<'_>) {
            let peer = RingPeer { base: self.base, data_size: self.data_size, _ring: core::marker::PhantomData };
            (&mut self.writer, &mut self.reader, peer)
        }

        /// A handle to play the peer with (poke and peek shared memory).
        pub fn peer(&self) -> RingPeer<'_> {
            RingPeer { base: self.base, data_size: self.data_size, _ring: core::marker::PhantomData }
        }

        /// See [`RingPeer::poke_control`].
        pub fn poke_control(&self, offset: usize, value: u32) {
            self.peer().poke_control(offset, value)
        }
        /// See [`RingPeer::peek_control`].
        pub fn peek_control(&self, offset: usize) -> u32 {
            self.peer().peek_control(offset)
        }
        /// See [`RingPeer::poke_data`].
        pub fn poke_data(&self, offset: usize, bytes: &[u8]) {
            self.peer().poke_data(offset, bytes)
        }
        /// See [`RingPeer::peek_data`].
        pub fn peek_data(&self, offset: usize, out: &mut [u8]) {
            self.peer().peek_data(offset, out)
        }
    }

    /// Raw access to an [`OwnedRing`]'s memory, for tests playing a
    /// misbehaving peer. Borrows the ring so the memory stays alive.
    #[derive(Clone, Copy, Debug)]
    pub struct RingPeer<'a> {
        base: NonNull<u8>,
        data_size: u32,
        _ring: core::marker::PhantomData<&'a OwnedRing>,
    }

    impl RingPeer<'_> {
        /// Stores `value` into the control word at `offset` (one of
        /// [`ring_control`]'s offsets, or any 4-aligned offset < 4096).
        /// Ignores bad offsets.
        pub fn poke_control(&self, offset: usize, value: u32) {
            if offset < HV_PAGE_SIZE && offset % 4 == 0 {
                SharedControl { header: self.base }.word(offset).store(value, Ordering::SeqCst);
            }
        }

        /// Loads the control word at `offset` (0 for a bad offset).
        pub fn peek_control(&self, offset: usize) -> u32 {
            if offset < HV_PAGE_SIZE && offset % 4 == 0 {
                SharedControl { header: self.base }.word(offset).load(Ordering::SeqCst)
            } else {
                0
            }
        }

        /// Writes `bytes` into the data area at `offset` (truncated at the end).
        pub fn poke_data(&self, offset: usize, bytes: &[u8]) {
            let size = self.data_size as usize;
            if offset >= size {
                return;
            }
            let n = bytes.len().min(size - offset);
            // SAFETY: [offset, offset + n) is inside the data area, which
            // lives as long as the borrowed OwnedRing.
            unsafe {
                core::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.as_ptr().add(HV_PAGE_SIZE + offset), n);
            }
        }

        /// Reads the data area at `offset` into `out` (truncated at the end).
        pub fn peek_data(&self, offset: usize, out: &mut [u8]) {
            let size = self.data_size as usize;
            if offset >= size {
                return;
            }
            let n = out.len().min(size - offset);
            // SAFETY: as in poke_data.
            unsafe {
                core::ptr::copy_nonoverlapping(self.base.as_ptr().add(HV_PAGE_SIZE + offset), out.as_mut_ptr(), n);
            }
        }
    }

    impl Drop for OwnedRing {
        fn drop(&mut self) {
            // SAFETY: allocated in `build` with this layout; the halves only
            // hold raw pointers and are never used after this (they are
            // dropped right after, without touching the memory).
            unsafe { dealloc(self.base.as_ptr(), self.layout) };
        }
    }
}
