//! A link-cutting TCP proxy, for demos, tests and benchmarks.
//!
//! It forwards every connection it accepts to a target and breaks them on
//! command ([`CutProxy::cut_all`]) or by plan ([`Plan`]): after a random
//! number of forwarded bytes, counted over both directions, it cuts the
//! connection that carried the last byte, exactly at that byte. A cut is
//!
//! - a **reset**: both sockets are closed with RST, mid-stream; or
//! - a **silent drop**: forwarding stops in both directions and both sockets
//!   stay open, like a phone that left the network without a FIN or RST. The
//!   endpoints must notice on their own.
//!
//! Its sockets use small buffers, so it holds little in flight itself.

use std::io;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How a connection is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutKind {
    /// Close both sockets with RST.
    Reset,
    /// Stop forwarding; keep both sockets open.
    Silent,
}

/// When the proxy cuts by itself.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Forwarded bytes (both directions together) between two cuts, drawn
    /// uniformly from this range.
    pub every: RangeInclusive<u64>,
    /// The share of cuts that are silent drops (0 to 1).
    pub silent: f64,
    /// Seed of the random draws.
    pub seed: u64,
}

/// How the proxy is set up.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `SO_SNDBUF`/`SO_RCVBUF` of its sockets. Default 32 KiB.
    pub socket_buffer: usize,
    /// Bytes copied per read. Default 16 KiB.
    pub chunk: usize,
    /// Cutting by plan; `None` cuts only on command.
    pub plan: Option<Plan>,
    /// How long silently dropped connections are held open. Default 120 s.
    pub silent_hold: Duration,
    /// Bytes a second each direction of a connection may carry, like a slow
    /// link; `None` forwards as fast as the sockets go. Default `None`.
    pub rate: Option<u64>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            socket_buffer: 32 << 10,
            chunk: 16 << 10,
            plan: None,
            silent_hold: Duration::from_secs(120),
            rate: None,
        }
    }
}

/// What the proxy did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted.
    pub connections: u64,
    /// Bytes forwarded, both directions.
    pub forwarded: u64,
    /// Connections reset.
    pub resets: u64,
    /// Connections silently dropped.
    pub silent_drops: u64,
}

impl ProxyStats {
    /// Resets and silent drops together.
    pub fn cuts(&self) -> u64 {
        self.resets + self.silent_drops
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Cut(CutKind),
}

struct PlanState {
    plan: Plan,
    rng: StdRng,
    next_cut: u64,
}

impl PlanState {
    fn new(plan: Plan, now: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(plan.seed);
        let next_cut = now + rng.random_range(plan.every.clone());
        PlanState {
            plan,
            rng,
            next_cut,
        }
    }

    fn kind(&mut self) -> CutKind {
        if self.rng.random_bool(self.plan.silent.clamp(0.0, 1.0)) {
            CutKind::Silent
        } else {
            CutKind::Reset
        }
    }
}

struct Shared {
    config: ProxyConfig,
    plan: Mutex<Option<PlanState>>,
    forwarded: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
    silent: AtomicU64,
    live: Mutex<Vec<watch::Sender<Mode>>>,
}

impl Shared {
    /// Accounts for up to `n` bytes about to be forwarded; returns how many
    /// may go before a planned cut, and the cut if one falls inside.
    fn budget(&self, n: usize) -> (usize, Option<CutKind>) {
        let mut plan = self.plan.lock();
        let done = self.forwarded.load(Ordering::Relaxed);
        let Some(state) = plan.as_mut() else {
            self.forwarded.fetch_add(n as u64, Ordering::Relaxed);
            return (n, None);
        };
        let room = state.next_cut.saturating_sub(done);
        if (n as u64) < room {
            self.forwarded.fetch_add(n as u64, Ordering::Relaxed);
            return (n, None);
        }
        let allowed = room as usize;
        self.forwarded.fetch_add(room, Ordering::Relaxed);
        let kind = state.kind();
        state.next_cut = done + room + state.rng.random_range(state.plan.every.clone());
        (allowed, Some(kind))
    }

