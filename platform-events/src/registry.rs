//! Typed, versioned events: a registry by full name (`todo.created.v1`), upcasters
//! that turn an older version into the newer one a consumer knows, a JSON Schema per
//! type, and the AsyncAPI 3.0 document of topics and messages, checked against the
//! committed copy so that a contract cannot drift unnoticed.
//!
//! ```
//! use platform_events::registry::EventRegistry;
//! use platform_core::{Envelope, Event};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, schemars::JsonSchema)]
//! struct TodoCreated { id: u64, title: String }
//! impl Event for TodoCreated { const TYPE: &'static str = "todo.created"; const VERSION: u32 = 2; }
//!
//! let mut registry = EventRegistry::new("todo service", "1.0.0");
//! registry.register::<TodoCreated>("todo.events")?;
//! // Version 1 had no title.
//! registry.upcaster("todo.created", 1, |mut v| {
//!     v["title"] = "untitled".into();
//!     Ok(v)
//! });
//! let old = Envelope::raw("todo.created", "1", serde_json::json!({ "id": 7 }));
//! let event = registry.decode::<TodoCreated>(old)?;
//! assert_eq!((event.payload.id, event.payload.title.as_str(), event.version.as_str()), (7, "untitled", "2"));
//! # Ok::<_, platform_core::Error>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use platform_core::{Envelope, Error, ErrorKind, Event, Result};
use schemars::JsonSchema;
use serde_json::{Map, Value, json};

use crate::channel::validate_channel;

/// Turns a payload of one version into the next.
type Upcaster = Arc<dyn Fn(Value) -> Result<Value> + Send + Sync>;

/// The event types a service knows, with their topics, schemas and upcasters.
#[derive(Default)]
pub struct EventRegistry {
    title: String,
    version: String,
    types: BTreeMap<String, Registered>,
    upcasters: BTreeMap<(String, u32), Upcaster>,
}

struct Registered {
    event_type: &'static str,
    version: u32,
    topic: String,
    schema: Value,
}

impl fmt::Debug for EventRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRegistry")
            .field("title", &self.title)
            .field("types", &self.types.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn unknown(env: &Envelope<Value>, why: &str) -> Error {
    Error::invalid_input(format!("event {}: {why}", env.full_type())).with_detail("event_type", why.to_owned())
}

impl EventRegistry {
    /// An empty registry for the service `title` at `version` (both go into the
    /// AsyncAPI document's `info`).
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self { title: title.into(), version: version.into(), ..Self::default() }
    }

    /// Registers `E`, published on `topic`. A full name registered twice is a
    /// `Conflict`; a bad topic name `InvalidInput`.
    pub fn register<E: Event + JsonSchema>(&mut self, topic: &str) -> Result<&mut Self> {
        validate_channel(topic)?;
        let name = E::full_name();
        if self.types.contains_key(&name) {
            return Err(Error::conflict(format!("event type {name} is registered twice")));
        }
        let schema = schemars::generate::SchemaSettings::draft2020_12().into_generator().into_root_schema_for::<E>();
        let registered =
            Registered { event_type: E::TYPE, version: E::VERSION, topic: topic.to_owned(), schema: schema.to_value() };
        self.types.insert(name, registered);
        Ok(self)
    }

    /// Registers how a payload of `event_type` at version `from` becomes version
    /// `from + 1`. Decoding chains them up to the version the consumer asks for.
    pub fn upcaster(
        &mut self,
        event_type: &str,
        from: u32,
        upcast: impl Fn(Value) -> Result<Value> + Send + Sync + 'static,
    ) -> &mut Self {
        self.upcasters.insert((event_type.to_owned(), from), Arc::new(upcast));
        self
    }

    /// Whether `env` is a registered type at a version this registry can read
    /// (registered, or upcast to a registered one).
    pub fn check(&self, env: &Envelope<Value>) -> Result<()> {
        let version: u32 = env.version.parse().map_err(|_| unknown(env, "has no numeric version"))?;
        let newest = self.types.values().filter(|r| r.event_type == env.event_type).map(|r| r.version).max();
        let Some(newest) = newest else { return Err(unknown(env, "is not a registered event type")) };
        if version > newest {
            return Err(unknown(env, &format!("is newer than the newest version this service knows (v{newest})")));
        }
        if let Some(missing) = (version..newest).find(|v| !self.upcasters.contains_key(&(env.event_type.clone(), *v))) {
            return Err(unknown(env, &format!("has no upcaster from v{missing} to v{}", missing + 1)));
        }
        Ok(())
    }

    /// Decodes `env` as `E`, upcasting an older version first. An unregistered type,
    /// a version newer than `E`'s or a missing upcaster is `InvalidInput` with the
    /// reason (a consumer dead-letters such an event); so is a payload that does not fit.
    pub fn decode<E: Event>(&self, mut env: Envelope<Value>) -> Result<Envelope<E>> {
        if env.event_type != E::TYPE {
            return Err(unknown(&env, &format!("is not {}", E::full_name())));
        }
        if !self.types.contains_key(&E::full_name()) {
            return Err(unknown(&env, &format!("{} is not registered", E::full_name())));
        }
        let mut version: u32 = env.version.parse().map_err(|_| unknown(&env, "has no numeric version"))?;
        if version > E::VERSION {
            return Err(unknown(&env, &format!("is newer than {}", E::full_name())));
        }
        while version < E::VERSION {
            let Some(upcast) = self.upcasters.get(&(env.event_type.clone(), version)) else {
                return Err(unknown(&env, &format!("has no upcaster from v{version} to v{}", version + 1)));
            };
            env.payload = upcast(std::mem::take(&mut env.payload))?;
            version += 1;
        }
        env.version = version.to_string();
        env.decode::<E>()
    }

    /// The AsyncAPI 3.0 document: a channel per topic, a message per registered type
    /// (the envelope, its payload the type's JSON Schema, draft 2020-12).
    pub fn asyncapi(&self) -> Value {
        let mut channels = Map::new();
        let mut messages = Map::new();
        let mut schemas = Map::new();
        for (name, r) in &self.types {
            let key = r.topic.replace(':', "_");
            let channel = channels.entry(key).or_insert_with(|| json!({ "address": r.topic, "messages": {} }));
            channel["messages"][name.as_str()] = json!({ "$ref": format!("#/components/messages/{name}") });
            let (schema, defs) = envelope_schema(name, r);
            schemas.extend(defs);
            messages.insert(
                name.clone(),
                json!({
                    "name": name,
                    "title": format!("{} v{}", r.event_type, r.version),
                    "contentType": "application/json",
                    "payload": {
                        "schemaFormat": "application/schema+json;version=draft-2020-12",
                        "schema": schema,
                    },
                }),
            );
        }
        // Keys in order, so the document is the same text in every build.
        sorted(json!({
            "asyncapi": "3.0.0",
            "info": { "title": self.title, "version": self.version },
            "defaultContentType": "application/json",
            "channels": channels,
            "components": { "messages": messages, "schemas": schemas },
        }))
    }

    /// Compares [`asyncapi`](Self::asyncapi) with the committed document at `path`:
    /// `Conflict` naming the first line that differs. With `PLATFORM_WRITE_CONTRACTS=1`
    /// it writes the document instead (to commit after a deliberate change).
    pub fn check_document(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut current = serde_json::to_string_pretty(&self.asyncapi())?;
        current.push('\n');
        if std::env::var("PLATFORM_WRITE_CONTRACTS").is_ok_and(|v| v == "1") {
            return std::fs::write(path, &current)
                .map_err(|e| Error::new(ErrorKind::Unavailable, format!("writing {}: {e}", path.display())));
        }
        let committed = std::fs::read_to_string(path).map_err(|e| {
            Error::not_found(format!("{}: {e} (write it with PLATFORM_WRITE_CONTRACTS=1)", path.display()))
        })?;
        if committed == current {
            return Ok(());
        }
        let (line, (old, new)) = committed
            .lines()
            .chain(std::iter::repeat(""))
            .zip(current.lines().chain(std::iter::repeat("")))
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .unwrap_or((0, ("", "")));
        Err(Error::conflict(format!(
            "the event contract drifted from {} at line {}: committed {old:?}, now {new:?} \
             (rerun with PLATFORM_WRITE_CONTRACTS=1 and commit the document if the change is deliberate)",
            path.display(),
            line + 1
        )))
    }
}

