//! One `BlobStore` over any `object_store` backend, filling each one's gaps so every
//! backend behaves the same (or says `Unsupported`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, CopyMode, CopyOptions, GetRange, GetResultPayload, ObjectStore, ObjectStoreExt as _,
    PutMultipartOptions, PutPayload, UpdateVersion, WriteMultipart,
};
use platform_core::{CheckOutcome, Error, ErrorKind, HealthCheck, Result};
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::types::{
    Attributes, ByteRange, ByteStream, Capabilities, GetOptions, GetResponse, ListOptions, ListPage, ObjectInfo,
    ObjectVersion, PresignMethod, PutMode, PutOptions, RESERVED_PREFIX, validate_key, validate_prefix,
};
use crate::{BlobStore, presign};

/// Parts of a streamed upload: big enough for S3's 5 MiB minimum.
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once during a streamed upload (memory is about this many parts).
const PARTS_IN_FLIGHT: usize = 2;
/// Times a download that failed midway is resumed.
const RESUMES: u32 = 3;

/// Maps an `object_store` error onto the portable kinds.
pub(crate) fn map_err(backend: &'static str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let (kind, retryable) = match &e {
        E::NotFound { .. } => (ErrorKind::NotFound, false),
        E::AlreadyExists { .. } => (ErrorKind::AlreadyExists, false),
        E::Precondition { .. } | E::NotModified { .. } => (ErrorKind::Conflict, false),
        E::NotImplemented { .. } | E::NotSupported { .. } => (ErrorKind::Unsupported, false),
        E::InvalidPath { .. } | E::UnknownConfigurationKey { .. } => (ErrorKind::InvalidInput, false),
        E::PermissionDenied { .. } => (ErrorKind::PermissionDenied, false),
        E::Unauthenticated { .. } => (ErrorKind::Unauthenticated, false),
        other => classify(other),
    };
    let not_modified = matches!(e, E::NotModified { .. });
    let mut err = if kind == ErrorKind::Unavailable && !retryable {
        let message = format!("the server's TLS certificate is not trusted (a private CA needs ca_file): {e}");
        Error::new(kind, message).with_backend(backend).with_retryable(false)
    } else {
        Error::new(kind, e.to_string()).with_backend(backend).with_retryable(retryable)
    };
    if not_modified {
        err = err.with_detail("if_none_match", "not modified");
    }
    err.with_source(e)
}

/// Transport failures, throttling and range errors, read off the error chain.
fn classify(e: &(dyn std::error::Error + 'static)) -> (ErrorKind, bool) {
    let mut text = e.to_string().to_ascii_lowercase();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&s.to_string().to_ascii_lowercase());
        source = s.source();
    }
    let range_words = ["416", "invalid", "out of bounds", "not satisfiable"];
    if text.contains("invalid peer certificate") || text.contains("certificate verify failed") {
        // Not worth retrying: the same certificate comes back.
        (ErrorKind::Unavailable, false)
    } else if text.contains("range") && range_words.iter().any(|w| text.contains(w)) {
        (ErrorKind::InvalidInput, false)
    } else if text.contains("429") || text.contains("slow down") || text.contains("too many requests") {
        (ErrorKind::RateLimited, true)
    } else if text.contains("timed out") || text.contains("timeout") {
        (ErrorKind::Timeout, true)
    } else if text.contains("connect")
        || text.contains("sending request")
        || text.contains("503")
        || text.contains("500")
    {
        (ErrorKind::Unavailable, true)
    } else {
        (ErrorKind::Internal, false)
    }
}

/// `true` for the error a get with `if_none_match` returns when the etag matched.
pub fn is_not_modified(e: &Error) -> bool {
    e.details().iter().any(|d| d.field == "if_none_match")
}

#[allow(dead_code)] // which variants a build makes depends on its features
pub(crate) enum Presigner {
    None,
    #[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
    Native(Arc<dyn object_store::signer::Signer>),
    Local(presign::Signer),
}

