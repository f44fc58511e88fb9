//! Absolute links in answers (`href`, `next`, `prev`) and the query-string conventions shared by
//! the list endpoints (ResultsDB's: `page` from 0, `limit` default 20, comma = OR).

use axum::http::HeaderMap;
use axum::Json;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde_json::{json, Value};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::store::{ApiError, Conditions};
use crate::AppState;

/// ResultsDB's default page size.
pub const DEFAULT_LIMIT: i64 = 20;
/// Larger pages are cut to this, so one request cannot make the database return everything.
pub const MAX_LIMIT: i64 = 1000;

/// The URL this api is reached at: `api.public_url`, else `http://<Host>` from the request.
pub fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return url.clone();
    }
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ']))
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// Percent-encode a query-string component, keeping the characters ResultsDB's filters use
/// (`:` `,` `*`) readable.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'-'
            | b'_'
            | b'.'
            | b'~'
            | b':'
            | b','
            | b'*' => out.push(byte as char),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Percent-encode a path segment (a testcase name or an artifact file name).
pub fn encode_segment(text: &str) -> String {
    encode(text)
}

/// `url` with the query `pairs`.
pub fn with_query(url: &str, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        return url.to_string();
    }
    let query: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("{url}?{}", query.join("&"))
}

/// `page` and `limit` of a list request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub page: i64,
    pub limit: i64,
}

impl Paging {
    pub fn parse(query: &[(String, String)]) -> Result<Paging, ApiError> {
        let page = match last(query, "page") {
            None | Some("") => 0,
            Some(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("page: {text:?} is not an integer")))?,
        };
        let limit = match last(query, "limit") {
            None | Some("") => DEFAULT_LIMIT,
            Some(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("limit: {text:?} is not an integer")))?,
        };
        if page < 0 {
            return Err(ApiError::bad_request("page: must be 0 or more"));
        }
        if limit < 1 {
            return Err(ApiError::bad_request("limit: must be 1 or more"));
        }
        Ok(Paging {
            page,
            limit: limit.min(MAX_LIMIT),
        })
    }

    pub fn offset(&self) -> i64 {
        self.page.saturating_mul(self.limit)
    }

    /// Rows to fetch: one more than the page, to learn whether a next page exists.
    pub fn fetch(&self) -> i64 {
        self.limit + 1
    }

    /// Cut the extra row off `rows`; returns the `prev` and `next` links for `url` (the
    /// endpoint's absolute URL) and the request's `query`, with `page` replaced.
    pub fn links<T>(
        &self,
        rows: &mut Vec<T>,
        url: &str,
        query: &[(String, String)],
    ) -> (Option<String>, Option<String>) {
        let has_next = rows.len() as i64 > self.limit;
        rows.truncate(self.limit as usize);
        let link = |page: i64| {
            let mut pairs: Vec<(String, String)> = query
                .iter()
                .filter(|(k, _)| k != "page" && k != "callback" && k != "_")
                .cloned()
                .collect();
            pairs.push(("page".into(), page.to_string()));
            with_query(url, &pairs)
        };
        let prev = (self.page > 0).then(|| link(self.page - 1));
        let next = has_next.then(|| link(self.page + 1));
        (prev, next)
    }

    /// This page of a list endpoint, answered as ResultsDB does (`{prev, next, data}`).
    /// `select` makes the query up to its `LIMIT` from the conditions `c` (with this page's
    /// bounds bound as their last parameters); `url` is the endpoint's absolute URL for the
    /// links; `to_json` makes an item of a row.
    pub async fn answer(
        &self,
        state: &AppState,
        mut c: Conditions,
        select: impl FnOnce(&Conditions) -> String,
        url: &str,
        query: &[(String, String)],
        to_json: impl Fn(&Row) -> Result<Value, ApiError>,
    ) -> Result<Json<Value>, ApiError> {
        let limit = c.param(self.fetch());
        let offset = c.param(self.offset());
        let sql = format!("{} LIMIT {limit} OFFSET {offset}", select(&c));
        let client = state.store.client().await?;
        let mut rows = client.query(&sql, &c.refs()).await?;
        let (prev, next) = self.links(&mut rows, url, query);
        let data = rows.iter().map(to_json).collect::<Result<Vec<_>, _>>()?;
        Ok(Json(json!({"prev": prev, "next": next, "data": data})))
    }
}

/// The id in a request's path (`/jobs/<id>`): a UUID, else 404 with `missing` (an id that
/// cannot exist is simply not found).
pub fn path_id(text: &str, missing: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text.trim()).map_err(|_| ApiError::not_found(missing))
}

/// The row `sql` selects for `id` (its `$1`), else 404 with `missing`.
pub async fn row_by_id(
    client: &tokio_postgres::Client,
    sql: &str,
    id: &Uuid,
    missing: &str,
) -> Result<Row, ApiError> {
    client
        .query_opt(sql, &[id])
        .await?
        .ok_or_else(|| ApiError::not_found(missing))
}

