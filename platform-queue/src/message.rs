//! Messages, deliveries, dead letters, options and capabilities.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use platform_core::{Error, ErrorKind, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

/// Message headers: string names to string values, ordered by name.
pub type Headers = BTreeMap<String, String>;

/// Header set on a dead letter: why it was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
/// Header set on a dead letter: the queue it came from.
pub const DEAD_LETTER_QUEUE: &str = "x-dead-letter-queue";
/// Header set on a dead letter: how many times it was delivered.
pub const DEAD_LETTER_ATTEMPTS: &str = "x-dead-letter-attempts";
/// Header set on a dead letter: when it first failed (RFC 3339).
pub const DEAD_LETTER_FIRST_FAILURE: &str = "x-dead-letter-first-failure";
/// Header set on a dead letter: when it was dead-lettered (RFC 3339).
pub const DEAD_LETTER_AT: &str = "x-dead-letter-at";

/// A message to send: bytes (any bytes, UTF-8 or not), string headers, an optional
/// delay and an optional deduplication key.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Message {
    /// The body.
    pub body: Bytes,
    /// The headers.
    pub headers: Headers,
    /// Not visible to receivers before this much time has passed.
    pub delay: Option<Duration>,
    /// A second message with the same key inside the dedup window is dropped.
    pub dedup_key: Option<String>,
    /// Messages with one order key are delivered in the order sent, one at a time:
    /// the next is not handed out before the one before it is acked or dead-lettered.
    /// Only where [`Capabilities::ordered_per_key`] says; elsewhere `Unsupported`.
    pub order_key: Option<String>,
}

impl Message {
    /// A message with `body`.
    pub fn new(body: impl Into<Bytes>) -> Self {
        Self { body: body.into(), ..Self::default() }
    }

    /// A message whose body is `value` as JSON, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let body = serde_json::to_vec(value)?;
        Ok(Self::new(body).with_header("content-type", "application/json"))
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Delays visibility by `delay`.
    #[must_use]
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Sets the deduplication key.
    #[must_use]
    pub fn with_dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// Sets the order key (see [`order_key`](Self::order_key)).
    #[must_use]
    pub fn with_order_key(mut self, key: impl Into<String>) -> Self {
        self.order_key = Some(key.into());
        self
    }