/// What a backend needs filled in by this layer.
pub(crate) struct Gaps {
    /// Attributes kept in sidecar files in this directory (local disk), one per key,
    /// named by the key's SHA-256.
    pub(crate) sidecar: Option<std::path::PathBuf>,
    /// `PutMode::Update` done under a process-wide lock (local disk).
    pub(crate) locked_update: bool,
    /// Copy-if-absent done as get + create-only put (S3).
    pub(crate) copy_by_put: bool,
    /// Listings come back in key order (all but local disk).
    pub(crate) ordered_list: bool,
    /// Bodies cross a network: a download that breaks midway is resumed.
    pub(crate) remote: bool,
    /// The client's copy modes are the wrong way round (GCS in `object_store` 0.13:
    /// `Overwrite` refuses an existing target and `Create` overwrites it; its issue
    /// #712, fixed in 0.14). The GCS conformance run fails if this stops being so.
    pub(crate) swapped_copy_modes: bool,
    /// Local disk with `fsync=true`: the root directory under which a put syncs the
    /// object's file and its directories before it returns.
    pub(crate) fsync: Option<std::path::PathBuf>,
}

impl Gaps {
    /// A store across a network that does everything natively.
    #[cfg(any(test, feature = "s3", feature = "azure", feature = "gcs"))]
    pub(crate) const REMOTE: Self = Self {
        sidecar: None,
        locked_update: false,
        copy_by_put: false,
        ordered_list: true,
        remote: true,
        swapped_copy_modes: false,
        fsync: None,
    };
}

/// A [`BlobStore`] over an `object_store` backend.
pub struct ObjectBlobStore {
    inner: Arc<dyn ObjectStore>,
    backend: &'static str,
    label: String,
    caps: Capabilities,
    presigner: Presigner,
    gaps: Gaps,
    update_lock: tokio::sync::Mutex<()>,
}

impl fmt::Debug for ObjectBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBlobStore")
            .field("backend", &self.backend)
            .field("url", &self.label)
            .field("capabilities", &self.caps)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for ObjectBlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobStore({})", self.label)
    }
}

fn to_os_attributes(a: &Attributes) -> object_store::Attributes {
    let mut out = object_store::Attributes::new();
    let mut set = |k: Attribute, v: &Option<String>| {
        if let Some(v) = v {
            out.insert(k, AttributeValue::from(v.clone()));
        }
    };
    set(Attribute::ContentType, &a.content_type);
    set(Attribute::CacheControl, &a.cache_control);
    set(Attribute::ContentDisposition, &a.content_disposition);
    set(Attribute::ContentEncoding, &a.content_encoding);
    for (k, v) in &a.metadata {
        out.insert(Attribute::Metadata(k.clone().into()), AttributeValue::from(v.clone()));
    }
    out
}

fn from_os_attributes(a: &object_store::Attributes) -> Attributes {
    let mut out = Attributes::default();
    for (k, v) in a {
        let text = v.as_ref().to_owned();
        let v = Some(text.clone());
        match k {
            Attribute::ContentType => out.content_type = v,
            Attribute::CacheControl => out.cache_control = v,
            Attribute::ContentDisposition => out.content_disposition = v,
            Attribute::ContentEncoding => out.content_encoding = v,
            Attribute::Metadata(name) => {
                out.metadata.insert(name.to_string(), text);
            }
            _ => {}
        }
    }
    out
}

