// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Host server property tests: random and garbled guest message sequences,
//! interleaved with host actions and faults, never panic and keep the
//! server's invariants.
#![cfg(feature = "host")]

#[path = "host_support.rs"]
mod support;

use proptest::prelude::*;
use support::*;
use vmbus_core::host::{ChannelState, HostError, OfferSpec, ReplyKinds, RescindCrossings, Server, ALL_VERSIONS};
use vmbus_core::message::{ChannelMessage, InitiateContact};
use vmbus_core::version::Version;

const OUTBOX: usize = 16;
const EVENTS: usize = 32;

#[derive(Clone, Debug)]
enum Guest {
    Contact { version: usize, vcpu: u32, sint: u8 },
    RequestOffers,
    Gpadl { relid: u32, handle: u32, pages: usize, skip_body: bool, zero_numbered: bool },
    GpadlHeaderOnly { relid: u32, handle: u32, pages: usize },
    Open { relid: u32, handle: u32, offset: u32, vp: u32 },
    Close(u32),
    Teardown { relid: u32, handle: u32 },
    Released(u32),
    Modify { relid: u32, vp: u32 },
    Unload,
}

#[derive(Clone, Debug)]
enum Op {
    Guest(Guest),
    Garbled { msg: Guest, at: usize, xor: u8 },
    Truncated { msg: Guest, keep: usize },
    Raw(Vec<u8>),
    OnConnection { msg: Guest, connection_id: u32 },
    AddOffer(u8),
    Subchannels { relid: u32, count: u16 },
    Rescind(u32),
    CompleteOpen { relid: u32, ok: bool },
    Faults { drop: u32, fail_open: bool, fail_gpadl: bool, silent: bool },
    AutoAccept(bool),
    Drain,
}

fn guest() -> impl Strategy<Value = Guest> {
    prop_oneof![
        1 => (0..ALL_VERSIONS.len() + 1, 0u32..5, 0u8..20).prop_map(|(version, vcpu, sint)| Guest::Contact {
            version,
            vcpu,
            sint
        }),
        1 => Just(Guest::RequestOffers),
        3 => (0u32..6, 0u32..5, 1usize..70, proptest::bool::weighted(0.2), any::<bool>()).prop_map(
            |(relid, handle, pages, skip_body, zero_numbered)| Guest::Gpadl {
                relid,
                handle,
                pages,
                skip_body,
                zero_numbered
            }
        ),
        1 => (0u32..6, 0u32..5, 27usize..70).prop_map(|(relid, handle, pages)| Guest::GpadlHeaderOnly {
            relid,
            handle,
            pages
        }),
        // Mostly the ring GPADL of the same number as the relid, offsets
        // around the valid range, so opens succeed often enough.
        4 => (0u32..6, proptest::option::weighted(0.2, 0u32..5), 0u32..8, 0u32..5).prop_map(
            |(relid, handle, offset, vp)| Guest::Open { relid, handle: handle.unwrap_or(relid), offset, vp }
        ),
        2 => (0u32..6).prop_map(Guest::Close),
        2 => (0u32..6, 0u32..5).prop_map(|(relid, handle)| Guest::Teardown { relid, handle }),
        2 => (0u32..6).prop_map(Guest::Released),
        2 => (0u32..6, 0u32..6).prop_map(|(relid, vp)| Guest::Modify { relid, vp }),
        1 => Just(Guest::Unload),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => guest().prop_map(Op::Guest),
        2 => (guest(), 0usize..240, 1u8..=255).prop_map(|(msg, at, xor)| Op::Garbled { msg, at, xor }),
        1 => (guest(), 0usize..40).prop_map(|(msg, keep)| Op::Truncated { msg, keep }),
        1 => proptest::collection::vec(any::<u8>(), 0..241).prop_map(Op::Raw),
        1 => (guest(), prop_oneof![Just(1u32), Just(4), Just(0x2A), any::<u32>()])
            .prop_map(|(msg, connection_id)| Op::OnConnection { msg, connection_id }),
        2 => (0u8..4).prop_map(Op::AddOffer),
        1 => (0u32..6, 0u16..4).prop_map(|(relid, count)| Op::Subchannels { relid, count }),
        1 => (0u32..6).prop_map(Op::Rescind),
        2 => (0u32..6).prop_map(|relid| Op::CompleteOpen { relid, ok: true }),
        2 => (0u32..6, any::<bool>()).prop_map(|(relid, ok)| Op::CompleteOpen { relid, ok }),
        1 => (any::<u32>(), proptest::bool::weighted(0.1), proptest::bool::weighted(0.1), proptest::bool::weighted(0.02))
            .prop_map(|(drop, fail_open, fail_gpadl, silent)| Op::Faults {
                drop: drop & drop.rotate_left(7) & drop.rotate_left(13),
                fail_open,
                fail_gpadl,
                silent
            }),
        1 => any::<bool>().prop_map(Op::AutoAccept),
        3 => Just(Op::Drain),
    ]
}

