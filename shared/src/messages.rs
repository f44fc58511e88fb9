//! The messages Taskbot services exchange over RabbitMQ.
//!
//! Every message is a JSON object with a `schema` field naming its type and version, e.g.
//! `"taskbot.event.v1"`. A consumer refuses (dead-letters) a message whose schema it does not know
//! instead of guessing, so a newer producer never silently confuses an older consumer. Adding an
//! optional field keeps the version; removing or changing the meaning of one bumps it.
//!
//! The flow: [`Event`] → (rules) → [`JobRequest`] → (provisioner) → [`ProvisionedJob`] →
//! (runner) → [`TaskResult`]s, with [`JobStatus`] published by every stage a job passes.
//! `docs/messages.md` documents each type for people who bind their own queues.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for the name-based (v5) UUIDs Taskbot derives, so that the same input always gives the
/// same id (job ids, result ids, ids of events that arrived without one).
pub const TASKBOT_NAMESPACE: Uuid = Uuid::from_bytes([
    0x6b, 0x1d, 0x3a, 0x52, 0x0f, 0x4e, 0x4c, 0x8a, 0x9d, 0x21, 0x5e, 0x77, 0x30, 0x1c, 0x42, 0x9b,
]);

/// The v5 (name-based, SHA-1) UUID of `name` in [`TASKBOT_NAMESPACE`]: the same as
/// `Uuid::new_v5(&TASKBOT_NAMESPACE, name)`, computed with a SHA-1 that uses the CPU's SHA
/// instructions where it has them. The rules service derives one id per job it asks for, and
/// the `uuid` crate's portable SHA-1 was a tenth of its time.
pub fn derive_uuid(name: &[u8]) -> Uuid {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(TASKBOT_NAMESPACE.as_bytes());
    hasher.update(name);
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// `derived-<uuid5>` of the JSON array `parts`, with every object's keys sorted: the id of a bus
/// message that came without one, the same every time the same message is seen (by either bus
/// bridge, or by `taskbot replay`). Keys are sorted here rather than relying on serde_json's
/// default map, because any crate in the build enabling serde_json's `preserve_order` would
/// otherwise make the id depend on the producer's key order.
pub fn derived_event_id(parts: Vec<serde_json::Value>) -> String {
    let key = canonical(&serde_json::Value::Array(parts));
    let bytes = serde_json::to_vec(&key).unwrap_or_default();
    format!("derived-{}", derive_uuid(&bytes).hyphenated())
}

/// The same value with every object's keys in sorted order (whatever serde_json's map is).
fn canonical(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.clone(), canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// A message type with a fixed schema tag.
pub trait Message: Serialize + DeserializeOwned {
    /// The value of the `schema` field, e.g. `taskbot.event.v1`.
    const SCHEMA: &'static str;

    /// Serialise with the `schema` tag added.
    fn to_json(&self) -> Vec<u8> {
        let mut value = serde_json::to_value(self).expect("message types always serialise");
        if let serde_json::Value::Object(fields) = &mut value {
            fields.insert("schema".into(), Self::SCHEMA.into());
        }
        serde_json::to_vec(&value).expect("JSON values serialise")
    }

    /// Parse and check the schema tag. The error says what is wrong in words fit for a
    /// dead-letter reason.
    ///
    /// Two passes over the bytes, neither building an intermediate `serde_json::Value`: the first
    /// reads only the tag (skipping the rest without allocating), so a wrong type is reported as
    /// such before any field error; the second decodes the fields.
    fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        check_schema(bytes, Self::SCHEMA)?;
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Fields {
            schema: Self::SCHEMA,
            reason: e.to_string(),
        })
    }
}

/// Check that `bytes` is a JSON object whose `schema` is `expected`.
pub fn check_schema(bytes: &[u8], expected: &'static str) -> Result<(), DecodeError> {
    #[derive(Deserialize)]
    struct Tag<'a> {
        #[serde(borrow, default)]
        schema: Option<std::borrow::Cow<'a, str>>,
    }
    let tag: Tag = serde_json::from_slice(bytes).map_err(|e| DecodeError::Json(e.to_string()))?;
    match tag.schema.as_deref() {
        Some(s) if s == expected => Ok(()),
        Some(other) => Err(DecodeError::Schema {
            expected,
            found: other.to_string(),
        }),
        None => Err(DecodeError::Schema {
            expected,
            found: "(none)".into(),
        }),
    }
}

