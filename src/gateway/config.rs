//! Gateway settings: parsed from flags, `FREEIM_*` variables and a TOML file, validated
//! into a typed [`GatewayConfig`]. Every error names the flag it is about.
//!
//! Each setting is declared once, as a field of [`Settings`]: that field is its `--config`
//! key, and (with the `cli` feature) its flag, variable and help, whose default note is
//! read from the `DEFAULT_*` constant below. Precedence: command line, then environment
//! (both handled by the binary's argument parser), then the `--config` file, then the
//! defaults below.

use crate::client::{DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL};
use crate::cluster_names::{DEFAULT_PATH, check_node_name, check_path};
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
/// Smallest `--max-queue-bytes` accepted: below, a single chat message could not be queued.
const MIN_QUEUE_BYTES: usize = 1024;
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
/// Default largest HTTP API request body: 1 MiB, the default largest message of a send.
pub const DEFAULT_API_MAX_BODY: usize = 1024 * 1024;
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
    /// Durable messages kept in this node's log (a Redis stream trimmed to about this many
    /// entries); a resume from before them is not recovered.
    pub history_size: u64,
    /// How long a durable message stays in this node's log.
    pub history_ttl: Duration,
    /// Keep the channel members of this node's clients in memory, updated by the changes
    /// our join and leave scripts publish (default). Off: read them from Redis for each
    /// batch of channel messages, as FreeIM does; needed when a .NET ImHelper (FreeIM's own
    /// scripts, which publish nothing) joins or leaves channels.
    pub chan_cache: bool,
    /// The HTTP API (`POST /api/<method>`); `None`: no API, `/api/…` answers 404.
    pub api: Option<ApiConfig>,
}

/// The HTTP API's settings (docs/API.md).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The keys a call may present; more than one while a key is rotated.
    pub keys: ApiKeys,
    /// Serve the API here instead of on the node's listener (plain HTTP: keep it private).
    pub listen: Option<SocketAddr>,
    /// Largest request body; beyond, 413.
    pub max_body: usize,
}

impl ApiConfig {
    /// The API on the node's listener with `keys` and the default body limit.
    pub fn new(keys: ApiKeys) -> Self {
        ApiConfig { keys, listen: None, max_body: DEFAULT_API_MAX_BODY }
    }
}

/// API keys. Their `Debug` shows how many there are, never a key, so that no log line can
/// hold one.
#[derive(Clone)]
pub struct ApiKeys(Vec<String>);

impl ApiKeys {
    /// At least one key, each of printable ASCII without spaces (what a header value can
    /// carry as is).
    pub fn new<S: Into<String>>(keys: impl IntoIterator<Item = S>) -> Result<Self, ConfigError> {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let printable = |k: &String| !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic());
        if keys.is_empty() || !keys.iter().all(printable) {
            // The key is not echoed: it is a secret.
            return Err(invalid("api-key", "each key must be printable ASCII without spaces, at least 1 character"));
        }
        Ok(ApiKeys(keys))
    }

    /// The keys, for the constant-time comparison (`api::auth`).
    pub(crate) fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} redacted)", self.0.len())
    }
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

/// A list setting (the nodes, the origins): `A,B` from a flag, a variable or a TOML string,
/// or a TOML array.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ServerList {
    /// Comma-separated.
    Csv(String),
    /// One entry per item.
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

/// A flag's or a variable's value is comma-separated.
impl From<String> for ServerList {
    fn from(csv: String) -> Self {
        ServerList::Csv(csv)
    }
}

/// A help text ending in clap's `[default: …]` note, taken from the constant so the two
/// cannot drift apart.
#[cfg(feature = "cli")]
pub fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

