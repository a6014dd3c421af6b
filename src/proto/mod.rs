//! The protocol core, sans-IO: the snet wire protocol byte for byte (the
//! compatible suite), and rejoin's sealed suite.
//!
//! Nothing in this module touches a socket, a clock or the OS random number
//! generator: bytes go in through `handle_*` methods, bytes to send come out of
//! `poll_*` methods, and randomness is passed in. That keeps every state machine
//! deterministic, so tests can cut a simulated link at any byte and replay any
//! schedule (see `tests/proto_sim.rs`).
//!
//! The pieces, bottom up:
//!
//! - [`dh`]: dh64 key agreement (p = 2^64 − 59, g = 5).
//! - `cipher`: the RC4 states and snet's keystream layout (internal).
//! - [`auth`]: the MD5 tags, compared in constant time.
//! - [`message`]: every handshake message, with pure `encode` and bounded `decode`.
//! - `history`: the ring of sent bytes that a resume resends from (internal).
//! - [`session`]: an established session: counts, ciphers and history.
//! - [`handshake`]: client and server state machines for a new connection.
//! - [`resume`]: client and server state machines for a reconnect.
//! - [`record`]: the opt-in record layer (close and heartbeat) inside a session.
//! - [`sealed`]: the sealed suite (Noise handshake, AEAD frames, acks,
//!   authenticated resume) for rejoin-to-rejoin sessions.
//!
//! `PROTOCOL.md` at the crate root is the normative description of the bytes.

pub mod auth;
// The RC4 layer and the history are building blocks of the sessions
// below, not API: tests and benchmarks reach them with the `internals`
// feature.
#[cfg(feature = "internals")]
pub mod cipher;
#[cfg(not(feature = "internals"))]
mod cipher;
pub(crate) use self::cipher::Cipher;
pub(crate) mod copy;
pub mod dh;
pub mod handshake;
#[cfg(feature = "internals")]
pub mod history;
#[cfg(not(feature = "internals"))]
mod history;
pub mod message;
pub mod record;
pub mod resume;
pub mod sealed;
pub mod session;

pub use dh::Key;
pub use handshake::{ClientHandshake, Incoming, ServerHandshake};
pub(crate) use history::MIN_SHARED;
pub use message::{ClientHello, ReconnectRequest, ResumeReply, Welcome};
pub use resume::{ClientResume, ResumePoint, ServerResume};
pub use session::Session;
pub(crate) use session::{Inbound, Outbound};

/// The smallest history a session may be configured with.
pub const MIN_HISTORY: usize = 1024;
/// The smallest history a sealed session may be configured with: acks go
/// out every [`sealed::link::ACK_EVERY`] bytes, a quarter of it.
pub const MIN_SEALED_HISTORY: usize = 64 * 1024;
/// The largest history a session may be configured with (1 GiB).
pub const MAX_HISTORY: usize = 1 << 30;

/// Which snet wire version to speak.
///
/// v2 is what current snet peers speak (a type byte, a challenge after the
/// welcome and on every reconnect, and an explicit refusal). v1 is the older
/// format without a type byte or challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Version {
    /// The older format: 40-byte requests, no challenge, refusal is a close.
    V1,
    /// The current format.
    #[default]
    V2,
}

/// Which end of a session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The side that dials, and redials after a break.
    Client,
    /// The side that accepts, and waits for the client to come back.
    Server,
}

/// The protocol parameters of one side of a session.
///
/// `version` and `encrypt` must match the peer's: snet negotiates neither.
/// `history` and `in_flight` are this side's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The wire version.
    pub version: Version,
    /// Whether application data is RC4-encrypted (the conn ID always is).
    pub encrypt: bool,
    /// How many bytes of sent ciphertext this side keeps for resends.
    pub history: usize,
    /// The most bytes that can be lost in transit when a connection breaks:
    /// this side's send buffer, whatever the path buffers, and the peer's
    /// receive buffer. snet has no acknowledgements, so a side treats bytes it
    /// handed to the transport more than `in_flight` bytes ago as received,
    /// and never lets unconfirmed bytes exceed `history`: that is what makes a
    /// resume never fail for lack of history. Must be below `history`.
    pub in_flight: usize,
    /// The most written bytes held not yet handed to a transport: beyond it
    /// [`Session::write_capacity`] is 0 until the transport takes some.
    /// `None`: only the history bounds them.
    pub unsent_limit: Option<usize>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            version: Version::V2,
            encrypt: true,
            history: 4 << 20,
            in_flight: 2 << 20,
            unsent_limit: None,
        }
    }
}

