//! `{{ path }}` templates for items and arguments, parsed and checked at load.
//!
//! A placeholder names one field; `{{ path[*] | join }}` names a list of fields and renders them
//! joined with single spaces, so that one job can be given a whole list (an update's build NVRs)
//! as an argument, as space-separated lists are what tasks read from `TASKBOT_ARG_*`.

use serde_json::Value;
use taskbot::text::{template_pieces, Piece as Scanned};

use super::path::{Path, Scope};

/// Text with `{{ path }}` placeholders.
#[derive(Debug, Clone)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Field(Path),
    /// `{{ path | join }}`: every value the path addresses, joined with spaces.
    Joined(Path),
}

impl Template {
    /// Parse, and check every placeholder names a single field under one of `roots`.
    pub fn parse(text: &str, roots: &[&str]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        for piece in template_pieces(text) {
            match piece.map_err(|_| format!("template {text:?}: '{{{{' without '}}}}'"))? {
                Scanned::Literal(literal) => pieces.push(Piece::Text(literal.to_string())),
                Scanned::Placeholder { inner, .. } => {
                    pieces.push(Self::placeholder(text, inner, roots)?)
                }
            }
        }
        Ok(Template(pieces))
    }

    /// One placeholder (`inner` is what is between its braces): a path, optionally followed by
    /// `| join`, the only filter.
    fn placeholder(text: &str, inner: &str, roots: &[&str]) -> Result<Piece, String> {
        let (path_text, filter) = match inner.split_once('|') {
            Some((path, filter)) => (path, Some(filter.trim())),
            None => (inner, None),
        };
        let path = Path::parse(path_text)
            .and_then(|p| p.check_root(roots).map(|()| p))
            .map_err(|e| format!("template {text:?}: {e}"))?;
        match filter {
            Some("join") => Ok(Piece::Joined(path)),
            Some(other) => Err(format!(
                "template {text:?}: unknown filter {other:?} (the only one is `| join`)"
            )),
            // A plain placeholder yields one string: several values need `| join`, or one job
            // per element (for_each).
            None if path.has_wildcard() => Err(format!(
                "template {text:?}: {} has [*], which addresses several values; \
                 use for_each: to get one job per element, or `| join` to join them with spaces",
                path.text()
            )),
            None => Ok(Piece::Field(path)),
        }
    }

    /// The paths of the placeholders.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter().filter_map(|piece| match piece {
            Piece::Field(path) | Piece::Joined(path) => Some(path),
            Piece::Text(_) => None,
        })
    }

    pub fn render(&self, scope: &Scope<'_>) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(path) => out.push_str(&scalar(path, path.first(scope))?),
                Piece::Joined(path) => {
                    let values = path.values(scope);
                    if values.is_empty() {
                        return Err(format!("field {} is missing from the message", path.text()));
                    }
                    let texts = values
                        .into_iter()
                        .map(|value| scalar(path, Some(value)))
                        .collect::<Result<Vec<_>, _>>()?;
                    out.push_str(&texts.join(" "));
                }
            }
        }
        Ok(out)
    }
}

/// The text of one value of `path`: a string, number or boolean.
fn scalar(path: &Path, value: Option<&Value>) -> Result<String, String> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::Bool(b)) => Ok(b.to_string()),
        Some(Value::Null) | None => {
            Err(format!("field {} is missing from the message", path.text()))
        }
        Some(_) => Err(format!("field {} is not a single value", path.text())),
    }
}
