//! Helpers for tests against real servers, shared by every platform crate.
//!
//! Not semver-stable beyond the crate's major version.
//!
//! - [`server_url`] reads `PLATFORM_TEST_<NAME>_URL`. Unset, the test is skipped with
//!   a printed reason, unless `PLATFORM_TEST_REQUIRE_ALL=1`, where a skip is a failure.
//! - [`eventually`] waits on a condition with a deadline (never sleep-then-assert).
//! - [`unique_name`] and [`unique_ident`] give names no other test run uses.

use std::future::Future;
use std::time::Duration;

use crate::{Error, ErrorKind, Result};

/// The variable that turns every skip into a failure (CI sets it).
pub const REQUIRE_ALL_VAR: &str = "PLATFORM_TEST_REQUIRE_ALL";

/// The file to which every skip appends one line (set by `scripts/test` to count skips).
pub const SKIP_LOG_VAR: &str = "PLATFORM_TEST_SKIP_LOG";

/// The variable that holds the URL of server `name` (`REDIS` → `PLATFORM_TEST_REDIS_URL`).
pub fn server_var(name: &str) -> String {
    format!("PLATFORM_TEST_{}_URL", name.to_ascii_uppercase())
}

/// Whether skips are failures in this run.
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL_VAR).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// The URL of test server `name`, from `PLATFORM_TEST_<NAME>_URL`.
///
/// Unset or empty: prints `skipped: set PLATFORM_TEST_<NAME>_URL` and returns `None`,
/// so the test returns early; with `PLATFORM_TEST_REQUIRE_ALL=1` it panics instead.
///
/// ```no_run
/// # async fn t() {
/// let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
/// # let _ = url; }
/// ```
#[track_caller]
pub fn server_url(name: &str) -> Option<String> {
    let var = server_var(name);
    match std::env::var(&var) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            skip(&format!("set {var}"));
            None
        }
    }
}

/// Reports a skipped test with `reason`; panics when skips are failures.
#[track_caller]
pub fn skip(reason: &str) {
    if require_all() {
        panic!("test cannot be skipped with {REQUIRE_ALL_VAR}=1: {reason}");
    }
    println!("skipped: {reason}");
    eprintln!("skipped: {reason}");
    // scripts/test counts skips from this file, since the test harness hides output.
    if let Ok(path) = std::env::var(SKIP_LOG_VAR) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{reason}");
        }
    }
}

/// Polls `condition` every 20 ms (growing to 200 ms) until it yields `Some`, or fails
/// with `Timeout` after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, mut condition: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = tokio::time::Instant::now() + deadline;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = condition().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= until {
            return Err(Error::new(ErrorKind::Timeout, format!("condition not met within {deadline:?}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A name no other run uses: `prefix-` and 12 random lowercase hex digits
/// (fits queue, bucket and topic naming rules).
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{}-{}", prefix.to_ascii_lowercase(), &id[..12])
}

/// Like [`unique_name`] with `_` instead of `-`, for SQL schemas and identifiers.
pub fn unique_ident(prefix: &str) -> String {
    unique_name(prefix).replace('-', "_")
}

/// How long one behaviour may run before it fails: a wedged server fails its tests
/// instead of hanging the whole run.
pub const BEHAVIOUR_DEADLINE: std::time::Duration = std::time::Duration::from_secs(180);

/// Writes a module `$backend` with one `#[tokio::test]` per behaviour, each calling
/// `kit::behaviour(&harness)` (where `kit` is the testkit at path `$kit`) when
/// `harness` (an `Option`) is `Some`, and failing after [`BEHAVIOUR_DEADLINE`]. The
/// crates' `conformance_tests!` macros are this over their behaviour lists.
#[doc(hidden)]
#[macro_export]
macro_rules! behaviour_tests {
    ($backend:ident, $($kit:ident)::+, $harness:expr, $($behaviour:ident),+) => {
        mod $backend {
            #[allow(unused_imports)]
            use super::*;
            use $($kit)::+ as kit;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $behaviour() {
                    let Some(harness) = $harness else { return };
                    let deadline = $crate::testkit::BEHAVIOUR_DEADLINE;
                    if tokio::time::timeout(deadline, kit::$behaviour(&harness)).await.is_err() {
                        panic!("{} did not finish within {deadline:?}", stringify!($behaviour));
                    }
                }
            )+
        }
    };
}

/// Runs each behaviour in turn with the harness `$h`: what a testkit's `run_all` is made of.
#[doc(hidden)]
#[macro_export]
macro_rules! run_behaviours {
    ($h:expr, $($behaviour:ident),+) => {
        $( $behaviour($h).await; )+
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn names_are_unique_and_valid() {
        let a = unique_name("Jobs");
        assert_ne!(a, unique_name("Jobs"));
        assert!(a.starts_with("jobs-") && a.len() == 17, "{a}");
        assert!(unique_ident("t").chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_eq!(server_var("redis"), "PLATFORM_TEST_REDIS_URL");
    }

    #[test]
    fn unset_server_is_a_skip_or_a_failure() {
        let outcome = std::panic::catch_unwind(|| server_url("SURELY_NOT_SET_ANYWHERE"));
        match outcome {
            Ok(url) => {
                assert!(!require_all());
                assert_eq!(url, None);
            }
            Err(_) => assert!(require_all()),
        }
    }

    #[tokio::test]
    async fn eventually_waits_for_the_condition() {
        let n = AtomicU32::new(0);
        let v =
            eventually(Duration::from_secs(5), || async { (n.fetch_add(1, Ordering::SeqCst) >= 3).then_some(7) }).await;
        assert_eq!(v.unwrap(), 7);
        let err = eventually(Duration::from_millis(50), || async { None::<()> }).await.unwrap_err();
        assert!(err.is_timeout());
    }
}
