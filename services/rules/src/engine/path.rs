//! Field paths into an event (`msg.update.builds[*].nvr`), parsed once at load and walked
//! without allocating at evaluation.

use serde_json::Value;

/// One step of a path after its root name.
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// `.name`: a key of an object. `index` is set when the name is a number (`builds.0`), so
    /// that the older `a.0.b` form keeps indexing lists as it always did.
    Key { name: String, index: Option<usize> },
    /// `[N]`: element N of a list.
    Index(usize),
    /// `[*]`: every element of a list (or every value of an object).
    Wildcard,
}

/// A parsed path: a root name (`msg`, `topic`, `id`, `headers`, or a `for_each` element name)
/// and steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    root: String,
    segments: Vec<Segment>,
}

/// What a path's root name can stand for during one evaluation: the event's parts and, inside a
/// `for_each`, the current element under its name.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub id: &'a Value,
    pub topic: &'a Value,
    pub msg: &'a Value,
    /// The bus message's headers ([`taskbot::Event::headers`]), as one JSON object.
    pub headers: &'a Value,
    pub element: Option<(&'a str, &'a Value)>,
}

impl<'a> Scope<'a> {
    fn root(&self, name: &str) -> Option<&'a Value> {
        match name {
            "msg" => Some(self.msg),
            "topic" => Some(self.topic),
            "id" => Some(self.id),
            "headers" => Some(self.headers),
            _ => match self.element {
                Some((element_name, value)) if element_name == name => Some(value),
                _ => None,
            },
        }
    }

    /// The same scope with `value` bound to `name` (one `for_each` element).
    pub fn with_element(&self, name: &'a str, value: &'a Value) -> Scope<'a> {
        Scope {
            element: Some((name, value)),
            ..*self
        }
    }
}

/// The roots every path may start with; a `for_each` adds its element name.
pub const EVENT_ROOTS: [&str; 4] = ["msg", "topic", "id", "headers"];

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Path {
    /// Parse `name(.name | [N] | [*])*`. Names are letters, digits, `_` and `-`.
    pub fn parse(text: &str) -> Result<Path, String> {
        let text = text.trim();
        let invalid = || {
            format!(
                "invalid field path {text:?} (expected names separated by dots, like msg.name, \
                 with optional [N] or [*] after a name, like msg.update.builds[*].nvr, \
                 or * as a name, like msg.update.builds.*.nvr)"
            )
        };
        let mut root = None;
        let mut segments = Vec::new();
        for part in text.split('.') {
            let (name, mut brackets) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if name == "*" && root.is_some() {
                // `.*` is the same as `[*]`, and needs no quoting inside YAML flow collections
                // (`{ path: msg.update.builds.*.nvr, ... }`), where `[` and `]` are syntax.
                segments.push(Segment::Wildcard);
            } else if !valid_name(name) {
                return Err(invalid());
            } else if root.is_none() {
                root = Some(name.to_string());
            } else {
                segments.push(Segment::Key {
                    name: name.to_string(),
                    index: name.parse().ok(),
                });
            }
            while !brackets.is_empty() {
                let inner_end = brackets.find(']').ok_or_else(invalid)?;
                let inner = &brackets[1..inner_end];
                segments.push(match inner {
                    "*" => Segment::Wildcard,
                    _ => Segment::Index(inner.parse().map_err(|_| invalid())?),
                });
                brackets = &brackets[inner_end + 1..];
                if !brackets.is_empty() && !brackets.starts_with('[') {
                    return Err(invalid());
                }
            }
        }
        Ok(Path {
            text: text.to_string(),
            root: root.ok_or_else(invalid)?,
            segments,
        })
    }

    /// The path as written (trimmed), for messages.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn root(&self) -> &str {
        &self.root
    }

    /// The steps after the root name.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn has_wildcard(&self) -> bool {
        self.segments.contains(&Segment::Wildcard)
    }

    /// Load-time check that the path starts with a name the evaluation will know.
    pub fn check_root(&self, allowed: &[&str]) -> Result<(), String> {
        if allowed.contains(&self.root.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "field path {:?} starts with {:?}; it must start with one of {}",
                self.text,
                self.root,
                allowed.join(", ")
            ))
        }
    }

    /// Call `found` with every value the path addresses (several with `[*]`), stopping as soon as
    /// it returns true; returns whether it did. A path through a missing key, a non-container or
    /// an index out of range simply addresses nothing: no message shape makes this fail.
    pub fn any<'a>(&self, scope: &Scope<'a>, found: &mut impl FnMut(&'a Value) -> bool) -> bool {
        match scope.root(&self.root) {
            Some(root) => walk(root, &self.segments, found),
            None => false,
        }
    }

    /// Every value the path addresses (none when the field is missing), for explanations.
    pub fn values<'a>(&self, scope: &Scope<'a>) -> Vec<&'a Value> {
        let mut values = Vec::new();
        self.any(scope, &mut |v| {
            values.push(v);
            false
        });
        values
    }

    /// The single value of a path without wildcards (the first one otherwise).
    pub fn first<'a>(&self, scope: &Scope<'a>) -> Option<&'a Value> {
        let mut first = None;
        self.any(scope, &mut |v| {
            first = Some(v);
            true
        });
        first
    }
}

