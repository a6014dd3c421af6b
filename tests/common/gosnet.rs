//! A model of how a Go snet peer resumes, built from the wire facts in
//! `snet-wire.md` and `PROTOCOL.md` §1 (no Go code): sans-IO, so the
//! cut-anywhere simulation drives it byte by byte and a small driver runs it
//! over real sockets.
//!
//! What it does the way the Go library does:
//!
//! - A write is encrypted, kept in a ring of the last `buffer` bytes and
//!   counted at once, then handed to the connection; the next write waits
//!   until the connection took all of it.
//! - A reconnect sends (write count, read count); each side then resends the
//!   last (own write count − peer read count) bytes of the ring and reads the
//!   peer's resend, (peer write count − own read count) bytes, **whole or not
//!   at all**: a resend cut short is thrown away and the reconnect starts
//!   over. A resend read whole is queued and handed to the application before
//!   anything read later from the connection.
//!   A resend read whole is queued at once, even if the reconnect then fails
//!   because its own resend could not go out.
//! - With `stock` it has the released library's bugs, which differ by
//!   version (both read from its sources):
//!   - v2 (the head): its read count is the bytes handed to the application,
//!     so a queued resend counts only as the application reads it, and it
//!     reads the peer's resend from that count too;
//!   - v1 (the last commit before the type byte): it reports bytes received,
//!     but reads the peer's resend from the bytes handed to its application:
//!     with part of an earlier resend still queued it waits for that many
//!     bytes past the resend ([`GoStats::v1_wait`]), which only data written
//!     after the resend can bring;
//!   - both: a client retries a failed reconnect with the counts of its
//!     first attempt.
//!
//!   A reconnect asking for bytes it already holds queues them twice; the
//!   model counts when that happens ([`GoStats::own_bug`]). Without `stock`
//!   it is the library fixed to count bytes received, each request carrying
//!   the current counts.
//! - Refusals: v2 24 zero bytes, v1 a close; a client refused by a v2 server,
//!   or whose counts cannot be resumed, ends its session. (The library's
//!   client retries forever; the model gives up after three closes in a row
//!   so that a schedule ends.)

#![allow(dead_code)]

use std::collections::VecDeque;

use bytes::BytesMut;
use rejoin::proto::auth;
use rejoin::proto::cipher::{Ciphers, client_ciphers, server_ciphers};
use rejoin::proto::history::History;
use rejoin::proto::message::Answer;
use rejoin::proto::{
    ClientHandshake, ClientHello, Incoming, Key, Params, ReconnectRequest, ResumeReply,
    ServerHandshake, Version,
};

/// How the modelled peer is set up.
#[derive(Debug, Clone, Copy)]
pub struct GoConfig {
    pub version: Version,
    pub encrypt: bool,
    /// `RewriterBufferSize`: how many sent bytes it keeps.
    pub buffer: usize,
    /// The stock head's count bugs (see the module's documentation).
    pub stock: bool,
}

impl GoConfig {
    fn params(&self) -> Params {
        Params {
            version: self.version,
            encrypt: self.encrypt,
            history: self.buffer,
            in_flight: self.buffer / 2,
            unsent_limit: None,
        }
    }
}

/// Which end the model plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// The established session's state.
struct Core {
    key: Key,
    id: u64,
    ciphers: Ciphers,
    ring: History,
    write_count: u64,
    read_count: u64,
    /// Resends read whole, not yet handed to the application (ciphertext).
    queue: VecDeque<u8>,
}

enum Phase {
    /// No connection: a client waits to be given a new one, a server for
    /// the client to come back.
    Down,
    NewClient(ClientHandshake),
    Hello(ServerHandshake),
    AwaitReply,
    AwaitAnswer {
        expected: auth::Tag,
        peer_write: u64,
        peer_read: u64,
    },
    /// Resending and reading the peer's resend, both at once. `read` once
    /// the peer's resend is read whole (and queued).
    Resending {
        need: usize,
        got: Vec<u8>,
        rewrite: usize,
        read: bool,
    },
    Up,
}

/// What the model counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct GoStats {
    pub resumes: u64,
    /// Bytes the model read as resends, and resent.
    pub reread: u64,
    pub rewritten: u64,
    /// Resend reads cut short and thrown away.
    pub rereads_lost: u64,
    /// Reconnects (with `stock`) whose read count was below what it holds:
    /// each makes it queue bytes twice.
    pub own_bug: u64,
    /// Resends (stock v1) it read past their end, waiting for data written
    /// after them.
    pub v1_wait: u64,
}

