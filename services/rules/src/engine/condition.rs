//! `where` conditions: a tree of `all` / `any` / `not` over field tests, compiled at load
//! (paths parsed, regexes compiled, sets hashed) so that evaluating one is a few lookups.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use regex::Regex;
use serde_json::Value;

use super::path::{Path, Scope};
use crate::rules_file::{ConditionSpec, ValuesOrSet};

/// A load-time problem, with the texts to look for (in order) to place it in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub message: String,
    pub needles: Vec<String>,
}

impl Problem {
    pub fn new(message: impl Into<String>, needles: &[&str]) -> Problem {
        Problem {
            message: message.into(),
            needles: needles.iter().map(|n| n.to_string()).collect(),
        }
    }
}

/// A list of values turned into hash sets, with the same loose equality as `match`: numbers
/// compare by value, and a string that reads as a number equals that number.
#[derive(Debug, Clone, Default)]
pub struct ValueSet {
    /// The set's name in `sets:`, when it has one (for explanations).
    name: Option<String>,
    /// The values as written, for explanations (`taskbot rules test`); lookups use the hashes.
    listed: Vec<Value>,
    strings: HashSet<String>,
    /// Numbers of the list, as normalised f64 bits.
    numbers: HashSet<u64>,
    /// Strings of the list that read as numbers, as normalised f64 bits.
    numeric_strings: HashSet<u64>,
    /// Booleans, nulls, lists and objects: rare, compared one by one.
    others: Vec<Value>,
}

/// f64 bits with -0.0 folded into 0.0, so that equal numbers hash equally.
fn number_key(f: f64) -> u64 {
    if f == 0.0 {
        0.0f64.to_bits()
    } else {
        f.to_bits()
    }
}

impl ValueSet {
    pub fn new(values: &[Value]) -> ValueSet {
        let mut set = ValueSet {
            listed: values.to_vec(),
            ..ValueSet::default()
        };
        for value in values {
            match value {
                Value::String(s) => {
                    if let Ok(f) = s.parse::<f64>() {
                        set.numeric_strings.insert(number_key(f));
                    }
                    set.strings.insert(s.clone());
                }
                Value::Number(n) => {
                    if let Some(f) = n.as_f64() {
                        set.numbers.insert(number_key(f));
                    }
                }
                other => set.others.push(other.clone()),
            }
        }
        set
    }

    /// A set defined under `sets:`, which explanations name.
    pub fn named(name: &str, values: &[Value]) -> ValueSet {
        ValueSet {
            name: Some(name.to_string()),
            ..ValueSet::new(values)
        }
    }

    /// The values as written in the rules file.
    pub fn listed(&self) -> &[Value] {
        &self.listed
    }

    /// `set critpath ([kernel, glibc, ...])` or `[kernel, glibc]`: short enough for one line.
    pub fn describe(&self) -> String {
        const SHOWN: usize = 8;
        let mut shown: Vec<String> = self.listed.iter().take(SHOWN).map(short_json).collect();
        if self.listed.len() > SHOWN {
            shown.push(format!("... {} more", self.listed.len() - SHOWN));
        }
        let list = format!("[{}]", shown.join(", "));
        match &self.name {
            Some(name) => format!("set {name} {list}"),
            None => list,
        }
    }

    pub fn contains(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => {
                self.strings.contains(s)
                    || s.parse::<f64>()
                        .is_ok_and(|f| self.numbers.contains(&number_key(f)))
            }
            Value::Number(n) => n.as_f64().is_some_and(|f| {
                let key = number_key(f);
                self.numbers.contains(&key) || self.numeric_strings.contains(&key)
            }),
            other => self.others.contains(other),
        }
    }
}

/// YAML `1` and JSON `1.0`, or `"1"` and `1`, should not make a rule silently never fire.
pub fn loosely_equal(actual: &Value, want: &Value) -> bool {
    match (actual, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => {
            a.parse::<f64>().ok() == b.as_f64()
        }
        _ => actual == want,
    }
}

/// The key under which a value can be looked up exactly, or `None` for a value that compares
/// loosely (a number, or a string that reads as one: `1`, `1.0` and `"1"` are all equal here).
/// Two values with keys are loosely equal exactly when their keys are equal, which is what lets
/// the engine index rules by these keys without ever missing a match.
pub fn index_key(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.parse::<f64>().is_err() => Some(format!("s:{s}")),
        Value::Bool(b) => Some(format!("b:{b}")),
        _ => None,
    }
}

