//! Gateway settings: parsed from flags, `FREEIM_*` variables and a TOML file, validated
//! into a typed [`GatewayConfig`]. Every error names the flag it is about.
//!
//! Precedence: command line, then environment (both handled by the binary's argument
//! parser), then the `--config` file, then the defaults below.

use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default seconds between two server pings of a socket.
pub const DEFAULT_PING_INTERVAL: u64 = 25;
/// Default seconds a socket may stay silent after a ping before it is closed.
pub const DEFAULT_PONG_TIMEOUT: u64 = 25;
/// Default bytes a socket may have waiting for the kernel before it is closed as a slow
/// consumer (1008). Large enough for thousands of chat messages; small enough that 19k
/// stuck sockets cannot exhaust the node.
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 1024 * 1024;
/// Default seconds a shutdown waits for sockets to close and presence to be cleaned.
pub const DEFAULT_DRAIN_TIMEOUT: u64 = 10;
/// Default sockets one client id may hold on one node (devices, tabs); beyond, upgrades get 429.
pub const DEFAULT_MAX_SOCKETS_PER_CLIENT: usize = 32;
/// Default frames a socket may send per second; beyond, it is closed with 1008. FreeIM
/// clients send nothing but control frames (browsers send through the business API).
pub const DEFAULT_MAX_FRAMES_PER_SEC: u32 = 100;
/// File descriptors kept free for Redis, logs and the listener when the default connection
/// limit is derived from the process's open-file limit.
const RESERVED_FDS: u64 = 64;
/// A WebSocket handshake (request, token lookup, answer) must complete within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// This node's name, as listed in `servers` (its node channel is `{P}Server{server}`).
    pub server: String,
    /// The ordered node list, identical on every node and business app.
    pub servers: Vec<String>,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// WebSocket path (`/ws`); also names the Redis keys.
    pub path: String,
    /// Seconds between pings.
    pub ping_interval: Duration,
    /// Silence allowed after a ping.
    pub pong_timeout: Duration,
    /// Accept a token more than once during its TTL, as FreeIM does (default: single use).
    pub allow_token_reuse: bool,
    /// Outgoing bytes a socket may have queued before it is closed as a slow consumer.
    pub max_queue_bytes: usize,
    /// How long a graceful shutdown may take.
    pub drain_timeout: Duration,
    /// Sockets this node accepts; beyond, upgrades get 503. Default: the process's open-file
    /// limit minus a reserve, so the node refuses cleanly instead of failing `accept`.
    pub max_connections: usize,
    /// Sockets one client id may hold on this node; beyond, upgrades get 429.
    pub max_sockets_per_client: usize,
    /// Frames a socket may send per second; beyond, it is closed with 1008.
    pub max_frames_per_sec: u32,
    /// `Origin` values accepted on upgrades (exact match, e.g. `https://chat.example.com`);
    /// empty: any origin, as FreeIM. Requests without an `Origin` (non-browsers) pass.
    pub allowed_origins: Vec<String>,
    /// Serve `wss://` with this TLS configuration; `None`: plain `ws://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl GatewayConfig {
    /// Defaults for node `server` of `servers`, listening on the `server` address.
    pub fn new(server: &str, servers: &[&str]) -> Result<Self, ConfigError> {
        Settings {
            server: Some(server.to_owned()),
            servers: Some(ServerList::List(servers.iter().map(|s| s.to_string()).collect())),
            ..Settings::default()
        }
        .resolve_gateway()
    }
}

/// A configuration problem; the message names the flag and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is missing.
    #[error("--{0} is required (flag, FREEIM_{env} variable or `{0}` in --config)", env = .0.to_uppercase().replace('-', "_"))]
    Missing(&'static str),
    /// A setting has an unusable value.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Why it is unusable.
        reason: String,
    },
    /// The config file cannot be read or parsed.
    #[error("--config {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { flag, reason: reason.into() }
}

