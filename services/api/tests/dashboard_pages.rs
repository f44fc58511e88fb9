//! The dashboard's pages over HTTP against the real PostgreSQL, with rows written by the
//! reporter's own code and a job's files on disk: search, filters and paging, an item's page,
//! a log as lines with anchors, files as links, badges, and task output that tries to inject
//! HTML or script everywhere it can reach a page (item, testcase, note, log, file names).

mod support;

use support::{job, result, status, RunningApi, TestDb};
use taskbot::messages::{JobState, Outcome};

const HOSTILE_ITEM: &str = "x\"><img src=x onerror=alert(1)>-1.0-1.fc40";
const HOSTILE_NOTE: &str = "<script>alert('note')</script>";
const HOSTILE_TESTCASE: &str = "dist.<b>bold</b>";

/// Markup task output must never become (the escaped text may appear, the markup not).
const INJECTED: &[&str] = &[
    "<script>alert",
    "<img src=x",
    "<b>bold",
    "</pre><img",
    "onerror=alert(1)>",
];

struct Page {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn get(api: &RunningApi, path: &str) -> Page {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(format!("{}{path}", api.url))
        .send()
        .await
        .unwrap();
    Page {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

fn assert_inert(page: &Page, what: &str) {
    for markup in INJECTED {
        assert!(
            !page.body.contains(markup),
            "{what}: {markup:?} reached the page:\n{}",
            page.body
        );
    }
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{what}: {csp}");
    assert!(!csp.contains("script-src"), "{what}: {csp}");
}

/// The href of the page's first link of class `class`.
fn href_of(body: &str, class: &str) -> String {
    let marker = format!("class=\"{class}\" href=\"");
    let at = body
        .find(&marker)
        .unwrap_or_else(|| panic!("no {class} link in {body}"))
        + marker.len();
    body[at..at + body[at..].find('"').unwrap()].replace("&amp;", "&")
}

struct Fixture {
    _db: TestDb,
    api: RunningApi,
    _artifacts: tempfile::TempDir,
    hostile: taskbot::JobRequest,
    passed: taskbot::JobRequest,
}

/// A hostile job (its item, testcase, note, log and file names are markup; it FAILED) and a
/// plain one that PASSED, then 33 more to page through.
async fn fixture() -> Fixture {
    let db = TestDb::create().await;
    let hostile = job("rpmlint", HOSTILE_ITEM, "x86_64", 100);
    let passed = job("rpmlint", "xchat-0.5-1.fc40", "x86_64", 90);
    let mut failed = result(&hostile, HOSTILE_TESTCASE, Outcome::Failed, 120);
    failed.note = Some(HOSTILE_NOTE.into());
    failed.log_url = Some("javascript:alert(2)".into());
    db.insert_result(&failed).await;
    db.insert_result(&result(&passed, "dist.rpmlint", Outcome::Passed, 95))
        .await;
    for (j, at) in [(&hostile, 100), (&passed, 90)] {
        db.record_status(&status(j, JobState::Queued, at)).await;
        db.record_status(&status(j, JobState::Done, at + 5)).await;
    }
    for n in 0..33 {
        let other = job("depcheck", &format!("filler-{n}-1.fc40"), "noarch", n);
        db.record_status(&status(&other, JobState::Queued, n)).await;
    }
    let artifacts = tempfile::tempdir().unwrap();
    let dir = artifacts.path().join(hostile.job_id.to_string());
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::write(
        dir.join("task.log"),
        "== cloning\n\x1b[1;31mred\x1b[0m <script>alert('log')</script>\n</pre><img src=x onerror=alert(3)>\nlast\n",
    )
    .unwrap();
    std::fs::write(dir.join("logs/<b>bold.log"), "inner\n").unwrap();
    std::fs::write(dir.join("image.bin"), b"\x7fELF\0\0\0").unwrap();
    std::fs::write(artifacts.path().join("secret"), "host secret\n").unwrap();
    std::os::unix::fs::symlink(artifacts.path().join("secret"), dir.join("escape.log")).unwrap();
    let api = RunningApi::start(&db.url, artifacts.path()).await;
    Fixture {
        _db: db,
        api,
        _artifacts: artifacts,
        hostile,
        passed,
    }
}

#[tokio::test]
async fn root_redirects_and_search_filters_and_pages() {
    let f = fixture().await;
    let root = get(&f.api, "/").await;
    assert_eq!(root.status, 303);
    assert_eq!(root.headers["location"], "/dashboard");

    // The front page: the 30 newest jobs of 35, a link to the older ones, the operators' tables.
    let front = get(&f.api, "/dashboard").await;
    assert_eq!(front.status, 200, "{}", front.body);
    assert_eq!(front.body.matches("<tr data-job=").count(), 30);
    assert!(front.body.contains("id=\"job-states\""));
    assert!(front
        .body
        .contains("<a id=\"older\" href=\"/dashboard?page=1\">"));
    let page1 = get(&f.api, "/dashboard?page=1").await;
    assert_eq!(page1.body.matches("<tr data-job=").count(), 5);
    assert!(page1.body.contains("<a id=\"newer\" href=\"/dashboard\">"));
    assert!(!page1.body.contains("id=\"older\""));

    // Search by package prefix; filters by outcome and state; nothing for a literal wildcard.
    for (query, expected) in [
        ("q=xchat", vec![&f.passed]),
        ("q=xchat-0.5-1.fc40", vec![&f.passed]),
        ("outcome=FAILED", vec![&f.hostile]),
        ("outcome=PASSED&arch=x86_64", vec![&f.passed]),
        ("state=done&testcase=dist.rpmlint", vec![&f.passed]),
        ("q=%25", vec![]),
        ("q=_", vec![]),
        ("q=filler-1&state=done", vec![]),
    ] {
        let page = get(&f.api, &format!("/dashboard?{query}")).await;
        assert_eq!(page.status, 200, "{query}: {}", page.body);
        let expected: Vec<String> = expected
            .iter()
            .map(|j| format!("<tr data-job=\"{}\">", j.job_id))
            .collect();
        assert_eq!(
            page.body.matches("<tr data-job=").count(),
            expected.len(),
            "{query}"
        );
        for row in expected {
            assert!(page.body.contains(&row), "{query}: {}", page.body);
        }
        assert!(!page.body.contains("id=\"job-states\""), "{query}");
    }
    // Items starting with the search, with their outcome.
    let items = get(&f.api, "/dashboard?q=filler-1").await;
    assert_eq!(
        items.body.matches("<tr data-item=").count(),
        11,
        "{}",
        items.body
    );
    assert_eq!(items.body.matches("<tr data-job=").count(), 11);

    // A misspelt field or a bad value is a 400 saying so, with the form.
    let bad = get(&f.api, "/dashboard?outcomes=FAILED").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body
            .contains("unknown search field &quot;outcomes&quot;"),
        "{}",
        bad.body
    );
    let bad = get(&f.api, "/dashboard?since=yesterday").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("<form id=\"search\"")
            && bad.body.contains("since: &quot;yesterday&quot;")
    );
    f.api.stop().await;
}

#[tokio::test]
async fn hostile_task_output_stays_text_on_every_page() {
    let f = fixture().await;
    let id = f.hostile.job_id;
    let search = get(&f.api, "/dashboard?q=x%22%3E%3Cimg").await;
    assert_eq!(search.status, 200, "{}", search.body);
    assert_inert(&search, "search");
    assert!(search
        .body
        .contains("x&quot;&gt;&lt;img src=x onerror=alert(1)&gt;-1.0-1.fc40"));
    assert!(
        search.body.contains("value=\"x&quot;&gt;&lt;img\""),
        "{}",
        search.body
    );

    // The item's page, through the link the search gave.
    let item_href = href_of(&search.body, "item");
    assert_eq!(
        item_href,
        "/dashboard/items/x%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E-1.0-1.fc40"
    );
    let item = get(&f.api, &item_href).await;
    assert_eq!(item.status, 200, "{}", item.body);
    assert_inert(&item, "item page");
    assert!(item
        .body
        .contains("&lt;script&gt;alert(&#39;note&#39;)&lt;/script&gt;"));
    assert!(item.body.contains("dist.&lt;b&gt;bold&lt;/b&gt;"));
    assert!(item.body.contains("data-outcome=\"FAILED\">FAILED</span>"));

    // The job's page: the task's javascript: log URL is not a link.
    let job = get(&f.api, &format!("/dashboard/jobs/{id}")).await;
    assert_inert(&job, "job page");
    assert!(!job.body.contains("href=\"javascript:"), "{}", job.body);
    assert!(job.body.contains("javascript:alert(2)"));
    assert!(
        !job.body.contains('\u{1b}'),
        "terminal codes reached the page"
    );

    // The whole log, each line with its anchor.
    let log = get(&f.api, &format!("/dashboard/jobs/{id}/files/task.log")).await;
    assert_eq!(log.status, 200);
    assert_inert(&log, "log");
    assert!(
        log.body.contains(
            "<span class=\"line\" id=\"L2\"><a class=\"ln\" href=\"#L2\" data-n=\"2\"></a>\
         red &lt;script&gt;alert(&#39;log&#39;)&lt;/script&gt;</span>"
        ),
        "{}",
        log.body
    );
    assert!(log.body.contains("id=\"L4\"") && !log.body.contains("id=\"L5\""));
    assert!(!log.body.contains('\u{1b}'));

    // Files as links; the symbolic link to a host file is neither listed nor served.
    let files = get(&f.api, &format!("/dashboard/jobs/{id}/files/")).await;
    assert_inert(&files, "files");
    assert!(
        files
            .body
            .contains("<a class=\"dir\" href=\"/dashboard/jobs/"),
        "{}",
        files.body
    );
    assert!(files.body.contains("task.log</a>") && !files.body.contains("escape.log"));
    let inner = get(&f.api, &format!("/dashboard/jobs/{id}/files/logs")).await;
    assert_inert(&inner, "files/logs");
    assert!(
        inner
            .body
            .contains("files/logs/%3Cb%3Ebold.log\">&lt;b&gt;bold.log</a>"),
        "{}",
        inner.body
    );
    let binary = get(&f.api, &format!("/dashboard/jobs/{id}/files/image.bin")).await;
    assert!(
        binary.body.contains("A binary file of 7 bytes"),
        "{}",
        binary.body
    );
    for (path, status) in [
        ("escape.log", 403),
        ("..%2Fsecret", 403),
        ("nothing.log", 404),
    ] {
        let page = get(&f.api, &format!("/dashboard/jobs/{id}/files/{path}")).await;
        assert_eq!(page.status, status, "{path}: {}", page.body);
        assert!(!page.body.contains("host secret"), "{path}");
        assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    }
    f.api.stop().await;
}

#[tokio::test]
async fn badges_show_the_outcome_in_text_and_colour() {
    let f = fixture().await;
    let badge = get(&f.api, "/badge/items/xchat-0.5-1.fc40.svg").await;
    assert_eq!(badge.status, 200);
    assert_eq!(
        badge.headers["content-type"],
        "image/svg+xml; charset=utf-8"
    );
    assert!(badge.body.contains(">PASSED</text>") && badge.body.contains("#2da44e"));

    let encoded = "x%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E-1.0-1.fc40.svg";
    let badge = get(&f.api, &format!("/badge/items/{encoded}")).await;
    assert_eq!(badge.status, 200, "{}", badge.body);
    assert!(
        badge.body.contains(">FAILED</text>") && badge.body.contains("#cf222e"),
        "{}",
        badge.body
    );
    assert_inert(&badge, "item badge");

    let badge = get(&f.api, "/badge/testcases/dist.%3Cb%3Ebold%3C%2Fb%3E.svg").await;
    assert_eq!(badge.status, 200, "{}", badge.body);
    assert_inert(&badge, "testcase badge");
    assert!(badge.body.contains("dist.&lt;b&gt;bold&lt;/b&gt;"));
    assert!(badge.body.contains(">FAILED</text>"));

    let badge = get(&f.api, "/badge/items/filler-1-1.fc40.svg").await;
    assert!(badge.body.contains(">1 pending</text>"), "{}", badge.body);
    let badge = get(&f.api, "/badge/testcases/dist.rpmlint.svg?item=nothing").await;
    assert!(badge.body.contains(">no results</text>"), "{}", badge.body);
    assert_eq!(
        get(&f.api, "/badge/items/xchat-0.5-1.fc40.png")
            .await
            .status,
        404
    );
    assert_eq!(
        get(&f.api, "/badge/items/xchat-0.5-1.fc40.svg?bogus=1")
            .await
            .status,
        400
    );
    assert_eq!(
        get(&f.api, "/dashboard/items/nothing-1-1").await.status,
        404
    );
    f.api.stop().await;
}
