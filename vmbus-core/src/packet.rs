// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Ring packet framing: the 16-byte packet descriptor, the extended headers
//! of transfer-page and GPA-direct packets, the ring control page layout,
//! a checked parser for incoming packets and builders for outgoing ones.
//!
//! Every struct here has alignment 1 (zerocopy little-endian integers)
//! because the C definitions are packed and because a packet copied out of a
//! ring lands at an arbitrary offset of a private buffer.
//!
//! [`IncomingPacket::parse`] works on bytes that were ALREADY COPIED out of
//! shared memory (see [`crate::ring::RingReader`]): the lengths it validates
//! are the lengths it then uses, so a host changing the ring underneath
//! cannot make it read out of bounds.

use core::fmt;
use core::mem::{offset_of, size_of};
use static_assertions::const_assert_eq;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::platform::HV_PAGE_SIZE;

/// A ring packet type (`vmbus_packet_type`), an open set: unknown values are
/// representable and reported as such.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PacketType(pub u16);

macro_rules! packet_types {
    ($( $konst:ident = $val:literal, )*) => {
        impl PacketType {
            $(
                #[doc = concat!("Packet type ", stringify!($val), ".")]
                pub const $konst: PacketType = PacketType($val);
            )*
            /// Name for logs.
            pub const fn name(self) -> &'static str {
                match self.0 {
                    $( $val => stringify!($konst), )*
                    _ => "UNKNOWN",
                }
            }
        }
    };
}

packet_types! {
    INVALID = 0,
    SYNCH = 1,
    ADD_TRANSFER_PAGE_SET = 2,
    REMOVE_TRANSFER_PAGE_SET = 3,
    ESTABLISH_GPADL = 4,
    TEARDOWN_GPADL = 5,
    DATA_INBAND = 6,
    DATA_TRANSFER_PAGES = 7,
    DATA_GPADL = 8,
    DATA_GPA_DIRECT = 9,
    CANCEL_REQUEST = 10,
    COMPLETION = 11,
    DATA_ADDITIONAL_PACKET = 12,
    ADDITIONAL_DATA = 13,
}

impl fmt::Debug for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// Descriptor flag: the sender wants a completion packet carrying the same
/// transaction id.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// Size of [`PacketDescriptor`] in bytes.
pub const DESCRIPTOR_SIZE: usize = 16;
/// Size of the trailer (previous write index << 32) after every packet.
pub const TRAILER_SIZE: usize = 8;
/// Largest packet (descriptor + extended header + payload, before the
/// trailer) that `len8` can describe.
pub const MAX_PACKET_LEN: usize = u16::MAX as usize * 8;

/// `vmpacket_descriptor`: the start of every ring packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct PacketDescriptor {
    /// Packet type ([`PacketType`]).
    pub packet_type: U16,
    /// Offset of the payload from the start of the descriptor, in 8-byte units.
    pub offset8: U16,
    /// Length of the packet including the descriptor, in 8-byte units
    /// (excluding the trailer).
    pub len8: U16,
    /// Flags ([`FLAG_COMPLETION_REQUESTED`]).
    pub flags: U16,
    /// Transaction id, echoed in the completion.
    pub trans_id: U64,
}
const_assert_eq!(size_of::<PacketDescriptor>(), DESCRIPTOR_SIZE);
const_assert_eq!(offset_of!(PacketDescriptor, packet_type), 0);
const_assert_eq!(offset_of!(PacketDescriptor, offset8), 2);
const_assert_eq!(offset_of!(PacketDescriptor, len8), 4);
const_assert_eq!(offset_of!(PacketDescriptor, flags), 6);
const_assert_eq!(offset_of!(PacketDescriptor, trans_id), 8);

impl PacketDescriptor {
    /// Builds a descriptor for a packet with `header_len` bytes before the
    /// payload (16 for in-band, more with an extended header; a multiple of
    /// 8) and `payload_len` payload bytes.
    pub fn new(
        packet_type: PacketType,
        flags: u16,
        trans_id: u64,
        header_len: usize,
        payload_len: usize,
    ) -> Result<Self, PacketError> {
        if header_len < DESCRIPTOR_SIZE || header_len % 8 != 0 {
            return Err(PacketError::BadHeaderLength { header_len });
        }
        let total = header_len
            .checked_add(payload_len)
            .filter(|t| *t <= MAX_PACKET_LEN)
            .ok_or(PacketError::TooLong { len: header_len.saturating_add(payload_len) })?;
        let len8 = total.div_ceil(8);
        // Both fit in u16: total <= MAX_PACKET_LEN and header_len <= total.
        Ok(PacketDescriptor {
            packet_type: U16::new(packet_type.0),
            offset8: U16::new((header_len / 8) as u16),
            len8: U16::new(len8 as u16),
            flags: U16::new(flags),
            trans_id: U64::new(trans_id),
        })
    }
}

