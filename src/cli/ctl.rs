//! `freeim ctl`: poke a live cluster through Redis, like `redis-cli` for FreeIM.
//!
//! Every command is one [`ImClient`] call (a send with MESSAGE `-`: one per line of standard
//! input). Output is for people by default and one JSON value per line with `--json`, for
//! scripts.

use super::cluster::ConnectArgs;
use clap::{Args, Subcommand};
use freeim::client::{DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL};
use freeim::{ClientId, ImClient, ImClientOptions, PresenceEvent};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::io::BufRead;
use std::time::Duration;
use tokio::sync::mpsc;

/// MESSAGE that means "one message per line of standard input".
const STDIN_MESSAGE: &str = "-";
/// Lines of standard input read ahead of the sends. Beyond, reading waits: a fast producer
/// is held on its pipe, and memory stays bounded whatever is piped in.
const STDIN_QUEUE: usize = 64;

/// Flags of `freeim ctl`; the cluster flags and `--json` go before or after the command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print JSON (one value per line) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    history: HistoryArgs,
    #[command(subcommand)]
    command: CtlCommand,
}

/// The bounds of the nodes' durable logs, which `--durable` sends apply (give the nodes the
/// same values).
#[derive(Debug, Args)]
struct HistoryArgs {
    /// Entries each node's durable log keeps at least (--durable sends).
    #[arg(long, env = "FREEIM_HISTORY_SIZE", value_name = "N", global = true, default_value_t = DEFAULT_HISTORY_SIZE)]
    history_size: u64,
    /// Seconds a node's durable log lives after its last durable send (--durable sends).
    #[arg(long, env = "FREEIM_HISTORY_TTL", value_name = "SECS", global = true,
        default_value_t = DEFAULT_HISTORY_TTL.as_secs())]
    history_ttl: u64,
}

impl HistoryArgs {
    fn apply(&self, options: ImClientOptions) -> ImClientOptions {
        ImClientOptions {
            history_size: self.history_size,
            history_ttl: Duration::from_secs(self.history_ttl),
            ..options
        }
    }
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
    /// The message; `-`: one message per line of standard input, each sent as soon as its
    /// line is read, until end of input (empty lines are skipped; send a lone dash with
    /// --raw '"-"').
    message: String,
    /// MESSAGE (each line with `-`) is JSON; send that value instead of a string.
    #[arg(long)]
    raw: bool,
    /// Log the message on each node, so durable sockets get it after a reconnect.
    #[arg(long)]
    durable: bool,
}

impl Message {
    /// The message `text` (MESSAGE, or one line) stands for.
    fn value(&self, text: &str) -> anyhow::Result<Value> {
        if self.raw {
            serde_json::from_str(text).map_err(|e| anyhow::anyhow!("--raw: MESSAGE is not JSON: {e}"))
        } else {
            Ok(Value::String(text.to_owned()))
        }
    }

    /// Where the texts to send come from.
    fn texts(&self) -> Texts {
        if self.message == STDIN_MESSAGE { Texts::Stdin(stdin_lines()) } else { Texts::One(Some(self.message.clone())) }
    }
}

/// The texts of one send command, in order.
enum Texts {
    /// MESSAGE itself, until taken.
    One(Option<String>),
    /// The non-empty lines of standard input, as they are read.
    Stdin(mpsc::Receiver<std::io::Result<String>>),
}

impl Texts {
    async fn next(&mut self) -> anyhow::Result<Option<String>> {
        match self {
            Texts::One(text) => Ok(text.take()),
            Texts::Stdin(lines) => loop {
                match lines.recv().await.transpose()? {
                    Some(line) if line.is_empty() => continue,
                    line => return Ok(line),
                }
            },
        }
    }
}

/// Standard input's lines, read on a thread of their own (reading blocks) into a queue of
/// [`STDIN_QUEUE`]; the thread ends at end of input, on an error, or when the queue is gone.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, lines) = mpsc::channel(STDIN_QUEUE);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    lines
}

/// What a send command sends to.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// `send`: receivers, and whether the sender wants receipts.
    Direct { from: ClientId, to: &'a [ClientId], receipt: bool },
    /// `chan-send`: a channel's online members.
    Chan { from: ClientId, chan: &'a str },
    /// `broadcast`: every connected client.
    Broadcast,
}

impl Target<'_> {
    async fn send(self, im: &ImClient, value: &Value, durable: bool) -> freeim::Result<()> {
        let logged = im.durable();
        match self {
            Target::Direct { from, to, receipt } if durable => logged.send_message(from, to, value, receipt).await,
            Target::Direct { from, to, receipt } => im.send_message(from, to, value, receipt).await,
            Target::Chan { from, chan } if durable => logged.send_chan_message(from, chan, value).await,
            Target::Chan { from, chan } => im.send_chan_message(from, chan, value).await,
            Target::Broadcast if durable => logged.send_broadcast_message(value).await,
            Target::Broadcast => im.send_broadcast_message(value).await,
        }
    }

    /// What is printed after each send.
    fn report(self, out: &Output) {
        match self {
            Target::Direct { to, .. } => out.line(&format!("sent to {} client(s)", to.len()), json!({ "sent": to })),
            Target::Chan { chan, .. } => out.line(&format!("sent to channel {chan}"), json!({ "chan": chan })),
            Target::Broadcast => out.line("broadcast sent", json!({ "broadcast": true })),
        }
    }
}

/// Sends each text of `message` to `target`, in order, reporting each.
async fn send(im: &ImClient, out: &Output, target: Target<'_>, message: &Message) -> anyhow::Result<()> {
    let mut texts = message.texts();
    while let Some(text) = texts.next().await? {
        target.send(im, &message.value(&text)?, message.durable).await?;
        target.report(out);
    }
    Ok(())
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let options = args.history.apply(args.connect.options()?);
    let im = ImClient::connect(args.connect.cluster.redis()?, options)?;
    let out = Output { json: args.json };
    match args.command {
        CtlCommand::ConnectUrl { id, meta } => {
            let url = im.prev_connect_server(id, meta.as_deref()).await?;
            out.line(&url, json!({ "client": id, "url": url }));
        }
        CtlCommand::Send { from, to, receipt, message } => {
            send(&im, &out, Target::Direct { from, to: &to, receipt }, &message).await?;
        }
        CtlCommand::ChanSend { chan, from, message } => {
            send(&im, &out, Target::Chan { from, chan: &chan }, &message).await?;
        }
        CtlCommand::Broadcast { message } => send(&im, &out, Target::Broadcast, &message).await?,
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
