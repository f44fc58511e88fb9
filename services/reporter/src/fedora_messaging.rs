//! The fedora-messaging sink: republishes each result as a fedora-messaging style message
//! (docs/results.md), so tools written for Fedora's message bus can subscribe to Taskbot results.
//!
//! The message goes to `reporter.fedora_messaging_exchange` (default `amq.topic`) on Taskbot's
//! broker with the topic from `reporter.fedora_messaging_topic` as routing key. Its properties
//! and headers are those fedora-messaging's consumers read: `content_type` `application/json`,
//! `content_encoding` `utf-8`, persistent, a `message_id`, and the headers
//! `fedora_messaging_schema`, `fedora_messaging_severity` (an integer) and `sent-at`. The body is
//! the result itself, a plain JSON object (fedora-messaging has no envelope on AMQP).
//!
//! The `message_id` is the result's id (a UUID, derived from the job and testcase) rather than a
//! random UUID4: a result republished after a redelivery then carries the same id, so
//! subscribers can drop the duplicate.

use chrono::{DateTime, SecondsFormat, Utc};
use taskbot::amqp::{DeliveryContext, Disposition, Handler, Incoming, Outgoing, PublishError};
use taskbot::fedora_messaging::NAMESPACE_HEADER;
use taskbot::messages::{Message, Outcome, TaskResult};

use std::sync::Arc;

use crate::binding::Binding;
use crate::decode_result;

/// fedora-messaging severities.
pub const INFO: i64 = 20;
pub const ERROR: i64 = 40;

/// What the sink publishes where.
#[derive(Debug, Clone)]
pub struct FedoraMessagingSink {
    pub exchange: String,
    /// Topic template: `{testcase}`, `{outcome}` (lower case), `{arch}`, `{item_type}`.
    pub topic: String,
    /// The `fedora_messaging_schema` header.
    pub schema: String,
    /// Whether a result is its job's and from its sender ([`Binding`]).
    pub binding: Arc<Binding>,
    /// The deployment's AMQP namespace, sent as the [`NAMESPACE_HEADER`] header: a
    /// fedora-messaging bridge of the same deployment that sees the message on the bus drops it
    /// instead of taking Taskbot's own result back in as an event.
    pub namespace: String,
}

/// The severity of a result's message: ERROR for a CRASHED result (the task could not be run:
/// someone should look at Taskbot), INFO for every outcome of a task that ran.
pub fn severity(outcome: Outcome) -> i64 {
    match outcome {
        Outcome::Crashed => ERROR,
        _ => INFO,
    }
}

impl FedoraMessagingSink {
    /// The topic of a result's message.
    pub fn topic(&self, result: &TaskResult) -> String {
        self.topic
            .replace("{testcase}", &result.testcase)
            .replace("{outcome}", &result.outcome.as_str().to_lowercase())
            .replace("{arch}", &result.arch)
            .replace("{item_type}", &result.item_type)
    }

    /// The message for a result, sent at `now`.
    pub fn message(&self, result: &TaskResult, now: DateTime<Utc>) -> Outgoing {
        Outgoing::new(&self.exchange, self.topic(result), result.to_json())
            .with_message_id(result.result_id.to_string())
            .with_content_encoding("utf-8")
            .with_header("fedora_messaging_schema", &self.schema)
            .with_int_header("fedora_messaging_severity", severity(result.outcome))
            .with_header("sent-at", now.to_rfc3339_opts(SecondsFormat::Secs, false))
            .with_header(NAMESPACE_HEADER, &self.namespace)
    }

