//! Publishing through the HTTP API, as a backend in another language would: `POST
//! /api/send` (or `chan_send`, `broadcast`) on keep-alive HTTP/1.1 connections spread over
//! the nodes. hyper's client sends one request at a time per connection, so the pool holds
//! as many connections as sends may be in flight ([`API_CONNECTIONS`]); a send takes a free
//! connection, and gives it back once its answer is read.

use super::publish::Audience;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};

/// Keep-alive connections of the pool (over all nodes): the sends in flight at most.
pub const API_CONNECTIONS: usize = 64;

/// One keep-alive connection to a node.
struct Connection {
    node: String,
    sender: SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(node: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(node).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection { node: node.to_owned(), sender })
    }
}

/// The pool: free connections wait in a queue.
#[derive(Clone)]
pub struct ApiPool {
    give_back: mpsc::UnboundedSender<Connection>,
    free: Arc<Mutex<mpsc::UnboundedReceiver<Connection>>>,
    key: Arc<str>,
    durable: bool,
}

impl ApiPool {
    /// Opens [`API_CONNECTIONS`] connections, round robin over `nodes` (`HOST:PORT`).
    pub async fn open(nodes: &[String], key: &str, durable: bool) -> anyhow::Result<ApiPool> {
        let (give_back, free) = mpsc::unbounded_channel();
        for i in 0..API_CONNECTIONS {
            give_back.send(Connection::open(&nodes[i % nodes.len()]).await?)?;
        }
        Ok(ApiPool { give_back, free: Arc::new(Mutex::new(free)), key: key.into(), durable })
    }

    /// Sends `text` to `audience`; whether the API answered 200.
    pub async fn send(&self, audience: &Audience, text: &str) -> bool {
        let (path, mut body) = match audience {
            Audience::Direct { sender, receiver, receipt } => {
                ("/api/send", json!({"sender": sender, "receivers": [receiver], "content": text, "receipt": receipt}))
            }
            Audience::Chan(Some(chan)) => ("/api/chan_send", json!({"chan": chan, "content": text})),
            Audience::Chan(None) => ("/api/broadcast", json!({"content": text})),
        };
        if self.durable {
            body["durable"] = json!(true);
        }
        let Some(mut connection) = self.free.lock().await.recv().await else { return false };
        let ok = self.call(&mut connection, path, body.to_string()).await;
        if !ok {
            // The connection may be broken: a fresh one takes its place.
            match Connection::open(&connection.node).await {
                Ok(fresh) => connection = fresh,
                Err(_) => return false,
            }
        }
        let _ = self.give_back.send(connection);
        ok
    }

    async fn call(&self, connection: &mut Connection, path: &str, body: String) -> bool {
        let request = hyper::Request::post(path)
            .header(HOST, &connection.node)
            .header("x-api-key", &*self.key)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)));
        let Ok(request) = request else { return false };
        match connection.sender.send_request(request).await {
            // The body is read to the end, so the connection can take the next request.
            Ok(answer) => answer.status() == hyper::StatusCode::OK && answer.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    }
}
