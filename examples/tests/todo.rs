//! The todo service end to end on its embedded defaults (SQLite, the in-process bus
//! and broadcast), over real HTTP and a real WebSocket: register, log in, create a
//! workspace and todos, see their events live, and be kept out of other workspaces.

use std::time::Duration;

use platform_events::testkit::ws::{WAIT, Ws, connect, next, send};
use platform_examples::todo::{Settings, build, channel_of};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Running {
    base: String,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
    _dir: std::path::PathBuf,
}

async fn start(notify_urls: Vec<String>) -> Running {
    start_with(|s| s.notify_urls = notify_urls).await
}

/// A service on embedded defaults in a fresh directory, its settings changed by `adjust`.
async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Running {
    let name = platform_core::testkit::unique_ident("todo");
    let dir = std::env::temp_dir().join(&name);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut settings = settings_in(&dir, &name, &base);
    adjust(&mut settings);
    let stop = CancellationToken::new();
    let service = build(&settings, stop.clone()).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, service.router).await });
    Running { base, http: reqwest::Client::new(), _stop: stop.drop_guard(), _dir: dir }
}

/// A service on the files in `dir` (two may share them), with `jwt_signing_key`.
async fn start_in(
    dir: &std::path::Path,
    name: &str,
    notify_urls: Vec<String>,
    jwt_signing_key: Option<String>,
) -> Running {
    let dir = dir.to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let settings = Settings {
        notify_urls,
        jwt_signing_key: jwt_signing_key.map(platform_core::Secret::new),
        ..settings_in(&dir, name, &base)
    };
    let stop = CancellationToken::new();
    let service = build(&settings, stop.clone()).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, service.router).await });
    Running { base, http: reqwest::Client::new(), _stop: stop.drop_guard(), _dir: dir }
}

/// A fresh Ed25519 key as `JWT_SIGNING_KEY` takes it (PKCS#8 DER, base64), made by
/// openssl as an operator would make one.
fn signing_key() -> String {
    use base64::Engine as _;
    let der = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-outform", "DER"])
        .output()
        .expect("openssl");
    assert!(der.status.success());
    base64::engine::general_purpose::STANDARD.encode(&der.stdout)
}

fn settings_in(dir: &std::path::Path, name: &str, base: &str) -> Settings {
    std::fs::create_dir_all(dir).unwrap();
    Settings {
        database_url: format!("sqlite://{}", dir.join("todo.db").display()),
        events_url: format!("memory://{name}"),
        broadcast_url: format!("memory://{name}"),
        shared_ws_key: platform_core::Secret::new("a-shared-key-for-the-tests".to_owned()),
        addr: "127.0.0.1:0".into(),
        queue_url: format!("sqlite://{}?queue=exports", dir.join("jobs.db").display()),
        store_url: format!("file://{}/", dir.join("files").display()),
        notify_urls: vec![],
        public_url: base.to_owned(),
        jwt_signing_key: None,
        migrate_on_start: true,
        login_limit: platform_examples::todo::LOGIN_LIMIT,
        request_limit: platform_examples::todo::REQUEST_LIMIT,
        events: true,
    }
}

impl Running {
    async fn post(&self, token: Option<&str>, path: &str, key: Option<&str>, body: Value) -> reqwest::Response {
        let mut r = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(k) = key {
            r = r.header("idempotency-key", k);
        }
        r.send().await.unwrap()
    }

    async fn get(&self, token: Option<&str>, path: &str) -> reqwest::Response {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send().await.unwrap()
    }

    /// Registers `email` and logs in: its access token.
    async fn user(&self, email: &str) -> String {
        let c = json!({"email": email, "password": "correct horse battery"});
        assert_eq!(self.post(None, "/v1/auth/register", None, c.clone()).await.status(), 201);
        let r = self.post(None, "/v1/auth/login", None, c).await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
    }

    /// Starts an export of `ws` (idempotency key `key`), follows it on `/ws` from its
    /// start, and returns its result once it succeeds.
    async fn export(&self, token: &str, ws: &str, key: &str) -> Value {
        let path = format!("/v1/workspaces/{ws}/exports");
        let started: Value = self.post(Some(token), &path, Some(key), json!({})).await.json().await.unwrap();
        let mut follower = self.ws(token).await;
        send(&mut follower, json!({"op": "subscribe", "channel": started["channel"], "since": started["since"]})).await;
        assert_eq!(next(&mut follower).await["type"], "subscribed");
        loop {
            let frame = next(&mut follower).await;
            assert_ne!(frame["data"]["state"], "failed", "{frame}");
            if frame["data"]["state"] == "succeeded" {
                return frame["data"]["result"].clone();
            }
        }
    }