/// `vmtransfer_page_packet_header` without its ranges: 24 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct TransferPageHeader {
    /// The packet descriptor (type 7).
    pub descriptor: PacketDescriptor,
    /// Id of the transfer page set (the registered receive buffer).
    pub transfer_page_set_id: U16,
    /// Whether the sender owns the page set.
    pub sender_owns_set: u8,
    /// Reserved.
    pub reserved: u8,
    /// Number of [`TransferPageRange`]s that follow.
    pub range_count: U32,
}
const_assert_eq!(size_of::<TransferPageHeader>(), 24);
const_assert_eq!(offset_of!(TransferPageHeader, transfer_page_set_id), 16);
const_assert_eq!(offset_of!(TransferPageHeader, sender_owns_set), 18);
const_assert_eq!(offset_of!(TransferPageHeader, reserved), 19);
const_assert_eq!(offset_of!(TransferPageHeader, range_count), 20);

/// `vmtransfer_page_range`: a byte range inside the transfer page set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct TransferPageRange {
    /// Length in bytes.
    pub byte_count: U32,
    /// Offset from the start of the page set.
    pub byte_offset: U32,
}
const_assert_eq!(size_of::<TransferPageRange>(), 8);
const_assert_eq!(offset_of!(TransferPageRange, byte_offset), 4);

/// GPA-direct packet header (`vmdata_gpa_direct` up to its ranges): 24 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct GpaDirectHeader {
    /// The packet descriptor (type 9).
    pub descriptor: PacketDescriptor,
    /// Reserved.
    pub reserved: U32,
    /// Number of GPA ranges that follow.
    pub range_count: U32,
}
const_assert_eq!(size_of::<GpaDirectHeader>(), 24);
const_assert_eq!(offset_of!(GpaDirectHeader, reserved), 16);
const_assert_eq!(offset_of!(GpaDirectHeader, range_count), 20);

/// Start of one GPA range (`gpa_range` / `hv_mpb_array`): length and offset
/// into the first page; `ceil((offset + len) / 4096)` PFNs (u64) follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct GpaRangeHeader {
    /// Length of the buffer in bytes.
    pub len: U32,
    /// Offset of the buffer in its first page (< 4096).
    pub offset: U32,
}
const_assert_eq!(size_of::<GpaRangeHeader>(), 8);
const_assert_eq!(offset_of!(GpaRangeHeader, offset), 4);

/// Byte offsets of the ring control page (`hv_ring_buffer`) fields.
pub mod ring_control {
    /// Producer's next write position in the data area (u32).
    pub const WRITE_INDEX: usize = 0x0;
    /// Consumer's next read position in the data area (u32).
    pub const READ_INDEX: usize = 0x4;
    /// Set by the consumer while draining: "do not interrupt me" (u32).
    pub const INTERRUPT_MASK: usize = 0x8;
    /// Set by a blocked producer: "signal me when this many bytes are free" (u32).
    pub const PENDING_SEND_SIZE: usize = 0xC;
    /// Feature bits (u32).
    pub const FEATURE_BITS: usize = 0x40;
    /// Feature bit 0: the pending-send-size protocol is supported.
    pub const FEATURE_PENDING_SEND_SIZE: u32 = 1;
    /// Offset of the data area from the control page.
    pub const DATA_OFFSET: usize = 0x1000;
}

