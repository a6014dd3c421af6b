//! The protocol core: RC4 through our cipher layer against the bare `rc4`
//! crate, the dh64 handshake, and the session's write path.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rc4::{KeyInit, Rc4, StreamCipher};
use rejoin::proto::cipher::server_ciphers;
use rejoin::proto::{ClientHandshake, Incoming, Key, Params, ServerHandshake};

const CHUNK: usize = 64 * 1024;

fn rc4(c: &mut Criterion) {
    let key = Key::from_bytes(*b"benchkey");
    let mut group = c.benchmark_group("rc4");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    let mut buf = vec![0u8; CHUNK];
    let mut bare = Rc4::new_from_slice(key.as_bytes()).expect("8-byte key");
    group.bench_function("bare rc4 crate", |b| {
        b.iter(|| bare.apply_keystream(black_box(&mut buf)))
    });
    let (mut ours, _) = server_ciphers(&key, true, 1);
    group.bench_function("cipher layer, in place", |b| {
        b.iter(|| ours.write.apply(black_box(&mut buf)))
    });
    let input = vec![7u8; CHUNK];
    group.bench_function("cipher layer, copying", |b| {
        b.iter(|| {
            ours.write
                .apply_into(black_box(&input), black_box(&mut buf))
        })
    });
    group.finish();
}

fn handshake(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(1);
    let params = Params::default();
    c.bench_function("dh64 handshake (both sides)", |b| {
        b.iter(|| {
            let mut client = ClientHandshake::new(params, false, &mut rng);
            let mut server = ServerHandshake::new(params, 1);
            let hello = client.poll_transmit().expect("hello");
            server
                .handle_input(&mut BytesMut::from(&hello[..]), &mut rng)
                .expect("hello accepted");
            let welcome = server.poll_transmit().expect("welcome");
            client
                .handle_input(&mut BytesMut::from(&welcome[..]))
                .expect("welcome accepted");
            let answer = client.poll_transmit().expect("answer");
            server
                .handle_input(&mut BytesMut::from(&answer[..]), &mut rng)
                .expect("answer accepted");
            let Some(Incoming::Session(s)) = server.poll_outcome() else {
                panic!("established");
            };
            black_box((s, client.poll_outcome()))
        })
    });
}

fn session_write(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(2);
    let mut group = c.benchmark_group("session write path");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    for encrypt in [false, true] {
        let params = Params {
            encrypt,
            history: 4 * CHUNK,
            in_flight: CHUNK,
            ..Params::default()
        };
        let mut hs = ClientHandshake::new(params, false, &mut rng);
        let mut server = ServerHandshake::new(params, 1);
        let hello = hs.poll_transmit().expect("hello");
        server
            .handle_input(&mut BytesMut::from(&hello[..]), &mut rng)
            .expect("hello accepted");
        let welcome = server.poll_transmit().expect("welcome");
        hs.handle_input(&mut BytesMut::from(&welcome[..]))
            .expect("welcome accepted");
        let mut session = hs.poll_outcome().expect("established");
        let data = vec![3u8; CHUNK];
        let name = if encrypt { "rc4" } else { "plain" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let n = session.handle_write(black_box(&data));
                session.handle_transmitted(n);
                // Pretend the transport took everything and the peer confirmed it.
                black_box(session.poll_transmit());
            })
        });
    }
    group.finish();
}

fn frames(c: &mut Criterion) {
    use bytes::Bytes;
    use rejoin::tunnel::frame::{Frame, MAX_DATA};
    let mut group = c.benchmark_group("tunnel frames");
    let payload = Bytes::from(vec![7u8; MAX_DATA]);
    let frame = Frame::Data {
        id: 5,
        payload: payload.clone(),
    };
    group.throughput(Throughput::Bytes(MAX_DATA as u64));
    group.bench_function("encode DATA 64 KiB", |b| {
        let mut out = BytesMut::with_capacity(MAX_DATA + 16);
        b.iter(|| {
            out.clear();
            black_box(&frame).encode(&mut out);
            black_box(out.len())
        })
    });
    let mut wire = BytesMut::new();
    frame.encode(&mut wire);
    let wire = wire.freeze();
    group.bench_function("decode DATA 64 KiB", |b| {
        b.iter(|| {
            let mut w = wire.clone();
            black_box(Frame::decode_bytes(&mut w).expect("valid"))
        })
    });
    let small: Vec<Frame> = (0..64)
        .map(|i| Frame::Window {
            id: 2 * i + 1,
            increment: 4096,
        })
        .collect();
    let mut wire = BytesMut::new();
    for f in &small {
        f.encode(&mut wire);
    }
    let wire = wire.freeze();
    group.throughput(Throughput::Elements(small.len() as u64));
    group.bench_function("decode 64 WINDOW frames", |b| {
        b.iter(|| {
            let mut w = wire.clone();
            while let Some(f) = Frame::decode_bytes(&mut w).expect("valid") {
                black_box(f);
            }
        })
    });
    group.finish();
}