/// One modelled Go snet peer.
pub struct GoPeer {
    cfg: GoConfig,
    role: Role,
    phase: Phase,
    core: Option<Core>,
    /// Bytes on their way to the connection (a write in progress, a
    /// handshake message, a resend).
    out: VecDeque<u8>,
    input: BytesMut,
    /// Plaintext handed to the application, not yet taken by the caller.
    pub delivered: Vec<u8>,
    /// Why the session ended, if it did.
    pub failed: Option<String>,
    pub stats: GoStats,
    /// v1 closes before a reply, in a row (a v1 refusal is a close).
    closes: u32,
    /// `stock` client: the counts of the first attempt of this reconnect.
    frozen: Option<(u64, u64)>,
    /// Bytes received in all (what a correct read count would say).
    received: u64,
    /// Stock v1: the resend read in progress goes on past the resend.
    reading_on: bool,
    next_id: u64,
}

impl GoPeer {
    pub fn new(cfg: GoConfig, role: Role) -> Self {
        GoPeer {
            cfg,
            role,
            phase: Phase::Down,
            core: None,
            out: VecDeque::new(),
            input: BytesMut::new(),
            delivered: Vec::new(),
            failed: None,
            stats: GoStats::default(),
            closes: 0,
            frozen: None,
            received: 0,
            reading_on: false,
            next_id: 1,
        }
    }

