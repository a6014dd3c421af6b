//! The tunnel client: logs in, publishes local services, and connects every
//! visitor the server sends to the local service it asked for.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::auth::{Token, Transcript, proofs_equal};
use super::bridge::bridge;
use super::frame::{Frame, ServiceKind, VERSION};
use super::mux::{End, Event, Mux, MuxConfig, MuxStream, Side, UdpStats};
use super::traffic::{Meter, ServiceStats, Traffic};
use super::udp::client_association;
use crate::stream::{self, Dialer, Redial, TcpDialer};

/// A local service to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Its name, for logs (at most 64 bytes).
    pub name: String,
    /// TCP or UDP.
    pub kind: ServiceKind,
    /// The local address, `host:port`.
    pub local: String,
    /// The public port to ask for; 0 lets the server choose.
    pub port: u16,
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server, `host:port`.
    pub server: String,
    /// The token.
    pub token: Token,
    /// This client's name: a new session with the same name replaces the old.
    pub name: String,
    /// What to publish.
    pub services: Vec<ServiceConfig>,
    /// Deadline for connecting to a local service. Default 10 s.
    pub connect_timeout: Duration,
    /// How to retry when the server cannot be reached or a session ends
    /// (the link's own reconnects are the stream's business). The first
    /// login is retried like any later one.
    pub retry: Redial,
    /// Give up after this many failed attempts in a row to reach the
    /// server; `None` (the default) retries forever.
    pub give_up_after: Option<u32>,
    /// The server's static public key (`rejoin server --show-key`): with it
    /// the client knows it reaches that server, even if the token leaked.
    pub server_key: Option<[u8; 32]>,
    /// The link's stream settings. The suite is always the sealed one, keyed
    /// by the token: whatever `stream.suite` says is replaced.
    /// Check it with [`super::validate_link_stream`]: its socket buffers
    /// may be the kernel's, which `Config::validate` refuses for the
    /// compatible suite it names until then.
    pub stream: stream::Config,
    /// The multiplexer's settings.
    pub mux: MuxConfig,
}

impl ClientConfig {
    /// A client of `server` with `token`, with defaults for the rest. The
    /// link is always the stream's sealed suite keyed by the token (which
    /// brings the record layer: a session's end is a clean close rather than
    /// a lost link).
    pub fn new(server: impl Into<String>, token: Token, name: impl Into<String>) -> Self {
        let stream = super::link_stream_config();
        ClientConfig {
            server: server.into(),
            token,
            name: name.into(),
            services: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            retry: Redial {
                give_up: None,
                ..Redial::default()
            },
            give_up_after: None,
            server_key: None,
            stream,
            mux: MuxConfig::default(),
        }
    }
}

/// What a client reports as it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A session is up (logged in).
    SessionUp,
    /// A service is live.
    Published {
        /// Its name.
        name: String,
        /// TCP or UDP.
        kind: ServiceKind,
        /// Its local address.
        local: String,
        /// Where visitors reach it, `host:port`.
        public: String,
    },
    /// The server would not publish a service.
    PublishFailed {
        /// Its name.
        name: String,
        /// TCP or UDP.
        kind: ServiceKind,
        /// Its local address.
        local: String,
        /// The server's reason.
        reason: String,
        /// Whether the client asks again later (the port was taken).
        retrying: bool,
    },
    /// A service was removed (by [`ClientHandle::set_services`]) and its
    /// port closed.
    Unpublished {
        /// Its name.
        name: String,
    },
    /// The session ended; the client starts a new one (unless stopping).
    SessionDown {
        /// Why.
        reason: String,
    },
}

/// How a service stands with the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServiceState {
    /// Asked for, no answer yet (or no session).
    Pending,
    /// Live at this address.
    Published {
        /// Where visitors reach it, `host:port`.
        public: String,
    },
    /// Refused by the server.
    Failed {
        /// The server's reason.
        reason: String,
        /// Whether the client asks again later.
        retrying: bool,
    },
}

/// One service, as [`ClientHandle::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// What was asked for.
    pub config: ServiceConfig,
    /// How it stands.
    pub state: ServiceState,
    /// Its counters.
    pub stats: ServiceStats,
}

