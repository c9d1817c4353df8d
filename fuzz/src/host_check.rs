// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The host server's invariants, checked after every step of a fuzz run,
//! and host-side actions from fuzz input.

use crate::guest::{ConnSel, GuestMsg, RelidSel};
use arbitrary::Arbitrary;
use vmbus_core::guid::Guid;
use vmbus_core::host::{
    OfferSpec, ReplyKinds, Server, ServerConfig, ServerEvent, HV_PAGE_SIZE, MAX_PFN, STATUS_UNSUCCESSFUL,
};
use vmbus_core::message::{ChannelMessage, MessageType, OutgoingMessage};

/// A server with small limits, so the fuzzer reaches them.
pub fn small_server() -> Server {
    let config = ServerConfig {
        max_relid: 40,
        vp_count: 4,
        max_gpadl_pages: 300,
        max_gpadls: 6,
        max_pending_gpadls: 3,
        outbox_capacity: 32,
        event_capacity: 32,
        ..ServerConfig::default()
    };
    Server::new(config).expect("valid config")
}

/// Checks what must hold after any sequence of calls.
pub fn check_invariants(s: &Server) {
    let c = s.config();
    assert!(s.outgoing_len() <= c.outbox_capacity, "outbox over capacity");
    assert!(s.event_len() <= c.event_capacity, "event queue over capacity");
    assert!(s.pending_gpadl_count() <= c.max_pending_gpadls, "pending GPADLs over limit");
    assert!(s.gpadls().count() <= c.max_gpadls, "GPADLs over limit");
    assert!(s.gpadl_page_total() <= c.max_gpadl_pages, "GPADL pages over limit");
    let mut pages = 0;
    for g in s.gpadls() {
        assert!(s.channel(g.relid).is_some(), "GPADL {} outlives its channel {}", g.handle, g.relid);
        assert!(!g.ranges.is_empty(), "GPADL {} has no range", g.handle);
        for r in &g.ranges {
            assert!(r.byte_count > 0 && u64::from(r.byte_offset) < HV_PAGE_SIZE, "bad range kept: {r:?}");
            let spanned = (u64::from(r.byte_offset) + u64::from(r.byte_count)).div_ceil(HV_PAGE_SIZE);
            assert_eq!(r.pfns.len() as u64, spanned, "PFN count of a kept range");
            assert!(r.pfns.iter().all(|&p| p <= MAX_PFN), "PFN beyond the address space kept");
        }
        pages += g.page_count();
    }
    assert!(pages <= s.gpadl_page_total(), "page total below the established GPADLs' pages");
    for relid in s.relids() {
        let ch = s.channel(relid).expect("listed relid");
        assert_eq!(ch.relid(), relid);
        assert!(relid <= c.max_relid && relid != 0, "relid {relid} outside 1..=max_relid");
        assert_eq!(s.channel_by_signal_connection(ch.signal_connection_id()), Some(relid));
    }
}

/// Checks one host-to-guest message: it parses, it is a host message, and it
/// re-emits to the same bytes.
pub fn check_outgoing(o: &OutgoingMessage) -> ChannelMessage<'_> {
    let m = ChannelMessage::parse(o.as_bytes()).expect("the server emitted an unparseable message");
    assert_eq!(m.message_type(), o.message_type());
    let host_types = [
        MessageType::OFFER_CHANNEL,
        MessageType::RESCIND_CHANNEL_OFFER,
        MessageType::ALL_OFFERS_DELIVERED,
        MessageType::OPEN_CHANNEL_RESULT,
        MessageType::GPADL_CREATED,
        MessageType::GPADL_TORNDOWN,
        MessageType::VERSION_RESPONSE,
        MessageType::UNLOAD_RESPONSE,
        MessageType::TL_CONNECT_RESULT,
        MessageType::MODIFY_CHANNEL_RESPONSE,
    ];
    assert!(host_types.contains(&m.message_type()), "server sent a guest message type {:?}", m.message_type());
    m
}

/// One step of a host-messages run.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// The guest posts a message.
    Guest(ConnSel, GuestMsg),
    /// A device model offers a channel.
    AddOffer {
        /// Instance byte (duplicates collide).
        instance: u8,
        /// Sub-channel index.
        sub: u16,
        /// Monitor id.
        monitor: Option<u8>,
    },
    /// Sub-channels of an existing channel.
    OfferSubchannels(RelidSel, u8),
    /// The host rescinds a channel.
    Rescind(RelidSel),
    /// The device model answers an open.
    CompleteOpen(RelidSel, bool),
    /// The fault injector changes the faults.
    Faults {
        /// Reply kinds to drop.
        drop: u32,
        /// Fail opens.
        fail_open: bool,
        /// Fail GPADLs.
        fail_gpadl: bool,
        /// Fail ModifyChannel.
        fail_modify: bool,
        /// Stop answering.
        silent: bool,
    },
    /// Auto-accept opens on/off.
    AutoAccept(bool),
    /// A simulated host reset.
    Reset,
    /// The simulator drains both queues.
    Drain,
}

/// Drains both queues, checking each message and event.
pub fn drain(s: &mut Server) {
    while let Some(o) = s.pop_outgoing() {
        check_outgoing(&o);
    }
    while let Some(e) = s.pop_event() {
        if let ServerEvent::GpadlCreated { handle, relid } = e {
            // The GPADL may already be gone again by the time the event is
            // read (torn down later in the same batch), but if it is there
            // it belongs to the channel the event names.
            if let Some(g) = s.gpadl(handle) {
                let _ = relid;
                assert!(s.channel(g.relid).is_some());
            }
        }
    }
}

/// Applies one step. Results are not asserted: refusals are legitimate.
pub fn apply(s: &mut Server, step: &Step) {
    let relids: Vec<u32> = s.relids().collect();
    match step {
        Step::Guest(conn, msg) => {
            let current = s.connection().map(|c| c.msg_conn_id);
            let id = conn.resolve(current, msg);
            for bytes in msg.build(&relids) {
                let _ = s.handle_guest_message(id, &bytes);
                check_invariants(s);
            }
        }
        Step::AddOffer { instance, sub, monitor } => {
            let mut g = Guid::ZERO;
            g.bytes[0] = *instance;
            let mut spec = OfferSpec::new(vmbus_core::guid::interface::NETWORK, g);
            spec.sub_channel_index = *sub % 4;
            spec.monitor_id = *monitor;
            let _ = s.add_offer(spec);
        }
        Step::OfferSubchannels(r, n) => {
            let _ = s.offer_subchannels(r.resolve(&relids), (*n % 8) as u16);
        }
        Step::Rescind(r) => {
            let _ = s.rescind(r.resolve(&relids));
        }
        Step::CompleteOpen(r, ok) => {
            let _ = s.complete_open(r.resolve(&relids), if *ok { 0 } else { STATUS_UNSUCCESSFUL });
        }
        Step::Faults { drop, fail_open, fail_gpadl, fail_modify, silent } => {
            let f = s.faults_mut();
            f.drop_replies = ReplyKinds::from_bits_truncate(*drop);
            f.fail_open = fail_open.then_some(STATUS_UNSUCCESSFUL);
            f.fail_gpadl = fail_gpadl.then_some(STATUS_UNSUCCESSFUL);
            f.fail_modify = fail_modify.then_some(STATUS_UNSUCCESSFUL);
            f.silent = *silent;
        }
        Step::AutoAccept(on) => s.set_auto_accept_open(*on),
        Step::Reset => s.reset(),
        Step::Drain => drain(s),
    }
    check_invariants(s);
}
