//! dh64: Diffie–Hellman over the integers modulo p = 2^64 − 59 with g = 5.
//!
//! This is the group snet uses. It is far too small to resist a determined
//! observer (see `PROTOCOL.md`, "Security"); it is here for compatibility.

use std::fmt;

use num_bigint::BigUint;
use rand::CryptoRng;

use super::{Error, Result};

/// The prime modulus, 2^64 − 59.
pub const P: u64 = 0xffff_ffff_ffff_ffc5;
/// The generator.
pub const G: u64 = 5;

/// `base^exp mod P`, on num-bigint.
fn pow_mod_p(base: u64, exp: u64) -> u64 {
    let r = BigUint::from(base).modpow(&BigUint::from(exp), &BigUint::from(P));
    // The result is below P < 2^64, so it always fits.
    u64::try_from(&r).unwrap_or_else(|_| unreachable!("value below 2^64 - 59"))
}

/// A public key is usable only if it is in the group and not in a subgroup of
/// order 1 or 2 (0, 1 and p − 1 would force a known shared secret).
fn check_public(public: u64) -> Result<()> {
    if public <= 1 || public >= P - 1 {
        return Err(Error::BadPublicKey(public));
    }
    Ok(())
}

/// The 8-byte session key: the shared secret as little-endian bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key(pub(crate) [u8; 8]);

impl Key {
    /// A key from its bytes (for test vectors; real keys come from
    /// [`KeyPair::agree`]).
    pub fn from_bytes(bytes: [u8; 8]) -> Key {
        Key(bytes)
    }

    /// The key bytes, as fed to RC4 and appended to every MD5 tag input.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// A dh64 private key with its public half.
pub struct KeyPair {
    private: u64,
    public: u64,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &format_args!("{:#018x}", self.public))
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Draws a private key from `rng` (the OS CSPRNG in production).
    pub fn generate<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        loop {
            let private = rng.next_u64();
            if private == 0 {
                continue;
            }
            let pair = Self::from_private(private);
            if check_public(pair.public).is_ok() {
                return pair;
            }
        }
    }

    /// A key pair from a fixed private key (test vectors, replay).
    ///
    /// `private` must be non-zero; a zero key is replaced by 1 rather than
    /// producing the invalid public key 1.
    pub fn from_private(private: u64) -> Self {
        let private = private.max(1);
        KeyPair {
            private,
            public: pow_mod_p(G, private),
        }
    }

    /// g^private mod p.
    pub fn public(&self) -> u64 {
        self.public
    }

    /// Agrees the session key with the peer's public key, refusing degenerate ones.
    pub fn agree(&self, peer_public: u64) -> Result<Key> {
        check_public(peer_public)?;
        Ok(Key(pow_mod_p(peer_public, self.private).to_le_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn vectors() {
        let client = KeyPair::from_private(0x0123_4567_89ab_cdef);
        let server = KeyPair::from_private(0x0fed_cba9_8765_4321);
        assert_eq!(client.public(), 0x445f_ea74_f4a7_a181);
        assert_eq!(server.public(), 0x0aed_9379_2dcb_66e9);
        let k1 = client.agree(server.public()).unwrap();
        let k2 = server.agree(client.public()).unwrap();
        assert_eq!(k1, k2);
        assert_eq!(k1.0, 0x77f2_18e7_f4a4_25ef_u64.to_le_bytes());
        assert_eq!(hex::encode(k1.0), "ef25a4f4e718f277");
    }

    #[test]
    fn degenerate_keys_refused() {
        let pair = KeyPair::from_private(42);
        for bad in [0, 1, P - 1, P, P + 1, u64::MAX] {
            assert_eq!(pair.agree(bad), Err(Error::BadPublicKey(bad)), "{bad:#x}");
        }
        assert!(pair.agree(2).is_ok());
        assert!(pair.agree(P - 2).is_ok());
    }

    #[test]
    fn generated_pairs_agree() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..32 {
            let a = KeyPair::generate(&mut rng);
            let b = KeyPair::generate(&mut rng);
            assert_eq!(a.agree(b.public()).unwrap(), b.agree(a.public()).unwrap());
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let pair = KeyPair::from_private(0x0123_4567_89ab_cdef);
        assert!(!format!("{pair:?}").contains("123456789abcdef"));
        let key = pair.agree(5).unwrap();
        assert_eq!(format!("{key:?}"), "Key(..)");
    }
}
