//! Dead letters, for `taskbot dlq`: read without removing, move back where they came from,
//! purge. Kept here with the rest of the AMQP code.
//!
//! A dead letter is made in one of two ways, and each records the route (exchange and routing
//! key) the message was first published on, which its dead-letter queue's routing key (the name
//! of the queue that refused it) does not say:
//! - a service refuses it ([`Outgoing::dead_letter`]): a new message on the dead-letter exchange
//!   with [`EXCHANGE_HEADER`] and [`ROUTING_KEY_HEADER`];
//! - the broker dead-letters it (rejected without requeue, expired, over a length limit: the
//!   work queues are declared with `x-dead-letter-exchange`, see `topology.rs`): the same message
//!   with an `x-death` header whose latest entry holds the `exchange` and `routing-keys` it had.
//!
//! [`first_route`] reads either; [`move_to`] puts a letter back on the queue that refused it
//! under that route's routing key.

use std::collections::BTreeMap;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

use super::{
    incoming_from, Incoming, Outgoing, PublishError, Publisher, EXCHANGE_HEADER, ROUTING_KEY_HEADER,
};

/// The header in which the broker records why and from where it dead-lettered a message.
pub const X_DEATH: &str = "x-death";

/// Where a message was first published: the exchange and routing key its publisher gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub exchange: String,
    pub routing_key: String,
}

/// A dead letter as read from its queue, with the route it was first published on when the
/// dead-lettering recorded one.
#[derive(Debug, Clone, PartialEq)]
pub struct Letter {
    pub incoming: Incoming,
    pub route: Option<Route>,
}

/// Text of a header value that is text.
fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The route a dead letter was first published on, from its headers: the broker's latest
/// `x-death` entry when there is one (the broker dead-lettered it last), else the headers a
/// service's dead letter carries. A message that `dlq retry` put back came through the default
/// exchange (`""`) with its first exchange in [`EXCHANGE_HEADER`], which is then used.
/// `None` when neither says (a dead letter made by hand).
pub fn first_route(headers: Option<&FieldTable>) -> Option<Route> {
    let table = headers?.inner();
    let header = |key: &str| table.get(key).and_then(text);
    if let Some(AMQPValue::FieldArray(deaths)) = table.get(X_DEATH) {
        if let Some(AMQPValue::FieldTable(latest)) = deaths.as_slice().first() {
            let latest = latest.inner();
            let routing_key = match latest.get("routing-keys") {
                Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(text),
                _ => None,
            };
            let exchange = latest
                .get("exchange")
                .and_then(text)
                .filter(|e| !e.is_empty())
                .or_else(|| header(EXCHANGE_HEADER))
                .unwrap_or_default();
            if let Some(routing_key) = routing_key {
                return Some(Route {
                    exchange,
                    routing_key,
                });
            }
        }
    }
    Some(Route {
        routing_key: header(ROUTING_KEY_HEADER)?,
        exchange: header(EXCHANGE_HEADER).unwrap_or_default(),
    })
}

fn letter(message: &BasicGetMessage) -> Letter {
    Letter {
        incoming: incoming_from(&message.delivery),
        route: first_route(message.delivery.properties.headers().as_ref()),
    }
}

/// Up to `max` messages of `queue`, left in it: they are fetched unacknowledged and then all
/// handed back (in their order) with one negative acknowledgement.
pub async fn peek(channel: &Channel, queue: &str, max: usize) -> lapin::Result<Vec<Incoming>> {
    let letters = peek_letters(channel, queue, max).await?;
    Ok(letters.into_iter().map(|l| l.incoming).collect())
}

/// [`peek`], with each letter's first route.
pub async fn peek_letters(
    channel: &Channel,
    queue: &str,
    max: usize,
) -> lapin::Result<Vec<Letter>> {
    let mut found = Vec::new();
    let mut last_tag = None;
    while found.len() < max {
        match channel.basic_get(queue, BasicGetOptions::default()).await? {
            Some(message) => {
                last_tag = Some(message.delivery.delivery_tag);
                found.push(letter(&message));
            }
            None => break,
        }
    }
    if let Some(tag) = last_tag {
        channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            )
            .await?;
    }
    Ok(found)
}

