// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! A hostile host: every rejection path, and random valid-or-garbled message
//! sequences mixed with guest operations.

mod client_support;
use client_support::*;
use proptest::prelude::*;
use std::collections::HashSet;
use vmbus_core::client::{ClientError, ClientEvent, ConnectionState, OpStatus, RejectKind};
use vmbus_core::gpadl::{GpaRangeRef, FIRST_GPADL_HANDLE};
use vmbus_core::message::*;
use vmbus_core::version::Version;

fn z<T: zerocopy::FromZeros>() -> T {
    T::new_zeroed()
}

fn out(m: ChannelMessage<'_>) -> Vec<u8> {
    OutgoingMessage::new(&m).unwrap().as_bytes().to_vec()
}

#[test]
fn malformed_bytes() {
    let mut h = Harness::connected();
    let cases: Vec<Vec<u8>> = vec![
        vec![],
        vec![1, 0, 0],
        vec![0; 241],
        vec![19, 0, 0, 0, 0, 0, 0, 0],
        vec![0, 0, 0, 0, 0, 0, 0, 0],
        vec![0xFF; 16],
        // An offer cut short.
        offer(1, NET, instance(1), 0)[..100].to_vec(),
        // A GpadlCreated cut short.
        gpadl_created(1, 2, 0)[..12].to_vec(),
        // A VersionResponse shorter than the legacy 9 bytes.
        version_response(true, 1)[..8].to_vec(),
    ];
    for (i, c) in cases.iter().enumerate() {
        let e = h.feed(c).unwrap_err();
        assert!(matches!(e, ClientError::Malformed(_)), "case {i}: {e:?}");
    }
    assert_eq!(h.client.counters().rejected(RejectKind::Malformed), cases.len() as u64);
    assert_eq!(h.client.state(), ConnectionState::Connected);
}

#[test]
fn guest_only_messages_from_the_host() {
    let mut h = Harness::connected();
    h.offer_primary(1);
    let guest_only: Vec<Vec<u8>> = vec![
        out(ChannelMessage::RequestOffers),
        out(ChannelMessage::OpenChannel(z())),
        out(ChannelMessage::CloseChannel(z())),
        out(ChannelMessage::GpadlTeardown(z())),
        out(ChannelMessage::RelidReleased(z())),
        out(ChannelMessage::InitiateContact(z())),
        out(ChannelMessage::Unload),
        out(ChannelMessage::TlConnectRequest(z())),
        out(ChannelMessage::ModifyChannel(z())),
        out(ChannelMessage::GpadlBody(GpadlBodyMessage { fixed: z(), pfn_bytes: &[0; 8] })),
        out(ChannelMessage::GpadlHeader(GpadlHeaderMessage {
            fixed: GpadlHeader { range_buflen: 16, rangecount: 1, ..z() },
            range_bytes: &[0; 16],
        })),
    ];
    for (i, m) in guest_only.iter().enumerate() {
        let e = h.feed(m).unwrap_err();
        assert!(matches!(e, ClientError::WrongDirection(_)), "case {i}: {e:?}");
    }
    assert_eq!(h.client.counters().rejected(RejectKind::WrongDirection), guest_only.len() as u64);
    assert!(h.hv.take().is_empty());
    assert!(h.take_events().is_empty());
}

