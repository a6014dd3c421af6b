//! The stream's configuration, with documented defaults.

use std::time::Duration;

use crate::proto::{MAX_HISTORY, MIN_HISTORY, Params, Version};

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

/// Everything a client or a server stream can be told.
///
/// Construct with [`Config::default`] and change fields:
///
/// ```
/// use std::time::Duration;
/// let mut config = rejoin::stream::Config::default();
/// config.history = 8 << 20;
/// config.reconnect_wait = Duration::from_secs(120);
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// snet wire version. Not negotiated: must match the peer. Default v2.
    pub version: Version,
    /// RC4-encrypt application data. Not negotiated: must match the peer.
    /// Default on.
    pub encrypt: bool,
    /// Client only: ask for rejoin's record layer (`PROTOCOL.md` §2), which
    /// adds a clean close and a heartbeat. Stock snet servers refuse it. Servers
    /// always accept it. Default off.
    pub records: bool,
    /// Bytes of sent data kept for resends. Must exceed [`Config::in_flight`];
    /// what is left is how much a writer can queue ahead of the network.
    /// Default 4 MiB.
    pub history: usize,
    /// Requested `SO_SNDBUF` and `SO_RCVBUF` of TCP sockets (Linux doubles
    /// it). Bounding them bounds what can be lost in transit, which is what
    /// the history must cover. Default 256 KiB.
    pub socket_buffer: usize,
    /// Bytes that relays on the path (proxies, tunnels) may hold. Default 256 KiB.
    pub path_buffer: usize,
    /// Received bytes buffered for the application before reading pauses.
    /// Default 256 KiB.
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
    /// Server: most handshakes in progress at once; more connections are
    /// closed at once. Default 256.
    pub max_handshakes: usize,
    /// Server: established sessions waiting for `accept`. Default 128.
    pub accept_backlog: usize,
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

impl Default for Config {
    fn default() -> Self {
        Config {
            version: Version::V2,
            encrypt: true,
            records: false,
            history: 4 << 20,
            socket_buffer: 256 << 10,
            path_buffer: 256 << 10,
            recv_buffer: 256 << 10,
            handshake_timeout: Duration::from_secs(10),
            reconnect_wait: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(60)),
            redial: Redial::default(),
            max_parked: 1024,
            max_sessions: 10_000,
            max_handshakes: 256,
            accept_backlog: 128,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
            user_timeout: Some(Duration::from_secs(30)),
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The most bytes that can be lost in transit when a connection breaks:
    /// our send buffer and the peer's receive buffer (each `socket_buffer`,
    /// doubled as Linux does, and assumed alike on both sides), plus
    /// `path_buffer`.
    pub fn in_flight(&self) -> usize {
        self.socket_buffer
            .saturating_mul(4)
            .saturating_add(self.path_buffer)
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
        if self.socket_buffer < 4096 {
            return fail(format!(
                "socket_buffer {} is below 4096",
                self.socket_buffer
            ));
        }
        let need = self.in_flight().saturating_add(MIN_HISTORY);
        if self.history < need {
            return fail(format!(
                "history {} must be at least in-flight {} (4 × socket_buffer + path_buffer) + {MIN_HISTORY}",
                self.history,
                self.in_flight()
            ));
        }
        if self.recv_buffer < 1024 {
            return fail(format!("recv_buffer {} is below 1024", self.recv_buffer));
        }
        for (name, d) in [
            ("handshake_timeout", self.handshake_timeout),
            ("reconnect_wait", self.reconnect_wait),
            ("close_timeout", self.close_timeout),
        ] {
            if d.is_zero() {
                return fail(format!("{name} must be above zero"));
            }
        }
        if self
            .idle_timeout
            .is_some_and(|d| d < Duration::from_millis(10))
        {
            return fail("idle_timeout must be at least 10 ms".into());
        }
        if self.max_handshakes == 0 || self.accept_backlog == 0 || self.max_sessions == 0 {
            return fail(
                "max_handshakes, accept_backlog and max_sessions must be above zero".into(),
            );
        }
        let r = &self.redial;
        let sane = r.multiplier >= 1.0
            && r.multiplier.is_finite()
            && (0.0..=1.0).contains(&r.jitter)
            && r.initial <= r.max;
        if !sane {
            return fail("redial needs multiplier >= 1, jitter in 0..=1 and initial <= max".into());
        }
        Ok(())
    }

    /// The protocol parameters these settings imply.
    pub fn params(&self) -> Params {
        Params {
            version: self.version,
            encrypt: self.encrypt,
            history: self.history,
            in_flight: self.in_flight(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().in_flight(), 1280 << 10);
    }

    #[test]
    fn history_must_cover_in_flight() {
        let mut c = Config {
            history: 1 << 20,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().0.contains("in-flight"));
        c.socket_buffer = 64 << 10;
        c.path_buffer = 0;
        c.validate().unwrap();
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
