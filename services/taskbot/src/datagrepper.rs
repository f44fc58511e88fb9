//! Fetching a period's messages from datagrepper (Fedora's archive of its bus) for `taskbot
//! replay --datagrepper URL --since … --until …`: its `/raw` endpoint, oldest first, page by
//! page, until the last page it announces.
//!
//! A page: `{"raw_messages": [...], "count": N, "pages": P, "total": T, "arguments": {...}}`;
//! each message has `topic`, `msg` (the body), `msg_id`, `timestamp` and, for messages of the
//! fedora-messaging era, `headers`.

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Messages asked for per page (datagrepper's maximum is 100).
pub const ROWS_PER_PAGE: u32 = 100;
/// Pages fetched at most: a period that needs more is refused rather than fetched for hours
/// (split it).
pub const MAX_PAGES: u32 = 1000;

/// A time given on the command line: RFC 3339 (`2026-03-01T10:00:00Z`) or UNIX seconds.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(at.with_timezone(&Utc));
    }
    text.trim()
        .parse::<f64>()
        .ok()
        .and_then(|secs| DateTime::from_timestamp_millis((secs * 1000.0) as i64))
        .ok_or_else(|| {
            format!("{text:?} is not a time (RFC 3339, e.g. 2026-03-01T10:00:00Z, or UNIX seconds)")
        })
}

/// The URL of page `page` (from 1) of `[since, until]` on `base` (datagrepper's root, or its
/// `/raw` endpoint), only `topics` when some are given.
pub fn page_url(
    base: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    topics: &[String],
    page: u32,
) -> String {
    let base = base.trim_end_matches('/');
    let endpoint = match base.ends_with("/raw") {
        true => base.to_string(),
        false => format!("{base}/raw"),
    };
    let seconds = |t: DateTime<Utc>| format!("{:.3}", t.timestamp_millis() as f64 / 1000.0);
    let mut url = format!(
        "{endpoint}?start={}&end={}&order=asc&rows_per_page={ROWS_PER_PAGE}&page={page}",
        seconds(since),
        seconds(until)
    );
    for topic in topics {
        url.push_str("&topic=");
        url.push_str(&taskbot::text::percent_encode(topic));
    }
    url
}

/// The messages of one page and how many pages there are.
pub fn parse_page(text: &str) -> Result<(Vec<Value>, u32), String> {
    let page: Value =
        serde_json::from_str(text).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let messages = match page.get("raw_messages") {
        Some(Value::Array(m)) => m.clone(),
        _ => return Err("the answer has no raw_messages list".into()),
    };
    let pages = page.get("pages").and_then(Value::as_u64).unwrap_or(1);
    Ok((messages, u32::try_from(pages).unwrap_or(u32::MAX)))
}

/// Every message of `[since, until]`, oldest first.
pub async fn fetch(
    base: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    topics: &[String],
) -> Result<Vec<Value>, String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let mut all = Vec::new();
    let mut page = 1;
    loop {
        let url = page_url(base, since, until, topics, page);
        let answer = client
            .get(&url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("datagrepper {url}: {e}"))?;
        let text = answer
            .text()
            .await
            .map_err(|e| format!("datagrepper {url}: {e}"))?;
        let (messages, pages) = parse_page(&text).map_err(|e| format!("datagrepper {url}: {e}"))?;
        if pages > MAX_PAGES {
            return Err(format!(
                "datagrepper has {pages} pages for this period, more than {MAX_PAGES}: \
                 replay shorter periods"
            ));
        }
        all.extend(messages);
        if page >= pages {
            return Ok(all);
        }
        page += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_rfc3339_or_seconds() {
        let at = parse_time("2026-03-01T10:00:00+01:00").unwrap();
        assert_eq!(at.timestamp(), 1772355600);
        assert_eq!(
            parse_time("1772355600.5").unwrap().timestamp_millis(),
            1772355600500
        );
        assert!(parse_time("yesterday").unwrap_err().contains("not a time"));
    }

    #[test]
    fn page_urls_ask_for_the_period_oldest_first() {
        let since = parse_time("1772355600").unwrap();
        let until = parse_time("1772359200.25").unwrap();
        let topics = vec!["org.fedoraproject.prod.buildsys.build.state.change".to_string()];
        assert_eq!(
            page_url("https://apps.fedoraproject.org/datagrepper/", since, until, &topics, 2),
            "https://apps.fedoraproject.org/datagrepper/raw?start=1772355600.000&end=1772359200.250\
             &order=asc&rows_per_page=100&page=2\
             &topic=org.fedoraproject.prod.buildsys.build.state.change"
        );
        assert!(page_url("http://h/raw", since, until, &[], 1).starts_with("http://h/raw?start="));
    }

    #[test]
    fn a_page_gives_its_messages_and_the_page_count() {
        let (messages, pages) =
            parse_page(r#"{"raw_messages": [{"topic": "a"}], "pages": 3, "count": 1}"#).unwrap();
        assert_eq!((messages.len(), pages), (1, 3));
        assert!(parse_page(r#"{"pages": 3}"#).is_err());
        assert!(parse_page("<html>").is_err());
    }
}
