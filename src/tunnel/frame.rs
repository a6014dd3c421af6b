//! The tunnel's frames, as `PROTOCOL.md` §3 specifies them.
//!
//! ```text
//! +----------------+------+-------+----------------+---------------+
//! | length (u24le) | kind | flags | stream (u24le) | body[length]  |
//! +----------------+------+-------+----------------+---------------+
//! ```
//!
//! `decode` checks the length against [`MAX_BODY`] from the header alone,
//! before it waits for or allocates anything, and checks every field of the
//! body against its own bound.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

// Payloads are copied in pieces (see `proto::copy`: one large copy can take
// glibc's path that is slow for some alignments: the `encode DATA 64 KiB`
// bench measured 2.6 GiB/s one way and 42 GiB/s in pieces).
use crate::proto::copy;

/// Bytes of a frame header.
pub const HEADER: usize = 8;
/// The largest body: a whole UDP datagram (65,507 bytes) fits.
pub const MAX_BODY: usize = 65_536;
/// The largest DATA payload a sender puts in one frame.
pub const MAX_DATA: usize = 64 * 1024;
/// The largest stream id (24 bits).
pub const MAX_STREAM: u32 = (1 << 24) - 1;
/// The largest client or service name, in bytes.
pub const MAX_NAME: usize = 64;
/// The largest reason text, in bytes.
pub const MAX_REASON: usize = 1024;
/// The largest UDP payload.
pub const MAX_DATAGRAM: usize = 65_507;
/// The tunnel protocol version this code speaks.
pub const VERSION: u8 = 2;
/// Every stream's initial window, both ways: the credit a sender starts with.
pub const INITIAL_WINDOW: u32 = 1 << 20;
/// Credit beyond this is a protocol error.
pub const MAX_CREDIT: u64 = 1 << 30;

/// Frame kinds.
pub mod kind {
    #![allow(missing_docs)]
    pub const HELLO: u8 = 0x01;
    pub const CHALLENGE: u8 = 0x02;
    pub const LOGIN: u8 = 0x03;
    pub const WELCOME: u8 = 0x04;
    pub const REFUSE: u8 = 0x05;
    pub const PUBLISH: u8 = 0x10;
    pub const PUBLISHED: u8 = 0x11;
    pub const PUBLISH_FAILED: u8 = 0x12;
    pub const UNPUBLISH: u8 = 0x13;
    pub const OPEN: u8 = 0x20;
    pub const DATA: u8 = 0x21;
    pub const WINDOW: u8 = 0x22;
    pub const FIN: u8 = 0x23;
    pub const RESET: u8 = 0x24;
    pub const PING: u8 = 0x30;
    pub const PONG: u8 = 0x31;
    pub const GOODBYE: u8 = 0x32;
    pub const ASSOCIATE: u8 = 0x40;
    pub const DATAGRAM: u8 = 0x41;
    pub const DISSOCIATE: u8 = 0x42;
}

