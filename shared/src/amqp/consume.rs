//! The consume loop: handlers ([`Handler`]) decide, the loop publishes what they decided, waits
//! for the confirms and only then acks, surviving broker restarts on the way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;

use super::connect::{connect_with_retry, url_user, Backoff};
use super::message::{incoming_from, Disposition, Incoming, Outgoing};
use super::publish::{PublishError, Publisher};
use crate::config::AmqpConfig;
use crate::identity::Role;
use crate::ops::{self, Ending};
use crate::shutdown::Shutdown;
use crate::topology::Topology;

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
    /// Pause before handing back a delivery whose handling failed transiently; doubled for each
    /// further failure in a row on this consumer, up to [`MAX_RETRY_DELAY`] ([`retry_pause`]).
    pub retry_delay: Duration,
}

/// The longest pause before a failed delivery is handed back: a store down for an hour is asked
/// about twice a minute per consumer, not every two seconds.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The pause before handing back a delivery after `failures_in_a_row` transient failures on its
/// consumer (this one included): `base`, doubled for each earlier failure, at most
/// [`MAX_RETRY_DELAY`] (or `base`, if that is longer). A delivery handled since resets the count,
/// so one store outage costs the pipeline no more than the outage plus one pause.
pub fn retry_pause(base: Duration, failures_in_a_row: u32) -> Duration {
    let doublings = failures_in_a_row.saturating_sub(1).min(16);
    base.saturating_mul(1 << doublings)
        .min(MAX_RETRY_DELAY.max(base))
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
    let worker = Arc::new(Worker {
        handler,
        topology: topology.clone(),
        spec,
        slots: Arc::new(Semaphore::new(concurrency)),
        concurrency,
        failures_in_a_row: Default::default(),
    });
    let queue = worker.spec.queue.as_str();
    let mut backoff = Backoff::new(config.reconnect_max_secs);
    // Ready (`/readyz`) from the moment the queue is consumed with the topology declared until the
    // connection fails, the broker cancels the consumer, or shutdown.
    let ready = ops::global().readiness.part(queue);
    ready.set(false);
    ops::global().amqp.declare_queue(queue);
    while !shutdown.is_triggered() {
        let Some(conn) = connect_with_retry(config, &worker.spec.name, &mut shutdown).await else {
            break;
        };
        let login = Login {
            user: url_user(&config.url),
            role: config.login_role(),
        };
        let session = match open_session(&conn, topology, &worker.spec, prefetch, &login).await {
            Ok(session) => session,
            Err(err) => {
                tracing::warn!(queue = %queue, error = %err, "cannot start consuming");
                let _ = conn.close(200, "retrying").await;
                if !pause(&mut backoff, &mut shutdown).await {
                    break;
                }
                continue;
            }
        };
        tracing::info!(queue = %queue, prefetch, concurrency, "consuming");
        {
            let flag = ready.clone();
            conn.on_error(move |_| flag.set(false));
        }
        ready.set(true);
        backoff.reset();
        take_deliveries(session, &worker, &mut shutdown).await;
        ready.set(false);
        worker.drain().await;
        let _ = conn.close(200, "closing").await;
        if !shutdown.is_triggered() {
            pause(&mut backoff, &mut shutdown).await;
        }
    }
    tracing::info!(queue = %queue, "consumer stopped");
}

/// Wait out the next back-off delay; `false` when shutdown was requested first.
async fn pause(backoff: &mut Backoff, shutdown: &mut Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(backoff.next_delay()) => true,
        _ = shutdown.wait() => false,
    }
}

/// What every delivery of one consumer needs, shared by the tasks that handle them.
struct Worker {
    handler: Arc<dyn Handler>,
    topology: Topology,
    spec: ConsumerSpec,
    /// One permit per delivery handled at once.
    slots: Arc<Semaphore>,
    concurrency: usize,
    /// Transient failures in a row on this consumer, for [`retry_pause`].
    failures_in_a_row: std::sync::atomic::AtomicU32,
}

impl Worker {
    /// Wait until every delivery in flight is settled: they ack on the session's channel, so
    /// its connection must stay open until then.
    async fn drain(&self) {
        if let Ok(all) = self.slots.acquire_many(self.concurrency as u32).await {
            drop(all);
        }
    }
}

/// One connection's consuming state: the confirm-mode publisher for the handlers' outputs, and
/// the channel the deliveries arrive (and are acked) on.
struct Session {
    publisher: Publisher,
    channel: lapin::Channel,
    consumer: lapin::Consumer,
}