/// Why a message body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("expected schema {expected}, found {found}")]
    Schema {
        expected: &'static str,
        found: String,
    },
    #[error("invalid {schema} message: {reason}")]
    Fields {
        schema: &'static str,
        reason: String,
    },
}

/// Something that happened in the distribution's infrastructure, as announced on a message bus
/// (or by a Taskbot task, so that tasks can trigger further tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Stable id: the bus's `msg_id`, or one derived from the content when the bus gave none, so a
    /// message seen twice has the same id twice.
    pub id: String,
    /// Full topic, e.g. `org.fedoraproject.prod.buildsys.build.state.change`.
    pub topic: String,
    /// Where the event came from, e.g. `fedmsg:tcp://127.0.0.1:4001` or `task:<job id>`.
    pub source: String,
    /// When the producer sent it (UNIX seconds; older fedmsg producers send fractions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<f64>,
    /// When Taskbot received it.
    pub received_at: DateTime<Utc>,
    /// The producer's user name, when the bus says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The message body (fedmsg's `msg`): always a JSON object, as fedmsg's are; anything else
    /// is refused when decoding, so rules never evaluate a list or a number as a body.
    #[serde(deserialize_with = "msg_object")]
    pub msg: serde_json::Value,
    /// The bus message's own headers that describe it, for rules to match on (`headers.…`): on
    /// fedora-messaging the `fedora_messaging_*` headers (schema, severity, and the
    /// `fedora_messaging_user_<name>`, `_rpm_<name>`, … flags), `sent-at` and `priority`. Empty
    /// for fedmsg messages and task events. Optional on the wire (absent when empty), so events
    /// without it, and consumers that do not know it, are unaffected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, serde_json::Value>,
}

/// The kind of JSON value whose text is `raw` (leading whitespace allowed), for error messages:
/// `object`, `array`, `string`, `boolean`, `null` or `number`.
pub fn json_kind(raw: &str) -> &'static str {
    match raw.trim_start().as_bytes().first() {
        Some(b'{') => "object",
        Some(b'[') => "array",
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

/// The kind of a parsed JSON value, in the words of [`json_kind`], for error messages.
pub fn value_kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Why an event's `msg` is refused, if it is: it must be an object.
pub fn refuse_event_msg(raw: &str) -> Option<String> {
    match json_kind(raw) {
        "object" => None,
        kind => Some(format!("`msg` is a JSON {kind}, not an object")),
    }
}

fn msg_object<'de, D: serde::Deserializer<'de>>(d: D) -> Result<serde_json::Value, D::Error> {
    let msg = serde_json::Value::deserialize(d)?;
    match msg.is_object() {
        true => Ok(msg),
        false => Err(serde::de::Error::custom(
            refuse_event_msg(&msg.to_string()).unwrap_or_default(),
        )),
    }
}

/// A job's priority, refused above [`crate::topology::MAX_PRIORITY`]: the queues order only up
/// to that, so a higher one would be accepted and silently mean the maximum.
fn job_priority<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let max = crate::topology::MAX_PRIORITY;
    let priority = u64::deserialize(d)?;
    match u8::try_from(priority) {
        Ok(p) if p <= max => Ok(p),
        _ => Err(serde::de::Error::custom(format!(
            "priority {priority} is above the highest, {max}"
        ))),
    }
}

impl Message for Event {
    const SCHEMA: &'static str = "taskbot.event.v1";
}

/// Which git repository holds a task, and at which ref to run it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TaskRef {
    /// Short task name, used as the default testcase, e.g. `rpmlint`.
    pub name: String,
    /// Clone URL of the task's repository.
    pub repo: String,
    /// Branch, tag or commit to run.
    #[serde(rename = "ref")]
    pub git_ref: String,
}