/// The protocol of a published service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl ServiceKind {
    fn byte(self) -> u8 {
        match self {
            ServiceKind::Tcp => 1,
            ServiceKind::Udp => 2,
        }
    }

    /// "tcp" or "udp".
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Tcp => "tcp",
            ServiceKind::Udp => "udp",
        }
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame {
    /// Client → server, first: who it is, and its nonce.
    Hello {
        /// Tunnel protocol version.
        version: u8,
        /// The client's name (1 to 64 bytes of UTF-8).
        name: String,
        /// 32 random bytes.
        nonce: [u8; 32],
    },
    /// Server → client: the server's nonce.
    Challenge {
        /// 32 random bytes.
        nonce: [u8; 32],
    },
    /// Client → server: proof that it holds the token.
    Login {
        /// HMAC-SHA-256, see `PROTOCOL.md` §3.3.
        proof: [u8; 32],
    },
    /// Server → client: login accepted, and the server's own proof.
    Welcome {
        /// HMAC-SHA-256, see `PROTOCOL.md` §3.3.
        proof: [u8; 32],
    },
    /// Server → client: login refused.
    Refuse {
        /// Why, for humans.
        reason: String,
    },
    /// Client → server: publish a service.
    Publish {
        /// The client's number for the service.
        index: u16,
        /// TCP or UDP.
        kind: ServiceKind,
        /// The public port asked for; 0 lets the server choose.
        port: u16,
        /// The service's name (0 to 64 bytes).
        name: String,
    },
    /// Server → client: the service is live at this address.
    Published {
        /// The client's number for the service.
        index: u16,
        /// Where visitors reach it.
        addr: SocketAddr,
    },
    /// Server → client: the service could not be published.
    PublishFailed {
        /// The client's number for the service.
        index: u16,
        /// Whether asking again later may succeed (the port is taken now),
        /// rather than never (the port is not allowed, too many services).
        retry: bool,
        /// Why, for humans.
        reason: String,
    },
    /// Client → server: stop publishing a service (its port closes; the
    /// client resets its visitors' streams).
    Unpublish {
        /// The client's number for the service.
        index: u16,
    },
    /// A new tunnel stream, for a visitor of a service.
    Open {
        /// The new stream.
        id: u32,
        /// The service.
        index: u16,
        /// The visitor's address.
        visitor: SocketAddr,
    },
    /// Stream data.
    Data {
        /// The stream.
        id: u32,
        /// 1 to MAX_BODY bytes.
        payload: Bytes,
    },
    /// The receiver consumed bytes: the sender may send this many more.
    Window {
        /// The stream.
        id: u32,
        /// Bytes of new credit (at least 1).
        increment: u32,
    },
    /// The sender will send no more data on the stream.
    Fin {
        /// The stream.
        id: u32,
    },
    /// The stream is aborted.
    Reset {
        /// The stream.
        id: u32,
    },
    /// Are you there?
    Ping {
        /// Echoed in the PONG.
        nonce: u64,
    },
    /// Yes.
    Pong {
        /// The PING's nonce.
        nonce: u64,
    },
    /// The session is over.
    Goodbye {
        /// Why, for humans.
        reason: String,
    },
    /// Server → client: a new UDP association, for one visitor address.
    Associate {
        /// The association.
        id: u32,
        /// The service.
        index: u16,
        /// The visitor's address.
        visitor: SocketAddr,
    },
    /// One UDP datagram of an association, boundaries kept.
    Datagram {
        /// The association.
        id: u32,
        /// 0 to MAX_DATAGRAM bytes.
        payload: Bytes,
    },
    /// The association is over.
    Dissociate {
        /// The association.
        id: u32,
    },
}

/// A frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announces a body above [`MAX_BODY`].
    #[error("frame body of {0} bytes exceeds the maximum of {MAX_BODY}")]
    TooLong(usize),
    /// Unknown kind byte.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A session frame with a stream id, or a stream frame without one.
    #[error("frame kind {kind:#04x} with stream id {id}")]
    BadStream {
        /// The kind.
        kind: u8,
        /// The id it came with.
        id: u32,
    },
    /// The body does not fit the kind.
    #[error("malformed frame kind {kind:#04x}: {what}")]
    Malformed {
        /// The kind.
        kind: u8,
        /// What is wrong.
        what: &'static str,
    },
}

fn put_header(buf: &mut impl BufMut, len: usize, kind: u8, id: u32) {
    debug_assert!(len <= MAX_BODY && id <= MAX_STREAM);
    let len = len as u32;
    buf.put_slice(&len.to_le_bytes()[..3]);
    buf.put_u8(kind);
    buf.put_u8(0);
    buf.put_slice(&id.to_le_bytes()[..3]);
}

fn addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

fn put_addr(buf: &mut impl BufMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16_le(addr.port());
}