    /// Checks the message against a backend's limits, naming what is wrong.
    pub fn validate(&self, caps: &Capabilities) -> Result<()> {
        if self.body.len() > caps.max_body_bytes {
            return Err(invalid(
                "body",
                format!("body is {} bytes, the limit is {}", self.body.len(), caps.max_body_bytes),
            ));
        }
        if self.headers.len() > caps.max_headers {
            return Err(invalid(
                "headers",
                format!("{} headers, the limit is {}", self.headers.len(), caps.max_headers),
            ));
        }
        for (name, value) in &self.headers {
            validate_header(name, value)?;
        }
        if let Some(delay) = self.delay {
            if !caps.delay {
                return Err(Error::new(ErrorKind::Unsupported, "this backend cannot delay messages").with_op("send"));
            }
            if caps.max_delay.is_some_and(|max| delay > max) {
                return Err(invalid("delay", format!("delay {delay:?} exceeds the limit {:?}", caps.max_delay)));
            }
        }
        if let Some(key) = &self.dedup_key {
            if !caps.dedup {
                return Err(
                    Error::new(ErrorKind::Unsupported, "this backend cannot deduplicate messages").with_op("send")
                );
            }
            if key.is_empty() || key.len() > MAX_DEDUP_KEY_LEN {
                return Err(invalid("dedup_key", format!("dedup key must be 1 to {MAX_DEDUP_KEY_LEN} bytes")));
            }
        }
        if let Some(key) = &self.order_key {
            if !caps.ordered_per_key {
                return Err(
                    Error::new(ErrorKind::Unsupported, "this backend cannot keep order per key").with_op("send")
                );
            }
            if key.is_empty() || key.len() > MAX_DEDUP_KEY_LEN {
                return Err(invalid("order_key", format!("order key must be 1 to {MAX_DEDUP_KEY_LEN} bytes")));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("body_len", &self.body.len())
            .field("headers", &self.headers)
            .field("delay", &self.delay)
            .field("dedup_key", &self.dedup_key)
            .field("order_key", &self.order_key)
            .finish()
    }
}

/// The longest header name accepted.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// The longest header value accepted.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// The longest dedup key accepted.
pub const MAX_DEDUP_KEY_LEN: usize = 128;

fn invalid(field: &str, why: String) -> Error {
    Error::invalid_input(why.clone()).with_op("send").with_detail(field, why)
}

/// Header names are 1 to 256 token characters (letters, digits, `!#$%&'*+-.^_`|~`);
/// values up to 4 KiB of text without control characters. Every backend carries
/// exactly these, so a message that passes here round-trips everywhere.
pub fn validate_header(name: &str, value: &str) -> Result<()> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.bytes().all(token) {
        return Err(invalid(
            "headers",
            format!("invalid header name {name:?}: use 1 to {MAX_HEADER_NAME_LEN} letters, digits or -_."),
        ));
    }
    if value.len() > MAX_HEADER_VALUE_LEN || value.chars().any(char::is_control) {
        return Err(invalid(
            "headers",
            format!("invalid value for header {name:?}: at most {MAX_HEADER_VALUE_LEN} bytes, no control characters"),
        ));
    }
    Ok(())
}

/// Options of one `receive` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiveOptions {
    /// At most this many deliveries (1 or more).
    pub max: usize,
    /// How long to wait for the first message when none is ready (zero: don't wait).
    pub wait: Duration,
}

impl Default for ReceiveOptions {
    /// One message, waiting up to one second.
    fn default() -> Self {
        Self { max: 1, wait: Duration::from_secs(1) }
    }
}

impl ReceiveOptions {
    /// Up to `max` messages, waiting up to `wait`.
    pub fn new(max: usize, wait: Duration) -> Self {
        Self { max, wait }
    }

    /// Sets the maximum.
    #[must_use]
    pub fn with_max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }

    /// Sets the wait.
    #[must_use]
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Checks the options against a backend's limits.
    pub fn validate(&self, caps: &Capabilities) -> Result<()> {
        if self.max == 0 || self.max > caps.max_receive {
            return Err(Error::invalid_input(format!(
                "receive max must be 1 to {}, got {}",
                caps.max_receive, self.max
            ))
            .with_op("receive")
            .with_detail("max", "out of range"));
        }
        Ok(())
    }
}

/// What a backend can do. What it cannot do returns `ErrorKind::Unsupported`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// `Message::delay` is honoured.
    pub delay: bool,
    /// The longest delay, when limited.
    pub max_delay: Option<Duration>,
    /// `Message::dedup_key` is honoured.
    pub dedup: bool,
    /// How long a dedup key is remembered.
    pub dedup_window: Option<Duration>,
    /// `nack(Some(delay))` redelivers no earlier than the delay.
    pub nack_delay: bool,
    /// `Delivery::extend` renews the lease.
    pub extend: bool,
    /// `send_batch` is all or nothing.
    pub atomic_batch: bool,
    /// `dead_letters` and `redrive` work.
    pub dead_letter_inspection: bool,
    /// Messages survive a restart of the server.
    pub durable: bool,
    /// `Message::order_key` is honoured: one key's messages are delivered in the order
    /// sent, the next only once the one before is settled (not by default).
    pub ordered_per_key: bool,
    /// The largest body in bytes.
    pub max_body_bytes: usize,
    /// The most headers on one message.
    pub max_headers: usize,
    /// The most messages in one `send_batch`.
    pub max_batch: usize,
    /// The most deliveries one `receive` returns.
    pub max_receive: usize,
}

