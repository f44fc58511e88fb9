//! What the bridge does with one delivery from the external broker: an event for the events
//! exchange, a dead letter with the reason, or nothing (a message Taskbot published itself).
//! Pure (apart from the clock for `received_at`), so it is unit-tested without a broker; the
//! mapping itself is shared with `taskbot replay` ([`taskbot::fedora_messaging`]).

use taskbot::amqp::{Incoming, Outgoing};
use taskbot::fedora_messaging::{from_delivery, Delivery, Refused, NAMESPACE_HEADER};
use taskbot::routes::Publishable;
use taskbot::Topology;

/// Header of a dead letter naming the external broker it came from (`host:port/vhost`).
pub const EXTERNAL_SOURCE_HEADER: &str = "x-taskbot-fedora-messaging-source";
/// Header of a dead letter with the delivery's AMQP `message_id`, when it had one.
pub const MESSAGE_ID_HEADER: &str = "x-taskbot-message-id";
/// Header of a dead letter whose body was cut to the size limit: the original size.
pub const TRUNCATED_FROM_HEADER: &str = "x-taskbot-truncated-from";

/// The decision for one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// To the events exchange under its topic.
    Event {
        id: String,
        topic: String,
        outgoing: Outgoing,
    },
    /// To the dead-letter exchange under the bridge's pseudo-queue.
    DeadLetter { reason: Refused, outgoing: Outgoing },
    /// Published by this deployment's own fedora-messaging sink ([`NAMESPACE_HEADER`] is this
    /// namespace): acked and dropped, never an event, so Taskbot's results do not loop back in.
    Own,
}

impl Routed {
    /// What to publish, if anything.
    pub fn outgoing(&self) -> Option<&Outgoing> {
        match self {
            Routed::Event { outgoing, .. } | Routed::DeadLetter { outgoing, .. } => Some(outgoing),
            Routed::Own => None,
        }
    }
}

/// Decide what to publish for `delivery`, received from `source` (`host:port/vhost` of the
/// external broker); `max_bytes` bounds the body.
pub fn route(topology: &Topology, delivery: &Delivery, max_bytes: usize, source: &str) -> Routed {
    if delivery.header_str(NAMESPACE_HEADER) == Some(topology.namespace.as_str()) {
        return Routed::Own;
    }
    match from_delivery(delivery, max_bytes, &format!("fedora-messaging:{source}")) {
        Ok(event) => Routed::Event {
            outgoing: event.outgoing(topology),
            id: event.id,
            topic: event.topic,
        },
        Err(reason) => Routed::DeadLetter {
            outgoing: dead_letter(topology, delivery, &reason, max_bytes, source),
            reason,
        },
    }
}

