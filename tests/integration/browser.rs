//! The browser the console's tests drive (`testkit::browser`): a headless Chromium loads the
//! worker's admin pages, and a page's input and button work under its helpers.

use std::time::Duration;

use crate::helpers::*;
use testkit::browser::{Browser, WINDOW};

#[tokio::test]
async fn a_headless_chromium_loads_the_workers_admin_pages_and_takes_screenshots() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.config.admin_addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !app
        .http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the admin server never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let browser = Browser::start().await;
    browser.goto(&format!("{base}/healthz")).await;
    // A text/plain page: Chromium shows it in a <pre>.
    let health = browser.wait_for_text("body", |text| !text.is_empty()).await;
    assert_eq!(health.trim(), "ok");
    browser.goto(&format!("{base}/metrics")).await;
    browser
        .wait_for_text("pre", |text| {
            text.contains("# TYPE genesys_worker_oldest_job_age_seconds gauge")
        })
        .await;
    assert_eq!(browser.current_url().await, format!("{base}/metrics"));

    let dir = std::env::temp_dir().join(format!("genesys-worker-screens-{}", random_name()));
    let path = dir.join("metrics.png");
    browser.screenshot_png(&path).await;
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:?}",
        &png[..png.len().min(16)]
    );
    // The IHDR chunk: width and height, big-endian, after the signature and the chunk's header.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!(width, WINDOW.0, "the screenshot is {width}x{height}");
    assert!(
        height > 0 && height <= WINDOW.1,
        "the screenshot is {width}x{height}"
    );

    // The form helpers, on a page of the test's own.
    browser
        .goto(
            "data:text/html,<input id=name value=old><button id=greet onclick=\"document.\
             getElementById('out').textContent='hello '+document.getElementById('name').value\">\
             greet</button><p id=out></p>",
        )
        .await;
    browser.fill("#name", "console").await;
    browser.click("#greet").await;
    let greeting = browser.wait_for_text("#out", |text| !text.is_empty()).await;
    assert_eq!(greeting, "hello console");
    assert_eq!(browser.text("#greet").await, "greet");

    browser.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}
