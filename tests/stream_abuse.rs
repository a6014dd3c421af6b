//! Hostile and broken peers against the listener: refused reconnects that
//! leave the real session usable, handshake abuse, half-open floods and
//! limits. The server must go on serving everyone else, with bounded memory.

mod common;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rejoin::proto::auth::reconnect_tag;
use rejoin::proto::message::{ClientHello, ReconnectRequest};
use rejoin::proto::{
    ClientHandshake, ClientResume, Error as ProtoError, Key, Params, Session, Version,
};
use rejoin::stream::{self, Config, Listener, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

/// A protocol client driven by hand over a bare socket, so tests can forge
/// what a real client never sends.
struct Raw {
    io: TcpStream,
    session: Session,
}

impl Raw {
    async fn connect(addr: SocketAddr, params: Params) -> Raw {
        let mut io = TcpStream::connect(addr).await.unwrap();
        let mut hs = ClientHandshake::new(params, false, &mut StdRng::seed_from_u64(3));
        let mut input = BytesMut::new();
        loop {
            if let Some(out) = hs.poll_transmit() {
                io.write_all(&out).await.unwrap();
            }
            if let Some(session) = hs.poll_outcome() {
                assert!(
                    input.is_empty(),
                    "the server sends nothing before our answer"
                );
                return Raw { io, session };
            }
            assert!(io.read_buf(&mut input).await.unwrap() > 0);
            hs.handle_input(&mut input).unwrap();
        }
    }

    async fn send(&mut self, data: &[u8]) {
        assert_eq!(self.session.handle_write(data), data.len());
        let (a, b) = self.session.poll_transmit();
        let wire = [a, b].concat();
        self.session.handle_transmitted(wire.len());
        self.io.write_all(&wire).await.unwrap();
    }

    async fn recv(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n {
            let mut buf = [0u8; 4096];
            let got = timeout(LIMIT, self.io.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(got > 0, "session connection closed");
            out.extend_from_slice(self.session.handle_input(&mut buf[..got]));
        }
        out
    }

    /// A reconnect request for this session with chosen counts and key.
    fn request(&self, write_count: u64, read_count: u64, key: &Key) -> ReconnectRequest {
        ReconnectRequest {
            id: self.session.id(),
            write_count,
            read_count,
            tag: reconnect_tag(self.session.id(), write_count, read_count, key),
        }
    }
}

/// Sends `hello` on a fresh connection and returns everything the server
/// says before it closes (bounded by LIMIT).
async fn reply_to(addr: SocketAddr, version: Version, hello: &ClientHello) -> Vec<u8> {
    let mut io = TcpStream::connect(addr).await.unwrap();
    let mut bytes = Vec::new();
    hello.encode(version, &mut bytes);
    io.write_all(&bytes).await.unwrap();
    let mut reply = Vec::new();
    let _ = timeout(LIMIT, io.read_to_end(&mut reply)).await.unwrap();
    reply
}

async fn echo_listener(config: Config) -> (SocketAddr, std::sync::Arc<Listener>) {
    let listener = std::sync::Arc::new(Listener::bind("127.0.0.1:0", config).await.unwrap());
    let addr = listener.local_addr().unwrap();
    let accepting = listener.clone();
    tokio::spawn(async move {
        while let Ok(stream) = accepting.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, listener)
}

/// The reference implementation's refusal cases. Each forged reconnect gets
/// the v2 refusal (24 zero bytes), which a client reads as a clear error,
/// and the real session goes on as if nothing happened.
#[tokio::test]
async fn refused_reconnects_leave_the_session_alone() {
    common::logs();
    let mut config = Config::default();
    // A small history, so "counts beyond the history" is reachable.
    config.socket_buffer = Some(4096);
    config.path_buffer = 0;
    config.history = 32 << 10;
    let (addr, listener) = echo_listener(config.clone()).await;
    // The raw client keeps a normal history; only the server's is small.
    let mut raw = Raw::connect(addr, Config::default().params()).await;
    raw.send(b"ping").await;
    assert_eq!(raw.recv(4).await, b"ping");
    // Server: wc = 4, rc = 4. Client: wc = 4, rc = 4.
    let key = *raw.session.key();
    let wrong_key = Key::from_bytes(*b"notthe!!");
    let cases: Vec<(&str, ReconnectRequest)> = vec![
        ("wrong write count", raw.request(2, 4, &key)),
        ("wrong read count", raw.request(4, 9, &key)),
        ("wrong key", raw.request(4, 4, &wrong_key)),
        ("unknown conn ID", {
            let mut r = raw.request(4, 4, &key);
            r.id ^= 0x5a5a;
            r.tag = reconnect_tag(r.id, 4, 4, &key);
            r
        }),
    ];
    for (name, request) in cases {
        let reply = reply_to(addr, Version::V2, &ClientHello::Reconnect(request)).await;
        assert_eq!(reply, [0u8; 24], "{name}: refused with 24 zero bytes");
        // What a client makes of it: a clear error.
        let mut resume = ClientResume::new(&raw.session);
        let _ = resume.poll_transmit();
        let mut input = BytesMut::from(&reply[..]);
        assert_eq!(
            resume.handle_input(&mut input),
            Err(ProtoError::Refused),
            "{name}"
        );
        // And the real session is untouched.
        raw.send(name.as_bytes()).await;
        assert_eq!(
            raw.recv(name.len()).await,
            name.as_bytes(),
            "{name}: session usable"
        );
    }

    // Counts beyond the history: the server echoes 100 KiB that we do not
    // read, so what it would have to resend from our read count is gone.
    let big = vec![7u8; 100 << 10];
    raw.send(&big).await;
    // Wait until the server has sent us more than its history holds.
    let mut waiting = vec![0u8; 64 << 10];
    for _ in 0..3000 {
        if raw.io.peek(&mut waiting).await.unwrap() > 40 << 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = raw.session.read_count();
    let stale = raw.request(raw.session.write_count(), before, &key);
    let reply = reply_to(addr, Version::V2, &ClientHello::Reconnect(stale)).await;
    assert_eq!(reply, [0u8; 24], "history too short: refused");
    assert_eq!(raw.recv(big.len()).await, big, "session still usable");
    assert_eq!(listener.stats().refused, 5);
    assert_eq!(listener.stats().sessions, 1);
}

/// A real session that keeps echoing while others misbehave.
async fn bystander(addr: SocketAddr, config: Config) -> Stream {
    let mut s = stream::connect(addr.to_string(), config).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).await.unwrap();
    s
}

/// The session `s` still echoes.
async fn echoes(s: &mut Stream) {
    s.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    timeout(LIMIT, s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still");
}

/// The session `s` still echoes, and a fresh one is served.
async fn still_serving(s: &mut Stream, addr: SocketAddr, config: &Config) {
    echoes(s).await;
    let mut fresh = bystander(addr, config.clone()).await;
    fresh.write_all(b"x").await.unwrap();
}

/// Sends raw bytes on a fresh connection; returns how long the server took to
/// close it, and what it sent.
async fn close_time(addr: SocketAddr, bytes: &[u8]) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut io = TcpStream::connect(addr).await.unwrap();
    io.write_all(bytes).await.unwrap();
    let mut reply = Vec::new();
    let r = timeout(LIMIT, io.read_to_end(&mut reply))
        .await
        .expect("server closes");
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset)
    );
    (start.elapsed(), reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_abuse_is_refused_cleanly() {
    common::logs();
    let mut config = Config::default();
    config.handshake_timeout = Duration::from_secs(1);
    let (addr, listener) = echo_listener(config.clone()).await;
    let mut real = bystander(addr, config.clone()).await;
    let established = listener.stats().established;

    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
    let (t, _) = close_time(addr, &garbage).await;
    assert!(
        t < Duration::from_millis(900),
        "garbage closed at once ({t:?})"
    );

    let (t, reply) = close_time(addr, &[0x42; 9]).await;
    assert!(
        t < Duration::from_millis(900) && reply.is_empty(),
        "bad type byte"
    );

    let mut zero_key = vec![0x00];
    zero_key.extend_from_slice(&0u64.to_le_bytes());
    let (t, reply) = close_time(addr, &zero_key).await;
    assert!(
        t < Duration::from_millis(900) && reply.is_empty(),
        "zero key"
    );
    let mut p_minus_one = vec![0x00];
    p_minus_one.extend_from_slice(&(rejoin::proto::dh::P - 1).to_le_bytes());
    let (_, reply) = close_time(addr, &p_minus_one).await;
    assert!(reply.is_empty(), "p - 1 refused");

    // A hello, then no answer: closed by the handshake timeout.
    let mut hello = vec![0x00];
    hello.extend_from_slice(&12345u64.to_le_bytes());
    let (t, reply) = close_time(addr, &hello).await;
    assert_eq!(reply.len(), 24, "welcome sent");
    assert!(
        t >= Duration::from_millis(900) && t < Duration::from_secs(5),
        "missing MD5 ({t:?})"
    );

    // A hello and a wrong answer: closed at once (the server may close
    // before its welcome goes out, having read both together).
    let mut wrong = hello.clone();
    wrong.extend_from_slice(&[9u8; 16]);
    let (t, reply) = close_time(addr, &wrong).await;
    assert!(reply.len() == 24 || reply.is_empty());
    assert!(t < Duration::from_millis(900), "wrong MD5 ({t:?})");

    // A reconnect for a session that does not exist.
    let mut unknown = vec![0xFF];
    unknown.extend_from_slice(&[0x33; 40]);
    let (_, reply) = close_time(addr, &unknown).await;
    assert_eq!(reply, [0u8; 24], "unknown conn ID refused");

    assert_eq!(
        listener.stats().established,
        established,
        "no session came of any of it"
    );
    still_serving(&mut real, addr, &config).await;
}

#[tokio::test]
async fn v1_abuse_is_refused_cleanly() {
    let mut config = Config::default();
    config.version = Version::V1;
    let (addr, _listener) = echo_listener(config.clone()).await;
    let mut real = bystander(addr, config.clone()).await;
    let mut bad_padding = [0u8; 40];
    bad_padding[8] = 5;
    bad_padding[30] = 1;
    let (_, reply) = close_time(addr, &bad_padding).await;
    assert!(reply.is_empty(), "bad padding");
    let (_, reply) = close_time(addr, &[0x77; 40]).await;
    assert!(reply.is_empty(), "unknown ID: v1 refuses by closing");
    still_serving(&mut real, addr, &config).await;
}

/// 1,000 connections that never say anything are all closed by the
/// handshake timeout, and cost little memory while they are open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_open_connections_are_closed() {
    common::logs();
    let mut config = Config::default();
    config.handshake_timeout = Duration::from_secs(2);
    config.first_byte_timeout = Duration::from_secs(2);
    config.max_handshakes = 2000;
    config.max_handshakes_per_source = 2000;
    let (addr, listener) = echo_listener(config.clone()).await;
    let mut real = bystander(addr, config.clone()).await;
    let before = common::rss_kib();
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..100 {
        if listener.stats().handshakes == 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listener.stats().handshakes, 1000, "all held as handshakes");
    let grown = common::rss_kib().saturating_sub(before);
    println!("1000 half-open connections: RSS grew by {grown} KiB");
    assert!(grown < 16 << 10, "memory bounded: grew {grown} KiB");
    still_serving(&mut real, addr, &config).await;

    let started = Instant::now();
    for mut io in idle {
        let mut buf = [0u8; 1];
        let n = timeout(Duration::from_secs(10), io.read(&mut buf))
            .await
            .expect("closed by the handshake timeout");
        assert!(matches!(n, Ok(0) | Err(_)));
    }
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "closed within the timeout ({waited:?})"
    );
    // Each socket closes as its handshake task ends; the task then returns
    // its permit and counts the failure, a moment later.
    for _ in 0..200 {
        let stats = listener.stats();
        if stats.handshakes == 0 && stats.failed >= 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listener.stats().handshakes, 0);
    assert!(listener.stats().failed >= 1000);
    still_serving(&mut real, addr, &config).await;
}

/// A connection from `source` (a loopback address other than 127.0.0.1
/// stands for another host).
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind a loopback source address");
    socket.connect(addr).await.unwrap()
}

