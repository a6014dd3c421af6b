//! A TCP proxy that resets every connection through it after a random number
//! of forwarded bytes: put it between any two snet or rejoin peers to see them
//! resume (see docs/interop.md).
//!
//! ```sh
//! cargo run --release --example cut_proxy -- --listen 127.0.0.1:9001 --to 127.0.0.1:9000 \
//!     --every 1230000-1350000
//! ```
//!
//! The first line on stdout is `proxying HOST:PORT to HOST:PORT`; then one line
//! a second while cuts happen, with the running totals.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rejoin::chaos::{CutProxy, Plan, ProxyConfig};

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// Where to forward connections.
    #[arg(long)]
    to: SocketAddr,
    /// Forwarded bytes (both directions together) between cuts, as MIN-MAX
    /// or one number. An echo forwards each byte twice.
    #[arg(long, default_value = "1230000-1350000")]
    every: String,
    /// Share of cuts that stop forwarding silently instead of resetting.
    #[arg(long, default_value_t = 0.0)]
    silent: f64,
    /// Seed of the random draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn range(s: &str) -> anyhow::Result<std::ops::RangeInclusive<u64>> {
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let lo: u64 = lo.trim().parse().context("--every takes MIN-MAX bytes")?;
    let hi: u64 = hi.trim().parse().context("--every takes MIN-MAX bytes")?;
    anyhow::ensure!(0 < lo && lo <= hi, "--every needs 0 < MIN <= MAX, got {s}");
    Ok(lo..=hi)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.silent),
        "--silent is a share from 0 to 1"
    );
    let plan = Plan {
        every: range(&args.every)?,
        silent: args.silent,
        seed: args.seed,
    };
    let config = ProxyConfig {
        plan: Some(plan),
        ..ProxyConfig::default()
    };
    let proxy = CutProxy::start(args.listen, args.to, config)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("proxying {} to {}", proxy.local_addr(), args.to);
    std::io::stdout().flush()?;
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = proxy.stats();
        if stats.cuts() != last {
            last = stats.cuts();
            println!(
                "{} connections, {} bytes forwarded, {} resets, {} silent drops",
                stats.connections, stats.forwarded, stats.resets, stats.silent_drops
            );
            std::io::stdout().flush()?;
        }
    }
}
