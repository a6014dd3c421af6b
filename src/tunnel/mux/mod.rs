//! Many tunnel streams over one resumable stream.
//!
//! Three parts:
//!
//! - the **core** (`core`): the stream table, credit and window accounting,
//!   what each frame from the peer means, what goes out next and when to
//!   PING. Plain data with the time passed in, unit-tested in memory;
//! - **one IO task** (`driver`) per link: it reads frames into the core and
//!   writes what the core hands out, and wakes the core's timer. It never
//!   waits on a tunnel stream (each stream's inbound data is bounded by the
//!   credit the stream granted), so one stalled visitor never stalls the
//!   others; when nothing at all has arrived for the ping timeout it forces
//!   the underlying stream to reconnect, so a silently dead link is
//!   replaced, not waited on;
//! - the **handles** (`stream`): [`Mux`] for the session, [`MuxStream`] for
//!   a visitor's bridge, [`DatagramReceiver`] for UDP. They call into the
//!   core under its lock and wake the IO task when something is queued.
//!
//! Outbound, PING and PONG go first, then session frames and WINDOWs, so
//! credit and liveness never wait behind bulk data; frames that open, carry
//! or end a stream keep their order, and TCP and UDP take turns.
//!
//! Flow control is credit-based: a sender may have at most its credit of DATA
//! outstanding per stream, starting at [`INITIAL_WINDOW`]; the receiver grants
//! more (WINDOW) as its side writes bytes out. A stream that keeps consuming
//! whole half-windows has its window doubled at each grant, up to
//! `max_window` and within a session-wide budget, so one bulk transfer runs at
//! the link's speed while idle and stalled streams keep small windows. A peer
//! that sends beyond its credit has the stream reset; past the session's
//! inbound budget, so does the stream holding the most.

mod core;
mod driver;
mod stream;
mod types;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use self::core::{Core, Port};
use super::frame::Frame;
#[cfg(doc)]
use super::frame::INITIAL_WINDOW;
use crate::stream::{Handle, Stream};
use stream::StreamPort;
pub use stream::{CreditSignal, DatagramReceiver, DatagramSender, MuxStream};
pub use types::{End, Inbound, MuxConfig, SendError, Side, StreamError, UdpDrop, UdpStats};

pub(crate) use driver::advance_pieces;
pub(crate) use stream::{GATHER_BELOW, GATHER_MOST};

/// What the mux hands to the session above it.
#[derive(Debug)]
pub enum Event {
    /// A session frame (login, publishing).
    Control(Frame),
    /// The peer started a UDP association; its datagrams arrive on `datagrams`.
    Associate {
        /// The association.
        id: u32,
        /// The service.
        index: u16,
        /// The visitor.
        visitor: SocketAddr,
        /// Its datagrams, in order.
        datagrams: DatagramReceiver,
    },
    /// The peer ended a UDP association.
    Dissociate {
        /// The association.
        id: u32,
    },
    /// The peer opened a stream.
    Open {
        /// The stream.
        stream: MuxStream,
        /// The service.
        index: u16,
        /// The visitor.
        visitor: SocketAddr,
    },
}

type MuxCore = Core<StreamPort, DatagramSender>;

pub(crate) struct Shared {
    core: Mutex<MuxCore>,
    /// Wakes the IO task: something was queued, or the mux ended.
    wake: Notify,
    end: watch::Sender<Option<End>>,
    handle: Handle,
}

impl Shared {
    /// Ends the mux (the first reason wins), sending `goodbye` first if
    /// given; every stream is told it is reset.
    fn finish(&self, end: End, goodbye: Option<String>) {
        let ports = {
            let mut core = self.core.lock();
            if core.is_ended() {
                return;
            }
            match goodbye {
                Some(reason) => core.goodbye(reason),
                None => core.end(),
            }
        };
        self.end.send_replace(Some(end));
        for port in ports {
            // (Outside the core's lock: what it held is dropped here.)
            drop(port.discard());
            port.deliver(Inbound::Reset);
            port.wake_sender();
        }
        self.wake.notify_one();
    }
}

/// A handle on a running mux; cheap to clone.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Mux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mux").finish_non_exhaustive()
    }
}

impl Mux {
    /// Runs a mux over `stream`; session events arrive on the receiver.
    pub fn start(stream: Stream, side: Side, config: MuxConfig) -> (Mux, mpsc::Receiver<Event>) {
        let handle = stream.handle();
        let (events, events_rx) = mpsc::channel(256);
        let shared = Arc::new(Shared {
            core: Mutex::new(Core::new(side, config, Instant::now())),
            wake: Notify::new(),
            end: watch::channel(None).0,
            handle,
        });
        tokio::spawn(driver::drive(shared.clone(), stream, events));
        (Mux { shared }, events_rx)
    }

