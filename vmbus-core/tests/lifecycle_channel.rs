// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The channel lifecycle against a scripted host: every path of the open
//! and close sequences, rescinds and abandons at each step, and memory
//! freed exactly when the host can no longer reach it (the tracking
//! allocator fails the test on any earlier free).

mod client_support;
mod lifecycle_support;

use client_support::*;
use lifecycle_support::*;
use vmbus_core::client::{ClientError, TeardownOutcome};
use vmbus_core::lifecycle::{LifecycleError, LifecycleState, OpenRequest, Progress};
use vmbus_core::message::{ChannelMessage, MessageType};
use vmbus_core::packet::{ring_control, PacketType};
use vmbus_core::platform::HV_PAGE_SIZE;

const FAIL: u32 = 0xC000_0001;

#[test]
fn open_success_posts_gpadl_then_open_and_builds_endpoints() {
    let mut w = World::new();
    assert_eq!(w.life.state(), LifecycleState::Idle);
    let r = w.life.open(&mut w.h.client, &request(), vec![0u8; 4096], &w.mem, &w.h.hv);
    assert_eq!(r, Ok(Progress::Waiting));
    assert_eq!(w.life.state(), LifecycleState::CreatingGpadl);
    assert_eq!(w.mem.allocs.get(), 1);
    assert!(w.life.holds_memory());
    // One GPADL over both rings' pages, in order.
    let posted = w.posted();
    let (relid, handle, _, rangecount, words) = reassemble(&posted);
    assert_eq!((relid, Some(handle), rangecount), (RELID, w.life.ring_gpadl(), 1));
    let pfns: Vec<u64> = (0..(OUT_PAGES + IN_PAGES) as u64).map(|i| FRAME_BASE + i).collect();
    assert_eq!(&words[1..], &pfns[..]);
    // Both control pages initialised before the host saw them.
    for page in [0, OUT_PAGES] {
        let bits = w.mem.read_u32(0, page * HV_PAGE_SIZE + ring_control::FEATURE_BITS);
        assert_eq!(bits, ring_control::FEATURE_PENDING_SEND_SIZE, "control page {page}");
    }
    assert!(w.life.endpoints_mut().is_none());

    // GpadlCreated: OpenChannel posted with the downstream offset, VP and user data.
    assert_eq!(w.host_sends(&gpadl_created(RELID, handle, 0)), vec![Progress::Waiting]);
    assert_eq!(w.life.state(), LifecycleState::Opening);
    let posted = w.posted();
    assert_eq!(posted.len(), 1);
    let ChannelMessage::OpenChannel(o) = posted[0].parse() else { panic!("expected OpenChannel") };
    assert_eq!((o.child_relid, o.openid, o.ringbuffer_gpadl_handle), (RELID, RELID, handle));
    assert_eq!((o.downstream_ringbuffer_pageoffset, o.target_vp), (OUT_PAGES as u32, 2));
    assert_eq!(&o.user_data[..3], &[0xAB, 0xCD, 0]);

    // OpenResult: the endpoints write into the outbound ring's pages.
    assert_eq!(w.host_sends(&open_result(RELID, RELID, 0)), vec![Progress::Opened]);
    assert_eq!(w.life.state(), LifecycleState::Open);
    assert!(w.life.was_open());
    let (sender, receiver) = w.life.endpoints_mut().unwrap();
    sender.send_inband(PacketType::DATA_INBAND, 0, 0x55, b"hello host").unwrap();
    sender.flush(&w.h.hv).unwrap();
    assert_eq!(receiver.reader_mut().data_size() as usize, (IN_PAGES - 1) * HV_PAGE_SIZE);
    let write_index = w.mem.read_u32(0, ring_control::WRITE_INDEX);
    assert!(write_index > 0, "the packet went into the outbound ring");
    let mut payload = [0u8; 10];
    w.mem.read(0, HV_PAGE_SIZE + 16, &mut payload);
    assert_eq!(&payload, b"hello host");
    assert_eq!(w.mem.read_u32(0, OUT_PAGES * HV_PAGE_SIZE + ring_control::WRITE_INDEX), 0);
    assert_eq!(w.mem.frees.get(), 0);
    assert!(!w.life.is_done());
}

