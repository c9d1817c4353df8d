// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Host server: open/close, ModifyChannel by version, Unload and re-contact,
//! fault hooks, counters and queue bounds.
#![cfg(feature = "host")]

#[path = "host_support.rs"]
mod support;

use support::*;
use vmbus_core::host::{ChannelState, HostApiError, HostError, ReplyKinds, Server, ServerEvent, STATUS_UNSUCCESSFUL};
use vmbus_core::message::{ChannelMessage, MessageType, OpenResult};
use vmbus_core::version::Version;

fn open_result(s: &mut Server) -> OpenResult {
    let out = drain(s);
    assert_eq!(out.len(), 1, "{out:?}");
    match parse(&out[0]) {
        ChannelMessage::OpenResult(r) => r,
        other => panic!("{other:?}"),
    }
}

/// Connected server with a channel that has an 8-page ring GPADL 0x10.
fn ready() -> (Server, u32) {
    let mut s = server_with(|c| c.vp_count = 4);
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    create_gpadl(&mut s, r, 0x10, 8);
    (s, r)
}

#[test]
fn open_request_then_complete() {
    let (mut s, r) = ready();
    post(&mut s, &open_msg(r, 0xABC, 0x10, 3, 2)).unwrap();
    assert!(drain(&mut s).is_empty(), "no result until the device answers");
    let ev = events(&mut s);
    match ev[..] {
        [ServerEvent::OpenRequest { relid, openid, gpadl, downstream_offset, target_vp, user_data }] => {
            assert_eq!((relid, openid, gpadl, downstream_offset, target_vp), (r, 0xABC, 0x10, 3, 2));
            assert_eq!((user_data[0], user_data[119]), (0x5A, 0x7E));
        }
        _ => panic!("{ev:?}"),
    }
    assert!(matches!(s.channel(r).unwrap().state(), ChannelState::Opening(p) if p.openid == 0xABC));
    // A second open while pending is refused.
    assert_eq!(post(&mut s, &open_msg(r, 1, 0x10, 3, 2)), Err(HostError::OpenPending(r)));
    assert_eq!(open_result(&mut s).status, STATUS_UNSUCCESSFUL);
    s.complete_open(r, 0).unwrap();
    let res = open_result(&mut s);
    assert_eq!((res.child_relid, res.openid, res.status), (r, 0xABC, 0));
    assert_eq!(events(&mut s), vec![ServerEvent::Opened { relid: r }]);
    assert!(s.channel(r).unwrap().is_open());
    assert_eq!(s.complete_open(r, 0), Err(HostApiError::NoOpenPending(r)));
    assert_eq!(post(&mut s, &open_msg(r, 1, 0x10, 3, 2)), Err(HostError::AlreadyOpen(r)));
    assert_eq!(open_result(&mut s).status, STATUS_UNSUCCESSFUL);
    assert!(s.channel(r).unwrap().is_open(), "refused duplicate open leaves the channel open");
}

#[test]
fn device_can_refuse_the_open() {
    let (mut s, r) = ready();
    post(&mut s, &open_msg(r, 7, 0x10, 4, 0)).unwrap();
    events(&mut s);
    s.complete_open(r, 0xC000_0022).unwrap();
    assert_eq!(open_result(&mut s).status, 0xC000_0022);
    assert_eq!(events(&mut s), vec![ServerEvent::Closed { relid: r }]);
    assert_eq!(s.channel(r).unwrap().state(), ChannelState::Closed);
    // The guest may try again.
    post(&mut s, &open_msg(r, 8, 0x10, 4, 0)).unwrap();
    s.complete_open(r, 0).unwrap();
    assert_eq!(open_result(&mut s).status, 0);
}

