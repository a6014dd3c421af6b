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
/// the mux, and so the sealed suite's window. The stream's default (256 KiB)
/// is less than a fast link keeps in flight between two socket buffers, and
/// the sender then waits for window updates: on loopback the tunnel left a
/// quarter of the CPU idle (docs/benchmarks.md). The mux reads the link as
/// fast as it comes, so this is memory only while the mux is behind.
pub const LINK_RECV_BUFFER: usize = 2 << 20;

/// The stream settings a tunnel link starts from: the stream's defaults with
/// [`LINK_RECV_BUFFER`].
pub(crate) fn link_stream_config() -> crate::stream::Config {
    crate::stream::Config {
        recv_buffer: LINK_RECV_BUFFER,
        ..crate::stream::Config::default()
    }
}
