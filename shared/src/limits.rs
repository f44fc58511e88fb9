//! How long the values that reach the stores may be: the one place every service takes them from.
//!
//! A value a store cannot hold is refused where it enters the system, so no stage downstream ever
//! holds a message that can never be stored:
//!
//! - the rules service requests no job whose rendered `item` breaks a limit (the rule is skipped
//!   for that event, with the reason logged; the event's other jobs are still requested);
//! - the runner ends a job CRASHED, naming the field and its limit, when the task's results file
//!   reports a value over a limit, and shortens an over-long note or status detail (saying so in
//!   it) instead of losing the verdict;
//! - the reporter dead-letters, with the same reason, any result or status that still breaks a
//!   limit (one injected by hand, or from an older runner), before it touches a store.
//!
//! The limits come from the stores: PostgreSQL indexes `item` and `testcase` (a B-tree entry holds
//! at most ~2,700 bytes, and a longer value fails every insert with SQLSTATE 54000), ResultsDB
//! indexes testcase names and data keys the same way, and neither `text` nor `jsonb` can hold a
//! NUL character. They are far above any real name: an NVR, an update alias or a compose id is
//! well under a hundred bytes. docs/messages.md lists them.

use std::collections::BTreeMap;

use crate::messages::{JobRequest, JobStatus, TaskResult};

/// A result's or job's `item` (indexed in `results` and `jobs`).
pub const MAX_ITEM_BYTES: usize = 1024;
/// A result's or job's `item_type`.
pub const MAX_ITEM_TYPE_BYTES: usize = 255;
/// A testcase name (indexed in `results`, unique in ResultsDB).
pub const MAX_TESTCASE_BYTES: usize = 255;
/// A result's or job's `arch`.
pub const MAX_ARCH_BYTES: usize = 64;
/// A result's note, and a job status's detail. Longer ones are shortened by the runner.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;
/// A key of a result's `data` (indexed in ResultsDB).
pub const MAX_DATA_KEY_BYTES: usize = 255;
/// One value of a result's `data`, as JSON text.
pub const MAX_DATA_VALUE_BYTES: usize = 8 * 1024;
/// The names and ids a job carries from its rule and event (`rule`, `event_id`, `event_topic`,
/// the task's name, repository and ref) and the `service` of a status.
pub const MAX_NAME_BYTES: usize = 4096;

/// Why a value is refused: the field, its size and the limit, in words fit for a CRASHED note or
/// a dead-letter reason.
pub fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), String> {
    if value.len() > max_bytes {
        return Err(format!(
            "{field} is {} bytes, over the limit of {max_bytes} bytes",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "{field} contains a NUL character, which the stores cannot hold"
        ));
    }
    Ok(())
}

/// Check a result's `data`: each key and each value (as JSON text; a string inside it must not
/// hold a NUL either, which `jsonb` refuses).
pub fn check_data(data: &BTreeMap<String, serde_json::Value>) -> Result<(), String> {
    for (key, value) in data {
        check_text("a data key", key, MAX_DATA_KEY_BYTES)?;
        let text = value.to_string();
        let field = format!("data value {key:?}");
        check_text(&field, &text, MAX_DATA_VALUE_BYTES)?;
        if holds_nul(value) {
            return Err(format!(
                "{field} contains a NUL character, which the stores cannot hold"
            ));
        }
    }
    Ok(())
}

/// Whether a string anywhere in `value` (a key or a value) holds a NUL character.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// Check the fields of a job that the stores keep.
pub fn check_job(job: &JobRequest) -> Result<(), String> {
    check_text("item", &job.item, MAX_ITEM_BYTES)?;
    check_text("item_type", &job.item_type, MAX_ITEM_TYPE_BYTES)?;
    check_text("arch", &job.arch, MAX_ARCH_BYTES)?;
    for (field, value) in [
        ("rule", &job.rule),
        ("event_id", &job.event_id),
        ("event_topic", &job.event_topic),
        ("task.name", &job.task.name),
        ("task.repo", &job.task.repo),
        ("task.ref", &job.task.git_ref),
    ] {
        check_text(field, value, MAX_NAME_BYTES)?;
    }
    Ok(())
}

