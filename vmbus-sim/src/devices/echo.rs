// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The echo device: a simulator-only device model that moves real packets
//! through real rings before the device crates exist.
//!
//! Its interface GUID, [`ECHO_INTERFACE`], is made up for the simulator and
//! is not a Hyper-V device class. For each in-band packet the guest sends,
//! the device writes back an in-band packet with the same payload and the
//! same transaction id; if the guest asked for a completion
//! (`COMPLETION_REQUESTED`), a completion packet carrying the transaction id
//! and the payload length (u32 LE) follows. Other packet types are counted
//! and ignored.

use super::{DeviceModel, GuestPacket, HostPacket};
use alloc::vec::Vec;
use vmbus_core::guid::Guid;

/// Interface GUID of the echo device (simulator-only, not a Hyper-V class).
pub const ECHO_INTERFACE: Guid = Guid::must("5ec1ec40-0000-4d5e-8e1f-6563686f0001");

/// Packet type: data in-band.
pub const PACKET_DATA_INBAND: u16 = 6;
/// Packet type: completion.
pub const PACKET_COMPLETION: u16 = 11;
/// Descriptor flag: the sender wants a completion.
pub const FLAG_COMPLETION_REQUESTED: u16 = 1;

/// Echo device counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EchoStats {
    /// In-band packets echoed.
    pub echoed: u64,
    /// Payload bytes echoed.
    pub bytes: u64,
    /// Completions sent.
    pub completions: u64,
    /// Packets of other types ignored.
    pub ignored: u64,
}

/// The echo device model.
#[derive(Debug, Default)]
pub struct EchoDevice {
    stats: EchoStats,
}

impl EchoDevice {
    /// A fresh echo device.
    pub fn new() -> EchoDevice {
        EchoDevice::default()
    }
    /// Counters.
    pub fn stats(&self) -> EchoStats {
        self.stats
    }
}

impl DeviceModel for EchoDevice {
    fn interface(&self) -> Guid {
        ECHO_INTERFACE
    }

    fn name(&self) -> &'static str {
        "echo"
    }

    fn on_packet(&mut self, packet: GuestPacket<'_>, out: &mut Vec<HostPacket>) {
        if packet.packet_type != PACKET_DATA_INBAND {
            self.stats.ignored += 1;
            return;
        }
        self.stats.echoed += 1;
        self.stats.bytes += packet.payload.len() as u64;
        out.push(HostPacket {
            packet_type: PACKET_DATA_INBAND,
            flags: 0,
            transaction_id: packet.transaction_id,
            payload: packet.payload.to_vec(),
        });
        if packet.flags & FLAG_COMPLETION_REQUESTED != 0 {
            self.stats.completions += 1;
            out.push(HostPacket {
                packet_type: PACKET_COMPLETION,
                flags: 0,
                transaction_id: packet.transaction_id,
                payload: (packet.payload.len() as u32).to_le_bytes().to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_and_completes() {
        let mut d = EchoDevice::new();
        let mut out = Vec::new();
        d.on_packet(GuestPacket { packet_type: 6, flags: 0, transaction_id: 7, payload: b"abc" }, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, b"abc");
        assert_eq!(out[0].transaction_id, 7);
        d.on_packet(GuestPacket { packet_type: 6, flags: 1, transaction_id: 9, payload: b"hello" }, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[2].packet_type, PACKET_COMPLETION);
        assert_eq!(out[2].transaction_id, 9);
        assert_eq!(out[2].payload, 5u32.to_le_bytes());
        d.on_packet(GuestPacket { packet_type: 9, flags: 1, transaction_id: 1, payload: b"x" }, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(d.stats(), EchoStats { echoed: 2, bytes: 8, completions: 1, ignored: 1 });
        assert_eq!(ECHO_INTERFACE.bytes[0], 0x40);
    }
}
