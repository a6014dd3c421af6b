//! The frames of one sealed connection.
//!
//! ```text
//! frame = len:u16le  AEAD(stream bytes ‖ ack:u64le ‖ window:u64le)   len = ciphertext length, 32..=65535
//! ```
//!
//! Each direction's frames are sealed under that connection's own key with
//! Noise's counter nonces (0, 1, 2, … per direction), so a frame that is
//! flipped, dropped, replayed or reordered fails to open and ends the
//! connection; the session then resumes on a new one. The ack is the sender's
//! read count: everything below it may leave the receiver's history. The
//! window is the stream count up to which the sender can take bytes (its read
//! count plus its free receive buffer): the receiver of the frame sends no
//! stream byte at or beyond it. The window is what lets each side always read
//! its socket, so acks are never stuck behind data nobody reads. Stream
//! bytes in a frame continue where the previous frame's ended; the first frame
//! after a resume starts where the resume said.
//!
//! The keys are Noise's split of the connection's handshake; frames are
//! sealed with `aws-lc-rs`'s AES-256-GCM under Noise's nonce layout (4 zero
//! bytes, then the counter big-endian), exactly as a Noise transport message
//! would be, but in place, so a stream byte is copied once on its way out
//! and once on its way in.
//!
//! A [`Link`] knows nothing of sockets: [`Link::handle_input`] takes bytes
//! from the wire, [`Link::poll_transmit`] gives sealed bytes for it. A driver
//! that keeps the session under a lock lends each side out instead
//! (`Link::lend_opener`, `Link::lend_prepared`): under the lock only bytes
//! are copied (frames laid out from the history, opened bytes taken into
//! the receive buffer); the cryptography and the system calls happen outside
//! it.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use bytes::{Buf, BytesMut};

use super::{INITIAL_WINDOW, MAX_FRAME_DATA, MAX_NOISE_MESSAGE, MIN_FRAME, TAG_LEN, TRAILER_LEN};
use crate::proto::record::{Control, RecordReader};
use crate::proto::{Error, Result, Session};

/// Received bytes after which an ack goes out even with no data to carry it.
/// Sealed histories are at least [`crate::proto::MIN_SEALED_HISTORY`], four
/// times this, so a writer waiting for room always gets its ack.
pub const ACK_EVERY: u64 = 16 * 1024;

/// Most sealed bytes prepared ahead of the transport.
const OUT_BATCH: usize = 256 * 1024;

/// One direction's key and its next nonce.
struct Direction {
    key: LessSafeKey,
    next: u64,
}

impl Direction {
    fn new(key: &[u8; 32]) -> Result<Self> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| Error::Malformed("frame key"))?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            next: 0,
        })
    }

    /// The next nonce, as Noise lays it out; Noise reserves the last counter.
    fn nonce(&mut self) -> Result<Nonce> {
        if self.next == u64::MAX {
            return Err(Error::Malformed("frame counter exhausted"));
        }
        let mut bytes = [0u8; 12];
        bytes[4..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        Ok(Nonce::assume_unique_for_key(bytes))
    }
}

/// One connection's receiving side: its key, and the bytes received and not
/// yet opened. [`Link::lend_opener`] lends it out, so that frames can be
/// opened away from whatever guards the session.
pub(crate) struct Opener {
    recv: Direction,
    /// Received bytes: frames opened in place (the first `opened_to`
    /// bytes), then bytes not yet opened (a partial frame).
    input: BytesMut,
    opened_to: usize,
    /// Where the opened frames' stream bytes are in `input`.
    opened: Vec<std::ops::Range<usize>>,
    frames_in: u64,
    /// Whether the last read brought a small read's worth or more: frames
    /// come in bulk, and reads get room for as much as one may take.
    busy: bool,
}

/// The room a read gets while the link is quiet (see
/// [`Opener::read_buffer`]; the compatible suite's reads do the same).
pub(crate) const SMALL_READ: usize = 4096;

