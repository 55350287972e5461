//! `freeim ctl`: poke a live cluster through Redis, like `redis-cli` for FreeIM.
//!
//! Every command is one [`ImClient`] call. Output is for people by default and one JSON
//! value per line with `--json`, for scripts.

use super::cluster::ConnectArgs;
use clap::{Args, Subcommand};
use freeim::{ClientId, ImClient, PresenceEvent};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// Flags of `freeim ctl`; the cluster flags and `--json` go before or after the command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print JSON (one value per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Issue a token and print the connect URL for a client.
    ConnectUrl {
        /// Client id.
        id: ClientId,
        /// Client metadata stored with the token.
        #[arg(long)]
        meta: Option<String>,
    },
    /// Send a direct message.
    Send {
        /// Sender id (0: the system).
        #[arg(long, default_value_t = 0)]
        from: ClientId,
        /// Receiver ids.
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<ClientId>,
        /// Ask for receipts.
        #[arg(long)]
        receipt: bool,
        #[command(flatten)]
        message: Message,
    },
    /// Send a message to a channel's online members.
    ChanSend {
        /// Channel.
        chan: String,
        /// Sender id (0: the system).
        #[arg(long, default_value_t = 0)]
        from: ClientId,
        #[command(flatten)]
        message: Message,
    },
    /// Send a message to every connected client.
    Broadcast {
        #[command(flatten)]
        message: Message,
    },
    /// Close every socket of a client (1001 disconnect).
    Kick {
        /// Client id.
        id: ClientId,
    },
    /// List online clients, or tell whether the given ones are online.
    Online {
        /// Client ids to check.
        ids: Vec<ClientId>,
    },
    /// List channels with member counts, or the channels of one client.
    Chans {
        /// Only this client's channels.
        #[arg(long)]
        client: Option<ClientId>,
    },
    /// List the members of a channel.
    Members {
        /// Channel.
        chan: String,
    },
    /// Add a client to a channel.
    Join {
        /// Client id.
        id: ClientId,
        /// Channel.
        chan: String,
    },
    /// Remove a client from a channel.
    Leave {
        /// Client id.
        id: ClientId,
        /// Channel.
        chan: String,
    },
    /// Print online/offline events as they happen, until interrupted.
    Events,
}

/// A message argument: sent as a JSON string, or as the JSON value it holds with --raw.
#[derive(Debug, Args)]
struct Message {
    /// The message.
    message: String,
    /// MESSAGE is JSON; send that value instead of a string.
    #[arg(long)]
    raw: bool,
}

impl Message {
    fn value(&self) -> anyhow::Result<Value> {
        if self.raw {
            serde_json::from_str(&self.message).map_err(|e| anyhow::anyhow!("--raw: MESSAGE is not JSON: {e}"))
        } else {
            Ok(Value::String(self.message.clone()))
        }
    }
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let options = args.connect.options()?;
    let im = ImClient::connect(args.connect.cluster.redis()?, options)?;
    let out = Output { json: args.json };
    match args.command {
        CtlCommand::ConnectUrl { id, meta } => {
            let url = im.prev_connect_server(id, meta.as_deref()).await?;
            out.line(&url, json!({ "client": id, "url": url }));
        }
        CtlCommand::Send { from, to, receipt, message } => {
            im.send_message(from, &to, &message.value()?, receipt).await?;
            out.line(&format!("sent to {} client(s)", to.len()), json!({ "sent": to }));
        }
        CtlCommand::ChanSend { chan, from, message } => {
            im.send_chan_message(from, &chan, &message.value()?).await?;
            out.line(&format!("sent to channel {chan}"), json!({ "chan": chan }));
        }
        CtlCommand::Broadcast { message } => {
            im.send_broadcast_message(&message.value()?).await?;
            out.line("broadcast sent", json!({ "broadcast": true }));
        }
        CtlCommand::Kick { id } => {
            im.force_offline(id).await?;
            out.line(&format!("kicked {id} (node {})", im.server_of(id)), json!({ "kicked": id }));
        }
        CtlCommand::Online { ids } if ids.is_empty() => {
            let mut online = im.get_client_list_by_online().await?;
            online.sort_unstable();
            out.list(online.iter().map(|id| (id.to_string(), json!(id))));
        }
        CtlCommand::Online { ids } => {
            let flags = im.has_online_many(&ids).await?;
            let rows = ids.iter().zip(flags).map(|(id, on)| {
                (format!("{id}\t{}", if on { "online" } else { "offline" }), json!({ "client": id, "online": on }))
            });
            out.list(rows);
        }
        CtlCommand::Chans { client: Some(id) } => {
            let mut chans = im.get_chan_list_by_client_id(id).await?;
            chans.sort();
            out.list(chans.iter().map(|c| (c.clone(), json!(c))));
        }
        CtlCommand::Chans { client: None } => {
            let mut chans = im.get_chan_list().await?;
            chans.sort();
            out.list(chans.iter().map(|(c, n)| (format!("{c}\t{n}"), json!({ "chan": c, "members": n }))));
        }
        CtlCommand::Members { chan } => {
            let mut members = im.get_chan_client_list(&chan).await?;
            members.sort_unstable();
            out.list(members.iter().map(|id| (id.to_string(), json!(id))));
        }
        CtlCommand::Join { id, chan } => {
            im.join_chan(id, &[&chan]).await?;
            out.line(&format!("{id} joined {chan}"), json!({ "client": id, "joined": chan }));
        }
        CtlCommand::Leave { id, chan } => {
            im.leave_chan(id, &[&chan]).await?;
            out.line(&format!("{id} left {chan}"), json!({ "client": id, "left": chan }));
        }
        CtlCommand::Events => tail_events(&im, &out).await,
    }
    Ok(())
}

async fn tail_events(im: &ImClient, out: &Output) {
    let mut events = im.event_bus();
    while let Some(event) = events.next().await {
        let (kind, value) = match event {
            PresenceEvent::Online(v) => ("online", v),
            PresenceEvent::Offline(v) => ("offline", v),
        };
        let meta = value.meta.clone().unwrap_or_default();
        out.line(
            &format!("{kind}\t{}\t{meta}", value.client_id),
            json!({ "event": kind, "client": value.client_id, "meta": value.meta }),
        );
    }
}

/// Text or JSON lines on stdout.
struct Output {
    json: bool,
}

impl Output {
    fn line(&self, text: &str, value: Value) {
        if self.json {
            println!("{value}");
        } else {
            println!("{text}");
        }
    }

    fn list(&self, rows: impl Iterator<Item = (String, Value)>) {
        let (texts, values): (Vec<String>, Vec<Value>) = rows.unzip();
        if self.json {
            println!("{}", Value::Array(values));
        } else {
            texts.iter().for_each(|t| println!("{t}"));
        }
    }
}