/// The ring control page as a zerocopy struct, for layout checks and for
/// tests that build a control page from bytes. The ring code itself never
/// forms a reference to the shared page; it uses [`ring_control`] offsets.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct RingControlPage {
    /// See [`ring_control::WRITE_INDEX`].
    pub write_index: U32,
    /// See [`ring_control::READ_INDEX`].
    pub read_index: U32,
    /// See [`ring_control::INTERRUPT_MASK`].
    pub interrupt_mask: U32,
    /// See [`ring_control::PENDING_SEND_SIZE`].
    pub pending_send_size: U32,
    /// Reserved.
    pub reserved1: [u8; 48],
    /// See [`ring_control::FEATURE_BITS`].
    pub feature_bits: U32,
    /// Reserved up to the end of the page.
    pub reserved2: [u8; 4028],
}
const_assert_eq!(size_of::<RingControlPage>(), ring_control::DATA_OFFSET);
const_assert_eq!(offset_of!(RingControlPage, write_index), ring_control::WRITE_INDEX);
const_assert_eq!(offset_of!(RingControlPage, read_index), ring_control::READ_INDEX);
const_assert_eq!(offset_of!(RingControlPage, interrupt_mask), ring_control::INTERRUPT_MASK);
const_assert_eq!(offset_of!(RingControlPage, pending_send_size), ring_control::PENDING_SEND_SIZE);
const_assert_eq!(offset_of!(RingControlPage, feature_bits), ring_control::FEATURE_BITS);

/// Why packet bytes were rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// Fewer bytes than a descriptor, or fewer than `len8 * 8`.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        have: usize,
    },
    /// `offset8 < 2`: the payload would overlap the descriptor.
    OffsetTooSmall {
        /// The offending offset8.
        offset8: u16,
    },
    /// `len8 < offset8`: the payload would start after the end of the packet.
    OffsetBeyondLength {
        /// offset8 from the descriptor.
        offset8: u16,
        /// len8 from the descriptor.
        len8: u16,
    },
    /// The extended header (24 bytes) does not fit in `offset8 * 8`.
    ExtendedHeaderTruncated {
        /// The packet type.
        packet_type: PacketType,
        /// Bytes before the payload.
        header_len: usize,
    },
    /// More ranges than fit in the header area.
    TooManyRanges {
        /// The range count from the packet.
        range_count: u32,
    },
    /// A GPA range's offset is not inside its first page.
    GpaOffsetOutOfPage {
        /// Index of the range.
        index: u32,
        /// The offset.
        offset: u32,
    },
    /// A GPA range of length zero.
    GpaRangeEmpty {
        /// Index of the range.
        index: u32,
    },
    /// (Builder) a header length that is not a multiple of 8 or shorter than a descriptor.
    BadHeaderLength {
        /// The header length given.
        header_len: usize,
    },
    /// (Builder) the packet would be longer than `len8` can say.
    TooLong {
        /// The length asked for.
        len: usize,
    },
    /// (Builder) a range's PFN list does not match `ceil((offset + len) / 4096)`.
    PfnCountMismatch {
        /// Index of the range.
        index: usize,
        /// PFNs the range needs.
        expected: usize,
        /// PFNs given.
        given: usize,
    },
    /// (Builder) the output buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PacketError::Truncated { needed, have } => write!(f, "packet truncated: need {needed} bytes, have {have}"),
            PacketError::OffsetTooSmall { offset8 } => write!(f, "packet offset8 {offset8} overlaps the descriptor"),
            PacketError::OffsetBeyondLength { offset8, len8 } => {
                write!(f, "packet offset8 {offset8} beyond len8 {len8}")
            }
            PacketError::ExtendedHeaderTruncated { packet_type, header_len } => {
                write!(f, "{packet_type:?} extended header does not fit in {header_len} header bytes")
            }
            PacketError::TooManyRanges { range_count } => write!(f, "range count {range_count} does not fit"),
            PacketError::GpaOffsetOutOfPage { index, offset } => {
                write!(f, "GPA range {index} offset {offset} not within a page")
            }
            PacketError::GpaRangeEmpty { index } => write!(f, "GPA range {index} has length 0"),
            PacketError::BadHeaderLength { header_len } => write!(f, "bad packet header length {header_len}"),
            PacketError::TooLong { len } => write!(f, "packet length {len} exceeds the len8 limit"),
            PacketError::PfnCountMismatch { index, expected, given } => {
                write!(f, "GPA range {index} needs {expected} PFNs, {given} given")
            }
            PacketError::BufferTooSmall { needed } => write!(f, "output buffer too small: need {needed} bytes"),
        }
    }
}

/// Number of 4 KiB pages a buffer of `len` bytes at `offset` in its first
/// page spans. Computed in u64 so it cannot overflow.
pub const fn gpa_pfn_count(offset: u32, len: u32) -> u64 {
    (offset as u64 + len as u64).div_ceil(HV_PAGE_SIZE as u64)
}

