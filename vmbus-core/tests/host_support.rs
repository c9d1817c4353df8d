// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Shared helpers for the host server tests (included with `#[path]` by each
//! `host_*.rs` test file). Guest messages are built by hand from the
//! `message.rs` structs, never through the guest's own GPADL code, so a bug
//! shared by both sides cannot hide.
#![cfg(feature = "host")]
#![allow(dead_code)]

use vmbus_core::guid::Guid;
use vmbus_core::host::{OfferSpec, Server, ServerConfig, ServerEvent};
use vmbus_core::hv::{MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4};
use vmbus_core::message::{
    ChannelMessage, CloseChannel, GpaRange, GpadlBody, GpadlHeader, GpadlTeardown, InitiateContact, MessageHeader,
    MessageType, ModifyChannel, OpenChannel, OutgoingMessage, RelidReleased, MAX_USER_DEFINED_BYTES,
};
use vmbus_core::version::Version;
use zerocopy::IntoBytes;

pub const NET: Guid = Guid::must("f8615163-df3e-46c5-913f-f2d2f965ed0e");
pub const SCSI: Guid = Guid::must("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");

pub fn instance(n: u8) -> Guid {
    let mut g = Guid::ZERO;
    g.bytes[0] = n;
    g.bytes[15] = 0xA5;
    g
}

pub fn server() -> Server {
    Server::new(ServerConfig::default()).unwrap()
}

pub fn server_with(f: impl FnOnce(&mut ServerConfig)) -> Server {
    let mut c = ServerConfig::default();
    f(&mut c);
    Server::new(c).unwrap()
}

/// The connection id a well-behaved guest posts on now.
pub fn conn(s: &Server) -> u32 {
    s.connection().map(|c| c.msg_conn_id).unwrap_or(MESSAGE_CONNECTION_ID)
}

pub fn contact_conn(v: Version) -> u32 {
    if v.uses_msg_sint() {
        MESSAGE_CONNECTION_ID_4
    } else {
        MESSAGE_CONNECTION_ID
    }
}

pub fn initiate_contact(v: Version) -> InitiateContact {
    InitiateContact::new(v, 0, 2, 0x1234_5000, (0x10_0000, 0x10_1000))
}

pub fn bytes_of(m: &ChannelMessage<'_>) -> Vec<u8> {
    OutgoingMessage::new(m).unwrap().as_bytes().to_vec()
}

/// Posts a message on the connection id a good guest would use.
pub fn post(s: &mut Server, m: &ChannelMessage<'_>) -> Result<(), vmbus_core::host::HostError> {
    let c = match m {
        ChannelMessage::InitiateContact(ic) => contact_conn(Version(ic.vmbus_version_requested)),
        _ => conn(s),
    };
    s.handle_guest_message(c, &bytes_of(m))
}

pub fn post_raw(s: &mut Server, bytes: &[u8]) -> Result<(), vmbus_core::host::HostError> {
    let c = conn(s);
    s.handle_guest_message(c, bytes)
}

pub fn drain(s: &mut Server) -> Vec<OutgoingMessage> {
    core::iter::from_fn(|| s.pop_outgoing()).collect()
}

pub fn events(s: &mut Server) -> Vec<ServerEvent> {
    core::iter::from_fn(|| s.pop_event()).collect()
}

pub fn types(out: &[OutgoingMessage]) -> Vec<MessageType> {
    out.iter().map(|o| o.message_type()).collect()
}

/// Parses an outgoing message into an owned, fixed-size variant.
pub fn parse(o: &OutgoingMessage) -> ChannelMessage<'_> {
    ChannelMessage::parse(o.as_bytes()).expect("server emitted an unparseable message")
}

/// Contacts at `v` and checks acceptance; drains queues.
pub fn connect(s: &mut Server, v: Version) {
    post(s, &ChannelMessage::InitiateContact(initiate_contact(v))).unwrap();
    let out = drain(s);
    assert_eq!(out.len(), 1);
    match parse(&out[0]) {
        ChannelMessage::VersionResponse(r) => assert_eq!(r.version_supported, 1),
        other => panic!("{other:?}"),
    }
    events(s);
}

/// Contact at 5.3, RequestOffers, drain everything.
pub fn connect_and_request(s: &mut Server) {
    connect(s, Version::WIN10_V5_3);
    post(s, &ChannelMessage::RequestOffers).unwrap();
    drain(s);
    events(s);
}

pub fn offer(s: &mut Server, n: u8) -> u32 {
    s.add_offer(OfferSpec::new(NET, instance(n))).unwrap()
}

