//! `taskbot.yaml`: what a task repository tells the runner about itself (format v1).
//!
//! ```yaml
//! name: example
//! description: Checks that the item is a well-formed NVR.
//! maintainer: qa@example.org
//! item_types: [koji_build]          # empty or absent: any
//! arches: [x86_64, noarch]          # empty or absent: any
//! environment: {packages: [rpmlint], provision: local, destructive: false}
//! timeout: 300                      # seconds; capped by the runner's runner.task_timeout_secs
//! downloads:
//!   - {url: "https://kojipkgs.example/{{ item }}.rpm", sha256: "…", max_bytes: 1000000, dest: a.rpm}
//! prepare: [make]                   # steps: a shell string, {run, timeout, name} or {reboot: true}
//! run: sh ./check.sh                # a string, or a list of steps
//! results: results.yml              # where the task writes its ResultYAML (default)
//! artifacts: ["out/*.log"]          # globs, relative to the clone, copied into the artifacts
//! cleanup: [rm -rf /tmp/mine]       # steps run whatever happened
//! testcase: dist.example            # testcase of results that do not name one
//! testcases: [dist.example]         # every testcase it reports (default: [testcase])
//! ```
//!
//! The format is deliberately strict (unknown keys are refused): earlier systems changed their task
//! format twice and every change forced task authors to rewrite, so each key added later must be an
//! addition, and a misspelt key must fail loudly instead of being ignored. `docs/tasks.md`
//! documents it for task authors.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use taskbot::text::{template_pieces, Piece};
use taskbot::yaml_budget::YamlBudget;

/// The file name the runner looks for at the root of a task repository.
pub const TASK_FILE: &str = "taskbot.yaml";

/// The results file a task writes when `taskbot.yaml` does not name another.
pub const DEFAULT_RESULTS_FILE: &str = "results.yml";

/// The parsed `taskbot.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskFile {
    /// Short name of the task, for people and logs. Results do not use it: their default testcase
    /// comes from `testcase`, or from the task name the rules gave the job.
    pub name: String,
    /// What the task checks, for people browsing task repositories.
    #[serde(default)]
    pub description: Option<String>,
    /// Who to ask about the task (a name, an address).
    #[serde(default)]
    pub maintainer: Option<String>,
    /// Item types the task can check; a job for another type crashes before anything runs.
    /// Empty: any.
    #[serde(default)]
    pub item_types: Vec<String>,
    /// Arches the task can run for; empty: any.
    #[serde(default)]
    pub arches: Vec<String>,
    /// What the task needs from the machine it runs on.
    #[serde(default)]
    pub environment: Environment,
    /// Longest the task may run (downloads, prepare and run steps together), in seconds. The
    /// runner's `task_timeout_secs` caps it, so a task cannot hold a runner longer than its
    /// operator allows.
    #[serde(default)]
    pub timeout: Option<u64>,
    /// Files fetched into the clone before `prepare`.
    #[serde(default)]
    pub downloads: Vec<Download>,
    /// Steps run before `run`; one failing crashes the job (the check itself never ran).
    #[serde(default)]
    pub prepare: Vec<Step>,
    /// The check: a shell command (run with `sh -c`, in the root of the clone), or a list of
    /// steps run in order until one fails.
    pub run: RunSpec,
    /// Path of the ResultYAML file the task writes, relative to the clone. Default `results.yml`.
    /// When the task writes none, the runner makes one result from the exit code.
    #[serde(default)]
    pub results: Option<String>,
    /// Globs (relative to the clone) of files copied into the job's artifacts when the task ends.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Steps run after the task whatever happened (also after a timeout or a failed step).
    #[serde(default)]
    pub cleanup: Vec<Step>,
    /// Testcase of the results the runner writes for the task (from the exit code, or CRASHED)
    /// and of ResultYAML entries without `checkname`. Default: the task's name in the rules
    /// (`JobRequest::default_testcase`), the name the runner already knows before it has cloned
    /// anything, so a task's crashes and its verdicts file under one testcase unless it says
    /// otherwise.
    #[serde(default)]
    pub testcase: Option<String>,
    /// Every testcase the task reports on the job's item, when it reports several (e.g.
    /// `[dist.abicheck, dist.abicheck.strict]`). The reporter posts a RUNNING result for each
    /// while the task runs, and each must get a verdict: one the task does not report ends the
    /// job CRASHED for that testcase. Default: `[testcase]` when `testcase` is set, else the
    /// rule's `testcases`.
    #[serde(default)]
    pub testcases: Vec<String>,
}

