//! UDP services: one association per visitor address, datagrams whole.
//!
//! The server binds the public UDP port. Each distinct visitor address gets
//! its own association (ASSOCIATE), so replies go back to the visitor that
//! asked, and only to it. On the client each association has its own socket,
//! connected to the local service. Associations end after `idle` without
//! traffic. A service has at most `max_associations`, and one source (an
//! IPv4 address, an IPv6 /64) at most `max_associations_per_source`; a new
//! visitor beyond either makes room by ending the least recently used
//! association: its own source's, if that source is at its bound; else,
//! at the service's bound, that of the source holding the most if it holds
//! more than half its bound, else the least recently used of all. So one
//! host cycling through ports cannot lock others out, a few hosts holding
//! many associations give theirs up before a host holding one does, and a
//! flood from ever new (spoofed) addresses takes the idlest, not every flow
//! of one busy address.
//!
//! No per-association buffer is kept: datagrams are read with a non-blocking
//! receive into a per-thread scratch buffer and copied out at their size.
//! The scratch buffer is larger than any UDP datagram, so a datagram above
//! 65,507 bytes (possible over IPv6) is seen whole and refused, never cut.
//! Every dropped datagram is counted; drops are logged at most once a second
//! per service.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
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
use crate::stream::admission::Source;

/// Settings of the server's UDP services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    /// An association with no datagram either way for this long ends.
    /// Default 60 s.
    pub idle: Duration,
    /// Most associations (visitor addresses) per service at once; a new
    /// visitor beyond it ends the least recently used one of the source
    /// holding the most if that holds more than half of
    /// `max_associations_per_source`, else of all. Default 1,024.
    pub max_associations: usize,
    /// Most associations per service from one source (an IPv4 address, an
    /// IPv6 /64); a new visitor beyond it ends that source's least recently
    /// used one. Default 128.
    pub max_associations_per_source: usize,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            idle: Duration::from_secs(60),
            max_associations: 1024,
            max_associations_per_source: 128,
        }
    }
}

/// The shortest [`UdpConfig::idle`] accepted.
pub const MIN_IDLE: Duration = Duration::from_secs(1);

impl UdpConfig {
    /// Whether the settings can work: an idle time shorter than
    /// [`MIN_IDLE`] would end every association between a request and its
    /// reply, and UDP services would stop answering, silently.
    pub fn validate(&self) -> Result<(), crate::stream::ConfigError> {
        if self.idle < MIN_IDLE {
            return Err(crate::stream::ConfigError(format!(
                "udp_idle must be at least 1s (it is how long a UDP visitor may be silent), not {:?}",
                self.idle
            )));
        }
        Ok(())
    }
}

/// A service's associations: by visitor, by id, and in order of last use.
/// Plain data; the service's task owns it.
struct Associations<V> {
    max: usize,
    per_source: usize,
    tick: u64,
    by_visitor: HashMap<SocketAddr, Assoc<V>>,
    by_id: HashMap<u32, SocketAddr>,
    /// Last use → visitor: the first is the least recently used.
    order: BTreeMap<u64, SocketAddr>,
    /// The same, per source.
    by_source: HashMap<Source, BTreeMap<u64, SocketAddr>>,
    /// (associations, source) for every source that has any: the last is
    /// the source holding the most.
    sizes: std::collections::BTreeSet<(usize, Source)>,
}

struct Assoc<V> {
    id: u32,
    tick: u64,
    seen: Instant,
    _visitor: V,
}

impl<V> Associations<V> {
    fn new(max: usize, per_source: usize) -> Self {
        Associations {
            max: max.max(1),
            per_source: per_source.max(1),
            tick: 0,
            by_visitor: HashMap::new(),
            by_id: HashMap::new(),
            order: BTreeMap::new(),
            by_source: HashMap::new(),
            sizes: Default::default(),
        }
    }

    /// Records that `source` went from `from` associations to `to`.
    fn resized(&mut self, source: Source, from: usize, to: usize) {
        if from > 0 {
            self.sizes.remove(&(from, source));
        }
        if to > 0 {
            self.sizes.insert((to, source));
        }
    }

    fn len(&self) -> usize {
        self.by_visitor.len()
    }

