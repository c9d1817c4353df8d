// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! A ring (control page + one or two data pages) filled from fuzz input:
//! arbitrary control words and data, then arbitrary reader (and loopback
//! writer) operations interleaved with a misbehaving peer poking indices and
//! data, then a final drain. The reader must never panic, never touch memory
//! outside the ring, and the final drain must end (empty or corrupt) within
//! a bound derived from the data size: every packet takes at least 24 bytes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmbus_core::packet::{ring_control, DESCRIPTOR_SIZE, TRAILER_SIZE};
use vmbus_core::ring::{OwnedRing, ReadError};

#[derive(Arbitrary, Debug)]
enum Op {
    /// Read and parse one packet into a buffer of this size.
    Read(u16),
    /// Read one packet without parsing.
    ReadRaw(u16),
    /// Publish the read index.
    Commit,
    /// Mask interrupts.
    BeginRead,
    /// Unmask and re-check.
    EndRead,
    /// Query the bytes available.
    Available,
    /// The peer stores a control word (index into the four words + feature bits).
    PeerControl(u8, u32),
    /// The peer writes data bytes.
    PeerData(u16, Vec<u8>),
    /// The local writer half writes a packet (in-band, payload of this many bytes).
    Write(u8),
    /// The local writer half commits.
    WriterCommit,
}

#[derive(Arbitrary, Debug)]
struct Input {
    two_pages: bool,
    write_index: u32,
    read_index: u32,
    interrupt_mask: u32,
    pending_send_size: u32,
    feature_bits: u32,
    data: Vec<u8>,
    ops: Vec<Op>,
}

const CONTROL_WORDS: [usize; 5] = [
    ring_control::WRITE_INDEX,
    ring_control::READ_INDEX,
    ring_control::INTERRUPT_MASK,
    ring_control::PENDING_SEND_SIZE,
    ring_control::FEATURE_BITS,
];

fuzz_target!(|input: Input| {
    let pages = if input.two_pages { 2 } else { 1 };
    let mut control = vec![0u8; 4096];
    for (off, v) in CONTROL_WORDS.iter().zip([
        input.write_index,
        input.read_index,
        input.interrupt_mask,
        input.pending_send_size,
        input.feature_bits,
    ]) {
        control[*off..*off + 4].copy_from_slice(&v.to_le_bytes());
    }
    let mut ring = OwnedRing::from_bytes(&control, &input.data, pages).expect("ring of 1 or 2 pages");
    let data_size = ring.reader.data_size() as usize;
    assert_eq!(data_size, pages * 4096);
    let mut buf = vec![0u8; 2 * data_size];

    for op in input.ops.iter().take(200) {
        let (writer, reader, peer) = ring.halves();
        match op {
            Op::Read(n) => {
                let n = (*n as usize).min(buf.len());
                if let Ok(Some(p)) = reader.read(&mut buf[..n]) {
                    assert!(p.payload.len() < n);
                }
            }
            Op::ReadRaw(n) => {
                let n = (*n as usize).min(buf.len());
                if let Ok(Some(len)) = reader.read_raw(&mut buf[..n]) {
                    assert!(len <= n && len >= DESCRIPTOR_SIZE && len.is_multiple_of(8));
                    assert!(len + TRAILER_SIZE < data_size, "packet of {len} bytes read from a {data_size}-byte ring");
                }
            }
            Op::Commit => {
                let _ = reader.commit();
            }
            Op::BeginRead => reader.begin_read(),
            Op::EndRead => {
                let _ = reader.end_read();
            }
            Op::Available => {
                if let Ok(a) = reader.available_bytes() {
                    assert!((a as usize) < data_size, "{a} bytes available in a {data_size}-byte ring");
                }
            }
            Op::PeerControl(w, v) => peer.poke_control(CONTROL_WORDS[*w as usize % CONTROL_WORDS.len()], *v),
            Op::PeerData(off, bytes) => peer.poke_data(*off as usize, bytes),
            Op::Write(n) => {
                let payload = vec![0xA5u8; *n as usize];
                let len8 = ((DESCRIPTOR_SIZE + payload.len()).div_ceil(8)) as u16;
                let mut desc = [0u8; DESCRIPTOR_SIZE];
                desc[0..2].copy_from_slice(&6u16.to_le_bytes()); // in-band data
                desc[2..4].copy_from_slice(&2u16.to_le_bytes());
                desc[4..6].copy_from_slice(&len8.to_le_bytes());
                let pad = vec![0u8; len8 as usize * 8 - DESCRIPTOR_SIZE - payload.len()];
                let _ = writer.write(&[&desc, &payload, &pad]);
            }
            Op::WriterCommit => {
                let _ = writer.commit();
            }
        }
    }

    // Final drain, with nobody else touching the ring: it must end.
    let reader = &mut ring.reader;
    reader.begin_read();
    let bound = data_size / (DESCRIPTOR_SIZE + TRAILER_SIZE) + 2;
    let mut drained = false;
    for _ in 0..bound {
        match reader.read(&mut buf) {
            Ok(Some(_)) | Err(ReadError::TooLarge { .. }) | Err(ReadError::Malformed(_)) => {}
            Ok(None) => {
                drained = true;
                break;
            }
            Err(ReadError::Corrupt(_)) => {
                assert!(reader.corruption().is_some(), "corruption must be sticky");
                assert!(matches!(reader.read(&mut buf), Err(ReadError::Corrupt(_))));
                drained = true;
                break;
            }
        }
    }
    assert!(drained, "reader did not reach empty or corrupt within {bound} reads of a {data_size}-byte ring");
    // A commit that published something published a valid index (a no-op
    // commit leaves whatever the peer may have scribbled there).
    let commits = reader.counters().commits;
    if reader.corruption().is_none() && reader.commit().is_ok() && reader.counters().commits > commits {
        let r = ring.peek_control(ring_control::READ_INDEX) as usize;
        assert!(r < data_size && r.is_multiple_of(8), "published read index {r}");
    }
});
