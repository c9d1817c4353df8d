// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Client version negotiation against a scripted host.

mod client_support;
use client_support::*;
use vmbus_core::client::{ClientError, ClientEvent, ConnectionState, ContactFailure, RejectKind};
use vmbus_core::hv::{HvStatus, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4, VMBUS_MESSAGE_SINT};
use vmbus_core::message::{ChannelMessage, InitiateContact, MessageType};
use vmbus_core::version::Version;

fn contact(p: &Posted) -> InitiateContact {
    match p.parse() {
        ChannelMessage::InitiateContact(ic) => ic,
        other => panic!("expected InitiateContact, got {other:?}"),
    }
}

/// The host accepts only `target`: the guest walks down the preference list,
/// one InitiateContact per version, each on the right connection id with the
/// right union contents, and ends connected at `target`.
#[test]
fn negotiates_each_version() {
    for (n, &target) in Version::GUEST_PREFERENCE.iter().enumerate() {
        let mut h = Harness::new();
        h.client.start(&h.hv).unwrap();
        let mut proposed = Vec::new();
        loop {
            let posted = h.hv.take();
            assert_eq!(posted.len(), 1, "one InitiateContact at a time");
            let ic = contact(&posted[0]);
            let v = Version(ic.vmbus_version_requested);
            proposed.push(v);
            assert_eq!(h.client.state(), ConnectionState::Contacting { version: v });
            assert_eq!(ic.target_vcpu, 0);
            assert_eq!(ic.monitor_page1.get(), MONITOR_PAGES.0);
            assert_eq!(ic.monitor_page2.get(), MONITOR_PAGES.1);
            if v.uses_msg_sint() {
                assert_eq!(posted[0].conn, MESSAGE_CONNECTION_ID_4, "{v}");
                assert_eq!(ic.msg_sint(), VMBUS_MESSAGE_SINT);
                assert_eq!(ic.msg_vtl(), 0);
                assert_eq!(ic.interrupt_page_or_sint.get(), VMBUS_MESSAGE_SINT as u64);
            } else {
                assert_eq!(posted[0].conn, MESSAGE_CONNECTION_ID, "{v}");
                assert_eq!(ic.interrupt_page_or_sint.get(), INTERRUPT_PAGE);
            }
            let accept = v == target;
            h.feed(&version_response(accept, HOST_CONN_ID)).unwrap();
            if accept {
                break;
            }
            assert!(h.take_events().is_empty());
        }
        assert_eq!(proposed, Version::GUEST_PREFERENCE[..=n]);
        let conn = if target.uses_msg_sint() { HOST_CONN_ID } else { MESSAGE_CONNECTION_ID };
        assert_eq!(h.take_events(), vec![ClientEvent::Connected { version: target, msg_conn_id: conn }]);
        assert_eq!(h.client.version(), Some(target));
        assert_eq!(h.client.msg_conn_id(), conn);
        assert_eq!(h.client.counters().version_refusals, n as u64);
        // Later messages use the negotiated connection id.
        h.client.request_offers(&h.hv).unwrap();
        let p = h.hv.take();
        assert_eq!(p[0].conn, conn);
        assert_eq!(p[0].msgtype(), MessageType::REQUEST_OFFERS);
    }
}

#[test]
fn no_common_version() {
    let mut h = Harness::new();
    h.client.start(&h.hv).unwrap();
    for _ in 0..Version::GUEST_PREFERENCE.len() {
        assert_eq!(h.hv.take().len(), 1);
        h.feed(&version_response(false, 0)).unwrap();
    }
    assert!(h.hv.take().is_empty(), "nothing older than 2.4 is proposed");
    assert_eq!(h.take_events(), vec![ClientEvent::ContactFailed(ContactFailure::NoCommonVersion)]);
    assert_eq!(h.client.state(), ConnectionState::Failed);
    // A late response is refused and counted.
    let e = h.feed(&version_response(true, HOST_CONN_ID)).unwrap_err();
    assert!(matches!(e, ClientError::NoRequestOutstanding { .. }));
    assert_eq!(h.client.counters().rejected(RejectKind::NoRequestOutstanding), 1);
    // Restart works.
    h.client.start(&h.hv).unwrap();
    assert_eq!(contact(&h.hv.take()[0]).vmbus_version_requested, Version::WIN10_V5_3.0);
}

#[test]
fn invalid_connection_id_falls_back_to_pre_5_0() {
    let mut h = Harness::new();
    // An old host: connection id 4 does not exist.
    h.hv.set_status(|conn, _| if conn == 4 { HvStatus::INVALID_CONNECTION_ID } else { HvStatus::SUCCESS });
    h.client.start(&h.hv).unwrap();
    let p = h.hv.take();
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].conn, MESSAGE_CONNECTION_ID);
    let ic = contact(&p[0]);
    assert_eq!(Version(ic.vmbus_version_requested), Version::WIN10_V4_1);
    assert_eq!(ic.interrupt_page_or_sint.get(), INTERRUPT_PAGE);
    assert_eq!(h.client.counters().post_failures, 1);
    h.feed(&version_response(false, 0)).unwrap();
    assert_eq!(Version(contact(&h.hv.take()[0]).vmbus_version_requested), Version::WIN10);
    h.feed(&version_response(true, 0)).unwrap();
    assert_eq!(
        h.take_events(),
        vec![ClientEvent::Connected { version: Version::WIN10, msg_conn_id: MESSAGE_CONNECTION_ID }]
    );
}

