//! Dead letters, for `taskbot dlq`: read without removing, move back where they came from,
//! purge. Kept here with the rest of the AMQP code.

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::Channel;

use super::{incoming_from, Incoming, Outgoing, PublishError, Publisher};

/// Up to `max` messages of `queue`, left in it: they are fetched unacknowledged and then all
/// handed back (in their order) with one negative acknowledgement.
pub async fn peek(channel: &Channel, queue: &str, max: usize) -> lapin::Result<Vec<Incoming>> {
    let mut found = Vec::new();
    let mut last_tag = None;
    while found.len() < max {
        match channel.basic_get(queue, BasicGetOptions::default()).await? {
            Some(message) => {
                last_tag = Some(message.delivery.delivery_tag);
                found.push(incoming_from(&message.delivery));
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
}

/// Move up to `max` messages of the dead-letter queue `dead` to the queue `target` (through
/// the default exchange, so no other queue gets a copy), each removed from `dead` only once
/// the broker confirmed it in `target`: interrupted, a message is at worst in both, never in
/// neither. Taskbot's dead-letter headers are dropped. Returns how many moved.
pub async fn move_to(
    channel: &Channel,
    publisher: &Publisher,
    dead: &str,
    target: &str,
    max: usize,
) -> Result<usize, MoveError> {
    let mut moved = 0;
    while moved < max {
        let Some(message) = channel.basic_get(dead, BasicGetOptions::default()).await? else {
            break;
        };
        let incoming = incoming_from(&message.delivery);
        let mut out = Outgoing::new("", target, incoming.body.clone());
        out.headers = incoming
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("x-taskbot-"))
            .cloned()
            .collect();
        if let Some(id) = message.delivery.properties.message_id() {
            out.message_id = Some(id.to_string());
        }
        if let Err(err) = publisher.publish(&out).await {
            let _ = message
                .delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await;
            return Err(err.into());
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