    async fn ws(&self, token: &str) -> Ws {
        connect(&format!("{}/ws?access_token={token}", self.base.replacen("http", "ws", 1))).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_on_embedded_defaults() {
    let app = start(vec!["memory://".into()]).await;
    let alice = app.user("alice@example.com").await;
    let bob = app.user("bob@example.com").await;

    // A workspace, idempotently.
    let r = app.post(Some(&alice), "/v1/workspaces", Some("ws-1"), json!({"name": "home"})).await;
    assert_eq!(r.status(), 201);
    let ws: Value = r.json().await.unwrap();
    let again = app.post(Some(&alice), "/v1/workspaces", Some("ws-1"), json!({"name": "home"})).await;
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), ws, "the same workspace, not a second one");
    let id = ws["id"].as_str().unwrap();
    let mine: Value = app.get(Some(&alice), "/v1/workspaces").await.json().await.unwrap();
    assert_eq!(mine.as_array().unwrap().len(), 1);

    // Alice listens to her workspace; Bob may not.
    let mut listener = app.ws(&alice).await;
    send(&mut listener, json!({"op": "subscribe", "channel": channel_of(id)})).await;
    assert_eq!(next(&mut listener).await["type"], "subscribed");
    let mut intruder = app.ws(&bob).await;
    send(&mut intruder, json!({"op": "subscribe", "channel": channel_of(id)})).await;
    assert_eq!(next(&mut intruder).await["code"], "permission_denied");
    send(&mut intruder, json!({"op": "subscribe", "channel": "workspaces.>"})).await;
    assert_eq!(next(&mut intruder).await["code"], "permission_denied");

    // Create and complete a todo: both events arrive, in order.
    let todos = format!("/v1/workspaces/{id}/todos");
    let r = app.post(Some(&alice), &todos, Some("todo-1"), json!({"title": "buy milk"})).await;
    assert_eq!(r.status(), 201);
    let todo: Value = r.json().await.unwrap();
    let tid = todo["id"].as_str().unwrap();
    let created = next(&mut listener).await;
    assert_eq!((created["type"].as_str(), created["data"]["type"].as_str()), (Some("event"), Some("todo.created.v1")));
    assert_eq!(created["data"]["data"]["todo"]["title"], "buy milk");
    let r = app.post(Some(&alice), &format!("{todos}/{tid}/complete"), Some("done-1"), json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["done"], true);
    let completed = next(&mut listener).await;
    assert_eq!(completed["data"]["type"], "todo.completed.v1");
    assert_eq!(completed["data"]["data"]["todo"]["id"], tid);