#[test]
fn close_tears_down_and_frees_only_when_torn_down() {
    let mut w = World::new();
    let handle = w.open_fully();
    assert_eq!(w.life.close(&mut w.h.client, &w.mem, &w.h.hv), Ok(Progress::Waiting));
    assert_eq!(w.types(), vec![MessageType::CLOSE_CHANNEL, MessageType::GPADL_TEARDOWN]);
    assert_eq!(w.life.state(), LifecycleState::TearingDown);
    assert!(w.life.endpoints_mut().is_none(), "endpoints dropped at close");
    assert_eq!(w.mem.frees.get(), 0, "host still maps the rings");
    // A second close while tearing down changes nothing.
    let again = w.life.close(&mut w.h.client, &w.mem, &w.h.hv);
    assert_eq!(again, Err(LifecycleError::InvalidState(LifecycleState::TearingDown)));
    assert!(w.types().is_empty());
    assert_eq!(w.host_sends(&gpadl_torndown(handle)), vec![Progress::Closed]);
    assert_eq!((w.life.state(), w.mem.frees.get(), w.life.holds_memory()), (LifecycleState::Closed, 1, false));
    assert!(w.life.is_done());
    // Double close after the end.
    let again = w.life.close(&mut w.h.client, &w.mem, &w.h.hv);
    assert_eq!(again, Err(LifecycleError::InvalidState(LifecycleState::Closed)));
    assert!(w.types().is_empty());
    // An unload afterwards has nothing left to free.
    assert_eq!(w.unload(), vec![]);
    assert_eq!(w.mem.frees.get(), 1);
}

#[test]
fn gpadl_refused_frees_at_once() {
    let mut w = World::new();
    w.open();
    let handle = w.life.ring_gpadl().unwrap();
    let p = w.host_sends(&gpadl_created(RELID, handle, FAIL));
    assert_eq!(p, vec![Progress::Refused { answer: MessageType::GPADL_CREATED, status: FAIL }]);
    assert_eq!((w.life.state(), w.mem.frees.get()), (LifecycleState::Refused, 1));
    assert!(w.types().is_empty(), "no open after a refused GPADL");
    assert_eq!(w.life.ring_gpadl(), None);
}

#[test]
fn open_refused_tears_down_then_frees() {
    let mut w = World::new();
    w.open();
    let handle = w.life.ring_gpadl().unwrap();
    w.host_sends(&gpadl_created(RELID, handle, 0));
    w.types();
    let p = w.host_sends(&open_result(RELID, RELID, FAIL));
    assert_eq!(p, vec![Progress::Refused { answer: MessageType::OPEN_CHANNEL_RESULT, status: FAIL }]);
    assert_eq!(w.types(), vec![MessageType::GPADL_TEARDOWN], "no CloseChannel for a channel never open");
    assert_eq!((w.life.state(), w.mem.frees.get()), (LifecycleState::TearingDown, 0));
    assert_eq!(w.host_sends(&gpadl_torndown(handle)), vec![Progress::Closed]);
    assert_eq!((w.life.state(), w.mem.frees.get()), (LifecycleState::Refused, 1));
    assert!(!w.life.was_open());
}

