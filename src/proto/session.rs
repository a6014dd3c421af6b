//! An established session: the counts, the ciphers and the history.
//!
//! The data path is the same for both roles:
//!
//! - [`Session::handle_write`] encrypts application bytes straight into the
//!   history; [`Session::poll_transmit`] shows what of it the current transport
//!   has not yet taken, and [`Session::handle_transmitted`] records what it took.
//!   Unsent bytes are simply the tail of the history, so a resume needs no
//!   separate send queue: it moves the transmit position back to the peer's
//!   read count.
//! - [`Session::handle_input`] decrypts received bytes in place and counts them.
//!   Every transport starts at a known stream position, so bytes the session
//!   already has (a resend overlapping what arrived on the old transport) are
//!   dropped: each byte is delivered exactly once.
//!
//! Write flow control: the peer's read count is only learnt on a resume, so a
//! side bounds what it may still be asked to resend. Bytes handed to the
//! transport more than `in_flight` bytes ago count as received; everything
//! newer, sent or not, must fit in the history. [`Session::write_capacity`] is
//! what is left.
//!
//! Resends, as snet peers do them (compatible suite): a resume announces the
//! highest count ever handed to a transport, never bytes still queued, so the
//! peer's resend read is as small as it can be. A snet peer reads a resend
//! whole or not at all, so none of it counts as received until all of it has
//! been handed over and `in_flight` more after it: until then the history
//! keeps everything from the peer's read count on. And as a snet peer does,
//! nothing written after the resend goes out before the peer's own resend has
//! arrived whole: a cut in between then finds the same resend to ask for, not
//! one grown by new data, which a peer reading resends whole could never
//! finish through cuts that come faster.

use super::cipher::Cipher;
use super::cipher::Ciphers;
use super::history::History;
use super::resume::ResumePoint;
use super::sealed::SessionSecrets;
use super::{Error, Key, Params, Result, Role, Version};

/// Free history a resend hold always leaves (far more than any record's
/// header), so the hold releases before writes could stall on it.
const HOLD_MARGIN: u64 = 256;

/// A session's receiving side, lent out by [`Session::lend_inbound`]: the
/// read cipher and the counts that tell a resend from new bytes.
#[derive(Debug)]
pub(crate) struct Inbound {
    cipher: Cipher,
    in_pos: u64,
    read_count: u64,
}

impl Inbound {
    /// Takes bytes that arrived on the current transport: decrypts, in
    /// place, the part that is new to the session and returns where it
    /// starts (the bytes before it are a resend of what already arrived).
    pub fn handle_input(&mut self, data: &mut [u8]) -> usize {
        let skip = self.advance(data.len());
        self.cipher.apply(&mut data[skip..]);
        skip
    }

    /// Counts `n` bytes that arrived and need no decrypting (the sealed
    /// suite's, opened already) and returns how many at their front are a
    /// resend of what already arrived.
    pub(crate) fn count(&mut self, n: usize) -> usize {
        debug_assert!(!self.cipher.is_encrypting(), "bytes left encrypted");
        self.advance(n)
    }

    fn advance(&mut self, n: usize) -> usize {
        let pos = self.in_pos;
        self.in_pos += n as u64;
        if self.in_pos <= self.read_count {
            return n;
        }
        // in_pos never exceeds read_count before this call, so pos <= read_count.
        let skip = (self.read_count - pos) as usize;
        self.read_count = self.in_pos;
        skip
    }
}

/// A session's write cipher, lent out by [`Session::lend_outbound`].
#[derive(Debug)]
pub(crate) struct Outbound {
    cipher: Cipher,
}

impl Outbound {
    /// Encrypts the next bytes of the stream, `plain`, into `out` (of the
    /// same length).
    pub(crate) fn encrypt_into(&mut self, plain: &[u8], out: &mut [u8]) {
        self.cipher.apply_into(plain, out);
    }
}

