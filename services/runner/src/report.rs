//! Turning what happened to a job into results and a final status. Pure: no broker, no files, so
//! every rule here is unit-tested.
//!
//! The rules:
//! - The task wrote a results file → its entries are the results, whatever the exit code (checks
//!   commonly exit non-zero after reporting FAILED). An invalid file → one CRASHED result with the
//!   parse error.
//! - No results file → one result from the exit code: 0 → PASSED, else FAILED ("exit code N").
//! - Killed by a signal (a segfault, the OOM killer) → CRASHED ("the task was killed by signal N
//!   (SIGx)"), whatever it wrote: the check did not finish, so neither its exit code nor a
//!   results file it may have half written is a verdict on the item.
//! - Timed out → ABORTED ("timed out after Ns"), whatever the task wrote.
//! - Anything that kept the task from running or reporting → CRASHED with the reason, plus the end
//!   of the log when there is one; the job's final state is then `crashed`, else `done`.

use std::collections::{BTreeMap, HashSet};

use chrono::Utc;
use taskbot::amqp::{Disposition, Outgoing};
use taskbot::artifacts::TASK_LOG;
use taskbot::limits;
use taskbot::messages::{Event, JobRequest, JobState, JobStatus, Outcome, TaskResult};
use taskbot::routes::Publishable;
use taskbot::Topology;

use crate::execute::{RunEnd, TaskExit};
use crate::results::ReportedResult;

/// Lines of the task's log quoted in a CRASHED note.
pub const LOG_TAIL_LINES: usize = 20;

/// What the runner knows about a job when it writes its results.
#[derive(Debug, Clone)]
pub struct ResultFactory {
    pub job: JobRequest,
    /// `runner/<arch>@<host>`.
    pub runner: String,
    /// Testcase of results that do not name one: `taskbot.yaml`'s `testcase` once it has been
    /// read, the job's default testcase until then.
    pub testcase: String,
    /// URL (or local path) of the job's artifacts directory, without a trailing slash.
    pub artifacts_location: String,
    /// Where the task's log is, once there is one.
    pub log_url: Option<String>,
    /// The testcases the job is declared to report: the task file's `testcases` (or its
    /// `testcase`) once it has been read, the rule's `testcases` until then; empty when nothing
    /// declares any. QUEUED and RUNNING results were posted for these, so each must end with a
    /// verdict: a crash or a timeout gives every one of them its CRASHED or ABORTED result, and
    /// one the task did not report on the job's item gets a CRASHED result saying so.
    pub testcases: Vec<String>,
}

/// The results of a job and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub results: Vec<TaskResult>,
    /// Events the task announced (published only when the job is done, not crashed).
    pub events: Vec<Event>,
    pub state: JobState,
    /// For the final status: a summary, or why it crashed.
    pub detail: String,
}

impl Verdict {
    /// The verdict with `notices` (what the runner's caps removed) added to every result's note
    /// and to the final status's detail, each on a line of its own: whoever reads a result
    /// learns that its log or artifacts are not whole.
    pub fn with_notices(mut self, notices: &[String]) -> Verdict {
        if notices.is_empty() {
            return self;
        }
        let text = notices.join("\n");
        let add = |to: &mut String| {
            if !to.is_empty() {
                to.push('\n');
            }
            to.push_str(&text);
        };
        for result in &mut self.results {
            add(result.note.get_or_insert_with(String::new));
        }
        add(&mut self.detail);
        self
    }
}

impl ResultFactory {
    pub fn new(job: &JobRequest, runner: &str, artifacts_location: String) -> Self {
        ResultFactory {
            job: job.clone(),
            runner: runner.to_string(),
            testcase: job.default_testcase(),
            artifacts_location,
            log_url: None,
            testcases: job.known_testcases(),
        }
    }

    /// The testcases a verdict about the whole job (a crash, a timeout) is given for: every
    /// declared one, else the default testcase.
    fn job_testcases(&self) -> Vec<String> {
        if self.testcases.is_empty() {
            vec![self.testcase.clone()]
        } else {
            self.testcases.clone()
        }
    }

