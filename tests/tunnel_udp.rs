//! UDP through the tunnel: one association per visitor, datagrams whole,
//! expiry, limits, bursts, and link cuts.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::tunnel::*;
use parking_lot::Mutex;
use rejoin::chaos::{CutKind, ProxyConfig};
use rejoin::tunnel::client::{ClientConfig, ServiceConfig};
use rejoin::tunnel::frame::{MAX_DATAGRAM, ServiceKind};
use rejoin::tunnel::server::{Server, ServerConfig};
use tokio::net::UdpSocket;
use tokio::time::timeout;

/// A UDP echo service.
async fn udp_echo(bind: &str) -> String {
    let sock = UdpSocket::bind(bind).await.unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

fn with_udp(mut c: ClientConfig, local: &str, port: u16) -> ClientConfig {
    c.services.push(ServiceConfig {
        name: format!("udp {local}"),
        kind: ServiceKind::Udp,
        local: local.to_string(),
        port,
    });
    c
}

async fn udp_tunnel(server: ServerConfig, local: &str) -> (Server, RunningClient, String) {
    let server = Server::bind(server).await.unwrap();
    let config = with_udp(
        client_config(server.local_addr().to_string(), "home", &[]),
        local,
        0,
    );
    let mut client = RunningClient::start(config);
    let public = client.published(1).await.remove(0);
    (server, client, public)
}

/// Sends one datagram and waits (bounded) for one back.
async fn ask(sock: &UdpSocket, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.send(msg).await.unwrap();
    let mut buf = vec![0u8; 70_000];
    match timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn visitor(public: &str) -> UdpSocket {
    let bind = if public.starts_with('[') {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let s = UdpSocket::bind(bind).await.unwrap();
    s.connect(public).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_visitors_each_get_their_own_replies() {
    common::logs();
    let local = udp_echo("127.0.0.1:0").await;
    let (server, _client, public) = udp_tunnel(server_config(), &local).await;
    let mut tasks = Vec::new();
    for i in 0..100u32 {
        let public = public.clone();
        tasks.push(tokio::spawn(async move {
            let sock = visitor(&public).await;
            for j in 0..20u32 {
                let msg = format!("visitor {i} datagram {j}");
                // UDP may drop on a busy machine: ask again, a few times.
                let mut reply = None;
                for _ in 0..5 {
                    reply = ask(&sock, msg.as_bytes(), Duration::from_secs(2)).await;
                    if reply.is_some() {
                        break;
                    }
                }
                let reply = reply.unwrap_or_else(|| panic!("no reply to {msg}"));
                assert_eq!(reply, msg.as_bytes(), "only our own replies");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let info = &server.clients().await[0];
    assert_eq!(info.streams, 100, "one association per visitor");
}

#[tokio::test]
async fn datagrams_keep_their_size_up_to_the_largest() {
    let local = udp_echo("127.0.0.1:0").await;
    let (_server, _client, public) = udp_tunnel(server_config(), &local).await;
    let sock = visitor(&public).await;
    for size in [1, 2, 1400, 9000, 65_000, MAX_DATAGRAM] {
        let msg: Vec<u8> = (0..size).map(|i| (i * 31 + size) as u8).collect();
        let mut reply = None;
        for _ in 0..5 {
            reply = ask(&sock, &msg, Duration::from_secs(2)).await;
            if reply.is_some() {
                break;
            }
        }
        assert_eq!(
            reply.as_deref(),
            Some(&msg[..]),
            "a datagram of {size} bytes"
        );
    }
    // An empty datagram is a datagram too.
    assert_eq!(
        ask(&sock, b"", Duration::from_secs(2)).await.as_deref(),
        Some(&b""[..])
    );
}

/// Over IPv6 a datagram can exceed 65,507 bytes; it is refused whole and
/// counted, never cut down.
#[tokio::test]
async fn oversized_datagrams_are_refused_not_cut() {
    let local = udp_echo("[::1]:0").await;
    let mut sc = server_config();
    sc.bind = Some("::1".parse().unwrap());
    let (server, _client, public) = udp_tunnel(sc, &local).await;
    let sock = visitor(&public).await;
    let big = vec![7u8; 65_527];
    assert_eq!(
        ask(&sock, &big, Duration::from_millis(500)).await,
        None,
        "nothing comes back"
    );
    let info = &server.clients().await[0];
    assert_eq!(info.udp.dropped_oversize, 1);
    assert_eq!(info.udp.sent, 0, "nothing of it went on the link");
    // The largest allowed still goes through.
    let max = vec![9u8; MAX_DATAGRAM];
    assert_eq!(ask(&sock, &max, Duration::from_secs(2)).await, Some(max));
}

#[tokio::test]
async fn idle_associations_expire() {
    common::logs();
    let local = udp_echo("127.0.0.1:0").await;
    let mut sc = server_config();
    // Long enough that the association outlives the look just after the
    // reply on a loaded machine.
    sc.udp.idle = Duration::from_secs(1);
    let (server, _client, public) = udp_tunnel(sc, &local).await;
    let sock = visitor(&public).await;
    assert!(ask(&sock, b"one", Duration::from_secs(2)).await.is_some());
    assert_eq!(server.clients().await[0].streams, 1);
    let mut streams = usize::MAX;
    for _ in 0..250 {
        streams = server.clients().await[0].streams;
        if streams == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(streams, 0, "expired after the idle time");
    assert_eq!(
        ask(&sock, b"two", Duration::from_secs(2)).await.as_deref(),
        Some(&b"two"[..])
    );
}

/// A service at `max_associations`: each new visitor ends the least
/// recently used association, so every visitor is answered and the count
/// stays at the bound.
#[tokio::test]
async fn associations_per_service_are_bounded() {
    let local = udp_echo("127.0.0.1:0").await;
    let mut sc = server_config();
    sc.udp.max_associations = 3;
    let (server, _client, public) = udp_tunnel(sc, &local).await;
    let mut socks = Vec::new();
    for i in 0..5 {
        let s = visitor(&public).await;
        let reply = ask(&s, format!("v{i}").as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(reply.as_deref(), Some(format!("v{i}").as_bytes()));
        socks.push(s);
    }
    let info = &server.clients().await[0];
    assert_eq!(info.udp.evicted, 2, "{:?}", info.udp);
    assert_eq!(info.udp.dropped_limit, 0, "{:?}", info.udp);
    assert_eq!(info.streams, 3);
}

/// Issue 10's attack 7: one host sends from 1,100 source ports (more than
/// the service's whole default limit of 1,024). It holds at most its own
/// 128 associations; visitors from other addresses are answered
/// throughout, and one talking all along keeps its association.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_cycling_ports_cannot_lock_others_out() {
    let local = udp_echo("127.0.0.1:0").await;
    let (server, _client, public) = udp_tunnel(server_config(), &local).await;
    let steady = visitor(&public).await;
    assert!(
        ask(&steady, b"steady", Duration::from_secs(5))
            .await
            .is_some()
    );
    let mut flood = Vec::new();
    for i in 0..1100u32 {
        let s = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        s.send_to(format!("f{i}").as_bytes(), &public)
            .await
            .unwrap();
        flood.push(s);
        if i % 100 == 0 {
            let reply = ask(&steady, b"steady", Duration::from_secs(5)).await;
            assert_eq!(reply.as_deref(), Some(&b"steady"[..]), "after {i}");
        }
    }
    // Let the last of the flood reach the server before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 0..5 {
        let s = UdpSocket::bind("127.0.0.3:0").await.unwrap();
        s.connect(&public).await.unwrap();
        let reply = ask(&s, format!("new{n}").as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(reply.as_deref(), Some(format!("new{n}").as_bytes()));
    }
    let info = &server.clients().await[0];
    println!("{:?}; {} associations", info.udp, info.streams);
    assert!(info.streams <= 128 + 6, "{} associations", info.streams);
    assert!(info.udp.evicted >= 1100 - 128, "{:?}", info.udp);
    assert_eq!(info.udp.dropped_limit, 0, "{:?}", info.udp);
    let reply = ask(&steady, b"still", Duration::from_secs(5)).await;
    assert_eq!(reply.as_deref(), Some(&b"still"[..]));
}

/// A UDP service that records every datagram's sequence number. Its receive
/// buffer is large, so a burst after a resume is not lost in its kernel.
async fn udp_counter() -> (String, Arc<Mutex<HashMap<u64, u32>>>) {
    let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&std)
        .set_recv_buffer_size(8 << 20)
        .unwrap();
    std.set_nonblocking(true).unwrap();
    let sock = UdpSocket::from_std(std).unwrap();
    let addr = sock.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok(n) = sock.recv(&mut buf).await {
            if n >= 8 {
                let seq = u64::from_le_bytes(buf[..8].try_into().unwrap());
                *record.lock().entry(seq).or_insert(0) += 1;
            }
        }
    });
    (addr, seen)
}

/// While the link is reset and silently dropped again and again, every
/// datagram that was handed to the link arrives once: none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_datagram_handed_to_the_link_is_lost_or_duplicated() {
    common::logs();
    let (local, seen) = udp_counter().await;
    let server = Server::bind(server_config()).await.unwrap();
    let proxy = Arc::new(proxy_to(&server, ProxyConfig::default()).await);
    let mut config = with_udp(
        client_config(proxy.local_addr().to_string(), "home", &[]),
        &local,
        0,
    );
    // Notice silent drops within a second.
    config.mux.ping_interval = Duration::from_millis(200);
    config.mux.ping_timeout = Duration::from_millis(800);
    config.stream.idle_timeout = Some(Duration::from_millis(800));
    let mut client = RunningClient::start(config);
    let public = client.published(1).await.remove(0);
    let cutting = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            // Every fourth cut is silent; a cut only counts if a link was up.
            let mut cuts = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let kind = if cuts % 4 == 3 {
                    CutKind::Silent
                } else {
                    CutKind::Reset
                };
                if proxy.cut_all(kind) > 0 {
                    cuts += 1;
                }
            }
        })
    };
    let sock = visitor(&public).await;
    // About 2,500 datagrams a second for 6 seconds, across a dozen or more
    // cuts (a silent drop takes a second and a half to notice).
    const N: u64 = 15_000;
    for seq in 0..N {
        let mut msg = seq.to_le_bytes().to_vec();
        msg.resize(200, 0xab);
        sock.send(&msg).await.unwrap();
        if seq % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cutting.abort();
    // Let everything in flight arrive.
    let mut last = (0, 0);
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = server.clients().await[0].udp.sent;
        let client_udp = client.stop.udp_stats().unwrap();
        let received = client_udp.received;
        let reached = seen.lock().len() as u64;
        if (sent, received) == last
            && sent == received
            && reached == received - client_udp.dropped_delivery
        {
            break;
        }
        last = (sent, received);
    }
    let server_udp = server.clients().await[0].udp;
    let client_udp = client.stop.udp_stats().unwrap();
    let seen = seen.lock().clone();
    let cuts = proxy.stats();
    println!(
        "{N} datagrams sent; {} handed to the link, {} came out of it, {} reached the service; \
         {} cuts ({} silent); drops: server {:?}, client {:?}",
        server_udp.sent,
        client_udp.received,
        seen.len(),
        cuts.cuts(),
        cuts.silent_drops,
        server_udp,
        client_udp
    );
    assert!(
        cuts.cuts() >= 10,
        "the link was cut ({} times)",
        cuts.cuts()
    );
    assert!(seen.values().all(|&n| n == 1), "no datagram arrived twice");
    assert_eq!(
        client_udp.received, server_udp.sent,
        "none handed to the link was lost"
    );
    assert_eq!(
        seen.len() as u64,
        client_udp.received - client_udp.dropped_delivery,
        "every datagram out of the link reached the service"
    );
    assert!(
        server_udp.sent >= N * 9 / 10,
        "most datagrams made it onto the link"
    );
}

/// A visitor blasting datagrams as fast as it can neither grows memory
/// without bound nor stops a TCP transfer on the same link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_burst_cannot_starve_tcp() {
    use common::{recv_digest, send_random};
    let udp_local = udp_echo("127.0.0.1:0").await;
    let tcp_local = echo_service().await;
    let server = Server::bind(server_config()).await.unwrap();
    let mut config = client_config(server.local_addr().to_string(), "home", &[(&tcp_local, 0)]);
    config = with_udp(config, &udp_local, 0);
    let mut client = RunningClient::start(config);
    let public = client.published(2).await;
    // Published in order of the services: TCP first.
    let (tcp_public, udp_public) = (public[0].clone(), public[1].clone());
    let before = common::rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let blasted = Arc::new(AtomicU64::new(0));
    let blaster = {
        let (stop, blasted) = (stop.clone(), blasted.clone());
        tokio::spawn(async move {
            let sock = visitor(&udp_public).await;
            let msg = vec![0x5a; 1400];
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..64 {
                    let _ = sock.send(&msg).await;
                    blasted.fetch_add(1, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let v = tokio::net::TcpStream::connect(&tcp_public).await.unwrap();
    let (mut r, mut w) = v.into_split();
    let len = 32 << 20;
    let done = timeout(Duration::from_secs(120), async {
        let reading = tokio::spawn(async move { recv_digest(&mut r, len).await });
        let sent = send_random(&mut w, 3, len).await.unwrap();
        (sent, reading.await.unwrap().unwrap())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    blaster.await.unwrap();
    let (sent, got) = done.expect("the TCP transfer finished during the UDP burst");
    assert_eq!(sent, got);
    let grown = common::rss_kib().saturating_sub(before);
    let info = &server.clients().await[0];
    println!(
        "{} datagrams blasted during a 32 MiB TCP echo; {} handed to the link, {} dropped at the queue; RSS grew {grown} KiB",
        blasted.load(Ordering::Relaxed),
        info.udp.sent,
        info.udp.dropped_queue
    );
    assert!(
        grown < 256 << 10,
        "memory stayed bounded (grew {grown} KiB)"
    );
}

/// What one UDP association costs (the server's entry and the client's
/// socket and task), the figure docs/security.md gives: 1,000 of them from
/// ten addresses, each answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_association() {
    let local = udp_echo("127.0.0.1:0").await;
    let (server, _client, public) = udp_tunnel(server_config(), &local).await;
    let warm = visitor(&public).await;
    assert!(ask(&warm, b"warm", Duration::from_secs(5)).await.is_some());
    let before = common::rss_kib();
    let mut socks = Vec::new();
    for i in 0..1000u32 {
        let s = UdpSocket::bind(format!("127.0.0.{}:0", 20 + i / 100))
            .await
            .unwrap();
        s.connect(&public).await.unwrap();
        assert!(
            ask(&s, b"x", Duration::from_secs(5)).await.is_some(),
            "visitor {i}"
        );
        socks.push(s);
    }
    let grown = common::rss_kib().saturating_sub(before);
    let streams = server.clients().await[0].streams;
    println!(
        "{streams} associations: RSS (server, client and visitors' sockets) grew by {grown} KiB, {} KiB each",
        grown / 1000
    );
    assert_eq!(streams, 1001);
    assert!(grown / 1000 < 64, "{} KiB each", grown / 1000);
}
