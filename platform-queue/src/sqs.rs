//! Amazon SQS queues: `sqs://?queue=jobs&region=eu-west-1` (or any SQS-compatible
//! endpoint with `endpoint=`).
//!
//! - [x] the visibility timeout is the lease (whole seconds, at least 2); `extend` and
//!   `nack(delay)` are `ChangeMessageVisibility`
//! - [x] attempts from `ApproximateReceiveCount`, plus what was carried across a release
//! - [x] delay with `DelaySeconds`, up to 15 minutes (longer is `InvalidInput`), rounded
//!   up to whole seconds
//! - [x] dead letters in a second queue (`<queue>-dlq`), moved by this client after
//!   `max_attempts` (SQS's own redrive policy is not used, so the reason, original
//!   queue and attempts travel with the message); read without removing them; redrive
//! - [x] dedup keys on FIFO queues (`.fifo` names: `MessageDeduplicationId`, SQS's
//!   fixed 5-minute window; the group is the `key` header, else one group); on standard
//!   queues a dedup key is `Unsupported`
//! - [ ] ~~atomic batches~~: `SendMessageBatch` (10 at most) can fail per entry
//!
//! Bodies travel base64-encoded (SQS bodies must be XML-safe text, ours are any bytes),
//! so the largest body is 190 KiB; headers travel JSON-encoded in one message attribute.
//! Queue names map `.` to `_` (SQS allows letters, digits, `-`, `_`), keeping `.fifo`.
//!
//! URL: `sqs://[queue]` plus the common parameters and `endpoint`, `region`,
//! `access_key_id`, `secret_access_key`, `session_token`. Credentials not in the URL
//! come from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use base64::Engine as _;
use bytes::Bytes;
use platform_core::{CheckOutcome, Error, ErrorKind, HealthCheck, Result};
use time::OffsetDateTime;

use crate::QueueHandle;
use crate::driver::{Acker, dead_letter_headers};
use crate::lease::clock::LeaseClock;
use crate::message::{decode_headers, encode_headers, exhausted_reason};
use crate::options::{QueueOptions, QueueUrl};
use crate::{Capabilities, DeadLetter, Delivery, Headers, Message, Queue, ReceiveOptions};

/// The URL schemes of this backend.
pub const SCHEMES: &[&str] = &["sqs"];

const HEADERS: &str = "platform-headers";
const ATTEMPTS_BASE: &str = "platform-attempts-base";
const MAX_DELAY: Duration = Duration::from_secs(900);
const LEASE_MARGIN: Duration = Duration::from_millis(50);
/// 256 KiB of base64 text, less room for the attributes.
const MAX_BODY: usize = 190 * 1024;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Maps an SQS error onto the portable kinds, by the service's error code.
pub(crate) fn map_err<E, R>(e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let (kind, retryable) = match &e {
        SdkError::TimeoutError(_) => (ErrorKind::Timeout, true),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => (ErrorKind::Unavailable, true),
        SdkError::ConstructionFailure(_) => (ErrorKind::InvalidInput, false),
        _ => match e.code().unwrap_or_default() {
            "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => (ErrorKind::NotFound, false),
            "ReceiptHandleIsInvalid" | "InvalidReceiptHandle" | "MessageNotInflight" => (ErrorKind::Conflict, false),
            "InvalidParameterValue"
            | "InvalidAttributeValue"
            | "InvalidAttributeName"
            | "MissingParameter"
            | "InvalidMessageContents"
            | "BatchEntryIdsNotDistinct"
            | "TooManyEntriesInBatchRequest"
            | "BatchRequestTooLong"
            | "InvalidBatchEntryId" => (ErrorKind::InvalidInput, false),
            "AccessDenied" | "AccessDeniedException" => (ErrorKind::PermissionDenied, false),
            "InvalidClientTokenId" | "SignatureDoesNotMatch" | "UnrecognizedClientException" => {
                (ErrorKind::Unauthenticated, false)
            }
            "RequestThrottled" | "ThrottlingException" | "OverLimit" => (ErrorKind::RateLimited, true),
            "ServiceUnavailable" | "InternalError" | "InternalFailure" => (ErrorKind::Unavailable, true),
            "QueueAlreadyExists" => (ErrorKind::AlreadyExists, false),
            _ => (ErrorKind::Internal, false),
        },
    };
    let message = match e.message() {
        Some(m) => format!("{}: {m}", e.code().unwrap_or("error")),
        None => e.to_string(),
    };
    Error::new(kind, message).with_backend("sqs").with_retryable(retryable).with_source(e)
}

