#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "cassandra")]
mod cassandra;
mod collection;
pub mod driver;
#[cfg(feature = "dynamodb")]
mod dynamodb;
#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "mongodb")]
mod mongodb;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "testkit")]
pub mod testkit;
mod types;

use std::sync::Arc;

#[cfg(feature = "cassandra")]
pub use cassandra::CassandraCollection;
pub use collection::{Collection, CollectionExt, CollectionHandle};
#[cfg(feature = "dynamodb")]
pub use dynamodb::DynamoCollection;
#[cfg(feature = "memory")]
pub use memory::MemoryCollection;
#[cfg(feature = "mongodb")]
pub use mongodb::MongoCollection;
pub use platform_core::{Error, ErrorKind, Result};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::SqlCollection;
pub use types::{
    Action, AtomicWrites, Capabilities, DEFAULT_REVISION_FIELD, Direction, Document, FieldPath, Filter, Key, KeyPart,
    KeySpec, Mod, Op, Outcome, Plan, Query,
};

/// Every scheme this build can open.
pub fn schemes() -> Vec<&'static str> {
    let all = [
        ("memory", cfg!(feature = "memory")),
        ("sqlite", cfg!(feature = "sqlite")),
        ("postgres", cfg!(feature = "postgres")),
        ("postgresql", cfg!(feature = "postgres")),
        ("dynamodb", cfg!(feature = "dynamodb")),
        ("mongodb", cfg!(feature = "mongodb")),
        ("cassandra", cfg!(feature = "cassandra")),
    ];
    all.into_iter().filter(|(_, on)| *on).map(|(scheme, _)| scheme).collect()
}

fn feature_for(scheme: &str) -> Option<&'static str> {
    Some(match scheme {
        "memory" => "memory",
        "sqlite" => "sqlite",
        "postgres" | "postgresql" => "postgres",
        "dynamodb" => "dynamodb",
        "mongodb" => "mongodb",
        "cassandra" => "cassandra",
        _ => return None,
    })
}

fn bad(key: &str, why: &str) -> Error {
    platform_core::config::url_error("docstore", key, why)
}

/// The collection parameters of a URL (`collection`, `key`, `sort_key`, `revision`),
/// and the URL without them (what the database itself is opened with).
#[cfg_attr(
    not(any(
        feature = "memory",
        feature = "sqlite",
        feature = "postgres",
        feature = "dynamodb",
        feature = "mongodb",
        feature = "cassandra"
    )),
    expect(dead_code, reason = "no backend")
)]
struct Parts {
    collection: Option<String>,
    spec: KeySpec,
    rest: url::Url,
}

