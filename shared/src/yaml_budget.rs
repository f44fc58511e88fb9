//! Budgets for the YAML files Taskbot reads (the rules file, `taskbot.yaml`, `results.yml`),
//! checked before the YAML parser sees the text.
//!
//! Why: the parser (libyaml, under serde_norway) takes time quadratic in the nesting depth of
//! flow collections: it keeps one "possible simple key" per open `[` / `{` and walks them all at
//! every token. 40,000 nested `[` (80 KB) took 4 s, a 300 KB file over a minute, before serde's
//! own recursion limit (128) could refuse it. And aliases are expanded while deserializing: a
//! "billion laughs" file of 190 KB built 2.9 GB of values in 19 s. So, before any parsing:
//!
//! - the size is checked;
//! - one linear pass over the text ([`check`]) follows what the parser's tokenizer would see
//!   (quoted and plain scalars, comments, block scalars, flow brackets, block indentation) and
//!   refuses nesting deeper than the budget, at the line and column where it passes it;
//! - only when that pass saw an alias, the document is walked once with its aliases expanded,
//!   counting nodes, and refused as soon as the expansion adds more than [`MAX_ALIAS_NODES`]
//!   nodes to what the text itself could hold.
//!
//! The scan may count a level the parser would not (it is a cheap approximation of the
//! tokenizer), never the other way round where it matters: anything it treats as scalar text is
//! scalar text to the parser too.

use std::cell::Cell;
use std::fmt;

/// Limits for one kind of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct YamlBudget {
    /// Largest text accepted, in bytes.
    pub max_bytes: u64,
    /// Deepest nesting of collections (block and flow together) accepted.
    pub max_depth: usize,
}

/// Nodes alias expansion may add beyond what the text could hold without aliases (every node
/// takes at least one byte of text): enough for any honest reuse, small enough that expanding
/// them costs milliseconds and a few megabytes.
pub const MAX_ALIAS_NODES: usize = 100_000;

impl YamlBudget {
    /// The default for every Taskbot YAML file: 1 MiB, 64 levels (a rules `where:` tree five
    /// combinators deep uses about 15).
    pub const DEFAULT: YamlBudget = YamlBudget {
        max_bytes: 1024 * 1024,
        max_depth: 64,
    };
}

impl Default for YamlBudget {
    fn default() -> Self {
        YamlBudget::DEFAULT
    }
}

/// A text over its budget, and where (1-based line and column; the column counts characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

impl std::error::Error for OverBudget {}

/// Refuse `text` if it is over `budget`; run it before handing the text to the YAML parser.
pub fn check(text: &str, budget: &YamlBudget) -> Result<(), OverBudget> {
    if text.len() as u64 > budget.max_bytes {
        let at = floor_char_boundary(text, budget.max_bytes as usize);
        return Err(position(
            text,
            at,
            format!(
                "the file is {} bytes, over the limit of {}",
                text.len(),
                budget.max_bytes
            ),
        ));
    }
    let mut scan = Scanner::new(text, budget.max_depth);
    scan.run()?;
    if scan.aliases > 0 {
        check_alias_expansion(text)?;
    }
    Ok(())
}

fn floor_char_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The length of the line break at byte `at` of `bytes`, if there is one: libyaml's breaks
/// (LF, CR, CRLF, NEL, LS, PS), so that lines are counted as the parser counts them.
fn break_len(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at..)? {
        [b'\r', b'\n', ..] => Some(2),
        [b'\n' | b'\r', ..] => Some(1),
        [0xC2, 0x85, ..] => Some(2),
        [0xE2, 0x80, 0xA8 | 0xA9, ..] => Some(3),
        _ => None,
    }
}

