//! Passwords: Argon2id at OWASP's parameters, and HTTP Basic over them.
//!
//! [`Passwords`] hashes with Argon2id, by default at m = 19 MiB, t = 2, p = 1 (OWASP's
//! minimum; lower is refused). It keeps the PHC string (`$argon2id$v=19$m=…`), which
//! carries its own salt and parameters, and verifies against it. A hash made at lower
//! parameters than today's verifies and comes back with a new hash
//! ([`PasswordCheck::RightRehash`]), so raising the parameters upgrades users as they
//! log in. [`Passwords::verify_unknown`] spends the same time for a user who does not
//! exist, so response times do not tell which names are real.
//!
//! [`BasicAuth`] takes `Authorization: Basic` against a [`PasswordStore`]
//! ([`MemoryPasswords`] in process), and stores the new hash when one is due.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use base64::Engine as _;
use platform_core::{Error, Result};

use crate::{AuthOutcome, Authenticator, Principal, RequestParts, random_bytes, unauthenticated};

/// What a password check found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PasswordCheck {
    /// Not the password.
    Wrong,
    /// The password, hashed at today's parameters.
    Right,
    /// The password, hashed at lower parameters than today's: store this new hash.
    RightRehash(String),
}

/// Argon2id hashing and verification.
#[derive(Debug, Clone)]
pub struct Passwords {
    params: Params,
    dummy: String,
}

impl Passwords {
    /// At OWASP's parameters: 19 MiB, 2 passes, 1 lane.
    pub fn new() -> Result<Self> {
        Self::with_params(19 * 1024, 2, 1)
    }

    /// At `memory_kib`, `passes` and `lanes`; below OWASP's minimum (19 MiB, 2, 1) is
    /// refused.
    pub fn with_params(memory_kib: u32, passes: u32, lanes: u32) -> Result<Self> {
        if memory_kib < 19 * 1024 || passes < 2 || lanes < 1 {
            let why = "Argon2id below m = 19 MiB, t = 2, p = 1 is refused (OWASP's minimum)";
            return Err(Error::invalid_input(why).with_detail("params", why));
        }
        let params = Params::new(memory_kib, passes, lanes, None).map_err(|e| Error::invalid_input(e.to_string()))?;
        let mut this = Self { params, dummy: String::new() };
        this.dummy = this.hash("a password nobody has")?;
        Ok(this)
    }

    fn argon2(&self) -> Argon2<'_> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// The PHC string of `password`, with a fresh salt.
    pub fn hash(&self, password: &str) -> Result<String> {
        let salt = SaltString::encode_b64(&random_bytes::<16>()?).map_err(|e| Error::internal(e.to_string()))?;
        let hash =
            self.argon2().hash_password(password.as_bytes(), &salt).map_err(|e| Error::internal(e.to_string()))?;
        Ok(hash.to_string())
    }

    /// Checks `password` against the PHC string `stored` (a malformed one is `Wrong`).
    pub fn verify(&self, password: &str, stored: &str) -> Result<PasswordCheck> {
        let Ok(parsed) = PasswordHash::new(stored) else { return Ok(PasswordCheck::Wrong) };
        if self.argon2().verify_password(password.as_bytes(), &parsed).is_err() {
            return Ok(PasswordCheck::Wrong);
        }
        let param = |name: &str| parsed.params.get_decimal(name).unwrap_or(0);
        let (m, t, p) = (param("m"), param("t"), param("p"));
        let current = (self.params.m_cost(), self.params.t_cost(), self.params.p_cost());
        let weaker = parsed.algorithm.as_str() != "argon2id" || m < current.0 || t < current.1 || p < current.2;
        Ok(if weaker { PasswordCheck::RightRehash(self.hash(password)?) } else { PasswordCheck::Right })
    }

    /// Spends the time of a verification for a user who does not exist; always `Wrong`.
    pub fn verify_unknown(&self, password: &str) -> PasswordCheck {
        let _ = self.verify(password, &self.dummy);
        PasswordCheck::Wrong
    }
}

