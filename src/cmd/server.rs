//! `rejoin server`: the public end of the tunnel.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rejoin::proto::sealed::{StaticKey, hex, parse_key_hex};
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::server::{Server, ServerConfig};

use super::config::{ServerFile, Span, load, parse_range};
use super::say;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// A TOML config file (see examples/server.toml); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where clients connect, IP:PORT (an address, not a host name).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// The token clients log in with (also REJOIN_TOKEN).
    #[arg(long, env = "REJOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from this file (its first line); wins over --token.
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Where public ports are bound (default: the listen address's IP).
    #[arg(long)]
    bind: Option<std::net::IpAddr>,
    /// Public ports clients may ask for, like 10000-10999,8080.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<String>,
    /// How long a disconnected client's session is kept, like 60s or 5m.
    #[arg(long)]
    keep: Option<Span>,
    /// Failed logins (a wrong token, an unknown name, a forged reconnect)
    /// one address may make a minute; beyond it its connections are closed
    /// at once until one comes back. 0: no limit. Default 10.
    #[arg(long, value_name = "N")]
    login_failures_per_minute: Option<u32>,
    /// Where the server's static key is kept (created if missing). Default:
    /// next to the config file (server.toml → server.key); without a config
    /// file the key lasts only this run unless this is given.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// Print the server's public key (for `rejoin client --server-key`) and exit.
    #[arg(long)]
    show_key: bool,
    /// Serve metrics, status and a status page here: PORT (on 127.0.0.1)
    /// or IP:PORT. Off unless given (or `admin` in the config file).
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// A token the admin endpoint requires (also REJOIN_ADMIN_TOKEN).
    #[arg(long, env = "REJOIN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

/// Reads the static key at `path`, or creates it there (readable by the
/// owner only) if `create`; a reload never creates one (a key that went
/// missing is an error, not a new identity for the next start).
fn load_or_create_key(path: &Path, create: bool) -> anyhow::Result<StaticKey> {
    match super::read_small(path, super::SMALL_FILE) {
        Ok(text) => {
            let private = parse_key_hex(&text)
                .with_context(|| format!("{}: not a server key (64 hex digits)", path.display()))?;
            Ok(StaticKey::from_private(private))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = StaticKey::generate().context("cannot generate a server key")?;
            write_new_key(path, &key)
                .with_context(|| format!("cannot create the server key {}", path.display()))?;
            tracing::info!(path = %path.display(), "created a new server key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read the server key {}", path.display())),
    }
}

/// Writes `key` to a new file at `path` (readable by the owner only), whole
/// or not at all: it is written and synced under a temporary name, then
/// linked into place, so a process stopped half-way leaves no empty key
/// behind, and a file already there is never replaced.
fn write_new_key(path: &Path, key: &StaticKey) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    let temp = path.with_file_name(name);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        writeln!(file, "{}", hex(key.private()))?;
        file.sync_all()?;
        std::fs::hard_link(&temp, path)
    })();
    let _ = std::fs::remove_file(&temp);
    written
}

