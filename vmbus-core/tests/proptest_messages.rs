// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Properties of the channel-message and SynIC-slot codecs:
//! every `ChannelMessage` variant round-trips through `emit` and `parse`
//! with arbitrary field values; arbitrary bytes never panic either parser;
//! whatever parses re-emits to bytes that parse to the same value.

use proptest::collection::vec;
use proptest::prelude::*;
use vmbus_core::guid::Guid;
use vmbus_core::hv::{HvMessage, SynicMessageError, HVMSG_NONE, MESSAGE_PAYLOAD_SIZE};
use vmbus_core::message::*;
use zerocopy::little_endian::U64;

fn guid() -> impl Strategy<Value = Guid> {
    any::<[u8; 16]>().prop_map(|bytes| Guid { bytes })
}

fn u64le() -> impl Strategy<Value = U64> {
    any::<u64>().prop_map(U64::new)
}

/// A header of the given type with arbitrary padding (which fixed-size
/// messages carry through parse and emit).
fn header(t: MessageType) -> impl Strategy<Value = MessageHeader> {
    any::<u32>().prop_map(move |padding| MessageHeader { msgtype: t, padding })
}

fn words_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Most GPADL header range bytes that fit in one message: 240 - 20, rounded down to 8.
const MAX_HEADER_WORDS: usize = (MESSAGE_PAYLOAD_SIZE - 20) / 8;
/// Most body PFNs that fit in one message: (240 - 16) / 8.
const MAX_BODY_WORDS: usize = (MESSAGE_PAYLOAD_SIZE - 16) / 8;

/// A fixed-size message (or a header-only one), owned.
#[derive(Debug, Clone)]
enum Owned {
    Fixed(ChannelMessage<'static>),
    /// GPADL header: fixed part + range words.
    GpadlHeader(GpadlHeader, Vec<u8>),
    /// GPADL body: fixed part + PFN words.
    GpadlBody(GpadlBody, Vec<u8>),
}

impl Owned {
    fn message(&self) -> ChannelMessage<'_> {
        match self {
            Owned::Fixed(m) => *m,
            Owned::GpadlHeader(fixed, range_bytes) => {
                ChannelMessage::GpadlHeader(GpadlHeaderMessage { fixed: *fixed, range_bytes })
            }
            Owned::GpadlBody(fixed, pfn_bytes) => {
                ChannelMessage::GpadlBody(GpadlBodyMessage { fixed: *fixed, pfn_bytes })
            }
        }
    }
}

