// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Client channel management against a scripted host: offers, GPADLs,
//! open/close, modify, rescind at every step, unload.

mod client_support;
use client_support::*;
use vmbus_core::client::{
    ChannelState, ClientError, ClientEvent, ConnectionState, GpadlState, ModifyOutcome, OpStatus, OpenParams,
    RejectKind, TeardownOutcome, MAX_GPADLS_PER_CHANNEL,
};
use vmbus_core::gpadl::{GpaRangeRef, GpadlError, FIRST_GPADL_HANDLE};
use vmbus_core::message::{ChannelMessage, MessageType};
use vmbus_core::version::Version;

#[test]
fn offers_and_sub_channels() {
    let mut h = Harness::connected();
    h.offer_primary(1);
    h.feed(&offer(2, SCSI, instance(2), 0)).unwrap();
    // Sub-channels of relid 1 (same type + instance, index > 0).
    h.feed(&offer(3, NET, instance(1), 1)).unwrap();
    h.feed(&offer(4, NET, instance(1), 2)).unwrap();
    h.feed(&all_offers()).unwrap();
    let ev = h.take_events();
    assert_eq!(ev.len(), 4);
    match ev[1] {
        ClientEvent::Offer(o) => {
            assert_eq!((o.relid, o.primary_relid, o.offer.if_type), (3, Some(1), NET));
        }
        ref e => panic!("{e:?}"),
    }
    assert!(matches!(ev[2], ClientEvent::Offer(o) if o.primary_relid == Some(1) && o.offer.sub_channel_index == 2));
    assert_eq!(ev[3], ClientEvent::AllOffersDelivered);
    assert!(h.client.all_offers_delivered());
    let mut subs: Vec<u32> = h.client.sub_channels(1).collect();
    subs.sort();
    assert_eq!(subs, [3, 4]);
    let c = h.client.channel(3).unwrap();
    assert_eq!(c.connection_id, 0x2003);
    assert_eq!(c.monitor_id, Some(3));
    assert_eq!(c.state, ChannelState::Closed);
    assert_eq!(h.client.counters().offers, 4);
    assert_eq!(h.client.counters().sub_channel_offers, 2);
    // Hot-add after AllOffersDelivered is fine; a second AllOffersDelivered is not.
    h.feed(&offer(9, SCSI, instance(9), 0)).unwrap();
    assert!(matches!(h.feed(&all_offers()), Err(ClientError::UnexpectedMessage { .. })));
}

#[test]
fn bad_offers_are_rejected_and_counted() {
    let mut h = Harness::connected();
    h.offer_primary(1);
    let cases: Vec<(Vec<u8>, RejectKind)> = vec![
        (offer(0, NET, instance(50), 0), RejectKind::BadRelid),
        (offer(2048, NET, instance(51), 0), RejectKind::BadRelid),
        (offer(u32::MAX, NET, instance(52), 0), RejectKind::BadRelid),
        (offer(1, SCSI, instance(53), 0), RejectKind::DuplicateOffer),
        (offer(5, NET, instance(1), 0), RejectKind::DuplicatePrimary),
        (offer(6, NET, instance(77), 1), RejectKind::OrphanSubChannel),
        (offer(7, SCSI, instance(1), 1), RejectKind::OrphanSubChannel),
    ];
    for (i, (bytes, kind)) in cases.iter().enumerate() {
        let e = h.feed(bytes).unwrap_err();
        assert_eq!(e.reject_kind(), Some(*kind), "case {i}: {e}");
        assert!(h.client.counters().rejected(*kind) > 0);
    }
    // Duplicate sub-channel index.
    h.feed(&offer(8, NET, instance(1), 1)).unwrap();
    assert_eq!(h.feed(&offer(9, NET, instance(1), 1)), Err(ClientError::OrphanSubChannel(9)));
    // Monitor id outside the page.
    let mut o = offer_struct(10, SCSI, instance(10), 0);
    o.monitor_id = 128;
    let b = vmbus_core::message::OutgoingMessage::new(&ChannelMessage::OfferChannel(o)).unwrap();
    assert_eq!(h.feed(b.as_bytes()), Err(ClientError::BadMonitorId { relid: 10, monitor_id: 128 }));
    // ...but ignored when no monitor is allocated.
    o.monitor_allocated = 0;
    let b = vmbus_core::message::OutgoingMessage::new(&ChannelMessage::OfferChannel(o)).unwrap();
    h.feed(b.as_bytes()).unwrap();
    assert_eq!(h.client.channel(10).unwrap().monitor_id, None);
    // Nothing rejected made it into the table.
    let mut relids: Vec<u32> = h.client.channels().map(|c| c.relid).collect();
    relids.sort();
    assert_eq!(relids, [1, 8, 10]);
    assert_eq!(h.client.counters().offers, 3);
}

