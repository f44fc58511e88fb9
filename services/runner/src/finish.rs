//! After the task's steps: its files back from its VM, its artifacts directory tidied (links,
//! special files and what passes the caps removed) and the artifact globs kept, the log closed,
//! then the results file and the events read into the job's [`Verdict`] ([`report`] holds the
//! rules), with notes of what the caps removed.
//!
//! All of this runs once every process of the task is gone (bwrap killed what was left of each
//! step), so what is checked here is what stays. The sweep comes first, then the files kept
//! are redacted of the job's secrets ([`scrub_artifacts`]; never through a link, as none is
//! left), and last the verdict is redacted too.

use std::path::Path;
use std::sync::Arc;

use taskbot::artifacts::{EVENTS_FILE, TASK_LOG};
use taskbot::messages::{JobRequest, JobState};
use taskbot::yaml_budget::YamlBudget;

use crate::artifacts::{self, Allowance, Tidied};
use crate::execute::RunEnd;
use crate::job::HandBack;
use crate::log::{JobLog, LogEnd};
use crate::prepare::Prepared;
use crate::redact::{self, Redactor};
use crate::remote::Remote;
use crate::report::{self, ResultFactory, Verdict};
use crate::steps::Ended;
use crate::task_files;
use crate::{events, results};

/// Lines about single artifacts the log gets at most (a task could leave millions of links).
const ARTIFACT_LINES: usize = 100;

/// The verdict on a job whose steps `ended`, its task cloned in `clone_dir`; `pushed` when its
/// clone went into its VM; `allowance` what it may leave in its artifacts directory. The job's
/// secrets are taken out of whatever of the task's output reached the verdict (a note, data, a
/// quoted log, an event, a file name).
pub(crate) async fn conclude(
    job: &JobRequest,
    prepared: Prepared,
    pushed: bool,
    ended: Ended,
    clone_dir: &Path,
    allowance: Allowance,
    factory: &mut ResultFactory,
) -> Result<Verdict, HandBack> {
    let redactor = prepared.redactor.clone();
    let mut verdict =
        unredacted(job, prepared, pushed, ended, clone_dir, allowance, factory).await?;
    redactor.verdict(&mut verdict);
    Ok(verdict)
}

/// [`conclude`] up to the verdict's redaction: the artifacts tidied then redacted, the log
/// closed, the results and events read.
async fn unredacted(
    job: &JobRequest,
    prepared: Prepared,
    pushed: bool,
    ended: Ended,
    clone_dir: &Path,
    allowance: Allowance,
    factory: &mut ResultFactory,
) -> Result<Verdict, HandBack> {
    let Prepared {
        task,
        remote,
        artifacts,
        log,
        redactor,
        file_budget,
        ..
    } = prepared;
    if let Some(remote) = remote.as_ref().filter(|_| ended.vm_answers()) {
        if let Err(reason) = pull_back(remote, clone_dir, &artifacts, pushed, &log).await {
            // What did come back is regular files only ([`Remote::pull`]).
            scrub_artifacts(&artifacts, &redactor, &log).await;
            let end = log.finish(report::LOG_TAIL_LINES).await;
            let verdict = factory.crashed(&reason, end.tail.as_deref());
            return Ok(verdict.with_notices(&log_notice(&end)));
        }
    }
    // First what may not stay goes (links, special files, what passes the caps), so that only
    // the job's own regular files are read for its secrets.
    let (kept, artifact_notices) =
        tidy(&artifacts, clone_dir, &task.artifacts, allowance, &log).await;
    scrub_artifacts(&artifacts, &redactor, &log).await;
    let end = log.finish(report::LOG_TAIL_LINES).await;
    tracing::info!(job_id = %job.job_id, ended = ?ended, artifacts = kept, log_dropped = end.dropped, "task ended");
    let results_path = task.results_path();
    let files = TaskFiles {
        results: (clone_dir, &results_path),
        events: (&artifacts, Path::new(EVENTS_FILE)),
        budget: file_budget,
    };
    let mut notices = log_notice(&end);
    notices.extend(artifact_notices);
    let verdict = verdict(job, ended, files, factory, end.tail).await?;
    Ok(verdict.with_notices(&notices))
}

