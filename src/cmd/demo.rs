//! `rejoin demo`: everything on loopback, nothing to install.
//!
//! 1. The stream: a server, a client and a link-cutting proxy between them;
//!    data streams through while the proxy resets and silently drops the link,
//!    and every byte is checked.
//! 2. The tunnel: a local service, a tunnel server and client with the
//!    link-cutting proxy between them, and a visitor whose one TCP connection
//!    stays up while the link is cut again and again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rejoin::chaos::{CutProxy, Plan, ProxyConfig, ProxyStats};
use rejoin::stream::{self, Config, Listener};
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{Client, ClientConfig, ClientEvent, ServiceConfig};
use rejoin::tunnel::frame::ServiceKind;
use rejoin::tunnel::server::{Server, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::say;

#[derive(clap::Args)]
pub struct Args {
    /// Bytes to stream through the breaking link, in each part.
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
fn quick(c: &mut Config) {
    c.idle_timeout = Some(Duration::from_secs(1));
    c.user_timeout = Some(Duration::from_secs(2));
    c.redial.initial = Duration::from_millis(20);
    c.redial.max = Duration::from_millis(200);
}

/// A proxy in front of `target` that cuts every 2-6 MiB, a fifth silently.
async fn breaking_link(target: std::net::SocketAddr) -> anyhow::Result<Arc<CutProxy>> {
    let proxy = CutProxy::start(
        "127.0.0.1:0".parse()?,
        target,
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
    Ok(Arc::new(proxy))
}

/// Sends `total` random bytes through an echo over `io`, checks every byte
/// that comes back, and prints progress with the proxy's cut count.
async fn echo_through<T>(
    io: T,
    total: u64,
    what: &str,
    proxy: &Arc<CutProxy>,
) -> anyhow::Result<f64>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let started = Instant::now();
    let (mut r, mut w) = tokio::io::split(io);
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
    let ticker = {
        let (verified, proxy, what) = (verified.clone(), proxy.clone(), what.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.tick().await;
            loop {
                tick.tick().await;
                say!(
                    "  [{:>5.1}s] {:>10} {what}, survived {}",
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
    let outcome = async {
        while checked < total {
            let n = CHUNK.min((total - checked) as usize);
            rng.fill_bytes(&mut want[..n]);
            r.read_exact(&mut got[..n])
                .await
                .with_context(|| format!("failed after {} verified", mib(checked)))?;
            anyhow::ensure!(got[..n] == want[..n], "corrupted data near byte {checked}");
            checked += n as u64;
            verified.store(checked, Ordering::Relaxed);
        }
        writer.await??;
        anyhow::Ok(())
    }
    .await;
    ticker.abort();
    outcome?;
    Ok(started.elapsed().as_secs_f64())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    stream_part(args.bytes).await?;
    say!("");
    tunnel_part(args.bytes).await
}

async fn stream_part(total: u64) -> anyhow::Result<()> {
    let mut config = Config::default();
    quick(&mut config);
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
    let proxy = breaking_link(server_addr).await?;

    say!("rejoin demo, part 1: a resumable stream through a link that keeps breaking\n");
    say!("  server  {server_addr}  echoes everything it receives");
    say!(
        "  proxy   {}  cuts the link every 2-6 MiB: resets, and silent drops (no FIN, no RST,\n\
         \x20                         noticed after 1 s of silence)",
        proxy.local_addr()
    );
    say!(
        "  client  streams {} through the proxy and checks every byte that comes back\n",
        mib(total)
    );
    let client = stream::connect(proxy.local_addr().to_string(), config).await?;
    let handle = client.handle();
    let secs = echo_through(client, total, "echoed and verified", &proxy).await?;
    let stats = handle.stats();
    say!(
        "\nverified: {} sent and echoed back intact in {secs:.1} s through {}; \
         the client resumed {} and resent {}",
        mib(total),
        cuts(&proxy.stats()),
        plural(stats.reconnects, "time", "times"),
        mib(stats.resent),
    );
    Ok(())
}

async fn tunnel_part(total: u64) -> anyhow::Result<()> {
    // The local service behind "NAT": an echo.
    let service = TcpListener::bind("127.0.0.1:0").await?;
    let local = service.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = service.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let token = Token::generate();
    let mut server_config = ServerConfig::new("127.0.0.1:0".parse()?, Some(token.clone()));
    quick(&mut server_config.stream);
    // As `rejoin server` runs: the link on one of the server's threads.
    server_config.stream.threads = super::config::link_threads();
    server_config.mux.ping_interval = Duration::from_millis(300);
    server_config.mux.ping_timeout = Duration::from_secs(1);
    let server = Server::bind(server_config).await?;
    let proxy = breaking_link(server.local_addr()).await?;
    let mut client_config = ClientConfig::new(proxy.local_addr().to_string(), token, "demo");
    quick(&mut client_config.stream);
    client_config.mux.ping_interval = Duration::from_millis(300);
    client_config.mux.ping_timeout = Duration::from_secs(1);
    client_config.services.push(ServiceConfig {
        name: "echo".into(),
        kind: ServiceKind::Tcp,
        local: local.clone(),
        port: 0,
    });
    let (client, mut events) = Client::new(client_config);
    let control = client.handle();
    tokio::spawn(async move { client.run().await });
    let public = loop {
        match events.recv().await {
            Some(ClientEvent::Published { public, .. }) => break public,
            Some(ClientEvent::PublishFailed { reason, .. }) => {
                anyhow::bail!("not published: {reason}")
            }
            Some(_) => {}
            None => anyhow::bail!("the tunnel client stopped"),
        }
    };

    say!("rejoin demo, part 2: a tunnel whose visitor connections survive the link\n");
    say!("  service {local}  an echo, behind \"NAT\"");
    say!(
        "  server  {}  the public end; the service is published at {public}",
        server.local_addr()
    );
    say!(
        "  proxy   {}  between tunnel client and server, cutting the link every 2-6 MiB",
        proxy.local_addr()
    );
    say!(
        "  visitor one TCP connection to {public}, streaming {} and checking the echo\n",
        mib(total)
    );
    let visitor = TcpStream::connect(&public).await?;
    let secs = echo_through(visitor, total, "through the tunnel", &proxy).await?;
    let link = control.link_stats().unwrap_or_default();
    say!(
        "\nverified: the visitor's one TCP connection carried {} each way, intact, in {secs:.1} s; \
         it never closed while the link behind it went through {} and resumed {}",
        mib(total),
        cuts(&proxy.stats()),
        plural(link.reconnects, "time", "times"),
    );
    Ok(())
}
