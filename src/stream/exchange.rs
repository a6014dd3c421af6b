//! One driver for every exchange before data flows: the compatible suite's
//! handshake and resume, the sealed suite's, client and server.
//!
//! Each machine speaks the protocol core's vocabulary (`handle_input`,
//! `poll_transmit`, `poll_outcome`); [`drive`] moves its bytes over a
//! transport until it has an outcome.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::sealed::{ClientExchange, ClientOutcome, Request, ServerExchange, ServerOutcome};
use crate::proto::{
    self, ClientHandshake, ClientResume, Incoming, ResumePoint, ServerHandshake, ServerResume,
    Session,
};

/// A sans-IO exchange.
pub(crate) trait Exchange {
    /// What it ends in.
    type Outcome;
    /// Consumes what it can of `input`; an error means: close.
    fn handle_input(&mut self, input: &mut BytesMut) -> proto::Result<()>;
    /// Bytes to send now.
    fn poll_transmit(&mut self) -> Option<Bytes>;
    /// The outcome, once there is one.
    fn poll_outcome(&mut self) -> Option<Self::Outcome>;
}

/// Why an exchange stopped without an outcome.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The peer closed the transport first.
    Closed,
    /// The transport failed.
    Io(io::Error),
    /// The peer broke the protocol (or failed to authenticate).
    Protocol(proto::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

/// Runs `exchange` over `io` until it has an outcome: sends what it has,
/// flushes once it is done, reads into `buf` (whose unconsumed bytes stay
/// there for whatever comes next).
pub(crate) async fn drive<T, E>(
    io: &mut T,
    exchange: &mut E,
    buf: &mut BytesMut,
) -> Result<E::Outcome, Stop>
where
    T: AsyncRead + AsyncWrite + Unpin,
    E: Exchange,
{
    loop {
        if let Some(out) = exchange.poll_transmit() {
            io.write_all(&out).await?;
        }
        if let Some(outcome) = exchange.poll_outcome() {
            io.flush().await?;
            return Ok(outcome);
        }
        if io.read_buf(buf).await? == 0 {
            return Err(Stop::Closed);
        }
        exchange.handle_input(buf).map_err(Stop::Protocol)?;
    }
}

/// Sends whatever `exchange` has left to send (a refusal), ignoring errors.
pub(crate) async fn send_rest<T, E>(io: &mut T, exchange: &mut E)
where
    T: AsyncWrite + Unpin,
    E: Exchange,
{
    if let Some(out) = exchange.poll_transmit() {
        let _ = io.write_all(&out).await;
    }
    let _ = io.shutdown().await;
}

macro_rules! exchange {
    ($ty:ty, $outcome:ty) => {
        impl Exchange for $ty {
            type Outcome = $outcome;
            fn handle_input(&mut self, input: &mut BytesMut) -> proto::Result<()> {
                <$ty>::handle_input(self, input)
            }
            fn poll_transmit(&mut self) -> Option<Bytes> {
                <$ty>::poll_transmit(self)
            }
            fn poll_outcome(&mut self) -> Option<$outcome> {
                <$ty>::poll_outcome(self)
            }
        }
    };
}

exchange!(ClientHandshake, Session);
exchange!(ClientResume, proto::Result<ResumePoint>);
exchange!(ServerResume, proto::Result<ResumePoint>);
exchange!(ClientExchange, proto::Result<ClientOutcome>);
exchange!(ServerExchange, ServerOutcome);

impl Exchange for ServerHandshake {
    type Outcome = Incoming;
    fn handle_input(&mut self, input: &mut BytesMut) -> proto::Result<()> {
        ServerHandshake::handle_input(self, input, &mut rand::rng())
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        ServerHandshake::poll_transmit(self)
    }
    fn poll_outcome(&mut self) -> Option<Incoming> {
        ServerHandshake::poll_outcome(self)
    }
}

/// The first part of a sealed server exchange: up to the client's request.
pub(crate) struct Hello<'a>(pub &'a mut ServerExchange);

impl Exchange for Hello<'_> {
    type Outcome = Request;
    fn handle_input(&mut self, input: &mut BytesMut) -> proto::Result<()> {
        self.0.handle_input(input)
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        None
    }
    fn poll_outcome(&mut self) -> Option<Request> {
        self.0.poll_request().cloned()
    }
}