#[test]
fn auto_accept_answers_at_once() {
    let (mut s, r) = ready();
    s.set_auto_accept_open(true);
    post(&mut s, &open_msg(r, 9, 0x10, 4, 1)).unwrap();
    assert_eq!(open_result(&mut s).status, 0);
    let ev = events(&mut s);
    assert_eq!(ev.len(), 2);
    assert!(matches!(ev[0], ServerEvent::OpenRequest { relid, .. } if relid == r));
    assert_eq!(ev[1], ServerEvent::Opened { relid: r });
}

#[test]
fn every_open_refusal_reason() {
    let (mut s, r) = ready();
    let other = offer(&mut s, 2);
    drain(&mut s);
    create_gpadl(&mut s, other, 0x20, 8);
    // Unaligned GPADL on r.
    post_raw(&mut s, &gpadl_messages_range(r, 0x30, 16, 8 * 4096 - 16, &[1, 2, 3, 4, 5, 6, 7, 8], 1)[0]).unwrap();
    drain(&mut s);
    events(&mut s);
    let cases: Vec<(ChannelMessage<'static>, HostError)> = vec![
        (open_msg(99, 1, 0x10, 4, 0), HostError::UnknownRelid(99)),
        (open_msg(r, 1, 0x99, 4, 0), HostError::UnknownGpadl(0x99)),
        (open_msg(r, 1, 0x20, 4, 0), HostError::GpadlWrongChannel { handle: 0x20, relid: r }),
        (open_msg(r, 1, 0x30, 4, 0), HostError::RingNotPageAligned(0x30)),
        (open_msg(r, 1, 0x10, 0, 0), HostError::BadRingOffset { relid: r, offset: 0, pages: 8 }),
        (open_msg(r, 1, 0x10, 1, 0), HostError::BadRingOffset { relid: r, offset: 1, pages: 8 }),
        (open_msg(r, 1, 0x10, 7, 0), HostError::BadRingOffset { relid: r, offset: 7, pages: 8 }),
        (open_msg(r, 1, 0x10, 8, 0), HostError::BadRingOffset { relid: r, offset: 8, pages: 8 }),
        (open_msg(r, 1, 0x10, u32::MAX, 0), HostError::BadRingOffset { relid: r, offset: u32::MAX, pages: 8 }),
        (open_msg(r, 1, 0x10, 4, 4), HostError::BadTargetVp(4)),
    ];
    for (m, e) in cases {
        assert_eq!(post(&mut s, &m), Err(e));
        let res = open_result(&mut s);
        assert_eq!(res.status, STATUS_UNSUCCESSFUL, "{e:?}");
        assert!(events(&mut s).is_empty(), "{e:?}");
    }
    assert_eq!(s.channel(r).unwrap().state(), ChannelState::Closed);
    // Boundary values that are fine: 2 pages on each side.
    post(&mut s, &open_msg(r, 1, 0x10, 6, 3)).unwrap();
    post(&mut s, &close_msg(r)).unwrap();
    post(&mut s, &open_msg(r, 1, 0x10, 2, 3)).unwrap();
    assert_eq!(s.counters().rejected[MessageType::OPEN_CHANNEL.0 as usize], 10);
}

#[test]
fn close_and_teardown_in_use() {
    let (mut s, r) = ready();
    assert_eq!(post(&mut s, &close_msg(r)), Err(HostError::NotOpen(r)));
    assert_eq!(post(&mut s, &close_msg(55)), Err(HostError::UnknownRelid(55)));
    post(&mut s, &open_msg(r, 1, 0x10, 4, 0)).unwrap();
    // Ring GPADL cannot be torn down while an open is pending or the channel is open.
    assert_eq!(post(&mut s, &teardown_msg(r, 0x10)), Err(HostError::GpadlInUse(0x10)));
    s.complete_open(r, 0).unwrap();
    drain(&mut s);
    events(&mut s);
    assert_eq!(post(&mut s, &teardown_msg(r, 0x10)), Err(HostError::GpadlInUse(0x10)));
    assert!(drain(&mut s).is_empty());
    // Another GPADL of the same channel can go.
    create_gpadl(&mut s, r, 0x11, 3);
    post(&mut s, &teardown_msg(r, 0x11)).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::GPADL_TORNDOWN]);
    events(&mut s);
    post(&mut s, &close_msg(r)).unwrap();
    assert!(drain(&mut s).is_empty(), "CloseChannel has no reply");
    assert_eq!(events(&mut s), vec![ServerEvent::Closed { relid: r }]);
    post(&mut s, &teardown_msg(r, 0x10)).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::GPADL_TORNDOWN]);
}