/// The last value given for `key` (a repeated scalar parameter: the last one wins).
pub fn last<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every value given for `key`, comma-separated lists flattened, blanks dropped: `a,b&key=c` is
/// `[a, b, c]`. `None` when the key is absent.
pub fn list(query: &[(String, String)], key: &str) -> Option<Vec<String>> {
    let mut found = false;
    let mut values = Vec::new();
    for (k, v) in query {
        if k == key {
            found = true;
            values.extend(
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            );
        }
    }
    found.then_some(values)
}

/// One ISO 8601 time: with an offset, or without (taken as UTC, as ResultsDB does), or a date.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// A time range's start and end, either open.
pub type TimeRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// `since=START[,END]`: the range, both ends included.
pub fn parse_since(query: &[(String, String)]) -> Result<TimeRange, ApiError> {
    let Some(text) = last(query, "since").filter(|s| !s.trim().is_empty()) else {
        return Ok((None, None));
    };
    let bad = || ApiError::bad_request("'since' parameter not in ISO8601 format");
    let mut parts = text.splitn(2, ',');
    let start = parts.next().and_then(parse_time).ok_or_else(bad)?;
    let end = match parts.next() {
        None => None,
        Some(end) => Some(parse_time(end).ok_or_else(bad)?),
    };
    Ok((Some(start), end))
}

/// ResultsDB's `:like` patterns: `*` is the wildcard (SQL's `%`).
pub fn like_pattern(pattern: &str) -> String {
    pattern.replace('*', "%")
}

/// A time as ResultsDB writes it: Python's `isoformat()` of a naive UTC time (no offset;
/// microseconds only when not zero).
pub fn resultsdb_time(t: &DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query string's pairs, for tests of the endpoints' parameters.
    pub(crate) fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn lists_flatten_commas_and_repeats() {
        let query = q(&[("item", "a, b"), ("outcome", "PASSED"), ("item", "c,")]);
        assert_eq!(list(&query, "item").unwrap(), ["a", "b", "c"]);
        assert_eq!(list(&query, "arch"), None);
    }

    #[test]
    fn paging_defaults_limits_and_refuses_garbage() {
        assert_eq!(Paging::parse(&[]).unwrap(), Paging { page: 0, limit: 20 });
        assert_eq!(
            Paging::parse(&q(&[("limit", "99999")])).unwrap().limit,
            MAX_LIMIT
        );
        assert_eq!(
            Paging::parse(&q(&[("page", "x")])).unwrap_err().status,
            axum::http::StatusCode::BAD_REQUEST
        );
        assert!(Paging::parse(&q(&[("limit", "0")])).is_err());
        assert!(Paging::parse(&q(&[("page", "-1")])).is_err());
    }

    #[test]
    fn links_replace_the_page_and_know_the_ends() {
        let paging = Paging { page: 1, limit: 2 };
        let mut rows = vec![1, 2, 3];
        let query = q(&[("item", "a b"), ("page", "1"), ("limit", "2")]);
        let (prev, next) = paging.links(&mut rows, "http://h/api/v2.0/results", &query);
        assert_eq!(rows, [1, 2]);
        assert_eq!(
            prev.as_deref(),
            Some("http://h/api/v2.0/results?item=a%20b&limit=2&page=0")
        );
        assert_eq!(
            next.as_deref(),
            Some("http://h/api/v2.0/results?item=a%20b&limit=2&page=2")
        );
        let mut rows = vec![1];
        let (prev, next) = Paging { page: 0, limit: 2 }.links(&mut rows, "u", &[]);
        assert_eq!((prev, next), (None, None));
    }

    #[test]
    fn since_takes_iso_times_with_or_without_offset() {
        let (start, end) =
            parse_since(&q(&[("since", "2024-05-06T07:08:09+02:00,2024-05-07")])).unwrap();
        assert_eq!(start.unwrap().to_rfc3339(), "2024-05-06T05:08:09+00:00");
        assert_eq!(end.unwrap().to_rfc3339(), "2024-05-07T00:00:00+00:00");
        let (start, _) = parse_since(&q(&[("since", "2024-05-06T07:08:09.5")])).unwrap();
        assert_eq!(start.unwrap().timestamp_subsec_millis(), 500);
        assert!(parse_since(&q(&[("since", "yesterday")])).is_err());
    }

    #[test]
    fn times_are_written_like_resultsdb() {
        let t = parse_time("2024-05-06T07:08:09.000123Z").unwrap();
        assert_eq!(resultsdb_time(&t), "2024-05-06T07:08:09.000123");
        let t = parse_time("2024-05-06T07:08:09Z").unwrap();
        assert_eq!(resultsdb_time(&t), "2024-05-06T07:08:09");
    }
}