#[test]
fn responses_for_unknown_or_invalid_relids() {
    let mut h = Harness::connected();
    h.offer_primary(1);
    for relid in [0u32, 2048, 0xFFFF_FFFF] {
        for m in [open_result(relid, relid, 0), gpadl_created(relid, 5, 0), modify_response(relid, 0), rescind(relid)] {
            assert_eq!(h.feed(&m).unwrap_err().reject_kind(), Some(RejectKind::BadRelid));
        }
    }
    for m in [open_result(2, 2, 0), gpadl_created(2, 5, 0), modify_response(2, 0), rescind(2)] {
        assert_eq!(h.feed(&m).unwrap_err().reject_kind(), Some(RejectKind::UnknownRelid));
    }
    // Known channel, nothing outstanding.
    assert_eq!(h.feed(&open_result(1, 1, 0)).unwrap_err().reject_kind(), Some(RejectKind::NoRequestOutstanding));
    assert_eq!(h.feed(&modify_response(1, 0)).unwrap_err().reject_kind(), Some(RejectKind::NoRequestOutstanding));
    assert_eq!(
        h.feed(&gpadl_created(1, FIRST_GPADL_HANDLE, 0)).unwrap_err().reject_kind(),
        Some(RejectKind::UnknownGpadl)
    );
    let c = h.client.counters();
    assert_eq!(c.rejected(RejectKind::BadRelid), 12);
    assert_eq!(c.rejected(RejectKind::UnknownRelid), 4);
    assert_eq!(c.rejected(RejectKind::NoRequestOutstanding), 2);
    assert_eq!(c.messages, c.handled + c.rejected_total());
}

#[test]
fn gpadl_created_for_another_channels_handle() {
    let mut h = Harness::connected();
    h.offer_primary(1);
    h.offer_primary(2);
    let (handle, _) = h.create_gpadl(1, &[1]);
    // Right handle, wrong relid: not matched.
    assert_eq!(h.feed(&gpadl_created(2, handle, 0)).unwrap_err().reject_kind(), Some(RejectKind::UnknownGpadl));
    h.feed(&gpadl_created(1, handle, 0)).unwrap();
}

#[test]
fn tl_connect_result_passes_through() {
    let mut h = Harness::connected();
    let r = TlConnectResult { status: 7, ..zerocopy::FromZeros::new_zeroed() };
    let mut b = out(ChannelMessage::TlConnectResult(r));
    b[0] = 23;
    h.feed(&b).unwrap();
    assert!(matches!(h.take_events()[..], [ClientEvent::TlConnectResult(x)] if x.status == 7));
}

// ----- random sequences -----

#[derive(Clone, Debug)]
enum Step {
    Host(HostMsg),
    Garbled(HostMsg, usize, u8),
    Truncated(HostMsg, usize),
    Raw(Vec<u8>),
    Guest(GuestOp),
    /// The correct answer to the n-th pending request, with this status.
    Answer(usize, u32),
    /// The host's late answer (it crossed the rescind) to the n-th operation
    /// a rescind completed, with this status.
    Late(usize, u32),
    /// The n-th late answer already taken, sent again: refused.
    LateAgain(usize),
    /// The host rescinds a channel with operations pending (the n-th such
    /// relid), so their answers are owed.
    RescindBusy(usize),
    /// A well-behaved host and guest bring channel `relid` (device `relid`) up:
    /// offer, ring GPADL, open. Stops quietly at the first refusal.
    OpenFlow(u32),
}

#[derive(Clone, Debug)]
enum HostMsg {
    Offer { relid: u32, dev: u32, sub: u16 },
    Rescind(u32),
    AllOffers,
    GpadlCreated { relid: u32, handle: u32, status: u32 },
    Torndown(u32),
    OpenResult { relid: u32, openid: u32, status: u32 },
    ModifyResponse(u32),
    UnloadResponse,
    VersionResponse(bool, u32),
}

#[derive(Clone, Debug)]
enum GuestOp {
    CreateGpadl(u32, u8),
    Open(u32, u32),
    /// Open with the i-th GPADL the channel has.
    OpenKnown(u32, usize),
    /// Tear down the i-th GPADL the channel has.
    TeardownKnown(u32, usize),
    Close(u32),
    Teardown(u32, u32),
    Modify(u32),
    Release(u32),
    Unload,
}

fn relid() -> impl Strategy<Value = u32> {
    prop_oneof![8 => 1u32..6, 1 => Just(0u32), 1 => Just(2048u32), 1 => any::<u32>()]
}
fn handle() -> impl Strategy<Value = u32> {
    prop_oneof![8 => (0u32..12).prop_map(|i| FIRST_GPADL_HANDLE + i), 1 => any::<u32>()]
}
fn status() -> impl Strategy<Value = u32> {
    prop_oneof![4 => Just(0u32), 1 => any::<u32>()]
}