/// Rescinds at `step` (0: offered, 1: creating the GPADL, 2: opening,
/// 3: open, 4: tearing down), then cleans up.
fn rescind_at(step: u32) -> World {
    let mut w = World::new();
    let mut handle = None;
    if step >= 1 {
        w.open();
        handle = w.life.ring_gpadl();
    }
    if step >= 2 {
        w.host_sends(&gpadl_created(RELID, handle.unwrap(), 0));
        w.types();
    }
    if step >= 3 {
        assert_eq!(w.host_sends(&open_result(RELID, RELID, 0)), vec![Progress::Opened]);
    }
    if step >= 4 {
        w.life.close(&mut w.h.client, &w.mem, &w.h.hv).unwrap();
        w.types();
    }
    let frees_before = w.mem.frees.get();
    assert_eq!(w.host_sends(&rescind(RELID)), vec![Progress::Rescinded], "step {step}");
    assert_eq!(w.life.state(), LifecycleState::Rescinded);
    assert!(w.life.endpoints_mut().is_none());
    assert_eq!(w.mem.frees.get(), frees_before, "nothing freed before the cleanup");
    // The cleanup is local: only RelidReleased goes out.
    assert_eq!(w.life.cleanup_rescinded(&mut w.h.client, &w.mem, &w.h.hv), Ok(Progress::Released));
    assert_eq!(w.types(), vec![MessageType::RELID_RELEASED], "step {step}");
    assert_eq!(w.life.state(), LifecycleState::Released);
    assert_eq!(w.mem.frees.get(), w.mem.allocs.get(), "step {step}: freed");
    assert!(w.h.client.channel(RELID).is_none());
    assert_eq!(w.life.was_open(), step >= 3);
    // Cleanup once only.
    let again = w.life.cleanup_rescinded(&mut w.h.client, &w.mem, &w.h.hv);
    assert_eq!(again, Err(LifecycleError::InvalidState(LifecycleState::Released)));
    w
}

#[test]
fn rescind_before_open() {
    let w = rescind_at(0);
    assert_eq!(w.mem.allocs.get(), 0);
}

#[test]
fn rescind_while_creating_the_gpadl() {
    let _ = rescind_at(1);
}

#[test]
fn rescind_while_opening() {
    let _ = rescind_at(2);
}

#[test]
fn rescind_while_open() {
    let _ = rescind_at(3);
}

#[test]
fn rescind_while_tearing_down() {
    let _ = rescind_at(4);
}

#[test]
fn late_answers_crossing_a_rescind_are_dropped() {
    // The GpadlCreated crosses the rescind: accepted by the client, ignored here.
    let mut w = World::new();
    w.open();
    let handle = w.life.ring_gpadl().unwrap();
    w.host_sends(&rescind(RELID));
    assert_eq!(w.host_sends(&gpadl_created(RELID, handle, 0)), vec![]);
    assert_eq!(w.h.client.counters().late_after_rescind, 1);
    assert_eq!(w.life.state(), LifecycleState::Rescinded);
    assert!(w.types().is_empty(), "no OpenChannel on a rescinded channel");
    assert_eq!(w.life.cleanup_rescinded(&mut w.h.client, &w.mem, &w.h.hv), Ok(Progress::Released));
}

#[test]
fn rescind_after_close_or_refusal_releases_the_relid() {
    let mut w = World::new();
    let handle = w.open_fully();
    w.life.close(&mut w.h.client, &w.mem, &w.h.hv).unwrap();
    w.types();
    w.host_sends(&gpadl_torndown(handle));
    assert_eq!(w.host_sends(&rescind(RELID)), vec![Progress::Rescinded]);
    assert_eq!(w.life.cleanup_rescinded(&mut w.h.client, &w.mem, &w.h.hv), Ok(Progress::Released));
    assert_eq!(w.types(), vec![MessageType::RELID_RELEASED]);
    assert_eq!(w.mem.frees.get(), 1);
}

