//! The tunnel server: logs clients in, publishes their services on public
//! ports, and sends each visitor through the client's link.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{Instrument, debug, info, info_span, warn};

use super::auth::{BAD_TOKEN, LoginKey, Token, Transcript, proofs_equal};
use super::bridge::bridge;
use super::frame::{Frame, ServiceKind, VERSION};
use super::mux::{End, Event, Mux, MuxConfig, Side, UdpStats};
use super::traffic::{Meter, ServiceStats, Traffic};
use super::udp::{self, UdpConfig, UdpService};
use crate::proto::sealed::{Psk, StaticKey};
use crate::stream::admission::Source;
use crate::stream::{self, Listener, SocketOptions, Stream};

/// The server's settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// Where public ports are bound; default: the listen address's IP.
    pub bind: Option<IpAddr>,
    /// The token any client may log in with (unless it has its own).
    pub token: Option<Token>,
    /// Per-client tokens, by client name.
    pub clients: HashMap<String, Token>,
    /// Public ports clients may ask for; empty means 1024–65535.
    pub ports: Vec<RangeInclusive<u16>>,
    /// Most services per client. Default 64.
    pub max_services: usize,
    /// Most visitors connected at once to one TCP service; beyond it a new
    /// visitor is reset at once. Default 16,384.
    pub max_visitors: usize,
    /// Most visitors connected at once to one TCP service from one source
    /// (an IPv4 address, an IPv6 /64). Default 128.
    pub max_visitors_per_source: usize,
    /// Deadline for a client's login. Default 10 s.
    pub login_timeout: Duration,
    /// Most links from one source (an IPv4 address, an IPv6 /64) that have
    /// completed the handshake and not yet logged in; beyond it a new one
    /// is ended at once. Default 16.
    pub max_pending_logins_per_source: usize,
    /// The server's static key: clients that pin its public half
    /// (`--server-key`) know they reach this server, even if the token leaked.
    pub static_key: Option<StaticKey>,
    /// The link's stream settings; `reconnect_wait` is how long a
    /// disconnected client's session, ports and visitors are kept. The
    /// suite is always the sealed one, keyed by the tokens: whatever
    /// `stream.suite` says is replaced.
    /// Check it with [`super::validate_link_stream`]: its socket buffers
    /// may be the kernel's, which `Config::validate` refuses for the
    /// compatible suite it names until then.
    pub stream: stream::Config,
    /// The multiplexer's settings.
    pub mux: MuxConfig,
    /// UDP services' settings.
    pub udp: UdpConfig,
}

impl ServerConfig {
    /// A server on `listen` accepting the shared `token` (or, with `None`,
    /// only per-client tokens), with defaults for the rest.
    pub fn new(listen: SocketAddr, token: Option<Token>) -> Self {
        ServerConfig {
            listen,
            bind: None,
            token,
            clients: HashMap::new(),
            ports: Vec::new(),
            max_services: 64,
            max_visitors: 16_384,
            max_visitors_per_source: 128,
            login_timeout: Duration::from_secs(10),
            max_pending_logins_per_source: 16,
            static_key: None,
            stream: super::link_stream_config(),
            mux: MuxConfig::default(),
            udp: UdpConfig::default(),
        }
    }

    fn port_allowed(&self, port: u16) -> bool {
        if self.ports.is_empty() {
            return port >= 1024;
        }
        self.ports.iter().any(|r| r.contains(&port))
    }
}

/// A published service: its public listener and its counters.
struct Published {
    name: String,
    kind: ServiceKind,
    addr: SocketAddr,
    task: JoinHandle<()>,
    /// Ends a UDP service gracefully (its associations dissociated).
    stop: tokio_util::sync::CancellationToken,
    traffic: Arc<Traffic>,
}

/// A logged-in client.
struct ClientSession {
    name: String,
    /// The token it logged in with: a reload that changes it ends the session.
    token: Token,
    mux: Mux,
    since: SystemTime,
    last_resume: Mutex<Option<SystemTime>>,
    services: Mutex<HashMap<u16, Published>>,
    /// Public ports the session this one replaced had, by service name and
    /// kind: a restarted client asking for any port gets its old one back.
    sticky: Mutex<HashMap<(String, ServiceKind), u16>>,
    /// Where to report associations the client ended, per UDP service.
    udp_services: Mutex<Vec<mpsc::UnboundedSender<u32>>>,
    /// The name of the thread its link runs on, if it has one.
    thread: Option<String>,
}

impl ClientSession {
    /// Closes its public ports, and waits until they are closed, so a new
    /// session can bind them again at once. Returns the ports it had, by
    /// service name and kind.
    async fn close_ports(&self) -> HashMap<(String, ServiceKind), u16> {
        let closed: Vec<_> = self.services.lock().drain().map(|(_, p)| p).collect();
        let mut ports = HashMap::new();
        for p in closed {
            p.task.abort();
            let _ = p.task.await;
            ports.insert((p.name, p.kind), p.addr.port());
        }
        ports
    }

