//! `freeim server`: one gateway node on Redis, until SIGTERM or SIGINT.

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use freeim::backend::{Backend, RedisBackend};
use freeim::gateway::{Gateway, GatewayError, Settings, config::ServerList};
use std::path::PathBuf;

/// Flags of `freeim server`; each also reads `FREEIM_<NAME>`, and `--config` a TOML file
/// with the same names. Flags win over variables, variables over the file.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Redis URL, e.g. redis://127.0.0.1:6379/0.
    #[arg(long, env = "FREEIM_REDIS", value_name = "URL")]
    redis: Option<String>,
    /// This node's name, as listed in --servers.
    #[arg(long, env = "FREEIM_SERVER", value_name = "HOST:PORT")]
    server: Option<String>,
    /// Every node, in the same order everywhere (routing is id mod count).
    #[arg(long, env = "FREEIM_SERVERS", value_name = "A:P,B:P")]
    servers: Option<String>,
    /// Address to listen on [default: the --server address].
    #[arg(long, env = "FREEIM_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// WebSocket path; also names the Redis keys (/ws → im_v2_ws) [default: /ws].
    #[arg(long, env = "FREEIM_PATH", value_name = "PATH")]
    path: Option<String>,
    /// Seconds between server pings [default: 25].
    #[arg(long, env = "FREEIM_PING_INTERVAL", value_name = "SECS")]
    ping_interval: Option<u64>,
    /// Seconds of silence after a ping before a socket is closed as dead [default: 25].
    #[arg(long, env = "FREEIM_PONG_TIMEOUT", value_name = "SECS")]
    pong_timeout: Option<u64>,
    /// Accept a token more than once within its TTL, as FreeIM does [default: single use].
    /// FREEIM_ALLOW_TOKEN_REUSE takes true/false, 1/0, yes/no or on/off.
    #[arg(long, env = "FREEIM_ALLOW_TOKEN_REUSE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    allow_token_reuse: bool,
    /// Outgoing bytes a socket may queue before it is closed as a slow consumer [default: 1048576].
    #[arg(long, env = "FREEIM_MAX_QUEUE_BYTES", value_name = "BYTES")]
    max_queue_bytes: Option<usize>,
    /// Seconds a graceful shutdown may take [default: 10].
    #[arg(long, env = "FREEIM_DRAIN_TIMEOUT", value_name = "SECS")]
    drain_timeout: Option<u64>,
    /// Sockets this node accepts; beyond, upgrades get 503 [default: open-file limit - 64].
    #[arg(long, env = "FREEIM_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Sockets one client id may hold on this node; beyond, upgrades get 429 [default: 32].
    #[arg(long, env = "FREEIM_MAX_SOCKETS_PER_CLIENT", value_name = "N")]
    max_sockets_per_client: Option<usize>,
    /// Frames a socket may send per second; beyond, it is closed with 1008 [default: 100].
    #[arg(long, env = "FREEIM_MAX_FRAMES_PER_SEC", value_name = "N")]
    max_frames_per_sec: Option<u32>,
    /// Origins accepted on browser upgrades, e.g. https://chat.example.com [default: any].
    #[arg(long, env = "FREEIM_ALLOWED_ORIGINS", value_name = "ORIGIN,ORIGIN")]
    allowed_origins: Option<String>,
    /// PEM certificate chain: serve wss:// (with --tls-key).
    #[arg(long, env = "FREEIM_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "FREEIM_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Worker threads [default: one per core].
    #[arg(long, env = "FREEIM_THREADS", value_name = "N", value_parser = positive)]
    threads: Option<usize>,
    /// TOML file with any of the settings above (keys are the flag names).
    #[arg(long, env = "FREEIM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ServerArgs {
    fn settings(&self) -> Settings {
        Settings {
            redis: self.redis.clone(),
            server: self.server.clone(),
            servers: self.servers.clone().map(ServerList::Csv),
            listen: self.listen.clone(),
            path: self.path.clone(),
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            allow_token_reuse: self.allow_token_reuse.then_some(true),
            max_queue_bytes: self.max_queue_bytes,
            drain_timeout: self.drain_timeout,
            max_connections: self.max_connections,
            max_sockets_per_client: self.max_sockets_per_client,
            max_frames_per_sec: self.max_frames_per_sec,
            allowed_origins: self.allowed_origins.clone().map(ServerList::Csv),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let listen_flag = if args.listen.is_some() { "--listen" } else { "--server" };
    let (redis, config) = args.settings().or(file).resolve()?;
    super::runtime(args.threads)?.block_on(async {
        // Inside the runtime: opening the Redis connection manager spawns its tasks.
        let backend = Backend::Redis(RedisBackend::open(&redis)?);
        let gateway = Gateway::start(config, backend).await.map_err(|e| match e {
            GatewayError::Bind { .. } => anyhow::Error::new(e).context(listen_flag),
            e => e.into(),
        })?;
        wait_for_signal().await?;
        let left = gateway.shutdown().await;
        anyhow::ensure!(left == 0, "{left} sockets were still open at the drain timeout");
        Ok(())
    })
}

/// A count of at least 1.
pub fn positive(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("SIGINT received") }
    }
    Ok(())
}
