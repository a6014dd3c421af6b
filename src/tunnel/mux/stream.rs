//! What the users of a mux hold: a tunnel stream, the signal that it may
//! send, and the receiving end of associations' datagrams.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc};

use super::Shared;
use super::core::{DatagramPort, Port};
use super::types::{Inbound, SendError};

/// A stream's arrivals, from the mux to the stream's user: a queue
/// (bounded in bytes by the stream's window and the link's inbound budget)
/// that the mux can also empty, so that what a stream it aborts held is let
/// go at once, not when its user next looks (a user still connecting to its
/// service may not for seconds).
///
/// The window counts payload bytes only, so a peer sending tiny DATA
/// frames must not make each byte waiting here cost a queue slot and an
/// allocation (some 64 bytes per byte while the user lags behind the
/// link): a small payload that arrives behind another small one not taken
/// yet is copied onto it, into buffers of up to [`GATHER_MOST`]. One that
/// finds the queue empty waits as it came, so a user keeping up pays
/// nothing for this.
#[derive(Default)]
pub(crate) struct Arrivals {
    queue: Mutex<ArrivalQueue>,
    ready: Notify,
}

/// Room for arrivals an empty queue keeps.
const SHRINK_ABOVE: usize = 64;

/// Payloads below this are gathered: while they wait for a stream's user
/// (see [`Arrivals`]) and for a socket (the bridge's queue).
pub(crate) const GATHER_BELOW: usize = 4096;

/// Most bytes gathered into one buffer.
pub(crate) const GATHER_MOST: usize = 64 * 1024;

#[derive(Default)]
struct ArrivalQueue {
    items: VecDeque<Item>,
    /// The mux let go of the stream: nothing more will come.
    closed: bool,
}

enum Item {
    Arrived(Inbound),
    /// Small payloads copied together, and how many DATA frames brought
    /// them.
    Gathered(Vec<u8>, usize),
}

/// What a reset stream had not taken, for the mux to drop once it has let
/// go of its lock.
pub(crate) struct Held {
    _items: VecDeque<Item>,
}

impl ArrivalQueue {
    fn push(&mut self, inbound: Inbound) {
        if let (Inbound::Data(payload), Some(last)) = (&inbound, self.items.back_mut())
            && payload.len() < GATHER_BELOW
        {
            match last {
                Item::Gathered(gathered, frames)
                    if gathered.len() + payload.len() <= GATHER_MOST =>
                {
                    let (len, add) = (gathered.len(), payload.len());
                    if gathered.capacity() < len + add {
                        // Doubling, so that a flood reallocates rarely, but
                        // never past the most a buffer holds: a full one
                        // costs its bytes.
                        let room = (2 * gathered.capacity()).max(len + add).min(GATHER_MOST);
                        gathered.reserve_exact(room - len);
                    }
                    gathered.extend_from_slice(payload);
                    *frames += 1;
                    return;
                }
                Item::Arrived(Inbound::Data(before)) if before.len() < GATHER_BELOW => {
                    let mut gathered = Vec::with_capacity(2 * (before.len() + payload.len()));
                    gathered.extend_from_slice(before);
                    gathered.extend_from_slice(payload);
                    *last = Item::Gathered(gathered, 2);
                    return;
                }
                _ => {}
            }
        }
        self.items.push_back(Item::Arrived(inbound));
    }

    /// The next arrival and the DATA frames it stands for; `Err(true)` if
    /// none will come any more.
    fn pop(&mut self) -> Result<(Inbound, usize), bool> {
        let next = match self.items.pop_front() {
            Some(Item::Arrived(inbound)) => {
                let frames = usize::from(matches!(inbound, Inbound::Data(_)));
                Ok((inbound, frames))
            }
            Some(Item::Gathered(mut bytes, frames)) => {
                if bytes.capacity() - bytes.len() > bytes.len() / 4 {
                    // Taken before it filled up: it goes on (to a socket
                    // that may take nothing for a while) at its size.
                    bytes.shrink_to_fit();
                }
                Ok((Inbound::Data(Bytes::from(bytes)), frames))
            }
            None => Err(self.closed),
        };
        if self.items.is_empty() && self.items.capacity() > SHRINK_ABOVE {
            // A queue that once held a flood keeps no room for it once
            // drained.
            self.items = VecDeque::new();
        }
        next
    }
}

