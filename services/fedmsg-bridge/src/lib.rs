//! The `fedmsg-bridge` service: subscribes to fedmsg (ZeroMQ PUB/SUB) and republishes every bus
//! message as a Taskbot [`Event`](taskbot::Event) on the events exchange, routing key = topic.
//! Messages that cannot be events are dead-lettered raw, with the reason, under
//! `<namespace>.fedmsg-bridge`. The bridge never stops on bad input.
//!
//! ZeroMQ has no acknowledgements: whatever is not read is lost. The `zmq` crate is synchronous,
//! so the SUB sockets live in one dedicated thread that hands messages to the async publisher over
//! a bounded channel (`bridge.buffer`). While the broker is unreachable the channel fills, the
//! thread stops reading, and ZeroMQ's own high-water mark drops messages at the publisher. That
//! loss is explicit and bounded instead of the bridge's memory growing without limit.

mod gaps;
mod parse;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use taskbot::amqp::ReliablePublisher;
use taskbot::config::{BridgeConfig, ConfigError};
use taskbot::{Config, Shutdown, Topology};
use tokio::sync::mpsc;

pub use gaps::{sender_of, GapDetector, Sequence};
pub use parse::{
    dead_letter, parse_fedmsg, parse_with_sequence, route, Malformed, Routed, FEDMSG_SOURCE_HEADER,
    MAX_AMQP_SHORT_STRING, TRUNCATED_FROM_HEADER,
};

/// How long the receiving thread waits for a message before looking at the stop flag again:
/// the longest shutdown waits for it.
const POLL_TIMEOUT_MS: i64 = 200;
/// How often the counters are logged.
const STATS_INTERVAL: Duration = Duration::from_secs(60);
/// The longest shutdown spends publishing what was already buffered. Bounded because a broker
/// that is up but blocking publishers (memory alarm) would otherwise hold shutdown forever.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The `/metrics` counter of gaps in a sender's sequence numbers (see [`gaps`]).
pub const GAPS_METRIC: &str = "taskbot_bridge_gaps_total";

/// One message as read from one endpoint.
struct Received {
    /// `fedmsg:<endpoint>`: a socket per endpoint, so every event says where it came from.
    source: Arc<str>,
    frames: Vec<Vec<u8>>,
}

/// The `/metrics` counter of bus messages by what became of them (`outcome`: `received`,
/// `published`, `malformed`, `dropped`).
pub const MESSAGES_METRIC: &str = "taskbot_bridge_messages_total";

/// What the bridge has done since it started: exported on `/metrics` ([`MESSAGES_METRIC`]), and
/// logged every minute and at shutdown.
struct Counters {
    /// Messages read from ZeroMQ.
    received: taskbot::ops::Counter,
    /// Events the broker confirmed.
    published: taskbot::ops::Counter,
    /// Messages refused (and dead-lettered, unless shutdown came first).
    malformed: taskbot::ops::Counter,
    /// Messages read but not confirmed by the broker before shutdown, or not taken into a full
    /// buffer.
    dropped: taskbot::ops::Counter,
}

impl Counters {
    fn new() -> Counters {
        let family = taskbot::ops::global().registry.counter(
            MESSAGES_METRIC,
            "Bus messages by what became of them: received from ZeroMQ, published (confirmed by \
             the broker), malformed (dead-lettered), dropped (never confirmed)",
            &["outcome"],
        );
        Counters {
            received: family.with(&["received"]),
            published: family.with(&["published"]),
            malformed: family.with(&["malformed"]),
            dropped: family.with(&["dropped"]),
        }
    }

    fn log(&self, what: &str) {
        tracing::info!(
            received = self.received.get(),
            published = self.published.get(),
            malformed = self.malformed.get(),
            dropped = self.dropped.get(),
            "{what}"
        );
    }
}

