// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Random lives of one channel lifecycle: a host that answers, refuses,
//! delays or never answers what the guest posted, rescinds at any moment,
//! and a glue that opens, closes, abandons and cleans up in any order, with
//! posts that may fail. Whatever happens: no panic, the client never sees a
//! violation from this (well-behaved) host, memory is never freed while the
//! host may map it (the tracking allocator would fail the test), a finished
//! lifecycle holds no memory unless it gave up, endpoints exist only while
//! open, and after an unload everything is freed.

mod client_support;
mod lifecycle_support;

use client_support::*;
use lifecycle_support::*;
use proptest::prelude::*;
use vmbus_core::client::{ClientEvent, OpStatus};
use vmbus_core::hv::HvStatus;
use vmbus_core::lifecycle::{LifecycleState, Progress};
use vmbus_core::message::ChannelMessage;

#[derive(Clone, Debug)]
enum Action {
    Open,
    /// The host answers its `n`-th owed answer (success or failure).
    Answer(usize, bool),
    /// The host never answers its `n`-th owed answer.
    Drop(usize),
    Rescind,
    Close,
    Abandon,
    Cleanup,
    /// The next post fails.
    FailNextPost,
    /// An event about another channel reaches the lifecycle.
    Foreign,
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => Just(Action::Open),
        6 => (0..4usize, prop::bool::weighted(0.8)).prop_map(|(n, ok)| Action::Answer(n, ok)),
        1 => (0..4usize).prop_map(Action::Drop),
        1 => Just(Action::Rescind),
        2 => Just(Action::Close),
        1 => Just(Action::Abandon),
        2 => Just(Action::Cleanup),
        1 => Just(Action::FailNextPost),
        1 => Just(Action::Foreign),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Owed {
    Created(u32),
    Opened,
    TornDown(u32),
}

struct Host {
    owed: Vec<Owed>,
    rescinded: bool,
    released: bool,
}

impl Host {
    /// Learns what the guest posted.
    fn saw(&mut self, w: &mut World) {
        for p in w.posted() {
            match p.parse() {
                ChannelMessage::GpadlHeader(g) => self.owed.push(Owed::Created(g.fixed.gpadl)),
                ChannelMessage::OpenChannel(_) => self.owed.push(Owed::Opened),
                ChannelMessage::GpadlTeardown(t) => self.owed.push(Owed::TornDown(t.gpadl)),
                ChannelMessage::RelidReleased(_) => {
                    // The relid is gone: nothing more goes to it.
                    self.owed.clear();
                    self.released = true;
                }
                _ => {}
            }
        }
    }
}

fn check(w: &mut World) {
    let s = w.life.state();
    if matches!(
        s,
        LifecycleState::Closed | LifecycleState::Refused | LifecycleState::Released | LifecycleState::Unloaded
    ) {
        assert!(!w.life.holds_memory(), "{s:?} still holds memory");
    }
    let open = w.life.endpoints_mut().is_some();
    assert_eq!(open, s == LifecycleState::Open, "endpoints in {s:?}");
    assert!(w.mem.live() <= 1);
    assert_eq!(w.mem.live() == 1, w.life.holds_memory());
}

fn run(actions: &[Action]) {
    let mut w = World::new();
    let mut host = Host { owed: Vec::new(), rescinded: false, released: false };
    let mut fail_next = false;
    for a in actions {
        if fail_next {
            let mut once = true;
            w.h.hv.set_status(move |_, _| {
                if std::mem::take(&mut once) {
                    HvStatus::INSUFFICIENT_BUFFERS
                } else {
                    HvStatus::SUCCESS
                }
            });
            fail_next = false;
        }
        let before = w.life.state();
        match *a {
            Action::Open => {
                let r = w.life.open(&mut w.h.client, &request(), vec![0u8; 256], &w.mem, &w.h.hv);
                if before != LifecycleState::Idle {
                    assert!(r.is_err());
                    assert_eq!(w.life.state(), before);
                }
            }
            Action::Answer(n, ok) if !host.owed.is_empty() => {
                let answer = host.owed.remove(n % host.owed.len());
                let status = if ok { 0 } else { 0xC000_0001 };
                let bytes = match answer {
                    Owed::Created(h) => gpadl_created(RELID, h, status),
                    Owed::Opened => open_result(RELID, RELID, status),
                    Owed::TornDown(h) => gpadl_torndown(h),
                };
                w.host_sends_raw(&bytes).expect("the client rejected an owed answer");
            }
            Action::Drop(n) if !host.owed.is_empty() => {
                host.owed.remove(n % host.owed.len());
            }
            Action::Answer(..) | Action::Drop(_) => {}
            Action::Rescind if !host.rescinded && !host.released => {
                host.rescinded = true;
                let p = w.host_sends_raw(&rescind(RELID)).expect("rescind rejected");
                let ignores = matches!(before, LifecycleState::Abandoned | LifecycleState::Failed);
                assert_eq!(p.contains(&Progress::Rescinded), !ignores, "{before:?}: {p:?}");
            }
            Action::Rescind => {}
            Action::Close => {
                let r = w.life.close(&mut w.h.client, &w.mem, &w.h.hv);
                assert_eq!(r.is_err(), before != LifecycleState::Open);
            }
            Action::Abandon => {
                w.life.abandon(&mut w.h.client);
                if !before.is_done() {
                    assert_eq!(w.life.state(), LifecycleState::Abandoned);
                }
            }
            Action::Cleanup => {
                let r = w.life.cleanup_rescinded(&mut w.h.client, &w.mem, &w.h.hv);
                assert_eq!(r.is_err(), before != LifecycleState::Rescinded);
            }
            Action::FailNextPost => fail_next = true,
            Action::Foreign => {
                let e = ClientEvent::OpenResult { relid: RELID + 1, status: OpStatus::Success };
                assert_eq!(w.life.on_event(&e, &mut w.h.client, &w.mem, &w.h.hv), Progress::Unchanged);
                assert_eq!(w.life.state(), before);
            }
        }
        host.saw(&mut w);
        check(&mut w);
    }
    // The end: an unload frees whatever is left.
    w.h.hv.set_status(|_, _| HvStatus::SUCCESS);
    w.unload();
    check(&mut w);
    assert_eq!(w.mem.frees.get(), w.mem.allocs.get(), "leak after unload");
    assert!(!w.life.holds_memory());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_lives_never_free_early(actions in prop::collection::vec(action(), 1..40)) {
        run(&actions);
    }
}

#[test]
fn a_happy_life_through_the_model() {
    use Action::*;
    run(&[Open, Answer(0, true), Answer(0, true), Close, Answer(0, true)]);
}
