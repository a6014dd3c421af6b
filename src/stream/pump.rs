//! Moving bytes between one transport and the shared state.
//!
//! [`pump`] runs while a transport is attached: it reads into the receive
//! buffer while there is room, writes whatever the history holds that the
//! transport has not taken, flushes, answers PINGs, watches for a silent
//! link, and returns when the transport breaks, a reconnect is forced, or the
//! session's close completes. It holds the lock only for non-blocking polls;
//! on a sealed link, not for the cryptography nor the transport's system
//! calls either (the sides of the link are lent out for those).

use std::future::{Future, poll_fn};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::Error;
use super::shared::{READ_CHUNK, Shared, State, Wake};
use crate::proto::Role;
use crate::proto::record::Control;

/// Most bytes read, and most written, in one step; past them the pump lets
/// go and comes straight back, so that one busy direction never starves
/// the other, nor the other tasks on its thread.
const STEP_BYTES: usize = 2 * READ_CHUNK;

/// Why a pump returned.
#[derive(Debug)]
pub(crate) enum PumpEnd {
    /// The transport failed, closed or went silent.
    Broken(String),
    /// The application asked for a reconnect.
    Forced,
    /// The session is over and closed cleanly (or its close timed out): shut
    /// the transport down.
    Finished,
    /// The session ended for another reason (already recorded).
    Ended,
}

/// The pump's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PumpConfig {
    /// Silence after which the link counts as dead (`None`: never).
    pub idle: Option<Duration>,
    /// Record layer: send a PING after this much silence.
    pub ping: Option<Duration>,
    /// The unsent limit's floor and the time it follows the connection's
    /// rate over (`Config::unsent_limit`, `Config::unsent_time`).
    pub pace: Option<(usize, Duration)>,
}

/// Runs until the transport breaks or the session is done with it.
pub(crate) async fn pump<T>(shared: &Shared, io: &mut T, cfg: PumpConfig) -> PumpEnd
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
    poll_fn(|cx| {
        let mut wake = Wake::default();
        let poll = turn(shared, io, cfg, &mut timer, cx, &mut wake);
        wake.fire();
        poll
    })
    .await
}

/// One turn of the pump: read, write, then everything else.
fn turn<T>(
    shared: &Shared,
    io: &mut T,
    cfg: PumpConfig,
    timer: &mut Pin<Box<Sleep>>,
    cx: &mut Context<'_>,
    wake: &mut Wake,
) -> Poll<PumpEnd>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let received = match receive(shared, io, cx, wake) {
        Received::End(end) => return Poll::Ready(end),
        received => received,
    };
    #[cfg(test)]
    tests::between(shared, tests::Gap::Received);
    if let Some(end) = before_transmit(&mut shared.state.lock(), cx) {
        return Poll::Ready(end);
    }
    let wrote = match transmit(shared, io, cx, wake) {
        Ok(wrote) => wrote,
        Err(end) => return Poll::Ready(end),
    };
    #[cfg(test)]
    tests::between(shared, tests::Gap::Transmitted);
    let mut st = shared.state.lock();
    let poll = step(&mut st, io, wrote, cfg, timer, cx, wake);
    if poll.is_pending() && matches!(received, Received::Full) && st.can_receive() {
        // The application made room after the read stopped and before the
        // step registered our waker: its wake found none to take, and no
        // read is waiting on the transport.
        cx.waker().wake_by_ref();
    }
    poll
}

/// How [`receive`] stopped.
#[derive(Debug)]
enum Received {
    /// The transport has nothing now (it wakes us when it has), or the step
    /// has something to act on, or a step's worth was read (and we woke
    /// ourselves to come back).
    Carry,
    /// The receive buffer is full: nothing wakes us for the transport until
    /// the application reads.
    Full,
    /// The transport is done with.
    End(PumpEnd),
}

