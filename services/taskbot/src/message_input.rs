//! Reading the messages a rules dry run is tried on and `taskbot replay` publishes: a file or
//! stdin holding one message, a JSON array of them, one per line (JSONL, like
//! `tests/fixtures/fedmsg-real.jsonl`), or a datagrepper page (`{"raw_messages": [...]}`). A
//! message is a fedmsg envelope (what the ZeroMQ bus sends), a fedora-messaging message in its
//! serialized form (`{"topic", "headers", "id", "body", ...}`, what `fedora-messaging publish`
//! reads and its consumers dump), a datagrepper message, or a Taskbot event (what the bridges
//! publish).
//!
//! Envelopes go through the fedmsg bridge's own parser ([`taskbot_fedmsg_bridge::parse_fedmsg`]),
//! fedora-messaging and datagrepper messages through the fedora-messaging bridge's mapping
//! ([`taskbot::fedora_messaging`]), so the event, its id (derived ids included) and therefore
//! every job id are the ones the deployment would produce for that bus message.

use std::io::Read as _;

use serde_json::Value;
use taskbot::fedora_messaging;
use taskbot::messages::{Event, Message};
use taskbot_fedmsg_bridge::parse_fedmsg;

/// One message of the input, turned into the event the rules service would receive.
#[derive(Debug, Clone, PartialEq)]
pub struct InputMessage {
    /// 1-based line of a JSONL input; `None` for a single JSON document or an array element.
    pub line: Option<usize>,
    pub event: Event,
}

/// Read `spec` (a path, or `-` for stdin). Returns the name to use in messages and the text.
pub fn read(spec: &str) -> Result<(String, String), String> {
    if spec == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read the message from stdin: {e}"))?;
        return Ok(("<stdin>".into(), text));
    }
    let text = std::fs::read_to_string(spec)
        .map_err(|e| format!("cannot read the message file {spec}: {e}"))?;
    Ok((spec.to_string(), text))
}

