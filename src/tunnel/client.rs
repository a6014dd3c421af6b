//! The tunnel client: logs in, publishes local services, and connects every
//! visitor the server sends to the local service it asked for.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tracing::{debug, info, warn};

use super::auth::{Token, Transcript, proofs_equal};
use super::bridge::bridge;
use super::frame::{Frame, ServiceKind, VERSION};
use super::mux::{End, Event, Mux, MuxConfig, MuxStream, Side, UdpStats};
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
    /// How to retry when a session ends (the link's own reconnects are the
    /// stream's business).
    pub retry: Redial,
    /// The server's static public key (`rejoin server --show-key`): with it
    /// the client knows it reaches that server, even if the token leaked.
    pub server_key: Option<[u8; 32]>,
    /// The link's stream settings. The suite is always the sealed one, keyed
    /// by the token: whatever `stream.suite` says is replaced.
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
        let stream = stream::Config::default();
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
    },
    /// The session ended; the client starts a new one (unless stopping).
    SessionDown {
        /// Why.
        reason: String,
    },
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
        P::KeyRejected(REJECT_BAD_KEY) if pinned => {
            ClientError::Refused("bad token, or the pinned server key is not this server's".into())
        }
        P::KeyRejected(REJECT_BAD_KEY) => ClientError::Refused("bad token".into()),
        P::KeyRejected(REJECT_UNKNOWN_ID) => {
            ClientError::Refused("unknown client (no token for this name)".into())
        }
        P::KeyRejected(REJECT_NO_STATIC_KEY) => {
            ClientError::Refused("the server has no static key, but --server-key pins one".into())
        }
        P::Unauthenticated => ClientError::ServerUnproven,
        _ => return None,
    })
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
    /// The first connection failed.
    #[error("cannot reach the server: {0}")]
    Connect(io::Error),
}

enum SessionEnd {
    /// We said goodbye.
    Stopped,
    /// Worth another session.
    Lost(String),
}

/// A tunnel client.
pub struct Client {
    config: Arc<ClientConfig>,
    events: mpsc::UnboundedSender<ClientEvent>,
    stop: Arc<Notify>,
    session: Arc<Mutex<Option<Mux>>>,
}

/// Controls a running [`Client`] from elsewhere.
#[derive(Clone)]
pub struct ClientHandle {
    stop: Arc<Notify>,
    session: Arc<Mutex<Option<Mux>>>,
}

impl ClientHandle {
    /// Asks the client to say goodbye and return.
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Replaces the link's transport now (for a client that knows its network
    /// changed); visitors are not disturbed.
    pub fn force_reconnect(&self) {
        if let Some(mux) = self.session.lock().as_ref() {
            mux.stream().force_reconnect();
        }
    }

    /// Counters of the current link, if there is one.
    pub fn link_stats(&self) -> Option<stream::Stats> {
        self.session.lock().as_ref().map(|m| m.stream().stats())
    }

    /// UDP counters of the current session, if there is one.
    pub fn udp_stats(&self) -> Option<UdpStats> {
        self.session.lock().as_ref().map(Mux::udp_stats)
    }
}

impl Client {
    /// A client, and the receiver of its events.
    pub fn new(config: ClientConfig) -> (Client, mpsc::UnboundedReceiver<ClientEvent>) {
        let (events, rx) = mpsc::unbounded_channel();
        (
            Client {
                config: Arc::new(config),
                events,
                stop: Arc::new(Notify::new()),
                session: Arc::new(Mutex::new(None)),
            },
            rx,
        )
    }

    /// A handle that controls the client while it runs.
    pub fn handle(&self) -> ClientHandle {
        ClientHandle {
            stop: self.stop.clone(),
            session: self.session.clone(),
        }
    }

    /// Runs over TCP until stopped, or until the server refuses us.
    pub async fn run(&self) -> Result<(), ClientError> {
        let dialer = TcpDialer::new(self.config.server.clone(), &self.config.stream);
        self.run_with(dialer).await
    }

