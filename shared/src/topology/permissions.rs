//! What each broker user may do, derived from the topology (who owns which queue,
//! [`Topology::owned_queues`]) and the routes (who publishes what, [`Route::publishers`]), so the
//! contract has one place and a new queue or route changes the permissions with it.
//!
//! RabbitMQ grants a user three regular expressions per vhost, matched against exchange and queue
//! names ([access control](https://www.rabbitmq.com/docs/access-control)):
//!
//! - **configure**: declare and delete. A service may configure only its own queues and their
//!   dead-letter queues, never an exchange or another service's queue, so a runner cannot delete
//!   the results queues.
//! - **write**: publish to an exchange, or be the destination of a binding (a queue). A service
//!   may write to the exchanges of the routes it publishes and to its own queues (to bind them).
//! - **read**: consume from a queue, or be the source of a binding (an exchange). A service may
//!   read its own queues and the exchanges they are bound to; the command line reads the
//!   dead-letter queues (`taskbot dlq`).
//!
//! On the results exchange, which carries both job statuses and results, **topic permissions**
//! (regular expressions on the routing key) tell them apart: the rules service may publish
//! `job.…` statuses there but no `result.…`, so it cannot forge a verdict.
//!
//! Every name is escaped, so a namespace's dots match only dots.

use super::Topology;
use crate::identity::{Role, Service};
use crate::routes::Route;

/// One broker user's permissions on the deployment's vhost, as RabbitMQ takes them, and its
/// tags (`management` lets the api and the command line read queue figures from the management
/// API; it grants no AMQP permission).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
    pub tags: &'static str,
    /// Routing keys this user may publish with, per topic exchange that carries more than one
    /// route (the results exchange).
    pub topics: Vec<TopicPermission>,
}

/// What a user may publish to one topic exchange, by routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPermission {
    pub exchange: String,
    pub write: String,
    pub read: String,
}

impl Topology {
    /// The permissions of `role`'s broker user. `taskbot setup-users` grants exactly these.
    pub fn permissions(&self, role: Role) -> Permissions {
        let owned = self.owned_queues(role);
        let mut own: Vec<String> = owned.iter().map(|q| q.name.clone()).collect();
        let dead_letter_queues: Vec<String> = self
            .owned_dead_letter_sources(role)
            .iter()
            .map(|source| self.dead_letter_queue(source))
            .collect();
        let mut bound_from: Vec<String> = owned.iter().map(|q| q.exchange.clone()).collect();
        if !dead_letter_queues.is_empty() {
            bound_from.push(self.dead_letter_exchange());
        }
        own.extend(dead_letter_queues);

        let mut write = own.clone();
        write.extend(
            Route::published_by(role)
                .into_iter()
                .filter_map(|route| route.exchange(self)),
        );
        let mut read: Vec<String> = owned.iter().map(|q| q.name.clone()).collect();
        read.extend(bound_from);
        if role == Role::Cli {
            read.extend(self.every_dead_letter_queue());
        }
        Permissions {
            configure: any_of(own),
            write: any_of(write),
            read: any_of(read),
            tags: match role {
                Role::Cli | Role::Service(Service::Api) => "management",
                Role::Service(_) => "",
            },
            topics: self.topic_permissions(role),
        }
    }

    /// The routing keys `role` may publish to the results exchange with: the key prefixes of the
    /// routes it publishes there. Empty when it publishes none (the exchange permission already
    /// refuses it).
    fn topic_permissions(&self, role: Role) -> Vec<TopicPermission> {
        let exchange = self.results_exchange();
        let mut prefixes: Vec<String> = Route::published_by(role)
            .into_iter()
            .filter(|route| route.exchange(self).as_deref() == Some(exchange.as_str()))
            .filter_map(|route| route.key_prefix())
            .map(regex_escape)
            .collect();
        if prefixes.is_empty() {
            return Vec::new();
        }
        prefixes.sort();
        vec![TopicPermission {
            exchange,
            write: format!("^(?:{})", prefixes.join("|")),
            read: ".*".into(),
        }]
    }

    /// Every dead-letter queue of the topology, the sink queues' included.
    fn every_dead_letter_queue(&self) -> Vec<String> {
        let mut sources = self.dead_letter_sources();
        sources.extend(self.sink_queues(&self.sinks).into_iter().map(|q| q.name));
        sources
            .iter()
            .map(|source| self.dead_letter_queue(source))
            .collect()
    }
}

/// A regular expression matching exactly these names (`^$`, nothing, when there are none).
fn any_of(mut names: Vec<String>) -> String {
    names.sort();
    names.dedup();
    if names.is_empty() {
        return "^$".into();
    }
    let escaped: Vec<String> = names.iter().map(|n| regex_escape(n)).collect();
    format!("^(?:{})$", escaped.join("|"))
}

