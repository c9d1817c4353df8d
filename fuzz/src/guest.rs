// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Guest-to-host messages from fuzz input.

use arbitrary::Arbitrary;
use vmbus_core::hv::{MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_4, MESSAGE_PAYLOAD_SIZE};
use vmbus_core::message::{
    ChannelMessage, CloseChannel, GpaRange, GpadlBody, GpadlHeader, GpadlTeardown, InitiateContact, MessageHeader,
    MessageType, ModifyChannel, OpenChannel, OutgoingMessage, RelidReleased, TlConnectRequest, MAX_USER_DEFINED_BYTES,
};
use vmbus_core::version::Version;
use zerocopy::IntoBytes;

/// Versions to pick from (all known ones plus an unknown one).
const VERSIONS: [Version; 11] = [
    Version::WS2008,
    Version::WIN7,
    Version::WIN8,
    Version::WIN8_1,
    Version::WIN10,
    Version::WIN10_V4_1,
    Version::WIN10_V5,
    Version::WIN10_V5_1,
    Version::WIN10_V5_2,
    Version::WIN10_V5_3,
    Version(0x0006_0000),
];

/// A relid: mostly one the host has (index into its relids), sometimes raw.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum RelidSel {
    /// The n-th existing relid (modulo their number), or 1 if there is none.
    Existing(u8),
    /// A raw value.
    Raw(u32),
}

impl RelidSel {
    /// Resolves against the relids the host currently has.
    pub fn resolve(self, relids: &[u32]) -> u32 {
        match self {
            RelidSel::Existing(i) if !relids.is_empty() => relids[i as usize % relids.len()],
            RelidSel::Existing(_) => 1,
            RelidSel::Raw(r) => r,
        }
    }
}

/// The connection id a message is posted on.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum ConnSel {
    /// The one a well-behaved guest uses now.
    Current,
    /// 1 (pre-5.0 messages and contact).
    Legacy,
    /// 4 (5.0+ contact).
    Contact4,
    /// Anything.
    Raw(u32),
}

impl ConnSel {
    /// Resolves given the current message connection id (if connected).
    pub fn resolve(self, current: Option<u32>, msg: &GuestMsg) -> u32 {
        match self {
            ConnSel::Current => match (msg, current) {
                (GuestMsg::Contact { version, .. }, _) => {
                    if VERSIONS[*version as usize % VERSIONS.len()].uses_msg_sint() {
                        MESSAGE_CONNECTION_ID_4
                    } else {
                        MESSAGE_CONNECTION_ID
                    }
                }
                (_, Some(c)) => c,
                (_, None) => MESSAGE_CONNECTION_ID,
            },
            ConnSel::Legacy => MESSAGE_CONNECTION_ID,
            ConnSel::Contact4 => MESSAGE_CONNECTION_ID_4,
            ConnSel::Raw(c) => c,
        }
    }
}

/// One GPA range of a GPADL, with exactly as many PFNs as it spans.
#[derive(Arbitrary, Debug, Clone)]
pub struct RangeIn {
    /// Offset in the first page (taken modulo 4096 unless `raw_offset`).
    pub byte_offset: u16,
    /// Bytes covered, kept to 1..=64 pages.
    pub byte_count: u32,
    /// Keep the offset as given (may be >= 4096).
    pub raw_offset: bool,
    /// First PFN (kept below 2^40 unless `raw_pfns`).
    pub pfn_base: u64,
    /// PFN stride.
    pub stride: u8,
    /// PFNs as given by `pfn_base` (may exceed the physical address space).
    pub raw_pfns: bool,
}

impl RangeIn {
    /// The record and its PFNs.
    pub fn build(&self) -> (GpaRange, Vec<u64>) {
        let byte_offset = if self.raw_offset { self.byte_offset as u32 } else { self.byte_offset as u32 % 4096 };
        let byte_count = self.byte_count % (64 * 4096) + 1;
        let pages = (byte_offset as u64 + byte_count as u64).div_ceil(4096).min(65);
        let base = if self.raw_pfns { self.pfn_base } else { self.pfn_base & ((1 << 40) - 1) };
        let pfns = (0..pages).map(|i| base.wrapping_add(i * self.stride as u64)).collect();
        (GpaRange { byte_count, byte_offset }, pfns)
    }
}

