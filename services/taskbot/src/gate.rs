//! `taskbot gate ITEM`: what Greenwave's `PassingTestCaseRule` would decide for an item, from
//! Taskbot's api, before (or without) asking Greenwave.
//!
//! The required testcases come from `--testcase NAME` (repeatable) and/or `--policy FILE`: a
//! Greenwave policy file or a dist-git `gating.yaml` (YAML documents tagged `!Policy`), whose
//! `!PassingTestCaseRule` entries (`test_case_name`, optional `scenario`) of the policies for the
//! item's type (and `--decision-context`, when given) are taken; other rule kinds are listed as
//! ignored.
//!
//! The results are those Greenwave reads: `/api/v2.0/results/latest` for the item and type with
//! `_distinct_on=scenario,system_architecture,system_variant`, so each testcase has one latest
//! result per scenario and arch. Taskbot's store keeps final results only; the QUEUED and RUNNING
//! results its ResultsDB sink posts stand, here, for the item's unfinished jobs that declared the
//! testcase (`/api/v1/jobs?testcase=...`): such a job requested after the latest result of its
//! scenario and arch (or with none yet) makes that result "queued" or "running", as the interim
//! result would in ResultsDB's `latest`.
//!
//! Per requirement (and per scenario and arch, where results differ): `satisfied` (PASSED,
//! INFO), `failed` (any other outcome), `queued`, `running`, or `missing` (no result and no job).
//! Exit status: 0 when every requirement is satisfied, 3 when one failed, 4 when none failed but
//! one is missing, queued or running (wait and ask again); 1 and 2 as for every command.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize as _;
use serde_json::{json, Value};

use crate::api_cmd::{api_url, encode, get};
use crate::cli::GateArgs;
use crate::Failure;

/// Exit status when a required testcase failed.
pub const EXIT_FAILED: u8 = 3;
/// Exit status when nothing failed but a required testcase is missing, queued or running.
pub const EXIT_WAITING: u8 = 4;

/// Job states before the task runs: the ResultsDB sink's latest interim result is QUEUED.
const QUEUED_STATES: &[&str] = &["queued", "provisioning", "provisioned", "cloning"];
/// Job states while the task runs or reports: its latest interim result is RUNNING.
const RUNNING_STATES: &[&str] = &["running", "reporting"];

/// Jobs are read a page of this many at a time, up to [`MAX_JOB_PAGES`] pages.
const JOB_PAGE: usize = 1000;
const MAX_JOB_PAGES: usize = 20;

/// One `PassingTestCaseRule`: a testcase that must pass, in one scenario or in all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Requirement {
    pub testcase: String,
    pub scenario: Option<String>,
}

/// What a requirement (or one scenario and arch of it) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Satisfied,
    Queued,
    Running,
    Missing,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Satisfied => "satisfied",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Missing => "missing",
            Status::Failed => "failed",
        }
    }

    /// Greenwave's class of a result's outcome: PASSED and INFO pass, QUEUED and RUNNING are
    /// not there yet, anything else fails.
    pub fn of_outcome(outcome: &str) -> Status {
        match outcome {
            "PASSED" | "INFO" => Status::Satisfied,
            "QUEUED" => Status::Queued,
            "RUNNING" => Status::Running,
            _ => Status::Failed,
        }
    }

    /// The status of a requirement from those of its scenarios and arches: failed if one
    /// failed, else running, queued (one not there yet), else satisfied; missing when none.
    fn combine(parts: impl IntoIterator<Item = Status>) -> Status {
        let parts: Vec<Status> = parts.into_iter().collect();
        if parts.is_empty() {
            return Status::Missing;
        }
        for status in [Status::Failed, Status::Running, Status::Queued] {
            if parts.contains(&status) {
                return status;
            }
        }
        Status::Satisfied
    }
}