/// What the frames opened by one [`Opener::open`] said: the highest ack and
/// the highest window (both only ever move up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Acks {
    /// The peer's read count: our bytes below it may leave the history.
    pub ack: u64,
    /// The stream count below which the peer can take bytes.
    pub window: u64,
}

/// One connection's sending side: its key, and the frames for the transport.
/// Frames are laid out with their plaintext under whatever guards the
/// session ([`Link::prepare`]), then sealed in place by [`Sealer::seal`],
/// which needs nothing but the sealer, so it can run with the guard let go.
/// Only sealed bytes are ever offered to the transport.
pub(crate) struct Sealer {
    send: Direction,
    /// Frames: sealed up to `sealed_to`, then laid out and waiting for
    /// [`Sealer::seal`] (plaintext, with room for the tag).
    out: Vec<u8>,
    /// What the transport has taken.
    out_pos: usize,
    sealed_to: usize,
    /// Where each laid-out frame starts, with its nonce, in order.
    unsealed: Vec<(usize, Nonce)>,
}

/// One connection's frame sealing and opening.
pub struct Link {
    /// `None` while lent out.
    sealer: Option<Sealer>,
    /// `None` while lent out.
    opener: Option<Opener>,
    /// The read count last sent as an ack.
    acked: u64,
    /// The window last sent.
    windowed: u64,
    /// The window the peer's first frame (its confirm) carried, not yet
    /// applied to the session.
    first_window: Option<u64>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field(
                "pending_out",
                &self.sealer.as_ref().map(|s| s.out.len() - s.out_pos),
            )
            .field("input", &self.opener.as_ref().map(|o| o.input.len()))
            .field("acked", &self.acked)
            .finish()
    }
}

impl Link {
    /// The link of a finished handshake: `initiator` is the client.
    pub(crate) fn new(hs: &mut snow::HandshakeState, initiator: bool, acked: u64) -> Result<Self> {
        if !hs.is_handshake_finished() {
            return Err(Error::Malformed("handshake not finished"));
        }
        let (to_server, to_client) = hs.dangerously_get_raw_split();
        let (send, recv) = if initiator {
            (to_server, to_client)
        } else {
            (to_client, to_server)
        };
        Ok(Link {
            sealer: Some(Sealer::new(Direction::new(&send)?)),
            opener: Some(Opener::new(Direction::new(&recv)?)),
            acked,
            windowed: INITIAL_WINDOW,
            first_window: None,
        })
    }

    /// Frames opened on this connection (0 while the opener is lent).
    pub fn frames_in(&self) -> u64 {
        self.opener.as_ref().map_or(0, |o| o.frames_in)
    }

    /// Lets go of the memory of the buffers that hold nothing now (bytes
    /// sealed and taken, none received and not yet opened). Returns whether
    /// both were let go of: a side lent out, or holding bytes, is left as
    /// it is.
    pub(crate) fn release_buffers(&mut self) -> bool {
        let mut all = true;
        match &mut self.sealer {
            Some(sealer) if !sealer.has_output() => {
                sealer.out = Vec::new();
                sealer.clear();
            }
            _ => all = false,
        }
        match &mut self.opener {
            Some(opener) if opener.input.is_empty() && opener.opened.is_empty() => {
                opener.input = BytesMut::new();
                opener.opened_to = 0;
                opener.busy = false;
            }
            _ => all = false,
        }
        all
    }