/// The bytes of each HvPostMessage a guest would make for `g`.
fn encode(g: &Guest) -> Vec<Vec<u8>> {
    match *g {
        Guest::Contact { version, vcpu, sint } => {
            let v = ALL_VERSIONS.get(version).copied().unwrap_or(Version(0x0006_0000));
            let mut ic = initiate_contact(v);
            ic.target_vcpu = vcpu;
            if v.uses_msg_sint() {
                ic.interrupt_page_or_sint = InitiateContact::sint_union(sint, 0);
            }
            vec![bytes_of(&ChannelMessage::InitiateContact(ic))]
        }
        Guest::RequestOffers => vec![bytes_of(&ChannelMessage::RequestOffers)],
        Guest::Gpadl { relid, handle, pages, skip_body, zero_numbered } => {
            let mut m = gpadl_messages(relid, handle, 0x100, pages);
            if zero_numbered {
                // As Linux and FreeBSD send them.
                for body in m.iter_mut().skip(1) {
                    body[8..12].copy_from_slice(&0u32.to_le_bytes());
                }
            }
            if skip_body && m.len() > 2 {
                m.remove(1);
            }
            m
        }
        Guest::GpadlHeaderOnly { relid, handle, pages } => vec![gpadl_messages(relid, handle, 0x100, pages).remove(0)],
        Guest::Open { relid, handle, offset, vp } => vec![bytes_of(&open_msg(relid, relid, handle, offset, vp))],
        Guest::Close(r) => vec![bytes_of(&close_msg(r))],
        Guest::Teardown { relid, handle } => vec![bytes_of(&teardown_msg(relid, handle))],
        Guest::Released(r) => vec![bytes_of(&released_msg(r))],
        Guest::Modify { relid, vp } => vec![bytes_of(&modify_msg(relid, vp))],
        Guest::Unload => vec![bytes_of(&ChannelMessage::Unload)],
    }
}

fn guest_conn(s: &Server, g: &Guest) -> u32 {
    match *g {
        Guest::Contact { version, .. } => {
            contact_conn(ALL_VERSIONS.get(version).copied().unwrap_or(Version(0x0006_0000)))
        }
        _ => conn(s),
    }
}

fn check_invariants(s: &Server) {
    assert!(s.outgoing_len() <= OUTBOX);
    assert!(s.crossed_gpadl_count() <= s.config().max_pending_gpadls, "crossed headers unbounded");
    if s.connection().is_none() {
        assert_eq!(s.crossed_gpadl_count(), 0);
    }
    assert!(s.event_len() <= EVENTS);
    let established: usize = s.gpadls().map(|g| g.page_count()).sum();
    assert!(s.gpadl_page_total() >= established);
    if s.pending_gpadl_count() == 0 {
        assert_eq!(s.gpadl_page_total(), established);
    }
    for g in s.gpadls() {
        assert!(s.channel(g.relid).is_some(), "GPADL {:#x} outlives relid {}", g.handle, g.relid);
        assert!(g.page_count() > 0);
    }
    for relid in s.relids() {
        assert!(relid > 0 && relid < 2048);
        let c = s.channel(relid).unwrap();
        assert_eq!(s.channel_by_signal_connection(c.signal_connection_id()), Some(relid));
        if let ChannelState::Opening(p) | ChannelState::Open(p) = c.state() {
            let g = s.gpadl(p.gpadl).expect("open channel without its ring GPADL");
            assert_eq!(g.relid, relid);
            assert!(p.downstream_offset >= 2 && p.downstream_offset as usize + 2 <= g.page_count());
            assert!(!(c.is_rescinded() && matches!(c.state(), ChannelState::Opening(_))));
        }
        if !c.is_offered() {
            // Never sent, or declined by the guest: nothing can be in use.
            assert!(matches!(c.state(), ChannelState::Closed));
            assert!(s.gpadls().all(|g| g.relid != relid), "GPADL on a channel the guest does not know");
        }
        if s.connection().is_none() {
            assert!(!c.is_rescinded(), "rescinded channel survived disconnect");
            assert!(!c.is_offered());
            assert!(matches!(c.state(), ChannelState::Closed));
        }
    }
    if s.connection().is_none() {
        assert_eq!(s.gpadls().count(), 0);
        assert_eq!(s.pending_gpadl_count(), 0);
        assert_eq!(s.gpadl_page_total(), 0);
    }
}

/// Posts one guest message and checks how it was classified: a refusal is
/// counted once in `rejected`, a tolerated crossing once in
/// `crossed_rescind` (and is a success), never both; with crossings
/// tolerated no message is refused for naming a rescinded channel.
fn post_checked(s: &mut Server, connection_id: u32, bytes: &[u8]) {
    let before = s.counters().clone();
    let tolerate = s.config().rescind_crossings == RescindCrossings::Tolerate;
    let result = s.handle_guest_message(connection_id, bytes);
    let after = s.counters();
    let rejected = after.total_rejected() - before.total_rejected();
    let crossed = after.total_crossed_rescind() - before.total_crossed_rescind();
    assert!(rejected + crossed <= 1, "{result:?}: rejected {rejected}, crossed {crossed}");
    match result {
        // Silent and unparseable-header messages may escape the per-type counts.
        Err(HostError::Silent) => assert_eq!(rejected + crossed, 0),
        Err(e) => {
            assert_eq!(crossed, 0, "{e}");
            assert!(!(tolerate && matches!(e, HostError::Rescinded(_))), "crossing refused: {e}");
        }
        Ok(()) => assert_eq!(rejected, 0),
    }
    if !tolerate {
        assert_eq!(after.total_crossed_rescind(), 0);
    }
}

