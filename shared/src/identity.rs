//! Which service a process is: its binary name, its config section and its ops address. A typed
//! identity instead of binary-name strings, so a service the code does not know cannot be named
//! and adding one is a compile error wherever a service is matched on.

use std::fmt;

/// Default addresses of the services' `/healthz`, `/readyz` and `/metrics` (`ops_listen` in each
/// service's section): one port per service so they can share a host; local only by default
/// (containers set `0.0.0.0:<port>`). The ports stay clear of Prometheus (9090) and its node
/// exporter (9100).
pub const OPS_DEFAULT_BRIDGE: &str = "127.0.0.1:9181";
pub const OPS_DEFAULT_FEDORA_MESSAGING_BRIDGE: &str = "127.0.0.1:9185";
pub const OPS_DEFAULT_RULES: &str = "127.0.0.1:9182";
pub const OPS_DEFAULT_PROVISIONER: &str = "127.0.0.1:9183";
pub const OPS_DEFAULT_REPORTER: &str = "127.0.0.1:9184";
/// The first runner's; further runners on the same host take 9191, 9192, ... (`--ops-listen`).
pub const OPS_DEFAULT_RUNNER: &str = "127.0.0.1:9190";

/// One of Taskbot's services (the `taskbot` command line is a tool, not a service).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// The fedmsg (ZeroMQ) bridge.
    Bridge,
    /// The fedora-messaging (AMQP) bridge, which consumes an external broker.
    FedoraMessagingBridge,
    Rules,
    Provisioner,
    Runner,
    Reporter,
    Api,
}

impl Service {
    pub const ALL: [Service; 7] = [
        Service::Bridge,
        Service::FedoraMessagingBridge,
        Service::Rules,
        Service::Provisioner,
        Service::Runner,
        Service::Reporter,
        Service::Api,
    ];

    /// The binary's name, as in logs, error messages, metrics and deployment manifests.
    pub fn name(self) -> &'static str {
        match self {
            Service::Bridge => "fedmsg-bridge",
            Service::FedoraMessagingBridge => "fedora-messaging-bridge",
            Service::Rules => "rules",
            Service::Provisioner => "provisioner",
            Service::Runner => "runner",
            Service::Reporter => "reporter",
            Service::Api => "api",
        }
    }

    /// The service whose binary is called `name`.
    pub fn from_name(name: &str) -> Option<Service> {
        Service::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Its own section of the configuration file.
    pub fn section(self) -> &'static str {
        match self {
            Service::Bridge => "bridge",
            Service::FedoraMessagingBridge => "fedora_messaging_bridge",
            other => other.name(),
        }
    }

    /// The config key of its `/healthz`, `/readyz` and `/metrics` address (also `--ops-listen`);
    /// `None` for the api, which serves `/healthz` and `/readyz` on its own address.
    pub fn ops_listen_key(self) -> Option<&'static str> {
        Some(match self {
            Service::Bridge => "bridge.ops_listen",
            Service::FedoraMessagingBridge => "fedora_messaging_bridge.ops_listen",
            Service::Rules => "rules.ops_listen",
            Service::Provisioner => "provisioner.ops_listen",
            Service::Runner => "runner.ops_listen",
            Service::Reporter => "reporter.ops_listen",
            Service::Api => return None,
        })
    }

    /// The default of [`Service::ops_listen_key`].
    pub fn default_ops_listen(self) -> Option<&'static str> {
        Some(match self {
            Service::Bridge => OPS_DEFAULT_BRIDGE,
            Service::FedoraMessagingBridge => OPS_DEFAULT_FEDORA_MESSAGING_BRIDGE,
            Service::Rules => OPS_DEFAULT_RULES,
            Service::Provisioner => OPS_DEFAULT_PROVISIONER,
            Service::Runner => OPS_DEFAULT_RUNNER,
            Service::Reporter => OPS_DEFAULT_REPORTER,
            Service::Api => return None,
        })
    }
}

