//! The mux's settings and the small types its users see.

use std::time::Duration;

use bytes::Bytes;

/// Which end of the link this is; it decides stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The tunnel client: opens odd ids.
    Client,
    /// The tunnel server: opens even ids.
    Server,
}

impl Side {
    pub(super) fn first_id(self) -> u32 {
        match self {
            Side::Client => 1,
            Side::Server => 2,
        }
    }

    /// Whether `id` belongs to the ids the *other* side opens.
    pub(super) fn is_peers(self, id: u32) -> bool {
        (id % 2 == 1) == (self == Side::Server)
    }
}

/// Settings of the multiplexer.
#[derive(Debug, Clone, PartialEq)]
pub struct MuxConfig {
    /// The largest a stream's receive window grows to (from
    /// [`INITIAL_WINDOW`](super::super::frame::INITIAL_WINDOW), 1 MiB,
    /// doubling while the stream consumes whole half-windows). Buffered
    /// memory per stream is bounded by its window. Default 16 MiB.
    pub max_window: u32,
    /// The most window growth, beyond the initial windows, all of a session's
    /// streams together. Default 64 MiB.
    pub window_budget: u64,
    /// The most bytes all of a session's streams together may hold received
    /// and not yet written out. Past it, the stream holding the most is
    /// reset: a visitor whose service never reads cannot make the session
    /// hold its initial window times the number of visitors. Default 256 MiB.
    pub inbound_budget: u64,
    /// How often to PING. Default 5 s.
    pub ping_interval: Duration,
    /// Silence after which the link is declared dead and the stream forced
    /// to reconnect. Default 15 s.
    pub ping_timeout: Duration,
    /// The most streams (and UDP associations) open at once. Default 65,536.
    pub max_streams: usize,
    /// The most bytes of UDP datagrams waiting to go on the link, each
    /// counted as its payload plus 64 bytes (its place in the queue and its
    /// buffer, so that empty datagrams are bounded too); beyond it
    /// datagrams are dropped (and counted), so a UDP burst can neither grow
    /// memory without bound nor crowd out TCP streams. At least 65,571 (the
    /// largest datagram, counted so). Default 1 MiB.
    pub udp_queue: usize,
    /// The most bytes of datagrams received from the link and not yet taken
    /// by their sockets, all associations together, counted as `udp_queue`
    /// counts them; beyond it datagrams are dropped (and counted). The
    /// default holds a resume's whole burst (the link's history plus the
    /// peer's UDP queue) unless it is of datagrams much smaller than 64
    /// bytes, whose excess is then dropped, as UDP may. At least 65,571.
    /// Default 8 MiB.
    pub udp_inbound: usize,
    /// The most bytes of DATA one stream queues for the link, within the
    /// session's 8 MiB, on a slow link: a frame of another stream never
    /// waits behind more than this of any one stream there. On a link that
    /// drains faster the share is what the link holds unsent (its stream's
    /// unsent limit, which follows its rate). A stream past half its share
    /// waits until it is back under half. At least 4 KiB. Default 256 KiB.
    pub stream_queue: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            max_window: 16 << 20,
            window_budget: 64 << 20,
            inbound_budget: 256 << 20,
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            max_streams: 65_536,
            stream_queue: super::core::STREAM_QUEUE,
            udp_queue: 1 << 20,
            udp_inbound: 8 << 20,
        }
    }
}

impl MuxConfig {
    /// Checks the pings: an interval above zero, a timeout longer than it,
    /// both within [`MAX_DURATION`](crate::stream::MAX_DURATION).
    pub fn validate(&self) -> Result<(), crate::stream::ConfigError> {
        let (interval, timeout) = (self.ping_interval, self.ping_timeout);
        if interval.is_zero() || timeout <= interval {
            return Err(crate::stream::ConfigError(format!(
                "ping_timeout ({timeout:?}) must be longer than ping_interval ({interval:?}), which must not be 0"
            )));
        }
        if timeout > crate::stream::MAX_DURATION {
            return Err(crate::stream::ConfigError(
                "ping_timeout is longer than a year".into(),
            ));
        }
        // Below these nothing could be queued at all: a stream would wait
        // for room that never comes, every datagram would be dropped.
        let datagram = super::core::cost(crate::tunnel::frame::MAX_DATAGRAM);
        if self.stream_queue < 4096 || self.udp_queue < datagram || self.udp_inbound < datagram {
            return Err(crate::stream::ConfigError(format!(
                "stream_queue must be at least 4096, udp_queue and udp_inbound at least {datagram}"
            )));
        }
        Ok(())
    }
}

