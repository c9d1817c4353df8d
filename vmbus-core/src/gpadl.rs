// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! GPADLs (guest physical address descriptor lists): splitting a page list
//! into one GpadlHeader message and as many GpadlBody messages as needed, and
//! allocating GPADL handles.
//!
//! # Wire model
//!
//! The range data of a GPADL is one byte string of `range_buflen` bytes: for
//! every range an 8-byte record (`byte_count` u32, `byte_offset` u32) followed
//! by one little-endian u64 PFN per page the range touches. We treat it as a
//! stream of 8-byte *words*. The header message carries the first
//! [`HEADER_MAX_WORDS`] (27) words after its 20 fixed bytes, each body message
//! the next [`BODY_MAX_WORDS`] (28) after its 16 fixed bytes. With one range
//! that is 26 PFNs in the header (one word is the range record) and 28 per
//! body, so `n` pages need `1 + ceil((n - 26) / 28)` messages (1 for `n <= 26`).
//!
//! Body messages are numbered from 1 (`msgnumber`), in order; the host
//! reassembles them by concatenation.
//!
//! Everything here is allocation-free: [`GpadlMessages`] is an iterator that
//! builds each [`OutgoingMessage`] on the fly from the caller's PFN slices.

use crate::message::{
    ChannelMessage, GpaRange, GpadlBody, GpadlBodyMessage, GpadlHeader, GpadlHeaderMessage, MessageHeader, MessageType,
    OutgoingMessage,
};
use crate::platform::{HV_PAGE_SHIFT, HV_PAGE_SIZE};
use core::fmt;
use core::mem::size_of;

/// Words (8-byte units: range records and PFNs) carried by a GpadlHeader: (240 - 20) / 8.
pub const HEADER_MAX_WORDS: usize = (crate::hv::MESSAGE_PAYLOAD_SIZE - size_of::<GpadlHeader>()) / 8;
/// Words carried by a GpadlBody: (240 - 16) / 8.
pub const BODY_MAX_WORDS: usize = (crate::hv::MESSAGE_PAYLOAD_SIZE - size_of::<GpadlBody>()) / 8;
static_assertions::const_assert_eq!(HEADER_MAX_WORDS, 27);
static_assertions::const_assert_eq!(BODY_MAX_WORDS, 28);
static_assertions::const_assert_eq!(HEADER_MAX_WORDS - 1, crate::message::GPADL_HEADER_MAX_PFNS);
static_assertions::const_assert_eq!(BODY_MAX_WORDS, crate::message::GPADL_BODY_MAX_PFNS);

/// The largest `range_buflen` (a u16 on the wire).
pub const MAX_RANGE_BUFLEN: usize = u16::MAX as usize;
/// The most pages one single-range GPADL can describe: (65535 - 8) / 8.
pub const MAX_SINGLE_RANGE_PAGES: usize = (MAX_RANGE_BUFLEN - size_of::<GpaRange>()) / 8;

/// The first handle [`GpadlHandleAllocator`] hands out (the value Linux and
/// FreeBSD start their counters at; hosts are used to seeing it).
pub const FIRST_GPADL_HANDLE: u32 = 0x000E_1E10;

/// One GPA range: `byte_count` bytes starting `byte_offset` bytes into the
/// first of `pfns` (4 KiB Hyper-V frames, whatever the guest page size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpaRangeRef<'a> {
    /// Bytes described.
    pub byte_count: u32,
    /// Offset of the first byte inside the first page (< 4096).
    pub byte_offset: u32,
    /// Frame numbers, exactly the pages `byte_offset .. byte_offset + byte_count` touch.
    pub pfns: &'a [u64],
}

