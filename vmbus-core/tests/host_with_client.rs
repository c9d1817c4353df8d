// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Cross-check: this crate's guest [`Client`] against its host [`Server`],
//! message for message. Each side was tested against hand-built bytes; here
//! any disagreement between them about the protocol (connection ids, GPADL
//! splitting and numbering, openid, version rules) shows up as a rejection
//! on one side. Every message either side receives must be accepted, with
//! one exception: guest posts that crossed a rescind in flight (sent while
//! the guest still believed the channel live) may be refused by the host,
//! which still answers them; the guest takes those late answers quietly.
#![cfg(feature = "host")]

use std::cell::RefCell;
use vmbus_core::client::{
    ChannelSlot, Client, ClientConfig, ClientEvent, ConnectionState, ModifyOutcome, OpStatus, OpenParams,
    TeardownOutcome,
};
use vmbus_core::gpadl::GpaRangeRef;
use vmbus_core::guid::Guid;
use vmbus_core::host::{HostError, OfferSpec, Server, ServerConfig, ServerEvent, ALL_VERSIONS};
use vmbus_core::hv::{HvStatus, MESSAGE_CONNECTION_ID_4};
use vmbus_core::message::ChannelMessage;
use vmbus_core::platform::Hypervisor;
use vmbus_core::version::Version;

/// Records the guest's posts; the test loop delivers them to the server.
#[derive(Default)]
struct Wire {
    posts: RefCell<Vec<(u32, Vec<u8>)>>,
    /// A host without 5.x has no connection id 4: the hypercall fails.
    no_connection_4: bool,
}

impl Hypervisor for Wire {
    fn post_message(&self, connection_id: u32, message: &[u8]) -> HvStatus {
        if self.no_connection_4 && connection_id == MESSAGE_CONNECTION_ID_4 {
            return HvStatus::INVALID_CONNECTION_ID;
        }
        self.posts.borrow_mut().push((connection_id, message.to_vec()));
        HvStatus::SUCCESS
    }
    fn signal_event(&self, _connection_id: u32) -> HvStatus {
        HvStatus::SUCCESS
    }
}

struct Pair {
    client: Client<[ChannelSlot; 32]>,
    server: Server,
    wire: Wire,
    client_events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
    /// Guest posts the server refused because they crossed a rescind.
    crossed: u64,
    /// Handles of GPADL headers refused that way (their bodies are refused too).
    crossed_headers: Vec<u32>,
}

impl Pair {
    fn new(versions: &[Version]) -> Pair {
        let config = ServerConfig { versions: versions.to_vec(), ..ServerConfig::default() };
        Pair {
            client: Client::with_storage(ClientConfig::new(0, 0x5000, (0x6000, 0x7000)), [ChannelSlot::EMPTY; 32]),
            server: Server::new(config).unwrap(),
            wire: Wire { no_connection_4: !versions.iter().any(|v| v.uses_msg_sint()), ..Wire::default() },
            client_events: Vec::new(),
            server_events: Vec::new(),
            crossed: 0,
            crossed_headers: Vec::new(),
        }
    }

    /// Whether the server's refusal `e` of guest post `bytes` is a post that
    /// crossed a rescind: the host rescinded the channel while the guest,
    /// which has not seen the rescind yet, still takes it for live.
    fn crossed_a_rescind(&mut self, e: HostError, bytes: &[u8]) -> bool {
        match e {
            HostError::Rescinded(relid) => {
                let host_rescinded = self.server.channel(relid).is_some_and(|c| c.is_rescinded());
                let guest_unaware = self.client.channel(relid).is_some_and(|c| !c.rescinded);
                if let Ok(ChannelMessage::GpadlHeader(h)) = ChannelMessage::parse(bytes) {
                    self.crossed_headers.push(h.fixed.gpadl);
                }
                host_rescinded && guest_unaware
            }
            HostError::GpadlBodyWithoutHeader(handle) => self.crossed_headers.contains(&handle),
            _ => false,
        }
    }

