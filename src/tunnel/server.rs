//! The tunnel server: logs clients in, publishes their services on public
//! ports, and sends each visitor through the client's link.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tracing::{Instrument, debug, info, info_span, warn};

use super::auth::{LoginKey, Token, Transcript, proofs_equal};
use super::bridge::bridge;
use super::frame::{Frame, ServiceKind, VERSION};
use super::mux::{End, Event, Mux, MuxConfig, Side, UdpStats};
use super::udp::{self, UdpConfig, UdpService};
use crate::proto::sealed::{Psk, StaticKey};
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
    /// Deadline for a client's login. Default 10 s.
    pub login_timeout: Duration,
    /// The server's static key: clients that pin its public half
    /// (`--server-key`) know they reach this server, even if the token leaked.
    pub static_key: Option<StaticKey>,
    /// The link's stream settings; `reconnect_wait` is how long a
    /// disconnected client's session, ports and visitors are kept. The
    /// suite is always the sealed one, keyed by the tokens: whatever
    /// `stream.suite` says is replaced.
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
            login_timeout: Duration::from_secs(10),
            static_key: None,
            stream: stream::Config::default(),
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

/// A published service's public listener.
struct Published {
    task: JoinHandle<()>,
}

/// A logged-in client.
struct ClientSession {
    name: String,
    mux: Mux,
    services: Mutex<HashMap<u16, Published>>,
    /// Where to report associations the client ended, per UDP service.
    udp_services: Mutex<Vec<mpsc::UnboundedSender<u32>>>,
}

