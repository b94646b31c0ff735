//! The conformance suite: one `pub async fn` per behaviour, run against a real store
//! through a [`Harness`] that makes fresh, uniquely named buckets.
//! [`conformance_tests!`](crate::conformance_tests) writes one test per behaviour.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use platform_core::testkit::{server_url, unique_name};
use platform_core::{ErrorKind, HealthCheck as _, Result};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    Attributes, BlobStore, BlobStoreExt as _, ByteRange, GetOptions, ListOptions, PresignMethod, PutOptions,
    byte_stream,
};

#[doc(hidden)]
pub use platform_core::behaviour_tests;

/// Makes fresh stores for the suite.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The URL of a new, empty, uniquely named bucket (container, directory), with
    /// `extra` query parameters appended.
    async fn fresh_url(&self, extra: &str) -> Result<String>;
}

/// The backends the suite knows how to make buckets on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UrlHarness {
    /// `memory://`: every open is a new store.
    Memory,
    /// A fresh directory under the temp dir.
    Fs,
    /// An S3-compatible server at this endpoint (buckets created with a plain PUT, as
    /// moto accepts).
    S3(String),
    /// Azurite's blob endpoint (`http://127.0.0.1:10000/devstoreaccount1`).
    Azure(String),
    /// A GCS XML API endpoint with the store URL's parameters after it
    /// (`http://127.0.0.1:4443?service_account_path=/path/key.json`); buckets are
    /// created through the JSON API.
    Gcs(String),
}

impl UrlHarness {
    /// `PLATFORM_TEST_S3_URL`, skipped (or failed under `PLATFORM_TEST_REQUIRE_ALL`) when unset.
    pub fn s3_from_env() -> Option<Self> {
        server_url("S3").map(Self::S3)
    }

    /// `PLATFORM_TEST_AZURE_URL`.
    pub fn azure_from_env() -> Option<Self> {
        server_url("AZURE").map(Self::Azure)
    }

    /// `PLATFORM_TEST_GCS_URL`.
    pub fn gcs_from_env() -> Option<Self> {
        server_url("GCS").map(Self::Gcs)
    }
}

fn join(url: String, extra: &str) -> String {
    match (extra.is_empty(), url.contains('?')) {
        (true, _) => url,
        (false, true) => format!("{url}&{extra}"),
        (false, false) => format!("{url}?{extra}"),
    }
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> platform_core::Error {
    platform_core::Error::unavailable(format!("test bucket setup: {what}: {e}"))
}

/// The well-known Azurite account key.
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

async fn azurite_container(endpoint: &str, container: &str) -> Result<()> {
    use base64::Engine as _;
    use hmac::Mac as _;
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let date = time::OffsetDateTime::now_utc().format(&fmt).map_err(|e| setup_err("date", e))?;
    let version = "2021-08-06";
    let account = endpoint.trim_end_matches('/').rsplit('/').next().unwrap_or("devstoreaccount1");
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{account}/{account}/{container}\nrestype:container"
    );
    let key = base64::engine::general_purpose::STANDARD.decode(AZURITE_KEY).map_err(|e| setup_err("key", e))?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&key).map_err(|e| setup_err("key", e))?;
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let response = reqwest::Client::new()
        .put(format!("{}/{container}?restype=container", endpoint.trim_end_matches('/')))
        .header("x-ms-date", date)
        .header("x-ms-version", version)
        .header("content-length", "0")
        .header("authorization", format!("SharedKey {account}:{signature}"))
        .send()
        .await
        .map_err(|e| setup_err("create container", e))?;
    if !response.status().is_success() {
        return Err(setup_err("create container", response.text().await.unwrap_or_default()));
    }
    Ok(())
}

