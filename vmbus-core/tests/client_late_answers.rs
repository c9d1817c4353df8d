// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Late host answers after a rescind: the host's OpenResult, GpadlCreated,
//! GpadlTorndown or ModifyChannelResponse may cross its own rescind in
//! flight. The rescind already completed the operation (status Rescinded),
//! so one late answer per cancelled operation is dropped silently and
//! counted apart; anything more is still a violation.

mod client_support;
use client_support::*;
use vmbus_core::client::{ChannelState, ClientError, ClientEvent, OpStatus, RejectKind, TeardownOutcome};
use vmbus_core::version::Version;

const RELID: u32 = 4;

/// The four kinds of answer, each with the setup that leaves it pending.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Open,
    Create,
    Teardown,
    Modify,
}

const KINDS: [Kind; 4] = [Kind::Open, Kind::Create, Kind::Teardown, Kind::Modify];

/// Leaves an operation of `kind` pending on RELID; returns the host's answer to it.
fn pending(h: &mut Harness, kind: Kind) -> Vec<u8> {
    let answer = match kind {
        Kind::Open => {
            h.offer_primary(RELID);
            let ring = h.gpadl_ready(RELID, 4);
            h.client.open_channel(RELID, &open_params(ring), &h.hv).unwrap();
            open_result(RELID, RELID, 0)
        }
        Kind::Create => {
            h.offer_primary(RELID);
            let (handle, _) = h.create_gpadl(RELID, &[1, 2, 3]);
            gpadl_created(RELID, handle, 0)
        }
        Kind::Teardown => {
            h.offer_primary(RELID);
            let g = h.gpadl_ready(RELID, 2);
            assert_eq!(h.client.teardown_gpadl(RELID, g, &h.hv), Ok(TeardownOutcome::Pending));
            gpadl_torndown(g)
        }
        Kind::Modify => {
            h.open(RELID);
            h.client.modify_channel(RELID, 2, &h.hv).unwrap();
            modify_response(RELID, 0)
        }
    };
    h.hv.take();
    answer
}

/// The rejection a second (or unowed) answer of `kind` gets.
fn refusal(kind: Kind) -> RejectKind {
    match kind {
        Kind::Open | Kind::Modify => RejectKind::NoRequestOutstanding,
        Kind::Create | Kind::Teardown => RejectKind::UnknownGpadl,
    }
}

#[test]
fn one_late_answer_of_each_kind_is_dropped_quietly() {
    for kind in KINDS {
        let mut h = Harness::connected();
        let answer = pending(&mut h, kind);
        h.feed(&rescind(RELID)).unwrap();
        let ev = h.take_events();
        assert_eq!(ev[0], ClientEvent::Rescinded { relid: RELID }, "{kind:?}");
        assert_eq!(ev.len(), 2, "{kind:?}: the rescind completes the operation");
        let (messages, handled) = (h.client.counters().messages, h.client.counters().handled);

        assert_eq!(h.feed(&answer), Ok(()), "{kind:?}");
        assert!(h.take_events().is_empty(), "{kind:?}: a late answer yields no event");
        let c = *h.client.counters();
        assert_eq!(c.late_after_rescind, 1, "{kind:?}");
        assert_eq!(c.rejected_total(), 0, "{kind:?}");
        assert_eq!((c.messages, c.handled), (messages + 1, handled + 1), "{kind:?}");

        // The same answer again is a violation, as before the fix.
        let again = h.feed(&answer).unwrap_err();
        assert_eq!(again.reject_kind(), Some(refusal(kind)), "{kind:?}");
        assert!(h.take_events().is_empty());
        let c = *h.client.counters();
        assert_eq!(c.late_after_rescind, 1, "{kind:?}");
        assert_eq!(c.rejected(refusal(kind)), 1, "{kind:?}");
        assert_eq!(c.rejected_total(), 1, "{kind:?}");
    }
}