impl ClientSession {
    /// Closes its public ports, and waits until they are closed, so a new
    /// session can bind them again at once.
    async fn close_ports(&self) {
        let tasks: Vec<_> = self.services.lock().drain().map(|(_, p)| p.task).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

struct Inner {
    config: ServerConfig,
    bind_ip: IpAddr,
    shared_key: Option<LoginKey>,
    client_keys: HashMap<String, LoginKey>,
    sessions: tokio::sync::Mutex<HashMap<String, Arc<ClientSession>>>,
}

/// A running tunnel server.
pub struct Server {
    inner: Arc<Inner>,
    addr: SocketAddr,
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
    /// Its link's counters.
    pub link: stream::Stats,
    /// Its UDP counters.
    pub udp: UdpStats,
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
        // Stretch the tokens once, now, so a login costs nothing.
        let shared_key = config.token.as_ref().map(Token::key);
        let client_keys: HashMap<String, LoginKey> = config
            .clients
            .iter()
            .map(|(name, token)| (name.clone(), token.key()))
            .collect();
        let listener = Listener::bind(
            config.listen,
            link_config(&config, &shared_key, &client_keys),
        )
        .await?;
        let addr = listener
            .local_addr()
            .ok_or_else(|| io::Error::other("listener without an address"))?;
        let inner = Arc::new(Inner {
            bind_ip: config.bind.unwrap_or(config.listen.ip()),
            config,
            shared_key,
            client_keys,
            sessions: tokio::sync::Mutex::new(HashMap::new()),
        });
        let serving = inner.clone();
        let accept = tokio::spawn(async move {
            while let Ok(stream) = listener.accept().await {
                let inner = serving.clone();
                let span = info_span!("client", link = %format_args!("{:016x}", stream.id()));
                tokio::spawn(inner.serve(stream).instrument(span));
            }
        });
        Ok(Server {
            inner,
            addr,
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

    /// The logged-in clients.
    pub async fn clients(&self) -> Vec<ClientInfo> {
        let sessions = self.inner.sessions.lock().await;
        sessions
            .values()
            .map(|s| ClientInfo {
                name: s.name.clone(),
                peer: s.mux.stream().peer_addr(),
                streams: s.mux.streams(),
                link: s.mux.stream().stats(),
                udp: s.mux.udp_stats(),
            })
            .collect()
    }

    /// Says goodbye to every client and closes their ports; stops accepting.
    /// Returns once every goodbye has gone out and its link has closed, or
    /// after the stream's `close_timeout` at most, so a process may exit
    /// right after without its clients missing the goodbye.
    pub async fn shutdown(&self, reason: &str) {
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
        let deadline = tokio::time::Instant::now() + self.inner.config.stream.close_timeout;
        for session in &sessions {
            let _ = tokio::time::timeout_at(deadline, session.mux.stream_closed()).await;
        }
    }
}

/// The link's stream settings: the sealed suite, keyed by the tokens (a
/// client names itself in the handshake; its own token, else the shared one).
fn link_config(
    config: &ServerConfig,
    shared: &Option<LoginKey>,
    clients: &HashMap<String, LoginKey>,
) -> stream::Config {
    let psks: HashMap<Vec<u8>, Psk> = clients
        .iter()
        .map(|(name, key)| (name.as_bytes().to_vec(), key.psk()))
        .collect();
    let mut keys = stream::Sealed::new(Psk::from_bytes([0; 32]));
    keys.psk = shared.as_ref().map(LoginKey::psk);
    keys.lookup = Some(stream::PskLookup::new(move |id| psks.get(id).cloned()));
    keys.static_key = config.static_key.clone();
    stream::Config {
        suite: stream::Suite::Sealed(keys),
        ..config.stream.clone()
    }
}

impl Inner {
    fn key_for(&self, name: &str) -> Option<&LoginKey> {
        self.client_keys.get(name).or(self.shared_key.as_ref())
    }

    async fn serve(self: Arc<Self>, stream: Stream) {
        let peer = stream.peer_addr();
        let (mux, mut events) = Mux::start(stream, Side::Server, self.config.mux.clone());
        let name = match timeout(self.config.login_timeout, self.login(&mux, &mut events)).await {
            Ok(Ok(name)) => name,
            Ok(Err(reason)) => {
                warn!(?peer, %reason, "login refused");
                mux.send(Frame::Refuse {
                    reason: reason.clone(),
                });
                mux.goodbye(format!("login refused: {reason}"));
                return;
            }
            Err(_) => {
                warn!(?peer, "login timed out");
                mux.goodbye("login timed out");
                return;
            }
        };
        let session = Arc::new(ClientSession {
            name: name.clone(),
            mux: mux.clone(),
            services: Mutex::new(HashMap::new()),
            udp_services: Mutex::new(Vec::new()),
        });
        let old = self
            .sessions
            .lock()
            .await
            .insert(name.clone(), session.clone());
        if let Some(old) = old {
            info!(client = %name, "new session replaces the old one");
            old.mux
                .goodbye("replaced by a new session of the same client");
            old.close_ports().await;
        }
        info!(client = %name, ?peer, "client session up");
        let link_events = log_link_events(&mux, &name);
        while let Some(event) = events.recv().await {
            match event {
                Event::Control(Frame::Publish {
                    index,
                    kind,
                    port,
                    name: service,
                }) => self.publish(&session, index, kind, port, &service).await,
                Event::Control(other) => debug!(frame = ?other, "unexpected frame ignored"),
                Event::Open { mut stream, .. } => {
                    debug!("clients do not open streams; reset");
                    stream.reset();
                }
                Event::Associate { id, .. } => {
                    debug!("clients do not start associations; ended");
                    mux.dissociate(id);
                }
                Event::Dissociate { id } => {
                    for service in session.udp_services.lock().iter() {
                        let _ = service.send(id);
                    }
                }
            }
        }
        let end = mux.ended().await;
        link_events.abort();
        session.close_ports().await;
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

    /// The server's half of the login (`PROTOCOL.md` §3.3); the client's name,
    /// or why it is refused.
    async fn login(&self, mux: &Mux, events: &mut mpsc::Receiver<Event>) -> Result<String, String> {
        let Some(Event::Control(Frame::Hello {
            version,
            name,
            nonce: client_nonce,
        })) = events.recv().await
        else {
            return Err("expected a hello".into());
        };
        if version != VERSION {
            return Err(format!(
                "tunnel protocol version {version} is not supported (this server speaks {VERSION})"
            ));
        }
        let key = self
            .key_for(&name)
            .ok_or_else(|| format!("unknown client {name:?}"))?;
        let server_nonce: [u8; 32] = rand::random();
        mux.send(Frame::Challenge {
            nonce: server_nonce,
        });
        let Some(Event::Control(Frame::Login { proof })) = events.recv().await else {
            return Err("expected a login".into());
        };
        let binding = mux.stream().binding();
        let transcript = Transcript {
            binding: &binding,
            server_nonce: &server_nonce,
            client_nonce: &client_nonce,
            name: &name,
        };
        if !proofs_equal(&key.client_proof(&transcript), &proof) {
            return Err("bad token".into());
        }
        mux.send(Frame::Welcome {
            proof: key.server_proof(&transcript),
        });
        Ok(name)
    }

    async fn publish(
        &self,
        session: &Arc<ClientSession>,
        index: u16,
        kind: ServiceKind,
        port: u16,
        service: &str,
    ) {
        let refuse = |reason: String| {
            warn!(client = %session.name, service, %reason, "service refused");
            session.mux.send(Frame::PublishFailed { index, reason });
        };
        if session.services.lock().contains_key(&index) {
            return refuse(format!("service number {index} is already published"));
        }
        if session.services.lock().len() >= self.config.max_services {
            return refuse(format!(
                "at most {} services per client",
                self.config.max_services
            ));
        }
        if port != 0 && !self.config.port_allowed(port) {
            return refuse(format!("port {port} is not in the server's allowed ports"));
        }
        let (addr, task) = match kind {
            ServiceKind::Tcp => {
                let listener = match self.bind_tcp(port).await {
                    Ok(l) => l,
                    Err(reason) => return refuse(reason),
                };
                let addr = match listener.local_addr() {
                    Ok(a) => a,
                    Err(e) => return refuse(format!("bound port has no address: {e}")),
                };
                let task = tokio::spawn(accept_visitors(listener, session.mux.clone(), index));
                (addr, task)
            }
            ServiceKind::Udp => {
                let candidates = if port == 0 && !self.config.ports.is_empty() {
                    candidates(&self.config.ports)
                } else {
                    Vec::new()
                };
                let socket = match udp::bind(self.bind_ip, port, &candidates).await {
                    Ok(s) => s,
                    Err(reason) => return refuse(reason),
                };
                let addr = match socket.local_addr() {
                    Ok(a) => a,
                    Err(e) => return refuse(format!("bound port has no address: {e}")),
                };
                let (service, dissociations) =
                    UdpService::new(socket, index, session.mux.clone(), self.config.udp.clone());
                session.udp_services.lock().push(dissociations);
                (addr, tokio::spawn(service.run()))
            }
        };
        session.services.lock().insert(index, Published { task });
        info!(client = %session.name, service, kind = kind.name(), %addr, "service published");
        session.mux.send(Frame::Published { index, addr });
    }

    /// Binds a public TCP port: the one asked for, or a free allowed one.
    async fn bind_tcp(&self, port: u16) -> Result<TcpListener, String> {
        let options = SocketOptions::from_config(&self.config.stream);
        let try_bind = |port: u16| options.bind(SocketAddr::new(self.bind_ip, port));
        if port != 0 {
            return try_bind(port).map_err(|e| match e.kind() {
                io::ErrorKind::AddrInUse => format!("port {port} is taken"),
                _ => format!("cannot bind port {port}: {e}"),
            });
        }
        if self.config.ports.is_empty() {
            return try_bind(0).map_err(|e| format!("cannot bind a port: {e}"));
        }
        for candidate in candidates(&self.config.ports) {
            if let Ok(l) = try_bind(candidate) {
                return Ok(l);
            }
        }
        Err("no free port in the allowed ranges".into())
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

/// Logs what happens to a client's link.
fn log_link_events(mux: &Mux, name: &str) -> JoinHandle<()> {
    let mut events = mux.stream().events();
    let name = name.to_string();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                stream::Event::Disconnected { reason } => {
                    info!(client = %name, %reason, "link down; keeping the session")
                }
                stream::Event::Resumed { peer, resent } => {
                    info!(client = %name, ?peer, resent, "link resumed")
                }
                _ => {}
            }
        }
    })
}

async fn accept_visitors(listener: TcpListener, mux: Mux, index: u16) {
    loop {
        let (sock, visitor) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        match mux.open(index, visitor) {
            Ok(stream) => {
                tokio::spawn(bridge(sock, stream));
            }
            Err(why) => {
                debug!(%visitor, why, "visitor dropped");
                let _ = sock.set_zero_linger();
            }
        }
    }
}
