//! `taskbot rules check` and `taskbot rules test`: catch a broken rules file before the service
//! refuses to start with it, and see what a rule does with a real message before deploying it.
//!
//! Both load the file with the rules service's own [`load_rules`] and a [`Config`] loaded as the
//! service loads it (so `TASKBOT_CONFIG` and `TASKBOT_*` apply), with `--arches` and
//! `--task-base-url` on top; the dry run uses [`taskbot_rules::Engine::explain`], which shares its
//! evaluation code with the service.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};
use taskbot::messages::{Environment, JobRequest, Message};
use taskbot::Config;
use taskbot_rules::engine::RuleExplanation;
use taskbot_rules::{load_rules, Engine};

use crate::cli::{CheckArgs, DeploymentArgs, TestArgs};
use crate::message_input::{self, InputMessage};
use crate::Failure;

/// The configuration the rules file is compiled against: defaults → `TASKBOT_CONFIG` file →
/// `TASKBOT_*` variables → flags.
pub fn load_config(file: &Path, args: &DeploymentArgs) -> Result<Config, Failure> {
    let mut overrides = vec![("rules.file", file.display().to_string())];
    if let Some(url) = &args.task_base_url {
        overrides.push(("rules.task_base_url", url.clone()));
    }
    let mut config =
        Config::load(&overrides).map_err(|e| Failure::config(format!("taskbot: {e}")))?;
    // A list does not fit `Config::load`'s string overrides; set it on the loaded config.
    if let Some(arches) = &args.arches {
        config.arches = arches
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
    }
    Ok(config)
}

fn load_engine(file: &Path, args: &DeploymentArgs) -> Result<Engine, Failure> {
    let config = load_config(file, args)?;
    load_rules(file, &config).map_err(|e| Failure::input(e.to_string()))
}

/// `taskbot rules check FILE`: the output line, or the rules error.
pub fn check(args: &CheckArgs) -> Result<String, Failure> {
    let engine = load_engine(&args.file, &args.deployment)?;
    Ok(format!(
        "{}: {} OK\n",
        args.file.display(),
        count(engine.rule_count(), "rule")
    ))
}

/// `taskbot rules test FILE MESSAGE`: the report (text or JSON). Nothing matching is not an
/// error; a broken rules file or message is.
pub fn test(args: &TestArgs) -> Result<String, Failure> {
    let config = load_config(&args.file, &args.deployment)?;
    let engine = load_rules(&args.file, &config).map_err(|e| Failure::input(e.to_string()))?;
    let (name, text) = message_input::read(&args.message).map_err(Failure::input)?;
    let messages = message_input::parse(&name, &text, config.bridge.max_message_bytes)
        .map_err(|problems| Failure::input(problems.join("\n")))?;
    let explained: Vec<(InputMessage, Vec<RuleExplanation>)> = messages
        .into_iter()
        .map(|m| {
            let explanations = engine.explain(&m.event);
            (m, explanations)
        })
        .collect();
    if args.json {
        Ok(json_report(&args.file, &explained))
    } else {
        Ok(text_report(&explained, args.only_matching))
    }
}

/// "1 rule", "3 rules".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn jobs_of(explanations: &[RuleExplanation]) -> impl Iterator<Item = &JobRequest> {
    explanations.iter().flat_map(|x| x.jobs.iter())
}

/// For people: per message, every rule with MATCH / no match and the reason, then the jobs.
/// `only_matching` leaves out the rules that did not match and, when there are several messages,
/// the messages no rule matched.
pub fn text_report(
    explained: &[(InputMessage, Vec<RuleExplanation>)],
    only_matching: bool,
) -> String {
    let mut out = String::new();
    let mut matched_messages = 0;
    let mut total_jobs = 0;
    for (index, (message, explanations)) in explained.iter().enumerate() {
        let matched = explanations.iter().any(|x| x.matched);
        let jobs = jobs_of(explanations).count();
        if matched {
            matched_messages += 1;
        }
        total_jobs += jobs;
        if only_matching && !matched && explained.len() > 1 {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        let place = match message.line {
            Some(line) => format!(" (line {line})"),
            None if explained.len() > 1 => format!(" {}", index + 1),
            None => String::new(),
        };
        let _ = writeln!(out, "message{place}: {}", message.event.id);
        let _ = writeln!(out, "  topic {}", message.event.topic);
        for x in explanations.iter().filter(|x| x.matched || !only_matching) {
            let verdict = if x.matched { "MATCH   " } else { "no match" };
            let _ = writeln!(out, "  {verdict}  {}: {}", x.rule, x.reason);
            for job in &x.jobs {
                let _ = writeln!(out, "    {}", describe_job(job));
                if !job.args.is_empty() {
                    let args: Vec<String> =
                        job.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    let _ = writeln!(out, "      args: {}", args.join(", "));
                }
            }
            for reason in &x.skipped {
                let _ = writeln!(out, "    skipped: {reason}");
            }
            for filtered in &x.filtered {
                let _ = writeln!(
                    out,
                    "    no job for {}: {}",
                    filtered.location, filtered.message
                );
            }
        }
        let _ = writeln!(
            out,
            "  => {} would be published",
            count(jobs, "job request")
        );
    }
    if explained.len() > 1 {
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(
            out,
            "{}, {matched_messages} matched at least one rule, {} in total",
            count(explained.len(), "message"),
            count(total_jobs, "job request")
        );
    }
    out
}

/// `job <id>: task rpmlint (<repo>@<ref>), item <item> (<item_type>), arch x86_64, priority 0`.
fn describe_job(job: &JobRequest) -> String {
    let mut text = format!(
        "job {}: task {} ({}@{}), item {} ({}), arch {}, priority {}",
        job.job_id,
        job.task.name,
        job.task.repo,
        job.task.git_ref,
        job.item,
        job.item_type,
        job.arch,
        job.priority
    );
    if job.environment == Environment::Vm {
        text.push_str(", environment vm");
    }
    if job.destructive {
        text.push_str(", destructive");
    }
    text
}

/// For machines: `{"rules_file", "messages": [{"line", "event_id", "topic", "rules": [...],
/// "jobs": [...]}]}`. `rules` are the explanations; `jobs` are the job requests of all rules as
/// the service would publish them (with their `schema` tag).
pub fn json_report(file: &Path, explained: &[(InputMessage, Vec<RuleExplanation>)]) -> String {
    let messages: Vec<Value> = explained
        .iter()
        .map(|(message, explanations)| {
            let jobs: Vec<Value> = jobs_of(explanations)
                .map(|job| serde_json::from_slice(&job.to_json()).unwrap_or_default())
                .collect();
            json!({
                "line": message.line,
                "event_id": message.event.id,
                "topic": message.event.topic,
                "rules": explanations,
                "jobs": jobs,
            })
        })
        .collect();
    let report = json!({
        "rules_file": file.display().to_string(),
        "messages": messages,
    });
    let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
    text.push('\n');
    text
}
