//! The rules file: what QA engineers write. Parsed and validated once at load, so that a broken
//! file is refused with its position instead of failing on the first matching message.
//!
//! ```yaml
//! sets:
//!   primary_arches: [x86_64, aarch64]
//!   critpath: [kernel, glibc]
//! tasks:
//!   example: { repo: example, ref: main }      # relative repo → rules.task_base_url
//! rules:
//!   - name: example-on-koji-build
//!     when:
//!       topic: org.fedoraproject.*.buildsys.build.state.change
//!       match: { msg.new: 1, msg.instance: primary }
//!       where: { path: msg.name, in: critpath } # all / any / not / field tests
//!     do:
//!       - task: example
//!         item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
//!         item_type: koji_build
//!         arches: primary_arches               # a set name, a list, or "all"
//!   - name: example-per-build-of-update
//!     when: { topic: org.fedoraproject.*.bodhi.update.request.testing }
//!     do:
//!       - task: example
//!         for_each: msg.update.builds[*]       # one job per build (and arch)
//!         as: build
//!         item: "{{ build.nvr }}"
//!         item_type: koji_build
//!         arches: [noarch]
//! ```
//!
//! `docs/rules.md` is the user documentation of this format.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use taskbot::messages::Environment;
use taskbot::yaml_budget::{self, YamlBudget};

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
    /// A condition tree (`all` / `any` / `not` / field tests) that must also hold. `match` stays
    /// for the common "these fields equal these values" case; `where` is for everything else.
    #[serde(default, rename = "where")]
    pub condition: Option<ConditionSpec>,
}

/// One node of a `where` tree, as written. Exactly one kind per node: a combinator (`all`,
/// `any` or `not`) or a field test (`path` with one or more operators). This is one struct with
/// optional fields rather than an untagged enum so that serde can report unknown keys and wrong
/// value types with their line and column; the engine checks the "one kind per node" rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSpec {
    /// Every sub-condition holds.
    pub all: Option<Vec<ConditionSpec>>,
    /// At least one sub-condition holds.
    pub any: Option<Vec<ConditionSpec>>,
    /// The sub-condition does not hold.
    pub not: Option<Box<ConditionSpec>>,
    /// The field the operators below test, e.g. `msg.update.builds[*].nvr`.
    pub path: Option<String>,
    /// The field equals this value (numbers compare by value, as in `match`). `equals: null` is
    /// kept as a value (the field is present and null), hence the custom deserializer.
    #[serde(default, deserialize_with = "present_value")]
    pub equals: Option<serde_json::Value>,
    /// The field's value is one of these (a list, or the name of a set).
    #[serde(rename = "in")]
    pub one_of: Option<ValuesOrSet>,
    /// The field's value is none of these (a list, or the name of a set).
    pub not_in: Option<ValuesOrSet>,
    /// The field is a string (or number, as text) matching this regular expression (unanchored).
    pub regex: Option<String>,
    /// `true`: the field is present and not null; `false`: it is absent or null.
    pub exists: Option<bool>,
    /// Numeric comparisons; the field must be a number or a numeric string.
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

/// `Option<Value>` would turn `equals: null` into "no equals operator"; this keeps it as
/// `Some(Value::Null)` (serde only calls it when the key is present).
fn present_value<'de, D>(deserializer: D) -> Result<Option<serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// The operand of `in` / `not_in`: a literal list, or the name of a set from `sets:`.
/// Deserialized by hand: an untagged enum would only say "did not match any variant".
#[derive(Debug, Clone)]
pub enum ValuesOrSet {
    Set(String),
    Values(Vec<serde_json::Value>),
}

impl<'de> Deserialize<'de> for ValuesOrSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ValuesOrSet;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the name of a set or a list of values")
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<ValuesOrSet, E> {
                Ok(ValuesOrSet::Set(name.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ValuesOrSet, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element()? {
                    values.push(value);
                }
                Ok(ValuesOrSet::Values(values))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
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
    /// Create one job per element this path addresses (it must contain `[*]`), e.g.
    /// `msg.update.builds[*]`: a Bodhi update with three builds gives three jobs per arch.
    #[serde(default)]
    pub for_each: Option<String>,
    /// The name under which templates and `where` see the current element (default `each`):
    /// with `as: build`, `{{ build.nvr }}`.
    #[serde(default, rename = "as")]
    pub element_name: Option<String>,
    /// A condition on the current element (and the message): elements for which it does not
    /// hold get no job. Without `for_each` it is a plain extra condition for this action.
    #[serde(default, rename = "where")]
    pub condition: Option<ConditionSpec>,
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
    /// Which VM (with `environment: vm`): an image of the catalogue, or a blank disk and an
    /// ISO. Values are templates.
    #[serde(default)]
    pub vm: Option<VmSpec>,
    /// The testcases the task reports (e.g. `[dist.upgradepath]`); default: the task's name.
    /// The reporter posts a QUEUED result for each as soon as the job is requested, so gating
    /// sees the test as waiting rather than missing.
    #[serde(default)]
    pub testcases: Vec<String>,
    /// The variant this action runs, given to every result as the `scenario` data key (a
    /// template, like `item`). Greenwave keeps one latest result per testcase, scenario and arch, so variants of
    /// one testcase do not hide each other.
    #[serde(default)]
    pub scenario: Option<String>,
}

/// An action's `vm:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// `name`, `distro`, `release`, `flavour` (templates); unset ones match any image.
    #[serde(default)]
    pub image: BTreeMap<String, String>,
    /// A blank VM: an empty disk of this many MiB, booted from `iso`.
    #[serde(default)]
    pub blank_disk_mb: Option<u64>,
    /// `url` and `sha256` (templates) of an ISO to attach.
    #[serde(default)]
    pub iso: Option<IsoSpec>,
    /// Boot the item's kernel (a kernel build's RPM from Koji) with the image's userspace.
    #[serde(default)]
    pub kernel_from_item: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsoSpec {
    pub url: String,
    pub sha256: String,
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
    /// Parse YAML text within the default budget; `file` is only used in error messages.
    pub fn parse(text: &str, file: &str) -> Result<RulesFile, RulesError> {
        Self::parse_within(text, file, &YamlBudget::DEFAULT)
    }

    /// Parse YAML text, first refusing it if it is over `budget` (too large or nested too deep
    /// for the parser to get through quickly: see taskbot::yaml_budget).
    pub fn parse_within(
        text: &str,
        file: &str,
        budget: &YamlBudget,
    ) -> Result<RulesFile, RulesError> {
        yaml_budget::check(text, budget).map_err(|e| RulesError {
            file: file.to_string(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?;
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
}

/// The text of the rules file at `path`; a file that cannot be read, or is larger than
/// `max_bytes`, is refused like one that does not parse, naming the file (and unread, when it is
/// too large).
pub fn read_text(path: &Path, max_bytes: u64) -> Result<String, RulesError> {
    use std::io::Read as _;
    let refuse = |message: String| RulesError {
        file: path.display().to_string(),
        line: 0,
        column: 0,
        message,
    };
    let too_large = |size: u64| {
        refuse(format!(
            "the file is {size} bytes, over the limit of {max_bytes} (rules.max_file_bytes)"
        ))
    };
    let file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot read: {e}")))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > max_bytes {
        return Err(too_large(size));
    }
    let mut bytes = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| refuse(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(bytes.len() as u64));
    }
    String::from_utf8(bytes).map_err(|_| refuse("cannot read: the file is not UTF-8 text".into()))
}