/// A failure status in the late answer changes nothing: it is dropped too.
#[test]
fn late_answers_with_a_failure_status_are_dropped_too() {
    let mut h = Harness::connected();
    h.offer_primary(RELID);
    let (handle, _) = h.create_gpadl(RELID, &[7]);
    h.feed(&rescind(RELID)).unwrap();
    h.take_events();
    assert_eq!(h.feed(&gpadl_created(RELID, handle, 0xC000_0001)), Ok(()));
    assert!(h.take_events().is_empty());
    assert_eq!(h.client.gpadls(RELID).count(), 0, "a late success does not create the GPADL");
    assert_eq!(h.client.counters().late_after_rescind, 1);
}

/// With everything pending at once, each answer is owed once, in any order.
#[test]
fn every_cancelled_operation_owes_exactly_one_answer() {
    let mut h = Harness::connected();
    let ring = h.open(RELID);
    let done = h.gpadl_ready(RELID, 2);
    let (creating, _) = h.create_gpadl(RELID, &[5]);
    let (creating2, _) = h.create_gpadl(RELID, &[6]);
    h.client.teardown_gpadl(RELID, done, &h.hv).unwrap();
    h.client.modify_channel(RELID, 0, &h.hv).unwrap();
    h.feed(&rescind(RELID)).unwrap();
    assert_eq!(h.take_events().len(), 5);
    let answers = [
        modify_response(RELID, 0),
        gpadl_created(RELID, creating2, 0),
        gpadl_torndown(done),
        gpadl_created(RELID, creating, 0),
    ];
    for a in &answers {
        assert_eq!(h.feed(a), Ok(()));
    }
    for a in &answers {
        assert!(h.feed(a).is_err(), "owed once only");
    }
    // The ring GPADL (created, never torn down) was not pending: not owed.
    assert_eq!(h.feed(&gpadl_torndown(ring)).unwrap_err().reject_kind(), Some(RejectKind::UnknownGpadl));
    assert!(h.take_events().is_empty());
    let c = *h.client.counters();
    assert_eq!(c.late_after_rescind, 4);
    assert_eq!(c.rejected_total(), 5);
}

/// Answers for operations that were never pending on the rescinded channel stay violations.
#[test]
fn answers_never_owed_are_still_rejected() {
    let mut h = Harness::connected();
    h.offer_primary(RELID);
    h.offer_primary(5);
    let created = h.gpadl_ready(RELID, 2);
    let (creating, _) = h.create_gpadl(RELID, &[9]);
    h.feed(&rescind(RELID)).unwrap();
    h.take_events();
    let cases: [(Vec<u8>, RejectKind); 7] = [
        // Nothing was opening or modifying.
        (open_result(RELID, RELID, 0), RejectKind::NoRequestOutstanding),
        (modify_response(RELID, 0), RejectKind::NoRequestOutstanding),
        // A created GPADL was never being created or torn down.
        (gpadl_created(RELID, created, 0), RejectKind::UnknownGpadl),
        (gpadl_torndown(created), RejectKind::UnknownGpadl),
        // The owed create is not owed a teardown, nor a create on another channel.
        (gpadl_torndown(creating), RejectKind::UnknownGpadl),
        (gpadl_created(5, creating, 0), RejectKind::UnknownGpadl),
        // A handle never handed out.
        (gpadl_created(RELID, creating + 100, 0), RejectKind::UnknownGpadl),
    ];
    for (bytes, kind) in &cases {
        assert_eq!(h.feed(bytes).unwrap_err().reject_kind(), Some(*kind));
    }
    assert_eq!(h.client.counters().late_after_rescind, 0);
    assert_eq!(h.client.counters().rejected_total(), cases.len() as u64);
    // The owed answer is still accepted afterwards.
    assert_eq!(h.feed(&gpadl_created(RELID, creating, 0)), Ok(()));
    assert_eq!(h.client.counters().late_after_rescind, 1);
    assert!(h.take_events().is_empty());
}

