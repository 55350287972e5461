//! What a client sends: FreeIM ignores content, but pings get pongs and a close gets its
//! echo, byte for byte, including frames sent in the same packet as the upgrade request.

mod common;
use common::*;
use tokio::io::AsyncWriteExt;

both!(a_ping_gets_a_pong_with_its_payload, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut raw = RawWs::connect(&cluster.url(1).await).await;
    raw.send_frame(0x81, b"ignored content").await;
    raw.send_frame(0x89, b"are you there").await;
    assert_eq!(raw.read_exact(15).await, b"\x8a\x0dare you there");
    raw.send_frame(0x89, b"").await;
    assert_eq!(raw.read_exact(2).await, b"\x8a\x00");
    cluster.im.send_message(0, &[1], "x", false).await.unwrap();
    assert_eq!(raw.read_exact(5).await, b"\x81\x03\"x\"");
    cluster.shutdown_after(raw).await;
});

both!(frames_in_the_upgrade_packet_are_not_lost, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let (addr, target) = split_url(&cluster.url(1).await);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut packet = upgrade_request(&target).into_bytes();
    packet.extend(masked_frame(0x89, b"early"));
    stream.write_all(&packet).await.unwrap();
    let mut raw = RawWs { stream };
    let answer = raw.read_exact(129).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "{answer}");
    assert_eq!(raw.read_exact(7).await, b"\x8a\x05early");
    cluster.shutdown_after(raw).await;
});

both!(a_client_close_is_echoed_and_cleans_presence, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut raw = RawWs::connect(&cluster.url(1).await).await;
    eventually(None, || async { cluster.online().await == pairs(&[("1", "1")]) }).await;
    raw.send_frame(0x88, b"\x03\xe8bye").await;
    // The echo carries the status code, then the server ends the TCP connection.
    assert_eq!(raw.read_to_end().await, b"\x88\x02\x03\xe8");
    eventually(None, || async { cluster.online().await.is_empty() }).await;
    cluster.shutdown().await;
});

both!(a_protocol_violation_closes_with_1002, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut raw = RawWs::connect(&cluster.url(1).await).await;
    let mut other = cluster.connect(2).await;
    // An unmasked client frame.
    raw.stream.write_all(b"\x81\x02hi").await.unwrap();
    let end = raw.read_to_end().await;
    assert_eq!(&end[..4], b"\x88\x17\x03\xea", "{end:x?}");
    assert_eq!(&end[4..], b"unmasked client frame");
    eventually(None, || async { cluster.online().await == pairs(&[("2", "1")]) }).await;
    cluster.im.send_message(0, &[2], "fine", false).await.unwrap();
    assert_eq!(other.recv_text().await, "\"fine\"");
    cluster.shutdown_after(other).await;
});