    let list: Value = app.get(Some(&alice), &todos).await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["done"], true);

    // Bob sees nothing of it; nobody without a token sees anything; both as problems.
    let r = app.get(Some(&bob), &todos).await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = app.get(None, &todos).await;
    assert_eq!(r.status(), 401);
    let problem: Value = r.json().await.unwrap();
    assert!(problem["correlation_id"].is_string(), "{problem}");
    let r = app.post(Some(&bob), &todos, Some("x"), json!({"title": "sneaky"})).await;
    assert_eq!(r.status(), 404);
    // A wrong password is a 401, as an unknown email is.
    let wrong =
        app.post(None, "/v1/auth/login", None, json!({"email": "alice@example.com", "password": "nope nope"})).await;
    assert_eq!(wrong.status(), 401);
    let unknown =
        app.post(None, "/v1/auth/login", None, json!({"email": "eve@example.com", "password": "nope nope"})).await;
    assert_eq!(unknown.status(), 401);

    // The contract.
    let up: Value = app.get(None, "/up").await.json().await.unwrap();
    assert_eq!(up["status"], "up", "{up}");
    let spec: Value = app.get(None, "/openapi").await.json().await.unwrap();
    assert!(spec["paths"]["/v1/workspaces/{ws}/todos"]["post"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_runs_as_a_job_reports_on_ws_and_notifies() {
    use platform_notify::testkit::Doubles;
    let doubles = Doubles::start().await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    doubles.hook_secret("exports", secret);
    let hook = format!("webhook://hooks.example.com/hooks/exports?secret={secret}&base_url={}", doubles.url());
    let app = start(vec![hook]).await;
    let alice = app.user("alice@example.com").await;
    let ws: Value =
        app.post(Some(&alice), "/v1/workspaces", Some("w"), json!({"name": "home"})).await.json().await.unwrap();
    let todos = format!("/v1/workspaces/{}/todos", ws["id"].as_str().unwrap());
    for (i, title) in ["milk", "bread", "eggs"].iter().enumerate() {
        let r = app.post(Some(&alice), &todos, Some(&format!("t{i}")), json!({"title": title})).await;
        assert_eq!(r.status(), 201);
    }

    let exports = format!("/v1/workspaces/{}/exports", ws["id"].as_str().unwrap());
    let r = app.post(Some(&alice), &exports, Some("export-1"), json!({})).await;
    assert_eq!(r.status(), 202);
    let started: Value = r.json().await.unwrap();
    // Followed from the job's start: nothing is missed however fast it runs.
    let mut listener = app.ws(&alice).await;
    send(&mut listener, json!({"op": "subscribe", "channel": started["channel"], "since": started["since"]})).await;
    assert_eq!(next(&mut listener).await["type"], "subscribed");
    let mut states = Vec::new();
    let result = loop {
        let frame = next(&mut listener).await;
        let state = frame["data"]["state"].as_str().unwrap().to_owned();
        states.push(state.clone());
        if state == "succeeded" {
            break frame["data"]["result"].clone();
        }
        assert_ne!(state, "failed", "{frame}");
    };
    assert_eq!(states, ["queued", "running", "progress", "succeeded"]);
    assert_eq!(result["count"], 3);

    // The download link works with a plain client, and only as signed.
    let url = result["url"].as_str().unwrap();
    let file: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let titles: Vec<&str> = file["todos"].as_array().unwrap().iter().map(|t| t["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["milk", "bread", "eggs"]);
    let forged = url.replace("X-Platform-Signature=", "X-Platform-Signature=00");
    assert_ne!(reqwest::get(forged).await.unwrap().status(), 200);

    // The notification went out, signed, with the job's id as its webhook id.
    let deadline = std::time::Instant::now() + WAIT;
    while doubles.received("webhook").is_empty() {
        assert!(std::time::Instant::now() < deadline, "no notification");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = &doubles.received("webhook")[0];
    assert_eq!(got.headers["webhook-id"], started["job_id"].as_str().unwrap());
    assert_eq!(got.json()["data"]["url"], url);
    assert_eq!(doubles.violations(), Vec::<String>::new());

    // A retry of the same request is the same job.
    let again: Value = app.post(Some(&alice), &exports, Some("export-1"), json!({})).await.json().await.unwrap();
    assert_eq!(again["job_id"], started["job_id"]);
    // Someone else's job channel by wildcard: refused.
    send(&mut listener, json!({"op": "subscribe", "channel": "jobs.*.events"})).await;
    assert_eq!(next(&mut listener).await["code"], "permission_denied");

    // The same over /ws: `jobs.enqueue` for a workspace of one's own; not for another's.
    let ws_id = ws["id"].as_str().unwrap();
    send(&mut listener, json!({"op": "publish", "channel": "jobs.enqueue", "data": {"workspace_id": ws_id}})).await;
    let published = next(&mut listener).await;
    assert_eq!(published["type"], "published", "{published}");
    let started = &published["result"];
    send(&mut listener, json!({"op": "subscribe", "channel": started["channel"], "since": started["since"]})).await;
    assert_eq!(next(&mut listener).await["type"], "subscribed");
    loop {
        let frame = next(&mut listener).await;
        assert_ne!(frame["data"]["state"], "failed", "{frame}");
        if frame["data"]["state"] == "succeeded" {
            assert_eq!(frame["data"]["job_id"], started["job_id"]);
            break;
        }
    }
    let bob = app.user("bob@example.com").await;
    let mut intruder = app.ws(&bob).await;
    send(&mut intruder, json!({"op": "publish", "channel": "jobs.enqueue", "data": {"workspace_id": ws_id}})).await;
    assert_eq!(next(&mut intruder).await["code"], "not_found");
    send(&mut intruder, json!({"op": "publish", "channel": channel_of(ws_id), "data": {"fake": true}})).await;
    assert_eq!(next(&mut intruder).await["code"], "permission_denied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_guessing_is_rate_limited() {
    let app = start(vec![]).await;
    let guess = json!({"email": "alice@example.com", "password": "not the password"});
    let mut statuses = Vec::new();
    for _ in 0..=platform_examples::todo::LOGIN_LIMIT {
        statuses.push(app.post(None, "/v1/auth/login", None, guess.clone()).await);
    }
    let last = statuses.pop().unwrap();
    assert!(statuses.iter().all(|r| r.status() == 401));
    assert_eq!(last.status(), 429);
    assert!(last.headers().contains_key("retry-after"));
    assert_eq!(last.headers()["content-type"], "application/problem+json");
}

/// `scripts/example-flow`, the README's second look at the service, run as a user would
/// run it (curl and Python's standard library) against the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_flow_script_passes() {
    let app = start(vec![]).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/example-flow");
    let base = app.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash").arg(script).env("TODO_URL", base).output().unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for seen in [
        "ws event: todo.created.v1",
        "ws event: todo.completed.v1",
        "ws event: succeeded",
        "buy milk",
        "the whole flow worked",
    ] {
        assert!(text.contains(seen), "{seen:?} missing from:\n{text}");
    }
}

/// Two instances with one `JWT_SIGNING_KEY` on one database: a token the first issued
/// is good on the second, and the workspace made on one is there on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_signing_key_take_each_others_tokens() {
    let key = signing_key();
    let name = platform_core::testkit::unique_ident("todo2");
    let dir = std::env::temp_dir().join(&name);
    // The same files, bus and broadcast (in-process, by name): two nodes of one service.
    let one = start_in(&dir, &name, vec![], Some(key.clone())).await;
    let two = start_in(&dir, &name, vec![], Some(key)).await;
    let token = one.user("carol@example.com").await;
    let r = one.post(Some(&token), "/v1/workspaces", Some("w"), json!({"name": "shared"})).await;
    assert_eq!(r.status(), 201);
    let on_two: Value = two.get(Some(&token), "/v1/workspaces").await.json().await.unwrap();
    assert_eq!(on_two[0]["name"], "shared");

    // A download link either node made works on both: the local store's presigning
    // secret comes from the shared key, not from the start.
    let ws = on_two[0]["id"].as_str().unwrap();
    let r = two.post(Some(&token), &format!("/v1/workspaces/{ws}/todos"), Some("t"), json!({"title": "x"})).await;
    assert_eq!(r.status(), 201);
    let result = one.export(&token, ws, "e").await;
    let url = result["url"].as_str().unwrap().to_owned();
    let path = url.split_once("/files/").unwrap().1;
    for node in [&one, &two] {
        let r = reqwest::get(format!("{}/files/{path}", node.base)).await.unwrap();
        assert_eq!(r.status(), 200, "{}", node.base);
        assert_eq!(r.json::<Value>().await.unwrap()["todos"][0]["title"], "x");
    }
    // A key that is not one is refused at start, naming the setting.
    let bad = platform_examples::todo::Settings {
        jwt_signing_key: Some(platform_core::Secret::new("nope".into())),
        ..settings_in(&dir, "bad", "http://x")
    };
    let e = build(&bad, CancellationToken::new()).await.unwrap_err();
    assert!(e.to_string().contains("JWT_SIGNING_KEY"), "{e}");
}

/// Another system imports todos through a signed endpoint: each delivery once, however
/// often it is sent; unsigned or wrongly signed ones are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_imports_are_taken_once() {
    let app = start(vec![]).await;
    let alice = app.user("alice@example.com").await;
    let ws: Value =
        app.post(Some(&alice), "/v1/workspaces", Some("w"), json!({"name": "home"})).await.json().await.unwrap();
    let ws = ws["id"].as_str().unwrap().to_owned();
    let r = app.post(Some(&alice), &format!("/v1/workspaces/{ws}/ingest-endpoints"), Some("e"), json!({})).await;
    assert_eq!(r.status(), 201);
    let endpoint: Value = r.json().await.unwrap();
    let secret = platform_auth::ingest::decode_secret(endpoint["secret"].as_str().unwrap()).unwrap();
    let url = format!("{}{}", app.base, endpoint["url"].as_str().unwrap());
    let mut listener = app.ws(&alice).await;
    send(&mut listener, json!({"op": "subscribe", "channel": channel_of(&ws)})).await;
    assert_eq!(next(&mut listener).await["type"], "subscribed");

    let body = serde_json::to_vec(&json!({"todos": [{"title": "from the CRM"}, {"title": "call back"}]})).unwrap();
    let deliver = |id: &str, signature: Option<String>, timestamp: i64| {
        let signature = signature.unwrap_or_else(|| platform_auth::ingest::sign(&secret, id, timestamp, &body));
        app.http
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.clone())
            .send()
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let first: Value = deliver("msg_1", None, now).await.unwrap().json().await.unwrap();
    assert_eq!(first, json!({"imported": 2, "duplicate": false}));
    for _ in 0..2 {
        assert_eq!(next(&mut listener).await["data"]["type"], "todo.created.v1");
    }
    // The sender's retry: a 200, nothing imported twice.
    let again = deliver("msg_1", None, now).await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap(), json!({"imported": 0, "duplicate": true}));
    let list: Value = app.get(Some(&alice), &format!("/v1/workspaces/{ws}/todos")).await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);

    // Refused: a wrong signature, a stale timestamp, no signature at all, a user's token.
    assert_eq!(deliver("msg_2", Some("v1,AAAA".into()), now).await.unwrap().status(), 401);
    assert_eq!(deliver("msg_3", None, now - 3600).await.unwrap().status(), 401);
    let unsigned = app.http.post(&url).json(&json!({"todos": []})).send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    let with_token = app.http.post(&url).bearer_auth(&alice).json(&json!({"todos": []})).send().await.unwrap();
    assert_eq!(with_token.status(), 401);
}

