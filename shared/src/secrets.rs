//! Secrets read from files at start: each process's broker password (`[amqp.users.<key>]`, for a
//! runner its arch's `[amqp.users.runner_<arch>]` when there is one; `amqp.password_file`), its database password (`[postgres.users.<key>]`,
//! `postgres.password_file`), the reporter's ResultsDB header
//! (`reporter.resultsdb_auth_header_file`) and the fedora-messaging bridge's password on the
//! external broker (`fedora_messaging_bridge.password_file`).
//!
//! [`resolve`] reads them once, when a service (or the command line) starts, into the URLs the
//! rest of the code uses, so no other module knows where a password came from. A process reads
//! only the secrets of its own role: every file is meant to be readable by one service's OS user
//! only, so a runner never needs (or can read) the reporter's. A missing, unreadable or empty file
//! is a configuration error naming the key and the file (exit status 2).
//!
//! The resolved URLs hold passwords: log [`crate::amqp::url_user`] or
//! [`redact_url`] of them, never the URLs.

use std::path::Path;

use crate::config::{Account, Config, ConfigError};
use crate::identity::{Role, Service};
use crate::text::percent_encode;

/// The roles that have a database account.
const DATABASE_ROLES: [Role; 2] = [
    Role::Service(Service::Reporter),
    Role::Service(Service::Api),
];

/// `config` with the secrets of `role` (`None`: an administrator, logging in as the URLs' own
/// users) read from their files into `amqp.url`, `amqp.management_url`, `postgres.url` and
/// `reporter.resultsdb_auth_header`.
pub fn resolve(mut config: Config, role: Option<Role>) -> Result<Config, ConfigError> {
    check_keys(&config)?;
    if let Some(login) = amqp_login(&config, role)? {
        let amqp = &mut config.amqp;
        let user = login
            .user
            .unwrap_or_else(|| crate::amqp::url_user(&amqp.url));
        let password = login.password.as_deref();
        amqp.url = with_userinfo(&amqp.url, &user, password);
        amqp.management_url = with_userinfo(&amqp.management_url, &user, password);
    }
    let uses_database = role.is_none_or(|r| DATABASE_ROLES.contains(&r));
    if uses_database {
        if let Some(login) = database_login(&config, role)? {
            config.postgres.url =
                with_postgres_login(&config.postgres.url, &login.user, login.password);
        }
    }
    if role == Some(Role::Service(Service::Reporter)) {
        resolve_resultsdb_header(&mut config)?;
    }
    if role == Some(Role::Service(Service::FedoraMessagingBridge)) {
        let external = &mut config.fedora_messaging_bridge;
        if let Some(file) = &external.password_file {
            let password = read_secret("fedora_messaging_bridge.password_file", file)?;
            let user = crate::amqp::url_user(&external.url);
            external.url = with_userinfo(&external.url, &user, Some(&password));
        }
    }
    Ok(config)
}