fn host_msg() -> impl Strategy<Value = HostMsg> {
    prop_oneof![
        3 => (relid(), 0u32..6, prop_oneof![3 => Just(0u16), 1 => 1u16..3]).prop_map(|(relid, dev, sub)| HostMsg::Offer { relid, dev, sub }),
        1 => relid().prop_map(HostMsg::Rescind),
        1 => Just(HostMsg::AllOffers),
        3 => (relid(), handle(), status()).prop_map(|(relid, handle, status)| HostMsg::GpadlCreated { relid, handle, status }),
        2 => handle().prop_map(HostMsg::Torndown),
        3 => (relid(), prop_oneof![3 => Just(None), 1 => any::<u32>().prop_map(Some)], status())
            .prop_map(|(relid, o, status)| HostMsg::OpenResult { relid, openid: o.unwrap_or(relid), status }),
        1 => relid().prop_map(HostMsg::ModifyResponse),
        1 => Just(HostMsg::UnloadResponse),
        1 => (any::<bool>(), any::<u32>()).prop_map(|(a, c)| HostMsg::VersionResponse(a, c)),
    ]
}

fn guest_op() -> impl Strategy<Value = GuestOp> {
    prop_oneof![
        3 => (1u32..6, 1u8..70).prop_map(|(r, n)| GuestOp::CreateGpadl(r, n)),
        2 => (1u32..6, handle()).prop_map(|(r, h)| GuestOp::Open(r, h)),
        4 => (1u32..6, any::<usize>()).prop_map(|(r, i)| GuestOp::OpenKnown(r, i)),
        3 => (1u32..6, any::<usize>()).prop_map(|(r, i)| GuestOp::TeardownKnown(r, i)),
        1 => (1u32..6).prop_map(GuestOp::Close),
        2 => (1u32..6, handle()).prop_map(|(r, h)| GuestOp::Teardown(r, h)),
        1 => (1u32..6).prop_map(GuestOp::Modify),
        1 => (1u32..6).prop_map(GuestOp::Release),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => host_msg().prop_map(Step::Host),
        2 => (host_msg(), any::<usize>(), any::<u8>()).prop_map(|(m, i, b)| Step::Garbled(m, i, b)),
        1 => (host_msg(), any::<usize>()).prop_map(|(m, n)| Step::Truncated(m, n)),
        1 => proptest::collection::vec(any::<u8>(), 0..250).prop_map(Step::Raw),
        8 => guest_op().prop_map(Step::Guest),
        6 => (any::<usize>(), status()).prop_map(|(i, s)| Step::Answer(i, s)),
        3 => (any::<usize>(), status()).prop_map(|(i, s)| Step::Late(i, s)),
        1 => any::<usize>().prop_map(Step::LateAgain),
        2 => any::<usize>().prop_map(Step::RescindBusy),
        2 => (1u32..6).prop_map(Step::OpenFlow),
        1 => (0u8..30).prop_map(|x| if x == 0 { Step::Guest(GuestOp::Unload) } else { Step::Host(HostMsg::AllOffers) }),
    ]
}

fn encode(m: &HostMsg) -> Vec<u8> {
    match *m {
        HostMsg::Offer { relid, dev, sub } => offer(relid, NET, instance(dev), sub),
        HostMsg::Rescind(r) => rescind(r),
        HostMsg::AllOffers => all_offers(),
        HostMsg::GpadlCreated { relid, handle, status } => gpadl_created(relid, handle, status),
        HostMsg::Torndown(h) => gpadl_torndown(h),
        HostMsg::OpenResult { relid, openid, status } => open_result(relid, openid, status),
        HostMsg::ModifyResponse(r) => modify_response(r, 0),
        HostMsg::UnloadResponse => unload_response(),
        HostMsg::VersionResponse(a, c) => version_response(a, c),
    }
}

