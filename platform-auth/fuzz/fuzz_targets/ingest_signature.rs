//! `cargo fuzz run ingest_signature`: arbitrary Standard Webhooks headers and bodies
//! never panic the signature check and never pass without the secret.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use platform_auth::ingest::{MemoryReplayGuard, MemorySecrets, SignedIngest};
use platform_auth::testing::signature_parsing;

static SETUP: LazyLock<(tokio::runtime::Runtime, SignedIngest)> = LazyLock::new(|| {
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("fuzz", &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).expect("secret");
    let ingest = SignedIngest::new(secrets, Arc::new(MemoryReplayGuard::default()));
    (tokio::runtime::Builder::new_current_thread().build().expect("runtime"), ingest)
});

fuzz_target!(|input: &[u8]| {
    let (rt, ingest) = &*SETUP;
    rt.block_on(signature_parsing(ingest, input));
});
