//! The SQL stores on every database platform-db speaks, and a service where five methods
//! share one chain and the principal's tenant scopes the database work.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use platform_auth::api_key::{ApiKeyStore as _, ApiKeys};
use platform_auth::ingest::{MemorySecrets, ReplayGuard as _, SignedIngest, decode_secret, sign};
use platform_auth::jwt::{Issuer, Jwt, StaticKeys};
use platform_auth::password::{BasicAuth, MemoryPasswords, PasswordUser, Passwords};
use platform_auth::shared_key::SharedKey;
use platform_auth::sql::{self, SqlApiKeys, SqlReplayGuard};
use platform_auth::testing::Forge;
use platform_auth::{AuthChain, Principal};
use platform_db::migrate::Migrator;
use platform_db::testkit::{Harness as _, UrlHarness};
use platform_db::{Db, Sql};

fn databases() -> Vec<(&'static str, UrlHarness)> {
    let mut out = vec![("sqlite", UrlHarness::sqlite_temp())];
    out.extend(UrlHarness::from_env("POSTGRES").map(|h| ("postgres", h)));
    out.extend(UrlHarness::from_env("MYSQL").map(|h| ("mysql", h)));
    out
}

async fn fresh(h: &UrlHarness) -> (String, Db) {
    let url = h.fresh_url().await.expect("database");
    let db = platform_db::open(&url).await.expect("open");
    Migrator::new(vec![sql::migration(1)]).run(&db).await.expect("migrate");
    (url, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_live_in_the_database() {
    for (name, h) in databases() {
        let (url, db) = fresh(&h).await;
        let store = Arc::new(SqlApiKeys::new(db));
        let keys = ApiKeys::new("pk", Arc::clone(&store) as _).unwrap();
        let (record, key) = keys.issue("importer", Some("acme"), &["todos:write", "todos:read"]).await.unwrap();
        keys.issue("other", Some("globex"), &[]).await.unwrap();
        // Another instance, another pool: the same keys.
        let elsewhere = ApiKeys::new("pk", Arc::new(SqlApiKeys::new(platform_db::open(&url).await.unwrap()))).unwrap();
        let who = elsewhere.verify(key.expose()).await.unwrap();
        assert_eq!((who.tenant.as_deref(), who.scopes.len()), (Some("acme"), 2), "{name}");
        let listed = store.list(Some("acme")).await.unwrap();
        assert_eq!(listed.len(), 1, "{name}");
        assert_eq!(listed[0].hash, record.hash, "{name}");
        assert_eq!(store.list(None).await.unwrap().len(), 2, "{name}");

        let (_, rotated) = keys.rotate(&record.id).await.unwrap();
        assert!(elsewhere.verify(key.expose()).await.unwrap_err().is_unauthenticated(), "{name}");
        elsewhere.verify(rotated.expose()).await.unwrap();
        assert!(store.revoke(&record.id).await.unwrap(), "{name}: revoking twice still finds it");
        assert!(!store.revoke("nonexistent").await.unwrap(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_take_a_delivery_once_between_them() {
    for (name, h) in databases() {
        let (url, db) = fresh(&h).await;
        let (a, b) = (SqlReplayGuard::new(db), SqlReplayGuard::new(platform_db::open(&url).await.unwrap()));
        let ttl = Duration::from_secs(600);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let g = if i % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { g.first_seen("ep_1", "msg_1", ttl).await.unwrap() })
            })
            .collect();
        let mut firsts = 0;
        for t in tasks {
            firsts += usize::from(t.await.unwrap());
        }
        assert_eq!(firsts, 1, "{name}: one instance took it");
        assert!(a.first_seen("ep_2", "msg_1", ttl).await.unwrap(), "{name}: ids are per endpoint");
        // A window that has passed: the id is new again, once.
        assert!(a.first_seen("ep_1", "msg_old", Duration::ZERO).await.unwrap(), "{name}");
        assert!(b.first_seen("ep_1", "msg_old", ttl).await.unwrap(), "{name}");
        assert!(!a.first_seen("ep_1", "msg_old", ttl).await.unwrap(), "{name}");
        assert!(a.purge_expired().await.unwrap() <= 1, "{name}");
    }
}

/// A TCP forwarder to `upstream`; dropping it cuts every connection and refuses new ones.
struct Proxy {
    addr: std::net::SocketAddr,
    tasks: tokio::task::JoinSet<()>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let conns = Arc::new(std::sync::Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let held = Arc::clone(&conns);
        tasks.spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let up = upstream.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(up).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        tasks.spawn(async move {
            // Cuts the connections when the proxy is dropped (this task is aborted).
            struct Cut(Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>);
            impl Drop for Cut {
                fn drop(&mut self) {
                    self.0.lock().unwrap().iter().for_each(tokio::task::AbortHandle::abort);
                }
            }
            let _cut = Cut(conns);
            std::future::pending::<()>().await;
        });
        Self { addr, tasks }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_goes_away_is_an_outage_not_a_refusal() {
    let servers: Vec<_> = databases().into_iter().filter(|(name, _)| *name != "sqlite").collect();
    for (name, h) in servers {
        let mut url = url::Url::parse(&h.fresh_url().await.unwrap()).unwrap();
        let db = platform_db::open(url.as_str()).await.unwrap();
        Migrator::new(vec![sql::migration(1)]).run(&db).await.unwrap();
        let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
        let proxy = Proxy::start(upstream).await;
        url.set_port(Some(proxy.addr.port())).unwrap();
        url.query_pairs_mut().append_pair("acquire_timeout", "1s");
        let db = platform_db::open(url.as_str()).await.unwrap();
        let keys = ApiKeys::new("pk", Arc::new(SqlApiKeys::new(db.clone()))).unwrap();
        let (_, key) = keys.issue("importer", None, &[]).await.unwrap();
        keys.verify(key.expose()).await.unwrap();
        let replay = SqlReplayGuard::new(db);
        let mut tasks = proxy.tasks;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        for e in [
            keys.verify(key.expose()).await.unwrap_err(),
            replay.first_seen("ep_1", "msg_1", Duration::from_secs(60)).await.unwrap_err(),
        ] {
            assert!(e.is_unavailable() || e.is_timeout(), "{name}: {e:?}");
        }
    }
}

#[derive(Clone)]
struct App {
    db: Db,
}

/// Notes of the caller's tenant: the principal's tenant scopes the transaction.
async fn notes(State(app): State<App>, who: Principal) -> Result<String, platform_core::Error> {
    let tenant = who.tenant.clone().ok_or_else(|| platform_core::Error::invalid_input("no tenant"))?;
    let count: i64 = app
        .db
        .with_tenant(&tenant, |tx| {
            Box::pin(async move {
                let t = tx.tenant().unwrap_or_default().to_owned();
                let insert = Sql::new("INSERT INTO notes (tenant_id, body) VALUES (?, ?)").bind(t.clone()).bind("hi");
                tx.execute(&insert).await?;
                let count = Sql::new("SELECT COUNT(*) AS n FROM notes WHERE tenant_id = ?").bind(t);
                tx.fetch_one(&count).await?.get("n")
            })
        })
        .await?;
    Ok(format!("{} {} {tenant} {count}", who.method, who.subject))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_methods_share_one_chain_in_a_service() {
    let (_, db) = fresh(&UrlHarness::sqlite_temp()).await;
    db.execute(&Sql::new("CREATE TABLE notes (tenant_id VARCHAR(255) NOT NULL, body TEXT NOT NULL)")).await.unwrap();
    let forge = Forge::new("https://id.test/acme", "todo-api").unwrap();
    let jwt = Jwt::new()
        .issuer(Issuer::new(forge.issuer(), "todo-api", Arc::new(StaticKeys(forge.key_set()))).tenant("acme"));
    let keys = ApiKeys::new("pk", Arc::new(SqlApiKeys::new(db.clone()))).unwrap();
    let (_, api_key) = keys.issue("importer", Some("globex"), &[]).await.unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("ep_1", &[secret]).unwrap();
    let passwords = Arc::new(Passwords::new().unwrap());
    let users = Arc::new(MemoryPasswords::default());
    users.insert("ada", PasswordUser::new("user-ada", Some("initech"), &[], passwords.hash("correct horse").unwrap()));
    let chain = AuthChain::new()
        .with(Arc::new(jwt))
        .with(Arc::new(keys))
        .with(Arc::new(SignedIngest::new(secrets, Arc::new(SqlReplayGuard::new(db.clone())))))
        .with(Arc::new(BasicAuth::new(users, passwords)))
        .with(Arc::new(SharedKey::new("a-shared-key-of-some-length").unwrap()));
    let app = Router::new()
        .route("/v1/notes", get(notes))
        .route("/v1/ingest/{endpoint}", post(|who: Principal| async move { who.subject }))
        .layer(axum::middleware::from_fn_with_state(Arc::new(chain), platform_auth::layer::authenticate))
        .with_state(App { db });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let said = |r: reqwest::RequestBuilder| async move {
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let notes = format!("{base}/v1/notes");

    assert_eq!(said(http.get(&notes).bearer_auth(forge.token())).await, (200, "jwt user-1 acme 1".into()));
    assert_eq!(said(http.get(&notes).bearer_auth(forge.token())).await, (200, "jwt user-1 acme 2".into()));
    let got = said(http.get(&notes).bearer_auth(api_key.expose())).await;
    assert_eq!(got.0, 200);
    assert!(got.1.starts_with("api_key api-key:") && got.1.ends_with(" globex 1"), "{got:?}");
    let got = said(http.get(&notes).basic_auth("ada", Some("correct horse"))).await;
    assert_eq!(got, (200, "password user-ada initech 1".into()));
    // The shared key has no tenant: the handler refuses it, the chain took it.
    let got = said(http.get(&notes).header("x-shared-key", "a-shared-key-of-some-length")).await;
    assert_eq!(got.0, 400);

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let body = b"\xff\x00 not utf-8".to_vec();
    let signature = sign(&decode_secret(secret).unwrap(), "msg_1", now, &body);
    let delivery = || {
        http.post(format!("{base}/v1/ingest/ep_1"))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature.clone())
            .body(body.clone())
    };
    assert_eq!(said(delivery()).await, (200, "ingest:ep_1".into()));
    assert_eq!(said(delivery()).await.0, 401, "the replay is refused by the database");
}
