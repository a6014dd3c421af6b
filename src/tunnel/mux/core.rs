//! The mux without IO: the stream table, credit and window accounting, what
//! a frame from the peer means, what goes out next, and liveness.
//!
//! Plain fields, `now` passed in, nothing awaited: the IO task (see
//! `driver`) feeds it frames and takes frames out; the handles of streams
//! and associations call it under the same lock. Arrivals for a stream go
//! to its [`Port`], whatever the caller makes of that (a channel in the
//! tunnel, a recording in the tests).
//!
//! Everything the peer can make this side owe is bounded here: one PONG
//! (the latest nonce), one WINDOW per stream (grants add up), and the
//! refusals and session frames queued in answer count against
//! [`MAX_REPLIES`], past which the IO task stops reading until they have
//! gone out.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::types::{End, Inbound, MuxConfig, SendError, Side, StreamError, UdpDrop, UdpStats};
use crate::stream::admission::Source;
use crate::tunnel::frame::{Frame, INITIAL_WINDOW, MAX_CREDIT, MAX_DATA, MAX_DATAGRAM, MAX_STREAM};

/// Most frames queued in answer to the peer (refusals, session replies)
/// before this side stops reading from it.
pub(super) const MAX_REPLIES: usize = 1024;

/// The most bytes of DATA a session queues for the link, all streams
/// together. Credit is the peer's to grant (up to 1 GiB a stream); this is
/// what bounds the memory of a peer that grants it and never reads.
pub const OUTBOUND_QUEUE: usize = 8 << 20;

/// The most bytes of DATA one stream queues for the link, by default
/// ([`MuxConfig::stream_queue`]). The queue is one
/// line, in the order frames were sent: without a share per stream, a
/// stream whose peer grants it credit faster than the link drains filled
/// all of [`OUTBOUND_QUEUE`], and a frame of any other stream waited
/// behind 8 MiB (seconds on a slow link; docs/benchmarks.md). A stream past half its share
/// waits until it is back under half, so it sends in pieces of at least
/// half of it.
pub const STREAM_QUEUE: usize = 256 << 10;

/// What a queued DATA or DATAGRAM frame is counted as beyond its payload
/// against the queues' bounds: its place in the queue and the buffer that
/// holds it. Without it a peer or visitor sending empty or one-byte frames
/// would queue millions of them within a bound of bytes.
pub(crate) const FRAME_COST: usize = 64;

/// What a frame carrying `len` bytes counts for against a queue's bound.
pub(crate) fn cost(len: usize) -> usize {
    len + FRAME_COST
}

/// The most frames without a payload queued for the link before new
/// streams and associations are refused: a peer that never reads while
/// visitors come and go would otherwise grow the queue by an OPEN and a
/// FIN per visitor (or an OPEN alone for one reset before it went out, see
/// [`Core::reset`]). (About 64 bytes each.)
pub const MAX_QUEUED_CONTROLS: usize = 65_536;

/// Starved streams woken per frame sent once the queue is half empty.
const STARVED_WAKE: usize = 16;

/// Where a stream's arrivals go.
pub(crate) trait Port {
    /// What [`Port::discard`] takes.
    type Held;
    /// Hands the stream's user what arrived.
    fn deliver(&self, inbound: Inbound);
    /// Takes what was delivered and not taken yet, if anything: the stream
    /// is reset, and its user will not want it. Returned for the caller to
    /// drop once the core's lock is let go (up to a window's bytes).
    fn discard(&self) -> Option<Self::Held>;
    /// Credit arrived, or the stream is gone: wakes a sender waiting.
    fn wake_sender(&self);
}

/// Where an association's datagrams go.
pub(crate) trait DatagramPort {
    /// Hands a datagram over; false if its receiver is gone.
    fn deliver(&self, id: u32, payload: Bytes) -> bool;
}

/// A frame from the peer that the layer above must act on.
#[derive(Debug)]
pub(crate) enum Arrival {
    /// The peer opens stream `id`; [`Core::accept`] registers it.
    Open {
        id: u32,
        index: u16,
        visitor: SocketAddr,
    },
    /// The peer starts association `id`; [`Core::accept_association`]
    /// registers it.
    Associate {
        id: u32,
        index: u16,
        visitor: SocketAddr,
    },
    /// The peer ended association `id`.
    Dissociate { id: u32 },
    /// A session frame (login, publishing).
    Control(Frame),
}

/// One stream's flow control.
#[derive(Debug)]
struct Flow {
    /// Tells this stream from an earlier one under the same id.
    serial: u64,
    /// Bytes this side may still send.
    credit: u32,
    /// This side's receive window.
    window: u32,
    /// Bytes received and not yet granted back.
    unacked: u32,
    /// Of those, bytes the user has written out.
    consumed: u32,
    /// DATA frames handed to the user and not yet reported taken, each
    /// counted at [`FRAME_COST`] beyond its bytes in the inbound budget:
    /// what a frame costs to hold while its user takes frames as they come
    /// (a place in its queue, an allocation), so that a peer sending
    /// one-byte frames pays for them as a sender of one-byte frames does,
    /// however little the queue makes them cost while they wait together.
    frames: u32,
    /// Credit granted and not yet sent (one WINDOW, however many grants).
    grant: u32,
    fin_sent: bool,
    fin_received: bool,
    /// Listed in the core's `starved`, or waiting for its own frames to
    /// go out (see [`STREAM_QUEUE`]).
    starved: bool,
    /// Bytes of this stream's DATA in the core's `data` queue.
    queued: usize,
    /// Where this side's OPEN of the stream is in the core's `data` queue
    /// (its position, see `data_popped`); `None` for the peer's streams.
    open_at: Option<u64>,
}

impl Flow {
    /// What the stream holds against the inbound budget: the bytes
    /// received and not written out, and the frames not yet taken.
    fn held(&self) -> u64 {
        u64::from(self.unacked - self.consumed) + u64::from(self.frames) * FRAME_COST as u64
    }

    /// Whether the stream is over: FIN both ways, and every byte received
    /// written out by its user. Until then it stays in the table, so that
    /// what its user still holds counts in the inbound budget and a reset
    /// (the budget's, or the session's end) still reaches it.
    fn done(&self) -> bool {
        self.fin_sent && self.fin_received && self.consumed == self.unacked
    }
}

struct Entry<P> {
    flow: Flow,
    port: P,
}

/// An association's part of the UDP queue (see `Core::udp_by_source`).
struct UdpShare {
    source: Source,
    /// Bytes of its datagrams queued, each at its [`cost`].
    queued: usize,
    open: bool,
}

/// See the module documentation.
pub(crate) struct Core<P: Port, A> {
    side: Side,
    config: MuxConfig,
    streams: HashMap<u32, Entry<P>>,
    assocs: HashMap<u32, A>,
    next_id: u32,
    next_serial: u64,
    /// Window growth granted beyond the initial windows, all streams.
    window_extra: u64,
    /// Bytes received and not yet written out by their users, and the
    /// frames that brought them not yet taken ([`Flow::held`]), all streams.
    held: u64,
    /// What reset streams held and their users had not taken, to be
    /// dropped outside the core's lock ([`Core::take_discarded`]).
    discarded: Vec<P::Held>,
    /// Streams with a WINDOW due, in the order they became due.
    grants: VecDeque<u32>,
    /// Session frames, first among what goes out after PING and PONG.
    session: VecDeque<Frame>,
    /// Frames that open, carry or end streams, in order; `true` marks a
    /// refusal (it counts in `replies`).
    data: VecDeque<(Frame, bool)>,
    /// Frames ever put in `data`, and taken from it: a frame's position
    /// is the count pushed before it, and it is still queued while its
    /// position is at least `data_popped`.
    data_pushed: u64,
    data_popped: u64,
    /// This side's streams reset before their OPEN went out, by id, with
    /// the position past their last frame: those frames are dropped as
    /// they come up, and the peer never hears of the stream. (Their ids
    /// are not given out again meanwhile.)
    withdrawn: HashMap<u32, u64>,
    /// The same, in the order of those positions, to forget each once
    /// the queue has passed it.
    withdrawn_order: VecDeque<(u64, u32)>,
    /// The same for associations.
    udp: VecDeque<(Frame, bool)>,
    /// Bytes of datagram payloads in `udp`: within `udp_queue`.
    udp_queued: usize,
    /// Each association's visitor source and what it has in `udp`; kept
    /// after the association ends until its datagrams have gone.
    udp_shares: HashMap<u32, UdpShare>,
    /// What each visitor source (an IPv4 address, an IPv6 /64) has in
    /// `udp`, all its associations together: at most half of `udp_queue`,
    /// so that one host flooding a UDP port leaves room for the rest.
    udp_by_source: HashMap<Source, usize>,
    /// Bytes of DATA payloads in `data`, all streams: at most about
    /// [`OUTBOUND_QUEUE`], whatever credit the peer grants.
    data_queued: usize,
    /// Each stream's share of `data` now: `config.stream_queue`, or more
    /// while the link drains faster (see [`Core::follow_link`]).
    share: usize,
    /// Frames without a payload (OPEN, FIN, RESET, ASSOCIATE, DISSOCIATE)
    /// in `data` and `udp`: at most about [`MAX_QUEUED_CONTROLS`].
    controls_queued: usize,
    /// Streams that had credit but found the queue full, in that order;
    /// woken a few at a time as it drains. (Entries of streams gone since
    /// are skipped, and dropped when they outnumber the live ones.)
    starved: VecDeque<(u32, u64)>,
    /// Bytes of datagrams delivered and not yet taken by their sockets.
    udp_inbound: usize,
    /// Session frames and refusals queued: what the peer made this side owe.
    replies: usize,
    /// Whether UDP goes next (TCP and UDP take turns).
    udp_turn: bool,
    ping_due: Option<u64>,
    pong_due: Option<u64>,
    nonce: u64,
    /// When bytes last arrived.
    last_rx: Instant,
    /// Silence is judged from here when later than `last_rx`: the last
    /// forced reconnect, or the last time silence was excused.
    judged_from: Instant,
    next_ping: Instant,
    udp_stats: UdpStats,
    ended: bool,
}

