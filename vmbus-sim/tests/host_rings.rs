// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The simulated host as a ring consumer: it masks the guest-to-host ring's
//! interrupts while it drains (so the guest's writer need not signal), loses
//! no wake-up when it unmasks, and turns its reader commit's pending_send_sz
//! decision into an event interrupt for a guest waiting for space.
//!
//! The test plays the guest by hand: it builds the guest's ring halves on
//! the ring GPADL's pages and posts the channel messages itself.

use std::ptr::NonNull;
use vmbus_core::gpadl::{GpaRangeRef, GpadlMessages};
use vmbus_core::guid::Guid;
use vmbus_core::host::ServerConfig;
use vmbus_core::hv::HvMessage;
use vmbus_core::message::{ChannelMessage, InitiateContact, MessageHeader, MessageType, OpenChannel, OutgoingMessage};
use vmbus_core::packet::{inband_header, ring_control, PacketType};
use vmbus_core::platform::{Hypervisor, SharedMemory};
use vmbus_core::ring::{Mapping, OwnedRing, RingMemory, RingReader, RingWriter, WriteError};
use vmbus_core::version::Version;
use vmbus_sim::bus::Bus;
use vmbus_sim::devices::echo::{EchoDevice, PACKET_DATA_INBAND};
use vmbus_sim::hypercall::Hypercalls;
use vmbus_sim::memory::{ArenaRef, GuestMemory};
use vmbus_sim::synic::Synic;

/// Ring GPADL: 8 pages, the host-to-guest ring starts at page 4 (3 data pages each way).
const RING_PAGES: usize = 8;
const DOWNSTREAM: usize = 4;
/// A packet type the echo device ignores (no reply, no back-pressure).
const PACKET_COMPLETION: u16 = 11;

struct Guest {
    /// The guest's halves first: fields drop in order, and `_arena` keeps
    /// the memory they point into allocated until the end.
    writer: RingWriter,
    reader: RingReader,
    mem: GuestMemory,
    hv: Hypercalls,
    synic: Synic,
    bus: Bus,
    relid: u32,
    signal_conn: u32,
    outbound_gpa: u64,
    /// HvSignalEvent calls the guest made.
    signals: u64,
    _arena: ArenaRef,
}

/// The guest's half of one ring on `pages` guest pages starting at `first_pfn`.
fn ring_on(mem: &GuestMemory, first_pfn: u64, pages: usize) -> RingMemory {
    let header = NonNull::new(mem.frame_of_ptr(first_pfn)).unwrap();
    let data = NonNull::new(mem.frame_of_ptr(first_pfn + 1)).unwrap();
    // SAFETY: the control page and `pages - 1` data pages are frames of
    // one region allocated contiguously from `mem`'s arena (non-null
    // above), which stays allocated while the `ArenaRef` held next to the
    // halves in `Guest` lives; the arena is only accessed through raw
    // pointers and the ring code's atomics; the test builds one writer and
    // one reader per ring on the guest side (the host's halves are the peer).
    unsafe { RingMemory::new(header, data, (pages - 1) * 4096, Mapping::Plain) }.unwrap()
}