/// GpadlHeader + GpadlBody messages for one range of `pfns`, built by hand.
/// Bodies are numbered from `first_msgnumber`.
pub fn gpadl_messages_range(
    relid: u32,
    handle: u32,
    byte_offset: u32,
    byte_count: u32,
    pfns: &[u64],
    first_msgnumber: u32,
) -> Vec<Vec<u8>> {
    let buflen = 8 + 8 * pfns.len();
    let header = GpadlHeader {
        header: MessageHeader::new(MessageType::GPADL_HEADER),
        child_relid: relid,
        gpadl: handle,
        range_buflen: buflen as u16,
        rangecount: 1,
    };
    let range = GpaRange { byte_count, byte_offset };
    let mut first = header.as_bytes().to_vec();
    first.extend_from_slice(range.as_bytes());
    let in_header = pfns.len().min(26);
    for p in &pfns[..in_header] {
        first.extend_from_slice(&p.to_le_bytes());
    }
    assert!(first.len() <= 240);
    let mut msgs = vec![first];
    for (i, chunk) in pfns[in_header..].chunks(28).enumerate() {
        let body = GpadlBody {
            header: MessageHeader::new(MessageType::GPADL_BODY),
            msgnumber: first_msgnumber + i as u32,
            gpadl: handle,
        };
        let mut b = body.as_bytes().to_vec();
        for p in chunk {
            b.extend_from_slice(&p.to_le_bytes());
        }
        assert!(b.len() <= 240);
        msgs.push(b);
    }
    msgs
}

/// Page-aligned GPADL of `pages` distinct PFNs starting at `base_pfn`.
pub fn gpadl_messages(relid: u32, handle: u32, base_pfn: u64, pages: usize) -> Vec<Vec<u8>> {
    let pfns: Vec<u64> = (0..pages as u64).map(|i| base_pfn + i * 3).collect();
    gpadl_messages_range(relid, handle, 0, (pages * 4096) as u32, &pfns, 1)
}

/// Creates a GPADL and checks the success reply.
pub fn create_gpadl(s: &mut Server, relid: u32, handle: u32, pages: usize) {
    // Only the events of this creation are checked below.
    events(s);
    for m in gpadl_messages(relid, handle, 0x1000, pages) {
        post_raw(s, &m).unwrap();
    }
    let out = drain(s);
    assert_eq!(out.len(), 1, "{out:?}");
    match parse(&out[0]) {
        ChannelMessage::GpadlCreated(c) => {
            assert_eq!((c.child_relid, c.gpadl, c.creation_status), (relid, handle, 0));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(events(s), vec![ServerEvent::GpadlCreated { relid, handle }]);
}

pub fn open_msg(relid: u32, openid: u32, gpadl: u32, offset: u32, vp: u32) -> ChannelMessage<'static> {
    let mut user_data = [0u8; MAX_USER_DEFINED_BYTES];
    user_data[0] = 0x5A;
    user_data[119] = 0x7E;
    ChannelMessage::OpenChannel(OpenChannel {
        header: MessageHeader::new(MessageType::OPEN_CHANNEL),
        child_relid: relid,
        openid,
        ringbuffer_gpadl_handle: gpadl,
        target_vp: vp,
        downstream_ringbuffer_pageoffset: offset,
        user_data,
    })
}

pub fn close_msg(relid: u32) -> ChannelMessage<'static> {
    ChannelMessage::CloseChannel(CloseChannel {
        header: MessageHeader::new(MessageType::CLOSE_CHANNEL),
        child_relid: relid,
    })
}

pub fn teardown_msg(relid: u32, handle: u32) -> ChannelMessage<'static> {
    ChannelMessage::GpadlTeardown(GpadlTeardown {
        header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
        child_relid: relid,
        gpadl: handle,
    })
}

pub fn released_msg(relid: u32) -> ChannelMessage<'static> {
    ChannelMessage::RelidReleased(RelidReleased {
        header: MessageHeader::new(MessageType::RELID_RELEASED),
        child_relid: relid,
    })
}

pub fn modify_msg(relid: u32, vp: u32) -> ChannelMessage<'static> {
    ChannelMessage::ModifyChannel(ModifyChannel {
        header: MessageHeader::new(MessageType::MODIFY_CHANNEL),
        child_relid: relid,
        target_vp: vp,
    })
}

/// Offer + 8-page ring GPADL + open accepted: returns (relid, gpadl handle).
pub fn open_channel(s: &mut Server, n: u8, handle: u32) -> (u32, u32) {
    let relid = offer(s, n);
    drain(s);
    create_gpadl(s, relid, handle, 8);
    post(s, &open_msg(relid, relid, handle, 4, 0)).unwrap();
    s.complete_open(relid, 0).unwrap();
    let out = drain(s);
    match parse(&out[0]) {
        ChannelMessage::OpenResult(r) => assert_eq!(r.status, 0),
        other => panic!("{other:?}"),
    }
    events(s);
    (relid, handle)
}
