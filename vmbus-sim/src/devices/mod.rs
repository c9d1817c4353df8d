// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Host-side device models the simulator runs behind its channels.
//!
//! A device model sees each packet the guest put in its channel's
//! guest-to-host ring, already copied out and parsed by the bus, and
//! answers with packets for the host-to-guest ring. The bus owns the rings,
//! the signalling and the flow control; a model is pure protocol logic.
//! Device crates (netvsc, storvsc, util-services) will plug their host
//! models in through the same trait.

pub mod echo;

use alloc::vec::Vec;
use vmbus_core::guid::Guid;

/// One packet the guest sent, as the device model sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestPacket<'a> {
    /// Packet type (6 = in-band, 9 = GPA direct, 11 = completion, ...).
    pub packet_type: u16,
    /// Descriptor flags (bit 0 = completion requested).
    pub flags: u16,
    /// Transaction id.
    pub transaction_id: u64,
    /// The in-band payload (after the descriptor and any extended header).
    pub payload: &'a [u8],
}

/// A packet a device model wants written to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPacket {
    /// Packet type.
    pub packet_type: u16,
    /// Descriptor flags.
    pub flags: u16,
    /// Transaction id.
    pub transaction_id: u64,
    /// In-band payload.
    pub payload: Vec<u8>,
}

/// A host-side device behind one channel.
pub trait DeviceModel {
    /// Interface (device class) GUID offered for this device.
    fn interface(&self) -> Guid;
    /// Short name for reports.
    fn name(&self) -> &'static str;
    /// Handles one guest packet, appending replies to `out`.
    fn on_packet(&mut self, packet: GuestPacket<'_>, out: &mut Vec<HostPacket>);
    /// The channel was opened (`true`) or closed (`false`); models reset per-open state.
    fn on_open_state(&mut self, _open: bool) {}
}
