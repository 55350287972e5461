//! The FreeIM v2 wire format: Redis key names, node-channel payloads, tokens and routing.
//!
//! Everything here is pure (no I/O) so that the exact bytes can be tested as golden data.
//! The reference writes JSON with Newtonsoft.Json; [`to_json`] reproduces its output for
//! every value we send (compact, C# value tuples as `Item1`, `Item2`, …, and Newtonsoft's
//! string escaping, which differs from serde_json's in three characters).
//!
//! The types here are public on purpose: they are the contract between FreeIM's parts, for
//! any Rust program that speaks it (a native client, a tool reading node channels).

use serde::{Deserialize, Serialize};
use std::io;

/// A FreeIM client id. `0` means "the system / nobody" as a sender.
pub type ClientId = i64;

/// Prefix of a node-channel payload asking a node to close every socket of a client.
const FORCE_OFFLINE_PREFIX: &str = "__FreeIM__(ForceOffline)";
/// Prefix of a node-channel payload carrying a channel (or broadcast) message.
const CHAN_MESSAGE_PREFIX: &str = "__FreeIM__(ChanMessage)";
/// Ours: a client joined a channel (`<id>:<chan>`), published by the join script.
const JOIN_PREFIX: &str = "__FreeIM__(Join)";
/// Ours: a client left a channel (`<id>:<chan>`), published by the leave script.
const LEAVE_PREFIX: &str = "__FreeIM__(Leave)";
/// Ours: all channels of a client (`<id>:<JSON array>`), published when a socket opens.
/// Written by Lua's `cjson`, which encodes an empty list as `{}`.
const CHANS_PREFIX: &str = "__FreeIM__(Chans)";
/// Receipt status when the receiver had at least one socket on its node.
pub const RECEIPT_DELIVERED: &str = "发送成功";
/// Receipt status when the receiver had no socket on its node.
pub const RECEIPT_OFFLINE: &str = "用户不在线";
/// Length of a token in lowercase hex characters (four GUIDs without dashes in the reference).
pub const TOKEN_LEN: usize = 128;

/// The Redis key and channel names of one FreeIM deployment, derived from its path.
///
/// The strings used on hot paths (online hash, event channels, channel list) are built once.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    online: String,
    event_online: String,
    event_offline: String,
    list_chan: String,
}

impl Keys {
    /// Keys for the WebSocket path `path` (`/ws` gives the prefix `im_v2_ws`).
    pub fn new(path: &str) -> Self {
        let prefix = format!("im_v2{}", path.replace('/', "_"));
        Keys {
            online: format!("{prefix}Online"),
            event_online: format!("evt_{prefix}Online"),
            event_offline: format!("evt_{prefix}Offline"),
            list_chan: format!("{prefix}ListChan"),
            prefix,
        }
    }

    /// The prefix `P`, e.g. `im_v2_ws`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `{P}Token{token}`: token → token value JSON, with a TTL.
    pub fn token(&self, token: &str) -> String {
        format!("{}Token{token}", self.prefix)
    }
    /// `{P}Online`: client id → number of open sockets.
    pub fn online(&self) -> &str {
        &self.online
    }
    /// `evt_{P}Online`: pub/sub channel of online events.
    pub fn event_online(&self) -> &str {
        &self.event_online
    }
    /// `evt_{P}Offline`: pub/sub channel of offline events.
    pub fn event_offline(&self) -> &str {
        &self.event_offline
    }
    /// `{P}Server{server}`: the pub/sub channel a node subscribes to.
    pub fn server(&self, server: &str) -> String {
        format!("{}Server{server}", self.prefix)
    }
    /// `{P}Chan{chan}`: client id → `0`, the members of a channel.
    pub fn chan(&self, chan: &str) -> String {
        format!("{}Chan{chan}", self.prefix)
    }
    /// `{P}Client{id}`: chan → `0`, the channels of a client.
    pub fn client(&self, id: ClientId) -> String {
        format!("{}Client{id}", self.prefix)
    }
    /// `{P}ListChan`: chan → member count.
    pub fn list_chan(&self) -> &str {
        &self.list_chan
    }
    /// `{P}NodeSockets{server}` (ours, not FreeIM's): socket id → token value, one entry
    /// per socket the node holds, so its presence can be undone if it dies.
    pub fn node_sockets(&self, server: &str) -> String {
        format!("{}NodeSockets{server}", self.prefix)
    }
    /// `{P}NodeLease{server}` (ours): exists, with a TTL, while the node is alive.
    pub fn node_lease(&self, server: &str) -> String {
        format!("{}NodeLease{server}", self.prefix)
    }
    /// `{P}NodeAway{server}` (ours): client id → wall-clock milliseconds until which the
    /// client keeps its channels, after its last socket (a durable one) closed on the node.
    pub fn node_away(&self, server: &str) -> String {
        format!("{}NodeAway{server}", self.prefix)
    }
    /// `{P}NodeCleanup{server}` (ours): held by the one node cleaning up after a dead one.
    pub fn node_cleanup(&self, server: &str) -> String {
        format!("{}NodeCleanup{server}", self.prefix)
    }
    /// `{P}Log{server}` (ours): the node's durable log, a stream with entry ids
    /// `<offset>-0` and one field `d`, the node-channel payload (see [`crate::durable`]).
    pub fn log(&self, server: &str) -> String {
        format!("{}Log{server}", self.prefix)
    }
    /// `{P}LogMeta{server}` (ours): the log's hash, `e` epoch, `s` top offset, `l` server-list
    /// fingerprint. It has no TTL, so offsets never restart within an epoch.
    pub fn log_meta(&self, server: &str) -> String {
        format!("{}LogMeta{server}", self.prefix)
    }
}

