//! The state a session's handles and its driver task share.
//!
//! The application's handles ([`super::Stream`] and its halves) and the
//! driver (which owns the transport) meet here, under one short-held lock:
//! writes go into the session's history (which doubles as the send queue),
//! and what arrives into `rx`. Under the lock only bytes are copied: the
//! ciphers are lent to whoever encrypts or decrypts ([`LentWrite`],
//! [`Lent`], `read_cipher`, a sealed link's sealer), who does so with the
//! lock released.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, BytesMut};
use parking_lot::{Mutex, MutexGuard};
use tokio::io::AsyncRead;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use super::{Error, Event, Stats};
use crate::proto::record::{self, Control, RecordReader};
use crate::proto::sealed::{Acks, Link, MAX_FRAME_DATA, Opener, SMALL_READ};
use crate::proto::{Cipher, Inbound, Outbound, Session};

/// The session state behind one lock.
pub(crate) struct State {
    pub session: Session,
    /// Sealed suite: the current connection's frames (`None` in the
    /// compatible suite). Replaced on every resume.
    pub link: Option<Link>,
    /// Received data for the application (record headers already removed).
    pub rx: BytesMut,
    pub rx_limit: usize,
    /// Compatible suite: the buffer a read from the transport goes into
    /// and is decrypted in when the driver decrypts (with the record
    /// layer), and the one an application's write is encrypted into before
    /// it joins the history. Each is lent out with its side (see [`Lent`],
    /// [`LentWrite`]) and let go of when the session is quiet.
    read_scratch: BytesMut,
    write_scratch: Vec<u8>,
    /// Compatible suite: whether the last read brought a small read's
    /// worth or more. Reads get room for as much as one may take while
    /// bytes come in bulk, and for a small read's while the link is quiet,
    /// so that a quiet session's pings and small messages do not each make
    /// it hold a bulk read's buffer again once it let go of it.
    read_busy: bool,
    /// Record layer: the parser of incoming records.
    pub records: Option<RecordReader>,
    /// Compatible suite without records: the read cipher, until the
    /// stream's reader claims it. `rx` then holds the bytes as they came
    /// (duplicates dropped), and the reader decrypts what it hands out,
    /// outside the lock: nothing in them needs reading before.
    pub read_cipher: Option<Cipher>,
    /// Record layer: control records waiting for history space.
    pub controls: Vec<Control>,
    /// Record layer: the write count just after our FIN, once queued.
    pub fin_at: Option<u64>,
    /// Record layer: the write count just after our DONE, once queued.
    pub done_at: Option<u64>,
    /// Record layer: the peer sent DONE.
    pub done_seen: bool,
    /// Record layer: a PING is outstanding.
    pub ping_out: bool,
    /// The write cipher is lent to an application write ([`LentWrite`]):
    /// nothing else may go into the history, and no resume may commit
    /// ([`Shared::lock_between_writes`]), until it is back.
    pub writing: bool,
    /// Whether the application's bytes are encrypted (fixed for the
    /// session; the session's own answer changes while its cipher is lent).
    pub encrypts: bool,
    /// The application will write no more.
    pub write_shut: bool,
    /// Handles still open.
    pub read_open: bool,
    pub write_open: bool,
    /// A transport is attached and working.
    pub connected: bool,
    /// Everything handed to the transport has been flushed.
    pub flushed: bool,
    /// The driver should drop the transport and reconnect (client) or wait
    /// for one (server).
    pub force_reconnect: bool,
    /// Server: whether a broken connection waits for its client (else the
    /// session ends at once). See `Handle::set_resumable`.
    pub resumable: bool,
    /// Sealed suite: the current connection delivered a frame that did not
    /// open; the driver drops it (the session resumes on a new one).
    pub broken: Option<String>,
    /// When the last byte arrived (idle detection).
    pub last_rx: Instant,
    /// Both handles are gone: finish closing by then.
    pub close_deadline: Option<Instant>,
    pub close_timeout: std::time::Duration,
    /// Why the session ended, if it did; `Ok` for a clean close.
    pub ended: Option<Result<(), Error>>,
    pub peer: Option<SocketAddr>,
    pub stats: Stats,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
    pub driver_waker: Option<Waker>,
    /// The unsent limit's last change (see [`State::pace`]): when, and
    /// the session's `sent` then.
    pace_at: Instant,
    pace_sent: u64,
    /// When the session next asks whether it has gone quiet (see
    /// [`State::trim`]), and the bytes it had moved both ways at the last
    /// asking.
    pub trim_at: Instant,
    trim_mark: u64,
    /// Everything spare was let go of at the last asking (when `trim_mark`
    /// bytes had moved): until more move, there is nothing to ask.
    trimmed: bool,
}

/// How often a session asks whether it has gone quiet.
pub(crate) const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Fewer bytes than this moved both ways between two askings, and a session
/// counts as quiet: it lets go of the memory a burst left behind.
const QUIET_BYTES: u64 = 64 * 1024;

/// Most bytes taken from the transport in one read (fewer, larger reads:
/// each costs a system call and a wakeup of the peer).
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// The receiving side of a session, lent to its driver for one read: the
/// read cipher and counts, and the sealed link's opener. The driver reads
/// from the transport and decrypts (or opens) without the session's lock,
/// so neither the application's reads nor its writes wait behind the
/// cryptography; then [`State::take_back`] puts everything back and copies
/// the new bytes into `rx`, the one copy there would be anyway.
pub(crate) struct Lent {
    inbound: Inbound,
    opener: Option<Opener>,
    /// Compatible suite: the session's scratch buffer the read goes into and
    /// is decrypted in. (Sealed frames are read into the opener's input and
    /// opened in place.)
    tail: BytesMut,
    /// Most bytes one read takes.
    limit: usize,
    acks: Acks,
    /// A frame that did not open.
    bad: Option<crate::proto::Error>,
    /// Bytes the read brought, once it did.
    read: Option<usize>,
    /// Of the bytes read (or opened), how many at their front are a resend
    /// of what had arrived.
    dup: usize,
}

impl Lent {
    /// Reads from the transport: ciphertext into the scratch buffer, or
    /// sealed frames into the opener's input.
    pub fn poll_read<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let poll = match &mut self.opener {
            Some(opener) => {
                let input = opener.read_buffer(self.limit);
                let poll = poll_read_buf(Pin::new(io), cx, &mut input.limit(self.limit));
                if let Poll::Ready(Ok(n)) = poll {
                    opener.note_read(n);
                }
                poll
            }
            None => poll_read_buf(Pin::new(io), cx, &mut (&mut self.tail).limit(self.limit)),
        };
        if let Poll::Ready(Ok(n)) = poll
            && n > 0
        {
            self.decrypt(n);
        }
        poll
    }

    /// Decrypts what a read of `n` bytes brought, or opens the frames it
    /// completed, and tells the resend apart from new bytes.
    fn decrypt(&mut self, n: usize) {
        self.dup = match &mut self.opener {
            Some(opener) => {
                if let Err(e) = opener.open(&mut self.acks) {
                    self.bad = Some(e);
                }
                self.inbound.count(opener.opened_len())
            }
            None => self.inbound.handle_input(&mut self.tail),
        };
        self.read = Some(n);
    }
}

