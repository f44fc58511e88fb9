//! Which parts of a message body some rules look at, and a parser that builds only those parts.
//!
//! Building a whole `serde_json::Value` of a message is most of what evaluating it costs (every
//! key and string allocated, every object a map), yet the rules a topic can fire read a handful
//! of fields. [`Needs`] is the tree of the paths they read (conditions, `for_each`, templates);
//! [`Needs::parse`] skips everything else without allocating. The result is an ordinary
//! `Value` that holds every value those paths address, exactly as the whole tree would, so the
//! rules are evaluated by the same code and cannot decide differently (a test checks this on the
//! real samples).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::path::Segment;

/// The parts of a JSON value that must be kept: the whole value, or some of its keys and list
/// elements (each with what must be kept of it).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Needs {
    /// Keep the value as it is (a path ends here: it may be compared whole, or be an object a
    /// template refuses as "not a single value").
    whole: bool,
    /// Object keys (and, for numeric names, list positions: `builds.0` indexes a list too).
    keys: HashMap<String, Needs>,
    /// List positions (`[0]`).
    indices: HashMap<usize, Needs>,
    /// Every key or element (`[*]`). After [`Needs::finish`], also merged into `keys` and
    /// `indices`, so that a lookup finds everything a key needs in one place.
    every: Option<Box<Needs>>,
}

impl Needs {
    /// Add a path (its steps after the root name).
    pub fn add(&mut self, segments: &[Segment]) {
        let Some((first, rest)) = segments.split_first() else {
            self.whole = true;
            return;
        };
        match first {
            Segment::Key { name, index } => {
                self.keys.entry(name.clone()).or_default().add(rest);
                if let Some(i) = index {
                    self.indices.entry(*i).or_default().add(rest);
                }
            }
            Segment::Index(i) => self.indices.entry(*i).or_default().add(rest),
            Segment::Wildcard => self.every.get_or_insert_with(Default::default).add(rest),
        }
    }

    /// Make lookups simple once every path is added: what `[*]` needs is also needed under each
    /// named key and index, and below a value kept whole nothing more needs saying.
    pub fn finish(&mut self) {
        if self.whole {
            self.keys.clear();
            self.indices.clear();
            self.every = None;
            return;
        }
        if let Some(every) = &self.every {
            for child in self.keys.values_mut().chain(self.indices.values_mut()) {
                child.merge(every);
            }
        }
        for child in self.keys.values_mut().chain(self.indices.values_mut()) {
            child.finish();
        }
        if let Some(every) = &mut self.every {
            every.finish();
        }
    }

    fn merge(&mut self, other: &Needs) {
        self.whole |= other.whole;
        for (key, needs) in &other.keys {
            self.keys.entry(key.clone()).or_default().merge(needs);
        }
        for (index, needs) in &other.indices {
            self.indices.entry(*index).or_default().merge(needs);
        }
        if let Some(every) = &other.every {
            self.every.get_or_insert_with(Default::default).merge(every);
        }
    }

    fn for_key(&self, key: &str) -> Option<&Needs> {
        self.keys.get(key).or(self.every.as_deref())
    }

    fn for_index(&self, index: usize) -> Option<&Needs> {
        self.indices.get(&index).or(self.every.as_deref())
    }

    /// Parse JSON text into a `Value` holding only what is needed. The text is still checked
    /// whole: a syntax error anywhere is an error.
    pub fn parse(&self, json: &str) -> serde_json::Result<Value> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let value = Pruned(self).deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(value)
    }
}

/// Deserialise a value keeping what `Needs` says.
struct Pruned<'n>(&'n Needs);

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        if self.0.whole {
            Value::deserialize(deserializer)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    // Scalars are kept as they are: a path may end at them.
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // serde_json itself never gives a non-finite number; `Null` as serde_json would.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut kept = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            match self.0.for_key(&key) {
                Some(needs) => {
                    let value = map.next_value_seed(Pruned(needs))?;
                    kept.insert(key.into_owned(), value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(kept))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut kept = Vec::new();
        // The length up to the last element kept for a path: placeholders after it carry nothing.
        let mut needed_len = 0;
        loop {
            match self.0.for_index(kept.len()) {
                Some(needs) => match seq.next_element_seed(Pruned(needs))? {
                    Some(value) => {
                        kept.push(value);
                        needed_len = kept.len();
                    }
                    None => break,
                },
                // An element no path addresses keeps its place (as null), so that the positions
                // of the elements after it do not change.
                None => match seq.next_element::<IgnoredAny>()? {
                    Some(_) => kept.push(Value::Null),
                    None => break,
                },
            }
        }
        kept.truncate(needed_len);
        Ok(Value::Array(kept))
    }
}

