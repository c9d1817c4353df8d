// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Independent check of the channel-message and SynIC/post-message wire
//! formats against the golden vectors compiled from Linux's definitions
//! (`shared/vectors/vmbus-messages.json`).
//!
//! For every vector: decode the bytes with our parser and compare every listed
//! field (bitfields through the mask rule), then rebuild the message from the
//! listed fields with our structs and `emit` into a zeroed buffer and compare
//! byte for byte. For every layout: compare `size_of` and every field offset
//! and size with `offset_of!` of our structs. A vector or layout that appears
//! in the file without a handler here fails the test, and every field of a
//! vector must be looked at (see `common::Fields::assert_all_used`).

mod common;

use common::{hex, load, Fields};
use core::mem::{offset_of, size_of};
use serde_json::Value;
use vmbus_core::guid::Guid;
use vmbus_core::hv::{
    HvMessage, HvMessageHeader, HvPostMessageInput, CONNECTION_ID_MASK, MESSAGE_CONNECTION_ID_4, MESSAGE_FLAG_PENDING,
    MESSAGE_PAYLOAD_SIZE, VMBUS_MESSAGE_TYPE,
};
use vmbus_core::message::*;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, FromZeros, IntoBytes};

const FILE: &str = "vmbus-messages.json";

/// Vectors we deliberately do not decode/encode, with the reason. Empty today:
/// every vector in the file has a handler below.
const VECTORS_NOT_MODELLED: &[(&str, &str)] = &[];

/// Layouts with no struct of ours, with the reason.
const LAYOUTS_NOT_MODELLED: &[(&str, &str)] = &[
    (
        "vmbus_channel_query_vmbus_version",
        "declared by Linux but carried by no message type (types 18..=20 are unused); ChannelMessage::parse rejects them",
    ),
    (
        "hv_monitor_page",
        "the monitor page (monitored notification) is not modelled in vmbus-core yet: channels are signalled with HvSignalEvent",
    ),
];

// ---------------------------------------------------------------------------
// helpers

fn header(f: &Fields, prefix: &str) -> MessageHeader {
    MessageHeader {
        msgtype: MessageType(f.int(&format!("{prefix}msgtype")) as u32),
        padding: f.int(&format!("{prefix}padding")) as u32,
    }
}

fn check_header(f: &Fields, prefix: &str, h: &MessageHeader) {
    f.check_int(&format!("{prefix}msgtype"), h.msgtype.0 as u64);
    f.check_int(&format!("{prefix}padding"), h.padding as u64);
}

/// Emits `msg` into a zeroed buffer of the vector's size and compares.
fn emit_matches(f: &Fields, msg: &ChannelMessage<'_>, want: &[u8]) {
    let mut buf = vec![0u8; want.len()];
    let n = msg.emit(&mut buf).unwrap_or_else(|e| panic!("{}: emit: {e}", f.name));
    assert_eq!(n, want.len(), "{}: emitted length", f.name);
    assert_eq!(buf, want, "{}: emitted bytes differ", f.name);
    // One byte less must be refused, not truncated.
    let mut short = vec![0u8; want.len() - 1];
    assert_eq!(msg.emit(&mut short), Err(MessageError::BufferTooSmall), "{}", f.name);
}

fn parse(f: &Fields, bytes: &[u8]) -> ChannelMessage<'static> {
    let leaked: &'static [u8] = Box::leak(bytes.to_vec().into_boxed_slice());
    ChannelMessage::parse(leaked).unwrap_or_else(|e| panic!("{}: parse: {e}", f.name))
}

macro_rules! expect_variant {
    ($f:expr, $msg:expr, $variant:ident) => {
        match $msg {
            ChannelMessage::$variant(m) => m,
            other => panic!("{}: parsed as {other:?}", $f.name),
        }
    };
}

/// Pages spanned by a GPA range (the rule in the vector's note).
fn pages_spanned(r: &GpaRange) -> usize {
    (r.byte_offset as usize + r.byte_count as usize).div_ceil(4096)
}

// ---------------------------------------------------------------------------
// vectors

fn offer_channel(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), OfferChannel);
    check_header(f, "header.", &m.header);
    f.check_bytes("offer.if_type", &m.if_type.bytes);
    f.check_bytes("offer.if_instance", &m.if_instance.bytes);
    f.check_int("offer.reserved1", m.reserved1.get());
    f.check_int("offer.reserved2", m.reserved2.get());
    f.check_int("offer.chn_flags", m.chn_flags as u64);
    assert_eq!(m.flags().bits() as u64, f.int("offer.chn_flags"));
    assert!(m.flags().contains(OfferFlags::ENUMERATE_DEVICE_INTERFACE | OfferFlags::REQUEST_MONITORED_NOTIFICATION));
    f.check_int("offer.mmio_megabytes", m.mmio_megabytes as u64);
    f.check_bytes("offer.u.std.user_def", &m.user_defined);
    f.check_int("offer.sub_channel_index", m.sub_channel_index as u64);
    f.check_int("offer.reserved3", m.reserved3 as u64);
    f.check_int("child_relid", m.child_relid as u64);
    f.check_int("monitorid", m.monitor_id as u64);
    f.check_int("monitor_allocated", m.monitor_allocated as u64);
    f.check_int("reserved", m.monitor_allocated as u64);
    assert_eq!(m.has_monitor(), f.int("monitor_allocated") == 1, "{}: has_monitor", f.name);
    f.check_int("is_dedicated_interrupt", m.is_dedicated_interrupt as u64);
    f.check_int("reserved1", m.is_dedicated_interrupt as u64);
    assert_eq!(m.dedicated_interrupt(), f.int("is_dedicated_interrupt") == 1, "{}: dedicated", f.name);
    f.check_int("connection_id", m.connection_id as u64);

    let built = OfferChannel {
        header: header(f, "header."),
        if_type: Guid { bytes: f.array("offer.if_type") },
        if_instance: Guid { bytes: f.array("offer.if_instance") },
        reserved1: U64::new(f.int("offer.reserved1")),
        reserved2: U64::new(f.int("offer.reserved2")),
        chn_flags: f.int("offer.chn_flags") as u16,
        mmio_megabytes: f.int("offer.mmio_megabytes") as u16,
        user_defined: f.array("offer.u.std.user_def"),
        sub_channel_index: f.int("offer.sub_channel_index") as u16,
        reserved3: f.int("offer.reserved3") as u16,
        child_relid: f.int("child_relid") as u32,
        monitor_id: f.int("monitorid") as u8,
        monitor_allocated: f.unit(&["monitor_allocated", "reserved"]) as u8,
        is_dedicated_interrupt: f.unit(&["is_dedicated_interrupt", "reserved1"]) as u16,
        connection_id: f.int("connection_id") as u32,
    };
    emit_matches(f, &ChannelMessage::OfferChannel(built), bytes);
}

