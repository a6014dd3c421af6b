//! Every test vector of `snet-wire.md`, reproduced byte for byte by driving
//! the client and server state machines with the vectors' fixed keys.

use bytes::BytesMut;
use rejoin::proto::dh::KeyPair;
use rejoin::proto::{
    ClientHandshake, ClientResume, Error, Incoming, Params, ServerHandshake, ServerResume, Session,
    Version,
};

const CLIENT_PRIV: u64 = 0x0123_4567_89ab_cdef;
const SERVER_PRIV: u64 = 0x0fed_cba9_8765_4321;
const CHALLENGE: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const RECONNECT_CHALLENGE: [u8; 8] = [0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18];
const PAYLOAD: &[u8] = b"hello snet";

fn params(version: Version, encrypt: bool) -> Params {
    Params {
        version,
        encrypt,
        ..Params::default()
    }
}

/// Everything each side put on the wire, and the established sessions.
struct Run {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    client: Session,
    server: Session,
}

fn drain(from: &mut Session) -> Vec<u8> {
    let (a, b) = from.poll_transmit();
    let out = [a, b].concat();
    from.handle_transmitted(out.len());
    out
}

/// New connection, client sends PAYLOAD, server echoes it.
fn establish(version: Version, encrypt: bool) -> Run {
    let p = params(version, encrypt);
    let mut client = ClientHandshake::with_key_pair(p, false, KeyPair::from_private(CLIENT_PRIV));
    let mut server = ServerHandshake::new(p, 1);
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());

    let hello = client.poll_transmit().unwrap();
    c2s.extend_from_slice(&hello);
    let mut input = BytesMut::from(&hello[..]);
    server
        .handle_input_with(&mut input, || {
            (KeyPair::from_private(SERVER_PRIV), CHALLENGE)
        })
        .unwrap();
    let welcome = server.poll_transmit().unwrap();
    s2c.extend_from_slice(&welcome);

    let mut input = BytesMut::from(&welcome[..]);
    client.handle_input(&mut input).unwrap();
    assert!(input.is_empty());
    if let Some(answer) = client.poll_transmit() {
        c2s.extend_from_slice(&answer);
        let mut input = BytesMut::from(&answer[..]);
        server
            .handle_input_with(&mut input, || unreachable!())
            .unwrap();
    }
    let mut client = client.poll_outcome().expect("client established");
    let Some(Incoming::Session(mut server)) = server.poll_outcome() else {
        panic!("server established");
    };
    assert_eq!(client.id(), 1);

    assert_eq!(client.handle_write(PAYLOAD), PAYLOAD.len());
    let mut up = drain(&mut client);
    c2s.extend_from_slice(&up);
    assert_eq!(server.handle_input(&mut up), PAYLOAD);

    assert_eq!(server.handle_write(PAYLOAD), PAYLOAD.len());
    let down = drain(&mut server);
    s2c.extend_from_slice(&down);
    Run {
        c2s,
        s2c,
        client,
        server,
    }
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

#[test]
fn v2_new_connection_encrypted() {
    let run = establish(Version::V2, true);
    assert_eq!(
        hex(&run.c2s),
        "0081a1a7f474ea5f44fddb0946146022e2a5ca4955c4f1f8ce1ec50870a93e80258074"
    );
    assert_eq!(
        hex(&run.s2c),
        "e966cb2d7993ed0a77a0641cc61ef34b01020304050607088d65cea015a3c4eae171"
    );
}

#[test]
fn v2_new_connection_plain() {
    let run = establish(Version::V2, false);
    assert_eq!(
        hex(&run.c2s),
        "0081a1a7f474ea5f44fddb0946146022e2a5ca4955c4f1f8ce68656c6c6f20736e6574"
    );
    assert_eq!(
        hex(&run.s2c),
        "e966cb2d7993ed0a77a0641cc61ef34b010203040506070868656c6c6f20736e6574"
    );
}

#[test]
fn v1_new_connection_encrypted() {
    let run = establish(Version::V1, true);
    assert_eq!(
        hex(&run.c2s),
        concat!(
            "0000000000000000",
            "81a1a7f474ea5f44",
            "000000000000000000000000000000000000000000000000",
            "1ec50870a93e80258074"
        )
    );
    assert_eq!(
        hex(&run.s2c),
        "e966cb2d7993ed0a77a0641cc61ef34b8d65cea015a3c4eae171"
    );
}

/// The client got only 4 of the server's 10 echoed bytes, then the link broke.
fn client_read_four(run: &mut Run) {
    let (a, _) = run.server.poll_transmit();
    assert!(a.is_empty(), "the echo was transmitted");
    let hist = run.server.history();
    let (a, b) = hist.slices_from(0).unwrap();
    let mut four = [a, b].concat()[..4].to_vec();
    assert_eq!(run.client.handle_input(&mut four), b"hell");
    assert_eq!((run.client.write_count(), run.client.read_count()), (10, 4));
    assert_eq!(
        (run.server.write_count(), run.server.read_count()),
        (10, 10)
    );
}

