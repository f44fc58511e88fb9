//! The Kubernetes manifests in deploy/k8s parse, and agree with the code: every service has a
//! Deployment whose probes and metrics annotation use the port its configuration listens on (the
//! default port, on all interfaces), one runner Deployment per arch pinned to that arch's nodes,
//! and one KEDA ScaledObject per arch on that arch's run queue as shared/src/topology.rs names it.
//! No cluster is needed: this reads the files.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use taskbot::Service;
use taskbot::{Config, Topology};
use taskbot_tests::workspace_root;

fn k8s_dir() -> PathBuf {
    workspace_root().join("deploy/k8s")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
}

/// Every document of every manifest, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&k8s_dir(), &mut files);
    assert!(!files.is_empty(), "no manifests in {}", k8s_dir().display());
    let mut docs = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Documents are separated by `---` lines (none of these files uses `---` otherwise).
        let mut chunks = vec![String::new()];
        for line in text.lines() {
            if line.trim_end() == "---" {
                chunks.push(String::new());
            } else if let Some(chunk) = chunks.last_mut() {
                chunk.push_str(line);
                chunk.push('\n');
            }
        }
        for chunk in chunks {
            let value: Value = serde_norway::from_str(&chunk)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            docs.push((file.clone(), value));
        }
    }
    docs
}

fn of_kind<'a>(docs: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

fn port(address: &str) -> u16 {
    address
        .parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("{address}: {e}"))
        .port()
}