impl ObjectBlobStore {
    /// Copies `from` to `to`; over an existing `to` only when `overwrite`.
    async fn copy_with(&self, from: &str, to: &str, overwrite: bool) -> Result<()> {
        let (src, dst) = (Self::path(from, "copy")?, Self::path(to, "copy")?);
        let span = tracing::debug_span!("store.copy", backend = self.backend, from, to);
        async {
            if !overwrite && self.gaps.copy_by_put {
                let r = self.inner.get(&src).await.map_err(self.err("copy"))?;
                let attributes = r.attributes.clone();
                let bytes = r.bytes().await.map_err(self.err("copy"))?;
                let opts =
                    object_store::PutOptions { mode: object_store::PutMode::Create, attributes, ..Default::default() };
                self.inner.put_opts(&dst, PutPayload::from(bytes), opts).await.map_err(self.err("copy"))?;
                return Ok(());
            }
            let mode = if overwrite != self.gaps.swapped_copy_modes { CopyMode::Overwrite } else { CopyMode::Create };
            self.inner
                .copy_opts(&src, &dst, CopyOptions { mode, ..Default::default() })
                .await
                .map_err(self.err("copy"))?;
            if self.gaps.sidecar.is_some() {
                let attributes = self.read_sidecar(from)?;
                self.write_sidecar(to, &attributes).await?;
                self.sync_to_disk(to, &attributes, "copy").await?;
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    #[cfg_attr(not(any(feature = "fs", feature = "s3", feature = "azure", feature = "gcs")), allow(dead_code))]
    pub(crate) fn new(
        inner: Arc<dyn ObjectStore>,
        backend: &'static str,
        label: String,
        caps: Capabilities,
        presigner: Presigner,
        gaps: Gaps,
    ) -> Self {
        Self { inner, backend, label, caps, presigner, gaps, update_lock: tokio::sync::Mutex::new(()) }
    }

    fn err(&self, op: &'static str) -> impl Fn(object_store::Error) -> Error + '_ {
        move |e| map_err(self.backend, e).with_op(op)
    }

    fn path(key: &str, op: &'static str) -> Result<Path> {
        validate_key(key).map_err(|e| e.with_op(op))?;
        Path::parse(key).map_err(|e| Error::invalid_input(format!("key {key:?}: {e}")).with_op(op))
    }

    fn info(&self, key: &str, meta: &object_store::ObjectMeta, attributes: Attributes) -> ObjectInfo {
        let last_modified = OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(meta.last_modified.timestamp()) * 1_000_000_000
                + i128::from(meta.last_modified.timestamp_subsec_nanos()),
        )
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        ObjectInfo {
            key: key.to_owned(),
            size: meta.size,
            last_modified,
            version: ObjectVersion { etag: meta.e_tag.clone(), version: meta.version.clone() },
            attributes,
        }
    }

    fn sidecar_file(&self, key: &str) -> Option<std::path::PathBuf> {
        use sha2::Digest as _;
        let dir = self.gaps.sidecar.as_ref()?;
        Some(dir.join(format!("{}.json", crate::store::hex(&sha2::Sha256::digest(key.as_bytes())))))
    }

    fn io_err(&self, op: &'static str, e: &std::io::Error) -> Error {
        Error::new(ErrorKind::Unavailable, format!("attributes sidecar: {e}")).with_backend(self.backend).with_op(op)
    }

    fn read_sidecar(&self, key: &str) -> Result<Attributes> {
        let Some(file) = self.sidecar_file(key) else { return Ok(Attributes::default()) };
        // Inline, not on the blocking pool: a sidecar is a few hundred bytes (most often
        // none), and handing the call to another thread cost more than the call itself
        // (fs small put+get: 0.72-0.87x of object_store alone before, see BENCHMARKS.md).
        match std::fs::read(&file) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| Error::internal(format!("attributes of {key:?}: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Attributes::default()),
            Err(e) => Err(self.io_err("head", &e)),
        }
    }

    async fn write_sidecar(&self, key: &str, attributes: &Attributes) -> Result<()> {
        let Some(file) = self.sidecar_file(key) else { return Ok(()) };
        if attributes.is_empty() {
            // Inline, as in `read_sidecar`: most often there is nothing to remove.
            return match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io_err("put", &e)),
                _ => Ok(()),
            };
        }
        // Written aside, then renamed: a reader sees the old attributes or the new, whole.
        let staging = file.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&staging, serde_json::to_vec(attributes)?).await.map_err(|e| self.io_err("put", &e))?;
        tokio::fs::rename(&staging, &file).await.map_err(|e| self.io_err("put", &e))
    }

    /// With `fsync=true` (local disk): syncs the object's file, its attributes sidecar
    /// when it has one, and every directory from theirs up to the root, so what a put
    /// wrote survives a crash of the machine, not only of the process.
    async fn sync_to_disk(&self, key: &str, attributes: &Attributes, op: &'static str) -> Result<()> {
        let Some(root) = self.gaps.fsync.clone() else { return Ok(()) };
        let mut files = vec![root.join(key)];
        if !attributes.is_empty() {
            files.extend(self.sidecar_file(key));
        }
        let synced = tokio::task::spawn_blocking(move || {
            let mut dirs = std::collections::BTreeSet::new();
            for file in &files {
                std::fs::File::open(file)?.sync_all()?;
                dirs.extend(file.ancestors().skip(1).take_while(|d| d.starts_with(&root)).map(ToOwned::to_owned));
            }
            dirs.iter().try_for_each(|d| std::fs::File::open(d)?.sync_all())
        })
        .await
        .map_err(|e| Error::internal(format!("fsync task: {e}")).with_backend(self.backend).with_op(op))?;
        synced.map_err(|e| {
            Error::new(ErrorKind::Unavailable, format!("fsync of {key:?}: {e}")).with_backend(self.backend).with_op(op)
        })
    }

    fn check_attributes(&self, options: &PutOptions, op: &'static str) -> Result<()> {
        if !options.attributes.is_empty() && !self.caps.attributes {
            return Err(Error::unsupported(self.backend, op).with_detail("attributes", "not kept by this backend"));
        }
        Ok(())
    }

    async fn put_inner(&self, key: &str, path: &Path, body: Bytes, options: PutOptions) -> Result<ObjectInfo> {
        self.check_attributes(&options, "put")?;
        let size = body.len() as u64;
        let _guard = match (&options.mode, self.gaps.locked_update) {
            (PutMode::Update(_), true) => Some(self.update_lock.lock().await),
            _ => None,
        };
        let mode = match &options.mode {
            PutMode::Overwrite => object_store::PutMode::Overwrite,
            PutMode::Create => object_store::PutMode::Create,
            PutMode::Update(want) if self.gaps.locked_update => {
                let current = match self.inner.head(path).await {
                    Ok(meta) => meta,
                    Err(object_store::Error::NotFound { .. }) => {
                        return Err(Error::conflict(format!("{key:?} is gone: nothing to update")).with_op("put"));
                    }
                    Err(e) => return Err(self.err("put")(e)),
                };
                if want.etag.is_none() || current.e_tag != want.etag {
                    return Err(Error::conflict(format!("{key:?} changed since the version given")).with_op("put"));
                }
                object_store::PutMode::Overwrite
            }
            PutMode::Update(want) => {
                object_store::PutMode::Update(UpdateVersion { e_tag: want.etag.clone(), version: want.version.clone() })
            }
        };
        let attributes = if self.gaps.sidecar.is_some() {
            object_store::Attributes::new()
        } else {
            to_os_attributes(&options.attributes)
        };
        let opts = object_store::PutOptions { mode, attributes, ..Default::default() };
        let updating = matches!(options.mode, PutMode::Update(_));
        let result = self.inner.put_opts(path, PutPayload::from(body), opts).await.map_err(|e| {
            let e = self.err("put")(e);
            // A missing object under Update is a conflict on every backend.
            if updating && e.kind() == ErrorKind::NotFound {
                Error::conflict(format!("{key:?} is gone: nothing to update")).with_backend(self.backend).with_op("put")
            } else {
                e
            }
        })?;
        if self.gaps.sidecar.is_some() {
            self.write_sidecar(key, &options.attributes).await?;
        }
        self.sync_to_disk(key, &options.attributes, "put").await?;
        Ok(stored(key, size, result, options.attributes))
    }

    fn resumable(
        &self,
        path: Path,
        first: BoxStream<'static, object_store::Result<Bytes>>,
        etag: Option<String>,
        range: std::ops::Range<u64>,
    ) -> ByteStream {
        struct State {
            store: Arc<dyn ObjectStore>,
            backend: &'static str,
            path: Path,
            etag: Option<String>,
            next: u64,
            end: u64,
            resumes: u32,
            body: Option<BoxStream<'static, object_store::Result<Bytes>>>,
        }
        let state = State {
            store: Arc::clone(&self.inner),
            backend: self.backend,
            path,
            etag,
            next: range.start,
            end: range.end,
            resumes: 0,
            body: Some(first),
        };
        stream::try_unfold(state, |mut s| async move {
            loop {
                if s.next >= s.end {
                    return Ok(None);
                }
                let body = match s.body.as_mut() {
                    Some(b) => b,
                    None => {
                        let opts = object_store::GetOptions {
                            range: Some(GetRange::Bounded(s.next..s.end)),
                            if_match: s.etag.clone(),
                            ..Default::default()
                        };
                        let r = s.store.get_opts(&s.path, opts).await.map_err(|e| map_err(s.backend, e).with_op("get"))?;
                        s.body = Some(r.into_stream());
                        s.body.as_mut().expect("just set")
                    }
                };
                match body.next().await {
                    Some(Ok(chunk)) => {
                        s.next += chunk.len() as u64;
                        return Ok(Some((chunk, s)));
                    }
                    Some(Err(e)) => {
                        let err = map_err(s.backend, e).with_op("get");
                        if s.resumes >= RESUMES || !err.is_retryable() {
                            return Err(err);
                        }
                        tracing::warn!(backend = s.backend, path = %s.path, at = s.next, error = %err, "download failed midway; resuming");
                        s.resumes += 1;
                        s.body = None;
                    }
                    None => {
                        return Err(Error::unavailable(format!(
                            "the body of {} ended at byte {} of {}",
                            s.path, s.next, s.end
                        ))
                        .with_backend(s.backend)
                        .with_op("get"));
                    }
                }
            }
        })
        .boxed()
    }

    /// Objects whose key starts with `prefix` and sorts after `offset`.
    fn list_from(&self, prefix: &str, offset: Option<&str>) -> BoxStream<'static, Result<ObjectInfo>> {
        let dir = prefix.rfind('/').map(|i| Path::from(prefix[..i].to_owned()));
        let prefix = prefix.to_owned();
        let backend = self.backend;
        let raw = match offset {
            Some(o) => self.inner.list_with_offset(dir.as_ref(), &Path::from(o.to_owned())),
            None => self.inner.list(dir.as_ref()),
        };
        let offset = offset.map(ToOwned::to_owned);
        let metas = raw.map_err(move |e| map_err(backend, e).with_op("list"));
        let this_backend = self.backend;
        metas
            .try_filter_map(move |meta| {
                let key = meta.location.to_string();
                let keep = key.starts_with(&prefix)
                    && !key.starts_with(RESERVED_PREFIX)
                    && offset.as_ref().is_none_or(|o| key.as_str() > o.as_str());
                let info = keep.then(|| ObjectInfo {
                    key,
                    size: meta.size,
                    last_modified: OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(meta.last_modified.timestamp()) * 1_000_000_000
                            + i128::from(meta.last_modified.timestamp_subsec_nanos()),
                    )
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    version: ObjectVersion { etag: meta.e_tag, version: meta.version },
                    attributes: Attributes::default(),
                });
                let _ = this_backend;
                futures::future::ready(Ok(info))
            })
            .boxed()
    }
}

