//! The event envelope, typed events, and lossless CloudEvents 1.0 conversion.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{CorrelationId, Error, Result};

/// A typed event: its name and version travel with it.
///
/// ```
/// use platform_core::{Envelope, Event};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct TodoCreated { id: u64 }
/// impl Event for TodoCreated {
///     const TYPE: &'static str = "todo.created";
///     const VERSION: u32 = 1;
/// }
/// assert_eq!(TodoCreated::full_name(), "todo.created.v1");
/// let env = Envelope::new(TodoCreated { id: 7 });
/// assert_eq!(env.event_type, "todo.created");
/// assert_eq!(env.version, "1");
/// ```
pub trait Event: Serialize + DeserializeOwned {
    /// The event type without version (`todo.created`).
    const TYPE: &'static str;
    /// The schema version (`1`).
    const VERSION: u32;

    /// The full, versioned name (`todo.created.v1`).
    fn full_name() -> String {
        format!("{}.v{}", Self::TYPE, Self::VERSION)
    }
}

/// The CloudEvents `source` used when an envelope names none; it maps back to `None`.
pub const DEFAULT_SOURCE: &str = "urn:platform";

/// An event with its metadata. `T` is the payload; `Envelope` (with `serde_json::Value`)
/// is the untyped form that travels between services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Envelope<T = Value> {
    /// Unique id (UUID v7).
    pub event_id: Uuid,
    /// The event type without version (`todo.created`).
    pub event_type: String,
    /// The schema version (`"1"`); empty for an unversioned foreign event.
    pub version: String,
    /// When it happened (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The correlation id of the request that caused it.
    pub correlation_id: CorrelationId,
    /// The id of the event or command that caused it.
    pub causation_id: Option<Uuid>,
    /// The tenant it belongs to.
    pub tenant_id: Option<String>,
    /// The W3C trace context, when the event was emitted inside a trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Where it came from (a URI reference, as CloudEvents `source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Further CloudEvents attributes (`subject`, extensions), kept for a lossless round trip.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extensions: BTreeMap<String, Value>,
    /// The event itself.
    pub payload: T,
}

impl<E: Event> Envelope<E> {
    /// Wraps `event` with a fresh id, the current time and the current correlation id.
    pub fn new(event: E) -> Self {
        Self::raw(E::TYPE, E::VERSION.to_string(), event)
    }

    /// The untyped form, payload as JSON.
    pub fn into_json(self) -> Result<Envelope<Value>> {
        let payload = serde_json::to_value(&self.payload)?;
        Ok(self.map_payload(payload))
    }
}

impl<T> Envelope<T> {
    /// An envelope with explicit type and version.
    pub fn raw(event_type: impl Into<String>, version: impl Into<String>, payload: T) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            version: version.into(),
            occurred_at: OffsetDateTime::now_utc(),
            correlation_id: CorrelationId::current_or_new(),
            causation_id: None,
            tenant_id: None,
            traceparent: crate::correlation::current_traceparent(),
            source: None,
            extensions: BTreeMap::new(),
            payload,
        }
    }

    /// The full, versioned name (`todo.created.v1`), or the bare type when unversioned.
    pub fn full_type(&self) -> String {
        if self.version.is_empty() { self.event_type.clone() } else { format!("{}.v{}", self.event_type, self.version) }
    }

    /// Sets the causation id.
    #[must_use]
    pub fn caused_by(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the tenant.
    #[must_use]
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_correlation_id(mut self, id: CorrelationId) -> Self {
        self.correlation_id = id;
        self
    }

    /// Sets the source URI reference.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    fn map_payload<U>(self, payload: U) -> Envelope<U> {
        Envelope {
            event_id: self.event_id,
            event_type: self.event_type,
            version: self.version,
            occurred_at: self.occurred_at,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            tenant_id: self.tenant_id,
            traceparent: self.traceparent,
            source: self.source,
            extensions: self.extensions,
            payload,
        }
    }
}

impl Envelope<Value> {
    /// Decodes the payload as `E`; the type and version must match `E`'s.
    pub fn decode<E: Event>(self) -> Result<Envelope<E>> {
        if self.event_type != E::TYPE || self.version != E::VERSION.to_string() {
            return Err(Error::invalid_input(format!("event is {}, expected {}", self.full_type(), E::full_name())));
        }
        let payload = serde_json::from_value(self.payload.clone())?;
        Ok(self.map_payload(payload))
    }

