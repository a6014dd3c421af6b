//! The examples against the Go snet peer model (`common/gosnet.rs`) through
//! real sockets and a link-cutting proxy: v1 and v2, encryption on and off,
//! rejoin as server and as client, with cuts about every 645 KB and with cuts
//! close enough together to land inside resends. The model reads each resend
//! whole or not at all and counts as the fixed Go library does.
//!
//! Each run echoes 8 MiB and checks every byte; it prints the cuts, the
//! resumes and the bytes each side resent.

#[path = "common/examples.rs"]
mod examples;
#[path = "common/gosnet.rs"]
mod gosnet;

use std::ops::RangeInclusive;
use std::time::Duration;

use gosnet::GoConfig;
use gosnet::behind::{cutter, serve};
use rejoin::chaos::{CutProxy, Plan, ProxyConfig};
use rejoin::proto::Version;
use std::sync::Arc;

const BYTES: u64 = 8 << 20;

/// (name, bytes forwarded between cuts, both directions together, and
/// whether the link is also cut halfway through every other resend the model
/// reads). An echo forwards each byte twice, so ~1.3 MB is a reset about
/// every 645 KB that the server reads.
const PLANS: [(&str, RangeInclusive<u64>, bool); 2] = [
    ("cuts every ~645 KB read", 1_230_000..=1_350_000, false),
    ("and cuts inside resends", 1_230_000..=1_350_000, true),
];

const FLAGS: [&[&str]; 4] = [&[], &["--v1"], &["--plain"], &["--v1", "--plain"]];

fn model_config(flags: &[&str]) -> GoConfig {
    GoConfig {
        version: if flags.contains(&"--v1") {
            Version::V1
        } else {
            Version::V2
        },
        encrypt: !flags.contains(&"--plain"),
        buffer: 4 << 20,
        stock: false,
    }
}

fn plan(every: RangeInclusive<u64>, seed: u64) -> Plan {
    Plan {
        every,
        silent: 0.0,
        seed,
    }
}

async fn proxy(target: std::net::SocketAddr, every: RangeInclusive<u64>, seed: u64) -> CutProxy {
    CutProxy::start(
        "127.0.0.1:0".parse().expect("an address"),
        target,
        ProxyConfig {
            plan: Some(plan(every, seed)),
            ..ProxyConfig::default()
        },
    )
    .await
    .expect("proxy starts")
}