/// What a job needs provisioned before it can run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// The runner's own host.
    #[default]
    Local,
    /// A disposable virtual machine.
    Vm,
}

/// What kind of VM a job asks for (rules: an action's `vm:`; docs/provisioning.md). Without it a
/// VM job gets the newest catalogue image of its arch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmRequest {
    /// Which catalogue image to boot; unset fields match any image.
    #[serde(default, skip_serializing_if = "ImageQuery::is_any")]
    pub image: ImageQuery,
    /// A blank VM instead: an empty disk of this many MiB and no image, booting from `iso`
    /// (installation tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank_disk_mb: Option<u64>,
    /// An ISO attached as the VM's CD-ROM (booted from when the VM is blank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso: Option<RemoteFile>,
    /// Boot the job's own kernel instead of the image's: the item is a kernel build (an NVR),
    /// whose kernel RPM the provisioner fetches from Koji and direct-kernel-boots with the
    /// image's userspace (kernel tests; docs/provisioning.md).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub kernel_from_item: bool,
}

/// Which catalogue images will do, as the earlier image finder asked: by name, or by distro,
/// release and flavour (the arch is the job's). Of several matches the newest is used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distro: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavour: Option<String>,
}

impl ImageQuery {
    /// Whether every image matches.
    pub fn is_any(&self) -> bool {
        *self == ImageQuery::default()
    }
}

/// A file to fetch by URL, checked against its SHA-256 (an ISO a task built, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteFile {
    pub url: String,
    pub sha256: String,
}

/// A request to run one task on one item for one arch: what the rules decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Ties trigger, execution, logs and results together. Derived from (event, rule, task, item,
    /// arch, args), so a duplicated event never schedules a job twice under two ids.
    pub job_id: Uuid,
    /// The event that triggered the job.
    pub event_id: String,
    /// Topic of that event.
    pub event_topic: String,
    /// Name of the rule that fired.
    pub rule: String,
    pub task: TaskRef,
    /// What the task checks, e.g. an NVR or an update alias.
    pub item: String,
    /// Kind of item: `koji_build`, `bodhi_update`, `compose`, ...
    pub item_type: String,
    /// Architecture to run for; selects the runner queue.
    pub arch: String,
    /// Extra arguments passed to the task.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Higher runs first where the queue supports priorities (0–9; a higher one is refused).
    #[serde(default, deserialize_with = "job_priority")]
    pub priority: u8,
    #[serde(default)]
    pub environment: Environment,
    /// The task may leave its system unusable: it must get a fresh VM.
    #[serde(default)]
    pub destructive: bool,
    /// Which VM, for VM jobs that ask for a particular image, a blank disk or an ISO. Not part
    /// of the job id: the rule and event that set it are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmRequest>,
    /// The testcases the job reports, as the rule declares them (`testcases:`). The reporter
    /// posts a QUEUED result for each while the job waits, so gating sees "not yet there"
    /// instead of "missing".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub testcases: Vec<String>,
    /// The variant of the task this job runs (the rule's `scenario:`, e.g. one of upgrade-tests'
    /// configurations), carried as the `scenario` data key of its results: Greenwave keeps one
    /// latest result per testcase, scenario and arch. Not part of the job id (the args that make
    /// the variant are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl Message for JobRequest {
    const SCHEMA: &'static str = "taskbot.job-request.v1";
}

impl JobRequest {
    /// The deterministic job id of an (event, rule, task, item, arch, args) combination.
    pub fn derive_id(
        event_id: &str,
        rule: &str,
        task: &TaskRef,
        item: &str,
        arch: &str,
        args: &BTreeMap<String, String>,
    ) -> Uuid {
        // The JSON array `[event_id, rule, name, repo, ref, item, arch, {args}]`, compact, args
        // in key order: the ids of jobs already scheduled depend on these exact bytes. Written
        // straight from the values (no intermediate `Value`): the rules service derives one id
        // per job it asks for.
        let key = serde_json::to_vec(&(
            event_id,
            rule,
            &task.name,
            &task.repo,
            &task.git_ref,
            item,
            arch,
            args,
        ))
        .expect("strings always serialise");
        derive_uuid(&key)
    }