impl Default for Capabilities {
    /// Everything supported but order per key, 1 MiB bodies, 64 headers, batches of 1,000.
    fn default() -> Self {
        Self {
            ordered_per_key: false,
            delay: true,
            max_delay: None,
            dedup: true,
            dedup_window: Some(Duration::from_secs(300)),
            nack_delay: true,
            extend: true,
            atomic_batch: true,
            dead_letter_inspection: true,
            durable: true,
            max_body_bytes: 1024 * 1024,
            max_headers: 64,
            max_batch: 1000,
            max_receive: 1000,
        }
    }
}

impl Capabilities {
    /// Checks a whole batch before anything is sent.
    pub fn validate_batch(&self, messages: &[Message]) -> Result<()> {
        if messages.len() > self.max_batch {
            return Err(invalid(
                "batch",
                format!("batch of {} messages, the limit is {}", messages.len(), self.max_batch),
            ));
        }
        messages.iter().try_for_each(|m| m.validate(self))
    }
}

/// The backend half of a [`Delivery`]: settles one leased message.
///
/// Implemented by each backend; [`Delivery`] guarantees it is called at most once
/// for a terminal action (`ack`, `nack`, `dead_letter`) that succeeded.
#[async_trait]
pub trait Acker: Send + Sync + fmt::Debug {
    /// Removes the message. `Conflict` when the lease was lost.
    async fn ack(&self) -> Result<()>;
    /// Makes the message visible again, after `delay` when given. When this was the
    /// last allowed attempt the message is dead-lettered instead, with `reason`, and
    /// the result is `true`.
    async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<bool>;
    /// Moves the message to the dead-letter queue with `reason`.
    async fn dead_letter(&self, reason: &str) -> Result<()>;
    /// Renews the lease for `lease` from now.
    async fn extend(&self, lease: Duration) -> Result<()>;
    /// Gives the message back unprocessed: visible now, and this delivery does not
    /// count as an attempt (used on shutdown for messages never started).
    async fn release(&self) -> Result<()>;

    /// Acks `others` together with this one, in as few round trips as the backend can:
    /// one result per acker, this one first. The default acks each on its own,
    /// concurrently. Called by [`Delivery::ack_all`] with ackers it has claimed.
    async fn ack_with(&self, others: &[&dyn Acker]) -> Vec<Result<()>> {
        let all = std::iter::once(self.ack()).chain(others.iter().map(|a| a.ack()));
        futures::future::join_all(all).await
    }

    /// This acker as `Any`, for [`ack_with`](Self::ack_with) implementations that
    /// recognise their own kind among the others. `None` by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// The dead-letter reason of a message that failed on its last allowed attempt.
pub(crate) fn exhausted_reason(max: u32, last_error: Option<&str>) -> String {
    match last_error {
        Some(r) => format!("failed on each of {max} attempts; last error: {r}"),
        None => format!("failed on each of {max} attempts"),
    }
}

/// A delivery's id: the backend's text, or a number kept as its decimal digits inline.
pub(crate) enum DeliveryId {
    Text(String),
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    Digits {
        buf: [u8; 20],
        start: u8,
    },
}

impl DeliveryId {
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn number(mut n: u64) -> Self {
        let mut buf = [0u8; 20];
        let mut start = buf.len();
        loop {
            start -= 1;
            buf[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        Self::Digits { buf, start: start as u8 }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Text(s) => s,
            // Only ASCII digits are ever written there.
            Self::Digits { buf, start } => std::str::from_utf8(&buf[usize::from(*start)..]).unwrap_or_default(),
        }
    }
}

const PENDING: u8 = 0;
const SETTLING: u8 = 1;
const SETTLED: u8 = 2;

/// A leased message. Settle it once with `ack`, `nack` or `dead_letter`; until then
/// nobody else receives it, until the lease runs out.
///
/// Dropping a delivery without settling it loses nothing: when its lease runs out the
/// message is delivered again, with its attempt count one higher.
pub struct Delivery {
    id: DeliveryId,
    body: Bytes,
    headers: Headers,
    attempt: u32,
    lease: Duration,
    deadline: Mutex<Instant>,
    state: AtomicU8,
    acker: Box<dyn Acker>,
    /// Stamped on settle errors; set by the portable handle.
    backend: &'static str,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("id", &self.id())
            .field("attempt", &self.attempt)
            .field("body_len", &self.body.len())
            .field("headers", &self.headers)
            .field("acker", &self.acker)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Built by backends: a message leased for `lease` from now.
    pub fn new(
        id: impl Into<String>,
        body: Bytes,
        headers: Headers,
        attempt: u32,
        lease: Duration,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self::leased_until(DeliveryId::Text(id.into()), body, headers, attempt, lease, Instant::now() + lease, acker)
    }

