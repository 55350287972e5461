//! Free loopback ports for the servers a test starts (Redis, gateway nodes, the demo).
//!
//! A port is bound and released at once; the window in which another test may take it is
//! tiny, and [`super::Cluster`] starts again on other ports if it loses that race.

use std::net::TcpListener;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A free `127.0.0.1:port` address, as the `--server`-style flags take it.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}