#[test]
fn close_while_open_pending_cancels() {
    let (mut s, r) = ready();
    post(&mut s, &open_msg(r, 1, 0x10, 4, 0)).unwrap();
    events(&mut s);
    post(&mut s, &close_msg(r)).unwrap();
    assert_eq!(events(&mut s), vec![ServerEvent::Closed { relid: r }]);
    assert_eq!(s.complete_open(r, 0), Err(HostApiError::NoOpenPending(r)));
}

fn modify_case(v: Version) -> (Server, u32) {
    let mut s = server_with(|c| c.vp_count = 4);
    connect(&mut s, v);
    post(&mut s, &ChannelMessage::RequestOffers).unwrap();
    drain(&mut s);
    events(&mut s);
    let (r, _) = open_channel(&mut s, 1, 0x10);
    (s, r)
}

#[test]
fn modify_channel_by_version() {
    // Below 4.1: refused, no answer.
    for v in [Version::WIN8, Version::WIN8_1, Version::WIN10] {
        let (mut s, r) = modify_case(v);
        assert_eq!(
            post(&mut s, &modify_msg(r, 1)),
            Err(HostError::NotInVersion { msgtype: MessageType::MODIFY_CHANNEL, version: v })
        );
        assert!(drain(&mut s).is_empty());
        assert!(events(&mut s).is_empty());
    }
    // 4.1 .. 5.2: event, no response.
    for v in [Version::WIN10_V4_1, Version::WIN10_V5, Version::WIN10_V5_1, Version::WIN10_V5_2] {
        let (mut s, r) = modify_case(v);
        post(&mut s, &modify_msg(r, 3)).unwrap();
        assert!(drain(&mut s).is_empty(), "{v}: no ModifyChannelResponse before 5.3");
        assert_eq!(events(&mut s), vec![ServerEvent::ModifyChannel { relid: r, target_vp: 3 }]);
        assert!(matches!(s.channel(r).unwrap().state(), ChannelState::Open(p) if p.target_vp == 3));
        // Errors have no answer either.
        assert_eq!(post(&mut s, &modify_msg(r, 4)), Err(HostError::BadTargetVp(4)));
        assert!(drain(&mut s).is_empty());
    }
    // 5.3: event and response, failures answered with a status.
    let (mut s, r) = modify_case(Version::WIN10_V5_3);
    post(&mut s, &modify_msg(r, 2)).unwrap();
    let out = drain(&mut s);
    match parse(&out[0]) {
        ChannelMessage::ModifyChannelResponse(m) => assert_eq!((m.child_relid, m.status), (r, 0)),
        other => panic!("{other:?}"),
    }
    assert_eq!(events(&mut s), vec![ServerEvent::ModifyChannel { relid: r, target_vp: 2 }]);
    for (m, e) in [(modify_msg(r, 9), HostError::BadTargetVp(9)), (modify_msg(50, 1), HostError::UnknownRelid(50))] {
        assert_eq!(post(&mut s, &m), Err(e));
        match parse(&drain(&mut s)[0]) {
            ChannelMessage::ModifyChannelResponse(m) => assert_eq!(m.status, STATUS_UNSUCCESSFUL),
            other => panic!("{other:?}"),
        }
    }
    post(&mut s, &close_msg(r)).unwrap();
    assert_eq!(post(&mut s, &modify_msg(r, 1)), Err(HostError::NotOpen(r)));
    // fail_modify fault.
    let (mut s, r) = modify_case(Version::WIN10_V5_3);
    s.faults_mut().fail_modify = Some(0xC000_00BB);
    post(&mut s, &modify_msg(r, 1)).unwrap();
    match parse(&drain(&mut s)[0]) {
        ChannelMessage::ModifyChannelResponse(m) => assert_eq!(m.status, 0xC000_00BB),
        other => panic!("{other:?}"),
    }
    assert!(events(&mut s).is_empty());
    assert!(matches!(s.channel(r).unwrap().state(), ChannelState::Open(p) if p.target_vp == 0));
}