    /// The testcase of results that do not name one (the task wrote no results file, or never
    /// ran): the task's name as the rules call it, e.g. `dist.rpmlint`.
    pub fn default_testcase(&self) -> String {
        self.task.name.clone()
    }

    /// The testcases the job is declared to report before its task file is read: the rule's
    /// `testcases` (none when the rule declares none: a task's results often name testcases
    /// other than its name, so guessing would leave a QUEUED result nothing supersedes).
    pub fn known_testcases(&self) -> Vec<String> {
        self.testcases.clone()
    }
}

/// Where a provisioned job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Machine {
    /// On the runner's own host.
    Local,
    /// On a VM reachable over SSH.
    Vm {
        host: String,
        port: u16,
        user: String,
        /// Path of the private key on the runner's host.
        key_path: String,
        /// The VM's SSH host keys (`ssh-ed25519 AAAA...`), as the provisioner saw them when the
        /// VM came up: the runner accepts no other, so a job that reaches a runner after its VM
        /// is gone cannot run in another job's VM that got the same port. Empty: not pinned.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        host_keys: Vec<String>,
    },
}

/// A job with its machine ready, on the run queue of its arch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionedJob {
    pub job: JobRequest,
    pub machine: Machine,
    /// Which provisioner backend prepared it.
    pub provisioner: String,
    pub provisioned_at: DateTime<Utc>,
}

impl Message for ProvisionedJob {
    const SCHEMA: &'static str = "taskbot.provisioned-job.v1";
}

/// The phases a job goes through. `Done` and `Crashed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Requested by a rule, waiting for a provisioner.
    Queued,
    /// A provisioner is preparing its machine.
    Provisioning,
    /// On its arch's run queue, waiting for a runner.
    Provisioned,
    /// A runner is fetching the task's repository.
    Cloning,
    /// The task is running.
    Running,
    /// The runner is publishing results.
    Reporting,
    /// Finished with results (whatever their outcomes).
    Done,
    /// Could not run to the end; a CRASHED result says why.
    Crashed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Provisioning => "provisioning",
            JobState::Provisioned => "provisioned",
            JobState::Cloning => "cloning",
            JobState::Running => "running",
            JobState::Reporting => "reporting",
            JobState::Done => "done",
            JobState::Crashed => "crashed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Crashed)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step in a job's life, published by whichever service moved it there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Unique per status message, so a redelivered status is recorded once.
    pub status_id: Uuid,
    pub job_id: Uuid,
    pub state: JobState,
    pub at: DateTime<Utc>,
    /// The service that published it, e.g. `runner@host/x86_64`.
    pub service: String,
    /// Free text: why it crashed, where its logs are, which machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The job as requested, so a store can build the job's record from any one status.
    pub job: JobRequest,
    /// The testcases the job will report, when the publisher knows better than the job request:
    /// the runner's `running` status carries those the task file declares (`testcases`, else
    /// its `testcase`). Empty: the job's own [`JobRequest::known_testcases`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub testcases: Vec<String>,
}

impl Message for JobStatus {
    const SCHEMA: &'static str = "taskbot.job-status.v1";
}

impl JobStatus {
    pub fn new(job: &JobRequest, state: JobState, service: &str, detail: Option<String>) -> Self {
        JobStatus {
            status_id: Uuid::new_v4(),
            job_id: job.job_id,
            state,
            at: Utc::now(),
            service: service.to_string(),
            detail,
            job: job.clone(),
            testcases: Vec::new(),
        }
    }

    /// The testcases this status says the job will report ([`JobStatus::testcases`], else the
    /// job's).
    pub fn known_testcases(&self) -> Vec<String> {
        if self.testcases.is_empty() {
            self.job.known_testcases()
        } else {
            self.testcases.clone()
        }
    }

    /// A status that a job passes once whoever publishes it: its id is derived from the job and
    /// the state, so a copy made again for a redelivered input (a service killed between its
    /// publish and its ack handles the input twice) is the same message to the stores, which
    /// record it once, and the job's history does not show the step twice.
    pub fn once(job: &JobRequest, state: JobState, service: &str, detail: Option<String>) -> Self {
        JobStatus {
            status_id: Uuid::new_v5(&job.job_id, state.as_str().as_bytes()),
            ..JobStatus::new(job, state, service, detail)
        }
    }

