//! The library every Taskbot service uses: message types, the AMQP topology and plumbing, config,
//! telemetry, the health and metrics endpoints ([`ops`]) and shutdown. Services depend on this
//! crate only for these concerns, so there is one place to change each.

#[cfg(all(feature = "management", feature = "postgres"))]
pub mod accounts;
pub mod amqp;
pub mod artifacts;
pub mod config;
#[cfg(feature = "download")]
pub mod download;
pub mod errors;
pub mod fedora_messaging;
pub mod identity;
pub mod limits;
#[cfg(feature = "management")]
pub mod management;
pub mod messages;
pub mod ops;
pub mod outcomes;
pub mod routes;
pub mod secrets;
pub mod service;
pub mod setup;
pub mod shutdown;
#[cfg(feature = "postgres")]
pub mod store;
pub mod telemetry;
pub mod text;
pub mod topology;
pub mod yaml_budget;

pub use config::Config;
pub use errors::error_chain;
pub use identity::{Role, Service};
pub use messages::{
    Environment, Event, JobRequest, JobState, JobStatus, Machine, Message, Outcome, ProvisionedJob,
    TaskRef, TaskResult,
};
pub use shutdown::Shutdown;
pub use topology::Topology;

#[cfg(feature = "testing")]
pub mod testing;

/// `service@host`, to say in job statuses and results which instance did something.
pub fn instance_name(service: &str) -> String {
    format!("{service}@{}", host_name())
}

/// This host's name (the kernel's, else `$HOSTNAME`, else `unknown-host`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}
