//! Property tests of the handshake codecs: round trips, arbitrary input, and
//! input split at every byte position.

use bytes::{Buf, BytesMut};
use proptest::prelude::*;
use rejoin::proto::message::{Answer, ClientHello, ReconnectRequest, ResumeReply, Welcome};
use rejoin::proto::{ClientHandshake, Incoming, Params, ServerHandshake, Version};

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V1), Just(Version::V2)]
}

fn request() -> impl Strategy<Value = ReconnectRequest> {
    (1u64.., any::<u64>(), any::<u64>(), any::<[u8; 16]>()).prop_map(
        |(id, write_count, read_count, tag)| ReconnectRequest {
            id,
            write_count,
            read_count,
            tag,
        },
    )
}

fn hello(version: Version) -> impl Strategy<Value = ClientHello> {
    let extended = version == Version::V2;
    prop_oneof![
        (any::<u64>(), any::<bool>()).prop_map(move |(public, ext)| ClientHello::New {
            public,
            extended: ext && extended
        }),
        request().prop_map(ClientHello::Reconnect),
    ]
}

fn welcome(version: Version) -> impl Strategy<Value = Welcome> {
    (any::<u64>(), any::<[u8; 8]>(), any::<[u8; 8]>()).prop_map(move |(public, id, c)| Welcome {
        public,
        encrypted_id: id,
        challenge: (version == Version::V2).then_some(c),
    })
}

fn reply(version: Version) -> impl Strategy<Value = ResumeReply> {
    let accept =
        (any::<u64>(), any::<u64>(), 1u64..).prop_map(move |(w, r, c)| ResumeReply::Accept {
            write_count: w,
            read_count: r,
            challenge: (version == Version::V2).then_some(c.to_le_bytes()),
        });
    if version == Version::V2 {
        prop_oneof![accept, Just(ResumeReply::Refuse)].boxed()
    } else {
        accept.boxed()
    }
}

