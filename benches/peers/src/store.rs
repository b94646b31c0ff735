//! platform-store beside object_store and OpenDAL on the plain sequential shape: one task
//! puts N objects one after another, then gets them back one after another. Puts and
//! gets are timed apart. Each store is used the way its docs show.
//!
//! Shapes: 10,000 objects of 4 KiB, and 20 objects of 16 MiB (each put as one buffer).
//! Local disk runs at two promises: *written* (the bytes are in the file when the put
//! returns: a crash of the process keeps them, a crash of the machine may not) and
//! *fsynced* (file and directory synced: a crash of the machine keeps them too).
//! platform-store gives the second with `?fsync=true`; object_store and OpenDAL have no
//! such option, so their fsynced rows sync the file and its directory by hand after the
//! put returns, which is the least a user of theirs would have to add.
//!
//! `cargo bench --manifest-path benches/peers/Cargo.toml --bench store -- [ROUNDS] [memory|fs]`
//! Prints one line per shape and contender: the median of ROUNDS (default 3) puts/s and
//! gets/s, then every round.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use platform_store::{BlobStore, BlobStoreExt as _};

const SMALL: usize = 4096;
const SMALL_COUNT: usize = 10_000;
const LARGE: usize = 16 << 20;
const LARGE_COUNT: usize = 20;

/// What a contender does: put every key, then get every key; the two times.
enum Store {
    Ours(Arc<dyn BlobStore>),
    ObjectStore { store: Arc<dyn ObjectStore>, sync_root: Option<PathBuf> },
    OpenDal { op: opendal::Operator, sync_root: Option<PathBuf> },
}

fn sync(root: &FsPath, key: &str) {
    let file = root.join(key);
    std::fs::File::open(&file).and_then(|f| f.sync_all()).expect("sync file");
    let dir = file.parent().expect("parent");
    std::fs::File::open(dir).and_then(|d| d.sync_all()).expect("sync dir");
}

impl Store {
    async fn put(&self, key: &str, body: Bytes) {
        match self {
            Self::Ours(s) => drop(s.put_bytes(key, body).await.expect("put")),
            Self::ObjectStore { store, sync_root } => {
                store.put(&Path::from(key), PutPayload::from(body)).await.expect("put");
                if let Some(root) = sync_root {
                    let (root, key) = (root.clone(), key.to_owned());
                    tokio::task::spawn_blocking(move || sync(&root, &key)).await.expect("sync");
                }
            }
            Self::OpenDal { op, sync_root } => {
                op.write(key, body).await.expect("put");
                if let Some(root) = sync_root {
                    let (root, key) = (root.clone(), key.to_owned());
                    tokio::task::spawn_blocking(move || sync(&root, &key)).await.expect("sync");
                }
            }
        }
    }

    async fn get(&self, key: &str) -> usize {
        match self {
            Self::Ours(s) => s.get_bytes(key).await.expect("get").len(),
            Self::ObjectStore { store, .. } => {
                store.get(&Path::from(key)).await.expect("get").bytes().await.expect("body").len()
            }
            Self::OpenDal { op, .. } => op.read(key).await.expect("get").len(),
        }
    }
}

