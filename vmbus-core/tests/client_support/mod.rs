// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! A scripted fake host for the client tests: a `Hypervisor` that records
//! every posted message, and builders for the messages a host sends.
#![allow(dead_code)]

use std::cell::RefCell;
use vmbus_core::client::{ChannelSlot, Client, ClientConfig, ClientError, ClientEvent};
use vmbus_core::guid::Guid;
use vmbus_core::hv::HvStatus;
use vmbus_core::message::*;
use vmbus_core::platform::Hypervisor;
use vmbus_core::version::Version;
use zerocopy::little_endian::U64;

/// One posted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posted {
    pub conn: u32,
    pub bytes: Vec<u8>,
}

impl Posted {
    pub fn msgtype(&self) -> MessageType {
        MessageType(u32::from_le_bytes(self.bytes[..4].try_into().unwrap()))
    }
    pub fn parse(&self) -> ChannelMessage<'_> {
        ChannelMessage::parse(&self.bytes).expect("client posted an unparseable message")
    }
}

type StatusFn = Box<dyn FnMut(u32, &[u8]) -> HvStatus>;

/// Records posts; `status` decides each post's result (default success).
pub struct RecordingHv {
    pub posted: RefCell<Vec<Posted>>,
    pub status: RefCell<StatusFn>,
}

impl Default for RecordingHv {
    fn default() -> Self {
        RecordingHv { posted: RefCell::new(Vec::new()), status: RefCell::new(Box::new(|_, _| HvStatus::SUCCESS)) }
    }
}

impl RecordingHv {
    pub fn take(&self) -> Vec<Posted> {
        std::mem::take(&mut *self.posted.borrow_mut())
    }
    pub fn set_status(&self, f: impl FnMut(u32, &[u8]) -> HvStatus + 'static) {
        *self.status.borrow_mut() = Box::new(f);
    }
}

impl Hypervisor for RecordingHv {
    fn post_message(&self, connection_id: u32, message: &[u8]) -> HvStatus {
        let s = (self.status.borrow_mut())(connection_id, message);
        if s.is_success() {
            self.posted.borrow_mut().push(Posted { conn: connection_id, bytes: message.to_vec() });
        }
        s
    }
    fn signal_event(&self, _: u32) -> HvStatus {
        HvStatus::SUCCESS
    }
}

pub const INTERRUPT_PAGE: u64 = 0x1234_5000;
pub const MONITOR_PAGES: (u64, u64) = (0x2222_0000, 0x3333_0000);
pub const HOST_CONN_ID: u32 = 0x0B;

pub fn config() -> ClientConfig {
    let mut c = ClientConfig::new(0, INTERRUPT_PAGE, MONITOR_PAGES);
    c.max_channels = 64;
    c
}

pub struct Harness {
    pub client: Client<Vec<ChannelSlot>>,
    pub hv: RecordingHv,
    pub events: Vec<ClientEvent>,
}

impl Harness {
    pub fn new() -> Self {
        Self::with_config(config())
    }
    pub fn with_config(c: ClientConfig) -> Self {
        let slots = vec![ChannelSlot::EMPTY; c.max_channels];
        Harness { client: Client::with_storage(c, slots), hv: RecordingHv::default(), events: Vec::new() }
    }
    /// Feeds one host message; events are appended to `self.events`.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let events = &mut self.events;
        let r = self.client.handle_message(bytes, &self.hv, &mut |e| events.push(e));
        self.client.check_invariants().expect("invariant broken");
        r
    }
    pub fn take_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.events)
    }
    /// Connects at `version` (the host refuses everything newer).
    pub fn connect_at(&mut self, version: Version) {
        self.client.start(&self.hv).unwrap();
        loop {
            let posted = self.hv.take();
            assert_eq!(posted.len(), 1);
            let ChannelMessage::InitiateContact(ic) = posted[0].parse() else { panic!("expected contact") };
            let accept = ic.vmbus_version_requested == version.0;
            self.feed(&version_response(accept, HOST_CONN_ID)).unwrap();
            if accept {
                break;
            }
        }
        let ev = self.take_events();
        let conn = if version.uses_msg_sint() { HOST_CONN_ID } else { 1 };
        assert_eq!(ev, vec![ClientEvent::Connected { version, msg_conn_id: conn }]);
    }
    /// Connects at 5.3 and requests offers.
    pub fn connected() -> Self {
        Self::connected_at(Version::WIN10_V5_3)
    }
    pub fn connected_at(version: Version) -> Self {
        let mut h = Harness::new();
        h.connect_at(version);
        h.client.request_offers(&h.hv).unwrap();
        let p = h.hv.take();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].msgtype(), MessageType::REQUEST_OFFERS);
        h
    }
    /// Offers a primary channel and checks the event.
    pub fn offer_primary(&mut self, relid: u32) {
        self.feed(&offer(relid, NET, instance(relid), 0)).unwrap();
        let ev = self.take_events();
        assert!(matches!(ev[..], [ClientEvent::Offer(o)] if o.relid == relid && o.primary_relid.is_none()));
    }
    /// Creates a whole-page GPADL of `pages` pages; returns (handle, posted).
    pub fn create_gpadl(&mut self, relid: u32, pfns: &[u64]) -> (u32, Vec<Posted>) {
        let h = self.client.create_gpadl(relid, vmbus_core::gpadl::GpaRangeRef::whole_pages(pfns), &self.hv).unwrap();
        (h, self.hv.take())
    }
    /// Creates and confirms a GPADL.
    pub fn gpadl_ready(&mut self, relid: u32, pages: u64) -> u32 {
        let pfns: Vec<u64> = (0..pages).map(|i| 0x8000 + i).collect();
        let (h, _) = self.create_gpadl(relid, &pfns);
        self.feed(&gpadl_created(relid, h, 0)).unwrap();
        self.take_events();
        h
    }
    /// Offer + ring GPADL + open, all successful. Returns the ring handle.
    pub fn open(&mut self, relid: u32) -> u32 {
        self.offer_primary(relid);
        let ring = self.gpadl_ready(relid, 8);
        self.client.open_channel(relid, &open_params(ring), &self.hv).unwrap();
        self.hv.take();
        self.feed(&open_result(relid, relid, 0)).unwrap();
        self.take_events();
        ring
    }
}

