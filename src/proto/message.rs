//! The handshake messages, with pure `encode` and bounded `decode`.
//!
//! Every message has a fixed size per version, so `decode` never allocates:
//! it returns `Ok(None)` while fewer bytes than the message needs are
//! buffered (consuming nothing), and otherwise consumes exactly one message.
//! All integers are u64 little-endian.

use bytes::{Buf, BufMut};

use super::auth::Tag;
use super::{Error, Result, Version};

/// v2 type byte of a new connection.
pub const TYPE_NEW: u8 = 0x00;
/// v2 type byte of a new connection that turns on rejoin's record layer
/// (an extension stock snet peers do not know; see `PROTOCOL.md`).
pub const TYPE_NEW_EXTENDED: u8 = 0x01;
/// v2 type byte of a reconnect.
pub const TYPE_RECONNECT: u8 = 0xFF;

/// Length of a v1 client request.
pub const V1_HELLO_LEN: usize = 40;
/// Length of a reconnect request body (id, write count, read count, tag).
pub const RECONNECT_BODY_LEN: usize = 40;
/// Length of a challenge answer.
pub const ANSWER_LEN: usize = 16;

fn get_array<const N: usize>(buf: &mut impl Buf) -> [u8; N] {
    let mut out = [0u8; N];
    buf.copy_to_slice(&mut out);
    out
}

/// A client's reconnect request: who it is, what it counted, and a tag proving
/// it holds the session key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectRequest {
    /// The conn ID the server assigned.
    pub id: u64,
    /// Bytes the client has written in this session.
    pub write_count: u64,
    /// Bytes the client has received in this session.
    pub read_count: u64,
    /// `MD5(id ‖ write count ‖ read count ‖ key)`.
    pub tag: Tag,
}

impl ReconnectRequest {
    fn encode_body(&self, buf: &mut impl BufMut) {
        buf.put_u64_le(self.id);
        buf.put_u64_le(self.write_count);
        buf.put_u64_le(self.read_count);
        buf.put_slice(&self.tag);
    }

    fn decode_body(buf: &mut impl Buf) -> Self {
        ReconnectRequest {
            id: buf.get_u64_le(),
            write_count: buf.get_u64_le(),
            read_count: buf.get_u64_le(),
            tag: get_array(buf),
        }
    }
}

/// The first message on every connection, client to server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHello {
    /// Open a new session.
    New {
        /// The client's dh64 public key.
        public: u64,
        /// Whether the client asks for rejoin's record layer (v2 only).
        extended: bool,
    },
    /// Resume an existing session.
    Reconnect(ReconnectRequest),
}

impl ClientHello {
    /// The encoded length of this message.
    pub fn len(&self, version: Version) -> usize {
        match (version, self) {
            (Version::V1, _) => V1_HELLO_LEN,
            (Version::V2, ClientHello::New { .. }) => 9,
            (Version::V2, ClientHello::Reconnect(_)) => 1 + RECONNECT_BODY_LEN,
        }
    }

    /// Writes the message.
    pub fn encode(&self, version: Version, buf: &mut impl BufMut) {
        match (version, self) {
            (Version::V2, ClientHello::New { public, extended }) => {
                buf.put_u8(if *extended {
                    TYPE_NEW_EXTENDED
                } else {
                    TYPE_NEW
                });
                buf.put_u64_le(*public);
            }
            (Version::V2, ClientHello::Reconnect(req)) => {
                buf.put_u8(TYPE_RECONNECT);
                req.encode_body(buf);
            }
            (Version::V1, ClientHello::New { public, .. }) => {
                buf.put_u64_le(0);
                buf.put_u64_le(*public);
                buf.put_bytes(0, 24);
            }
            (Version::V1, ClientHello::Reconnect(req)) => req.encode_body(buf),
        }
    }

    /// Reads the message, or `Ok(None)` if more bytes are needed.
    pub fn decode(version: Version, buf: &mut impl Buf) -> Result<Option<Self>> {
        match version {
            Version::V2 => {
                if !buf.has_remaining() {
                    return Ok(None);
                }
                let kind = buf.chunk()[0];
                let need = match kind {
                    TYPE_NEW | TYPE_NEW_EXTENDED => 9,
                    TYPE_RECONNECT => 1 + RECONNECT_BODY_LEN,
                    other => return Err(Error::UnknownType(other)),
                };
                if buf.remaining() < need {
                    return Ok(None);
                }
                buf.advance(1);
                Ok(Some(match kind {
                    TYPE_RECONNECT => ClientHello::Reconnect(ReconnectRequest::decode_body(buf)),
                    _ => ClientHello::New {
                        public: buf.get_u64_le(),
                        extended: kind == TYPE_NEW_EXTENDED,
                    },
                }))
            }
            Version::V1 => {
                if buf.remaining() < V1_HELLO_LEN {
                    return Ok(None);
                }
                let req = ReconnectRequest::decode_body(buf);
                if req.id != 0 {
                    return Ok(Some(ClientHello::Reconnect(req)));
                }
                // A new connection: [0][public][24 zero bytes].
                if req.read_count != 0 || req.tag != [0; 16] {
                    return Err(Error::Malformed("v1 new-connection padding"));
                }
                Ok(Some(ClientHello::New {
                    public: req.write_count,
                    extended: false,
                }))
            }
        }
    }
}