impl<'a> GpaRangeRef<'a> {
    /// A range covering `pfns` whole pages (offset 0, `pfns.len() * 4096` bytes).
    /// A range too large for a u32 byte count is caught by [`validate`](Self::validate).
    pub fn whole_pages(pfns: &'a [u64]) -> GpaRangeRef<'a> {
        let bytes = (pfns.len() as u64).saturating_mul(HV_PAGE_SIZE as u64);
        GpaRangeRef { byte_count: u32::try_from(bytes).unwrap_or(u32::MAX), byte_offset: 0, pfns }
    }

    /// Pages that `byte_offset .. byte_offset + byte_count` touches.
    pub fn pages_spanned(byte_count: u32, byte_offset: u32) -> u64 {
        let end = byte_offset as u64 + byte_count as u64;
        end.div_ceil(HV_PAGE_SIZE as u64) - (byte_offset as u64 >> HV_PAGE_SHIFT)
    }

    /// Bytes this range takes in the range buffer: 8 + 8 per PFN.
    pub fn buflen(&self) -> usize {
        size_of::<GpaRange>() + 8 * self.pfns.len()
    }

    /// Checks the range on its own: non-empty, offset inside the first page,
    /// and exactly as many PFNs as pages spanned.
    pub fn validate(&self) -> Result<(), GpadlError> {
        if self.byte_count == 0 || self.pfns.is_empty() {
            return Err(GpadlError::Empty);
        }
        if self.byte_offset as usize >= HV_PAGE_SIZE {
            return Err(GpadlError::OffsetOutsidePage(self.byte_offset));
        }
        let pages = Self::pages_spanned(self.byte_count, self.byte_offset);
        // A whole_pages() range that saturated its byte count lands here too.
        if pages != self.pfns.len() as u64 {
            return Err(GpadlError::PageCountMismatch { pages_spanned: pages, pfns: self.pfns.len() });
        }
        Ok(())
    }
}

/// Why a page list cannot be sent as a GPADL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpadlError {
    /// No ranges, a range of zero bytes or a range without PFNs.
    Empty,
    /// `byte_offset` is not inside the first page.
    OffsetOutsidePage(u32),
    /// The PFN count is not the number of pages the byte range touches.
    PageCountMismatch {
        /// Pages `byte_offset .. byte_offset + byte_count` touches.
        pages_spanned: u64,
        /// PFNs given.
        pfns: usize,
    },
    /// The ranges need more than 65535 bytes of range buffer (u16 `range_buflen`).
    TooLarge {
        /// Bytes needed.
        range_buflen: usize,
    },
    /// More ranges than a u16 `rangecount` can say.
    TooManyRanges(usize),
    /// Every handle the allocator probed is in use.
    HandlesExhausted,
}

impl fmt::Display for GpadlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GpadlError::Empty => f.write_str("empty GPADL page list"),
            GpadlError::OffsetOutsidePage(o) => write!(f, "byte offset {o} is outside the first page"),
            GpadlError::PageCountMismatch { pages_spanned, pfns } => {
                write!(f, "range spans {pages_spanned} pages but {pfns} PFNs were given")
            }
            GpadlError::TooLarge { range_buflen } => {
                write!(f, "GPADL needs {range_buflen} bytes of range buffer, more than 65535")
            }
            GpadlError::TooManyRanges(n) => write!(f, "{n} ranges exceed the u16 range count"),
            GpadlError::HandlesExhausted => f.write_str("no free GPADL handle"),
        }
    }
}

impl core::error::Error for GpadlError {}

/// The ranges of one GPADL: a single range (what Linux and FreeBSD send) or
/// several.
#[derive(Clone, Copy, Debug)]
enum Ranges<'a> {
    One(GpaRangeRef<'a>),
    Many(&'a [GpaRangeRef<'a>]),
}

impl<'a> Ranges<'a> {
    fn get(&self, i: usize) -> Option<&GpaRangeRef<'a>> {
        match self {
            Ranges::One(r) => (i == 0).then_some(r),
            Ranges::Many(rs) => rs.get(i),
        }
    }
    fn len(&self) -> usize {
        match self {
            Ranges::One(_) => 1,
            Ranges::Many(rs) => rs.len(),
        }
    }
}