/// The same flow on servers: PostgreSQL (as a plain role, so row-level security holds),
/// the event bus on NATS JetStream, the hub's broadcast and the job queue on Redis, the
/// store on S3 (moto); two instances, a client of one seeing what is done on the other.
#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_nats_redis_and_s3() {
    use platform_core::testkit::server_url;
    use platform_db::testkit::Harness as _;
    let (Some(pg), Some(redis), Some(nats), Some(s3)) =
        (server_url("POSTGRES"), server_url("REDIS"), server_url("NATS"), server_url("S3"))
    else {
        return;
    };
    let harness = platform_db::testkit::UrlHarness::new(pg);
    let admin_url = harness.fresh_url().await.unwrap();
    let admin = platform_db::open(&admin_url).await.unwrap();
    platform_db::migrate::Migrator::new(platform_examples::todo::migrations()).run(&admin).await.unwrap();
    let app_url = harness.restricted_url(&admin_url).await.unwrap().expect("a plain role");

    let name = platform_core::testkit::unique_ident("todo");
    let bucket = name.replace(['-', '_'], "");
    let created = reqwest::Client::new().put(format!("{}/{bucket}", s3.trim_end_matches('/'))).send().await.unwrap();
    assert!(created.status().is_success());
    let key = signing_key();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let settings = Settings {
            database_url: app_url.clone(),
            events_url: format!("{nats}?namespace={}", name.replace('-', "_")),
            broadcast_url: redis.clone(),
            queue_url: format!("{redis}?queue={name}-exports"),
            store_url: format!(
                "s3://{bucket}?endpoint={}&region=us-east-1&access_key_id=test&secret_access_key=test",
                s3.trim_end_matches('/')
            ),
            jwt_signing_key: Some(platform_core::Secret::new(key.clone())),
            // A plain role: the schema is the owner's to change, checked here.
            migrate_on_start: false,
            ..settings_in(&std::env::temp_dir().join(format!("{name}-{i}")), &name, &base)
        };
        let stop = CancellationToken::new();
        let service = build(&settings, stop.clone()).await.unwrap();
        tokio::spawn(async move { axum::serve(listener, service.router).await });
        nodes.push(Running {
            base,
            http: reqwest::Client::new(),
            _stop: stop.drop_guard(),
            _dir: std::env::temp_dir(),
        });
    }
    let (one, two) = (&nodes[0], &nodes[1]);
    let token = one.user(&format!("{name}@example.com")).await;
    let ws: Value =
        one.post(Some(&token), "/v1/workspaces", Some("w"), json!({"name": "home"})).await.json().await.unwrap();
    let ws = ws["id"].as_str().unwrap().to_owned();

    // A client of the second instance sees what is done through the first.
    let mut listener = two.ws(&token).await;
    send(&mut listener, json!({"op": "subscribe", "channel": channel_of(&ws)})).await;
    assert_eq!(next(&mut listener).await["type"], "subscribed");
    let todos = format!("/v1/workspaces/{ws}/todos");
    let todo: Value =
        one.post(Some(&token), &todos, Some("t"), json!({"title": "buy milk"})).await.json().await.unwrap();
    let tid = todo["id"].as_str().unwrap();
    assert_eq!(next(&mut listener).await["data"]["type"], "todo.created.v1");
    let r = two.post(Some(&token), &format!("{todos}/{tid}/complete"), Some("c"), json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(next(&mut listener).await["data"]["type"], "todo.completed.v1");

    // Row-level security: the plain role outside a workspace's scope sees no todo.
    let plain = platform_db::open(&app_url).await.unwrap();
    let unscoped = plain.fetch_all(&platform_db::Sql::new("SELECT id FROM todos")).await.unwrap();
    assert!(unscoped.is_empty(), "RLS let an unscoped query read todos");

    // An export runs on whichever instance takes the job; its link is S3's own.
    let result = one.export(&token, &ws, "e").await;
    let url = result["url"].as_str().unwrap();
    assert!(url.contains(&bucket), "{url}");
    let file: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(file["todos"][0]["title"], "buy milk");
    let up: Value = two.get(None, "/up").await.json().await.unwrap();
    assert_eq!(up["status"], "up", "{up}");
}

