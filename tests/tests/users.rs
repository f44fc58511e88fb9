//! Least privilege, tried on the real broker and database with the accounts `taskbot setup-users`
//! makes (the harness makes them the same way): every broker user is refused each publish its
//! service must not make and allowed the ones it makes; a service cannot touch another's queues;
//! the api's database role cannot write; a service with a missing or wrong password file fails
//! saying which; no password reaches a log.

use std::time::{Duration, Instant};

use lapin::options::{BasicConsumeOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use taskbot::amqp::{self, Outgoing, PublishError, Publisher};
use taskbot::routes::Route;
use taskbot::{Config, Role, Service, Topology};
use taskbot_tests::{free_port, Deployment};

const TIMEOUT: Duration = Duration::from_secs(30);

/// `config` as `role` resolves it at start: its own user and password (a runner's: the x86_64
/// runners').
fn login(config: &Config, role: Role) -> Config {
    let mut config = config.clone();
    if role == Role::Service(Service::Runner) && config.runner.arch.is_none() {
        config.runner.arch = Some("x86_64".into());
    }
    taskbot::secrets::resolve(config, Some(role)).expect("the role's secrets")
}

/// `config` as a runner of `arch` resolves it at start (`runner --arch <arch>`).
fn runner_login(config: &Config, arch: &str) -> Config {
    let mut config = config.clone();
    config.runner.arch = Some(arch.into());
    login(&config, Role::Service(Service::Runner))
}

/// A connection and confirm-mode publisher as `role`'s broker user.
async fn connect_as(config: &Config, role: Role) -> (lapin::Connection, Publisher) {
    connect_with(login(config, role), &role.to_string()).await
}

/// A connection and confirm-mode publisher as `login`'s broker user (`who` says whose, in a
/// failure).
async fn connect_with(login: Config, who: &str) -> (lapin::Connection, Publisher) {
    let url = login.amqp.url;
    let conn = amqp::connect(&url, "taskbot-permission-test")
        .await
        .unwrap_or_else(|e| panic!("{who} logs in: {e}"));
    let publisher = Publisher::new(&conn, "taskbot-permission-test")
        .await
        .unwrap()
        .with_user_id(amqp::url_user(&url));
    (conn, publisher)
}

/// Whether the broker refused what `result` reports for want of permission.
fn refused<T: std::fmt::Debug>(result: &Result<T, impl std::fmt::Display>) -> bool {
    matches!(result, Err(e) if e.to_string().contains("ACCESS_REFUSED"))
}

/// Publish a probe to `exchange` with a key starting `key_prefix` as `role`, on a fresh channel (a
/// refusal closes the channel); the key routes nowhere, so nothing reaches a queue. An unroutable
/// message was still let in.
async fn publish_allowed(config: &Config, role: Role, exchange: &str, key_prefix: &str) -> bool {
    let (conn, publisher) = connect_as(config, role).await;
    let exchange = if exchange == "amq.default" {
        ""
    } else {
        exchange
    };
    let key = format!("{key_prefix}permission-probe");
    let probe = Outgoing::new(exchange, &key, b"{}".to_vec());
    let result = publisher.publish(&probe).await;
    let _ = conn.close(200, "probed").await;
    match result {
        Ok(()) | Err(PublishError::Unroutable { .. }) => true,
        Err(PublishError::Broker(err)) if err.to_string().contains("ACCESS_REFUSED") => false,
        Err(other) => panic!("{role} publishing to {exchange:?}: not a permission answer: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_user_publishes_only_what_its_service_publishes() {
    let d = Deployment::new("rules: []\n", &[], free_port()).await;
    let topology = Topology::for_config(&d.config);
    let mut checked = 0;
    for role in Role::ALL {
        for route in Route::ALL {
            let Some(exchange) = route.exchange(&topology) else {
                continue; // fedora-messaging is off in this deployment
            };
            let may = route.publishers().contains(&role);
            let prefix = route.key_prefix().unwrap_or_default();
            let did = publish_allowed(&d.config, role, &exchange, prefix).await;
            assert_eq!(did, may, "{role} publishing {route:?} to {exchange}");
            checked += 1;
        }
    }
    assert_eq!(checked, 8 * 7, "every role against every route");
    // The point of it all, said plainly.
    let runner = Role::Service(Service::Runner);
    assert!(!publish_allowed(&d.config, runner, &topology.run_exchange(), "").await);
    assert!(!publish_allowed(&d.config, runner, &topology.jobs_exchange(), "").await);
    assert!(publish_allowed(&d.config, runner, &topology.results_exchange(), "result.").await);
    let rules = Role::Service(Service::Rules);
    assert!(!publish_allowed(&d.config, rules, &topology.results_exchange(), "result.").await);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_may_not_touch_another_services_queues() {
    let d = Deployment::new("rules: []\n", &[], free_port()).await;
    let t = Topology::for_config(&d.config);
    let runner = Role::Service(Service::Runner);
    let (conn, _) = connect_as(&d.config, runner).await;
    let results_queue = t.postgres_results_queue();

    let channel = conn.create_channel().await.unwrap();
    let deleted = channel
        .queue_delete(&results_queue, QueueDeleteOptions::default())
        .await;
    assert!(
        refused(&deleted),
        "a runner deletes the results queue: {deleted:?}"
    );

    let channel = conn.create_channel().await.unwrap();
    let consumed = channel
        .basic_consume(
            &results_queue,
            "thief",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(
        refused(&consumed),
        "a runner consumes the results: {consumed:?}"
    );

    let channel = conn.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let own = channel
        .queue_declare(
            &t.run_queue("x86_64"),
            options,
            run_queue_args(&t, "x86_64"),
        )
        .await;
    assert!(own.is_ok(), "a runner declares its own queue: {own:?}");
    let mine = channel
        .basic_consume(
            &t.run_queue("x86_64"),
            "runner",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(mine.is_ok(), "a runner consumes its own queue: {mine:?}");

    let channel = conn.create_channel().await.unwrap();
    let exchange = channel
        .exchange_delete(&t.results_exchange(), Default::default())
        .await;
    assert!(
        refused(&exchange),
        "a runner deletes the results exchange: {exchange:?}"
    );
    let _ = conn.close(200, "done").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_of_one_arch_may_not_take_another_archs_jobs() {
    let d = Deployment::new("rules: []\n", &[], free_port()).await;
    let t = Topology::for_config(&d.config);
    assert_eq!(d.config.arches, ["x86_64", "noarch"]);
    let login = runner_login(&d.config, "noarch");
    let user = amqp::url_user(&login.amqp.url);
    assert_eq!(user, format!("{}-runner-noarch", d.config.amqp.namespace));
    let (conn, _) = connect_with(login, "the noarch runner").await;
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let channel = conn.create_channel().await.unwrap();
    let own = channel
        .queue_declare(
            &t.run_queue("noarch"),
            options,
            run_queue_args(&t, "noarch"),
        )
        .await;
    assert!(own.is_ok(), "it declares its own run queue: {own:?}");
    let mine = channel
        .basic_consume(
            &t.run_queue("noarch"),
            "runner",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(mine.is_ok(), "it consumes its own run queue: {mine:?}");

    let channel = conn.create_channel().await.unwrap();
    let other = channel
        .basic_consume(
            &t.run_queue("x86_64"),
            "thief",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert!(refused(&other), "it consumes x86_64's jobs: {other:?}");
    let channel = conn.create_channel().await.unwrap();
    let declared = channel
        .queue_declare(
            &t.run_queue("x86_64"),
            options,
            run_queue_args(&t, "x86_64"),
        )
        .await;
    assert!(
        refused(&declared),
        "it declares x86_64's queue: {declared:?}"
    );
    let channel = conn.create_channel().await.unwrap();
    let dead = taskbot::amqp::dead_letters::peek(
        &channel,
        &t.dead_letter_queue(&t.run_queue("x86_64")),
        1,
    )
    .await;
    assert!(refused(&dead), "it reads x86_64's dead letters: {dead:?}");
    let _ = conn.close(200, "done").await;

    // What every runner publishes, it still may; and no user is shared by the runners of all
    // arches any more.
    let results = t.results_exchange();
    for arch in ["x86_64", "noarch"] {
        let mut config = d.config.clone();
        config.runner.arch = Some(arch.into());
        let runner = Role::Service(Service::Runner);
        assert!(
            publish_allowed(&config, runner, &results, "result.").await,
            "{arch}"
        );
        assert!(
            !publish_allowed(&config, runner, &t.run_exchange(), "").await,
            "{arch}"
        );
    }
    assert!(!d.config.amqp.users.contains_key("runner"));
    d.shutdown().await;
}

/// The arguments the run queue of `arch` is declared with (a declaration must repeat them).
fn run_queue_args(t: &Topology, arch: &str) -> FieldTable {
    use lapin::types::AMQPValue;
    let queue = t.run_queue(arch);
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(t.dead_letter_exchange().into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(queue.into()),
    );
    args.insert(
        "x-max-priority".into(),
        AMQPValue::ShortShortUInt(taskbot::topology::MAX_PRIORITY),
    );
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_and_the_api_read_queue_figures_but_not_messages() {
    let d = Deployment::new("rules: []\n", &[], free_port()).await;
    let t = Topology::for_config(&d.config);
    for role in [Role::Cli, Role::Service(Service::Api)] {
        let management = taskbot::management::Management::new(&login(&d.config, role)).unwrap();
        let status = management.status(&d.config.amqp.namespace).await.unwrap();
        let stages: Vec<&str> = status.stages.iter().map(|s| s.stage.as_str()).collect();
        assert!(
            stages.contains(&"rules"),
            "{role} sees the queues: {stages:?}"
        );
    }
    let (conn, _) = connect_as(&d.config, Role::Cli).await;
    let channel = conn.create_channel().await.unwrap();
    let dead =
        taskbot::amqp::dead_letters::peek(&channel, &t.dead_letter_queue(&t.rules_queue()), 1)
            .await;
    assert!(
        dead.is_ok(),
        "the command line reads dead letters: {dead:?}"
    );
    let live = taskbot::amqp::dead_letters::peek(&channel, &t.rules_queue(), 1).await;
    assert!(
        refused(&live),
        "the command line takes live messages: {live:?}"
    );
    let _ = conn.close(200, "done").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_role_reads_the_store_and_cannot_write_it() {
    let d = Deployment::new("rules: []\n", &[], free_port()).await;
    let client = |role: Service| {
        let url = login(&d.config, role.into()).postgres.url;
        async move { taskbot::testing::connect_postgres(&url).await }
    };
    let api = client(Service::Api).await;
    let count = api.query_one("SELECT count(*) FROM jobs", &[]).await;
    assert!(count.is_ok(), "the api reads: {count:?}");
    let insert = api
        .batch_execute(
            "INSERT INTO jobs (job_id, state, item, item_type, arch, task_name, task_repo, \
             task_ref, rule, event_id, updated_at) VALUES (gen_random_uuid(), 'done', 'FORGED', \
             'koji_build', 'x86_64', 't', 'r', 'main', 'r', 'e', now())",
        )
        .await;
    let code = insert
        .as_ref()
        .err()
        .and_then(|e| e.code())
        .map(|c| c.code());
    assert_eq!(
        code,
        Some("42501"),
        "the api's INSERT is refused: {insert:?}"
    );
    let create = api.batch_execute("CREATE TABLE mine (x int)").await;
    assert!(create.is_err(), "the api makes a table: {create:?}");

    let reporter = client(Service::Reporter).await;
    let drop = reporter.batch_execute("DROP TABLE results").await;
    let code = drop.as_ref().err().and_then(|e| e.code()).map(|c| c.code());
    assert_eq!(
        code,
        Some("42501"),
        "the reporter drops the results: {drop:?}"
    );
    d.shutdown().await;
}

/// The rules service's log until it says `what` (or `TIMEOUT`).
fn wait_for_log(d: &Deployment, index: usize, what: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = d.services[index].log_text();
        if log.contains(what) || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_a_missing_or_wrong_password_file_says_which() {
    let rules = "rules: []\n";
    let mut d = Deployment::new(rules, &[], free_port()).await;
    let missing = d.dir.path().join("no-such-secret");
    let key = "TASKBOT_AMQP__USERS__RULES__PASSWORD_FILE";
    let index = d.start_with_env("rules", "rules", &[], &[(key, missing.to_str().unwrap())]);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = d.services[index].try_status() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running:\n{}", d.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = d.services[index].log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("amqp.users.rules.password_file"), "{log}");
    assert!(log.contains(missing.to_str().unwrap()), "{log}");

    let wrong = d.dir.path().join("wrong-secret");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let index = d.start_with_env(
        "rules-wrong",
        "rules",
        &[],
        &[(key, wrong.to_str().unwrap())],
    );
    let log = wait_for_log(&d, index, "refused the login");
    assert!(log.contains("refused the login"), "{log}");
    assert!(
        log.contains(wrong.to_str().unwrap()),
        "names the file: {log}"
    );
    assert!(!log.contains("not-the-password"), "{log}");
    assert_eq!(
        d.broker.consumers(&d.broker.topology.rules_queue()).await,
        0
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_reaches_a_log_and_guest_is_warned_about() {
    let mut d = Deployment::new("rules: []\n", &[], free_port()).await;
    d.start_all();
    d.start(
        "api",
        "api",
        &["--listen", &format!("127.0.0.1:{}", free_port())],
    );
    d.wait_until_consuming(TIMEOUT).await;
    let passwords: Vec<String> = std::fs::read_dir(d.secrets_dir())
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .map(|text| text.trim().to_string())
        .collect();
    assert_eq!(
        passwords.len(),
        7 + 2 + 2,
        "a broker user per role but the runner, one per runner arch, two database roles"
    );
    let status = std::process::Command::new(taskbot_tests::binary("taskbot"))
        .arg("status")
        .env("TASKBOT_CONFIG", &d.config_file)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout).to_string()
        + &String::from_utf8_lossy(&status.stderr);
    for s in &mut d.services {
        s.terminate(Duration::from_secs(10));
    }
    let logs = d.logs() + &shown;
    assert!(logs.contains("consuming"), "{logs}");
    for password in &passwords {
        assert!(
            !logs.contains(password.as_str()),
            "a password in the logs:\n{logs}"
        );
    }
    assert!(
        !logs.contains("guest is for local development only"),
        "{logs}"
    );

    // Without a user of its own a service logs in as the URL's guest, and says what that means.
    std::fs::write(&d.config_file, taskbot_tests::to_toml(&d.admin)).unwrap();
    let index = d.start("provisioner-as-guest", "provisioner", &[]);
    let log = wait_for_log(&d, index, "guest is for local development only");
    assert!(log.contains("guest is for local development only"), "{log}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_users_prints_the_accounts_and_delete_removes_them_keeping_the_results() {
    let db = taskbot_tests::TestDb::create().await;
    let mut admin = taskbot::testing::test_config();
    admin.postgres.url = db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("admin.toml");
    std::fs::write(&config_file, taskbot_tests::to_toml(&admin)).unwrap();
    let secrets = dir.path().join("secrets");
    let setup = |extra: &[&str]| {
        let output = std::process::Command::new(taskbot_tests::binary("taskbot"))
            .args(["setup-users", "--secrets-dir", secrets.to_str().unwrap()])
            .args(extra)
            .env("TASKBOT_CONFIG", &config_file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{stderr}");
        String::from_utf8(output.stdout).unwrap()
    };
    let snippet = setup(&[]);
    assert_eq!(setup(&[]), snippet, "running it again changes nothing");
    let snippet_file = dir.path().join("users.toml");
    std::fs::write(&snippet_file, &snippet).unwrap();
    let with_users: Config = Config::figment(Some(&snippet_file), &[]).extract().unwrap();
    assert_eq!(
        with_users.amqp.users.len(),
        Role::ALL.len() - 1 + admin.arches.len(),
        "one per role, the runners one per arch: {snippet}"
    );
    assert!(
        snippet.contains("[amqp.users.runner_x86_64]") && !snippet.contains("[amqp.users.runner]"),
        "{snippet}"
    );
    assert_eq!(with_users.postgres.users.len(), 2, "{snippet}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(secrets.join("amqp-runner_x86_64.password"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let roles = taskbot::store::roles::RoleNames::new(&admin.amqp.namespace);
    let pg = db.client().await;
    let role_count = "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)";
    let names = vec![
        roles.owner.clone(),
        roles.reporter.clone(),
        roles.api.clone(),
    ];
    let n: i64 = pg.query_one(role_count, &[&names]).await.unwrap().get(0);
    assert_eq!(n, 3);
    setup(&["--delete"]);
    let n: i64 = pg.query_one(role_count, &[&names]).await.unwrap().get(0);
    assert_eq!(n, 0, "the roles are gone");
    let results = pg.query_one("SELECT count(*) FROM results", &[]).await;
    assert!(results.is_ok(), "the tables stay: {results:?}");
    // Setting up again over those tables (now the administrator's, as in a database from
    // before the roles) hands them back to the owner, so migrations and grants work again.
    assert_eq!(setup(&[]), snippet, "the same accounts, the same passwords");
    let owners = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> $1";
    let n: i64 = pg.query_one(owners, &[&roles.owner]).await.unwrap().get(0);
    assert_eq!(n, 0, "every store table is the owner's again");
    setup(&["--delete"]);
    let management = taskbot::management::Management::new(&admin).unwrap();
    let users = management.user_names().await.unwrap();
    let prefix = format!("{}-", admin.amqp.namespace);
    assert!(!users.iter().any(|u| u.starts_with(&prefix)), "{users:?}");
    taskbot::testing::TestBroker::new(&admin)
        .await
        .cleanup()
        .await;
}
