//! The conformance suite (feature `testkit`): every behaviour of the [`Collection`]
//! contract, listed once in [`docstore_behaviours!`](crate::docstore_behaviours), run by
//! [`conformance_tests!`](crate::conformance_tests) as one test per behaviour and
//! backend, or all at once by [`run_all`]. The behaviours follow Go CDK's docstore
//! driver tests: create, put, replace, get, delete, update, revisions, action lists,
//! atomic writes, queries, two-part keys.

use std::sync::Arc;

use platform_core::{ErrorKind, Result};
use serde_json::{Value, json};

use crate::{
    Action, AtomicWrites, Collection, CollectionExt as _, Direction, Document, FieldPath, Mod, Op, Outcome, Query,
};

/// Makes fresh, uniquely named collections.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// The URL of a new, empty collection, with `keys` (`key=…&sort_key=…`) appended.
    async fn fresh_url(&self, keys: &str) -> Result<String>;
}

/// The backends the suite knows how to make collections on.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum UrlHarness {
    /// `memory://`: every open is a new collection.
    Memory,
    /// A fresh SQLite file under the temp dir.
    Sqlite,
    /// A uniquely named collection (table) in the PostgreSQL database of this URL.
    Postgres(String),
    /// A new table (`create_table=true`, `allow_scans=true`) on the DynamoDB endpoint of
    /// this URL (`dynamodb://?endpoint=…&region=…&access_key_id=…&secret_access_key=…`).
    Dynamodb(String),
    /// A uniquely named collection in the MongoDB database of this URL.
    Mongodb(String),
}

impl UrlHarness {
    /// PostgreSQL from `PLATFORM_TEST_POSTGRES_URL`; `None` (a skip) when unset.
    pub fn postgres_from_env() -> Option<Self> {
        platform_core::testkit::server_url("POSTGRES").map(Self::Postgres)
    }

    /// MongoDB from `PLATFORM_TEST_MONGODB_URL`; `None` (a skip) when unset.
    pub fn mongodb_from_env() -> Option<Self> {
        platform_core::testkit::server_url("MONGODB").map(Self::Mongodb)
    }

    /// DynamoDB from `PLATFORM_TEST_DYNAMODB_URL` (moto); `None` (a skip) when unset.
    pub fn dynamodb_from_env() -> Option<Self> {
        platform_core::testkit::server_url("DYNAMODB").map(Self::Dynamodb)
    }

    /// DynamoDB from `PLATFORM_TEST_DYNALITE_URL` (dynalite, which validates requests as
    /// AWS does); `None` (a skip) when unset.
    pub fn dynalite_from_env() -> Option<Self> {
        platform_core::testkit::server_url("DYNALITE").map(Self::Dynamodb)
    }
}

#[async_trait::async_trait]
impl Harness for UrlHarness {
    async fn fresh_url(&self, keys: &str) -> Result<String> {
        let name = platform_core::testkit::unique_ident("docs").to_ascii_lowercase().replace('-', "_");
        Ok(match self {
            Self::Memory => format!("memory://{name}?{keys}"),
            Self::Sqlite => {
                let path = std::env::temp_dir().join(format!("{name}.db"));
                format!("sqlite://{}?collection={name}&{keys}", path.display())
            }
            Self::Postgres(base) | Self::Mongodb(base) => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}collection={name}&{keys}")
            }
            Self::Dynamodb(base) => {
                let query = base.split_once('?').map_or("", |(_, q)| q);
                format!("dynamodb://{name}?{query}&create_table=true&allow_scans=true&{keys}")
            }
        })
    }
}

/// Runs every behaviour with `h`.
pub async fn run_all(h: &dyn Harness) {
    use platform_core::run_behaviours;
    crate::docstore_behaviours!(run_behaviours!(h));
}