    /// Moves messages both ways until both queues are empty. Every message
    /// must be accepted by its receiver.
    fn pump(&mut self) {
        for _ in 0..1000 {
            let posts: Vec<_> = self.wire.posts.borrow_mut().drain(..).collect();
            let mut moved = !posts.is_empty();
            for (conn, bytes) in posts {
                if let Err(e) = self.server.handle_guest_message(conn, &bytes) {
                    assert!(
                        self.crossed_a_rescind(e, &bytes),
                        "server refused a post on {conn:#x} ({e}): {bytes:02x?}"
                    );
                    self.crossed += 1;
                }
            }
            while let Some(out) = self.server.pop_outgoing() {
                moved = true;
                let events = &mut self.client_events;
                let r = self.client.handle_message(out.as_bytes(), &self.wire, &mut |e| events.push(e));
                assert_eq!(r, Ok(()), "client refused {:?}", out.message_type());
            }
            while let Some(e) = self.server.pop_event() {
                self.server_events.push(e);
            }
            if !moved {
                assert_eq!(self.client.check_invariants(), Ok(()));
                return;
            }
        }
        panic!("the two sides never went quiet");
    }

    fn take_client_events(&mut self) -> Vec<ClientEvent> {
        std::mem::take(&mut self.client_events)
    }
}

fn net(n: u8) -> OfferSpec {
    let mut instance = Guid::ZERO;
    instance.bytes[0] = n;
    OfferSpec::new(Guid::must("f8615163-df3e-46c5-913f-f2d2f965ed0e"), instance)
}

/// A full channel life at `version`: contact, offers (with a sub-channel),
/// a ring GPADL needing several body messages, open, modify, close,
/// teardown, rescind + release of a second channel, unload, re-contact.
fn life_at(version: Version) {
    let mut p = Pair::new(&[version]);
    let primary = p.server.add_offer(net(1)).unwrap();
    let doomed = p.server.add_offer(net(2)).unwrap();
    p.client.start(&p.wire).unwrap();
    p.pump();
    let negotiated = p.client.version();
    assert_eq!(negotiated, Some(version));
    let expected_conn = if version.uses_msg_sint() { p.server.config().msg_conn_id } else { 1 };
    assert_eq!(p.client.msg_conn_id(), expected_conn);

    p.client.request_offers(&p.wire).unwrap();
    p.pump();
    let subs = p.server.offer_subchannels(primary, 2).unwrap();
    p.pump();
    assert_eq!(p.client.channels().count(), 4);
    for s in &subs {
        assert_eq!(p.client.channel(*s).unwrap().primary_relid, Some(primary));
    }
    assert!(p.client.all_offers_delivered());

    // 130 pages: 1 header + 4 body messages.
    let pfns: Vec<u64> = (0..130).map(|i| 0x10_0000 + 2 * i).collect();
    let ring = p.client.create_gpadl(primary, GpaRangeRef::whole_pages(&pfns), &p.wire).unwrap();
    p.pump();
    assert!(p.take_client_events().contains(&ClientEvent::GpadlCreated {
        relid: primary,
        handle: ring,
        status: OpStatus::Success
    }));
    assert_eq!(p.server.gpadl(ring).unwrap().pfns().collect::<Vec<_>>(), pfns);

    let open = OpenParams { ring_gpadl: ring, downstream_page_offset: 65, target_vp: 3, user_data: &[7; 16] };
    p.client.open_channel(primary, &open, &p.wire).unwrap();
    p.pump();
    p.server.complete_open(primary, 0).unwrap();
    p.pump();
    assert!(p.take_client_events().contains(&ClientEvent::OpenResult { relid: primary, status: OpStatus::Success }));
    assert!(p.server.channel(primary).unwrap().is_open());

    if version.supports_modify_channel() {
        let outcome = p.client.modify_channel(primary, 5, &p.wire).unwrap();
        p.pump();
        let answered = p
            .take_client_events()
            .contains(&ClientEvent::ModifyChannelResponse { relid: primary, status: OpStatus::Success });
        assert_eq!(answered, outcome == ModifyOutcome::AwaitResponse);
        assert_eq!(outcome == ModifyOutcome::AwaitResponse, version.has_modify_channel_response());
    }

    p.client.close_channel(primary, &p.wire).unwrap();
    p.pump();
    assert!(!p.server.channel(primary).unwrap().is_open());
    assert_eq!(p.client.teardown_gpadl(primary, ring, &p.wire), Ok(TeardownOutcome::Pending));
    p.pump();
    assert!(p.server.gpadl(ring).is_none());

    // The second channel gets a GPADL, then is rescinded: the guest frees it
    // locally and releases the relid, which the host may then reuse.
    let g = p.client.create_gpadl(doomed, GpaRangeRef::whole_pages(&pfns[..3]), &p.wire).unwrap();
    p.pump();
    p.server.rescind(doomed).unwrap();
    p.pump();
    assert_eq!(p.client.teardown_gpadl(doomed, g, &p.wire), Ok(TeardownOutcome::CompletedLocally));
    p.client.release_relid(doomed, &p.wire).unwrap();
    p.pump();
    assert!(p.server.channel(doomed).is_none());
    assert!(p.server.gpadl(g).is_none());

    if version.supports_unload() {
        p.client.unload(&p.wire).unwrap();
        p.pump();
        assert_eq!(p.client.state(), ConnectionState::Unloaded);
        assert!(p.server.connection().is_none());
        // Re-contact: the surviving primary is offered again.
        p.client.start(&p.wire).unwrap();
        p.pump();
        p.client.request_offers(&p.wire).unwrap();
        p.pump();
        assert_eq!(p.client.channels().map(|c| c.relid).collect::<Vec<_>>(), vec![primary]);
    }
    assert_eq!(p.server.counters().total_rejected(), 0);
    assert_eq!(p.client.counters().handled, p.client.counters().messages);
}