/// Abandons at `step` (1: creating the GPADL, 2: opening, 3: open, 4:
/// tearing down): memory is kept, late answers are dropped, an unload frees.
fn abandon_at(step: u32) {
    let mut w = World::new();
    w.open();
    let handle = w.life.ring_gpadl().unwrap();
    if step >= 2 {
        w.host_sends(&gpadl_created(RELID, handle, 0));
        w.types();
    }
    if step >= 3 {
        w.host_sends(&open_result(RELID, RELID, 0));
    }
    if step >= 4 {
        w.life.close(&mut w.h.client, &w.mem, &w.h.hv).unwrap();
        w.types();
    }
    assert!(w.life.abandon(&mut w.h.client), "step {step}: memory kept");
    assert_eq!(w.life.state(), LifecycleState::Abandoned);
    assert!(w.life.is_done() && w.life.holds_memory() && w.life.endpoints_mut().is_none());
    assert!(w.h.client.is_abandoned(RELID));
    assert!(w.types().is_empty(), "abandon posts nothing");
    // The host answers after all: dropped by the client, ignored here, nothing freed.
    let late = match step {
        1 => Some(gpadl_created(RELID, handle, 0)),
        2 => Some(open_result(RELID, RELID, 0)),
        4 => Some(gpadl_torndown(handle)),
        _ => None,
    };
    if let Some(late) = late {
        // After a GpadlTorndown the host no longer maps the pages, yet the
        // lifecycle gave up on them: they stay kept until the unload.
        assert_eq!(w.host_sends(&late), vec![], "step {step}");
        assert_eq!(w.h.client.counters().late_after_abandon, 1, "step {step}");
        // A second copy is a violation.
        assert!(w.h.feed(&late).is_err());
    }
    assert_eq!(w.mem.frees.get(), 0, "step {step}: kept until unload");
    // Abandon again: nothing changes.
    assert!(w.life.abandon(&mut w.h.client));
    assert_eq!(w.unload(), vec![Progress::Unloaded]);
    assert_eq!((w.mem.frees.get(), w.life.state()), (1, LifecycleState::Unloaded));
}

#[test]
fn abandon_while_creating_the_gpadl() {
    abandon_at(1);
}

#[test]
fn abandon_while_opening() {
    abandon_at(2);
}

#[test]
fn abandon_while_open() {
    abandon_at(3);
}

#[test]
fn abandon_while_tearing_down() {
    abandon_at(4);
}

#[test]
fn abandon_idle_holds_nothing_and_ignores_a_later_rescind() {
    let mut w = World::new();
    assert!(!w.life.abandon(&mut w.h.client));
    assert_eq!(w.life.state(), LifecycleState::Abandoned);
    assert!(!w.h.client.is_abandoned(RELID), "nothing was pending: the client is not told");
    let r = w.life.open(&mut w.h.client, &request(), vec![0u8; 64], &w.mem, &w.h.hv);
    assert_eq!(r, Err(LifecycleError::InvalidState(LifecycleState::Abandoned)));
    assert_eq!(w.host_sends(&rescind(RELID)), vec![]);
    assert_eq!(w.mem.allocs.get(), 0);
}

#[test]
fn events_for_another_channel_are_ignored() {
    let mut w = World::new();
    w.h.offer_primary(RELID + 1);
    w.open();
    let handle = w.life.ring_gpadl().unwrap();
    // The other channel's GPADL (created by someone else) and its rescind.
    let other = w.h.client.create_gpadl(RELID + 1, vmbus_core::gpadl::GpaRangeRef::whole_pages(&[0x42]), &w.h.hv);
    let other = other.unwrap();
    w.types();
    assert_eq!(w.host_sends(&gpadl_created(RELID + 1, other, 0)), vec![]);
    assert_eq!(w.host_sends(&rescind(RELID + 1)), vec![]);
    assert_eq!(w.life.state(), LifecycleState::CreatingGpadl);
    // Our own answer still works.
    assert_eq!(w.host_sends(&gpadl_created(RELID, handle, 0)), vec![Progress::Waiting]);
    assert_eq!(w.life.state(), LifecycleState::Opening);
    assert_eq!(w.mem.frees.get(), 0);
}

