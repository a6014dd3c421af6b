//! Joining a TCP socket to a tunnel stream.
//!
//! One task per connection, waiting on readiness only: no buffer is held
//! while the connection is idle (a read buffer lives only for the read that
//! fills it), so an idle visitor costs a few hundred bytes beyond its socket.
//! While data flows, reads are large (a pooled 256 KiB buffer, split into DATA
//! frames without copying) and queued data goes out in one vectored write:
//! every system call on loopback also wakes the peer, so fewer is faster.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::frame::MAX_DATA;
use super::mux::{GATHER_BELOW, GATHER_MOST, Inbound, MuxStream, advance_pieces};
use super::pool;
use super::traffic::Meter;

/// Most chunks written in one vectored write.
const WRITE_SLICES: usize = 16;

/// Most payloads taken from the stream in one turn of the loop: bounded
/// work per turn, but enough that a flood of tiny payloads is gathered as
/// fast as it arrives.
const TAKE_PER_TURN: usize = 4096;

/// Bytes from the tunnel not yet written to the socket. The stream's window
/// counts payload bytes only, so a peer sending tiny DATA frames must not
/// make each byte cost a queue slot and an allocation (tens of bytes per
/// byte held for a visitor that does not read): small payloads are copied
/// together into buffers of up to [`GATHER_MOST`], which also go out in
/// far fewer writes. A gathered buffer joins the queue whole, its
/// allocation its own (it grows with what it holds, and nothing of it
/// stays behind once written: an idle connection holds no buffer), and
/// only when it will be written at once or is full, so a socket that takes
/// little at a time does not collect small buffers.
#[derive(Default)]
struct Pending {
    queue: VecDeque<Bytes>,
    /// Small payloads gathered after everything in `queue`.
    tail: Vec<u8>,
}

impl Pending {
    fn push(&mut self, bytes: Bytes) {
        if bytes.len() >= GATHER_BELOW {
            self.seal_tail();
            self.queue.push_back(bytes);
            return;
        }
        if self.tail.len() + bytes.len() > GATHER_MOST {
            self.seal_tail();
        }
        if self.tail.is_empty() {
            // Doubling from here (not from a few bytes): few reallocations
            // for a stream of small payloads, little held for a few.
            self.tail.reserve(GATHER_MOST);
        }
        self.tail.extend_from_slice(&bytes);
    }

    /// Moves the gathered bytes, allocation and all, to the end of the queue.
    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.queue
                .push_back(Bytes::from(std::mem::take(&mut self.tail)));
        }
    }

    /// Before a write: the gathered bytes join the queue if they would be
    /// among the slices written.
    fn ready_for_write(&mut self) {
        if self.queue.len() < WRITE_SLICES {
            self.seal_tail();
        }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.tail.is_empty()
    }

    /// Whether `WRITE_SLICES` buffers wait (so taking more can wait too).
    fn full(&self) -> bool {
        self.queue.len() >= WRITE_SLICES
    }
}

/// TCP keepalive of a visitor's connection (server) and of the connection
/// to the local service (client): an idle peer that vanished without a
/// word (a phone gone out of range, a NAT that forgot the connection, a
/// host switched off) is found after [`KEEPALIVE_IDLE`] of silence and four
/// unanswered probes [`KEEPALIVE_INTERVAL`] apart, about two minutes, and
/// its stream ends on both sides, the connection at the other end closed
/// with it. Without it such a visitor held its stream, and the client a
/// connection to the service, for ever.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_RETRIES: u32 = 4;

/// The socket options both ends of a bridge set: no Nagle delay,
/// keepalive (see [`KEEPALIVE_IDLE`]), and at most
/// [`crate::stream::KERNEL_UNSENT`] written and not yet sent held by the
/// kernel (Linux and Android). Where the kernel sizes a socket's send
/// buffer to the path (a service's always, a visitor's unless
/// `socket_buffer` is set), what a visitor or service has not yet taken
/// then waits in the mux, counted against the inbound budget, not in a send
/// buffer grown to megabytes.
fn tune(sock: &TcpStream) {
    let _ = sock.set_nodelay(true);
    let sock_ref = socket2::SockRef::from(sock);
    crate::stream::bound_unsent(&sock_ref);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = sock_ref.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
}