#[async_trait]
impl Harness for UrlHarness {
    async fn fresh_url(&self, extra: &str) -> Result<String> {
        // Letters and digits only: some emulators don't decode a percent-encoded '-'.
        let bucket = unique_name("t").replace('-', "");
        let url = match self {
            Self::Memory => "memory://".to_owned(),
            Self::Fs => {
                let dir = std::env::temp_dir().join("platform-store-conformance").join(&bucket);
                format!("file://{}", dir.display())
            }
            Self::S3(endpoint) => {
                let response = reqwest::Client::new()
                    .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
                    .send()
                    .await
                    .map_err(|e| setup_err("create bucket", e))?;
                if !response.status().is_success() {
                    return Err(setup_err("create bucket", response.status()));
                }
                format!("s3://{bucket}?endpoint={endpoint}&region=us-east-1&access_key_id=test&secret_access_key=test")
            }
            Self::Azure(endpoint) => {
                azurite_container(endpoint, &bucket).await?;
                format!("az://{bucket}?azurite=true")
            }
            Self::Gcs(base) => {
                let (endpoint, params) = base.split_once('?').unwrap_or((base.as_str(), "anonymous=true"));
                let response = reqwest::Client::new()
                    .post(format!("{}/storage/v1/b?project=test", endpoint.trim_end_matches('/')))
                    .header("content-type", "application/json")
                    .body(format!("{{\"name\":\"{bucket}\"}}"))
                    .send()
                    .await
                    .map_err(|e| setup_err("create bucket", e))?;
                if !response.status().is_success() {
                    return Err(setup_err("create bucket", response.status()));
                }
                format!("gs://{bucket}?endpoint={endpoint}&{params}")
            }
        };
        Ok(join(url, extra))
    }
}

/// Runs every behaviour in turn (the macro runs them as separate tests instead).
pub async fn run_all(h: &dyn Harness) {
    use platform_core::run_behaviours;
    crate::store_behaviours!(run_behaviours!(h));
}

/// Writes one `#[tokio::test]` per behaviour for a backend:
/// `conformance_tests!(s3, UrlHarness::s3_from_env());`
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::store_behaviours!($crate::testkit::behaviour_tests!($backend, $crate::testkit, $harness));
    };
}

/// Every behaviour of the suite, listed once: [`conformance_tests!`](crate::conformance_tests)
/// writes one test per behaviour from it and [`run_all`] runs them in turn, so a
/// behaviour cannot be written and never run. Calls `$then!(…, behaviour, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! store_behaviours {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*,
            round_trips_small_objects_and_attributes,
            large_object_streams_in_bounded_memory,
            range_reads_at_the_edges,
            conditional_puts_race_one_winner,
            list_pages_with_a_delimiter,
            copy_and_delete,
            unicode_and_spaces_in_keys,
            presigned_urls_work_with_a_plain_client,
            content_refs_detect_corruption,
            health_and_url_parameters
        }
    };
}

async fn fresh(h: &dyn Harness) -> Arc<dyn BlobStore> {
    crate::open(&h.fresh_url("").await.expect("fresh bucket")).await.expect("open")
}

