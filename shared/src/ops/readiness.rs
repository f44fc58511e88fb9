//! Readiness (`/readyz`): one flag per broker link, set by the AMQP plumbing as links connect
//! and fail.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::lock;

/// Readiness: a service is ready when it has at least one broker link and every link it has
/// (one per consumed queue, one per standalone publisher) is connected with its topology
/// declared.
#[derive(Default)]
pub struct Readiness {
    parts: Mutex<BTreeMap<String, Arc<AtomicBool>>>,
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

    /// Every part and whether it is ready.
    pub fn parts(&self) -> Vec<(String, bool)> {
        lock(&self.parts)
            .iter()
            .map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed)))
            .collect()
    }

    /// `Ok` when ready; otherwise why not, for the `/readyz` answer.
    pub fn check(&self) -> Result<(), String> {
        let parts = self.parts();
        if parts.is_empty() {
            return Err("no broker link started yet".into());
        }
        let waiting: Vec<&str> = parts
            .iter()
            .filter(|(_, ready)| !ready)
            .map(|(name, _)| name.as_str())
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "not connected to the broker: {}",
                waiting.join(", ")
            ))
        }
    }
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
}
