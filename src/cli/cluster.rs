//! The cluster flags: `--redis`, `--servers` and `--path` say which cluster a command works
//! on, and `--scheme` how its connect URLs start. Every command takes them from here, so
//! `server`, `ctl`, `demo` and `bench` spell them, read their `FREEIM_*` variables and
//! explain them alike.
//!
//! The flags are global: `ctl` takes them before or after its subcommand. None is required
//! by the parser (clap refuses required global flags); each command asks for what it needs,
//! and `server` merges them with its other settings, its `--config` file and the defaults.

use clap::Args;
use freeim::ImClientOptions;
use freeim::cluster_names::DEFAULT_PATH;
use freeim::gateway::Settings;
use freeim::gateway::config::{ServerList, with_default};

/// Where a cluster is: its Redis, its nodes in routing order, its WebSocket path.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Redis URL of the cluster, e.g. redis://127.0.0.1:6379/0.
    #[arg(long, env = "FREEIM_REDIS", value_name = "URL", global = true)]
    pub redis: Option<String>,
    /// Every node of the cluster, in the same order everywhere (routing is id mod count).
    #[arg(long, env = "FREEIM_SERVERS", value_name = "A:P,B:P", value_delimiter = ',', global = true)]
    pub servers: Vec<String>,
    /// `--path`: the WebSocket path; [`DEFAULT_PATH`] unless given.
    #[arg(long, env = "FREEIM_PATH", value_name = "PATH", global = true,
        help = with_default("WebSocket path of the cluster; also names the Redis keys (/ws → im_v2_ws)", DEFAULT_PATH))]
    pub path: Option<String>,
}

impl ClusterArgs {
    /// `--redis`, which this command needs.
    pub fn redis(&self) -> anyhow::Result<&str> {
        self.redis.as_deref().ok_or_else(|| anyhow::anyhow!("--redis is required (flag or FREEIM_REDIS)"))
    }

    /// `--servers`, which this command needs.
    pub fn servers(&self) -> anyhow::Result<&[String]> {
        anyhow::ensure!(!self.servers.is_empty(), "--servers is required (flag or FREEIM_SERVERS)");
        Ok(&self.servers)
    }

    /// `--path`, or the default.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_PATH)
    }

    /// Client options for this cluster's nodes and path.
    pub fn options(&self) -> anyhow::Result<ImClientOptions> {
        Ok(ImClientOptions { path: self.path().to_owned(), ..ImClientOptions::new(self.servers()?.to_vec()) })
    }

    /// These flags as gateway settings, to merge with the others (`server`).
    pub fn into_settings(self) -> Settings {
        Settings {
            redis: self.redis,
            servers: (!self.servers.is_empty()).then_some(ServerList::List(self.servers)),
            path: self.path,
            ..Settings::default()
        }
    }
}

/// The cluster flags and the scheme of connect URLs, for commands that hand them out.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Scheme of connect URLs: ws, or wss for nodes serving TLS.
    #[arg(long, env = "FREEIM_SCHEME", value_name = "SCHEME", default_value = "ws", value_parser = ["ws", "wss"],
        global = true)]
    pub scheme: String,
}

impl ConnectArgs {
    /// Client options for the cluster, handing out `--scheme` URLs.
    pub fn options(&self) -> anyhow::Result<ImClientOptions> {
        Ok(ImClientOptions { scheme: self.scheme.clone(), ..self.cluster.options()? })
    }
}
