//! The demo's form inputs (`src/cli/demo/input.rs`, compiled in from the binary crate):
//! any body yields values within the documented limits or a typed error, never a panic.
#![no_main]
#![allow(dead_code)]

#[path = "../../src/cli/demo/error.rs"]
mod error;
#[path = "../../src/cli/demo/input.rs"]
mod input;

use input::{Fields, MAX_CHANNEL_CHARS, MAX_CLIENT_ID, MAX_MESSAGE_BYTES, MAX_NICK_CHARS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let fields = Fields::parse(data);
    if let Ok(id) = fields.client_id("websocketId") {
        assert!((1..=MAX_CLIENT_ID).contains(&id));
    }
    let _ = fields.optional_client_id("senderWebsocketId");
    if let Ok(chan) = fields.channel("channel") {
        assert!(!chan.is_empty() && chan.chars().count() <= MAX_CHANNEL_CHARS);
        assert!(!chan.chars().any(char::is_control));
    }
    if let Ok(nick) = fields.nick("nick") {
        assert!(!nick.is_empty() && nick.chars().count() <= MAX_NICK_CHARS);
        assert!(!nick.chars().any(char::is_control));
    }
    let _ = fields.flag("isReceipt");
    if let Ok(message) = fields.message("message") {
        assert!(message.len() <= MAX_MESSAGE_BYTES);
    }
});