    /// Whether the session is established and a connection carries it.
    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up)
    }

    /// While reading the peer's resend: (bytes read, bytes it needs).
    pub fn resend_progress(&self) -> Option<(usize, usize)> {
        match &self.phase {
            Phase::Resending {
                need,
                got,
                read: false,
                ..
            } => Some((got.len(), *need)),
            _ => None,
        }
    }

    /// Stock v1: whether it is reading on past a resend, for bytes the peer
    /// writes after it.
    pub fn reading_past_resend(&self) -> bool {
        self.reading_on && self.resend_progress().is_some()
    }

    /// Whether a resend it read waits for its application.
    pub fn has_queued(&self) -> bool {
        self.core.as_ref().is_some_and(|c| !c.queue.is_empty())
    }

    /// Stock v2: the read count is what the application took.
    fn counts_delivered(&self) -> bool {
        self.cfg.stock && self.cfg.version == Version::V2
    }

    /// Whether it has no use for its connection (a server that refused or
    /// closed one).
    pub fn is_down(&self) -> bool {
        matches!(self.phase, Phase::Down)
    }

    fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
        self.phase = Phase::Down;
        self.out.clear();
    }

    /// A new connection: a client dials (a new session or a reconnect), a
    /// server accepts.
    pub fn attach(&mut self, rng: &mut impl rand::CryptoRng) {
        self.out.clear();
        self.input.clear();
        if self.failed.is_some() {
            return;
        }
        match self.role {
            Role::Server => {
                self.phase = Phase::Hello(ServerHandshake::new(self.cfg.params(), self.next_id));
                self.next_id += 1;
            }
            Role::Client => match &self.core {
                None => {
                    let mut hs = ClientHandshake::new(self.cfg.params(), false, rng);
                    if let Some(t) = hs.poll_transmit() {
                        self.out.extend(&t[..]);
                    }
                    self.phase = Phase::NewClient(hs);
                }
                Some(core) => {
                    let current = (core.write_count, core.read_count);
                    let (write, read) = if self.cfg.stock {
                        *self.frozen.get_or_insert(current)
                    } else {
                        current
                    };
                    if read < self.received {
                        self.stats.own_bug += 1;
                    }
                    let request = ReconnectRequest {
                        id: core.id,
                        write_count: write,
                        read_count: read,
                        tag: auth::reconnect_tag(core.id, write, read, &core.key),
                    };
                    let mut buf = BytesMut::new();
                    ClientHello::Reconnect(request).encode(self.cfg.version, &mut buf);
                    self.out.extend(&buf[..]);
                    self.phase = Phase::AwaitReply;
                }
            },
        }
    }

    /// The connection broke (or the peer closed it). A partial resend read
    /// is thrown away; a write in progress waits for the next connection.
    pub fn detach(&mut self, closed_by_peer: bool) {
        if matches!(self.phase, Phase::Resending { read: false, .. }) {
            self.stats.rereads_lost += 1;
        }
        if closed_by_peer && matches!(self.phase, Phase::AwaitReply) {
            self.closes += 1;
            if self.closes >= 3 {
                let why = match self.cfg.version {
                    Version::V1 => "v1 server closed three reconnects before replying",
                    Version::V2 => "server closed three reconnects before replying",
                };
                return self.fail(why.into());
            }
        }
        self.phase = Phase::Down;
        self.out.clear();
        self.input.clear();
    }

    /// Whether the application may write now (no write in progress).
    pub fn can_write(&self) -> bool {
        self.is_up() && self.out.is_empty()
    }

    /// The application writes `data` (only when [`GoPeer::can_write`]).
    pub fn write(&mut self, data: &[u8]) {
        assert!(self.can_write());
        let core = self.core.as_mut().expect("up means a session");
        let mut buf = data.to_vec();
        core.ciphers.write.apply(&mut buf);
        let mut at = 0;
        core.ring.append_with(buf.len(), |piece| {
            piece.copy_from_slice(&buf[at..at + piece.len()]);
            at += piece.len();
        });
        core.write_count += buf.len() as u64;
        self.out.extend(&buf);
    }

    /// Up to `max` bytes for the connection.
    pub fn transmit(&mut self, max: usize) -> Vec<u8> {
        let n = max.min(self.out.len());
        let bytes: Vec<u8> = self.out.drain(..n).collect();
        if let Phase::Resending { rewrite, .. } = &mut self.phase {
            *rewrite = rewrite.saturating_sub(n);
        }
        self.settle();
        bytes
    }

    /// Bytes still waiting to go out.
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Takes what it wants now of `avail`, the bytes waiting on the
    /// connection, and returns how many it took. `app` is how much its
    /// application reads at once when the session is up.
    pub fn receive(&mut self, avail: &[u8], app: usize, rng: &mut impl rand::CryptoRng) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        match &mut self.phase {
            Phase::Down => 0,
            Phase::Up => self.app_read(avail, app.max(1)),
            Phase::Resending {
                need,
                got,
                read: false,
                ..
            } => {
                let n = avail.len().min(*need - got.len());
                got.extend_from_slice(&avail[..n]);
                self.settle();
                n
            }
            // Read whole; nothing more is read before our resend is out.
            Phase::Resending { read: true, .. } => 0,
            _ => {
                // Messages are read exactly, as io.ReadFull does: a byte at
                // a time until the message is whole.
                let mut taken = 0;
                while taken < avail.len() && self.in_message() {
                    self.input.extend_from_slice(&avail[taken..taken + 1]);
                    taken += 1;
                    self.step(rng);
                }
                taken
            }
        }
    }

    fn in_message(&self) -> bool {
        matches!(
            self.phase,
            Phase::NewClient(_) | Phase::Hello(_) | Phase::AwaitReply | Phase::AwaitAnswer { .. }
        )
    }

    /// Go's Read: the queued resend first, then the connection.
    fn app_read(&mut self, avail: &[u8], max: usize) -> usize {
        let counts_delivered = self.counts_delivered();
        let core = self.core.as_mut().expect("up means a session");
        let (mut buf, taken) = if !core.queue.is_empty() {
            let n = max.min(core.queue.len());
            let buf: Vec<u8> = core.queue.drain(..n).collect();
            if counts_delivered {
                core.read_count += n as u64;
            }
            (buf, 0)
        } else {
            let n = max.min(avail.len());
            core.read_count += n as u64;
            self.received += n as u64;
            (avail[..n].to_vec(), n)
        };
        core.ciphers.read.apply(&mut buf);
        self.delivered.extend_from_slice(&buf);
        taken
    }

    /// Queues the peer's resend as soon as it is read whole (as the
    /// library's reading goroutine does), and finishes the reconnect once
    /// our own resend has gone out too.
    fn settle(&mut self) {
        let counts_delivered = self.counts_delivered();
        let Phase::Resending {
            need,
            got,
            rewrite,
            read,
        } = &mut self.phase
        else {
            return;
        };
        if !*read && got.len() == *need {
            *read = true;
            let got = std::mem::take(got);
            let core = self.core.as_mut().expect("resending means a session");
            if !counts_delivered {
                core.read_count += got.len() as u64;
            }
            self.received += got.len() as u64;
            core.queue.extend(got);
        }
        if !*read || *rewrite > 0 {
            return;
        }
        self.stats.resumes += 1;
        self.closes = 0;
        self.frozen = None;
        self.phase = Phase::Up;
    }

    fn step(&mut self, rng: &mut impl rand::CryptoRng) {
        let version = self.cfg.version;
        match &mut self.phase {
            Phase::NewClient(hs) => {
                if let Err(e) = hs.handle_input(&mut self.input) {
                    return self.fail(format!("handshake: {e}"));
                }
                if let Some(t) = hs.poll_transmit() {
                    self.out.extend(&t[..]);
                }
                if let Some(session) = hs.poll_outcome() {
                    let (_, encrypted) =
                        server_ciphers(session.key(), self.cfg.encrypt, session.id());
                    let (ciphers, id) = client_ciphers(session.key(), self.cfg.encrypt, encrypted);
                    self.core = Some(self.core_for(*session.key(), id, ciphers));
                    self.phase = Phase::Up;
                }
            }
            Phase::Hello(hs) => {
                if hs.handle_input(&mut self.input, rng).is_err() {
                    return self.detach(false);
                }
                if let Some(t) = hs.poll_transmit() {
                    self.out.extend(&t[..]);
                }
                match hs.poll_outcome() {
                    None => {}
                    Some(Incoming::Session(session)) => {
                        let (ciphers, _) =
                            server_ciphers(session.key(), self.cfg.encrypt, session.id());
                        self.core = Some(self.core_for(*session.key(), session.id(), ciphers));
                        self.phase = Phase::Up;
                    }
                    Some(Incoming::Reconnect(req)) => self.server_reconnect(req, rng),
                }
            }
            Phase::AwaitReply => {
                let Ok(Some(reply)) = ResumeReply::decode(version, &mut self.input) else {
                    return;
                };
                let ResumeReply::Accept {
                    write_count: peer_write,
                    read_count: peer_read,
                    challenge,
                } = reply
                else {
                    return self.fail("reconnect refused by the server".into());
                };
                let core = self.core.as_ref().expect("reconnect means a session");
                if let Some(c) = challenge {
                    let mut buf = BytesMut::new();
                    Answer(auth::answer(&c, &core.key)).encode(&mut buf);
                    self.out.extend(&buf[..]);
                }
                if let Err(why) = self.check(peer_write, peer_read) {
                    return self.fail(why);
                }
                self.start_resend(peer_write, peer_read);
            }
            Phase::AwaitAnswer {
                expected,
                peer_write,
                peer_read,
            } => {
                let (expected, w, r) = (*expected, *peer_write, *peer_read);
                let Ok(Some(Answer(got))) = Answer::decode(&mut self.input) else {
                    return;
                };
                if !auth::tags_equal(&expected, &got) {
                    return self.detach(false);
                }
                self.start_resend(w, r);
            }
            _ => {}
        }
    }

    fn core_for(&self, key: Key, id: u64, ciphers: Ciphers) -> Core {
        Core {
            key,
            id,
            ciphers,
            ring: History::new(self.cfg.buffer),
            write_count: 0,
            read_count: 0,
            queue: VecDeque::new(),
        }
    }

    /// The count checks both ends of the Go library make.
    fn check(&self, peer_write: u64, peer_read: u64) -> Result<(), String> {
        let core = self.core.as_ref().expect("reconnect means a session");
        if peer_write < core.read_count {
            return Err(format!(
                "peer write count {peer_write} below our read count {}",
                core.read_count
            ));
        }
        if core.write_count < peer_read {
            return Err(format!(
                "peer read count {peer_read} above our write count {}",
                core.write_count
            ));
        }
        if core.write_count - peer_read > self.cfg.buffer as u64 {
            return Err(format!(
                "cannot resend {} bytes from a {}-byte buffer",
                core.write_count - peer_read,
                self.cfg.buffer
            ));
        }
        Ok(())
    }

    fn server_reconnect(&mut self, req: ReconnectRequest, rng: &mut impl rand::CryptoRng) {
        let Some(core) = &self.core else {
            return self.detach(false);
        };
        let tag = auth::reconnect_tag(req.id, req.write_count, req.read_count, &core.key);
        if req.id != core.id || !auth::tags_equal(&tag, &req.tag) {
            return self.detach(false);
        }
        let (write, read) = (core.write_count, core.read_count);
        if read < self.received {
            self.stats.own_bug += 1;
        }
        if self.check(req.write_count, req.read_count).is_err() {
            let mut buf = BytesMut::new();
            ResumeReply::Refuse.encode(self.cfg.version, &mut buf);
            self.out.extend(&buf[..]);
            self.phase = Phase::Down;
            return;
        }
        let challenge = (self.cfg.version == Version::V2).then(|| {
            let mut c = [0u8; 8];
            rng.fill_bytes(&mut c);
            c[0] |= 1;
            c
        });
        let mut buf = BytesMut::new();
        ResumeReply::Accept {
            write_count: write,
            read_count: read,
            challenge,
        }
        .encode(self.cfg.version, &mut buf);
        self.out.extend(&buf[..]);
        match challenge {
            Some(c) => {
                self.phase = Phase::AwaitAnswer {
                    expected: auth::answer(&c, &core.key),
                    peer_write: req.write_count,
                    peer_read: req.read_count,
                }
            }
            None => self.start_resend(req.write_count, req.read_count),
        }
    }

    /// Both resends at once: ours from the peer's read count, theirs read
    /// whole into a buffer.
    fn start_resend(&mut self, peer_write: u64, peer_read: u64) {
        let core = self.core.as_ref().expect("resend means a session");
        if std::env::var_os("GOSNET_TRACE").is_some() {
            eprintln!(
                "model {:?}: ours wc {} rc {} queue {}; peer wc {peer_write} rc {peer_read}",
                self.role,
                core.write_count,
                core.read_count,
                core.queue.len()
            );
        }
        // Stock v1 reads from what its application took, not from the count
        // it reported.
        let from = if self.cfg.stock && self.cfg.version == Version::V1 {
            core.read_count - core.queue.len() as u64
        } else {
            core.read_count
        };
        let need = (peer_write - from) as usize;
        self.reading_on = from < core.read_count;
        if self.reading_on {
            self.stats.v1_wait += 1;
        }
        let (a, b) = core
            .ring
            .slices_from(peer_read)
            .expect("checked: the ring holds it");
        let rewrite = a.len() + b.len();
        self.out.extend(a);
        self.out.extend(b);
        self.stats.reread += need as u64;
        self.stats.rewritten += rewrite as u64;
        // The rewrite counts as done once the reply and it have gone out.
        let rewrite = self.out.len();
        self.phase = Phase::Resending {
            need,
            got: Vec::with_capacity(need.min(1 << 20)),
            rewrite,
            read: false,
        };
        self.settle();
    }
}