    /// One result about the job's own item per [`ResultFactory::job_testcases`].
    fn job_results(&self, outcome: Outcome, note: &str) -> Vec<TaskResult> {
        self.job_testcases()
            .into_iter()
            .map(|testcase| self.job_result_for(testcase, outcome, note.to_string()))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn result(
        &self,
        testcase: String,
        outcome: Outcome,
        item: String,
        item_type: String,
        arch: String,
        note: Option<String>,
        data: BTreeMap<String, serde_json::Value>,
    ) -> TaskResult {
        let mut data = data;
        // The rule's variant, unless the task said which scenario its result is of.
        if let Some(scenario) = &self.job.scenario {
            data.entry("scenario".into())
                .or_insert_with(|| scenario.clone().into());
        }
        TaskResult {
            result_id: TaskResult::derive_id(self.job.job_id, &testcase, &item, &item_type, &arch),
            job_id: self.job.job_id,
            testcase,
            outcome,
            item,
            item_type,
            arch,
            note,
            log_url: self.log_url.clone(),
            data,
            task: self.job.task.clone(),
            event_id: self.job.event_id.clone(),
            rule: self.job.rule.clone(),
            runner: self.runner.clone(),
            finished_at: Utc::now(),
        }
    }

    /// A result about the job's own item.
    fn job_result(&self, outcome: Outcome, note: String) -> TaskResult {
        self.job_result_for(self.testcase.clone(), outcome, note)
    }

    /// A result of `testcase` about the job's own item.
    fn job_result_for(&self, testcase: String, outcome: Outcome, note: String) -> TaskResult {
        self.result(
            testcase,
            outcome,
            self.job.item.clone(),
            self.job.item_type.clone(),
            self.job.arch.clone(),
            Some(note),
            BTreeMap::new(),
        )
    }

    /// The runner's own verdict on the machine the task left: FAILED, the job `done` (a VM that
    /// does not come back from the reboot a task asked for, after an upgrade say, is a finding
    /// about the item, as a kernel that does not boot is).
    pub fn failed(&self, note: &str) -> Verdict {
        Verdict {
            events: Vec::new(),
            results: self.job_results(Outcome::Failed, note),
            state: JobState::Done,
            detail: note.to_string(),
        }
    }

    /// The task ran out of time: one ABORTED result saying where. The job itself is `done`: the
    /// runner did its part, and the verdict says what happened.
    pub fn aborted(&self, note: &str) -> Verdict {
        Verdict {
            events: Vec::new(),
            results: self.job_results(Outcome::Aborted, note),
            state: JobState::Done,
            detail: note.to_string(),
        }
    }

    /// The job could not run to the end. `log_tail` is the end of the task's log, if it has one.
    pub fn crashed(&self, reason: &str, log_tail: Option<&str>) -> Verdict {
        let note = match log_tail.filter(|t| !t.trim().is_empty()) {
            Some(tail) => format!("{reason}\n--- end of {TASK_LOG} ---\n{tail}"),
            None => reason.to_string(),
        };
        Verdict {
            events: Vec::new(),
            results: self.job_results(Outcome::Crashed, &note),
            state: JobState::Crashed,
            detail: reason.to_string(),
        }
    }

    /// The results of a task that ran. `results_file` is the results file's parse outcome when
    /// the task wrote one; `log_tail` is read only by the caller when a crash needs it, so it is
    /// passed as a closure.
    pub fn finished(
        &self,
        end: &RunEnd,
        results_file: Option<Result<Vec<ReportedResult>, String>>,
        log_tail: impl FnOnce() -> Option<String>,
    ) -> Verdict {
        match end {
            RunEnd::TimedOut(limit) => {
                self.aborted(&format!("timed out after {}s", limit.as_secs()))
            }
            RunEnd::FailedToStart(reason) => self.crashed(
                &format!("the task could not start: {reason}"),
                log_tail().as_deref(),
            ),
            RunEnd::Interrupted => {
                // Never published: the job goes back to the queue. Kept total for callers.
                self.crashed(
                    "the runner shut down while the task ran",
                    log_tail().as_deref(),
                )
            }
            RunEnd::Exited(TaskExit::Signal(signal)) => self.crashed(
                &format!(
                    "the task was killed by signal {signal} ({})",
                    signal_name(*signal)
                ),
                log_tail().as_deref(),
            ),
            RunEnd::Exited(exit) => match results_file {
                None => {
                    let (outcome, note) = outcome_of_exit(*exit);
                    self.done(vec![self.job_result(outcome, note)])
                }
                Some(Err(reason)) => self.crashed(
                    &format!("invalid results file: {reason}"),
                    log_tail().as_deref(),
                ),
                Some(Ok(reported)) => match self.task_results(reported) {
                    Ok(results) => self.done(results),
                    Err(reason) => self.crashed(
                        &format!("invalid results file: {reason}"),
                        log_tail().as_deref(),
                    ),
                },
            },
        }
    }

    /// The verdict of a task that reported `results`: `done`, unless one of them is CRASHED
    /// (the task's own, or the runner's for a declared testcase it did not report), which ends
    /// the job `crashed` as docs/tasks.md says.
    fn done(&self, mut results: Vec<TaskResult>) -> Verdict {
        for testcase in &self.testcases {
            let reported = results
                .iter()
                .any(|r| &r.testcase == testcase && r.item == self.job.item);
            if !reported {
                let note = format!(
                    "the task declares testcase {testcase} but reported no result for it on {}",
                    self.job.item
                );
                results.push(self.job_result_for(testcase.clone(), Outcome::Crashed, note));
            }
        }
        let crashed = results.iter().any(|r| r.outcome == Outcome::Crashed);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &results {
            *counts.entry(r.outcome.as_str()).or_default() += 1;
        }
        let summary: Vec<String> = counts.iter().map(|(o, n)| format!("{n} {o}")).collect();
        Verdict {
            detail: format!("{} result(s): {}", results.len(), summary.join(", ")),
            results,
            events: Vec::new(),
            state: if crashed {
                JobState::Crashed
            } else {
                JobState::Done
            },
        }
    }

    /// The task's own results, with the job's defaults filled in. Two entries about the same
    /// (testcase, item, type, arch) would get the same result id and one would silently replace
    /// the other in the stores, so that is refused.
    fn task_results(&self, reported: Vec<ReportedResult>) -> Result<Vec<TaskResult>, String> {
        let mut seen = HashSet::new();
        let mut results = Vec::with_capacity(reported.len());
        for (i, r) in reported.into_iter().enumerate() {
            let testcase = r.testcase.unwrap_or_else(|| self.testcase.clone());
            let arch = r.arch.unwrap_or_else(|| self.job.arch.clone());
            let mut data = r.data;
            if let Some(artifact) = r.artifact {
                data.insert(
                    "artifact".into(),
                    format!("{}/{}", self.artifacts_location, artifact).into(),
                );
            }
            let result = self.result(testcase, r.outcome, r.item, r.item_type, arch, r.note, data);
            if !seen.insert(result.result_id) {
                return Err(format!(
                    "results[{i}]: a second result for testcase {}, item {}, type {}, arch {}",
                    result.testcase, result.item, result.item_type, result.arch
                ));
            }
            results.push(result);
        }
        Ok(results)
    }
}

/// The verdict of a task that wrote no results file.
pub fn outcome_of_exit(exit: TaskExit) -> (Outcome, String) {
    match exit {
        TaskExit::Code(0) => (Outcome::Passed, "exit code 0".into()),
        TaskExit::Code(code) => (Outcome::Failed, format!("exit code {code}")),
        TaskExit::Signal(signal) => (
            Outcome::Failed,
            format!("killed by signal {signal} ({})", signal_name(signal)),
        ),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "unknown signal",
    }
}

/// What the consume loop publishes for a finished job, results first: each result (its id as
/// message id, so people can correlate redeliveries), then the final status. The input is acked
/// only once all of them are confirmed.
pub fn disposition(
    topology: &Topology,
    job: &JobRequest,
    verdict: &Verdict,
    runner: &str,
) -> Disposition {
    Disposition::Done(outcome(topology, job, verdict, runner))
}

/// The messages that publish `verdict`, in order: its results, then (only when done) the events
/// the task announced, then the final status.
pub fn outcome(
    topology: &Topology,
    job: &JobRequest,
    verdict: &Verdict,
    runner: &str,
) -> Vec<Outgoing> {
    // Notes and the detail are free text a task's output may fill: shortened to what the stores
    // hold (saying so) rather than published whole and refused downstream.
    let mut out: Vec<Outgoing> = verdict
        .results
        .iter()
        .map(|r| match &r.note {
            Some(note) if limits::check_text("note", note, limits::MAX_NOTE_BYTES).is_err() => {
                let mut fitted = r.clone();
                fitted.note = Some(limits::fit_note(note));
                fitted.outgoing(topology)
            }
            _ => r.outgoing(topology),
        })
        .collect();
    if verdict.state == JobState::Done {
        out.extend(verdict.events.iter().map(|e| e.outgoing(topology)));
    }
    let detail = limits::fit_note(&verdict.detail);
    let status = JobStatus::new(job, verdict.state, runner, Some(detail));
    out.push(status_message(topology, &status));
    out
}

/// A job status as an outgoing message ([`Publishable::outgoing`], as every service sends it).
pub fn status_message(topology: &Topology, status: &JobStatus) -> Outgoing {
    status.outgoing(topology)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use taskbot::messages::Message;
    use taskbot::messages::TaskRef;
    use uuid::Uuid;

    fn job() -> JobRequest {
        let task = TaskRef {
            name: "example".into(),
            repo: "file:///srv/tasks/example".into(),
            git_ref: "main".into(),
        };
        JobRequest {
            job_id: Uuid::from_u128(7),
            event_id: "e1".into(),
            event_topic: "org.fedoraproject.prod.buildsys.build.state.change".into(),
            rule: "example-on-koji-build".into(),
            task,
            item: "xchat-0.5-1.fc20".into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            args: BTreeMap::new(),
            priority: 0,
            environment: Default::default(),
            destructive: false,
            vm: None,
            testcases: Vec::new(),
            scenario: None,
            created_at: Utc::now(),
        }
    }

    fn factory() -> ResultFactory {
        let mut f = ResultFactory::new(&job(), "runner/x86_64@h", "https://a.example/7".into());
        f.log_url = Some("https://a.example/7/task.log".into());
        f
    }

    fn no_log() -> Option<String> {
        None
    }

    #[test]
    fn exit_codes_and_signals_map_to_outcomes() {
        assert_eq!(outcome_of_exit(TaskExit::Code(0)).0, Outcome::Passed);
        assert_eq!(
            outcome_of_exit(TaskExit::Code(1)),
            (Outcome::Failed, "exit code 1".to_string())
        );
        assert_eq!(
            outcome_of_exit(TaskExit::Signal(libc::SIGSEGV)),
            (
                Outcome::Failed,
                format!("killed by signal {} (SIGSEGV)", libc::SIGSEGV)
            )
        );
    }

    #[test]
    fn exit_without_results_file_gives_one_result_on_the_job_item() {
        let v = factory().finished(&RunEnd::Exited(TaskExit::Code(2)), None, no_log);
        assert_eq!(v.state, JobState::Done);
        assert_eq!(v.results.len(), 1);
        let r = &v.results[0];
        assert_eq!(r.outcome, Outcome::Failed);
        assert_eq!(r.note.as_deref(), Some("exit code 2"));
        assert_eq!(r.testcase, "example", "the job's default testcase");
        assert_eq!(
            (r.item.as_str(), r.item_type.as_str(), r.arch.as_str()),
            ("xchat-0.5-1.fc20", "koji_build", "x86_64")
        );
        assert_eq!(
            r.result_id,
            TaskResult::derive_id(
                r.job_id,
                "example",
                "xchat-0.5-1.fc20",
                "koji_build",
                "x86_64"
            )
        );
        assert_eq!(r.log_url.as_deref(), Some("https://a.example/7/task.log"));
        assert_eq!(
            (r.rule.as_str(), r.event_id.as_str()),
            ("example-on-koji-build", "e1")
        );
        assert_eq!(r.runner, "runner/x86_64@h");
        assert_eq!(v.detail, "1 result(s): 1 FAILED");
    }

    #[test]
    fn death_by_signal_crashes_whatever_was_written() {
        let reported = crate::results::parse("results:\n  - {item: a, type: t, outcome: PASSED}\n");
        let v = factory().finished(
            &RunEnd::Exited(TaskExit::Signal(libc::SIGSEGV)),
            Some(reported),
            || Some("working\nSegmentation fault".into()),
        );
        assert_eq!(v.state, JobState::Crashed);
        assert_eq!(v.results.len(), 1);
        assert_eq!(v.results[0].outcome, Outcome::Crashed);
        assert_eq!(
            v.results[0].note.as_deref(),
            Some(
                format!(
                    "the task was killed by signal {} (SIGSEGV)\n--- end of task.log ---\nworking\nSegmentation fault",
                    libc::SIGSEGV
                )
                .as_str()
            )
        );
    }

    #[test]
    fn aborted_links_the_log() {
        let f = factory();
        let v = f.aborted("step slow timed out after 1s (its own timeout: 1s)");
        assert_eq!(v.state, JobState::Done);
        assert_eq!(v.results[0].outcome, Outcome::Aborted);
        assert!(v.results[0].data.is_empty());
        assert_eq!(
            v.results[0].log_url.as_deref(),
            Some("https://a.example/7/task.log")
        );
        assert_eq!(
            v.detail,
            "step slow timed out after 1s (its own timeout: 1s)"
        );
    }

    #[test]
    fn notices_reach_every_note_and_the_detail() {
        let f = factory();
        let notices = [
            "task.log passed runner.max_log_bytes".to_string(),
            "2 artifacts".to_string(),
        ];
        let v = f.aborted("timed out").with_notices(&notices);
        assert_eq!(
            v.results[0].note.as_deref(),
            Some("timed out\ntask.log passed runner.max_log_bytes\n2 artifacts")
        );
        assert_eq!(
            v.detail,
            "timed out\ntask.log passed runner.max_log_bytes\n2 artifacts"
        );
        let reported = crate::results::parse(
            "results:\n  - {item: a, type: t}\n  - {item: b, type: t, note: mine}\n",
        )
        .unwrap();
        let v = f
            .finished(
                &RunEnd::Exited(TaskExit::Code(0)),
                Some(Ok(reported)),
                no_log,
            )
            .with_notices(&notices[..1]);
        let notes: Vec<_> = v.results.iter().map(|r| r.note.as_deref()).collect();
        assert_eq!(
            notes,
            [
                Some("task.log passed runner.max_log_bytes"),
                Some("mine\ntask.log passed runner.max_log_bytes")
            ]
        );
        let untouched = f.aborted("timed out");
        assert_eq!(untouched.clone().with_notices(&[]), untouched);
    }

    #[test]
    fn task_testcase_replaces_the_default() {
        let mut f = factory();
        f.testcase = "dist.example".into();
        let v = f.finished(&RunEnd::Exited(TaskExit::Code(0)), None, no_log);
        assert_eq!(v.results[0].testcase, "dist.example");
        assert_eq!(v.results[0].outcome, Outcome::Passed);
    }

    #[test]
    fn reported_results_win_over_the_exit_code() {
        let reported = crate::results::parse(
            "results:\n  - {item: a-1-1, type: koji_build, checkname: dist.a, outcome: FAILED, artifact: out/a.log, arch: noarch, errors: 3}\n  - {item: b-1-1, type: koji_build}\n",
        );
        let v = factory().finished(&RunEnd::Exited(TaskExit::Code(1)), Some(reported), no_log);
        assert_eq!(v.state, JobState::Done);
        assert_eq!(v.results.len(), 2);
        let (a, b) = (&v.results[0], &v.results[1]);
        assert_eq!(
            (a.testcase.as_str(), a.outcome, a.arch.as_str()),
            ("dist.a", Outcome::Failed, "noarch")
        );
        assert_eq!(a.data["artifact"], "https://a.example/7/out/a.log");
        assert_eq!(a.data["errors"], 3);
        assert_eq!(
            (b.testcase.as_str(), b.outcome, b.arch.as_str()),
            ("example", Outcome::NeedsInspection, "x86_64")
        );
        assert_ne!(a.result_id, b.result_id);
        assert_eq!(v.detail, "2 result(s): 1 FAILED, 1 NEEDS_INSPECTION");
    }

    /// QUEUED and RUNNING results were posted for each declared testcase: a crash and a timeout
    /// give each its verdict, so none is left "running" in ResultsDB.
    #[test]
    fn crashes_and_timeouts_give_every_declared_testcase_its_verdict() {
        let mut f = factory();
        f.testcases = vec!["dist.a".into(), "dist.b".into()];
        let crashed = f.crashed("prepare step failed", None);
        let names: Vec<&str> = crashed
            .results
            .iter()
            .map(|r| r.testcase.as_str())
            .collect();
        assert_eq!(names, ["dist.a", "dist.b"]);
        assert!(crashed
            .results
            .iter()
            .all(|r| r.outcome == Outcome::Crashed));
        assert_ne!(crashed.results[0].result_id, crashed.results[1].result_id);
        let timed_out = f.finished(&RunEnd::TimedOut(Duration::from_secs(5)), None, no_log);
        assert_eq!(timed_out.state, JobState::Done);
        let outcomes: Vec<(&str, Outcome)> = timed_out
            .results
            .iter()
            .map(|r| (r.testcase.as_str(), r.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [("dist.a", Outcome::Aborted), ("dist.b", Outcome::Aborted)]
        );
        // Nothing declared: one result under the default testcase, as before.
        assert_eq!(factory().crashed("x", None).results.len(), 1);
    }

    #[test]
    fn a_declared_testcase_the_task_did_not_report_gets_a_crashed_result() {
        let mut f = factory();
        f.testcases = vec!["dist.a".into(), "dist.b".into()];
        let reported = crate::results::parse(
            "results:\n  - {item: xchat-0.5-1.fc20, type: koji_build, checkname: dist.a, outcome: PASSED}\n",
        );
        let v = f.finished(&RunEnd::Exited(TaskExit::Code(0)), Some(reported), no_log);
        assert_eq!(v.state, JobState::Crashed);
        let b = v.results.iter().find(|r| r.testcase == "dist.b").unwrap();
        assert_eq!(b.outcome, Outcome::Crashed);
        assert!(
            b.note
                .as_deref()
                .unwrap()
                .contains("declares testcase dist.b"),
            "{b:?}"
        );
        assert_eq!(v.results.len(), 2);
    }

    #[test]
    fn the_rules_scenario_is_every_results_unless_the_task_gives_one() {
        let mut f = factory();
        f.job.scenario = Some("fedup-minimal".into());
        let reported = crate::results::parse(
            "results:\n  - {item: a, type: koji_build, outcome: PASSED}\n  - {item: b, type: koji_build, outcome: PASSED, scenario: own}\n",
        );
        let v = f.finished(&RunEnd::Exited(TaskExit::Code(0)), Some(reported), no_log);
        assert_eq!(v.results[0].data["scenario"], "fedup-minimal");
        assert_eq!(v.results[1].data["scenario"], "own");
        assert_eq!(
            f.crashed("x", None).results[0].data["scenario"],
            "fedup-minimal"
        );
    }

    /// docs/tasks.md: "CRASHED results end the job in state `crashed`" — the task's own too.
    #[test]
    fn a_tasks_own_crashed_result_ends_the_job_crashed() {
        let reported = crate::results::parse(
            "results:\n  - {item: a-1-1, type: koji_build, outcome: PASSED}\n  - {item: b-1-1, type: koji_build, outcome: CRASHED, note: lost its machine}\n",
        );
        let v = factory().finished(&RunEnd::Exited(TaskExit::Code(0)), Some(reported), no_log);
        assert_eq!(v.state, JobState::Crashed, "{v:?}");
        assert_eq!(v.results.len(), 2, "both results are kept");
        assert_eq!(v.detail, "2 result(s): 1 CRASHED, 1 PASSED");
    }

    #[test]
    fn duplicate_result_identity_crashes_the_job() {
        let reported = crate::results::parse(
            "results:\n  - {item: a, type: t, outcome: PASSED}\n  - {item: a, type: t, outcome: FAILED}\n",
        );
        let v = factory().finished(&RunEnd::Exited(TaskExit::Code(0)), Some(reported), no_log);
        assert_eq!(v.state, JobState::Crashed);
        assert_eq!(v.results[0].outcome, Outcome::Crashed);
        assert!(
            v.detail
                .contains("results[1]: a second result for testcase example"),
            "{}",
            v.detail
        );
    }

    #[test]
    fn invalid_results_file_crashes_with_reason_and_log_tail() {
        let v = factory().finished(
            &RunEnd::Exited(TaskExit::Code(0)),
            Some(Err(
                "results[0]: missing field `item` at line 2 column 5".into()
            )),
            || Some("checking...\nboom".into()),
        );
        assert_eq!(v.state, JobState::Crashed);
        let r = &v.results[0];
        assert_eq!(r.outcome, Outcome::Crashed);
        assert_eq!(
            r.note.as_deref(),
            Some("invalid results file: results[0]: missing field `item` at line 2 column 5\n--- end of task.log ---\nchecking...\nboom")
        );
        assert_eq!(
            v.detail,
            "invalid results file: results[0]: missing field `item` at line 2 column 5"
        );
    }

    #[test]
    fn timeout_is_aborted_whatever_was_written() {
        let reported = crate::results::parse("results:\n  - {item: a, type: t, outcome: PASSED}\n");
        let v = factory().finished(
            &RunEnd::TimedOut(Duration::from_secs(2)),
            Some(reported),
            || panic!("the log is not needed"),
        );
        assert_eq!(v.state, JobState::Done);
        assert_eq!(v.results.len(), 1);
        assert_eq!(v.results[0].outcome, Outcome::Aborted);
        assert_eq!(v.results[0].note.as_deref(), Some("timed out after 2s"));
    }

    #[test]
    fn failure_to_start_crashes_and_empty_log_is_not_quoted() {
        let v = factory().finished(
            &RunEnd::FailedToStart("No such file or directory".into()),
            None,
            || Some("\n".into()),
        );
        assert_eq!(v.state, JobState::Crashed);
        assert_eq!(
            v.results[0].note.as_deref(),
            Some("the task could not start: No such file or directory")
        );
    }

    #[test]
    fn disposition_publishes_results_then_final_status() {
        let topology = Topology::new("tb", &[]);
        let reported = crate::results::parse(
            "results:\n  - {item: a, type: t, checkname: dist.a, outcome: PASSED}\n  - {item: b, type: t, checkname: dist.b, outcome: FAILED}\n",
        );
        let v = factory().finished(&RunEnd::Exited(TaskExit::Code(0)), Some(reported), no_log);
        let Disposition::Done(out) = disposition(&topology, &job(), &v, "runner/x86_64@h") else {
            panic!("expected Done");
        };
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|o| o.exchange == "tb.results"));
        assert_eq!(out[0].routing_key, "result.PASSED.dist.a");
        assert_eq!(out[1].routing_key, "result.FAILED.dist.b");
        assert_eq!(out[0].message_id, Some(v.results[0].result_id.to_string()));
        assert_eq!(TaskResult::from_json(&out[1].body).unwrap(), v.results[1]);
        assert_eq!(out[2].routing_key, "job.done");
        let status = JobStatus::from_json(&out[2].body).unwrap();
        assert_eq!(status.state, JobState::Done);
        assert_eq!(status.job, job_without_clock_drift(&status.job));
        assert_eq!(
            status.detail.as_deref(),
            Some("2 result(s): 1 FAILED, 1 PASSED")
        );

        let crashed = factory().crashed("repository x is not in runner.allowed_repos", None);
        let Disposition::Done(out) = disposition(&topology, &job(), &crashed, "r") else {
            panic!("expected Done");
        };
        assert_eq!(out[0].routing_key, "result.CRASHED.example");
        assert_eq!(out[1].routing_key, "job.crashed");
    }

