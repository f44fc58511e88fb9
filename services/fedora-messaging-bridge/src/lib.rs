//! The `fedora-messaging-bridge` service: consumes Fedora's AMQP bus (fedora-messaging, on an
//! external broker, [`ExternalBroker`]) and republishes every message as a Taskbot
//! [`Event`](taskbot::Event) on the events exchange of Taskbot's broker, routing key = topic.
//! Deliveries that cannot be events are dead-lettered on Taskbot's side with the reason, under
//! `<namespace>.fedora-messaging-bridge`, and acked on the external broker (never a redelivery
//! loop). Messages Taskbot's own fedora-messaging sink published are acked and dropped.
//!
//! At-least-once: an external delivery is acked only once Taskbot's broker confirmed what it
//! became. Deliveries are handled concurrently, up to the prefetch, so the bridge is not held to
//! one confirm round trip per message (events may therefore reach the events exchange in another
//! order than the bus sent them; nothing downstream depends on order).
//!
//! Each broker is reconnected to on its own: while Taskbot's is away, publishes wait (and the
//! external deliveries stay unacked, at most a prefetch of them); while the external one is away,
//! the bridge reconnects with back-off. On a durable queue (`fedora_messaging_bridge.queue`)
//! nothing is lost; on the public vhost's exclusive queue, whatever was published while the
//! bridge was disconnected is gone with the queue, and the bridge logs that gap with its time
//! span (and counts it, [`GAPS_METRIC`]) so it can be backfilled from datagrepper with `taskbot
//! replay --since … --until …`.

mod route;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use taskbot::amqp::{Backoff, ExternalBroker, ReliablePublisher};
use taskbot::config::FedoraMessagingBridgeConfig;
use taskbot::fedora_messaging::Delivery;
use taskbot::{Config, Shutdown, Topology};
use tokio::task::JoinSet;

pub use route::{
    dead_letter, route, Routed, EXTERNAL_SOURCE_HEADER, MESSAGE_ID_HEADER, TRUNCATED_FROM_HEADER,
};

/// The `/metrics` counter of bus messages by what became of them (`outcome`: `received`,
/// `published`, `dead_lettered`, `own` (Taskbot's own, dropped), `dropped` (shutdown came
/// before Taskbot's broker confirmed; redelivered later on a durable queue)) and topic.
pub const MESSAGES_METRIC: &str = "taskbot_fedora_messaging_bridge_messages_total";
/// The `/metrics` counter of gaps: reconnections to an exclusive queue, each a span of time
/// whose messages never reached the bridge.
pub const GAPS_METRIC: &str = "taskbot_fedora_messaging_bridge_gaps_total";
/// Distinct topics labelled on `/metrics`; the others count under `other`, so a bus inventing
/// topics cannot grow the exposition without bound.
pub const MAX_TOPIC_LABELS: usize = 500;
/// How often the counters are logged.
const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// The longest shutdown waits for deliveries being published.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Run until `shutdown`. Fails only at start, on a configuration that cannot work (unreadable
/// certificates, no topic to bind).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let fm = config.fedora_messaging_bridge.clone();
    let external = ExternalBroker::new(&fm).map_err(anyhow::Error::msg)?;
    if fm.topics.is_empty() && !(fm.queue.is_some() && fm.queue_passive) {
        bail!("fedora_messaging_bridge.topics is empty: the queue would receive nothing");
    }
    let topology = Topology::for_config(&config);
    let name = taskbot::instance_name("fedora-messaging-bridge");
    let bridge = Arc::new(Bridge {
        publisher: ReliablePublisher::new(config.amqp.clone(), topology.clone(), &name),
        topology,
        source: external.describe(),
        counters: Counters::new(),
        max_bytes: fm.max_message_bytes,
    });
    tracing::info!(broker = %bridge.source, user = external.user(),
        queue = fm.queue.as_deref().unwrap_or("(exclusive, UUID-named)"), topics = ?fm.topics,
        "starting");
    bridge.publisher.connect(&mut shutdown.clone()).await;
    let mut tasks = JoinSet::new();
    bridge
        .clone()
        .consume(&external, &fm, &config, &name, &mut tasks, &shutdown)
        .await;
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("deliveries still being published at shutdown; they stay unacked");
    }
    bridge.publisher.close().await;
    bridge.counters.log("bridge stopped");
    Ok(())
}

