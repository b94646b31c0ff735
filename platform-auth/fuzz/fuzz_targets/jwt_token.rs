//! `cargo fuzz run jwt_token`: arbitrary bytes as a bearer token and as a JWKS document
//! never panic the JWT verifier and are never accepted.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use platform_auth::jwt::{Issuer, Jwt, StaticKeys};
use platform_auth::testing::{Forge, token_parsing};

struct Setup {
    rt: tokio::runtime::Runtime,
    forge: Forge,
    jwt: Jwt,
}

static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let forge = Forge::new("https://id.test/fuzz", "fuzz").expect("forge");
    let jwt = Jwt::new().issuer(Issuer::new(forge.issuer(), "fuzz", Arc::new(StaticKeys(forge.key_set()))));
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    Setup { rt, forge, jwt }
});

fuzz_target!(|input: &[u8]| {
    let s = &*SETUP;
    s.rt.block_on(token_parsing(&s.jwt, &s.forge, input));
});
