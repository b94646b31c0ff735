//! DynamoDB (`dynamodb://table?key=id`, feature `dynamodb`, aws-sdk-dynamodb with its
//! own retries off).
//!
//! An item is `{_pk: S, _sk: S, doc: M, rev: S}`: the key parts in their stable text
//! form (so `7` and `"7"` stay two documents), the document as a native map (every JSON
//! type has an attribute type), the revision beside it. Reads are strongly consistent.
//! Writes are conditional on the revision read (`attribute_not_exists` for a new item):
//! a condition that fails because another writer got there first is a retryable
//! `Conflict`. Atomic lists are simulated in order on what was read, then committed as
//! one `TransactWriteItems` (at most 100 items, one per key) whose conditions are the
//! revisions read.
//!
//! Queries run as a `Query` on the partition key when a filter says `key = value`;
//! otherwise only as a `Scan`, and only with `allow_scans=true` (else `Unsupported`).
//! The other filters, the order, offset, limit and projection are applied to what the
//! `Query` or `Scan` read, with the semantics every backend shares.
//!
//! Parameters: `endpoint`, `region` (`AWS_REGION`, else `us-east-1`), `access_key_id`,
//! `secret_access_key`, `session_token` (else the `AWS_*` variables), `allow_scans`,
//! `create_table` (make the table, on-demand, when it is missing), `transactions`
//! (`false` for servers without `TransactWriteItems`, such as dynalite and ScyllaDB
//! Alternator: atomic lists are then `Unsupported`), `timeout` (10 s).

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, KeySchemaElement, KeyType, Put, ScalarAttributeType,
    TransactWriteItem,
};
use platform_core::config::UrlParams;
use platform_core::{Error, ErrorKind, Result};
use serde_json::{Map, Number, Value};

use crate::driver::{self, Checked, Driver, Pending, Stored};
use crate::types::{Action, AtomicWrites, Capabilities, Document, Key, KeySpec, Outcome, Plan, Query};

const BACKEND: &str = "dynamodb";
const PK: &str = "_pk";
const SK: &str = "_sk";
const DOC: &str = "doc";
const REV: &str = "rev";
/// `TransactWriteItems` takes at most this many items.
const MAX_TRANSACTION: usize = 100;

type Item = HashMap<String, AttributeValue>;

/// The DynamoDB backend.
#[derive(Debug)]
pub struct DynamoCollection {
    client: aws_sdk_dynamodb::Client,
    table: String,
    spec: KeySpec,
    allow_scans: bool,
    transactions: bool,
}

fn sdk_error<
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
>(
    e: SdkError<E, R>,
) -> Error {
    let code = e.code().unwrap_or_default().to_owned();
    let message = e.message().unwrap_or_default().to_owned();
    let (kind, retryable) = match (&e, code.as_str()) {
        (SdkError::TimeoutError(_), _) => (ErrorKind::Timeout, true),
        (SdkError::DispatchFailure(_) | SdkError::ResponseError(_), _) => (ErrorKind::Unavailable, true),
        (_, "ResourceNotFoundException") => (ErrorKind::NotFound, false),
        (_, "ConditionalCheckFailedException" | "TransactionConflictException") => (ErrorKind::Conflict, true),
        (
            _,
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "LimitExceededException",
        ) => (ErrorKind::RateLimited, true),
        (_, "ValidationException" | "SerializationException" | "ItemCollectionSizeLimitExceededException") => {
            (ErrorKind::InvalidInput, false)
        }
        (_, "UnrecognizedClientException" | "InvalidSignatureException" | "MissingAuthenticationToken") => {
            (ErrorKind::Unauthenticated, false)
        }
        (_, "AccessDeniedException") => (ErrorKind::PermissionDenied, false),
        (_, "UnknownOperationException") => (ErrorKind::Unsupported, false),
        (_, "InternalServerError" | "ServiceUnavailable") => (ErrorKind::Unavailable, true),
        _ => (ErrorKind::Internal, false),
    };
    let text = match (code.is_empty(), message.is_empty()) {
        (true, _) => e.to_string(),
        (false, true) => code,
        (false, false) => format!("{code}: {message}"),
    };
    Error::new(kind, text).with_retryable(retryable).with_backend(BACKEND).with_source(e)
}

fn to_attr(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attr).collect()),
        Value::Object(m) => AttributeValue::M(m.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect()),
    }
}

fn from_attr(a: &AttributeValue) -> Result<Value> {
    Ok(match a {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => match n.parse::<i64>() {
            Ok(i) => Value::from(i),
            Err(_) => n
                .parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| Error::internal(format!("a stored number is not one: {n}")))?,
        },
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::L(items) => Value::Array(items.iter().map(from_attr).collect::<Result<_>>()?),
        AttributeValue::M(m) => {
            Value::Object(m.iter().map(|(k, v)| Ok((k.clone(), from_attr(v)?))).collect::<Result<Map<_, _>>>()?)
        }
        other => return Err(Error::internal(format!("an attribute this backend never writes: {other:?}"))),
    })
}