/// What the bridge has done since it started ([`MESSAGES_METRIC`]).
struct Counters {
    family: taskbot::ops::CounterFamily,
    topics: Mutex<HashSet<String>>,
    gaps: taskbot::ops::Counter,
}

impl Counters {
    fn new() -> Counters {
        let registry = &taskbot::ops::global().registry;
        Counters {
            family: registry.counter(
                MESSAGES_METRIC,
                "fedora-messaging messages by what became of them (received, published, \
                 dead_lettered, own, dropped) and topic",
                &["outcome", "topic"],
            ),
            topics: Mutex::new(HashSet::new()),
            gaps: registry
                .counter(
                    GAPS_METRIC,
                    "Reconnections to an exclusive queue: spans of time whose messages never \
                     reached the bridge (backfill them with taskbot replay --since --until)",
                    &[],
                )
                .with(&[]),
        }
    }

    fn count(&self, outcome: &str, topic: &str) {
        let label = {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            if topics.contains(topic) || topics.len() < MAX_TOPIC_LABELS {
                topics.insert(topic.to_string());
                topic
            } else {
                "other"
            }
        };
        self.family.with(&[outcome, label]).inc();
        self.family.with(&[outcome, "all"]).inc();
    }

    fn total(&self, outcome: &str) -> u64 {
        self.family.with(&[outcome, "all"]).get()
    }

    fn log(&self, what: &str) {
        tracing::info!(
            received = self.total("received"),
            published = self.total("published"),
            dead_lettered = self.total("dead_lettered"),
            own = self.total("own"),
            dropped = self.total("dropped"),
            gaps = self.gaps.get(),
            "{what}"
        );
    }
}

struct Bridge {
    topology: Topology,
    publisher: ReliablePublisher,
    /// `host:port/vhost` of the external broker.
    source: String,
    counters: Counters,
    max_bytes: usize,
}

/// How one consuming session ended.
enum Ended {
    Shutdown,
    /// The connection or channel failed, or the broker cancelled the consumer.
    Lost(String),
}

