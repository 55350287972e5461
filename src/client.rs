//! [`ImClient`]: the business side of FreeIM (the reference's `ImHelper`) for Rust backends.
//!
//! It hands out connect URLs, publishes messages to the node that owns each receiver, and
//! reads and writes presence and channel membership, with the same Redis commands and Lua
//! scripts as the reference, so a .NET `ImHelper` and this client can share one Redis.
//! The gateway uses it too, for receipts and for leaving channels when a client goes away.
//!
//! Sends are at-most-once, as FreeIM's, unless made through [`ImClient::durable`]: then each
//! node's publish is an append to that node's log that publishes in the same step, so a
//! durable socket that reconnects gets what it missed (docs/PROTOCOL.md, "Durable sockets").

use crate::backend::{Backend, Op, PubSubMessage, RedisBackend, SUBSCRIPTION_QUEUE, Script, Subscription};
use crate::cluster_names::{DEFAULT_PATH, check_node_name, check_path};
use crate::durable::Epoch;
use crate::error::{Error, Result};
use crate::protocol::{self, ChanMessage, ClientId, DirectMessage, Keys, MembersChange, NodeCommand, TokenValue};
use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Default largest serialized message: 1 MiB. Every byte goes through Redis pub/sub once per
/// node and is written to every receiving socket.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Default bound of each node's durable log: 100,000 entries. Beyond it the oldest entries
/// are dropped (Redis keeps up to one stream node more), and a resume that needed them gets
/// `recovered:false`. About 116 bytes of Redis memory per 100-byte payload.
pub const DEFAULT_HISTORY_SIZE: u64 = 100_000;

/// Default lifetime of a node's durable log after its last durable send: 120 s. The owning
/// node also trims entries older than this; a resume that needed them gets `recovered:false`.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(120);
/// Fields asked of Redis per `HSCAN` page when [`ImClient::get_client_list_by_online`] lists
/// every online client (each page is a short command, however many are online).
pub const ONLINE_PAGE: usize = 1000;

/// FNV-1a 64-bit offset basis, for [`fingerprint`].
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// How many `{P}Online` fields [`ImClient::clear_chan_client`] asks for per `HMGET`.
const CLEAR_CHAN_BATCH: usize = 1000;

/// Settings of an [`ImClient`]. Build with [`ImClientOptions::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ImClientOptions {
    /// Ordered node names (`HOST:PORT`), identical on every node and business app.
    pub servers: Vec<String>,
    /// WebSocket path; also names the keys (`/ws` → prefix `im_v2_ws`). Default `/ws`.
    pub path: String,
    /// Scheme of connect URLs: `ws` (default) or `wss` behind a TLS proxy.
    pub scheme: String,
    /// Host names used in connect URLs instead of the node names, in the same order as
    /// `servers` (a public name behind a proxy). Empty (default): the node names.
    pub public_hosts: Vec<String>,
    /// Lifetime of a token in Redis. Default 10 s, as the reference.
    pub token_ttl: Duration,
    /// Largest serialized message a send accepts ([`Error::MessageTooLarge`] beyond).
    /// Default [`DEFAULT_MAX_MESSAGE_BYTES`]; FreeIM has no limit.
    pub max_message_bytes: usize,
    /// Entries each node's durable log keeps at least (durable sends only); at least 1.
    /// Default [`DEFAULT_HISTORY_SIZE`]. Give the nodes the same value.
    pub history_size: u64,
    /// How long a node's durable log lives after its last durable send; at least 1 s.
    /// Default [`DEFAULT_HISTORY_TTL`]. Give the nodes the same value.
    pub history_ttl: Duration,
}

impl ImClientOptions {
    /// Defaults for the given node list.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        ImClientOptions {
            servers: servers.into_iter().map(Into::into).collect(),
            path: DEFAULT_PATH.to_owned(),
            scheme: "ws".to_owned(),
            public_hosts: Vec::new(),
            token_ttl: Duration::from_secs(10),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            history_size: DEFAULT_HISTORY_SIZE,
            history_ttl: DEFAULT_HISTORY_TTL,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Options(why));
        if self.servers.is_empty() {
            return bad("the server list is empty".into());
        }
        if let Err(e) = self.servers.iter().try_for_each(|s| check_node_name(s)) {
            return bad(format!("server name {e}"));
        }
        if let Err(e) = check_path(&self.path) {
            return bad(format!("path {e}"));
        }
        if !matches!(self.scheme.as_str(), "ws" | "wss") {
            return bad(format!("scheme {:?} must be ws or wss", self.scheme));
        }
        if !self.public_hosts.is_empty() && self.public_hosts.len() != self.servers.len() {
            return bad(format!(
                "{} public hosts for {} servers: give one per server, in the same order",
                self.public_hosts.len(),
                self.servers.len()
            ));
        }
        if self.token_ttl < Duration::from_secs(1) {
            return bad("the token TTL must be at least 1 s".into());
        }
        if self.history_size == 0 {
            return bad("the history size must be at least 1".into());
        }
        if self.history_ttl < Duration::from_secs(1) {
            return bad("the history TTL must be at least 1 s".into());
        }
        Ok(())
    }
}