    /// Routing key on the results exchange: `job.<state>`.
    pub fn routing_key(&self) -> String {
        format!("job.{}", self.state)
    }
}

/// A result's verdict. The first four are ResultsDB's own; ABORTED and CRASHED are what Taskotron
/// tasks and the runner produce (ResultsDB instances accept them or not: the ResultsDB sink maps
/// them, `reporter.resultsdb_outcomes`). QUEUED and RUNNING are not verdicts but interim states,
/// posted while a job waits and runs (Fedora's ResultsDB accepts them for that); tasks cannot
/// report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    Passed,
    Info,
    Failed,
    NeedsInspection,
    Aborted,
    Crashed,
    Queued,
    Running,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "PASSED",
            Outcome::Info => "INFO",
            Outcome::Failed => "FAILED",
            Outcome::NeedsInspection => "NEEDS_INSPECTION",
            Outcome::Aborted => "ABORTED",
            Outcome::Crashed => "CRASHED",
            Outcome::Queued => "QUEUED",
            Outcome::Running => "RUNNING",
        }
    }

    /// Every outcome, final ones first.
    pub const ALL: [Outcome; 8] = [
        Outcome::Passed,
        Outcome::Info,
        Outcome::Failed,
        Outcome::NeedsInspection,
        Outcome::Aborted,
        Outcome::Crashed,
        Outcome::Queued,
        Outcome::Running,
    ];

    /// A verdict, as opposed to QUEUED and RUNNING (which a later result supersedes).
    pub fn is_final(self) -> bool {
        !matches!(self, Outcome::Queued | Outcome::Running)
    }

    /// Whether gating counts it as passing (Greenwave: PASSED and INFO).
    pub fn passes(self) -> bool {
        matches!(self, Outcome::Passed | Outcome::Info)
    }

    /// Parse case-insensitively, as ResultsDB does (it upper-cases what it receives).
    pub fn parse(s: &str) -> Option<Outcome> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PASSED" => Some(Outcome::Passed),
            "INFO" => Some(Outcome::Info),
            "FAILED" => Some(Outcome::Failed),
            "NEEDS_INSPECTION" => Some(Outcome::NeedsInspection),
            "ABORTED" => Some(Outcome::Aborted),
            "CRASHED" => Some(Outcome::Crashed),
            "QUEUED" => Some(Outcome::Queued),
            "RUNNING" => Some(Outcome::Running),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verdict on one item, as a task (or the runner on its behalf) reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    /// Derived from the job and the result's identity within it, so a job re-run after a crash
    /// produces the same ids and stores deduplicate.
    pub result_id: Uuid,
    pub job_id: Uuid,
    /// Dotted testcase name, e.g. `dist.rpmlint`.
    pub testcase: String,
    pub outcome: Outcome,
    pub item: String,
    pub item_type: String,
    pub arch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Where the job's logs and artifacts are (URL or path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    /// Any further keys the task reported.
    #[serde(default)]
    pub data: BTreeMap<String, serde_json::Value>,
    pub task: TaskRef,
    pub event_id: String,
    pub rule: String,
    /// Which runner produced it.
    pub runner: String,
    pub finished_at: DateTime<Utc>,
}

impl Message for TaskResult {
    const SCHEMA: &'static str = "taskbot.result.v1";
}

impl TaskResult {
    /// The result id for a (job, testcase, item, type, arch) combination.
    pub fn derive_id(
        job_id: Uuid,
        testcase: &str,
        item: &str,
        item_type: &str,
        arch: &str,
    ) -> Uuid {
        let key = serde_json::json!([job_id, testcase, item, item_type, arch]);
        derive_uuid(key.to_string().as_bytes())
    }

    /// The CRASHED result of a job that could not run to the end, with the reason as note.
    pub fn crashed(job: &JobRequest, reporter: &str, note: &str) -> TaskResult {
        TaskResult::of_job(
            job,
            reporter,
            job.default_testcase(),
            Outcome::Crashed,
            note,
        )
    }