/// TOTP, once on, is needed at every login; each code is taken once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totp_once_on_is_needed_to_log_in() {
    let app = start(vec![]).await;
    let token = app.user("dave@example.com").await;
    let r = app.post(Some(&token), "/v1/auth/totp", None, json!({})).await;
    assert_eq!(r.status(), 200);
    let uri = r.json::<Value>().await.unwrap()["otpauth_uri"].as_str().unwrap().to_owned();
    let app_totp = totp_rs::TOTP::from_url(&uri).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // A wrong code does not turn it on; the app's code does.
    let r = app.post(Some(&token), "/v1/auth/totp/confirm", None, json!({"code": "000000"})).await;
    assert_eq!(r.status(), 401);
    let r = app.post(Some(&token), "/v1/auth/totp/confirm", None, json!({"code": app_totp.generate(now)})).await;
    assert_eq!(r.status(), 204);

    let password = json!({"email": "dave@example.com", "password": "correct horse battery"});
    let r = app.post(None, "/v1/auth/login", None, password.clone()).await;
    assert_eq!(r.status(), 401, "the password alone no longer does");
    // The next step's code (a clock a little ahead): taken once.
    let mut with_code = password.clone();
    with_code["totp"] = json!(app_totp.generate(now + 30));
    assert_eq!(app.post(None, "/v1/auth/login", None, with_code.clone()).await.status(), 200);
    assert_eq!(app.post(None, "/v1/auth/login", None, with_code).await.status(), 401, "a code is taken once");
}

