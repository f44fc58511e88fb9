//! fedora-messaging messages (Fedora's AMQP bus) as Taskbot [`Event`]s: the one mapping that the
//! `fedora-messaging-bridge` applies to live deliveries and `taskbot replay` / `taskbot rules
//! test` apply to recorded messages (fedora-messaging's serialized files, datagrepper's pages), so
//! a message seen live, replayed from a dump and backfilled from datagrepper is the same event
//! with the same id, and schedules its jobs once.
//!
//! The mapping: topic = the routing key; `msg` = the JSON body (fedora-messaging has no envelope
//! on AMQP); id = the AMQP `message_id`, verbatim (fedora-messaging's UUID4, which a ZeroMQ↔AMQP
//! bridge keeps equal to fedmsg's `msg_id`, so a message seen on both buses is one event);
//! `sent_at` = the `sent-at` header; the headers that describe the message ([`kept_header`]) go
//! to [`Event::headers`], where rules match on them (`headers.fedora_messaging_schema`).
//!
//! Pure: no I/O, so every rule about what may be refused is unit-tested without a broker.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::messages::{derived_event_id, value_kind, Event};

/// Header Taskbot's own fedora-messaging sink (the reporter) sets to its AMQP namespace, so a
/// fedora-messaging bridge of the same deployment recognises a message Taskbot published itself
/// and does not take it back in (a loop: result → event → job → result …).
pub const NAMESPACE_HEADER: &str = "taskbot_namespace";

/// Longest topic and message id accepted: they become the AMQP routing key and `message_id` on
/// Taskbot's broker, both AMQP short strings.
pub const MAX_SHORT_STRING: usize = 255;

/// Whether a bus header is kept with the event: fedora-messaging's own (`fedora_messaging_*`),
/// `sent-at` and `priority`. Others (a shovel's `x-received-from`, a broker's `x-death`, the loop
/// guard [`NAMESPACE_HEADER`]) are transport, not content.
pub fn kept_header(name: &str) -> bool {
    name.starts_with("fedora_messaging_") || name == "sent-at" || name == "priority"
}

/// One message as it came off the bus, in plain data (from an AMQP delivery; see
/// `Delivery::from_lapin` in the bridge).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delivery {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// Every AMQP header, as JSON (strings, numbers, booleans; tables and arrays nested).
    pub headers: Map<String, Value>,
}

impl Delivery {
    /// The plain-data view of a delivery from an external broker.
    pub fn from_lapin(delivery: &lapin::message::Delivery) -> Delivery {
        let props = &delivery.properties;
        let headers = match props.headers() {
            Some(table) => table
                .inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
                .collect(),
            None => Map::new(),
        };
        Delivery {
            routing_key: delivery.routing_key.to_string(),
            body: delivery.data.clone(),
            message_id: props.message_id().as_ref().map(|s| s.to_string()),
            content_type: props.content_type().as_ref().map(|s| s.to_string()),
            content_encoding: props.content_encoding().as_ref().map(|s| s.to_string()),
            headers,
        }
    }

    /// The value of header `name` when it is a string.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(Value::as_str)
    }
}

/// Why a bus message cannot be an event. The `Display` text is the dead letter's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Oversized {
        bytes: usize,
        max: usize,
    },
    /// `content_type` is set and is not JSON.
    ContentType(String),
    /// `content_encoding` is set and is not UTF-8 (fedora-messaging always sends `utf-8`).
    ContentEncoding(String),
    NotUtf8 {
        valid_up_to: usize,
    },
    InvalidJson(String),
    /// The body is JSON but not an object (its kind is kept).
    NotAnObject(&'static str),
    MissingTopic,
    TopicTooLong {
        bytes: usize,
    },
    IdTooLong {
        bytes: usize,
    },
    /// A recorded message (serialized file, datagrepper) lacks a field or has one of the wrong
    /// type.
    Field {
        field: &'static str,
        problem: String,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Oversized { bytes, max } => write!(
                f,
                "message body is {bytes} bytes, over the limit of {max} \
                 (fedora_messaging_bridge.max_message_bytes)"
            ),
            Refused::ContentType(t) => write!(
                f,
                "content_type is {:?}, not application/json",
                shorten(t, 100)
            ),
            Refused::ContentEncoding(e) => {
                write!(f, "content_encoding is {:?}, not utf-8", shorten(e, 100))
            }
            Refused::NotUtf8 { valid_up_to } => write!(
                f,
                "body is not valid UTF-8 (the first invalid byte is at offset {valid_up_to})"
            ),
            Refused::InvalidJson(e) => write!(f, "body is not valid JSON: {e}"),
            Refused::NotAnObject(kind) => write!(f, "body is a JSON {kind}, not an object"),
            Refused::MissingTopic => f.write_str("no topic (the routing key is empty)"),
            Refused::TopicTooLong { bytes } => write!(
                f,
                "topic is {bytes} bytes, longer than the {MAX_SHORT_STRING} an AMQP routing key \
                 allows"
            ),
            Refused::IdTooLong { bytes } => write!(
                f,
                "message id is {bytes} bytes, longer than the {MAX_SHORT_STRING} an AMQP \
                 message_id allows"
            ),
            Refused::Field { field, problem } => write!(f, "`{field}` {problem}"),
        }
    }
}

