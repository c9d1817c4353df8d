// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Golden vectors from `vectors/ring-packets.json` (compiled from Linux's
//! definitions): decode every vector with our parser and structs, encode it
//! again with our builders byte for byte, and compare struct layouts.

use std::collections::BTreeSet;
use std::mem::{offset_of, size_of};
use std::sync::OnceLock;

mod common;

use serde_json::Value;
use vmbus_core::packet::*;
use vmbus_core::ring::OwnedRing;
use zerocopy::{FromBytes, IntoBytes};

/// The vector file, parsed once for all tests (parsing dominates the run
/// time under Miri, see ci/miri).
fn vectors_file() -> &'static Value {
    static FILE: OnceLock<Value> = OnceLock::new();
    FILE.get_or_init(|| common::load("ring-packets.json"))
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// A vector with a record of which fields a test looked at, so that every
/// field listed in the JSON is checked.
struct Vector<'a> {
    v: &'a Value,
    bytes: Vec<u8>,
    checked: BTreeSet<String>,
}

impl<'a> Vector<'a> {
    fn new(v: &'a Value) -> Self {
        let bytes = hex(v["hex"].as_str().unwrap());
        assert_eq!(bytes.len() as u64, v["size"].as_u64().unwrap());
        Vector { v, bytes, checked: BTreeSet::new() }
    }
    fn field(&mut self, path: &str) -> &'a Value {
        let f = &self.v["fields"][path];
        assert!(!f.is_null(), "{}: no field {path}", self.name());
        self.checked.insert(path.to_string());
        f
    }
    /// Integer value of a field, and checks that the bytes at its offset
    /// hold it (so the vector itself is consistent with the rule).
    fn int(&mut self, path: &str) -> u64 {
        let f = self.field(path);
        let value = f["value"].as_u64().unwrap_or_else(|| panic!("{path} not an integer"));
        let (off, size) = (f["offset"].as_u64().unwrap() as usize, f["size"].as_u64().unwrap() as usize);
        let mut le = [0u8; 8];
        le[..size].copy_from_slice(&self.bytes[off..off + size]);
        assert_eq!(u64::from_le_bytes(le), value, "{path} bytes");
        value
    }
    fn offset(&mut self, path: &str) -> usize {
        self.field(path)["offset"].as_u64().unwrap() as usize
    }
    fn name(&self) -> &str {
        self.v["name"].as_str().unwrap()
    }
    /// Marks every field whose path starts with `prefix` as covered by a
    /// byte-for-byte comparison of the region that holds it.
    fn covered_by_bytes(&mut self, prefix: &str) {
        let keys: Vec<String> =
            self.v["fields"].as_object().unwrap().keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        self.checked.extend(keys);
    }
    fn all_checked(&self) {
        let all: BTreeSet<String> = self.v["fields"].as_object().unwrap().keys().cloned().collect();
        let missing: Vec<_> = all.difference(&self.checked).collect();
        assert!(missing.is_empty(), "{}: fields not checked: {missing:?}", self.name());
    }
}

fn vector<'a>(file: &'a Value, name: &str) -> Vector<'a> {
    let v = file["vectors"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap();
    Vector::new(v)
}

/// The packet bytes padded with zeros up to `len8 * 8` (for vectors that
/// only hold the header part of a packet).
fn padded_to_len8(bytes: &[u8]) -> Vec<u8> {
    let len8 = u16::from_le_bytes([bytes[4], bytes[5]]) as usize;
    let mut b = bytes.to_vec();
    if b.len() < len8 * 8 {
        b.resize(len8 * 8, 0);
    }
    b
}

#[test]
fn descriptor_vectors() {
    let file = vectors_file();
    for (name, ptype) in
        [("desc_inband_completion_requested", PacketType::DATA_INBAND), ("desc_completion", PacketType::COMPLETION)]
    {
        let mut v = vector(file, name);
        let d = PacketDescriptor::read_from_bytes(&v.bytes).unwrap();
        assert_eq!(d.packet_type.get() as u64, v.int("type"));
        assert_eq!(PacketType(d.packet_type.get()), ptype);
        assert_eq!(d.offset8.get() as u64, v.int("offset8"));
        assert_eq!(d.len8.get() as u64, v.int("len8"));
        assert_eq!(d.flags.get() as u64, v.int("flags"));
        assert_eq!(d.trans_id.get(), v.int("trans_id"));
        // Encode: in-band header for a payload filling len8 exactly.
        let payload_len = d.len8.get() as usize * 8 - 16;
        let h = inband_header(ptype, d.flags.get(), d.trans_id.get(), payload_len).unwrap();
        assert_eq!(&h[..], &v.bytes[..], "{name} encode");
        // Parse the whole packet (descriptor + zero payload).
        let full = padded_to_len8(&v.bytes);
        let p = IncomingPacket::parse(&full).unwrap();
        assert_eq!(p.packet_type, ptype);
        assert_eq!(p.trans_id, d.trans_id.get());
        assert_eq!(p.payload.len(), payload_len);
        assert_eq!(p.completion_requested(), d.flags.get() & FLAG_COMPLETION_REQUESTED != 0);
        v.all_checked();
    }
}