/// The artifacts directory rid of what a job may not keep ([`artifacts::sweep`]), then the
/// files of the clone matching the task's `artifacts` globs copied in, within the same
/// allowance; each decision logged. Returns how many files are kept and the notices for the
/// results.
async fn tidy(
    artifacts: &Path,
    clone_dir: &Path,
    globs: &[String],
    mut allowance: Allowance,
    log: &JobLog,
) -> (usize, Vec<String>) {
    let (dir, clone, globs) = (
        artifacts.to_path_buf(),
        clone_dir.to_path_buf(),
        globs.to_vec(),
    );
    let done = tokio::task::spawn_blocking(move || {
        let swept = artifacts::sweep(&dir, &[TASK_LOG], &mut allowance);
        let copied = artifacts::copy_matching(&clone, &dir, &globs, &mut allowance);
        (swept, copied, allowance)
    })
    .await;
    let Ok((swept, copied, allowance)) = done else {
        log.line("== cannot tidy the artifacts: runner failure");
        return (0, Vec::new());
    };
    log_refused(log, "artifact removed", &swept);
    log_refused(log, "artifact not kept", &copied);
    for path in copied.kept.iter().take(ARTIFACT_LINES) {
        log.line(format_args!("artifact kept: {path}"));
    }
    let mut notices = Vec::new();
    if !swept.refused.is_empty() {
        notices.push(format!(
            "{} file(s) in the artifacts were removed as links or special files (only regular files with one link are kept): {}",
            swept.refused.len(),
            names(&swept.refused)
        ));
    }
    let over: Vec<(String, String)> = swept.over_cap.into_iter().chain(copied.over_cap).collect();
    if !over.is_empty() {
        notices.push(format!(
            "{} artifact file(s) were not kept, over the job's caps (runner.max_artifact_files = {}, runner.max_artifact_bytes = {}): {}",
            over.len(),
            allowance.max_files,
            allowance.max_bytes,
            names(&over)
        ));
    }
    (swept.kept.len() + copied.kept.len(), notices)
}

/// Redact, in place, the files of the `artifacts` directory that hold one of the job's secrets
/// (the events file, what the task wrote or had copied there), saying in the log which were.
/// The log itself is redacted as it is written, so it is left alone. Also run when a job is
/// handed back, as its artifacts stay until its next attempt.
pub(crate) async fn scrub_artifacts(artifacts: &Path, redactor: &Arc<Redactor>, log: &JobLog) {
    if redactor.is_empty() {
        return;
    }
    let (redactor, dir) = (redactor.clone(), artifacts.to_path_buf());
    let skip = vec![dir.join(TASK_LOG)];
    let scrubbed = tokio::task::spawn_blocking(move || redact::scrub_dir(&redactor, &dir, &skip))
        .await
        .unwrap_or_else(|e| vec![Err(format!("runner failure: {e}"))]);
    for line in scrubbed {
        match line {
            Ok(path) => log.line(format_args!("artifact redacted (it held a secret): {path}")),
            Err(e) => log.line(format_args!("artifact not redacted: {e}")),
        }
    }
}

/// One log line per file `tidied` refused, at most [`ARTIFACT_LINES`] of them.
fn log_refused(log: &JobLog, what: &str, tidied: &Tidied) {
    let all = tidied.refused.iter().chain(&tidied.over_cap);
    for (path, why) in all.clone().take(ARTIFACT_LINES) {
        log.line(format_args!("{what}: {path}: {why}"));
    }
    let more = all.count().saturating_sub(ARTIFACT_LINES);
    if more > 0 {
        log.line(format_args!("{what}: and {more} more"));
    }
}

/// The first few paths of `files`, for a note.
fn names(files: &[(String, String)]) -> String {
    const SHOWN: usize = 5;
    let mut text: Vec<&str> = files.iter().take(SHOWN).map(|(p, _)| p.as_str()).collect();
    let more = format!(
        "and {} more (see {TASK_LOG})",
        files.len().saturating_sub(SHOWN)
    );
    if files.len() > SHOWN {
        text.push(&more);
    }
    text.join(", ")
}

/// The notice of a log the cap cut, if it was.
fn log_notice(end: &LogEnd) -> Vec<String> {
    if end.dropped == 0 {
        return Vec::new();
    }
    vec![format!(
        "{TASK_LOG} passed runner.max_log_bytes: {} bytes of output were dropped from its middle (its start and its end are kept)",
        end.dropped
    )]
}

