//! The messages of the AMQP layer as plain data: what a handler publishes ([`Outgoing`]), what
//! it is given ([`Incoming`]) and what it decides ([`Disposition`]). Kept free of broker
//! handles, so handlers and their tests never need a connection.

use chrono::Utc;
use lapin::types::AMQPValue;

use crate::topology::Topology;

/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-taskbot-reason";
/// Header naming the queue (or source) a dead letter was taken from.
pub const SOURCE_HEADER: &str = "x-taskbot-source";
/// Header with the dead letter's original routing key.
pub const ROUTING_KEY_HEADER: &str = "x-taskbot-routing-key";
/// Header with the dead letter's original exchange.
pub const EXCHANGE_HEADER: &str = "x-taskbot-exchange";

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    /// AMQP `message_id`: lets consumers and people correlate redeliveries.
    pub message_id: Option<String>,
    pub priority: Option<u8>,
    pub headers: Vec<(String, String)>,
    /// Integer-valued headers (sent as AMQP long-long integers), for consumers that check header
    /// types, such as fedora-messaging's `fedora_messaging_severity`.
    pub int_headers: Vec<(String, i64)>,
    /// Boolean-valued headers, such as fedora-messaging's filter flags
    /// (`fedora_messaging_rpm_<name>` = `true`), which its library sends as AMQP booleans.
    pub bool_headers: Vec<(String, bool)>,
    /// AMQP `content_encoding` (fedora-messaging consumers expect `utf-8`).
    pub content_encoding: Option<String>,
    /// Queues that also get the message, by name, whatever the exchange and routing key (sent as
    /// RabbitMQ's `BCC` header, which the broker removes before delivery). With the default
    /// exchange (`""`) this delivers to exactly these queues while the consumer still sees the
    /// routing key given: how `taskbot dlq retry` puts a dead letter back on the one queue that
    /// refused it under its original routing key.
    pub bcc: Vec<String>,
}

impl Outgoing {
    pub fn new(exchange: impl Into<String>, routing_key: impl Into<String>, body: Vec<u8>) -> Self {
        Outgoing {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body,
            message_id: None,
            priority: None,
            headers: Vec::new(),
            int_headers: Vec::new(),
            bool_headers: Vec::new(),
            content_encoding: None,
            bcc: Vec::new(),
        }
    }

    pub fn with_int_header(mut self, key: &str, value: i64) -> Self {
        self.int_headers.push((key.to_string(), value));
        self
    }

    pub fn with_bool_header(mut self, key: &str, value: bool) -> Self {
        self.bool_headers.push((key.to_string(), value));
        self
    }

    pub fn with_content_encoding(mut self, encoding: impl Into<String>) -> Self {
        self.content_encoding = Some(encoding.into());
        self
    }

    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    pub fn with_priority(mut self, priority: u8) -> Self {
        self.priority = Some(priority);
        self
    }

    pub fn with_header(mut self, key: &str, value: impl Into<String>) -> Self {
        self.headers.push((key.to_string(), value.into()));
        self
    }

    /// A dead letter: the original body, routed to the dead-letter exchange under the name of the
    /// queue it came from, with the reason in a header, and the exchange and routing key it was
    /// first published with (what `taskbot dlq retry` puts it back under). A message `dlq retry`
    /// already put back came through the default exchange, carrying its first exchange in
    /// [`EXCHANGE_HEADER`]: that one is kept.
    pub fn dead_letter(
        topology: &Topology,
        source: &str,
        incoming: &Incoming,
        reason: &str,
    ) -> Outgoing {
        let exchange = match incoming.exchange.as_str() {
            "" => incoming.header(EXCHANGE_HEADER).unwrap_or_default(),
            exchange => exchange,
        };
        Outgoing::new(
            topology.dead_letter_exchange(),
            source,
            incoming.body.clone(),
        )
        .with_header(REASON_HEADER, reason)
        .with_header(SOURCE_HEADER, source)
        .with_header(ROUTING_KEY_HEADER, incoming.routing_key.clone())
        .with_header(EXCHANGE_HEADER, exchange.to_string())
        .with_header("x-taskbot-dead-at", Utc::now().to_rfc3339())
    }
}