/// A user as a password store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PasswordUser {
    /// The principal's subject (a user id).
    pub subject: String,
    /// Their tenant.
    pub tenant: Option<String>,
    /// What they may do.
    pub scopes: Vec<String>,
    /// Their password's PHC string.
    pub hash: String,
}

impl PasswordUser {
    /// A user.
    pub fn new(subject: &str, tenant: Option<&str>, scopes: &[&str], hash: String) -> Self {
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        Self { subject: subject.to_owned(), tenant: tenant.map(str::to_owned), scopes, hash }
    }
}

/// Where users and their password hashes live. Errors reaching it are `Unavailable`.
#[async_trait]
pub trait PasswordStore: std::fmt::Debug + Send + Sync {
    /// The user who logs in as `name`.
    async fn user(&self, name: &str) -> Result<Option<PasswordUser>>;
    /// Replaces `name`'s hash (after a rehash).
    async fn set_hash(&self, name: &str, hash: String) -> Result<()>;
}

/// Users in process.
#[derive(Debug, Default)]
pub struct MemoryPasswords {
    users: Mutex<HashMap<String, PasswordUser>>,
}

impl MemoryPasswords {
    /// Adds or replaces the user who logs in as `name`.
    pub fn insert(&self, name: &str, user: PasswordUser) {
        self.users.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), user);
    }
}

#[async_trait]
impl PasswordStore for MemoryPasswords {
    async fn user(&self, name: &str) -> Result<Option<PasswordUser>> {
        Ok(self.users.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned())
    }

    async fn set_hash(&self, name: &str, hash: String) -> Result<()> {
        if let Some(u) = self.users.lock().unwrap_or_else(PoisonError::into_inner).get_mut(name) {
            u.hash = hash;
        }
        Ok(())
    }
}

/// HTTP Basic against a password store.
#[derive(Debug, Clone)]
pub struct BasicAuth {
    store: Arc<dyn PasswordStore>,
    passwords: Arc<Passwords>,
}

impl BasicAuth {
    /// Basic auth over `store`, hashing with `passwords`.
    pub fn new(store: Arc<dyn PasswordStore>, passwords: Arc<Passwords>) -> Self {
        Self { store, passwords }
    }

    /// Checks `name` and `password`: the principal, or `Unauthenticated` with one
    /// message for an unknown name and a wrong password. A due rehash is stored.
    pub async fn login(&self, name: &str, password: &str) -> Result<Principal> {
        let refused = || unauthenticated("the name or the password is wrong");
        let Some(user) = self.store.user(name).await? else {
            let passwords = Arc::clone(&self.passwords);
            let password = password.to_owned();
            // As long as a real check, off the async threads.
            let _ = tokio::task::spawn_blocking(move || passwords.verify_unknown(&password)).await;
            return Err(refused());
        };
        let (passwords, given, stored) = (Arc::clone(&self.passwords), password.to_owned(), user.hash.clone());
        let check = tokio::task::spawn_blocking(move || passwords.verify(&given, &stored))
            .await
            .map_err(|e| Error::internal(format!("password check: {e}")))??;
        match check {
            PasswordCheck::Wrong => return Err(refused()),
            PasswordCheck::RightRehash(hash) => self.store.set_hash(name, hash).await?,
            PasswordCheck::Right => {}
        }
        Ok(Principal::new(user.subject, "password").with_tenant(user.tenant).with_scopes(user.scopes))
    }
}

#[async_trait]
impl Authenticator for BasicAuth {
    fn method(&self) -> &'static str {
        "password"
    }

    async fn authenticate(&self, request: &RequestParts<'_>) -> Result<AuthOutcome> {
        let Some(value) = request.header("authorization") else { return Ok(AuthOutcome::Absent) };
        let Some((scheme, encoded)) = value.split_once(' ') else { return Ok(AuthOutcome::Absent) };
        if !scheme.eq_ignore_ascii_case("basic") {
            return Ok(AuthOutcome::Absent);
        }
        let malformed = || unauthenticated("Basic credentials must be base64 of name:password");
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| malformed())?;
        let text = String::from_utf8(decoded).map_err(|_| malformed())?;
        let (name, password) = text.split_once(':').ok_or_else(malformed)?;
        self.login(name, password).await.map(AuthOutcome::Authenticated)
    }
}