#[test]
fn client_and_server_agree_at_every_version_the_guest_speaks() {
    for v in ALL_VERSIONS.into_iter().filter(|v| v.is_supported_by_guest()) {
        life_at(v);
    }
}

#[test]
fn client_falls_back_to_the_servers_newest_version() {
    // Refused by VersionResponse: 5.3, 5.2 and 5.1 are unknown to this host.
    let mut p = Pair::new(&[Version::WIN10_V5, Version::WIN10_V4_1, Version::WIN10]);
    p.client.start(&p.wire).unwrap();
    p.pump();
    assert_eq!(p.client.version(), Some(Version::WIN10_V5));
    assert_eq!(p.server.counters().versions_refused, 3);
    // An old host: the 5.x posts fail at the hypercall, 4.1 and 4.0 on id 1 are refused, 3.0 is accepted.
    let mut p = Pair::new(&[Version::WIN8_1, Version::WIN8]);
    p.client.start(&p.wire).unwrap();
    p.pump();
    assert_eq!(p.client.version(), Some(Version::WIN8_1));
    assert_eq!(p.client.msg_conn_id(), 1);
    assert_eq!(p.server.counters().versions_refused, 2);
}

/// The guest's CreateGpadl, GpadlTeardown, ModifyChannel and OpenChannel are
/// in flight when the host rescinds their channels. The host refuses (or
/// serves) them and answers after its rescind; the rescind already
/// completed each operation on the guest, which drops the four late answers
/// without a violation or an event.
#[test]
fn guest_posts_crossing_a_rescind() {
    let mut p = Pair::new(&[Version::WIN10_V5_3]);
    let a = p.server.add_offer(net(1)).unwrap();
    let b = p.server.add_offer(net(2)).unwrap();
    p.client.start(&p.wire).unwrap();
    p.pump();
    p.client.request_offers(&p.wire).unwrap();
    p.pump();
    let pfns: Vec<u64> = (0..8).map(|i| 0x30_0000 + i).collect();
    let ring_a = p.client.create_gpadl(a, GpaRangeRef::whole_pages(&pfns), &p.wire).unwrap();
    let extra = p.client.create_gpadl(a, GpaRangeRef::whole_pages(&pfns[..2]), &p.wire).unwrap();
    let ring_b = p.client.create_gpadl(b, GpaRangeRef::whole_pages(&pfns), &p.wire).unwrap();
    p.pump();
    let open = |ring| OpenParams { ring_gpadl: ring, downstream_page_offset: 4, target_vp: 0, user_data: &[] };
    p.client.open_channel(a, &open(ring_a), &p.wire).unwrap();
    p.pump();
    p.server.complete_open(a, 0).unwrap();
    p.pump();
    p.take_client_events();

    // In flight: on A a modify, a teardown and a 130-page create (header +
    // bodies); on B an open.
    assert_eq!(p.client.modify_channel(a, 1, &p.wire), Ok(ModifyOutcome::AwaitResponse));
    assert_eq!(p.client.teardown_gpadl(a, extra, &p.wire), Ok(TeardownOutcome::Pending));
    let big: Vec<u64> = (0..130).map(|i| 0x40_0000 + i).collect();
    let late = p.client.create_gpadl(a, GpaRangeRef::whole_pages(&big), &p.wire).unwrap();
    p.client.open_channel(b, &open(ring_b), &p.wire).unwrap();
    p.server.rescind(a).unwrap();
    p.server.rescind(b).unwrap();
    p.pump();

    let ev = p.take_client_events();
    let rescinded = OpStatus::Rescinded;
    for e in [
        ClientEvent::ModifyChannelResponse { relid: a, status: rescinded },
        ClientEvent::GpadlTornDown { relid: a, handle: extra, status: rescinded },
        ClientEvent::GpadlCreated { relid: a, handle: late, status: rescinded },
        ClientEvent::OpenResult { relid: b, status: rescinded },
    ] {
        assert_eq!(ev.iter().filter(|&&x| x == e).count(), 1, "{e:?} once, from the rescind: {ev:?}");
    }
    assert_eq!(ev.len(), 6, "two rescinds and four completions, nothing from the late answers: {ev:?}");
    let c = *p.client.counters();
    assert_eq!(c.late_after_rescind, 4);
    assert_eq!(c.rejected_total(), 0);
    assert_eq!(c.handled, c.messages);
    // The host took the modify, the GPADL header and its 4 bodies, the open
    // and the teardown as crossings of its rescind: answered, not rejected.
    assert_eq!(p.crossed, 0);
    assert_eq!(p.server.counters().total_rejected(), 0);
    assert_eq!(p.server.counters().total_crossed_rescind(), 8);

    // Both channels wind down and are released cleanly.
    p.client.close_channel(a, &p.wire).unwrap();
    for (relid, ring) in [(a, ring_a), (b, ring_b)] {
        assert_eq!(p.client.teardown_gpadl(relid, ring, &p.wire), Ok(TeardownOutcome::CompletedLocally));
        p.client.release_relid(relid, &p.wire).unwrap();
    }
    p.pump();
    assert!(p.server.channel(a).is_none() && p.server.channel(b).is_none());
    assert_eq!(p.server.gpadls().count(), 0);
}