    fn info(&self) -> ClientInfo {
        let mut services: Vec<ServiceInfo> = self
            .services
            .lock()
            .values()
            .map(|p| ServiceInfo {
                name: p.name.clone(),
                kind: p.kind,
                public: p.addr,
                stats: p.traffic.snapshot(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        ClientInfo {
            name: self.name.clone(),
            peer: self.mux.stream().peer_addr(),
            streams: self.mux.streams(),
            thread: self.thread.clone(),
            link: self.mux.stream().stats(),
            udp: self.mux.udp_stats(),
            since: self.since,
            last_resume: *self.last_resume.lock(),
            services,
        }
    }
}

/// Why [`Server::reload`] refused a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// Neither a shared token nor per-client tokens.
    #[error("no token: set a shared token or per-client tokens")]
    NoToken,
    /// A setting that only a restart changes was changed.
    #[error("`{0}` cannot change while running: restart the server for that")]
    Fixed(&'static str),
    /// The new settings cannot work.
    #[error("{}", .0.0)]
    Invalid(crate::stream::ConfigError),
    /// Stretching the new tokens into keys failed (a bug).
    #[error("the new tokens could not be stretched into keys")]
    Stretch,
}

/// Why logins were refused, for [`Server::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Refusal {
    /// The token did not match (at the handshake or the login).
    BadToken,
    /// No token for the client's name (and no shared token).
    UnknownClient,
    /// Another live client holds the name.
    NameInUse,
    /// The client speaks another tunnel protocol version.
    Version,
    /// No login within `login_timeout`.
    Timeout,
    /// Anything else the client sent out of turn.
    Protocol,
    /// Its address had `max_pending_logins_per_source` logins in progress.
    TooManyLogins,
    /// Its address had used up its failed proofs for the minute
    /// (`auth_failures_per_minute`): closed before any work was done.
    Throttled,
    /// A handshake the server answered was never confirmed: a wrong token
    /// under a pinned server key, a replayed hello, or a link lost
    /// mid-handshake. Counts as a failed proof.
    Unconfirmed,
}

impl Refusal {
    /// A short name, as metrics label it: `bad_token`, `unknown_client`…
    pub fn name(self) -> &'static str {
        match self {
            Refusal::BadToken => "bad_token",
            Refusal::UnknownClient => "unknown_client",
            Refusal::NameInUse => "name_in_use",
            Refusal::Version => "version",
            Refusal::Timeout => "timeout",
            Refusal::Protocol => "protocol",
            Refusal::TooManyLogins => "too_many_logins",
            Refusal::Throttled => "throttled",
            Refusal::Unconfirmed => "unconfirmed",
        }
    }
}

/// The tokens, stretched into keys.
#[derive(Default, Clone)]
struct Keys {
    shared: Option<(Token, LoginKey)>,
    clients: HashMap<String, (Token, LoginKey)>,
}

impl Keys {
    /// Keys for `config`'s tokens, stretching only tokens `old` lacks (a
    /// stretch takes a noticeable fraction of a second).
    fn new(config: &ServerConfig, old: &Keys) -> Keys {
        let stretch = |token: &Token| -> (Token, LoginKey) {
            let known = old
                .shared
                .iter()
                .chain(old.clients.values())
                .find(|(t, _)| t == token);
            match known {
                Some((t, k)) => (t.clone(), k.clone()),
                None => (token.clone(), token.key()),
            }
        };
        Keys {
            shared: config.token.as_ref().map(stretch),
            clients: config
                .clients
                .iter()
                .map(|(name, token)| (name.clone(), stretch(token)))
                .collect(),
        }
    }

    fn for_name(&self, name: &str) -> Option<&(Token, LoginKey)> {
        self.clients.get(name).or(self.shared.as_ref())
    }
}

struct Inner {
    /// Replaced whole by [`Server::reload`].
    config: parking_lot::RwLock<Arc<ServerConfig>>,
    bind_ip: IpAddr,
    keys: Arc<parking_lot::RwLock<Keys>>,
    sessions: tokio::sync::Mutex<HashMap<String, Arc<ClientSession>>>,
    /// Names whose login is between its proof and taking the name: one at a
    /// time per name, so two newcomers never both replace a holder.
    naming: Mutex<std::collections::HashSet<String>>,
    refused: Mutex<BTreeMap<Refusal, u64>>,
    /// Links between their handshake and their login, per source.
    pending_logins: Arc<SourceLimits>,
}

/// A name being taken; released when dropped.
struct Naming<'a> {
    inner: &'a Inner,
    name: String,
}

impl Drop for Naming<'_> {
    fn drop(&mut self) {
        self.inner.naming.lock().remove(&self.name);
    }
}

/// A running tunnel server.
pub struct Server {
    inner: Arc<Inner>,
    addr: SocketAddr,
    listener: Arc<Listener>,
    accept: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A counter snapshot of a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Logged-in clients.
    pub clients: usize,
    /// Open tunnel streams and UDP associations, all clients together.
    pub streams: usize,
}