/// The service as its own process, killed with SIGKILL right after ten exports were
/// started (queued or running), then started again: every export finishes (a leased job
/// comes back when its lease runs out) and every todo event reaches the bus (a consumer
/// group of the test's own on the service's SQLite bus counts them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_loses_no_export_and_no_event() {
    let name = platform_core::testkit::unique_ident("todokill");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let events_url = format!("sqlite://{}?namespace=todo&visibility_timeout=2s", dir.join("events.db").display());
    // The test's own group, made before the service publishes anything.
    let bus = platform_events::open_bus(&events_url).await.unwrap();
    let audit = bus.subscribe("todo.>", "audit").await.unwrap();
    let key = signing_key();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_todo"))
            .current_dir(&dir)
            .env("DATABASE_URL", format!("sqlite://{}", dir.join("todo.db").display()))
            .env("EVENTS_URL", &events_url)
            .env("BROADCAST_URL", "memory://todo")
            .env("QUEUE_URL", format!("sqlite://{}?queue=exports&visibility_timeout=2s", dir.join("jobs.db").display()))
            .env("STORE_URL", format!("file://{}/", dir.join("files").display()))
            .env("NOTIFY_URLS", "memory://")
            .env("TODO_ADDR", format!("127.0.0.1:{port}"))
            .env("JWT_SIGNING_KEY", &key)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the todo binary starts")
    };
    let http = reqwest::Client::new();
    let wait_up = || async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while http.get(format!("{base}/livez")).send().await.is_err() {
            assert!(std::time::Instant::now() < deadline, "the service did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut child = spawn();
    wait_up().await;
    let app = Running {
        base: base.clone(),
        http: http.clone(),
        _stop: CancellationToken::new().drop_guard(),
        _dir: dir.clone(),
    };
    let token = app.user("erin@example.com").await;
    let ws: Value =
        app.post(Some(&token), "/v1/workspaces", Some("w"), json!({"name": "home"})).await.json().await.unwrap();
    let ws = ws["id"].as_str().unwrap().to_owned();
    let mut created = std::collections::BTreeSet::new();
    for i in 0..40 {
        let r = app
            .post(
                Some(&token),
                &format!("/v1/workspaces/{ws}/todos"),
                Some(&format!("t{i}")),
                json!({"title": format!("todo {i}")}),
            )
            .await;
        assert_eq!(r.status(), 201);
        created.insert(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
    }
    let mut jobs = Vec::new();
    for i in 0..10 {
        let r =
            app.post(Some(&token), &format!("/v1/workspaces/{ws}/exports"), Some(&format!("e{i}")), json!({})).await;
        assert_eq!(r.status(), 202);
        jobs.push(r.json::<Value>().await.unwrap()["job_id"].as_str().unwrap().to_owned());
    }
    // SIGKILL: no shutdown, no drain.
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = spawn();
    wait_up().await;
    // Every export's file is written.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for job in &jobs {
        let file = dir.join("files").join("exports").join(&ws).join(format!("{job}.json"));
        while !file.exists() {
            assert!(std::time::Instant::now() < deadline, "export {job} never finished");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Every todo.created event reaches the bus, once or more (at least once).
    let mut seen = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < created.len() {
        assert!(std::time::Instant::now() < deadline, "{} of {} events arrived", seen.len(), created.len());
        for d in audit.receive(100, Duration::from_millis(500)).await.unwrap() {
            if d.envelope().event_type == "todo.created" {
                seen.insert(d.envelope().payload["todo"]["id"].as_str().unwrap().to_owned());
            }
            d.ack().await.unwrap();
        }
    }
    assert_eq!(seen, created);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// What the tools in `tests/tools/` need.
fn tools_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("tools")
}

/// Where screenshots are kept, for a person to look at: beside the build.
fn artifacts() -> std::path::PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(|_| std::path::PathBuf::from("target"), Into::into);
    target.join("artifacts")
}

/// A child process whose stdout is read line by line as JSON.
struct Child {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    what: &'static str,
}

impl Child {
    fn spawn(what: &'static str, cmd: &mut tokio::process::Command) -> Self {
        use tokio::io::AsyncBufReadExt as _;
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines, what }
    }

    /// The next line, which must be JSON with `"stage": stage`, within `limit`.
    async fn stage(&mut self, stage: &str, limit: Duration) -> Value {
        let line = tokio::time::timeout(limit, self.lines.next_line()).await;
        match line {
            Ok(Ok(Some(line))) => {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("{}: {line}", self.what));
                assert_eq!(v["stage"], stage, "{}: {v}", self.what);
                v
            }
            _ => {
                let _ = self.child.start_kill();
                let mut err = String::new();
                if let Some(mut stderr) = self.child.stderr.take() {
                    use tokio::io::AsyncReadExt as _;
                    let _ = tokio::time::timeout(Duration::from_secs(5), stderr.read_to_string(&mut err)).await;
                }
                panic!("{} never reached {stage}:\n{err}", self.what)
            }
        }
    }

    async fn say(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt as _;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    async fn finished(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
        assert!(matches!(status, Ok(Ok(s)) if s.success()), "{} failed: {status:?}", self.what);
    }
}

/// schemathesis with every check against the service's `/openapi`, as a signed-in user
/// (its bearer token in `tests/tools/schemathesis.toml`, so that leaving it out is
/// checked too) with a fresh `Idempotency-Key` per change (`schemathesis_hooks.py`):
/// every operation tested, positive and negative data, links followed, no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_the_api() {
    let Some(st) = platform_core::testkit::tool("SCHEMATHESIS") else { return };
    // It sends about 1,200 requests in seconds: the per-minute limits would answer most
    // of them with 429, which it accepts, and test nothing behind them.
    let app = start_with(|s| {
        s.login_limit = 100_000;
        s.request_limit = 100_000;
    })
    .await;
    let token = app.user("schemathesis@example.com").await;
    let tools = tools_dir();
    let scratch = std::env::temp_dir().join(platform_core::testkit::unique_ident("st"));
    std::fs::create_dir_all(&scratch).unwrap();
    let run = tokio::process::Command::new(st)
        .arg("--config-file")
        .arg(tools.join("schemathesis.toml"))
        .args(["run", &format!("{}/openapi", app.base), "--checks", "all", "--max-examples", "30", "--seed", "1"])
        .env("TODO_ACCESS_TOKEN", &token)
        .env("SCHEMATHESIS_HOOKS", tools.join("schemathesis_hooks.py"))
        .current_dir(&scratch)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), run).await.expect("schemathesis finished").unwrap();
    let report = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found failures:\n{report}");
    // Every operation: the contract's five and the service's fifteen.
    assert!(report.contains("Tested: 20"), "not every operation was tested:\n{report}");
    assert!(!report.contains("failures"), "{report}");
    let _ = std::fs::remove_dir_all(scratch);
}