    /// Marks `visitor`'s association used now; its id, if it has one.
    fn touch(&mut self, visitor: SocketAddr, now: Instant) -> Option<u32> {
        let a = self.by_visitor.get_mut(&visitor)?;
        self.tick += 1;
        let old = std::mem::replace(&mut a.tick, self.tick);
        a.seen = now;
        self.order.remove(&old);
        self.order.insert(self.tick, visitor);
        if let Some(own) = self.by_source.get_mut(&Source::of(Some(visitor))) {
            own.remove(&old);
            own.insert(self.tick, visitor);
        }
        Some(a.id)
    }

    /// The association to end before `visitor` can have one: the least
    /// recently used of its source if the source is at its bound; else, if
    /// the service is at its bound, the least recently used of the source
    /// holding the most when it holds more than half its bound, else of
    /// all. (Below that, the least recently used of all: a flood from ever
    /// new, spoofed, addresses then takes idle associations first, not
    /// every flow of one busy address, a NAT's, say.)
    fn victim(&self, visitor: SocketAddr) -> Option<u32> {
        let own = self.by_source.get(&Source::of(Some(visitor)));
        let lru = if own.is_some_and(|o| o.len() >= self.per_source) {
            own.and_then(|o| o.values().next())
        } else if self.len() >= self.max {
            match self.sizes.last() {
                Some(&(n, largest)) if n > self.per_source / 2 => {
                    self.by_source.get(&largest).and_then(|o| o.values().next())
                }
                _ => self.order.values().next(),
            }
        } else {
            None
        };
        lru.and_then(|v| self.by_visitor.get(v)).map(|a| a.id)
    }

    fn insert(&mut self, visitor: SocketAddr, id: u32, now: Instant, v: V) {
        self.tick += 1;
        self.by_visitor.insert(
            visitor,
            Assoc {
                id,
                tick: self.tick,
                seen: now,
                _visitor: v,
            },
        );
        self.by_id.insert(id, visitor);
        self.order.insert(self.tick, visitor);
        let source = Source::of(Some(visitor));
        let own = self.by_source.entry(source).or_default();
        own.insert(self.tick, visitor);
        let n = own.len();
        self.resized(source, n - 1, n);
    }

    fn visitor(&self, id: u32) -> Option<SocketAddr> {
        self.by_id.get(&id).copied()
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.by_id.keys().copied()
    }

    /// Forgets association `id`; whether it was there.
    fn remove(&mut self, id: u32) -> bool {
        let Some(visitor) = self.by_id.remove(&id) else {
            return false;
        };
        if let Some(a) = self.by_visitor.remove(&visitor) {
            self.order.remove(&a.tick);
            let source = Source::of(Some(visitor));
            if let Some(own) = self.by_source.get_mut(&source) {
                let n = own.len();
                own.remove(&a.tick);
                let left = own.len();
                if left == 0 {
                    self.by_source.remove(&source);
                }
                self.resized(source, n, left);
            }
        }
        true
    }