/// A connect URL from [`ImClient::connect_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectUrl {
    /// `ws://{node}{path}?token={token}`.
    pub url: String,
    /// The single-use token in it.
    pub token: String,
    /// Seconds the token lives (`token_ttl`).
    pub expires_in: u64,
}

/// One page of online clients from [`ImClient::online_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlinePage {
    /// Where the next page starts; 0 when this was the last one.
    pub cursor: u64,
    /// The ids on this page.
    pub client_ids: Vec<ClientId>,
}

/// What [`ImClient`] is about to publish to one node; see [`ImClient::on_send`].
#[derive(Debug, Clone, Copy)]
pub struct SendEvent<'a> {
    /// The node the publish goes to.
    pub server: &'a str,
    /// The sender (`0`: the system).
    pub sender: ClientId,
    /// The receivers on that node (empty for channel and broadcast messages).
    pub receivers: &'a [ClientId],
    /// The channel, for channel messages; `None` for direct messages and broadcasts.
    pub chan: Option<&'a str>,
    /// The message, serialized to JSON (the frame browsers will get).
    pub content: &'a str,
    /// Whether a receipt was asked for.
    pub receipt: bool,
}

type OnSend = Arc<dyn Fn(&SendEvent<'_>) + Send + Sync>;

/// A presence event from [`ImClient::event_bus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceEvent {
    /// A socket of this client came online (one event per socket).
    Online(TokenValue),
    /// A socket of this client went offline.
    Offline(TokenValue),
}

/// The business side of FreeIM. Cheap to clone: clones share connections.
#[derive(Clone)]
pub struct ImClient {
    shared: Arc<Shared>,
    on_send: Option<OnSend>,
}

struct Shared {
    backend: Backend,
    keys: Keys,
    servers: Vec<String>,
    /// `{P}Server{server}` per server, in server order.
    server_channels: Vec<String>,
    /// `{P}Log{server}` and `{P}LogMeta{server}` per server, in server order.
    logs: Vec<(String, String)>,
    /// [`fingerprint`] of the server list, written into each log's meta.
    log_fingerprint: String,
    history_size: u64,
    history_ttl_ms: u64,
    max_message_bytes: usize,
    /// `{scheme}://{host}{path}?token=` per server, in server order.
    connect_bases: Vec<String>,
    token_ttl_secs: u64,
}

impl std::fmt::Debug for ImClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImClient")
            .field("backend", &self.shared.backend)
            .field("prefix", &self.shared.keys.prefix())
            .field("servers", &self.shared.servers)
            .finish()
    }
}

impl ImClient {
    /// A client on the Redis at `redis_url` (`redis://HOST:PORT/DB`). It connects on first
    /// use and reconnects by itself.
    pub fn connect(redis_url: &str, options: ImClientOptions) -> Result<Self> {
        Self::new(Backend::Redis(RedisBackend::open(redis_url)?), options)
    }

    /// A client on any backend (Redis, or the in-process broker shared with a gateway).
    pub fn new(backend: Backend, options: ImClientOptions) -> Result<Self> {
        options.validate()?;
        let keys = Keys::new(&options.path);
        let hosts = if options.public_hosts.is_empty() { &options.servers } else { &options.public_hosts };
        let shared = Shared {
            server_channels: options.servers.iter().map(|s| keys.server(s)).collect(),
            logs: options.servers.iter().map(|s| (keys.log(s), keys.log_meta(s))).collect(),
            log_fingerprint: fingerprint(&options.servers),
            history_size: options.history_size,
            history_ttl_ms: u64::try_from(options.history_ttl.as_millis()).unwrap_or(u64::MAX),
            connect_bases: hosts.iter().map(|h| format!("{}://{h}{}?token=", options.scheme, options.path)).collect(),
            max_message_bytes: options.max_message_bytes,
            backend,
            keys,
            servers: options.servers,
            token_ttl_secs: options.token_ttl.as_secs(),
        };
        Ok(ImClient { shared: Arc::new(shared), on_send: None })
    }

