//! Making a deployment's accounts (`taskbot setup-users`, and the test harness): one broker user
//! per role with the permissions the topology gives it ([`Topology::permissions`]), the whole
//! topology declared once, and (optionally) the database roles ([`crate::store::roles`]) with the
//! schema migrated as its owner. Passwords are generated into files of mode 0600 in a directory
//! of mode 0700, and a file that is already there is kept, so running it again changes nothing a
//! running service depends on.
//!
//! Run with an administrator's login: the config's own URLs, resolved with
//! [`crate::secrets::resolve`] and no role (`amqp.password_file`, `postgres.password_file`).
//! Behind the `management` and `postgres` features.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Account, Config};
use crate::identity::{runner_arch_key, Role, Service};
use crate::management::Management;
use crate::store::roles::{self, RoleNames};
use crate::topology::{Permissions, Topology};

/// The accounts made for one deployment, as its configuration names them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Accounts {
    /// `[amqp.users.<key>]`.
    pub amqp: BTreeMap<String, Account>,
    /// `[postgres.users.<key>]` (empty when the database was left alone).
    pub postgres: BTreeMap<String, Account>,
}

impl Accounts {
    /// Put these accounts into `config` (as the snippet would).
    pub fn apply(&self, config: &mut Config) {
        config.amqp.users.extend(self.amqp.clone());
        config.postgres.users.extend(self.postgres.clone());
    }

    /// The configuration that makes every service use its account, as TOML.
    pub fn snippet(&self) -> String {
        let mut out = String::new();
        for (section, accounts) in [("amqp", &self.amqp), ("postgres", &self.postgres)] {
            for (key, account) in accounts {
                let _ = writeln!(out, "[{section}.users.{}]", toml_key(key));
                let _ = writeln!(out, "name = {}", toml_string(&account.name));
                if let Some(file) = &account.password_file {
                    let file = toml_string(&file.display().to_string());
                    let _ = writeln!(out, "password_file = {file}");
                }
                out.push('\n');
            }
        }
        out
    }
}

/// `key` as a TOML key: bare when it can be (`runner_x86_64`), else quoted (an arch named
/// with other characters).
fn toml_key(key: &str) -> String {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !key.is_empty() && key.chars().all(bare) {
        key.to_string()
    } else {
        toml_string(key)
    }
}

fn toml_string(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

/// The broker user of the `[amqp.users.<key>]` entry `key` in `namespace`: `<namespace>-<key>`,
/// e.g. `taskbot-rules`; for the runners of an arch `<namespace>-runner-<arch>`, e.g.
/// `taskbot-runner-x86_64`.
pub fn amqp_user_name(namespace: &str, key: &str) -> String {
    match crate::identity::runner_key_arch(key) {
        Some(arch) => format!("{namespace}-runner-{arch}"),
        None => format!("{namespace}-{key}"),
    }
}

/// The broker users of a deployment, by `[amqp.users.<key>]` key, with their permissions: one per
/// role, except that the runners have one per arch of `topology` (`runner_<arch>`), which may
/// consume only that arch's run queue, instead of one shared by all arches.
pub fn broker_users(topology: &Topology) -> Vec<(String, Permissions)> {
    let runner = Role::Service(Service::Runner);
    let mut users: Vec<(String, Permissions)> = Role::ALL
        .into_iter()
        .filter(|role| *role != runner)
        .map(|role| (role.key().to_string(), topology.permissions(role)))
        .collect();
    for arch in &topology.arches {
        let of_arch = topology.clone().only_arch(arch);
        users.push((runner_arch_key(arch), of_arch.permissions(runner)));
    }
    users
}

/// Make or update every account of `admin`'s namespace (see the module's documentation), with the
/// password files in `secrets_dir`; the database's too when `database`.
pub async fn set_up(
    admin: &Config,
    secrets_dir: &Path,
    database: bool,
) -> Result<Accounts, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(secrets_dir)
        .map_err(|e| format!("cannot create {}: {e}", secrets_dir.display()))?;
    let topology = Topology::for_config(admin);
    let management = Management::new(admin)?;
    let mut accounts = Accounts::default();
    for (key, permissions) in broker_users(&topology) {
        let file = secrets_dir.join(format!("amqp-{key}.password"));
        let password = password_in(&file)?;
        let name = amqp_user_name(&admin.amqp.namespace, &key);
        management.put_user(&name, &password, &permissions).await?;
        let account = Account {
            name,
            password_file: Some(file),
        };
        accounts.amqp.insert(key, account);
    }
    declare_topology(admin, &topology).await?;
    if database {
        accounts.postgres = set_up_database(admin, secrets_dir).await?;
    }
    Ok(accounts)
}