fn walk<'a>(
    value: &'a Value,
    segments: &[Segment],
    found: &mut impl FnMut(&'a Value) -> bool,
) -> bool {
    let Some((segment, rest)) = segments.split_first() else {
        return found(value);
    };
    match (segment, value) {
        (Segment::Key { name, .. }, Value::Object(map)) => match map.get(name) {
            Some(v) => walk(v, rest, found),
            None => false,
        },
        (Segment::Key { index: Some(i), .. }, Value::Array(list))
        | (Segment::Index(i), Value::Array(list)) => match list.get(*i) {
            Some(v) => walk(v, rest, found),
            None => false,
        },
        (Segment::Wildcard, Value::Array(list)) => list.iter().any(|v| walk(v, rest, found)),
        (Segment::Wildcard, Value::Object(map)) => map.values().any(|v| walk(v, rest, found)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn all_values(path: &str, msg: &Value) -> Vec<Value> {
        let (id, topic) = (json!("id-1"), json!("a.b"));
        let headers = json!({"fedora_messaging_severity": 20});
        let scope = Scope {
            id: &id,
            topic: &topic,
            msg,
            headers: &headers,
            element: None,
        };
        let mut out = Vec::new();
        Path::parse(path).unwrap().any(&scope, &mut |v| {
            out.push(v.clone());
            false
        });
        out
    }

    #[test]
    fn wildcard_paths_address_every_element() {
        let msg = json!({"update": {"builds": [{"nvr": "a-1-1"}, {"nvr": "b-1-1"}, {"x": 1}]}});
        assert_eq!(
            all_values("msg.update.builds[*].nvr", &msg),
            [json!("a-1-1"), json!("b-1-1")]
        );
        assert_eq!(all_values("msg.update.builds[*]", &msg).len(), 3);
        // `.*` is another spelling of `[*]`.
        assert_eq!(
            Path::parse("msg.update.builds.*.nvr").unwrap().segments,
            Path::parse("msg.update.builds[*].nvr").unwrap().segments
        );
        assert_eq!(
            all_values("msg.update.builds.*.nvr", &msg),
            [json!("a-1-1"), json!("b-1-1")]
        );
        // Wildcard over an object's values, and nested wildcards.
        let msg = json!({"files": {"a.spec": {"lines": 3}, "b.spec": {"lines": 5}},
                         "m": [[1, 2], [3]]});
        assert_eq!(all_values("msg.files[*].lines", &msg), [json!(3), json!(5)]);
        assert_eq!(
            all_values("msg.m[*][*]", &msg),
            [json!(1), json!(2), json!(3)]
        );
    }

    #[test]
    fn numeric_indexes_both_forms() {
        let msg = json!({"builds": [{"nvr": "a"}, {"nvr": "b"}], "map": {"0": "zero"}});
        assert_eq!(all_values("msg.builds.1.nvr", &msg), [json!("b")]);
        assert_eq!(all_values("msg.builds[1].nvr", &msg), [json!("b")]);
        // A numeric name still works as an object key.
        assert_eq!(all_values("msg.map.0", &msg), [json!("zero")]);
        assert!(all_values("msg.builds[7].nvr", &msg).is_empty());
        assert!(all_values("msg.map[0]", &msg).is_empty());
        assert_eq!(all_values("topic", &msg), [json!("a.b")]);
        assert_eq!(
            all_values("headers.fedora_messaging_severity", &msg),
            [json!(20)]
        );
        assert!(all_values("headers.sent-at", &msg).is_empty());
    }

    #[test]
    fn odd_message_shapes_address_nothing() {
        for msg in [
            json!(null),
            json!(3),
            json!("s"),
            json!([]),
            json!({"builds": 5}),
        ] {
            assert!(all_values("msg.builds[*].nvr", &msg).is_empty());
            assert!(all_values("msg.builds.0", &msg).is_empty());
        }
        assert!(all_values("nope.x", &json!({})).is_empty());
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "",
            "msg.",
            ".msg",
            "msg..a",
            "msg.a[",
            "msg.a[]",
            "msg.a[x]",
            "msg.a[*]x",
            "msg.a b",
            "[*].a",
            "msg.a[-1]",
        ] {
            let err = Path::parse(bad).unwrap_err();
            assert!(err.contains("invalid field path"), "{bad:?}: {err}");
        }
        let p = Path::parse(" msg.update.builds[*][0].nvr ").unwrap();
        assert_eq!(p.text(), "msg.update.builds[*][0].nvr");
        assert!(p.has_wildcard());
        assert!(p.check_root(&EVENT_ROOTS).is_ok());
        let err = Path::parse("build.nvr")
            .unwrap()
            .check_root(&EVENT_ROOTS)
            .unwrap_err();
        assert!(
            err.contains("must start with one of msg, topic, id"),
            "{err}"
        );
    }
}