    /// Calls `hook` once per node publish, before it goes out (auditing, metrics).
    pub fn on_send(mut self, hook: impl Fn(&SendEvent<'_>) + Send + Sync + 'static) -> Self {
        self.on_send = Some(Arc::new(hook));
        self
    }

    /// The key names of this deployment.
    pub fn keys(&self) -> &Keys {
        &self.shared.keys
    }
    /// The ordered node list.
    pub fn servers(&self) -> &[String] {
        &self.shared.servers
    }
    /// The backend this client talks to.
    pub fn backend(&self) -> &Backend {
        &self.shared.backend
    }
    /// The node that owns `client_id` (see [`protocol::node_index`]).
    pub fn server_of(&self, client_id: ClientId) -> &str {
        &self.shared.servers[self.node_of(client_id)]
    }

    /// The fingerprint of the server list that the durable logs' metas record: a log written
    /// for another list starts a new epoch.
    pub(crate) fn log_fingerprint(&self) -> &str {
        &self.shared.log_fingerprint
    }

    /// Durable sends: the same sends, each logged on its node so that durable sockets get
    /// it after a reconnect. See [`Durable`].
    pub fn durable(&self) -> Durable<'_> {
        Durable { im: self }
    }

    /// The index of the node that owns `client_id`.
    fn node_of(&self, client_id: ClientId) -> usize {
        protocol::node_index(client_id, self.shared.servers.len())
    }

    /// Issues a token for `client_id` and returns the URL its browser connects to:
    /// `ws://{node}{path}?token={token}`. The token lives `token_ttl` (10 s by default).
    pub async fn prev_connect_server(&self, client_id: ClientId, meta: Option<&str>) -> Result<String> {
        Ok(self.connect_url(client_id, meta).await?.url)
    }

    /// [`ImClient::prev_connect_server`], with the token and its lifetime apart (for
    /// callers that hand them on, such as the gateway's HTTP API).
    pub async fn connect_url(&self, client_id: ClientId, meta: Option<&str>) -> Result<ConnectUrl> {
        let token = protocol::new_token();
        let value = protocol::to_json(&TokenValue { client_id, meta: meta.map(Into::into) });
        let key = self.shared.keys.token(&token);
        self.shared.backend.set_ex(&key, &value, self.shared.token_ttl_secs).await?;
        let node = self.node_of(client_id);
        let url = format!("{}{token}", self.shared.connect_bases[node]);
        Ok(ConnectUrl { url, token, expires_in: self.shared.token_ttl_secs })
    }

    /// Sends `message` (any `Serialize`; a `&str` goes out as a JSON string) from `sender`
    /// to `receivers`: duplicates removed, one publish per node, pipelined. With `receipt`,
    /// the sender gets a receipt per receiver (delivered or offline).
    pub async fn send_message<T: Serialize + ?Sized>(
        &self,
        sender: ClientId,
        receivers: &[ClientId],
        message: &T,
        receipt: bool,
    ) -> Result<()> {
        self.direct_message(sender, receivers, message, receipt, false).await
    }

    async fn direct_message<T: Serialize + ?Sized>(
        &self,
        sender: ClientId,
        receivers: &[ClientId],
        message: &T,
        receipt: bool,
        durable: bool,
    ) -> Result<()> {
        let content = self.serialize(message)?;
        let mut ops = Vec::new();
        self.direct_ops(sender, receivers, &content, receipt, durable, &mut ops);
        Ok(self.shared.backend.execute(ops).await?)
    }

    /// The message as JSON, within the size limit.
    fn serialize<T: Serialize + ?Sized>(&self, message: &T) -> Result<String> {
        let content = protocol::try_to_json(message)?;
        let limit = self.shared.max_message_bytes;
        if content.len() > limit {
            tracing::warn!(size = content.len(), limit, "message refused: over max_message_bytes");
            return Err(Error::MessageTooLarge { size: content.len(), limit });
        }
        Ok(content)
    }

