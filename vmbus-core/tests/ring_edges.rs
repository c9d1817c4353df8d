// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Edge cases and error paths of the ring halves and the channel endpoint
//! (plain mapping; see ring_double.rs for the double mapping).

use std::cell::Cell;

use vmbus_core::channel::{ChannelReceiver, ChannelSender};
use vmbus_core::hv::HvStatus;
use vmbus_core::packet::*;
use vmbus_core::platform::Hypervisor;
use vmbus_core::ring::{Corruption, OwnedRing, ReadError, RingWriter, WriteError};

/// A fresh ring whose indices both sit at `at` (to test wrap-around).
fn ring_at(pages: usize, at: u32) -> OwnedRing {
    let mut control = vec![0u8; 4096];
    control[0..4].copy_from_slice(&at.to_le_bytes());
    control[4..8].copy_from_slice(&at.to_le_bytes());
    control[0x40] = 1;
    OwnedRing::from_bytes(&control, &[], pages).unwrap()
}

fn payload(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8).wrapping_mul(31)).collect()
}

fn write_inband(ring: &mut OwnedRing, trans_id: u64, body: &[u8]) -> Result<(), WriteError> {
    write_inband_w(&mut ring.writer, trans_id, body)
}

fn write_inband_w(w: &mut RingWriter, trans_id: u64, body: &[u8]) -> Result<(), WriteError> {
    let h = inband_header(PacketType::DATA_INBAND, 0, trans_id, body.len()).unwrap();
    // Split the body in two segments to exercise multi-segment writes.
    let (a, b) = body.split_at(body.len() / 2);
    w.write(&[&h, a, b])
}

fn read_one(ring: &mut OwnedRing, buf: &mut [u8]) -> Option<(u64, Vec<u8>)> {
    ring.reader.read(buf).unwrap().map(|p| (p.trans_id, p.payload.to_vec()))
}

#[test]
fn round_trip_and_counters() {
    let mut ring = OwnedRing::new(2).unwrap();
    let mut buf = vec![0u8; 4096];
    assert_eq!(ring.reader.read(&mut buf).unwrap().map(|p| p.trans_id), None, "fresh ring is empty");
    for i in 0..5u64 {
        write_inband(&mut ring, i, &payload(i as u8, 10 + i as usize * 7)).unwrap();
    }
    assert!(ring.reader.read(&mut buf).unwrap().is_none(), "uncommitted packets are invisible");
    assert!(ring.writer.commit().unwrap(), "empty -> non-empty signals");
    for i in 0..5u64 {
        let (id, p) = read_one(&mut ring, &mut buf).unwrap();
        assert_eq!(id, i);
        let want = payload(i as u8, 10 + i as usize * 7);
        // The payload includes the sender's zero padding to 8.
        assert_eq!(&p[..want.len()], &want[..]);
        assert!(p[want.len()..].iter().all(|&b| b == 0));
        assert_eq!(p.len(), want.len().div_ceil(8) * 8);
    }
    assert!(ring.reader.read(&mut buf).unwrap().is_none());
    assert!(!ring.reader.commit().unwrap());
    let w = ring.writer.counters();
    let r = ring.reader.counters();
    assert_eq!((w.packets, w.commits, w.signals), (5, 1, 1));
    assert_eq!((r.packets, r.commits), (5, 1));
    assert_eq!(w.bytes, r.bytes);
    assert_eq!(ring.peek_control(ring_control::READ_INDEX), ring.peek_control(ring_control::WRITE_INDEX));
}

#[test]
fn wrap_around_plain_mapping() {
    // Start 24 bytes before the end of a one-page data area so the
    // descriptor, the payload and the trailer all straddle the end.
    for start in [4096 - 8, 4096 - 16, 4096 - 24, 4096 - 64] {
        let mut ring = ring_at(1, start);
        let mut buf = vec![0u8; 4096];
        let body = payload(start as u8, 100);
        write_inband(&mut ring, 77, &body).unwrap();
        ring.writer.commit().unwrap();
        let (id, p) = read_one(&mut ring, &mut buf).unwrap();
        assert_eq!(id, 77);
        assert_eq!(&p[..100], &body[..]);
        // The trailer holds the start index, wherever it landed.
        let end = (start as usize + 16 + 104) % 4096;
        let mut trailer = [0u8; 8];
        for (i, t) in trailer.iter_mut().enumerate() {
            let mut one = [0u8; 1];
            ring.peek_data((end + i) % 4096, &mut one);
            *t = one[0];
        }
        assert_eq!(u64::from_le_bytes(trailer), (start as u64) << 32);
        ring.reader.commit().unwrap();
        assert_eq!(ring.peek_control(ring_control::READ_INDEX) as usize, (end + 8) % 4096);
    }
}

