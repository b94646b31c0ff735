//! A STOMP 1.2 connection: one reader task, one writer task, receipts, heart-beats.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use platform_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::frame::{Decoded, Frame, decode};
use super::map_error;

/// How long a receipt may take before the call fails with `Timeout`.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// The heart-beat we offer and ask for.
const HEART_BEAT: Duration = Duration::from_secs(10);

type Waiters = Mutex<HashMap<String, oneshot::Sender<Result<()>>>>;

/// What the server said about itself on `CONNECTED`.
#[derive(Debug, Clone)]
pub(super) struct ServerInfo {
    /// The `server` header (`ActiveMQ/5.17.6`, `RabbitMQ/3.10.8`).
    pub(super) server: String,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub(super) struct Connect {
    /// `host:port`.
    pub(super) address: String,
    /// The `host` header (the virtual host on RabbitMQ).
    pub(super) vhost: String,
    /// Login and passcode.
    pub(super) login: Option<(String, String)>,
}

/// A live connection. Dropped or closed, its socket closes and the server returns
/// every message it delivered here that was not acknowledged.
pub(super) struct Conn {
    out: mpsc::UnboundedSender<Bytes>,
    waiters: Arc<Waiters>,
    subscriptions: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Frame>>>>,
    next: AtomicU64,
    alive: Arc<AtomicBool>,
    failure: Arc<Mutex<Option<String>>>,
    /// What the server said on `CONNECTED`.
    pub(super) info: ServerInfo,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("server", &self.info.server).field("alive", &self.is_alive()).finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn unavailable(why: impl Into<String>) -> Error {
    Error::unavailable(why.into()).with_backend("stomp")
}

fn io_err(what: &str, e: &std::io::Error) -> Error {
    unavailable(format!("{what}: {e}"))
}

fn heart_beats(frame: &Frame) -> (Duration, Duration) {
    // Server's "sx,sy": sx = it sends every sx ms, sy = it wants ours every sy ms.
    let (sx, sy) = frame
        .get("heart-beat")
        .and_then(|h| h.split_once(','))
        .map(|(a, b)| (a.trim().parse::<u64>().unwrap_or(0), b.trim().parse::<u64>().unwrap_or(0)))
        .unwrap_or((0, 0));
    let ours = HEART_BEAT.as_millis() as u64;
    let send_every = if sy == 0 { 0 } else { sy.max(ours) };
    let expect_every = if sx == 0 { 0 } else { sx.max(ours) };
    (Duration::from_millis(send_every), Duration::from_millis(expect_every))
}

impl Conn {
    /// Connects and logs in; errors name the address, never the passcode.
    pub(super) async fn open(settings: &Connect) -> Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&settings.address))
            .await
            .map_err(|_| {
                Error::new(ErrorKind::Timeout, format!("connecting to {} timed out", settings.address))
                    .with_backend("stomp")
            })?
            .map_err(|e| io_err(&format!("cannot connect to {}", settings.address), &e))?;
        stream.set_nodelay(true).ok();
        let (mut reader, mut writer) = stream.into_split();
        let ms = HEART_BEAT.as_millis();
        let mut connect = Frame::new("CONNECT")
            .header("accept-version", "1.2")
            .header("host", settings.vhost.clone())
            .header("heart-beat", format!("{ms},{ms}"));
        if let Some((login, pass)) = &settings.login {
            connect = connect.header("login", login.clone()).header("passcode", pass.clone());
        }
        let mut buf = BytesMut::new();
        connect.encode(&mut buf);
        writer.write_all(&buf).await.map_err(|e| io_err("sending CONNECT", &e))?;
        let mut inbox = BytesMut::with_capacity(64 * 1024);
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match decode(&mut inbox).map_err(|e| unavailable(e.to_string()))? {
                    Some(Decoded::Frame(f)) => return Ok(f),
                    Some(Decoded::HeartBeat) => continue,
                    None => {}
                }
                if reader.read_buf(&mut inbox).await.map_err(|e| io_err("reading CONNECTED", &e))? == 0 {
                    return Err(unavailable(format!("{} closed the connection during login", settings.address)));
                }
            }
        })
        .await
        .map_err(|_| Error::new(ErrorKind::Timeout, "no CONNECTED frame within 10s").with_backend("stomp"))??;
        if connected.command == "ERROR" {
            let text = connected.get("message").unwrap_or("refused").to_owned();
            let detail = String::from_utf8_lossy(&connected.body).trim().to_owned();
            let kind = map_error(&format!("{text} {detail}"));
            let kind = if kind == ErrorKind::Internal { ErrorKind::Unauthenticated } else { kind };
            return Err(
                Error::new(kind, format!("{} refused the connection: {text}", settings.address)).with_backend("stomp")
            );
        }
        if connected.command != "CONNECTED" {
            return Err(unavailable(format!("expected CONNECTED, got {}", connected.command)));
        }
        let info = ServerInfo { server: connected.get("server").unwrap_or("STOMP server").to_owned() };
        let (send_every, expect_every) = heart_beats(&connected);

        let (out, mut outbox) = mpsc::unbounded_channel::<Bytes>();
        let waiters: Arc<Waiters> = Arc::default();
        let subscriptions: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Frame>>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let failure: Arc<Mutex<Option<String>>> = Arc::default();

        let fail = {
            let (waiters, subscriptions, alive, failure) =
                (Arc::clone(&waiters), Arc::clone(&subscriptions), Arc::clone(&alive), Arc::clone(&failure));
            move |why: String| {
                alive.store(false, Ordering::Release);
                failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why.clone());
                for (_, w) in waiters.lock().unwrap_or_else(|e| e.into_inner()).drain() {
                    let _ = w.send(Err(unavailable(why.clone())));
                }
                subscriptions.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
        };

        let writer_fail = fail.clone();
        let writer_task = tokio::spawn(async move {
            let idle = if send_every.is_zero() { Duration::from_secs(3600) } else { send_every };
            loop {
                let next = tokio::time::timeout(idle, outbox.recv()).await;
                let result = match next {
                    Ok(Some(bytes)) => writer.write_all(&bytes).await,
                    Ok(None) => {
                        let _ = writer.shutdown().await;
                        return;
                    }
                    Err(_) if !send_every.is_zero() => writer.write_all(b"\n").await,
                    Err(_) => Ok(()),
                };
                if let Err(e) = result {
                    writer_fail(format!("write failed: {e}"));
                    return;
                }
            }
        });

        let (r_waiters, r_subs) = (Arc::clone(&waiters), Arc::clone(&subscriptions));
        let reader_task = tokio::spawn(async move {
            // Silence for twice the server's heart-beat means the connection is gone.
            let patience = if expect_every.is_zero() { Duration::from_secs(3600 * 24) } else { expect_every * 2 };
            loop {
                loop {
                    let frame = match decode(&mut inbox) {
                        Ok(Some(Decoded::Frame(f))) => f,
                        Ok(Some(Decoded::HeartBeat)) => continue,
                        Ok(None) => break,
                        Err(e) => return fail(e.to_string()),
                    };
                    match frame.command.as_str() {
                        "RECEIPT" => {
                            let id = frame.get("receipt-id").unwrap_or_default();
                            if let Some(w) = r_waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(id) {
                                let _ = w.send(Ok(()));
                            }
                        }
                        "MESSAGE" => {
                            let sub = frame.get("subscription").unwrap_or_default().to_owned();
                            let target = r_subs.lock().unwrap_or_else(|e| e.into_inner()).get(&sub).cloned();
                            // A message for a subscription already gone is returned by the
                            // server when this connection closes, unacknowledged.
                            if let Some(t) = target {
                                let _ = t.send(frame);
                            }
                        }
                        "ERROR" => {
                            let text = frame.get("message").unwrap_or("error").to_owned();
                            let detail = String::from_utf8_lossy(&frame.body).trim().to_owned();
                            let why = if detail.is_empty() { text } else { format!("{text}: {detail}") };
                            if let Some(id) = frame.get("receipt-id")
                                && let Some(w) = r_waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
                            {
                                let kind = map_error(&why);
                                let _ = w.send(Err(Error::new(kind, why.clone()).with_backend("stomp")));
                            }
                            // The server closes the connection after an ERROR.
                            return fail(format!("server error: {why}"));
                        }
                        _ => {}
                    }
                }
                match tokio::time::timeout(patience, reader.read_buf(&mut inbox)).await {
                    Ok(Ok(0)) => return fail("the server closed the connection".into()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return fail(format!("read failed: {e}")),
                    Err(_) => return fail(format!("no heart-beat from the server for {patience:?}")),
                }
            }
        });

        Ok(Self {
            out,
            waiters,
            subscriptions,
            next: AtomicU64::new(1),
            alive,
            failure,
            info,
            tasks: vec![writer_task, reader_task],
        })
    }

    /// Whether the connection still works.
    pub(super) fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    fn dead(&self) -> Error {
        let why = self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        unavailable(why.unwrap_or_else(|| "connection closed".into()))
    }

    /// A fresh id for receipts, subscriptions and transactions.
    pub(super) fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends `frame` without waiting for the server.
    pub(super) fn send(&self, frame: &Frame) -> Result<()> {
        if !self.is_alive() {
            return Err(self.dead());
        }
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        self.out.send(buf.freeze()).map_err(|_| self.dead())
    }

    /// Sends `frame` with a receipt and waits for it: the server has processed the
    /// frame (for a persistent `SEND`, stored the message).
    pub(super) async fn request(&self, frame: Frame) -> Result<()> {
        let id = self.next_id("r");
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), tx);
        if let Err(e) = self.send(&frame.header("receipt", id.clone())) {
            self.waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(RECEIPT_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.dead()),
            Err(_) => {
                self.waiters.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                Err(Error::new(ErrorKind::Timeout, format!("no receipt within {RECEIPT_TIMEOUT:?}"))
                    .with_backend("stomp"))
            }
        }
    }

    /// Subscribes: `MESSAGE` frames for it arrive on the returned channel.
    pub(super) async fn subscribe(&self, destination: &str, extra: &[(&str, String)]) -> Result<Subscription> {
        let id = self.next_id("s");
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), tx);
        let mut frame = Frame::new("SUBSCRIBE")
            .header("id", id.clone())
            .header("destination", destination)
            .header("ack", "client-individual");
        for (k, v) in extra {
            frame = frame.header(k, v.clone());
        }
        if let Err(e) = self.request(frame).await {
            self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            return Err(e);
        }
        Ok(Subscription { id, messages: rx })
    }

    /// Ends a subscription.
    pub(super) async fn unsubscribe(&self, id: &str) -> Result<()> {
        self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        self.request(Frame::new("UNSUBSCRIBE").header("id", id)).await
    }

    /// Says goodbye and waits for the server's receipt.
    pub(super) async fn disconnect(&self) {
        if self.is_alive() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.request(Frame::new("DISCONNECT"))).await;
        }
        self.alive.store(false, Ordering::Release);
    }
}

/// One subscription's messages.
#[derive(Debug)]
pub(super) struct Subscription {
    /// Its id on the connection.
    pub(super) id: String,
    /// `MESSAGE` frames, in arrival order; closed when the connection fails.
    pub(super) messages: mpsc::UnboundedReceiver<Frame>,
}
