//! Opaque API keys: `{prefix}_{id}{secret}{check}`.
//!
//! - `prefix` (2 to 8 lowercase letters, `pk` say) tells a key's kind at a glance and
//!   lets secret scanners find leaked ones; `_` keeps a double-click selecting it whole.
//! - `id`: 10 base62 characters, not secret: the record is looked up by it.
//! - `secret`: 30 base62 characters from the system's random source (178 bits).
//! - `check`: 6 base62 characters, the CRC-32 of everything before it, so a scanner (or
//!   this crate, before any lookup) tells a real key from a typo offline.
//!
//! Only the key's SHA-256 is stored (enough for 178 random bits; Argon2 is for
//! passwords), compared in constant time. Keys are issued, listed, revoked and rotated
//! through [`ApiKeys`] over an [`ApiKeyStore`] ([`MemoryApiKeys`] in process).
//!
//! A request presents its key as `X-Api-Key` or `Authorization: Bearer`. A token
//! without this prefix is [`AuthOutcome::Absent`] (another method may own it); one with
//! it that is malformed, unknown or revoked is `Unauthenticated`, with one message for
//! all three so the answer tells an attacker nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use platform_core::{Error, Result, Secret};
use sha2::{Digest as _, Sha256};
use std::sync::{PoisonError, RwLock};
use subtle::ConstantTimeEq as _;

use crate::{AuthOutcome, Authenticator, Principal, RequestParts, random_bytes, unauthenticated};

const ID_LEN: usize = 10;
const SECRET_LEN: usize = 30;
const CHECK_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A key as stored: everything but the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiKeyRecord {
    /// The key's id (not secret).
    pub id: String,
    /// What it is for, as its issuer named it.
    pub name: String,
    /// The tenant it acts for.
    pub tenant: Option<String>,
    /// What it allows.
    pub scopes: BTreeSet<String>,
    /// SHA-256 of the whole key.
    pub hash: [u8; 32],
    /// When it was issued, ms since the epoch.
    pub created_ms: i64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// Where API key records live. Errors reaching the store are `Unavailable`.
#[async_trait]
pub trait ApiKeyStore: std::fmt::Debug + Send + Sync {
    /// Stores a new record.
    async fn insert(&self, record: ApiKeyRecord) -> Result<()>;
    /// The record with `id`.
    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    /// Every record of `tenant` (all of them for `None`), oldest first.
    async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>>;
    /// Marks `id` revoked; `false` when there is no such key.
    async fn revoke(&self, id: &str) -> Result<bool>;
}

/// API key records in process (lost with it: for tests and single-process tools).
#[derive(Debug, Default)]
pub struct MemoryApiKeys {
    records: RwLock<HashMap<String, ApiKeyRecord>>,
}

#[async_trait]
impl ApiKeyStore for MemoryApiKeys {
    async fn insert(&self, record: ApiKeyRecord) -> Result<()> {
        self.records.write().unwrap_or_else(PoisonError::into_inner).insert(record.id.clone(), record);
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(self.records.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned())
    }

    async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
        let records = self.records.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<ApiKeyRecord> =
            records.values().filter(|r| tenant.is_none() || r.tenant.as_deref() == tenant).cloned().collect();
        out.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(out)
    }

    async fn revoke(&self, id: &str) -> Result<bool> {
        Ok(self.records.write().unwrap_or_else(PoisonError::into_inner).get_mut(id).map(|r| r.revoked = true).is_some())
    }
}

/// Issues, lists, revokes and rotates API keys, and authenticates requests by them.
#[derive(Debug, Clone)]
pub struct ApiKeys {
    prefix: String,
    store: Arc<dyn ApiKeyStore>,
}

/// `n` base62 characters from the system's random source (unbiased: bytes past the
/// last whole multiple of 62 are drawn again).
fn random_base62(n: usize) -> Result<String> {
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in random_bytes::<64>()? {
            if b < 248 && out.len() < n {
                out.push(char::from(BASE62[usize::from(b % 62)]));
            }
        }
    }
    Ok(out)
}