/// Declares [`Settings`] and [`Settings::or`] from one field list, so a new setting cannot
/// be left out of the merge of its sources.
macro_rules! settings {
    ($(#[$attr:meta])* pub struct Settings { $($(#[$field_attr:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$attr])*
        pub struct Settings {
            $($(#[$field_attr])* pub $field: $ty,)*
        }

        impl Settings {
            /// Each setting of `self`, or else of `fallback`.
            pub fn or(self, fallback: Settings) -> Settings {
                Settings { $($field: self.$field.or(fallback.$field),)* }
            }
        }
    };
}

settings! {
    /// Unvalidated settings from one source. Each field is written once: its flag, its
    /// `FREEIM_*` variable and its help (with the `cli` feature, this is the argument group
    /// of `freeim server`), and its key in the `--config` file (the flag's name, e.g.
    /// `ping-interval = 25`). `--redis`, `--servers` and `--path` are keys here, but their
    /// flags belong to the binary's cluster group, shared with `ctl`, `demo` and `bench`.
    #[derive(Debug, Clone, Default, Deserialize)]
    #[cfg_attr(feature = "cli", derive(clap::Args))]
    #[serde(deny_unknown_fields, rename_all = "kebab-case")]
    pub struct Settings {
        /// `--redis`: the cluster's Redis URL.
        #[cfg_attr(feature = "cli", arg(skip))]
        pub redis: Option<String>,
        /// `--server`: see [`GatewayConfig::server`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_SERVER", value_name = "HOST:PORT",
            help = "This node's name, as listed in --servers"))]
        pub server: Option<String>,
        /// `--servers`: see [`GatewayConfig::servers`].
        #[cfg_attr(feature = "cli", arg(skip))]
        pub servers: Option<ServerList>,
        /// `--listen`: see [`GatewayConfig::listen`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_LISTEN", value_name = "ADDR",
            help = with_default("Address to listen on", "the --server address")))]
        pub listen: Option<String>,
        /// `--path`: see [`GatewayConfig::path`].
        #[cfg_attr(feature = "cli", arg(skip))]
        pub path: Option<String>,
        /// `--ping-interval`: see [`GatewayConfig::ping_interval`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_PING_INTERVAL", value_name = "SECS",
            help = with_default("Seconds between server pings", DEFAULT_PING_INTERVAL)))]
        pub ping_interval: Option<u64>,
        /// `--pong-timeout`: see [`GatewayConfig::pong_timeout`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_PONG_TIMEOUT", value_name = "SECS",
            help = with_default("Seconds of silence after a ping before a socket is closed as dead",
                DEFAULT_PONG_TIMEOUT)))]
        pub pong_timeout: Option<u64>,
        /// `--allow-token-reuse`: see [`GatewayConfig::allow_token_reuse`]. A flag without a
        /// value; the variable takes true/false, 1/0, yes/no or on/off.
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_ALLOW_TOKEN_REUSE", num_args = 0,
            default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new(),
            help = with_default("Accept a token more than once within its TTL, as FreeIM does; \
                FREEIM_ALLOW_TOKEN_REUSE takes true/false, 1/0, yes/no or on/off", "single use")))]
        pub allow_token_reuse: Option<bool>,
        /// `--max-queue-bytes`: see [`GatewayConfig::max_queue_bytes`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_MAX_QUEUE_BYTES", value_name = "BYTES",
            help = with_default("Outgoing bytes a socket may queue before it is closed as a slow consumer",
                DEFAULT_MAX_QUEUE_BYTES)))]
        pub max_queue_bytes: Option<usize>,
        /// `--drain-timeout`: see [`GatewayConfig::drain_timeout`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_DRAIN_TIMEOUT", value_name = "SECS",
            help = with_default("Seconds a graceful shutdown may take", DEFAULT_DRAIN_TIMEOUT)))]
        pub drain_timeout: Option<u64>,
        /// `--max-connections`: see [`GatewayConfig::max_connections`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_MAX_CONNECTIONS", value_name = "N",
            help = with_default("Sockets this node accepts; beyond, upgrades get 503",
                format!("open-file limit - {RESERVED_FDS}"))))]
        pub max_connections: Option<usize>,
        /// `--max-sockets-per-client`: see [`GatewayConfig::max_sockets_per_client`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_MAX_SOCKETS_PER_CLIENT", value_name = "N",
            help = with_default("Sockets one client id may hold on this node; beyond, upgrades get 429",
                DEFAULT_MAX_SOCKETS_PER_CLIENT)))]
        pub max_sockets_per_client: Option<usize>,
        /// `--max-frames-per-sec`: see [`GatewayConfig::max_frames_per_sec`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_MAX_FRAMES_PER_SEC", value_name = "N",
            help = with_default("Frames a socket may send per second; beyond, it is closed with 1008",
                DEFAULT_MAX_FRAMES_PER_SEC)))]
        pub max_frames_per_sec: Option<u32>,
        /// `--allowed-origins`: see [`GatewayConfig::allowed_origins`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_ALLOWED_ORIGINS", value_name = "ORIGIN,ORIGIN",
            help = with_default("Origins accepted on browser upgrades, e.g. https://chat.example.com", "any")))]
        pub allowed_origins: Option<ServerList>,
        /// `--tls-cert`: PEM certificate chain; see [`GatewayConfig::tls`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_TLS_CERT", value_name = "FILE",
            help = "PEM certificate chain: serve wss:// (with --tls-key)"))]
        pub tls_cert: Option<PathBuf>,
        /// `--tls-key`: PEM private key of `--tls-cert`.
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_TLS_KEY", value_name = "FILE",
            help = "PEM private key of --tls-cert"))]
        pub tls_key: Option<PathBuf>,
        /// `--history-size`: see [`GatewayConfig::history_size`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_HISTORY_SIZE", value_name = "N",
            help = with_default("Durable messages kept in this node's log; a resume from before them is \
                not recovered", DEFAULT_HISTORY_SIZE)))]
        pub history_size: Option<u64>,
        /// `--history-ttl`: see [`GatewayConfig::history_ttl`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_HISTORY_TTL", value_name = "SECS",
            help = with_default("Seconds a durable message stays in this node's log",
                DEFAULT_HISTORY_TTL.as_secs())))]
        pub history_ttl: Option<u64>,
        /// `--chan-cache`: see [`GatewayConfig::chan_cache`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_CHAN_CACHE", value_name = "on|off",
            value_parser = clap::builder::BoolishValueParser::new(),
            help = with_default("Keep channel members in memory; off: read them from Redis per batch of \
                channel messages, as FreeIM (needed when a .NET ImHelper joins or leaves channels)", "on")))]
        pub chan_cache: Option<bool>,
        /// `--api-key`: see [`ApiConfig::keys`]. Repeat the flag, or give a comma list.
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_API_KEY", value_name = "KEY", value_delimiter = ',',
            help = with_default("Enable the HTTP API (POST /api/<method>) for callers presenting this key; \
                repeat or comma-separate for rotation", "no API: /api/ answers 404")))]
        #[serde(default, deserialize_with = "list_setting")]
        pub api_key: Option<Vec<String>>,
        /// `--api-listen`: see [`ApiConfig::listen`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_API_LISTEN", value_name = "ADDR",
            help = with_default("Serve the HTTP API on this address (plain HTTP) instead of the node's listener",
                "the node's listener")))]
        pub api_listen: Option<String>,
        /// `--api-max-body`: see [`ApiConfig::max_body`].
        #[cfg_attr(feature = "cli", arg(long, env = "FREEIM_API_MAX_BODY", value_name = "BYTES",
            help = with_default("Largest HTTP API request body; beyond, 413", DEFAULT_API_MAX_BODY)))]
        pub api_max_body: Option<usize>,
    }
}

