// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Host server: GPADL reassembly, refusal of bad sequences, limits, teardown.
//! Messages are built by hand (see host_support.rs), not by the guest's gpadl.rs.
#![cfg(feature = "host")]

#[path = "host_support.rs"]
mod support;

use support::*;
use vmbus_core::host::{HostError, MsgnumberRule, Server, ServerEvent, STATUS_INSUFFICIENT_RESOURCES};
use vmbus_core::message::{
    ChannelMessage, GpaRange, GpadlBody, GpadlHeader, MessageHeader, MessageType, GPADL_BODY_MAX_PFNS,
    GPADL_HEADER_MAX_PFNS,
};
use zerocopy::IntoBytes;

fn setup() -> (Server, u32) {
    let mut s = server();
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    (s, r)
}

fn created_status(s: &mut Server) -> (u32, u32, u32) {
    let out = drain(s);
    assert_eq!(out.len(), 1, "{out:?}");
    match parse(&out[0]) {
        ChannelMessage::GpadlCreated(c) => (c.child_relid, c.gpadl, c.creation_status),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reassembles_across_message_boundaries() {
    for pages in [1usize, 26, 27, 54, 55, 300] {
        let (mut s, r) = setup();
        let pfns: Vec<u64> = (0..pages as u64).map(|i| 0x8_0000 + i * 7 + (i % 3)).collect();
        let msgs = gpadl_messages_range(r, 0xE1E10, 0, (pages * 4096) as u32, &pfns, 1);
        let expected_msgs = 1 + pages.saturating_sub(GPADL_HEADER_MAX_PFNS).div_ceil(GPADL_BODY_MAX_PFNS);
        assert_eq!(msgs.len(), expected_msgs, "{pages}");
        for (i, m) in msgs.iter().enumerate() {
            post_raw(&mut s, m).unwrap();
            if i + 1 < msgs.len() {
                assert!(drain(&mut s).is_empty(), "no reply before the last body ({pages} pages)");
                assert!(s.gpadl(0xE1E10).is_none());
            }
        }
        assert_eq!(created_status(&mut s), (r, 0xE1E10, 0), "{pages}");
        assert_eq!(events(&mut s), vec![ServerEvent::GpadlCreated { relid: r, handle: 0xE1E10 }]);
        let g = s.gpadl(0xE1E10).unwrap();
        assert_eq!(g.relid, r);
        assert_eq!(g.ranges.len(), 1);
        assert_eq!(g.ranges[0].byte_count as usize, pages * 4096);
        assert_eq!(g.ranges[0].byte_offset, 0);
        assert_eq!(g.pfns().collect::<Vec<_>>(), pfns, "{pages}");
        assert_eq!(s.gpadl_page_total(), pages);
        assert_eq!(s.pending_gpadl_count(), 0);
    }
}

#[test]
fn unaligned_range_and_multiple_ranges() {
    let (mut s, r) = setup();
    // One range of 5000 bytes starting 100 bytes into its first page: 2 PFNs.
    post_raw(&mut s, &gpadl_messages_range(r, 1, 100, 5000, &[11, 12], 1)[0]).unwrap();
    assert_eq!(created_status(&mut s).2, 0);
    let g = s.gpadl(1).unwrap();
    assert_eq!((g.ranges[0].byte_offset, g.ranges[0].byte_count), (100, 5000));
    assert!(!g.is_page_aligned());
    // Two ranges in one header: 1 page + 2 pages.
    let mut m = GpadlHeader {
        header: MessageHeader::new(MessageType::GPADL_HEADER),
        child_relid: r,
        gpadl: 2,
        range_buflen: (8 + 8 + 8 + 16) as u16,
        rangecount: 2,
    }
    .as_bytes()
    .to_vec();
    m.extend_from_slice(GpaRange { byte_count: 4096, byte_offset: 0 }.as_bytes());
    m.extend_from_slice(&21u64.to_le_bytes());
    m.extend_from_slice(GpaRange { byte_count: 8192, byte_offset: 0 }.as_bytes());
    m.extend_from_slice(&31u64.to_le_bytes());
    m.extend_from_slice(&32u64.to_le_bytes());
    post_raw(&mut s, &m).unwrap();
    assert_eq!(created_status(&mut s).2, 0);
    let g = s.gpadl(2).unwrap();
    assert_eq!(g.ranges.len(), 2);
    assert_eq!(g.pfns().collect::<Vec<_>>(), vec![21, 31, 32]);
    assert!(g.is_page_aligned());
}

#[test]
fn ranges_inconsistent_with_buflen_are_refused() {
    let (mut s, r) = setup();
    // byte_count says 2 pages but buflen carries 3 PFNs.
    let m = gpadl_messages_range(r, 3, 0, 8192, &[1, 2, 3], 1);
    assert_eq!(post_raw(&mut s, &m[0]), Err(HostError::GpadlBadRanges { handle: 3 }));
    assert_ne!(created_status(&mut s).2, 0);
    // byte_count says 3 pages but only 2 PFNs declared.
    let m = gpadl_messages_range(r, 4, 0, 3 * 4096, &[1, 2], 1);
    assert_eq!(post_raw(&mut s, &m[0]), Err(HostError::GpadlBadRanges { handle: 4 }));
    assert_ne!(created_status(&mut s).2, 0);
    // byte_count 0, byte_offset >= 4096.
    let m = gpadl_messages_range(r, 5, 0, 0, &[1], 1);
    assert_eq!(post_raw(&mut s, &m[0]), Err(HostError::GpadlBadRanges { handle: 5 }));
    let m = gpadl_messages_range(r, 6, 4096, 1, &[1], 1);
    assert_eq!(post_raw(&mut s, &m[0]), Err(HostError::GpadlBadRanges { handle: 6 }));
    // PFN beyond the physical address space.
    let m = gpadl_messages_range(r, 7, 0, 4096, &[u64::MAX], 1);
    assert_eq!(post_raw(&mut s, &m[0]), Err(HostError::GpadlBadPfn { handle: 7 }));
    drain(&mut s);
    assert_eq!(s.gpadls().count(), 0);
    assert_eq!(s.gpadl_page_total(), 0);
    assert_eq!(s.counters().rejected[MessageType::GPADL_HEADER.0 as usize], 5);
}

#[test]
fn wrong_msgnumber_aborts_with_failure() {
    let (mut s, r) = setup();
    let msgs = gpadl_messages_range(r, 9, 0, 60 * 4096, &(0..60).collect::<Vec<u64>>(), 1);
    post_raw(&mut s, &msgs[0]).unwrap();
    // Skip body 1, send body 2.
    assert_eq!(post_raw(&mut s, &msgs[2]), Err(HostError::GpadlBadMsgnumber { handle: 9, expected: 1, got: 2 }));
    assert_eq!(created_status(&mut s), (r, 9, vmbus_core::host::STATUS_UNSUCCESSFUL));
    assert_eq!(s.pending_gpadl_count(), 0);
    assert_eq!(s.gpadl_page_total(), 0);
    // The abandoned handle's later body has no header any more.
    assert_eq!(post_raw(&mut s, &msgs[1]), Err(HostError::GpadlBodyWithoutHeader(9)));
    assert!(drain(&mut s).is_empty());
    // The handle can be used again, correctly.
    for m in &msgs {
        post_raw(&mut s, m).unwrap();
    }
    assert_eq!(created_status(&mut s).2, 0);
}

#[test]
fn msgnumber_rule_is_configurable() {
    let mut s = server_with(|c| c.msgnumber_rule = MsgnumberRule::Ignore);
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    // Every body numbered 0, as a guest that leaves the field zeroed sends.
    let pfns: Vec<u64> = (0..80).collect();
    let mut msgs = gpadl_messages_range(r, 1, 0, 80 * 4096, &pfns, 1);
    for m in msgs.iter_mut().skip(1) {
        m[8..12].copy_from_slice(&0u32.to_le_bytes());
    }
    for m in &msgs {
        post_raw(&mut s, m).unwrap();
    }
    assert_eq!(created_status(&mut s).2, 0);
    assert_eq!(s.gpadl(1).unwrap().pfns().collect::<Vec<_>>(), pfns);

    let mut s = server_with(|c| c.msgnumber_rule = MsgnumberRule::Sequential { first: 0 });
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    for m in gpadl_messages_range(r, 1, 0, 80 * 4096, &pfns, 0) {
        post_raw(&mut s, &m).unwrap();
    }
    assert_eq!(created_status(&mut s).2, 0);
}

/// Sets every body's msgnumber to `n` (Linux and FreeBSD leave it 0).
fn number_bodies(msgs: &mut [Vec<u8>], n: u32) {
    for m in msgs.iter_mut().skip(1) {
        m[8..12].copy_from_slice(&n.to_le_bytes());
    }
}

#[test]
fn default_rule_accepts_zero_numbered_bodies_of_linux_guests() {
    // A Linux or FreeBSD guest leaves GpadlBody.msgnumber at 0; the default
    // host must not refuse their multi-message GPADLs.
    let (mut s, r) = setup();
    let pfns: Vec<u64> = (0..120).collect();
    let mut msgs = gpadl_messages_range(r, 1, 0, 120 * 4096, &pfns, 1);
    assert!(msgs.len() >= 4);
    number_bodies(&mut msgs, 0);
    for m in &msgs {
        post_raw(&mut s, m).unwrap();
    }
    assert_eq!(created_status(&mut s), (r, 1, 0));
    assert_eq!(s.gpadl(1).unwrap().pfns().collect::<Vec<_>>(), pfns);
    // Our own guest's numbering (1, 2, ...) is still accepted.
    for m in gpadl_messages_range(r, 2, 0, 120 * 4096, &pfns, 1) {
        post_raw(&mut s, &m).unwrap();
    }
    assert_eq!(created_status(&mut s), (r, 2, 0));
}

#[test]
fn default_rule_refuses_mixed_numbering() {
    let (mut s, r) = setup();
    let pfns: Vec<u64> = (0..120).collect();
    // Zero-numbered first body, then a numbered one.
    let mut msgs = gpadl_messages_range(r, 3, 0, 120 * 4096, &pfns, 1);
    msgs[1][8..12].copy_from_slice(&0u32.to_le_bytes());
    post_raw(&mut s, &msgs[0]).unwrap();
    post_raw(&mut s, &msgs[1]).unwrap();
    assert_eq!(post_raw(&mut s, &msgs[2]), Err(HostError::GpadlBadMsgnumber { handle: 3, expected: 0, got: 2 }));
    assert_eq!(created_status(&mut s).2, vmbus_core::host::STATUS_UNSUCCESSFUL);
    // Numbered first body, then a zero one.
    let mut msgs = gpadl_messages_range(r, 4, 0, 120 * 4096, &pfns, 1);
    msgs[2][8..12].copy_from_slice(&0u32.to_le_bytes());
    post_raw(&mut s, &msgs[0]).unwrap();
    post_raw(&mut s, &msgs[1]).unwrap();
    assert_eq!(post_raw(&mut s, &msgs[2]), Err(HostError::GpadlBadMsgnumber { handle: 4, expected: 2, got: 0 }));
    assert_eq!(created_status(&mut s).2, vmbus_core::host::STATUS_UNSUCCESSFUL);
    // The strict rule still refuses zero-numbered bodies.
    let mut s = server_with(|c| c.msgnumber_rule = MsgnumberRule::Sequential { first: 1 });
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    let mut msgs = gpadl_messages_range(r, 5, 0, 120 * 4096, &pfns, 1);
    number_bodies(&mut msgs, 0);
    post_raw(&mut s, &msgs[0]).unwrap();
    assert_eq!(post_raw(&mut s, &msgs[1]), Err(HostError::GpadlBadMsgnumber { handle: 5, expected: 1, got: 0 }));
    assert_eq!(s.pending_gpadl_count(), 0);
}

#[test]
fn too_many_pfns_in_bodies() {
    let (mut s, r) = setup();
    // Header declares 30 PFNs; the bodies carry 26 + 28.
    let pfns: Vec<u64> = (0..54).collect();
    let mut msgs = gpadl_messages_range(r, 2, 0, 54 * 4096, &pfns, 1);
    let declared: u16 = 8 + 8 * 30;
    msgs[0][16..18].copy_from_slice(&declared.to_le_bytes());
    post_raw(&mut s, &msgs[0]).unwrap();
    assert_eq!(post_raw(&mut s, &msgs[1]), Err(HostError::GpadlTooManyPfns { handle: 2 }));
    assert_ne!(created_status(&mut s).2, 0);
    assert_eq!(s.pending_gpadl_count(), 0);
    assert_eq!(s.gpadl_page_total(), 0);
}

#[test]
fn body_without_header_and_unknown_handle() {
    let (mut s, r) = setup();
    let msgs = gpadl_messages(r, 0x77, 5, 40);
    assert_eq!(post_raw(&mut s, &msgs[1]), Err(HostError::GpadlBodyWithoutHeader(0x77)));
    assert!(drain(&mut s).is_empty());
    // Body for an established GPADL is also refused and changes nothing.
    create_gpadl(&mut s, r, 0x78, 1);
    let body = GpadlBody { header: MessageHeader::new(MessageType::GPADL_BODY), msgnumber: 1, gpadl: 0x78 };
    let mut b = body.as_bytes().to_vec();
    b.extend_from_slice(&1u64.to_le_bytes());
    assert_eq!(post_raw(&mut s, &b), Err(HostError::GpadlBodyWithoutHeader(0x78)));
    assert_eq!(s.gpadl(0x78).unwrap().page_count(), 1);
    // Teardown of an unknown handle.
    assert_eq!(post(&mut s, &teardown_msg(r, 0x79)), Err(HostError::UnknownGpadl(0x79)));
    assert!(drain(&mut s).is_empty());
}

#[test]
fn duplicate_handle_is_refused_and_original_kept() {
    let (mut s, r) = setup();
    create_gpadl(&mut s, r, 0x10, 2);
    let msgs = gpadl_messages(r, 0x10, 0x9000, 3);
    assert_eq!(post_raw(&mut s, &msgs[0]), Err(HostError::DuplicateGpadl(0x10)));
    assert_ne!(created_status(&mut s).2, 0);
    assert_eq!(s.gpadl(0x10).unwrap().page_count(), 2);
    // Duplicate of one still being assembled.
    let big = gpadl_messages(r, 0x11, 0, 40);
    post_raw(&mut s, &big[0]).unwrap();
    assert_eq!(post_raw(&mut s, &gpadl_messages(r, 0x11, 0, 1)[0]), Err(HostError::DuplicateGpadl(0x11)));
    drain(&mut s);
    post_raw(&mut s, &big[1]).unwrap();
    assert_eq!(created_status(&mut s), (r, 0x11, 0));
}

#[test]
fn unknown_relid_gets_a_failure_reply() {
    let (mut s, _) = setup();
    assert_eq!(post_raw(&mut s, &gpadl_messages(99, 1, 0, 1)[0]), Err(HostError::UnknownRelid(99)));
    assert_eq!(created_status(&mut s), (99, 1, vmbus_core::host::STATUS_UNSUCCESSFUL));
}

#[test]
fn malformed_header_with_readable_fixed_part_is_answered() {
    let (mut s, r) = setup();
    // rangecount 0: the parser refuses it, but the guest waits on the handle.
    let mut m = gpadl_messages(r, 0x33, 0, 1).remove(0);
    m[18..20].copy_from_slice(&0u16.to_le_bytes());
    assert!(matches!(post_raw(&mut s, &m), Err(HostError::Malformed(_))));
    assert_eq!(created_status(&mut s), (r, 0x33, vmbus_core::host::STATUS_UNSUCCESSFUL));
    assert_eq!(s.counters().malformed, 1);
}

#[test]
fn page_and_count_limits() {
    let mut s = server_with(|c| {
        c.max_gpadl_pages = 100;
        c.max_gpadls = 2;
        c.max_pending_gpadls = 1;
    });
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    // 120 PFNs declared: over the page limit.
    assert_eq!(post_raw(&mut s, &gpadl_messages(r, 1, 0, 120)[0]), Err(HostError::GpadlLimit { handle: 1 }));
    assert_eq!(created_status(&mut s).2, STATUS_INSUFFICIENT_RESOURCES);
    // One pending at a time.
    let a = gpadl_messages(r, 2, 0, 30);
    post_raw(&mut s, &a[0]).unwrap();
    assert_eq!(post_raw(&mut s, &gpadl_messages(r, 3, 0, 30)[0]), Err(HostError::GpadlLimit { handle: 3 }));
    assert_eq!(created_status(&mut s).2, STATUS_INSUFFICIENT_RESOURCES);
    post_raw(&mut s, &a[1]).unwrap();
    assert_eq!(created_status(&mut s).2, 0);
    events(&mut s);
    create_gpadl(&mut s, r, 4, 1);
    // Two established: the third is refused.
    assert_eq!(post_raw(&mut s, &gpadl_messages(r, 5, 0, 1)[0]), Err(HostError::GpadlLimit { handle: 5 }));
    assert_eq!(created_status(&mut s).2, STATUS_INSUFFICIENT_RESOURCES);
    assert_eq!(s.gpadl_page_total(), 31);
}

#[test]
fn count_limit_is_checked_again_at_completion() {
    let mut s = server_with(|c| {
        c.max_gpadls = 1;
        c.max_pending_gpadls = 2;
    });
    connect_and_request(&mut s);
    let r = offer(&mut s, 1);
    drain(&mut s);
    let a = gpadl_messages(r, 1, 0, 30);
    let b = gpadl_messages(r, 2, 0, 30);
    post_raw(&mut s, &a[0]).unwrap();
    post_raw(&mut s, &b[0]).unwrap();
    post_raw(&mut s, &a[1]).unwrap();
    assert_eq!(created_status(&mut s), (r, 1, 0));
    assert_eq!(post_raw(&mut s, &b[1]), Err(HostError::GpadlLimit { handle: 2 }));
    assert_eq!(created_status(&mut s), (r, 2, STATUS_INSUFFICIENT_RESOURCES));
    assert_eq!(s.gpadls().count(), 1);
    assert_eq!(s.gpadl_page_total(), 30);
}

#[test]
fn teardown_checks_owner_and_reports() {
    let mut s = server();
    connect_and_request(&mut s);
    let a = offer(&mut s, 1);
    let b = offer(&mut s, 2);
    drain(&mut s);
    create_gpadl(&mut s, a, 0x100, 4);
    assert_eq!(post(&mut s, &teardown_msg(b, 0x100)), Err(HostError::GpadlWrongChannel { handle: 0x100, relid: b }));
    assert!(drain(&mut s).is_empty());
    post(&mut s, &teardown_msg(a, 0x100)).unwrap();
    let out = drain(&mut s);
    match parse(&out[0]) {
        ChannelMessage::GpadlTorndown(t) => assert_eq!(t.gpadl, 0x100),
        other => panic!("{other:?}"),
    }
    assert_eq!(events(&mut s), vec![ServerEvent::GpadlTornDown { relid: a, handle: 0x100 }]);
    assert!(s.gpadl(0x100).is_none());
    assert_eq!(s.gpadl_page_total(), 0);
    assert_eq!(post(&mut s, &teardown_msg(a, 0x100)), Err(HostError::UnknownGpadl(0x100)));
}

#[test]
fn fail_gpadl_fault() {
    let (mut s, r) = setup();
    s.faults_mut().fail_gpadl = Some(0xC000_0017);
    for m in gpadl_messages(r, 1, 0, 30) {
        post_raw(&mut s, &m).unwrap();
    }
    assert_eq!(created_status(&mut s), (r, 1, 0xC000_0017));
    assert!(s.gpadl(1).is_none());
    assert!(events(&mut s).is_empty());
    assert_eq!(s.gpadl_page_total(), 0);
    s.faults_mut().fail_gpadl = None;
    create_gpadl(&mut s, r, 1, 30);
}

proptest::proptest! {
    /// Default rule: bodies numbered 1, 2, ... or all 0 build the GPADL; a
    /// GPADL whose bodies mix the two forms is refused at the first body that
    /// breaks both, with a failure reply and nothing left pending.
    #[test]
    fn default_rule_body_numbering(
        pages in 55usize..300,
        mode in 0u8..3,
        pick in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        let (mut s, r) = setup();
        let pfns: Vec<u64> = (0..pages as u64).map(|i| 0x4_0000 + i).collect();
        let mut msgs = gpadl_messages_range(r, 0x99, 0, (pages * 4096) as u32, &pfns, 1);
        let bodies = msgs.len() - 1;
        proptest::prop_assert!(bodies >= 2);
        let mixed_at = pick.index(bodies);
        match mode {
            0 => {}
            1 => number_bodies(&mut msgs, 0),
            _ => msgs[1 + mixed_at][8..12].copy_from_slice(&0u32.to_le_bytes()),
        }
        // A zeroed first body picks the all-zero form; the next numbered one breaks it.
        let refused_body = (mode == 2).then_some(mixed_at.max(1));
        for (i, m) in msgs.iter().enumerate() {
            let res = post_raw(&mut s, m);
            if refused_body.map(|b| b + 1) == Some(i) {
                let is_bad_msgnumber = matches!(res, Err(HostError::GpadlBadMsgnumber { handle: 0x99, .. }));
                proptest::prop_assert!(is_bad_msgnumber, "{:?}", res);
                proptest::prop_assert_eq!(created_status(&mut s).2, vmbus_core::host::STATUS_UNSUCCESSFUL);
                proptest::prop_assert_eq!(s.pending_gpadl_count(), 0);
                proptest::prop_assert_eq!(s.gpadl_page_total(), 0);
                return Ok(());
            }
            proptest::prop_assert_eq!(res, Ok(()));
        }
        proptest::prop_assert!(refused_body.is_none());
        proptest::prop_assert_eq!(created_status(&mut s), (r, 0x99, 0));
        proptest::prop_assert_eq!(s.gpadl(0x99).unwrap().pfns().collect::<Vec<_>>(), pfns);
        proptest::prop_assert_eq!(s.gpadl_page_total(), pages);
    }
}