/// An application write with the session's write cipher lent to it: the
/// handle lays the bytes out and encrypts them without the session's lock
/// (so the driver's transmits never wait behind the cryptography), then
/// [`State::take_back_write`] appends them to the history.
pub(crate) struct LentWrite {
    outbound: Outbound,
    /// Free history when lent: the most wire bytes the write may take.
    room: usize,
    records: bool,
    /// Where the write is laid out. It keeps its length from one write to
    /// the next (only what a write lays out is used), so it is zeroed as
    /// it grows, not on every write.
    out: Vec<u8>,
}

impl LentWrite {
    /// Lays out up to `most` bytes from `bufs` as they go on the wire (in
    /// DATA records with the record layer, one or more per slice) within
    /// the room, encrypting them into the front of its buffer. Returns how
    /// many of the application's bytes it took and how many wire bytes it
    /// laid out.
    pub fn fill<B: std::ops::Deref<Target = [u8]>>(
        &mut self,
        bufs: &[B],
        most: usize,
    ) -> (usize, usize) {
        let (mut taken, mut at) = (0, 0);
        let out = &mut self.out;
        // Grown as needed, never past the room.
        let room_for = |out: &mut Vec<u8>, end: usize| {
            if out.len() < end {
                out.resize(end, 0);
            }
        };
        'bufs: for buf in bufs {
            let mut buf = &buf[..buf.len().min(most - taken)];
            while !buf.is_empty() {
                let room = self.room - at;
                let n = if self.records {
                    if room <= record::DATA_HEADER {
                        break 'bufs;
                    }
                    let n = buf
                        .len()
                        .min(record::MAX_DATA)
                        .min(room - record::DATA_HEADER);
                    let header = record::data_header(n);
                    room_for(out, at + header.len());
                    self.outbound
                        .encrypt_into(&header, &mut out[at..at + header.len()]);
                    at += header.len();
                    n
                } else {
                    if room == 0 {
                        break 'bufs;
                    }
                    buf.len().min(room)
                };
                room_for(out, at + n);
                self.outbound.encrypt_into(&buf[..n], &mut out[at..at + n]);
                at += n;
                buf = &buf[n..];
                taken += n;
            }
            if taken == most {
                break;
            }
        }
        (taken, at)
    }
}

/// Wakers to call once the lock is released.
#[derive(Default)]
pub(crate) struct Wake {
    wakers: [Option<Waker>; 3],
}

impl Wake {
    /// Keeps a taken waker; taking twice must not lose the first.
    fn add(&mut self, slot: usize, waker: Option<Waker>) {
        if waker.is_some() {
            self.wakers[slot] = waker;
        }
    }

    pub fn fire(self) {
        for w in self.wakers.into_iter().flatten() {
            w.wake();
        }
    }
}

impl State {
    pub fn new(
        session: Session,
        rx_limit: usize,
        close_timeout: std::time::Duration,
        peer: Option<SocketAddr>,
    ) -> Self {
        let mut session = session;
        let records = session.extended().then(RecordReader::new);
        let read_cipher = records.is_none().then(|| session.take_read_cipher());
        let encrypts = session.encrypts();
        State {
            session,
            link: None,
            rx: BytesMut::new(),
            rx_limit,
            read_scratch: BytesMut::new(),
            write_scratch: Vec::new(),
            read_busy: false,
            records,
            read_cipher,
            controls: Vec::new(),
            fin_at: None,
            done_at: None,
            done_seen: false,
            ping_out: false,
            writing: false,
            encrypts,
            write_shut: false,
            read_open: true,
            write_open: true,
            connected: true,
            flushed: true,
            force_reconnect: false,
            resumable: true,
            broken: None,
            last_rx: Instant::now(),
            close_deadline: None,
            close_timeout,
            ended: None,
            peer,
            stats: Stats::default(),
            read_waker: None,
            write_waker: None,
            driver_waker: None,
            pace_at: Instant::now(),
            pace_sent: 0,
            trim_at: Instant::now() + TRIM_EVERY,
            trim_mark: 0,
            trimmed: false,
        }
    }

    /// Bytes moved both ways so far.
    fn moved(&self) -> u64 {
        self.session
            .write_count()
            .saturating_add(self.session.read_count())
    }

    /// Lets go of the memory a burst left behind: an empty receive buffer,
    /// the compatible suite's scratch buffers, the sealed history's
    /// acknowledged bytes, the link's empty buffers.
    /// They grow again when bytes come. Returns whether all of it was let
    /// go of (else bytes not yet read, sent or acknowledged held some back).
    pub fn release_spare(&mut self) -> bool {
        tracing::trace!("session quiet: letting go of spare memory");
        let mut all = true;
        if self.rx.is_empty() {
            self.rx = BytesMut::new();
        } else {
            all = false;
        }
        self.read_scratch = BytesMut::new();
        self.write_scratch = Vec::new();
        self.read_busy = false;
        // (A write under way holds its buffer: it comes back after.)
        all &= !self.writing;
        all &= self.session.release_history();
        if let Some(link) = &mut self.link {
            all &= link.release_buffers();
        }
        all
    }

    /// The transport is gone: the session waits, perhaps for long, for the
    /// next one (a client reconnecting, a server for its client). Whatever
    /// the quiet trim would let go of goes now (nothing runs to ask while it
    /// waits), the application's buffers the history kept among it.
    pub fn transport_lost(&mut self) {
        self.connected = false;
        // A reconnect forced since the break is this one.
        self.force_reconnect = false;
        self.release_spare();
    }

    /// Asks, every [`TRIM_EVERY`], whether the session has gone quiet
    /// (fewer than 64 KiB moved both ways since the last asking), and if
    /// so lets go of its spare memory: a session that once carried a burst
    /// must not keep the buffers of it for its whole life. Returns when to
    /// ask next: not at all once everything was let go of and nothing has
    /// moved since (the first byte that moves starts a new period).
    pub fn trim(&mut self, now: Instant) -> Option<Instant> {
        let moved = self.moved();
        if self.trimmed {
            if moved == self.trim_mark {
                return None;
            }
            self.trimmed = false;
            self.trim_mark = moved;
            self.trim_at = now + TRIM_EVERY;
        }
        if now >= self.trim_at {
            if moved.saturating_sub(self.trim_mark) < QUIET_BYTES {
                self.trimmed = self.release_spare();
            }
            self.trim_mark = moved;
            self.trim_at = now + TRIM_EVERY;
        }
        (!self.trimmed).then_some(self.trim_at)
    }

    /// Sets the unsent limit to what the connection took in the last
    /// `time` (at a steady rate, over however long it has been), never
    /// below `floor`, once `time` has passed since the last change.
    /// Waits while a write is lent out: its room was given under the
    /// limit in force, and a lower one would leave it no place.
    pub fn pace(&mut self, floor: usize, time: std::time::Duration, now: Instant) {
        let elapsed = now.saturating_duration_since(self.pace_at);
        if elapsed < time || self.writing {
            return;
        }
        let sent = self.session.sent();
        // (After a resume `sent` moved back: nothing taken, the floor.)
        let taken = sent.saturating_sub(self.pace_sent) as f64;
        let per_time = taken * time.as_secs_f64() / elapsed.as_secs_f64();
        let limit = (per_time as usize).max(floor);
        self.session.set_unsent_limit(Some(limit));
        self.pace_at = now;
        self.pace_sent = sent;
    }

    pub fn take_read_waker(&mut self, wake: &mut Wake) {
        wake.add(0, self.read_waker.take());
    }

