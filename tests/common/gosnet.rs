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
//! - Its read count is the bytes received (the fixed library), or with
//!   `counts_delivered` the bytes handed to the application (the stock head):
//!   a queued resend then counts only as the application reads it, so a
//!   reconnect while part of it waits asks for it again and the model queues
//!   it twice. The model counts when that happens ([`GoStats::own_bug`]).
//! - Refusals: v2 24 zero bytes, v1 a close; a client refused by a v2 server,
//!   or whose counts cannot be resumed, ends its session.

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
    /// The stock head's bug: the read count is what the application took.
    pub counts_delivered: bool,
}

impl GoConfig {
    fn params(&self) -> Params {
        Params {
            version: self.version,
            encrypt: self.encrypt,
            history: self.buffer,
            in_flight: self.buffer / 2,
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
    /// Resending and reading the peer's resend, both at once.
    Resending {
        need: usize,
        got: Vec<u8>,
        rewrite: usize,
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
    /// Reconnects made while a resend it read waited undelivered (with
    /// `counts_delivered`, each makes it queue bytes twice).
    pub own_bug: u64,
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
            next_id: 1,
        }
    }

    /// Whether the session is established and a connection carries it.
    pub fn is_up(&self) -> bool {
        matches!(self.phase, Phase::Up)
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
                    if !core.queue.is_empty() && self.cfg.counts_delivered {
                        self.stats.own_bug += 1;
                    }
                    let (write, read) = (core.write_count, core.read_count);
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
        if matches!(self.phase, Phase::Resending { .. }) {
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
            Phase::Resending { need, got, .. } => {
                let n = avail.len().min(*need - got.len());
                got.extend_from_slice(&avail[..n]);
                self.settle();
                n
            }
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
        let core = self.core.as_mut().expect("up means a session");
        let (mut buf, taken) = if !core.queue.is_empty() {
            let n = max.min(core.queue.len());
            let buf: Vec<u8> = core.queue.drain(..n).collect();
            if self.cfg.counts_delivered {
                core.read_count += n as u64;
            }
            (buf, 0)
        } else {
            let n = max.min(avail.len());
            core.read_count += n as u64;
            (avail[..n].to_vec(), n)
        };
        core.ciphers.read.apply(&mut buf);
        self.delivered.extend_from_slice(&buf);
        taken
    }

    /// Finishes a reconnect once the resend went out and the peer's resend
    /// was read whole.
    fn settle(&mut self) {
        let Phase::Resending { need, got, rewrite } = &mut self.phase else {
            return;
        };
        if got.len() < *need || *rewrite > 0 {
            return;
        }
        let got = std::mem::take(got);
        let core = self.core.as_mut().expect("resending means a session");
        if !self.cfg.counts_delivered {
            core.read_count += got.len() as u64;
        }
        core.queue.extend(got);
        self.stats.resumes += 1;
        self.closes = 0;
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
        if !core.queue.is_empty() && self.cfg.counts_delivered {
            self.stats.own_bug += 1;
        }
        let (write, read) = (core.write_count, core.read_count);
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
        let need = (peer_write - core.read_count) as usize;
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
        };
        self.settle();
    }
}
