//! The events the rules tests and the benchmark evaluate: the real fedmsg samples
//! (tests/fixtures/fedmsg-real.jsonl) and the real-shaped messages of tests/fixtures/messages/.
//! Included as a module by `tests/partial_parsing.rs` and `benches/rules.rs`.

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde_json::Value;
use taskbot::messages::Event;

/// The fixture messages, in name order.
pub fn fixture_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("tests/fixtures/messages"))
        .expect("tests/fixtures/messages")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// The real samples and then the fixtures, as the bridge turns fedmsg envelopes into events.
pub fn sample_events(root: &Path) -> Vec<Event> {
    let samples = std::fs::read_to_string(root.join("tests/fixtures/fedmsg-real.jsonl"))
        .expect("tests/fixtures/fedmsg-real.jsonl");
    let mut envelopes: Vec<Value> = samples
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a JSON sample"))
        .collect();
    for path in fixture_files(root) {
        let text = std::fs::read_to_string(&path).expect("a fixture");
        envelopes.push(serde_json::from_str(&text).expect("a JSON fixture"));
    }
    envelopes
        .iter()
        .enumerate()
        .map(|(n, envelope)| Event {
            id: envelope["msg_id"]
                .as_str()
                .map_or_else(|| format!("sample-{n}"), str::to_string),
            topic: envelope["topic"].as_str().expect("a topic").to_string(),
            source: "fedmsg:tcp://127.0.0.1:4001".into(),
            sent_at: envelope["timestamp"].as_f64(),
            received_at: Utc::now(),
            username: envelope["username"].as_str().map(str::to_string),
            msg: envelope["msg"].clone(),
            headers: Default::default(),
        })
        .collect()
}