/// One scenario and arch of a requirement: the latest result, or the unfinished job standing for
/// its interim result.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub scenario: Option<String>,
    pub arch: Option<String>,
    pub status: Status,
    pub outcome: Option<String>,
    pub job: Option<String>,
    /// The result's `ref_url` (its log), or the job's api page.
    pub link: Option<String>,
    pub at: Option<String>,
}

/// A requirement and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub requirement: Requirement,
    pub status: Status,
    pub answers: Vec<Answer>,
}

/// The first string of a ResultsDB data value (a list of strings, or a string).
fn data_text(data: &Value, key: &str) -> Option<String> {
    match &data[key] {
        Value::Array(items) => items.first().and_then(Value::as_str).map(str::to_string),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn data_contains(data: &Value, key: &str, wanted: &str) -> bool {
    match &data[key] {
        Value::Array(items) => items.iter().any(|v| v.as_str() == Some(wanted)),
        Value::String(s) => s == wanted,
        _ => false,
    }
}

/// Decide each requirement from the latest results (`/results/latest` answers, one per testcase,
/// scenario and arch) and the item's unfinished jobs (`/api/v1/jobs` entries).
pub fn decide(requirements: &[Requirement], results: &[Value], jobs: &[Value]) -> Vec<Decision> {
    requirements
        .iter()
        .map(|req| decide_one(req, results, jobs))
        .collect()
}

fn decide_one(req: &Requirement, results: &[Value], jobs: &[Value]) -> Decision {
    type Key = (Option<String>, Option<String>);
    let mut by_key: BTreeMap<Key, Answer> = BTreeMap::new();
    for result in results {
        if result["testcase"]["name"].as_str() != Some(req.testcase.as_str()) {
            continue;
        }
        let data = &result["data"];
        if let Some(scenario) = &req.scenario {
            if !data_contains(data, "scenario", scenario) {
                continue;
            }
        }
        let arch = data_text(data, "system_architecture").or_else(|| data_text(data, "arch"));
        let scenario = data_text(data, "scenario");
        let outcome = result["outcome"].as_str().unwrap_or("").to_string();
        let answer = Answer {
            scenario: scenario.clone(),
            arch: arch.clone(),
            status: Status::of_outcome(&outcome),
            outcome: Some(outcome),
            job: result["groups"][0].as_str().map(str::to_string),
            link: result["ref_url"].as_str().map(str::to_string),
            at: result["submit_time"].as_str().map(str::to_string),
        };
        // `latest` gives one per key already; should two come, the newest stands.
        let key = (scenario, arch);
        let newer = by_key
            .get(&key)
            .is_none_or(|old| answer.at.as_deref() > old.at.as_deref());
        if newer {
            by_key.insert(key, answer);
        }
    }
    for job in jobs {
        let declared = job["testcases"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t.as_str() == Some(req.testcase.as_str())));
        let scenario = job["scenario"].as_str().map(str::to_string);
        if !declared || (req.scenario.is_some() && scenario != req.scenario) {
            continue;
        }
        let state = job["state"].as_str().unwrap_or("");
        let status = if QUEUED_STATES.contains(&state) {
            Status::Queued
        } else if RUNNING_STATES.contains(&state) {
            Status::Running
        } else {
            continue;
        };
        let id = job["id"].as_str().map(str::to_string);
        let created = job["created_at"].as_str().map(str::to_string);
        let key = (scenario.clone(), job["arch"].as_str().map(str::to_string));
        let supersedes = match by_key.get(&key) {
            None => true,
            // The job's own result: its final word, as in ResultsDB.
            Some(old) if old.job == id => false,
            Some(old) => newer_time(created.as_deref(), old.at.as_deref()),
        };
        if supersedes {
            by_key.insert(
                key.clone(),
                Answer {
                    scenario: key.0,
                    arch: key.1,
                    status,
                    outcome: None,
                    job: id,
                    link: job["href"].as_str().map(str::to_string),
                    at: created,
                },
            );
        }
    }
    let answers: Vec<Answer> = by_key.into_values().collect();
    Decision {
        requirement: req.clone(),
        status: Status::combine(answers.iter().map(|a| a.status)),
        answers,
    }
}

/// Whether RFC 3339 / ISO 8601 time `a` is at or after `b` (a job's creation against a result's
/// `submit_time`, which ResultsDB writes without a zone: UTC).
fn newer_time(a: Option<&str>, b: Option<&str>) -> bool {
    let parse = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&chrono::Utc))
            .or_else(|_| {
                chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                    .map(|t| t.and_utc())
            })
            .ok()
    };
    match (a.and_then(parse), b.and_then(parse)) {
        (Some(a), Some(b)) => a >= b,
        (Some(_), None) => true,
        _ => false,
    }
}

