//! Messages from the business side reach the right sockets, byte for byte.

mod common;
use common::*;

both!(direct_message_reaches_every_socket_of_the_receiver, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut a = cluster.connect(2).await;
    let mut b = cluster.connect(2).await;
    cluster.im.send_message(1, &[2], "hello", false).await.unwrap();
    assert_eq!(a.recv_text().await, "\"hello\"");
    assert_eq!(b.recv_text().await, "\"hello\"");
    cluster.shutdown_after((a, b)).await;
});

// Golden frames: the business message in, the exact bytes of the server's frame out.
both!(frames_are_the_content_byte_for_byte, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let long = "x".repeat(300);
    let huge = "z".repeat(70_000);
    let cases: Vec<(serde_json::Value, Vec<u8>)> = vec![
        (serde_json::json!("hi"), b"\x81\x04\"hi\"".to_vec()),
        (serde_json::json!({"a": 1}), b"\x81\x07{\"a\":1}".to_vec()),
        (serde_json::json!("发送"), [b"\x81\x08\"".as_slice(), "发送".as_bytes(), b"\""].concat()),
        (serde_json::json!(long), [&[0x81, 126, 1, 46][..], format!("\"{long}\"").as_bytes()].concat()),
        (
            serde_json::json!(huge),
            [&[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x72][..], format!("\"{huge}\"").as_bytes()].concat(),
        ),
    ];
    let mut raw = RawWs::connect(&cluster.url(2).await).await;
    eventually(None, || async { cluster.im.has_online(2).await.unwrap() }).await;
    for (message, frame) in cases {
        cluster.im.send_message(1, &[2], &message, false).await.unwrap();
        assert_eq!(raw.read_exact(frame.len()).await, frame, "{message}");
    }
    cluster.shutdown_after(raw).await;
});

both!(direct_message_reaches_receivers_on_three_nodes, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    // 3 → node 0, 4 and 7 → node 1, 5 → node 2; 6 (node 0) is not a receiver.
    let mut sockets = Vec::new();
    for id in [3, 4, 5, 7, 6] {
        sockets.push((id, cluster.connect(id).await));
    }
    cluster.im.send_message(1, &[3, 4, 5, 7, 4], "to many", false).await.unwrap();
    for (id, ws) in &mut sockets {
        if *id != 6 {
            assert_eq!(ws.recv_text().await, "\"to many\"", "client {id}");
        }
    }
    // 6 gets nothing, the duplicate receiver 4 gets it once.
    expect_silence_all(sockets.iter_mut().map(|(_, ws)| ws)).await;
    cluster.shutdown_after(sockets).await;
});

both!(a_sender_gets_its_own_message_only_on_its_other_sockets, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let mut single = cluster.connect(1).await;
    let mut other = cluster.connect(2).await;
    cluster.im.send_message(1, &[1, 2], "self", false).await.unwrap();
    assert_eq!(other.recv_text().await, "\"self\"");
    single.expect_silence().await;

    let mut a = cluster.connect(4).await;
    let mut b = cluster.connect(4).await;
    cluster.im.send_message(4, &[4], "mine", false).await.unwrap();
    assert_eq!(a.recv_text().await, "\"mine\"");
    assert_eq!(b.recv_text().await, "\"mine\"");
    a.expect_silence().await;
    b.expect_silence().await;
    cluster.shutdown_after((single, other, a, b)).await;
});

both!(channel_messages_reach_members_only, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let mut members = Vec::new();
    for id in [3, 4, 5] {
        cluster.im.join_chan(id, &["room"]).await.unwrap();
        members.push(cluster.connect(id).await);
    }
    let mut outsider = cluster.connect(6).await;
    cluster.im.join_chan(6, &["other"]).await.unwrap();
    cluster.im.send_chan_message(0, "room", &serde_json::json!({"n": 1})).await.unwrap();
    for ws in &mut members {
        assert_eq!(ws.recv_text().await, r#"{"n":1}"#);
    }
    outsider.expect_silence().await;
    // A member sending to its channel: not to its own single socket, to the others.
    cluster.im.send_chan_message(3, "room", "from 3").await.unwrap();
    assert_eq!(members[1].recv_text().await, "\"from 3\"");
    assert_eq!(members[2].recv_text().await, "\"from 3\"");
    members[0].expect_silence().await;
    outsider.expect_silence().await;
    cluster.shutdown_after((members, outsider)).await;
});

