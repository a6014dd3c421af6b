//! The client: the first connection, and reconnecting after every break.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, timeout};
use tracing::{Instrument, debug, info, info_span, warn};

use super::exchange::{Stop, drive};
use super::pump::{PumpEnd, pump};
use super::shared::{DriverGuard, Shared, State, Wake};
use super::transport::{Dialed, Dialer, Target, TcpDialer};
use super::{Config, Error, Event, Stream};
use crate::proto::sealed::exchange::REJECT_UNKNOWN_SESSION;
use crate::proto::sealed::{ClientExchange, ClientOutcome, Link};
use crate::proto::{self, ClientHandshake, ClientResume, Session, Version};

/// Connects to a rejoin or snet server over TCP.
///
/// `addr` is any [`Target`]: `"host:port"`, a `SocketAddr`, `(ip, port)` or
/// `("host", port)`; a name is resolved again on every reconnect. The first
/// connection is not retried: if it fails, so does `connect` (retry it
/// yourself if the network may be down at start); once it succeeds, every
/// reconnect follows [`Config::redial`].
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use rejoin::proto::sealed::Psk;
/// use rejoin::stream::Config;
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// let config = Config::sealed(Psk::from_passphrase("a long random secret"));
/// let mut stream = rejoin::stream::connect("example.com:9000", config).await?;
/// stream.write_all(b"hello").await?;
/// let mut reply = [0u8; 5];
/// stream.read_exact(&mut reply).await?;
/// # Ok(()) }
/// ```
pub async fn connect(addr: impl Target, config: Config) -> io::Result<Stream> {
    let dialer = TcpDialer::new(addr, &config);
    connect_with(dialer, config).await
}

/// Connects through any [`Dialer`]: the first transport comes from it, and so
/// does every reconnect.
pub async fn connect_with<D: Dialer>(dialer: D, config: Config) -> io::Result<Stream> {
    config.validate().map_err(Error::from)?;
    let first = timeout(config.handshake_timeout, handshake(&dialer, &config))
        .await
        .map_err(|_| Error::HandshakeTimeout(config.handshake_timeout))??;
    let (io, session, link, leftover, peer) = first;
    let id = session.id();
    let mut state = State::new(session, config.recv_buffer, config.close_timeout, peer);
    state.link = link;
    state.ingest(&leftover)?;
    let shared = Arc::new(Shared::new(state));
    let span = info_span!("session", id = %format_args!("{id:016x}"), role = "client");
    span.in_scope(|| info!(peer = %crate::stream::shown(peer), "session up"));
    tokio::spawn(run(shared.clone(), dialer, config, io).instrument(span));
    Ok(Stream::new(shared))
}

type First<T> = (T, Session, Option<Link>, BytesMut, Option<SocketAddr>);

async fn handshake<D: Dialer>(dialer: &D, config: &Config) -> Result<First<D::Io>, Error> {
    let Dialed { mut io, peer } = dialer.dial().await?;
    let mut buf = BytesMut::with_capacity(64);
    let closed = || {
        Error::from(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "server closed the connection during the handshake \
             (suites or protocol versions differ, wrong key, a server at its max_sessions, \
             this address throttled after failed logins, or not a rejoin/snet server?)",
        ))
    };
    let stopped = |stop: Stop| match stop {
        Stop::Closed => closed(),
        Stop::Io(e) => e.into(),
        Stop::Protocol(e) => Error::Handshake(e),
    };
    let Some(keys) = config.sealed_keys() else {
        let mut hs = ClientHandshake::new(config.params(), config.records, &mut rand::rng());
        let session = drive(&mut io, &mut hs, &mut buf).await.map_err(stopped)?;
        return Ok((io, session, None, buf, peer));
    };
    let psk = keys.psk.as_ref().ok_or(Error::Config(super::ConfigError(
        "the sealed suite needs a psk on the client".into(),
    )))?;
    let mut ex =
        ClientExchange::new_session(config.params(), psk, &keys.psk_id, keys.server_key.as_ref())
            .map_err(Error::Handshake)?;
    ex.set_window(config.recv_buffer as u64);
    match drive(&mut io, &mut ex, &mut buf).await.map_err(stopped)? {
        Ok(ClientOutcome::Established(e)) => Ok((io, e.session, Some(e.link), buf, peer)),
        Ok(ClientOutcome::Resumed(_)) => Err(Error::Internal("a new session resumed")),
        Err(proto::Error::SealedRefusal(_)) => Err(Error::Refused),
        Err(e) => Err(Error::Handshake(e)),
    }
}

