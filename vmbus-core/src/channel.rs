// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! A guest channel endpoint: the outbound ring's writer plus signalling
//! ([`ChannelSender`]) and the inbound ring's reader plus a private packet
//! buffer ([`ChannelReceiver`]). Nothing here allocates on the data path;
//! the receive buffer is provided (or allocated) once at construction.

use core::borrow::BorrowMut;
use core::fmt;

use crate::packet::{inband_header, write_gpa_direct_header, IncomingPacket, PacketError, PacketType, PageRange};
use crate::platform::Hypervisor;
use crate::ring::{Corruption, ReadError, RingCounters, RingReader, RingWriter, WriteError};

/// Errors of the channel endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The ring is corrupt (sticky).
    Corrupt(Corruption),
    /// The packet could not be framed.
    Packet(PacketError),
    /// Writing failed (full, too large, bad descriptor).
    Write(WriteError),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Corrupt(c) => write!(f, "channel ring corrupt: {c}"),
            ChannelError::Packet(e) => write!(f, "channel packet: {e}"),
            ChannelError::Write(e) => write!(f, "channel write: {e}"),
        }
    }
}

/// Signal counters of an endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalCounters {
    /// `signal_event` calls made.
    pub signals: u64,
    /// `signal_event` calls that returned a failure status.
    pub signal_failures: u64,
}

/// The sending side of a guest channel: owns the outbound ring's writer
/// (`W` is a [`RingWriter`] or anything that lends one, e.g. `&mut RingWriter`).
#[derive(Debug)]
pub struct ChannelSender<W = RingWriter> {
    writer: W,
    connection_id: u32,
    counters: SignalCounters,
}

impl<W: BorrowMut<RingWriter>> ChannelSender<W> {
    /// Wraps the outbound ring's writer; `connection_id` is the offer's
    /// connection id used for `signal_event`.
    pub fn new(writer: W, connection_id: u32) -> Self {
        ChannelSender { writer, connection_id, counters: SignalCounters::default() }
    }

    /// Queues one packet made of `segments` (starting with its descriptor).
    /// Visible to the host only after [`flush`](Self::flush).
    pub fn send(&mut self, segments: &[&[u8]]) -> Result<(), WriteError> {
        self.writer.borrow_mut().write(segments)
    }

    /// Queues an in-band packet (or completion) with `payload`.
    pub fn send_inband(
        &mut self,
        packet_type: PacketType,
        flags: u16,
        trans_id: u64,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        let header = inband_header(packet_type, flags, trans_id, payload.len()).map_err(ChannelError::Packet)?;
        self.writer.borrow_mut().write(&[&header, payload]).map_err(ChannelError::Write)
    }

    /// Queues a GPA-direct packet (type 9) describing `ranges`, followed by
    /// the in-band `payload`. The header is built in `scratch` (size it with
    /// [`crate::packet::gpa_direct_header_len`]), so nothing is allocated.
    pub fn send_gpa_direct(
        &mut self,
        flags: u16,
        trans_id: u64,
        ranges: &[PageRange<'_>],
        payload: &[u8],
        scratch: &mut [u8],
    ) -> Result<(), ChannelError> {
        let n =
            write_gpa_direct_header(scratch, flags, trans_id, ranges, payload.len()).map_err(ChannelError::Packet)?;
        let header = scratch.get(..n).ok_or(ChannelError::Packet(PacketError::BufferTooSmall { needed: n }))?;
        self.writer.borrow_mut().write(&[header, payload]).map_err(ChannelError::Write)
    }

    /// Commits the queued packets and signals the host if the commit says
    /// so. Returns whether a signal was sent.
    pub fn flush<H: Hypervisor + ?Sized>(&mut self, hv: &H) -> Result<bool, ChannelError> {
        let signal = self.writer.borrow_mut().commit().map_err(ChannelError::Corrupt)?;
        if signal {
            self.counters.signals += 1;
            if !hv.signal_event(self.connection_id).is_success() {
                self.counters.signal_failures += 1;
            }
        }
        Ok(signal)
    }

    /// Signal counters.
    pub fn signal_counters(&self) -> SignalCounters {
        self.counters
    }

    /// Ring counters.
    pub fn ring_counters(&self) -> RingCounters {
        self.writer.borrow().counters()
    }

    /// The ring writer, e.g. for `request_space` when full.
    pub fn writer_mut(&mut self) -> &mut RingWriter {
        self.writer.borrow_mut()
    }

    /// Gives the writer back.
    pub fn into_writer(self) -> W {
        self.writer
    }
}

/// Result of one [`ChannelReceiver::poll`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Packets handed to the callback.
    pub delivered: usize,
    /// Packets skipped (malformed or larger than the buffer).
    pub skipped: usize,
    /// The budget ran out with data possibly left: the interrupt mask is
    /// still set and the caller must poll again (no interrupt will come).
    pub more: bool,
}