/// `environment:` — what the task needs. The runner checks and records it; it does not install
/// packages or start machines itself (that is the provisioner's part).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// OS packages the task expects to be installed.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Where the task must run.
    #[serde(default)]
    pub provision: Provision,
    /// The task may leave its machine unusable, so it must never run on the runner's own host.
    #[serde(default)]
    pub destructive: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provision {
    /// On the runner's host.
    #[default]
    Local,
    /// On a virtual machine of its own.
    Vm,
}

/// One entry of `downloads:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// URL template (`{{ item }}` etc.; values are percent-encoded).
    pub url: String,
    /// Expected SHA-256 of the file, in hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Largest size accepted, in bytes (never more than `runner.download_max_bytes`).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Path in the clone to save to; default: the URL's last path segment.
    #[serde(default)]
    pub dest: Option<String>,
}

/// One step: a shell command, with an optional time limit and name; or, for a task in a VM,
/// `{reboot: true}`: reboot the VM and go on with the next step once it is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The command; empty for a reboot step.
    pub run: String,
    /// Seconds; default: what is left of the task's time. For a reboot step: how long the VM
    /// may take to come back.
    pub timeout: Option<u64>,
    /// For logs and notes; default: the phase and position (`prepare-1`).
    pub name: Option<String>,
    pub reboot: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepMap {
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    reboot: Option<bool>,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    name: Option<String>,
}

impl StepMap {
    /// A step has a command or is a reboot, never both (nor `reboot: false` alone).
    fn into_step(self) -> Result<Step, &'static str> {
        let reboot = match (self.run.is_some(), self.reboot) {
            (true, None) => false,
            (false, Some(true)) => true,
            (true, Some(_)) => return Err("a step has either `run` or `reboot: true`, not both"),
            (false, Some(false)) => return Err("`reboot: false` is no step: give `run`"),
            (false, None) => return Err("a step needs `run` (or `reboot: true`)"),
        };
        Ok(Step {
            run: self.run.unwrap_or_default(),
            timeout: self.timeout,
            name: self.name,
            reboot,
        })
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> Visitor<'de> for StepVisitor {
            type Value = Step;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a shell command or a map with run, timeout and name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Step, E> {
                Ok(Step {
                    run: v.to_string(),
                    timeout: None,
                    name: None,
                    reboot: false,
                })
            }
            // YAML reads `run: true` as a boolean; as a command it is the word.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Step, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Step, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Step, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Step, A::Error> {
                let m = StepMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                m.into_step().map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(StepVisitor)
    }
}

/// `run:` — one command (the original form) or a list of steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunSpec {
    Command(String),
    Steps(Vec<Step>),
}

impl<'de> Deserialize<'de> for RunSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RunVisitor;
        impl<'de> Visitor<'de> for RunVisitor {
            type Value = RunSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a shell command or a list of steps")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RunSpec, E> {
                Ok(RunSpec::Command(v.to_string()))
            }
            // YAML reads `run: true` as a boolean; as a command it is the word.
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RunSpec, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RunSpec, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RunSpec, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RunSpec, A::Error> {
                let steps = Vec::<Step>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(RunSpec::Steps(steps))
            }
        }
        deserializer.deserialize_any(RunVisitor)
    }
}

/// Why `taskbot.yaml` cannot be used; the text goes into a CRASHED result's note.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskFileError {
    #[error("the repository has no {TASK_FILE} at its root")]
    Missing,
    /// The YAML parser's message, which carries the line and column where it could tell.
    #[error("invalid {TASK_FILE}: {0}")]
    Invalid(String),
}

/// A step ready to run: its phase-qualified name and its command (or that it reboots the VM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedStep {
    pub name: String,
    pub run: String,
    pub timeout: Option<u64>,
    pub reboot: bool,
}

impl TaskFile {
    /// Parse and validate the file's text, within the default limits.
    pub fn parse(text: &str) -> Result<TaskFile, TaskFileError> {
        TaskFile::parse_within(text, &crate::task_files::default_budget())
    }