/// SQS's queue name for one of ours.
fn sqs_name(name: &str) -> String {
    match name.strip_suffix(".fifo") {
        Some(base) => format!("{}.fifo", base.replace('.', "_")),
        None => name.replace('.', "_"),
    }
}

/// The shortest lease: SQS counts in whole seconds, and a one-second lease is over
/// before a loaded client has acked a batch.
const MIN_LEASE: Duration = Duration::from_secs(2);

/// A lease as SQS keeps it: whole seconds, at least [`MIN_LEASE`].
fn lease_of(asked: Duration) -> Duration {
    Duration::from_secs(u64::try_from(whole_seconds(asked)).unwrap_or(u64::MAX / 2)).max(MIN_LEASE)
}

fn whole_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_millis().div_ceil(1000)).unwrap_or(i32::MAX)
}

/// Messages leased in this process (queue URL and message id) and when each lease ends.
/// Standard SQS queues are at-least-once and may hand one message out twice; within one
/// process the second copy is dropped while the first lease runs.
static LEASED: std::sync::LazyLock<Mutex<HashMap<String, Instant>>> = std::sync::LazyLock::new(Default::default);

fn claim_lease(key: &str, until: Instant) -> bool {
    let mut leased = LEASED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = Instant::now();
    if leased.len() > 10_000 {
        leased.retain(|_, end| *end > now);
    }
    if leased.get(key).is_some_and(|end| *end > now) {
        return false;
    }
    leased.insert(key.to_owned(), until);
    true
}

fn set_lease(key: &str, until: Option<Instant>) {
    let mut leased = LEASED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match until {
        Some(end) => leased.insert(key.to_owned(), end),
        None => leased.remove(key),
    };
}

/// What a queue and its ackers share.
#[derive(Clone)]
struct Shared {
    client: aws_sdk_sqs::Client,
    url: String,
    dlq_url: String,
    options: QueueOptions,
    fifo: bool,
}

impl Shared {
    fn vt(&self) -> Duration {
        lease_of(self.options.visibility_timeout)
    }

    fn attributes(headers: &Headers, base: Option<u32>) -> Result<HashMap<String, MessageAttributeValue>> {
        let value = |v: String| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map_err(|e| Error::internal(e.to_string()).with_backend("sqs"))
        };
        let mut out = HashMap::new();
        out.insert(HEADERS.to_owned(), value(encode_headers(headers))?);
        if let Some(base) = base {
            out.insert(ATTEMPTS_BASE.to_owned(), value(base.to_string())?);
        }
        Ok(out)
    }

    async fn send_one(&self, url: &str, body: &Bytes, headers: &Headers, base: Option<u32>) -> Result<()> {
        let mut req = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(b64().encode(body))
            .set_message_attributes(Some(Self::attributes(headers, base)?));
        if self.fifo {
            // A moved message must not be taken for a duplicate of its original.
            req = req
                .message_group_id(headers.get("key").cloned().unwrap_or_else(|| "default".to_owned()))
                .message_deduplication_id(uuid::Uuid::new_v4().simple().to_string());
        }
        req.send().await.map_err(map_err)?;
        Ok(())
    }

    /// Receives up to 10 messages from `url`, hidden for `hide`.
    async fn receive_raw(
        &self,
        url: &str,
        max: usize,
        wait: Duration,
        hide: Duration,
    ) -> Result<Vec<aws_sdk_sqs::types::Message>> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .visibility_timeout(whole_seconds(hide).max(1))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(map_err)?;
        Ok(out.messages.unwrap_or_default())
    }

    /// Gives a received message back as if it had not been received: a copy that keeps
    /// the attempts so far, then the original removed.
    async fn give_back(&self, m: &aws_sdk_sqs::types::Message) -> Result<()> {
        let (body, headers, base) = SqsQueue::decode(m)?;
        let count: u32 = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        self.send_one(&self.url, &body, &headers, Some(base + count - 1)).await?;
        self.delete(&self.url, m.receipt_handle().unwrap_or_default()).await
    }

    async fn delete(&self, url: &str, receipt: &str) -> Result<()> {
        self.client.delete_message().queue_url(url).receipt_handle(receipt).send().await.map_err(map_err)?;
        Ok(())
    }
}

