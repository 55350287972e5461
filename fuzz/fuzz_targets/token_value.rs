//! Token values from Redis and token strings from URLs: never a panic.
#![no_main]
use freeim::protocol::{TokenValue, is_token_shaped, to_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<TokenValue>(data) {
        let again: TokenValue = serde_json::from_str(&to_json(&value)).expect("our own encoding parses");
        assert_eq!(again, value);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = is_token_shaped(text);
    }
});
