// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Host server: offers, hot add, sub-channels, rescind and RelidReleased.
#![cfg(feature = "host")]

#[path = "host_support.rs"]
mod support;

use support::*;
use vmbus_core::host::{
    ChannelState, HostApiError, HostError, OfferSpec, RescindCrossings, ServerEvent, STATUS_UNSUCCESSFUL,
};
use vmbus_core::message::{ChannelMessage, MessageType, OfferFlags};
use vmbus_core::version::Version;

fn offers_in(out: &[vmbus_core::message::OutgoingMessage]) -> Vec<vmbus_core::message::OfferChannel> {
    out.iter()
        .filter_map(|o| match parse(o) {
            ChannelMessage::OfferChannel(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[test]
fn request_offers_sends_every_offer_then_all_delivered() {
    let mut s = server();
    let mut spec = OfferSpec::new(SCSI, instance(9));
    spec.flags = OfferFlags::REQUEST_MONITORED_NOTIFICATION;
    spec.monitor_id = Some(70);
    spec.mmio_megabytes = 16;
    spec.dedicated_interrupt = true;
    spec.user_defined[3] = 0xEE;
    let a = s.add_offer(spec).unwrap();
    let b = offer(&mut s, 1);
    assert_eq!((a, b), (1, 2));
    // Nothing goes out before the guest connects and asks.
    assert!(drain(&mut s).is_empty());
    connect(&mut s, Version::WIN10_V5_3);
    assert!(drain(&mut s).is_empty());
    post(&mut s, &ChannelMessage::RequestOffers).unwrap();
    let out = drain(&mut s);
    assert_eq!(
        types(&out),
        vec![MessageType::OFFER_CHANNEL, MessageType::OFFER_CHANNEL, MessageType::ALL_OFFERS_DELIVERED]
    );
    let offers = offers_in(&out);
    assert_eq!(offers[0].child_relid, 1);
    assert_eq!(offers[0].if_type, SCSI);
    assert_eq!(offers[0].if_instance, instance(9));
    assert_eq!(offers[0].monitor_id, 70);
    assert!(offers[0].has_monitor());
    assert!(offers[0].dedicated_interrupt());
    assert_eq!(offers[0].mmio_megabytes, 16);
    assert_eq!(offers[0].user_defined[3], 0xEE);
    assert_eq!(offers[0].flags(), OfferFlags::REQUEST_MONITORED_NOTIFICATION);
    assert_eq!(offers[1].child_relid, 2);
    assert!(!offers[1].has_monitor());
    // Signal connection ids are distinct and map back to the relid.
    assert_ne!(offers[0].connection_id, offers[1].connection_id);
    for o in &offers {
        assert_eq!(s.channel_by_signal_connection(o.connection_id), Some(o.child_relid));
        assert_eq!(s.channel(o.child_relid).unwrap().signal_connection_id(), o.connection_id);
        assert!(s.channel(o.child_relid).unwrap().is_offered());
    }
    assert_eq!(s.channel_by_signal_connection(0), None);
    assert_eq!(s.channel_by_signal_connection(offers[1].connection_id + 1), None);
    assert_eq!(events(&mut s), vec![ServerEvent::OffersRequested]);
    // A second RequestOffers on the same connection is refused.
    assert_eq!(post(&mut s, &ChannelMessage::RequestOffers), Err(HostError::OffersAlreadyRequested));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn hot_add_after_request_is_sent_at_once() {
    let mut s = server();
    connect(&mut s, Version::WIN10_V5);
    let early = offer(&mut s, 1);
    assert!(drain(&mut s).is_empty(), "offers wait for RequestOffers");
    post(&mut s, &ChannelMessage::RequestOffers).unwrap();
    assert_eq!(offers_in(&drain(&mut s))[0].child_relid, early);
    let late = offer(&mut s, 2);
    let out = drain(&mut s);
    assert_eq!(types(&out), vec![MessageType::OFFER_CHANNEL]);
    assert_eq!(offers_in(&out)[0].child_relid, late);
}

#[test]
fn duplicate_offers_and_bad_monitor_are_refused() {
    let mut s = server();
    offer(&mut s, 1);
    assert_eq!(s.add_offer(OfferSpec::new(NET, instance(1))), Err(HostApiError::DuplicateOffer));
    let mut sub = OfferSpec::new(NET, instance(2));
    sub.sub_channel_index = 1;
    assert_eq!(s.add_offer(sub), Err(HostApiError::NoPrimary));
    let mut m = OfferSpec::new(NET, instance(3));
    m.monitor_id = Some(128);
    assert_eq!(s.add_offer(m), Err(HostApiError::BadMonitorId(128)));
}

#[test]
fn relids_are_bounded() {
    let mut s = server_with(|c| c.max_relid = 3);
    for n in 1..=3 {
        assert_eq!(offer(&mut s, n), u32::from(n));
    }
    assert_eq!(s.add_offer(OfferSpec::new(NET, instance(9))), Err(HostApiError::NoFreeRelid));
}

#[test]
fn subchannels_share_guids_with_indexes() {
    let mut s = server();
    connect_and_request(&mut s);
    let primary = offer(&mut s, 4);
    drain(&mut s);
    let subs = s.offer_subchannels(primary, 3).unwrap();
    assert_eq!(subs.len(), 3);
    let offers = offers_in(&drain(&mut s));
    assert_eq!(offers.len(), 3);
    for (i, o) in offers.iter().enumerate() {
        assert_eq!(o.child_relid, subs[i]);
        assert_eq!(o.if_type, NET);
        assert_eq!(o.if_instance, instance(4));
        assert_eq!(o.sub_channel_index, i as u16 + 1);
    }
    // More sub-channels continue the numbering.
    let more = s.offer_subchannels(primary, 1).unwrap();
    assert_eq!(offers_in(&drain(&mut s))[0].sub_channel_index, 4);
    assert_eq!(s.offer_subchannels(more[0], 1), Err(HostApiError::NotPrimary(more[0])));
    assert_eq!(s.offer_subchannels(999, 1), Err(HostApiError::UnknownRelid(999)));
    // A rescinded sub-channel's index is reused by the next request.
    s.rescind(subs[1]).unwrap();
    drain(&mut s);
    let again = s.offer_subchannels(primary, 1).unwrap();
    assert_eq!(offers_in(&drain(&mut s))[0].sub_channel_index, 2);
    assert_ne!(again[0], subs[1], "rescinded relid not reused before RelidReleased");
}

#[test]
fn rescind_of_unseen_offer_just_removes_it() {
    let mut s = server();
    let r = offer(&mut s, 1);
    s.rescind(r).unwrap();
    assert!(drain(&mut s).is_empty());
    assert!(s.channel(r).is_none());
    assert_eq!(events(&mut s), vec![ServerEvent::OfferRemoved { relid: r }]);
    assert_eq!(offer(&mut s, 2), r, "relid free again");
    assert_eq!(s.rescind(77), Err(HostApiError::UnknownRelid(77)));
}

#[test]
fn rescind_holds_the_relid_until_released() {
    let mut s = server();
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    // RelidReleased for a live channel the guest uses (it holds a GPADL) is refused.
    create_gpadl(&mut s, r, 0x40, 1);
    assert_eq!(post(&mut s, &released_msg(r)), Err(HostError::NotRescinded(r)));
    assert!(s.channel(r).unwrap().is_offered());
    s.rescind(r).unwrap();
    assert_eq!(s.rescind(r), Err(HostApiError::AlreadyRescinded(r)));
    let out = drain(&mut s);
    assert_eq!(types(&out), vec![MessageType::RESCIND_CHANNEL_OFFER]);
    match parse(&out[0]) {
        ChannelMessage::RescindChannelOffer(m) => assert_eq!(m.child_relid, r),
        other => panic!("{other:?}"),
    }
    // The same device may be offered again, under a different relid.
    let r2 = offer(&mut s, 1);
    assert_ne!(r2, r);
    drain(&mut s);
    post(&mut s, &released_msg(r)).unwrap();
    assert!(s.channel(r).is_none());
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::GpadlTornDown { relid: r, handle: 0x40 }, ServerEvent::RelidReleased { relid: r }]
    );
    assert_eq!(post(&mut s, &released_msg(r)), Err(HostError::UnknownRelid(r)));
    assert_eq!(offer(&mut s, 3), r, "released relid is reused");
}

#[test]
fn guest_may_decline_an_unused_offer_with_relid_released() {
    // A guest that cannot take an offer (Linux: channel allocation failed)
    // answers it with RelidReleased although it was never rescinded.
    let mut s = server();
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    let other = offer(&mut s, 2);
    drain(&mut s);
    post(&mut s, &released_msg(r)).unwrap();
    assert!(drain(&mut s).is_empty());
    assert!(events(&mut s).is_empty());
    // The channel stays with its device but is unknown to the guest on this connection.
    assert!(!s.channel(r).unwrap().is_offered());
    assert_eq!(post(&mut s, &open_msg(r, r, 1, 2, 0)), Err(HostError::UnknownRelid(r)));
    assert_eq!(post(&mut s, &released_msg(r)), Err(HostError::UnknownRelid(r)));
    drain(&mut s);
    assert!(s.channel(other).unwrap().is_offered());
    // A rescind of the declined channel just removes it (the guest never sees it).
    s.rescind(r).unwrap();
    assert!(drain(&mut s).is_empty());
    assert_eq!(events(&mut s), vec![ServerEvent::OfferRemoved { relid: r }]);
    // A declined channel is offered again on the next connection.
    let r3 = offer(&mut s, 3);
    drain(&mut s);
    post(&mut s, &released_msg(r3)).unwrap();
    post(&mut s, &ChannelMessage::Unload).unwrap();
    drain(&mut s);
    connect_and_request(&mut s);
    assert!(s.channel(r3).unwrap().is_offered());
}

#[test]
fn rescind_before_open_refuses_open_and_gpadl() {
    // Under the strict mode; host_rescind_crossings.rs has the tolerant one.
    let mut s = server_with(|c| c.rescind_crossings = RescindCrossings::Refuse);
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    create_gpadl(&mut s, r, 0x10, 8);
    s.rescind(r).unwrap();
    drain(&mut s);
    // Open of a rescinded channel: refused with a failure result.
    assert_eq!(post(&mut s, &open_msg(r, 1, 0x10, 4, 0)), Err(HostError::Rescinded(r)));
    match parse(&drain(&mut s)[0]) {
        ChannelMessage::OpenResult(o) => assert_eq!(o.status, STATUS_UNSUCCESSFUL),
        other => panic!("{other:?}"),
    }
    // A new GPADL for it is refused, with an answer.
    for m in gpadl_messages(r, 0x11, 1, 1) {
        assert_eq!(post_raw(&mut s, &m), Err(HostError::Rescinded(r)));
    }
    match parse(&drain(&mut s)[0]) {
        ChannelMessage::GpadlCreated(c) => assert_ne!(c.creation_status, 0),
        other => panic!("{other:?}"),
    }
    // Its existing GPADL is still torn down normally.
    post(&mut s, &teardown_msg(r, 0x10)).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::GPADL_TORNDOWN]);
    assert_eq!(events(&mut s), vec![ServerEvent::GpadlTornDown { relid: r, handle: 0x10 }]);
    // Close of a rescinded, closed channel is accepted.
    post(&mut s, &close_msg(r)).unwrap();
    post(&mut s, &released_msg(r)).unwrap();
    assert!(s.channel(r).is_none());
}

#[test]
fn rescind_while_open_pending_cancels_the_open() {
    let mut s = server();
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    create_gpadl(&mut s, r, 0x20, 8);
    post(&mut s, &open_msg(r, 5, 0x20, 4, 0)).unwrap();
    assert!(matches!(events(&mut s)[..], [ServerEvent::OpenRequest { relid, .. }] if relid == r));
    s.rescind(r).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::RESCIND_CHANNEL_OFFER]);
    assert_eq!(events(&mut s), vec![ServerEvent::Closed { relid: r }]);
    assert_eq!(s.complete_open(r, 0), Err(HostApiError::NoOpenPending(r)));
    assert!(drain(&mut s).is_empty(), "no OpenResult after the rescind");
    // The ring GPADL is no longer in use and can be torn down.
    post(&mut s, &teardown_msg(r, 0x20)).unwrap();
    post(&mut s, &released_msg(r)).unwrap();
    assert_eq!(s.gpadls().count(), 0);
}

