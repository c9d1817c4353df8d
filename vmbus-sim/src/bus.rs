// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The simulated host: the VMBus server wired to the simulated hypervisor,
//! guest memory and device models.
//!
//! [`Bus`] wraps [`vmbus_core::host::Server`]. One host step does one of:
//!
//! * take one message the guest posted and hand it to the server;
//! * act on the server's events (map a ring GPADL and answer an open, drop
//!   the rings of a closed channel, create and delete hypervisor ports);
//! * move the server's outgoing messages into the guest's SynIC slot queue;
//! * run the device model of a channel the guest signalled: read its packets
//!   from the guest-to-host ring, write the replies into the host-to-guest
//!   ring, and set the channel's event flag when a ring commit says so.
//!
//! Rings are reached through [`crate::memory::GuestMemory::map_contiguous`];
//! a ring GPADL that is not one contiguous run of guest memory is refused
//! (the open fails with a status), as are bad ring offsets.

use crate::devices::{DeviceModel, GuestPacket, HostPacket};
use crate::hypercall::Hypercalls;
use crate::memory::{ArenaRef, GuestMemory, MemoryError};
use crate::synic::Synic;
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use vmbus_core::guid::Guid;
use vmbus_core::host::{OfferSpec, RescindCrossings, Server, ServerConfig, ServerEvent, STATUS_UNSUCCESSFUL};
use vmbus_core::hv::{MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4};
use vmbus_core::message::{ChannelMessage, MessageType, OutgoingMessage};
use vmbus_core::packet::{inband_header, PacketType};
use vmbus_core::platform::HV_PAGE_SIZE;
use vmbus_core::ring::{Corruption, ReadError, RingReader, RingWriter, WriteError};

/// Largest packet the host reads from a guest ring.
pub const HOST_PACKET_BUFFER: usize = 64 * 1024;
/// Packets a device handles per host step (bounds one step's work).
pub const DEVICE_BUDGET: usize = 32;

/// Why the host could not set up a channel's rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingMapError {
    /// The open named a GPADL the server does not know.
    UnknownGpadl(u32),
    /// The GPADL's pages are not one contiguous run of guest memory.
    Memory(MemoryError),
    /// The ring offset leaves one side without a header and a data page.
    BadOffset {
        /// Offset in pages.
        offset: u32,
        /// Pages in the GPADL.
        pages: usize,
    },
    /// The ring code refused the memory.
    Setup,
    /// Fault injection: the host refuses this open.
    Refused,
}

impl fmt::Display for RingMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingMapError::UnknownGpadl(h) => write!(f, "ring GPADL {h:#x} unknown"),
            RingMapError::Memory(e) => write!(f, "ring GPADL unusable: {e}"),
            RingMapError::BadOffset { offset, pages } => write!(f, "ring offset {offset} in {pages} pages"),
            RingMapError::Setup => f.write_str("ring code refused the mapping"),
            RingMapError::Refused => f.write_str("open refused by fault injection"),
        }
    }
}

/// Host counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Guest messages handed to the server.
    pub messages_in: u64,
    /// Guest messages the server refused.
    pub messages_rejected: u64,
    /// Host messages moved into the SynIC.
    pub messages_out: u64,
    /// Opens answered with success.
    pub opens_accepted: u64,
    /// Opens refused (ring mapping failed).
    pub opens_refused: u64,
    /// Packets read from guest rings.
    pub packets_in: u64,
    /// Payload bytes read from guest rings.
    pub bytes_in: u64,
    /// Packets written to guest rings.
    pub packets_out: u64,
    /// Payload bytes written to guest rings.
    pub bytes_out: u64,
    /// Event flags set for the guest (ring commits that asked for a signal).
    pub guest_signals: u64,
    /// Times a device found the guest's ring full and waited.
    pub ring_full_waits: u64,
    /// Guest ring corruption seen by the host (channel stops being serviced).
    pub ring_corruptions: u64,
    /// Malformed packets from the guest that the host skipped.
    pub bad_guest_packets: u64,
    /// Guest messages that crossed a rescind, answered or swallowed by the
    /// server (not counted in `messages_rejected`).
    pub messages_crossed_rescind: u64,
    /// Read passes over guest rings: each ends with one reader commit.
    pub read_batches: u64,
    /// Times the host, unmasking interrupts after draining a guest ring,
    /// found packets that arrived while the mask was set, and drained again.
    pub mask_rechecks: u64,
}

/// Why the host stopped servicing a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    /// The guest's side of a ring was corrupt.
    Ring(Corruption),
    /// The fault injector corrupted a control word; the host must not repair it.
    FaultInjected,
}

