//! Idempotency keys over real HTTP: a mutation route on `Idempotent`, served on a
//! loopback port behind the platform's HTTP contract, called with reqwest, on SQLite,
//! PostgreSQL and MariaDB.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use platform_db::http::{IdempotencyScope, Idempotent, StoredResponse};
use platform_db::migrate::{Migration, Migrator};
use platform_db::testkit::{Harness as _, UrlHarness};
use platform_db::{Db, Sql, idempotency};
use serde_json::{Value, json};

#[derive(serde::Deserialize)]
struct NewTodo {
    title: String,
    #[serde(default)]
    slow_ms: u64,
}

async fn create(State(db): State<Db>, idem: Idempotent) -> Response {
    let todo: NewTodo = match idem.json() {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    idem.run(&db, move |tx| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(todo.slow_ms)).await;
            tx.execute(&Sql::new("INSERT INTO todos (title) VALUES (?)").bind(todo.title.clone())).await?;
            if todo.title == "fail" {
                return Err(platform_core::Error::unavailable("the mail server is down"));
            }
            StoredResponse::json(axum::http::StatusCode::CREATED, &json!({ "title": todo.title }))
        })
    })
    .await
}

async fn start(db: Db) -> String {
    let app = Router::new()
        .route("/v1/todos", post(create))
        .route("/v1/scoped", post(create).layer(Extension(IdempotencyScope("alice".into()))).with_state(db.clone()))
        .with_state(db);
    let app = platform_core::http::Contract::new("todos", "1").apply(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn setup(harness: UrlHarness) -> (Db, String) {
    let url = harness.fresh_url().await.unwrap();
    let db = platform_db::open(&url).await.unwrap();
    Migrator::new(vec![
        idempotency::migration(1),
        Migration::new(2, "todos", "CREATE TABLE todos (title VARCHAR(200) NOT NULL)"),
    ])
    .run(&db)
    .await
    .unwrap();
    let base = start(db.clone()).await;
    (db, base)
}

async fn rows(db: &Db) -> i64 {
    db.fetch_all(&Sql::new("SELECT COUNT(*) AS n FROM todos")).await.unwrap()[0].get::<i64>("n").unwrap()
}

async fn post_todo(base: &str, path: &str, key: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(format!("{base}{path}")).json(&body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    req.send().await.unwrap()
}

async fn the_draft_cases(harness: Option<UrlHarness>) {
    let Some(harness) = harness else { return };
    let (db, base) = setup(harness).await;

    let first = post_todo(&base, "/v1/todos", Some("k-1"), json!({"title": "milk"})).await;
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotency-replayed").is_none());
    assert_eq!(first.headers()["idempotency-key-expires"], "86400");
    assert_eq!(first.json::<Value>().await.unwrap(), json!({"title": "milk"}));

    // A retry after completion: the stored response, nothing run again.
    let again = post_todo(&base, "/v1/todos", Some("k-1"), json!({"title": "milk"})).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(again.headers()["content-type"], "application/json");
    assert_eq!(again.json::<Value>().await.unwrap(), json!({"title": "milk"}));
    assert_eq!(rows(&db).await, 1);

    // The X- spelling reaches the same key.
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/todos"))
        .header("x-idempotency-key", "k-1")
        .json(&json!({"title": "milk"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["idempotency-replayed"], "true");

    // Same key, other payload: 422.
    let res = post_todo(&base, "/v1/todos", Some("k-1"), json!({"title": "eggs"})).await;
    assert_eq!(res.status(), 422);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], 422);
    assert!(body["correlation_id"].is_string());

    // Missing, or malformed: 400.
    let res = post_todo(&base, "/v1/todos", None, json!({"title": "bread"})).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap()["details"][0]["field"], "Idempotency-Key");
    let long = "k".repeat(300);
    assert_eq!(post_todo(&base, "/v1/todos", Some(&long), json!({"title": "x"})).await.status(), 400);

    // Failed work stores nothing: the retry runs afresh.
    let res = post_todo(&base, "/v1/todos", Some("k-fail"), json!({"title": "fail"})).await;
    assert_eq!(res.status(), 503);
    let res = post_todo(&base, "/v1/todos", Some("k-fail"), json!({"title": "fail"})).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("idempotency-replayed").is_none());
    assert_eq!(rows(&db).await, 1, "the failed inserts rolled back with their keys");

    // Another client's key of the same name is its own.
    let res = post_todo(&base, "/v1/scoped", Some("k-1"), json!({"title": "milk"})).await;
    assert_eq!(res.status(), 201);
    assert!(res.headers().get("idempotency-replayed").is_none());
    assert_eq!(rows(&db).await, 2);

    // Two at once with one key: one runs, the other gets 409 (or, if it came after
    // the first finished, on a busy machine, the replay); the work ran once.
    let slow = json!({"title": "slow", "slow_ms": 2000});
    let (a, b) = tokio::join!(
        post_todo(&base, "/v1/todos", Some("k-race"), slow.clone()),
        post_todo(&base, "/v1/todos", Some("k-race"), slow.clone())
    );
    let (a_replayed, b_replayed) =
        (a.headers().contains_key("idempotency-replayed"), b.headers().contains_key("idempotency-replayed"));
    let mut statuses = [a.status().as_u16(), b.status().as_u16()];
    statuses.sort_unstable();
    if statuses == [201, 409] {
        let conflict = if a.status() == 409 { a } else { b };
        assert_eq!(conflict.headers()["retry-after"], "1");
        assert_eq!(conflict.headers()["content-type"], "application/problem+json");
    } else {
        assert_eq!(statuses, [201, 201], "one runs, the other is refused or replayed");
        assert!(a_replayed != b_replayed, "exactly one of them is the replay");
    }
    assert_eq!(rows(&db).await, 3, "the work ran once");
    let res = post_todo(&base, "/v1/todos", Some("k-race"), slow).await;
    assert_eq!(res.headers()["idempotency-replayed"], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_idempotency_over_http() {
    the_draft_cases(Some(UrlHarness::sqlite_temp())).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_idempotency_over_http() {
    the_draft_cases(UrlHarness::from_env("POSTGRES")).await;
}

#[cfg(feature = "mysql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_idempotency_over_http() {
    the_draft_cases(UrlHarness::from_env("MYSQL")).await;
}
