//! What a deployment's queues hold, from RabbitMQ's management HTTP API (its management
//! plugin): depths, consumers, rates and dead letters of every queue of a namespace, sorted into
//! the pipeline's stages. Read by `taskbot status` and the api's dashboard; the services never
//! use it (they talk AMQP only). `taskbot setup-users` also makes and removes the per-service
//! users through it ([`Management::put_user`]). Behind the `management` feature, as it needs an
//! HTTP client.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::text::percent_encode;
use crate::Config;

/// One queue as RabbitMQ's management API reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    pub name: String,
    /// Messages waiting to be delivered.
    pub ready: u64,
    /// Messages delivered and not yet acknowledged (being worked on).
    pub unacked: u64,
    pub consumers: u64,
    /// Messages per second published into the queue, and delivered from it (the broker's
    /// averages over its last sampling interval).
    pub publish_rate: f64,
    pub deliver_rate: f64,
}

impl QueueStats {
    /// A queue with these figures and no traffic (for tests and examples).
    pub fn named(name: &str, ready: u64, consumers: u64) -> QueueStats {
        QueueStats {
            name: name.into(),
            ready,
            consumers,
            ..QueueStats::default()
        }
    }

    fn from_api(queue: &Value) -> Option<QueueStats> {
        let number = |v: &Value| v.as_u64().unwrap_or(0);
        let rate = |key: &str| queue["message_stats"][key]["rate"].as_f64().unwrap_or(0.0);
        Some(QueueStats {
            name: queue["name"].as_str()?.to_string(),
            ready: number(&queue["messages_ready"]),
            unacked: number(&queue["messages_unacknowledged"]),
            consumers: number(&queue["consumers"]),
            publish_rate: rate("publish_details"),
            deliver_rate: rate("deliver_get_details"),
        })
    }
}

/// One stage of the pipeline: its work queue and its dead letters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// `rules`, `provisioner`, `runner x86_64`, `reporter postgres.results`, `fedmsg-bridge`.
    pub stage: String,
    pub queue: Option<QueueStats>,
    /// Messages in the stage's dead-letter queue.
    pub dead_letters: u64,
}

/// What `taskbot status` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub namespace: String,
    pub stages: Vec<Stage>,
    /// Runners consuming each arch's queue.
    pub runners: BTreeMap<String, u64>,
    /// Jobs by their latest state, from the api (absent when the api cannot be reached).
    pub jobs: Option<BTreeMap<String, u64>>,
    /// Why `jobs` is absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jobs_error: Option<String>,
}

/// Sort the namespace's queues into stages (pipeline order) and dead letters.
pub fn classify(namespace: &str, queues: &[QueueStats]) -> Status {
    let prefix = format!("{namespace}.");
    let mut dead: BTreeMap<String, u64> = BTreeMap::new();
    let mut work: Vec<(u8, String, QueueStats)> = Vec::new();
    for q in queues {
        let Some(rest) = q.name.strip_prefix(&prefix) else {
            continue;
        };
        if let Some(source) = rest.strip_suffix(".dead") {
            dead.insert(source.to_string(), q.ready + q.unacked);
            continue;
        }
        let (order, stage) = if rest == "rules" {
            (1, "rules".to_string())
        } else if rest == "provisioner" {
            (2, "provisioner".to_string())
        } else if let Some(arch) = rest.strip_prefix("run.") {
            (3, format!("runner {arch}"))
        } else if let Some(sink) = rest.strip_prefix("sink.") {
            (4, format!("reporter {sink}"))
        } else {
            continue; // not a Taskbot work queue (a test's tap, say)
        };
        work.push((order, stage, q.clone()));
    }
    work.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut stages = Vec::new();
    // The bridges have no work queue (they read the buses), only dead letters.
    for bridge in ["fedmsg-bridge", "fedora-messaging-bridge"] {
        if let Some(n) = dead.remove(bridge) {
            stages.push(Stage {
                stage: bridge.into(),
                queue: None,
                dead_letters: n,
            });
        }
    }
    let mut runners = BTreeMap::new();
    for (_, stage, queue) in work {
        let source = queue.name[prefix.len()..].to_string();
        if let Some(arch) = source.strip_prefix("run.") {
            runners.insert(arch.to_string(), queue.consumers);
        }
        stages.push(Stage {
            stage,
            dead_letters: dead.remove(&source).unwrap_or(0),
            queue: Some(queue),
        });
    }
    for (source, n) in dead {
        stages.push(Stage {
            stage: source,
            queue: None,
            dead_letters: n,
        });
    }
    Status {
        namespace: namespace.to_string(),
        stages,
        runners,
        jobs: None,
        jobs_error: None,
    }
}

/// The management API's address and credentials, from `amqp.management_url`.
pub struct Management {
    client: reqwest::Client,
    base: String,
    user: String,
    password: String,
    vhost: String,
}

impl Management {
    pub fn new(config: &Config) -> Result<Management, String> {
        let url = reqwest::Url::parse(&config.amqp.management_url).map_err(|e| {
            format!(
                "amqp.management_url {:?} is not a URL: {e}",
                config.amqp.management_url
            )
        })?;
        let user = url.username().to_string();
        let password = url.password().unwrap_or("").to_string();
        let mut base = url.clone();
        let _ = base.set_username("");
        let _ = base.set_password(None);
        // The vhost is the AMQP URL's path (`/%2f` is `/`).
        let vhost = reqwest::Url::parse(&config.amqp.url)
            .ok()
            .map(|u| u.path().trim_start_matches('/').to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "%2F".into());
        Ok(Management {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .map_err(|e| format!("cannot start the HTTP client: {e}"))?,
            base: base.as_str().trim_end_matches('/').to_string(),
            user: if user.is_empty() {
                "guest".into()
            } else {
                user
            },
            password,
            vhost,
        })
    }