/// A range record and its PFNs.
pub type RangeWithPfns = (GpaRange, Vec<u64>);

/// A whole GPADL, split into a header and body messages the way a guest does.
#[derive(Arbitrary, Debug, Clone)]
pub struct GpadlIn {
    /// Channel.
    pub relid: RelidSel,
    /// Handle (small, so handles collide).
    pub handle: u8,
    /// One to a few ranges.
    pub ranges: Vec<RangeIn>,
    /// Override of `rangecount`.
    pub rangecount: Option<u16>,
    /// Override of `range_buflen` (in 8-byte words).
    pub buflen_words: Option<u16>,
    /// msgnumber of the first body (normally 1).
    pub first_msgnumber: Option<u32>,
    /// Send only this many of the messages (normally all).
    pub send: Option<u8>,
}

impl GpadlIn {
    /// The handle, the ranges (record and PFNs each), and the messages.
    pub fn build(&self, relids: &[u32]) -> (u32, Vec<RangeWithPfns>, Vec<Vec<u8>>) {
        let ranges: Vec<RangeWithPfns> = self.ranges.iter().take(4).map(RangeIn::build).collect();
        let mut words = Vec::new();
        for (r, pfns) in &ranges {
            words.extend_from_slice(r.as_bytes());
            for p in pfns {
                words.extend_from_slice(&p.to_le_bytes());
            }
        }
        let handle = self.handle as u32;
        let header = GpadlHeader {
            header: MessageHeader::new(MessageType::GPADL_HEADER),
            child_relid: self.relid.resolve(relids),
            gpadl: handle,
            range_buflen: self.buflen_words.map(|w| w.wrapping_mul(8)).unwrap_or(words.len().min(0xFFF8) as u16),
            rangecount: self.rangecount.unwrap_or(ranges.len() as u16),
        };
        let room = (MESSAGE_PAYLOAD_SIZE - core::mem::size_of::<GpadlHeader>()) / 8 * 8;
        let in_header = words.len().min(room);
        let mut first = header.as_bytes().to_vec();
        first.extend_from_slice(&words[..in_header]);
        let mut msgs = vec![first];
        let body_room = (MESSAGE_PAYLOAD_SIZE - core::mem::size_of::<GpadlBody>()) / 8 * 8;
        for (i, chunk) in words[in_header..].chunks(body_room).enumerate() {
            let body = GpadlBody {
                header: MessageHeader::new(MessageType::GPADL_BODY),
                msgnumber: self.first_msgnumber.unwrap_or(1).wrapping_add(i as u32),
                gpadl: handle,
            };
            let mut b = body.as_bytes().to_vec();
            b.extend_from_slice(chunk);
            msgs.push(b);
        }
        if let Some(n) = self.send {
            msgs.truncate(n as usize);
        }
        (handle, ranges, msgs)
    }
}

/// One guest message.
#[derive(Arbitrary, Debug, Clone)]
pub enum GuestMsg {
    /// Any bytes (capped at 300).
    Raw(Vec<u8>),
    /// InitiateContact.
    Contact {
        /// Index into the version list.
        version: u8,
        /// Target VP.
        vcpu: u8,
        /// SINT (5.0+).
        sint: u8,
        /// Interrupt page (pre-5.0).
        interrupt_page: u64,
    },
    /// RequestOffers.
    RequestOffers,
    /// OpenChannel.
    Open {
        /// Channel.
        relid: RelidSel,
        /// Open id.
        openid: u32,
        /// Ring GPADL.
        gpadl: u8,
        /// Downstream ring offset in pages.
        offset: u8,
        /// VP.
        vp: u8,
    },
    /// CloseChannel.
    Close(RelidSel),
    /// A GPADL header and its bodies.
    Gpadl(GpadlIn),
    /// A lone GpadlBody.
    GpadlBody {
        /// Handle.
        handle: u8,
        /// Sequence number.
        msgnumber: u32,
        /// PFNs (capped at 28).
        pfns: Vec<u64>,
    },
    /// GpadlTeardown.
    Teardown {
        /// Channel.
        relid: RelidSel,
        /// Handle.
        handle: u8,
    },
    /// RelidReleased.
    Released(RelidSel),
    /// Unload.
    Unload,
    /// ModifyChannel.
    Modify {
        /// Channel.
        relid: RelidSel,
        /// VP.
        vp: u8,
    },
    /// TlConnectRequest.
    TlConnect,
    /// A message only the host sends (by type number), header only.
    HostOnly(u8),
}