/// Everything [`ClientHandle::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStatus {
    /// This client's name.
    pub name: String,
    /// The server, as configured.
    pub server: String,
    /// The server's address on the current link, if there is a session.
    pub server_addr: Option<SocketAddr>,
    /// The current link's counters, if there is a session.
    pub link: Option<stream::Stats>,
    /// When the current session logged in.
    pub since: Option<SystemTime>,
    /// When the current link last resumed, if it has.
    pub last_resume: Option<SystemTime>,
    /// The services, in the order they were configured.
    pub services: Vec<ServiceStatus>,
}

/// What a failed link handshake means for the client, if retrying cannot
/// help: the server rejected the token or the name, or is not the server
/// (it could not prove the token, or the pinned key).
fn refused(e: &std::io::Error, pinned: bool) -> Option<ClientError> {
    use crate::proto::Error as P;
    use crate::proto::sealed::exchange::{REJECT_BAD_KEY, REJECT_NO_STATIC_KEY, REJECT_UNKNOWN_ID};
    let stream::Error::Handshake(cause) = stream::Error::from_io(e)? else {
        return None;
    };
    Some(match cause {
        // With a pinned key the server cannot tell a wrong token from a
        // key that is not its own: both make the hello unreadable.
        P::KeyRejected(REJECT_BAD_KEY) if pinned => ClientError::Refused(format!(
            "{}; or the pinned server key is not this server's",
            super::auth::BAD_TOKEN
        )),
        // (Code 1, an unknown identity, is only sent by older servers.)
        P::KeyRejected(REJECT_BAD_KEY | REJECT_UNKNOWN_ID) => {
            ClientError::Refused(super::auth::BAD_TOKEN.into())
        }
        P::KeyRejected(REJECT_NO_STATIC_KEY) => {
            ClientError::Refused("the server has no static key, but --server-key pins one".into())
        }
        // Pinned, an answer comes only from whoever read the hello, which
        // takes the pinned key; it mixes in the token and did not open: most
        // likely the token (or the name that picks it) is not the server's.
        // (Or someone on the path answered in its place.)
        P::Unauthenticated if pinned => ClientError::Refused(format!(
            "{}; or the answer did not come from the pinned server",
            super::auth::BAD_TOKEN
        )),
        P::Unauthenticated => ClientError::ServerUnproven,
        _ => return None,
    })
}

/// Whether `server` reads as `host:port` (an IPv6 host in brackets).
fn host_and_port(server: &str) -> bool {
    server.rsplit_once(':').is_some_and(|(host, port)| {
        let bare = !host.contains(':') || (host.starts_with('[') && host.ends_with(']'));
        !host.is_empty() && bare && port.parse::<u16>().is_ok()
    })
}

/// Why a login did not complete.
enum LoginFailed {
    /// The server refused it (or could not prove itself): retrying cannot help.
    Refused(ClientError),
    /// The link ended first.
    Lost(String),
}

/// Why a client stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the login.
    #[error("login refused by the server: {0}")]
    Refused(String),
    /// The server failed to prove it holds the token (or the pinned key).
    #[error(
        "the server could not prove it knows the token (or the pinned server key): not the right server, or a different token"
    )]
    ServerUnproven,
    /// The server could not be reached `give_up_after` times in a row.
    #[error("cannot reach the server at {server} after {attempts} attempts")]
    Connect {
        /// The server, as configured.
        server: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        #[source]
        error: io::Error,
    },
    /// The server refused every service, for reasons that asking again
    /// cannot change (ports it does not allow, too many services).
    #[error("the server refused every service: {}", .0.join("; "))]
    AllRefused(Vec<String>),
    /// The settings cannot work.
    #[error("{}", .0.0)]
    Config(crate::stream::ConfigError),
}

enum SessionEnd {
    /// We said goodbye.
    Stopped,
    /// Worth another session.
    Lost(String),
}