/// One logged-in client, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// Its name.
    pub name: String,
    /// Where its link comes from now (or last came from).
    pub peer: Option<SocketAddr>,
    /// Its open streams and associations.
    pub streams: usize,
    /// The thread its link runs on (`rj-session-N`, see
    /// [`stream::Config::threads`]), if the server runs links on threads of
    /// their own.
    pub thread: Option<String>,
    /// Its link's counters.
    pub link: stream::Stats,
    /// Its UDP counters.
    pub udp: UdpStats,
    /// When this session logged in.
    pub since: SystemTime,
    /// When its link last resumed, if it has.
    pub last_resume: Option<SystemTime>,
    /// Its published services, by name.
    pub services: Vec<ServiceInfo>,
}

/// One published service, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceInfo {
    /// Its name (the client's, for logs and metrics).
    pub name: String,
    /// TCP or UDP.
    pub kind: ServiceKind,
    /// Where visitors reach it.
    pub public: SocketAddr,
    /// Its counters.
    pub stats: ServiceStats,
}

/// Everything [`Server::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStatus {
    /// The address clients connect to.
    pub listen: SocketAddr,
    /// The logged-in clients, by name.
    pub clients: Vec<ClientInfo>,
    /// Refused logins since start, by reason (reasons never seen are 0).
    pub logins_refused: Vec<(Refusal, u64)>,
}

