//! After the task's steps: its files back from its VM, the artifact globs kept, the log closed,
//! then the results file and the events read into the job's [`Verdict`] ([`report`] holds the
//! rules).

use std::path::Path;

use taskbot::artifacts::EVENTS_FILE;
use taskbot::messages::{JobRequest, JobState};

use crate::execute::{RunEnd, TaskExit};
use crate::job::HandBack;
use crate::log::JobLog;
use crate::prepare::Prepared;
use crate::remote::Remote;
use crate::report::{self, ResultFactory, Verdict};
use crate::steps::{Ended, StepRunner};
use crate::task_files;
use crate::{events, results};

/// The verdict on a job whose steps `ended`, its task cloned in `clone_dir`, with the job's
/// secrets taken out of whatever of the task's output reached it (a note, data, a quoted log,
/// an event).
pub(crate) async fn conclude(
    job: &JobRequest,
    prepared: Prepared,
    steps: &StepRunner,
    ended: Ended,
    clone_dir: &Path,
    factory: &mut ResultFactory,
) -> Result<Verdict, HandBack> {
    let redactor = prepared.redactor.clone();
    let mut verdict = unredacted(job, prepared, steps, ended, clone_dir, factory).await?;
    redactor.verdict(&mut verdict);
    Ok(verdict)
}

async fn unredacted(
    job: &JobRequest,
    prepared: Prepared,
    steps: &StepRunner,
    ended: Ended,
    clone_dir: &Path,
    factory: &mut ResultFactory,
) -> Result<Verdict, HandBack> {
    let Prepared {
        task,
        remote,
        artifacts,
        log,
        ..
    } = prepared;
    if let Some(remote) = &remote {
        if let Err(reason) = pull_back(remote, clone_dir, &artifacts, steps.pushed, &log).await {
            steps.scrub_artifacts(&log).await;
            let tail = log.finish(report::LOG_TAIL_LINES).await;
            return Ok(factory.crashed(&reason, tail.as_deref()));
        }
    }
    let copied = steps.copy_artifacts(&task.artifacts, &log).await;
    steps.scrub_artifacts(&log).await;
    let tail = log.finish(report::LOG_TAIL_LINES).await;
    tracing::info!(job_id = %job.job_id, ended = ?ended, artifacts = copied, "task ended");
    let results_path = task.results_path();
    let files = TaskFiles {
        results: (clone_dir, &results_path),
        events: (&artifacts, Path::new(EVENTS_FILE)),
    };
    verdict(job, ended, files, factory, tail).await
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
        Ended::Crashed { reason, step_log } => {
            factory.step_log_url = step_log;
            factory.crashed(&reason, tail.as_deref())
        }
        Ended::Aborted { note, step_log } => {
            factory.step_log_url = step_log;
            factory.aborted(&note)
        }
        Ended::Ran { end, step_log } => {
            if !matches!(end, RunEnd::Exited(TaskExit::Code(0))) {
                factory.step_log_url = step_log;
            }
            let results_file = match end {
                RunEnd::Exited(_) => read_results(files.results).await,
                _ => None,
            };
            ran_to_end = matches!(end, RunEnd::Exited(_));
            factory.finished(&end, results_file, || tail.clone())
        }
    };
    if verdict.state == JobState::Done && ran_to_end {
        match read_events(files.events, job).await {
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
    job: &JobRequest,
) -> Result<Vec<taskbot::Event>, String> {
    match read_task_file(root, relative).await? {
        Some(text) => events::parse(&text, job),
        None => Ok(Vec::new()),
    }
}

/// The parsed results file, or `None` when the task wrote none.
async fn read_results(
    (root, relative): (&Path, &Path),
) -> Option<Result<Vec<results::ReportedResult>, String>> {
    match read_task_file(root, relative).await {
        Ok(Some(text)) => Some(results::parse(&text)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A file the task wrote, as text, read off the runtime's threads without following links out
/// of the job's directory ([`task_files`]); `None` when it wrote none.
async fn read_task_file(root: &Path, relative: &Path) -> Result<Option<String>, String> {
    let (root, relative) = (root.to_path_buf(), relative.to_path_buf());
    let bytes = tokio::task::spawn_blocking(move || {
        task_files::read_beneath(&root, &relative, task_files::MAX_TASK_FILE_BYTES)
    })
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
        assert_eq!(read_results(file).await, None);
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        assert_eq!(
            read_results(file).await,
            Some(Err("the file is not UTF-8 text".into()))
        );
        std::fs::write(&path, "results:\n  - {item: a, type: t}\n").unwrap();
        assert_eq!(read_results(file).await.unwrap().unwrap().len(), 1);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        let refused = read_results(file).await.unwrap().unwrap_err();
        assert!(
            refused.contains("symbolic link") && !refused.contains("root:"),
            "{refused}"
        );
    }
}