fn fixed_message() -> impl Strategy<Value = ChannelMessage<'static>> {
    use ChannelMessage as M;
    use MessageType as T;
    prop_oneof![
        (
            header(T::OFFER_CHANNEL),
            (guid(), guid(), u64le(), u64le(), any::<u16>(), any::<u16>()),
            any::<[u8; MAX_USER_DEFINED_BYTES]>(),
            (any::<u16>(), any::<u16>(), any::<u32>(), any::<u8>(), any::<u8>(), any::<u16>(), any::<u32>()),
        )
            .prop_map(|(header, (t, i, r1, r2, fl, mmio), ud, (sci, r3, relid, mid, ma, ded, conn))| {
                M::OfferChannel(OfferChannel {
                    header,
                    if_type: t,
                    if_instance: i,
                    reserved1: r1,
                    reserved2: r2,
                    chn_flags: fl,
                    mmio_megabytes: mmio,
                    user_defined: ud,
                    sub_channel_index: sci,
                    reserved3: r3,
                    child_relid: relid,
                    monitor_id: mid,
                    monitor_allocated: ma,
                    is_dedicated_interrupt: ded,
                    connection_id: conn,
                })
            }),
        (header(T::RESCIND_CHANNEL_OFFER), any::<u32>())
            .prop_map(|(header, child_relid)| M::RescindChannelOffer(RescindChannelOffer { header, child_relid })),
        Just(M::RequestOffers),
        Just(M::AllOffersDelivered),
        (header(T::OPEN_CHANNEL), any::<[u32; 5]>(), any::<[u8; MAX_USER_DEFINED_BYTES]>()).prop_map(
            |(header, w, user_data)| M::OpenChannel(OpenChannel {
                header,
                child_relid: w[0],
                openid: w[1],
                ringbuffer_gpadl_handle: w[2],
                target_vp: w[3],
                downstream_ringbuffer_pageoffset: w[4],
                user_data,
            })
        ),
        (header(T::OPEN_CHANNEL_RESULT), any::<[u32; 3]>()).prop_map(|(header, w)| M::OpenResult(OpenResult {
            header,
            child_relid: w[0],
            openid: w[1],
            status: w[2],
        })),
        (header(T::CLOSE_CHANNEL), any::<u32>())
            .prop_map(|(header, child_relid)| M::CloseChannel(CloseChannel { header, child_relid })),
        (header(T::GPADL_CREATED), any::<[u32; 3]>()).prop_map(|(header, w)| M::GpadlCreated(GpadlCreated {
            header,
            child_relid: w[0],
            gpadl: w[1],
            creation_status: w[2],
        })),
        (header(T::GPADL_TEARDOWN), any::<[u32; 2]>()).prop_map(|(header, w)| M::GpadlTeardown(GpadlTeardown {
            header,
            child_relid: w[0],
            gpadl: w[1],
        })),
        (header(T::GPADL_TORNDOWN), any::<u32>())
            .prop_map(|(header, gpadl)| M::GpadlTorndown(GpadlTorndown { header, gpadl })),
        (header(T::RELID_RELEASED), any::<u32>())
            .prop_map(|(header, child_relid)| M::RelidReleased(RelidReleased { header, child_relid })),
        (header(T::INITIATE_CONTACT), any::<[u32; 2]>(), u64le(), u64le(), u64le()).prop_map(
            |(header, w, union, mp1, mp2)| M::InitiateContact(InitiateContact {
                header,
                vmbus_version_requested: w[0],
                target_vcpu: w[1],
                interrupt_page_or_sint: union,
                monitor_page1: mp1,
                monitor_page2: mp2,
            })
        ),
        (header(T::VERSION_RESPONSE), any::<u8>(), any::<u8>(), any::<u16>(), any::<u32>()).prop_map(
            |(header, vs, cs, padding, conn)| M::VersionResponse(VersionResponse {
                header,
                version_supported: vs,
                connection_state: cs,
                padding,
                msg_conn_id: conn,
            })
        ),
        Just(M::Unload),
        Just(M::UnloadResponse),
        (header(T::TL_CONNECT_REQUEST), guid(), guid()).prop_map(|(header, g, s)| M::TlConnectRequest(
            TlConnectRequest { header, guest_endpoint_id: g, host_service_id: s }
        )),
        (header(T::MODIFY_CHANNEL), any::<[u32; 2]>()).prop_map(|(header, w)| M::ModifyChannel(ModifyChannel {
            header,
            child_relid: w[0],
            target_vp: w[1],
        })),
        (header(T::TL_CONNECT_RESULT), guid(), guid(), any::<u32>()).prop_map(|(header, s, e, status)| {
            M::TlConnectResult(TlConnectResult { header, service_id: s, endpoint_id: e, status })
        }),
        (header(T::MODIFY_CHANNEL_RESPONSE), any::<[u32; 2]>()).prop_map(|(header, w)| {
            M::ModifyChannelResponse(ModifyChannelResponse { header, child_relid: w[0], status: w[1] })
        }),
    ]
}

/// A GPADL header whose carried range bytes are a whole number of 8-byte
/// words (1..=27), no more than `range_buflen`, with a non-zero range count.
fn gpadl_header() -> impl Strategy<Value = Owned> {
    (header(MessageType::GPADL_HEADER), any::<[u32; 2]>(), 1u16..=u16::MAX, vec(any::<u64>(), 1..=MAX_HEADER_WORDS))
        .prop_flat_map(|(h, w, rangecount, words)| {
            let carried = words.len() * 8;
            // range_buflen: a multiple of 8 not below what this message carries.
            ((carried / 8) as u16..=u16::MAX / 8).prop_map(move |buflen_words| {
                Owned::GpadlHeader(
                    GpadlHeader {
                        header: h,
                        child_relid: w[0],
                        gpadl: w[1],
                        range_buflen: buflen_words * 8,
                        rangecount,
                    },
                    words_to_bytes(&words),
                )
            })
        })
}

fn gpadl_body() -> impl Strategy<Value = Owned> {
    (header(MessageType::GPADL_BODY), any::<[u32; 2]>(), vec(any::<u64>(), 1..=MAX_BODY_WORDS)).prop_map(
        |(header, w, pfns)| Owned::GpadlBody(GpadlBody { header, msgnumber: w[0], gpadl: w[1] }, words_to_bytes(&pfns)),
    )
}

fn any_message() -> impl Strategy<Value = Owned> {
    prop_oneof![4 => fixed_message().prop_map(Owned::Fixed), 1 => gpadl_header(), 1 => gpadl_body()]
}

/// Bytes that often look like a message: a known or nearby type and a tail
/// of any length, so that parse gets past the header check.
fn message_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (0u32..=26, any::<u32>(), vec(any::<u8>(), 0..=292)).prop_map(|(t, pad, tail)| {
        let mut b = Vec::with_capacity(8 + tail.len());
        b.extend_from_slice(&t.to_le_bytes());
        b.extend_from_slice(&pad.to_le_bytes());
        b.extend_from_slice(&tail);
        b
    })
}

