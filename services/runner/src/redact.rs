//! Taking the secrets a job was given out of everything the runner keeps or publishes of it: the
//! job's log (as the output streams in, before its cap), the artifacts directory, results
//! (notes, data, names) and events. Each occurrence becomes `[secret:<name>]`.
//!
//! Looked for, per secret: its value (without surrounding blank space), the value as a JSON
//! string escapes it, percent-encoded, and base64-encoded (the encoding of the value's longest
//! prefix of whole 3-byte groups, which is what `base64` prints for it at the start of its
//! input, with or without a final newline). A task that transforms the value any other way, or
//! sends it over the network, is not stopped by this: redaction catches mistakes, it does not
//! contain a task that means to leak (docs/security.md).
//!
//! Streams are redacted with an overlap: the last bytes of a chunk that could be the start of a
//! secret wait for the next chunk, so a value split across two writes is still found.

use std::sync::Arc;

use crate::report::Verdict;
use crate::secrets::Delivered;

/// One form of one secret, and what replaces it.
struct Pattern {
    bytes: Vec<u8>,
    marker: Vec<u8>,
}

/// What to take out of a job's texts: nothing for a job without secrets.
pub struct Redactor {
    /// Longest first, so where two forms start at one place the longer is replaced.
    patterns: Vec<Pattern>,
    /// The bytes some pattern starts with: everywhere else the scan only copies.
    starts: Vec<bool>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} patterns)", self.patterns.len())
    }
}

impl Default for Redactor {
    /// Nothing to redact.
    fn default() -> Self {
        Redactor::new(&[])
    }
}

impl Redactor {
    /// The redactor of a job given `secrets`.
    pub fn new(secrets: &[Delivered]) -> Redactor {
        let mut patterns: Vec<Pattern> = Vec::new();
        for secret in secrets {
            let marker = format!("[secret:{}]", secret.name).into_bytes();
            for bytes in forms(secret.trimmed()) {
                if !bytes.is_empty() && !patterns.iter().any(|p| p.bytes == bytes) {
                    patterns.push(Pattern {
                        bytes,
                        marker: marker.clone(),
                    });
                }
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.bytes.len()));
        let mut starts = vec![false; 256];
        for p in &patterns {
            starts[usize::from(p.bytes[0])] = true;
        }
        Redactor { patterns, starts }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// A redactor for one stream of output.
    pub fn stream(self: &Arc<Self>) -> StreamRedactor {
        StreamRedactor {
            redactor: self.clone(),
            carry: Vec::new(),
            replaced: 0,
        }
    }

    /// `bytes` with every secret replaced.
    pub fn bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.scan(bytes, true).output
    }

    /// `text` with every secret replaced.
    pub fn text(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.bytes(text.as_bytes())).into_owned()
    }

    /// Every string of `value`, object keys included, redacted.
    pub fn json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(s) => *s = self.text(s),
            Value::Array(items) => items.iter_mut().for_each(|v| self.json(v)),
            Value::Object(map) => {
                let entries = std::mem::take(map);
                for (key, mut v) in entries {
                    self.json(&mut v);
                    map.insert(self.text(&key), v);
                }
            }
            _ => {}
        }
    }

    /// Everything of `verdict` that is published: its results (notes, data, names), events and
    /// detail.
    pub fn verdict(&self, verdict: &mut Verdict) {
        if self.is_empty() {
            return;
        }
        for r in &mut verdict.results {
            for field in [&mut r.testcase, &mut r.item, &mut r.item_type, &mut r.arch] {
                *field = self.text(field);
            }
            r.note = r.note.as_deref().map(|n| self.text(n));
            let data = std::mem::take(&mut r.data);
            for (key, mut value) in data {
                self.json(&mut value);
                r.data.insert(self.text(&key), value);
            }
        }
        for event in &mut verdict.events {
            event.topic = self.text(&event.topic);
            self.json(&mut event.msg);
        }
        verdict.detail = self.text(&verdict.detail);
    }

    /// Replace what is whole in `buf`. Unless `at_end`, stop where the rest of `buf` could be the
    /// start of a secret that more input would complete, and give that rest back undecided.
    fn scan(&self, buf: &[u8], at_end: bool) -> Scanned {
        let mut scanned = Scanned {
            output: Vec::with_capacity(buf.len()),
            undecided: Vec::new(),
            replaced: 0,
        };
        let mut i = 0;
        while i < buf.len() {
            // Copy at once the run of bytes no secret starts with (most of any output).
            let run = buf[i..]
                .iter()
                .position(|&b| self.starts[usize::from(b)])
                .unwrap_or(buf.len() - i);
            scanned.output.extend_from_slice(&buf[i..i + run]);
            i += run;
            if i == buf.len() {
                break;
            }
            let rest = &buf[i..];
            let may_grow = |p: &Pattern| p.bytes.len() > rest.len() && p.bytes.starts_with(rest);
            if !at_end && self.patterns.iter().any(may_grow) {
                scanned.undecided = rest.to_vec();
                break;
            }
            match self.patterns.iter().find(|p| rest.starts_with(&p.bytes)) {
                Some(p) => {
                    scanned.output.extend_from_slice(&p.marker);
                    scanned.replaced += 1;
                    i += p.bytes.len();
                }
                None => {
                    scanned.output.push(buf[i]);
                    i += 1;
                }
            }
        }
        scanned
    }
}

