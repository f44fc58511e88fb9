//! The fedora-messaging sink: republishes results as fedora-messaging messages (docs/results.md),
//! so tools written for Fedora's message bus (and its notification service) can subscribe to
//! Taskbot results. The Python package `taskbot-messages` (python/taskbot-messages) holds the
//! message class their consumers load through the `fedora.messages` entry point.
//!
//! The message goes to `reporter.fedora_messaging_exchange` (default `amq.topic`) on Taskbot's
//! broker with the topic from `reporter.fedora_messaging_topic` as routing key, with what
//! fedora-messaging's own publisher sets (`Message._build_properties` in its `message.py`):
//! `content_type` `application/json`, `content_encoding` `utf-8`, persistent, a random UUID4
//! `message_id` (the spec's MUST), the AMQP `priority` and the headers
//! `fedora_messaging_schema`, `fedora_messaging_schema_package`, `fedora_messaging_severity` (an
//! integer), `priority` (the same integer as the property), `sent-at`, and a boolean
//! `fedora_messaging_rpm_<name>` / `fedora_messaging_user_<name>` for each of the message's
//! packages and usernames ([`packages`], [`usernames`], which the Python class computes alike).
//! The body is the result itself, a plain JSON object (fedora-messaging has no envelope on AMQP).
//!
//! The result's id travels in the body and in the `taskbot_result_id` header: a result
//! redelivered to this sink (the reporter stopped after publishing but before acking) is
//! published again with a new UUID4, so consumers that must not act twice drop duplicates by
//! that header. `taskbot_namespace` says which Taskbot deployment (broker namespace) sent it.
//!
//! With `reporter.fedora_messaging_notify` other than `all`, only changes of outcome (and
//! failures) are published ([`crate::notify`]).

use chrono::{DateTime, SecondsFormat, Utc};
use taskbot::amqp::{DeliveryContext, Disposition, Handler, Incoming, Outgoing, PublishError};
use taskbot::messages::{Message, Outcome, TaskResult};
use uuid::Uuid;

use std::sync::Arc;

use crate::binding::Binding;
use crate::notify::ChangeLog;
use crate::{decode_result, store_failure};

/// fedora-messaging severities (its `message.DEBUG` ... `message.ERROR`).
pub const INFO: i64 = 20;
pub const WARNING: i64 = 30;
pub const ERROR: i64 = 40;

/// Header carrying the result's id, by which consumers drop a redelivered result's second message.
pub const RESULT_ID_HEADER: &str = "taskbot_result_id";
/// Header naming the Taskbot deployment (its broker namespace) that published the message: the
/// fedora-messaging bridge's loop guard reads it (one name for both, in shared).
pub use taskbot::fedora_messaging::NAMESPACE_HEADER;

/// Longest package or user name given a filter header: AMQP header names are at most 255 bytes,
/// and `fedora_messaging_rpm_` takes 21 of them.
pub const MAX_FILTER_NAME: usize = 200;

/// What the sink publishes where.
#[derive(Clone)]
pub struct FedoraMessagingSink {
    pub exchange: String,
    /// Topic template: `{testcase}`, `{outcome}` (lower case), `{arch}`, `{item_type}`.
    pub topic: String,
    /// The `fedora_messaging_schema` header.
    pub schema: String,
    /// The `fedora_messaging_schema_package` header.
    pub schema_package: String,
    /// The AMQP priority and `priority` header.
    pub priority: u8,
    /// The `taskbot_namespace` header: the deployment's broker namespace.
    pub namespace: String,
    /// Whether a result is its job's and from its sender ([`Binding`]).
    pub binding: Arc<Binding>,
    /// Where changes of outcome are tracked; `None` publishes every result.
    pub changes: Option<ChangeLog>,
    /// Where the artifacts are published ([`taskbot::Config::artifacts_url`]): a log a runner
    /// linked by its local path is published with its public link.
    pub artifacts_url: Option<String>,
}