/// Whether the server has closed `io` (within `within`).
async fn closed_within(io: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1];
    matches!(timeout(within, io.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

/// Every handshake slot held by idle connections: a newcomer still gets in
/// and is served, and the oldest idle connection makes room, at once.
#[tokio::test]
async fn a_full_table_makes_room_for_a_newcomer() {
    let mut config = Config::default();
    config.max_handshakes = 10;
    config.handshake_timeout = Duration::from_secs(30);
    config.first_byte_timeout = Duration::from_secs(30);
    let (addr, listener) = echo_listener(config.clone()).await;
    let mut held = Vec::new();
    for i in 0..10u8 {
        held.push(connect_from([127, 0, 0, 10 + i], addr).await);
    }
    for _ in 0..100 {
        if listener.stats().handshakes == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listener.stats().handshakes, 10);
    let started = Instant::now();
    let mut fresh = bystander(addr, config.clone()).await;
    still_serving(&mut fresh, addr, &config).await;
    assert!(
        closed_within(&mut held[0], Duration::from_secs(5)).await,
        "the oldest idle connection made room"
    );
    println!("served in {:?} with the table full", started.elapsed());
    let stats = listener.stats();
    assert_eq!(stats.shed, 0);
    assert!(stats.evicted >= 1, "{stats:?}");
    // The others are still held: only as many as needed made room.
    for io in &mut held[2..] {
        assert!(!closed_within(io, Duration::from_millis(20)).await);
    }
}

/// One source at its own bound only pushes out its own connections; another
/// source's connection, older, is untouched.
#[tokio::test]
async fn a_source_at_its_bound_evicts_only_its_own() {
    let mut config = Config::default();
    config.max_handshakes_per_source = 4;
    config.handshake_timeout = Duration::from_secs(30);
    config.first_byte_timeout = Duration::from_secs(30);
    let (addr, listener) = echo_listener(config.clone()).await;
    let mut other = connect_from([127, 0, 0, 3], addr).await;
    let mut mine = Vec::new();
    for _ in 0..4 {
        mine.push(connect_from([127, 0, 0, 2], addr).await);
    }
    for _ in 0..100 {
        if listener.stats().handshakes == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..20 {
        mine.push(connect_from([127, 0, 0, 2], addr).await);
    }
    for io in &mut mine[..20] {
        assert!(closed_within(io, Duration::from_secs(5)).await);
    }
    assert!(!closed_within(&mut other, Duration::from_millis(50)).await);
    for _ in 0..100 {
        if listener.stats().handshakes == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = listener.stats();
    assert_eq!((stats.handshakes, stats.evicted), (5, 20), "{stats:?}");
}

/// A connection that sends nothing is closed after `first_byte_timeout`,
/// well before the handshake timeout.
#[tokio::test]
async fn a_silent_connection_is_closed_at_the_first_byte_deadline() {
    let mut config = Config::default();
    config.first_byte_timeout = Duration::from_millis(300);
    config.handshake_timeout = Duration::from_secs(30);
    let (addr, listener) = echo_listener(config.clone()).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await);
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}");
    for _ in 0..100 {
        if listener.stats().failed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listener.stats().failed, 1);
}

/// `max_parked` reached: the newest break makes room by ending the session
/// that has waited longest (all being alike here).
#[tokio::test]
async fn parked_limit_makes_room_for_the_newest_break() {
    let mut config = Config::default();
    config.max_parked = 2;
    config.reconnect_wait = Duration::from_secs(20);
    let (addr, listener) = echo_listener(config.clone()).await;
    let mut raws = Vec::new();
    for _ in 0..3 {
        raws.push(Raw::connect(addr, config.params()).await);
    }
    for _ in 0..100 {
        if listener.stats().sessions == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Break all three links: the third break ends the first parked.
    for raw in raws {
        drop(raw);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..200 {
        let s = listener.stats();
        if s.parked == 2 && s.sessions == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = listener.stats();
    assert_eq!((s.parked, s.sessions, s.parked_evicted), (2, 2, 1), "{s:?}");
}

/// Issue 10's attack 4 on the open listener: sessions that handshake and
/// drop at once, never sending a byte, keep `max_parked` full; a session
/// that has exchanged data is cut meanwhile, and still resumes, because the
/// ones that never sent anything make room first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_session_flood_does_not_end_an_honest_session() {
    use rejoin::chaos::{CutKind, CutProxy, ProxyConfig};
    let mut config = Config::default();
    config.max_parked = 8;
    config.reconnect_wait = Duration::from_secs(30);
    let (addr, listener) = echo_listener(config.clone()).await;
    let proxy = CutProxy::start("127.0.0.1:0".parse().unwrap(), addr, ProxyConfig::default())
        .await
        .unwrap();
    let mut honest = bystander(proxy.local_addr(), config.clone()).await;
    let params = config.params();
    let flood = |n: usize| async move {
        for _ in 0..n {
            drop(Raw::connect(addr, params).await);
        }
    };
    flood(40).await;
    assert_eq!(proxy.cut_all(CutKind::Reset), 1);
    flood(40).await;
    honest.write_all(b"after").await.unwrap();
    let mut buf = [0u8; 5];
    timeout(LIMIT, honest.read_exact(&mut buf))
        .await
        .expect("the honest session resumed in time")
        .unwrap();
    assert_eq!(&buf, b"after");
    assert!(honest.handle().ended().is_none());
    assert!(honest.handle().stats().reconnects >= 1);
    flood(40).await;
    // The last ones park (and push out others) once their drivers see
    // the end of their sockets.
    for _ in 0..500 {
        if listener.stats().parked_evicted >= 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = listener.stats();
    println!("{s:?}");
    assert!(s.parked <= 8, "{s:?}");
    assert!(
        s.parked_evicted >= 100,
        "the flood filled the parking: {s:?}"
    );
}

/// A sealed listener against hostile clients through real sockets, while a
/// real session runs: compatible hellos, unknown kinds, oversized identities
/// and handshake messages, hellos under a wrong PSK, resumes for unknown and
/// live conn IDs without the secret, garbage after a hello, and idle sockets.
/// Each is closed (within the handshake timeout at worst), nothing is
/// established, and the real session and new ones are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_handshake_abuse_is_refused_cleanly() {
    use rejoin::proto::sealed::{ClientExchange, Psk};
    common::logs();
    let psk = Psk::from_bytes([4; 32]);
    let mut config = Config::sealed(psk.clone());
    config.handshake_timeout = Duration::from_secs(1);
    let (addr, listener) = echo_listener(config.clone()).await;
    let mut real = bystander(addr, config.clone()).await;
    let established = listener.stats().established;
    let live_id = real.id().to_le_bytes();

    let wrong =
        ClientExchange::new_session(Params::default(), &Psk::from_bytes([5; 32]), b"", None)
            .unwrap()
            .poll_transmit()
            .unwrap()
            .to_vec();
    let mut forged_resume = vec![0x12];
    forged_resume.extend_from_slice(&live_id);
    forged_resume.extend_from_slice(&64u16.to_le_bytes());
    forged_resume.extend_from_slice(&[0xab; 64]);
    let mut unknown_resume = forged_resume.clone();
    unknown_resume[1..9].copy_from_slice(&[0x77; 8]);
    let mut hello_then_garbage = ClientExchange::new_session(Params::default(), &psk, b"", None)
        .unwrap()
        .poll_transmit()
        .unwrap()
        .to_vec();
    let mut hello_then_long_confirm = hello_then_garbage.clone();
    hello_then_long_confirm.extend_from_slice(&[0xff, 0xff]);
    hello_then_garbage.extend_from_slice(&[0x42; 300]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("compatible v2 hello", {
            let mut h = vec![0x00];
            h.extend_from_slice(&12345u64.to_le_bytes());
            h
        }),
        ("compatible v1 hello", vec![0; 40]),
        ("unknown kind", vec![0x99, 1, 2, 3]),
        ("identity too long", vec![0x10, 200]),
        ("handshake message too long", vec![0x10, 0, 0xff, 0xff]),
        ("wrong PSK", wrong),
        ("forged resume of the live session", forged_resume),
        ("resume of an unknown session", unknown_resume),
        ("garbage for a confirm", hello_then_garbage),
        // Refused on its two length bytes (before, 64 KiB was reserved and
        // waited for until the handshake timed out).
        ("a confirm claiming 64 KiB", hello_then_long_confirm),
        ("idle", vec![]),
    ];
    for (what, bytes) in &cases {
        let (t, reply) = close_time(addr, bytes).await;
        assert!(t < Duration::from_secs(3), "{what}: closed in {t:?}");
        assert!(reply.len() <= 256, "{what}: {} bytes back", reply.len());
        still_serving(&mut real, addr, &config).await;
    }
    // still_serving opened one fresh session per case; no abuse made one.
    assert_eq!(
        listener.stats().established,
        established + cases.len() as u64
    );
    assert_eq!(
        real.handle().stats().reconnects,
        0,
        "the live session untouched"
    );
}

/// A sealed peer that sends past the window it was given (its own link's
/// check switched off) to a server whose application does not read: the
/// server ends that session with a protocol error once the bytes beyond its
/// receive buffer pass two frames, and holds no more than that meanwhile.
/// Another session on the same listener is served throughout. With a
/// sealed stream's default receive buffer (1 MiB), and with the tunnel
/// link's (4 MiB), the window a token holder may fill on a tunnel server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_peer_past_its_window_is_ended() {
    past_the_window(rejoin::stream::SEALED_RECV_BUFFER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_peer_past_the_tunnel_links_window_is_ended() {
    past_the_window(rejoin::tunnel::LINK_RECV_BUFFER).await;
}

async fn past_the_window(recv_buffer: usize) {
    use rejoin::proto::record;
    use rejoin::proto::sealed::Psk;
    let psk = Psk::from_bytes([9u8; 32]);
    let config = Config::sealed(psk.clone()).with_recv_buffer(recv_buffer);
    let listener =
        std::sync::Arc::new(Listener::bind("127.0.0.1:0", config.clone()).await.unwrap());
    let addr = listener.local_addr().unwrap();
    let accepting = listener.clone();
    // Every accepted stream is kept and never read.
    let (kept_tx, mut kept_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(s) = accepting.accept().await {
            let _ = kept_tx.send(s);
        }
    });
    let mut raw =
        common::sealed::SealedRaw::connect_from([127, 0, 0, 1], addr, psk.clone(), "x").await;
    let accepted: Stream = timeout_secs(5, kept_rx.recv()).await.expect("accepted");
    let handle = accepted.handle();
    raw.session.ignore_peer_window();
    let chunk = vec![5u8; record::MAX_DATA];
    let mut sent = 0usize;
    let mut closed = false;
    // Eight times the receive buffer: far past the window.
    while sent < 8 * recv_buffer {
        let header = record::data_header(chunk.len());
        assert_eq!(raw.session.handle_write(&header), header.len());
        assert_eq!(raw.session.handle_write(&chunk), chunk.len());
        sent += chunk.len();
        if raw.exchange(Duration::from_millis(1)).await.is_none() {
            closed = true;
            break;
        }
    }
    // The server may close while the last bytes are on their way.
    for _ in 0..500 {
        if closed || handle.ended().is_some() {
            break;
        }
        closed = raw.exchange(Duration::from_millis(10)).await.is_none();
    }
    let ended = handle.ended();
    println!("receive buffer {recv_buffer}: sent {sent} bytes; server: {ended:?}");
    let Some(Some(err)) = ended else {
        panic!("the session was not ended with an error: {ended:?}");
    };
    assert!(err.to_string().contains("window"), "{err}");
    assert_eq!(handle.stats().app_read, 0);
    // Someone else is served.
    let mut other = stream::connect(addr.to_string(), config).await.unwrap();
    let mut served: Stream = timeout_secs(5, kept_rx.recv()).await.expect("accepted");
    other.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout_secs(5, served.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"ping");
}

async fn timeout_secs<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("in time")
}

/// A pinned resume forged by someone who has the server's public key and a
/// live conn ID (both public: the CLI prints the one, every resume hello
/// carries the other) but not the session's resume secret: it gets no
/// answer, counts as a failed proof, and the live session is untouched.
/// Before, the resume was `IKpsk2`, whose message 1 holds no PSK: such a
/// hello opened, earned a welcome (and so told whether its guessed counts
/// were in range), and was never counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_pinned_resume_earns_no_answer() {
    use rejoin::proto::sealed::{NOISE_IK, NOISE_IK_RESUME, PROLOGUE_LABEL, Psk, StaticKey};
    use rejoin::stream::{Sealed, Suite};
    common::logs();
    let psk = Psk::from_bytes([4; 32]);
    let key = StaticKey::generate().unwrap();
    let mut config = Config::default().with_suite(Suite::Sealed(
        Sealed::new(psk.clone()).with_static_key(key.clone()),
    ));
    config.auth_failures_per_minute = 2;
    let (addr, listener) = echo_listener(config).await;
    let client = Config::default().with_suite(Suite::Sealed(
        Sealed::new(psk).with_server_key(*key.public()),
    ));
    let mut real = bystander(addr, client).await;
    let live_id = real.id().to_le_bytes();
    let forge = |pattern: &str, location: u8| {
        let mut prologue = PROLOGUE_LABEL.to_vec();
        prologue.push(0x13);
        prologue.extend_from_slice(&live_id);
        let mine = StaticKey::generate().unwrap();
        let mut hs = snow::Builder::new(pattern.parse().unwrap())
            .psk(location, &[9; 32])
            .unwrap()
            .prologue(&prologue)
            .unwrap()
            .remote_public_key(key.public())
            .unwrap()
            .local_private_key(mine.private())
            .unwrap()
            .build_initiator()
            .unwrap();
        // Counts anyone could guess: nothing written, nothing read.
        let mut message = vec![0u8; 256];
        let n = hs.write_message(&[0; 16], &mut message).unwrap();
        let mut hello = vec![0x13];
        hello.extend_from_slice(&live_id);
        hello.extend_from_slice(&(n as u16).to_le_bytes());
        hello.extend_from_slice(&message[..n]);
        hello
    };
    let before = listener.stats();
    for (pattern, location) in [(NOISE_IK, 2), (NOISE_IK_RESUME, 1)] {
        let (t, reply) = close_time(addr, &forge(pattern, location)).await;
        assert!(t < Duration::from_secs(3), "{pattern}: closed in {t:?}");
        assert!(
            reply.is_empty(),
            "{pattern}: {} bytes of answer",
            reply.len()
        );
    }
    // Both counted: the source's next connection is closed unread.
    let (_, reply) = close_time(addr, &forge(NOISE_IK_RESUME, 1)).await;
    assert!(reply.is_empty());
    let after = listener.stats();
    assert_eq!(after.throttled, before.throttled + 1, "{after:?}");
    assert_eq!(after.resumed, before.resumed);
    // (Not still_serving: a fresh session from this source is throttled.)
    echoes(&mut real).await;
    assert_eq!(
        real.handle().stats().reconnects,
        0,
        "the live session untouched"
    );
}

/// Under a pinned server key a new session is answered before any PSK is
/// checked, so a client naming an identity the server does not know fails
/// only at the confirm: it is counted as an unknown identity (as it is
/// without the pin), not as an answered handshake never confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_identity_under_a_pinned_key_is_counted_as_unknown() {
    use rejoin::proto::sealed::{Psk, StaticKey};
    use rejoin::stream::{PskLookup, Sealed, Suite};
    common::logs();
    let key = StaticKey::generate().unwrap();
    let lookup = PskLookup::new(|id| (id == b"home").then(|| Psk::from_bytes([4; 32])));
    let server = Config::default().with_suite(Suite::Sealed(
        Sealed::from_lookup(lookup).with_static_key(key.clone()),
    ));
    let (addr, listener) = echo_listener(server).await;
    let client = |id: &str, psk: u8| {
        Config::default().with_suite(Suite::Sealed(
            Sealed::new(Psk::from_bytes([psk; 32]))
                .with_psk_id(id)
                .with_server_key(*key.public()),
        ))
    };
    assert!(
        stream::connect(addr.to_string(), client("nobody", 4))
            .await
            .is_err()
    );
    assert!(
        stream::connect(addr.to_string(), client("home", 5))
            .await
            .is_err()
    );
    let mut home = bystander(addr, client("home", 4)).await;
    home.write_all(b"x").await.unwrap();
    // (The server counts once it sees each connection end.)
    let deadline = Instant::now() + LIMIT;
    let stats = loop {
        let stats = listener.stats();
        if (stats.unknown_identity, stats.unconfirmed) == (1, 1) || Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        (stats.unknown_identity, stats.unconfirmed),
        (1, 1),
        "{stats:?}"
    );
}
