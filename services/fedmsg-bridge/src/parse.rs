//! Turning one fedmsg ZeroMQ message into a Taskbot [`Event`], or saying precisely why it cannot
//! be one. Pure (apart from reading the clock for `received_at`), so every rule about what the bus
//! may send is unit-tested without sockets or a broker.

use std::fmt;

use chrono::Utc;
use serde_json::{Map, Value};
use taskbot::amqp::{Incoming, Outgoing};
use taskbot::messages::{derived_event_id, value_kind, Event};
use taskbot::routes::Publishable;
use taskbot::Topology;

use crate::gaps::sender_of;

/// Longest topic and `msg_id` the bridge accepts: they become the AMQP routing key and
/// `message_id`, which are AMQP short strings. Longer ones would not be refused by the client
/// library but silently corrupt the frame, the broker would drop the connection, and the publisher
/// would retry the same message forever.
pub const MAX_AMQP_SHORT_STRING: usize = 255;

/// Header of a dead letter naming the fedmsg endpoint the message came from (dead letters from
/// queues have an exchange instead; the bridge's have none).
pub const FEDMSG_SOURCE_HEADER: &str = "x-taskbot-fedmsg-source";
/// Header of a dead letter whose body was cut to `bridge.max_message_bytes`: the original size.
pub const TRUNCATED_FROM_HEADER: &str = "x-taskbot-truncated-from";

/// Why a bus message was refused. The `Display` text is the dead letter's reason header, so it
/// says what was wrong in words an operator understands without reading this code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// fedmsg always sends exactly two frames: topic and JSON envelope.
    FrameCount {
        sizes: Vec<usize>,
    },
    /// Both frames together are larger than `bridge.max_message_bytes`.
    Oversized {
        bytes: usize,
        max: usize,
    },
    TopicNotUtf8,
    BodyNotUtf8,
    InvalidJson(String),
    /// The envelope is valid JSON but not an object (the value's kind is kept).
    NotAnObject(&'static str),
    /// The envelope's `topic` is there but is not a string.
    TopicNotString(&'static str),
    /// Neither the envelope nor the topic frame names a topic.
    MissingTopic,
    /// The topic would not fit in an AMQP routing key.
    TopicTooLong {
        bytes: usize,
    },
    /// The topic frame and the envelope's `topic` are both given and differ. Refused rather than
    /// picking one: ZeroMQ filters subscriptions on the frame while consumers route on the
    /// envelope, so accepting a disagreement would let a message past a topic-prefix filter it
    /// does not actually match.
    TopicMismatch {
        frame: String,
        envelope: String,
    },
    MissingMsg,
    /// `msg` is there but is not an object (the value's kind is kept).
    MsgNotObject(&'static str),
    /// The `msg_id` would not fit in an AMQP `message_id`.
    MsgIdTooLong {
        bytes: usize,
    },
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Malformed::FrameCount { sizes } => write!(
                f,
                "expected 2 frames (topic, JSON envelope), got {} (frame sizes in bytes: {:?}; \
                 the dead letter's body is all frames concatenated)",
                sizes.len(),
                sizes
            ),
            Malformed::Oversized { bytes, max } => write!(
                f,
                "message is {bytes} bytes, over the limit of {max} (bridge.max_message_bytes)"
            ),
            Malformed::TopicNotUtf8 => f.write_str("topic frame is not valid UTF-8"),
            Malformed::BodyNotUtf8 => f.write_str("envelope frame is not valid UTF-8"),
            Malformed::InvalidJson(e) => write!(f, "envelope is not valid JSON: {e}"),
            Malformed::NotAnObject(kind) => {
                write!(f, "envelope is a JSON {kind}, not an object")
            }
            Malformed::TopicNotString(kind) => {
                write!(f, "envelope `topic` is a JSON {kind}, not a string")
            }
            Malformed::MissingTopic => {
                f.write_str("no topic: the envelope has no `topic` and the topic frame is empty")
            }
            Malformed::TopicTooLong { bytes } => write!(
                f,
                "topic is {bytes} bytes, longer than the {MAX_AMQP_SHORT_STRING} an AMQP \
                 routing key allows"
            ),
            Malformed::TopicMismatch { frame, envelope } => write!(
                f,
                "topic frame {:?} disagrees with envelope topic {:?}",
                shorten(frame, MAX_AMQP_SHORT_STRING),
                shorten(envelope, MAX_AMQP_SHORT_STRING)
            ),
            Malformed::MissingMsg => f.write_str("envelope has no `msg`"),
            Malformed::MsgNotObject(kind) => {
                write!(f, "envelope `msg` is a JSON {kind}, not an object")
            }
            Malformed::MsgIdTooLong { bytes } => write!(
                f,
                "`msg_id` is {bytes} bytes, longer than the {MAX_AMQP_SHORT_STRING} an AMQP \
                 message_id allows"
            ),
        }
    }
}