#[test]
fn rescind_while_open_then_guest_close_teardown_release() {
    let mut s = server_with(|c| c.rescind_crossings = RescindCrossings::Refuse);
    connect_and_request(&mut s);
    let (r, h) = open_channel(&mut s, 1, 0x30);
    s.rescind(r).unwrap();
    drain(&mut s);
    assert!(s.channel(r).unwrap().is_open(), "rescind does not close the rings by itself");
    assert_eq!(post(&mut s, &teardown_msg(r, h)), Err(HostError::GpadlInUse(h)));
    assert_eq!(post(&mut s, &modify_msg(r, 1)), Err(HostError::Rescinded(r)));
    drain(&mut s);
    post(&mut s, &close_msg(r)).unwrap();
    assert_eq!(events(&mut s), vec![ServerEvent::Closed { relid: r }]);
    post(&mut s, &teardown_msg(r, h)).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::GPADL_TORNDOWN]);
    post(&mut s, &released_msg(r)).unwrap();
    assert!(s.channel(r).is_none());
}

#[test]
fn release_without_cleanup_leaks_nothing() {
    let mut s = server();
    connect_and_request(&mut s);
    let (r, h) = open_channel(&mut s, 1, 0x40);
    // Half-built GPADL too.
    let msgs = gpadl_messages(r, 0x41, 1, 100);
    post_raw(&mut s, &msgs[0]).unwrap();
    assert_eq!(s.pending_gpadl_count(), 1);
    s.rescind(r).unwrap();
    drain(&mut s);
    post(&mut s, &released_msg(r)).unwrap();
    let ev = events(&mut s);
    assert!(ev.contains(&ServerEvent::Closed { relid: r }));
    assert!(ev.contains(&ServerEvent::GpadlTornDown { relid: r, handle: h }));
    assert_eq!(ev.last(), Some(&ServerEvent::RelidReleased { relid: r }));
    assert_eq!(s.gpadls().count(), 0);
    assert_eq!(s.pending_gpadl_count(), 0);
    assert_eq!(s.gpadl_page_total(), 0);
}

