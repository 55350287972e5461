//! The little of RESP2 (Redis's wire protocol) that a subscriber needs: commands out, and
//! replies in, parsed straight from the read buffer.
//!
//! Parsing is pure and incremental: a reply cut anywhere is "not complete yet" and stays in
//! the buffer for the next read, so the same bytes give the same messages however the socket
//! splits them. Strings are parsed as byte ranges of the buffer, and message payloads are
//! handed out as slices of its memory (no copy). Bytes that are not RESP2 as Redis writes
//! it are a [`ReplyError::Malformed`]: the stream cannot be trusted past them.

use super::PubSubMessage;
use bytes::BytesMut;
use std::ops::Range;

/// `PING`, encoded: the probe of an idle subscription (a subscribed connection may send it).
pub(super) const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// The largest bulk string accepted: Redis's own default `proto-max-bulk-len` (512 MiB), so
/// anything Redis can deliver is accepted, and a length beyond it means a corrupt stream.
const MAX_BULK: usize = 512 * 1024 * 1024;
/// The longest array accepted; pub/sub replies have at most four elements.
const MAX_ARRAY: usize = 16;

/// A reply from Redis that a subscriber cannot take.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// An error reply (a refused `AUTH`, say).
    #[error("redis answered: {0}")]
    Refused(String),
    /// Bytes that are not RESP2 as Redis writes it: the stream cannot be trusted past them.
    #[error("unparsable reply from redis: {0}")]
    Malformed(&'static str),
}

