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
    /// How log lines look: `text` (coloured only on a terminal, and never
    /// with NO_COLOR set) or `json` (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
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
    /// Check a server or client config file without running it (exit 0 if
    /// valid, 1 with the reason if not; 78 for a flag it does not take).
    Check(cmd::check::Args),
    /// Show what a running server or client reports on its admin endpoint.
    Status(cmd::status::Args),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr; `--log` wins over `RUST_LOG`, which wins over `default`.
fn init_logs(flag: Option<&str>, format: LogFormat, default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match flag {
        Some(f) => EnvFilter::new(f),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            logs.with_ansi(colour).init()
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version: printed, exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        // A flag that cannot work is a config error like a bad config
        // file's (the units do not restart on it), not clap's usual 2.
        Err(e) => {
            let _ = e.print();
            return std::process::ExitCode::from(cmd::EXIT_NO_RETRY);
        }
    };
    // `rejoin check` says whether a file is valid: 1 for any mistake.
    let checking = matches!(cli.command, Command::Check(_));
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let status = if checking { 1 } else { cmd::exit_status(&e) };
            std::process::ExitCode::from(status)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The client's traffic all goes through its one link, whose driver and
    // mux are a task each: on one thread, nothing is handed between threads
    // (docs/benchmarks.md), unless TOKIO_WORKER_THREADS asks for a runtime
    // of that many. The server runs each link on one of its `threads`, and
    // the rest on a runtime with a thread per CPU.
    // (tokio panics on a value that is not a number above 0: said here.)
    let threads = std::env::var_os("TOKIO_WORKER_THREADS");
    if let Some(v) = &threads
        && v.to_str()
            .and_then(|v| v.parse::<usize>().ok())
            .is_none_or(|n| n == 0)
    {
        anyhow::bail!("TOKIO_WORKER_THREADS must be a whole number above 0 (or unset), not {v:?}");
    }
    let one_thread = matches!(cli.command, Command::Client(_)) && threads.is_none();
    let runtime = if one_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Runtime::new()?
    };
    match cli.command {
        Command::Demo(args) => {
            init_logs(cli.log.as_deref(), cli.log_format, "warn");
            runtime.block_on(cmd::demo::run(args))
        }
        Command::Server(args) => {
            init_logs(cli.log.as_deref(), cli.log_format, "info");
            runtime.block_on(cmd::server::run(args))
        }
        Command::Client(args) => {
            init_logs(cli.log.as_deref(), cli.log_format, "info");
            runtime.block_on(cmd::client::run(args))
        }
        Command::Check(args) => cmd::check::run(args),
        Command::Status(args) => runtime.block_on(cmd::status::run(args)),
        Command::Token => {
            cmd::say!("{}", rejoin::tunnel::auth::Token::generate().expose());
            Ok(())
        }
    }
}