// ---- over real sockets -------------------------------------------------------

/// Runs the model over TCP (tokio), for tests and benchmarks against the
/// examples.
pub mod net {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tokio::net::{TcpListener, TcpStream};

    use super::{GoConfig, GoPeer, GoStats, Role};

    /// Bytes read from the socket and not yet taken, at most.
    const INBUF: usize = 64 << 10;

    /// What one run of the model did.
    #[derive(Debug, Default, Clone)]
    pub struct Run {
        pub stats: GoStats,
        /// Connections it used.
        pub connections: u64,
        /// From each break to the moment the session was back up.
        pub resume_times: Vec<Duration>,
        /// Cuts made from inside a resend the model was reading.
        pub cuts_inside: u64,
    }

    /// An application on top of the model.
    trait App {
        /// Data to write now, if any (called only when a write may start).
        fn next(&mut self) -> Option<Vec<u8>>;
        /// Plaintext the model delivered.
        fn take(&mut self, data: Vec<u8>) -> Result<(), String>;
        fn done(&self) -> bool;
    }

    enum End {
        Broken {
            eof: bool,
        },
        Failed(String),
        Done,
        /// (Server) a new connection arrived.
        Replaced(TcpStream),
    }

    /// Cuts the link (a proxy's `cut_all`), called from inside a resend.
    pub type Cut = Arc<dyn Fn() + Send + Sync>;