/// A client generated from `/openapi` by openapi-python-client drives the flow with its
/// typed models: register, log in, a workspace (idempotently), a todo created and
/// completed, an export. Its events arrive on `/ws` and the export's file downloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_drives_the_flow() {
    let Some(generator) = platform_core::testkit::tool("OPENAPI_CLIENT") else { return };
    let app = start(vec![]).await;
    let dir = std::env::temp_dir().join(platform_core::testkit::unique_ident("pyclient"));
    std::fs::create_dir_all(&dir).unwrap();
    let generate = tokio::process::Command::new(&generator)
        .args(["generate", "--url", &format!("{}/openapi", app.base), "--meta", "none"])
        .current_dir(&dir)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), generate).await.expect("generated in time").unwrap();
    assert!(out.status.success(), "generate:\n{}", String::from_utf8_lossy(&out.stderr));
    let package = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().join("client.py").is_file())
        .expect("a generated package")
        .file_name()
        .into_string()
        .unwrap();

    // The generator's own interpreter has the client's dependencies (httpx, attrs).
    let mut flow = Child::spawn(
        "the generated client's flow",
        tokio::process::Command::new(generator.with_file_name("python"))
            .arg(tools_dir().join("generated_client_flow.py"))
            .args([&package, &app.base, "generated@example.com"])
            .env("PYTHONPATH", &dir),
    );
    let ready = flow.stage("workspace", Duration::from_secs(60)).await;
    let token = ready["token"].as_str().unwrap();
    let mut listener = app.ws(token).await;
    send(&mut listener, json!({"op": "subscribe", "channel": channel_of(ready["workspace"].as_str().unwrap())})).await;
    assert_eq!(next(&mut listener).await["type"], "subscribed");
    flow.say("go").await;
    let done = flow.stage("done", Duration::from_secs(60)).await;
    flow.finished().await;

    let created = next(&mut listener).await;
    assert_eq!(created["data"]["type"], "todo.created.v1");
    assert_eq!(created["data"]["data"]["todo"]["title"], "typed milk");
    let completed = next(&mut listener).await;
    assert_eq!(completed["data"]["type"], "todo.completed.v1");
    assert_eq!(completed["data"]["data"]["todo"]["id"], done["todo"]);

    send(&mut listener, json!({"op": "subscribe", "channel": done["channel"], "since": done["since"]})).await;
    assert_eq!(next(&mut listener).await["type"], "subscribed");
    let result = loop {
        let frame = next(&mut listener).await;
        assert_ne!(frame["data"]["state"], "failed", "{frame}");
        if frame["data"]["state"] == "succeeded" {
            break frame["data"]["result"].clone();
        }
    };
    let file: Value = reqwest::get(result["url"].as_str().unwrap()).await.unwrap().json().await.unwrap();
    assert_eq!(file["todos"][0]["title"], "typed milk");
    let _ = std::fs::remove_dir_all(dir);
}

