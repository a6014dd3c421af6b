//! The sealed suite: rejoin-to-rejoin sessions with a Noise handshake, AEAD
//! frames, acknowledgements and an authenticated resume.
//!
//! ```text
//! client                                              server
//!   │ hello: kind, psk id | conn id, Noise msg 1 ───────▶ │ look up the PSK / session
//!   │ ◀─────────── welcome: Noise msg 2 (id, seed | counts)│
//!   │ confirm: first frame, ack only ───────────────────▶ │ only now: establish / commit
//!   │ ◀══════════ frames: AEAD(ack ‖ stream bytes) ══════▶ │
//! ```
//!
//! - [`exchange`]: the client and server machines for a new session and for a
//!   resume, in the crate's `handle_input` / `poll_transmit` / `poll_outcome`
//!   vocabulary. The Noise handshake itself is the `snow` crate's.
//! - [`link`]: the frames of one connection: sealing what the session has to
//!   send, opening what arrives, acknowledgements.
//!
//! Every connection runs a fresh handshake. The first one is keyed by a
//! pre-shared key (and, if the client pins it, the server's static key); a
//! resume is keyed by the session's resume secret, derived from the first
//! handshake, so only the two ends of that handshake can resume it, and a
//! recorded resume is useless (it cannot produce the confirm frame under the
//! new handshake's keys). `PROTOCOL.md` §4 is the normative description.
//!
//! Randomness: conn IDs and seeds come from the caller's RNG; the Noise
//! ephemeral keys come from `snow`'s resolver (the OS generator), or are fixed
//! for test vectors.

pub mod exchange;
pub mod link;

use std::fmt;

use hkdf::Hkdf;
use sha2::Sha256;

pub use exchange::{
    ClientExchange, ClientOutcome, Established, FixedKeys, Request, ResumeDecision, Resumed,
    ServerExchange, ServerOutcome,
};
pub use link::Link;
pub(crate) use link::{Acks, Opener, SMALL_READ};

/// Label that starts every handshake's prologue.
pub const PROLOGUE_LABEL: &[u8] = b"rejoin sealed v1";
/// Hello kind: a new session, Noise `NNpsk0` (PSK only).
pub const NEW_NN: u8 = 0x10;
/// Hello kind: a new session, Noise `IKpsk2` (PSK and the pinned server key).
pub const NEW_IK: u8 = 0x11;
/// Hello kind: a resume, `NNpsk0` keyed by the resume secret.
pub const RESUME_NN: u8 = 0x12;
/// Hello kind: a resume, `IKpsk1` keyed by the resume secret.
pub const RESUME_IK: u8 = 0x13;
/// Longest PSK identity a client may send.
pub const MAX_PSK_ID: usize = 64;
/// Longest Noise handshake message accepted (the largest we send is 128).
pub const MAX_HANDSHAKE_MESSAGE: usize = 256;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// Noise's limit on one message.
pub const MAX_NOISE_MESSAGE: usize = 65535;
/// Frame trailer inside the ciphertext: the sender's read count (the ack)
/// and the stream count up to which it can take bytes (the window).
pub const TRAILER_LEN: usize = 16;
/// The most stream bytes one frame carries.
pub const MAX_FRAME_DATA: usize = MAX_NOISE_MESSAGE - TAG_LEN - TRAILER_LEN;
/// The smallest frame on the wire (length prefix, trailer, tag).
pub const MIN_FRAME: usize = 2 + TRAILER_LEN + TAG_LEN;
/// The window each side assumes of its peer until the peer's first frame
/// says otherwise: stream counts below it may be sent at once.
pub const INITIAL_WINDOW: u64 = 64 * 1024;

/// The Noise protocol names. AES-256-GCM was measured faster than
/// ChaCha20-Poly1305 (on the AMD EPYC machine, both through `ring`);
/// frames are sealed with `aws-lc-rs`, the fastest backend measured (the
/// handshake's few small messages go through `snow`'s own RustCrypto
/// ciphers); see `docs/benchmarks.md`.
pub const NOISE_NN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// See [`NOISE_NN`].
pub const NOISE_IK: &str = "Noise_IKpsk2_25519_AESGCM_SHA256";
/// A pinned resume: the resume secret is mixed in at the end of message 1
/// (not 2, as a new session's PSK is), so that a hello the server can open
/// proves the secret, as an `NNpsk0` resume's does. Under `IKpsk2` anyone
/// with the server's public key could write a hello that opens, and earn
/// an answer (and learn whether its guessed counts were in range).
pub const NOISE_IK_RESUME: &str = "Noise_IKpsk1_25519_AESGCM_SHA256";

/// PBKDF2 rounds for [`Psk::from_passphrase`].
pub const PASSPHRASE_ROUNDS: u32 = 100_000;

/// A 32-byte pre-shared key. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(pub(crate) [u8; 32]);