/// Whether text on the wire may not hold `c`: a control character or a
/// line or paragraph separator (U+2028, U+2029: a line break would let a
/// peer forge a line in the receiver's log, an escape sequence drive the
/// operator's terminal), or a bidirectional embedding, override or isolate
/// (U+202A–U+202E, U+2066–U+2069), which reorders what follows it on the
/// line (a name that makes the rest of a log line or a status row read
/// differently than it is).
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn clip(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    // The receiver refuses unsafe characters: each is sent as U+FFFD
    // instead.
    let s: std::borrow::Cow<'_, str> = if s.chars().any(unsafe_char) {
        s.chars()
            .map(|c| if unsafe_char(c) { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        s.into()
    };
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string().into()
}

impl Frame {
    /// The frame's stream id (0 for session frames).
    pub fn stream(&self) -> u32 {
        match self {
            Frame::Open { id, .. }
            | Frame::Data { id, .. }
            | Frame::Window { id, .. }
            | Frame::Fin { id }
            | Frame::Reset { id }
            | Frame::Associate { id, .. }
            | Frame::Datagram { id, .. }
            | Frame::Dissociate { id } => *id,
            _ => 0,
        }
    }

    /// Writes the frame. Names and reasons longer than their maxima are cut,
    /// and their control characters sent as U+FFFD; payloads must respect theirs (the mux never builds bigger ones).
    pub fn encode(&self, buf: &mut impl BufMut) {
        use kind::*;
        let id = self.stream();
        match self {
            Frame::Hello {
                version,
                name,
                nonce,
            } => {
                let name = clip(name, MAX_NAME);
                put_header(buf, 1 + 32 + name.len(), HELLO, 0);
                buf.put_u8(*version);
                buf.put_slice(nonce);
                buf.put_slice(name.as_bytes());
            }
            Frame::Challenge { nonce } => {
                put_header(buf, 32, CHALLENGE, 0);
                buf.put_slice(nonce);
            }
            Frame::Login { proof } => {
                put_header(buf, 32, LOGIN, 0);
                buf.put_slice(proof);
            }
            Frame::Welcome { proof } => {
                put_header(buf, 32, WELCOME, 0);
                buf.put_slice(proof);
            }
            Frame::Refuse { reason } | Frame::Goodbye { reason } => {
                let k = if matches!(self, Frame::Refuse { .. }) {
                    REFUSE
                } else {
                    GOODBYE
                };
                let reason = clip(reason, MAX_REASON);
                put_header(buf, reason.len(), k, 0);
                buf.put_slice(reason.as_bytes());
            }
            Frame::Publish {
                index,
                kind,
                port,
                name,
            } => {
                let name = clip(name, MAX_NAME);
                put_header(buf, 2 + 1 + 2 + name.len(), PUBLISH, 0);
                buf.put_u16_le(*index);
                buf.put_u8(kind.byte());
                buf.put_u16_le(*port);
                buf.put_slice(name.as_bytes());
            }
            Frame::Published { index, addr } => {
                put_header(buf, 2 + addr_len(addr), PUBLISHED, 0);
                buf.put_u16_le(*index);
                put_addr(buf, addr);
            }
            Frame::PublishFailed {
                index,
                retry,
                reason,
            } => {
                let reason = clip(reason, MAX_REASON);
                put_header(buf, 2 + 1 + reason.len(), PUBLISH_FAILED, 0);
                buf.put_u16_le(*index);
                buf.put_u8(u8::from(*retry));
                buf.put_slice(reason.as_bytes());
            }
            Frame::Unpublish { index } => {
                put_header(buf, 2, UNPUBLISH, 0);
                buf.put_u16_le(*index);
            }
            Frame::Open { index, visitor, .. } | Frame::Associate { index, visitor, .. } => {
                let k = if matches!(self, Frame::Open { .. }) {
                    OPEN
                } else {
                    ASSOCIATE
                };
                put_header(buf, 2 + addr_len(visitor), k, id);
                buf.put_u16_le(*index);
                put_addr(buf, visitor);
            }
            Frame::Data { payload, .. } => {
                put_header(buf, payload.len(), DATA, id);
                copy::extend(buf, payload);
            }
            Frame::Datagram { payload, .. } => {
                put_header(buf, payload.len(), DATAGRAM, id);
                copy::extend(buf, payload);
            }
            Frame::Window { increment, .. } => {
                put_header(buf, 4, WINDOW, id);
                buf.put_u32_le(*increment);
            }
            Frame::Fin { .. } => put_header(buf, 0, FIN, id),
            Frame::Reset { .. } => put_header(buf, 0, RESET, id),
            Frame::Dissociate { .. } => put_header(buf, 0, DISSOCIATE, id),
            Frame::Ping { nonce } | Frame::Pong { nonce } => {
                let k = if matches!(self, Frame::Ping { .. }) {
                    PING
                } else {
                    PONG
                };
                put_header(buf, 8, k, 0);
                buf.put_u64_le(*nonce);
            }
        }
    }

    /// Writes the frame, except the payload of a DATA or DATAGRAM frame,
    /// which it returns for the caller to send as it is (no copy).
    pub fn encode_split(self, buf: &mut impl BufMut) -> Option<Bytes> {
        match self {
            Frame::Data { id, payload } => {
                put_header(buf, payload.len(), kind::DATA, id);
                Some(payload)
            }
            Frame::Datagram { id, payload } => {
                put_header(buf, payload.len(), kind::DATAGRAM, id);
                Some(payload)
            }
            other => {
                other.encode(buf);
                None
            }
        }
    }

    /// Reads one frame from the front of `buf`, or `Ok(None)` if more bytes
    /// are needed (nothing is consumed then). DATA and DATAGRAM payloads are
    /// split off `buf` without copying.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((kind, id, len)) = header(buf)? else {
            return Ok(None);
        };
        buf.advance(HEADER);
        parse(kind, id, buf.split_to(len).freeze()).map(Some)
    }

    /// As [`Frame::decode`], from `Bytes`.
    pub fn decode_bytes(buf: &mut Bytes) -> Result<Option<Frame>, FrameError> {
        let Some((kind, id, len)) = header(buf)? else {
            return Ok(None);
        };
        buf.advance(HEADER);
        parse(kind, id, buf.split_to(len)).map(Some)
    }
}