impl Arrivals {
    fn push(&self, inbound: Inbound) {
        self.queue.lock().push(inbound);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.queue.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next arrival and the DATA frames it stands for; `Err(true)` if
    /// none will come any more.
    pub(super) fn try_pop(&self) -> Result<(Inbound, usize), bool> {
        self.queue.lock().pop()
    }

    /// The next arrival, waiting for it; `None` once none will come.
    async fn pop(&self) -> Option<(Inbound, usize)> {
        // Each pass takes an arrival or waits for the next push or close
        // (a notification given before the wait began is kept).
        loop {
            match self.try_pop() {
                Ok(next) => return Some(next),
                Err(true) => return None,
                Err(false) => self.ready.notified().await,
            }
        }
    }
}

/// Where the mux puts a stream's arrivals, and the signal a sender waiting
/// for credit awaits.
pub(crate) struct StreamPort {
    arrivals: Arc<Arrivals>,
    credit: Arc<Notify>,
}

impl Port for StreamPort {
    fn deliver(&self, inbound: Inbound) {
        self.arrivals.push(inbound);
    }

    type Held = Held;

    fn discard(&self) -> Option<Held> {
        let items = std::mem::take(&mut self.arrivals.queue.lock().items);
        (!items.is_empty()).then_some(Held { _items: items })
    }

    fn wake_sender(&self) {
        self.credit.notify_one();
    }
}

impl Drop for StreamPort {
    fn drop(&mut self) {
        self.arrivals.close();
    }
}

/// Where the mux puts datagrams of UDP associations, with their id.
pub type DatagramSender = mpsc::UnboundedSender<(u32, Bytes)>;

impl DatagramPort for DatagramSender {
    fn deliver(&self, id: u32, payload: Bytes) -> bool {
        self.send((id, payload)).is_ok()
    }
}

/// Receives datagrams from the link; each taken frees the link's inbound
/// budget (see [`MuxConfig::udp_inbound`](super::MuxConfig::udp_inbound)).
pub struct DatagramReceiver {
    rx: mpsc::UnboundedReceiver<(u32, Bytes)>,
    mux: Arc<Shared>,
}

impl std::fmt::Debug for DatagramReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramReceiver").finish_non_exhaustive()
    }
}

impl Drop for DatagramReceiver {
    fn drop(&mut self) {
        // Datagrams never taken give their bytes back to the link's inbound
        // budget. (Never dropped under the core's lock.)
        self.rx.close();
        let mut left = 0;
        while let Ok((_, datagram)) = self.rx.try_recv() {
            left += super::core::cost(datagram.len());
        }
        if left > 0 {
            self.mux.core.lock().datagram_taken(left);
        }
    }
}

impl DatagramReceiver {
    pub(super) fn new(mux: Arc<Shared>) -> (DatagramSender, DatagramReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, DatagramReceiver { rx, mux })
    }

    /// The next datagram, or `None` once the association (or mux) is gone.
    pub async fn recv(&mut self) -> Option<(u32, Bytes)> {
        let got = self.rx.recv().await?;
        self.mux
            .core
            .lock()
            .datagram_taken(super::core::cost(got.1.len()));
        Some(got)
    }
}

