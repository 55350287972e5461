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
    cluster.shutdown().await;
});