    #[test]
    fn announced_events_are_published_between_results_and_status_only_when_done() {
        let topology = Topology::new("tb", &[]);
        let events = crate::events::parse(
            "{\"topic\": \"taskbot.task.iso.built\", \"msg\": {\"iso_url\": \"file:///x.iso\"}}",
            &job(),
        )
        .unwrap();
        let mut v = factory().finished(&RunEnd::Exited(TaskExit::Code(0)), None, no_log);
        v.events = events.clone();
        let Disposition::Done(out) = disposition(&topology, &job(), &v, "r") else {
            panic!("expected Done");
        };
        let keys: Vec<_> = out
            .iter()
            .map(|o| (o.exchange.as_str(), o.routing_key.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("tb.results", "result.PASSED.example"),
                ("tb.events", "taskbot.task.iso.built"),
                ("tb.results", "job.done")
            ]
        );
        assert_eq!(taskbot::Event::from_json(&out[1].body).unwrap(), events[0]);

        let mut crashed = factory().crashed("boom", None);
        crashed.events = events;
        let Disposition::Done(out) = disposition(&topology, &job(), &crashed, "r") else {
            panic!("expected Done");
        };
        assert!(out.iter().all(|o| o.exchange != "tb.events"));
    }

    #[test]
    fn what_no_store_can_hold_crashes_the_job_or_is_shortened_before_publishing() {
        let topology = Topology::new("tb", &[]);
        // An item over its limit in the results file: CRASHED, naming the field and the limit.
        let long_item = "i".repeat(taskbot::limits::MAX_ITEM_BYTES + 1);
        let reported =
            crate::results::parse(&format!("results:\n  - {{item: {long_item}, type: t}}\n"));
        let v = factory().finished(&RunEnd::Exited(TaskExit::Code(0)), Some(reported), no_log);
        assert_eq!(v.state, JobState::Crashed);
        assert_eq!(
            v.results[0].note.as_deref(),
            Some("invalid results file: results[0]: item is 1025 bytes, over the limit of 1024 bytes")
        );
        // A crash quoting a log of huge lines with a NUL: published with its note and detail
        // shortened, and every message passes the reporter's checks.
        let tail = format!("{}\0\n", "x".repeat(taskbot::limits::MAX_NOTE_BYTES));
        let crashed = factory().crashed(&"r".repeat(70_000), Some(&tail));
        let Disposition::Done(out) = disposition(&topology, &job(), &crashed, "r") else {
            panic!("expected Done");
        };
        let result = TaskResult::from_json(&out[0].body).unwrap();
        taskbot::limits::check_result(&result).unwrap();
        assert!(result.note.unwrap().contains("[note shortened: "));
        let status = JobStatus::from_json(&out[1].body).unwrap();
        taskbot::limits::check_status(&status).unwrap();
        // A note within the limits is published as it is.
        let v = factory().crashed("boom", Some("last line"));
        let Disposition::Done(out) = disposition(&topology, &job(), &v, "r") else {
            panic!("expected Done");
        };
        assert_eq!(TaskResult::from_json(&out[0].body).unwrap(), v.results[0]);
    }

    /// `job()` stamps `created_at` with the clock; compare everything else.
    fn job_without_clock_drift(seen: &JobRequest) -> JobRequest {
        JobRequest {
            created_at: seen.created_at,
            ..job()
        }
    }
}
