//! The state a session's handles and its driver task share.
//!
//! The application's handles ([`super::Stream`] and its halves) and the
//! driver (which owns the transport) meet here, under one short-held lock:
//! writes are encrypted straight into the session's history (which doubles as
//! the send queue), and the driver decrypts what arrives straight into `rx`.

use std::net::SocketAddr;
use std::task::Waker;

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{Error, Event, Stats};
use crate::proto::Session;
use crate::proto::record::{self, Control, RecordReader};
use crate::proto::sealed::{Link, MAX_FRAME_DATA};

/// The session state behind one lock.
pub(crate) struct State {
    pub session: Session,
    /// Sealed suite: the current connection's frames (`None` in the
    /// compatible suite). Replaced on every resume.
    pub link: Option<Link>,
    /// Received data for the application (record headers already removed).
    pub rx: BytesMut,
    pub rx_limit: usize,
    /// Record layer: the parser of incoming records.
    pub records: Option<RecordReader>,
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
        let records = session.extended().then(RecordReader::new);
        State {
            session,
            link: None,
            rx: BytesMut::new(),
            rx_limit,
            records,
            controls: Vec::new(),
            fin_at: None,
            done_at: None,
            done_seen: false,
            ping_out: false,
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
        }
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
        if dup > 0 {
            crate::proto::copy::move_down(&mut self.rx, start + dup, start, fresh_len);
            self.rx.truncate(self.rx.len() - dup);
        }
        self.last_rx = Instant::now();
        self.ping_out = false;
        let mut controls = Vec::new();
        if let Some(reader) = &mut self.records {
            let data = reader
                .filter(&mut self.rx[start..], |c| controls.push(c))
                .map_err(Error::Protocol)?;
            self.rx.truncate(start + data);
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
        if self.rx.len() == start {
            // Acks alone still prove the link alive.
            self.last_rx = Instant::now();
            self.ping_out = false;
            return Ok(());
        }
        let controls = self.received(start)?;
        self.apply_controls(controls);
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
        if self.records.is_none() {
            let n = self.session.handle_write(buf);
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
        let n = buf
            .len()
            .min(record::MAX_DATA)
            .min(room - record::DATA_HEADER);
        self.session.handle_write(&record::data_header(n));
        self.session.handle_write(&buf[..n]);
        self.stats.app_written += n as u64;
        n
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
    pub events: broadcast::Sender<Event>,
    pub id: u64,
    /// A value both ends of this session, and nobody else's session, share.
    pub binding: [u8; 32],
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
            events: broadcast::channel(64).0,
            id,
            binding,
        }
    }

    /// Publishes an event (nobody listening is fine).
    pub fn emit(&self, event: Event) {
        let _ = self.events.send(event);
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
    use crate::proto::cipher::client_ciphers;
    use crate::proto::{Key, Params, Role};

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