/// A number, or a string that reads as one (message producers are not consistent).
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A value as JSON, cut to a length that fits in one line of an explanation.
pub fn short_json(value: &Value) -> String {
    const MAX: usize = 80;
    let text = value.to_string();
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// One operator of a field test.
#[derive(Debug, Clone)]
pub enum Test {
    Equals(Value),
    In(Arc<ValueSet>),
    NotIn(Arc<ValueSet>),
    Regex(Regex),
    Gt(f64),
    Gte(f64),
    Lt(f64),
    Lte(f64),
}

impl Test {
    /// The operator's name as written in a rules file.
    pub fn name(&self) -> &'static str {
        match self {
            Test::Equals(_) => "equals",
            Test::In(_) => "in",
            Test::NotIn(_) => "not_in",
            Test::Regex(_) => "regex",
            Test::Gt(_) => "gt",
            Test::Gte(_) => "gte",
            Test::Lt(_) => "lt",
            Test::Lte(_) => "lte",
        }
    }

    /// The operand as a JSON value (a set gives its listed values), for machine-readable
    /// explanations.
    pub fn operand(&self) -> Value {
        match self {
            Test::Equals(v) => v.clone(),
            Test::In(set) | Test::NotIn(set) => Value::Array(set.listed().to_vec()),
            Test::Regex(re) => Value::String(re.as_str().to_string()),
            Test::Gt(x) | Test::Gte(x) | Test::Lt(x) | Test::Lte(x) => serde_json::json!(x),
        }
    }

    /// `in set critpath [kernel, glibc]`, `regex "^kernel-"`, `gte 39`: the test as a reader
    /// of the rules file would write it.
    pub fn describe(&self) -> String {
        let operand = match self {
            Test::Equals(v) => short_json(v),
            Test::In(set) | Test::NotIn(set) => set.describe(),
            Test::Regex(re) => format!("{:?}", re.as_str()),
            Test::Gt(x) | Test::Gte(x) | Test::Lt(x) | Test::Lte(x) => x.to_string(),
        };
        format!("{} {operand}", self.name())
    }

    pub fn holds(&self, value: &Value) -> bool {
        match self {
            Test::Equals(want) => loosely_equal(value, want),
            Test::In(set) => set.contains(value),
            Test::NotIn(set) => !set.contains(value),
            Test::Regex(re) => match value {
                Value::String(s) => re.is_match(s),
                Value::Number(n) => re.is_match(&n.to_string()),
                _ => false,
            },
            Test::Gt(x) => as_number(value).is_some_and(|v| v > *x),
            Test::Gte(x) => as_number(value).is_some_and(|v| v >= *x),
            Test::Lt(x) => as_number(value).is_some_and(|v| v < *x),
            Test::Lte(x) => as_number(value).is_some_and(|v| v <= *x),
        }
    }
}

/// A compiled condition.
#[derive(Debug, Clone)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    /// The path addresses a value that is not null (`want`), or does not (`!want`).
    Exists {
        path: Path,
        want: bool,
    },
    /// Some value the path addresses passes every test (with `[*]`, one element must pass them
    /// all; a path that addresses nothing passes nothing).
    Field {
        path: Path,
        tests: Vec<Test>,
    },
}

impl Condition {
    pub fn holds(&self, scope: &Scope<'_>) -> bool {
        match self {
            Condition::All(list) => list.iter().all(|c| c.holds(scope)),
            Condition::Any(list) => list.iter().any(|c| c.holds(scope)),
            Condition::Not(inner) => !inner.holds(scope),
            Condition::Exists { path, want } => path.any(scope, &mut |v| !v.is_null()) == *want,
            Condition::Field { path, tests } => {
                path.any(scope, &mut |v| tests.iter().all(|t| t.holds(v)))
            }
        }
    }

    /// Every path the condition reads, for [`super::needs::Needs`].
    pub fn paths<'a>(&'a self, out: &mut Vec<&'a Path>) {
        match self {
            Condition::All(list) | Condition::Any(list) => {
                list.iter().for_each(|c| c.paths(out));
            }
            Condition::Not(inner) => inner.paths(out),
            Condition::Exists { path, .. } | Condition::Field { path, .. } => out.push(path),
        }
    }

    /// The exact values a message must have at a plain (wildcard-free) path for this condition to
    /// hold, when that can be said as a short list of index keys (see [`index_key`]): an equality
    /// with a non-numeric string or a boolean, or `in:` a list made only of such values. `None`
    /// when it cannot, e.g. numbers (which compare loosely), regexes, negations.
    pub fn required_values(&self) -> Option<(&Path, Vec<String>)> {
        let Condition::Field { path, tests } = self else {
            return None;
        };
        if path.has_wildcard() {
            return None;
        }
        // Any one test narrows the values; the others are checked when the rule is evaluated.
        tests.iter().find_map(|test| {
            let keys: Option<Vec<String>> = match test {
                Test::Equals(v) => index_key(v).map(|k| vec![k]),
                Test::In(set) => set.listed.iter().map(index_key).collect(),
                _ => None,
            };
            keys.map(|k| (path, k))
        })
    }

    /// The `match:` form: `path` equals `value`.
    pub fn equals(path: Path, value: Value) -> Condition {
        Condition::Field {
            path,
            tests: vec![Test::Equals(value)],
        }
    }
}

/// What compiling a condition needs to know about the rest of the file.
pub struct CompileContext<'a> {
    pub sets: &'a BTreeMap<String, Arc<ValueSet>>,
    /// Names a path may start with here (`msg`, `topic`, `id`, and a `for_each` element name).
    pub roots: &'a [&'a str],
}