both!(broadcast_reaches_every_socket_on_every_node, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let mut sockets = Vec::new();
    for id in [1, 2, 3, 4, 5, 6, 6] {
        sockets.push(cluster.connect(id).await);
    }
    cluster.im.send_broadcast_message("all").await.unwrap();
    for ws in &mut sockets {
        assert_eq!(ws.recv_text().await, "\"all\"");
    }
    expect_silence_all(&mut sockets).await;
    cluster.shutdown_after(sockets).await;
});

both!(many_messages_keep_their_order_per_socket, |kind| async move {
    let cluster = Cluster::start(kind, 3).await;
    let mut a = cluster.connect(1).await;
    let mut b = cluster.connect(2).await;
    let mut b2 = cluster.connect(2).await;
    const N: usize = 200;
    for i in 0..N {
        cluster.im.send_message(0, &[1, 2], &i, false).await.unwrap();
    }
    for ws in [&mut a, &mut b, &mut b2] {
        for i in 0..N {
            assert_eq!(ws.recv_text().await, i.to_string());
        }
    }
    expect_silence_all([&mut a, &mut b, &mut b2]).await;
    cluster.shutdown_after((a, b, b2)).await;
});

// Consecutive channel messages published in one pipeline reach the node as one batch and
// are merged into one write per socket; interleaved direct messages and broadcasts keep
// their place.
both!(merged_channel_messages_arrive_in_order, |kind| async move {
    use freeim::protocol::{ChanMessage, NodeCommand, to_json};
    let cluster = Cluster::start(kind, 1).await;
    cluster.im.join_chan(1, &["room"]).await.unwrap();
    cluster.im.join_chan(2, &["room"]).await.unwrap();
    let mut member = cluster.connect(1).await;
    let mut member2 = cluster.connect(2).await;
    let mut outsider = cluster.connect(3).await;
    let chan = |chan: Option<&str>, i: usize| {
        NodeCommand::Chan(ChanMessage { sender: 0, chan: chan.map(Into::into), content: to_json(&i) })
    };
    let mut commands = Vec::new();
    let mut want_member = Vec::new();
    let mut want_outsider = Vec::new();
    for i in 0..200 {
        let command = match i % 50 {
            20 => system_message(1, &i),
            40..=44 => chan(None, i),
            _ => chan(Some("room"), i),
        };
        if !matches!(i % 50, 20) {
            want_member.push(i.to_string());
        }
        if matches!(i % 50, 40..=44) {
            want_outsider.push(i.to_string());
        }
        commands.push(command);
    }
    let mut want_member1 = Vec::new();
    for i in 0..200 {
        want_member1.push(i.to_string());
    }
    cluster.publish(0, commands.iter().map(NodeCommand::encode)).await;
    for want in &want_member1 {
        assert_eq!(&member.recv_text().await, want);
    }
    for want in &want_member {
        assert_eq!(&member2.recv_text().await, want);
    }
    for want in &want_outsider {
        assert_eq!(&outsider.recv_text().await, want);
    }
    expect_silence_all([&mut member, &mut member2, &mut outsider]).await;
    cluster.shutdown_after((member, member2, outsider)).await;
});

// Channel member fields are client ids; `0` (the system) and non-numeric fields are
// skipped, as FreeIM does, even when a socket of client 0 is connected.
both!(channel_members_zero_and_non_numeric_are_skipped, |kind| async move {
    let cluster = Cluster::start(kind, 1).await;
    let mut zero = cluster.connect(0).await;
    let mut member = cluster.connect(5).await;
    cluster.im.join_chan(0, &["room"]).await.unwrap();
    cluster.im.join_chan(5, &["room"]).await.unwrap();
    let op = freeim::backend::Op::HIncrBy { key: cluster.im.keys().chan("room"), field: "abc".into(), by: 0 };
    cluster.backend().execute(vec![op]).await.unwrap();
    cluster.im.send_chan_message(7, "room", "members").await.unwrap();
    assert_eq!(member.recv_text().await, "\"members\"");
    zero.expect_silence().await;
    cluster.shutdown_after((zero, member)).await;
});
