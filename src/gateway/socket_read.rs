//! Reading a socket without the extra `recv` that only finds nothing.
//!
//! Tokio's `TcpStream::try_read` keeps a socket marked readable until a read returns
//! `WouldBlock`. After a short read (fewer bytes than asked for), the next
//! `readable().await` therefore returns at once and one more `recv` finds nothing: two
//! syscalls and two wake-ups per arrival where one does. With edge-triggered epoll, data
//! that arrives after a read is reported as a new event, so a short read has drained the
//! socket and its readiness can be cleared there and then, as Tokio's own `AsyncRead` does
//! on Linux. The clearing is tied to the readiness seen before the read, so an event that
//! came in meanwhile is never lost. At a million idle sockets every heartbeat is such a
//! read on both ends (see `heartbeat`).

use std::io::{self, Read};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// `stream.try_read(buf)`, except that a short read also clears the read readiness.
pub fn try_read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    if !cfg!(target_os = "linux") {
        return stream.try_read(buf);
    }
    let mut short = None;
    let result = stream.try_io(Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(stream)).read(buf)?;
        if 0 < n && n < buf.len() {
            // Drained: `WouldBlock` makes Tokio clear the readiness it saw before the read.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match short {
        Some(n) => Ok(n),
        None => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_short_read_clears_the_readiness_and_later_data_is_still_seen() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        peer.write_all(b"ping").await.unwrap();
        stream.readable().await.unwrap();
        assert_eq!(try_read(&stream, &mut buf).unwrap(), 4);
        // Cleared: Tokio does not even try the next read (plain `try_read` would have it try).
        let mut tried = false;
        let next = stream.try_io(Interest::READABLE, || {
            tried = true;
            Ok(())
        });
        assert_eq!((next.unwrap_err().kind(), tried), (io::ErrorKind::WouldBlock, false));
        peer.write_all(b"pong!").await.unwrap();
        stream.readable().await.unwrap();
        assert_eq!(try_read(&stream, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"pong!");
        // A full read leaves the readiness set: more may be waiting.
        peer.write_all(&[7u8; 64]).await.unwrap();
        stream.readable().await.unwrap();
        assert_eq!(try_read(&stream, &mut buf).unwrap(), 64);
        assert_eq!(try_read(&stream, &mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
