//! The stream's API on loopback: echo in every protocol flavour, split halves,
//! forced reconnects with events and counters, generic transports, and close
//! semantics with and without the record layer.

mod common;

use std::io;
use std::time::Duration;

use common::{recv_digest, send_random};
use rejoin::proto::Version;
use rejoin::proto::sealed::{Psk, StaticKey};
use rejoin::stream::{self, Config, Dialed, Error, Event, Listener, Sealed, Stream, Suite};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

fn config(version: Version, encrypt: bool, records: bool) -> Config {
    let mut c = Config::default();
    c.version = version;
    c.encrypt = encrypt;
    c.records = records;
    c
}

/// A listener, a connected client, and the server's end of it.
async fn pair(config: &Config) -> (Listener, Stream, Stream) {
    let listener = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let client = stream::connect(addr, config.clone()).await.unwrap();
    let server = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    (listener, client, server)
}

/// `from` sends `len` random bytes, `to` reads them; the digests must match.
async fn one_way(from: &mut Stream, to: &mut Stream, seed: u64, len: u64) {
    let (sent, got) = timeout(LIMIT, async {
        tokio::join!(send_random(from, seed, len), recv_digest(to, len))
    })
    .await
    .expect("transfer in time");
    assert_eq!(sent.unwrap(), got.unwrap());
}

/// Both directions at once.
async fn both_ways(a: &mut Stream, b: &mut Stream, len: u64) {
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let (s1, g1, s2, g2) = timeout(LIMIT, async {
        tokio::join!(
            send_random(&mut aw, 1, len),
            recv_digest(&mut br, len),
            send_random(&mut bw, 2, len),
            recv_digest(&mut ar, len)
        )
    })
    .await
    .expect("transfer in time");
    assert_eq!(s1.unwrap(), g1.unwrap());
    assert_eq!(s2.unwrap(), g2.unwrap());
}

#[tokio::test]
async fn echo_in_every_flavour() {
    common::logs();
    for (version, encrypt, records) in [
        (Version::V2, true, false),
        (Version::V2, false, false),
        (Version::V1, true, false),
        (Version::V1, false, false),
        (Version::V2, true, true),
        (Version::V2, false, true),
    ] {
        let (_l, mut client, mut server) = pair(&config(version, encrypt, records)).await;
        assert_eq!(client.id(), server.id());
        both_ways(&mut client, &mut server, 1 << 20).await;
    }
    let (_l, mut client, mut server) = pair(&sealed()).await;
    assert_eq!(client.id(), server.id());
    assert_eq!(client.handle().binding(), server.handle().binding());
    both_ways(&mut client, &mut server, 8 << 20).await;
}

fn sealed() -> Config {
    Config::sealed(Psk::from_bytes([8; 32]))
}

/// An endpoint set to one suite never speaks the other: each pairing of a
/// sealed and a compatible end (every snet version) fails its handshake,
/// and a sealed client whose PSK is wrong is told so.
#[tokio::test]
async fn suites_never_mix() {
    common::logs();
    let compatible = [
        config(Version::V2, true, false),
        config(Version::V2, false, true),
        config(Version::V1, true, false),
    ];
    for other in compatible {
        for (server, client) in [(sealed(), other.clone()), (other.clone(), sealed())] {
            let listener = Listener::bind("127.0.0.1:0", server).await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let mut client = client;
            client.handshake_timeout = Duration::from_secs(2);
            let result = stream::connect(addr, client).await;
            assert!(result.is_err(), "a mixed pair must not connect");
            assert_eq!(listener.stats().established, 0);
        }
    }
    let listener = Listener::bind("127.0.0.1:0", sealed()).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let wrong = Config::sealed(Psk::from_bytes([9; 32]));
    let err = stream::connect(addr, wrong).await.unwrap_err();
    assert!(err.to_string().contains("wrong key"), "{err}");
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert_eq!(listener.stats().established, 0);
    // A client pinning a key the server does not hold (a man in the middle
    // with the PSK): the server's answer does not open.
    let keys = |key| {
        Config::default().with_suite(Suite::Sealed(
            Sealed::new(Psk::from_bytes([8; 32])).with_static_key(key),
        ))
    };
    let listener = Listener::bind("127.0.0.1:0", keys(StaticKey::generate().unwrap()))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let other = StaticKey::generate().unwrap();
    let pinned = Config::default().with_suite(Suite::Sealed(
        Sealed::new(Psk::from_bytes([8; 32])).with_server_key(*other.public()),
    ));
    let err = stream::connect(addr, pinned).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert_eq!(listener.stats().established, 0);
}

