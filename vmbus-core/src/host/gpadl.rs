// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! GPADL reassembly on the host side: a GpadlHeader followed by GpadlBody
//! messages is collected into the declared `range_buflen` bytes of range
//! records, then parsed into [`GpadlRange`]s.
//!
//! Everything here comes from the guest, so every count is checked against
//! what the header declared before any byte is kept, and the finished range
//! list must describe exactly the bytes received.

use super::{HostError, MsgnumberRule};
use crate::message::GpaRange;
use alloc::vec::Vec;
use zerocopy::FromBytes;

/// Size of a Hyper-V page, the unit of every PFN in a GPADL.
pub const HV_PAGE_SIZE: u64 = 4096;
/// PFNs above this bound cannot be guest-physical frames (52-bit physical
/// address space with 4 KiB pages).
pub const MAX_PFN: u64 = (1 << 40) - 1;

/// One range of an established GPADL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpadlRange {
    /// Bytes the range describes.
    pub byte_count: u32,
    /// Offset of the first byte inside the first page.
    pub byte_offset: u32,
    /// Guest page frame numbers (4 KiB pages), `ceil((byte_offset + byte_count) / 4096)` of them.
    pub pfns: Vec<u64>,
}

/// An established GPADL: guest memory the host may map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpadl {
    /// Guest-chosen handle.
    pub handle: u32,
    /// Channel it was created for.
    pub relid: u32,
    /// Ranges in the order the guest gave them.
    pub ranges: Vec<GpadlRange>,
}

impl Gpadl {
    /// Total number of PFNs over all ranges.
    pub fn page_count(&self) -> usize {
        self.ranges.iter().map(|r| r.pfns.len()).sum()
    }

    /// Every PFN, range after range.
    pub fn pfns(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|r| r.pfns.iter().copied())
    }

    /// Whether every range starts on a page boundary and covers whole pages
    /// (required for a ring-buffer GPADL).
    pub fn is_page_aligned(&self) -> bool {
        self.ranges.iter().all(|r| r.byte_offset == 0 && u64::from(r.byte_count) == r.pfns.len() as u64 * HV_PAGE_SIZE)
    }
}

/// A GPADL whose header arrived but whose body messages are still coming.
#[derive(Clone, Debug)]
pub(crate) struct PendingGpadl {
    pub relid: u32,
    pub rangecount: u16,
    /// Declared total bytes of range records (`range_buflen`).
    pub declared_len: usize,
    /// Bytes received so far (never more than `declared_len`).
    pub bytes: Vec<u8>,
    /// msgnumber the next body carries if the bodies are numbered.
    pub next_msgnumber: u32,
    /// Every body so far carried its sequential number.
    pub may_be_sequential: bool,
    /// Every body so far carried 0 (allowed by [`MsgnumberRule::SequentialOrZero`]).
    pub may_be_zero: bool,
}

impl PendingGpadl {
    /// A GPADL whose header declared `rangecount` ranges in `declared_len` bytes.
    pub fn new(relid: u32, rangecount: u16, declared_len: usize, rule: MsgnumberRule) -> PendingGpadl {
        let (first, may_be_zero) = match rule {
            MsgnumberRule::Sequential { first } => (first, false),
            MsgnumberRule::SequentialOrZero { first } => (first, true),
            MsgnumberRule::Ignore => (0, true),
        };
        PendingGpadl {
            relid,
            rangecount,
            declared_len,
            bytes: Vec::new(),
            next_msgnumber: first,
            may_be_sequential: true,
            may_be_zero,
        }
    }

    /// Checks a body's msgnumber against the numberings still possible for
    /// this GPADL (sequential, and all-zero if the rule allows it), and
    /// narrows them. The caller advances `next_msgnumber` once the body is taken.
    pub fn check_msgnumber(&mut self, handle: u32, got: u32) -> Result<(), HostError> {
        let sequential = self.may_be_sequential && got == self.next_msgnumber;
        let zero = self.may_be_zero && got == 0;
        if !sequential && !zero {
            let expected = if self.may_be_sequential { self.next_msgnumber } else { 0 };
            return Err(HostError::GpadlBadMsgnumber { handle, expected, got });
        }
        self.may_be_sequential = sequential;
        self.may_be_zero = zero;
        Ok(())
    }

    pub fn is_complete(&self) -> bool {
        self.bytes.len() == self.declared_len
    }

    /// Appends body bytes, refusing anything beyond the declared length.
    pub fn append(&mut self, handle: u32, more: &[u8]) -> Result<(), HostError> {
        let room = self.declared_len - self.bytes.len();
        if more.len() > room {
            return Err(HostError::GpadlTooManyPfns { handle });
        }
        self.bytes.extend_from_slice(more);
        Ok(())
    }

    /// Parses the complete record bytes into ranges. Each range's PFN count
    /// follows from its byte offset and count; the records must use up the
    /// bytes exactly.
    pub fn finish(&self, handle: u32) -> Result<Vec<GpadlRange>, HostError> {
        let bad = HostError::GpadlBadRanges { handle };
        let mut rest: &[u8] = &self.bytes;
        let mut ranges = Vec::new();
        for _ in 0..self.rangecount {
            let (range, tail) = GpaRange::read_from_prefix(rest).map_err(|_| bad)?;
            if range.byte_count == 0 || u64::from(range.byte_offset) >= HV_PAGE_SIZE {
                return Err(bad);
            }
            let pages = (u64::from(range.byte_offset) + u64::from(range.byte_count)).div_ceil(HV_PAGE_SIZE);
            // `pages` is at most 2^20 + 1, so the multiplication cannot overflow.
            let pfn_bytes = usize::try_from(pages * 8).map_err(|_| bad)?;
            let pfn_area = tail.get(..pfn_bytes).ok_or(bad)?;
            let pfns: Vec<u64> = crate::message::u64s(pfn_area).collect();
            if pfns.iter().any(|&p| p > MAX_PFN) {
                return Err(HostError::GpadlBadPfn { handle });
            }
            ranges.push(GpadlRange { byte_count: range.byte_count, byte_offset: range.byte_offset, pfns });
            rest = tail.get(pfn_bytes..).ok_or(bad)?;
        }
        if !rest.is_empty() {
            return Err(bad);
        }
        Ok(ranges)
    }
}