/// Why a server turns a reconnect down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefuseReason {
    /// No session with that conn ID is waiting.
    #[error("unknown conn ID")]
    UnknownId,
    /// The tag does not match the session's key.
    #[error("authentication tag mismatch (wrong key)")]
    BadTag,
    /// The client claims to have written less than the server already read.
    #[error("client write count {client_write} is below server read count {server_read}")]
    WriteCountBelowRead {
        /// What the client says it wrote.
        client_write: u64,
        /// What the server has read.
        server_read: u64,
    },
    /// The client claims to have read more than the server ever wrote.
    #[error(
        "client read count {client_read} is above server write count {server_write}: it counts bytes it never got \
         (the stock Go snet library counts a resend twice when it reconnects before its application has read all of it)"
    )]
    ReadCountAboveWrite {
        /// What the client says it read.
        client_read: u64,
        /// What the server has written.
        server_write: u64,
    },
    /// Resending what the peer missed needs bytes the history no longer holds.
    #[error("resend of {need} bytes needed, history holds {held}")]
    HistoryTooShort {
        /// Bytes that would have to be resent.
        need: u64,
        /// Bytes the history holds.
        held: u64,
    },
    /// As [`RefuseReason::HistoryTooShort`], from a v1 peer that has sent
    /// nothing since the last resume: a stock Go v1 peer reading on past a
    /// resend (its own bug) looks like that.
    #[error(
        "resend of {need} bytes needed, history holds {held}: the peer has sent nothing since the last resume; if it is a stock Go snet v1 peer, it reads on past a resend by what its application had not yet taken, all or nothing, so cuts inside that read ask for ever more (PROTOCOL.md §1.10)"
    )]
    V1ReadsPastResend {
        /// Bytes that would have to be resent.
        need: u64,
        /// Bytes the history holds.
        held: u64,
    },
}

/// Everything the protocol core can reject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer's public key is 0, 1, p − 1 or not below p.
    #[error("degenerate public key {0:#018x}")]
    BadPublicKey(u64),
    /// The first byte of a v2 request is neither a new connection nor a reconnect.
    #[error("unknown request type {0:#04x}")]
    UnknownType(u8),
    /// A field that must be zero or well-formed is not.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The peer's MD5 answer to our challenge is wrong: it does not hold the key.
    #[error("challenge answer mismatch (peer does not hold the key)")]
    BadAnswer,
    /// The server refused our reconnect (v2 sends 24 zero bytes).
    #[error("reconnect refused by the server")]
    Refused,
    /// We refuse the peer's reconnect.
    #[error("reconnect refused: {0}")]
    Refuse(RefuseReason),
    /// The server's counts cannot be right for this session.
    #[error("impossible counts from server: {0}")]
    BadCounts(&'static str),
    /// Another resume of the session completed after this one began.
    #[error("stale resume: a newer reconnect already took over the session")]
    StaleResume,
    /// A sealed handshake message or frame failed to authenticate: the peer
    /// lacks the key, or the bytes were changed, dropped, replayed or reordered.
    #[error("authentication failed (wrong key, or the bytes were tampered with)")]
    Unauthenticated,
    /// The peer asks for something this side is not set up for.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// The server rejected a sealed new-session hello (in the clear): 1, no
    /// key for the identity; 2, the wrong key; 3, it has no static key to pin.
    #[error("the server rejected the key ({})", match .0 { 1 => "unknown identity", 2 => "wrong key", 3 => "no static key to pin", _ => "unknown reason" })]
    KeyRejected(u8),
    /// The server refused a sealed resume or session, with this status.
    #[error("refused by the server (status {0})")]
    SealedRefusal(u8),
    /// The peer's first reply cannot come from an snet or rejoin server
    /// (say, a banner or an HTTP error from some other service).
    #[error("not an snet or rejoin server: {0}")]
    NotSnet(&'static str),
    /// Our history no longer holds what the peer missed.
    #[error("history too short: resend of {need} bytes needed, history holds {held}")]
    HistoryTooShort {
        /// Bytes that would have to be resent.
        need: u64,
        /// Bytes the history holds.
        held: u64,
    },
    /// As [`Error::HistoryTooShort`], from a v1 peer that has sent nothing
    /// since the last resume: a stock Go v1 peer reading on past a resend
    /// (its own bug) looks like that.
    #[error(
        "history too short: resend of {need} bytes needed, history holds {held}: the peer has sent nothing since the last resume; if it is a stock Go snet v1 peer, it reads on past a resend by what its application had not yet taken, all or nothing, so cuts inside that read ask for ever more (PROTOCOL.md §1.10)"
    )]
    V1ReadsPastResend {
        /// Bytes that would have to be resent.
        need: u64,
        /// Bytes the history holds.
        held: u64,
    },
}

impl From<RefuseReason> for Error {
    fn from(reason: RefuseReason) -> Self {
        Error::Refuse(reason)
    }
}

/// Shorthand for results of the protocol core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
