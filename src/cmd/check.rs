//! `rejoin check FILE`: validates a server or client config without
//! running it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::config::{ClientFile, ConfigFile, ServerFile, load, placeholder_warning};
use super::say;

#[derive(clap::Args)]
pub struct Args {
    /// The config file: a server's (it has `listen`) or a client's (it has
    /// `server`).
    file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = &args.file;
    let text = super::read_small(path, super::CONFIG_FILE)
        .with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let within = || format!("in {}", path.display());
    match (
        table.contains_key(ServerFile::MARK),
        table.contains_key(ClientFile::MARK),
    ) {
        (true, false) => {
            let file: ServerFile = load(path)?;
            let admin = file.admin(base).with_context(within)?;
            let key_file = file.key_file(base, path);
            let config = file.into_config(base).with_context(within)?;
            if let Some(plan) = super::admin_plan(None, None, admin).with_context(within)? {
                plan.apart_from(config.listen).with_context(within)?;
            }
            let key = match super::read_small(&key_file, super::SMALL_FILE) {
                Ok(text) => {
                    rejoin::proto::sealed::parse_key_hex(&text).with_context(|| {
                        format!("{}: not a server key (64 hex digits)", key_file.display())
                    })?;
                    format!("key {}", key_file.display())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if key_file.symlink_metadata().is_ok() {
                        // The start never replaces what is there.
                        anyhow::bail!(
                            "{}: a link to a file that does not exist; the start will not create a key through it",
                            key_file.display()
                        );
                    }
                    // The start creates it, so its directory must be there.
                    let dir = match key_file.parent() {
                        Some(d) if !d.as_os_str().is_empty() => d,
                        _ => std::path::Path::new("."),
                    };
                    if !dir.is_dir() {
                        anyhow::bail!(
                            "{}: the key file cannot be created: {} does not exist or is not a directory",
                            key_file.display(),
                            dir.display()
                        );
                    }
                    can_create_in(dir)
                        .with_context(|| format!("key file {}", key_file.display()))?;
                    format!("key {} (created on first start)", key_file.display())
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", key_file.display()));
                }
            };
            say!(
                "{}: a valid server config (listen {}, {} per-client token(s), {}shared token, {key})",
                path.display(),
                config.listen,
                config.clients.len(),
                if config.token.is_some() { "" } else { "no " },
            );
            if let Some(warning) =
                placeholder_warning(config.token.iter().chain(config.clients.values()))
            {
                say!("warning: {warning}");
            }
        }
        (false, true) => {
            let file: ClientFile = load(path)?;
            file.admin(base).with_context(within)?;
            let config = file.into_config(base).with_context(within)?;
            if config.services.is_empty() {
                bail!("{}: no [[service]] to publish", path.display());
            }
            say!(
                "{}: a valid client config (server {}, name {:?}, {} service(s))",
                path.display(),
                config.server,
                config.name,
                config.services.len(),
            );
            if let Some(warning) = placeholder_warning([&config.token]) {
                say!("warning: {warning}");
            }
        }
        (true, true) => bail!(
            "{}: has both `listen` (a server's) and `server` (a client's): which is it?",
            path.display()
        ),
        (false, false) => bail!(
            "{}: neither a server config (no `listen`) nor a client config (no `server`)",
            path.display()
        ),
    }
    Ok(())
}

/// Whether a key can be created in `dir` the way the start creates one: a
/// new file, then a hard link to it under the key's name (so a file system
/// without hard links shows here too). Both are removed again.
fn can_create_in(dir: &Path) -> anyhow::Result<()> {
    let probe = dir.join(format!(".rejoin-check.{}.tmp", std::process::id()));
    let linked = dir.join(format!(".rejoin-check.{}.key", std::process::id()));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map(drop)
        .and_then(|()| std::fs::hard_link(&probe, &linked));
    let removed = [&linked, &probe].map(|p| match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err((p.clone(), e)),
        _ => Ok(()),
    });
    if let Err(e) = made {
        let who = match e.kind() {
            std::io::ErrorKind::PermissionDenied => " by this user",
            _ => "",
        };
        return Err(e).with_context(|| format!("cannot be created in {}{who}", dir.display()));
    }
    for r in removed {
        if let Err((p, e)) = r {
            return Err(e).with_context(|| format!("could not remove the probe {}", p.display()));
        }
    }
    Ok(())
}
