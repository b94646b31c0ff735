//! TOTP step-up (RFC 6238): codes from an authenticator app, each accepted once.
//!
//! [`Totp::enrol`] makes a 160-bit secret and the `otpauth://` URI an app scans.
//! [`Totp::check`] accepts the code of the current 30 s step, or of the step just
//! before or after (clock skew), and remembers the step it took. A code of that step or
//! an earlier one is refused from then on, so a code seen over someone's shoulder
//! cannot be used again. After 5 wrong codes in 5 minutes a user's checks are
//! `RateLimited` until the oldest failure ages out. Codes are SHA-1, 6 digits, 30 s:
//! the settings every authenticator app reads, since some silently fall back to SHA-1.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use platform_core::{Error, ErrorKind, Result, Secret};
use subtle::ConstantTimeEq as _;
use totp_rs::{Algorithm, TOTP};

use crate::{random_bytes, unauthenticated};

/// Seconds per code.
pub const STEP: u64 = 30;
/// Wrong codes a user may enter within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// How long a wrong code counts against a user.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(300);

/// What enrolment gives the user: the secret to store (server side) and the URI their
/// app scans.
#[derive(Debug)]
#[non_exhaustive]
pub struct Enrolment {
    /// The shared secret: store it with the user, encrypted at rest.
    pub secret: Secret<Vec<u8>>,
    /// `otpauth://totp/{issuer}:{account}?secret=…&issuer=…`, for a QR code.
    pub uri: Secret<String>,
}

#[derive(Debug, Default)]
struct UserState {
    last_step: Option<u64>,
    failures: VecDeque<u64>,
}

/// TOTP for one service (its name is the `issuer` apps show).
#[derive(Debug)]
pub struct Totp {
    issuer: String,
    users: Mutex<HashMap<String, UserState>>,
}

impl Totp {
    /// TOTP for the service `issuer`.
    pub fn new(issuer: &str) -> Self {
        Self { issuer: issuer.to_owned(), users: Mutex::default() }
    }

    fn totp(&self, secret: Vec<u8>, account: &str) -> Result<TOTP> {
        TOTP::new(Algorithm::SHA1, 6, 1, STEP, secret, Some(self.issuer.clone()), account.to_owned())
            .map_err(|e| Error::invalid_input(format!("TOTP: {e}")))
    }

    /// A new secret for `account` and its `otpauth://` URI.
    pub fn enrol(&self, account: &str) -> Result<Enrolment> {
        let secret = random_bytes::<20>()?.to_vec();
        let uri = self.totp(secret.clone(), account)?.get_url();
        Ok(Enrolment { secret: Secret::new(secret), uri: Secret::new(uri) })
    }

    /// The code of `secret` at `unix_secs` (what the user's app shows then).
    pub fn code(&self, secret: &Secret<Vec<u8>>, unix_secs: u64) -> Result<String> {
        Ok(self.totp(secret.expose().clone(), "user")?.generate(unix_secs))
    }

    /// Checks `code` for `user` with their `secret` at `unix_secs`: `Ok` once per step,
    /// `Unauthenticated` for a wrong or reused code, `RateLimited` after too many wrong
    /// ones.
    pub fn check(&self, user: &str, secret: &Secret<Vec<u8>>, code: &str, unix_secs: u64) -> Result<()> {
        let totp = self.totp(secret.expose().clone(), user)?;
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let state = users.entry(user.to_owned()).or_default();
        let window = FAILURE_WINDOW.as_secs();
        while state.failures.front().is_some_and(|at| at + window <= unix_secs) {
            state.failures.pop_front();
        }
        if state.failures.len() >= MAX_FAILURES {
            let wait = state.failures.front().map_or(window, |at| at + window - unix_secs);
            return Err(Error::new(ErrorKind::RateLimited, "too many wrong codes: try again later")
                .with_retry_after(Duration::from_secs(wait)));
        }
        let now = unix_secs / STEP;
        // Each candidate is compared whole, in constant time.
        let matched = [now.saturating_sub(1), now, now + 1]
            .into_iter()
            .filter(|step| bool::from(totp.generate(step * STEP).as_bytes().ct_eq(code.trim().as_bytes())))
            .max();
        match matched {
            Some(step) if state.last_step.is_some_and(|last| step <= last) => {
                Err(unauthenticated("this code was used already: wait for the next one"))
            }
            Some(step) => {
                state.last_step = Some(step);
                state.failures.clear();
                Ok(())
            }
            None => {
                state.failures.push_back(unix_secs);
                Err(unauthenticated("the code is wrong"))
            }
        }
    }
}