/// `v` with every object's keys in order, whatever order serde_json keeps (a dependency
/// elsewhere in a build may turn on its `preserve_order`): a committed document must
/// not change with the build it was checked in.
fn sorted(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// The envelope as a JSON Schema whose `payload` is the event's schema, and the event's
/// nested types (`$defs`) as components named `<full name>.<type>`: references in an
/// AsyncAPI document point into the document, so `#/$defs/Tag` becomes
/// `#/components/schemas/todo.created.v2.Tag`.
fn envelope_schema(name: &str, r: &Registered) -> (Value, Map<String, Value>) {
    let mut payload = r.schema.clone();
    let defs = payload.as_object_mut().and_then(|o| {
        o.remove("$schema");
        o.remove("$defs")
    });
    let mut components = Map::new();
    if let Some(Value::Object(defs)) = defs {
        for (def, mut schema) in defs {
            point_refs_at_components(name, &mut schema);
            components.insert(format!("{name}.{def}"), schema);
        }
    }
    point_refs_at_components(name, &mut payload);
    let schema = json!({
        "type": "object",
        "required": ["event_id", "event_type", "version", "occurred_at", "correlation_id", "payload"],
        "properties": {
            "event_id": { "type": "string", "format": "uuid" },
            "event_type": { "const": r.event_type },
            "version": { "const": r.version.to_string() },
            "occurred_at": { "type": "string", "format": "date-time" },
            "correlation_id": { "type": "string" },
            "causation_id": { "type": ["string", "null"], "format": "uuid" },
            "tenant_id": { "type": ["string", "null"] },
            "traceparent": { "type": "string" },
            "source": { "type": "string" },
            "extensions": { "type": "object" },
            "payload": payload,
        },
    });
    (schema, components)
}

/// Rewrites every `"$ref": "#/$defs/X"` under `v` to the component of `name`.
fn point_refs_at_components(name: &str, v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, child) in o.iter_mut() {
                match child {
                    Value::String(r) if k == "$ref" => {
                        if let Some(def) = r.strip_prefix("#/$defs/") {
                            *r = format!("#/components/schemas/{name}.{def}");
                        }
                    }
                    _ => point_refs_at_components(name, child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| point_refs_at_components(name, i)),
        _ => {}
    }
}
