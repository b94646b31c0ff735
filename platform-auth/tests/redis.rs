//! Replay ids on a real Redis: two instances of a service given the same delivery take
//! it once between them; an unreachable Redis is 503, not a refusal.

use std::sync::Arc;
use std::time::Duration;

use platform_auth::ErrorKind;
use platform_auth::ingest::{MemorySecrets, RedisReplayGuard, ReplayGuard, SignedIngest, decode_secret, sign};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_take_a_delivery_once_between_them() {
    let Some(url) = platform_core::testkit::server_url("REDIS") else { return };
    let namespace = platform_core::testkit::unique_ident("replay");
    let secrets = Arc::new(MemorySecrets::default());
    secrets.set("ep_1", &[SECRET]).unwrap();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let guard = RedisReplayGuard::open(&url, &namespace).await.unwrap();
        instances.push(SignedIngest::new(Arc::clone(&secrets) as _, Arc::new(guard)));
    }
    let now = platform_core::clock::now_ms() / 1000;
    let body = b"{\"todo\":1}";
    let signature = sign(&decode_secret(SECRET).unwrap(), "msg_1", now, body);
    instances[0].verify("ep_1", "msg_1", &now.to_string(), &signature, body, now).await.unwrap();
    let err = instances[1].verify("ep_1", "msg_1", &now.to_string(), &signature, body, now).await.unwrap_err();
    assert!(err.to_string().contains("replay"), "{err}");
    // The id is forgotten after its time.
    let guard = RedisReplayGuard::open(&url, &namespace).await.unwrap();
    assert!(guard.first_seen("ep_2", "short", Duration::from_millis(50)).await.unwrap());
    platform_core::testkit::eventually(Duration::from_secs(5), || async {
        guard.first_seen("ep_2", "short", Duration::from_millis(50)).await.unwrap().then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replay_store_is_503_not_401() {
    // Nothing listens on port 1.
    let err = RedisReplayGuard::open("redis://127.0.0.1:1", "x").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
}
