//! Idempotency keys for HTTP mutations (`Idempotency-Key`).
//!
//! # Contract
//! - The first request with a key records the key, a SHA-256 fingerprint of the request
//!   and a lease, then runs the work in a transaction; the response is stored **in that
//!   same transaction**, so the mutation and its stored response commit together.
//! - A retry with the same key and the same request gets the stored response
//!   ([`Outcome::replayed`]) and runs nothing.
//! - The same key with a different request is `Conflict`.
//! - A retry while the first run is in flight waits up to [`IdempotencyKey::with_wait`]
//!   for its response, then gets a retryable `Conflict`; the work never runs twice at once.
//!   If the owner dies, its lease ([`IdempotencyKey::with_lease`]) runs out and a retry
//!   takes over; should the first owner still finish, its commit fails, because the row
//!   no longer carries its token.
//! - Work that fails leaves no trace: the key is released and a retry runs afresh.
//! - Keys expire after their TTL; [`purge_expired`] deletes old ones, and an expired key
//!   is treated as new.
//!
//! The table comes from [`migration`], added to the application's migrations.

use std::time::Duration;

use futures::future::BoxFuture;
use platform_core::clock::duration_ms as ms;
use platform_core::clock::now_ms;
use platform_core::{Error, ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::migrate::Migration;
use crate::{Db, Dialect, Sql, Tx};

/// The table.
pub const TABLE: &str = "platform_db_idempotency";

/// The migration that creates the table, at the version the application chooses.
pub fn migration(version: i64) -> Migration {
    let sql = |response: &str| {
        format!(
            "CREATE TABLE {TABLE} (idem_key VARCHAR(255) NOT NULL PRIMARY KEY, fingerprint VARCHAR(64) NOT NULL, \
             token VARCHAR(36), locked_until BIGINT NOT NULL, response {response}, expires_at BIGINT NOT NULL)"
        )
    };
    Migration::new(version, "platform-db idempotency keys", sql("TEXT"))
        .with_sql(Dialect::Mysql, sql("LONGTEXT"))
        .with_sql(
            Dialect::SqlServer,
            format!(
                "CREATE TABLE {TABLE} (idem_key NVARCHAR(255) NOT NULL PRIMARY KEY, fingerprint VARCHAR(64) NOT NULL, \
                 token VARCHAR(36), locked_until BIGINT NOT NULL, response NVARCHAR(MAX), expires_at BIGINT NOT NULL)"
            ),
        )
        .with_sql(
            Dialect::Oracle,
            format!(
                "CREATE TABLE {TABLE} (idem_key VARCHAR2(255 CHAR) NOT NULL PRIMARY KEY, \
                 fingerprint VARCHAR2(64) NOT NULL, token VARCHAR2(36), locked_until NUMBER(19) NOT NULL, \
                 response CLOB, expires_at NUMBER(19) NOT NULL)"
            ),
        )
}

/// A key, the request it stands for, and how long things may take.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    key: String,
    fingerprint: String,
    ttl: Duration,
    wait: Duration,
    lease: Duration,
}

impl IdempotencyKey {
    /// A key (1-255 printable characters) and the request's bytes (method, path, body:
    /// whatever makes two requests the same).
    pub fn new(key: impl Into<String>, request: &[u8]) -> Result<Self> {
        let key = key.into();
        if key.is_empty() || key.len() > 255 || key.chars().any(char::is_control) {
            return Err(Error::invalid_input(format!("idempotency key {key:?} must be 1-255 printable characters"))
                .with_op("idempotent")
                .with_detail("idempotency_key", "empty, too long or has control characters"));
        }
        let fingerprint = hex(&Sha256::digest(request));
        Ok(Self {
            key,
            fingerprint,
            ttl: Duration::from_secs(24 * 3600),
            wait: Duration::from_secs(10),
            lease: Duration::from_secs(300),
        })
    }

    /// How long the key and its response are kept (default 24 h).
    #[must_use]
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a retry waits for an in-flight first run (default 10 s).
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How long a run may hold the key before a retry may take over (default 5 min).
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
}

/// The response, and whether it was stored by an earlier request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outcome<T> {
    /// The response.
    pub value: T,
    /// `true` when this is the stored response of an earlier run.
    pub replayed: bool,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn conflict(message: &str) -> Error {
    Error::new(ErrorKind::Conflict, message.to_owned()).with_backend("db").with_op("idempotent")
}