fn key_item(key: &Key) -> Item {
    let sort = key.sort.as_ref().map(crate::types::KeyPart::encode).unwrap_or_default();
    // DynamoDB refuses empty key strings: a one-part key's sort part is a fixed marker.
    let sort = if sort.is_empty() { "-".to_owned() } else { sort };
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(key.partition.encode())),
        (SK.to_owned(), AttributeValue::S(sort)),
    ])
}

fn stored_of(item: &Item) -> Result<Stored> {
    let doc = match item.get(DOC).map(from_attr).transpose()? {
        Some(Value::Object(doc)) => doc,
        _ => return Err(Error::internal("a stored item has no document")),
    };
    let revision = match item.get(REV) {
        Some(AttributeValue::S(r)) => r.clone(),
        _ => return Err(Error::internal("a stored item has no revision")),
    };
    Ok(Stored { doc, revision })
}

impl Pending {
    fn condition(&self) -> (String, HashMap<String, String>, Option<Item>) {
        match &self.was {
            None => ("attribute_not_exists(#pk)".to_owned(), HashMap::from([("#pk".to_owned(), PK.to_owned())]), None),
            Some(rev) => (
                "#rev = :was".to_owned(),
                HashMap::from([("#rev".to_owned(), REV.to_owned())]),
                Some(HashMap::from([(":was".to_owned(), AttributeValue::S(rev.clone()))])),
            ),
        }
    }

    fn item(&self) -> Option<Item> {
        let (doc, rev) = self.state.as_ref()?;
        let mut item = key_item(&self.key);
        item.insert(DOC.to_owned(), AttributeValue::M(doc.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect()));
        item.insert(REV.to_owned(), AttributeValue::S(rev.clone()));
        Some(item)
    }
}

impl DynamoCollection {
    /// From the parameters of `dynamodb://{table}?…` (the collection ones already taken).
    pub async fn open(table: &str, spec: KeySpec, params: &mut UrlParams) -> Result<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let endpoint = params.take("endpoint");
        let region = params.take("region").or_else(|| env("AWS_REGION")).unwrap_or_else(|| "us-east-1".into());
        let key = params.take("access_key_id").or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = params.take("secret_access_key").or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let token = params.take("session_token").or_else(|| env("AWS_SESSION_TOKEN"));
        let allow_scans = params.take_bool("allow_scans")?.unwrap_or(false);
        let transactions = params.take_bool("transactions")?.unwrap_or(true);
        let create_table = params.take_bool("create_table")?.unwrap_or(false);
        let timeout = params.take_duration("timeout")?.unwrap_or(Duration::from_secs(10));
        params.finish(BACKEND)?;
        let (Some(key), Some(secret)) = (key, secret) else {
            return Err(Error::new(
                ErrorKind::Unauthenticated,
                "dynamodb needs credentials: access_key_id and secret_access_key in the URL or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
            )
            .with_backend(BACKEND)
            .with_op("open"));
        };
        let timeouts = aws_sdk_dynamodb::config::timeout::TimeoutConfig::builder().operation_timeout(timeout).build();
        let mut config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts)
            .credentials_provider(Credentials::new(key, secret, token, None, "platform-docstore"));
        if let Some(e) = endpoint {
            config = config.endpoint_url(e);
        }
        let this = Self {
            client: aws_sdk_dynamodb::Client::from_conf(config.build()),
            table: table.to_owned(),
            spec,
            allow_scans,
            transactions,
        };
        if create_table {
            this.create_table().await?;
        }
        Ok(this)
    }

    async fn create_table(&self) -> Result<()> {
        let attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| Error::internal(e.to_string()))
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| Error::internal(e.to_string()))
        };
        let made = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr(PK)?)
            .attribute_definitions(attr(SK)?)
            .key_schema(key(PK, KeyType::Hash)?)
            .key_schema(key(SK, KeyType::Range)?)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match made {
            Ok(_) => {}
            Err(e) if e.code() == Some("ResourceInUseException") => return Ok(()),
            Err(e) => return Err(sdk_error(e).with_op("open")),
        }
        // Usable once active.
        for _ in 0..100 {
            let d = self.client.describe_table().table_name(&self.table).send().await.map_err(sdk_error)?;
            if d.table().and_then(|t| t.table_status()).is_some_and(|s| s.as_str() == "ACTIVE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Error::new(ErrorKind::Timeout, format!("table {} did not become active", self.table)))
    }

    async fn read(&self, key: &Key) -> Result<Option<Stored>> {
        let got = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_item(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        got.item().map(stored_of).transpose()
    }

    async fn write(&self, w: &Pending, create: bool) -> Result<()> {
        let (condition, names, values) = w.condition();
        let sent = match w.item() {
            Some(item) => self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(values)
                .send()
                .await
                .map(|_| ())
                .map_err(sdk_error),
            None => self
                .client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key_item(&w.key)))
                .condition_expression(condition)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(values)
                .send()
                .await
                .map(|_| ())
                .map_err(sdk_error),
        };
        sent.map_err(|e| match e.kind() {
            ErrorKind::Conflict if create && w.was.is_none() => {
                Error::new(ErrorKind::AlreadyExists, format!("document {} exists", w.key))
            }
            ErrorKind::Conflict => {
                Error::new(ErrorKind::Conflict, format!("document {} changed meanwhile; try again", w.key))
                    .with_retryable(true)
            }
            _ => e,
        })
    }

    async fn step(&self, c: &Checked) -> Result<Outcome> {
        let current = self.read(&c.key).await?;
        let (outcome, write) = driver::pending(c, current, &self.spec)?;
        if let Some(w) = write {
            self.write(&w, matches!(c.action, Action::Create(_))).await?;
        }
        Ok(outcome)
    }

    /// Every item of the partition `pk` names (a `Query`), or of the table (a `Scan`).
    async fn read_all(&self, partition: Option<String>) -> Result<Vec<Document>> {
        let mut docs = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let (items, last) = match &partition {
                Some(pk) => {
                    let out = self
                        .client
                        .query()
                        .table_name(&self.table)
                        .key_condition_expression("#pk = :pk")
                        .expression_attribute_names("#pk", PK)
                        .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(sdk_error)?;
                    (out.items().to_vec(), out.last_evaluated_key().cloned())
                }
                None => {
                    let out = self
                        .client
                        .scan()
                        .table_name(&self.table)
                        .consistent_read(true)
                        .set_exclusive_start_key(start.take())
                        .send()
                        .await
                        .map_err(sdk_error)?;
                    (out.items().to_vec(), out.last_evaluated_key().cloned())
                }
            };
            for item in &items {
                let s = stored_of(item)?;
                docs.push(driver::with_revision(s.doc, &s.revision, &self.spec));
            }
            match last {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(docs),
            }
        }
    }
}