fn rescind_offer(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), RescindChannelOffer);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    let built = RescindChannelOffer { header: header(f, "header."), child_relid: f.int("child_relid") as u32 };
    emit_matches(f, &ChannelMessage::RescindChannelOffer(built), bytes);
}

/// REQUESTOFFERS, ALLOFFERS_DELIVERED, UNLOAD, UNLOAD_RESPONSE: the variants
/// carry no fields, so the header is checked through `MessageHeader` and the
/// encode side through `MessageHeader` too; `emit` of the variant itself
/// writes the same type with padding zero (the protocol's "zero on send").
fn header_only(f: &Fields, bytes: &[u8], want: ChannelMessage<'static>) {
    let m = parse(f, bytes);
    assert_eq!(m, want, "{}", f.name);
    let (h, rest) = MessageHeader::read_from_prefix(bytes).expect("8 bytes");
    assert!(rest.is_empty());
    check_header(f, "", &h);
    assert_eq!(m.message_type(), h.msgtype);
    assert_eq!(header(f, "").as_bytes(), bytes, "{}: header encode", f.name);
    let mut buf = [0xFFu8; 8];
    assert_eq!(m.emit(&mut buf), Ok(8));
    assert_eq!(&buf[..4], &bytes[..4], "{}: emitted type", f.name);
    assert_eq!(&buf[4..], &[0; 4], "{}: emitted padding", f.name);
}

fn open_channel(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), OpenChannel);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    f.check_int("openid", m.openid as u64);
    f.check_int("ringbuffer_gpadlhandle", m.ringbuffer_gpadl_handle as u64);
    f.check_int("target_vp", m.target_vp as u64);
    f.check_int("downstream_ringbuffer_pageoffset", m.downstream_ringbuffer_pageoffset as u64);
    f.check_bytes("userdata", &m.user_data);
    let built = OpenChannel {
        header: header(f, "header."),
        child_relid: f.int("child_relid") as u32,
        openid: f.int("openid") as u32,
        ringbuffer_gpadl_handle: f.int("ringbuffer_gpadlhandle") as u32,
        target_vp: f.int("target_vp") as u32,
        downstream_ringbuffer_pageoffset: f.int("downstream_ringbuffer_pageoffset") as u32,
        user_data: f.array("userdata"),
    };
    emit_matches(f, &ChannelMessage::OpenChannel(built), bytes);
}

fn open_result(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), OpenResult);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    f.check_int("openid", m.openid as u64);
    f.check_int("status", m.status as u64);
    let built = OpenResult {
        header: header(f, "header."),
        child_relid: f.int("child_relid") as u32,
        openid: f.int("openid") as u32,
        status: f.int("status") as u32,
    };
    emit_matches(f, &ChannelMessage::OpenResult(built), bytes);
}

fn close_channel(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), CloseChannel);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    let built = CloseChannel { header: header(f, "header."), child_relid: f.int("child_relid") as u32 };
    emit_matches(f, &ChannelMessage::CloseChannel(built), bytes);
}

fn gpadl_header(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), GpadlHeader);
    check_header(f, "header.", &m.fixed.header);
    f.check_int("child_relid", m.fixed.child_relid as u64);
    f.check_int("gpadl", m.fixed.gpadl as u64);
    f.check_int("range_buflen", m.fixed.range_buflen as u64);
    f.check_int("rangecount", m.fixed.rangecount as u64);
    // Everything fits in this one message, so all range bytes are carried.
    assert_eq!(m.range_bytes.len(), m.fixed.range_buflen as usize, "{}: carried range bytes", f.name);

    // Walk the ranges independently of any library walker.
    let mut pos = 0usize;
    let mut rebuilt = Vec::new();
    for r in 0..m.fixed.rangecount as usize {
        let (range, _) = GpaRange::read_from_prefix(&m.range_bytes[pos..]).expect("range record");
        f.check_int(&format!("range[{r}].byte_count"), range.byte_count as u64);
        f.check_int(&format!("range[{r}].byte_offset"), range.byte_offset as u64);
        pos += size_of::<GpaRange>();
        let built_range = GpaRange {
            byte_count: f.int(&format!("range[{r}].byte_count")) as u32,
            byte_offset: f.int(&format!("range[{r}].byte_offset")) as u32,
        };
        rebuilt.extend_from_slice(built_range.as_bytes());
        let pfns: Vec<u64> = u64s(&m.range_bytes[pos..]).take(pages_spanned(&range)).collect();
        assert_eq!(pfns.len(), pages_spanned(&range), "{}: range {r} PFNs", f.name);
        for (i, pfn) in pfns.iter().enumerate() {
            let path = format!("range[{r}].pfn_array[{i}]");
            f.check_int(&path, *pfn);
            rebuilt.extend_from_slice(&f.int(&path).to_le_bytes());
        }
        pos += 8 * pfns.len();
    }
    assert_eq!(pos, m.range_bytes.len(), "{}: ranges consumed", f.name);

    let built = GpadlHeaderMessage {
        fixed: GpadlHeader {
            header: header(f, "header."),
            child_relid: f.int("child_relid") as u32,
            gpadl: f.int("gpadl") as u32,
            range_buflen: f.int("range_buflen") as u16,
            rangecount: f.int("rangecount") as u16,
        },
        range_bytes: &rebuilt,
    };
    emit_matches(f, &ChannelMessage::GpadlHeader(built), bytes);
}

