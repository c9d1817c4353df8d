// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The ring over a real double mapping (memfd + two mmaps aliasing the data
//! pages), compared with the plain mapping.
#![cfg(target_os = "linux")]
// Setting up the mappings needs libc calls.
#![allow(unsafe_code)]

use std::ptr::NonNull;

use vmbus_core::packet::*;
use vmbus_core::ring::{Mapping, OwnedRing, RingMemory, RingReader, RingWriter};

/// A control page plus `data_size` bytes mapped twice back to back.
struct DoubleMapped {
    base: *mut u8,
    total: usize,
    data_size: usize,
}

impl DoubleMapped {
    fn new(data_size: usize) -> Self {
        // SAFETY: plain libc calls with checked results; the file is sized
        // before mapping and the fixed mappings replace our own reservation.
        unsafe {
            let fd = libc::memfd_create(c"vmbus-ring-test".as_ptr(), 0);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, (4096 + data_size) as libc::off_t), 0);
            let total = 4096 + 2 * data_size;
            let base = libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            let first = libc::mmap(base, 4096 + data_size, rw, libc::MAP_SHARED | libc::MAP_FIXED, fd, 0);
            assert_eq!(first, base);
            let second_at = base.cast::<u8>().add(4096 + data_size).cast();
            let second = libc::mmap(second_at, data_size, rw, libc::MAP_SHARED | libc::MAP_FIXED, fd, 4096);
            assert_eq!(second, second_at);
            libc::close(fd);
            DoubleMapped { base: base.cast(), total, data_size }
        }
    }

    /// Two RingMemory values (one per half) over the mapping.
    fn memories(&self) -> (RingMemory, RingMemory) {
        let header = NonNull::new(self.base).unwrap();
        // SAFETY: base + 4096 is inside the mapping.
        let data = NonNull::new(unsafe { self.base.add(4096) }).unwrap();
        // SAFETY: the mapping lives as long as `self`, which every test keeps
        // alive longer than the halves; data + data_size aliases data; only
        // one writer and one reader are built.
        let make = || unsafe { RingMemory::new(header, data, self.data_size, Mapping::Double).unwrap() };
        (make(), make())
    }

    fn data_byte(&self, i: usize) -> u8 {
        // SAFETY: i < 2 * data_size is inside the mapping; no other thread runs.
        unsafe { self.base.add(4096 + i).read_volatile() }
    }

    fn set_data_byte(&self, i: usize, v: u8) {
        // SAFETY: as above.
        unsafe { self.base.add(4096 + i).write_volatile(v) }
    }
}

impl Drop for DoubleMapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), self.total) };
    }
}

fn halves(m: &DoubleMapped, start: u32) -> (RingWriter, RingReader) {
    let (wm, rm) = m.memories();
    wm.initialize();
    // Position both indices at `start` by writing the control page the way a
    // peer would (before the halves pick them up).
    // SAFETY: control words are 4-aligned inside the mapping; no halves yet.
    unsafe {
        m.base.cast::<u32>().write_volatile(start);
        m.base.add(4).cast::<u32>().write_volatile(start);
    }
    (RingWriter::new(wm), RingReader::new(rm))
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot run memfd_create/mmap (no aliased double mapping)")]
fn alias_is_real() {
    let m = DoubleMapped::new(8192);
    m.set_data_byte(5, 0x5A);
    assert_eq!(m.data_byte(8192 + 5), 0x5A);
    m.set_data_byte(8192 + 9, 0xA5);
    assert_eq!(m.data_byte(9), 0xA5);
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot run memfd_create/mmap (no aliased double mapping)")]
fn wrap_around_double_mapping() {
    for start in [8192 - 8, 8192 - 16, 8192 - 24, 8192 - 200] {
        let m = DoubleMapped::new(8192);
        let (mut w, mut r) = halves(&m, start);
        let body: Vec<u8> = (0..300u32).map(|i| (i * 7 + start) as u8).collect();
        let h = inband_header(PacketType::DATA_INBAND, 1, 5, body.len()).unwrap();
        w.write(&[&h, &body[..100], &body[100..]]).unwrap();
        assert!(w.commit().unwrap());
        let mut buf = vec![0u8; 1024];
        let p = r.read(&mut buf).unwrap().unwrap();
        assert_eq!(p.trans_id, 5);
        assert_eq!(&p.payload[..300], &body[..]);
        // The bytes really wrapped into the start of the first copy.
        let end = (start as usize + 16 + 304) % 8192;
        let trailer: Vec<u8> = (0..8).map(|i| m.data_byte((end + i) % 8192)).collect();
        assert_eq!(u64::from_le_bytes(trailer.try_into().unwrap()), (start as u64) << 32);
        r.commit().unwrap();
        assert!(r.read(&mut buf).unwrap().is_none());
    }
}

/// The same sequence of variable-size packets through a plain and a double
/// mapped ring leaves identical ring bytes and identical packets, across
/// many wraps.
#[test]
#[cfg_attr(miri, ignore = "Miri cannot run memfd_create/mmap (no aliased double mapping)")]
fn double_and_plain_agree_across_wraps() {
    let m = DoubleMapped::new(8192);
    let (mut dw, mut dr) = halves(&m, 0);
    let mut plain = OwnedRing::new(2).unwrap();
    let mut b1 = vec![0u8; 8192];
    let mut b2 = vec![0u8; 8192];
    let mut seed = 0x1234_5678u32;
    for round in 0..400u64 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let len = (seed >> 8) as usize % 3000;
        let body: Vec<u8> = (0..len).map(|i| (i as u32 ^ seed) as u8).collect();
        let h = inband_header(PacketType::DATA_INBAND, 0, round, len).unwrap();
        let a = dw.write(&[&h, &body]);
        let b = plain.writer.write(&[&h, &body]);
        assert_eq!(a, b);
        if a.is_err() {
            // Full: drain both.
            dw.commit().unwrap();
            plain.writer.commit().unwrap();
            loop {
                let x = dr.read(&mut b1).unwrap().map(|p| (p.trans_id, p.payload.to_vec()));
                let y = plain.reader.read(&mut b2).unwrap().map(|p| (p.trans_id, p.payload.to_vec()));
                assert_eq!(x, y);
                if x.is_none() {
                    break;
                }
            }
            dr.commit().unwrap();
            plain.reader.commit().unwrap();
        }
    }
    let mut plain_bytes = vec![0u8; 8192];
    plain.peek_data(0, &mut plain_bytes);
    let double_bytes: Vec<u8> = (0..8192).map(|i| m.data_byte(i)).collect();
    assert_eq!(plain_bytes, double_bytes);
    assert!(dw.counters().packets > 100);
    assert_eq!(dw.counters().full, plain.writer.counters().full);
    assert!(dw.counters().full > 0);
}
