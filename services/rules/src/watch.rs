//! Reloading the rules file when it changes (checked every `rules.reload_interval_ms`) or on
//! SIGHUP. A file that does not load is refused with its position, and the rules in force stay:
//! a typo saved by an editor must not stop Taskbot from scheduling jobs.
//!
//! A check looks at the file's metadata first (modification and change times, size, inode) and
//! reads the file only when one of them changed; a file read again with the text it had is not
//! compiled again. Checks, reads and compiles block, so they run on tokio's blocking threads.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use taskbot::{Config, Shutdown};

use crate::rules_file::read_text;
use crate::{compile_rules, Engine, LiveRules, RulesError};

/// How old a file's last change must be before its metadata is trusted to show the next one.
/// Filesystems keep times at a granularity (a few milliseconds on ext4, 1 s on ext3, 2 s on FAT):
/// a file written again within the same tick, with the same size, looks unchanged. Until its last
/// change is this much older than a check, the file is read again at every check (and compiled
/// only if its text changed).
const SETTLE: Duration = Duration::from_secs(2);

/// What identifies one version of the file without reading it: a save rewrites the file (its
/// modification time and change time move; the change time cannot be set back, even by tools that
/// restore modification times) or replaces it (another inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    /// The inode's change time (seconds, nanoseconds).
    changed: (i64, i64),
    len: u64,
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            len: meta.len(),
            inode: (meta.dev(), meta.ino()),
        }
    }

    /// Whether the file's last change is at least `settle` before `now`, so that a later write
    /// shows in its times.
    fn settled(&self, now: SystemTime, settle: Duration) -> bool {
        let changed = u64::try_from(self.changed.0).ok().and_then(|secs| {
            let nanos = u32::try_from(self.changed.1).ok()?;
            SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        });
        let newest = match (self.modified, changed) {
            (Some(modified), Some(changed)) => modified.max(changed),
            // A time that cannot be told is never trusted: the file is read at every check.
            _ => return false,
        };
        newest.checked_add(settle).is_some_and(|t| t <= now)
    }
}

/// What one check of the rules file found.
#[derive(Debug)]
pub enum Check {
    /// The file's metadata is as it was when it was last read: not read.
    Unchanged,
    /// Read again (its metadata changed, or was too recent to be trusted), with the text it had
    /// (or unreadable, as it was): not compiled.
    SameText,
    /// A new text (or a reload asked for), compiled: the rules to put in force.
    Reloaded(Engine),
    /// A new text that does not load: the rules in force stay.
    Refused(RulesError),
}

/// The rules file as last read, to tell whether it changed since.
pub struct RulesWatcher {
    path: PathBuf,
    config: Config,
    /// The file's metadata when it was last read, once it has settled (see [`SETTLE`]).
    trusted: Option<Stamp>,
    /// The text last read; `None` when it could not be read.
    text: Option<String>,
    settle: Duration,
}

impl RulesWatcher {
    /// Load the rules file named by `config` for the first time: the watcher that remembers it,
    /// and the rules. A file that does not load is an error, with its position.
    pub fn load(config: Config) -> Result<(RulesWatcher, Engine), RulesError> {
        let mut watcher = RulesWatcher {
            path: config.rules.file.clone(),
            config,
            trusted: None,
            text: None,
            settle: SETTLE,
        };
        let read = watcher.read(watcher.stamp());
        let engine = watcher.compile(read)?;
        Ok((watcher, engine))
    }

    /// Look at the file and, if it changed (or `asked`, on SIGHUP), read and compile it.
    pub fn check(&mut self, asked: bool) -> Check {
        let stamp = self.stamp();
        if !asked && stamp.is_some() && stamp == self.trusted {
            return Check::Unchanged;
        }
        let read = self.read(stamp);
        if !asked && read.as_ref().ok() == self.text.as_ref() {
            return Check::SameText;
        }
        match self.compile(read) {
            Ok(engine) => Check::Reloaded(engine),
            Err(err) => Check::Refused(err),
        }
    }

    /// The file's metadata now; `None` when there is no file to look at.
    fn stamp(&self) -> Option<Stamp> {
        std::fs::metadata(&self.path).ok().map(|m| Stamp::of(&m))
    }

    /// Read the file, whose metadata was `stamp` just before (so that a write after it shows at
    /// the next check).
    fn read(&mut self, stamp: Option<Stamp>) -> Result<String, RulesError> {
        let now = SystemTime::now();
        self.trusted = stamp.filter(|s| s.settled(now, self.settle));
        read_text(&self.path, self.config.rules.max_file_bytes)
    }