/// The two "as written into the ring" vectors: decode with the parser, and
/// encode through a real RingWriter positioned at the vector's write index,
/// comparing the ring bytes (packet, padding, trailer) with the vector.
#[test]
fn ring_inband_vectors() {
    let file = vectors_file();
    for name in ["ring_inband_nvsp_init", "ring_inband_heartbeat_response_padded"] {
        let mut v = vector(file, name);
        assert_eq!(v.v["struct"], "vmpacket_descriptor");
        let trailer_off = v.offset("trailer");
        let trailer = v.int("trailer");
        let start = (trailer >> 32) as u32;
        let bytes = v.bytes.clone();
        let p = IncomingPacket::parse(&bytes).unwrap();
        assert_eq!(p.packet_type.0 as u64, v.int("desc.type"));
        assert_eq!(p.flags as u64, v.int("desc.flags"));
        assert_eq!(p.trans_id, v.int("desc.trans_id"));
        let offset8 = v.int("desc.offset8") as usize;
        let len8 = v.int("desc.len8") as usize;
        assert!(matches!(p.extended, ExtendedHeader::None(b) if b.is_empty()));
        assert_eq!(p.payload, &bytes[offset8 * 8..len8 * 8]);
        assert_eq!(trailer_off, len8 * 8);
        v.covered_by_bytes("payload.");

        // The payload length the sender used (from each vector's note):
        // a 40-byte struct nvsp_message; vmbuspipe_hdr (8) + pipe.msgsize.
        let payload_len = match name {
            "ring_inband_nvsp_init" => 40,
            _ => 8 + v.int("payload.pipe.msgsize") as usize,
        };
        let payload_end = 16 + payload_len;
        let payload = &v.bytes[16..payload_end];
        // A ring whose write index sits at the vector's start position.
        let data_pages = (start as usize + v.bytes.len()) / 4096 + 2;
        let mut control = vec![0u8; 4096];
        control[0..4].copy_from_slice(&start.to_le_bytes());
        control[4..8].copy_from_slice(&start.to_le_bytes());
        control[0x40] = 1;
        let mut ring = OwnedRing::from_bytes(&control, &[], data_pages).unwrap();
        let header = inband_header(p.packet_type, p.flags, p.trans_id, payload.len()).unwrap();
        ring.writer.write(&[&header, payload]).unwrap();
        assert!(ring.writer.commit().unwrap(), "empty -> non-empty with mask clear signals");
        let mut out = vec![0u8; v.bytes.len()];
        ring.peek_data(start as usize, &mut out);
        assert_eq!(out, v.bytes, "{name}: ring bytes");
        v.all_checked();
    }
}

#[test]
fn transfer_page_vector() {
    let file = vectors_file();
    let mut v = vector(file, "xfer_page_header_1_range");
    let full = padded_to_len8(&v.bytes);
    let p = IncomingPacket::parse(&full).unwrap();
    assert_eq!(p.packet_type, PacketType::DATA_TRANSFER_PAGES);
    assert_eq!(p.packet_type.0 as u64, v.int("d.type"));
    assert_eq!(p.flags as u64, v.int("d.flags"));
    assert_eq!(p.trans_id, v.int("d.trans_id"));
    let offset8 = v.int("d.offset8") as usize;
    let len8 = v.int("d.len8") as usize;
    assert_eq!(p.payload.len(), (len8 - offset8) * 8);
    let ExtendedHeader::TransferPages(t) = p.extended else { panic!("not transfer pages") };
    assert_eq!(t.transfer_page_set_id as u64, v.int("xfer_pageset_id"));
    assert_eq!(t.sender_owns_set as u64, v.int("sender_owns_set"));
    assert_eq!(t.ranges.len() as u64, v.int("range_cnt"));
    assert_eq!(t.ranges[0].byte_count.get() as u64, v.int("ranges[0].byte_count"));
    assert_eq!(t.ranges[0].byte_offset.get() as u64, v.int("ranges[0].byte_offset"));
    let h = TransferPageHeader::read_from_prefix(&v.bytes).unwrap().0;
    assert_eq!(h.reserved as u64, v.int("reserved"));
    // Encode from the fields.
    let enc = TransferPageHeader {
        descriptor: PacketDescriptor::new(PacketType(7), p.flags, p.trans_id, offset8 * 8, p.payload.len()).unwrap(),
        transfer_page_set_id: t.transfer_page_set_id.into(),
        sender_owns_set: 1,
        reserved: h.reserved,
        range_count: 1u32.into(),
    };
    let mut bytes = enc.as_bytes().to_vec();
    bytes.extend_from_slice(t.ranges[0].as_bytes());
    assert_eq!(bytes, v.bytes);
    v.all_checked();
}

