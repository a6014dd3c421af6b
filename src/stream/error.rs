//! The stream's typed errors, and how they surface as `io::Error`.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::proto;
use crate::proto::sealed::exchange::{REJECT_BAD_KEY, REJECT_UNKNOWN_ID};

/// Why a stream failed. At the `AsyncRead`/`AsyncWrite` boundary it becomes an
/// [`io::Error`] with a matching [`io::ErrorKind`] and this inside;
/// [`Error::from_io`] gets it back. Messages include their cause.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server turned our reconnect down: it closed the session, the
    /// session expired, or it never had it.
    #[error("the server refused to resume the session (closed, expired or unknown)")]
    Refused,
    /// A v1 server closed every reconnect, having sent nothing since the last
    /// resume: what a stock Go snet v1 server does after waiting for bytes
    /// past a resend that nobody writes (`PROTOCOL.md` §1.10, bug 2).
    #[error(
        "the v1 server closed every reconnect and sent nothing since the last resume: a stock Go snet v1 server \
         does that after waiting for bytes past a resend that nobody writes (its own bug, PROTOCOL.md §1.10)"
    )]
    V1ServerWaited,
    /// Server: the client did not come back in time.
    #[error("session expired: the client did not reconnect within {0:?}")]
    Expired(Duration),
    /// Client: no reconnect succeeded in time.
    #[error("gave up reconnecting after {0:?}")]
    GaveUp(Duration),
    /// A resume needs bytes the history no longer holds.
    #[error("cannot resume: {need} bytes must be resent but the history holds {held}")]
    HistoryTooShort {
        /// Bytes that would have to be resent.
        need: u64,
        /// Bytes the history holds.
        held: u64,
    },
    /// As [`Error::HistoryTooShort`], where a stock Go snet v1 peer's read
    /// on past a resend was cut (`PROTOCOL.md` §1.10, bug 2).
    #[error(
        "cannot resume: {need} bytes must be resent but the history holds {held}: the peer has sent nothing since the last resume; if it is a stock Go snet v1 peer, it reads on past a resend by what its application had not yet taken, all or nothing, so cuts inside that read ask for ever more (PROTOCOL.md §1.10)"
    )]
    V1ReadsPastResend {
        /// Bytes that would have to be resent.
        need: u64,
        /// Bytes the history holds.
        held: u64,
    },
    /// The handshake failed: wrong key, bad public key, garbage.
    #[error("handshake failed: {0}")]
    Handshake(proto::Error),
    /// The handshake did not complete in time.
    #[error(
        "handshake timed out after {0:?}: the peer is connected but did not complete it (does it speak this protocol, with the same suite?)"
    )]
    HandshakeTimeout(Duration),
    /// A configured limit was reached.
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
    /// The peer broke the protocol after the handshake.
    #[error("protocol violation: {0}")]
    Protocol(proto::Error),
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    /// The stream was closed (written to after shutdown, or used after the
    /// session ended).
    #[error("the stream is closed")]
    Closed,
    /// The transport failed where no retry applies (the first connection).
    #[error("transport: {0}")]
    Transport(Arc<io::Error>),
    /// The session's driver stopped without ending the session (a bug:
    /// reported rather than leaving reads and writes waiting forever).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    /// The matching `io::ErrorKind`.
    pub fn kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        match self {
            Error::Refused | Error::V1ServerWaited => K::ConnectionRefused,
            Error::Expired(_) | Error::GaveUp(_) | Error::HandshakeTimeout(_) => K::TimedOut,
            Error::HistoryTooShort { .. }
            | Error::V1ReadsPastResend { .. }
            | Error::LimitReached(_) => K::ConnectionAborted,
            // A wrong key: a compatible reconnect's tag, a sealed server's
            // refusal of an identity or its key, or a sealed answer that
            // does not open (a server that lacks the PSK or the pinned key).
            Error::Handshake(
                proto::Error::BadAnswer
                | proto::Error::KeyRejected(REJECT_UNKNOWN_ID | REJECT_BAD_KEY)
                | proto::Error::Unauthenticated,
            ) => K::PermissionDenied,
            Error::Handshake(_) | Error::Protocol(_) => K::InvalidData,
            Error::Config(_) => K::InvalidInput,
            Error::Closed => K::BrokenPipe,
            Error::Transport(e) => e.kind(),
            Error::Internal(_) => K::Other,
        }
    }

    /// The stream error inside an `io::Error` from this crate, if any.
    pub fn from_io(e: &io::Error) -> Option<&Error> {
        e.get_ref()?.downcast_ref::<Error>()
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Transport(Arc::new(e))
    }
}

impl From<proto::Error> for Error {
    fn from(e: proto::Error) -> Self {
        match e {
            proto::Error::Refused => Error::Refused,
            proto::Error::HistoryTooShort { need, held } => Error::HistoryTooShort { need, held },
            proto::Error::V1ReadsPastResend { need, held } => {
                Error::V1ReadsPastResend { need, held }
            }
            other => Error::Protocol(other),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::new(e.kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_the_io_boundary() {
        let e: io::Error = Error::Refused.into();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(matches!(Error::from_io(&e), Some(Error::Refused)));
        let e: io::Error = Error::Expired(Duration::from_secs(3)).into();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("3s"));
        assert!(Error::from_io(&io::Error::other("x")).is_none());
    }
}