impl std::error::Error for Refused {}

/// The event of one live delivery, received from `source` (`fedora-messaging:<host>/<vhost>`),
/// or why it cannot be one. `max_bytes` bounds the body.
///
/// A missing `content_type` or `content_encoding` is taken as JSON in UTF-8 (fedora-messaging's
/// own consumer does the same); one that is set to anything else is refused, as is a body that
/// is not a UTF-8 JSON object.
pub fn from_delivery(
    delivery: &Delivery,
    max_bytes: usize,
    source: &str,
) -> Result<Event, Refused> {
    if delivery.body.len() > max_bytes {
        return Err(Refused::Oversized {
            bytes: delivery.body.len(),
            max: max_bytes,
        });
    }
    if let Some(t) = &delivery.content_type {
        let essence = t.split(';').next().unwrap_or_default().trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(Refused::ContentType(t.clone()));
        }
    }
    if let Some(e) = &delivery.content_encoding {
        if !matches!(e.trim().to_ascii_lowercase().as_str(), "utf-8" | "utf8") {
            return Err(Refused::ContentEncoding(e.clone()));
        }
    }
    let text = std::str::from_utf8(&delivery.body).map_err(|e| Refused::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let body: Value =
        serde_json::from_str(text).map_err(|e| Refused::InvalidJson(e.to_string()))?;
    let parts = Parts {
        topic: &delivery.routing_key,
        body,
        id: delivery.message_id.as_deref(),
        headers: &delivery.headers,
        timestamp: None,
    };
    parts.into_event(source)
}

/// The event of one message in fedora-messaging's serialized form, what `fedora-messaging
/// publish` reads from a file and its consumers dump (its `message.dumps`): a JSON object
/// `{"topic", "headers", "id", "body", "queue", "priority"}` (`queue` and `priority` are not part
/// of the event).
pub fn from_serialized(message: &Map<String, Value>, source: &str) -> Result<Event, Refused> {
    let topic = string_field(message, "topic")?.unwrap_or_default();
    let body = message.get("body").cloned().unwrap_or(Value::Null);
    let headers = object_field(message, "headers")?;
    let parts = Parts {
        topic,
        body,
        id: string_field(message, "id")?,
        headers: &headers,
        timestamp: None,
    };
    parts.into_event(source)
}

/// Whether `message` has the shape of fedora-messaging's serialized form (`topic` and `body`,
/// which fedmsg envelopes and Taskbot events lack).
pub fn is_serialized(message: &Map<String, Value>) -> bool {
    message.contains_key("topic") && message.contains_key("body") && !message.contains_key("msg")
}

/// The event of one message of a datagrepper page (an element of its `raw_messages`): `topic`,
/// `msg` (the body), `msg_id` (the AMQP `message_id` it was received with), `timestamp` (UNIX
/// seconds) and `headers` (those it was received with; datagrepper keeps them for messages of
/// the fedora-messaging era).
pub fn from_datagrepper(message: &Map<String, Value>, source: &str) -> Result<Event, Refused> {
    let topic = string_field(message, "topic")?.unwrap_or_default();
    let body = message.get("msg").cloned().unwrap_or(Value::Null);
    let headers = object_field(message, "headers")?;
    let parts = Parts {
        topic,
        body,
        id: string_field(message, "msg_id")?,
        headers: &headers,
        timestamp: message.get("timestamp").and_then(Value::as_f64),
    };
    parts.into_event(source)
}

