//! The operations endpoints of a real service binary against the real broker: `/readyz` follows
//! the broker connection, `/metrics` counts exactly the deliveries sent, and the exposition passes
//! the real `promtool check metrics` (Debian package `prometheus`, installed by
//! scripts/ensure-services.sh).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use taskbot::messages::{Message, TaskRef};
use taskbot::ops::sample;
use taskbot::testing::{http_get, promtool_check};
use taskbot_tests::{free_port, Deployment};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Poll `path` until it answers `want`; returns the last body.
async fn wait_for_status(address: SocketAddr, path: &str, want: u16, d: &Deployment) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let answer = http_get(address, path).await;
        if let Ok((status, body)) = &answer {
            if *status == want {
                return body.clone();
            }
        }
        if Instant::now() > deadline {
            panic!(
                "{path} did not answer {want} within {TIMEOUT:?} (last: {answer:?})\n{}",
                d.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(address: SocketAddr) -> String {
    let (status, body) = http_get(address, "/metrics")
        .await
        .expect("scrape /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// One sample's value, 0 when absent (a series not yet created).
fn value(exposition: &str, series: &str) -> f64 {
    sample(exposition, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioner_metrics_count_exactly_what_it_was_sent() {
    let mut d = Deployment::new("rules: []\n", &[], free_port()).await;
    let index = d.start("provisioner", "provisioner", &[]);
    let address = d.services[index].ops_address(TIMEOUT);

    let (status, body) = http_get(address, "/healthz").await.expect("/healthz");
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    wait_for_status(address, "/readyz", 200, &d).await;

    let t = d.broker.topology.clone();
    let queue = t.provisioner_queue();
    let q = |name: &str| format!("{name}{{queue=\"{queue}\"}}");
    let ex =
        |exchange: &str| format!("taskbot_messages_published_total{{exchange=\"{exchange}\"}}");
    let before = metrics(address).await;
    assert_eq!(
        sample(&before, &q("taskbot_messages_consumed_total")),
        Some(0.0),
        "the queue's series exist from the start"
    );

    let task = TaskRef {
        name: "example".into(),
        repo: "file:///srv/example".into(),
        git_ref: "main".into(),
    };
    let job = taskbot::testing::job_request(task, "foo-1-1", "x86_64");
    d.broker
        .publish(&t.jobs_exchange(), "x86_64", job.to_json())
        .await;
    d.broker
        .publish(&t.jobs_exchange(), "x86_64", b"{not json".to_vec())
        .await;

    // Both handled: consumed and acked (the dead-lettered one is acked after its copy).
    let deadline = Instant::now() + TIMEOUT;
    let after = loop {
        let now = metrics(address).await;
        let consumed = value(&now, &q("taskbot_messages_consumed_total"));
        let acked = value(&now, &q("taskbot_messages_acked_total"));
        if consumed >= 2.0 && acked >= 2.0 {
            break now;
        }
        assert!(Instant::now() < deadline, "not handled in time:\n{now}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delta = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(delta(&q("taskbot_messages_consumed_total")), 2.0);
    assert_eq!(delta(&q("taskbot_messages_acked_total")), 2.0);
    assert_eq!(delta(&q("taskbot_messages_dead_lettered_total")), 1.0);
    assert_eq!(delta(&q("taskbot_messages_rejected_total")), 0.0);
    assert_eq!(delta(&q("taskbot_message_processing_seconds_count")), 2.0);
    assert_eq!(value(&after, &q("taskbot_messages_in_flight")), 0.0);
    // The good job: its provisioned copy on the run exchange and two statuses; the bad one: its
    // dead letter.
    assert_eq!(delta(&ex(&t.run_exchange())), 1.0);
    assert_eq!(delta(&ex(&t.results_exchange())), 2.0);
    assert_eq!(delta(&ex(&t.dead_letter_exchange())), 1.0);
    assert_eq!(
        value(&after, &format!("taskbot_ready{{part=\"{queue}\"}}")),
        1.0
    );
    // The metrics agree with the broker: the dead letter and the provisioned job are there.
    let dead = d
        .broker
        .get(&t.dead_letter_queue(&queue), TIMEOUT)
        .await
        .expect("the malformed message was dead-lettered");
    assert_eq!(dead.body, b"{not json");
    assert!(d
        .broker
        .get(&t.run_queue("x86_64"), TIMEOUT)
        .await
        .is_some());

    promtool_check(&after);
    d.shutdown().await;
}

/// A TCP relay to the broker that the test can cut, so a service loses its connection without
/// the shared broker being restarted.
struct Relay {
    address: SocketAddr,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(broker: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (open2, links2) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !open2.load(Ordering::SeqCst) {
                    continue; // dropped: the service sees the connection refused at once
                }
                let broker = broker.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(&broker).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                links2.lock().unwrap().push(link);
            }
        });
        Relay {
            address,
            open,
            links,
        }
    }

    /// Drop every relayed connection and refuse new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// `amqp://user:pass@host:port/vhost` → (`host:port`, the URL through `relay`).
fn through(url: &str, relay: SocketAddr) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("an AMQP URL");
    let (userinfo, hostpart) = rest.rsplit_once('@').unwrap_or(("", rest));
    let (hostport, path) = hostpart.split_once('/').unwrap_or((hostpart, ""));
    let userinfo = if userinfo.is_empty() {
        String::new()
    } else {
        format!("{userinfo}@")
    };
    (
        hostport.to_string(),
        format!("{scheme}://{userinfo}{relay}/{path}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_connection() {
    let mut d = Deployment::new("rules: []\n", &[], free_port()).await;
    let (broker, _) = through(&d.config.amqp.url, "127.0.0.1:1".parse().unwrap());
    let relay = Relay::start(broker).await;
    let (_, url) = through(&d.config.amqp.url, relay.address);
    let index = d.start_with_env(
        "provisioner",
        "provisioner",
        &[],
        &[("TASKBOT_AMQP__URL", url.as_str())],
    );
    let address = d.services[index].ops_address(TIMEOUT);
    wait_for_status(address, "/readyz", 200, &d).await;

    relay.cut();
    let body = wait_for_status(address, "/readyz", 503, &d).await;
    assert!(
        body.contains(&d.broker.topology.provisioner_queue()),
        "{body}"
    );
    let (status, _) = http_get(address, "/healthz").await.unwrap();
    assert_eq!(status, 200, "alive while reconnecting");

    relay.restore();
    wait_for_status(address, "/readyz", 200, &d).await;
    d.shutdown().await;
}

/// The reporter's `/readyz` follows PostgreSQL: 503 naming it while the database refuses
/// connections (its connections cut, as while PostgreSQL restarts), 200 again once it is back;
/// `/healthz` stays 200 throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reporters_readyz_follows_postgresql() {
    let mut d = Deployment::new("rules: []\n", &[], free_port()).await;
    let index = d.start("reporter", "reporter", &[]);
    let address = d.services[index].ops_address(TIMEOUT);
    wait_for_status(address, "/readyz", 200, &d).await;

    let name = d.database.as_ref().expect("a test database").name.clone();
    let admin = taskbot::testing::connect_postgres(&taskbot::testing::postgres_url()).await;
    let allow = |allow: bool| {
        format!(
            "ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
    };
    admin.batch_execute(&allow(false)).await.unwrap();
    let body = wait_for_status(address, "/readyz", 503, &d).await;
    assert!(body.contains("cannot reach PostgreSQL"), "{body}");
    let (status, _) = http_get(address, "/healthz").await.unwrap();
    assert_eq!(status, 200, "alive while the database is away");

    admin.batch_execute(&allow(true)).await.unwrap();
    wait_for_status(address, "/readyz", 200, &d).await;
    d.shutdown().await;
}