pub fn open_params(ring: u32) -> vmbus_core::client::OpenParams<'static> {
    vmbus_core::client::OpenParams { ring_gpadl: ring, downstream_page_offset: 4, target_vp: 1, user_data: &[] }
}

// ----- host message builders -----

pub const NET: Guid = Guid::must("f8615163-df3e-46c5-913f-f2d2f965ed0e");
pub const SCSI: Guid = Guid::must("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");

pub fn instance(n: u32) -> Guid {
    Guid::from_fields(0x1000_0000 + n, 1, 2, [3, 4, 5, 6, 7, 8, 9, 10])
}

fn bytes(m: ChannelMessage<'_>) -> Vec<u8> {
    OutgoingMessage::new(&m).unwrap().as_bytes().to_vec()
}

fn hdr(t: MessageType) -> MessageHeader {
    MessageHeader::new(t)
}

pub fn version_response(accepted: bool, conn: u32) -> Vec<u8> {
    bytes(ChannelMessage::VersionResponse(VersionResponse {
        header: hdr(MessageType::VERSION_RESPONSE),
        version_supported: accepted as u8,
        connection_state: 0,
        padding: 0,
        msg_conn_id: conn,
    }))
}

pub fn offer_struct(relid: u32, if_type: Guid, if_instance: Guid, sub_index: u16) -> OfferChannel {
    OfferChannel {
        header: hdr(MessageType::OFFER_CHANNEL),
        if_type,
        if_instance,
        reserved1: U64::new(0),
        reserved2: U64::new(0),
        chn_flags: 0,
        mmio_megabytes: 0,
        user_defined: [0; MAX_USER_DEFINED_BYTES],
        sub_channel_index: sub_index,
        reserved3: 0,
        child_relid: relid,
        monitor_id: (relid % 128) as u8,
        monitor_allocated: 1,
        is_dedicated_interrupt: 0,
        connection_id: 0x2000u32.wrapping_add(relid),
    }
}

pub fn offer(relid: u32, if_type: Guid, if_instance: Guid, sub_index: u16) -> Vec<u8> {
    bytes(ChannelMessage::OfferChannel(offer_struct(relid, if_type, if_instance, sub_index)))
}

pub fn rescind(relid: u32) -> Vec<u8> {
    bytes(ChannelMessage::RescindChannelOffer(RescindChannelOffer {
        header: hdr(MessageType::RESCIND_CHANNEL_OFFER),
        child_relid: relid,
    }))
}

pub fn all_offers() -> Vec<u8> {
    bytes(ChannelMessage::AllOffersDelivered)
}

pub fn gpadl_created(relid: u32, handle: u32, status: u32) -> Vec<u8> {
    bytes(ChannelMessage::GpadlCreated(GpadlCreated {
        header: hdr(MessageType::GPADL_CREATED),
        child_relid: relid,
        gpadl: handle,
        creation_status: status,
    }))
}

pub fn gpadl_torndown(handle: u32) -> Vec<u8> {
    bytes(ChannelMessage::GpadlTorndown(GpadlTorndown { header: hdr(MessageType::GPADL_TORNDOWN), gpadl: handle }))
}

pub fn open_result(relid: u32, openid: u32, status: u32) -> Vec<u8> {
    bytes(ChannelMessage::OpenResult(OpenResult {
        header: hdr(MessageType::OPEN_CHANNEL_RESULT),
        child_relid: relid,
        openid,
        status,
    }))
}

pub fn modify_response(relid: u32, status: u32) -> Vec<u8> {
    bytes(ChannelMessage::ModifyChannelResponse(ModifyChannelResponse {
        header: hdr(MessageType::MODIFY_CHANNEL_RESPONSE),
        child_relid: relid,
        status,
    }))
}

pub fn unload_response() -> Vec<u8> {
    bytes(ChannelMessage::UnloadResponse)
}

/// Reassembles posted GPADL messages: (relid, handle, range_buflen, rangecount, words).
pub fn reassemble(posted: &[Posted]) -> (u32, u32, u16, u16, Vec<u64>) {
    let mut words = Vec::new();
    let mut head = None;
    for (i, p) in posted.iter().enumerate() {
        match p.parse() {
            ChannelMessage::GpadlHeader(h) => {
                assert_eq!(i, 0, "header must come first");
                head = Some(h.fixed);
                words.extend(u64s(h.range_bytes));
            }
            ChannelMessage::GpadlBody(b) => {
                let h = head.expect("body before header");
                assert_eq!(b.fixed.gpadl, h.gpadl);
                assert_eq!(b.fixed.msgnumber as usize, i);
                words.extend(b.pfns());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let h = head.expect("no header");
    (h.child_relid, h.gpadl, h.range_buflen, h.rangecount, words)
}