#[async_trait::async_trait]
impl Driver for DynamoCollection {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        let atomic_writes = if self.transactions { AtomicWrites::Any } else { AtomicWrites::None };
        Capabilities { atomic_writes, any_field_queries: self.allow_scans }
    }

    async fn run(&self, actions: Vec<Checked>) -> Vec<Result<Outcome>> {
        let mut results = Vec::with_capacity(actions.len());
        for c in &actions {
            results.push(self.step(c).await);
        }
        results
    }

    async fn run_atomic(&self, actions: Vec<Checked>) -> Result<Vec<Outcome>> {
        // In order, on what was read; then every key's final state in one transaction,
        // each on the condition that the key is still as read.
        let (outcomes, writes) =
            driver::simulate(&actions, &self.spec, |key| async move { self.read(&key).await }).await?;
        if writes.is_empty() {
            return Ok(outcomes);
        }
        if writes.len() > MAX_TRANSACTION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("DynamoDB writes at most {MAX_TRANSACTION} items in one transaction, not {}", writes.len()),
            ));
        }
        let mut items = Vec::with_capacity(writes.len());
        for w in &writes {
            let (condition, names, values) = w.condition();
            let built = match w.item() {
                Some(item) => Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(values)
                    .build()
                    .map(|p| TransactWriteItem::builder().put(p).build()),
                None => Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_item(&w.key)))
                    .condition_expression(condition)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(values)
                    .build()
                    .map(|d| TransactWriteItem::builder().delete(d).build()),
            };
            items.push(built.map_err(|e| Error::internal(e.to_string()))?);
        }
        self.client.transact_write_items().set_transact_items(Some(items)).send().await.map_err(|e| {
            if e.code() == Some("TransactionCanceledException") {
                Error::new(ErrorKind::Conflict, "a document changed meanwhile; nothing was written, try again")
                    .with_retryable(true)
                    .with_backend(BACKEND)
                    .with_source(e)
            } else {
                sdk_error(e)
            }
        })?;
        Ok(outcomes)
    }

    async fn query(&self, query: &Query) -> Result<Vec<Document>> {
        let partition = driver::partition_or_refuse(query, &self.spec, self.allow_scans)?;
        Ok(driver::answer(self.read_all(partition).await?, query, &self.spec))
    }

    async fn plan(&self, query: &Query) -> Result<Plan> {
        Ok(match driver::partition_of(query, &self.spec) {
            Some(_) => Plan {
                scan: false,
                detail: format!(
                    "Query on {}.{}; other filters, order and paging applied to the partition read",
                    self.table, self.spec.partition
                ),
            },
            None if self.allow_scans => Plan {
                scan: true,
                detail: format!(
                    "Scan of {} (allow_scans=true); filters, order and paging applied to what it read",
                    self.table
                ),
            },
            None => Plan { scan: true, detail: "refused: it would scan the table (allow_scans=false)".to_owned() },
        })
    }

    async fn close(&self) {}

    async fn ping(&self) -> Result<String> {
        let d = self.client.describe_table().table_name(&self.table).send().await.map_err(sdk_error)?;
        let status = d.table().and_then(|t| t.table_status()).map_or("unknown", |s| s.as_str()).to_owned();
        Ok(format!("DynamoDB table {} {status}", self.table))
    }
}