/// Who the connection logged in as: the broker user its messages are stamped with, and the role
/// whose own user that is (which says what it declares, [`Topology::declare_for`]).
struct Login {
    user: String,
    role: Option<Role>,
}

/// Declare what this login declares and start consuming `spec.queue` on `conn`, with `prefetch`
/// unacked deliveries at most (without it the client buffers the whole queue).
async fn open_session(
    conn: &lapin::Connection,
    topology: &Topology,
    spec: &ConsumerSpec,
    prefetch: u16,
    login: &Login,
) -> lapin::Result<Session> {
    let publisher = Publisher::new(conn, &spec.name)
        .await?
        .with_user_id(&*login.user);
    topology
        .declare_for(login.role, publisher.channel())
        .await?;
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
    Ok(Session {
        publisher,
        channel,
        consumer,
    })
}

/// Hand each delivery of `session` to a task of its own, at most `worker.concurrency` at once,
/// until the consumer fails, the broker cancels it (both: reconnect), or shutdown (which cancels
/// it here). Returns without waiting for the tasks.
async fn take_deliveries(mut session: Session, worker: &Arc<Worker>, shutdown: &mut Shutdown) {
    let queue = worker.spec.queue.as_str();
    loop {
        let next = tokio::select! {
            next = session.consumer.next() => next,
            _ = shutdown.wait() => {
                let tag = session.consumer.tag();
                let options = BasicCancelOptions::default();
                let _ = session.channel.basic_cancel(tag.as_str(), options).await;
                return;
            }
        };
        let delivery = match next {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => {
                tracing::warn!(queue = %queue, error = %err, "consumer failed; reconnecting");
                return;
            }
            None => {
                tracing::warn!(queue = %queue, "consumer cancelled by the broker; reconnecting");
                return;
            }
        };
        let received_at = Instant::now();
        let Ok(permit) = worker.slots.clone().acquire_owned().await else {
            return;
        };
        let worker = worker.clone();
        let publisher = session.publisher.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let ctx = BrokerContext {
                publisher: &publisher,
                received_at,
            };
            handle_delivery(delivery, &ctx, &worker).await;
        });
    }
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

/// Handle one delivery and settle it, counted in the AMQP metrics of its queue.
async fn handle_delivery(
    delivery: lapin::message::Delivery,
    ctx: &BrokerContext<'_>,
    worker: &Worker,
) {
    let metrics = &ops::global().amqp;
    let queue = &worker.spec.queue;
    let started = Instant::now();
    let _in_flight = metrics.started(queue);
    let ending = handle_and_settle(delivery, ctx, worker).await;
    metrics.finished(queue, ending, started.elapsed());
}

/// Handle one delivery and ack or hand it back; says which, for the metrics.
async fn handle_and_settle(
    delivery: lapin::message::Delivery,
    ctx: &BrokerContext<'_>,
    worker: &Worker,
) -> Ending {
    let (handler, topology, spec) = (worker.handler.as_ref(), &worker.topology, &worker.spec);
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
            let failures = worker.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
            let pause = retry_pause(spec.retry_delay, failures);
            tracing::warn!(queue = %spec.queue, %reason, failures_in_a_row = failures, retry_in_ms = pause.as_millis() as u64, "transient failure; will retry");
            tokio::time::sleep(pause).await;
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
    worker.failures_in_a_row.store(0, Ordering::Relaxed);
    if dead_lettered {
        Ending::DeadLettered
    } else {
        Ending::Acked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_double_from_the_base_up_to_the_cap() {
        let base = Duration::from_secs(2);
        let pauses: Vec<u64> = (1..=7).map(|n| retry_pause(base, n).as_secs()).collect();
        assert_eq!(pauses, [2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(
            retry_pause(base, 0),
            base,
            "the first failure waits the base"
        );
        assert_eq!(retry_pause(base, u32::MAX), MAX_RETRY_DELAY);
        let long = Duration::from_secs(60);
        assert_eq!(retry_pause(long, 3), long, "a base above the cap is kept");
        let tiny = Duration::from_millis(1);
        assert_eq!(retry_pause(tiny, 12), Duration::from_millis(2048));
        assert_eq!(retry_pause(tiny, 40), MAX_RETRY_DELAY, "no overflow");
    }
}