    pub fn take_write_waker(&mut self, wake: &mut Wake) {
        wake.add(1, self.write_waker.take());
    }

    pub fn take_driver_waker(&mut self, wake: &mut Wake) {
        wake.add(2, self.driver_waker.take());
    }

    /// Ends the session (first reason wins) and wakes everyone.
    pub fn end(&mut self, result: Result<(), Error>, wake: &mut Wake) {
        if self.ended.is_none() {
            self.ended = Some(result);
        }
        self.connected = false;
        self.take_read_waker(wake);
        self.take_write_waker(wake);
        self.take_driver_waker(wake);
    }

    /// Whether the driver can take more bytes from the transport.
    pub fn can_receive(&self) -> bool {
        self.rx_room() > 0 || !self.read_open
    }

    /// How many more bytes `rx` takes from the transport: up to the limit,
    /// and past it what a compatible peer still owes of its resend (the peer
    /// sends it without waiting for anything, as a snet peer reads a resend
    /// whole, so our application's reads must not hold it up either). A
    /// resume waits for a resend only if it fits within the limit and a
    /// history (see [`State::resumed`]).
    pub fn rx_room(&self) -> usize {
        let usual = self.rx_limit.saturating_sub(self.rx.len());
        let owed = usize::try_from(self.session.resend_owed()).unwrap_or(usize::MAX);
        usual.max(owed)
    }

    /// Handles bytes just appended to `rx` from the transport, starting at
    /// `start`: decrypts them, drops duplicates, strips records. Returns the
    /// control records received.
    pub fn received(&mut self, start: usize) -> Result<Vec<Control>, Error> {
        let fresh_len = self.session.handle_input(&mut self.rx[start..]).len();
        let dup = self.rx.len() - start - fresh_len;
        self.accept(start, dup)
    }

    /// Handles bytes appended to `rx` from `start` on and already decrypted,
    /// of which the first `dup` are a resend of what had arrived: drops
    /// those, strips records. Returns the control records received.
    fn accept(&mut self, start: usize, dup: usize) -> Result<Vec<Control>, Error> {
        if dup > 0 {
            let fresh_len = self.rx.len() - start - dup;
            crate::proto::copy::move_down(&mut self.rx, start + dup, start, fresh_len);
            self.rx.truncate(self.rx.len() - dup);
        }
        self.last_rx = Instant::now();
        self.ping_out = false;
        let mut controls = Vec::new();
        if let Some(reader) = &mut self.records {
            match reader.filter(&mut self.rx[start..], |c| controls.push(c)) {
                Ok(data) => self.rx.truncate(start + data),
                Err(e) => {
                    // Half-parsed bytes must not reach the application.
                    self.rx.truncate(start);
                    return Err(Error::Protocol(e));
                }
            }
        }
        if !self.read_open {
            // Nobody will read it: count it, then let it go.
            self.rx.clear();
        }
        Ok(controls)
    }

    /// Handles bytes that came in with a handshake or reconnect reply, as if
    /// the driver had just read them. In the sealed suite they wait in the
    /// link: pass nothing.
    pub fn ingest(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.link.is_some() {
            return self.unseal();
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let start = self.rx.len();
        self.rx.extend_from_slice(bytes);
        let controls = self.received(start)?;
        self.apply_controls(controls);
        Ok(())
    }

    /// Sealed suite: opens the frames waiting in the link's input and
    /// handles their bytes as [`State::received`] does. A frame that does
    /// not open marks the connection `broken`, not the session.
    pub fn unseal(&mut self) -> Result<(), Error> {
        let Some(link) = &mut self.link else {
            return Ok(());
        };
        let start = self.rx.len();
        if let Err(e) = link.handle_input(&mut self.session, &mut self.rx) {
            // Whatever opened before the bad frame is still good.
            self.broken = Some(format!("bad frame: {e}"));
        }
        let fresh_len = self.session.handle_input(&mut self.rx[start..]).len();
        self.opened(start, self.rx.len() - start - fresh_len)
    }

    /// Sealed suite: handles stream bytes opened into `rx` from `start` on,
    /// of which the first `dup` were a resend of what had arrived.
    fn opened(&mut self, start: usize, dup: usize) -> Result<(), Error> {
        if self.rx.len() == start {
            // Acks alone still prove the link alive.
            self.last_rx = Instant::now();
            self.ping_out = false;
            return Ok(());
        }
        let controls = self.accept(start, dup)?;
        self.apply_controls(controls);
        self.within_window()
    }

    /// Sealed suite: handles what opened frames brought, already parsed
    /// into `rx` (their payloads) and `parsed` (their control records, or
    /// why they did not parse).
    fn parsed(&mut self, parsed: crate::proto::Result<Vec<Control>>) -> Result<(), Error> {
        // Acks alone, or records with no payload, still prove the link alive.
        self.last_rx = Instant::now();
        self.ping_out = false;
        let controls = parsed.map_err(Error::Protocol)?;
        if !self.read_open {
            // Nobody will read it: counted, then let go.
            self.rx.clear();
        }
        self.apply_controls(controls);
        self.within_window()
    }

    /// Sealed suite: fails if the peer sent beyond the window we gave.
    fn within_window(&self) -> Result<(), Error> {
        // Counted after duplicates (a resend overlapping the old connection)
        // are dropped: what is left is new, and must fit the window we gave.
        if self.rx.len() > self.rx_limit.saturating_add(2 * MAX_FRAME_DATA) {
            // The peer ignored our window: a broken peer, not a broken link.
            return Err(Error::Protocol(crate::proto::Error::Malformed(
                "data beyond the receive window",
            )));
        }
        Ok(())
    }

    /// Whether what arrives needs no decrypting or opening by the driver,
    /// so it reads straight into `rx` under the lock (the copy from the
    /// kernel, no more than [`READ_CHUNK`]).
    pub fn reads_in_place(&self) -> bool {
        self.link.is_none() && !self.session.decrypts()
    }

    /// Reads from the transport straight into `rx` (see
    /// [`State::reads_in_place`]) and handles what came, as
    /// [`State::received`] does.
    pub fn read_in_place<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> (Poll<std::io::Result<usize>>, Result<(), Error>) {
        let room = if self.read_open {
            self.rx_room()
        } else {
            READ_CHUNK
        };
        let limit = room.clamp(1, READ_CHUNK);
        let start = self.rx.len();
        self.rx.reserve(self.read_room(limit));
        let poll = poll_read_buf(Pin::new(io), cx, &mut (&mut self.rx).limit(limit));
        if let Poll::Ready(Ok(n)) = poll {
            self.read_busy = n >= SMALL_READ / 2;
        }
        let handled = match poll {
            Poll::Ready(Ok(n)) if n > 0 => self.received(start).map(|c| self.apply_controls(c)),
            _ => Ok(()),
        };
        (poll, handled)
    }

    /// The room to make for a read of at most `limit` bytes: all of it
    /// while bytes come in bulk, a small read's while the link is quiet
    /// (see `read_busy`).
    fn read_room(&self, limit: usize) -> usize {
        if self.read_busy {
            limit
        } else {
            limit.min(SMALL_READ)
        }
    }

    /// Lends the receiving side to the driver for one read from the
    /// transport, which it makes, decrypts or opens outside the lock; see
    /// [`Lent`]. `None` if the sealed link's opener is already out (a bug).
    pub fn lend(&mut self) -> Option<Lent> {
        let (opener, limit, reserve) = match &mut self.link {
            // Sealed: the peer sends no more than our window, so always read
            // (acks must never wait behind data nobody reads).
            Some(link) => (Some(link.lend_opener()?), READ_CHUNK, 0),
            None => {
                let room = if self.read_open {
                    self.rx_room()
                } else {
                    READ_CHUNK
                };
                let limit = room.clamp(1, READ_CHUNK);
                (None, limit, self.read_room(limit))
            }
        };
        let mut tail = std::mem::take(&mut self.read_scratch);
        tail.clear();
        tail.reserve(reserve);
        Some(Lent {
            inbound: self.session.lend_inbound(),
            opener,
            tail,
            limit,
            acks: Acks::default(),
            bad: None,
            read: None,
            dup: 0,
        })
    }

    /// Takes the receiving side back from the driver and handles what its
    /// read brought, as [`State::received`] and [`State::unseal`] do.
    pub fn take_back(&mut self, lent: Lent) -> Result<(), Error> {
        let Lent {
            inbound,
            opener,
            tail,
            acks,
            mut bad,
            read,
            dup,
            ..
        } = lent;
        self.session.restore_inbound(inbound);
        if let Some(n) = read {
            self.read_busy = n >= SMALL_READ / 2;
        }
        let start = self.rx.len();
        let parsed = match (&mut self.link, opener) {
            (Some(link), Some(mut opener)) => {
                // Opened in place: one pass from the frames to the buffer,
                // which also takes the records apart.
                let mut controls = Vec::new();
                let parsed = opener.take_opened(dup, &mut self.rx, self.records.as_mut(), |c| {
                    controls.push(c)
                });
                link.restore_opener(opener);
                if read.is_some()
                    && let Err(e) = link.apply(&mut self.session, acks)
                {
                    bad.get_or_insert(e);
                }
                Some(parsed.map(|()| controls))
            }
            _ => {
                self.rx.extend_from_slice(&tail[dup..]);
                None
            }
        };
        if let Some(e) = bad {
            // Whatever opened before the bad frame is still good.
            self.broken = Some(format!("bad frame: {e}"));
        }
        let handled = match (read, parsed) {
            (None, _) => Ok(()),
            (Some(_), Some(parsed)) => self.parsed(parsed),
            (Some(_), None) => self.accept(start, 0).map(|c| self.apply_controls(c)),
        };
        self.read_scratch = tail;
        handled
    }

    /// Sealed suite: the window to advertise: the stream count up to which
    /// the receive buffer can take bytes.
    pub fn window(&self) -> u64 {
        let free = if self.read_open {
            self.rx_limit.saturating_sub(self.rx.len())
        } else {
            self.rx_limit
        };
        self.session.read_count() + free as u64
    }

    /// Sealed suite: whether the application's reads opened enough window
    /// (or enough is unacknowledged) for the driver to say so.
    pub fn update_due(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|l| l.update_due(self.session.read_count(), self.window()))
    }