/// Every object under `prefix`, from `list_from` once the prefix is checked.
pub(crate) fn list_with(
    prefix: &str,
    list_from: impl FnOnce(&str) -> BoxStream<'static, Result<ObjectInfo>>,
) -> BoxStream<'static, Result<ObjectInfo>> {
    match validate_prefix(prefix) {
        Ok(()) => list_from(prefix),
        Err(e) => stream::once(async move { Err(e) }).boxed(),
    }
}

/// One page of a listing, read from `list_from(prefix, offset)`, a stream of the objects
/// under the prefix that sort after the offset (in key order when `ordered`).
pub(crate) async fn list_page_with(
    options: &ListOptions,
    ordered: bool,
    list_from: impl FnOnce(&str, Option<&str>) -> BoxStream<'static, Result<ObjectInfo>>,
) -> Result<ListPage> {
    validate_prefix(&options.prefix)?;
    let limit = if options.limit == 0 { 1000 } else { options.limit };
    let offset = match &options.token {
        None => None,
        Some(t) => Some(decode_token(t)?),
    };
    let keys = list_from(&options.prefix, offset.as_deref());
    let mut page = ListPage::default();
    let mut entries = 0;
    let mut add = |info: ObjectInfo| {
        if push_entry(&mut page, &options.prefix, options.delimiter, info) {
            entries += 1;
        }
        // Read one entry past the limit: it proves there is a next page.
        entries > limit
    };
    if ordered {
        let mut keys = keys;
        while let Some(info) = keys.try_next().await? {
            if add(info) {
                break;
            }
        }
    } else {
        let mut all: Vec<ObjectInfo> = keys.try_collect().await?;
        all.sort_by(|a, b| a.key.cmp(&b.key));
        for info in all {
            if add(info) {
                break;
            }
        }
    }
    // One entry too many was read: it proves there is a next page.
    let total = page.objects.len() + page.prefixes.len();
    if total > limit {
        let last_object = page.objects.last().map(|o| o.key.clone());
        let last_prefix = page.prefixes.last().cloned();
        match (last_object, last_prefix) {
            (Some(o), Some(p)) if o > p => {
                page.objects.pop();
            }
            (Some(_), None) => {
                page.objects.pop();
            }
            _ => {
                page.prefixes.pop();
            }
        }
        let last_object = page.objects.last().map(|o| o.key.clone());
        let last_prefix = page.prefixes.last().map(|p| format!("{p}\u{10FFFF}"));
        let resume = match (last_object, last_prefix) {
            (Some(o), Some(p)) => o.max(p),
            (Some(o), None) => o,
            (None, Some(p)) => p,
            (None, None) => String::new(),
        };
        page.next_token = Some(encode_token(&resume));
    }
    Ok(page)
}

