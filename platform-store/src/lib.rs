#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
#[cfg(feature = "memory")]
mod memory;
pub mod presign;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
mod types;

use std::sync::Arc;

#[allow(unused_imports)]
use backend::{Gaps, Presigner};
pub use backend::{ObjectBlobStore, is_not_modified};
#[cfg(feature = "memory")]
pub use memory::MemoryStore;
pub use platform_core::{Error, ErrorKind, Result};
pub use store::{BlobStore, BlobStoreExt};
pub use types::{
    Attributes, ByteRange, ByteStream, Capabilities, GetOptions, GetResponse, ListOptions, ListPage, MAX_KEY_LEN,
    ObjectInfo, ObjectRef, ObjectVersion, PresignMethod, PutMode, PutOptions, byte_stream, validate_key,
};

use platform_core::config::UrlParams;
use platform_core::mask_url;

/// Every scheme this build can open.
pub fn schemes() -> Vec<&'static str> {
    let all = [
        ("memory", cfg!(feature = "memory")),
        ("file", cfg!(feature = "fs")),
        ("s3", cfg!(feature = "s3")),
        ("az", cfg!(feature = "azure")),
        ("azure", cfg!(feature = "azure")),
        ("gs", cfg!(feature = "gcs")),
    ];
    all.into_iter().filter(|(_, on)| *on).map(|(scheme, _)| scheme).collect()
}

/// The feature that enables `scheme`, for errors.
fn feature_for(scheme: &str) -> Option<&'static str> {
    Some(match scheme {
        "memory" => "memory",
        "file" => "fs",
        "s3" => "s3",
        "az" | "azure" => "azure",
        "gs" => "gcs",
        _ => return None,
    })
}

fn bad(key: &str, why: &str) -> Error {
    platform_core::config::url_error("store", key, why)
}

/// The URL's query parameters, taken one by one; what is left is an error.
struct Params(UrlParams);

impl Params {
    fn parse(url: &url::Url) -> Result<Self> {
        UrlParams::parse("store", url.query()).map(Self)
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.0.take(key)
    }

    /// The given parameters that are present, in the order asked.
    #[cfg_attr(not(any(feature = "s3", feature = "azure")), expect(dead_code, reason = "S3 and Azure only"))]
    fn take_all(&mut self, keys: &[&str]) -> Vec<(String, String)> {
        self.0.take_all(keys)
    }

    #[cfg_attr(
        not(any(feature = "s3", feature = "azure", feature = "gcs")),
        expect(dead_code, reason = "cloud stores only")
    )]
    fn flag(&mut self, key: &str) -> Result<bool> {
        Ok(self.0.take_bool(key)?.unwrap_or(false))
    }

    fn finish(&self, scheme: &str) -> Result<()> {
        self.0.finish(scheme)
    }

    #[cfg(any(feature = "memory", feature = "fs"))]
    fn local_presigner(&mut self) -> Result<Presigner> {
        let secret = self.take("presign_secret");
        let base = self.take("presign_base");
        match (secret, base) {
            (None, None) => Ok(Presigner::None),
            (Some(secret), base) => {
                if secret.len() < 16 {
                    return Err(bad("presign_secret", "must be at least 16 characters"));
                }
                let base = base.unwrap_or_else(|| "http://localhost/blobs/".to_owned());
                let base = url::Url::parse(&base).map_err(|e| bad("presign_base", &format!("is not a URL: {e}")))?;
                Ok(Presigner::Local(presign::Signer::new(secret.into_bytes(), base)))
            }
            (None, Some(_)) => Err(bad("presign_base", "needs presign_secret")),
        }
    }
}

/// Local disk: conditional updates are decided by a lock of this process.
#[cfg(feature = "fs")]
fn fs_caps(presign: bool) -> Capabilities {
    Capabilities {
        create_only: true,
        update_if_version: true,
        attributes: true,
        presign,
        copy_if_absent: true,
        conditional_in_process_only: true,
    }
}

