//! The application's side: [`Stream`], its owned halves, and [`Handle`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::Error;
use super::shared::{Shared, State, Wake};
use crate::proto::Cipher;
use crate::proto::MIN_SHARED;
use crate::proto::record::Control;

/// Most application bytes one write takes under the session's lock (the
/// compatible suite encrypts them there): the transport's pump and the
/// reader never wait behind more than this.
const LOCKED_WRITE: usize = 256 * 1024;

/// Counters of one session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bytes the application wrote.
    pub app_written: u64,
    /// Bytes the application read.
    pub app_read: u64,
    /// Session write count: bytes put on the wire once (record headers
    /// included), resends not counted.
    pub wire_written: u64,
    /// Session read count: bytes received from the peer.
    pub wire_read: u64,
    /// Bytes resent after reconnects.
    pub resent: u64,
    /// Successful resumes.
    pub reconnects: u64,
    /// Whether a transport is attached now.
    pub connected: bool,
}

/// Something that happened to a session.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The transport broke; a client is reconnecting, a server waiting.
    Disconnected {
        /// What broke it.
        reason: String,
    },
    /// The session resumed on a new transport.
    Resumed {
        /// The new transport's peer, if known.
        peer: Option<SocketAddr>,
        /// Bytes this side resent.
        resent: u64,
    },
    /// The session ended; `None` for a clean close.
    Closed {
        /// Why, if it did not end cleanly.
        error: Option<Error>,
    },
}

/// A cloneable handle on a session's controls and counters, usable while the
/// stream itself is busy in another task.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("id", &format_args!("{:#018x}", self.shared.id))
            .finish()
    }
}

impl Handle {
    /// The session's conn ID.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// As [`Stream::home`].
    pub fn home(&self) -> Option<tokio::runtime::Handle> {
        self.shared.home.as_ref().map(|h| h.handle.clone())
    }

    /// The peer of the current (or last) transport, if known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared.state.lock().peer
    }

    /// A 32-byte value that both ends of this session compute alike and
    /// that differs for every other session. Bind an authentication
    /// exchange to it, and a man in the middle (who must run two sessions)
    /// cannot relay it. Sealed suite: derived (HKDF) from the first
    /// handshake, secret from everyone but the two ends. Compatible suite:
    /// SHA-256 over a label, the session key and the conn ID, not secret
    /// from anyone who broke the 64-bit key (see `PROTOCOL.md`).
    pub fn binding(&self) -> [u8; 32] {
        self.shared.binding
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> Stats {
        self.shared.state.lock().stats()
    }

    /// Subscribes to the session's events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.subscribe()
    }

    /// Drops the current transport at once: a client reconnects (for apps
    /// that know the network changed), a server waits for its client. No data
    /// is lost either way. Between transports there is nothing to drop, and
    /// the transport the reconnect under way brings is kept.
    pub fn force_reconnect(&self) {
        let mut wake = Wake::default();
        {
            let mut st = self.shared.state.lock();
            if !st.connected {
                return;
            }
            st.force_reconnect = true;
            st.take_driver_waker(&mut wake);
        }
        wake.fire();
    }

    /// Server: whether a broken connection waits for the client to resume
    /// (the default), or ends the session at once. A server that
    /// authenticates its clients inside the stream (as the tunnel does with
    /// its login) turns it off until the client has proved itself, so that
    /// no one who has not cannot hold a parked session.
    pub fn set_resumable(&self, resumable: bool) {
        let mut wake = Wake::default();
        {
            let mut st = self.shared.state.lock();
            st.resumable = resumable;
            // A session already waiting for its client looks again.
            st.take_driver_waker(&mut wake);
        }
        wake.fire();
    }

    /// Whether the session has ended; `Some(None)` for a clean close.
    pub fn ended(&self) -> Option<Option<Error>> {
        self.shared.state.lock().ended.clone().map(|r| r.err())
    }
}

fn end_error(ended: &Result<(), Error>) -> io::Error {
    match ended {
        Err(e) => e.clone().into(),
        Ok(()) => Error::Closed.into(),
    }
}

