//! UDP services: one association per visitor address, datagrams whole.
//!
//! The server binds the public UDP port. Each distinct visitor address gets
//! its own association (ASSOCIATE), so replies go back to the visitor that
//! asked, and only to it. On the client each association has its own socket,
//! connected to the local service. Associations end after `idle` without
//! traffic, and a service has at most `max_associations`.
//!
//! No per-association buffer is kept: datagrams are read with a non-blocking
//! receive into a per-thread scratch buffer and copied out at their size.
//! The scratch buffer is larger than any UDP datagram, so a datagram above
//! 65,507 bytes (possible over IPv6) is seen whole and refused, never cut.
//! Every dropped datagram is counted; drops are logged at most once a second
//! per service.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::frame::MAX_DATAGRAM;
use super::mux::{DatagramReceiver, Mux, UdpDrop};
use super::server::BindError;
use super::traffic::{Traffic, Visitor};

/// Settings of the server's UDP services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// An association with no datagram either way for this long ends.
    /// Default 60 s.
    pub idle: Duration,
    /// Most associations (visitor addresses) per service at once; datagrams
    /// from further visitors are dropped. Default 1,024.
    pub max_associations: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            idle: Duration::from_secs(60),
            max_associations: 1024,
        }
    }
}

const SCRATCH: usize = 65_536 + 1;

thread_local! {
    static SCRATCH_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; SCRATCH]);
}

/// Logs drops at most once a second, with how many there were.
pub(crate) struct DropLog {
    what: String,
    last: Option<Instant>,
    pending: u64,
    traffic: Arc<Traffic>,
}

impl DropLog {
    pub(crate) fn new(what: impl Into<String>, traffic: Arc<Traffic>) -> Self {
        DropLog {
            what: what.into(),
            last: None,
            pending: 0,
            traffic,
        }
    }

    pub(crate) fn note(&mut self, why: &str) {
        self.traffic.udp_dropped();
        self.pending += 1;
        let now = Instant::now();
        if self.last.is_none_or(|t| now - t >= Duration::from_secs(1)) {
            warn!(what = %self.what, dropped = self.pending, reason = why, "UDP datagrams dropped");
            self.pending = 0;
            self.last = Some(now);
        }
    }
}

/// Reads every datagram waiting on `sock` (without blocking) and passes
/// each, copied out at its size, to `each`.
fn drain(
    sock: &UdpSocket,
    mut each: impl FnMut(io::Result<(Bytes, SocketAddr)>, usize),
) -> io::Result<()> {
    loop {
        let got = SCRATCH_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            sock.try_recv_from(&mut buf)
                .map(|(n, from)| (Bytes::copy_from_slice(&buf[..n.min(MAX_DATAGRAM)]), from, n))
        });
        match got {
            Ok((datagram, from, n)) => each(Ok((datagram, from)), n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Sends one datagram without blocking for long: a socket's readiness is
/// unknown until the first try (a new socket reports "would block"), so wait
/// for it briefly once. `false` if the datagram had to be dropped.
async fn send(sock: &UdpSocket, datagram: &[u8], to: Option<SocketAddr>) -> bool {
    for attempt in 0..2 {
        let sent = match to {
            Some(to) => sock.try_send_to(datagram, to),
            None => sock.try_send(datagram),
        };
        match sent {
            Ok(_) => return true,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && attempt == 0 => {
                let _ = tokio::time::timeout(Duration::from_millis(50), sock.writable()).await;
            }
            Err(_) => return false,
        }
    }
    false
}

/// A published UDP service on the server.
pub(crate) struct UdpService {
    socket: UdpSocket,
    index: u16,
    mux: Mux,
    config: UdpConfig,
    /// Dissociations the client started.
    dissociated: mpsc::UnboundedReceiver<u32>,
    traffic: Arc<Traffic>,
}

/// Binds a public UDP port: the one asked for, or a free allowed one.
pub(crate) async fn bind(
    ip: IpAddr,
    port: u16,
    candidates: &[u16],
) -> Result<UdpSocket, BindError> {
    if port != 0 || candidates.is_empty() {
        return UdpSocket::bind(SocketAddr::new(ip, port))
            .await
            .map_err(|e| BindError::new(e, "UDP", port));
    }
    for &p in candidates {
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, p)).await {
            return Ok(s);
        }
    }
    Err(BindError::no_free_port())
}

impl UdpService {
    pub(crate) fn new(
        socket: UdpSocket,
        index: u16,
        mux: Mux,
        config: UdpConfig,
        traffic: Arc<Traffic>,
    ) -> (UdpService, mpsc::UnboundedSender<u32>) {
        let (tx, dissociated) = mpsc::unbounded_channel();
        (
            UdpService {
                socket,
                index,
                mux,
                config,
                dissociated,
                traffic,
            },
            tx,
        )
    }

