//! The values the store speaks: keys, object info, options, pages, capabilities.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt as _, TryStreamExt as _};
use platform_core::{Error, Result};
use time::OffsetDateTime;

/// Prefix reserved for the store's own sidecar files (attributes on local disk).
pub(crate) const RESERVED_PREFIX: &str = ".platform-meta";

/// The longest key accepted, in bytes (S3's and Azure's limit).
pub const MAX_KEY_LEN: usize = 1024;

/// Checks a key: 1-1024 bytes, `/`-separated segments that are not empty, `.` or `..`,
/// no control characters, not under the reserved `.platform-meta/`. Unicode and spaces
/// are fine.
pub fn validate_key(key: &str) -> Result<()> {
    let why = if key.is_empty() {
        Some("is empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("is longer than 1024 bytes")
    } else if key.chars().any(char::is_control) {
        Some("has a control character")
    } else {
        // One pass over the segments: every call checks a key, so this stays cheap.
        let mut why = None;
        for (i, segment) in key.split('/').enumerate() {
            why = match segment {
                "" => Some("has an empty segment (leading, trailing or double '/')"),
                "." | ".." => Some("has a '.' or '..' segment"),
                RESERVED_PREFIX if i == 0 => Some("is under the reserved .platform-meta/ prefix"),
                _ => continue,
            };
            break;
        }
        why
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::invalid_input(format!("key {key:?} {why}")).with_detail("key", why)),
    }
}

/// Checks a listing prefix: empty, or a key prefix that could start a valid key.
pub(crate) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_key(prefix.trim_end_matches('/')).map_err(|e| e.with_op("list"))
}

/// What identifies one version of an object, for conditional requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ObjectVersion {
    /// The entity tag.
    pub etag: Option<String>,
    /// The backend's version or generation, where it has one (GCS generation).
    pub version: Option<String>,
}

/// An object's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time.
    pub last_modified: OffsetDateTime,
    /// Entity tag and version.
    pub version: ObjectVersion,
    /// Attributes (filled by `head` and `get`, empty in listings).
    pub attributes: Attributes,
}

/// Standard attributes and user metadata of an object.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Attributes {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// User metadata (ASCII names, lowercase on most backends).
    pub metadata: BTreeMap<String, String>,
}

impl Attributes {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Sets the content type.
    #[must_use]
    pub fn with_content_type(mut self, v: impl Into<String>) -> Self {
        self.content_type = Some(v.into());
        self
    }

    /// Sets the cache control.
    #[must_use]
    pub fn with_cache_control(mut self, v: impl Into<String>) -> Self {
        self.cache_control = Some(v.into());
        self
    }

    /// Adds user metadata.
    #[must_use]
    pub fn with_metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }
}

/// How a put treats an existing object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PutMode {
    /// Replace whatever is there.
    #[default]
    Overwrite,
    /// Only create: `AlreadyExists` when the key exists.
    Create,
    /// Only replace this version: `Conflict` when the object changed (or is gone).
    Update(ObjectVersion),
}

/// Options of a put.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PutOptions {
    /// Overwrite, create-only or update-if-version.
    pub mode: PutMode,
    /// Content type, cache control, user metadata.
    pub attributes: Attributes,
}

impl PutOptions {
    /// Create-only.
    pub fn create() -> Self {
        Self { mode: PutMode::Create, ..Self::default() }
    }

    /// Replace only this version.
    pub fn update(version: ObjectVersion) -> Self {
        Self { mode: PutMode::Update(version), ..Self::default() }
    }

    /// Sets the attributes.
    #[must_use]
    pub fn with_attributes(mut self, attributes: Attributes) -> Self {
        self.attributes = attributes;
        self
    }
}

/// A byte range to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ByteRange {
    /// `start..end` (end exclusive, clamped to the object's size).
    Bounded(u64, u64),
    /// From `start` to the end.
    From(u64),
    /// The last `n` bytes.
    Suffix(u64),
}

/// Options of a get.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GetOptions {
    /// Only part of the object.
    pub range: Option<ByteRange>,
    /// Only if the etag matches (else `Conflict`).
    pub if_match: Option<String>,
    /// Only if the etag differs (else `Conflict` with [`is_not_modified`](crate::is_not_modified)).
    pub if_none_match: Option<String>,
}

