//! Presigned URLs for the local backends (memory, local disk), which have no HTTP server
//! of their own: HMAC-SHA256-signed, expiring URLs under a base URL the application
//! serves, and the [`Verifier`] its handler calls before serving or accepting the object.
//!
//! ```
//! use platform_store::presign::{Signer, Verifier};
//! use platform_store::PresignMethod;
//! use std::time::Duration;
//!
//! let base = url::Url::parse("https://files.example.com/blobs/").unwrap();
//! let signer = Signer::new(b"a long random secret".to_vec(), base);
//! let url = signer.sign(PresignMethod::Get, "reports/q1 2026.pdf", Duration::from_secs(60)).unwrap();
//! // In the HTTP handler for /blobs/{*key}:
//! let verifier = Verifier::new(b"a long random secret".to_vec());
//! let key = verifier.verify("GET", url.path().strip_prefix("/blobs/").unwrap(), url.query().unwrap_or("")).unwrap();
//! assert_eq!(key, "reports/q1 2026.pdf");
//! ```

use std::time::Duration;

use hmac::{Hmac, Mac};
use platform_core::{Error, ErrorKind, Result, Secret};
use sha2::Sha256;
use time::OffsetDateTime;

use crate::PresignMethod;

const EXPIRES: &str = "X-Platform-Expires";
const SIGNATURE: &str = "X-Platform-Signature";

fn mac(secret: &[u8], method: &str, key: &str, expires: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(format!("{method}\n{key}\n{expires}").as_bytes());
    mac
}

/// Makes presigned URLs under a base URL.
#[derive(Debug, Clone)]
pub struct Signer {
    secret: Secret<Vec<u8>>,
    base: url::Url,
}

impl Signer {
    /// A signer with this secret for URLs under `base` (which should end in `/`).
    pub fn new(secret: Vec<u8>, base: url::Url) -> Self {
        Self { secret: Secret::new(secret), base }
    }

    /// A URL allowing `method` on `key` until `expires` from now.
    pub fn sign(&self, method: PresignMethod, key: &str, expires: Duration) -> Result<url::Url> {
        crate::validate_key(key)?;
        if expires > crate::types::MAX_PRESIGN || expires.is_zero() {
            return Err(Error::invalid_input("a presigned URL lives between 1 second and 7 days").with_op("presign"));
        }
        let until = OffsetDateTime::now_utc().unix_timestamp() + i64::try_from(expires.as_secs()).unwrap_or(0).max(1);
        let signature =
            crate::store::hex(&mac(self.secret.expose(), method.as_str(), key, until).finalize().into_bytes());
        let mut url = self.base.clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| Error::invalid_input("presign_base cannot be a base URL").with_op("presign"))?;
            segments.pop_if_empty();
            for segment in key.split('/') {
                segments.push(segment);
            }
        }
        url.query_pairs_mut().append_pair(EXPIRES, &until.to_string()).append_pair(SIGNATURE, &signature);
        Ok(url)
    }
}

/// Checks presigned URLs in the application's HTTP handler.
#[derive(Debug, Clone)]
pub struct Verifier {
    secret: Secret<Vec<u8>>,
}

impl Verifier {
    /// A verifier with the signer's secret.
    pub fn new(secret: Vec<u8>) -> Self {
        Self { secret: Secret::new(secret) }
    }

    /// Checks a request: its method, the (percent-encoded) key part of its path and its
    /// query string. Returns the decoded key; `PermissionDenied` when the signature is
    /// wrong or the URL expired, `InvalidInput` when parameters are missing.
    pub fn verify(&self, method: &str, encoded_key: &str, query: &str) -> Result<String> {
        let key = percent_encoding::percent_decode_str(encoded_key)
            .decode_utf8()
            .map_err(|_| Error::invalid_input("the key in a presigned URL is not UTF-8").with_op("presign"))?
            .into_owned();
        let mut expires = None;
        let mut signature = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                EXPIRES => expires = v.parse::<i64>().ok(),
                SIGNATURE => signature = Some(v.into_owned()),
                _ => {}
            }
        }
        let (Some(expires), Some(signature)) = (expires, signature) else {
            return Err(Error::invalid_input("not a presigned URL: expiry or signature missing").with_op("presign"));
        };
        let denied =
            |why: &str| Error::new(ErrorKind::PermissionDenied, format!("presigned URL {why}")).with_op("presign");
        let bytes = (0..signature.len())
            .step_by(2)
            .map(|i| signature.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| denied("has a malformed signature"))?;
        mac(self.secret.expose(), method, &key, expires)
            .verify_slice(&bytes)
            .map_err(|_| denied("has a wrong signature"))?;
        if OffsetDateTime::now_utc().unix_timestamp() > expires {
            return Err(denied("expired"));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let signer = Signer::new(b"s3cret".to_vec(), url::Url::parse("http://127.0.0.1:1/b/").unwrap());
        let url = signer.sign(PresignMethod::Put, "a b/ü+x.txt", Duration::from_secs(30)).unwrap();
        let path = url.path().strip_prefix("/b/").unwrap();
        let v = Verifier::new(b"s3cret".to_vec());
        assert_eq!(v.verify("PUT", path, url.query().unwrap()).unwrap(), "a b/ü+x.txt");
        assert!(v.verify("GET", path, url.query().unwrap()).unwrap_err().is_permission_denied());
        assert!(Verifier::new(b"other".to_vec()).verify("PUT", path, url.query().unwrap()).is_err());
        let tampered = url.query().unwrap().replace("X-Platform-Expires=", "X-Platform-Expires=9");
        assert!(v.verify("PUT", path, &tampered).unwrap_err().is_permission_denied());
        assert!(v.verify("PUT", path, "").unwrap_err().is_invalid_input());
    }
}
