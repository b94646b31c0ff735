//! The in-process store (`memory://`): objects in a hash map, their keys in a sorted set
//! for listings, both behind one lock.
//!
//! It implements [`BlobStore`] itself rather than wrapping `object_store`'s `InMemory`:
//! with nothing but memory behind a call, a second layer of keys, metadata and boxed
//! futures would be most of what a call costs. Everything is atomic (one lock), so
//! create-only, update-if-version and copy-if-absent are exact; attributes are kept as
//! given. A streamed upload is kept as the chunks it arrived in, so the process holds
//! the object once, never a second copy of it.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use platform_core::{CheckOutcome, Error, ErrorKind, HealthCheck, Result};
use rustc_hash::FxHashMap;
use time::OffsetDateTime;

use crate::backend::{list_page_with, list_with};
use crate::types::{
    Attributes, ByteRange, ByteStream, Capabilities, GetOptions, GetResponse, ListOptions, ListPage, ObjectInfo,
    ObjectVersion, PresignMethod, PutMode, PutOptions, validate_key,
};
use crate::{BlobStore, presign};

const BACKEND: &str = "memory";
/// Entries a listing takes per visit to the map, so a long listing never holds the lock.
const LIST_BATCH: usize = 256;
/// Streamed chunks smaller than this are gathered into one, so a source that hands out
/// tiny pieces does not leave an object of thousands of them.
const SMALL_CHUNK: usize = 64 << 10;

/// An object's bytes: one buffer (every `put`), or the chunks a streamed upload
/// arrived in. One buffer needs no allocation of its own.
#[derive(Clone)]
enum Body {
    One(Bytes),
    Chunks(Arc<[Bytes]>),
}

impl Body {
    fn chunks(&self) -> &[Bytes] {
        match self {
            Self::One(one) => std::slice::from_ref(one),
            Self::Chunks(all) => all,
        }
    }
}

/// One stored version of an object.
struct Entry {
    chunks: Body,
    size: u64,
    etag: u64,
    last_modified: OffsetDateTime,
    attributes: Attributes,
}

impl Entry {
    fn info(&self, key: &str, attributes: Attributes) -> ObjectInfo {
        ObjectInfo {
            key: key.to_owned(),
            size: self.size,
            last_modified: self.last_modified,
            version: ObjectVersion { etag: Some(self.etag.to_string()), version: None },
            attributes,
        }
    }

    /// The chunks covering `range` of the object.
    fn slice(&self, range: &std::ops::Range<u64>) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0_u64;
        for chunk in self.chunks.chunks() {
            let (start, end) = (at, at + chunk.len() as u64);
            at = end;
            if end <= range.start || chunk.is_empty() {
                continue;
            }
            if start >= range.end {
                break;
            }
            let from = usize::try_from(range.start.saturating_sub(start)).unwrap_or(0);
            let to = usize::try_from(range.end.min(end) - start).unwrap_or(chunk.len());
            out.push(chunk.slice(from..to));
        }
        out
    }
}

/// Objects by key for lookups, and their keys in order for listings. The map hashes
/// with FxHash: keys come from the application, and a put or get costs about as much
/// as SipHash over its key alone would.
#[derive(Default)]
struct Objects {
    map: FxHashMap<Arc<str>, Arc<Entry>>,
    keys: BTreeSet<Arc<str>>,
    next_etag: u64,
}

/// The in-process [`BlobStore`] that `memory://` opens.
pub struct MemoryStore {
    objects: Arc<RwLock<Objects>>,
    label: String,
    signer: Option<presign::Signer>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").field("url", &self.label).field("presign", &self.signer.is_some()).finish()
    }
}

impl fmt::Display for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobStore({})", self.label)
    }
}

/// Whether an `If-Match` / `If-None-Match` list (`*` or comma-separated etags) names `etag`.
fn names(list: &str, etag: u64) -> bool {
    list.trim() == "*" || list.split(',').any(|e| e.trim().trim_matches('"').parse() == Ok(etag))
}

