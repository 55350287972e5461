//! `freeim server`: one gateway node on Redis, until SIGTERM or SIGINT.

use super::cluster::ClusterArgs;
use clap::Args;
use freeim::backend::{Backend, RedisBackend};
use freeim::gateway::{Gateway, GatewayError, Settings};
use std::path::PathBuf;

/// Flags of `freeim server`; each also reads `FREEIM_<NAME>`, and `--config` a TOML file
/// with the same names. Flags win over variables, variables over the file.
#[derive(Debug, Args)]
pub struct ServerArgs {
    #[command(flatten)]
    cluster: ClusterArgs,
    #[command(flatten)]
    gateway: Settings,
    /// Worker threads [default: one per core].
    #[arg(long, env = "FREEIM_THREADS", value_name = "N", value_parser = positive)]
    threads: Option<usize>,
    /// TOML file with any of the settings above (keys are the flag names).
    #[arg(long, env = "FREEIM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    let listen_flag = if args.gateway.listen.is_some() { "--listen" } else { "--server" };
    let (redis, config) = args.cluster.into_settings().or(args.gateway).or(file).resolve()?;
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
