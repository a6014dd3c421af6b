//! Reconnect state machines, and the resume decision.
//!
//! ```text
//! client                                        server
//!   │ [0xFF] id, wc, rc, MD5(id‖wc‖rc‖key) ──────▶ │ check tag and counts
//!   │ ◀────── wc, rc, [chal]   (v2 refusal: 24×0)  │
//!   │ [v2] MD5(chal ‖ key) ──────────────────────▶ │ verify, else close
//!   │ ◀── resend server wc − client rc bytes ───── │
//!   │ ─── resend client wc − server rc bytes ────▶ │   (both at once)
//! ```
//!
//! The resends are the stored ciphertext, verbatim; after them the stream
//! simply continues. [`ResumePoint`] is what [`super::Session::resume`] needs to
//! switch the session onto the new transport.

use bytes::{Bytes, BytesMut};
use rand::CryptoRng;

use super::auth::{self, tags_equal};
use super::handshake::challenge;
use super::message::{Answer, ClientHello, ReconnectRequest, ResumeReply};
use super::{Error, RefuseReason, Result, Session, Version};

/// Where a resumed session picks up on its new transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The peer's read count: our resend starts here.
    pub peer_read: u64,
    /// The peer's write count: its resend ends here.
    pub peer_write: u64,
    /// The read count we reported: the peer's resend starts here.
    pub reported_read: u64,
    /// The write count we announced: our resend ends here (bytes written
    /// after it follow as new data).
    pub announced_write: u64,
    /// How many resumes the session had completed when this one began: a
    /// resume that began before another completed is stale.
    pub epoch: u64,
}

/// The server's checks on a reconnect request, in the order snet makes them.
/// The tag is checked first, so nothing else is learnt without the key.
pub fn decide(session: &Session, request: &ReconnectRequest) -> Result<(), RefuseReason> {
    let expected = auth::reconnect_tag(
        request.id,
        request.write_count,
        request.read_count,
        session.key(),
    );
    if request.id != session.id() || !tags_equal(&expected, &request.tag) {
        return Err(RefuseReason::BadTag);
    }
    check_counts(session, request.write_count, request.read_count)
}

/// The count checks of a resume whose proof already verified: the client
/// wrote `write` and read `read`.
pub(crate) fn check_counts(session: &Session, write: u64, read: u64) -> Result<(), RefuseReason> {
    if write < session.read_count() {
        return Err(RefuseReason::WriteCountBelowRead {
            client_write: write,
            server_read: session.read_count(),
        });
    }
    if read > session.announced_write() {
        return Err(RefuseReason::ReadCountAboveWrite {
            client_read: read,
            server_write: session.announced_write(),
        });
    }
    if read < session.history().start() {
        let (need, held) = (session.write_count() - read, session.history().len() as u64);
        return Err(if session.v1_read_cut_short(read) {
            RefuseReason::V1ReadsPastResend { need, held }
        } else {
            RefuseReason::HistoryTooShort { need, held }
        });
    }
    Ok(())
}

enum ClientState {
    AwaitReply,
    Done,
}

/// The client side of a reconnect.
pub struct ClientResume {
    epoch: u64,
    version: Version,
    write_count: u64,
    read_count: u64,
    key: super::Key,
    state: ClientState,
    transmit: BytesMut,
    outcome: Option<Result<ResumePoint>>,
}

impl ClientResume {
    /// Starts a reconnect for `session`; the request is ready in `poll_transmit`.
    pub fn new(session: &Session) -> Self {
        let (write, read) = (session.announced_write(), session.read_count());
        let request = ReconnectRequest {
            id: session.id(),
            write_count: write,
            read_count: read,
            tag: auth::reconnect_tag(session.id(), write, read, session.key()),
        };
        let mut transmit = BytesMut::new();
        ClientHello::Reconnect(request).encode(session.version(), &mut transmit);
        ClientResume {
            epoch: session.epoch(),
            version: session.version(),
            write_count: request.write_count,
            read_count: request.read_count,
            key: *session.key(),
            state: ClientState::AwaitReply,
            transmit,
            outcome: None,
        }
    }

