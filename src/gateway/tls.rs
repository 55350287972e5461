//! TLS for `wss://`: loading the certificate and key, and the byte paths through a session.
//!
//! tokio-rustls performs the TLS handshake; after the WebSocket upgrade the connection keeps
//! the plain `TcpStream` and the rustls session side by side (see `connection.rs`), so the
//! dispatcher's direct, vectored, non-blocking writes work the same over TLS: frames go into
//! the session (bounded by [`SESSION_BUFFER`]) and the records it produces are written
//! with `try_write`; what the kernel does not take waits in the session.

use rustls::ServerConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;

/// Encrypted bytes a session may hold before it refuses more plaintext; the rest waits in
/// the connection's bounded queue like on a plain socket.
pub(crate) const SESSION_BUFFER: usize = 64 * 1024;

/// The server configuration for a PEM certificate chain and PEM private key. Errors name
/// the file and the reason.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ("tls-cert", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(("tls-cert", format!("{}: no certificate found", cert.display())));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| ("tls-key", format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| ("tls-key", format!("certificate and key do not make a TLS configuration: {e}")))?;
    Ok(Arc::new(config))
}

/// `io::Write` onto a shared socket without waiting: a full socket is `WouldBlock`.
struct NonBlocking<'a>(&'a TcpStream);

impl Write for NonBlocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    /// All the records rustls has queued in one system call, not one per record.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the session's pending records; `Ok(true)` when none are left.
pub(crate) fn drain(session: &mut ServerConnection, stream: &TcpStream) -> io::Result<bool> {
    while session.wants_write() {
        match session.write_tls(&mut NonBlocking(stream)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Encrypts as much of `frames` as the session takes and writes what the socket takes;
/// returns the plaintext bytes taken (it may end inside a frame, as a plain `writev` may).
/// The frames go in as one vectored write, so small frames share records (up to 16 KiB
/// each) instead of paying a record, its AEAD and its system call each.
pub(crate) fn write<'a>(
    session: &mut ServerConnection,
    stream: &TcpStream,
    frames: impl Iterator<Item = &'a [u8]>,
) -> io::Result<usize> {
    let slices: Vec<io::IoSlice<'a>> = frames.map(io::IoSlice::new).collect();
    let taken = session.writer().write_vectored(&slices)?;
    drain(session, stream)?;
    Ok(taken)
}

/// Feeds ciphertext read from the socket and hands the decrypted bytes to `plaintext`.
/// `Ok(false)` when the peer closed the TLS session.
pub(crate) fn read(
    session: &mut ServerConnection,
    mut data: &[u8],
    mut plaintext: impl FnMut(&[u8]),
) -> io::Result<bool> {
    while !data.is_empty() {
        session.read_tls(&mut data)?;
        session.process_new_packets().map_err(io::Error::other)?;
        if !decrypted(session, &mut plaintext)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Hands over what the session has decrypted; `Ok(false)` at the peer's close_notify.
pub(crate) fn decrypted(session: &mut ServerConnection, plaintext: &mut impl FnMut(&[u8])) -> io::Result<bool> {
    let mut buf = [0u8; 2048];
    loop {
        match session.reader().read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => plaintext(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}