#[test]
fn gpa_direct_vectors() {
    let file = vectors_file();
    // (vector, [(len path, offset path, pfn paths)] per range)
    type RangePaths = Vec<(&'static str, &'static str, Vec<String>)>;
    let cases: [(&str, RangePaths); 2] = [
        (
            "gpa_direct_mpb_header_3_pfns",
            vec![("range.len", "range.offset", (0..3).map(|i| format!("range.pfn_array[{i}]")).collect())],
        ),
        (
            "gpa_direct_page_buffer_2_pages",
            vec![
                ("range[0].len", "range[0].offset", vec!["range[0].pfn".into()]),
                ("range[1].len", "range[1].offset", vec!["range[1].pfn".into()]),
            ],
        ),
    ];
    for (name, ranges) in cases {
        let mut v = vector(file, name);
        let full = padded_to_len8(&v.bytes);
        let p = IncomingPacket::parse(&full).unwrap();
        assert_eq!(p.packet_type, PacketType::DATA_GPA_DIRECT);
        assert_eq!(p.packet_type.0 as u64, v.int("type"));
        assert_eq!(p.flags as u64, v.int("flags"));
        assert_eq!(p.trans_id, v.int("transactionid"));
        let offset8 = v.int("dataoffset8") as usize;
        let len8 = v.int("length8") as usize;
        assert_eq!(offset8 * 8, v.bytes.len());
        assert_eq!(p.payload.len(), (len8 - offset8) * 8);
        let ExtendedHeader::GpaDirect(g) = p.extended else { panic!("not GPA direct") };
        assert_eq!(g.range_count() as u64, v.int("rangecount"));
        let h = GpaDirectHeader::read_from_prefix(&v.bytes).unwrap().0;
        let reserved = v.int("reserved");
        assert_eq!(h.reserved.get() as u64, reserved);
        let parsed: Vec<GpaRange<'_>> = g.ranges().collect();
        assert_eq!(parsed.len(), ranges.len());
        let mut pfn_store: Vec<Vec<u64>> = Vec::new();
        for (r, (len_path, off_path, pfn_paths)) in parsed.iter().zip(&ranges) {
            assert_eq!(r.len as u64, v.int(len_path));
            assert_eq!(r.offset as u64, v.int(off_path));
            assert_eq!(r.pfns.len(), pfn_paths.len());
            assert_eq!(gpa_pfn_count(r.offset, r.len) as usize, pfn_paths.len());
            let pfns: Vec<u64> = pfn_paths.iter().map(|pp| v.int(pp)).collect();
            assert_eq!(r.pfns.iter().map(|x| x.get()).collect::<Vec<_>>(), pfns);
            pfn_store.push(pfns);
        }
        // Encode with the builder; the builder writes reserved = 0, so patch
        // the vector's distinctive reserved value in before comparing.
        let page_ranges: Vec<PageRange<'_>> =
            parsed.iter().zip(&pfn_store).map(|(r, pfns)| PageRange { len: r.len, offset: r.offset, pfns }).collect();
        assert_eq!(gpa_direct_header_len(&page_ranges), v.bytes.len());
        let mut out = vec![0xEEu8; 600];
        let n = write_gpa_direct_header(&mut out, p.flags, p.trans_id, &page_ranges, p.payload.len()).unwrap();
        assert_eq!(n, v.bytes.len());
        assert_eq!(&out[16..20], &[0, 0, 0, 0]);
        out[16..20].copy_from_slice(&(reserved as u32).to_le_bytes());
        assert_eq!(&out[..n], &v.bytes[..], "{name} encode");
        v.all_checked();
    }
}

#[test]
fn control_page_vector() {
    let file = vectors_file();
    let mut v = vector(file, "ring_buffer_control_page");
    let page = RingControlPage::read_from_bytes(&v.bytes).unwrap();
    assert_eq!(page.write_index.get() as u64, v.int("write_index"));
    assert_eq!(page.read_index.get() as u64, v.int("read_index"));
    assert_eq!(page.interrupt_mask.get() as u64, v.int("interrupt_mask"));
    assert_eq!(page.pending_send_size.get() as u64, v.int("pending_send_sz"));
    let fb = v.field("feature_bits.feat_pending_send_sz");
    assert_eq!(fb["offset"].as_u64().unwrap() as usize, ring_control::FEATURE_BITS);
    assert_eq!(fb["bit_offset"].as_u64().unwrap(), 0);
    assert_eq!(page.feature_bits.get() & ring_control::FEATURE_PENDING_SEND_SIZE, fb["value"].as_u64().unwrap() as u32);
    assert_eq!(hex(v.field("reserved1")["value"].as_str().unwrap()), page.reserved1);
    // Encode.
    assert_eq!(page.as_bytes(), &v.bytes[..]);
    // The ring code's view of the same page: OwnedRing over these bytes.
    let ring = OwnedRing::from_bytes(&v.bytes, &[], 2).unwrap();
    assert_eq!(ring.peek_control(ring_control::WRITE_INDEX), page.write_index.get());
    assert_eq!(ring.peek_control(ring_control::PENDING_SEND_SIZE), page.pending_send_size.get());
    v.all_checked();
}