    /// Whether bytes wait for the transport (in the history or sealed).
    pub fn wire_pending(&self) -> bool {
        self.session.has_pending() || self.link.as_ref().is_some_and(Link::has_output)
    }

    /// Whether bytes are ready for the transport now (bytes held back until
    /// a compatible peer's resend has arrived are not).
    pub fn wire_ready(&self) -> bool {
        self.session.can_transmit() || self.link.as_ref().is_some_and(Link::has_output)
    }

    /// Switches the session onto a resumed transport whose peer is `peer`,
    /// and returns how many bytes this side resends (what the old transport
    /// took that the peer never got). The session is untouched on error.
    pub fn resumed(
        &mut self,
        point: crate::proto::ResumePoint,
        link: Option<Link>,
        peer: Option<SocketAddr>,
    ) -> Result<u64, crate::proto::Error> {
        let sent_before = self.session.max_sent();
        self.session.resume(point)?;
        // The peer's resend is read whatever the application does, but the
        // receive buffer never holds more than its limit and a history.
        let most = self
            .rx_limit
            .saturating_add(self.session.history().capacity());
        let owed = usize::try_from(self.session.resend_owed()).unwrap_or(usize::MAX);
        if self.rx.len().saturating_add(owed) > most {
            self.session.stop_waiting();
        }
        self.link = link;
        self.broken = None;
        let resent = sent_before.saturating_sub(point.peer_read);
        self.stats.resent += resent;
        self.stats.reconnects += 1;
        self.connected = true;
        self.flushed = false;
        self.peer = peer;
        self.last_rx = Instant::now();
        self.ping_out = false;
        Ok(resent)
    }

    /// Acts on received control records.
    pub fn apply_controls(&mut self, controls: Vec<Control>) {
        for c in controls {
            match c {
                // One PONG owed at a time: a peer sending PINGs faster than
                // it reads them is owed one answer, not a queue of them.
                Control::Ping => {
                    if !self.controls.contains(&Control::Pong) {
                        self.queue_control(Control::Pong);
                    }
                }
                Control::Done => self.done_seen = true,
                Control::Pong | Control::Fin => {}
            }
        }
    }

    /// Whether both handles are gone.
    pub fn abandoned(&self) -> bool {
        !self.read_open && !self.write_open
    }

    /// Record layer: whether the peer's FIN has arrived.
    pub fn peer_fin(&self) -> bool {
        self.records.as_ref().is_some_and(RecordReader::fin_seen)
    }

    /// Queues control records that fit into the history now.
    pub fn flush_controls(&mut self) {
        if self.writing {
            // They go in once the write is back.
            return;
        }
        while let Some(&c) = self.controls.first() {
            if self.session.write_capacity() == 0 {
                return;
            }
            self.session.handle_write(&[c.byte()]);
            match c {
                Control::Fin => self.fin_at = Some(self.session.write_count()),
                Control::Done => self.done_at = Some(self.session.write_count()),
                _ => {}
            }
            self.controls.remove(0);
        }
    }

    /// Queues a control record.
    pub fn queue_control(&mut self, c: Control) {
        self.controls.push(c);
        self.flush_controls();
    }

    /// Accepts application bytes into the history; 0 means "no room now".
    pub fn write(&mut self, buf: &[u8]) -> usize {
        self.put(buf.len(), |session, n| session.handle_write(&buf[..n]))
    }

    /// Like [`State::write`], but a sealed history keeps the bytes without
    /// a copy (see [`Session::handle_write_shared`]).
    pub fn write_shared(&mut self, buf: &bytes::Bytes) -> usize {
        self.put(buf.len(), |session, n| {
            session.handle_write_shared(&buf.slice(..n))
        })
    }

    /// Accepts up to `len` application bytes, which `write` puts into the
    /// session (the first `n` of them, returning how many it took), in a
    /// DATA record with the record layer.
    fn put(&mut self, len: usize, write: impl FnOnce(&mut Session, usize) -> usize) -> usize {
        if self.records.is_none() {
            let n = write(&mut self.session, len);
            self.stats.app_written += n as u64;
            return n;
        }
        // Never let app data overtake a queued control record.
        self.flush_controls();
        if !self.controls.is_empty() {
            return 0;
        }
        let room = self.session.write_capacity();
        if room <= record::DATA_HEADER {
            return 0;
        }
        let n = len.min(record::MAX_DATA).min(room - record::DATA_HEADER);
        self.session.handle_write(&record::data_header(n));
        let n = write(&mut self.session, n);
        self.stats.app_written += n as u64;
        n
    }

