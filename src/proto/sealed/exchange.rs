//! The sealed suite's handshakes: a new session and a resume, both sides.
//!
//! Feed received bytes to `handle_input`, send what `poll_transmit` returns,
//! take the result from `poll_outcome`. A server first learns what the client
//! asks for ([`ServerExchange::poll_request`]) and answers it with the key it
//! looks up ([`ServerExchange::accept_new`], [`ServerExchange::accept_resume`]).
//!
//! ```text
//! hello   = kind:u8  (new: id_len:u8 psk_id | resume: conn_id:u64le)  len:u16le noise1
//! welcome = len:u16le noise2
//! confirm = the client's first frame: no data, ack = its read count
//! ```
//!
//! Noise payloads (all inside the handshake's encryption):
//!
//! | message | new session | resume |
//! |---|---|---|
//! | noise1 | empty | client write count, client read count (u64le) |
//! | noise2 | status 0, conn ID, 32-byte seed | status 0, server write count, server read count |
//! | refusal noise2 | status ≠ 0 only | status ≠ 0 only |

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rand::CryptoRng;
use snow::{Builder, HandshakeState};

use super::link::Link;
use super::{
    MAX_HANDSHAKE_MESSAGE, MAX_PSK_ID, NEW_IK, NEW_NN, NOISE_IK, NOISE_IK_RESUME, NOISE_NN,
    PROLOGUE_LABEL, Psk, RESUME_IK, RESUME_NN, SessionSecrets, StaticKey, noise_params,
};
use crate::proto::resume::{ResumePoint, check_counts};
use crate::proto::{Error, Params, RefuseReason, Result, Role, Session};

/// Welcome status: accepted.
pub const STATUS_OK: u8 = 0;
/// Refusal: the server is at a limit.
pub const STATUS_BUSY: u8 = 1;
/// Refusal: the client's write count is below the server's read count.
pub const STATUS_WRITE_BELOW_READ: u8 = 2;
/// Refusal: the client's read count is above the server's write count.
pub const STATUS_READ_ABOVE_WRITE: u8 = 3;
/// Refusal: the server's history no longer holds what the client missed.
pub const STATUS_HISTORY: u8 = 4;

/// Rejection of a new-session hello: no PSK for the identity it names.
/// Reserved: rejoin servers answer an unknown identity as a wrong key
/// ([`REJECT_BAD_KEY`]), so that a refusal does not tell which exist.
pub const REJECT_UNKNOWN_ID: u8 = 1;
/// Rejection of a new-session hello: it does not open under the PSK.
pub const REJECT_BAD_KEY: u8 = 2;
/// Rejection of a new-session hello: it pins a static key the server lacks.
pub const REJECT_NO_STATIC_KEY: u8 = 3;
/// Rejection of a resume hello: the server has no session with that conn ID
/// (it expired, or the server restarted).
pub const REJECT_UNKNOWN_SESSION: u8 = 4;

/// What a client asks for, in the clear part of its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A new session keyed by the PSK named `psk_id` (may be empty).
    New {
        /// Which PSK (a tunnel client's name, say); at most [`MAX_PSK_ID`] bytes.
        psk_id: Vec<u8>,
        /// The client pinned the server's static key (`IKpsk2`).
        pinned: bool,
    },
    /// A resume of session `id`. The ID only finds the session: the
    /// handshake must then prove the session's resume secret.
    Resume {
        /// The conn ID.
        id: u64,
        /// The client pinned the server's static key (`IKpsk1`).
        pinned: bool,
    },
}

impl Request {
    fn kind(&self) -> u8 {
        match self {
            Request::New { pinned: false, .. } => NEW_NN,
            Request::New { pinned: true, .. } => NEW_IK,
            Request::Resume { pinned: false, .. } => RESUME_NN,
            Request::Resume { pinned: true, .. } => RESUME_IK,
        }
    }