/// The severity of a result's message, as fedora-messaging's levels are meant: INFO for a pass
/// ("automated tests passed for their package"), WARNING for a failure, a result to inspect or a
/// task that timed out ("one or more automated tests failed"), ERROR for a CRASHED result (the
/// task could not be run: someone should look at Taskbot).
pub fn severity(outcome: Outcome) -> i64 {
    match outcome {
        Outcome::Passed | Outcome::Info => INFO,
        Outcome::Failed | Outcome::NeedsInspection | Outcome::Aborted => WARNING,
        Outcome::Crashed => ERROR,
        // Interim outcomes are made by the ResultsDB sink from job statuses and never published
        // as results; should one come, it says nothing is wrong yet.
        Outcome::Queued | Outcome::Running => INFO,
    }
}

/// Whether `name` may be put into a filter header: non-empty, at most [`MAX_FILTER_NAME`]
/// bytes, and only the characters of RPM and Fedora account names (letters, digits, `.`, `_`,
/// `+`, `-`). Anything else comes from hostile input and gets no header. The Python class
/// applies the same rule, so both agree on the headers.
pub fn is_filter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILTER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
}

/// The RPM packages a result is about: the name of a `koji_build` item's NVR
/// (`xchat-0.5-1.fc20` -> `xchat`). Other items (an update alias, a compose) name no package.
pub fn packages(result: &TaskResult) -> Vec<String> {
    if result.item_type != "koji_build" {
        return Vec::new();
    }
    let mut parts = result.item.rsplitn(3, '-');
    let (Some(_release), Some(_version), Some(name)) = (parts.next(), parts.next(), parts.next())
    else {
        return Vec::new();
    };
    if is_filter_name(name) {
        vec![name.to_string()]
    } else {
        Vec::new()
    }
}