    /// Parse and validate the file's text; one past `budget` is refused before parsing.
    pub fn parse_within(text: &str, budget: &YamlBudget) -> Result<TaskFile, TaskFileError> {
        taskbot::yaml_budget::check(text, budget)
            .map_err(|e| TaskFileError::Invalid(e.to_string()))?;
        let task: TaskFile =
            serde_norway::from_str(text).map_err(|e| TaskFileError::Invalid(e.to_string()))?;
        task.validate().map_err(TaskFileError::Invalid)?;
        Ok(task)
    }

    /// Read `taskbot.yaml` from the root of a clone, within `budget`.
    pub fn load(clone_dir: &Path, budget: &YamlBudget) -> Result<TaskFile, TaskFileError> {
        // A repository may hold `taskbot.yaml` as a symbolic link (git checks them out):
        // never followed, as no task file is (crate::task_files).
        let bytes =
            crate::task_files::read_beneath(clone_dir, Path::new(TASK_FILE), budget.max_bytes);
        match bytes {
            Ok(Some(bytes)) => match String::from_utf8(bytes) {
                Ok(text) => TaskFile::parse_within(&text, budget),
                Err(_) => Err(TaskFileError::Invalid(
                    "cannot read it: not UTF-8 text".into(),
                )),
            },
            Ok(None) => Err(TaskFileError::Missing),
            Err(e) => Err(TaskFileError::Invalid(format!("cannot read it: {e}"))),
        }
    }