    fn pinned(&self) -> bool {
        match self {
            Request::New { pinned, .. } | Request::Resume { pinned, .. } => *pinned,
        }
    }

    /// The clear part of the hello, which is also the end of the prologue.
    fn encode_prefix(&self, buf: &mut impl BufMut) {
        buf.put_u8(self.kind());
        match self {
            Request::New { psk_id, .. } => {
                buf.put_u8(psk_id.len() as u8);
                buf.put_slice(psk_id);
            }
            Request::Resume { id, .. } => buf.put_u64_le(*id),
        }
    }

    fn prologue(&self) -> Vec<u8> {
        let mut p = PROLOGUE_LABEL.to_vec();
        self.encode_prefix(&mut p);
        p
    }

    /// Decodes a whole hello: the request and its Noise message, or `None`
    /// if more bytes are needed. Consumes nothing until it is complete.
    pub fn decode_hello(input: &mut BytesMut) -> Result<Option<(Request, Vec<u8>)>> {
        let Some(&kind) = input.first() else {
            return Ok(None);
        };
        let pinned = matches!(kind, NEW_IK | RESUME_IK);
        let (request, at) = match kind {
            NEW_NN | NEW_IK => {
                let Some(&n) = input.get(1) else {
                    return Ok(None);
                };
                let n = n as usize;
                if n > MAX_PSK_ID {
                    return Err(Error::Malformed("PSK identity too long"));
                }
                let Some(id) = input.get(2..2 + n) else {
                    return Ok(None);
                };
                let psk_id = id.to_vec();
                (Request::New { psk_id, pinned }, 2 + n)
            }
            RESUME_NN | RESUME_IK => {
                let Some(id) = input.get(1..9) else {
                    return Ok(None);
                };
                let id = u64::from_le_bytes(id.try_into().unwrap_or_default());
                (Request::Resume { id, pinned }, 9)
            }
            other => return Err(Error::UnknownType(other)),
        };
        let Some(message) = noise_message(&input[at..])? else {
            return Ok(None);
        };
        let message = message.to_vec();
        input.advance(at + 2 + message.len());
        Ok(Some((request, message)))
    }
}

/// A length-prefixed handshake message at the start of `buf`, if complete.
fn noise_message(buf: &[u8]) -> Result<Option<&[u8]>> {
    let Some(len) = buf.get(..2) else {
        return Ok(None);
    };
    let len = u16::from_le_bytes([len[0], len[1]]) as usize;
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(Error::Malformed("handshake message too long"));
    }
    Ok(buf.get(2..2 + len))
}

fn put_noise_message(buf: &mut BytesMut, message: &[u8]) {
    buf.put_u16_le(message.len() as u16);
    buf.put_slice(message);
}

/// Keys fixed in advance, for test vectors only: in use, every handshake
/// draws fresh ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedKeys {
    /// This side's ephemeral private key.
    pub ephemeral: Option<[u8; 32]>,
    /// The client's static private key (`IKpsk2` and `IKpsk1` only).
    pub client_static: Option<[u8; 32]>,
}

fn setup(what: &'static str) -> impl Fn(snow::Error) -> Error {
    move |_| Error::Malformed(what)
}

/// A handshake state for `request`'s pattern, keyed by `psk`.
fn builder_for<'a>(
    request: &Request,
    psk: &'a [u8; 32],
    prologue: &'a [u8],
    fixed: &'a FixedKeys,
) -> Result<Builder<'a>> {
    let resume = matches!(request, Request::Resume { .. });
    let (name, location) = match (request.pinned(), resume) {
        (true, false) => (NOISE_IK, 2),
        (true, true) => (NOISE_IK_RESUME, 1),
        (false, _) => (NOISE_NN, 0),
    };
    let mut b = Builder::new(noise_params(name))
        .psk(location, psk)
        .and_then(|b| b.prologue(prologue))
        .map_err(setup("noise setup"))?;
    if let Some(e) = &fixed.ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    Ok(b)
}

