//! The two small text languages Taskbot files use: `{{ name }}` templates (rules files and
//! `taskbot.yaml`) and globs (rule topics and `artifacts:`). Written once here, so that the rules
//! engine and the runner read the same syntax the same way.
//!
//! What a placeholder may name and how its value is written out differs (a field path of the event
//! in a rule, a job variable in a task, shell- or URL-escaped), so the scanner only finds the
//! pieces and each caller interprets them.

use std::iter::FusedIterator;

/// One piece of a template: text as written, or a `{{ … }}` placeholder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text outside placeholders, as written; never empty.
    Literal(&'a str),
    /// A `{{ … }}`. `inner` is the text between the braces as written (callers trim or parse
    /// it); `at` is the byte offset of its `{{` in the template, for error messages.
    Placeholder { inner: &'a str, at: usize },
}

/// A `{{` that no `}}` closes, at byte offset `at` of the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unclosed {
    pub at: usize,
}

/// The pieces of `template`, in order. A placeholder ends at the first `}}` after its `{{`
/// (there is no escaping and no nesting). After an [`Unclosed`] the iterator ends.
pub fn template_pieces(template: &str) -> TemplatePieces<'_> {
    TemplatePieces { template, pos: 0 }
}

/// The iterator of [`template_pieces`].
#[derive(Debug, Clone)]
pub struct TemplatePieces<'a> {
    template: &'a str,
    /// Where the next piece starts; the template's length once it is exhausted.
    pos: usize,
}

impl<'a> Iterator for TemplatePieces<'a> {
    type Item = Result<Piece<'a>, Unclosed>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.template[self.pos..];
        if rest.is_empty() {
            return None;
        }
        let at = self.pos;
        match rest.find("{{") {
            None => {
                self.pos = self.template.len();
                Some(Ok(Piece::Literal(rest)))
            }
            Some(start @ 1..) => {
                self.pos += start;
                Some(Ok(Piece::Literal(&rest[..start])))
            }
            Some(0) => {
                let after = &rest[2..];
                match after.find("}}") {
                    Some(end) => {
                        self.pos += 2 + end + 2;
                        Some(Ok(Piece::Placeholder {
                            inner: &after[..end],
                            at,
                        }))
                    }
                    None => {
                        self.pos = self.template.len();
                        Some(Err(Unclosed { at }))
                    }
                }
            }
        }
    }
}

impl FusedIterator for TemplatePieces<'_> {}

/// `text` with everything but RFC 3986's unreserved characters percent-encoded: safe as a URL's
/// user, password or path segment whatever it holds (broker user names and passwords, the
/// management API's paths).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The glob of an `artifacts:` entry, matched against a path relative to the clone (with `/`
/// separators), segment by segment: `*` matches any run of characters within one segment, `?`
/// one byte (one character of an ASCII name), and a `**` segment any number of segments
/// (`out/**/*.log`). Empty segments (`a//b`, a leading or trailing `/`) are ignored on both sides.
pub fn path_glob_matches(glob: &str, path: &str) -> bool {
    let pattern: Vec<&str> = glob.split('/').filter(|s| !s.is_empty()).collect();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segments_match(&pattern, &segments, PATH)
}

/// A rule's topic pattern, already split at its dots, against a topic split the same way: `*`
/// matches any run of characters within one segment and a `#` segment any number of segments,
/// as in AMQP. Unlike in paths, `?` is an ordinary character and empty segments count (a topic
/// is matched exactly as written). Split once by the caller: the rules engine matches one topic
/// against every pattern of every rule.
pub fn topic_pattern_matches<P: AsRef<str>>(pattern: &[P], topic: &[&str]) -> bool {
    segments_match(pattern, topic, TOPIC)
}

/// What a glob dialect calls its wildcards; the matching itself is the same for both.
#[derive(Debug, Clone, Copy)]
struct Dialect {
    /// The segment that matches any number of segments (none included).
    any_segments: &'static str,
    /// Whether `?` matches one byte (otherwise it is an ordinary character).
    question_mark: bool,
}