fn checked(key: &str, op: &'static str) -> Result<()> {
    validate_key(key).map_err(|e| e.with_backend(BACKEND).with_op(op))
}

fn not_found(key: &str, op: &'static str) -> Error {
    Error::not_found(format!("no object at {key:?}")).with_backend(BACKEND).with_op(op)
}

impl MemoryStore {
    /// Copies `from` to `to`; over an existing `to` only when `overwrite`.
    fn copy_with(&self, from: &str, to: &str, overwrite: bool) -> Result<()> {
        checked(from, "copy")?;
        checked(to, "copy")?;
        let source = self.entry(from, "copy")?;
        let mode = if overwrite { PutMode::Overwrite } else { PutMode::Create };
        let attributes = source.attributes.clone();
        self.store(to, source.chunks.clone(), source.size, &mode, attributes, "copy").map(drop)
    }

    /// An empty store; `signer` makes presigned URLs for the application to serve.
    pub(crate) fn new(label: String, signer: Option<presign::Signer>) -> Self {
        Self { objects: Arc::default(), label, signer }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, key: &str, op: &'static str) -> Result<Arc<Entry>> {
        self.read().map.get(key).cloned().ok_or_else(|| not_found(key, op))
    }

    /// Stores a new version of `key` under `mode`; the old one is freed after the lock.
    fn store(
        &self,
        key: &str,
        chunks: Body,
        size: u64,
        mode: &PutMode,
        attributes: Attributes,
        op: &'static str,
    ) -> Result<ObjectInfo> {
        let last_modified = OffsetDateTime::now_utc();
        let mut objects = self.write();
        let Objects { map, keys, next_etag } = &mut *objects;
        let slot = map.get_mut(key);
        match (mode, slot.as_deref()) {
            (PutMode::Create, Some(_)) => {
                return Err(Error::new(ErrorKind::AlreadyExists, format!("{key:?} already exists"))
                    .with_backend(BACKEND)
                    .with_op(op));
            }
            (PutMode::Update(_), None) => {
                return Err(Error::conflict(format!("{key:?} is gone: nothing to update"))
                    .with_backend(BACKEND)
                    .with_op(op));
            }
            (PutMode::Update(want), Some(e))
                if want.etag.as_deref().and_then(|t| t.trim_matches('"').parse().ok()) != Some(e.etag) =>
            {
                return Err(Error::conflict(format!("{key:?} changed since the version given"))
                    .with_backend(BACKEND)
                    .with_op(op));
            }
            _ => {}
        }
        *next_etag += 1;
        let entry = Arc::new(Entry { chunks, size, etag: *next_etag, last_modified, attributes });
        let info = entry.info(key, entry.attributes.clone());
        let replaced = match slot {
            Some(slot) => Some(std::mem::replace(slot, entry)),
            None => {
                let key: Arc<str> = Arc::from(key);
                keys.insert(Arc::clone(&key));
                map.insert(key, entry)
            }
        };
        drop(objects);
        drop(replaced);
        Ok(info)
    }

    /// Up to `limit` objects under `prefix` that sort after `after`, in key order.
    fn scan(objects: &RwLock<Objects>, prefix: &str, after: Option<&str>, limit: usize) -> Vec<ObjectInfo> {
        let objects = objects.read().unwrap_or_else(PoisonError::into_inner);
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        objects
            .keys
            .range::<str, _>((start, Bound::Unbounded))
            .take_while(|k| k.starts_with(prefix))
            .filter_map(|k| objects.map.get(k).map(|e| e.info(k, Attributes::default())))
            .take(limit)
            .collect()
    }