/// Why moving dead letters stopped.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{0}")]
    Broker(#[from] lapin::Error),
    #[error("{0}")]
    Publish(#[from] PublishError),
    /// The letter's routing key is the name of another queue, which the default exchange would
    /// give a copy.
    #[error(
        "a dead letter's routing key {0:?} is also the name of a queue, which would get a copy; \
         it was left in the dead-letter queue"
    )]
    RoutingKeyIsAQueue(String),
}

/// The message that puts `letter` back on the queue `target` alone: through the default exchange
/// with `target` in its `BCC`, under its first routing key, so the consumer sees the routing key
/// it would have seen (a sink tells statuses from results by it) and no other queue bound to the
/// first exchange gets a second copy (the other sinks, ResultsDB, the Fedora bus). The first
/// exchange is kept in [`EXCHANGE_HEADER`], for the next dead-lettering to record. Without a
/// known route, to `target` under its own name. The broker's and Taskbot's dead-letter headers
/// are dropped; the other headers, the message id and the priority are kept.
pub fn back_to(letter: &Letter, headers: Option<&FieldTable>, target: &str) -> Outgoing {
    let mut out = match &letter.route {
        Some(route) => {
            let mut out =
                Outgoing::new("", route.routing_key.clone(), letter.incoming.body.clone());
            out.bcc = vec![target.to_string()];
            if !route.exchange.is_empty() {
                out.headers
                    .push((EXCHANGE_HEADER.to_string(), route.exchange.clone()));
            }
            out
        }
        None => Outgoing::new("", target, letter.incoming.body.clone()),
    };
    let kept = headers.map(|t| t.inner().clone()).unwrap_or_default();
    for (key, value) in kept {
        let key = key.as_str();
        if key.starts_with("x-taskbot-") || key == X_DEATH || key == "BCC" || key == "CC" {
            continue;
        }
        match value {
            AMQPValue::Boolean(b) => out.bool_headers.push((key.to_string(), b)),
            AMQPValue::ShortShortInt(n) => out.int_headers.push((key.to_string(), n.into())),
            AMQPValue::ShortShortUInt(n) => out.int_headers.push((key.to_string(), n.into())),
            AMQPValue::ShortInt(n) => out.int_headers.push((key.to_string(), n.into())),
            AMQPValue::ShortUInt(n) => out.int_headers.push((key.to_string(), n.into())),
            AMQPValue::LongInt(n) => out.int_headers.push((key.to_string(), n.into())),
            AMQPValue::LongUInt(n) => out.int_headers.push((key.to_string(), n.into())),
            AMQPValue::LongLongInt(n) => out.int_headers.push((key.to_string(), n)),
            other => {
                if let Some(text) = text(&other) {
                    out.headers.push((key.to_string(), text));
                }
                // Tables, arrays, floats: no Taskbot publisher sends them; not carried over.
            }
        }
    }
    out
}

/// Move the messages of the dead-letter queue `dead` back to the queue `target` (see
/// [`back_to`]): at most `max`, and never more than the queue held when this started, so a
/// message refused again while this runs (which joins the queue's end) is not moved a second
/// time. Each is removed from `dead` only once the broker confirmed it in `target`: interrupted,
/// a message is at worst in both, never in neither. Returns how many moved.
pub async fn move_to(
    conn: &lapin::Connection,
    publisher: &Publisher,
    dead: &str,
    target: &str,
    max: usize,
) -> Result<usize, MoveError> {
    let channel = publisher.channel();
    let present = count(conn, dead).await?.unwrap_or(0) as usize;
    let mut moved = 0;
    // Whether a routing key names a queue (the default exchange would deliver there too).
    let mut is_queue: BTreeMap<String, bool> = BTreeMap::new();
    while moved < max.min(present) {
        let Some(message) = channel.basic_get(dead, BasicGetOptions::default()).await? else {
            break;
        };
        let letter = letter(&message);
        let out = back_to(
            &letter,
            message.delivery.properties.headers().as_ref(),
            target,
        );
        let key = out.routing_key.clone();
        let conflict = if out.bcc.is_empty() || key == target || key.is_empty() {
            false
        } else {
            match is_queue.get(&key) {
                Some(known) => *known,
                None => {
                    let exists = count(conn, &key).await?.is_some();
                    is_queue.insert(key.clone(), exists);
                    exists
                }
            }
        };
        let mut out = out;
        out.message_id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        out.priority = *message.delivery.properties.priority();
        let published = match conflict {
            true => Err(MoveError::RoutingKeyIsAQueue(key)),
            false => publisher.publish(&out).await.map_err(MoveError::from),
        };
        if let Err(err) = published {
            let _ = message
                .delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await;
            return Err(err);
        }
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await?;
        moved += 1;
    }
    Ok(moved)
}