#[derive(Clone, Debug)]
enum Step {
    /// Guest operations on the `n`-th channel of the client's table.
    CreateGpadl {
        n: usize,
        pages: usize,
    },
    Open {
        n: usize,
        offset: u32,
    },
    Close(usize),
    Teardown {
        n: usize,
        k: usize,
    },
    Modify {
        n: usize,
        vp: u32,
    },
    Release(usize),
    /// Host actions on the `n`-th relid of the server.
    AddOffer(u8),
    Subchannels {
        n: usize,
        count: u16,
    },
    Rescind(usize),
    CompleteOpen {
        n: usize,
        ok: bool,
    },
    /// Leave the posts of the next step on the wire: the step after it
    /// (e.g. a rescind) happens while they are in flight.
    Hold,
    /// The host rescinds the `n`-th channel named by a guest post still in
    /// flight (after a `Hold`), so the two cross.
    RescindInFlight(usize),
}

/// The channel a guest post names, if any.
fn posted_relid(bytes: &[u8]) -> Option<u32> {
    Some(match ChannelMessage::parse(bytes).ok()? {
        ChannelMessage::GpadlHeader(h) => h.fixed.child_relid,
        ChannelMessage::OpenChannel(m) => m.child_relid,
        ChannelMessage::CloseChannel(m) => m.child_relid,
        ChannelMessage::GpadlTeardown(m) => m.child_relid,
        ChannelMessage::ModifyChannel(m) => m.child_relid,
        _ => return None,
    })
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0usize..6, 1usize..90).prop_map(|(n, pages)| Step::CreateGpadl { n, pages }),
        3 => (0usize..6, 1u32..8).prop_map(|(n, offset)| Step::Open { n, offset }),
        2 => (0usize..6).prop_map(Step::Close),
        2 => (0usize..6, 0usize..3).prop_map(|(n, k)| Step::Teardown { n, k }),
        1 => (0usize..6, 0u32..4).prop_map(|(n, vp)| Step::Modify { n, vp }),
        2 => (0usize..6).prop_map(Step::Release),
        1 => (0u8..4).prop_map(Step::AddOffer),
        1 => (0usize..6, 0u16..3).prop_map(|(n, count)| Step::Subchannels { n, count }),
        1 => (0usize..6).prop_map(Step::Rescind),
        3 => (0usize..6, proptest::bool::weighted(0.8)).prop_map(|(n, ok)| Step::CompleteOpen { n, ok }),
        3 => Just(Step::Hold),
        3 => (0usize..6).prop_map(Step::RescindInFlight),
    ]
}