/// Whether a datagrepper message is of the fedora-messaging era (it has AMQP headers): such a
/// message maps with [`from_datagrepper`]; an older one (a fedmsg envelope) with the fedmsg
/// bridge's parser, as the ZeroMQ bridge saw it.
pub fn is_datagrepper_amqp(message: &Map<String, Value>) -> bool {
    matches!(message.get("headers"), Some(Value::Object(h)) if !h.is_empty())
}

/// What every source gives, once decoded.
struct Parts<'a> {
    topic: &'a str,
    body: Value,
    id: Option<&'a str>,
    headers: &'a Map<String, Value>,
    /// A send time from outside the headers (datagrepper's `timestamp`), used when `sent-at`
    /// is missing or unreadable.
    timestamp: Option<f64>,
}

impl Parts<'_> {
    fn into_event(self, source: &str) -> Result<Event, Refused> {
        if self.topic.is_empty() {
            return Err(Refused::MissingTopic);
        }
        if self.topic.len() > MAX_SHORT_STRING {
            return Err(Refused::TopicTooLong {
                bytes: self.topic.len(),
            });
        }
        if !self.body.is_object() {
            return Err(Refused::NotAnObject(value_kind(&self.body)));
        }
        let headers: BTreeMap<String, Value> = self
            .headers
            .iter()
            .filter(|(k, _)| kept_header(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sent_at = headers
            .get("sent-at")
            .and_then(Value::as_str)
            .and_then(parse_sent_at)
            .or(self.timestamp);
        let id = match self.id.map(str::trim) {
            Some(id) if !id.is_empty() => {
                if id.len() > MAX_SHORT_STRING {
                    return Err(Refused::IdTooLong { bytes: id.len() });
                }
                id.to_string()
            }
            _ => derived_id(self.topic, &self.body, &headers),
        };
        Ok(Event {
            id,
            topic: self.topic.to_string(),
            source: source.to_string(),
            sent_at,
            received_at: Utc::now(),
            username: None,
            msg: self.body,
            headers,
        })
    }
}

/// An AMQP field value as JSON: what pika's headers are on the Python side (strings, integers,
/// booleans, nested tables and arrays). Byte arrays and long strings that are not UTF-8 become
/// text lossily; a timestamp becomes its UNIX seconds; a decimal its value.
pub fn amqp_to_json(value: &lapin::types::AMQPValue) -> Value {
    use lapin::types::AMQPValue as V;
    match value {
        V::Boolean(b) => Value::Bool(*b),
        V::ShortShortInt(n) => (*n).into(),
        V::ShortShortUInt(n) => (*n).into(),
        V::ShortInt(n) => (*n).into(),
        V::ShortUInt(n) => (*n).into(),
        V::LongInt(n) => (*n).into(),
        V::LongUInt(n) => (*n).into(),
        V::LongLongInt(n) => (*n).into(),
        V::Float(x) => {
            serde_json::Number::from_f64(f64::from(*x)).map_or(Value::Null, Value::Number)
        }
        V::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        V::DecimalValue(d) => {
            serde_json::Number::from_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
                .map_or(Value::Null, Value::Number)
        }
        V::ShortString(s) => Value::String(s.to_string()),
        V::LongString(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        V::ByteArray(b) => Value::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
        V::FieldArray(items) => Value::Array(items.as_slice().iter().map(amqp_to_json).collect()),
        V::Timestamp(t) => (*t).into(),
        V::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.to_string(), amqp_to_json(v)))
                .collect(),
        ),
        V::Void => Value::Null,
    }
}

/// `sent-at` (ISO 8601 with a UTC offset, as fedora-messaging writes it) as UNIX seconds.
pub fn parse_sent_at(text: &str) -> Option<f64> {
    let at = DateTime::parse_from_rfc3339(text.trim()).ok()?;
    Some(at.timestamp() as f64 + f64::from(at.timestamp_subsec_micros()) / 1e6)
}

/// `derived-<uuid5>` of `[topic, body, sent-at]` with object keys sorted, for the rare message
/// without an id (fedora-messaging always sets one): the same message seen twice gets the same
/// id twice.
fn derived_id(topic: &str, body: &Value, headers: &BTreeMap<String, Value>) -> String {
    derived_event_id(vec![
        Value::String(topic.to_string()),
        body.clone(),
        headers.get("sent-at").cloned().unwrap_or(Value::Null),
    ])
}