/// Opens a store from a URL:
///
/// | URL | backend | parameters |
/// |---|---|---|
/// | `memory://` | in-process (feature `memory`) | `presign_secret`, `presign_base` |
/// | `file:///abs/dir` | local disk, created when missing (`fs`) | `fsync`, `presign_secret`, `presign_base` |
/// | `s3://bucket` | S3 and compatibles: MinIO, R2, Spaces (`s3`) | `endpoint`, `region`, `access_key_id`, `secret_access_key`, `session_token`, `allow_http`, `virtual_hosted_style`, `ca_file` |
/// | `az://container` | Azure Blob (`azure`) | `account`, `access_key`, `endpoint`, `azurite`, `allow_http`, `ca_file` |
/// | `gs://bucket` | Google Cloud Storage (`gcs`) | `endpoint`, `service_account_path`, `anonymous`, `allow_http`, `ca_file` |
///
/// The cloud stores speak TLS (rustls) to `https://` endpoints; `ca_file` names a PEM
/// file of extra root certificates to trust, for a private CA.
///
/// Credentials not in the URL come from the usual environment (`AWS_*`, `AZURE_*`,
/// `GOOGLE_*`). Unknown parameters are errors naming them; secrets are masked in every
/// error and log line.
#[allow(clippy::unused_async)] // only local disk awaits (creating its directory)
pub async fn open(raw: &str) -> Result<Arc<dyn BlobStore>> {
    let masked = mask_url(raw);
    let url = url::Url::parse(raw).map_err(|e| bad("url", &format!("{masked:?} is not a URL: {e}")))?;
    let mut params = Params::parse(&url)?;
    let scheme = url.scheme().to_owned();
    let store: Arc<dyn BlobStore> = match scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => {
            let signer = match params.local_presigner()? {
                Presigner::Local(signer) => Some(signer),
                _ => None,
            };
            params.finish("memory")?;
            Arc::new(MemoryStore::new(masked, signer))
        }
        #[cfg(feature = "fs")]
        "file" => {
            let presigner = params.local_presigner()?;
            let fsync = params.0.take_bool("fsync")?.unwrap_or(false);
            params.finish("file")?;
            let dir = url.to_file_path().map_err(|()| bad("path", "must be absolute (file:///dir)"))?;
            tokio::fs::create_dir_all(&dir).await.map_err(|e| {
                Error::new(ErrorKind::PermissionDenied, format!("cannot create {}: {e}", dir.display()))
                    .with_backend("fs")
                    .with_op("open")
            })?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| backend::map_err("fs", e).with_op("open"))?
                .with_automatic_cleanup(true);
            let caps = fs_caps(!matches!(presigner, Presigner::None));
            let meta = dir.join(types::RESERVED_PREFIX);
            tokio::fs::create_dir_all(&meta).await.map_err(|e| {
                Error::new(ErrorKind::PermissionDenied, format!("cannot create {}: {e}", meta.display()))
                    .with_backend("fs")
                    .with_op("open")
            })?;
            let gaps = Gaps {
                sidecar: Some(meta),
                locked_update: true,
                copy_by_put: false,
                ordered_list: false,
                remote: false,
                swapped_copy_modes: false,
                fsync: fsync.then(|| dir.clone()),
            };
            Arc::new(ObjectBlobStore::new(Arc::new(fs), "fs", masked, caps, presigner, gaps))
        }
        #[cfg(feature = "s3")]
        "s3" => cloud::s3(&url, &mut params, masked)?,
        #[cfg(feature = "azure")]
        "az" | "azure" => cloud::azure(&url, &mut params, masked)?,
        #[cfg(feature = "gcs")]
        "gs" => cloud::gcs(&url, &mut params, masked)?,
        other => {
            return Err(platform_core::config::scheme_error(
                "platform-store",
                other,
                feature_for(other),
                &schemes(),
                raw,
            ));
        }
    };
    tracing::debug!(store = %store, "store opened");
    Ok(store)
}

/// Opens the store named by `{PREFIX}_URL` (`open_from_env("STORE")` reads `STORE_URL`).
pub async fn open_from_env(prefix: &str) -> Result<Arc<dyn BlobStore>> {
    let env = platform_core::config::Env::new(prefix);
    let url: String = env.require("URL")?;
    open(&url).await
}

#[cfg(any(feature = "s3", feature = "azure", feature = "gcs"))]
mod cloud {
    use std::sync::Arc;

    use object_store::ClientOptions;
    use platform_core::Result;

    use super::{Params, bad};
    use crate::backend::map_err;
    use crate::backend::{Gaps, Presigner};
    use crate::{BlobStore, Capabilities, ObjectBlobStore};

    fn name(url: &url::Url, what: &str) -> Result<String> {
        match url.host_str() {
            Some(h) if !h.is_empty() => Ok(h.to_owned()),
            _ => Err(bad(what, "is missing (scheme://name)")),
        }
    }

