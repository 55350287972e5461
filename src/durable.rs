//! Durable delivery's wire (see docs/PROTOCOL.md, "Durable sockets"): epochs and offsets,
//! the `resume` query value, the node-channel envelope of a logged message, and the frames
//! of a durable socket.
//!
//! Pure, no I/O, so every byte is covered by golden tests. A durable message is logged once
//! per node (one Redis stream per node) and
//! published to the node as `__FreeIM__(Durable)<epoch>:<offset>:<FreeIM payload>`; the node
//! unwraps it and delivers the inner payload by FreeIM's rules, so FreeIM sockets get
//! byte-identical frames and durable sockets get the same content wrapped with its offset.

use std::fmt;

/// Prefix of a node-channel payload carrying a logged (durable) message.
pub const DURABLE_PREFIX: &str = "__FreeIM__(Durable)";
/// Characters of an epoch: lowercase hex.
pub const EPOCH_LEN: usize = 16;
/// Largest offset: 2^53 − 1, so that JavaScript reads every offset exactly.
pub const MAX_OFFSET: u64 = (1 << 53) - 1;

/// The name of one life of a node's log: 16 lowercase hex characters, random. A new one
/// starts (at offset 1) whenever the log was lost, so an offset is only meaningful with it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch([u8; EPOCH_LEN]);

impl Epoch {
    /// A fresh random epoch from the thread's CSPRNG.
    pub fn random() -> Self {
        let mut raw = [0u8; EPOCH_LEN / 2];
        rand::fill(&mut raw[..]);
        let mut hex = [0u8; EPOCH_LEN];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(raw) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        Epoch(hex)
    }

    /// The epoch `text` names, if it is exactly 16 characters `0-9a-f`.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let hex: [u8; EPOCH_LEN] = text.try_into().ok()?;
        hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')).then_some(Epoch(hex))
    }

    /// The 16 characters.
    pub fn as_str(&self) -> &str {
        // The bytes are checked ASCII hex on every way in.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({})", self.as_str())
    }
}

/// What a `resume` query value asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// `resume=` (or a bare `resume`): a durable socket from the node's current top.
    Top,
    /// `resume=E:O`: everything addressed to the client after offset `O` of epoch `E`.
    After {
        /// The client's epoch.
        epoch: Epoch,
        /// The last offset it has.
        offset: u64,
    },
}

/// A `resume` value that is neither empty nor `E:O` (the upgrade gets 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid resume")]
pub struct InvalidResume;

impl Resume {
    /// Parses the raw (still percent-encoded) query value: empty, or `E:O` with the colon
    /// also accepted as `%3A`/`%3a`; `O` is decimal without sign or leading zeros, at most
    /// [`MAX_OFFSET`].
    pub fn parse(value: &str) -> Result<Self, InvalidResume> {
        if value.is_empty() {
            return Ok(Resume::Top);
        }
        let (epoch, offset) = value
            .split_once(':')
            .or_else(|| value.split_once("%3A"))
            .or_else(|| value.split_once("%3a"))
            .ok_or(InvalidResume)?;
        let epoch = Epoch::parse(epoch.as_bytes()).ok_or(InvalidResume)?;
        let offset = parse_offset(offset.as_bytes()).ok_or(InvalidResume)?;
        Ok(Resume::After { epoch, offset })
    }
}

/// A decimal offset: digits only, no leading zero (but `0` itself), at most [`MAX_OFFSET`].
fn parse_offset(digits: &[u8]) -> Option<u64> {
    let canonical =
        !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) && (digits == b"0" || digits[0] != b'0');
    if !canonical || digits.len() > 16 {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    (n <= MAX_OFFSET).then_some(n)
}

/// A logged message as published on the node channel, borrowed from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged<'a> {
    /// The log's epoch when it was appended.
    pub epoch: Epoch,
    /// Its offset in that epoch.
    pub offset: u64,
    /// The FreeIM node-channel payload (a direct-message tuple or a channel message).
    pub inner: &'a [u8],
}

/// Why a payload with the durable prefix is not a logged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed durable envelope")]
pub struct BadEnvelope;

/// The logged message in `payload`: `Ok(None)` when it is not durable (a FreeIM payload).
pub fn parse_envelope(payload: &[u8]) -> Result<Option<Logged<'_>>, BadEnvelope> {
    let Some(rest) = payload.strip_prefix(DURABLE_PREFIX.as_bytes()) else {
        return Ok(None);
    };
    let (epoch, rest) = rest.split_at_checked(EPOCH_LEN).ok_or(BadEnvelope)?;
    let epoch = Epoch::parse(epoch).ok_or(BadEnvelope)?;
    let rest = rest.strip_prefix(b":").ok_or(BadEnvelope)?;
    let colon = rest.iter().position(|&b| b == b':').ok_or(BadEnvelope)?;
    let offset = parse_offset(&rest[..colon]).filter(|&o| o > 0).ok_or(BadEnvelope)?;
    Ok(Some(Logged { epoch, offset, inner: &rest[colon + 1..] }))
}