/// Parses, and if Ok checks that re-emitting gives bytes that parse to the same value.
fn reparse_is_stable(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(m) = ChannelMessage::parse(bytes) {
        prop_assert!(bytes.len() <= MESSAGE_PAYLOAD_SIZE);
        let mut buf = [0u8; MESSAGE_PAYLOAD_SIZE];
        let n = m.emit(&mut buf).map_err(|e| TestCaseError::fail(format!("emit of a parsed message: {e}")))?;
        // A parsed message never grows past the input, except the legacy
        // 9-byte VersionResponse that is widened to 16.
        prop_assert!(n <= bytes.len().max(16), "{m:?}: {n} > {}", bytes.len());
        let again = ChannelMessage::parse(&buf[..n]);
        prop_assert_eq!(again, Ok(m));
        // The emitted form is a fixed point.
        let mut buf2 = [0u8; MESSAGE_PAYLOAD_SIZE];
        prop_assert_eq!(m.emit(&mut buf2), Ok(n));
        prop_assert_eq!(&buf[..n], &buf2[..n]);
        // OutgoingMessage agrees with emit.
        let out = OutgoingMessage::new(&m).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(out.as_bytes(), &buf[..n]);
        prop_assert_eq!(out.message_type(), m.message_type());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn every_variant_round_trips(owned in any_message()) {
        let m = owned.message();
        let mut buf = [0u8; MESSAGE_PAYLOAD_SIZE];
        let n = m.emit(&mut buf).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]), m.message_type().0);
        let parsed = ChannelMessage::parse(&buf[..n]);
        prop_assert_eq!(parsed, Ok(m));
        // Too small an output buffer is refused.
        let mut short = vec![0u8; n - 1];
        prop_assert_eq!(m.emit(&mut short), Err(MessageError::BufferTooSmall));
    }

    #[test]
    fn gpadl_header_carries_at_most_range_buflen(owned in gpadl_header(), extra in vec(any::<u8>(), 0..8)) {
        // Trailing bytes that do not make a whole word are dropped.
        let m = owned.message();
        let mut buf = vec![0u8; MESSAGE_PAYLOAD_SIZE];
        let n = m.emit(&mut buf).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let total = (n + extra.len()).min(MESSAGE_PAYLOAD_SIZE);
        buf[n..total].copy_from_slice(&extra[..total - n]);
        match ChannelMessage::parse(&buf[..total]) {
            Ok(ChannelMessage::GpadlHeader(h)) => {
                prop_assert_eq!(h.range_bytes.len() % 8, 0);
                prop_assert!(h.range_bytes.len() <= h.fixed.range_buflen as usize);
                prop_assert_eq!(Ok(ChannelMessage::GpadlHeader(h)), ChannelMessage::parse(&buf[..n]));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_channel_parse(bytes in vec(any::<u8>(), 0..=300)) {
        reparse_is_stable(&bytes)?;
    }

    #[test]
    fn message_like_bytes_reparse_to_the_same_value(bytes in message_like_bytes()) {
        reparse_is_stable(&bytes)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic_synic_parse(bytes in vec(any::<u8>(), 0..=300)) {
        check_synic(&bytes)?;
    }

    #[test]
    fn synic_slots_parse_consistently(
        message_type in prop_oneof![Just(HVMSG_NONE), Just(1u32), any::<u32>()],
        payload_size in any::<u8>(),
        flags in any::<u8>(),
        rest in vec(any::<u8>(), 250..=260),
    ) {
        let mut slot = Vec::new();
        slot.extend_from_slice(&message_type.to_le_bytes());
        slot.push(payload_size);
        slot.push(flags);
        slot.extend_from_slice(&rest);
        check_synic(&slot)?;
    }
}

fn check_synic(bytes: &[u8]) -> Result<(), TestCaseError> {
    match HvMessage::parse(bytes) {
        Ok((header, payload)) => {
            prop_assert!(bytes.len() >= 256);
            prop_assert_ne!(header.message_type, HVMSG_NONE);
            prop_assert_eq!(payload.len(), header.payload_size as usize);
            prop_assert!(payload.len() <= MESSAGE_PAYLOAD_SIZE);
            prop_assert_eq!(payload, &bytes[16..16 + payload.len()]);
            // Rebuilding a slot from what was parsed gives the same view.
            let rebuilt = HvMessage::new(header.message_type, payload).expect("payload fits");
            let raw = zerocopy::IntoBytes::as_bytes(&rebuilt).to_vec();
            let (h2, p2) = HvMessage::parse(&raw).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(h2.message_type, header.message_type);
            prop_assert_eq!(h2.payload_size, header.payload_size);
            prop_assert_eq!(p2, payload);
            // A VMBus payload goes on to the channel-message parser.
            reparse_is_stable(payload)?;
        }
        Err(SynicMessageError::Truncated) => prop_assert!(bytes.len() < 256),
        Err(SynicMessageError::Empty) => {
            prop_assert!(bytes.len() >= 256);
            prop_assert_eq!(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]), HVMSG_NONE);
        }
        Err(SynicMessageError::PayloadTooLong(n)) => {
            prop_assert!(n as usize > MESSAGE_PAYLOAD_SIZE);
            prop_assert_eq!(n, bytes[4]);
        }
    }
    Ok(())
}
