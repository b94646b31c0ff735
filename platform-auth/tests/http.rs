//! The chain in front of an axum service, with a real HTTP client: the principal in the
//! handlers, 401 / 403 as problem+json, a signed body that reaches the handler whole,
//! and a key in the query refused outside the WebSocket upgrade.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use platform_auth::api_key::{ApiKeys, MemoryApiKeys};
use platform_auth::ingest::{MemoryReplayGuard, MemorySecrets, SignedIngest, decode_secret, sign};
use platform_auth::shared_key::SharedKey;
use platform_auth::{AuthChain, Principal};
use serde_json::{Value, json};

const SHARED: &str = "a-shared-key-of-some-length";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn whoami(who: Principal) -> axum::Json<Value> {
    axum::Json(json!({"subject": who.subject, "tenant": who.tenant, "method": who.method}))
}

async fn admin(who: Principal) -> Result<&'static str, platform_core::Error> {
    who.require_scopes(&["admin"])?;
    Ok("ok")
}

async fn ingest(who: Principal, body: axum::body::Bytes) -> axum::Json<Value> {
    axum::Json(json!({"subject": who.subject, "len": body.len(), "first": body.first()}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_behind_the_chain() {
    let keys = ApiKeys::new("pk", Arc::new(MemoryApiKeys::default())).unwrap();
    let (_, key) = keys.issue("importer", Some("acme"), &["todos:write"]).await.unwrap();
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("ep_1", &[SECRET]).unwrap();
    let chain = AuthChain::new()
        .with(Arc::new(keys))
        .with(Arc::new(SignedIngest::new(secrets, Arc::new(MemoryReplayGuard::default()))))
        .with(Arc::new(SharedKey::new(SHARED).unwrap()));
    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/admin", get(admin))
        .route("/v1/ingest/{endpoint}", post(ingest))
        .layer(axum::middleware::from_fn_with_state(Arc::new(chain), platform_auth::layer::authenticate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();

    let got: Value =
        http.get(format!("{base}/v1/whoami")).bearer_auth(key.expose()).send().await.unwrap().json().await.unwrap();
    assert_eq!(got, json!({"subject": got["subject"], "tenant": "acme", "method": "api_key"}));

    let denied = http.get(format!("{base}/v1/admin")).bearer_auth(key.expose()).send().await.unwrap();
    assert_eq!(denied.status(), 403);
    let problem: Value = denied.json().await.unwrap();
    assert_eq!(problem["code"], "permission_denied");
    assert!(problem["detail"].as_str().unwrap().contains("admin"), "{problem}");

    for request in [
        http.get(format!("{base}/v1/whoami")),
        http.get(format!("{base}/v1/whoami")).bearer_auth("pk_notakey"),
        // The key in the query of a plain request: refused, even the right one.
        http.get(format!("{base}/v1/whoami?key={SHARED}")),
    ] {
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 401);
        assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        assert_eq!(refused.headers()["content-type"], "application/problem+json");
        let problem: Value = refused.json().await.unwrap();
        assert_eq!(problem["code"], "unauthenticated");
        assert!(!problem.to_string().contains(SHARED));
    }

    // A signed binary body: checked, then handed to the handler whole.
    let body = vec![0xff_u8, 0, 1, 2, 3];
    let t = platform_core::clock::now_ms() / 1000;
    let signature = sign(&decode_secret(SECRET).unwrap(), "msg_9", t, &body);
    let got: Value = http
        .post(format!("{base}/v1/ingest/ep_1"))
        .header("webhook-id", "msg_9")
        .header("webhook-timestamp", t.to_string())
        .header("webhook-signature", signature)
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, json!({"subject": "ingest:ep_1", "len": 5, "first": 255}));
}
