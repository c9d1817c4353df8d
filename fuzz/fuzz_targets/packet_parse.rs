// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Arbitrary bytes into the ring packet parser (`IncomingPacket::parse`).
//! A packet that parses must be self-consistent: its payload lies inside the
//! input at the declared offset and length, transfer-page packets carry
//! exactly `range_count` ranges, and GPA-direct ranges iterate to exactly
//! `range_count` ranges, each with an in-page offset, a non-zero length and
//! exactly the PFNs it spans.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_core::packet::{gpa_pfn_count, ExtendedHeader, IncomingPacket, PacketDescriptor, DESCRIPTOR_SIZE};
use zerocopy::FromBytes;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = IncomingPacket::parse(data) else { return };
    let (desc, _) = PacketDescriptor::read_from_prefix(data).expect("parsed, so a descriptor is there");
    let (offset, len) = (desc.offset8.get() as usize * 8, desc.len8.get() as usize * 8);
    assert!(DESCRIPTOR_SIZE <= offset && offset <= len && len <= data.len());
    assert_eq!(p.payload.len(), len - offset);
    assert_eq!(p.payload.as_ptr(), data[offset..].as_ptr());
    assert_eq!(p.packet_type.0, desc.packet_type.get());
    assert_eq!(p.trans_id, desc.trans_id.get());
    match p.extended {
        ExtendedHeader::None(b) => assert!(b.len() <= offset - DESCRIPTOR_SIZE),
        ExtendedHeader::TransferPages(t) => {
            assert!(core::mem::size_of_val(t.ranges) <= offset);
        }
        ExtendedHeader::GpaDirect(g) => {
            let mut n = 0u32;
            for r in g.ranges() {
                assert!(r.offset < 4096 && r.len > 0, "{r:?}");
                assert_eq!(r.pfns.len() as u64, gpa_pfn_count(r.offset, r.len));
                n += 1;
                assert!(n <= g.range_count());
            }
            assert_eq!(n, g.range_count(), "GPA-direct ranges iterate short");
        }
    }
});
