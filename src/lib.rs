//! FreeIM for Rust: a FreeIM-compatible instant-messaging gateway and its business-side
//! library.
//!
//! Browsers hold a WebSocket to a stateless [`gateway`] node; the business backend does the
//! business logic and pushes messages through Redis with [`ImClient`] (the reference's
//! `ImHelper`). Both speak FreeIM v2's wire format byte for byte ([`protocol`]), so either
//! side can replace its .NET counterpart. [`backend`] is the seam between Redis and the
//! in-process broker used by the single-process mode.
//!
//! # Features
//!
//! - `gateway` (default): the gateway node, [`gateway`].
//! - `cli` (default, implies `gateway`): what the `freeim` binary needs on top.
//!
//! A business app that only sends through [`ImClient`] depends on
//! `freeim = { version = "…", default-features = false }`: the client, the wire format and the
//! backends, without the gateway's WebSocket, TLS and HTTP stacks.
//!
//! ```no_run
//! # async fn demo() -> freeim::Result<()> {
//! use freeim::{ImClient, ImClientOptions};
//! let im = ImClient::connect("redis://127.0.0.1:6379/0", ImClientOptions::new(["127.0.0.1:6001"]))?;
//! let url = im.prev_connect_server(42, Some("203.0.113.7")).await?; // hand this to the browser
//! im.send_message(1, &[42], "hello", true).await?; // the browser gets the frame "hello" (quoted)
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod client;
pub mod cluster_names;
pub mod durable;
pub mod error;
#[cfg(feature = "gateway")]
pub mod gateway;
#[doc(hidden)]
pub mod internals;
pub mod protocol;

pub use client::{ConnectUrl, Durable, EventStream, ImClient, ImClientOptions, OnlinePage, PresenceEvent, SendEvent};
pub use error::{Error, Result};
pub use protocol::ClientId;
