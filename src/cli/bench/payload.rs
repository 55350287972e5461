//! The bench's messages: a sequence number and the publish time, padded to a fixed size.
//!
//! The publisher hands the text to [`freeim::ImClient`] (or to the raw baseline), which
//! serializes it as a JSON string; so the frame a socket receives is `"SEQ TS_NS xxx…"`,
//! quotes included, and the receiver reads the time back from there.

/// Default size of the message text (the notes' figures use 100-byte payloads).
pub const MESSAGE_LEN: usize = 100;

/// The text of message `seq`, stamped `ts_ns` (ns since the Unix epoch), padded to `len`
/// bytes (never shorter than its stamp).
pub fn message(seq: u64, ts_ns: u64, len: usize) -> String {
    let mut text = format!("{seq} {ts_ns} ");
    let pad = len.saturating_sub(text.len());
    text.extend(std::iter::repeat_n('x', pad));
    text
}

/// The stamp of a received frame payload (`"SEQ TS …"`), if it is one of ours.
pub fn stamp(frame: &[u8]) -> Option<(u64, u64)> {
    text_stamp(frame.strip_prefix(b"\"")?)
}

/// The stamp of the message a receipt frame acknowledges
/// (`{"content":"\"SEQ TS …\"","receipt":…}`), if it is a receipt of one of ours.
pub fn receipt_stamp(frame: &[u8]) -> Option<(u64, u64)> {
    text_stamp(frame.strip_prefix(br#"{"content":"\""#)?)
}

/// The stamp of a message text (`SEQ TS …`, the content of a durable frame's string).
pub fn text_stamp(text: &[u8]) -> Option<(u64, u64)> {
    let mut fields = text.split(|b| *b == b' ');
    let number = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u64>().ok();
    Some((number(fields.next()?)?, number(fields.next()?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_json_serialization() {
        let text = message(42, 1_700_000_000_123_456_789, MESSAGE_LEN);
        assert_eq!(text.len(), MESSAGE_LEN);
        assert_eq!(message(1, 2, 4096).len(), 4096);
        let frame = freeim::protocol::to_json(text.as_str());
        assert_eq!(stamp(frame.as_bytes()), Some((42, 1_700_000_000_123_456_789)));
        assert_eq!(stamp(b"\"nope\""), None);
        let receipt = freeim::protocol::to_json(&freeim::protocol::Receipt {
            content: &frame,
            receipt: freeim::protocol::RECEIPT_DELIVERED,
        });
        assert_eq!(receipt_stamp(receipt.as_bytes()), Some((42, 1_700_000_000_123_456_789)));
        assert_eq!(stamp(receipt.as_bytes()), None);
    }
}