fn gpadl_body(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), GpadlBody);
    check_header(f, "header.", &m.fixed.header);
    f.check_int("msgnumber", m.fixed.msgnumber as u64);
    f.check_int("gpadl", m.fixed.gpadl as u64);
    let pfns: Vec<u64> = m.pfns().collect();
    let mut rebuilt = Vec::new();
    for (i, pfn) in pfns.iter().enumerate() {
        f.check_int(&format!("pfn[{i}]"), *pfn);
        rebuilt.extend_from_slice(&f.int(&format!("pfn[{i}]")).to_le_bytes());
    }
    let built = GpadlBodyMessage {
        fixed: GpadlBody {
            header: header(f, "header."),
            msgnumber: f.int("msgnumber") as u32,
            gpadl: f.int("gpadl") as u32,
        },
        pfn_bytes: &rebuilt,
    };
    emit_matches(f, &ChannelMessage::GpadlBody(built), bytes);
}

fn gpadl_created(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), GpadlCreated);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    f.check_int("gpadl", m.gpadl as u64);
    f.check_int("creation_status", m.creation_status as u64);
    let built = GpadlCreated {
        header: header(f, "header."),
        child_relid: f.int("child_relid") as u32,
        gpadl: f.int("gpadl") as u32,
        creation_status: f.int("creation_status") as u32,
    };
    emit_matches(f, &ChannelMessage::GpadlCreated(built), bytes);
}

fn gpadl_teardown(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), GpadlTeardown);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    f.check_int("gpadl", m.gpadl as u64);
    let built = GpadlTeardown {
        header: header(f, "header."),
        child_relid: f.int("child_relid") as u32,
        gpadl: f.int("gpadl") as u32,
    };
    emit_matches(f, &ChannelMessage::GpadlTeardown(built), bytes);
}

fn gpadl_torndown(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), GpadlTorndown);
    check_header(f, "header.", &m.header);
    f.check_int("gpadl", m.gpadl as u64);
    let built = GpadlTorndown { header: header(f, "header."), gpadl: f.int("gpadl") as u32 };
    emit_matches(f, &ChannelMessage::GpadlTorndown(built), bytes);
}

fn relid_released(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), RelidReleased);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    let built = RelidReleased { header: header(f, "header."), child_relid: f.int("child_relid") as u32 };
    emit_matches(f, &ChannelMessage::RelidReleased(built), bytes);
}

/// The newer Linux spelling of the 5.x InitiateContact: msg_sint, msg_vtl and
/// six reserved bytes overlay the 8-byte interrupt page union.
fn initiate_contact_v5(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), InitiateContact);
    check_header(f, "header.", &m.header);
    f.check_int("vmbus_version_requested", m.vmbus_version_requested as u64);
    f.check_int("target_vcpu", m.target_vcpu as u64);
    let union = m.interrupt_page_or_sint.get().to_le_bytes();
    f.check_int("msg_sint", m.msg_sint() as u64);
    f.check_int("msg_vtl", m.msg_vtl() as u64);
    f.check_bytes("reserved", &union[2..8]);
    f.check_int("monitor_page1", m.monitor_page1.get());
    f.check_int("monitor_page2", m.monitor_page2.get());

    let sint = f.int("msg_sint") as u8;
    let vtl = f.int("msg_vtl") as u8;
    let mut raw = [0u8; 8];
    raw[..2].copy_from_slice(&InitiateContact::sint_union(sint, vtl).get().to_le_bytes()[..2]);
    // sint_union leaves the reserved bytes zero; they are carried verbatim.
    assert_eq!(InitiateContact::sint_union(sint, vtl).get() >> 16, 0);
    raw[2..].copy_from_slice(&f.bytes("reserved"));
    let built = InitiateContact {
        header: header(f, "header."),
        vmbus_version_requested: f.int("vmbus_version_requested") as u32,
        target_vcpu: f.int("target_vcpu") as u32,
        interrupt_page_or_sint: U64::new(u64::from_le_bytes(raw)),
        monitor_page1: U64::new(f.int("monitor_page1")),
        monitor_page2: U64::new(f.int("monitor_page2")),
    };
    emit_matches(f, &ChannelMessage::InitiateContact(built), bytes);
}

fn version_response(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), VersionResponse);
    check_header(f, "header.", &m.header);
    f.check_int("version_supported", m.version_supported as u64);
    f.check_int("connection_state", m.connection_state as u64);
    f.check_int("padding", m.padding as u64);
    f.check_int("msg_conn_id", m.msg_conn_id as u64);
    assert_eq!(m.msg_conn_id, MESSAGE_CONNECTION_ID_4);
    let built = VersionResponse {
        header: header(f, "header."),
        version_supported: f.int("version_supported") as u8,
        connection_state: f.int("connection_state") as u8,
        padding: f.int("padding") as u16,
        msg_conn_id: f.int("msg_conn_id") as u32,
    };
    emit_matches(f, &ChannelMessage::VersionResponse(built), bytes);
}