/// In headless Chromium (driven by playwright-core, `scripts/todo-browser.mjs`):
/// Swagger UI's "Try it out" registers a user, and after "Authorize" with a bearer token
/// lists its workspaces; the service's page at `/` signs in, adds a todo through its
/// form and shows, live from `/ws`, a todo made elsewhere and its own todo completed.
/// Both screenshots are kept in `$CARGO_TARGET_DIR/artifacts/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_and_the_live_page_work_in_a_browser() {
    let (Some(_chromium), Some(_playwright)) =
        (platform_core::testkit::tool("CHROMIUM"), platform_core::testkit::tool("PLAYWRIGHT"))
    else {
        return;
    };
    let app = start(vec![]).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/todo-browser.mjs");
    let shots = artifacts();
    let mut browser = Child::spawn(
        "scripts/todo-browser.mjs",
        tokio::process::Command::new("node").arg(script).arg(&app.base).arg(&shots),
    );
    assert_eq!(browser.stage("swagger-register", Duration::from_secs(90)).await["status"], 201);
    assert_eq!(browser.stage("swagger-authorized", Duration::from_secs(60)).await["status"], 200);
    let live = browser.stage("live", Duration::from_secs(60)).await;
    let (token, ws) = (live["token"].as_str().unwrap(), live["workspace"].as_str().unwrap());

    // Changes made elsewhere than the page: it shows them as they happen.
    let todos = format!("/v1/workspaces/{ws}/todos");
    let r = app.post(Some(token), &todos, Some("elsewhere"), json!({"title": "made elsewhere"})).await;
    assert_eq!(r.status(), 201);
    let list: Value = app.get(Some(token), &todos).await.json().await.unwrap();
    let mine = list.as_array().unwrap().iter().find(|t| t["title"] == "written in the page").expect("the page's todo");
    let done = format!("{todos}/{}/complete", mine["id"].as_str().unwrap());
    assert_eq!(app.post(Some(token), &done, Some("complete"), json!({})).await.status(), 200);

    let finished = browser.stage("done", Duration::from_secs(60)).await;
    let events: Vec<&str> = finished["events"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    let mut all = events.clone();
    all.sort_unstable();
    assert_eq!(
        all,
        [
            "todo.completed.v1 written in the page",
            "todo.created.v1 made elsewhere",
            "todo.created.v1 written in the page"
        ]
    );
    // Newest first: one todo's events keep their order (two todos' need not).
    let at = |e: &str| events.iter().position(|x| *x == e).unwrap();
    assert!(at("todo.completed.v1 written in the page") < at("todo.created.v1 written in the page"), "{events:?}");
    browser.finished().await;
    for shot in ["todo-swagger-try-it-out.png", "todo-live-page.png"] {
        assert!(shots.join(shot).is_file(), "no {shot}");
    }
}

/// The schema is checked at every start: a table changed by hand stops the service
/// (the drift check), and so do pending migrations when it may not apply them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifted_schema_or_pending_migrations_stop_it() {
    let name = platform_core::testkit::unique_ident("drift");
    let dir = std::env::temp_dir().join(&name);
    let settings = settings_in(&dir, &name, "http://127.0.0.1:1");
    build(&settings, CancellationToken::new()).await.expect("the first start migrates");
    build(&settings, CancellationToken::new()).await.expect("a second start finds nothing to do");
    let db = platform_db::open(&settings.database_url).await.unwrap();
    db.execute(&platform_db::Sql::new("ALTER TABLE todos ADD COLUMN added_by_hand TEXT")).await.unwrap();
    let e = build(&settings, CancellationToken::new()).await.expect_err("a drifted schema stops it");
    assert!(e.to_string().contains("drifted"), "{e}");

    // A database two migrations behind, and a service that may only check.
    let behind = std::env::temp_dir().join(format!("{name}-behind"));
    let settings =
        Settings { migrate_on_start: false, ..settings_in(&behind, &format!("{name}-b"), "http://127.0.0.1:1") };
    let db = platform_db::open(&settings.database_url).await.unwrap();
    let mut older = platform_examples::todo::migrations();
    older.truncate(older.len() - 2);
    platform_db::migrate::Migrator::new(older).run(&db).await.unwrap();
    let e = build(&settings, CancellationToken::new()).await.expect_err("pending migrations stop it");
    assert!(e.to_string().contains("2 migrations are pending"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(behind);
}

/// The flow on MariaDB (`DATABASE_URL=mysql://…`, a fresh database): the same routes,
/// the same tenant scope, the same events on `/ws`.
#[cfg(feature = "full")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_on_mariadb() {
    use platform_db::testkit::Harness as _;
    let Some(mysql) = platform_core::testkit::server_url("MYSQL") else { return };
    let url = platform_db::testkit::UrlHarness::new(mysql).fresh_url().await.unwrap();
    let app = start_with(|s| s.database_url = url).await;
    let alice = app.user("alice@example.com").await;
    let bob = app.user("bob@example.com").await;
    let ws: Value =
        app.post(Some(&alice), "/v1/workspaces", Some("w"), json!({"name": "home"})).await.json().await.unwrap();
    let id = ws["id"].as_str().unwrap();
    let mut listener = app.ws(&alice).await;
    send(&mut listener, json!({"op": "subscribe", "channel": channel_of(id)})).await;
    assert_eq!(next(&mut listener).await["type"], "subscribed");
    let todos = format!("/v1/workspaces/{id}/todos");
    let r = app.post(Some(&alice), &todos, Some("t"), json!({"title": "on mariadb"})).await;
    assert_eq!(r.status(), 201);
    let again = app.post(Some(&alice), &todos, Some("t"), json!({"title": "on mariadb"})).await;
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(next(&mut listener).await["data"]["data"]["todo"]["title"], "on mariadb");
    assert_eq!(app.get(Some(&bob), &todos).await.status(), 404, "another user's workspace does not exist");
    let list: Value = app.get(Some(&alice), &todos).await.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let up: Value = app.get(None, "/up").await.json().await.unwrap();
    assert_eq!(up["status"], "up", "{up}");
    assert!(up.to_string().contains("MariaDB"), "{up}");
}
