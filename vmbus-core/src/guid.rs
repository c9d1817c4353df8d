// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! GUIDs in the Windows mixed-endian wire layout, and the well-known VMBus
//! interface (device class) GUIDs.

use core::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// A GUID as it travels on the wire: the first three groups little-endian,
/// the last eight bytes in text order.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct Guid {
    /// Wire bytes.
    pub bytes: [u8; 16],
}

static_assertions::const_assert_eq!(core::mem::size_of::<Guid>(), 16);

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Guid = Guid { bytes: [0; 16] };

    /// Builds a GUID from its canonical text groups
    /// (`data1-data2-data3-data4[0..2]-data4[2..8]`).
    pub const fn from_fields(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
        let a = d1.to_le_bytes();
        let b = d2.to_le_bytes();
        let c = d3.to_le_bytes();
        Guid {
            bytes: [
                a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5], d4[6], d4[7],
            ],
        }
    }

    /// Parses the canonical 36-character text form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
    pub const fn parse(text: &str) -> Option<Guid> {
        let s = text.as_bytes();
        if s.len() != 36 || s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
            return None;
        }
        // Text position of each of the 16 bytes in canonical order.
        const POS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut canon = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let hi = match hex_val(s[POS[i]]) {
                Some(v) => v,
                None => return None,
            };
            let lo = match hex_val(s[POS[i] + 1]) {
                Some(v) => v,
                None => return None,
            };
            canon[i] = (hi << 4) | lo;
            i += 1;
        }
        Some(Guid::from_fields(
            u32::from_be_bytes([canon[0], canon[1], canon[2], canon[3]]),
            u16::from_be_bytes([canon[4], canon[5]]),
            u16::from_be_bytes([canon[6], canon[7]]),
            [canon[8], canon[9], canon[10], canon[11], canon[12], canon[13], canon[14], canon[15]],
        ))
    }

    /// `parse` for `const` items: a malformed literal fails the build. Never
    /// call it on text read at run time (that is what [`Guid::parse`] is for);
    /// no host input reaches it.
    pub const fn must(text: &str) -> Guid {
        match Guid::parse(text) {
            Some(g) => g,
            // Evaluated at compile time for every caller in the project.
            None => panic!("malformed GUID literal"),
        }
    }
}

const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bytes;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A device class that VMBus offers, identified by its interface-type GUID.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DeviceClass {
    /// Short name used in logs and sysfs.
    pub name: &'static str,
    /// Interface-type GUID carried in the offer.
    pub guid: Guid,
    /// Whether the class is a "performance" channel that is spread over CPUs.
    pub perf: bool,
    /// Whether Linux accepts the class in an isolation (confidential) VM.
    pub allowed_in_isolation: bool,
}

macro_rules! classes {
    ($( $konst:ident, $name:literal, $text:literal, $perf:literal, $iso:literal; )*) => {
        /// Well-known interface-type GUIDs.
        pub mod interface {
            use super::Guid;
            $(
                #[doc = concat!("`", $text, "` (", $name, ")")]
                pub const $konst: Guid = Guid::must($text);
            )*
        }
        /// Every device class in the reference table.
        pub const DEVICE_CLASSES: &[DeviceClass] = &[
            $( DeviceClass { name: $name, guid: interface::$konst, perf: $perf, allowed_in_isolation: $iso }, )*
        ];
    };
}

classes! {
    NETWORK, "network", "f8615163-df3e-46c5-913f-f2d2f965ed0e", true, true;
    SCSI, "scsi", "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f", true, true;
    IDE, "ide", "32412632-86cb-44a2-9b5c-50d1417354f5", true, false;
    FIBRE_CHANNEL, "fc", "2f9bcc4a-0069-4af3-b76b-6fd0be528cda", true, false;
    NETWORK_DIRECT, "nd", "8c2eaf3d-32a7-4b09-ab99-bd1f1c86b501", true, false;
    PCIE, "pcie", "44c4f61d-4444-4400-9d52-802e27ede19f", false, true;
    SYNTHETIC_VIDEO, "video", "da0a7802-e377-4aac-8e77-0558eb1073f8", false, false;
    KEYBOARD, "keyboard", "f912ad6d-2b17-48ea-bd65-f927a61c7684", false, false;
    MOUSE, "mouse", "cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a", false, false;
    KVP, "kvp", "a9a0f4e7-5a45-4d96-b827-8a841e8c03e6", false, false;
    TIME_SYNC, "timesync", "9527e630-d0ae-497b-adce-e80ab0175caf", false, true;
    HEARTBEAT, "heartbeat", "57164f39-9115-4e78-ab55-382f3bd5422d", false, true;
    SHUTDOWN, "shutdown", "0e0b6031-5213-4934-818b-38d90ced39db", false, true;
    FCOPY, "fcopy", "34d14be3-dee4-41c8-9ae7-6b174977c192", false, false;
    VSS, "vss", "35fa2e29-ea23-4236-96ae-3a6ebacba440", false, false;
    DYNAMIC_MEMORY, "balloon", "525074dc-8985-46e2-8057-a307dc18a502", false, false;
    AVMA1, "avma1", "f8e65716-3cb3-4a06-9a60-1889c5cccab5", false, false;
    AVMA2, "avma2", "3375baf4-9e15-4b30-b765-67acb10d607b", false, false;
    RDV, "rdv", "276aacf4-ac15-426c-98dd-7521ad3f01fe", false, false;
    IMC, "imc", "c376c1c3-d276-48d2-90a9-c04748072c60", false, false;
}

/// Looks up the device class of an interface-type GUID.
pub fn device_class(guid: &Guid) -> Option<&'static DeviceClass> {
    DEVICE_CLASSES.iter().find(|c| c.guid == *guid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn scsi_wire_bytes_match_reference() {
        // Reference: "d9 63 61 ba a1 04 29 4d b6 05 72 e2 ff b1 dc 7f".
        assert_eq!(
            interface::SCSI.bytes,
            [0xd9, 0x63, 0x61, 0xba, 0xa1, 0x04, 0x29, 0x4d, 0xb6, 0x05, 0x72, 0xe2, 0xff, 0xb1, 0xdc, 0x7f]
        );
    }

    #[test]
    fn text_round_trip() {
        for c in DEVICE_CLASSES {
            let text = c.guid.to_string();
            assert_eq!(Guid::parse(&text), Some(c.guid));
        }
        assert_eq!(Guid::parse("not-a-guid"), None);
        assert_eq!(Guid::parse("f8615163-df3e-46c5-913f-f2d2f965ed0g"), None);
    }

    #[test]
    fn lookup() {
        assert_eq!(device_class(&interface::NETWORK).map(|c| c.name), Some("network"));
        assert!(device_class(&Guid::ZERO).is_none());
    }
}
