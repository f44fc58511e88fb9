//! The one place Taskbot talks AMQP: connecting (with back-off), publishing with confirms, and a
//! consume loop that turns a handler's [`Disposition`] into publishes and acks.
//!
//! The at-least-once contract every service relies on: an input is acked only after everything it
//! produced was confirmed by the broker. If the connection dies in between, the input is redelivered
//! and the handler runs again, so handlers must be idempotent (ids are derived, stores
//! deduplicate).
//!
//! One file per concern, everything re-exported here (`taskbot::amqp::Publisher`):
//! - `message.rs`: the plain data handlers see and produce ([`Incoming`], [`Outgoing`],
//!   [`Disposition`]) and the dead-letter headers;
//! - `connect.rs`: reaching the broker, with [`Backoff`];
//! - `publish.rs`: [`Publisher`] (confirm mode) and [`ReliablePublisher`] (its own connection);
//! - `consume.rs`: [`Handler`], [`DeliveryContext`] and the consume loop ([`consume()`]);
//! - `external.rs`: [`ExternalBroker`], connecting to a broker that is not Taskbot's (TLS,
//!   client certificates, SASL EXTERNAL);
//! - [`dead_letters`]: reading, moving and purging dead-letter queues (`taskbot dlq`).

mod connect;
mod consume;
pub mod dead_letters;
mod external;
mod message;
mod publish;

pub use connect::{connect, connect_with_retry, login_refused, url_user, Backoff};
pub use consume::{consume, retry_pause, ConsumerSpec, DeliveryContext, Handler, MAX_RETRY_DELAY};
pub use external::ExternalBroker;
pub(crate) use message::incoming_from;
pub use message::{
    Disposition, Incoming, Outgoing, EXCHANGE_HEADER, REASON_HEADER, ROUTING_KEY_HEADER,
    SOURCE_HEADER,
};
pub use publish::{PublishError, Publisher, ReliablePublisher};