/// Remove every account of `admin`'s namespace (the database roles too when `database`; the
/// tables stay, owned by the administrator). The topology stays.
pub async fn tear_down(admin: &Config, database: bool) -> Result<(), String> {
    let management = Management::new(admin)?;
    let mut keys: Vec<String> = broker_users(&Topology::for_config(admin))
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    // The user runners of every arch shared before each arch had its own.
    keys.push(Role::Service(Service::Runner).key().to_string());
    for key in keys {
        let name = amqp_user_name(&admin.amqp.namespace, &key);
        management.delete_user(&name).await?;
    }
    if database {
        let client = admin_client(admin).await?;
        roles::drop_all(&client, &RoleNames::new(&admin.amqp.namespace))
            .await
            .map_err(|e| format!("cannot drop the database roles: {}", crate::error_chain(&e)))?;
    }
    Ok(())
}

/// Declare the whole topology once, as an administrator, so every queue exists before any service
/// publishes (each service then declares only its own queues).
async fn declare_topology(admin: &Config, topology: &Topology) -> Result<(), String> {
    let url = &admin.amqp.url;
    let conn = crate::amqp::connect(url, "taskbot-setup-users")
        .await
        .map_err(|e| {
            format!(
                "cannot reach the broker at {}: {e}",
                crate::secrets::redact_url(url)
            )
        })?;
    let declared = async {
        let channel = conn.create_channel().await?;
        topology.declare(&channel).await?;
        channel.close(200, "declared").await
    }
    .await;
    let _ = conn.close(200, "done").await;
    declared.map_err(|e| format!("cannot declare the topology: {e}"))
}

/// The reporter's and the api's roles, the owner role, and the schema migrated as the owner.
async fn set_up_database(
    admin: &Config,
    secrets_dir: &Path,
) -> Result<BTreeMap<String, Account>, String> {
    let names = RoleNames::new(&admin.amqp.namespace);
    let file = |role: Service| secrets_dir.join(format!("postgres-{}.password", role.section()));
    let (reporter_file, api_file) = (file(Service::Reporter), file(Service::Api));
    let (reporter_password, api_password) = (password_in(&reporter_file)?, password_in(&api_file)?);
    let client = admin_client(admin).await?;
    let database = crate::store::database_name(&admin.postgres.url);
    let sql_error = |what: &str, e: tokio_postgres::Error| {
        format!("{what} in database {database}: {}", crate::error_chain(&e))
    };
    roles::create(
        &client,
        &database,
        &names,
        &reporter_password,
        &api_password,
    )
    .await
    .map_err(|e| sql_error("cannot make the roles", e))?;
    let owner = roles::acting_as(&admin.postgres, &names.owner);
    let pool = crate::store::connect_pool(
        &owner,
        &crate::store::PoolOptions {
            application_name: "taskbot-setup-users",
            read_only: false,
            connect_timeout: Duration::from_secs(10),
            wait_timeout: Duration::from_secs(30),
            create_timeout: Duration::from_secs(10),
            statement_timeout: None,
        },
    )
    .map_err(|e| e.to_string())?;
    let migrated = crate::store::migrate(&pool).await;
    pool.close();
    migrated.map_err(|e| format!("cannot migrate database {database}: {e}"))?;
    roles::grant(&client, &names)
        .await
        .map_err(|e| sql_error("cannot grant the roles", e))?;
    let account = |name: &str, file: PathBuf| Account {
        name: name.to_string(),
        password_file: Some(file),
    };
    Ok(BTreeMap::from([
        (
            "reporter".to_string(),
            account(&names.reporter, reporter_file),
        ),
        ("api".to_string(), account(&names.api, api_file)),
    ]))
}