/// Iterator over the messages that create one GPADL: a GpadlHeader, then
/// GpadlBody messages numbered from 1. Validated at construction; yields
/// [`message_count`](Self::message_count) messages.
#[derive(Clone, Debug)]
pub struct GpadlMessages<'a> {
    relid: u32,
    handle: u32,
    ranges: Ranges<'a>,
    range_buflen: u16,
    rangecount: u16,
    total_words: usize,
    /// Words already emitted.
    emitted: usize,
    /// Cursor: current range, and position inside it (0 = its record, k = PFN k-1).
    range_idx: usize,
    in_range: usize,
    /// Messages already emitted (0 = the header is next).
    messages: u32,
}

impl<'a> GpadlMessages<'a> {
    /// Messages for a single-range GPADL.
    pub fn new(relid: u32, handle: u32, range: GpaRangeRef<'a>) -> Result<GpadlMessages<'a>, GpadlError> {
        Self::build(relid, handle, Ranges::One(range))
    }

    /// Messages for a GPADL of several ranges (concatenated records).
    pub fn multi(relid: u32, handle: u32, ranges: &'a [GpaRangeRef<'a>]) -> Result<GpadlMessages<'a>, GpadlError> {
        Self::build(relid, handle, Ranges::Many(ranges))
    }

    fn build(relid: u32, handle: u32, ranges: Ranges<'a>) -> Result<GpadlMessages<'a>, GpadlError> {
        if ranges.len() == 0 {
            return Err(GpadlError::Empty);
        }
        let rangecount = u16::try_from(ranges.len()).map_err(|_| GpadlError::TooManyRanges(ranges.len()))?;
        let mut buflen: usize = 0;
        for i in 0..ranges.len() {
            let r = ranges.get(i).ok_or(GpadlError::Empty)?;
            r.validate()?;
            buflen = buflen.saturating_add(r.buflen());
        }
        let range_buflen = u16::try_from(buflen).map_err(|_| GpadlError::TooLarge { range_buflen: buflen })?;
        Ok(GpadlMessages {
            relid,
            handle,
            ranges,
            range_buflen,
            rangecount,
            total_words: buflen / 8,
            emitted: 0,
            range_idx: 0,
            in_range: 0,
            messages: 0,
        })
    }

    /// `range_buflen` of the header.
    pub fn range_buflen(&self) -> u16 {
        self.range_buflen
    }

    /// `rangecount` of the header.
    pub fn rangecount(&self) -> u16 {
        self.rangecount
    }

    /// Total number of messages (header + bodies) this GPADL needs.
    pub fn message_count(&self) -> usize {
        message_count_for_words(self.total_words)
    }

    /// The next word of the range buffer, advancing the cursor.
    fn next_word(&mut self) -> Option<u64> {
        let r = *self.ranges.get(self.range_idx)?;
        let word = if self.in_range == 0 {
            r.byte_count as u64 | (r.byte_offset as u64) << 32
        } else {
            *r.pfns.get(self.in_range - 1)?
        };
        self.in_range += 1;
        if self.in_range > r.pfns.len() {
            self.range_idx += 1;
            self.in_range = 0;
        }
        self.emitted += 1;
        Some(word)
    }

    /// Fills `buf` with up to `max` words; returns the bytes written.
    fn fill(&mut self, buf: &mut [u8; crate::hv::MESSAGE_PAYLOAD_SIZE], max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(w) = self.next_word() else { break };
            // n < max <= 28, so n * 8 + 8 <= 224 < 240.
            if let Some(dst) = buf.get_mut(n * 8..n * 8 + 8) {
                dst.copy_from_slice(&w.to_le_bytes());
            }
            n += 1;
        }
        n * 8
    }
}

/// Messages needed for a range buffer of `words` 8-byte words.
pub const fn message_count_for_words(words: usize) -> usize {
    if words <= HEADER_MAX_WORDS {
        1
    } else {
        1 + (words - HEADER_MAX_WORDS).div_ceil(BODY_MAX_WORDS)
    }
}

/// Messages needed for a single-range GPADL of `pages` pages.
pub const fn message_count_for_pages(pages: usize) -> usize {
    message_count_for_words(pages + 1)
}