/// One whole sealed handshake, both sides in memory (hello, welcome,
/// confirm): what each new connection and each resume costs in CPU.
fn sealed_handshake(c: &mut Criterion) {
    use rejoin::proto::sealed::{ClientExchange, Psk, ServerExchange, StaticKey};
    let psk = Psk::from_bytes([9; 32]);
    let key = StaticKey::generate().expect("key");
    let mut rng = StdRng::seed_from_u64(2);
    let mut group = c.benchmark_group("sealed handshake");
    for (name, pinned) in [("NNpsk0", false), ("IKpsk2", true)] {
        let pin = pinned.then(|| *key.public());
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut client =
                    ClientExchange::new_session(Params::default(), &psk, b"bench", pin.as_ref())
                        .expect("client");
                let mut server = ServerExchange::new(Some(key.clone()));
                let mut wire = BytesMut::from(&client.poll_transmit().expect("hello")[..]);
                server.handle_input(&mut wire).expect("hello in");
                server
                    .accept_new(&psk, 1, Params::default(), &mut rng)
                    .expect("accept");
                let mut wire = BytesMut::from(&server.poll_transmit().expect("welcome")[..]);
                client.handle_input(&mut wire).expect("welcome in");
                let mut wire = BytesMut::from(&client.poll_transmit().expect("confirm")[..]);
                server.handle_input(&mut wire).expect("confirm in");
                black_box(server.poll_outcome().expect("established"));
            })
        });
    }
    // A resume of a live session: what each reconnect costs (the resume
    // secret proved, counts carried, fresh keys; NNpsk0 or, pinned, IKpsk1).
    for (name, pinned) in [("resume, NNpsk0", false), ("resume, pinned IKpsk1", true)] {
        let pin = pinned.then(|| *key.public());
        let (client_session, server_session) = established_pair(&psk, &key, pin.as_ref());
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut client =
                    ClientExchange::resume(&client_session, pin.as_ref()).expect("client");
                let mut server = ServerExchange::new(Some(key.clone()));
                let mut wire = BytesMut::from(&client.poll_transmit().expect("hello")[..]);
                server.handle_input(&mut wire).expect("hello in");
                server.accept_resume(&server_session).expect("accept");
                let mut wire = BytesMut::from(&server.poll_transmit().expect("welcome")[..]);
                client.handle_input(&mut wire).expect("welcome in");
                let mut wire = BytesMut::from(&client.poll_transmit().expect("confirm")[..]);
                server.handle_input(&mut wire).expect("confirm in");
                black_box(server.poll_outcome().expect("resumed"));
            })
        });
    }
    group.finish();
}

/// A client's and a server's session after a whole new-session handshake.
fn established_pair(
    psk: &rejoin::proto::sealed::Psk,
    key: &rejoin::proto::sealed::StaticKey,
    pin: Option<&[u8; 32]>,
) -> (rejoin::proto::Session, rejoin::proto::Session) {
    use rejoin::proto::sealed::{ClientExchange, ClientOutcome, ServerExchange, ServerOutcome};
    let mut client =
        ClientExchange::new_session(Params::default(), psk, b"bench", pin).expect("client");
    let mut server = ServerExchange::new(Some(key.clone()));
    let mut wire = BytesMut::from(&client.poll_transmit().expect("hello")[..]);
    server.handle_input(&mut wire).expect("hello in");
    server
        .accept_new(psk, 1, Params::default(), &mut StdRng::seed_from_u64(3))
        .expect("accept");
    let mut wire = BytesMut::from(&server.poll_transmit().expect("welcome")[..]);
    client.handle_input(&mut wire).expect("welcome in");
    let mut wire = BytesMut::from(&client.poll_transmit().expect("confirm")[..]);
    server.handle_input(&mut wire).expect("confirm in");
    let Some(Ok(ClientOutcome::Established(c))) = client.poll_outcome() else {
        panic!("client established");
    };
    let Some(ServerOutcome::Established(s)) = server.poll_outcome() else {
        panic!("server established");
    };
    (c.session, s.session)
}

/// Sealing and opening 64 KiB of stream bytes in frames, through a session.
fn sealed_frames(crit: &mut Criterion) {
    use rejoin::proto::sealed::{
        ClientExchange, ClientOutcome, Psk, ServerExchange, ServerOutcome,
    };
    let psk = Psk::from_bytes([9; 32]);
    let params = Params {
        history: 1 << 20,
        ..Params::default()
    };
    let mut client = ClientExchange::new_session(params, &psk, b"", None).expect("client");
    let mut server = ServerExchange::new(None);
    let mut wire = BytesMut::from(&client.poll_transmit().expect("hello")[..]);
    server.handle_input(&mut wire).expect("hello in");
    server
        .accept_new(&psk, 1, params, &mut StdRng::seed_from_u64(3))
        .expect("accept");
    let mut wire = BytesMut::from(&server.poll_transmit().expect("welcome")[..]);
    client.handle_input(&mut wire).expect("welcome in");
    let mut wire = BytesMut::from(&client.poll_transmit().expect("confirm")[..]);
    server.handle_input(&mut wire).expect("confirm in");
    let Some(Ok(ClientOutcome::Established(mut c))) = client.poll_outcome() else {
        panic!("client established")
    };
    let Some(ServerOutcome::Established(mut s)) = server.poll_outcome() else {
        panic!("server established")
    };
    let data = vec![5u8; CHUNK];
    let mut group = crit.benchmark_group("sealed frames");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    let mut plain = BytesMut::with_capacity(2 * CHUNK);
    group.bench_function("seal and open 64 KiB", |b| {
        b.iter(|| {
            c.session.handle_write(&data);
            let window = u64::MAX;
            let out = c
                .link
                .poll_transmit(&mut c.session, window)
                .expect("seal")
                .to_vec();
            c.link.handle_transmitted(out.len());
            s.link.input_buffer().extend_from_slice(&out);
            plain.clear();
            s.link
                .handle_input(&mut s.session, &mut plain)
                .expect("open");
            black_box(s.session.handle_input(&mut plain).len());
            // Acknowledge, so the history never fills.
            let ack = s
                .link
                .poll_transmit(&mut s.session, u64::MAX)
                .expect("ack")
                .to_vec();
            s.link.handle_transmitted(ack.len());
            c.link.input_buffer().extend_from_slice(&ack);
            c.link
                .handle_input(&mut c.session, &mut plain)
                .expect("ack in");
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    rc4,
    handshake,
    session_write,
    frames,
    sealed_handshake,
    sealed_frames
);
criterion_main!(benches);
