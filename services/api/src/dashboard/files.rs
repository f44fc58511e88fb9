//! A job's files in the dashboard, `/dashboard/jobs/<id>/files/<path>`: a directory as a list of
//! links, a text file (a log) as HTML lines each with its anchor (`#L12`, linkable and
//! highlighted when targeted), a binary file as a link to its bytes.
//!
//! The files are the task's, opened exactly as the artifacts endpoint opens them
//! ([`crate::artifacts::resolve`]: no traversal, no link followed, only regular files of one
//! link), and their text is hostile: every line is escaped, terminal escape sequences and other
//! control characters are dropped (a log may carry colour codes), a line is cut after
//! [`MAX_LINE_BYTES`], a page holds [`LINES_PER_PAGE`] lines, and no more than
//! [`MAX_SCAN_BYTES`] of a file are read to count its lines.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use uuid::Uuid;

use super::html::{self, escape, PageError};
use crate::artifacts::{self, Resolve};
use crate::links;
use crate::SharedState;

/// Lines on one page of a text file.
pub const LINES_PER_PAGE: usize = 5000;
/// A longer line is cut (the rest is in the raw file).
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// The most of a file read for one page: beyond it, lines are not counted (logs are capped at
/// `runner.max_log_bytes`, 10 MiB by default, well below).
pub const MAX_SCAN_BYTES: u64 = 64 * 1024 * 1024;
/// A file whose first this many bytes hold a NUL is binary, not shown as text.
const SNIFF_BYTES: usize = 8 * 1024;

/// One page of a text file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextPage {
    /// The number of the page's first line (from 1).
    pub first: usize,
    /// The page's lines, printable (see [`printable`]), each cut at [`MAX_LINE_BYTES`].
    pub lines: Vec<String>,
    /// Lines counted in the file (all of them unless `counted_all` is false).
    pub total: usize,
    /// Whether the whole file was read to count them (false past [`MAX_SCAN_BYTES`]).
    pub counted_all: bool,
    /// The file's size in bytes.
    pub size: u64,
}

/// What a file is, for its page.
#[derive(Debug)]
pub enum Content {
    Text(TextPage),
    Binary { size: u64 },
}

/// `line` without terminal escape sequences (CSI `ESC [ … final`, OSC `ESC ] … BEL`) and other
/// control characters (tabs are kept), invalid UTF-8 replaced.
pub fn printable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    // Until BEL or ST (ESC \).
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\t' => out.push('\t'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Read page `from` (a line number from 1) of the open `file`, or learn it is binary.
pub fn read_text(file: File, from: usize) -> std::io::Result<Content> {
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(64 * 1024, file.take(MAX_SCAN_BYTES));
    let head = reader.fill_buf()?;
    if head[..head.len().min(SNIFF_BYTES)].contains(&0) {
        return Ok(Content::Binary { size });
    }
    let from = from.max(1);
    let window = from..from + LINES_PER_PAGE;
    let mut lines = Vec::new();
    let (mut number, mut current, mut open) = (0usize, Vec::new(), false);
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            if open {
                number += 1;
                if window.contains(&number) {
                    lines.push(printable(&current));
                }
            }
            break;
        }
        let (chunk, ends_line) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..at], true),
            None => (buf, false),
        };
        if window.contains(&(number + 1)) {
            let room = MAX_LINE_BYTES.saturating_sub(current.len());
            current.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        let used = chunk.len() + usize::from(ends_line);
        reader.consume(used);
        open = !ends_line;
        if ends_line {
            number += 1;
            if window.contains(&number) {
                lines.push(printable(&current));
            }
            current.clear();
        }
    }
    Ok(Content::Text(TextPage {
        first: from,
        lines,
        total: number,
        counted_all: size <= MAX_SCAN_BYTES,
        size,
    }))
}

/// The page number's `from` for the page holding line `n`.
pub fn page_start(n: usize) -> usize {
    (n.max(1) - 1) / LINES_PER_PAGE * LINES_PER_PAGE + 1
}

/// The link to line `n` of the file at `href` (its page's `from`, then its anchor).
pub fn line_href(href: &str, n: usize) -> String {
    match page_start(n) {
        1 => format!("{href}#L{n}"),
        from => format!("{href}?from={from}#L{n}"),
    }
}

fn raw_href(job_id: &Uuid, path: &str) -> String {
    let encoded: Vec<String> = path.split('/').map(links::encode_segment).collect();
    format!("/api/v1/jobs/{job_id}/artifacts/{}", encoded.join("/"))
}

/// Where the page is: the job, then each directory of `path`, linked.
fn write_breadcrumbs(b: &mut String, job_id: &Uuid, path: &str) {
    let _ = write!(
        b,
        "<p id=\"where\"><a href=\"/dashboard/jobs/{job_id}\">job {}</a> / \
         <a href=\"{}\">files</a>",
        &job_id.to_string()[..8],
        html::file_href(job_id, "")
    );
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for i in 0..parts.len() {
        let _ = write!(
            b,
            " / <a href=\"{}\">{}</a>",
            escape(&html::file_href(job_id, &parts[..=i].join("/"))),
            escape(parts[i])
        );
    }
    let _ = write!(b, "</p>");
}