    /// Parses envelope JSON.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        Ok(serde_json::from_slice(json)?)
    }

    /// Serializes to envelope JSON.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Converts to CloudEvents 1.0 structured JSON (`application/cloudevents+json`).
    ///
    /// `type` is the full name (`todo.created.v1`), `data` the payload, and the
    /// correlation id, causation id, tenant and trace context travel as the extensions
    /// `correlationid`, `causationid`, `tenantid` and `traceparent`.
    pub fn to_cloudevent(&self) -> Value {
        let mut ce = Map::new();
        ce.insert("specversion".into(), "1.0".into());
        ce.insert("id".into(), self.event_id.to_string().into());
        ce.insert("source".into(), self.source.as_deref().unwrap_or(DEFAULT_SOURCE).into());
        ce.insert("type".into(), self.full_type().into());
        ce.insert("time".into(), rfc3339(self.occurred_at).into());
        ce.insert("datacontenttype".into(), "application/json".into());
        ce.insert("correlationid".into(), self.correlation_id.as_str().into());
        if let Some(c) = self.causation_id {
            ce.insert("causationid".into(), c.to_string().into());
        }
        if let Some(t) = &self.tenant_id {
            ce.insert("tenantid".into(), t.clone().into());
        }
        if let Some(t) = &self.traceparent {
            ce.insert("traceparent".into(), t.clone().into());
        }
        for (k, v) in &self.extensions {
            ce.insert(k.clone(), v.clone());
        }
        ce.insert("data".into(), self.payload.clone());
        Value::Object(ce)
    }

    /// Parses CloudEvents 1.0 structured JSON; the inverse of [`Envelope::to_cloudevent`].
    ///
    /// Rejects, as `InvalidInput` naming the attribute: a spec version other than 1.0,
    /// a missing `id`/`type`/`source`, an `id` that is not a UUID, a bad `time`, a
    /// non-JSON `datacontenttype` and `data_base64`.
    pub fn from_cloudevent(ce: &Value) -> Result<Self> {
        let obj = ce.as_object().ok_or_else(|| bad("", "a CloudEvent must be a JSON object"))?;
        let text = |name: &str| -> Result<Option<&str>> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(bad(name, "must be a string")),
            }
        };
        let required = |name: &str| text(name)?.filter(|s| !s.is_empty()).ok_or_else(|| bad(name, "is required"));
        if required("specversion")? != "1.0" {
            return Err(bad("specversion", "must be \"1.0\""));
        }
        let event_id = Uuid::parse_str(required("id")?).map_err(|_| bad("id", "must be a UUID"))?;
        let source = required("source")?;
        let full_type = required("type")?;
        let (event_type, version) = split_version(full_type);
        let occurred_at = match text("time")? {
            Some(t) => OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad("time", "must be RFC 3339"))?,
            None => return Err(bad("time", "is required")),
        };
        if let Some(ct) = text("datacontenttype")?
            && !(ct == "application/json" || ct.ends_with("+json"))
        {
            return Err(bad("datacontenttype", "must be application/json"));
        }
        if obj.contains_key("data_base64") {
            return Err(bad("data_base64", "binary data is not supported; use JSON data"));
        }
        let correlation_id = match text("correlationid")? {
            Some(c) => CorrelationId::parse(c).map_err(|e| bad("correlationid", e.message()))?,
            None => CorrelationId::new(),
        };
        let causation_id = text("causationid")?
            .map(|c| Uuid::parse_str(c).map_err(|_| bad("causationid", "must be a UUID")))
            .transpose()?;
        const KNOWN: &[&str] = &[
            "specversion",
            "id",
            "source",
            "type",
            "time",
            "datacontenttype",
            "data",
            "correlationid",
            "causationid",
            "tenantid",
            "traceparent",
        ];
        let extensions =
            obj.iter().filter(|(k, _)| !KNOWN.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(Self {
            event_id,
            event_type: event_type.to_owned(),
            version: version.to_owned(),
            occurred_at,
            correlation_id,
            causation_id,
            tenant_id: text("tenantid")?.map(str::to_owned),
            traceparent: text("traceparent")?.map(str::to_owned),
            source: (source != DEFAULT_SOURCE).then(|| source.to_owned()),
            extensions,
            payload: obj.get("data").cloned().unwrap_or(Value::Null),
        })
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn split_version(full: &str) -> (&str, &str) {
    match full.rsplit_once(".v") {
        Some((ty, v)) if !ty.is_empty() && !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => (ty, v),
        _ => (full, ""),
    }
}

fn bad(attr: &str, why: &str) -> Error {
    let msg = if attr.is_empty() {
        format!("malformed CloudEvent: {why}")
    } else {
        format!("malformed CloudEvent: {attr} {why}")
    };
    Error::invalid_input(msg).with_detail(if attr.is_empty() { "cloudevent" } else { attr }, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct TodoCreated {
        id: u64,
        title: String,
    }
    impl Event for TodoCreated {
        const TYPE: &'static str = "todo.created";
        const VERSION: u32 = 1;
    }

    fn sample() -> Envelope<TodoCreated> {
        Envelope::new(TodoCreated { id: 42, title: "milk".into() }).with_tenant("acme").caused_by(Uuid::now_v7())
    }

    #[test]
    fn json_round_trip_and_shape() {
        let env = sample().into_json().unwrap();
        let bytes = env.to_json().unwrap();
        let back = Envelope::from_json(&bytes).unwrap();
        assert_eq!(back, env);
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        for key in [
            "event_id",
            "event_type",
            "version",
            "occurred_at",
            "correlation_id",
            "causation_id",
            "tenant_id",
            "payload",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert_eq!(v["event_type"], "todo.created");
        assert_eq!(v["version"], "1");
        assert_eq!(env.event_id.get_version_num(), 7);
        let typed = back.decode::<TodoCreated>().unwrap();
        assert_eq!(typed.payload.title, "milk");
    }

    #[test]
    fn decode_checks_type_and_version() {
        let mut env = sample().into_json().unwrap();
        env.version = "2".into();
        let err = env.decode::<TodoCreated>().unwrap_err();
        assert!(err.is_invalid_input());
        assert!(err.to_string().contains("todo.created.v2"));
        let env = Envelope::raw("todo.created", "1", json!({"id": "not a number"}));
        assert!(env.decode::<TodoCreated>().unwrap_err().is_invalid_input());
    }

    #[test]
    fn cloudevents_round_trip_is_lossless() {
        let mut env = sample().into_json().unwrap();
        env.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let ce = env.to_cloudevent();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["type"], "todo.created.v1");
        assert_eq!(ce["data"]["id"], 42);
        assert_eq!(Envelope::from_cloudevent(&ce).unwrap(), env);
        let env = env.with_source("/todos");
        assert_eq!(Envelope::from_cloudevent(&env.to_cloudevent()).unwrap(), env);
    }

    #[test]
    fn foreign_cloudevent_round_trips() {
        let ce = json!({
            "specversion": "1.0", "id": "0190c3c2-7a55-7d3e-9c1e-6a1a1b2c3d4e", "source": "https://example.com/x",
            "type": "com.example.object.deleted", "time": "2024-07-01T10:00:00.123456789Z",
            "subject": "obj/1", "myext": 5, "data": {"a": [1, 2]}, "datacontenttype": "application/json",
            "correlationid": "abc"
        });
        let env = Envelope::from_cloudevent(&ce).unwrap();
        assert_eq!(env.version, "");
        assert_eq!(env.extensions["subject"], "obj/1");
        assert_eq!(env.to_cloudevent(), ce);
    }

    #[test]
    fn malformed_cloudevents_are_rejected_naming_the_attribute() {
        let good = sample().into_json().unwrap().to_cloudevent();
        type Mutation = Box<dyn Fn(&mut Map<String, Value>)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "specversion",
                Box::new(|o| {
                    o.insert("specversion".into(), "0.3".into());
                }),
            ),
            (
                "id",
                Box::new(|o| {
                    o.remove("id");
                }),
            ),
            (
                "id",
                Box::new(|o| {
                    o.insert("id".into(), "not-a-uuid".into());
                }),
            ),
            (
                "type",
                Box::new(|o| {
                    o.insert("type".into(), 5.into());
                }),
            ),
            (
                "source",
                Box::new(|o| {
                    o.insert("source".into(), "".into());
                }),
            ),
            (
                "time",
                Box::new(|o| {
                    o.insert("time".into(), "yesterday".into());
                }),
            ),
            (
                "datacontenttype",
                Box::new(|o| {
                    o.insert("datacontenttype".into(), "text/xml".into());
                }),
            ),
            (
                "data_base64",
                Box::new(|o| {
                    o.insert("data_base64".into(), "AAAA".into());
                }),
            ),
            (
                "correlationid",
                Box::new(|o| {
                    o.insert("correlationid".into(), "has space".into());
                }),
            ),
            (
                "causationid",
                Box::new(|o| {
                    o.insert("causationid".into(), "x".into());
                }),
            ),
        ];
        for (attr, mutate) in cases {
            let mut v = good.clone();
            mutate(v.as_object_mut().unwrap());
            let err = Envelope::from_cloudevent(&v).unwrap_err();
            assert!(err.is_invalid_input(), "{attr}");
            assert_eq!(err.details()[0].field, attr, "{err}");
        }
        assert!(Envelope::from_cloudevent(&json!([1])).unwrap_err().is_invalid_input());
        assert!(Envelope::from_json(b"{not json").unwrap_err().is_invalid_input());
    }

    #[test]
    fn versions_split_from_type() {
        assert_eq!(split_version("todo.created.v12"), ("todo.created", "12"));
        assert_eq!(split_version("todo.vip.created"), ("todo.vip.created", ""));
        assert_eq!(split_version(".v1"), (".v1", ""));
    }
}
