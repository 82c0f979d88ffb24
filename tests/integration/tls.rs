//! TLS: the worker keeps its Redis over `rediss://` (the crates' rustls), verifying the server
//! against the trust store, here a CA the test makes (`SSL_CERT_FILE`, read by rustls' native
//! certificate loader, as for amqps:// and the HTTPS to Genesys).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::json;

use crate::helpers::{agent_job, free_port, random_name, spawn_app_without_worker, start_worker_process};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success(), "openssl {args:?}");
}

/// A CA and a certificate for `localhost` signed by it, in `dir`.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=genesys-worker test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
}

struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_tls_redis(dir: &Path) -> TlsRedis {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
        ])
        .args([
            "--tls-cert-file",
            "server.pem",
            "--tls-key-file",
            "server.key",
            "--tls-ca-cert-file",
            "ca.pem",
        ])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            ".",
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    TlsRedis { child, port }
}

#[tokio::test]
async fn the_worker_runs_over_rediss_with_a_trusted_certificate_and_refuses_an_untrusted_one() {
    let dir = std::env::temp_dir().join(format!("genesys-worker-tls-{}", random_name()));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let redis = start_tls_redis(&dir).await;
    let url = format!("rediss://localhost:{}/", redis.port);
    let mut app = spawn_app_without_worker(
        SandboxConfig {
            users: 5,
            ..SandboxConfig::default()
        },
        &[("REDIS_URL", url.as_str())],
    )
    .await;

    // Not trusting the test CA, the worker refuses the server and says so.
    let mut untrusting = start_worker_process(&app.env);
    let status = untrusting.wait(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| !s.success()), "{}", untrusting.log_text());
    let log = untrusting.log_text().to_lowercase();
    assert!(log.contains("certificate") || log.contains("tls"), "{log}");

    // Trusting it: a job runs end to end, its idempotency record and chain kept over TLS.
    let mut env = app.env.clone();
    env.insert(
        "SSL_CERT_FILE".into(),
        dir.join("ca.pem").to_string_lossy().into(),
    );
    let mut worker = start_worker_process(&env);
    app.publish(&agent_job(user_id(1), json!({"presence": "Break"})))
        .await;
    let event = app.audit_events(1).await.remove(0);
    assert_eq!(event.event.outcome, Outcome::Applied, "{}", worker.log_text());
    assert_eq!(event.event.entity_version, 1);
    worker.terminate();
    worker.wait(Duration::from_secs(10)).await;
    drop(redis);
    app.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_worker_consumes_and_publishes_over_amqps() {
    use genesys_worker::broker::{self, topology, Publisher};
    use genesys_worker::config::{Config, ServiceUrls};
    use lapin::BasicProperties;

    let tls_port = free_port();
    let rabbit = crate::helpers::PrivateRabbit::start_with(|dir| {
        make_certificates(dir);
        let path = |file: &str| dir.join(file).display().to_string();
        format!(
            "listeners.ssl.default = {tls_port}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            path("ca.pem"),
            path("server.pem"),
            path("server.key"),
        )
    })
    .await;
    let sandbox = genesys_sandbox::spawn(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            users: 5,
            ..SandboxConfig::default()
        },
    )
    .await
    .unwrap();
    let amqps = format!("amqps://guest:guest@localhost:{tls_port}/%2f");
    let mut env = crate::helpers::test_env(&sandbox, &random_name(), &[("AMQP_URL", amqps.as_str())]);
    env.insert(
        "SSL_CERT_FILE".into(),
        rabbit.dir().join("ca.pem").display().to_string(),
    );
    let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();

    // The test itself talks plain AMQP to the same node.
    let plain = broker::connect(&ServiceUrls::parse(&rabbit.url()).unwrap())
        .await
        .unwrap();
    let channel = plain.create_channel().await.unwrap();
    topology::declare(&plain, &config.topology).await.unwrap();
    let mut audit = crate::helpers::capture(&channel, &config.topology.audit_exchange).await;
    let mut worker = start_worker_process(&env);
    let job = agent_job(user_id(2), json!({"presence": "Meal"}));
    Publisher::open(&plain)
        .await
        .unwrap()
        .publish(
            &config.topology.jobs_exchange,
            "agent.status",
            &serde_json::to_vec(&job).unwrap(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap();
    let events: Vec<crate::helpers::Arrived<genesys_worker::events::AuditEvent>> =
        crate::helpers::next_n(&mut audit, 1, "audit").await;
    assert_eq!(events[0].event.outcome, Outcome::Applied, "{}", worker.log_text());
    assert_eq!(
        events[0].event.job_id.to_string(),
        job["job_id"].as_str().unwrap()
    );
    worker.terminate();
    worker.wait(Duration::from_secs(10)).await;
}
