//! `rejoin server`: the public end of the tunnel.

use std::path::PathBuf;

use anyhow::Context;
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::server::{Server, ServerConfig};

use super::config::{ServerFile, Span, load, parse_range};
use super::say;

#[derive(clap::Args)]
pub struct Args {
    /// A TOML config file (see examples/server.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where clients connect, HOST:PORT.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The token clients log in with (also REJOIN_TOKEN).
    #[arg(long, env = "REJOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where public ports are bound (default: the listen address's IP).
    #[arg(long)]
    bind: Option<std::net::IpAddr>,
    /// Public ports clients may ask for, like 10000-10999,8080.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<String>,
    /// How long a disconnected client's session is kept, like 60s or 5m.
    #[arg(long)]
    keep: Option<Span>,
}

fn settings(args: Args) -> anyhow::Result<ServerConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let file: ServerFile = load(path)?;
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            file.into_config(base)
                .with_context(|| format!("in {}", path.display()))?
        }
        None => {
            let listen = args
                .listen
                .context("give --listen HOST:PORT (or --config FILE)")?;
            ServerConfig::new(listen, None)
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(token) = args.token {
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        config.token = Some(Token::new(token));
    }
    if config.token.is_none() && config.clients.is_empty() {
        anyhow::bail!("give --token TOKEN (or REJOIN_TOKEN, or a config file with tokens)");
    }
    if let Some(bind) = args.bind {
        config.bind = Some(bind);
    }
    if !args.ports.is_empty() {
        config.ports = args
            .ports
            .iter()
            .map(|r| parse_range(r))
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(keep) = args.keep {
        config.stream.reconnect_wait = keep.0;
    }
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = settings(args)?;
    let server = Server::bind(config.clone())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    say!("listening on {}", server.local_addr());
    super::shutdown_signal().await;
    tracing::info!("shutting down: saying goodbye to every client");
    server.shutdown("server shutting down").await;
    Ok(())
}
