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
/// the mux, and so the sealed suite's window, which caps the link at about
/// this much per round trip. Over a path with a 50 ms round trip, 2 MiB
/// carried 320–330 Mbit/s and 4 MiB 434–450, where direct TCP carried 570
/// (docs/benchmarks.md). The mux reads the link as fast as it comes, so
/// this is memory only while the mux is behind; but a peer can keep it
/// behind with one-byte frames, and a hostile server's flood of them grew a
/// client by about 10 MiB with 2 MiB, 20 MiB with 4 MiB and 34–38 MiB with
/// 8 MiB (`tunnel_abuse`'s tiny-frame tests). On loopback, the stream's
/// default (256 KiB when this was measured) left the sender waiting for
/// window updates.
pub const LINK_RECV_BUFFER: usize = 4 << 20;

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

/// `SO_RCVBUF` of the server's sockets to visitors (Linux doubles it) when
/// the link's buffers are the kernel's (`socket_buffer` unset): what a
/// visitor sends and its stream cannot yet take waits in a receive queue no
/// budget counts, so it stays the size it always was. It caps one visitor's
/// upload at about 512 KiB per round trip; what it downloads is sent from a
/// buffer the kernel sizes.
pub const VISITOR_RECV_BUFFER: usize = 256 << 10;

/// The stream settings a tunnel link starts from: the stream's defaults with
/// [`LINK_RECV_BUFFER`] and [`LINK_UNSENT_LIMIT`], and, on Linux and
/// Android, socket buffers the kernel sizes to the path (a fixed 256 KiB
/// held a link over a 50 ms path to 70 Mbit/s), the kernel's unsent bytes
/// bounded instead ([`crate::stream::KERNEL_SIZED`]). The suite is set
/// where the keys are known: check these with [`validate_link_stream`],
/// not `Config::validate`, which refuses them for the compatible suite.
pub(crate) fn link_stream_config() -> crate::stream::Config {
    crate::stream::Config {
        recv_buffer: LINK_RECV_BUFFER,
        socket_buffer: crate::stream::KERNEL_SIZED,
        unsent_limit: Some(LINK_UNSENT_LIMIT),
        unsent_time: Some(LINK_UNSENT_TIME),
        ..crate::stream::Config::default()
    }
}

/// Checks `stream` as a link runs it: in the sealed suite, whose keys come
/// from the tokens at run time.
pub fn validate_link_stream(
    stream: &crate::stream::Config,
) -> Result<(), crate::stream::ConfigError> {
    let keys = crate::stream::Sealed::new(crate::proto::sealed::Psk::from_bytes([0; 32]));
    crate::stream::Config {
        suite: crate::stream::Suite::Sealed(keys),
        ..stream.clone()
    }
    .validate()
}
