//! The todo service end to end on its embedded defaults (SQLite, the in-process bus
//! and broadcast), over real HTTP and a real WebSocket: register, log in, create a
//! workspace and todos, see their events live, and be kept out of other workspaces.

use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use platform_examples::todo::{Settings, build, channel_of};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Running {
    base: String,
    http: reqwest::Client,
    _stop: tokio_util::sync::DropGuard,
    _dir: std::path::PathBuf,
}

async fn start() -> Running {
    let name = platform_core::testkit::unique_ident("todo");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let settings = Settings {
        database_url: format!("sqlite://{}", dir.join("todo.db").display()),
        events_url: format!("memory://{name}"),
        broadcast_url: format!("memory://{name}"),
        shared_ws_key: platform_core::Secret::new("a-shared-key-for-the-tests".to_owned()),
        addr: "127.0.0.1:0".into(),
    };
    let stop = CancellationToken::new();
    let service = build(&settings, stop.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, service.router).await });
    Running { base, http: reqwest::Client::new(), _stop: stop.drop_guard(), _dir: dir }
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

    async fn ws(&self, token: &str) -> Ws {
        let url = format!("{}/ws?access_token={token}", self.base.replacen("http", "ws", 1));
        tokio_tungstenite::connect_async(url).await.expect("connect").0
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::Text(frame.to_string().into())).await.unwrap();
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time").expect("open").unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_on_embedded_defaults() {
    let app = start().await;
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
