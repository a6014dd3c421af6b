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

use bytes::Bytes;
use tokio::net::TcpStream;

use super::frame::MAX_DATA;
use super::mux::{Inbound, MuxStream, advance_pieces};
use super::pool;
use super::traffic::Meter;

/// Most chunks written in one vectored write.
const WRITE_SLICES: usize = 16;

/// Copies both ways between `sock` and `stream` until both directions have
/// ended (FIN each way) or either side aborts; `meter` counts the bytes.
pub(crate) async fn bridge(sock: TcpStream, mut stream: MuxStream, meter: Meter) {
    let credit_signal = stream.credit_signal();
    // Bytes from the tunnel not yet written to the socket.
    let mut pending: VecDeque<Bytes> = VecDeque::new();
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
                let slices: Vec<IoSlice<'_>> =
                    pending.iter().take(WRITE_SLICES).map(|b| IoSlice::new(b)).collect();
                match sock.try_write_vectored(&slices) {
                    Ok(n) => {
                        meter.wrote(n);
                        stream.consumed(n);
                        advance_pieces(&mut pending, n);
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
                let mut reset = false;
                while let Some(inbound) = next.take() {
                    match inbound {
                        Inbound::Data(bytes) => {
                            pending.push_back(bytes);
                            if pending.len() < WRITE_SLICES {
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
