//! Enqueues jobs, runs a `Worker` over them with a progress bar, and prints the dead
//! letters at the end.
//!
//! `QUEUE_URL` picks the backend (default: an embedded SQLite queue in the temp
//! directory). Build with `--features full` to allow Postgres, MySQL or Redis URLs.
//!
//! ```sh
//! cargo run -p platform-examples --bin queue_worker
//! QUEUE_URL=redis://127.0.0.1:6379?queue=demo cargo run -p platform-examples --features full --bin queue_worker
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use platform_core::config::Env;
use platform_core::{Error, HealthCheck, RetryPolicy, log_startup, probe_all};
use platform_queue::{Delivery, Message, Worker, WorkerConfig, open};
use tokio_util::sync::CancellationToken;

const JOBS: u64 = 500;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error,platform=info".into()),
        )
        .init();

    // 1. Config, logged with secrets masked.
    let env = Env::new("QUEUE");
    let url = match env.raw("URL") {
        Some(url) => url,
        None => {
            let file = std::env::temp_dir().join("platform-example-queue.db");
            let run = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
            format!("sqlite://{}?queue=example-{run}&max_attempts=3&visibility_timeout=10s", file.display())
        }
    };
    let workers: usize = env.get("WORKERS")?.unwrap_or(4);
    env.log_effective();

    // 2. Dependencies, each logged with its latency and version.
    let queue = open(&url).await?;
    let checks: Vec<Arc<dyn HealthCheck>> = vec![Arc::clone(&queue) as Arc<dyn HealthCheck>];
    let report = probe_all(&checks, Duration::from_secs(2)).await;
    log_startup(&report);
    println!("queue: {queue} ({})", report.checks[0].version.as_deref().unwrap_or("?"));

    // 3. Enqueue: every 100th job is poison and will end in the dead-letter queue.
    let batch: Vec<Message> = (0..JOBS)
        .map(|n| Message::json(&serde_json::json!({"n": n, "poison": n % 100 == 7})))
        .collect::<Result<_, _>>()?;
    for chunk in batch.chunks(100) {
        queue.send_batch(chunk.to_vec()).await?;
    }

    // 4. Work, with a progress bar.
    let worker = Worker::new(Arc::clone(&queue), |job: Arc<Delivery>| async move {
        let body: serde_json::Value = job.json()?;
        if body["poison"].as_bool() == Some(true) {
            return Err(Error::unavailable(format!("job {} keeps failing", body["n"])));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    })
    .with_config(
        WorkerConfig::default()
            .with_concurrency(workers)
            .with_prefetch(workers * 2)
            .with_poll_wait(Duration::from_millis(200))
            .with_retry(RetryPolicy::default().with_initial_delay(Duration::from_millis(20)).with_jitter(false)),
    );
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(worker.run(stop.clone()));
    let bar = ProgressBar::new(JOBS);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} jobs {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let done = stats.finished();
        bar.set_position(done);
        bar.set_message(format!("({} retries)", stats.retried.load(Relaxed)));
        if done >= JOBS {
            break;
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    bar.finish();
    stop.cancel();
    running.await.map_err(|e| Error::internal(e.to_string()))??;
    let elapsed = started.elapsed();
    println!(
        "done in {:.2?}: {} succeeded, {} retried, {} dead-lettered ({:.0} jobs/s)",
        elapsed,
        stats.succeeded.load(Relaxed),
        stats.retried.load(Relaxed),
        stats.dead_lettered.load(Relaxed),
        stats.finished() as f64 / elapsed.as_secs_f64()
    );

    // 5. The dead letters, with their history.
    for dead in queue.dead_letters(100).await? {
        println!(
            "dead letter {}: {} (attempts {}, reason: {})",
            dead.id,
            String::from_utf8_lossy(&dead.body),
            dead.attempts().unwrap_or(0),
            dead.reason().unwrap_or("?")
        );
    }
    queue.close().await
}