struct Scanned {
    output: Vec<u8>,
    undecided: Vec<u8>,
    replaced: usize,
}

/// Redacts one stream given in chunks; [`finish`](Self::finish) gives what was held back.
pub struct StreamRedactor {
    redactor: Arc<Redactor>,
    carry: Vec<u8>,
    /// Secrets replaced so far.
    pub replaced: usize,
}

impl StreamRedactor {
    /// What of the stream so far can be written: `chunk` after what was held back, redacted,
    /// less a tail that could still become a secret.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.redactor.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let scanned = self.redactor.scan(&buf, false);
        self.carry = scanned.undecided;
        self.replaced += scanned.replaced;
        scanned.output
    }

    /// The end of the stream: what was held back, redacted.
    pub fn finish(&mut self) -> Vec<u8> {
        let carry = std::mem::take(&mut self.carry);
        let scanned = self.redactor.scan(&carry, true);
        self.replaced += scanned.replaced;
        scanned.output
    }
}

/// The forms of `value` looked for (see the module's doc).
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    if let Ok(text) = std::str::from_utf8(value) {
        let json = serde_json::to_string(text).unwrap_or_default();
        forms.push(json.as_bytes()[1..json.len() - 1].to_vec());
    }
    forms.push(percent_encode(value));
    let whole_groups = value.len() - value.len() % 3;
    if whole_groups >= 6 {
        forms.push(base64(&value[..whole_groups]));
    }
    forms
}

fn percent_encode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in value {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Standard base64 of whole 3-byte groups (so no padding).
fn base64(groups: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(groups.len() / 3 * 4);
    for group in groups.chunks_exact(3) {
        let n = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        for shift in [18, 12, 6, 0] {
            out.push(ALPHABET[(n >> shift & 63) as usize]);
        }
    }
    out
}

/// Redact, in place, every regular file of one link under `dir` but those in `skip` (the log,
/// redacted as it was written). A file that held a secret is replaced by its redacted copy (same
/// mode and owner; never written through a link); the paths of those files, relative to `dir`,
/// are returned, with the errors met. A file of several links may be a host file: it is neither
/// read nor copied (a copy would be a file of one link, which the api serves), and the sweep at
/// the job's end removes it ([`crate::artifacts::sweep`]), as nothing serves it meanwhile.
pub fn scrub_dir(
    redactor: &Arc<Redactor>,
    dir: &std::path::Path,
    skip: &[std::path::PathBuf],
) -> Vec<Result<String, String>> {
    let mut done = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if skip.contains(&path) {
                continue;
            }
            let shown = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .display()
                .to_string();
            if meta.is_dir() {
                pending.push(path);
            } else if meta.is_file() && std::os::unix::fs::MetadataExt::nlink(&meta) == 1 {
                match scrub_file(redactor, &path, &meta) {
                    Ok(true) => done.push(Ok(shown)),
                    Ok(false) => {}
                    Err(e) => done.push(Err(format!("{shown}: {e}"))),
                }
            }
        }
    }
    done
}