async fn admin_client(admin: &Config) -> Result<tokio_postgres::Client, String> {
    let url = &admin.postgres.url;
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to PostgreSQL at {}: {}",
                crate::secrets::redact_url(url),
                crate::error_chain(&e)
            )
        })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The password kept in `file`, or a new one written there (mode 0600).
fn password_in(file: &Path) -> Result<String, String> {
    if file.exists() {
        return crate::secrets::read_secret("password file", file).map_err(|e| e.to_string());
    }
    let password = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| format!("cannot create {}: {e}", file.display()))?;
    writeln!(out, "{password}").map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(password)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn a_password_file_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("amqp-runner.password");
        let first = password_in(&file).unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(password_in(&file).unwrap(), first, "kept on the second run");
    }

    #[test]
    fn the_snippet_is_the_configuration_of_the_accounts() {
        let mut accounts = Accounts::default();
        accounts.amqp.insert(
            "runner_x86_64".into(),
            Account {
                name: "tb-runner-x86_64".into(),
                password_file: Some("/etc/taskbot/secrets/amqp-runner_x86_64.password".into()),
            },
        );
        accounts.amqp.insert(
            "runner_arm.v7".into(),
            Account {
                name: "tb-runner-arm.v7".into(),
                password_file: None,
            },
        );
        let snippet = accounts.snippet();
        assert_eq!(
            snippet,
            "[amqp.users.\"runner_arm.v7\"]\nname = \"tb-runner-arm.v7\"\n\n\
             [amqp.users.runner_x86_64]\nname = \"tb-runner-x86_64\"\n\
             password_file = \"/etc/taskbot/secrets/amqp-runner_x86_64.password\"\n\n"
        );
        let parsed: Config =
            figment::Figment::from(figment::providers::Serialized::defaults(Config::default()))
                .merge(<figment::providers::Toml as figment::providers::Format>::string(&snippet))
                .extract()
                .unwrap();
        assert_eq!(parsed.amqp.users, accounts.amqp);
        assert_eq!(amqp_user_name("tb", "cli"), "tb-cli");
        assert_eq!(amqp_user_name("tb", "runner_x86_64"), "tb-runner-x86_64");
    }

    #[test]
    fn the_runners_of_each_arch_have_a_user_reading_only_their_run_queue() {
        let topology = Topology::new("tb", &["x86_64".into(), "aarch64".into()]);
        let users = broker_users(&topology);
        let keys: Vec<&str> = users.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "bridge",
                "fedora_messaging_bridge",
                "rules",
                "provisioner",
                "reporter",
                "api",
                "cli",
                "runner_x86_64",
                "runner_aarch64"
            ],
            "no user shared by the runners of every arch"
        );
        let (_, x86) = &users[7];
        let allows = |pattern: &str, name: &str| regex::Regex::new(pattern).unwrap().is_match(name);
        assert!(allows(&x86.read, "tb.run.x86_64"));
        assert!(!allows(&x86.read, "tb.run.aarch64"), "{}", x86.read);
        assert!(
            !allows(&x86.configure, "tb.run.aarch64.dead"),
            "{}",
            x86.configure
        );
        assert!(allows(&x86.write, "tb.results") && allows(&x86.write, "tb.events"));
        let shared = topology.permissions(Service::Runner.into());
        assert_eq!(
            x86.topics, shared.topics,
            "publishes what every runner publishes"
        );
    }
}
