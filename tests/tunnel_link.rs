//! What the tunnel is for: visitor connections that survive the link.
//!
//! - 256 MiB each way through one visitor connection while the link between
//!   client and server is reset and silently dropped at least 20 times;
//! - the same while the client's source address keeps changing;
//! - 200 visitors at once, with one that never reads.

mod common;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::tunnel::*;
use common::{digest_of, recv_digest, send_random};
use parking_lot::Mutex;
use rejoin::chaos::{Plan, ProxyConfig};
use rejoin::stream::{Dialed, Dialer, SocketOptions};
use rejoin::tunnel::server::Server;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

const BULK: u64 = 256 << 20;
const SERVICE_SEED: u64 = 77;
const VISITOR_SEED: u64 = 78;
/// What the visitor that never reads sends: more than its stream's window.
const STALLED: u64 = 16 << 20;

/// A local service that, per connection, sends `BULK` random bytes while it
/// reads `BULK` bytes, and reports the digest of what it read.
async fn bulk_service() -> (String, mpsc::UnboundedReceiver<io::Result<[u8; 32]>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let reading = tokio::spawn(async move { recv_digest(&mut r, BULK).await });
                let sent = send_random(&mut w, SERVICE_SEED, BULK).await;
                let got = reading.await.expect("reader task");
                let _ = tx.send(sent.and(got));
                // Keep the connection until the visitor is done with it.
                let _ = tokio::time::sleep(Duration::from_secs(60)).await;
                drop(w);
            });
        }
    });
    (addr, rx)
}