#[test]
fn exactly_full_is_refused_and_one_less_fits() {
    // One page: 4096 bytes. A packet of 16 + p bytes takes 16 + p + 8.
    let mut ring = OwnedRing::new(1).unwrap();
    // 4096 - 8 - 8 = 4080 bytes of packet+trailer would leave 8 free... first
    // fill with a packet that leaves exactly `needed` free for the next.
    let first = 4096 - 64; // ring bytes of the first packet
    let body = vec![0xAB; first - 16 - 8];
    write_inband(&mut ring, 1, &body).unwrap();
    // 64 bytes free now. A 64-byte packet (16 + 40 + 8) would fill it exactly.
    let err = write_inband(&mut ring, 2, &[0u8; 40]).unwrap_err();
    assert_eq!(err, WriteError::Full { needed: 64, free: 64 });
    assert_eq!(ring.writer.counters().full, 1);
    // 56 bytes leave 8 free: accepted.
    write_inband(&mut ring, 3, &[0u8; 32]).unwrap();
    assert!(matches!(write_inband(&mut ring, 4, &[]), Err(WriteError::Full { needed: 24, free: 8 })));
    ring.writer.commit().unwrap();
    assert_ne!(ring.peek_control(ring_control::WRITE_INDEX), ring.peek_control(ring_control::READ_INDEX));
    let mut buf = vec![0u8; 4096];
    assert_eq!(read_one(&mut ring, &mut buf).unwrap().0, 1);
    assert_eq!(read_one(&mut ring, &mut buf).unwrap().0, 3);
    assert!(read_one(&mut ring, &mut buf).is_none());
    // A packet that can never fit.
    assert!(matches!(write_inband(&mut ring, 5, &vec![0u8; 4096]), Err(WriteError::TooLarge { .. })));
}

#[test]
fn full_clears_after_reader_commit() {
    let mut ring = OwnedRing::new(1).unwrap();
    let mut n = 0;
    while write_inband(&mut ring, n, &[1u8; 200]).is_ok() {
        n += 1;
        assert!(n < 100, "a 4 KiB ring cannot take {n} packets");
    }
    ring.writer.commit().unwrap();
    let mut buf = vec![0u8; 4096];
    read_one(&mut ring, &mut buf).unwrap();
    // Not committed by the reader yet: still full.
    assert!(matches!(write_inband(&mut ring, 99, &[1u8; 200]), Err(WriteError::Full { .. })));
    ring.reader.commit().unwrap();
    write_inband(&mut ring, 99, &[1u8; 200]).unwrap();
}

#[test]
fn revert_drops_uncommitted() {
    let mut ring = OwnedRing::new(1).unwrap();
    write_inband(&mut ring, 1, b"kept").unwrap();
    ring.writer.commit().unwrap();
    write_inband(&mut ring, 2, b"dropped").unwrap();
    assert!(ring.writer.uncommitted_bytes() > 0);
    ring.writer.revert();
    assert_eq!(ring.writer.uncommitted_bytes(), 0);
    write_inband(&mut ring, 3, b"after").unwrap();
    assert!(!ring.writer.commit().unwrap(), "ring was not empty: no signal");
    let mut buf = vec![0u8; 256];
    assert_eq!(read_one(&mut ring, &mut buf).unwrap().0, 1);
    assert_eq!(read_one(&mut ring, &mut buf).unwrap().0, 3);
    assert!(read_one(&mut ring, &mut buf).is_none());
}