/// The reading half of a [`Stream`].
pub struct ReadHalf {
    shared: Arc<Shared>,
    /// Compatible suite without records: the read cipher (see
    /// `State::read_cipher`); what this half hands out it decrypts.
    cipher: Option<Cipher>,
}

/// The writing half of a [`Stream`].
///
/// `poll_flush` completes once everything written has been handed to the
/// transport (across reconnects if need be). `poll_shutdown` flushes and
/// stops writes; with the record layer it also sends FIN, so the peer reads
/// end-of-file. Dropping it does the same in the background.
pub struct WriteHalf {
    shared: Arc<Shared>,
}

/// A resumable stream: `AsyncRead + AsyncWrite` that survives broken
/// transports.
///
/// Get one from [`super::connect`], [`super::connect_with`] or
/// [`super::Listener::accept`].
pub struct Stream {
    read: ReadHalf,
    write: WriteHalf,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.handle().fmt(f)
    }
}

impl Stream {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let cipher = shared.state.lock().read_cipher.take();
        Stream {
            read: ReadHalf {
                shared: shared.clone(),
                cipher,
            },
            write: WriteHalf { shared },
        }
    }

    /// A handle on the session's controls and counters.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.read.shared.clone(),
        }
    }

    /// The session's conn ID.
    pub fn id(&self) -> u64 {
        self.read.shared.id
    }

    /// The runtime this stream's driver runs on, when a listener with
    /// [`Config::threads`](super::Config::threads) accepted it: tasks that
    /// read or write the stream cost least there (no hand-offs between
    /// threads). The listener's threads keep running while any stream of
    /// theirs, or the listener, is held (so a task there that holds a
    /// stream keeps them running until it ends); a task spawned there after
    /// all are gone is dropped unrun. `None` when the driver runs on the
    /// caller's runtime.
    pub fn home(&self) -> Option<tokio::runtime::Handle> {
        self.handle().home()
    }

    /// The peer of the current (or last) transport, if known.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.handle().peer_addr()
    }

    /// A snapshot of the session's counters.
    pub fn stats(&self) -> Stats {
        self.handle().stats()
    }

    /// Subscribes to the session's events.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.handle().events()
    }

    /// See [`Handle::force_reconnect`].
    pub fn force_reconnect(&self) {
        self.handle().force_reconnect()
    }

    /// Splits into owned halves that can move to different tasks.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        (self.read, self.write)
    }
}