/// `name` with every character that is not a letter, digit or `_` escaped: a literal in
/// RabbitMQ's (PCRE) regular expressions, as in Rust's.
fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() * 2);
    for c in name.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Sink;

    fn topology() -> Topology {
        let mut t = Topology::new("tb-1", &["x86_64".into(), "noarch".into()])
            .with_sinks(&[Sink::Postgres, Sink::FedoraMessaging]);
        t.fedora_messaging_exchange = Some("amq.topic".into());
        t
    }

    /// Whether `pattern` (as RabbitMQ would match it) matches `name`.
    fn allows(pattern: &str, name: &str) -> bool {
        regex::Regex::new(pattern).unwrap().is_match(name)
    }

    #[test]
    fn a_runner_publishes_results_statuses_events_and_dead_letters_only() {
        let t = topology();
        let p = t.permissions(Service::Runner.into());
        for exchange in ["tb-1.results", "tb-1.events", "tb-1.dead"] {
            assert!(allows(&p.write, exchange), "{exchange}: {}", p.write);
        }
        for exchange in ["tb-1.jobs", "tb-1.run", "amq.default", "amq.topic"] {
            assert!(!allows(&p.write, exchange), "{exchange}: {}", p.write);
        }
        assert!(allows(&p.read, "tb-1.run.x86_64"));
        assert!(!allows(&p.read, "tb-1.sink.postgres.results"));
        assert!(allows(&p.configure, "tb-1.run.noarch.dead"));
        for queue in ["tb-1.sink.postgres.results", "tb-1.results", "tb-1.rules"] {
            assert!(!allows(&p.configure, queue), "{queue}: {}", p.configure);
        }
    }

    #[test]
    fn the_rules_publish_statuses_but_no_results() {
        let t = topology();
        let rules = t.permissions(Service::Rules.into());
        assert_eq!(rules.topics.len(), 1);
        assert_eq!(rules.topics[0].exchange, "tb-1.results");
        assert!(allows(&rules.topics[0].write, "job.queued"));
        assert!(!allows(
            &rules.topics[0].write,
            "result.PASSED.dist.rpmlint"
        ));
        let runner = t.permissions(Service::Runner.into());
        assert!(allows(
            &runner.topics[0].write,
            "result.PASSED.dist.rpmlint"
        ));
        assert!(allows(&runner.topics[0].write, "job.done"));
        assert!(!allows(&runner.topics[0].write, "jobs.done"));
        assert!(t.permissions(Service::Reporter.into()).topics.is_empty());
    }

    #[test]
    fn only_the_provisioner_writes_run_messages() {
        let t = topology();
        for role in Role::ALL {
            let p = t.permissions(role);
            let provisioner = role == Role::Service(Service::Provisioner);
            assert_eq!(allows(&p.write, "tb-1.run"), provisioner, "{role}");
        }
    }

    #[test]
    fn jobs_come_from_the_rules_and_the_command_line() {
        let t = topology();
        let writers: Vec<Role> = Role::ALL
            .into_iter()
            .filter(|r| allows(&t.permissions(*r).write, "tb-1.jobs"))
            .collect();
        assert_eq!(writers, [Role::Service(Service::Rules), Role::Cli]);
    }

    #[test]
    fn the_api_may_do_nothing_on_amqp() {
        let p = topology().permissions(Service::Api.into());
        assert_eq!((&*p.configure, &*p.write, &*p.read), ("^$", "^$", "^$"));
        assert_eq!(p.tags, "management");
        for name in ["amq.default", "tb-1.results", "tb-1.dead"] {
            assert!(!allows(&p.write, name) && !allows(&p.read, name), "{name}");
        }
    }

    #[test]
    fn the_reporter_writes_fedora_messaging_and_reads_its_sinks() {
        let p = topology().permissions(Service::Reporter.into());
        assert!(allows(&p.write, "amq.topic"));
        assert!(allows(&p.read, "tb-1.sink.fedora-messaging"));
        assert!(allows(&p.read, "tb-1.results"), "to bind its queues");
        assert!(!allows(&p.write, "tb-1.results"));
        assert_eq!(p.tags, "");
    }

    #[test]
    fn the_command_line_reads_every_dead_letter_queue_and_requeues() {
        let p = topology().permissions(Role::Cli);
        for queue in [
            "tb-1.rules.dead",
            "tb-1.run.x86_64.dead",
            "tb-1.sink.postgres.status.dead",
            "tb-1.fedmsg-bridge.dead",
        ] {
            assert!(allows(&p.read, queue), "{queue}");
        }
        assert!(!allows(&p.read, "tb-1.rules"));
        assert!(allows(&p.write, "amq.default"));
        assert_eq!(p.configure, "^$");
    }

    #[test]
    fn names_are_escaped_so_a_dot_matches_only_a_dot() {
        let p = topology().permissions(Service::Rules.into());
        assert!(allows(&p.read, "tb-1.rules"));
        assert!(!allows(&p.read, "tb-1xrules"));
        assert!(!allows(&p.read, "tb-1.rules.extra"));
        assert!(!allows(&p.read, "x.tb-1.rules"));
        assert_eq!(regex_escape("a.b-c*"), r"a\.b\-c\*");
    }
}