/// One tunnel stream, for its user (a bridge to a socket).
pub struct MuxStream {
    id: u32,
    /// Tells this stream from a later one under the same id.
    serial: u64,
    inbound: Arc<Arrivals>,
    credit: Arc<Notify>,
    mux: Arc<Shared>,
    fin_sent: bool,
    fin_received: bool,
    /// Reset by either side.
    reset: bool,
    /// DATA taken since the mux was last told (with [`MuxStream::consumed`]).
    taken: usize,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

impl MuxStream {
    /// A stream to be registered under `id`: the port goes to the core, the
    /// rest (once the core has given the serial) to [`MuxStream::new`].
    pub(super) fn port() -> (StreamPort, Arc<Arrivals>, Arc<Notify>) {
        let arrivals = Arc::new(Arrivals::default());
        let credit = Arc::new(Notify::new());
        let port = StreamPort {
            arrivals: arrivals.clone(),
            credit: credit.clone(),
        };
        (port, arrivals, credit)
    }

    pub(super) fn new(
        id: u32,
        serial: u64,
        inbound: Arc<Arrivals>,
        credit: Arc<Notify>,
        mux: Arc<Shared>,
    ) -> MuxStream {
        MuxStream {
            id,
            serial,
            inbound,
            credit,
            mux,
            fin_sent: false,
            fin_received: false,
            reset: false,
            taken: 0,
        }
    }

    /// The stream's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Bytes this side may send now; `None` once the stream is gone (reset,
    /// finished both ways, or the mux ended).
    pub fn credit(&self) -> Option<u32> {
        self.mux.core.lock().credit(self.id, self.serial)
    }

    /// A signal that fires when credit arrives, usable while the stream is
    /// borrowed elsewhere (say, in another branch of a `select!`).
    pub fn credit_signal(&self) -> CreditSignal {
        CreditSignal {
            id: self.id,
            serial: self.serial,
            credit: self.credit.clone(),
            mux: self.mux.clone(),
        }
    }

    /// Sends data: at most the credit (see [`MuxStream::credit`]) and at most
    /// one DATA frame's 64 KiB; anything else is refused, and the link and
    /// the stream go on.
    pub fn send(&mut self, payload: Bytes) -> Result<(), SendError> {
        let sent = self
            .mux
            .core
            .lock()
            .send_data(self.id, self.serial, payload);
        if sent.is_ok() {
            self.mux.wake.notify_one();
        }
        sent
    }

    /// Tells the peer this side will send no more.
    pub fn send_fin(&mut self) {
        if self.reset || self.fin_sent {
            return;
        }
        self.fin_sent = true;
        self.mux.core.lock().send_fin(self.id, self.serial);
        self.mux.wake.notify_one();
    }

    /// The next thing the peer sent. After the peer's FIN only a reset can
    /// come; once the mux has forgotten a finished stream, nothing comes.
    /// A reset (the peer's, or the mux's own when the peer broke the
    /// stream's rules or the link's inbound budget needed its bytes) drops
    /// what arrived before it and was not taken yet, as a TCP reset does.
    /// As in TCP, the bytes keep their order but not the frames they came
    /// in: small payloads that waited together come as one.
    pub async fn recv(&mut self) -> Inbound {
        let next = match self.inbound.pop().await {
            Some(next) => next,
            None if self.fin_received => std::future::pending().await,
            None => (Inbound::Reset, 0),
        };
        self.note(next)
    }

    /// What the peer sent that is here already, without waiting.
    pub fn try_recv(&mut self) -> Option<Inbound> {
        let next = match self.inbound.try_pop() {
            Ok(next) => next,
            Err(false) => return None,
            Err(true) if self.fin_received => return None,
            Err(true) => (Inbound::Reset, 0),
        };
        Some(self.note(next))
    }

    /// Takes note of an arrival and the DATA frames it stands for.
    fn note(&mut self, (inbound, frames): (Inbound, usize)) -> Inbound {
        match inbound {
            Inbound::Reset => self.reset = true,
            Inbound::Fin => self.fin_received = true,
            Inbound::Data(_) => self.taken += frames,
        }
        inbound
    }