struct Contender {
    name: &'static str,
    store: Store,
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("platform-peers-store-{}/{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

async fn ours(url: String) -> Store {
    Store::Ours(platform_store::open(&url).await.expect("open"))
}

fn object_store_fs(root: PathBuf, fsync: bool) -> Store {
    let fs = object_store::local::LocalFileSystem::new_with_prefix(&root).expect("fs");
    Store::ObjectStore { store: Arc::new(fs), sync_root: fsync.then_some(root) }
}

fn opendal_fs(root: PathBuf, fsync: bool) -> Store {
    let builder = opendal::services::Fs::default().root(root.to_str().expect("utf-8"));
    Store::OpenDal { op: opendal::Operator::new(builder).expect("fs").finish(), sync_root: fsync.then_some(root) }
}

async fn contenders(area: &str, round: usize) -> Vec<Contender> {
    let mut out = Vec::new();
    if area == "memory" {
        out.push(Contender { name: "platform-store memory://", store: ours("memory://".into()).await });
        let raw = object_store::memory::InMemory::new();
        out.push(Contender { name: "object_store InMemory", store: Store::ObjectStore { store: Arc::new(raw), sync_root: None } });
        let op = opendal::Operator::new(opendal::services::Memory::default()).expect("memory").finish();
        out.push(Contender { name: "OpenDAL memory", store: Store::OpenDal { op, sync_root: None } });
    } else {
        for fsync in [false, true] {
            let tag = if fsync { "fsynced" } else { "written" };
            let d = dir(&format!("{round}-ours-{tag}"));
            let url = format!("file://{}{}", d.display(), if fsync { "?fsync=true" } else { "" });
            out.push(Contender {
                name: if fsync { "platform-store file:// (fsynced)" } else { "platform-store file:// (written)" },
                store: ours(url).await,
            });
            out.push(Contender {
                name: if fsync { "object_store LocalFileSystem (fsynced)" } else { "object_store LocalFileSystem (written)" },
                store: object_store_fs(dir(&format!("{round}-os-{tag}")), fsync),
            });
            out.push(Contender {
                name: if fsync { "OpenDAL fs (fsynced)" } else { "OpenDAL fs (written)" },
                store: opendal_fs(dir(&format!("{round}-dal-{tag}")), fsync),
            });
        }
    }
    out
}

/// Puts `count` objects of `body`, then gets them; (puts/s, gets/s).
async fn run(store: &Store, prefix: &str, body: &Bytes, count: usize) -> (f64, f64) {
    let keys: Vec<String> = (0..count).map(|i| format!("{prefix}/{i:05}")).collect();
    let started = Instant::now();
    for key in &keys {
        store.put(key, body.clone()).await;
    }
    let put = started.elapsed();
    let started = Instant::now();
    for key in &keys {
        assert_eq!(store.get(key).await, body.len());
    }
    let get = started.elapsed();
    (rate(count, put), rate(count, get))
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn human(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.2} k", r / 1e3)
    } else {
        format!("{r:.1}")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let rounds: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let only = args.get(1).cloned();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let shapes = [("4 KiB", SMALL, SMALL_COUNT), ("16 MiB", LARGE, LARGE_COUNT)];
    println!("{:<8} {:<40} {:>10} {:>10}   rounds (put/s | get/s)", "shape", "store", "put/s", "get/s");
    for area in ["memory", "fs"] {
        if only.as_deref().is_some_and(|o| o != area) {
            continue;
        }
        for (shape, size, count) in shapes {
            let body = Bytes::from(vec![b'x'; size]);
            let mut results: Vec<(&'static str, Vec<(f64, f64)>)> = Vec::new();
            for round in 0..rounds {
                    // The order turns each round: on a disk, whoever runs right after a
                // burst of writes pays for their writeback.
                let stores = rt.block_on(contenders(area, round));
                if results.is_empty() {
                    results = stores.iter().map(|c| (c.name, Vec::new())).collect();
                }
                let n = stores.len();
                for i in (0..n).map(|i| (i + round) % n) {
                    let r = rt.block_on(run(&stores[i].store, &format!("r{round}"), &body, count));
                    results[i].1.push(r);
                }
            }
            for (name, rs) in results {
                let puts = median(rs.iter().map(|r| r.0).collect());
                let gets = median(rs.iter().map(|r| r.1).collect());
                let all: Vec<String> = rs.iter().map(|(p, g)| format!("{} | {}", human(*p), human(*g))).collect();
                println!("{shape:<8} {name:<40} {:>10} {:>10}   {}", human(puts), human(gets), all.join(", "));
            }
        }
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("platform-peers-store-{}", std::process::id())));
}
