//! Many tunnel streams over one resumable stream.
//!
//! Three tasks per session:
//!
//! - the **reader** decodes frames and dispatches them; it never waits on a
//!   tunnel stream (each stream's inbound data is bounded by the credit the
//!   stream granted), so one stalled visitor never stalls the others;
//! - the **writer** sends queued frames. Two queues: frames that open, carry
//!   or end a stream (OPEN, DATA, FIN, RESET and their UDP kin) keep their
//!   order in one; WINDOW, PING, PONG and session frames go in the other and
//!   jump ahead, so credit and liveness never wait behind bulk data;
//! - the **pinger** sends a PING every interval, and when nothing at all has
//!   arrived for the ping timeout it forces the underlying stream to
//!   reconnect: a silently dead link is replaced, not waited on.
//!
//! Flow control is credit-based: a sender may have at most its credit of DATA
//! outstanding per stream, starting at [`INITIAL_WINDOW`]; the receiver grants
//! more (WINDOW) as its side writes bytes out. A stream that keeps consuming
//! whole half-windows has its window doubled at each grant, up to
//! `max_window` and within a session-wide budget, so one bulk transfer runs at
//! the link's speed while idle and stalled streams keep small windows. A peer
//! that sends beyond its credit has the stream reset.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::frame::{Frame, INITIAL_WINDOW, MAX_CREDIT, MAX_STREAM};
use super::pool;
use crate::stream::{Handle, ReadHalf, Stream, WriteHalf};

/// Which end of the link this is; it decides stream id parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The tunnel client: opens odd ids.
    Client,
    /// The tunnel server: opens even ids.
    Server,
}

impl Side {
    fn first_id(self) -> u32 {
        match self {
            Side::Client => 1,
            Side::Server => 2,
        }
    }

    /// Whether `id` belongs to the ids the *other* side opens.
    fn is_peers(self, id: u32) -> bool {
        (id % 2 == 1) == (self == Side::Server)
    }
}

/// Settings of the multiplexer.
#[derive(Debug, Clone, PartialEq)]
pub struct MuxConfig {
    /// The largest a stream's receive window grows to (from
    /// [`INITIAL_WINDOW`], 1 MiB, doubling while the stream consumes whole
    /// half-windows). Buffered memory per stream is bounded by its window.
    /// Default 16 MiB.
    pub max_window: u32,
    /// The most window growth, beyond the initial windows, all of a session's
    /// streams together. Default 64 MiB.
    pub window_budget: u64,
    /// How often to PING. Default 5 s.
    pub ping_interval: Duration,
    /// Silence after which the link is declared dead and the stream forced
    /// to reconnect. Default 15 s.
    pub ping_timeout: Duration,
    /// The most streams (and UDP associations) open at once. Default 65,536.
    pub max_streams: usize,
    /// The most bytes of UDP datagrams waiting to go on the link; beyond it
    /// datagrams are dropped (and counted), so a UDP burst can neither grow
    /// memory without bound nor crowd out TCP streams. Default 1 MiB.
    pub udp_queue: usize,
    /// The most bytes of datagrams received from the link and not yet taken
    /// by their sockets, all associations together; beyond it datagrams are
    /// dropped (and counted). It must exceed what a resume can deliver at once
    /// (history plus UDP queue), or a resume burst would be cut. Default 8 MiB.
    pub udp_inbound: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            max_window: 16 << 20,
            window_budget: 64 << 20,
            ping_interval: Duration::from_secs(5),
            ping_timeout: Duration::from_secs(15),
            max_streams: 65_536,
            udp_queue: 1 << 20,
            udp_inbound: 8 << 20,
        }
    }
}

/// Why a stream or association could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// `max_streams` streams and associations are open.
    #[error("too many streams")]
    TooMany,
    /// The peer opened an id that is in use or not its own.
    #[error("stream id in use or of the wrong parity")]
    BadId,
}

/// Why a mux ended.
#[derive(Debug, Clone)]
pub enum End {
    /// The peer said goodbye.
    Goodbye(String),
    /// We said goodbye.
    Closed(String),
    /// The stream ended: closed by the peer, refused, expired.
    Stream(String),
    /// The peer broke the framing.
    Protocol(String),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Goodbye(r) => write!(f, "peer said goodbye: {r}"),
            End::Closed(r) => write!(f, "closed: {r}"),
            End::Stream(r) => write!(f, "link ended: {r}"),
            End::Protocol(r) => write!(f, "protocol error: {r}"),
        }
    }
}