    /// Cuts inside resends per run, at most: each costs the whole resend
    /// and the next one is larger by what was sent after it, so a run that
    /// kept cutting them could outgrow what the link carries between cuts.
    const MAX_CUTS_INSIDE: u64 = 6;

    /// The model with what its driver tracks across connections.
    struct Driver {
        peer: GoPeer,
        rng: StdRng,
        run: Run,
        /// When the last break happened, until the session is up again.
        broke_at: Option<Instant>,
        /// Called inside every other resend the model reads (up to
        /// `MAX_CUTS_INSIDE` times).
        cut_inside: Option<Cut>,
        /// The last resend read that was cut.
        last_cut: Option<u64>,
        /// Resend reads seen (the attempt of the last one): every other
        /// one is cut, whichever attempts brought no resend at all.
        resends_seen: u64,
        last_seen: Option<u64>,
    }

    impl Driver {
        fn new(cfg: GoConfig, role: Role, seed: u64, cut_inside: Option<Cut>) -> Self {
            Driver {
                peer: GoPeer::new(cfg, role),
                rng: StdRng::seed_from_u64(seed),
                run: Run::default(),
                broke_at: None,
                cut_inside,
                last_cut: None,
                resends_seen: 0,
                last_seen: None,
            }
        }

        fn broke(&mut self, eof: bool) {
            self.peer.detach(eof);
            self.broke_at.get_or_insert_with(Instant::now);
        }