/// A session whose client pinned the server's key survives its links
/// breaking, over real sockets: each reconnect is a pinned resume (`IKpsk1`
/// keyed by the resume secret), and no byte is lost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_resumes_over_real_sockets() {
    common::logs();
    let key = StaticKey::generate().unwrap();
    let server = Config::default().with_suite(Suite::Sealed(
        Sealed::new(Psk::from_bytes([8; 32])).with_static_key(key.clone()),
    ));
    let listener = Listener::bind("127.0.0.1:0", server).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let pinned = Config::default().with_suite(Suite::Sealed(
        Sealed::new(Psk::from_bytes([8; 32])).with_server_key(*key.public()),
    ));
    let mut client = stream::connect(addr, pinned).await.unwrap();
    let mut server = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    for round in 0..3u64 {
        one_way(&mut client, &mut server, 10 + round, 1 << 20).await;
        client.force_reconnect();
        one_way(&mut server, &mut client, 20 + round, 1 << 20).await;
    }
    assert_eq!(client.stats().reconnects, 3);
    assert_eq!(listener.stats().resumed, 3);
    assert_eq!(listener.stats().refused, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halves_work_from_separate_tasks() {
    let (_l, client, server) = pair(&Config::default()).await;
    let (mut sr, mut sw) = server.into_split();
    let echo = tokio::spawn(async move {
        let n = tokio::io::copy(&mut sr, &mut sw).await.unwrap();
        sw.shutdown().await.unwrap();
        n
    });
    let (mut r, mut w) = client.into_split();
    let reader = tokio::spawn(async move { recv_digest(&mut r, 4 << 20).await.unwrap() });
    let writer = tokio::spawn(async move {
        let d = send_random(&mut w, 9, 4 << 20).await.unwrap();
        (d, w)
    });
    let (sent, _w) = writer.await.unwrap();
    assert_eq!(reader.await.unwrap(), sent);
    drop(echo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_reconnects_lose_nothing_and_are_reported() {
    common::logs();
    let (listener, mut client, mut server) = pair(&Config::default()).await;
    let handle = client.handle();
    let mut events = client.events();
    let server_handle = server.handle();
    let mut server_events = server.events();
    let addr = listener.local_addr();
    let forcing = tokio::spawn(async move {
        let (mut resumed, mut disconnected) = (0, 0);
        for i in 0..6 {
            tokio::time::sleep(Duration::from_millis(40)).await;
            // Alternate which side drops the transport.
            if i % 2 == 0 {
                handle.force_reconnect();
            } else {
                server_handle.force_reconnect();
            }
            // Each drop ends in a resume on both sides before the next: a
            // side that is still between transports has nothing to drop, and
            // the server may take up the new transport after the client.
            loop {
                match timeout(LIMIT, events.recv()).await.unwrap().unwrap() {
                    Event::Resumed { peer, .. } => {
                        assert_eq!(peer, addr);
                        resumed += 1;
                        break;
                    }
                    Event::Disconnected { .. } => disconnected += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            loop {
                match timeout(LIMIT, server_events.recv()).await.unwrap().unwrap() {
                    Event::Resumed { .. } => break,
                    Event::Disconnected { .. } => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        (resumed, disconnected)
    });
    both_ways(&mut client, &mut server, 32 << 20).await;
    let (resumed, disconnected) = forcing.await.unwrap();
    assert_eq!(resumed, 6);
    assert_eq!(disconnected, 6);
    let stats = client.stats();
    assert_eq!(stats.reconnects, 6);
    assert!(stats.connected);
    assert_eq!(stats.app_written, 32 << 20);
    assert_eq!(stats.app_read, 32 << 20);
    assert_eq!(server.stats().reconnects, 6);
    assert_eq!(client.peer_addr(), listener.local_addr());
    assert!(server.peer_addr().is_some());
}

/// A dialer over in-memory pipes, served by a listener that was handed the
/// other ends: no sockets at all.
#[tokio::test]
async fn runs_over_any_transport() {
    common::logs();
    let config = Config::default();
    let listener = std::sync::Arc::new(Listener::<DuplexStream>::new(config.clone()).unwrap());
    let serving = listener.clone();
    let dialer = move || {
        let serving = serving.clone();
        async move {
            let (near, far) = tokio::io::duplex(64 << 10);
            serving.serve(far, None);
            Ok::<_, io::Error>(near)
        }
    };
    let mut client = stream::connect_with(dialer, config).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    assert_eq!(client.peer_addr(), None);
    one_way(&mut client, &mut server, 3, 2 << 20).await;
    client.force_reconnect();
    one_way(&mut server, &mut client, 4, 2 << 20).await;
    assert_eq!(client.stats().reconnects, 1);
    assert_eq!(listener.stats().resumed, 1);
}

/// A forced reconnect while the client is between transports has nothing to
/// drop: the reconnect already under way is the one it asked for, and the
/// transport it brings is kept (one dial, one resume, not two).
#[tokio::test]
async fn forcing_a_reconnect_between_transports_reconnects_once() {
    common::logs();
    let config = Config::default();
    let listener = std::sync::Arc::new(Listener::<DuplexStream>::new(config.clone()).unwrap());
    let serving = listener.clone();
    let dials = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = dials.clone();
    // The second dial waits until the test lets it through.
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    let held = gate.clone();
    let dialer = move || {
        let serving = serving.clone();
        let counted = counted.clone();
        let held = held.clone();
        async move {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.acquire().await.expect("gate open").forget();
            let (near, far) = tokio::io::duplex(64 << 10);
            serving.serve(far, None);
            Ok::<_, io::Error>(near)
        }
    };
    let mut client = stream::connect_with(dialer, config).await.unwrap();
    let mut server = listener.accept().await.unwrap();
    server.force_reconnect();
    let mut waited = 0;
    while client.stats().connected || dials.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        waited += 1;
        assert!(waited < 500, "the client never noticed the break");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    client.force_reconnect();
    // Room for a needless third dial, so that one shows as a count.
    gate.add_permits(2);
    one_way(&mut client, &mut server, 5, 2 << 20).await;
    one_way(&mut server, &mut client, 6, 2 << 20).await;
    assert_eq!(dials.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(client.stats().reconnects, 1);
    assert_eq!(listener.stats().resumed, 1);
}

/// A dialer that reports peers through `Dialed`.
#[tokio::test]
async fn dialers_can_report_the_peer() {
    struct Tcp(std::net::SocketAddr);
    impl stream::Dialer for Tcp {
        type Io = tokio::net::TcpStream;
        async fn dial(&self) -> io::Result<Dialed<Self::Io>> {
            Ok(Dialed {
                io: tokio::net::TcpStream::connect(self.0).await?,
                peer: Some(self.0),
            })
        }
    }
    let listener = Listener::bind("127.0.0.1:0", Config::default())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let client = stream::connect_with(Tcp(addr), Config::default())
        .await
        .unwrap();
    assert_eq!(client.peer_addr(), Some(addr));
}

#[tokio::test]
async fn record_layer_close_is_clean_and_immediate() {
    common::logs();
    for suite in [config(Version::V2, true, true), sealed()] {
        close_is_clean_and_immediate(suite).await;
    }
}

async fn close_is_clean_and_immediate(config: Config) {
    let (listener, mut client, mut server) = pair(&config).await;
    client.write_all(b"bye").await.unwrap();
    client.shutdown().await.unwrap();
    assert!(client.write_all(b"more").await.unwrap_err().kind() == io::ErrorKind::BrokenPipe);

    let mut got = Vec::new();
    timeout(LIMIT, server.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"bye", "server reads the data, then end-of-file");

    server.write_all(b"ok").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, client.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"ok");

    // Both sides closed: the session ends at once, not after reconnect_wait.
    let handle = client.handle();
    let server_handle = server.handle();
    for _ in 0..200 {
        if listener.stats().sessions == 0 && handle.ended().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listener.stats().sessions, 0);
    assert!(matches!(handle.ended(), Some(None)), "{:?}", handle.ended());
    assert!(matches!(server_handle.ended(), Some(None)));
}

#[tokio::test]
async fn record_layer_close_survives_a_cut_in_the_middle() {
    let (listener, mut client, mut server) = pair(&config(Version::V2, true, true)).await;
    client.write_all(b"last words").await.unwrap();
    client.shutdown().await.unwrap();
    client.force_reconnect();
    let mut got = Vec::new();
    timeout(LIMIT, server.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"last words");
    server.force_reconnect();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    timeout(LIMIT, client.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_empty());
    for _ in 0..200 {
        if listener.stats().sessions == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(listener.stats().sessions, 0);
}

/// snet has no close message: a client that goes away looks lost, and the
/// server's reads fail once `reconnect_wait` runs out.
#[tokio::test]
async fn compatible_client_close_expires_on_the_server() {
    let mut c = Config::default();
    c.reconnect_wait = Duration::from_millis(300);
    let (listener, mut client, mut server) = pair(&c).await;
    client.write_all(b"data").await.unwrap();
    client.shutdown().await.unwrap();
    drop(client);
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"data");
    let err = timeout(LIMIT, server.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        matches!(Error::from_io(&err), Some(Error::Expired(_))),
        "{err}"
    );
    assert_eq!(listener.stats().sessions, 0);
}

/// ...and a server that goes away shows up as a refused reconnect.
#[tokio::test]
async fn compatible_server_close_is_refused_on_the_client() {
    let (_listener, mut client, mut server) = pair(&Config::default()).await;
    server.write_all(b"farewell").await.unwrap();
    server.flush().await.unwrap();
    drop(server);
    let mut buf = [0u8; 8];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"farewell");
    let err = timeout(LIMIT, client.read(&mut buf))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    assert!(
        matches!(Error::from_io(&err), Some(Error::Refused)),
        "{err}"
    );
}

#[tokio::test]
async fn writes_after_shutdown_fail_and_reads_go_on() {
    let (_l, mut client, mut server) = pair(&Config::default()).await;
    client.shutdown().await.unwrap();
    let err = client.write(b"x").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    server.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    timeout(LIMIT, client.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still here");
}

#[tokio::test]
async fn bad_configs_are_refused_up_front() {
    let mut c = Config::default();
    c.history = 64 << 10;
    let err = stream::connect("127.0.0.1:1", c.clone()).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("history"), "{err}");
    assert!(Listener::bind("127.0.0.1:0", c).await.is_err());
    // The record layer is v2's: asked for on v1 it was silently left out.
    let c = config(Version::V1, true, true);
    let err = stream::connect("127.0.0.1:1", c).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("needs protocol v2"), "{err}");
}

#[test]
fn stream_types_are_send_unpin_static() {
    fn check<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>() {}
    fn half<T: Unpin + Send + 'static>() {}
    check::<Stream>();
    half::<stream::ReadHalf>();
    half::<stream::WriteHalf>();
    half::<stream::Handle>();
}

/// A client whose server is gone for good stops redialling after `give_up`
/// and says so.
/// Reads until the session ends, and returns why it did.
async fn read_error(client: &mut Stream) -> io::Error {
    let mut buf = [0u8; 1];
    timeout(LIMIT, client.read(&mut buf))
        .await
        .expect("the session ends in time")
        .expect_err("the read fails")
}

#[tokio::test]
async fn client_gives_up_when_the_server_is_gone() {
    let mut c = Config::default();
    c.redial.give_up = Some(Duration::from_millis(500));
    c.redial.max = Duration::from_millis(100);
    let (listener, mut client, server) = pair(&c).await;
    let mut events = client.events();
    drop(server);
    drop(listener);
    let err = read_error(&mut client).await;
    // The listener went away with its sessions: either the last redial
    // reached a closing socket or none answered at all.
    assert!(
        matches!(
            Error::from_io(&err),
            Some(Error::GaveUp(_) | Error::Refused)
        ),
        "{err}"
    );
    let mut saw_disconnect = false;
    while let Ok(e) = events.try_recv() {
        saw_disconnect |= matches!(e, Event::Disconnected { .. });
    }
    assert!(saw_disconnect);
}

/// A sealed client whose server restarted (a new listener on the same
/// address knows nothing of the session) is told so at its first reconnect
/// and ends with `Refused` at once, instead of retrying until it gives up;
/// the session that is live elsewhere is not disturbed by its attempts.
#[tokio::test]
async fn a_sealed_client_learns_at_once_that_its_session_is_gone() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};
    common::logs();
    let mut config = sealed();
    config.redial.give_up = Some(Duration::from_secs(60));
    let first = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let second = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let port = Arc::new(AtomicU16::new(first.local_addr().unwrap().port()));
    let target = port.clone();
    let dialer = move || {
        let port = target.load(Ordering::Relaxed);
        async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await }
    };
    let mut client = stream::connect_with(dialer, config).await.unwrap();
    let _server = first.accept().await.unwrap();
    port.store(second.local_addr().unwrap().port(), Ordering::Relaxed);
    client.handle().force_reconnect();
    let started = std::time::Instant::now();
    let err = read_error(&mut client).await;
    assert!(
        matches!(Error::from_io(&err), Some(Error::Refused)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "told at once");
    assert_eq!(second.stats().refused, 1);
    assert_eq!(second.stats().established, 0);
}

/// `connect` takes an address in every form `Listener::bind` takes.
#[tokio::test]
async fn connect_takes_every_address_form() {
    use std::net::{Ipv4Addr, SocketAddr};
    let config = Config::default().with_records(true);
    let listener = Listener::bind(("127.0.0.1", 0), config.clone())
        .await
        .unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let port = addr.port();
    let streams = [
        stream::connect(addr, config.clone()).await,
        stream::connect((Ipv4Addr::LOCALHOST, port), config.clone()).await,
        stream::connect(("127.0.0.1", port), config.clone()).await,
        stream::connect(format!("127.0.0.1:{port}"), config.clone()).await,
        stream::connect(&format!("127.0.0.1:{port}"), config.clone()).await,
    ];
    for (i, s) in streams.into_iter().enumerate() {
        let mut client = s.unwrap_or_else(|e| panic!("form {i}: {e}"));
        let mut server = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
        client.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
    }
}

/// Something that is not a rejoin or snet server (a banner, an HTTP error)
/// is refused on its first reply, well before the handshake timeout.
#[tokio::test]
async fn a_server_that_is_not_rejoin_fails_fast() {
    use std::time::Instant;
    for reply in [
        &b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"[..],
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = garbage.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            // Bounded: a few connections, then the task ends.
            for _ in 0..4 {
                let Ok((mut sock, _)) = garbage.accept().await else {
                    return;
                };
                let _ = sock.write_all(reply).await;
                held.push(sock); // stays open: no EOF to give it away
            }
        });
        for config in [
            Config::default(),
            Config::default().with_records(true),
            sealed(),
        ] {
            let started = Instant::now();
            let result =
                stream::connect(addr, config.with_handshake_timeout(Duration::from_secs(10))).await;
            let took = started.elapsed();
            let Err(e) = result else {
                panic!("a non-rejoin server must be refused")
            };
            let text = e.to_string();
            assert!(took < Duration::from_secs(3), "took {took:?}: {text}");
            assert!(!text.contains("timed out"), "{text}");
            println!("{:?} → {text}", String::from_utf8_lossy(&reply[..8]));
        }
        server.abort();
    }
}

/// A sealed server at `max_sessions` closes a new session's connection
/// before answering it, so the client's `connect` fails (saying why it may
/// have), while a live session's reconnect is still served; once a session
/// ends there is room again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sealed_server_fails_new_connects_and_keeps_resuming() {
    common::logs();
    let config = sealed().with_max_sessions(2);
    let listener = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut first = stream::connect(addr, config.clone()).await.unwrap();
    let mut first_end = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let second = stream::connect(addr, config.clone()).await.unwrap();
    let second_end = timeout(LIMIT, listener.accept()).await.unwrap().unwrap();
    let err = timeout(LIMIT, stream::connect(addr, config.clone()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("max_sessions"), "{err}");
    assert_eq!(listener.stats().sessions, 2);
    // The first session resumes at full house, and carries on.
    let mut events = first.events();
    first.handle().force_reconnect();
    loop {
        match timeout(LIMIT, events.recv()).await.unwrap().unwrap() {
            Event::Resumed { .. } => break,
            Event::Disconnected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    first.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    first_end.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still here");
    // Closing one makes room.
    for s in [second, second_end] {
        let mut s = s;
        s.shutdown().await.unwrap();
        drop(s);
    }
    let mut room = false;
    for _ in 0..100 {
        if listener.stats().sessions < 2 {
            room = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(room, "the closed session freed its place");
    timeout(LIMIT, stream::connect(addr, config))
        .await
        .unwrap()
        .unwrap();
}
