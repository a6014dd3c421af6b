//! The sealed suite's core, in memory: handshakes, frames, acks, resumes,
//! and what an attacker on the wire can and cannot do.

use bytes::BytesMut;
use proptest::prelude::*;
use rejoin::proto::sealed::{
    ClientExchange, ClientOutcome, Link, Psk, Request, ServerExchange, ServerOutcome, StaticKey,
};
use rejoin::proto::{Error, Params, Session};

fn params() -> Params {
    Params {
        history: 256 * 1024,
        ..Params::default()
    }
}

fn psk() -> Psk {
    Psk::from_bytes([42; 32])
}

/// Runs a client exchange against a server exchange, the server answering
/// with `answer`; returns both outcomes and every byte each side sent.
struct Run {
    client: Option<ClientOutcome>,
    server: Option<ServerOutcome>,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
}

fn run(
    mut client: ClientExchange,
    mut server: ServerExchange,
    mut answer: impl FnMut(&mut ServerExchange, &Request) -> Result<(), Error>,
) -> Result<Run, Error> {
    let mut out = Run {
        client: None,
        server: None,
        c2s: Vec::new(),
        s2c: Vec::new(),
    };
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    for _ in 0..8 {
        if let Some(b) = client.poll_transmit() {
            out.c2s.extend_from_slice(&b);
            to_server.extend_from_slice(&b);
        }
        if let Some(o) = client.poll_outcome() {
            out.client = Some(o?);
        }
        server.handle_input(&mut to_server)?;
        if let Some(req) = server.poll_request().cloned() {
            answer(&mut server, &req)?;
        }
        if let Some(b) = server.poll_transmit() {
            out.s2c.extend_from_slice(&b);
            to_client.extend_from_slice(&b);
        }
        if let Some(o) = server.poll_outcome() {
            out.server = Some(o);
        }
        client.handle_input(&mut to_client)?;
    }
    Ok(out)
}

fn accept(psk: Psk) -> impl FnMut(&mut ServerExchange, &Request) -> Result<(), Error> {
    move |s, _| s.accept_new(&psk, 7, params(), &mut rand::rng())
}

struct End {
    session: Session,
    link: Link,
    rx: BytesMut,
}

fn new_pair(server_key: Option<&StaticKey>) -> (End, End) {
    let pin = server_key.map(|k| *k.public());
    let client = ClientExchange::new_session(params(), &psk(), b"home", pin.as_ref()).unwrap();
    let server = ServerExchange::new(server_key.cloned());
    let r = run(client, server, accept(psk())).unwrap();
    let Some(ClientOutcome::Established(c)) = r.client else {
        panic!("client not established")
    };
    let Some(ServerOutcome::Established(s)) = r.server else {
        panic!("server not established")
    };
    assert_eq!(c.session.id(), 7);
    assert_eq!(c.session.secrets(), s.session.secrets());
    (
        End {
            session: c.session,
            link: c.link,
            rx: BytesMut::new(),
        },
        End {
            session: s.session,
            link: s.link,
            rx: BytesMut::new(),
        },
    )
}

/// Moves everything `from` has to send to `to`, through `wire` (which may
/// change it); returns the bytes that went over.
fn pump(from: &mut End, to: &mut End, wire: impl FnOnce(&mut Vec<u8>)) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    loop {
        let window = from.session.read_count() + (1 << 20);
        let out = from.link.poll_transmit(&mut from.session, window)?;
        if out.is_empty() {
            break;
        }
        bytes.extend_from_slice(out);
        let n = out.len();
        from.link.handle_transmitted(n);
    }
    let mut sent = bytes.clone();
    wire(&mut sent);
    to.link.input_buffer().extend_from_slice(&sent);
    let mut new = BytesMut::new();
    to.link.handle_input(&mut to.session, &mut new)?;
    let fresh = to.session.handle_input(&mut new);
    to.rx.extend_from_slice(fresh);
    Ok(bytes)
}

fn take(end: &mut End) -> Vec<u8> {
    end.rx.split().to_vec()
}

#[test]
fn data_flows_both_ways_and_acks_free_history() {
    let (mut c, mut s) = new_pair(None);
    let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    let n = c.session.handle_write(&data);
    assert_eq!(n, data.len());
    // Until the server's first frame, the client sends no more than the
    // initial window.
    let wire = pump(&mut c, &mut s, |_| {}).unwrap();
    assert!(
        !wire.windows(16).any(|w| w == &data[1000..1016]),
        "plaintext on the wire"
    );
    assert_eq!(s.rx.len(), 64 * 1024);
    // The server's ack and window, alone in a frame, let the rest go.
    pump(&mut s, &mut c, |_| {}).unwrap();
    pump(&mut c, &mut s, |_| {}).unwrap();
    assert_eq!(take(&mut s), data);
    assert!(c.session.write_capacity() < params().history - 100_000);
    pump(&mut s, &mut c, |_| {}).unwrap();
    assert_eq!(c.session.write_capacity(), params().history);
    s.session.handle_write(b"pong");
    pump(&mut s, &mut c, |_| {}).unwrap();
    assert_eq!(take(&mut c), b"pong");
}