    /// Appends the publishes (logged appends when `durable`) of one direct message to `ops`
    /// (the gateway batches receipts this way).
    pub(crate) fn direct_ops(
        &self,
        sender: ClientId,
        receivers: &[ClientId],
        content: &str,
        receipt: bool,
        durable: bool,
        ops: &mut Vec<Op>,
    ) {
        let mut seen = HashSet::with_capacity(receivers.len());
        // (node index, its receivers) in order of first appearance, as the reference.
        let mut by_node: Vec<(usize, Vec<ClientId>)> = Vec::new();
        for &id in receivers.iter().filter(|id| seen.insert(**id)) {
            let node = self.node_of(id);
            match by_node.iter_mut().find(|(n, _)| *n == node) {
                Some((_, ids)) => ids.push(id),
                None => by_node.push((node, vec![id])),
            }
        }
        for (node, receivers) in by_node {
            self.notify_send(node, sender, &receivers, None, content, receipt);
            let payload =
                NodeCommand::Direct(DirectMessage { sender, receivers, content: content.to_owned(), receipt });
            ops.push(self.node_op(node, payload.encode(), durable));
        }
    }

    /// Sends `message` to every member of `chan` that is online, on every node.
    pub async fn send_chan_message<T: Serialize + ?Sized>(
        &self,
        sender: ClientId,
        chan: &str,
        message: &T,
    ) -> Result<()> {
        self.chan_message(sender, Some(chan), message, false).await
    }

    /// Sends `message` to every connected client of every node (a channel message with a
    /// null channel, from the system).
    pub async fn send_broadcast_message<T: Serialize + ?Sized>(&self, message: &T) -> Result<()> {
        self.chan_message(0, None, message, false).await
    }

    async fn chan_message<T: Serialize + ?Sized>(
        &self,
        sender: ClientId,
        chan: Option<&str>,
        message: &T,
        durable: bool,
    ) -> Result<()> {
        let content = self.serialize(message)?;
        let message = ChanMessage { sender, chan: chan.map(Into::into), content };
        let payload = Bytes::from(message.encode());
        let mut ops = Vec::with_capacity(self.shared.servers.len());
        for node in 0..self.shared.servers.len() {
            self.notify_send(node, sender, &[], chan, &message.content, false);
            ops.push(self.node_op(node, payload.clone(), durable));
        }
        Ok(self.shared.backend.execute(ops).await?)
    }

    /// Closes every socket of `client_id` (close 1001, reason `disconnect`). Never logged:
    /// a resume must not close the sockets again.
    pub async fn force_offline(&self, client_id: ClientId) -> Result<()> {
        let node = self.node_of(client_id);
        let op = self.node_op(node, NodeCommand::ForceOffline(client_id).encode(), false);
        Ok(self.shared.backend.execute(vec![op]).await?)
    }

    /// Sends `payload` to `node`: a publish, or when `durable` an append to the node's log
    /// that publishes it with its offset.
    fn node_op(&self, node: usize, payload: impl Into<Bytes>, durable: bool) -> Op {
        let channel = self.shared.server_channels[node].clone();
        if !durable {
            return Op::Publish { channel, payload: payload.into() };
        }
        let (log, meta) = self.shared.logs[node].clone();
        Op::LogAppend {
            log,
            meta,
            channel,
            payloads: vec![payload.into()],
            size: self.shared.history_size,
            ttl_ms: self.shared.history_ttl_ms,
            fresh_epoch: Epoch::random(),
            fingerprint: self.log_fingerprint().to_owned(),
        }
    }

    fn notify_send(
        &self,
        node: usize,
        sender: ClientId,
        receivers: &[ClientId],
        chan: Option<&str>,
        content: &str,
        receipt: bool,
    ) {
        if let Some(hook) = &self.on_send {
            let server = &self.shared.servers[node];
            hook(&SendEvent { server, sender, receivers, chan, content, receipt });
        }
    }