impl GetOptions {
    /// A range.
    pub fn range(range: ByteRange) -> Self {
        Self { range: Some(range), ..Self::default() }
    }

    /// Only if the etag matches.
    #[must_use]
    pub fn with_if_match(mut self, etag: impl Into<String>) -> Self {
        self.if_match = Some(etag.into());
        self
    }

    /// Only if the etag differs.
    #[must_use]
    pub fn with_if_none_match(mut self, etag: impl Into<String>) -> Self {
        self.if_none_match = Some(etag.into());
        self
    }
}

/// A streamed body.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// The result of a get: metadata, the range served and the body as a stream.
pub struct GetResponse {
    /// Metadata of the whole object.
    pub info: ObjectInfo,
    /// The byte range of the object this body covers.
    pub range: std::ops::Range<u64>,
    /// The body.
    pub body: ByteStream,
}

impl fmt::Debug for GetResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GetResponse").field("info", &self.info).field("range", &self.range).finish_non_exhaustive()
    }
}

impl GetResponse {
    /// Collects the body.
    pub async fn bytes(self) -> Result<Bytes> {
        let mut body = self.body;
        let Some(first) = body.try_next().await? else { return Ok(Bytes::new()) };
        // One chunk (the usual case for small objects) is handed on without a copy.
        let Some(second) = body.try_next().await? else { return Ok(first) };
        let capacity = usize::try_from(self.range.end - self.range.start).unwrap_or(0);
        let mut out = Vec::with_capacity(capacity.min(64 << 20));
        out.extend_from_slice(&first);
        out.extend_from_slice(&second);
        while let Some(chunk) = body.try_next().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.into())
    }
}

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ListOptions {
    /// Only keys starting with this (use a trailing `/` for a "directory").
    pub prefix: String,
    /// Group keys below the next `/` after the prefix into common prefixes.
    pub delimiter: bool,
    /// Where the previous page stopped.
    pub token: Option<String>,
    /// The most entries (objects plus prefixes) per page (default 1000).
    pub limit: usize,
}

impl ListOptions {
    /// Keys under `prefix`, 1000 per page.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), delimiter: false, token: None, limit: 1000 }
    }

    /// Groups by `/`.
    #[must_use]
    pub fn with_delimiter(mut self) -> Self {
        self.delimiter = true;
        self
    }

    /// Continues after a page.
    #[must_use]
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Page size.
    #[must_use]
    pub fn with_limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ListPage {
    /// Objects, in key order.
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes (with the delimiter), each ending in `/`.
    pub prefixes: Vec<String>,
    /// Pass to the next call; `None` on the last page.
    pub next_token: Option<String>,
}

/// The HTTP method a presigned URL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresignMethod {
    /// Download.
    Get,
    /// Upload.
    Put,
}

impl PresignMethod {
    /// `GET` or `PUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Put => "PUT",
        }
    }
}

/// What a backend can do; what it can't returns `Unsupported`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// `PutMode::Create` is atomic.
    pub create_only: bool,
    /// `PutMode::Update` is atomic.
    pub update_if_version: bool,
    /// Attributes and user metadata are kept.
    pub attributes: bool,
    /// Presigned URLs.
    pub presign: bool,
    /// `copy` with `overwrite = false` is atomic.
    pub copy_if_absent: bool,
    /// Conditional updates work only inside this process (local disk: a lock, not the
    /// file system, decides).
    pub conditional_in_process_only: bool,
}

/// The address of content stored by its hash ([`BlobStoreExt::put_content`](crate::BlobStoreExt::put_content)).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ObjectRef {
    /// Where it is stored: `cas/sha256/<hex>`.
    pub key: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// A stream of byte chunks from anything that yields `Bytes`.
pub fn byte_stream<S>(s: S) -> ByteStream
where
    S: futures::Stream<Item = Result<Bytes>> + Send + 'static,
{
    s.boxed()
}

/// How long a presigned URL may live at most (7 days, S3's limit).
pub(crate) const MAX_PRESIGN: Duration = Duration::from_secs(7 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        for ok in ["a", "a/b/c.txt", "héllo wörld/ü 1.txt", "a..b", ".hidden/x"] {
            validate_key(ok).unwrap();
        }
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a\nb", ".platform-meta/x", &"k".repeat(1025)] {
            let err = validate_key(bad).unwrap_err();
            assert!(err.is_invalid_input(), "{bad:?}");
        }
    }
}