    /// The CRASHED results of a job that ended before its task could say what it reports: one
    /// per testcase the rule declares (so none of them stays QUEUED, and gating sees each
    /// crashed), else one under the task's name.
    pub fn crashed_all(job: &JobRequest, reporter: &str, note: &str) -> Vec<TaskResult> {
        let testcases = match job.known_testcases() {
            known if known.is_empty() => vec![job.default_testcase()],
            known => known,
        };
        testcases
            .into_iter()
            .map(|testcase| TaskResult::of_job(job, reporter, testcase, Outcome::Crashed, note))
            .collect()
    }

    /// A result of `job` that `reporter` gives itself (not read from a task's results file): a
    /// CRASHED one, or the provisioner's FAILED verdict on a kernel that does not boot. It
    /// carries the rule's scenario, as every result of the job does.
    pub fn of_job(
        job: &JobRequest,
        reporter: &str,
        testcase: String,
        outcome: Outcome,
        note: &str,
    ) -> TaskResult {
        TaskResult {
            result_id: TaskResult::derive_id(
                job.job_id,
                &testcase,
                &job.item,
                &job.item_type,
                &job.arch,
            ),
            job_id: job.job_id,
            testcase,
            outcome,
            item: job.item.clone(),
            item_type: job.item_type.clone(),
            arch: job.arch.clone(),
            note: Some(note.to_string()),
            log_url: None,
            data: job
                .scenario
                .iter()
                .map(|scenario| ("scenario".to_string(), scenario.clone().into()))
                .collect(),
            task: job.task.clone(),
            event_id: job.event_id.clone(),
            rule: job.rule.clone(),
            runner: reporter.to_string(),
            finished_at: Utc::now(),
        }
    }

    /// The interim QUEUED or RUNNING result a `queued` or `running` status stands for, one per
    /// testcase the job is known to report (`None` for other states). Its id is derived from
    /// the status and the testcase, so a redelivered status gives the same result; its time is
    /// the status's, so the job's final result (later) supersedes it in ResultsDB's `latest`.
    pub fn interim(status: &JobStatus, testcase: &str) -> Option<TaskResult> {
        let (outcome, note) = match status.state {
            JobState::Queued => (
                Outcome::Queued,
                "queued: waiting for a machine and a runner",
            ),
            JobState::Running => (Outcome::Running, "running"),
            _ => return None,
        };
        let job = &status.job;
        let key = serde_json::json!([status.status_id, testcase, outcome.as_str()]);
        let mut data = BTreeMap::new();
        if let Some(scenario) = &job.scenario {
            data.insert("scenario".to_string(), scenario.clone().into());
        }
        Some(TaskResult {
            result_id: derive_uuid(key.to_string().as_bytes()),
            job_id: job.job_id,
            testcase: testcase.to_string(),
            outcome,
            item: job.item.clone(),
            item_type: job.item_type.clone(),
            arch: job.arch.clone(),
            note: Some(note.to_string()),
            log_url: None,
            data,
            task: job.task.clone(),
            event_id: job.event_id.clone(),
            rule: job.rule.clone(),
            runner: status.service.clone(),
            finished_at: status.at,
        })
    }

    /// Routing key on the results exchange: `result.<outcome>.<testcase>`.
    pub fn routing_key(&self) -> String {
        format!("result.{}.{}", self.outcome, self.testcase)
    }