    /// Consumes the server's reply when it is complete. Bytes after it are the
    /// server's resend and belong to the session.
    ///
    /// For v1 a refusal is a close: the caller reports end-of-file before a
    /// reply as [`Error::Refused`].
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<()> {
        if let ClientState::Done = self.state {
            return Ok(());
        }
        let Some(reply) = ResumeReply::decode(self.version, input)? else {
            return Ok(());
        };
        self.state = ClientState::Done;
        let ResumeReply::Accept {
            write_count,
            read_count,
            challenge,
        } = reply
        else {
            return Err(Error::Refused);
        };
        if read_count > self.write_count {
            return Err(Error::BadCounts(
                "server read count above what this client sent: it counts bytes it never got \
                 (the stock Go snet library counts a resend twice when it reconnects before its \
                 application has read all of it)",
            ));
        }
        if write_count < self.read_count {
            return Err(Error::BadCounts(
                "server write count below client read count",
            ));
        }
        if let Some(challenge) = challenge {
            Answer(auth::answer(&challenge, &self.key)).encode(&mut self.transmit);
        }
        // Like snet, the client checks its own side only after answering:
        // Session::resume fails if the history no longer holds what the server
        // missed (the app may have written more since the request was made).
        self.outcome = Some(Ok(ResumePoint {
            peer_read: read_count,
            peer_write: write_count,
            reported_read: self.read_count,
            announced_write: self.write_count,
            epoch: self.epoch,
        }));
        Ok(())
    }

    /// Bytes to send: the request, then (v2) the answer.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// The resume point, once the reply is in. Send any pending transmit (the
    /// v2 answer) first, then switch with [`Session::resume`], which fails with
    /// [`Error::HistoryTooShort`] if this side cannot resend what the server
    /// missed: then close.
    pub fn poll_outcome(&mut self) -> Option<Result<ResumePoint>> {
        self.outcome.take()
    }
}

/// The server side of a reconnect, once the request has been matched to a
/// session and accepted by [`decide`].
pub struct ServerResume {
    expected: Option<auth::Tag>,
    point: ResumePoint,
    transmit: BytesMut,
    outcome: Option<Result<ResumePoint>>,
}

impl ServerResume {
    /// Checks `request` against `session` and, if acceptable, prepares the
    /// reply. The session's resend floor is raised to the client's read count
    /// so that the history keeps what the resend needs while the answer is
    /// awaited; the session can go on using its old transport meanwhile.
    pub fn new<R: CryptoRng + ?Sized>(
        session: &mut Session,
        request: &ReconnectRequest,
        rng: &mut R,
    ) -> Result<Self, RefuseReason> {
        Self::with_challenge(session, request, || challenge(rng))
    }

    /// As [`ServerResume::new`] with the challenge supplied (test vectors).
    pub fn with_challenge(
        session: &mut Session,
        request: &ReconnectRequest,
        challenge: impl FnOnce() -> [u8; 8],
    ) -> Result<Self, RefuseReason> {
        decide(session, request)?;
        session.confirm(request.read_count);
        let version = session.version();
        let challenge = (version == Version::V2).then(challenge);
        let point = ResumePoint {
            peer_read: request.read_count,
            peer_write: request.write_count,
            reported_read: session.read_count(),
            announced_write: session.announced_write(),
            epoch: session.epoch(),
        };
        let mut transmit = BytesMut::new();
        ResumeReply::Accept {
            write_count: point.announced_write,
            read_count: point.reported_read,
            challenge,
        }
        .encode(version, &mut transmit);
        let expected = challenge.map(|c| auth::answer(&c, session.key()));
        let outcome = expected.is_none().then_some(Ok(point));
        Ok(ServerResume {
            expected,
            point,
            transmit,
            outcome,
        })
    }

    /// The bytes that refuse a reconnect (v2: 24 zeros; v1: none, just close).
    pub fn refusal(version: Version) -> Bytes {
        let mut out = BytesMut::new();
        ResumeReply::Refuse.encode(version, &mut out);
        out.freeze()
    }

    /// Consumes the client's answer (v2).
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<()> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        if self.outcome.is_some() {
            return Ok(());
        }
        let Some(Answer(got)) = Answer::decode(input)? else {
            return Ok(());
        };
        if !tags_equal(expected, &got) {
            return Err(Error::BadAnswer);
        }
        self.outcome = Some(Ok(self.point));
        Ok(())
    }

    /// Bytes to send: the reply.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// The resume point once the client proved the key (v1: at once).
    pub fn poll_outcome(&mut self) -> Option<Result<ResumePoint>> {
        self.outcome.take()
    }
}