    /// Starts an application write whose encryption happens outside the
    /// lock (see [`LentWrite`]); `None` if the history has no room now.
    pub fn lend_write(&mut self) -> Option<LentWrite> {
        if self.writing {
            return None;
        }
        let records = self.records.is_some();
        if records {
            // Never let app data overtake a queued control record.
            self.flush_controls();
            if !self.controls.is_empty() {
                return None;
            }
        }
        let room = self.session.write_capacity();
        if room <= if records { record::DATA_HEADER } else { 0 } {
            return None;
        }
        self.writing = true;
        Some(LentWrite {
            outbound: self.session.lend_outbound(),
            room,
            records,
            out: std::mem::take(&mut self.write_scratch),
        })
    }

    /// Finishes an application write: the `wire` bytes [`LentWrite::fill`]
    /// encrypted, carrying `taken` bytes of the application's, go into the
    /// history, and the control records that waited for them after.
    pub fn take_back_write(
        &mut self,
        lent: LentWrite,
        wire: usize,
        taken: usize,
    ) -> Result<(), Error> {
        self.writing = false;
        let LentWrite { outbound, out, .. } = lent;
        let put = match out.get(..wire) {
            Some(bytes) => self.session.restore_outbound(outbound, bytes),
            None => {
                // The cipher moved on by more than there is to append: the
                // session cannot go on (a bug, never a peer's doing).
                self.session.restore_outbound(outbound, &[]);
                self.write_scratch = out;
                return Err(Error::Internal("a write laid out more than its buffer"));
            }
        };
        self.write_scratch = out;
        if put < wire {
            return Err(Error::Internal("a write outgrew the room it was given"));
        }
        self.stats.app_written += taken as u64;
        self.flush_controls();
        Ok(())
    }

    /// Copies received data out for the application.
    pub fn read_into(&mut self, out: &mut tokio::io::ReadBuf<'_>) -> usize {
        let n = self.rx.len().min(out.remaining());
        // In pieces: see proto::copy.
        for piece in self.rx[..n].chunks(crate::proto::copy::PIECE) {
            out.put_slice(piece);
        }
        self.rx.advance(n);
        self.stats.app_read += n as u64;
        n
    }

    /// Whether everything the application wrote has reached the transport.
    pub fn all_sent(&self) -> bool {
        !self.wire_pending() && self.controls.is_empty() && self.flushed
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        Stats {
            wire_written: self.session.write_count(),
            wire_read: self.session.read_count(),
            connected: self.connected,
            ..self.stats.clone()
        }
    }
}

/// Held by a session's driver task: if the task stops without ending the
/// session (it panicked, or was cancelled), the session ends with an error,
/// so the application is told instead of waiting forever.
pub(crate) struct DriverGuard(pub std::sync::Arc<Shared>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        if self.0.state.lock().ended.is_none() {
            self.0
                .end(Err(Error::Internal("the session's driver stopped")));
        }
    }
}

/// The state, and the channel events are published on.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    /// Made when the application first subscribes: a channel's memory is
    /// its 64 slots (about 12 KiB), which a session nobody listens to
    /// should not pay for (an event sent before anyone subscribes reaches
    /// nobody either way).
    events: std::sync::OnceLock<broadcast::Sender<Event>>,
    pub id: u64,
    /// A value both ends of this session, and nobody else's session, share.
    pub binding: [u8; 32],
    /// The runtime the driver runs on, when a listener's threads run it
    /// (held, it keeps those threads running).
    pub home: Option<super::threads::Home>,
}

impl Shared {
    pub fn new(state: State) -> Self {
        use sha2::{Digest, Sha256};
        let id = state.session.id();
        let binding = match state.session.secrets() {
            Some(secrets) => secrets.binding,
            None => Sha256::new()
                .chain_update(b"rejoin channel binding v1")
                .chain_update(state.session.key().as_bytes())
                .chain_update(id.to_le_bytes())
                .finalize()
                .into(),
        };
        Shared {
            state: Mutex::new(state),
            events: std::sync::OnceLock::new(),
            id,
            binding,
            home: None,
        }
    }

    /// Records the runtime the driver will run on.
    pub fn at_home(mut self, home: Option<super::threads::Home>) -> Self {
        self.home = home;
        self
    }