impl Db {
    /// Runs `f` once per idempotency key; see the [module docs](crate::idempotency).
    pub async fn idempotent<T, F>(&self, key: &IdempotencyKey, f: F) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T>> + Send,
    {
        let token = uuid::Uuid::new_v4().to_string();
        let started = tokio::time::Instant::now();
        loop {
            let now = now_ms();
            let claim = Sql::new(format!(
                "INSERT INTO {TABLE} (idem_key, fingerprint, token, locked_until, response, expires_at) \
                 VALUES (?, ?, ?, ?, NULL, ?)"
            ))
            .bind(key.key.clone())
            .bind(key.fingerprint.clone())
            .bind(token.clone())
            .bind(now + ms(key.lease))
            .bind(now + ms(key.ttl));
            match self.execute(&claim).await {
                Ok(_) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.with_op("idempotent")),
            }
            let row = self
                .fetch_optional(
                    &Sql::new(format!(
                        "SELECT fingerprint, token, locked_until, response, expires_at FROM {TABLE} WHERE idem_key = ?"
                    ))
                    .bind(key.key.clone()),
                )
                .await?;
            let Some(row) = row else { continue };
            if row.get::<i64>("expires_at")? <= now {
                self.execute(
                    &Sql::new(format!("DELETE FROM {TABLE} WHERE idem_key = ? AND expires_at <= ?"))
                        .bind(key.key.clone())
                        .bind(now),
                )
                .await?;
                continue;
            }
            if row.get::<String>("fingerprint")? != key.fingerprint {
                return Err(conflict("the idempotency key was used before with a different request")
                    .with_detail("idempotency_key", "reused with a different request"));
            }
            if let Some(stored) = row.get::<Option<String>>("response")? {
                let value = serde_json::from_str(&stored).map_err(|e| {
                    Error::internal(format!("stored response does not decode: {e}")).with_op("idempotent")
                })?;
                return Ok(Outcome { value, replayed: true });
            }
            if row.get::<i64>("locked_until")? <= now {
                let old: Option<String> = row.get("token")?;
                let take = Sql::new(format!(
                    "UPDATE {TABLE} SET token = ?, locked_until = ? WHERE idem_key = ? AND token = ? AND response IS NULL"
                ))
                .bind(token.clone())
                .bind(now + ms(key.lease))
                .bind(key.key.clone())
                .bind(old.unwrap_or_default());
                if self.execute(&take).await? == 1 {
                    break;
                }
                continue;
            }
            if started.elapsed() >= key.wait {
                return Err(conflict("a request with this idempotency key is still in flight")
                    .with_retryable(true)
                    .with_retry_after(Duration::from_secs(1)));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.run_owned(key, &token, f).await
    }

    async fn run_owned<T, F>(&self, key: &IdempotencyKey, token: &str, f: F) -> Result<Outcome<T>>
    where
        T: Serialize + DeserializeOwned + Send,
        F: for<'t> FnOnce(&'t mut Tx) -> BoxFuture<'t, Result<T>> + Send,
    {
        let mut tx = self.begin().await?;
        let result = f(&mut tx).await;
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.rollback().await;
                let release = Sql::new(format!("DELETE FROM {TABLE} WHERE idem_key = ? AND token = ?"))
                    .bind(key.key.clone())
                    .bind(token.to_owned());
                let _ = self.execute(&release).await;
                return Err(e);
            }
        };
        let stored = serde_json::to_string(&value)?;
        let store = Sql::new(format!("UPDATE {TABLE} SET response = ?, token = NULL WHERE idem_key = ? AND token = ?"))
            .bind(stored)
            .bind(key.key.clone())
            .bind(token.to_owned());
        if tx.execute(&store).await? != 1 {
            let _ = tx.rollback().await;
            return Err(conflict("the idempotency lease ran out and another request took over; nothing was committed"));
        }
        tx.commit().await?;
        Ok(Outcome { value, replayed: false })
    }
}

/// Deletes expired keys; returns how many.
pub async fn purge_expired(db: &Db) -> Result<u64> {
    db.execute(&Sql::new(format!("DELETE FROM {TABLE} WHERE expires_at <= ?")).bind(now_ms())).await
}