    /// Checks serde cannot express. Each message names the key.
    fn validate(&self) -> Result<(), String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        if self.timeout == Some(0) {
            return Err("timeout: must be at least 1 second".into());
        }
        if let RunSpec::Steps(steps) = &self.run {
            if steps.is_empty() {
                return Err("run: must not be empty".into());
            }
        }
        self.validate_steps()?;
        self.validate_downloads()?;
        for (key, list) in [("item_types", &self.item_types), ("arches", &self.arches)] {
            if list.iter().any(|v| v.trim().is_empty()) {
                return Err(format!("{key}: entries must not be empty"));
            }
        }
        for (i, glob) in self.artifacts.iter().enumerate() {
            relative_inside(glob).map_err(|e| format!("artifacts[{i}]: {e}"))?;
        }
        if let Some(testcase) = &self.testcase {
            check_testcase(testcase).map_err(|e| format!("testcase: {e}"))?;
        }
        for (i, testcase) in self.testcases.iter().enumerate() {
            check_testcase(testcase).map_err(|e| format!("testcases[{i}]: {e}"))?;
            if self.testcases[..i].contains(testcase) {
                return Err(format!("testcases[{i}]: {testcase} is listed twice"));
            }
        }
        if let Some(results) = &self.results {
            relative_inside(results).map_err(|e| format!("results: {e}"))?;
        }
        Ok(())
    }

    /// Each step of each phase: a command or a reboot (only for a task in a VM, never in
    /// cleanup), a sane timeout and name, templates that render.
    fn validate_steps(&self) -> Result<(), String> {
        for (phase, steps) in [
            ("prepare", self.prepare.clone()),
            ("run", self.run_steps_raw()),
            ("cleanup", self.cleanup.clone()),
        ] {
            for (i, step) in steps.iter().enumerate() {
                let at = if phase == "run" && matches!(self.run, RunSpec::Command(_)) {
                    "run".to_string()
                } else {
                    format!("{phase}[{i}]")
                };
                if step.reboot && phase == "cleanup" {
                    return Err(format!(
                        "{at}: cleanup cannot reboot (it runs also when the VM is gone)"
                    ));
                }
                if step.reboot && self.environment.provision != Provision::Vm {
                    return Err(format!(
                        "{at}: only a task in a VM of its own (environment.provision: vm) may \
                         reboot its machine"
                    ));
                }
                if step.run.trim().is_empty() && !step.reboot {
                    return Err(format!("{at}: must not be empty"));
                }
                if step.timeout == Some(0) {
                    return Err(format!("{at}.timeout: must be at least 1 second"));
                }
                if let Some(name) = &step.name {
                    check_step_name(name).map_err(|e| format!("{at}.name: {e}"))?;
                }
                check_template(&step.run).map_err(|e| format!("{at}: {e}"))?;
            }
        }
        Ok(())
    }

    /// Each download: an http(s) URL template, a SHA-256, a limit and a destination inside the
    /// clone.
    fn validate_downloads(&self) -> Result<(), String> {
        for (i, d) in self.downloads.iter().enumerate() {
            let at = format!("downloads[{i}]");
            if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
                return Err(format!("{at}.url: {:?} must be an http(s) URL", d.url));
            }
            check_template(&d.url).map_err(|e| format!("{at}.url: {e}"))?;
            if let Some(sum) = &d.sha256 {
                if sum.len() != 64 || !sum.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!("{at}.sha256: must be 64 hex digits"));
                }
            }
            if d.max_bytes == Some(0) {
                return Err(format!("{at}.max_bytes: must be at least 1"));
            }
            if let Some(dest) = &d.dest {
                check_template(dest).map_err(|e| format!("{at}.dest: {e}"))?;
                relative_inside(dest).map_err(|e| format!("{at}.dest: {e}"))?;
            }
        }
        Ok(())
    }

    /// The testcases the task file declares it reports (`testcases`); `None` when it declares
    /// none (the rule's `testcases` stand). `testcase` is not a declaration: it names the results
    /// that name none, and a task reporting other testcases (cloud-smoke's `hostname`, `disk`,
    /// `network`) never reports it.
    pub fn declared_testcases(&self) -> Option<Vec<String>> {
        (!self.testcases.is_empty()).then(|| self.testcases.clone())
    }

    fn run_steps_raw(&self) -> Vec<Step> {
        match &self.run {
            RunSpec::Command(run) => vec![Step {
                run: run.clone(),
                timeout: None,
                name: None,
                reboot: false,
            }],
            RunSpec::Steps(steps) => steps.clone(),
        }
    }

    /// Steps of a phase with their names: the given one, else `run` for the single-command form,
    /// else `<phase>-<n>` (from 1).
    pub fn steps(&self, phase: Phase) -> Vec<NamedStep> {
        let steps = match phase {
            Phase::Prepare => self.prepare.clone(),
            Phase::Run => self.run_steps_raw(),
            Phase::Cleanup => self.cleanup.clone(),
        };
        let single_command = phase == Phase::Run && matches!(self.run, RunSpec::Command(_));
        steps
            .into_iter()
            .enumerate()
            .map(|(i, s)| NamedStep {
                name: s.name.unwrap_or_else(|| {
                    if single_command {
                        "run".into()
                    } else {
                        format!("{}-{}", phase.as_str(), i + 1)
                    }
                }),
                run: s.run,
                timeout: s.timeout,
                reboot: s.reboot,
            })
            .collect()
    }

    /// Why this task must not run this job here, if so: the item type or arch is not one the
    /// task accepts, or the task needs a VM or is destructive and this runner runs locally.
    pub fn refusal(&self, item_type: &str, arch: &str, runs_locally: bool) -> Option<String> {
        if !self.item_types.is_empty() && !self.item_types.iter().any(|t| t == item_type) {
            return Some(format!(
                "task {} does not accept item type {item_type} (item_types: {})",
                self.name,
                self.item_types.join(", ")
            ));
        }
        if !self.arches.is_empty() && !self.arches.iter().any(|a| a == arch) {
            return Some(format!(
                "task {} does not accept arch {arch} (arches: {})",
                self.name,
                self.arches.join(", ")
            ));
        }
        if runs_locally && self.environment.provision == Provision::Vm {
            return Some(format!(
                "task {} needs a VM (environment.provision: vm) and this runner runs tasks locally only",
                self.name
            ));
        }
        if runs_locally && self.environment.destructive {
            return Some(format!(
                "task {} is destructive (environment.destructive: true) and must not run on the runner's own host",
                self.name
            ));
        }
        None
    }

    /// The results file's path relative to the clone.
    pub fn results_path(&self) -> PathBuf {
        // Validated at parse time to stay inside the clone.
        PathBuf::from(self.results.as_deref().unwrap_or(DEFAULT_RESULTS_FILE))
    }

    /// How long the task may run: its own `timeout`, never more than the runner's cap.
    pub fn effective_timeout_secs(&self, runner_cap_secs: u64) -> u64 {
        let cap = runner_cap_secs.max(1);
        self.timeout.map_or(cap, |t| t.min(cap))
    }
}

