//! The mux's one IO task: frames from the stream into the core, frames from
//! the core onto the stream, the core's timer, and session events out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::{Instant, sleep_until};
use tracing::info;

use super::core::Arrival;
use super::stream::{DatagramReceiver, MuxStream};
use super::types::End;
use super::{Event, MuxCore, Shared};
use crate::stream::Stream;
use crate::tunnel::frame::Frame;
use crate::tunnel::pool;

/// Most frames handled in one hold of the core's lock.
const DISPATCH_BATCH: usize = 64;

/// Most bytes of frames taken from the core at once (under its lock) to be
/// written; the stream itself takes at most 256 KiB per write.
const OUTBOX_FILL: usize = 256 << 10;

/// The read buffer of a link that is idle or carries little (the last read
/// brought less than this); a read that brings this much switches to pooled
/// ones.
const SMALL_READ: usize = 4096;

/// How long an ended mux may take to write its last session frames (a
/// refusal, a goodbye), and then to flush them.
const CLOSE_WRITE: Duration = Duration::from_secs(5);
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// Encoded frames waiting to be written, and their total size.
#[derive(Default)]
struct Outbox {
    pieces: VecDeque<Bytes>,
    bytes: usize,
    headers: BytesMut,
}

impl Outbox {
    fn push(&mut self, frame: Frame) {
        // DATA and DATAGRAM payloads go out as they are, without a copy.
        let payload = frame.encode_split(&mut self.headers);
        let header = self.headers.split().freeze();
        self.bytes += header.len();
        self.pieces.push_back(header);
        // (An empty piece would stay at the front for ever: a write of
        // nothing but empty slices takes 0 bytes.)
        if let Some(p) = payload.filter(|p| !p.is_empty()) {
            self.bytes += p.len();
            self.pieces.push_back(p);
        }
    }

    fn advance(&mut self, n: usize) {
        self.bytes -= n;
        advance_pieces(&mut self.pieces, n);
    }
}

/// Drops the first `n` bytes of `pieces` (what a vectored write took).
pub(crate) fn advance_pieces(pieces: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = pieces.front_mut() else {
            return;
        };
        if n < front.len() {
            front.advance(n);
            return;
        }
        n -= front.len();
        pieces.pop_front();
    }
}

/// Copies small payloads (see [`pool::SHARE_AT_LEAST`]) and every datagram
/// out of the read buffer, so that they pin nothing.
fn unpin(frame: Frame) -> Frame {
    match frame {
        Frame::Data { id, payload } if payload.len() < pool::SHARE_AT_LEAST => Frame::Data {
            id,
            payload: Bytes::copy_from_slice(&payload),
        },
        Frame::Datagram { id, payload } => Frame::Datagram {
            id,
            payload: Bytes::copy_from_slice(&payload),
        },
        other => other,
    }
}

/// Turns what the core passed up into an event, registering a new stream or
/// association with the core.
fn event(shared: &Arc<Shared>, core: &mut MuxCore, arrival: Arrival) -> Event {
    match arrival {
        Arrival::Open { id, index, visitor } => {
            let (port, inbound, credit) = MuxStream::port();
            let serial = core.accept(id, port);
            Event::Open {
                stream: MuxStream::new(id, serial, inbound, credit, shared.clone()),
                index,
                visitor,
            }
        }
        Arrival::Associate { id, index, visitor } => {
            let (tx, datagrams) = DatagramReceiver::new(shared.clone());
            core.accept_association(id, tx, visitor);
            Event::Associate {
                id,
                index,
                visitor,
                datagrams,
            }
        }
        Arrival::Dissociate { id } => Event::Dissociate { id },
        Arrival::Control(frame) => Event::Control(frame),
    }
}

/// Why dispatching stopped.
enum Dispatched {
    /// Only a partial frame (or nothing) is left: time to read.
    Drained,
    /// A batch was handled and more frames are buffered, or an event waits
    /// for room: come back after the other work.
    Paused,
    /// The mux must end: the end, and the goodbye to send if any.
    End(End, Option<String>),
}

/// Hands the frames buffered in `cur` to the core, a batch at a time. An
/// event the session has no room for goes to `held`, and nothing more is
/// handled until it has gone.
fn dispatch(
    shared: &Arc<Shared>,
    core: &mut MuxCore,
    cur: &mut Bytes,
    events: &mpsc::Sender<Event>,
    held: &mut Option<Event>,
) -> Dispatched {
    for _ in 0..DISPATCH_BATCH {
        let frame = match Frame::decode_bytes(cur) {
            Ok(Some(frame)) => unpin(frame),
            Ok(None) => return Dispatched::Drained,
            Err(e) => {
                let reason = format!("protocol error: {e}");
                return Dispatched::End(End::Protocol(e.to_string()), Some(reason));
            }
        };
        match core.handle_frame(frame) {
            Ok(None) => {}
            Ok(Some(arrival)) => match events.try_send(event(shared, core, arrival)) {
                Ok(()) => {}
                Err(TrySendError::Full(event)) => {
                    *held = Some(event);
                    return Dispatched::Paused;
                }
                Err(TrySendError::Closed(event)) => {
                    // Dropped by the caller once the core's lock is released
                    // (a stream's drop takes it).
                    *held = Some(event);
                    return Dispatched::End(End::Closed("session gone".into()), None);
                }
            },
            Err(end) => return Dispatched::End(end, None),
        }
    }
    Dispatched::Paused
}