/// A service as the client runs it: its settings, state and counters.
struct Service {
    config: ServiceConfig,
    traffic: Arc<Traffic>,
    state: Mutex<ServiceState>,
    /// Cancelled when the service is removed: its visitors are closed.
    removed: CancellationToken,
    /// When the last "local service unreachable" warning went out, and how
    /// many were held back since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl Service {
    fn new(config: ServiceConfig) -> Arc<Service> {
        Arc::new(Service {
            config,
            traffic: Arc::new(Traffic::default()),
            state: Mutex::new(ServiceState::Pending),
            removed: CancellationToken::new(),
            warned: Mutex::new((None, 0)),
        })
    }

    fn set(&self, state: ServiceState) {
        *self.state.lock() = state;
    }

    /// A visitor could not be connected to the local service: a warning,
    /// at most one a second per service, with how many were held back.
    fn unreachable(&self, visitor: SocketAddr, error: &str) {
        let mut warned = self.warned.lock();
        let now = Instant::now();
        if warned
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            warned.1 += 1;
            return;
        }
        let also = std::mem::take(&mut warned.1);
        *warned = (Some(now), 0);
        drop(warned);
        let s = &self.config;
        warn!(service = %s.name, local = %s.local, %visitor, error, also, "local service unreachable: visitor closed");
    }
}

/// What the client and its handles share.
struct State {
    /// The services wanted now, in order.
    services: Mutex<Vec<Arc<Service>>>,
    /// Woken when `services` changes.
    changed: Notify,
    session: Mutex<Option<Mux>>,
    since: Mutex<Option<SystemTime>>,
    last_resume: Mutex<Option<SystemTime>>,
}

/// A tunnel client.
pub struct Client {
    config: Arc<ClientConfig>,
    /// The token stretched (100,000 PBKDF2 rounds), once: the link's
    /// handshake and every login use it.
    key: std::sync::OnceLock<super::auth::LoginKey>,
    events: mpsc::UnboundedSender<ClientEvent>,
    stop: Arc<Notify>,
    state: Arc<State>,
}

/// Controls a running [`Client`] from elsewhere.
#[derive(Clone)]
pub struct ClientHandle {
    stop: Arc<Notify>,
    state: Arc<State>,
    config: Arc<ClientConfig>,
}

impl ClientHandle {
    /// Asks the client to say goodbye and return.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Replaces the link's transport now (for a client that knows its network
    /// changed); visitors are not disturbed.
    pub fn force_reconnect(&self) {
        if let Some(mux) = self.state.session.lock().as_ref() {
            mux.stream().force_reconnect();
        }
    }

    /// Counters of the current link, if there is one.
    pub fn link_stats(&self) -> Option<stream::Stats> {
        self.state
            .session
            .lock()
            .as_ref()
            .map(|m| m.stream().stats())
    }

    /// UDP counters of the current session, if there is one.
    pub fn udp_stats(&self) -> Option<UdpStats> {
        self.state.session.lock().as_ref().map(Mux::udp_stats)
    }

    /// The session, its link and every service.
    pub fn status(&self) -> ClientStatus {
        let session = self.state.session.lock().clone();
        ClientStatus {
            name: self.config.name.clone(),
            server: self.config.server.clone(),
            server_addr: session.as_ref().and_then(|m| m.stream().peer_addr()),
            link: session.as_ref().map(|m| m.stream().stats()),
            since: *self.state.since.lock(),
            last_resume: *self.state.last_resume.lock(),
            services: self
                .state
                .services
                .lock()
                .iter()
                .map(|s| ServiceStatus {
                    config: s.config.clone(),
                    state: s.state.lock().clone(),
                    stats: s.traffic.snapshot(),
                })
                .collect(),
        }
    }

    /// Replaces the services (a config reload): services that are in both
    /// the old and the new list, exactly, are untouched, and so are their
    /// visitors; removed ones are unpublished and their visitors closed;
    /// added ones are published.
    pub fn set_services(&self, wanted: Vec<ServiceConfig>) {
        let mut services = self.state.services.lock();
        let mut old: Vec<Option<Arc<Service>>> = services.drain(..).map(Some).collect();
        for config in wanted {
            let kept = old
                .iter_mut()
                .find(|s| s.as_ref().is_some_and(|s| s.config == config))
                .and_then(Option::take);
            services.push(kept.unwrap_or_else(|| Service::new(config)));
        }
        for gone in old.into_iter().flatten() {
            gone.removed.cancel();
        }
        drop(services);
        self.state.changed.notify_one();
    }
}

