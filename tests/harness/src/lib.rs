//! Real servers on loopback for the tests and the demo.
//!
//! Nothing here is a mock: each module starts the genuine program and waits
//! until it answers. Every process is stopped when its guard is dropped.

pub mod controlplane;
pub mod moto;
pub mod oauth_server;
pub mod operator;
pub mod process;

use std::time::{Duration, Instant};

/// Polls `check` every 250 ms until it returns `Some`, or panics after
/// `timeout` naming `what`: the way tests wait for a controller.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
