//! Events a task announces, so tasks can chain: the ISO task says "test ISO built" and the rules
//! schedule installation tests on it. Pure: parsing and checking the task's events file.
//!
//! A task writes one JSON object per line to `$TASKBOT_EVENTS`:
//! `{"topic": "taskbot.task.iso.built", "msg": {"iso_url": "...", "item": "anaconda-40.1-1.fc40"}}`.
//! The runner publishes each, after the task finished well, to the events exchange under its
//! topic, where they go through the same rules as bus events.
//!
//! The runner stamps every event's `msg` with [`PUBLISHER_KEY`]: the job's task (its name in the
//! rules), job id, item and arch, replacing whatever the task wrote under that key. Rules that
//! act on a task's event match the stamp, never the task's own words: a hostile task cannot
//! announce "an ISO of anaconda was built" for an item it was not given, or as another task.

use taskbot::messages::{derive_uuid, Event, JobRequest};

/// Topics tasks may use. A task cannot pass itself off as the build system or Bodhi: its events
/// are always recognisably Taskbot's.
pub const TOPIC_PREFIX: &str = "taskbot.";
/// Events one job may announce; more is a task gone wrong, not a reason to flood the bus.
pub const MAX_EVENTS: usize = 100;
/// The key of every task event's `msg` that says who published it (set by the runner).
pub const PUBLISHER_KEY: &str = "taskbot";
/// AMQP routing keys are short strings.
const MAX_TOPIC_BYTES: usize = 255;

/// The events in `text` (the content of the events file), or what is wrong with it.
pub fn parse(text: &str, job: &JobRequest) -> Result<Vec<Event>, String> {
    let mut events = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {line_no}: not JSON: {e}"))?;
        let topic = value
            .get("topic")
            .and_then(|t| t.as_str())
            .ok_or_else(|| format!("line {line_no}: no \"topic\" string"))?;
        if !topic.starts_with(TOPIC_PREFIX) || topic.len() <= TOPIC_PREFIX.len() {
            return Err(format!(
                "line {line_no}: topic {topic:?} must start with {TOPIC_PREFIX:?}"
            ));
        }
        if topic.len() > MAX_TOPIC_BYTES {
            return Err(format!(
                "line {line_no}: topic is longer than {MAX_TOPIC_BYTES} bytes"
            ));
        }
        let mut msg = match value.get("msg") {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => return Err(format!("line {line_no}: no \"msg\" object")),
        };
        msg.insert(PUBLISHER_KEY.into(), publisher(job));
        if events.len() == MAX_EVENTS {
            return Err(format!("more than {MAX_EVENTS} events"));
        }
        // Derived from the job and the position, so a job re-run after a crash announces the
        // same events under the same ids, and the rules derive the same job ids from them.
        let key = serde_json::json!([job.job_id, events.len()]);
        let id = derive_uuid(key.to_string().as_bytes());
        events.push(Event {
            id: format!("task-{id}"),
            topic: topic.to_string(),
            source: format!("task:{}", job.job_id),
            sent_at: None,
            received_at: chrono::Utc::now(),
            username: None,
            msg: serde_json::Value::Object(msg),
            headers: Default::default(),
        });
    }
    Ok(events)
}

/// Who published a task's event: the job, as the rules scheduled it.
fn publisher(job: &JobRequest) -> serde_json::Value {
    serde_json::json!({
        "task": job.task.name,
        "job_id": job.job_id.to_string(),
        "item": job.item,
        "item_type": job.item_type,
        "arch": job.arch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskbot::messages::TaskRef;

    fn job() -> JobRequest {
        let task = TaskRef {
            name: "build-iso".into(),
            repo: "file:///t".into(),
            git_ref: "main".into(),
        };
        taskbot::testing::job_request(task, "anaconda-40.1-1.fc40", "x86_64")
    }

    #[test]
    fn each_line_is_an_event_with_a_derived_id() {
        let j = job();
        let text = "{\"topic\": \"taskbot.task.iso.built\", \"msg\": {\"iso_url\": \"file:///a.iso\"}}\n\n{\"topic\": \"taskbot.task.other\", \"msg\": {}}\n";
        let events = parse(text, &j).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].topic, "taskbot.task.iso.built");
        assert_eq!(events[0].msg["iso_url"], "file:///a.iso");
        assert_eq!(events[0].source, format!("task:{}", j.job_id));
        assert_ne!(events[0].id, events[1].id);
        assert_eq!(
            parse(text, &j).unwrap()[0].id,
            events[0].id,
            "stable on re-run"
        );
    }

    #[test]
    fn the_runner_says_which_job_published_an_event_whatever_the_task_claims() {
        let j = job();
        let forged = "{\"topic\": \"taskbot.task.iso.built\", \"msg\": {\"item\": \"glibc-2.40-1.fc41\", \"taskbot\": {\"task\": \"trusted\", \"item\": \"glibc-2.40-1.fc41\"}}}\n";
        let events = parse(forged, &j).unwrap();
        assert_eq!(
            events[0].msg["taskbot"],
            serde_json::json!({
                "task": "build-iso",
                "job_id": j.job_id.to_string(),
                "item": "anaconda-40.1-1.fc40",
                "item_type": j.item_type,
                "arch": "x86_64",
            })
        );
        // The task's own words stay, for what they are.
        assert_eq!(events[0].msg["item"], "glibc-2.40-1.fc41");
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let j = job();
        let err = |t: &str| parse(t, &j).unwrap_err();
        assert!(err("{nope").starts_with("line 1: not JSON"));
        assert_eq!(err("\n{\"msg\": {}}"), "line 2: no \"topic\" string");
        assert!(
            err("{\"topic\": \"org.fedoraproject.prod.bodhi.x\", \"msg\": {}}")
                .contains("must start with \"taskbot.\"")
        );
        assert_eq!(
            err("{\"topic\": \"taskbot.x\", \"msg\": 3}"),
            "line 1: no \"msg\" object"
        );
        let many = "{\"topic\": \"taskbot.x\", \"msg\": {}}\n".repeat(MAX_EVENTS + 1);
        assert_eq!(err(&many), format!("more than {MAX_EVENTS} events"));
    }
}