/// The envelope of `inner` at `offset` of `epoch` (what the append script publishes).
pub fn envelope(epoch: Epoch, offset: u64, inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DURABLE_PREFIX.len() + EPOCH_LEN + 22 + inner.len());
    out.extend_from_slice(DURABLE_PREFIX.as_bytes());
    out.extend_from_slice(&epoch.0);
    out.push(b':');
    out.extend_from_slice(offset.to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(inner);
    out
}

/// The first frame on a durable socket:
/// `{"t":"hello","e":"<epoch>","o":<top>,"recovered":<bool>}`.
pub fn hello(epoch: Epoch, top: u64, recovered: bool) -> String {
    format!(r#"{{"t":"hello","e":"{epoch}","o":{top},"recovered":{recovered}}}"#)
}

/// `{"t":"pos","o":<n>}`: everything addressed to the socket up to `n` has been sent.
pub fn position(offset: u64) -> String {
    format!(r#"{{"t":"pos","o":{offset}}}"#)
}

/// A message on a durable socket: `{"o":<offset>,"d":<content>}`, or `{"d":<content>}`
/// for a message that was not logged; `content` verbatim.
pub fn message(offset: Option<u64>, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 30);
    match offset {
        Some(o) => out.extend_from_slice(format!(r#"{{"o":{o},"d":"#).as_bytes()),
        None => out.extend_from_slice(br#"{"d":"#),
    }
    out.extend_from_slice(content);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: &str = "3f9c2a7b1e4d8c60";

    fn epoch() -> Epoch {
        Epoch::parse(E.as_bytes()).unwrap()
    }

    #[test]
    fn resume_values() {
        let after = |offset| Ok(Resume::After { epoch: epoch(), offset });
        let cases: &[(&str, Result<Resume, InvalidResume>)] = &[
            ("", Ok(Resume::Top)),
            ("3f9c2a7b1e4d8c60:0", after(0)),
            ("3f9c2a7b1e4d8c60:44", after(44)),
            ("3f9c2a7b1e4d8c60%3A44", after(44)),
            ("3f9c2a7b1e4d8c60%3a44", after(44)),
            ("3f9c2a7b1e4d8c60:9007199254740991", after(MAX_OFFSET)),
            ("3f9c2a7b1e4d8c60:9007199254740992", Err(InvalidResume)),
            ("3f9c2a7b1e4d8c60:044", Err(InvalidResume)),
            ("3f9c2a7b1e4d8c60:-1", Err(InvalidResume)),
            ("3f9c2a7b1e4d8c60:+1", Err(InvalidResume)),
            ("3f9c2a7b1e4d8c60:", Err(InvalidResume)),
            ("3F9C2A7B1E4D8C60:1", Err(InvalidResume)),
            ("3f9c2a7b1e4d8c6:1", Err(InvalidResume)),
            ("3f9c2a7b1e4d8c600:1", Err(InvalidResume)),
            ("3f9c2a7b1e4d8c60", Err(InvalidResume)),
            ("3f9c2a7b1e4d8c60:1:2", Err(InvalidResume)),
            ("x", Err(InvalidResume)),
        ];
        for (value, want) in cases {
            assert_eq!(Resume::parse(value), *want, "{value:?}");
        }
    }

    #[test]
    fn envelopes_round_trip_and_bad_ones_are_refused() {
        let payload = envelope(epoch(), 47, br#"{"Item1":1}"#);
        assert_eq!(payload, br#"__FreeIM__(Durable)3f9c2a7b1e4d8c60:47:{"Item1":1}"#);
        let logged = parse_envelope(&payload).unwrap().unwrap();
        assert_eq!((logged.epoch, logged.offset, logged.inner), (epoch(), 47, &br#"{"Item1":1}"#[..]));
        assert_eq!(parse_envelope(br#"{"Item1":1}"#), Ok(None));
        assert_eq!(parse_envelope(b"__FreeIM__(ChanMessage){}"), Ok(None));
        for bad in [
            &b"__FreeIM__(Durable)"[..],
            b"__FreeIM__(Durable)3f9c2a7b1e4d8c60:0:{}",
            b"__FreeIM__(Durable)3f9c2a7b1e4d8c60:x:{}",
            b"__FreeIM__(Durable)3f9c2a7b1e4d8c60:5",
            b"__FreeIM__(Durable)3f9c2a7b1e4d8c6:5:{}",
        ] {
            assert_eq!(parse_envelope(bad), Err(BadEnvelope), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn frames_are_exact() {
        assert_eq!(hello(epoch(), 41, false), r#"{"t":"hello","e":"3f9c2a7b1e4d8c60","o":41,"recovered":false}"#);
        assert_eq!(position(47), r#"{"t":"pos","o":47}"#);
        assert_eq!(message(Some(45), br#"{"a":1}"#), br#"{"o":45,"d":{"a":1}}"#);
        assert_eq!(message(None, br#""yo""#), br#"{"d":"yo"}"#);
    }

    #[test]
    fn random_epochs_parse() {
        let e = Epoch::random();
        assert_eq!(Epoch::parse(e.as_str().as_bytes()), Some(e));
        assert_ne!(Epoch::random(), e);
    }
}
