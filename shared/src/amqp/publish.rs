//! Publishing with confirms: [`Publisher`] on a channel of a connection someone else keeps, and
//! [`ReliablePublisher`], which keeps its own connection for services with no AMQP input.

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;

use super::connect::{connect_with_retry, url_user, Backoff};
use super::message::Outgoing;
use crate::config::AmqpConfig;
use crate::ops::{self, ReadyFlag};
use crate::shutdown::Shutdown;
use crate::topology::Topology;

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

/// A channel in confirm mode. Every publish is persistent and mandatory, and returns only once the
/// broker has taken responsibility for the message.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    app_id: String,
    /// Sent as every message's `user_id`, so consumers know which broker user (which service)
    /// published it; the broker refuses a `user_id` other than the connection's own.
    user_id: Option<String>,
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
            user_id: None,
        })
    }

    /// Stamp every message with `user_id`: the user `conn` logged in as ([`url_user`] of its
    /// URL). A different name makes the broker close the channel (PRECONDITION_FAILED).
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
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
        for (k, v) in &msg.bool_headers {
            headers.insert(k.as_str().into(), AMQPValue::Boolean(*v));
        }
        if !msg.bcc.is_empty() {
            let queues: Vec<AMQPValue> = msg
                .bcc
                .iter()
                .map(|q| AMQPValue::LongString(q.as_str().into()))
                .collect();
            headers.insert("BCC".into(), AMQPValue::FieldArray(queues.into()));
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
        if let Some(user) = &self.user_id {
            props = props.with_user_id(user.as_str().into());
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
    /// Counts the connections opened, so a publish that failed on one connection drops that one
    /// only, not a newer one another publish already opened.
    generation: std::sync::atomic::AtomicU64,
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
            generation: std::sync::atomic::AtomicU64::new(0),
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
            let publisher = Publisher::new(&conn, &self.name)
                .await?
                .with_user_id(url_user(&self.config.url));
            let login = self.config.login_role();
            self.topology
                .declare_for(login, publisher.channel())
                .await?;
            Ok::<_, lapin::Error>(publisher)
        }
        .await;
        match ready {
            Ok(publisher) => {
                tracing::info!("connected to the broker");
                let flag = self.ready.clone();
                conn.on_error(move |_| flag.set(false));
                self.ready.set(true);
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
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
    ///
    /// Several publishes may wait for their confirms at once (the lock is held only to get the
    /// channel), so a caller publishing from many tasks is not held to one round trip per
    /// message.
    pub async fn publish(&self, msg: &Outgoing, shutdown: &mut Shutdown) -> bool {
        use std::sync::atomic::Ordering;
        let mut backoff = Backoff::new(self.config.reconnect_max_secs);
        loop {
            let current = {
                let mut link = self.link.lock().await;
                if link.is_none() && !self.open_link(&mut link, shutdown).await {
                    return false;
                }
                link.as_ref()
                    .map(|(_, p)| (p.clone(), self.generation.load(Ordering::SeqCst)))
            };
            if let Some((publisher, generation)) = current {
                match publisher.publish(msg).await {
                    Ok(()) => return true,
                    Err(PublishError::Unroutable { .. }) => {
                        tracing::error!(exchange = %msg.exchange, routing_key = %msg.routing_key, "message unroutable; dropped");
                        return true;
                    }
                    Err(err) => {
                        let mut link = self.link.lock().await;
                        if self.generation.load(Ordering::SeqCst) == generation && link.is_some() {
                            tracing::warn!(error = %err, "publish failed; reconnecting");
                            self.ready.set(false);
                            *link = None;
                        }
                    }
                }
            }
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
