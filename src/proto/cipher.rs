//! RC4 with snet's keystream layout.
//!
//! Each side holds two RC4 states, both keyed with the 8-byte session key: one
//! for what it writes, one for what it reads. The server encrypts the conn ID
//! with the first 8 bytes of its write keystream, and the client decrypts it
//! with its read state, so client→server data uses keystream offsets 0.. and
//! server→client data offsets 8... RC4 is never re-keyed; after a reconnect
//! both states simply continue.
//!
//! With encryption off, the conn ID is still encrypted (the handshake is
//! byte-identical) and data passes in clear.

use std::fmt;

use rc4::{KeyInit, Rc4, StreamCipher};

use super::Key;

/// One direction's transform: RC4 or the identity.
pub enum Cipher {
    /// RC4 keyed with the session key.
    Rc4(Box<Rc4>),
    /// Data passes in clear.
    Plain,
}

impl fmt::Debug for Cipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cipher::Rc4(_) => f.write_str("Cipher::Rc4(..)"),
            Cipher::Plain => f.write_str("Cipher::Plain"),
        }
    }
}

fn rc4(key: &Key) -> Box<Rc4> {
    // RC4 accepts keys of 1 to 256 bytes; ours is always 8.
    Box::new(Rc4::new_from_slice(key.as_bytes()).unwrap_or_else(|_| unreachable!("8-byte key")))
}

impl Cipher {
    /// Transforms `buf` in place.
    pub fn apply(&mut self, buf: &mut [u8]) {
        if let Cipher::Rc4(state) = self {
            state.apply_keystream(buf);
        }
    }

    /// Transforms `input` into `output` (same length).
    pub fn apply_into(&mut self, input: &[u8], output: &mut [u8]) {
        match self {
            Cipher::Rc4(state) => state.apply_keystream_b2b(input, output),
            Cipher::Plain => super::copy::copy(input, output),
        }
    }

    /// Whether this transform is RC4.
    pub fn is_encrypting(&self) -> bool {
        matches!(self, Cipher::Rc4(_))
    }
}

/// A side's two transforms.
#[derive(Debug)]
pub struct Ciphers {
    /// Applied to everything this side writes.
    pub write: Cipher,
    /// Applied to everything this side reads.
    pub read: Cipher,
}

/// The server's ciphers and the encrypted conn ID it sends in its welcome.
pub fn server_ciphers(key: &Key, encrypt: bool, conn_id: u64) -> (Ciphers, [u8; 8]) {
    let mut id = conn_id.to_le_bytes();
    let mut write = rc4(key);
    write.apply_keystream(&mut id);
    let ciphers = if encrypt {
        Ciphers {
            write: Cipher::Rc4(write),
            read: Cipher::Rc4(rc4(key)),
        }
    } else {
        Ciphers {
            write: Cipher::Plain,
            read: Cipher::Plain,
        }
    };
    (ciphers, id)
}

/// The client's ciphers and the conn ID decrypted from the server's welcome.
pub fn client_ciphers(key: &Key, encrypt: bool, encrypted_id: [u8; 8]) -> (Ciphers, u64) {
    let mut id = encrypted_id;
    let mut read = rc4(key);
    read.apply_keystream(&mut id);
    let ciphers = if encrypt {
        Ciphers {
            write: Cipher::Rc4(rc4(key)),
            read: Cipher::Rc4(read),
        }
    } else {
        Ciphers {
            write: Cipher::Plain,
            read: Cipher::Plain,
        }
    };
    (ciphers, u64::from_le_bytes(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key(0x77f2_18e7_f4a4_25ef_u64.to_le_bytes())
    }

    #[test]
    fn keystream_vector() {
        let mut ks = [0u8; 32];
        rc4(&key()).apply_keystream(&mut ks);
        assert_eq!(
            hex::encode(ks),
            "76a0641cc61ef34be500a2cc7a83b784840549c7859e14351169b2c2786a0ba0"
        );
    }

    #[test]
    fn layout_matches_snet() {
        let (mut server, enc_id) = server_ciphers(&key(), true, 1);
        assert_eq!(hex::encode(enc_id), "77a0641cc61ef34b");
        let (mut client, id) = client_ciphers(&key(), true, enc_id);
        assert_eq!(id, 1);

        let mut up = *b"hello snet";
        client.write.apply(&mut up);
        assert_eq!(hex::encode(up), "1ec50870a93e80258074");
        server.read.apply(&mut up);
        assert_eq!(&up, b"hello snet");

        let mut down = [0u8; 10];
        server.write.apply_into(b"hello snet", &mut down);
        assert_eq!(hex::encode(down), "8d65cea015a3c4eae171");
        client.read.apply(&mut down);
        assert_eq!(&down, b"hello snet");
    }

    #[test]
    fn plain_mode_still_hides_the_id() {
        let (mut server, enc_id) = server_ciphers(&key(), false, 1);
        assert_eq!(hex::encode(enc_id), "77a0641cc61ef34b");
        let (client, id) = client_ciphers(&key(), false, enc_id);
        assert_eq!(id, 1);
        assert!(!client.write.is_encrypting());
        let mut data = *b"hello snet";
        server.write.apply(&mut data);
        assert_eq!(&data, b"hello snet");
    }
}
