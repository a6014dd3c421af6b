//! New-connection state machines.
//!
//! Both machines share one vocabulary: feed received bytes to `handle_input`
//! (it consumes what it can decode and leaves the rest, which belongs to the
//! session), send whatever `poll_transmit` returns, and take the result from
//! `poll_outcome` once it is `Some`. An `Err` from `handle_input` means: close
//! the connection.
//!
//! ```text
//! client                                server
//!   │ hello: [type] client public ────────▶ │
//!   │ ◀──── welcome: public, id^ks, [chal]  │
//!   │ [v2] answer: MD5(chal ‖ key) ───────▶ │ verify, else close
//!   established                           established
//! ```

use bytes::{Bytes, BytesMut};
use rand::CryptoRng;

use super::auth::{self, tags_equal};
use super::cipher::{client_ciphers, server_ciphers};
use super::dh::KeyPair;
use super::message::{Answer, ClientHello, ReconnectRequest, Welcome};
use super::{Error, Params, Result, Role, Session, Version};

/// Draws a challenge that is never all zero (an all-zero v2 resume reply
/// would read as a refusal).
pub(crate) fn challenge<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; 8] {
    loop {
        let c = rng.next_u64();
        if c != 0 {
            return c.to_le_bytes();
        }
    }
}

enum ClientState {
    AwaitWelcome(KeyPair),
    Done,
}

/// The client side of a new connection.
pub struct ClientHandshake {
    params: Params,
    extended: bool,
    state: ClientState,
    transmit: BytesMut,
    outcome: Option<Session>,
}

impl ClientHandshake {
    /// Starts a handshake; the hello is ready in `poll_transmit`.
    ///
    /// `extended` asks for rejoin's record layer (v2 only; ignored for v1).
    pub fn new<R: CryptoRng + ?Sized>(params: Params, extended: bool, rng: &mut R) -> Self {
        let pair = KeyPair::generate(rng);
        Self::with_key_pair(params, extended, pair)
    }

    /// Starts a handshake with a fixed key pair (test vectors).
    pub fn with_key_pair(params: Params, extended: bool, pair: KeyPair) -> Self {
        let extended = extended && params.version == Version::V2;
        let mut transmit = BytesMut::new();
        ClientHello::New {
            public: pair.public(),
            extended,
        }
        .encode(params.version, &mut transmit);
        ClientHandshake {
            params,
            extended,
            state: ClientState::AwaitWelcome(pair),
            transmit,
            outcome: None,
        }
    }

    /// Consumes the server's welcome when it is complete.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<()> {
        let ClientState::AwaitWelcome(pair) = &self.state else {
            return Ok(());
        };
        let Some(welcome) = Welcome::decode(self.params.version, input)? else {
            return Ok(());
        };
        // A v2 server says nothing more until it has our answer: more bytes
        // mean something else is talking (a banner, an HTTP error page).
        if self.params.version == Version::V2 && !input.is_empty() {
            return Err(Error::NotSnet(
                "it sent more than a welcome before our answer",
            ));
        }
        let key = pair.agree(welcome.public)?;
        let (ciphers, id) = client_ciphers(&key, self.params.encrypt, welcome.encrypted_id);
        if let Some(challenge) = welcome.challenge {
            Answer(auth::answer(&challenge, &key)).encode(&mut self.transmit);
        }
        self.state = ClientState::Done;
        self.outcome = Some(Session::new(
            Role::Client,
            id,
            key,
            self.params,
            self.extended,
            ciphers,
        ));
        Ok(())
    }

    /// Bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// The established session, once the welcome is in (send any pending
    /// transmit first: it holds the v2 answer).
    pub fn poll_outcome(&mut self) -> Option<Session> {
        self.outcome.take()
    }
}

/// What a server learns from the first message of a connection.
#[derive(Debug)]
// Made once per connection and moved straight out: boxing the session
// would only add an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    /// A new session, established (v2: the client proved the key).
    Session(Session),
    /// A reconnect for the session with this ID; see [`super::ServerResume`].
    Reconnect(ReconnectRequest),
}

enum ServerState {
    AwaitHello,
    AwaitAnswer {
        expected: auth::Tag,
        session: Box<Session>,
    },
    Done,
}

/// The server side of a connection's first exchange: a new session or the
/// start of a reconnect.
pub struct ServerHandshake {
    params: Params,
    id: u64,
    state: ServerState,
    transmit: BytesMut,
    outcome: Option<Incoming>,
}

impl ServerHandshake {
    /// Waits for a client hello. `id` is the conn ID a new session gets (the
    /// caller keeps IDs unique and unguessable; it must be non-zero).
    pub fn new(params: Params, id: u64) -> Self {
        ServerHandshake {
            params,
            id,
            state: ServerState::AwaitHello,
            transmit: BytesMut::new(),
            outcome: None,
        }
    }

    /// Consumes what it can decode: the hello, then (v2) the answer.
    pub fn handle_input<R: CryptoRng + ?Sized>(
        &mut self,
        input: &mut BytesMut,
        rng: &mut R,
    ) -> Result<()> {
        self.handle_input_with(input, || (KeyPair::generate(rng), challenge(rng)))
    }

    /// As [`ServerHandshake::handle_input`], with the key pair and the
    /// challenge (unused by v1) supplied: test vectors.
    pub fn handle_input_with(
        &mut self,
        input: &mut BytesMut,
        fresh: impl FnOnce() -> (KeyPair, [u8; 8]),
    ) -> Result<()> {
        if let ServerState::AwaitHello = self.state {
            let Some(hello) = ClientHello::decode(self.params.version, input)? else {
                return Ok(());
            };
            let (public, extended) = match hello {
                ClientHello::Reconnect(request) => {
                    self.state = ServerState::Done;
                    self.outcome = Some(Incoming::Reconnect(request));
                    return Ok(());
                }
                ClientHello::New { public, extended } => (public, extended),
            };
            let (pair, challenge) = fresh();
            let key = pair.agree(public)?;
            let (ciphers, encrypted_id) = server_ciphers(&key, self.params.encrypt, self.id);
            let session = Session::new(Role::Server, self.id, key, self.params, extended, ciphers);
            let challenge = (self.params.version == Version::V2).then_some(challenge);
            Welcome {
                public: pair.public(),
                encrypted_id,
                challenge,
            }
            .encode(&mut self.transmit);
            match challenge {
                Some(challenge) => {
                    self.state = ServerState::AwaitAnswer {
                        expected: auth::answer(&challenge, &key),
                        session: Box::new(session),
                    };
                }
                None => {
                    self.state = ServerState::Done;
                    self.outcome = Some(Incoming::Session(session));
                    return Ok(());
                }
            }
        }
        if let ServerState::AwaitAnswer { expected, .. } = &self.state {
            let Some(Answer(got)) = Answer::decode(input)? else {
                return Ok(());
            };
            if !tags_equal(expected, &got) {
                return Err(Error::BadAnswer);
            }
            let state = std::mem::replace(&mut self.state, ServerState::Done);
            if let ServerState::AwaitAnswer { session, .. } = state {
                self.outcome = Some(Incoming::Session(*session));
            }
        }
        Ok(())
    }

    /// Bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.transmit.is_empty()).then(|| self.transmit.split().freeze())
    }

    /// What the connection turned out to be, once known.
    pub fn poll_outcome(&mut self) -> Option<Incoming> {
        self.outcome.take()
    }
}