/// The dead letter of a refused delivery: its body (cut to `max_bytes`, the original size in a
/// header, so a flood of huge messages cannot fill Taskbot's broker), its routing key and
/// message id, the reason, and where it came from.
pub fn dead_letter(
    topology: &Topology,
    delivery: &Delivery,
    reason: &Refused,
    max_bytes: usize,
    source: &str,
) -> Outgoing {
    let mut body = delivery.body.clone();
    body.truncate(max_bytes);
    let incoming = Incoming::new(&delivery.routing_key, body);
    let mut out = Outgoing::dead_letter(
        topology,
        &topology.fedora_messaging_bridge_source(),
        &incoming,
        &reason.to_string(),
    )
    .with_header(EXTERNAL_SOURCE_HEADER, source);
    if let Some(id) = &delivery.message_id {
        out = out.with_header(
            MESSAGE_ID_HEADER,
            taskbot::fedora_messaging::shorten(id, 255),
        );
    }
    if delivery.body.len() > max_bytes {
        out = out.with_header(TRUNCATED_FROM_HEADER, delivery.body.len().to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use taskbot::amqp::{REASON_HEADER, ROUTING_KEY_HEADER};
    use taskbot::messages::{Event, Message};

    const SOURCE: &str = "broker:5671/%2Fpublic_pubsub";

    fn delivery(body: &[u8]) -> Delivery {
        Delivery {
            routing_key: "org.fedoraproject.prod.bodhi.update.request.testing".into(),
            body: body.to_vec(),
            message_id: Some("0b5f1c2e-3d4a-4b5c-9d6e-7f8091a2b3c4".into()),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            headers: json!({"fedora_messaging_schema": "bodhi.update.request.testing.v1",
                            "sent-at": "2026-03-01T10:20:30+00:00"})
            .as_object()
            .unwrap()
            .clone(),
        }
    }

    fn header<'a>(out: &'a Outgoing, key: &str) -> Option<&'a str> {
        out.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_valid_delivery_is_an_event_on_the_events_exchange_under_its_topic() {
        let t = Topology::new("tb", &[]);
        let d = delivery(br#"{"agent": "alice", "update": {"alias": "FEDORA-2026-1"}}"#);
        let Routed::Event {
            id,
            topic,
            outgoing,
        } = route(&t, &d, 1000, SOURCE)
        else {
            panic!("must be an event");
        };
        assert_eq!(id, "0b5f1c2e-3d4a-4b5c-9d6e-7f8091a2b3c4");
        assert_eq!(topic, d.routing_key);
        assert_eq!(outgoing.exchange, "tb.events");
        assert_eq!(outgoing.routing_key, d.routing_key);
        assert_eq!(outgoing.message_id.as_deref(), Some(id.as_str()));
        let event = Event::from_json(&outgoing.body).unwrap();
        assert_eq!(event.source, format!("fedora-messaging:{SOURCE}"));
        assert_eq!(event.msg["update"]["alias"], "FEDORA-2026-1");
        assert_eq!(
            event.headers["fedora_messaging_schema"],
            "bodhi.update.request.testing.v1"
        );
    }

    #[test]
    fn a_refused_delivery_is_dead_lettered_raw_with_reason_source_and_id() {
        let t = Topology::new("tb", &[]);
        let Routed::DeadLetter { reason, outgoing } = route(&t, &delivery(b"[1]"), 1000, SOURCE)
        else {
            panic!("an array body must be refused");
        };
        assert_eq!(reason, Refused::NotAnObject("array"));
        assert_eq!(outgoing.exchange, "tb.dead");
        assert_eq!(outgoing.routing_key, "tb.fedora-messaging-bridge");
        assert_eq!(outgoing.body, b"[1]");
        assert_eq!(
            header(&outgoing, REASON_HEADER),
            Some("body is a JSON array, not an object")
        );
        assert_eq!(
            header(&outgoing, ROUTING_KEY_HEADER),
            Some("org.fedoraproject.prod.bodhi.update.request.testing")
        );
        assert_eq!(header(&outgoing, EXTERNAL_SOURCE_HEADER), Some(SOURCE));
        assert_eq!(
            header(&outgoing, MESSAGE_ID_HEADER),
            Some("0b5f1c2e-3d4a-4b5c-9d6e-7f8091a2b3c4")
        );
        assert_eq!(header(&outgoing, TRUNCATED_FROM_HEADER), None);
    }

    #[test]
    fn an_oversized_delivery_is_cut_in_its_dead_letter() {
        let t = Topology::new("tb", &[]);
        let body = format!(r#"{{"x": "{}"}}"#, "y".repeat(100));
        let routed = route(&t, &delivery(body.as_bytes()), 50, SOURCE);
        let Routed::DeadLetter { reason, outgoing } = routed else {
            panic!("must be refused");
        };
        assert_eq!(
            reason,
            Refused::Oversized {
                bytes: 109,
                max: 50
            }
        );
        assert_eq!(outgoing.body.len(), 50);
        assert_eq!(header(&outgoing, TRUNCATED_FROM_HEADER), Some("109"));
    }

    #[test]
    fn taskbots_own_messages_are_dropped_but_other_namespaces_are_taken() {
        let t = Topology::new("tb", &[]);
        let mut d = delivery(br#"{"result": 1}"#);
        d.headers.insert(NAMESPACE_HEADER.into(), json!("tb"));
        assert_eq!(route(&t, &d, 1000, SOURCE), Routed::Own);
        assert_eq!(route(&t, &d, 1000, SOURCE).outgoing(), None);
        // Another Taskbot deployment's results are events like any bus message.
        d.headers.insert(NAMESPACE_HEADER.into(), json!("staging"));
        assert!(matches!(route(&t, &d, 1000, SOURCE), Routed::Event { .. }));
    }
}