/// The node that owns a client: `servers[id mod len]`.
///
/// The reference computes C#'s `%`, which is negative for negative ids (unsupported there).
/// We use the non-negative (Euclidean) remainder: identical for every id ≥ 0, and negative
/// ids route to a valid node instead of failing.
pub fn node_index(id: ClientId, servers: usize) -> usize {
    debug_assert!(servers > 0, "server list is validated non-empty");
    id.rem_euclid(servers as i64) as usize
}

/// A fresh token: 128 lowercase hex characters from the OS-seeded CSPRNG.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_LEN / 2];
    rand::fill(&mut bytes[..]);
    let mut token = String::with_capacity(TOKEN_LEN);
    for b in bytes {
        token.push(char::from_digit((b >> 4) as u32, 16).unwrap_or('0'));
        token.push(char::from_digit((b & 0xf) as u32, 16).unwrap_or('0'));
    }
    token
}

/// True when `token` has the shape of a FreeIM token (non-empty, at most 128 ASCII
/// alphanumerics). Anything else is refused before Redis is asked.
pub fn is_token_shaped(token: &str) -> bool {
    !token.is_empty() && token.len() <= TOKEN_LEN && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Client ids of channel-member hash fields (`{P}Chan{chan}`, `{P}Online`): `0` (the system)
/// and non-numeric fields are skipped, as the reference does.
pub(crate) fn member_ids(fields: &[String]) -> Vec<ClientId> {
    fields.iter().filter_map(|f| f.parse().ok()).filter(|id| *id != 0).collect()
}

/// The value stored under a token and published with online/offline events:
/// `{"Item1":clientId,"Item2":clientMetaData}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenValue {
    /// The client the token was issued for.
    #[serde(rename = "Item1")]
    pub client_id: ClientId,
    /// Free-form metadata from the business side (the reference's demo stores the IP).
    #[serde(rename = "Item2")]
    pub meta: Option<String>,
}

/// A direct message on a node channel: `{"Item1":sender,"Item2":[receivers],"Item3":content,"Item4":receipt}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// Sender id; `0` is the system.
    #[serde(rename = "Item1")]
    pub sender: ClientId,
    /// Receivers owned by the node this payload is published to.
    #[serde(rename = "Item2")]
    pub receivers: Vec<ClientId>,
    /// The business message already serialized to JSON: the exact text frame browsers get.
    #[serde(rename = "Item3")]
    pub content: String,
    /// Whether the sender wants a receipt per receiver.
    #[serde(rename = "Item4")]
    pub receipt: bool,
}

/// A channel or broadcast message: `{"Item1":sender,"Item2":chan,"Item3":content}`.
/// `chan` is `None` (JSON `null`) or empty for a broadcast to every connected client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChanMessage {
    /// Sender id; `0` is the system.
    #[serde(rename = "Item1")]
    pub sender: ClientId,
    /// The channel, or `None` for a broadcast.
    #[serde(rename = "Item2")]
    pub chan: Option<String>,
    /// The business message already serialized to JSON.
    #[serde(rename = "Item3")]
    pub content: String,
}

