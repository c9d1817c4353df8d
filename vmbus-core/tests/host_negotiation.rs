// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Host server: version negotiation, connection ids, contact errors.
#![cfg(feature = "host")]

#[path = "host_support.rs"]
mod support;

use support::*;
use vmbus_core::host::{
    ConfigError, HostError, Server, ServerConfig, ServerEvent, ALL_VERSIONS, CONNECTION_STATE_SUCCESSFUL,
};
use vmbus_core::hv::{MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4};
use vmbus_core::message::{ChannelMessage, InitiateContact, MessageType};
use vmbus_core::version::Version;

fn version_response(s: &mut Server) -> vmbus_core::message::VersionResponse {
    let out = drain(s);
    assert_eq!(out.len(), 1, "{out:?}");
    match parse(&out[0]) {
        ChannelMessage::VersionResponse(r) => r,
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_version_is_accepted_on_its_connection_id() {
    for v in ALL_VERSIONS {
        let mut s = server();
        assert!(s.is_valid_message_connection(MESSAGE_CONNECTION_ID));
        assert!(s.is_valid_message_connection(MESSAGE_CONNECTION_ID_4));
        let c = contact_conn(v);
        s.handle_guest_message(c, &bytes_of(&ChannelMessage::InitiateContact(initiate_contact(v)))).unwrap();
        let r = version_response(&mut s);
        assert_eq!(r.version_supported, 1, "{v}");
        assert_eq!(r.connection_state, CONNECTION_STATE_SUCCESSFUL);
        let info = *s.connection().unwrap();
        assert_eq!(info.version, v);
        if v.uses_msg_sint() {
            assert_eq!(r.msg_conn_id, 0x2A, "{v}");
            assert_eq!(info.msg_sint, Some(2));
            assert_eq!(info.interrupt_page, None);
            assert!(s.is_valid_message_connection(0x2A));
            assert!(!s.is_valid_message_connection(MESSAGE_CONNECTION_ID_4));
            assert!(!s.is_valid_message_connection(MESSAGE_CONNECTION_ID));
        } else {
            assert_eq!(info.msg_sint, None);
            assert_eq!(info.interrupt_page, Some(0x1234_5000));
            assert!(s.is_valid_message_connection(MESSAGE_CONNECTION_ID));
            assert!(!s.is_valid_message_connection(0x2A));
            assert!(!s.is_valid_message_connection(MESSAGE_CONNECTION_ID_4));
        }
        assert_eq!((info.monitor_page1, info.monitor_page2), (0x10_0000, 0x10_1000));
        assert_eq!(events(&mut s), vec![ServerEvent::Connected(info)]);
        assert_eq!(s.counters().sent[MessageType::VERSION_RESPONSE.0 as usize], 1);
    }
}

#[test]
fn custom_msg_conn_id_is_returned_and_enforced() {
    let mut s = server_with(|c| c.msg_conn_id = 0x77);
    connect(&mut s, Version::WIN10_V5_1);
    assert_eq!(conn(&s), 0x77);
    assert_eq!(
        s.handle_guest_message(0x2A, &bytes_of(&ChannelMessage::RequestOffers)),
        Err(HostError::WrongConnection(0x2A))
    );
    assert_eq!(s.counters().wrong_connection, 1);
    assert!(drain(&mut s).is_empty());
    s.handle_guest_message(0x77, &bytes_of(&ChannelMessage::RequestOffers)).unwrap();
    assert_eq!(types(&drain(&mut s)), vec![MessageType::ALL_OFFERS_DELIVERED]);
}

#[test]
fn version_5_needs_connection_4_and_older_need_1() {
    let mut s = server();
    let v5 = bytes_of(&ChannelMessage::InitiateContact(initiate_contact(Version::WIN10_V5)));
    assert_eq!(
        s.handle_guest_message(MESSAGE_CONNECTION_ID, &v5),
        Err(HostError::ContactOnWrongConnection { version: Version::WIN10_V5, connection_id: 1 })
    );
    let v4 = bytes_of(&ChannelMessage::InitiateContact(initiate_contact(Version::WIN10_V4_1)));
    assert_eq!(
        s.handle_guest_message(MESSAGE_CONNECTION_ID_4, &v4),
        Err(HostError::ContactOnWrongConnection { version: Version::WIN10_V4_1, connection_id: 4 })
    );
    assert!(drain(&mut s).is_empty());
    assert!(s.connection().is_none());
    assert_eq!(s.counters().rejected[MessageType::INITIATE_CONTACT.0 as usize], 2);
    // Any other connection id is not a message connection at all.
    assert_eq!(s.handle_guest_message(0x2A, &v5), Err(HostError::WrongConnection(0x2A)));
    s.handle_guest_message(MESSAGE_CONNECTION_ID_4, &v5).unwrap();
    assert_eq!(version_response(&mut s).version_supported, 1);
}

#[test]
fn refused_versions_then_fallback() {
    // A host that only speaks 4.0 and 3.0: the guest walks down from 5.3.
    let mut s = server_with(|c| c.versions = vec![Version::WIN10, Version::WIN8_1]);
    assert!(!s.is_valid_message_connection(MESSAGE_CONNECTION_ID_4), "old host has no connection 4");
    assert!(s.is_valid_message_connection(MESSAGE_CONNECTION_ID));
    let v53 = bytes_of(&ChannelMessage::InitiateContact(initiate_contact(Version::WIN10_V5_3)));
    assert_eq!(s.handle_guest_message(MESSAGE_CONNECTION_ID_4, &v53), Err(HostError::WrongConnection(4)));
    for v in [Version::new(4, 7), Version::WIN10_V4_1] {
        post(&mut s, &ChannelMessage::InitiateContact(initiate_contact(v))).unwrap();
        let r = version_response(&mut s);
        assert_eq!(r.version_supported, 0);
        assert_eq!(r.msg_conn_id, 0);
        assert!(s.connection().is_none());
    }
    assert_eq!(s.counters().versions_refused, 2);
    post(&mut s, &ChannelMessage::InitiateContact(initiate_contact(Version::WIN10))).unwrap();
    assert_eq!(version_response(&mut s).version_supported, 1);
    assert_eq!(s.connection().unwrap().version, Version::WIN10);
}

#[test]
fn unknown_version_is_refused() {
    let mut s = server();
    for raw in [0x0006_0000u32, 0x0002_0003, 0] {
        let mut ic = initiate_contact(Version::WIN10_V5);
        ic.vmbus_version_requested = raw;
        let c = contact_conn(Version(raw));
        s.handle_guest_message(c, &bytes_of(&ChannelMessage::InitiateContact(ic))).unwrap();
        assert_eq!(version_response(&mut s).version_supported, 0, "{raw:#x}");
    }
    assert!(s.connection().is_none());
    assert_eq!(s.counters().versions_refused, 3);
}

#[test]
fn bad_vcpu_and_sint_are_refused_with_a_reply() {
    let mut s = server_with(|c| c.vp_count = 4);
    let mut ic = initiate_contact(Version::WIN10_V5_2);
    ic.target_vcpu = 4;
    assert_eq!(post(&mut s, &ChannelMessage::InitiateContact(ic)), Err(HostError::BadVp(4)));
    assert_eq!(version_response(&mut s).version_supported, 0);
    let mut ic = initiate_contact(Version::WIN10_V5_2);
    ic.interrupt_page_or_sint = InitiateContact::sint_union(16, 0);
    assert_eq!(post(&mut s, &ChannelMessage::InitiateContact(ic)), Err(HostError::BadSint(16)));
    assert_eq!(version_response(&mut s).version_supported, 0);
    assert!(s.connection().is_none());
    let mut ic = initiate_contact(Version::WIN10_V5_2);
    ic.target_vcpu = 3;
    ic.interrupt_page_or_sint = InitiateContact::sint_union(5, 0);
    post(&mut s, &ChannelMessage::InitiateContact(ic)).unwrap();
    assert_eq!(version_response(&mut s).version_supported, 1);
    assert_eq!(s.connection().unwrap().msg_sint, Some(5));
    assert_eq!(s.connection().unwrap().target_vcpu, 3);
}

#[test]
fn contact_while_connected_is_rejected() {
    let mut s = server();
    connect(&mut s, Version::WIN8_1);
    let again = bytes_of(&ChannelMessage::InitiateContact(initiate_contact(Version::WIN8_1)));
    assert_eq!(s.handle_guest_message(1, &again), Err(HostError::AlreadyConnected));
    assert!(drain(&mut s).is_empty());
    assert_eq!(s.connection().unwrap().version, Version::WIN8_1);
}

#[test]
fn messages_before_contact_are_rejected() {
    let mut s = server();
    for m in [ChannelMessage::RequestOffers, ChannelMessage::Unload, close_msg(1), released_msg(1)] {
        let t = m.message_type();
        assert_eq!(s.handle_guest_message(1, &bytes_of(&m)), Err(HostError::NotConnected(t)));
    }
    assert_eq!(s.counters().total_rejected(), 4);
    assert!(drain(&mut s).is_empty());
    assert!(events(&mut s).is_empty());
}

#[test]
fn host_only_and_malformed_messages_are_rejected() {
    let mut s = server();
    connect(&mut s, Version::WIN10_V5_3);
    let c = conn(&s);
    assert_eq!(
        s.handle_guest_message(c, &bytes_of(&ChannelMessage::UnloadResponse)),
        Err(HostError::NotGuestMessage(MessageType::UNLOAD_RESPONSE))
    );
    assert_eq!(
        s.handle_guest_message(c, &bytes_of(&ChannelMessage::AllOffersDelivered)),
        Err(HostError::NotGuestMessage(MessageType::ALL_OFFERS_DELIVERED))
    );
    assert!(matches!(s.handle_guest_message(c, &[0u8; 4]), Err(HostError::Malformed(_))));
    assert!(matches!(s.handle_guest_message(c, &[5, 0, 0, 0, 0, 0, 0, 0, 1]), Err(HostError::Malformed(_))));
    assert!(matches!(s.handle_guest_message(c, &[19, 0, 0, 0, 0, 0, 0, 0]), Err(HostError::Malformed(_))));
    assert_eq!(s.counters().malformed, 3);
    assert_eq!(s.counters().rejected[MessageType::OPEN_CHANNEL.0 as usize], 1);
    let tl = [21u8, 0, 0, 0, 0, 0, 0, 0].iter().copied().chain([0u8; 32]).collect::<Vec<u8>>();
    assert_eq!(s.handle_guest_message(c, &tl), Err(HostError::Unsupported(MessageType::TL_CONNECT_REQUEST)));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn config_is_validated() {
    let bad = |f: fn(&mut ServerConfig)| {
        let mut c = ServerConfig::default();
        f(&mut c);
        Server::new(c).err()
    };
    assert_eq!(bad(|c| c.versions.clear()), Some(ConfigError::NoVersions));
    assert_eq!(bad(|c| c.max_relid = 2048), Some(ConfigError::BadMaxRelid(2048)));
    assert_eq!(bad(|c| c.max_relid = 0), Some(ConfigError::BadMaxRelid(0)));
    assert_eq!(bad(|c| c.msg_conn_id = 2), Some(ConfigError::BadMsgConnId(2)));
    assert_eq!(bad(|c| c.msg_conn_id = 0x1005), Some(ConfigError::BadMsgConnId(0x1005)));
    assert_eq!(bad(|c| c.msg_conn_id = 0x0100_0000), Some(ConfigError::BadMsgConnId(0x0100_0000)));
    assert_eq!(bad(|c| c.signal_connection_base = 2), Some(ConfigError::BadSignalBase(2)));
    assert_eq!(bad(|c| c.signal_connection_base = 0x00FF_FF00), Some(ConfigError::BadSignalBase(0x00FF_FF00)));
    assert_eq!(bad(|c| c.outbox_capacity = 0), Some(ConfigError::ZeroLimit));
    assert_eq!(bad(|c| c.msg_conn_id = 4), None);
}