/// The node list, as `A:P,B:P` or (in TOML) an array.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ServerList {
    /// Comma-separated.
    Csv(String),
    /// One entry per node.
    List(Vec<String>),
}

impl ServerList {
    fn into_vec(self) -> Vec<String> {
        match self {
            ServerList::Csv(s) => s.split(',').map(|s| s.trim().to_owned()).collect(),
            ServerList::List(list) => list.into_iter().map(|s| s.trim().to_owned()).collect(),
        }
    }
}

/// Unvalidated settings from one source; the file format of `--config` (keys are the flag
/// names, e.g. `ping-interval = 25`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// `--redis`
    pub redis: Option<String>,
    /// `--server`
    pub server: Option<String>,
    /// `--servers`
    pub servers: Option<ServerList>,
    /// `--listen`
    pub listen: Option<String>,
    /// `--path`
    pub path: Option<String>,
    /// `--ping-interval`
    pub ping_interval: Option<u64>,
    /// `--pong-timeout`
    pub pong_timeout: Option<u64>,
    /// `--allow-token-reuse`
    pub allow_token_reuse: Option<bool>,
    /// `--max-queue-bytes`
    pub max_queue_bytes: Option<usize>,
    /// `--drain-timeout`
    pub drain_timeout: Option<u64>,
    /// `--max-connections`
    pub max_connections: Option<usize>,
    /// `--max-sockets-per-client`
    pub max_sockets_per_client: Option<usize>,
    /// `--max-frames-per-sec`
    pub max_frames_per_sec: Option<u32>,
    /// `--allowed-origins`
    pub allowed_origins: Option<ServerList>,
    /// `--tls-cert`: PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`: PEM private key.
    pub tls_key: Option<PathBuf>,
}

/// A TOML error on one line, with where it is: the line number and the key on that line.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let Some(start) = e.span().map(|s| s.start) else {
        return e.message().to_owned();
    };
    let line_no = text.get(..start).map_or(0, |before| before.matches('\n').count()) + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    match line.split_once('=').map(|(key, _)| key.trim()) {
        Some(key) if !key.is_empty() => format!("line {line_no}, `{key}`: {}", e.message()),
        _ => format!("line {line_no}: {}", e.message()),
    }
}