    /// Memory the link's buffers hold now.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.sealer.as_ref().map_or(0, |s| s.out.capacity())
            + self.opener.as_ref().map_or(0, |o| o.input.capacity())
    }

    /// Lends the receiving side out (`None` if it already is). Until
    /// [`Link::restore_opener`], nothing received can be opened here.
    pub(crate) fn lend_opener(&mut self) -> Option<Opener> {
        self.opener.take()
    }

    /// Takes the receiving side back.
    pub(crate) fn restore_opener(&mut self, opener: Opener) {
        self.opener = Some(opener);
    }

    fn opener(&mut self) -> Result<&mut Opener> {
        self.opener
            .as_mut()
            .ok_or(Error::Malformed("the link's receiving side is lent out"))
    }

    /// Lays out what `session` has to send, as [`Link::prepare`] does, and
    /// lends the sending side out with it if anything waits for the
    /// transport: the driver seals it and hands it over without the
    /// session's lock. Until [`Link::restore_sealer`], nothing can be sealed
    /// here. Fails if the sending side is already out.
    pub(crate) fn lend_prepared(
        &mut self,
        session: &mut Session,
        window: u64,
    ) -> Result<Option<Sealer>> {
        self.prepare(session, window)?;
        Ok(if self.has_output() {
            self.sealer.take()
        } else {
            None
        })
    }

    /// Takes the sending side back.
    pub(crate) fn restore_sealer(&mut self, sealer: Sealer) {
        debug_assert!(self.sealer.is_none(), "a sealer was lent out twice");
        self.sealer = Some(sealer);
    }

    fn sealer(&mut self) -> Result<&mut Sealer> {
        self.sealer
            .as_mut()
            .ok_or(Error::Malformed("the link's sending side is lent out"))
    }

    /// Seals one frame carrying `data`, the ack `ack` and the window
    /// `window` into the output.
    pub(crate) fn seal(&mut self, data: &[u8], ack: u64, window: u64) -> Result<()> {
        self.lay_out(data, ack, window)?;
        self.sealer()?.seal()
    }

    fn lay_out(&mut self, data: &[u8], ack: u64, window: u64) -> Result<()> {
        self.sealer()?.lay_out(data, ack, window)?;
        self.acked = self.acked.max(ack);
        self.windowed = self.windowed.max(window);
        Ok(())
    }

    /// Lays out what `session` has to send (up to a batch, and no further
    /// than the peer's window) if the output is drained, and an ack alone if
    /// one is owed and no data carries it. `window` is ours, to advertise.
    /// The frames still need [`Sealer::seal`]; the session counts their
    /// bytes as transmitted already (they are this connection's now).
    pub(crate) fn prepare(&mut self, session: &mut Session, window: u64) -> Result<()> {
        if self.sealer()?.has_output() {
            return Ok(());
        }
        self.sealer()?.clear();
        let ack = session.read_count();
        let mut laid = 0;
        while laid < OUT_BATCH {
            // A frame takes the history's pieces (copied bytes, such as
            // record headers, and pieces kept as given) until it is full.
            let sealer = self.sealer()?;
            let (mut framed, mut at) = (0, 0);
            while framed < MAX_FRAME_DATA {
                let allowed = session.peer_window().saturating_sub(session.sent());
                let allowed = usize::try_from(allowed).unwrap_or(usize::MAX);
                let (a, _) = session.poll_transmit();
                let n = a.len().min(MAX_FRAME_DATA - framed).min(allowed);
                if n == 0 {
                    break;
                }
                if framed == 0 {
                    at = sealer.open_frame()?;
                }
                sealer.out.reserve(n + TRAILER_LEN + TAG_LEN);
                crate::proto::copy::extend(&mut sealer.out, &a[..n]);
                session.handle_transmitted(n);
                framed += n;
            }
            if framed == 0 {
                break;
            }
            sealer.close_frame(at, ack, window);
            self.acked = self.acked.max(ack);
            self.windowed = self.windowed.max(window);
            laid += framed;
        }
        if laid == 0 && self.update_due(session.read_count(), window) {
            self.lay_out(&[], session.read_count(), window)?;
        }
        Ok(())
    }

    /// Seals what `session` has to send, as `Link::prepare` lays it out,
    /// and returns the sealed bytes the transport should take.
    pub fn poll_transmit(&mut self, session: &mut Session, window: u64) -> Result<&[u8]> {
        self.prepare(session, window)?;
        let sealer = self.sealer()?;
        sealer.seal()?;
        Ok(sealer.pending())
    }

    /// Whether an ack or window update is owed: `window` is ours now.
    pub fn update_due(&self, read_count: u64, window: u64) -> bool {
        read_count >= self.acked + ACK_EVERY || window >= self.windowed + ACK_EVERY
    }

    /// Whether frames wait for the transport (also while the sending side
    /// is lent out: it is lent to be written).
    pub fn has_output(&self) -> bool {
        self.sealer.as_ref().is_none_or(Sealer::has_output)
    }

    /// Records that the transport took `n` sealed bytes.
    pub fn handle_transmitted(&mut self, n: usize) {
        if let Some(sealer) = &mut self.sealer {
            sealer.transmitted(n);
        }
    }

    /// Seals the output and moves it into `buf` (the handshake's transmit).
    pub(crate) fn drain_output(&mut self, buf: &mut BytesMut) -> Result<()> {
        let sealer = self.sealer()?;
        sealer.seal()?;
        buf.extend_from_slice(sealer.pending());
        sealer.clear();
        Ok(())
    }

    /// The buffer received bytes go into before [`Link::handle_input`].
    /// While the opener is lent out, a scratch buffer whose bytes are lost:
    /// put them into the lent opener's input buffer instead.
    pub fn input_buffer(&mut self) -> &mut BytesMut {
        let opener = self.opener.get_or_insert_with(Opener::spent);
        &mut opener.input
    }

    /// Opens every complete frame in the input buffer: applies its ack to
    /// `session` and appends its stream bytes to `plain`. The caller then
    /// hands the new part of `plain` to [`Session::handle_input`].
    ///
    /// Fails, ending the connection, on a frame that does not authenticate,
    /// has an impossible length, or acknowledges bytes never written.
    pub fn handle_input(&mut self, session: &mut Session, plain: &mut BytesMut) -> Result<()> {
        let mut acks = Acks::default();
        let opener = self.opener()?;
        let opened = opener.open(&mut acks);
        opener.take_opened(0, plain, None, |_| {})?;
        self.apply(session, acks)?;
        opened
    }

    /// Applies what opened frames said to `session` (and the window of the
    /// confirm, the first time). Fails on an ack of bytes never written.
    pub(crate) fn apply(&mut self, session: &mut Session, acks: Acks) -> Result<()> {
        if let Some(window) = self.first_window.take() {
            session.allow(window);
        }
        if acks.ack > session.write_count() {
            return Err(Error::BadCounts("ack above what was written"));
        }
        session.confirm(acks.ack);
        session.allow(acks.window);
        Ok(())
    }

    /// Opens the first frame of a connection, which must carry no data and
    /// exactly the ack `expected`: the confirm that ends a handshake. Its
    /// window reaches the session with the next [`Link::handle_input`].
    pub(crate) fn open_confirm(&mut self, expected: u64) -> Result<bool> {
        let opener = self.opener()?;
        // A confirm has no data: any other length is refused at once, not
        // waited for (and buffered) until the handshake times out.
        if let [a, b, ..] = opener.input[opener.opened_to..]
            && usize::from(u16::from_le_bytes([a, b])) != MIN_FRAME - 2
        {
            return Err(Error::Malformed("confirm frame"));
        }
        let Some((data, ack, window)) = opener.open_one()? else {
            return Ok(false);
        };
        opener.take_opened(0, &mut BytesMut::new(), None, |_| {})?;
        if !data.is_empty() || ack != expected {
            return Err(Error::Malformed("confirm frame"));
        }
        self.first_window = Some(window);
        Ok(true)
    }
}