fn string_field<'a>(
    message: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, Refused> {
    match message.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Refused::Field {
            field,
            problem: format!("is a JSON {}, not a string", value_kind(other)),
        }),
    }
}

fn object_field(
    message: &Map<String, Value>,
    field: &'static str,
) -> Result<Map<String, Value>, Refused> {
    match message.get(field) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(other) => Err(Refused::Field {
            field,
            problem: format!("is a JSON {}, not an object", value_kind(other)),
        }),
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn shorten(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SOURCE: &str = "fedora-messaging:broker/%2Fpubsub";
    const MAX: usize = 1 << 20;

    /// A delivery exactly as fedora-messaging 3.x publishes a Koji build state change.
    fn koji() -> Delivery {
        let headers = json!({
            "fedora_messaging_schema": "koji_fedoramessaging.build.BuildStateChangeV1",
            "fedora_messaging_schema_package": "koji-fedoramessaging-messages",
            "sent-at": "2026-03-01T10:20:30+00:00",
            "fedora_messaging_severity": 20,
            "priority": 0,
            "fedora_messaging_user_alice": true,
            "fedora_messaging_rpm_bash": true,
            "x-received-from": [{"uri": "amqps://elsewhere"}],
            "taskbot_namespace": "taskbot",
        });
        Delivery {
            routing_key: "org.fedoraproject.prod.buildsys.build.state.change".into(),
            body: br#"{"name": "bash", "version": "5.2", "release": "1.fc41", "new": 1}"#.to_vec(),
            message_id: Some("6d5f2c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6".into()),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            headers: headers.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn a_delivery_becomes_an_event_with_its_id_topic_body_time_and_headers() {
        let event = from_delivery(&koji(), MAX, SOURCE).unwrap();
        assert_eq!(event.id, "6d5f2c3a-1b2c-4d5e-8f90-a1b2c3d4e5f6");
        assert_eq!(
            event.topic,
            "org.fedoraproject.prod.buildsys.build.state.change"
        );
        assert_eq!(event.source, SOURCE);
        assert_eq!(event.msg["name"], "bash");
        let sent = DateTime::parse_from_rfc3339("2026-03-01T10:20:30Z").unwrap();
        assert_eq!(event.sent_at, Some(sent.timestamp() as f64));
        let kept: Vec<&str> = event.headers.keys().map(String::as_str).collect();
        assert_eq!(
            kept,
            [
                "fedora_messaging_rpm_bash",
                "fedora_messaging_schema",
                "fedora_messaging_schema_package",
                "fedora_messaging_severity",
                "fedora_messaging_user_alice",
                "priority",
                "sent-at"
            ]
        );
        assert_eq!(event.headers["fedora_messaging_severity"], json!(20));
        assert_eq!(event.headers["fedora_messaging_user_alice"], json!(true));
    }

    #[test]
    fn missing_content_type_and_encoding_mean_json_in_utf8() {
        let mut d = koji();
        d.content_type = None;
        d.content_encoding = None;
        assert!(from_delivery(&d, MAX, SOURCE).is_ok());
        d.content_type = Some("Application/JSON; charset=utf-8".into());
        d.content_encoding = Some("UTF8".into());
        assert!(from_delivery(&d, MAX, SOURCE).is_ok());
    }

    #[test]
    fn bad_deliveries_are_refused_with_their_reason() {
        let refused = |change: &dyn Fn(&mut Delivery)| {
            let mut d = koji();
            change(&mut d);
            from_delivery(&d, MAX, SOURCE).expect_err("must be refused")
        };
        assert_eq!(
            refused(&|d| d.content_type = Some("text/plain".into())),
            Refused::ContentType("text/plain".into())
        );
        assert_eq!(
            refused(&|d| d.content_encoding = Some("latin-1".into())),
            Refused::ContentEncoding("latin-1".into())
        );
        assert_eq!(
            refused(&|d| d.body = b"{\"a\": \"\xff\"}".to_vec()),
            Refused::NotUtf8 { valid_up_to: 7 }
        );
        assert!(matches!(
            refused(&|d| d.body = b"not json".to_vec()),
            Refused::InvalidJson(_)
        ));
        assert_eq!(
            refused(&|d| d.body = b"[1, 2]".to_vec()),
            Refused::NotAnObject("array")
        );
        assert_eq!(
            refused(&|d| d.body = b"\"x\"".to_vec()),
            Refused::NotAnObject("string")
        );
        assert_eq!(
            refused(&|d| d.body = vec![b' '; MAX + 1]),
            Refused::Oversized {
                bytes: MAX + 1,
                max: MAX
            }
        );
        assert_eq!(refused(&|d| d.routing_key.clear()), Refused::MissingTopic);
        assert_eq!(
            refused(&|d| d.message_id = Some("x".repeat(300))),
            Refused::IdTooLong { bytes: 300 }
        );
        assert_eq!(
            Refused::NotAnObject("array").to_string(),
            "body is a JSON array, not an object"
        );
        assert_eq!(
            Refused::ContentType("text/plain".into()).to_string(),
            "content_type is \"text/plain\", not application/json"
        );
    }

    #[test]
    fn a_message_without_id_gets_a_stable_derived_one() {
        let mut d = koji();
        d.message_id = None;
        let a = from_delivery(&d, MAX, SOURCE).unwrap().id;
        d.body = br#"{"new": 1, "release": "1.fc41", "version": "5.2", "name": "bash"}"#.to_vec();
        let b = from_delivery(&d, MAX, SOURCE).unwrap().id;
        assert!(a.starts_with("derived-"), "{a}");
        assert_eq!(a, b, "key order does not matter");
        d.body = br#"{"name": "zsh"}"#.to_vec();
        assert_ne!(from_delivery(&d, MAX, SOURCE).unwrap().id, a);
    }

    #[test]
    fn a_serialized_message_and_a_datagrepper_one_are_the_live_event() {
        let live = from_delivery(&koji(), MAX, SOURCE).unwrap();
        let headers = Value::Object(koji().headers);
        let serialized = json!({
            "topic": live.topic, "headers": headers, "id": live.id, "body": live.msg,
            "queue": null, "priority": 0,
        });
        let serialized = serialized.as_object().unwrap();
        assert!(is_serialized(serialized));
        let replayed = from_serialized(serialized, "file").unwrap();
        let datagrepper = json!({
            "certificate": null, "crypto": null, "headers": headers, "i": 0,
            "msg": live.msg, "msg_id": live.id, "signature": null,
            "source_name": "datanommer", "source_version": "1.4.0",
            "timestamp": 1772360430.0, "topic": live.topic, "username": null,
        });
        let datagrepper = datagrepper.as_object().unwrap();
        assert!(is_datagrepper_amqp(datagrepper) && !is_serialized(datagrepper));
        let backfilled = from_datagrepper(datagrepper, "datagrepper").unwrap();
        for other in [&replayed, &backfilled] {
            assert_eq!(other.id, live.id);
            assert_eq!(other.topic, live.topic);
            assert_eq!(other.msg, live.msg);
            assert_eq!(other.headers, live.headers);
            assert_eq!(other.sent_at, live.sent_at);
        }
        let bad = json!({"topic": "a.b", "body": [1]});
        assert_eq!(
            from_serialized(bad.as_object().unwrap(), "f").unwrap_err(),
            Refused::NotAnObject("array")
        );
        let bad = json!({"topic": 5, "body": {}});
        assert_eq!(
            from_serialized(bad.as_object().unwrap(), "f")
                .unwrap_err()
                .to_string(),
            "`topic` is a JSON number, not a string"
        );
    }

    #[test]
    fn sent_at_reads_fedora_messagings_format_and_datagrepper_fills_in() {
        assert_eq!(parse_sent_at("1970-01-01T00:01:00+00:00"), Some(60.0));
        assert_eq!(parse_sent_at("1970-01-01T01:01:00+01:00"), Some(60.0));
        assert_eq!(parse_sent_at("yesterday"), None);
        let message = json!({"topic": "a.b", "msg": {}, "msg_id": "x", "timestamp": 12.5,
                             "headers": {"sent-at": "soon"}});
        let event = from_datagrepper(message.as_object().unwrap(), "d").unwrap();
        assert_eq!(event.sent_at, Some(12.5));
    }
}