    /// The associations unused for `idle`, oldest first.
    fn idle_since(&self, now: Instant, idle: Duration) -> Vec<u32> {
        self.order
            .values()
            .filter_map(|v| self.by_visitor.get(v))
            .take_while(|a| now.duration_since(a.seen) >= idle)
            .map(|a| a.id)
            .collect()
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

/// Most datagrams [`drain`] reads at once: a flood that arrives faster than
/// it is handled must not keep the task (and the worker thread it runs on,
/// with every other session's tasks queued behind it) from yielding.
const DRAIN_BATCH: usize = 256;

/// Reads the datagrams waiting on `sock` (without blocking), up to
/// [`DRAIN_BATCH`], and passes each, copied out at its size, to `each`.
/// `Ok(true)` if it stopped at the batch: more may be waiting, and the
/// caller should yield before it reads again.
fn drain(
    sock: &UdpSocket,
    mut each: impl FnMut(io::Result<(Bytes, SocketAddr)>, usize),
) -> io::Result<bool> {
    for _ in 0..DRAIN_BATCH {
        let got = SCRATCH_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            sock.try_recv_from(&mut buf)
                .map(|(n, from)| (Bytes::copy_from_slice(&buf[..n.min(MAX_DATAGRAM)]), from, n))
        });
        match got {
            Ok((datagram, from, n)) => each(Ok((datagram, from)), n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
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
    for (i, &p) in candidates.iter().enumerate() {
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(ip, p)).await {
            return Ok(s);
        }
        super::server::yield_between_binds(i).await;
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
        let mut table: Associations<Visitor> = Associations::new(
            self.config.max_associations,
            self.config.max_associations_per_source,
        );
        let mut sweep =
            tokio::time::interval((self.config.idle / 4).max(Duration::from_millis(20)));
        loop {
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_err() {
                        return;
                    }
                    let (mux, index) = (&self.mux, self.index);
                    let traffic = &self.traffic;
                    let result = drain(&self.socket, |got, n| {
                        let Ok((datagram, from)) = got else { return };
                        if n > MAX_DATAGRAM {
                            mux.note_udp_drop(UdpDrop::Oversize);
                            drops.note("datagram above 65,507 bytes");
                            return;
                        }
                        let now = Instant::now();
                        let id = match table.touch(from, now) {
                            Some(id) => id,
                            None => {
                                if mux.backlogged() {
                                    // Evicting would free nothing usable.
                                    mux.note_udp_drop(UdpDrop::Limit);
                                    drops.note("the link is backed up");
                                    return;
                                }
                                if let Some(old) = table.victim(from) {
                                    debug!(%from, evicted = old, "UDP association ended to make room");
                                    table.remove(old);
                                    mux.dissociate(old);
                                    mux.note_udp_eviction();
                                }
                                let Ok(id) = mux.associate(index, from, to_visitors.clone()) else {
                                    mux.note_udp_drop(UdpDrop::Limit);
                                    drops.note("too many streams on the link, or the link is backed up");
                                    return;
                                };
                                debug!(%from, id, "new UDP association");
                                table.insert(from, id, now, traffic.visitor());
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
                    match result {
                        Ok(true) => tokio::task::yield_now().await,
                        Ok(false) => {}
                        Err(e) => debug!(error = %e, "UDP receive failed"),
                    }
                }
                Some((id, datagram)) = from_link.recv() => {
                    let Some(visitor) = table.visitor(id) else { continue };
                    table.touch(visitor, Instant::now());
                    if send(&self.socket, &datagram, Some(visitor)).await {
                        self.traffic.to_visitors(datagram.len());
                    } else {
                        self.mux.note_udp_drop(UdpDrop::Delivery);
                        drops.note("visitor's socket would not take it");
                    }
                }
                _ = stop.cancelled() => {
                    for id in table.ids() {
                        self.mux.dissociate(id);
                    }
                    return;
                }
                Some(id) = self.dissociated.recv() => {
                    table.remove(id);
                }
                _ = sweep.tick() => {
                    for id in table.idle_since(Instant::now(), self.config.idle) {
                        debug!(id, "UDP association expired");
                        table.remove(id);
                        self.mux.dissociate(id);
                    }
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
                match result {
                    Ok(true) => tokio::task::yield_now().await,
                    Ok(false) => {}
                    Err(e) => debug!(error = %e, "local UDP receive failed"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, ip], port))
    }

    /// A flood is read a batch at a time: the task yields between batches
    /// however fast datagrams come, and nothing is lost between them.
    #[tokio::test]
    async fn a_flood_is_read_a_batch_at_a_time() {
        // A receive buffer that holds the whole flood (266 small datagrams
        // take about 200 KiB, within even the stock 208 KiB doubled; more
        // is asked for where the system allows it).
        let raw = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
        raw.set_recv_buffer_size(4 << 20).unwrap();
        raw.set_nonblocking(true).unwrap();
        raw.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let sock = UdpSocket::from_std(raw.into()).unwrap();
        let to = sock.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = DRAIN_BATCH + 10;
        for i in 0..sent {
            sender.send_to(&(i as u32).to_le_bytes(), to).unwrap();
        }
        let mut got = Vec::new();
        let mut batches = Vec::new();
        for _ in 0..100 {
            let ready = tokio::time::timeout(Duration::from_secs(5), sock.readable()).await;
            if ready.is_err() {
                break;
            }
            let before = got.len();
            let more = drain(&sock, |d, _| got.push(d.unwrap().0)).unwrap();
            batches.push(got.len() - before);
            if !more && got.len() == sent {
                break;
            }
        }
        assert_eq!(got.len(), sent, "{batches:?}");
        assert!(batches.iter().all(|&n| n <= DRAIN_BATCH), "{batches:?}");
        assert_eq!(batches[..2], [DRAIN_BATCH, 10], "{batches:?}");
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d[..], (i as u32).to_le_bytes()[..]);
        }
    }

    #[test]
    fn a_source_at_its_bound_ends_its_own_least_recently_used() {
        let now = Instant::now();
        let mut t = Associations::new(100, 3);
        t.insert(at(9, 1), 90, now, ());
        for (id, port) in [(1, 1), (2, 2), (3, 3)] {
            assert_eq!(t.victim(at(1, port)), None);
            t.insert(at(1, port), id, now, ());
        }
        // Port 1 was used again: port 2 is now the least recently used.
        assert_eq!(t.touch(at(1, 1), now), Some(1));
        assert_eq!(t.victim(at(1, 4)), Some(2));
        assert!(t.remove(2));
        t.insert(at(1, 4), 4, now, ());
        assert_eq!(t.victim(at(1, 5)), Some(3));
        // Another source is not at its bound, and the service is not full.
        assert_eq!(t.victim(at(2, 1)), None);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn a_full_service_ends_its_least_recently_used() {
        let now = Instant::now();
        let mut t = Associations::new(3, 100);
        for ip in 1..=3 {
            t.insert(at(ip, 1), u32::from(ip), now, ());
        }
        t.touch(at(1, 1), now);
        assert_eq!(t.victim(at(4, 1)), Some(2));
        assert_eq!(t.visitor(2), Some(at(2, 1)));
        assert!(t.remove(2));
        assert!(!t.remove(2));
        assert_eq!(t.visitor(2), None);
        t.insert(at(4, 1), 4, now, ());
        assert_eq!(t.victim(at(5, 1)), Some(3));
        assert_eq!(t.order.len(), 3);
        assert_eq!(t.by_source.values().map(BTreeMap::len).sum::<usize>(), 3);
    }

    /// At the service's bound the source holding the most gives one up if
    /// it holds more than half its bound, not the host with one association
    /// that happens to be the least recently used: a few hosts (or IPv6
    /// /64s) filling the table cannot push out everyone else.
    #[test]
    fn a_full_service_takes_from_the_source_holding_most() {
        let now = Instant::now();
        let mut t = Associations::new(10, 8);
        t.insert(at(9, 1), 90, now, ());
        for port in 1..=8 {
            t.insert(at(1, port), u32::from(port), now, ());
        }
        t.insert(at(8, 1), 80, now, ());
        // 10.0.0.9 is the least recently used of all, but holds one.
        assert_eq!(t.victim(at(7, 1)), Some(1));
        // Two sources of four and one each: one of the fours gives.
        let mut t = Associations::new(10, 6);
        t.insert(at(9, 1), 90, now, ());
        t.insert(at(8, 1), 80, now, ());
        for port in 1..=4 {
            t.insert(at(1, port), u32::from(port), now, ());
            t.insert(at(2, port), 10 + u32::from(port), now, ());
        }
        let victim = t.victim(at(7, 1));
        assert!(matches!(victim, Some(1 | 11)), "{victim:?}");
        assert!(t.remove(1));
        t.insert(at(7, 1), 70, now, ());
        assert_eq!(t.victim(at(6, 1)), Some(11), "now 10.0.0.2 holds most");
        // A source holding no more than half its bound (a NAT with a few
        // flows) is not singled out: the least recently used of all goes.
        let mut t = Associations::new(6, 8);
        t.insert(at(9, 1), 90, now, ());
        for port in 1..=4 {
            t.insert(at(1, port), u32::from(port), now, ());
        }
        t.insert(at(8, 1), 80, now, ());
        assert_eq!(t.victim(at(7, 1)), Some(90));
        // Every source with one: the least recently used of all.
        let mut t = Associations::new(3, 8);
        for ip in 1..=3 {
            t.insert(at(ip, 1), u32::from(ip), now, ());
        }
        assert_eq!(t.victim(at(4, 1)), Some(1));
        assert_eq!(t.sizes.len(), 3);
        for id in 1..=3 {
            assert!(t.remove(id));
        }
        assert!(t.sizes.is_empty() && t.by_source.is_empty());
    }

    #[test]
    fn idle_ones_are_found_oldest_first() {
        let t0 = Instant::now();
        let mut t = Associations::new(10, 10);
        t.insert(at(1, 1), 1, t0, ());
        t.insert(at(1, 2), 2, t0 + Duration::from_secs(5), ());
        t.insert(at(1, 3), 3, t0 + Duration::from_secs(10), ());
        t.touch(at(1, 1), t0 + Duration::from_secs(11));
        let idle = Duration::from_secs(8);
        assert_eq!(t.idle_since(t0 + Duration::from_secs(14), idle), vec![2]);
        assert_eq!(
            t.idle_since(t0 + Duration::from_secs(19), idle),
            vec![2, 3, 1]
        );
    }
}