/// The legacy 9-byte `vmbus_channel_version_supported`: we parse it by
/// widening into a `VersionResponse` with zeroed tail fields; we never emit
/// the short form, so the encode side checks that the 16-byte form starts
/// with the vector's 9 bytes and carries zeros after them.
fn version_supported_legacy(f: &Fields, bytes: &[u8]) {
    assert_eq!(bytes.len(), VERSION_RESPONSE_LEGACY_LEN);
    let m = expect_variant!(f, parse(f, bytes), VersionResponse);
    check_header(f, "header.", &m.header);
    f.check_int("version_supported", m.version_supported as u64);
    assert_eq!((m.connection_state, m.padding, m.msg_conn_id), (0, 0, 0), "{}: widened tail", f.name);
    let built = VersionResponse {
        header: header(f, "header."),
        version_supported: f.int("version_supported") as u8,
        connection_state: 0,
        padding: 0,
        msg_conn_id: 0,
    };
    let mut buf = [0u8; size_of::<VersionResponse>()];
    assert_eq!(ChannelMessage::VersionResponse(built).emit(&mut buf), Ok(16));
    assert_eq!(&buf[..bytes.len()], bytes, "{}: legacy prefix", f.name);
    assert!(buf[bytes.len()..].iter().all(|b| *b == 0));
}

fn tl_connect_request(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), TlConnectRequest);
    check_header(f, "header.", &m.header);
    f.check_bytes("guest_endpoint_id", &m.guest_endpoint_id.bytes);
    f.check_bytes("host_service_id", &m.host_service_id.bytes);
    let built = TlConnectRequest {
        header: header(f, "header."),
        guest_endpoint_id: Guid { bytes: f.array("guest_endpoint_id") },
        host_service_id: Guid { bytes: f.array("host_service_id") },
    };
    emit_matches(f, &ChannelMessage::TlConnectRequest(built), bytes);
}

fn modify_channel(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), ModifyChannel);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    f.check_int("target_vp", m.target_vp as u64);
    let built = ModifyChannel {
        header: header(f, "header."),
        child_relid: f.int("child_relid") as u32,
        target_vp: f.int("target_vp") as u32,
    };
    emit_matches(f, &ChannelMessage::ModifyChannel(built), bytes);
}

fn modify_channel_response(f: &Fields, bytes: &[u8]) {
    let m = expect_variant!(f, parse(f, bytes), ModifyChannelResponse);
    check_header(f, "header.", &m.header);
    f.check_int("child_relid", m.child_relid as u64);
    f.check_int("status", m.status as u64);
    let built = ModifyChannelResponse {
        header: header(f, "header."),
        child_relid: f.int("child_relid") as u32,
        status: f.int("status") as u32,
    };
    emit_matches(f, &ChannelMessage::ModifyChannelResponse(built), bytes);
}

/// HvPostMessage input carrying a 5.x InitiateContact in the Linux 6.1
/// spelling (msg_sint, padding1[3], padding2 over the interrupt page union).
fn post_message_initiate_contact(f: &Fields, bytes: &[u8]) {
    let input = HvPostMessageInput::read_from_bytes(bytes).expect("256 bytes");
    f.check_int("connectionid", input.connection_id as u64);
    assert_eq!(input.connection_id & CONNECTION_ID_MASK, MESSAGE_CONNECTION_ID_4);
    f.check_int("reserved", input.reserved as u64);
    f.check_int("message_type", input.message_type as u64);
    assert_eq!(input.message_type, VMBUS_MESSAGE_TYPE);
    f.check_int("payload_size", input.payload_size as u64);
    let payload = &input.payload[..input.payload_size as usize];
    let m = expect_variant!(f, parse(f, payload), InitiateContact);
    assert_eq!(input.payload_size as usize, size_of::<InitiateContact>());
    check_header(f, "payload.header.", &m.header);
    f.check_int("payload.vmbus_version_requested", m.vmbus_version_requested as u64);
    f.check_int("payload.target_vcpu", m.target_vcpu as u64);
    let union = m.interrupt_page_or_sint.get().to_le_bytes();
    f.check_int("payload.msg_sint", m.msg_sint() as u64);
    f.check_bytes("payload.padding1", &union[1..4]);
    f.check_int("payload.padding2", u32::from_le_bytes([union[4], union[5], union[6], union[7]]) as u64);
    f.check_int("payload.monitor_page1", m.monitor_page1.get());
    f.check_int("payload.monitor_page2", m.monitor_page2.get());

    let mut raw = [0u8; 8];
    raw[0] = f.int("payload.msg_sint") as u8;
    raw[1..4].copy_from_slice(&f.bytes("payload.padding1"));
    raw[4..].copy_from_slice(&(f.int("payload.padding2") as u32).to_le_bytes());
    let contact = InitiateContact {
        header: header(f, "payload.header."),
        vmbus_version_requested: f.int("payload.vmbus_version_requested") as u32,
        target_vcpu: f.int("payload.target_vcpu") as u32,
        interrupt_page_or_sint: U64::new(u64::from_le_bytes(raw)),
        monitor_page1: U64::new(f.int("payload.monitor_page1")),
        monitor_page2: U64::new(f.int("payload.monitor_page2")),
    };
    let out = OutgoingMessage::new(&ChannelMessage::InitiateContact(contact)).expect("fits");
    let mut built = HvPostMessageInput {
        connection_id: f.int("connectionid") as u32,
        reserved: f.int("reserved") as u32,
        message_type: f.int("message_type") as u32,
        payload_size: out.as_bytes().len() as u32,
        payload: [0; MESSAGE_PAYLOAD_SIZE],
    };
    assert_eq!(built.payload_size as u64, f.int("payload_size"));
    built.payload[..out.as_bytes().len()].copy_from_slice(out.as_bytes());
    assert_eq!(built.as_bytes(), bytes, "{}: post-message input bytes", f.name);
}

