//! The HTTP contract over real HTTP: a small service built from `Contract`, served on a
//! loopback port, called with reqwest.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use platform_core::http::{Contract, HEALTH_JSON, KeyBy, LocalLimiter, Policy, RateLimit, RateLimiter, rate_limit};
use platform_core::{CheckOutcome, CorrelationId, Error, ErrorKind, HealthCheck, PROBLEM_CONTENT_TYPE, async_trait};
use serde_json::{Value, json};

struct Fixed {
    name: &'static str,
    critical: bool,
    up: bool,
}

#[async_trait]
impl HealthCheck for Fixed {
    fn name(&self) -> String {
        self.name.into()
    }
    fn critical(&self) -> bool {
        self.critical
    }
    async fn check(&self) -> platform_core::Result<CheckOutcome> {
        if self.up {
            Ok(CheckOutcome::new(Duration::from_millis(1)).with_version("PostgreSQL 15.19"))
        } else {
            Err(Error::unavailable("connection refused"))
        }
    }
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Item {
    title: String,
}

async fn get_item(Path(id): Path<u32>) -> Result<Json<Value>, Error> {
    if id == 1 { Ok(Json(json!({"id": 1, "title": "one"}))) } else { Err(Error::not_found(format!("item {id}"))) }
}

async fn create_item(Json(item): Json<Item>) -> (axum::http::StatusCode, Json<Item>) {
    (axum::http::StatusCode::CREATED, Json(item))
}

async fn seen() -> Json<Value> {
    Json(json!({
        "correlation_id": CorrelationId::current().map(|c| c.to_string()),
        "traceparent": platform_core::current_traceparent(),
    }))
}

async fn boom() -> &'static str {
    panic!("kaboom {}", 42)
}

struct Service {
    base: String,
    contract: Contract,
    client: reqwest::Client,
}

async fn start(critical_down: bool) -> Service {
    let contract = Contract::new("items", "1.2.3")
        .with_check(Arc::new(Fixed { name: "postgres", critical: true, up: !critical_down }))
        .with_check(Arc::new(Fixed { name: "mail", critical: false, up: false }))
        .with_api_version("1")
        .with_migration_version(7)
        .with_request_timeout(Duration::from_millis(300))
        .with_body_limit(1024);
    let app = Router::new()
        .route("/v1/items/{id}", get(get_item))
        .route("/v1/items", post(create_item))
        .route("/v1/seen", get(seen))
        .route("/v1/boom", get(boom))
        .route("/v1/slow", get(|| async { tokio::time::sleep(Duration::from_secs(5)).await }))
        .route(
            "/v1/busy",
            get(|| async {
                Err::<(), _>(Error::new(ErrorKind::RateLimited, "slow down").with_retry_after(Duration::from_secs(7)))
            }),
        );
    let app = contract.apply(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Service { base, contract, client: reqwest::Client::new() }
}

impl Service {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Checks `res` is problem+json with `status` and `code` and a correlation id (the one
/// echoed in the header); returns the body.
async fn problem(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status);
    assert_eq!(res.headers()["content-type"], PROBLEM_CONTENT_TYPE);
    let header_id = res.headers()["x-correlation-id"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["correlation_id"], header_id.as_str(), "{body}");
    body
}

#[tokio::test]
async fn up_reports_every_dependency() {
    let s = start(false).await;
    let res = s.client.get(s.url("/up")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["service"], "items");
    assert_eq!(body["version"], "1.2.3");
    assert_eq!(body["checks"][0]["name"], "postgres");
    assert_eq!(body["checks"][0]["version"], "PostgreSQL 15.19");
    assert!(body["checks"][0]["latency_ms"].as_f64().is_some());
    assert_eq!(body["checks"][1]["status"], "down");
    assert_eq!(body["checks"][1]["critical"], false);
    assert!(body["checks"][1]["error"].as_str().unwrap().contains("connection refused"));

    let res = s.client.get(s.url("/up")).header("accept", HEALTH_JSON).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], HEALTH_JSON);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "warn");
    assert_eq!(body["checks"]["postgres:responseTime"][0]["status"], "pass");
    assert_eq!(body["checks"]["postgres:responseTime"][0]["observedUnit"], "ms");

    let down = start(true).await;
    let res = down.client.get(down.url("/up")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let res = down.client.get(down.url("/up")).header("accept", HEALTH_JSON).send().await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "fail");
}

