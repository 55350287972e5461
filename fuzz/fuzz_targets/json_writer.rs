//! Our Newtonsoft-compatible JSON writer: any string survives a round trip through it.
#![no_main]
use freeim::protocol::to_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let written = to_json(text);
    let read: String = serde_json::from_str(&written).expect("valid JSON");
    assert_eq!(read, text);
    assert!(!written.contains('\u{2028}') && !written.contains('\u{2029}') && !written.contains('\u{85}'));
});