/// A queue on Amazon SQS (or an SQS-compatible server).
pub struct SqsQueue {
    shared: Shared,
}

impl fmt::Debug for SqsQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsQueue").field("url", &self.shared.url).field("options", &self.shared.options).finish()
    }
}

impl fmt::Display for SqsQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sqs({})", self.shared.url)
    }
}

impl SqsQueue {
    /// Opens a queue from `sqs://…`, creating it and its dead-letter queue when missing.
    pub async fn from_url(url: &str) -> Result<QueueHandle<Self>> {
        let mut u = QueueUrl::parse(url)?;
        if let Some(host) = u.url().host_str().filter(|h| !h.is_empty() && !u.queue_given()).map(str::to_owned) {
            u.set_queue(&host);
        }
        let endpoint = u.take("endpoint");
        let region =
            u.take("region").or_else(|| std::env::var("AWS_REGION").ok()).unwrap_or_else(|| "us-east-1".into());
        let key = u.take("access_key_id").or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
        let secret = u.take("secret_access_key").or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
        let token = u.take("session_token").or_else(|| std::env::var("AWS_SESSION_TOKEN").ok());
        u.finish("sqs")?;
        let o = u.options.clone();
        let fifo = o.queue.ends_with(".fifo");
        if fifo != o.dead_letter.ends_with(".fifo") {
            return Err(Error::invalid_input("queue url: dead_letter must be a .fifo queue exactly when queue is one")
                .with_op("open")
                .with_detail("dead_letter", "fifo mismatch"));
        }
        if fifo && o.dedup_window != Duration::from_secs(300) {
            return Err(Error::invalid_input(
                "queue url: SQS FIFO queues dedup for exactly 5 minutes (dedup_window=5m)",
            )
            .with_op("open")
            .with_detail("dedup_window", "fixed by SQS"));
        }
        let (Some(key), Some(secret)) = (key, secret) else {
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                "sqs needs credentials: access_key_id and secret_access_key in the URL or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            )
            .with_backend("sqs")
            .with_op("open"));
        };
        let mut config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .credentials_provider(Credentials::new(key, secret, token, None, "platform-queue"));
        if let Some(e) = endpoint {
            config = config.endpoint_url(e);
        }
        let client = aws_sdk_sqs::Client::from_conf(config.build());
        let vt = lease_of(o.visibility_timeout).as_secs().to_string();
        let create = |name: String| {
            let mut req = client.create_queue().queue_name(name).attributes(QueueAttributeName::VisibilityTimeout, &vt);
            if fifo {
                req = req.attributes(QueueAttributeName::FifoQueue, "true");
            }
            req.send()
        };
        let url = create(sqs_name(&o.queue)).await.map_err(map_err)?.queue_url().unwrap_or_default().to_owned();
        let dlq_url =
            create(sqs_name(&o.dead_letter)).await.map_err(map_err)?.queue_url().unwrap_or_default().to_owned();
        Ok(QueueHandle::new(Self { shared: Shared { client, url, dlq_url, options: o, fifo } }))
    }

    fn decode(m: &aws_sdk_sqs::types::Message) -> Result<(Bytes, Headers, u32)> {
        let body = b64()
            .decode(m.body().unwrap_or_default())
            .map_err(|e| Error::internal(format!("message body is not ours (base64): {e}")).with_backend("sqs"))?;
        let attr = |name: &str| m.message_attributes().and_then(|a| a.get(name)).and_then(|v| v.string_value());
        let headers = attr(HEADERS).map(decode_headers).unwrap_or_default();
        let base = attr(ATTEMPTS_BASE).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((Bytes::from(body), headers, base))
    }
}