fn bytes_of(m: &ChannelMessage<'_>) -> Vec<u8> {
    OutgoingMessage::new(m).map(|o| o.as_bytes().to_vec()).unwrap_or_default()
}

impl GuestMsg {
    /// The posted payloads (a GPADL gives several).
    pub fn build(&self, relids: &[u32]) -> Vec<Vec<u8>> {
        let m = match self {
            GuestMsg::Raw(b) => return vec![b.iter().copied().take(300).collect()],
            GuestMsg::Contact { version, vcpu, sint, interrupt_page } => {
                let v = VERSIONS[*version as usize % VERSIONS.len()];
                ChannelMessage::InitiateContact(InitiateContact::new(
                    v,
                    *vcpu as u32 % 80,
                    *sint % 20,
                    *interrupt_page,
                    (0x10_0000, 0x10_1000),
                ))
            }
            GuestMsg::RequestOffers => ChannelMessage::RequestOffers,
            GuestMsg::Open { relid, openid, gpadl, offset, vp } => ChannelMessage::OpenChannel(OpenChannel {
                header: MessageHeader::new(MessageType::OPEN_CHANNEL),
                child_relid: relid.resolve(relids),
                openid: *openid,
                ringbuffer_gpadl_handle: *gpadl as u32,
                target_vp: *vp as u32 % 80,
                downstream_ringbuffer_pageoffset: *offset as u32,
                user_data: [0x5A; MAX_USER_DEFINED_BYTES],
            }),
            GuestMsg::Close(r) => ChannelMessage::CloseChannel(CloseChannel {
                header: MessageHeader::new(MessageType::CLOSE_CHANNEL),
                child_relid: r.resolve(relids),
            }),
            GuestMsg::Gpadl(g) => return g.build(relids).2,
            GuestMsg::GpadlBody { handle, msgnumber, pfns } => {
                let mut b = GpadlBody {
                    header: MessageHeader::new(MessageType::GPADL_BODY),
                    msgnumber: *msgnumber,
                    gpadl: *handle as u32,
                }
                .as_bytes()
                .to_vec();
                for p in pfns.iter().take(28) {
                    b.extend_from_slice(&p.to_le_bytes());
                }
                return vec![b];
            }
            GuestMsg::Teardown { relid, handle } => ChannelMessage::GpadlTeardown(GpadlTeardown {
                header: MessageHeader::new(MessageType::GPADL_TEARDOWN),
                child_relid: relid.resolve(relids),
                gpadl: *handle as u32,
            }),
            GuestMsg::Released(r) => ChannelMessage::RelidReleased(RelidReleased {
                header: MessageHeader::new(MessageType::RELID_RELEASED),
                child_relid: r.resolve(relids),
            }),
            GuestMsg::Unload => ChannelMessage::Unload,
            GuestMsg::Modify { relid, vp } => ChannelMessage::ModifyChannel(ModifyChannel {
                header: MessageHeader::new(MessageType::MODIFY_CHANNEL),
                child_relid: relid.resolve(relids),
                target_vp: *vp as u32 % 80,
            }),
            GuestMsg::TlConnect => ChannelMessage::TlConnectRequest(TlConnectRequest {
                header: MessageHeader::new(MessageType::TL_CONNECT_REQUEST),
                guest_endpoint_id: Default::default(),
                host_service_id: Default::default(),
            }),
            GuestMsg::HostOnly(t) => {
                // A header-only message of a host type: parse fails for the
                // fixed-size ones (too short), which is a path too.
                let mut b = MessageHeader::new(MessageType(*t as u32 % 26)).as_bytes().to_vec();
                b.resize(64, 0);
                return vec![b];
            }
        };
        vec![bytes_of(&m)]
    }
}
