//! The rules file: what QA engineers write. Parsed and validated once at load, so that a broken
//! file is refused with its position instead of failing on the first matching message.
//!
//! ```yaml
//! sets:
//!   primary_arches: [x86_64, aarch64]
//! tasks:
//!   example: { repo: example, ref: main }      # relative repo → rules.task_base_url
//! rules:
//!   - name: example-on-koji-build
//!     when:
//!       topic: org.fedoraproject.*.buildsys.build.state.change
//!       match: { msg.new: 1, msg.instance: primary }
//!     do:
//!       - task: example
//!         item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
//!         item_type: koji_build
//!         arches: primary_arches               # a set name, a list, or "all"
//! ```
//!
//! `docs/rules.md` is the user documentation of this format.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use taskbot::messages::Environment;

/// The whole file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Named lists of values, defined once and used by name (arch lists, package lists).
    #[serde(default)]
    pub sets: BTreeMap<String, Vec<serde_json::Value>>,
    /// Task repositories by short name.
    #[serde(default)]
    pub tasks: BTreeMap<String, TaskSpec>,
    pub rules: Vec<RuleSpec>,
}

/// Where a task's repository is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Clone URL, or a path relative to `rules.task_base_url`.
    pub repo: String,
    /// Branch, tag or commit.
    #[serde(rename = "ref", default = "default_ref")]
    pub git_ref: String,
}

fn default_ref() -> String {
    "main".into()
}

/// One if-then rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name; part of every job id it creates, and shown in job records.
    pub name: String,
    pub when: WhenSpec,
    #[serde(rename = "do")]
    pub actions: Vec<ActionSpec>,
}

/// When a rule fires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    /// One topic pattern or several; `*` stands for one dot-separated segment (or part of one).
    pub topic: OneOrMany,
    /// Fields that must have exactly these values, addressed by path (`msg.new`,
    /// `msg.update.release.version`).
    #[serde(default, rename = "match")]
    pub equals: BTreeMap<String, serde_json::Value>,
}

/// A single string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// What a rule does: schedule one task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// A name from `tasks:`.
    pub task: String,
    /// Template of the item, e.g. `{{ msg.name }}-{{ msg.version }}-{{ msg.release }}`.
    pub item: String,
    /// Item type: `koji_build`, `bodhi_update`, `compose`, ...
    pub item_type: String,
    /// A list of arches, the name of a set of arches, or `all` (every arch of the deployment).
    pub arches: OneOrMany,
    /// Extra arguments; values are templates too.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// 0 (default) to 9.
    #[serde(default)]
    pub priority: u8,
    /// `local` (default) or `vm`.
    #[serde(default)]
    pub environment: Environment,
    /// The task may break its machine: it must get a fresh VM.
    #[serde(default)]
    pub destructive: bool,
}

/// A rules file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {message}")]
pub struct RulesError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl RulesFile {
    /// Parse YAML text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &str) -> Result<RulesFile, RulesError> {
        serde_norway::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            // serde_norway appends " at line L column C"; the prefix already says where.
            let message = e.to_string();
            let message = match message.find(" at line ") {
                Some(i) => message[..i].to_string(),
                None => message,
            };
            RulesError {
                file: file.to_string(),
                line,
                column,
                message,
            }
        })
    }

    pub fn read(path: &Path) -> Result<RulesFile, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|e| RulesError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// Find the line of the first occurrence of `needle` in the text, for errors found after parsing
/// (unknown task, duplicate rule name), which the YAML parser cannot place.
pub fn locate(text: &str, needle: &str) -> (usize, usize) {
    for (i, line) in text.lines().enumerate() {
        if let Some(col) = line.find(needle) {
            return (i + 1, col + 1);
        }
    }
    (0, 0)
}
