//! Readiness (`/readyz`): one flag per broker link, set by the AMQP plumbing as links connect
//! and fail, and one per other service a process needs (the reporter's PostgreSQL), set by
//! whoever checks it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;

/// Readiness: a service is ready when it has at least one broker link and every link it has
/// (one per consumed queue, one per standalone publisher) is connected with its topology
/// declared, and every dependency it registered ([`Readiness::dependency`]) answers.
#[derive(Default)]
pub struct Readiness {
    parts: Mutex<BTreeMap<String, Arc<AtomicBool>>>,
    dependencies: Mutex<BTreeMap<String, Arc<AtomicBool>>>,
}

/// One link's readiness flag; cheap to clone and set from callbacks.
#[derive(Clone)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Readiness {
    /// The flag of `part` (created not ready). The same name gives the same flag.
    pub fn part(&self, part: &str) -> ReadyFlag {
        let mut parts = lock(&self.parts);
        ReadyFlag(parts.entry(part.to_string()).or_default().clone())
    }

    /// The flag of a dependency other than the broker, e.g. `PostgreSQL` (created not ready).
    pub fn dependency(&self, name: &str) -> ReadyFlag {
        let mut dependencies = lock(&self.dependencies);
        ReadyFlag(dependencies.entry(name.to_string()).or_default().clone())
    }

    /// Every part (broker links, then dependencies) and whether it is ready.
    pub fn parts(&self) -> Vec<(String, bool)> {
        let mut parts = flags(&self.parts);
        parts.extend(flags(&self.dependencies));
        parts
    }

    /// `Ok` when ready; otherwise why not, for the `/readyz` answer.
    pub fn check(&self) -> Result<(), String> {
        let links = flags(&self.parts);
        if links.is_empty() {
            return Err("no broker link started yet".into());
        }
        let mut reasons = Vec::new();
        let waiting = not_ready(&links);
        if !waiting.is_empty() {
            reasons.push(format!("not connected to the broker: {waiting}"));
        }
        let unreachable = not_ready(&flags(&self.dependencies));
        if !unreachable.is_empty() {
            reasons.push(format!("cannot reach {unreachable}"));
        }
        match reasons.is_empty() {
            true => Ok(()),
            false => Err(reasons.join("; ")),
        }
    }
}

fn flags(map: &Mutex<BTreeMap<String, Arc<AtomicBool>>>) -> Vec<(String, bool)> {
    lock(map)
        .iter()
        .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
        .collect()
}

/// The names of the parts not ready, comma-separated.
fn not_ready(parts: &[(String, bool)]) -> String {
    let names: Vec<&str> = parts
        .iter()
        .filter(|(_, ready)| !ready)
        .map(|(name, _)| name.as_str())
        .collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_some_link_exists_and_all_are_connected() {
        let r = Readiness::default();
        assert!(r.check().unwrap_err().contains("no broker link"));
        let a = r.part("tb.rules");
        let b = r.part("publisher");
        a.set(true);
        let err = r.check().unwrap_err();
        assert!(
            err.contains("publisher") && !err.contains("tb.rules"),
            "{err}"
        );
        b.set(true);
        assert_eq!(r.check(), Ok(()));
        r.part("tb.rules").set(false);
        assert!(!a.get(), "the same name is the same flag");
        assert!(r.check().is_err());
    }

    #[test]
    fn a_dependency_that_does_not_answer_makes_the_service_not_ready() {
        let r = Readiness::default();
        r.part("tb.results.postgres").set(true);
        let db = r.dependency("PostgreSQL");
        assert_eq!(r.check().unwrap_err(), "cannot reach PostgreSQL");
        db.set(true);
        assert_eq!(r.check(), Ok(()));
        r.part("tb.results.postgres").set(false);
        db.set(false);
        assert_eq!(
            r.check().unwrap_err(),
            "not connected to the broker: tb.results.postgres; cannot reach PostgreSQL"
        );
        assert_eq!(
            r.parts().len(),
            2,
            "dependencies are listed too (taskbot_ready)"
        );
    }
}
