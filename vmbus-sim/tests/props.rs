// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Property tests of the simulator's own machinery: the page allocator, the
//! SynIC message queue and the hypercall inbox.

use proptest::prelude::*;
use vmbus_core::platform::{Hypervisor, SharedMemory};
use vmbus_sim::hypercall::Hypercalls;
use vmbus_sim::memory::GuestMemory;
use vmbus_sim::synic::Synic;

#[derive(Clone, Debug)]
enum MemOp {
    Alloc(usize),
    Free(usize),
}

fn mem_op() -> impl Strategy<Value = MemOp> {
    prop_oneof![(1usize..6).prop_map(MemOp::Alloc), (0usize..8).prop_map(MemOp::Free)]
}

proptest! {
    /// Live regions never overlap, frames translate back to the same page,
    /// fresh regions are zeroed and the page count is exact.
    #[test]
    fn allocator_never_overlaps(ops in prop::collection::vec(mem_op(), 1..60)) {
        let mem = GuestMemory::new(24, 0x200).unwrap();
        let mut live = Vec::new();
        for op in ops {
            match op {
                MemOp::Alloc(n) => {
                    if let Ok(r) = mem.alloc_shared(n) {
                        let first = mem.frame(&r, 0).unwrap();
                        // Zeroed, and dirtied so a reuse that is not re-zeroed shows.
                        let mut buf = vec![0xFFu8; n * 4096];
                        mem.read(first * 4096, &mut buf).unwrap();
                        prop_assert!(buf.iter().all(|&b| b == 0));
                        mem.write(first * 4096, &vec![0xEE; n * 4096]).unwrap();
                        for i in 0..n {
                            let pfn = mem.frame(&r, i).unwrap();
                            prop_assert_eq!(pfn, first + i as u64);
                            prop_assert_eq!(mem.frame_of(r.vaddr.as_ptr().wrapping_add(i * 4096)), Some(pfn));
                        }
                        for (f, m) in &live {
                            let (a0, a1) = (first, first + n as u64);
                            let (b0, b1): (u64, u64) = (*f, *f + *m as u64);
                            prop_assert!(a1 <= b0 || b1 <= a0, "overlap");
                        }
                        // The region is rebuilt from (first, n) to free it; its token is its page index.
                        prop_assert_eq!(r.token as u64, first - 0x200);
                        live.push((first, n));
                    }
                }
                MemOp::Free(i) => {
                    if !live.is_empty() {
                        let (first, n) = live.remove(i % live.len());
                        let token = (first - 0x200) as usize;
                        let vaddr = std::ptr::NonNull::new(mem.frame_of_ptr(first)).unwrap();
                        mem.release(vmbus_core::platform::SharedRegion { vaddr, pages: n, token });
                    }
                }
            }
            let in_use: usize = live.iter().map(|(_, n)| n).sum();
            prop_assert_eq!(mem.stats().pages_in_use, in_use);
        }
    }

    /// Every message the host queues reaches the guest once, in order,
    /// whatever the interleaving of posts, takes and EOMs.
    #[test]
    fn synic_delivers_in_order(script in prop::collection::vec(0u8..3, 1..200)) {
        let mut s = Synic::new(1000);
        let mut next = 0u32;
        let mut seen = Vec::new();
        let mut owe_eom = false;
        for step in script {
            match step {
                0 => {
                    let mut m = [0u8; 12];
                    m[8..].copy_from_slice(&next.to_le_bytes());
                    s.post(&m).unwrap();
                    next += 1;
                }
                1 => {
                    if let Some((raw, pending)) = s.take_slot() {
                        seen.push(u32::from_le_bytes(raw[24..28].try_into().unwrap()));
                        owe_eom |= pending;
                    }
                }
                _ => {
                    if owe_eom {
                        s.eom();
                        owe_eom = false;
                    }
                }
            }
        }
        // Drain like a guest that always EOMs when told to.
        loop {
            if owe_eom {
                s.eom();
                owe_eom = false;
            }
            match s.take_slot() {
                Some((raw, pending)) => {
                    seen.push(u32::from_le_bytes(raw[24..28].try_into().unwrap()));
                    owe_eom = pending;
                }
                None if !owe_eom => break,
                None => {}
            }
        }
        prop_assert_eq!(seen, (0..next).collect::<Vec<_>>());
    }

    /// The hypercall inbox is a bounded FIFO: accepted posts come out in
    /// order, refused ones (INSUFFICIENT_BUFFERS) never do.
    #[test]
    fn hypercall_inbox_is_a_bounded_fifo(script in prop::collection::vec(any::<bool>(), 1..100), limit in 1usize..8) {
        let hv = Hypercalls::new(limit);
        hv.add_message_port(1);
        let mut accepted = Vec::new();
        let mut taken = Vec::new();
        for (i, post) in script.into_iter().enumerate() {
            if post {
                let status = hv.post_message(1, &(i as u64).to_le_bytes());
                if status.is_success() {
                    accepted.push(i as u64);
                } else {
                    prop_assert_eq!(status, vmbus_core::hv::HvStatus::INSUFFICIENT_BUFFERS);
                }
            } else if let Some(m) = hv.take_message() {
                taken.push(u64::from_le_bytes(m.bytes().try_into().unwrap()));
            }
            prop_assert!(hv.pending_messages() <= limit);
        }
        while let Some(m) = hv.take_message() {
            taken.push(u64::from_le_bytes(m.bytes().try_into().unwrap()));
        }
        prop_assert_eq!(taken, accepted);
    }
}
