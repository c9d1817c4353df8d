// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Host server: guest messages that crossed a rescind in flight, under
//! [`RescindCrossings::Tolerate`]. Each is answered where the guest waits
//! (with a failure) or swallowed, counted in `crossed_rescind` and never as
//! a rejection; messages that are wrong whatever the rescind did stay
//! refusals. The default [`RescindCrossings::Refuse`] is covered by
//! `host_offers.rs`.
#![cfg(feature = "host")]

#[path = "host_support.rs"]
mod support;

use support::*;
use vmbus_core::host::{HostError, RescindCrossings, Server, ServerEvent, STATUS_UNSUCCESSFUL};
use vmbus_core::message::{ChannelMessage, MessageType, OutgoingMessage};

fn tolerant() -> Server {
    server_with(|c| c.rescind_crossings = RescindCrossings::Tolerate)
}

fn crossed(s: &Server, t: MessageType) -> u64 {
    s.counters().crossed_rescind[t.0 as usize]
}

/// The one answer in `out`, which must be a failure of kind `t`.
fn single_failure(out: &[OutgoingMessage], t: MessageType) {
    assert_eq!(types(out), vec![t], "{out:?}");
    let status = match parse(&out[0]) {
        ChannelMessage::OpenResult(o) => o.status,
        ChannelMessage::GpadlCreated(c) => c.creation_status,
        ChannelMessage::ModifyChannelResponse(m) => m.status,
        other => panic!("{other:?}"),
    };
    assert_eq!(status, STATUS_UNSUCCESSFUL);
}

/// The mix `host_with_client.rs` plays with the real guest: on an open
/// channel a ModifyChannel, a GpadlTeardown and a 130-page GPADL (header +
/// 4 bodies) cross the rescind; on a closed channel an OpenChannel does.
#[test]
fn every_kind_of_crossing_is_answered_once_and_never_rejected() {
    let mut s = tolerant();
    connect_and_request(&mut s);
    let (a, ring_a) = open_channel(&mut s, 1, 0x10);
    create_gpadl(&mut s, a, 0x11, 2);
    let b = offer(&mut s, 2);
    drain(&mut s);
    create_gpadl(&mut s, b, 0x20, 8);
    s.rescind(a).unwrap();
    s.rescind(b).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::RESCIND_CHANNEL_OFFER; 2]);
    events(&mut s);

    post(&mut s, &modify_msg(a, 1)).unwrap();
    single_failure(&drain(&mut s), MessageType::MODIFY_CHANNEL_RESPONSE);
    assert!(events(&mut s).is_empty(), "the VP is not moved");

    post(&mut s, &teardown_msg(a, 0x11)).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::GPADL_TORNDOWN]);
    assert_eq!(events(&mut s), vec![ServerEvent::GpadlTornDown { relid: a, handle: 0x11 }]);

    let big = gpadl_messages(a, 0x12, 0x4000, 130);
    assert_eq!(big.len(), 5);
    post_raw(&mut s, &big[0]).unwrap();
    single_failure(&drain(&mut s), MessageType::GPADL_CREATED);
    assert_eq!(s.crossed_gpadl_count(), 1);
    for body in &big[1..] {
        post_raw(&mut s, body).unwrap();
    }
    assert!(drain(&mut s).is_empty(), "bodies are swallowed without an answer");
    assert_eq!(s.crossed_gpadl_count(), 0, "forgotten once the declared length arrived");
    assert!(s.gpadl(0x12).is_none());
    assert_eq!(s.pending_gpadl_count(), 0);

    post(&mut s, &open_msg(b, 9, 0x20, 4, 0)).unwrap();
    single_failure(&drain(&mut s), MessageType::OPEN_CHANNEL_RESULT);
    assert!(events(&mut s).is_empty(), "no OpenRequest for a rescinded channel");
    assert!(!s.channel(b).unwrap().is_open());

    let c = s.counters();
    assert_eq!(c.total_rejected(), 0);
    assert_eq!(crossed(&s, MessageType::MODIFY_CHANNEL), 1);
    assert_eq!(crossed(&s, MessageType::GPADL_TEARDOWN), 1);
    assert_eq!(crossed(&s, MessageType::GPADL_HEADER), 1);
    assert_eq!(crossed(&s, MessageType::GPADL_BODY), 4);
    assert_eq!(crossed(&s, MessageType::OPEN_CHANNEL), 1);
    assert_eq!(s.counters().total_crossed_rescind(), 8);

    // The guest winds both down; Close and RelidReleased are not crossings.
    post(&mut s, &close_msg(a)).unwrap();
    post(&mut s, &teardown_msg(a, ring_a)).unwrap();
    post(&mut s, &released_msg(a)).unwrap();
    post(&mut s, &released_msg(b)).unwrap();
    assert!(s.channel(a).is_none() && s.channel(b).is_none());
    assert_eq!(s.gpadls().count(), 0);
    assert_eq!(s.gpadl_page_total(), 0);
    assert_eq!(s.counters().total_rejected(), 0);
    assert_eq!(s.counters().total_crossed_rescind(), 9, "the ring teardown crossed too");
}