/// What a successful put returns.
/// Bytes read from local disk at a time: the part size of a streamed upload. A range
/// up to the parts a streamed upload holds in flight is read in one piece, so a get
/// holds no more than a put does, and an object read whole is read once, never copied
/// from chunks into one buffer.
#[cfg(all(feature = "fs", unix))]
const READ_CHUNK: u64 = PART_SIZE as u64;
#[cfg(all(feature = "fs", unix))]
const READ_WHOLE: u64 = (PART_SIZE * PARTS_IN_FLIGHT) as u64;

/// A local file's `range`, read in chunks of [`READ_CHUNK`] (the last [`READ_WHOLE`]
/// bytes in one), one trip to the blocking pool each (`object_store` reads 8 KiB a trip and takes one more to seek and one to
/// find the end: four trips for a 4 KiB object, where this takes one).
#[cfg(all(feature = "fs", unix))]
fn file_body(file: std::fs::File, range: std::ops::Range<u64>, key: &str) -> ByteStream {
    use std::os::unix::fs::FileExt as _;
    let file = Arc::new(file);
    let key = key.to_owned();
    futures::stream::try_unfold(range.start, move |at| {
        let (file, key, end) = (Arc::clone(&file), key.clone(), range.end);
        async move {
            if at >= end {
                return Ok(None);
            }
            let left = end - at;
            let len =
                usize::try_from(if left <= READ_WHOLE { left } else { left.min(READ_CHUNK) }).unwrap_or(usize::MAX);
            let read = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, at).map(|()| Bytes::from(buf))
            })
            .await
            .map_err(|e| Error::internal(format!("read task: {e}")).with_backend("fs").with_op("get"))?;
            let chunk = read.map_err(|e| {
                let kind = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    ErrorKind::Conflict
                } else {
                    ErrorKind::Unavailable
                };
                Error::new(kind, format!("reading {key:?} at byte {at}: {e}")).with_backend("fs").with_op("get")
            })?;
            Ok(Some((chunk, at + len as u64)))
        }
    })
    .boxed()
}

