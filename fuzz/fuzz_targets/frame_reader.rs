//! WebSocket frames from clients, split at arbitrary points: never a panic, and the same
//! answers whatever the split.
#![no_main]
use freeim::internals::FrameReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let mut whole = Vec::new();
    FrameReader::default().feed(bytes, &mut whole);
    let mut pieces = Vec::new();
    let mut reader = FrameReader::default();
    for chunk in bytes.chunks(usize::from(split).max(1)) {
        reader.feed(chunk, &mut pieces);
    }
    assert_eq!(whole, pieces);
});