/// The phases of a task that run steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prepare,
    Run,
    Cleanup,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Run => "run",
            Phase::Cleanup => "cleanup",
        }
    }
}

/// Step names become log file names.
fn check_step_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// The values templates and steps may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateVars {
    pub item: String,
    pub item_type: String,
    pub arch: String,
    pub job_id: String,
    pub workdir: String,
    pub artifacts: String,
    pub args: BTreeMap<String, String>,
}

/// The names a template may use, besides `args.KEY`.
pub const TEMPLATE_NAMES: [&str; 6] = [
    "item",
    "item_type",
    "arch",
    "job_id",
    "workdir",
    "artifacts",
];

/// How a value is inserted into the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Inside a shell command: single-quoted, so an item cannot inject commands.
    Shell,
    /// Inside a URL: percent-encoded (except unreserved characters and `/`).
    Url,
    /// As is (file names, checked afterwards).
    Raw,
}

impl TemplateVars {
    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "item" => &self.item,
            "item_type" => &self.item_type,
            "arch" => &self.arch,
            "job_id" => &self.job_id,
            "workdir" => &self.workdir,
            "artifacts" => &self.artifacts,
            _ => {
                return self
                    .args
                    .get(name.strip_prefix("args.")?)
                    .map(|s| s.as_str())
            }
        })
    }

    /// Replace every `{{ name }}` in `text`. A name the job has no value for (an argument the
    /// job was not given) is an error naming it.
    pub fn render(&self, text: &str, escape: Escape) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        for piece in template_pieces(text) {
            let name = match piece.map_err(|_| UNCLOSED.to_string())? {
                Piece::Literal(literal) => {
                    out.push_str(literal);
                    continue;
                }
                Piece::Placeholder { inner, .. } => inner.trim(),
            };
            let value = self
                .get(name)
                .ok_or_else(|| match name.strip_prefix("args.") {
                    Some(key) => format!("{{{{ {name} }}}}: the job has no argument {key}"),
                    None => format!("{{{{ {name} }}}}: unknown variable"),
                })?;
            match escape {
                Escape::Shell => out.push_str(&shell_quote(value)),
                Escape::Url => out.push_str(&percent_encode(value)),
                Escape::Raw => out.push_str(value),
            }
        }
        Ok(out)
    }
}

/// What a template with a `{{` and no `}}` after it is told.
const UNCLOSED: &str = "a '{{' is not closed by '}}'";