impl ReadHalf {
    /// A handle on the session's controls and counters.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl WriteHalf {
    /// A handle on the session's controls and counters.
    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    /// The unsent limit now (see `Config::unsent_limit`; with
    /// `Config::unsent_time` it follows the connection's rate). A writer
    /// that multiplexes can bound its own queues by it.
    pub fn unsent_limit(&self) -> Option<usize> {
        self.shared.state.lock().session.params().unsent_limit
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let this = self.get_mut();
        let before = buf.filled().len();
        let mut wake = Wake::default();
        let poll = {
            let mut st = this.shared.state.lock();
            if !st.rx.is_empty() {
                let was_full = !st.can_receive();
                st.read_into(buf);
                if was_full || st.update_due() {
                    st.take_driver_waker(&mut wake);
                }
                Poll::Ready(Ok(()))
            } else if st.peer_fin() {
                Poll::Ready(Ok(()))
            } else {
                match &st.ended {
                    Some(Ok(())) => Poll::Ready(Ok(())),
                    Some(ended) => Poll::Ready(Err(end_error(ended))),
                    None => {
                        st.read_waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        };
        wake.fire();
        if let Some(cipher) = &mut this.cipher {
            // Outside the lock: the driver goes on receiving meanwhile.
            cipher.apply(&mut buf.filled_mut()[before..]);
        }
        poll
    }
}

/// Flush: done once nothing is pending and the transport is flushed.
fn poll_sent(st: &mut State, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    if st.all_sent() && st.connected {
        return Poll::Ready(Ok(()));
    }
    if let Some(ended) = &st.ended {
        return match ended {
            Ok(()) if st.all_sent() => Poll::Ready(Ok(())),
            _ => Poll::Ready(Err(end_error(ended))),
        };
    }
    st.write_waker = Some(cx.waker().clone());
    Poll::Pending
}

/// A piece of what the application writes.
trait Piece: std::ops::Deref<Target = [u8]> {
    /// Puts the first `n` bytes of it into the session (see [`State::write`]).
    fn put(&self, st: &mut State, n: usize) -> usize;
}

impl Piece for io::IoSlice<'_> {
    fn put(&self, st: &mut State, n: usize) -> usize {
        st.write(&self[..n])
    }
}

impl Piece for bytes::Bytes {
    fn put(&self, st: &mut State, n: usize) -> usize {
        if n < MIN_SHARED {
            st.write(&self[..n])
        } else {
            st.write_shared(&self.slice(..n))
        }
    }
}

/// Most pieces one [`WriteHalf::write_shared`] takes under the lock.
const SHARED_PIECES: usize = 64;

impl WriteHalf {
    /// Writes like `write_vectored`, from pieces held as `Bytes`: a sealed
    /// session keeps those of at least [`MIN_SHARED`] bytes in its history
    /// as they are, sharing their buffers until the peer acknowledges them,
    /// instead of copying them (the compatible suite encrypts, so copies
    /// them all). Returns how many bytes it took, from the front of
    /// `pieces` (at most 64 of them, and 256 KiB).
    pub(crate) async fn write_shared(
        &mut self,
        pieces: &std::collections::VecDeque<bytes::Bytes>,
    ) -> io::Result<usize> {
        // (The front slice is empty only when all of it is.)
        let (front, _) = pieces.as_slices();
        let front = &front[..front.len().min(SHARED_PIECES)];
        std::future::poll_fn(|cx| self.poll_put(cx, front)).await
    }

    /// Takes as much of `bufs` as the history has room for, up to
    /// `LOCKED_WRITE` (256 KiB): under one lock, or, when the bytes are
    /// encrypted, with the encryption outside it.
    fn poll_put<P: Piece>(&mut self, cx: &mut Context<'_>, bufs: &[P]) -> Poll<io::Result<usize>> {
        let mut wake = Wake::default();
        let poll = {
            let mut st = self.shared.state.lock();
            if let Some(ended) = &st.ended {
                Poll::Ready(Err(end_error(ended)))
            } else if st.write_shut {
                Poll::Ready(Err(Error::Closed.into()))
            } else if st.writing {
                // Only if a write panicked with the cipher: it is gone.
                let e = Error::Internal("an earlier write never finished");
                st.end(Err(e.clone()), &mut wake);
                Poll::Ready(Err(e.into()))
            } else if st.encrypts {
                let before = st.session.write_count();
                match st.lend_write() {
                    Some(mut lent) => {
                        drop(st);
                        let (taken, wire) = lent.fill(bufs, LOCKED_WRITE);
                        let mut st = self.shared.state.lock();
                        match st.take_back_write(lent, wire, taken) {
                            Err(e) => {
                                st.end(Err(e.clone()), &mut wake);
                                Poll::Ready(Err(e.into()))
                            }
                            Ok(()) => {
                                // (Control records that waited for the write
                                // may have gone in even if it took nothing.)
                                if st.session.write_count() != before {
                                    st.flushed = false;
                                    st.take_driver_waker(&mut wake);
                                }
                                Poll::Ready(Ok(taken))
                            }
                        }
                    }
                    None if bufs.iter().all(|b| b.is_empty()) => Poll::Ready(Ok(0)),
                    None => {
                        // No room in the history: the driver wakes us when there is.
                        st.write_waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            } else {
                let mut total = 0;
                for buf in bufs.iter().filter(|b| !b.is_empty()) {
                    let take = buf.len().min(LOCKED_WRITE - total);
                    let n = buf.put(&mut st, take);
                    total += n;
                    if n < buf.len() || total == LOCKED_WRITE {
                        break;
                    }
                }
                if total == 0 && bufs.iter().any(|b| !b.is_empty()) {
                    // No room in the history: the driver wakes us when there is.
                    st.write_waker = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    if total > 0 {
                        st.flushed = false;
                        st.take_driver_waker(&mut wake);
                    }
                    Poll::Ready(Ok(total))
                }
            }
        };
        wake.fire();
        poll
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Takes as much of `bufs` as the history has room for, up to
    /// `LOCKED_WRITE` (256 KiB): under one lock, or, when the bytes are encrypted,
    /// with the encryption outside it.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_put(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_sent(&mut self.shared.state.lock(), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut wake = Wake::default();
        let poll = {
            let mut st = self.shared.state.lock();
            shut_write(&mut st, &mut wake);
            poll_sent(&mut st, cx)
        };
        wake.fire();
        poll
    }
}

/// Stops writes; with the record layer, queues FIN.
fn shut_write(st: &mut State, wake: &mut Wake) {
    if st.write_shut {
        return;
    }
    st.write_shut = true;
    if st.records.is_some() && st.ended.is_none() {
        st.queue_control(Control::Fin);
        st.flushed = false;
    }
    st.take_driver_waker(wake);
}

/// Both halves gone: the driver finishes the close on its own, within the
/// configured close timeout.
fn maybe_closing(st: &mut State, close_timeout: std::time::Duration) {
    if !st.read_open && !st.write_open && st.close_deadline.is_none() {
        st.close_deadline = Some(Instant::now() + close_timeout);
    }
}

impl Drop for ReadHalf {
    fn drop(&mut self) {
        let mut wake = Wake::default();
        {
            let mut st = self.shared.state.lock();
            st.read_open = false;
            st.rx.clear();
            let t = st.close_timeout;
            maybe_closing(&mut st, t);
            st.take_driver_waker(&mut wake);
        }
        wake.fire();
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let mut wake = Wake::default();
        {
            let mut st = self.shared.state.lock();
            st.write_open = false;
            shut_write(&mut st, &mut wake);
            let t = st.close_timeout;
            maybe_closing(&mut st, t);
            // Even after a shutdown (which woke it then): the session may be
            // abandoned now, and the driver finishes the close.
            st.take_driver_waker(&mut wake);
        }
        wake.fire();
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use super::super::{Config, Listener, connect};
    use crate::proto::sealed::Psk;

    /// `write_shared` takes at most 64 pieces (and 256 KiB) a call, from
    /// the front, whole pieces before cut ones; what it took reaches the
    /// peer through real sockets intact, small pieces and full records
    /// alike.
    #[tokio::test]
    async fn shared_writes_take_a_bounded_front_and_arrive_intact() {
        let config = Config::sealed(Psk::from_bytes([3; 32]));
        let listener = Listener::bind("127.0.0.1:0", config.clone())
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (client, server) = tokio::join!(connect(addr.to_string(), config), listener.accept());
        let (_, mut write) = client.expect("connect").into_split();
        let (mut read, _) = server.expect("accept").into_split();
        // 100 small pieces, then two that fill a record and more.
        let mut pieces: VecDeque<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 100])).collect();
        for fill in [200u8, 201] {
            pieces.push_back(Bytes::from(vec![fill; 70_000]));
        }
        let all: Vec<u8> = pieces.iter().flat_map(|p| p.to_vec()).collect();
        let first = write.write_shared(&pieces).await.expect("written");
        assert_eq!(first, 64 * 100, "64 pieces at most");
        let mut taken = first;
        let mut queue = pieces;
        crate::tunnel::mux::advance_pieces(&mut queue, first);
        for _ in 0..100 {
            if queue.is_empty() {
                break;
            }
            let n = write.write_shared(&queue).await.expect("written");
            assert!(n <= 256 * 1024);
            crate::tunnel::mux::advance_pieces(&mut queue, n);
            taken += n;
        }
        assert_eq!(taken, all.len());
        let mut got = vec![0u8; all.len()];
        tokio::time::timeout(Duration::from_secs(20), read.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert!(got == all);
    }
}
