//! The test kit (`crates/testkit`), under the name the integration tests use for it.

pub use testkit::*;

/// Waits (up to 10 s) until the idempotency record `key` is noted `confirmed`: the worker notes
/// it just after the broker's confirm, which may be after a test has seen the event.
pub async fn wait_confirmed(key: &str) {
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let confirmed: Option<String> = redis::cmd("HGET")
            .arg(key)
            .arg("confirmed")
            .query_async(&mut conn)
            .await
            .unwrap();
        if confirmed.as_deref() == Some("1") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{key} was never noted as confirmed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