/// Why one reconnect attempt failed.
enum Attempt {
    /// Worth another try: dial failed, transport broke, timed out.
    Retry(String),
    /// The server closed before replying: a v1 refusal, or a broken link.
    ClosedBeforeReply,
    /// The session cannot be resumed.
    Fatal(Error),
}

impl From<io::Error> for Attempt {
    fn from(e: io::Error) -> Self {
        Attempt::Retry(e.to_string())
    }
}

/// The pump settings of a client.
fn pump_config(config: &Config, records: bool) -> super::pump::PumpConfig {
    super::pump::PumpConfig {
        idle: config.idle_timeout,
        ping: config.idle_timeout.filter(|_| records).map(|d| d / 3),
        pace: config.pace(),
    }
}

/// Marks the transport lost and tells the listeners.
fn disconnected(shared: &Shared, reason: String) {
    shared.state.lock().transport_lost();
    info!(%reason, "disconnected; reconnecting");
    shared.emit(Event::Disconnected { reason });
}

/// The client's driver: pumps the transport, and replaces it whenever it breaks.
async fn run<D: Dialer>(shared: Arc<Shared>, dialer: D, config: Config, io: D::Io) {
    let _guard = DriverGuard(shared.clone());
    let records = shared.state.lock().records.is_some();
    let cfg = pump_config(&config, records);
    let mut io = Some(io);
    loop {
        let Some(transport) = io.as_mut() else {
            return;
        };
        match pump(&shared, transport, cfg).await {
            PumpEnd::Finished => {
                let _ = timeout(config.close_timeout, transport.shutdown()).await;
                shared.end(Ok(()));
                info!("session closed");
                return;
            }
            PumpEnd::Ended => {
                debug!("session ended");
                return;
            }
            PumpEnd::Forced => disconnected(&shared, "reconnect forced by the application".into()),
            PumpEnd::Broken(reason) => disconnected(&shared, reason),
        }
        // Close the old transport before dialling: some servers cannot take a
        // reconnect while the old connection is still open.
        drop(io.take());
        // Boxed: a reconnect's state (its handshake among it) would
        // otherwise be part of every session's driver for its whole life.
        match Box::pin(reconnect(&shared, &dialer, &config)).await {
            Ok(transport) => io = Some(transport),
            Err(None) => {
                shared.end(Ok(()));
                info!("session closed while disconnected");
                return;
            }
            Err(Some(e)) => {
                warn!(error = %e, "session lost");
                shared.end(Err(e));
                return;
            }
        }
    }
}

/// Whether a disconnected session has nothing left worth reconnecting for.
fn nothing_to_finish(st: &State) -> bool {
    if st.ended.is_some() {
        return true;
    }
    if !st.abandoned() {
        return false;
    }
    let past_deadline = st.close_deadline.is_some_and(|d| Instant::now() >= d);
    past_deadline || (st.records.is_none() && !st.session.has_pending())
}