/// What the guest is waiting for; every completion event must match exactly one.
#[derive(Default)]
struct Pending {
    creates: HashSet<(u32, u32)>,
    teardowns: HashSet<(u32, u32)>,
    opens: HashSet<u32>,
    modifies: HashSet<u32>,
}

impl Pending {
    fn apply(&mut self, ev: &ClientEvent) -> Result<(), TestCaseError> {
        match *ev {
            ClientEvent::GpadlCreated { relid, handle, .. } => {
                prop_assert!(self.creates.remove(&(relid, handle)), "unrequested GpadlCreated {relid} {handle:#x}")
            }
            ClientEvent::GpadlTornDown { relid, handle, .. } => {
                prop_assert!(self.teardowns.remove(&(relid, handle)), "unrequested GpadlTornDown")
            }
            ClientEvent::OpenResult { relid, .. } => prop_assert!(self.opens.remove(&relid), "unrequested OpenResult"),
            ClientEvent::ModifyChannelResponse { relid, .. } => {
                prop_assert!(self.modifies.remove(&relid), "unrequested ModifyChannelResponse")
            }
            _ => {}
        }
        Ok(())
    }
    /// The host message that correctly answers the n-th pending request.
    fn answer(&self, n: usize, status: u32) -> Option<Vec<u8>> {
        let mut all: Vec<Vec<u8>> = Vec::new();
        let mut c: Vec<_> = self.creates.iter().copied().collect();
        c.sort();
        all.extend(c.into_iter().map(|(r, h)| gpadl_created(r, h, status)));
        let mut t: Vec<_> = self.teardowns.iter().copied().collect();
        t.sort();
        all.extend(t.into_iter().map(|(_, h)| gpadl_torndown(h)));
        let mut o: Vec<_> = self.opens.iter().copied().collect();
        o.sort();
        all.extend(o.into_iter().map(|r| open_result(r, r, status)));
        let mut m: Vec<_> = self.modifies.iter().copied().collect();
        m.sort();
        all.extend(m.into_iter().map(|r| modify_response(r, status)));
        if all.is_empty() {
            None
        } else {
            let k = n % all.len();
            Some(all.swap_remove(k))
        }
    }
    /// Relids with an operation pending, sorted.
    fn busy_relids(&self) -> Vec<u32> {
        let mut r: Vec<u32> = self.creates.iter().chain(&self.teardowns).map(|&(r, _)| r).collect();
        r.extend(self.opens.iter().chain(&self.modifies));
        r.sort();
        r.dedup();
        r
    }
    fn is_empty(&self) -> bool {
        self.creates.is_empty() && self.teardowns.is_empty() && self.opens.is_empty() && self.modifies.is_empty()
    }
}

/// An answer the host still owes for an operation a rescind completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owed {
    Open(u32),
    Create(u32, u32),
    Teardown(u32, u32),
    Modify(u32),
}

impl Owed {
    fn relid(self) -> u32 {
        match self {
            Owed::Open(r) | Owed::Create(r, _) | Owed::Teardown(r, _) | Owed::Modify(r) => r,
        }
    }
    /// The operation a Rescinded completion event stands for.
    fn from_rescinded(ev: &ClientEvent) -> Option<Owed> {
        match *ev {
            ClientEvent::OpenResult { relid, status: OpStatus::Rescinded } => Some(Owed::Open(relid)),
            ClientEvent::GpadlCreated { relid, handle, status: OpStatus::Rescinded } => {
                Some(Owed::Create(relid, handle))
            }
            ClientEvent::GpadlTornDown { relid, handle, status: OpStatus::Rescinded } => {
                Some(Owed::Teardown(relid, handle))
            }
            ClientEvent::ModifyChannelResponse { relid, status: OpStatus::Rescinded } => Some(Owed::Modify(relid)),
            _ => None,
        }
    }
    fn answer(self, status: u32) -> Vec<u8> {
        match self {
            Owed::Open(r) => open_result(r, r, status),
            Owed::Create(r, h) => gpadl_created(r, h, status),
            Owed::Teardown(_, h) => gpadl_torndown(h),
            Owed::Modify(r) => modify_response(r, status),
        }
    }
    /// Which owed answer `bytes` is, if any (matched as the client must).
    fn matching(owed: &HashSet<Owed>, bytes: &[u8]) -> Option<Owed> {
        let m = ChannelMessage::parse(bytes).ok()?;
        owed.iter().copied().find(|o| match (m, *o) {
            (ChannelMessage::OpenResult(r), Owed::Open(x)) => r.child_relid == x && r.openid == x,
            (ChannelMessage::GpadlCreated(g), Owed::Create(x, h)) => g.child_relid == x && g.gpadl == h,
            (ChannelMessage::GpadlTorndown(g), Owed::Teardown(_, h)) => g.gpadl == h,
            (ChannelMessage::ModifyChannelResponse(m), Owed::Modify(x)) => m.child_relid == x,
            _ => false,
        })
    }
}

