//! Slow readers and fast writers across cuts, with the default configuration:
//! the writers fill every buffer on the way, so a cut loses as much as can
//! ever be in flight; the history must still cover it, every time.

mod common;

use std::time::Duration;

use common::{digest_of, send_random};
use rejoin::chaos::{CutProxy, Plan, ProxyConfig};
use rejoin::stream::{self, Config, Error, Listener};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::timeout;

const LEN: u64 = 24 << 20;

/// Reads `len` bytes in small bites with pauses: about 4 MB/s.
async fn slow_read<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> std::io::Result<[u8; 32]> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 8 << 10];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = r.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        sha.update(&buf[..n]);
        left -= n as u64;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(sha.finalize().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_never_run_out_of_history() {
    common::logs();
    let config = Config::default();
    let listener = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let proxy = CutProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        listener.local_addr().unwrap(),
        ProxyConfig {
            // Cuts far enough apart that each connection moves more than
            // the resend a cut causes (full buffers: up to ~2.4 MB).
            plan: Some(Plan {
                every: (5 << 19)..=(4 << 20),
                silent: 0.0,
                seed: 21,
            }),
            ..ProxyConfig::default()
        },
    )
    .await
    .unwrap();

    let server = tokio::spawn(async move {
        let s = listener.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let reading = tokio::spawn(async move { (slow_read(&mut r, LEN).await, r) });
        let sent = send_random(&mut w, 2, LEN).await;
        let (got, _r) = reading.await.unwrap();
        (sent, got, w, listener)
    });
    let client = stream::connect(proxy.local_addr().to_string(), config)
        .await
        .unwrap();
    let handle = client.handle();
    let (mut r, mut w) = client.into_split();
    let reading = tokio::spawn(async move { (slow_read(&mut r, LEN).await, r) });
    let outcome = timeout(Duration::from_secs(120), async {
        let sent = send_random(&mut w, 1, LEN).await;
        let (got, _r) = reading.await.unwrap();
        let (server_sent, server_got, _w, _l) = server.await.unwrap();
        (sent, got, server_sent, server_got)
    })
    .await
    .expect("transfer in time");

    let fail = |e: &std::io::Error| {
        if let Some(Error::HistoryTooShort { need, held }) = Error::from_io(e) {
            panic!("resume failed for lack of history: need {need}, held {held}");
        }
        panic!("transfer failed: {e}");
    };
    let (sent, got, server_sent, server_got) = outcome;
    let sent = sent.unwrap_or_else(|e| fail(&e));
    let got = got.unwrap_or_else(|e| fail(&e));
    let server_sent = server_sent.unwrap_or_else(|e| fail(&e));
    let server_got = server_got.unwrap_or_else(|e| fail(&e));
    assert_eq!(sent, digest_of(1, LEN));
    assert_eq!(server_got, sent);
    assert_eq!(got, server_sent);
    let stats = handle.stats();
    println!(
        "slow readers: {} cuts, {} reconnects, {} bytes resent",
        proxy.stats().cuts(),
        stats.reconnects,
        stats.resent
    );
    assert!(
        stats.reconnects >= 10,
        "only {} reconnects",
        stats.reconnects
    );
}

/// The converse: a configuration that understates what is in flight (a
/// proxy holding far more than `path_buffer` says) ends in a clear error,
/// and everything read before it is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_understated_path_ends_in_a_clear_error() {
    common::logs();
    let mut config = Config::default();
    config.socket_buffer = Some(4096);
    config.path_buffer = 0;
    config.history = 24 << 10;
    let listener = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let proxy = CutProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        listener.local_addr().unwrap(),
        ProxyConfig {
            socket_buffer: 1 << 20,
            chunk: 256 << 10,
            ..ProxyConfig::default()
        },
    )
    .await
    .unwrap();
    let server = tokio::spawn(async move {
        let s = listener.accept().await.unwrap();
        let (_r, mut w) = s.into_split();
        let _ = send_random(&mut w, 5, 64 << 20).await;
        listener
    });
    let client = stream::connect(proxy.local_addr().to_string(), config)
        .await
        .unwrap();
    let (mut r, _w) = client.into_split();
    // Read a little, let the proxy fill up, cut, and read on.
    let mut expected = Vec::new();
    {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut left = 4u64 << 20;
        while left > 0 {
            let n = (1 + (rng.next_u32() as usize) % (256 << 10)).min(left as usize);
            let mut chunk = vec![0u8; n];
            rng.fill_bytes(&mut chunk);
            expected.extend_from_slice(&chunk);
            left -= n as u64;
        }
    }
    let mut got = vec![0u8; 64 << 10];
    r.read_exact(&mut got).await.unwrap();
    // The client's buffers fill (256 KiB of them), then the proxy's: wait
    // until it has forwarded that much and then stopped (nothing more for
    // ten polls in a row; at most 30 s).
    let (mut last, mut still) = (0, 0);
    for _ in 0..3000 {
        let forwarded = proxy.stats().forwarded;
        still = if forwarded == last { still + 1 } else { 0 };
        last = forwarded;
        if forwarded >= 256 << 10 && still >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        still >= 10,
        "the proxy never filled up ({last} bytes forwarded)"
    );
    proxy.cut_all(rejoin::chaos::CutKind::Reset);
    let mut read = got.len();
    let err = loop {
        let mut buf = vec![0u8; 64 << 10];
        match timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .unwrap()
        {
            Ok(0) => panic!("clean end of file instead of an error"),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                read += n;
                assert!(read <= expected.len(), "test reads within its reference");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(
        &got[..],
        &expected[..got.len()],
        "nothing wrong was delivered"
    );
    let kind = Error::from_io(&err);
    assert!(
        matches!(kind, Some(Error::Refused | Error::HistoryTooShort { .. })),
        "clear error, got {err}"
    );
    drop(server);
}