impl Bridge {
    /// Connect, consume, reconnect, until shutdown.
    async fn consume(
        self: Arc<Self>,
        external: &ExternalBroker,
        fm: &FedoraMessagingBridgeConfig,
        config: &Config,
        name: &str,
        tasks: &mut JoinSet<()>,
        shutdown: &Shutdown,
    ) {
        let ready = taskbot::ops::global()
            .readiness
            .part(&format!("external broker {}", self.source));
        ready.set(false);
        let mut backoff = Backoff::new(config.amqp.reconnect_max_secs);
        let mut stopping = shutdown.clone();
        // Exclusive queue only: when the last session ended, the start of a gap.
        let mut lost_at: Option<DateTime<Utc>> = None;
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if shutdown.is_triggered() {
                return;
            }
            let opened = tokio::select! {
                opened = self.open(external, fm, name) => opened,
                _ = stopping.wait() => return,
            };
            let (conn, consumer, queue) = match opened {
                Ok(session) => session,
                Err(err) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(broker = %self.source, error = %err,
                        retry_in_ms = wait.as_millis() as u64, "cannot consume the external broker");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = stopping.wait() => return,
                    }
                }
            };
            backoff.reset();
            ready.set(true);
            tracing::info!(broker = %self.source, %queue, prefetch = fm.prefetch, "consuming");
            if let Some(since) = lost_at.take() {
                self.report_gap(since, Utc::now());
            }
            let ended = self.session(consumer, tasks, &mut stats, shutdown).await;
            ready.set(false);
            let _ = conn.close(200, "closing").await;
            match ended {
                Ended::Shutdown => return,
                Ended::Lost(why) => {
                    tracing::warn!(broker = %self.source, reason = %why,
                        "lost the external broker; reconnecting");
                    if fm.queue.is_none() {
                        lost_at = Some(Utc::now());
                    }
                }
            }
        }
    }

    /// Log and count a span of time whose messages the exclusive queue never got.
    fn report_gap(&self, since: DateTime<Utc>, until: DateTime<Utc>) {
        self.counters.gaps.inc();
        let (from, to) = (
            since.to_rfc3339_opts(SecondsFormat::Secs, true),
            (until + chrono::Duration::seconds(1)).to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        tracing::warn!(broker = %self.source, gap_start = %from, gap_end = %to,
            seconds = (until - since).num_milliseconds() as f64 / 1000.0,
            "messages published while the bridge was disconnected are lost with its exclusive \
             queue; backfill them: taskbot replay --datagrepper URL --since {from} --until {to}");
    }

    /// One connection to the external broker: qos, the queue, its bindings, a consumer.
    async fn open(
        &self,
        external: &ExternalBroker,
        fm: &FedoraMessagingBridgeConfig,
        name: &str,
    ) -> anyhow::Result<(lapin::Connection, lapin::Consumer, String)> {
        let conn = external.connect(name).await.context("connecting")?;
        let opened = async {
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(fm.prefetch.max(1), BasicQosOptions::default())
                .await?;
            let (queue, options) = match &fm.queue {
                Some(queue) => (
                    queue.clone(),
                    QueueDeclareOptions {
                        durable: true,
                        passive: fm.queue_passive,
                        ..Default::default()
                    },
                ),
                // What Fedora's public vhost allows: a UUID-named queue of this connection only.
                None => (
                    uuid::Uuid::new_v4().to_string(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                ),
            };
            channel
                .queue_declare(&queue, options, FieldTable::default())
                .await?;
            if !(fm.queue.is_some() && fm.queue_passive) {
                for topic in &fm.topics {
                    channel
                        .queue_bind(
                            &queue,
                            &fm.exchange,
                            topic,
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                }
            }
            let consumer = channel
                .basic_consume(
                    &queue,
                    name,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((consumer, queue))
        }
        .await;
        match opened {
            Ok((consumer, queue)) => Ok((conn, consumer, queue)),
            Err(err) => {
                let _ = conn.close(200, "cannot consume").await;
                Err(err).context("declaring and consuming the queue")
            }
        }
    }

    /// Take deliveries until the consumer ends or shutdown; each is handled in a task of its own
    /// (the prefetch bounds how many are in flight).
    async fn session(
        self: &Arc<Self>,
        mut consumer: lapin::Consumer,
        tasks: &mut JoinSet<()>,
        stats: &mut tokio::time::Interval,
        shutdown: &Shutdown,
    ) -> Ended {
        let mut stopping = shutdown.clone();
        loop {
            tokio::select! {
                _ = stopping.wait() => return Ended::Shutdown,
                _ = stats.tick() => self.counters.log("bridge counters"),
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let bridge = self.clone();
                        let shutdown = shutdown.clone();
                        tasks.spawn(async move { bridge.handle(delivery, shutdown).await });
                    }
                    Some(Err(err)) => return Ended::Lost(err.to_string()),
                    None => return Ended::Lost("the broker cancelled the consumer".into()),
                },
            }
        }
    }

    /// Route one delivery, publish what it became, and ack it once Taskbot's broker confirmed.
    async fn handle(&self, delivery: lapin::message::Delivery, mut shutdown: Shutdown) {
        let parts = Delivery::from_lapin(&delivery);
        let topic = parts.routing_key.as_str();
        self.counters.count("received", topic);
        let routed = route(&self.topology, &parts, self.max_bytes, &self.source);
        let outcome = match &routed {
            Routed::Event { id, .. } => {
                tracing::debug!(event_id = %id, %topic, "event received");
                "published"
            }
            Routed::DeadLetter { reason, .. } => {
                tracing::warn!(%topic, message_id = parts.message_id.as_deref().unwrap_or("-"),
                    %reason, "refused a fedora-messaging message; dead-lettering it");
                "dead_lettered"
            }
            Routed::Own => "own",
        };
        if let Some(outgoing) = routed.outgoing() {
            if !self.publisher.publish(outgoing, &mut shutdown).await {
                // Shutdown before Taskbot's broker took it: left unacked, so a durable queue
                // hands it to the next bridge.
                self.counters.count("dropped", topic);
                return;
            }
        }
        self.counters.count(outcome, topic);
        if let Err(err) = delivery.acker.ack(BasicAckOptions::default()).await {
            // The connection went away after the publish: the delivery comes back (durable
            // queue) and is published again under the same id, which downstream deduplicates.
            tracing::debug!(%topic, error = %err, "could not ack on the external broker");
        }
    }
}