/// The requirements of a policy file for `subject_type` (and `context`, when given), and the
/// kinds of the rules it holds that are not `PassingTestCaseRule`.
pub fn policy_requirements(
    text: &str,
    subject_type: &str,
    context: Option<&str>,
) -> Result<(Vec<Requirement>, Vec<String>), String> {
    let mut requirements = Vec::new();
    let mut ignored = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let document = serde_norway::Value::deserialize(document).map_err(|e| e.to_string())?;
        let policy = untag(&document);
        if policy.is_null() {
            continue;
        }
        let where_ = || {
            let id = policy
                .get("id")
                .and_then(|v| v.as_str())
                .map(|id| format!("policy {id:?}"))
                .unwrap_or_else(|| format!("document {}", index + 1));
            id
        };
        if !policy.is_mapping() {
            return Err(format!("{}: a policy must be a mapping", where_()));
        }
        if let Some(subject) = policy.get("subject_type") {
            if subject.as_str() != Some(subject_type) {
                continue;
            }
        }
        if let Some(wanted) = context {
            let contexts: Vec<&str> = match policy.get("decision_contexts") {
                Some(serde_norway::Value::Sequence(list)) => {
                    list.iter().filter_map(|v| v.as_str()).collect()
                }
                _ => policy
                    .get("decision_context")
                    .and_then(|v| v.as_str())
                    .into_iter()
                    .collect(),
            };
            if !contexts.contains(&wanted) {
                continue;
            }
        }
        let rules = match policy.get("rules") {
            None | Some(serde_norway::Value::Null) => continue,
            Some(serde_norway::Value::Sequence(rules)) => rules,
            Some(_) => return Err(format!("{}: `rules` must be a list", where_())),
        };
        for rule in rules {
            let serde_norway::Value::Tagged(tagged) = rule else {
                return Err(format!(
                    "{}: a rule without a tag (write `!PassingTestCaseRule {{...}}`)",
                    where_()
                ));
            };
            let kind = tagged.tag.to_string();
            if kind != "!PassingTestCaseRule" {
                if !ignored.contains(&kind) {
                    ignored.push(kind);
                }
                continue;
            }
            let name = tagged
                .value
                .get("test_case_name")
                .and_then(|v| v.as_str())
                .ok_or_else(|| {
                    format!(
                        "{}: a PassingTestCaseRule without a test_case_name string",
                        where_()
                    )
                })?;
            let scenario = match tagged.value.get("scenario") {
                None | Some(serde_norway::Value::Null) => None,
                Some(value) => Some(
                    value
                        .as_str()
                        .ok_or_else(|| format!("{}: scenario of {name} is not a string", where_()))?
                        .to_string(),
                ),
            };
            let requirement = Requirement {
                testcase: name.to_string(),
                scenario,
            };
            if !requirements.contains(&requirement) {
                requirements.push(requirement);
            }
        }
    }
    Ok((requirements, ignored))
}

fn untag(value: &serde_norway::Value) -> &serde_norway::Value {
    match value {
        serde_norway::Value::Tagged(tagged) => &tagged.value,
        other => other,
    }
}