impl std::error::Error for Malformed {}

/// Parse one fedmsg message: `frames` as received (frame 1 the topic, frame 2 the JSON envelope),
/// `max_bytes` the size limit of both frames together, `source` what to record as the event's
/// origin (`fedmsg:<endpoint>`).
///
/// The event id is the envelope's `msg_id` when it is a non-empty string. Old producers sent no
/// `msg_id`; their events get `derived-<uuid5>` computed from (topic, msg, timestamp, i, username),
/// so the same message seen twice (a relay and a direct subscription, a restart) has the same id
/// twice and downstream deduplication works.
///
/// The topic is the envelope's `topic`, or the topic frame when the envelope has none; see
/// [`Malformed::TopicMismatch`] for when both are given. A missing or non-numeric `timestamp`
/// and a missing or non-string `username` are not errors: they are optional.
pub fn parse_fedmsg(
    frames: &[Vec<u8>],
    max_bytes: usize,
    source: &str,
) -> Result<Event, Malformed> {
    parse_with_sequence(frames, max_bytes, source).map(|(event, _)| event)
}

/// [`parse_fedmsg`], and the envelope's sequence number `i` when it is a non-negative integer
/// (for [`crate::gaps`]; a missing or odd `i` is not an error: old producers sent none).
pub fn parse_with_sequence(
    frames: &[Vec<u8>],
    max_bytes: usize,
    source: &str,
) -> Result<(Event, Option<u64>), Malformed> {
    let [topic_frame, body] = frames else {
        return Err(Malformed::FrameCount {
            sizes: frames.iter().map(Vec::len).collect(),
        });
    };
    let bytes = topic_frame.len() + body.len();
    if bytes > max_bytes {
        return Err(Malformed::Oversized {
            bytes,
            max: max_bytes,
        });
    }
    let frame_topic = std::str::from_utf8(topic_frame).map_err(|_| Malformed::TopicNotUtf8)?;
    let body = std::str::from_utf8(body).map_err(|_| Malformed::BodyNotUtf8)?;
    let envelope: Value =
        serde_json::from_str(body).map_err(|e| Malformed::InvalidJson(e.to_string()))?;
    let Value::Object(envelope) = envelope else {
        return Err(Malformed::NotAnObject(value_kind(&envelope)));
    };

    let envelope_topic = match envelope.get("topic") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.is_empty() => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(other) => return Err(Malformed::TopicNotString(value_kind(other))),
    };
    let topic = match envelope_topic {
        Some(t) if !frame_topic.is_empty() && frame_topic != t => {
            return Err(Malformed::TopicMismatch {
                frame: frame_topic.to_string(),
                envelope: t.to_string(),
            })
        }
        Some(t) => t,
        None if !frame_topic.is_empty() => frame_topic,
        None => return Err(Malformed::MissingTopic),
    };
    if topic.len() > MAX_AMQP_SHORT_STRING {
        return Err(Malformed::TopicTooLong { bytes: topic.len() });
    }

    let msg = match envelope.get("msg") {
        None => return Err(Malformed::MissingMsg),
        Some(msg @ Value::Object(_)) => msg.clone(),
        Some(other) => return Err(Malformed::MsgNotObject(value_kind(other))),
    };

    let id = match envelope.get("msg_id") {
        Some(Value::String(id)) if !id.trim().is_empty() => {
            if id.len() > MAX_AMQP_SHORT_STRING {
                return Err(Malformed::MsgIdTooLong { bytes: id.len() });
            }
            id.clone()
        }
        _ => derived_id(topic, &msg, &envelope),
    };

    let event = Event {
        id,
        topic: topic.to_string(),
        source: source.to_string(),
        sent_at: envelope.get("timestamp").and_then(Value::as_f64),
        received_at: Utc::now(),
        username: envelope
            .get("username")
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .map(str::to_string),
        msg,
        headers: Default::default(),
    };
    Ok((event, envelope.get("i").and_then(Value::as_u64)))
}