/// The kind, stream and body length of the frame at the front of `buf`, once
/// the whole frame is there; checked against the bounds from the header alone.
fn header(buf: &[u8]) -> Result<Option<(u8, u32, usize)>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], 0]) as usize;
    let kind = buf[3];
    let id = u32::from_le_bytes([buf[5], buf[6], buf[7], 0]);
    if len > MAX_BODY {
        return Err(FrameError::TooLong(len));
    }
    check_stream(kind, id)?;
    if buf.len() < HEADER + len {
        return Ok(None);
    }
    Ok(Some((kind, id, len)))
}

/// Session frames carry stream 0; stream frames a non-zero id.
fn check_stream(k: u8, id: u32) -> Result<(), FrameError> {
    use kind::*;
    let wants_stream = match k {
        HELLO | CHALLENGE | LOGIN | WELCOME | REFUSE | PUBLISH | PUBLISHED | PUBLISH_FAILED
        | UNPUBLISH | PING | PONG | GOODBYE => false,
        OPEN | DATA | WINDOW | FIN | RESET | ASSOCIATE | DATAGRAM | DISSOCIATE => true,
        other => return Err(FrameError::UnknownKind(other)),
    };
    if wants_stream != (id != 0) {
        return Err(FrameError::BadStream { kind: k, id });
    }
    Ok(())
}