/// A directory of the job's files: each entry a link (directories to their listing, files to
/// their page, with their raw bytes beside).
pub fn render_listing(job_id: &Uuid, path: &str, entries: &[(String, bool, u64)]) -> String {
    let mut b = String::new();
    let _ = write!(b, "<h1>Files of job {job_id}</h1>");
    write_breadcrumbs(&mut b, job_id, path);
    write_entries(&mut b, job_id, path, entries);
    html::page(&format!("Taskbot job {job_id}: files"), None, &b)
}

/// The entries table (also on the job's page).
pub fn write_entries(b: &mut String, job_id: &Uuid, dir: &str, entries: &[(String, bool, u64)]) {
    if entries.is_empty() {
        let _ = write!(b, "<p id=\"no-files\">No files here.</p>");
        return;
    }
    let _ = write!(
        b,
        "<table id=\"files\"><tr><th>name</th><th>size</th><th></th></tr>"
    );
    for (name, is_dir, size) in entries {
        let path = if dir.is_empty() {
            name.clone()
        } else {
            format!("{dir}/{name}")
        };
        let href = escape(&html::file_href(job_id, &path));
        if *is_dir {
            let _ = write!(
                b,
                "<tr><td><a class=\"dir\" href=\"{href}\">{}/</a></td><td></td><td></td></tr>",
                escape(name)
            );
        } else {
            let _ = write!(
                b,
                "<tr><td><a class=\"file\" href=\"{href}\">{}</a></td><td class=\"n\">{size}</td>\
                 <td><a href=\"{}\">raw</a></td></tr>",
                escape(name),
                escape(&raw_href(job_id, &path))
            );
        }
    }
    let _ = write!(b, "</table>");
}

/// A text file's page: its lines with their numbers and anchors, and links to the other pages.
pub fn render_text(job_id: &Uuid, path: &str, text: &TextPage) -> String {
    let mut b = String::new();
    let _ = write!(b, "<h1>{}</h1>", escape(path));
    write_breadcrumbs(&mut b, job_id, path);
    let last = text.first + text.lines.len().saturating_sub(1);
    let of = if text.counted_all {
        format!("{} lines", text.total)
    } else {
        format!("more than {} lines", text.total)
    };
    let range = if text.lines.is_empty() {
        format!("No lines here: the file has {of}")
    } else {
        format!("Lines {}–{last} of {of}", text.first)
    };
    let _ = write!(
        b,
        "<p id=\"range\">{range} ({} bytes); <a id=\"raw\" href=\"{}\">raw</a></p>",
        text.size,
        escape(&raw_href(job_id, path))
    );
    let href = html::file_href(job_id, path);
    let pager = |b: &mut String| {
        let prev = (text.first > 1).then(|| {
            format!(
                "{href}?from={}",
                text.first.saturating_sub(LINES_PER_PAGE).max(1)
            )
        });
        let next = (last < text.total).then(|| format!("{href}?from={}", last + 1));
        html::pager(b, prev, next);
    };
    pager(&mut b);
    let _ = write!(b, "<pre class=\"log\" id=\"log\">");
    for (i, line) in text.lines.iter().enumerate() {
        let n = text.first + i;
        let _ = write!(
            b,
            "<span class=\"line\" id=\"L{n}\"><a class=\"ln\" href=\"#L{n}\" data-n=\"{n}\"></a>{}</span>",
            escape(line)
        );
    }
    let _ = write!(b, "</pre>");
    pager(&mut b);
    html::page(&format!("Taskbot job {job_id}: {path}"), None, &b)
}

fn render_binary(job_id: &Uuid, path: &str, size: u64) -> String {
    let mut b = String::new();
    let _ = write!(b, "<h1>{}</h1>", escape(path));
    write_breadcrumbs(&mut b, job_id, path);
    let _ = write!(
        b,
        "<p id=\"binary\">A binary file of {size} bytes: <a id=\"raw\" href=\"{}\">download it</a>.</p>",
        escape(&raw_href(job_id, path))
    );
    html::page(&format!("Taskbot job {job_id}: {path}"), None, &b)
}

/// `GET /dashboard/jobs/<id>/files`: the job's directory.
pub async fn root(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    serve(&state, &id, "", &query).await
}

/// `GET /dashboard/jobs/<id>/files/<path>` (`?from=N`: the page starting at line N).
pub async fn path(
    State(state): State<SharedState>,
    Path((id, path)): Path<(String, String)>,
    Query(query): Query<Vec<(String, String)>>,
) -> Result<Response, PageError> {
    serve(&state, &id, &path, &query).await
}

