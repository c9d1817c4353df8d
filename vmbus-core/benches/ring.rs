// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Ring throughput: packets/s and bytes/s through a 1 MiB ring for several
//! payload sizes and batch sizes, in one thread (write batch, commit, read
//! batch, commit) and two threads (writer and reader spinning), against a
//! plain memcpy baseline (payload into a buffer and out again). Prints a
//! Markdown table.
//!
//! `cargo bench -p vmbus-core --bench ring` (about a minute) or
//! `cargo bench -p vmbus-core --bench ring -- --quick` (CI smoke run).
//! `-- --size 64` (repeatable) limits the run to those payload sizes and
//! `-- --threads 1` to one mode, e.g. for profiling one row.
//! `-- --count N --size S [--batch B]` runs exactly N packets per batch size through
//! one thread and prints no table: for instruction counts under
//! `valgrind --tool=callgrind` (run two counts; the difference divided by
//! the packet difference is the cost per packet, free of timer noise).

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vmbus_core::packet::{inband_header, PacketType};
use vmbus_core::ring::{OwnedRing, ReadError, RingReader, RingWriter, WriteError};

const RING_PAGES: usize = 256; // 1 MiB data area
const SIZES: [usize; 5] = [64, 256, 1500, 8192, 65536];
const BATCHES: [usize; 2] = [1, 32];

struct Result {
    packets: u64,
    elapsed: Duration,
    signals: u64,
}

impl Result {
    fn pps(&self) -> f64 {
        self.packets as f64 / self.elapsed.as_secs_f64()
    }
}

/// Writes up to `batch` packets; returns how many fit.
fn write_batch(w: &mut RingWriter, header: &[u8], payload: &[u8], batch: usize) -> usize {
    for i in 0..batch {
        match w.write(&[header, payload]) {
            Ok(()) => {}
            Err(WriteError::Full { .. }) => return i,
            Err(e) => panic!("write: {e}"),
        }
    }
    batch
}

/// Reads up to `max` packets; returns how many were read.
fn read_batch(r: &mut RingReader, buf: &mut [u8], max: usize) -> usize {
    for i in 0..max {
        match r.read(buf) {
            Ok(Some(p)) => {
                black_box(p.payload.len());
            }
            Ok(None) => return i,
            Err(ReadError::Corrupt(c)) => panic!("corrupt: {c}"),
            Err(e) => panic!("read: {e}"),
        }
    }
    max
}

fn one_thread(size: usize, batch: usize, duration: Duration) -> Result {
    let mut ring = OwnedRing::new(RING_PAGES).unwrap();
    let payload = vec![0x5Au8; size];
    let header = inband_header(PacketType::DATA_INBAND, 0, 1, size).unwrap();
    let mut buf = vec![0u8; size + 64];
    let mut packets = 0u64;
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    while elapsed < duration {
        for _ in 0..16 {
            let n = write_batch(&mut ring.writer, &header, &payload, batch);
            ring.writer.commit().unwrap();
            let m = read_batch(&mut ring.reader, &mut buf, usize::MAX);
            assert_eq!(n, m);
            ring.reader.commit().unwrap();
            packets += m as u64;
        }
        elapsed = start.elapsed();
    }
    Result { packets, elapsed, signals: ring.writer.counters().signals }
}

/// `one_thread` for a fixed number of packets (no clock reads).
fn one_thread_count(size: usize, batch: usize, count: u64) -> u64 {
    let mut ring = OwnedRing::new(RING_PAGES).unwrap();
    let payload = vec![0x5Au8; size];
    let header = inband_header(PacketType::DATA_INBAND, 0, 1, size).unwrap();
    let mut buf = vec![0u8; size + 64];
    let mut packets = 0u64;
    while packets < count {
        let n = write_batch(&mut ring.writer, &header, &payload, batch);
        ring.writer.commit().unwrap();
        let m = read_batch(&mut ring.reader, &mut buf, usize::MAX);
        assert_eq!(n, m);
        ring.reader.commit().unwrap();
        packets += m as u64;
    }
    packets
}

