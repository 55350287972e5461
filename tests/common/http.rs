//! One small HTTP/1.1 client on a raw TCP stream: a test writes the exact request (built
//! by [`request`] or by hand) and reads the whole answer, as the server closes the
//! connection after it. The gateway's `/healthz` and `/metrics`, the demo's routes and
//! refused upgrades all go through [`http`].

use super::{RECOVERY, WAIT, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

/// What the server answered.
#[derive(Debug)]
pub struct Answer {
    /// The code of the status line (`401` for `HTTP/1.1 401 Unauthorized`).
    pub status: u16,
    /// Everything after the blank line that ends the head.
    pub body: String,
}

/// A request for `target` with `headers` and `body` (a `Content-Length` is added), asking
/// the server to close the connection after its answer.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text
}

/// A plain `GET` of `target`.
pub fn get(target: &str) -> String {
    request("GET", target, &[], "")
}

/// Sends `request` as is to `addr` and reads the answer until the server closes (within
/// [`WAIT`]).
pub async fn http(addr: impl ToSocketAddrs, request: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer to {request:?}");
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Answer { status: status_of(&answer), body }
}

/// The code of an HTTP status line such as `HTTP/1.1 401 Unauthorized`.
pub fn status_of(answer: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next().unwrap_or_default();
    let code = line.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3));
    code.and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"))
}

/// Waits until `addr` answers `/healthz` with `status`, up to [`RECOVERY`].
pub async fn wait_health(addr: impl ToSocketAddrs + Copy, status: u16) {
    eventually(Some(RECOVERY), || async move { http(addr, &get("/healthz")).await.status == status }).await;
}
