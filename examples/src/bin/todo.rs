//! The todo service: users, workspaces and todos with events on `/ws`, on embedded
//! defaults (SQLite, an in-process bus and broadcast) unless the environment names
//! other backends (`DATABASE_URL`, `EVENTS_URL`, `BROADCAST_URL`; build with
//! `--features full` for the network ones).
//!
//! ```sh
//! cargo run -p platform-examples --bin todo
//! DATABASE_URL=postgres://app@127.0.0.1/todo EVENTS_URL=redis://127.0.0.1:6379 \
//!   BROADCAST_URL=redis://127.0.0.1:6379 cargo run -p platform-examples --features full --bin todo
//! ```

#[tokio::main]
async fn main() -> Result<(), platform_core::Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,platform=info,todo=info".into()),
        )
        .init();
    let settings = platform_examples::todo::Settings::from_env()?;
    platform_examples::todo::run(settings).await
}
