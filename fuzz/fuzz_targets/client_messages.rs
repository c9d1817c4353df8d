// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Arbitrary host message sequences (structured and raw) into the guest
//! client after a scripted successful contact, interleaved with the guest's
//! own operations (offers request, GPADL create/teardown, open/close, modify,
//! release, unload, restart) and failing posts. Checked after every step:
//! the client's own invariants hold, everything it posts parses and goes to
//! the negotiated connection id, and every completion event answers an
//! operation this guest started and that was still outstanding (a host
//! cannot complete what was never asked, or complete it twice).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use vmbus_core::client::{
    ChannelSlot, Client, ClientConfig, ClientEvent, ConnectionState, ModifyOutcome, OpenParams, TeardownOutcome,
};
use vmbus_core::gpadl::GpaRangeRef;
use vmbus_core::guid::{interface, Guid};
use vmbus_core::hv::{HvStatus, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4};
use vmbus_core::message::*;
use vmbus_core::platform::Hypervisor;
use zerocopy::FromZeros;

const HOST_CONN: u32 = 0x0B;

#[derive(Default)]
struct Hv {
    posted: RefCell<Vec<(u32, Vec<u8>)>>,
    fail: Cell<bool>,
}

impl Hypervisor for Hv {
    fn post_message(&self, connection_id: u32, message: &[u8]) -> HvStatus {
        if self.fail.get() {
            return HvStatus::INSUFFICIENT_BUFFERS;
        }
        self.posted.borrow_mut().push((connection_id, message.to_vec()));
        HvStatus::SUCCESS
    }
    fn signal_event(&self, _: u32) -> HvStatus {
        HvStatus::SUCCESS
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RelidSel {
    Known(u8),
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HandleSel {
    Known(u8),
    Raw(u32),
}

#[derive(Arbitrary, Debug)]
enum HostMsg {
    Offer {
        relid: u8,
        class: bool,
        instance: u8,
        sub: u8,
        monitor: Option<u8>,
        connection_id: u32,
    },
    Rescind(RelidSel),
    AllOffersDelivered,
    OpenResult {
        relid: RelidSel,
        openid: Option<u32>,
        failed: bool,
    },
    GpadlCreated {
        relid: RelidSel,
        handle: HandleSel,
        failed: bool,
    },
    GpadlTorndown(HandleSel),
    VersionResponse {
        supported: bool,
        conn: u32,
    },
    UnloadResponse,
    ModifyResponse {
        relid: RelidSel,
        failed: bool,
    },
    TlConnectResult,
    /// A type only the guest sends, header and zeros.
    GuestType(u8),
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Step {
    Host(HostMsg),
    RequestOffers,
    CreateGpadl { relid: RelidSel, pages: u8, offset: u16 },
    Open { relid: RelidSel, gpadl: HandleSel, offset: u8, vp: u8 },
    Close(RelidSel),
    Teardown { relid: RelidSel, handle: HandleSel },
    Modify { relid: RelidSel, vp: u8 },
    Release(RelidSel),
    Unload,
    Start,
    FailPosts(bool),
}

/// Operations the guest started and the host has not answered yet.
#[derive(Default, Debug)]
struct Outstanding {
    gpadls: BTreeSet<(u32, u32)>,
    teardowns: BTreeSet<(u32, u32)>,
    opens: BTreeSet<u32>,
    modifies: BTreeSet<u32>,
}

impl Outstanding {
    fn event(&mut self, e: &ClientEvent) {
        match *e {
            ClientEvent::GpadlCreated { relid, handle, .. } => {
                assert!(self.gpadls.remove(&(relid, handle)), "GpadlCreated for ({relid}, {handle}) not pending");
            }
            ClientEvent::GpadlTornDown { relid, handle, .. } => {
                assert!(self.teardowns.remove(&(relid, handle)), "GpadlTornDown for ({relid}, {handle}) not pending");
            }
            ClientEvent::OpenResult { relid, .. } => {
                assert!(self.opens.remove(&relid), "OpenResult for {relid} not pending");
            }
            ClientEvent::ModifyChannelResponse { relid, .. } => {
                assert!(self.modifies.remove(&relid), "ModifyChannelResponse for {relid} not pending");
            }
            ClientEvent::UnloadComplete => {
                assert!(
                    self.gpadls.is_empty()
                        && self.teardowns.is_empty()
                        && self.opens.is_empty()
                        && self.modifies.is_empty(),
                    "operations left pending after UnloadComplete: {self:?}"
                );
            }
            _ => {}
        }
    }
}

type TestClient = Client<Vec<ChannelSlot>>;

fn relids(c: &TestClient) -> Vec<u32> {
    c.channels().map(|i| i.relid).collect()
}

fn pick_relid(c: &TestClient, s: RelidSel) -> u32 {
    let r = relids(c);
    match s {
        RelidSel::Known(i) if !r.is_empty() => r[i as usize % r.len()],
        RelidSel::Known(i) => i as u32,
        RelidSel::Raw(v) => v as u32,
    }
}

fn pick_handle(c: &TestClient, s: HandleSel) -> u32 {
    let all: Vec<u32> = relids(c).into_iter().flat_map(|r| c.gpadls(r).map(|(h, _)| h).collect::<Vec<_>>()).collect();
    match s {
        HandleSel::Known(i) if !all.is_empty() => all[i as usize % all.len()],
        HandleSel::Known(i) => i as u32,
        HandleSel::Raw(v) => v,
    }
}

fn hdr(t: MessageType) -> MessageHeader {
    MessageHeader::new(t)
}

fn host_bytes(c: &TestClient, m: &HostMsg) -> Vec<u8> {
    let msg = match m {
        HostMsg::Raw(b) => return b.iter().copied().take(300).collect(),
        HostMsg::GuestType(t) => {
            let mut b = vec![0u8; 64];
            b[0] = [5u8, 8, 9, 11, 13, 14, 3, 16, 21, 22][*t as usize % 10];
            return b;
        }
        HostMsg::Offer { relid, class, instance, sub, monitor, connection_id } => {
            let mut o = OfferChannel::new_zeroed();
            o.header = hdr(MessageType::OFFER_CHANNEL);
            o.if_type = if *class { interface::NETWORK } else { interface::SCSI };
            let mut g = Guid::ZERO;
            g.bytes[0] = *instance % 4;
            o.if_instance = g;
            o.sub_channel_index = (*sub % 3) as u16;
            o.child_relid = (*relid % 48) as u32;
            o.monitor_id = monitor.unwrap_or(0);
            o.monitor_allocated = monitor.is_some() as u8;
            o.connection_id = *connection_id;
            ChannelMessage::OfferChannel(o)
        }
        HostMsg::Rescind(r) => ChannelMessage::RescindChannelOffer(RescindChannelOffer {
            header: hdr(MessageType::RESCIND_CHANNEL_OFFER),
            child_relid: pick_relid(c, *r),
        }),
        HostMsg::AllOffersDelivered => ChannelMessage::AllOffersDelivered,
        HostMsg::OpenResult { relid, openid, failed } => {
            let relid = pick_relid(c, *relid);
            ChannelMessage::OpenResult(OpenResult {
                header: hdr(MessageType::OPEN_CHANNEL_RESULT),
                child_relid: relid,
                openid: openid.unwrap_or(relid),
                status: if *failed { 0xC000_0001 } else { 0 },
            })
        }
        HostMsg::GpadlCreated { relid, handle, failed } => ChannelMessage::GpadlCreated(GpadlCreated {
            header: hdr(MessageType::GPADL_CREATED),
            child_relid: pick_relid(c, *relid),
            gpadl: pick_handle(c, *handle),
            creation_status: if *failed { 0xC000_0001 } else { 0 },
        }),
        HostMsg::GpadlTorndown(h) => ChannelMessage::GpadlTorndown(GpadlTorndown {
            header: hdr(MessageType::GPADL_TORNDOWN),
            gpadl: pick_handle(c, *h),
        }),
        HostMsg::VersionResponse { supported, conn } => ChannelMessage::VersionResponse(VersionResponse {
            header: hdr(MessageType::VERSION_RESPONSE),
            version_supported: *supported as u8,
            connection_state: 0,
            padding: 0,
            msg_conn_id: *conn,
        }),
        HostMsg::UnloadResponse => ChannelMessage::UnloadResponse,
        HostMsg::ModifyResponse { relid, failed } => ChannelMessage::ModifyChannelResponse(ModifyChannelResponse {
            header: hdr(MessageType::MODIFY_CHANNEL_RESPONSE),
            child_relid: pick_relid(c, *relid),
            status: *failed as u32,
        }),
        HostMsg::TlConnectResult => ChannelMessage::TlConnectResult(TlConnectResult {
            header: hdr(MessageType::TL_CONNECT_RESULT),
            service_id: Guid::ZERO,
            endpoint_id: Guid::ZERO,
            status: 0,
        }),
    };
    OutgoingMessage::new(&msg).map(|o| o.as_bytes().to_vec()).unwrap_or_default()
}

/// Everything the client posted since the last check parses and goes to a
/// connection id that is right for it.
fn check_posted(c: &TestClient, hv: &Hv) {
    for (conn, bytes) in hv.posted.borrow_mut().drain(..) {
        let m = ChannelMessage::parse(&bytes).expect("the client posted an unparseable message");
        match m {
            ChannelMessage::InitiateContact(_) => {
                assert!(conn == MESSAGE_CONNECTION_ID || conn == MESSAGE_CONNECTION_ID_4, "contact on {conn}")
            }
            _ => assert_eq!(conn, c.msg_conn_id(), "{m:?} posted on the wrong connection id"),
        }
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let hv = Hv::default();
    let mut config = ClientConfig::new(0, 0x1234_5000, (0x2222_0000, 0x3333_0000));
    config.max_channels = 16;
    let mut client = Client::new(config);
    let mut events: Vec<ClientEvent> = Vec::new();

    // Scripted contact: 5.3 accepted on HOST_CONN.
    client.start(&hv).expect("start");
    let accept = ChannelMessage::VersionResponse(VersionResponse {
        header: hdr(MessageType::VERSION_RESPONSE),
        version_supported: 1,
        connection_state: 0,
        padding: 0,
        msg_conn_id: HOST_CONN,
    });
    let accept = OutgoingMessage::new(&accept).expect("fits");
    client.handle_message(accept.as_bytes(), &hv, &mut |e| events.push(e)).expect("contact accepted");
    assert!(matches!(events.as_slice(), [ClientEvent::Connected { msg_conn_id: HOST_CONN, .. }]));
    assert_eq!(client.state(), ConnectionState::Connected);
    check_posted(&client, &hv);
    events.clear();

    let mut pending = Outstanding::default();
    let pfns: Vec<u64> = (0x1000..0x1000 + 64).collect();
    for step in steps.iter().take(200) {
        match step {
            Step::Host(m) => {
                let bytes = host_bytes(&client, m);
                let _ = client.handle_message(&bytes, &hv, &mut |e| events.push(e));
            }
            Step::RequestOffers => {
                let _ = client.request_offers(&hv);
            }
            Step::CreateGpadl { relid, pages, offset } => {
                let relid = pick_relid(&client, *relid);
                let n = (*pages as usize % 64) + 1;
                let byte_offset = (*offset % 4096) as u32;
                let byte_count = (n as u32 * 4096).saturating_sub(byte_offset).max(1);
                let range = GpaRangeRef { byte_count, byte_offset, pfns: &pfns[..n] };
                if let Ok(handle) = client.create_gpadl(relid, range, &hv) {
                    assert!(pending.gpadls.insert((relid, handle)), "handle {handle} handed out twice");
                }
            }
            Step::Open { relid, gpadl, offset, vp } => {
                let relid = pick_relid(&client, *relid);
                let params = OpenParams {
                    ring_gpadl: pick_handle(&client, *gpadl),
                    downstream_page_offset: *offset as u32,
                    target_vp: *vp as u32 % 4,
                    user_data: &[1, 2, 3],
                };
                if client.open_channel(relid, &params, &hv).is_ok() {
                    assert!(pending.opens.insert(relid), "second open of {relid} accepted");
                }
            }
            Step::Close(r) => {
                let _ = client.close_channel(pick_relid(&client, *r), &hv);
            }
            Step::Teardown { relid, handle } => {
                let relid = pick_relid(&client, *relid);
                let handle = pick_handle(&client, *handle);
                if let Ok(TeardownOutcome::Pending) = client.teardown_gpadl(relid, handle, &hv) {
                    assert!(pending.teardowns.insert((relid, handle)));
                }
            }
            Step::Modify { relid, vp } => {
                let relid = pick_relid(&client, *relid);
                if let Ok(ModifyOutcome::AwaitResponse) = client.modify_channel(relid, *vp as u32 % 4, &hv) {
                    assert!(pending.modifies.insert(relid), "second modify of {relid} accepted");
                }
            }
            Step::Release(r) => {
                let _ = client.release_relid(pick_relid(&client, *r), &hv);
            }
            Step::Unload => {
                let _ = client.unload(&hv);
            }
            Step::Start => {
                if client.start(&hv).is_ok() {
                    // A restart begins from an empty table.
                    assert_eq!(client.channels().count(), 0);
                }
            }
            Step::FailPosts(on) => hv.fail.set(*on),
        }
        for e in events.drain(..) {
            pending.event(&e);
        }
        if client.channels().count() == 0 {
            // No channel, so nothing can still be pending on one.
            assert!(
                pending.gpadls.is_empty()
                    && pending.teardowns.is_empty()
                    && pending.opens.is_empty()
                    && pending.modifies.is_empty(),
                "operations pending with no channel: {pending:?}"
            );
        }
        if let Err(v) = client.check_invariants() {
            panic!("client invariant broken: {v:?}");
        }
        check_posted(&client, &hv);
    }
});