impl Iterator for GpadlMessages<'_> {
    type Item = OutgoingMessage;

    fn next(&mut self) -> Option<OutgoingMessage> {
        let mut buf = [0u8; crate::hv::MESSAGE_PAYLOAD_SIZE];
        let out = if self.messages == 0 {
            let len = self.fill(&mut buf, HEADER_MAX_WORDS);
            let fixed = GpadlHeader {
                header: MessageHeader::new(MessageType::GPADL_HEADER),
                child_relid: self.relid,
                gpadl: self.handle,
                range_buflen: self.range_buflen,
                rangecount: self.rangecount,
            };
            OutgoingMessage::new(&ChannelMessage::GpadlHeader(GpadlHeaderMessage {
                fixed,
                range_bytes: buf.get(..len)?,
            }))
        } else {
            if self.emitted >= self.total_words {
                return None;
            }
            let len = self.fill(&mut buf, BODY_MAX_WORDS);
            let fixed = GpadlBody {
                header: MessageHeader::new(MessageType::GPADL_BODY),
                msgnumber: self.messages,
                gpadl: self.handle,
            };
            OutgoingMessage::new(&ChannelMessage::GpadlBody(GpadlBodyMessage { fixed, pfn_bytes: buf.get(..len)? }))
        };
        self.messages += 1;
        // Emission only fails for more than 240 bytes, and the word limits
        // above keep every message at or under 240 (20 + 27*8, 16 + 28*8).
        out.ok()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.message_count().saturating_sub(self.messages as usize);
        (left, Some(left))
    }
}

impl ExactSizeIterator for GpadlMessages<'_> {}

/// Hands out GPADL handles: counts up from [`FIRST_GPADL_HANDLE`], never 0,
/// never a handle the caller says is still in use.
#[derive(Clone, Debug)]
pub struct GpadlHandleAllocator {
    next: u32,
}

impl Default for GpadlHandleAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl GpadlHandleAllocator {
    /// How many candidates [`allocate`](Self::allocate) probes before giving
    /// up. A guest has far fewer live GPADLs than this, so the search only
    /// fails when the caller's `in_use` is wrong.
    pub const MAX_PROBES: u32 = 1 << 16;

    /// An allocator starting at [`FIRST_GPADL_HANDLE`].
    pub const fn new() -> Self {
        GpadlHandleAllocator { next: FIRST_GPADL_HANDLE }
    }

    /// An allocator starting at `first` (0 is skipped). For tests of wrap-around.
    pub const fn starting_at(first: u32) -> Self {
        GpadlHandleAllocator { next: first }
    }