/// What arrives on a tunnel stream.
#[derive(Debug)]
pub enum Inbound {
    /// Bytes.
    Data(Bytes),
    /// The peer will send no more.
    Fin,
    /// The stream is aborted.
    Reset,
}

/// Per-stream state shared by the mux and the stream's user.
pub(crate) struct Slot {
    inbound: mpsc::UnboundedSender<Inbound>,
    /// Bytes we may still send.
    credit: AtomicU32,
    credit_changed: Notify,
    /// Bytes received and not yet granted back.
    unacked: AtomicU32,
    /// This side's receive window for the stream.
    window: AtomicU32,
    /// This side sent FIN.
    fin_sent: AtomicBool,
    /// The peer's FIN arrived.
    fin_received: AtomicBool,
}

/// Where the mux puts datagrams of UDP associations, with their id.
pub type DatagramSender = mpsc::UnboundedSender<(u32, Bytes)>;

/// Receives datagrams from the link; each taken frees the link's inbound
/// budget (see [`MuxConfig::udp_inbound`]).
pub struct DatagramReceiver {
    rx: mpsc::UnboundedReceiver<(u32, Bytes)>,
    mux: Arc<Shared>,
}

impl std::fmt::Debug for DatagramReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramReceiver").finish_non_exhaustive()
    }
}

impl DatagramReceiver {
    /// The next datagram, or `None` once the association (or mux) is gone.
    pub async fn recv(&mut self) -> Option<(u32, Bytes)> {
        let got = self.rx.recv().await?;
        self.mux
            .udp_inbound
            .fetch_sub(got.1.len() as u64, Ordering::Relaxed);
        Some(got)
    }
}

/// Counters of the UDP traffic on one link.
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// Datagrams handed to the link.
    pub sent: AtomicU64,
    /// Datagrams received from the link.
    pub received: AtomicU64,
    /// Datagrams dropped because the link's UDP queue was full.
    pub dropped_queue: AtomicU64,
    /// Datagrams dropped because an association's receiver was behind.
    pub dropped_inbound: AtomicU64,
    /// Datagrams that could not be delivered to their socket.
    pub dropped_delivery: AtomicU64,
    /// Datagrams above 65,507 bytes, refused.
    pub dropped_oversize: AtomicU64,
    /// Datagrams from visitors beyond the association limit.
    pub dropped_limit: AtomicU64,
    /// Associations ended to make room for a newer visitor.
    pub evicted: AtomicU64,
}

/// Why a datagram was dropped outside the mux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpDrop {
    /// Its socket would not take it.
    Delivery,
    /// Above 65,507 bytes.
    Oversize,
    /// The service's association limit was reached.
    Limit,
}

/// A snapshot of [`UdpCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams handed to the link.
    pub sent: u64,
    /// Datagrams received from the link.
    pub received: u64,
    /// Datagrams dropped because the link's UDP queue was full.
    pub dropped_queue: u64,
    /// Datagrams dropped because an association's receiver was behind.
    pub dropped_inbound: u64,
    /// Datagrams that could not be delivered to their socket.
    pub dropped_delivery: u64,
    /// Datagrams above 65,507 bytes, refused.
    pub dropped_oversize: u64,
    /// Datagrams from visitors beyond the association limit.
    pub dropped_limit: u64,
    /// Associations ended to make room for a newer visitor (the least
    /// recently used, of its source if that source was at its limit).
    pub evicted: u64,
}

impl UdpStats {
    /// All drops together.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue
            + self.dropped_inbound
            + self.dropped_delivery
            + self.dropped_oversize
            + self.dropped_limit
    }
}

