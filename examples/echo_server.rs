//! Echoes every byte of every session until killed.
//!
//! ```sh
//! cargo run --release --example echo_server -- --listen 127.0.0.1:0 [--v1] [--plain] [--sealed PASSPHRASE]
//! ```
//!
//! The first line on stdout is `listening on HOST:PORT`.

use std::io::Write;

use clap::Parser;
use rejoin::proto::Version;
use rejoin::proto::sealed::Psk;
use rejoin::stream::{Config, Listener};
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long)]
    listen: String,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Ok(filter) = std::env::var("RUST_LOG") {
        // What the session does, on stderr: RUST_LOG=rejoin=debug (or trace).
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let config = match &args.sealed {
        Some(passphrase) => Config::sealed(Psk::from_passphrase(passphrase)),
        None => {
            let mut config = Config::default();
            config.version = if args.v1 { Version::V1 } else { Version::V2 };
            config.encrypt = !args.plain;
            config
        }
    };
    let listener = Listener::bind(&args.listen, config).await?;
    let addr = listener
        .local_addr()
        .ok_or_else(|| anyhow::anyhow!("listener has no address"))?;
    println!("listening on {addr}");
    std::io::stdout().flush()?;
    loop {
        let stream = listener.accept().await?;
        tokio::spawn(async move {
            let (mut r, mut w) = stream.into_split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
    }
}