    /// A delivery leased until `deadline`: backends that read the clock once for a whole
    /// batch, or whose ids are numbers, build theirs here.
    pub(crate) fn leased_until(
        id: DeliveryId,
        body: Bytes,
        headers: Headers,
        attempt: u32,
        lease: Duration,
        deadline: Instant,
        acker: Box<dyn Acker>,
    ) -> Self {
        Self {
            id,
            body,
            headers,
            attempt,
            lease,
            deadline: Mutex::new(deadline),
            state: AtomicU8::new(PENDING),
            acker,
            backend: "",
        }
    }

    /// The delivery with `backend` stamped on its settle errors.
    pub(crate) fn stamped(mut self, backend: &'static str) -> Self {
        self.backend = backend;
        self
    }

    /// The backend's message id.
    pub fn id(&self) -> &str {
        self.id.as_str()
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The headers as sent.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// One header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// 1 on the first delivery, one more on each redelivery.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The lease length this delivery was handed out with.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// When the lease runs out (renewed by `extend`).
    pub fn lease_deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// Whether a terminal action already succeeded.
    pub fn is_settled(&self) -> bool {
        self.state.load(Ordering::Acquire) == SETTLED
    }

    /// Marks the delivery as being settled; `Conflict` when it is or was already.
    fn claim(&self, op: &'static str) -> Result<()> {
        match self.state.compare_exchange(PENDING, SETTLING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(()),
            Err(SETTLING) => {
                Err(Error::conflict(format!("message {} is being settled already", self.id())).with_op(op))
            }
            Err(_) => Err(Error::conflict(format!("message {} was settled already", self.id())).with_op(op)),
        }
    }

    /// Records how a claimed settle ended: a lost lease is final; anything else may be
    /// tried again.
    fn finish<T>(&self, result: Result<T>) -> Result<T> {
        let next = match &result {
            Ok(_) => SETTLED,
            Err(e) if e.is_conflict() => SETTLED,
            Err(_) => PENDING,
        };
        self.state.store(next, Ordering::Release);
        result
    }

    async fn settle<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        self.claim(op).map_err(|e| e.in_context(self.backend, op))?;
        self.finish(f.await.map_err(|e| e.in_context(self.backend, op)))
    }

    /// Removes the message for good. `Conflict` on a second call or after the lease was lost.
    pub async fn ack(&self) -> Result<()> {
        self.settle("ack", self.acker.ack()).await
    }