#[test]
fn pinned_server_key_works_and_a_wrong_one_fails() {
    let key = StaticKey::generate().unwrap();
    let (mut c, mut s) = new_pair(Some(&key));
    c.session.handle_write(b"hi");
    pump(&mut c, &mut s, |_| {}).unwrap();
    assert_eq!(take(&mut s), b"hi");

    // A server with another static key (a man in the middle holding the PSK).
    let other = StaticKey::generate().unwrap();
    let client = ClientExchange::new_session(params(), &psk(), b"", Some(key.public())).unwrap();
    let err = run(client, ServerExchange::new(Some(other)), accept(psk())).err();
    assert_eq!(err, Some(Error::Unauthenticated));
    // A server without a static key cannot answer a pinned hello.
    let client = ClientExchange::new_session(params(), &psk(), b"", Some(key.public())).unwrap();
    let err = run(client, ServerExchange::new(None), accept(psk())).err();
    assert!(matches!(err, Some(Error::Unsupported(_))));
}

#[test]
fn a_wrong_psk_fails_on_the_server() {
    let client = ClientExchange::new_session(params(), &psk(), b"", None).unwrap();
    let err = run(
        client,
        ServerExchange::new(None),
        accept(Psk::from_bytes([1; 32])),
    )
    .err();
    assert_eq!(err, Some(Error::Unauthenticated));
}

#[test]
fn flipped_dropped_and_replayed_frames_fail() {
    for attack in 0..4 {
        let (mut c, mut s) = new_pair(None);
        c.session.handle_write(&[7u8; 100]);
        let first = pump(&mut c, &mut s, |_| {}).unwrap();
        // The server's window lets more through; then enough for two
        // frames (one carries at most 65,503 bytes).
        pump(&mut s, &mut c, |_| {}).unwrap();
        c.session.handle_write(&[8u8; 70_000]);
        let err = pump(&mut c, &mut s, |w| match attack {
            0 => w[20] ^= 1,
            1 => w.clear(), // dropped: the next frame then fails
            2 => *w = first.clone(),
            _ => {
                // Reordered: two fresh frames, the second before the first.
                let len = u16::from_le_bytes([w[0], w[1]]) as usize;
                assert!(w.len() > 2 + len, "two frames to swap");
                let (a, b) = w.split_at(2 + len);
                *w = [b, a].concat();
            }
        });
        if attack == 1 {
            c.session.handle_write(&[9u8; 100]);
            // The third frame arrives; the second never did.
            let err = pump(&mut c, &mut s, |_| {});
            assert_eq!(err.err(), Some(Error::Unauthenticated), "dropped");
            continue;
        }
        assert_eq!(err.err(), Some(Error::Unauthenticated), "attack {attack}");
    }
}

/// Resumes `c` and `s` on a new connection; both sides then resend.
fn resume(c: &mut End, s: &mut End) -> Result<Run, Error> {
    let client = ClientExchange::resume(&c.session, None)?;
    let server = ServerExchange::new(None);
    let session = &mut s.session;
    let r = run(client, server, |x, req| {
        assert_eq!(
            req,
            &Request::Resume {
                id: 7,
                pinned: false
            }
        );
        x.accept_resume(session)
    })?;
    Ok(r)
}

#[test]
fn a_resume_resends_what_was_lost() {
    let (mut c, mut s) = new_pair(None);
    c.session.handle_write(&[1u8; 5000]);
    pump(&mut c, &mut s, |_| {}).unwrap();
    c.session.handle_write(&[2u8; 5000]);
    // Lost on the old connection.
    pump(&mut c, &mut s, |w| w.clear()).unwrap();
    let mut r = resume(&mut c, &mut s).unwrap();
    let Some(ClientOutcome::Resumed(cr)) = r.client.take() else {
        panic!()
    };
    let Some(ServerOutcome::Resumed(sr)) = r.server.take() else {
        panic!()
    };
    c.session.resume(cr.point).unwrap();
    s.session.resume(sr.point).unwrap();
    c.link = cr.link;
    s.link = sr.link;
    pump(&mut c, &mut s, |_| {}).unwrap();
    let got = take(&mut s);
    assert_eq!(got.len(), 10_000);
    assert!(got[..5000].iter().all(|&b| b == 1) && got[5000..].iter().all(|&b| b == 2));
}

#[test]
fn a_recorded_resume_replayed_later_is_useless() {
    let (mut c, mut s) = new_pair(None);
    c.session.handle_write(&[1u8; 10]);
    pump(&mut c, &mut s, |_| {}).unwrap();
    let r = resume(&mut c, &mut s).unwrap();
    // The attacker replays the client's hello and confirm on a new
    // connection: the server answers, but the confirm does not open under
    // the new handshake's keys, so nothing is committed.
    let mut server = ServerExchange::new(None);
    let mut input = BytesMut::from(&r.c2s[..]);
    server.handle_input(&mut input).unwrap();
    assert!(server.poll_request().is_some());
    server.accept_resume(&s.session).unwrap();
    let err = server.handle_input(&mut input);
    assert_eq!(err, Err(Error::Unauthenticated));
    assert!(server.poll_outcome().is_none());
}

