//! Forged results against the real broker and database: a result published by a broker user
//! that is not the deployment's runner is dead-lettered with the reason and stored nowhere, and
//! the broker itself refuses a publisher that claims another user's name. The deployment here is
//! local development's (every service is `guest`); the intruder is a RabbitMQ user of its own.

mod support;

use std::time::Duration;

use taskbot::amqp::{Outgoing, REASON_HEADER};
use taskbot::messages::{Message, Outcome};
use taskbot::testing::{test_config, TestBroker, TestBrokerUser};
use uuid::Uuid;

use support::{
    job, publish_dispatched, result, wait_dispatched, wait_until, RunningReporter, TestDb,
};

async fn stored(client: &tokio_postgres::Client, id: Uuid) -> bool {
    client
        .query_opt("SELECT 1 FROM results WHERE result_id = $1", &[&id])
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn a_result_from_another_broker_user_is_dead_lettered_and_not_stored() {
    let test_db = TestDb::create().await;
    let mut config = test_config();
    config.postgres.url = test_db.url.clone();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let intruder = TestBrokerUser::create(&t.namespace);
    let reporter = RunningReporter::start_ready(&config, &test_db).await;
    let client = test_db.client().await;

    let job = job("glibc-9.99-1.fc99");
    publish_dispatched(&broker, &job).await;
    wait_dispatched(&test_db, &job).await;
    let forged = result(&job, "dist.rpmlint", Outcome::Passed);
    let (conn, publisher) = intruder.publisher().await;
    let message = Outgoing::new(t.results_exchange(), forged.routing_key(), forged.to_json());
    publisher
        .publish(&message)
        .await
        .expect("the broker takes it");

    let dlq = t.dead_letter_queue(&t.postgres_results_queue());
    let dead = broker
        .get(&dlq, Duration::from_secs(15))
        .await
        .expect("the forged result dead-lettered");
    let reason = dead.header(REASON_HEADER).unwrap_or_default().to_string();
    assert!(
        reason.contains(&format!(
            "published by broker user {:?}, which may not send it",
            intruder.name
        )) && reason.contains("the runner's \"guest\""),
        "{reason}"
    );
    // The same result from the runner's user is stored: only the sender made the difference.
    broker
        .publish(
            &t.results_exchange(),
            &forged.routing_key(),
            forged.to_json(),
        )
        .await;
    wait_until(
        "the runner's result stored",
        Duration::from_secs(15),
        || async { stored(&client, forged.result_id).await },
    )
    .await;
    reporter.stop().await;
    let copies: i64 = client
        .query_one(
            "SELECT count(*) FROM results WHERE job_id = $1",
            &[&job.job_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(copies, 1);
    let _ = conn.close(200, "done").await;
    broker.cleanup().await;
}

#[tokio::test]
async fn the_broker_refuses_a_publisher_that_claims_another_users_name() {
    let config = test_config();
    let broker = TestBroker::new(&config).await;
    let t = broker.topology.clone();
    let intruder = TestBrokerUser::create(&t.namespace);
    let (conn, _) = intruder.publisher().await;
    let posing = taskbot::amqp::Publisher::new(&conn, "taskbot-test-intruder")
        .await
        .unwrap()
        .with_user_id("guest");
    let job = job("glibc-9.99-1.fc99");
    let forged = result(&job, "dist.rpmlint", Outcome::Passed);
    let tap = broker.tap(&t.results_exchange(), "#").await;
    let message = Outgoing::new(t.results_exchange(), forged.routing_key(), forged.to_json());
    let err = posing.publish(&message).await.expect_err("refused");
    assert!(err.to_string().contains("user_id"), "{err}");
    assert_eq!(broker.depth(&tap).await, 0, "nothing was routed");
    let _ = conn.close(200, "done").await;
    broker.cleanup().await;
}