fn reconnect(version: Version) -> (Vec<u8>, Vec<u8>, Run) {
    let mut run = establish(version, true);
    client_read_four(&mut run);
    let (mut c2s, mut s2c) = (Vec::new(), Vec::new());

    let mut resume = ClientResume::new(&run.client);
    let request = resume.poll_transmit().unwrap();
    c2s.extend_from_slice(&request);

    let mut hs = ServerHandshake::new(params(version, true), 99);
    let mut input = BytesMut::from(&request[..]);
    hs.handle_input_with(&mut input, || unreachable!()).unwrap();
    let Some(Incoming::Reconnect(req)) = hs.poll_outcome() else {
        panic!("a reconnect");
    };
    let mut offer =
        ServerResume::with_challenge(&mut run.server, &req, || RECONNECT_CHALLENGE).unwrap();
    let reply = offer.poll_transmit().unwrap();
    s2c.extend_from_slice(&reply);

    let mut input = BytesMut::from(&reply[..]);
    resume.handle_input(&mut input).unwrap();
    if let Some(answer) = resume.poll_transmit() {
        c2s.extend_from_slice(&answer);
        offer
            .handle_input(&mut BytesMut::from(&answer[..]))
            .unwrap();
    }
    let client_point = resume.poll_outcome().unwrap().unwrap();
    let server_point = offer.poll_outcome().unwrap().unwrap();
    run.client.resume(client_point).unwrap();
    run.server.resume(server_point).unwrap();

    let mut resend = drain(&mut run.server);
    s2c.extend_from_slice(&resend);
    assert_eq!(run.client.handle_input(&mut resend), b"o snet");
    assert!(
        drain(&mut run.client).is_empty(),
        "client has nothing to resend"
    );
    (c2s, s2c, run)
}

#[test]
fn v2_reconnect() {
    let (c2s, s2c, _) = reconnect(Version::V2);
    assert_eq!(
        hex(&c2s),
        concat!(
            "ff",
            "0100000000000000",
            "0a00000000000000",
            "0400000000000000",
            "3e7d28bcc12241ceae9d641c09e832e7",
            "d6dbde4fa74ffaf63449d6ca3a4c1f0b"
        )
    );
    assert_eq!(
        hex(&s2c),
        concat!(
            "0a00000000000000",
            "0a00000000000000",
            "1112131415161718",
            "15a3c4eae171"
        )
    );
}

#[test]
fn v1_reconnect() {
    let (c2s, s2c, _) = reconnect(Version::V1);
    assert_eq!(
        hex(&c2s),
        concat!(
            "0100000000000000",
            "0a00000000000000",
            "0400000000000000",
            "3e7d28bcc12241ceae9d641c09e832e7"
        )
    );
    assert_eq!(
        hex(&s2c),
        concat!("0a00000000000000", "0a00000000000000", "15a3c4eae171")
    );
}

#[test]
fn v2_refusal_is_24_zeros_and_ends_the_client() {
    let mut run = establish(Version::V2, true);
    client_read_four(&mut run);
    // A server session with a different key refuses the (valid) request.
    let other = establish_with_server_key(0x1111);
    let mut resume = ClientResume::new(&run.client);
    let request = resume.poll_transmit().unwrap();
    let mut hs = ServerHandshake::new(params(Version::V2, true), 99);
    hs.handle_input_with(&mut BytesMut::from(&request[..]), || unreachable!())
        .unwrap();
    let Some(Incoming::Reconnect(req)) = hs.poll_outcome() else {
        panic!("a reconnect");
    };
    let mut server = other;
    assert!(ServerResume::with_challenge(&mut server, &req, || RECONNECT_CHALLENGE).is_err());
    let refusal = ServerResume::refusal(Version::V2);
    assert_eq!(hex(&refusal), "00".repeat(24));
    let mut input = BytesMut::from(&refusal[..]);
    assert_eq!(resume.handle_input(&mut input), Err(Error::Refused));
    assert!(ServerResume::refusal(Version::V1).is_empty());
}

fn establish_with_server_key(server_priv: u64) -> Session {
    let p = params(Version::V2, true);
    let mut client = ClientHandshake::with_key_pair(p, false, KeyPair::from_private(CLIENT_PRIV));
    let mut server = ServerHandshake::new(p, 1);
    let hello = client.poll_transmit().unwrap();
    server
        .handle_input_with(&mut BytesMut::from(&hello[..]), || {
            (KeyPair::from_private(server_priv), CHALLENGE)
        })
        .unwrap();
    let welcome = server.poll_transmit().unwrap();
    client
        .handle_input(&mut BytesMut::from(&welcome[..]))
        .unwrap();
    let answer = client.poll_transmit().unwrap();
    server
        .handle_input_with(&mut BytesMut::from(&answer[..]), || unreachable!())
        .unwrap();
    let Some(Incoming::Session(s)) = server.poll_outcome() else {
        panic!("server established");
    };
    s
}
