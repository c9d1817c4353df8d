// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! GPADL header/body sequences (whole, cut short, out of order, with bad
//! counts, lengths, PFNs and msgnumbers) into the host server after a
//! scripted contact and two offers. Besides the host invariants, every GPADL
//! the server reports created must hold exactly the ranges and PFNs of the
//! whole GPADL the guest just sent for that handle.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmbus_core::host::GpadlRange;
use vmbus_core::message::ChannelMessage;
use vmbus_core::version::Version;
use vmbus_fuzz::guest::{GpadlIn, GuestMsg, RelidSel};
use vmbus_fuzz::host_check::{check_invariants, check_outgoing, small_server};

#[derive(Arbitrary, Debug)]
enum GpadlStep {
    /// A GPADL split into header and bodies.
    Whole(GpadlIn),
    /// Another guest message (lone bodies, teardowns, opens, raw bytes...).
    Other(GuestMsg),
    /// The host rescinds a channel.
    Rescind(RelidSel),
}

fuzz_target!(|steps: Vec<GpadlStep>| {
    let mut s = small_server();
    for i in 0..2u8 {
        let mut g = vmbus_core::guid::Guid::ZERO;
        g.bytes[0] = i;
        s.add_offer(vmbus_core::host::OfferSpec::new(vmbus_core::guid::interface::NETWORK, g)).expect("offer");
    }
    let contact = GuestMsg::Contact { version: 9, vcpu: 0, sint: 2, interrupt_page: 0 };
    for b in contact.build(&[]) {
        s.handle_guest_message(vmbus_core::hv::MESSAGE_CONNECTION_ID_4, &b).expect("contact accepted");
    }
    assert_eq!(s.connection().map(|c| c.version), Some(Version::WIN10_V5_3));
    let conn = s.connection().expect("connected").msg_conn_id;
    for b in GuestMsg::RequestOffers.build(&[]) {
        s.handle_guest_message(conn, &b).expect("offers requested");
    }
    while s.pop_outgoing().is_some() {}
    while s.pop_event().is_some() {}

    for step in steps.iter().take(128) {
        let relids: Vec<u32> = s.relids().collect();
        // The ranges a created GPADL must hold, when this step sends one
        // whole, unaltered GPADL for a handle that is neither established
        // nor possibly being assembled.
        let mut expect: Option<(u32, Vec<GpadlRange>)> = None;
        match step {
            GpadlStep::Whole(g) => {
                let (handle, ranges, msgs) = g.build(&relids);
                let unaltered = g.rangecount.is_none()
                    && g.buflen_words.is_none()
                    && g.first_msgnumber.is_none_or(|n| n == 1)
                    && g.send.is_none();
                if unaltered && s.pending_gpadl_count() == 0 && s.gpadl(handle).is_none() {
                    let want = ranges
                        .into_iter()
                        .map(|(r, pfns)| GpadlRange { byte_count: r.byte_count, byte_offset: r.byte_offset, pfns })
                        .collect();
                    expect = Some((handle, want));
                }
                for m in msgs {
                    let _ = s.handle_guest_message(conn, &m);
                    check_invariants(&s);
                }
            }
            GpadlStep::Other(m) => {
                for b in m.build(&relids) {
                    let _ = s.handle_guest_message(conn, &b);
                    check_invariants(&s);
                }
            }
            GpadlStep::Rescind(r) => {
                let _ = s.rescind(r.resolve(&relids));
            }
        }
        while let Some(o) = s.pop_outgoing() {
            if let ChannelMessage::GpadlCreated(c) = check_outgoing(&o) {
                if c.creation_status == 0 {
                    let g = s.gpadl(c.gpadl).expect("a created GPADL is established");
                    assert_eq!(g.relid, c.child_relid);
                    if let Some((handle, want)) = &expect {
                        if *handle == c.gpadl {
                            assert_eq!(&g.ranges, want, "GPADL {handle} reassembled wrongly");
                        }
                    }
                }
            }
        }
        while s.pop_event().is_some() {}
        check_invariants(&s);
    }
});