#[test]
fn a_forged_resume_without_the_secret_is_refused() {
    let (_c, mut s) = new_pair(None);
    // An attacker who knows the conn ID and the counts, but not the secret,
    // starts a resume of another session with the same ID.
    let (mut other, _) = new_pair(None);
    other.session.handle_write(b"x");
    let client = ClientExchange::resume(&other.session, None).unwrap();
    let session = &mut s.session;
    let err = run(client, ServerExchange::new(None), |x, _| {
        x.accept_resume(session)
    })
    .err();
    assert_eq!(err, Some(Error::Unauthenticated));
    assert_eq!(s.session.epoch(), 0);
}

proptest! {
    #[test]
    fn hellos_and_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut server = ServerExchange::new(None);
        let mut input = BytesMut::from(&bytes[..]);
        if server.handle_input(&mut input).is_ok() && server.poll_request().is_some() {
            let _ = server.accept_new(&psk(), 1, params(), &mut rand::rng());
        }
        let (mut c, mut s) = new_pair(None);
        let _ = &mut c;
        s.link.input_buffer().extend_from_slice(&bytes);
        let _ = s.link.handle_input(&mut s.session, &mut s.rx);
        let mut client = ClientExchange::new_session(params(), &psk(), b"", None).unwrap();
        let mut input = BytesMut::from(&bytes[..]);
        let _ = client.handle_input(&mut input);
    }

    #[test]
    fn hellos_decode_in_any_pieces(cut in 0usize..200, id in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut client = ClientExchange::new_session(params(), &psk(), &id, None).unwrap();
        let hello = client.poll_transmit().unwrap();
        let cut = cut.min(hello.len());
        let mut input = BytesMut::from(&hello[..cut]);
        let decoded = Request::decode_hello(&mut input).unwrap();
        prop_assert_eq!(decoded.is_some(), cut == hello.len());
        input.extend_from_slice(&hello[cut..]);
        if decoded.is_none() {
            let (req, _) = Request::decode_hello(&mut input).unwrap().unwrap();
            prop_assert_eq!(req, Request::New { psk_id: id.clone(), pinned: false });
        }
        prop_assert!(input.is_empty());
    }
}

#[test]
fn oversized_fields_are_refused() {
    let too_long = vec![0u8; 65];
    assert!(ClientExchange::new_session(params(), &psk(), &too_long, None).is_err());
    let mut input = BytesMut::from(&[0x10u8, 65][..]);
    assert!(Request::decode_hello(&mut input).is_err());
    let mut input = BytesMut::from(&[0x12u8, 1, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff][..]);
    assert!(Request::decode_hello(&mut input).is_err());
    let mut input = BytesMut::from(&[0x00u8, 0, 0][..]);
    assert_eq!(
        Request::decode_hello(&mut input),
        Err(Error::UnknownType(0))
    );
}

/// A pinned resume's hello must prove the resume secret when it opens, as
/// an unpinned one does: under `IKpsk2` (the secret mixed in at message 2)
/// anyone with the server's public key and a live conn ID wrote a hello
/// that opened, and earned an answer that said whether its counts were in
/// range, without being counted as a failed proof.
#[test]
fn a_forged_pinned_resume_does_not_open() {
    let key = StaticKey::generate().unwrap();
    let (_c, s) = new_pair(Some(&key));
    let (mut other, _) = new_pair(Some(&key));
    other.session.handle_write(b"x");
    let mut client = ClientExchange::resume(&other.session, Some(key.public())).unwrap();
    let mut server = ServerExchange::new(Some(key.clone()));
    let mut input = BytesMut::from(&client.poll_transmit().unwrap()[..]);
    server.handle_input(&mut input).unwrap();
    assert!(matches!(
        server.poll_request(),
        Some(Request::Resume { pinned: true, .. })
    ));
    let secrets = s.session.secrets().unwrap().clone();
    assert_eq!(server.open_resume(&secrets), Err(Error::Unauthenticated));
    assert!(server.poll_transmit().is_none(), "nothing answered");
}

/// After its welcome, a server waits for a confirm of one known length: a
/// length prefix claiming more is refused at once (before, two bytes made
/// it reserve 64 KiB and wait for them until the handshake timed out).
#[test]
fn a_confirm_of_the_wrong_length_is_refused_at_once() {
    let mut client = ClientExchange::new_session(params(), &psk(), b"home", None).unwrap();
    let mut server = ServerExchange::new(None);
    let mut input = BytesMut::from(&client.poll_transmit().unwrap()[..]);
    server.handle_input(&mut input).unwrap();
    assert!(server.poll_request().is_some());
    server
        .accept_new(&psk(), 7, params(), &mut rand::rng())
        .unwrap();
    assert!(server.poll_transmit().is_some(), "welcomed");
    let mut input = BytesMut::from(&[0xffu8, 0xff][..]);
    assert_eq!(
        server.handle_input(&mut input),
        Err(Error::Malformed("confirm frame"))
    );
}
