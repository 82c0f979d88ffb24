//! HTTP ingest: `POST /v1/jobs` with a bearer token, validated, published with confirms; and
//! what a caller can make the ingest and admin servers hold: the token is checked before the
//! body is read, bodies are read within a budget, and slow or idle connections are closed.

use std::time::{Duration, Instant};

use genesys_sandbox::{user_id, SandboxConfig};
use genesys_worker::events::Outcome;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{agent_job, free_port, spawn_app_with, spawn_app_without_worker};

const TOKEN: &str = "ingest-test-token-5b1f";

#[tokio::test]
async fn jobs_posted_with_the_token_are_published_and_anything_else_is_refused() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 10,
            ..SandboxConfig::default()
        },
        &[
            ("INGEST_ADDR", addr.as_str()),
            ("INGEST_TOKEN", TOKEN),
            ("MAX_MESSAGE_BYTES", "2048"),
            ("MAX_BATCH_MESSAGE_BYTES", "4096"),
        ],
    )
    .await;
    let url = format!("http://{addr}/v1/jobs");
    let http = reqwest::Client::new();
    // The listener comes up with the worker.
    for _ in 0..50 {
        if http.post(&url).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // No token, a wrong token: 401, nothing published.
    let single = agent_job(user_id(1), json!({"presence": "Available"}));
    let response = http.post(&url).json(&single).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let response = http
        .post(&url)
        .bearer_auth("ingest-test-token-5b1e")
        .json(&single)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // One invalid job in an NDJSON body refuses the whole request, naming it.
    let mut invalid = agent_job(user_id(2), json!({"presence": "Break"}));
    invalid["payload"]["user_id"] = json!("nope");
    let body = format!(
        "{}\n{}\n",
        agent_job(user_id(3), json!({"presence": "Meal"})),
        invalid
    );
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let refused: Value = response.json().await.unwrap();
    assert_eq!(refused["jobs"][0]["line"], 2);
    assert_eq!(refused["jobs"][0]["code"], "invalid_payload");
    assert_eq!(refused["jobs"].as_array().unwrap().len(), 1);

    // Too large: 413.
    let oversized = format!(
        "{{\"job_id\":\"{}\",\"pad\":\"{}\"}}",
        uuid::Uuid::new_v4(),
        "x".repeat(5000)
    );
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    app.assert_no_more_events().await;

    // A job, then an NDJSON list: 202 with the ids, and applied.
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&single)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["accepted"], json!([single["job_id"]]));
    let list = [
        agent_job(user_id(4), json!({"presence": "Break"})),
        agent_job(user_id(5), json!({"presence": "Meal"})),
    ];
    let body = list.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
    let response = http
        .post(&url)
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(
        accepted["accepted"],
        json!([list[0]["job_id"], list[1]["job_id"]])
    );
    let events = app.audit_events(3).await;
    assert!(events.iter().all(|e| e.event.outcome == Outcome::Applied));
    assert_eq!(app.user(user_id(5)).await["presence"], "Meal");
    app.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut app = spawn_app_with(
        SandboxConfig {
            users: 10,
            ..SandboxConfig::default()
        },
        &[("INGEST_ADDR", addr.as_str()), ("INGEST_TOKEN", TOKEN)],
    )
    .await;
    wait_for_listener(&addr).await;
    let url = format!("http://{addr}/v1/jobs");
    for (user, scheme) in [(1, "bearer"), (2, "BEARER")] {
        let job = agent_job(user_id(user), json!({"presence": "Break"}));
        let response = app
            .http
            .post(&url)
            .header("authorization", format!("{scheme} {TOKEN}"))
            .json(&job)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "scheme {scheme:?}");
    }
    let events = app.audit_events(2).await;
    assert!(events.iter().all(|e| e.event.outcome == Outcome::Applied));
    app.stop().await;
}

/// What a body of the largest size declares.
const LARGE_BODY: usize = 16 * 1024 * 1024;