/// `derived-<uuid5>` of the JSON array [topic, msg, timestamp, i, username] with object keys
/// sorted (absent fields are `null`; [`derived_event_id`]).
fn derived_id(topic: &str, msg: &Value, envelope: &Map<String, Value>) -> String {
    let field = |name: &str| envelope.get(name).cloned().unwrap_or(Value::Null);
    derived_event_id(vec![
        Value::String(topic.to_string()),
        msg.clone(),
        field("timestamp"),
        field("i"),
        field("username"),
    ])
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn shorten(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What the bridge does with one bus message: the message to publish, and whether it was an
/// event or a dead letter.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// A valid message: the event, to the events exchange under its topic, and the sender's
    /// sequence number `(sender, i)` when the envelope has one (see [`crate::gaps`]).
    Event {
        id: String,
        outgoing: Outgoing,
        sequence: Option<(String, u64)>,
    },
    /// A refused message: its raw bytes, to the dead-letter exchange.
    DeadLetter {
        reason: Malformed,
        outgoing: Outgoing,
    },
}

impl Routed {
    pub fn outgoing(&self) -> &Outgoing {
        match self {
            Routed::Event { outgoing, .. } | Routed::DeadLetter { outgoing, .. } => outgoing,
        }
    }
}

/// Decide what to publish for one bus message.
pub fn route(topology: &Topology, frames: &[Vec<u8>], max_bytes: usize, source: &str) -> Routed {
    match parse_with_sequence(frames, max_bytes, source) {
        Ok((event, i)) => Routed::Event {
            sequence: i.map(|i| {
                let sender = sender_of(source, event.username.as_deref(), &event.topic);
                (sender, i)
            }),
            outgoing: event.outgoing(topology),
            id: event.id,
        },
        Err(reason) => Routed::DeadLetter {
            outgoing: dead_letter(topology, frames, &reason, max_bytes, source),
            reason,
        },
    }
}

/// The dead letter of a refused bus message, under the bridge's pseudo-queue name.
///
/// Body: the envelope frame as received, or all frames concatenated when there were not exactly
/// two (the reason lists the frame sizes, so they can be split again). The topic frame, decoded
/// lossily and cut to a routing key's length, is recorded as the original routing key. A body
/// over `max_bytes` is cut to `max_bytes` (with the original size in a header) so that a flood of
/// huge messages cannot fill the broker.
pub fn dead_letter(
    topology: &Topology,
    frames: &[Vec<u8>],
    reason: &Malformed,
    max_bytes: usize,
    source: &str,
) -> Outgoing {
    let (topic, mut body) = match frames {
        [topic, body] => (topic.as_slice(), body.clone()),
        [first, _, ..] => (first.as_slice(), frames.concat()),
        _ => (&[][..], frames.concat()),
    };
    let original_len = body.len();
    body.truncate(max_bytes);
    let topic = String::from_utf8_lossy(topic);
    let incoming = Incoming::new(shorten(&topic, MAX_AMQP_SHORT_STRING), body);
    let mut out = Outgoing::dead_letter(
        topology,
        &topology.bridge_source(),
        &incoming,
        &reason.to_string(),
    )
    .with_header(FEDMSG_SOURCE_HEADER, source);
    if original_len > max_bytes {
        out = out.with_header(TRUNCATED_FROM_HEADER, original_len.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskbot::amqp::{REASON_HEADER, ROUTING_KEY_HEADER};
    use taskbot::messages::Message;

    const SAMPLES: &str = include_str!("../../../tests/fixtures/fedmsg-real.jsonl");
    const MAX: usize = 1024 * 1024;
    const SOURCE: &str = "fedmsg:tcp://127.0.0.1:4001";

    fn samples() -> Vec<Value> {
        SAMPLES
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The two frames fedmsg sends for an envelope.
    fn frames(envelope: &Value) -> Vec<Vec<u8>> {
        vec![
            envelope["topic"].as_str().unwrap_or("").as_bytes().to_vec(),
            serde_json::to_vec(envelope).unwrap(),
        ]
    }

    fn raw(topic: &str, body: &str) -> Vec<Vec<u8>> {
        vec![topic.as_bytes().to_vec(), body.as_bytes().to_vec()]
    }

    fn koji_without_msg_id() -> Value {
        samples()
            .into_iter()
            .find(|s| {
                s["topic"] == "org.fedoraproject.prod.buildsys.build.state.change"
                    && s.get("msg_id").is_none()
            })
            .expect("the samples hold an old Koji message without msg_id")
    }

    #[test]
    fn every_real_sample_parses_with_a_stable_id() {
        let all = samples();
        assert_eq!(all.len(), 70, "the fixture is the full samples file");
        let mut with_msg_id = 0;
        let mut derived = 0;
        for (n, envelope) in all.iter().enumerate() {
            let first = parse_fedmsg(&frames(envelope), MAX, SOURCE)
                .unwrap_or_else(|e| panic!("sample {n} refused: {e}"));
            let second = parse_fedmsg(&frames(envelope), MAX, SOURCE).unwrap();
            assert_eq!(first.id, second.id, "sample {n}: id not stable");
            assert_eq!(first.topic, envelope["topic"].as_str().unwrap());
            assert_eq!(first.msg, envelope["msg"], "sample {n}: msg changed");
            assert_eq!(first.source, SOURCE);
            assert_eq!(
                first.sent_at,
                envelope.get("timestamp").and_then(Value::as_f64)
            );
            assert_eq!(
                first.username.as_deref(),
                envelope.get("username").and_then(Value::as_str)
            );
            match envelope.get("msg_id").and_then(Value::as_str) {
                Some(id) => {
                    assert_eq!(first.id, id, "sample {n}: msg_id not kept");
                    with_msg_id += 1;
                }
                None => {
                    assert!(first.id.starts_with("derived-"), "sample {n}: {}", first.id);
                    let uuid = first.id.trim_start_matches("derived-");
                    assert_eq!(
                        uuid::Uuid::parse_str(uuid).map(|u| u.get_version_num()),
                        Ok(5)
                    );
                    derived += 1;
                }
            }
        }
        // Both kinds really occur in the samples, so both branches above were exercised.
        assert!(
            with_msg_id > 40 && derived > 10,
            "{with_msg_id} / {derived}"
        );
    }

    #[test]
    fn derived_ids_differ_between_the_samples_that_lack_msg_id() {
        let ids: Vec<String> = samples()
            .iter()
            .filter(|s| s.get("msg_id").is_none())
            .map(|s| parse_fedmsg(&frames(s), MAX, SOURCE).unwrap().id)
            .collect();
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
    }

    #[test]
    fn derived_id_depends_on_content_not_on_key_order_or_formatting() {
        let envelope = koji_without_msg_id();
        let id = parse_fedmsg(&frames(&envelope), MAX, SOURCE).unwrap().id;

        // Same content, keys reversed and pretty-printed, from another endpoint: same id.
        let mut reordered = String::from("{");
        let obj = envelope.as_object().unwrap();
        let keys: Vec<_> = obj.keys().rev().collect();
        for (n, k) in keys.iter().enumerate() {
            if n > 0 {
                reordered.push_str(",\n  ");
            }
            let mut value = obj[k.as_str()].clone();
            if let Value::Object(m) = &value {
                let inner: Map<String, Value> = m
                    .iter()
                    .rev()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                value = Value::Object(inner);
            }
            reordered.push_str(&format!("{}: {}", Value::String(k.to_string()), value));
        }
        reordered.push('}');
        let topic = envelope["topic"].as_str().unwrap();
        let same = parse_fedmsg(&raw(topic, &reordered), MAX, "fedmsg:tcp://elsewhere:9940");
        assert_eq!(same.unwrap().id, id);

        // Any field of the key changed: another id.
        for (field, value) in [
            ("timestamp", serde_json::json!(1.5)),
            ("i", serde_json::json!(99999)),
            ("username", serde_json::json!("someone-else")),
        ] {
            let mut changed = envelope.clone();
            changed[field] = value;
            let other = parse_fedmsg(&frames(&changed), MAX, SOURCE).unwrap().id;
            assert_ne!(other, id, "changing {field} must change the id");
        }
        let mut changed = envelope.clone();
        changed["msg"]["new"] = serde_json::json!(3);
        assert_ne!(parse_fedmsg(&frames(&changed), MAX, SOURCE).unwrap().id, id);
    }

    #[test]
    fn empty_or_non_string_msg_id_falls_back_to_the_derived_id() {
        let envelope = koji_without_msg_id();
        let derived = parse_fedmsg(&frames(&envelope), MAX, SOURCE).unwrap().id;
        for bad in [
            serde_json::json!(""),
            serde_json::json!("  "),
            serde_json::json!(42),
        ] {
            let mut e = envelope.clone();
            e["msg_id"] = bad.clone();
            assert_eq!(
                parse_fedmsg(&frames(&e), MAX, SOURCE).unwrap().id,
                derived,
                "msg_id {bad}"
            );
        }
    }

    #[test]
    fn topic_comes_from_the_frame_when_the_envelope_has_none() {
        let body = r#"{"msg": {"a": 1}, "timestamp": 1424216566}"#;
        let event = parse_fedmsg(&raw("org.x.prod.a.b", body), MAX, SOURCE).unwrap();
        assert_eq!(event.topic, "org.x.prod.a.b");
        assert_eq!(event.sent_at, Some(1424216566.0));
        assert_eq!(event.username, None);
        // And from the envelope when the frame is empty.
        let body = r#"{"topic": "org.x.prod.c", "msg": {}}"#;
        let event = parse_fedmsg(&raw("", body), MAX, SOURCE).unwrap();
        assert_eq!(event.topic, "org.x.prod.c");
        assert_eq!(event.sent_at, None);
    }

    fn refused(frames: &[Vec<u8>]) -> Malformed {
        parse_fedmsg(frames, MAX, SOURCE).expect_err("must be refused")
    }

    #[test]
    fn wrong_frames_sizes_and_encodings_are_refused_with_their_reason() {
        let ok_body = r#"{"topic": "org.x.a", "msg": {}}"#;
        assert_eq!(refused(&[]), Malformed::FrameCount { sizes: vec![] });
        assert_eq!(
            refused(&[b"org.x.a".to_vec()]),
            Malformed::FrameCount { sizes: vec![7] }
        );
        let mut three = raw("org.x.a", ok_body);
        three.push(b"x".to_vec());
        assert!(matches!(refused(&three), Malformed::FrameCount { sizes } if sizes.len() == 3));
        assert_eq!(
            parse_fedmsg(&raw("org.x.a", ok_body), 10, SOURCE).unwrap_err(),
            Malformed::Oversized {
                bytes: 7 + ok_body.len(),
                max: 10
            }
        );
        assert_eq!(
            refused(&[vec![0xff, 0xfe], ok_body.as_bytes().to_vec()]),
            Malformed::TopicNotUtf8
        );
        assert_eq!(
            refused(&[b"org.x.a".to_vec(), b"{\"msg\": \"\xff\"}".to_vec()]),
            Malformed::BodyNotUtf8
        );
    }

    #[test]
    fn an_envelope_that_is_no_json_object_or_has_no_fitting_topic_is_refused() {
        assert!(matches!(
            refused(&raw("org.x.a", "{not json")),
            Malformed::InvalidJson(_)
        ));
        assert!(matches!(
            refused(&raw("org.x.a", "")),
            Malformed::InvalidJson(_)
        ));
        assert_eq!(
            refused(&raw("org.x.a", "[1, 2]")),
            Malformed::NotAnObject("array")
        );
        assert_eq!(
            refused(&raw("org.x.a", r#"{"topic": 5, "msg": {}}"#)),
            Malformed::TopicNotString("number")
        );
        assert_eq!(refused(&raw("", r#"{"msg": {}}"#)), Malformed::MissingTopic);
        assert_eq!(
            refused(&raw("", r#"{"topic": "", "msg": {}}"#)),
            Malformed::MissingTopic
        );
        let long = "a.".repeat(200);
        assert_eq!(
            refused(&raw(&long, r#"{"msg": {}}"#)),
            Malformed::TopicTooLong { bytes: 400 }
        );
        assert_eq!(
            refused(&raw("org.x.a", r#"{"topic": "org.x.b", "msg": {}}"#)),
            Malformed::TopicMismatch {
                frame: "org.x.a".into(),
                envelope: "org.x.b".into()
            }
        );
    }

    #[test]
    fn an_envelope_without_a_msg_object_or_with_a_long_id_is_refused() {
        assert_eq!(
            refused(&raw("org.x.a", r#"{"topic": "org.x.a"}"#)),
            Malformed::MissingMsg
        );
        assert_eq!(
            refused(&raw("org.x.a", r#"{"topic": "org.x.a", "msg": null}"#)),
            Malformed::MsgNotObject("null")
        );
        assert_eq!(
            refused(&raw("org.x.a", r#"{"topic": "org.x.a", "msg": "hi"}"#)),
            Malformed::MsgNotObject("string")
        );
        let body = format!(
            r#"{{"topic": "org.x.a", "msg": {{}}, "msg_id": "{}"}}"#,
            "x".repeat(300)
        );
        assert_eq!(
            refused(&raw("org.x.a", &body)),
            Malformed::MsgIdTooLong { bytes: 300 }
        );
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            Malformed::FrameCount { sizes: vec![7] }.to_string(),
            "expected 2 frames (topic, JSON envelope), got 1 (frame sizes in bytes: [7]; \
             the dead letter's body is all frames concatenated)"
        );
        assert_eq!(
            Malformed::TopicMismatch {
                frame: "a".into(),
                envelope: "b".into()
            }
            .to_string(),
            r#"topic frame "a" disagrees with envelope topic "b""#
        );
        assert!(refused(&raw("org.x.a", "{not json"))
            .to_string()
            .starts_with("envelope is not valid JSON: key must be a string"));
    }

    #[test]
    fn valid_message_is_routed_to_the_events_exchange_under_its_topic() {
        let t = Topology::new("tb", &[]);
        let envelope = samples()
            .into_iter()
            .find(|s| s["msg_id"] == "2015-6395fb7a-e5a7-4b95-858a-ff7b80410e7f")
            .unwrap();
        let Routed::Event {
            id,
            outgoing,
            sequence,
        } = route(&t, &frames(&envelope), MAX, SOURCE)
        else {
            panic!("the Koji sample must be an event");
        };
        assert_eq!(id, "2015-6395fb7a-e5a7-4b95-858a-ff7b80410e7f");
        assert_eq!(sequence, None, "this old sample has no `i`");
        assert_eq!(outgoing.exchange, "tb.events");
        assert_eq!(
            outgoing.routing_key,
            "org.fedoraproject.prod.buildsys.build.state.change"
        );
        assert_eq!(outgoing.message_id.as_deref(), Some(id.as_str()));
        let event = Event::from_json(&outgoing.body).unwrap();
        assert_eq!(event.msg["name"], "ansible");
        assert_eq!(event.msg["new"], 1);
    }

    #[test]
    fn the_sequence_number_is_kept_with_its_sender() {
        let t = Topology::new("tb", &[]);
        let untag = samples()
            .into_iter()
            .find(|s| s["topic"] == "org.fedoraproject.prod.buildsys.untag")
            .unwrap();
        let Routed::Event { sequence, .. } = route(&t, &frames(&untag), MAX, SOURCE) else {
            panic!("the untag sample must be an event");
        };
        let sender = format!("{SOURCE} apache org.fedoraproject.prod.buildsys");
        assert_eq!(sequence, Some((sender, 85)));
        // A negative, fractional or textual `i` is no sequence number, and no reason to refuse.
        for odd in [
            serde_json::json!(-1),
            serde_json::json!(1.5),
            serde_json::json!("7"),
        ] {
            let mut e = untag.clone();
            e["i"] = odd.clone();
            let Routed::Event { sequence, .. } = route(&t, &frames(&e), MAX, SOURCE) else {
                panic!("`i` = {odd} must still be an event");
            };
            assert_eq!(sequence, None, "`i` = {odd}");
        }
    }

    #[test]
    fn refused_message_is_dead_lettered_raw_with_reason_and_topic() {
        let t = Topology::new("tb", &[]);
        let routed = route(&t, &raw("org.x.bad", "{not json"), MAX, SOURCE);
        let Routed::DeadLetter { reason, outgoing } = routed else {
            panic!("must be refused");
        };
        assert!(matches!(reason, Malformed::InvalidJson(_)));
        assert_eq!(outgoing.exchange, "tb.dead");
        assert_eq!(outgoing.routing_key, "tb.fedmsg-bridge");
        assert_eq!(outgoing.body, b"{not json");
        let header = |k: &str| {
            outgoing
                .headers
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header(REASON_HEADER), Some(reason.to_string()));
        assert_eq!(header(ROUTING_KEY_HEADER).as_deref(), Some("org.x.bad"));
        assert_eq!(header(FEDMSG_SOURCE_HEADER).as_deref(), Some(SOURCE));
        assert_eq!(header(TRUNCATED_FROM_HEADER), None);
    }

    #[test]
    fn dead_letters_keep_every_frame_and_are_cut_to_the_size_limit() {
        let t = Topology::new("tb", &[]);
        let three = vec![b"org.x".to_vec(), b"{}".to_vec(), b"tail".to_vec()];
        let out = route(&t, &three, MAX, SOURCE);
        assert_eq!(out.outgoing().body, b"org.x{}tail");
        assert!(out
            .outgoing()
            .headers
            .contains(&(ROUTING_KEY_HEADER.to_string(), "org.x".to_string())));

        let single = vec![b"just one frame".to_vec()];
        let out = route(&t, &single, MAX, SOURCE);
        assert_eq!(out.outgoing().body, b"just one frame");
        assert!(out
            .outgoing()
            .headers
            .contains(&(ROUTING_KEY_HEADER.to_string(), String::new())));

        let huge = raw("org.x.big", &"y".repeat(100));
        let Routed::DeadLetter { reason, outgoing } = route(&t, &huge, 50, SOURCE) else {
            panic!("oversized must be refused");
        };
        assert_eq!(
            reason,
            Malformed::Oversized {
                bytes: 109,
                max: 50
            }
        );
        assert_eq!(outgoing.body.len(), 50);
        assert!(outgoing
            .headers
            .contains(&(TRUNCATED_FROM_HEADER.to_string(), "100".to_string())));
    }

    #[test]
    fn long_topics_are_cut_at_a_character_boundary_in_dead_letters() {
        let t = Topology::new("tb", &[]);
        let topic = "é".repeat(200); // 400 bytes
        let out = route(&t, &raw(&topic, r#"{"msg": {}}"#), MAX, SOURCE);
        let key = out
            .outgoing()
            .headers
            .iter()
            .find(|(k, _)| k == ROUTING_KEY_HEADER)
            .map(|(_, v)| v.clone())
            .unwrap();
        assert_eq!(key, "é".repeat(127));
    }
}
