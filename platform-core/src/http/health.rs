//! `/up`, `/livez`, `/healthz`, `/readyz` and `/v1/contract`.

use std::sync::Arc;

use ::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use ::http::{HeaderMap, HeaderValue, StatusCode};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::Contract;
use crate::{CheckResult, HealthReport, Status};

/// The IETF health-check draft's media type (`application/health+json`), answered by
/// `/up` when the request's `Accept` names it.
pub const HEALTH_JSON: &str = "application/health+json";

pub(super) fn routes(contract: &Contract) -> Router {
    Router::new()
        .route("/up", get(up))
        .route("/livez", get(live))
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .route("/v1/contract", get(service_contract))
        .with_state(Arc::new(contract.clone()))
}

/// The full report: 200 when up or degraded, 503 when down.
pub(super) async fn up(State(contract): State<Arc<Contract>>, headers: HeaderMap) -> Response {
    let report = contract.report().await;
    let wants_ietf = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().starts_with(HEALTH_JSON)));
    if wants_ietf {
        let status = StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::OK);
        let mut res = (status, Json(ietf(&report))).into_response();
        res.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON));
        res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return res;
    }
    report.into_response()
}

/// The process answers: no dependency is asked.
async fn live(State(contract): State<Arc<Contract>>) -> Response {
    let report = HealthReport::from_checks(Vec::new()).with_service(&contract.info.service, &contract.info.version);
    report.into_response()
}

/// Critical dependencies only; 503 while draining.
async fn ready(State(contract): State<Arc<Contract>>) -> Response {
    let service = (&contract.info.service, &contract.info.version);
    if contract.shutdown.is_draining() {
        let mut report = HealthReport::from_checks(Vec::new()).with_service(service.0, service.1);
        report.status = Status::Down;
        report.notes.push("draining: the service is shutting down".into());
        return report.into_response();
    }
    let critical: Vec<_> = contract.checks.iter().filter(|c| c.critical()).cloned().collect();
    crate::probe_all(&critical, contract.check_timeout).await.with_service(service.0, service.1).into_response()
}

async fn service_contract(State(contract): State<Arc<Contract>>) -> Response {
    let mut res = Json(contract.info.clone()).into_response();
    res.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The report in the IETF draft's shape: `pass` / `warn` / `fail`, one entry per
/// dependency under `"{name}:responseTime"`, latency as `observedValue` in ms, the
/// server version kept as `version`.
fn ietf(report: &HealthReport) -> Value {
    let word = |s: Status| match s {
        Status::Up => "pass",
        Status::Degraded => "warn",
        Status::Down => "fail",
    };
    let mut checks = serde_json::Map::new();
    for c in &report.checks {
        let CheckResult { name, status, critical, latency_ms, version, error, .. } = c;
        let mut entry = json!({
            "componentId": name,
            "observedValue": latency_ms,
            "observedUnit": "ms",
            "status": if *status == Status::Up { "pass" } else if *critical { "fail" } else { "warn" },
        });
        if let Some(v) = version {
            entry["version"] = json!(v);
        }
        if let Some(e) = error {
            entry["output"] = json!(e);
        }
        checks.insert(format!("{name}:responseTime"), json!([entry]));
    }
    let mut out = json!({ "status": word(report.status), "checks": checks });
    if let Some(s) = &report.service {
        out["serviceId"] = json!(s);
    }
    if let Some(v) = &report.version {
        out["version"] = json!(v);
    }
    if !report.notes.is_empty() {
        out["notes"] = json!(report.notes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ietf_shape() {
        let json = r#"{"status":"degraded","service":"todo","version":"1","checks":[
            {"name":"db","status":"up","latency_ms":1.5,"version":"PostgreSQL 15"},
            {"name":"mail","status":"down","critical":false,"latency_ms":2000.0,"error":"timed out"}]}"#;
        let report: HealthReport = serde_json::from_str(json).unwrap();
        assert_eq!(
            ietf(&report),
            json!({"status":"warn","serviceId":"todo","version":"1","checks":{
                "db:responseTime":[{"componentId":"db","observedValue":1.5,"observedUnit":"ms","status":"pass","version":"PostgreSQL 15"}],
                "mail:responseTime":[{"componentId":"mail","observedValue":2000.0,"observedUnit":"ms","status":"warn","output":"timed out"}]}})
        );
    }
}