#[test]
fn write_rejects_bad_descriptor_but_write_raw_does_not() {
    let mut ring = OwnedRing::new(1).unwrap();
    let mut h = inband_header(PacketType::DATA_INBAND, 0, 1, 8).unwrap();
    h[4] = 9; // len8 wrong
    assert_eq!(ring.writer.write(&[&h, &[0u8; 8]]), Err(WriteError::BadDescriptor));
    assert_eq!(ring.writer.write(&[&h[..8]]), Err(WriteError::BadDescriptor));
    assert!(matches!(ring.writer.write_raw(&[&h[..8]]), Err(WriteError::TooLarge { len: 8 })));
    ring.writer.write_raw(&[&h, &[0u8; 8]]).unwrap();
}

// ---------------------------------------------------------------- corruption

fn expect_read_corrupt(ring: &mut OwnedRing, want: Corruption) {
    let mut buf = vec![0u8; 4096];
    assert_eq!(ring.reader.read(&mut buf).unwrap_err(), ReadError::Corrupt(want));
    // Sticky: every later call fails the same way, even if the peer repairs.
    ring.poke_control(ring_control::WRITE_INDEX, 0);
    assert_eq!(ring.reader.read(&mut buf).unwrap_err(), ReadError::Corrupt(want));
    assert_eq!(ring.reader.commit(), Err(want));
    assert_eq!(ring.reader.end_read(), Err(want));
    assert_eq!(ring.reader.corruption(), Some(want));
    assert!(ring.reader.counters().corrupt >= 1);
}

#[test]
fn corrupt_write_index_out_of_range() {
    let mut ring = OwnedRing::new(1).unwrap();
    ring.poke_control(ring_control::WRITE_INDEX, 4096);
    expect_read_corrupt(&mut ring, Corruption::WriteIndexOutOfRange { value: 4096 });
}

#[test]
fn corrupt_write_index_unaligned() {
    let mut ring = OwnedRing::new(1).unwrap();
    ring.poke_control(ring_control::WRITE_INDEX, 20);
    expect_read_corrupt(&mut ring, Corruption::WriteIndexUnaligned { value: 20 });
}

#[test]
fn corrupt_write_index_moves_backwards() {
    let mut ring = OwnedRing::new(1).unwrap();
    for i in 0..3 {
        write_inband(&mut ring, i, &[0u8; 16]).unwrap();
    }
    ring.writer.commit().unwrap();
    let mut buf = vec![0u8; 4096];
    read_one(&mut ring, &mut buf).unwrap();
    read_one(&mut ring, &mut buf).unwrap();
    read_one(&mut ring, &mut buf).unwrap();
    // The reader consumed up to 3 * 40 = 120 (uncommitted); the peer now
    // claims it only wrote 40.
    ring.poke_control(ring_control::WRITE_INDEX, 40);
    let err = ring.reader.read(&mut buf).unwrap_err();
    assert_eq!(err, ReadError::Corrupt(Corruption::WriteIndexInconsistent { value: 40 }));
}

#[test]
fn corrupt_packet_framing() {
    // (len8, offset8, expected corruption)
    let cases: [(u16, u16, Corruption); 4] = [
        (1, 2, Corruption::BadPacketFraming { len8: 1, offset8: 2 }),
        (4, 1, Corruption::BadPacketFraming { len8: 4, offset8: 1 }),
        (4, 5, Corruption::BadPacketFraming { len8: 4, offset8: 5 }),
        (20, 2, Corruption::PacketBeyondWriteIndex { needed: 168, available: 40 }),
    ];
    for (len8, offset8, want) in cases {
        let mut ring = OwnedRing::new(1).unwrap();
        let mut desc = [0u8; 16];
        desc[0] = 6;
        desc[2..4].copy_from_slice(&offset8.to_le_bytes());
        desc[4..6].copy_from_slice(&len8.to_le_bytes());
        ring.poke_data(0, &desc);
        ring.poke_control(ring_control::WRITE_INDEX, 40);
        expect_read_corrupt(&mut ring, want);
    }
    // Less than a descriptor + trailer published.
    let mut ring = OwnedRing::new(1).unwrap();
    ring.poke_control(ring_control::WRITE_INDEX, 16);
    expect_read_corrupt(&mut ring, Corruption::PacketBeyondWriteIndex { needed: 24, available: 16 });
}

