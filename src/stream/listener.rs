//! The server: accepting sessions, and routing reconnects to them.
//!
//! Every incoming transport gets a handshake task, bounded in number (see
//! [`super::admission`]: `max_handshakes` in all and
//! `max_handshakes_per_source`, the oldest making room for a newcomer) and
//! in time (`first_byte_timeout`, then `handshake_timeout`). A new session gets a
//! driver task and goes to [`Listener::accept`]; a reconnect is checked
//! against its session here and, only once it succeeded, handed to that
//! session's driver, which swaps transports. A failed or forged reconnect
//! never touches the live transport.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use parking_lot::Mutex;
use rand::RngExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::admission::{Admission, Source, Throttle};
use super::exchange::{Exchange, Hello, Stop, drive, send_rest};
use super::pump::{PumpConfig, PumpEnd, pump};
use super::shared::{DriverGuard, Shared, State, Wake};
use super::threads::Threads;
use super::transport::SocketOptions;
use super::{Config, Error, Event, Stream};
use crate::proto::sealed::exchange::{
    REJECT_BAD_KEY, REJECT_NO_STATIC_KEY, REJECT_UNKNOWN_SESSION,
};
use crate::proto::sealed::{Link, Request, ServerExchange, ServerOutcome};
use crate::proto::{
    self, Incoming, ReconnectRequest, RefuseReason, ResumePoint, ServerHandshake, ServerResume,
    Session,
};

/// A session that was not yet resumable lost its connection.
fn not_resumable() -> Error {
    Error::Transport(Arc::new(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection broke before the session was resumable",
    )))
}

/// What an exchange that stopped early means for the connection.
fn stopped(stop: Stop) -> Error {
    match stop {
        Stop::Closed => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "client closed the connection during the exchange",
        )
        .into(),
        Stop::Io(e) => e.into(),
        Stop::Protocol(e) => Error::Handshake(e),
    }
}

/// What a parked session waits on, read under the lock.
#[derive(Debug, PartialEq, Eq)]
struct ParkView {
    /// When to stop waiting: the close deadline or the reconnect wait.
    deadline: Instant,
    /// The application is gone and nothing is left to deliver.
    nothing_left: bool,
    resumable: bool,
}

impl ParkView {
    fn of(st: &State, expiry: Instant) -> Self {
        ParkView {
            deadline: st.close_deadline.map_or(expiry, |d| d.min(expiry)),
            nothing_left: st.abandoned() && st.records.is_none() && !st.session.has_pending(),
            resumable: st.resumable,
        }
    }
}

/// Completes at the application's next call that wakes the driver (a write,
/// a dropped half, a forced reconnect), or at once if what the parked
/// session waits on is no longer `seen`: a call between reading it and
/// registering here would otherwise find no waker to wake.
fn app_event(
    shared: &Shared,
    seen: ParkView,
    expiry: Instant,
) -> impl std::future::Future<Output = ()> + '_ {
    let mut first = true;
    std::future::poll_fn(move |cx| {
        if !first {
            return std::task::Poll::Ready(());
        }
        first = false;
        let mut st = shared.state.lock();
        if ParkView::of(&st, expiry) != seen {
            return std::task::Poll::Ready(());
        }
        st.driver_waker = Some(cx.waker().clone());
        std::task::Poll::Pending
    })
}

/// A transport a listener can serve.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Transport for T {}

/// A handshake's slot in the listener's admission table, given back when
/// the handshake task ends however it ends.
struct Slot<T: Transport> {
    inner: Arc<Inner<T>>,
    ticket: u64,
}

impl<T: Transport> Slot<T> {
    fn talking(&self) {
        self.inner.admission.lock().talking(self.ticket);
    }

    fn protect(&self) {
        self.inner.admission.lock().protect(self.ticket);
    }
}

impl<T: Transport> Drop for Slot<T> {
    fn drop(&mut self) {
        self.inner.admission.lock().release(self.ticket);
    }
}

/// Sessions waiting for their client, by ticket (oldest first).
#[derive(Default)]
struct Parking {
    next: u64,
    waiting: BTreeMap<u64, (Arc<Shared>, CancellationToken)>,
}

/// How much a parked session is worth keeping, lowest first to go: one the
/// application has dropped, one that never received a byte from its peer,
/// any other.
fn worth(shared: &Shared) -> u8 {
    let st = shared.state.lock();
    if st.abandoned() {
        0
    } else if st.session.read_count() == 0 {
        1
    } else {
        2
    }
}