        /// Cuts the link once inside every other resend read (up to
        /// `MAX_CUTS_INSIDE`): the proxy resets it and the model drops its end
        /// at once, so the resend read is lost for certain. Returns whether
        /// it cut.
        fn maybe_cut(&mut self) -> bool {
            let Some(cut) = &self.cut_inside else {
                return false;
            };
            let Some((got, need)) = self.peer.resend_progress() else {
                return false;
            };
            let attempt = self.peer.stats.resumes + self.peer.stats.rereads_lost;
            if self.last_seen != Some(attempt) {
                self.last_seen = Some(attempt);
                self.resends_seen += 1;
            }
            let more = self.run.cuts_inside < MAX_CUTS_INSIDE;
            if more && self.resends_seen % 2 == 1 && got < need && self.last_cut != Some(attempt) {
                self.last_cut = Some(attempt);
                self.run.cuts_inside += 1;
                cut();
                return true;
            }
            false
        }
    }

    /// Moves bytes between the model and `sock` until the connection ends.
    async fn pump(
        d: &mut Driver,
        sock: &mut TcpStream,
        app: &mut (dyn App + Send),
        listener: Option<&TcpListener>,
        stop: &AtomicBool,
    ) -> End {
        let chunk = 16 << 10;
        let mut inbuf: Vec<u8> = Vec::new();
        let mut wbuf: Vec<u8> = Vec::new();
        let mut tmp = vec![0u8; 64 << 10];
        loop {
            if let Some(why) = &d.peer.failed {
                return End::Failed(why.clone());
            }
            if d.peer.is_up()
                && let Some(at) = d.broke_at.take()
            {
                d.run.resume_times.push(at.elapsed());
            }
            if wbuf.is_empty()
                && d.peer.can_write()
                && let Some(data) = app.next()
            {
                d.peer.write(&data);
            }
            if wbuf.is_empty() {
                wbuf = d.peer.transmit(64 << 10);
            }
            if !inbuf.is_empty() || d.peer.has_queued() {
                // A resend is taken 4 KiB at a time, as socket reads may
                // bring it, so that a cut can land inside one however the
                // bytes happened to arrive (a resend that came in one read
                // left no chance, and the runs that must cut inside resends
                // at times cut inside one only).
                let avail = match d.peer.resend_progress() {
                    Some(_) => &inbuf[..inbuf.len().min(4096)],
                    None => &inbuf[..],
                };
                let n = d.peer.receive(avail, chunk, &mut d.rng);
                inbuf.drain(..n);
            }
            if d.maybe_cut() {
                return End::Broken { eof: false };
            }
            let delivered = std::mem::take(&mut d.peer.delivered);
            if !delivered.is_empty()
                && let Err(e) = app.take(delivered)
            {
                return End::Failed(e);
            }
            if app.done() || stop.load(Ordering::Relaxed) {
                return End::Done;
            }
            // The model can go on without the socket: do so.
            let busy = d.peer.is_up() && (!inbuf.is_empty() || d.peer.has_queued());
            if busy {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                r = sock.readable(), if inbuf.len() < INBUF => {
                    if r.is_err() { return End::Broken { eof: false }; }
                    match sock.try_read(&mut tmp) {
                        Ok(0) => return End::Broken { eof: true },
                        Ok(n) => inbuf.extend_from_slice(&tmp[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::Broken { eof: false },
                    }
                }
                r = sock.writable(), if !wbuf.is_empty() => {
                    if r.is_err() { return End::Broken { eof: false }; }
                    match sock.try_write(&wbuf) {
                        Ok(n) => { wbuf.drain(..n); }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::Broken { eof: false },
                    }
                }
                a = async { listener.expect("guarded").accept().await }, if listener.is_some() => {
                    if let Ok((s, _)) = a { return End::Replaced(s); }
                }
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
            }
        }
    }

    /// Socket buffers of the model's connections: small, as a Go peer's
    /// would be on a real path (loopback autotuning reaches megabytes).
    pub const SOCKET_BUFFER: u32 = 64 << 10;

    async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_send_buffer_size(SOCKET_BUFFER)?;
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
        socket.connect(addr).await
    }

    /// A listener for [`echo_server`] with the same socket buffers.
    pub fn listen() -> std::io::Result<TcpListener> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_send_buffer_size(SOCKET_BUFFER)?;
        socket.set_recv_buffer_size(SOCKET_BUFFER)?;
        socket.bind("127.0.0.1:0".parse().expect("an address"))?;
        socket.listen(16)
    }