impl ChanMessage {
    /// The node-channel payload: `__FreeIM__(ChanMessage)` and the tuple.
    pub fn encode(&self) -> String {
        format!("{CHAN_MESSAGE_PREFIX}{}", to_json(self))
    }

    /// The channel name, or `None` when this is a broadcast (null or empty channel).
    pub fn channel(&self) -> Option<&str> {
        self.chan.as_deref().filter(|c| !c.is_empty())
    }
}

/// The object a receipt carries as its message: `{"content":…,"receipt":…}`.
#[derive(Debug, Serialize)]
pub struct Receipt<'a> {
    /// The content of the message being acknowledged, as a JSON string.
    pub content: &'a str,
    /// [`RECEIPT_DELIVERED`] or [`RECEIPT_OFFLINE`].
    pub receipt: &'a str,
}

/// One payload on a node channel `{P}Server{server}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCommand {
    /// `__FreeIM__(ForceOffline)<id>`
    ForceOffline(ClientId),
    /// `__FreeIM__(ChanMessage)<tuple>`
    Chan(ChanMessage),
    /// Any other payload: a direct-message tuple.
    Direct(DirectMessage),
    /// Ours: a change of a client's channels, which nodes apply to the memberships they
    /// keep in memory (see `gateway::rooms`).
    Members(MembersChange),
}

/// A change of one client's channel memberships, in Redis's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembersChange {
    /// `__FreeIM__(Join)<id>:<chan>`
    Join(ClientId, String),
    /// `__FreeIM__(Leave)<id>:<chan>`
    Leave(ClientId, String),
    /// `__FreeIM__(Chans)<id>:<JSON array of channels>`: every channel of the client.
    Chans(ClientId, Vec<String>),
}

impl MembersChange {
    /// The payload of a join (`joined`) or leave of `chan` by `client`.
    pub fn encode_join(joined: bool, client: &str, chan: &str) -> String {
        format!("{}{client}:{chan}", if joined { JOIN_PREFIX } else { LEAVE_PREFIX })
    }

    /// The prefix of a client's channel list; the script appends `<id>:<JSON array>`.
    pub fn chans_prefix() -> &'static str {
        CHANS_PREFIX
    }

    fn parse(prefix: &str, rest: &[u8]) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::Members(String::from_utf8_lossy(&rest[..rest.len().min(100)]).into_owned());
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(bad)?;
        let id: ClientId = std::str::from_utf8(&rest[..colon]).ok().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let tail = &rest[colon + 1..];
        let text = || std::str::from_utf8(tail).map(str::to_owned).map_err(|_| bad());
        Ok(match prefix {
            JOIN_PREFIX => MembersChange::Join(id, text()?),
            LEAVE_PREFIX => MembersChange::Leave(id, text()?),
            _ if tail == b"{}" => MembersChange::Chans(id, Vec::new()),
            _ => MembersChange::Chans(id, serde_json::from_slice(tail)?),
        })
    }
}

/// Why a payload from the network or Redis could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The payload is not valid JSON of the expected shape.
    #[error("malformed JSON payload: {0}")]
    Json(#[from] serde_json::Error),
    /// A force-offline payload whose id is not a decimal 64-bit integer.
    #[error("malformed client id {0:?} in force-offline payload")]
    ClientId(String),
    /// A membership change that is not `<id>:<chan>` (or `<id>:<JSON array>`).
    #[error("malformed membership change {0:?}")]
    Members(String),
}

impl NodeCommand {
    /// Parses a node-channel payload. Never panics, whatever the bytes.
    pub fn parse(payload: &[u8]) -> Result<Self, ProtocolError> {
        if let Some(rest) = payload.strip_prefix(FORCE_OFFLINE_PREFIX.as_bytes()) {
            let text = String::from_utf8_lossy(rest);
            return text
                .trim()
                .parse()
                .map(NodeCommand::ForceOffline)
                .map_err(|_| ProtocolError::ClientId(text.into_owned()));
        }
        if let Some(rest) = payload.strip_prefix(CHAN_MESSAGE_PREFIX.as_bytes()) {
            return Ok(NodeCommand::Chan(serde_json::from_slice(rest)?));
        }
        for prefix in [JOIN_PREFIX, LEAVE_PREFIX, CHANS_PREFIX] {
            if let Some(rest) = payload.strip_prefix(prefix.as_bytes()) {
                return MembersChange::parse(prefix, rest).map(NodeCommand::Members);
            }
        }
        Ok(NodeCommand::Direct(serde_json::from_slice(payload)?))
    }