impl<P: Port, A: DatagramPort> Core<P, A> {
    pub(crate) fn new(side: Side, config: MuxConfig, now: Instant) -> Self {
        let next_ping = now + config.ping_interval;
        let share = config.stream_queue;
        Core {
            side,
            config,
            streams: HashMap::new(),
            assocs: HashMap::new(),
            next_id: side.first_id(),
            next_serial: 0,
            window_extra: 0,
            held: 0,
            discarded: Vec::new(),
            grants: VecDeque::new(),
            session: VecDeque::new(),
            data: VecDeque::new(),
            share,
            data_pushed: 0,
            data_popped: 0,
            withdrawn: HashMap::new(),
            withdrawn_order: VecDeque::new(),
            udp: VecDeque::new(),
            udp_queued: 0,
            udp_shares: HashMap::new(),
            udp_by_source: HashMap::new(),
            data_queued: 0,
            controls_queued: 0,
            starved: VecDeque::new(),
            udp_inbound: 0,
            replies: 0,
            udp_turn: false,
            ping_due: None,
            pong_due: None,
            nonce: 0,
            last_rx: now,
            judged_from: now,
            next_ping,
            udp_stats: UdpStats::default(),
            ended: false,
        }
    }

    // ---- the table ----

    fn taken(&self, id: u32) -> bool {
        self.streams.contains_key(&id)
            || self.assocs.contains_key(&id)
            || self.withdrawn.contains_key(&id)
            // (An ended association whose datagrams still wait.)
            || self.udp_shares.contains_key(&id)
    }

    fn full(&self) -> bool {
        self.streams.len() + self.assocs.len() >= self.config.max_streams
    }

