// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Property tests: the ring against a VecDeque model, and arbitrary bytes in
//! the control words / data area / parser input never cause a panic or hang.

use std::collections::VecDeque;

use proptest::prelude::*;
use vmbus_core::packet::*;
use vmbus_core::ring::{OwnedRing, ReadError, WriteError};

#[derive(Clone, Debug)]
enum Op {
    Write { len: usize, seed: u8 },
    CommitWrite,
    Revert,
    Read,
    CommitRead,
    BeginRead,
    EndRead,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..700, any::<u8>()).prop_map(|(len, seed)| Op::Write { len, seed }),
        2 => Just(Op::CommitWrite),
        1 => Just(Op::Revert),
        4 => Just(Op::Read),
        2 => Just(Op::CommitRead),
        1 => Just(Op::BeginRead),
        1 => Just(Op::EndRead),
    ]
}

fn ring_bytes(len: usize) -> u32 {
    ((16 + len).div_ceil(8) * 8 + 8) as u32
}

/// The model: packets as (id, body) in the order they sit in the ring.
#[derive(Default)]
struct Model {
    /// Read and committed by nobody yet, published by the writer.
    published: VecDeque<(u64, Vec<u8>)>,
    /// Written, not committed.
    uncommitted: Vec<(u64, Vec<u8>)>,
    /// Ring bytes the reader has read but not committed.
    read_uncommitted: u32,
    masked: bool,
}

impl Model {
    fn occupied(&self) -> u32 {
        self.read_uncommitted
            + self.published.iter().map(|(_, b)| ring_bytes(b.len())).sum::<u32>()
            + self.uncommitted.iter().map(|(_, b)| ring_bytes(b.len())).sum::<u32>()
    }
    /// Reader's committed position == writer's committed position.
    fn empty_for_signal(&self) -> bool {
        self.read_uncommitted == 0 && self.published.is_empty()
    }
}