impl Psk {
    /// A key from 32 secret bytes (already uniformly random).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Psk(bytes)
    }

    /// A key stretched from a passphrase with PBKDF2-HMAC-SHA-256
    /// ([`PASSPHRASE_ROUNDS`] rounds, fixed salt), so that every guess at a
    /// captured handshake costs an attacker the full stretch.
    pub fn from_passphrase(passphrase: &str) -> Self {
        Psk(pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(
            passphrase.as_bytes(),
            b"rejoin sealed psk v1",
            PASSPHRASE_ROUNDS,
        ))
    }

    /// The secret bytes (never log them).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(***)")
    }
}

/// A server's static X25519 key pair. `Debug` shows only the public half.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKey {
    private: [u8; 32],
    public: [u8; 32],
}

impl StaticKey {
    /// A fresh key pair from the OS generator.
    pub fn generate() -> Result<Self, super::Error> {
        let builder = snow::Builder::new(noise_params(NOISE_IK));
        let pair = builder
            .generate_keypair()
            .map_err(|_| super::Error::Malformed("key generation failed"))?;
        Self::from_parts(&pair.private, &pair.public)
    }

    /// The pair for a private key.
    pub fn from_private(private: [u8; 32]) -> Self {
        let public = x25519_public(&private);
        StaticKey { private, public }
    }

    fn from_parts(private: &[u8], public: &[u8]) -> Result<Self, super::Error> {
        let private: [u8; 32] = private
            .try_into()
            .map_err(|_| super::Error::Malformed("private key length"))?;
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| super::Error::Malformed("public key length"))?;
        Ok(StaticKey { private, public })
    }

    /// The public half, to pin on clients.
    pub fn public(&self) -> &[u8; 32] {
        &self.public
    }

    /// The private half (to store it; never log it).
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StaticKey {{ public: {}, private: *** }}",
            hex(&self.public)
        )
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into 32 bytes.
pub fn parse_key_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The X25519 public key of a private key, computed by the Noise library's
/// own DH implementation.
fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    let params = noise_params(NOISE_IK);
    let mut dh = DefaultResolver
        .resolve_dh(&params.dh)
        .unwrap_or_else(|| unreachable!("25519 is always resolvable"));
    dh.set(private);
    let mut public = [0u8; 32];
    public.copy_from_slice(dh.pubkey());
    public
}

pub(crate) fn noise_params(name: &str) -> snow::params::NoiseParams {
    // The two names above are constants that parse.
    name.parse()
        .unwrap_or_else(|_| unreachable!("constant Noise names parse"))
}

/// What a session keeps from its first handshake.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionSecrets {
    /// Keys every resume of the session (the PSK of its handshakes).
    pub resume: [u8; 32],
    /// A value both ends, and nobody else, share: for binding logins to it.
    pub binding: [u8; 32],
}

impl fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionSecrets(***)")
    }
}

impl SessionSecrets {
    /// Derives the secrets from the first handshake's hash and the server's
    /// seed (sent inside that handshake's encrypted payload).
    pub fn derive(handshake_hash: &[u8], seed: &[u8; 32]) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(handshake_hash), seed);
        let mut resume = [0u8; 32];
        let mut binding = [0u8; 32];
        // 32 bytes is far below HKDF-SHA-256's limit of 8160.
        hk.expand(b"rejoin sealed resume v1", &mut resume)
            .unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
        hk.expand(b"rejoin sealed binding v1", &mut binding)
            .unwrap_or_else(|_| unreachable!("32-byte HKDF output"));
        SessionSecrets { resume, binding }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let psk = Psk::from_bytes([7; 32]);
        assert_eq!(format!("{psk:?}"), "Psk(***)");
        let key = StaticKey::from_private([9; 32]);
        let shown = format!("{key:?}");
        assert!(shown.contains(&hex(key.public())));
        assert!(!shown.contains(&hex(key.private())));
        assert_eq!(
            format!("{:?}", SessionSecrets::derive(b"h", &[1; 32])),
            "SessionSecrets(***)"
        );
    }

    #[test]
    fn static_keys_round_trip() {
        let key = StaticKey::generate().unwrap();
        assert_eq!(StaticKey::from_private(*key.private()), key);
        assert_eq!(parse_key_hex(&hex(key.public())), Some(*key.public()));
        assert_eq!(parse_key_hex("zz"), None);
        assert_eq!(parse_key_hex(&"g".repeat(64)), None);
        assert_eq!(parse_key_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn secrets_depend_on_hash_and_seed() {
        let a = SessionSecrets::derive(b"hash", &[1; 32]);
        assert_ne!(a.resume, a.binding);
        assert_ne!(a, SessionSecrets::derive(b"hasH", &[1; 32]));
        assert_ne!(a, SessionSecrets::derive(b"hash", &[2; 32]));
    }
}