/// Empty, one-byte, non-UTF-8 and 1 MiB objects come back byte for byte; `head` tells
/// size and etag; attributes and user metadata survive where the backend keeps them.
pub async fn round_trips_small_objects_and_attributes(h: &dyn Harness) {
    let store = fresh(h).await;
    let mib: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    for (key, body) in [("empty", vec![]), ("one", vec![7]), ("binary", vec![0, 159, 146, 150, 255]), ("mib", mib)] {
        let put = store.put_bytes(key, body.clone()).await.unwrap();
        assert_eq!(put.size, body.len() as u64);
        assert_eq!(store.get_bytes(key).await.unwrap(), body, "{key}");
        let head = store.head(key).await.unwrap();
        assert_eq!(head.size, body.len() as u64);
        assert!(head.version.etag.is_some(), "{key} has an etag");
    }
    let attributes = Attributes::default()
        .with_content_type("text/csv")
        .with_cache_control("max-age=60")
        .with_metadata("owner", "reports");
    let options = PutOptions::default().with_attributes(attributes.clone());
    if store.capabilities().attributes {
        store.put("with-attributes.csv", Bytes::from_static(b"a,b\n"), options).await.unwrap();
        let head = store.head("with-attributes.csv").await.unwrap();
        assert_eq!(head.attributes.content_type.as_deref(), Some("text/csv"));
        assert_eq!(head.attributes.cache_control.as_deref(), Some("max-age=60"));
        assert_eq!(head.attributes.metadata.get("owner").map(String::as_str), Some("reports"));
        let got = store.get("with-attributes.csv", GetOptions::default()).await.unwrap();
        assert_eq!(got.info.attributes.content_type.as_deref(), Some("text/csv"));
    } else {
        let err = store.put("with-attributes.csv", Bytes::new(), options).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
    }
    assert_eq!(store.get_bytes("missing").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(store.head("missing").await.unwrap_err().kind(), ErrorKind::NotFound);
}

static LARGE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn current_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A 100 MiB object streams up in parts and back down with the process's peak memory
/// growing by far less than the object (one large test at a time per process).
pub async fn large_object_streams_in_bounded_memory(h: &dyn Harness) {
    const MIB: usize = 1 << 20;
    const SIZE_MIB: usize = 100;
    let store = fresh(h).await;
    let _one_at_a_time = LARGE.lock().await;
    // Reset the peak, where the kernel allows it, so the measurement is this test's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = current_rss_kib().unwrap_or(0);
    let chunk = Bytes::from((0..MIB).map(|i| (i % 253) as u8).collect::<Vec<u8>>());
    let mut expected = Sha256::new();
    for _ in 0..SIZE_MIB {
        expected.update(&chunk);
    }
    // A fresh buffer per chunk, as a real source (file, socket) hands out.
    let source = chunk.clone();
    let body = byte_stream(futures::stream::iter((0..SIZE_MIB).map(move |_| Ok(Bytes::from(source.to_vec())))));
    let started = std::time::Instant::now();
    let info = store.put_stream("large.bin", body, PutOptions::default()).await.expect("streamed upload");
    let up = started.elapsed();
    assert_eq!(info.size, (SIZE_MIB * MIB) as u64);
    let started = std::time::Instant::now();
    let got = store.get("large.bin", GetOptions::default()).await.unwrap();
    let mut actual = Sha256::new();
    let mut size = 0_u64;
    let mut body = got.body;
    while let Some(part) = body.try_next().await.unwrap() {
        size += part.len() as u64;
        actual.update(&part);
    }
    let down = started.elapsed();
    assert_eq!(size, (SIZE_MIB * MIB) as u64);
    assert_eq!(actual.finalize(), expected.finalize(), "content differs");
    let peak = peak_rss_kib().unwrap_or(0);
    let growth_mib = peak.saturating_sub(before) / 1024;
    println!(
        "{}: 100 MiB up in {up:?}, down in {down:?}; peak RSS grew {growth_mib} MiB (from {} MiB)",
        store.backend(),
        before / 1024
    );
    // The memory backend keeps the object itself in this process (once: as its parts).
    let kept = if store.backend() == "memory" { SIZE_MIB as u64 } else { 0 };
    assert!(growth_mib < 80 + kept, "peak memory grew {growth_mib} MiB for a 100 MiB object");
    store.delete("large.bin").await.unwrap();
}

/// Ranges at the edges: first byte, last byte, a range past the end (clamped), an
/// offset, a suffix; a range starting past the end is `InvalidInput`.
pub async fn range_reads_at_the_edges(h: &dyn Harness) {
    let store = fresh(h).await;
    let body: Vec<u8> = (0..1000_u32).map(|i| (i % 256) as u8).collect();
    store.put_bytes("r", body.clone()).await.unwrap();
    let read = |r: ByteRange| {
        let store = Arc::clone(&store);
        async move { store.get("r", GetOptions::range(r)).await?.bytes().await }
    };
    assert_eq!(read(ByteRange::Bounded(0, 1)).await.unwrap(), body[..1]);
    assert_eq!(read(ByteRange::Bounded(999, 1000)).await.unwrap(), body[999..]);
    assert_eq!(read(ByteRange::Bounded(990, 5000)).await.unwrap(), body[990..], "end is clamped");
    assert_eq!(read(ByteRange::From(995)).await.unwrap(), body[995..]);
    assert_eq!(read(ByteRange::Suffix(3)).await.unwrap(), body[997..]);
    assert_eq!(read(ByteRange::Bounded(100, 200)).await.unwrap(), body[100..200]);
    let got = store.get("r", GetOptions::range(ByteRange::Bounded(10, 20))).await.unwrap();
    assert_eq!((got.range.clone(), got.info.size), (10..20, 1000));
    let err = read(ByteRange::Bounded(2000, 3000)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

/// Two writers race: create-only lets exactly one through (`AlreadyExists` for the
/// other); update-if-version lets exactly one through (`Conflict` for the other), and
/// the object holds the winner's bytes. Conditional gets follow etags.
pub async fn conditional_puts_race_one_winner(h: &dyn Harness) {
    let store = fresh(h).await;
    let caps = store.capabilities();
    if caps.create_only {
        let (a, b) = tokio::join!(
            store.put("once", Bytes::from_static(b"a"), PutOptions::create()),
            store.put("once", Bytes::from_static(b"b"), PutOptions::create())
        );
        let errors: Vec<_> = [&a, &b].into_iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(errors.len(), 1, "exactly one create wins: {a:?} {b:?}");
        assert_eq!(errors[0].kind(), ErrorKind::AlreadyExists);
        let winner = if a.is_ok() { &b"a"[..] } else { &b"b"[..] };
        assert_eq!(store.get_bytes("once").await.unwrap(), winner);
    }
    if caps.update_if_version {
        let v1 = store.put_bytes("doc", "v1").await.unwrap();
        let version = store.head("doc").await.unwrap().version;
        assert_eq!(version.etag, v1.version.etag);
        let (a, b) = tokio::join!(
            store.put("doc", Bytes::from_static(b"from a"), PutOptions::update(version.clone())),
            store.put("doc", Bytes::from_static(b"from b"), PutOptions::update(version.clone()))
        );
        let errors: Vec<_> = [&a, &b].into_iter().filter_map(|r| r.as_ref().err()).collect();
        assert_eq!(errors.len(), 1, "exactly one update wins: {a:?} {b:?}");
        assert_eq!(errors[0].kind(), ErrorKind::Conflict);
        let winner = if a.is_ok() { &b"from a"[..] } else { &b"from b"[..] };
        assert_eq!(store.get_bytes("doc").await.unwrap(), winner);
        let stale = store.put("doc", Bytes::from_static(b"stale"), PutOptions::update(version.clone())).await;
        assert_eq!(stale.unwrap_err().kind(), ErrorKind::Conflict);
        let gone = store.put("never-there", Bytes::new(), PutOptions::update(version)).await;
        assert_eq!(gone.unwrap_err().kind(), ErrorKind::Conflict);
    }
    store.put_bytes("cond", "x").await.unwrap();
    let etag = store.head("cond").await.unwrap().version.etag.unwrap();
    store.get("cond", GetOptions::default().with_if_match(etag.clone())).await.unwrap();
    let err = store.get("cond", GetOptions::default().with_if_match("\"nope\"")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    let err = store.get("cond", GetOptions::default().with_if_none_match(etag)).await.unwrap_err();
    assert!(crate::is_not_modified(&err), "{err}");
}

/// 2,500 keys: pages of 1,000 cover all exactly once in order; with the delimiter,
/// deeper keys fold into common prefixes; the stream lists everything.
pub async fn list_pages_with_a_delimiter(h: &dyn Harness) {
    let store = fresh(h).await;
    let mut keys = Vec::new();
    for i in 0..2000 {
        keys.push(format!("p/deep/{i:04}"));
    }
    for i in 0..300 {
        keys.push(format!("p/other/x{i:03}"));
    }
    for i in 0..200 {
        keys.push(format!("p/top{i:03}"));
    }
    futures::stream::iter(keys.clone())
        .map(|k| {
            let store = Arc::clone(&store);
            async move { store.put_bytes(&k, "x").await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    store.put_bytes("q/outside", "x").await.unwrap();

    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = store.list_page(ListOptions::prefix("p/").with_limit(1000).with_token(token)).await.unwrap();
        pages += 1;
        assert!(page.objects.len() <= 1000);
        seen.extend(page.objects.into_iter().map(|o| o.key));
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    keys.sort();
    assert_eq!(pages, 3);
    assert_eq!(seen, keys, "every key once, in order");

    let mut objects = Vec::new();
    let mut prefixes = Vec::new();
    let mut token = None;
    loop {
        let page =
            store.list_page(ListOptions::prefix("p/").with_delimiter().with_limit(50).with_token(token)).await.unwrap();
        objects.extend(page.objects.into_iter().map(|o| o.key));
        prefixes.extend(page.prefixes);
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(prefixes, ["p/deep/", "p/other/"]);
    assert_eq!(objects.len(), 200);
    assert!(objects.iter().all(|k| k.starts_with("p/top")));

    let listed: BTreeSet<String> = store.list("p/").map_ok(|o| o.key).try_collect().await.unwrap();
    assert_eq!(listed.len(), 2500);
    let partial: Vec<_> = store.list("p/to").try_collect().await.unwrap();
    assert_eq!(partial.len(), 200, "a prefix need not end at a '/'");
    let err = store.list_page(ListOptions::prefix("p/").with_token(Some("zz".into()))).await.unwrap_err();
    assert!(err.is_invalid_input());
}

/// Copy overwrites or refuses as asked; deleting twice is fine; a deleted key is gone.
pub async fn copy_and_delete(h: &dyn Harness) {
    let store = fresh(h).await;
    store.put_bytes("src", "source").await.unwrap();
    store.put_bytes("dst", "old").await.unwrap();
    let err = store.copy_if_absent("src", "dst").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert_eq!(store.get_bytes("dst").await.unwrap(), "old");
    store.copy("src", "dst").await.unwrap();
    assert_eq!(store.get_bytes("dst").await.unwrap(), "source");
    store.copy_if_absent("src", "fresh-copy").await.unwrap();
    assert_eq!(store.get_bytes("fresh-copy").await.unwrap(), "source");
    assert_eq!(store.copy("missing", "x").await.unwrap_err().kind(), ErrorKind::NotFound);
    store.delete("src").await.unwrap();
    store.delete("src").await.unwrap();
    store.delete("never-existed").await.unwrap();
    assert_eq!(store.get_bytes("src").await.unwrap_err().kind(), ErrorKind::NotFound);
}

/// Unicode, spaces and URL-special characters in keys round-trip through put, get and
/// list; malformed keys are `InvalidInput` before any I/O.
pub async fn unicode_and_spaces_in_keys(h: &dyn Harness) {
    let store = fresh(h).await;
    let keys = ["héllo wörld/ü 1.txt", "spaces in/the name.txt", "a+b=c&d;e.txt", "日本語/ファイル.txt", "100%/done"];
    for key in keys {
        store.put_bytes(key, key.as_bytes().to_vec()).await.unwrap_or_else(|e| panic!("{key}: {e}"));
        assert_eq!(store.get_bytes(key).await.unwrap(), key.as_bytes());
    }
    let listed: BTreeSet<String> = store.list("").map_ok(|o| o.key).try_collect().await.unwrap();
    assert_eq!(listed, keys.iter().map(|k| (*k).to_owned()).collect());
    for bad in ["", "/lead", "trail/", "a//b", "a/../b", "tab\there"] {
        let err = store.put_bytes(bad, "x").await.unwrap_err();
        assert!(err.is_invalid_input(), "{bad:?}: {err}");
    }
}

/// Serves presigned URLs of a local store: checks them with the [`Verifier`] and reads or
/// writes the store, as an application's handler would.
async fn serve_presigned(
    listener: tokio::net::TcpListener,
    store: Arc<dyn BlobStore>,
    verifier: crate::presign::Verifier,
) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { return };
        let (store, verifier) = (Arc::clone(&store), verifier.clone());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0_u8; 8192];
            let head_end = loop {
                let Ok(n) = socket.read(&mut chunk).await else { return };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let mut words = head.split_whitespace();
            let (method, target) = (words.next().unwrap_or("").to_owned(), words.next().unwrap_or("").to_owned());
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = buf[head_end..].to_vec();
            while body.len() < length {
                let Ok(n) = socket.read(&mut chunk).await else { return };
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let encoded_key = path.strip_prefix("/blobs/").unwrap_or(path);
            let (status, reply) = match verifier.verify(&method, encoded_key, query) {
                Err(e) => (403, e.to_string().into_bytes()),
                Ok(key) if method == "PUT" => match store.put_bytes(&key, body).await {
                    Ok(_) => (200, Vec::new()),
                    Err(e) => (500, e.to_string().into_bytes()),
                },
                Ok(key) => match store.get_bytes(&key).await {
                    Ok(b) => (200, b.to_vec()),
                    Err(e) => (404, e.to_string().into_bytes()),
                },
            };
            let head = format!("HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", reply.len());
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(&reply).await;
        });
    }
}

/// A presigned PUT and GET work with a plain HTTP client; a tampered URL is refused.
/// Local stores serve them through the [`Verifier`](crate::presign::Verifier).
pub async fn presigned_urls_work_with_a_plain_client(h: &dyn Harness) {
    let secret = "a-test-secret-of-some-length";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let extra = format!("presign_secret={secret}&presign_base=http://127.0.0.1:{port}/blobs/");
    let url = h.fresh_url("").await.unwrap();
    let store = if url.starts_with("memory:") || url.starts_with("file:") {
        let store = crate::open(&join(url, &extra)).await.unwrap();
        tokio::spawn(serve_presigned(
            listener,
            Arc::clone(&store),
            crate::presign::Verifier::new(secret.as_bytes().to_vec()),
        ));
        store
    } else {
        crate::open(&url).await.unwrap()
    };
    if !store.capabilities().presign {
        let err = store.presign(PresignMethod::Get, "k", Duration::from_secs(60)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        println!("{}: presign not supported with this configuration", store.backend());
        return;
    }
    let client = reqwest::Client::new();
    let key = "shared/report-1.txt";
    let put = store.presign(PresignMethod::Put, key, Duration::from_secs(300)).await.unwrap();
    // Azure wants the blob type on every PUT; other stores ignore the header.
    let response = client
        .put(put.clone())
        .header("x-ms-blob-type", "BlockBlob")
        .body("uploaded through a presigned URL")
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "PUT {put}: {}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    assert_eq!(store.get_bytes(key).await.unwrap(), "uploaded through a presigned URL");
    let get = store.presign(PresignMethod::Get, key, Duration::from_secs(300)).await.unwrap();
    let response = client.get(get.clone()).send().await.unwrap();
    assert!(response.status().is_success(), "GET {}", response.status());
    assert_eq!(response.bytes().await.unwrap(), "uploaded through a presigned URL");
    if matches!(store.backend(), "memory" | "fs") {
        // Checking the signature of a cloud URL is the vendor's job (moto, for one, skips it).
        let mut tampered = get.clone();
        let query: String = get.query().unwrap_or("").replace("Signature=", "Signature=0");
        tampered.set_query(Some(&query));
        let status = client.get(tampered).send().await.unwrap().status();
        assert!(status.is_client_error(), "a tampered URL is refused, got {status}");
    }
    assert!(
        store
            .presign(PresignMethod::Get, key, Duration::from_secs(8 * 24 * 3600))
            .await
            .unwrap_err()
            .is_invalid_input()
    );
    // Keys that need percent-encoding: a URL that works, or Unsupported, never a broken URL.
    let spaced = "shared/report 2.txt";
    match store.presign(PresignMethod::Get, spaced, Duration::from_secs(300)).await {
        Ok(url) => {
            store.put_bytes(spaced, "spaced").await.unwrap();
            let response = client.get(url).send().await.unwrap();
            assert!(response.status().is_success(), "GET spaced key: {}", response.status());
            assert_eq!(response.bytes().await.unwrap(), "spaced");
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}"),
    }
}

/// Content refs: the same bytes give the same ref (stored once), streamed or not; a
/// corrupted object fails `get_verified` with `Conflict`.
pub async fn content_refs_detect_corruption(h: &dyn Harness) {
    let store = fresh(h).await;
    let body = Bytes::from((0..3 << 20).map(|i: u32| (i % 241) as u8).collect::<Vec<u8>>());
    let a = store.put_content(body.clone()).await.unwrap();
    let b = store.put_content(body.clone()).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.size, body.len() as u64);
    assert!(a.key.ends_with(&a.sha256));
    let chunks: Vec<Result<Bytes>> = body.chunks(1 << 20).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    let streamed = store.put_content_stream(byte_stream(futures::stream::iter(chunks))).await.unwrap();
    assert_eq!(streamed, a);
    assert_eq!(store.get_verified(&a).await.unwrap(), body);
    let staging: Vec<_> = store.list("cas/staging/").try_collect().await.unwrap();
    assert!(staging.is_empty(), "staging objects are cleaned up");
    store.put_bytes(&a.key, "corrupted").await.unwrap();
    let err = store.get_verified(&a).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.message().contains(&a.key), "{err}");
}

/// The health check does a round trip; unknown URL parameters are errors naming them.
pub async fn health_and_url_parameters(h: &dyn Harness) {
    let store = fresh(h).await;
    store.check().await.expect("health");
    assert!(store.to_string().starts_with("BlobStore("));
    let url = h.fresh_url("bogus_param=1").await.unwrap();
    let err = crate::open(&url).await.unwrap_err();
    assert!(err.is_invalid_input() && err.to_string().contains("bogus_param"), "{err}");
}