/// The same posts under the default mode are refusals, and nothing is
/// counted as a crossing: the switch changes only the classification and
/// the body handling, not the answers.
#[test]
fn refuse_mode_rejects_the_same_posts_with_the_same_answers() {
    let mut answers = Vec::new();
    for mode in [RescindCrossings::Refuse, RescindCrossings::Tolerate] {
        let mut s = server_with(|c| c.rescind_crossings = mode);
        connect_and_request(&mut s);
        let (a, _) = open_channel(&mut s, 1, 0x10);
        s.rescind(a).unwrap();
        drain(&mut s);
        let mut results = vec![post(&mut s, &modify_msg(a, 1))];
        for m in gpadl_messages(a, 0x12, 0x4000, 60) {
            results.push(post_raw(&mut s, &m));
        }
        let out: Vec<Vec<u8>> = drain(&mut s).iter().map(|m| m.as_bytes().to_vec()).collect();
        answers.push(out);
        match mode {
            RescindCrossings::Refuse => {
                assert_eq!(
                    results,
                    vec![
                        Err(HostError::Rescinded(a)),
                        Err(HostError::Rescinded(a)),
                        Err(HostError::GpadlBodyWithoutHeader(0x12)),
                        Err(HostError::GpadlBodyWithoutHeader(0x12)),
                    ]
                );
                assert_eq!(s.counters().total_rejected(), 4);
                assert_eq!(s.counters().total_crossed_rescind(), 0);
            }
            RescindCrossings::Tolerate => {
                assert!(results.iter().all(Result::is_ok), "{results:?}");
                assert_eq!(s.counters().total_rejected(), 0);
                assert_eq!(s.counters().total_crossed_rescind(), 4);
            }
        }
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].len(), 2, "a ModifyChannelResponse and a GpadlCreated");
}

/// A GPADL whose header came before the rescind is finished and answered
/// with success; its bodies count as crossings, not rejections.
#[test]
fn bodies_of_a_header_taken_before_the_rescind_finish_the_gpadl() {
    let mut s = tolerant();
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    let msgs = gpadl_messages(r, 0x50, 1, 60);
    post_raw(&mut s, &msgs[0]).unwrap();
    s.rescind(r).unwrap();
    drain(&mut s);
    for m in &msgs[1..] {
        post_raw(&mut s, m).unwrap();
    }
    match parse(&drain(&mut s)[0]) {
        ChannelMessage::GpadlCreated(c) => assert_eq!((c.gpadl, c.creation_status), (0x50, 0)),
        other => panic!("{other:?}"),
    }
    assert_eq!(crossed(&s, MessageType::GPADL_BODY), 2);
    assert_eq!(crossed(&s, MessageType::GPADL_HEADER), 0, "the header came before the rescind");
    // Dropped with the relid.
    post(&mut s, &released_msg(r)).unwrap();
    assert!(s.gpadl(0x50).is_none());
    assert_eq!(s.counters().total_rejected(), 0);
}

/// Messages that are wrong whatever the rescind did stay refusals.
#[test]
fn errors_that_no_crossing_explains_are_still_refused() {
    let mut s = tolerant();
    connect_and_request(&mut s);
    let (a, ring) = open_channel(&mut s, 1, 0x10);
    create_gpadl(&mut s, a, 0x11, 2);
    s.rescind(a).unwrap();
    drain(&mut s);
    // Opening a channel that is still open (a second open), with an answer.
    assert_eq!(post(&mut s, &open_msg(a, 3, 0x10, 4, 0)), Err(HostError::AlreadyOpen(a)));
    single_failure(&drain(&mut s), MessageType::OPEN_CHANNEL_RESULT);
    assert!(s.channel(a).unwrap().is_open());
    // Tearing down the ring of the open channel.
    assert_eq!(post(&mut s, &teardown_msg(a, ring)), Err(HostError::GpadlInUse(ring)));
    // Tearing down a GPADL that never existed.
    assert_eq!(post(&mut s, &teardown_msg(a, 0x77)), Err(HostError::UnknownGpadl(0x77)));
    // A header reusing an established handle.
    let dup = gpadl_messages(a, 0x11, 1, 1);
    assert_eq!(post_raw(&mut s, &dup[0]), Err(HostError::DuplicateGpadl(0x11)));
    assert!(s.gpadl(0x11).is_some(), "the existing GPADL is left alone");
    drain(&mut s);
    assert_eq!(s.counters().total_rejected(), 4);
    assert_eq!(s.counters().total_crossed_rescind(), 0);

    // After RelidReleased the relid is unknown: nothing can cross any more.
    post(&mut s, &close_msg(a)).unwrap();
    post(&mut s, &released_msg(a)).unwrap();
    drain(&mut s);
    assert_eq!(post(&mut s, &open_msg(a, 4, 0x10, 4, 0)), Err(HostError::UnknownRelid(a)));
    assert_eq!(post(&mut s, &modify_msg(a, 1)), Err(HostError::UnknownRelid(a)));
    assert_eq!(s.counters().total_crossed_rescind(), 0);
}

