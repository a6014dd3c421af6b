//! `rejoin client`: the end behind NAT, next to the services it publishes.

use std::path::PathBuf;

use anyhow::Context;
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{Client, ClientConfig, ClientEvent};
use rejoin::tunnel::frame::ServiceKind;

use super::config::{ClientFile, hostname, load, parse_service};
use super::say;

#[derive(clap::Args)]
pub struct Args {
    /// A TOML config file (see examples/client.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The server, HOST:PORT.
    #[arg(long)]
    server: Option<String>,
    /// The token (also REJOIN_TOKEN).
    #[arg(long, env = "REJOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// This client's name (default: the host name). A new session with the
    /// same name replaces the old one.
    #[arg(long)]
    name: Option<String>,
    /// Pin the server's public key (64 hex digits, from `rejoin server
    /// --show-key`): then only that server can complete the handshake, even
    /// if the token leaked.
    #[arg(long, value_name = "HEX")]
    server_key: Option<String>,
    /// Publish a local TCP service: LOCAL_ADDR[@PUBLIC_PORT]. Repeatable.
    #[arg(long, value_name = "LOCAL_ADDR[@PUBLIC_PORT]")]
    tcp: Vec<String>,
    /// Publish a local UDP service: LOCAL_ADDR[@PUBLIC_PORT]. Repeatable.
    #[arg(long, value_name = "LOCAL_ADDR[@PUBLIC_PORT]")]
    udp: Vec<String>,
}

fn settings(args: Args) -> anyhow::Result<ClientConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let file: ClientFile = load(path)?;
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            file.into_config(base)
                .with_context(|| format!("in {}", path.display()))?
        }
        None => {
            let server = args
                .server
                .clone()
                .context("give --server HOST:PORT (or --config FILE)")?;
            let token = args
                .token
                .clone()
                .context("give --token TOKEN (or REJOIN_TOKEN)")?;
            ClientConfig::new(server, Token::new(token), hostname())
        }
    };
    if let Some(server) = args.server {
        config.server = server;
    }
    if let Some(key) = &args.server_key {
        config.server_key = Some(super::config::parse_server_key(key)?);
    }
    if let Some(token) = args.token {
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        config.token = Token::new(token);
    }
    if let Some(name) = args.name {
        config.name = name;
    }
    for spec in &args.tcp {
        config.services.push(parse_service(spec, ServiceKind::Tcp)?);
    }
    for spec in &args.udp {
        config.services.push(parse_service(spec, ServiceKind::Udp)?);
    }
    anyhow::ensure!(
        !config.services.is_empty(),
        "nothing to publish: give --tcp or --udp (or services in the config file)"
    );
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = settings(args)?;
    let (client, mut events) = Client::new(config);
    let stop = client.handle();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                ClientEvent::Published {
                    kind,
                    local,
                    public,
                    ..
                } => say!("{} {local} published at {public}", kind.name()),
                ClientEvent::PublishFailed {
                    kind,
                    local,
                    reason,
                    ..
                } => say!("{} {local} not published: {reason}", kind.name()),
                _ => {}
            }
        }
    });
    tokio::spawn(async move {
        super::shutdown_signal().await;
        stop.stop();
    });
    client.run().await?;
    Ok(())
}
