//! Two runners of one arch on one host (sharing its work directory, as runners of a host do) name
//! themselves apart: `runner/<arch>@<host>/<instance>`, the instance a configured name or the
//! process id. Each job's history says which of them ran it, and its results agree.

use std::collections::BTreeSet;
use std::time::Duration;

use taskbot_tests::{free_port, workspace_root, Deployment};

const RULES: &str = r#"
tasks:
  example: { repo: example, ref: main }
rules:
  - name: example-on-build
    when:
      topic: org.fedoraproject.prod.buildsys.build.state.change
      match: { msg.new: 1 }
    do:
      - task: example
        item: "{{ msg.name }}-{{ msg.version }}-{{ msg.release }}"
        item_type: koji_build
        arches: [x86_64]
"#;

const JOBS: i64 = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_of_one_host_say_which_of_them_ran_a_job() {
    let example = workspace_root().join("tasks/example");
    let mut d = Deployment::new(RULES, &[("example", example.as_path())], free_port()).await;
    d.set_arches(&["x86_64"]);
    d.start("reporter", "reporter", &[]);
    d.start("provisioner", "provisioner", &[]);
    d.start("rules", "rules", &[]);
    d.start(
        "runner-named",
        "runner",
        &["--arch", "x86_64", "--instance", "left"],
    );
    let unnamed = d.start("runner-pid", "runner", &["--arch", "x86_64"]);
    let pid = d.services[unnamed].pid();
    let t = d.broker.topology.clone();
    let queues = [
        t.rules_queue(),
        t.provisioner_queue(),
        t.postgres_results_queue(),
        t.postgres_status_queue(),
    ];
    d.wait_for_consumers(&queues, Duration::from_secs(60)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while d.broker.consumers(&t.run_queue("x86_64")).await < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for n in 0..JOBS {
        let msg = serde_json::json!({"name": "pkg", "version": format!("1.{n}"), "release": "1.fc40", "new": 1});
        d.publish_event("org.fedoraproject.prod.buildsys.build.state.change", msg)
            .await;
    }
    let done = d
        .wait_for_count(
            "select count(*) from jobs where state = 'done'",
            JOBS,
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(done, JOBS, "{}", d.logs());

    // The host as every service names it (`service@host`).
    let host = taskbot::instance_name("x").split_off(2);
    let names = BTreeSet::from([
        format!("runner/x86_64@{host}/left"),
        format!("runner/x86_64@{host}/{pid}"),
    ]);
    let db = d.db().await;
    let rows = db
        .query(
            "select r.job_id::text, r.runner, \
               (select string_agg(distinct e.service, ',') from job_events e \
                 where e.job_id = r.job_id and e.state in ('running', 'reporting', 'done')) \
             from results r",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, JOBS, "one result per job");
    let mut seen = BTreeSet::new();
    for row in &rows {
        let (job, runner, history): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        assert!(
            names.contains(&runner),
            "job {job} ran on {runner:?}, not one of {names:?}"
        );
        assert_eq!(history, runner, "job {job}: its history names who ran it");
        seen.insert(runner);
    }
    assert_eq!(seen, names, "both runners took jobs\n{}", d.logs());
    d.shutdown().await;
}