/// Run until `shutdown`: subscribe to every `bridge.endpoints` with every `bridge.topic_prefixes`
/// and publish what arrives. On shutdown the receiving thread stops, what is already buffered is
/// published (for at most [`DRAIN_TIMEOUT`], and only while the broker takes it), then the
/// connection is closed.
///
/// Fails only at start, on a configuration ZeroMQ refuses (no endpoint, a malformed endpoint).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let sockets = subscribe_all(&config.bridge)?;
    let counters = Arc::new(Counters::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel(config.bridge.buffer.max(1));
    let receiver = {
        let (stop, counters) = (stop.clone(), counters.clone());
        std::thread::Builder::new()
            .name("fedmsg-receive".into())
            .spawn(move || receive(sockets, tx, &stop, &counters))
            .context("cannot start the receiving thread")?
    };

    let topology = Topology::for_config(&config);
    let publisher = ReliablePublisher::new(
        config.amqp.clone(),
        topology.clone(),
        &taskbot::instance_name("fedmsg-bridge"),
    );
    let bridge = Bridge {
        topology,
        publisher,
        counters: counters.clone(),
        max_bytes: config.bridge.max_message_bytes,
        gaps: std::sync::Mutex::new(GapDetector::default()),
        gaps_metric: taskbot::ops::global()
            .registry
            .counter(
                GAPS_METRIC,
                "Jumps in a fedmsg sender's sequence numbers: bus messages that never reached \
                 this bridge (backfill them from datagrepper with `taskbot replay`)",
                &[],
            )
            .with(&[]),
    };

    // Connect now rather than at the first message, so the bridge is ready (/readyz) while the
    // bus is quiet. Messages arriving meanwhile wait in the buffer. Only shutdown ends the wait,
    // and then the loop in `forward` ends at once.
    bridge.publisher.connect(&mut shutdown.clone()).await;
    let interrupted = bridge.forward(&mut rx, &shutdown).await;

    // Refuse further messages (this also wakes the thread if it waits for room), stop reading,
    // and publish what is already buffered.
    rx.close();
    stop.store(true, Ordering::Relaxed);
    if tokio::time::timeout(DRAIN_TIMEOUT, bridge.drain(&mut rx, interrupted, &shutdown))
        .await
        .is_err()
    {
        tracing::warn!("the broker did not take the buffered messages in time");
    }
    let mut left = 0;
    while rx.try_recv().is_ok() {
        left += 1;
    }
    if left > 0 {
        tracing::warn!(count = left, "buffered messages dropped at shutdown");
        counters.dropped.inc_by(left);
    }
    bridge.publisher.close().await;
    let joined = tokio::task::spawn_blocking(move || receiver.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        tracing::error!("the receiving thread panicked");
    }
    counters.log("bridge stopped");
    Ok(())
}

/// ZeroMQ's transports (`zmq_connect(3)`): an endpoint is `TRANSPORT://ADDRESS`.
const ZMQ_TRANSPORTS: &[&str] = &[
    "tcp", "ipc", "inproc", "pgm", "epgm", "vmci", "ws", "wss", "tipc", "udp",
];

/// Whether `endpoint` is a ZeroMQ endpoint, `TRANSPORT://ADDRESS`; else why not.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    match endpoint.split_once("://") {
        Some((transport, address))
            if ZMQ_TRANSPORTS.contains(&transport) && !address.is_empty() =>
        {
            Ok(())
        }
        _ => Err(format!(
            "{endpoint:?} is not a ZeroMQ endpoint (TRANSPORT://ADDRESS, e.g. \
             tcp://hub.fedoraproject.org:9940)"
        )),
    }
}

/// The bridge's settings checked before it starts: endpoints to subscribe to, each
/// `TRANSPORT://ADDRESS` (`--endpoint tcp://hub.fedoraproject.org:9940`), and topic prefixes. A
/// problem is a bad configuration (exit status 2), not a failure found once running.
pub fn check_config(bridge: &BridgeConfig) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    if bridge.endpoints.is_empty() {
        problems.push(
            "bridge.endpoints (--endpoint): empty: there is nothing to subscribe to".to_string(),
        );
    }
    for endpoint in &bridge.endpoints {
        if let Err(e) = check_endpoint(endpoint) {
            problems.push(format!("bridge.endpoints (--endpoint): {e}"));
        }
    }
    if bridge.topic_prefixes.is_empty() {
        problems.push(
            "bridge.topic_prefixes: empty: nothing would be received (use [\"\"] for all)"
                .to_string(),
        );
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(ConfigError::new(problems.join("\n"))),
    }
}