/// Template syntax, checked when `taskbot.yaml` is read: each `{{ … }}` closed and naming a
/// known variable or `args.KEY`.
pub fn check_template(text: &str) -> Result<(), String> {
    for piece in template_pieces(text) {
        let Piece::Placeholder { inner, .. } = piece.map_err(|_| UNCLOSED.to_string())? else {
            continue;
        };
        let name = inner.trim();
        let is_arg = name
            .strip_prefix("args.")
            .is_some_and(|k| !k.is_empty() && !k.contains(char::is_whitespace));
        if !is_arg && !TEMPLATE_NAMES.contains(&name) {
            return Err(format!(
                "{{{{ {name} }}}} is not a variable (use {}, or args.KEY)",
                TEMPLATE_NAMES.join(", ")
            ));
        }
    }
    Ok(())
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A testcase becomes part of routing keys and ResultsDB names: dotted words, no spaces.
pub fn check_testcase(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    let max = taskbot::limits::MAX_TESTCASE_BYTES;
    if name.len() > max {
        return Err(format!(
            "is {} bytes, over the limit of {max} bytes",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{name:?} contains {c:?}; use letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// A path a task names must stay inside the directory it is relative to: the runner reads and
/// links what is there, and must not be pointed at its own files.
pub fn relative_inside(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return Err(format!("{path:?} must be a relative path"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{path:?} must not contain '..'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_file_gets_defaults() {
        let task = TaskFile::parse("name: example\nrun: ./check.sh\n").unwrap();
        assert_eq!(task.name, "example");
        assert_eq!(task.run, RunSpec::Command("./check.sh".into()));
        assert_eq!(task.results_path(), PathBuf::from("results.yml"));
        assert_eq!(task.testcase, None);
        assert_eq!(task.effective_timeout_secs(3600), 3600);
        assert_eq!(task.environment, Environment::default());
        assert_eq!(
            task.steps(Phase::Run),
            [NamedStep {
                name: "run".into(),
                run: "./check.sh".into(),
                timeout: None,
                reboot: false,
            }]
        );
        assert!(task.steps(Phase::Prepare).is_empty());
        assert_eq!(task.refusal("anything", "any", true), None);
    }

    #[test]
    fn full_file_is_read() {
        let task = TaskFile::parse(
            "name: example\ndescription: d\nrun: sh x.sh\nresults: out/r.yml\ntimeout: 30\ntestcase: dist.example\n",
        )
        .unwrap();
        assert_eq!(task.description.as_deref(), Some("d"));
        assert_eq!(task.results_path(), PathBuf::from("out/r.yml"));
        assert_eq!(task.testcase.as_deref(), Some("dist.example"));
        assert_eq!(task.effective_timeout_secs(3600), 30);
    }

    const V1_FULL: &str = r#"
name: rpmcheck
description: Checks RPMs.
maintainer: QA <qa@example.org>
item_types: [koji_build, bodhi_update]
arches: [x86_64, noarch]
environment:
  packages: [rpmlint, cppcheck]
  provision: local
  destructive: false
timeout: 600
downloads:
  - url: "https://koji.example/{{ item }}/{{ arch }}.rpm"
    sha256: "0000000000000000000000000000000000000000000000000000000000000000"
    max_bytes: 1000
    dest: rpms/{{ arch }}.rpm
  - url: https://example.org/list.txt
prepare:
  - make
  - {run: "./setup {{ args.tag }}", timeout: 20, name: setup}
run:
  - ./check {{ item }}
  - {run: ./summarise, name: summary}
results: out/results.yml
artifacts: ["out/*.log", "report.html"]
cleanup: [rm -rf /tmp/rpmcheck]
testcase: dist.rpmcheck
"#;

    #[test]
    fn every_v1_key_is_read() {
        let task = TaskFile::parse(V1_FULL).unwrap();
        assert_eq!(task.maintainer.as_deref(), Some("QA <qa@example.org>"));
        assert_eq!(task.item_types, ["koji_build", "bodhi_update"]);
        assert_eq!(task.arches, ["x86_64", "noarch"]);
        assert_eq!(task.environment.packages, ["rpmlint", "cppcheck"]);
        assert_eq!(task.environment.provision, Provision::Local);
        assert_eq!(task.downloads.len(), 2);
        assert_eq!(task.downloads[0].max_bytes, Some(1000));
        assert_eq!(
            task.downloads[0].dest.as_deref(),
            Some("rpms/{{ arch }}.rpm")
        );
        assert_eq!(task.downloads[1].sha256, None);
        let names = |phase| -> Vec<(String, Option<u64>)> {
            task.steps(phase)
                .into_iter()
                .map(|s| (s.name, s.timeout))
                .collect()
        };
        assert_eq!(
            names(Phase::Prepare),
            [
                ("prepare-1".to_string(), None),
                ("setup".to_string(), Some(20))
            ]
        );
        assert_eq!(
            names(Phase::Run),
            [("run-1".to_string(), None), ("summary".to_string(), None)]
        );
        assert_eq!(names(Phase::Cleanup), [("cleanup-1".to_string(), None)]);
        assert_eq!(task.artifacts, ["out/*.log", "report.html"]);
    }

    #[test]
    fn item_type_arch_and_environment_are_enforced() {
        let task = TaskFile::parse(V1_FULL).unwrap();
        assert_eq!(task.refusal("koji_build", "x86_64", true), None);
        assert_eq!(
            task.refusal("compose", "x86_64", true).as_deref(),
            Some("task rpmcheck does not accept item type compose (item_types: koji_build, bodhi_update)")
        );
        assert_eq!(
            task.refusal("koji_build", "s390x", true).as_deref(),
            Some("task rpmcheck does not accept arch s390x (arches: x86_64, noarch)")
        );
        let vm = TaskFile::parse("name: v\nrun: x\nenvironment: {provision: vm}\n").unwrap();
        assert!(vm
            .refusal("t", "a", true)
            .unwrap()
            .contains("needs a VM (environment.provision: vm)"));
        assert_eq!(vm.refusal("t", "a", false), None);
        let destructive =
            TaskFile::parse("name: d\nrun: x\nenvironment: {destructive: true}\n").unwrap();
        assert!(destructive
            .refusal("t", "a", true)
            .unwrap()
            .contains("is destructive"));
    }

    #[test]
    fn runner_cap_bounds_the_task_timeout() {
        let task = TaskFile::parse("name: t\nrun: x\ntimeout: 600\n").unwrap();
        assert_eq!(task.effective_timeout_secs(2), 2);
        assert_eq!(
            task.effective_timeout_secs(0),
            1,
            "a zero cap still means something"
        );
    }

    #[test]
    fn unknown_key_is_refused_with_its_position() {
        let err = TaskFile::parse("name: t\ncomand: x\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("unknown field `comand`"), "{text}");
        assert!(text.contains("line 2"), "{text}");
        let text = TaskFile::parse("name: t\nrun: [{run: x, timout: 3}]\n")
            .unwrap_err()
            .to_string();
        assert!(text.contains("unknown field `timout`"), "{text}");
        let text = TaskFile::parse("name: t\nrun: x\nenvironment: {provision: cloud}\n")
            .unwrap_err()
            .to_string();
        assert!(text.contains("unknown variant `cloud`"), "{text}");
    }

    #[test]
    fn a_task_in_a_vm_may_reboot_between_steps_and_a_local_one_may_not() {
        let vm_task = "name: up\nenvironment: {provision: vm}\nrun:\n  - sh ./upgrade.sh\n  - {reboot: true, timeout: 300}\n  - {name: after, run: sh ./check.sh}\n";
        let steps = TaskFile::parse(vm_task).unwrap().steps(Phase::Run);
        assert_eq!(steps.len(), 3);
        assert_eq!(
            steps[1],
            NamedStep {
                name: "run-2".into(),
                run: String::new(),
                timeout: Some(300),
                reboot: true,
            }
        );
        assert!(!steps[0].reboot && !steps[2].reboot);
        let local = vm_task.replace("{provision: vm}", "{provision: local}");
        let err = TaskFile::parse(&local).unwrap_err().to_string();
        assert!(
            err.contains(
                "run[1]: only a task in a VM of its own (environment.provision: vm) may reboot"
            ),
            "{err}"
        );
        for (step, says) in [
            (
                "{reboot: true, run: ls}",
                "either `run` or `reboot: true`, not both",
            ),
            ("{reboot: false}", "`reboot: false` is no step"),
            ("{name: nothing}", "a step needs `run`"),
        ] {
            let text = format!("name: up\nenvironment: {{provision: vm}}\nrun:\n  - {step}\n");
            let err = TaskFile::parse(&text).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains("line 4"),
                "{step}: {err}"
            );
        }
    }

    #[test]
    fn missing_run_is_refused() {
        let text = TaskFile::parse("name: t\n").unwrap_err().to_string();
        assert!(text.contains("missing field `run`"), "{text}");
    }

    #[test]
    fn broken_yaml_is_refused_with_line_and_column() {
        let text = TaskFile::parse("name: t\n  run: x\n")
            .unwrap_err()
            .to_string();
        assert!(text.starts_with("invalid taskbot.yaml:"), "{text}");
        assert!(text.contains("at line 2 column"), "{text}");
    }

    /// Task files serde accepts but the checks refuse, and what the refusal says (by key).
    const REFUSED_BY_KEY: &[(&str, &str)] = &[
        ("name: t\nrun: '  '\n", "run: must not be empty"),
        ("name: t\nrun: []\n", "run: must not be empty"),
        (
            "name: t\nrun: x\ntimeout: 0\n",
            "timeout: must be at least 1",
        ),
        (
            "name: t\nrun: x\nresults: /etc/passwd\n",
            "results: \"/etc/passwd\" must be a relative",
        ),
        (
            "name: t\nrun: x\nresults: ../r.yml\n",
            "results: \"../r.yml\" must not contain '..'",
        ),
        (
            "name: t\nrun: x\ntestcase: my test\n",
            "testcase: \"my test\" contains ' '",
        ),
        (
            "name: t\nrun: x\ntestcases: [dist.a, dist.a]\n",
            "testcases[1]: dist.a is listed twice",
        ),
        (
            "name: t\nrun: x\ntestcases: [dist.a, \"b c\"]\n",
            "testcases[1]: \"b c\" contains ' '",
        ),
        (
            "name: t\nrun: x\nprepare: [{run: y, timeout: 0}]\n",
            "prepare[0].timeout: must be at least 1",
        ),
        (
            "name: t\nrun: [x, {run: y, name: 'a b'}]\n",
            "run[1].name: \"a b\" contains ' '",
        ),
        (
            "name: t\nrun: echo {{ itme }}\n",
            "run: {{ itme }} is not a variable",
        ),
        (
            "name: t\nrun: x\ndownloads: [{url: 'ftp://x/y'}]\n",
            "downloads[0].url: \"ftp://x/y\" must be an http(s) URL",
        ),
        (
            "name: t\nrun: x\ndownloads: [{url: 'http://x/y', sha256: abc}]\n",
            "downloads[0].sha256: must be 64 hex digits",
        ),
        (
            "name: t\nrun: x\ndownloads: [{url: 'http://x/y', dest: ../y}]\n",
            "downloads[0].dest: \"../y\" must not contain '..'",
        ),
        (
            "name: t\nrun: x\nartifacts: [/etc/*]\n",
            "artifacts[0]: \"/etc/*\" must be a relative path",
        ),
        (
            "name: t\nrun: x\ncleanup: ['echo {{ args.x']\n",
            "cleanup[0]: a '{{' is not closed",
        ),
    ];

    #[test]
    fn values_serde_cannot_check_are_refused_by_key() {
        for (text, expected) in REFUSED_BY_KEY {
            let err = TaskFile::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?} gave {err}");
        }
    }

    #[test]
    fn templates_render_with_the_right_escaping() {
        let vars = TemplateVars {
            item: "it's-1.0-1".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            job_id: "j".into(),
            workdir: "/w".into(),
            artifacts: "/a/".into(),
            args: [("tag".to_string(), "f40 updates".to_string())].into(),
        };
        assert_eq!(
            vars.render(
                "echo {{ item }} {{args.tag}} in {{ workdir }}",
                Escape::Shell
            )
            .unwrap(),
            "echo 'it'\\''s-1.0-1' 'f40 updates' in '/w'"
        );
        assert_eq!(
            vars.render(
                "https://k/{{ item }}/{{ arch }}?t={{ args.tag }}",
                Escape::Url
            )
            .unwrap(),
            "https://k/it%27s-1.0-1/x86_64?t=f40%20updates"
        );
        assert_eq!(
            vars.render("{{ item_type }}.rpm", Escape::Raw).unwrap(),
            "koji_build.rpm"
        );
        assert_eq!(
            vars.render("{{ args.missing }}", Escape::Raw).unwrap_err(),
            "{{ args.missing }}: the job has no argument missing"
        );
        assert_eq!(
            vars.render("no templates", Escape::Shell).unwrap(),
            "no templates"
        );
    }

    #[test]
    fn deeply_nested_file_is_refused_before_parsing() {
        let text = format!("name: t\nrun: x\nenv: {}\n", "{a: ".repeat(100_000));
        let err = TaskFile::parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "invalid {TASK_FILE}: collections nested deeper than the limit of 64 levels at line 3 column {}",
                "env: ".len() + 63 * "{a: ".len() + 1
            )
        );
    }

    #[test]
    fn missing_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            TaskFile::load(dir.path(), &crate::task_files::default_budget()),
            Err(TaskFileError::Missing)
        );
        std::fs::write(dir.path().join(TASK_FILE), "name: t\nrun: true\n").unwrap();
        assert_eq!(
            TaskFile::load(dir.path(), &crate::task_files::default_budget())
                .unwrap()
                .run,
            RunSpec::Command("true".into())
        );
        std::fs::write(dir.path().join(TASK_FILE), "name: t\nrun: [true, 7]\n").unwrap();
        let steps = TaskFile::load(dir.path(), &crate::task_files::default_budget())
            .unwrap()
            .steps(Phase::Run);
        assert_eq!(
            (steps[0].run.as_str(), steps[1].run.as_str()),
            ("true", "7")
        );
    }
}
