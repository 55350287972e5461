//! Protective limits: inbound frame size, slow consumers, dead peers (heartbeat), the
//! handshake timeout.

mod common;
use common::*;
use freeim::backend::Op;
use freeim::gateway::config::HANDSHAKE_TIMEOUT;
use freeim::internals::MAX_INBOUND_FRAME;
use freeim::protocol::{DirectMessage, NodeCommand, to_json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

/// When a socket stalled in its handshake must still be open: well before the timeout.
const STILL_OPEN_AT: Duration = Duration::from_secs(5);
/// When it must be closed by: the timeout, and slack for a loaded machine.
const CLOSED_BY: Duration = Duration::from_secs(15);

both!(an_inbound_frame_over_64_kib_closes_with_1009, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    assert_eq!(MAX_INBOUND_FRAME, 64 * 1024);
    let mut ok = cluster.connect(1).await;
    let mut big = cluster.connect(2).await;
    ok.send_text(&"a".repeat(MAX_INBOUND_FRAME)).await;
    big.send_text(&"a".repeat(MAX_INBOUND_FRAME + 1)).await;
    assert_eq!(big.expect_close().await, (1009, "frame too big".to_owned()));
    cluster.expect_metric(0, "freeim_disconnects_total{reason=\"violation\"}", 1).await;
    assert_eq!(cluster.metric(0, "freeim_disconnects_total{reason=\"limit\"}").await, 0);
    eventually(|| async { cluster.online().await == pairs(&[("1", "1")]) }).await;
    // Exactly the limit is fine: the socket still gets messages.
    cluster.im.send_message(0, &[1], "after", false).await.unwrap();
    assert_eq!(ok.recv_text().await, "\"after\"");
    drop((ok, big)); // closed by the client: no close linger at shutdown
    cluster.shutdown().await;
});