    /// Acks every delivery in `deliveries`, grouped where the backend can (one lock, one
    /// script, one statement for a whole batch); each is tried, and the first error, if
    /// any, is returned after all were tried. Each delivery settles as if acked alone.
    pub async fn ack_all(deliveries: &[Self]) -> Result<()> {
        let mut first_err = None;
        let mut claimed = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            match d.claim("ack") {
                Ok(()) => claimed.push(d),
                Err(e) => {
                    first_err.get_or_insert(e.in_context(d.backend, "ack"));
                }
            }
        }
        let Some((head, rest)) = claimed.split_first() else {
            return first_err.map_or(Ok(()), Err);
        };
        let others: Vec<&dyn Acker> = rest.iter().map(|d| &*d.acker).collect();
        let results = head.acker.ack_with(&others).await;
        let mut results = results.into_iter();
        for d in claimed {
            let r = results.next().unwrap_or_else(|| Err(Error::internal("an ack result is missing")));
            let r = r.map_err(|e| e.in_context(d.backend, "ack"));
            if let Err(e) = d.finish(r) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Gives the message back: visible again now, or after `delay`. Its attempt count
    /// goes up on the next delivery; past `max_attempts` it is dead-lettered.
    pub async fn nack(&self, delay: Option<Duration>) -> Result<()> {
        self.settle("nack", self.acker.nack(delay, None)).await.map(drop)
    }

    /// Like [`nack`](Self::nack), and records why it failed: when this was the last
    /// allowed attempt, `reason` becomes the dead letter's reason. `true` when the
    /// message was dead-lettered.
    pub async fn nack_with_reason(&self, delay: Option<Duration>, reason: &str) -> Result<bool> {
        self.settle("nack", self.acker.nack(delay, Some(reason))).await
    }

    /// Moves the message to the dead-letter queue now, with `reason`.
    pub async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.settle("dead_letter", self.acker.dead_letter(reason)).await
    }

    /// Gives the message back unprocessed, without counting this delivery as an
    /// attempt: for messages fetched but never started (a worker shutting down).
    pub async fn release(&self) -> Result<()> {
        self.settle("release", self.acker.release()).await
    }

    /// Renews the lease for `lease` from now. `Conflict` when it was already lost.
    pub async fn extend(&self, lease: Duration) -> Result<()> {
        if self.state.load(Ordering::Acquire) != PENDING {
            return Err(Error::conflict(format!("message {} was settled already", self.id()))
                .with_op("extend")
                .in_context(self.backend, "extend"));
        }
        let until = Instant::now() + lease;
        self.acker.extend(lease).await.map_err(|e| e.in_context(self.backend, "extend"))?;
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = until;
        Ok(())
    }
}

/// A message in the dead-letter queue.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The backend's message id.
    pub id: String,
    /// The body.
    pub body: Bytes,
    /// The headers, including the `x-dead-letter-*` ones.
    pub headers: Headers,
}

impl DeadLetter {
    /// Built by backends.
    pub fn new(id: impl Into<String>, body: Bytes, headers: Headers) -> Self {
        Self { id: id.into(), body, headers }
    }

    /// Why it was dead-lettered.
    pub fn reason(&self) -> Option<&str> {
        self.headers.get(DEAD_LETTER_REASON).map(String::as_str)
    }

    /// The queue it came from.
    pub fn original_queue(&self) -> Option<&str> {
        self.headers.get(DEAD_LETTER_QUEUE).map(String::as_str)
    }

    /// How many times it was delivered.
    pub fn attempts(&self) -> Option<u32> {
        self.headers.get(DEAD_LETTER_ATTEMPTS).and_then(|a| a.parse().ok())
    }

    /// When it first failed.
    pub fn first_failure(&self) -> Option<OffsetDateTime> {
        let raw = self.headers.get(DEAD_LETTER_FIRST_FAILURE)?;
        OffsetDateTime::parse(raw, &time::format_description::well_known::Rfc3339).ok()
    }
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("id", &self.id)
            .field("body_len", &self.body.len())
            .field("headers", &self.headers)
            .finish()
    }
}

/// The headers a dead letter carries: the original ones plus reason, original queue,
/// attempts, first-failure time and dead-letter time.
pub fn dead_letter_headers(
    original: &Headers,
    reason: &str,
    queue: &str,
    attempts: u32,
    first_failure: Option<OffsetDateTime>,
) -> Headers {
    let now = OffsetDateTime::now_utc();
    let mut h = original.clone();
    let reason: String = reason.chars().filter(|c| !c.is_control()).take(MAX_HEADER_VALUE_LEN / 4).collect();
    h.insert(DEAD_LETTER_REASON.into(), reason);
    h.insert(DEAD_LETTER_QUEUE.into(), queue.into());
    h.insert(DEAD_LETTER_ATTEMPTS.into(), attempts.to_string());
    h.insert(DEAD_LETTER_FIRST_FAILURE.into(), rfc3339(first_failure.unwrap_or(now)));
    h.insert(DEAD_LETTER_AT.into(), rfc3339(now));
    h
}

