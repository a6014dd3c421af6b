//! The `rejoin` command: the demo, and (later) the tunnel's server and client.
#![forbid(unsafe_code)]

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rejoin",
    version,
    about = "Resumable encrypted streams and a reverse tunnel that survives link drops"
)]
struct Cli {
    /// Log filter (e.g. `info`, `rejoin=debug`); `RUST_LOG` works too.
    #[arg(long, global = true)]
    log: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a self-contained demo on loopback: data keeps flowing while the
    /// link is cut again and again.
    Demo(cmd::demo::Args),
}

/// Logs to stderr; `--log` wins over `RUST_LOG`, which wins over `default`.
fn init_logs(flag: Option<&str>, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = match flag {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Demo(args) => {
            init_logs(cli.log.as_deref(), "warn");
            runtime.block_on(cmd::demo::run(args))
        }
    }
}