/// A validated packet, borrowing the private copy it was parsed from.
#[derive(Clone, Copy, Debug)]
pub struct IncomingPacket<'a> {
    /// Packet type.
    pub packet_type: PacketType,
    /// Descriptor flags.
    pub flags: u16,
    /// Transaction id.
    pub trans_id: u64,
    /// Bytes from `offset8 * 8` to `len8 * 8` (includes the sender's padding).
    pub payload: &'a [u8],
    /// The typed extended header, if the type has one.
    pub extended: ExtendedHeader<'a>,
}

/// The bytes between the descriptor and the payload, typed by packet type.
#[derive(Clone, Copy, Debug)]
pub enum ExtendedHeader<'a> {
    /// No extended header was parsed (in-band, completion and unknown types);
    /// holds the raw bytes between the descriptor and the payload (usually empty).
    None(&'a [u8]),
    /// Transfer-page packet (type 7).
    TransferPages(TransferPages<'a>),
    /// GPA-direct packet (type 9).
    GpaDirect(GpaDirect<'a>),
}

/// The ranges of a transfer-page packet.
#[derive(Clone, Copy, Debug)]
pub struct TransferPages<'a> {
    /// Transfer page set id.
    pub transfer_page_set_id: u16,
    /// Whether the sender owns the set.
    pub sender_owns_set: bool,
    /// The ranges (exactly `range_count` of them).
    pub ranges: &'a [TransferPageRange],
}

/// The ranges of a GPA-direct packet, validated at parse time.
#[derive(Clone, Copy, Debug)]
pub struct GpaDirect<'a> {
    range_count: u32,
    /// Exactly the bytes of the `range_count` ranges.
    bytes: &'a [u8],
}

/// One GPA range.
#[derive(Clone, Copy, Debug)]
pub struct GpaRange<'a> {
    /// Buffer length in bytes (> 0).
    pub len: u32,
    /// Offset in the first page (< 4096).
    pub offset: u32,
    /// Guest page frame numbers, `ceil((offset + len) / 4096)` of them.
    pub pfns: &'a [U64],
}

impl<'a> GpaDirect<'a> {
    /// Number of ranges.
    pub fn range_count(&self) -> u32 {
        self.range_count
    }
    /// Iterates over the ranges.
    pub fn ranges(&self) -> GpaRangeIter<'a> {
        GpaRangeIter { rest: self.bytes, remaining: self.range_count }
    }
}

/// Iterator over [`GpaRange`]s.
#[derive(Clone, Debug)]
pub struct GpaRangeIter<'a> {
    rest: &'a [u8],
    remaining: u32,
}

/// Splits one range off the front of `bytes`. `Ok(None)` when `bytes` is too
/// short (the caller maps it to its own error).
fn split_gpa_range(bytes: &[u8], index: u32) -> Result<Option<(GpaRange<'_>, &[u8])>, PacketError> {
    let Ok((head, rest)) = GpaRangeHeader::read_from_prefix(bytes) else {
        return Ok(None);
    };
    let (len, offset) = (head.len.get(), head.offset.get());
    if offset as usize >= HV_PAGE_SIZE {
        return Err(PacketError::GpaOffsetOutOfPage { index, offset });
    }
    if len == 0 {
        return Err(PacketError::GpaRangeEmpty { index });
    }
    // At most (4095 + u32::MAX) / 4096 + 1 ~ 2^20: fits usize on 32/64 bit.
    let count = gpa_pfn_count(offset, len) as usize;
    let Ok((pfns, rest)) = <[U64]>::ref_from_prefix_with_elems(rest, count) else {
        return Ok(None);
    };
    Ok(Some((GpaRange { len, offset, pfns }, rest)))
}

impl<'a> Iterator for GpaRangeIter<'a> {
    type Item = GpaRange<'a>;
    fn next(&mut self) -> Option<GpaRange<'a>> {
        if self.remaining == 0 {
            return None;
        }
        // Validated at parse time; a failure here just ends the iteration.
        match split_gpa_range(self.rest, 0) {
            Ok(Some((range, rest))) => {
                self.rest = rest;
                self.remaining -= 1;
                Some(range)
            }
            _ => {
                self.remaining = 0;
                None
            }
        }
    }
}