impl Guest {
    /// Contact, offers, ring GPADL and an open echo channel.
    fn open() -> Guest {
        let mem = GuestMemory::new(64, 0x100).unwrap();
        let hv = Hypercalls::new(16);
        let mut synic = Synic::new(64);
        let mut bus = Bus::new(ServerConfig::default(), &hv, &mem).unwrap();
        let relid = bus.add_device(Box::new(EchoDevice::new()), Guid::ZERO, &hv).unwrap();
        let region = mem.alloc_shared(RING_PAGES).unwrap();
        let pfns: Vec<u64> = (0..RING_PAGES).map(|i| mem.frame(&region, i).unwrap()).collect();
        // The guest initialises both control pages before it opens.
        let outbound = ring_on(&mem, pfns[0], DOWNSTREAM);
        let inbound = ring_on(&mem, pfns[DOWNSTREAM], RING_PAGES - DOWNSTREAM);
        outbound.initialize();
        inbound.initialize();

        let post = |bus: &mut Bus, synic: &mut Synic, conn: u32, bytes: &[u8]| {
            assert!(hv.post_message(conn, bytes).is_success());
            while bus.step(&mem, &hv, synic) {}
        };
        let contact = InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0));
        post(
            &mut bus,
            &mut synic,
            4,
            OutgoingMessage::new(&ChannelMessage::InitiateContact(contact)).unwrap().as_bytes(),
        );
        let conn = bus.server().connection().unwrap().msg_conn_id;
        post(&mut bus, &mut synic, conn, OutgoingMessage::new(&ChannelMessage::RequestOffers).unwrap().as_bytes());
        for m in GpadlMessages::new(relid, 0x77, GpaRangeRef::whole_pages(&pfns)).unwrap() {
            post(&mut bus, &mut synic, conn, m.as_bytes());
        }
        let open = OpenChannel {
            header: MessageHeader::new(MessageType::OPEN_CHANNEL),
            child_relid: relid,
            openid: relid,
            ringbuffer_gpadl_handle: 0x77,
            target_vp: 0,
            downstream_ringbuffer_pageoffset: DOWNSTREAM as u32,
            user_data: [0; 120],
        };
        post(&mut bus, &mut synic, conn, OutgoingMessage::new(&ChannelMessage::OpenChannel(open)).unwrap().as_bytes());
        // Drain the SynIC: the open must have succeeded.
        let mut opened = false;
        while let Some((raw, pending)) = synic.take_slot() {
            let (_, payload) = HvMessage::parse(&raw).unwrap();
            if let ChannelMessage::OpenResult(r) = ChannelMessage::parse(payload).unwrap() {
                assert_eq!(r.status, 0);
                opened = true;
            }
            if pending {
                synic.eom();
            }
        }
        assert!(opened);
        let outbound_gpa = bus.ring_location(relid).unwrap().outbound_gpa;
        assert_eq!(outbound_gpa, pfns[0] * 4096);
        let signal_conn = bus.server().channel(relid).unwrap().signal_connection_id();
        let arena = mem.arena_ref();
        Guest {
            mem,
            hv,
            synic,
            bus,
            relid,
            signal_conn,
            outbound_gpa,
            writer: RingWriter::new(outbound),
            reader: RingReader::new(inbound),
            signals: 0,
            _arena: arena,
        }
    }

    /// Writes one packet of `len` payload bytes; false if the ring is full.
    fn write(&mut self, packet_type: u16, tid: u64, len: usize) -> Result<(), WriteError> {
        let header = inband_header(PacketType(packet_type), 0, tid, len).unwrap();
        self.writer.write(&[&header, &vec![tid as u8; len]])
    }

    /// Commits and signals the host if the ring protocol says so; returns whether it did.
    fn commit(&mut self) -> bool {
        let signal = self.writer.commit().unwrap();
        if signal {
            assert!(self.hv.signal_event(self.signal_conn).is_success());
            self.signals += 1;
        }
        signal
    }

    fn host_step(&mut self) -> bool {
        self.bus.step(&self.mem, &self.hv, &mut self.synic)
    }

    fn host_until_idle(&mut self) {
        for _ in 0..1000 {
            if !self.host_step() {
                return;
            }
        }
        panic!("host never went idle");
    }

    /// The interrupt mask the host keeps in the guest-to-host ring.
    fn outbound_mask(&self) -> u32 {
        self.mem.read_u32(self.outbound_gpa + ring_control::INTERRUPT_MASK as u64).unwrap()
    }

    /// Transaction ids of the echoes waiting in the guest's inbound ring.
    fn read_echoes(&mut self) -> Vec<u64> {
        let mut buf = vec![0u8; 8192];
        let mut tids = Vec::new();
        while let Some(p) = self.reader.read(&mut buf).unwrap() {
            assert_eq!(p.packet_type.0, PACKET_DATA_INBAND);
            tids.push(p.trans_id);
        }
        self.reader.commit().unwrap();
        tids
    }
}

/// While the host is busy with the guest-to-host ring (it read packets and
/// polls once more), its mask is set and the guest's commit needs no
/// signal; the host still finds the packet, and once it has gone idle the
/// mask is clear again, so the next packet signals.
#[test]
fn guest_writes_while_the_host_is_busy_need_no_signal() {
    let mut g = Guest::open();
    assert_eq!(g.outbound_mask(), 0);
    g.write(PACKET_DATA_INBAND, 1, 64).unwrap();
    assert!(g.commit(), "empty ring, mask clear: the guest signals");
    // One host step reads the packet and stays on the channel, masked.
    assert!(g.host_step());
    assert_eq!(g.outbound_mask(), 1, "the host masks while it drains");
    assert_eq!(g.bus.stats().packets_in, 1);

    // Written while the host is busy: no signal.
    g.write(PACKET_DATA_INBAND, 2, 64).unwrap();
    assert!(!g.commit(), "the mask suppresses the signal");
    g.host_until_idle();
    assert_eq!(g.bus.stats().packets_in, 2, "no lost wake-up: the host found the unsignalled packet");
    assert_eq!(g.outbound_mask(), 0, "an idle host leaves the mask clear");
    assert_eq!(g.read_echoes(), vec![1, 2]);

    // Idle host: the next write signals again.
    g.write(PACKET_DATA_INBAND, 3, 64).unwrap();
    assert!(g.commit());
    g.host_until_idle();
    assert_eq!(g.read_echoes(), vec![3]);
    assert_eq!(g.signals, 2);
    assert_eq!(g.bus.stats().packets_in, 3);
    assert!(g.bus.stats().read_batches >= 3);
}