    /// The exact payload bytes the reference publishes for this command.
    pub fn encode(&self) -> String {
        match self {
            NodeCommand::ForceOffline(id) => format!("{FORCE_OFFLINE_PREFIX}{id}"),
            NodeCommand::Chan(msg) => msg.encode(),
            NodeCommand::Direct(msg) => to_json(msg),
            NodeCommand::Members(MembersChange::Join(id, chan)) => {
                MembersChange::encode_join(true, &id.to_string(), chan)
            }
            NodeCommand::Members(MembersChange::Leave(id, chan)) => {
                MembersChange::encode_join(false, &id.to_string(), chan)
            }
            NodeCommand::Members(MembersChange::Chans(id, chans)) => format!("{CHANS_PREFIX}{id}:{}", to_json(chans)),
        }
    }
}

/// Serializes `value` exactly as Newtonsoft.Json does with default settings: compact,
/// and strings escaped like `JavaScriptUtils.WriteEscapedJavaScriptString`.
///
/// A failing `Serialize` impl (a map with non-string keys, say) yields `null`, the same
/// as [`try_to_json`] reporting it; use that when the caller must know.
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    try_to_json(value).unwrap_or_else(|_| "null".to_owned())
}

/// [`to_json`] that reports a value serde cannot serialize.
pub fn try_to_json<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, NewtonsoftFormatter);
    value.serialize(&mut ser)?;
    // Both serde_json and our formatter only ever write valid UTF-8.
    String::from_utf8(out).map_err(|e| serde_json::Error::io(io::Error::other(e)))
}

/// serde_json's compact formatter plus Newtonsoft's extra escapes: U+0085, U+2028 and
/// U+2029 are written as `\u0085`, `\u2028`, `\u2029`. Control characters, `"` and `\`
/// are escaped identically by both (short forms and lowercase `\u00xx`).
struct NewtonsoftFormatter;

