//! Graceful shutdown: readiness 503, then stop accepting and drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long readiness answers 503 before the listener stops accepting, unless
/// [`Shutdown::with_grace`] says: long enough for a load balancer to see it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// How long in-flight requests may go on once the listener stopped accepting, unless
/// [`Shutdown::with_deadline`] says.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// The shutdown state a service shares between its signal handler, `/readyz` and its
/// workers. Clones share it.
#[derive(Debug, Clone)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
    begun: CancellationToken,
    stop: CancellationToken,
    grace: Duration,
    deadline: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown not begun, with the default grace.
    pub fn new() -> Self {
        Self {
            draining: Arc::default(),
            begun: CancellationToken::new(),
            stop: CancellationToken::new(),
            grace: DEFAULT_GRACE,
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// How long readiness answers 503 before [`stopped`](Self::stopped) resolves.
    #[must_use]
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long in-flight requests may go on once the listener stopped accepting
    /// (default 30 s); [`serve`] returns then at the latest.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Whether shutdown began: `/readyz` answers 503.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Begins shutdown: readiness turns 503 at once, and [`stopped`](Self::stopped)
    /// resolves after the grace.
    pub fn begin(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.begun.cancel();
            tracing::info!(target: "platform::http", grace = ?self.grace, "draining");
            let (stop, grace) = (self.stop.clone(), self.grace);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                stop.cancel();
            });
        }
    }

    /// Resolves once shutdown began and its grace passed: give it to
    /// `axum::serve(..).with_graceful_shutdown(..)` (which then stops accepting and
    /// waits for in-flight requests) and to workers as their stop signal.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// The token cancelled when [`stopped`](Self::stopped) resolves (for a `Worker`'s
    /// or a relay's `run`).
    pub fn token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Waits for SIGTERM or Ctrl-C, begins shutdown, and resolves once the grace
    /// passed: `axum::serve(..).with_graceful_shutdown(contract.shutdown().on_signal())`.
    pub async fn on_signal(self) {
        // A shutdown begun some other way (`begin`) counts too.
        tokio::select! {
            () = terminated() => self.begin(),
            () = self.begun.cancelled() => {}
        }
        self.stopped().await;
    }
}

/// SIGTERM (on Unix) or Ctrl-C.
/// Serves `app` on `listener` until shutdown, the whole recipe: on SIGTERM or Ctrl-C
/// (or [`Shutdown::begin`]) `/readyz` answers 503 for the grace, then no connection is
/// accepted and in-flight requests finish, cut at the deadline. The peer's address is
/// given to handlers and layers (`ConnectInfo<SocketAddr>`, what
/// [`KeyBy::ClientIp`](super::KeyBy::ClientIp) counts by).
pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router, shutdown: Shutdown) -> std::io::Result<()> {
    let server = axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown.clone().on_signal());
    let cut = async {
        shutdown.stopped().await;
        tokio::time::sleep(shutdown.deadline).await;
    };
    tokio::select! {
        served = std::future::IntoFuture::into_future(server) => served,
        () = cut => {
            tracing::warn!(target: "platform::http", deadline = ?shutdown.deadline, "in-flight requests cut at the deadline");
            Ok(())
        }
    }
}

async fn terminated() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn begin_then_stop_after_grace() {
        let s = Shutdown::new().with_grace(Duration::from_secs(3));
        assert!(!s.is_draining());
        s.begin();
        assert!(s.is_draining());
        let started = tokio::time::Instant::now();
        s.stopped().await;
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert!(s.token().is_cancelled());
    }
}