fn stored(key: &str, size: u64, result: object_store::PutResult, attributes: Attributes) -> ObjectInfo {
    ObjectInfo {
        key: key.to_owned(),
        size,
        last_modified: OffsetDateTime::now_utc(),
        version: ObjectVersion { etag: result.e_tag, version: result.version },
        attributes,
    }
}

/// Adds an object, or its common prefix, to a page; `true` when a new entry was added.
fn push_entry(page: &mut ListPage, prefix: &str, delimiter: bool, info: ObjectInfo) -> bool {
    if delimiter && let Some(i) = info.key[prefix.len()..].find('/') {
        let common = info.key[..prefix.len() + i + 1].to_owned();
        if page.prefixes.last() == Some(&common) {
            return false;
        }
        page.prefixes.push(common);
        return true;
    }
    page.objects.push(info);
    true
}

fn encode_token(resume: &str) -> String {
    crate::store::hex(resume.as_bytes())
}

fn decode_token(token: &str) -> Result<String> {
    let bad = || {
        Error::invalid_input("list token is not one this store issued").with_op("list").with_detail("token", "invalid")
    };
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| token.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    String::from_utf8(bytes).map_err(|_| bad())
}

#[async_trait]
impl HealthCheck for ObjectBlobStore {
    fn name(&self) -> String {
        format!("store:{}", self.backend)
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        let probe = Path::from(format!("{RESERVED_PREFIX}/health-{}", uuid::Uuid::new_v4().simple()));
        match self.inner.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(CheckOutcome::new(started.elapsed())),
            Err(e) => Err(self.err("health")(e)),
        }
    }
}