/// The CRC-32 of `text` as 6 base62 characters.
fn checksum(text: &str) -> String {
    let mut n = u64::from(crc32fast::hash(text.as_bytes()));
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[usize::try_from(n % 62).unwrap_or(0)];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ApiKeys {
    /// Keys with `prefix` (2 to 8 lowercase ASCII letters) kept in `store`.
    pub fn new(prefix: &str, store: Arc<dyn ApiKeyStore>) -> Result<Self> {
        if !(2..=8).contains(&prefix.len()) || !prefix.bytes().all(|b| b.is_ascii_lowercase()) {
            let why = "must be 2 to 8 lowercase letters";
            return Err(Error::invalid_input(format!("API key prefix {prefix:?} {why}")).with_detail("prefix", why));
        }
        Ok(Self { prefix: prefix.to_owned(), store })
    }

    /// A new key for `name`, acting for `tenant` with `scopes`: its record, and the key
    /// itself, shown this once and never stored.
    pub async fn issue(
        &self,
        name: &str,
        tenant: Option<&str>,
        scopes: &[&str],
    ) -> Result<(ApiKeyRecord, Secret<String>)> {
        let id = random_base62(ID_LEN)?;
        let body = format!("{}_{id}{}", self.prefix, random_base62(SECRET_LEN)?);
        let key = format!("{body}{}", checksum(&body));
        let record = ApiKeyRecord {
            id,
            name: name.to_owned(),
            tenant: tenant.map(str::to_owned),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            hash: Sha256::digest(key.as_bytes()).into(),
            created_ms: platform_core::clock::now_ms(),
            revoked: false,
        };
        self.store.insert(record.clone()).await?;
        Ok((record, Secret::new(key)))
    }

    /// The keys of `tenant` (all for `None`), revoked ones included, oldest first.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>> {
        self.store.list(tenant).await
    }

    /// Revokes key `id`: it authenticates nothing from now on. `NotFound` when unknown.
    pub async fn revoke(&self, id: &str) -> Result<()> {
        if self.store.revoke(id).await? {
            return Ok(());
        }
        Err(Error::not_found(format!("no API key {id:?}")))
    }

    /// A new key with the name, tenant and scopes of `id`, which is revoked.
    pub async fn rotate(&self, id: &str) -> Result<(ApiKeyRecord, Secret<String>)> {
        let old = self.store.get(id).await?.ok_or_else(|| Error::not_found(format!("no API key {id:?}")))?;
        let scopes: Vec<&str> = old.scopes.iter().map(String::as_str).collect();
        let issued = self.issue(&old.name, old.tenant.as_deref(), &scopes).await?;
        self.revoke(id).await?;
        Ok(issued)
    }

    /// The principal of `key`: malformed, unknown and revoked keys are all the same
    /// 401; a store that cannot be reached is 503.
    pub async fn verify(&self, key: &str) -> Result<Principal> {
        let refused = || unauthenticated("the API key is not valid");
        let id = self.key_id(key).ok_or_else(refused)?;
        let record = self.store.get(id).await?.ok_or_else(refused)?;
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        if record.revoked || !bool::from(hash.ct_eq(&record.hash)) {
            return Err(refused());
        }
        Ok(Principal::new(format!("api-key:{}", record.id), "api_key")
            .with_tenant(record.tenant)
            .with_scopes(record.scopes))
    }

    /// The id of `key` when it has this prefix and its checksum holds: checked offline,
    /// before any lookup.
    pub fn key_id<'k>(&self, key: &'k str) -> Option<&'k str> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix('_')?;
        if rest.len() != ID_LEN + SECRET_LEN + CHECK_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let (body, check) = key.split_at(key.len() - CHECK_LEN);
        (checksum(body) == check).then(|| &rest[..ID_LEN])
    }
}

#[async_trait]
impl Authenticator for ApiKeys {
    fn method(&self) -> &'static str {
        "api_key"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        let refused = || unauthenticated("the API key is not valid");
        let (key, own_header) = match (request.header("x-api-key"), request.bearer_token()) {
            (Some(key), _) => (std::borrow::Cow::Borrowed(key), true),
            (None, Some(token)) => (token, false),
            (None, None) => return Ok(AuthOutcome::Absent),
        };
        if !key.starts_with(&format!("{}_", self.prefix)) {
            // In `X-API-Key` it can only be an API key; a bearer token may be another
            // method's.
            return if own_header { Err(refused()) } else { Ok(AuthOutcome::Absent) };
        }
        self.verify(&key).await.map(AuthOutcome::Authenticated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_six_base62_characters() {
        let c = checksum("pk_abc");
        assert_eq!(c.len(), CHECK_LEN);
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(c, checksum("pk_abd"));
    }

    #[test]
    fn random_base62_is_base62() {
        let s = random_base62(200).unwrap();
        assert_eq!(s.len(), 200);
        assert!(s.bytes().all(|b| BASE62.contains(&b)));
    }
}