impl UdpCounters {
    fn snapshot(&self) -> UdpStats {
        UdpStats {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped_queue: self.dropped_queue.load(Ordering::Relaxed),
            dropped_inbound: self.dropped_inbound.load(Ordering::Relaxed),
            dropped_delivery: self.dropped_delivery.load(Ordering::Relaxed),
            dropped_oversize: self.dropped_oversize.load(Ordering::Relaxed),
            dropped_limit: self.dropped_limit.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// What the mux hands to the session above it.
#[derive(Debug)]
pub enum Event {
    /// A session frame (login, publishing).
    Control(Frame),
    /// The peer started a UDP association; its datagrams arrive on `datagrams`.
    Associate {
        /// The association.
        id: u32,
        /// The service.
        index: u16,
        /// The visitor.
        visitor: SocketAddr,
        /// Its datagrams, in order.
        datagrams: DatagramReceiver,
    },
    /// The peer ended a UDP association.
    Dissociate {
        /// The association.
        id: u32,
    },
    /// The peer opened a stream.
    Open {
        /// The stream.
        stream: MuxStream,
        /// The service.
        index: u16,
        /// The visitor.
        visitor: SocketAddr,
    },
}

struct Table {
    slots: HashMap<u32, Arc<Slot>>,
    assocs: HashMap<u32, DatagramSender>,
    next: u32,
}

impl Table {
    fn taken(&self, id: u32) -> bool {
        self.slots.contains_key(&id) || self.assocs.contains_key(&id)
    }

    fn full(&self, max: usize) -> bool {
        self.slots.len() + self.assocs.len() >= max
    }

    /// A fresh id of `side`'s parity, not reused until the space wraps.
    fn allocate(&mut self, side: Side) -> u32 {
        loop {
            let id = self.next;
            self.next = if id + 2 > MAX_STREAM {
                side.first_id()
            } else {
                id + 2
            };
            if !self.taken(id) {
                return id;
            }
        }
    }
}

pub(crate) struct Shared {
    side: Side,
    config: MuxConfig,
    table: Mutex<Table>,
    control: mpsc::UnboundedSender<Frame>,
    data: mpsc::UnboundedSender<Frame>,
    udp: mpsc::UnboundedSender<Frame>,
    /// Bytes of datagrams in the UDP queue.
    udp_queued: AtomicU64,
    /// Bytes of datagrams received and not yet taken by their sockets.
    udp_inbound: AtomicU64,
    udp_stats: UdpCounters,
    end: watch::Sender<Option<End>>,
    handle: Handle,
    /// Window growth granted beyond the initial windows, all streams.
    window_extra: AtomicU64,
    /// Milliseconds since `epoch` when the last bytes arrived.
    last_rx: AtomicU64,
    epoch: Instant,
    /// The nonce of the latest PING not yet answered. The reader queues one
    /// PONG per run of PINGs, and the writer fills in this nonce as it takes
    /// it: a peer that sends PINGs and never reads is owed one PONG, not one
    /// per PING.
    pong_owed: Mutex<Option<u64>>,
}

/// A handle on a running mux; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux")
            .field("side", &self.shared.side)
            .finish()
    }
}

/// One tunnel stream, for its user (a bridge to a socket).
pub struct MuxStream {
    id: u32,
    slot: Arc<Slot>,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    mux: Arc<Shared>,
    /// Bytes written out since the last grant.
    consumed: u32,
    /// Reset by either side.
    reset: bool,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

impl Mux {
    /// Runs a mux over `stream`; session events arrive on the receiver.
    pub fn start(stream: Stream, side: Side, config: MuxConfig) -> (Mux, mpsc::Receiver<Event>) {
        let handle = stream.handle();
        let (read, write) = stream.into_split();
        let (control, control_rx) = mpsc::unbounded_channel();
        let (data, data_rx) = mpsc::unbounded_channel();
        let (udp, udp_rx) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::channel(256);
        let shared = Arc::new(Shared {
            side,
            table: Mutex::new(Table {
                slots: HashMap::new(),
                assocs: HashMap::new(),
                next: side.first_id(),
            }),
            config,
            control,
            data,
            udp,
            udp_queued: AtomicU64::new(0),
            udp_inbound: AtomicU64::new(0),
            udp_stats: UdpCounters::default(),
            window_extra: AtomicU64::new(0),
            end: watch::channel(None).0,
            handle,
            last_rx: AtomicU64::new(0),
            epoch: Instant::now(),
            pong_owed: Mutex::new(None),
        });
        let reader = tokio::spawn(reader(shared.clone(), read, events));
        let writer = tokio::spawn(writer(shared.clone(), write, [control_rx, data_rx, udp_rx]));
        let pinger = tokio::spawn(pinger(shared.clone()));
        let watcher = shared.clone();
        tokio::spawn(async move {
            let mut end = watcher.end.subscribe();
            let _ = end.wait_for(Option::is_some).await;
            // The writer finishes on its own (it sends a pending goodbye).
            reader.abort();
            pinger.abort();
            watcher.reset_all();
            let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
        });
        (Mux { shared }, events_rx)
    }

    /// The underlying stream's handle.
    pub fn stream(&self) -> &Handle {
        &self.shared.handle
    }

    /// Queues a session frame.
    pub fn send(&self, frame: Frame) {
        let _ = self.shared.control.send(frame);
    }

    /// Opens a stream to the peer for a visitor of service `index`.
    pub fn open(&self, index: u16, visitor: SocketAddr) -> Result<MuxStream, StreamError> {
        let (id, stream) = self.shared.register(None)?;
        let _ = self.shared.data.send(Frame::Open { id, index, visitor });
        Ok(stream)
    }