/// Reads while there is room, a step's worth at most. The lock is held only
/// to lend the receiving side out and to take it back: the read and the
/// decryption happen outside it.
fn receive<T>(shared: &Shared, io: &mut T, cx: &mut Context<'_>, wake: &mut Wake) -> Received
where
    T: AsyncRead + Unpin,
{
    let mut taken = 0;
    loop {
        let mut st = shared.state.lock();
        if st.ended.is_some() || st.force_reconnect || st.broken.is_some() {
            // The step says why.
            return Received::Carry;
        }
        // Sealed: always, since the peer sends no more than our window
        // (and acks must never wait behind data nobody reads).
        if !st.can_receive() && st.link.is_none() {
            return Received::Full;
        }
        if taken >= STEP_BYTES {
            cx.waker().wake_by_ref();
            return Received::Carry;
        }
        let (poll, handled) = if st.reads_in_place() {
            st.read_in_place(io, cx)
        } else {
            let Some(mut lent) = st.lend() else {
                return Received::Carry;
            };
            drop(st);
            let poll = lent.poll_read(io, cx);
            st = shared.state.lock();
            let handled = st.take_back(lent);
            (poll, handled)
        };
        match poll {
            Poll::Ready(Ok(0)) => {
                return Received::End(if closed_after_done(&st) {
                    PumpEnd::Finished
                } else {
                    PumpEnd::Broken("connection closed by the peer".into())
                });
            }
            Poll::Ready(Ok(n)) => {
                taken += n;
                if let Err(e) = handled {
                    st.end(Err(e), wake);
                    return Received::End(PumpEnd::Ended);
                }
                st.take_read_waker(wake);
                if st.link.is_some() && st.session.writer_may_continue() {
                    // Sealed: acks free history room, and a writer waiting
                    // for it has nothing else to wake it when we have
                    // nothing to send.
                    st.take_write_waker(wake);
                }
                if let Some(reason) = st.broken.take() {
                    return Received::End(PumpEnd::Broken(reason));
                }
            }
            Poll::Ready(Err(e)) => return Received::End(PumpEnd::Broken(e.to_string())),
            Poll::Pending => return Received::Carry,
        }
    }
}

/// What comes before writing: whether the pump is done, and the control
/// records to send. Registers the pump's waker: from here on the lock is
/// let go more than once before the turn ends, and whatever the
/// application does meanwhile (writes, reads that open the window, a
/// forced reconnect, the end) must bring the pump back.
fn before_transmit(st: &mut State, cx: &mut Context<'_>) -> Option<PumpEnd> {
    if st.ended.is_some() {
        return Some(PumpEnd::Ended);
    }
    if st.force_reconnect {
        st.force_reconnect = false;
        return Some(PumpEnd::Forced);
    }
    if let Some(reason) = st.broken.take() {
        return Some(PumpEnd::Broken(reason));
    }
    if !st
        .driver_waker
        .as_ref()
        .is_some_and(|w| w.will_wake(cx.waker()))
    {
        st.driver_waker = Some(cx.waker().clone());
    }
    if st.records.is_some() {
        queue_close_records(st);
    }
    st.flush_controls();
    None
}

/// Writes what the transport has not taken, a step's worth at most, and
/// returns how much. Sealed: the lock is held only to lay frames out (the
/// copy from the history) and to take the sending side back; the sealing
/// and the write happen outside it, so the application's writes and reads
/// never wait behind them. Compatible: the history's bytes are written as
/// they are, under the lock.
fn transmit<T>(
    shared: &Shared,
    io: &mut T,
    cx: &mut Context<'_>,
    wake: &mut Wake,
) -> Result<usize, PumpEnd>
where
    T: AsyncWrite + Unpin,
{
    let mut wrote = 0;
    loop {
        if wrote >= STEP_BYTES {
            cx.waker().wake_by_ref();
            return Ok(wrote);
        }
        let mut st = shared.state.lock();
        let window = st.window();
        let State { link, session, .. } = &mut *st;
        let poll = if let Some(link) = link {
            let mut sealer = match link.lend_prepared(session, window) {
                Ok(Some(sealer)) => sealer,
                Ok(None) => return Ok(wrote),
                Err(e) => {
                    st.end(Err(Error::Protocol(e)), wake);
                    return Err(PumpEnd::Ended);
                }
            };
            drop(st);
            #[cfg(test)]
            tests::between(shared, tests::Gap::Sealing);
            let sealed = sealer.seal();
            let poll = match sealed {
                Ok(()) => Pin::new(&mut *io).poll_write(cx, sealer.pending()),
                Err(_) => Poll::Ready(Ok(0)),
            };
            if let Poll::Ready(Ok(n)) = poll {
                sealer.transmitted(n);
            }
            st = shared.state.lock();
            // Only this task replaces the link, and not while it is here.
            if let Some(link) = &mut st.link {
                link.restore_sealer(sealer);
            }
            if let Err(e) = sealed {
                st.end(Err(Error::Protocol(e)), wake);
                return Err(PumpEnd::Ended);
            }
            poll
        } else {
            let (a, b) = session.poll_transmit();
            if a.is_empty() {
                return Ok(wrote);
            }
            let poll = if !b.is_empty() && io.is_write_vectored() {
                Pin::new(&mut *io).poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)])
            } else {
                Pin::new(&mut *io).poll_write(cx, a)
            };
            if let Poll::Ready(Ok(n)) = poll {
                session.handle_transmitted(n);
            }
            poll
        };
        match poll {
            Poll::Ready(Ok(0)) => {
                return Err(PumpEnd::Broken("transport accepts no more bytes".into()));
            }
            Poll::Ready(Ok(n)) => wrote += n,
            Poll::Ready(Err(e)) => return Err(PumpEnd::Broken(e.to_string())),
            Poll::Pending => return Ok(wrote),
        }
    }
}