/// Why a stream or association could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// `max_streams` streams and associations are open.
    #[error("too many streams")]
    TooMany,
    /// The peer opened an id that is in use or not its own.
    #[error("stream id in use or of the wrong parity")]
    BadId,
    /// The link is backed up: the peer has not taken what is queued for it
    /// (65,536 frames without a payload: OPEN, FIN, RESET and the like).
    #[error("the link is backed up: the peer is not taking what is queued for it")]
    Backlogged,
    /// A client opened a stream or an association: only the server does.
    #[error("only the server opens streams and associations")]
    NotTheOpener,
}

/// Why something handed to the mux was not sent. Nothing a caller hands in
/// can end the link: what does not fit is refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The stream was reset, or the mux ended.
    #[error("stream gone")]
    Gone,
    /// This side already sent FIN on the stream.
    #[error("stream finished for sending")]
    Finished,
    /// More than the stream's credit.
    #[error("{len} bytes beyond the stream's credit of {credit}")]
    NoCredit {
        /// Bytes offered.
        len: usize,
        /// Credit there was.
        credit: u32,
    },
    /// More than one DATA frame carries.
    #[error("{0} bytes in one send; at most 65,536")]
    TooLarge(usize),
    /// [`Mux::send`](super::Mux::send) takes session frames only (login and
    /// publishing); streams, associations and liveness have their own calls.
    #[error("not a session frame")]
    NotSession,
}

/// Why a mux ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The peer said goodbye.
    Goodbye(String),
    /// We said goodbye.
    Closed(String),
    /// The stream ended: closed by the peer, refused, expired.
    Stream(String),
    /// The peer broke the framing.
    Protocol(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Goodbye(r) => write!(f, "peer said goodbye: {r}"),
            End::Closed(r) => write!(f, "closed: {r}"),
            End::Stream(r) => write!(f, "link ended: {r}"),
            End::Protocol(r) => write!(f, "protocol error: {r}"),
        }
    }
}

/// What arrives on a tunnel stream.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes.
    Data(Bytes),
    /// The peer will send no more.
    Fin,
    /// The stream is aborted.
    Reset,
}

/// Why a datagram was dropped outside the mux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// Its socket would not take it.
    Delivery,
    /// Above 65,507 bytes.
    Oversize,
    /// The service's association limit was reached.
    Limit,
}

/// Counters of the UDP traffic on one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams handed to the link.
    pub sent: u64,
    /// Datagrams received from the link.
    pub received: u64,
    /// Datagrams dropped because the link's UDP queue was full.
    pub dropped_queue: u64,
    /// Datagrams dropped because an association's receiver was behind.
    pub dropped_inbound: u64,
    /// Datagrams that could not be delivered to their socket.
    pub dropped_delivery: u64,
    /// Datagrams above 65,507 bytes, refused.
    pub dropped_oversize: u64,
    /// Datagrams from visitors beyond the association limit.
    pub dropped_limit: u64,
    /// Associations ended to make room for a newer visitor (the least
    /// recently used, of its source if that source was at its limit).
    pub evicted: u64,
}

impl UdpStats {
    /// All drops together.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue
            + self.dropped_inbound
            + self.dropped_delivery
            + self.dropped_oversize
            + self.dropped_limit
    }

    pub(super) fn note(&mut self, why: UdpDrop) {
        *match why {
            UdpDrop::Delivery => &mut self.dropped_delivery,
            UdpDrop::Oversize => &mut self.dropped_oversize,
            UdpDrop::Limit => &mut self.dropped_limit,
        } += 1;
    }
}