fn check_vector(v: &Value) -> bool {
    let f = Fields::new(v);
    let bytes = hex(v["hex"].as_str().expect("hex"));
    assert_eq!(bytes.len() as u64, v["size"].as_u64().expect("size"), "{}: size", f.name);
    // The README: every byte not covered by a listed field is zero. Check it,
    // so "not listed" really means "zero" for the encode comparisons.
    let mut covered = vec![false; bytes.len()];
    for p in f.paths() {
        let fv = &v["fields"][p];
        let (o, s) = (fv["offset"].as_u64().unwrap() as usize, fv["size"].as_u64().unwrap() as usize);
        covered[o..o + s].iter_mut().for_each(|c| *c = true);
    }
    for (i, b) in bytes.iter().enumerate() {
        assert!(covered[i] || *b == 0, "{}: uncovered byte {i} is {b:#x}", f.name);
    }
    match f.name.as_str() {
        "offer_channel_netvsc_subchannel" => offer_channel(&f, &bytes),
        "rescind_offer" => rescind_offer(&f, &bytes),
        "request_offers" => header_only(&f, &bytes, ChannelMessage::RequestOffers),
        "all_offers_delivered" => header_only(&f, &bytes, ChannelMessage::AllOffersDelivered),
        "unload" => header_only(&f, &bytes, ChannelMessage::Unload),
        "unload_response" => header_only(&f, &bytes, ChannelMessage::UnloadResponse),
        "open_channel" => open_channel(&f, &bytes),
        "open_result" => open_result(&f, &bytes),
        "close_channel" => close_channel(&f, &bytes),
        "gpadl_header_2_ranges" => gpadl_header(&f, &bytes),
        "gpadl_body_3_pfns" => gpadl_body(&f, &bytes),
        "gpadl_created" => gpadl_created(&f, &bytes),
        "gpadl_teardown" => gpadl_teardown(&f, &bytes),
        "gpadl_torndown" => gpadl_torndown(&f, &bytes),
        "relid_released" => relid_released(&f, &bytes),
        "initiate_contact_v5_3" => initiate_contact_v5(&f, &bytes),
        "version_response_accepted" => version_response(&f, &bytes),
        "version_supported_legacy" => version_supported_legacy(&f, &bytes),
        "tl_connect_request" => tl_connect_request(&f, &bytes),
        "modify_channel" => modify_channel(&f, &bytes),
        "modify_channel_response" => modify_channel_response(&f, &bytes),
        "post_message_initiate_contact" => post_message_initiate_contact(&f, &bytes),
        other => {
            assert!(
                VECTORS_NOT_MODELLED.iter().any(|(n, _)| *n == other),
                "vector {other} has no handler and is not listed as not modelled"
            );
            return false;
        }
    }
    f.assert_all_used();
    true
}

#[test]
fn every_message_vector_decodes_and_encodes() {
    let doc = load(FILE);
    assert_eq!(doc["origin"], "compiled");
    let vectors = doc["vectors"].as_array().expect("vectors");
    let mut checked = 0;
    for v in vectors {
        if check_vector(v) {
            checked += 1;
        }
    }
    assert_eq!(checked + VECTORS_NOT_MODELLED.len(), vectors.len());
    // Guard against a loader that silently sees nothing.
    assert!(checked >= 22, "only {checked} vectors checked");
}

// ---------------------------------------------------------------------------
// layouts

/// Where one Linux member lives in our structs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ours {
    offset: usize,
    size: usize,
    /// `(bit_offset, bit_width)` for bitfields, derived from our code.
    bits: Option<(u32, u32)>,
    /// Element size of a flexible array.
    elem: Option<usize>,
}

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

macro_rules! at {
    ($t:ty, $($f:ident).+) => {
        Ours {
            offset: offset_of!($t, $($f).+),
            size: field_size::<$t, _>(|m| &m.$($f).+),
            bits: None,
            elem: None,
        }
    };
}

impl Ours {
    fn sub(self, start: usize, len: usize) -> Ours {
        assert!(start + len <= self.size);
        Ours { offset: self.offset + start, size: len, ..self }
    }
    fn shift(self, by: usize) -> Ours {
        Ours { offset: self.offset - by, ..self }
    }
    fn bits(self, mask: u64) -> Ours {
        Ours { bits: Some((mask.trailing_zeros(), mask.count_ones())), ..self }
    }
    fn flex(offset: usize, elem: usize) -> Ours {
        Ours { offset, size: 0, bits: None, elem: Some(elem) }
    }
}

/// A mask made of one contiguous run of bits, found from an accessor's
/// behaviour: the bits `b` of an all-zero unit for which `test(1 << b)` holds.
fn mask_from<F: Fn(u64) -> bool>(bits: u32, test: F) -> u64 {
    (0..bits).filter(|b| test(1u64 << b)).fold(0, |m, b| m | (1 << b))
}

fn zero_offer() -> OfferChannel {
    OfferChannel::new_zeroed()
}

/// The `header.*` members of a message struct (the header is at offset 0).
fn header_fields() -> Vec<(&'static str, Ours)> {
    vec![("header.msgtype", at!(MessageHeader, msgtype)), ("header.padding", at!(MessageHeader, padding))]
}

