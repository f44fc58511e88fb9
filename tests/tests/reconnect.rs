//! A service reconnects within about a second of the broker's return, however long the broker
//! was away: a private broker node (so the shared one is left alone) is killed for 60 s, longer
//! than the longest back-off pause (`amqp.reconnect_max_secs`, 30 s), and started again.
//!
//! The time from the node accepting connections to the service consuming again is printed, and
//! recorded in docs/benchmarks.md; the test asserts the recovery itself (consuming again, and
//! handling a job sent after it), not the time, which a loaded machine may stretch.

use std::time::{Duration, Instant};

use taskbot::messages::{Message, TaskRef};
use taskbot::ops::sample;
use taskbot::testing::{http_get, TestBroker};
use taskbot_tests::{free_port, to_toml, Deployment, PrivateBroker};

const OUTAGE: Duration = Duration::from_secs(60);

/// Poll `/readyz` every 20 ms until it answers 200; the moment it did.
async fn ready_at(address: std::net::SocketAddr, timeout: Duration, d: &Deployment) -> Instant {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = http_get(address, "/readyz").await {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "not ready within {timeout:?}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reconnects_within_a_second_of_a_long_outage_ending() {
    let mut broker = PrivateBroker::start();
    let mut d = Deployment::new("rules: []\n", &[], free_port()).await;
    // The private node has only `guest`: the administrator's config, without the deployment's
    // per-service users, pointed at it, with the default longest pause (without the probe, the
    // attempt after a 60 s outage could come up to 30 s after the broker's return).
    let mut config = d.admin.clone();
    config.amqp.url = broker.url();
    config.amqp.reconnect_max_secs = 30;
    std::fs::write(&d.config_file, to_toml(&config)).unwrap();
    let index = d.start("provisioner", "provisioner", &[]);
    let address = d.services[index].ops_address(Duration::from_secs(30));
    ready_at(address, Duration::from_secs(60), &d).await;

    broker.kill();
    let outage_began = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok((200, _)) = http_get(address, "/readyz").await {
        assert!(
            Instant::now() < deadline,
            "still ready with the broker dead"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(OUTAGE.saturating_sub(outage_began.elapsed())).await;

    let accepting = broker.resume();
    let ready = ready_at(address, Duration::from_secs(60), &d).await;
    let reconnect = ready.duration_since(accepting);
    println!(
        "reconnected {reconnect:?} after the broker accepted connections again (outage {OUTAGE:?})"
    );

    // Consuming for real: a job request sent now is handled (acked) by the provisioner.
    let client = TestBroker::new(&config).await;
    let queue = client.topology.provisioner_queue();
    assert_eq!(client.consumers(&queue).await, 1, "{}", d.logs());
    let task = TaskRef {
        name: "example".into(),
        repo: "file:///srv/example".into(),
        git_ref: "main".into(),
    };
    let job = taskbot::testing::job_request(task, "after-the-outage", "x86_64");
    let jobs = client.topology.jobs_exchange();
    client.publish(&jobs, "x86_64", job.to_json()).await;
    let acked = format!("taskbot_messages_acked_total{{queue=\"{queue}\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http_get(address, "/metrics").await.expect("/metrics");
        if sample(&metrics, &acked) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job not handled after the outage:\n{metrics}\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.shutdown().await;
}
