//! The conformance suite, run on memory and local disk, against the S3 (moto) and Azure
//! (Azurite) emulators, and for GCS against `scripts/gcs-double.py`.
//!
//! GCS has no server to run, and the emulators that install here speak the JSON API,
//! not the XML API `object_store` uses for uploads (fake-gcs-server issue #331). The
//! double answers the XML API as Google documents it and checks every request: bearer
//! tokens signed by the test service account, V4 signed URLs, preconditions, ranges,
//! multipart uploads and listing.
//!
//! Server URLs come from `PLATFORM_TEST_<NAME>_URL` (see `scripts/services.env`);
//! unset, a backend's tests are skipped, or fail under `PLATFORM_TEST_REQUIRE_ALL=1`.

#[allow(unused_imports)]
use platform_store::BlobStore as _;
use platform_store::conformance_tests;
use platform_store::testkit::UrlHarness;

conformance_tests!(memory, Some(UrlHarness::Memory));

conformance_tests!(fs, Some(UrlHarness::Fs));

#[cfg(feature = "s3")]
conformance_tests!(s3, UrlHarness::s3_from_env());

#[cfg(feature = "azure")]
conformance_tests!(azure, UrlHarness::azure_from_env());

#[cfg(feature = "gcs")]
conformance_tests!(gcs, UrlHarness::gcs_from_env());

#[cfg(feature = "gcs")]
#[tokio::test]
async fn gcs_opens_offline() {
    let store = platform_store::open("gs://bucket?endpoint=http://127.0.0.1:9&anonymous=true").await.unwrap();
    assert_eq!(store.backend(), "gcs");
    assert!(!store.capabilities().presign, "no service account key, no presigning");
    let err = platform_store::open("gs://bucket?endpoint=http://127.0.0.1:9&bogus=1").await.unwrap_err();
    assert!(err.is_invalid_input() && err.to_string().contains("bogus"), "{err}");
    let err = store.head("k").await.unwrap_err();
    assert!(err.is_unavailable() || err.is_retryable(), "{err}");
}

/// S3 over TLS: an `https://` endpoint whose certificate a private CA signed (a TLS
/// front over moto, `scripts/tls-proxy.py`) works once `ca_file` names the CA, and is
/// refused without it: certificates are verified, never skipped.
#[cfg(feature = "s3")]
#[tokio::test]
async fn s3_over_tls_with_a_private_ca() {
    use platform_store::BlobStoreExt as _;
    let Some(plain) = platform_core::testkit::server_url("S3") else { return };
    let Some(tls) = platform_core::testkit::server_url("S3_TLS") else { return };
    let (endpoint, ca) = tls.split_once('?').expect("S3_TLS url: https://host:port?ca_file=…");
    let bucket = platform_core::testkit::unique_name("tls").replace('-', "");
    let created = reqwest::Client::new().put(format!("{}/{bucket}", plain.trim_end_matches('/'))).send().await;
    assert!(created.expect("create bucket").status().is_success());
    let url = format!("s3://{bucket}?endpoint={endpoint}&region=us-east-1&access_key_id=test&secret_access_key=test");
    let store = platform_store::open(&format!("{url}&{ca}")).await.expect("open over TLS");
    store.put_bytes("k", b"over tls".to_vec()).await.expect("put over TLS");
    assert_eq!(store.get_bytes("k").await.expect("get over TLS").as_ref(), b"over tls");
    let untrusted = platform_store::open(&url).await.expect("open without the CA");
    let err = untrusted.head("k").await.expect_err("an unknown CA is refused");
    assert!(err.is_unavailable() && !err.is_retryable(), "{err}");
    assert!(err.message().contains("certificate is not trusted"), "{err}");
    let err = platform_store::open(&format!("{url}&ca_file=/nonexistent/ca.pem")).await.expect_err("bad ca_file");
    assert_eq!(err.details()[0].field, "ca_file", "{err}");
}

/// `fsync=true` on local disk: every write path still works (nested keys, attributes,
/// streamed puts, copies), and a bad value is an error naming the parameter.
#[tokio::test]
async fn fs_with_fsync() {
    use futures::TryStreamExt as _;
    use platform_store::{Attributes, BlobStoreExt as _, PutOptions, byte_stream};
    let dir = std::env::temp_dir().join(platform_core::testkit::unique_name("store-fsync"));
    let store = platform_store::open(&format!("file://{}?fsync=true", dir.display())).await.unwrap();
    let options = PutOptions::default().with_attributes(Attributes::default().with_content_type("text/plain"));
    store.put("a/b/c.txt", "nested".into(), options).await.unwrap();
    assert_eq!(store.get_bytes("a/b/c.txt").await.unwrap(), "nested");
    assert_eq!(store.head("a/b/c.txt").await.unwrap().attributes.content_type.as_deref(), Some("text/plain"));
    let parts = vec![Ok(bytes::Bytes::from(vec![7_u8; 3 << 20])), Ok(bytes::Bytes::from(vec![8_u8; 10]))];
    store.put_stream("big", byte_stream(futures::stream::iter(parts)), PutOptions::default()).await.unwrap();
    store.copy("a/b/c.txt", "copy/of/c").await.unwrap();
    assert_eq!(store.head("copy/of/c").await.unwrap().attributes.content_type.as_deref(), Some("text/plain"));
    let body: Vec<_> = store.get("big", Default::default()).await.unwrap().body.try_collect().await.unwrap();
    assert_eq!(body.iter().map(bytes::Bytes::len).sum::<usize>(), (3 << 20) + 10);
    let err = platform_store::open(&format!("file://{}?fsync=maybe", dir.display())).await.unwrap_err();
    assert!(err.is_invalid_input() && err.to_string().contains("fsync"), "{err}");
    drop(std::fs::remove_dir_all(&dir));
}

/// A local file cut short while it is read fails the read with `Conflict`: a body is
/// never handed on shorter than the range it promised.
#[tokio::test]
async fn fs_read_of_a_truncated_file_fails() {
    use futures::TryStreamExt as _;
    use platform_store::BlobStoreExt as _;
    let dir = std::env::temp_dir().join(platform_core::testkit::unique_name("store-truncated"));
    let store = platform_store::open(&format!("file://{}", dir.display())).await.unwrap();
    store.put_bytes("k", vec![1_u8; 40 << 20]).await.unwrap();
    let mut body = store.get("k", Default::default()).await.unwrap().body;
    let first = body.try_next().await.unwrap().unwrap().len();
    assert!(first < 40 << 20, "read in parts");
    std::fs::File::options().write(true).open(dir.join("k")).unwrap().set_len(first as u64).unwrap();
    let err = body.try_next().await.unwrap_err();
    assert_eq!(err.kind(), platform_store::ErrorKind::Conflict, "{err}");
    drop(std::fs::remove_dir_all(&dir));
}
