//! The publisher: sends the bench's messages through [`ImClient`] (Redis, then our
//! gateways), through the nodes' HTTP API ([`super::api`]), or through the raw baseline's
//! control sockets, at a pace or back to back.
//!
//! With `ImClient`, each send is a Redis round trip; up to a window of them are in flight at
//! once on the multiplexed connection (which pipelines them), so sending back to back is
//! not bounded by latency. Through the API, the pool's connections bound what is in flight. The raw baseline gets the very same frame payloads (the message
//! serialized to JSON by the same code), buffered and written in large writes.

use super::api::ApiPool;
use super::baseline::Control;
use freeim::ImClient;
use freeim::protocol::{self, ClientId};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use std::net::SocketAddr;
use tokio::time::Instant;

/// Raw control bytes buffered before a write when sending back to back.
const RAW_FLUSH: usize = 64 * 1024;

/// Who a message goes to.
#[derive(Debug, Clone)]
pub enum Audience {
    /// Channel members on every node; `None` for a broadcast to everyone.
    Chan(Option<String>),
    /// One receiver, from one sender.
    Direct {
        /// Sender id (never the receiver: a sender's own single socket is skipped).
        sender: ClientId,
        /// Receiver id.
        receiver: ClientId,
        /// Ask for a receipt (it comes back to the sender's sockets).
        receipt: bool,
    },
}

/// How our gateways are sent to.
#[derive(Clone)]
pub enum Route {
    /// Through Redis with our library; durable sends are logged on their node.
    Library {
        /// The business-side client.
        im: ImClient,
        /// Whether sends are durable.
        durable: bool,
    },
    /// Through the nodes' HTTP API.
    Api(ApiPool),
}

impl Route {
    /// One send; whether it was accepted.
    async fn send(self, audience: Audience, text: String) -> bool {
        let (im, durable) = match self {
            Route::Api(pool) => return pool.send(&audience, &text).await,
            Route::Library { im, durable } => (im, durable),
        };
        let sent = match (audience, durable) {
            (Audience::Chan(Some(chan)), false) => im.send_chan_message(0, &chan, &text).await,
            (Audience::Chan(Some(chan)), true) => im.durable().send_chan_message(0, &chan, &text).await,
            (Audience::Chan(None), false) => im.send_broadcast_message(&text).await,
            (Audience::Chan(None), true) => im.durable().send_broadcast_message(&text).await,
            (Audience::Direct { sender, receiver, receipt }, false) => {
                im.send_message(sender, &[receiver], &text, receipt).await
            }
            (Audience::Direct { sender, receiver, receipt }, true) => {
                im.durable().send_message(sender, &[receiver], &text, receipt).await
            }
        };
        sent.is_ok()
    }
}

/// Sends messages to our gateways or to the raw baseline.
pub enum Publisher {
    /// To our gateways.
    Ours {
        /// Through the library or the API.
        route: Route,
        /// Sends awaiting their answer: whether each was accepted.
        inflight: FuturesUnordered<BoxFuture<'static, bool>>,
        /// Sends that failed.
        errors: u64,
    },
    /// Straight to raw servers, one control socket per node.
    Raw {
        /// Control sockets, in node order.
        controls: Vec<Control>,
        /// Write failures.
        errors: u64,
    },
}

impl Publisher {
    /// A publisher to our gateways by `route`.
    pub fn ours(route: Route) -> Publisher {
        Publisher::Ours { route, inflight: FuturesUnordered::new(), errors: 0 }
    }

    /// A publisher to the raw servers at `controls` (node order).
    pub async fn raw(controls: &[SocketAddr]) -> anyhow::Result<Publisher> {
        let mut sockets = Vec::new();
        for addr in controls {
            sockets.push(Control::connect(*addr).await?);
        }
        Ok(Publisher::Raw { controls: sockets, errors: 0 })
    }

    /// Sends `text` to `audience`, keeping at most `window` sends in flight; with `paced`,
    /// raw bytes are written now rather than batched.
    pub async fn send(&mut self, audience: &Audience, text: &str, window: usize, paced: bool) {
        match self {
            Publisher::Ours { route, inflight, errors } => {
                while inflight.len() >= window.max(1) {
                    if let Some(false) = inflight.next().await {
                        *errors += 1;
                    }
                }
                inflight.push(Box::pin(route.clone().send(audience.clone(), text.to_owned())));
            }
            Publisher::Raw { controls, errors } => {
                let content = protocol::to_json(text);
                match audience {
                    Audience::Chan(_) => controls.iter_mut().for_each(|c| c.push(None, content.as_bytes())),
                    Audience::Direct { receiver, .. } => {
                        let node = protocol::node_index(*receiver, controls.len());
                        controls[node].push(Some(*receiver), content.as_bytes());
                    }
                }
                for control in controls.iter_mut() {
                    if (paced || control.queued() >= RAW_FLUSH) && control.flush().await.is_err() {
                        *errors += 1;
                    }
                }
            }
        }
    }

    /// Waits until `due`, meanwhile completing sends in flight.
    pub async fn idle_until(&mut self, due: Instant) {
        if let Publisher::Ours { inflight, errors, .. } = self {
            while !inflight.is_empty() {
                tokio::select! {
                    done = inflight.next() => if let Some(false) = done { *errors += 1 },
                    _ = tokio::time::sleep_until(due) => return,
                }
            }
        }
        tokio::time::sleep_until(due).await;
    }

    /// Completes every send; returns how many failed in total.
    pub async fn finish(&mut self) -> u64 {
        match self {
            Publisher::Ours { inflight, errors, .. } => {
                while let Some(ok) = inflight.next().await {
                    if !ok {
                        *errors += 1;
                    }
                }
                *errors
            }
            Publisher::Raw { controls, errors } => {
                for control in controls.iter_mut() {
                    if control.flush().await.is_err() {
                        *errors += 1;
                    }
                }
                *errors
            }
        }
    }
}
