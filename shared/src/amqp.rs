//! The one place Taskbot talks AMQP: connecting (with back-off), publishing with confirms, and a
//! consume loop that turns a handler's [`Disposition`] into publishes and acks.
//!
//! The at-least-once contract every service relies on: an input is acked only after everything it
//! produced was confirmed by the broker. If the connection dies in between, the input is redelivered
//! and the handler runs again, so handlers must be idempotent (ids are derived, stores
//! deduplicate).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::sync::{Mutex, Semaphore};

use crate::config::AmqpConfig;
use crate::ops::{self, Ending, ReadyFlag};
use crate::shutdown::Shutdown;
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
    /// AMQP `content_encoding` (fedora-messaging consumers expect `utf-8`).
    pub content_encoding: Option<String>,
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
            content_encoding: None,
        }
    }

    pub fn with_int_header(mut self, key: &str, value: i64) -> Self {
        self.int_headers.push((key.to_string(), value));
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
    /// queue it came from, with the reason in a header.
    pub fn dead_letter(
        topology: &Topology,
        source: &str,
        incoming: &Incoming,
        reason: &str,
    ) -> Outgoing {
        Outgoing::new(
            topology.dead_letter_exchange(),
            source,
            incoming.body.clone(),
        )
        .with_header(REASON_HEADER, reason)
        .with_header(SOURCE_HEADER, source)
        .with_header(ROUTING_KEY_HEADER, incoming.routing_key.clone())
        .with_header(EXCHANGE_HEADER, incoming.exchange.clone())
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

/// Why a publish failed. Any of these means: do not ack the input.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("unroutable: no queue is bound for {exchange} / {routing_key}")]
    Unroutable {
        exchange: String,
        routing_key: String,
    },
}

/// Connect once.
pub async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let mut props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    props
        .client_properties
        .insert("product".into(), AMQPValue::LongString("taskbot".into()));
    Connection::connect(url, props).await
}

/// Connect, retrying with exponential back-off until it works or shutdown is requested.
pub async fn connect_with_retry(
    config: &AmqpConfig,
    name: &str,
    shutdown: &mut Shutdown,
) -> Option<Connection> {
    let mut backoff = Backoff::new(config.reconnect_max_secs);
    loop {
        if shutdown.is_triggered() {
            return None;
        }
        match connect(&config.url, name).await {
            Ok(conn) => return Some(conn),
            Err(err) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "cannot reach the broker");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait() => return None,
                }
            }
        }
    }
}

/// Exponential back-off from 0.5 s up to a maximum, with jitter so a fleet of services that lost
/// the broker together does not reconnect in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    next_ms: u64,
    max_ms: u64,
}

impl Backoff {
    pub fn new(max_secs: u64) -> Self {
        Backoff {
            next_ms: 500,
            max_ms: max_secs.max(1) * 1000,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let base = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        // Up to 25 % jitter, from the clock's nanoseconds (good enough, no RNG crate needed).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        Duration::from_millis(base + nanos % (base / 4 + 1))
    }

    pub fn reset(&mut self) {
        self.next_ms = 500;
    }
}

/// A channel in confirm mode. Every publish is persistent and mandatory, and returns only once the
/// broker has taken responsibility for the message.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    app_id: String,
}

impl Publisher {
    pub async fn new(conn: &Connection, app_id: &str) -> lapin::Result<Self> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            app_id: app_id.to_string(),
        })
    }

    /// Publish one message and wait for the broker's confirm. Counted in
    /// `taskbot_messages_published_total` or `taskbot_messages_publish_failed_total` by exchange.
    pub async fn publish(&self, msg: &Outgoing) -> Result<(), PublishError> {
        let result = self.publish_once(msg).await;
        let metrics = &ops::global().amqp;
        let family = match result {
            Ok(()) => &metrics.published,
            Err(_) => &metrics.publish_failed,
        };
        family.with(&[&msg.exchange]).inc();
        result
    }

    async fn publish_once(&self, msg: &Outgoing) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        for (k, v) in &msg.headers {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.clone().into()));
        }
        for (k, v) in &msg.int_headers {
            headers.insert(k.as_str().into(), AMQPValue::LongLongInt(*v));
        }
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_app_id(self.app_id.as_str().into())
            .with_timestamp(Utc::now().timestamp() as u64)
            .with_headers(headers);
        if let Some(id) = &msg.message_id {
            props = props.with_message_id(id.as_str().into());
        }
        if let Some(p) = msg.priority {
            props = props.with_priority(p);
        }
        if let Some(encoding) = &msg.content_encoding {
            props = props.with_content_encoding(encoding.as_str().into());
        }
        let confirm = self
            .channel
            .basic_publish(
                &msg.exchange,
                &msg.routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &msg.body,
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            // With `mandatory`, an unroutable message is returned *and* acked.
            Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable {
                exchange: msg.exchange.clone(),
                routing_key: msg.routing_key.clone(),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked),
        }
    }

    /// Publish several in order; stops at the first failure.
    pub async fn publish_all(&self, msgs: &[Outgoing]) -> Result<(), PublishError> {
        for m in msgs {
            self.publish(m).await?;
        }
        Ok(())
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }
}