#[test]
fn corrupt_read_index_seen_by_writer() {
    let cases: [(u32, Corruption); 3] = [
        (8192, Corruption::ReadIndexOutOfRange { value: 8192 }),
        (12, Corruption::ReadIndexUnaligned { value: 12 }),
        // Past what the writer has committed (80 after the second commit).
        (88, Corruption::ReadIndexInconsistent { value: 88 }),
    ];
    for (value, want) in cases {
        let mut ring = OwnedRing::new(1).unwrap();
        write_inband(&mut ring, 1, &[0u8; 16]).unwrap();
        ring.writer.commit().unwrap();
        ring.poke_control(ring_control::READ_INDEX, value);
        // The next commit re-reads read_index for its signal decision.
        write_inband(&mut ring, 2, &[0u8; 16]).unwrap();
        assert_eq!(ring.writer.commit(), Err(want));
        assert_eq!(ring.writer.corruption(), Some(want));
        assert_eq!(write_inband(&mut ring, 3, &[0u8; 16]), Err(WriteError::Corrupt(want)));
        assert_eq!(ring.writer.free_bytes(), Err(want));
        assert!(ring.writer.counters().corrupt >= 3);
    }
}

#[test]
fn read_index_moving_backwards_is_corrupt() {
    let mut ring = OwnedRing::new(1).unwrap();
    let mut buf = vec![0u8; 256];
    for i in 0..4 {
        write_inband(&mut ring, i, &[0u8; 16]).unwrap();
    }
    ring.writer.commit().unwrap();
    read_one(&mut ring, &mut buf).unwrap();
    read_one(&mut ring, &mut buf).unwrap();
    ring.reader.commit().unwrap(); // read = 80
    assert_eq!(ring.writer.free_bytes().unwrap(), 4096 - 80); // writer caches read = 80
    ring.poke_control(ring_control::READ_INDEX, 40); // backwards
                                                     // A write that needs a refresh of read_index (fill the ring).
                                                     // Needs 16 + 3992 + 8 = 4016 bytes = exactly the free space with the
                                                     // cached read index, so the writer must refresh it.
    let big = vec![0u8; 3992];
    let err = write_inband(&mut ring, 9, &big).unwrap_err();
    assert_eq!(err, WriteError::Corrupt(Corruption::ReadIndexInconsistent { value: 40 }));
}

#[test]
fn writer_starting_on_corrupt_page_is_corrupt() {
    let mut control = vec![0u8; 4096];
    control[0..4].copy_from_slice(&5u32.to_le_bytes());
    let mut ring = OwnedRing::from_bytes(&control, &[], 1).unwrap();
    assert_eq!(ring.writer.corruption(), Some(Corruption::WriteIndexUnaligned { value: 5 }));
    assert!(matches!(write_inband(&mut ring, 1, b"x"), Err(WriteError::Corrupt(_))));
}

#[test]
fn oversized_and_malformed_packets_are_skipped() {
    let mut ring = OwnedRing::new(2).unwrap();
    write_inband(&mut ring, 1, &[7u8; 200]).unwrap();
    // GPA-direct with a range offset of 4096 (invalid), written raw.
    let mut gpa = [0u8; 40];
    gpa[..16].copy_from_slice(PacketDescriptor::new(PacketType::DATA_GPA_DIRECT, 0, 2, 40, 0).unwrap().as_bytes());
    gpa[20] = 1; // range_count
    gpa[24] = 1; // len
    gpa[28..32].copy_from_slice(&4096u32.to_le_bytes());
    ring.writer.write_raw(&[&gpa]).unwrap();
    write_inband(&mut ring, 3, b"fine").unwrap();
    ring.writer.commit().unwrap();
    let mut small = vec![0u8; 64];
    assert_eq!(ring.reader.read(&mut small).unwrap_err(), ReadError::TooLarge { len: 216 });
    assert_eq!(
        ring.reader.read(&mut small).unwrap_err(),
        ReadError::Malformed(PacketError::GpaOffsetOutOfPage { index: 0, offset: 4096 })
    );
    assert_eq!(read_one(&mut ring, &mut small).unwrap(), (3, b"fine\0\0\0\0".to_vec()));
    assert_eq!(ring.reader.counters().skipped, 2);
    assert_eq!(ring.reader.corruption(), None);
}

use zerocopy::IntoBytes;