enum Found {
    Dir(Vec<(String, bool, u64)>),
    File(Content),
}

async fn serve(
    state: &crate::AppState,
    id: &str,
    path: &str,
    query: &[(String, String)],
) -> Result<Response, PageError> {
    if let Some((key, _)) = query.iter().find(|(k, _)| k != "from") {
        return Err(PageError::bad_request(format!(
            "unknown parameter {key:?}; only from=LINE"
        )));
    }
    let from = match links::last(query, "from").unwrap_or("") {
        "" => 1,
        text => text
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                PageError::bad_request(format!("from: {text:?} is not a line number"))
            })?,
    };
    let job_id = Uuid::parse_str(id).map_err(|_| PageError::not_found("Job not found"))?;
    let job_dir = state.artifacts_dir.join(job_id.to_string());
    let request = path.trim_end_matches('/').to_string();
    let found = tokio::task::spawn_blocking({
        let request = request.clone();
        move || match artifacts::resolve(&job_dir, &request) {
            Resolve::Dir(dir) => Ok(Found::Dir(artifacts::list(&dir))),
            Resolve::File(file, _) => read_text(file, from)
                .map(Found::File)
                .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            Resolve::NotFound => Err((StatusCode::NOT_FOUND, "No such file".to_string())),
            Resolve::Refused(why) => Err((StatusCode::FORBIDDEN, why)),
        }
    })
    .await
    .map_err(|_| PageError::new(StatusCode::INTERNAL_SERVER_ERROR, "reading failed"))?;
    let page = match found {
        Ok(Found::Dir(entries)) => render_listing(&job_id, &request, &entries),
        Ok(Found::File(Content::Text(text))) => render_text(&job_id, &request, &text),
        Ok(Found::File(Content::Binary { size })) => render_binary(&job_id, &request, size),
        Err((status, why)) => {
            if status == StatusCode::FORBIDDEN {
                tracing::warn!(job_id = %job_id, path = request, why, "file page refused");
            }
            return Err(PageError::new(status, why));
        }
    };
    Ok(html::html(StatusCode::OK, page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(content: &str, from: usize) -> TextPage {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.log");
        std::fs::write(&path, content).unwrap();
        match read_text(File::open(&path).unwrap(), from).unwrap() {
            Content::Text(t) => t,
            Content::Binary { .. } => panic!("binary"),
        }
    }

    #[test]
    fn terminal_codes_and_control_characters_are_dropped() {
        assert_eq!(
            printable(b"\x1b[1;31mred\x1b[0m\tok\r\x07\x1b]0;title\x07!"),
            "red\tok!"
        );
        assert_eq!(printable(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn lines_are_numbered_paged_and_cut() {
        let t = text_of("one\ntwo\nthree", 1);
        assert_eq!((t.first, t.total, t.counted_all), (1, 3, true));
        assert_eq!(t.lines, ["one", "two", "three"]);
        let many: String = (1..=LINES_PER_PAGE + 10)
            .map(|n| format!("line {n}\n"))
            .collect();
        let t = text_of(&many, LINES_PER_PAGE + 1);
        assert_eq!(t.total, LINES_PER_PAGE + 10);
        assert_eq!(t.lines.len(), 10);
        assert_eq!(t.lines[0], format!("line {}", LINES_PER_PAGE + 1));
        let long = format!("{}\nnext\n", "x".repeat(MAX_LINE_BYTES * 3));
        let t = text_of(&long, 1);
        assert_eq!(t.lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(t.lines[1], "next");
        assert_eq!(line_href("/f", 12), "/f#L12");
        assert_eq!(
            line_href("/f", LINES_PER_PAGE + 2),
            format!("/f?from={}#L{}", LINES_PER_PAGE + 1, LINES_PER_PAGE + 2)
        );
    }

    #[test]
    fn a_hostile_log_is_rendered_inert_with_anchors() {
        let t = text_of(
            "<script>alert(1)</script>\n\"><img src=x onerror=alert(2)>\n",
            1,
        );
        let page = render_text(&Uuid::from_u128(1), "task.log", &t);
        assert!(
            !page.contains("<script>") && !page.contains("<img"),
            "{page}"
        );
        assert!(page.contains(
            "<span class=\"line\" id=\"L1\"><a class=\"ln\" href=\"#L1\" data-n=\"1\"></a>\
             &lt;script&gt;alert(1)&lt;/script&gt;</span>"
        ));
        assert!(page.contains("id=\"L2\""));
        assert!(page.contains("Lines 1–2 of 2 lines"), "{page}");
    }

    #[test]
    fn a_file_with_nul_is_binary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.bin");
        std::fs::write(&path, b"ELF\0\0\x01").unwrap();
        assert!(matches!(
            read_text(File::open(&path).unwrap(), 1).unwrap(),
            Content::Binary { size: 6 }
        ));
    }
}