#[test]
fn rescind_mid_gpadl_then_body_is_still_handled() {
    let mut s = server();
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    let msgs = gpadl_messages(r, 0x50, 1, 60);
    post_raw(&mut s, &msgs[0]).unwrap();
    s.rescind(r).unwrap();
    drain(&mut s);
    // The guest had already started: the host finishes what it began.
    for m in &msgs[1..] {
        post_raw(&mut s, m).unwrap();
    }
    match parse(&drain(&mut s)[0]) {
        ChannelMessage::GpadlCreated(c) => assert_eq!(c.gpadl, 0x50),
        other => panic!("{other:?}"),
    }
    post(&mut s, &teardown_msg(r, 0x50)).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::GPADL_TORNDOWN]);
    assert_eq!(s.channel(r).unwrap().state(), ChannelState::Closed);
}

/// Drives one channel through its life and rescinds it after step `k`, then
/// lets a well-behaved guest clean up (finish the GPADL it started, close,
/// tear down, release). Whatever the step, nothing is left behind.
#[test]
fn rescind_at_every_step() {
    const STEPS: usize = 9;
    for k in 0..STEPS {
        let mut s = server();
        let mut offered = false;
        let mut gpadl_msgs_sent = 0usize;
        let msgs = gpadl_messages(1, 0x99, 0x500, 60);
        let mut relid = 0;
        let mut open_state = 0; // 0 closed, 1 opening, 2 open
        let mut gpadl_live = false;
        for step in 0..=k {
            match step {
                0 => relid = offer(&mut s, 1),
                1 => connect(&mut s, Version::WIN10_V5_3),
                2 => {
                    post(&mut s, &ChannelMessage::RequestOffers).unwrap();
                    offered = true;
                }
                3 => {
                    post_raw(&mut s, &msgs[0]).unwrap();
                    gpadl_msgs_sent = 1;
                }
                4 => {
                    for m in &msgs[1..] {
                        post_raw(&mut s, m).unwrap();
                    }
                    gpadl_msgs_sent = msgs.len();
                    gpadl_live = true;
                }
                5 => {
                    post(&mut s, &open_msg(relid, 1, 0x99, 30, 0)).unwrap();
                    open_state = 1;
                }
                6 => {
                    s.complete_open(relid, 0).unwrap();
                    open_state = 2;
                }
                7 => {
                    post(&mut s, &close_msg(relid)).unwrap();
                    open_state = 0;
                }
                8 => {
                    post(&mut s, &teardown_msg(relid, 0x99)).unwrap();
                    gpadl_live = false;
                }
                _ => unreachable!(),
            }
        }
        drain(&mut s);
        events(&mut s);
        s.rescind(relid).unwrap();
        let out = drain(&mut s);
        let ev = events(&mut s);
        if offered {
            assert_eq!(types(&out), vec![MessageType::RESCIND_CHANNEL_OFFER], "step {k}");
        } else {
            assert!(out.is_empty(), "step {k}");
            assert!(s.channel(relid).is_none(), "step {k}");
            assert_eq!(ev, vec![ServerEvent::OfferRemoved { relid }]);
            continue;
        }
        if open_state == 1 {
            assert_eq!(ev, vec![ServerEvent::Closed { relid }], "pending open cancelled at step {k}");
            assert_eq!(s.complete_open(relid, 0), Err(HostApiError::NoOpenPending(relid)));
        }
        // Guest cleanup, as Linux does it after a rescind.
        if gpadl_msgs_sent > 0 && gpadl_msgs_sent < msgs.len() {
            for m in &msgs[gpadl_msgs_sent..] {
                post_raw(&mut s, m).unwrap();
            }
            gpadl_live = true;
        }
        // Close whatever the state: closing a rescinded channel that is not
        // open is accepted too.
        let was_open = s.channel(relid).unwrap().is_open();
        assert_eq!(was_open, open_state == 2, "step {k}");
        post(&mut s, &close_msg(relid)).unwrap();
        assert_eq!(events(&mut s).contains(&ServerEvent::Closed { relid }), was_open, "step {k}");
        if gpadl_live {
            post(&mut s, &teardown_msg(relid, 0x99)).unwrap();
        }
        let out = drain(&mut s);
        assert!(!types(&out).contains(&MessageType::OPEN_CHANNEL_RESULT), "no OpenResult after a rescind (step {k})");
        assert_eq!(types(&out).contains(&MessageType::GPADL_TORNDOWN), gpadl_live, "step {k}");
        post(&mut s, &released_msg(relid)).unwrap();
        assert!(s.channel(relid).is_none(), "step {k}");
        assert_eq!(s.gpadls().count(), 0, "step {k}");
        assert_eq!(s.pending_gpadl_count(), 0, "step {k}");
        assert_eq!(s.gpadl_page_total(), 0, "step {k}");
        assert_eq!(s.counters().total_rejected(), 0, "a well-behaved guest is never refused (step {k})");
        assert_eq!(offer(&mut s, 2), relid, "relid reusable after release (step {k})");
    }
}

#[test]
fn relids_not_offered_yet_are_unknown_to_the_guest() {
    let mut s = server();
    let r = offer(&mut s, 1);
    connect(&mut s, Version::WIN10_V5_3);
    // The guest guesses relid 1 before asking for offers.
    assert_eq!(post_raw(&mut s, &gpadl_messages(r, 1, 0, 8)[0]), Err(HostError::UnknownRelid(r)));
    assert_eq!(post(&mut s, &open_msg(r, 1, 1, 4, 0)), Err(HostError::UnknownRelid(r)));
    assert_eq!(post(&mut s, &close_msg(r)), Err(HostError::UnknownRelid(r)));
    assert_eq!(post(&mut s, &modify_msg(r, 0)), Err(HostError::UnknownRelid(r)));
    drain(&mut s);
    post(&mut s, &ChannelMessage::RequestOffers).unwrap();
    drain(&mut s);
    create_gpadl(&mut s, r, 1, 8);
}
