//! snet's MD5 tags: `MD5(data ‖ key)`, compared in constant time.
//!
//! The construction is a secret-suffix MD5 under a 64-bit key; it is what the
//! wire protocol uses, not a MAC one would choose (see `PROTOCOL.md`).

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::Key;

/// A 16-byte MD5 tag.
pub type Tag = [u8; 16];

/// `MD5(parts[0] ‖ parts[1] ‖ … ‖ key)`.
pub fn tag(parts: &[&[u8]], key: &Key) -> Tag {
    let mut md5 = Md5::new();
    for part in parts {
        md5.update(part);
    }
    md5.update(key.as_bytes());
    md5.finalize().into()
}

/// The answer to a challenge: `MD5(challenge ‖ key)`.
pub fn answer(challenge: &[u8; 8], key: &Key) -> Tag {
    tag(&[challenge], key)
}

/// The tag of a reconnect request: `MD5(id ‖ write count ‖ read count ‖ key)`,
/// all three as u64 little-endian.
pub fn reconnect_tag(id: u64, write_count: u64, read_count: u64, key: &Key) -> Tag {
    tag(
        &[
            &id.to_le_bytes(),
            &write_count.to_le_bytes(),
            &read_count.to_le_bytes(),
        ],
        key,
    )
}

/// Constant-time equality of two tags.
pub fn tags_equal(a: &Tag, b: &Tag) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key(0x77f2_18e7_f4a4_25ef_u64.to_le_bytes())
    }

    #[test]
    fn vectors() {
        let a = answer(&[1, 2, 3, 4, 5, 6, 7, 8], &key());
        assert_eq!(hex::encode(a), "fddb0946146022e2a5ca4955c4f1f8ce");
        let a = answer(&[0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18], &key());
        assert_eq!(hex::encode(a), "d6dbde4fa74ffaf63449d6ca3a4c1f0b");
        let t = reconnect_tag(1, 10, 4, &key());
        assert_eq!(hex::encode(t), "3e7d28bcc12241ceae9d641c09e832e7");
    }

    #[test]
    fn comparison() {
        let t = reconnect_tag(1, 10, 4, &key());
        assert!(tags_equal(&t, &t));
        let mut u = t;
        u[15] ^= 1;
        assert!(!tags_equal(&t, &u));
    }
}