#[test]
fn table_full() {
    let mut c = config();
    c.max_channels = 2;
    let mut h = Harness::with_config(c);
    h.connect_at(Version::WIN10_V5_3);
    h.client.request_offers(&h.hv).unwrap();
    h.offer_primary(1);
    h.offer_primary(2);
    assert_eq!(h.feed(&offer(3, NET, instance(3), 0)), Err(ClientError::TableFull(3)));
    assert_eq!(h.client.counters().rejected(RejectKind::TableFull), 1);
}

#[test]
fn offers_before_request_are_unexpected() {
    let mut h = Harness::new();
    h.connect_at(Version::WIN10_V5_3);
    assert!(matches!(h.feed(&offer(1, NET, instance(1), 0)), Err(ClientError::UnexpectedMessage { .. })));
    assert!(matches!(h.feed(&all_offers()), Err(ClientError::UnexpectedMessage { .. })));
}

#[test]
fn gpadl_message_counts_and_pfns() {
    let mut h = Harness::connected();
    h.offer_primary(5);
    let cases = [(1usize, 1usize), (26, 1), (27, 2), (54, 2), (55, 3), (300, 11)];
    for (expected_handle, (pages, count)) in (FIRST_GPADL_HANDLE..).zip(cases) {
        let pfns: Vec<u64> = (0..pages as u64).map(|i| 0x10_0000 + i * 3).collect();
        let (handle, posted) = h.create_gpadl(5, &pfns);
        assert_eq!(handle, expected_handle);
        assert_eq!(posted.len(), count, "{pages} pages");
        assert!(posted.iter().all(|p| p.conn == HOST_CONN_ID && p.bytes.len() <= 240));
        let (relid, gh, buflen, rangecount, words) = reassemble(&posted);
        assert_eq!((relid, gh, rangecount), (5, handle, 1));
        assert_eq!(buflen as usize, 8 + 8 * pages);
        assert_eq!(words[0], pages as u64 * 4096);
        assert_eq!(&words[1..], &pfns[..]);
        assert!(h.client.gpadls(5).any(|g| g == (handle, GpadlState::Creating)));
        h.feed(&gpadl_created(5, handle, 0)).unwrap();
        assert_eq!(h.take_events(), vec![ClientEvent::GpadlCreated { relid: 5, handle, status: OpStatus::Success }]);
        // Teardown.
        assert_eq!(h.client.teardown_gpadl(5, handle, &h.hv), Ok(TeardownOutcome::Pending));
        let p = h.hv.take();
        match p[0].parse() {
            ChannelMessage::GpadlTeardown(t) => assert_eq!((t.child_relid, t.gpadl), (5, handle)),
            other => panic!("{other:?}"),
        }
        h.feed(&gpadl_torndown(handle)).unwrap();
        assert_eq!(h.take_events(), vec![ClientEvent::GpadlTornDown { relid: 5, handle, status: OpStatus::Success }]);
        assert_eq!(h.client.gpadls(5).count(), 0);
    }
}