    /// Ids of every client with at least one socket, on any node, in ascending order. Read
    /// with [`ImClient::online_page`] pages of [`ONLINE_PAGE`] (`HSCAN`), not FreeIM's one
    /// `HKEYS {P}Online`, which blocks Redis for every other client while it lists a
    /// million online clients.
    pub async fn get_client_list_by_online(&self) -> Result<Vec<ClientId>> {
        let mut ids = Vec::new();
        let mut cursor = 0;
        loop {
            let page = self.online_page(cursor, ONLINE_PAGE).await?;
            ids.extend(page.client_ids);
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        // A scan may list a field twice (when the hash is resized meanwhile).
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// One page of the ids of online clients (`HSCAN {P}Online cursor COUNT count`): start
    /// with cursor 0 and go on with the page's cursor until it is 0 again. Unlike
    /// [`ImClient::get_client_list_by_online`], no call blocks Redis for long on a million
    /// online clients. A client online throughout the scan is listed (rarely twice).
    pub async fn online_page(&self, cursor: u64, count: usize) -> Result<OnlinePage> {
        let page = self.shared.backend.hscan(self.shared.keys.online(), cursor, count).await?;
        let fields: Vec<String> = page.entries.into_iter().map(|(field, _)| field).collect();
        Ok(OnlinePage { cursor: page.cursor, client_ids: protocol::member_ids(&fields) })
    }

    /// Whether `client_id` has at least one socket on any node (`HGET {P}Online`).
    pub async fn has_online(&self, client_id: ClientId) -> Result<bool> {
        let count = self.shared.backend.hget(self.shared.keys.online(), &client_id.to_string()).await?;
        Ok(count_is_positive(count.as_deref()))
    }

    /// [`ImClient::has_online`] for many ids in one `HMGET`, in the same order.
    pub async fn has_online_many(&self, client_ids: &[ClientId]) -> Result<Vec<bool>> {
        let fields: Vec<String> = client_ids.iter().map(ToString::to_string).collect();
        let counts = self.shared.backend.hmget(self.shared.keys.online(), &fields).await?;
        Ok(counts.iter().map(|c| count_is_positive(c.as_deref())).collect())
    }

    /// Online and offline events of every node, as a stream. It survives Redis reconnects
    /// (events published while disconnected are lost, as pub/sub is at-most-once). A task
    /// reads the subscription in the background, so events wait for a consumer that is
    /// busy; call it within a Tokio runtime.
    pub fn event_bus(&self) -> EventStream {
        let keys = &self.shared.keys;
        let subscription =
            self.shared.backend.subscribe(vec![keys.event_online().to_owned(), keys.event_offline().to_owned()]);
        let (live, epoch) = (subscription.live(), subscription.epoch());
        let (tx, messages) = mpsc::channel(SUBSCRIPTION_QUEUE);
        tokio::spawn(forward(subscription, tx));
        EventStream { messages, live, epoch, online_channel: keys.event_online().to_owned() }
    }

    /// Makes `client_id` a member of each of `chans` (empty names are skipped). Membership
    /// is not tied to a connection: the gateway removes it when the client's last socket
    /// closes, so a client joins again each time it comes online.
    pub async fn join_chan<S: AsRef<str>>(&self, client_id: ClientId, chans: &[S]) -> Result<()> {
        let pairs = chans.iter().map(|c| (client_id.to_string(), c.as_ref()));
        self.membership(Script::JoinChan, pairs).await
    }

    /// Removes `client_id` from each of `chans`.
    pub async fn leave_chan<S: AsRef<str>>(&self, client_id: ClientId, chans: &[S]) -> Result<()> {
        Ok(self.shared.backend.execute(self.leave_ops(client_id, chans)).await?)
    }

    /// Removes each of `client_ids` from `chan`.
    pub async fn leave_chan_clients(&self, chan: &str, client_ids: &[ClientId]) -> Result<()> {
        self.membership(Script::LeaveChan, client_ids.iter().map(|id| (id.to_string(), chan))).await
    }

    /// One script call per (member field, chan) pair, pipelined; empty channels skipped.
    async fn membership<'a>(&self, script: Script, pairs: impl Iterator<Item = (String, &'a str)>) -> Result<()> {
        Ok(self.shared.backend.execute(self.membership_ops(script, pairs)).await?)
    }

    /// The writes of [`ImClient::leave_chan`], for a caller that pipelines them with others.
    pub(crate) fn leave_ops<S: AsRef<str>>(&self, client_id: ClientId, chans: &[S]) -> Vec<Op> {
        self.membership_ops(Script::LeaveChan, chans.iter().map(|c| (client_id.to_string(), c.as_ref())))
    }