    /// The next handle that is not 0 and for which `in_use` is false. The
    /// counter wraps from `u32::MAX` to 1.
    pub fn allocate(&mut self, mut in_use: impl FnMut(u32) -> bool) -> Result<u32, GpadlError> {
        for _ in 0..Self::MAX_PROBES {
            let candidate = self.next;
            self.next = self.next.wrapping_add(1);
            if candidate != 0 && !in_use(candidate) {
                return Ok(candidate);
            }
        }
        Err(GpadlError::HandlesExhausted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::u64s;
    use std::vec::Vec;

    fn reassemble(msgs: &[OutgoingMessage]) -> (GpadlHeader, Vec<u64>) {
        let mut words = Vec::new();
        let mut header = None;
        for (i, m) in msgs.iter().enumerate() {
            match ChannelMessage::parse(m.as_bytes()).unwrap() {
                ChannelMessage::GpadlHeader(h) => {
                    assert_eq!(i, 0);
                    header = Some(h.fixed);
                    words.extend(u64s(h.range_bytes));
                }
                ChannelMessage::GpadlBody(b) => {
                    assert_eq!(b.fixed.msgnumber as usize, i);
                    words.extend(b.pfns());
                }
                other => panic!("{other:?}"),
            }
        }
        (header.unwrap(), words)
    }

    #[test]
    fn two_ranges_match_linux_vector() {
        // vectors/vmbus-messages.json "gpadl_header_2_ranges" (padding zeroed).
        let p0 = [0x123456, 0x123457];
        let p1 = [0x2000AA, 0x2000AB, 0x2000AC];
        let ranges = [
            GpaRangeRef { byte_count: 8176, byte_offset: 16, pfns: &p0 },
            GpaRangeRef { byte_count: 9029, byte_offset: 2748, pfns: &p1 },
        ];
        let msgs: Vec<_> = GpadlMessages::multi(49, 925201, &ranges).unwrap().collect();
        assert_eq!(msgs.len(), 1);
        let expected = "0800000000000000310000001\
            11e0e0038000200f01f0000100000005634120000000000573412000000000045230000bc0a0000\
            aa00200000000000ab00200000000000ac00200000000000";
        let hex: std::string::String = msgs[0].as_bytes().iter().map(|b| std::format!("{b:02x}")).collect();
        assert_eq!(hex, expected.replace(' ', ""));
    }

    #[test]
    fn body_matches_linux_vector() {
        // vectors/vmbus-messages.json "gpadl_body_3_pfns" (padding zeroed):
        // a 29-page range puts 26 PFNs in the header and 3 in body 1.
        let mut pfns = [0u64; 29];
        pfns[26] = 11259375;
        pfns[27] = 11259376;
        pfns[28] = 267242409;
        let msgs: Vec<_> = GpadlMessages::new(1, 925202, GpaRangeRef::whole_pages(&pfns)).unwrap().collect();
        assert_eq!(msgs.len(), 2);
        let expected = "0900000000000000010000001\
            21e0e00efcdab0000000000f0cdab0000000000a9cbed0f00000000";
        let hex: std::string::String = msgs[1].as_bytes().iter().map(|b| std::format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn rejects_bad_ranges() {
        let pfns = [1u64, 2, 3];
        let bad = |r: GpaRangeRef<'_>| GpadlMessages::new(1, 2, r).unwrap_err();
        assert_eq!(bad(GpaRangeRef { byte_count: 0, byte_offset: 0, pfns: &pfns }), GpadlError::Empty);
        assert_eq!(bad(GpaRangeRef { byte_count: 10, byte_offset: 0, pfns: &[] }), GpadlError::Empty);
        assert_eq!(
            bad(GpaRangeRef { byte_count: 4096, byte_offset: 0, pfns: &pfns }),
            GpadlError::PageCountMismatch { pages_spanned: 1, pfns: 3 }
        );
        assert_eq!(
            bad(GpaRangeRef { byte_count: 4096, byte_offset: 4096, pfns: &pfns }),
            GpadlError::OffsetOutsidePage(4096)
        );
        // Offset pushes the range into a third page.
        assert!(GpadlMessages::new(1, 2, GpaRangeRef { byte_count: 8192, byte_offset: 1, pfns: &pfns }).is_ok());
        assert_eq!(GpadlMessages::multi(1, 2, &[]).unwrap_err(), GpadlError::Empty);
        let big: Vec<u64> = (0..MAX_SINGLE_RANGE_PAGES as u64 + 1).collect();
        assert_eq!(
            bad(GpaRangeRef::whole_pages(&big)),
            GpadlError::TooLarge { range_buflen: 8 + 8 * (MAX_SINGLE_RANGE_PAGES + 1) }
        );
        let max: Vec<u64> = (0..MAX_SINGLE_RANGE_PAGES as u64).collect();
        let m = GpadlMessages::new(1, 2, GpaRangeRef::whole_pages(&max)).unwrap();
        assert_eq!(m.range_buflen() as usize, 8 + 8 * MAX_SINGLE_RANGE_PAGES);
        assert_eq!(m.count(), message_count_for_pages(MAX_SINGLE_RANGE_PAGES));
    }

    #[test]
    fn message_counts_at_the_edges() {
        for (pages, count) in [(1, 1), (26, 1), (27, 2), (54, 2), (55, 3), (82, 3), (83, 4), (300, 11)] {
            let pfns: Vec<u64> = (1000..1000 + pages as u64).collect();
            let msgs: Vec<_> = GpadlMessages::new(7, 9, GpaRangeRef::whole_pages(&pfns)).unwrap().collect();
            assert_eq!(msgs.len(), count, "{pages} pages");
            let (h, words) = reassemble(&msgs);
            assert_eq!(h.range_buflen as usize, 8 + 8 * pages);
            assert_eq!(h.rangecount, 1);
            assert_eq!(words[0], (pages as u64) * 4096);
            assert_eq!(&words[1..], &pfns[..]);
        }
    }

    #[test]
    fn allocator_skips_zero_and_in_use() {
        let mut a = GpadlHandleAllocator::new();
        assert_eq!(a.allocate(|_| false), Ok(FIRST_GPADL_HANDLE));
        assert_eq!(a.allocate(|h| h == FIRST_GPADL_HANDLE + 1), Ok(FIRST_GPADL_HANDLE + 2));
        let mut w = GpadlHandleAllocator::starting_at(u32::MAX);
        assert_eq!(w.allocate(|_| false), Ok(u32::MAX));
        assert_eq!(w.allocate(|_| false), Ok(1));
        let mut full = GpadlHandleAllocator::new();
        assert_eq!(full.allocate(|_| true), Err(GpadlError::HandlesExhausted));
    }

    proptest::proptest! {
        #[test]
        fn split_reassembles(pages in 1usize..=600, offset in 0u32..4096, base in proptest::prelude::any::<u64>(),
                             relid in 1u32..2048, handle in 1u32..) {
            let pfns: Vec<u64> = (0..pages as u64).map(|i| base.wrapping_add(i.wrapping_mul(0x9E37_79B9))).collect();
            // A byte count that touches exactly `pages` pages from `offset`.
            let byte_count = (pages as u32) * 4096 - offset;
            let range = GpaRangeRef { byte_count, byte_offset: offset, pfns: &pfns };
            let it = GpadlMessages::new(relid, handle, range).unwrap();
            let expected_count = if pages <= 26 { 1 } else { 1 + (pages - 26).div_ceil(28) };
            proptest::prop_assert_eq!(it.len(), expected_count);
            let msgs: Vec<_> = it.collect();
            proptest::prop_assert_eq!(msgs.len(), expected_count);
            for m in &msgs {
                proptest::prop_assert!(m.as_bytes().len() <= 240);
            }
            let (h, words) = reassemble(&msgs);
            proptest::prop_assert_eq!(h.child_relid, relid);
            proptest::prop_assert_eq!(h.gpadl, handle);
            proptest::prop_assert_eq!(h.rangecount, 1);
            proptest::prop_assert_eq!(h.range_buflen as usize, 8 + 8 * pages);
            proptest::prop_assert_eq!(words.len() * 8, h.range_buflen as usize);
            proptest::prop_assert_eq!(words[0], byte_count as u64 | (offset as u64) << 32);
            proptest::prop_assert_eq!(&words[1..], &pfns[..]);
        }

        #[test]
        fn multi_range_reassembles(sizes in proptest::collection::vec(1usize..80, 1..6)) {
            let lists: Vec<Vec<u64>> = sizes.iter().enumerate()
                .map(|(r, &n)| (0..n as u64).map(|i| (r as u64) << 40 | i).collect()).collect();
            let ranges: Vec<GpaRangeRef<'_>> = lists.iter().map(|l| GpaRangeRef::whole_pages(l)).collect();
            let msgs: Vec<_> = GpadlMessages::multi(3, 4, &ranges).unwrap().collect();
            let total_words: usize = sizes.iter().map(|n| n + 1).sum();
            proptest::prop_assert_eq!(msgs.len(), message_count_for_words(total_words));
            let (h, words) = reassemble(&msgs);
            proptest::prop_assert_eq!(h.rangecount as usize, sizes.len());
            let mut expect = Vec::new();
            for l in &lists {
                expect.push(l.len() as u64 * 4096);
                expect.extend(l);
            }
            proptest::prop_assert_eq!(words, expect);
        }
    }
}