fn parse(k: u8, id: u32, mut body: Bytes) -> Result<Frame, FrameError> {
    use kind::*;
    let bad = |what| FrameError::Malformed { kind: k, what };
    let exact = |body: &Bytes, n: usize| {
        if body.len() == n {
            Ok(())
        } else {
            Err(bad("wrong body length"))
        }
    };
    let text = |body: Bytes, max: usize| -> Result<String, FrameError> {
        if body.len() > max {
            return Err(bad("text too long"));
        }
        let text = String::from_utf8(body.to_vec()).map_err(|_| bad("text is not UTF-8"))?;
        if text.chars().any(unsafe_char) {
            return Err(bad(
                "text holds control, line separator or bidirectional formatting characters",
            ));
        }
        Ok(text)
    };
    Ok(match k {
        HELLO => {
            if body.len() < 1 + 32 + 1 {
                return Err(bad("short hello"));
            }
            let version = body.get_u8();
            let nonce = take32(&mut body);
            Frame::Hello {
                version,
                nonce,
                name: text(body, MAX_NAME)?,
            }
        }
        CHALLENGE => {
            exact(&body, 32)?;
            Frame::Challenge {
                nonce: take32(&mut body),
            }
        }
        LOGIN => {
            exact(&body, 32)?;
            Frame::Login {
                proof: take32(&mut body),
            }
        }
        WELCOME => {
            exact(&body, 32)?;
            Frame::Welcome {
                proof: take32(&mut body),
            }
        }
        REFUSE => Frame::Refuse {
            reason: text(body, MAX_REASON)?,
        },
        GOODBYE => Frame::Goodbye {
            reason: text(body, MAX_REASON)?,
        },
        PUBLISH => {
            if body.len() < 5 {
                return Err(bad("short publish"));
            }
            let index = body.get_u16_le();
            let kind = match body.get_u8() {
                1 => ServiceKind::Tcp,
                2 => ServiceKind::Udp,
                _ => return Err(bad("unknown service kind")),
            };
            let port = body.get_u16_le();
            Frame::Publish {
                index,
                kind,
                port,
                name: text(body, MAX_NAME)?,
            }
        }
        PUBLISHED => {
            if body.len() < 2 {
                return Err(bad("short published"));
            }
            let index = body.get_u16_le();
            let addr = take_addr(&mut body).ok_or_else(|| bad("bad address"))?;
            exact(&body, 0)?;
            Frame::Published { index, addr }
        }
        PUBLISH_FAILED => {
            if body.len() < 3 {
                return Err(bad("short publish failure"));
            }
            let index = body.get_u16_le();
            let retry = match body.get_u8() {
                0 => false,
                1 => true,
                _ => return Err(bad("publish failure: retry must be 0 or 1")),
            };
            Frame::PublishFailed {
                index,
                retry,
                reason: text(body, MAX_REASON)?,
            }
        }
        UNPUBLISH => {
            exact(&body, 2)?;
            Frame::Unpublish {
                index: body.get_u16_le(),
            }
        }
        OPEN | ASSOCIATE => {
            if body.len() < 2 {
                return Err(bad("short open"));
            }
            let index = body.get_u16_le();
            let visitor = take_addr(&mut body).ok_or_else(|| bad("bad address"))?;
            exact(&body, 0)?;
            if k == OPEN {
                Frame::Open { id, index, visitor }
            } else {
                Frame::Associate { id, index, visitor }
            }
        }
        DATA => {
            if body.is_empty() {
                return Err(bad("empty data"));
            }
            Frame::Data { id, payload: body }
        }
        DATAGRAM => {
            if body.len() > MAX_DATAGRAM {
                return Err(bad("datagram above 65,507 bytes"));
            }
            Frame::Datagram { id, payload: body }
        }
        WINDOW => {
            exact(&body, 4)?;
            let increment = body.get_u32_le();
            if increment == 0 {
                return Err(bad("zero window increment"));
            }
            Frame::Window { id, increment }
        }
        FIN => {
            exact(&body, 0)?;
            Frame::Fin { id }
        }
        RESET => {
            exact(&body, 0)?;
            Frame::Reset { id }
        }
        DISSOCIATE => {
            exact(&body, 0)?;
            Frame::Dissociate { id }
        }
        PING | PONG => {
            exact(&body, 8)?;
            let nonce = body.get_u64_le();
            if k == PING {
                Frame::Ping { nonce }
            } else {
                Frame::Pong { nonce }
            }
        }
        other => return Err(FrameError::UnknownKind(other)),
    })
}

fn take32(body: &mut Bytes) -> [u8; 32] {
    let mut out = [0u8; 32];
    body.copy_to_slice(&mut out);
    out
}