    /// The size of the pieces an echo client writes.
    const PIECE: usize = 32 << 10;

    /// The byte stream an echo client sends, in pieces.
    struct Source {
        rng: StdRng,
        left: u64,
    }

    impl Source {
        fn next(&mut self, max: usize) -> Option<Vec<u8>> {
            if self.left == 0 {
                return None;
            }
            let n = (self.left as usize).min(max);
            let mut buf = vec![0u8; n];
            self.rng.fill_bytes(&mut buf);
            self.left -= n as u64;
            Some(buf)
        }
    }

    struct EchoClient {
        send: Source,
        /// The same stream again, in the same pieces (a generator's bytes
        /// depend on how they are asked for).
        check: Source,
        expected: std::collections::VecDeque<u8>,
        total: u64,
        verified: u64,
    }

    impl App for EchoClient {
        fn next(&mut self) -> Option<Vec<u8>> {
            self.send.next(PIECE)
        }
        fn take(&mut self, data: Vec<u8>) -> Result<(), String> {
            while self.expected.len() < data.len() {
                match self.check.next(PIECE) {
                    Some(piece) => self.expected.extend(piece),
                    None => return Err("more bytes came back than were sent".into()),
                }
            }
            let want: Vec<u8> = self.expected.drain(..data.len()).collect();
            if let Some(i) = (0..data.len()).find(|&i| data[i] != want[i]) {
                return Err(format!(
                    "byte {} differs from what was sent",
                    self.verified + i as u64
                ));
            }
            self.verified += data.len() as u64;
            if self.verified > self.total {
                return Err("more bytes came back than were sent".into());
            }
            Ok(())
        }
        fn done(&self) -> bool {
            self.verified == self.total
        }
    }

    /// The model as an echo client through `addr`: sends `total` bytes and
    /// checks that every one comes back, reconnecting after every break
    /// (and calling `cut_inside` halfway through every other resend).
    pub async fn echo_client(
        cfg: GoConfig,
        addr: SocketAddr,
        total: u64,
        seed: u64,
        limit: Duration,
        cut_inside: Option<Cut>,
    ) -> Result<Run, String> {
        let mut app = EchoClient {
            send: Source {
                rng: StdRng::seed_from_u64(seed),
                left: total,
            },
            check: Source {
                rng: StdRng::seed_from_u64(seed),
                left: total,
            },
            expected: std::collections::VecDeque::new(),
            total,
            verified: 0,
        };
        let mut d = Driver::new(cfg, Role::Client, seed ^ 1, cut_inside);
        let deadline = Instant::now() + limit;
        let never = AtomicBool::new(false);
        while Instant::now() < deadline {
            let Ok(mut sock) = connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            d.run.connections += 1;
            d.peer.attach(&mut d.rng);
            let pumped = pump(&mut d, &mut sock, &mut app, None, &never);
            let end = match tokio::time::timeout_at(deadline.into(), pumped).await {
                Ok(end) => end,
                Err(_) => break,
            };
            match end {
                End::Done => {
                    d.run.stats = d.peer.stats;
                    return Ok(d.run);
                }
                End::Failed(why) => return Err(format!("{why} after {} bytes", app.verified)),
                End::Broken { eof } => d.broke(eof),
                End::Replaced(_) => unreachable!("clients accept nothing"),
            }
        }
        Err(format!(
            "not done within {limit:?}: {} of {total} bytes back",
            app.verified
        ))
    }