#[test]
fn gpadl_errors() {
    let mut h = Harness::connected();
    h.offer_primary(5);
    let pfns = [1u64, 2];
    // Local errors.
    assert_eq!(h.client.create_gpadl(6, GpaRangeRef::whole_pages(&pfns), &h.hv), Err(ClientError::NoSuchChannel(6)));
    assert_eq!(
        h.client.create_gpadl(5, GpaRangeRef { byte_count: 1, byte_offset: 0, pfns: &pfns }, &h.hv),
        Err(ClientError::Gpadl(GpadlError::PageCountMismatch { pages_spanned: 1, pfns: 2 }))
    );
    assert_eq!(
        h.client.create_gpadl(5, GpaRangeRef::whole_pages(&[]), &h.hv),
        Err(ClientError::Gpadl(GpadlError::Empty))
    );
    assert!(h.hv.take().is_empty(), "nothing posted for a bad range");
    // Failure status from the host frees the handle.
    let (handle, _) = h.create_gpadl(5, &pfns);
    h.feed(&gpadl_created(5, handle, 0xC000_0001)).unwrap();
    assert_eq!(
        h.take_events(),
        vec![ClientEvent::GpadlCreated { relid: 5, handle, status: OpStatus::Failed(0xC000_0001) }]
    );
    assert_eq!(h.client.gpadls(5).count(), 0);
    // Host answers for handles not pending.
    let (handle, _) = h.create_gpadl(5, &pfns);
    assert_eq!(h.feed(&gpadl_created(5, handle + 1, 0)).unwrap_err().reject_kind(), Some(RejectKind::UnknownGpadl));
    assert_eq!(h.feed(&gpadl_created(9, handle, 0)).unwrap_err().reject_kind(), Some(RejectKind::UnknownRelid));
    assert_eq!(h.feed(&gpadl_torndown(handle)).unwrap_err().reject_kind(), Some(RejectKind::UnknownGpadl));
    assert_eq!(h.feed(&gpadl_torndown(0)).unwrap_err().reject_kind(), Some(RejectKind::UnknownGpadl));
    h.feed(&gpadl_created(5, handle, 0)).unwrap();
    // A second GpadlCreated for the same handle is a response with no request.
    assert_eq!(h.feed(&gpadl_created(5, handle, 0)).unwrap_err().reject_kind(), Some(RejectKind::UnknownGpadl));
    assert_eq!(h.client.counters().rejected(RejectKind::UnknownGpadl), 4);
    // Teardown of unknown / creating handles.
    assert_eq!(h.client.teardown_gpadl(5, 77, &h.hv), Err(ClientError::NoSuchGpadl { relid: 5, handle: 77 }));
    let (creating, _) = h.create_gpadl(5, &pfns);
    assert_eq!(
        h.client.teardown_gpadl(5, creating, &h.hv),
        Err(ClientError::NoSuchGpadl { relid: 5, handle: creating })
    );
    // Per-channel limit.
    let live = h.client.gpadls(5).count();
    for _ in live..MAX_GPADLS_PER_CHANNEL {
        h.create_gpadl(5, &pfns);
    }
    assert_eq!(h.client.create_gpadl(5, GpaRangeRef::whole_pages(&pfns), &h.hv), Err(ClientError::TooManyGpadls(5)));
    // A post failure mid-way drops the handle.
    let mut h = Harness::connected();
    h.offer_primary(5);
    let calls = std::rc::Rc::new(std::cell::Cell::new(0));
    let c2 = calls.clone();
    h.hv.set_status(move |_, _| {
        c2.set(c2.get() + 1);
        if c2.get() == 2 {
            vmbus_core::hv::HvStatus::INSUFFICIENT_BUFFERS
        } else {
            vmbus_core::hv::HvStatus::SUCCESS
        }
    });
    let pfns: Vec<u64> = (0..60).collect();
    let e = h.client.create_gpadl(5, GpaRangeRef::whole_pages(&pfns), &h.hv).unwrap_err();
    assert!(matches!(e, ClientError::Post { msgtype: MessageType::GPADL_BODY, .. }));
    assert_eq!(h.client.gpadls(5).count(), 0);
}

#[test]
fn multi_range_gpadl() {
    let mut h = Harness::connected();
    h.offer_primary(5);
    let a: Vec<u64> = (0..20).collect();
    let b: Vec<u64> = (100..130).collect();
    let ranges = [GpaRangeRef::whole_pages(&a), GpaRangeRef::whole_pages(&b)];
    let handle = h.client.create_gpadl_multi(5, &ranges, &h.hv).unwrap();
    let posted = h.hv.take();
    let (_, gh, buflen, rangecount, words) = reassemble(&posted);
    assert_eq!((gh, rangecount, buflen as usize), (handle, 2, 8 * (52)));
    assert_eq!(posted.len(), 2);
    assert_eq!(words[21], 30 * 4096);
    assert_eq!(&words[22..], &b[..]);
}

