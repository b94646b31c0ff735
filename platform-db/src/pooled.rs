//! The pool and the transaction holder SQL Server and Oracle share: deadpool rather
//! than sqlx's pool, with the same URL parameters.

use std::time::Duration;

use deadpool::managed::{self, Manager, Metrics, Object, PoolError, RecycleError, RecycleResult};
use platform_core::{Error, ErrorKind, Result};

use crate::DbOptions;

/// A pool of `M`'s connections, with errors stamped with the backend's name.
pub(crate) struct Pooled<M: Manager> {
    pool: managed::Pool<M>,
    backend: &'static str,
    map: fn(M::Error) -> Error,
}

impl<M: Manager> std::fmt::Debug for Pooled<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled").field("backend", &self.backend).field("status", &self.pool.status()).finish()
    }
}

impl<M: Manager> Pooled<M> {
    /// A pool sized and timed by the URL's parameters, with `min_connections` (at least
    /// one: opening checks the server) opened before it returns.
    pub(crate) async fn open(
        manager: M,
        o: &DbOptions,
        backend: &'static str,
        map: fn(M::Error) -> Error,
    ) -> Result<Self> {
        let pool = managed::Pool::builder(manager)
            .max_size(o.max_connections as usize)
            .wait_timeout(Some(o.acquire_timeout))
            .create_timeout(Some(o.acquire_timeout))
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            .map_err(|e| Error::internal(e.to_string()).with_backend(backend))?;
        let pool = Self { pool, backend, map };
        let mut warm = Vec::new();
        for _ in 0..o.min_connections.max(1) {
            warm.push(pool.get().await?);
        }
        drop(warm);
        Ok(pool)
    }

    pub(crate) fn size(&self) -> u32 {
        u32::try_from(self.pool.status().size).unwrap_or(u32::MAX)
    }

    pub(crate) fn num_idle(&self) -> usize {
        self.pool.status().available
    }

    #[allow(clippy::unused_async, reason = "called as the sqlx pools' close is")]
    pub(crate) async fn close(&self) {
        self.pool.close();
    }

    pub(crate) async fn get(&self) -> Result<Object<M>> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => (self.map)(e),
            PoolError::Timeout(_) => {
                Error::new(ErrorKind::Timeout, "timed out waiting for a free connection (acquire_timeout)")
                    .with_backend(self.backend)
                    .with_retryable(true)
            }
            PoolError::Closed => Error::new(ErrorKind::Cancelled, "the pool is closed").with_backend(self.backend),
            PoolError::NoRuntimeSpecified => Error::internal("no runtime").with_backend(self.backend),
            PoolError::PostCreateHook(_) => Error::internal("a post-create hook failed").with_backend(self.backend),
        })
    }
}

/// Refuses a connection older than `max_lifetime` or idle longer than `idle_timeout`.
pub(crate) fn recycle_by_age<E>(
    metrics: &Metrics,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
) -> RecycleResult<E> {
    if max_lifetime.is_some_and(|max| metrics.age() > max) {
        return Err(RecycleError::message("older than max_lifetime"));
    }
    if idle_timeout.is_some_and(|idle| metrics.last_used() > idle) {
        return Err(RecycleError::message("idle for longer than idle_timeout"));
    }
    Ok(())
}

/// A transaction's connection, held until commit or rollback. Dropped while open, the
/// connection is closed rather than returned, and the server rolls the work back.
pub(crate) struct HeldTx<M: Manager> {
    pub(crate) conn: Option<Object<M>>,
    pub(crate) open: bool,
}

impl<M: Manager> HeldTx<M> {
    pub(crate) fn new(conn: Object<M>) -> Self {
        Self { conn: Some(conn), open: true }
    }
}

impl<M: Manager> std::fmt::Debug for HeldTx<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldTx").field("open", &self.open).finish_non_exhaustive()
    }
}

impl<M: Manager> Drop for HeldTx<M> {
    fn drop(&mut self) {
        if self.open
            && let Some(conn) = self.conn.take()
        {
            drop(Object::take(conn));
        }
    }
}
