//! Reading the ResultYAML file (`results.yml`) a task writes: the format Taskotron tasks used, so
//! existing checks port over unchanged.
//!
//! ```yaml
//! results:
//!   - item: xchat-0.5-1.fc20      # required
//!     type: koji_build             # required
//!     checkname: dist.rpmlint      # the testcase (default: the task's default testcase)
//!     outcome: PASSED              # missing → NEEDS_INSPECTION
//!     note: 5 errors, 10 warnings
//!     artifact: xchat.x86_64.log   # relative to $TASKBOT_ARTIFACTS
//!     arch: x86_64                 # the result's arch (default: the job's)
//!     anything_else: kept          # every other key goes into the result's data
//! ```
//!
//! A file that breaks any of these rules is refused as a whole, and the job gets a CRASHED
//! result saying why: publishing the entries that happened to be valid would hide the broken ones
//! behind a partial, green-looking set.

use std::collections::BTreeMap;

use serde::Deserialize;
use taskbot::limits::{
    self, check_text, MAX_ARCH_BYTES, MAX_ITEM_BYTES, MAX_ITEM_TYPE_BYTES, MAX_NAME_BYTES,
};
use taskbot::messages::Outcome;

use crate::task::{check_testcase, relative_inside};

/// One entry of the file, checked and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedResult {
    pub item: String,
    pub item_type: String,
    /// `checkname`, when given.
    pub testcase: Option<String>,
    pub outcome: Outcome,
    pub note: Option<String>,
    /// Path relative to the job's artifacts directory.
    pub artifact: Option<String>,
    /// The result's own arch, when the task gave one (a noarch job may report per arch).
    pub arch: Option<String>,
    /// Every key the format does not reserve.
    pub data: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResultsFile {
    results: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    item: String,
    #[serde(rename = "type")]
    item_type: String,
    #[serde(default)]
    checkname: Option<String>,
    #[serde(default)]
    outcome: Option<String>,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    artifact: Option<String>,
    #[serde(default)]
    arch: Option<String>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_norway::Value>,
}

/// Parse a results file's text within the default limits ([`parse_within`]).
pub fn parse(text: &str) -> Result<Vec<ReportedResult>, String> {
    parse_within(text, &crate::task_files::default_budget())
}

/// Parse a results file's text; one past `budget` is refused before parsing. The error is fit
/// for a CRASHED result's note: the YAML parser's message with its line and column, or the
/// entry (`results[2]`) and key at fault.
pub fn parse_within(
    text: &str,
    budget: &taskbot::yaml_budget::YamlBudget,
) -> Result<Vec<ReportedResult>, String> {
    taskbot::yaml_budget::check(text, budget).map_err(|e| e.to_string())?;
    let file: ResultsFile = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    if file.results.is_empty() {
        // A task that checked something says so; an empty list is far more often a bug in the task
        // than a deliberate "nothing to report", and would leave the job with no verdict at all.
        return Err("results: the list is empty; report at least one result".into());
    }
    file.results
        .into_iter()
        .enumerate()
        .map(|(i, entry)| entry_to_result(entry).map_err(|e| format!("results[{i}]: {e}")))
        .collect()
}