/// Headers as stored by the SQL and Redis backends: a JSON object.
#[allow(dead_code)]
pub(crate) fn encode_headers(h: &Headers) -> String {
    serde_json::to_string(h).unwrap_or_else(|_| String::from("{}"))
}

/// The inverse of [`encode_headers`]; a corrupt value reads as no headers.
#[allow(dead_code)]
pub(crate) fn decode_headers(s: &str) -> Headers {
    serde_json::from_str(s).unwrap_or_default()
}

/// The inverse of [`rfc3339`]; `None` for anything else.
#[allow(dead_code)]
pub(crate) fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_rules() {
        assert!(validate_header("x-correlation-id", "abc").is_ok());
        assert!(validate_header("traceparent", "00-ab-cd-01").is_ok());
        assert!(validate_header("k", "üñíçødé and spaces").is_ok());
        for bad in ["", "has space", "colon:", "new\nline", "ü"] {
            assert!(validate_header(bad, "v").unwrap_err().is_invalid_input(), "{bad:?}");
        }
        assert!(validate_header("k", "a\r\nb").is_err());
        assert!(validate_header("k", &"v".repeat(MAX_HEADER_VALUE_LEN + 1)).is_err());
        assert!(validate_header(&"k".repeat(MAX_HEADER_NAME_LEN + 1), "v").is_err());
    }

    #[test]
    fn message_limits() {
        let caps = Capabilities { max_body_bytes: 4, max_headers: 1, ..Capabilities::default() };
        assert!(Message::new("abcd").validate(&caps).is_ok());
        let err = Message::new("abcde").validate(&caps).unwrap_err();
        assert!(err.is_invalid_input() && err.details()[0].field == "body");
        assert!(Message::new("").with_header("a", "1").with_header("b", "2").validate(&caps).is_err());
        let no_delay = Capabilities { delay: false, dedup: false, ..caps.clone() };
        assert!(Message::new("").with_delay(Duration::from_secs(1)).validate(&no_delay).unwrap_err().is_unsupported());
        assert!(Message::new("").with_dedup_key("k").validate(&no_delay).unwrap_err().is_unsupported());
        assert!(Message::new("").with_dedup_key("").validate(&caps).unwrap_err().is_invalid_input());
        assert!(Message::new("").with_order_key("k").validate(&caps).unwrap_err().is_unsupported());
        let ordered = Capabilities { ordered_per_key: true, ..caps.clone() };
        assert!(Message::new("").with_order_key("k").validate(&ordered).is_ok());
        assert!(Message::new("").with_order_key("").validate(&ordered).unwrap_err().is_invalid_input());
        let batch = vec![Message::new("ok"), Message::new("too long")];
        assert!(caps.validate_batch(&batch).is_err());
        assert!(ReceiveOptions::new(0, Duration::ZERO).validate(&caps).is_err());
        assert!(ReceiveOptions::new(1001, Duration::ZERO).validate(&caps).is_err());
    }

    #[test]
    fn numbered_ids_read_as_decimal() {
        for n in [0, 7, 10, 12_345, u64::MAX] {
            assert_eq!(DeliveryId::number(n).as_str(), n.to_string());
        }
    }

    #[test]
    fn dead_letter_headers_carry_history() {
        let h = dead_letter_headers(&Headers::new(), "boom\nagain", "jobs", 3, None);
        let dl = DeadLetter::new("1", Bytes::new(), h);
        assert_eq!(dl.reason(), Some("boomagain"));
        assert_eq!(dl.original_queue(), Some("jobs"));
        assert_eq!(dl.attempts(), Some(3));
        assert!(dl.first_failure().is_some());
    }
}