/// Every message of `text`, or every problem found (one line each, starting with
/// `name:` or `name:line:`). `max_bytes` is the bridge's size limit (`bridge.max_message_bytes`).
pub fn parse(name: &str, text: &str, max_bytes: usize) -> Result<Vec<InputMessage>, Vec<String>> {
    if text.trim().is_empty() {
        return Err(vec![format!(
            "{name}: no message (the input is empty); expected a fedmsg envelope or a \
             taskbot.event.v1 event as JSON"
        )]);
    }
    let source = format!("taskbot-cli:{name}");
    let mut messages = Vec::new();
    let mut problems = Vec::new();
    let document = match serde_json::from_str::<Value>(text) {
        // A datagrepper page: its messages.
        Ok(Value::Object(mut page)) if page.get("raw_messages").is_some_and(Value::is_array) => {
            Ok(page.remove("raw_messages").unwrap_or_default())
        }
        other => other,
    };
    match document {
        // One document: a message, or an array of them.
        Ok(Value::Array(items)) => {
            for (index, item) in items.into_iter().enumerate() {
                match to_event(item, max_bytes, &source) {
                    Ok(event) => messages.push(InputMessage { line: None, event }),
                    Err(e) => problems.push(format!("{name}: element {index}: {e}")),
                }
            }
        }
        Ok(value) => match to_event(value, max_bytes, &source) {
            Ok(event) => messages.push(InputMessage { line: None, event }),
            Err(e) => problems.push(format!("{name}: {e}")),
        },
        // Not one document: one message per line.
        Err(_) => {
            for (index, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let number = index + 1;
                let parsed = serde_json::from_str::<Value>(line)
                    .map_err(|e| format!("not valid JSON: {e}"))
                    .and_then(|value| to_event(value, max_bytes, &source));
                match parsed {
                    Ok(event) => messages.push(InputMessage {
                        line: Some(number),
                        event,
                    }),
                    Err(e) => problems.push(format!("{name}:{number}: {e}")),
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if messages.is_empty() {
        return Err(vec![format!("{name}: no message (an empty list)")]);
    }
    Ok(messages)
}

/// A fedmsg envelope or a Taskbot event, as the event the rules service would receive.
pub fn to_event(value: Value, max_bytes: usize, source: &str) -> Result<Event, String> {
    let Value::Object(fields) = &value else {
        return Err(format!(
            "expected a JSON object (a fedmsg envelope, a fedora-messaging message or a \
             taskbot.event.v1 event), found {}",
            kind(&value)
        ));
    };
    let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    if fields.contains_key("schema") {
        return Event::from_json(&bytes).map_err(|e| format!("not a Taskbot event: {e}"));
    }
    if fedora_messaging::is_serialized(fields) {
        return fedora_messaging::from_serialized(fields, source)
            .map_err(|e| format!("not a fedora-messaging message: {e}"));
    }
    if fedora_messaging::is_datagrepper_amqp(fields) {
        return fedora_messaging::from_datagrepper(fields, source)
            .map_err(|e| format!("not a datagrepper message: {e}"));
    }
    // An empty topic frame: the bridge then takes the envelope's `topic`, as it does for
    // messages whose frame and envelope agree.
    parse_fedmsg(&[Vec::new(), bytes], max_bytes, source).map_err(|e| {
        format!(
            "not a fedmsg envelope ({{\"topic\", \"msg\", ...}}) nor a Taskbot event \
             (\"schema\": \"taskbot.event.v1\"): {e}"
        )
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024 * 1024;
    const KOJI: &str = r#"{"msg": {"name": "ansible", "new": 1}, "msg_id": "2015-6395fb7a", "timestamp": 1424216566.0, "topic": "org.fedoraproject.prod.buildsys.build.state.change"}"#;

    #[test]
    fn envelope_becomes_the_bridges_event() {
        let messages = parse("m.json", KOJI, MAX).unwrap();
        assert_eq!(messages.len(), 1);
        let event = &messages[0].event;
        assert_eq!(messages[0].line, None);
        assert_eq!(event.id, "2015-6395fb7a");
        assert_eq!(
            event.topic,
            "org.fedoraproject.prod.buildsys.build.state.change"
        );
        assert_eq!(event.msg["name"], "ansible");
        assert_eq!(event.sent_at, Some(1424216566.0));
    }

    #[test]
    fn envelope_without_msg_id_gets_the_bridges_derived_id() {
        let text = r#"{"msg": {"a": 1}, "topic": "org.x.prod.a", "i": 3}"#;
        let ours = parse("m.json", text, MAX).unwrap()[0].event.id.clone();
        let frames = [b"org.x.prod.a".to_vec(), text.as_bytes().to_vec()];
        let bridge = parse_fedmsg(&frames, MAX, "fedmsg:tcp://x").unwrap().id;
        assert!(ours.starts_with("derived-"), "{ours}");
        assert_eq!(ours, bridge);
    }

    #[test]
    fn taskbot_event_is_accepted_and_checked() {
        let event = r#"{"schema": "taskbot.event.v1", "id": "e1", "topic": "org.x.a",
                        "source": "s", "received_at": "2024-01-01T00:00:00Z", "msg": {"k": 2}}"#;
        let messages = parse("e.json", event, MAX).unwrap();
        assert_eq!(messages[0].event.id, "e1");
        assert_eq!(messages[0].event.msg["k"], 2);

        let err = parse("e.json", r#"{"schema": "taskbot.job-request.v1"}"#, MAX).unwrap_err();
        assert_eq!(
            err,
            [
                "e.json: not a Taskbot event: expected schema taskbot.event.v1, \
              found taskbot.job-request.v1"
            ]
        );
    }

    #[test]
    fn jsonl_and_arrays_give_one_message_each_with_lines() {
        let text = format!("{KOJI}\n\n{KOJI}\n");
        let messages = parse("m.jsonl", &text, MAX).unwrap();
        let lines: Vec<_> = messages.iter().map(|m| m.line).collect();
        assert_eq!(lines, [Some(1), Some(3)]);
        let messages = parse("m.json", &format!("[{KOJI}, {KOJI}]"), MAX).unwrap();
        assert_eq!(messages.len(), 2);
    }

    /// One line of what fedora-messaging's `message.dumps` writes (keys sorted, as it does).
    const SERIALIZED: &str = r#"{"body": {"agent": "alice", "update": {"alias": "FEDORA-2026-1"}}, "headers": {"fedora_messaging_schema": "bodhi.update.request.testing.v1", "fedora_messaging_severity": 20, "priority": 0, "sent-at": "2026-03-01T10:20:30+00:00"}, "id": "0b5f1c2e-3d4a-4b5c-9d6e-7f8091a2b3c4", "priority": null, "queue": null, "topic": "org.fedoraproject.prod.bodhi.update.request.testing"}"#;

    #[test]
    fn fedora_messaging_dumps_and_datagrepper_pages_become_the_bridges_events() {
        let messages = parse("dump.jsonl", &format!("{SERIALIZED}\n{SERIALIZED}\n"), MAX).unwrap();
        assert_eq!(messages.len(), 2);
        let event = &messages[0].event;
        assert_eq!(event.id, "0b5f1c2e-3d4a-4b5c-9d6e-7f8091a2b3c4");
        assert_eq!(
            event.topic,
            "org.fedoraproject.prod.bodhi.update.request.testing"
        );
        assert_eq!(event.msg["update"]["alias"], "FEDORA-2026-1");
        assert_eq!(event.headers["fedora_messaging_severity"], 20);
        let serialized: Value = serde_json::from_str(SERIALIZED).unwrap();
        let page = serde_json::json!({
            "arguments": {"page": 1, "rows_per_page": 100}, "count": 2, "pages": 1, "total": 2,
            "raw_messages": [
                {"headers": serialized["headers"], "msg": serialized["body"],
                 "msg_id": serialized["id"], "topic": serialized["topic"], "i": 0,
                 "timestamp": 1772360430.0, "username": null, "certificate": null,
                 "signature": null, "crypto": null, "source_name": "datanommer",
                 "source_version": "1.4.0"},
                serde_json::from_str::<Value>(KOJI).unwrap(),
            ],
        });
        let messages = parse("page.json", &page.to_string(), MAX).unwrap();
        let (amqp, fedmsg) = (&messages[0].event, &messages[1].event);
        assert_eq!(amqp.id, event.id);
        assert_eq!(amqp.headers, event.headers);
        assert_eq!(amqp.sent_at, event.sent_at);
        assert_eq!(
            fedmsg.id, "2015-6395fb7a",
            "an older message maps as the fedmsg bridge's"
        );
        let bad = r#"{"topic": "a.b", "body": [1], "id": "x"}"#;
        assert_eq!(
            parse("bad.json", bad, MAX).unwrap_err(),
            ["bad.json: not a fedora-messaging message: body is a JSON array, not an object"]
        );
    }

    #[test]
    fn invalid_messages_are_refused_with_their_place() {
        let text = format!("{KOJI}\n{{not json\n{{\"topic\": \"a.b\"}}\n42\n");
        let problems = parse("m.jsonl", &text, MAX).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("m.jsonl:2: not valid JSON"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("m.jsonl:3: not a fedmsg envelope")
                && problems[1].ends_with("envelope has no `msg`"),
            "{problems:?}"
        );
        assert!(problems[2].contains("found a number"), "{problems:?}");
        assert!(parse("m", "  \n", MAX).unwrap_err()[0].contains("the input is empty"));
        assert!(parse("m", "[]", MAX).unwrap_err()[0].contains("an empty list"));
        // The bridge's limits apply.
        let err = parse("m", KOJI, 10).unwrap_err();
        assert!(err[0].contains("over the limit of 10"), "{err:?}");
    }
}