fn drain_checked(s: &mut Server) {
    while let Some(m) = s.pop_outgoing() {
        ChannelMessage::parse(m.as_bytes()).expect("server emitted an unparseable message");
    }
    while s.pop_event().is_some() {}
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_invariants(
        start in proptest::option::weighted(0.8, 2..ALL_VERSIONS.len()),
        ops in proptest::collection::vec(op(), 1..120),
        tolerate in any::<bool>(),
    ) {
        let mut s = server_with(|c| {
            c.outbox_capacity = OUTBOX;
            c.event_capacity = EVENTS;
            c.vp_count = 4;
            c.max_gpadl_pages = 400;
            c.max_gpadls = 8;
            c.max_pending_gpadls = 3;
            c.max_relid = 12;
            c.rescind_crossings = if tolerate { RescindCrossings::Tolerate } else { RescindCrossings::Refuse };
        });
        // Most runs start from a connected guest with two offers and a
        // ring-sized GPADL, so the random steps reach open channels.
        if let Some(v) = start {
            let v = ALL_VERSIONS[v];
            offer(&mut s, 0);
            offer(&mut s, 1);
            connect(&mut s, v);
            post(&mut s, &ChannelMessage::RequestOffers).unwrap();
            drain_checked(&mut s);
            create_gpadl(&mut s, 1, 1, 8);
            create_gpadl(&mut s, 2, 2, 6);
            drain_checked(&mut s);
        }
        for op in ops {
            match op {
                Op::Guest(g) => {
                    for m in encode(&g) {
                        let c = guest_conn(&s, &g);
                        post_checked(&mut s, c, &m);
                    }
                }
                Op::Garbled { msg, at, xor } => {
                    for mut m in encode(&msg) {
                        let i = at % m.len();
                        m[i] ^= xor;
                        let c = guest_conn(&s, &msg);
                        post_checked(&mut s, c, &m);
                    }
                }
                Op::Truncated { msg, keep } => {
                    for m in encode(&msg) {
                        let c = guest_conn(&s, &msg);
                        post_checked(&mut s, c, &m[..keep.min(m.len())]);
                    }
                }
                Op::Raw(bytes) => {
                    let c = conn(&s);
                    post_checked(&mut s, c, &bytes);
                }
                Op::OnConnection { msg, connection_id } => {
                    for m in encode(&msg) {
                        post_checked(&mut s, connection_id, &m);
                    }
                }
                Op::AddOffer(n) => {
                    let _ = s.add_offer(OfferSpec::new(NET, instance(n)));
                }
                Op::Subchannels { relid, count } => {
                    let _ = s.offer_subchannels(relid, count);
                }
                Op::Rescind(r) => {
                    let _ = s.rescind(r);
                }
                Op::CompleteOpen { relid, ok } => {
                    let _ = s.complete_open(relid, if ok { 0 } else { 0xC000_0001 });
                }
                Op::Faults { drop, fail_open, fail_gpadl, silent } => {
                    let f = s.faults_mut();
                    f.drop_replies = ReplyKinds::from_bits_truncate(drop);
                    f.fail_open = fail_open.then_some(0xC000_0001);
                    f.fail_gpadl = fail_gpadl.then_some(0xC000_0001);
                    f.silent = silent;
                }
                Op::AutoAccept(on) => s.set_auto_accept_open(on),
                Op::Drain => drain_checked(&mut s),
            }
            check_invariants(&s);
        }
        // A clean unload always leaves nothing behind.
        *s.faults_mut() = Default::default();
        drain_checked(&mut s);
        if s.connection().is_some_and(|c| c.version.supports_unload()) {
            let c = conn(&s);
            s.handle_guest_message(c, &bytes_of(&ChannelMessage::Unload)).unwrap();
        } else {
            s.reset();
        }
        check_invariants(&s);
        prop_assert_eq!(s.gpadls().count(), 0);
        prop_assert_eq!(s.pending_gpadl_count(), 0);
        prop_assert_eq!(s.gpadl_page_total(), 0);
        prop_assert_eq!(s.crossed_gpadl_count(), 0);
        prop_assert!(s.relids().all(|r| !s.channel(r).unwrap().is_rescinded()));
        prop_assert!(s.relids().all(|r| s.channel(r).unwrap().offer().sub_channel_index == 0));
    }

    #[test]
    fn arbitrary_bytes_on_any_connection_never_panic(
        conn_id in prop_oneof![Just(1u32), Just(4), any::<u32>()],
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut s = server();
        connect_and_request(&mut s);
        let _ = s.handle_guest_message(conn_id, &bytes);
        let c = conn(&s);
        let _ = s.handle_guest_message(c, &bytes);
        check_invariants(&s);
        prop_assert!(s.outgoing_len() <= 1);
    }
}
