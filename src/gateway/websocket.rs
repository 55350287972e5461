//! The WebSocket pieces the gateway needs, on top of tungstenite's frame codec.
//!
//! Why not a full WebSocket stream type: the dispatcher writes a frame that was encoded once
//! straight to many sockets (one vectored write per socket, no per-receiver copy, no task
//! wake-up), and an idle connection must cost about a kilobyte. Every WebSocket stream type
//! owns its socket and per-connection buffers (tungstenite reads into 128 KiB), which rules
//! both out. So tungstenite parses and formats frame headers and derives the accept key,
//! and this module owns the bytes: the upgrade response, encode-once outgoing frames, and
//! an incremental parser for what clients send (which FreeIM ignores but for control frames).

use bytes::Bytes;
use std::io::Cursor;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Largest inbound frame accepted; a larger one closes the socket with 1009.
pub const MAX_INBOUND_FRAME: usize = 64 * 1024;

/// Close codes the gateway sends (RFC 6455 §7.4.1).
pub(crate) mod close_code {
    /// The endpoint is going away: force offline, shutdown.
    pub(crate) const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub(crate) const PROTOCOL_ERROR: u16 = 1002;
    /// Policy violation: used for slow consumers.
    pub(crate) const POLICY: u16 = 1008;
    /// A frame was larger than [`super::MAX_INBOUND_FRAME`].
    pub(crate) const TOO_BIG: u16 = 1009;
}

/// The `101 Switching Protocols` answer for a client's `Sec-WebSocket-Key`.
pub fn upgrade_response(key: &[u8]) -> String {
    let accept = tungstenite::handshake::derive_accept_key(key);
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// An unmasked, final server frame: header and payload in one buffer, ready to be shared.
fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let header = FrameHeader { opcode, ..FrameHeader::default() };
    let mut out = Vec::with_capacity(header.len(payload.len() as u64) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A text frame carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Data(Data::Text), payload)
}

/// A close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    frame(OpCode::Control(Control::Close), &payload)
}

/// The empty ping the heartbeat sends.
pub fn ping_frame() -> Bytes {
    frame(OpCode::Control(Control::Ping), &[])
}

/// What a client sent that the gateway acts on.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A ping: answer with this pong frame.
    Ping(Bytes),
    /// The client closes: answer with this close frame and end.
    Close(Bytes),
    /// The client broke the protocol; close with this code.
    Violation(u16, &'static str),
}

/// Incremental parser of client frames. Holds heap memory only while a frame is split
/// across reads (so an idle connection holds none).
#[derive(Debug, Default)]
pub struct FrameReader {
    partial: Vec<u8>,
    /// Complete frames parsed so far (for the per-socket rate limit).
    frames: u64,
    /// Set after a close frame or a violation: nothing more is parsed.
    done: bool,
}

impl FrameReader {
    /// Feeds freshly read bytes; pushes onto `out` what needs an answer and stops at the
    /// first violation. Data frames are checked and skipped: FreeIM ignores inbound content.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<Inbound>) {
        if self.done {
            return;
        }
        let answered = out.len();
        if self.partial.is_empty() {
            let used = parse_frames(data, out, &mut self.frames);
            self.partial.extend_from_slice(&data[used..]);
        } else {
            self.partial.extend_from_slice(data);
            let used = parse_frames(&self.partial, out, &mut self.frames);
            self.partial.drain(..used);
        }
        self.done = out[answered..].iter().any(|i| matches!(i, Inbound::Close(_) | Inbound::Violation(..)));
        if self.done || self.partial.is_empty() {
            self.partial = Vec::new();
        }
    }

    /// Complete frames parsed so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }
}

