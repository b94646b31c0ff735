//! The raw sqlx loops on MySQL (MariaDB) and SQLite, beside the PostgreSQL ones in
//! `queue.rs`: the same workload, written as a user of sqlx alone would write it.
//!
//! Each backend has two: a lease-less loop (a consumer takes and deletes its messages
//! in one go, so a crash mid-job loses them) and a leased one, the usual reliable SQL
//! queue (a claim sets a lease end and counts the attempt, an ack deletes by id; no
//! fencing token, delay or dead letters).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use platform_core::testkit::unique_name;
use sqlx::{Executor, MySql, MySqlPool, QueryBuilder, Sqlite, SqlitePool};

use crate::{BODY, CONSUMERS, N};

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as i64
}

/// Runs `consume` on each of the consumers while the producer `send`s, until `N`
/// messages are settled; `consume` takes what it can and says how many it settled.
async fn run<C, CF, S>(consume: C, send: S) -> Duration
where
    C: Fn() -> CF + Clone + Send + 'static,
    CF: Future<Output = usize> + Send,
    S: Future<Output = ()>,
{
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| {
            let (consume, done) = (consume.clone(), Arc::clone(&done));
            tokio::spawn(async move {
                while done.load(Ordering::Relaxed) < N {
                    let got = consume().await;
                    if got == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    done.fetch_add(got, Ordering::Relaxed);
                }
            })
        })
        .collect();
    send.await;
    for c in consumers {
        c.await.expect("consumer");
    }
    started.elapsed()
}

/// A MySQL pool for the raw loops, with their tables made; READ COMMITTED, as the
/// backend runs, so both sides lock rows and not gaps.
pub(crate) async fn mysql_pool(url: &str) -> MySqlPool {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                Ok(())
            })
        })
        .connect(url)
        .await
        .expect("mysql pool");
    for ddl in [
        "CREATE TABLE IF NOT EXISTS bench_raw_queue (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
         queue VARCHAR(200) NOT NULL, body LONGBLOB NOT NULL, INDEX bench_raw_queue_ready (queue, id))
         ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS bench_raw_leased (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
         queue VARCHAR(200) NOT NULL, body LONGBLOB NOT NULL, visible_at BIGINT NOT NULL,
         attempts INT NOT NULL DEFAULT 0, INDEX bench_raw_leased_ready (queue, visible_at, id)) ENGINE=InnoDB",
    ] {
        sqlx::query(ddl).execute(&pool).await.expect("raw tables");
    }
    pool
}

/// The producer of both MySQL loops: one multi-row `INSERT` per batch.
async fn send_mysql(pool: &MySqlPool, leased: bool, queue: &str, batch: usize) {
    for _ in 0..N / batch {
        let at = now_ms();
        let mut b: QueryBuilder<MySql> = QueryBuilder::new(if leased {
            "INSERT INTO bench_raw_leased (queue, body, visible_at) "
        } else {
            "INSERT INTO bench_raw_queue (queue, body) "
        });
        b.push_values(0..batch, |mut r, _| {
            r.push_bind(queue).push_bind(&BODY[..]);
            if leased {
                r.push_bind(at);
            }
        });
        b.build().execute(pool).await.expect("insert");
    }
}

/// What `work` settled; none when InnoDB picked it as a deadlock victim (it was rolled
/// back, and its messages are taken again), as the backend retries such a victim.
async fn retry_deadlock(work: impl Future<Output = sqlx::Result<usize>>) -> usize {
    match work.await {
        Ok(n) => n,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40001") => 0,
        Err(e) => panic!("raw mysql: {e}"),
    }
}

fn id_list<DB: sqlx::Database>(b: &mut QueryBuilder<DB>, ids: &[i64])
where
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    b.push(" id IN (");
    let mut list = b.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    list.push_unseparated(")");
}

/// MySQL without a lease: in one transaction, `SELECT … FOR UPDATE SKIP LOCKED` and
/// `DELETE` what it locked.
pub(crate) async fn mysql(pool: MySqlPool, batch: usize) -> Duration {
    let queue = unique_name("raw");
    let consume = {
        let (pool, queue) = (pool.clone(), queue.clone());
        move || {
            let (pool, queue) = (pool.clone(), queue.clone());
            retry_deadlock(async move {
                let mut tx = pool.begin().await?;
                let got: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT id, body FROM bench_raw_queue WHERE queue = ? ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
                )
                .bind(&queue)
                .bind(batch as i64)
                .fetch_all(&mut *tx)
                .await?;
                if !got.is_empty() {
                    let ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
                    let mut b: QueryBuilder<MySql> = QueryBuilder::new("DELETE FROM bench_raw_queue WHERE");
                    id_list(&mut b, &ids);
                    b.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(got.len())
            })
        }
    };
    run(consume, send_mysql(&pool, false, &queue, batch)).await
}

