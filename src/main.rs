//! The `rejoin` command: the demo, and (later) the tunnel's server and client.
#![forbid(unsafe_code)]

mod cmd;

// Measured faster than the system allocator on the tunnel's data path
// (docs/benchmarks.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the tunnel server on a public host.
    Server(cmd::server::Args),
    /// Run the tunnel client behind NAT, publishing local services.
    Client(cmd::client::Args),
    /// Print a fresh random token.
    Token,
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

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Demo(args) => {
            init_logs(cli.log.as_deref(), "warn");
            runtime.block_on(cmd::demo::run(args))
        }
        Command::Server(args) => {
            init_logs(cli.log.as_deref(), "info");
            runtime.block_on(cmd::server::run(args))
        }
        Command::Client(args) => {
            init_logs(cli.log.as_deref(), "info");
            runtime.block_on(cmd::client::run(args))
        }
        Command::Token => {
            cmd::say!("{}", rejoin::tunnel::auth::Token::generate().expose());
            Ok(())
        }
    }
}