/// Decodes `bytes` whole, as every prefix (which must ask for more and
/// consume nothing), and split in two at every position (which must give the
/// same result).
fn check_decoder<T: PartialEq + std::fmt::Debug>(
    bytes: &[u8],
    decode: impl Fn(&mut dyn Buf) -> Result<Option<T>, rejoin::proto::Error>,
) -> Result<(), TestCaseError> {
    let mut whole = bytes;
    let expected = decode(&mut whole);
    let consumed = bytes.len() - whole.len();
    for cut in 0..=bytes.len() {
        let mut split = (&bytes[..cut]).chain(&bytes[cut..]);
        let got = decode(&mut split);
        prop_assert_eq!(&got, &expected, "split at {}", cut);
        prop_assert_eq!(bytes.len() - split.remaining(), consumed);
        if let Ok(Some(_)) = &expected
            && cut < consumed
        {
            let mut prefix = &bytes[..cut];
            let got = decode(&mut prefix);
            prop_assert!(matches!(got, Ok(None) | Err(_)), "prefix {cut}: {got:?}");
            if let Ok(None) = got {
                prop_assert_eq!(prefix.len(), cut, "a short decode consumes nothing");
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn hello_round_trips((v, msg) in version().prop_flat_map(|v| (Just(v), hello(v))), tail in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut out = Vec::new();
        msg.encode(v, &mut out);
        prop_assert_eq!(out.len(), msg.len(v));
        out.extend_from_slice(&tail);
        let mut b = &out[..];
        prop_assert_eq!(ClientHello::decode(v, &mut b), Ok(Some(msg)));
        prop_assert_eq!(b, &tail[..]);
        check_decoder(&out, |b| ClientHello::decode(v, &mut Buf::take(b, usize::MAX)))?;
    }

    #[test]
    fn welcome_round_trips((v, msg) in version().prop_flat_map(|v| (Just(v), welcome(v)))) {
        let mut out = Vec::new();
        msg.encode(&mut out);
        prop_assert_eq!(out.len(), Welcome::len(v));
        let mut b = &out[..];
        prop_assert_eq!(Welcome::decode(v, &mut b), Ok(Some(msg)));
        check_decoder(&out, |b| Welcome::decode(v, &mut Buf::take(b, usize::MAX)))?;
    }

    #[test]
    fn reply_round_trips((v, msg) in version().prop_flat_map(|v| (Just(v), reply(v)))) {
        let mut out = Vec::new();
        msg.encode(v, &mut out);
        let mut b = &out[..];
        prop_assert_eq!(ResumeReply::decode(v, &mut b), Ok(Some(msg)));
        check_decoder(&out, |b| ResumeReply::decode(v, &mut Buf::take(b, usize::MAX)))?;
    }

    #[test]
    fn answer_round_trips(tag in any::<[u8; 16]>()) {
        let mut out = Vec::new();
        Answer(tag).encode(&mut out);
        let mut b = &out[..];
        prop_assert_eq!(Answer::decode(&mut b), Ok(Some(Answer(tag))));
        check_decoder(&out, |b| Answer::decode(&mut Buf::take(b, usize::MAX)))?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(v in version(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        check_decoder(&bytes, |b| ClientHello::decode(v, &mut Buf::take(b, usize::MAX)))?;
        check_decoder(&bytes, |b| Welcome::decode(v, &mut Buf::take(b, usize::MAX)))?;
        check_decoder(&bytes, |b| ResumeReply::decode(v, &mut Buf::take(b, usize::MAX)))?;
        check_decoder(&bytes, |b| Answer::decode(&mut Buf::take(b, usize::MAX)))?;
    }

    /// Arbitrary bytes fed to a server handshake, in arbitrary pieces: an
    /// error or a waiting machine, never a panic.
    #[test]
    fn server_handshake_survives_garbage(v in version(), bytes in prop::collection::vec(any::<u8>(), 0..80), seed in any::<u64>()) {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let params = Params { version: v, ..Params::default() };
        let mut hs = ServerHandshake::new(params, 7);
        let mut input = BytesMut::new();
        for chunk in bytes.chunks(7) {
            input.extend_from_slice(chunk);
            if hs.handle_input(&mut input, &mut rng).is_err() {
                break;
            }
        }
    }
}

/// Runs a whole handshake, delivering `step` bytes at a time each way, and
/// returns the client's and server's (id, key) pair.
fn handshake_in_steps(version: Version, step: usize) -> ([u8; 8], [u8; 8]) {
    use rand::SeedableRng;
    let params = Params {
        version,
        ..Params::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut client = ClientHandshake::new(params, false, &mut rng);
    let mut server = ServerHandshake::new(params, 42);
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let (mut server_in, mut client_in) = (BytesMut::new(), BytesMut::new());
    let (mut c, mut s) = (None, None);
    for _ in 0..1000 {
        if let Some(b) = client.poll_transmit() {
            to_server.extend_from_slice(&b);
        }
        if let Some(b) = server.poll_transmit() {
            to_client.extend_from_slice(&b);
        }
        let n = step.min(to_server.len());
        server_in.extend_from_slice(&to_server.split_to(n));
        server.handle_input(&mut server_in, &mut rng).unwrap();
        let n = step.min(to_client.len());
        client_in.extend_from_slice(&to_client.split_to(n));
        client.handle_input(&mut client_in).unwrap();
        c = c.or_else(|| client.poll_outcome());
        if let Some(Incoming::Session(session)) = server.poll_outcome() {
            s = Some(session);
        }
        if c.is_some() && s.is_some() && to_server.is_empty() {
            break;
        }
    }
    let (c, s) = (
        c.expect("client established"),
        s.expect("server established"),
    );
    assert_eq!((c.id(), s.id()), (42, 42));
    assert!(server_in.is_empty() && client_in.is_empty());
    (*c.key().as_bytes(), *s.key().as_bytes())
}

/// A handshake delivered one byte at a time reaches the same sessions as one
/// delivered whole.
#[test]
fn handshake_byte_by_byte() {
    for version in [Version::V1, Version::V2] {
        let whole = handshake_in_steps(version, usize::MAX);
        assert_eq!(whole.0, whole.1, "both sides agree the key");
        for step in 1..5 {
            assert_eq!(
                handshake_in_steps(version, step),
                whole,
                "{version:?} step {step}"
            );
        }
    }
}