/// Copies both ways between `sock` and `stream` until both directions have
/// ended (FIN each way) or either side aborts; `meter` counts the bytes.
pub(crate) async fn bridge(sock: TcpStream, mut stream: MuxStream, meter: Meter) {
    tune(&sock);
    let credit_signal = stream.credit_signal();
    let mut pending = Pending::default();
    let mut fin_pending = false;
    let mut read_done = false;
    let mut write_done = false;
    let aborted = loop {
        if read_done && write_done {
            break false;
        }
        // Read once per turn, so that the branches agree.
        let credit = match stream.credit() {
            Some(credit) => credit,
            // Gone while this side still sends: only a reset or the mux's
            // end does that (a clean end needs our FIN first).
            None if !read_done => break true,
            None => 0,
        };
        let can_read = !read_done && credit > 0;
        let wait_credit = !read_done && credit == 0;
        // Always taken, however much is pending (the stream's window bounds
        // it), and after the peer's FIN too: a reset (the inbound budget's,
        // the session's end) must be seen even while the socket takes
        // nothing. The stream stays in the mux until it is all written.
        let take_more = !write_done;
        tokio::select! {
            ready = sock.writable(), if !pending.is_empty() => {
                if ready.is_err() {
                    break true;
                }
                pending.ready_for_write();
                let slices: Vec<IoSlice<'_>> =
                    pending.queue.iter().take(WRITE_SLICES).map(|b| IoSlice::new(b)).collect();
                match sock.try_write_vectored(&slices) {
                    Ok(n) => {
                        meter.wrote(n);
                        stream.consumed(n);
                        advance_pieces(&mut pending.queue, n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break true,
                }
                if pending.is_empty() && fin_pending {
                    // The peer is done: pass the half-close on.
                    let _ = socket2::SockRef::from(&sock).shutdown(std::net::Shutdown::Write);
                    write_done = true;
                }
            }
            inbound = stream.recv(), if take_more => {
                // And whatever else is here already, so that it goes out
                // in one vectored write rather than one write per frame.
                let mut next = Some(inbound);
                let (mut reset, mut taken) = (false, 0);
                while let Some(inbound) = next.take() {
                    match inbound {
                        Inbound::Data(bytes) => {
                            pending.push(bytes);
                            taken += 1;
                            if !pending.full() && taken < TAKE_PER_TURN {
                                next = stream.try_recv();
                            }
                        }
                        Inbound::Fin if pending.is_empty() => {
                            let _ = socket2::SockRef::from(&sock)
                                .shutdown(std::net::Shutdown::Write);
                            write_done = true;
                        }
                        Inbound::Fin => fin_pending = true,
                        Inbound::Reset => reset = true,
                    }
                }
                if reset {
                    break true;
                }
            }
            ready = sock.readable(), if can_read => {
                if ready.is_err() {
                    break true;
                }
                // Credit as it is now: other streams may have filled the
                // session's outbound queue while this one waited.
                let want = (stream.credit().unwrap_or(0) as usize).min(pool::BUF_SIZE);
                if want == 0 {
                    continue;
                }
                let mut buf = pool::take();
                match sock.try_read(&mut buf[..want]) {
                    Ok(0) => {
                        stream.send_fin();
                        read_done = true;
                    }
                    Ok(n) => {
                        meter.read(n);
                        // One frame per MAX_DATA bytes, sharing the buffer
                        // (a small read is copied out instead).
                        let mut bytes = pool::freeze_or_copy(buf, n);
                        let mut sent = Ok(());
                        while !bytes.is_empty() && sent.is_ok() {
                            let n = bytes.len().min(MAX_DATA);
                            sent = stream.send(bytes.split_to(n));
                        }
                        // (Only a reset or ended mux refuses what fits the credit.)
                        if sent.is_err() {
                            break true;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break true,
                }
            }
            _ = credit_signal.wait(), if wait_credit => {}
            // Unreachable: one of the branches above is always enabled.
            else => break false,
        }
    };
    if aborted {
        // Tell both ends: RST on the socket, RESET on the tunnel.
        let _ = sock.set_zero_linger();
        stream.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a bridge bound what the kernel holds unsent.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn a_bridged_socket_bounds_what_the_kernel_holds_unsent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (dialed, accepted) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (dialed, _accepted) = (dialed.unwrap(), accepted.unwrap());
        let sock = socket2::SockRef::from(&dialed);
        assert_eq!(sock.tcp_notsent_lowat().unwrap(), 0);
        tune(&dialed);
        assert_eq!(
            sock.tcp_notsent_lowat().unwrap(),
            crate::stream::KERNEL_UNSENT as u32
        );
        assert!(dialed.nodelay().unwrap());
    }

    fn written(p: &mut Pending) -> Vec<u8> {
        p.ready_for_write();
        let mut out = Vec::new();
        for piece in p.queue.drain(..) {
            out.extend_from_slice(&piece);
        }
        out
    }

    /// Small payloads are gathered, in order with the large ones, and
    /// nothing of the gathering buffer stays once it is written.
    #[test]
    fn small_payloads_are_gathered_in_order_and_leave_nothing_behind() {
        let mut p = Pending::default();
        let big = Bytes::from(vec![b'B'; GATHER_BELOW]);
        p.push(Bytes::from_static(b"a"));
        p.push(Bytes::from_static(b"b"));
        p.push(big.clone());
        p.push(Bytes::from_static(b"c"));
        assert_eq!(p.queue.len(), 2, "the two small ones went in as one buffer");
        let mut want = b"ab".to_vec();
        want.extend_from_slice(&big);
        want.push(b'c');
        assert_eq!(written(&mut p), want);
        assert!(p.is_empty());
        assert_eq!(p.tail.capacity(), 0, "an idle connection holds no buffer");
        // A flood of one-byte payloads: one buffer per GATHER_MOST bytes.
        for _ in 0..3 * GATHER_MOST {
            p.push(Bytes::from_static(b"x"));
        }
        assert_eq!(p.queue.len(), 2);
        assert_eq!(written(&mut p).len(), 3 * GATHER_MOST);
    }

    /// With a full write's worth of buffers ahead, the gathered bytes wait
    /// in the tail instead of joining the queue as one more small buffer
    /// each time the socket takes a little.
    #[test]
    fn the_tail_waits_while_it_would_not_be_written() {
        let mut p = Pending::default();
        for _ in 0..WRITE_SLICES {
            p.push(Bytes::from(vec![0; GATHER_BELOW]));
        }
        for _ in 0..100 {
            p.push(Bytes::from_static(b"x"));
            p.ready_for_write();
        }
        assert_eq!(p.queue.len(), WRITE_SLICES);
        assert_eq!(p.tail.len(), 100);
        p.queue.pop_front();
        p.ready_for_write();
        assert_eq!(p.queue.len(), WRITE_SLICES);
        assert!(p.tail.is_empty());
    }
}