#[async_trait]
impl HealthCheck for SqsQueue {
    fn name(&self) -> String {
        "queue:sqs".into()
    }

    async fn check(&self) -> Result<CheckOutcome> {
        let started = Instant::now();
        self.shared
            .client
            .get_queue_attributes()
            .queue_url(&self.shared.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .map_err(map_err)?;
        Ok(CheckOutcome::new(started.elapsed()).with_version("sqs"))
    }
}

#[async_trait]
impl Queue for SqsQueue {
    fn queue_name(&self) -> &str {
        &self.shared.options.queue
    }

    fn backend(&self) -> &'static str {
        "sqs"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            delay: true,
            max_delay: Some(MAX_DELAY),
            dedup: self.shared.fifo,
            dedup_window: self.shared.fifo.then_some(Duration::from_secs(300)),
            atomic_batch: false,
            max_body_bytes: MAX_BODY,
            max_batch: 1000,
            max_receive: 1000,
            ..Capabilities::default()
        }
    }

    async fn send(&self, message: Message) -> Result<()> {
        self.send_batch(vec![message]).await
    }

    async fn send_batch(&self, messages: Vec<Message>) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            let mut entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(b64().encode(&m.body))
                .set_message_attributes(Some(Shared::attributes(&m.headers, None)?));
            if let Some(delay) = m.delay.filter(|d| !d.is_zero()) {
                entry = entry.delay_seconds(whole_seconds(delay));
            }
            if self.shared.fifo {
                entry = entry
                    .message_group_id(m.headers.get("key").cloned().unwrap_or_else(|| "default".to_owned()))
                    .message_deduplication_id(
                        m.dedup_key.clone().unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
                    );
            }
            entries.push(entry.build().map_err(|e| Error::invalid_input(e.to_string()).with_backend("sqs"))?);
        }
        // SQS takes 10 per request; a larger batch goes as several, in order.
        let total = messages.len();
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            let chunk: Vec<_> = entries.by_ref().take(10).collect();
            self.send_chunk(chunk, total).await?;
        }
        Ok(())
    }

    async fn receive(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        self.receive_inner(options).await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.dead_letters_inner(limit).await
    }

    async fn redrive(&self, limit: usize) -> Result<usize> {
        self.redrive_inner(limit).await
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

impl SqsQueue {
    async fn send_chunk(&self, entries: Vec<SendMessageBatchRequestEntry>, total: usize) -> Result<()> {
        let out = self
            .shared
            .client
            .send_message_batch()
            .queue_url(&self.shared.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(map_err)?;
        if let Some(failed) = out.failed().first() {
            let kind = if failed.sender_fault() { ErrorKind::InvalidInput } else { ErrorKind::Unavailable };
            return Err(Error::new(
                kind,
                format!(
                    "{} of {} messages were not sent; first: {} {}",
                    out.failed().len(),
                    total,
                    failed.code(),
                    failed.message().unwrap_or_default()
                ),
            )
            .with_backend("sqs")
            .with_op("send"));
        }
        Ok(())
    }

    async fn receive_inner(&self, options: ReceiveOptions) -> Result<Vec<Delivery>> {
        let deadline = tokio::time::Instant::now() + options.wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // Long polls go in whole seconds; the last partial second is a short poll.
            let wait = Duration::from_secs(left.as_secs());
            // The request runs on its own task: when this receive is cancelled (dropped),
            // whatever the server hands to it goes straight back, attempts unchanged.
            let (tx, rx) = tokio::sync::oneshot::channel();
            let shared = self.shared.clone();
            let max = options.max;
            tokio::spawn(async move {
                let got = shared.receive_raw(&shared.url, max, wait, shared.vt()).await;
                if let Err(Ok(orphans)) = tx.send(got) {
                    for m in &orphans {
                        if let Err(e) = shared.give_back(m).await {
                            tracing::warn!(error = %e, "could not give back a message of a cancelled receive; it returns after its lease");
                        }
                    }
                }
            });
            let got = rx.await.map_err(|_| Error::internal("receive task ended").with_backend("sqs"))??;
            let received_at = Instant::now();
            let mut out = Vec::with_capacity(got.len());
            for m in got {
                if let Some(d) = self.deliver(m, received_at).await? {
                    out.push(d);
                }
            }
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(out);
            }
            let pause = deadline.saturating_duration_since(tokio::time::Instant::now()).min(Duration::from_millis(100));
            tokio::time::sleep(pause).await;
        }
    }

    async fn dead_letters_inner(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let mut out = Vec::new();
        let mut receipts = Vec::new();
        // Hide what was read while reading on, then show it all again at once.
        while out.len() < limit {
            let got = self
                .shared
                .receive_raw(&self.shared.dlq_url, limit - out.len(), Duration::ZERO, Duration::from_secs(30))
                .await?;
            if got.is_empty() {
                break;
            }
            for m in got {
                let (body, headers, _) = Self::decode(&m)?;
                out.push(DeadLetter::new(m.message_id().unwrap_or_default(), body, headers));
                receipts.push(m.receipt_handle().unwrap_or_default().to_owned());
            }
        }
        for receipt in receipts {
            self.shared
                .client
                .change_message_visibility()
                .queue_url(&self.shared.dlq_url)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await
                .map_err(map_err)?;
        }
        Ok(out)
    }

    async fn redrive_inner(&self, limit: usize) -> Result<usize> {
        let mut moved = 0;
        while moved < limit {
            let got = self
                .shared
                .receive_raw(&self.shared.dlq_url, limit - moved, Duration::ZERO, Duration::from_secs(30))
                .await?;
            if got.is_empty() {
                break;
            }
            for m in got {
                let (body, headers, _) = Self::decode(&m)?;
                // Sent to the queue first, then removed here: a crash between the two
                // leaves a copy in both, never in neither.
                self.shared.send_one(&self.shared.url, &body, &headers, None).await?;
                self.shared.delete(&self.shared.dlq_url, m.receipt_handle().unwrap_or_default()).await?;
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Turns a received message into a delivery, or dead-letters it when its leases ran
    /// out `max_attempts` times.
    async fn deliver(&self, m: aws_sdk_sqs::types::Message, received_at: Instant) -> Result<Option<Delivery>> {
        let (body, headers, base) = Self::decode(&m)?;
        let system = |name: MessageSystemAttributeName| m.attributes().and_then(|a| a.get(&name)).cloned();
        let count: u32 =
            system(MessageSystemAttributeName::ApproximateReceiveCount).and_then(|v| v.parse().ok()).unwrap_or(1);
        let sent = system(MessageSystemAttributeName::SentTimestamp)
            .and_then(|v| v.parse::<i128>().ok())
            .and_then(|ms| OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).ok());
        let attempt = base + count;
        let id = m.message_id().unwrap_or_default().to_owned();
        let lease_key = format!("{}#{id}", self.shared.url);
        let until = received_at + self.shared.vt() - LEASE_MARGIN;
        if !claim_lease(&lease_key, until) {
            tracing::debug!(id, "SQS handed out a message already leased here; dropped the copy");
            return Ok(None);
        }
        let acker = SqsAcker {
            lease_key,
            shared: self.shared.clone(),
            receipt: m.receipt_handle().unwrap_or_default().to_owned(),
            body: body.clone(),
            headers: headers.clone(),
            attempt,
            sent,
            // The server's lease began when it answered, a little before this: keep a
            // margin so ours never outlives it.
            lease: LeaseClock::until(until),
        };
        let max = self.shared.options.max_attempts;
        if attempt > max {
            acker.move_to_dlq(&format!("lease expired on each of {} attempts", attempt - 1), attempt - 1).await?;
            return Ok(None);
        }
        Ok(Some(Delivery::new(id, body, headers, attempt, self.shared.vt(), Box::new(acker))))
    }
}

struct SqsAcker {
    lease_key: String,
    shared: Shared,
    receipt: String,
    body: Bytes,
    headers: Headers,
    attempt: u32,
    sent: Option<OffsetDateTime>,
    lease: LeaseClock,
}

impl fmt::Debug for SqsAcker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsAcker").field("attempt", &self.attempt).finish_non_exhaustive()
    }
}