// ---------------------------------------------------- interrupt mask / signal

#[test]
fn signal_only_on_empty_to_non_empty_with_mask_clear() {
    let mut ring = OwnedRing::new(1).unwrap();
    let mut buf = vec![0u8; 256];
    write_inband(&mut ring, 1, b"a").unwrap();
    assert!(ring.writer.commit().unwrap());
    write_inband(&mut ring, 2, b"b").unwrap();
    assert!(!ring.writer.commit().unwrap(), "ring was non-empty");
    assert!(!ring.writer.commit().unwrap(), "empty commit");
    ring.reader.begin_read();
    assert_eq!(ring.peek_control(ring_control::INTERRUPT_MASK), 1);
    read_one(&mut ring, &mut buf).unwrap();
    read_one(&mut ring, &mut buf).unwrap();
    ring.reader.commit().unwrap();
    // Reader still masked: a new packet into the empty ring is not signalled.
    write_inband(&mut ring, 3, b"c").unwrap();
    assert!(!ring.writer.commit().unwrap(), "mask set");
    // end_read sees the packet that came in while masked: the caller loops.
    assert!(ring.reader.end_read().unwrap());
    assert_eq!(ring.peek_control(ring_control::INTERRUPT_MASK), 0);
    ring.reader.begin_read();
    read_one(&mut ring, &mut buf).unwrap();
    ring.reader.commit().unwrap();
    assert!(!ring.reader.end_read().unwrap(), "drained");
    write_inband(&mut ring, 4, b"d").unwrap();
    assert!(ring.writer.commit().unwrap(), "empty and unmasked again");
    assert_eq!(ring.writer.counters().signals, 2);
}

#[test]
fn end_read_counts_uncommitted_reads_as_consumed() {
    let mut ring = OwnedRing::new(1).unwrap();
    let mut buf = vec![0u8; 256];
    write_inband(&mut ring, 1, b"a").unwrap();
    ring.writer.commit().unwrap();
    ring.reader.begin_read();
    read_one(&mut ring, &mut buf).unwrap();
    assert!(!ring.reader.end_read().unwrap());
}

// --------------------------------------------------------- pending send size

/// Fills the ring with 64-byte packets (16 + 40 + 8) until Full.
fn fill(ring: &mut OwnedRing) -> u32 {
    fill_w(&mut ring.writer)
}