impl<'a> IncomingPacket<'a> {
    /// Parses one packet from a private copy. `bytes` must hold at least
    /// `len8 * 8` bytes (more, e.g. the trailer, is ignored).
    // Inlined: the caller's Result is then built in place instead of being
    // copied out of a callee's stack slot (the ring's read path).
    #[inline]
    pub fn parse(bytes: &'a [u8]) -> Result<Self, PacketError> {
        let (desc, _) = PacketDescriptor::read_from_prefix(bytes)
            .map_err(|_| PacketError::Truncated { needed: DESCRIPTOR_SIZE, have: bytes.len() })?;
        let offset8 = desc.offset8.get();
        let len8 = desc.len8.get();
        if offset8 < 2 {
            return Err(PacketError::OffsetTooSmall { offset8 });
        }
        if len8 < offset8 {
            return Err(PacketError::OffsetBeyondLength { offset8, len8 });
        }
        let len = len8 as usize * 8;
        let header_len = offset8 as usize * 8;
        let packet = bytes.get(..len).ok_or(PacketError::Truncated { needed: len, have: bytes.len() })?;
        // header_len <= len checked above, so both splits are in range.
        let (header, payload) = packet.split_at(header_len);
        let packet_type = PacketType(desc.packet_type.get());
        let ext_bytes = header.get(DESCRIPTOR_SIZE..).unwrap_or(&[]);
        let extended = match packet_type {
            PacketType::DATA_TRANSFER_PAGES => {
                let (h, rest) = TransferPageHeader::read_from_prefix(header)
                    .map_err(|_| PacketError::ExtendedHeaderTruncated { packet_type, header_len })?;
                let range_count = h.range_count.get();
                let fits = rest.len() / size_of::<TransferPageRange>();
                if range_count as usize > fits {
                    return Err(PacketError::TooManyRanges { range_count });
                }
                let (ranges, _) = <[TransferPageRange]>::ref_from_prefix_with_elems(rest, range_count as usize)
                    .map_err(|_| PacketError::TooManyRanges { range_count })?;
                ExtendedHeader::TransferPages(TransferPages {
                    transfer_page_set_id: h.transfer_page_set_id.get(),
                    sender_owns_set: h.sender_owns_set != 0,
                    ranges,
                })
            }
            PacketType::DATA_GPA_DIRECT => {
                let (h, rest) = GpaDirectHeader::read_from_prefix(header)
                    .map_err(|_| PacketError::ExtendedHeaderTruncated { packet_type, header_len })?;
                let range_count = h.range_count.get();
                // Each range takes at least 16 bytes (len, offset, one PFN);
                // this bounds the loop below by the header size.
                if range_count as usize > rest.len() / 16 {
                    return Err(PacketError::TooManyRanges { range_count });
                }
                let mut cursor = rest;
                for index in 0..range_count {
                    match split_gpa_range(cursor, index)? {
                        Some((_, next)) => cursor = next,
                        None => return Err(PacketError::TooManyRanges { range_count }),
                    }
                }
                let used = rest.len() - cursor.len();
                ExtendedHeader::GpaDirect(GpaDirect { range_count, bytes: rest.get(..used).unwrap_or(&[]) })
            }
            _ => ExtendedHeader::None(ext_bytes),
        };
        Ok(IncomingPacket { packet_type, flags: desc.flags.get(), trans_id: desc.trans_id.get(), payload, extended })
    }

    /// Whether the sender asked for a completion.
    pub fn completion_requested(&self) -> bool {
        self.flags & FLAG_COMPLETION_REQUESTED != 0
    }
}

/// One outgoing GPA range: a buffer of `len` bytes starting `offset` bytes
/// into the first of `pfns`.
#[derive(Clone, Copy, Debug)]
pub struct PageRange<'a> {
    /// Buffer length in bytes.
    pub len: u32,
    /// Offset in the first page (< 4096).
    pub offset: u32,
    /// PFNs, exactly `ceil((offset + len) / 4096)` of them.
    pub pfns: &'a [u64],
}

/// Builds the header of an in-band packet (type 6) or a completion
/// (type 11): a 16-byte descriptor for `payload_len` payload bytes. Write it
/// followed by the payload with [`crate::ring::RingWriter::write`].
pub fn inband_header(
    packet_type: PacketType,
    flags: u16,
    trans_id: u64,
    payload_len: usize,
) -> Result<[u8; DESCRIPTOR_SIZE], PacketError> {
    let d = PacketDescriptor::new(packet_type, flags, trans_id, DESCRIPTOR_SIZE, payload_len)?;
    let mut out = [0u8; DESCRIPTOR_SIZE];
    out.copy_from_slice(d.as_bytes());
    Ok(out)
}

