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