#[test]
fn unexpected_events_change_nothing() {
    let mut w = World::new();
    let handle = w.open_fully();
    // Events the lifecycle does not wait for in this state.
    use vmbus_core::client::{ClientEvent, OpStatus};
    for e in [
        ClientEvent::GpadlCreated { relid: RELID, handle, status: OpStatus::Success },
        ClientEvent::OpenResult { relid: RELID, status: OpStatus::Failed(1) },
        ClientEvent::GpadlTornDown { relid: RELID, handle, status: OpStatus::Success },
        ClientEvent::GpadlTornDown { relid: RELID, handle: handle + 1, status: OpStatus::Success },
        ClientEvent::AllOffersDelivered,
    ] {
        assert_eq!(w.life.on_event(&e, &mut w.h.client, &w.mem, &w.h.hv), Progress::Unchanged, "{e:?}");
        assert_eq!(w.life.state(), LifecycleState::Open);
    }
    assert_eq!(w.mem.frees.get(), 0);
    assert!(w.types().is_empty());
}

#[test]
fn unload_frees_whatever_state() {
    for step in 1..=4 {
        let mut w = World::new();
        w.open();
        let handle = w.life.ring_gpadl().unwrap();
        if step >= 2 {
            w.host_sends(&gpadl_created(RELID, handle, 0));
        }
        if step >= 3 {
            w.host_sends(&open_result(RELID, RELID, 0));
        }
        if step >= 4 {
            w.life.close(&mut w.h.client, &w.mem, &w.h.hv).unwrap();
        }
        w.types();
        let p = w.unload();
        // A teardown in flight completes (status Unloaded) just before the unload.
        let (progress, state) = if step == 4 {
            (Progress::Closed, LifecycleState::Closed)
        } else {
            (Progress::Unloaded, LifecycleState::Unloaded)
        };
        assert_eq!(p, vec![progress], "step {step}");
        assert_eq!((w.mem.frees.get(), w.life.state()), (1, state), "step {step}");
    }
}

#[test]
fn gpadl_post_failure_frees_at_once() {
    let mut w = World::new();
    // Fail the second GPADL message (a body), so part of it reached the host.
    let mut n = 0;
    w.h.hv.set_status(move |_, _| {
        n += 1;
        if n == 2 {
            vmbus_core::hv::HvStatus::INSUFFICIENT_BUFFERS
        } else {
            vmbus_core::hv::HvStatus::SUCCESS
        }
    });
    let big = OpenRequest { out_pages: 20, in_pages: 20, target_vp: 0, user_data: &[] };
    let r = w.life.open(&mut w.h.client, &big, vec![], &w.mem, &w.h.hv);
    assert!(matches!(r, Ok(Progress::Failed(LifecycleError::Client(ClientError::Post { .. })))), "{r:?}");
    // The host got an incomplete GPADL: it cannot map it.
    w.mem.host_unmaps(0);
    assert_eq!((w.life.state(), w.mem.allocs.get(), w.mem.frees.get()), (LifecycleState::Failed, 1, 1));
}

#[test]
fn open_post_failure_keeps_the_mapped_pages_until_unload() {
    let mut w = World::new();
    w.open();
    let handle = w.life.ring_gpadl().unwrap();
    w.h.hv.set_status(|_, m| {
        if m[..4] == MessageType::OPEN_CHANNEL.0.to_le_bytes() {
            vmbus_core::hv::HvStatus::INVALID_PARAMETER
        } else {
            vmbus_core::hv::HvStatus::SUCCESS
        }
    });
    let p = w.host_sends(&gpadl_created(RELID, handle, 0));
    assert!(matches!(p[..], [Progress::Failed(LifecycleError::Client(ClientError::Post { .. }))]), "{p:?}");
    assert_eq!((w.life.state(), w.mem.frees.get()), (LifecycleState::Failed, 0));
    assert!(w.life.holds_memory());
    assert_eq!(w.unload(), vec![Progress::Unloaded]);
    assert_eq!(w.mem.frees.get(), 1);
}

#[test]
fn close_post_failure_keeps_the_pages() {
    let mut w = World::new();
    w.open_fully();
    w.h.hv.set_status(|_, _| vmbus_core::hv::HvStatus::INVALID_PARAMETER);
    let p = w.life.close(&mut w.h.client, &w.mem, &w.h.hv);
    assert!(matches!(p, Ok(Progress::Failed(LifecycleError::Client(ClientError::Post { .. })))), "{p:?}");
    assert_eq!((w.life.state(), w.mem.frees.get()), (LifecycleState::Failed, 0));
    assert!(w.life.endpoints_mut().is_none());
}