fn take_addr(body: &mut Bytes) -> Option<SocketAddr> {
    if body.is_empty() {
        return None;
    }
    let ip = match body.get_u8() {
        4 if body.len() >= 4 + 2 => {
            let mut o = [0u8; 4];
            body.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 if body.len() >= 16 + 2 => {
            let mut o = [0u8; 16];
            body.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, body.get_u16_le()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
        ]
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[a-zA-Z0-9 é✓-]{{0,{}}}", max / 4)).unwrap()
    }

    fn stream_id() -> impl Strategy<Value = u32> {
        1..=MAX_STREAM
    }

    fn payload(min: usize, max: usize) -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), min..max).prop_map(Bytes::from)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let kind = prop_oneof![Just(ServiceKind::Tcp), Just(ServiceKind::Udp)];
        prop_oneof![
            (any::<u8>(), "[a-z]{1,16}", any::<[u8; 32]>()).prop_map(|(version, name, nonce)| {
                Frame::Hello {
                    version,
                    name,
                    nonce,
                }
            }),
            any::<[u8; 32]>().prop_map(|nonce| Frame::Challenge { nonce }),
            any::<[u8; 32]>().prop_map(|proof| Frame::Login { proof }),
            any::<[u8; 32]>().prop_map(|proof| Frame::Welcome { proof }),
            text(MAX_REASON).prop_map(|reason| Frame::Refuse { reason }),
            (any::<u16>(), kind, any::<u16>(), text(MAX_NAME)).prop_map(
                |(index, kind, port, name)| Frame::Publish {
                    index,
                    kind,
                    port,
                    name
                }
            ),
            (any::<u16>(), addr()).prop_map(|(index, addr)| Frame::Published { index, addr }),
            (any::<u16>(), any::<bool>(), text(MAX_REASON)).prop_map(|(index, retry, reason)| {
                Frame::PublishFailed {
                    index,
                    retry,
                    reason,
                }
            }),
            any::<u16>().prop_map(|index| Frame::Unpublish { index }),
            (stream_id(), any::<u16>(), addr()).prop_map(|(id, index, visitor)| Frame::Open {
                id,
                index,
                visitor
            }),
            (stream_id(), payload(1, 3000)).prop_map(|(id, payload)| Frame::Data { id, payload }),
            (stream_id(), 1u32..).prop_map(|(id, increment)| Frame::Window { id, increment }),
            stream_id().prop_map(|id| Frame::Fin { id }),
            stream_id().prop_map(|id| Frame::Reset { id }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            text(MAX_REASON).prop_map(|reason| Frame::Goodbye { reason }),
            (stream_id(), any::<u16>(), addr()).prop_map(|(id, index, visitor)| Frame::Associate {
                id,
                index,
                visitor
            }),
            (stream_id(), payload(0, 3000))
                .prop_map(|(id, payload)| Frame::Datagram { id, payload }),
            stream_id().prop_map(|id| Frame::Dissociate { id }),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(frames in prop::collection::vec(frame(), 1..8)) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            let all = wire.clone();
            let mut got = Vec::new();
            while let Some(f) = Frame::decode(&mut wire).unwrap() {
                got.push(f);
            }
            prop_assert!(wire.is_empty());
            prop_assert_eq!(&got, &frames);

            // Header and payload apart (as the mux writes them): the same bytes.
            let mut split = BytesMut::new();
            for f in frames.iter().cloned() {
                if let Some(payload) = f.encode_split(&mut split) {
                    split.extend_from_slice(&payload);
                }
            }
            prop_assert_eq!(&split, &all);

            // Fed in two pieces split anywhere, the same frames come out,
            // and a short buffer is left untouched.
            for cut in 0..=all.len() {
                let mut buf = BytesMut::from(&all[..cut]);
                let mut out = Vec::new();
                loop {
                    let before = buf.len();
                    match Frame::decode(&mut buf).unwrap() {
                        Some(f) => out.push(f),
                        None => { prop_assert_eq!(buf.len(), before); break; }
                    }
                }
                buf.extend_from_slice(&all[cut..]);
                while let Some(f) = Frame::decode(&mut buf).unwrap() {
                    out.push(f);
                }
                prop_assert_eq!(&out, &frames);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = Frame::decode(&mut buf) {}
        }
    }

    #[test]
    fn very_long_frames_are_refused_from_the_header() {
        // A header announcing 16 MiB - 1: refused before any body arrives.
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, kind::DATA, 0, 1, 0, 0][..]);
        assert_eq!(Frame::decode(&mut buf), Err(FrameError::TooLong(0xff_ffff)));
        let mut buf = BytesMut::from(&[0x01, 0x00, 0x01, kind::DATA, 0, 1, 0, 0][..]);
        assert_eq!(Frame::decode(&mut buf), Err(FrameError::TooLong(65_537)));
    }

    #[test]
    fn bad_frames_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0, 0, 0x7e, 0, 0, 0, 0], "unknown kind"),
            (
                vec![0, 0, 0, kind::FIN, 0, 0, 0, 0],
                "stream frame without id",
            ),
            (
                vec![8, 0, 0, kind::PING, 0, 5, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
                "ping with id",
            ),
            (vec![0, 0, 0, kind::DATA, 0, 1, 0, 0], "empty data"),
            (
                vec![4, 0, 0, kind::WINDOW, 0, 1, 0, 0, 0, 0, 0, 0],
                "zero window",
            ),
            (
                vec![3, 0, 0, kind::GOODBYE, 0, 0, 0, 0, 0xff, 0xfe, 0xfd],
                "not UTF-8",
            ),
            (vec![1, 0, 0, kind::FIN, 0, 1, 0, 0, 9], "fin with body"),
        ];
        for (bytes, what) in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(Frame::decode(&mut buf).is_err(), "{what}");
        }
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let reason = "é".repeat(MAX_REASON);
        let mut buf = BytesMut::new();
        Frame::Goodbye { reason }.encode(&mut buf);
        let Some(Frame::Goodbye { reason }) = Frame::decode(&mut buf).unwrap() else {
            panic!("a goodbye");
        };
        assert_eq!(reason.len(), MAX_REASON);
    }

    /// A name or reason with a control character (a line break would let
    /// it forge a line in the receiver's log) does not decode; our own
    /// encoder never sends one.
    #[test]
    fn control_characters_never_cross_in_text() {
        let forged = "x\n2026-12-04T00:00:00Z WARN login refused peer=203.0.113.9\r\u{1b}[2J";
        let mut raw = BytesMut::new();
        put_header(&mut raw, forged.len(), kind::GOODBYE, 0);
        raw.put_slice(forged.as_bytes());
        assert!(matches!(
            Frame::decode(&mut raw),
            Err(FrameError::Malformed {
                what: "text holds control, line separator or bidirectional formatting characters",
                ..
            })
        ));
        let mut buf = BytesMut::new();
        Frame::Hello {
            version: 2,
            nonce: [0; 32],
            name: forged.into(),
        }
        .encode(&mut buf);
        let Some(Frame::Hello { name, .. }) = Frame::decode(&mut buf).unwrap() else {
            panic!("a hello");
        };
        let sent = forged.replace(char::is_control, "\u{fffd}");
        assert_eq!(name, clip(&sent, MAX_NAME));
    }

    /// Bidirectional embeddings, overrides and isolates (a name that makes
    /// the rest of a log line read backwards) and line and paragraph
    /// separators are refused like control characters, and never sent;
    /// other right-to-left text crosses.
    #[test]
    fn bidirectional_overrides_never_cross_in_text() {
        for c in ('\u{2028}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            let forged = format!("svc{c}txt.exe");
            let mut raw = BytesMut::new();
            put_header(&mut raw, forged.len(), kind::GOODBYE, 0);
            raw.put_slice(forged.as_bytes());
            assert!(
                matches!(Frame::decode(&mut raw), Err(FrameError::Malformed { .. })),
                "{c:?}"
            );
            let mut buf = BytesMut::new();
            Frame::Goodbye { reason: forged }.encode(&mut buf);
            let Some(Frame::Goodbye { reason }) = Frame::decode(&mut buf).unwrap() else {
                panic!("a goodbye");
            };
            assert_eq!(reason, "svc\u{fffd}txt.exe");
        }
        let hebrew = "\u{05e9}\u{05dc}\u{05d5}\u{05dd} \u{200f}svc";
        let mut buf = BytesMut::new();
        Frame::Goodbye {
            reason: hebrew.into(),
        }
        .encode(&mut buf);
        let Some(Frame::Goodbye { reason }) = Frame::decode(&mut buf).unwrap() else {
            panic!("a goodbye");
        };
        assert_eq!(reason, hebrew);
    }
}
