//! The library every Taskbot service uses: message types, the AMQP topology and plumbing, config,
//! telemetry and shutdown. Services depend on this crate only for these concerns, so there is one
//! place to change each.

pub mod amqp;
pub mod config;
pub mod messages;
pub mod shutdown;
pub mod telemetry;
pub mod topology;

pub use config::Config;
pub use messages::{
    Environment, Event, JobRequest, JobState, JobStatus, Machine, Message, Outcome,
    ProvisionedJob, TaskRef, TaskResult,
};
pub use shutdown::Shutdown;
pub use topology::Topology;

#[cfg(feature = "testing")]
pub mod testing;