fn nth<T: Copy>(items: impl Iterator<Item = T>, n: usize) -> Option<T> {
    let v: Vec<T> = items.collect();
    (!v.is_empty()).then(|| v[n % v.len()])
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

    /// A well-behaved guest and the host, driven by random guest operations
    /// and host actions (offers, sub-channels, rescinds, open answers, some
    /// while guest posts are in flight), never disagree: the guest rejects no
    /// message, the host only posts that crossed a rescind, and an unload
    /// leaves both with nothing in use.
    #[test]
    fn random_lives_never_disagree(version in 0usize..4, steps in proptest::collection::vec(step(), 1..60)) {
        let version = [Version::WIN10_V5_3, Version::WIN10_V5, Version::WIN10_V4_1, Version::WIN8_1][version];
        let mut p = Pair::new(&[version]);
        p.server.add_offer(net(1)).unwrap();
        p.server.add_offer(net(2)).unwrap();
        p.client.start(&p.wire).unwrap();
        p.pump();
        p.client.request_offers(&p.wire).unwrap();
        p.pump();
        let pfns: Vec<u64> = (0..90).map(|i| 0x20_0000 + i).collect();
        let mut sizes = std::collections::HashMap::new();
        let mut hold = false;
        for s in steps {
            if matches!(s, Step::Hold) {
                hold = true;
                continue;
            }
            let relid = |p: &Pair, n: usize| nth(p.client.channels().map(|c| c.relid), n);
            let host_relid = |p: &Pair, n: usize| nth(p.server.relids(), n);
            // Refusals of local calls are fine: they post nothing.
            match s {
                Step::CreateGpadl { n, pages } => if let Some(r) = relid(&p, n) {
                    if let Ok(h) = p.client.create_gpadl(r, GpaRangeRef::whole_pages(&pfns[..pages]), &p.wire) {
                        sizes.insert(h, pages as u32);
                    }
                },
                Step::Open { n, offset } => if let Some(r) = relid(&p, n) {
                    let created = nth(p.client.gpadls(r).filter(|g| g.1 == vmbus_core::client::GpadlState::Created).map(|g| g.0), 0);
                    // Only rings of at least 4 pages, split where both halves have 2.
                    let ring = created.filter(|h| sizes[h] >= 4);
                    if let Some(ring) = ring {
                        let offset = 2 + offset % (sizes[&ring] - 3);
                        let o = OpenParams { ring_gpadl: ring, downstream_page_offset: offset, target_vp: 1, user_data: &[] };
                        let _ = p.client.open_channel(r, &o, &p.wire);
                    }
                },
                Step::Close(n) => if let Some(r) = relid(&p, n) {
                    let _ = p.client.close_channel(r, &p.wire);
                },
                Step::Teardown { n, k } => if let Some(r) = relid(&p, n) {
                    if let Some((h, _)) = nth(p.client.gpadls(r), k) {
                        let _ = p.client.teardown_gpadl(r, h, &p.wire);
                    }
                },
                Step::Modify { n, vp } => if let Some(r) = relid(&p, n) {
                    let _ = p.client.modify_channel(r, vp, &p.wire);
                },
                Step::Release(n) => if let Some(r) = relid(&p, n) {
                    let _ = p.client.release_relid(r, &p.wire);
                },
                Step::AddOffer(i) => { let _ = p.server.add_offer(net(10 + i)); }
                Step::Subchannels { n, count } => if let Some(r) = host_relid(&p, n) {
                    let _ = p.server.offer_subchannels(r, count);
                },
                Step::Rescind(n) => if let Some(r) = host_relid(&p, n) {
                    let _ = p.server.rescind(r);
                },
                Step::CompleteOpen { n, ok } => if let Some(r) = host_relid(&p, n) {
                    let _ = p.server.complete_open(r, if ok { 0 } else { 0xC000_0001 });
                },
                Step::RescindInFlight(n) => {
                    let in_flight: Vec<u32> = p.wire.posts.borrow().iter().filter_map(|(_, b)| posted_relid(b)).collect();
                    if let Some(r) = nth(in_flight.into_iter(), n) {
                        let _ = p.server.rescind(r);
                    }
                }
                Step::Hold => {}
            }
            if std::mem::take(&mut hold) {
                // Views differ while messages are in flight: no checks now.
                continue;
            }
            p.pump();
            // The two views of every channel agree.
            for c in p.client.channels() {
                let hc = p.server.channel(c.relid).expect("client knows a relid the host dropped");
                proptest::prop_assert_eq!(c.rescinded, hc.is_rescinded());
                proptest::prop_assert!(hc.is_offered());
                // A rescinded channel may be closed and its GPADLs released
                // locally by the guest only.
                if !c.rescinded {
                    let client_state = match c.state {
                        vmbus_core::client::ChannelState::Closed => 0,
                        vmbus_core::client::ChannelState::Opening { .. } => 1,
                        vmbus_core::client::ChannelState::Open { .. } => 2,
                    };
                    let host_state = match hc.state() {
                        vmbus_core::host::ChannelState::Closed => 0,
                        vmbus_core::host::ChannelState::Opening(_) => 1,
                        vmbus_core::host::ChannelState::Open(_) => 2,
                    };
                    proptest::prop_assert_eq!(client_state, host_state, "relid {}", c.relid);
                    // Every GPADL was answered, and both sides hold the same ones.
                    let mut mine: Vec<(u32, vmbus_core::client::GpadlState)> = p.client.gpadls(c.relid).collect();
                    mine.sort_by_key(|g| g.0);
                    let mut theirs: Vec<(u32, vmbus_core::client::GpadlState)> = p
                        .server
                        .gpadls()
                        .filter(|g| g.relid == c.relid)
                        .map(|g| (g.handle, vmbus_core::client::GpadlState::Created))
                        .collect();
                    theirs.sort_by_key(|g| g.0);
                    proptest::prop_assert_eq!(mine, theirs, "relid {}", c.relid);
                }
            }
        }
        p.pump();
        if version.supports_unload() {
            p.client.unload(&p.wire).unwrap();
            p.pump();
            proptest::prop_assert_eq!(p.client.channels().count(), 0);
            proptest::prop_assert_eq!(p.server.gpadls().count(), 0);
            proptest::prop_assert_eq!(p.server.pending_gpadl_count(), 0);
        }
        // The host refused only posts that crossed a rescind; the guest
        // refused nothing, and took each late answer to such a post quietly.
        proptest::prop_assert_eq!(p.server.counters().total_rejected(), p.crossed);
        let c = *p.client.counters();
        proptest::prop_assert_eq!(c.rejected_total(), 0);
        proptest::prop_assert_eq!(c.handled, c.messages);
        proptest::prop_assert!(c.late_after_rescind <= c.cancelled_operations);
    }
}
