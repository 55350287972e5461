//! The demo business app: FreeIM's demo routes, a chat page, and `freeim.js`.
//!
//! FreeIM ships a sample business app (`WebApi`) whose routes hand browsers connect URLs
//! and turn form posts into `ImHelper` calls. We serve the same routes, byte-compatible, so
//! FreeIM's own page works against us, plus what a usable chat needs beyond them (leave a
//! channel, who is online, nicknames), and a chat page that uses them.
//!
//! It runs two ways:
//! - `freeim` alone ([`run_all_in_one`]): a gateway and this app in one process on the
//!   in-process broker, so `cargo run --release` is a working chat with no Redis;
//! - `freeim demo` ([`run`]): this app alone, against a real cluster through Redis.
//!
//! Files: [`routes`] (one handler per route), [`state`] (what the routes share), [`input`]
//! (form fields and their limits), [`error`] (failures and their HTTP answers), [`roster`]
//! (the online list, nicknames and joined channels), [`tracker`] (keeps the roster live from
//! the event bus), [`rejoin`] (channels joined again after a Redis restart), [`broadcast`]
//! (roster changes pushed to pages), [`channels`] (the channel list pages show), [`assets`]
//! (the embedded page and scripts).

mod assets;
mod broadcast;
mod channels;
mod error;
mod input;
mod rejoin;
mod roster;
mod routes;
mod state;
mod tracker;

use self::roster::Roster;
use self::state::App;
use super::cluster::ConnectArgs;
use anyhow::{Context, anyhow};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use clap::Args;
use freeim::backend::{Backend, MemoryBackend, RedisBackend};
use freeim::gateway::{ApiConfig, ApiKeys, ConfigError, Gateway, GatewayConfig};
use freeim::{ImClient, ImClientOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where the chat page is served unless `--listen` says otherwise (FreeIM's demo port).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Where the all-in-one gateway listens unless `--gateway` says otherwise.
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:6001";
/// How long `freeim demo` waits for Redis to answer at start before giving up.
const REDIS_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of `freeim` with no subcommand: the all-in-one demo.
#[derive(Debug, Args)]
pub struct QuickArgs {
    /// All-in-one demo: address of the chat page and its business routes.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// All-in-one demo: address of the gateway (the browsers' WebSocket endpoint).
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_GATEWAY)]
    gateway: String,
    /// All-in-one demo: key of the gateway's HTTP API (POST /api/<method>) [default: a
    /// random key, printed at start]
    #[arg(long, env = "FREEIM_API_KEY", value_name = "KEY")]
    api_key: Option<String>,
}

/// Characters of the API key the quick start makes up when none is given.
const QUICK_API_KEY_LEN: usize = 32;

/// Flags of `freeim demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Address of the chat page and its business routes.
    #[arg(long, env = "FREEIM_DEMO_LISTEN", value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: String,
}

/// `freeim demo`: the business app against a running cluster, until SIGTERM or SIGINT.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    super::runtime(None)?.block_on(async {
        // Inside the runtime: opening the Redis connection manager spawns its tasks.
        let redis = args.connect.cluster.redis()?;
        let options = args.connect.options()?;
        // The URL is not echoed: it may hold a password.
        let backend = RedisBackend::open(redis).map_err(|e| anyhow!("--redis: {e}"))?;
        let im = ImClient::new(Backend::Redis(backend), options).context("--servers / --path / --scheme")?;
        let listener = bind(&args.listen, "--listen").await?;
        match tokio::time::timeout(REDIS_PROBE_TIMEOUT, im.get_chan_list()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(anyhow!("--redis: cannot reach Redis: {e}")),
            Err(_) => return Err(anyhow!("--redis: Redis did not answer within {REDIS_PROBE_TIMEOUT:?}")),
        }
        println!("FreeIM demo on a {}-node cluster: open {}", args.connect.cluster.servers.len(), page_url(&listener)?);
        let stop = CancellationToken::new();
        let web = tokio::spawn(serve(listener, im, stop.clone()));
        tokio::select! {
            r = super::server::wait_for_signal() => r?,
            r = web => return r?,
        }
        stop.cancel();
        Ok(())
    })
}

