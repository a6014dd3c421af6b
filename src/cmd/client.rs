//! `rejoin client`: the end behind NAT, next to the services it publishes.

use std::path::PathBuf;

use anyhow::Context;
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{Client, ClientConfig, ClientEvent, ClientHandle};
use rejoin::tunnel::frame::ServiceKind;

use super::config::{ClientFile, hostname, load, parse_service};
use super::say;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// A TOML config file (see examples/client.toml); flags override it,
    /// and --tcp and --udp add to its services.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The server, HOST:PORT.
    #[arg(long)]
    server: Option<String>,
    /// The token (also REJOIN_TOKEN).
    #[arg(long, env = "REJOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file (its first line); wins over --token.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// This client's name (default: the host name). Give each client its
    /// own: a name held by a live client is refused; a restarted client
    /// takes its old session's place (and public ports).
    #[arg(long)]
    name: Option<String>,
    /// Pin the server's public key (64 hex digits, from `rejoin server
    /// --show-key`): then only that server can complete the handshake, even
    /// if the token leaked.
    #[arg(long, value_name = "HEX")]
    server_key: Option<String>,
    /// Publish a local TCP service: [HOST:]PORT[@PUBLIC_PORT] (a bare port
    /// is on 127.0.0.1). Repeatable.
    #[arg(long, value_name = "[HOST:]PORT[@PUBLIC_PORT]")]
    tcp: Vec<String>,
    /// Publish a local UDP service: [HOST:]PORT[@PUBLIC_PORT]. Repeatable.
    #[arg(long, value_name = "[HOST:]PORT[@PUBLIC_PORT]")]
    udp: Vec<String>,
    /// Give up after this many failed attempts in a row to reach the server
    /// (default: retry forever, with backoff).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    give_up_after: Option<u32>,
    /// Serve metrics, status and a status page here: PORT (on 127.0.0.1)
    /// or IP:PORT. Off unless given (or `admin` in the config file).
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// A token the admin endpoint requires (also REJOIN_ADMIN_TOKEN).
    #[arg(long, env = "REJOIN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

fn settings(args: Args) -> anyhow::Result<ClientConfig> {
    let token = match &args.token_file {
        Some(path) => Some(super::read_token_file(path)?),
        None => args.token.clone(),
    };
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
            let token = token
                .clone()
                .context("give --token TOKEN (or --token-file PATH, or REJOIN_TOKEN)")?;
            ClientConfig::new(server, Token::new(token), hostname())
        }
    };
    if let Some(server) = args.server {
        config.server = server;
    }
    if let Some(key) = &args.server_key {
        config.server_key = Some(super::config::parse_server_key(key)?);
    }
    if let Some(token) = token {
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        if args.config.is_some() {
            tracing::info!("{}", super::TOKEN_REPLACED);
        }
        config.token = Token::new(token);
    }
    if args.give_up_after.is_some() {
        config.give_up_after = args.give_up_after;
    }
    if let Some(name) = args.name {
        config.name = super::config::wire_name(&name).context("--name")?;
    }
    for spec in &args.tcp {
        super::config::add_service(&mut config.services, parse_service(spec, ServiceKind::Tcp)?);
    }
    for spec in &args.udp {
        super::config::add_service(&mut config.services, parse_service(spec, ServiceKind::Udp)?);
    }
    anyhow::ensure!(
        !config.services.is_empty(),
        "nothing to publish: give --tcp or --udp (or services in the config file)"
    );
    Ok(config)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut signals = super::Signals::new()?;
    let started = super::at_start(&mut signals, move || {
        let mut args = args;
        super::token_from_file(&mut args.token_file, &mut args.token)?;
        let config = settings(args.clone())?;
        let admin = admin_file(&args)?;
        Ok((args, config, admin))
    });
    let Some((args, config, admin)) = started.await.map_err(super::no_retry)? else {
        return Ok(());
    };
    if let Some(warning) = super::config::placeholder_warning([&config.token]) {
        tracing::warn!("{warning}");
    }
    let admin_plan = super::admin_plan(
        args.admin.as_deref(),
        args.admin_token.clone(),
        admin.clone(),
    )?;
    let (client, mut events) = Client::new(config.clone());
    let handle = client.handle();
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                ClientEvent::Published {
                    name,
                    kind,
                    local,
                    public,
                    ..
                } => say!(
                    "{}{} {local} published at {public}",
                    label(&name, &local),
                    kind.name()
                ),
                ClientEvent::PublishFailed {
                    name,
                    kind,
                    local,
                    reason,
                    retrying,
                    ..
                } => {
                    let again = if retrying { " (asking again)" } else { "" };
                    say!(
                        "{}{} {local} not published: {reason}{again}",
                        label(&name, &local),
                        kind.name()
                    )
                }
                ClientEvent::Unpublished { name, .. } => say!("{name}: removed"),
                _ => {}
            }
        }
    });
    super::start_admin(admin_plan, super::admin::Source::Client(handle.clone())).await?;
    let running = client.run();
    tokio::pin!(running);
    loop {
        tokio::select! {
            end = &mut running => {
                end?;
                return Ok(());
            }
            signal = signals.next() => match signal {
                super::Signal::Stop => handle.stop(),
                // On a task of its own: the client goes on serving while
                // the files are read (up to 5 s when one is stuck).
                super::Signal::Reload => {
                    tokio::spawn(reload(handle.clone(), config.clone(), args.clone(), admin.clone()));
                }
            },
        }
    }
}

/// `NAME: ` before a service's line, unless its name is its address.
fn label(name: &str, local: &str) -> String {
    if name == local {
        String::new()
    } else {
        format!("{name}: ")
    }
}

/// The admin settings of the config file, if there is one.
fn admin_file(args: &Args) -> anyhow::Result<super::config::AdminFile> {
    let Some(path) = &args.config else {
        return Ok(Default::default());
    };
    let file: ClientFile = load(path)?;
    file.admin(path.parent().unwrap_or(std::path::Path::new(".")))
}

/// SIGHUP: the config file again. Services are added and removed; the
/// server, token, name, key and tuning stay as they were (a restart changes
/// them: a reload that changes one is refused whole). A broken file changes
/// nothing.
async fn reload(
    handle: ClientHandle,
    running: ClientConfig,
    args: Args,
    admin: super::config::AdminFile,
) {
    let file = args.clone();
    let Some(config) = super::reread(args.config.as_deref(), move || {
        super::admin_as_started(&admin, admin_file(&file))?;
        settings(file)
    })
    .await
    else {
        return;
    };
    let fixed = [
        ("server", config.server != running.server),
        ("name", config.name != running.name),
        ("token", config.token != running.token),
        ("server_key", config.server_key != running.server_key),
        (
            "give_up_after",
            config.give_up_after != running.give_up_after,
        ),
        (
            "ping_interval, ping_timeout, max_window, window_budget or inbound_budget",
            config.mux != running.mux,
        ),
        (
            "socket_buffer",
            config.stream.socket_buffer != running.stream.socket_buffer,
        ),
    ];
    if let Some((what, _)) = fixed.iter().find(|(_, changed)| *changed) {
        tracing::error!(
            "reload failed, the old config stays in force: `{what}` cannot change while running (restart the client for that)"
        );
        return;
    }
    let count = config.services.len();
    handle.set_services(config.services);
    tracing::info!(services = count, "config reloaded");
}