/// MySQL with a lease: a claim is a transaction of `SELECT … FOR UPDATE SKIP LOCKED`
/// and an `UPDATE` of the lease end and attempts; an ack one `DELETE` by id.
pub(crate) async fn mysql_leased(pool: MySqlPool, batch: usize) -> Duration {
    let queue = unique_name("raw");
    let consume = {
        let (pool, queue) = (pool.clone(), queue.clone());
        move || {
            let (pool, queue) = (pool.clone(), queue.clone());
            retry_deadlock(async move {
                let t = now_ms();
                let mut tx = pool.begin().await?;
                let got: Vec<(i64, Vec<u8>, i32)> = sqlx::query_as(
                    "SELECT id, body, attempts FROM bench_raw_leased WHERE queue = ? AND visible_at <= ?
                     ORDER BY visible_at, id LIMIT ? FOR UPDATE SKIP LOCKED",
                )
                .bind(&queue)
                .bind(t)
                .bind(batch as i64)
                .fetch_all(&mut *tx)
                .await?;
                if got.is_empty() {
                    tx.commit().await?;
                    return Ok(0);
                }
                let ids: Vec<i64> = got.iter().map(|(id, ..)| *id).collect();
                let mut b: QueryBuilder<MySql> = QueryBuilder::new("UPDATE bench_raw_leased SET visible_at = ");
                b.push_bind(t + 30_000).push(", attempts = attempts + 1 WHERE");
                id_list(&mut b, &ids);
                b.build().execute(&mut *tx).await?;
                tx.commit().await?;
                let mut b: QueryBuilder<MySql> = QueryBuilder::new("DELETE FROM bench_raw_leased WHERE");
                id_list(&mut b, &ids);
                b.build().execute(&pool).await?;
                Ok(got.len())
            })
        }
    };
    run(consume, send_mysql(&pool, true, &queue, batch)).await
}

/// A SQLite pool for the raw loops on the bench's database file, as the backend opens
/// it (WAL, synchronous NORMAL, 4 connections, 5 s busy timeout), with its tables made.
pub(crate) async fn sqlite_pool(file: &std::path::Path) -> SqlitePool {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
    let opts = SqliteConnectOptions::new()
        .filename(file)
        .create_if_missing(true)
        .busy_timeout(Duration::from_secs(5))
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await.expect("sqlite pool");
    for ddl in [
        "CREATE TABLE IF NOT EXISTS bench_raw_queue (id INTEGER PRIMARY KEY, queue TEXT NOT NULL, body BLOB NOT NULL)",
        "CREATE INDEX IF NOT EXISTS bench_raw_queue_ready ON bench_raw_queue (queue, id)",
        "CREATE TABLE IF NOT EXISTS bench_raw_leased (id INTEGER PRIMARY KEY, queue TEXT NOT NULL,
         body BLOB NOT NULL, visible_at INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX IF NOT EXISTS bench_raw_leased_ready ON bench_raw_leased (queue, visible_at, id)",
    ] {
        sqlx::query(ddl).execute(&pool).await.expect("raw tables");
    }
    pool
}

/// The producer of both SQLite loops: one multi-row `INSERT` per batch.
async fn send_sqlite(pool: &SqlitePool, leased: bool, queue: &str, batch: usize) {
    for _ in 0..N / batch {
        let at = now_ms();
        let mut b: QueryBuilder<Sqlite> = QueryBuilder::new(if leased {
            "INSERT INTO bench_raw_leased (queue, body, visible_at) "
        } else {
            "INSERT INTO bench_raw_queue (queue, body) "
        });
        b.push_values(0..batch, |mut r, _| {
            r.push_bind(queue).push_bind(&BODY[..]);
            if leased {
                r.push_bind(at);
            }
        });
        b.build().execute(pool).await.expect("insert");
    }
}

/// SQLite without a lease: one `DELETE … RETURNING` of the oldest messages.
pub(crate) async fn sqlite(pool: SqlitePool, batch: usize) -> Duration {
    let queue = unique_name("raw");
    let consume = {
        let (pool, queue) = (pool.clone(), queue.clone());
        move || {
            let (pool, queue) = (pool.clone(), queue.clone());
            async move {
                let got: Vec<(Vec<u8>,)> = sqlx::query_as(
                    "DELETE FROM bench_raw_queue WHERE id IN
                       (SELECT id FROM bench_raw_queue WHERE queue = ?1 ORDER BY id LIMIT ?2) RETURNING body",
                )
                .bind(&queue)
                .bind(batch as i64)
                .fetch_all(&pool)
                .await
                .expect("take");
                got.len()
            }
        }
    };
    run(consume, send_sqlite(&pool, false, &queue, batch)).await
}

/// SQLite with a lease: a claim is one `UPDATE … RETURNING` of the lease end and
/// attempts, an ack one `DELETE` by id.
pub(crate) async fn sqlite_leased(pool: SqlitePool, batch: usize) -> Duration {
    let queue = unique_name("raw");
    let consume = {
        let (pool, queue) = (pool.clone(), queue.clone());
        move || {
            let (pool, queue) = (pool.clone(), queue.clone());
            async move {
                let t = now_ms();
                let got: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                    "UPDATE bench_raw_leased SET visible_at = ?1, attempts = attempts + 1
                     WHERE id IN (SELECT id FROM bench_raw_leased WHERE queue = ?2 AND visible_at <= ?3
                                  ORDER BY visible_at, id LIMIT ?4)
                     RETURNING id, body",
                )
                .bind(t + 30_000)
                .bind(&queue)
                .bind(t)
                .bind(batch as i64)
                .fetch_all(&pool)
                .await
                .expect("claim");
                if !got.is_empty() {
                    let ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
                    let mut b: QueryBuilder<Sqlite> = QueryBuilder::new("DELETE FROM bench_raw_leased WHERE");
                    id_list(&mut b, &ids);
                    b.build().execute(&pool).await.expect("ack");
                }
                got.len()
            }
        }
    };
    run(consume, send_sqlite(&pool, true, &queue, batch)).await
}