/// Late answers owed, and those already taken (a second copy must be refused).
#[derive(Default)]
struct OwedModel {
    owed: HashSet<Owed>,
    taken: Vec<Owed>,
}

fn nth_gpadl(h: &Harness, r: u32, i: usize) -> u32 {
    let g: Vec<u32> = h.client.gpadls(r).map(|(h, _)| h).collect();
    if g.is_empty() {
        0
    } else {
        g[i % g.len()]
    }
}

fn run_guest_op(h: &mut Harness, op: &GuestOp, p: &mut Pending, model: &mut OwedModel) {
    let op = match *op {
        GuestOp::OpenKnown(r, i) => GuestOp::Open(r, nth_gpadl(h, r, i)),
        GuestOp::TeardownKnown(r, i) => GuestOp::Teardown(r, nth_gpadl(h, r, i)),
        ref other => other.clone(),
    };
    match op {
        GuestOp::CreateGpadl(r, n) => {
            let pfns: Vec<u64> = (0..n as u64).collect();
            if let Ok(handle) = h.client.create_gpadl(r, GpaRangeRef::whole_pages(&pfns), &h.hv) {
                p.creates.insert((r, handle));
            }
        }
        GuestOp::Open(r, ring) => {
            if h.client.open_channel(r, &open_params(ring), &h.hv).is_ok() {
                p.opens.insert(r);
            }
        }
        GuestOp::Close(r) => {
            let _ = h.client.close_channel(r, &h.hv);
        }
        GuestOp::Teardown(r, handle) => {
            if let Ok(vmbus_core::client::TeardownOutcome::Pending) = h.client.teardown_gpadl(r, handle, &h.hv) {
                p.teardowns.insert((r, handle));
            }
        }
        GuestOp::Modify(r) => {
            if let Ok(vmbus_core::client::ModifyOutcome::AwaitResponse) = h.client.modify_channel(r, 1, &h.hv) {
                p.modifies.insert(r);
            }
        }
        GuestOp::Release(r) => {
            if h.client.release_relid(r, &h.hv).is_ok() {
                // The relid is free: whatever it was owed is forgotten.
                model.owed.retain(|o| o.relid() != r);
                model.taken.retain(|o| o.relid() != r);
            }
        }
        GuestOp::Unload => {
            let _ = h.client.unload(&h.hv);
        }
        GuestOp::OpenKnown(..) | GuestOp::TeardownKnown(..) => {}
    }
    h.client.check_invariants().expect("invariant broken by a guest operation");
}

