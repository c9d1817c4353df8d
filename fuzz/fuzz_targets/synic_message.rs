// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Arbitrary bytes as a SynIC message slot into `HvMessage::parse`; a VMBus
//! message's payload goes on to `ChannelMessage::parse` and its re-emit round
//! trip, as the guest's message path does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_core::hv::{HvMessage, MESSAGE_PAYLOAD_SIZE, VMBUS_MESSAGE_TYPE};
use vmbus_core::message::ChannelMessage;

fuzz_target!(|data: &[u8]| {
    let Ok((header, payload)) = HvMessage::parse(data) else { return };
    assert_eq!(payload.len(), header.payload_size as usize);
    assert!(payload.len() <= MESSAGE_PAYLOAD_SIZE);
    if header.message_type != VMBUS_MESSAGE_TYPE {
        return;
    }
    let Ok(message) = ChannelMessage::parse(payload) else { return };
    let mut buf = [0u8; MESSAGE_PAYLOAD_SIZE];
    let n = message.emit(&mut buf).expect("a parsed message re-emits");
    assert_eq!(ChannelMessage::parse(&buf[..n]), Ok(message));
});
