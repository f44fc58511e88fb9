//! The bridge stops promptly even when the broker is unreachable. In a file of its own: the
//! messages it drops count in the process's metrics, which `bridge.rs` checks.

use std::time::{Duration, Instant};

use taskbot::testing::test_config;
use taskbot::Shutdown;

mod common;
use common::{koji_build_completed, messages_counted, publisher, send, KOJI_TOPIC};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_even_when_the_broker_is_unreachable() {
    let (socket, endpoint) = publisher();
    let mut config = test_config();
    config.bridge.endpoints = vec![endpoint];
    // Nothing listens on port 1: every publish waits for a broker that never comes.
    config.amqp.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(taskbot_fedmsg_bridge::run(
        config,
        Shutdown::new(async {
            let _ = stopped.await;
        }),
    ));
    let sample = koji_build_completed();
    for _ in 0..20 {
        send(&socket, &[KOJI_TOPIC.as_bytes(), sample.as_bytes()]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    let _ = stop.send(());
    let result = tokio::time::timeout(Duration::from_secs(5), service)
        .await
        .expect("run() returns within 5 s")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing could be published: every message received was dropped, and counted so.
    let metrics = taskbot::ops::global().registry.render();
    let count = |outcome: &str| messages_counted(&metrics, outcome);
    assert!(count("received") >= 1.0, "{metrics}");
    assert_eq!(count("dropped"), count("received"), "{metrics}");
    assert_eq!(count("published"), 0.0, "{metrics}");
}