/// The services published in one session, by the index the client gave
/// each.
#[derive(Default)]
struct Published {
    by_index: HashMap<u16, Arc<Service>>,
    next: u16,
    /// Services to ask for again (the port was taken), and when.
    retry_at: Option<Instant>,
    retries: u32,
}

impl Published {
    fn get(&self, index: u16) -> Option<&Arc<Service>> {
        self.by_index.get(&index)
    }
}

impl Client {
    /// A client, and the receiver of its events.
    pub fn new(config: ClientConfig) -> (Client, mpsc::UnboundedReceiver<ClientEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        let services = config.services.iter().cloned().map(Service::new).collect();
        (
            Client {
                config: Arc::new(config),
                key: std::sync::OnceLock::new(),
                events,
                stop: Arc::new(Notify::new()),
                state: Arc::new(State {
                    services: Mutex::new(services),
                    changed: Notify::new(),
                    session: Mutex::new(None),
                    since: Mutex::new(None),
                    last_resume: Mutex::new(None),
                }),
            },
            rx,
        )
    }

    /// A handle that controls the client while it runs.
    pub fn handle(&self) -> ClientHandle {
        ClientHandle {
            stop: self.stop.clone(),
            state: self.state.clone(),
            config: self.config.clone(),
        }
    }

    /// Runs over TCP until stopped, or until the server refuses us.
    pub async fn run(&self) -> Result<(), ClientError> {
        if !host_and_port(&self.config.server) {
            return Err(ClientError::Config(stream::ConfigError(format!(
                "server {:?} needs a port, like host:7000 or [::1]:7000",
                self.config.server
            ))));
        }
        let dialer = TcpDialer::new(self.config.server.clone(), &self.config.stream);
        self.run_with(dialer).await
    }

