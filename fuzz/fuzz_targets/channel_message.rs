// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! Arbitrary bytes into `ChannelMessage::parse`; a message that parses must
//! re-emit into bytes that parse to the same value, and emit must be a fixed
//! point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmbus_core::hv::MESSAGE_PAYLOAD_SIZE;
use vmbus_core::message::ChannelMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = ChannelMessage::parse(data) else { return };
    let mut buf = [0u8; MESSAGE_PAYLOAD_SIZE];
    let n = message.emit(&mut buf).expect("a parsed message re-emits into 240 bytes");
    let again = ChannelMessage::parse(&buf[..n]).expect("re-emitted bytes parse");
    assert_eq!(again, message);
    let mut buf2 = [0u8; MESSAGE_PAYLOAD_SIZE];
    assert_eq!(again.emit(&mut buf2), Ok(n));
    assert_eq!(buf[..n], buf2[..n]);
});