    /// Sends GOODBYE and ends the mux.
    pub fn goodbye(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.send(Frame::Goodbye {
            reason: reason.clone(),
        });
        self.shared.finish(End::Closed(reason));
    }

    /// Waits until the mux has ended, and says why.
    pub async fn ended(&self) -> End {
        let mut end = self.shared.end.subscribe();
        match end.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| End::Closed("ended".into())),
            Err(_) => End::Closed("ended".into()),
        }
    }

    /// Waits until the underlying stream has closed (after a goodbye, once
    /// everything queued went out).
    pub async fn stream_closed(&self) {
        let mut events = self.shared.handle.events();
        while self.shared.handle.ended().is_none() {
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = events.recv().await {
                return;
            }
        }
    }

    /// Whether the peer is there: the link is connected and something
    /// arrives (a PONG to the PING sent now, or anything else) within
    /// `within`.
    pub async fn answers_ping(&self, within: Duration) -> bool {
        let s = &self.shared;
        if self.is_ended() || !s.handle.stats().connected {
            return false;
        }
        let asked = s.epoch.elapsed().as_millis() as u64;
        let _ = s.control.send(Frame::Ping { nonce: u64::MAX });
        let deadline = Instant::now() + within;
        // Bounded: at most `within` of 10 ms steps.
        while Instant::now() < deadline {
            // Bytes in the same millisecond as the ask count: a link that
            // carried something that recently is alive.
            if s.last_rx.load(Ordering::Relaxed) >= asked {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Whether the mux has ended.
    pub fn is_ended(&self) -> bool {
        self.shared.end.borrow().is_some()
    }

    /// Streams and associations open now.
    pub fn streams(&self) -> usize {
        let t = self.shared.table.lock();
        t.slots.len() + t.assocs.len()
    }

    /// A channel for the peer's datagrams of one or more associations.
    pub fn datagram_channel(&self) -> (DatagramSender, DatagramReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            DatagramReceiver {
                rx,
                mux: self.shared.clone(),
            },
        )
    }

    /// Starts a UDP association for a visitor of service `index`; the peer's
    /// datagrams for it go to `datagrams`.
    pub fn associate(
        &self,
        index: u16,
        visitor: SocketAddr,
        datagrams: DatagramSender,
    ) -> Result<u32, StreamError> {
        let id = {
            let mut table = self.shared.table.lock();
            if table.full(self.shared.config.max_streams) {
                return Err(StreamError::TooMany);
            }
            let id = table.allocate(self.shared.side);
            table.assocs.insert(id, datagrams);
            id
        };
        let _ = self
            .shared
            .udp
            .send(Frame::Associate { id, index, visitor });
        Ok(id)
    }

    /// Hands a datagram to the link; `false` if it was dropped because the
    /// link's UDP queue is full (counted).
    pub fn send_datagram(&self, id: u32, payload: Bytes) -> bool {
        let s = &self.shared;
        let len = payload.len() as u64;
        let queued = s.udp_queued.fetch_add(len, Ordering::Relaxed);
        if queued + len > s.config.udp_queue as u64 {
            s.udp_queued.fetch_sub(len, Ordering::Relaxed);
            s.udp_stats.dropped_queue.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        s.udp_stats.sent.fetch_add(1, Ordering::Relaxed);
        let _ = s.udp.send(Frame::Datagram { id, payload });
        true
    }

    /// Ends a UDP association and tells the peer.
    pub fn dissociate(&self, id: u32) {
        if self.shared.table.lock().assocs.remove(&id).is_some() {
            let _ = self.shared.udp.send(Frame::Dissociate { id });
        }
    }

    /// The link's UDP counters.
    pub fn udp_stats(&self) -> UdpStats {
        self.shared.udp_stats.snapshot()
    }

    /// Counts an association ended to make room for a newer visitor.
    pub fn note_udp_eviction(&self) {
        self.shared
            .udp_stats
            .evicted
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a datagram dropped outside the mux.
    pub fn note_udp_drop(&self, why: UdpDrop) {
        let c = &self.shared.udp_stats;
        match why {
            UdpDrop::Delivery => &c.dropped_delivery,
            UdpDrop::Oversize => &c.dropped_oversize,
            UdpDrop::Limit => &c.dropped_limit,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// Ends the mux (first reason wins).
    fn finish(&self, end: End) {
        self.end.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(end);
            true
        });
    }

    fn touch(&self) {
        self.last_rx
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn silence(&self) -> Duration {
        let last = Duration::from_millis(self.last_rx.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Registers a stream: ours (`peer_id` None: allocate an id) or the
    /// peer's (`Some(id)`).
    fn register(self: &Arc<Self>, peer_id: Option<u32>) -> Result<(u32, MuxStream), StreamError> {
        let mut table = self.table.lock();
        if table.full(self.config.max_streams) {
            return Err(StreamError::TooMany);
        }
        let id = match peer_id {
            Some(id) => {
                if !self.side.is_peers(id) || table.taken(id) {
                    return Err(StreamError::BadId);
                }
                id
            }
            None => table.allocate(self.side),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let slot = Arc::new(Slot {
            inbound: tx,
            credit: AtomicU32::new(INITIAL_WINDOW),
            credit_changed: Notify::new(),
            unacked: AtomicU32::new(0),
            window: AtomicU32::new(INITIAL_WINDOW),
            fin_sent: AtomicBool::new(false),
            fin_received: AtomicBool::new(false),
        });
        table.slots.insert(id, slot.clone());
        Ok((
            id,
            MuxStream {
                id,
                slot,
                inbound: rx,
                mux: self.clone(),
                consumed: 0,
                reset: false,
            },
        ))
    }

    /// Marks one direction of stream `id` finished. Once both are, the slot
    /// goes at once, under the table lock, so an id the peer reuses after
    /// seeing our FIN is never still taken here.
    fn half_close(&self, id: u32, slot: &Arc<Slot>, ours: bool) {
        let mut table = self.table.lock();
        let (mine, theirs) = if ours {
            (&slot.fin_sent, &slot.fin_received)
        } else {
            (&slot.fin_received, &slot.fin_sent)
        };
        mine.store(true, Ordering::Relaxed);
        if theirs.load(Ordering::Relaxed) {
            self.forget(&mut table, id, slot);
        }
    }

    /// Drops stream `id` from the table if it is still `slot`, and returns
    /// its window growth to the session's budget.
    fn forget(&self, table: &mut Table, id: u32, slot: &Arc<Slot>) {
        if table.slots.get(&id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            table.slots.remove(&id);
            self.release_window(slot);
        }
    }

    fn release_window(&self, slot: &Slot) {
        let extra = slot
            .window
            .load(Ordering::Relaxed)
            .saturating_sub(INITIAL_WINDOW);
        self.window_extra
            .fetch_sub(u64::from(extra), Ordering::Relaxed);
    }

    fn slot(&self, id: u32) -> Option<Arc<Slot>> {
        self.table.lock().slots.get(&id).cloned()
    }

    fn remove(&self, id: u32, slot: &Arc<Slot>) {
        self.forget(&mut self.table.lock(), id, slot);
    }

    /// Aborts every stream and association (the mux ended).
    fn reset_all(&self) {
        self.table.lock().assocs.clear();
        let slots: Vec<_> = self.table.lock().slots.drain().collect();
        for (_, slot) in slots {
            self.release_window(&slot);
            let _ = slot.inbound.send(Inbound::Reset);
            slot.credit_changed.notify_one();
        }
    }

    fn dispatch(self: &Arc<Self>, frame: Frame) -> Result<Option<Event>, End> {
        match frame {
            Frame::Data { id, payload } => {
                let Some(slot) = self.slot(id) else {
                    debug!(id, "data for an unknown stream");
                    return Ok(None);
                };
                let unacked = slot
                    .unacked
                    .fetch_add(payload.len() as u32, Ordering::Relaxed)
                    + payload.len() as u32;
                if unacked > slot.window.load(Ordering::Relaxed) {
                    warn!(id, unacked, "peer overran the stream window; stream reset");
                    self.remove(id, &slot);
                    let _ = slot.inbound.send(Inbound::Reset);
                    let _ = self.data.send(Frame::Reset { id });
                    return Ok(None);
                }
                // See SHARE_PAYLOAD.
                let payload = if payload.len() >= SHARE_PAYLOAD {
                    payload
                } else {
                    Bytes::copy_from_slice(&payload)
                };
                let _ = slot.inbound.send(Inbound::Data(payload));
            }
            Frame::Window { id, increment } => {
                if let Some(slot) = self.slot(id) {
                    let credit = slot.credit.load(Ordering::Relaxed);
                    if u64::from(credit) + u64::from(increment) > MAX_CREDIT {
                        return Err(End::Protocol(format!(
                            "stream {id}: credit beyond {MAX_CREDIT} bytes"
                        )));
                    }
                    slot.credit.fetch_add(increment, Ordering::Relaxed);
                    slot.credit_changed.notify_one();
                }
            }
            Frame::Fin { id } => {
                if let Some(slot) = self.slot(id) {
                    self.half_close(id, &slot, false);
                    let _ = slot.inbound.send(Inbound::Fin);
                }
            }
            Frame::Reset { id } => {
                let slot = self.table.lock().slots.remove(&id);
                if let Some(slot) = slot {
                    self.release_window(&slot);
                    let _ = slot.inbound.send(Inbound::Reset);
                    slot.credit_changed.notify_one();
                }
            }
            Frame::Open { id, index, visitor } => match self.register(Some(id)) {
                Ok((_, stream)) => {
                    return Ok(Some(Event::Open {
                        stream,
                        index,
                        visitor,
                    }));
                }
                Err(why) => {
                    debug!(id, %why, "open refused");
                    let _ = self.data.send(Frame::Reset { id });
                }
            },
            Frame::Associate { id, index, visitor } => {
                let mut table = self.table.lock();
                if !self.side.is_peers(id) || table.taken(id) || table.full(self.config.max_streams)
                {
                    debug!(id, "association refused");
                    drop(table);
                    let _ = self.udp.send(Frame::Dissociate { id });
                    return Ok(None);
                }
                let (tx, rx) = mpsc::unbounded_channel();
                table.assocs.insert(id, tx);
                let datagrams = DatagramReceiver {
                    rx,
                    mux: self.clone(),
                };
                return Ok(Some(Event::Associate {
                    id,
                    index,
                    visitor,
                    datagrams,
                }));
            }
            Frame::Datagram { id, payload } => {
                self.udp_stats.received.fetch_add(1, Ordering::Relaxed);
                let tx = self.table.lock().assocs.get(&id).cloned();
                if let Some(tx) = tx {
                    let len = payload.len() as u64;
                    let queued = self.udp_inbound.fetch_add(len, Ordering::Relaxed);
                    if queued + len > self.config.udp_inbound as u64 {
                        self.udp_inbound.fetch_sub(len, Ordering::Relaxed);
                        self.udp_stats
                            .dropped_inbound
                            .fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Copy out: the reader's buffer must not be pinned.
                        let datagram = Bytes::copy_from_slice(&payload);
                        if tx.send((id, datagram)).is_err() {
                            self.udp_inbound.fetch_sub(len, Ordering::Relaxed);
                        }
                    }
                }
            }
            Frame::Dissociate { id } => {
                if self.table.lock().assocs.remove(&id).is_some() {
                    return Ok(Some(Event::Dissociate { id }));
                }
            }
            Frame::Ping { nonce } => {
                if self.pong_owed.lock().replace(nonce).is_none() {
                    let _ = self.control.send(Frame::Pong { nonce });
                }
            }
            Frame::Pong { .. } => {}
            Frame::Goodbye { reason } => return Err(End::Goodbye(reason)),
            other => return Ok(Some(Event::Control(other))),
        }
        Ok(None)
    }
}

impl Shared {
    /// A PONG leaving the control queue answers the latest PING owed.
    fn answer_latest(&self, frame: Frame) -> Frame {
        match frame {
            Frame::Pong { nonce } => Frame::Pong {
                nonce: self.pong_owed.lock().take().unwrap_or(nonce),
            },
            other => other,
        }
    }
}

/// Payloads at least this large are passed on as slices of the reader's
/// pooled buffer; a stalled stream holding one pins the buffer, at most four
/// times the payload. Smaller ones are copied out and pin nothing.
const SHARE_PAYLOAD: usize = pool::BUF_SIZE / 4;

async fn reader(shared: Arc<Shared>, mut read: ReadHalf, events: mpsc::Sender<Event>) {
    // Undecoded bytes: at most one partial frame between reads.
    let mut cur = Bytes::new();
    let end = 'read: loop {
        loop {
            let frame = match Frame::decode_bytes(&mut cur) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let _ = shared.control.send(Frame::Goodbye {
                        reason: format!("protocol error: {e}"),
                    });
                    break 'read End::Protocol(e.to_string());
                }
            };
            match shared.dispatch(frame) {
                Ok(None) => {}
                Ok(Some(event)) => {
                    if events.send(event).await.is_err() {
                        break 'read End::Closed("session gone".into());
                    }
                }
                Err(end) => break 'read end,
            }
        }
        // A fresh pooled buffer, with the partial frame (if any) in front.
        let mut buf = pool::take();
        let keep = cur.len();
        crate::proto::copy::copy(&cur, &mut buf[..keep]);
        match read.read(&mut buf[keep..]).await {
            Ok(0) => break End::Stream("closed by the peer".into()),
            Ok(n) => {
                shared.touch();
                cur = pool::freeze(buf, keep + n);
            }
            Err(e) => break End::Stream(e.to_string()),
        }
    };
    shared.finish(end);
}

/// Encoded frames waiting to be written, and their total size.
#[derive(Default)]
struct Outbox {
    pieces: VecDeque<Bytes>,
    bytes: usize,
    headers: BytesMut,
}

impl Outbox {
    fn push(&mut self, frame: Frame) {
        // DATA and DATAGRAM payloads go out as they are, without a copy.
        let payload = frame.encode_split(&mut self.headers);
        let header = self.headers.split().freeze();
        self.bytes += header.len();
        self.pieces.push_back(header);
        // (An empty piece would stay at the front for ever: a write of
        // nothing but empty slices takes 0 bytes.)
        if let Some(p) = payload.filter(|p| !p.is_empty()) {
            self.bytes += p.len();
            self.pieces.push_back(p);
        }
    }

    /// The mux has ended: takes what is queued for control (a refusal, a
    /// goodbye), which must still go out; true once nothing is left to send.
    fn drain_control(&mut self, control: &mut mpsc::UnboundedReceiver<Frame>) -> bool {
        while let Ok(f) = control.try_recv() {
            self.push(f);
        }
        self.pieces.is_empty()
    }

    fn advance(&mut self, n: usize) {
        self.bytes -= n;
        advance_pieces(&mut self.pieces, n);
    }
}

/// Drops the first `n` bytes of `pieces` (what a vectored write took).
pub(super) fn advance_pieces(pieces: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = pieces.front_mut() else {
            return;
        };
        if n < front.len() {
            front.advance(n);
            return;
        }
        n -= front.len();
        pieces.pop_front();
    }
}

/// Most bytes handed to the stream in one write (the stream copies them into
/// its history under its lock; this keeps the lock short).
const WRITE_BATCH: usize = 64 << 10;

/// Takes the next frame to send: control frames first; then TCP data and
/// UDP in turn, so neither can starve the other.
fn next_frame(
    queues: &mut [mpsc::UnboundedReceiver<Frame>; 3],
    turn: &mut usize,
    shared: &Shared,
) -> Option<Frame> {
    if let Ok(f) = queues[0].try_recv() {
        return Some(shared.answer_latest(f));
    }
    for _ in 0..2 {
        let q = 1 + *turn;
        *turn = 1 - *turn;
        if let Ok(f) = queues[q].try_recv() {
            if let Frame::Datagram { payload, .. } = &f {
                shared
                    .udp_queued
                    .fetch_sub(payload.len() as u64, Ordering::Relaxed);
            }
            return Some(f);
        }
    }
    None
}

async fn writer(
    shared: Arc<Shared>,
    mut write: WriteHalf,
    mut queues: [mpsc::UnboundedReceiver<Frame>; 3],
) {
    let mut out = Outbox::default();
    let mut end = shared.end.subscribe();
    let mut turn = 0;
    loop {
        if out.pieces.is_empty() {
            match next_frame(&mut queues, &mut turn, &shared) {
                Some(f) => out.push(f),
                None => {
                    let [control, data, udp] = &mut queues;
                    tokio::select! {
                        biased;
                        f = control.recv() => match f {
                            Some(f) => out.push(shared.answer_latest(f)),
                            None => break,
                        },
                        // Every queue was empty: whatever comes first goes.
                        f = data.recv() => match f {
                            Some(f) => out.push(f),
                            None => break,
                        },
                        f = udp.recv() => match f {
                            Some(f) => {
                                if let Frame::Datagram { payload, .. } = &f {
                                    shared.udp_queued.fetch_sub(payload.len() as u64, Ordering::Relaxed);
                                }
                                out.push(f);
                            }
                            None => break,
                        },
                        _ = end.wait_for(Option::is_some) => {
                            if out.drain_control(&mut queues[0]) {
                                break;
                            }
                        }
                    }
                    continue;
                }
            }
        }
        while out.bytes < WRITE_BATCH {
            match next_frame(&mut queues, &mut turn, &shared) {
                Some(f) => out.push(f),
                None => break,
            }
        }
        let slices: Vec<IoSlice<'_>> = out
            .pieces
            .iter()
            .take(64)
            .map(|p| IoSlice::new(p))
            .collect();
        match write.write_vectored(&slices).await {
            Ok(0) | Err(_) => {
                shared.finish(End::Stream("stream closed for writing".into()));
                return;
            }
            Ok(n) => out.advance(n),
        }
        if shared.end.borrow().is_some() && out.drain_control(&mut queues[0]) {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), write.flush()).await;
}

async fn pinger(shared: Arc<Shared>) {
    shared.touch();
    let mut nonce = 0u64;
    loop {
        tokio::time::sleep(shared.config.ping_interval).await;
        nonce += 1;
        let _ = shared.control.send(Frame::Ping { nonce });
        let silence = shared.silence();
        if silence >= shared.config.ping_timeout {
            info!(?silence, "link silent; forcing a reconnect");
            shared.handle.force_reconnect();
            // Give the reconnect a full timeout before judging again.
            shared.touch();
        }
    }
}

impl MuxStream {
    /// The stream's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Bytes this side may send now.
    pub fn credit(&self) -> u32 {
        self.slot.credit.load(Ordering::Relaxed)
    }

    /// A signal that fires when credit arrives, usable while the stream is
    /// borrowed elsewhere (say, in another branch of a `select!`).
    pub fn credit_signal(&self) -> CreditSignal {
        CreditSignal {
            id: self.id,
            slot: self.slot.clone(),
            mux: self.mux.clone(),
        }
    }

    /// Sends data; `payload` must fit the credit (see [`MuxStream::credit`]).
    pub fn send(&mut self, payload: Bytes) {
        debug_assert!(payload.len() as u32 <= self.credit());
        self.slot
            .credit
            .fetch_sub(payload.len() as u32, Ordering::Relaxed);
        let _ = self.mux.data.send(Frame::Data {
            id: self.id,
            payload,
        });
    }

    /// Tells the peer this side will send no more.
    pub fn send_fin(&mut self) {
        if self.reset || self.slot.fin_sent.load(Ordering::Relaxed) {
            return;
        }
        self.mux.half_close(self.id, &self.slot, true);
        let _ = self.mux.data.send(Frame::Fin { id: self.id });
    }

    /// The next thing the peer sent.
    pub async fn recv(&mut self) -> Inbound {
        let inbound = self.inbound.recv().await.unwrap_or(Inbound::Reset);
        if let Inbound::Reset = inbound {
            self.reset = true;
        }
        inbound
    }

    /// Records that `n` received bytes were written out, granting the peer
    /// more credit once half the window is used (never after its FIN: no more
    /// data is coming, and the id may be reused). A stream consuming whole
    /// half-windows is window-bound: each grant then doubles its window, up to
    /// `max_window` and within the session's budget.
    pub fn consumed(&mut self, n: usize) {
        self.consumed += n as u32;
        let window = self.slot.window.load(Ordering::Relaxed);
        if self.consumed < window / 2 || self.slot.fin_received.load(Ordering::Relaxed) {
            return;
        }
        let config = &self.mux.config;
        let mut growth = window.min(config.max_window.saturating_sub(window));
        if growth > 0 {
            let extra = self
                .mux
                .window_extra
                .fetch_add(u64::from(growth), Ordering::Relaxed);
            if extra + u64::from(growth) > config.window_budget {
                self.mux
                    .window_extra
                    .fetch_sub(u64::from(growth), Ordering::Relaxed);
                growth = 0;
            }
        }
        // The window grows before the credit that uses it is granted.
        self.slot.window.fetch_add(growth, Ordering::Relaxed);
        self.slot
            .unacked
            .fetch_sub(self.consumed, Ordering::Relaxed);
        let _ = self.mux.control.send(Frame::Window {
            id: self.id,
            increment: self.consumed + growth,
        });
        self.consumed = 0;
    }

    /// Whether both directions finished cleanly.
    pub fn finished(&self) -> bool {
        self.slot.fin_sent.load(Ordering::Relaxed) && self.slot.fin_received.load(Ordering::Relaxed)
    }

    /// Aborts the stream.
    pub fn reset(&mut self) {
        if self.reset || self.finished() {
            return;
        }
        self.reset = true;
        self.mux.remove(self.id, &self.slot);
        let _ = self.mux.data.send(Frame::Reset { id: self.id });
    }
}

/// See [`MuxStream::credit_signal`].
pub struct CreditSignal {
    id: u32,
    slot: Arc<Slot>,
    mux: Arc<Shared>,
}

impl CreditSignal {
    /// Waits until there is credit to send, or the stream or mux is gone.
    pub async fn wait(&self) {
        while self.slot.credit.load(Ordering::Relaxed) == 0
            && !self.mux.is_gone(self.id, &self.slot)
        {
            self.slot.credit_changed.notified().await;
        }
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        // A stream dropped before both FINs were exchanged is aborted.
        self.reset();
    }
}

impl Shared {
    /// Whether stream `id` is no longer this slot's (reset, or mux ended).
    fn is_gone(&self, id: u32, slot: &Arc<Slot>) -> bool {
        !self
            .table
            .lock()
            .slots
            .get(&id)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }
}
