//! Client certificates over real TLS: certificates made by the test (rcgen), a served
//! router, and a real HTTPS client presenting them.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use platform_auth::mtls::{self, Mtls};
use platform_auth::shared_key::SharedKey;
use platform_auth::{AuthChain, Principal};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { issuer: Issuer::new(params, key), pem }
}

/// A leaf of `ca`: (certificate PEM, key PEM, DER).
fn leaf(ca: &Ca, sans: &[SanType]) -> (String, String, Vec<u8>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = sans.to_vec();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

async fn whoami(who: Principal) -> String {
    format!("{} {}", who.method, who.subject)
}

async fn start(required: bool, server_ca: &Ca, client_ca: &Ca, chain: AuthChain) -> String {
    let (cert, key, _) = leaf(server_ca, &[SanType::DnsName("localhost".try_into().unwrap())]);
    let verifier = mtls::client_verifier(client_ca.pem.as_bytes(), required).unwrap();
    let config = mtls::server_config(cert.as_bytes(), key.as_bytes(), verifier).unwrap();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(axum::middleware::from_fn_with_state(Arc::new(chain), platform_auth::layer::authenticate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(mtls::serve(listener, config, app));
    format!("https://localhost:{port}/whoami")
}

fn client(server_ca: &Ca, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(server_ca.pem.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], 0).into());
    if let Some((cert, key)) = identity {
        builder = builder.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_of_the_trusted_ca_is_the_principal() {
    let (server_ca, client_ca, stranger_ca) = (ca("server CA"), ca("client CA"), ca("stranger CA"));
    let spiffe = SanType::URI("spiffe://acme.test/billing".try_into().unwrap());
    let (cert, key, der) = leaf(&client_ca, &[spiffe, SanType::DnsName("billing.acme.test".try_into().unwrap())]);
    let (dns_cert, dns_key, _) = leaf(&client_ca, &[SanType::DnsName("reports.acme.test".try_into().unwrap())]);
    let (pinned_cert, pinned_key, pinned_der) = leaf(&client_ca, &[]);
    let pin = mtls::spki_sha256(&pinned_der).unwrap();
    assert_ne!(pin, mtls::spki_sha256(&der).unwrap());
    let chain = AuthChain::new().with(Arc::new(
        Mtls::from_san().pin(&pin, Principal::new("svc-ledger", "mtls").with_tenant(Some("acme".into()))),
    ));
    let url = start(true, &server_ca, &client_ca, chain).await;

    let said = |c: reqwest::Client| {
        let url = url.clone();
        async move {
            let r = c.get(&url).send().await?;
            Ok::<_, reqwest::Error>((r.status().as_u16(), r.text().await?))
        }
    };
    let got = said(client(&server_ca, Some((&cert, &key)))).await.unwrap();
    assert_eq!(got, (200, "mtls spiffe://acme.test/billing".to_owned()));
    let got = said(client(&server_ca, Some((&dns_cert, &dns_key)))).await.unwrap();
    assert_eq!(got, (200, "mtls reports.acme.test".to_owned()));
    let got = said(client(&server_ca, Some((&pinned_cert, &pinned_key)))).await.unwrap();
    assert_eq!(got, (200, "mtls svc-ledger".to_owned()));

    // No certificate, or one of another CA: the handshake fails, no request gets in.
    assert!(said(client(&server_ca, None)).await.is_err());
    let (s_cert, s_key, _) = leaf(&stranger_ca, &[SanType::URI("spiffe://acme.test/billing".try_into().unwrap())]);
    assert!(said(client(&server_ca, Some((&s_cert, &s_key)))).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_certificate_lets_other_methods_authenticate() {
    let (server_ca, client_ca) = (ca("server CA"), ca("client CA"));
    let (cert, key, _) = leaf(&client_ca, &[]);
    let chain = AuthChain::new()
        .with(Arc::new(Mtls::pinned_only()))
        .with(Arc::new(SharedKey::new("a-shared-key-of-some-length").unwrap()));
    let url = start(false, &server_ca, &client_ca, chain).await;
    let r = client(&server_ca, None).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r =
        client(&server_ca, None).get(&url).header("x-shared-key", "a-shared-key-of-some-length").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "shared_key shared-key");
    // A certificate that is trusted but not pinned is refused, not passed over.
    let r = client(&server_ca, Some((&cert, &key))).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn a_verifier_that_cannot_be_built_fails_startup() {
    assert!(mtls::client_verifier(b"", true).unwrap_err().is_invalid_input());
    assert!(
        mtls::client_verifier(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", true).is_err()
    );
}