/// Size in bytes of the GPA-direct header (descriptor, reserved, count and
/// ranges) for `ranges`, rounded up to 8.
pub fn gpa_direct_header_len(ranges: &[PageRange<'_>]) -> usize {
    let mut len = size_of::<GpaDirectHeader>();
    for r in ranges {
        len = len.saturating_add(8).saturating_add(r.pfns.len().saturating_mul(8));
    }
    len.saturating_add(7) & !7
}

/// Writes a GPA-direct packet header (type 9) for `ranges` and a payload of
/// `payload_len` bytes into `out`; returns the number of header bytes
/// written (= `offset8 * 8`). Write `out[..n]` followed by the payload.
pub fn write_gpa_direct_header(
    out: &mut [u8],
    flags: u16,
    trans_id: u64,
    ranges: &[PageRange<'_>],
    payload_len: usize,
) -> Result<usize, PacketError> {
    let header_len = gpa_direct_header_len(ranges);
    let range_count = u32::try_from(ranges.len()).map_err(|_| PacketError::TooLong { len: header_len })?;
    let out = out.get_mut(..header_len).ok_or(PacketError::BufferTooSmall { needed: header_len })?;
    let desc = PacketDescriptor::new(PacketType::DATA_GPA_DIRECT, flags, trans_id, header_len, payload_len)?;
    let head = GpaDirectHeader { descriptor: desc, reserved: U32::new(0), range_count: U32::new(range_count) };
    out.fill(0);
    let (h, mut rest) = out.split_at_mut(size_of::<GpaDirectHeader>());
    h.copy_from_slice(head.as_bytes());
    for (index, r) in ranges.iter().enumerate() {
        if r.offset as usize >= HV_PAGE_SIZE {
            return Err(PacketError::GpaOffsetOutOfPage { index: index as u32, offset: r.offset });
        }
        if r.len == 0 {
            return Err(PacketError::GpaRangeEmpty { index: index as u32 });
        }
        let expected = gpa_pfn_count(r.offset, r.len) as usize;
        if expected != r.pfns.len() {
            return Err(PacketError::PfnCountMismatch { index, expected, given: r.pfns.len() });
        }
        let rh = GpaRangeHeader { len: U32::new(r.len), offset: U32::new(r.offset) };
        // header_len was computed from these same ranges, so the slices fit.
        let (dst, tail) = rest.split_at_mut(8);
        dst.copy_from_slice(rh.as_bytes());
        rest = tail;
        for pfn in r.pfns {
            let (dst, tail) = rest.split_at_mut(8);
            dst.copy_from_slice(&pfn.to_le_bytes());
            rest = tail;
        }
    }
    Ok(header_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inband_header_lengths() {
        let h = inband_header(PacketType::DATA_INBAND, 1, 7, 40).unwrap();
        let d = PacketDescriptor::read_from_bytes(&h).unwrap();
        assert_eq!(d.offset8.get(), 2);
        assert_eq!(d.len8.get(), 7);
        let h = inband_header(PacketType::COMPLETION, 0, 7, 41).unwrap();
        assert_eq!(PacketDescriptor::read_from_bytes(&h).unwrap().len8.get(), 8);
        assert_eq!(
            inband_header(PacketType::DATA_INBAND, 0, 0, MAX_PACKET_LEN),
            Err(PacketError::TooLong { len: MAX_PACKET_LEN + 16 })
        );
    }

    #[test]
    fn parse_rejects_bad_offsets() {
        let mut b = [0u8; 32];
        b[..16].copy_from_slice(&inband_header(PacketType::DATA_INBAND, 0, 1, 16).unwrap());
        assert!(IncomingPacket::parse(&b).is_ok());
        b[2] = 1;
        assert_eq!(IncomingPacket::parse(&b).unwrap_err(), PacketError::OffsetTooSmall { offset8: 1 });
        b[2] = 5;
        assert_eq!(IncomingPacket::parse(&b).unwrap_err(), PacketError::OffsetBeyondLength { offset8: 5, len8: 4 });
        b[2] = 2;
        b[4] = 5;
        assert_eq!(IncomingPacket::parse(&b).unwrap_err(), PacketError::Truncated { needed: 40, have: 32 });
        assert_eq!(IncomingPacket::parse(&b[..8]).unwrap_err(), PacketError::Truncated { needed: 16, have: 8 });
    }
}
