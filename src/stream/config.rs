//! The stream's configuration, with documented defaults.

use std::time::Duration;

use std::fmt;
use std::sync::Arc;

use crate::proto::sealed::{Psk, StaticKey};
use crate::proto::{MAX_HISTORY, MIN_HISTORY, MIN_SEALED_HISTORY, Params, Version};

/// Which protocol suite a stream speaks. Not negotiated: both ends must
/// agree, and an endpoint set to one never speaks the other.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Suite {
    /// The snet wire protocol, byte for byte (v2 or v1, see
    /// [`Config::version`]): to talk to snet peers. Obfuscation, not
    /// security (`PROTOCOL.md` §1.9).
    #[default]
    Compatible,
    /// rejoin's sealed suite (`PROTOCOL.md` §4): a Noise handshake on every
    /// connection, AEAD frames, an authenticated resume. For rejoin to rejoin.
    Sealed(Sealed),
}

type LookupFn = dyn Fn(&[u8]) -> Option<Psk> + Send + Sync;

/// Finds the PSK for the identity a client names (a server's per-client keys).
#[derive(Clone)]
pub struct PskLookup(Arc<LookupFn>);

impl PskLookup {
    /// Wraps a lookup function.
    pub fn new(f: impl Fn(&[u8]) -> Option<Psk> + Send + Sync + 'static) -> Self {
        PskLookup(Arc::new(f))
    }

    /// The PSK for `id`, if any.
    pub fn find(&self, id: &[u8]) -> Option<Psk> {
        (self.0)(id)
    }
}

impl fmt::Debug for PskLookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PskLookup(..)")
    }
}

impl PartialEq for PskLookup {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// The sealed suite's keys.
///
/// A client needs `psk` (and may name it with `psk_id`, and pin the
/// server's static key with `server_key`). A server needs `psk` or `lookup`
/// (tried first), and `static_key` to serve clients that pin one. A server
/// with both takes `psk` for every identity its lookup does not know; one
/// built with [`Sealed::from_lookup`] refuses those.
///
/// ```
/// use rejoin::proto::sealed::{Psk, StaticKey};
/// use rejoin::stream::{Config, Sealed, Suite};
///
/// let psk = Psk::from_passphrase("a long random secret");
/// // Server: generated once and kept (`StaticKey::private` to store it,
/// // `StaticKey::from_private` to load it); its public half goes to clients.
/// let key = StaticKey::generate()?;
/// let public = *key.public();
/// let server = Config::default().with_suite(Suite::Sealed(
///     Sealed::new(psk.clone()).with_static_key(key),
/// ));
/// // Client: pins that public half.
/// let client = Config::default().with_suite(Suite::Sealed(
///     Sealed::new(psk).with_server_key(public),
/// ));
/// # server.validate().unwrap();
/// # client.validate().unwrap();
/// # Ok::<(), rejoin::proto::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Sealed {
    /// The pre-shared key (client; server default).
    pub psk: Option<Psk>,
    /// Client: which PSK, sent in the clear (at most 64 bytes). Default empty.
    pub psk_id: Vec<u8>,
    /// Client: the server's static public key. With it the handshake is
    /// `IKpsk2` and a holder of the PSK alone cannot pose as the server.
    pub server_key: Option<[u8; 32]>,
    /// Server: its static key pair, for clients that pin it.
    pub static_key: Option<StaticKey>,
    /// Server: per-identity PSKs.
    pub lookup: Option<PskLookup>,
}

impl Sealed {
    /// Keys with one PSK and nothing else.
    pub fn new(psk: Psk) -> Self {
        Sealed {
            psk: Some(psk),
            psk_id: Vec::new(),
            server_key: None,
            static_key: None,
            lookup: None,
        }
    }

    /// Server keys with per-identity PSKs only: a client naming an
    /// identity `lookup` does not know is refused.
    pub fn from_lookup(lookup: PskLookup) -> Self {
        Sealed {
            psk: None,
            psk_id: Vec::new(),
            server_key: None,
            static_key: None,
            lookup: Some(lookup),
        }
    }