impl Settings {
    /// Parses TOML text; an error names the line and the key: "line 2, `ping-interval`:
    /// invalid type: string \"x\", expected u64".
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| describe_toml_error(text, &e))
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file_error = |reason: String| ConfigError::File { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        Self::from_toml(&text).map_err(file_error)
    }

    /// Each setting of `self`, or else of `fallback`.
    pub fn or(self, fallback: Settings) -> Settings {
        Settings {
            redis: self.redis.or(fallback.redis),
            server: self.server.or(fallback.server),
            servers: self.servers.or(fallback.servers),
            listen: self.listen.or(fallback.listen),
            path: self.path.or(fallback.path),
            ping_interval: self.ping_interval.or(fallback.ping_interval),
            pong_timeout: self.pong_timeout.or(fallback.pong_timeout),
            allow_token_reuse: self.allow_token_reuse.or(fallback.allow_token_reuse),
            max_queue_bytes: self.max_queue_bytes.or(fallback.max_queue_bytes),
            drain_timeout: self.drain_timeout.or(fallback.drain_timeout),
            max_connections: self.max_connections.or(fallback.max_connections),
            max_sockets_per_client: self.max_sockets_per_client.or(fallback.max_sockets_per_client),
            max_frames_per_sec: self.max_frames_per_sec.or(fallback.max_frames_per_sec),
            allowed_origins: self.allowed_origins.or(fallback.allowed_origins),
            tls_cert: self.tls_cert.or(fallback.tls_cert),
            tls_key: self.tls_key.or(fallback.tls_key),
        }
    }

    /// Validates into the Redis URL and a [`GatewayConfig`].
    pub fn resolve(mut self) -> Result<(String, GatewayConfig), ConfigError> {
        let redis = self.redis.take().ok_or(ConfigError::Missing("redis"))?;
        redis::Client::open(redis.as_str())
            .map_err(|e| invalid("redis", format!("{redis:?} is not a Redis URL: {e}")))?;
        Ok((redis, self.resolve_gateway()?))
    }

    /// Validates into a [`GatewayConfig`], ignoring `redis` (for the in-process broker).
    pub fn resolve_gateway(self) -> Result<GatewayConfig, ConfigError> {
        let servers = self.servers.ok_or(ConfigError::Missing("servers"))?.into_vec();
        for s in &servers {
            check_node_name(s).map_err(|reason| invalid("servers", reason))?;
        }
        let server = self.server.ok_or(ConfigError::Missing("server"))?;
        if !servers.contains(&server) {
            return Err(invalid("server", format!("{server:?} is not in --servers ({})", servers.join(","))));
        }
        let listen_text = self.listen.unwrap_or_else(|| server.clone());
        let listen_flag = if listen_text == server { "server" } else { "listen" };
        let listen = resolve_addr(&listen_text).map_err(|reason| invalid(listen_flag, reason))?;
        let path = self.path.unwrap_or_else(|| "/ws".to_owned());
        if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#', ' ']) {
            return Err(invalid("path", format!("{path:?} must start with '/' and hold no '?', '#' or space")));
        }
        let seconds = |flag, value: Option<u64>, default| match value.unwrap_or(default) {
            0 => Err(invalid(flag, "must be at least 1 second")),
            n => Ok(Duration::from_secs(n)),
        };
        let max_queue_bytes = self.max_queue_bytes.unwrap_or(DEFAULT_MAX_QUEUE_BYTES);
        if max_queue_bytes < 1024 {
            return Err(invalid("max-queue-bytes", "must be at least 1024"));
        }
        let at_least_one = |flag, value: Option<usize>, default: usize| match value.unwrap_or(default) {
            0 => Err(invalid(flag, "must be at least 1")),
            n => Ok(n),
        };
        let max_frames_per_sec = self.max_frames_per_sec.unwrap_or(DEFAULT_MAX_FRAMES_PER_SEC);
        if max_frames_per_sec == 0 {
            return Err(invalid("max-frames-per-sec", "must be at least 1"));
        }
        let allowed_origins = self.allowed_origins.map(ServerList::into_vec).unwrap_or_default();
        if let Some(o) = allowed_origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://"))) {
            return Err(invalid("allowed-origins", format!("{o:?} is not an origin like https://host[:port]")));
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(_), None) => return Err(invalid("tls-key", "is required with --tls-cert")),
            (None, Some(_)) => return Err(invalid("tls-cert", "is required with --tls-key")),
            (Some(cert), Some(key)) => Some(super::tls::load(&cert, &key).map_err(|(flag, why)| invalid(flag, why))?),
        };
        Ok(GatewayConfig {
            tls,
            max_connections: at_least_one("max-connections", self.max_connections, default_max_connections())?,
            max_sockets_per_client: at_least_one(
                "max-sockets-per-client",
                self.max_sockets_per_client,
                DEFAULT_MAX_SOCKETS_PER_CLIENT,
            )?,
            max_frames_per_sec,
            allowed_origins,
            ping_interval: seconds("ping-interval", self.ping_interval, DEFAULT_PING_INTERVAL)?,
            pong_timeout: seconds("pong-timeout", self.pong_timeout, DEFAULT_PONG_TIMEOUT)?,
            drain_timeout: seconds("drain-timeout", self.drain_timeout, DEFAULT_DRAIN_TIMEOUT)?,
            allow_token_reuse: self.allow_token_reuse.unwrap_or(false),
            max_queue_bytes,
            server,
            servers,
            listen,
            path,
        })
    }
}

