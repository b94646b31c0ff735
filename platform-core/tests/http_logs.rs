//! What the HTTP layers log: one span per request with the route, status and
//! correlation id; never the query string, a header or a token.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::get;
use platform_core::http::Contract;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_logged_without_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_max_level(tracing::Level::TRACE)
        .init();
    let app = Contract::new("logged", "1").apply(
        Router::new()
            .route(
                "/v1/things/{id}",
                get(|| async {
                    tracing::info!("handling");
                    "ok"
                }),
            )
            .route("/v1/boom", get(boom)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let res = client
        .get(format!("{base}/v1/things/7?token=hunter2-query"))
        .header("authorization", "Bearer hunter2-bearer")
        .header("x-correlation-id", "corr-in-logs")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = client.get(format!("{base}/v1/boom?api_key=hunter2-boom")).send().await.unwrap();
    assert_eq!(res.status(), 500);
    let log = platform_core::testkit::eventually(std::time::Duration::from_secs(5), || {
        let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
        async move { (text.matches("close").count() >= 2).then_some(text) }
    })
    .await
    .expect("both requests' spans closed");
    assert!(log.contains("route=/v1/things/{id}"), "{log}");
    assert!(log.contains("correlation_id=corr-in-logs"), "{log}");
    assert!(log.contains("status=200"), "{log}");
    assert!(log.contains("status=500") && log.contains("a handler panicked"), "{log}");
    assert!(!log.contains("hunter2"), "a secret reached the log:\n{log}");
}

async fn boom() -> &'static str {
    panic!("kaboom")
}