    /// Publish one result, confirmed by the broker before the delivery is acked. Nobody bound
    /// to the topic is not a failure: that is the normal state of a publish-subscribe bus.
    pub async fn process(&self, incoming: &Incoming, ctx: &dyn DeliveryContext) -> Disposition {
        let result = match decode_result(&incoming.body) {
            Ok(r) => r,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        let user = incoming.user_id.as_deref();
        if let Err(refused) = self.binding.admit_result(user, &result).await {
            return refused;
        }
        let message = self.message(&result, Utc::now());
        match ctx.publish(&message).await {
            Ok(()) => {
                tracing::info!(result_id = %result.result_id, topic = %message.routing_key,
                    "result published as a fedora-messaging message");
                Disposition::Done(Vec::new())
            }
            Err(PublishError::Unroutable { .. }) => {
                tracing::debug!(result_id = %result.result_id, topic = %message.routing_key,
                    "no subscriber bound to the fedora-messaging topic");
                Disposition::Done(Vec::new())
            }
            Err(err) => Disposition::Retry(format!(
                "cannot publish result {} to {}: {err}",
                result.result_id, self.exchange
            )),
        }
    }
}

#[async_trait::async_trait]
impl Handler for FedoraMessagingSink {
    async fn handle(&self, incoming: Incoming, ctx: &dyn DeliveryContext) -> Disposition {
        self.process(&incoming, ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use taskbot::messages::TaskRef;
    use taskbot::testing::{job_request, Recorder};

    fn sink(topic: &str) -> FedoraMessagingSink {
        FedoraMessagingSink {
            exchange: "amq.topic".into(),
            topic: topic.into(),
            schema: "taskbot.result.v1".into(),
            binding: Arc::new(Binding::new(&taskbot::Config::default(), None)),
            namespace: "tb-test".into(),
        }
    }

    fn result(outcome: Outcome) -> TaskResult {
        let task = TaskRef {
            name: "rpmlint".into(),
            repo: "https://git.example/rpmlint.git".into(),
            git_ref: "main".into(),
        };
        let mut r = TaskResult::crashed(&job_request(task, "x-1-1", "x86_64"), "runner", "boom");
        r.testcase = "dist.rpmlint".into();
        r.outcome = outcome;
        r
    }

    #[test]
    fn message_has_fedora_messaging_properties_and_headers() {
        let r = result(Outcome::Passed);
        let now = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
            + chrono::Duration::microseconds(123_456);
        let m = sink("org.fedoraproject.prod.taskbot.result.new").message(&r, now);
        assert_eq!(m.exchange, "amq.topic");
        assert_eq!(m.routing_key, "org.fedoraproject.prod.taskbot.result.new");
        assert_eq!(m.message_id, Some(r.result_id.to_string()));
        assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(
            m.headers,
            [
                (
                    "fedora_messaging_schema".to_string(),
                    "taskbot.result.v1".to_string()
                ),
                (
                    "sent-at".to_string(),
                    "2024-05-06T07:08:09+00:00".to_string()
                ),
                ("taskbot_namespace".to_string(), "tb-test".to_string()),
            ]
        );
        assert_eq!(
            m.int_headers,
            [("fedora_messaging_severity".to_string(), INFO)]
        );
        assert_eq!(
            TaskResult::from_json(&m.body).unwrap(),
            r,
            "the body is the result"
        );
    }

    #[test]
    fn topic_template_and_severity_follow_the_result() {
        let r = result(Outcome::Crashed);
        let s = sink("org.example.taskbot.{testcase}.{outcome}.{arch}.{item_type}");
        assert_eq!(
            s.topic(&r),
            "org.example.taskbot.dist.rpmlint.crashed.x86_64.koji_build"
        );
        assert_eq!(s.message(&r, Utc::now()).int_headers[0].1, ERROR);
        assert_eq!(severity(Outcome::Failed), INFO);
    }

    /// A result's delivery, published by `guest` (every service's user in local development).
    fn delivery(r: &TaskResult) -> Incoming {
        Incoming::new(&r.routing_key(), r.to_json()).with_user_id("guest")
    }

    #[tokio::test]
    async fn a_result_from_another_broker_user_is_dead_lettered_and_not_published() {
        let r = result(Outcome::Passed);
        let ctx = Recorder::new();
        let forged = Incoming::new(&r.routing_key(), r.to_json()).with_user_id("forger");
        match sink("t").handle(forged, &ctx).await {
            Disposition::DeadLetter(reason) => {
                assert!(reason.contains("broker user \"forger\""), "{reason}")
            }
            other => panic!("expected DeadLetter, got {other:?}"),
        }
        assert!(ctx.published().is_empty());
    }

    #[tokio::test]
    async fn each_result_is_published_as_its_fedora_messaging_message_before_the_ack() {
        let r = result(Outcome::Failed);
        let s = sink("org.example.taskbot.{testcase}.{outcome}");
        let ctx = Recorder::new();
        let before = Utc::now();
        assert_eq!(
            s.handle(delivery(&r), &ctx).await,
            Disposition::Done(Vec::new())
        );
        let published = ctx.published();
        assert_eq!(published.len(), 1, "{published:?}");
        let m = &published[0];
        assert_eq!(m.exchange, "amq.topic");
        assert_eq!(m.routing_key, "org.example.taskbot.dist.rpmlint.failed");
        assert_eq!(m.message_id, Some(r.result_id.to_string()));
        assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(m.headers.len(), 3, "{:?}", m.headers);
        assert_eq!(
            m.headers[2],
            ("taskbot_namespace".to_string(), "tb-test".to_string()),
            "the loop guard: a bridge of namespace tb-test drops this message"
        );
        assert_eq!(
            m.headers[0],
            (
                "fedora_messaging_schema".to_string(),
                "taskbot.result.v1".to_string()
            )
        );
        assert_eq!(m.headers[1].0, "sent-at");
        let sent_at = DateTime::parse_from_rfc3339(&m.headers[1].1)
            .unwrap()
            .with_timezone(&Utc);
        assert!(
            sent_at >= before - chrono::Duration::seconds(1) && sent_at <= Utc::now(),
            "sent at {sent_at}, handled from {before}"
        );
        assert_eq!(
            m.int_headers,
            [("fedora_messaging_severity".to_string(), INFO)]
        );
        assert_eq!(m.body, r.to_json(), "the body is the result itself");
        assert_eq!(*m, s.message(&r, sent_at), "nothing else differs");
    }

    #[tokio::test]
    async fn a_publish_the_broker_refuses_is_retried_and_no_subscriber_is_no_failure() {
        let r = result(Outcome::Crashed);
        let s = sink("org.example.taskbot.result");
        let ctx = Recorder::new().failing_after(0);
        match s.handle(delivery(&r), &ctx).await {
            Disposition::Retry(reason) => assert!(
                reason.starts_with(&format!(
                    "cannot publish result {} to amq.topic: ",
                    r.result_id
                )),
                "{reason}"
            ),
            other => panic!("expected Retry, got {other:?}"),
        }
        assert!(ctx.published().is_empty());

        /// A broker on which nobody is bound to the topic.
        struct NoSubscriber;
        #[async_trait::async_trait]
        impl DeliveryContext for NoSubscriber {
            async fn publish(&self, msg: &Outgoing) -> Result<(), PublishError> {
                Err(PublishError::Unroutable {
                    exchange: msg.exchange.clone(),
                    routing_key: msg.routing_key.clone(),
                })
            }
            fn received_at(&self) -> std::time::Instant {
                std::time::Instant::now()
            }
        }
        assert_eq!(
            s.handle(delivery(&r), &NoSubscriber).await,
            Disposition::Done(Vec::new())
        );
    }

    #[tokio::test]
    async fn what_is_no_result_is_dead_lettered_and_not_published() {
        let ctx = Recorder::new();
        let d = sink("t")
            .handle(Incoming::new("result.PASSED.x", b"{junk".to_vec()), &ctx)
            .await;
        match d {
            Disposition::DeadLetter(reason) => {
                assert!(reason.contains("not valid JSON"), "{reason}")
            }
            other => panic!("expected DeadLetter, got {other:?}"),
        }
        assert!(ctx.published().is_empty());
    }
}
