//! The `BlobStore` trait and its conveniences.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt as _;
use platform_core::{Error, ErrorKind, HealthCheck, Result};
use sha2::{Digest, Sha256};

use crate::types::{
    ByteStream, Capabilities, GetOptions, GetResponse, ListOptions, ListPage, ObjectInfo, ObjectRef, PresignMethod,
    PutOptions,
};

/// Object storage: keys to bytes with metadata.
///
/// # Contract
/// - Keys are checked by [`validate_key`](crate::validate_key) before any I/O: a bad key
///   is `InvalidInput` naming it.
/// - `get` and `head` of a missing key are `NotFound`; `delete` of a missing key succeeds.
/// - `put` with [`PutMode::Create`](crate::PutMode::Create) on an existing key is
///   `AlreadyExists`; with `Update(version)` on a changed or missing object, `Conflict`.
///   Of two racing conditional writers exactly one wins. A backend that can't make a
///   mode atomic says so in [`capabilities`](Self::capabilities) and returns `Unsupported`.
/// - Attributes given to `put` come back from `head` and `get` on every backend that
///   reports `attributes`; elsewhere a put with attributes is `Unsupported`.
/// - `put_stream` uploads in parts with bounded memory (a few parts in flight), whatever
///   the object's size; it only overwrites.
/// - A range is clamped to the object's end; a range that starts past the end is
///   `InvalidInput`. A get body that fails midway is resumed from the last byte received,
///   pinned to the same etag.
/// - `list` yields every object under a prefix in key order; `list_page` pages through
///   them with an opaque token and, with the delimiter, groups deeper keys into common
///   prefixes.
/// - `presign` returns a URL a plain HTTP client can use until it expires.
#[async_trait]
pub trait BlobStore: HealthCheck + Debug + Display + Send + Sync + 'static {
    /// The backend's name: `memory`, `fs`, `s3`, `azure`, `gcs`.
    fn backend(&self) -> &'static str;

    /// What this backend (with its configuration) can do.
    fn capabilities(&self) -> Capabilities;

    /// Metadata and attributes of an object.
    async fn head(&self, key: &str) -> Result<ObjectInfo>;

    /// An object, or part of it, as a stream.
    async fn get(&self, key: &str, options: GetOptions) -> Result<GetResponse>;

    /// Stores `body` under `key`.
    async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<ObjectInfo>;

    /// Stores a stream under `key` in parts, with bounded memory.
    async fn put_stream(&self, key: &str, body: ByteStream, options: PutOptions) -> Result<ObjectInfo>;

    /// Deletes an object; a missing one is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Every object under `prefix`, in key order.
    fn list(&self, prefix: &str) -> futures::stream::BoxStream<'static, Result<ObjectInfo>>;

    /// One page of a listing.
    async fn list_page(&self, options: ListOptions) -> Result<ListPage>;

    /// Copies an object, its attributes with it, replacing `to` when it exists.
    async fn copy(&self, from: &str, to: &str) -> Result<()>;

    /// Copies an object only when `to` does not exist: `AlreadyExists` otherwise, with
    /// the check and the copy one atomic step (see [`Capabilities::copy_if_absent`]).
    async fn copy_if_absent(&self, from: &str, to: &str) -> Result<()>;

    /// A URL that allows `method` on `key` for `expires` (at most 7 days).
    async fn presign(&self, method: PresignMethod, key: &str, expires: Duration) -> Result<url::Url>;
}