    /// Sets [`Sealed::psk_id`] (client).
    #[must_use]
    pub fn with_psk_id(mut self, id: impl Into<Vec<u8>>) -> Self {
        self.psk_id = id.into();
        self
    }

    /// Sets [`Sealed::server_key`] (client): pins the server's public key.
    #[must_use]
    pub fn with_server_key(mut self, key: [u8; 32]) -> Self {
        self.server_key = Some(key);
        self
    }

    /// Sets [`Sealed::static_key`] (server).
    #[must_use]
    pub fn with_static_key(mut self, key: StaticKey) -> Self {
        self.static_key = Some(key);
        self
    }

    /// Sets [`Sealed::lookup`] (server); [`Sealed::psk`] stays the key of
    /// identities it does not know.
    #[must_use]
    pub fn with_lookup(mut self, lookup: PskLookup) -> Self {
        self.lookup = Some(lookup);
        self
    }

    /// The PSK for a client naming `id`: the lookup's, else the default.
    pub fn psk_for(&self, id: &[u8]) -> Option<Psk> {
        self.lookup
            .as_ref()
            .and_then(|l| l.find(id))
            .or_else(|| self.psk.clone())
    }
}

/// How a client redials after its connection breaks.
///
/// The first retry is immediate; after that the delay starts at `initial` and
/// multiplies by `multiplier` up to `max`, each delay randomised by ±`jitter`
/// (a fraction) so a crowd of clients does not redial in lockstep. After
/// `give_up` without success the session ends with [`super::Error::GaveUp`].
#[derive(Debug, Clone, PartialEq)]
pub struct Redial {
    /// The delay before the second retry. Default 100 ms.
    pub initial: Duration,
    /// The longest delay between retries. Default 5 s.
    pub max: Duration,
    /// Growth factor of the delay. Default 2.
    pub multiplier: f64,
    /// Random spread of each delay, as a fraction of it. Default 0.2.
    pub jitter: f64,
    /// Give up after this long without a connection; `None` retries forever.
    /// Default 5 minutes.
    pub give_up: Option<Duration>,
}

impl Default for Redial {
    fn default() -> Self {
        Redial {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.2,
            give_up: Some(Duration::from_secs(300)),
        }
    }
}

impl Redial {
    /// The delay before retry number `retry` (0 is the first retry), with
    /// `unit` a uniform random number in [0, 1) for the jitter.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        if retry == 0 {
            return Duration::ZERO;
        }
        let base = self.initial.as_secs_f64() * self.multiplier.powi(retry as i32 - 1);
        let capped = base.min(self.max.as_secs_f64());
        let spread = 1.0 + self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((capped * spread).max(0.0))
    }
}

/// TCP keepalive probing of an idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe. Default 15 s.
    pub idle: Duration,
    /// Time between probes. Default 5 s.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped. Default 3.
    pub retries: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(15),
            interval: Duration::from_secs(5),
            retries: 3,
        }
    }
}

