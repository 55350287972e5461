//! Not a public API: the seam through which freeim's own bench, fuzz targets and tests reach
//! internals. Anything here may change or go away in any release.

// The backend: the RESP2 reader of a Redis subscription (fuzz target `pubsub_replies`).
pub use crate::backend::resp::{ReplyError, take_messages};

#[cfg(feature = "gateway")]
pub use gateway::*;

/// The gateway's pieces: frame codec and reader, head reader, socket queue, listen socket.
#[cfg(feature = "gateway")]
mod gateway {
    pub use crate::gateway::http::{HeadError, RequestHead, read_head};
    pub use crate::gateway::listener::bind;
    pub use crate::gateway::outbox::{Outbox, Overflow, Sink};
    pub use crate::gateway::socket_read::try_read;
    use crate::gateway::websocket::apply_mask;
    pub use crate::gateway::websocket::{
        FrameReader, Inbound, MAX_INBOUND_FRAME, close_frame, ping_frame, text_frame, upgrade_response,
    };

    /// The largest frame header a client sends: first byte, 127 and a 64-bit length, mask.
    const MAX_CLIENT_HEADER: usize = 14;

    /// A masked frame as a client sends it: `first` is the FIN bit and opcode byte (`0x81`
    /// for a final text frame). For load generators and tests; the gateway only parses these.
    pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_CLIENT_HEADER + payload.len());
        out.push(first);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], mask);
        out
    }
}