/// A delivery as handlers see it: plain data, so handlers are testable without a broker.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Incoming {
    pub body: Vec<u8>,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub headers: Vec<(String, String)>,
    /// The AMQP `user_id` property: the broker user that published the message. RabbitMQ
    /// refuses a publish whose `user_id` differs from the connection's user (unless that user is
    /// tagged `impersonator`), so with one broker user per service this says which *service*
    /// sent it, which a message body (any field of it) cannot. `None` when the publisher did not
    /// set it (every Taskbot publisher does, [`crate::amqp::Publisher`]).
    pub user_id: Option<String>,
}

impl Incoming {
    /// A delivery with just a body and routing key (for tests and replays).
    pub fn new(routing_key: &str, body: Vec<u8>) -> Self {
        Incoming {
            body,
            routing_key: routing_key.to_string(),
            ..Default::default()
        }
    }

    /// The same delivery, as published by broker user `user` (for tests).
    pub fn with_user_id(mut self, user: &str) -> Self {
        self.user_id = Some(user.to_string());
        self
    }

    pub fn header(&self, key: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// What to do with an input once it has been handled.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Publish these (each confirmed by the broker), then ack the input.
    Done(Vec<Outgoing>),
    /// The input can never be handled: copy it to its dead-letter queue with this reason, then
    /// ack it.
    DeadLetter(String),
    /// A transient failure (a database or remote service down): hand the input back to the queue
    /// after a pause, and try again.
    Retry(String),
}

/// The plain-data view of a delivery that handlers get.
pub(crate) fn incoming_from(delivery: &lapin::message::Delivery) -> Incoming {
    let mut headers = Vec::new();
    if let Some(table) = delivery.properties.headers() {
        for (k, v) in table.inner() {
            let value = match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.to_string(),
                other => format!("{other:?}"),
            };
            headers.push((k.to_string(), value));
        }
    }
    Incoming {
        body: delivery.data.clone(),
        exchange: delivery.exchange.to_string(),
        routing_key: delivery.routing_key.to_string(),
        redelivered: delivery.redelivered,
        headers,
        user_id: delivery
            .properties
            .user_id()
            .as_ref()
            .map(|u| u.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_body_and_says_why() {
        let t = Topology::new("tb", &[]);
        let incoming = Incoming::new("org.x", b"{bad".to_vec());
        let out = Outgoing::dead_letter(&t, "tb.rules", &incoming, "body is not JSON");
        assert_eq!(out.exchange, "tb.dead");
        assert_eq!(out.routing_key, "tb.rules");
        assert_eq!(out.body, b"{bad");
        assert!(out
            .headers
            .contains(&(REASON_HEADER.to_string(), "body is not JSON".to_string())));
        assert!(out
            .headers
            .contains(&(ROUTING_KEY_HEADER.to_string(), "org.x".to_string())));
    }

    #[test]
    fn a_retried_dead_letter_keeps_its_first_exchange() {
        let t = Topology::new("tb", &[]);
        let header = |out: &Outgoing, key: &str| {
            out.headers
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let first = Incoming {
            exchange: "tb.events".into(),
            ..Incoming::new("org.x", b"{}".to_vec())
        };
        let out = Outgoing::dead_letter(&t, "tb.rules", &first, "no");
        assert_eq!(header(&out, EXCHANGE_HEADER).as_deref(), Some("tb.events"));
        // Put back by `dlq retry`: through the default exchange, the first one in a header.
        let retried = Incoming {
            headers: vec![(EXCHANGE_HEADER.into(), "tb.events".into())],
            ..Incoming::new("org.x", b"{}".to_vec())
        };
        let out = Outgoing::dead_letter(&t, "tb.rules", &retried, "still no");
        assert_eq!(header(&out, EXCHANGE_HEADER).as_deref(), Some("tb.events"));
        assert_eq!(header(&out, ROUTING_KEY_HEADER).as_deref(), Some("org.x"));
    }
}