/// The users a result concerns: the `owner` its task reported in its data (a rule passes a
/// build's owner to the task in its `args`), when it is one valid name.
pub fn usernames(result: &TaskResult) -> Vec<String> {
    match result.data.get("owner") {
        Some(serde_json::Value::String(owner)) if is_filter_name(owner) => vec![owner.clone()],
        _ => Vec::new(),
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

    /// The message for a result, with `message_id`, sent at `now`.
    pub fn message(&self, result: &TaskResult, message_id: Uuid, now: DateTime<Utc>) -> Outgoing {
        let body = result
            .clone()
            .with_public_log(self.artifacts_url.as_deref())
            .to_json();
        let mut message = Outgoing::new(&self.exchange, self.topic(result), body)
            .with_message_id(message_id.to_string())
            .with_content_encoding("utf-8")
            .with_priority(self.priority)
            .with_header("fedora_messaging_schema", &self.schema)
            .with_header("fedora_messaging_schema_package", &self.schema_package)
            .with_header("sent-at", now.to_rfc3339_opts(SecondsFormat::Secs, false))
            .with_header(RESULT_ID_HEADER, result.result_id.to_string())
            .with_header(NAMESPACE_HEADER, &self.namespace)
            .with_int_header("fedora_messaging_severity", severity(result.outcome))
            .with_int_header("priority", i64::from(self.priority));
        for user in usernames(result) {
            message = message.with_bool_header(&format!("fedora_messaging_user_{user}"), true);
        }
        for package in packages(result) {
            message = message.with_bool_header(&format!("fedora_messaging_rpm_{package}"), true);
        }
        message
    }

    /// Publish one result (unless only changes are published and it is none), confirmed by the
    /// broker before the delivery is acked. Nobody bound to the topic is not a failure: that is
    /// the normal state of a publish-subscribe bus.
    pub async fn process(&self, incoming: &Incoming, ctx: &dyn DeliveryContext) -> Disposition {
        let result = match decode_result(&incoming.body) {
            Ok(r) => r,
            Err(reason) => return Disposition::DeadLetter(reason),
        };
        let user = incoming.user_id.as_deref();
        if let Err(refused) = self.binding.admit_result(user, &result).await {
            return refused;
        }
        if let Some(changes) = &self.changes {
            match changes.decide(&result).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(result_id = %result.result_id, outcome = %result.outcome,
                        mode = changes.mode.as_str(),
                        "result not published to fedora-messaging: its outcome did not change");
                    return Disposition::Done(Vec::new());
                }
                Err(err) => {
                    let what = format!(
                        "the fedora-messaging decision on result {}",
                        result.result_id
                    );
                    return store_failure(&what, &err);
                }
            }
        }
        let message = self.message(&result, Uuid::new_v4(), Utc::now());
        match ctx.publish(&message).await {
            Ok(()) => {
                tracing::info!(result_id = %result.result_id, topic = %message.routing_key,
                    message_id = ?message.message_id,
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
            schema_package: "taskbot_messages".into(),
            priority: 0,
            namespace: "taskbot".into(),
            binding: Arc::new(Binding::new(&taskbot::Config::default(), None)),
            changes: None,
            artifacts_url: Some("https://taskbot.example/artifacts".into()),
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

    fn header<'a>(m: &'a Outgoing, key: &str) -> Option<&'a str> {
        m.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_local_log_path_is_published_as_its_public_link() {
        let mut r = result(Outcome::Failed);
        r.log_url = Some(format!("/var/lib/taskbot/artifacts/{}/task.log", r.job_id));
        let m = sink("t").message(&r, Uuid::new_v4(), Utc::now());
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(
            body["log_url"],
            format!("https://taskbot.example/artifacts/{}/task.log", r.job_id)
        );
    }

    #[test]
    fn message_has_fedora_messaging_properties_and_headers() {
        let r = result(Outcome::Passed);
        let now = Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap()
            + chrono::Duration::microseconds(123_456);
        let id = Uuid::new_v4();
        let mut s = sink("org.fedoraproject.prod.taskbot.result.new");
        s.priority = 3;
        let m = s.message(&r, id, now);
        assert_eq!(m.exchange, "amq.topic");
        assert_eq!(m.routing_key, "org.fedoraproject.prod.taskbot.result.new");
        assert_eq!(m.message_id, Some(id.to_string()));
        assert_eq!(m.content_encoding.as_deref(), Some("utf-8"));
        assert_eq!(m.priority, Some(3));
        let strings = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            m.headers,
            strings(&[
                ("fedora_messaging_schema", "taskbot.result.v1"),
                ("fedora_messaging_schema_package", "taskbot_messages"),
                ("sent-at", "2024-05-06T07:08:09+00:00"),
                ("taskbot_result_id", &r.result_id.to_string()),
                ("taskbot_namespace", "taskbot"),
            ])
        );
        assert_eq!(
            m.int_headers,
            [
                ("fedora_messaging_severity".to_string(), INFO),
                ("priority".to_string(), 3)
            ]
        );
        assert_eq!(
            m.bool_headers,
            [("fedora_messaging_rpm_x".to_string(), true)],
            "x-1-1 is a build of x"
        );
        assert_eq!(
            TaskResult::from_json(&m.body).unwrap(),
            r,
            "the body is the result"
        );
    }

    #[tokio::test]
    async fn each_message_gets_its_own_uuid4() {
        let r = result(Outcome::Passed);
        let s = sink("t");
        let ctx = Recorder::new();
        let a = s.handle(delivery(&r), &ctx).await;
        let b = s.handle(delivery(&r), &ctx).await;
        assert_eq!(
            (a, b),
            (Disposition::Done(vec![]), Disposition::Done(vec![]))
        );
        let ids: Vec<Uuid> = ctx
            .published()
            .iter()
            .map(|m| Uuid::parse_str(m.message_id.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(ids.len(), 2);
        assert_ne!(ids[0], ids[1], "a redelivered result is a new message");
        for (id, m) in ids.iter().zip(ctx.published()) {
            assert_eq!(id.get_version_num(), 4, "{id}");
            assert_eq!(
                header(&m, RESULT_ID_HEADER),
                Some(r.result_id.to_string().as_str()),
                "the result id is what stays the same"
            );
        }
    }

    #[test]
    fn topic_template_and_severity_follow_the_result() {
        let r = result(Outcome::Crashed);
        let s = sink("org.example.taskbot.{testcase}.{outcome}.{arch}.{item_type}");
        assert_eq!(
            s.topic(&r),
            "org.example.taskbot.dist.rpmlint.crashed.x86_64.koji_build"
        );
        let m = s.message(&r, Uuid::new_v4(), Utc::now());
        assert_eq!(
            m.int_headers[0],
            ("fedora_messaging_severity".into(), ERROR)
        );
        assert_eq!(severity(Outcome::Passed), INFO);
        assert_eq!(severity(Outcome::Info), INFO);
        assert_eq!(severity(Outcome::Failed), WARNING);
        assert_eq!(severity(Outcome::NeedsInspection), WARNING);
        assert_eq!(severity(Outcome::Aborted), WARNING);
    }

    #[test]
    fn packages_are_the_names_of_koji_builds_and_usernames_the_reported_owner() {
        let mut r = result(Outcome::Passed);
        for (item, expected) in [
            ("xchat-0.5-1.fc20", vec!["xchat"]),
            ("python-requests-2.31.0-1.fc40", vec!["python-requests"]),
            ("libstdc++-compat-1-2", vec!["libstdc++-compat"]),
            ("noversion", vec![]),
            ("a-b", vec![]),
            ("-1-2", vec![]),
            ("bad name-1-2", vec![]),
            ("bad/name-1-2", vec![]),
        ] {
            r.item = item.into();
            assert_eq!(packages(&r), expected, "{item}");
        }
        r.item_type = "bodhi_update".into();
        r.item = "FEDORA-2024-abc-1-2".into();
        assert!(packages(&r).is_empty(), "an update alias names no package");
        r.item_type = "koji_build".into();
        r.item = format!("{}-1-2", "n".repeat(MAX_FILTER_NAME + 1));
        assert!(packages(&r).is_empty(), "too long for a header name");

        assert!(usernames(&r).is_empty());
        r.data
            .insert("owner".into(), serde_json::json!("churchyard"));
        assert_eq!(usernames(&r), ["churchyard"]);
        for hostile in [
            serde_json::json!("a b"),
            serde_json::json!(""),
            serde_json::json!(["x"]),
        ] {
            r.data.insert("owner".into(), hostile.clone());
            assert!(usernames(&r).is_empty(), "{hostile}");
        }
        r.item = "xchat-0.5-1.fc20".into();
        r.data.insert("owner".into(), serde_json::json!("ralph"));
        let m = sink("t").message(&r, Uuid::new_v4(), Utc::now());
        assert_eq!(
            m.bool_headers,
            [
                ("fedora_messaging_user_ralph".to_string(), true),
                ("fedora_messaging_rpm_xchat".to_string(), true)
            ]
        );
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
        assert_eq!(m.routing_key, "org.example.taskbot.dist.rpmlint.failed");
        let id = Uuid::parse_str(m.message_id.as_deref().unwrap()).unwrap();
        assert_ne!(id, r.result_id);
        let sent_at = DateTime::parse_from_rfc3339(header(m, "sent-at").unwrap())
            .unwrap()
            .with_timezone(&Utc);
        assert!(
            sent_at >= before - chrono::Duration::seconds(1) && sent_at <= Utc::now(),
            "sent at {sent_at}, handled from {before}"
        );
        assert_eq!(
            m.int_headers[0],
            ("fedora_messaging_severity".into(), WARNING)
        );
        assert_eq!(m.body, r.to_json(), "the body is the result itself");
        assert_eq!(*m, s.message(&r, id, sent_at), "nothing else differs");
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