/// Everything after the write: pacing, waking the writer, flushing, the
/// close, and the timers.
fn step<T>(
    st: &mut State,
    io: &mut T,
    wrote: usize,
    cfg: PumpConfig,
    timer: &mut Pin<Box<Sleep>>,
    cx: &mut Context<'_>,
    wake: &mut Wake,
) -> Poll<PumpEnd>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if wrote > 0 {
        st.flushed = false;
    }
    let now = Instant::now();
    if let Some((floor, time)) = cfg.pace {
        st.pace(floor, time, now);
    }
    // Room may have opened in the history, or under the unsent limit (which
    // sealing moves, even when the transport then takes nothing). Not woken
    // for every piece the transport takes: see
    // `Session::writer_may_continue`.
    if st.session.writer_may_continue() {
        st.take_write_waker(wake);
    }
    if !st.flushed && !st.wire_ready() {
        match Pin::new(&mut *io).poll_flush(cx) {
            Poll::Ready(Ok(())) => {
                st.flushed = true;
                st.take_write_waker(wake);
            }
            Poll::Ready(Err(e)) => return Poll::Ready(PumpEnd::Broken(e.to_string())),
            Poll::Pending => {}
        }
    }

    tracing::trace!(
        role = ?st.session.role(),
        wrote,
        wc = st.session.write_count(),
        sent = st.session.sent(),
        rc = st.session.read_count(),
        rx = st.rx.len(),
        owed = st.session.resend_owed(),
        "pump step"
    );
    if close_complete(st) {
        return Poll::Ready(PumpEnd::Finished);
    }

    // Timers: silence, PING, close deadline.
    let mut next: Option<Instant> = st.close_deadline;
    if st.close_deadline.is_some_and(|d| now >= d) {
        return Poll::Ready(PumpEnd::Finished);
    }
    if st.can_receive() {
        if let Some(idle) = cfg.idle {
            let deadline = st.last_rx + idle;
            if now >= deadline {
                return Poll::Ready(PumpEnd::Broken(format!("nothing received for {idle:?}")));
            }
            next = earliest(next, deadline);
        }
        if let Some(ping) = cfg.ping {
            let at = st.last_rx + ping;
            if now >= at && !st.ping_out {
                st.ping_out = true;
                st.queue_control(Control::Ping);
                // Go round again to send it.
                cx.waker().wake_by_ref();
            } else if !st.ping_out {
                next = earliest(next, at);
            }
        }
    } else {
        // Reading is paused by the application: silence is not the link's fault.
        st.last_rx = now;
    }
    if let Some(at) = st.trim(now) {
        next = earliest(next, at);
    }
    if let Some(at) = next {
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }
    // (The waker was registered before the write: see before_transmit.)
    Poll::Pending
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// Record layer: a client that has sent FIN and seen the peer's sends DONE.
fn queue_close_records(st: &mut State) {
    if st.session.role() == Role::Client
        && st.fin_at.is_some()
        && st.peer_fin()
        && st.done_at.is_none()
        && !st.controls.contains(&Control::Done)
    {
        st.queue_control(Control::Done);
    }
}