    /// The script calls of [`ImClient::membership`].
    fn membership_ops<'a>(&self, script: Script, pairs: impl Iterator<Item = (String, &'a str)>) -> Vec<Op> {
        let keys = &self.shared.keys;
        pairs
            .filter(|(_, chan)| !chan.is_empty())
            .map(|(member, chan)| {
                let keys =
                    vec![keys.chan(chan), format!("{}Client{member}", keys.prefix()), keys.list_chan().to_owned()];
                let mut args = vec![member, chan.to_owned()];
                // The member's node keeps its channels in memory: tell it in the same step.
                if let Ok(id) = args[0].parse::<ClientId>() {
                    let joined = script == Script::JoinChan;
                    args.push(self.shared.server_channels[self.node_of(id)].clone());
                    args.push(MembersChange::encode_join(joined, &args[0], chan));
                }
                Op::Eval { script, keys, args }
            })
            .collect()
    }

    /// Member ids of `chan` (online or not).
    pub async fn get_chan_client_list(&self, chan: &str) -> Result<Vec<ClientId>> {
        if chan.is_empty() {
            return Ok(Vec::new());
        }
        Ok(protocol::member_ids(&self.hkeys(self.shared.keys.chan(chan)).await?))
    }

    /// Removes from `chan` every member with no socket on any node, and returns them.
    /// Unlike the reference (which only edits `{P}Chan{chan}`), this also removes the
    /// channel from each member's `{P}Client{id}` and decrements `{P}ListChan`.
    pub async fn clear_chan_client(&self, chan: &str) -> Result<Vec<String>> {
        if chan.is_empty() {
            return Ok(Vec::new());
        }
        let members = self.hkeys(self.shared.keys.chan(chan)).await?;
        let mut offline = Vec::new();
        for batch in members.chunks(CLEAR_CHAN_BATCH) {
            let counts = self.shared.backend.hmget(self.shared.keys.online(), batch).await?;
            let empty = counts.iter().map(|c| c.as_deref().is_none_or(str::is_empty));
            offline.extend(batch.iter().zip(empty).filter(|(_, e)| *e).map(|(m, _)| m.clone()));
        }
        self.membership(Script::LeaveChan, offline.iter().map(|m| (m.clone(), chan))).await?;
        Ok(offline)
    }

    /// Every channel with its member count (`HGETALL {P}ListChan`).
    pub async fn get_chan_list(&self) -> Result<Vec<(String, i64)>> {
        let entries = self.shared.backend.hgetall(self.shared.keys.list_chan()).await?;
        Ok(entries.into_iter().filter_map(|(chan, count)| Some((chan, count.parse().ok()?))).collect())
    }

    /// The channels `client_id` is a member of.
    pub async fn get_chan_list_by_client_id(&self, client_id: ClientId) -> Result<Vec<String>> {
        self.hkeys(self.shared.keys.client(client_id)).await
    }

    /// The member count of `chan` from `{P}ListChan` (members, not live sockets).
    pub async fn get_chan_online(&self, chan: &str) -> Result<i64> {
        if chan.is_empty() {
            return Ok(0);
        }
        let count = self.shared.backend.hget(self.shared.keys.list_chan(), chan).await?;
        Ok(count.and_then(|c| c.parse().ok()).unwrap_or(0))
    }

    async fn hkeys(&self, key: String) -> Result<Vec<String>> {
        Ok(self.shared.backend.hkeys(&[key]).await?.pop().unwrap_or_default())
    }
}

/// Durable sends of an [`ImClient`], from [`ImClient::durable`]: the same sends (same
/// payloads, de-duplication, grouping per node, [`ImClient::on_send`] hook and size limit),
/// but each node's publish is an append to that node's log which publishes the message with
/// its offset in the same atomic step. Durable sockets get these messages with their offset
/// and, after a reconnect, the ones they missed; FreeIM sockets get byte-identical frames.
///
/// Costs Redis one script call per node per send (about 15–30 µs against 0.5 µs for a
/// publish) and memory for up to `history_size` entries per node. Send durably only to our
/// gateway nodes: a .NET `ImServer` does not understand the logged payload. Sends from a .NET
/// `ImHelper` stay at-most-once: durable sockets get them without an offset, never replayed.
#[derive(Debug, Clone, Copy)]
pub struct Durable<'a> {
    im: &'a ImClient,
}