/// An owed OpenResult must still carry openid = relid; a wrong one is
/// refused and leaves the answer owed.
#[test]
fn late_open_result_with_a_wrong_openid_is_refused() {
    let mut h = Harness::connected();
    let answer = pending(&mut h, Kind::Open);
    h.feed(&rescind(RELID)).unwrap();
    h.take_events();
    assert_eq!(h.feed(&open_result(RELID, 99, 0)), Err(ClientError::BadOpenId { relid: RELID, openid: 99 }));
    assert_eq!(h.feed(&answer), Ok(()));
    assert_eq!(h.client.counters().late_after_rescind, 1);
    assert_eq!(h.client.channel(RELID).unwrap().state, ChannelState::Closed);
}

/// Releasing the relid forgets what was owed: after a re-offer of the same
/// relid, an old answer is a violation.
#[test]
fn release_forgets_owed_answers() {
    for kind in [Kind::Open, Kind::Create, Kind::Teardown] {
        let mut h = Harness::connected();
        let answer = pending(&mut h, kind);
        h.feed(&rescind(RELID)).unwrap();
        h.take_events();
        for (handle, _) in h.client.gpadls(RELID).collect::<Vec<_>>() {
            assert_eq!(h.client.teardown_gpadl(RELID, handle, &h.hv), Ok(TeardownOutcome::CompletedLocally));
        }
        h.client.release_relid(RELID, &h.hv).unwrap();
        h.feed(&offer(RELID, NET, instance(RELID), 0)).unwrap();
        h.take_events();
        assert_eq!(h.feed(&answer).unwrap_err().reject_kind(), Some(refusal(kind)), "{kind:?}");
        assert_eq!(h.client.counters().late_after_rescind, 0);
    }
}

/// An answer for a GPADL whose teardown the guest completed locally after
/// the rescind (no GpadlTeardown was ever posted) is not owed.
#[test]
fn local_teardown_after_rescind_owes_nothing() {
    let mut h = Harness::connected();
    h.offer_primary(RELID);
    let g = h.gpadl_ready(RELID, 2);
    h.feed(&rescind(RELID)).unwrap();
    assert_eq!(h.client.teardown_gpadl(RELID, g, &h.hv), Ok(TeardownOutcome::CompletedLocally));
    assert!(h.hv.take().is_empty());
    assert_eq!(h.feed(&gpadl_torndown(g)).unwrap_err().reject_kind(), Some(RejectKind::UnknownGpadl));
}

/// Unload completes pending operations without owing answers (the table is gone).
#[test]
fn unload_owes_nothing() {
    let mut h = Harness::connected_at(Version::WIN10_V5_3);
    let answer = pending(&mut h, Kind::Open);
    h.client.unload(&h.hv).unwrap();
    h.feed(&unload_response()).unwrap();
    assert!(h.take_events().contains(&ClientEvent::OpenResult { relid: RELID, status: OpStatus::Unloaded }));
    assert!(h.feed(&answer).is_err());
    assert_eq!(h.client.counters().late_after_rescind, 0);
}

/// A GPADL handle whose late answer is still owed is never handed out again
/// meanwhile (a GpadlTorndown is matched by handle alone).
#[test]
fn owed_handles_are_not_reused() {
    let mut h = Harness::connected();
    h.offer_primary(RELID);
    h.offer_primary(5);
    let mut owed = Vec::new();
    for _ in 0..3 {
        owed.push(h.create_gpadl(RELID, &[1]).0);
    }
    h.feed(&rescind(RELID)).unwrap();
    for _ in 0..20 {
        let (g, _) = h.create_gpadl(5, &[2]);
        assert!(!owed.contains(&g));
        h.feed(&gpadl_created(5, g, 0)).unwrap();
        assert_eq!(h.client.teardown_gpadl(5, g, &h.hv), Ok(TeardownOutcome::Pending));
        h.feed(&gpadl_torndown(g)).unwrap();
    }
    for g in owed {
        assert_eq!(h.feed(&gpadl_created(RELID, g, 0)), Ok(()));
    }
}