/// The open-file limit of this process minus [`RESERVED_FDS`].
fn default_max_connections() -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let files = if ok && limit.rlim_cur != libc::RLIM_INFINITY { limit.rlim_cur } else { 1 << 20 };
    files.saturating_sub(RESERVED_FDS).max(1) as usize
}

/// A node name must be `HOST:PORT`.
fn check_node_name(name: &str) -> Result<(), String> {
    let (host, port) = name.rsplit_once(':').ok_or_else(|| format!("{name:?} is not HOST:PORT"))?;
    if host.is_empty() || host.contains(char::is_whitespace) || port.parse::<u16>().is_err() {
        return Err(format!("{name:?} is not HOST:PORT"));
    }
    Ok(())
}

fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let mut addrs = text.to_socket_addrs().map_err(|e| format!("cannot listen on {text:?}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{text:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Settings {
        Settings::from_toml(toml).unwrap()
    }

    #[test]
    fn defaults_and_listen_from_server() {
        let (redis, c) = settings(
            "redis = 'redis://127.0.0.1:6379/0'\nserver = '127.0.0.1:6001'\nservers = '127.0.0.1:6001,127.0.0.1:6002'",
        )
        .resolve()
        .unwrap();
        assert_eq!(redis, "redis://127.0.0.1:6379/0");
        assert_eq!(c.listen, "127.0.0.1:6001".parse().unwrap());
        assert_eq!(c.servers, ["127.0.0.1:6001", "127.0.0.1:6002"]);
        assert_eq!((c.path.as_str(), c.ping_interval.as_secs(), c.pong_timeout.as_secs()), ("/ws", 25, 25));
        assert!(!c.allow_token_reuse);
    }

    #[test]
    fn flags_win_over_the_file() {
        let cli = Settings { ping_interval: Some(5), ..Settings::default() };
        let file = settings(
            "redis = 'redis://h'\nserver = '127.0.0.1:1'\nservers = ['127.0.0.1:1']\nping-interval = 9\npong-timeout = 7",
        );
        let (_, c) = cli.or(file).resolve().unwrap();
        assert_eq!((c.ping_interval.as_secs(), c.pong_timeout.as_secs()), (5, 7));
    }

    #[test]
    fn errors_name_the_flag() {
        let base = "redis = 'redis://h'\nservers = '127.0.0.1:1,127.0.0.2:2'\n";
        let cases = [
            ("servers = '127.0.0.1:1'\nserver = '127.0.0.1:1'", "--redis is required"),
            ("redis = 'http://x'\nserver = '127.0.0.1:1'\nservers = '127.0.0.1:1'", "--redis: "),
            (
                &format!("{base}server = '127.0.0.3:3'") as &str,
                "--server: \"127.0.0.3:3\" is not in --servers (127.0.0.1:1,127.0.0.2:2)",
            ),
            ("redis = 'redis://h'\nserver = 'a'\nservers = 'a'", "--servers: \"a\" is not HOST:PORT"),
            (&format!("{base}server = '127.0.0.1:1'\nping-interval = 0"), "--ping-interval: must be at least 1 second"),
            (&format!("{base}server = '127.0.0.1:1'\npath = 'ws'"), "--path: "),
            (&format!("{base}server = '127.0.0.1:1'\nlisten = 'nohost'"), "--listen: "),
            (&format!("{base}server = '127.0.0.1:1'\nmax-connections = 0"), "--max-connections: must be at least 1"),
            (&format!("{base}server = '127.0.0.1:1'\nallowed-origins = 'example.com'"), "--allowed-origins: "),
        ];
        for (toml, want) in cases {
            let err = settings(toml).resolve().unwrap_err().to_string();
            assert!(err.starts_with(want), "{toml}: got {err}");
        }
        assert!(Settings::from_toml("bogus = 1").unwrap_err().contains("unknown field"));
        let err = Settings::from_toml("redis = 'redis://r'\nping-interval = 'x'").unwrap_err();
        assert_eq!(err, "line 2, `ping-interval`: invalid type: string \"x\", expected u64");
    }
}
