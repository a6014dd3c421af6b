//! 64 MiB each way through a proxy that resets and silently drops the link at
//! random byte offsets, at least 50 times: both SHA-256 digests must match.

mod common;

use std::time::Duration;

use common::{digest_of, recv_digest, send_random};
use rejoin::chaos::{CutProxy, Plan, ProxyConfig};
use rejoin::proto::Version;
use rejoin::proto::sealed::Psk;
use rejoin::stream::{self, Config, Listener, Sealed, Suite};
use tokio::time::timeout;

const LEN: u64 = 64 << 20;
const CLIENT_SEED: u64 = 1;
const SERVER_SEED: u64 = 2;
const MIN_CUTS: u64 = 50;

/// Short timers so silent drops are found quickly on loopback, and small
/// socket buffers: every cut makes both sides resend what was in flight, and
/// a link cut more often than it can carry that much would make no progress.
/// 64 KiB buffers bound the resend to well under the 1.5 MiB between cuts.
fn config(version: Version, encrypt: bool, records: bool) -> Config {
    let mut c = Config::default();
    c.version = version;
    c.encrypt = encrypt;
    c.records = records;
    c.socket_buffer = Some(64 << 10);
    c.idle_timeout = Some(Duration::from_millis(1500));
    c.user_timeout = Some(Duration::from_secs(2));
    c.redial.initial = Duration::from_millis(20);
    c.redial.max = Duration::from_millis(200);
    c
}

async fn transfer_through_cuts(config: Config, seed: u64) {
    common::logs();
    let label = format!(
        "{:?} {:?} encrypt={} records={}",
        config.suite, config.version, config.encrypt, config.records
    );
    let listener = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let target = listener.local_addr().unwrap();
    // 128 MiB and the resends cross the proxy; a cut every 1.5-2.5 MiB gives
    // about 75, each after about twice what a cut can make anyone resend.
    let plan = Plan {
        every: (3 << 19)..=(5 << 19),
        silent: 0.15,
        seed,
    };
    let proxy = CutProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        target,
        ProxyConfig {
            plan: Some(plan),
            ..ProxyConfig::default()
        },
    )
    .await
    .unwrap();

    let server = tokio::spawn(async move {
        let stream = listener.accept().await.unwrap();
        let (mut r, mut w) = stream.into_split();
        let receiving = tokio::spawn(async move { recv_digest(&mut r, LEN).await.map(|d| (d, r)) });
        let sent = send_random(&mut w, SERVER_SEED, LEN).await.unwrap();
        let (got, r) = receiving.await.unwrap().unwrap();
        (sent, got, listener, r, w)
    });

    let client = stream::connect(proxy.local_addr().to_string(), config)
        .await
        .unwrap();
    let handle = client.handle();
    // Every 20 s, where things stand (shown only if the test fails).
    let watch = {
        let (handle, proxy_stats) = (handle.clone(), std::sync::Arc::new(proxy));
        let proxy = proxy_stats.clone();
        (
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    eprintln!(
                        "progress: client {:?}; proxy {:?}",
                        handle.stats(),
                        proxy.stats()
                    );
                }
            }),
            proxy_stats,
        )
    };
    let proxy = watch.1.clone();
    let (mut r, mut w) = client.into_split();
    let receiving = tokio::spawn(async move { recv_digest(&mut r, LEN).await.map(|d| (d, r)) });
    let client_sent = send_random(&mut w, CLIENT_SEED, LEN).await.unwrap();
    let (client_got, _r) = receiving.await.unwrap().unwrap();
    let (server_sent, server_got, _listener, _sr, _sw) = server.await.unwrap();
    watch.0.abort();

    let stats = handle.stats();
    let cuts = proxy.stats();
    println!(
        "{label}: {} resets, {} silent drops, {} reconnects, {} bytes resent",
        cuts.resets, cuts.silent_drops, stats.reconnects, stats.resent
    );
    assert_eq!(client_sent, digest_of(CLIENT_SEED, LEN));
    assert_eq!(server_got, client_sent, "client → server digest");
    assert_eq!(client_got, server_sent, "server → client digest");
    assert!(cuts.cuts() >= MIN_CUTS, "only {} cuts", cuts.cuts());
    assert!(cuts.silent_drops > 0 && cuts.resets > 0);
    assert!(
        stats.reconnects >= MIN_CUTS,
        "only {} reconnects",
        stats.reconnects
    );
}

async fn run(version: Version, encrypt: bool, records: bool, seed: u64) {
    run_with(config(version, encrypt, records), seed).await;
}

async fn run_with(config: Config, seed: u64) {
    timeout(
        Duration::from_secs(240),
        transfer_through_cuts(config, seed),
    )
    .await
    .expect("transfer finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_encrypted_survives_cuts() {
    run(Version::V2, true, false, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_plain_survives_cuts() {
    run(Version::V2, false, false, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_encrypted_survives_cuts() {
    run(Version::V1, true, false, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_plain_survives_cuts() {
    run(Version::V1, false, false, 14).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_layer_survives_cuts() {
    run(Version::V2, true, true, 15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_survives_cuts() {
    run_with(sealed(), 16).await;
}

/// The sealed suite with the cut tests' short timers.
fn sealed() -> Config {
    let mut c = config(Version::V2, true, false);
    c.suite = Suite::Sealed(Sealed::new(Psk::from_bytes([3; 32])));
    c
}

/// A silent drop while nothing flows: no FIN, no RST, no failing write. The
/// client notices the silence and resumes; the record layer's PING lets the
/// server notice too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_silent_drop_is_detected() {
    use rejoin::chaos::CutKind;
    use rejoin::stream::Event;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    common::logs();
    for (records, sealed_suite) in [(false, false), (true, false), (true, true)] {
        let mut c = if sealed_suite {
            sealed()
        } else {
            config(Version::V2, true, records)
        };
        c.idle_timeout = Some(Duration::from_millis(600));
        let listener = Listener::bind("127.0.0.1:0", c.clone()).await.unwrap();
        let proxy = CutProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            listener.local_addr().unwrap(),
            ProxyConfig::default(),
        )
        .await
        .unwrap();
        let mut client = stream::connect(proxy.local_addr().to_string(), c)
            .await
            .unwrap();
        let mut server = listener.accept().await.unwrap();
        let mut client_events = client.events();
        let mut server_events = server.events();
        assert_eq!(proxy.cut_all(CutKind::Silent), 1);
        let resumed = timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(Event::Resumed { .. }) = client_events.recv().await {
                    return;
                }
            }
        })
        .await;
        assert!(
            resumed.is_ok(),
            "records={records}: client resumed after the silence"
        );
        if records {
            let noticed = timeout(Duration::from_secs(10), async {
                loop {
                    if let Ok(Event::Disconnected { .. } | Event::Resumed { .. }) =
                        server_events.recv().await
                    {
                        return;
                    }
                }
            })
            .await;
            assert!(noticed.is_ok(), "server noticed too");
        }
        client.write_all(b"after").await.unwrap();
        let mut buf = [0u8; 5];
        timeout(Duration::from_secs(10), server.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"after");
    }
}