#[test]
fn open_success_failure_close() {
    let mut h = Harness::connected();
    h.offer_primary(7);
    let ring = h.gpadl_ready(7, 16);
    // Open needs a created ring GPADL of this channel.
    assert_eq!(
        h.client.open_channel(7, &open_params(ring + 100), &h.hv),
        Err(ClientError::NoSuchGpadl { relid: 7, handle: ring + 100 })
    );
    let long = [0u8; 121];
    let p = OpenParams { user_data: &long, ..open_params(ring) };
    assert_eq!(h.client.open_channel(7, &p, &h.hv), Err(ClientError::UserDataTooLong(121)));
    let ud = [0xAB; 16];
    let p = OpenParams { user_data: &ud, ..open_params(ring) };
    h.client.open_channel(7, &p, &h.hv).unwrap();
    let posted = h.hv.take();
    match posted[0].parse() {
        ChannelMessage::OpenChannel(o) => {
            assert_eq!((o.child_relid, o.openid, o.ringbuffer_gpadl_handle), (7, 7, ring));
            assert_eq!((o.target_vp, o.downstream_ringbuffer_pageoffset), (1, 4));
            assert_eq!(&o.user_data[..16], &ud);
            assert!(o.user_data[16..].iter().all(|&b| b == 0));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.client.channel(7).unwrap().state, ChannelState::Opening { ring_gpadl: ring });
    assert_eq!(h.client.open_channel(7, &p, &h.hv), Err(ClientError::InvalidChannelState(7)));
    assert_eq!(h.client.teardown_gpadl(7, ring, &h.hv), Err(ClientError::GpadlInUse(ring)));
    assert_eq!(h.client.close_channel(7, &h.hv), Err(ClientError::InvalidChannelState(7)));
    // Wrong openid is rejected, state unchanged.
    assert_eq!(h.feed(&open_result(7, 8, 0)), Err(ClientError::BadOpenId { relid: 7, openid: 8 }));
    assert_eq!(h.client.channel(7).unwrap().state, ChannelState::Opening { ring_gpadl: ring });
    // Failure: back to closed.
    h.feed(&open_result(7, 7, 5)).unwrap();
    assert_eq!(h.take_events(), vec![ClientEvent::OpenResult { relid: 7, status: OpStatus::Failed(5) }]);
    assert_eq!(h.client.channel(7).unwrap().state, ChannelState::Closed);
    assert!(matches!(h.feed(&open_result(7, 7, 0)), Err(ClientError::NoRequestOutstanding { .. })));
    // Retry succeeds.
    h.client.open_channel(7, &p, &h.hv).unwrap();
    h.hv.take();
    h.feed(&open_result(7, 7, 0)).unwrap();
    assert_eq!(h.take_events(), vec![ClientEvent::OpenResult { relid: 7, status: OpStatus::Success }]);
    assert_eq!(h.client.channel(7).unwrap().state, ChannelState::Open { ring_gpadl: ring });
    // Close: CloseChannel, no reply; then the ring can go.
    h.client.close_channel(7, &h.hv).unwrap();
    let posted = h.hv.take();
    assert!(matches!(posted[0].parse(), ChannelMessage::CloseChannel(c) if c.child_relid == 7));
    assert_eq!(h.client.channel(7).unwrap().state, ChannelState::Closed);
    assert_eq!(h.client.close_channel(7, &h.hv), Err(ClientError::InvalidChannelState(7)));
    assert_eq!(h.client.teardown_gpadl(7, ring, &h.hv), Ok(TeardownOutcome::Pending));
}

#[test]
fn modify_channel_by_version() {
    // 5.3: answered.
    let mut h = Harness::connected();
    h.open(3);
    assert_eq!(h.client.modify_channel(3, 2, &h.hv), Ok(ModifyOutcome::AwaitResponse));
    let p = h.hv.take();
    assert!(matches!(p[0].parse(), ChannelMessage::ModifyChannel(m) if m.child_relid == 3 && m.target_vp == 2));
    assert_eq!(h.client.modify_channel(3, 1, &h.hv), Err(ClientError::Busy(3)));
    // Closing must wait for the response, so its completion is never lost.
    assert_eq!(h.client.close_channel(3, &h.hv), Err(ClientError::Busy(3)));
    assert!(h.hv.take().is_empty());
    h.feed(&modify_response(3, 0)).unwrap();
    assert_eq!(h.take_events(), vec![ClientEvent::ModifyChannelResponse { relid: 3, status: OpStatus::Success }]);
    assert!(matches!(h.feed(&modify_response(3, 0)), Err(ClientError::NoRequestOutstanding { .. })));
    // 4.1 .. 5.2: fire and forget; a response is unexpected.
    for v in [Version::WIN10_V4_1, Version::WIN10_V5, Version::WIN10_V5_2] {
        let mut h = Harness::connected_at(v);
        h.open(3);
        assert_eq!(h.client.modify_channel(3, 2, &h.hv), Ok(ModifyOutcome::Done));
        assert_eq!(h.hv.take().len(), 1);
        assert_eq!(h.client.modify_channel(3, 2, &h.hv), Ok(ModifyOutcome::Done));
        assert!(matches!(h.feed(&modify_response(3, 0)), Err(ClientError::NoRequestOutstanding { .. })));
    }
    // Older: not supported.
    for v in [Version::WIN10, Version::WIN8_1, Version::WIN8] {
        let mut h = Harness::connected_at(v);
        h.open(3);
        assert_eq!(
            h.client.modify_channel(3, 2, &h.hv),
            Err(ClientError::NotSupported { msgtype: MessageType::MODIFY_CHANNEL, version: v })
        );
        assert!(h.hv.take().is_empty());
    }
    // Only open channels.
    let mut h = Harness::connected();
    h.offer_primary(3);
    assert_eq!(h.client.modify_channel(3, 2, &h.hv), Err(ClientError::InvalidChannelState(3)));
}

/// Rescind before open: the channel is marked, nothing is pending; it can be
/// released at once and the relid reused afterwards (not before).
#[test]
fn rescind_before_open_and_relid_reuse() {
    let mut h = Harness::connected();
    h.offer_primary(4);
    h.feed(&rescind(4)).unwrap();
    assert_eq!(h.take_events(), vec![ClientEvent::Rescinded { relid: 4 }]);
    assert!(h.client.channel(4).unwrap().rescinded);
    assert_eq!(h.feed(&rescind(4)), Err(ClientError::DuplicateRescind(4)));
    assert_eq!(h.feed(&offer(4, NET, instance(4), 0)), Err(ClientError::DuplicateOffer(4)));
    let pfns = [1u64];
    assert_eq!(h.client.create_gpadl(4, GpaRangeRef::whole_pages(&pfns), &h.hv), Err(ClientError::ChannelRescinded(4)));
    assert_eq!(h.client.open_channel(4, &open_params(1), &h.hv), Err(ClientError::ChannelRescinded(4)));
    h.client.release_relid(4, &h.hv).unwrap();
    let p = h.hv.take();
    assert!(matches!(p[0].parse(), ChannelMessage::RelidReleased(r) if r.child_relid == 4));
    assert!(h.client.channel(4).is_none());
    assert_eq!(h.client.release_relid(4, &h.hv), Err(ClientError::NoSuchChannel(4)));
    // Now the host may reuse relid 4 (even for the same device).
    h.offer_primary(4);
    assert_eq!(h.client.counters().rescinds, 1);
    // Release of a live channel is refused.
    assert_eq!(h.client.release_relid(4, &h.hv), Err(ClientError::InvalidChannelState(4)));
    assert_eq!(h.feed(&rescind(99)).unwrap_err().reject_kind(), Some(RejectKind::UnknownRelid));
    assert_eq!(h.feed(&rescind(0)).unwrap_err().reject_kind(), Some(RejectKind::BadRelid));
}

/// Rescind while the ring GPADL is being created: the create completes as Rescinded.
#[test]
fn rescind_mid_gpadl_create() {
    let mut h = Harness::connected();
    h.offer_primary(4);
    let (handle, _) = h.create_gpadl(4, &[1, 2, 3]);
    h.feed(&rescind(4)).unwrap();
    assert_eq!(
        h.take_events(),
        vec![
            ClientEvent::Rescinded { relid: 4 },
            ClientEvent::GpadlCreated { relid: 4, handle, status: OpStatus::Rescinded },
        ]
    );
    assert_eq!(h.client.gpadls(4).count(), 0);
    // One late GpadlCreated (it crossed the rescind) is dropped; a second is refused.
    assert_eq!(h.feed(&gpadl_created(4, handle, 0)), Ok(()));
    assert!(h.take_events().is_empty());
    assert_eq!(h.client.counters().late_after_rescind, 1);
    assert_eq!(h.feed(&gpadl_created(4, handle, 0)).unwrap_err().reject_kind(), Some(RejectKind::UnknownGpadl));
    h.client.release_relid(4, &h.hv).unwrap();
    assert_eq!(h.client.counters().cancelled_operations, 1);
}

/// Rescind after the GPADL exists but before open: teardown completes locally.
#[test]
fn rescind_with_gpadl_outstanding() {
    let mut h = Harness::connected();
    h.offer_primary(4);
    let ring = h.gpadl_ready(4, 4);
    let other = h.gpadl_ready(4, 2);
    assert_eq!(h.client.teardown_gpadl(4, other, &h.hv), Ok(TeardownOutcome::Pending));
    h.hv.take();
    h.feed(&rescind(4)).unwrap();
    assert_eq!(
        h.take_events(),
        vec![
            ClientEvent::Rescinded { relid: 4 },
            ClientEvent::GpadlTornDown { relid: 4, handle: other, status: OpStatus::Rescinded },
        ]
    );
    assert_eq!(h.client.release_relid(4, &h.hv), Err(ClientError::NotReleasable(4)));
    assert_eq!(h.client.teardown_gpadl(4, ring, &h.hv), Ok(TeardownOutcome::CompletedLocally));
    assert!(h.hv.take().is_empty(), "no teardown message for a rescinded channel");
    h.client.release_relid(4, &h.hv).unwrap();
}

/// Rescind while waiting for OpenResult: the open completes as Rescinded.
#[test]
fn rescind_mid_open() {
    let mut h = Harness::connected();
    h.offer_primary(4);
    let ring = h.gpadl_ready(4, 4);
    h.client.open_channel(4, &open_params(ring), &h.hv).unwrap();
    h.hv.take();
    h.feed(&rescind(4)).unwrap();
    assert_eq!(
        h.take_events(),
        vec![ClientEvent::Rescinded { relid: 4 }, ClientEvent::OpenResult { relid: 4, status: OpStatus::Rescinded }]
    );
    assert_eq!(h.client.channel(4).unwrap().state, ChannelState::Closed);
    // One late OpenResult (it crossed the rescind) is dropped; a second is refused.
    assert_eq!(h.feed(&open_result(4, 4, 0)), Ok(()));
    assert!(h.take_events().is_empty());
    assert_eq!(h.client.channel(4).unwrap().state, ChannelState::Closed);
    assert!(matches!(h.feed(&open_result(4, 4, 0)), Err(ClientError::NoRequestOutstanding { .. })));
    assert_eq!(h.client.teardown_gpadl(4, ring, &h.hv), Ok(TeardownOutcome::CompletedLocally));
    h.client.release_relid(4, &h.hv).unwrap();
}

/// Rescind while open with a modify pending: close is local, then teardown, then release.
#[test]
fn rescind_while_open() {
    let mut h = Harness::connected();
    let ring = h.open(4);
    let buf = h.gpadl_ready(4, 30);
    h.client.modify_channel(4, 3, &h.hv).unwrap();
    h.hv.take();
    h.feed(&rescind(4)).unwrap();
    assert_eq!(
        h.take_events(),
        vec![
            ClientEvent::Rescinded { relid: 4 },
            ClientEvent::ModifyChannelResponse { relid: 4, status: OpStatus::Rescinded }
        ]
    );
    assert_eq!(h.client.channel(4).unwrap().state, ChannelState::Open { ring_gpadl: ring });
    assert_eq!(h.client.release_relid(4, &h.hv), Err(ClientError::NotReleasable(4)));
    assert_eq!(h.client.modify_channel(4, 1, &h.hv), Err(ClientError::ChannelRescinded(4)));
    assert_eq!(h.client.teardown_gpadl(4, ring, &h.hv), Err(ClientError::GpadlInUse(ring)));
    h.client.close_channel(4, &h.hv).unwrap();
    assert_eq!(h.client.teardown_gpadl(4, ring, &h.hv), Ok(TeardownOutcome::CompletedLocally));
    assert_eq!(h.client.teardown_gpadl(4, buf, &h.hv), Ok(TeardownOutcome::CompletedLocally));
    assert!(h.hv.take().is_empty(), "close and teardown of a rescinded channel post nothing");
    h.client.release_relid(4, &h.hv).unwrap();
    assert_eq!(h.hv.take().len(), 1);
}

/// A rescinded sub-channel no longer blocks a new sub-channel with its index.
#[test]
fn rescind_sub_channel() {
    let mut h = Harness::connected();
    h.offer_primary(1);
    h.feed(&offer(2, NET, instance(1), 1)).unwrap();
    h.feed(&rescind(2)).unwrap();
    assert_eq!(h.client.sub_channels(1).count(), 0);
    h.feed(&offer(3, NET, instance(1), 1)).unwrap();
    assert_eq!(h.client.sub_channels(1).collect::<Vec<_>>(), [3]);
}

#[test]
fn unload() {
    // Not before 3.0.
    let mut h = Harness::connected_at(Version::WIN8);
    assert_eq!(
        h.client.unload(&h.hv),
        Err(ClientError::NotSupported { msgtype: MessageType::UNLOAD, version: Version::WIN8 })
    );
    let mut h = Harness::connected_at(Version::WIN8_1);
    // A spurious response is tolerated and counted.
    h.feed(&unload_response()).unwrap();
    assert_eq!(h.client.counters().spurious_unload_responses, 1);
    assert!(h.take_events().is_empty());
    let ring = h.open(2);
    h.offer_primary(3);
    let (pending, _) = h.create_gpadl(3, &[9]);
    h.client.unload(&h.hv).unwrap();
    assert_eq!(h.hv.take()[0].msgtype(), MessageType::UNLOAD);
    assert_eq!(h.client.state(), ConnectionState::Unloading);
    assert_eq!(h.client.request_offers(&h.hv), Err(ClientError::NotConnected));
    h.feed(&unload_response()).unwrap();
    assert_eq!(
        h.take_events(),
        vec![
            ClientEvent::GpadlCreated { relid: 3, handle: pending, status: OpStatus::Unloaded },
            ClientEvent::UnloadComplete
        ]
    );
    let _ = ring;
    assert_eq!(h.client.state(), ConnectionState::Unloaded);
    assert_eq!(h.client.channels().count(), 0);
    h.feed(&unload_response()).unwrap();
    assert_eq!(h.client.counters().spurious_unload_responses, 2);
    // Reconnect.
    h.connect_at(Version::WIN10_V5_3);
}

#[test]
fn post_failures_leave_state_unchanged() {
    let mut h = Harness::connected();
    let ring = h.open(2);
    h.hv.set_status(|_, _| vmbus_core::hv::HvStatus::INSUFFICIENT_BUFFERS);
    assert!(matches!(h.client.close_channel(2, &h.hv), Err(ClientError::Post { .. })));
    assert_eq!(h.client.channel(2).unwrap().state, ChannelState::Open { ring_gpadl: ring });
    assert!(matches!(h.client.modify_channel(2, 1, &h.hv), Err(ClientError::Post { .. })));
    assert!(!h.client.channel(2).unwrap().modify_pending);
    assert!(matches!(h.client.unload(&h.hv), Err(ClientError::Post { .. })));
    assert_eq!(h.client.state(), ConnectionState::Connected);
    assert_eq!(h.client.counters().post_failures, 3);
}
