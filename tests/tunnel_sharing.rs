//! Visitors sharing a slow link: one visitor's upload must not make another
//! visitor's bytes wait behind all of it.
//!
//! Measured in bytes, not time: while one visitor uploads as fast as it can
//! through a link that carries 4 MB/s, another sends one byte to an echo
//! service; what the upload's service received between that byte's send and
//! its echo is what was queued ahead of it. Before each stream had a share
//! of the mux's link queue and the link an unsent limit (both following the
//! link's rate), that was the whole 8 MiB queue plus the link's 4 MiB
//! history: about 16 MB.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::tunnel::*;
use rejoin::chaos::ProxyConfig;
use rejoin::tunnel::client::ClientEvent;
use rejoin::tunnel::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// The link's rate, each way.
const RATE: u64 = 4_000_000;

/// The most upload bytes that may go ahead of another visitor's byte on
/// this link: the upload's share of the mux queue and what the link may
/// hold unsent (256 KiB each on a link this slow), the frames taken for one
/// write and the frames sealed for the socket (256 KiB each), what the
/// link's socket holds unsent (128 KiB) and in flight to the proxy, whose
/// own buffers are small, and the client's receive buffer (4 MiB) should
/// the client's mux fall behind on a loaded machine: about 5.2 MiB.
const AHEAD_BOUND: u64 = 6 << 20;

/// A service that reads and discards everything, counting it.
async fn sink_service() -> (String, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    counted.fetch_add(n as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_waits_behind_a_bounded_part_of_anothers_upload() {
    common::logs();
    let server = Server::bind(server_config()).await.unwrap();
    let proxy = proxy_to(
        &server,
        ProxyConfig {
            rate: Some(RATE),
            ..ProxyConfig::default()
        },
    )
    .await;
    let (sink, received) = sink_service().await;
    let echo = echo_service().await;
    let mut client = RunningClient::start(client_config(
        proxy.local_addr().to_string(),
        "home",
        &[(&sink, 0), (&echo, 0)],
    ));
    let (mut sink_public, mut echo_public) = (None, None);
    while sink_public.is_none() || echo_public.is_none() {
        match timeout(LIMIT, client.events.recv())
            .await
            .expect("published in time")
        {
            Some(ClientEvent::Published { local, public, .. }) if local == sink => {
                sink_public = Some(public)
            }
            Some(ClientEvent::Published { local, public, .. }) if local == echo => {
                echo_public = Some(public)
            }
            Some(ClientEvent::PublishFailed { reason, .. }) => panic!("{reason}"),
            Some(_) => {}
            None => panic!("client ended"),
        }
    }
    let (sink_public, echo_public) = (sink_public.unwrap(), echo_public.unwrap());

    let mut chat = TcpStream::connect(&echo_public).await.unwrap();
    chat.set_nodelay(true).unwrap();
    let mut byte = [0u8; 1];
    chat.write_all(b"x").await.unwrap();
    timeout(LIMIT, chat.read_exact(&mut byte))
        .await
        .expect("echo in time")
        .unwrap();

    // The upload, as fast as the tunnel takes it, until the test ends.
    let upload = tokio::spawn(async move {
        let mut bulk = TcpStream::connect(&sink_public).await.unwrap();
        let block = vec![7u8; 256 << 10];
        while bulk.write_all(&block).await.is_ok() {}
    });
    // Until every queue on the way is as full as the upload makes it: 8 MiB
    // through a 4 MB/s link is two seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < 8 << 20 {
        assert!(Instant::now() < deadline, "the upload stalled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ahead = Vec::new();
    for _ in 0..3 {
        let before = received.load(Ordering::Relaxed);
        chat.write_all(b"x").await.unwrap();
        timeout(LIMIT, chat.read_exact(&mut byte))
            .await
            .expect("echo in time")
            .unwrap();
        ahead.push(received.load(Ordering::Relaxed) - before);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    upload.abort();
    println!(
        "upload bytes delivered while another visitor's byte went through and back: {ahead:?} (bound {AHEAD_BOUND})"
    );
    for n in &ahead {
        assert!(
            *n <= AHEAD_BOUND,
            "{n} bytes went ahead of the visitor's byte"
        );
    }
    // The upload kept going meanwhile: the byte did not jump a stalled queue.
    assert!(ahead.iter().any(|n| *n > 0), "{ahead:?}");
}