impl Sealer {
    fn new(send: Direction) -> Self {
        Sealer {
            send,
            out: Vec::new(),
            out_pos: 0,
            sealed_to: 0,
            unsealed: Vec::new(),
        }
    }

    /// Lets go of the output (all of it taken by the transport, or moved).
    fn clear(&mut self) {
        self.out.clear();
        self.out_pos = 0;
        self.sealed_to = 0;
        self.unsealed.clear();
    }

    /// Lays one frame out at the end of the output: its length, `data`, the
    /// trailer and room for the tag, and takes its nonce.
    fn lay_out(&mut self, data: &[u8], ack: u64, window: u64) -> Result<()> {
        debug_assert!(data.len() <= MAX_FRAME_DATA);
        self.out.reserve(2 + data.len() + TRAILER_LEN + TAG_LEN);
        let at = self.open_frame()?;
        crate::proto::copy::extend(&mut self.out, data);
        self.close_frame(at, ack, window);
        Ok(())
    }

    /// Starts a frame at the end of the output, takes its nonce and
    /// returns where it starts: its stream bytes (at most
    /// [`MAX_FRAME_DATA`]) are appended to `out` next, then
    /// [`Sealer::close_frame`] ends it, before anything else is laid out.
    fn open_frame(&mut self) -> Result<usize> {
        let nonce = self.send.nonce()?;
        let at = self.out.len();
        // The length is filled in when the frame is closed.
        self.out.extend_from_slice(&[0; 2]);
        self.unsealed.push((at, nonce));
        Ok(at)
    }

