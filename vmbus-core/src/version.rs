// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! VMBus protocol versions (`major << 16 | minor`) and the rules that change with them.

use core::fmt;

/// A VMBus protocol version as carried in InitiateContact.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u32);

impl Version {
    /// Windows Server 2008 (0.13); never negotiated by a modern guest.
    pub const WS2008: Version = Version(0x0000_000D);
    /// Windows 7 / WS2008 R2 (1.1); not negotiated by a modern guest.
    pub const WIN7: Version = Version(0x0001_0001);
    /// Windows 8 / WS2012 (2.4): the oldest version we accept.
    pub const WIN8: Version = Version(0x0002_0004);
    /// WS2012 R2 (3.0): Unload supported.
    pub const WIN8_1: Version = Version(0x0003_0000);
    /// WS2016 (4.0).
    pub const WIN10: Version = Version(0x0004_0000);
    /// Win10 RS3 (4.1): ModifyChannel.
    pub const WIN10_V4_1: Version = Version(0x0004_0001);
    /// 5.0: InitiateContact carries `msg_sint`; contact on connection id 4.
    pub const WIN10_V5: Version = Version(0x0005_0000);
    /// 5.1 (RS4).
    pub const WIN10_V5_1: Version = Version(0x0005_0001);
    /// 5.2 (WS2019).
    pub const WIN10_V5_2: Version = Version(0x0005_0002);
    /// 5.3 (WS2022): ModifyChannelResponse.
    pub const WIN10_V5_3: Version = Version(0x0005_0003);

    /// The versions a guest proposes, newest first.
    pub const GUEST_PREFERENCE: [Version; 8] = [
        Version::WIN10_V5_3,
        Version::WIN10_V5_2,
        Version::WIN10_V5_1,
        Version::WIN10_V5,
        Version::WIN10_V4_1,
        Version::WIN10,
        Version::WIN8_1,
        Version::WIN8,
    ];

    /// Builds a version from its parts.
    pub const fn new(major: u16, minor: u16) -> Version {
        Version(((major as u32) << 16) | minor as u32)
    }
    /// Major part.
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }
    /// Minor part.
    pub const fn minor(self) -> u16 {
        self.0 as u16
    }
    /// 5.0 and later: `msg_sint` in InitiateContact, contact on connection id 4,
    /// later messages on the connection id the host returns.
    pub const fn uses_msg_sint(self) -> bool {
        self.0 >= Version::WIN10_V5.0
    }
    /// 3.0 and later: the guest may send Unload.
    pub const fn supports_unload(self) -> bool {
        self.0 >= Version::WIN8_1.0
    }
    /// 4.1 and later: ModifyChannel may be sent.
    pub const fn supports_modify_channel(self) -> bool {
        self.0 >= Version::WIN10_V4_1.0
    }
    /// 5.3 and later: the host answers ModifyChannel.
    pub const fn has_modify_channel_response(self) -> bool {
        self.0 >= Version::WIN10_V5_3.0
    }
    /// Whether a guest built from this crate will accept the version.
    pub fn is_supported_by_guest(self) -> bool {
        Version::GUEST_PREFERENCE.contains(&self)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preference_is_newest_first_and_ends_at_2_4() {
        let p = Version::GUEST_PREFERENCE;
        assert!(p.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(p[p.len() - 1], Version::new(2, 4));
        assert_eq!(p[0], Version::new(5, 3));
    }

    #[test]
    fn rules() {
        assert!(Version::WIN10_V5.uses_msg_sint());
        assert!(!Version::WIN10_V4_1.uses_msg_sint());
        assert!(!Version::WIN8.supports_unload());
        assert!(Version::WIN10_V5_3.has_modify_channel_response());
        assert!(!Version::WIN7.is_supported_by_guest());
    }
}