/// Who logs in to the broker (and, for two of them, the database): one of the services, or the
/// `taskbot` command line. Each has its own broker user (`[amqp.users.<key>]`) with only the
/// permissions its part of the topology needs ([`crate::topology::Permissions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Service(Service),
    /// The `taskbot` command line of an operator (`submit`, `replay`, `dlq`, `status`).
    Cli,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Service(Service::Bridge),
        Role::Service(Service::FedoraMessagingBridge),
        Role::Service(Service::Rules),
        Role::Service(Service::Provisioner),
        Role::Service(Service::Runner),
        Role::Service(Service::Reporter),
        Role::Service(Service::Api),
        Role::Cli,
    ];

    /// Its key in `[amqp.users.<key>]` and `[postgres.users.<key>]`: the service's config section,
    /// or `cli`; also the last part of the user names `taskbot setup-users` makes.
    pub fn key(self) -> &'static str {
        match self {
            Role::Service(service) => service.section(),
            Role::Cli => "cli",
        }
    }

    /// The role whose key is `key`.
    pub fn from_key(key: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.key() == key)
    }

    /// The role whose broker user an `[amqp.users.<key>]` entry is: a role's own key, or the
    /// key of the runners of one arch ([`runner_arch_key`]), which are the runner's.
    pub fn from_amqp_key(key: &str) -> Option<Role> {
        match runner_key_arch(key) {
            Some(_) => Some(Role::Service(Service::Runner)),
            None => Role::from_key(key),
        }
    }
}

const RUNNER_ARCH_KEY_PREFIX: &str = "runner_";

/// The `[amqp.users.<key>]` key of the broker user of the runners of `arch`: `runner_x86_64`
/// (an underscore, so that it can be set from the environment too:
/// `TASKBOT_AMQP__USERS__RUNNER_X86_64__NAME`).
/// Runners of different arches log in as different users, each of which may read only its own
/// arch's run queue, so the reporter can tell which arch's runner published a result (the AMQP
/// `user_id`) and refuse one for a job dispatched to another arch. The user's name is
/// `<namespace>-runner-x86_64` ([`crate::accounts::amqp_user_name`]).
pub fn runner_arch_key(arch: &str) -> String {
    format!("{RUNNER_ARCH_KEY_PREFIX}{arch}")
}

/// The arch whose runners' key `key` is ([`runner_arch_key`]), if it is one.
pub fn runner_key_arch(key: &str) -> Option<&str> {
    key.strip_prefix(RUNNER_ARCH_KEY_PREFIX)
        .filter(|arch| !arch.is_empty())
}

impl From<Service> for Role {
    fn from(service: Service) -> Role {
        Role::Service(service)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sections_and_ops_keys_belong_together() {
        for service in Service::ALL {
            assert_eq!(Service::from_name(service.name()), Some(service));
            if let Some(key) = service.ops_listen_key() {
                assert_eq!(key, format!("{}.ops_listen", service.section()));
                assert!(service.default_ops_listen().is_some(), "{service}");
            } else {
                assert_eq!(service.default_ops_listen(), None, "{service}");
            }
        }
        assert_eq!(Service::Bridge.section(), "bridge");
        assert_eq!(Service::Bridge.to_string(), "fedmsg-bridge");
        assert_eq!(
            Service::from_name("bridge"),
            None,
            "a section is not a binary"
        );
        assert_eq!(Service::from_name("taskbot"), None);
    }

    #[test]
    fn every_role_has_its_own_key() {
        for role in Role::ALL {
            assert_eq!(Role::from_key(role.key()), Some(role));
        }
        assert_eq!(Role::from(Service::Bridge).key(), "bridge");
        assert_eq!(Role::Cli.key(), "cli");
        assert_eq!(Role::from_key("fedmsg-bridge"), None, "keys are sections");
    }

    #[test]
    fn the_runners_of_an_arch_have_a_key_of_their_own() {
        let runner = Role::Service(Service::Runner);
        assert_eq!(runner_arch_key("x86_64"), "runner_x86_64");
        assert_eq!(runner_key_arch("runner_x86_64"), Some("x86_64"));
        assert_eq!(runner_key_arch("runner"), None);
        assert_eq!(Role::from_amqp_key("runner_x86_64"), Some(runner));
        assert_eq!(Role::from_amqp_key("runner"), Some(runner));
        assert_eq!(Role::from_amqp_key("cli"), Some(Role::Cli));
        assert_eq!(Role::from_amqp_key("runner_"), None, "no arch");
        assert_eq!(Role::from_amqp_key("rules_x86_64"), None);
        assert_eq!(
            Role::from_key("runner_x86_64"),
            None,
            "not a role's own key"
        );
    }
}
