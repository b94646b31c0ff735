//! Health checks: a real round trip per dependency, reported as the `/up` JSON.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::Result;

/// What a successful check measured.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct CheckOutcome {
    /// Round-trip time of the check itself.
    pub latency: Duration,
    /// The server's version, when it tells (`PostgreSQL 15.19`, `redis 7.0.15`).
    pub version: Option<String>,
}

impl CheckOutcome {
    /// An outcome with `latency` and no version.
    pub fn new(latency: Duration) -> Self {
        Self { latency, version: None }
    }

    /// Times `round_trip`, a real round trip to the server that answers its version.
    pub async fn measure(round_trip: impl std::future::Future<Output = Result<String>>) -> Result<Self> {
        let started = std::time::Instant::now();
        let version = round_trip.await?;
        Ok(Self::new(started.elapsed()).with_version(version))
    }

    /// Sets the server version.
    #[must_use]
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }
}

/// A dependency that can tell whether it is up.
///
/// # Contract
/// - `check()` does a real round trip to the server (a query, a PING, a HEAD), not
///   "was connected once", and returns its latency and, where known, the server version.
/// - A failure is an `Err`; [`probe_all`] bounds each check with a timeout, so a check
///   need not time itself out.
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// The dependency's name in reports (`postgres`, `queue:redis`).
    fn name(&self) -> String;

    /// Whether the service is down without it (`true`) or only degraded (`false`).
    fn critical(&self) -> bool {
        true
    }

    /// One real round trip.
    async fn check(&self) -> Result<CheckOutcome>;
}

macro_rules! forward_health_check {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<T: HealthCheck + ?Sized> HealthCheck for $ptr<T> {
            fn name(&self) -> String {
                (**self).name()
            }
            fn critical(&self) -> bool {
                (**self).critical()
            }
            async fn check(&self) -> Result<CheckOutcome> {
                (**self).check().await
            }
        }
    )*};
}
forward_health_check!(Arc, Box);

/// `up`, `degraded` or `down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Status {
    /// Everything answers.
    Up,
    /// Only non-critical dependencies are down.
    Degraded,
    /// A critical dependency is down.
    Down,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "up",
            Self::Degraded => "degraded",
            Self::Down => "down",
        })
    }
}

/// The result of one check, as it appears under `checks` in `/up`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct CheckResult {
    /// The dependency's name.
    pub name: String,
    /// `up` or `down`.
    pub status: Status,
    /// Whether the service needs it; omitted from JSON when `true`.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub critical: bool,
    /// Round-trip time in milliseconds (the timeout when it hung).
    pub latency_ms: f64,
    /// The server's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why it is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(b: &bool) -> bool {
    *b
}

/// The `/up` report: overall status and one entry per dependency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
#[non_exhaustive]
pub struct HealthReport {
    /// `up` when all checks are up, `degraded` when only non-critical ones are down,
    /// `down` otherwise.
    pub status: Status,
    /// The service name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The service version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// One entry per dependency, in the order given.
    pub checks: Vec<CheckResult>,
    /// Remarks on the whole report (`draining: shutting down`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl HealthReport {
    /// A report over `checks`, with the status they imply.
    pub fn from_checks(checks: Vec<CheckResult>) -> Self {
        let status = if checks.iter().all(|c| c.status == Status::Up) {
            Status::Up
        } else if checks.iter().any(|c| c.status != Status::Up && c.critical) {
            Status::Down
        } else {
            Status::Degraded
        };
        Self { status, service: None, version: None, checks, notes: Vec::new() }
    }

    /// Names the service and its version in the report.
    #[must_use]
    pub fn with_service(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self.version = Some(version.into());
        self
    }

    /// The HTTP status to answer `/up` with: 200, or 503 when `down`.
    pub fn http_status(&self) -> u16 {
        if self.status == Status::Down { 503 } else { 200 }
    }

    /// The report as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"status\":\"down\",\"checks\":[]}"))
    }
}

/// Runs every check concurrently, each bounded by `timeout`. A check that hangs is
/// reported `down` with the error `timed out` and the timeout as its latency.
pub async fn probe_all(checks: &[Arc<dyn HealthCheck>], timeout: Duration) -> HealthReport {
    let runs = checks.iter().map(|check| async move {
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, check.check()).await;
        let elapsed = started.elapsed();
        let (status, latency, version, error) = match outcome {
            Ok(Ok(ok)) => (Status::Up, ok.latency, ok.version, None),
            Ok(Err(e)) => (Status::Down, elapsed, None, Some(e.to_string())),
            Err(_) => (Status::Down, timeout, None, Some(String::from("timed out"))),
        };
        CheckResult {
            name: check.name(),
            status,
            critical: check.critical(),
            latency_ms: (latency.as_secs_f64() * 1_000_000.0).round() / 1000.0,
            version,
            error,
        }
    });
    HealthReport::from_checks(futures::future::join_all(runs).await)
}