/// Many packets in small bursts while the host polls: far fewer than one
/// signal per packet, and every packet is echoed.
#[test]
fn bursts_against_a_polling_host_signal_less_than_once_per_packet() {
    let mut g = Guest::open();
    let mut sent = 0u64;
    for burst in 0..20u64 {
        for i in 0..3 {
            g.write(PACKET_DATA_INBAND, burst * 3 + i, 48).unwrap();
            g.commit();
            sent += 1;
        }
        // One host step between bursts: the host is still polling when the
        // next burst comes.
        g.host_step();
        let _ = g.read_echoes();
    }
    g.host_until_idle();
    let _ = g.read_echoes();
    assert_eq!(g.bus.stats().packets_in, sent);
    assert!(g.signals * 4 <= sent, "{} signals for {sent} packets", g.signals);
}

/// The guest fills its outbound ring, asks for space with pending_send_sz
/// and waits; the host's reader commit frees the space and must wake the
/// guest with an event interrupt.
#[test]
fn a_guest_waiting_for_space_is_woken_when_the_host_drains() {
    let mut g = Guest::open();
    // Packets the echo device ignores, so the host never stalls on replies.
    let mut tid = 0;
    let needed = loop {
        match g.write(PACKET_COMPLETION, tid, 200) {
            Ok(()) => tid += 1,
            Err(WriteError::Full { needed, .. }) => break needed,
            Err(e) => panic!("{e:?}"),
        }
    };
    assert!(tid > 40, "{tid} packets filled the ring");
    assert!(g.commit());
    assert!(!g.writer.request_space(needed).unwrap(), "no space yet: wait for the host");
    assert!(!g.synic.events_pending());
    let interrupts_before = g.bus.stats().guest_signals;

    g.host_until_idle();
    assert_eq!(g.bus.stats().packets_in, tid);
    assert!(g.bus.stats().guest_signals > interrupts_before, "the host signalled the space");
    let woken: Vec<u32> = g.synic.take_events().collect();
    assert_eq!(woken, vec![g.relid], "event interrupt on the channel");
    // The space is really there.
    g.write(PACKET_COMPLETION, tid, 200).unwrap();
    assert!(g.read_echoes().is_empty());
}

/// The consumer pattern the host follows, on one ring without the bus: a
/// packet committed between the last read and `end_read` sends no signal
/// (the mask is set) and is found by `end_read`'s re-check.
#[test]
fn end_read_recheck_finds_a_packet_that_skipped_its_signal() {
    let mut ring = OwnedRing::new(2).unwrap();
    let (writer, reader, _peer) = ring.halves();
    let mut buf = [0u8; 256];
    let h = inband_header(PacketType(PACKET_DATA_INBAND), 0, 1, 8).unwrap();
    writer.write(&[&h, &[1; 8]]).unwrap();
    assert!(writer.commit().unwrap(), "first packet into an idle reader signals");

    reader.begin_read();
    assert!(reader.read(&mut buf).unwrap().is_some());
    assert!(reader.read(&mut buf).unwrap().is_none());
    reader.commit().unwrap();
    // The race: the writer commits after the reader saw the ring empty but
    // before it unmasked.
    let h2 = inband_header(PacketType(PACKET_DATA_INBAND), 0, 2, 8).unwrap();
    writer.write(&[&h2, &[2; 8]]).unwrap();
    assert!(!writer.commit().unwrap(), "masked: no signal");
    assert!(reader.end_read().unwrap(), "the re-check sees the new packet");
    reader.begin_read();
    assert_eq!(reader.read(&mut buf).unwrap().map(|p| p.trans_id), Some(2));
    reader.commit().unwrap();
    assert!(!reader.end_read().unwrap());
    writer.write(&[&h, &[1; 8]]).unwrap();
    assert!(writer.commit().unwrap(), "unmasked and empty: signal again");
}
