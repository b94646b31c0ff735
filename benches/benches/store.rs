//! The same workload on every store backend and on `object_store` used directly, in one
//! run: put then get N small objects (4 KiB, 16 at a time), and put then get 20 objects
//! of 16 MiB (streamed up in parts, read back as a stream). Throughput is objects per
//! second (small) and bytes per second (large).
//!
//! Emulator URLs come from `PLATFORM_TEST_<NAME>_URL` (`source scripts/services.env`);
//! a backend whose URL is unset is left out. Against the emulators (moto, Azurite) the
//! small workload uses 1,000 objects, not 10,000: the emulator, not the client, is what
//! such a run would measure.
//!
//! `cargo bench -p platform-benches --bench store`

#![allow(missing_docs)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{runtime, timed, url};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart};
use platform_store::testkit::{Harness, UrlHarness};
use platform_store::{BlobStore, BlobStoreExt as _, PutOptions, byte_stream};

const SMALL: usize = 4096;
const LARGE: usize = 16 << 20;
const LARGE_COUNT: usize = 20;
const CONCURRENCY: usize = 16;

/// Both sides of one backend: ours (through `BlobStore`) and the raw `object_store`.
struct Pair {
    name: &'static str,
    ours: Arc<dyn BlobStore>,
    raw: Arc<dyn ObjectStore>,
    small_count: usize,
}

fn bucket_of(url: &str) -> String {
    url.split("://").nth(1).and_then(|rest| rest.split(['?', '/']).next()).unwrap_or_default().to_owned()
}

async fn pairs() -> Vec<Pair> {
    let mut out = Vec::new();
    out.push(Pair {
        name: "memory",
        ours: platform_store::open("memory://").await.expect("memory"),
        raw: Arc::new(object_store::memory::InMemory::new()),
        small_count: 10_000,
    });
    let dir = std::env::temp_dir().join(format!("platform-bench-store-{}", std::process::id()));
    let (ours_dir, raw_dir) = (dir.join("ours"), dir.join("raw"));
    std::fs::create_dir_all(&raw_dir).expect("dir");
    out.push(Pair {
        name: "fs",
        ours: platform_store::open(&format!("file://{}", ours_dir.display())).await.expect("fs"),
        raw: Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&raw_dir).expect("fs")),
        small_count: 10_000,
    });
    if let Some(endpoint) = url("S3") {
        let harness = UrlHarness::S3(endpoint.clone());
        let ours = harness.fresh_url("").await.expect("bucket");
        let raw_bucket = bucket_of(&harness.fresh_url("").await.expect("bucket"));
        let raw = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(raw_bucket)
            .with_endpoint(&endpoint)
            .with_region("us-east-1")
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .with_allow_http(true)
            .build()
            .expect("s3");
        out.push(Pair {
            name: "s3",
            ours: platform_store::open(&ours).await.expect("s3"),
            raw: Arc::new(raw),
            small_count: 1000,
        });
    }
    if let Some(endpoint) = url("AZURE") {
        let harness = UrlHarness::Azure(endpoint);
        let ours = harness.fresh_url("").await.expect("container");
        let raw_container = bucket_of(&harness.fresh_url("").await.expect("container"));
        let raw = object_store::azure::MicrosoftAzureBuilder::new()
            .with_container_name(raw_container)
            .with_use_emulator(true)
            .build()
            .expect("azure");
        out.push(Pair {
            name: "azure",
            ours: platform_store::open(&ours).await.expect("azure"),
            raw: Arc::new(raw),
            small_count: 1000,
        });
    }
    out
}

fn small_body() -> Bytes {
    Bytes::from(vec![b'x'; SMALL])
}

async fn small_ours(store: Arc<dyn BlobStore>, n: usize) -> Duration {
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let store = Arc::clone(&store);
            async move {
                let key = format!("small/{i:05}");
                store.put(&key, small_body(), PutOptions::default()).await?;
                store.get_bytes(&key).await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("small workload");
    started.elapsed()
}

async fn small_raw(store: Arc<dyn ObjectStore>, n: usize) -> Duration {
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let store = Arc::clone(&store);
            async move {
                let path = Path::from(format!("small/{i:05}"));
                store.put(&path, PutPayload::from(small_body())).await?;
                store.get(&path).await?.bytes().await
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_for_each(|_| async { Ok(()) })
        .await
        .expect("small workload");
    started.elapsed()
}

fn large_chunks() -> impl Iterator<Item = Bytes> {
    (0..LARGE / (1 << 20)).map(|_| Bytes::from(vec![b'y'; 1 << 20]))
}

async fn large_ours(store: Arc<dyn BlobStore>) -> Duration {
    let started = Instant::now();
    for i in 0..LARGE_COUNT {
        let key = format!("large/{i:02}");
        let body = byte_stream(futures::stream::iter(large_chunks().map(Ok)));
        store.put_stream(&key, body, PutOptions::default()).await.expect("put");
        let mut body = store.get(&key, Default::default()).await.expect("get").body;
        while body.try_next().await.expect("read").is_some() {}
    }
    started.elapsed()
}

async fn large_raw(store: Arc<dyn ObjectStore>) -> Duration {
    let started = Instant::now();
    for i in 0..LARGE_COUNT {
        let path = Path::from(format!("large/{i:02}"));
        let upload = store.put_multipart(&path).await.expect("multipart");
        let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
        for chunk in large_chunks() {
            writer.wait_for_capacity(2).await.expect("capacity");
            writer.put(chunk);
        }
        writer.finish().await.expect("finish");
        let mut body = store.get(&path).await.expect("get").into_stream();
        while body.try_next().await.expect("read").is_some() {}
    }
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let pairs = rt.block_on(pairs());
    let mut group = c.benchmark_group("store-small");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for pair in &pairs {
        group.throughput(Throughput::Elements(pair.small_count as u64));
        group.bench_function(BenchmarkId::new(pair.name, "platform-store"), |b| {
            b.iter_custom(|iters| timed(&rt, iters, || small_ours(Arc::clone(&pair.ours), pair.small_count)));
        });
        group.bench_function(BenchmarkId::new(pair.name, "object_store"), |b| {
            b.iter_custom(|iters| timed(&rt, iters, || small_raw(Arc::clone(&pair.raw), pair.small_count)));
        });
    }
    group.finish();

    let mut group = c.benchmark_group("store-large");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Bytes((LARGE * LARGE_COUNT) as u64));
    for pair in &pairs {
        group.bench_function(BenchmarkId::new(pair.name, "platform-store"), |b| {
            b.iter_custom(|iters| timed(&rt, iters, || large_ours(Arc::clone(&pair.ours))));
        });
        group.bench_function(BenchmarkId::new(pair.name, "object_store"), |b| {
            b.iter_custom(|iters| timed(&rt, iters, || large_raw(Arc::clone(&pair.raw))));
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