    /// Records that `n` received bytes were written out; the peer is granted
    /// more credit as the window's halves are used (see the module docs).
    pub fn consumed(&mut self, n: usize) {
        let taken = std::mem::take(&mut self.taken);
        let due = self
            .mux
            .core
            .lock()
            .consumed(self.id, self.serial, n, taken);
        if due {
            self.mux.wake.notify_one();
        }
    }

    /// Whether both directions finished cleanly.
    pub fn finished(&self) -> bool {
        self.fin_sent && self.fin_received
    }

    /// Aborts the stream. After FIN both ways it only lets go of what the
    /// mux still holds for it (nothing goes to the peer).
    pub fn reset(&mut self) {
        if self.reset {
            return;
        }
        self.reset = true;
        if self.mux.core.lock().reset(self.id, self.serial) {
            self.mux.wake.notify_one();
        }
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        // A stream dropped before both FINs were exchanged is aborted; one
        // dropped after them lets go of what the mux still holds for it.
        self.reset();
    }
}

/// See [`MuxStream::credit_signal`].
pub struct CreditSignal {
    id: u32,
    serial: u64,
    credit: Arc<Notify>,
    mux: Arc<Shared>,
}

impl CreditSignal {
    /// Waits until there is credit to send, or the stream or mux is gone.
    pub async fn wait(&self) {
        // Each pass waits for a WINDOW or a reset; bounded by the stream.
        loop {
            let credit = self.mux.core.lock().credit(self.id, self.serial);
            if credit != Some(0) {
                return;
            }
            self.credit.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Inbound {
        Inbound::Data(Bytes::from(vec![7; n]))
    }

    #[test]
    fn a_discard_lets_go_of_what_was_not_taken_at_once() {
        let (port, arrivals, _credit) = MuxStream::port();
        let payload = Bytes::from(vec![1u8; GATHER_BELOW]);
        port.deliver(Inbound::Data(payload.clone()));
        port.deliver(data(5));
        port.deliver(data(5));
        assert!(!payload.is_unique(), "held in the queue");
        let taken = port.discard().expect("something held");
        assert_eq!(taken._items.len(), 2, "handed to the caller to drop");
        drop(taken);
        assert!(payload.is_unique(), "let go, nobody having looked");
        assert!(port.discard().is_none(), "nothing left");
        port.deliver(Inbound::Reset);
        assert!(matches!(arrivals.try_pop(), Ok((Inbound::Reset, 0))));
        assert!(matches!(arrivals.try_pop(), Err(false)), "open, empty");
        drop(port);
        assert!(matches!(arrivals.try_pop(), Err(true)), "closed");
    }

    /// Every arrival in order, the DATA frames each stands for.
    fn drain(arrivals: &Arrivals) -> Vec<(Inbound, usize)> {
        std::iter::from_fn(|| arrivals.try_pop().ok()).collect()
    }

    #[test]
    fn tiny_payloads_waiting_are_gathered_in_order() {
        let (port, arrivals, _credit) = MuxStream::port();
        const FRAMES: usize = 200_000;
        for i in 0..FRAMES {
            port.deliver(Inbound::Data(Bytes::from(vec![i as u8])));
        }
        let big = Bytes::from(vec![9; GATHER_BELOW]);
        port.deliver(Inbound::Data(big.clone()));
        port.deliver(data(3));
        port.deliver(Inbound::Fin);
        {
            let queue = arrivals.queue.lock();
            let room: usize = queue
                .items
                .iter()
                .map(|item| match item {
                    Item::Gathered(bytes, _) => bytes.capacity(),
                    Item::Arrived(_) => 0,
                })
                .sum();
            assert!(room <= 2 * FRAMES, "{room} bytes held for {FRAMES}");
            assert!(queue.items.len() <= 2 * FRAMES / GATHER_MOST + 4);
        }
        let got = drain(&arrivals);
        let frames: usize = got.iter().map(|(_, frames)| frames).sum();
        assert_eq!(frames, FRAMES + 2, "every DATA frame counted once");
        let mut bytes = Vec::new();
        for (inbound, _) in &got[..got.len() - 3] {
            let Inbound::Data(d) = inbound else {
                panic!("only data before the large payload");
            };
            assert!(d.len() <= GATHER_MOST);
            bytes.extend_from_slice(d);
        }
        let sent: Vec<u8> = (0..FRAMES).map(|i| i as u8).collect();
        assert!(bytes == sent, "the tiny payloads, in order");
        assert!(
            matches!(&got[got.len() - 3], (Inbound::Data(d), 1) if *d == big),
            "large ones as they came"
        );
        assert!(matches!(&got[got.len() - 2], (Inbound::Data(d), 1) if d.len() == 3));
        assert!(matches!(got[got.len() - 1], (Inbound::Fin, 0)));
    }

    /// Payload sizes chosen to land a buffer just past a power of two
    /// cannot make it hold much more than its bytes: growth stops at the
    /// most a buffer holds, and one taken before it filled goes on at its
    /// size.
    #[test]
    fn gathered_buffers_hold_little_beyond_their_bytes() {
        let (port, arrivals, _credit) = MuxStream::port();
        let mut sizes = vec![GATHER_BELOW - 1; 16];
        sizes.push(16);
        for _ in 0..4 {
            for &n in &sizes {
                port.deliver(data(n));
            }
        }
        {
            let queue = arrivals.queue.lock();
            for item in &queue.items {
                if let Item::Gathered(bytes, _) = item {
                    assert!(bytes.capacity() <= GATHER_MOST, "{}", bytes.capacity());
                    if bytes.len() + GATHER_BELOW > GATHER_MOST {
                        assert!(
                            bytes.capacity() - bytes.len() < GATHER_BELOW,
                            "a full buffer"
                        );
                    }
                }
            }
        }
        let total: usize = drain(&arrivals)
            .iter()
            .map(|(inbound, _)| match inbound {
                Inbound::Data(d) => d.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, 4 * sizes.iter().sum::<usize>());
        // Taken before it filled up: it goes on at its size.
        port.deliver(data(1000));
        port.deliver(data(1000));
        let Ok((Inbound::Data(taken), 2)) = arrivals.try_pop() else {
            panic!("gathered");
        };
        let taken = taken.try_into_mut().expect("nobody else holds it");
        assert_eq!((taken.len(), taken.capacity()), (2000, 2000));
    }

    #[test]
    fn a_drained_queue_keeps_no_room_for_a_flood() {
        let (port, arrivals, _credit) = MuxStream::port();
        // (Payloads too large to gather, shared: no memory of their own.)
        let big = Bytes::from(vec![0; GATHER_BELOW]);
        for _ in 0..100_000 {
            port.deliver(Inbound::Data(big.clone()));
        }
        assert_eq!(drain(&arrivals).len(), 100_000);
        assert!(arrivals.queue.lock().items.capacity() <= SHRINK_ABOVE);
    }

    #[tokio::test]
    async fn arrivals_come_in_order_and_a_close_ends_the_wait() {
        let (port, arrivals, _credit) = MuxStream::port();
        // Delivered before anyone waits: kept, not lost.
        port.deliver(data(1));
        port.deliver(Inbound::Fin);
        assert!(matches!(arrivals.pop().await, Some((Inbound::Data(d), 1)) if d.len() == 1));
        assert!(matches!(arrivals.pop().await, Some((Inbound::Fin, 0))));
        let waiter = tokio::spawn({
            let arrivals = arrivals.clone();
            async move { arrivals.pop().await.is_none() }
        });
        tokio::task::yield_now().await;
        drop(port);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .expect("the close ends the wait")
            .expect("joined");
        assert!(ended);
    }
}