    /// The same result with its log linked where `artifacts_url` publishes the artifacts, when
    /// its runner wrote a local path ([`crate::artifacts::public_link`]): what goes to readers
    /// off the runner's host (ResultsDB, the Fedora bus).
    pub fn with_public_log(mut self, artifacts_url: Option<&str>) -> TaskResult {
        self.log_url = self
            .log_url
            .map(|link| crate::artifacts::public_link(&link, self.job_id, artifacts_url));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobRequest {
        let task = TaskRef {
            name: "rpmlint".into(),
            repo: "https://example.org/rpmlint.git".into(),
            git_ref: "main".into(),
        };
        JobRequest {
            job_id: JobRequest::derive_id("e1", "r", &task, "x-1-1", "x86_64", &BTreeMap::new()),
            event_id: "e1".into(),
            event_topic: "t".into(),
            rule: "r".into(),
            task,
            item: "x-1-1".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            args: BTreeMap::new(),
            priority: 0,
            environment: Environment::Local,
            destructive: false,
            vm: None,
            testcases: Vec::new(),
            scenario: None,
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_status_made_once_per_job_has_the_same_id_for_every_copy() {
        let j = job();
        let first = JobStatus::once(&j, JobState::Queued, "rules@a", None);
        let copy = JobStatus::once(&j, JobState::Queued, "rules@b", None);
        assert_eq!(first.status_id, copy.status_id);
        let provisioned = JobStatus::once(&j, JobState::Provisioned, "p", None);
        assert_ne!(first.status_id, provisioned.status_id, "one per state");
        let other = JobRequest {
            job_id: Uuid::new_v4(),
            ..j.clone()
        };
        assert_ne!(
            JobStatus::once(&other, JobState::Queued, "rules@a", None).status_id,
            first.status_id
        );
        assert_ne!(
            JobStatus::new(&j, JobState::Queued, "rules@a", None).status_id,
            JobStatus::new(&j, JobState::Queued, "rules@a", None).status_id,
            "statuses of real repeats (a run again after a kill) stay apart"
        );
    }

    #[test]
    fn a_job_that_ends_before_its_task_crashes_every_declared_testcase_in_its_scenario() {
        let mut j = job();
        let alone = TaskResult::crashed_all(&j, "provisioner@a", "no image");
        assert_eq!(alone.len(), 1);
        assert_eq!(alone[0].testcase, j.default_testcase());
        assert!(alone[0].data.is_empty());
        j.scenario = Some("n-1-minimal".into());
        j.testcases = vec!["dist.a".into(), "dist.b".into()];
        let crashed = TaskResult::crashed_all(&j, "provisioner@a", "no image");
        let testcases: Vec<&str> = crashed.iter().map(|r| r.testcase.as_str()).collect();
        assert_eq!(testcases, ["dist.a", "dist.b"]);
        for r in &crashed {
            assert_eq!(r.outcome, Outcome::Crashed);
            assert_eq!(r.note.as_deref(), Some("no image"));
            assert_eq!(r.data["scenario"], "n-1-minimal");
        }
        assert_ne!(crashed[0].result_id, crashed[1].result_id);
    }

    #[test]
    fn interim_results_stand_for_queued_and_running_statuses_only() {
        let mut j = job();
        j.scenario = Some("fedup".into());
        assert!(
            j.known_testcases().is_empty(),
            "nothing declared, nothing guessed"
        );
        j.testcases = vec!["dist.a".into(), "dist.b".into()];
        let queued = JobStatus::new(&j, JobState::Queued, "rules", None);
        assert_eq!(queued.known_testcases(), ["dist.a", "dist.b"]);
        let a = TaskResult::interim(&queued, "dist.a").unwrap();
        assert_eq!(a.outcome, Outcome::Queued);
        assert!(!a.outcome.is_final());
        assert_eq!(a.finished_at, queued.at);
        assert_eq!(a.data["scenario"], "fedup");
        assert_eq!(
            TaskResult::interim(&queued, "dist.a").unwrap().result_id,
            a.result_id
        );
        assert_ne!(
            TaskResult::interim(&queued, "dist.b").unwrap().result_id,
            a.result_id
        );
        let mut running = JobStatus::new(&j, JobState::Running, "runner", None);
        running.testcases = vec!["dist.c".into()];
        assert_eq!(running.known_testcases(), ["dist.c"]);
        let r = TaskResult::interim(&running, "dist.c").unwrap();
        assert_eq!(r.outcome, Outcome::Running);
        assert_ne!(r.result_id, a.result_id);
        let done = JobStatus::new(&j, JobState::Done, "runner", None);
        assert_eq!(TaskResult::interim(&done, "dist.a"), None);
        // Final results never share an id with an interim one.
        let final_id = TaskResult::derive_id(j.job_id, "dist.a", &j.item, &j.item_type, &j.arch);
        assert_ne!(final_id, a.result_id);
    }

    #[test]
    fn round_trip_keeps_every_field_and_tags_schema() {
        let j = job();
        let bytes = j.to_json();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["schema"], "taskbot.job-request.v1");
        assert_eq!(JobRequest::from_json(&bytes).unwrap(), j);
    }

    #[test]
    fn wrong_schema_is_refused_with_both_names() {
        let bytes = job().to_json();
        let err = Event::from_json(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "expected schema taskbot.event.v1, found taskbot.job-request.v1"
        );
        assert!(matches!(
            Event::from_json(b"{\"id\":1}"),
            Err(DecodeError::Schema { .. })
        ));
        assert!(matches!(
            Event::from_json(b"nope"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn missing_field_names_the_field() {
        let err = Event::from_json(br#"{"schema":"taskbot.event.v1","id":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `topic`"), "{err}");
    }

    #[test]
    fn derived_ids_are_stable_and_distinguish_inputs() {
        let t = job().task;
        let a = JobRequest::derive_id("e", "r", &t, "i", "x86_64", &BTreeMap::new());
        assert_eq!(
            a,
            JobRequest::derive_id("e", "r", &t, "i", "x86_64", &BTreeMap::new())
        );
        assert_ne!(
            a,
            JobRequest::derive_id("e", "r", &t, "i", "aarch64", &BTreeMap::new())
        );
        let mut args = BTreeMap::new();
        args.insert("config".into(), "X".into());
        assert_ne!(a, JobRequest::derive_id("e", "r", &t, "i", "x86_64", &args));
    }

    #[test]
    fn derive_uuid_is_the_standard_v5() {
        for name in [
            &b""[..],
            b"x",
            &[0xffu8; 200][..],
            "\u{e9}t\u{e9}".as_bytes(),
        ] {
            assert_eq!(derive_uuid(name), Uuid::new_v5(&TASKBOT_NAMESPACE, name));
            assert_eq!(derive_uuid(name).get_version_num(), 5);
        }
    }

    /// Job ids already scheduled (and remembered by the rules service, stored by the reporter)
    /// must not change when the code that derives them does: they are the v5 UUID of this JSON
    /// text, as the first version wrote it (a `serde_json::Value` array, printed compactly).
    #[test]
    fn derived_job_ids_keep_their_original_formula() {
        let t = job().task;
        let original = |event: &str, item: &str, args: &BTreeMap<String, String>| {
            let key = serde_json::json!([
                event,
                "rule \"q\"",
                t.name,
                t.repo,
                t.git_ref,
                item,
                "x86_64",
                args
            ]);
            Uuid::new_v5(&TASKBOT_NAMESPACE, key.to_string().as_bytes())
        };
        let mut args = BTreeMap::new();
        for (event, item) in [("e", "i"), ("2015-ab\u{e9}", "tab\there"), ("", "\u{1}")] {
            assert_eq!(
                JobRequest::derive_id(event, "rule \"q\"", &t, item, "x86_64", &args),
                original(event, item, &args)
            );
            args.insert(format!("z{}", args.len()), "X \"y\"".into());
            args.insert(format!("a{}", args.len()), "\n".into());
        }
        assert_eq!(
            JobRequest::derive_id("e", "r", &t, "i", "x86_64", &BTreeMap::new()).to_string(),
            "0789385d-0c78-5f51-955c-9d9a1747945a",
            "the id of this job changed"
        );
    }

    #[test]
    fn outcomes_parse_like_resultsdb() {
        assert_eq!(Outcome::parse("passed"), Some(Outcome::Passed));
        assert_eq!(
            Outcome::parse(" needs_inspection "),
            Some(Outcome::NeedsInspection)
        );
        assert_eq!(Outcome::parse("GREAT"), None);
        assert_eq!(
            serde_json::to_string(&Outcome::NeedsInspection).unwrap(),
            "\"NEEDS_INSPECTION\""
        );
    }
}