/// The line and column of byte `at` of `text`, with `message`.
fn position(text: &str, at: usize, message: String) -> OverBudget {
    let bytes = text.as_bytes();
    let (mut line, mut line_start, mut i) = (1, 0, 0);
    while i < at {
        match break_len(bytes, i) {
            Some(len) => {
                i += len;
                line += 1;
                line_start = i;
            }
            None => i += 1,
        }
    }
    let column = text[line_start.min(at)..at].chars().count() + 1;
    OverBudget {
        line,
        column,
        message,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Sequence,
    Mapping,
}

/// The linear pass of [`check`]: a coarse copy of libyaml's tokenizer that only tracks what
/// nests.
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Byte offset where the current line starts (columns are counted from it).
    line_start: usize,
    max_depth: usize,
    /// Open block collections: the column of their `-` or first key, and their kind.
    blocks: Vec<(usize, Block)>,
    /// Open flow collections (`[`, `{`).
    flow: usize,
    /// Inside a block scalar (`|`, `>`) whose lines are those indented deeper than this column
    /// (-1: every line).
    block_scalar: Option<isize>,
    /// A plain scalar ended at a line break and may continue on the next line.
    plain_open: bool,
    /// Whether the next token is the first of its line (it decides which block it belongs to).
    first_on_line: bool,
    aliases: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str, max_depth: usize) -> Self {
        let skip_bom = if text.starts_with('\u{feff}') { 3 } else { 0 };
        Scanner {
            text,
            bytes: text.as_bytes(),
            pos: skip_bom,
            line_start: skip_bom,
            max_depth,
            blocks: Vec::new(),
            flow: 0,
            block_scalar: None,
            plain_open: false,
            first_on_line: true,
            aliases: 0,
        }
    }

    fn run(&mut self) -> Result<(), OverBudget> {
        self.start_line()?;
        while self.pos < self.bytes.len() {
            if let Some(len) = self.line_break() {
                self.pos += len;
                self.line_start = self.pos;
                self.start_line()?;
                continue;
            }
            match self.bytes[self.pos] {
                b' ' | b'\t' => self.pos += 1,
                b'#' if self.after_blank() => {
                    self.plain_open = false;
                    self.skip_to_line_end();
                }
                _ => {
                    self.token()?;
                    self.first_on_line = false;
                }
            }
        }
        Ok(())
    }

    /// The length of the line break at `pos`, if there is one.
    fn line_break(&self) -> Option<usize> {
        break_len(self.bytes, self.pos)
    }

    fn skip_to_line_end(&mut self) {
        while self.pos < self.bytes.len() && self.line_break().is_none() {
            self.pos += 1;
        }
    }

    fn after_blank(&self) -> bool {
        self.pos == self.line_start || matches!(self.bytes[self.pos - 1], b' ' | b'\t')
    }

    fn blank_or_end_at(&self, at: usize) -> bool {
        match self.bytes.get(at) {
            None | Some(b' ' | b'\t') => true,
            Some(_) => break_len(self.bytes, at).is_some(),
        }
    }

    /// The block indentation in force: the column of the innermost open block collection.
    fn block_indent(&self) -> isize {
        self.blocks
            .last()
            .map_or(-1, |(column, _)| *column as isize)
    }

    /// At the start of a line: skip block scalar lines, continue plain scalars, close the block
    /// collections this line's indentation ends.
    fn start_line(&mut self) -> Result<(), OverBudget> {
        self.first_on_line = true;
        let indent = self.bytes[self.pos..]
            .iter()
            .take_while(|b| **b == b' ')
            .count();
        let first = self.pos + indent;
        let blank = first >= self.bytes.len() || break_len(self.bytes, first).is_some();
        if indent == 0 && self.document_marker() {
            self.blocks.clear();
            self.flow = 0;
            (self.block_scalar, self.plain_open) = (None, false);
            self.pos += 3;
            return Ok(());
        }
        if let Some(threshold) = self.block_scalar {
            if blank || indent as isize > threshold {
                self.skip_to_line_end();
                return Ok(());
            }
            self.block_scalar = None;
        }
        if self.flow > 0 || blank {
            return Ok(());
        }
        self.pos += indent;
        if self.plain_open && indent as isize > self.block_indent() && self.bytes[first] != b'#' {
            // The plain scalar of the line before goes on (libyaml: deeper than the block).
            self.plain(self.pos)?;
            return Ok(());
        }
        self.plain_open = false;
        while self
            .blocks
            .last()
            .is_some_and(|(column, _)| *column > indent)
        {
            self.blocks.pop();
        }
        Ok(())
    }

    /// `---` or `...` at the start of a line, followed by a blank.
    fn document_marker(&self) -> bool {
        let rest = &self.bytes[self.pos..];
        (rest.starts_with(b"---") || rest.starts_with(b"...")) && self.blank_or_end_at(self.pos + 3)
    }

    /// One token starting at `pos` (not a blank, a break or a comment).
    fn token(&mut self) -> Result<(), OverBudget> {
        let start = self.pos;
        let byte = self.bytes[start];
        let in_flow = self.flow > 0;
        let indicator = self.blank_or_end_at(start + 1);
        if in_flow && self.plain_open && matches!(byte, b'"' | b'\'') {
            // A quote on the continuation line of a plain scalar is part of it.
            return self.plain(start);
        }
        self.plain_open = false;
        match byte {
            b'-' if indicator && !in_flow => {
                self.open_block(Block::Sequence)?;
                self.pos += 1;
            }
            b'?' if indicator && !in_flow => {
                self.open_block(Block::Mapping)?;
                self.pos += 1;
            }
            b'?' | b':' if indicator || in_flow => self.pos += 1,
            b'[' | b'{' => {
                self.flow += 1;
                self.check_depth()?;
                self.pos += 1;
            }
            b']' | b'}' => {
                self.flow = self.flow.saturating_sub(1);
                self.pos += 1;
            }
            b',' if in_flow => self.pos += 1,
            b'"' | b'\'' => {
                self.quoted(byte);
                self.key_after_scalar(start)?;
            }
            b'&' | b'!' => self.skip_name(),
            b'*' => {
                self.aliases += 1;
                self.skip_name();
            }
            b'|' | b'>' if !in_flow => {
                self.block_scalar = Some(self.block_indent());
                self.skip_to_line_end();
            }
            b'%' if !in_flow && start == self.line_start => self.skip_to_line_end(),
            _ => self.plain(start)?,
        }
        Ok(())
    }

    /// A block collection of `kind` whose indicator (or first key) is at `pos`: the one already
    /// open there, or a new, deeper one.
    fn open_block(&mut self, kind: Block) -> Result<(), OverBudget> {
        let column = self.pos - self.line_start;
        if self.first_on_line {
            // A key at the column of a sequence that is the value of a key ends that sequence
            // (`a:\n- 1\nb: 2`).
            if kind == Block::Mapping && self.blocks.last() == Some(&(column, Block::Sequence)) {
                self.blocks.pop();
            }
        }
        if self.blocks.last() == Some(&(column, kind)) {
            return Ok(());
        }
        self.blocks.push((column, kind));
        self.check_depth()
    }

    fn check_depth(&self) -> Result<(), OverBudget> {
        let depth = self.blocks.len() + self.flow;
        if depth <= self.max_depth {
            return Ok(());
        }
        Err(position(
            self.text,
            self.pos,
            format!(
                "collections nested deeper than the limit of {} levels",
                self.max_depth
            ),
        ))
    }

    /// A quoted scalar opened by `quote` at `pos`, up to its closing quote (or the end).
    fn quoted(&mut self, quote: u8) {
        self.pos += 1;
        while self.pos < self.bytes.len() {
            if let Some(len) = self.line_break() {
                self.pos += len;
                self.line_start = self.pos;
                continue;
            }
            match (quote, self.bytes[self.pos], self.bytes.get(self.pos + 1)) {
                (b'"', b'\\', Some(_)) => self.pos += 2,
                (b'\'', b'\'', Some(b'\'')) => self.pos += 2,
                (_, byte, _) if byte == quote => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
    }

    /// After a scalar that began at `start` in block context: a `:` and a blank make it a key,
    /// which opens (or continues) the mapping at its column.
    fn key_after_scalar(&mut self, start: usize) -> Result<(), OverBudget> {
        if self.flow > 0 || start < self.line_start {
            return Ok(());
        }
        let mut at = self.pos;
        while matches!(self.bytes.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        if self.bytes.get(at) == Some(&b':') && self.blank_or_end_at(at + 1) {
            let end = self.pos;
            self.pos = start;
            self.open_block(Block::Mapping)?;
            self.pos = end;
        }
        Ok(())
    }

    /// An anchor, tag or alias name.
    fn skip_name(&mut self) {
        self.pos += 1;
        while self.pos < self.bytes.len() && !self.blank_or_end_at(self.pos) {
            if self.flow > 0 && matches!(self.bytes[self.pos], b',' | b'[' | b']' | b'{' | b'}') {
                break;
            }
            self.pos += 1;
        }
    }

    /// A plain scalar from `start`, to where libyaml ends it: `: ` (a key), ` #`, a line break
    /// (it may go on at the next line), and in flow context `,[]{}`.
    fn plain(&mut self, start: usize) -> Result<(), OverBudget> {
        let in_flow = self.flow > 0;
        self.pos = start;
        while self.pos < self.bytes.len() && self.line_break().is_none() {
            let byte = self.bytes[self.pos];
            let next = self.bytes.get(self.pos + 1).copied();
            let ends_value =
                |n: Option<u8>| in_flow && matches!(n, Some(b',' | b'[' | b']' | b'{' | b'}'));
            if byte == b':' && (self.blank_or_end_at(self.pos + 1) || ends_value(next)) {
                if !in_flow {
                    let end = self.pos;
                    self.pos = start;
                    self.open_block(Block::Mapping)?;
                    self.pos = end;
                }
                return Ok(());
            }
            if byte == b'#' && self.after_blank() {
                return Ok(());
            }
            if in_flow && matches!(byte, b',' | b'[' | b']' | b'{' | b'}') {
                return Ok(());
            }
            self.pos += 1;
        }
        self.plain_open = true;
        Ok(())
    }
}

/// Walk the document with its aliases expanded, counting nodes, and refuse it once they pass
/// what the text could hold plus [`MAX_ALIAS_NODES`]. A text the parser refuses is left to the
/// caller's parse, which reports it in its own words.
fn check_alias_expansion(text: &str) -> Result<(), OverBudget> {
    let counter = NodeCounter {
        count: Cell::new(0),
        limit: text.len() + MAX_ALIAS_NODES,
        exceeded: Cell::new(false),
    };
    let result: Result<(), serde_norway::Error> = serde::de::DeserializeSeed::deserialize(
        &counter,
        serde_norway::Deserializer::from_str(text),
    );
    match result {
        Err(e) if counter.exceeded.get() => {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            Err(OverBudget {
                line,
                column,
                message: format!(
                    "aliases expand to more than {} nodes beyond the file's own",
                    MAX_ALIAS_NODES
                ),
            })
        }
        _ => Ok(()),
    }
}

struct NodeCounter {
    count: Cell<usize>,
    limit: usize,
    exceeded: Cell<bool>,
}

impl NodeCounter {
    fn bump<E: serde::de::Error>(&self) -> Result<(), E> {
        self.count.set(self.count.get() + 1);
        if self.count.get() > self.limit {
            self.exceeded.set(true);
            return Err(E::custom("alias expansion over budget"));
        }
        Ok(())
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &NodeCounter {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &NodeCounter {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.bump()
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.bump()
    }
    fn visit_i128<E: serde::de::Error>(self, _: i128) -> Result<(), E> {
        self.bump()
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.bump()
    }
    fn visit_u128<E: serde::de::Error>(self, _: u128) -> Result<(), E> {
        self.bump()
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.bump()
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.bump()
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.bump()
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.bump()
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.bump()?;
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.bump()?;
        while map.next_key_seed(self)?.is_some() {
            map.next_value_seed(self)?;
        }
        Ok(())
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // A tagged node (`!tag value`): its value counts.
        use serde::de::VariantAccess;
        let ((), variant) = data.variant_seed(self)?;
        variant.newtype_variant_seed(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(max_depth: usize) -> YamlBudget {
        YamlBudget {
            max_depth,
            ..YamlBudget::DEFAULT
        }
    }

    fn refusal(text: &str, budget: YamlBudget) -> OverBudget {
        check(text, &budget).expect_err("over budget")
    }

    #[test]
    fn deep_flow_nesting_is_refused_where_it_passes_the_limit() {
        let text = format!(
            "rules:\n  x: {}{}\n",
            "[".repeat(40_000),
            "]".repeat(40_000)
        );
        let err = refusal(&text, YamlBudget::DEFAULT);
        // Two block mappings, then the 63rd `[` is the 65th level.
        assert_eq!((err.line, err.column), (2, 6 + 62));
        assert!(err.message.contains("deeper than the limit of 64"), "{err}");
        let err = refusal(
            &format!("{}1{}", "{a: ".repeat(100), "}".repeat(100)),
            depth(3),
        );
        assert_eq!((err.line, err.column), (1, 13));
    }

    #[test]
    fn deep_block_nesting_is_refused_compact_or_indented() {
        let err = refusal(&format!("{}x\n", "- ".repeat(40_000)), depth(10));
        assert_eq!((err.line, err.column), (1, 21));
        let indented: String = (0..20)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let err = refusal(&indented, depth(10));
        assert_eq!((err.line, err.column), (11, 11));
        assert!(check(&indented, &depth(20)).is_ok());
        let mixed = "a:\n- b:\n  - c:\n    - d: 1\n";
        assert_eq!(refusal(mixed, depth(6)).line, 4);
        assert!(check(mixed, &depth(7)).is_ok());
    }

    #[test]
    fn siblings_and_dedents_do_not_add_depth() {
        let mut text = String::new();
        for i in 0..5_000 {
            text += &format!("k{i}:\n  - a: [1, {{b: 2}}]\n    c: d\n  - e\nz{i}: 1\n");
        }
        // k (1), the sequence (2), a (3), [ (4), { (5).
        check(&text, &depth(5)).unwrap();
        assert_eq!(refusal(&text, depth(4)).line, 2);
        // A sequence at the column of its key ends with the next key.
        check(&"a:\n- 1\nb:\n- 2\n".repeat(1_000), &depth(2)).unwrap();
    }

    #[test]
    fn brackets_inside_scalars_and_comments_do_not_count() {
        let deep = "[".repeat(500);
        let texts = [
            format!("path: msg.builds{deep}\n"),
            format!("a: 'it''s {deep}'\nb: \"\\\" {deep}\"\n"),
            format!("a: x # {deep}\n# {deep}\n"),
            format!("a: |\n  {deep}\n\n  {deep}\nb: >-\n   {deep}\n"),
            format!("a: plain\n  continued {deep}\n"),
            format!("a: [x, 'quoted {deep}', \"{deep}\"]\n"),
            format!("\"multi\n{deep}\": 1\n"),
        ];
        for text in &texts {
            assert!(check(text, &depth(3)).is_ok(), "{text:.60}");
        }
    }

    #[test]
    fn what_the_parser_reads_as_structure_counts() {
        let deep = "[".repeat(100);
        for text in [
            format!("a: |\n  text\n{deep}\n"),
            format!("a: |\r  text\r{deep}\r"),
            format!("a: plain\n{deep}\n"),
            format!("a: [b\n'c {deep}\n"),
            format!("a: x#{deep}\n  b: {deep}"),
            format!("--- |\n  x\n--- {deep}\n"),
        ] {
            let err = refusal(&text, depth(50));
            assert!(err.message.contains("deeper"), "{text:.40}: {err}");
        }
    }

    #[test]
    fn size_is_refused_at_the_line_where_the_limit_falls() {
        let budget = YamlBudget {
            max_bytes: 25,
            ..YamlBudget::DEFAULT
        };
        let err = refusal("a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\n", budget);
        assert_eq!((err.line, err.column), (6, 1));
        assert_eq!(err.message, "the file is 30 bytes, over the limit of 25");
        assert_eq!(
            err.to_string(),
            "the file is 30 bytes, over the limit of 25 at line 6 column 1"
        );
    }

    #[test]
    fn alias_bombs_are_refused_and_honest_aliases_pass() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 0..9 {
            let previous = if level == 0 {
                "a".to_string()
            } else {
                format!("b{}", level - 1)
            };
            let refs = vec![format!("*{previous}"); 10].join(", ");
            bomb += &format!("b{level}: &b{level} [{refs}]\n");
        }
        let err = refusal(&bomb, YamlBudget::DEFAULT);
        assert!(
            err.message.contains("aliases expand to more than 100000"),
            "{err}"
        );
        assert!(err.line >= 1, "{err}");

        let honest = "defaults: &d {arches: [x86_64, aarch64], priority: 3}\n\
                      jobs:\n  - *d\n  - *d\n  - {name: x, with: *d}\n";
        check(honest, &YamlBudget::DEFAULT).unwrap();
        // A text the parser refuses is left to the parser.
        check("a: *missing\n", &YamlBudget::DEFAULT).unwrap();
    }

    #[test]
    fn large_honest_files_pass() {
        let mut text = String::from("results:\n");
        for i in 0..5_000 {
            text += &format!(
                "  - item: pkg-{i}-1.fc40\n    type: koji_build\n    outcome: PASSED\n    \
                 note: \"see [log] {{x}}\"\n    data: {{errors: [{i}, 2], tags: [a, b]}}\n"
            );
        }
        assert!(text.len() > 300_000);
        check(&text, &YamlBudget::DEFAULT).unwrap();
    }
}