fn layout<'a>(file: &'a Value, name: &str, variant: Option<&str>) -> &'a Value {
    file["layouts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["struct"] == name && variant.is_none_or(|var| l["variant"] == var))
        .unwrap_or_else(|| panic!("layout {name}"))
}

fn off(l: &Value, field: &str) -> usize {
    l["fields"][field]["offset"].as_u64().unwrap_or_else(|| panic!("{field}")) as usize
}

#[test]
fn layouts() {
    let file = vectors_file();
    let d = layout(file, "vmpacket_descriptor", None);
    assert_eq!(d["size"].as_u64().unwrap() as usize, size_of::<PacketDescriptor>());
    assert_eq!(off(d, "type"), offset_of!(PacketDescriptor, packet_type));
    assert_eq!(off(d, "offset8"), offset_of!(PacketDescriptor, offset8));
    assert_eq!(off(d, "len8"), offset_of!(PacketDescriptor, len8));
    assert_eq!(off(d, "flags"), offset_of!(PacketDescriptor, flags));
    assert_eq!(off(d, "trans_id"), offset_of!(PacketDescriptor, trans_id));

    let t = layout(file, "vmtransfer_page_packet_header", Some("linux-newer"));
    assert_eq!(t["size"].as_u64().unwrap() as usize, size_of::<TransferPageHeader>());
    assert_eq!(off(t, "xfer_pageset_id"), offset_of!(TransferPageHeader, transfer_page_set_id));
    assert_eq!(off(t, "sender_owns_set"), offset_of!(TransferPageHeader, sender_owns_set));
    assert_eq!(off(t, "reserved"), offset_of!(TransferPageHeader, reserved));
    assert_eq!(off(t, "range_cnt"), offset_of!(TransferPageHeader, range_count));
    assert_eq!(off(t, "ranges[]"), size_of::<TransferPageHeader>());
    let r = layout(file, "vmtransfer_page_range", None);
    assert_eq!(r["size"].as_u64().unwrap() as usize, size_of::<TransferPageRange>());
    assert_eq!(off(r, "byte_offset"), offset_of!(TransferPageRange, byte_offset));

    let g = layout(file, "vmdata_gpa_direct", None);
    assert_eq!(off(g, "reserved"), offset_of!(GpaDirectHeader, reserved));
    assert_eq!(off(g, "range_cnt"), offset_of!(GpaDirectHeader, range_count));
    assert_eq!(off(g, "range"), size_of::<GpaDirectHeader>());
    let m = layout(file, "hv_mpb_array", None);
    assert_eq!(m["size"].as_u64().unwrap() as usize, size_of::<GpaRangeHeader>());
    assert_eq!(off(m, "offset"), offset_of!(GpaRangeHeader, offset));
    assert_eq!(off(m, "pfn_array[]"), size_of::<GpaRangeHeader>());
    assert_eq!(m["fields"]["pfn_array[]"]["element_size"].as_u64().unwrap(), 8);
    let mpb = layout(file, "vmbus_packet_mpb_array", None);
    assert_eq!(off(mpb, "rangecount"), offset_of!(GpaDirectHeader, range_count));
    assert_eq!(off(mpb, "range"), size_of::<GpaDirectHeader>());

    let c = layout(file, "hv_ring_buffer", None);
    assert_eq!(c["size"].as_u64().unwrap() as usize, size_of::<RingControlPage>());
    assert_eq!(off(c, "write_index"), ring_control::WRITE_INDEX);
    assert_eq!(off(c, "read_index"), ring_control::READ_INDEX);
    assert_eq!(off(c, "interrupt_mask"), ring_control::INTERRUPT_MASK);
    assert_eq!(off(c, "pending_send_sz"), ring_control::PENDING_SEND_SIZE);
    assert_eq!(off(c, "feature_bits"), ring_control::FEATURE_BITS);
    assert_eq!(off(c, "buffer[]"), ring_control::DATA_OFFSET);
    assert_eq!(off(c, "reserved1"), offset_of!(RingControlPage, reserved1));
    assert_eq!(off(c, "reserved2"), offset_of!(RingControlPage, reserved2));
}
