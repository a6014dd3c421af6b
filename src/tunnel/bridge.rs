//! Joining a TCP socket to a tunnel stream.
//!
//! One task per connection, waiting on readiness only: no buffer is held
//! while the connection is idle (a read buffer lives only for the read that
//! fills it), so an idle visitor costs a few hundred bytes beyond its socket.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::net::TcpStream;

use super::frame::MAX_DATA;
use super::mux::{Inbound, MuxStream};

/// Copies both ways between `sock` and `stream` until both directions have
/// ended (FIN each way) or either side aborts.
pub async fn bridge(sock: TcpStream, mut stream: MuxStream) {
    let credit = stream.credit_signal();
    // Bytes from the tunnel not yet written to the socket.
    let mut pending: Option<Bytes> = None;
    let mut read_done = false;
    let mut write_done = false;
    let aborted = loop {
        if read_done && write_done {
            break false;
        }
        let can_read = !read_done && stream.credit() > 0;
        let wait_credit = !read_done && stream.credit() == 0;
        tokio::select! {
            ready = sock.writable(), if pending.is_some() => {
                if ready.is_err() {
                    break true;
                }
                let Some(chunk) = pending.as_mut() else { continue };
                match sock.try_write(chunk) {
                    Ok(n) => {
                        chunk.advance(n);
                        stream.consumed(n);
                        if chunk.is_empty() {
                            pending = None;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break true,
                }
            }
            inbound = stream.recv(), if pending.is_none() && !write_done => match inbound {
                Inbound::Data(bytes) => pending = Some(bytes),
                Inbound::Fin => {
                    // The peer is done: pass the half-close on.
                    let _ = socket2::SockRef::from(&sock).shutdown(std::net::Shutdown::Write);
                    write_done = true;
                }
                Inbound::Reset => break true,
            },
            ready = sock.readable(), if can_read => {
                if ready.is_err() {
                    break true;
                }
                let want = (stream.credit() as usize).min(MAX_DATA);
                let mut buf = BytesMut::with_capacity(want);
                match sock.try_read_buf(&mut (&mut buf).limit(want)) {
                    Ok(0) => {
                        stream.send_fin();
                        read_done = true;
                    }
                    Ok(_) => stream.send(buf.freeze()),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => break true,
                }
            }
            _ = credit.wait(), if wait_credit => {}
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
