//! Moving bytes between one transport and the shared state.
//!
//! [`pump`] runs while a transport is attached: it reads into the receive
//! buffer while there is room, writes whatever the history holds that the
//! transport has not taken, flushes, answers PINGs, watches for a silent
//! link, and returns when the transport breaks, a reconnect is forced, or the
//! session's close completes. It holds the lock only for non-blocking polls.

use std::future::{Future, poll_fn};
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
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
}

/// Runs until the transport breaks or the session is done with it.
pub(crate) async fn pump<T>(shared: &Shared, io: &mut T, cfg: PumpConfig) -> PumpEnd
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut timer: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
    let mut scratch = BytesMut::new();
    poll_fn(|cx| {
        let mut wake = Wake::default();
        let poll = match receive(shared, io, &mut scratch, cx, &mut wake) {
            Some(end) => Poll::Ready(end),
            None => {
                let mut st = shared.state.lock();
                step(&mut st, io, cfg, &mut timer, cx, &mut wake)
            }
        };
        wake.fire();
        poll
    })
    .await
}

/// Reads while there is room, a step's worth at most. The lock is held only
/// to lend the receiving side out and to take it back: the read and the
/// decryption happen outside it. `None`: carry on with the step.
fn receive<T>(
    shared: &Shared,
    io: &mut T,
    scratch: &mut BytesMut,
    cx: &mut Context<'_>,
    wake: &mut Wake,
) -> Option<PumpEnd>
where
    T: AsyncRead + Unpin,
{
    let mut taken = 0;
    loop {
        let mut st = shared.state.lock();
        if st.ended.is_some() || st.force_reconnect || st.broken.is_some() {
            // The step says why.
            return None;
        }
        // Sealed: always, since the peer sends no more than our window
        // (and acks must never wait behind data nobody reads).
        if !st.can_receive() && st.link.is_none() {
            return None;
        }
        if taken >= STEP_BYTES {
            cx.waker().wake_by_ref();
            return None;
        }
        let (poll, handled) = if st.reads_in_place() {
            st.read_in_place(io, cx)
        } else {
            let mut lent = st.lend(std::mem::take(scratch))?;
            drop(st);
            let poll = lent.poll_read(io, cx);
            st = shared.state.lock();
            let (buf, handled) = st.take_back(lent);
            *scratch = buf;
            (poll, handled)
        };
        match poll {
            Poll::Ready(Ok(0)) => {
                return Some(if closed_after_done(&st) {
                    PumpEnd::Finished
                } else {
                    PumpEnd::Broken("connection closed by the peer".into())
                });
            }
            Poll::Ready(Ok(n)) => {
                taken += n;
                if let Err(e) = handled {
                    st.end(Err(e), wake);
                    return Some(PumpEnd::Ended);
                }
                st.take_read_waker(wake);
                if let Some(reason) = st.broken.take() {
                    return Some(PumpEnd::Broken(reason));
                }
            }
            Poll::Ready(Err(e)) => return Some(PumpEnd::Broken(e.to_string())),
            Poll::Pending => return None,
        }
    }
}

fn step<T>(
    st: &mut State,
    io: &mut T,
    cfg: PumpConfig,
    timer: &mut Pin<Box<Sleep>>,
    cx: &mut Context<'_>,
    wake: &mut Wake,
) -> Poll<PumpEnd>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if st.ended.is_some() {
        return Poll::Ready(PumpEnd::Ended);
    }
    if st.force_reconnect {
        st.force_reconnect = false;
        return Poll::Ready(PumpEnd::Forced);
    }
    if let Some(reason) = st.broken.take() {
        return Poll::Ready(PumpEnd::Broken(reason));
    }

    if st.records.is_some() {
        queue_close_records(st);
    }
    st.flush_controls();

    // Write what the transport has not taken, a step's worth at most.
    let mut wrote = 0;
    loop {
        if wrote >= STEP_BYTES {
            cx.waker().wake_by_ref();
            break;
        }
        let window = st.window();
        let poll = if let Some(link) = &mut st.link {
            let out = match link.poll_transmit(&mut st.session, window) {
                Ok(out) => out,
                Err(e) => {
                    st.end(Err(Error::Protocol(e)), wake);
                    return Poll::Ready(PumpEnd::Ended);
                }
            };
            if out.is_empty() {
                break;
            }
            Pin::new(&mut *io).poll_write(cx, out)
        } else {
            let (a, b) = st.session.poll_transmit();
            if a.is_empty() {
                break;
            }
            if !b.is_empty() && io.is_write_vectored() {
                Pin::new(&mut *io).poll_write_vectored(cx, &[IoSlice::new(a), IoSlice::new(b)])
            } else {
                Pin::new(&mut *io).poll_write(cx, a)
            }
        };
        match poll {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(PumpEnd::Broken("transport accepts no more bytes".into()));
            }
            Poll::Ready(Ok(n)) => {
                match &mut st.link {
                    Some(link) => link.handle_transmitted(n),
                    None => st.session.handle_transmitted(n),
                }
                wrote += n;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(PumpEnd::Broken(e.to_string())),
            Poll::Pending => break,
        }
    }
    if wrote > 0 {
        st.flushed = false;
        // Room may have opened in the history.
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
    let now = Instant::now();
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
    if let Some(at) = next {
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        if timer.as_mut().poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }
    st.driver_waker = Some(cx.waker().clone());
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