/// An object key, borrowed from the text when it has no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::path::Path;
    use serde_json::json;

    fn needs(paths: &[&str]) -> Needs {
        let mut needs = Needs::default();
        for p in paths {
            needs.add(Path::parse(p).unwrap().segments());
        }
        needs.finish();
        needs
    }

    fn pruned(paths: &[&str], value: &Value) -> Value {
        needs(paths).parse(&value.to_string()).unwrap()
    }

    #[test]
    fn keeps_only_the_addressed_fields() {
        let msg = json!({
            "name": "kernel", "version": "6.1", "owner": {"name": "x", "id": 3},
            "update": {"builds": [{"nvr": "a-1-1", "sig": "s"}, {"nvr": "b-1-1"}],
                       "release": {"version": "39", "name": "F39"}},
            "big": {"lots": ["of", "things"]}
        });
        assert_eq!(
            pruned(
                &["msg.name", "msg.update.builds[*].nvr", "msg.update.release"],
                &msg
            ),
            json!({"name": "kernel",
                   "update": {"builds": [{"nvr": "a-1-1"}, {"nvr": "b-1-1"}],
                              "release": {"version": "39", "name": "F39"}}})
        );
        // Nothing needed: an empty object, the text still checked.
        assert_eq!(pruned(&[], &msg), json!({}));
        assert!(needs(&[]).parse("{\"a\": [1, }").is_err());
        assert!(needs(&["msg.a"]).parse("{\"a\": 1} x").is_err());
    }

    #[test]
    fn a_wildcard_and_a_named_key_both_keep_what_they_need() {
        let msg = json!({"files": {"a": {"lines": 3, "size": 9, "x": 0}, "b": {"lines": 5}}});
        assert_eq!(
            pruned(&["msg.files[*].lines", "msg.files.a.size"], &msg),
            json!({"files": {"a": {"lines": 3, "size": 9}, "b": {"lines": 5}}})
        );
        // A list position keeps the elements before it as placeholders, none after.
        let msg = json!({"builds": [{"nvr": "a"}, {"nvr": "b"}, {"nvr": "c"}]});
        assert_eq!(
            pruned(&["msg.builds[1].nvr"], &msg),
            json!({"builds": [null, {"nvr": "b"}]})
        );
        assert_eq!(
            pruned(&["msg.builds.0.nvr"], &msg),
            json!({"builds": [{"nvr": "a"}]})
        );
        // Numeric names address object keys too.
        assert_eq!(
            pruned(&["msg.m.0"], &json!({"m": {"0": "zero", "1": "one"}})),
            json!({"m": {"0": "zero"}})
        );
        // Below a value kept whole, everything is kept.
        assert_eq!(
            pruned(
                &["msg.update", "msg.update.builds[0].nvr"],
                &msg_with_update()
            ),
            json!({"update": msg_with_update()["update"].clone()})
        );
    }

    fn msg_with_update() -> Value {
        json!({"update": {"builds": [{"nvr": "a", "x": [1, {"y": null}]}], "alias": "FEDORA-1"},
               "other": 1})
    }

    #[test]
    fn scalars_and_escapes_survive() {
        let msg = json!({"s": "tab\there \u{e9} \"q\"", "f": 1.5, "n": -3,
                         "big": 18446744073709551615u64, "t": true, "z": null});
        assert_eq!(
            pruned(
                &["msg.s", "msg.f", "msg.n", "msg.big", "msg.t", "msg.z"],
                &msg
            ),
            msg
        );
        // A key written with an escape is the key it spells.
        assert_eq!(
            needs(&["msg.name"])
                .parse(r#"{"na\u006de": "x", "n": 1}"#)
                .unwrap(),
            json!({"name": "x"})
        );
        // A null that a path addresses is kept (null and missing differ for `equals: null`).
        assert_eq!(
            pruned(&["msg.l[1]"], &json!({"l": [1, null, 3]})),
            json!({"l": [null, null]})
        );
    }
}