/// Why a packet could not be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectError {
    /// No open channel with that relid.
    NoChannel(u32),
    /// The ring refused the bytes.
    Write(WriteError),
}

/// Why a read batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The ring is empty (as far as this batch saw).
    Empty,
    /// [`DEVICE_BUDGET`] packets were read in this run.
    Budget,
    /// The guest's inbound ring is full: replies wait, reading stops.
    Backpressure,
}

/// A host channel whose rings are mapped.
struct HostChannel {
    relid: u32,
    device: usize,
    reader: RingReader,
    writer: RingWriter,
    /// Replies waiting for ring space.
    backlog: VecDeque<HostPacket>,
    buf: Vec<u8>,
    broken: Option<Broken>,
    /// GPA of the guest-to-host ring's control page.
    outbound_gpa: u64,
    /// GPA of the host-to-guest ring's control page.
    inbound_gpa: u64,
    inbound_data_size: u32,
}

/// A device model and the channels it serves.
struct DeviceEntry {
    model: Box<dyn DeviceModel>,
}

/// Which way a traced channel message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Posted by the guest (HvPostMessage).
    ToHost,
    /// Delivered to the guest's SynIC.
    ToGuest,
}

/// One traced channel message: direction, type and the relid it names (if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceEntry {
    /// Direction.
    pub direction: Direction,
    /// Message type (as read from the header; may be an unknown value).
    pub msgtype: MessageType,
    /// Relid the message names, when it has one.
    pub relid: Option<u32>,
}

/// Messages traced per run.
pub const TRACE_LIMIT: usize = 96;

fn trace_entry(direction: Direction, bytes: &[u8]) -> Option<TraceEntry> {
    let t = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    let relid = match ChannelMessage::parse(bytes).ok()? {
        ChannelMessage::OfferChannel(m) => Some(m.child_relid),
        ChannelMessage::RescindChannelOffer(m) => Some(m.child_relid),
        ChannelMessage::OpenChannel(m) => Some(m.child_relid),
        ChannelMessage::OpenResult(m) => Some(m.child_relid),
        ChannelMessage::CloseChannel(m) => Some(m.child_relid),
        ChannelMessage::GpadlHeader(m) => Some(m.fixed.child_relid),
        ChannelMessage::GpadlCreated(m) => Some(m.child_relid),
        ChannelMessage::GpadlTeardown(m) => Some(m.child_relid),
        ChannelMessage::RelidReleased(m) => Some(m.child_relid),
        _ => None,
    };
    Some(TraceEntry { direction, msgtype: MessageType(t), relid })
}

/// Where a channel's rings live in guest memory (for fault injection and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLocation {
    /// GPA of the guest-to-host ring's control page.
    pub outbound_gpa: u64,
    /// GPA of the host-to-guest ring's control page.
    pub inbound_gpa: u64,
    /// Data bytes of the host-to-guest ring.
    pub inbound_data_size: u32,
}

/// Open requests held back by the host (the `DuringOpen` rescind fault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeldOpen {
    relid: u32,
    gpadl: u32,
    downstream_offset: u32,
}

/// The simulated host. See the module docs.
pub struct Bus {
    /// Keeps guest memory alive while ring halves point into it.
    arena: ArenaRef,
    server: Server,
    devices: Vec<DeviceEntry>,
    /// relid -> device index, for every channel that has a model.
    relid_device: BTreeMap<u32, usize>,
    /// relid -> signal connection id (its hypervisor event port).
    relid_conn: BTreeMap<u32, u32>,
    channels: BTreeMap<u32, HostChannel>,
    /// Messages the SynIC queue could not take yet.
    outbox: VecDeque<OutgoingMessage>,
    /// When set, open requests wait in `held_opens` instead of being answered.
    hold_opens: bool,
    held_opens: Vec<HeldOpen>,
    /// Channels signalled by the guest and not yet serviced.
    runnable: Vec<u32>,
    /// The host has hung: messages are swallowed, rings not serviced.
    silent: bool,
    /// Refuse the next open with a failure status (one-shot fault).
    refuse_next_open: bool,
    stats: BusStats,
    /// Every event seen, for tests and reports (bounded).
    event_log: Vec<ServerEvent>,
    /// The first channel messages in both directions.
    trace: Vec<TraceEntry>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("devices", &self.devices.len())
            .field("open_channels", &self.channels.keys().collect::<Vec<_>>())
            .field("stats", &self.stats)
            .finish()
    }
}

const EVENT_LOG_LIMIT: usize = 4096;