/// A guest cannot grow the host's memory with crossed headers whose bodies
/// never come: at most `max_pending_gpadls` are remembered, oldest dropped
/// first; a body of a forgotten one is an ordinary protocol error.
#[test]
fn crossed_headers_are_bounded() {
    let mut s = server_with(|c| {
        c.rescind_crossings = RescindCrossings::Tolerate;
        c.max_pending_gpadls = 2;
    });
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    s.rescind(r).unwrap();
    drain(&mut s);
    let gpadls: Vec<Vec<Vec<u8>>> = (0..5).map(|h| gpadl_messages(r, 0x60 + h, 1, 60)).collect();
    for g in &gpadls {
        post_raw(&mut s, &g[0]).unwrap();
        assert!(s.crossed_gpadl_count() <= 2);
    }
    assert_eq!(s.crossed_gpadl_count(), 2);
    assert_eq!(types(&drain(&mut s)), vec![MessageType::GPADL_CREATED; 5], "every header is answered");
    assert_eq!(post_raw(&mut s, &gpadls[0][1]), Err(HostError::GpadlBodyWithoutHeader(0x60)));
    for body in &gpadls[4][1..] {
        post_raw(&mut s, body).unwrap();
    }
    assert_eq!(s.crossed_gpadl_count(), 1);
    assert_eq!(s.counters().total_rejected(), 1);
    assert_eq!(s.pending_gpadl_count(), 0);
    assert_eq!(s.gpadl_page_total(), 0, "crossed headers reserve no pages");
}

/// A body with more bytes than its crossed header declared is refused, and
/// the header is forgotten (its further bodies are refused too).
#[test]
fn oversized_body_of_a_crossed_header_is_refused() {
    let mut s = tolerant();
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    s.rescind(r).unwrap();
    drain(&mut s);
    // 27 pages: the header declares one body of a single PFN (8 bytes).
    let small = gpadl_messages(r, 0x70, 1, 27);
    let large = gpadl_messages(r, 0x70, 1, 60);
    post_raw(&mut s, &small[0]).unwrap();
    assert_eq!(post_raw(&mut s, &large[1]), Err(HostError::GpadlTooManyPfns { handle: 0x70 }));
    assert_eq!(s.crossed_gpadl_count(), 0);
    assert_eq!(post_raw(&mut s, &small[1]), Err(HostError::GpadlBodyWithoutHeader(0x70)));
}

/// RelidReleased, Unload and a new header with the same handle end the
/// swallowing of a crossed header's bodies.
#[test]
fn release_unload_and_handle_reuse_forget_crossed_headers() {
    // Release.
    let mut s = tolerant();
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    s.rescind(r).unwrap();
    let g = gpadl_messages(r, 0x80, 1, 60);
    post_raw(&mut s, &g[0]).unwrap();
    assert_eq!(s.crossed_gpadl_count(), 1);
    post(&mut s, &released_msg(r)).unwrap();
    assert_eq!(s.crossed_gpadl_count(), 0);
    assert_eq!(post_raw(&mut s, &g[1]), Err(HostError::GpadlBodyWithoutHeader(0x80)));

    // Unload.
    let r = offer(&mut s, 2);
    drain(&mut s);
    s.rescind(r).unwrap();
    post_raw(&mut s, &gpadl_messages(r, 0x81, 1, 60)[0]).unwrap();
    assert_eq!(s.crossed_gpadl_count(), 1);
    post(&mut s, &ChannelMessage::Unload).unwrap();
    assert_eq!(s.crossed_gpadl_count(), 0);

    // A new header with the handle of a crossed one, on a live channel:
    // built normally, bodies go to it.
    let mut s = tolerant();
    connect_and_request(&mut s);
    let dead = offer(&mut s, 1);
    let live = offer(&mut s, 2);
    drain(&mut s);
    s.rescind(dead).unwrap();
    post_raw(&mut s, &gpadl_messages(dead, 0x90, 1, 60)[0]).unwrap();
    drain(&mut s);
    for m in gpadl_messages(live, 0x90, 1, 60) {
        post_raw(&mut s, &m).unwrap();
    }
    assert_eq!(s.crossed_gpadl_count(), 0);
    assert_eq!(s.gpadl(0x90).map(|g| g.relid), Some(live));
    assert_eq!(s.counters().total_rejected(), 0);
}

/// ModifyChannel before 5.3 has no response: a crossing one is swallowed.
#[test]
fn crossing_modify_without_a_response_is_swallowed() {
    let mut s = tolerant();
    connect(&mut s, vmbus_core::version::Version::WIN10_V5_2);
    post(&mut s, &ChannelMessage::RequestOffers).unwrap();
    drain(&mut s);
    let (a, _) = open_channel(&mut s, 1, 0x10);
    s.rescind(a).unwrap();
    drain(&mut s);
    post(&mut s, &modify_msg(a, 1)).unwrap();
    assert!(drain(&mut s).is_empty());
    assert_eq!(crossed(&s, MessageType::MODIFY_CHANNEL), 1);
    assert_eq!(s.counters().total_rejected(), 0);
}