// A client that never reads while the node pushes more than `max_queue_bytes` is cut off;
// what it did get is whole frames in order, the node goes on serving the others, and its
// presence is cleaned.
both!(a_slow_consumer_is_disconnected, |kind| async move {
    let cluster = Cluster::start_with(kind, 1, |c| c.max_queue_bytes = 64 * 1024).await;
    let mut slow = connect_small_buffer(&cluster.url(1).await).await;
    let mut other = cluster.connect(2).await;
    eventually(|| async { cluster.online().await == pairs(&[("1", "1"), ("2", "1")]) }).await;
    let chunk = "y".repeat(60 * 1024);
    const N: usize = 100; // ~6 MB: more than the kernel buffers of both sides (~3 MB here)
    // One pipeline, so the node gets them in a burst (and the close frame can still be
    // flushed once the client reads).
    let channel = cluster.im.keys().server(&cluster.servers[0]);
    let publish = |i: usize| {
        let content = to_json(&format!("{i:04}{chunk}"));
        let message = NodeCommand::Direct(DirectMessage { sender: 0, receivers: vec![1], content, receipt: false });
        Op::Publish { channel: channel.clone(), payload: message.encode().into() }
    };
    cluster.backend().execute((0..N).map(publish).collect()).await.unwrap();
    // The node handles its channel in order: once `other` has this, the slow client's
    // messages were all handled.
    cluster.im.send_message(0, &[2], "marker", false).await.unwrap();
    assert_eq!(other.recv_text().await, "\"marker\"");
    let mut received = 0;
    let end = loop {
        match slow.next_or_end(WAIT).await {
            Ok(Some(Message::Text(text))) => {
                assert_eq!(text.as_str(), format!("\"{received:04}{chunk}\""), "frame {received}");
                received += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(end) => break end,
        }
    };
    assert!(received < N, "the slow client was not cut off");
    // Whole frames, then the close frame (not a close frame spliced into half a frame).
    assert_eq!(end, End::Close(1008, "slow consumer".to_owned()));
    // Every frame it did not get was counted as dropped: those discarded from its queue, and
    // those that came while it closed.
    cluster.expect_metric(0, "freeim_disconnects_total{reason=\"slow_consumer\"}", 1).await;
    assert_eq!(cluster.metric(0, "freeim_queue_dropped_frames_total").await, (N - received) as u64);
    eventually(|| async { cluster.online().await == pairs(&[("2", "1")]) }).await;
    cluster.im.send_message(0, &[2], "still served", false).await.unwrap();
    assert_eq!(other.recv_text().await, "\"still served\"");
    let mut late = cluster.connect(3).await;
    cluster.im.send_message(0, &[3], "newcomer", false).await.unwrap();
    assert_eq!(late.recv_text().await, "\"newcomer\"");
    drop((slow, other, late)); // closed by the client: no close linger at shutdown
    cluster.shutdown().await;
});

// With a 1 s ping interval and pong timeout, a peer that answers nothing is closed and
// its presence cleaned, while a real client (which answers pings) stays.
both!(a_dead_peer_is_closed_by_the_heartbeat, |kind| async move {
    let cluster = Cluster::start_with(kind, 1, |c| {
        c.ping_interval = std::time::Duration::from_secs(1);
        c.pong_timeout = std::time::Duration::from_secs(1);
    })
    .await;
    let mut dead = RawWs::connect(&cluster.url(1).await).await;
    let mut alive = cluster.connect(2).await;
    eventually(|| async { cluster.online().await == pairs(&[("1", "1"), ("2", "1")]) }).await;
    let reader = tokio::spawn(async move {
        let pings = alive.keep_reading_until(|pings| pings >= 4).await;
        (alive, pings)
    });
    assert_eq!(dead.read_exact(2).await, [0x89, 0x00], "the server's ping frame");
    eventually(|| async { cluster.online().await == pairs(&[("2", "1")]) }).await;
    assert_eq!(dead.read_to_end().await, b"", "closed without another frame");
    cluster.expect_metric(0, "freeim_disconnects_total{reason=\"dead_peer\"}", 1).await;
    let (mut alive, pings) = reader.await.unwrap();
    assert!(pings >= 4);
    assert_eq!(cluster.online().await, pairs(&[("2", "1")]));
    cluster.im.send_message(0, &[2], "alive", false).await.unwrap();
    assert_eq!(alive.recv_text().await, "\"alive\"");
    drop((dead, alive)); // closed by the client: no close linger at shutdown
    cluster.shutdown().await;
});

// Below the queue limit, a burst bigger than the kernel buffers waits in the node's queue
// and reaches a client that reads late whole and in order (partial writes resumed).
both!(a_burst_beyond_the_kernel_buffers_is_queued_in_order, |kind| async move {
    let cluster = Cluster::start_with(kind, 1, |c| c.max_queue_bytes = 32 * 1024 * 1024).await;
    let mut late = connect_small_buffer(&cluster.url(1).await).await;
    let mut other = cluster.connect(2).await;
    eventually(|| async { cluster.online().await == pairs(&[("1", "1"), ("2", "1")]) }).await;
    let channel = cluster.im.keys().server(&cluster.servers[0]);
    const N: usize = 100;
    let publish = |i: usize| {
        // Sizes vary so that frame boundaries and partial writes fall everywhere.
        let content = to_json(&format!("{i:04}{}", "q".repeat(40_000 + i * 517)));
        let message = NodeCommand::Direct(DirectMessage { sender: 0, receivers: vec![1], content, receipt: false });
        Op::Publish { channel: channel.clone(), payload: message.encode().into() }
    };
    cluster.backend().execute((0..N).map(publish).collect()).await.unwrap();
    cluster.im.send_message(0, &[2], "marker", false).await.unwrap();
    assert_eq!(other.recv_text().await, "\"marker\"");
    for i in 0..N {
        let want = format!("\"{i:04}{}\"", "q".repeat(40_000 + i * 517));
        assert!(late.recv_text().await == want, "frame {i}");
    }
    late.expect_silence().await;
    assert_eq!(cluster.online().await, pairs(&[("1", "1"), ("2", "1")]));
    drop((late, other)); // closed by the client: no close linger at shutdown
    cluster.shutdown().await;
});

// A client that connects and sends nothing, or only part of a request head, holds its
// socket no longer than the handshake timeout: still open at 5 s, closed (with nothing
// written to it) by 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_closed_after_the_timeout() {
    assert_eq!(HANDSHAKE_TIMEOUT, Duration::from_secs(10));
    let cluster = Cluster::start(Kind::Memory, 1).await;
    let addr = cluster.addr(0);
    let half_head = b"GET /ws?token=abc HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\n";
    tokio::join!(expect_handshake_timeout(addr, b""), expect_handshake_timeout(addr, half_head));
    assert_eq!(cluster.nodes[0].connections(), 0);
    cluster.shutdown().await;
}

/// Connects and sends `prefix`; asserts that the server keeps the socket open at
/// [`STILL_OPEN_AT`] and closes it, without an answer, after [`HANDSHAKE_TIMEOUT`] but
/// before [`CLOSED_BY`].
async fn expect_handshake_timeout(addr: std::net::SocketAddr, prefix: &[u8]) {
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(prefix).await.unwrap();
    let mut answer = Vec::new();
    let early = tokio::time::timeout(STILL_OPEN_AT, stream.read_to_end(&mut answer)).await;
    assert!(early.is_err(), "closed before {STILL_OPEN_AT:?}: {early:?}, {answer:?}");
    let end = tokio::time::timeout_at((start + CLOSED_BY).into(), stream.read_to_end(&mut answer)).await;
    assert!(matches!(end, Ok(Ok(0))), "not closed within {CLOSED_BY:?}: {end:?}");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    assert!(start.elapsed() >= HANDSHAKE_TIMEOUT, "closed after {:?}", start.elapsed());
}