    /// A fresh id of this side's parity, not reused until the space wraps.
    /// Only called when the table is not full, so a free id exists.
    fn allocate(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = if id + 2 > MAX_STREAM {
                self.side.first_id()
            } else {
                id + 2
            };
            if !self.taken(id) {
                return id;
            }
        }
    }

    fn insert(&mut self, id: u32, port: P) -> u64 {
        self.next_serial += 1;
        let flow = Flow {
            serial: self.next_serial,
            credit: INITIAL_WINDOW,
            window: INITIAL_WINDOW,
            unacked: 0,
            consumed: 0,
            frames: 0,
            grant: 0,
            fin_sent: false,
            fin_received: false,
            starved: false,
            queued: 0,
            open_at: None,
        };
        self.streams.insert(id, Entry { flow, port });
        self.next_serial
    }

    /// Drops stream `id`, returning its window growth and held bytes to the
    /// session's budgets.
    fn remove(&mut self, id: u32) -> Option<P> {
        let entry = self.streams.remove(&id)?;
        let flow = &entry.flow;
        self.window_extra -= u64::from(flow.window - INITIAL_WINDOW);
        self.held -= flow.held();
        Some(entry.port)
    }

    fn flow(&mut self, id: u32, serial: u64) -> Option<&mut Flow> {
        self.streams
            .get_mut(&id)
            .map(|e| &mut e.flow)
            .filter(|f| f.serial == serial)
    }

    /// Streams and associations open now.
    pub(crate) fn open_streams(&self) -> usize {
        self.streams.len() + self.assocs.len()
    }

    // ---- this side's streams ----

    /// Opens a stream to the peer for a visitor of service `index`; returns
    /// its id and serial.
    pub(crate) fn open(
        &mut self,
        index: u16,
        visitor: SocketAddr,
        port: P,
    ) -> Result<(u32, u64), StreamError> {
        if self.ended || self.full() {
            return Err(StreamError::TooMany);
        }
        if self.backlogged() {
            return Err(StreamError::Backlogged);
        }
        let id = self.allocate();
        let serial = self.insert(id, port);
        let at = self.data_pushed;
        if let Some(flow) = self.flow(id, serial) {
            flow.open_at = Some(at);
        }
        self.queue(Frame::Open { id, index, visitor }, false);
        Ok((id, serial))
    }

    /// Whether new streams and associations are refused for now: the peer
    /// has not taken [`MAX_QUEUED_CONTROLS`] frames without a payload.
    pub(crate) fn backlogged(&self) -> bool {
        self.controls_queued >= MAX_QUEUED_CONTROLS
    }

    /// Registers the stream of an [`Arrival::Open`] just returned.
    pub(crate) fn accept(&mut self, id: u32, port: P) -> u64 {
        self.insert(id, port)
    }

    /// Bytes stream `id` may send now: its credit, within what the
    /// session's outbound queue has room for; `None` once it is gone. A
    /// stream told 0 for want of room is woken when the queue drains.
    pub(crate) fn credit(&mut self, id: u32, serial: u64) -> Option<u32> {
        let room = OUTBOUND_QUEUE.saturating_sub(self.data_queued);
        let share = self.share;
        let flow = self.flow(id, serial)?;
        let own = if flow.queued <= share / 2 {
            share - flow.queued
        } else {
            0
        };
        // (What a frame can carry in that room, counted at its cost.)
        let room = room.min(own).saturating_sub(FRAME_COST);
        let credit = flow.credit;
        if credit > 0 && room == 0 && !flow.starved && !flow.fin_sent {
            flow.starved = true;
            self.starved.push_back((id, serial));
            if self.starved.len() > 2 * self.streams.len() + 64 {
                let streams = &self.streams;
                self.starved.retain(|(id, serial)| {
                    streams
                        .get(id)
                        .is_some_and(|e| e.flow.serial == *serial && e.flow.starved)
                });
            }
        }
        Some(credit.min(room.min(u32::MAX as usize) as u32))
    }

    /// Queues a DATA frame; it must fit the credit and one frame.
    pub(crate) fn send_data(
        &mut self,
        id: u32,
        serial: u64,
        payload: Bytes,
    ) -> Result<(), SendError> {
        let flow = self.flow(id, serial).ok_or(SendError::Gone)?;
        let len = payload.len();
        if flow.fin_sent {
            return Err(SendError::Finished);
        }
        if len > MAX_DATA {
            return Err(SendError::TooLarge(len));
        }
        if len > flow.credit as usize {
            return Err(SendError::NoCredit {
                len,
                credit: flow.credit,
            });
        }
        if len > 0 {
            flow.credit -= len as u32;
            flow.queued += cost(len);
            self.queue(Frame::Data { id, payload }, false);
        }
        Ok(())
    }

    /// Sets each stream's share of the link queue to what the link holds
    /// unsent now (its stream's unsent limit, which follows its rate), never
    /// below `config.stream_queue`: on a fast link a stream then queues as
    /// much as the link takes in that time, and is not woken for every
    /// piece; on a slow one, `config.stream_queue`. (A stream waiting for
    /// its share has frames queued, so the link taking them wakes it
    /// whichever way the share moved.) Never above half the queue, however
    /// fast the link: one stream must always leave the others room.
    pub(crate) fn follow_link(&mut self, unsent_limit: Option<usize>) {
        let floor = self.config.stream_queue;
        self.share =
            unsent_limit.map_or(floor, |l| l.clamp(floor, (OUTBOUND_QUEUE / 2).max(floor)));
    }

    /// Wakes the streams waiting for room in the outbound queue.
    /// [`STARVED_WAKE`] of them at a time, which is more than the room
    /// freed takes; the next frames out wake the next ones.
    fn wake_starved(&mut self) {
        let mut woken = 0;
        while woken < STARVED_WAKE {
            let Some((id, serial)) = self.starved.pop_front() else {
                break;
            };
            if let Some(e) = self.streams.get_mut(&id)
                && e.flow.serial == serial
                && e.flow.starved
            {
                e.flow.starved = false;
                e.port.wake_sender();
                woken += 1;
            }
        }
    }

    /// Queues FIN; once both sides have sent theirs (and what arrived is
    /// written out, see [`Flow::done`]) the stream is forgotten.
    pub(crate) fn send_fin(&mut self, id: u32, serial: u64) {
        let Some(flow) = self.flow(id, serial) else {
            return;
        };
        if flow.fin_sent {
            return;
        }
        flow.fin_sent = true;
        let done = flow.done();
        self.queue(Frame::Fin { id }, false);
        if done {
            self.remove(id);
        }
    }

    /// Aborts stream `id` and tells the peer; or, if this side's OPEN of
    /// it has not gone out yet, withdraws it: its frames still queued are
    /// dropped instead of sent, and the peer never hears of it (a visitor
    /// that left before a slow or stalled link took its OPEN costs the
    /// peer no connection to its service, and the link nothing).
    /// Returns whether a RESET was queued.
    pub(crate) fn reset(&mut self, id: u32, serial: u64) -> bool {
        let popped = self.data_popped;
        let Some(flow) = self.flow(id, serial) else {
            return false;
        };
        // Finished both ways (its user gave up before writing out all it
        // received): the peer has forgotten it, only this side holds it.
        let finished = flow.fin_sent && flow.fin_received;
        let unsent = flow.open_at.is_some_and(|at| at >= popped);
        self.remove(id);
        if unsent {
            self.withdrawn.insert(id, self.data_pushed);
            self.withdrawn_order.push_back((self.data_pushed, id));
            return false;
        }
        if !finished {
            self.queue(Frame::Reset { id }, false);
        }
        !finished
    }

    /// Records that the user wrote `n` received bytes out. Once half the
    /// window is consumed the peer is granted it back (never after its FIN:
    /// no more data is coming, and the id may be reused). A stream consuming
    /// whole half-windows is window-bound: each grant then doubles its
    /// window, up to `max_window` and within the session's `window_budget`.
    /// `frames`: DATA frames the user took since it last said (once every
    /// byte is written out, all of them were). True when a WINDOW became
    /// due.
    pub(crate) fn consumed(&mut self, id: u32, serial: u64, n: usize, frames: usize) -> bool {
        let (max_window, budget) = (self.config.max_window, self.config.window_budget);
        // (The table's field, not `self.flow`: the budgets are updated too.)
        let Some(flow) = self
            .streams
            .get_mut(&id)
            .map(|e| &mut e.flow)
            .filter(|f| f.serial == serial)
        else {
            return false;
        };
        // Never more than was received: the user's count is not trusted.
        let n = (n.min(u32::MAX as usize) as u32).min(flow.unacked - flow.consumed);
        flow.consumed += n;
        let frames = if flow.consumed == flow.unacked {
            flow.frames
        } else {
            (frames.min(u32::MAX as usize) as u32).min(flow.frames)
        };
        flow.frames -= frames;
        self.held -= u64::from(n) + u64::from(frames) * FRAME_COST as u64;
        if flow.done() {
            self.remove(id);
            return false;
        }
        if flow.consumed < flow.window / 2 || flow.fin_received {
            return false;
        }
        let mut growth = flow.window.min(max_window.saturating_sub(flow.window));
        if self.window_extra + u64::from(growth) > budget {
            growth = 0;
        }
        // The window grows before the credit that uses it is granted.
        flow.window += growth;
        flow.unacked -= flow.consumed;
        let first = flow.grant == 0;
        flow.grant += flow.consumed + growth;
        flow.consumed = 0;
        self.window_extra += u64::from(growth);
        if first {
            self.grants.push_back(id);
        }
        first
    }

    // ---- associations ----

    /// Starts an association for a visitor of service `index`.
    pub(crate) fn associate(
        &mut self,
        index: u16,
        visitor: SocketAddr,
        port: A,
    ) -> Result<u32, StreamError> {
        if self.ended || self.full() {
            return Err(StreamError::TooMany);
        }
        if self.backlogged() {
            return Err(StreamError::Backlogged);
        }
        let id = self.allocate();
        self.assocs.insert(id, port);
        self.open_share(id, visitor);
        self.queue(Frame::Associate { id, index, visitor }, false);
        Ok(id)
    }

    /// Registers the association of an [`Arrival::Associate`] just returned,
    /// for `visitor`.
    pub(crate) fn accept_association(&mut self, id: u32, port: A, visitor: SocketAddr) {
        self.assocs.insert(id, port);
        self.open_share(id, visitor);
    }

    fn open_share(&mut self, id: u32, visitor: SocketAddr) {
        let source = Source::of(Some(visitor));
        // (An ended association of this id whose datagrams still wait, the
        // id given out again meanwhile: its source is let off them now, and
        // as they go they count out of the new share, never below 0.)
        if let Some(old) = self.udp_shares.insert(
            id,
            UdpShare {
                source,
                queued: 0,
                open: true,
            },
        ) && old.queued > 0
        {
            self.take_from_source(old.source, old.queued);
        }
    }

    /// Ends an association and tells the peer; false if it was not open.
    pub(crate) fn dissociate(&mut self, id: u32) -> bool {
        let open = self.assocs.remove(&id).is_some();
        if open {
            self.close_share(id);
            self.queue(Frame::Dissociate { id }, false);
        }
        open
    }

    /// An association ended: its share goes once its datagrams have.
    fn close_share(&mut self, id: u32) {
        if let Some(share) = self.udp_shares.get_mut(&id) {
            share.open = false;
            if share.queued == 0 {
                self.udp_shares.remove(&id);
            }
        }
    }

    fn take_from_source(&mut self, source: Source, n: usize) {
        if let Some(queued) = self.udp_by_source.get_mut(&source) {
            *queued = queued.saturating_sub(n);
            if *queued == 0 {
                self.udp_by_source.remove(&source);
            }
        }
    }

    /// Counts a datagram of `cost` bytes of association `id` into (`add`)
    /// or out of its share and its source's.
    fn count_share(&mut self, id: u32, cost: usize, add: bool) {
        let Some(share) = self.udp_shares.get_mut(&id) else {
            return;
        };
        let source = share.source;
        if add {
            share.queued += cost;
            *self.udp_by_source.entry(source).or_default() += cost;
            return;
        }
        share.queued = share.queued.saturating_sub(cost);
        if share.queued == 0 && !share.open {
            self.udp_shares.remove(&id);
        }
        self.take_from_source(source, cost);
    }

    /// Queues a datagram; false if it was dropped (counted when it was too
    /// big, or the UDP queue or its visitor host's half of it full).
    pub(crate) fn send_datagram(&mut self, id: u32, payload: Bytes) -> bool {
        let len = payload.len();
        if len > MAX_DATAGRAM {
            self.udp_stats.note(UdpDrop::Oversize);
            return false;
        }
        if !self.assocs.contains_key(&id) {
            return false;
        }
        if self.udp_queued + cost(len) > self.config.udp_queue {
            self.udp_stats.dropped_queue += 1;
            return false;
        }
        let source = self.udp_shares.get(&id).map(|share| share.source);
        let source_queued = source.map_or(0, |s| self.udp_by_source.get(&s).copied().unwrap_or(0));
        // One visitor host takes at most half the queue (and never less
        // than a datagram of the largest size).
        let share = (self.config.udp_queue / 2).max(cost(MAX_DATAGRAM));
        if source_queued + cost(len) > share {
            self.udp_stats.dropped_queue += 1;
            return false;
        }
        self.udp_stats.sent += 1;
        self.queue(Frame::Datagram { id, payload }, false);
        true
    }

    /// Delivered datagrams that count `counted` against the inbound budget
    /// (their [`cost`]s, summed) were taken by their socket.
    pub(crate) fn datagram_taken(&mut self, counted: usize) {
        self.udp_inbound = self.udp_inbound.saturating_sub(counted);
    }

    pub(crate) fn udp_stats(&self) -> UdpStats {
        self.udp_stats
    }

    pub(crate) fn udp_stats_mut(&mut self) -> &mut UdpStats {
        &mut self.udp_stats
    }

    // ---- the session ----

    /// Queues a session frame (login, publishing).
    pub(crate) fn send_session(&mut self, frame: Frame) -> Result<(), SendError> {
        if self.ended {
            return Err(SendError::Gone);
        }
        match frame {
            Frame::Hello { .. }
            | Frame::Challenge { .. }
            | Frame::Login { .. }
            | Frame::Welcome { .. }
            | Frame::Refuse { .. }
            | Frame::Publish { .. }
            | Frame::Published { .. }
            | Frame::PublishFailed { .. }
            | Frame::Unpublish { .. } => {
                self.push_session(frame);
                Ok(())
            }
            _ => Err(SendError::NotSession),
        }
    }

    fn push_session(&mut self, frame: Frame) {
        self.replies += 1;
        self.session.push_back(frame);
    }

    /// Queues GOODBYE and ends the mux.
    pub(crate) fn goodbye(&mut self, reason: String) -> Vec<P> {
        self.push_session(Frame::Goodbye { reason });
        self.end()
    }

    /// Ends the mux: from now on only session frames already queued go out.
    /// Returns the streams' ports, to be told they are reset; associations
    /// are dropped (their receivers see the end).
    pub(crate) fn end(&mut self) -> Vec<P> {
        if self.ended {
            return Vec::new();
        }
        self.ended = true;
        self.data.clear();
        self.data_popped = self.data_pushed;
        self.withdrawn.clear();
        self.withdrawn_order.clear();
        self.udp.clear();
        self.grants.clear();
        self.udp_queued = 0;
        self.udp_shares.clear();
        self.udp_by_source.clear();
        self.data_queued = 0;
        self.controls_queued = 0;
        self.starved.clear();
        self.replies = self.session.len();
        self.assocs.clear();
        self.window_extra = 0;
        self.held = 0;
        self.streams.drain().map(|(_, e)| e.port).collect()
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether to read from the peer: not once it has made this side owe
    /// [`MAX_REPLIES`] frames it has not taken.
    pub(crate) fn wants_read(&self) -> bool {
        !self.ended && self.replies < MAX_REPLIES
    }

    // ---- frames from the peer ----

    /// Bytes arrived at `now`.
    pub(crate) fn touch(&mut self, now: Instant) {
        self.last_rx = now;
    }

    pub(crate) fn last_rx(&self) -> Instant {
        self.last_rx
    }

    /// Acts on a frame from the peer. `Err` ends the mux.
    pub(crate) fn handle_frame(&mut self, frame: Frame) -> Result<Option<Arrival>, End> {
        if self.ended {
            return Ok(None);
        }
        match frame {
            Frame::Data { id, payload } => self.on_data(id, payload),

            Frame::Window { id, increment } => {
                if let Some(e) = self.streams.get_mut(&id) {
                    if u64::from(e.flow.credit) + u64::from(increment) > MAX_CREDIT {
                        return Err(End::Protocol(format!(
                            "stream {id}: credit beyond {MAX_CREDIT} bytes"
                        )));
                    }
                    e.flow.credit += increment;
                    e.port.wake_sender();
                }
            }
            Frame::Fin { id } => {
                if let Some(e) = self.streams.get_mut(&id)
                    && !e.flow.fin_received
                {
                    e.flow.fin_received = true;
                    e.port.deliver(Inbound::Fin);
                    if e.flow.done() {
                        self.remove(id);
                    }
                }
            }
            Frame::Reset { id } => {
                if let Some(port) = self.remove(id) {
                    self.tell_reset(&port);
                }
            }
            Frame::Open { id, index, visitor } => {
                self.forget_finished(id);
                if let Err(why) = self.check_peer_id(id) {
                    debug!(id, %why, "open refused");
                    self.refuse(Frame::Reset { id });
                    return Ok(None);
                }
                return Ok(Some(Arrival::Open { id, index, visitor }));
            }
            Frame::Associate { id, index, visitor } => {
                self.forget_finished(id);
                if let Err(why) = self.check_peer_id(id) {
                    debug!(id, %why, "association refused");
                    self.refuse(Frame::Dissociate { id });
                    return Ok(None);
                }
                return Ok(Some(Arrival::Associate { id, index, visitor }));
            }
            Frame::Datagram { id, payload } => {
                self.udp_stats.received += 1;
                if let Some(port) = self.assocs.get(&id) {
                    let counted = cost(payload.len());
                    if self.udp_inbound + counted > self.config.udp_inbound {
                        self.udp_stats.dropped_inbound += 1;
                    } else if port.deliver(id, payload) {
                        self.udp_inbound += counted;
                    }
                }
            }
            Frame::Dissociate { id } => {
                if self.assocs.remove(&id).is_some() {
                    self.close_share(id);
                    return Ok(Some(Arrival::Dissociate { id }));
                }
            }
            Frame::Ping { nonce } => self.pong_due = Some(nonce),
            Frame::Pong { .. } => {}
            Frame::Goodbye { reason } => return Err(End::Goodbye(reason)),
            other => return Ok(Some(Arrival::Control(other))),
        }
        Ok(None)
    }

    /// Before the peer reuses id `id` (after its whole id space): a stream
    /// under it finished both ways, held here only until its user writes
    /// out what it received, gives way (its user sees a reset).
    fn forget_finished(&mut self, id: u32) {
        let finished = self
            .streams
            .get(&id)
            .is_some_and(|e| e.flow.fin_sent && e.flow.fin_received);
        if finished && let Some(port) = self.remove(id) {
            self.tell_reset(&port);
        }
    }

    /// Whether the peer may open stream or association `id`. A client never
    /// opens (PROTOCOL.md §3.5, §3.8): refused here, so that each refusal
    /// counts towards [`MAX_REPLIES`] like any other.
    fn check_peer_id(&self, id: u32) -> Result<(), StreamError> {
        if self.side == Side::Server {
            Err(StreamError::NotTheOpener)
        } else if self.backlogged() {
            // (Refused, the OPEN costs a counted reply: a peer that never
            // reads stops being read.)
            Err(StreamError::Backlogged)
        } else if self.full() {
            Err(StreamError::TooMany)
        } else if !self.side.is_peers(id) || self.taken(id) {
            Err(StreamError::BadId)
        } else {
            Ok(())
        }
    }

    /// Queues a refusal (RESET or DISSOCIATE) of what the peer asked for.
    fn refuse(&mut self, frame: Frame) {
        self.replies += 1;
        self.queue(frame, true);
    }

    /// Queues a frame of a stream or an association (`reply`: a refusal,
    /// counted in `replies`) and counts it against its queue's bound.
    fn queue(&mut self, frame: Frame, reply: bool) {
        self.count_queued(&frame, true);
        let udp = matches!(
            frame,
            Frame::Associate { .. } | Frame::Datagram { .. } | Frame::Dissociate { .. }
        );
        if udp {
            self.udp.push_back((frame, reply));
        } else {
            self.data_pushed += 1;
            self.data.push_back((frame, reply));
        }
    }

    /// Counts a frame just taken from `data` out of its position; true if
    /// it belongs to a withdrawn stream (see [`Core::reset`]).
    fn taken_from_data(&mut self, frame: &Frame) -> bool {
        let position = self.data_popped;
        self.data_popped += 1;
        let withdrawn = !self.withdrawn.is_empty()
            && self
                .withdrawn
                .get(&frame.stream())
                .is_some_and(|&end| position < end);
        while let Some(&(end, id)) = self.withdrawn_order.front()
            && end <= self.data_popped
        {
            self.withdrawn_order.pop_front();
            self.withdrawn.remove(&id);
        }
        withdrawn
    }

    /// Counts `len` (a DATA frame's [`cost`]) out of stream `id`'s share, and wakes
    /// it if it waited for them (see [`STREAM_QUEUE`]) and the queue has room.
    fn data_taken(&mut self, id: u32, len: usize) {
        let full = self.data_queued >= OUTBOUND_QUEUE;
        let share = self.share;
        if let Some(e) = self.streams.get_mut(&id) {
            // (Saturating: the frame may be of an earlier stream that had
            // this id.)
            e.flow.queued = e.flow.queued.saturating_sub(len);
            if e.flow.starved && e.flow.queued <= share / 2 && !full {
                e.flow.starved = false;
                e.port.wake_sender();
            }
        }
    }

    /// Counts `frame` into (`add`) or out of the queues' bounds.
    fn count_queued(&mut self, frame: &Frame, add: bool) {
        if let Frame::Datagram { id, payload } = frame {
            self.count_share(*id, cost(payload.len()), add);
        }
        let (count, n) = match frame {
            Frame::Data { payload, .. } => (&mut self.data_queued, cost(payload.len())),
            Frame::Datagram { payload, .. } => (&mut self.udp_queued, cost(payload.len())),
            _ => (&mut self.controls_queued, 1),
        };
        if add {
            *count += n;
        } else {
            *count -= n;
        }
    }

    fn on_data(&mut self, id: u32, payload: Bytes) {
        let Some(e) = self.streams.get_mut(&id) else {
            debug!(id, "data for an unknown stream");
            return;
        };
        let len = payload.len() as u32;
        let unacked = u64::from(e.flow.unacked) + u64::from(len);
        if unacked > u64::from(e.flow.window) || e.flow.fin_received {
            warn!(
                id,
                unacked, "peer overran the stream's window or FIN; stream reset"
            );
            self.abort(id);
            return;
        }
        if len == 0 {
            // Nothing to hand on (and no place in anyone's queue taken).
            return;
        }
        e.flow.unacked += len;
        e.flow.frames += 1;
        e.port.deliver(Inbound::Data(payload));
        self.held += cost(len as usize) as u64;
        if self.held > self.config.inbound_budget {
            self.shed();
        }
    }

    /// Tells the user of a stream just removed that it is reset, and takes
    /// what it held and had not taken: let go now, not whenever its user
    /// looks next (one still connecting to its service may not for
    /// seconds), and counted nowhere once the stream is gone.
    fn tell_reset(&mut self, port: &P) {
        self.discarded.extend(port.discard());
        port.deliver(Inbound::Reset);
        port.wake_sender();
    }

    /// What reset streams held, for the caller to drop once it has let go
    /// of the core's lock.
    pub(crate) fn take_discarded(&mut self) -> Vec<P::Held> {
        std::mem::take(&mut self.discarded)
    }

    /// Resets stream `id` on both sides (the peer broke its rules, or the
    /// session's inbound budget needs its bytes).
    fn abort(&mut self, id: u32) {
        let finished = self
            .streams
            .get(&id)
            .is_some_and(|e| e.flow.fin_sent && e.flow.fin_received);
        if let Some(port) = self.remove(id) {
            self.tell_reset(&port);
            // A stream finished both ways is the peer's to forget already.
            if !finished {
                self.refuse(Frame::Reset { id });
            }
        }
    }

    /// Over the inbound budget: resets the streams holding the most until a
    /// quarter of the budget is free again, so that each pass over the
    /// table costs the peer a quarter budget of data, however many streams
    /// share it.
    fn shed(&mut self) {
        let mut holders: Vec<(u32, u64)> = self
            .streams
            .iter()
            .map(|(id, e)| (*id, e.flow.held()))
            .filter(|(_, held)| *held > 0)
            .collect();
        holders.sort_unstable_by_key(|(_, held)| std::cmp::Reverse(*held));
        let target = self.config.inbound_budget - self.config.inbound_budget / 4;
        let mut shed = 0;
        for (id, _) in holders {
            if self.held <= target {
                break;
            }
            self.abort(id);
            shed += 1;
        }
        info!(
            streams = shed,
            "session's inbound budget spent; the streams holding the most were reset"
        );
    }

    // ---- what goes out ----

    /// The next frame to send: PONG and PING first, then session frames,
    /// WINDOWs, and TCP and UDP frames in turn so neither starves the other.
    pub(crate) fn poll_transmit(&mut self) -> Option<Frame> {
        if !self.ended {
            if let Some(nonce) = self.pong_due.take() {
                return Some(Frame::Pong { nonce });
            }
            if let Some(nonce) = self.ping_due.take() {
                return Some(Frame::Ping { nonce });
            }
        }
        if let Some(f) = self.session.pop_front() {
            self.replies -= 1;
            return Some(f);
        }
        while let Some(id) = self.grants.pop_front() {
            if let Some(e) = self.streams.get_mut(&id)
                && e.flow.grant > 0
            {
                let increment = std::mem::take(&mut e.flow.grant);
                return Some(Frame::Window { id, increment });
            }
        }
        for _ in 0..2 {
            self.udp_turn = !self.udp_turn;
            loop {
                let udp = self.udp_turn;
                let queue = if udp { &mut self.udp } else { &mut self.data };
                let Some((frame, reply)) = queue.pop_front() else {
                    break;
                };
                if reply {
                    self.replies -= 1;
                }
                self.count_queued(&frame, false);
                if let Frame::Data { id, payload } = &frame {
                    self.data_taken(*id, cost(payload.len()));
                    if self.data_queued == 0 {
                        // No DATA left whose going out would wake the
                        // rest: listed streams that did not send when
                        // woken must not keep a sender waiting.
                        while !self.starved.is_empty() {
                            self.wake_starved();
                        }
                    } else if self.data_queued <= OUTBOUND_QUEUE / 2 {
                        self.wake_starved();
                    }
                }
                if !udp && self.taken_from_data(&frame) {
                    continue;
                }
                return Some(frame);
            }
        }
        None
    }

    // ---- liveness ----

    /// When [`Core::handle_timeout`] wants to run next.
    pub(crate) fn poll_timeout(&self) -> Instant {
        self.next_ping
    }

    /// Queues the PING due at `now`; true when nothing has arrived for the
    /// ping timeout, and the link should be forced to reconnect (the clock
    /// then starts again, giving the reconnect a full timeout). Silence is
    /// `excused` while this side chose not to read (see
    /// [`Core::wants_read`]) and its writes still go out: the peer is
    /// taking them, and what it sends waits unread here.
    pub(crate) fn handle_timeout(&mut self, now: Instant, excused: bool) -> bool {
        if now < self.next_ping || self.ended {
            return false;
        }
        self.nonce += 1;
        self.ping_due = Some(self.nonce);
        self.next_ping = now + self.config.ping_interval;
        let since = self.last_rx.max(self.judged_from);
        let silent = now.saturating_duration_since(since) >= self.config.ping_timeout;
        if silent || excused {
            self.judged_from = now;
        }
        silent && !excused
    }

    /// Queues a PING to see whether the peer is there; anything arriving
    /// after the returned instant answers it.
    pub(crate) fn ask_ping(&mut self, now: Instant) -> Instant {
        self.ping_due = Some(u64::MAX);
        now
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::time::Duration;

    use super::*;

    /// Records what a stream was handed.
    #[derive(Clone, Default)]
    struct Rec(Rc<RefCell<Vec<String>>>);

    impl Rec {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.borrow_mut())
        }
    }

    impl Port for Rec {
        fn deliver(&self, inbound: Inbound) {
            let s = match inbound {
                Inbound::Data(b) => format!("data {}", b.len()),
                Inbound::Fin => "fin".into(),
                Inbound::Reset => "reset".into(),
            };
            self.0.borrow_mut().push(s);
        }
        type Held = ();

        fn discard(&self) -> Option<()> {
            self.0.borrow_mut().push("discard".into());
            None
        }
        fn wake_sender(&self) {
            self.0.borrow_mut().push("wake".into());
        }
    }

    impl DatagramPort for Rec {
        fn deliver(&self, id: u32, payload: Bytes) -> bool {
            self.0
                .borrow_mut()
                .push(format!("datagram {id} {}", payload.len()));
            true
        }
    }

    type TestCore = Core<Rec, Rec>;

    fn visitor() -> SocketAddr {
        "192.0.2.1:4000".parse().expect("address")
    }

    fn core(side: Side, config: MuxConfig) -> TestCore {
        Core::new(side, config, Instant::now())
    }

    /// A config in which a stream may queue all its credit: for the tests
    /// of the session's queue, which one stream fills.
    fn whole_share() -> MuxConfig {
        MuxConfig {
            stream_queue: usize::MAX,
            ..MuxConfig::default()
        }
    }

    fn drain(core: &mut TestCore) -> Vec<Frame> {
        std::iter::from_fn(|| core.poll_transmit()).collect()
    }

    fn data(id: u32, len: usize) -> Frame {
        Frame::Data {
            id,
            payload: Bytes::from(vec![0u8; len]),
        }
    }

    /// The peer grants stream `id` all the credit it may and never reads;
    /// the stream sends until the outbound queue is full.
    fn fill_the_queue(c: &mut TestCore, id: u32, serial: u64) {
        grant_all(c, id);
        send_while_credit(c, id, serial, usize::MAX);
    }

    /// The peer grants stream `id` all the credit it may.
    fn grant_all(c: &mut TestCore, id: u32) {
        c.handle_frame(Frame::Window {
            id,
            increment: (MAX_CREDIT - u64::from(INITIAL_WINDOW)) as u32,
        })
        .expect("within MAX_CREDIT");
    }

    /// Sends DATA on the stream as long as it is given credit, checking
    /// that no more than `most` bytes go in; returns how many did.
    fn send_while_credit(c: &mut TestCore, id: u32, serial: u64, most: usize) -> usize {
        let mut queued = 0;
        while let Some(credit) = c.credit(id, serial).filter(|c| *c > 0) {
            let n = (credit as usize).min(MAX_DATA);
            c.send_data(id, serial, Bytes::from(vec![0; n]))
                .expect("within credit");
            queued += n;
            assert!(queued <= most, "{queued} queued");
        }
        queued
    }

    /// A client-side core with one stream the server opened (id 2).
    fn with_peer_stream(config: MuxConfig) -> (TestCore, Rec, u64) {
        let rec = Rec::default();
        let (c, serial) = with_peer_stream_to(config, rec.clone());
        (c, rec, serial)
    }

    /// The same, the stream's arrivals going to `port`.
    fn with_peer_stream_to<P: Port>(config: MuxConfig, port: P) -> (Core<P, Rec>, u64) {
        let mut c = Core::new(Side::Client, config, Instant::now());
        let Ok(Some(Arrival::Open { id, .. })) = c.handle_frame(Frame::Open {
            id: 2,
            index: 0,
            visitor: visitor(),
        }) else {
            panic!("open not passed up");
        };
        let serial = c.accept(id, port);
        (c, serial)
    }

    #[test]
    fn sending_spends_credit_and_refuses_beyond_it() {
        let mut c = core(Side::Client, whole_share());
        let (id, serial) = c
            .open(0, visitor(), Rec::default())
            .expect("room for a stream");
        assert_eq!(id, 1);
        assert_eq!(c.credit(id, serial), Some(INITIAL_WINDOW));
        for _ in 0..16 {
            c.send_data(id, serial, Bytes::from(vec![0; MAX_DATA]))
                .expect("within credit");
        }
        assert_eq!(c.credit(id, serial), Some(0));
        assert_eq!(
            c.send_data(id, serial, Bytes::from_static(b"x")),
            Err(SendError::NoCredit { len: 1, credit: 0 })
        );
        // OPEN, then the sixteen DATA frames in order.
        let out = drain(&mut c);
        assert!(matches!(out[0], Frame::Open { id: 1, .. }));
        assert_eq!(out.len(), 17);
        // A WINDOW restores credit and wakes the sender.
        c.handle_frame(Frame::Window {
            id,
            increment: 1000,
        })
        .expect("within MAX_CREDIT");
        assert_eq!(c.credit(id, serial), Some(1000));
    }

    #[test]
    fn oversized_sends_and_foreign_frames_are_refused_without_ending_anything() {
        let mut c = core(Side::Client, whole_share());
        let (id, serial) = c.open(0, visitor(), Rec::default()).expect("room");
        assert_eq!(
            c.send_data(id, serial, Bytes::from(vec![0; MAX_DATA + 1])),
            Err(SendError::TooLarge(MAX_DATA + 1))
        );
        assert_eq!(c.send_session(data(id, 10)), Err(SendError::NotSession));
        assert_eq!(
            c.send_session(Frame::Window {
                id,
                increment: 1 << 29
            }),
            Err(SendError::NotSession)
        );
        let assoc = c.associate(0, visitor(), Rec::default()).expect("room");
        assert!(!c.send_datagram(assoc, Bytes::from(vec![0; MAX_DATAGRAM + 1])));
        assert_eq!(c.udp_stats().dropped_oversize, 1);
        assert!(!c.send_datagram(assoc + 2, Bytes::from_static(b"unknown")));
        assert!(!c.is_ended());
        assert_eq!(c.credit(id, serial), Some(INITIAL_WINDOW));
    }

    #[test]
    fn a_grant_follows_half_a_window_and_doubles_a_busy_stream() {
        let (mut c, rec, serial) = with_peer_stream(MuxConfig::default());
        let half = INITIAL_WINDOW as usize / 2;
        for _ in 0..half / MAX_DATA {
            c.handle_frame(data(2, MAX_DATA)).expect("within window");
        }
        assert_eq!(rec.take().len(), half / MAX_DATA);
        c.consumed(2, serial, half - 1, 0);
        assert!(drain(&mut c).is_empty(), "no grant before half the window");
        c.consumed(2, serial, 1, 0);
        // Half a window consumed: granted back plus a doubling.
        let out = drain(&mut c);
        assert!(
            matches!(out[..], [Frame::Window { id: 2, increment }] if increment == half as u32 + INITIAL_WINDOW),
            "{out:?}"
        );
        // The peer may now have 2 MiB outstanding: exactly that fits.
        for _ in 0..(2 * INITIAL_WINDOW as usize) / MAX_DATA {
            c.handle_frame(data(2, MAX_DATA)).expect("within window");
        }
        assert!(rec.take().iter().all(|s| s.starts_with("data")));
        // One byte more overruns: the stream is reset on both sides, and
        // what it held is let go.
        c.handle_frame(data(2, 1)).expect("a stream matter");
        assert_eq!(rec.take(), ["discard", "reset", "wake"]);
        assert!(matches!(drain(&mut c)[..], [Frame::Reset { id: 2 }]));
        assert!(!c.is_ended());
        assert_eq!((c.held, c.window_extra), (0, 0));
    }

    #[test]
    fn grants_to_one_stream_add_up_into_one_window_frame() {
        let (mut c, _rec, serial) = with_peer_stream(MuxConfig {
            max_window: INITIAL_WINDOW,
            ..MuxConfig::default()
        });
        let half = INITIAL_WINDOW / 2;
        for _ in 0..3 {
            for _ in 0..half as usize / MAX_DATA {
                c.handle_frame(data(2, MAX_DATA)).expect("within window");
            }
            c.consumed(2, serial, half as usize, 0);
        }
        // Nothing was sent meanwhile (the writer was stuck): one WINDOW.
        let out = drain(&mut c);
        assert!(
            matches!(out[..], [Frame::Window { id: 2, increment }] if increment == 3 * half),
            "{out:?}"
        );
    }

    #[test]
    fn consumption_claimed_beyond_what_arrived_is_ignored() {
        let (mut c, _rec, serial) = with_peer_stream(MuxConfig::default());
        c.consumed(2, serial, usize::MAX, 0);
        assert!(drain(&mut c).is_empty());
        c.handle_frame(data(2, 100)).expect("within window");
        c.consumed(2, serial, usize::MAX, 0);
        assert_eq!(c.streams[&2].flow.consumed, 100);
    }

    #[test]
    fn window_growth_stays_within_the_session_budget() {
        let mut c = core(
            Side::Client,
            MuxConfig {
                window_budget: u64::from(INITIAL_WINDOW),
                ..MuxConfig::default()
            },
        );
        let mut serials = Vec::new();
        for id in [2, 4] {
            assert!(matches!(
                c.handle_frame(Frame::Open {
                    id,
                    index: 0,
                    visitor: visitor()
                }),
                Ok(Some(Arrival::Open { .. }))
            ));
            serials.push((id, c.accept(id, Rec::default())));
        }
        let half = INITIAL_WINDOW as usize / 2;
        for &(id, serial) in &serials {
            for _ in 0..half / MAX_DATA {
                c.handle_frame(data(id, MAX_DATA)).expect("within window");
            }
            c.consumed(id, serial, half, 0);
        }
        // The first stream doubled and used the budget; the second did not.
        assert_eq!(c.streams[&2].flow.window, 2 * INITIAL_WINDOW);
        assert_eq!(c.streams[&4].flow.window, INITIAL_WINDOW);
        // Its end returns the growth.
        c.handle_frame(Frame::Reset { id: 2 }).expect("reset");
        assert_eq!(c.window_extra, 0);
    }

    #[test]
    fn the_inbound_budget_resets_the_stream_holding_the_most() {
        let mut c = core(
            Side::Client,
            MuxConfig {
                inbound_budget: 3 << 20,
                ..MuxConfig::default()
            },
        );
        let recs: Vec<Rec> = (0..4).map(|_| Rec::default()).collect();
        for (i, rec) in recs.iter().enumerate() {
            let id = 2 * i as u32 + 2;
            c.handle_frame(Frame::Open {
                id,
                index: 0,
                visitor: visitor(),
            })
            .expect("open");
            c.accept(id, rec.clone());
        }
        // Streams 2, 4, 6 each take 1 MiB - 1 KiB (nobody reads), then 8
        // takes 64 KiB and the total passes 3 MiB: one of the three goes,
        // which frees more than the quarter of the budget to be freed.
        for id in [2, 4, 6] {
            for _ in 0..15 {
                c.handle_frame(data(id, MAX_DATA)).expect("within window");
            }
            c.handle_frame(data(id, MAX_DATA - 1024))
                .expect("within window");
        }
        c.handle_frame(data(8, MAX_DATA)).expect("within window");
        c.handle_frame(data(8, MAX_DATA)).expect("within window");
        let reset: Vec<bool> = recs
            .iter()
            .map(|r| r.take().contains(&"reset".to_string()))
            .collect();
        assert_eq!(reset.iter().filter(|r| **r).count(), 1);
        assert!(!reset[3], "the stream holding the least is kept");
        assert!(c.held <= 3 << 20);
        assert!(!c.is_ended());
    }

    #[test]
    fn bytes_written_out_do_not_count_against_the_inbound_budget() {
        let (mut c, rec, serial) = with_peer_stream(MuxConfig {
            inbound_budget: 1 << 20,
            ..MuxConfig::default()
        });
        // 64 MiB through one stream whose user keeps up: never shed, though
        // the window grows to 16 MiB and much is received and not yet
        // granted back at times.
        let mut window = INITIAL_WINDOW as usize;
        let mut sent_since_grant = 0;
        for _ in 0..(64 << 20) / MAX_DATA {
            c.handle_frame(data(2, MAX_DATA)).expect("within window");
            c.consumed(2, serial, MAX_DATA, 0);
            sent_since_grant += MAX_DATA;
            for f in drain(&mut c) {
                if let Frame::Window { increment, .. } = f {
                    window += increment as usize - sent_since_grant;
                    sent_since_grant = 0;
                }
            }
            assert!(sent_since_grant <= window);
        }
        assert!(rec.take().iter().all(|s| s.starts_with("data")));
        assert_eq!(c.held, 0);
        assert_eq!(c.streams[&2].flow.window, 16 << 20);
    }

    #[test]
    fn many_small_holders_are_shed_a_quarter_budget_at_a_time() {
        let budget = 4u64 << 20;
        let mut c = core(
            Side::Client,
            MuxConfig {
                inbound_budget: budget,
                ..MuxConfig::default()
            },
        );
        let mut recs = Vec::new();
        for i in 0..2000u32 {
            let id = 2 * i + 2;
            c.handle_frame(Frame::Open {
                id,
                index: 0,
                visitor: visitor(),
            })
            .expect("open");
            let rec = Rec::default();
            c.accept(id, rec.clone());
            recs.push(rec);
            c.handle_frame(data(id, 4096)).expect("within window");
            assert!(c.held <= budget);
        }
        let reset = recs
            .iter()
            .filter(|r| r.take().contains(&"reset".to_string()))
            .count();
        // 8,000,000 bytes arrived and at most 4 MiB were ever held. Each
        // stream holds 4 KiB and its frame (64 bytes); each pass began less
        // than that over the budget and reset a quarter budget's worth and
        // that (253 streams), not one stream at a time: 4 passes.
        assert_eq!(reset, 4 * 253);
        assert_eq!(c.open_streams(), 2000 - reset);
    }

    #[test]
    fn fin_both_ways_frees_the_id_at_once() {
        let (mut c, rec, serial) = with_peer_stream(MuxConfig::default());
        c.send_fin(2, serial);
        assert!(c.streams.contains_key(&2));
        c.handle_frame(Frame::Fin { id: 2 }).expect("fin");
        assert_eq!(rec.take(), ["fin"]);
        assert!(!c.streams.contains_key(&2));
        // The peer may reuse the id now.
        assert!(matches!(
            c.handle_frame(Frame::Open {
                id: 2,
                index: 0,
                visitor: visitor()
            }),
            Ok(Some(Arrival::Open { id: 2, .. }))
        ));
        // The old handle no longer reaches the new stream.
        let new = c.accept(2, Rec::default());
        assert_ne!(new, serial);
        assert_eq!(c.credit(2, serial), None);
        assert_eq!(
            c.send_data(2, serial, Bytes::from_static(b"x")),
            Err(SendError::Gone)
        );
    }

    #[test]
    fn data_after_the_peers_fin_resets_the_stream() {
        let (mut c, rec, _serial) = with_peer_stream(MuxConfig::default());
        c.handle_frame(Frame::Fin { id: 2 }).expect("fin");
        c.handle_frame(data(2, 10)).expect("a stream matter");
        assert_eq!(rec.take(), ["fin", "discard", "reset", "wake"]);
    }

    #[test]
    fn bad_opens_are_refused_and_their_refusals_bound_reading() {
        let mut c = core(Side::Client, MuxConfig::default());
        // Odd ids are the client's own.
        for i in 0..MAX_REPLIES as u32 {
            assert!(c.wants_read());
            let r = c.handle_frame(Frame::Open {
                id: 2 * i + 1,
                index: 0,
                visitor: visitor(),
            });
            assert!(matches!(r, Ok(None)));
        }
        assert!(
            !c.wants_read(),
            "a peer owed {MAX_REPLIES} refusals is not read from"
        );
        let out = drain(&mut c);
        assert_eq!(out.len(), MAX_REPLIES);
        assert!(out.iter().all(|f| matches!(f, Frame::Reset { .. })));
        assert!(c.wants_read());
    }

    #[test]
    fn granted_credit_is_sent_no_faster_than_the_link_takes_it() {
        let mut c = core(Side::Server, whole_share());
        let rec = Rec::default();
        let (id, serial) = c.open(0, visitor(), rec.clone()).expect("room");
        // The peer grants all the credit it may, then never reads.
        grant_all(&mut c, id);
        rec.take();
        let queued = send_while_credit(&mut c, id, serial, OUTBOUND_QUEUE);
        // All of the queue, less what its frames count for beyond payload.
        let frames = OUTBOUND_QUEUE.div_ceil(MAX_DATA);
        assert!(
            queued >= OUTBOUND_QUEUE - 2 * frames * FRAME_COST,
            "{queued}"
        );
        assert!(c.flow(id, serial).expect("open").credit > 0);
        assert!(rec.take().is_empty());
        // The link takes half the queue: the stream is woken to send again.
        let mut taken = 0;
        while taken < OUTBOUND_QUEUE / 2 {
            if let Some(Frame::Data { payload, .. }) = c.poll_transmit() {
                taken += payload.len();
            }
        }
        assert_eq!(rec.take(), ["wake"]);
        let credit = c.credit(id, serial).expect("open") as usize;
        assert!(
            credit >= taken && credit <= taken + 2 * frames * FRAME_COST,
            "{credit} for {taken} taken"
        );
    }

    /// A stream granted far more credit than the link drains queues at
    /// most its share, so a frame of another stream goes out behind at most
    /// that much of it (before, behind the whole 8 MiB queue); it is woken
    /// once the link has taken it back under half its share, and not before.
    #[test]
    fn one_stream_queues_at_most_its_share_and_others_go_out_behind_no_more() {
        let share = STREAM_QUEUE;
        let mut c = core(Side::Server, MuxConfig::default());
        let bulk_rec = Rec::default();
        let (bulk, bulk_serial) = c.open(0, visitor(), bulk_rec.clone()).expect("room");
        let (chat, chat_serial) = c.open(0, visitor(), Rec::default()).expect("room");
        grant_all(&mut c, bulk);
        let queued = send_while_credit(&mut c, bulk, bulk_serial, share);
        // (Past half its share counted at the frames' cost.)
        assert!(queued >= share / 2, "{queued} queued");
        assert!(c.flow(bulk, bulk_serial).expect("open").credit > 0);
        bulk_rec.take();
        c.send_data(chat, chat_serial, Bytes::from_static(b"ls\n"))
            .expect("within credit");
        // Everything goes out in order: the other stream's byte after at
        // most the share of the first.
        let mut before = 0;
        let mut woken_at = None;
        loop {
            match c.poll_transmit().expect("the chat frame is queued") {
                Frame::Data { id, payload } if id == bulk => before += payload.len(),
                Frame::Data { id, .. } if id == chat => break,
                _ => {}
            }
            if woken_at.is_none() && bulk_rec.take() == ["wake"] {
                woken_at = Some(before);
            }
        }
        assert_eq!(before, queued);
        let woken_at = woken_at.expect("the first stream was woken");
        assert!(
            queued - woken_at <= share / 2 && queued - woken_at + MAX_DATA >= share / 2,
            "woken with {} still queued",
            queued - woken_at
        );
        // Woken, it may queue again, up to its share.
        let credit = c.credit(bulk, bulk_serial).expect("open") as usize;
        assert!(credit >= share / 2 && credit <= share, "{credit}");
    }

    /// The share follows the link's unsent limit up, never below the
    /// configured one.
    #[test]
    fn the_share_follows_the_link() {
        let mut c = core(Side::Server, MuxConfig::default());
        let (id, serial) = c.open(0, visitor(), Rec::default()).expect("room");
        grant_all(&mut c, id);
        let queue_all = |c: &mut TestCore| {
            let queued = send_while_credit(c, id, serial, usize::MAX);
            drain(c);
            queued
        };
        c.follow_link(Some(4 << 20));
        let fast = queue_all(&mut c);
        assert!((2 << 20..=4 << 20).contains(&fast), "{fast}");
        c.follow_link(Some(16 << 10));
        let slow = queue_all(&mut c);
        assert!((STREAM_QUEUE / 2..=STREAM_QUEUE).contains(&slow), "{slow}");
        c.follow_link(None);
        assert!(queue_all(&mut c) <= STREAM_QUEUE);
        // However fast the link, one stream leaves the others half the queue.
        c.follow_link(Some(64 << 20));
        let fastest = queue_all(&mut c);
        assert!(
            (OUTBOUND_QUEUE / 4..=OUTBOUND_QUEUE / 2).contains(&fastest),
            "{fastest}"
        );
    }

    #[test]
    fn starved_streams_are_listed_once_woken_a_few_at_a_time_and_the_list_stays_bounded() {
        let mut c = core(Side::Server, whole_share());
        // Streams opened while there was room: 1,000 that will go, 100 that
        // stay, and one whose granted credit fills the queue.
        let open = |c: &mut TestCore, n: usize| -> Vec<(u32, u64, Rec)> {
            (0..n)
                .map(|_| {
                    let rec = Rec::default();
                    let (id, serial) = c.open(0, visitor(), rec.clone()).expect("room");
                    (id, serial, rec)
                })
                .collect()
        };
        let going = open(&mut c, 1000);
        let staying = open(&mut c, 100);
        let (big, big_serial) = c.open(0, visitor(), Rec::default()).expect("room");
        fill_the_queue(&mut c, big, big_serial);
        // Those that go find it full, then are reset: listed, then stale.
        for (id, serial, _) in &going {
            assert_eq!(c.credit(*id, *serial), Some(0));
            c.reset(*id, *serial);
        }
        // Those that stay ask twice each: listed once, and the stale
        // entries are dropped as they come.
        for (id, serial, _) in &staying {
            assert_eq!(c.credit(*id, *serial), Some(0));
            assert_eq!(c.credit(*id, *serial), Some(0));
        }
        assert!(
            c.starved.len() <= 2 * c.streams.len() + 65,
            "{} listed for {} streams",
            c.starved.len(),
            c.streams.len()
        );
        // Half the queue out: STARVED_WAKE of those listed are woken per
        // frame out from then on, in the order they were listed.
        for (_, _, rec) in &staying {
            rec.take();
        }
        let mut taken = 0;
        while taken <= OUTBOUND_QUEUE / 2 {
            match c.poll_transmit() {
                Some(Frame::Data { payload, .. }) => taken += payload.len(),
                Some(_) => {}
                None => panic!("the queue ran dry"),
            }
        }
        let woken = staying
            .iter()
            .filter(|(_, _, r)| r.take() == ["wake"])
            .count();
        assert!((1..=2 * STARVED_WAKE).contains(&woken), "{woken} woken");
    }

    #[test]
    fn a_stream_reset_before_its_open_went_out_never_reaches_the_peer() {
        let mut c = core(Side::Server, MuxConfig::default());
        let (sent, sent_serial) = c.open(0, visitor(), Rec::default()).expect("open");
        let (gone, serial) = c.open(0, visitor(), Rec::default()).expect("open");
        c.send_data(gone, serial, Bytes::from(vec![1u8; 1000]))
            .expect("within credit");
        c.send_fin(gone, serial);
        let (kept, kept_serial) = c.open(0, visitor(), Rec::default()).expect("open");
        // Nothing of `gone` has gone out: withdrawn, no RESET owed.
        assert!(!c.reset(gone, serial));
        assert!(
            c.taken(gone),
            "its id is not given out while its frames wait"
        );
        let out = drain(&mut c);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out.iter().all(|f| matches!(f, Frame::Open { .. })));
        assert!(out.iter().all(|f| f.stream() != gone));
        assert_eq!((c.data_queued, c.controls_queued), (0, 0));
        assert!(!c.taken(gone) && c.withdrawn.is_empty());
        // A stream whose OPEN went out is reset the usual way, and a
        // frame queued after the withdrawal still goes.
        assert!(c.reset(sent, sent_serial));
        c.send_data(kept, kept_serial, Bytes::from_static(b"kept"))
            .expect("within credit");
        let out = drain(&mut c);
        assert!(
            matches!(out[..], [Frame::Reset { id }, Frame::Data { id: d, .. }] if id == sent && d == kept),
            "{out:?}"
        );
    }

    #[test]
    fn withdrawn_streams_cost_one_queued_frame_each_until_the_link_takes_them() {
        let mut c = core(Side::Server, MuxConfig::default());
        // Visitors that leave at once, on a link that takes nothing: one
        // queued frame each (the OPEN), not two; one visitor stays.
        let mut opened = 0usize;
        let mut stays = None;
        let refused = loop {
            match c.open(0, visitor(), Rec::default()) {
                Ok((id, _)) if opened == MAX_QUEUED_CONTROLS / 2 => {
                    opened += 1;
                    stays = Some(id);
                }
                Ok((id, serial)) => {
                    opened += 1;
                    assert!(!c.reset(id, serial));
                    assert!(opened < 1 << 20, "never refused");
                }
                Err(e) => break e,
            }
        };
        assert_eq!(refused, StreamError::Backlogged);
        assert_eq!(opened, MAX_QUEUED_CONTROLS);
        // The link takes the queue: only the stream that stayed goes out,
        // and nothing is left queued or remembered.
        let out = drain(&mut c);
        assert!(
            matches!(out[..], [Frame::Open { id, .. }] if Some(id) == stays),
            "{out:?}"
        );
        assert_eq!(c.controls_queued, 0);
        assert!(c.withdrawn.is_empty() && c.withdrawn_order.is_empty());
        assert!(c.open(0, visitor(), Rec::default()).is_ok());
    }

    #[test]
    fn a_link_that_takes_nothing_stops_new_streams_and_associations() {
        let mut c = core(Side::Server, MuxConfig::default());
        // The peer never reads while visitors come and go: their OPENs and
        // FINs pile up until the queue's bound, then opens are refused.
        let mut opened = 0u32;
        let refused = loop {
            match c.open(0, visitor(), Rec::default()) {
                Ok((id, serial)) => {
                    opened += 1;
                    c.send_fin(id, serial);
                    assert!(opened < 1 << 20, "never refused");
                }
                Err(e) => break e,
            }
        };
        assert_eq!(refused, StreamError::Backlogged);
        assert_eq!(opened as usize, MAX_QUEUED_CONTROLS / 2);
        // UDP the same (the bound is shared), once the link took some.
        for _ in 0..1000 {
            c.poll_transmit();
        }
        let mut associated = 0usize;
        let refused = loop {
            match c.associate(0, visitor(), Rec::default()) {
                Ok(id) => {
                    associated += 1;
                    assert!(c.dissociate(id));
                }
                Err(e) => break e,
            }
        };
        assert_eq!(refused, StreamError::Backlogged);
        assert_eq!(associated, 500);
        // Once the link takes it all, both work again.
        while c.poll_transmit().is_some() {}
        assert_eq!((c.data_queued, c.udp_queued, c.controls_queued), (0, 0, 0));
        assert!(c.open(0, visitor(), Rec::default()).is_ok());
        assert!(c.associate(0, visitor(), Rec::default()).is_ok());
    }

    #[test]
    fn a_waiting_sender_listed_behind_streams_that_do_not_send_is_woken() {
        let mut c = core(Side::Server, whole_share());
        // 2,000 streams that will not send when woken (say, visitors that
        // only receive), listed first; then an upload's stream; then one
        // that sent its FIN, which is never listed.
        let idle: Vec<(u32, u64)> = (0..2000)
            .map(|_| c.open(0, visitor(), Rec::default()).expect("room"))
            .collect();
        let uploader = Rec::default();
        let (up, up_serial) = c.open(0, visitor(), uploader.clone()).expect("room");
        let (done, done_serial) = c.open(0, visitor(), Rec::default()).expect("room");
        c.send_fin(done, done_serial);
        fill_the_queue(&mut c, up, up_serial);
        let listed_before = c.starved.len();
        for &(id, serial) in &idle {
            assert_eq!(c.credit(id, serial), Some(0));
        }
        assert_eq!(c.credit(done, done_serial), Some(0));
        assert_eq!(c.starved.len(), listed_before + 2000);
        // Move the uploader behind them all: woken first, it sent nothing
        // more, and lists itself again.
        c.flow(up, up_serial).expect("open").starved = false;
        c.starved.retain(|(id, _)| *id != up);
        assert_eq!(c.credit(up, up_serial), Some(0));
        uploader.take();
        // The link takes everything: the uploader is woken, although the
        // batches woken as the queue drained did not reach it.
        while c.poll_transmit().is_some() {}
        assert_eq!(uploader.take(), ["wake"]);
        assert!(c.starved.is_empty());
    }

    #[test]
    fn a_client_stops_reading_a_server_that_takes_nothing() {
        let mut c = core(Side::Client, MuxConfig::default());
        // The server opens streams the client resets at once (its service is
        // down) and never reads: the RESETs pile up to the bound, then its
        // OPENs are refused with counted replies, and reading stops.
        let mut id = 2;
        while c.wants_read() {
            match c.handle_frame(Frame::Open {
                id,
                index: 0,
                visitor: visitor(),
            }) {
                Ok(Some(Arrival::Open { id, .. })) => {
                    let serial = c.accept(id, Rec::default());
                    c.reset(id, serial);
                }
                Ok(_) => {}
                Err(_) => panic!("a refusal, not an end"),
            }
            id += 2;
            assert!(id < 1 << 22, "never stopped reading");
        }
        assert!(c.controls_queued <= MAX_QUEUED_CONTROLS + MAX_REPLIES);
        assert_eq!(c.open_streams(), 0);
    }

    #[test]
    fn a_finished_stream_still_held_gives_way_to_a_reused_id() {
        let (mut c, rec, serial) = with_peer_stream(MuxConfig::default());
        c.handle_frame(data(2, 1000)).expect("within window");
        c.handle_frame(Frame::Fin { id: 2 }).expect("fin");
        c.send_fin(2, serial);
        drain(&mut c);
        rec.take();
        // The peer, its id space used up, opens id 2 again.
        assert!(matches!(
            c.handle_frame(Frame::Open {
                id: 2,
                index: 0,
                visitor: visitor()
            }),
            Ok(Some(Arrival::Open { id: 2, .. }))
        ));
        assert_eq!(rec.take(), ["discard", "reset", "wake"]);
        assert_eq!(c.held, 0);
        assert!(drain(&mut c).is_empty(), "nothing owed to the peer");
    }

    #[test]
    fn a_finished_stream_stays_until_what_arrived_is_written_out() {
        let (mut c, rec, serial) = with_peer_stream(MuxConfig::default());
        c.handle_frame(data(2, 1000)).expect("within window");
        c.handle_frame(Frame::Fin { id: 2 }).expect("fin");
        c.send_fin(2, serial);
        // FIN both ways, 1000 bytes not yet written out: still counted, and
        // the session's end would still reach it.
        assert!(c.streams.contains_key(&2));
        assert_eq!(c.held, 1000 + FRAME_COST as u64);
        c.consumed(2, serial, 600, 1);
        assert_eq!(c.held, 400, "the frame was taken");
        assert!(c.streams.contains_key(&2));
        c.consumed(2, serial, 400, 0);
        assert!(!c.streams.contains_key(&2));
        assert_eq!(c.held, 0);
        assert_eq!(rec.take(), ["data 1000", "fin"]);
        // A user that gives up on such a stream lets it go, quietly: the
        // peer has forgotten it.
        let (mut c, _rec, serial) = with_peer_stream(MuxConfig::default());
        c.handle_frame(data(2, 1000)).expect("within window");
        c.handle_frame(Frame::Fin { id: 2 }).expect("fin");
        c.send_fin(2, serial);
        drain(&mut c);
        c.reset(2, serial);
        assert!(!c.streams.contains_key(&2));
        assert_eq!(c.held, 0);
        assert!(drain(&mut c).is_empty());
    }

    /// A peer sending one-byte DATA frames to a stream whose user takes
    /// none (a client still connecting to its service, say) pays for each
    /// frame's place in the user's queue: the inbound budget counts it, and
    /// resets the stream before the frames' cost passes the budget. Before,
    /// only the bytes counted, and a 1 MiB window held a million frames.
    /// Tiny frames waiting together for their user are gathered into one
    /// arrival (see `stream::Arrivals`); what the user reports taking and
    /// writing out leaves the budget exactly: each frame's cost once taken,
    /// each byte once written.
    #[test]
    fn gathered_frames_leave_the_budget_as_they_are_taken_and_written() {
        let (port, arrivals, _credit) = super::super::stream::MuxStream::port();
        let (mut c, serial) = with_peer_stream_to(MuxConfig::default(), port);
        let id = 2;
        let cost = |bytes: u64, frames: u64| bytes + frames * FRAME_COST as u64;
        for _ in 0..1000 {
            c.handle_frame(data(id, 2)).expect("within the window");
        }
        assert_eq!(c.held, cost(2000, 1000));
        let Ok((Inbound::Data(first), frames)) = arrivals.try_pop() else {
            panic!("data");
        };
        assert_eq!((first.len(), frames), (2000, 1000), "one arrival");
        // Taken, half written out: the frames' cost and those bytes leave.
        c.consumed(id, serial, 1000, frames);
        assert_eq!(c.held, cost(1000, 0));
        for _ in 0..10 {
            c.handle_frame(data(id, 3)).expect("within the window");
        }
        assert_eq!(c.held, cost(1030, 10));
        let Ok((Inbound::Data(next), frames)) = arrivals.try_pop() else {
            panic!("data");
        };
        assert_eq!((next.len(), frames), (30, 10));
        c.consumed(id, serial, 1030, frames);
        assert_eq!(c.held, 0, "all written out");
    }

    #[test]
    fn one_byte_frames_are_counted_at_their_cost() {
        let budget = 1u64 << 20;
        let (mut c, rec, _) = with_peer_stream(MuxConfig {
            inbound_budget: budget,
            ..MuxConfig::default()
        });
        let mut sent = 0u64;
        for _ in 0..100_000 {
            c.handle_frame(data(2, 1)).expect("within window");
            sent += 1;
            assert!(c.held <= budget, "{} held after {sent} frames", c.held);
            if !c.streams.contains_key(&2) {
                break;
            }
        }
        assert!(sent < 20_000, "reset after {sent} one-byte frames");
        assert!(rec.take().contains(&"reset".to_string()));
        assert_eq!(c.held, 0);
        // Empty DATA frames hand nothing on and hold nothing.
        let (mut c, rec, _) = with_peer_stream(MuxConfig::default());
        for _ in 0..1000 {
            c.handle_frame(data(2, 0)).expect("empty");
        }
        assert_eq!(c.held, 0);
        assert!(rec.take().is_empty());
    }

    #[test]
    fn a_server_refuses_every_open_and_association_and_counts_them() {
        let mut c = core(Side::Server, MuxConfig::default());
        for i in 0..MAX_REPLIES as u32 / 2 {
            let (id, visitor) = (2 * i + 1, visitor());
            let open = c.handle_frame(Frame::Open {
                id,
                index: 0,
                visitor,
            });
            let assoc = c.handle_frame(Frame::Associate {
                id: id + 2 * MAX_REPLIES as u32,
                index: 0,
                visitor,
            });
            assert!(matches!((open, assoc), (Ok(None), Ok(None))));
        }
        assert!(!c.wants_read(), "every refusal is owed and counted");
        assert_eq!(c.open_streams(), 0);
        let out = drain(&mut c);
        assert_eq!(out.len(), MAX_REPLIES);
        assert!(
            out.iter()
                .all(|f| matches!(f, Frame::Reset { .. } | Frame::Dissociate { .. }))
        );
    }

    #[test]
    fn a_flood_of_pings_owes_one_pong_with_the_latest_nonce() {
        let mut c = core(Side::Server, MuxConfig::default());
        for nonce in 0..100_000 {
            c.handle_frame(Frame::Ping { nonce }).expect("ping");
        }
        assert!(c.wants_read());
        let out = drain(&mut c);
        assert!(
            matches!(out[..], [Frame::Pong { nonce: 99_999 }]),
            "{out:?}"
        );
    }

    #[test]
    fn credit_beyond_the_maximum_ends_the_mux() {
        let mut c = core(Side::Client, MuxConfig::default());
        let (id, _) = c.open(0, visitor(), Rec::default()).expect("room");
        let r = c.handle_frame(Frame::Window {
            id,
            increment: u32::MAX,
        });
        assert!(matches!(r, Err(End::Protocol(_))));
    }

    #[test]
    fn pings_are_due_each_interval_and_silence_forces_a_reconnect() {
        let start = Instant::now();
        let config = MuxConfig::default();
        let mut c: TestCore = Core::new(Side::Client, config.clone(), start);
        assert_eq!(c.poll_timeout(), start + config.ping_interval);
        assert!(!c.handle_timeout(start + Duration::from_secs(1), false));
        assert!(drain(&mut c).is_empty());
        let mut now = start;
        let mut forced = 0;
        for _ in 0..3 {
            now = c.poll_timeout();
            if c.handle_timeout(now, false) {
                forced += 1;
            }
            assert!(matches!(drain(&mut c)[..], [Frame::Ping { .. }]));
        }
        // 15 s of silence at the third ping.
        assert_eq!(forced, 1);
        // The clock starts again, but the time bytes last came stays true
        // (a peer that is gone must not look alive).
        assert_eq!(c.last_rx(), start);
        // Something arrives: no reconnect at the next ping.
        c.touch(now + Duration::from_secs(1));
        assert!(!c.handle_timeout(c.poll_timeout(), false));
        // Not reading by choice while the writes go out: excused, however
        // long it lasts.
        for _ in 0..10 {
            assert!(!c.handle_timeout(c.poll_timeout(), true));
        }
        assert!(!c.handle_timeout(c.poll_timeout(), false));
        // Once not excused, silence is judged again.
        let mut forced = false;
        for _ in 0..3 {
            forced |= c.handle_timeout(c.poll_timeout(), false);
        }
        assert!(forced);
    }

    #[test]
    fn session_frames_go_first_and_survive_the_end() {
        let mut c = core(Side::Client, MuxConfig::default());
        let (id, serial) = c.open(0, visitor(), Rec::default()).expect("room");
        c.send_data(id, serial, Bytes::from_static(b"abc"))
            .expect("credit");
        c.send_session(Frame::Unpublish { index: 3 })
            .expect("a session frame");
        let first = c.poll_transmit();
        assert!(matches!(first, Some(Frame::Unpublish { index: 3 })));
        let ports = c.goodbye("bye".into());
        assert_eq!(ports.len(), 1);
        // Only the goodbye goes out after the end.
        let out = drain(&mut c);
        assert!(matches!(&out[..], [Frame::Goodbye { reason }] if reason == "bye"));
        assert!(c.open(0, visitor(), Rec::default()).is_err());
    }

    /// A client-side core with an association the server opened (id 2),
    /// accepted, and an inbound budget of `udp_inbound`.
    fn peer_association(udp_inbound: usize) -> (TestCore, u32, Rec) {
        let mut c = core(
            Side::Client,
            MuxConfig {
                udp_inbound,
                ..MuxConfig::default()
            },
        );
        let Ok(Some(Arrival::Associate { id, .. })) = c.handle_frame(Frame::Associate {
            id: 2,
            index: 0,
            visitor: visitor(),
        }) else {
            panic!("association not passed up");
        };
        let rec = Rec::default();
        c.accept_association(id, rec.clone(), "127.0.0.1:9".parse().unwrap());
        (c, id, rec)
    }

    #[test]
    fn datagrams_within_the_inbound_budget_are_delivered_and_the_rest_counted() {
        let (mut c, id, rec) = peer_association(1000);
        for _ in 0..3 {
            c.handle_frame(Frame::Datagram {
                id,
                payload: Bytes::from(vec![0; 400]),
            })
            .expect("datagram");
        }
        assert_eq!(rec.take().len(), 2);
        assert_eq!(c.udp_stats().dropped_inbound, 1);
        c.datagram_taken(cost(400));
        c.handle_frame(Frame::Datagram {
            id,
            payload: Bytes::from(vec![0; 400]),
        })
        .expect("datagram");
        assert_eq!(rec.take().len(), 1);
    }

    /// Frames count against the queues' bounds at their cost, not their
    /// payload alone: one-byte DATA frames and empty datagrams cannot
    /// queue by the million within a bound of bytes (each held about 80
    /// bytes of memory, counted as 1 or 0).
    #[test]
    fn tiny_frames_and_empty_datagrams_count_at_their_cost() {
        let mut c = core(Side::Server, MuxConfig::default());
        let (id, serial) = c.open(0, visitor(), Rec::default()).expect("room");
        grant_all(&mut c, id);
        let mut frames = 0;
        while c.credit(id, serial).is_some_and(|n| n > 0) && frames < 1_000_000 {
            c.send_data(id, serial, Bytes::from_static(b"x"))
                .expect("within credit");
            frames += 1;
        }
        let most = STREAM_QUEUE / 2 / cost(1) + 1;
        assert!(
            frames <= most,
            "{frames} one-byte frames queued (most {most})"
        );
        let assoc = c.associate(0, visitor(), Rec::default()).expect("room");
        let mut datagrams = 0;
        while datagrams < 1_000_000 && c.send_datagram(assoc, Bytes::new()) {
            datagrams += 1;
        }
        let most = MuxConfig::default().udp_queue / FRAME_COST;
        assert!(
            datagrams <= most,
            "{datagrams} empty datagrams queued (most {most})"
        );
        // And on the way in.
        let (mut c, id, rec) = peer_association(64 * FRAME_COST);
        for _ in 0..1000 {
            c.handle_frame(Frame::Datagram {
                id,
                payload: Bytes::new(),
            })
            .expect("datagram");
        }
        assert_eq!(rec.take().len(), 64);
        assert_eq!(c.udp_stats().dropped_inbound, 1000 - 64);
    }

    /// One visitor host's datagrams take at most half the UDP queue, all
    /// its associations (source ports) together, so a host flooding a port
    /// leaves room for everyone else's; what goes out frees its place, and
    /// an ended association's share goes with its last datagram.
    #[test]
    fn one_host_takes_at_most_half_the_udp_queue() {
        let mut c = core(Side::Server, MuxConfig::default());
        let half = MuxConfig::default().udp_queue / 2;
        let host = |port: u16| SocketAddr::from(([192, 0, 2, 7], port));
        let a = c.associate(0, host(1000), Rec::default()).expect("room");
        let b = c.associate(0, host(1001), Rec::default()).expect("room");
        let payload = Bytes::from(vec![0u8; 1000]);
        let mut queued = 0;
        for i in 0..10_000 {
            let id = if i % 2 == 0 { a } else { b };
            if c.send_datagram(id, payload.clone()) {
                queued += 1;
            }
        }
        assert_eq!(queued, half / cost(1000));
        assert_eq!(c.udp_stats().dropped_queue, 10_000 - queued as u64);
        // Another host still gets in.
        let other = c
            .associate(0, SocketAddr::from(([198, 51, 100, 1], 53)), Rec::default())
            .expect("room");
        assert!(c.send_datagram(other, payload.clone()));
        // Ended with datagrams waiting: its share stays until they go.
        assert!(c.dissociate(a));
        assert_eq!(c.udp_shares.len(), 3);
        drain(&mut c);
        assert_eq!(c.udp_queued, 0);
        assert!(c.udp_by_source.is_empty());
        assert_eq!(
            c.udp_shares.len(),
            2,
            "the ended association's share is gone"
        );
        // The host's room is back.
        assert!(c.send_datagram(b, payload));
        // However small the queue, a host may queue a datagram of the
        // largest size.
        let smallest = MuxConfig {
            udp_queue: cost(MAX_DATAGRAM),
            ..MuxConfig::default()
        };
        let mut c = core(Side::Server, smallest);
        let a = c.associate(0, host(1000), Rec::default()).expect("room");
        assert!(c.send_datagram(a, Bytes::from(vec![0u8; MAX_DATAGRAM])));
    }

    #[test]
    fn tcp_and_udp_take_turns() {
        let mut c = core(Side::Client, MuxConfig::default());
        let (id, serial) = c.open(0, visitor(), Rec::default()).expect("room");
        let assoc = c.associate(0, visitor(), Rec::default()).expect("room");
        for _ in 0..3 {
            c.send_data(id, serial, Bytes::from_static(b"tcp"))
                .expect("credit");
            assert!(c.send_datagram(assoc, Bytes::from_static(b"udp")));
        }
        let kinds: Vec<bool> = drain(&mut c)
            .iter()
            .map(|f| matches!(f, Frame::Associate { .. } | Frame::Datagram { .. }))
            .collect();
        assert_eq!(kinds, [true, false, true, false, true, false, true, false]);
        assert_eq!(c.udp_queued, 0);
    }
}
