//! The test kit shared by every integration test: real `redis-server` processes
//! ([`redis`]), the backend a behaviour test runs on ([`backend`]), in-process gateway
//! clusters ([`cluster`]), WebSocket clients ([`ws`]), one small HTTP client ([`http`]),
//! `freeim` child processes ([`process`]), free loopback ports ([`ports`]) and the HTTP API's
//! OpenAPI checker ([`openapi`]).
//!
//! Here live only the timings every test shares and [`eventually`], the one way to wait
//! for a condition. Each test binary compiles the whole kit and uses a part of it, so
//! unused items and re-exports are allowed.
#![allow(dead_code)]

mod backend;
mod cluster;
mod http;
mod openapi;
mod ports;
mod process;
mod redis;
mod ws;

#[allow(unused_imports)]
pub use self::{backend::*, cluster::*, http::*, openapi::*, ports::*, process::*, redis::*, ws::*};

use std::future::Future;
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a test watches for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(300);
/// How long a test waits for recovery after Redis comes back (reconnect back-off included).
pub const RECOVERY: Duration = Duration::from_secs(15);
/// How often a waiting test looks again.
const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it is true, failing the test after `within` ([`WAIT`] for `None`).
pub async fn eventually<F, Fut>(within: Option<Duration>, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let within = within.unwrap_or(WAIT);
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "condition not met within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}