impl Parking {
    /// Parks `shared`, ending a less worthy (or else the oldest) parked
    /// session if `max` are parked: its ticket, or `None` if every parked
    /// session is worth more than this one.
    fn enter(
        &mut self,
        shared: &Arc<Shared>,
        cancel: CancellationToken,
        max: usize,
        evicted: &AtomicU64,
    ) -> Option<u64> {
        if self.waiting.len() >= max {
            let (victim, victim_worth) = self
                .waiting
                .iter()
                .map(|(&t, (s, _))| (t, worth(s)))
                .min_by_key(|&(t, w)| (w, t))?;
            if worth(shared) < victim_worth {
                return None;
            }
            if let Some((_, cancel)) = self.waiting.remove(&victim) {
                evicted.fetch_add(1, Ordering::Relaxed);
                cancel.cancel();
            }
        }
        let ticket = self.next;
        self.next += 1;
        self.waiting.insert(ticket, (shared.clone(), cancel));
        Some(ticket)
    }
}

/// A parked session's place, given back however the wait ends.
struct Parked<'a, T: Transport> {
    inner: &'a Inner<T>,
    ticket: u64,
}

impl<T: Transport> Drop for Parked<'_, T> {
    fn drop(&mut self) {
        self.inner.parking.lock().waiting.remove(&self.ticket);
    }
}

/// A resumed transport on its way to its session's driver. Sent boxed: a
/// channel's memory is its slots (32 at a time), and a commit with its
/// link is over a kilobyte, which every session would pay for in its
/// channel, idle or not.
struct Commit<T> {
    io: T,
    point: ResumePoint,
    link: Option<Link>,
    leftover: BytesMut,
    peer: Option<SocketAddr>,
}

/// Where a session's resumed transports are sent.
type Commits<T> = mpsc::Sender<Box<Commit<T>>>;

struct Entry<T> {
    shared: Arc<Shared>,
    commits: Commits<T>,
}

/// Counters of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerStats {
    /// Live sessions, connected or waiting for their client.
    pub sessions: usize,
    /// Sessions waiting for their client.
    pub parked: usize,
    /// Parked sessions ended to make room for a newer break (`max_parked`
    /// reached): those the application had dropped first, then those that
    /// never received a byte, then the one waiting longest.
    pub parked_evicted: u64,
    /// Handshakes in progress.
    pub handshakes: usize,
    /// Sessions established since start.
    pub established: u64,
    /// Reconnects that resumed a session.
    pub resumed: u64,
    /// Reconnects refused.
    pub refused: u64,
    /// Handshakes that failed or timed out, and sessions or reconnects whose
    /// transport could not move to their thread ([`Config::threads`]).
    pub failed: u64,
    /// Connections closed at once because every handshake slot was held
    /// by a reconnect.
    pub shed: u64,
    /// Connections closed mid-handshake to make room for a newer one
    /// (`max_handshakes` or `max_handshakes_per_source` reached).
    pub evicted: u64,
    /// Connections closed at once because their source had used up its
    /// `auth_failures_per_minute`.
    pub throttled: u64,
    /// Sealed handshakes refused because the PSK identity the client named
    /// (in the tunnel, its name) has no key here; under a pinned server key,
    /// answered and never confirmed (as [`ListenerStats::unconfirmed`], but
    /// counted here).
    pub unknown_identity: u64,
    /// Sealed handshakes refused because the peer's PSK did not match (in
    /// the tunnel, a wrong token).
    pub bad_key: u64,
    /// Sealed new-session handshakes that this side answered (at the cost
    /// of its Diffie–Hellman work) and the peer never confirmed, under an
    /// identity this side knows: a wrong key under a pinned server key
    /// (whose PSK is checked only at the confirm), a replayed hello, or a
    /// connection lost mid-handshake. Each counts against
    /// `auth_failures_per_minute`.
    pub unconfirmed: u64,
}

struct Inner<T> {
    config: Config,
    sessions: Mutex<HashMap<u64, Entry<T>>>,
    parking: Mutex<Parking>,
    parked_evicted: AtomicU64,
    admission: Mutex<Admission<CancellationToken>>,
    throttle: Mutex<Throttle>,
    throttled: AtomicU64,
    /// The PSK an unknown identity's hello is read with: no client has it,
    /// so the hello fails as one under a wrong key does, and a refusal does
    /// not tell which identities exist.
    decoy: crate::proto::sealed::Psk,
    new_sessions: mpsc::Sender<Stream>,
    established: AtomicU64,
    resumed: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    shed: AtomicU64,
    evicted: AtomicU64,
    unknown_identity: AtomicU64,
    bad_key: AtomicU64,
    unconfirmed: AtomicU64,
    /// Refusals of peers that proved nothing are logged at most once a second.
    noise: NoiseLog,
    /// So are new sessions refused at `max_sessions` (on a log of their own,
    /// so that a flood of the former cannot hide them).
    full_log: NoiseLog,
    /// And transports that could not move to their session's thread.
    move_log: NoiseLog,
    /// The threads sessions' drivers run on (`Config::threads`), if any.
    threads: Option<Arc<Threads>>,
}

/// Paces log lines about unauthenticated peers: at most one a second, each
/// saying how many were left out before it, so that a flood of bad
/// handshakes cannot flood the log. (The counters in [`ListenerStats`] see
/// every one.)
#[derive(Default)]
struct NoiseLog {
    /// When the last line was written, and how many were left out since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl NoiseLog {
    /// `Some(left out since the last line)` if a line may be written now.
    fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        match state.0 {
            Some(last) if now.duration_since(last) < std::time::Duration::from_secs(1) => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }
}