impl Server {
    /// Binds the client port and starts serving.
    pub async fn bind(config: ServerConfig) -> io::Result<Server> {
        if config.token.is_none() && config.clients.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no token: set a shared token or per-client tokens",
            ));
        }
        config
            .mux
            .validate()
            .and_then(|()| config.udp.validate())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // Stretch the tokens once, now, so a login costs nothing.
        let keys = Arc::new(parking_lot::RwLock::new(Keys::new(
            &config,
            &Keys::default(),
        )));
        let listener = Listener::bind(config.listen, link_config(&config, &keys)).await?;
        let addr = listener
            .local_addr()
            .ok_or_else(|| io::Error::other("listener without an address"))?;
        let pending_logins = SourceLimits::new(usize::MAX, config.max_pending_logins_per_source);
        let inner = Arc::new(Inner {
            bind_ip: config.bind.unwrap_or(config.listen.ip()),
            config: parking_lot::RwLock::new(Arc::new(config)),
            keys,
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            naming: Mutex::new(std::collections::HashSet::new()),
            refused: Mutex::new(BTreeMap::new()),
            pending_logins,
        });
        let serving = inner.clone();
        let listener = Arc::new(listener);
        let accepting = listener.clone();
        let accept = tokio::spawn(async move {
            let listener = accepting;
            while let Ok(stream) = listener.accept().await {
                let inner = serving.clone();
                let home = stream.home();
                let span = info_span!("client", link = %format_args!("{:016x}", stream.id()));
                // On the link's own thread, if it has one: its mux, its
                // visitors' sockets and their bridges then share that
                // thread with the link's driver.
                let serve = inner.serve(stream).instrument(span);
                match home {
                    Some(thread) => drop(thread.spawn(serve)),
                    None => drop(tokio::spawn(serve)),
                }
            }
        });
        Ok(Server {
            inner,
            addr,
            listener,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters.
    pub async fn stats(&self) -> ServerStats {
        let sessions = self.inner.sessions.lock().await;
        ServerStats {
            clients: sessions.len(),
            streams: sessions.values().map(|s| s.mux.streams()).sum(),
        }
    }

    /// The logged-in clients, by name.
    pub async fn clients(&self) -> Vec<ClientInfo> {
        let sessions = self.inner.sessions.lock().await;
        let mut clients: Vec<_> = sessions.values().map(|s| s.info()).collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        clients
    }

    /// Clients, their links and services, and refused logins.
    pub async fn status(&self) -> ServerStatus {
        let link = self.listener.stats();
        let mut refused = self.inner.refused.lock().clone();
        *refused.entry(Refusal::BadToken).or_default() += link.bad_key;
        *refused.entry(Refusal::UnknownClient).or_default() += link.unknown_identity;
        *refused.entry(Refusal::Throttled).or_default() += link.throttled;
        *refused.entry(Refusal::Unconfirmed).or_default() += link.unconfirmed;
        let logins_refused = [
            Refusal::BadToken,
            Refusal::UnknownClient,
            Refusal::NameInUse,
            Refusal::Version,
            Refusal::Timeout,
            Refusal::Protocol,
            Refusal::TooManyLogins,
            Refusal::Throttled,
            Refusal::Unconfirmed,
        ]
        .into_iter()
        .map(|r| (r, refused.get(&r).copied().unwrap_or(0)))
        .collect();
        ServerStatus {
            listen: self.addr,
            clients: self.clients().await,
            logins_refused,
        }
    }

    /// Applies a new config while running: tokens and client entries (a
    /// logged-in client whose token changed or went away is told goodbye),
    /// port rules, service and UDP limits, the login timeout, and the
    /// multiplexer settings of new sessions. The listen and bind addresses,
    /// the static key and the stream settings stay as they were: changing
    /// them is an error that leaves the running config untouched.
    pub async fn reload(&self, config: ServerConfig) -> Result<Vec<String>, ReloadError> {
        let old = self.inner.config();
        if config.token.is_none() && config.clients.is_empty() {
            return Err(ReloadError::NoToken);
        }
        config
            .mux
            .validate()
            .and_then(|()| config.udp.validate())
            .map_err(ReloadError::Invalid)?;
        // What the listener and its admission were built with at bind (the
        // names are the config file's).
        let (new, was) = (&config.stream, &old.stream);
        let fixed = [
            ("listen", config.listen != old.listen),
            ("bind", config.bind != old.bind),
            (
                "key_file",
                config.static_key.as_ref().map(StaticKey::public)
                    != old.static_key.as_ref().map(StaticKey::public),
            ),
            ("keep", new.reconnect_wait != was.reconnect_wait),
            (
                "login_failures_per_minute",
                new.auth_failures_per_minute != was.auth_failures_per_minute,
            ),
            ("max_sessions", new.max_sessions != was.max_sessions),
            ("socket_buffer", new.socket_buffer != was.socket_buffer),
            ("threads", new.threads != was.threads),
            (
                "max_pending_logins_per_source",
                config.max_pending_logins_per_source != old.max_pending_logins_per_source,
            ),
        ];
        if let Some((what, _)) = fixed.iter().find(|(_, changed)| *changed) {
            return Err(ReloadError::Fixed(what));
        }
        // A token takes 100,000 PBKDF2 rounds to stretch: new ones are
        // stretched away from the runtime's threads, which serve every link.
        let keys = {
            let (current, config) = (self.inner.keys.read().clone(), config.clone());
            tokio::task::spawn_blocking(move || Keys::new(&config, &current))
                .await
                .map_err(|_| ReloadError::Stretch)?
        };
        // Keys first, then the sessions, under the lock a login takes to
        // join them: a login either sees the new keys or is seen here.
        *self.inner.keys.write() = keys;
        let mut revoked = Vec::new();
        {
            let sessions = self.inner.sessions.lock().await;
            let keys = self.inner.keys.read();
            for (name, session) in sessions.iter() {
                if keys.for_name(name).map(|(t, _)| t) != Some(&session.token) {
                    session
                        .mux
                        .goodbye("the server's token for this client changed");
                    revoked.push(name.clone());
                }
            }
        }
        *self.inner.config.write() = Arc::new(config);
        revoked.sort();
        Ok(revoked)
    }

    /// Says goodbye to every client and closes their ports; stops accepting.
    /// Returns once every goodbye has gone out and its link has closed, or
    /// after the stream's `close_timeout` at most, so a process may exit
    /// right after without its clients missing the goodbye.
    pub async fn shutdown(&self, reason: &str) {
        // No new links, nor resumes of the links being told goodbye.
        self.listener.close();
        self.accept.abort();
        let sessions: Vec<_> = self
            .inner
            .sessions
            .lock()
            .await
            .drain()
            .map(|(_, s)| s)
            .collect();
        for session in &sessions {
            session.mux.goodbye(reason);
            session.close_ports().await;
        }
        let deadline = tokio::time::Instant::now() + self.inner.config().stream.close_timeout;
        for session in &sessions {
            let _ = tokio::time::timeout_at(deadline, session.mux.stream_closed()).await;
        }
    }
}

/// The link's stream settings: the sealed suite, keyed by the tokens (a
/// client names itself in the handshake; its own token, else the shared
/// one), looked up at each handshake so a reload takes effect at once.
fn link_config(config: &ServerConfig, keys: &Arc<parking_lot::RwLock<Keys>>) -> stream::Config {
    let keys_now = keys.clone();
    let mut sealed = stream::Sealed::new(Psk::from_bytes([0; 32]));
    sealed.psk = None;
    sealed.lookup = Some(stream::PskLookup::new(move |id| {
        let name = std::str::from_utf8(id).ok()?;
        keys_now.read().for_name(name).map(|(_, k)| k.psk())
    }));
    sealed.static_key = config.static_key.clone();
    stream::Config {
        suite: stream::Suite::Sealed(sealed),
        ..config.stream.clone()
    }
}

impl Inner {
    fn config(&self) -> Arc<ServerConfig> {
        self.config.read().clone()
    }

    fn key_for(&self, name: &str) -> Option<(Token, LoginKey)> {
        self.keys.read().for_name(name).cloned()
    }

    async fn serve(self: Arc<Self>, stream: Stream) {
        let peer = stream.peer_addr();
        // Not parked if its link breaks before it has logged in: only
        // clients that proved their token hold a waiting session.
        stream.handle().set_resumable(false);
        let config = self.config();
        let Ok(pending) = self.pending_logins.take(Source::of(peer)) else {
            self.count_refusal(Refusal::TooManyLogins);
            debug!(
                peer = %crate::stream::shown(peer),
                "too many logins in progress from this address; link closed"
            );
            return;
        };
        let (mux, mut events) = Mux::start(stream, Side::Server, config.mux.clone());
        let login = timeout(config.login_timeout, self.login(&mux, &mut events));
        let (name, token, welcome) = match login.await {
            Ok(Ok(v)) => v,
            Ok(Err((why, reason))) => {
                self.count_refusal(why);
                warn!(peer = %crate::stream::shown(peer), %reason, "login refused");
                let _ = mux.send(Frame::Refuse {
                    reason: reason.clone(),
                });
                mux.goodbye(format!("login refused: {reason}"));
                return;
            }
            Err(_) => {
                self.count_refusal(Refusal::Timeout);
                warn!(peer = %crate::stream::shown(peer), "login timed out");
                mux.goodbye("login timed out");
                return;
            }
        };
        // The name is checked before WELCOME, so a refused client learns it
        // in place of a welcome and stops, instead of starting over.
        let Some(session) = self.take_name(&name, token, &mux, peer).await else {
            return;
        };
        drop(pending);
        mux.stream().set_resumable(true);
        let _ = mux.send(welcome);
        // (The link's thread, when it has one: `top -H` shows each thread's
        // CPU by this name.)
        let thread = session.thread.as_deref().unwrap_or("-");
        info!(client = %name, peer = %crate::stream::shown(peer), thread = %thread, "client session up");
        // Aborted however this ends (it holds the session, and so the link's
        // stream, whose events it waits for: it would never end by itself).
        let link_events = AbortOnDrop(log_link_events(&session));
        while let Some(event) = events.recv().await {
            match event {
                Event::Control(Frame::Publish {
                    index,
                    kind,
                    port,
                    name: service,
                }) => self.publish(&session, index, kind, port, &service).await,
                Event::Control(Frame::Unpublish { index }) => {
                    let gone = session.services.lock().remove(&index);
                    if let Some(mut p) = gone {
                        p.stop.cancel();
                        let wait = match p.kind {
                            ServiceKind::Udp => Duration::from_secs(1),
                            _ => Duration::ZERO,
                        };
                        if timeout(wait, &mut p.task).await.is_err() {
                            p.task.abort();
                            let _ = p.task.await;
                        }
                        info!(client = %name, service = %p.name, addr = %p.addr, "service unpublished");
                    }
                }
                Event::Control(other) => debug!(frame = ?other, "unexpected frame ignored"),
                // The server's mux refuses a client's OPEN and ASSOCIATE
                // itself (counted among the replies it owes); these arms
                // only keep the match whole.
                Event::Open { mut stream, .. } => stream.reset(),
                Event::Associate { id, .. } => mux.dissociate(id),
                Event::Dissociate { id } => {
                    session.udp_services.lock().retain(|s| s.send(id).is_ok());
                }
            }
        }
        let end = mux.ended().await;
        drop(link_events);
        let _ = session.close_ports().await;
        let mut sessions = self.sessions.lock().await;
        if sessions
            .get(&name)
            .is_some_and(|s| Arc::ptr_eq(s, &session))
        {
            sessions.remove(&name);
        }
        drop(sessions);
        match end {
            End::Goodbye(reason) => {
                info!(client = %name, %reason, "client session closed by the client")
            }
            other => info!(client = %name, reason = %other, "client session down"),
        }
    }

    fn count_refusal(&self, why: Refusal) {
        *self.refused.lock().entry(why).or_default() += 1;
    }

    /// Registers a logged-in client's session under its name. A live session
    /// of the same name (its link up and answering a ping) keeps the name and
    /// the newcomer is refused; one that is not live is replaced at once, and
    /// the new session gets its public ports back.
    async fn take_name(
        &self,
        name: &str,
        token: Token,
        mux: &Mux,
        peer: Option<SocketAddr>,
    ) -> Option<Arc<ClientSession>> {
        let refuse = |why: Refusal, reason: String| {
            self.count_refusal(why);
            warn!(client = %name, peer = %crate::stream::shown(peer), %reason, "login refused");
            let _ = mux.send(Frame::Refuse {
                reason: reason.clone(),
            });
            mux.goodbye(format!("login refused: {reason}"));
        };
        if !self.naming.lock().insert(name.to_string()) {
            refuse(
                Refusal::NameInUse,
                format!("the name {name:?} is in use: another login with it is in progress"),
            );
            return None;
        }
        let _naming = Naming {
            inner: self,
            name: name.to_string(),
        };
        let holder = self.sessions.lock().await.get(name).cloned();
        if let Some(old) = &holder {
            let probe = self
                .config()
                .mux
                .ping_interval
                .clamp(Duration::from_millis(500), Duration::from_secs(3));
            if old.mux.answers_ping(probe).await {
                let at = old
                    .mux
                    .stream()
                    .peer_addr()
                    .map_or_else(|| "an unknown address".to_string(), |a| a.to_string());
                refuse(
                    Refusal::NameInUse,
                    format!(
                        "the name {name:?} is in use by a live client at {at}: give each client its own --name"
                    ),
                );
                return None;
            }
        }
        let session = Arc::new(ClientSession {
            name: name.to_string(),
            token: token.clone(),
            mux: mux.clone(),
            since: SystemTime::now(),
            last_resume: Mutex::new(None),
            services: Mutex::new(HashMap::new()),
            sticky: Mutex::new(HashMap::new()),
            udp_services: Mutex::new(Vec::new()),
            // (`serve`, and so this, runs on the link's thread.)
            thread: mux
                .stream()
                .home()
                .and_then(|_| std::thread::current().name().map(String::from)),
        });
        let old = {
            let mut sessions = self.sessions.lock().await;
            // A reload may have changed the token since the proof: checked
            // under the lock a reload takes after installing new keys.
            let current = self.keys.read().for_name(name).map(|(t, _)| t.clone());
            if current.as_ref() != Some(&token) {
                drop(sessions);
                refuse(Refusal::BadToken, BAD_TOKEN.into());
                return None;
            }
            sessions.insert(name.to_string(), session.clone())
        };
        if let Some(old) = old {
            info!(client = %name, "new session replaces the old one (its link was down or silent)");
            // Its ports are noted before the goodbye: the goodbye ends its
            // own task, which closes (and forgets) them too.
            let mut ports: HashMap<_, _> = old.sticky.lock().drain().collect();
            ports.extend(
                old.services
                    .lock()
                    .values()
                    .map(|p| ((p.name.clone(), p.kind), p.addr.port())),
            );
            *session.sticky.lock() = ports;
            old.mux
                .goodbye("replaced by a new session of the same client");
            let _ = old.close_ports().await;
        }
        Some(session)
    }

    /// The server's half of the login (`PROTOCOL.md` §3.3) up to WELCOME:
    /// the client's name and the WELCOME to send once the name is taken, or
    /// why it is refused.
    async fn login(
        &self,
        mux: &Mux,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<(String, Token, Frame), (Refusal, String)> {
        let Some(Event::Control(Frame::Hello {
            version,
            name,
            nonce: client_nonce,
        })) = events.recv().await
        else {
            return Err((Refusal::Protocol, "expected a hello".into()));
        };
        if version != VERSION {
            return Err((
                Refusal::Version,
                format!(
                    "tunnel protocol version {version} is not supported (this server speaks {VERSION})"
                ),
            ));
        }
        let (token, key) = self
            .key_for(&name)
            .ok_or_else(|| (Refusal::UnknownClient, BAD_TOKEN.into()))?;
        let server_nonce: [u8; 32] = rand::random();
        let _ = mux.send(Frame::Challenge {
            nonce: server_nonce,
        });
        let Some(Event::Control(Frame::Login { proof })) = events.recv().await else {
            return Err((Refusal::Protocol, "expected a login".into()));
        };
        let binding = mux.stream().binding();
        let transcript = Transcript {
            binding: &binding,
            server_nonce: &server_nonce,
            client_nonce: &client_nonce,
            name: &name,
        };
        if !proofs_equal(&key.client_proof(&transcript), &proof) {
            return Err((Refusal::BadToken, BAD_TOKEN.into()));
        }
        let welcome = Frame::Welcome {
            proof: key.server_proof(&transcript),
        };
        Ok((name, token, welcome))
    }

    async fn publish(
        &self,
        session: &Arc<ClientSession>,
        index: u16,
        kind: ServiceKind,
        port: u16,
        service: &str,
    ) {
        let config = self.config();
        let refuse = |BindError { retry, reason }: BindError| {
            warn!(client = %session.name, service, %reason, "service refused");
            let _ = session.mux.send(Frame::PublishFailed {
                index,
                retry,
                reason,
            });
        };
        if session.services.lock().contains_key(&index) {
            return refuse(BindError::never(format!(
                "service number {index} is already published"
            )));
        }
        if session.services.lock().len() >= config.max_services {
            return refuse(BindError::never(format!(
                "at most {} services per client",
                config.max_services
            )));
        }
        if port != 0 && !config.port_allowed(port) {
            return refuse(BindError::never(format!(
                "port {port} is not in the server's allowed ports"
            )));
        }
        // The port this service had in the session this one replaced.
        let sticky = match port {
            0 => session
                .sticky
                .lock()
                .get(&(service.to_string(), kind))
                .copied()
                .filter(|&p| config.port_allowed(p)),
            _ => None,
        };
        let traffic = Arc::new(Traffic::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let (addr, task) = match kind {
            ServiceKind::Tcp => {
                let bound = match sticky {
                    Some(p) => match self.bind_sticky(p).await {
                        Some(l) => Ok(l),
                        None => self.bind_tcp(0).await,
                    },
                    None => self.bind_tcp(port).await,
                };
                let listener = match bound {
                    Ok(l) => l,
                    Err(reason) => return refuse(reason),
                };
                let addr = match listener.local_addr() {
                    Ok(a) => a,
                    Err(e) => return refuse(BindError::new(e, "the bound", 0)),
                };
                let limits = SourceLimits::new(config.max_visitors, config.max_visitors_per_source);
                let task = tokio::spawn(accept_visitors(
                    listener,
                    session.mux.clone(),
                    index,
                    traffic.clone(),
                    limits,
                ));
                (addr, task)
            }
            ServiceKind::Udp => {
                let candidates = if port == 0 && !config.ports.is_empty() {
                    candidates(&config.ports)
                } else {
                    Vec::new()
                };
                let bound = match sticky {
                    Some(p) => {
                        // As for TCP: the old socket may still be closing.
                        let mut got = None;
                        for _ in 0..10 {
                            match udp::bind(self.bind_ip, p, &[]).await {
                                Ok(s) => {
                                    got = Some(s);
                                    break;
                                }
                                Err(e) if e.retry => {
                                    tokio::time::sleep(Duration::from_millis(50)).await
                                }
                                Err(_) => break,
                            }
                        }
                        match got {
                            Some(s) => Ok(s),
                            None => udp::bind(self.bind_ip, port, &candidates).await,
                        }
                    }
                    None => udp::bind(self.bind_ip, port, &candidates).await,
                };
                let socket = match bound {
                    Ok(s) => s,
                    Err(reason) => return refuse(reason),
                };
                let addr = match socket.local_addr() {
                    Ok(a) => a,
                    Err(e) => return refuse(BindError::new(e, "the bound", 0)),
                };
                let (service, dissociations) = UdpService::new(
                    socket,
                    index,
                    session.mux.clone(),
                    config.udp.clone(),
                    traffic.clone(),
                );
                let mut services = session.udp_services.lock();
                // Services unpublished since have dropped their receivers.
                services.retain(|s| !s.is_closed());
                services.push(dissociations);
                drop(services);
                (addr, tokio::spawn(service.run(stop.clone())))
            }
        };
        session.services.lock().insert(
            index,
            Published {
                name: service.to_string(),
                kind,
                addr,
                task,
                stop,
                traffic,
            },
        );
        info!(client = %session.name, service, kind = kind.name(), %addr, "service published");
        let _ = session.mux.send(Frame::Published { index, addr });
    }

    /// Binds the port a replaced session had. Its listener may still be
    /// closing (the old session's task closes it too), so a taken port is
    /// tried again for up to half a second.
    async fn bind_sticky(&self, port: u16) -> Option<TcpListener> {
        for _ in 0..10 {
            match self.bind_tcp(port).await {
                Ok(l) => return Some(l),
                Err(e) if e.retry => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(_) => return None,
            }
        }
        None
    }

    /// Binds a public TCP port: the one asked for, or a free allowed one.
    async fn bind_tcp(&self, port: u16) -> Result<TcpListener, BindError> {
        let config = self.config();
        let try_bind =
            |port: u16| bind_visitors(&config.stream, SocketAddr::new(self.bind_ip, port));
        if port != 0 || config.ports.is_empty() {
            return try_bind(port).map_err(|e| BindError::new(e, "TCP", port));
        }
        for (i, candidate) in candidates(&config.ports).into_iter().enumerate() {
            if let Ok(l) = try_bind(candidate) {
                return Ok(l);
            }
            yield_between_binds(i).await;
        }
        Err(BindError::no_free_port())
    }
}

/// Why a service could not be published, and whether asking again later may
/// succeed.
#[derive(Debug)]
pub(crate) struct BindError {
    pub(crate) retry: bool,
    pub(crate) reason: String,
}

impl BindError {
    /// A refusal that asking again cannot change.
    fn never(reason: String) -> Self {
        BindError {
            retry: false,
            reason,
        }
    }

    /// A failed bind of `what` port `port` (0: any): a taken port may be
    /// free later; a port this process may not bind will not be.
    pub(crate) fn new(e: io::Error, what: &str, port: u16) -> Self {
        // Taken, or the server short of resources (file descriptors,
        // buffers) or of its bind address for now: all may pass. Refused
        // permission does not.
        const EMFILE: i32 = 24;
        const ENFILE: i32 = 23;
        const ENOBUFS: i32 = 105;
        let taken = e.kind() == io::ErrorKind::AddrInUse;
        let retry = taken
            || e.kind() == io::ErrorKind::AddrNotAvailable
            || matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS));
        let reason = match (taken, port) {
            (true, _) => format!("port {port} is taken"),
            (false, 0) => format!("cannot bind a {what} port: {e}"),
            (false, _) => format!("cannot bind {what} port {port}: {e}"),
        };
        BindError { retry, reason }
    }

    pub(crate) fn no_free_port() -> Self {
        BindError {
            retry: true,
            reason: "no free port in the allowed ranges".into(),
        }
    }
}

/// Lets the other tasks of a link's thread run between failed binds of a
/// search for a free port (up to 4,096 binds, tens of milliseconds when the
/// ranges are full), so that the links sharing it are not held up.
pub(crate) async fn yield_between_binds(tried: usize) {
    if tried % 32 == 31 {
        tokio::task::yield_now().await;
    }
}

/// Allowed ports in a random order (at most 4,096 of them).
pub(crate) fn candidates(ranges: &[RangeInclusive<u16>]) -> Vec<u16> {
    use rand::seq::SliceRandom;
    let mut all: Vec<u16> = ranges
        .iter()
        .flat_map(|r| r.clone())
        .filter(|&p| p != 0)
        .take(1 << 16)
        .collect();
    all.shuffle(&mut rand::rng());
    all.truncate(4096);
    all
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Logs what happens to a client's link, and notes when it resumes.
fn log_link_events(session: &Arc<ClientSession>) -> JoinHandle<()> {
    let mut events = session.mux.stream().events();
    let session = session.clone();
    tokio::spawn(async move {
        let name = &session.name;
        while let Ok(event) = events.recv().await {
            match event {
                stream::Event::Disconnected { reason } => {
                    info!(client = %name, %reason, "link down; keeping the session")
                }
                stream::Event::Resumed { peer, resent } => {
                    *session.last_resume.lock() = Some(SystemTime::now());
                    info!(client = %name, peer = %crate::stream::shown(peer), resent, "link resumed")
                }
                _ => {}
            }
        }
    })
}

/// Things counted in all and per source address (a TCP service's
/// visitors; logins in progress).
struct SourceLimits {
    max: usize,
    per_source: usize,
    counts: Mutex<(usize, HashMap<Source, usize>)>,
}

/// One counted place, given back when dropped.
struct SourceSlot {
    limits: Arc<SourceLimits>,
    source: Source,
}

impl SourceLimits {
    fn new(max: usize, per_source: usize) -> Arc<Self> {
        Arc::new(SourceLimits {
            max,
            per_source,
            counts: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for `source`, or `Err(true)` if the total is at its limit,
    /// `Err(false)` if the source is.
    fn take(self: &Arc<Self>, source: Source) -> Result<SourceSlot, bool> {
        let mut counts = self.counts.lock();
        if counts.0 >= self.max {
            return Err(true);
        }
        let own = counts.1.entry(source).or_default();
        if *own >= self.per_source {
            return Err(false);
        }
        *own += 1;
        counts.0 += 1;
        Ok(SourceSlot {
            limits: self.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock();
        counts.0 -= 1;
        if let Some(n) = counts.1.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.1.remove(&self.source);
            }
        }
    }
}

async fn accept_visitors(
    listener: TcpListener,
    mux: Mux,
    index: u16,
    traffic: Arc<Traffic>,
    limits: Arc<SourceLimits>,
) {
    let at = listener.local_addr().ok();
    loop {
        let (sock, visitor) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, ?at, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match limits.take(Source::of(Some(visitor))) {
            Ok(slot) => slot,
            Err(total) => {
                let limit = if total {
                    "max_visitors"
                } else {
                    "max_visitors_per_source"
                };
                debug!(%visitor, limit, "visitor refused at its limit");
                traffic.visitor_refused();
                let _ = sock.set_zero_linger();
                continue;
            }
        };
        match mux.open(index, visitor) {
            Ok(stream) => {
                let meter = Meter::new(&traffic, true);
                tokio::spawn(async move {
                    bridge(sock, stream, meter).await;
                    drop(slot);
                });
            }
            Err(why) => {
                debug!(%visitor, %why, "visitor dropped");
                traffic.visitor_refused();
                let _ = sock.set_zero_linger();
            }
        }
    }
}

/// Binds a listener for visitors. Their sockets take the link's sizes, and
/// the bridge bounds what the kernel holds unsent for them. Left to the
/// kernel, their receive side is pinned all the same
/// ([`super::VISITOR_RECV_BUFFER`]): a visitor whose stream stalls would
/// otherwise fill a receive queue the kernel grew while the bridge read
/// fast (up to `tcp_rmem`'s maximum), counted by no budget. Accepted
/// sockets inherit the listener's sizes.
fn bind_visitors(link: &stream::Config, addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = SocketOptions::from_config(link).bind(addr)?;
    if link.socket_buffer.is_none() {
        socket2::SockRef::from(&listener).set_recv_buffer_size(super::VISITOR_RECV_BUFFER)?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (receive, send) buffer sizes of a visitor's socket as the server
    /// accepts it from a listener bound for `link` (`None`: with no options).
    async fn accepted_sizes(link: Option<&stream::Config>) -> (usize, usize) {
        let any = "127.0.0.1:0".parse().unwrap();
        let listener = match link {
            Some(link) => bind_visitors(link, any).unwrap(),
            None => TcpListener::bind(any).await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let (_visitor, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (sock, _) = accepted.unwrap();
        let sock = socket2::SockRef::from(&sock);
        (
            sock.recv_buffer_size().unwrap(),
            sock.send_buffer_size().unwrap(),
        )
    }

    #[tokio::test]
    async fn visitors_receive_into_a_pinned_buffer_whatever_the_link() {
        // What the kernel makes of a request, and a fresh socket's sizes.
        let asked = tokio::net::TcpSocket::new_v4().unwrap();
        asked
            .set_recv_buffer_size(super::super::VISITOR_RECV_BUFFER as u32)
            .unwrap();
        let pinned = asked.recv_buffer_size().unwrap() as usize;
        let (_, plain) = accepted_sizes(None).await;
        assert_ne!(plain, pinned);

        let mut link = super::super::link_stream_config();
        link.socket_buffer = None;
        let (receive, send) = accepted_sizes(Some(&link)).await;
        assert_eq!(receive, pinned, "the receive side is pinned");
        assert_eq!(send, plain, "the send side is the kernel's");

        link.socket_buffer = Some(64 << 10);
        let asked = tokio::net::TcpSocket::new_v4().unwrap();
        asked.set_recv_buffer_size(64 << 10).unwrap();
        asked.set_send_buffer_size(64 << 10).unwrap();
        let both = (
            asked.recv_buffer_size().unwrap() as usize,
            asked.send_buffer_size().unwrap() as usize,
        );
        assert_eq!(
            accepted_sizes(Some(&link)).await,
            both,
            "a set size pins both"
        );
    }
}