/// Cases per property, operations per case and random ring bytes: smaller
/// under Miri (ci/miri), which interprets every byte proptest generates.
const CASES: u32 = if cfg!(miri) { 4 } else { 256 };
const MAX_OPS: usize = if cfg!(miri) { 40 } else { 300 };
const MAX_RANDOM_DATA: usize = if cfg!(miri) { 512 } else { 8192 };

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_model(start8 in 0u32..1024, ops in proptest::collection::vec(op(), 1..MAX_OPS)) {
        const SIZE: u32 = 8192;
        let start = start8 * 8;
        let mut control = vec![0u8; 4096];
        control[0..4].copy_from_slice(&start.to_le_bytes());
        control[4..8].copy_from_slice(&start.to_le_bytes());
        control[0x40] = 1;
        let mut ring = OwnedRing::from_bytes(&control, &[], 2).unwrap();
        let mut model = Model::default();
        let mut buf = vec![0u8; 1024];
        let mut next_id = 0u64;
        for op in ops {
            match op {
                Op::Write { len, seed } => {
                    let body: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                    let h = inband_header(PacketType::DATA_INBAND, 0, next_id, len).unwrap();
                    let (a, b) = body.split_at(len / 3);
                    let res = ring.writer.write(&[&h, a, b]);
                    let needed = ring_bytes(len);
                    let free = SIZE - model.occupied();
                    if free > needed {
                        prop_assert_eq!(res, Ok(()));
                        model.uncommitted.push((next_id, body));
                        next_id += 1;
                    } else {
                        prop_assert_eq!(res, Err(WriteError::Full { needed, free }));
                    }
                }
                Op::CommitWrite => {
                    let expect_signal = !model.uncommitted.is_empty() && !model.masked && model.empty_for_signal();
                    prop_assert_eq!(ring.writer.commit(), Ok(expect_signal));
                    model.published.extend(model.uncommitted.drain(..));
                }
                Op::Revert => {
                    ring.writer.revert();
                    model.uncommitted.clear();
                }
                Op::Read => {
                    let got = ring.reader.read(&mut buf).unwrap().map(|p| (p.trans_id, p.payload.to_vec()));
                    match model.published.pop_front() {
                        Some((id, body)) => {
                            let (gid, gp) = got.unwrap();
                            prop_assert_eq!(gid, id);
                            prop_assert_eq!(&gp[..body.len()], &body[..]);
                            model.read_uncommitted += ring_bytes(body.len());
                        }
                        None => prop_assert!(got.is_none()),
                    }
                }
                Op::CommitRead => {
                    // No pending send size requested: never signals.
                    prop_assert_eq!(ring.reader.commit(), Ok(false));
                    model.read_uncommitted = 0;
                }
                Op::BeginRead => {
                    ring.reader.begin_read();
                    model.masked = true;
                }
                Op::EndRead => {
                    prop_assert_eq!(ring.reader.end_read(), Ok(!model.published.is_empty()));
                    model.masked = false;
                }
            }
            let free = ring.writer.free_bytes().unwrap();
            prop_assert_eq!(free, SIZE - model.occupied());
            prop_assert!(free > 0 && free <= SIZE);
            prop_assert!(ring.reader.available_bytes().unwrap() < SIZE);
        }
        prop_assert_eq!(ring.writer.corruption(), None);
        prop_assert_eq!(ring.reader.corruption(), None);
    }

    /// Random control words and data: the reader yields packets or errors,
    /// never panics, and stops in a bounded number of steps.
    #[test]
    fn random_ring_contents_never_panic(
        write_index in prop_oneof![any::<u32>(), (0u32..1024).prop_map(|x| x * 8)],
        read_index in prop_oneof![any::<u32>(), (0u32..1024).prop_map(|x| x * 8), Just(0u32)],
        pending in any::<u32>(),
        features in any::<u32>(),
        mask in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..MAX_RANDOM_DATA),
        buf_len in 0usize..2048,
    ) {
        let mut control = vec![0u8; 4096];
        control[0..4].copy_from_slice(&write_index.to_le_bytes());
        control[4..8].copy_from_slice(&read_index.to_le_bytes());
        control[8..12].copy_from_slice(&mask.to_le_bytes());
        control[12..16].copy_from_slice(&pending.to_le_bytes());
        control[0x40..0x44].copy_from_slice(&features.to_le_bytes());
        let mut ring = OwnedRing::from_bytes(&control, &data, 2).unwrap();
        let mut buf = vec![0u8; buf_len];
        let mut steps = 0;
        ring.reader.begin_read();
        loop {
            steps += 1;
            prop_assert!(steps < 2000, "reader did not terminate");
            match ring.reader.read(&mut buf) {
                Ok(Some(p)) => {
                    prop_assert!(p.payload.len() <= buf_len);
                    if let ExtendedHeader::GpaDirect(g) = p.extended {
                        prop_assert_eq!(g.ranges().count() as u32, g.range_count());
                        for r in g.ranges() {
                            prop_assert!(r.offset < 4096);
                            prop_assert_eq!(r.pfns.len() as u64, gpa_pfn_count(r.offset, r.len));
                        }
                    }
                }
                Ok(None) => break,
                Err(ReadError::Corrupt(_)) => {
                    // Sticky.
                    prop_assert!(matches!(ring.reader.read(&mut buf), Err(ReadError::Corrupt(_))));
                    break;
                }
                Err(_) => {}
            }
            if steps % 7 == 0 {
                let _ = ring.reader.commit();
            }
        }
        let _ = ring.reader.commit();
        let _ = ring.reader.end_read();
        // The writer over the same random page must not panic either.
        let h = inband_header(PacketType::DATA_INBAND, 0, 1, 100).unwrap();
        for _ in 0..50 {
            let _ = ring.writer.write(&[&h, &[0u8; 100]]);
        }
        let _ = ring.writer.commit();
        let _ = ring.writer.request_space(4000);
        let _ = ring.writer.free_bytes();
    }

    /// The parser on arbitrary bytes: never panics; accepted packets are
    /// internally consistent.
    #[test]
    fn parse_arbitrary_bytes(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ptype in prop_oneof![Just(6u16), Just(7u16), Just(9u16), Just(11u16), any::<u16>()],
        offset8 in 0u16..80,
        len8 in 0u16..80,
    ) {
        if bytes.len() >= 6 {
            bytes[0..2].copy_from_slice(&ptype.to_le_bytes());
            bytes[2..4].copy_from_slice(&offset8.to_le_bytes());
            bytes[4..6].copy_from_slice(&len8.to_le_bytes());
        }
        if let Ok(p) = IncomingPacket::parse(&bytes) {
            prop_assert!(offset8 >= 2 && len8 >= offset8);
            prop_assert_eq!(p.payload.len(), (len8 - offset8) as usize * 8);
            match p.extended {
                ExtendedHeader::TransferPages(t) => prop_assert!(24 + t.ranges.len() * 8 <= offset8 as usize * 8),
                ExtendedHeader::GpaDirect(g) => {
                    let mut used = 24;
                    for r in g.ranges() {
                        prop_assert!(r.len > 0 && r.offset < 4096);
                        used += 8 + r.pfns.len() * 8;
                    }
                    prop_assert!(used <= offset8 as usize * 8);
                }
                ExtendedHeader::None(b) => prop_assert_eq!(b.len(), offset8 as usize * 8 - 16),
            }
        }
    }

    /// Builder and parser agree for GPA-direct packets.
    #[test]
    fn gpa_direct_round_trip(
        ranges in proptest::collection::vec((0u32..4096, 1u32..40000), 0..6),
        payload_len in 0usize..200,
        trans_id in any::<u64>(),
    ) {
        let pfn_lists: Vec<Vec<u64>> = ranges
            .iter()
            .enumerate()
            .map(|(i, &(off, len))| (0..gpa_pfn_count(off, len)).map(|k| (i as u64) << 32 | k).collect())
            .collect();
        let page_ranges: Vec<PageRange<'_>> = ranges
            .iter()
            .zip(&pfn_lists)
            .map(|(&(offset, len), pfns)| PageRange { len, offset, pfns })
            .collect();
        let mut out = vec![0u8; 4096];
        let n = write_gpa_direct_header(&mut out, 1, trans_id, &page_ranges, payload_len).unwrap();
        prop_assert_eq!(n, gpa_direct_header_len(&page_ranges));
        let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
        let mut packet = out[..n].to_vec();
        packet.extend_from_slice(&payload);
        packet.resize(packet.len().div_ceil(8) * 8, 0);
        let p = IncomingPacket::parse(&packet).unwrap();
        prop_assert_eq!(p.trans_id, trans_id);
        prop_assert_eq!(&p.payload[..payload_len], &payload[..]);
        let ExtendedHeader::GpaDirect(g) = p.extended else { panic!("type") };
        let got: Vec<(u32, u32, Vec<u64>)> =
            g.ranges().map(|r| (r.len, r.offset, r.pfns.iter().map(|x| x.get()).collect())).collect();
        let want: Vec<(u32, u32, Vec<u64>)> =
            page_ranges.iter().map(|r| (r.len, r.offset, r.pfns.to_vec())).collect();
        prop_assert_eq!(got, want);
    }
}
