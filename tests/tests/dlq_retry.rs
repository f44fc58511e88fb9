//! `taskbot dlq retry` on a deployment with a broker user per service (the command line logs in
//! as its own, `[amqp.users.cli]`): a message the rules service refused goes back to the rules
//! queue under its first routing key, is refused again by the real service, and is back in the
//! dead-letter queue once, its first route still known.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use taskbot_tests::{binary, free_port, Deployment};

fn taskbot(d: &Deployment, args: &[&str]) -> Output {
    let mut command = Command::new(binary("taskbot"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("TASKBOT_") {
            command.env_remove(key);
        }
    }
    let out = command
        .env("TASKBOT_CONFIG", &d.config_file)
        .output()
        .expect("run taskbot");
    assert!(
        out.status.success(),
        "taskbot {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_refused_again_is_moved_once_by_the_operators_user() {
    let mut d = Deployment::new("rules: []\n", &[], free_port()).await;
    let rules = d.start("rules", "rules", &[]);
    let t = d.broker.topology.clone();
    let (queue, dead) = (t.rules_queue(), t.dead_letter_queue(&t.rules_queue()));
    d.wait_for_consumers(std::slice::from_ref(&queue), Duration::from_secs(60))
        .await;
    d.broker
        .publish(
            &t.events_exchange(),
            "org.example.bad",
            b"not json".to_vec(),
        )
        .await;
    let wait_dead = |want: u32| {
        let (d, dead) = (&d, dead.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while d.broker.depth(&dead).await != want {
                assert!(Instant::now() < deadline, "{}", d.logs());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_dead(1).await;

    let shown = text(&taskbot(&d, &["dlq", "show", "--queue", "rules"]));
    assert!(shown.contains("routing key: org.example.bad"), "{shown}");
    let events = format!("exchange: {}", t.events_exchange());
    assert!(shown.contains(&events), "{shown}");

    let retried = text(&taskbot(&d, &["dlq", "retry", "--queue", "rules"]));
    assert!(retried.contains(": 1 re-queued"), "{retried}");
    assert!(retried.contains("1 dead letters re-queued"), "{retried}");
    // The rules service refuses it again: back once, and not moved a second time.
    let refusals = || {
        d.services[rules]
            .log_text()
            .matches("dead-lettering message")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while refusals() < 2 {
        assert!(Instant::now() < deadline, "{}", d.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_dead(1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refusals(), 2, "{}", d.logs());
    assert_eq!(d.broker.depth(&queue).await, 0);
    let log = d.services[rules].log_text();
    assert_eq!(
        log.matches("routing_key=org.example.bad").count(),
        2,
        "the service saw the first routing key both times:\n{log}"
    );
    let shown = text(&taskbot(&d, &["dlq", "show", "--queue", "rules"]));
    assert!(shown.contains("routing key: org.example.bad"), "{shown}");
    assert!(shown.contains(&events), "{shown}");
    d.shutdown().await;
}
