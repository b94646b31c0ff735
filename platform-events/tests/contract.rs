//! The contract-first gate: the AsyncAPI document the registry writes must equal the
//! committed `tests/asyncapi.json`; versions decode through upcasters; CloudEvents
//! round-trip into typed events.

use platform_core::{Envelope, Event};
use platform_events::EventRegistry;
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct TodoCreated {
    id: u64,
    title: String,
    tags: Vec<Tag>,
}

#[derive(Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Tag {
    name: String,
}

impl Event for TodoCreated {
    const TYPE: &'static str = "todo.created";
    const VERSION: u32 = 2;
}

#[derive(Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct TodoDone {
    id: u64,
}

impl Event for TodoDone {
    const TYPE: &'static str = "todo.done";
    const VERSION: u32 = 1;
}

fn registry() -> EventRegistry {
    let mut r = EventRegistry::new("todo service", "1.0.0");
    r.register::<TodoCreated>("todo.events").expect("register");
    r.register::<TodoDone>("todo.events").expect("register");
    // v1 had neither title nor tags.
    r.upcaster("todo.created", 1, |mut v| {
        v["title"] = "untitled".into();
        v["tags"] = serde_json::json!([]);
        Ok(v)
    });
    r
}

#[test]
fn the_committed_asyncapi_document_matches_the_registry() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/asyncapi.json");
    registry().check_document(&path).expect("the committed document is current");
    let doc = registry().asyncapi();
    assert_eq!(doc["asyncapi"], "3.0.0");
    let schema = &doc["components"]["messages"]["todo.created.v2"]["payload"]["schema"];
    assert_eq!(schema["properties"]["event_type"]["const"], "todo.created");
    let tags = &schema["properties"]["payload"]["properties"]["tags"]["items"]["$ref"];
    assert_eq!(tags, "#/components/schemas/todo.created.v2.Tag", "references point into the document");
    assert!(doc["components"]["schemas"]["todo.created.v2.Tag"].is_object());
    assert!(doc["channels"]["todo.events"]["messages"]["todo.done.v1"].is_object());
}

#[test]
fn a_drifted_document_is_refused_naming_the_line() {
    let path = std::env::temp_dir().join(format!("asyncapi-{}.json", platform_core::testkit::unique_name("drift")));
    let mut old = EventRegistry::new("todo service", "1.0.0");
    old.register::<TodoDone>("todo.events").expect("register");
    std::fs::write(&path, serde_json::to_string_pretty(&old.asyncapi()).expect("json") + "\n").expect("write");
    old.check_document(&path).expect("same registry, same document");
    let err = registry().check_document(&path).expect_err("a new type drifts");
    std::fs::remove_file(&path).expect("remove");
    assert!(err.is_conflict() && err.to_string().contains("line"), "{err}");
}

#[test]
fn older_versions_are_upcast_and_unknown_ones_refused() {
    let r = registry();
    let v1 = Envelope::raw("todo.created", "1", serde_json::json!({ "id": 7 }));
    r.check(&v1).expect("v1 can be read");
    let got = r.decode::<TodoCreated>(v1).expect("upcast");
    assert_eq!(got.payload, TodoCreated { id: 7, title: "untitled".into(), tags: vec![] });
    assert_eq!(got.version, "2");

    let unknown = Envelope::raw("todo.deleted", "1", serde_json::json!({ "id": 7 }));
    let err = r.check(&unknown).expect_err("unknown type");
    assert!(err.is_invalid_input() && err.to_string().contains("not a registered event type"), "{err}");
    let newer = Envelope::raw("todo.created", "3", serde_json::json!({ "id": 7 }));
    assert!(r.check(&newer).expect_err("newer").to_string().contains("newer"));
    let misfit = Envelope::raw("todo.created", "2", serde_json::json!({ "id": "seven" }));
    assert!(r.decode::<TodoCreated>(misfit).expect_err("bad payload").is_invalid_input());
    let mut lonely = EventRegistry::new("t", "1");
    lonely.register::<TodoCreated>("todo.events").expect("register");
    let v1 = Envelope::raw("todo.created", "1", serde_json::json!({ "id": 7 }));
    assert!(lonely.check(&v1).expect_err("no upcaster").to_string().contains("no upcaster from v1"));
}

#[test]
fn a_cloudevent_round_trips_into_a_typed_event() {
    let sent = Envelope::new(TodoDone { id: 9 }).with_source("urn:todo").into_json().expect("json");
    let ce = sent.to_cloudevent();
    assert_eq!(ce["type"], "todo.done.v1");
    let back = Envelope::from_cloudevent(&ce).expect("parse");
    assert_eq!(back, sent);
    let typed = registry().decode::<TodoDone>(back).expect("decode");
    assert_eq!(typed.payload, TodoDone { id: 9 });
}