/// Runs the mux over `stream` until it ends, then writes out its last
/// session frames (bounded in time) and drops the stream.
pub(super) async fn drive(shared: Arc<Shared>, stream: Stream, events: mpsc::Sender<Event>) {
    let (mut read, mut write) = stream.into_split();
    // Received bytes not yet handed to the core: whole frames, or at most
    // one partial frame once drained.
    let mut cur = Bytes::new();
    // The next read's buffer, the partial frame (if any) copied in front.
    let mut buf: Option<Vec<u8>> = None;
    // Whether the last read brought a small buffer's worth or more: the
    // link is busy, and reads go to pooled buffers.
    let mut busy = false;
    let mut out = Outbox::default();
    let mut held: Option<Event> = None;
    let mut drained = true;
    let mut received: Option<Instant> = None;
    let mut close_at: Option<Instant> = None;
    // Whether anything was written since the last ping tick.
    let mut wrote = false;
    loop {
        let unsent_limit = write.unsent_limit();
        let (can_read, deadline, ended, stop, discarded) = {
            let mut core = shared.core.lock();
            core.follow_link(unsent_limit);
            if let Some(at) = received.take() {
                core.touch(at);
            }
            let mut stop = None;
            if held.is_none() && !core.is_ended() {
                drained = match dispatch(&shared, &mut core, &mut cur, &events, &mut held) {
                    Dispatched::Drained => true,
                    Dispatched::Paused => false,
                    Dispatched::End(end, goodbye) => {
                        stop = Some((end, goodbye));
                        false
                    }
                };
            }
            while out.bytes < OUTBOX_FILL {
                match core.poll_transmit() {
                    Some(frame) => out.push(frame),
                    None => break,
                }
            }
            let can_read = drained && held.is_none() && core.wants_read();
            let discarded = core.take_discarded();
            (
                can_read,
                core.poll_timeout(),
                core.is_ended(),
                stop,
                discarded,
            )
        };
        // What reset streams held goes here, not under the core's lock.
        drop(discarded);
        if let Some((end, goodbye)) = stop {
            shared.finish(end, goodbye);
            continue;
        }
        if ended {
            // A stream inside an undelivered event is dropped here, outside
            // the core's lock.
            held = None;
            if out.pieces.is_empty() {
                break;
            }
        }
        if ended {
            close_at.get_or_insert_with(|| Instant::now() + CLOSE_WRITE);
        }
        let close_by = close_at.unwrap_or(deadline);
        let more = !drained && held.is_none() && !ended;
        if can_read && buf.is_none() {
            // A link that is idle or carries little waits with a small
            // buffer, not a pooled 256 KiB one: many idle sessions must not
            // each hold one.
            let mut fresh = if busy || cur.len() > SMALL_READ / 2 {
                pool::take()
            } else {
                vec![0u8; SMALL_READ]
            };
            crate::proto::copy::copy(&cur, &mut fresh[..cur.len()]);
            buf = Some(fresh);
        }
        let keep = cur.len();
        tokio::select! {
            biased;
            // Payloads go into the link's history as they are, not copied.
            written = write.write_shared(&out.pieces), if !out.pieces.is_empty() => match written {
                Ok(n) if n > 0 => {
                    out.advance(n);
                    wrote = true;
                }
                _ => {
                    shared.finish(End::Stream("stream closed for writing".into()), None);
                    break;
                }
            },
            got = read_into(&mut read, &mut buf, keep), if can_read => match got {
                Ok(0) => shared.finish(End::Stream("closed by the peer".into()), None),
                Ok(n) => {
                    received = Some(Instant::now());
                    if let Some(full) = buf.take() {
                        busy = keep + n >= SMALL_READ;
                        cur = if full.len() == pool::BUF_SIZE {
                            pool::freeze(full, keep + n)
                        } else {
                            let mut small = Bytes::from(full);
                            small.truncate(keep + n);
                            small
                        };
                    }
                }
                Err(e) => shared.finish(End::Stream(e.to_string()), None),
            },
            permit = events.reserve(), if held.is_some() => match (permit, held.take()) {
                (Ok(permit), Some(event)) => permit.send(event),
                _ => shared.finish(End::Closed("session gone".into()), None),
            },
            _ = shared.wake.notified() => {}
            _ = sleep_until(deadline), if !ended => {
                // Not reading by choice is excused while writes go out.
                let excused = std::mem::take(&mut wrote) && !can_read;
                if shared.core.lock().handle_timeout(Instant::now(), excused) {
                    info!("link silent; forcing a reconnect");
                    shared.handle.force_reconnect();
                }
            }
            // More frames are buffered: handle them after the work above,
            // letting other tasks run first (a buffer of tiny frames is many
            // batches).
            _ = tokio::task::yield_now(), if more => {}
            _ = sleep_until(close_by), if ended => break,
        }
    }
    let _ = tokio::time::timeout(CLOSE_FLUSH, write.flush()).await;
}

/// Reads into `buf` after its first `keep` bytes.
async fn read_into(
    read: &mut crate::stream::ReadHalf,
    buf: &mut Option<Vec<u8>>,
    keep: usize,
) -> std::io::Result<usize> {
    match buf {
        Some(buf) => read.read(&mut buf[keep..]).await,
        None => std::future::pending().await,
    }
}