impl CompileContext<'_> {
    pub fn compile(&self, spec: &ConditionSpec) -> Result<Condition, Problem> {
        let combinators = [spec.all.is_some(), spec.any.is_some(), spec.not.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        let operators = operator_names(spec);
        if combinators > 1 || (combinators == 1 && (spec.path.is_some() || !operators.is_empty())) {
            return Err(Problem::new(
                "a condition must be exactly one of all:, any:, not: or a field test \
                 (path: with operators); put several in an all: list",
                &["all:", "any:", "not:"],
            ));
        }
        if let Some(list) = &spec.all {
            return Ok(Condition::All(self.compile_list("all", list)?));
        }
        if let Some(list) = &spec.any {
            return Ok(Condition::Any(self.compile_list("any", list)?));
        }
        if let Some(inner) = &spec.not {
            return Ok(Condition::Not(Box::new(self.compile(inner)?)));
        }
        let Some(path_text) = &spec.path else {
            return Err(Problem::new(
                format!(
                    "a field test needs path: (it has {}); \
                     a condition is all:, any:, not: or path: with operators",
                    if operators.is_empty() {
                        "nothing".to_string()
                    } else {
                        operators.join(", ")
                    }
                ),
                &operators,
            ));
        };
        self.compile_field_test(spec, path_text, &operators)
    }

    /// A node with `path:` and the `operators` it has.
    fn compile_field_test(
        &self,
        spec: &ConditionSpec,
        path_text: &str,
        operators: &[&str],
    ) -> Result<Condition, Problem> {
        let at_path = [path_text.trim()];
        let path = Path::parse(path_text).map_err(|e| Problem::new(e, &at_path))?;
        path.check_root(self.roots)
            .map_err(|e| Problem::new(e, &at_path))?;
        if operators.is_empty() {
            return Err(Problem::new(
                format!(
                    "field test on {} has no operator (equals, in, not_in, regex, exists, \
                     gt, gte, lt, lte)",
                    path.text()
                ),
                &at_path,
            ));
        }
        if let Some(want) = spec.exists {
            if operators.len() > 1 {
                return Err(Problem::new(
                    format!(
                        "field test on {}: exists cannot be combined with other operators; \
                         use all: [...]",
                        path.text()
                    ),
                    &["exists", path.text()],
                ));
            }
            return Ok(Condition::Exists { path, want });
        }
        let tests = self.compile_tests(spec, &path)?;
        Ok(Condition::Field { path, tests })
    }

    /// The operators of a field test on `path` other than `exists`, in a fixed order.
    fn compile_tests(&self, spec: &ConditionSpec, path: &Path) -> Result<Vec<Test>, Problem> {
        let mut tests = Vec::new();
        if let Some(value) = &spec.equals {
            tests.push(Test::Equals(value.clone()));
        }
        if let Some(values) = &spec.one_of {
            tests.push(Test::In(self.value_set("in", values)?));
        }
        if let Some(values) = &spec.not_in {
            tests.push(Test::NotIn(self.value_set("not_in", values)?));
        }
        if let Some(pattern) = &spec.regex {
            let regex = Regex::new(pattern).map_err(|e| {
                Problem::new(
                    format!("invalid regex {pattern:?} for {}: {e}", path.text()),
                    &[pattern.as_str(), "regex:"],
                )
            })?;
            tests.push(Test::Regex(regex));
        }
        for (value, test) in [
            (spec.gt, Test::Gt as fn(f64) -> Test),
            (spec.gte, Test::Gte),
            (spec.lt, Test::Lt),
            (spec.lte, Test::Lte),
        ] {
            if let Some(x) = value {
                tests.push(test(x));
            }
        }
        Ok(tests)
    }

    fn compile_list(&self, name: &str, list: &[ConditionSpec]) -> Result<Vec<Condition>, Problem> {
        if list.is_empty() {
            return Err(Problem::new(
                format!("{name}: needs at least one condition"),
                &[&format!("{name}:")],
            ));
        }
        list.iter().map(|c| self.compile(c)).collect()
    }

    fn value_set(&self, operator: &str, values: &ValuesOrSet) -> Result<Arc<ValueSet>, Problem> {
        match values {
            ValuesOrSet::Values(list) => Ok(Arc::new(ValueSet::new(list))),
            ValuesOrSet::Set(name) => self.sets.get(name).cloned().ok_or_else(|| {
                Problem::new(
                    format!(
                        "{operator}: names unknown set {name:?} (define it under sets:, \
                         or write a list)"
                    ),
                    &[&format!("{operator}: {name}"), name],
                )
            }),
        }
    }
}

/// The operators a node has, by their YAML names.
fn operator_names(spec: &ConditionSpec) -> Vec<&'static str> {
    [
        ("equals", spec.equals.is_some()),
        ("in", spec.one_of.is_some()),
        ("not_in", spec.not_in.is_some()),
        ("regex", spec.regex.is_some()),
        ("exists", spec.exists.is_some()),
        ("gt", spec.gt.is_some()),
        ("gte", spec.gte.is_some()),
        ("lt", spec.lt.is_some()),
        ("lte", spec.lte.is_some()),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .map(|(name, _)| name)
    .collect()
}
