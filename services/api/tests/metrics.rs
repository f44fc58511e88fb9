//! The api's `/metrics`: requests counted by route pattern and status, exactly as made, in an
//! exposition the real `promtool check metrics` accepts. (A test binary of its own: the counters
//! are per process.)

mod support;

use support::{RunningApi, TestDb};

#[tokio::test]
async fn requests_are_counted_by_route_and_status() {
    let db = TestDb::create().await;
    let artifacts = tempfile::tempdir().unwrap();
    let api = RunningApi::start(&db.url, artifacts.path()).await;
    for _ in 0..3 {
        assert_eq!(api.get("/api/v1/jobs").await.0, 200);
    }
    for id in [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()] {
        assert_eq!(api.get(&format!("/api/v1/jobs/{id}")).await.0, 404);
    }
    let text = reqwest::get(format!("{}/metrics", api.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(
        value("taskbot_http_requests_total{route=\"/api/v1/jobs\",status=\"200\"}"),
        "3"
    );
    // One series for the route pattern, whatever the ids.
    assert_eq!(
        value("taskbot_http_requests_total{route=\"/api/v1/jobs/{id}\",status=\"404\"}"),
        "2"
    );
    assert_eq!(
        value("taskbot_http_request_duration_seconds_count{route=\"/api/v1/jobs\"}"),
        "3"
    );

    taskbot::testing::promtool_check(&text);
    api.stop().await;
}