    /// Ends the frame [`Sealer::open_frame`] started at `at`: its length,
    /// the trailer and room for the tag.
    fn close_frame(&mut self, at: usize, ack: u64, window: u64) {
        debug_assert_eq!(self.unsealed.last().map(|u| u.0), Some(at));
        self.out.extend_from_slice(&ack.to_le_bytes());
        self.out.extend_from_slice(&window.to_le_bytes());
        self.out.extend_from_slice(&[0; TAG_LEN]);
        let len = self.out.len() - at - 2;
        debug_assert!(len <= MAX_NOISE_MESSAGE);
        self.out[at..at + 2].copy_from_slice(&(len as u16).to_le_bytes());
    }

    /// Seals the frames laid out, in place and in order. If one fails, the
    /// frames from it on are let go of (the connection cannot go on: the
    /// peer would wait for their nonces).
    pub fn seal(&mut self) -> Result<()> {
        let mut frames = std::mem::take(&mut self.unsealed);
        for (at, nonce) in frames.drain(..) {
            let len = u16::from_le_bytes([self.out[at], self.out[at + 1]]) as usize;
            let end = at + 2 + len;
            let (body, tag_room) = self.out[at + 2..end].split_at_mut(len - TAG_LEN);
            let Ok(tag) = self
                .send
                .key
                .seal_in_place_separate_tag(nonce, Aad::empty(), body)
            else {
                self.out.truncate(self.sealed_to);
                return Err(Error::Malformed("frame could not be sealed"));
            };
            tag_room.copy_from_slice(tag.as_ref());
            self.sealed_to = end;
        }
        // (Empty: kept for its room.)
        self.unsealed = frames;
        Ok(())
    }

    /// The sealed bytes the transport has not taken.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.out_pos..self.sealed_to]
    }

    /// Whether frames (sealed or laid out) wait for the transport.
    fn has_output(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Records that the transport took `n` sealed bytes.
    pub fn transmitted(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.sealed_to);
    }
}

impl Opener {
    fn new(recv: Direction) -> Self {
        Opener {
            recv,
            input: BytesMut::new(),
            opened_to: 0,
            opened: Vec::new(),
            frames_in: 0,
            busy: false,
        }
    }