/// A publisher for services with no AMQP input (the bridge): keeps one connection and re-opens it
/// whenever a publish fails, so a message is retried until the broker takes it.
pub struct ReliablePublisher {
    config: AmqpConfig,
    topology: Topology,
    name: String,
    link: Mutex<Option<(Connection, Publisher)>>,
    /// Its part of the service's readiness (`/readyz`).
    ready: ReadyFlag,
}

impl ReliablePublisher {
    pub fn new(config: AmqpConfig, topology: Topology, name: &str) -> Self {
        ReliablePublisher {
            config,
            topology,
            name: name.to_string(),
            link: Mutex::new(None),
            ready: ops::global().readiness.part(&format!("publisher {name}")),
        }
    }

    /// Connect and declare the topology now rather than at the first publish, so the service is
    /// ready (`/readyz`) before it has anything to publish. Returns `false` only when shutdown
    /// was requested first.
    pub async fn connect(&self, shutdown: &mut Shutdown) -> bool {
        let mut backoff = Backoff::new(self.config.reconnect_max_secs);
        loop {
            let mut link = self.link.lock().await;
            if link.is_some() {
                return true;
            }
            if !self.open_link(&mut link, shutdown).await {
                return false;
            }
            if link.is_some() {
                return true;
            }
            drop(link);
            let wait = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return false,
            }
        }
    }

    /// Open the connection and declare the topology into `link` (left empty when declaring
    /// failed). Returns `false` only when shutdown was requested before the broker answered.
    async fn open_link(
        &self,
        link: &mut Option<(Connection, Publisher)>,
        shutdown: &mut Shutdown,
    ) -> bool {
        let Some(conn) = connect_with_retry(&self.config, &self.name, shutdown).await else {
            return false;
        };
        let ready = async {
            let publisher = Publisher::new(&conn, &self.name).await?;
            self.topology.declare(publisher.channel()).await?;
            Ok::<_, lapin::Error>(publisher)
        }
        .await;
        match ready {
            Ok(publisher) => {
                tracing::info!("connected to the broker");
                let flag = self.ready.clone();
                conn.on_error(move |_| flag.set(false));
                self.ready.set(true);
                *link = Some((conn, publisher));
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot declare topology");
            }
        }
        true
    }

    /// Publish, reconnecting and retrying until confirmed. Returns `false` only when shutdown was
    /// requested before the broker took the message. An unroutable message is logged and not
    /// retried: waiting never makes it routable, and the topology declared at connection binds a
    /// queue to every key this publisher is used for.
    pub async fn publish(&self, msg: &Outgoing, shutdown: &mut Shutdown) -> bool {
        let mut backoff = Backoff::new(self.config.reconnect_max_secs);
        loop {
            let mut link = self.link.lock().await;
            if link.is_none() && !self.open_link(&mut link, shutdown).await {
                return false;
            }
            if let Some((_, publisher)) = link.as_ref() {
                match publisher.publish(msg).await {
                    Ok(()) => return true,
                    Err(PublishError::Unroutable { .. }) => {
                        tracing::error!(exchange = %msg.exchange, routing_key = %msg.routing_key, "message unroutable; dropped");
                        return true;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "publish failed; reconnecting");
                        self.ready.set(false);
                        *link = None;
                    }
                }
            }
            drop(link);
            let wait = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return false,
            }
        }
    }

    /// Close the connection cleanly.
    pub async fn close(&self) {
        self.ready.set(false);
        if let Some((conn, _)) = self.link.lock().await.take() {
            let _ = conn.close(200, "shutting down").await;
        }
    }
}

