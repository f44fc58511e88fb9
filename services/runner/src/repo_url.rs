//! Repository URLs in one normal form, so that `runner.allowed_repos` means what it says.
//!
//! A prefix check on the raw text is not enough: libgit2 percent-decodes `file://` paths, so
//! `file:///srv/tasks/%2e%2e/%2e%2e/outside` passed a check for `file:///srv/tasks/` and was
//! cloned from `/outside`. So a URL is parsed and put in one form first — scheme and host in
//! lower case, the path percent-decoded once, dot segments resolved, repeated and trailing
//! slashes dropped, then re-encoded — and both the check and the clone use that form. What
//! cannot be put in one form without guessing is refused: no scheme (scp-style `host:path`,
//! bare paths), a query or fragment, an encoded `/`, `\` or NUL, a `%` left after decoding (a
//! second decoding would change the path again), a path climbing above its root.

/// A URL in normal form, or why it has none.
pub fn normalize(url: &str) -> Result<String, String> {
    let refuse = |why: &str| Err(format!("repository URL {url:?} {why}"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return refuse("has no scheme (scheme://host/path is needed)");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return refuse("has an invalid scheme");
    }
    if rest.contains(['?', '#', '\\']) || rest.chars().any(|c| c.is_control() || c == ' ') {
        return refuse("has a query, fragment, backslash, space or control character");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let Some(path) = decode(path) else {
        return refuse("has a percent-encoding that is invalid or stands for '/', '\\', '%' or a control character");
    };
    let Some(path) = resolve_dots(&path) else {
        return refuse("climbs above its root with '..'");
    };
    Ok(format!(
        "{scheme}://{}{}",
        authority_lower(authority),
        encode(&path)
    ))
}

/// Whether `url` is inside one of the `allowed` prefixes, both in normal form, up to a path
/// boundary (`file:///srv/tasks` allows `file:///srv/tasks/x`, not `file:///srv/tasks-evil`).
/// A URL or prefix that has no normal form matches nothing.
pub fn allowed(url: &str, allowed: &[String]) -> bool {
    let Ok(url) = normalize(url) else {
        return false;
    };
    allowed
        .iter()
        .filter(|prefix| !prefix.is_empty())
        .filter_map(|prefix| normalize(prefix).ok())
        .any(|prefix| {
            url == prefix
                || (url.starts_with(&prefix)
                    && (prefix.ends_with('/') || url[prefix.len()..].starts_with('/')))
        })
}

/// The host in lower case; user information (case-sensitive) kept as it is.
fn authority_lower(authority: &str) -> String {
    match authority.rsplit_once('@') {
        Some((user, host)) => format!("{user}@{}", host.to_ascii_lowercase()),
        None => authority.to_ascii_lowercase(),
    }
}

/// Percent-decoded once; `None` for a malformed escape or one that decodes to a separator, a
/// `%` or a control character.
fn decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if matches!(byte, b'/' | b'\\' | b'%') || byte < 0x20 || byte == 0x7f {
                return None;
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The path with `.` and `..` segments resolved and empty segments dropped (always starting with
/// `/`, no trailing `/` but for the root); `None` if `..` would climb above the root.
fn resolve_dots(path: &str) -> Option<String> {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            other => segments.push(other),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

/// Percent-encodes what is not safe in a URL path, so the one decoding libgit2 (or the server)
/// does gives back exactly the path that was checked.
fn encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        let safe = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte);
        if safe {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(prefixes: &[&str]) -> Vec<String> {
        prefixes.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_form_for_case_dots_slashes_and_encodings() {
        for (raw, normal) in [
            ("FILE:///srv//tasks/./x/", "file:///srv/tasks/x"),
            (
                "https://Pagure.IO/taskbot/rpmlint.git",
                "https://pagure.io/taskbot/rpmlint.git",
            ),
            (
                "https://User@Pagure.io/a/b/../c",
                "https://User@pagure.io/a/c",
            ),
            ("file:///srv/tasks/%41bc", "file:///srv/tasks/Abc"),
            ("file:///srv/t%C3%A4sks", "file:///srv/t%C3%A4sks"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/"),
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn what_has_no_single_meaning_is_refused() {
        for raw in [
            "/srv/tasks/x",
            "git@pagure.io:taskbot/x.git",
            "file:///srv/tasks/%2e%2e/%2e%2e/..",
            "file:///../etc",
            "file:///srv/tasks/%2fetc",
            "file:///srv/tasks/%5c..",
            "file:///srv/tasks/%252e%252e/x",
            "file:///srv/tasks/%zz",
            "file:///srv/tasks/%00",
            "https://pagure.io/x?y=1",
            "https://pagure.io/x#frag",
            "file:///srv/tasks\\..\\x",
        ] {
            assert!(normalize(raw).is_err(), "{raw} was accepted");
        }
    }

    #[test]
    fn encoded_dot_segments_cannot_climb_out_of_a_prefix() {
        let allow = list(&["file:///srv/tasks/"]);
        // Decodes to file:///srv/tasks/../../outside/quick: resolved, it is outside.
        assert!(!allowed(
            "file:///srv/tasks/%2e%2e/%2e%2e/outside/quick",
            &allow
        ));
        assert!(!allowed("file:///srv/tasks/a/%2E%2E/../../outside", &allow));
        assert!(allowed("file:///srv/tasks/a/%2e%2e/quick", &allow));
        assert!(allowed("file:///srv/tasks/quick", &allow));
    }

    #[test]
    fn prefixes_match_at_path_boundaries_in_normal_form() {
        let allow = list(&["file:///srv/tasks", "https://pagure.io/taskbot/", ""]);
        assert!(allowed("file:///srv/tasks", &allow));
        assert!(allowed("file:///srv/tasks/example", &allow));
        assert!(allowed("HTTPS://PAGURE.IO/taskbot/x.git", &allow));
        assert!(!allowed("file:///srv/tasks-evil/x", &allow));
        assert!(!allowed("https://pagure.io.evil.example/taskbot/x", &allow));
        assert!(!allowed("https://evil@pagure.io/taskbot/x", &allow));
        assert!(!allowed("https://pagure.io/other/x", &allow));
        assert!(!allowed("file:///srv/tasks/x", &[]));
        assert!(!allowed("file:///srv/tasks/x", &list(&[""])));
    }
}