fn parts(url: &url::Url) -> Result<Parts> {
    let mut collection = None;
    let mut spec = KeySpec::new("id");
    let mut rest = Vec::new();
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "collection" => collection = Some(v.into_owned()),
            "key" => spec.partition = v.into_owned(),
            "sort_key" => spec.sort = Some(v.into_owned()),
            "revision" => spec.revision = v.into_owned(),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    spec.validate().map_err(|e| bad("key", e.message()))?;
    let mut rest_url = url.clone();
    if rest.is_empty() {
        rest_url.set_query(None);
    } else {
        rest_url.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok(Parts { collection, spec, rest: rest_url })
}

/// Opens a collection from a URL:
///
/// | URL | backend | atomic writes |
/// |---|---|---|
/// | `memory://users?key=id` | in-process, empty at each open (feature `memory`) | any |
/// | `sqlite:///path/docs.db?collection=users&key=id` | SQLite, JSON text (`sqlite`) | any (one transaction) |
/// | `postgres://user@host/db?collection=users&key=id` | PostgreSQL, JSONB (`postgres`) | any (one transaction) |
/// | `mongodb://host/db?collection=users&key=id` | MongoDB (`mongodb`); its other parameters are the driver's (`directConnection=true`, `replicaSet=…`) | any (a transaction; needs a replica set) |
/// | `dynamodb://table?key=id` | DynamoDB (`dynamodb`): `endpoint`, `region`, `access_key_id`, `secret_access_key`, `session_token`, `allow_scans`, `create_table`, `transactions`, `timeout` | any (`TransactWriteItems`, 100 items); none with `transactions=false` |
/// | `cassandra://user:pass@host:9042/keyspace?collection=people&key=id` | Cassandra and ScyllaDB (`cassandra`): `hosts`, `consistency`, `serial_consistency`, `allow_scans`, `create_table`, `timeout` | one partition (a conditional `BATCH`) |
///
/// Every scheme takes `key` (the partition key field, `id` by default), `sort_key`
/// (for two-part keys) and `revision` (`_rev` by default). The SQL schemes keep the
/// collection in table `docstore_{collection}`, made when missing; their other
/// parameters are platform-db's. Unknown parameters are errors naming them; passwords
/// are masked in every error.
#[cfg_attr(
    not(any(
        feature = "sqlite",
        feature = "postgres",
        feature = "dynamodb",
        feature = "mongodb",
        feature = "cassandra"
    )),
    expect(clippy::unused_async, reason = "only the network backends await")
)]
pub async fn open(raw: &str) -> Result<Arc<dyn Collection>> {
    let masked = platform_core::mask_url(raw);
    let url = url::Url::parse(raw).map_err(|e| bad("url", &format!("{masked:?} is not a URL: {e}")))?;
    let parts = parts(&url)?;
    let scheme = url.scheme().to_owned();
    let collection: Arc<dyn Collection> = match scheme.as_str() {
        #[cfg(feature = "memory")]
        "memory" => {
            let name = memory::name_of(&url)?;
            if parts.collection.is_some() {
                return Err(bad("collection", "memory:// names its collection as the host (memory://users)"));
            }
            let leftover: Vec<String> = parts.rest.query_pairs().map(|(k, _)| k.into_owned()).collect();
            if let Some(k) = leftover.first() {
                return Err(bad(k, "is not a parameter of memory://"));
            }
            let driver = MemoryCollection::new(parts.spec.clone());
            Arc::new(CollectionHandle::new(driver, name, parts.spec)?)
        }
        #[cfg(feature = "dynamodb")]
        "dynamodb" => {
            let table = url.host_str().unwrap_or_default().to_owned();
            if table.is_empty() {
                return Err(bad("table", "dynamodb:// names its table as the host (dynamodb://people)"));
            }
            if parts.collection.is_some() {
                return Err(bad("collection", "dynamodb:// names its table as the host (dynamodb://people)"));
            }
            let mut params = platform_core::config::UrlParams::parse("docstore", parts.rest.query())?;
            let driver = DynamoCollection::open(&table, parts.spec.clone(), &mut params).await?;
            Arc::new(CollectionHandle::new(driver, table, parts.spec)?)
        }
        #[cfg(feature = "cassandra")]
        "cassandra" => {
            let name = parts.collection.ok_or_else(|| bad("collection", "is required (…?collection=people)"))?;
            let mut params = platform_core::config::UrlParams::parse("docstore", parts.rest.query())?;
            let driver = CassandraCollection::open(&parts.rest, &name, parts.spec.clone(), &mut params).await?;
            Arc::new(CollectionHandle::new(driver, name, parts.spec)?)
        }
        #[cfg(feature = "mongodb")]
        "mongodb" => {
            let name = parts.collection.ok_or_else(|| bad("collection", "is required (…?collection=people)"))?;
            let driver = MongoCollection::open(parts.rest.as_str(), &name, parts.spec.clone()).await?;
            Arc::new(CollectionHandle::new(driver, name, parts.spec)?)
        }
        #[cfg(any(feature = "sqlite", feature = "postgres"))]
        s if sql_scheme(s) => {
            let name = parts.collection.ok_or_else(|| bad("collection", "is required (…?collection=users)"))?;
            sql::check_name(&name).map_err(|e| bad("collection", e.message()))?;
            let db = platform_db::open(parts.rest.as_str()).await?;
            let driver = SqlCollection::open(db, &name, parts.spec.clone()).await?;
            Arc::new(CollectionHandle::new(driver, name, parts.spec)?)
        }
        other => {
            return Err(match feature_for(other) {
                Some(feature) => Error::new(
                    ErrorKind::Unsupported,
                    format!("{other}:// needs the `{feature}` feature of platform-docstore"),
                ),
                None => bad("scheme", &format!("{other}:// is not a docstore ({})", schemes().join(", "))),
            });
        }
    };
    Ok(collection)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn sql_scheme(scheme: &str) -> bool {
    (scheme == "sqlite" && cfg!(feature = "sqlite"))
        || (matches!(scheme, "postgres" | "postgresql") && cfg!(feature = "postgres"))
}

/// Opens the collection `{PREFIX}_URL` names (`DOCSTORE_URL` for prefix `DOCSTORE`).
pub async fn open_from_env(prefix: &str) -> Result<Arc<dyn Collection>> {
    let var = format!("{prefix}_URL");
    let url = std::env::var(&var).map_err(|_| {
        Error::invalid_input(format!("{var} is not set (a docstore URL, e.g. memory://users?key=id)"))
            .with_detail(var.clone(), "not set")
    })?;
    open(&url).await
}