/// The longest any configured duration may be: a year. A deadline further
/// out than a clock can count would be an error at run time, not at set-up.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything a client or a server stream can be told.
///
/// Construct with [`Config::default`] and change fields:
///
/// ```
/// use std::time::Duration;
/// let config = rejoin::stream::Config::default()
///     .with_records(true)
///     .with_history(8 << 20)
///     .with_reconnect_wait(Duration::from_secs(120));
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// The protocol suite. Default [`Suite::Compatible`]; [`Config::sealed`]
    /// turns the sealed suite on.
    pub suite: Suite,
    /// snet wire version. Not negotiated: must match the peer. Default v2.
    pub version: Version,
    /// RC4-encrypt application data. Not negotiated: must match the peer.
    /// Default on.
    pub encrypt: bool,
    /// Client only, compatible suite: ask for rejoin's record layer
    /// (`PROTOCOL.md` §2). With it, `shutdown` gives the peer a clean
    /// end-of-file and frees the session at once (FIN/DONE), and an idle link
    /// is PINGed so a dead one is noticed; without it a close looks like a
    /// lost connection until `reconnect_wait` runs out. Stock snet servers
    /// refuse it; rejoin servers always accept it; the sealed suite always
    /// has it. Default off.
    pub records: bool,
    /// Bytes of sent data kept for resends. Must exceed [`Config::in_flight`];
    /// what is left is how much a writer can queue ahead of the network.
    /// Default 4 MiB.
    pub history: usize,
    /// Requested `SO_SNDBUF` and `SO_RCVBUF` of TCP sockets (Linux doubles
    /// it). Bounding them bounds what can be lost in transit, which is what
    /// the compatible suite's history must cover (it has no acks); it also
    /// caps a connection at about 2 × `socket_buffer` per round trip.
    /// `None` leaves their size to the kernel, which grows them to the
    /// path's bandwidth-delay product (what the kernel holds written but not
    /// yet sent is bounded either way: [`KERNEL_UNSENT`], with
    /// `TCP_NOTSENT_LOWAT`, on Linux and Android), so that the stream's
    /// queue, not the kernel's, holds what waits. Only the sealed suite, whose acks
    /// free its history, may leave it to the kernel. Default 256 KiB;
    /// [`KERNEL_SIZED`] (`None` on Linux and Android) from
    /// [`Config::sealed`].
    pub socket_buffer: Option<usize>,
    /// Bytes that relays on the path (proxies, tunnels) may hold. Default 256 KiB.
    pub path_buffer: usize,
    /// The most written bytes the stream holds that no connection has taken
    /// yet; a write waits while it is reached. The history's room beyond
    /// what is in flight is otherwise all queue: on a slow path a new write
    /// waits behind all of it (4 MiB is 3 s at 10 Mbit/s). A writer that
    /// multiplexes (the tunnel) bounds it so that its own scheduling, not
    /// this queue, decides what goes next. `None`: the history alone bounds
    /// it. At least 16 KiB. Default `None`.
    pub unsent_limit: Option<usize>,
    /// With `unsent_limit`: the limit follows what the connection takes in
    /// this long (measured as it goes), never below `unsent_limit`. A fast
    /// connection then holds as much as it drains in that time and its
    /// writer is not woken for every piece; a slow one holds the floor.
    /// Default `None` (the limit is fixed).
    pub unsent_time: Option<Duration>,
    /// Received bytes buffered for the application before reading pauses.
    /// In the sealed suite it is also the window the peer may send into,
    /// which caps one stream's throughput at about `recv_buffer` per round
    /// trip. Default 256 KiB; [`SEALED_RECV_BUFFER`] from [`Config::sealed`].
    pub recv_buffer: usize,
    /// Deadline for a handshake or a reconnect exchange, both sides. Always on.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Server: how long a session whose connection broke waits for its client.
    /// Default 60 s.
    pub reconnect_wait: Duration,
    /// How long the stream may receive nothing, while it is able to read,
    /// before it treats the connection as silently dead. A client then
    /// reconnects; with the record layer a PING is sent after a third of it,
    /// and the server drops the connection too. `None` leaves detection to TCP
    /// keepalive and `TCP_USER_TIMEOUT`. Default 60 s.
    pub idle_timeout: Option<Duration>,
    /// Client redial policy.
    pub redial: Redial,
    /// Server: most sessions waiting for their client at once. Default 1,024.
    pub max_parked: usize,
    /// Server: most live sessions. Default 10,000.
    pub max_sessions: usize,
    /// Server: most handshakes in progress at once. When they are all taken
    /// a newcomer still gets in and the oldest connection that has sent
    /// nothing (else the oldest still handshaking) is closed; reconnects of
    /// live sessions are kept (up to half the slots). Default 256.
    pub max_handshakes: usize,
    /// Server: most handshakes in progress from one source (an IPv4
    /// address, an IPv6 /64); beyond it that source's own oldest is closed.
    /// Default 16.
    pub max_handshakes_per_source: usize,
    /// Server: how long a new connection may take to send its first byte.
    /// Default 3 s.
    pub first_byte_timeout: Duration,
    /// Server: failed proofs (a wrong key or PSK, a forged or unknown
    /// reconnect) one source may make a minute, refilled evenly; a source
    /// that has used them up has its connections closed at once until one
    /// comes back. 0 turns it off. Default 10.
    pub auth_failures_per_minute: u32,
    /// Server: established sessions waiting for `accept`. Default 128.
    pub accept_backlog: usize,
    /// Server: threads of the listener's own for its sessions' drivers, each
    /// a single-threaded runtime; a session goes to the one with the fewest
    /// and stays there, and [`Stream::home`](super::Stream::home) says which,
    /// so the application can run its tasks for the stream on the same
    /// thread. 0 (the default) runs the drivers on the caller's runtime.
    /// At most 1,024.
    pub threads: usize,
    /// Set `TCP_NODELAY`. Default on.
    pub nodelay: bool,
    /// TCP keepalive; `None` leaves it off. Default on (see [`Keepalive`]).
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT` (Linux): drop a connection whose sent data stays
    /// unacknowledged, or whose peer window stays shut, this long. Default 30 s.
    pub user_timeout: Option<Duration>,
    /// How long a closed or dropped stream keeps delivering what it queued and
    /// waiting for the close to complete. Default 10 s.
    pub close_timeout: Duration,
}

/// [`Config::recv_buffer`] in [`Config::sealed`]: there it is the window
/// the peer sends into, and 256 KiB held a sealed stream on loopback at
/// 0.55–0.57 of plain TCP, where 512 KiB and more gave 0.7–0.8
/// (docs/benchmarks.md); it also lets a stream over a 50 ms path reach
/// 20 MB/s instead of 5. The compatible suite has no window and keeps
/// 256 KiB.
pub const SEALED_RECV_BUFFER: usize = 1 << 20;

/// [`Config::socket_buffer`] where the kernel may size the buffers (the
/// sealed suite's default, and the tunnel link's): `None` on Linux and
/// Android, where [`KERNEL_UNSENT`] bounds what the kernel holds unsent;
/// elsewhere that bound is not at hand, and a kernel-sized send buffer
/// would be all queue, so the buffers stay at 256 KiB.
pub const KERNEL_SIZED: Option<usize> = if cfg!(any(target_os = "linux", target_os = "android")) {
    None
} else {
    Some(256 << 10)
};

/// The most bytes a stream's TCP socket's kernel holds written but not yet
/// sent, whatever [`Config::socket_buffer`] says (`TCP_NOTSENT_LOWAT`, on Linux and
/// Android). The kernel grows a send buffer to megabytes on a long path;
/// without this bound all of it would be queue in front of the stream's
/// own. Through `benches/shared_link.py`'s throttling proxy (2 MB/s), a
/// tunnel echo waited up to 3.3 s (median 2.9) behind another visitor's
/// upload with kernel-sized buffers and no bound, 0.4–0.8 s with it, and
/// 0.4–1.1 s with the fixed 256 KiB buffers before (docs/benchmarks.md). It bounds only the
/// bytes not yet sent: what is in flight still grows with the path, and on
/// a path that queues deeply (a loaded home uplink) that can be a lot; a
/// fixed `socket_buffer` bounds it.
pub const KERNEL_UNSENT: usize = 128 << 10;

/// The least [`Config::unsent_limit`]: a record and then some.
pub const MIN_UNSENT_LIMIT: usize = 16 << 10;

impl Default for Config {
    fn default() -> Self {
        Config {
            suite: Suite::Compatible,
            version: Version::V2,
            encrypt: true,
            records: false,
            history: 4 << 20,
            socket_buffer: Some(256 << 10),
            path_buffer: 256 << 10,
            unsent_limit: None,
            unsent_time: None,
            recv_buffer: 256 << 10,
            handshake_timeout: Duration::from_secs(10),
            reconnect_wait: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(60)),
            redial: Redial::default(),
            max_parked: 1024,
            max_sessions: 10_000,
            max_handshakes: 256,
            max_handshakes_per_source: 16,
            first_byte_timeout: Duration::from_secs(3),
            auth_failures_per_minute: 10,
            accept_backlog: 128,
            threads: 0,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
            user_timeout: Some(Duration::from_secs(30)),
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// Chained setters, one per field, so a `Config` reads as one expression
/// (`Config` is `#[non_exhaustive]`, so it cannot be built with `..`).
macro_rules! setters {
    ($($with:ident => $field:ident: $ty:ty),* $(,)?) => {
        impl Config {
            $(
                #[doc = concat!("Sets [`Config::", stringify!($field), "`].")]
                #[must_use]
                pub fn $with(mut self, value: $ty) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    with_suite => suite: Suite,
    with_version => version: Version,
    with_encrypt => encrypt: bool,
    with_records => records: bool,
    with_history => history: usize,
    with_socket_buffer => socket_buffer: Option<usize>,
    with_path_buffer => path_buffer: usize,
    with_unsent_limit => unsent_limit: Option<usize>,
    with_unsent_time => unsent_time: Option<Duration>,
    with_recv_buffer => recv_buffer: usize,
    with_handshake_timeout => handshake_timeout: Duration,
    with_reconnect_wait => reconnect_wait: Duration,
    with_idle_timeout => idle_timeout: Option<Duration>,
    with_redial => redial: Redial,
    with_max_parked => max_parked: usize,
    with_max_sessions => max_sessions: usize,
    with_max_handshakes_per_source => max_handshakes_per_source: usize,
    with_first_byte_timeout => first_byte_timeout: Duration,
    with_auth_failures_per_minute => auth_failures_per_minute: u32,
    with_max_handshakes => max_handshakes: usize,
    with_accept_backlog => accept_backlog: usize,
    with_threads => threads: usize,
    with_nodelay => nodelay: bool,
    with_keepalive => keepalive: Option<Keepalive>,
    with_user_timeout => user_timeout: Option<Duration>,
    with_close_timeout => close_timeout: Duration,
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The defaults, with the sealed suite keyed by `psk`:
    ///
    /// ```
    /// use rejoin::proto::sealed::Psk;
    /// let config = rejoin::stream::Config::sealed(Psk::from_passphrase("correct horse"));
    /// config.validate().unwrap();
    /// ```
    pub fn sealed(psk: Psk) -> Self {
        Config {
            suite: Suite::Sealed(Sealed::new(psk)),
            recv_buffer: SEALED_RECV_BUFFER,
            socket_buffer: KERNEL_SIZED,
            ..Config::default()
        }
    }

    /// The sealed suite's keys, if that is the suite.
    pub fn sealed_keys(&self) -> Option<&Sealed> {
        match &self.suite {
            Suite::Sealed(keys) => Some(keys),
            Suite::Compatible => None,
        }
    }

    /// Whether sessions carry rejoin's record layer (always in the sealed suite).
    pub fn uses_records(&self) -> bool {
        self.records || self.sealed_keys().is_some()
    }

    /// The most bytes that can be lost in transit when a connection breaks:
    /// our send buffer and the peer's receive buffer (each `socket_buffer`,
    /// doubled as Linux does, and assumed alike on both sides), plus
    /// `path_buffer`. `None` when the kernel sizes the buffers.
    pub fn in_flight(&self) -> Option<usize> {
        let buffer = self.socket_buffer?;
        Some(buffer.saturating_mul(4).saturating_add(self.path_buffer))
    }

    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if !(MIN_HISTORY..=MAX_HISTORY).contains(&self.history) {
            return fail(format!(
                "history {} is outside {MIN_HISTORY}..={MAX_HISTORY}",
                self.history
            ));
        }
        if let Some(limit) = self.unsent_limit
            && limit < MIN_UNSENT_LIMIT
        {
            return fail(format!("unsent_limit {limit} is below {MIN_UNSENT_LIMIT}"));
        }
        if self.unsent_time.is_some() && self.unsent_limit.is_none() {
            return fail("unsent_time needs unsent_limit, its floor".into());
        }
        if self.unsent_time.is_some_and(|t| t.is_zero()) {
            return fail("unsent_time must be more than zero".into());
        }
        if self.threads > super::threads::MAX_THREADS {
            return fail(format!(
                "threads {} is above {}",
                self.threads,
                super::threads::MAX_THREADS
            ));
        }
        if let Some(buffer) = self.socket_buffer
            && buffer < 4096
        {
            return fail(format!("socket_buffer {buffer} is below 4096"));
        }
        if let Some(keys) = self.sealed_keys() {
            if self.history < MIN_SEALED_HISTORY {
                return fail(format!(
                    "history {} is below the sealed suite's {MIN_SEALED_HISTORY}",
                    self.history
                ));
            }
            let initial = crate::proto::sealed::INITIAL_WINDOW as usize;
            if self.recv_buffer < initial {
                return fail(format!(
                    "recv_buffer {} is below the sealed suite's {initial}",
                    self.recv_buffer
                ));
            }
            if keys.psk.is_none() && keys.lookup.is_none() {
                return fail("the sealed suite needs a psk (or, on a server, a lookup)".into());
            }
            if keys.psk_id.len() > crate::proto::sealed::MAX_PSK_ID {
                return fail("psk_id is longer than 64 bytes".into());
            }
        }
        if self.records && self.version == Version::V1 && self.sealed_keys().is_none() {
            return fail("the record layer (records) needs protocol v2".into());
        }
        // The sealed suite frees history by acks; the compatible one must
        // cover whatever can be in flight.
        if self.sealed_keys().is_none() {
            let Some(in_flight) = self.in_flight() else {
                return fail(
                    "the compatible suite needs a socket_buffer: it bounds what a break can lose, which the history must cover"
                        .into(),
                );
            };
            if self.history < in_flight.saturating_add(MIN_HISTORY) {
                return fail(format!(
                    "history {} must be at least in-flight {in_flight} (4 × socket_buffer + path_buffer) + {MIN_HISTORY}",
                    self.history,
                ));
            }
        }
        if self.recv_buffer < 1024 {
            return fail(format!("recv_buffer {} is below 1024", self.recv_buffer));
        }
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("first_byte_timeout", self.first_byte_timeout),
            ("reconnect_wait", self.reconnect_wait),
            ("close_timeout", self.close_timeout),
        ] {
            if d.is_zero() {
                return fail(format!("{name} must be above zero"));
            }
        }
        let r = &self.redial;
        let k = self.keepalive.unwrap_or_default();
        for (name, d) in [
            ("handshake_timeout", Some(self.handshake_timeout)),
            ("reconnect_wait", Some(self.reconnect_wait)),
            ("idle_timeout", self.idle_timeout),
            ("first_byte_timeout", Some(self.first_byte_timeout)),
            ("user_timeout", self.user_timeout),
            ("close_timeout", Some(self.close_timeout)),
            ("redial.initial", Some(r.initial)),
            ("redial.max", Some(r.max)),
            ("redial.give_up", r.give_up),
            ("keepalive.idle", Some(k.idle)),
            ("keepalive.interval", Some(k.interval)),
        ] {
            if d.is_some_and(|d| d > MAX_DURATION) {
                return fail(format!("{name} is longer than a year"));
            }
        }
        if self
            .idle_timeout
            .is_some_and(|d| d < Duration::from_millis(10))
        {
            return fail("idle_timeout must be at least 10 ms".into());
        }
        if self.max_handshakes == 0
            || self.max_handshakes_per_source == 0
            || self.accept_backlog == 0
            || self.max_sessions == 0
        {
            return fail(
                "max_handshakes, max_handshakes_per_source, accept_backlog and max_sessions must be above zero"
                    .into(),
            );
        }
        let sane = r.multiplier >= 1.0
            && r.multiplier.is_finite()
            && (0.0..=1.0).contains(&r.jitter)
            && r.initial <= r.max;
        if !sane {
            return fail("redial needs multiplier >= 1, jitter in 0..=1 and initial <= max".into());
        }
        Ok(())
    }

    /// The unsent limit's floor and the time it follows the connection's
    /// rate over, if it does.
    pub(crate) fn pace(&self) -> Option<(usize, Duration)> {
        self.unsent_limit.zip(self.unsent_time)
    }

    /// The protocol parameters these settings imply.
    pub fn params(&self) -> Params {
        Params {
            version: self.version,
            encrypt: self.encrypt,
            history: self.history,
            // Only the sealed suite may go without a bound, and it frees its
            // history by acks, never by what may be in flight. Should an
            // unchecked compatible config get here, nothing counts as
            // received before the peer says so (writes wait; no resume
            // fails for lack of history).
            in_flight: self.in_flight().unwrap_or(usize::MAX),
            unsent_limit: self.unsent_limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsent_limit_below_a_record_is_refused() {
        let c = Config::default().with_unsent_limit(Some(MIN_UNSENT_LIMIT - 1));
        let e = c.validate().expect_err("too small");
        assert!(e.to_string().contains("unsent_limit"), "{e}");
        Config::default()
            .with_unsent_limit(Some(MIN_UNSENT_LIMIT))
            .validate()
            .expect("the least");
    }

    #[test]
    fn an_unsent_time_needs_a_floor() {
        let t = Duration::from_millis(20);
        let e = Config::default().with_unsent_time(Some(t)).validate();
        assert!(e.expect_err("no floor").to_string().contains("unsent_time"));
        let c = Config::default()
            .with_unsent_limit(Some(MIN_UNSENT_LIMIT))
            .with_unsent_time(Some(Duration::ZERO));
        assert!(c.validate().is_err());
        let c = c.with_unsent_time(Some(t));
        c.validate().expect("valid");
        assert_eq!(c.pace(), Some((MIN_UNSENT_LIMIT, t)));
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().in_flight(), Some(1280 << 10));
    }

    #[test]
    fn durations_are_at_most_a_year() {
        let year = MAX_DURATION;
        let c = Config::default().with_reconnect_wait(year);
        c.validate().unwrap();
        let c = c.with_reconnect_wait(year + Duration::from_secs(1));
        assert!(c.validate().unwrap_err().0.contains("reconnect_wait"));
        let mut c = Config::default();
        c.redial.give_up = Some(Duration::MAX);
        assert!(c.validate().unwrap_err().0.contains("redial.give_up"));
    }

    #[test]
    fn history_must_cover_in_flight() {
        let mut c = Config {
            history: 1 << 20,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("in-flight"));
        c.socket_buffer = Some(64 << 10);
        c.path_buffer = 0;
        c.validate().unwrap();
        c.socket_buffer = Some(4095);
        assert!(c.validate().unwrap_err().0.contains("below 4096"));
        // Without a bound nothing covers what a break can lose.
        c.socket_buffer = None;
        assert!(
            c.validate()
                .unwrap_err()
                .0
                .contains("needs a socket_buffer")
        );
    }

    #[test]
    fn sealed_needs_keys_and_room() {
        let psk = Psk::from_bytes([1; 32]);
        let mut c = Config::sealed(psk.clone());
        c.validate().unwrap();
        assert!(c.uses_records());
        // Acks free its history: the kernel may size the socket buffers.
        assert_eq!(c.socket_buffer, KERNEL_SIZED);
        c.socket_buffer = None;
        c.validate().unwrap();
        c.history = 1 << 20;
        c.validate().unwrap();
        c.history = 32 << 10;
        assert!(c.validate().unwrap_err().0.contains("sealed"));
        let mut c = Config::sealed(psk);
        if let Suite::Sealed(k) = &mut c.suite {
            k.psk = None;
        }
        assert!(c.validate().unwrap_err().0.contains("psk"));
    }

    #[test]
    fn redial_backs_off_with_jitter_and_cap() {
        let r = Redial::default();
        assert_eq!(r.delay(0, 0.5), Duration::ZERO);
        assert_eq!(r.delay(1, 0.5), Duration::from_millis(100));
        assert_eq!(r.delay(2, 0.5), Duration::from_millis(200));
        assert_eq!(r.delay(20, 0.5), Duration::from_secs(5));
        assert_eq!(r.delay(20, 0.0), Duration::from_secs(4));
        assert!(r.delay(20, 0.999) <= Duration::from_secs(6));
    }
}