    struct Echo {
        pending: Vec<u8>,
    }

    impl App for Echo {
        fn next(&mut self) -> Option<Vec<u8>> {
            if self.pending.is_empty() {
                return None;
            }
            let n = self.pending.len().min(32 << 10);
            Some(self.pending.drain(..n).collect())
        }
        fn take(&mut self, data: Vec<u8>) -> Result<(), String> {
            self.pending.extend_from_slice(&data);
            Ok(())
        }
        fn done(&self) -> bool {
            false
        }
    }

    /// The model as an echo server for one session on `listener`, until
    /// `stop` is set or `limit` passes; returns what it did (or why its
    /// session ended).
    pub async fn echo_server(
        cfg: GoConfig,
        listener: TcpListener,
        limit: Duration,
        stop: Arc<AtomicBool>,
        cut_inside: Option<Cut>,
    ) -> Result<Run, String> {
        let mut d = Driver::new(cfg, Role::Server, 7, cut_inside);
        let mut app = Echo {
            pending: Vec::new(),
        };
        let deadline = tokio::time::Instant::now() + limit;
        let mut next = match tokio::time::timeout_at(deadline, listener.accept()).await {
            Ok(Ok((s, _))) => Some(s),
            _ => return Err("no client came".into()),
        };
        while let Some(mut sock) = next.take() {
            d.run.connections += 1;
            d.peer.attach(&mut d.rng);
            let pumped = pump(&mut d, &mut sock, &mut app, Some(&listener), &stop);
            let end = match tokio::time::timeout_at(deadline, pumped).await {
                Ok(end) => end,
                Err(_) => break,
            };
            match end {
                End::Done => break,
                End::Failed(why) => return Err(why),
                End::Replaced(s) => {
                    d.broke(false);
                    next = Some(s);
                }
                End::Broken { eof } => {
                    d.broke(eof);
                    while next.is_none()
                        && !stop.load(Ordering::Relaxed)
                        && tokio::time::Instant::now() < deadline
                    {
                        let wait = Duration::from_millis(50);
                        if let Ok(Ok((s, _))) = tokio::time::timeout(wait, listener.accept()).await
                        {
                            next = Some(s);
                        }
                    }
                }
            }
        }
        d.run.stats = d.peer.stats;
        Ok(d.run)
    }
}

/// The model as an echo server behind a cutting proxy (tests, benchmarks).
pub mod behind {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use rejoin::chaos::{CutKind, CutProxy, Plan, ProxyConfig};
    use tokio::task::JoinHandle;

    use super::GoConfig;
    use super::net::{Cut, Run, echo_server, listen};

    /// A running model server and the proxy in front of it.
    pub struct Served {
        pub proxy: Arc<CutProxy>,
        stop: Arc<AtomicBool>,
        task: JoinHandle<Result<Run, String>>,
    }

    /// Starts a model echo server (for up to `limit`) and a proxy cutting by
    /// `plan` in front of it; with `cut_inside`, the proxy also cuts halfway
    /// through every other resend the model reads.
    pub async fn serve(cfg: GoConfig, plan: Plan, limit: Duration, cut_inside: bool) -> Served {
        let listener = listen().expect("the model listens");
        let target = listener.local_addr().expect("an address");
        let proxy = CutProxy::start(
            "127.0.0.1:0".parse().expect("an address"),
            target,
            ProxyConfig {
                plan: Some(plan),
                ..ProxyConfig::default()
            },
        )
        .await
        .expect("the proxy starts");
        let proxy = Arc::new(proxy);
        let stop = Arc::new(AtomicBool::new(false));
        let hook = cut_inside.then(|| cutter(&proxy));
        let task = tokio::spawn(echo_server(cfg, listener, limit, stop.clone(), hook));
        Served { proxy, stop, task }
    }

    /// A hook that resets every connection through `proxy`.
    pub fn cutter(proxy: &Arc<CutProxy>) -> Cut {
        let proxy = proxy.clone();
        Arc::new(move || {
            proxy.cut_all(CutKind::Reset);
        })
    }

    impl Served {
        /// Stops the server; what it did, or why its session ended.
        pub async fn finish(self) -> Result<Run, String> {
            self.stop.store(true, Ordering::Relaxed);
            self.task.await.map_err(|e| e.to_string())?
        }
    }
}