impl Durable<'_> {
    /// [`ImClient::send_message`], logged on each receiver's node.
    pub async fn send_message<T: Serialize + ?Sized>(
        &self,
        sender: ClientId,
        receivers: &[ClientId],
        message: &T,
        receipt: bool,
    ) -> Result<()> {
        self.im.direct_message(sender, receivers, message, receipt, true).await
    }

    /// [`ImClient::send_chan_message`], logged on every node.
    pub async fn send_chan_message<T: Serialize + ?Sized>(
        &self,
        sender: ClientId,
        chan: &str,
        message: &T,
    ) -> Result<()> {
        self.im.chan_message(sender, Some(chan), message, true).await
    }

    /// [`ImClient::send_broadcast_message`], logged on every node.
    pub async fn send_broadcast_message<T: Serialize + ?Sized>(&self, message: &T) -> Result<()> {
        self.im.chan_message(0, None, message, true).await
    }
}

/// A stable name of the server list (16 hex characters: FNV-1a 64 of the names joined by
/// `,`), so that a log written for one list is not read with another (routing changed).
fn fingerprint(servers: &[String]) -> String {
    let hash = servers.join(",").bytes().fold(FNV_OFFSET_BASIS, |h, b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
    format!("{hash:016x}")
}

/// Whether a `{P}Online` count field says online (a number above 0).
fn count_is_positive(count: Option<&str>) -> bool {
    count.and_then(|c| c.parse::<i64>().ok()).unwrap_or(0) > 0
}

/// Reads `subscription` into `tx` until the [`EventStream`] is dropped. A full queue stops
/// the reading, so Redis buffers for a slow consumer.
async fn forward(mut subscription: Subscription, tx: mpsc::Sender<PubSubMessage>) {
    let mut batch = Vec::new();
    loop {
        let received = tokio::select! {
            n = subscription.recv_many(&mut batch, SUBSCRIPTION_QUEUE) => n,
            _ = tx.closed() => return,
        };
        if received == 0 {
            return;
        }
        for message in batch.drain(..) {
            if tx.send(message).await.is_err() {
                return;
            }
        }
    }
}

/// The stream returned by [`ImClient::event_bus`]. Malformed event payloads are logged
/// and skipped.
#[derive(Debug)]
pub struct EventStream {
    messages: mpsc::Receiver<PubSubMessage>,
    live: watch::Receiver<bool>,
    epoch: watch::Receiver<u64>,
    online_channel: String,
}

impl EventStream {
    /// Whether the underlying subscription is currently established.
    pub fn is_live(&self) -> bool {
        *self.live.borrow()
    }

    /// How many times the underlying subscription has been established (1 after the first
    /// SUBSCRIBE; unlike [`EventStream::is_live`], a quick loss and recovery cannot go
    /// unnoticed). Events published while it was down are lost, so state derived from them
    /// is re-applied when this goes up: nodes announce the sockets they restore after a
    /// Redis restart with online events, which a late re-subscription misses.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        self.epoch.clone()
    }
}

impl Stream for EventStream {
    type Item = PresenceEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceEvent>> {
        loop {
            let Some(message) = std::task::ready!(self.messages.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            match serde_json::from_slice::<TokenValue>(&message.payload) {
                Ok(value) if message.channel == self.online_channel => {
                    return Poll::Ready(Some(PresenceEvent::Online(value)));
                }
                Ok(value) => return Poll::Ready(Some(PresenceEvent::Offline(value))),
                Err(e) => tracing::warn!(error = %e, channel = %message.channel, "dropping malformed presence event"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_list_fingerprint_is_fnv1a_64_of_the_joined_names() {
        let list = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(fingerprint(&list(&[])), "cbf29ce484222325");
        assert_eq!(fingerprint(&list(&["a"])), "af63dc4c8601ec8c");
        let two = fingerprint(&list(&["127.0.0.1:6001", "127.0.0.1:6002"]));
        assert_eq!(two.len(), 16);
        assert_ne!(two, fingerprint(&list(&["127.0.0.1:6002", "127.0.0.1:6001"])));
    }

    #[test]
    fn history_bounds_are_validated() {
        let options =
            |size, ttl| ImClientOptions { history_size: size, history_ttl: ttl, ..ImClientOptions::new(["a:1"]) };
        let memory = || Backend::Memory(crate::backend::MemoryBackend::new());
        assert!(ImClient::new(memory(), options(1, Duration::from_secs(1))).is_ok());
        for bad in [options(0, DEFAULT_HISTORY_TTL), options(DEFAULT_HISTORY_SIZE, Duration::from_millis(999))] {
            assert!(matches!(ImClient::new(memory(), bad), Err(Error::Options(_))));
        }
    }
}