fn p50(times: &[Duration]) -> Duration {
    let mut t = times.to_vec();
    t.sort();
    t.get(t.len() / 2).copied().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_server_serves_a_go_model_client_through_cuts() {
    for (seed, flags) in FLAGS.iter().enumerate() {
        for (name, every, inside) in PLANS {
            let (_server, addr) = examples::echo_server(flags);
            let proxy = Arc::new(proxy(addr.parse().expect("address"), every, seed as u64).await);
            let run = gosnet::net::echo_client(
                model_config(flags),
                proxy.local_addr(),
                BYTES,
                seed as u64,
                Duration::from_secs(120),
                inside.then(|| cutter(&proxy)),
            )
            .await
            .unwrap_or_else(|e| panic!("{flags:?}, {name}: {e}"));
            let cuts = proxy.stats().cuts();
            println!(
                "echo_server {flags:?}, {name}: {cuts} cuts ({} inside resends), model resumed {} \
                 times, resent {} B, asked for {} B of resends from rejoin ({} reads cut short), \
                 resume p50 {:?}",
                run.cuts_inside,
                run.stats.resumes,
                run.stats.rewritten,
                run.stats.reread,
                run.stats.rereads_lost,
                p50(&run.resume_times),
            );
            assert!(cuts >= 10, "{flags:?}, {name}: the link was cut ({cuts})");
            assert!(run.stats.resumes >= cuts / 2, "{flags:?}, {name}: resumes");
            if inside {
                assert!(run.cuts_inside >= 3, "{flags:?}: cuts inside resends");
                assert!(run.stats.rereads_lost >= run.cuts_inside, "{flags:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_client_works_with_a_go_model_server_through_cuts() {
    for (seed, flags) in FLAGS.iter().enumerate() {
        for (name, every, inside) in PLANS {
            let server = serve(
                model_config(flags),
                plan(every, 100 + seed as u64),
                Duration::from_secs(150),
                inside,
            )
            .await;
            let addr = server.proxy.local_addr().to_string();
            let flags_owned: Vec<&'static str> = flags.to_vec();
            let (ok, out) = tokio::task::spawn_blocking(move || {
                examples::echo_client(&addr, BYTES, &flags_owned)
            })
            .await
            .expect("echo_client ran");
            let cuts = server.proxy.stats().cuts();
            let run = server
                .finish()
                .await
                .unwrap_or_else(|e| panic!("{flags:?}, {name}: the model's session ended: {e}"));
            println!(
                "echo_client {flags:?}, {name}: {cuts} cuts ({} inside resends), model resumed {} \
                 times, resent {} B, asked for {} B of resends from rejoin ({} reads cut short), \
                 resume p50 {:?}: {}",
                run.cuts_inside,
                run.stats.resumes,
                run.stats.rewritten,
                run.stats.reread,
                run.stats.rereads_lost,
                p50(&run.resume_times),
                out.trim()
            );
            assert!(ok, "{flags:?}, {name}: {out}");
            if inside {
                assert!(run.cuts_inside >= 3, "{flags:?}: cuts inside resends");
                assert!(run.stats.rereads_lost >= run.cuts_inside, "{flags:?}");
            }
            assert!(out.starts_with(&format!("ok: {BYTES} bytes")), "{out}");
            assert!(cuts >= 10, "{flags:?}, {name}: the link was cut ({cuts})");
        }
    }
}

/// The model against itself through the same cuts: the Go-to-Go baseline,
/// and a check of the model and its driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_model_against_itself_through_cuts() {
    for (seed, flags) in FLAGS.iter().enumerate() {
        for (name, every, inside) in PLANS {
            let server = serve(
                model_config(flags),
                plan(every, 200 + seed as u64),
                Duration::from_secs(150),
                inside,
            )
            .await;
            let cuts = || server.proxy.stats().cuts();
            let client = gosnet::net::echo_client(
                model_config(flags),
                server.proxy.local_addr(),
                BYTES,
                seed as u64,
                Duration::from_secs(120),
                None,
            )
            .await;
            let cuts = cuts();
            let server = server.finish().await;
            let client = client.unwrap_or_else(|e| panic!("{flags:?}, {name}: client: {e}"));
            let server = server.unwrap_or_else(|e| panic!("{flags:?}, {name}: server: {e}"));
            println!(
                "model ↔ model {flags:?}, {name}: {cuts} cuts, {} resumes, resent {} B / {} B",
                client.stats.resumes, client.stats.rewritten, server.stats.rewritten
            );
        }
    }
}
/// A stock Go v1 server that reads on past a resend (PROTOCOL.md §1.10, bug
/// 2) for bytes nobody writes: it resumes, sends nothing more, gives up at
/// its deadline and forgets the session, then closes every reconnect. The
/// client's error says what happened rather than a bare refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_server_left_waiting_past_a_resend_is_named() {
    use rejoin::stream::{self, Config, Error};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = fake_v1::listen().await;
    let addr = listener.local_addr().expect("an address");
    let server = tokio::spawn(async move {
        // The reconnect: counts, nothing to resend, and then nothing at all
        // until its deadline.
        let conn = fake_v1::break_and_resume(&listener, 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(conn);
        // The session is gone: a v1 server reads the request (40 bytes) and
        // refuses by closing.
        for _ in 0..20 {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 40];
            let _ = conn.read_exact(&mut request).await;
            drop(conn);
        }
    });
    let mut config = Config::default();
    config.version = Version::V1;
    config.redial.initial = Duration::from_millis(10);
    config.redial.give_up = Some(Duration::from_secs(20));
    let mut client = stream::connect(addr, config).await.expect("connects");
    client.write_all(&[7; 100]).await.expect("write");
    client.flush().await.expect("flush");
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf))
        .await
        .expect("the client gives up in time")
        .expect_err("the session ends");
    assert!(
        matches!(Error::from_io(&err), Some(Error::V1ServerWaited)),
        "{err}"
    );
    assert!(err.to_string().contains("past a resend"), "{err}");
    server.abort();
}

/// A hostile server announces a resend (1 MiB, within the history) and never
/// sends it. The client holds what it writes meanwhile, as it must, but the
/// session is not stuck: its idle timeout replaces the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_announced_and_never_sent_does_not_hang_the_client() {
    use rejoin::stream::{self, Config};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = fake_v1::listen().await;
    let addr = listener.local_addr().expect("an address");
    let server = tokio::spawn(async move {
        let mut conn = fake_v1::break_and_resume(&listener, 1 << 20).await;
        // Whatever the client sends on it now (nothing it wrote after the
        // resume may come before the announced resend).
        let mut after = Vec::new();
        let read = tokio::time::timeout(LIMIT, conn.read_to_end(&mut after)).await;
        // The client gives up on this connection and dials again.
        let (_third, _) = listener.accept().await.expect("accept");
        (read.is_ok(), after.len())
    });
    let mut config = Config::default();
    config.version = Version::V1;
    config.idle_timeout = Some(Duration::from_secs(1));
    config.redial.initial = Duration::from_millis(10);
    let mut client = stream::connect(addr, config).await.expect("connects");
    client.write_all(&[7; 100]).await.expect("write");
    client.flush().await.expect("flush");
    // Written after the break: held until the announced resend arrives.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.write_all(&[8; 50]).await.expect("write");
    let (closed, sent_after) = tokio::time::timeout(LIMIT, server)
        .await
        .expect("the client dials again in time")
        .expect("the server task");
    assert!(closed, "the client left the silent connection");
    assert_eq!(sent_after, 0, "nothing new went out before the resend");
}