/// Our size and field map for a Linux layout, or `None` if not modelled.
fn our_layout(name: &str, variant: Option<&str>) -> Option<(usize, Vec<(&'static str, Ours)>)> {
    let h = |_: usize| header_fields();
    let offer_base = offset_of!(OfferChannel, if_type);
    let monitor_mask = mask_from(8, |b| OfferChannel { monitor_allocated: b as u8, ..zero_offer() }.has_monitor());
    let dedicated_mask =
        mask_from(16, |b| OfferChannel { is_dedicated_interrupt: b as u16, ..zero_offer() }.dedicated_interrupt());
    let sint_mask =
        mask_from(64, |b| InitiateContact { interrupt_page_or_sint: U64::new(b), ..zeroed() }.msg_sint() != 0);
    let vtl_mask =
        mask_from(64, |b| InitiateContact { interrupt_page_or_sint: U64::new(b), ..zeroed() }.msg_vtl() != 0);
    let union = at!(InitiateContact, interrupt_page_or_sint);
    let (sint_off, vtl_off) = ((sint_mask.trailing_zeros() / 8) as usize, (vtl_mask.trailing_zeros() / 8) as usize);
    let id_mask = CONNECTION_ID_MASK as u64;
    let v = |x: Vec<(&'static str, Ours)>| x;
    Some(match (name, variant) {
        ("vmbus_channel_message_header", _) => (
            size_of::<MessageHeader>(),
            v(vec![("msgtype", at!(MessageHeader, msgtype)), ("padding", at!(MessageHeader, padding))]),
        ),
        ("vmbus_channel_offer", _) => (
            offset_of!(OfferChannel, child_relid) - offer_base,
            v(vec![
                ("if_type", at!(OfferChannel, if_type).shift(offer_base)),
                ("if_instance", at!(OfferChannel, if_instance).shift(offer_base)),
                ("reserved1", at!(OfferChannel, reserved1).shift(offer_base)),
                ("reserved2", at!(OfferChannel, reserved2).shift(offer_base)),
                ("chn_flags", at!(OfferChannel, chn_flags).shift(offer_base)),
                ("mmio_megabytes", at!(OfferChannel, mmio_megabytes).shift(offer_base)),
                ("u", at!(OfferChannel, user_defined).shift(offer_base)),
                ("u.std.user_def", at!(OfferChannel, user_defined).shift(offer_base)),
                ("u.pipe.pipe_mode", at!(OfferChannel, user_defined).shift(offer_base).sub(0, 4)),
                ("u.pipe.user_def", at!(OfferChannel, user_defined).shift(offer_base).sub(4, 116)),
                ("sub_channel_index", at!(OfferChannel, sub_channel_index).shift(offer_base)),
                ("reserved3", at!(OfferChannel, reserved3).shift(offer_base)),
            ]),
        ),
        ("vmbus_channel_offer_channel", _) => (size_of::<OfferChannel>(), {
            let mut x = h(0);
            x.extend([
                (
                    "offer",
                    Ours {
                        offset: offer_base,
                        size: offset_of!(OfferChannel, child_relid) - offer_base,
                        bits: None,
                        elem: None,
                    },
                ),
                ("offer.if_type", at!(OfferChannel, if_type)),
                ("offer.if_instance", at!(OfferChannel, if_instance)),
                ("offer.reserved1", at!(OfferChannel, reserved1)),
                ("offer.reserved2", at!(OfferChannel, reserved2)),
                ("offer.chn_flags", at!(OfferChannel, chn_flags)),
                ("offer.mmio_megabytes", at!(OfferChannel, mmio_megabytes)),
                ("offer.u.std.user_def", at!(OfferChannel, user_defined)),
                ("offer.u.pipe.pipe_mode", at!(OfferChannel, user_defined).sub(0, 4)),
                ("offer.u.pipe.user_def", at!(OfferChannel, user_defined).sub(4, 116)),
                ("offer.sub_channel_index", at!(OfferChannel, sub_channel_index)),
                ("offer.reserved3", at!(OfferChannel, reserved3)),
                ("child_relid", at!(OfferChannel, child_relid)),
                ("monitorid", at!(OfferChannel, monitor_id)),
                ("monitor_allocated", at!(OfferChannel, monitor_allocated).bits(monitor_mask)),
                ("reserved", at!(OfferChannel, monitor_allocated).bits(!monitor_mask & 0xFF)),
                ("is_dedicated_interrupt", at!(OfferChannel, is_dedicated_interrupt).bits(dedicated_mask)),
                ("reserved1", at!(OfferChannel, is_dedicated_interrupt).bits(!dedicated_mask & 0xFFFF)),
                ("connection_id", at!(OfferChannel, connection_id)),
            ]);
            x
        }),
        ("vmbus_channel_rescind_offer", _) => (size_of::<RescindChannelOffer>(), {
            let mut x = h(0);
            x.push(("child_relid", at!(RescindChannelOffer, child_relid)));
            x
        }),
        ("vmbus_channel_open_channel", _) => (size_of::<OpenChannel>(), {
            let mut x = h(0);
            x.extend([
                ("child_relid", at!(OpenChannel, child_relid)),
                ("openid", at!(OpenChannel, openid)),
                ("ringbuffer_gpadlhandle", at!(OpenChannel, ringbuffer_gpadl_handle)),
                ("target_vp", at!(OpenChannel, target_vp)),
                ("downstream_ringbuffer_pageoffset", at!(OpenChannel, downstream_ringbuffer_pageoffset)),
                ("userdata", at!(OpenChannel, user_data)),
            ]);
            x
        }),
        ("vmbus_channel_open_result", _) => (size_of::<OpenResult>(), {
            let mut x = h(0);
            x.extend([
                ("child_relid", at!(OpenResult, child_relid)),
                ("openid", at!(OpenResult, openid)),
                ("status", at!(OpenResult, status)),
            ]);
            x
        }),
        ("vmbus_channel_close_channel", _) => (size_of::<CloseChannel>(), {
            let mut x = h(0);
            x.push(("child_relid", at!(CloseChannel, child_relid)));
            x
        }),
        ("vmbus_channel_gpadl_header", _) => (size_of::<GpadlHeader>(), {
            let mut x = h(0);
            x.extend([
                ("child_relid", at!(GpadlHeader, child_relid)),
                ("gpadl", at!(GpadlHeader, gpadl)),
                ("range_buflen", at!(GpadlHeader, range_buflen)),
                ("rangecount", at!(GpadlHeader, rangecount)),
                ("range[]", Ours::flex(size_of::<GpadlHeader>(), size_of::<GpaRange>())),
            ]);
            x
        }),
        ("gpa_range", _) => (
            size_of::<GpaRange>(),
            v(vec![
                ("byte_count", at!(GpaRange, byte_count)),
                ("byte_offset", at!(GpaRange, byte_offset)),
                ("pfn_array[]", Ours::flex(size_of::<GpaRange>(), size_of::<u64>())),
            ]),
        ),
        ("vmbus_channel_gpadl_body", _) => (size_of::<GpadlBody>(), {
            let mut x = h(0);
            x.extend([
                ("msgnumber", at!(GpadlBody, msgnumber)),
                ("gpadl", at!(GpadlBody, gpadl)),
                ("pfn[]", Ours::flex(size_of::<GpadlBody>(), size_of::<u64>())),
            ]);
            x
        }),
        ("vmbus_channel_gpadl_created", _) => (size_of::<GpadlCreated>(), {
            let mut x = h(0);
            x.extend([
                ("child_relid", at!(GpadlCreated, child_relid)),
                ("gpadl", at!(GpadlCreated, gpadl)),
                ("creation_status", at!(GpadlCreated, creation_status)),
            ]);
            x
        }),
        ("vmbus_channel_gpadl_teardown", _) => (size_of::<GpadlTeardown>(), {
            let mut x = h(0);
            x.extend([("child_relid", at!(GpadlTeardown, child_relid)), ("gpadl", at!(GpadlTeardown, gpadl))]);
            x
        }),
        ("vmbus_channel_gpadl_torndown", _) => (size_of::<GpadlTorndown>(), {
            let mut x = h(0);
            x.push(("gpadl", at!(GpadlTorndown, gpadl)));
            x
        }),
        ("vmbus_channel_relid_released", _) => (size_of::<RelidReleased>(), {
            let mut x = h(0);
            x.push(("child_relid", at!(RelidReleased, child_relid)));
            x
        }),
        ("vmbus_channel_initiate_contact", Some(var)) => (size_of::<InitiateContact>(), {
            let mut x = h(0);
            x.extend([
                ("vmbus_version_requested", at!(InitiateContact, vmbus_version_requested)),
                ("target_vcpu", at!(InitiateContact, target_vcpu)),
                ("interrupt_page", union),
                ("msg_sint", union.sub(sint_off, 1)),
                ("monitor_page1", at!(InitiateContact, monitor_page1)),
                ("monitor_page2", at!(InitiateContact, monitor_page2)),
            ]);
            match var {
                "linux-6.1" => x.extend([("padding1", union.sub(1, 3)), ("padding2", union.sub(4, 4))]),
                "linux-newer" => x.extend([("msg_vtl", union.sub(vtl_off, 1)), ("reserved", union.sub(2, 6))]),
                other => panic!("unknown initiate_contact variant {other}"),
            }
            x
        }),
        ("vmbus_channel_version_response", _) => (size_of::<VersionResponse>(), {
            let mut x = h(0);
            x.extend([
                ("version_supported", at!(VersionResponse, version_supported)),
                ("connection_state", at!(VersionResponse, connection_state)),
                ("padding", at!(VersionResponse, padding)),
                ("msg_conn_id", at!(VersionResponse, msg_conn_id)),
            ]);
            x
        }),
        // The legacy short form is a prefix of VersionResponse that parse widens.
        ("vmbus_channel_version_supported", _) => (VERSION_RESPONSE_LEGACY_LEN, {
            let mut x = h(0);
            x.push(("version_supported", at!(VersionResponse, version_supported)));
            x
        }),
        ("vmbus_channel_tl_connect_request", _) => (size_of::<TlConnectRequest>(), {
            let mut x = h(0);
            x.extend([
                ("guest_endpoint_id", at!(TlConnectRequest, guest_endpoint_id)),
                ("host_service_id", at!(TlConnectRequest, host_service_id)),
            ]);
            x
        }),
        ("vmbus_channel_modifychannel", _) => (size_of::<ModifyChannel>(), {
            let mut x = h(0);
            x.extend([("child_relid", at!(ModifyChannel, child_relid)), ("target_vp", at!(ModifyChannel, target_vp))]);
            x
        }),
        ("vmbus_channel_modifychannel_response", _) => (size_of::<ModifyChannelResponse>(), {
            let mut x = h(0);
            x.extend([
                ("child_relid", at!(ModifyChannelResponse, child_relid)),
                ("status", at!(ModifyChannelResponse, status)),
            ]);
            x
        }),
        // A connection id is a plain u32 for us, with the id in CONNECTION_ID_MASK.
        ("hv_connection_id", _) => (
            size_of::<u32>(),
            v(vec![
                ("asu32", Ours { offset: 0, size: 4, bits: None, elem: None }),
                ("u.id", Ours { offset: 0, size: 4, bits: None, elem: None }.bits(id_mask)),
                ("u.reserved", Ours { offset: 0, size: 4, bits: None, elem: None }.bits(!id_mask & 0xFFFF_FFFF)),
            ]),
        ),
        ("hv_message_header", _) => (
            size_of::<HvMessageHeader>(),
            v(vec![
                ("message_type", at!(HvMessageHeader, message_type)),
                ("payload_size", at!(HvMessageHeader, payload_size)),
                ("message_flags", at!(HvMessageHeader, message_flags)),
                ("message_flags.asu8", at!(HvMessageHeader, message_flags)),
                ("message_flags.msg_pending", at!(HvMessageHeader, message_flags).bits(MESSAGE_FLAG_PENDING as u64)),
                (
                    "message_flags.reserved",
                    at!(HvMessageHeader, message_flags).bits(!(MESSAGE_FLAG_PENDING as u64) & 0xFF),
                ),
                ("reserved", at!(HvMessageHeader, reserved)),
                ("sender", at!(HvMessageHeader, sender)),
                // The sender is, for VMBus, a port id in its low 32 bits.
                ("port.asu32", at!(HvMessageHeader, sender).sub(0, 4)),
                ("port.u.id", at!(HvMessageHeader, sender).sub(0, 4).bits(id_mask)),
                ("port.u.reserved", at!(HvMessageHeader, sender).sub(0, 4).bits(!id_mask & 0xFFFF_FFFF)),
            ]),
        ),
        ("hv_message", _) => (
            size_of::<HvMessage>(),
            v(vec![("header", at!(HvMessage, header)), ("u.payload", at!(HvMessage, payload))]),
        ),
        ("hv_input_post_message", _) => (
            size_of::<HvPostMessageInput>(),
            v(vec![
                ("connectionid.asu32", at!(HvPostMessageInput, connection_id)),
                ("connectionid.u.id", at!(HvPostMessageInput, connection_id).bits(id_mask)),
                ("connectionid.u.reserved", at!(HvPostMessageInput, connection_id).bits(!id_mask & 0xFFFF_FFFF)),
                ("reserved", at!(HvPostMessageInput, reserved)),
                ("message_type", at!(HvPostMessageInput, message_type)),
                ("payload_size", at!(HvPostMessageInput, payload_size)),
                ("payload", at!(HvPostMessageInput, payload)),
            ]),
        ),
        _ => return None,
    })
}

fn zeroed<T: FromZeros>() -> T {
    T::new_zeroed()
}

fn check_layout(l: &Value) -> bool {
    let name = l["struct"].as_str().expect("struct");
    let variant = l.get("variant").and_then(Value::as_str);
    let Some((size, ours)) = our_layout(name, variant) else {
        assert!(
            LAYOUTS_NOT_MODELLED.iter().any(|(n, _)| *n == name),
            "layout {name} has no mapping and is not listed as not modelled"
        );
        return false;
    };
    let ctx = format!("{name}{}", variant.map(|v| format!(" ({v})")).unwrap_or_default());
    assert_eq!(l["size"].as_u64(), Some(size as u64), "{ctx}: size");
    // No compiler padding in the C struct (ours have none either: IntoBytes
    // derives refuse padding). Alignment is not compared: the C structs are
    // packed (align 1) and ours are only ever copied in and out of byte
    // buffers (read_from_prefix / as_bytes), never referenced in place.
    if let Some(p) = l.get("padding") {
        assert!(p.is_null() || p.as_array().is_some_and(|a| a.is_empty()), "{ctx}: C padding {p}");
    }
    if name == "hv_message" {
        assert_eq!(l["payload_byte_count"].as_u64(), Some(MESSAGE_PAYLOAD_SIZE as u64));
    }
    let fields = l["fields"].as_object().expect("fields");
    for (path, fv) in fields {
        let mine = ours
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{ctx}: Linux member {path} is not mapped to our struct"))
            .1;
        let want_off = fv["offset"].as_u64().unwrap() as usize;
        let want_size = fv["size"].as_u64().unwrap() as usize;
        assert_eq!((mine.offset, mine.size), (want_off, want_size), "{ctx}: {path} offset/size");
        let want_bits =
            fv.get("bit_offset").map(|b| (b.as_u64().unwrap() as u32, fv["bit_width"].as_u64().unwrap() as u32));
        assert_eq!(mine.bits, want_bits, "{ctx}: {path} bits");
        if fv.get("flexible").and_then(Value::as_bool) == Some(true) {
            assert_eq!(mine.elem.map(|e| e as u64), fv["element_size"].as_u64(), "{ctx}: {path} element size");
        } else {
            assert_eq!(mine.elem, None, "{ctx}: {path} is not flexible");
        }
    }
    for (p, _) in &ours {
        assert!(fields.contains_key(*p), "{ctx}: our mapping names {p}, which the layout does not have");
    }
    true
}

#[test]
fn every_message_layout_matches_our_structs() {
    let doc = load(FILE);
    let layouts = doc["layouts"].as_array().expect("layouts");
    let mut checked = 0;
    let mut skipped = 0;
    for l in layouts {
        if check_layout(l) {
            checked += 1;
        } else {
            skipped += 1;
        }
    }
    assert_eq!(skipped, LAYOUTS_NOT_MODELLED.len(), "every not-modelled entry must still exist in the file");
    assert!(checked >= 25, "only {checked} layouts checked");
}

/// The monitor id of the offer vector, read through the rule the vector's
/// note states (group = id / 32, bit = id % 32), as the channel code uses it.
#[test]
fn offer_vector_monitor_id_rule() {
    let doc = load(FILE);
    let v = doc["vectors"].as_array().unwrap().iter().find(|v| v["name"] == "offer_channel_netvsc_subchannel").unwrap();
    let bytes = hex(v["hex"].as_str().unwrap());
    let ChannelMessage::OfferChannel(m) = ChannelMessage::parse(&bytes).unwrap() else { panic!("not an offer") };
    let note = v["note"].as_str().unwrap();
    let (group, bit) = (m.monitor_id / 32, m.monitor_id % 32);
    assert!(note.contains(&format!("trigger group {group}, bit {bit}")), "{note}");
}