/// The server's answer to a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    /// The server's dh64 public key.
    pub public: u64,
    /// The conn ID XOR the first 8 bytes of the keystream.
    pub encrypted_id: [u8; 8],
    /// v2: 8 random bytes the client must answer with `MD5(challenge ‖ key)`.
    pub challenge: Option<[u8; 8]>,
}

impl Welcome {
    /// The encoded length for a version.
    pub fn len(version: Version) -> usize {
        match version {
            Version::V1 => 16,
            Version::V2 => 24,
        }
    }

    /// Writes the message (the challenge is written only if present).
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_u64_le(self.public);
        buf.put_slice(&self.encrypted_id);
        if let Some(challenge) = &self.challenge {
            buf.put_slice(challenge);
        }
    }

    /// Reads the message, or `Ok(None)` if more bytes are needed.
    pub fn decode(version: Version, buf: &mut impl Buf) -> Result<Option<Self>> {
        if buf.remaining() < Self::len(version) {
            return Ok(None);
        }
        Ok(Some(Welcome {
            public: buf.get_u64_le(),
            encrypted_id: get_array(buf),
            challenge: (version == Version::V2).then(|| get_array(buf)),
        }))
    }
}

/// The client's answer to a challenge: `MD5(challenge ‖ key)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer(pub Tag);

impl Answer {
    /// Writes the message.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Reads the message, or `Ok(None)` if more bytes are needed.
    pub fn decode(buf: &mut impl Buf) -> Result<Option<Self>> {
        if buf.remaining() < ANSWER_LEN {
            return Ok(None);
        }
        Ok(Some(Answer(get_array(buf))))
    }
}

/// The server's answer to a reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeReply {
    /// The server's counts, and (v2) a fresh challenge.
    Accept {
        /// Bytes the server has written in this session.
        write_count: u64,
        /// Bytes the server has received in this session.
        read_count: u64,
        /// v2: the challenge the client must answer.
        challenge: Option<[u8; 8]>,
    },
    /// v2: 24 zero bytes. (v1 refuses by closing; it encodes to nothing.)
    Refuse,
}

impl ResumeReply {
    /// The encoded length of an accept for a version.
    pub fn len(version: Version) -> usize {
        match version {
            Version::V1 => 16,
            Version::V2 => 24,
        }
    }

    /// Writes the message. A v2 accept must carry a non-zero challenge, or it
    /// would read as a refusal.
    pub fn encode(&self, version: Version, buf: &mut impl BufMut) {
        match self {
            ResumeReply::Accept {
                write_count,
                read_count,
                challenge,
            } => {
                buf.put_u64_le(*write_count);
                buf.put_u64_le(*read_count);
                if version == Version::V2 {
                    buf.put_slice(&challenge.unwrap_or([0; 8]));
                }
            }
            ResumeReply::Refuse if version == Version::V2 => buf.put_bytes(0, 24),
            ResumeReply::Refuse => {}
        }
    }

    /// Reads the message, or `Ok(None)` if more bytes are needed.
    pub fn decode(version: Version, buf: &mut impl Buf) -> Result<Option<Self>> {
        if buf.remaining() < Self::len(version) {
            return Ok(None);
        }
        let write_count = buf.get_u64_le();
        let read_count = buf.get_u64_le();
        let challenge = (version == Version::V2).then(|| get_array(buf));
        if challenge == Some([0; 8]) && write_count == 0 && read_count == 0 {
            return Ok(Some(ResumeReply::Refuse));
        }
        Ok(Some(ResumeReply::Accept {
            write_count,
            read_count,
            challenge,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_hello_needs_type_then_body() {
        let mut b: &[u8] = &[];
        assert_eq!(ClientHello::decode(Version::V2, &mut b), Ok(None));
        let mut b: &[u8] = &[0x00, 1, 2, 3];
        assert_eq!(ClientHello::decode(Version::V2, &mut b), Ok(None));
        assert_eq!(b.len(), 4, "nothing consumed");
        let mut b: &[u8] = &[0x7f, 0, 0];
        assert_eq!(
            ClientHello::decode(Version::V2, &mut b),
            Err(Error::UnknownType(0x7f))
        );
    }

    #[test]
    fn v1_new_padding_must_be_zero() {
        let mut bytes = [0u8; 40];
        bytes[8] = 5;
        let mut b = &bytes[..];
        assert_eq!(
            ClientHello::decode(Version::V1, &mut b),
            Ok(Some(ClientHello::New {
                public: 5,
                extended: false
            }))
        );
        bytes[39] = 1;
        let mut b = &bytes[..];
        assert!(matches!(
            ClientHello::decode(Version::V1, &mut b),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn refusal_is_24_zero_bytes() {
        let mut out = Vec::new();
        ResumeReply::Refuse.encode(Version::V2, &mut out);
        assert_eq!(out, [0u8; 24]);
        let mut b = &out[..];
        assert_eq!(
            ResumeReply::decode(Version::V2, &mut b),
            Ok(Some(ResumeReply::Refuse))
        );
        out.clear();
        ResumeReply::Refuse.encode(Version::V1, &mut out);
        assert!(out.is_empty());
    }
}