/// One side of an established session.
#[derive(Debug)]
pub struct Session {
    id: u64,
    key: Key,
    role: Role,
    params: Params,
    extended: bool,
    ciphers: Ciphers,
    history: History,
    /// Bytes received from the peer (decrypted and handed up, or not).
    read_count: u64,
    /// Everything below this count is confirmed received by the peer.
    floor: u64,
    /// Stream count of the next history byte to hand to the transport.
    sent: u64,
    /// Stream count of the next byte to arrive on the current transport.
    in_pos: u64,
    /// Resumes completed.
    epoch: u64,
    /// Sealed suite: the secrets from the first handshake. The history then
    /// holds plaintext (frames are sealed per connection) and the floor moves
    /// with the peer's acks alone.
    secrets: Option<SessionSecrets>,
    /// Sealed suite: the stream count below which the peer can take bytes.
    peer_window: u64,
    /// The highest count ever handed to a transport: what a compatible
    /// resume announces as this side's write count.
    max_sent: u64,
    /// Compatible suite: where this side's last resend ends (the write
    /// count announced with it). The peer reads it whole or not at all.
    resend_end: u64,
    /// Compatible suite: where the peer's last resend ends (the write count
    /// it announced). Until it has arrived, nothing past `resend_end` is
    /// transmitted.
    peer_resend_end: u64,
    /// Compatible suite: the write count the peer announced at the last
    /// resume. A byte past it shows the peer finished that resume.
    peer_announced: u64,
}

impl Session {
    pub(crate) fn new(
        role: Role,
        id: u64,
        key: Key,
        params: Params,
        extended: bool,
        ciphers: Ciphers,
    ) -> Self {
        Session {
            id,
            key,
            role,
            params,
            extended,
            ciphers,
            history: History::new(params.history),
            read_count: 0,
            floor: 0,
            sent: 0,
            in_pos: 0,
            epoch: 0,
            secrets: None,
            peer_window: u64::MAX,
            max_sent: 0,
            resend_end: 0,
            peer_resend_end: 0,
            peer_announced: 0,
        }
    }

    /// A sealed-suite session: plaintext history, the record layer always on,
    /// history freed by acks. `params.version` and `params.encrypt` play no
    /// part.
    pub(crate) fn new_sealed(role: Role, id: u64, params: Params, secrets: SessionSecrets) -> Self {
        let plain = Ciphers {
            write: Cipher::Plain,
            read: Cipher::Plain,
        };
        let mut session = Session::new(role, id, Key::from_bytes([0; 8]), params, true, plain);
        session.secrets = Some(secrets);
        session.peer_window = super::sealed::INITIAL_WINDOW;
        session
    }

    /// Sealed suite: the secrets of the session's first handshake.
    pub fn secrets(&self) -> Option<&SessionSecrets> {
        self.secrets.as_ref()
    }

    /// Sealed suite: the stream count below which the peer can take bytes
    /// (unlimited in the compatible suite).
    pub fn peer_window(&self) -> u64 {
        self.peer_window
    }