fn two_threads(size: usize, batch: usize, duration: Duration) -> Result {
    let mut ring = OwnedRing::new(RING_PAGES).unwrap();
    let payload = vec![0x5Au8; size];
    let header = inband_header(PacketType::DATA_INBAND, 0, 1, size).unwrap();
    let done = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    let (writer, reader, _) = ring.halves();
    let start = Instant::now();
    let (sent, signals) = std::thread::scope(|s| {
        s.spawn(|| {
            // The reader drains with the interrupt mask set, commits once per
            // batch, then unmasks and spins unmasked (standing in for
            // waiting for the interrupt) until data shows up again.
            let mut buf = vec![0u8; size + 64];
            let mut total = 0u64;
            loop {
                reader.begin_read();
                loop {
                    let n = read_batch(reader, &mut buf, batch.max(32));
                    total += n as u64;
                    reader.commit().unwrap();
                    if n == 0 {
                        break;
                    }
                }
                if reader.end_read().unwrap() {
                    continue;
                }
                let mut idle = 0u32;
                while reader.available_bytes().unwrap() == 0 {
                    if done.load(Ordering::Acquire) && reader.available_bytes().unwrap() == 0 {
                        received.store(total, Ordering::Release);
                        return;
                    }
                    backoff(&mut idle);
                }
            }
        });
        let mut sent = 0u64;
        let mut i = 0u32;
        let mut idle = 0u32;
        loop {
            let n = write_batch(writer, &header, &payload, batch);
            writer.commit().unwrap();
            sent += n as u64;
            if n < batch {
                backoff(&mut idle);
            } else {
                idle = 0;
            }
            i = i.wrapping_add(1);
            if i % 64 == 0 && start.elapsed() >= duration {
                break;
            }
        }
        done.store(true, Ordering::Release);
        (sent, writer.counters().signals)
    });
    let elapsed = start.elapsed();
    assert_eq!(received.load(Ordering::Acquire), sent, "reader saw every packet");
    Result { packets: sent, elapsed, signals }
}

/// Spin a little, then yield: on an oversubscribed machine a pure spin
/// burns the time slice the peer thread needs.
fn backoff(idle: &mut u32) {
    *idle += 1;
    if *idle < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Baseline: copy the payload into a 1 MiB buffer (at a moving offset) and
/// out again into a private buffer: the two copies the ring also makes.
fn memcpy(size: usize, duration: Duration) -> Result {
    let payload = vec![0x5Au8; size];
    let mut area = vec![0u8; RING_PAGES * 4096];
    let mut out = vec![0u8; size];
    let mut off = 0usize;
    let mut packets = 0u64;
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    while elapsed < duration {
        for _ in 0..256 {
            if off + size > area.len() {
                off = 0;
            }
            area[off..off + size].copy_from_slice(black_box(&payload));
            out.copy_from_slice(black_box(&area[off..off + size]));
            black_box(&mut out);
            off += size.div_ceil(8) * 8 + 24;
            packets += 1;
        }
        elapsed = start.elapsed();
    }
    Result { packets, elapsed, signals: 0 }
}

fn human_rate(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else {
        format!("{:.1} k", v / 1e3)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // Values following `flag` (e.g. `--size 64 --size 256`).
    let values = |flag: &str| -> Vec<usize> {
        args.windows(2).filter(|w| w[0] == flag).filter_map(|w| w[1].parse().ok()).collect()
    };
    let (sizes, thread_modes, batches) = (values("--size"), values("--threads"), values("--batch"));
    if let Some(&count) = values("--count").first() {
        for &size in SIZES.iter().filter(|s| sizes.is_empty() || sizes.contains(s)) {
            for &batch in BATCHES.iter().filter(|b| batches.is_empty() || batches.contains(b)) {
                let packets = one_thread_count(size, batch, count as u64);
                println!("size {size} batch {batch}: {packets} packets");
            }
        }
        return;
    }
    // 5 sizes x (memcpy + 2 batches x 2 modes) = 25 runs.
    let per_run = if quick { Duration::from_millis(20) } else { Duration::from_millis(1500) };
    println!("ring: {} KiB data area, plain mapping, {} per run", RING_PAGES * 4, humantime(per_run));
    println!();
    println!("| payload | batch | threads | packets/s | payload bytes/s | memcpy bytes/s | ring/memcpy | signals per 1000 pkts |");
    println!("|--------:|------:|--------:|----------:|----------------:|---------------:|------------:|----------------------:|");
    for &size in SIZES.iter().filter(|s| sizes.is_empty() || sizes.contains(s)) {
        let base = memcpy(size, per_run);
        let base_bps = base.pps() * size as f64;
        for &batch in &BATCHES {
            for threads in [1, 2].into_iter().filter(|t| thread_modes.is_empty() || thread_modes.contains(t)) {
                let r = if threads == 1 { one_thread(size, batch, per_run) } else { two_threads(size, batch, per_run) };
                let bps = r.pps() * size as f64;
                println!(
                    "| {} | {} | {} | {} | {}B/s | {}B/s | {:.2} | {:.1} |",
                    size,
                    batch,
                    threads,
                    human_rate(r.pps()),
                    human_rate(bps),
                    human_rate(base_bps),
                    bps / base_bps,
                    r.signals as f64 * 1000.0 / r.packets.max(1) as f64,
                );
            }
        }
    }
}

fn humantime(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