    /// Serves until the task is aborted (the session ended), or until
    /// `stop` (the service was unpublished): then its associations are ended
    /// on both sides.
    pub(crate) async fn run(mut self, stop: tokio_util::sync::CancellationToken) {
        let addr = self.socket.local_addr().ok();
        let mut drops = DropLog::new(format!("udp service at {addr:?}"), self.traffic.clone());
        let (to_visitors, mut from_link) = self.mux.datagram_channel();
        let mut by_visitor: HashMap<SocketAddr, (u32, Instant, Visitor)> = HashMap::new();
        let mut by_id: HashMap<u32, SocketAddr> = HashMap::new();
        let mut sweep =
            tokio::time::interval((self.config.idle / 4).max(Duration::from_millis(20)));
        loop {
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_err() {
                        return;
                    }
                    let (mux, config, index) = (&self.mux, &self.config, self.index);
                    let traffic = &self.traffic;
                    let result = drain(&self.socket, |got, n| {
                        let Ok((datagram, from)) = got else { return };
                        if n > MAX_DATAGRAM {
                            mux.note_udp_drop(UdpDrop::Oversize);
                            drops.note("datagram above 65,507 bytes");
                            return;
                        }
                        let id = match by_visitor.get_mut(&from) {
                            Some((id, seen, _)) => {
                                *seen = Instant::now();
                                *id
                            }
                            None => {
                                if by_visitor.len() >= config.max_associations {
                                    mux.note_udp_drop(UdpDrop::Limit);
                                    drops.note("association limit reached");
                                    return;
                                }
                                let Ok(id) = mux.associate(index, from, to_visitors.clone()) else {
                                    mux.note_udp_drop(UdpDrop::Limit);
                                    drops.note("too many streams on the link");
                                    return;
                                };
                                debug!(%from, id, "new UDP association");
                                by_visitor.insert(from, (id, Instant::now(), traffic.visitor()));
                                by_id.insert(id, from);
                                id
                            }
                        };
                        let len = datagram.len();
                        if mux.send_datagram(id, datagram) {
                            traffic.to_service(len);
                        } else {
                            drops.note("link queue full");
                        }
                    });
                    if let Err(e) = result {
                        debug!(error = %e, "UDP receive failed");
                    }
                }
                Some((id, datagram)) = from_link.recv() => {
                    let Some(visitor) = by_id.get(&id).copied() else { continue };
                    if let Some((_, seen, _)) = by_visitor.get_mut(&visitor) {
                        *seen = Instant::now();
                    }
                    if send(&self.socket, &datagram, Some(visitor)).await {
                        self.traffic.to_visitors(datagram.len());
                    } else {
                        self.mux.note_udp_drop(UdpDrop::Delivery);
                        drops.note("visitor's socket would not take it");
                    }
                }
                _ = stop.cancelled() => {
                    for id in by_id.keys() {
                        self.mux.dissociate(*id);
                    }
                    return;
                }
                Some(id) = self.dissociated.recv() => {
                    if let Some(visitor) = by_id.remove(&id) {
                        by_visitor.remove(&visitor);
                    }
                }
                _ = sweep.tick() => {
                    let idle = self.config.idle;
                    let now = Instant::now();
                    by_visitor.retain(|visitor, (id, seen, _)| {
                        let keep = now.duration_since(*seen) < idle;
                        if !keep {
                            debug!(%visitor, id = *id, "UDP association expired");
                            self.mux.dissociate(*id);
                            by_id.remove(id);
                        }
                        keep
                    });
                }
            }
        }
    }
}

/// The client's side of one association: a socket connected to the local
/// service, until the server ends the association or the link ends.
pub(crate) async fn client_association(
    id: u32,
    mut datagrams: DatagramReceiver,
    local: String,
    mux: Mux,
    traffic: Arc<Traffic>,
) {
    let sock = match connect(&local).await {
        Ok(s) => s,
        Err(e) => {
            debug!(%local, error = %e, "local UDP service unreachable");
            mux.dissociate(id);
            return;
        }
    };
    let _visitor = traffic.visitor();
    let mut drops = DropLog::new(format!("udp association to {local}"), traffic.clone());
    loop {
        tokio::select! {
            ready = sock.readable() => {
                if ready.is_err() {
                    break;
                }
                let result = drain(&sock, |got, n| {
                    let Ok((datagram, _)) = got else { return };
                    if n > MAX_DATAGRAM {
                        mux.note_udp_drop(UdpDrop::Oversize);
                        drops.note("datagram above 65,507 bytes");
                        return;
                    }
                    let len = datagram.len();
                    if mux.send_datagram(id, datagram) {
                        traffic.to_visitors(len);
                    } else {
                        drops.note("link queue full");
                    }
                });
                // A connected UDP socket reports ICMP errors (nothing
                // listening) as receive errors: keep going.
                if let Err(e) = result {
                    debug!(error = %e, "local UDP receive failed");
                }
            }
            next = datagrams.recv() => match next {
                Some((_, datagram)) => {
                    if send(&sock, &datagram, None).await {
                        traffic.to_service(datagram.len());
                    } else {
                        mux.note_udp_drop(UdpDrop::Delivery);
                        drops.note("local socket would not take it");
                    }
                }
                // Dissociated, or the link ended.
                None => break,
            },
        }
    }
}

async fn connect(local: &str) -> io::Result<UdpSocket> {
    let addr = tokio::net::lookup_host(local)
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "resolves to nothing"))?;
    let bind = if addr.is_ipv4() {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    Ok(sock)
}
