//! The resumable stream: a tokio `AsyncRead + AsyncWrite` that survives
//! broken transports.
//!
//! ```text
//! app ⇄ Stream ⇄ shared state ⇄ driver task ⇄ transport (replaced on every reconnect)
//! ```
//!
//! A client gets a [`Stream`] from [`connect`] (TCP) or [`connect_with`] (any
//! [`Dialer`]); a server from [`Listener::accept`]. Each session has a driver
//! task that owns the transport: it moves bytes, detects dead links, and on a
//! client redials and resumes (on a server, waits for the client), while the
//! application keeps reading and writing. Data is delivered exactly once and
//! in order across any number of reconnects.
//!
//! Two suites, never mixed (`docs/stream.md` says which to use when):
//! [`Config::sealed`] for rejoin to rejoin (Noise, AEAD, an authenticated
//! resume), and [`Config::default`], the snet wire protocol byte for byte,
//! to talk to snet peers (obfuscation, not security).
//!
//! ```no_run
//! use rejoin::proto::sealed::Psk;
//! use rejoin::stream::{self, Config};
//!
//! # async fn f() -> std::io::Result<()> {
//! let config = Config::sealed(Psk::from_passphrase("a long random secret"));
//! let stream = stream::connect("server.example:9000", config).await?;
//! # drop(stream);
//! # Ok(())
//! # }
//! ```
//!
//! Close semantics, in short (`docs/stream.md` has the full story): the
//! sealed suite, and the compatible one with its opt-in record layer
//! ([`Config::records`]), have FIN and DONE: `shutdown` gives the peer a
//! clean end-of-file and frees the session at once. snet itself has no close
//! message, so in the plain compatible protocol a closed client looks like a
//! lost one to the server (its reads fail with [`Error::Expired`] once
//! `reconnect_wait` runs out), and a closed server shows up on the client as
//! a refused reconnect ([`Error::Refused`]).

pub(crate) mod admission;
mod client;
mod config;
mod error;
mod exchange;
mod handle;
mod listener;
mod pump;
mod shared;
mod threads;
mod transport;

pub use crate::proto::Version;
pub use client::{connect, connect_with};
pub use config::{
    Config, ConfigError, KERNEL_SIZED, KERNEL_UNSENT, Keepalive, MAX_DURATION, PskLookup, Redial,
    SEALED_RECV_BUFFER, Sealed, Suite,
};
pub use error::Error;
pub use handle::{Event, Handle, ReadHalf, Stats, Stream, WriteHalf};
pub use listener::{Listener, ListenerStats, Transport};
pub use threads::MAX_THREADS;
pub(crate) use transport::bound_unsent;
pub use transport::{Dialed, Dialer, SocketOptions, Target, TcpDialer};

/// A peer's address as logs show it: the address, or `-` when the
/// transport has none (not `Some(…)`, which log shippers would have to strip).
pub(crate) fn shown(peer: Option<std::net::SocketAddr>) -> impl std::fmt::Display {
    struct Shown(Option<std::net::SocketAddr>);
    impl std::fmt::Display for Shown {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self.0 {
                Some(addr) => addr.fmt(f),
                None => f.write_str("-"),
            }
        }
    }
    Shown(peer)
}

/// The code in `docs/stream.md`, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../docs/stream.md")]
pub struct Guide;

#[cfg(test)]
mod tests {
    #[test]
    fn peers_are_shown_without_option_debug() {
        let addr = "127.0.0.1:7000".parse().ok();
        assert_eq!(super::shown(addr).to_string(), "127.0.0.1:7000");
        assert_eq!(super::shown(None).to_string(), "-");
    }
}
