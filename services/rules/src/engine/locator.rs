//! Where an error found after parsing is in the rules file. serde places its own errors (an
//! unknown key, a wrong type); the others (an unknown task, a bad path in a `where:`, a template
//! without `}}`) are about values serde accepted, so they are placed by searching the file's text
//! for what they are about: a rule's errors from the rule's first line on, an action's within the
//! action, so that an identical text in an earlier rule or action is not taken for it.
//!
//! The text is searched only when there is an error: searching it for every rule would make
//! loading a large file slow.

use super::condition::Problem;
use crate::rules_file::RulesError;

/// A rules file's name and text, to turn problems into [`RulesError`]s with their position.
#[derive(Debug, Clone, Copy)]
pub struct Locator<'a> {
    file: &'a str,
    text: &'a str,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a str, text: &'a str) -> Self {
        Locator { file, text }
    }

    /// An error at the first occurrence of `needle` in the file, or at 0:0 when it is nowhere:
    /// for errors about texts that occur once (a rule's name, `task: <name>`).
    pub fn first(&self, needle: &str, message: String) -> RulesError {
        let (line, column) = self
            .find_between(1, usize::MAX, &[needle])
            .unwrap_or((0, 0));
        self.error(line, column, message)
    }

    /// Positions inside the rule `name`, which has `action_count` actions.
    pub fn rule(&self, name: &'a str, action_count: usize) -> RuleLocator<'a> {
        RuleLocator {
            locator: *self,
            name,
            action_count,
        }
    }

    fn error(&self, line: usize, column: usize, message: String) -> RulesError {
        RulesError {
            file: self.file.to_string(),
            line,
            column,
            message,
        }
    }

    /// The first of `needles` (tried in turn) found on lines `from_line..to_line` (1-based, end
    /// excluded), as (line, column).
    fn find_between(
        &self,
        from_line: usize,
        to_line: usize,
        needles: &[&str],
    ) -> Option<(usize, usize)> {
        let start = from_line.saturating_sub(1);
        let count = to_line.saturating_sub(from_line.max(1));
        for needle in needles.iter().filter(|n| !n.is_empty()) {
            for (i, line) in self.text.lines().enumerate().skip(start).take(count) {
                if let Some(col) = line.find(needle) {
                    return Some((i + 1, col + 1));
                }
            }
        }
        None
    }
}

/// Positions inside one rule.
#[derive(Debug, Clone, Copy)]
pub struct RuleLocator<'a> {
    locator: Locator<'a>,
    name: &'a str,
    action_count: usize,
}

impl RuleLocator<'_> {
    /// An error at the rule's `name:` line, with `message` as given.
    pub fn error(&self, message: String) -> RulesError {
        self.locator.first(&format!("name: {}", self.name), message)
    }

    /// A problem of the rule's `when:`, placed from the rule's first line on and prefixed with
    /// the rule's name.
    pub fn place(&self, problem: Problem) -> RulesError {
        self.place_within(problem, &[(self.first_line(), usize::MAX)])
    }

    /// A problem of the rule's action number `index`, searched for on the action's own lines
    /// (from its `task:` to the next one's), then on the lines before its `task:` (keys written
    /// before it), then in the whole rule.
    pub fn place_in_action(&self, index: usize, problem: Problem) -> RulesError {
        let rule_line = self.first_line();
        let task_lines = self.task_lines(rule_line);
        let own_start = task_lines.get(index).copied().unwrap_or(rule_line);
        let own_end = task_lines.get(index + 1).copied().unwrap_or(usize::MAX);
        let before = match index {
            0 => rule_line,
            _ => task_lines.get(index - 1).map_or(rule_line, |l| l + 1),
        };
        let spans = [
            (own_start, own_end),
            (before, own_start),
            (rule_line, usize::MAX),
        ];
        self.place_within(problem, &spans)
    }

    /// The line of the rule's `name:` (quoted or not), or 1 when it cannot be found.
    fn first_line(&self) -> usize {
        let name = self.name;
        self.locator
            .find_between(
                1,
                usize::MAX,
                &[
                    &format!("name: {name}"),
                    &format!("name: \"{name}\""),
                    &format!("name: '{name}'"),
                ],
            )
            .map_or(1, |(line, _)| line)
    }

    /// The lines of the rule's actions: each has exactly one `task:` key, which marks where the
    /// action is.
    fn task_lines(&self, rule_line: usize) -> Vec<usize> {
        self.locator
            .text
            .lines()
            .enumerate()
            .skip(rule_line.saturating_sub(1))
            .filter(|(_, line)| line.contains("task:"))
            .map(|(i, _)| i + 1)
            .take(self.action_count)
            .collect()
    }

    /// At the first of the problem's needles found in the first span that has one, or at the
    /// start of the first span.
    fn place_within(&self, problem: Problem, spans: &[(usize, usize)]) -> RulesError {
        let needles: Vec<&str> = problem.needles.iter().map(String::as_str).collect();
        let (line, column) = spans
            .iter()
            .find_map(|(from, to)| self.locator.find_between(*from, *to, &needles))
            .unwrap_or((spans[0].0, 1));
        let message = format!("rule {:?}: {}", self.name, problem.message);
        self.locator.error(line, column, message)
    }
}