/// Parses whole frames from `buf`, counting them in `frames`; returns how many bytes they used.
fn parse_frames(buf: &[u8], out: &mut Vec<Inbound>, frames: &mut u64) -> usize {
    let mut used = 0;
    while used < buf.len() {
        let mut cursor = Cursor::new(&buf[used..]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => break,
            Err(_) => return violation(out, close_code::PROTOCOL_ERROR, "malformed frame", buf.len()),
        };
        if len > MAX_INBOUND_FRAME as u64 {
            return violation(out, close_code::TOO_BIG, "frame too big", buf.len());
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return violation(out, close_code::PROTOCOL_ERROR, "reserved bits set", buf.len());
        }
        if matches!(header.opcode, OpCode::Control(_)) && (len > 125 || !header.is_final) {
            return violation(out, close_code::PROTOCOL_ERROR, "oversized or fragmented control frame", buf.len());
        }
        let Some(mask) = header.mask else {
            return violation(out, close_code::PROTOCOL_ERROR, "unmasked client frame", buf.len());
        };
        let start = used + cursor.position() as usize;
        let end = start + len as usize;
        if end > buf.len() {
            break;
        }
        used = end;
        *frames += 1;
        let unmasked = || {
            let mut payload = buf[start..end].to_vec();
            apply_mask(&mut payload, mask);
            payload
        };
        match header.opcode {
            OpCode::Control(Control::Ping) => {
                let payload = unmasked();
                out.push(Inbound::Ping(frame(OpCode::Control(Control::Pong), &payload)));
            }
            OpCode::Control(Control::Close) => {
                let payload = unmasked();
                // Echo the client's status code, as RFC 6455 §5.5.1 suggests.
                let code = payload.get(..2).unwrap_or(&[]);
                out.push(Inbound::Close(frame(OpCode::Control(Control::Close), code)));
                return buf.len();
            }
            // Pongs only prove liveness (any read does); data is ignored, as in FreeIM;
            // reserved opcodes were refused by the header parser.
            _ => {}
        }
    }
    used
}

/// Masks or unmasks a client payload (the gateway only ever unmasks control payloads, at
/// most 125 bytes).
pub(crate) fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

fn violation(out: &mut Vec<Inbound>, code: u16, why: &'static str, consumed: usize) -> usize {
    out.push(Inbound::Violation(code, why));
    consumed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::internals::client_frame;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(first, payload, [1, 2, 3, 4])
    }

    #[test]
    fn server_frames_are_exact_bytes() {
        assert_eq!(&text_frame(b"\"hi\"")[..], b"\x81\x04\"hi\"");
        assert_eq!(&close_frame(1001, "disconnect")[..], b"\x88\x0c\x03\xe9disconnect");
        assert_eq!(&ping_frame()[..], b"\x89\x00");
        let long = text_frame(&[b'a'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        assert_eq!(long.len(), 304);
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        let response = upgrade_response(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{response}");
    }

    #[test]
    fn reader_answers_control_frames_across_split_reads() {
        let mut bytes = masked(0x81, b"ignored text");
        bytes.extend(masked(0x89, b"p"));
        bytes.extend(masked(0x88, &[0x03, 0xe8, b'x']));
        let mut reader = FrameReader::default();
        let mut out = Vec::new();
        for chunk in bytes.chunks(3) {
            reader.feed(chunk, &mut out);
        }
        assert_eq!(
            out,
            vec![
                Inbound::Ping(Bytes::from_static(b"\x8a\x01p")),
                Inbound::Close(Bytes::from_static(b"\x88\x02\x03\xe8")),
            ]
        );
        assert!(reader.partial.is_empty());
    }

    /// The frame_reader fuzz target's property: after a close or a violation the reader must
    /// stop, or the answers would depend on how the bytes were split across reads.
    #[test]
    fn reader_stops_after_close_or_violation() {
        let mut bytes = masked(0x88, &[0x03, 0xe8]);
        bytes.extend(masked(0x89, b"late"));
        bytes.extend([0x81, 0x01, b'x']);
        let mut whole = Vec::new();
        FrameReader::default().feed(&bytes, &mut whole);
        let mut split = Vec::new();
        let mut reader = FrameReader::default();
        for chunk in bytes.chunks(1) {
            reader.feed(chunk, &mut split);
        }
        assert_eq!(whole, split);
        assert_eq!(whole, vec![Inbound::Close(Bytes::from_static(b"\x88\x02\x03\xe8"))]);
    }

    #[test]
    fn reader_rejects_bad_frames() {
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (masked(0x81, &vec![b'a'; MAX_INBOUND_FRAME + 1]), close_code::TOO_BIG),
            (vec![0x81, 0x01, b'a'], close_code::PROTOCOL_ERROR),
            (masked(0x8b, b""), close_code::PROTOCOL_ERROR),
            (masked(0xf1, b"x"), close_code::PROTOCOL_ERROR),
        ];
        for (bytes, code) in cases {
            let mut out = Vec::new();
            FrameReader::default().feed(&bytes, &mut out);
            assert!(matches!(out.last(), Some(Inbound::Violation(c, _)) if *c == code), "{:x?}: {out:?}", &bytes[..2]);
        }
        let mut out = Vec::new();
        FrameReader::default().feed(&masked(0x81, &vec![b'a'; MAX_INBOUND_FRAME]), &mut out);
        assert!(out.is_empty(), "a frame of exactly the limit is accepted");
    }
}
