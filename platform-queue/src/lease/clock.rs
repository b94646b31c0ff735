//! Server leases with a clock: the broker leases each message (NATS's ack wait, SQS's
//! visibility timeout) but cannot tell a stale settle from a live one, so the client
//! keeps the deadline too and refuses a settle past it.

use std::sync::Mutex;
use std::time::Instant;

use platform_core::{Error, Result};

/// A client-side lease deadline, for brokers that cannot tell a stale settle from a live
/// one: past it, the broker may have handed the message to someone else.
pub(crate) struct LeaseClock(Mutex<Instant>);

impl LeaseClock {
    pub(crate) fn until(deadline: Instant) -> Self {
        Self(Mutex::new(deadline))
    }

    /// `Conflict` once the lease has run out.
    pub(crate) fn check(&self, backend: &'static str, op: &'static str) -> Result<()> {
        if Instant::now() >= *self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(Error::conflict("lease was lost (the visibility timeout passed)")
                .with_backend(backend)
                .with_op(op));
        }
        Ok(())
    }

    /// Ends the lease now: the message was handed out again.
    #[cfg_attr(not(feature = "nats"), expect(dead_code, reason = "only NATS ends a lease early"))]
    pub(crate) fn expire(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    pub(crate) fn renew(&self, deadline: Instant) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
    }
}
