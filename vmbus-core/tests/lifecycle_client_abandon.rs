// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! `Client::abandon`: the glue stops waiting on a channel. Pending
//! operations are completed locally with no event; exactly one late answer
//! per abandoned operation is accepted and dropped, a second is rejected;
//! nothing new starts on the channel; rescind, release and unload still work.

mod client_support;

use client_support::*;
use vmbus_core::client::{ClientError, ModifyOutcome, RejectKind};
use vmbus_core::gpadl::GpaRangeRef;
use vmbus_core::message::MessageType;

const RELID: u32 = 5;

#[test]
fn abandon_a_gpadl_create() {
    let mut h = Harness::connected();
    h.offer_primary(RELID);
    let (handle, _) = h.create_gpadl(RELID, &[1, 2, 3]);
    assert_eq!(h.client.abandon(RELID), Ok(1));
    assert!(h.client.is_abandoned(RELID));
    assert!(h.hv.take().is_empty(), "abandon posts nothing");
    assert!(h.take_events().is_empty(), "and reports nothing");
    assert_eq!(h.client.gpadls(RELID).count(), 0);
    // The late answer is dropped, once.
    h.feed(&gpadl_created(RELID, handle, 0)).unwrap();
    assert!(h.take_events().is_empty());
    assert_eq!(h.client.counters().late_after_abandon, 1);
    assert_eq!(h.client.counters().late_after_rescind, 0);
    assert_eq!(
        h.feed(&gpadl_created(RELID, handle, 0)),
        Err(ClientError::UnknownGpadl { msgtype: MessageType::GPADL_CREATED, handle })
    );
    assert_eq!(h.client.counters().rejected(RejectKind::UnknownGpadl), 1);
}

#[test]
fn abandon_an_open() {
    let mut h = Harness::connected();
    h.offer_primary(RELID);
    let ring = h.gpadl_ready(RELID, 4);
    h.client.open_channel(RELID, &open_params(ring), &h.hv).unwrap();
    h.hv.take();
    assert_eq!(h.client.abandon(RELID), Ok(1));
    assert_eq!(h.client.channel(RELID).unwrap().state, vmbus_core::client::ChannelState::Closed);
    h.feed(&open_result(RELID, RELID, 0)).unwrap();
    assert!(h.take_events().is_empty());
    assert_eq!(h.client.counters().late_after_abandon, 1);
    assert!(h.feed(&open_result(RELID, RELID, 0)).is_err());
    // A late answer with the wrong openid is still a violation.
    let mut h2 = Harness::connected();
    h2.offer_primary(RELID);
    let ring = h2.gpadl_ready(RELID, 4);
    h2.client.open_channel(RELID, &open_params(ring), &h2.hv).unwrap();
    h2.client.abandon(RELID).unwrap();
    assert!(matches!(h2.feed(&open_result(RELID, 99, 0)), Err(ClientError::BadOpenId { .. })));
}

#[test]
fn abandon_a_teardown_and_a_modify() {
    let mut h = Harness::connected();
    let ring = h.open(RELID);
    let extra = h.gpadl_ready(RELID, 2);
    assert_eq!(h.client.modify_channel(RELID, 3, &h.hv), Ok(ModifyOutcome::AwaitResponse));
    h.client.teardown_gpadl(RELID, extra, &h.hv).unwrap();
    h.hv.take();
    assert_eq!(h.client.abandon(RELID), Ok(2));
    assert!(!h.client.channel(RELID).unwrap().modify_pending);
    h.feed(&gpadl_torndown(extra)).unwrap();
    h.feed(&modify_response(RELID, 0)).unwrap();
    assert!(h.take_events().is_empty());
    assert_eq!(h.client.counters().late_after_abandon, 2);
    assert!(h.feed(&gpadl_torndown(extra)).is_err());
    assert!(h.feed(&modify_response(RELID, 0)).is_err());
    // The open channel can still be closed and its ring torn down.
    h.client.close_channel(RELID, &h.hv).unwrap();
    h.client.teardown_gpadl(RELID, ring, &h.hv).unwrap();
    h.feed(&gpadl_torndown(ring)).unwrap();
    assert_eq!(h.take_events().len(), 1);
}

#[test]
fn nothing_new_starts_on_an_abandoned_channel() {
    let mut h = Harness::connected();
    h.open(RELID);
    assert_eq!(h.client.abandon(RELID), Ok(0), "nothing was pending");
    assert_eq!(h.client.abandon(RELID), Ok(0), "abandon twice");
    let e = ClientError::ChannelAbandoned(RELID);
    assert_eq!(h.client.create_gpadl(RELID, GpaRangeRef::whole_pages(&[1]), &h.hv), Err(e));
    assert_eq!(h.client.modify_channel(RELID, 1, &h.hv), Err(e));
    h.client.close_channel(RELID, &h.hv).unwrap();
    assert_eq!(h.client.open_channel(RELID, &open_params(1), &h.hv), Err(e));
    assert_eq!(h.client.abandon(77), Err(ClientError::NoSuchChannel(77)));
}

#[test]
fn rescind_and_release_after_abandon() {
    let mut h = Harness::connected();
    h.offer_primary(RELID);
    let (handle, _) = h.create_gpadl(RELID, &[1, 2]);
    h.client.abandon(RELID).unwrap();
    h.feed(&rescind(RELID)).unwrap();
    // Nothing was pending any more: only the rescind is reported.
    assert_eq!(h.take_events(), vec![vmbus_core::client::ClientEvent::Rescinded { relid: RELID }]);
    // The answer owed since the abandon is still dropped once.
    h.feed(&gpadl_created(RELID, handle, 0)).unwrap();
    assert_eq!(h.client.counters().late_after_rescind, 1, "counted as crossing the rescind");
    h.client.release_relid(RELID, &h.hv).unwrap();
    assert!(h.client.channel(RELID).is_none());
    // The relid may be offered afresh, not abandoned.
    h.offer_primary(RELID);
    assert!(!h.client.is_abandoned(RELID));
}

#[test]
fn unload_clears_abandoned_channels() {
    let mut h = Harness::connected();
    h.offer_primary(RELID);
    h.create_gpadl(RELID, &[1]);
    h.client.abandon(RELID).unwrap();
    h.client.unload(&h.hv).unwrap();
    h.feed(&unload_response()).unwrap();
    assert_eq!(h.take_events(), vec![vmbus_core::client::ClientEvent::UnloadComplete]);
    assert!(!h.client.is_abandoned(RELID));
}
