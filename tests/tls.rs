//! `wss://`: the gateway with `--tls-cert`/`--tls-key`, and a real TLS WebSocket client.

mod common;
use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::sync::Arc;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;

/// A WebSocket client over TLS.
type Wss = Ws<TlsStream<tokio::net::TcpStream>>;

/// A self-signed certificate for `localhost`, as DER, and its PEM files in a temp dir.
struct TestCert {
    der: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    dir: std::path::PathBuf,
}

/// Issues a [`TestCert`] and writes its PEM files.
fn test_cert() -> TestCert {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("freeim-tls-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), issued.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), issued.signing_key.serialize_pem()).unwrap();
    let key = PrivateKeyDer::try_from(issued.signing_key.serialize_der()).unwrap();
    TestCert { der: issued.cert.der().clone(), key, dir }
}

/// A server configuration that presents `cert`.
fn server_config(cert: &TestCert) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key.clone_key())
        .unwrap();
    Arc::new(config)
}

/// Connects to `ws_url` (as handed out, with the `ws://` node address) over TLS.
async fn connect_wss(ws_url: &str, cert: &TestCert) -> Wss {
    let (addr, target) = split_url(ws_url);
    Ws::handshake(&format!("wss://localhost{target}"), tls_stream(addr, cert).await).await
}

/// A certificate and a one-node cluster (in-process broker) that serves only TLS with it.
async fn tls_cluster() -> (TestCert, Cluster) {
    let cert = test_cert();
    let config = server_config(&cert);
    let cluster = Cluster::start_with(Kind::Memory, 1, |c| c.tls = Some(config.clone())).await;
    (cert, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_closes_travel_over_wss() {
    let (cert, cluster) = tls_cluster().await;
    let url = cluster.im.prev_connect_server(5, None).await.unwrap();
    let mut ws = connect_wss(&url, &cert).await;
    eventually(None, || async { cluster.im.has_online(5).await.unwrap() }).await;
    let big = "x".repeat(100_000); // many TLS records
    cluster.im.send_message(0, &[5], "hello", false).await.unwrap();
    cluster.im.send_message(0, &[5], &big, false).await.unwrap();
    assert_eq!(ws.next_frame().await, Message::text("\"hello\""));
    assert_eq!(ws.next_frame().await, Message::text(format!("\"{big}\"")));
    cluster.im.force_offline(5).await.unwrap();
    match ws.next_frame().await {
        Message::Close(Some(frame)) => assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1001, "disconnect")),
        other => panic!("expected close, got {other:?}"),
    }
    eventually(None, || async { !cluster.im.has_online(5).await.unwrap() }).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_a_tls_node_is_refused_without_harm() {
    let (cert, cluster) = tls_cluster().await;
    let url = cluster.im.prev_connect_server(1, None).await.unwrap();
    // A plain ws:// client cannot complete the handshake; the node goes on serving TLS.
    assert!(tokio_tungstenite::connect_async(&url).await.is_err());
    let mut ws = connect_wss(&cluster.im.prev_connect_server(1, None).await.unwrap(), &cert).await;
    cluster.im.send_message(0, &[1], "ok", false).await.unwrap();
    assert_eq!(ws.next_frame().await, Message::text("\"ok\""));
    cluster.shutdown().await;
}

/// A TLS client for `addr` trusting `cert`.
async fn tls_stream(addr: std::net::SocketAddr, cert: &TestCert) -> TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(client)).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_served_over_tls_and_hands_out_wss_urls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let cert = test_cert();
    let config = server_config(&cert);
    let keys = freeim::gateway::ApiKeys::new(["k"]).unwrap();
    let cluster = Cluster::start_with(Kind::Memory, 1, |c| {
        c.tls = Some(config.clone());
        c.api = Some(freeim::gateway::ApiConfig::new(keys.clone()));
    })
    .await;
    let mut tls = tls_stream(cluster.addr(0), &cert).await;
    let body = r#"{"client_id":5}"#;
    let call = format!(
        "POST /api/connect_url HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-API-Key: k\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(call.as_bytes()).await.unwrap();
    let mut answer = String::new();
    // The server closes the TLS session without close_notify at times: read what came.
    let _ = tokio::time::timeout(WAIT, tls.read_to_string(&mut answer)).await;
    assert_eq!(status_of(answer.as_bytes()), 200, "{answer}");
    let json: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let url = json["url"].as_str().unwrap();
    let expected = format!("wss://{}/ws?token={}", cluster.servers[0], json["token"].as_str().unwrap());
    assert_eq!(url, expected);
    let ws_url = url.replacen("wss://", "ws://", 1);
    let mut ws = connect_wss(&ws_url, &cert).await;
    eventually(None, || async { cluster.im.has_online(5).await.unwrap() }).await;
    cluster.im.send_message(0, &[5], "over tls", false).await.unwrap();
    assert_eq!(ws.next_frame().await, Message::text("\"over tls\""));
    cluster.shutdown().await;
}

#[test]
fn tls_flags_are_validated_with_one_line_errors() {
    let cert = test_cert();
    let (cert_pem, key_pem) = (cert.dir.join("cert.pem"), cert.dir.join("key.pem"));
    let base = ["server", "--redis", "redis://127.0.0.1:1/0", "--server", "127.0.0.1:1", "--servers", "127.0.0.1:1"];
    let missing = cert.dir.join("missing.pem");
    let cases: [(Vec<&std::ffi::OsStr>, &str); 3] = [
        (vec![cert_pem.as_os_str()], "error: --tls-key: is required with --tls-cert"),
        (vec![missing.as_os_str(), key_pem.as_os_str()], "error: --tls-cert: "),
        (vec![cert_pem.as_os_str(), missing.as_os_str()], "error: --tls-key: "),
    ];
    for (files, want) in cases {
        let mut args: Vec<&std::ffi::OsStr> = base.iter().map(std::ffi::OsStr::new).collect();
        args.extend([std::ffi::OsStr::new("--tls-cert"), files[0]]);
        if let Some(key) = files.get(1) {
            args.extend([std::ffi::OsStr::new("--tls-key"), key]);
        }
        let Finished { code, stderr, .. } = run(&args, &[], WAIT);
        assert!(code != Some(0));
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with(want), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&cert.dir);
}
