//! `rejoin demo`: everything on loopback, nothing to install. A server, a
//! client and a link-cutting proxy between them; data streams through while
//! the proxy resets and silently drops the link, and every byte is checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::say;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rejoin::chaos::{CutProxy, Plan, ProxyConfig, ProxyStats};
use rejoin::stream::{self, Config, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args)]
pub struct Args {
    /// Bytes to stream through the breaking link.
    #[arg(long, default_value_t = 64 << 20)]
    bytes: u64,
}

const CHUNK: usize = 64 << 10;

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1 << 20) as f64)
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// "5 link cuts (4 resets, 1 silent drop)".
fn cuts(s: &ProxyStats) -> String {
    format!(
        "{} ({}, {})",
        plural(s.cuts(), "link cut", "link cuts"),
        plural(s.resets, "reset", "resets"),
        plural(s.silent_drops, "silent drop", "silent drops")
    )
}

/// Short timers, so a silent drop is noticed within a second on loopback.
fn demo_config() -> Config {
    let mut c = Config::default();
    c.idle_timeout = Some(Duration::from_secs(1));
    c.user_timeout = Some(Duration::from_secs(2));
    c.redial.initial = Duration::from_millis(20);
    c.redial.max = Duration::from_millis(200);
    c
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = demo_config();
    let listener = Listener::bind("127.0.0.1:0", config.clone()).await?;
    let server_addr = listener.local_addr().context("listener address")?;
    tokio::spawn(async move {
        while let Ok(s) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = CutProxy::start(
        "127.0.0.1:0".parse()?,
        server_addr,
        ProxyConfig {
            plan: Some(Plan {
                every: (2 << 20)..=(6 << 20),
                silent: 0.2,
                seed: rand::random(),
            }),
            ..ProxyConfig::default()
        },
    )
    .await?;

    say!("rejoin demo: a resumable stream through a link that keeps breaking\n");
    say!("  server  {server_addr}  echoes everything it receives");
    say!(
        "  proxy   {}  cuts the link every 2-6 MiB: resets, and silent drops (no FIN, no RST,\n\
         \x20                         noticed after 1 s of silence)",
        proxy.local_addr()
    );
    say!(
        "  client  streams {} through the proxy and checks every byte that comes back\n",
        mib(args.bytes)
    );

    let started = Instant::now();
    let client = stream::connect(proxy.local_addr().to_string(), config).await?;
    let handle = client.handle();
    let (mut r, mut w) = client.into_split();
    let total = args.bytes;
    let seed: u64 = rand::random();
    let writer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = CHUNK.min(left as usize);
            rng.fill_bytes(&mut buf[..n]);
            w.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        w.flush().await?;
        anyhow::Ok(w)
    });

    let verified = Arc::new(AtomicU64::new(0));
    let proxy = Arc::new(proxy);
    let ticker = {
        let (verified, proxy) = (verified.clone(), proxy.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.tick().await;
            loop {
                tick.tick().await;
                say!(
                    "  [{:>5.1}s] {:>10} echoed and verified, survived {}",
                    started.elapsed().as_secs_f64(),
                    mib(verified.load(Ordering::Relaxed)),
                    cuts(&proxy.stats())
                );
            }
        })
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let mut want = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut checked = 0u64;
    while checked < total {
        let n = CHUNK.min((total - checked) as usize);
        rng.fill_bytes(&mut want[..n]);
        r.read_exact(&mut got[..n])
            .await
            .with_context(|| format!("stream failed after {} verified", mib(checked)))?;
        anyhow::ensure!(got[..n] == want[..n], "corrupted data near byte {checked}");
        checked += n as u64;
        verified.store(checked, Ordering::Relaxed);
    }
    let _w = writer.await??;
    ticker.abort();
    let stats = handle.stats();
    say!(
        "\nverified: {} sent and echoed back intact in {:.1} s through {}; \
         the client resumed {} and resent {}",
        mib(total),
        started.elapsed().as_secs_f64(),
        cuts(&proxy.stats()),
        plural(stats.reconnects, "time", "times"),
        mib(stats.resent),
    );
    Ok(())
}