/// A list setting in a `--config` file: a comma-separated string or an array.
fn list_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    Ok(Some(ServerList::deserialize(d)?.into_vec()))
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

    /// Validates into the Redis URL and a [`GatewayConfig`].
    pub fn resolve(mut self) -> Result<(String, GatewayConfig), ConfigError> {
        let redis = self.redis.take().ok_or(ConfigError::Missing("redis"))?;
        redis::Client::open(redis.as_str())
            // The URL is not echoed: it may hold a password.
            .map_err(|e| invalid("redis", format!("not a Redis URL (redis://[:PASSWORD@]HOST:PORT/DB): {e}")))?;
        Ok((redis, self.resolve_gateway()?))
    }

    /// Validates into a [`GatewayConfig`], ignoring `redis` (for the in-process broker).
    pub fn resolve_gateway(self) -> Result<GatewayConfig, ConfigError> {
        let (server, servers) = resolve_nodes(self.server, self.servers)?;
        let listen_text = self.listen.unwrap_or_else(|| server.clone());
        let listen_flag = if listen_text == server { "server" } else { "listen" };
        let listen = resolve_addr(&listen_text).map_err(|reason| invalid(listen_flag, reason))?;
        let path = self.path.unwrap_or_else(|| DEFAULT_PATH.to_owned());
        check_path(&path).map_err(|e| invalid("path", e.to_string()))?;
        let max_queue_bytes = self.max_queue_bytes.unwrap_or(DEFAULT_MAX_QUEUE_BYTES);
        if max_queue_bytes < MIN_QUEUE_BYTES {
            return Err(invalid("max-queue-bytes", format!("must be at least {MIN_QUEUE_BYTES}")));
        }
        let max_frames_per_sec = self.max_frames_per_sec.unwrap_or(DEFAULT_MAX_FRAMES_PER_SEC);
        if max_frames_per_sec == 0 {
            return Err(invalid("max-frames-per-sec", "must be at least 1"));
        }
        let history_size = self.history_size.unwrap_or(DEFAULT_HISTORY_SIZE);
        if history_size == 0 {
            return Err(invalid("history-size", "must be at least 1"));
        }
        Ok(GatewayConfig {
            chan_cache: self.chan_cache.unwrap_or(true),
            api: resolve_api(self.api_key, self.api_listen, self.api_max_body)?,
            history_size,
            history_ttl: seconds("history-ttl", self.history_ttl, DEFAULT_HISTORY_TTL.as_secs())?,
            allowed_origins: resolve_origins(self.allowed_origins)?,
            tls: resolve_tls(self.tls_cert, self.tls_key)?,
            max_connections: at_least_one("max-connections", self.max_connections, default_max_connections())?,
            max_sockets_per_client: at_least_one(
                "max-sockets-per-client",
                self.max_sockets_per_client,
                DEFAULT_MAX_SOCKETS_PER_CLIENT,
            )?,
            max_frames_per_sec,
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

/// The node list, each a `HOST:PORT`, and this node's name, one of them.
fn resolve_nodes(server: Option<String>, servers: Option<ServerList>) -> Result<(String, Vec<String>), ConfigError> {
    let servers = servers.ok_or(ConfigError::Missing("servers"))?.into_vec();
    for s in &servers {
        check_node_name(s).map_err(|e| invalid("servers", e.to_string()))?;
    }
    let server = server.ok_or(ConfigError::Missing("server"))?;
    if !servers.contains(&server) {
        return Err(invalid("server", format!("{server:?} is not in --servers ({})", servers.join(","))));
    }
    Ok((server, servers))
}

/// The API when keys are given; `--api-listen` needs them.
fn resolve_api(
    keys: Option<Vec<String>>,
    listen: Option<String>,
    max_body: Option<usize>,
) -> Result<Option<ApiConfig>, ConfigError> {
    let Some(keys) = keys else {
        return match listen {
            Some(_) => Err(invalid("api-listen", "needs --api-key (without a key there is no API)")),
            None => Ok(None),
        };
    };
    let listen = listen.map(|l| resolve_addr(&l).map_err(|reason| invalid("api-listen", reason))).transpose()?;
    let max_body = at_least_one("api-max-body", max_body, DEFAULT_API_MAX_BODY)?;
    Ok(Some(ApiConfig { keys: ApiKeys::new(keys)?, listen, max_body }))
}

/// Origins are `http://…` or `https://…`; none given: any origin.
fn resolve_origins(origins: Option<ServerList>) -> Result<Vec<String>, ConfigError> {
    let origins = origins.map(ServerList::into_vec).unwrap_or_default();
    match origins.iter().find(|o| !(o.starts_with("http://") || o.starts_with("https://"))) {
        Some(o) => Err(invalid("allowed-origins", format!("{o:?} is not an origin like https://host[:port]"))),
        None => Ok(origins),
    }
}

/// TLS needs both files or neither.
fn resolve_tls(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(invalid("tls-key", "is required with --tls-cert")),
        (None, Some(_)) => Err(invalid("tls-cert", "is required with --tls-key")),
        (Some(cert), Some(key)) => super::tls::load(&cert, &key).map(Some).map_err(|(flag, why)| invalid(flag, why)),
    }
}

/// A duration setting of at least one second.
fn seconds(flag: &'static str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(flag, "must be at least 1 second")),
        n => Ok(Duration::from_secs(n)),
    }
}

/// A count setting of at least one.
fn at_least_one(flag: &'static str, value: Option<usize>, default: usize) -> Result<usize, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(flag, "must be at least 1")),
        n => Ok(n),
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
    fn a_bad_redis_url_is_not_echoed() {
        let err = settings("redis = 'http://user:s3cret@h'\nserver = '127.0.0.1:1'\nservers = '127.0.0.1:1'")
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("--redis: not a Redis URL") && !err.contains("s3cret"), "{err}");
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
            (&format!("{base}server = '127.0.0.1:1'\napi-listen = '127.0.0.1:9'"), "--api-listen: needs --api-key"),
            (&format!("{base}server = '127.0.0.1:1'\napi-key = 'a,b c'"), "--api-key: each key must be printable"),
        ];
        for (toml, want) in cases {
            let err = settings(toml).resolve().unwrap_err().to_string();
            assert!(err.starts_with(want), "{toml}: got {err}");
        }
        assert!(Settings::from_toml("bogus = 1").unwrap_err().contains("unknown field"));
        let err = Settings::from_toml("redis = 'redis://r'\nping-interval = 'x'").unwrap_err();
        assert_eq!(err, "line 2, `ping-interval`: invalid type: string \"x\", expected u64");
    }

    #[test]
    fn api_keys_come_as_a_list_or_a_comma_string_and_never_print() {
        let base = "redis = 'redis://h'\nservers = '127.0.0.1:1'\nserver = '127.0.0.1:1'\n";
        for keys in ["api-key = 'k1,k2'", "api-key = ['k1', 'k2']"] {
            let (_, c) = settings(&format!("{base}{keys}")).resolve().unwrap();
            let api = c.api.expect("keys enable the API");
            assert_eq!(api.keys.as_slice(), ["k1", "k2"]);
            assert_eq!((api.listen, api.max_body), (None, DEFAULT_API_MAX_BODY));
            assert_eq!(format!("{api:?}").matches("k1").count(), 0, "{api:?}");
        }
        assert!(settings(base).resolve().unwrap().1.api.is_none());
    }

    /// Every flag reads `FREEIM_<FLAG>`, the variable [`ConfigError::Missing`] names.
    #[cfg(feature = "cli")]
    #[test]
    fn every_flag_reads_its_freeim_variable() {
        use clap::Args;
        let command = Settings::augment_args(clap::Command::new("server"));
        let flags: Vec<&clap::Arg> = command.get_arguments().collect();
        assert!(flags.len() > 10, "{flags:?}");
        for flag in flags {
            let long = flag.get_long().expect("every setting is a long flag");
            let env = flag.get_env().and_then(|e| e.to_str());
            assert_eq!(env, Some(format!("FREEIM_{}", long.to_uppercase().replace('-', "_")).as_str()), "--{long}");
        }
    }

    #[cfg(feature = "cli")]
    #[test]
    fn flags_and_variables_parse_into_settings() {
        use clap::{Args, FromArgMatches};
        let command = Settings::augment_args(clap::Command::new("server"));
        let parse = |args: &[&str]| {
            let matches = command.clone().try_get_matches_from(std::iter::once("server").chain(args.iter().copied()));
            Settings::from_arg_matches(&matches.unwrap()).unwrap()
        };
        let s = parse(&["--allow-token-reuse", "--ping-interval", "5", "--allowed-origins", "https://a,https://b"]);
        assert_eq!((s.allow_token_reuse, s.ping_interval), (Some(true), Some(5)));
        assert_eq!(s.allowed_origins, Some(ServerList::Csv("https://a,https://b".into())));
        let s = parse(&["--api-key", "a,b", "--api-key", "c"]);
        assert_eq!(s.api_key, Some(vec!["a".to_owned(), "b".to_owned(), "c".to_owned()]));
        let s = parse(&[]);
        assert_eq!((s.allow_token_reuse, s.ping_interval, s.redis), (None, None, None));
    }
}