impl serde_json::ser::Formatter for NewtonsoftFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '\u{85}' => "\\u0085",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_path() {
        let k = Keys::new("/ws");
        assert_eq!(k.prefix(), "im_v2_ws");
        assert_eq!(k.token("ab"), "im_v2_wsTokenab");
        assert_eq!(k.online(), "im_v2_wsOnline");
        assert_eq!(k.event_online(), "evt_im_v2_wsOnline");
        assert_eq!(k.event_offline(), "evt_im_v2_wsOffline");
        assert_eq!(k.server("127.0.0.1:6001"), "im_v2_wsServer127.0.0.1:6001");
        assert_eq!(k.chan("room"), "im_v2_wsChanroom");
        assert_eq!(k.client(-7), "im_v2_wsClient-7");
        assert_eq!(k.list_chan(), "im_v2_wsListChan");
        assert_eq!(k.node_sockets("h:1"), "im_v2_wsNodeSocketsh:1");
        assert_eq!(k.node_lease("h:1"), "im_v2_wsNodeLeaseh:1");
        assert_eq!(k.node_cleanup("h:1"), "im_v2_wsNodeCleanuph:1");
        assert_eq!(k.log("h:1"), "im_v2_wsLogh:1");
        assert_eq!(k.log_meta("h:1"), "im_v2_wsLogMetah:1");
        assert_eq!(Keys::new("/chat/ws").prefix(), "im_v2_chat_ws");
    }

    #[test]
    fn routing_is_a_non_negative_modulo() {
        let cases = [(0, 3, 0), (1, 3, 1), (5, 3, 2), (-1, 3, 2), (i64::MIN, 3, 1), (i64::MAX, 2, 1)];
        for (id, n, want) in cases {
            assert_eq!(node_index(id, n), want, "id {id} over {n} nodes");
        }
    }

    #[test]
    fn tokens_are_128_lowercase_hex_and_distinct() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), TOKEN_LEN);
        assert!(a.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        assert_ne!(a, b);
        assert!(is_token_shaped(&a));
        assert!(!is_token_shaped(""));
        assert!(!is_token_shaped("ab/cd"));
        assert!(!is_token_shaped(&"a".repeat(129)));
    }

    #[test]
    fn member_ids_skip_the_system_and_non_numeric_fields() {
        let fields: Vec<String> = ["7", "0", "abc", "-3", "", " 5", "12"].map(String::from).into();
        assert_eq!(member_ids(&fields), [7, -3, 12]);
    }

    /// Golden cases: value in, Newtonsoft's exact bytes out.
    #[test]
    fn json_matches_newtonsoft_byte_for_byte() {
        let cases: &[(&str, String)] = &[
            (r#""hello""#, to_json("hello")),
            (r#""a\"b\\c\n\r\t\b\f\u0001\u001f""#, to_json("a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{1f}")),
            (r#""line\u2028para\u2029next\u0085""#, to_json("line\u{2028}para\u{2029}next\u{85}")),
            ("\"发送成功 é \u{7f} </script>\"", to_json("发送成功 é \u{7f} </script>")),
            (
                r#"{"Item1":42,"Item2":"203.0.113.7"}"#,
                to_json(&TokenValue { client_id: 42, meta: Some("203.0.113.7".into()) }),
            ),
            (r#"{"Item1":7,"Item2":null}"#, to_json(&TokenValue { client_id: 7, meta: None })),
            (
                r#"{"Item1":1,"Item2":[2,3],"Item3":"\"hello\"","Item4":true}"#,
                to_json(&DirectMessage { sender: 1, receivers: vec![2, 3], content: to_json("hello"), receipt: true }),
            ),
            (
                r#"{"Item1":0,"Item2":"room1","Item3":"{\"a\":1}"}"#,
                to_json(&ChanMessage { sender: 0, chan: Some("room1".into()), content: r#"{"a":1}"#.into() }),
            ),
            (
                r#"{"content":"\"hi\"","receipt":"发送成功"}"#,
                to_json(&Receipt { content: r#""hi""#, receipt: RECEIPT_DELIVERED }),
            ),
        ];
        for (want, got) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn node_commands_round_trip() {
        let cases = [
            ("__FreeIM__(ForceOffline)42", NodeCommand::ForceOffline(42)),
            ("__FreeIM__(ForceOffline)-3", NodeCommand::ForceOffline(-3)),
            (
                r#"__FreeIM__(ChanMessage){"Item1":0,"Item2":null,"Item3":"\"x\""}"#,
                NodeCommand::Chan(ChanMessage { sender: 0, chan: None, content: r#""x""#.into() }),
            ),
            (
                r#"{"Item1":1,"Item2":[2],"Item3":"\"hi\"","Item4":false}"#,
                NodeCommand::Direct(DirectMessage {
                    sender: 1,
                    receivers: vec![2],
                    content: r#""hi""#.into(),
                    receipt: false,
                }),
            ),
            ("__FreeIM__(Join)7:room:a", NodeCommand::Members(MembersChange::Join(7, "room:a".into()))),
            ("__FreeIM__(Leave)-2:", NodeCommand::Members(MembersChange::Leave(-2, String::new()))),
            (
                r#"__FreeIM__(Chans)7:["a","b"]"#,
                NodeCommand::Members(MembersChange::Chans(7, vec!["a".into(), "b".into()])),
            ),
        ];
        let empty = NodeCommand::parse(b"__FreeIM__(Chans)7:{}").unwrap();
        assert_eq!(empty, NodeCommand::Members(MembersChange::Chans(7, Vec::new())));
        for (wire, cmd) in cases {
            assert_eq!(NodeCommand::parse(wire.as_bytes()).unwrap(), cmd);
            assert_eq!(cmd.encode(), wire);
        }
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let bad: &[&[u8]] = &[
            b"",
            b"__FreeIM__(ForceOffline)",
            b"__FreeIM__(ForceOffline)abc",
            b"__FreeIM__(ForceOffline)99999999999999999999",
            b"__FreeIM__(ChanMessage)",
            b"__FreeIM__(ChanMessage){\"Item1\":\"x\"}",
            b"{\"Item1\":1}",
            b"\xff\xfe",
            b"[1,2,3]",
            b"__FreeIM__(Join)",
            b"__FreeIM__(Join)x:room",
            b"__FreeIM__(Leave)7",
            b"__FreeIM__(Join)7:\xff",
            b"__FreeIM__(Chans)7:[1]",
            b"__FreeIM__(Chans)7:{\"a\":1}",
        ];
        for payload in bad {
            assert!(NodeCommand::parse(payload).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn empty_channel_is_a_broadcast() {
        let msg = |chan: Option<&str>| ChanMessage { sender: 0, chan: chan.map(Into::into), content: String::new() };
        assert_eq!(msg(None).channel(), None);
        assert_eq!(msg(Some("")).channel(), None);
        assert_eq!(msg(Some("r")).channel(), Some("r"));
    }
}