macro_rules! forward_blob_store {
    ($($ptr:ident),*) => {$(
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<T: BlobStore + ?Sized> BlobStore for $ptr<T> {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            async fn head(&self, key: &str) -> Result<ObjectInfo> {
                (**self).head(key).await
            }
            async fn get(&self, key: &str, options: GetOptions) -> Result<GetResponse> {
                (**self).get(key, options).await
            }
            async fn put(&self, key: &str, body: Bytes, options: PutOptions) -> Result<ObjectInfo> {
                (**self).put(key, body, options).await
            }
            async fn put_stream(&self, key: &str, body: ByteStream, options: PutOptions) -> Result<ObjectInfo> {
                (**self).put_stream(key, body, options).await
            }
            async fn delete(&self, key: &str) -> Result<()> {
                (**self).delete(key).await
            }
            fn list(&self, prefix: &str) -> futures::stream::BoxStream<'static, Result<ObjectInfo>> {
                (**self).list(prefix)
            }
            async fn list_page(&self, options: ListOptions) -> Result<ListPage> {
                (**self).list_page(options).await
            }
            async fn copy(&self, from: &str, to: &str) -> Result<()> {
                (**self).copy(from, to).await
            }
            async fn copy_if_absent(&self, from: &str, to: &str) -> Result<()> {
                (**self).copy_if_absent(from, to).await
            }
            async fn presign(&self, method: PresignMethod, key: &str, expires: Duration) -> Result<url::Url> {
                (**self).presign(method, key, expires).await
            }
        }
    )*};
}
forward_blob_store!(Arc, Box);

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn content_key(sha256: &str) -> String {
    format!("cas/sha256/{sha256}")
}

/// Conveniences on every [`BlobStore`].
pub trait BlobStoreExt: BlobStore {
    /// The whole object as bytes.
    fn get_bytes(&self, key: &str) -> impl Future<Output = Result<Bytes>> + Send {
        async move { self.get(key, GetOptions::default()).await?.bytes().await }
    }

    /// Overwrites `key` with `body`, no attributes.
    fn put_bytes(&self, key: &str, body: impl Into<Bytes> + Send) -> impl Future<Output = Result<ObjectInfo>> + Send {
        let body = body.into();
        async move { self.put(key, body, PutOptions::default()).await }
    }

    /// Stores content under a key derived from its SHA-256; storing the same content
    /// again is a no-op returning the same ref.
    fn put_content(&self, body: impl Into<Bytes> + Send) -> impl Future<Output = Result<ObjectRef>> + Send {
        let body = body.into();
        async move {
            let sha256 = hex(&Sha256::digest(&body));
            let reference = ObjectRef { key: content_key(&sha256), sha256, size: body.len() as u64 };
            match self.put(&reference.key, body, PutOptions::create()).await {
                Ok(_) => Ok(reference),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(reference),
                Err(e) => Err(e),
            }
        }
    }

    /// Streams content to the store, hashing it on the way, then moves it under its
    /// content key. Memory stays bounded.
    fn put_content_stream(&self, body: ByteStream) -> impl Future<Output = Result<ObjectRef>> + Send {
        async move {
            let staging = format!("cas/staging/{}", uuid::Uuid::new_v4().simple());
            let hasher = Arc::new(std::sync::Mutex::new((Sha256::new(), 0_u64)));
            let tap = Arc::clone(&hasher);
            let body = body
                .map(move |chunk| {
                    if let Ok(c) = &chunk {
                        let mut h = tap.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        h.0.update(c);
                        h.1 += c.len() as u64;
                    }
                    chunk
                })
                .boxed();
            self.put_stream(&staging, body, PutOptions::default()).await?;
            let (digest, size) = {
                let h = hasher.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                (hex(&h.0.clone().finalize()), h.1)
            };
            let reference = ObjectRef { key: content_key(&digest), sha256: digest, size };
            let copied = match self.copy_if_absent(&staging, &reference.key).await {
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                other => other,
            };
            self.delete(&staging).await?;
            copied.map(|()| reference)
        }
    }

    /// Reads content by its ref and checks size and SHA-256: a mismatch is `Conflict`
    /// naming the key, never corrupt bytes handed on.
    fn get_verified(&self, reference: &ObjectRef) -> impl Future<Output = Result<Bytes>> + Send {
        let reference = reference.clone();
        async move {
            let body = self.get_bytes(&reference.key).await?;
            let actual = hex(&Sha256::digest(&body));
            if body.len() as u64 != reference.size || actual != reference.sha256 {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "content at {:?} does not match its ref: sha256 {} and {} bytes expected, sha256 {actual} and {} bytes found",
                        reference.key,
                        reference.sha256,
                        reference.size,
                        body.len()
                    ),
                )
                .with_op("get_verified"));
            }
            Ok(body)
        }
    }
}

impl<T: BlobStore + ?Sized> BlobStoreExt for T {}