impl Bus {
    /// A host with `config`; registers the message ports the configuration
    /// implies with the hypervisor (1, and 4 if any version is 5.0 or later).
    ///
    /// Like Hyper-V, the simulated host tolerates guest messages that
    /// crossed its rescind in flight: the server is switched to
    /// [`RescindCrossings::Tolerate`] whatever `config` says (switch back
    /// with `server_mut().set_rescind_crossings`).
    pub fn new(config: ServerConfig, hv: &Hypercalls, mem: &GuestMemory) -> Option<Bus> {
        let modern = config.versions.iter().any(|v| v.uses_msg_sint());
        let mut server = Server::new(config).ok()?;
        server.set_rescind_crossings(RescindCrossings::Tolerate);
        hv.add_message_port(MESSAGE_CONNECTION_ID);
        if modern {
            hv.add_message_port(MESSAGE_CONNECTION_ID_4);
        }
        Some(Bus {
            arena: mem.arena_ref(),
            server,
            devices: Vec::new(),
            relid_device: BTreeMap::new(),
            relid_conn: BTreeMap::new(),
            channels: BTreeMap::new(),
            outbox: VecDeque::new(),
            hold_opens: false,
            held_opens: Vec::new(),
            runnable: Vec::new(),
            silent: false,
            refuse_next_open: false,
            stats: BusStats::default(),
            event_log: Vec::new(),
            trace: Vec::new(),
        })
    }

