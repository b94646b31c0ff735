//! The HTTP contract's layers beside a bare axum router, same run, measured with `wrk`
//! from a second process on loopback:
//!
//! - `bare`: `GET /v1/ping` answering a small JSON body on a plain `Router`;
//! - `contract`: the same route behind `Contract::apply` (correlation id and span per
//!   request, problem rewriting, timeout, body limit, panic catching) and a rate limit
//!   (`LocalLimiter`, keyed by a header, a limit no request reaches), idempotency off;
//! - `/up`: the full health report with five dependencies on their real servers
//!   (SQLite, PostgreSQL, Redis, NATS, the local-disk store) checked concurrently.
//!
//! `source scripts/services.env && cargo bench -p platform-benches --bench http -- [SECONDS]`
//! (default 10 s per row; 2 wrk threads, 50 connections) prints requests per second
//! and the 50th and 99th percentile latencies, and the contract's cost against bare.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use platform_core::HealthCheck;
use platform_core::http::{Contract, KeyBy, LocalLimiter, Policy, RateLimit, correlate, problem_responses, rate_limit};
use serde_json::json;

async fn ping() -> Json<serde_json::Value> {
    Json(json!({ "ok": true, "service": "bench" }))
}

fn bare() -> Router {
    Router::new().route("/v1/ping", get(ping))
}

fn layered(contract: &Contract) -> Router {
    let policy = Policy::new("bench", 1_000_000, Duration::from_secs(1)).expect("policy");
    let limit = RateLimit::new(Arc::new(LocalLimiter::new()), policy, KeyBy::Header("x-client"));
    contract.apply(bare().route_layer(axum::middleware::from_fn_with_state(limit, rate_limit)))
}

async fn dependencies() -> Vec<Arc<dyn HealthCheck>> {
    let mut checks: Vec<Arc<dyn HealthCheck>> = Vec::new();
    let dir = std::env::temp_dir().join(format!("platform-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    checks.push(Arc::new(platform_db::open(&format!("sqlite://{}/db.sqlite", dir.display())).await.expect("sqlite")));
    checks.push(platform_store::open(&format!("file://{}", dir.display())).await.expect("store"));
    for (var, kind) in [
        ("PLATFORM_TEST_POSTGRES_URL", "db"),
        ("PLATFORM_TEST_REDIS_URL", "queue"),
        ("PLATFORM_TEST_NATS_URL", "queue"),
    ] {
        let Ok(url) = std::env::var(var) else {
            eprintln!("{var} unset: /up has fewer dependencies (source scripts/services.env)");
            continue;
        };
        let check: Arc<dyn HealthCheck> = match kind {
            "db" => Arc::new(platform_db::open(&url).await.expect("db")),
            _ => {
                let sep = if url.contains('?') { '&' } else { '?' };
                platform_queue::open(&format!("{url}{sep}queue=bench_up")).await.expect("queue")
            }
        };
        checks.push(check);
    }
    checks
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Requests per second and p50/p99 in ms, from wrk's report.
fn wrk(url: &str, seconds: u64) -> (f64, f64, f64) {
    let out = Command::new("wrk")
        .args(["-t2", "-c50", &format!("-d{seconds}s"), "--latency", "-H", "x-client: bench", url])
        .output()
        .expect("wrk (Debian's package wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned())).unwrap_or_default()
    };
    let ms = |v: String| -> f64 {
        if let Some(us) = v.strip_suffix("us") {
            us.parse::<f64>().unwrap_or(f64::NAN) / 1000.0
        } else if let Some(m) = v.strip_suffix("ms") {
            m.parse().unwrap_or(f64::NAN)
        } else if let Some(s) = v.strip_suffix('s') {
            s.parse::<f64>().unwrap_or(f64::NAN) * 1000.0
        } else {
            f64::NAN
        }
    };
    let rps = field("Requests/sec:").parse().unwrap_or(f64::NAN);
    if text.contains("Non-2xx") {
        eprintln!("{url}: answers other than 2xx:\n{text}");
    }
    (rps, ms(field("50%")), ms(field("99%")))
}

fn main() {
    let seconds: u64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let (bare_url, contract_url, up_url, checks) = rt.block_on(async {
        let checks = dependencies().await;
        let n = checks.len();
        let contract = checks.into_iter().fold(Contract::new("bench", "1"), Contract::with_check);
        let bare_url = serve(bare()).await;
        let contract_url = serve(layered(&contract)).await;
        (format!("{bare_url}/v1/ping"), format!("{contract_url}/v1/ping"), format!("{contract_url}/up"), n)
    });
    println!("{:<28} {:>12} {:>9} {:>9}", "row", "req/s", "p50 ms", "p99 ms");
    let mut rows = Vec::new();
    for (name, url) in [("bare /v1/ping", &bare_url), ("contract /v1/ping", &contract_url)] {
        let (rps, p50, p99) = wrk(url, seconds);
        println!("{name:<28} {rps:>12.0} {p50:>9.3} {p99:>9.3}");
        rows.push(rps);
    }
    // Where the cost is: each layer alone on the bare router.
    let breakdown = rt.block_on(async {
        use tower_http::{catch_panic::CatchPanicLayer, limit::RequestBodyLimitLayer, timeout::TimeoutLayer};
        let policy = Policy::new("bench", 1_000_000, Duration::from_secs(1)).expect("policy");
        let limit = RateLimit::new(Arc::new(LocalLimiter::new()), policy, KeyBy::Header("x-client"));
        let timeout = TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30));
        vec![
            ("+ correlate", serve(bare().layer(axum::middleware::from_fn(correlate))).await),
            ("+ problem_responses", serve(bare().layer(axum::middleware::from_fn(problem_responses))).await),
            ("+ timeout", serve(bare().layer(timeout)).await),
            ("+ catch panic", serve(bare().layer(CatchPanicLayer::new())).await),
            ("+ body limits", serve(bare().layer(RequestBodyLimitLayer::new(1 << 21))).await),
            ("+ rate limit", serve(bare().route_layer(axum::middleware::from_fn_with_state(limit, rate_limit))).await),
        ]
    });
    for (name, base) in breakdown {
        let (rps, p50, p99) = wrk(&format!("{base}/v1/ping"), seconds.div_ceil(2));
        println!("{:<28} {rps:>12.0} {p50:>9.3} {p99:>9.3}", format!("bare {name}"));
    }
    let (rps, p50, p99) = wrk(&up_url, seconds);
    println!("{:<28} {rps:>12.0} {p50:>9.3} {p99:>9.3}", format!("/up, {checks} dependencies"));
    println!("\nthe contract's layers cost {:.1} % of the bare router's throughput", (1.0 - rows[1] / rows[0]) * 100.0);
}