    /// Sealed suite: forgets the peer's window, so that a link sends past
    /// it, as a broken or hostile peer would. For tests only.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn ignore_peer_window(&mut self) {
        self.peer_window = u64::MAX;
    }

    /// Sealed suite: the peer advertised it can take bytes below `window`.
    pub(crate) fn allow(&mut self, window: u64) {
        self.peer_window = self.peer_window.max(window);
    }

    /// Whether this is a sealed-suite session.
    pub fn is_sealed(&self) -> bool {
        self.secrets.is_some()
    }

    /// The conn ID the server assigned.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The compatible suite's session key (never log it; all zero in a
    /// sealed session, which has no such key).
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Which end this is.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The wire version.
    pub fn version(&self) -> Version {
        self.params.version
    }

    /// This side's parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Whether rejoin's record layer is on (see `PROTOCOL.md`).
    pub fn extended(&self) -> bool {
        self.extended
    }

    /// Whether application data is encrypted.
    pub fn encrypts(&self) -> bool {
        self.ciphers.write.is_encrypting()
    }

    /// Whether [`Session::handle_input`] decrypts (it does not once the
    /// read cipher is taken).
    pub fn decrypts(&self) -> bool {
        self.ciphers.read.is_encrypting()
    }

    /// Takes the read cipher for good: from now on [`Session::handle_input`]
    /// only counts what arrives and drops what arrived before, and the
    /// caller decrypts the new bytes itself, in stream order (the stream's
    /// reader does, as it hands them to the application).
    pub(crate) fn take_read_cipher(&mut self) -> Cipher {
        std::mem::replace(&mut self.ciphers.read, Cipher::Plain)
    }

    /// Bytes written into the session (sent or queued).
    pub fn write_count(&self) -> u64 {
        self.history.end()
    }

    /// Bytes received from the peer.
    pub fn read_count(&self) -> u64 {
        self.read_count
    }

    /// Stream count up to which the current transport has taken bytes.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The highest count ever handed to a transport.
    pub fn max_sent(&self) -> u64 {
        self.max_sent
    }

    /// The write count a resume announces: in the compatible suite what was
    /// handed to a transport (bytes still queued are sent after the resend,
    /// as new data); in the sealed suite everything written.
    pub fn announced_write(&self) -> u64 {
        if self.is_sealed() {
            self.write_count()
        } else {
            self.max_sent
        }
    }

    /// How many resumes this session has completed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The history of sent ciphertext.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// The lowest count the peer may still ask us to resend.
    pub(crate) fn safe_floor(&self) -> u64 {
        if self.secrets.is_some() {
            // Acks free the history, but never what this connection has yet
            // to send: after a resume the peer may ack bytes it got on the
            // old connection that we will resend (it drops the duplicates).
            return self.floor.min(self.sent);
        }
        let in_flight = self.params.in_flight as u64;
        let assumed = self.sent.saturating_sub(in_flight);
        // None of a resend counts as received before all of it does (a snet
        // peer reads it whole). Held only as far as the history can still
        // prove it, less a margin: the hold must release while a writer can
        // still put a whole record in (a record layer cannot use the last
        // few free bytes), or writes would stop for good.
        let room = (self.history.capacity() as u64)
            .saturating_sub(in_flight)
            .saturating_sub(HOLD_MARGIN);
        // A v1 snet peer reads on past a resend by what it had not yet
        // handed to its application (PROTOCOL.md §1.10), all or nothing, so
        // after a resume a v1 session holds as long as the history can,
        // until the peer shows it finished (a byte past its own resend).
        let resend_end = if self.v1_reading_on() {
            u64::MAX
        } else {
            self.resend_end
        };
        let hold = resend_end.min(self.floor.saturating_add(room));
        if assumed < hold {
            self.floor
        } else {
            self.floor.max(assumed)
        }
    }

    /// Sealed suite: lets the history's memory go, all but what the peer
    /// has not acknowledged or this connection has yet to send (a resume
    /// never asks for more). The compatible suite has no acks: its peer may
    /// ask for any byte the history holds, so nothing is let go. Returns
    /// whether nothing more is worth letting go of (see
    /// [`History::release_before`]). What the history kept of the
    /// application's buffers is copied into its own, and they go: for a
    /// quiet session, and for one waiting for its peer, which may hold its
    /// history for a long time.
    pub(crate) fn release_history(&mut self) -> bool {
        if !self.is_sealed() {
            return true;
        }
        let keep_from = self.safe_floor();
        let all = self.history.release_before(keep_from);
        self.history.unshare();
        all
    }

    /// Compatible v1 suite, after a resume: whether the peer may still be
    /// reading on past its resend (nothing has arrived past the write count
    /// it announced, which it sends only once it has finished).
    pub(crate) fn v1_reading_on(&self) -> bool {
        !self.is_sealed()
            && self.params.version == Version::V1
            && self.epoch > 0
            && self.read_count <= self.peer_announced
    }

    /// Compatible v1 suite: whether a resume asking from `peer_read` looks
    /// like a stock Go v1 peer whose read on past our last resend was cut:
    /// it still reads from where it read at the last resume, having sent
    /// nothing since, while we had sent past the resend.
    pub(crate) fn v1_read_cut_short(&self, peer_read: u64) -> bool {
        self.v1_reading_on() && peer_read <= self.floor && self.max_sent > self.resend_end
    }

    /// How many more bytes [`Session::handle_write`] accepts now.
    pub fn write_capacity(&self) -> usize {
        let needed = self.write_count() - self.safe_floor();
        let room = self.history.capacity().saturating_sub(needed as usize);
        match self.params.unsent_limit {
            Some(limit) => room.min(limit.saturating_sub(self.unsent())),
            None => room,
        }
    }

    /// Changes the unsent limit (see [`Params::unsent_limit`]).
    pub fn set_unsent_limit(&mut self, limit: Option<usize>) {
        self.params.unsent_limit = limit;
    }

    /// Bytes written and not yet handed to a transport.
    fn unsent(&self) -> usize {
        usize::try_from(self.write_count().saturating_sub(self.sent)).unwrap_or(usize::MAX)
    }

    /// Whether a writer waiting for [`Session::write_capacity`] should be
    /// woken: there is room, and under an unsent limit the transport has
    /// taken what was written back under half of it, so that the writer
    /// comes back for at least half the limit, not for every piece the
    /// transport takes.
    pub fn writer_may_continue(&self) -> bool {
        let half = self
            .params
            .unsent_limit
            .is_none_or(|limit| self.unsent() <= limit / 2);
        half && self.write_capacity() > 0
    }

    /// Encrypts as much of `plain` as fits into the history and returns how
    /// many bytes it took. They are then pending in [`Session::poll_transmit`].
    pub fn handle_write(&mut self, plain: &[u8]) -> usize {
        let n = plain.len().min(self.write_capacity());
        let mut done = 0;
        let cipher = &mut self.ciphers.write;
        self.history.append_with(n, |out| {
            cipher.apply_into(&plain[done..done + out.len()], out);
            done += out.len();
        });
        n
    }

    /// Like [`Session::handle_write`], for bytes that need no encrypting
    /// (the sealed suite's): the history keeps as many of them as fit
    /// without a copy if they fill a record (65,535 bytes),
    /// sharing `plain`'s buffer until the peer acknowledges them.
    pub fn handle_write_shared(&mut self, plain: &bytes::Bytes) -> usize {
        // Only acks let kept pieces go: without them, copy.
        if !self.is_sealed() || self.ciphers.write.is_encrypting() {
            return self.handle_write(plain);
        }
        let n = plain.len().min(self.write_capacity());
        if n > 0 {
            self.history.append_shared(plain.slice(..n));
        }
        n
    }

    /// Lends the write cipher out, so that application bytes can be
    /// encrypted away from whatever guards the session (a handle does so
    /// outside the session's lock). Until [`Session::restore_outbound`]
    /// nothing may be written.
    pub(crate) fn lend_outbound(&mut self) -> Outbound {
        Outbound {
            cipher: std::mem::replace(&mut self.ciphers.write, Cipher::Plain),
        }
    }

    /// Takes the write cipher back with the bytes it encrypted, which go
    /// into the history as [`Session::handle_write`] would have put them.
    /// Returns how many fit: all of them if there were no more than
    /// [`Session::write_capacity`] when the cipher was lent (room only grows
    /// meanwhile); bytes that do not fit are lost to the stream, so a caller
    /// getting fewer must end the session.
    pub(crate) fn restore_outbound(&mut self, outbound: Outbound, wire: &[u8]) -> usize {
        self.ciphers.write = outbound.cipher;
        let n = wire.len().min(self.write_capacity());
        let mut done = 0;
        self.history.append_with(n, |out| {
            out.copy_from_slice(&wire[done..done + out.len()]);
            done += out.len();
        });
        n
    }

    /// The bytes the current transport may take now, as up to two slices.
    pub fn poll_transmit(&self) -> (&[u8], &[u8]) {
        // `sent` never falls outside the history: write_capacity keeps every
        // byte at or above it, and resume() checks it.
        let (a, b) = self.history.slices_from(self.sent).unwrap_or((&[], &[]));
        if self.resend_owed() == 0 {
            return (a, b);
        }
        // The peer's resend is still arriving: only our own resend goes out.
        let room = self.resend_end.saturating_sub(self.sent);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        if room <= a.len() {
            (&a[..room], &[])
        } else {
            (a, &b[..b.len().min(room - a.len())])
        }
    }

    /// Compatible suite, after a resume: how many bytes of the peer's resend
    /// have yet to arrive. Until they have, only our own resend goes out, and
    /// the receiver must take them whatever its application does (a snet
    /// peer queues a resend whole), or the two would wait on each other.
    /// Never more than the history's capacity: a peer announcing a larger
    /// resend is not waited for.
    pub fn resend_owed(&self) -> u64 {
        self.peer_resend_end.saturating_sub(self.read_count)
    }

    /// Whether bytes are ready for the transport now (none are while they
    /// wait for the peer's resend).
    pub fn can_transmit(&self) -> bool {
        !self.poll_transmit().0.is_empty()
    }

    /// Stops waiting for the peer's resend: what is written goes out at
    /// once, and the receiver keeps to its usual limit.
    pub fn stop_waiting(&mut self) {
        self.peer_resend_end = 0;
    }

    /// Compatible v1 suite: whether a stock Go v1 peer, reading on past our
    /// last resend, would be left waiting: it has sent nothing since the
    /// resume, and we have sent nothing past the resend for it to read.
    pub fn v1_peer_may_wait(&self) -> bool {
        self.v1_reading_on() && self.max_sent <= self.resend_end
    }

    /// Whether bytes are waiting for the transport.
    pub fn has_pending(&self) -> bool {
        self.sent < self.write_count()
    }

    /// Records that the transport took `n` more bytes.
    pub fn handle_transmitted(&mut self, n: usize) {
        self.sent = (self.sent + n as u64).min(self.write_count());
        self.max_sent = self.max_sent.max(self.sent);
    }

    /// Decrypts bytes that arrived on the current transport, in place, and
    /// returns the part that is new to the session (empty if all of it is a
    /// resend of what already arrived).
    pub fn handle_input<'a>(&mut self, data: &'a mut [u8]) -> &'a mut [u8] {
        let mut inbound = self.lend_inbound();
        let skip = inbound.handle_input(data);
        self.restore_inbound(inbound);
        &mut data[skip..]
    }

    /// Lends the receiving side out, so that bytes from the transport can be
    /// decrypted away from whatever guards the session (its driver does so
    /// outside the session's lock). Until [`Session::restore_inbound`] the
    /// session must not be given input, and its read count stays where it
    /// was: bytes count as received once they are handed back.
    pub(crate) fn lend_inbound(&mut self) -> Inbound {
        Inbound {
            cipher: std::mem::replace(&mut self.ciphers.read, Cipher::Plain),
            in_pos: self.in_pos,
            read_count: self.read_count,
        }
    }

    /// Takes the receiving side back, with what it counted while lent.
    pub(crate) fn restore_inbound(&mut self, inbound: Inbound) {
        self.ciphers.read = inbound.cipher;
        self.in_pos = inbound.in_pos;
        self.read_count = inbound.read_count;
    }

    /// Confirms that the peer holds everything below `count` (learnt from a
    /// reconnect request or reply).
    pub(crate) fn confirm(&mut self, count: u64) {
        self.floor = self.floor.max(count.min(self.write_count()));
        if self.is_sealed() {
            // Acknowledged pieces kept as given go at once: they hold
            // buffers shared with the application.
            self.history.forget_before(self.safe_floor());
        }
    }

    /// Switches the session onto a new transport after a successful resume:
    /// transmission restarts at the peer's read count, and the new transport's
    /// input starts at the read count we reported.
    ///
    /// Fails, leaving the session as it was, if another resume completed since
    /// this one began ([`Error::StaleResume`]: an older reconnect never
    /// displaces a newer one) or if the history no longer holds what the peer
    /// missed.
    pub fn resume(&mut self, point: ResumePoint) -> Result<()> {
        if point.epoch != self.epoch {
            return Err(Error::StaleResume);
        }
        if point.peer_read < self.history.start() || point.peer_read > self.write_count() {
            let need = self.write_count().saturating_sub(point.peer_read);
            let held = self.history.len() as u64;
            return Err(
                if point.peer_read < self.history.start() && self.v1_read_cut_short(point.peer_read)
                {
                    Error::V1ReadsPastResend { need, held }
                } else {
                    Error::HistoryTooShort { need, held }
                },
            );
        }
        // Transmission restarts at the peer's read count first: confirming
        // lets go of nothing from there on.
        self.sent = point.peer_read;
        self.confirm(point.peer_read);
        self.in_pos = point.reported_read.min(self.read_count);
        if !self.is_sealed() {
            self.resend_end = point.announced_write;
            self.peer_announced = point.peer_write;
            let owed = point.peer_write.saturating_sub(self.read_count);
            self.peer_resend_end = if owed <= self.history.capacity() as u64 {
                point.peer_write
            } else {
                0
            };
        }
        self.epoch += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::cipher::{client_ciphers, server_ciphers};

    fn pair(history: usize, in_flight: usize) -> (Session, Session) {
        let key = Key(*b"01234567");
        let params = Params {
            history,
            in_flight,
            ..Params::default()
        };
        let (sc, enc) = server_ciphers(&key, true, 9);
        let (cc, id) = client_ciphers(&key, true, enc);
        (
            Session::new(Role::Client, id, key, params, false, cc),
            Session::new(Role::Server, 9, key, params, false, sc),
        )
    }

    fn pump(from: &mut Session, to: &mut Session) -> Vec<u8> {
        let (a, b) = from.poll_transmit();
        let mut wire = [a, b].concat();
        from.handle_transmitted(wire.len());
        to.handle_input(&mut wire).to_vec()
    }

    #[test]
    fn data_round_trip() {
        let (mut c, mut s) = pair(64, 16);
        assert_eq!(c.handle_write(b"hello"), 5);
        assert_eq!(pump(&mut c, &mut s), b"hello");
        assert_eq!(s.handle_write(b"world"), 5);
        assert_eq!(pump(&mut s, &mut c), b"world");
        assert_eq!((c.write_count(), c.read_count()), (5, 5));
    }

    #[test]
    fn write_capacity_keeps_unconfirmed_bytes_in_history() {
        let (mut c, _s) = pair(64, 16);
        // Nothing sent yet: the whole history is free.
        assert_eq!(c.handle_write(&[0; 100]), 64);
        assert_eq!(c.write_capacity(), 0);
        // Handing bytes to the transport frees what is older than in_flight.
        c.handle_transmitted(40);
        assert_eq!(c.write_capacity(), 24);
        c.handle_transmitted(24);
        assert_eq!(c.write_capacity(), 48);
    }

    /// An unsent limit holds a writer back by what the transport has not
    /// taken, whatever room the history has; capacity falls by exactly what
    /// is written (a record's header and its payload are two writes), and a
    /// waiting writer is to be woken only once the transport has taken it
    /// back under half the limit.
    #[test]
    fn an_unsent_limit_bounds_what_waits_for_the_transport() {
        let (mut c, _s) = pair(1024, 16);
        c.params.unsent_limit = Some(100);
        assert_eq!(c.write_capacity(), 100);
        assert!(c.writer_may_continue());
        assert_eq!(c.handle_write(&[1; 3]), 3);
        assert_eq!(c.write_capacity(), 97);
        assert_eq!(c.handle_write(&[1; 200]), 97);
        assert_eq!(c.write_capacity(), 0);
        assert!(!c.writer_may_continue());
        // The transport takes some, not yet half: room, but no wake.
        c.handle_transmitted(30);
        assert_eq!(c.write_capacity(), 30);
        assert!(!c.writer_may_continue());
        c.handle_transmitted(20);
        assert_eq!(c.write_capacity(), 50);
        assert!(c.writer_may_continue());
        // After a resume the resend counts as unsent.
        c.handle_transmitted(50);
        c.resume(point(0, 100, 0)).unwrap();
        assert_eq!(c.write_capacity(), 0);
        assert!(!c.writer_may_continue());
    }

    #[test]
    fn a_resume_announces_what_was_sent_not_what_is_queued() {
        let (mut c, _s) = pair(64, 16);
        c.handle_write(&[7; 30]);
        c.handle_transmitted(12);
        assert_eq!((c.write_count(), c.announced_write()), (30, 12));
        // A resume moves transmission back; the high-water mark stays.
        c.resume(point(4, 12, 0)).unwrap();
        assert_eq!((c.sent(), c.announced_write()), (4, 12));
    }

    #[test]
    fn a_resend_is_kept_until_all_of_it_has_arrived() {
        let (mut c, _s) = pair(1024, 100);
        c.handle_write(&[1; 400]);
        c.handle_transmitted(400);
        // The peer read 100: the resend is [100, 400), read whole or not at all.
        c.resume(point(100, 400, 0)).unwrap();
        c.handle_transmitted(300);
        // All of it handed over, but not `in_flight` more: nothing after 100
        // counts as received.
        assert_eq!(c.write_capacity(), 1024 - 300);
        c.handle_write(&[2; 724]);
        c.handle_transmitted(100);
        // 500 - 100 = 400: the whole resend counts as received now.
        assert_eq!(c.write_capacity(), 1024 - (1124 - 400));
    }

    #[test]
    fn a_resend_longer_than_the_history_can_prove_is_released_in_time() {
        let (mut c, _s) = pair(1024, 100);
        c.handle_write(&[1; 1000]);
        c.handle_transmitted(1000);
        // A 900-byte resend: more than history - in_flight - margin (668).
        c.resume(point(100, 1000, 0)).unwrap();
        c.handle_transmitted(700);
        // Held: the 200 bytes not yet handed over are queued; room is left.
        assert_eq!(c.write_capacity(), 1024 - 900);
        c.handle_write(&[2; 124]);
        c.handle_transmitted(324);
        // Everything written is handed over: the hold has let go, so writes
        // can never stall behind it.
        assert_eq!(c.write_capacity(), 1024 - (1124 - 1024));
    }

    #[test]
    fn new_bytes_wait_for_the_peers_resend() {
        let (mut c, mut s) = pair(1024, 100);
        c.handle_write(&[1; 300]);
        c.handle_transmitted(300);
        s.handle_write(&[2; 50]);
        s.handle_transmitted(50);
        // The link broke: the server got 100 of ours, we got 20 of its 50.
        c.read_count = 20;
        c.resume(ResumePoint {
            peer_read: 100,
            peer_write: 50,
            reported_read: 20,
            announced_write: 300,
            epoch: 0,
        })
        .unwrap();
        c.handle_write(&[3; 40]);
        // Our resend goes out, the 40 new bytes wait.
        assert_eq!(c.poll_transmit().0.len(), 200);
        c.handle_transmitted(200);
        assert_eq!(c.poll_transmit(), (&[][..], &[][..]));
        assert!(c.has_pending());
        // Part of the server's resend: still waiting.
        s.sent = 20;
        c.in_pos = 20;
        let mut part = s.poll_transmit().0[..10].to_vec();
        s.handle_transmitted(10);
        c.handle_input(&mut part);
        assert!(c.poll_transmit().0.is_empty());
        // All of it: the new bytes follow.
        assert_eq!(pump(&mut s, &mut c).len(), 20);
        assert_eq!(c.poll_transmit().0.len(), 40);
    }

    #[test]
    fn a_resend_larger_than_the_history_is_not_waited_for() {
        let (mut c, _s) = pair(1024, 100);
        c.handle_write(&[1; 100]);
        c.handle_transmitted(100);
        c.resume(ResumePoint {
            peer_read: 100,
            peer_write: 1 << 40,
            reported_read: 0,
            announced_write: 100,
            epoch: 0,
        })
        .unwrap();
        // Nothing owed (so no receive allowance), and new bytes go out.
        assert_eq!(c.resend_owed(), 0);
        c.handle_write(&[2; 10]);
        assert_eq!(c.poll_transmit().0.len(), 10);
    }

    fn point(peer_read: u64, announced_write: u64, epoch: u64) -> ResumePoint {
        ResumePoint {
            peer_read,
            peer_write: 0,
            reported_read: 0,
            announced_write,
            epoch,
        }
    }

    #[test]
    fn overlapping_resend_is_delivered_once() {
        let (mut c, mut s) = pair(64, 16);
        c.handle_write(b"abcdef");
        let (a, _) = c.poll_transmit();
        let mut first = a[..4].to_vec();
        assert_eq!(s.handle_input(&mut first), b"abcd");
        // New transport: the server reported read count 2 but had 4.
        c.resume(ResumePoint {
            peer_read: 2,
            peer_write: 0,
            reported_read: 0,
            announced_write: 6,
            epoch: 0,
        })
        .unwrap();
        s.in_pos = 2;
        assert_eq!(pump(&mut c, &mut s), b"ef");
        assert_eq!(s.read_count(), 6);
    }

    /// A sealed session resumes from inside a piece its history kept as
    /// given: the resend starts at the peer's read count, even when the
    /// peer had acknowledged more than it then reports (a lie that costs
    /// only its own session, which must still go on).
    #[test]
    fn a_resume_resends_from_inside_a_kept_piece() {
        let ((mut c, _), _) = crate::fuzz::sealed_pair().expect("handshake");
        let payload = bytes::Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        c.handle_write(b"head");
        assert_eq!(c.handle_write_shared(&payload), payload.len());
        assert!(!payload.is_unique(), "kept as given");
        // Sent up to 50,000 and acknowledged up to 60,000 (past it), then
        // sent on to 58,000.
        c.handle_transmitted(50_000);
        c.confirm(60_000);
        // Nothing the session has yet to send was let go of.
        assert_eq!(c.history().start(), 50_000);
        c.handle_transmitted(8_000);
        let point = ResumePoint {
            peer_read: 54_000,
            peer_write: 0,
            reported_read: 0,
            announced_write: c.write_count(),
            epoch: c.epoch(),
        };
        c.resume(point).expect("resumed");
        let mut resent = Vec::new();
        for _ in 0..10 {
            let piece = c.poll_transmit().0.to_vec();
            if piece.is_empty() {
                break;
            }
            c.handle_transmitted(piece.len());
            resent.extend_from_slice(&piece);
        }
        assert!(
            resent == payload[54_000 - 4..],
            "{} bytes resent",
            resent.len()
        );
        c.confirm(c.write_count());
        assert!(c.history().is_empty());
        assert!(payload.is_unique(), "let go of once acknowledged");
    }

    /// A session that waits for its peer, or has gone quiet, copies what
    /// its history kept of the application's buffers into its own and
    /// lets them go; what it will resend is the same. A compatible
    /// session, which has no acks to let kept pieces go, copies at once.
    #[test]
    fn a_waiting_session_lets_the_applications_buffers_go() {
        let ((mut c, _), _) = crate::fuzz::sealed_pair().expect("handshake");
        let payload = bytes::Bytes::from((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        assert_eq!(c.handle_write_shared(&payload), payload.len());
        assert!(!payload.is_unique());
        c.release_history();
        assert!(payload.is_unique(), "copied out");
        let mut out = Vec::new();
        while !c.poll_transmit().0.is_empty() {
            let piece = c.poll_transmit().0.to_vec();
            c.handle_transmitted(piece.len());
            out.extend_from_slice(&piece);
        }
        assert!(out == payload[..]);
        // Quiet: the trim does the same.
        assert_eq!(c.handle_write_shared(&payload), payload.len());
        assert!(!payload.is_unique());
        c.release_history();
        assert!(payload.is_unique(), "copied out when quiet");

        let plain = Ciphers {
            write: Cipher::Plain,
            read: Cipher::Plain,
        };
        let params = Params {
            history: 1 << 20,
            ..Params::default()
        };
        let key = Key(*b"01234567");
        let mut compatible = Session::new(Role::Client, 1, key, params, false, plain);
        assert_eq!(compatible.handle_write_shared(&payload), payload.len());
        assert!(payload.is_unique(), "a compatible session copies");
    }
}