    /// The VMBus server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The VMBus server, for fault switches and direct actions.
    pub fn server_mut(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Counters.
    pub fn stats(&self) -> BusStats {
        self.stats
    }

    /// The first [`TRACE_LIMIT`] channel messages, both directions, in order.
    pub fn trace(&self) -> &[TraceEntry] {
        &self.trace
    }

    fn record(&mut self, direction: Direction, bytes: &[u8]) {
        if self.trace.len() < TRACE_LIMIT {
            if let Some(e) = trace_entry(direction, bytes) {
                self.trace.push(e);
            }
        }
    }

    /// Server events seen so far.
    pub fn event_log(&self) -> &[ServerEvent] {
        &self.event_log
    }

    /// Offers a channel served by `model`; returns the relid.
    pub fn add_device(&mut self, model: Box<dyn DeviceModel>, instance: Guid, hv: &Hypercalls) -> Option<u32> {
        let relid = self.server.add_offer(OfferSpec::new(model.interface(), instance)).ok()?;
        self.devices.push(DeviceEntry { model });
        self.relid_device.insert(relid, self.devices.len() - 1);
        self.register_event_port(relid, hv);
        Some(relid)
    }

    /// Offers a channel with no device model behind it (the guest may see it
    /// but an open is refused).
    pub fn add_offer_only(&mut self, interface: Guid, instance: Guid, hv: &Hypercalls) -> Option<u32> {
        let relid = self.server.add_offer(OfferSpec::new(interface, instance)).ok()?;
        self.register_event_port(relid, hv);
        Some(relid)
    }

    /// Offers `count` sub-channels of `primary`, served by the primary's device model.
    pub fn offer_subchannels(&mut self, primary: u32, count: u16, hv: &Hypercalls) -> Vec<u32> {
        let Some(&device) = self.relid_device.get(&primary) else {
            return Vec::new();
        };
        let relids = self.server.offer_subchannels(primary, count).unwrap_or_default();
        for &r in &relids {
            self.relid_device.insert(r, device);
            self.register_event_port(r, hv);
        }
        relids
    }

    fn register_event_port(&mut self, relid: u32, hv: &Hypercalls) {
        if let Some(c) = self.server.channel(relid) {
            hv.add_event_port(c.signal_connection_id());
            self.relid_conn.insert(relid, c.signal_connection_id());
        }
    }

    /// Rescinds a channel (fault injection or hot removal).
    pub fn rescind(&mut self, relid: u32) -> bool {
        self.held_opens.retain(|h| h.relid != relid);
        self.server.rescind(relid).is_ok()
    }

    /// Makes the host stop answering (or resume): the server ignores
    /// messages and no device runs.
    pub fn set_silent(&mut self, silent: bool) {
        self.silent = silent;
        self.server.faults_mut().silent = silent;
    }

    /// Writes `value` into a ring control word of `relid` (corrupt-index
    /// injection), stops servicing the channel (so the host itself does not
    /// repair the word) and sets the guest's event flag. Returns whether the
    /// channel existed.
    pub fn corrupt_ring_index(
        &mut self,
        relid: u32,
        fault: crate::fault::IndexFault,
        mem: &GuestMemory,
        synic: &mut Synic,
    ) -> bool {
        use crate::fault::IndexFault;
        use vmbus_core::packet::ring_control::{READ_INDEX, WRITE_INDEX};
        let Some(ch) = self.channels.get_mut(&relid) else { return false };
        let (gpa, value) = match fault {
            IndexFault::InboundWriteIndexOutOfRange => {
                (ch.inbound_gpa + WRITE_INDEX as u64, ch.inbound_data_size.wrapping_add(0x1000))
            }
            IndexFault::InboundWriteIndexMisaligned => (ch.inbound_gpa + WRITE_INDEX as u64, 0x0C),
            IndexFault::OutboundReadIndexOutOfRange => (ch.outbound_gpa + READ_INDEX as u64, 0x7FFF_FFF8),
        };
        if mem.write_u32(gpa, value).is_err() {
            return false;
        }
        ch.broken = Some(Broken::FaultInjected);
        if synic.set_event(relid).is_ok() {
            self.stats.guest_signals += 1;
        }
        true
    }

    /// Answers the next open request with a failure status.
    pub fn refuse_next_open(&mut self) {
        self.refuse_next_open = true;
    }

    /// Holds open requests instead of answering them (until released).
    pub fn set_hold_opens(&mut self, hold: bool) {
        self.hold_opens = hold;
    }

    /// Relids whose open is being held.
    pub fn held_open_relids(&self) -> Vec<u32> {
        self.held_opens.iter().map(|h| h.relid).collect()
    }

    /// Whether the host services `relid`'s rings (mapped and not broken).
    pub fn is_serviced(&self, relid: u32) -> bool {
        self.channels.get(&relid).is_some_and(|c| c.broken.is_none())
    }

    /// Relids with mapped rings.
    pub fn open_relids(&self) -> Vec<u32> {
        self.channels.keys().copied().collect()
    }

    /// Where a channel's rings are.
    pub fn ring_location(&self, relid: u32) -> Option<RingLocation> {
        self.channels.get(&relid).map(|c| RingLocation {
            outbound_gpa: c.outbound_gpa,
            inbound_gpa: c.inbound_gpa,
            inbound_data_size: c.inbound_data_size,
        })
    }

    /// The device model serving `relid`.
    pub fn device(&self, relid: u32) -> Option<&dyn DeviceModel> {
        let &i = self.relid_device.get(&relid)?;
        self.devices.get(i).map(|d| &*d.model)
    }

    /// Whether the host has work: a posted message, events, outgoing
    /// messages, or a signalled channel.
    pub fn ready(&self, hv: &Hypercalls) -> bool {
        if self.silent {
            return hv.pending_messages() > 0;
        }
        hv.pending_messages() > 0
            || self.server.event_len() > 0
            || self.server.outgoing_len() > 0
            || !self.outbox.is_empty()
            || hv.signals_pending()
            || !self.runnable.is_empty()
    }

    /// One host step: at most one guest message, then events, outgoing
    /// messages and signalled channels. Returns whether anything happened.
    pub fn step(&mut self, mem: &GuestMemory, hv: &Hypercalls, synic: &mut Synic) -> bool {
        if !self.arena.is_of(mem) {
            // Ring halves point into the memory this bus was built with.
            return false;
        }
        let mut worked = false;
        if let Some(m) = hv.take_message() {
            worked = true;
            self.record(Direction::ToHost, m.bytes());
            self.stats.messages_in += 1;
            let crossed_before = self.server.counters().total_crossed_rescind();
            if self.server.handle_guest_message(m.connection_id, m.bytes()).is_err() {
                self.stats.messages_rejected += 1;
            }
            self.stats.messages_crossed_rescind += self.server.counters().total_crossed_rescind() - crossed_before;
        }
        if self.silent {
            hv.take_signals();
            return worked;
        }
        worked |= self.process_events(mem, hv);
        worked |= self.flush_outbox(synic);
        for conn in hv.take_signals() {
            if let Some(relid) = self.server.channel_by_signal_connection(conn) {
                if !self.runnable.contains(&relid) {
                    self.runnable.push(relid);
                }
            }
        }
        let runnable = core::mem::take(&mut self.runnable);
        for relid in runnable {
            worked = true;
            if self.run_channel(relid, synic) {
                // Budget spent or waiting: keep it runnable for the next step.
                if !self.runnable.contains(&relid) {
                    self.runnable.push(relid);
                }
            }
        }
        worked
    }

    fn process_events(&mut self, mem: &GuestMemory, hv: &Hypercalls) -> bool {
        let mut worked = false;
        while let Some(e) = self.server.pop_event() {
            worked = true;
            if self.event_log.len() < EVENT_LOG_LIMIT {
                self.event_log.push(e);
            }
            match e {
                ServerEvent::Connected(info) => hv.add_message_port(info.msg_conn_id),
                ServerEvent::OpenRequest { relid, gpadl, downstream_offset, .. } => {
                    let held = HeldOpen { relid, gpadl, downstream_offset };
                    if self.hold_opens {
                        self.held_opens.push(held);
                    } else {
                        self.answer_open(held, mem);
                    }
                }
                ServerEvent::Closed { relid } => {
                    self.held_opens.retain(|h| h.relid != relid);
                    if self.channels.remove(&relid).is_some() {
                        if let Some(d) = self.relid_device.get(&relid).and_then(|&i| self.devices.get_mut(i)) {
                            d.model.on_open_state(false);
                        }
                    }
                }
                ServerEvent::RelidReleased { relid } | ServerEvent::OfferRemoved { relid } => {
                    // The port goes with the relid; the server may reuse it.
                    if let Some(conn) = self.relid_conn.remove(&relid) {
                        hv.remove_event_port(conn);
                    }
                    self.relid_device.remove(&relid);
                    self.channels.remove(&relid);
                }
                ServerEvent::Unloaded => {
                    self.channels.clear();
                    self.held_opens.clear();
                }
                _ => {}
            }
        }
        worked
    }

    /// Releases the held opens, answering each.
    pub fn release_held_opens(&mut self, mem: &GuestMemory) {
        self.hold_opens = false;
        if !self.arena.is_of(mem) {
            return;
        }
        for held in core::mem::take(&mut self.held_opens) {
            self.answer_open(held, mem);
        }
    }

    fn answer_open(&mut self, open: HeldOpen, mem: &GuestMemory) {
        let mapped = if core::mem::take(&mut self.refuse_next_open) {
            Err(RingMapError::Refused)
        } else {
            self.map_rings(open, mem)
        };
        let status = match mapped {
            Ok(ch) => {
                if let Some(d) = self.devices.get_mut(ch.device) {
                    d.model.on_open_state(true);
                }
                self.channels.insert(open.relid, ch);
                self.stats.opens_accepted += 1;
                0
            }
            Err(_) => {
                self.stats.opens_refused += 1;
                STATUS_UNSUCCESSFUL
            }
        };
        if self.server.complete_open(open.relid, status).is_err() && status == 0 {
            // The open was cancelled meanwhile (rescind): drop the rings again.
            self.channels.remove(&open.relid);
        }
    }

    fn map_rings(&self, open: HeldOpen, mem: &GuestMemory) -> Result<HostChannel, RingMapError> {
        let device = *self.relid_device.get(&open.relid).ok_or(RingMapError::Setup)?;
        let gpadl = self.server.gpadl(open.gpadl).ok_or(RingMapError::UnknownGpadl(open.gpadl))?;
        let pfns: Vec<u64> = gpadl.pfns().collect();
        let map = mem.map_contiguous(&pfns).map_err(RingMapError::Memory)?;
        let pages = pfns.len();
        let offset = open.downstream_offset as usize;
        // Each ring needs a control page and at least one data page.
        if offset < 2 || pages < offset + 2 {
            return Err(RingMapError::BadOffset { offset: open.downstream_offset, pages });
        }
        let in_data = (pages - offset - 1) * HV_PAGE_SIZE;
        // The bus holds an ArenaRef of `mem` (checked in `step`) and builds
        // one reader (outbound ring) and one writer (inbound ring) per open.
        let outbound = mem.ring_memory(map.first_pfn, offset).map_err(RingMapError::Memory)?;
        let inbound = mem.ring_memory(map.first_pfn + offset as u64, pages - offset).map_err(RingMapError::Memory)?;
        let base_gpa = map.first_pfn * HV_PAGE_SIZE as u64;
        Ok(HostChannel {
            relid: open.relid,
            device,
            reader: RingReader::new(outbound),
            writer: RingWriter::new(inbound),
            backlog: VecDeque::new(),
            buf: vec![0; HOST_PACKET_BUFFER],
            broken: None,
            outbound_gpa: base_gpa,
            inbound_gpa: base_gpa + (offset * HV_PAGE_SIZE) as u64,
            inbound_data_size: in_data as u32,
        })
    }

    fn flush_outbox(&mut self, synic: &mut Synic) -> bool {
        let mut worked = false;
        while let Some(m) = self.server.pop_outgoing() {
            self.outbox.push_back(m);
        }
        while let Some(&m) = self.outbox.front() {
            if synic.post(m.as_bytes()).is_err() {
                break;
            }
            self.record(Direction::ToGuest, m.as_bytes());
            self.outbox.pop_front();
            self.stats.messages_out += 1;
            worked = true;
        }
        worked
    }

    /// Queues raw bytes for the guest's SynIC (malformed-message injection).
    pub fn inject_message(&mut self, synic: &mut Synic, bytes: &[u8]) -> bool {
        synic.post(bytes).is_ok()
    }

    /// Writes one packet into `relid`'s host-to-guest ring with an arbitrary
    /// descriptor (malformed-packet injection) and signals the guest.
    pub fn inject_raw_packet(&mut self, relid: u32, bytes: &[u8], synic: &mut Synic) -> Result<(), InjectError> {
        let ch = self.channels.get_mut(&relid).ok_or(InjectError::NoChannel(relid))?;
        ch.writer.write_raw(&[bytes]).map_err(InjectError::Write)?;
        let _ = ch.writer.commit();
        // Always signal: the guest must look at the bad packet now.
        if synic.set_event(relid).is_ok() {
            self.stats.guest_signals += 1;
        }
        Ok(())
    }

    /// Sets the guest's event flag for `relid` without writing anything.
    pub fn kick_guest(&mut self, relid: u32, synic: &mut Synic) {
        if synic.set_event(relid).is_ok() {
            self.stats.guest_signals += 1;
        }
    }

    /// Makes `relid` runnable as if the guest had signalled it.
    pub fn make_runnable(&mut self, relid: u32) {
        if !self.runnable.contains(&relid) {
            self.runnable.push(relid);
        }
    }

    /// Services one channel: writes backlog, reads up to [`DEVICE_BUDGET`]
    /// packets, writes replies. Returns whether it should run again.
    ///
    /// The host reads like a real consumer: it sets the guest-to-host
    /// ring's interrupt mask before draining, so the guest's writer does not
    /// signal while the host is busy; commits its read position once per
    /// batch (the commit reports whether the guest asked for space with
    /// pending_send_sz, which becomes an event interrupt); and clears the
    /// mask only when a pass finds the ring empty or the guest's inbound
    /// ring is full. A pass that read packets (or spent the budget) keeps
    /// the mask set and the channel runnable: the host polls once more on
    /// the next step, as a busy host does, and the guest's writes meanwhile
    /// need no signal. Clearing the mask re-checks the write index: a packet
    /// that arrived while the mask was set (its writer skipped the signal)
    /// is drained at once, so no wake-up is lost.
    fn run_channel(&mut self, relid: u32, synic: &mut Synic) -> bool {
        let Some(ch) = self.channels.get_mut(&relid) else {
            return false;
        };
        if ch.broken.is_some() {
            return false;
        }
        let Some(dev) = self.devices.get_mut(ch.device) else {
            return false;
        };
        let mut again = false;
        let mut signal_guest = false;
        let mut replies = Vec::new();
        // Only read more when earlier replies have all been written: the
        // host applies back-pressure through the guest's outbound ring.
        if Self::drain_backlog(ch, &mut self.stats, &mut signal_guest) {
            ch.reader.begin_read();
            let mut budget = DEVICE_BUDGET;
            loop {
                let mut stop = Stop::Empty;
                let budget_at_start = budget;
                while ch.broken.is_none() {
                    if budget == 0 {
                        stop = Stop::Budget;
                        break;
                    }
                    let buf = &mut ch.buf;
                    match ch.reader.read(buf) {
                        Ok(Some(pkt)) => {
                            budget -= 1;
                            self.stats.packets_in += 1;
                            self.stats.bytes_in += pkt.payload.len() as u64;
                            let gp = GuestPacket {
                                packet_type: pkt.packet_type.0,
                                flags: pkt.flags,
                                transaction_id: pkt.trans_id,
                                payload: pkt.payload,
                            };
                            dev.model.on_packet(gp, &mut replies);
                            ch.backlog.extend(replies.drain(..));
                            if !Self::drain_backlog(ch, &mut self.stats, &mut signal_guest) {
                                stop = Stop::Backpressure;
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(ReadError::Corrupt(c)) => {
                            ch.broken = Some(Broken::Ring(c));
                            self.stats.ring_corruptions += 1;
                        }
                        Err(_) => {
                            budget = budget.saturating_sub(1);
                            self.stats.bad_guest_packets += 1;
                        }
                    }
                }
                if ch.broken.is_some() {
                    break;
                }
                // One commit per batch.
                self.stats.read_batches += 1;
                match ch.reader.commit() {
                    // The guest asked for space and now has it.
                    Ok(true) => signal_guest = true,
                    Ok(false) => {}
                    Err(c) => {
                        ch.broken = Some(Broken::Ring(c));
                        self.stats.ring_corruptions += 1;
                        break;
                    }
                }
                let busy = stop == Stop::Budget || (stop == Stop::Empty && budget < budget_at_start);
                if busy {
                    // Keep the mask and poll again on the next step.
                    again = true;
                    break;
                }
                match stop {
                    Stop::Budget => break,
                    Stop::Empty | Stop::Backpressure => match ch.reader.end_read() {
                        // Data arrived while masked; drain it unless the
                        // guest must first make room for our replies (its
                        // space signal brings us back).
                        Ok(true) if stop == Stop::Empty => {
                            self.stats.mask_rechecks += 1;
                            ch.reader.begin_read();
                        }
                        Ok(_) => break,
                        Err(c) => {
                            ch.broken = Some(Broken::Ring(c));
                            self.stats.ring_corruptions += 1;
                            break;
                        }
                    },
                }
            }
        }
        if ch.broken.is_none() {
            match ch.writer.commit() {
                Ok(true) => signal_guest = true,
                Ok(false) => {}
                Err(c) => {
                    ch.broken = Some(Broken::Ring(c));
                    self.stats.ring_corruptions += 1;
                }
            }
        }
        if signal_guest && synic.set_event(ch.relid).is_ok() {
            self.stats.guest_signals += 1;
        }
        // Poll again while busy (the mask is still set); a backlog waits for
        // the guest's signal after it frees space.
        again && ch.backlog.is_empty() && ch.broken.is_none()
    }

    /// Writes queued replies; returns true when the backlog is empty.
    fn drain_backlog(ch: &mut HostChannel, stats: &mut BusStats, signal: &mut bool) -> bool {
        while let Some(p) = ch.backlog.front() {
            let header = inband_header(PacketType(p.packet_type), p.flags, p.transaction_id, p.payload.len());
            let res = match header {
                Ok(h) => ch.writer.write(&[h.as_slice(), &p.payload]),
                Err(_) => Err(WriteError::TooLarge { len: p.payload.len() }),
            };
            match res {
                Ok(()) => {
                    stats.packets_out += 1;
                    stats.bytes_out += p.payload.len() as u64;
                    ch.backlog.pop_front();
                }
                Err(WriteError::Full { needed, .. }) => {
                    stats.ring_full_waits += 1;
                    // Publish what fits so far, then ask the guest to signal on space.
                    if let Ok(true) = ch.writer.commit() {
                        *signal = true;
                    }
                    match ch.writer.request_space(needed) {
                        Ok(true) => continue,
                        Ok(false) => return false,
                        Err(c) => {
                            ch.broken = Some(Broken::Ring(c));
                            stats.ring_corruptions += 1;
                            return false;
                        }
                    }
                }
                Err(WriteError::Corrupt(c)) => {
                    ch.broken = Some(Broken::Ring(c));
                    stats.ring_corruptions += 1;
                    return false;
                }
                Err(_) => {
                    // A reply that can never fit: drop it.
                    ch.backlog.pop_front();
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::echo::EchoDevice;
    use vmbus_core::gpadl::{GpaRangeRef, GpadlMessages};
    use vmbus_core::hv::HvMessage;
    use vmbus_core::message::{ChannelMessage, InitiateContact, MessageHeader, MessageType, OpenChannel};
    use vmbus_core::platform::{Hypervisor, SharedMemory};
    use vmbus_core::version::Version;

    struct Rig {
        mem: GuestMemory,
        hv: Hypercalls,
        synic: Synic,
        bus: Bus,
        relid: u32,
    }

    fn post(rig: &mut Rig, conn: u32, msg: &ChannelMessage<'_>) {
        let out = OutgoingMessage::new(msg).unwrap();
        assert!(rig.hv.post_message(conn, out.as_bytes()).is_success());
        while rig.bus.step(&rig.mem, &rig.hv, &mut rig.synic) {}
    }

    /// Host messages delivered to the guest so far (the test plays a guest that EOMs).
    fn drain(rig: &mut Rig) -> Vec<(MessageType, [u8; 256])> {
        let mut out = Vec::new();
        while let Some((raw, pending)) = rig.synic.take_slot() {
            let (_, payload) = HvMessage::parse(&raw).unwrap();
            out.push((ChannelMessage::parse(payload).unwrap().message_type(), raw));
            if pending {
                rig.synic.eom();
            }
        }
        out
    }

    fn connected_rig() -> Rig {
        let mem = GuestMemory::new(64, 0x100).unwrap();
        let hv = Hypercalls::new(16);
        let synic = Synic::new(64);
        let mut bus = Bus::new(ServerConfig::default(), &hv, &mem).unwrap();
        let relid = bus.add_device(alloc::boxed::Box::new(EchoDevice::new()), Guid::ZERO, &hv).unwrap();
        let mut rig = Rig { mem, hv, synic, bus, relid };
        let contact = InitiateContact::new(Version::WIN10_V5_3, 0, 2, 0, (0, 0));
        post(&mut rig, 4, &ChannelMessage::InitiateContact(contact));
        let conn = rig.bus.server().connection().unwrap().msg_conn_id;
        post(&mut rig, conn, &ChannelMessage::RequestOffers);
        let got: Vec<MessageType> = drain(&mut rig).iter().map(|m| m.0).collect();
        assert_eq!(got, [MessageType::VERSION_RESPONSE, MessageType::OFFER_CHANNEL, MessageType::ALL_OFFERS_DELIVERED]);
        rig
    }

    fn open_with_pfns(rig: &mut Rig, pfns: &[u64], offset: u32) -> u32 {
        let conn = rig.bus.server().connection().unwrap().msg_conn_id;
        let handle = 0x1234;
        for m in GpadlMessages::new(rig.relid, handle, GpaRangeRef::whole_pages(pfns)).unwrap() {
            assert!(rig.hv.post_message(conn, m.as_bytes()).is_success());
        }
        while rig.bus.step(&rig.mem, &rig.hv, &mut rig.synic) {}
        let open = OpenChannel {
            header: MessageHeader::new(MessageType::OPEN_CHANNEL),
            child_relid: rig.relid,
            openid: rig.relid,
            ringbuffer_gpadl_handle: handle,
            target_vp: 0,
            downstream_ringbuffer_pageoffset: offset,
            user_data: [0; 120],
        };
        post(rig, conn, &ChannelMessage::OpenChannel(open));
        let msgs = drain(rig);
        let (_, raw) = msgs.iter().find(|m| m.0 == MessageType::OPEN_CHANNEL_RESULT).expect("an OpenResult");
        let (_, payload) = HvMessage::parse(raw).unwrap();
        match ChannelMessage::parse(payload).unwrap() {
            ChannelMessage::OpenResult(r) => r.status,
            _ => unreachable!(),
        }
    }

    #[test]
    fn contiguous_ring_gpadl_opens() {
        let mut rig = connected_rig();
        let region = rig.mem.alloc_shared(8).unwrap();
        let pfns: Vec<u64> = (0..8).map(|i| rig.mem.frame(&region, i).unwrap()).collect();
        assert_eq!(open_with_pfns(&mut rig, &pfns, 4), 0);
        assert_eq!(rig.bus.open_relids(), [rig.relid]);
        let loc = rig.bus.ring_location(rig.relid).unwrap();
        assert_eq!(loc.outbound_gpa, pfns[0] * 4096);
        assert_eq!(loc.inbound_gpa, pfns[4] * 4096);
        assert_eq!(loc.inbound_data_size, 3 * 4096);
        assert_eq!(rig.bus.stats().opens_accepted, 1);
    }

    #[test]
    fn scattered_or_foreign_ring_gpadl_is_refused() {
        let mut rig = connected_rig();
        // Every frame is guest memory, but the run is not contiguous.
        let pfns = [0x100, 0x101, 0x102, 0x103, 0x110, 0x111, 0x112, 0x113];
        assert_eq!(open_with_pfns(&mut rig, &pfns, 4), STATUS_UNSUCCESSFUL);
        assert!(rig.bus.open_relids().is_empty());
        assert_eq!(rig.bus.stats().opens_refused, 1);
    }

    #[test]
    fn ring_gpadl_outside_guest_memory_is_refused() {
        let mut rig = connected_rig();
        let pfns: Vec<u64> = (0x9000..0x9008).collect();
        assert_eq!(open_with_pfns(&mut rig, &pfns, 4), STATUS_UNSUCCESSFUL);
        assert_eq!(rig.bus.stats().opens_refused, 1);
    }

    #[test]
    fn signal_on_unknown_port_and_old_host_ports() {
        let mem = GuestMemory::new(8, 0x100).unwrap();
        let hv = Hypercalls::new(4);
        let config = ServerConfig { versions: alloc::vec![Version::WIN8], ..ServerConfig::default() };
        let _bus = Bus::new(config, &hv, &mem).unwrap();
        // A host without 5.0 has no port 4: the guest's 5.x contact fails at the hypercall.
        assert_eq!(hv.post_message(4, &[14, 0, 0, 0, 0, 0, 0, 0]), vmbus_core::hv::HvStatus::INVALID_CONNECTION_ID);
        assert!(hv.post_message(1, &[14, 0, 0, 0, 0, 0, 0, 0]).is_success());
        assert_eq!(hv.signal_event(0x1001), vmbus_core::hv::HvStatus::INVALID_CONNECTION_ID);
    }
}