/// What a handler may do while it works, besides deciding its [`Disposition`]: publish progress
/// messages that must go out before it finishes (job statuses), and know when its delivery
/// arrived (the broker's consumer timeout counts from then). The consume loop implements it on a
/// confirm-mode channel; [`crate::testing::Recorder`] implements it in memory, so handlers are
/// tested without a broker.
#[async_trait::async_trait]
pub trait DeliveryContext: Send + Sync {
    /// Publish one message now and wait until the broker has confirmed it.
    async fn publish(&self, msg: &Outgoing) -> Result<(), PublishError>;
    /// When this process received the delivery being handled.
    fn received_at(&self) -> Instant;
}

/// The consume loop's context: the connection's confirm-mode publisher and the delivery's
/// arrival time.
struct BrokerContext<'a> {
    publisher: &'a Publisher,
    received_at: Instant,
}

#[async_trait::async_trait]
impl DeliveryContext for BrokerContext<'_> {
    async fn publish(&self, msg: &Outgoing) -> Result<(), PublishError> {
        self.publisher.publish(msg).await
    }

    fn received_at(&self) -> Instant {
        self.received_at
    }
}

/// Handles one delivery. Implementations hold their own state (rules, database pool); what they
/// may do besides returning a [`Disposition`] goes through the [`DeliveryContext`].
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn handle(&self, incoming: Incoming, ctx: &dyn DeliveryContext) -> Disposition;

    /// Called once everything `handle` asked to publish for `incoming` (`published`) was
    /// confirmed by the broker (just before the ack). A handler that remembers what it has done
    /// remembers it here, never in `handle`: a publish that then failed would otherwise be
    /// remembered as done.
    async fn confirmed(&self, _incoming: &Incoming, _published: &[Outgoing]) {}
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Queue to consume.
    pub queue: String,
    /// Name shown in the broker's connection list and used as consumer tag prefix.
    pub name: String,
    /// Deliveries handled at once (the prefetch is at least this).
    pub concurrency: usize,
    /// Pause before handing back a delivery whose handling failed transiently.
    pub retry_delay: Duration,
}

/// Consume `spec.queue` until shutdown, surviving broker restarts: on any connection or channel
/// failure (or the broker cancelling the consumer) it reconnects, re-declares the topology and
/// consumes again. Unacked deliveries of the lost channel come back from the broker by themselves.
///
/// On shutdown it stops taking deliveries and waits for the ones being handled.
pub async fn consume(
    config: &AmqpConfig,
    topology: &Topology,
    spec: ConsumerSpec,
    handler: Arc<dyn Handler>,
    mut shutdown: Shutdown,
) {
    let concurrency = spec.concurrency.max(1);
    let prefetch = config.prefetch.max(concurrency as u16);
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut backoff = Backoff::new(config.reconnect_max_secs);
    // Ready (`/readyz`) from the moment the queue is consumed with the topology declared until the
    // connection fails, the broker cancels the consumer, or shutdown.
    let ready = ops::global().readiness.part(&spec.queue);
    ready.set(false);
    ops::global().amqp.declare_queue(&spec.queue);
    while !shutdown.is_triggered() {
        let Some(conn) = connect_with_retry(config, &spec.name, &mut shutdown).await else {
            break;
        };
        let session = async {
            let publisher = Publisher::new(&conn, &spec.name).await?;
            topology.declare(publisher.channel()).await?;
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    &spec.queue,
                    &format!("{}-{}", spec.name, uuid::Uuid::new_v4().simple()),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((publisher, channel, consumer))
        }
        .await;
        let (publisher, channel, mut consumer) = match session {
            Ok(s) => s,
            Err(err) => {
                tracing::warn!(queue = %spec.queue, error = %err, "cannot start consuming");
                let _ = conn.close(200, "retrying").await;
                let wait = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => continue,
                    _ = shutdown.wait() => break,
                }
            }
        };
        tracing::info!(queue = %spec.queue, prefetch, concurrency, "consuming");
        {
            let flag = ready.clone();
            conn.on_error(move |_| flag.set(false));
        }
        ready.set(true);
        backoff.reset();
        loop {
            let next = tokio::select! {
                next = consumer.next() => next,
                _ = shutdown.wait() => {
                    let _ = channel.basic_cancel(consumer.tag().as_str(), BasicCancelOptions::default()).await;
                    break;
                }
            };
            let delivery = match next {
                Some(Ok(d)) => (d, Instant::now()),
                Some(Err(err)) => {
                    tracing::warn!(queue = %spec.queue, error = %err, "consumer failed; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!(queue = %spec.queue, "consumer cancelled by the broker; reconnecting");
                    break;
                }
            };
            let permit = match slots.clone().acquire_owned().await {
                Ok(p) => p,
                Err(_) => break,
            };
            let handler = handler.clone();
            let publisher = publisher.clone();
            let topology = topology.clone();
            let spec = spec.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let (delivery, received_at) = delivery;
                let ctx = BrokerContext {
                    publisher: &publisher,
                    received_at,
                };
                handle_delivery(delivery, handler.as_ref(), &ctx, &topology, &spec).await;
            });
        }
        ready.set(false);
        // Let deliveries in flight finish (they ack on this connection) before closing it.
        if let Ok(all) = slots.acquire_many(concurrency as u32).await {
            drop(all);
        }
        let _ = conn.close(200, "closing").await;
        if !shutdown.is_triggered() {
            let wait = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => {}
            }
        }
    }
    tracing::info!(queue = %spec.queue, "consumer stopped");
}