    /// Compile what was read, and remember it as the text last read.
    fn compile(&mut self, read: Result<String, RulesError>) -> Result<Engine, RulesError> {
        let text = read.inspect_err(|_| self.text = None)?;
        let compiled = compile_rules(&text, &self.path, &self.config);
        self.text = Some(text);
        compiled
    }
}

/// Check the file every `rules.reload_interval_ms` and on SIGHUP until `shutdown`, and put the
/// rules of every new text that loads in force in `rules`.
pub async fn watch_rules(mut watcher: RulesWatcher, rules: LiveRules, mut shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(Duration::from_millis(
        watcher.config.rules.reload_interval_ms.max(50),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let asked = tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let checked = tokio::task::spawn_blocking(move || {
            let check = watcher.check(asked);
            (watcher, check)
        })
        .await;
        let (back, check) = match checked {
            Ok(checked) => checked,
            Err(err) => {
                tracing::error!(error = %err, "checking the rules file failed; no more reloads");
                return;
            }
        };
        watcher = back;
        match check {
            Check::Reloaded(engine) => {
                tracing::info!(file = %watcher.path.display(), rules = engine.rule_count(), "rules reloaded");
                rules.replace(engine);
            }
            Check::Refused(err) => {
                tracing::error!(error = %err, "rules file refused; the rules in force stay");
            }
            Check::Unchanged | Check::SameText => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(task: &str) -> String {
        format!(
            "tasks:\n  {task}: {{ repo: {task} }}\nrules:\n  - name: on-{task}\n    \
             when: {{ topic: a }}\n    do: [{{ task: {task}, item: x, item_type: k, arches: [noarch] }}]\n"
        )
    }

    fn config(file: PathBuf) -> Config {
        let mut config = Config::default();
        config.rules.file = file;
        config
    }

    /// Set the file's modification time `ago` into the past (its change time becomes now).
    fn modified_ago(file: &std::path::Path, ago: Duration) {
        let when = SystemTime::now() - ago;
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn rule_names(check: Check) -> Vec<String> {
        match check {
            Check::Reloaded(engine) => engine
                .explain(&taskbot::testing::event("e", "a", serde_json::json!({})))
                .into_iter()
                .map(|explanation| explanation.rule)
                .collect(),
            other => panic!("expected a reload, got {other:?}"),
        }
    }

    #[test]
    fn an_unchanged_file_is_not_read_again_and_a_changed_one_is_recompiled() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        std::fs::write(&file, rules("first")).unwrap();
        let (mut watcher, engine) = RulesWatcher::load(config(file.clone())).unwrap();
        assert_eq!(rule_names(Check::Reloaded(engine)), ["on-first"]);
        // This test's writes are not followed by others within a filesystem tick.
        watcher.settle = Duration::ZERO;
        assert!(
            matches!(watcher.check(false), Check::SameText),
            "first look"
        );
        for _ in 0..3 {
            assert!(matches!(watcher.check(false), Check::Unchanged));
        }

        std::fs::write(&file, rules("second")).unwrap();
        assert_eq!(rule_names(watcher.check(false)), ["on-second"]);
        assert!(matches!(watcher.check(false), Check::Unchanged));

        // Touched, same text: read, not compiled. Asked for (SIGHUP): compiled anyway.
        modified_ago(&file, Duration::from_secs(3600));
        assert!(matches!(watcher.check(false), Check::SameText));
        assert!(matches!(watcher.check(false), Check::Unchanged));
        assert_eq!(rule_names(watcher.check(true)), ["on-second"]);

        // Broken, then gone: refused once each, with the reason.
        std::fs::write(&file, "rules: [\n").unwrap();
        match watcher.check(false) {
            Check::Refused(err) => assert_eq!(err.file, file.display().to_string()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(watcher.check(false), Check::Unchanged));
        std::fs::remove_file(&file).unwrap();
        match watcher.check(false) {
            Check::Refused(err) => assert!(err.message.contains("cannot read"), "{err}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(watcher.check(false), Check::SameText));

        // Back: loaded again.
        std::fs::write(&file, rules("third")).unwrap();
        assert_eq!(rule_names(watcher.check(false)), ["on-third"]);
    }

    #[test]
    fn a_file_changed_just_now_is_read_at_every_check_so_no_quick_rewrite_is_missed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        std::fs::write(&file, rules("aaaa")).unwrap();
        let (mut watcher, _) = RulesWatcher::load(config(file.clone())).unwrap();
        // Within SETTLE of its last change, a same-sized rewrite could keep every time the file
        // shows: the text is compared instead.
        assert!(matches!(watcher.check(false), Check::SameText));
        assert!(matches!(watcher.check(false), Check::SameText));
        std::fs::write(&file, rules("bbbb")).unwrap();
        assert_eq!(rule_names(watcher.check(false)), ["on-bbbb"]);
        // Once settled, the metadata alone answers.
        watcher.settle = Duration::ZERO;
        assert!(matches!(watcher.check(false), Check::SameText));
        assert!(matches!(watcher.check(false), Check::Unchanged));
    }

    #[test]
    fn a_file_that_does_not_load_at_start_is_an_error_with_its_position() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        std::fs::write(
            &file,
            "rules:\n  - name: x\n    when: {topic: a}\n    do: oops\n",
        )
        .unwrap();
        let err = RulesWatcher::load(config(file.clone())).err().unwrap();
        assert_eq!((err.file, err.line), (file.display().to_string(), 4));
    }

    /// What a check of `text`, written to the watcher's file, refused.
    fn refused(watcher: &mut RulesWatcher, text: &str) -> RulesError {
        std::fs::write(&watcher.path, text).unwrap();
        match watcher.check(false) {
            Check::Refused(err) => {
                assert_eq!(err.file, watcher.path.display().to_string());
                err
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn hostile_files_are_refused_with_their_position_and_the_rules_in_force_stay() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        std::fs::write(&file, rules("good")).unwrap();
        let mut config = config(file.clone());
        config.rules.max_file_bytes = 400_000;
        let (mut watcher, _) = RulesWatcher::load(config).unwrap();

        let deep = format!("rules:\n  - {}{}\n", "[".repeat(40_000), "]".repeat(40_000));
        let err = refused(&mut watcher, &deep);
        // `rules` and the sequence are two levels; the 63rd `[` is the 65th.
        assert_eq!((err.line, err.column), (2, 4 + 63), "{err}");
        assert!(
            err.message
                .contains("nested deeper than the limit of 64 levels"),
            "{err}"
        );

        let mut bomb = String::from("sets:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 0..9 {
            let previous = if level == 0 {
                "a".into()
            } else {
                format!("b{}", level - 1)
            };
            let refs = vec![format!("*{previous}"); 10].join(", ");
            bomb += &format!("  b{level}: &b{level} [{refs}]\n");
        }
        let err = refused(&mut watcher, &bomb);
        assert!(
            err.message
                .contains("aliases expand to more than 100000 nodes"),
            "{err}"
        );
        assert!(err.line >= 2, "placed in the document: {err}");

        let many_keys: String = std::iter::once("sets:\n".to_string())
            .chain((0..40_000).map(|i| format!("  set{i}: [v]\n")))
            .collect();
        let err = refused(&mut watcher, &many_keys);
        assert_eq!(
            err.message,
            format!(
                "the file is {} bytes, over the limit of 400000 (rules.max_file_bytes)",
                many_keys.len()
            )
        );
    }

    #[test]
    fn a_large_honest_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rules.yaml");
        let mut text = String::from("tasks:\n  t: { repo: t }\nrules:\n");
        for i in 0..2_000 {
            text += &format!(
                "  - name: r{i}\n    when: {{ topic: a.b, where: {{ any: [{{ path: 'msg.builds[*].nvr', regex: '^p{i}-' }}] }} }}\n    \
                 do: [{{ task: t, item: \"{{{{ msg.name }}}}\", item_type: k, arches: [noarch] }}]\n"
            );
        }
        assert!(text.len() > 300_000);
        std::fs::write(&file, &text).unwrap();
        let (_, engine) = RulesWatcher::load(config(file)).unwrap();
        assert_eq!(engine.rule_count(), 2_000);
    }

    #[test]
    fn stamps_settle_once_their_last_change_is_old_enough() {
        let now = SystemTime::now();
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        let stamp = |modified: SystemTime, changed: SystemTime| Stamp {
            modified: Some(modified),
            changed: (secs(changed) as i64, 0),
            len: 1,
            inode: (1, 1),
        };
        let old = now - Duration::from_secs(60);
        assert!(stamp(old, old).settled(now, SETTLE));
        assert!(!stamp(old, now).settled(now, SETTLE), "changed just now");
        assert!(!stamp(now, old).settled(now, SETTLE), "modified just now");
        let future = now + Duration::from_secs(60);
        assert!(!stamp(future, old).settled(now, SETTLE), "a clock ahead");
        let unknown = Stamp {
            modified: None,
            ..stamp(old, old)
        };
        assert!(!unknown.settled(now, SETTLE));
    }
}