    fn count(&self, kind: CutKind) {
        match kind {
            CutKind::Reset => self.resets.fetch_add(1, Ordering::Relaxed),
            CutKind::Silent => self.silent.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// A running proxy; dropping it stops accepting (live connections end when
/// their endpoints close them).
pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn socket_for(addr: SocketAddr, buffer: usize) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_send_buffer_size(buffer as u32)?;
    socket.set_recv_buffer_size(buffer as u32)?;
    Ok(socket)
}

impl CutProxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `target`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        config: ProxyConfig,
    ) -> io::Result<CutProxy> {
        let socket = socket_for(listen, config.socket_buffer)?;
        socket.set_reuseaddr(true)?;
        socket.bind(listen)?;
        let listener: TcpListener = socket.listen(1024)?;
        let addr = listener.local_addr()?;
        let plan = config.plan.clone().map(|p| PlanState::new(p, 0));
        let shared = Arc::new(Shared {
            config,
            plan: Mutex::new(plan),
            forwarded: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            silent: AtomicU64::new(0),
            live: Mutex::new(Vec::new()),
        });
        let accept = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = accept.clone();
                tokio::spawn(async move {
                    if let Ok(server) = connect(target, shared.config.socket_buffer).await {
                        relay(client, server, shared).await;
                    }
                });
            }
        });
        Ok(CutProxy { addr, shared, task })
    }

    /// The address clients should connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts every live connection now; returns how many.
    pub fn cut_all(&self, kind: CutKind) -> usize {
        let mut live = self.shared.live.lock();
        live.retain(|tx| !tx.is_closed());
        let mut n = 0;
        for tx in live.iter() {
            if *tx.borrow() == Mode::Forward {
                let _ = tx.send(Mode::Cut(kind));
                self.shared.count(kind);
                n += 1;
            }
        }
        n
    }

    /// Replaces the cutting plan.
    pub fn set_plan(&self, plan: Option<Plan>) {
        let now = self.shared.forwarded.load(Ordering::Relaxed);
        *self.shared.plan.lock() = plan.map(|p| PlanState::new(p, now));
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        ProxyStats {
            connections: s.connections.load(Ordering::Relaxed),
            forwarded: s.forwarded.load(Ordering::Relaxed),
            resets: s.resets.load(Ordering::Relaxed),
            silent_drops: s.silent.load(Ordering::Relaxed),
        }
    }
}

async fn connect(target: SocketAddr, buffer: usize) -> io::Result<TcpStream> {
    socket_for(target, buffer)?.connect(target).await
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    for s in [&client, &server] {
        let _ = s.set_nodelay(true);
        // Closing sends RST, so dropping the sockets is a reset; an orderly
        // end is passed on with shutdown, which still sends FIN.
        let _ = s.set_zero_linger();
    }
    let (mode_tx, mut mode_rx) = watch::channel(Mode::Forward);
    let mode_tx = Arc::new(mode_tx);
    shared.live.lock().push((*mode_tx).clone());
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut up = Box::pin(forward(cr, sw, shared.clone(), mode_tx.clone()));
    let mut down = Box::pin(forward(sr, cw, shared.clone(), mode_tx.clone()));
    let (mut up_done, mut down_done) = (None, None);
    loop {
        tokio::select! {
            halves = &mut up, if up_done.is_none() => up_done = Some(halves),
            halves = &mut down, if down_done.is_none() => down_done = Some(halves),
            changed = mode_rx.changed() => {
                if changed.is_err() { return; }
            }
        }
        match *mode_rx.borrow() {
            Mode::Cut(CutKind::Reset) => return, // dropping everything sends RST
            Mode::Cut(CutKind::Silent) => break,
            Mode::Forward => {}
        }
        if up_done.is_some() && down_done.is_some() {
            return;
        }
    }
    // Silent: hold the sockets (the futures own them) without polling them.
    tokio::time::sleep(shared.config.silent_hold).await;
    drop((up, down));
}

/// Copies one direction until EOF, an error or a cut; returns the halves so
/// they stay open until the relay lets them go.
async fn forward(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Arc<Shared>,
    mode: Arc<watch::Sender<Mode>>,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut buf = vec![0u8; shared.config.chunk];
    // When the bytes forwarded so far may have gone, at `rate`.
    let mut due = tokio::time::Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return (from, to);
            }
            Ok(n) => n,
        };
        if *mode.borrow() != Mode::Forward {
            return (from, to);
        }
        let (allowed, cut) = shared.budget(n);
        if to.write_all(&buf[..allowed]).await.is_err() {
            return (from, to);
        }
        if let Some(rate) = shared.config.rate.filter(|r| *r > 0) {
            let now = tokio::time::Instant::now();
            due = due.max(now) + Duration::from_secs_f64(allowed as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        if let Some(kind) = cut {
            if *mode.borrow() == Mode::Forward {
                shared.count(kind);
                let _ = mode.send(Mode::Cut(kind));
            }
            return (from, to);
        }
    }
}