fn fill_w(w: &mut RingWriter) -> u32 {
    for _ in 0..1000 {
        match write_inband_w(w, 0, &[0u8; 40]) {
            Ok(()) => {}
            Err(WriteError::Full { needed, .. }) => return needed,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("ring never became full");
}

#[test]
fn pending_send_size_crossing() {
    let mut ring = OwnedRing::new(1).unwrap();
    let mut buf = vec![0u8; 256];
    let needed = fill(&mut ring);
    ring.writer.commit().unwrap();
    assert_eq!(needed, 64);
    // 4096 / 64 = 64 slots, 63 used: 64 bytes free, not > 64.
    assert!(!ring.writer.request_space(needed).unwrap(), "still not enough space");
    assert_eq!(ring.peek_control(ring_control::PENDING_SEND_SIZE), 64);
    // Reading one packet: free 64 -> 128 crosses 64: signal.
    read_one(&mut ring, &mut buf).unwrap();
    assert!(ring.reader.commit().unwrap());
    // Another one: 128 -> 192, no crossing.
    read_one(&mut ring, &mut buf).unwrap();
    assert!(!ring.reader.commit().unwrap());
    assert_eq!(ring.reader.counters().signals, 1);
    ring.writer.clear_space_request();
    assert_eq!(ring.peek_control(ring_control::PENDING_SEND_SIZE), 0);
    // The space is there now.
    write_inband(&mut ring, 1, &[0u8; 40]).unwrap();
}

#[test]
fn pending_send_size_already_satisfied() {
    let mut ring = OwnedRing::new(1).unwrap();
    let mut buf = vec![0u8; 256];
    let needed = fill(&mut ring);
    ring.writer.commit().unwrap();
    // The reader frees space before the writer gets to ask.
    read_one(&mut ring, &mut buf).unwrap();
    assert!(!ring.reader.commit().unwrap(), "nobody asked yet");
    assert!(ring.writer.request_space(needed).unwrap(), "re-check finds the space");
    assert_eq!(ring.peek_control(ring_control::PENDING_SEND_SIZE), 0, "request withdrawn");
}

#[test]
fn pending_send_size_needs_feature_bit_and_is_rounded_down() {
    let mut ring = OwnedRing::new(1).unwrap();
    let mut buf = vec![0u8; 256];
    fill(&mut ring);
    ring.writer.commit().unwrap();
    ring.poke_control(ring_control::FEATURE_BITS, 0);
    ring.poke_control(ring_control::PENDING_SEND_SIZE, 64);
    read_one(&mut ring, &mut buf).unwrap();
    assert!(!ring.reader.commit().unwrap(), "feature bit clear: never signal");
    ring.poke_control(ring_control::FEATURE_BITS, 1);
    // free is 128 now; a peer asking for 133 means 128 after masking: the
    // next 64 bytes freed cross 128 -> 192 > 128.
    ring.poke_control(ring_control::PENDING_SEND_SIZE, 133);
    read_one(&mut ring, &mut buf).unwrap();
    assert!(ring.reader.commit().unwrap());
    // Garbage pending sizes larger than the ring never signal and never fail.
    ring.poke_control(ring_control::PENDING_SEND_SIZE, u32::MAX);
    read_one(&mut ring, &mut buf).unwrap();
    assert!(!ring.reader.commit().unwrap());
}

// ------------------------------------------------------------------ channel

#[derive(Default)]
struct CountingHv {
    signals: Cell<u32>,
    last: Cell<u32>,
}

impl Hypervisor for CountingHv {
    fn post_message(&self, _connection_id: u32, _message: &[u8]) -> HvStatus {
        HvStatus::SUCCESS
    }
    fn signal_event(&self, connection_id: u32) -> HvStatus {
        self.signals.set(self.signals.get() + 1);
        self.last.set(connection_id);
        HvStatus::SUCCESS
    }
}

/// Two OwnedRings: guest->host (the sender's) and host->guest (the receiver's).
/// The tests play the host with the other half of each ring.
#[test]
fn channel_sender_signals_once_per_batch() {
    let hv = CountingHv::default();
    let mut ring = OwnedRing::new(2).unwrap();
    let mut host_buf = vec![0u8; 1024];
    let (writer, host_reader, _) = ring.halves();
    let mut sender = ChannelSender::new(writer, 0x2A);
    for i in 0..10 {
        sender.send_inband(PacketType::DATA_INBAND, FLAG_COMPLETION_REQUESTED, i, b"hello").unwrap();
    }
    assert!(sender.flush(&hv).unwrap());
    assert_eq!((hv.signals.get(), hv.last.get()), (1, 0x2A));
    sender.send_inband(PacketType::DATA_INBAND, 0, 10, b"more").unwrap();
    assert!(!sender.flush(&hv).unwrap(), "ring not empty: no signal");
    assert!(!sender.flush(&hv).unwrap(), "nothing to flush");
    assert_eq!(hv.signals.get(), 1);
    assert_eq!(sender.signal_counters().signals, 1);
    let mut n = 0;
    while let Some(p) = host_reader.read(&mut host_buf).unwrap() {
        assert_eq!(p.trans_id, n);
        assert_eq!(p.completion_requested(), n < 10);
        n += 1;
    }
    assert_eq!(n, 11);
}

#[test]
fn channel_receiver_poll_budget_and_mask() {
    let hv = CountingHv::default();
    let mut ring = OwnedRing::new(2).unwrap();
    let (host_writer, reader, peer) = ring.halves();
    let mut rx = ChannelReceiver::new(reader, vec![0u8; 512], 7);
    for i in 0..5 {
        write_inband_w(host_writer, i, b"data").unwrap();
    }
    host_writer.commit().unwrap();
    let mut seen = Vec::new();
    let o = rx.poll(&hv, 3, |p| seen.push(p.trans_id)).unwrap();
    assert_eq!((o.delivered, o.more), (3, true));
    assert_eq!(peer.peek_control(ring_control::INTERRUPT_MASK), 1, "still masked");
    let o = rx.poll(&hv, 3, |p| seen.push(p.trans_id)).unwrap();
    assert_eq!((o.delivered, o.more), (2, false));
    assert_eq!(peer.peek_control(ring_control::INTERRUPT_MASK), 0, "unmasked when drained");
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);
    assert_eq!(hv.signals.get(), 0, "host did not ask for space");
    assert_eq!(rx.ring_counters().commits, 2);
}

#[test]
fn channel_receiver_signals_host_waiting_for_space() {
    let hv = CountingHv::default();
    let mut ring = OwnedRing::new(1).unwrap();
    let (host_writer, reader, _) = ring.halves();
    let mut rx = ChannelReceiver::new(reader, vec![0u8; 512], 9);
    let needed = fill_w(host_writer);
    host_writer.commit().unwrap();
    assert!(!host_writer.request_space(needed).unwrap());
    let o = rx.poll(&hv, 1000, |_| {}).unwrap();
    assert_eq!(o.delivered, 63);
    assert_eq!((hv.signals.get(), hv.last.get()), (1, 9));
    assert_eq!(rx.signal_counters().signals, 1);
}

#[test]
fn channel_receiver_reports_corruption() {
    let hv = CountingHv::default();
    let mut ring = OwnedRing::new(1).unwrap();
    let (_, reader, peer) = ring.halves();
    let mut rx = ChannelReceiver::new(reader, vec![0u8; 512], 9);
    peer.poke_control(ring_control::WRITE_INDEX, 3);
    assert!(rx.poll(&hv, 10, |_| {}).is_err());
    assert!(rx.poll(&hv, 10, |_| {}).is_err(), "sticky");
}

// ------------------------------------------------------------------- setup

#[test]
fn ring_memory_rejects_bad_geometry() {
    use std::ptr::NonNull;
    use vmbus_core::ring::{Mapping, RingMemory, RingSetupError};
    let mut page = vec![0u8; 3 * 4096];
    let base = page.as_mut_ptr();
    let aligned = base.wrapping_add(base.align_offset(4096));
    let header = NonNull::new(aligned).unwrap();
    let data = NonNull::new(aligned.wrapping_add(4096)).unwrap();
    let odd = NonNull::new(aligned.wrapping_add(8)).unwrap();
    // SAFETY: the constructor fails before anything could use the pointers;
    // the successful call's value is dropped without building halves.
    unsafe {
        for size in [0usize, 100, 4095, 4097] {
            assert_eq!(
                RingMemory::new(header, data, size, Mapping::Plain).unwrap_err(),
                RingSetupError::BadDataSize { data_size: size }
            );
        }
        assert!(matches!(
            RingMemory::new(header, data, 1 << 31, Mapping::Double),
            Err(RingSetupError::BadDataSize { .. })
        ));
        assert_eq!(RingMemory::new(odd, data, 4096, Mapping::Plain).unwrap_err(), RingSetupError::Misaligned);
        assert_eq!(RingMemory::new(header, odd, 4096, Mapping::Plain).unwrap_err(), RingSetupError::Misaligned);
        assert_eq!(RingMemory::new(header, data, 4096, Mapping::Plain).unwrap().data_size(), 4096);
    }
    assert!(OwnedRing::new(0).is_none());
}

#[test]
fn corrupt_write_index_in_end_read_and_pending_commit() {
    // end_read re-reads write_index and validates it.
    let mut ring = OwnedRing::new(1).unwrap();
    ring.reader.begin_read();
    ring.poke_control(ring_control::WRITE_INDEX, 4100);
    assert_eq!(ring.reader.end_read(), Err(Corruption::WriteIndexOutOfRange { value: 4100 }));
    assert!(matches!(ring.reader.read(&mut [0u8; 64]), Err(ReadError::Corrupt(_))));

    // The pending-size decision in commit re-reads write_index too.
    let mut ring = OwnedRing::new(1).unwrap();
    let mut buf = vec![0u8; 256];
    write_inband(&mut ring, 1, &[0u8; 40]).unwrap();
    write_inband(&mut ring, 2, &[0u8; 40]).unwrap();
    ring.writer.commit().unwrap();
    read_one(&mut ring, &mut buf).unwrap();
    ring.poke_control(ring_control::PENDING_SEND_SIZE, 4000);
    // Claims the writer is at 32, behind the 64 bytes we just consumed.
    ring.poke_control(ring_control::WRITE_INDEX, 32);
    assert_eq!(ring.reader.commit(), Err(Corruption::WriteIndexInconsistent { value: 32 }));
    assert_eq!(ring.reader.corruption(), Some(Corruption::WriteIndexInconsistent { value: 32 }));
}

#[test]
fn channel_sender_gpa_direct() {
    let hv = CountingHv::default();
    let mut ring = OwnedRing::new(2).unwrap();
    let (writer, host_reader, _) = ring.halves();
    let mut sender = ChannelSender::new(writer, 1);
    let pfns = [0x100u64, 0x101, 0x102];
    let ranges = [PageRange { len: 8192, offset: 100, pfns: &pfns }];
    let mut scratch = [0u8; 64];
    sender.send_gpa_direct(FLAG_COMPLETION_REQUESTED, 42, &ranges, b"request", &mut scratch).unwrap();
    // Too small a scratch buffer is a typed error, not a panic.
    let err = sender.send_gpa_direct(0, 43, &ranges, b"x", &mut scratch[..16]).unwrap_err();
    assert_eq!(err, vmbus_core::channel::ChannelError::Packet(PacketError::BufferTooSmall { needed: 56 }));
    // A PFN list that does not match the range is refused.
    let bad = [PageRange { len: 8192, offset: 100, pfns: &pfns[..2] }];
    assert!(sender.send_gpa_direct(0, 44, &bad, b"x", &mut scratch).is_err());
    assert!(sender.flush(&hv).unwrap());
    let mut buf = vec![0u8; 256];
    let p = host_reader.read(&mut buf).unwrap().unwrap();
    assert_eq!((p.packet_type, p.trans_id), (PacketType::DATA_GPA_DIRECT, 42));
    assert_eq!(&p.payload[..7], b"request");
    let ExtendedHeader::GpaDirect(g) = p.extended else { panic!("type") };
    let r = g.ranges().next().unwrap();
    assert_eq!((r.len, r.offset, r.pfns.len(), r.pfns[2].get()), (8192, 100, 3, 0x102));
    assert!(host_reader.read(&mut buf).unwrap().is_none());
}

#[test]
fn outcome_helpers() {
    assert!(WriteError::Full { needed: 8, free: 8 }.is_full());
    assert!(!WriteError::Corrupt(Corruption::ReadIndexUnaligned { value: 1 }).is_full());
    assert!(ReadError::Corrupt(Corruption::WriteIndexUnaligned { value: 1 }).is_corrupt());
    assert!(!ReadError::TooLarge { len: 8 }.is_corrupt());
}

/// The exact ring bytes of a packet: segments, zero padding to 8 (even over
/// stale bytes), trailer; the same whether the packet is contiguous (fast
/// path) or wraps (per-piece copies), for every padding length.
#[test]
fn packet_bytes_padding_and_trailer_over_stale_data() {
    for body_len in 0..=17usize {
        for start in [0u32, 256, 4096 - 16, 4096 - 40] {
            let mut ring = ring_at(1, start);
            ring.poke_data(0, &[0xEE; 4096]);
            let body = payload(body_len as u8, body_len);
            write_inband(&mut ring, 9, &body).unwrap();
            let padded = (16 + body_len).div_ceil(8) * 8;
            let mut want = inband_header(PacketType::DATA_INBAND, 0, 9, body_len).unwrap().to_vec();
            want.extend_from_slice(&body);
            want.resize(padded, 0);
            want.extend_from_slice(&((start as u64) << 32).to_le_bytes());
            let got: Vec<u8> = (0..want.len())
                .map(|i| {
                    let mut one = [0u8; 1];
                    ring.peek_data((start as usize + i) % 4096, &mut one);
                    one[0]
                })
                .collect();
            assert_eq!(got, want, "body_len {body_len}, start {start}");
            // The byte after the trailer is untouched.
            let mut after = [0u8; 1];
            ring.peek_data((start as usize + want.len()) % 4096, &mut after);
            assert_eq!(after[0], 0xEE);
            assert_eq!(ring.writer.uncommitted_bytes() as usize, want.len());
        }
    }
}