/// `freeim` alone: a gateway and the demo app in one process on the in-process broker.
pub fn run_all_in_one(args: QuickArgs) -> anyhow::Result<()> {
    let mut config = GatewayConfig::new(&args.gateway, &[&args.gateway]).map_err(|e| match e {
        ConfigError::Invalid { reason, .. } => anyhow!("--gateway: {reason}"),
        e => anyhow!("--gateway: {e}"),
    })?;
    // A key of the user's is not printed; a made-up one is, so the quick start can curl.
    let (key, shown) = match args.api_key {
        Some(key) => (key, "$FREEIM_API_KEY".to_owned()),
        None => {
            let key: String = (0..QUICK_API_KEY_LEN).map(|_| rand::random_range(b'a'..=b'z') as char).collect();
            (key.clone(), key)
        }
    };
    config.api = Some(ApiConfig::new(ApiKeys::new([key]).map_err(|e| anyhow!("{e}"))?));
    super::runtime(None)?.block_on(async {
        let listener = bind(&args.listen, "--listen").await?;
        let backend = Backend::Memory(MemoryBackend::new());
        let gateway = Gateway::start(config, backend.clone()).await.context("--gateway")?;
        // Connect URLs name the address actually bound (port 0 picks one; 0.0.0.0 is not
        // an address a browser can dial, so its loopback stands in for it).
        let mut public = gateway.local_addr();
        if public.ip().is_unspecified() {
            public.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let options =
            ImClientOptions { public_hosts: vec![public.to_string()], ..ImClientOptions::new([args.gateway]) };
        let im = ImClient::new(backend, options)?;
        println!("FreeIM is running in one process (gateway ws://{public}/ws, in-memory broker, Ctrl-C to stop)");
        println!("Open the chat: {}", page_url(&listener)?);
        println!(
            "HTTP API: curl -H 'X-API-Key: {shown}' -d '{{\"content\":\"hello\"}}' http://{}/api/broadcast",
            gateway.local_addr()
        );
        let stop = CancellationToken::new();
        let mut web = tokio::spawn(serve(listener, im, stop.clone()));
        let outcome = tokio::select! {
            r = super::server::wait_for_signal() => r,
            r = &mut web => r.map_err(anyhow::Error::from).and_then(|r| r),
        };
        let left = gateway.shutdown().await;
        stop.cancel();
        let _ = web.await;
        outcome?;
        anyhow::ensure!(left == 0, "{left} sockets were still open at the drain timeout");
        Ok(())
    })
}

/// Serves the app on `listener` until `stop` is cancelled, with the roster tasks.
async fn serve(listener: TcpListener, im: ImClient, stop: CancellationToken) -> anyhow::Result<()> {
    let app = App { im, roster: Arc::new(Roster::default()) };
    tokio::spawn(tracker::track(app.im.clone(), app.roster.clone(), stop.clone()));
    tokio::spawn(broadcast::push(app.im.clone(), app.roster.clone(), stop.clone()));
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service).with_graceful_shutdown(stop.cancelled_owned()).await?;
    Ok(())
}

/// Every route of the demo.
fn router(app: App) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::app_js))
        .route("/style.css", get(assets::style_css))
        .route("/freeim.js", get(assets::freeim_js))
        // FreeIM's demo routes.
        .route("/ws/pre-connect", post(routes::pre_connect))
        .route("/ws/offline", get(routes::offline))
        .route("/ws/get-channels", post(routes::get_channels))
        .route("/ws/subscr-channel", post(routes::subscr_channel))
        .route("/ws/send-channelmsg", post(routes::send_channel_msg))
        .route("/ws/send-broadcast", post(routes::send_broadcast))
        .route("/ws/send-msg", post(routes::send_msg))
        // Ours.
        .route("/ws/leave-channel", post(routes::leave_channel))
        .route("/ws/online", get(routes::online).post(routes::online))
        .route("/ws/set-nick", post(routes::set_nick))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(input::MAX_BODY_BYTES))
        .with_state(app)
}

/// Binds `addr`; the error names the flag, for a one-line message on a taken port.
async fn bind(addr: &str, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow!("{flag}: cannot listen on {addr}: {e}"))
}

/// The URL to print for the page.
fn page_url(listener: &TcpListener) -> anyhow::Result<String> {
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(format!("http://{addr}/"))
}
