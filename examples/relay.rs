//! A TCP relay that only moves bytes: each connection it accepts is joined
//! to a new connection to `--to`, and bytes are copied both ways with
//! 256 KiB buffers, nothing else. `benches/compare.sh` chains two of them
//! (visitor → relay → relay → service) as the fastest any two-process tunnel
//! could be on the machine: no encryption, no framing, no multiplexing.
//!
//! ```sh
//! cargo run --release --example relay -- --listen 127.0.0.1:0 --to 127.0.0.1:5201
//! ```
//!
//! The first line on stdout is `relaying HOST:PORT to HOST:PORT`.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::net::{TcpListener, TcpStream};

/// Each direction's copy buffer.
const BUFFER: usize = 256 * 1024;

#[derive(Parser)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long)]
    listen: SocketAddr,
    /// Where to relay connections.
    #[arg(long)]
    to: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    println!("relaying {bound} to {}", args.to);
    std::io::stdout().flush()?;
    loop {
        let (mut inbound, from) = listener.accept().await?;
        let to = args.to;
        tokio::spawn(async move {
            let result = async {
                let mut outbound = TcpStream::connect(to).await?;
                inbound.set_nodelay(true)?;
                outbound.set_nodelay(true)?;
                tokio::io::copy_bidirectional_with_sizes(
                    &mut inbound,
                    &mut outbound,
                    BUFFER,
                    BUFFER,
                )
                .await
            }
            .await;
            if let Err(e) = result {
                eprintln!("{from}: {e}");
            }
        });
    }
}
