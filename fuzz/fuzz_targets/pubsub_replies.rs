//! Bytes a Redis subscription reads: parsing never panics, and reading them in two pieces
//! (as two socket reads would deliver them) gives the very messages of reading them whole.
#![no_main]
use bytes::BytesMut;
use freeim::internals::{ReplyError, take_messages};
use libfuzzer_sys::fuzz_target;

type Messages = Vec<(String, Vec<u8>)>;

/// Feeds `pieces` one after another, taking messages after each, as the subscriber does.
fn read(pieces: &[&[u8]]) -> Result<Messages, ReplyError> {
    let (mut buf, mut out) = (BytesMut::new(), Vec::new());
    for piece in pieces {
        buf.extend_from_slice(piece);
        take_messages(&mut buf, &mut out, usize::MAX)?;
    }
    Ok(out.into_iter().map(|m| (m.channel, m.payload.to_vec())).collect())
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let cut = usize::from(cut) % (stream.len() + 1);
    let whole = read(&[stream]);
    let split = read(&[&stream[..cut], &stream[cut..]]);
    if let Ok(messages) = whole {
        assert_eq!(split, Ok(messages));
    }
});