/// A SUB socket per endpoint of `bridge`, each named by its source (`fedmsg:<endpoint>`).
fn subscribe_all(bridge: &BridgeConfig) -> anyhow::Result<Vec<(Arc<str>, zmq::Socket)>> {
    check_config(bridge)?;
    let context = zmq::Context::new();
    let mut sockets = Vec::new();
    for endpoint in &bridge.endpoints {
        let socket = subscribe(&context, endpoint, &bridge.topic_prefixes)
            .with_context(|| format!("cannot subscribe to fedmsg endpoint {endpoint:?}"))?;
        tracing::info!(endpoint = %endpoint, prefixes = ?bridge.topic_prefixes, "subscribed");
        sockets.push((Arc::<str>::from(format!("fedmsg:{endpoint}")), socket));
    }
    Ok(sockets)
}

/// The async half: decides and publishes.
struct Bridge {
    topology: Topology,
    publisher: ReliablePublisher,
    counters: Arc<Counters>,
    max_bytes: usize,
    /// Only the forwarding task uses it; a mutex because `route` takes `&self`.
    gaps: std::sync::Mutex<GapDetector>,
    gaps_metric: taskbot::ops::Counter,
}

impl Bridge {
    fn route(&self, received: &Received) -> Routed {
        let routed = route(
            &self.topology,
            &received.frames,
            self.max_bytes,
            &received.source,
        );
        match &routed {
            Routed::Event {
                id,
                outgoing,
                sequence,
            } => {
                tracing::debug!(event_id = %id, topic = %outgoing.routing_key, source = %received.source, "event received");
                if let Some((sender, i)) = sequence {
                    self.check_sequence(sender, *i, id);
                }
            }
            Routed::DeadLetter { reason, .. } => {
                self.counters.malformed.inc();
                let topic = received
                    .frames
                    .first()
                    .map(|f| String::from_utf8_lossy(&f[..f.len().min(MAX_AMQP_SHORT_STRING)]))
                    .unwrap_or_default();
                tracing::warn!(source = %received.source, %topic, %reason, "malformed fedmsg message; dead-lettering it");
            }
        }
        routed
    }

    /// Log and count a jump in `sender`'s sequence numbers at `i` (message `id`).
    fn check_sequence(&self, sender: &str, i: u64, id: &str) {
        let seen = self
            .gaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(sender, i);
        match seen {
            Sequence::Gap { missing } => {
                self.gaps_metric.inc();
                tracing::warn!(%sender, missing, before = i, event_id = %id,
                    "gap in the sender's sequence numbers: bus messages were lost before reaching \
                     this bridge (backfill from datagrepper with `taskbot replay`)");
            }
            Sequence::Restarted => {
                tracing::info!(%sender, i, "the sender's sequence numbers started again (it restarted)");
            }
            Sequence::First | Sequence::InOrder => {}
        }
    }

    /// Publish what arrives until shutdown (logging the counters every [`STATS_INTERVAL`]).
    /// Returns the message being published when shutdown came, which goes first when draining.
    async fn forward(
        &self,
        rx: &mut mpsc::Receiver<Received>,
        shutdown: &Shutdown,
    ) -> Option<Routed> {
        let mut stats = tokio::time::interval(STATS_INTERVAL);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        stats.tick().await;
        let mut stopping = shutdown.clone();
        loop {
            let received = tokio::select! {
                _ = stopping.wait() => return None,
                _ = stats.tick() => { self.counters.log("bridge counters"); continue; }
                received = rx.recv() => received,
            };
            let Some(received) = received else {
                tracing::error!("the receiving thread stopped; shutting down");
                return None;
            };
            let routed = self.route(&received);
            let mut attempt = shutdown.clone();
            tokio::select! {
                confirmed = self.publisher.publish(routed.outgoing(), &mut attempt) => {
                    self.count(&routed, confirmed);
                }
                _ = stopping.wait() => return Some(routed),
            }
        }
    }

    /// After shutdown: publish `interrupted`, then what is buffered in `rx`. Stops at the first
    /// message the broker does not take: with shutdown requested, the publisher no longer
    /// reconnects, so the rest would fail the same way.
    async fn drain(
        &self,
        rx: &mut mpsc::Receiver<Received>,
        interrupted: Option<Routed>,
        shutdown: &Shutdown,
    ) {
        let mut attempt = shutdown.clone();
        if let Some(routed) = interrupted {
            if !self.publish_counted(&routed, &mut attempt).await {
                return;
            }
        }
        while let Some(received) = rx.recv().await {
            let routed = self.route(&received);
            if !self.publish_counted(&routed, &mut attempt).await {
                return;
            }
        }
    }