/// The requirements the command line asks for: `--testcase`s, then the policy files'.
fn requirements(args: &GateArgs) -> Result<(Vec<Requirement>, Vec<String>), Failure> {
    let mut out: Vec<Requirement> = Vec::new();
    let mut ignored = Vec::new();
    for name in &args.testcase {
        let name = name.trim();
        if name.is_empty() {
            return Err(Failure::config("taskbot gate: --testcase needs a name"));
        }
        let requirement = Requirement {
            testcase: name.to_string(),
            scenario: None,
        };
        if !out.contains(&requirement) {
            out.push(requirement);
        }
    }
    for path in &args.policy {
        let (found, kinds) = read_policy(path, &args.item_type, args.decision_context.as_deref())?;
        if found.is_empty() {
            return Err(Failure::input(format!(
                "{}: no !PassingTestCaseRule in a policy for subject type {}{}",
                path.display(),
                args.item_type,
                args.decision_context
                    .as_deref()
                    .map(|c| format!(" and decision context {c}"))
                    .unwrap_or_default()
            )));
        }
        for requirement in found {
            if !out.contains(&requirement) {
                out.push(requirement);
            }
        }
        for kind in kinds {
            if !ignored.contains(&kind) {
                ignored.push(kind);
            }
        }
    }
    if out.is_empty() {
        return Err(Failure::config(
            "taskbot gate: name the required testcases with --testcase NAME or --policy FILE",
        ));
    }
    Ok((out, ignored))
}

fn read_policy(
    path: &Path,
    subject_type: &str,
    context: Option<&str>,
) -> Result<(Vec<Requirement>, Vec<String>), Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Failure::input(format!("{}: cannot read: {e}", path.display())))?;
    policy_requirements(&text, subject_type, context)
        .map_err(|e| Failure::input(format!("{}: {e}", path.display())))
}

/// The `/results/latest` query Greenwave makes for these requirements.
pub fn latest_url(base: &str, item: &str, item_type: &str, requirements: &[Requirement]) -> String {
    let mut names: Vec<&str> = requirements.iter().map(|r| r.testcase.as_str()).collect();
    names.dedup();
    let names: Vec<String> = names.iter().map(|n| encode(n)).collect();
    format!(
        "{base}/api/v2.0/results/latest?item={}&type={}&testcases={}\
         &_distinct_on=scenario,system_architecture,system_variant",
        encode(item),
        encode(item_type),
        names.join(",")
    )
}

/// The item's unfinished jobs declared to report one of the requirements, every page.
fn unfinished_jobs(
    base: &str,
    item: &str,
    item_type: &str,
    requirements: &[Requirement],
) -> Result<Vec<Value>, Failure> {
    let names: Vec<String> = requirements.iter().map(|r| encode(&r.testcase)).collect();
    let states: Vec<&str> = QUEUED_STATES
        .iter()
        .chain(RUNNING_STATES)
        .copied()
        .collect();
    let mut url = Some(format!(
        "{base}/api/v1/jobs?item={}&type={}&testcase={}&state={}&limit={JOB_PAGE}",
        encode(item),
        encode(item_type),
        names.join(","),
        states.join(",")
    ));
    let mut jobs = Vec::new();
    for _ in 0..MAX_JOB_PAGES {
        let Some(next) = url.take() else { break };
        let page = get(&next, "jobs")?;
        jobs.extend(page["data"].as_array().cloned().unwrap_or_default());
        url = page["next"].as_str().map(str::to_string);
    }
    Ok(jobs)
}

/// What `taskbot gate` prints and the exit status it ends with.
pub struct Report {
    pub output: String,
    pub status: u8,
}

/// `taskbot gate`.
pub fn gate(args: &GateArgs) -> Result<Report, Failure> {
    let (requirements, ignored) = requirements(args)?;
    let base = api_url(&args.api)?;
    let latest = get(
        &latest_url(&base, &args.item, &args.item_type, &requirements),
        "results",
    )?;
    let results = latest["data"].as_array().cloned().unwrap_or_default();
    let jobs = unfinished_jobs(&base, &args.item, &args.item_type, &requirements)?;
    let decisions = decide(&requirements, &results, &jobs);
    let status = exit_status(&decisions);
    let output = if args.json {
        let doc = to_json(&args.item, &args.item_type, &decisions, &ignored);
        format!(
            "{}\n",
            serde_json::to_string_pretty(&doc).unwrap_or_else(|_| doc.to_string())
        )
    } else {
        to_text(&args.item, &args.item_type, &decisions, &ignored)
    };
    Ok(Report { output, status })
}

