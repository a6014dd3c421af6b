//! rejoin: a resumable encrypted stream, and a reverse tunnel built on it.
//!
//! ```text
//! visitor ─ tunnel::server ─ mux ─ Stream ═ TCP, replaced on every reconnect ═ Stream ─ mux ─ tunnel::client ─ local service
//! ```
//!
//! - [`proto`]: the snet wire protocol as a sans-IO core: bytes, counts and
//!   keys, with no sockets, clocks or OS randomness inside.
//!
//! - [`stream`]: the resumable stream on tokio: [`stream::connect`],
//!   [`stream::Listener`], [`stream::Stream`].
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