/// Messages ready in `queue`, or `None` when it does not exist. On a channel of its own: a
/// passive declare of a missing queue closes its channel.
pub async fn count(conn: &lapin::Connection, queue: &str) -> lapin::Result<Option<u32>> {
    let channel = conn.create_channel().await?;
    let options = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match channel
        .queue_declare(queue, options, lapin::types::FieldTable::default())
        .await
    {
        Ok(q) => {
            let _ = channel.close(200, "counted").await;
            Ok(Some(q.message_count()))
        }
        Err(lapin::Error::ProtocolError(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove every message of `queue`; returns how many there were.
pub async fn purge(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    channel
        .queue_purge(queue, QueuePurgeOptions::default())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    fn table(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in pairs {
            t.insert(k.into(), v);
        }
        t
    }

    fn long(s: &str) -> AMQPValue {
        AMQPValue::LongString(s.into())
    }

    fn x_death(exchange: &str, key: &str) -> AMQPValue {
        let entry = table(vec![
            ("queue", long("tb.rules")),
            ("reason", long("rejected")),
            ("count", AMQPValue::LongLongInt(1)),
            ("exchange", long(exchange)),
            (
                "routing-keys",
                AMQPValue::FieldArray(FieldArray::from(vec![long(key)])),
            ),
        ]);
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)]))
    }

    fn route(exchange: &str, routing_key: &str) -> Option<Route> {
        Some(Route {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        })
    }

    #[test]
    fn the_first_route_is_read_from_x_death_or_taskbots_headers() {
        let broker = table(vec![(X_DEATH, x_death("tb.events", "org.example.a"))]);
        assert_eq!(
            first_route(Some(&broker)),
            route("tb.events", "org.example.a")
        );
        let service = table(vec![
            (ROUTING_KEY_HEADER, long("job.done")),
            (EXCHANGE_HEADER, long("tb.results")),
        ]);
        assert_eq!(first_route(Some(&service)), route("tb.results", "job.done"));
        // Put back by `dlq retry` (default exchange), then dead-lettered by the broker.
        let again = table(vec![
            (X_DEATH, x_death("", "org.example.a")),
            (EXCHANGE_HEADER, long("tb.events")),
        ]);
        assert_eq!(
            first_route(Some(&again)),
            route("tb.events", "org.example.a")
        );
        assert_eq!(first_route(Some(&table(vec![]))), None);
        assert_eq!(first_route(None), None);
    }

    #[test]
    fn a_letter_goes_back_to_its_queue_alone_under_its_first_routing_key() {
        let headers = table(vec![
            (X_DEATH, x_death("tb.results", "job.done")),
            ("x-taskbot-reason", long("no")),
            ("fedora_messaging_severity", AMQPValue::LongLongInt(20)),
            ("fedora_messaging_rpm_xchat", AMQPValue::Boolean(true)),
            ("sent-at", long("2026-01-01T00:00:00+00:00")),
        ]);
        let letter = Letter {
            incoming: Incoming::new("tb.sink.jsonl", b"{}".to_vec()),
            route: first_route(Some(&headers)),
        };
        let out = back_to(&letter, Some(&headers), "tb.sink.jsonl");
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("", "job.done")
        );
        assert_eq!(out.bcc, ["tb.sink.jsonl"]);
        assert_eq!(
            out.headers,
            [
                (EXCHANGE_HEADER.to_string(), "tb.results".to_string()),
                (
                    "sent-at".to_string(),
                    "2026-01-01T00:00:00+00:00".to_string()
                )
            ]
        );
        assert_eq!(
            out.int_headers,
            [("fedora_messaging_severity".to_string(), 20)]
        );
        assert_eq!(
            out.bool_headers,
            [("fedora_messaging_rpm_xchat".to_string(), true)]
        );
        // No route known: to the queue under its own name, as before.
        let bare = Letter {
            incoming: Incoming::new("tb.rules", b"{}".to_vec()),
            route: None,
        };
        let out = back_to(&bare, None, "tb.rules");
        assert_eq!(
            (out.exchange.as_str(), out.routing_key.as_str()),
            ("", "tb.rules")
        );
        assert!(out.bcc.is_empty());
    }
}