impl SqsAcker {
    async fn set_visibility(&self, after: Duration) -> Result<()> {
        self.shared
            .client
            .change_message_visibility()
            .queue_url(&self.shared.url)
            .receipt_handle(&self.receipt)
            .visibility_timeout(whole_seconds(after))
            .send()
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn move_to_dlq(&self, reason: &str, attempts: u32) -> Result<()> {
        let o = &self.shared.options;
        let dl = dead_letter_headers(&self.headers, reason, &o.queue, attempts, self.sent);
        self.shared.send_one(&self.shared.dlq_url, &self.body, &dl, None).await?;
        self.shared.delete(&self.shared.url, &self.receipt).await?;
        set_lease(&self.lease_key, None);
        Ok(())
    }
}

#[async_trait]
impl Acker for SqsAcker {
    async fn ack(&self) -> Result<()> {
        self.lease.check("sqs", "ack")?;
        self.shared.delete(&self.shared.url, &self.receipt).await?;
        set_lease(&self.lease_key, None);
        Ok(())
    }

    async fn nack(&self, delay: Option<Duration>, reason: Option<&str>) -> Result<bool> {
        self.lease.check("sqs", "nack")?;
        let max = self.shared.options.max_attempts;
        if self.attempt >= max {
            let why = exhausted_reason(max, reason);
            self.move_to_dlq(&why, self.attempt).await?;
            return Ok(true);
        }
        let delay = delay.unwrap_or_default();
        if delay > Duration::from_secs(12 * 3600) {
            return Err(Error::invalid_input("SQS hides a message for at most 12 hours").with_backend("sqs"));
        }
        self.set_visibility(delay).await?;
        set_lease(&self.lease_key, None);
        Ok(false)
    }

    async fn dead_letter(&self, reason: &str) -> Result<()> {
        self.lease.check("sqs", "dead_letter")?;
        self.move_to_dlq(reason, self.attempt).await
    }

    async fn extend(&self, lease: Duration) -> Result<()> {
        self.lease.check("sqs", "extend")?;
        let lease = lease_of(lease);
        self.set_visibility(lease).await?;
        let until = Instant::now() + lease - LEASE_MARGIN;
        self.lease.renew(until);
        set_lease(&self.lease_key, Some(until));
        Ok(())
    }

    async fn release(&self) -> Result<()> {
        self.lease.check("sqs", "release")?;
        // SQS counts every receive; a copy that remembers the attempts so far comes back
        // with this delivery not counted.
        self.shared.send_one(&self.shared.url, &self.body, &self.headers, Some(self.attempt - 1)).await?;
        self.shared.delete(&self.shared.url, &self.receipt).await?;
        set_lease(&self.lease_key, None);
        Ok(())
    }
}