/// The configuration the pods read: the ConfigMap's taskbot.toml, loaded as the services load it.
fn deployed_config(docs: &[(PathBuf, Value)]) -> Config {
    let maps = of_kind(docs, "ConfigMap");
    let map = maps
        .iter()
        .find(|m| name(m) == "taskbot-config")
        .expect("ConfigMap taskbot-config");
    let toml = map["data"]["taskbot.toml"].as_str().expect("taskbot.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("taskbot.toml");
    std::fs::write(&file, toml).unwrap();
    Config::figment(Some(&file), &[])
        .extract()
        .unwrap_or_else(|e| panic!("the ConfigMap's taskbot.toml is refused: {e}"))
}

#[test]
fn every_manifest_parses_and_the_kustomization_lists_them() {
    let docs = documents();
    for (file, doc) in &docs {
        assert!(
            doc["apiVersion"].is_string() && doc["kind"].is_string(),
            "{}: a document without apiVersion/kind",
            file.display()
        );
        if doc["kind"] != "Kustomization" {
            assert!(
                !name(doc).is_empty(),
                "{}: unnamed {}",
                file.display(),
                doc["kind"]
            );
        }
    }
    let kustomization = of_kind(&docs, "Kustomization");
    assert_eq!(kustomization.len(), 1);
    let listed: BTreeSet<String> = kustomization[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs deploy/k8s/*.yaml"
    );
}

#[test]
fn probes_and_metrics_annotations_use_the_configured_default_ports() {
    let docs = documents();
    let config = deployed_config(&docs);
    let defaults = Config::default();
    let secrets: BTreeMap<&str, &Value> = of_kind(&docs, "Secret")
        .into_iter()
        .map(|s| (name(s), &s["stringData"]))
        .collect();
    let mut seen = BTreeSet::new();
    for deployment in of_kind(&docs, "Deployment") {
        let pod = &deployment["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        let binary = container["command"][0].as_str().expect("a command");
        seen.insert(binary.to_string());
        let what = format!("Deployment {}", name(deployment));
        let (address, default) = if binary == "api" {
            (config.api.listen.as_str(), "0.0.0.0:8080")
        } else {
            let service = Service::from_name(binary)
                .unwrap_or_else(|| panic!("{what}: {binary} is not a Taskbot service"));
            let address = config
                .ops_listen(service)
                .unwrap_or_else(|| panic!("{what}: {binary} has no ops endpoints"));
            (address, defaults.ops_listen(service).unwrap())
        };
        let expected = port(address);
        assert_eq!(expected, port(default), "{what}: not the default port");
        assert!(
            address.starts_with("0.0.0.0:"),
            "{what}: {address} is not reachable by the kubelet"
        );
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{what}: {probe}");
            assert_eq!(get["port"], expected, "{what}: {probe} port");
        }
        assert_eq!(
            container["ports"][0]["containerPort"], expected,
            "{what}: containerPort"
        );
        let annotations = &pod["metadata"]["annotations"];
        if binary == "api" {
            assert_eq!(annotations["prometheus.io/scrape"], "false", "{what}");
        } else {
            assert_eq!(annotations["prometheus.io/scrape"], "true", "{what}");
            assert_eq!(
                annotations["prometheus.io/port"],
                expected.to_string(),
                "{what}: metrics port annotation"
            );
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{what}");
        }
        // The config file is where TASKBOT_CONFIG says, and the secrets it names exist.
        let env = container["env"].as_array().expect("env");
        let config_path = env
            .iter()
            .find(|e| e["name"] == "TASKBOT_CONFIG")
            .and_then(|e| e["value"].as_str())
            .expect("TASKBOT_CONFIG");
        let mounted = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| {
                m["name"] == "config"
                    && Path::new(config_path).parent()
                        == Some(Path::new(m["mountPath"].as_str().unwrap()))
            });
        assert!(mounted, "{what}: {config_path} is not mounted");
        for e in env {
            let Some(key_ref) = e.get("valueFrom").map(|v| &v["secretKeyRef"]) else {
                continue;
            };
            let secret = secrets
                .get(key_ref["name"].as_str().unwrap())
                .unwrap_or_else(|| panic!("{what}: no Secret {}", key_ref["name"]));
            assert!(
                secret[key_ref["key"].as_str().unwrap()].is_string(),
                "{what}: Secret has no key {}",
                key_ref["key"]
            );
        }
    }
    let services: BTreeSet<String> = Service::ALL.iter().map(|s| s.name().to_string()).collect();
    assert_eq!(seen, services, "a Deployment per service");
}

#[test]
fn one_pinned_runner_and_one_queue_scaler_per_arch() {
    let docs = documents();
    let config = deployed_config(&docs);
    let topology = Topology::new(&config.amqp.namespace, &config.arches);
    let node_arch = |arch: &str| match arch {
        "aarch64" => "arm64",
        "x86_64" | "noarch" => "amd64",
        other => panic!("no Kubernetes node arch known for {other}"),
    };
    let runners: Vec<&Value> = of_kind(&docs, "Deployment")
        .into_iter()
        .filter(|d| d["spec"]["template"]["spec"]["containers"][0]["command"][0] == "runner")
        .collect();
    let scalers = of_kind(&docs, "ScaledObject");
    let auths: BTreeSet<&str> = of_kind(&docs, "TriggerAuthentication")
        .into_iter()
        .map(name)
        .collect();
    assert_eq!(runners.len(), config.arches.len());
    assert_eq!(scalers.len(), config.arches.len());
    for arch in &config.arches {
        let runner = runners
            .iter()
            .find(|d| {
                let args = &d["spec"]["template"]["spec"]["containers"][0]["args"];
                args[0] == "--arch" && args[1] == arch.as_str()
            })
            .unwrap_or_else(|| panic!("no runner Deployment for {arch}"));
        assert_eq!(
            runner["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"],
            node_arch(arch),
            "runner {arch}"
        );
        let scaler = scalers
            .iter()
            .find(|s| s["spec"]["scaleTargetRef"]["name"] == name(runner))
            .unwrap_or_else(|| panic!("no ScaledObject for {}", name(runner)));
        let trigger = &scaler["spec"]["triggers"][0];
        assert_eq!(trigger["type"], "rabbitmq");
        assert_eq!(trigger["metadata"]["queueName"], topology.run_queue(arch));
        assert_eq!(trigger["metadata"]["mode"], "QueueLength");
        // Only the management API counts unacked (running) jobs; see runners.yaml.
        assert_eq!(trigger["metadata"]["protocol"], "http");
        let auth = trigger["authenticationRef"]["name"].as_str().unwrap();
        assert!(auths.contains(auth), "no TriggerAuthentication {auth}");
    }
}

#[test]
fn each_service_mounts_only_its_own_secrets_and_they_hold_its_password_files() {
    let docs = documents();
    let config = deployed_config(&docs);
    let secrets: BTreeMap<&str, &Value> = of_kind(&docs, "Secret")
        .into_iter()
        .map(|s| (name(s), &s["stringData"]))
        .collect();
    for deployment in of_kind(&docs, "Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        let binary = pod["containers"][0]["command"][0].as_str().unwrap();
        let role = taskbot::Role::from(Service::from_name(binary).unwrap());
        let what = format!("Deployment {}", name(deployment));
        // Its `[amqp.users.<key>]`: a runner's is its arch's own (`runner_<arch>`).
        let key = match pod["containers"][0]["args"].as_array() {
            Some(args) if role == taskbot::Role::from(Service::Runner) => {
                assert_eq!(args[0], "--arch", "{what}");
                taskbot::identity::runner_arch_key(args[1].as_str().unwrap())
            }
            _ => role.key().to_string(),
        };
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "secrets")
            .unwrap_or_else(|| panic!("{what}: no secrets volume"));
        let secret_name = volume["secret"]["secretName"].as_str().unwrap();
        // Secret names take no `_` (DNS names): `taskbot-runner-x86-64`.
        let own_secret = format!("taskbot-{}", key.replace('_', "-"));
        assert_eq!(secret_name, own_secret, "{what}");
        let secret = secrets[secret_name];
        let mount = pod["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "secrets")
            .unwrap_or_else(|| panic!("{what}: secrets not mounted"));
        let dir = Path::new(mount["mountPath"].as_str().unwrap());
        let account = config.amqp.users.get(&key);
        let account = account.unwrap_or_else(|| panic!("{what}: no [amqp.users.{key}]"));
        let mut files = vec![account.password_file.clone()];
        if let Some(account) = config.postgres.users.get(role.key()) {
            files.push(account.password_file.clone());
        }
        for file in files {
            let file = file.unwrap_or_else(|| panic!("{what}: no password_file"));
            assert_eq!(
                file.parent(),
                Some(dir),
                "{what}: {} not mounted",
                file.display()
            );
            let key = file.file_name().unwrap().to_str().unwrap();
            assert!(
                secret[key].is_string(),
                "{what}: {secret_name} has no {key}"
            );
        }
        // The administrators' URLs are for the setup Job only.
        let env = pod["containers"][0]["env"].as_array().unwrap();
        assert!(
            env.iter().all(|e| e.get("valueFrom").is_none()),
            "{what}: a secret in the environment (a task could read it)"
        );
    }
    let jobs = of_kind(&docs, "Job");
    assert_eq!(jobs.len(), 1, "the setup-users Job");
    let command = &jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"];
    assert_eq!(command[1], "setup-users");
    // The Job sees every service's Secret, to make each user with the password its service has.
    let projected: BTreeSet<&str> = jobs[0]["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["projected"]["sources"].as_array())
        .flatten()
        .filter_map(|source| source["secret"]["name"].as_str())
        .collect();
    let services: BTreeSet<&str> = secrets
        .keys()
        .copied()
        .filter(|s| *s != "taskbot-secrets")
        .collect();
    assert_eq!(projected, services, "the setup Job's secrets");
    // The users config.yaml names are those `taskbot setup-users` makes, a runner user per arch.
    let made: BTreeSet<String> = taskbot::accounts::broker_users(&Topology::for_config(&config))
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    let named: BTreeSet<String> = config.amqp.users.keys().cloned().collect();
    assert_eq!(named, made);
    for (key, account) in &config.amqp.users {
        let name = taskbot::accounts::amqp_user_name(&config.amqp.namespace, key);
        assert_eq!(account.name, name, "[amqp.users.{key}]");
    }
}