#[tokio::test]
async fn probes_and_contract() {
    let s = start(false).await;
    for path in ["/livez", "/healthz", "/readyz"] {
        let res = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], "up", "{path}: the non-critical mail check is not asked");
    }
    let down = start(true).await;
    assert_eq!(down.client.get(down.url("/livez")).send().await.unwrap().status(), 200, "alive without its db");
    assert_eq!(down.client.get(down.url("/readyz")).send().await.unwrap().status(), 503);

    let body: Value = s.client.get(s.url("/v1/contract")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        body,
        json!({"service":"items","version":"1.2.3","mode":"single","api_version":"1","migration_version":7})
    );

    s.contract.shutdown().begin();
    let res = s.client.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert!(body["notes"][0].as_str().unwrap().contains("draining"), "{body}");
    assert_eq!(s.client.get(s.url("/livez")).send().await.unwrap().status(), 200, "still alive while draining");
}

#[tokio::test]
async fn every_error_is_a_problem() {
    let s = start(false).await;
    let body = problem(s.client.get(s.url("/v1/items/2")).send().await.unwrap(), 404, "not_found").await;
    assert_eq!(body["detail"], "item 2");
    let body = problem(s.client.get(s.url("/nowhere?token=secret")).send().await.unwrap(), 404, "not_found").await;
    assert!(!body.to_string().contains("secret"), "the query string is not echoed: {body}");
    let res = s.client.delete(s.url("/v1/items")).send().await.unwrap();
    assert!(res.headers()["allow"].to_str().unwrap().contains("POST"));
    problem(res, 405, "method_not_allowed").await;
    let res = s.client.post(s.url("/v1/items")).header("content-type", "application/json").body("{nope").send();
    let body = problem(res.await.unwrap(), 400, "invalid_input").await;
    assert!(body["details"][0]["reason"].as_str().unwrap().contains("JSON"), "{body}");
    let res = s.client.post(s.url("/v1/items")).json(&json!({"name": 1})).send().await.unwrap();
    let body = problem(res, 422, "invalid_input").await;
    assert!(body["detail"].as_str().unwrap().contains("title"), "{body}");
    let res = s.client.post(s.url("/v1/items")).body("{}").send().await.unwrap();
    problem(res, 415, "unsupported_media_type").await;
    let big = json!({"title": "x".repeat(4096)});
    let res = s.client.post(s.url("/v1/items")).json(&big).send().await.unwrap();
    problem(res, 413, "payload_too_large").await;
    problem(s.client.get(s.url("/v1/slow")).send().await.unwrap(), 408, "request_timeout").await;
    let body = problem(s.client.get(s.url("/v1/boom")).send().await.unwrap(), 500, "internal").await;
    assert!(body.get("detail").is_none(), "nothing internal leaks: {body}");
    assert!(!body.to_string().contains("kaboom"));
    let res = s.client.get(s.url("/v1/busy")).send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "7");
    problem(res, 429, "rate_limited").await;
    // A success is left alone.
    let res = s.client.post(s.url("/v1/items")).json(&json!({"title": "t"})).send().await.unwrap();
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn correlation_ids_travel() {
    let s = start(false).await;
    let get = |headers: &[(&'static str, &'static str)]| {
        let mut req = s.client.get(s.url("/v1/seen"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send()
    };
    let res = get(&[("x-correlation-id", "req-42")]).await.unwrap();
    assert_eq!(res.headers()["x-correlation-id"], "req-42");
    assert_eq!(res.json::<Value>().await.unwrap()["correlation_id"], "req-42");
    let res = get(&[("x-request-id", "proxy-7")]).await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["correlation_id"], "proxy-7");
    let res = get(&[("x-correlation-id", "has spaces")]).await.unwrap();
    let echoed = res.headers()["x-correlation-id"].to_str().unwrap().to_owned();
    assert_ne!(echoed, "has spaces", "an invalid id is replaced");
    assert_eq!(res.json::<Value>().await.unwrap()["correlation_id"], echoed.as_str());
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let res = get(&[("traceparent", tp)]).await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["traceparent"], tp);
    let res = get(&[("traceparent", "garbage")]).await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap()["traceparent"], Value::Null);
}