/// 0, [`EXIT_FAILED`] or [`EXIT_WAITING`].
pub fn exit_status(decisions: &[Decision]) -> u8 {
    if decisions.iter().any(|d| d.status == Status::Failed) {
        EXIT_FAILED
    } else if decisions.iter().all(|d| d.status == Status::Satisfied) {
        0
    } else {
        EXIT_WAITING
    }
}

/// Requirements per status, in a fixed order, leaving out those no requirement has.
fn summary(decisions: &[Decision]) -> Vec<(Status, usize)> {
    [
        Status::Satisfied,
        Status::Failed,
        Status::Missing,
        Status::Queued,
        Status::Running,
    ]
    .iter()
    .map(|s| (*s, decisions.iter().filter(|d| d.status == *s).count()))
    .filter(|(_, n)| *n > 0)
    .collect()
}

pub fn to_json(item: &str, item_type: &str, decisions: &[Decision], ignored: &[String]) -> Value {
    let requirements: Vec<Value> = decisions
        .iter()
        .map(|d| {
            json!({
                "testcase": d.requirement.testcase,
                "scenario": d.requirement.scenario,
                "status": d.status.as_str(),
                "results": d.answers.iter().map(|a| json!({
                    "scenario": a.scenario,
                    "system_architecture": a.arch,
                    "status": a.status.as_str(),
                    "outcome": a.outcome,
                    "job": a.job,
                    "ref_url": a.link,
                    "time": a.at,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let counts: serde_json::Map<String, Value> = summary(decisions)
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), json!(n)))
        .collect();
    json!({
        "item": item,
        "type": item_type,
        "satisfied": exit_status(decisions) == 0,
        "summary": counts,
        "requirements": requirements,
        "ignored_rules": ignored,
    })
}

pub fn to_text(item: &str, item_type: &str, decisions: &[Decision], ignored: &[String]) -> String {
    let mut out = String::new();
    let verdict = if exit_status(decisions) == 0 {
        "satisfied"
    } else {
        "NOT satisfied"
    };
    let counts: Vec<String> = summary(decisions)
        .iter()
        .map(|(s, n)| format!("{n} {}", s.as_str()))
        .collect();
    let _ = writeln!(
        out,
        "{item} ({item_type}): {verdict} ({})",
        counts.join(", ")
    );
    let mut rows = Vec::new();
    for d in decisions {
        let name = match &d.requirement.scenario {
            Some(s) => format!("{} [{s}]", d.requirement.testcase),
            None => d.requirement.testcase.clone(),
        };
        if d.answers.is_empty() {
            rows.push(vec![name.clone(), "-".into(), "-".into(), "missing".into()]);
        }
        for a in &d.answers {
            let detail = match (&a.outcome, &a.job) {
                (Some(outcome), _) => outcome.clone(),
                (None, Some(job)) => format!("job {job}"),
                (None, None) => String::new(),
            };
            rows.push(vec![
                name.clone(),
                a.scenario.clone().unwrap_or_else(|| "-".into()),
                a.arch.clone().unwrap_or_else(|| "-".into()),
                a.status.as_str().to_string(),
                detail,
                a.link.clone().unwrap_or_default(),
            ]);
        }
    }
    const PADDED: [&str; 5] = ["TESTCASE", "SCENARIO", "ARCH", "STATUS", "RESULT"];
    let widths: Vec<usize> = (0..PADDED.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([PADDED[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let header = vec![
        "TESTCASE".to_string(),
        "SCENARIO".into(),
        "ARCH".into(),
        "STATUS".into(),
        "RESULT".into(),
        "LINK".into(),
    ];
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            match widths.get(i) {
                Some(w) => {
                    let _ = write!(line, "{cell:<w$}  ");
                }
                None => {
                    line.push_str(cell);
                    line.push_str("  ");
                }
            }
        }
        out.push_str("  ");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if !ignored.is_empty() {
        let _ = writeln!(
            out,
            "ignored rules (only PassingTestCaseRule is checked): {}",
            ignored.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(
        testcase: &str,
        outcome: &str,
        arch: &str,
        scenario: Option<&str>,
        at: &str,
    ) -> Value {
        let mut data = json!({"item": ["x-1-1"], "type": ["koji_build"], "arch": [arch],
                              "system_architecture": [arch]});
        if let Some(s) = scenario {
            data["scenario"] = json!([s]);
        }
        json!({"testcase": {"name": testcase}, "outcome": outcome, "data": data,
               "groups": [format!("job-{testcase}-{arch}")], "submit_time": at,
               "ref_url": "http://logs/task.log"})
    }

    fn job(id: &str, state: &str, testcases: &[&str], arch: &str, created: &str) -> Value {
        json!({"id": id, "state": state, "testcases": testcases, "scenario": null,
               "arch": arch, "created_at": created, "href": format!("http://api/jobs/{id}")})
    }

    fn req(name: &str) -> Requirement {
        Requirement {
            testcase: name.into(),
            scenario: None,
        }
    }

    #[test]
    fn each_arch_counts_and_a_failure_is_not_hidden() {
        let results = [
            result(
                "dist.rpmlint",
                "FAILED",
                "aarch64",
                None,
                "2025-06-15T10:00:00",
            ),
            result(
                "dist.rpmlint",
                "PASSED",
                "x86_64",
                None,
                "2025-06-15T11:00:00",
            ),
            result(
                "dist.depcheck",
                "INFO",
                "x86_64",
                None,
                "2025-06-15T11:00:00",
            ),
        ];
        let d = decide(
            &[req("dist.rpmlint"), req("dist.depcheck"), req("dist.abi")],
            &results,
            &[],
        );
        assert_eq!(d[0].status, Status::Failed);
        assert_eq!(d[0].answers.len(), 2);
        assert_eq!(d[1].status, Status::Satisfied);
        assert_eq!(d[2].status, Status::Missing);
        assert!(d[2].answers.is_empty());
        assert_eq!(exit_status(&d), EXIT_FAILED);
        assert_eq!(exit_status(&d[1..]), EXIT_WAITING);
        assert_eq!(exit_status(&d[1..2]), 0);
    }

    #[test]
    fn an_unfinished_job_requested_after_the_latest_result_stands_for_its_interim_result() {
        let results = [result(
            "dist.rpmlint",
            "FAILED",
            "x86_64",
            None,
            "2025-06-15T10:00:00",
        )];
        // A rerun requested after the failure: RUNNING is the latest in ResultsDB.
        let rerun = job(
            "j2",
            "running",
            &["dist.rpmlint"],
            "x86_64",
            "2025-06-15T10:05:00+00:00",
        );
        let d = decide(
            &[req("dist.rpmlint")],
            &results,
            std::slice::from_ref(&rerun),
        );
        assert_eq!(d[0].status, Status::Running);
        assert_eq!(d[0].answers[0].job.as_deref(), Some("j2"));
        // A job requested before the result (an older one still going) does not hide it.
        let old = job(
            "j0",
            "queued",
            &["dist.rpmlint"],
            "x86_64",
            "2025-06-15T09:00:00+00:00",
        );
        assert_eq!(
            decide(&[req("dist.rpmlint")], &results, &[old])[0].status,
            Status::Failed
        );
        // The job of the result itself (reporting) does not either.
        let own = job(
            "job-dist.rpmlint-x86_64",
            "reporting",
            &["dist.rpmlint"],
            "x86_64",
            "2025-06-15T11:00:00+00:00",
        );
        assert_eq!(
            decide(&[req("dist.rpmlint")], &results, &[own])[0].status,
            Status::Failed
        );
        // A job on another arch, with no result yet: queued there; a job that did not declare
        // the testcase says nothing.
        let arm = job(
            "j3",
            "provisioned",
            &["dist.rpmlint"],
            "aarch64",
            "2025-06-15T09:00:00+00:00",
        );
        let other = job(
            "j4",
            "running",
            &["dist.other"],
            "s390x",
            "2025-06-15T12:00:00+00:00",
        );
        let d = decide(
            &[req("dist.rpmlint"), req("dist.abi")],
            &results,
            &[arm, other],
        );
        assert_eq!(d[0].status, Status::Failed, "a failure outranks waiting");
        assert_eq!(d[0].answers.len(), 2);
        assert_eq!(d[0].answers[0].status, Status::Queued);
        assert_eq!(d[1].status, Status::Missing);
    }

    #[test]
    fn a_scenario_rule_sees_only_its_scenario() {
        let results = [
            result(
                "dist.upgrade",
                "PASSED",
                "x86_64",
                Some("n-1-minimal"),
                "2025-06-15T10:00:00",
            ),
            result(
                "dist.upgrade",
                "FAILED",
                "x86_64",
                Some("n-2-server"),
                "2025-06-15T11:00:00",
            ),
        ];
        let minimal = Requirement {
            testcase: "dist.upgrade".into(),
            scenario: Some("n-1-minimal".into()),
        };
        let d = decide(&[minimal, req("dist.upgrade")], &results, &[]);
        assert_eq!(d[0].status, Status::Satisfied);
        assert_eq!(
            d[1].status,
            Status::Failed,
            "without a scenario, every one counts"
        );
        assert_eq!(d[1].answers.len(), 2);
    }

    #[test]
    fn policies_give_their_passing_testcase_rules_for_the_subject_type() {
        let text = "--- !Policy
id: builds
product_versions: [fedora-*]
decision_contexts: [bodhi_update_push_stable]
subject_type: koji_build
rules:
  - !PassingTestCaseRule {test_case_name: dist.rpmlint}
  - !PassingTestCaseRule {test_case_name: dist.upgrade, scenario: n-1-minimal}
  - !RemoteRule {}
--- !Policy
id: updates
decision_contexts: [bodhi_update_push_testing]
subject_type: bodhi_update
rules:
  - !PassingTestCaseRule {test_case_name: dist.upgradepath}
";
        let (reqs, ignored) = policy_requirements(text, "koji_build", None).unwrap();
        assert_eq!(
            reqs,
            [
                req("dist.rpmlint"),
                Requirement {
                    testcase: "dist.upgrade".into(),
                    scenario: Some("n-1-minimal".into())
                }
            ]
        );
        assert_eq!(ignored, ["!RemoteRule"]);
        let (reqs, _) = policy_requirements(text, "bodhi_update", None).unwrap();
        assert_eq!(reqs, [req("dist.upgradepath")]);
        let (reqs, _) =
            policy_requirements(text, "bodhi_update", Some("bodhi_update_push_stable")).unwrap();
        assert!(reqs.is_empty());
        let err = policy_requirements(
            "--- !Policy\nrules:\n  - {test_case_name: x}\n",
            "koji_build",
            None,
        )
        .unwrap_err();
        assert!(err.contains("without a tag"), "{err}");
        let err = policy_requirements("rules: [\n", "koji_build", None).unwrap_err();
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn the_latest_query_is_greenwaves() {
        assert_eq!(
            latest_url("http://h", "xchat 1", "koji_build", &[req("dist.a"), req("dist.b")]),
            "http://h/api/v2.0/results/latest?item=xchat%201&type=koji_build&testcases=dist.a,dist.b\
             &_distinct_on=scenario,system_architecture,system_variant"
        );
    }
}