    /// Runs with a custom dialer (a source address, a proxy, TLS…); each
    /// session gets a clone.
    pub async fn run_with<D: Dialer + Clone>(&self, dialer: D) -> Result<(), ClientError> {
        let mut first = true;
        let mut failures = 0u32;
        let link_config = self.link_config();
        let pinned = self.config.server_key.is_some();
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
                    None if first => return Err(ClientError::Connect(e)),
                    None => {
                        warn!(error = %e, "cannot reach the server; retrying");
                        failures += 1;
                        if self.pause(failures).await {
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            first = false;
            match self.session(link).await? {
                SessionEnd::Stopped => return Ok(()),
                SessionEnd::Lost(reason) => {
                    warn!(%reason, "session ended; starting a new one");
                    let _ = self.events.send(ClientEvent::SessionDown { reason });
                    failures = 1;
                    if self.pause(failures).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The link's settings: the sealed suite keyed by the token (stretched
    /// once, here), naming this client, pinning the server key if given.
    fn link_config(&self) -> stream::Config {
        let mut keys = stream::Sealed::new(self.config.token.key().psk());
        keys.psk_id = self.config.name.as_bytes().to_vec();
        keys.server_key = self.config.server_key;
        stream::Config {
            suite: stream::Suite::Sealed(keys),
            ..self.config.stream.clone()
        }
    }

    /// Waits before the next attempt; true if stopped meanwhile.
    async fn pause(&self, failures: u32) -> bool {
        let delay = self.config.retry.delay(failures.min(20), rand::random());
        tokio::select! {
            _ = tokio::time::sleep(delay) => false,
            _ = self.stop.notified() => true,
        }
    }

    async fn session(&self, link: stream::Stream) -> Result<SessionEnd, ClientError> {
        let server = link.peer_addr();
        let (mux, mut events) = Mux::start(link, Side::Client, self.config.mux.clone());
        *self.session.lock() = Some(mux.clone());
        match timeout(Duration::from_secs(30), self.login(&mux, &mut events)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                mux.goodbye("login failed");
                return Err(e);
            }
            Err(_) => {
                mux.goodbye("login timed out");
                return Ok(SessionEnd::Lost("login timed out".into()));
            }
        }
        info!(?server, "session up");
        let _ = self.events.send(ClientEvent::SessionUp);
        for (i, s) in self.config.services.iter().enumerate() {
            mux.send(Frame::Publish {
                index: i as u16,
                kind: s.kind,
                port: s.port,
                name: s.name.clone(),
            });
        }
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = self.stop.notified() => {
                    mux.goodbye("client shutting down");
                    let _ = timeout(Duration::from_secs(2), mux.stream_closed()).await;
                    return Ok(SessionEnd::Stopped);
                }
            };
            match event {
                Some(Event::Open {
                    stream,
                    index,
                    visitor,
                }) => self.open(stream, index, visitor),
                Some(Event::Control(frame)) => self.control(frame),
                Some(Event::Associate {
                    id,
                    index,
                    datagrams,
                    ..
                }) => match self.config.services.get(index as usize) {
                    Some(s) if s.kind == ServiceKind::Udp => {
                        tokio::spawn(client_association(
                            id,
                            datagrams,
                            s.local.clone(),
                            mux.clone(),
                        ));
                    }
                    _ => {
                        debug!(index, "association for an unknown or non-UDP service");
                        mux.dissociate(id);
                    }
                },
                // The association's channel closes; its task ends by itself.
                Some(Event::Dissociate { .. }) => {}
                None => break,
            }
        }
        Ok(match mux.ended().await {
            End::Closed(_) => SessionEnd::Stopped,
            end => SessionEnd::Lost(end.to_string()),
        })
    }

    /// The client's half of the login (`PROTOCOL.md` §3.3).
    async fn login(
        &self,
        mux: &Mux,
        events: &mut mpsc::Receiver<Event>,
    ) -> Result<(), ClientError> {
        let key = self.config.token.key();
        let client_nonce: [u8; 32] = rand::random();
        mux.send(Frame::Hello {
            version: VERSION,
            name: self.config.name.clone(),
            nonce: client_nonce,
        });
        let server_nonce = match events.recv().await {
            Some(Event::Control(Frame::Challenge { nonce })) => nonce,
            Some(Event::Control(Frame::Refuse { reason })) => {
                return Err(ClientError::Refused(reason));
            }
            _ => return Err(ClientError::Refused(mux.ended().await.to_string())),
        };
        let binding = mux.stream().binding();
        let transcript = Transcript {
            binding: &binding,
            server_nonce: &server_nonce,
            client_nonce: &client_nonce,
            name: &self.config.name,
        };
        mux.send(Frame::Login {
            proof: key.client_proof(&transcript),
        });
        match events.recv().await {
            Some(Event::Control(Frame::Welcome { proof })) => {
                if proofs_equal(&key.server_proof(&transcript), &proof) {
                    Ok(())
                } else {
                    Err(ClientError::ServerUnproven)
                }
            }
            Some(Event::Control(Frame::Refuse { reason })) => Err(ClientError::Refused(reason)),
            _ => Err(ClientError::Refused(mux.ended().await.to_string())),
        }
    }

    fn control(&self, frame: Frame) {
        let service = |index: u16| self.config.services.get(index as usize);
        match frame {
            Frame::Published { index, addr } => {
                let Some(s) = service(index) else { return };
                let public = public_address(addr, &self.config.server);
                info!(service = %s.name, kind = s.kind.name(), local = %s.local, %public, "published");
                let _ = self.events.send(ClientEvent::Published {
                    name: s.name.clone(),
                    kind: s.kind,
                    local: s.local.clone(),
                    public,
                });
            }
            Frame::PublishFailed { index, reason } => {
                let Some(s) = service(index) else { return };
                warn!(service = %s.name, %reason, "not published");
                let _ = self.events.send(ClientEvent::PublishFailed {
                    name: s.name.clone(),
                    kind: s.kind,
                    local: s.local.clone(),
                    reason,
                });
            }
            other => debug!(frame = ?other, "unexpected frame ignored"),
        }
    }

    /// A visitor arrived: connect it to the local service.
    fn open(&self, mut stream: MuxStream, index: u16, visitor: SocketAddr) {
        let Some(service) = self
            .config
            .services
            .get(index as usize)
            .filter(|s| s.kind == ServiceKind::Tcp)
        else {
            debug!(index, "open for an unknown or non-TCP service");
            stream.reset();
            return;
        };
        let local = service.local.clone();
        let limit = self.config.connect_timeout;
        tokio::spawn(async move {
            match timeout(limit, TcpStream::connect(&local)).await {
                Ok(Ok(sock)) => {
                    let _ = sock.set_nodelay(true);
                    bridge(sock, stream).await;
                }
                Ok(Err(e)) => {
                    debug!(%visitor, %local, error = %e, "local service unreachable");
                    stream.reset();
                }
                Err(_) => {
                    debug!(%visitor, %local, "local service did not answer");
                    stream.reset();
                }
            }
        });
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