/// A server's answer to a resume hello, decided from a snapshot of the
/// session ([`ServerExchange::decide_resume`]).
#[derive(Debug, Clone, Copy)]
pub struct ResumeDecision {
    point: Result<ResumePoint, RefuseReason>,
    server_write: u64,
}

/// What a finished exchange yields for a new session.
#[derive(Debug)]
pub struct Established {
    /// The session.
    pub session: Session,
    /// Its first connection's frames (holding any bytes that followed).
    pub link: Link,
}

/// What a finished exchange yields for a resume.
#[derive(Debug)]
pub struct Resumed {
    /// Where the session picks up (see [`Session::resume`]).
    pub point: ResumePoint,
    /// The new connection's frames (holding any bytes that followed).
    pub link: Link,
}

enum ClientMode {
    New { params: Params },
    Resume { epoch: u64, write: u64, read: u64 },
}

/// The client side of a sealed handshake.
pub struct ClientExchange {
    hs: Option<Box<HandshakeState>>,
    /// The free receive buffer to advertise in the confirm.
    window: u64,
    mode: ClientMode,
    transmit: BytesMut,
    outcome: Option<Result<ClientOutcome>>,
}

/// What a client's exchange ends in.
#[derive(Debug)]
// Made once per connection and moved straight out: boxing the session
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum ClientOutcome {
    /// A new session.
    Established(Established),
    /// The session resumed.
    Resumed(Resumed),
}

impl ClientExchange {
    /// Starts a new session keyed by `psk` (named `psk_id` for the server), and
    /// by the server's static key if `server_key` pins one.
    pub fn new_session(
        params: Params,
        psk: &Psk,
        psk_id: &[u8],
        server_key: Option<&[u8; 32]>,
    ) -> Result<Self> {
        Self::new_session_with(params, psk, psk_id, server_key, &FixedKeys::default())
    }

    /// As [`ClientExchange::new_session`] with fixed keys (test vectors).
    pub fn new_session_with(
        params: Params,
        psk: &Psk,
        psk_id: &[u8],
        server_key: Option<&[u8; 32]>,
        fixed: &FixedKeys,
    ) -> Result<Self> {
        if psk_id.len() > MAX_PSK_ID {
            return Err(Error::Malformed("PSK identity too long"));
        }
        let request = Request::New {
            psk_id: psk_id.to_vec(),
            pinned: server_key.is_some(),
        };
        Self::start(
            request,
            &psk.0,
            server_key,
            &[],
            ClientMode::New { params },
            fixed,
        )
    }

    /// Starts a resume of `session` (a sealed one), on a new connection.
    pub fn resume(session: &Session, server_key: Option<&[u8; 32]>) -> Result<Self> {
        Self::resume_with(session, server_key, &FixedKeys::default())
    }

    /// As [`ClientExchange::resume`] with fixed keys (test vectors).
    pub fn resume_with(
        session: &Session,
        server_key: Option<&[u8; 32]>,
        fixed: &FixedKeys,
    ) -> Result<Self> {
        let secrets = session
            .secrets()
            .ok_or(Error::Malformed("not a sealed session"))?;
        let request = Request::Resume {
            id: session.id(),
            pinned: server_key.is_some(),
        };
        let (write, read) = (session.write_count(), session.read_count());
        let mut counts = [0u8; 16];
        counts[..8].copy_from_slice(&write.to_le_bytes());
        counts[8..].copy_from_slice(&read.to_le_bytes());
        let mode = ClientMode::Resume {
            epoch: session.epoch(),
            write,
            read,
        };
        Self::start(request, &secrets.resume, server_key, &counts, mode, fixed)
    }