/// Check every field of a result that the stores keep.
pub fn check_result(result: &TaskResult) -> Result<(), String> {
    check_text("item", &result.item, MAX_ITEM_BYTES)?;
    check_text("item_type", &result.item_type, MAX_ITEM_TYPE_BYTES)?;
    check_text("testcase", &result.testcase, MAX_TESTCASE_BYTES)?;
    check_text("arch", &result.arch, MAX_ARCH_BYTES)?;
    if let Some(note) = &result.note {
        check_text("note", note, MAX_NOTE_BYTES)?;
    }
    for (field, value) in [
        ("rule", &result.rule),
        ("event_id", &result.event_id),
        ("runner", &result.runner),
        ("task.name", &result.task.name),
        ("task.repo", &result.task.repo),
        ("task.ref", &result.task.git_ref),
    ] {
        check_text(field, value, MAX_NAME_BYTES)?;
    }
    if let Some(url) = &result.log_url {
        check_text("log_url", url, MAX_NAME_BYTES)?;
    }
    check_data(&result.data)
}

/// Check a status and the job it carries.
pub fn check_status(status: &JobStatus) -> Result<(), String> {
    check_text("service", &status.service, MAX_NAME_BYTES)?;
    if let Some(detail) = &status.detail {
        check_text("detail", detail, MAX_NOTE_BYTES)?;
    }
    check_job(&status.job).map_err(|e| format!("job: {e}"))
}

/// `note` made storable: NUL characters replaced (by U+FFFD), and when it is over
/// [`MAX_NOTE_BYTES`] its start kept with a line saying how much was cut. A note is free text for
/// people: its start says what happened, and losing the verdict for its length would be worse.
pub fn fit_note(note: &str) -> String {
    let clean = if note.contains('\0') {
        note.replace('\0', "\u{fffd}")
    } else {
        note.to_string()
    };
    if clean.len() <= MAX_NOTE_BYTES {
        return clean;
    }
    // Room for the marker line, which is well under 100 bytes.
    let mut keep = MAX_NOTE_BYTES - 100;
    while !clean.is_char_boundary(keep) {
        keep -= 1;
    }
    let cut = clean.len() - keep;
    format!(
        "{}\n[note shortened: {cut} bytes cut to stay within {MAX_NOTE_BYTES} bytes]",
        &clean[..keep]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_over_its_limit_or_with_a_nul_is_refused_naming_the_field() {
        assert!(check_text("item", &"x".repeat(MAX_ITEM_BYTES), MAX_ITEM_BYTES).is_ok());
        let err = check_text("item", &"x".repeat(MAX_ITEM_BYTES + 1), MAX_ITEM_BYTES).unwrap_err();
        assert_eq!(err, "item is 1025 bytes, over the limit of 1024 bytes");
        let err = check_text("note", "a\0b", 10).unwrap_err();
        assert!(err.contains("note contains a NUL"), "{err}");
    }

    #[test]
    fn data_keys_values_and_nuls_inside_values_are_checked() {
        let mut data = BTreeMap::new();
        data.insert("errors".to_string(), json!([1, "two"]));
        assert!(check_data(&data).is_ok());
        data.insert("big".to_string(), json!("x".repeat(MAX_DATA_VALUE_BYTES)));
        let err = check_data(&data).unwrap_err();
        assert!(err.starts_with("data value \"big\" is 8194 bytes"), "{err}");
        data.remove("big");
        data.insert("k".to_string(), json!({"a": ["b\u{0}c"]}));
        assert!(check_data(&data).unwrap_err().contains("NUL"));
        data.insert("k".to_string(), json!("a literal \\u0000 is fine"));
        assert!(check_data(&data).is_ok());
        data.remove("k");
        data.insert("k".repeat(MAX_DATA_KEY_BYTES + 1), json!(1));
        assert!(check_data(&data)
            .unwrap_err()
            .starts_with("a data key is 256"));
    }

    #[test]
    fn a_long_note_keeps_its_start_and_says_it_was_shortened() {
        assert_eq!(fit_note("short\0note"), "short\u{fffd}note");
        // Multi-byte characters: the cut falls on a character boundary.
        let long = "é".repeat(MAX_NOTE_BYTES);
        let fitted = fit_note(&long);
        assert!(fitted.len() <= MAX_NOTE_BYTES, "{}", fitted.len());
        assert!(fitted.starts_with("éé"));
        assert!(fitted.ends_with(&format!("to stay within {MAX_NOTE_BYTES} bytes]")));
        assert!(check_text("note", &fitted, MAX_NOTE_BYTES).is_ok());
    }
}