/// The settings from the flags and the config file. `starting`: the key
/// file is created if missing (at a reload it must still be there).
fn settings(args: Args, starting: bool) -> anyhow::Result<ServerConfig> {
    let mut key_file = args.key_file.clone();
    let mut config = match &args.config {
        Some(path) => {
            let file: ServerFile = load(path)?;
            let base = path.parent().unwrap_or(std::path::Path::new("."));
            key_file.get_or_insert_with(|| file.key_file(base, path));
            file.into_config(base)
                .with_context(|| format!("in {}", path.display()))?
        }
        None => {
            let listen = args
                .listen
                .context("give --listen IP:PORT (or --config FILE)")?;
            let mut config = ServerConfig::new(listen, None);
            config.stream.threads = super::config::link_threads();
            config
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let token = match &args.token_file {
        Some(path) => Some(super::read_token_file(path)?),
        None => args.token,
    };
    if let Some(token) = token {
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        if config.token.is_some() {
            tracing::info!("{}", super::TOKEN_REPLACED);
        }
        config.token = Some(Token::new(token));
    }
    if config.token.is_none() && config.clients.is_empty() {
        anyhow::bail!(
            "give --token TOKEN (or --token-file PATH, or REJOIN_TOKEN, or a config file with tokens)"
        );
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
    if let Some(n) = args.login_failures_per_minute {
        config.stream.auth_failures_per_minute = n;
    }
    config.static_key = Some(match &key_file {
        Some(path) => load_or_create_key(path, starting)?,
        None => StaticKey::generate().context("cannot generate a server key")?,
    });
    Ok(config)
}

/// `--show-key`: the public half of the key the server would use.
fn show_key(args: &Args) -> anyhow::Result<()> {
    let path = match (&args.key_file, &args.config) {
        (Some(path), _) => path.clone(),
        (None, Some(config)) => {
            let file: ServerFile = load(config)?;
            let base = config.parent().unwrap_or(Path::new("."));
            file.key_file(base, config)
        }
        (None, None) => {
            return Err(super::no_retry(anyhow::anyhow!(
                "--show-key needs --key-file PATH or --config FILE"
            )));
        }
    };
    let key = load_or_create_key(&path, true)?;
    say!("{}", hex(key.public()));
    Ok(())
}

/// The admin settings of the config file, if there is one.
fn admin_file(args: &Args) -> anyhow::Result<super::config::AdminFile> {
    let Some(path) = &args.config else {
        return Ok(Default::default());
    };
    let file: ServerFile = load(path)?;
    file.admin(path.parent().unwrap_or(Path::new(".")))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.show_key {
        return show_key(&args);
    }
    let mut signals = super::Signals::new()?;
    let persistent = args.key_file.is_some() || args.config.is_some();
    let started = super::at_start(&mut signals, move || {
        let mut args = args;
        super::token_from_file(&mut args.token_file, &mut args.token)?;
        let config = settings(args.clone(), true)?;
        let admin = admin_file(&args)?;
        Ok((args, config, admin))
    });
    let Some((args, config, admin)) = started.await.map_err(super::no_retry)? else {
        return Ok(());
    };
    if let Some(warning) =
        super::config::placeholder_warning(config.token.iter().chain(config.clients.values()))
    {
        tracing::warn!("{warning}");
    }
    let admin_plan = super::admin_plan(
        args.admin.as_deref(),
        args.admin_token.clone(),
        admin.clone(),
    )?;
    if let Some(plan) = &admin_plan {
        plan.apart_from(config.listen)?;
    }
    let server = Server::bind(config.clone())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let server = std::sync::Arc::new(server);
    say!("listening on {}", server.local_addr());
    if let Some(key) = &config.static_key {
        let lasting = if persistent {
            ""
        } else {
            " (this run only: give --key-file to keep it)"
        };
        say!("server key {}{lasting}", hex(key.public()));
    }
    super::start_admin(admin_plan, super::admin::Source::Server(server.clone())).await?;
    loop {
        match signals.next().await {
            super::Signal::Stop => break,
            super::Signal::Reload => reload(&server, &args, &admin).await,
        }
    }
    tracing::info!("shutting down: saying goodbye to every client");
    server.shutdown("server shutting down").await;
    Ok(())
}

/// SIGHUP: the config file again; a broken one changes nothing.
async fn reload(server: &Server, args: &Args, admin: &super::config::AdminFile) {
    let (file, admin) = (args.clone(), admin.clone());
    let Some(config) = super::reread(args.config.as_deref(), move || {
        super::admin_as_started(&admin, admin_file(&file))?;
        settings(file, false)
    })
    .await
    else {
        return;
    };
    match server.reload(config).await {
        Ok(revoked) => tracing::info!(?revoked, "config reloaded"),
        Err(e) => tracing::error!("reload failed, the old config stays in force: {e}"),
    }
}