#[test]
fn invalid_connection_id_on_id_1_is_fatal() {
    let mut h = Harness::new();
    h.hv.set_status(|_, _| HvStatus::INVALID_CONNECTION_ID);
    let e = h.client.start(&h.hv).unwrap_err();
    assert_eq!(e, ClientError::Contact(ContactFailure::Post(HvStatus::INVALID_CONNECTION_ID)));
    assert_eq!(h.client.state(), ConnectionState::Failed);
    // Tried 5.3 on id 4, then 4.1 on id 1.
    assert_eq!(h.client.counters().post_failures, 2);
}

#[test]
fn other_post_failure_is_typed() {
    let mut h = Harness::new();
    h.hv.set_status(|_, _| HvStatus::ACCESS_DENIED);
    assert_eq!(h.client.start(&h.hv), Err(ClientError::Contact(ContactFailure::Post(HvStatus::ACCESS_DENIED))));
    // During the walk down, a failing post ends contact with an event.
    let mut h = Harness::new();
    h.client.start(&h.hv).unwrap();
    h.hv.take();
    h.hv.set_status(|_, _| HvStatus::INSUFFICIENT_BUFFERS);
    h.feed(&version_response(false, 0)).unwrap();
    assert_eq!(h.take_events(), vec![ClientEvent::ContactFailed(ContactFailure::Post(HvStatus::INSUFFICIENT_BUFFERS))]);
    assert_eq!(h.client.state(), ConnectionState::Failed);
}

#[test]
fn version_caps() {
    let mut c = config();
    c.max_version = Some(Version::WIN10);
    c.min_version = Some(Version::WIN8_1);
    let mut h = Harness::with_config(c);
    h.client.start(&h.hv).unwrap();
    let mut seen = Vec::new();
    loop {
        let p = h.hv.take();
        if p.is_empty() {
            break;
        }
        seen.push(Version(contact(&p[0]).vmbus_version_requested));
        h.feed(&version_response(false, 0)).unwrap();
    }
    assert_eq!(seen, [Version::WIN10, Version::WIN8_1]);
    let mut c = config();
    c.max_version = Some(Version::WIN8);
    c.min_version = Some(Version::WIN10);
    let mut h = Harness::with_config(c);
    assert_eq!(h.client.start(&h.hv), Err(ClientError::Contact(ContactFailure::NoCommonVersion)));
}

#[test]
fn bad_connection_id_fails_contact() {
    for bad in [0u32, 0x0100_0000] {
        let mut h = Harness::new();
        h.client.start(&h.hv).unwrap();
        let e = h.feed(&version_response(true, bad)).unwrap_err();
        assert_eq!(e, ClientError::BadConnectionId(bad));
        assert_eq!(h.take_events(), vec![ClientEvent::ContactFailed(ContactFailure::BadConnectionId(bad))]);
        assert_eq!(h.client.state(), ConnectionState::Failed);
        assert_eq!(h.client.counters().rejected(RejectKind::BadConnectionId), 1);
    }
    // Before 5.0 the field is not used (legacy 9-byte responses have none).
    let mut h = Harness::new();
    h.connect_at(Version::WIN8);
}

#[test]
fn start_twice_and_messages_before_contact() {
    let mut h = Harness::new();
    assert_eq!(h.client.request_offers(&h.hv), Err(ClientError::NotConnected));
    let e = h.feed(&offer(1, NET, instance(1), 0)).unwrap_err();
    assert!(matches!(e, ClientError::UnexpectedMessage { state: ConnectionState::Idle, .. }));
    assert!(matches!(h.feed(&version_response(true, 5)), Err(ClientError::NoRequestOutstanding { .. })));
    h.client.start(&h.hv).unwrap();
    assert_eq!(h.client.start(&h.hv), Err(ClientError::AlreadyStarted));
    let e = h.feed(&all_offers()).unwrap_err();
    assert!(matches!(e, ClientError::UnexpectedMessage { .. }));
    assert_eq!(h.client.counters().rejected(RejectKind::UnexpectedMessage), 2);
    h.feed(&version_response(true, HOST_CONN_ID)).unwrap();
    assert_eq!(h.client.start(&h.hv), Err(ClientError::AlreadyStarted));
    assert!(matches!(h.feed(&version_response(true, 5)), Err(ClientError::NoRequestOutstanding { .. })));
    h.client.request_offers(&h.hv).unwrap();
    assert_eq!(h.client.request_offers(&h.hv), Err(ClientError::OffersAlreadyRequested));
}