#[tokio::test]
async fn unauthenticated_uploads_are_refused_before_their_body_is_read_and_memory_stays_bounded() {
    let port = free_port();
    // All interfaces, not loopback: the worker warns about it.
    let bind = format!("0.0.0.0:{port}");
    let app = spawn_app_without_worker(
        SandboxConfig::default(),
        &[("INGEST_ADDR", bind.as_str()), ("INGEST_TOKEN", TOKEN)],
    )
    .await;
    let worker = app.start_worker_process();
    let addr = format!("127.0.0.1:{port}");
    wait_for_listener(&addr).await;
    let pid = worker.child.id();
    let before = memory_kib(pid);

    // 80 callers at once, each declaring a 16 MiB body and sending it as fast as the server
    // takes it (a slow link: 64 KiB every 20 ms); half with no token, half with a wrong one.
    let uploads = (0..80).map(|i| {
        let addr = addr.clone();
        async move {
            let auth = if i % 2 == 0 {
                String::new()
            } else {
                "Authorization: Bearer not-the-ingest-token-0000\r\n".to_string()
            };
            let head = format!(
                "POST /v1/jobs HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json\r\n\
                 Content-Length: {LARGE_BODY}\r\n{auth}\r\n"
            );
            upload(&addr, head, LARGE_BODY, Duration::from_millis(20)).await
        }
    });
    let answers = futures_util::future::join_all(uploads).await;
    let after = memory_kib(pid);
    eprintln!("worker memory (KiB): before {before:?}, after {after:?} (rss, peak)");
    for (i, (status, elapsed)) in answers.iter().enumerate() {
        assert_eq!(
            *status,
            Some(401),
            "caller {i}: answered {status:?} after {elapsed:?}"
        );
        assert!(
            *elapsed < Duration::from_secs(2),
            "caller {i}: 401 only after {elapsed:?}: the body was read first"
        );
    }
    assert!(
        after.1.saturating_sub(before.0) < 64 * 1024,
        "the worker's peak resident set grew from {} KiB to {} KiB",
        before.0,
        after.1
    );
    assert!(after.0 < 150 * 1024, "{} KiB resident after the uploads", after.0);
    assert!(
        worker.log_text().contains("put TLS in front"),
        "no warning for a non-loopback INGEST_ADDR:\n{}",
        worker.log_text()
    );
    drop(worker);
    app.stop().await;
}

