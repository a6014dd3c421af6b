//! A listener with threads of its own (`Config::threads`): each session's
//! driver runs on one of them, with its transport registered there, a
//! resumed transport included.

use std::time::Duration;

use rejoin::chaos::{CutKind, CutProxy, ProxyConfig};
use rejoin::proto::sealed::Psk;
use rejoin::stream::{self, Config, Listener, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

fn config() -> Config {
    let mut c = Config::sealed(Psk::from_bytes([9; 32]));
    c.redial.initial = Duration::from_millis(20);
    c.redial.max = Duration::from_millis(200);
    c.threads = 2;
    c
}

/// Sends `round` and reads it back from the echo, in time.
async fn echo_round(client: &mut Stream, round: u8) {
    let sent = vec![round; 64 << 10];
    let mut got = vec![0u8; sent.len()];
    timeout(LIMIT, async {
        client.write_all(&sent).await.expect("write");
        client.read_exact(&mut got).await.expect("read");
    })
    .await
    .unwrap_or_else(|_| panic!("round {round} echoed in time"));
    assert_eq!(got, sent, "round {round}");
}

/// The session outlives the runtime that accepted its connections: its
/// driver and its transport are on the listener's thread. With `cut`, the
/// transport then is a resumed one, accepted and authenticated on that
/// runtime and moved to the thread when the resume committed.
fn outlives_the_accepting_runtime(cut: bool) {
    let accepting = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = accepting
        .block_on(Listener::bind("127.0.0.1:0", config()))
        .expect("bind");
    let target = listener.local_addr().expect("address");
    let app = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    app.block_on(async move {
        let proxy = CutProxy::start(
            "127.0.0.1:0".parse().expect("address"),
            target,
            ProxyConfig::default(),
        )
        .await
        .expect("proxy");
        let mut client = stream::connect(proxy.local_addr().to_string(), config())
            .await
            .expect("connect");
        let accepted = accepting.spawn(async move {
            let stream = listener.accept().await;
            (stream, listener)
        });
        let (server, listener) = timeout(LIMIT, accepted)
            .await
            .expect("accepted in time")
            .expect("accept task");
        let server = server.expect("a session");
        let home = server.home().expect("a session on the listener's thread");
        let (tx, rx) = tokio::sync::oneshot::channel();
        home.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(String::from));
            let (mut r, mut w) = tokio::io::split(server);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        let thread = rx.await.expect("the echo ran");
        assert!(
            thread
                .as_deref()
                .is_some_and(|t| t.starts_with("rj-session-")),
            "{thread:?}"
        );
        echo_round(&mut client, 1).await;
        if cut {
            let handle = client.handle();
            assert_eq!(proxy.cut_all(CutKind::Reset), 1);
            timeout(LIMIT, async {
                while handle.stats().reconnects == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await
            .expect("resumed in time");
            echo_round(&mut client, 2).await;
        }
        // The runtime that accepted (and, with `cut`, resumed) is gone.
        drop(listener);
        accepting.shutdown_background();
        for round in 3..6 {
            echo_round(&mut client, round).await;
        }
    });
}

#[test]
fn a_new_sessions_transport_moves_to_the_listeners_thread() {
    outlives_the_accepting_runtime(false);
}

#[test]
fn a_resumed_transport_moves_to_the_sessions_thread() {
    outlives_the_accepting_runtime(true);
}