fn open_flow(h: &mut Harness, r: u32, p: &mut Pending) -> Result<(), TestCaseError> {
    if h.client.channel(r).is_none() && h.feed(&offer(r, SCSI, instance(100 + r), 0)).is_err() {
        return Ok(());
    }
    let Ok(handle) = h.client.create_gpadl(r, GpaRangeRef::whole_pages(&[1, 2, 3, 4]), &h.hv) else {
        return Ok(());
    };
    p.creates.insert((r, handle));
    h.feed(&gpadl_created(r, handle, 0)).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    if h.client.open_channel(r, &open_params(handle), &h.hv).is_err() {
        return Ok(());
    }
    p.opens.insert(r);
    h.feed(&open_result(r, r, 0)).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_keep_the_client_consistent(steps in proptest::collection::vec(step(), 1..120)) {
        let mut h = Harness::connected_at(Version::WIN10_V5_3);
        let mut pending = Pending::default();
        // Answers the host still owes for operations a rescind completed.
        let mut model = OwedModel::default();
        for s in &steps {
            let before = *h.client.counters();
            // The message fed this step, if any.
            let mut fed: Vec<u8> = Vec::new();
            let r = match s {
                Step::Host(m) => {
                    fed = encode(m);
                    Some(h.feed(&fed))
                }
                Step::Garbled(m, i, b) => {
                    fed = encode(m);
                    let n = fed.len();
                    fed[i % n] ^= b | 1;
                    Some(h.feed(&fed))
                }
                Step::Truncated(m, n) => {
                    let bytes = encode(m);
                    let n = n % (bytes.len() + 1);
                    fed = bytes[..n].to_vec();
                    Some(h.feed(&fed))
                }
                Step::Raw(bytes) => {
                    fed = bytes.clone();
                    Some(h.feed(bytes))
                }
                Step::Answer(n, status) => match pending.answer(*n, *status) {
                    Some(bytes) => {
                        let r = h.feed(&bytes);
                        prop_assert!(r.is_ok(), "a correct answer was refused: {:?}", r);
                        fed = bytes;
                        Some(r)
                    }
                    None => None,
                },
                Step::Late(n, status) => {
                    let mut all: Vec<Owed> = model.owed.iter().copied().collect();
                    all.sort();
                    match all.get(n % all.len().max(1)) {
                        Some(o) => {
                            fed = o.answer(*status);
                            let r = h.feed(&fed);
                            prop_assert!(r.is_ok(), "an owed late answer {:?} was refused: {:?}", o, r);
                            prop_assert!(h.events.is_empty(), "a late answer yielded events");
                            Some(r)
                        }
                        None => None,
                    }
                }
                Step::RescindBusy(n) => {
                    let busy = pending.busy_relids();
                    match busy.get(n % busy.len().max(1)) {
                        Some(&r) => {
                            fed = rescind(r);
                            let r = h.feed(&fed);
                            prop_assert!(r.is_ok(), "rescind of a busy channel refused: {:?}", r);
                            Some(r)
                        }
                        None => None,
                    }
                }
                Step::LateAgain(n) => match model.taken.get(n % model.taken.len().max(1)) {
                    Some(o) => {
                        fed = o.answer(0);
                        let r = h.feed(&fed);
                        prop_assert!(r.is_err(), "a late answer {:?} was taken twice", o);
                        Some(r)
                    }
                    None => None,
                },
                Step::Guest(op) => {
                    run_guest_op(&mut h, op, &mut pending, &mut model);
                    None
                }
                Step::OpenFlow(r) => {
                    open_flow(&mut h, *r, &mut pending)?;
                    None
                }
            };
            // A late answer is accepted once for each owed one, never otherwise.
            let c = *h.client.counters();
            if c.late_after_rescind != before.late_after_rescind {
                prop_assert_eq!(c.late_after_rescind, before.late_after_rescind + 1);
                prop_assert!(matches!(r, Some(Ok(()))));
                let o = Owed::matching(&model.owed, &fed);
                prop_assert!(o.is_some(), "a late answer that was not owed was accepted: {:02x?}", fed);
                let o = o.unwrap();
                model.owed.remove(&o);
                model.taken.push(o);
                prop_assert!(h.events.is_empty(), "a late answer yielded events");
            }
            for ev in h.take_events() {
                pending.apply(&ev)?;
                if let Some(o) = Owed::from_rescinded(&ev) {
                    prop_assert!(model.owed.insert(o), "{:?} owed twice", o);
                }
                if ev == ClientEvent::UnloadComplete {
                    model = OwedModel::default();
                }
            }
            prop_assert_eq!(c.messages, c.handled + c.rejected_total());
            if let Some(r) = r {
                prop_assert_eq!(c.messages, before.messages + 1);
                match r {
                    Ok(()) => prop_assert_eq!(c.handled, before.handled + 1),
                    Err(e) => {
                        let kind = e.reject_kind();
                        prop_assert!(kind.is_some(), "handle_message returned a non-host error {:?}", e);
                        let k = kind.unwrap();
                        prop_assert_eq!(c.rejected(k), before.rejected(k) + 1);
                    }
                }
            }
            // The client never posts a malformed message.
            for p in h.hv.take() {
                prop_assert!(ChannelMessage::parse(&p.bytes).is_ok());
                prop_assert!(p.bytes.len() <= 240);
            }
        }
        // Rescinding every channel (or unloading) resolves every wait.
        if matches!(h.client.state(), ConnectionState::Connected | ConnectionState::Unloading) {
            let relids: Vec<u32> = h.client.channels().filter(|c| !c.rescinded).map(|c| c.relid).collect();
            for r in relids {
                h.feed(&rescind(r)).unwrap();
            }
            for ev in h.take_events() {
                pending.apply(&ev)?;
            }
        }
        if h.client.state() == ConnectionState::Unloading {
            h.feed(&unload_response()).unwrap();
            for ev in h.take_events() {
                pending.apply(&ev)?;
            }
        }
        prop_assert!(pending.is_empty(), "operations left hanging");
        prop_assert!(h.client.channels().all(|c| c.rescinded && !c.modify_pending));
        for c in h.client.channels() {
            prop_assert!(h.client.gpadls(c.relid).all(|(_, s)| s == vmbus_core::client::GpadlState::Created));
        }
    }

    /// Arbitrary bytes at any connection state never panic and are always accounted.
    #[test]
    fn arbitrary_bytes(msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..260), 1..40),
                       connect in any::<bool>()) {
        let mut h = if connect { Harness::connected() } else { Harness::new() };
        for m in &msgs {
            let mut m = m.clone();
            // Bias the type towards valid values so deeper paths run.
            if m.len() >= 4 { m[1] = 0; m[2] = 0; m[3] = 0; m[0] %= 26; }
            let _ = h.feed(&m);
            h.take_events();
        }
        let c = *h.client.counters();
        prop_assert_eq!(c.messages, msgs.len() as u64 + if connect { 1 } else { 0 });
        prop_assert_eq!(c.messages, c.handled + c.rejected_total());
    }
}

