//! The deploy files (docker compose, Kubernetes, KEDA, Grafana) agree with the code: every
//! setting they give is one the worker reads, every queue and metric they name exists, and the
//! operational promises hold (grace period above the drain time, probes on the right paths,
//! ports on loopback in the demo stack). The production overlays (`deploy/production`) are
//! built as kustomize would and their merged settings parsed by the worker's own `Config`.
//! YAML is read with PyYAML from `.venv`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use genesys_worker::config::{Config, RedisTopology, ServiceUrls, Topology};
use genesys_worker::telemetry::names;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every document of a YAML file, as JSON.
fn yaml(path: &str) -> Vec<Value> {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "run scripts/test.sh (it creates .venv)");
    let output = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(root().join(path))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The environment variables the worker reads, and those of the tools around it.
fn known_settings() -> BTreeSet<String> {
    let read = RefCell::new(BTreeSet::new());
    Config::from_lookup(|name| {
        read.borrow_mut().insert(name.to_string());
        match name {
            "GENESYS_CLIENT_ID" | "GENESYS_CLIENT_SECRET" => Some("x".into()),
            _ => None,
        }
    })
    .unwrap();
    let mut known = read.into_inner();
    for tool in [
        "RUST_LOG",
        "RELAY_SECRET",
        "RELAY_QUEUE",
        "RELAY_MAX_ATTEMPTS",
        "RELAY_CONCURRENCY",
        "RELAY_BACKOFF_MS",
        "RELAY_TIMEOUT_MS",
    ] {
        known.insert(tool.to_string());
    }
    known
}