/// The receiving side of a guest channel: owns the inbound ring's reader
/// (`R` is a [`RingReader`] or e.g. `&mut RingReader`) and a private packet
/// buffer `B` (its size is the largest packet accepted).
#[derive(Debug)]
pub struct ChannelReceiver<B, R = RingReader> {
    reader: R,
    buffer: B,
    connection_id: u32,
    counters: SignalCounters,
    masked: bool,
}

impl<B: AsMut<[u8]>, R: BorrowMut<RingReader>> ChannelReceiver<B, R> {
    /// Wraps the inbound ring's reader; `buffer` (e.g. a `Vec<u8>` or a
    /// `&mut [u8]`) receives each packet's private copy.
    pub fn new(reader: R, buffer: B, connection_id: u32) -> Self {
        ChannelReceiver { reader, buffer, connection_id, counters: SignalCounters::default(), masked: false }
    }

    /// Reads up to `budget` packets, handing each to `on_packet`, with the
    /// interrupt mask set while draining; commits once per batch and signals
    /// the host if the read-side commit says so. Malformed or oversized
    /// packets are skipped and counted (they use up budget). When the ring
    /// is drained the mask is cleared and re-checked (looping if data came
    /// in meanwhile); when the budget runs out first the mask stays set and
    /// `more` is true.
    pub fn poll<H, F>(&mut self, hv: &H, budget: usize, mut on_packet: F) -> Result<PollOutcome, ChannelError>
    where
        H: Hypervisor + ?Sized,
        F: FnMut(&IncomingPacket<'_>),
    {
        let mut out = PollOutcome::default();
        if !self.masked {
            self.reader.borrow_mut().begin_read();
            self.masked = true;
        }
        loop {
            let mut drained = false;
            while out.delivered + out.skipped < budget {
                match self.reader.borrow_mut().read(self.buffer.as_mut()) {
                    Ok(Some(p)) => {
                        on_packet(&p);
                        out.delivered += 1;
                    }
                    Ok(None) => {
                        drained = true;
                        break;
                    }
                    Err(ReadError::Corrupt(c)) => return Err(ChannelError::Corrupt(c)),
                    Err(ReadError::TooLarge { .. } | ReadError::Malformed(_)) => out.skipped += 1,
                }
            }
            if self.reader.borrow_mut().commit().map_err(ChannelError::Corrupt)? {
                self.counters.signals += 1;
                if !hv.signal_event(self.connection_id).is_success() {
                    self.counters.signal_failures += 1;
                }
            }
            if !drained {
                out.more = true;
                return Ok(out);
            }
            // Ring empty: unmask, and re-check for data that raced with us.
            self.masked = false;
            if !self.reader.borrow_mut().end_read().map_err(ChannelError::Corrupt)? {
                return Ok(out);
            }
            self.reader.borrow_mut().begin_read();
            self.masked = true;
        }
    }

    /// Signal counters (host signalled because space was freed).
    pub fn signal_counters(&self) -> SignalCounters {
        self.counters
    }

    /// Ring counters.
    pub fn ring_counters(&self) -> RingCounters {
        self.reader.borrow().counters()
    }

    /// The ring reader.
    pub fn reader_mut(&mut self) -> &mut RingReader {
        self.reader.borrow_mut()
    }

    /// Gives the reader and the buffer back.
    pub fn into_parts(self) -> (R, B) {
        (self.reader, self.buffer)
    }
}