/// Refuse `users` keys no role has (a typo would silently make a service log in as the URL's
/// user).
fn check_keys(config: &Config) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for key in config.amqp.users.keys() {
        if Role::from_amqp_key(key).is_none() {
            problems.push(format!(
                "  amqp.users.{key}: no such service (one of: {}, or runner_<arch>)",
                keys_of(&Role::ALL)
            ));
        }
    }
    for key in config.postgres.users.keys() {
        if !Role::from_key(key).is_some_and(|r| DATABASE_ROLES.contains(&r)) {
            problems.push(format!(
                "  postgres.users.{key}: only {} have a database account",
                keys_of(&DATABASE_ROLES)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::new(problems.join("\n")))
    }
}

fn keys_of(roles: &[Role]) -> String {
    roles.iter().map(|r| r.key()).collect::<Vec<_>>().join(", ")
}

/// Who to log in as: a user (`None`: the URL's) and a password (`None`: the URL's).
struct Login {
    user: Option<String>,
    password: Option<String>,
}

/// The broker login of `role`: its own user, else the URL's user with `amqp.password_file`;
/// `None` when the URL stays as it is.
fn amqp_login(config: &Config, role: Option<Role>) -> Result<Option<Login>, ConfigError> {
    let key = role.map(|r| amqp_key(config, r));
    let file = config.amqp.password_file.as_deref();
    login(&config.amqp.users, "amqp", key.as_deref(), file)
}

/// The `[amqp.users.<key>]` entry `role` logs in with: for a runner, its arch's own
/// (`runner_<arch>`, from `runner.arch`) when there is one, else the shared `runner`.
fn amqp_key(config: &Config, role: Role) -> String {
    if role == Role::Service(Service::Runner) {
        if let Some(arch) = &config.runner.arch {
            let key = crate::identity::runner_arch_key(arch);
            if config.amqp.users.contains_key(&key) {
                return key;
            }
        }
    }
    role.key().to_string()
}

/// The database login of `role`: its own role, else the URL's user with
/// `postgres.password_file`; `None` when the URL stays as it is.
fn database_login(config: &Config, role: Option<Role>) -> Result<Option<Login>, ConfigError> {
    let key = role.map(|r| r.key());
    let file = config.postgres.password_file.as_deref();
    login(&config.postgres.users, "postgres", key, file)
}

/// The account `key` among `accounts` (`[<section>.users]`), else the URL's user with the
/// section's own `password_file`.
fn login(
    accounts: &std::collections::BTreeMap<String, Account>,
    section: &str,
    key: Option<&str>,
    url_password_file: Option<&Path>,
) -> Result<Option<Login>, ConfigError> {
    if let Some((key, account)) = key.and_then(|k| Some((k, accounts.get(k)?))) {
        let password = match &account.password_file {
            Some(file) => {
                let key = format!("{section}.users.{key}.password_file");
                Some(read_secret(&key, file)?)
            }
            None => None,
        };
        let user = Some(account.name.clone());
        return Ok(Some(Login { user, password }));
    }
    match url_password_file {
        Some(file) => {
            let key = format!("{section}.password_file");
            let password = Some(read_secret(&key, file)?);
            Ok(Some(Login {
                user: None,
                password,
            }))
        }
        None => Ok(None),
    }
}

fn resolve_resultsdb_header(config: &mut Config) -> Result<(), ConfigError> {
    let reporter = &mut config.reporter;
    match (
        &reporter.resultsdb_username,
        &reporter.resultsdb_password_file,
    ) {
        (None, None) => {}
        (Some(user), Some(file)) => {
            if reporter.resultsdb_auth_header.is_some()
                || reporter.resultsdb_auth_header_file.is_some()
            {
                return Err(ConfigError::new(
                    "  reporter.resultsdb_password_file: set together with \
                     reporter.resultsdb_auth_header(_file); keep only one way to log in",
                ));
            }
            if user.is_empty() || user.contains(':') {
                return Err(ConfigError::new(
                    "  reporter.resultsdb_username: must be non-empty and without ':' (HTTP Basic)",
                ));
            }
            let password = read_secret("reporter.resultsdb_password_file", file)?;
            reporter.resultsdb_auth_header = Some(basic_auth_header(user, &password));
            return Ok(());
        }
        _ => {
            return Err(ConfigError::new(
                "  reporter.resultsdb_username and reporter.resultsdb_password_file: set both \
                 (HTTP Basic) or neither",
            ))
        }
    }
    let Some(file) = &reporter.resultsdb_auth_header_file else {
        return Ok(());
    };
    if reporter.resultsdb_auth_header.is_some() {
        return Err(ConfigError::new(
            "  reporter.resultsdb_auth_header_file: set together with \
             reporter.resultsdb_auth_header; keep only one",
        ));
    }
    reporter.resultsdb_auth_header =
        Some(read_secret("reporter.resultsdb_auth_header_file", file)?);
    Ok(())
}

/// The `Authorization: Basic ...` header line of `user` and `password` (RFC 7617).
pub fn basic_auth_header(user: &str, password: &str) -> String {
    format!(
        "Authorization: Basic {}",
        crate::text::base64(format!("{user}:{password}").as_bytes())
    )
}

/// The one line of a secret file, its trailing newline removed. `key` names the setting in
/// errors; the content never appears in one.
pub fn read_secret(key: &str, file: &Path) -> Result<String, ConfigError> {
    let problem = |what: String| ConfigError::new(format!("  {key}: {} {what}", file.display()));
    let text =
        std::fs::read_to_string(file).map_err(|e| problem(format!("cannot be read: {e}")))?;
    let line = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if line.is_empty() {
        return Err(problem("is empty".into()));
    }
    if line.contains('\n') {
        return Err(problem("holds more than one line".into()));
    }
    Ok(line.to_string())
}

/// `url` (`scheme://[userinfo@]host...`) logging in as `user` with `password` (the URL's own
/// password when `None`).
pub fn with_userinfo(url: &str, user: &str, password: Option<&str>) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (old_userinfo, host) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let old_password = old_userinfo
        .and_then(|u| u.split_once(':'))
        .map(|(_, p)| p.to_string());
    let password = password.map(percent_encode).or(old_password);
    let userinfo = match password {
        Some(p) => format!("{}:{p}", percent_encode(user)),
        None => percent_encode(user),
    };
    format!("{}{userinfo}@{host}{tail}", &url[..start])
}