fn keys(map: &Value) -> Vec<String> {
    map.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn docker_compose_runs_the_whole_demo_stack_with_known_settings() {
    let compose = &yaml("docker-compose.yml")[0];
    let known = known_settings();
    let services = &compose["services"];
    for service in ["rabbitmq", "redis", "sandbox", "worker", "relay"] {
        assert!(services.get(service).is_some(), "service {service} missing");
    }
    for service in ["rabbitmq", "redis", "sandbox", "worker"] {
        assert!(
            services[service].get("healthcheck").is_some(),
            "{service} has no health check"
        );
    }
    for service in ["worker", "relay"] {
        for key in keys(&services[service]["environment"]) {
            assert!(known.contains(&key), "{service}: unknown setting {key}");
        }
    }
    // The drain finishes before Docker kills the worker.
    let drain: u64 = services["worker"]["environment"]["SHUTDOWN_TIMEOUT_SECS"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let grace: u64 = services["worker"]["stop_grace_period"]
        .as_str()
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(grace > drain, "stop_grace_period {grace}s ≤ drain {drain}s");
    for (name, service) in services.as_object().unwrap() {
        for port in service["ports"].as_array().into_iter().flatten() {
            assert!(
                port.as_str().unwrap().starts_with("127.0.0.1:"),
                "{name} publishes {port} beyond loopback"
            );
        }
    }
}

#[test]
fn the_kubernetes_manifests_use_known_settings_probes_and_a_long_enough_grace_period() {
    let documents = yaml("deploy/kubernetes/worker.yaml");
    let known = known_settings();
    let config = &of_kind(&documents, "ConfigMap")["data"];
    let secret = &of_kind(&documents, "Secret")["stringData"];
    for key in keys(config).into_iter().chain(keys(secret)) {
        assert!(known.contains(&key), "unknown setting {key}");
    }
    for secret_key in ["GENESYS_CLIENT_SECRET", "AMQP_URL", "REDIS_URL"] {
        assert!(secret.get(secret_key).is_some() && config.get(secret_key).is_none());
    }
    let pod = &of_kind(&documents, "Deployment")["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(container["resources"]["requests"].is_object() && container["resources"]["limits"].is_object());
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let drain: u64 = config["SHUTDOWN_TIMEOUT_SECS"].as_str().unwrap().parse().unwrap();
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} ≤ drain {drain}"
    );
    let admin_port = config["ADMIN_ADDR"].as_str().unwrap().rsplit(':').next().unwrap();
    assert_eq!(container["ports"][0]["containerPort"].to_string(), admin_port);
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/path"], "/metrics");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], admin_port);
    // The audit log's signing key: a Secret mounted, read-only, where the setting points.
    let key_file = config["AUDIT_SIGNING_KEY_FILE"]
        .as_str()
        .expect("checkpoints are signed in production");
    let mount = container["volumeMounts"]
        .as_array()
        .expect("volume mounts")
        .iter()
        .find(|m| key_file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .expect("the signing key's directory is mounted");
    assert_eq!(mount["readOnly"], true);
    let volume = pod["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert!(
        volume["secret"]["secretName"].is_string(),
        "the key comes from a Secret"
    );
    of_kind(&documents, "PodDisruptionBudget");
}

#[test]
fn keda_scales_on_both_lanes_queues() {
    let documents = yaml("deploy/kubernetes/keda-scaledobject.yaml");
    let triggers = of_kind(&documents, "ScaledObject")["spec"]["triggers"]
        .as_array()
        .unwrap();
    let queues: BTreeSet<&str> = triggers
        .iter()
        .map(|t| t["metadata"]["queueName"].as_str().unwrap())
        .collect();
    let topology = Topology::default();
    assert_eq!(queues, topology.lane_queues().into_iter().collect());
}

#[test]
fn the_grafana_dashboard_charts_every_metric_and_only_real_ones() {
    let raw = std::fs::read_to_string(root().join("deploy/grafana/genesys-worker.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&raw).unwrap();
    let mut charted = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(start) = rest.find("genesys_worker_") {
                let name: String = rest[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[start + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name)
                    .to_string();
                charted.insert(base);
            }
        }
    }
    let exported: BTreeSet<String> = names::ALL.iter().map(|n| n.to_string()).collect();
    assert_eq!(charted, exported);
    // And the README documents each.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for name in names::ALL {
        assert!(readme.contains(name), "README does not document {name}");
    }
}

/// `dir/entry` without `.` and `..` (kustomize resolves the entries of a kustomization so).
fn beside(dir: &str, entry: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for part in Path::new(dir).join(entry).components() {
        match part {
            Component::ParentDir => {
                parts.pop().expect("a path above the repository");
            }
            Component::CurDir => {}
            other => parts.push(other.as_os_str().to_string_lossy().into_owned()),
        }
    }
    parts.join("/")
}

fn strings(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|entry| entry.as_str().expect("a path"))
        .collect()
}

/// kustomize's strategic merge, as far as these files need it: maps merge key by key, lists and
/// scalars are replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// Builds the kustomization (or component) in `dir` into `into`: its resources (files, or
/// directories built on their own), then its components, then its patches. Every file it names
/// must exist and every patch must find exactly one target.
fn kustomize_into(dir: &str, into: &mut Vec<Value>) -> String {
    let file = format!("{dir}/kustomization.yaml");
    assert!(root().join(&file).is_file(), "{file} missing");
    let kustomization = yaml(&file).remove(0);
    for entry in strings(&kustomization["resources"]) {
        let path = beside(dir, entry);
        let full = root().join(&path);
        assert!(full.exists(), "{file}: resource {entry} ({path}) does not exist");
        if full.is_dir() {
            let mut base = Vec::new();
            let kind = kustomize_into(&path, &mut base);
            assert_eq!(kind, "Kustomization", "{file}: resource {entry} is a {kind}");
            into.extend(base);
        } else {
            into.extend(yaml(&path));
        }
    }
    for entry in strings(&kustomization["components"]) {
        let kind = kustomize_into(&beside(dir, entry), into);
        assert_eq!(kind, "Component", "{file}: component {entry} is a {kind}");
    }
    for patch in kustomization["patches"].as_array().into_iter().flatten() {
        let entry = patch["path"].as_str().expect("patches given by path");
        let path = beside(dir, entry);
        assert!(
            root().join(&path).is_file(),
            "{file}: patch {entry} does not exist"
        );
        for patch in yaml(&path) {
            let mut targets = into
                .iter_mut()
                .filter(|r| r["kind"] == patch["kind"] && r["metadata"]["name"] == patch["metadata"]["name"]);
            let target = targets.next().unwrap_or_else(|| {
                panic!(
                    "{path}: no {} {} to patch",
                    patch["kind"], patch["metadata"]["name"]
                )
            });
            assert!(targets.next().is_none(), "{path}: more than one target");
            merge(target, &patch);
        }
    }
    kustomization["kind"]
        .as_str()
        .unwrap_or("Kustomization")
        .to_string()
}

fn kustomize(dir: &str) -> Vec<Value> {
    let mut documents = Vec::new();
    assert_eq!(kustomize_into(dir, &mut documents), "Kustomization");
    documents
}

fn named<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The worker's environment as its pod gets it (`envFrom`: the ConfigMap, then the Secret),
/// after checking that every setting is known and that credentials stay in the Secret.
fn worker_environment(documents: &[Value]) -> BTreeMap<String, String> {
    let known = known_settings();
    let config = &named(documents, "ConfigMap", "genesys-worker")["data"];
    let secret = &named(documents, "Secret", "genesys-worker")["stringData"];
    let mut environment = BTreeMap::new();
    for map in [config, secret] {
        for (key, value) in map.as_object().unwrap() {
            assert!(known.contains(key), "unknown setting {key}");
            let value = value.as_str().unwrap_or_else(|| panic!("{key} is not a string"));
            assert!(
                environment.insert(key.clone(), value.to_string()).is_none(),
                "{key} is in both the ConfigMap and the Secret"
            );
        }
    }
    for secret_key in ["GENESYS_CLIENT_SECRET", "AMQP_URL", "REDIS_URL"] {
        assert!(secret.get(secret_key).is_some() && config.get(secret_key).is_none());
    }
    environment
}

/// The URL KEDA's RabbitMQ scaler connects to: it takes one, not a node list.
fn keda_host(documents: &[Value]) -> url::Url {
    let auth = named(documents, "TriggerAuthentication", "genesys-worker-rabbitmq");
    let reference = auth["spec"]["secretTargetRef"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("no host for KEDA");
    let secret = named(documents, "Secret", reference["name"].as_str().unwrap());
    let raw = secret["stringData"][reference["key"].as_str().unwrap()]
        .as_str()
        .expect("KEDA's host is not in the Secret");
    let nodes = ServiceUrls::parse(raw).unwrap();
    assert_eq!(nodes.nodes().len(), 1, "KEDA takes one URL, got {nodes}");
    url::Url::parse(nodes.nodes()[0].expose()).unwrap()
}

fn hosts(urls: &ServiceUrls) -> Vec<(String, u16)> {
    urls.nodes()
        .iter()
        .map(|node| {
            let url = url::Url::parse(node.expose()).unwrap();
            (
                url.host_str().unwrap().to_string(),
                url.port().expect("an explicit port"),
            )
        })
        .collect()
}

/// The production overlay in `dir`, checked for what both share: the base's Deployment and
/// PodDisruptionBudget unchanged, the worker's settings known and parsed, AMQP_URL naming each
/// node of the RabbitmqCluster, KEDA on the cluster's client Service.
fn production(dir: &str) -> Config {
    let base = kustomize("deploy/kubernetes");
    let documents = kustomize(dir);
    for kind in ["Deployment", "PodDisruptionBudget", "ScaledObject"] {
        assert_eq!(
            of_kind(&documents, kind),
            of_kind(&base, kind),
            "{dir} changes the {kind}"
        );
    }
    let pdb = &of_kind(&documents, "PodDisruptionBudget")["spec"];
    let scaled = &of_kind(&documents, "ScaledObject")["spec"];
    assert!(
        pdb["minAvailable"].as_u64().unwrap() < scaled["minReplicaCount"].as_u64().unwrap(),
        "the PodDisruptionBudget would block every eviction at the minimum replica count"
    );
    let environment = worker_environment(&documents);
    let grace = of_kind(&documents, "Deployment")["spec"]["template"]["spec"]
        ["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let drain: u64 = environment["SHUTDOWN_TIMEOUT_SECS"].parse().unwrap();
    assert!(grace > drain, "{dir}: grace {grace} ≤ drain {drain}");
    let config =
        Config::from_lookup(|name| environment.get(name).cloned()).unwrap_or_else(|e| panic!("{dir}: {e}"));

    // AMQP_URL names every node of the RabbitMQ cluster by its own address.
    let rabbitmq = of_kind(&documents, "RabbitmqCluster");
    assert_eq!(rabbitmq["apiVersion"], "rabbitmq.com/v1beta1");
    let name = rabbitmq["metadata"]["name"].as_str().unwrap();
    let namespace = rabbitmq["metadata"]["namespace"].as_str().unwrap();
    let replicas = rabbitmq["spec"]["replicas"].as_u64().unwrap();
    assert_eq!(replicas, 3);
    assert!(rabbitmq["spec"]["resources"]["limits"].is_object());
    assert!(rabbitmq["spec"]["persistence"]["storage"].is_string());
    assert!(rabbitmq["spec"]["rabbitmq"]["additionalConfig"]
        .as_str()
        .unwrap()
        .contains("cluster_partition_handling = pause_minority"));
    let amqp = hosts(&config.amqp_url);
    assert_eq!(config.amqp_url.nodes().len(), 3);
    let distinct: BTreeSet<&String> = amqp.iter().map(|(host, _)| host).collect();
    assert_eq!(distinct.len(), 3, "{dir}: AMQP_URL repeats a node: {amqp:?}");
    let expected: Vec<(String, u16)> = (0..replicas)
        .map(|i| (format!("{name}-server-{i}.{name}-nodes.{namespace}.svc"), 5672))
        .collect();
    assert_eq!(amqp, expected);
    let keda = keda_host(&documents);
    assert_eq!(keda.host_str(), Some(format!("{name}.{namespace}.svc").as_str()));
    config
}

#[test]
fn the_sentinel_overlay_runs_on_a_rabbitmq_cluster_and_redis_sentinel_with_a_replica_wait() {
    let config = production("deploy/production/sentinel");
    assert_eq!(config.redis.topology, RedisTopology::Sentinel);
    assert_eq!(config.redis.sentinel_master, "mymaster");
    assert_eq!(config.redis.wait_replicas, 1);
    assert!(config.redis.wait_timeout_ms > 0);
    let sentinels = hosts(&config.redis.urls);
    let distinct: BTreeSet<&String> = sentinels.iter().map(|(host, _)| host).collect();
    assert!(
        distinct.len() >= 3,
        "a Sentinel quorum needs three: {sentinels:?}"
    );
    assert_eq!(distinct.len(), sentinels.len(), "a Sentinel is named twice");
    assert!(sentinels.iter().all(|(_, port)| *port == 26379), "{sentinels:?}");
}

#[test]
fn the_cluster_overlay_runs_on_a_rabbitmq_cluster_and_a_redis_cluster_with_a_replica_wait() {
    let config = production("deploy/production/cluster");
    assert_eq!(config.redis.topology, RedisTopology::Cluster);
    assert_eq!(config.redis.wait_replicas, 1);
    assert!(config.redis.wait_timeout_ms > 0);
    assert!(!config.redis.urls.nodes().is_empty());
    assert!(!config.redis_key_prefix.contains(['{', '}']));
}

#[test]
fn the_base_kustomization_names_existing_files_and_gives_keda_one_url() {
    let documents = kustomize("deploy/kubernetes");
    let environment = worker_environment(&documents);
    let config = Config::from_lookup(|name| environment.get(name).cloned()).unwrap();
    assert_eq!(config.redis.topology, RedisTopology::Standalone);
    keda_host(&documents);
}

/// The commented `GENESYS_CLIENTS` examples (a pool of OAuth clients) name settings the worker
/// reads, and their values make a pool beside the single pair.
#[test]
fn the_commented_client_pool_examples_are_settings_the_worker_reads() {
    let known = known_settings();
    for file in ["deploy/kubernetes/worker.yaml", "docker-compose.yml"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let examples: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix("# GENESYS_CLIENTS"))
            .filter_map(|rest| rest.split_once(": "))
            .collect();
        assert!(!examples.is_empty(), "{file} shows no GENESYS_CLIENTS");
        for (suffix, value) in examples {
            let name = format!("GENESYS_CLIENTS{suffix}");
            assert!(known.contains(&name), "{file}: unknown setting {name}");
            if name != "GENESYS_CLIENTS" {
                continue;
            }
            let value = value.trim().to_string();
            let config = Config::from_lookup(|var| match var {
                "GENESYS_CLIENT_ID" => Some("first".into()),
                "GENESYS_CLIENT_SECRET" => Some("x".into()),
                "GENESYS_CLIENTS" => Some(value.clone()),
                _ => None,
            })
            .unwrap_or_else(|err| panic!("{file}: {err}"));
            assert!(config.genesys_clients.len() >= 2, "{file}: {value}");
            assert_eq!(config.genesys_clients[0].id, "first");
        }
    }
}