/// Return a delivery to its queue to be handled again. If the channel is already gone this fails,
/// and the broker returns the delivery by itself.
async fn hand_back(delivery: &lapin::message::Delivery) {
    let _ = delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await;
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
    }
}

async fn handle_delivery(
    delivery: lapin::message::Delivery,
    handler: &dyn Handler,
    ctx: &BrokerContext<'_>,
    topology: &Topology,
    spec: &ConsumerSpec,
) {
    let metrics = &ops::global().amqp;
    let started = Instant::now();
    let _in_flight = metrics.started(&spec.queue);
    let ending = handle_and_settle(delivery, handler, ctx, topology, spec).await;
    metrics.finished(&spec.queue, ending, started.elapsed());
}

/// Handle one delivery and ack or hand it back; says which, for the metrics.
async fn handle_and_settle(
    delivery: lapin::message::Delivery,
    handler: &dyn Handler,
    ctx: &BrokerContext<'_>,
    topology: &Topology,
    spec: &ConsumerSpec,
) -> Ending {
    let incoming = incoming_from(&delivery);
    let disposition = handler.handle(incoming.clone(), ctx).await;
    let mut dead_lettered = false;
    let outputs = match disposition {
        Disposition::Done(outputs) => outputs,
        Disposition::DeadLetter(reason) => {
            dead_lettered = true;
            tracing::warn!(queue = %spec.queue, routing_key = %incoming.routing_key, %reason, "dead-lettering message");
            vec![Outgoing::dead_letter(
                topology,
                &spec.queue,
                &incoming,
                &reason,
            )]
        }
        Disposition::Retry(reason) => {
            tracing::warn!(queue = %spec.queue, %reason, retry_in_ms = spec.retry_delay.as_millis() as u64, "transient failure; will retry");
            tokio::time::sleep(spec.retry_delay).await;
            hand_back(&delivery).await;
            return Ending::Rejected;
        }
    };
    if let Err(err) = ctx.publisher.publish_all(&outputs).await {
        // Not acking: the delivery comes back once this channel is gone or nacked.
        tracing::warn!(queue = %spec.queue, error = %err, "publishing outputs failed; handing the input back");
        hand_back(&delivery).await;
        return Ending::Rejected;
    }
    handler.confirmed(&incoming, &outputs).await;
    if let Err(err) = delivery.acker.ack(BasicAckOptions::default()).await {
        tracing::warn!(queue = %spec.queue, error = %err, "ack failed; the message will be redelivered");
        return Ending::AckFailed;
    }
    if dead_lettered {
        Ending::DeadLettered
    } else {
        Ending::Acked
    }
}

/// Dead letters, for `taskbot dlq`: read without removing, move back where they came from,
/// purge. Kept here with the rest of the AMQP code.
pub mod dead_letters {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap() {
        let mut b = Backoff::new(2);
        let d: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert!(d[0] >= 500 && d[0] <= 625, "{d:?}");
        assert!(d[1] >= 1000 && d[1] <= 1250, "{d:?}");
        assert!(d[4] >= 2000 && d[4] <= 2500, "{d:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 625);
    }

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
}