/// One visitor moves BULK bytes each way through `public`; returns when
/// both directions are verified.
async fn bulk_visitor(public: &str, mut service: mpsc::UnboundedReceiver<io::Result<[u8; 32]>>) {
    let v = TcpStream::connect(public).await.unwrap();
    let (mut r, mut w) = v.into_split();
    let reading = tokio::spawn(async move { recv_digest(&mut r, BULK).await.map(|d| (d, r)) });
    let sent = send_random(&mut w, VISITOR_SEED, BULK)
        .await
        .expect("the visitor's connection never failed while sending");
    let (got, _r) = reading
        .await
        .unwrap()
        .expect("the visitor's connection never failed while receiving");
    assert_eq!(
        got,
        digest_of(SERVICE_SEED, BULK),
        "service → visitor digest"
    );
    let service_got = timeout(LIMIT, service.recv())
        .await
        .unwrap()
        .unwrap()
        .expect("the service's connection never failed");
    assert_eq!(service_got, sent, "visitor → service digest");
    assert_eq!(sent, digest_of(VISITOR_SEED, BULK));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_survives_twenty_link_cuts() {
    common::logs();
    let server = Server::bind(server_config()).await.unwrap();
    // 512 MiB cross the proxy; a cut every 12-24 MiB gives 20 or more.
    let proxy = proxy_to(
        &server,
        ProxyConfig {
            plan: Some(Plan {
                every: (12 << 20)..=(24 << 20),
                silent: 0.25,
                seed: 31,
            }),
            ..ProxyConfig::default()
        },
    )
    .await;
    let (local, service) = bulk_service().await;
    let mut client = RunningClient::start(client_config(
        proxy.local_addr().to_string(),
        "home",
        &[(&local, 0)],
    ));
    let public = client.published(1).await;
    timeout(Duration::from_secs(300), bulk_visitor(&public[0], service))
        .await
        .expect("transfer finished in time");
    let cuts = proxy.stats();
    let link = client.stop.link_stats().unwrap();
    println!(
        "256 MiB each way: {} resets, {} silent drops; the link resumed {} times and resent {} bytes",
        cuts.resets, cuts.silent_drops, link.reconnects, link.resent
    );
    assert!(cuts.cuts() >= 20, "only {} cuts", cuts.cuts());
    assert!(cuts.resets > 0 && cuts.silent_drops > 0);
    assert!(link.reconnects >= 20, "only {} resumes", link.reconnects);
    assert_eq!(server.stats().await.clients, 1, "one session throughout");
}

/// Dials from 127.0.0.2, 127.0.0.3, … in turn, as a client whose network
/// keeps changing.
#[derive(Clone)]
struct Hopping {
    target: SocketAddr,
    options: SocketOptions,
    next: Arc<AtomicU32>,
    used: Arc<Mutex<Vec<IpAddr>>>,
}

impl Dialer for Hopping {
    type Io = TcpStream;

    async fn dial(&self) -> io::Result<Dialed<TcpStream>> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (n % 250) as u8));
        let socket = TcpSocket::new_v4()?;
        self.options.size(&socket)?;
        socket.bind(SocketAddr::new(ip, 0))?;
        let io = socket.connect(self.target).await?;
        self.options.apply(&io)?;
        self.used.lock().push(ip);
        Ok(Dialed {
            io,
            peer: Some(self.target),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_survives_the_client_changing_address() {
    common::logs();
    let server = Server::bind(server_config()).await.unwrap();
    let (local, service) = bulk_service().await;
    let config = client_config(server.local_addr().to_string(), "roaming", &[(&local, 0)]);
    let used = Arc::new(Mutex::new(Vec::new()));
    let dialer = Hopping {
        target: server.local_addr(),
        options: SocketOptions::from_config(&config.stream),
        next: Arc::new(AtomicU32::new(0)),
        used: used.clone(),
    };
    let mut client = RunningClient::start_with(config, dialer);
    let public = client.published(1).await;
    let control = client.stop.clone();
    // Move to a new address every 50 ms while the transfer runs.
    let hopping = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            control.force_reconnect();
        }
    });
    // Watch, from the server's side, which addresses the link came from.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let watching = {
        let seen = seen.clone();
        let server = Arc::new(server);
        let s = server.clone();
        (
            tokio::spawn(async move {
                loop {
                    for c in s.clients().await {
                        if let Some(peer) = c.peer {
                            let mut seen = seen.lock();
                            if seen.last() != Some(&peer.ip()) {
                                seen.push(peer.ip());
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }),
            server,
        )
    };
    timeout(Duration::from_secs(300), bulk_visitor(&public[0], service))
        .await
        .expect("transfer finished in time");
    hopping.abort();
    watching.0.abort();
    let server = watching.1;
    let used = used.lock().clone();
    let seen = seen.lock().clone();
    let info = &server.clients().await[0];
    println!(
        "256 MiB each way across {} source addresses; the server saw {} address changes, {} resumes",
        used.len(),
        seen.len().saturating_sub(1),
        info.link.reconnects
    );
    assert!(used.len() >= 21, "dialled from {} addresses", used.len());
    assert!(
        seen.len() >= 10,
        "the server saw the address change: {seen:?}"
    );
    assert!(info.link.reconnects >= 20);
    assert_eq!(server.stats().await.clients, 1, "one session throughout");
}

/// 200 visitors at once each move 256 KiB each way; meanwhile one visitor
/// that never reads has its own stream stall, and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_visitors_and_one_that_never_reads() {
    common::logs();
    let local = echo_service().await;
    // All 201 visitors come from 127.0.0.1: above the per-source default.
    let mut sc = server_config();
    sc.max_visitors_per_source = 1024;
    let server = Server::bind(sc).await.unwrap();
    let mut client = RunningClient::start(client_config(
        server.local_addr().to_string(),
        "home",
        &[(&local, 0)],
    ));
    let public = client.published(1).await.remove(0);
    let _client = client;

    // The stalled visitor reads nothing for now, through a small receive
    // buffer, so the echo of what it writes fills its tunnel stream's window
    // at once and stays stuck there.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 << 10).unwrap();
    let stalled = socket.connect(public.parse().unwrap()).await.unwrap();
    let (mut stalled_r, mut stalled_w) = stalled.into_split();
    let stalled_writer = tokio::spawn(async move {
        let sent = send_random(&mut stalled_w, 5, STALLED).await;
        (sent, stalled_w)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut visitors = Vec::new();
    for i in 0..200u64 {
        let public = public.clone();
        visitors.push(tokio::spawn(async move {
            let v = TcpStream::connect(&public).await.unwrap();
            let (mut r, mut w) = v.into_split();
            let reading = tokio::spawn(async move { recv_digest(&mut r, 256 << 10).await });
            let sent = send_random(&mut w, 1000 + i, 256 << 10).await.unwrap();
            let got = reading.await.unwrap().unwrap();
            assert_eq!(sent, got, "visitor {i}");
        }));
    }
    let all = timeout(Duration::from_secs(120), async {
        for v in visitors {
            v.await.unwrap();
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "every visitor finished while one stream was stalled"
    );
    // The finished visitors' streams close (their FINs are in flight).
    let mut left = usize::MAX;
    for _ in 0..200 {
        left = server.stats().await.streams;
        if left == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(left, 1, "only the stalled stream is left");

    // And the stalled visitor's data is all there once it reads.
    let got = timeout(
        Duration::from_secs(60),
        recv_digest(&mut stalled_r, STALLED),
    )
    .await
    .unwrap()
    .unwrap();
    let (sent, _w) = stalled_writer.await.unwrap();
    assert_eq!(got, sent.unwrap());
    let mut rest = [0u8; 1];
    let extra = timeout(Duration::from_millis(100), stalled_r.read(&mut rest)).await;
    assert!(extra.is_err(), "nothing beyond what was sent");
}

/// Writes `round` through the visitor connection `public` and reads it
/// back from the echo behind it, in time.
async fn echo_through(public: &str, round: u8) {
    use tokio::io::AsyncWriteExt;
    let sent = vec![round; 64 << 10];
    let mut got = vec![0u8; sent.len()];
    timeout(LIMIT, async {
        let mut visitor = TcpStream::connect(public).await.expect("visitor connects");
        visitor.write_all(&sent).await.expect("write");
        visitor.read_exact(&mut got).await.expect("read");
    })
    .await
    .unwrap_or_else(|_| panic!("round {round} echoed in time"));
    assert_eq!(got, sent, "round {round}");
}

/// A link, its mux, its visitors' listener and their bridges run on the
/// link's thread: a visitor is still served after the runtime the server
/// was bound on (which accepted the link) is gone.
#[test]
fn a_link_and_its_visitors_run_on_the_links_thread() {
    let binding = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // Nothing can repair a break once the accepting runtime is gone: slow
    // timers, so that a loaded machine's pause is not taken for one.
    let mut config = server_config();
    config.stream.idle_timeout = Some(Duration::from_secs(60));
    config.stream.user_timeout = None;
    config.mux.ping_timeout = Duration::from_secs(60);
    let server = binding.block_on(Server::bind(config)).expect("server");
    let app = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    app.block_on(async move {
        let echo = echo_service().await;
        let mut config = client_config(server.local_addr().to_string(), "home", &[(&echo, 0)]);
        config.stream.idle_timeout = Some(Duration::from_secs(60));
        config.stream.user_timeout = None;
        config.mux.ping_timeout = Duration::from_secs(60);
        let mut client = RunningClient::start(config);
        let public = client.published(1).await.remove(0);
        echo_through(&public, 1).await;
        binding.shutdown_background();
        for round in 2..5 {
            echo_through(&public, round).await;
        }
        drop(server);
    });
}