/// The task's files, back from its VM before anything reads them. `Err` (the CRASHED reason)
/// only when the task ran there: with nothing copied in (a download failed first) there is
/// nothing to bring back.
async fn pull_back(
    remote: &Remote,
    clone_dir: &Path,
    artifacts: &Path,
    pushed: bool,
    log: &JobLog,
) -> Result<(), String> {
    match remote.pull(clone_dir, artifacts).await {
        Ok(n) => {
            log.line(format_args!("== copied {n} files back from the VM"));
            Ok(())
        }
        Err(e) if pushed => {
            log.line(format_args!("== {e}"));
            Err(e)
        }
        Err(_) => Ok(()),
    }
}

/// Where the task left what it reports: each a directory of the job's and a path inside it.
struct TaskFiles<'a> {
    results: (&'a Path, &'a Path),
    events: (&'a Path, &'a Path),
    /// `runner.max_task_file_bytes` and `runner.max_task_file_depth`.
    budget: YamlBudget,
}

/// `tail` is the end of the job's log, quoted when the job crashed.
async fn verdict(
    job: &JobRequest,
    ended: Ended,
    files: TaskFiles<'_>,
    factory: &mut ResultFactory,
    tail: Option<String>,
) -> Result<Verdict, HandBack> {
    // Events count only from a task whose run steps all ran to their end.
    let mut ran_to_end = false;
    let mut verdict = match ended {
        Ended::Interrupted => return Err(HandBack::shutdown()),
        Ended::Crashed(reason) => factory.crashed(&reason, tail.as_deref()),
        Ended::Aborted(note) => factory.aborted(&note),
        Ended::Failed(note) => factory.failed(&note),
        Ended::MachineLost(reason) => factory.crashed(&reason, tail.as_deref()),
        Ended::Ran(end) => {
            let results_file = match end {
                RunEnd::Exited(_) => read_results(files.results, &files.budget).await,
                _ => None,
            };
            ran_to_end = matches!(end, RunEnd::Exited(_));
            factory.finished(&end, results_file, || tail.clone())
        }
    };
    if verdict.state == JobState::Done && ran_to_end {
        match read_events(files.events, files.budget.max_bytes, job).await {
            Ok(events) => verdict.events = events,
            Err(reason) => {
                verdict = factory.crashed(
                    &format!("invalid events file {EVENTS_FILE}: {reason}"),
                    tail.as_deref(),
                );
            }
        }
    }
    Ok(verdict)
}

/// The events the task announced; none when it wrote no events file.
async fn read_events(
    (root, relative): (&Path, &Path),
    max_bytes: u64,
    job: &JobRequest,
) -> Result<Vec<taskbot::Event>, String> {
    match read_task_file(root, relative, max_bytes).await? {
        Some(text) => events::parse(&text, job),
        None => Ok(Vec::new()),
    }
}

/// The parsed results file, or `None` when the task wrote none.
async fn read_results(
    (root, relative): (&Path, &Path),
    budget: &YamlBudget,
) -> Option<Result<Vec<results::ReportedResult>, String>> {
    match read_task_file(root, relative, budget.max_bytes).await {
        Ok(Some(text)) => Some(results::parse_within(&text, budget)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A file the task wrote, as text, read off the runtime's threads without following links out
/// of the job's directory ([`task_files`]); `None` when it wrote none.
async fn read_task_file(
    root: &Path,
    relative: &Path,
    max_bytes: u64,
) -> Result<Option<String>, String> {
    let (root, relative) = (root.to_path_buf(), relative.to_path_buf());
    let bytes =
        tokio::task::spawn_blocking(move || task_files::read_beneath(&root, &relative, max_bytes))
            .await
            .map_err(|e| format!("runner failure while reading a task file: {e}"))??;
    bytes
        .map(|b| String::from_utf8(b).map_err(|_| "the file is not UTF-8 text".to_string()))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_file_absent_unreadable_or_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.yml");
        let file = (dir.path(), Path::new("results.yml"));
        assert_eq!(
            read_results(file, &task_files::default_budget()).await,
            None
        );
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_results(file, &task_files::default_budget()).await,
            Some(Err("the file is not UTF-8 text".into()))
        );
        std::fs::write(&path, "results:\n  - {item: a, type: t}\n").unwrap();
        assert_eq!(
            read_results(file, &task_files::default_budget())
                .await
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        let refused = read_results(file, &task_files::default_budget())
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            refused.contains("symbolic link") && !refused.contains("root:"),
            "{refused}"
        );
    }
}