/// Writes one tracing line per dependency: ok with latency and version, or the error.
/// Call it once at start-up, before binding.
pub fn log_startup(report: &HealthReport) {
    for c in &report.checks {
        let version = c.version.as_deref().unwrap_or("-");
        match (&c.status, &c.error) {
            (Status::Up, _) => tracing::info!(
                target: "platform::health",
                dependency = %c.name, latency_ms = c.latency_ms, version, "dependency ok"
            ),
            (_, err) if c.critical => tracing::error!(
                target: "platform::health",
                dependency = %c.name, latency_ms = c.latency_ms, error = err.as_deref().unwrap_or("down"),
                "dependency down"
            ),
            (_, err) => tracing::warn!(
                target: "platform::health",
                dependency = %c.name, latency_ms = c.latency_ms, error = err.as_deref().unwrap_or("down"),
                "optional dependency down"
            ),
        }
    }
}

#[cfg(feature = "http")]
impl axum::response::IntoResponse for HealthReport {
    fn into_response(self) -> axum::response::Response {
        let status = http::StatusCode::from_u16(self.http_status()).unwrap_or(http::StatusCode::OK);
        let mut res = (status, self.to_json()).into_response();
        res.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        res.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind};

    struct Fixed {
        name: &'static str,
        critical: bool,
        behaviour: Behaviour,
    }
    enum Behaviour {
        Ok,
        Fail,
        Hang,
    }

    #[async_trait]
    impl HealthCheck for Fixed {
        fn name(&self) -> String {
            self.name.to_owned()
        }
        fn critical(&self) -> bool {
            self.critical
        }
        async fn check(&self) -> Result<CheckOutcome> {
            match self.behaviour {
                Behaviour::Ok => Ok(CheckOutcome::new(Duration::from_micros(1700)).with_version("PostgreSQL 15.19")),
                Behaviour::Fail => Err(Error::new(ErrorKind::Unavailable, "connection refused")),
                Behaviour::Hang => {
                    futures::future::pending::<()>().await;
                    unreachable!()
                }
            }
        }
    }

    fn check(name: &'static str, critical: bool, behaviour: Behaviour) -> Arc<dyn HealthCheck> {
        Arc::new(Fixed { name, critical, behaviour })
    }

    #[tokio::test(start_paused = true)]
    async fn hanging_check_is_down_at_the_timeout() {
        let checks = [check("postgres", true, Behaviour::Ok), check("queue:redis", true, Behaviour::Hang)];
        let report = probe_all(&checks, Duration::from_secs(2)).await.with_service("todo", "0.1.0");
        assert_eq!(report.status, Status::Down);
        assert_eq!(report.http_status(), 503);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status":"down","service":"todo","version":"0.1.0","checks":[
                {"name":"postgres","status":"up","latency_ms":1.7,"version":"PostgreSQL 15.19"},
                {"name":"queue:redis","status":"down","latency_ms":2000.0,"error":"timed out"}]})
        );
        log_startup(&report);
    }

    #[tokio::test]
    async fn statuses() {
        let up = probe_all(&[check("a", true, Behaviour::Ok)], Duration::from_secs(1)).await;
        assert_eq!((up.status, up.http_status()), (Status::Up, 200));
        let degraded =
            probe_all(&[check("a", true, Behaviour::Ok), check("b", false, Behaviour::Fail)], Duration::from_secs(1))
                .await;
        assert_eq!((degraded.status, degraded.http_status()), (Status::Degraded, 200));
        assert!(degraded.checks[1].error.as_deref().unwrap().contains("connection refused"));
        assert!(degraded.to_json().contains("\"critical\":false"));
        let down = probe_all(&[check("a", true, Behaviour::Fail)], Duration::from_secs(1)).await;
        assert_eq!(down.status, Status::Down);
        log_startup(&degraded);
        log_startup(&down);
        let empty = probe_all(&[], Duration::from_secs(1)).await;
        assert_eq!(empty.status, Status::Up);
    }

    #[tokio::test]
    async fn checks_run_concurrently() {
        let checks: Vec<_> = (0..5).map(|_| check("h", true, Behaviour::Hang)).collect();
        let started = Instant::now();
        let report = probe_all(&checks, Duration::from_millis(200)).await;
        assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
        assert!(report.checks.iter().all(|c| c.error.as_deref() == Some("timed out")));
    }

    #[test]
    fn report_round_trips() {
        let json = r#"{"status":"degraded","checks":[{"name":"x","status":"down","critical":false,"latency_ms":1.0,"error":"e"}]}"#;
        let report: HealthReport = serde_json::from_str(json).unwrap();
        assert_eq!(report.status, Status::Degraded);
        assert!(!report.checks[0].critical);
        assert_eq!(serde_json::from_str::<HealthReport>(&report.to_json()).unwrap(), report);
    }
}
