//! Every decoder a peer's bytes reach, as functions of arbitrary input that
//! must never panic: the fuzz targets under `fuzz/` call them, and
//! `tests/fuzz_corpora.rs` replays every committed corpus file through them
//! on the stable toolchain. Not part of the API (feature `internals`).

use bytes::{Bytes, BytesMut};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::proto::message::Answer;
use crate::proto::record::RecordReader;
use crate::proto::sealed::{
    ClientExchange, ClientOutcome, Psk, Request, ServerExchange, ServerOutcome,
};
use crate::proto::{
    ClientHandshake, ClientHello, ClientResume, Incoming, Params, ResumeReply, ServerHandshake,
    ServerResume, Session, Version, Welcome,
};
use crate::tunnel::frame::Frame;

/// Splits `data` into the version it picks (its first byte) and the rest.
fn version_and_rest(data: &[u8]) -> (Version, &[u8]) {
    match data.split_first() {
        Some((b, rest)) if b & 1 == 1 => (Version::V1, rest),
        Some((_, rest)) => (Version::V2, rest),
        None => (Version::V2, data),
    }
}

/// Feeds `data` to `step` in pieces of a size the data picks, as a network
/// would deliver it, until `step` fails.
fn in_pieces(data: &[u8], mut step: impl FnMut(&mut BytesMut) -> bool) {
    let (size, rest) = match data.split_first() {
        Some((b, rest)) => (usize::from(*b % 64) + 1, rest),
        None => return,
    };
    let mut input = BytesMut::new();
    for piece in rest.chunks(size) {
        input.extend_from_slice(piece);
        if !step(&mut input) {
            return;
        }
    }
}

/// snet messages, both versions: client hello (new or reconnect), welcome,
/// resume reply, answer.
pub fn snet_messages(data: &[u8]) {
    let (v, rest) = version_and_rest(data);
    let mut buf = rest;
    while let Ok(Some(_)) = ClientHello::decode(v, &mut buf) {}
    let mut buf = rest;
    while let Ok(Some(_)) = Welcome::decode(v, &mut buf) {}
    let mut buf = rest;
    while let Ok(Some(_)) = ResumeReply::decode(v, &mut buf) {}
    let mut buf = rest;
    while let Ok(Some(_)) = Answer::decode(&mut buf) {}
}

/// A session on each side of an snet handshake run in memory, with fixed
/// randomness.
fn snet_pair(version: Version) -> Option<(Session, Session)> {
    let params = Params {
        version,
        ..Params::default()
    };
    let mut rng = StdRng::seed_from_u64(1);
    let mut client = ClientHandshake::new(params, version == Version::V2, &mut rng);
    let mut server = ServerHandshake::new(params, 7);
    let mut to_server = BytesMut::from(&client.poll_transmit()?[..]);
    server.handle_input(&mut to_server, &mut rng).ok()?;
    let mut to_client = BytesMut::from(&server.poll_transmit()?[..]);
    client.handle_input(&mut to_client).ok()?;
    let c = client.poll_outcome()?;
    if let Some(answer) = client.poll_transmit() {
        to_server.extend_from_slice(&answer);
        server.handle_input(&mut to_server, &mut rng).ok()?;
    }
    match server.poll_outcome()? {
        Incoming::Session(s) => Some((c, s)),
        Incoming::Reconnect(_) => None,
    }
}

/// The snet exchanges a peer's bytes reach: a server's handshake (hello,
/// reconnect request, answer), a client's (welcome), a client's resume
/// (reply), a server's resume (answer), and session data.
pub fn snet_exchanges(data: &[u8]) {
    let (v, rest) = version_and_rest(data);
    let params = Params {
        version: v,
        ..Params::default()
    };
    let mut rng = StdRng::seed_from_u64(2);
    let mut server = ServerHandshake::new(params, 7);
    in_pieces(rest, |input| server.handle_input(input, &mut rng).is_ok());
    let mut client = ClientHandshake::new(params, v == Version::V2, &mut rng);
    in_pieces(rest, |input| client.handle_input(input).is_ok());
    let Some((mut c, mut s)) = snet_pair(v) else {
        return;
    };
    let mut resume = ClientResume::new(&c);
    in_pieces(rest, |input| resume.handle_input(input).is_ok());
    let request = crate::proto::ReconnectRequest {
        id: c.id(),
        write_count: c.announced_write(),
        read_count: c.read_count(),
        tag: crate::proto::auth::reconnect_tag(c.id(), 0, 0, c.key()),
    };
    if let Ok(mut answer) = ServerResume::new(&mut s, &request, &mut rng) {
        in_pieces(rest, |input| answer.handle_input(input).is_ok());
    }
    let mut bytes = rest.to_vec();
    c.handle_input(&mut bytes);
}

