//! rejoin: a resumable encrypted stream, and a reverse tunnel built on it.
//!
//! ```text
//! visitor ─ tunnel::server ─ mux ─ Stream ═ TCP, replaced on every reconnect ═ Stream ─ mux ─ tunnel::client ─ local service
//! ```
//!
//! - [`proto`]: both wire suites as a sans-IO core (bytes, counts and
//!   keys, with no sockets, clocks or OS randomness inside): the snet
//!   protocol byte for byte, and the sealed suite ([`proto::sealed`]: Noise
//!   handshakes, AEAD frames, an authenticated resume).
//!
//! - [`stream`]: the resumable stream on tokio: [`stream::connect`],
//!   [`stream::Listener`], [`stream::Stream`]. Start with
//!   [`stream::Config::sealed`] unless the peer is a stock snet
//!   implementation.
//!
//! - [`tunnel`]: the reverse tunnel behind `rejoin server` and `rejoin
//!   client`, as a library: the server, the client and the multiplexer of
//!   their link.
//!
//! - `chaos` (with the `chaos` feature): a link-cutting proxy for demos and
//!   tests.
//!
//! `PROTOCOL.md` specifies every byte on the wire.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "chaos")]
pub mod chaos;
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod fuzz;
pub mod proto;
pub mod stream;
pub mod tunnel;

/// The code in README.md, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct Readme;