const LIMIT: Duration = Duration::from_secs(20);

/// A v1 server driven by hand, for the tests of servers that misbehave.
mod fake_v1 {
    use bytes::BytesMut;
    use rand::SeedableRng;
    use rejoin::proto::{Incoming, Params, ResumeReply, ServerHandshake, Version};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    pub async fn listen() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.expect("bind")
    }

    /// Accepts a session and reads 100 bytes on it, breaks the link, then
    /// accepts the client's reconnect and replies read count 100 and
    /// `write_count`, sending nothing else. Returns that connection.
    pub async fn break_and_resume(listener: &TcpListener, write_count: u64) -> TcpStream {
        let params = Params {
            version: Version::V1,
            ..Params::default()
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut input = BytesMut::new();
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut hs = ServerHandshake::new(params, 7);
        let mut established = false;
        while !established || input.len() < 100 {
            assert!(conn.read_buf(&mut input).await.expect("read") > 0);
            if !established {
                hs.handle_input(&mut input, &mut rng).expect("handshake");
                if let Some(t) = hs.poll_transmit() {
                    conn.write_all(&t).await.expect("write");
                }
                established = matches!(hs.poll_outcome(), Some(Incoming::Session(_)));
            }
        }
        drop(conn); // the link breaks
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut hs = ServerHandshake::new(params, 8);
        input.clear();
        loop {
            assert!(conn.read_buf(&mut input).await.expect("read") > 0);
            hs.handle_input(&mut input, &mut rng)
                .expect("reconnect request");
            if let Some(Incoming::Reconnect(_)) = hs.poll_outcome() {
                break;
            }
        }
        let mut reply = BytesMut::new();
        ResumeReply::Accept {
            write_count,
            read_count: 100,
            challenge: None,
        }
        .encode(Version::V1, &mut reply);
        conn.write_all(&reply).await.expect("reply");
        conn
    }
}