#[test]
fn rescinded_statuses_are_reported() {
    // A compact end-to-end check that rescind produces OpStatus::Rescinded for
    // each kind of pending request at once.
    let mut h = Harness::connected();
    let _ring = h.open(1);
    let done = h.gpadl_ready(1, 2);
    let (creating, _) = h.create_gpadl(1, &[5]);
    h.client.teardown_gpadl(1, done, &h.hv).unwrap();
    h.client.modify_channel(1, 0, &h.hv).unwrap();
    h.feed(&rescind(1)).unwrap();
    let ev = h.take_events();
    assert_eq!(ev[0], ClientEvent::Rescinded { relid: 1 });
    assert!(ev.contains(&ClientEvent::GpadlCreated { relid: 1, handle: creating, status: OpStatus::Rescinded }));
    assert!(ev.contains(&ClientEvent::GpadlTornDown { relid: 1, handle: done, status: OpStatus::Rescinded }));
    assert!(ev.contains(&ClientEvent::ModifyChannelResponse { relid: 1, status: OpStatus::Rescinded }));
    assert_eq!(ev.len(), 4);
    assert!(ev.iter().all(|e| e.relid() == Some(1)));
    assert_eq!(ClientEvent::UnloadComplete.relid(), None);
    assert_eq!(h.client.counters().cancelled_operations, 3);
}