/// Appends a command as a RESP array of bulk strings.
pub(super) fn encode_command<'a>(out: &mut Vec<u8>, args: impl Iterator<Item = &'a str> + Clone) {
    out.extend_from_slice(format!("*{}\r\n", args.clone().count()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Consumes the complete replies at the front of `buf` (bytes read while subscribing) up to
/// and including the `wanted`-th `subscribe` confirmation, and returns how many confirmations
/// it consumed. Other replies (`+OK` of `AUTH`) are skipped; whatever follows the last wanted
/// confirmation, and an incomplete reply, stay in `buf`.
pub(super) fn take_confirmations(buf: &mut BytesMut, wanted: usize) -> Result<usize, ReplyError> {
    let mut confirmed = 0;
    while confirmed < wanted {
        let Some((value, len)) = parse(buf, 0)? else { break };
        let frame = buf.split_to(len);
        match value {
            Value::Error(range) => return Err(ReplyError::Refused(text(&frame[range]))),
            Value::Array(items) if bulk_is(&frame, items.first(), b"subscribe") => confirmed += 1,
            _ => {}
        }
    }
    Ok(confirmed)
}

/// Moves the complete `message` pushes at the front of `buf` (bytes read from a subscribed
/// connection) into `out`, up to `max`, and returns how many; payloads are slices of `buf`'s
/// memory, not copies. Other pushes (pong, subscribe confirmations) are consumed and skipped;
/// an incomplete reply stays in `buf` for the next read.
pub fn take_messages(buf: &mut BytesMut, out: &mut Vec<PubSubMessage>, max: usize) -> Result<usize, ReplyError> {
    let mut taken = 0;
    while taken < max {
        let Some((value, len)) = parse(buf, 0)? else { break };
        let frame = buf.split_to(len).freeze();
        match value {
            Value::Array(items) if items.len() == 3 && bulk_is(&frame, items.first(), b"message") => {
                let (Value::Bulk(channel), Value::Bulk(payload)) = (&items[1], &items[2]) else {
                    return Err(ReplyError::Malformed("message without channel or payload"));
                };
                out.push(PubSubMessage {
                    channel: text(&frame[channel.clone()]),
                    payload: frame.slice(payload.clone()),
                });
                taken += 1;
            }
            Value::Error(range) => return Err(ReplyError::Refused(text(&frame[range]))),
            _ => {}
        }
    }
    Ok(taken)
}

/// A parsed RESP2 value; strings are byte ranges of the buffer it was parsed from.
#[derive(Debug, PartialEq)]
enum Value {
    Bulk(Range<usize>),
    Simple(Range<usize>),
    Error(Range<usize>),
    Integer,
    Nil,
    Array(Vec<Value>),
}

/// Parses one value at `buf[at..]`: `Ok(None)` when it is not complete yet, else the value
/// and the position just past it.
fn parse(buf: &[u8], at: usize) -> Result<Option<(Value, usize)>, ReplyError> {
    let Some(line_end) = find_crlf(buf, at + 1) else {
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let line = at + 1..line_end;
    let next = line_end + 2;
    match kind {
        b'+' => Ok(Some((Value::Simple(line), next))),
        b'-' => Ok(Some((Value::Error(line), next))),
        b':' => {
            number(&buf[line])?;
            Ok(Some((Value::Integer, next)))
        }
        b'$' => {
            let Some(len) = length(number(&buf[line])?, MAX_BULK)? else {
                return Ok(Some((Value::Nil, next)));
            };
            if buf.len() < next + len + 2 {
                return Ok(None);
            }
            if &buf[next + len..next + len + 2] != b"\r\n" {
                return Err(ReplyError::Malformed("bulk string not followed by CRLF"));
            }
            Ok(Some((Value::Bulk(next..next + len), next + len + 2)))
        }
        b'*' => {
            let Some(len) = length(number(&buf[line])?, MAX_ARRAY)? else {
                return Ok(Some((Value::Nil, next)));
            };
            let (mut items, mut pos) = (Vec::with_capacity(len), next);
            for _ in 0..len {
                let Some((item, after)) = parse(buf, pos)? else {
                    return Ok(None);
                };
                if matches!(item, Value::Array(_)) {
                    return Err(ReplyError::Malformed("nested array"));
                }
                items.push(item);
                pos = after;
            }
            Ok(Some((Value::Array(items), pos)))
        }
        _ => Err(ReplyError::Malformed("unknown reply type")),
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

fn number(digits: &[u8]) -> Result<i64, ReplyError> {
    std::str::from_utf8(digits).ok().and_then(|s| s.parse().ok()).ok_or(ReplyError::Malformed("bad number"))
}

/// A length field: `None` for -1 (nil), an error when negative otherwise or over `max`.
fn length(n: i64, max: usize) -> Result<Option<usize>, ReplyError> {
    match n {
        -1 => Ok(None),
        n if n < 0 => Err(ReplyError::Malformed("negative length")),
        n => usize::try_from(n).ok().filter(|&n| n <= max).map(Some).ok_or(ReplyError::Malformed("length too large")),
    }
}

fn bulk_is(buf: &[u8], value: Option<&Value>, want: &[u8]) -> bool {
    matches!(value, Some(Value::Bulk(range)) if buf[range.clone()].eq_ignore_ascii_case(want))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input, and the first value parsed from it with the position just past it.
    type Case = (&'static [u8], Option<(Value, usize)>);

    #[test]
    fn parses_the_replies_a_subscriber_sees() {
        let cases: &[Case] = &[
            (b"+OK\r\n", Some((Value::Simple(1..3), 5))),
            (b"-ERR bad\r\n", Some((Value::Error(1..8), 10))),
            (b":3\r\n", Some((Value::Integer, 4))),
            (b"$-1\r\n", Some((Value::Nil, 5))),
            (b"$2\r\nhi\r\n", Some((Value::Bulk(4..6), 8))),
            (b"$0\r\n\r\n", Some((Value::Bulk(4..4), 6))),
            (
                b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
                Some((Value::Array(vec![Value::Bulk(8..12), Value::Bulk(18..18)]), 20)),
            ),
            // incomplete at every cut
            (b"", None),
            (b"+OK", None),
            (b"$5\r\nhel", None),
            (b"$5\r\nhello\r", None),
            (b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n", None),
        ];
        for (input, want) in cases {
            assert_eq!(&parse(input, 0).unwrap(), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn corrupt_replies_are_errors_not_panics() {
        let cases: &[&[u8]] = &[
            b"?x\r\n",
            b"$abc\r\n",
            b"$-5\r\n",
            b"$99999999999999999999\r\n",
            b"$600000000\r\n",
            b"$2\r\nhiXX",
            b"*1000\r\n",
            b"*1\r\n*1\r\n:1\r\n",
            b":\r\n",
        ];
        for input in cases {
            assert!(parse(input, 0).is_err(), "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn takes_complete_messages_in_order_and_skips_other_pushes() {
        let stream = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$3\r\none\r\n\
                       *2\r\n$4\r\npong\r\n$0\r\n\r\n\
                       *3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
                       *3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$0\r\n\r\n\
                       *3\r\n$7\r\nmessage\r\n$1\r\na\r\n$5\r\nthr";
        let mut buf = BytesMut::from(&stream[..]);
        let mut out = Vec::new();
        assert_eq!(take_messages(&mut buf, &mut out, 10).unwrap(), 2);
        let got: Vec<(&str, &[u8])> = out.iter().map(|m| (m.channel.as_str(), &m.payload[..])).collect();
        assert_eq!(got, [("a", &b"one"[..]), ("b", &b""[..])]);
        // The incomplete third message stays buffered until the rest arrives.
        buf.extend_from_slice(b"ee\r\n");
        assert_eq!(take_messages(&mut buf, &mut out, 10).unwrap(), 1);
        assert_eq!(&out[2].payload[..], b"three");
        assert!(buf.is_empty());
    }

    #[test]
    fn takes_at_most_max_and_keeps_the_rest() {
        let one = b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n";
        let mut buf = BytesMut::from(&one.repeat(3)[..]);
        let mut out = Vec::new();
        assert_eq!(take_messages(&mut buf, &mut out, 2).unwrap(), 2);
        assert_eq!(take_messages(&mut buf, &mut out, 2).unwrap(), 1);
        assert_eq!(take_messages(&mut buf, &mut out, 2).unwrap(), 0);
    }

    #[test]
    fn an_error_reply_or_a_malformed_message_is_an_error() {
        let cases: &[(&[u8], ReplyError)] = &[
            (b"-NOAUTH Authentication required.\r\n", ReplyError::Refused("NOAUTH Authentication required.".into())),
            (b"*3\r\n$7\r\nmessage\r\n:1\r\n$1\r\nx\r\n", ReplyError::Malformed("message without channel or payload")),
        ];
        for (input, want) in cases {
            let mut out = Vec::new();
            assert_eq!(take_messages(&mut BytesMut::from(*input), &mut out, 10).unwrap_err(), *want);
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, ["SUBSCRIBE", "a b", ""].into_iter());
        assert_eq!(out, b"*3\r\n$9\r\nSUBSCRIBE\r\n$3\r\na b\r\n$0\r\n\r\n");
    }

    #[test]
    fn the_probe_is_an_encoded_ping() {
        let mut out = Vec::new();
        encode_command(&mut out, ["PING"].into_iter());
        assert_eq!(out, PING);
    }

    #[test]
    fn takes_confirmations_up_to_the_wanted_one_and_keeps_what_follows() {
        let stream = b"+OK\r\n\
                       *3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n\
                       *3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n\
                       *3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nx\r\n";
        let mut buf = BytesMut::from(&stream[..]);
        assert_eq!(take_confirmations(&mut buf, 1).unwrap(), 1);
        assert_eq!(take_confirmations(&mut buf, 0).unwrap(), 0);
        assert_eq!(take_confirmations(&mut buf, 1).unwrap(), 1);
        // The message after the last confirmation is left for the subscriber.
        let mut out = Vec::new();
        assert_eq!(take_messages(&mut buf, &mut out, 10).unwrap(), 1);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_refused_subscribe_is_an_error() {
        let mut buf = BytesMut::from(&b"-WRONGPASS invalid password\r\n"[..]);
        assert_eq!(
            take_confirmations(&mut buf, 1).unwrap_err(),
            ReplyError::Refused("WRONGPASS invalid password".into())
        );
    }
}