    /// Runs with a custom dialer (a source address, a proxy, TLS…); each
    /// session gets a clone.
    pub async fn run_with<D: Dialer + Clone>(&self, dialer: D) -> Result<(), ClientError> {
        self.config.mux.validate().map_err(ClientError::Config)?;
        let mut failures = 0u32;
        let link_config = self.link_config();
        let pinned = self.config.server_key.is_some();
        let server = &self.config.server;
        loop {
            let connecting = stream::connect_with(dialer.clone(), link_config.clone());
            let link = tokio::select! {
                link = connecting => link,
                _ = self.stop.notified() => return Ok(()),
            };
            let link = match link {
                Ok(link) => link,
                Err(e) => match refused(&e, pinned) {
                    Some(fatal) => return Err(fatal),
                    None => {
                        failures += 1;
                        if self.config.give_up_after.is_some_and(|n| failures >= n) {
                            return Err(ClientError::Connect {
                                server: server.clone(),
                                attempts: failures,
                                error: e,
                            });
                        }
                        let delay = self.delay(failures);
                        warn!(%server, error = %e, retry_in = ?delay, "cannot reach the server; retrying");
                        if self.pause(delay).await {
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            failures = 0;
            match self.session(link).await? {
                SessionEnd::Stopped => return Ok(()),
                SessionEnd::Lost(reason) => {
                    warn!(%server, %reason, "session ended; starting a new one");
                    let _ = self.events.send(ClientEvent::SessionDown { reason });
                    if self.pause(self.delay(1)).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The token stretched into the login key, the first time it is asked for.
    fn key(&self) -> &super::auth::LoginKey {
        self.key.get_or_init(|| self.config.token.key())
    }

    /// The link's settings: the sealed suite keyed by the token, naming
    /// this client, pinning the server key if given.
    fn link_config(&self) -> stream::Config {
        let mut keys = stream::Sealed::new(self.key().psk());
        keys.psk_id = self.config.name.as_bytes().to_vec();
        keys.server_key = self.config.server_key;
        stream::Config {
            suite: stream::Suite::Sealed(keys),
            ..self.config.stream.clone()
        }
    }

    fn delay(&self, failures: u32) -> Duration {
        self.config.retry.delay(failures.min(20), rand::random())
    }

    /// Waits `delay`; true if stopped meanwhile.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = self.stop.notified() => true,
        }
    }

    async fn session(&self, link: stream::Stream) -> Result<SessionEnd, ClientError> {
        let server = link.peer_addr();
        let (mux, mut events) = Mux::start(link, Side::Client, self.config.mux.clone());
        let _ends = EndOnDrop(mux.clone());
        *self.state.session.lock() = Some(mux.clone());
        match timeout(Duration::from_secs(30), self.login(&mux, &mut events)).await {
            Ok(Ok(())) => {}
            Ok(Err(LoginFailed::Refused(e))) => {
                mux.goodbye("login failed");
                return Err(e);
            }
            // The server keeps no session for a client that has not logged
            // in, so a link lost now is a session lost: start over.
            Ok(Err(LoginFailed::Lost(reason))) => {
                return Ok(SessionEnd::Lost(format!(
                    "link lost during login: {reason}"
                )));
            }
            Err(_) => {
                mux.goodbye("login timed out");
                return Ok(SessionEnd::Lost("login timed out".into()));
            }
        }
        info!(server = %crate::stream::shown(server), "session up");
        *self.state.since.lock() = Some(SystemTime::now());
        *self.state.last_resume.lock() = None;
        let resumes = self.note_resumes(&mux);
        let _ = self.events.send(ClientEvent::SessionUp);
        let mut published = Published::default();
        for s in self.state.services.lock().iter() {
            s.set(ServiceState::Pending);
        }
        self.sync(&mux, &mut published);
        let end = loop {
            let retry_at = published.retry_at;
            let event = tokio::select! {
                e = events.recv() => e,
                _ = self.stop.notified() => {
                    mux.goodbye("client shutting down");
                    let _ = timeout(Duration::from_secs(2), mux.stream_closed()).await;
                    break Ok(SessionEnd::Stopped);
                }
                _ = self.state.changed.notified() => {
                    self.sync(&mux, &mut published);
                    continue;
                }
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    self.ask_again(&mux, &mut published);
                    continue;
                }
            };
            match event {
                Some(Event::Open {
                    stream,
                    index,
                    visitor,
                }) => self.open(published.get(index), stream, index, visitor),
                Some(Event::Control(frame)) => {
                    if let Err(e) = self.control(frame, &mut published) {
                        mux.goodbye("every service was refused");
                        let _ = timeout(Duration::from_secs(2), mux.stream_closed()).await;
                        break Err(e);
                    }
                }
                Some(Event::Associate {
                    id,
                    index,
                    datagrams,
                    ..
                }) => match published.get(index) {
                    Some(s) if s.config.kind == ServiceKind::Udp => {
                        let association = client_association(
                            id,
                            datagrams,
                            s.config.local.clone(),
                            mux.clone(),
                            s.traffic.clone(),
                        );
                        let removed = s.removed.clone();
                        let mux = mux.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = association => {}
                                // The service was removed: end the
                                // association on both sides.
                                _ = removed.cancelled() => mux.dissociate(id),
                            }
                        });
                    }
                    _ => {
                        debug!(index, "association for an unknown or non-UDP service");
                        mux.dissociate(id);
                    }
                },
                // The association's channel closes; its task ends by itself.
                Some(Event::Dissociate { .. }) => {}
                None => {
                    break Ok(match mux.ended().await {
                        End::Closed(_) => SessionEnd::Stopped,
                        end => SessionEnd::Lost(end.to_string()),
                    });
                }
            }
        };
        resumes.abort();
        *self.state.session.lock() = None;
        *self.state.since.lock() = None;
        end
    }

    /// Notes when the link resumes.
    fn note_resumes(&self, mux: &Mux) -> tokio::task::JoinHandle<()> {
        let mut events = mux.stream().events();
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let stream::Event::Resumed { .. } = event {
                    *state.last_resume.lock() = Some(SystemTime::now());
                }
            }
        })
    }

    /// Brings the session's services in line with the wanted ones: removed
    /// ones unpublished, added ones published.
    fn sync(&self, mux: &Mux, published: &mut Published) {
        let wanted = self.state.services.lock().clone();
        let gone: Vec<u16> = published
            .by_index
            .iter()
            .filter(|(_, s)| !wanted.iter().any(|w| Arc::ptr_eq(w, s)))
            .map(|(&i, _)| i)
            .collect();
        for index in gone {
            if let Some(s) = published.by_index.remove(&index) {
                let _ = mux.send(Frame::Unpublish { index });
                info!(service = %s.config.name, local = %s.config.local, "service removed");
                let _ = self.events.send(ClientEvent::Unpublished {
                    name: s.config.name.clone(),
                });
            }
        }
        for s in wanted {
            if published.by_index.values().any(|p| Arc::ptr_eq(p, &s)) {
                continue;
            }
            let index = published.next;
            published.next = published.next.wrapping_add(1);
            published.by_index.insert(index, s.clone());
            s.set(ServiceState::Pending);
            let _ = mux.send(publish_frame(index, &s.config));
        }
    }

    /// Asks again for the services whose port was taken.
    fn ask_again(&self, mux: &Mux, published: &mut Published) {
        published.retry_at = None;
        for (&index, s) in &published.by_index {
            let again = matches!(
                &*s.state.lock(),
                ServiceState::Failed { retrying: true, .. }
            );
            if again {
                s.set(ServiceState::Pending);
                let _ = mux.send(publish_frame(index, &s.config));
            }
        }
    }

    /// The client's half of the login (`PROTOCOL.md` §3.3).
    async fn login(
        &self,
        mux: &Mux,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<(), LoginFailed> {
        let key = self.key();
        let client_nonce: [u8; 32] = rand::random();
        let _ = mux.send(Frame::Hello {
            version: VERSION,
            name: self.config.name.clone(),
            nonce: client_nonce,
        });
        let server_nonce = match events.recv().await {
            Some(Event::Control(Frame::Challenge { nonce })) => nonce,
            Some(Event::Control(Frame::Refuse { reason })) => {
                return Err(LoginFailed::Refused(ClientError::Refused(reason)));
            }
            _ => return Err(LoginFailed::Lost(mux.ended().await.to_string())),
        };
        let binding = mux.stream().binding();
        let transcript = Transcript {
            binding: &binding,
            server_nonce: &server_nonce,
            client_nonce: &client_nonce,
            name: &self.config.name,
        };
        let _ = mux.send(Frame::Login {
            proof: key.client_proof(&transcript),
        });
        match events.recv().await {
            Some(Event::Control(Frame::Welcome { proof })) => {
                if proofs_equal(&key.server_proof(&transcript), &proof) {
                    Ok(())
                } else {
                    Err(LoginFailed::Refused(ClientError::ServerUnproven))
                }
            }
            Some(Event::Control(Frame::Refuse { reason })) => {
                Err(LoginFailed::Refused(ClientError::Refused(reason)))
            }
            _ => Err(LoginFailed::Lost(mux.ended().await.to_string())),
        }
    }

    /// A session frame; an error if every service is now refused for good.
    fn control(&self, frame: Frame, published: &mut Published) -> Result<(), ClientError> {
        match frame {
            Frame::Published { index, addr } => {
                let Some(s) = published.get(index).cloned() else {
                    return Ok(());
                };
                let c = &s.config;
                let public = public_address(addr, &self.config.server);
                info!(service = %c.name, kind = c.kind.name(), local = %c.local, %public, "published");
                s.set(ServiceState::Published {
                    public: public.clone(),
                });
                published.retries = 0;
                let _ = self.events.send(ClientEvent::Published {
                    name: c.name.clone(),
                    kind: c.kind,
                    local: c.local.clone(),
                    public,
                });
            }
            Frame::PublishFailed {
                index,
                retry,
                reason,
            } => {
                let Some(s) = published.get(index).cloned() else {
                    return Ok(());
                };
                let c = &s.config;
                if retry {
                    published.retries = published.retries.saturating_add(1);
                    let delay = self.delay(published.retries.saturating_add(3));
                    warn!(service = %c.name, local = %c.local, %reason, retry_in = ?delay, "not published; asking again");
                    let at = Instant::now() + delay;
                    published.retry_at = Some(published.retry_at.map_or(at, |t| t.min(at)));
                } else {
                    warn!(service = %c.name, local = %c.local, %reason, "not published");
                }
                s.set(ServiceState::Failed {
                    reason: reason.clone(),
                    retrying: retry,
                });
                let _ = self.events.send(ClientEvent::PublishFailed {
                    name: c.name.clone(),
                    kind: c.kind,
                    local: c.local.clone(),
                    reason,
                    retrying: retry,
                });
                return self.check_all_refused(published);
            }
            other => debug!(frame = ?other, "unexpected frame ignored"),
        }
        Ok(())
    }

    /// Every service refused for a reason retrying cannot fix: the client
    /// would run for nothing, so it stops and says why.
    fn check_all_refused(&self, published: &Published) -> Result<(), ClientError> {
        let mut reasons = Vec::new();
        for s in published.by_index.values() {
            match &*s.state.lock() {
                ServiceState::Failed {
                    reason,
                    retrying: false,
                } => reasons.push(format!("{}: {reason}", s.config.name)),
                _ => return Ok(()),
            }
        }
        if reasons.is_empty() {
            return Ok(());
        }
        reasons.sort();
        Err(ClientError::AllRefused(reasons))
    }

    /// A visitor arrived: connect it to the local service.
    fn open(
        &self,
        service: Option<&Arc<Service>>,
        mut stream: MuxStream,
        index: u16,
        visitor: SocketAddr,
    ) {
        let Some(service) = service.filter(|s| s.config.kind == ServiceKind::Tcp) else {
            debug!(index, "open for an unknown or non-TCP service");
            stream.reset();
            return;
        };
        let service = service.clone();
        let limit = self.config.connect_timeout;
        tokio::spawn(async move {
            let removed = service.removed.clone();
            let visit = async {
                let local = &service.config.local;
                match timeout(limit, TcpStream::connect(local)).await {
                    Ok(Ok(sock)) => {
                        bridge(sock, stream, Meter::new(&service.traffic, false)).await;
                    }
                    Ok(Err(e)) => {
                        service.unreachable(visitor, &e.to_string());
                        stream.reset();
                    }
                    Err(_) => {
                        service.unreachable(visitor, &format!("no answer within {limit:?}"));
                        stream.reset();
                    }
                }
            };
            // A removed service's visitors are closed (the stream is reset).
            tokio::select! {
                _ = visit => {}
                _ = removed.cancelled() => {}
            }
        });
    }
}