    fn client(params: &mut Params, endpoint: Option<&str>) -> Result<ClientOptions> {
        let allow_http = params.flag("allow_http")? || endpoint.is_some_and(|e| e.starts_with("http://"));
        let mut options = ClientOptions::new().with_allow_http(allow_http);
        // A private CA (a MinIO or an S3 gateway with its own certificates): trusted
        // beside the system's roots, never instead of verifying.
        if let Some(path) = params.take("ca_file") {
            let pem = std::fs::read(&path).map_err(|e| bad("ca_file", &format!("cannot read {path:?}: {e}")))?;
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad("ca_file", &format!("{path:?} holds no PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err(bad("ca_file", &format!("{path:?} holds no PEM certificate")));
            }
            for cert in certs {
                options = options.with_root_certificate(cert);
            }
        }
        Ok(options)
    }

    /// Cloud stores do everything natively (presigning needs credentials).
    const CLOUD_CAPS: Capabilities = Capabilities {
        create_only: true,
        update_if_version: true,
        attributes: true,
        presign: true,
        copy_if_absent: true,
        conditional_in_process_only: false,
    };

    const GAPS: Gaps = Gaps::REMOTE;

    #[cfg(feature = "s3")]
    pub(super) fn s3(url: &url::Url, params: &mut Params, masked: String) -> Result<Arc<dyn BlobStore>> {
        use object_store::aws::AmazonS3Builder;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(name(url, "bucket")?);
        let endpoint = params.take("endpoint");
        b = b.with_client_options(client(params, endpoint.as_deref())?);
        if let Some(e) = &endpoint {
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        for (param, value) in params.take_all(&["region", "access_key_id", "secret_access_key", "session_token"]) {
            b = match param.as_str() {
                "region" => b.with_region(value),
                "access_key_id" => b.with_access_key_id(value),
                "secret_access_key" => b.with_secret_access_key(value),
                _ => b.with_token(value),
            };
        }
        if params.flag("virtual_hosted_style")? {
            b = b.with_virtual_hosted_style_request(true);
        }
        params.finish("s3")?;
        let s3 = Arc::new(b.build().map_err(|e| map_err("s3", e).with_op("open"))?);
        let gaps = Gaps { copy_by_put: true, ..GAPS };
        let signer: Arc<dyn object_store::signer::Signer> = Arc::clone(&s3) as _;
        Ok(Arc::new(ObjectBlobStore::new(s3, "s3", masked, CLOUD_CAPS, Presigner::Native(signer), gaps)))
    }

    #[cfg(feature = "azure")]
    pub(super) fn azure(url: &url::Url, params: &mut Params, masked: String) -> Result<Arc<dyn BlobStore>> {
        use object_store::azure::MicrosoftAzureBuilder;
        let mut b = MicrosoftAzureBuilder::from_env().with_container_name(name(url, "container")?);
        let endpoint = params.take("endpoint");
        b = b.with_client_options(client(params, endpoint.as_deref())?);
        if let Some(e) = &endpoint {
            b = b.with_endpoint(e.clone());
        }
        for (param, value) in params.take_all(&["account", "access_key"]) {
            b = if param == "account" { b.with_account(value) } else { b.with_access_key(value) };
        }
        if params.flag("azurite")? {
            b = b.with_use_emulator(true);
        }
        params.finish("az")?;
        let az = Arc::new(b.build().map_err(|e| map_err("azure", e).with_op("open"))?);
        let signer: Arc<dyn object_store::signer::Signer> = Arc::clone(&az) as _;
        Ok(Arc::new(ObjectBlobStore::new(az, "azure", masked, CLOUD_CAPS, Presigner::Native(signer), GAPS)))
    }

    #[cfg(feature = "gcs")]
    pub(super) fn gcs(url: &url::Url, params: &mut Params, masked: String) -> Result<Arc<dyn BlobStore>> {
        use object_store::gcp::GoogleCloudStorageBuilder;
        let mut b = GoogleCloudStorageBuilder::from_env().with_bucket_name(name(url, "bucket")?);
        let endpoint = params.take("endpoint");
        b = b.with_client_options(client(params, endpoint.as_deref())?);
        if let Some(e) = &endpoint {
            b = b.with_base_url(e);
        }
        let key = params.take("service_account_path");
        if let Some(v) = &key {
            b = b.with_service_account_path(v);
        }
        if params.flag("anonymous")? {
            // Some requests ask for a credential even with signing skipped: give a dummy
            // bearer token rather than let them query the metadata server.
            let token = object_store::gcp::GcpCredential { bearer: "anonymous".to_owned() };
            b = b
                .with_skip_signature(true)
                .with_credentials(Arc::new(object_store::StaticCredentialProvider::new(token)));
        }
        params.finish("gs")?;
        let gcs = Arc::new(b.build().map_err(|e| map_err("gcs", e).with_op("open"))?);
        let caps = Capabilities { presign: key.is_some(), ..CLOUD_CAPS };
        let presigner = if key.is_some() {
            Presigner::Native(Arc::clone(&gcs) as Arc<dyn object_store::signer::Signer>)
        } else {
            Presigner::None
        };
        let gaps = Gaps { swapped_copy_modes: true, ..GAPS };
        Ok(Arc::new(ObjectBlobStore::new(gcs, "gcs", masked, caps, presigner, gaps)))
    }
}