/// A PostgreSQL URL (or libpq `key=value` string) logging in as `user` (unchanged when `None`)
/// with `password`.
fn with_postgres_login(url: &str, user: &Option<String>, password: Option<String>) -> String {
    if url.contains("://") {
        let user = user
            .clone()
            .unwrap_or_else(|| postgres_url_user(url).unwrap_or_default());
        return with_userinfo(url, &user, password.as_deref());
    }
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut out = url.to_string();
    if let Some(user) = user {
        out.push_str(&format!(" user={}", quote(user)));
    }
    if let Some(password) = password {
        out.push_str(&format!(" password={}", quote(&password)));
    }
    out
}

/// The user a `postgres://` URL names, decoded.
fn postgres_url_user(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    Some(percent_decode(user))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` with its password (if any) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[start..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..start], &rest[at..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn account(name: &str, file: &Path) -> Account {
        Account {
            name: name.into(),
            password_file: Some(file.to_path_buf()),
        }
    }

    #[test]
    fn a_service_logs_in_as_its_own_user_with_the_password_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        let file = secret(dir.path(), "runner", "s3cr3t/+\n");
        config
            .amqp
            .users
            .insert("runner".into(), account("tb-runner", &file));
        let other = dir.path().join("unreadable-by-the-runner");
        config
            .amqp
            .users
            .insert("reporter".into(), account("tb-reporter", &other));
        config.reporter.resultsdb_auth_header_file = Some(other.clone());
        config
            .postgres
            .users
            .insert("api".into(), account("tb_api", &other));
        let runner = resolve(config.clone(), Some(Service::Runner.into())).unwrap();
        assert_eq!(
            runner.amqp.url,
            "amqp://tb-runner:s3cr3t%2F%2B@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            runner.amqp.management_url,
            "http://tb-runner:s3cr3t%2F%2B@127.0.0.1:15672"
        );
        assert_eq!(crate::amqp::url_user(&runner.amqp.url), "tb-runner");
        assert_eq!(runner.amqp.login_role(), Some(Service::Runner.into()));
        assert_eq!(runner.postgres.url, config.postgres.url, "no database");
        assert_eq!(runner.reporter.resultsdb_auth_header, None);
    }

    #[test]
    fn a_runner_logs_in_as_its_archs_user_else_the_shared_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        let x86 = secret(dir.path(), "x86", "x86-pw\n");
        let shared = secret(dir.path(), "shared", "shared-pw\n");
        let users = &mut config.amqp.users;
        users.insert("runner_x86_64".into(), account("tb-runner-x86_64", &x86));
        users.insert("runner".into(), account("tb-runner", &shared));
        let as_runner_of = |arch: &str| {
            let mut config = config.clone();
            config.runner.arch = Some(arch.into());
            resolve(config, Some(Service::Runner.into())).unwrap()
        };
        let x86_runner = as_runner_of("x86_64");
        assert_eq!(
            x86_runner.amqp.url,
            "amqp://tb-runner-x86_64:x86-pw@127.0.0.1:5672/%2f"
        );
        assert_eq!(x86_runner.amqp.login_role(), Some(Service::Runner.into()));
        let other = as_runner_of("s390x");
        assert_eq!(crate::amqp::url_user(&other.amqp.url), "tb-runner");
        let runners = config.amqp.runner_users();
        assert_eq!(runners.of_arch("x86_64"), Some("tb-runner-x86_64"));
        assert_eq!(runners.of_arch("aarch64"), Some("tb-runner"));
        assert_eq!(runners.all(), ["tb-runner", "tb-runner-x86_64"]);
        let mut per_arch_only = config.amqp.clone();
        per_arch_only.users.remove("runner");
        let runners = per_arch_only.runner_users();
        assert_eq!(runners.of_arch("aarch64"), None, "not the URL's user");
        assert_eq!(runners.all(), ["tb-runner-x86_64"]);
        let guest = Config::default().amqp.runner_users();
        assert_eq!(guest.of_arch("aarch64"), Some("guest"), "local development");
        assert_eq!(config.amqp.runner_user_name("x86_64"), "tb-runner-x86_64");
        // Another service's login is unaffected by a runner arch in the config.
        let mut rules = config.clone();
        rules.runner.arch = Some("x86_64".into());
        let rules = resolve(rules, Some(Service::Rules.into())).unwrap();
        assert_eq!(rules.amqp.url, config.amqp.url);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_key_and_file() {
        let mut config = Config::default();
        let file = PathBuf::from("/nonexistent/taskbot/reporter.pw");
        config
            .postgres
            .users
            .insert("reporter".into(), account("tb_reporter", &file));
        let err = resolve(config, Some(Service::Reporter.into())).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("postgres.users.reporter.password_file"),
            "{text}"
        );
        assert!(text.contains("/nonexistent/taskbot/reporter.pw"), "{text}");
    }

    #[test]
    fn resultsdb_basic_credentials_come_from_a_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("rdb");
        std::fs::write(&file, "s3cr\u{e9}t-pw\n").unwrap();
        let mut config = Config::default();
        config.reporter.resultsdb_username = Some("taskbot".into());
        config.reporter.resultsdb_password_file = Some(file.clone());
        let reporter = resolve(config.clone(), Some(Role::Service(Service::Reporter))).unwrap();
        let header = reporter.reporter.resultsdb_auth_header.unwrap();
        assert_eq!(
            header,
            format!(
                "Authorization: Basic {}",
                crate::text::base64("taskbot:s3cr\u{e9}t-pw".as_bytes())
            )
        );
        assert!(
            !header.contains("s3cr"),
            "the password is encoded, not in clear"
        );
        // Other roles never read it.
        let runner = resolve(config.clone(), Some(Role::Service(Service::Rules))).unwrap();
        assert_eq!(runner.reporter.resultsdb_auth_header, None);
        let mut both = config.clone();
        both.reporter.resultsdb_auth_header = Some("X: y".into());
        let err = resolve(both, Some(Role::Service(Service::Reporter))).unwrap_err();
        assert!(err.to_string().contains("keep only one"), "{err}");
        let mut half = config;
        half.reporter.resultsdb_username = None;
        let err = resolve(half, Some(Role::Service(Service::Reporter))).unwrap_err();
        assert!(err.to_string().contains("set both"), "{err}");
        assert!(!err.to_string().contains("s3cr"), "{err}");
    }

    #[test]
    fn the_database_and_resultsdb_secrets_of_the_reporter() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.postgres.url = "postgres://postgres@db:5432/results?sslmode=disable".into();
        let pw = secret(dir.path(), "pg", "p@ss\r\n");
        config
            .postgres
            .users
            .insert("reporter".into(), account("tb_reporter", &pw));
        let header = secret(dir.path(), "h", "Authorization: Bearer tok\n");
        config.reporter.resultsdb_auth_header_file = Some(header);
        let reporter = resolve(config.clone(), Some(Service::Reporter.into())).unwrap();
        assert_eq!(
            reporter.postgres.url,
            "postgres://tb_reporter:p%40ss@db:5432/results?sslmode=disable"
        );
        assert_eq!(
            postgres_url_user(&reporter.postgres.url).as_deref(),
            Some("tb_reporter")
        );
        assert_eq!(
            reporter.reporter.resultsdb_auth_header.as_deref(),
            Some("Authorization: Bearer tok")
        );
        config.reporter.resultsdb_auth_header = Some("X: y".into());
        let both = resolve(config, Some(Service::Reporter.into())).unwrap_err();
        assert!(both.to_string().contains("keep only one"), "{both}");
    }

    #[test]
    fn an_administrator_uses_the_url_user_with_the_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.amqp.url = "amqp://admin@broker/vh".into();
        config.amqp.password_file = Some(secret(dir.path(), "a", "adm\n"));
        config.postgres.url = "host=db user=postgres dbname=taskbot".into();
        config.postgres.password_file = Some(secret(dir.path(), "p", "it's\n"));
        let admin = resolve(config, None).unwrap();
        assert_eq!(admin.amqp.url, "amqp://admin:adm@broker/vh");
        assert_eq!(
            admin.amqp.management_url,
            "http://admin:adm@127.0.0.1:15672"
        );
        assert_eq!(admin.amqp.login_role(), None);
        assert_eq!(
            admin.postgres.url,
            r"host=db user=postgres dbname=taskbot password='it\'s'"
        );
    }

    #[test]
    fn unknown_user_keys_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        let empty = secret(dir.path(), "e", "\n");
        config
            .amqp
            .users
            .insert("runnner".into(), account("x", &empty));
        config
            .amqp
            .users
            .insert("runner_".into(), account("x", &empty));
        config
            .postgres
            .users
            .insert("runner".into(), account("x", &empty));
        let text = resolve(config, None).unwrap_err().to_string();
        assert!(
            text.contains("amqp.users.runner_: no such service"),
            "{text}"
        );
        assert!(
            text.contains("amqp.users.runnner: no such service"),
            "{text}"
        );
        assert!(
            text.contains("postgres.users.runner: only reporter, api"),
            "{text}"
        );
        assert!(read_secret("k", &empty)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        let two = secret(dir.path(), "t", "a\nb\n");
        let err = read_secret("k", &two).unwrap_err().to_string();
        assert!(
            err.contains("more than one line") && !err.contains("a\nb"),
            "{err}"
        );
    }

    #[test]
    fn redacting_hides_only_the_password() {
        assert_eq!(
            redact_url("amqp://tb-runner:s3cret@broker:5672/%2f"),
            "amqp://tb-runner:***@broker:5672/%2f"
        );
        assert_eq!(redact_url("amqp://broker/%2f"), "amqp://broker/%2f");
        assert_eq!(redact_url("http://u@h"), "http://u@h");
    }
}
