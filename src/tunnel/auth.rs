//! Tunnel login: the token never crosses the wire.
//!
//! Both sides stretch the token once into a key (PBKDF2-HMAC-SHA-256), then
//! prove they hold it with HMAC-SHA-256 over both sides' fresh nonces, the
//! client's name and the stream's channel binding (`PROTOCOL.md` §3.3). A
//! recorded login is useless later (new nonces every time), useless on another
//! session (the binding differs, so a man in the middle cannot relay it), and
//! gives an observer nothing better than guessing tokens, each guess costing
//! the full key stretch.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Why a login is refused, whether the token is wrong or the name unknown:
/// the same words either way, so that a refusal does not tell which client
/// names a server has. (Its own counters and logs tell them apart.)
pub const BAD_TOKEN: &str = "bad token, or a client name the server does not know";

/// PBKDF2 rounds for stretching a token.
pub const ROUNDS: u32 = 100_000;
const SALT: &[u8] = b"rejoin tunnel token v1";

/// A tunnel token: a shared secret. `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token string.
    pub fn new(token: impl Into<String>) -> Self {
        Token(token.into())
    }

    /// The secret itself (for writing a config; never log it).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Stretches the token into the login key.
    pub fn key(&self) -> LoginKey {
        LoginKey(pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(
            self.0.as_bytes(),
            SALT,
            ROUNDS,
        ))
    }

    /// A fresh random token: 32 bytes from the OS generator, as hex.
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Token(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The key a token stretches into. `Debug` does not show it.
#[derive(Clone)]
pub struct LoginKey([u8; 32]);

impl fmt::Debug for LoginKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginKey(***)")
    }
}

/// What a login proof covers.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// The stream's channel binding.
    pub binding: &'a [u8; 32],
    /// The server's nonce.
    pub server_nonce: &'a [u8; 32],
    /// The client's nonce.
    pub client_nonce: &'a [u8; 32],
    /// The client's name.
    pub name: &'a str,
}

impl LoginKey {
    /// The PSK of the link's sealed handshake, derived from the stretched
    /// token, so a captured handshake costs an attacker the full stretch per
    /// guessed token.
    pub fn psk(&self) -> crate::proto::sealed::Psk {
        use sha2::Digest;
        let digest = Sha256::new()
            .chain_update(b"rejoin tunnel psk v1")
            .chain_update(self.0)
            .finalize();
        crate::proto::sealed::Psk::from_bytes(digest.into())
    }

    fn proof(&self, label: &[u8], t: &Transcript<'_>) -> [u8; 32] {
        // An HMAC key of any length is valid.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(label);
        mac.update(t.binding);
        mac.update(t.server_nonce);
        mac.update(t.client_nonce);
        mac.update(&[t.name.len() as u8]);
        mac.update(t.name.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The client's proof.
    pub fn client_proof(&self, t: &Transcript<'_>) -> [u8; 32] {
        self.proof(b"rejoin login client", t)
    }

    /// The server's proof.
    pub fn server_proof(&self, t: &Transcript<'_>) -> [u8; 32] {
        self.proof(b"rejoin login server", t)
    }
}

/// Constant-time comparison of two proofs.
pub fn proofs_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(binding: &'a [u8; 32], s: &'a [u8; 32], c: &'a [u8; 32]) -> Transcript<'a> {
        Transcript {
            binding,
            server_nonce: s,
            client_nonce: c,
            name: "home",
        }
    }

    #[test]
    fn proofs_depend_on_everything() {
        let key = Token::new("secret").key();
        let (b, s, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let base = key.client_proof(&t(&b, &s, &c));
        assert_eq!(
            base,
            Token::new("secret").key().client_proof(&t(&b, &s, &c))
        );
        assert_ne!(base, key.server_proof(&t(&b, &s, &c)), "roles differ");
        assert_ne!(
            base,
            Token::new("secreT").key().client_proof(&t(&b, &s, &c))
        );
        assert_ne!(base, key.client_proof(&t(&[9; 32], &s, &c)), "binding");
        assert_ne!(base, key.client_proof(&t(&b, &[9; 32], &c)), "server nonce");
        assert_ne!(base, key.client_proof(&t(&b, &s, &[9; 32])), "client nonce");
        let mut other = t(&b, &s, &c);
        other.name = "hom";
        assert_ne!(base, key.client_proof(&other), "name");
        assert!(proofs_equal(&base, &base));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let token = Token::new("hunter2");
        assert_eq!(format!("{token:?}"), "Token(***)");
        assert_eq!(format!("{:?}", token.key()), "LoginKey(***)");
        let generated = Token::generate();
        assert_eq!(generated.expose().len(), 64);
    }
}
