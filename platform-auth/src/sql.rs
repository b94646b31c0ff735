//! Stores on platform-db (feature `sql`): API key records ([`SqlApiKeys`]) and replay
//! ids ([`SqlReplayGuard`]), on PostgreSQL, MySQL/MariaDB or SQLite, shared by every
//! instance of a service that uses the database.
//!
//! The tables come from [`migration`], added to the application's migrations. A
//! database that cannot be reached is `Unavailable` (503), never a refusal.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use platform_core::{Error, ErrorKind, Result};
use platform_db::migrate::Migration;
use platform_db::{Db, Row, Sql};

use crate::api_key::{ApiKeyRecord, ApiKeyStore};
use crate::ingest::ReplayGuard;

/// The API key table.
pub const API_KEYS: &str = "platform_auth_api_keys";
/// The replay table.
pub const REPLAY: &str = "platform_auth_replay";

/// The migration that creates both tables, at the version the application chooses.
pub fn migration(version: i64) -> Migration {
    let sql = format!(
        "CREATE TABLE {API_KEYS} (id VARCHAR(64) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL, \
         tenant VARCHAR(255), scopes TEXT NOT NULL, hash VARCHAR(64) NOT NULL, created_ms BIGINT NOT NULL, \
         revoked INTEGER NOT NULL);\n\
         CREATE INDEX platform_auth_api_keys_tenant ON {API_KEYS} (tenant, created_ms);\n\
         CREATE TABLE {REPLAY} (scope VARCHAR(255) NOT NULL, id VARCHAR(255) NOT NULL, \
         expires_ms BIGINT NOT NULL, PRIMARY KEY (scope, id));\n\
         CREATE INDEX platform_auth_replay_expiry ON {REPLAY} (expires_ms)"
    );
    Migration::new(version, "platform-auth API keys and replay ids", sql)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0_u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// API key records in a platform-db database.
#[derive(Debug, Clone)]
pub struct SqlApiKeys {
    db: Db,
}

impl SqlApiKeys {
    /// Records in `db` (with [`migration`] applied).
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

const COLUMNS: &str = "id, name, tenant, scopes, hash, created_ms, revoked";

fn record(row: &Row) -> Result<ApiKeyRecord> {
    let hash: String = row.get("hash")?;
    let scopes: String = row.get("scopes")?;
    Ok(ApiKeyRecord {
        id: row.get("id")?,
        name: row.get("name")?,
        tenant: row.get("tenant")?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect::<BTreeSet<_>>(),
        hash: unhex(hash.trim()).ok_or_else(|| Error::internal(format!("{API_KEYS}.hash is not a SHA-256")))?,
        created_ms: row.get("created_ms")?,
        revoked: row.get::<i64>("revoked")? != 0,
    })
}

#[async_trait]
impl ApiKeyStore for SqlApiKeys {
    async fn insert(&self, r: ApiKeyRecord) -> Result<()> {
        let scopes = r.scopes.iter().cloned().collect::<Vec<_>>().join(" ");
        let insert = Sql::new(format!("INSERT INTO {API_KEYS} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"))
            .bind(r.id)
            .bind(r.name)
            .bind(r.tenant)
            .bind(scopes)
            .bind(hex(&r.hash))
            .bind(r.created_ms)
            .bind(i64::from(r.revoked));
        self.db.execute(&insert).await.map(|_| ())
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        let select = Sql::new(format!("SELECT {COLUMNS} FROM {API_KEYS} WHERE id = ?")).bind(id);
        self.db.fetch_optional(&select).await?.as_ref().map(record).transpose()
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
        let select = match tenant {
            Some(t) => {
                Sql::new(format!("SELECT {COLUMNS} FROM {API_KEYS} WHERE tenant = ? ORDER BY created_ms, id")).bind(t)
            }
            None => Sql::new(format!("SELECT {COLUMNS} FROM {API_KEYS} ORDER BY created_ms, id")),
        };
        self.db.fetch_all(&select).await?.iter().map(record).collect()
    }

    async fn revoke(&self, id: &str) -> Result<bool> {
        let update = Sql::new(format!("UPDATE {API_KEYS} SET revoked = 1 WHERE id = ?")).bind(id);
        // MySQL counts changed rows, not matched ones: a second revoke changes none.
        Ok(self.db.execute(&update).await? > 0 || self.get(id).await?.is_some())
    }
}

/// Replay ids in a platform-db database: one insert per check, the primary key
/// deciding between two instances that see one delivery at once.
#[derive(Debug, Clone)]
pub struct SqlReplayGuard {
    db: Db,
}

impl SqlReplayGuard {
    /// Ids in `db` (with [`migration`] applied).
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Deletes ids whose window has passed; returns how many.
    pub async fn purge_expired(&self) -> Result<u64> {
        let now = platform_core::clock::now_ms();
        self.db.execute(&Sql::new(format!("DELETE FROM {REPLAY} WHERE expires_ms < ?")).bind(now)).await
    }
}

#[async_trait]
impl ReplayGuard for SqlReplayGuard {
    async fn first_seen(&self, scope: &str, id: &str, ttl: Duration) -> Result<bool> {
        let now = platform_core::clock::now_ms();
        let until = now.saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        let insert = Sql::new(format!("INSERT INTO {REPLAY} (scope, id, expires_ms) VALUES (?, ?, ?)"))
            .bind(scope)
            .bind(id)
            .bind(until);
        match self.db.execute(&insert).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                // Seen: first again only when its window has passed (and this instance
                // is the one that renews it).
                let renew = Sql::new(format!(
                    "UPDATE {REPLAY} SET expires_ms = ? WHERE scope = ? AND id = ? AND expires_ms <= ?"
                ))
                .bind(until)
                .bind(scope)
                .bind(id)
                .bind(now);
                Ok(self.db.execute(&renew).await? > 0)
            }
            Err(e) => Err(e),
        }
    }
}