#[tokio::test]
async fn idle_and_slow_connections_are_closed_on_the_ingest_and_admin_servers() {
    let addr = format!("127.0.0.1:{}", free_port());
    let app = spawn_app_with(
        SandboxConfig::default(),
        &[("INGEST_ADDR", addr.as_str()), ("INGEST_TOKEN", TOKEN)],
    )
    .await;
    wait_for_listener(&addr).await;
    let admin = app.config.admin_addr.to_string();
    wait_for_listener(&admin).await;

    // Connected, nothing sent.
    let silent = |addr: String| async move {
        let stream = TcpStream::connect(&addr).await.unwrap();
        closed_after(stream, None).await
    };
    // Headers sent a line a second, never finished (slowloris).
    let dribbling = |addr: String| async move {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: ingest\r\n")
            .await
            .unwrap();
        closed_after(stream, Some(b"X-Pad: 1\r\n")).await
    };
    // One request answered, then idle on a keep-alive connection.
    let idle_after_request = |addr: String| async move {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
            .await
            .unwrap();
        let (status, _) = read_response_head(&mut stream).await;
        assert_eq!(status, Some(200));
        let mut body = [0u8; 3];
        stream.read_exact(&mut body).await.unwrap();
        closed_after(stream, None).await
    };
    let (ingest_silent, ingest_dribbling, admin_silent, admin_dribbling, admin_idle) = tokio::join!(
        silent(addr.clone()),
        dribbling(addr.clone()),
        silent(admin.clone()),
        dribbling(admin.clone()),
        idle_after_request(admin.clone()),
    );
    for (what, closed) in [
        ("ingest, silent", ingest_silent),
        ("ingest, headers never finished", ingest_dribbling),
        ("admin, silent", admin_silent),
        ("admin, headers never finished", admin_dribbling),
        ("admin, idle after a request", admin_idle),
    ] {
        let closed = closed.unwrap_or_else(|| panic!("{what}: still open after 10 s"));
        // The header-read timeout is 5 s on both servers.
        assert!(
            (Duration::from_secs(4)..Duration::from_secs(8)).contains(&closed),
            "{what}: closed after {closed:?}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn bodies_are_read_within_a_budget_and_a_stalled_body_times_out() {
    let addr = format!("127.0.0.1:{}", free_port());
    let app = spawn_app_with(
        SandboxConfig {
            users: 10,
            ..SandboxConfig::default()
        },
        &[
            ("INGEST_ADDR", addr.as_str()),
            ("INGEST_TOKEN", TOKEN),
            ("MAX_MESSAGE_BYTES", "2048"),
            ("MAX_BATCH_MESSAGE_BYTES", "4096"),
        ],
    )
    .await;
    wait_for_listener(&addr).await;
    // Room for two bodies of the largest size: two stalled uploads fill it.
    let stalled_upload = |addr: String| async move {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/jobs HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 4096\r\n\r\n{{\"job_id\":"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream
    };
    let mut first = stalled_upload(addr.clone()).await;
    let mut second = stalled_upload(addr.clone()).await;
    let stalled_at = Instant::now();
    // Let both be admitted before the third.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = stalled_upload(addr.clone()).await;

    // No token: 401 at once, budget or not.
    let response = app
        .http
        .post(format!("http://{addr}/v1/jobs"))
        .body("{}")
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // The third waits for room, then is told to come back.
    let started = Instant::now();
    let (status, head) = tokio::time::timeout(Duration::from_secs(10), read_response_head(&mut third))
        .await
        .expect("the third upload is answered");
    assert_eq!(status, Some(503), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 5"), "{head}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // The stalled bodies are given up after 10 s without a byte: 408, and the room is free.
    for stream in [&mut first, &mut second] {
        let (status, head) = tokio::time::timeout(Duration::from_secs(15), read_response_head(stream))
            .await
            .expect("a stalled upload is answered");
        assert_eq!(status, Some(408), "{head}");
    }
    let stalled_for = stalled_at.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(14)).contains(&stalled_for),
        "{stalled_for:?}"
    );
    let job = agent_job(user_id(1), json!({"presence": "Meal"}));
    let response = app
        .http
        .post(format!("http://{addr}/v1/jobs"))
        .bearer_auth(TOKEN)
        .json(&job)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    app.stop().await;
}

#[tokio::test]
async fn the_largest_bodies_with_every_job_invalid_keep_the_worker_within_its_memory() {
    let addr = format!("127.0.0.1:{}", free_port());
    let app = spawn_app_without_worker(
        SandboxConfig::default(),
        &[("INGEST_ADDR", addr.as_str()), ("INGEST_TOKEN", TOKEN)],
    )
    .await;
    let worker = app.start_worker_process();
    wait_for_listener(&addr).await;
    let pid = worker.child.id();
    let before = memory_kib(pid);
    // 16 MiB of NDJSON, about 90,000 invalid jobs, twice at once (the budget's two bodies).
    let mut invalid = agent_job(user_id(2), json!({"presence": "Break"}));
    invalid["payload"]["user_id"] = json!("nope");
    let line = invalid.to_string();
    let lines = (LARGE_BODY - 1024) / (line.len() + 1);
    let body = vec![line.as_str(); lines].join("\n");
    let url = format!("http://{addr}/v1/jobs");
    let send = || app.http.post(&url).bearer_auth(TOKEN).body(body.clone()).send();
    let (a, b) = tokio::join!(send(), send());
    for response in [a.unwrap(), b.unwrap()] {
        assert_eq!(response.status(), 400);
        let refused: Value = response.json().await.unwrap();
        assert_eq!(refused["jobs"].as_array().unwrap().len(), 100);
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{lines} invalid job(s) (the first 100 listed)")),
            "{message}"
        );
    }
    let after = memory_kib(pid);
    eprintln!("worker memory (KiB): before {before:?}, after {after:?} (rss, peak)");
    assert!(
        after.1.saturating_sub(before.0) < 128 * 1024,
        "the worker's peak resident set grew from {} KiB to {} KiB",
        before.0,
        after.1
    );
    drop(worker);
    app.stop().await;
}

/// Waits until `addr` accepts connections (the listener comes up with the worker).
async fn wait_for_listener(addr: &str) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("nothing listens on {addr}");
}

/// Sends `head`, then a body of `length` bytes in 64 KiB chunks `pause` apart until the server
/// stops taking it; returns the answer's status and how long after the headers it came.
async fn upload(addr: &str, head: String, length: usize, pause: Duration) -> (Option<u16>, Duration) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let sending = tokio::spawn(async move {
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < length {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
            tokio::time::sleep(pause).await;
        }
    });
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response_head(&mut reader)).await;
    let elapsed = started.elapsed();
    sending.abort();
    (answer.ok().and_then(|(status, _)| status), elapsed)
}

/// Reads a response's head: its status (`None` when the connection ended first) and text.
async fn read_response_head(stream: &mut (impl AsyncRead + Unpin)) -> (Option<u16>, String) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .filter(|_| head.ends_with(b"\r\n\r\n"));
    (status, text)
}

/// How long until the server closes `stream` (within 10 s), sending `dribble` every second
/// meanwhile when given; anything the server sends first is skipped.
async fn closed_after(mut stream: TcpStream, dribble: Option<&[u8]>) -> Option<Duration> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 1024];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            },
            _ = tick.tick(), if dribble.is_some() => {
                // A write may fail once the server has closed; the read then says so.
                let _ = stream.write_all(dribble.unwrap_or_default()).await;
            }
            () = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// A process's resident set and its peak, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}
