//! Receipts: a sender asking for one gets, per receiver, "发送成功" (delivered) or
//! "用户不在线" (offline) as an ordinary message from the receiver, byte for byte as FreeIM.

mod common;
use common::*;

/// The text frame of a receipt for `content` with `status`.
fn receipt(content: &str, status: &str) -> String {
    format!(r#"{{"content":{},"receipt":"{status}"}}"#, serde_json::to_string(content).unwrap())
}

both!(delivered_receipt_across_nodes, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let mut sender = cluster.connect(1).await; // node 1
    let mut receiver = cluster.connect(2).await; // node 2
    cluster.im.send_message(1, &[2], "hi", true).await.unwrap();
    assert_eq!(receiver.recv_text().await, "\"hi\"");
    assert_eq!(sender.recv_text().await, r#"{"content":"\"hi\"","receipt":"发送成功"}"#);
    sender.expect_silence().await;
    receiver.expect_silence().await;
    cluster.shutdown_after((sender, receiver)).await;
});

both!(receipt_is_published_to_the_senders_node_as_freeim_does, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let mut watch = cluster.backend().subscribe(vec![cluster.im.keys().server(&cluster.servers[1])]);
    assert!(watch.ready().await, "subscribed");
    let receiver = cluster.connect(2).await;
    cluster.im.send_message(4, &[2, 5], "hi", true).await.unwrap();
    // Receipts go from each receiver to sender 4 (node 1), receipt off; 2 is online, 5 is not.
    let mut got = vec![next_publish(&mut watch).await.1, next_publish(&mut watch).await.1];
    got.sort();
    let want = [
        r#"{"Item1":2,"Item2":[4],"Item3":"{\"content\":\"\\\"hi\\\"\",\"receipt\":\"发送成功\"}","Item4":false}"#,
        r#"{"Item1":5,"Item2":[4],"Item3":"{\"content\":\"\\\"hi\\\"\",\"receipt\":\"用户不在线\"}","Item4":false}"#,
    ];
    assert_eq!(got, want);
    cluster.shutdown_after(receiver).await;
});

both!(offline_receipt_when_the_receiver_has_no_socket, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let mut sender = cluster.connect(1).await;
    let message = serde_json::json!({"text": "anyone?"});
    cluster.im.send_message(1, &[5], &message, true).await.unwrap();
    assert_eq!(sender.recv_text().await, receipt(r#"{"text":"anyone?"}"#, "用户不在线"));
    sender.expect_silence().await;
    cluster.shutdown_after(sender).await;
});

both!(one_receipt_per_receiver, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let mut sender = cluster.connect(1).await;
    let mut a = cluster.connect(2).await;
    let mut b = cluster.connect(3).await;
    cluster.im.send_message(1, &[2, 3, 5, 2], "x", true).await.unwrap();
    assert_eq!(a.recv_text().await, "\"x\"");
    assert_eq!(b.recv_text().await, "\"x\"");
    let mut got = vec![sender.recv_text().await, sender.recv_text().await, sender.recv_text().await];
    got.sort();
    let mut want = vec![receipt("\"x\"", "发送成功"), receipt("\"x\"", "发送成功"), receipt("\"x\"", "用户不在线")];
    want.sort();
    assert_eq!(got, want);
    sender.expect_silence().await;
    cluster.shutdown_after((sender, a, b)).await;
});

both!(no_receipt_to_oneself, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut a = cluster.connect(3).await;
    let mut b = cluster.connect(3).await;
    cluster.im.send_message(3, &[3], "me", true).await.unwrap();
    assert_eq!(a.recv_text().await, "\"me\"");
    assert_eq!(b.recv_text().await, "\"me\"");
    a.expect_silence().await;
    b.expect_silence().await;
    cluster.shutdown_after((a, b)).await;
});

// No receipt when the system (client 0) sends, nor unless the sender asks for one. The
// quiet socket is the sender's, where a receipt would arrive (for the system too).
both!(no_receipt_from_the_system_or_unless_asked, |kind| async move {
    // (sender, receipt asked, message)
    let cases = [(0, true, "sys"), (1, false, "quiet")];
    for (sender, asked, message) in cases {
        let cluster = Cluster::start(kind, 1).await;
        let mut quiet = cluster.connect(sender).await;
        let mut receiver = cluster.connect(2).await;
        cluster.im.send_message(sender, &[2, 5], message, asked).await.unwrap();
        assert_eq!(receiver.recv_text().await, format!("\"{message}\""), "sender {sender}");
        quiet.expect_silence().await;
        cluster.shutdown_after((quiet, receiver)).await;
    }
});