    /// A stand-in that opens nothing: its counter is spent.
    fn spent() -> Self {
        Opener::new(Direction {
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &[0; 32])
                    .unwrap_or_else(|_| unreachable!("a 32-byte key")),
            ),
            next: u64::MAX,
        })
    }

    /// The buffer the next read goes into, with room for it: for `limit`
    /// bytes while frames come in bulk, for a small read's while the link
    /// is quiet (a quiet session's pings and acks must not each make it
    /// hold a bulk read's buffer again once it let go of it). Tell it what
    /// the read brought with [`Opener::note_read`].
    pub fn read_buffer(&mut self, limit: usize) -> &mut BytesMut {
        let room = if self.busy {
            limit
        } else {
            limit.min(SMALL_READ)
        };
        self.input.reserve(room);
        &mut self.input
    }

    /// Records that a read brought `n` bytes.
    pub fn note_read(&mut self, n: usize) {
        self.busy = n >= SMALL_READ / 2;
    }

    /// Opens every complete frame in the input buffer, in place, and raises
    /// `acks` to what they say; their stream bytes wait in the input for
    /// [`Opener::take_opened`]. On a frame that does not open or has an
    /// impossible length, fails; what opened before it is kept.
    pub fn open(&mut self, acks: &mut Acks) -> Result<()> {
        while let Some((_, ack, window)) = self.open_one()? {
            acks.ack = acks.ack.max(ack);
            acks.window = acks.window.max(window);
        }
        Ok(())
    }

    /// How many stream bytes the opened frames hold.
    pub fn opened_len(&self) -> usize {
        self.opened.iter().map(|r| r.len()).sum()
    }

    /// Appends the opened frames' stream bytes to `plain`, less the first
    /// `skip` of them, and lets go of the frames. With `records`, the bytes
    /// are parsed as records on the way: only DATA payloads reach `plain`,
    /// and control records go to `on_control` (one pass over the bytes, not a
    /// copy and then a parse). Fails on a bad record; the frames are let go
    /// of all the same.
    pub fn take_opened(
        &mut self,
        skip: usize,
        plain: &mut BytesMut,
        mut records: Option<&mut RecordReader>,
        mut on_control: impl FnMut(Control),
    ) -> Result<()> {
        plain.reserve(self.opened_len().saturating_sub(skip));
        let mut skip = skip;
        let mut parsed = Ok(());
        // (Dropping the drain after a `break` lets go of the rest.)
        for range in self.opened.drain(..) {
            let data = &self.input[range];
            let cut = skip.min(data.len());
            skip -= cut;
            let data = &data[cut..];
            match records.as_deref_mut() {
                None => crate::proto::copy::extend(plain, data),
                Some(reader) => {
                    parsed = reader.filter_into(data, plain, &mut on_control);
                    if parsed.is_err() {
                        break;
                    }
                }
            }
        }
        self.input.advance(self.opened_to);
        self.opened_to = 0;
        parsed
    }

    /// Opens the next frame, in place, if complete: returns where its
    /// stream bytes are, its ack and its window.
    fn open_one(&mut self) -> Result<Option<(std::ops::Range<usize>, u64, u64)>> {
        let at = self.opened_to;
        let have = self.input.len() - at;
        if have < 2 {
            return Ok(None);
        }
        let len = u16::from_le_bytes([self.input[at], self.input[at + 1]]) as usize;
        if len + 2 < MIN_FRAME {
            return Err(Error::Malformed("frame shorter than its ack and tag"));
        }
        if have < 2 + len {
            // (Room is made by whoever reads, a chunk at a time: a length
            // the peer claims allocates nothing.)
            return Ok(None);
        }
        let nonce = self.recv.nonce()?;
        let frame = at + 2..at + 2 + len;
        let Ok(opened) = self
            .recv
            .key
            .open_in_place(nonce, Aad::empty(), &mut self.input[frame])
        else {
            return Err(Error::Unauthenticated);
        };
        // len - TAG_LEN >= TRAILER_LEN, checked above.
        let data = opened.len() - TRAILER_LEN;
        let field = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&opened[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (ack, window) = (field(data), field(data + 8));
        let range = at + 2..at + 2 + data;
        self.opened.push(range.clone());
        self.opened_to = at + 2 + len;
        self.frames_in += 1;
        Ok(Some((range, ack, window)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A driver that lends the sending side out sees no byte of a frame
    /// before it is sealed, and what it then sends is what the sans-IO
    /// `poll_transmit` would have sent: the peer opens it.
    #[test]
    fn a_lent_sealer_offers_only_sealed_frames() {
        let ((mut cs, mut cl), (mut ss, mut sl)) = crate::fuzz::sealed_pair().expect("handshake");
        cs.allow(u64::MAX);
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(cs.handle_write(&data), data.len());
        let mut sealer = cl
            .lend_prepared(&mut cs, 1 << 20)
            .expect("laid out")
            .expect("something to send");
        assert_eq!(cs.sent(), data.len() as u64, "counted as transmitted");
        assert!(cl.has_output(), "lent to be written");
        assert!(cl.lend_prepared(&mut cs, 1 << 20).is_err(), "lent already");
        assert!(
            cl.poll_transmit(&mut cs, 1 << 20).is_err(),
            "nothing sealed while lent"
        );
        assert!(sealer.pending().is_empty(), "plaintext is never offered");
        sealer.seal().expect("sealed");
        let wire = sealer.pending().to_vec();
        assert!(!wire.windows(64).any(|w| w == &data[..64]));
        sealer.transmitted(wire.len());
        cl.restore_sealer(sealer);
        assert!(!cl.has_output());
        sl.input_buffer().extend_from_slice(&wire);
        let mut plain = BytesMut::new();
        sl.handle_input(&mut ss, &mut plain).expect("opens");
        assert_eq!(&plain[..], &data[..]);
    }

    /// A frame gathers the history's pieces (copied bytes, then a piece
    /// kept as given, then copied bytes again) up to its size, and stops
    /// at the peer's window in the middle of a piece; the rest goes in the
    /// next frames once the window opens, and the peer gets every byte in
    /// order.
    #[test]
    fn a_frame_gathers_pieces_and_stops_at_the_window() {
        let ((mut cs, mut cl), (mut ss, mut sl)) = crate::fuzz::sealed_pair().expect("handshake");
        let kept = bytes::Bytes::from(
            (0..100_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        cs.handle_write(b"head");
        assert_eq!(cs.handle_write_shared(&kept), kept.len());
        cs.handle_write(b"tail");
        let all = [&b"head"[..], &kept[..], b"tail"].concat();
        let mut got = BytesMut::new();
        let mut carry = |cs: &mut Session, cl: &mut Link| {
            let wire = cl.poll_transmit(cs, 1 << 20).expect("sealed").to_vec();
            cl.handle_transmitted(wire.len());
            // Frame lengths, in order.
            let mut lens = Vec::new();
            let mut at = 0;
            while at + 2 <= wire.len() {
                let len = u16::from_le_bytes([wire[at], wire[at + 1]]) as usize;
                lens.push(len - TRAILER_LEN - TAG_LEN);
                at += 2 + len;
            }
            sl.input_buffer().extend_from_slice(&wire);
            sl.handle_input(&mut ss, &mut got).expect("opens");
            lens
        };
        // The first window: a full frame of the head and the kept piece's
        // start, and one that stops at the window inside the piece.
        let first = usize::try_from(INITIAL_WINDOW).expect("small");
        assert_eq!(
            carry(&mut cs, &mut cl),
            vec![MAX_FRAME_DATA, first - MAX_FRAME_DATA]
        );
        // Open: the rest of the kept piece and the tail in one frame.
        cs.allow(u64::MAX);
        assert_eq!(carry(&mut cs, &mut cl), vec![all.len() - first]);
        assert!(got[..] == all[..], "{} of {} bytes", got.len(), all.len());
    }
}