#[async_trait]
impl BlobStore for ObjectBlobStore {
    fn backend(&self) -> &'static str {
        self.backend
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = Self::path(key, "head")?;
        let span = tracing::debug_span!("store.head", backend = self.backend, key);
        async {
            if self.gaps.sidecar.is_some() {
                let meta = self.inner.head(&path).await.map_err(self.err("head"))?;
                let attributes = self.read_sidecar(key)?;
                return Ok(self.info(key, &meta, attributes));
            }
            let opts = object_store::GetOptions { head: true, ..Default::default() };
            let r = self.inner.get_opts(&path, opts).await.map_err(self.err("head"))?;
            Ok(self.info(key, &r.meta, from_os_attributes(&r.attributes)))
        }
        .instrument(span)
        .await
    }

    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResponse> {
        let path = Self::path(key, "get")?;
        let span = tracing::debug_span!("store.get", backend = self.backend, key);
        async {
            let range = options.range.map(|r| match r {
                ByteRange::Bounded(a, b) => GetRange::Bounded(a..b),
                ByteRange::From(a) => GetRange::Offset(a),
                ByteRange::Suffix(n) => GetRange::Suffix(n),
            });
            if let Some(ByteRange::Bounded(a, b)) = options.range
                && b <= a
            {
                return Err(Error::invalid_input(format!("range {a}..{b} is empty")).with_op("get"));
            }
            let mut opts = object_store::GetOptions {
                range,
                if_match: options.if_match.clone(),
                if_none_match: options.if_none_match.clone(),
                ..Default::default()
            };
            let suffix = matches!(options.range, Some(ByteRange::Suffix(_)));
            let first_try = if suffix { opts.clone() } else { std::mem::take(&mut opts) };
            let r = match self.inner.get_opts(&path, first_try).await {
                // Azure has no suffix ranges: find the size, then ask for the tail.
                Err(object_store::Error::NotSupported { .. })
                    if matches!(options.range, Some(ByteRange::Suffix(_))) =>
                {
                    let Some(ByteRange::Suffix(n)) = options.range else { unreachable!() };
                    let size = self.inner.head(&path).await.map_err(self.err("get"))?.size;
                    let opts = object_store::GetOptions {
                        range: Some(GetRange::Bounded(size.saturating_sub(n)..size)),
                        if_match: opts.if_match.clone(),
                        ..opts
                    };
                    self.inner.get_opts(&path, opts).await.map_err(self.err("get"))?
                }
                other => other.map_err(self.err("get"))?,
            };
            let attributes =
                if self.gaps.sidecar.is_some() { self.read_sidecar(key)? } else { from_os_attributes(&r.attributes) };
            let info = self.info(key, &r.meta, attributes);
            let served = r.range.clone();
            let body = match r.payload {
                GetResultPayload::Stream(_) if self.gaps.remote => {
                    let etag = info.version.etag.clone();
                    let first = r.into_stream();
                    self.resumable(path, first, etag, served.clone())
                }
                #[cfg(all(feature = "fs", unix))]
                GetResultPayload::File(file, _) => file_body(file, served.clone(), key),
                _ => {
                    let backend = self.backend;
                    r.into_stream().map_err(move |e| map_err(backend, e).with_op("get")).boxed()
                }
            };
            Ok(GetResponse { info, range: served, body })
        }
        .instrument(span)
        .await
    }

    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<ObjectInfo> {
        let path = Self::path(key, "put")?;
        let span = tracing::debug_span!("store.put", backend = self.backend, key, size = body.len());
        self.put_inner(key, &path, body, options).instrument(span).await
    }

    async fn put_stream(&self, key: &str, mut body: ByteStream, options: PutOptions) -> Result<ObjectInfo> {
        let path = Self::path(key, "put_stream")?;
        self.check_attributes(&options, "put_stream")?;
        if options.mode != PutMode::Overwrite {
            return Err(Error::unsupported(self.backend, "put_stream")
                .with_detail("mode", "streamed uploads only overwrite; use put for create-only or update"));
        }
        let span = tracing::debug_span!("store.put_stream", backend = self.backend, key);
        async {
            let attributes = if self.gaps.sidecar.is_some() {
                object_store::Attributes::new()
            } else {
                to_os_attributes(&options.attributes)
            };
            let upload = self
                .inner
                .put_multipart_opts(&path, PutMultipartOptions { attributes, ..Default::default() })
                .await
                .map_err(self.err("put_stream"))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut size = 0_u64;
            loop {
                let chunk = match body.try_next().await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = writer.abort().await;
                        return Err(e);
                    }
                };
                if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                    return Err(self.err("put_stream")(e));
                }
                size += chunk.len() as u64;
                writer.put(chunk);
            }
            let result = writer.finish().await.map_err(self.err("put_stream"))?;
            if self.gaps.sidecar.is_some() {
                self.write_sidecar(key, &options.attributes).await?;
            }
            self.sync_to_disk(key, &options.attributes, "put_stream").await?;
            Ok(stored(key, size, result, options.attributes))
        }
        .instrument(span)
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = Self::path(key, "delete")?;
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.err("delete")(e)),
        }
        if self.gaps.sidecar.is_some() {
            self.write_sidecar(key, &Attributes::default()).await?;
        }
        Ok(())
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectInfo>> {
        list_with(prefix, |prefix| self.list_from(prefix, None))
    }

    async fn list_page(&self, options: ListOptions) -> Result<ListPage> {
        let span = tracing::debug_span!("store.list", backend = self.backend, prefix = %options.prefix);
        list_page_with(&options, self.gaps.ordered_list, |prefix, offset| self.list_from(prefix, offset))
            .instrument(span)
            .await
    }

    async fn copy(&self, from: &str, to: &str) -> Result<()> {
        self.copy_with(from, to, true).await
    }

    async fn copy_if_absent(&self, from: &str, to: &str) -> Result<()> {
        self.copy_with(from, to, false).await
    }

    async fn presign(&self, method: PresignMethod, key: &str, expires: Duration) -> Result<url::Url> {
        #[cfg_attr(not(any(feature = "s3", feature = "azure", feature = "gcs")), allow(unused_variables))]
        let path = Self::path(key, "presign")?;
        if expires.is_zero() || expires > crate::types::MAX_PRESIGN {
            return Err(Error::invalid_input("a presigned URL lives between 1 second and 7 days").with_op("presign"));
        }
        match &self.presigner {
            Presigner::None => Err(Error::unsupported(self.backend, "presign")
                .with_detail("presign", "no signing credentials (local stores: set presign_secret)")),
            Presigner::Local(signer) => signer.sign(method, key, expires),
            #[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
            Presigner::Native(_)
                if self.backend == "azure"
                    && !key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~/".contains(&b)) =>
            {
                // The SAS signature is computed over the encoded name and Azure refuses it.
                Err(Error::unsupported(self.backend, "presign")
                    .with_detail("key", "Azure presigned URLs need keys of letters, digits and -_.~/"))
            }
            #[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
            Presigner::Native(signer) => {
                let m = match method {
                    PresignMethod::Get => http::Method::GET,
                    PresignMethod::Put => http::Method::PUT,
                };
                signer.signed_url(m, &path, expires).await.map_err(self.err("presign"))
            }
        }
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use object_store::memory::InMemory;
    use object_store::{GetResult, ListResult, MultipartUpload, ObjectMeta, PutResult};

    use super::*;

    /// The in-memory store, except that the first download breaks after 10 bytes.
    #[derive(Debug, Default)]
    struct BreaksOnce {
        inner: InMemory,
        broke: AtomicBool,
    }

    impl fmt::Display for BreaksOnce {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("BreaksOnce")
        }
    }

    #[async_trait]
    impl ObjectStore for BreaksOnce {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<GetResult> {
            let mut r = self.inner.get_opts(location, options).await?;
            if !self.broke.swap(true, Ordering::SeqCst) {
                let whole = std::mem::replace(&mut r.payload, GetResultPayload::Stream(stream::empty().boxed()));
                let GetResultPayload::Stream(s) = whole else { unreachable!("memory streams") };
                let chunks: Vec<Bytes> = s.try_collect().await?;
                let first = Bytes::from(chunks.concat()).slice(..10);
                let broken = stream::iter([
                    Ok(first),
                    Err(object_store::Error::Generic { store: "test", source: "connection reset by peer".into() }),
                ]);
                r.payload = GetResultPayload::Stream(broken.boxed());
            }
            Ok(r)
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn a_broken_download_resumes_from_the_last_byte() {
        let gaps = Gaps::REMOTE;
        let store = ObjectBlobStore::new(
            Arc::new(BreaksOnce::default()),
            "memory",
            "test".into(),
            Capabilities::default(),
            Presigner::None,
            gaps,
        );
        let body: Vec<u8> = (0..100_u8).collect();
        store.put("k", Bytes::from(body.clone()), PutOptions::default()).await.unwrap();
        let got = store.get("k", GetOptions::default()).await.unwrap().bytes().await.unwrap();
        assert_eq!(got, body, "the second request continued at byte 10");
    }
}