    /// Every object under `prefix` after `offset`, read a batch at a time.
    fn list_from(&self, prefix: &str, offset: Option<&str>) -> BoxStream<'static, Result<ObjectInfo>> {
        let objects = Arc::clone(&self.objects);
        let prefix = prefix.to_owned();
        stream::unfold(Some(offset.map(ToOwned::to_owned)), move |after| {
            let batch = after.map(|after| Self::scan(&objects, &prefix, after.as_deref(), LIST_BATCH));
            async move {
                let batch = batch?;
                let next = (batch.len() == LIST_BATCH).then(|| batch.last().map(|o| o.key.clone())).flatten();
                (!batch.is_empty()).then(|| (stream::iter(batch.into_iter().map(Ok)), next.map(Some)))
            }
        })
        .flatten()
        .boxed()
    }
}

#[async_trait]
impl HealthCheck for MemoryStore {
    fn name(&self) -> String {
        format!("store:{BACKEND}")
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let objects = self.read().map.len();
        Ok(CheckOutcome::new(started.elapsed()).with_version(format!("in process, {objects} objects")))
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            create_only: true,
            update_if_version: true,
            attributes: true,
            presign: self.signer.is_some(),
            copy_if_absent: true,
            conditional_in_process_only: false,
        }
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        checked(key, "head")?;
        let entry = self.entry(key, "head")?;
        Ok(entry.info(key, entry.attributes.clone()))
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResponse> {
        checked(key, "get")?;
        let entry = self.entry(key, "get")?;
        if let Some(list) = &options.if_match
            && !names(list, entry.etag)
        {
            return Err(Error::conflict(format!("{key:?} does not match etag {list}"))
                .with_backend(BACKEND)
                .with_op("get"));
        }
        if let Some(list) = &options.if_none_match
            && names(list, entry.etag)
        {
            return Err(Error::conflict(format!("{key:?} matches etag {list}: not modified"))
                .with_backend(BACKEND)
                .with_op("get")
                .with_detail("if_none_match", "not modified"));
        }
        let size = entry.size;
        let range = match options.range {
            None => 0..size,
            Some(ByteRange::Suffix(n)) => size.saturating_sub(n)..size,
            Some(ByteRange::Bounded(a, b)) if b <= a => {
                return Err(Error::invalid_input(format!("range {a}..{b} is empty")).with_op("get"));
            }
            Some(ByteRange::Bounded(a, _) | ByteRange::From(a)) if a >= size => {
                return Err(Error::invalid_input(format!("range starts at {a}, past the end of {size} bytes"))
                    .with_backend(BACKEND)
                    .with_op("get")
                    .with_detail("range", "starts past the end"));
            }
            Some(ByteRange::Bounded(a, b)) => a..b.min(size),
            Some(ByteRange::From(a)) => a..size,
        };
        let body: ByteStream = match entry.chunks.chunks() {
            [one] if range.start == 0 && range.end == size => {
                let one = one.clone();
                stream::once(async move { Ok(one) }).boxed()
            }
            _ => stream::iter(entry.slice(&range).into_iter().map(Ok)).boxed(),
        };
        let info = entry.info(key, entry.attributes.clone());
        Ok(GetResponse { info, range, body })
    }

    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<ObjectInfo> {
        checked(key, "put")?;
        let size = body.len() as u64;
        self.store(key, Body::One(body), size, &options.mode, options.attributes, "put")
    }

    async fn put_stream(&self, key: &str, mut body: ByteStream, options: PutOptions) -> Result<ObjectInfo> {
        checked(key, "put_stream")?;
        if options.mode != PutMode::Overwrite {
            return Err(Error::unsupported(BACKEND, "put_stream")
                .with_detail("mode", "streamed uploads only overwrite; use put for create-only or update"));
        }
        let (mut chunks, mut small, mut size) = (Vec::new(), BytesMut::new(), 0_u64);
        while let Some(chunk) = body.try_next().await? {
            size += chunk.len() as u64;
            if chunk.len() >= SMALL_CHUNK {
                if !small.is_empty() {
                    chunks.push(small.split().freeze());
                }
                chunks.push(chunk);
            } else {
                small.extend_from_slice(&chunk);
                if small.len() >= SMALL_CHUNK {
                    chunks.push(small.split().freeze());
                }
            }
        }
        if !small.is_empty() || chunks.is_empty() {
            chunks.push(small.freeze());
        }
        let chunks = if chunks.len() == 1 { Body::One(chunks.remove(0)) } else { Body::Chunks(chunks.into()) };
        self.store(key, chunks, size, &PutMode::Overwrite, options.attributes, "put_stream")
    }