    /// Make (or update) broker user `name` with `password`, its tags and its permissions on the
    /// vhost: what `taskbot setup-users` does for each service. Needs an administrator's login.
    pub async fn put_user(
        &self,
        name: &str,
        password: &str,
        permissions: &crate::topology::Permissions,
    ) -> Result<(), String> {
        let user = serde_json::json!({"password": password, "tags": permissions.tags});
        self.send(
            reqwest::Method::PUT,
            &format!("users/{}", percent_encode(name)),
            Some(user),
        )
        .await?;
        let grant = serde_json::json!({
            "configure": permissions.configure,
            "write": permissions.write,
            "read": permissions.read,
        });
        let path = format!("permissions/{}/{}", self.vhost, percent_encode(name));
        self.send(reqwest::Method::PUT, &path, Some(grant)).await?;
        let path = format!("topic-permissions/{}/{}", self.vhost, percent_encode(name));
        // Earlier topic permissions go first, so none is left that the topology no longer gives.
        match self.send(reqwest::Method::DELETE, &path, None).await {
            Err(e) if !e.contains("404") => return Err(e),
            _ => {}
        }
        for topic in &permissions.topics {
            let grant = serde_json::json!({
                "exchange": topic.exchange,
                "write": topic.write,
                "read": topic.read,
            });
            self.send(reqwest::Method::PUT, &path, Some(grant)).await?;
        }
        Ok(())
    }

    /// Remove broker user `name`; a user that does not exist is no error.
    pub async fn delete_user(&self, name: &str) -> Result<(), String> {
        let path = format!("users/{}", percent_encode(name));
        match self.send(reqwest::Method::DELETE, &path, None).await {
            Err(e) if e.contains("404") => Ok(()),
            other => other,
        }
    }

    /// The names of the broker's users.
    pub async fn user_names(&self) -> Result<Vec<String>, String> {
        let url = format!("{}/api/users?columns=name", self.base);
        let response = self
            .client
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| format!("cannot list the broker's users: {e}"))?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("cannot list the broker's users: {e}"))?;
        Ok(body
            .as_array()
            .map(|l| {
                l.iter()
                    .filter_map(|u| Some(u["name"].as_str()?.to_string()))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// One request to `/api/<path>`, failing on any status but success (the body says why).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), String> {
        let url = format!("{}/api/{path}", self.base);
        let mut request = self
            .client
            .request(method.clone(), &url)
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {}/api/{path}: {e}", self.base))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        Err(format!(
            "{method} {}/api/{path}: HTTP status {status} (user {}): {text}",
            self.base, self.user
        ))
    }

    /// The stages of `namespace`'s pipeline, from every queue of the vhost.
    pub async fn status(&self, namespace: &str) -> Result<Status, String> {
        Ok(classify(namespace, &self.queues().await?))
    }

    /// Every queue of the broker's vhost.
    pub async fn queues(&self) -> Result<Vec<QueueStats>, String> {
        let url = format!(
            "{}/api/queues/{}?columns=name,messages_ready,messages_unacknowledged,consumers,message_stats",
            self.base, self.vhost
        );
        let unreachable = |e: String| {
            format!(
                "cannot read RabbitMQ's management API at {}: {e} (is the \
                 rabbitmq_management plugin enabled? see amqp.management_url)",
                self.base
            )
        };
        let response = self
            .client
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unreachable(format!("HTTP status {}", response.status())));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(body
            .as_array()
            .map(|list| list.iter().filter_map(QueueStats::from_api).collect())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, ready: u64, consumers: u64) -> QueueStats {
        QueueStats::named(name, ready, consumers)
    }

    #[test]
    fn queues_are_sorted_into_stages_in_pipeline_order() {
        let queues = [
            q("tb.sink.postgres.results", 0, 1),
            q("tb.run.x86_64", 4, 2),
            q("tb.run.x86_64.dead", 1, 0),
            q("tb.rules", 7, 1),
            q("tb.provisioner", 0, 1),
            q("tb.fedmsg-bridge.dead", 2, 0),
            q("tb.run.aarch64", 0, 0),
            q("other.rules", 100, 1),
            q("tb.tap-123", 5, 0),
        ];
        let status = classify("tb", &queues);
        let names: Vec<&str> = status.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            names,
            [
                "fedmsg-bridge",
                "rules",
                "provisioner",
                "runner aarch64",
                "runner x86_64",
                "reporter postgres.results"
            ]
        );
        assert_eq!(status.stages[0].dead_letters, 2);
        assert_eq!(status.stages[1].queue.as_ref().unwrap().ready, 7);
        assert_eq!(status.stages[4].dead_letters, 1);
        assert_eq!(
            status.runners,
            BTreeMap::from([("aarch64".to_string(), 0), ("x86_64".to_string(), 2)])
        );
    }

    #[test]
    fn management_api_queues_are_read_with_missing_stats_as_zero() {
        let api = serde_json::json!({"name": "tb.rules", "messages_ready": 3,
            "messages_unacknowledged": 1, "consumers": 2,
            "message_stats": {"publish_details": {"rate": 1.5}}});
        let stats = QueueStats::from_api(&api).unwrap();
        assert_eq!((stats.ready, stats.unacked, stats.consumers), (3, 1, 2));
        assert_eq!((stats.publish_rate, stats.deliver_rate), (1.5, 0.0));
        assert!(QueueStats::from_api(&serde_json::json!({"messages_ready": 1})).is_none());
    }
}