fn entry_to_result(entry: Entry) -> Result<ReportedResult, String> {
    if entry.item.trim().is_empty() {
        return Err("item: must not be empty".into());
    }
    if entry.item_type.trim().is_empty() {
        return Err("type: must not be empty".into());
    }
    let outcome = match entry.outcome.as_deref() {
        // Taskotron's rule: a result without an outcome needs a person to look at it.
        None => Outcome::NeedsInspection,
        // QUEUED and RUNNING are interim states Taskbot posts itself, not verdicts.
        Some(text) => Outcome::parse(text).filter(|o| o.is_final()).ok_or_else(|| {
            format!(
                "outcome: {text:?} is not one of PASSED, INFO, FAILED, NEEDS_INSPECTION, ABORTED, CRASHED"
            )
        })?,
    };
    // What no store can hold ends the job CRASHED naming the field and its limit: shortening an
    // item, type, testcase or data value would make it name something else. (The note is free
    // text: an over-long one is shortened when the verdict is published.)
    check_text("item", &entry.item, MAX_ITEM_BYTES)?;
    check_text("type", &entry.item_type, MAX_ITEM_TYPE_BYTES)?;
    if let Some(name) = &entry.checkname {
        check_testcase(name).map_err(|e| format!("checkname: {e}"))?;
    }
    if let Some(artifact) = &entry.artifact {
        relative_inside(artifact).map_err(|e| format!("artifact: {e}"))?;
        check_text("artifact", artifact, MAX_NAME_BYTES)?;
    }
    if let Some(arch) = &entry.arch {
        if arch.trim().is_empty() {
            return Err("arch: must not be empty".into());
        }
        check_text("arch", arch, MAX_ARCH_BYTES)?;
    }
    let mut data = BTreeMap::new();
    for (key, value) in entry.extra {
        let json = serde_json::to_value(&value)
            .map_err(|e| format!("{key}: cannot be represented as data: {e}"))?;
        data.insert(key, json);
    }
    limits::check_data(&data)?;
    Ok(ReportedResult {
        item: entry.item,
        item_type: entry.item_type,
        testcase: entry.checkname,
        outcome,
        note: entry.note,
        artifact: entry.artifact,
        arch: entry.arch,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn several_results_with_reserved_and_extra_keys() {
        let text = r#"
results:
  - item: xchat-0.5-1.fc20
    type: koji_build
    checkname: dist.rpmlint
    outcome: passed
    note: 5 errors, 10 warnings
    artifact: logs/xchat.log
    arch: x86_64
    errors: 5
    tags: [a, b]
  - item: FEDORA-2024-1
    type: bodhi_update
    outcome: FAILED
"#;
        let results = parse(text).unwrap();
        assert_eq!(results.len(), 2);
        let first = &results[0];
        assert_eq!(first.item, "xchat-0.5-1.fc20");
        assert_eq!(first.item_type, "koji_build");
        assert_eq!(first.testcase.as_deref(), Some("dist.rpmlint"));
        assert_eq!(first.outcome, Outcome::Passed);
        assert_eq!(first.note.as_deref(), Some("5 errors, 10 warnings"));
        assert_eq!(first.artifact.as_deref(), Some("logs/xchat.log"));
        assert_eq!(first.arch.as_deref(), Some("x86_64"));
        let expected: BTreeMap<String, serde_json::Value> = [
            ("errors".to_string(), json!(5)),
            ("tags".to_string(), json!(["a", "b"])),
        ]
        .into();
        assert_eq!(
            first.data, expected,
            "reserved keys are not repeated in data"
        );
        let second = &results[1];
        assert_eq!(second.outcome, Outcome::Failed);
        assert_eq!(second.testcase, None);
        assert!(second.data.is_empty());
    }

    #[test]
    fn missing_outcome_needs_inspection() {
        let results = parse("results:\n  - {item: x-1-1, type: koji_build}\n").unwrap();
        assert_eq!(results[0].outcome, Outcome::NeedsInspection);
    }

    #[test]
    fn invalid_outcome_refuses_the_file_naming_the_entry() {
        let err = parse(
            "results:\n  - {item: a, type: t, outcome: PASSED}\n  - {item: b, type: t, outcome: GREAT}\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("results[1]: outcome: \"GREAT\" is not one of"),
            "{err}"
        );
        let err = parse("results:\n  - {item: a, type: t, outcome: RUNNING}\n").unwrap_err();
        assert!(
            err.starts_with("results[0]: outcome: \"RUNNING\" is not one of"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("results:\n  - item: a\n     type: t\n").unwrap_err();
        assert!(err.contains("at line 3 column"), "{err}");
        let err = parse("results:\n  - item: a\n    type: [t\n").unwrap_err();
        assert!(err.starts_with("results[0].type: invalid type"), "{err}");
        assert!(err.contains("at line 3 column 11"), "{err}");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let err = parse("results:\n  - item: a\n    outcome: PASSED\n").unwrap_err();
        assert!(err.contains("missing field `type`"), "{err}");
        let err = parse("results:\n  - type: koji_build\n").unwrap_err();
        assert!(err.contains("missing field `item`"), "{err}");
        let err = parse("outcome: PASSED\n").unwrap_err();
        assert!(err.contains("results"), "{err}");
    }

    #[test]
    fn empty_list_and_unsafe_values_are_refused() {
        assert!(parse("results: []\n").unwrap_err().contains("empty"));
        let err =
            parse("results:\n  - {item: a, type: t, artifact: ../../etc/passwd}\n").unwrap_err();
        assert!(err.starts_with("results[0]: artifact:"), "{err}");
        let err = parse("results:\n  - {item: a, type: t, checkname: 'two words'}\n").unwrap_err();
        assert!(err.starts_with("results[0]: checkname:"), "{err}");
        let err = parse("results:\n  - {item: '', type: t}\n").unwrap_err();
        assert!(
            err.starts_with("results[0]: item: must not be empty"),
            "{err}"
        );
    }

    #[test]
    fn hostile_files_are_refused_before_parsing_with_their_position() {
        let deep = format!(
            "results:\n  - {{item: a, type: t, x: {}",
            "[".repeat(150_000)
        );
        assert!(deep.len() > 150_000);
        let err = parse(&deep).unwrap_err();
        // `results`, the sequence and the entry are three levels; the 62nd `[` is the 65th.
        let column = "  - {item: a, type: t, x: ".len() + 62;
        assert_eq!(
            err,
            format!(
                "collections nested deeper than the limit of 64 levels at line 2 column {column}"
            )
        );
        let mut bomb = String::from(
            "results:\n  - {item: a, type: t, l0: &l0 [x, x, x, x, x, x, x, x, x, x]}\n",
        );
        for level in 1..10 {
            let refs = vec![format!("*l{}", level - 1); 10].join(", ");
            bomb += &format!("  - {{item: a, type: t, l{level}: &l{level} [{refs}]}}\n");
        }
        let err = parse(&bomb).unwrap_err();
        assert!(
            err.starts_with(
                "aliases expand to more than 100000 nodes beyond the file's own at line "
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_top_level_key_is_refused() {
        let err = parse("results:\n  - {item: a, type: t}\nresluts: []\n").unwrap_err();
        assert!(err.contains("unknown field `resluts`"), "{err}");
    }

    #[test]
    fn values_no_store_can_hold_refuse_the_file_naming_the_field_and_limit() {
        let long = "a".repeat(limits::MAX_ITEM_BYTES + 1);
        let err = parse(&format!("results:\n  - {{item: {long}, type: t}}\n")).unwrap_err();
        assert_eq!(
            err,
            "results[0]: item is 1025 bytes, over the limit of 1024 bytes"
        );
        let err = parse("results:\n  - {item: \"a\\0b\", type: t}\n").unwrap_err();
        assert!(err.starts_with("results[0]: item contains a NUL"), "{err}");
        let err = parse(&format!(
            "results:\n  - {{item: a, type: t, checkname: {}}}\n",
            "c".repeat(limits::MAX_TESTCASE_BYTES + 1)
        ))
        .unwrap_err();
        assert!(
            err.starts_with("results[0]: checkname: is 256 bytes, over the limit of 255"),
            "{err}"
        );
        let err = parse(&format!(
            "results:\n  - {{item: a, type: t, log: {}}}\n",
            "l".repeat(limits::MAX_DATA_VALUE_BYTES)
        ))
        .unwrap_err();
        assert!(
            err.starts_with("results[0]: data value \"log\" is 8194 bytes"),
            "{err}"
        );
        // A long note is no reason to refuse the file: it is shortened when published.
        let note = "n".repeat(limits::MAX_NOTE_BYTES * 2);
        let parsed = parse(&format!(
            "results:\n  - {{item: a, type: t, note: {note}}}\n"
        ));
        assert_eq!(parsed.unwrap()[0].note.as_deref(), Some(note.as_str()));
    }
}