    fn start(
        request: Request,
        psk: &[u8; 32],
        server_key: Option<&[u8; 32]>,
        payload: &[u8],
        mode: ClientMode,
        fixed: &FixedKeys,
    ) -> Result<Self> {
        let prologue = request.prologue();
        let mut b = builder_for(&request, psk, &prologue, fixed)?;
        let client_static;
        if let Some(key) = server_key {
            client_static = match fixed.client_static {
                Some(private) => private,
                None => *StaticKey::generate()?.private(),
            };
            b = b
                .remote_public_key(key)
                .and_then(|b| b.local_private_key(&client_static))
                .map_err(setup("server key"))?;
        }
        let mut hs = b.build_initiator().map_err(setup("noise initiator"))?;
        let mut message = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = hs
            .write_message(payload, &mut message)
            .map_err(setup("noise message 1"))?;
        let mut transmit = BytesMut::new();
        request.encode_prefix(&mut transmit);
        put_noise_message(&mut transmit, &message[..n]);
        Ok(ClientExchange {
            window: super::INITIAL_WINDOW,
            hs: Some(Box::new(hs)),
            mode,
            transmit,
            outcome: None,
        })
    }

    /// Sets the receive window the confirm advertises beyond the read count
    /// (the free receive buffer). Default [`super::INITIAL_WINDOW`].
    pub fn set_window(&mut self, free: u64) {
        self.window = free;
    }

    /// Consumes the server's welcome when it is complete. Bytes after it
    /// stay in the outcome's link.
    ///
    /// Fails if the welcome does not authenticate: the server does not hold
    /// the PSK (or the resume secret, or the pinned key's private half).
    /// An authenticated refusal ends in [`Error::Refused`] from `poll_outcome`.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<()> {
        if self.hs.is_none() {
            return Ok(());
        }
        let Some(message) = noise_message(input)? else {
            return Ok(());
        };
        if message.is_empty() {
            // A rejection, in the clear: the server could not take the hello.
            return match input.get(2) {
                Some(&code) => Err(Error::KeyRejected(code)),
                None => Ok(()),
            };
        }
        let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
        let Some(mut hs) = self.hs.take() else {
            return Ok(());
        };
        let n = hs
            .read_message(message, &mut payload)
            .map_err(|_| Error::Unauthenticated)?;
        let used = 2 + message.len();
        input.advance(used);
        let payload = &payload[..n];
        match payload.first() {
            Some(&STATUS_OK) => {}
            Some(&status) if payload.len() == 1 => {
                self.outcome = Some(Err(Error::SealedRefusal(status)));
                return Ok(());
            }
            _ => return Err(Error::Malformed("welcome payload")),
        }
        let hash = hs.get_handshake_hash().to_vec();
        let outcome = match self.mode {
            ClientMode::New { params } => {
                if payload.len() != 41 {
                    return Err(Error::Malformed("welcome payload"));
                }
                let id = u64::from_le_bytes(payload[1..9].try_into().unwrap_or_default());
                let seed: [u8; 32] = payload[9..41].try_into().unwrap_or_default();
                let secrets = SessionSecrets::derive(&hash, &seed);
                let session = Session::new_sealed(Role::Client, id, params, secrets);
                let link = self.confirm(&mut hs, 0, input)?;
                ClientOutcome::Established(Established { session, link })
            }
            ClientMode::Resume { epoch, write, read } => {
                if payload.len() != 17 {
                    return Err(Error::Malformed("welcome payload"));
                }
                let server_write = u64::from_le_bytes(payload[1..9].try_into().unwrap_or_default());
                let server_read = u64::from_le_bytes(payload[9..17].try_into().unwrap_or_default());
                if server_read > write {
                    return Err(Error::BadCounts(
                        "server read count above client write count",
                    ));
                }
                if server_write < read {
                    return Err(Error::BadCounts(
                        "server write count below client read count",
                    ));
                }
                let point = ResumePoint {
                    peer_read: server_read,
                    peer_write: server_write,
                    reported_read: read,
                    announced_write: write,
                    epoch,
                };
                let link = self.confirm(&mut hs, read, input)?;
                ClientOutcome::Resumed(Resumed { point, link })
            }
        };
        self.outcome = Some(Ok(outcome));
        Ok(())
    }

    /// The link of the new connection, with its confirm frame queued to
    /// transmit and what followed the welcome moved into it.
    fn confirm(&mut self, hs: &mut HandshakeState, ack: u64, input: &mut BytesMut) -> Result<Link> {
        let mut link = Link::new(hs, true, ack)?;
        link.seal(&[], ack, ack + self.window)?;
        link.drain_output(&mut self.transmit)?;
        link.input_buffer().extend_from_slice(input);
        input.clear();
        Ok(link)
    }

    /// Bytes to send: the hello, then the confirm.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// The result once the welcome is in (send any pending transmit first:
    /// it holds the confirm). For a resume, switch with [`Session::resume`].
    pub fn poll_outcome(&mut self) -> Option<Result<ClientOutcome>> {
        self.outcome.take()
    }
}