/// Accepts resumable sessions.
///
/// Bind one to a TCP address with [`Listener::bind`], or build one with
/// [`Listener::new`] and feed it transports of any kind with
/// [`Listener::serve`]. [`Listener::accept`] yields new sessions only;
/// reconnects are routed to their sessions inside.
pub struct Listener<T: Transport = TcpStream> {
    inner: Arc<Inner<T>>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Stream>>,
    local_addr: Option<SocketAddr>,
    accept_task: Option<JoinHandle<()>>,
}

impl Listener<TcpStream> {
    /// Binds a TCP listener (the first address `addr` resolves to).
    ///
    /// ```no_run
    /// # async fn f() -> std::io::Result<()> {
    /// use rejoin::stream::{Config, Listener};
    /// let listener = Listener::bind("127.0.0.1:0", Config::default()).await?;
    /// println!("listening on {}", listener.local_addr().unwrap());
    /// while let Ok(stream) = listener.accept().await {
    ///     tokio::spawn(async move {
    ///         let (mut r, mut w) = tokio::io::split(stream);
    ///         let _ = tokio::io::copy(&mut r, &mut w).await;
    ///     });
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn bind(addr: impl ToSocketAddrs, config: Config) -> io::Result<Self> {
        let mut listener = Self::new(config)?;
        let options = SocketOptions::from_config(&listener.inner.config);
        let addr = tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing")
        })?;
        let tcp = options.bind(addr)?;
        listener.local_addr = Some(tcp.local_addr()?);
        let inner = listener.inner.clone();
        listener.accept_task = Some(tokio::spawn(async move {
            loop {
                match tcp.accept().await {
                    Ok((io, peer)) => {
                        if let Err(e) = options.apply(&io) {
                            debug!(%peer, error = %e, "socket options");
                        }
                        Inner::serve(&inner, io, Some(peer));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off briefly.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }));
        Ok(listener)
    }
}

impl<T: Transport> Listener<T> {
    /// A listener without a socket: hand it transports with [`Listener::serve`].
    ///
    /// With [`Config::threads`], its sessions' drivers run on threads of its
    /// own; TCP and Unix transports are moved there with them, others stay
    /// registered with the runtime they were made on.
    pub fn new(config: Config) -> io::Result<Self> {
        config.validate().map_err(Error::from)?;
        let threads = match config.threads {
            0 => None,
            n => Some(Threads::start(n, "rj-session")?),
        };
        let (tx, rx) = mpsc::channel(config.accept_backlog);
        let throttle = Throttle::new(config.auth_failures_per_minute, 65_536);
        let inner = Arc::new(Inner {
            throttle: Mutex::new(throttle),
            admission: Mutex::new(Admission::new(
                config.max_handshakes,
                config.max_handshakes_per_source,
            )),
            config,
            sessions: Mutex::new(HashMap::new()),
            parking: Mutex::new(Parking::default()),
            parked_evicted: AtomicU64::new(0),
            new_sessions: tx,
            established: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            decoy: crate::proto::sealed::Psk::from_bytes(rand::random()),
            unknown_identity: AtomicU64::new(0),
            bad_key: AtomicU64::new(0),
            unconfirmed: AtomicU64::new(0),
            noise: NoiseLog::default(),
            full_log: NoiseLog::default(),
            move_log: NoiseLog::default(),
            threads,
        });
        Ok(Listener {
            inner,
            accepted: tokio::sync::Mutex::new(rx),
            local_addr: None,
            accept_task: None,
        })
    }

    /// Serves one incoming transport: a new session or a reconnect.
    pub fn serve(&self, io: T, peer: Option<SocketAddr>) {
        Inner::serve(&self.inner, io, peer);
    }

    /// The next new session.
    pub async fn accept(&self) -> io::Result<Stream> {
        self.accepted
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "listener closed"))
    }

    /// Stops taking connections, for a listener made by [`Listener::bind`]:
    /// its socket closes, so new connections, new sessions and reconnects
    /// alike, are refused. Sessions already up go on, and so do handshakes
    /// under way (their sessions still reach [`Listener::accept`]).
    pub fn close(&self) {
        if let Some(task) = &self.accept_task {
            task.abort();
        }
    }

    /// The bound address, for a listener made by [`Listener::bind`].
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// A snapshot of the listener's counters.
    pub fn stats(&self) -> ListenerStats {
        let i = &self.inner;
        ListenerStats {
            sessions: i.sessions.lock().len(),
            parked: i.parking.lock().waiting.len(),
            parked_evicted: i.parked_evicted.load(Ordering::Relaxed),
            handshakes: i.admission.lock().len(),
            established: i.established.load(Ordering::Relaxed),
            resumed: i.resumed.load(Ordering::Relaxed),
            refused: i.refused.load(Ordering::Relaxed),
            failed: i.failed.load(Ordering::Relaxed),
            shed: i.shed.load(Ordering::Relaxed),
            evicted: i.evicted.load(Ordering::Relaxed),
            throttled: i.throttled.load(Ordering::Relaxed),
            unknown_identity: i.unknown_identity.load(Ordering::Relaxed),
            bad_key: i.bad_key.load(Ordering::Relaxed),
            unconfirmed: i.unconfirmed.load(Ordering::Relaxed),
        }
    }
}

