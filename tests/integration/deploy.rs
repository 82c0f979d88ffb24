//! The deploy files (docker compose, Kubernetes, KEDA, Grafana) agree with the code: every
//! setting they give is one the worker reads, every queue and metric they name exists, and the
//! operational promises hold (grace period above the drain time, probes on the right paths,
//! ports on loopback in the demo stack). YAML is read with PyYAML from `.venv`.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use genesys_worker::config::{Config, Topology};
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