enum Pending {
    New(Box<Session>),
    Resume(ResumePoint),
}

enum ServerState {
    AwaitHello,
    AwaitDecision {
        request: Request,
        message: Vec<u8>,
    },
    /// A resume hello that opened under the session's secret.
    Opened {
        hs: Box<HandshakeState>,
        write: u64,
        read: u64,
    },
    AwaitConfirm {
        link: Box<Link>,
        ack: u64,
        pending: Pending,
    },
    Done,
}

/// What a server's exchange ends in.
#[derive(Debug)]
// Made once per connection and moved straight out: boxing the session
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum ServerOutcome {
    /// A new session: the client proved the PSK.
    Established(Established),
    /// A resume: the client proved the session's resume secret.
    Resumed(Resumed),
}

/// The server side of a sealed handshake.
pub struct ServerExchange {
    static_key: Option<StaticKey>,
    fixed: FixedKeys,
    state: ServerState,
    transmit: BytesMut,
    outcome: Option<ServerOutcome>,
}

impl ServerExchange {
    /// Awaits a hello. `static_key` serves clients that pin it.
    pub fn new(static_key: Option<StaticKey>) -> Self {
        Self::with_fixed(static_key, FixedKeys::default())
    }

    /// As [`ServerExchange::new`] with a fixed ephemeral key (test vectors).
    pub fn with_fixed(static_key: Option<StaticKey>, fixed: FixedKeys) -> Self {
        ServerExchange {
            static_key,
            fixed,
            state: ServerState::AwaitHello,
            transmit: BytesMut::new(),
            outcome: None,
        }
    }

