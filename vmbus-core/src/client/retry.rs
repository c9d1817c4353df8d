// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0-only
//! The HvPostMessage retry policy, for the OS glue.
//!
//! The [`Client`](super::Client) posts each message once and reports any
//! failure as an error: it never sleeps or spins. Transient statuses (the
//! host's message queue is full) are the glue's business: its
//! [`Hypervisor`] implementation should post through [`post_with_retry`], or
//! wrap itself in [`RetryingHypervisor`], which applies the policy Linux
//! uses:
//!
//! * at most [`MAX_POST_ATTEMPTS`] (100) attempts;
//! * `INSUFFICIENT_MEMORY` and `INSUFFICIENT_BUFFERS` are retried;
//! * `INVALID_CONNECTION_ID` is retried, except for InitiateContact, where it
//!   means "an old host: use the other connection id" and is returned at once
//!   (the client then falls back to the pre-5.0 versions on id 1);
//! * any other status is returned at once;
//! * between attempts the back-off callback is called with a delay that starts
//!   at 1 µs and doubles for the first 22 retries (then stays at about 4.2 s).
//!   The callback sleeps where sleeping is allowed and busy-waits where not
//!   (crash paths).

use crate::hv::HvStatus;
use crate::message::MessageType;
use crate::platform::Hypervisor;
use core::time::Duration;

/// Attempts before giving up.
pub const MAX_POST_ATTEMPTS: u32 = 100;
/// Retries during which the back-off doubles.
pub const BACKOFF_DOUBLINGS: u32 = 22;

/// Whether `status` from posting `message` should be retried.
pub fn should_retry(message: &[u8], status: HvStatus) -> bool {
    if status.is_transient() {
        return true;
    }
    if status == HvStatus::INVALID_CONNECTION_ID {
        let is_contact = message
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .is_some_and(|b| u32::from_le_bytes(b) == MessageType::INITIATE_CONTACT.0);
        return !is_contact;
    }
    false
}

/// The delay before retry number `retry` (0-based).
pub fn backoff_delay(retry: u32) -> Duration {
    Duration::from_micros(1u64 << retry.min(BACKOFF_DOUBLINGS))
}

/// Posts `message` to `connection_id`, retrying per the policy above and
/// calling `backoff` with the delay before each retry. Returns the last status.
pub fn post_with_retry<H: Hypervisor + ?Sized>(
    hv: &H,
    connection_id: u32,
    message: &[u8],
    mut backoff: impl FnMut(Duration),
) -> HvStatus {
    let mut status = HvStatus::SUCCESS;
    for attempt in 0..MAX_POST_ATTEMPTS {
        status = hv.post_message(connection_id, message);
        if status.is_success() || !should_retry(message, status) {
            return status;
        }
        if attempt + 1 < MAX_POST_ATTEMPTS {
            backoff(backoff_delay(attempt));
        }
    }
    status
}

/// A [`Hypervisor`] that applies [`post_with_retry`] to every post, sleeping
/// with `backoff`.
#[derive(Debug)]
pub struct RetryingHypervisor<H, B> {
    /// The raw hypercalls.
    pub inner: H,
    /// Called with each back-off delay.
    pub backoff: B,
}

impl<H: Hypervisor, B: Fn(Duration)> Hypervisor for RetryingHypervisor<H, B> {
    fn post_message(&self, connection_id: u32, message: &[u8]) -> HvStatus {
        post_with_retry(&self.inner, connection_id, message, &self.backoff)
    }
    fn signal_event(&self, connection_id: u32) -> HvStatus {
        self.inner.signal_event(connection_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::{Cell, RefCell};
    use std::vec::Vec;

    struct Scripted {
        statuses: RefCell<Vec<HvStatus>>,
        calls: Cell<u32>,
    }
    impl Hypervisor for Scripted {
        fn post_message(&self, _: u32, _: &[u8]) -> HvStatus {
            self.calls.set(self.calls.get() + 1);
            self.statuses.borrow_mut().pop().unwrap_or(HvStatus::INSUFFICIENT_BUFFERS)
        }
        fn signal_event(&self, _: u32) -> HvStatus {
            HvStatus::SUCCESS
        }
    }

    #[test]
    fn policy() {
        let contact = 14u32.to_le_bytes();
        let open = 5u32.to_le_bytes();
        assert!(!should_retry(&contact, HvStatus::INVALID_CONNECTION_ID));
        assert!(should_retry(&open, HvStatus::INVALID_CONNECTION_ID));
        assert!(should_retry(&open, HvStatus::INSUFFICIENT_MEMORY));
        assert!(!should_retry(&open, HvStatus::ACCESS_DENIED));
        assert_eq!(backoff_delay(0), Duration::from_micros(1));
        assert_eq!(backoff_delay(3), Duration::from_micros(8));
        assert_eq!(backoff_delay(50), Duration::from_micros(1 << 22));

        // Two transient failures, then success.
        let hv = Scripted {
            statuses: RefCell::new(std::vec![
                HvStatus::SUCCESS,
                HvStatus::INSUFFICIENT_BUFFERS,
                HvStatus::INSUFFICIENT_MEMORY
            ]),
            calls: Cell::new(0),
        };
        let mut delays = Vec::new();
        assert_eq!(post_with_retry(&hv, 1, &open, |d| delays.push(d)), HvStatus::SUCCESS);
        assert_eq!(hv.calls.get(), 3);
        assert_eq!(delays, [Duration::from_micros(1), Duration::from_micros(2)]);

        // Always full: gives up after 100 attempts with 99 back-offs.
        let hv = Scripted { statuses: RefCell::new(Vec::new()), calls: Cell::new(0) };
        let mut n = 0;
        assert_eq!(post_with_retry(&hv, 1, &open, |_| n += 1), HvStatus::INSUFFICIENT_BUFFERS);
        assert_eq!(hv.calls.get(), MAX_POST_ATTEMPTS);
        assert_eq!(n, MAX_POST_ATTEMPTS - 1);

        // InitiateContact on a bad connection id fails at once.
        let hv = Scripted { statuses: RefCell::new(std::vec![HvStatus::INVALID_CONNECTION_ID]), calls: Cell::new(0) };
        let r = RetryingHypervisor { inner: hv, backoff: |_| panic!("no back-off expected") };
        assert_eq!(r.post_message(4, &contact), HvStatus::INVALID_CONNECTION_ID);
        assert_eq!(r.inner.calls.get(), 1);
    }
}