#[test]
fn unload_drops_everything_and_recontact_reoffers() {
    let mut s = server();
    connect_and_request(&mut s);
    let (a, ha) = open_channel(&mut s, 1, 0x10);
    let b = offer(&mut s, 2);
    drain(&mut s);
    create_gpadl(&mut s, b, 0x20, 3);
    post_raw(&mut s, &gpadl_messages(b, 0x21, 0, 50)[0]).unwrap();
    let c = offer(&mut s, 3);
    s.rescind(c).unwrap();
    let subs = s.offer_subchannels(a, 2).unwrap();
    drain(&mut s);
    post(&mut s, &ChannelMessage::Unload).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::UNLOAD_RESPONSE]);
    let ev = events(&mut s);
    assert!(ev.contains(&ServerEvent::Closed { relid: a }));
    assert!(ev.contains(&ServerEvent::GpadlTornDown { relid: a, handle: ha }));
    assert!(ev.contains(&ServerEvent::GpadlTornDown { relid: b, handle: 0x20 }));
    assert_eq!(ev.last(), Some(&ServerEvent::Unloaded));
    assert!(s.connection().is_none());
    assert_eq!(s.gpadls().count(), 0);
    assert_eq!(s.pending_gpadl_count(), 0);
    assert_eq!(s.gpadl_page_total(), 0);
    assert!(s.channel(c).is_none(), "rescinded channel dropped with the connection");
    assert!(ev.contains(&ServerEvent::OfferRemoved { relid: c }));
    for sub in &subs {
        assert!(s.channel(*sub).is_none(), "sub-channels are re-requested after re-contact");
        assert!(ev.contains(&ServerEvent::OfferRemoved { relid: *sub }));
    }
    assert!(!ev.contains(&ServerEvent::OfferRemoved { relid: a }));
    assert!(s.is_valid_message_connection(4));
    assert_eq!(post(&mut s, &ChannelMessage::RequestOffers), Err(HostError::NotConnected(MessageType::REQUEST_OFFERS)));
    // Re-contact (a different version this time) re-offers the live channels.
    connect(&mut s, Version::WIN10_V5_1);
    post(&mut s, &ChannelMessage::RequestOffers).unwrap();
    let out = drain(&mut s);
    assert_eq!(
        types(&out),
        vec![MessageType::OFFER_CHANNEL, MessageType::OFFER_CHANNEL, MessageType::ALL_OFFERS_DELIVERED]
    );
    assert_eq!(s.channel(a).unwrap().state(), ChannelState::Closed);
    // The old handle is free again, and sub-channel indexes start over.
    create_gpadl(&mut s, a, ha, 8);
    s.offer_subchannels(a, 1).unwrap();
    match parse(&drain(&mut s)[0]) {
        ChannelMessage::OfferChannel(o) => assert_eq!(o.sub_channel_index, 1),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unload_needs_version_3() {
    let mut s = server();
    connect(&mut s, Version::WIN8);
    assert_eq!(
        post(&mut s, &ChannelMessage::Unload),
        Err(HostError::NotInVersion { msgtype: MessageType::UNLOAD, version: Version::WIN8 })
    );
    assert!(drain(&mut s).is_empty());
    assert!(s.connection().is_some());
}

#[test]
fn drop_reply_fault_loses_only_that_kind() {
    let (mut s, r) = ready();
    s.faults_mut().drop_replies = ReplyKinds::OPEN_RESULT;
    post(&mut s, &open_msg(r, 1, 0x10, 4, 0)).unwrap();
    s.complete_open(r, 0).unwrap();
    assert!(drain(&mut s).is_empty());
    assert!(s.channel(r).unwrap().is_open(), "state changes as if the reply were lost");
    assert_eq!(s.counters().dropped_by_fault[MessageType::OPEN_CHANNEL_RESULT.0 as usize], 1);
    assert_eq!(s.counters().sent[MessageType::OPEN_CHANNEL_RESULT.0 as usize], 0);
    create_gpadl(&mut s, r, 0x11, 1);
    s.faults_mut().drop_replies = ReplyKinds::GPADL_CREATED | ReplyKinds::UNLOAD_RESPONSE;
    for m in gpadl_messages(r, 0x12, 0, 1) {
        post_raw(&mut s, &m).unwrap();
    }
    assert!(drain(&mut s).is_empty());
    assert!(s.gpadl(0x12).is_some());
    post(&mut s, &ChannelMessage::Unload).unwrap();
    assert!(drain(&mut s).is_empty());
    assert!(s.connection().is_none());
}

#[test]
fn fail_open_fault() {
    let (mut s, r) = ready();
    s.faults_mut().fail_open = Some(0xC000_0001);
    post(&mut s, &open_msg(r, 3, 0x10, 4, 0)).unwrap();
    let res = open_result(&mut s);
    assert_eq!((res.openid, res.status), (3, 0xC000_0001));
    assert!(events(&mut s).is_empty());
    assert_eq!(s.channel(r).unwrap().state(), ChannelState::Closed);
}

#[test]
fn silent_host_ignores_everything() {
    let (mut s, r) = ready();
    s.faults_mut().silent = true;
    let before = s.counters().clone();
    assert_eq!(post(&mut s, &open_msg(r, 3, 0x10, 4, 0)), Err(HostError::Silent));
    assert_eq!(post(&mut s, &ChannelMessage::Unload), Err(HostError::Silent));
    assert!(drain(&mut s).is_empty());
    assert!(events(&mut s).is_empty());
    assert_eq!(s.counters().ignored_silent, 2);
    assert_eq!(s.counters().total_received(), before.total_received() + 2);
    assert!(s.connection().is_some());
    s.faults_mut().silent = false;
    post(&mut s, &open_msg(r, 3, 0x10, 4, 0)).unwrap();
}

#[test]
fn outbox_is_bounded() {
    let mut s = server_with(|c| c.outbox_capacity = 3);
    for n in 0..10 {
        offer(&mut s, n);
    }
    connect(&mut s, Version::WIN10_V5_3);
    post(&mut s, &ChannelMessage::RequestOffers).unwrap();
    assert_eq!(s.outgoing_len(), 3);
    assert_eq!(s.counters().outbox_overflow, 8);
    assert_eq!(s.counters().sent[MessageType::OFFER_CHANNEL.0 as usize], 3);
}

#[test]
fn counters_track_kinds() {
    let (mut s, r) = ready();
    let rx = s.counters().received;
    post(&mut s, &close_msg(r)).unwrap_err();
    post(&mut s, &open_msg(r, 1, 0x10, 4, 0)).unwrap();
    assert_eq!(s.counters().received[MessageType::CLOSE_CHANNEL.0 as usize], rx[7] + 1);
    assert_eq!(s.counters().received[MessageType::OPEN_CHANNEL.0 as usize], rx[5] + 1);
    assert_eq!(s.counters().rejected[MessageType::CLOSE_CHANNEL.0 as usize], 1);
    assert_eq!(s.counters().rejected[MessageType::OPEN_CHANNEL.0 as usize], 0);
    assert_eq!(s.counters().sent[MessageType::VERSION_RESPONSE.0 as usize], 1);
    assert_eq!(s.counters().sent[MessageType::GPADL_CREATED.0 as usize], 1);
}