/// Redials with backoff until a resume succeeds (`Ok`), the session cannot
/// be resumed (`Err(Some)`), or nobody needs it any more (`Err(None)`).
async fn reconnect<D: Dialer>(
    shared: &Shared,
    dialer: &D,
    config: &Config,
) -> Result<D::Io, Option<Error>> {
    let started = Instant::now();
    let mut closed_before_reply = 0;
    let mut retry = 0u32;
    loop {
        tokio::time::sleep(config.redial.delay(retry, rand::random())).await;
        retry = retry.saturating_add(1);
        if nothing_to_finish(&shared.state.lock()) {
            return Err(None);
        }
        if let Some(limit) = config.redial.give_up
            && started.elapsed() >= limit
        {
            return Err(Some(Error::GaveUp(limit)));
        }
        let outcome = timeout(config.handshake_timeout, attempt(shared, dialer, config))
            .await
            .unwrap_or_else(|_| Err(Attempt::Retry("reconnect timed out".into())));
        match outcome {
            Ok(io) => return Ok(io),
            Err(Attempt::Fatal(e)) => return Err(Some(e)),
            Err(Attempt::ClosedBeforeReply)
                if config.version == Version::V1 && config.sealed_keys().is_none() =>
            {
                // v1 refuses by closing, but a close is also what a broken
                // link or an older reconnect taking over looks like. (A
                // sealed server says when it has no such session; its closes
                // are retried.)
                closed_before_reply += 1;
                debug!(retry, "server closed before replying");
                if closed_before_reply >= 3 {
                    let waited = shared.state.lock().session.v1_peer_may_wait();
                    return Err(Some(if waited {
                        Error::V1ServerWaited
                    } else {
                        Error::Refused
                    }));
                }
            }
            Err(Attempt::ClosedBeforeReply) => debug!(retry, "server closed before replying"),
            Err(Attempt::Retry(reason)) => {
                // Closes count only in a row.
                closed_before_reply = 0;
                debug!(retry, %reason, "reconnect failed");
            }
        }
    }
}

/// One reconnect: dial, exchange counts, and switch the session over.
async fn attempt<D: Dialer>(
    shared: &Shared,
    dialer: &D,
    config: &Config,
) -> Result<D::Io, Attempt> {
    let Dialed { mut io, peer } = dialer.dial().await?;
    let mut buf = BytesMut::with_capacity(64);
    let sealed = config.sealed_keys().is_some();
    let stopped = |stop: Stop| match stop {
        Stop::Closed => Attempt::ClosedBeforeReply,
        Stop::Io(e) => e.into(),
        // The server no longer has the session: start over.
        Stop::Protocol(proto::Error::KeyRejected(REJECT_UNKNOWN_SESSION)) if sealed => {
            Attempt::Fatal(Error::Refused)
        }
        // A sealed welcome that does not open was changed on the way (the
        // real server holds the secret): worth another connection.
        Stop::Protocol(e) if sealed => Attempt::Retry(format!("resume failed: {e}")),
        Stop::Protocol(e) => Attempt::Fatal(e.into()),
    };
    let (point, link) = match config.sealed_keys() {
        None => {
            let mut resume = ClientResume::new(&shared.state.lock().session);
            let point = drive(&mut io, &mut resume, &mut buf)
                .await
                .map_err(stopped)?;
            (point.map_err(|e| Attempt::Fatal(e.into()))?, None)
        }
        Some(keys) => {
            let (started, free) = {
                let st = shared.state.lock();
                let started = ClientExchange::resume(&st.session, keys.server_key.as_ref());
                (started, st.window() - st.session.read_count())
            };
            let mut ex = started.map_err(|e| Attempt::Fatal(e.into()))?;
            ex.set_window(free);
            match drive(&mut io, &mut ex, &mut buf).await.map_err(stopped)? {
                Ok(ClientOutcome::Resumed(r)) => (r.point, Some(r.link)),
                Ok(ClientOutcome::Established(_)) => {
                    return Err(Attempt::Fatal(Error::Internal(
                        "a resume established a new session",
                    )));
                }
                Err(proto::Error::SealedRefusal(_)) => return Err(Attempt::Fatal(Error::Refused)),
                Err(e) => return Err(Attempt::Fatal(e.into())),
            }
        }
    };

    let mut wake = Wake::default();
    let resent = {
        let mut st = shared.lock_between_writes().await;
        let resent = st
            .resumed(point, link, peer)
            .map_err(|e| Attempt::Fatal(e.into()))?;
        st.ingest(&buf).map_err(Attempt::Fatal)?;
        st.take_read_waker(&mut wake);
        st.take_write_waker(&mut wake);
        resent
    };
    wake.fire();
    info!(peer = %crate::stream::shown(peer), resent, "resumed");
    shared.emit(Event::Resumed { peer, resent });
    Ok(io)
}