/// Redact one file; `true` when it held a secret and was replaced.
fn scrub_file(
    redactor: &Arc<Redactor>,
    path: &std::path::Path,
    meta: &std::fs::Metadata,
) -> std::io::Result<bool> {
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let parent = path.parent().unwrap_or(std::path::Path::new("."));
    let mut copy = tempfile::NamedTempFile::new_in(parent)?;
    let mut stream = redactor.stream();
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        copy.write_all(&stream.push(&buf[..n]))?;
    }
    copy.write_all(&stream.finish())?;
    if stream.replaced == 0 {
        return Ok(false);
    }
    copy.as_file().set_permissions(meta.permissions())?;
    std::os::unix::fs::fchown(copy.as_file(), Some(meta.uid()), Some(meta.gid()))?;
    copy.persist(path).map_err(|e| e.error)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "s3cr3t-Token/value";

    fn redactor() -> Arc<Redactor> {
        Arc::new(Redactor::new(&[Delivered {
            name: "koji-token".into(),
            value: format!("{VALUE}\n").into_bytes(),
            env: None,
        }]))
    }

    /// `text` streamed through in chunks of `size` bytes.
    fn streamed(r: &Arc<Redactor>, text: &[u8], size: usize) -> String {
        let mut stream = r.stream();
        let mut out = Vec::new();
        for chunk in text.chunks(size) {
            out.extend(stream.push(chunk));
        }
        out.extend(stream.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_secret_split_across_chunks_is_found_at_every_split() {
        let r = redactor();
        let text = format!("token={VALUE}; again:{VALUE}{VALUE} and s3cr3t- only\n");
        let expected = "token=[secret:koji-token]; again:[secret:koji-token][secret:koji-token] and s3cr3t- only\n";
        for size in 1..=text.len() {
            assert_eq!(
                streamed(&r, text.as_bytes(), size),
                expected,
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn a_prefix_held_back_is_given_at_the_end() {
        let r = redactor();
        // The stream ends in what could have been the start of the secret.
        assert_eq!(
            streamed(&r, b"ends with s3cr3t-To", 4),
            "ends with s3cr3t-To"
        );
        assert_eq!(streamed(&r, b"", 4), "");
    }

    #[test]
    fn encoded_forms_are_found_too() {
        let r = redactor();
        let percent = "s3cr3t-Token%2Fvalue";
        let json = serde_json::to_string(&serde_json::json!({ "t": VALUE })).unwrap();
        // As `base64` prints the value followed by more (here three newlines).
        let b64 = base64(format!("{VALUE}\n\n\n").as_bytes());
        let text = format!(
            "url=?t={percent} json={json} b64={}\n",
            String::from_utf8(b64).unwrap()
        );
        let out = r.text(&text);
        assert_eq!(
            out,
            "url=?t=[secret:koji-token] json={\"t\":\"[secret:koji-token]\"} b64=[secret:koji-token]CgoK\n"
        );
        assert_eq!(base64(b"Man"), b"TWFu");
    }

    #[test]
    fn json_values_and_keys_are_redacted_and_no_secret_leaves_things_alone() {
        let r = redactor();
        let mut value = serde_json::json!({ VALUE: [1, format!("x{VALUE}y")], "n": 3 });
        r.json(&mut value);
        assert_eq!(
            value,
            serde_json::json!({ "[secret:koji-token]": [1, "x[secret:koji-token]y"], "n": 3 })
        );
        let none = Arc::new(Redactor::default());
        assert!(none.is_empty());
        assert_eq!(streamed(&none, VALUE.as_bytes(), 3), VALUE);
    }

    #[test]
    fn artifacts_holding_a_secret_are_replaced_and_others_kept() {
        let r = redactor();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/leak.txt"), format!("a {VALUE} b")).unwrap();
        std::fs::write(dir.path().join("clean.txt"), "nothing here").unwrap();
        std::fs::write(dir.path().join("task.log"), VALUE).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), VALUE).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        std::fs::hard_link(outside.path(), dir.path().join("hard")).unwrap();
        let done = scrub_dir(&r, dir.path(), &[dir.path().join("task.log")]);
        assert_eq!(done, vec![Ok("sub/leak.txt".to_string())]);
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        assert_eq!(read("sub/leak.txt"), "a [secret:koji-token] b");
        assert_eq!(read("clean.txt"), "nothing here");
        assert_eq!(read("task.log"), VALUE, "skipped");
        // A link is not followed: what it points to is not the job's.
        assert_eq!(std::fs::read_to_string(outside.path()).unwrap(), VALUE);
        // Nor is a second link to it copied.
        let hard = std::fs::symlink_metadata(dir.path().join("hard")).unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::nlink(&hard), 2);
    }
}