/// Whether the session is over from this side.
fn close_complete(st: &State) -> bool {
    if st.records.is_some() {
        // The server is done when the client says so; the client once its DONE
        // is on the wire and the server closes the transport (closed_after_done).
        return st.session.role() == Role::Server && st.done_seen;
    }
    // snet has no close: once the application is gone and everything it
    // wrote is out, drop the transport.
    st.abandoned() && st.all_sent()
}

/// Client with the record layer: the server closing the transport after our
/// DONE went out is the end of the session.
fn closed_after_done(st: &State) -> bool {
    st.done_at
        .is_some_and(|d| st.session.sent() >= d && st.session.role() == Role::Client)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::proto::cipher::server_ciphers;
    use crate::proto::sealed::Link;
    use crate::proto::{Key, Params, Session};
    use std::cell::RefCell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A runtime for the pump's timers.
    pub(in crate::stream) fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    }

    /// No idle timeout, no PINGs: nothing but the test wakes the pump.
    const QUIET: PumpConfig = PumpConfig {
        idle: None,
        ping: None,
        pace: None,
    };

    /// A server's session of the compatible suite (v2, RC4, no records).
    pub(in crate::stream) fn compatible_server() -> Session {
        let key = Key::from_bytes(*b"01234567");
        let (sc, _) = server_ciphers(&key, true, 9);
        Session::new(Role::Server, 9, key, Params::default(), false, sc)
    }

    /// Where in a turn the pump lets go of the lock.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Gap {
        /// After reading, before the write.
        Received,
        /// Sealed: a sealer lent out, before sealing and writing.
        Sealing,
        /// After the write, before the step.
        Transmitted,
    }

    /// What the application does in the window under test.
    type Meanwhile = Box<dyn FnMut(&Shared, Gap)>;

    thread_local! {
        /// Runs between the pump's reading and its step (the window where
        /// the application may take the lock).
        static BETWEEN: RefCell<Option<Meanwhile>> = RefCell::new(None);
    }

    pub(super) fn between(shared: &Shared, gap: Gap) {
        BETWEEN.with(|b| {
            if let Some(f) = b.borrow_mut().as_mut() {
                f(shared, gap);
            }
        });
    }

    struct Count(AtomicUsize);

    /// A waker and the count of its wakes.
    fn counting() -> (Arc<Count>, std::task::Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (count.clone(), std::task::Waker::from(count))
    }

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A transport reading what `inbound` holds (nothing: pending) and
    /// writing into `outbound`, counting the reads tried.
    #[derive(Default)]
    struct Pipe {
        inbound: Arc<parking_lot::Mutex<Vec<u8>>>,
        outbound: Arc<parking_lot::Mutex<Vec<u8>>>,
        reads: Arc<AtomicUsize>,
    }

    impl AsyncRead for Pipe {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let mut inbound = self.inbound.lock();
            if inbound.is_empty() {
                return Poll::Pending;
            }
            let n = inbound.len().min(buf.remaining());
            buf.put_slice(&inbound[..n]);
            inbound.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.outbound.lock().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Sealed: a writer waits for history room with everything it wrote
    /// sent; the peer's acks free the room. They come in a frame with no
    /// data and we have nothing to send, so only the ack itself can wake
    /// the writer (before, it slept until something else was sent).
    #[test]
    fn acks_that_free_the_history_wake_a_waiting_writer() {
        let runtime = runtime();
        let _entered = runtime.enter();
        let ((cs, cl), (ss, sl)) = crate::fuzz::sealed_pair().expect("handshake");
        let mut client = State::new(cs, 1 << 20, Duration::from_secs(1), None);
        client.link = Some(cl);
        // So that the whole history goes out before any ack comes back.
        client.session.allow(u64::MAX);
        let chunk = vec![7u8; 60_000];
        for _ in 0..1_000 {
            if client.write(&chunk) == 0 {
                break;
            }
        }
        let mut server = State::new(ss, 16 << 20, Duration::from_secs(1), None);
        server.link = Some(sl);
        let shared = Shared::new(client);
        let io = Pipe::default();
        let (inbound, outbound) = (io.inbound.clone(), io.outbound.clone());
        let mut io = io;
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(pump(&shared, &mut io, QUIET));
        for _ in 0..100 {
            assert!(fut.as_mut().poll(&mut cx).is_pending());
            let st = shared.state.lock();
            if st.session.sent() == st.session.write_count() && !st.wire_ready() {
                break;
            }
        }
        {
            let st = shared.state.lock();
            assert_eq!(st.session.sent(), st.session.write_count(), "all sent");
            assert!(
                st.session.write_capacity() <= crate::proto::record::DATA_HEADER,
                "history full"
            );
        }
        let (writer, writer_waker) = counting();
        shared.state.lock().write_waker = Some(writer_waker);
        // The peer takes it all and acks.
        let wire = std::mem::take(&mut *outbound.lock());
        let mut no_wake = Context::from_waker(std::task::Waker::noop());
        let mut rest = &wire[..];
        for _ in 0..wire.len() {
            if rest.is_empty() {
                break;
            }
            let mut lent = server.lend().expect("lent");
            let before = rest.len();
            let read = lent.poll_read(&mut rest, &mut no_wake);
            assert!(matches!(read, Poll::Ready(Ok(n)) if n == before - rest.len() && n > 0));
            server.take_back(lent).expect("opens");
        }
        assert!(rest.is_empty(), "all read");
        let window = server.window();
        let link = server.link.as_mut().expect("sealed");
        let ack = link
            .poll_transmit(&mut server.session, window)
            .expect("seals")
            .to_vec();
        assert!(!ack.is_empty(), "an ack is owed");
        inbound.lock().extend_from_slice(&ack);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(outbound.lock().is_empty(), "nothing for us to send");
        assert!(shared.state.lock().session.write_capacity() > crate::proto::record::DATA_HEADER);
        assert!(writer.0.load(Ordering::Relaxed) > 0, "the writer is woken");
    }

    /// A compatible server session without records whose application
    /// drops its reading half, shuts its writing half down and then drops
    /// it: the last drop abandons the session, and the driver must hear of
    /// it to finish (before, only the shutdown woke it, and it slept on).
    #[test]
    fn dropping_a_shut_down_writer_wakes_the_driver_to_finish() {
        let runtime = runtime();
        let _entered = runtime.enter();
        let session = compatible_server();
        let state = State::new(session, 4096, Duration::from_secs(1), None);
        let shared = Arc::new(Shared::new(state));
        let (read, mut write) = super::super::Stream::new(shared.clone()).into_split();
        let mut io = Pipe::default();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(pump(&shared, &mut io, QUIET));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(read);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        let shut = Pin::new(&mut write).poll_shutdown(&mut cx);
        assert!(shut.is_ready(), "nothing was written");
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "still writable");
        let before = count.0.load(Ordering::Relaxed);
        drop(write);
        assert!(
            count.0.load(Ordering::Relaxed) > before,
            "the drop wakes the driver"
        );
        assert!(matches!(
            fut.as_mut().poll(&mut cx),
            Poll::Ready(PumpEnd::Finished)
        ));
    }

    /// The application empties a full receive buffer after the pump stopped
    /// reading for want of room and before its step registered its waker:
    /// the application's wake finds no waker, so the pump must see the room
    /// itself and come back to read (it slept until the idle timeout).
    #[test]
    fn room_made_while_the_pump_stops_reading_is_not_missed() {
        let runtime = runtime();
        let _entered = runtime.enter();
        let session = compatible_server();
        let limit = 4096;
        let mut state = State::new(session, limit, Duration::from_secs(1), None);
        state.rx.extend_from_slice(&vec![0; limit]);
        let shared = Shared::new(state);
        meanwhile_at(Gap::Received, |st| {
            let mut out = vec![0u8; 2 * 4096];
            st.read_into(&mut tokio::io::ReadBuf::new(&mut out));
        });
        let mut io = Pipe::default();
        let reads = io.reads.clone();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(pump(&shared, &mut io, QUIET));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        BETWEEN.with(|b| *b.borrow_mut() = None);
        assert_eq!(reads.load(Ordering::Relaxed), 0, "stopped for want of room");
        assert!(shared.state.lock().rx.is_empty(), "the application read");
        assert!(count.0.load(Ordering::Relaxed) > 0, "the pump comes back");
        // And back, it reads (and waits on the transport).
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert_eq!(reads.load(Ordering::Relaxed), 1);
    }

    /// A sealed client, with its link, behind a shared lock.
    fn sealed_client() -> Shared {
        let ((cs, cl), _) = crate::fuzz::sealed_pair().expect("handshake");
        let mut client = State::new(cs, 1 << 20, Duration::from_secs(1), None);
        client.link = Some(cl);
        client.session.allow(u64::MAX);
        Shared::new(client)
    }

    /// What the application does in `gap` (`act`, under the lock), then
    /// wakes the driver.
    fn meanwhile_at(gap: Gap, act: fn(&mut State)) {
        BETWEEN.with(|b| {
            *b.borrow_mut() = Some(Box::new(move |shared: &Shared, at| {
                if at != gap {
                    return;
                }
                let mut wake = Wake::default();
                let mut st = shared.state.lock();
                act(&mut st);
                st.take_driver_waker(&mut wake);
                drop(st);
                wake.fire();
            }))
        });
    }

    /// The pump lets go of the lock between its write and its step: an
    /// application write then, in a turn that a wake started (so no waker
    /// was left to take), must still bring the pump back to send it (before,
    /// the bytes waited for the peer's next frame or a timer).
    #[test]
    fn a_write_while_the_pump_is_between_locks_brings_it_back() {
        let runtime = runtime();
        let _entered = runtime.enter();
        let shared = sealed_client();
        let mut io = Pipe::default();
        let outbound = io.outbound.clone();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(pump(&shared, &mut io, QUIET));
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        outbound.lock().clear();
        // A wake (the application's) that starts the next turn.
        let mut wake = Wake::default();
        shared.state.lock().take_driver_waker(&mut wake);
        wake.fire();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        meanwhile_at(Gap::Transmitted, |st| {
            assert_eq!(st.write(b"late bytes"), 10);
        });
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        BETWEEN.with(|b| *b.borrow_mut() = None);
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            2,
            "the write woke the pump"
        );
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(!outbound.lock().is_empty(), "and it sent them");
    }

    /// A reconnect forced while the pump seals and writes outside the lock
    /// is not missed.
    #[test]
    fn a_reconnect_forced_while_the_pump_seals_is_not_missed() {
        let runtime = runtime();
        let _entered = runtime.enter();
        let shared = sealed_client();
        assert_eq!(shared.state.lock().write(&[5u8; 1000]), 1000);
        let mut io = Pipe::default();
        let outbound = io.outbound.clone();
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut fut = std::pin::pin!(pump(&shared, &mut io, QUIET));
        meanwhile_at(Gap::Sealing, |st| {
            assert!(
                st.link.as_ref().is_some_and(Link::has_output),
                "lent out to be written"
            );
            st.force_reconnect = true;
        });
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        BETWEEN.with(|b| *b.borrow_mut() = None);
        assert!(outbound.lock().len() > 1000, "sealed and written");
        assert!(count.0.load(Ordering::Relaxed) > 0, "the pump is woken");
        assert!(matches!(
            fut.as_mut().poll(&mut cx),
            Poll::Ready(PumpEnd::Forced)
        ));
    }
}