#[test]
fn allocation_failure_and_bad_requests() {
    let mut w = World::new();
    for (out_pages, in_pages) in [(1, 4), (4, 0), (usize::MAX, 2), (0x10_0000, 2)] {
        let req = OpenRequest { out_pages, in_pages, target_vp: 0, user_data: &[] };
        let r = w.life.open(&mut w.h.client, &req, vec![], &w.mem, &w.h.hv);
        assert_eq!(r, Err(LifecycleError::BadRingPages { out_pages, in_pages }));
    }
    let long = [0u8; 121];
    let req = OpenRequest { out_pages: 2, in_pages: 2, target_vp: 0, user_data: &long };
    let r = w.life.open(&mut w.h.client, &req, vec![], &w.mem, &w.h.hv);
    assert_eq!(r, Err(LifecycleError::UserDataTooLong(121)));
    // Unknown relid.
    let mut other = Life::new(99);
    let r = other.open(&mut w.h.client, &request(), vec![], &w.mem, &w.h.hv);
    assert_eq!(r, Err(LifecycleError::Client(ClientError::NoSuchChannel(99))));
    assert_eq!(w.life.state(), LifecycleState::Idle);
    assert_eq!(w.mem.allocs.get(), 0);
    w.mem.fail_alloc.set(true);
    let r = w.life.open(&mut w.h.client, &request(), vec![], &w.mem, &w.h.hv);
    assert_eq!(r, Ok(Progress::Failed(LifecycleError::Alloc)));
    assert_eq!(w.life.state(), LifecycleState::Failed);
    assert!(w.types().is_empty());
}

#[test]
fn a_foreign_allocator_never_gets_the_region() {
    let mut w = World::new();
    let handle = w.open_fully();
    w.life.close(&mut w.h.client, &w.mem, &w.h.hv).unwrap();
    w.types();
    let stranger = TrackingMemory::default();
    w.mem.host_unmaps(0);
    w.h.feed(&gpadl_torndown(handle)).unwrap();
    let events = w.h.take_events();
    let p = w.life.on_event(&events[0], &mut w.h.client, &stranger, &w.h.hv);
    assert_eq!(p, Progress::Failed(LifecycleError::ForeignAllocator));
    assert_eq!((w.mem.frees.get(), stranger.frees.get()), (0, 0));
    assert!(w.life.holds_memory());
    // The right allocator frees it on unload.
    assert_eq!(w.unload(), vec![Progress::Unloaded]);
    assert_eq!(w.mem.frees.get(), 1);
}

#[test]
fn cleanup_refused_unless_rescinded_and_teardown_of_other_gpadls_is_the_owners_job() {
    let mut w = World::new();
    let r = w.life.cleanup_rescinded(&mut w.h.client, &w.mem, &w.h.hv);
    assert_eq!(r, Err(LifecycleError::InvalidState(LifecycleState::Idle)));
    w.open_fully();
    // Someone else's GPADL on the same channel.
    let other = w.h.gpadl_ready(RELID, 1);
    w.types();
    w.host_sends(&rescind(RELID));
    let p = w.life.cleanup_rescinded(&mut w.h.client, &w.mem, &w.h.hv);
    assert_eq!(p, Ok(Progress::Failed(LifecycleError::Client(ClientError::NotReleasable(RELID)))));
    assert_eq!(w.mem.frees.get(), 1, "our pages are free: the host let go at the rescind");
    // Its owner tears it down; the glue releases the relid itself.
    assert_eq!(w.h.client.teardown_gpadl(RELID, other, &w.h.hv), Ok(TeardownOutcome::CompletedLocally));
    w.h.client.release_relid(RELID, &w.h.hv).unwrap();
}