    /// Publish one message and count the outcome; whether the broker confirmed it.
    async fn publish_counted(&self, routed: &Routed, attempt: &mut Shutdown) -> bool {
        let confirmed = self.publisher.publish(routed.outgoing(), attempt).await;
        self.count(routed, confirmed);
        confirmed
    }

    /// Count the outcome of one publish; `confirmed` is false when shutdown came first.
    fn count(&self, routed: &Routed, confirmed: bool) {
        match (routed, confirmed) {
            (Routed::Event { .. }, true) => {
                self.counters.published.inc();
            }
            (Routed::DeadLetter { .. }, true) => {}
            (_, false) => {
                let routing_key = &routed.outgoing().routing_key;
                tracing::warn!(%routing_key, "shutting down before the broker took a message; dropped");
                self.counters.dropped.inc();
            }
        }
    }
}

/// A SUB socket connected to `endpoint` with every prefix subscribed. ZeroMQ connects in the
/// background (and reconnects by itself), so an endpoint that is down is not an error here.
fn subscribe(
    context: &zmq::Context,
    endpoint: &str,
    prefixes: &[String],
) -> zmq::Result<zmq::Socket> {
    let socket = context.socket(zmq::SUB)?;
    // Nothing is ever sent on a SUB socket: closing it must not wait.
    socket.set_linger(0)?;
    for prefix in prefixes {
        socket.set_subscribe(prefix.as_bytes())?;
    }
    socket.connect(endpoint)?;
    Ok(socket)
}

/// The receiving thread: poll every socket, read, hand over, until `stop` is set or the channel is
/// closed. Blocks (and so stops reading) while the channel is full.
fn receive(
    sockets: Vec<(Arc<str>, zmq::Socket)>,
    tx: mpsc::Sender<Received>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    while !stop.load(Ordering::Relaxed) {
        let mut items: Vec<zmq::PollItem> = sockets
            .iter()
            .map(|(_, s)| s.as_poll_item(zmq::POLLIN))
            .collect();
        match zmq::poll(&mut items, POLL_TIMEOUT_MS) {
            Ok(0) | Err(zmq::Error::EINTR) => continue,
            Ok(_) => {}
            Err(err) => {
                tracing::error!(error = %err, "polling the fedmsg sockets failed");
                std::thread::sleep(Duration::from_millis(POLL_TIMEOUT_MS as u64));
                continue;
            }
        }
        let readable: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        drop(items);
        for ((source, socket), readable) in sockets.iter().zip(readable) {
            if !readable {
                continue;
            }
            let frames = match socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%source, error = %err, "reading a fedmsg message failed");
                    continue;
                }
            };
            counters.received.inc();
            let received = Received {
                source: source.clone(),
                frames,
            };
            if tx.blocking_send(received).is_err() {
                // Shutting down: the channel was closed; this one message is not counted as
                // buffered, so it is dropped like anything still queued inside ZeroMQ.
                counters.dropped.inc();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_zeromq_endpoints() {
        let mut bridge = BridgeConfig::default();
        assert!(check_config(&bridge).is_ok());
        bridge.endpoints = vec![
            "tcp://hub.fedoraproject.org:9940".into(),
            "ipc:///run/x".into(),
        ];
        assert!(check_config(&bridge).is_ok());
        for bad in ["hub.fedoraproject.org:9940", "http://h:1", "tcp://", ""] {
            bridge.endpoints = vec![bad.into()];
            let err = check_config(&bridge).unwrap_err().to_string();
            assert!(err.contains("is not a ZeroMQ endpoint"), "{bad}: {err}");
        }
        bridge.endpoints.clear();
        bridge.topic_prefixes.clear();
        let err = check_config(&bridge).unwrap_err().to_string();
        assert!(
            err.contains("bridge.endpoints (--endpoint): empty"),
            "{err}"
        );
        assert!(err.contains("bridge.topic_prefixes: empty"), "{err}");
    }
}
