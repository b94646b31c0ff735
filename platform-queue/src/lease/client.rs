//! Client-held leases: the broker has no lease of its own (RabbitMQ, STOMP, Kafka,
//! MQTT), so the client keeps one per delivery and a timer returns the message when
//! it runs out.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use platform_core::{Error, Result};

/// A lease kept by the client, for brokers that have none (RabbitMQ, STOMP): held
/// until a deadline that `extend` moves; settling claims it once; past the deadline a
/// timer takes it back and the backend returns the message.
pub(crate) struct ClientLease {
    status: AtomicU8,
    deadline: Mutex<Instant>,
    /// Wakes the lease timer once settled, so it does not hold the delivery until the
    /// deadline.
    settled: tokio::sync::Notify,
}

impl ClientLease {
    const HELD: u8 = 0;
    const SETTLED: u8 = 1;
    const EXPIRED: u8 = 2;

    pub(crate) fn new(lease: Duration) -> Self {
        Self {
            status: AtomicU8::new(Self::HELD),
            deadline: Mutex::new(Instant::now() + lease),
            settled: tokio::sync::Notify::new(),
        }
    }

    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lost(backend: &'static str, op: &'static str) -> Error {
        Error::conflict("lease was lost (the visibility timeout passed)").with_backend(backend).with_op(op)
    }

    /// Claims the lease for a terminal action; `Conflict` once it expired or was settled.
    pub(crate) fn take(&self, backend: &'static str, op: &'static str) -> Result<()> {
        let claimed = Instant::now() < self.deadline()
            && self.status.compare_exchange(Self::HELD, Self::SETTLED, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if claimed {
            self.settled.notify_one();
            Ok(())
        } else {
            Err(Self::lost(backend, op))
        }
    }

    /// Gives back a claim whose action failed.
    pub(crate) fn untake(&self) {
        let _ = self.status.compare_exchange(Self::SETTLED, Self::HELD, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Moves the deadline to `lease` from now; `Conflict` once the lease is gone.
    pub(crate) fn extend(&self, backend: &'static str, lease: Duration) -> Result<()> {
        let mut deadline = self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        if self.status.load(Ordering::Acquire) != Self::HELD || Instant::now() >= *deadline {
            return Err(Self::lost(backend, "extend"));
        }
        *deadline = Instant::now() + lease;
        Ok(())
    }

    /// Waits until the deadline passes with the lease unsettled; `true` when this call
    /// took it back (the caller returns the message), `false` when it was settled.
    pub(crate) async fn expired(&self) -> bool {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(self.deadline())) => {}
                () = self.settled.notified() => {}
            }
            if self.status.load(Ordering::Acquire) != Self::HELD {
                return false;
            }
            if Instant::now() >= self.deadline() {
                return self
                    .status
                    .compare_exchange(Self::HELD, Self::EXPIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            }
        }
    }
}