    /// The lock, taken when no application write has the write cipher
    /// (see [`LentWrite`]): a resume commits only then, since it may take
    /// back room in the history that a write was promised. A write gives the
    /// cipher back within the poll that took it, so this waits for at most
    /// that; the bound on the wait is only a guard.
    pub async fn lock_between_writes(&self) -> MutexGuard<'_, State> {
        let give_up = Instant::now() + std::time::Duration::from_secs(1);
        loop {
            {
                let st = self.state.lock();
                if !st.writing || Instant::now() >= give_up {
                    return st;
                }
            }
            tokio::task::yield_now().await;
        }
    }

    /// Publishes an event (nobody listening is fine).
    pub fn emit(&self, event: Event) {
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    /// A receiver of the session's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events
            .get_or_init(|| broadcast::channel(64).0)
            .subscribe()
    }

    /// Ends the session and wakes everyone.
    pub fn end(&self, result: Result<(), Error>) {
        let mut wake = Wake::default();
        let event = {
            let mut st = self.state.lock();
            st.end(result, &mut wake);
            match &st.ended {
                Some(Err(e)) => Event::Closed {
                    error: Some(e.clone()),
                },
                _ => Event::Closed { error: None },
            }
        };
        wake.fire();
        self.emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cipher::{client_ciphers, server_ciphers};
    use crate::proto::{Key, Params, Role};
    use std::io::IoSlice;

    /// A client's state and a server's, RC4 both ways, with or without
    /// records, and `history` bytes of history each.
    fn pair(records: bool, history: usize) -> (State, State) {
        let key = Key::from_bytes(*b"01234567");
        let params = Params {
            history,
            in_flight: history / 4,
            ..Params::default()
        };
        let (sc, enc) = server_ciphers(&key, true, 9);
        let (cc, id) = client_ciphers(&key, true, enc);
        let state = |s| State::new(s, 1 << 20, std::time::Duration::from_secs(1), None);
        (
            state(Session::new(Role::Client, id, key, params, records, cc)),
            state(Session::new(Role::Server, 9, key, params, records, sc)),
        )
    }

    /// The unsent limit follows what the connection took over the last
    /// period, scaled to `time`, never below the floor, and moves only once
    /// `time` has passed.
    #[test]
    fn the_unsent_limit_follows_what_the_connection_takes() {
        let (mut c, _s) = pair(false, 64 << 20);
        let time = std::time::Duration::from_millis(20);
        let start = c.pace_at;
        // 4 MiB taken in the first 20 ms: the limit is 4 MiB.
        assert_eq!(c.session.handle_write(&vec![0; 4 << 20]), 4 << 20);
        c.session.handle_transmitted(4 << 20);
        c.pace(256 << 10, time, start + time / 2);
        assert_eq!(c.session.params().unsent_limit, None, "not yet");
        c.pace(256 << 10, time, start + time);
        assert_eq!(c.session.params().unsent_limit, Some(4 << 20));
        // 1 MiB over the next 80 ms: 256 KiB per 20 ms.
        c.session.handle_write(&vec![0; 1 << 20]);
        c.session.handle_transmitted(1 << 20);
        c.pace(64 << 10, time, start + 5 * time);
        assert_eq!(c.session.params().unsent_limit, Some(256 << 10));
        // Nothing taken (a stalled or idle connection): the floor.
        c.pace(64 << 10, time, start + 6 * time);
        assert_eq!(c.session.params().unsent_limit, Some(64 << 10));
    }

    /// A limit lowered while a write is out (encrypting outside the lock,
    /// in the room the old limit gave) would leave it no place in the
    /// history and end the session: the pace waits for the write.
    #[test]
    fn the_unsent_limit_holds_while_a_write_is_out() {
        let (mut c, _s) = pair(false, 64 << 20);
        let time = std::time::Duration::from_millis(20);
        let start = c.pace_at;
        // A fast connection: 4 MiB taken in 20 ms, the limit 4 MiB.
        c.session.handle_write(&vec![0; 4 << 20]);
        c.session.handle_transmitted(4 << 20);
        c.pace(64 << 10, time, start + time);
        assert_eq!(c.session.params().unsent_limit, Some(4 << 20));
        let mut lent = c.lend_write().expect("room");
        // It stops taking anything while the write is out.
        c.pace(64 << 10, time, start + 2 * time);
        let data = vec![7u8; 1 << 20];
        let (took, wire) = lent.fill(&[IoSlice::new(&data)], usize::MAX);
        assert_eq!(took, 1 << 20);
        c.take_back_write(lent, wire, took)
            .expect("the write keeps the room it was given");
        // Then the limit follows the connection again.
        c.pace(64 << 10, time, start + 3 * time);
        assert_eq!(c.session.params().unsent_limit, Some(64 << 10));
    }

    /// What the history holds for the transport.
    fn pending(st: &State) -> Vec<u8> {
        let (a, b) = st.session.poll_transmit();
        [a, b].concat()
    }

    /// A transport with nothing to read yet.
    struct Silent;

    impl tokio::io::AsyncRead for Silent {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    /// A compatible session without the record layer reads straight into
    /// its receive buffer: a bulk read's room while bytes come in bulk, a
    /// small read's once quiet.
    #[test]
    fn a_quiet_compatible_session_reads_into_small_room() {
        let (mut c, mut s) = pair(false, 4 << 20);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(c.session.handle_write(&vec![4u8; 300 << 10]), 300 << 10);
        let sent = pending(&c);
        c.session.handle_transmitted(sent.len());
        // Quiet to begin with: the first read gets a small read's room.
        let (read, handled) = s.read_in_place(&mut &sent[..], &mut cx);
        handled.expect("bytes");
        assert!(matches!(read, Poll::Ready(Ok(n)) if n <= SMALL_READ));
        // Then bulk.
        let (read, handled) = s.read_in_place(&mut &sent[SMALL_READ..], &mut cx);
        handled.expect("bytes");
        assert!(matches!(read, Poll::Ready(Ok(n)) if n > SMALL_READ));
        s.rx.clear();
        let t0 = s.trim_at;
        s.trim(t0);
        s.trim(t0 + TRIM_EVERY);
        assert_eq!(s.rx.capacity(), 0);
        let (read, _) = s.read_in_place(&mut Silent, &mut cx);
        assert!(read.is_pending());
        assert!(s.rx.capacity() <= SMALL_READ, "{}", s.rx.capacity());
    }

    /// A compatible session lets go of its scratch buffers when quiet: the
    /// one a burst of writes was encrypted into, and the one a burst of
    /// reads was decrypted in (each as large as the burst's pieces, up to
    /// 256 KiB, for the session's whole life before).
    #[test]
    fn a_quiet_compatible_session_lets_go_of_its_scratch_buffers() {
        let (mut c, mut s) = pair(true, 4 << 20);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let data = vec![3u8; 200 << 10];
        let mut lent = c.lend_write().expect("room");
        let (took, wire) = lent.fill(&[IoSlice::new(&data)], usize::MAX);
        assert_eq!(took, data.len());
        c.take_back_write(lent, wire, took).expect("fits");
        assert!(c.write_scratch.capacity() >= 200 << 10);
        let sent = pending(&c);
        c.session.handle_transmitted(sent.len());
        let mut at = 0;
        for _ in 0..100 {
            let mut lent = s.lend().expect("lent");
            match lent.poll_read(&mut &sent[at..], &mut cx) {
                Poll::Ready(Ok(n)) => at += n,
                other => panic!("{other:?}"),
            }
            s.take_back(lent).expect("records");
            if at == sent.len() {
                break;
            }
        }
        assert_eq!(&s.rx[..], &data[..]);
        s.rx.clear();
        assert!(s.read_scratch.capacity() >= 64 << 10);
        for st in [&mut c, &mut s] {
            let t0 = st.trim_at;
            // The first asking sees the burst; the second finds it quiet.
            assert_eq!(st.trim(t0), Some(t0 + TRIM_EVERY));
            st.trim(t0 + TRIM_EVERY);
            assert_eq!(
                (st.read_scratch.capacity(), st.write_scratch.capacity()),
                (0, 0)
            );
        }
        // A read while quiet (a ping's, say) gets a small read's room, not
        // a bulk read's buffer again.
        let mut lent = s.lend().expect("lent");
        assert!(lent.poll_read(&mut Silent, &mut cx).is_pending());
        s.take_back(lent).expect("nothing read");
        assert!(s.read_scratch.capacity() <= SMALL_READ);
        // And they grow back when bytes come again.
        let mut lent = c.lend_write().expect("room");
        let (took, wire) = lent.fill(&[IoSlice::new(b"again")], usize::MAX);
        c.take_back_write(lent, wire, took).expect("fits");
        let again = pending(&c);
        let mut lent = s.lend().expect("lent");
        assert!(matches!(
            lent.poll_read(&mut &again[..], &mut cx),
            Poll::Ready(Ok(_))
        ));
        s.take_back(lent).expect("records");
        assert_eq!(&s.rx[..], b"again");
    }

    /// A session whose transport is lost lets go of its spare buffers at
    /// once (nothing runs to ask whether it is quiet while it waits), and
    /// keeps what it may have to resend and what the application has not
    /// read.
    #[test]
    fn a_lost_transport_lets_go_of_spare_buffers_at_once() {
        let (mut c, mut s) = pair(true, 4 << 20);
        let mut lent = c.lend_write().expect("room");
        let (took, wire) = lent.fill(&[IoSlice::new(&vec![1u8; 100 << 10])], usize::MAX);
        c.take_back_write(lent, wire, took).expect("fits");
        let sent = pending(&c);
        c.session.handle_transmitted(sent.len());
        assert!(c.write_scratch.capacity() >= 100 << 10);
        c.connected = true;
        c.transport_lost();
        assert!(!c.connected);
        assert_eq!(c.write_scratch.capacity(), 0);
        assert_eq!(c.session.history().len(), sent.len(), "kept for a resend");
        // Unread bytes stay, with their buffer; an empty buffer goes.
        s.rx.extend_from_slice(b"unread");
        s.transport_lost();
        assert_eq!(&s.rx[..], b"unread");
        s.rx.clear();
        s.transport_lost();
        assert_eq!(s.rx.capacity(), 0);

        // Sealed: the link's empty buffers go too.
        let (mut c, mut s) = sealed_states();
        c.write(&vec![2u8; 200 << 10]);
        carry(&mut c, &mut s);
        carry(&mut s, &mut c);
        let link_held = |st: &State| st.link.as_ref().map_or(0, Link::buffered);
        assert!(link_held(&s) > 0 && s.rx.capacity() > 0);
        s.rx.clear();
        s.transport_lost();
        assert_eq!((link_held(&s), s.rx.capacity()), (0, 0));
        // And what the history kept of the application's buffers.
        let payload = bytes::Bytes::from(vec![6u8; 100_000]);
        let took = c.write_shared(&payload);
        assert!(!payload.is_unique(), "kept as given ({took} bytes taken)");
        c.transport_lost();
        assert!(payload.is_unique(), "copied out at the break");
    }

    /// A record that does not parse ends the session, and nothing of the
    /// bytes around it reaches the application.
    #[test]
    fn a_bad_record_leaves_nothing_half_parsed() {
        let (mut c, mut s) = pair(true, 1 << 20);
        let bad = [record::DATA, 5, 0, b'h', b'e', b'l', b'l', b'o', 0x09];
        assert_eq!(s.session.handle_write(&bad), bad.len());
        let wire = pending(&s);
        assert!(c.ingest(&wire).is_err());
        assert!(c.rx.is_empty(), "{:?}", &c.rx[..]);
    }

    #[test]
    fn a_write_encrypted_outside_the_lock_lays_out_what_a_locked_one_does() {
        let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let odd = [
            &data[..1],
            &data[1..70_001],
            &data[70_001..70_004],
            &data[70_004..],
        ];
        // More records than one per 64 KiB of the whole: one slice of one
        // byte, then one bigger than a write takes; and six of 50,000.
        let small_first = [&data[..1], &data[1..]];
        let sixes: Vec<&[u8]> = data[..300_000].chunks(50_000).collect();
        let most = 256 << 10;
        for pieces in [&odd[..], &small_first[..], &sixes[..]] {
            let bufs: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
            // Room for all of it, and room that runs out part way.
            for (records, history) in [
                (false, 1 << 20),
                (true, 1 << 20),
                (false, 64 << 10),
                (true, 64 << 10),
            ] {
                let case = format!(
                    "{} slices, records {records}, history {history}",
                    pieces.len()
                );
                let (mut locked, _) = pair(records, history);
                let mut locked_took = 0;
                'pieces: for piece in pieces {
                    let mut rest = &piece[..piece.len().min(most - locked_took)];
                    while !rest.is_empty() {
                        let n = locked.write(rest);
                        if n == 0 {
                            break 'pieces;
                        }
                        locked_took += n;
                        rest = &rest[n..];
                    }
                    if locked_took == most {
                        break;
                    }
                }
                let (mut lent_out, _) = pair(records, history);
                let mut lent = lent_out.lend_write().expect("room");
                assert!(lent_out.lend_write().is_none(), "one write at a time");
                let (took, wire) = lent.fill(&bufs, most);
                lent_out.take_back_write(lent, wire, took).expect("fits");
                assert_eq!(took, locked_took, "{case}");
                assert_eq!(pending(&lent_out), pending(&locked), "{case}");
                // The cipher is back: what follows is encrypted as it would be.
                assert_eq!(lent_out.write(b"more"), locked.write(b"more"));
                assert_eq!(pending(&lent_out), pending(&locked), "{case}");
            }
        }
    }

    #[tokio::test]
    async fn a_resume_commits_only_once_a_lent_write_is_back() {
        let (client, _) = pair(false, 1 << 20);
        let shared = std::sync::Arc::new(Shared::new(client));
        let mut lent = shared.state.lock().lend_write().expect("room");
        let writer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let (took, wire) = lent.fill(&[IoSlice::new(b"data")], usize::MAX);
                let mut st = shared.state.lock();
                st.take_back_write(lent, wire, took)
            })
        };
        let (writing, written) = {
            let st = shared.lock_between_writes().await;
            (st.writing, st.session.write_count())
        };
        assert!(!writing, "waited for the write");
        assert_eq!(written, 4);
        writer.await.expect("writer").expect("fits");
    }

    #[test]
    fn controls_queued_during_a_lent_write_follow_it() {
        let (mut client, mut server) = pair(true, 1 << 20);
        let mut lent = client.lend_write().expect("room");
        // A PING answered while the write is out waits for it.
        client.apply_controls(vec![Control::Ping]);
        assert_eq!(client.session.write_count(), 0);
        let (took, wire) = lent.fill(&[IoSlice::new(b"data")], usize::MAX);
        client.take_back_write(lent, wire, took).expect("fits");
        server.rx.extend_from_slice(&pending(&client));
        let controls = server.received(0).expect("records");
        assert_eq!(&server.rx[..], b"data");
        assert_eq!(controls, vec![Control::Pong]);
    }

    #[test]
    fn the_application_reads_while_the_receiving_side_is_lent() {
        let (mut client, mut server) = pair(true, 1 << 20);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        client.write(b"first ");
        let first = pending(&client);
        client.session.handle_transmitted(first.len());
        client.write(b"second");
        let second = pending(&client);
        for wire in [first, second] {
            let mut lent = server.lend().expect("lent");
            let before = server.session.read_count();
            let read = lent.poll_read(&mut &wire[..], &mut cx);
            assert!(matches!(read, Poll::Ready(Ok(n)) if n == wire.len()));
            // Meanwhile the application takes what arrived before.
            let mut out = [0u8; 16];
            let mut buf = tokio::io::ReadBuf::new(&mut out);
            server.read_into(&mut buf);
            assert_eq!(server.session.read_count(), before, "counted once back");
            server.take_back(lent).expect("records");
            assert_eq!(server.session.read_count(), before + wire.len() as u64);
            if before == 0 {
                assert!(buf.filled().is_empty());
            } else {
                assert_eq!(buf.filled(), b"first ");
            }
        }
        assert_eq!(&server.rx[..], b"second");
    }

    /// Both sides of a sealed session, each with its link.
    fn sealed_states() -> (State, State) {
        let ((cs, cl), (ss, sl)) = crate::fuzz::sealed_pair().expect("handshake");
        let state = |session, link| {
            let mut st = State::new(session, 1 << 20, std::time::Duration::from_secs(1), None);
            st.link = Some(link);
            st
        };
        (state(cs, cl), state(ss, sl))
    }

    /// Everything waiting on a side's link, sealed and taken.
    fn sealed_out(from: &mut State) -> Vec<u8> {
        let window = from.window();
        let link = from.link.as_mut().expect("link");
        let wire = link
            .poll_transmit(&mut from.session, window)
            .expect("sealed")
            .to_vec();
        link.handle_transmitted(wire.len());
        wire
    }

    /// Everything waiting on one side's link goes to the other's.
    fn carry(from: &mut State, to: &mut State) {
        let wire = sealed_out(from);
        let to_link = to.link.as_mut().expect("link");
        to_link.input_buffer().extend_from_slice(&wire);
        to.unseal().expect("opened");
    }

    /// A sealed session keeps bytes written as `Bytes` in its history as
    /// they are, behind their DATA record's header, and they reach the
    /// peer intact; the peer's ack lets go of them.
    #[test]
    fn a_sealed_session_keeps_shared_bytes_without_a_copy() {
        let (mut c, mut s) = sealed_states();
        let payload = bytes::Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        // One record at most: the rest waits for the next write.
        let n = c.write_shared(&payload);
        assert_eq!(n, record::MAX_DATA);
        assert_eq!(c.write_shared(&payload.slice(n..)), payload.len() - n);
        let history = c.session.history();
        let header = history.slices_from(0).expect("held").0;
        assert_eq!(header.len(), record::DATA_HEADER);
        let kept = history.slices_from(3).expect("held").0;
        assert_eq!(kept.as_ptr(), payload.as_ptr(), "kept, not copied");
        assert_eq!(kept.len(), record::MAX_DATA);
        // Fewer bytes than crate::proto::MIN_SHARED are copied: they would
        // hold a whole buffer for little.
        let small = bytes::Bytes::from(vec![1u8; 1000]);
        assert_eq!(c.write_shared(&small), 1000);
        assert!(small.is_unique());
        // Carried both ways until everything arrived and was acknowledged
        // (the peer's window lets a part through at a time).
        let mut got = Vec::new();
        let mut out = vec![0u8; 64 << 10];
        for _ in 0..100 {
            carry(&mut c, &mut s);
            while !s.rx.is_empty() {
                let mut buf = tokio::io::ReadBuf::new(&mut out);
                s.read_into(&mut buf);
                got.extend_from_slice(buf.filled());
            }
            carry(&mut s, &mut c);
            if c.session.history().is_empty() {
                break;
            }
        }
        let sent = [&payload[..], &small[..]].concat();
        assert!(got == sent, "{} bytes arrived of {}", got.len(), sent.len());
        assert!(c.session.history().is_empty());
        assert!(payload.is_unique(), "the history let go of it");
    }

    /// A sealed session whose link carried a burst, then went quiet, lets
    /// go of the memory the burst left behind (the receive buffer, the
    /// acknowledged history, the link's buffers) at the second asking
    /// after it, keeps what the peer has not acknowledged, and stops
    /// asking once nothing is left to let go of. A compatible session's
    /// history stays: its peer may ask for any byte of it.
    #[test]
    fn a_quiet_session_lets_go_of_what_a_burst_left() {
        let (mut c, mut s) = sealed_states();
        let data = vec![5u8; 3 << 20];
        let mut written = 0;
        let mut out = vec![0u8; 64 << 10];
        for _ in 0..1000 {
            written += c.write(&data[written..]);
            carry(&mut c, &mut s);
            while !s.rx.is_empty() {
                let mut buf = tokio::io::ReadBuf::new(&mut out);
                s.read_into(&mut buf);
            }
            carry(&mut s, &mut c);
            if written == data.len() && !c.wire_pending() {
                break;
            }
        }
        assert_eq!(s.session.read_count(), c.session.write_count());
        // The last bytes, not yet acknowledged (the peer acks every 16 KiB).
        c.write(&[1; 100]);
        carry(&mut c, &mut s);
        let unacked = c.session.write_count() - c.session.safe_floor();
        assert!(unacked >= 100, "{unacked}");
        // The acknowledged bytes are let go of as the acks come, but the
        // ring that held them keeps its memory until the session is quiet.
        assert_eq!(c.session.history().len() as u64, unacked);
        assert!(c.session.history().allocated() >= 3 << 20);
        let link_held = |st: &State| st.link.as_ref().map_or(0, Link::buffered);
        assert!(link_held(&c) >= 64 << 10, "{}", link_held(&c));
        let t0 = c.trim_at;
        // The first asking sees the burst: nothing is let go of.
        assert_eq!(c.trim(t0), Some(t0 + TRIM_EVERY));
        assert!(c.session.history().allocated() >= 3 << 20);
        // Quiet since: let go of, all but the bytes still unacknowledged.
        assert_eq!(c.trim(t0 + TRIM_EVERY), None, "nothing left to ask for");
        assert_eq!(c.session.history().len() as u64, unacked);
        assert!(c.session.history().allocated() < 64 << 10);
        assert_eq!((c.rx.capacity(), link_held(&c)), (0, 0));
        // Nothing moves: it is not asked again.
        assert_eq!(c.trim(t0 + 5 * TRIM_EVERY), None);
        assert!(link_held(&s) >= 32 << 10, "{}", link_held(&s));
        let t1 = s.trim_at;
        s.trim(t1);
        // Bytes not yet read keep the receive buffer, and the asking goes on.
        assert_eq!(s.trim(t1 + TRIM_EVERY), Some(t1 + 2 * TRIM_EVERY));
        assert_eq!(link_held(&s), 0);
        assert_eq!(&s.rx[..], &[1; 100], "bytes not yet read are kept");
        let mut buf = tokio::io::ReadBuf::new(&mut out);
        s.read_into(&mut buf);
        assert_eq!(s.trim(t1 + 2 * TRIM_EVERY), None);
        assert_eq!(s.rx.capacity(), 0);
        // The next read on the quiet link gets a small read's room, not a
        // bulk read's 256 KiB.
        c.write(&[2; 10]);
        let wire = sealed_out(&mut c);
        let mut lent = s.lend().expect("lent");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let read = lent.poll_read(&mut &wire[..], &mut cx);
        assert!(matches!(read, Poll::Ready(Ok(n)) if n == wire.len()));
        s.take_back(lent).expect("opened");
        assert!(link_held(&s) <= 4096, "{}", link_held(&s));
        assert_eq!(&s.rx[..], &[2; 10]);
        let mut buf = tokio::io::ReadBuf::new(&mut out);
        s.read_into(&mut buf);
        // It all still works: the unacknowledged bytes go on being held
        // (a resume could ask for them), and a new burst grows it again.
        carry(&mut s, &mut c);
        let n = c.write(&data[..1 << 20]);
        assert!(n > 60_000, "{n}");
        // The first bytes to move start a new period: nothing is let go of
        // before it ends.
        let t2 = t0 + 7 * TRIM_EVERY;
        assert_eq!(c.trim(t2), Some(t2 + TRIM_EVERY));
        carry(&mut c, &mut s);
        assert_eq!(s.rx.len(), n);
        assert!(&s.rx[..].iter().all(|&b| b == 5));

        // The compatible suite: its history is kept whole.
        let (mut rc4, _) = pair(true, 1 << 20);
        let mut written = 0;
        for _ in 0..100 {
            written += rc4.write(&data[..64 << 10]);
            let n = pending(&rc4).len();
            rc4.session.handle_transmitted(n);
        }
        assert!(written >= 600 << 10, "{written}");
        let held = rc4.session.history().allocated();
        let len = rc4.session.history().len();
        let t = rc4.trim_at;
        rc4.trim(t);
        rc4.trim(t + TRIM_EVERY);
        assert_eq!(rc4.session.history().allocated(), held);
        assert_eq!(rc4.session.history().len(), len);
    }

    #[test]
    fn a_ping_flood_is_owed_one_pong() {
        let params = Params {
            history: 64 << 10,
            in_flight: 16 << 10,
            ..Params::default()
        };
        let key = Key::from_bytes(*b"01234567");
        let (ciphers, _) = client_ciphers(&key, true, [0; 8]);
        let session = Session::new(Role::Client, 1, key, params, true, ciphers);
        let mut st = State::new(session, 64 << 10, std::time::Duration::from_secs(1), None);
        // A million PINGs, none of our PONGs ever handed to the transport.
        for _ in 0..1000 {
            st.apply_controls(vec![Control::Ping; 1000]);
        }
        // The history took what it could; one more is owed.
        assert_eq!(st.session.write_count(), 64 << 10);
        assert_eq!(st.controls.len(), 1, "PONGs owed");
        assert_eq!(st.controls.first(), Some(&Control::Pong));
    }
}