    async fn delete(&self, key: &str) -> Result<()> {
        checked(key, "delete")?;
        let mut objects = self.write();
        let removed = objects.map.remove(key);
        objects.keys.remove(key);
        drop(objects);
        drop(removed);
        Ok(())
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectInfo>> {
        list_with(prefix, |prefix| self.list_from(prefix, None))
    }

    async fn list_page(&self, options: ListOptions) -> Result<ListPage> {
        list_page_with(&options, true, |prefix, offset| self.list_from(prefix, offset)).await
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        self.copy_with(from, to, true)
    }

    async fn copy_if_absent(&self, from: &str, to: &str) -> Result<()> {
        self.copy_with(from, to, false)
    }

    async fn presign(&self, method: PresignMethod, key: &str, expires: Duration) -> Result<url::Url> {
        checked(key, "presign")?;
        match &self.signer {
            Some(signer) => signer.sign(method, key, expires),
            None => Err(Error::unsupported(BACKEND, "presign")
                .with_detail("presign", "no signing credentials (local stores: set presign_secret)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlobStoreExt as _;

    fn store() -> MemoryStore {
        MemoryStore::new("memory://".into(), None)
    }

    #[tokio::test]
    async fn streamed_chunks_are_kept_and_sliced() {
        let store = store();
        // Small pieces are gathered, big ones kept as they came.
        let pieces: Vec<Bytes> = vec![
            Bytes::from(vec![1; 10]),
            Bytes::from(vec![2; 100_000]),
            Bytes::from(vec![3; 5]),
            Bytes::from(vec![4; 7]),
        ];
        let whole: Vec<u8> = pieces.iter().flat_map(|b| b.to_vec()).collect();
        let body = crate::byte_stream(stream::iter(pieces.into_iter().map(Ok)));
        let info = store.put_stream("k", body, PutOptions::default()).await.unwrap();
        assert_eq!(info.size, whole.len() as u64);
        assert_eq!(store.entry("k", "test").unwrap().chunks.chunks().len(), 3, "10 B, 100,000 B, then 12 B gathered");
        assert_eq!(store.get_bytes("k").await.unwrap(), whole);
        for (a, b) in [(0, 1), (5, 15), (9, 100_011), (100_009, 100_022), (100_021, 100_022)] {
            let got = store.get("k", GetOptions::range(ByteRange::Bounded(a, b))).await.unwrap().bytes().await.unwrap();
            assert_eq!(got, whole[a as usize..b as usize], "{a}..{b}");
        }
        let empty = crate::byte_stream(stream::empty());
        store.put_stream("empty", empty, PutOptions::default()).await.unwrap();
        assert!(store.get_bytes("empty").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_long_listing_is_read_in_batches() {
        let store = store();
        for i in 0..(LIST_BATCH * 2 + 3) {
            store.put_bytes(&format!("a/{i:04}"), "x").await.unwrap();
        }
        store.put_bytes("b/0", "x").await.unwrap();
        let keys: Vec<String> = store.list("a/").map_ok(|o| o.key).try_collect().await.unwrap();
        assert_eq!(keys.len(), LIST_BATCH * 2 + 3);
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "in key order");
        let after: Vec<String> = store.list_from("a/", Some("a/0500")).map_ok(|o| o.key).try_collect().await.unwrap();
        assert_eq!(
            after,
            [
                "a/0501", "a/0502", "a/0503", "a/0504", "a/0505", "a/0506", "a/0507", "a/0508", "a/0509", "a/0510",
                "a/0511", "a/0512", "a/0513", "a/0514"
            ]
        );
    }
}