impl<T: Transport> Drop for Listener<T> {
    fn drop(&mut self) {
        self.close();
    }
}

/// Counts a sealed new session as answered and never confirmed when
/// dropped armed (see [`Inner::confirm`]); one that named an identity this
/// side does not know (answered under the decoy, as a pinned server
/// answers before any PSK is checked) as an unknown identity instead.
struct Unconfirmed<'a, T: Transport> {
    inner: &'a Inner<T>,
    peer: Option<SocketAddr>,
    known: bool,
    armed: bool,
}

impl<T: Transport> Drop for Unconfirmed<'_, T> {
    fn drop(&mut self) {
        if self.armed {
            if self.known {
                &self.inner.unconfirmed
            } else {
                &self.inner.unknown_identity
            }
            .fetch_add(1, Ordering::Relaxed);
            self.inner.failed_proof(self.peer);
        }
    }
}

impl<T: Transport> Inner<T> {
    fn serve(this: &Arc<Self>, io: T, peer: Option<SocketAddr>) {
        let source = Source::of(peer);
        if !this
            .throttle
            .lock()
            .allows(source, std::time::Instant::now())
        {
            this.throttled.fetch_add(1, Ordering::Relaxed);
            debug!(
                peer = %crate::stream::shown(peer),
                "too many failed proofs from this source; connection closed"
            );
            return;
        }
        let cancel = CancellationToken::new();
        let admitted = this.admission.lock().admit(source, cancel.clone());
        let Some(admitted) = admitted else {
            this.shed.fetch_add(1, Ordering::Relaxed);
            debug!(
                peer = %crate::stream::shown(peer),
                "every handshake slot holds a reconnect; connection closed"
            );
            return;
        };
        if let Some(evicted) = admitted.evicted {
            this.evicted.fetch_add(1, Ordering::Relaxed);
            evicted.cancel();
        }
        let slot = Slot {
            inner: this.clone(),
            ticket: admitted.ticket,
        };
        tokio::spawn(async move {
            let inner = slot.inner.clone();
            let limit = inner.config.handshake_timeout;
            let result = tokio::select! {
                result = timeout(limit, inner.handshake(io, peer, &slot)) => match result {
                    Ok(result) => result,
                    Err(_) => Err(Error::HandshakeTimeout(limit)),
                },
                () = cancel.cancelled() => Err(Error::LimitReached("handshake slot taken by a newer connection")),
            };
            drop(slot);
            if let Err(e) = result {
                inner.failed.fetch_add(1, Ordering::Relaxed);
                debug!(peer = %crate::stream::shown(peer), error = %e, "handshake failed");
            }
        });
    }

    /// Whether `max_sessions` are live, so a new session is refused (said
    /// in the log at most once a second).
    fn full(&self, peer: Option<SocketAddr>) -> bool {
        let full = self.sessions.lock().len() >= self.config.max_sessions;
        if full && let Some(left_out) = self.full_log.allow() {
            warn!(peer = %crate::stream::shown(peer), max_sessions = self.config.max_sessions, left_out, "new session refused: max_sessions reached");
        }
        full
    }

    /// A peer failed to prove a key: its source has one guess fewer.
    fn failed_proof(&self, peer: Option<SocketAddr>) {
        self.throttle
            .lock()
            .failed(Source::of(peer), std::time::Instant::now());
    }

    /// A random conn ID that no live session has.
    fn fresh_id(&self) -> u64 {
        let sessions = self.sessions.lock();
        loop {
            let id: u64 = rand::rng().random();
            if id != 0 && !sessions.contains_key(&id) {
                return id;
            }
        }
    }

