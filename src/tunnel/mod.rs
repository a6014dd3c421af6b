//! The reverse tunnel: services behind NAT published on a public server, over
//! one resumable stream per client, always in the sealed suite.

pub mod auth;
pub(crate) mod bridge;
pub mod client;
pub mod frame;
pub mod mux;
pub(crate) mod pool;
pub mod server;
pub(crate) mod traffic;
pub mod udp;

pub use traffic::ServiceStats;

/// The link's receive buffer, both ends: the most received bytes held for
/// the mux, and so the sealed suite's window. The stream's default (256 KiB,
/// as it was for the sealed suite too when this was measured) is less than
/// a fast link keeps in flight between two socket buffers, and
/// the sender then waits for window updates: on loopback the tunnel left a
/// quarter of the CPU idle (docs/benchmarks.md). The mux reads the link as
/// fast as it comes, so this is memory only while the mux is behind.
pub const LINK_RECV_BUFFER: usize = 2 << 20;

/// The most bytes the mux hands the link ahead of what its connection has
/// taken (the stream's `unsent_limit`). Without it the link's history (4 MiB)
/// filled up with whatever the mux had, and a frame of another visitor
/// waited behind all of it: seconds on a slow link. With it, frames wait in
/// the mux, where each stream's share is bounded (see
/// the mux's `STREAM_QUEUE`).
pub const LINK_UNSENT_LIMIT: usize = 256 << 10;

/// The link's unsent limit follows what its connection takes in this long:
/// a fast link holds as much as before and pays nothing for the limit, a
/// slow one [`LINK_UNSENT_LIMIT`].
pub const LINK_UNSENT_TIME: std::time::Duration = std::time::Duration::from_millis(20);

/// The stream settings a tunnel link starts from: the stream's defaults with
/// [`LINK_RECV_BUFFER`] and [`LINK_UNSENT_LIMIT`].
pub(crate) fn link_stream_config() -> crate::stream::Config {
    crate::stream::Config {
        recv_buffer: LINK_RECV_BUFFER,
        unsent_limit: Some(LINK_UNSENT_LIMIT),
        unsent_time: Some(LINK_UNSENT_TIME),
        ..crate::stream::Config::default()
    }
}