/// Ends a session whose client is dropped mid-run (its `run` future
/// cancelled): the mux's tasks would otherwise keep the link alive.
struct EndOnDrop(Mux);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if !self.0.is_ended() {
            self.0.goodbye("client dropped");
        }
    }
}

fn publish_frame(index: u16, s: &ServiceConfig) -> Frame {
    Frame::Publish {
        index,
        kind: s.kind,
        port: s.port,
        name: s.name.clone(),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Where visitors reach a service: the server's bound address, with the
/// server's host in place of an unspecified IP (0.0.0.0 or ::).
fn public_address(addr: SocketAddr, server: &str) -> String {
    if !addr.ip().is_unspecified() {
        return addr.to_string();
    }
    let host = server.rsplit_once(':').map_or(server, |(h, _)| h);
    format!("{host}:{}", addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_address_needs_a_port() {
        for good in [
            "h:7000",
            "127.0.0.1:1",
            "[::1]:7000",
            "tunnel.example.com:443",
        ] {
            assert!(host_and_port(good), "{good}");
        }
        for bad in ["127.0.0.1", "h", "h:", ":7000", "::1", "h:70000", "h:x", ""] {
            assert!(!host_and_port(bad), "{bad}");
        }
    }

    #[test]
    fn unspecified_addresses_show_the_server_host() {
        let a: SocketAddr = "0.0.0.0:7001".parse().unwrap();
        assert_eq!(
            public_address(a, "tunnel.example.com:7000"),
            "tunnel.example.com:7001"
        );
        let b: SocketAddr = "203.0.113.5:7001".parse().unwrap();
        assert_eq!(
            public_address(b, "tunnel.example.com:7000"),
            "203.0.113.5:7001"
        );
        let c: SocketAddr = "[::]:9".parse().unwrap();
        assert_eq!(public_address(c, "[2001:db8::1]:7000"), "[2001:db8::1]:9");
    }
}