    async fn handshake(
        self: &Arc<Self>,
        mut io: T,
        peer: Option<SocketAddr>,
        slot: &Slot<T>,
    ) -> Result<(), Error> {
        let mut buf = BytesMut::with_capacity(64);
        let first = self.config.first_byte_timeout;
        match timeout(first, io.read_buf(&mut buf)).await {
            Err(_) => return Err(Error::HandshakeTimeout(first)),
            Ok(Ok(0)) => return Err(stopped(Stop::Closed)),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(_)) => slot.talking(),
        }
        if self.config.sealed_keys().is_some() {
            return self.sealed(io, buf, peer, slot).await;
        }
        let mut hs = ServerHandshake::new(self.config.params(), self.fresh_id());
        Exchange::handle_input(&mut hs, &mut buf).map_err(Error::Handshake)?;
        match drive(&mut io, &mut hs, &mut buf).await.map_err(stopped)? {
            Incoming::Session(session) => self.establish(io, session, None, buf, peer).await,
            Incoming::Reconnect(request) => self.resume(io, request, buf, peer, slot).await,
        }
    }

    /// A connection in the sealed suite: a new session or a resume.
    async fn sealed(
        self: &Arc<Self>,
        mut io: T,
        mut buf: BytesMut,
        peer: Option<SocketAddr>,
        slot: &Slot<T>,
    ) -> Result<(), Error> {
        let keys = self
            .config
            .sealed_keys()
            .ok_or(Error::Internal("sealed connection without sealed keys"))?;
        let mut ex = ServerExchange::new(keys.static_key.clone());
        ex.handle_input(&mut buf).map_err(Error::Handshake)?;
        let request = drive(&mut io, &mut Hello(&mut ex), &mut buf)
            .await
            .map_err(stopped)?;
        let psk_id = match request {
            Request::Resume { id, .. } => {
                return self.sealed_resume(io, ex, id, buf, peer, slot).await;
            }
            Request::New { psk_id, .. } => psk_id,
        };
        if self.full(peer) {
            // Closed before any Diffie–Hellman work or an answer: the
            // client's `connect` fails, where a session ended at once
            // would have let it succeed and then be refused.
            return Err(Error::LimitReached("max_sessions"));
        }
        let shown = String::from_utf8_lossy(&psk_id).into_owned();
        let psk = keys.psk_for(&psk_id);
        let known = psk.is_some();
        // An unknown identity is read with the decoy and refused as a wrong
        // key is: the same answer after the same work.
        let psk = psk.unwrap_or_else(|| self.decoy.clone());
        let id = self.fresh_id();
        let accepted = match ex.accept_new(&psk, id, self.config.params(), &mut rand::rng()) {
            Ok(()) => Ok(()),
            Err(proto::Error::Unsupported(_)) => Err(REJECT_NO_STATIC_KEY),
            Err(_) => Err(REJECT_BAD_KEY),
        };
        if let Err(code) = accepted {
            if code == REJECT_BAD_KEY {
                self.failed_proof(peer);
                if known {
                    &self.bad_key
                } else {
                    &self.unknown_identity
                }
                .fetch_add(1, Ordering::Relaxed);
            }
            let e = proto::Error::KeyRejected(code);
            if let Some(left_out) = self.noise.allow() {
                let why = if known {
                    "wrong key"
                } else {
                    "unknown identity"
                };
                info!(identity = ?shown, peer = %crate::stream::shown(peer), error = %e, why, left_out, "handshake refused");
            }
            ex.reject(code);
            send_rest(&mut io, &mut ex).await;
            return Err(Error::Handshake(e));
        }
        match self.confirm(&mut io, &mut ex, buf, peer, known).await? {
            (ServerOutcome::Established(e), buf) => {
                self.establish(io, e.session, Some(e.link), buf, peer).await
            }
            (ServerOutcome::Resumed(_), _) => Err(Error::Internal("a new session resumed")),
        }
    }

    /// Runs a sealed new-session handshake that this side has answered to
    /// its end, the peer's confirm. One answered and never confirmed counts
    /// as a failed proof: the answer cost Diffie–Hellman work, and a hello
    /// that earns one needs no key (a pinned server's PSK is checked only at
    /// the confirm; a recorded hello can be replayed), so without it one
    /// source could have that work done as fast as it can connect.
    /// (Counted however the handshake ends short of its confirm: an error,
    /// a close, or its future dropped at `handshake_timeout` or when a
    /// newer connection takes its slot, which a peer holding its
    /// connections open could otherwise have used to go uncounted.)
    async fn confirm(
        &self,
        io: &mut T,
        ex: &mut ServerExchange,
        mut buf: BytesMut,
        peer: Option<SocketAddr>,
        known: bool,
    ) -> Result<(ServerOutcome, BytesMut), Error> {
        let mut unconfirmed = Unconfirmed {
            inner: self,
            peer,
            known,
            armed: true,
        };
        ex.handle_input(&mut buf).map_err(Error::Handshake)?;
        let outcome = drive(io, ex, &mut buf).await.map_err(stopped)?;
        unconfirmed.armed = false;
        Ok((outcome, buf))
    }

    /// A sealed resume of session `id`: the live session is touched only
    /// once the client has proved the session's resume secret under this
    /// connection's fresh handshake.
    async fn sealed_resume(
        self: &Arc<Self>,
        mut io: T,
        mut ex: ServerExchange,
        id: u64,
        mut buf: BytesMut,
        peer: Option<SocketAddr>,
        slot: &Slot<T>,
    ) -> Result<(), Error> {
        let shown = format!("{id:016x}");
        let entry = self.entry(id);
        let secrets = entry
            .as_ref()
            .and_then(|(shared, _)| shared.state.lock().session.secrets().cloned());
        let (Some((shared, commits)), Some(secrets)) = (entry, secrets) else {
            // Said in the clear (the server no longer has the secret): the
            // client starts over instead of retrying until it gives up.
            self.refused.fetch_add(1, Ordering::Relaxed);
            self.failed_proof(peer);
            if let Some(left_out) = self.noise.allow() {
                info!(id = %shown, peer = %crate::stream::shown(peer), left_out, "reconnect refused: unknown conn ID");
            }
            ex.reject(REJECT_UNKNOWN_SESSION);
            send_rest(&mut io, &mut ex).await;
            return Ok(());
        };
        // The handshake's work happens outside the session's lock (only a
        // snapshot is taken under it): a peer that only knows the conn ID, or
        // replays a recorded resume, must not be able to stall the session.
        let accepted = ex.open_resume(&secrets).and_then(|()| {
            let decision = {
                let st = shared.state.lock();
                if st.ended.is_some() {
                    return Err(proto::Error::Refuse(RefuseReason::UnknownId));
                }
                ex.decide_resume(&st.session)?
            };
            ex.answer_resume(decision)
        });
        if let Err(e) = accepted {
            self.refused.fetch_add(1, Ordering::Relaxed);
            if !matches!(e, proto::Error::Refuse(_)) {
                // The proof did not open: a guess, not a stale client.
                self.failed_proof(peer);
            }
            if let Some(left_out) = self.noise.allow() {
                info!(id = %shown, peer = %crate::stream::shown(peer), error = %e, left_out, "reconnect refused");
            }
            send_rest(&mut io, &mut ex).await;
            return Ok(());
        }
        // Proved: a reconnect of a live session, kept from eviction.
        slot.protect();
        // (A resume answered and never confirmed is not counted as a failed
        // proof, as a new session is: its hello needs the resume secret, so
        // only a recent recording of a real one earns an answer, while an
        // honest client whose network drops answers would be counted at
        // every attempt.)
        ex.handle_input(&mut buf).map_err(Error::Handshake)?;
        let ServerOutcome::Resumed(resumed) =
            drive(&mut io, &mut ex, &mut buf).await.map_err(stopped)?
        else {
            return Err(Error::Internal("a resume established a new session"));
        };
        let commit = Box::new(Commit {
            io,
            point: resumed.point,
            link: Some(resumed.link),
            leftover: buf,
            peer,
        });
        if commits.send(commit).await.is_err() {
            debug!("session ended before the reconnect could commit");
        }
        Ok(())
    }

    /// The session with conn ID `id`, and the way to its driver.
    fn entry(&self, id: u64) -> Option<(Arc<Shared>, Commits<T>)> {
        let sessions = self.sessions.lock();
        sessions
            .get(&id)
            .map(|e| (e.shared.clone(), e.commits.clone()))
    }

    async fn establish(
        self: &Arc<Self>,
        io: T,
        session: Session,
        link: Option<Link>,
        leftover: BytesMut,
        peer: Option<SocketAddr>,
    ) -> Result<(), Error> {
        let id = session.id();
        let mut state = State::new(
            session,
            self.config.recv_buffer,
            self.config.close_timeout,
            peer,
        );
        state.link = link;
        state.ingest(&leftover)?;
        if self.full(peer) {
            return Err(Error::LimitReached("max_sessions"));
        }
        let place = self.threads.as_ref().map(Threads::place);
        let home = place.as_ref().map(super::threads::Place::home);
        let shared = Arc::new(Shared::new(state).at_home(home));
        let (tx, rx) = mpsc::channel(4);
        {
            let mut sessions = self.sessions.lock();
            // (Again under the lock: two handshakes may end at once.)
            if sessions.len() >= self.config.max_sessions {
                return Err(Error::LimitReached("max_sessions"));
            }
            if sessions.contains_key(&id) {
                return Err(Error::LimitReached("conn ID collision"));
            }
            sessions.insert(
                id,
                Entry {
                    shared: shared.clone(),
                    commits: tx,
                },
            );
        }
        self.established.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("session", id = %format_args!("{id:016x}"), role = "server");
        span.in_scope(|| info!(peer = %crate::stream::shown(peer), "session up"));
        let driver = self.clone().run(shared.clone(), io, rx).instrument(span);
        match place {
            Some(place) => {
                let thread = place.handle.clone();
                thread.spawn(async move {
                    let _place = place;
                    driver.await;
                });
            }
            None => {
                tokio::spawn(driver);
            }
        }
        // Waits for room in the accept backlog, within the handshake timeout;
        // if that runs out the stream is dropped and the session closes.
        if self.new_sessions.send(Stream::new(shared)).await.is_err() {
            debug!("listener gone; session dropped");
        }
        Ok(())
    }

    async fn resume(
        self: &Arc<Self>,
        mut io: T,
        request: ReconnectRequest,
        mut buf: BytesMut,
        peer: Option<SocketAddr>,
        slot: &Slot<T>,
    ) -> Result<(), Error> {
        let Some((shared, commits)) = self.entry(request.id) else {
            return self
                .refuse(io, &request, peer, RefuseReason::UnknownId)
                .await;
        };
        let offer = {
            let mut st = shared.state.lock();
            if st.ended.is_some() {
                Err(RefuseReason::UnknownId)
            } else {
                ServerResume::new(&mut st.session, &request, &mut rand::rng())
            }
        };
        let mut offer = match offer {
            Ok(offer) => offer,
            Err(reason) => return self.refuse(io, &request, peer, reason).await,
        };
        // Its proof checked out: a reconnect of a live session, kept from
        // eviction.
        slot.protect();
        let point = drive(&mut io, &mut offer, &mut buf)
            .await
            .map_err(stopped)?
            .map_err(Error::Handshake)?;
        let commit = Box::new(Commit {
            io,
            point,
            link: None,
            leftover: buf,
            peer,
        });
        if commits.send(commit).await.is_err() {
            debug!("session ended before the reconnect could commit");
        }
        Ok(())
    }

    /// Turns a reconnect down; the session, if any, is untouched.
    async fn refuse(
        &self,
        mut io: T,
        request: &ReconnectRequest,
        peer: Option<SocketAddr>,
        reason: RefuseReason,
    ) -> Result<(), Error> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if matches!(reason, RefuseReason::UnknownId | RefuseReason::BadTag) {
            self.failed_proof(peer);
        }
        if let Some(left_out) = self.noise.allow() {
            let id = format_args!("{:016x}", request.id);
            info!(%id, peer = %crate::stream::shown(peer), %reason, left_out, "reconnect refused");
        }
        io.write_all(&ServerResume::refusal(self.config.version))
            .await?;
        let _ = io.shutdown().await;
        Ok(())
    }

    /// Counts, and logs at most once a second, a transport that could not
    /// move to its session's thread (the host short of something, such as
    /// epoll watches: it may go on for a while).
    fn not_moved(&self, e: &io::Error, what: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Some(left_out) = self.move_log.allow() {
            warn!(error = %e, left_out, "{what}: its transport could not move to the session's thread");
        }
    }

    /// `io` registered with the runtime this runs on, when the listener has
    /// threads of its own (and `io` is a kind that can move).
    fn rehomed(&self, io: T) -> io::Result<T> {
        match self.threads {
            Some(_) => super::threads::rehome(io),
            None => Ok(io),
        }
    }

    /// The server's driver for one session.
    async fn run(
        self: Arc<Self>,
        shared: Arc<Shared>,
        io: T,
        mut commits: mpsc::Receiver<Box<Commit<T>>>,
    ) {
        let _guard = DriverGuard(shared.clone());
        let io = match self.rehomed(io) {
            Ok(io) => io,
            Err(e) => {
                self.not_moved(&e, "session ended");
                self.sessions.lock().remove(&shared.id);
                shared.end(Err(Error::Transport(Arc::new(e))));
                return;
            }
        };
        let records = shared.state.lock().records.is_some();
        // snet peers send no heartbeat, so a quiet compatible session is not
        // a dead one: only the record layer lets the server judge silence.
        let cfg = PumpConfig {
            idle: self.config.idle_timeout.filter(|_| records),
            ping: self.config.idle_timeout.filter(|_| records).map(|d| d / 3),
            pace: self.config.pace(),
        };
        let result = self.drive(&shared, io, &mut commits, cfg).await;
        self.sessions.lock().remove(&shared.id);
        match &result {
            Ok(()) => info!("session closed"),
            Err(e) => info!(error = %e, "session ended"),
        }
        shared.end(result);
    }

    async fn drive(
        &self,
        shared: &Arc<Shared>,
        io: T,
        commits: &mut mpsc::Receiver<Box<Commit<T>>>,
        cfg: PumpConfig,
    ) -> Result<(), Error> {
        let mut io = Some(io);
        loop {
            if let Some(transport) = io.as_mut() {
                let end = tokio::select! {
                    end = pump(shared, transport, cfg) => Ok(end),
                    commit = commits.recv() => Err(commit),
                };
                match end {
                    Err(Some(commit)) => {
                        // (Boxed, here and below: the states of a resume and
                        // of a wait for one would otherwise be part of every
                        // session's driver for its whole life.)
                        if let Some(new) = Box::pin(self.commit(shared, commit)).await {
                            io = Some(new);
                        }
                    }
                    Err(None) => return Err(Error::Closed),
                    Ok(PumpEnd::Finished) => {
                        let _ = timeout(self.config.close_timeout, transport.shutdown()).await;
                        return Ok(());
                    }
                    Ok(PumpEnd::Ended) => {
                        return shared.state.lock().ended.clone().unwrap_or(Ok(()));
                    }
                    Ok(PumpEnd::Forced) => {
                        self.disconnected(shared, "transport dropped by the application".into());
                        io = None;
                    }
                    Ok(PumpEnd::Broken(reason)) => {
                        self.disconnected(shared, reason);
                        io = None;
                    }
                }
                continue;
            }
            match Box::pin(self.park(shared, commits)).await? {
                Some(transport) => io = Some(transport),
                None => return Ok(()),
            }
        }
    }

    fn disconnected(&self, shared: &Shared, reason: String) {
        shared.state.lock().transport_lost();
        info!(%reason, "disconnected; waiting for the client");
        shared.emit(Event::Disconnected { reason });
    }

    /// Waits for the client to come back: `Ok(None)` if the application
    /// closed meanwhile and nothing is left to deliver.
    async fn park(
        &self,
        shared: &Arc<Shared>,
        commits: &mut mpsc::Receiver<Box<Commit<T>>>,
    ) -> Result<Option<T>, Error> {
        if !shared.state.lock().resumable {
            return Err(not_resumable());
        }
        let evicted = CancellationToken::new();
        let ticket = self.parking.lock().enter(
            shared,
            evicted.clone(),
            self.config.max_parked,
            &self.parked_evicted,
        );
        let Some(ticket) = ticket else {
            return Err(Error::LimitReached("max_parked"));
        };
        let _parked = Parked {
            inner: self,
            ticket,
        };
        let wait = self.config.reconnect_wait;
        let expiry = Instant::now() + wait;
        let result = loop {
            let view = ParkView::of(&shared.state.lock(), expiry);
            if view.nothing_left {
                break Err(None);
            }
            if !view.resumable {
                break Err(Some(not_resumable()));
            }
            let deadline = view.deadline;
            tokio::select! {
                () = evicted.cancelled() => {
                    break Err(Some(Error::LimitReached("max_parked: made room for a newer break")));
                }
                commit = commits.recv() => match commit {
                    Some(commit) => {
                        if let Some(io) = self.commit(shared, commit).await {
                            break Ok(io);
                        }
                    }
                    None => break Err(Some(Error::Closed)),
                },
                _ = tokio::time::sleep_until(deadline) => {
                    break Err(Some(if Instant::now() >= expiry { Error::Expired(wait) } else { Error::Closed }));
                }
                _ = app_event(shared, view, expiry) => {}
            }
        };
        match result {
            Ok(io) => Ok(Some(io)),
            Err(None) => Ok(None),
            Err(Some(e)) => Err(e),
        }
    }

    /// Switches the session onto a resumed transport, unless a newer resume
    /// got there first.
    async fn commit(&self, shared: &Shared, commit: Box<Commit<T>>) -> Option<T> {
        let Commit {
            io,
            point,
            link,
            leftover,
            peer,
        } = *commit;
        let io = match self.rehomed(io) {
            Ok(io) => io,
            Err(e) => {
                self.not_moved(&e, "reconnect not committed");
                return None;
            }
        };
        let mut wake = Wake::default();
        let resent = {
            let mut st = shared.lock_between_writes().await;
            if st.ended.is_some() {
                return None;
            }
            let resent = match st.resumed(point, link, peer) {
                Ok(resent) => resent,
                Err(e) => {
                    debug!(error = %e, "reconnect not committed");
                    return None;
                }
            };
            if let Err(e) = st.ingest(&leftover) {
                st.end(Err(e), &mut wake);
                drop(st);
                wake.fire();
                return None;
            }
            st.take_read_waker(&mut wake);
            st.take_write_waker(&mut wake);
            st.take_driver_waker(&mut wake);
            resent
        };
        wake.fire();
        self.resumed.fetch_add(1, Ordering::Relaxed);
        info!(peer = %crate::stream::shown(peer), resent, "resumed");
        shared.emit(Event::Resumed { peer, resent });
        Some(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Waker};

    /// A parked session reads what it waits on, then registers for the
    /// application's next call. A call in between (here: the session made
    /// non-resumable) finds no waker, so the wait must see the change
    /// itself and end at once rather than sleep out the reconnect wait.
    #[test]
    fn a_change_before_a_parked_wait_registers_is_not_missed() {
        let runtime = super::super::pump::tests::runtime();
        let _entered = runtime.enter();
        let session = super::super::pump::tests::compatible_server();
        let state = State::new(session, 4096, std::time::Duration::from_secs(1), None);
        let shared = Shared::new(state);
        let expiry = Instant::now() + std::time::Duration::from_secs(60);
        let mut cx = Context::from_waker(Waker::noop());

        let seen = ParkView::of(&shared.state.lock(), expiry);
        let mut wait = std::pin::pin!(app_event(&shared, seen, expiry));
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "nothing changed");
        assert!(
            shared.state.lock().driver_waker.take().is_some(),
            "registered"
        );

        let seen = ParkView::of(&shared.state.lock(), expiry);
        shared.state.lock().resumable = false;
        let mut wait = std::pin::pin!(app_event(&shared, seen, expiry));
        assert!(wait.as_mut().poll(&mut cx).is_ready(), "the change is seen");
    }
}