#[tokio::test]
async fn openapi_and_swagger_are_served() {
    let s = start(false).await;
    let res = s.client.get(s.url("/openapi")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let doc: Value = res.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert_eq!(doc["info"]["title"], "items");
    for path in ["/up", "/livez", "/healthz", "/readyz", "/v1/contract"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
        assert!(doc["paths"][path]["get"]["responses"]["default"].is_object(), "{path}: errors documented");
    }
    for schema in ["Problem", "HealthReport", "CheckResult", "ServiceInfo"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    let res = s.client.get(s.url("/swagger/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.text().await.unwrap().contains("swagger-ui"));
}

/// Serves `app` behind the contract on a loopback port.
async fn serve(app: Router) -> String {
    let app = Contract::new("limited", "1").apply(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>()).await
    });
    base
}

fn limited(limiter: Arc<dyn RateLimiter>, policy: Policy, key: KeyBy) -> Router {
    let limit = RateLimit::new(limiter, policy, key);
    Router::new()
        .route("/v1/write", post(|| async { "ok" }))
        .route_layer(axum::middleware::from_fn_with_state(limit, rate_limit))
        .route("/v1/free", get(|| async { "ok" }))
}

#[tokio::test]
async fn rate_limits_answer_429_with_the_ietf_fields() {
    let policy = Policy::new("writes", 3, Duration::from_secs(60)).unwrap();
    let base = serve(limited(Arc::new(LocalLimiter::new()), policy, KeyBy::ClientIp)).await;
    let client = reqwest::Client::new();
    for left in [2, 1, 0] {
        let res = client.post(format!("{base}/v1/write")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["ratelimit-policy"], "\"writes\";q=3;w=60");
        let field = res.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(field.starts_with(&format!("\"writes\";r={left};t=")), "{field}");
    }
    let res = client.post(format!("{base}/v1/write")).send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "20", "one request's share of the window");
    let body = problem(res, 429, "rate_limited").await;
    assert!(body["detail"].as_str().unwrap().contains("writes"), "{body}");
    assert_eq!(client.get(format!("{base}/v1/free")).send().await.unwrap().status(), 200, "other routes are free");
}

#[tokio::test]
async fn rate_limits_by_header_count_each_key_alone() {
    let policy = Policy::new("per-key", 1, Duration::from_secs(60)).unwrap();
    let base = serve(limited(Arc::new(LocalLimiter::new()), policy, KeyBy::Header("x-api-key"))).await;
    let client = reqwest::Client::new();
    let send = |key: &'static str| client.post(format!("{base}/v1/write")).header("x-api-key", key).send();
    assert_eq!(send("a").await.unwrap().status(), 200);
    assert_eq!(send("a").await.unwrap().status(), 429);
    assert_eq!(send("b").await.unwrap().status(), 200);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn two_instances_share_one_limit_on_redis() {
    let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
    let prefix = platform_core::testkit::unique_ident("rl");
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = format!("{url}{sep}prefix={prefix}");
    let policy = Policy::new("shared", 4, Duration::from_secs(60)).unwrap();
    // Two instances of one service: each its own limiter handle, one Redis.
    let mut bases = Vec::new();
    for _ in 0..2 {
        let limiter: Arc<dyn RateLimiter> = Arc::new(platform_core::http::RedisLimiter::from_url(&url).await.unwrap());
        bases.push(serve(limited(limiter, policy.clone(), KeyBy::Global)).await);
    }
    let client = reqwest::Client::new();
    let mut allowed = 0;
    for i in 0..10 {
        let res = client.post(format!("{}/v1/write", bases[i % 2])).send().await.unwrap();
        if res.status() == 200 {
            allowed += 1;
        } else {
            assert_eq!(res.status(), 429);
        }
    }
    assert_eq!(allowed, 4, "the two instances held one limit of 4");
    let err = platform_core::http::RedisLimiter::from_url("redis://127.0.0.1:1?bogus=1").await.unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    use platform_core::http::Shutdown;
    let started = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&started);
    let contract = Contract::new("draining", "1")
        .with_shutdown(Shutdown::new().with_grace(Duration::from_millis(500)).with_deadline(Duration::from_secs(10)));
    let app = contract.apply(Router::new().route(
        "/v1/long",
        get(move || async move {
            notify.notify_one();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            "finished"
        }),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(platform_core::http::serve(listener, app, contract.shutdown()));
    let client = reqwest::Client::new();
    assert_eq!(client.get(format!("{base}/readyz")).send().await.unwrap().status(), 200);
    let long = tokio::spawn(client.get(format!("{base}/v1/long")).send());
    started.notified().await;
    contract.shutdown().begin();
    // Within the grace the listener still accepts, and says it is not ready.
    let fresh = reqwest::Client::new();
    assert_eq!(fresh.get(format!("{base}/readyz")).send().await.unwrap().status(), 503);
    // The request in flight finishes; then the server returns, well before the deadline.
    let res = long.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("served until drained").unwrap().unwrap();
    assert!(reqwest::Client::new().get(format!("{base}/livez")).send().await.is_err(), "no longer accepting");
}