/// Writes one `#[tokio::test]` per behaviour for a backend:
/// `conformance_tests!(postgres, UrlHarness::postgres_from_env());`
#[macro_export]
macro_rules! conformance_tests {
    ($backend:ident, $harness:expr) => {
        $crate::docstore_behaviours!(platform_core::behaviour_tests!($backend, $crate::testkit, $harness));
    };
}

/// Every behaviour of the suite, listed once. Calls `$then!(…, behaviour, …)`.
#[doc(hidden)]
#[macro_export]
macro_rules! docstore_behaviours {
    ($($then:ident)::+ ! ($($args:tt)*)) => {
        $($then)::+! {
            $($args)*,
            create_refuses_taken_keys_and_makes_up_missing_ones,
            put_writes_regardless_unless_given_a_revision,
            replace_needs_the_document_and_its_revision,
            get_returns_the_fields_asked_with_key_and_revision,
            delete_of_nothing_is_no_error_unless_a_revision_is_given,
            update_sets_unsets_and_increments,
            every_write_makes_a_new_revision,
            action_lists_answer_each_action_at_its_index,
            atomic_writes_are_all_or_nothing,
            queries_filter_by_type_on_dotted_paths,
            queries_order_offset_limit_and_project,
            two_part_keys_tell_documents_apart,
            documents_round_trip_as_json,
            concurrent_writers_over_one_revision_one_wins,
            concurrent_atomic_lists_lose_no_update,
            health_is_a_round_trip_naming_the_server,
            a_closed_collection_refuses
        }
    };
}

async fn fresh(h: &dyn Harness, keys: &str) -> Arc<dyn Collection> {
    crate::open(&h.fresh_url(keys).await.expect("a fresh collection")).await.expect("open")
}