/// rejoin's record layer (DATA, PING, PONG, FIN, DONE), in pieces.
pub fn records(data: &[u8]) {
    let mut reader = RecordReader::new();
    let (size, rest) = match data.split_first() {
        Some((b, rest)) => (usize::from(*b % 64) + 1, rest),
        None => return,
    };
    for piece in rest.chunks(size) {
        let mut piece = piece.to_vec();
        if reader.filter(&mut piece, |_| {}).is_err() {
            return;
        }
    }
}

/// Tunnel frames, login and UDP datagrams among them, from both decoders.
pub fn tunnel_frames(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = Frame::decode(&mut buf) {}
    let mut buf = Bytes::copy_from_slice(data);
    while let Ok(Some(_)) = Frame::decode_bytes(&mut buf) {}
}

fn psk() -> Psk {
    Psk::from_bytes([42; 32])
}

/// The sealed suite's hellos and welcomes: a server reading a client's
/// hello (and accepting it if it names a new session), a client reading a
/// server's welcome or reject.
pub fn sealed_hellos(data: &[u8]) {
    let mut input = BytesMut::from(data);
    let _ = Request::decode_hello(&mut input);
    let mut server = ServerExchange::new(None);
    let mut input = BytesMut::from(data);
    if server.handle_input(&mut input).is_ok()
        && let Some(Request::New { .. }) = server.poll_request()
    {
        let _ = server.accept_new(&psk(), 7, Params::default(), &mut StdRng::seed_from_u64(3));
        let _ = server.handle_input(&mut input);
    }
    if let Ok(mut client) = ClientExchange::new_session(Params::default(), &psk(), b"x", None) {
        let mut input = BytesMut::from(data);
        let _ = client.handle_input(&mut input);
    }
}

/// Sealed frames after a handshake: both ends' links fed arbitrary bytes
/// (none open without the keys; what is read before is the length).
pub fn sealed_frames(data: &[u8]) {
    let Some((mut c, mut s)) = sealed_pair() else {
        return;
    };
    let mut plain = BytesMut::new();
    c.1.input_buffer().extend_from_slice(data);
    let _ = c.1.handle_input(&mut c.0, &mut plain);
    s.1.input_buffer().extend_from_slice(data);
    let _ = s.1.handle_input(&mut s.0, &mut plain);
}

pub(crate) type End = (Session, crate::proto::sealed::Link);

/// A sealed session on each side, run in memory.
pub(crate) fn sealed_pair() -> Option<(End, End)> {
    let mut client = ClientExchange::new_session(Params::default(), &psk(), b"x", None).ok()?;
    let mut server = ServerExchange::new(None);
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    let mut rng = StdRng::seed_from_u64(4);
    let (mut c, mut s) = (None, None);
    for _ in 0..4 {
        if let Some(b) = client.poll_transmit() {
            to_server.extend_from_slice(&b);
        }
        if let Some(Ok(ClientOutcome::Established(e))) = client.poll_outcome() {
            c = Some((e.session, e.link));
        }
        server.handle_input(&mut to_server).ok()?;
        if server.poll_request().is_some() && server.poll_transmit().is_none() && s.is_none() {
            let _ = server.accept_new(&psk(), 7, Params::default(), &mut rng);
        }
        if let Some(b) = server.poll_transmit() {
            to_client.extend_from_slice(&b);
        }
        if let Some(ServerOutcome::Established(e)) = server.poll_outcome() {
            s = Some((e.session, e.link));
        }
        client.handle_input(&mut to_client).ok()?;
    }
    Some((c?, s?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory pairs the targets need do come about (else the
    /// targets would test nothing past the handshake).
    #[test]
    fn the_targets_reach_past_the_handshakes() {
        assert!(snet_pair(Version::V2).is_some());
        assert!(snet_pair(Version::V1).is_some());
        assert!(sealed_pair().is_some());
        for f in [
            snet_messages,
            snet_exchanges,
            records,
            tunnel_frames,
            sealed_hellos,
            sealed_frames,
        ] {
            f(&[]);
            f(&[0; 100]);
            f(&[0xff; 100]);
        }
    }
}