    /// The underlying stream's handle.
    pub fn stream(&self) -> &Handle {
        &self.shared.handle
    }

    /// Queues a session frame (login and publishing frames only).
    pub fn send(&self, frame: Frame) -> Result<(), SendError> {
        self.shared.core.lock().send_session(frame)?;
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Opens a stream to the peer for a visitor of service `index`.
    pub fn open(&self, index: u16, visitor: SocketAddr) -> Result<MuxStream, StreamError> {
        let (port, inbound, credit) = MuxStream::port();
        let (id, serial) = self.shared.core.lock().open(index, visitor, port)?;
        self.shared.wake.notify_one();
        Ok(MuxStream::new(
            id,
            serial,
            inbound,
            credit,
            self.shared.clone(),
        ))
    }

    /// Sends GOODBYE and ends the mux.
    pub fn goodbye(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.shared
            .finish(End::Closed(reason.clone()), Some(reason));
    }

    /// Waits until the mux has ended, and says why.
    pub async fn ended(&self) -> End {
        let mut end = self.shared.end.subscribe();
        match end.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| End::Closed("ended".into())),
            Err(_) => End::Closed("ended".into()),
        }
    }

    /// Waits until the underlying stream has closed (after a goodbye, once
    /// everything queued went out).
    pub async fn stream_closed(&self) {
        let mut events = self.shared.handle.events();
        while self.shared.handle.ended().is_none() {
            if let Err(tokio::sync::broadcast::error::RecvError::Closed) = events.recv().await {
                return;
            }
        }
    }

    /// Whether the peer is there: the link is connected and something
    /// arrives (a PONG to the PING sent now, or anything else) within
    /// `within`.
    pub async fn answers_ping(&self, within: Duration) -> bool {
        let s = &self.shared;
        if self.is_ended() || !s.handle.stats().connected {
            return false;
        }
        let asked = s.core.lock().ask_ping(Instant::now());
        s.wake.notify_one();
        let deadline = Instant::now() + within;
        // Bounded: at most `within` of 10 ms steps.
        while Instant::now() < deadline {
            if s.core.lock().last_rx() >= asked {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Whether the mux has ended.
    pub fn is_ended(&self) -> bool {
        self.shared.end.borrow().is_some()
    }

    /// Whether new streams and associations are refused for now: the peer
    /// is not taking the frames queued for it.
    pub(crate) fn backlogged(&self) -> bool {
        self.shared.core.lock().backlogged()
    }

    /// Streams and associations open now.
    pub fn streams(&self) -> usize {
        self.shared.core.lock().open_streams()
    }

    /// A channel for the peer's datagrams of one or more associations.
    pub fn datagram_channel(&self) -> (DatagramSender, DatagramReceiver) {
        DatagramReceiver::new(self.shared.clone())
    }

    /// Starts a UDP association for a visitor of service `index`; the peer's
    /// datagrams for it go to `datagrams`.
    pub fn associate(
        &self,
        index: u16,
        visitor: SocketAddr,
        datagrams: DatagramSender,
    ) -> Result<u32, StreamError> {
        let id = self
            .shared
            .core
            .lock()
            .associate(index, visitor, datagrams)?;
        self.shared.wake.notify_one();
        Ok(id)
    }

    /// Hands a datagram to the link; `false` if it was dropped: above
    /// 65,507 bytes, or the link's UDP queue or its visitor host's half of
    /// it full (all counted), or the association gone.
    pub fn send_datagram(&self, id: u32, payload: bytes::Bytes) -> bool {
        let queued = self.shared.core.lock().send_datagram(id, payload);
        if queued {
            self.shared.wake.notify_one();
        }
        queued
    }

    /// Ends a UDP association and tells the peer.
    pub fn dissociate(&self, id: u32) {
        if self.shared.core.lock().dissociate(id) {
            self.shared.wake.notify_one();
        }
    }

    /// The link's UDP counters.
    pub fn udp_stats(&self) -> UdpStats {
        self.shared.core.lock().udp_stats()
    }

    /// Counts an association ended to make room for a newer visitor.
    pub fn note_udp_eviction(&self) {
        self.shared.core.lock().udp_stats_mut().evicted += 1;
    }

    /// Counts a datagram dropped outside the mux.
    pub fn note_udp_drop(&self, why: UdpDrop) {
        self.shared.core.lock().udp_stats_mut().note(why);
    }
}