const PATH: Dialect = Dialect {
    any_segments: "**",
    question_mark: true,
};

const TOPIC: Dialect = Dialect {
    any_segments: "#",
    question_mark: false,
};

fn segments_match<P: AsRef<str>>(pattern: &[P], text: &[&str], dialect: Dialect) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((first, rest)) if first.as_ref() == dialect.any_segments => {
            (0..=text.len()).any(|skip| segments_match(rest, &text[skip..], dialect))
        }
        Some((first, rest)) => match text.split_first() {
            Some((segment, text_rest)) => {
                segment_matches(first.as_ref(), segment, dialect)
                    && segments_match(rest, text_rest, dialect)
            }
            None => false,
        },
    }
}

/// One segment against one pattern segment: `*` matches any run of bytes, `?` (when the dialect
/// says so) one byte. Only the last `*` is ever backtracked to, so matching takes at most
/// pattern × text steps, never an exponential number.
fn segment_matches(pattern: &str, text: &str, dialect: Dialect) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    let (mut p, mut t) = (0, 0);
    // After the last `*` seen: where the pattern resumes, and the text position it stood for.
    let mut last_star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                last_star = Some((p, t));
            }
            Some(&c) if c == text[t] || (c == b'?' && dialect.question_mark) => {
                p += 1;
                t += 1;
            }
            _ => match last_star {
                // Let the last `*` take one more byte and try again from there.
                Some((resume, taken)) => {
                    p = resume;
                    t = taken + 1;
                    last_star = Some((resume, taken + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Standard base64 (RFC 4648, with padding), for HTTP Basic credentials.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(template: &str) -> Vec<Result<Piece<'_>, Unclosed>> {
        template_pieces(template).collect()
    }

    #[test]
    fn templates_split_into_literals_and_placeholders_with_positions() {
        use Piece::{Literal, Placeholder};
        assert_eq!(
            pieces("{{ msg.name }}-{{msg.version}}.rpm"),
            [
                Ok(Placeholder {
                    inner: " msg.name ",
                    at: 0
                }),
                Ok(Literal("-")),
                Ok(Placeholder {
                    inner: "msg.version",
                    at: 15
                }),
                Ok(Literal(".rpm")),
            ]
        );
        assert_eq!(pieces("no templates"), [Ok(Literal("no templates"))]);
        assert_eq!(pieces(""), []);
        // Adjacent placeholders give no empty literal between them; `}` alone is text.
        assert_eq!(
            pieces("{{a}}{{b}}}"),
            [
                Ok(Placeholder { inner: "a", at: 0 }),
                Ok(Placeholder { inner: "b", at: 5 }),
                Ok(Literal("}")),
            ]
        );
        // The first `}}` closes; a `{{` inside is part of the placeholder.
        assert_eq!(
            pieces("{{ a {{ b }} c"),
            [
                Ok(Placeholder {
                    inner: " a {{ b ",
                    at: 0
                }),
                Ok(Literal(" c")),
            ]
        );
    }

    #[test]
    fn an_unclosed_placeholder_is_reported_where_it_opens_and_ends_the_scan() {
        assert_eq!(
            pieces("x-{{ item }}-{{ arch"),
            [
                Ok(Piece::Literal("x-")),
                Ok(Piece::Placeholder {
                    inner: " item ",
                    at: 2
                }),
                Ok(Piece::Literal("-")),
                Err(Unclosed { at: 13 }),
            ]
        );
        let mut scan = template_pieces("{{ a }} }} {{");
        assert_eq!(scan.nth(2), Some(Err(Unclosed { at: 11 })));
        assert_eq!(scan.next(), None);
        assert_eq!(scan.next(), None);
    }

    #[test]
    fn path_globs_match_by_segment() {
        assert!(path_glob_matches("*.log", "a.log"));
        assert!(
            !path_glob_matches("*.log", "out/a.log"),
            "* stays in its segment"
        );
        assert!(path_glob_matches("out/**/*.log", "out/a.log"));
        assert!(path_glob_matches("out/**/*.log", "out/x/y/a.log"));
        assert!(!path_glob_matches("out/**/*.log", "other/x/a.log"));
        assert!(path_glob_matches("**", "any/thing"));
        assert!(path_glob_matches("report-?.html", "report-1.html"));
        assert!(!path_glob_matches("report-?.html", "report-12.html"));
        assert!(!path_glob_matches("report-?.html", "report-.html"));
        assert!(
            path_glob_matches("/out//a.log/", "out/a.log"),
            "empty segments"
        );
        // `#` means nothing special in a path.
        assert!(!path_glob_matches("#", "a"));
        assert!(path_glob_matches("#", "#"));
    }

    fn topic(pattern: &str, topic: &str) -> bool {
        let pattern: Vec<&str> = pattern.split('.').collect();
        let topic: Vec<&str> = topic.split('.').collect();
        topic_pattern_matches(&pattern, &topic)
    }

    #[test]
    fn topic_patterns_match_by_segment_with_hash_for_any_number() {
        assert!(topic(
            "org.*.buildsys.#",
            "org.fedoraproject.buildsys.build.state"
        ));
        assert!(topic("org.*.buildsys.#", "org.fedoraproject.buildsys"));
        assert!(!topic("org.*.x", "org.a.b.x"), "* stays in its segment");
        assert!(topic("#.x", "x") && topic("#", "a.b") && !topic("a.#", "b"));
        // `?` and `**` are no wildcards in topics: `**` is one segment of any characters.
        assert!(topic("a.b?", "a.b?") && !topic("a.b?", "a.bc"));
        assert!(topic("a.**", "a.b") && !topic("a.**", "a.b.c"));
        // Empty segments are segments.
        assert!(!topic("a.b", "a..b") && topic("a.*.b", "a..b"));
    }

    #[test]
    fn star_matches_any_run_within_a_segment() {
        let star = |pattern: &str, text: &str| segment_matches(pattern, text, TOPIC);
        assert!(star("stg*", "stg2") && star("*-rc", "f40-rc") && !star("a*b", "ac"));
        assert!(star("*", "") && star("**", "x") && star("a*", "a"));
        assert!(!star("a*a", "a") && star("a*a", "aa") && star("a*a", "abca"));
        assert!(star("*ab*ab", "xabyabab") && !star("*ab*ab", "xabyaba"));
        assert!(star("*.fc*.x86_64", "kernel-6.1-1.fc40.x86_64"));
        assert!(!star("abc", "ab") && !star("ab", "abc") && star("", ""));
        // Many stars against a long text that almost matches: quick, not exponential.
        let text = "a".repeat(10_000);
        assert!(!star(&format!("{}b", "*a".repeat(50)), &text));
    }

    /// The plain recursive definition (what the runner's artifact globs were): `*` any run,
    /// `?` one byte when enabled, anything else itself.
    fn reference(pattern: &[u8], text: &[u8], question_mark: bool) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => {
                (0..=text.len()).any(|skip| reference(rest, &text[skip..], question_mark))
            }
            Some((b'?', rest)) if question_mark => {
                !text.is_empty() && reference(rest, &text[1..], question_mark)
            }
            Some((c, rest)) => {
                text.first() == Some(c) && reference(rest, &text[1..], question_mark)
            }
        }
    }

    /// Every string of up to `max` characters of `alphabet`.
    fn strings(alphabet: &[char], max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn segment_matching_agrees_with_the_recursive_definition_on_every_small_case() {
        let patterns = strings(&['a', 'b', '*', '?'], 5);
        let texts = strings(&['a', 'b', '?'], 5);
        for dialect in [PATH, TOPIC] {
            for pattern in &patterns {
                for text in &texts {
                    assert_eq!(
                        segment_matches(pattern, text, dialect),
                        reference(pattern.as_bytes(), text.as_bytes(), dialect.question_mark),
                        "{pattern:?} {text:?} {dialect:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn base64_is_rfc_4648() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input}");
        }
    }
}
