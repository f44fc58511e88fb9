//! `{{ path }}` templates for items and arguments, parsed and checked at load.

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
}

impl Template {
    /// Parse, and check every placeholder names a single field under one of `roots`.
    pub fn parse(text: &str, roots: &[&str]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        for piece in template_pieces(text) {
            match piece.map_err(|_| format!("template {text:?}: '{{{{' without '}}}}'"))? {
                Scanned::Literal(literal) => pieces.push(Piece::Text(literal.to_string())),
                Scanned::Placeholder { inner, .. } => {
                    pieces.push(Piece::Field(Self::field(text, inner, roots)?))
                }
            }
        }
        Ok(Template(pieces))
    }

    /// The path of one placeholder (`inner` is what is between its braces).
    fn field(text: &str, inner: &str, roots: &[&str]) -> Result<Path, String> {
        let path = Path::parse(inner)
            .and_then(|p| p.check_root(roots).map(|()| p))
            .map_err(|e| format!("template {text:?}: {e}"))?;
        if path.has_wildcard() {
            // A template yields one string; several values would need a join rule nobody
            // asked for. One job per element is what for_each is for.
            return Err(format!(
                "template {text:?}: {} has [*], which addresses several values; \
                 use for_each: to get one job per element",
                path.text()
            ));
        }
        Ok(path)
    }

    /// The paths of the placeholders.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.0.iter().filter_map(|piece| match piece {
            Piece::Field(path) => Some(path),
            Piece::Text(_) => None,
        })
    }

    pub fn render(&self, scope: &Scope<'_>) -> Result<String, String> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(path) => match path.first(scope) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(Value::Number(n)) => out.push_str(&n.to_string()),
                    Some(Value::Bool(b)) => out.push_str(&b.to_string()),
                    Some(Value::Null) | None => {
                        return Err(format!("field {} is missing from the message", path.text()))
                    }
                    Some(_) => return Err(format!("field {} is not a single value", path.text())),
                },
            }
        }
        Ok(out)
    }
}
