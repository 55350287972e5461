//! The publisher: sends the bench's messages through [`ImClient`] (Redis, then our
//! gateways) or through the raw baseline's control sockets, at a pace or back to back.
//!
//! With `ImClient`, each send is a Redis round trip; up to a window of them are in flight at
//! once on the multiplexed connection (which pipelines them), so sending back to back is
//! not bounded by latency. The raw baseline gets the very same frame payloads (the message
//! serialized to JSON by the same code), buffered and written in large writes.

use super::baseline::Control;
use freeim::protocol::{self, ClientId};
use freeim::{ImClient, Result as ImResult};
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
    },
}

/// Sends messages to our gateways or to the raw baseline.
pub enum Publisher {
    /// Through Redis with our library.
    Ours {
        /// The business-side client.
        im: ImClient,
        /// Sends awaiting their Redis reply.
        inflight: FuturesUnordered<BoxFuture<'static, ImResult<()>>>,
        /// Sends that failed.
        errors: u64,
        /// Whether sends are durable (logged on their node).
        durable: bool,
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
    /// A publisher through `im`, durable or not.
    pub fn ours(im: ImClient, durable: bool) -> Publisher {
        Publisher::Ours { im, inflight: FuturesUnordered::new(), errors: 0, durable }
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
            Publisher::Ours { im, inflight, errors, durable } => {
                while inflight.len() >= window.max(1) {
                    if let Some(Err(_)) = inflight.next().await {
                        *errors += 1;
                    }
                }
                let (im, text, audience, durable) = (im.clone(), text.to_owned(), audience.clone(), *durable);
                inflight.push(Box::pin(async move {
                    match (audience, durable) {
                        (Audience::Chan(Some(chan)), false) => im.send_chan_message(0, &chan, &text).await,
                        (Audience::Chan(Some(chan)), true) => im.durable().send_chan_message(0, &chan, &text).await,
                        (Audience::Chan(None), false) => im.send_broadcast_message(&text).await,
                        (Audience::Chan(None), true) => im.durable().send_broadcast_message(&text).await,
                        (Audience::Direct { sender, receiver }, false) => {
                            im.send_message(sender, &[receiver], &text, false).await
                        }
                        (Audience::Direct { sender, receiver }, true) => {
                            im.durable().send_message(sender, &[receiver], &text, false).await
                        }
                    }
                }));
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
                    done = inflight.next() => if let Some(Err(_)) = done { *errors += 1 },
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
                while let Some(done) = inflight.next().await {
                    if done.is_err() {
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
