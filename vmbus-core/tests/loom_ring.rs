// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Memory-ordering model check of the ring's control-word protocol with
//! loom. Build and run with
//! `RUSTFLAGS="--cfg loom" cargo test --release -p vmbus-core --test loom_ring`.
//!
//! The decision code under test is `vmbus_core::ring::protocol` itself
//! (the same functions RingWriter/RingReader call); only the four control
//! words are loom atomics here instead of atomics over the shared page.
//! Packet data is not modelled: the data publication pairs are plain
//! Release/Acquire and loom would only re-check what the index protocol
//! already implies.
#![cfg(loom)]

use loom::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use loom::sync::Arc;
use loom::thread;
use vmbus_core::ring::protocol::{self, ControlWords};

const SIZE: u32 = 4096;

struct LoomControl {
    write: AtomicU32,
    read: AtomicU32,
    mask: AtomicU32,
    pending: AtomicU32,
    features: AtomicU32,
}

impl LoomControl {
    fn new(write: u32, read: u32) -> Self {
        LoomControl {
            write: AtomicU32::new(write),
            read: AtomicU32::new(read),
            mask: AtomicU32::new(0),
            pending: AtomicU32::new(0),
            features: AtomicU32::new(1),
        }
    }
}

impl ControlWords for LoomControl {
    fn load_write_index(&self, order: Ordering) -> u32 {
        self.write.load(order)
    }
    fn store_write_index(&self, value: u32, order: Ordering) {
        self.write.store(value, order)
    }
    fn load_read_index(&self, order: Ordering) -> u32 {
        self.read.load(order)
    }
    fn store_read_index(&self, value: u32, order: Ordering) {
        self.read.store(value, order)
    }
    fn load_interrupt_mask(&self, order: Ordering) -> u32 {
        self.mask.load(order)
    }
    fn store_interrupt_mask(&self, value: u32, order: Ordering) {
        self.mask.store(value, order)
    }
    fn load_pending_send_size(&self, order: Ordering) -> u32 {
        self.pending.load(order)
    }
    fn store_pending_send_size(&self, value: u32, order: Ordering) {
        self.pending.store(value, order)
    }
    fn load_feature_bits(&self, order: Ordering) -> u32 {
        self.features.load(order)
    }
    fn fence_seq_cst(&self) {
        fence(Ordering::SeqCst)
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    // Bounded preemptions keep the run short; the races of interest need
    // at most two.
    b.preemption_bound = Some(3);
    b.check(f);
}

/// One poll pass of a reader that drains with the interrupt mask set and
/// re-checks after clearing it, as ChannelReceiver::poll does. Returns the
/// position it consumed up to.
fn reader_poll(c: &LoomControl, mut committed: u32) -> u32 {
    protocol::begin_read(c);
    for _ in 0..3 {
        let w = protocol::load_write_index(c, SIZE, committed, committed).expect("valid write index");
        if w != committed {
            // "Read" everything available, then commit once.
            let signal = protocol::reader_commit(c, SIZE, committed, w).expect("valid");
            assert!(!signal, "no space was requested");
            committed = w;
        }
        let w = protocol::end_read(c, SIZE, committed, committed).expect("valid");
        if w == committed {
            return committed;
        }
        protocol::begin_read(c);
    }
    panic!("writer wrote only once, the reader cannot need more than two passes");
}

/// Writer commits into an empty ring while the reader polls: either the
/// writer signals or the reader's poll sees the packet. No lost wake-up.
#[test]
fn no_lost_wakeup_empty_ring() {
    model(|| {
        let c = Arc::new(LoomControl::new(0, 0));
        let signalled = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (c.clone(), signalled.clone());
        let writer = thread::spawn(move || {
            let r = protocol::writer_commit(&*c2, SIZE, 0, 0, 64).expect("valid read index");
            s2.store(r.signal, Ordering::Relaxed);
        });
        let consumed = reader_poll(&c, 0);
        writer.join().unwrap();
        assert!(
            consumed == 64 || signalled.load(Ordering::Relaxed),
            "lost wake-up: reader stopped at {consumed} and the writer did not signal"
        );
    });
}

/// The reader is still consuming an older packet (its read_index commit
/// races with the writer's empty check) while the writer commits a second
/// one.
#[test]
fn no_lost_wakeup_while_reader_commits() {
    model(|| {
        let c = Arc::new(LoomControl::new(64, 0));
        let signalled = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (c.clone(), signalled.clone());
        let writer = thread::spawn(move || {
            let r = protocol::writer_commit(&*c2, SIZE, 0, 64, 128).expect("valid read index");
            s2.store(r.signal, Ordering::Relaxed);
        });
        let consumed = reader_poll(&c, 0);
        writer.join().unwrap();
        assert!(
            consumed == 128 || signalled.load(Ordering::Relaxed),
            "lost wake-up: reader stopped at {consumed} and the writer did not signal"
        );
    });
}

/// A blocked writer asks for space while the reader frees it: either the
/// writer's re-check sees the space or the reader signals.
#[test]
fn no_lost_wakeup_pending_send_size() {
    model(|| {
        // Ring nearly full: 4032 bytes used, 64 free; the writer needs more
        // than 64.
        let c = Arc::new(LoomControl::new(4032, 0));
        let signalled = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (c.clone(), signalled.clone());
        let reader = thread::spawn(move || {
            let s = protocol::reader_commit(&*c2, SIZE, 0, 64).expect("valid write index");
            s2.store(s, Ordering::Relaxed);
        });
        let read = protocol::writer_request_space(&*c, SIZE, 64, 0, 4032).expect("valid read index");
        let free = SIZE - (4032 - read);
        let writer_sees_space = free > 64;
        reader.join().unwrap();
        assert!(
            writer_sees_space || signalled.load(Ordering::Relaxed),
            "lost wake-up: writer saw {free} free and the reader did not signal"
        );
    });
}

/// Control: without the fences the pattern is known to lose wake-ups; loom
/// must find that, which shows the checks above are not vacuous.
#[test]
#[should_panic(expected = "lost wake-up")]
fn control_without_fences_loses_wakeups() {
    struct NoFence(LoomControl);
    impl ControlWords for NoFence {
        fn load_write_index(&self, o: Ordering) -> u32 {
            self.0.load_write_index(o)
        }
        fn store_write_index(&self, v: u32, o: Ordering) {
            self.0.store_write_index(v, o)
        }
        fn load_read_index(&self, o: Ordering) -> u32 {
            self.0.load_read_index(o)
        }
        fn store_read_index(&self, v: u32, o: Ordering) {
            self.0.store_read_index(v, o)
        }
        fn load_interrupt_mask(&self, o: Ordering) -> u32 {
            self.0.load_interrupt_mask(o)
        }
        fn store_interrupt_mask(&self, v: u32, o: Ordering) {
            self.0.store_interrupt_mask(v, o)
        }
        fn load_pending_send_size(&self, o: Ordering) -> u32 {
            self.0.load_pending_send_size(o)
        }
        fn store_pending_send_size(&self, v: u32, o: Ordering) {
            self.0.store_pending_send_size(v, o)
        }
        fn load_feature_bits(&self, o: Ordering) -> u32 {
            self.0.load_feature_bits(o)
        }
        fn fence_seq_cst(&self) {}
    }
    model(|| {
        let c = Arc::new(NoFence(LoomControl::new(4032, 0)));
        let signalled = Arc::new(AtomicBool::new(false));
        let (c2, s2) = (c.clone(), signalled.clone());
        let reader = thread::spawn(move || {
            let s = protocol::reader_commit(&*c2, SIZE, 0, 64).expect("valid write index");
            s2.store(s, Ordering::Relaxed);
        });
        let read = protocol::writer_request_space(&*c, SIZE, 64, 0, 4032).expect("valid read index");
        let free = SIZE - (4032 - read);
        reader.join().unwrap();
        assert!(free > 64 || signalled.load(Ordering::Relaxed), "lost wake-up");
    });
}