    /// Consumes the hello, then the confirm. After the confirm, what follows
    /// stays in the outcome's link.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<()> {
        match &mut self.state {
            ServerState::AwaitHello => {
                if let Some((request, message)) = Request::decode_hello(input)? {
                    self.state = ServerState::AwaitDecision { request, message };
                }
                Ok(())
            }
            ServerState::AwaitConfirm { link, ack, .. } => {
                link.input_buffer().extend_from_slice(input);
                input.clear();
                if !link.open_confirm(*ack)? {
                    return Ok(());
                }
                let ServerState::AwaitConfirm { link, pending, .. } =
                    std::mem::replace(&mut self.state, ServerState::Done)
                else {
                    return Ok(());
                };
                self.outcome = Some(match pending {
                    Pending::New(session) => ServerOutcome::Established(Established {
                        session: *session,
                        link: *link,
                    }),
                    Pending::Resume(point) => {
                        ServerOutcome::Resumed(Resumed { point, link: *link })
                    }
                });
                Ok(())
            }
            ServerState::AwaitDecision { .. } | ServerState::Opened { .. } | ServerState::Done => {
                Ok(())
            }
        }
    }

    /// What the client asks for, once its hello is in: look up the key and
    /// answer with [`ServerExchange::accept_new`] or
    /// [`ServerExchange::accept_resume`] (or close).
    pub fn poll_request(&self) -> Option<&Request> {
        match &self.state {
            ServerState::AwaitDecision { request, .. } => Some(request),
            _ => None,
        }
    }

    /// Reads the client's first message with the key for its request, and
    /// the responder's handshake state ready for the welcome.
    fn respond(&mut self, psk: &[u8; 32]) -> Result<(HandshakeState, Vec<u8>)> {
        let ServerState::AwaitDecision { request, message } =
            std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(Error::Malformed("no hello to answer"));
        };
        let prologue = request.prologue();
        let mut b = builder_for(&request, psk, &prologue, &self.fixed)?;
        if request.pinned() {
            let key = self.static_key.as_ref().ok_or(Error::Unsupported(
                "pinned server key, but none is configured",
            ))?;
            b = b
                .local_private_key(key.private())
                .map_err(setup("static key"))?;
        }
        let mut hs = b.build_responder().map_err(setup("noise responder"))?;
        let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = hs
            .read_message(&message, &mut payload)
            .map_err(|_| Error::Unauthenticated)?;
        Ok((hs, payload[..n].to_vec()))
    }

    fn welcome(&mut self, hs: &mut HandshakeState, payload: &[u8]) -> Result<()> {
        let mut message = [0u8; MAX_HANDSHAKE_MESSAGE];
        let n = hs
            .write_message(payload, &mut message)
            .map_err(setup("noise message 2"))?;
        put_noise_message(&mut self.transmit, &message[..n]);
        Ok(())
    }

    /// Answers a new-session hello keyed by `psk`, giving the session conn ID
    /// `id` and drawing its seed from `rng`. Fails if the client does not
    /// hold `psk` (close the connection). The session is established only
    /// when the client's confirm arrives.
    pub fn accept_new<R: CryptoRng + ?Sized>(
        &mut self,
        psk: &Psk,
        id: u64,
        params: Params,
        rng: &mut R,
    ) -> Result<()> {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        self.accept_new_with_seed(psk, id, params, seed)
    }

    /// As [`ServerExchange::accept_new`] with the seed given (test vectors).
    pub fn accept_new_with_seed(
        &mut self,
        psk: &Psk,
        id: u64,
        params: Params,
        seed: [u8; 32],
    ) -> Result<()> {
        let (mut hs, payload) = self.respond(&psk.0)?;
        if !payload.is_empty() {
            return Err(Error::Malformed("new-session hello payload"));
        }
        let mut welcome = vec![STATUS_OK];
        welcome.extend_from_slice(&id.to_le_bytes());
        welcome.extend_from_slice(&seed);
        self.welcome(&mut hs, &welcome)?;
        let secrets = SessionSecrets::derive(hs.get_handshake_hash(), &seed);
        let session = Session::new_sealed(Role::Server, id, params, secrets);
        self.state = ServerState::AwaitConfirm {
            link: Box::new(Link::new(&mut hs, false, 0)?),
            ack: 0,
            pending: Pending::New(Box::new(session)),
        };
        Ok(())
    }

    /// Reads a resume hello with the secrets of the session its conn ID
    /// found, without touching the session: the costly part, which a server
    /// does outside the session's lock. Fails with [`Error::Unauthenticated`]
    /// if the client does not hold the resume secret (close). Then answer
    /// with [`ServerExchange::accept_resume`].
    pub fn open_resume(&mut self, secrets: &SessionSecrets) -> Result<()> {
        let (hs, payload) = self.respond(&secrets.resume)?;
        if payload.len() != 16 {
            return Err(Error::Malformed("resume hello payload"));
        }
        self.state = ServerState::Opened {
            hs: Box::new(hs),
            write: u64::from_le_bytes(payload[..8].try_into().unwrap_or_default()),
            read: u64::from_le_bytes(payload[8..].try_into().unwrap_or_default()),
        };
        Ok(())
    }

    /// Answers a resume hello for `session`, which the request's conn ID
    /// found (reading it first unless [`ServerExchange::open_resume`] did). Fails with [`Error::Unauthenticated`] if the client does not
    /// hold the session's resume secret (close; the session is untouched),
    /// or with [`Error::Refuse`] if its counts cannot resume the session:
    /// then send the authenticated refusal in `poll_transmit` and close.
    /// On success the session's resend floor is raised to the client's read
    /// count; it switches over only when [`Session::resume`] is called with
    /// the outcome, after the client's confirm.
    pub fn accept_resume(&mut self, session: &Session) -> Result<()> {
        if let ServerState::AwaitDecision { .. } = self.state {
            let secrets = session
                .secrets()
                .ok_or(Error::Malformed("not a sealed session"))?
                .clone();
            self.open_resume(&secrets)?;
        }
        let decision = self.decide_resume(session)?;
        self.answer_resume(decision)
    }

    /// The server's answer to an opened resume hello, from a snapshot of
    /// `session`: cheap, so a server takes it under the session's lock and
    /// builds the welcome ([`ServerExchange::answer_resume`]) outside it.
    /// The session itself is not changed: nothing is, before the confirm.
    pub fn decide_resume(&self, session: &Session) -> Result<ResumeDecision> {
        let ServerState::Opened { write, read, .. } = &self.state else {
            return Err(Error::Malformed("no resume hello to answer"));
        };
        let (write, read) = (*write, *read);
        let point = check_counts(session, write, read).map(|()| ResumePoint {
            peer_read: read,
            peer_write: write,
            reported_read: session.read_count(),
            announced_write: session.write_count(),
            epoch: session.epoch(),
        });
        Ok(ResumeDecision {
            point,
            server_write: session.write_count(),
        })
    }

    /// Sends the welcome (or the authenticated refusal, then fails with
    /// [`Error::Refuse`]) that `decision` calls for.
    pub fn answer_resume(&mut self, decision: ResumeDecision) -> Result<()> {
        let ServerState::Opened { mut hs, read, .. } =
            std::mem::replace(&mut self.state, ServerState::Done)
        else {
            return Err(Error::Malformed("no resume hello to answer"));
        };
        let point = match decision.point {
            Ok(point) => point,
            Err(reason) => {
                self.welcome(&mut hs, &[refusal_status(reason)])?;
                return Err(Error::Refuse(reason));
            }
        };
        let mut welcome = vec![STATUS_OK];
        welcome.extend_from_slice(&decision.server_write.to_le_bytes());
        welcome.extend_from_slice(&point.reported_read.to_le_bytes());
        self.welcome(&mut hs, &welcome)?;
        self.state = ServerState::AwaitConfirm {
            link: Box::new(Link::new(&mut hs, false, point.reported_read)?),
            ack: read,
            pending: Pending::Resume(point),
        };
        Ok(())
    }

    /// Rejects a hello that could not be taken (`code` is one of the
    /// `REJECT_*` constants): a rejection in the clear, since the server
    /// shares no key with this client (or no longer has the session). Send
    /// it, then close.
    pub fn reject(&mut self, code: u8) {
        self.state = ServerState::Done;
        self.transmit.put_u16_le(0);
        self.transmit.put_u8(code);
    }

    /// Bytes to send: the welcome (or an authenticated refusal).
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// The result once the client's confirm is in.
    pub fn poll_outcome(&mut self) -> Option<ServerOutcome> {
        self.outcome.take()
    }
}

fn refusal_status(reason: RefuseReason) -> u8 {
    match reason {
        RefuseReason::WriteCountBelowRead { .. } => STATUS_WRITE_BELOW_READ,
        RefuseReason::ReadCountAboveWrite { .. } => STATUS_READ_ABOVE_WRITE,
        RefuseReason::HistoryTooShort { .. } | RefuseReason::V1ReadsPastResend { .. } => {
            STATUS_HISTORY
        }
        _ => STATUS_BUSY,
    }
}