fn doc(v: Value) -> Document {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn revision(o: &Outcome) -> String {
    match o {
        Outcome::Written { revision, .. } => revision.clone(),
        other => panic!("not a write: {other:?}"),
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("an error").kind()
}

/// Create: a taken key is `AlreadyExists`; a missing one-part key is made up; a
/// revision on a new document is invalid; so is a missing part of a two-part key.
pub async fn create_refuses_taken_keys_and_makes_up_missing_ones(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    let o = c.create(doc(json!({"id": "a", "n": 1}))).await.unwrap();
    assert!(matches!(&o, Outcome::Written { key, .. } if key["id"] == "a"), "{o:?}");
    assert_eq!(kind(c.create(doc(json!({"id": "a", "n": 2}))).await), ErrorKind::AlreadyExists);
    assert_eq!(c.get(doc(json!({"id": "a"}))).await.unwrap()["n"], 1, "the first stays");
    let made = c.create(doc(json!({"n": 3}))).await.unwrap();
    let Outcome::Written { key, .. } = made else { panic!("{made:?}") };
    let id = key["id"].as_str().expect("a made-up string key").to_owned();
    assert_eq!(c.get(doc(json!({"id": id}))).await.unwrap()["n"], 3);
    assert_eq!(kind(c.create(doc(json!({"id": "b", "_rev": "x"}))).await), ErrorKind::InvalidInput);
    assert_eq!(kind(c.create(doc(json!({"id": 1.5}))).await), ErrorKind::InvalidInput, "keys are strings or integers");
    assert_eq!(kind(c.create(doc(json!({"id": ""}))).await), ErrorKind::InvalidInput, "an empty key");
    let two = fresh(h, "key=pk&sort_key=sk").await;
    assert_eq!(kind(two.create(doc(json!({"pk": "p"}))).await), ErrorKind::InvalidInput, "half a two-part key");
    // Integer keys are their own: 7 and "7" are two documents.
    c.create(doc(json!({"id": 7, "t": "int"}))).await.unwrap();
    c.create(doc(json!({"id": "7", "t": "str"}))).await.unwrap();
    assert_eq!(c.get(doc(json!({"id": 7}))).await.unwrap()["t"], "int");
    assert_eq!(c.get(doc(json!({"id": "7"}))).await.unwrap()["t"], "str");
}

/// Put: writes whether or not the key exists; with a revision, only over it.
pub async fn put_writes_regardless_unless_given_a_revision(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    let first = c.put(doc(json!({"id": "a", "v": 1}))).await.unwrap();
    c.put(doc(json!({"id": "a", "v": 2}))).await.unwrap();
    let got = c.get(doc(json!({"id": "a"}))).await.unwrap();
    assert_eq!(got["v"], 2);
    assert!(got.get("v1").is_none());
    let stale = doc(json!({"id": "a", "v": 3, "_rev": revision(&first)}));
    assert_eq!(kind(c.put(stale).await), ErrorKind::Conflict);
    let current = got["_rev"].clone();
    c.put(doc(json!({"id": "a", "v": 4, "_rev": current}))).await.unwrap();
    assert_eq!(c.get(doc(json!({"id": "a"}))).await.unwrap()["v"], 4);
    assert_eq!(kind(c.put(doc(json!({"id": "nope", "_rev": "r"}))).await), ErrorKind::NotFound);
    assert_eq!(kind(c.put(doc(json!({"v": 1}))).await), ErrorKind::InvalidInput, "no key");
}

/// Replace: `NotFound` without the document; `Conflict` over another revision; the
/// document is replaced whole.
pub async fn replace_needs_the_document_and_its_revision(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    assert_eq!(kind(c.replace(doc(json!({"id": "a"}))).await), ErrorKind::NotFound);
    let w = c.create(doc(json!({"id": "a", "old": true}))).await.unwrap();
    let r = c.replace(doc(json!({"id": "a", "new": true, "_rev": revision(&w)}))).await.unwrap();
    let got = c.get(doc(json!({"id": "a"}))).await.unwrap();
    assert_eq!((got.get("old"), got["new"].clone()), (None, json!(true)), "replaced whole");
    assert_eq!(got["_rev"], revision(&r));
    assert_eq!(kind(c.replace(doc(json!({"id": "a", "_rev": revision(&w)}))).await), ErrorKind::Conflict);
}

/// Get: the whole document with its revision, or the fields asked with the key and
/// revision; `NotFound`; a key document without the key is invalid.
pub async fn get_returns_the_fields_asked_with_key_and_revision(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    let w = c.create(doc(json!({"id": "a", "name": "Ada", "address": {"city": "London", "zip": "N1"}}))).await.unwrap();
    let all = c.get(doc(json!({"id": "a"}))).await.unwrap();
    assert_eq!(all["address"]["city"], "London");
    assert_eq!(all["_rev"], revision(&w));
    let some = c.get_fields(doc(json!({"id": "a"})), &["address.city"]).await.unwrap();
    assert_eq!(Value::Object(some), json!({"id": "a", "_rev": revision(&w), "address": {"city": "London"}}));
    assert_eq!(kind(c.get(doc(json!({"id": "zz"}))).await), ErrorKind::NotFound);
    assert_eq!(kind(c.get(doc(json!({"name": "Ada"}))).await), ErrorKind::InvalidInput);
    assert_eq!(kind(c.get_fields(doc(json!({"id": "a"})), &["bad path!"]).await), ErrorKind::InvalidInput);
    #[derive(serde::Deserialize)]
    struct Person {
        name: String,
    }
    assert_eq!(c.get_as::<Person>(doc(json!({"id": "a"}))).await.unwrap().name, "Ada");
}

/// Delete: of nothing is fine; with a revision, only that revision (`Conflict`), and
/// only of something (`NotFound`).
pub async fn delete_of_nothing_is_no_error_unless_a_revision_is_given(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    c.delete(doc(json!({"id": "never"}))).await.unwrap();
    assert_eq!(kind(c.delete(doc(json!({"id": "never", "_rev": "r"}))).await), ErrorKind::NotFound);
    let w = c.create(doc(json!({"id": "a"}))).await.unwrap();
    c.put(doc(json!({"id": "a", "v": 2}))).await.unwrap();
    assert_eq!(kind(c.delete(doc(json!({"id": "a", "_rev": revision(&w)}))).await), ErrorKind::Conflict);
    assert!(c.get(doc(json!({"id": "a"}))).await.is_ok(), "still there");
    c.delete(doc(json!({"id": "a"}))).await.unwrap();
    assert_eq!(kind(c.get(doc(json!({"id": "a"}))).await), ErrorKind::NotFound);
}

/// Update: set (nested, making objects), unset, increment (integers stay integers,
/// floats add, a missing field counts as 0, a non-number is invalid); `NotFound`; the
/// key and revision fields cannot change.
pub async fn update_sets_unsets_and_increments(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    let p = |s: &str| FieldPath::parse(s).unwrap();
    assert_eq!(kind(c.update(doc(json!({"id": "a"})), vec![Mod::Unset(p("x"))]).await), ErrorKind::NotFound);
    c.create(doc(json!({"id": "a", "n": 1, "f": 1.5, "gone": 1, "s": "text"}))).await.unwrap();
    let mods = vec![
        Mod::Set(p("a.b.c"), json!("deep")),
        Mod::Unset(p("gone")),
        Mod::Increment(p("n"), 2.into()),
        Mod::Increment(p("f"), serde_json::Number::from_f64(0.25).unwrap()),
        Mod::Increment(p("fresh"), 5.into()),
    ];
    c.update(doc(json!({"id": "a"})), mods).await.unwrap();
    let got = c.get(doc(json!({"id": "a"}))).await.unwrap();
    assert_eq!(got["a"], json!({"b": {"c": "deep"}}));
    assert!(got.get("gone").is_none());
    assert_eq!(got["n"], json!(3));
    assert!(got["n"].is_i64(), "an integer stays one");
    assert_eq!(got["f"], json!(1.75));
    assert_eq!(got["fresh"], json!(5));
    let bad = c.update(doc(json!({"id": "a"})), vec![Mod::Increment(p("s"), 1.into())]).await;
    assert_eq!(kind(bad), ErrorKind::InvalidInput);
    assert_eq!(c.get(doc(json!({"id": "a"}))).await.unwrap()["n"], 3, "a failed update changes nothing");
    let key_change = c.update(doc(json!({"id": "a"})), vec![Mod::Set(p("id"), json!("b"))]).await;
    assert_eq!(kind(key_change), ErrorKind::InvalidInput);
    let stale = c.update(doc(json!({"id": "a", "_rev": "old"})), vec![Mod::Set(p("x"), json!(1))]).await;
    assert_eq!(kind(stale), ErrorKind::Conflict);
}

/// Every write (create, put, replace, update) gives a new revision, which `get` shows;
/// a write over an older one is refused.
pub async fn every_write_makes_a_new_revision(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    let mut seen = std::collections::HashSet::new();
    let key = || doc(json!({"id": "a"}));
    let r1 = revision(&c.create(doc(json!({"id": "a"}))).await.unwrap());
    let r2 = revision(&c.put(doc(json!({"id": "a", "x": 1}))).await.unwrap());
    let r3 = revision(&c.replace(doc(json!({"id": "a", "x": 2}))).await.unwrap());
    let r4 = revision(&c.update(key(), vec![Mod::Set(FieldPath::parse("x").unwrap(), json!(3))]).await.unwrap());
    for r in [&r1, &r2, &r3, &r4] {
        assert!(!r.is_empty() && seen.insert(r.clone()), "revisions differ: {r}");
    }
    assert_eq!(c.get(key()).await.unwrap()["_rev"], r4);
    for old in [r1, r2, r3] {
        assert_eq!(kind(c.replace(doc(json!({"id": "a", "_rev": old}))).await), ErrorKind::Conflict);
    }
}

/// An action list answers every action at its index; failures stop nothing else; two
/// actions on one key happen in order.
pub async fn action_lists_answer_each_action_at_its_index(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    c.create(doc(json!({"id": "taken"}))).await.unwrap();
    let results = c
        .run(vec![
            Action::Create(doc(json!({"id": "a", "n": 1}))),
            Action::Create(doc(json!({"id": "taken"}))),
            Action::Update {
                key: doc(json!({"id": "a"})),
                mods: vec![Mod::Increment(FieldPath::parse("n").unwrap(), 1.into())],
            },
            Action::Get { key: doc(json!({"id": "a"})), fields: vec![] },
            Action::Get { key: doc(json!({"id": "missing"})), fields: vec![] },
            Action::Put(doc(json!({"no_key": true}))),
            Action::Delete(doc(json!({"id": "taken"}))),
        ])
        .await;
    assert_eq!(results.len(), 7);
    assert!(results[0].is_ok());
    assert_eq!(results[1].as_ref().unwrap_err().kind(), ErrorKind::AlreadyExists);
    assert!(results[2].is_ok());
    match &results[3] {
        Ok(Outcome::Got(d)) => assert_eq!(d["n"], 2, "the update before it happened first"),
        other => panic!("{other:?}"),
    }
    assert_eq!(results[4].as_ref().unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(results[5].as_ref().unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(results[6].as_ref().unwrap(), &Outcome::Deleted);
    assert_eq!(kind(c.get(doc(json!({"id": "taken"}))).await), ErrorKind::NotFound);
}

/// Atomic writes: every write or none, as the backend's capability says; beyond it,
/// `Unsupported`.
pub async fn atomic_writes_are_all_or_nothing(h: &dyn Harness) {
    let c = fresh(h, "key=pk&sort_key=sk").await;
    let k = |p: &str, s: i64| doc(json!({"pk": p, "sk": s}));
    c.create(doc(json!({"pk": "p", "sk": 0, "n": 0}))).await.unwrap();
    let failing =
        vec![Action::Create(doc(json!({"pk": "p", "sk": 1}))), Action::Create(doc(json!({"pk": "p", "sk": 0})))];
    match c.capabilities().atomic_writes {
        AtomicWrites::None => {
            assert_eq!(kind(c.run_atomic(failing).await), ErrorKind::Unsupported);
            return;
        }
        AtomicWrites::SinglePartition | AtomicWrites::Any => {}
    }
    let err = c.run_atomic(failing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(err.details().iter().any(|d| d.field == "action" && d.reason == "1"), "names the action: {err:?}");
    assert_eq!(kind(c.get(k("p", 1)).await), ErrorKind::NotFound, "the first write was undone");
    let done = c
        .run_atomic(vec![
            Action::Create(doc(json!({"pk": "p", "sk": 1}))),
            Action::Update { key: k("p", 0), mods: vec![Mod::Increment(FieldPath::parse("n").unwrap(), 1.into())] },
        ])
        .await
        .unwrap();
    assert_eq!(done.len(), 2);
    assert_eq!(c.get(k("p", 0)).await.unwrap()["n"], 1);
    let across =
        vec![Action::Create(doc(json!({"pk": "q", "sk": 1}))), Action::Create(doc(json!({"pk": "r", "sk": 1})))];
    match c.capabilities().atomic_writes {
        AtomicWrites::SinglePartition => assert_eq!(kind(c.run_atomic(across).await), ErrorKind::Unsupported),
        _ => assert_eq!(c.run_atomic(across).await.unwrap().len(), 2),
    }
}

async fn people(h: &dyn Harness) -> Arc<dyn Collection> {
    let c = fresh(h, "key=id").await;
    let rows = [
        json!({"id": "1", "name": "Ada", "age": 36, "score": 9.5, "admin": true, "address": {"city": "London"}}),
        json!({"id": "2", "name": "Grace", "age": 85, "score": 7.25, "admin": false, "address": {"city": "New York"}}),
        json!({"id": "3", "name": "Alan", "age": 41, "score": 8.0, "admin": false, "address": {"city": "London"}}),
        json!({"id": "4", "name": "Barbara", "age": 36, "admin": true, "address": {"city": "Boston"}}),
        json!({"id": "5", "name": "Édith", "age": "unknown", "address": {"city": "Paris"}}),
    ];
    let results = c.run(rows.into_iter().map(|r| Action::Create(doc(r))).collect()).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    c
}

fn ids(docs: &[Document]) -> Vec<String> {
    docs.iter().map(|d| d["id"].as_str().unwrap_or_default().to_owned()).collect()
}

async fn sorted_ids(c: &dyn Collection, q: Query) -> Vec<String> {
    let mut got = ids(&c.query(&q).await.unwrap());
    got.sort();
    got
}

/// Filters: `= < <= > >= in not-in` on top-level and dotted fields; each matches only
/// values of its own JSON type (the string "unknown" is no age; a missing field matches
/// nothing, `not-in` neither); numbers compare as numbers, integers and floats alike.
pub async fn queries_filter_by_type_on_dotted_paths(h: &dyn Harness) {
    let c = people(h).await;
    let c = c.as_ref();
    let q = || Query::new();
    assert_eq!(sorted_ids(c, q().filter("age", Op::Eq, 36).unwrap()).await, ["1", "4"]);
    assert_eq!(sorted_ids(c, q().filter("age", Op::Lt, 41).unwrap()).await, ["1", "4"]);
    assert_eq!(sorted_ids(c, q().filter("age", Op::Le, 41).unwrap()).await, ["1", "3", "4"]);
    assert_eq!(sorted_ids(c, q().filter("age", Op::Gt, 41).unwrap()).await, ["2"]);
    assert_eq!(sorted_ids(c, q().filter("age", Op::Ge, 41.0).unwrap()).await, ["2", "3"]);
    assert_eq!(sorted_ids(c, q().filter("score", Op::Gt, 8).unwrap()).await, ["1"]);
    assert_eq!(sorted_ids(c, q().filter("address.city", Op::Eq, "London").unwrap()).await, ["1", "3"]);
    assert_eq!(sorted_ids(c, q().filter("name", Op::Ge, "B").unwrap()).await, ["2", "4", "5"], "bytes: É after B");
    assert_eq!(sorted_ids(c, q().filter("name", Op::Lt, "B").unwrap()).await, ["1", "3"]);
    assert_eq!(sorted_ids(c, q().filter("age", Op::Eq, "unknown").unwrap()).await, ["5"]);
    assert_eq!(sorted_ids(c, q().filter("admin", Op::Eq, true).unwrap()).await, ["1", "4"]);
    assert_eq!(sorted_ids(c, q().filter("age", Op::In, json!([41, 85])).unwrap()).await, ["2", "3"]);
    assert_eq!(sorted_ids(c, q().filter("age", Op::NotIn, json!([36])).unwrap()).await, ["2", "3"], "no string ages");
    assert_eq!(
        sorted_ids(c, q().filter("score", Op::NotIn, json!([9.5])).unwrap()).await,
        ["2", "3"],
        "no missing scores"
    );
    let both = q().filter("address.city", Op::Eq, "London").unwrap().filter("age", Op::Gt, 40).unwrap();
    assert_eq!(sorted_ids(c, both).await, ["3"]);
    assert!(c.query(&q().filter("nothing.here", Op::Eq, 1).unwrap()).await.unwrap().is_empty());
    for bad in [
        q().filter("age", Op::Lt, true).unwrap(),
        q().filter("age", Op::Eq, json!({"a": 1})).unwrap(),
        q().filter("age", Op::In, json!([])).unwrap(),
        q().filter("age", Op::In, json!([1, "a"])).unwrap(),
        q().filter("age", Op::In, 3).unwrap(),
    ] {
        assert_eq!(kind(c.query(&bad).await), ErrorKind::InvalidInput, "{bad:?}");
    }
    assert!(Query::new().filter("a b", Op::Eq, 1).is_err(), "not a field path");
}

/// Order (ascending, descending, by a dotted path, documents without the field first
/// ascending), offset, limit and projection; a plan that says whether it scans.
pub async fn queries_order_offset_limit_and_project(h: &dyn Harness) {
    let c = people(h).await;
    let numbers = Query::new().filter("age", Op::Ge, 0).unwrap();
    let asc = c.query(&numbers.clone().order_by("age", Direction::Ascending).unwrap()).await.unwrap();
    let ages: Vec<i64> = asc.iter().map(|d| d["age"].as_i64().unwrap()).collect();
    assert_eq!(ages, [36, 36, 41, 85]);
    let desc = c.query(&numbers.clone().order_by("age", Direction::Descending).unwrap()).await.unwrap();
    assert_eq!(ids(&desc)[..2], ["2", "3"]);
    let by_name = c.query(&Query::new().order_by("name", Direction::Ascending).unwrap()).await.unwrap();
    assert_eq!(ids(&by_name), ["1", "3", "4", "2", "5"], "byte order: Ada Alan Barbara Grace Édith");
    let by_city = c.query(&Query::new().order_by("address.city", Direction::Descending).unwrap()).await.unwrap();
    assert_eq!(by_city[0]["address"]["city"], "Paris");
    let with_missing = c.query(&Query::new().order_by("score", Direction::Ascending).unwrap()).await.unwrap();
    let first_two: std::collections::BTreeSet<String> = ids(&with_missing)[..2].iter().cloned().collect();
    assert_eq!(first_two, ["4".to_owned(), "5".to_owned()].into(), "without a score first");
    assert_eq!(ids(&with_missing)[2..], ["2", "3", "1"]);
    let page = Query::new().order_by("name", Direction::Ascending).unwrap().offset(1).limit(2);
    assert_eq!(ids(&c.query(&page).await.unwrap()), ["3", "4"]);
    assert!(c.query(&Query::new().offset(10)).await.unwrap().is_empty());
    assert_eq!(c.query(&Query::new().limit(0)).await.unwrap().len(), 0);
    let projected =
        c.query(&Query::new().filter("id", Op::Eq, "1").unwrap().fields(&["address.city"]).unwrap()).await.unwrap();
    let mut keys: Vec<&str> = projected[0].keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["_rev", "address", "id"]);
    assert_eq!(projected[0]["address"], json!({"city": "London"}));
    let plan = c.plan(&numbers).await.unwrap();
    assert!(!plan.detail.is_empty());
    assert!(plan.scan, "a filter on a field with no index reads everything: {}", plan.detail);
}

/// Two-part keys: one partition holds several documents told apart by the sort key.
pub async fn two_part_keys_tell_documents_apart(h: &dyn Harness) {
    let c = fresh(h, "key=pk&sort_key=sk").await;
    for (p, s, v) in [("a", "1", 1), ("a", "2", 2), ("b", "1", 3)] {
        c.create(doc(json!({"pk": p, "sk": s, "v": v}))).await.unwrap();
    }
    assert_eq!(c.get(doc(json!({"pk": "a", "sk": "2"}))).await.unwrap()["v"], 2);
    assert_eq!(c.get(doc(json!({"pk": "b", "sk": "1"}))).await.unwrap()["v"], 3);
    assert_eq!(kind(c.create(doc(json!({"pk": "a", "sk": "1"}))).await), ErrorKind::AlreadyExists);
    c.delete(doc(json!({"pk": "a", "sk": "1"}))).await.unwrap();
    assert_eq!(c.get(doc(json!({"pk": "a", "sk": "2"}))).await.unwrap()["v"], 2, "its sibling stays");
    let in_a = c.query(&Query::new().filter("pk", Op::Eq, "a").unwrap()).await.unwrap();
    assert_eq!(in_a.len(), 1);
    assert_eq!(kind(c.get(doc(json!({"pk": "a"}))).await), ErrorKind::InvalidInput, "half a key");
}

/// What is stored comes back as it went in: Unicode, nested arrays and objects, large
/// integers, floats, booleans and nulls.
pub async fn documents_round_trip_as_json(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    let body = json!({
        "id": "rt", "text": "naïve 日本語 🚀 \"quoted\" \\ back", "big": 9_007_199_254_740_993_i64,
        "neg": -42, "float": 0.1, "yes": true, "nothing": null,
        "list": [1, "two", [3], {"four": 4}], "nested": {"a": {"b": {"c": []}}}
    });
    c.create(doc(body.clone())).await.unwrap();
    let mut got = c.get(doc(json!({"id": "rt"}))).await.unwrap();
    got.remove("_rev");
    assert_eq!(Value::Object(got), body);
}

/// Two writers over the same revision at once: exactly one wins; the other is a
/// `Conflict` and changes nothing.
pub async fn concurrent_writers_over_one_revision_one_wins(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    let w = c.create(doc(json!({"id": "a", "by": "nobody"}))).await.unwrap();
    let rev = revision(&w);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (c, rev) = (Arc::clone(&c), rev.clone());
        tasks.push(tokio::spawn(async move { c.replace(doc(json!({"id": "a", "by": i, "_rev": rev}))).await }));
    }
    let mut won = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.expect("task") {
            Ok(_) => won.push(i),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(won.len(), 1, "one winner: {won:?}");
    assert_eq!(c.get(doc(json!({"id": "a"}))).await.unwrap()["by"], json!(won[0]));
}

/// Atomic lists racing over one document lose no update: each either commits (its
/// increment counts) or fails whole with a retryable error (a write conflict), and
/// retried it commits.
pub async fn concurrent_atomic_lists_lose_no_update(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    if c.capabilities().atomic_writes == AtomicWrites::None {
        return;
    }
    c.create(doc(json!({"id": "counter", "n": 0}))).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            let list = || {
                vec![
                    Action::Update {
                        key: doc(json!({"id": "counter"})),
                        mods: vec![Mod::Increment(FieldPath::parse("n").unwrap(), 1.into())],
                    },
                    Action::Put(doc(json!({"id": format!("by-{i}")}))),
                ]
            };
            let mut conflicts = 0;
            loop {
                match c.run_atomic(list()).await {
                    Ok(_) => return conflicts,
                    Err(e) => {
                        assert!(e.is_retryable(), "a failed atomic list is retryable: {e}");
                        conflicts += 1;
                        assert!(conflicts < 200, "no progress: {e}");
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(c.get(doc(json!({"id": "counter"}))).await.unwrap()["n"], 8, "every committed increment counted once");
    for i in 0..8 {
        assert!(c.get(doc(json!({"id": format!("by-{i}")}))).await.is_ok(), "list {i}'s other write");
    }
}

/// The collection is a health check for `/up`: named after its backend, a real round
/// trip that names the server's version; once closed, it reports the collection down.
pub async fn health_is_a_round_trip_naming_the_server(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    let check: Arc<dyn platform_core::HealthCheck> = Arc::clone(&c) as _;
    assert!(check.name().starts_with("docstore:"), "{}", check.name());
    let outcome = check.check().await.expect("healthy");
    assert!(outcome.version.as_deref().is_some_and(|v| !v.is_empty()), "{outcome:?}");
    c.close().await;
    assert_eq!(check.check().await.expect_err("closed").kind(), ErrorKind::Unavailable);
}

/// After `close`, every call is `Unavailable`, stamped with the backend.
pub async fn a_closed_collection_refuses(h: &dyn Harness) {
    let c = fresh(h, "key=id").await;
    c.create(doc(json!({"id": "a"}))).await.unwrap();
    c.close().await;
    let err = c.get(doc(json!({"id": "a"}))).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(!err.backend().is_empty(), "{err:?}");
    assert_eq!(kind(c.query(&Query::new()).await), ErrorKind::Unavailable);
    c.close().await;
}
