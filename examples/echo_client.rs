//! Sends N random bytes through an echo server, verifies what comes back, and
//! prints one summary line. Exits 0 only if every byte matched.
//!
//! ```sh
//! cargo run --release --example echo_client -- --connect ADDR --bytes N [--v1] [--plain] [--sealed PASSPHRASE]
//! ```

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rejoin::proto::Version;
use rejoin::proto::sealed::Psk;
use rejoin::stream::{self, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// The echo server, HOST:PORT.
    #[arg(long)]
    connect: String,
    /// How many bytes to send.
    #[arg(long)]
    bytes: u64,
    /// Speak snet protocol v1 instead of v2.
    #[arg(long)]
    v1: bool,
    /// Send data in clear (RC4 off).
    #[arg(long)]
    plain: bool,
    /// Use the sealed suite (Noise + AES-GCM, for rejoin peers only) with a
    /// key stretched from this passphrase, which both ends must share.
    #[arg(long, value_name = "PASSPHRASE", conflicts_with_all = ["v1", "plain"])]
    sealed: Option<String>,
}

const CHUNK: usize = 64 << 10;

/// The byte stream for `seed`, chunk by chunk (sender and checker share it).
fn fill(rng: &mut StdRng, buf: &mut [u8]) {
    rng.fill_bytes(buf);
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        // What the session does, on stderr: RUST_LOG=rejoin=debug (or trace).
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    match run(Args::parse()).await {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<String> {
    let config = match &args.sealed {
        Some(passphrase) => Config::sealed(Psk::from_passphrase(passphrase)),
        None => {
            let mut config = Config::default();
            config.version = if args.v1 { Version::V1 } else { Version::V2 };
            config.encrypt = !args.plain;
            config
        }
    };
    let seed: u64 = rand::random();
    let started = Instant::now();
    let stream = stream::connect(args.connect.clone(), config).await?;
    let handle = stream.handle();
    let (mut r, mut w) = stream.into_split();
    let total = args.bytes;
    let writer = tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut buf = vec![0u8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = CHUNK.min(left as usize);
            fill(&mut rng, &mut buf[..n]);
            w.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        w.flush().await?;
        anyhow::Ok(w)
    });
    let mut rng = StdRng::seed_from_u64(seed);
    let mut want = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut checked = 0u64;
    while checked < total {
        let n = CHUNK.min((total - checked) as usize);
        fill(&mut rng, &mut want[..n]);
        r.read_exact(&mut got[..n])
            .await
            .map_err(|e| anyhow::anyhow!("after {checked} of {total} bytes: {e}"))?;
        if let Some(i) = (0..n).find(|&i| got[i] != want[i]) {
            anyhow::bail!("byte {} differs from what was sent", checked + i as u64);
        }
        checked += n as u64;
    }
    let _w = writer.await??;
    let secs = started.elapsed().as_secs_f64();
    let stats = handle.stats();
    Ok(format!(
        "ok: {total} bytes echoed and verified in {secs:.2} s ({:.1} MiB/s), {} reconnects",
        total as f64 / secs / (1 << 20) as f64,
        stats.reconnects
    ))
}
