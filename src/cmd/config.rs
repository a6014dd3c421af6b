//! Config files (TOML) and one-line flags for `rejoin server` and
//! `rejoin client`, turned into the library's settings.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rejoin::stream::MAX_THREADS;
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{ClientConfig, ServiceConfig};
use rejoin::tunnel::frame::{INITIAL_WINDOW, MAX_NAME, ServiceKind, unsafe_char};
use rejoin::tunnel::mux::MuxConfig;
use rejoin::tunnel::server::ServerConfig;
use serde::Deserialize;

/// The token the shipped example configs carry, to be replaced.
const PLACEHOLDER_TOKEN: &str = "change-me-to-the-output-of-rejoin-token";

/// What to say when a token is still the examples' placeholder, if one is.
pub fn placeholder_warning<'a>(
    tokens: impl IntoIterator<Item = &'a rejoin::tunnel::auth::Token>,
) -> Option<&'static str> {
    tokens
        .into_iter()
        .any(|t| t.expose() == PLACEHOLDER_TOKEN)
        .then_some(
            "a token is still the example's placeholder, which anyone can read: put the output of `rejoin token` in its place",
        )
}

/// A duration written as `500ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

/// `text` split into its leading number and the unit after it, or the
/// error `example` explains.
fn number_and_unit<'a>(text: &'a str, example: &str) -> Result<(u64, &'a str), String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n = digits
        .parse()
        .map_err(|_| format!("{text:?} is not {example}"))?;
    Ok((n, unit.trim()))
}

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (n, unit) = number_and_unit(s, "a duration like 30s, 500ms, 5m or 1h")?;
        let seconds = |scale: u64| {
            n.checked_mul(scale)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("{s:?} is too long"))
        };
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => seconds(60)?,
            "h" => seconds(3600)?,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
                ));
            }
        };
        if d > rejoin::stream::MAX_DURATION {
            return Err(format!("{s:?} is longer than a year"));
        }
        Ok(Span(d))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber {
            expecting: "a duration in quotes, like \"30s\", \"500ms\", \"5m\" or \"1h\"",
            number: |n| {
                Err(format!(
                    "{n} has no unit: write a duration in quotes, like \"{n}s\" (units: ms, s, m, h)"
                ))
            },
        })
    }
}

/// Deserializes a value written as text (parsed with `FromStr`) or as a
/// bare number (given to `number`, which may refuse it with advice).
struct TextOrNumber<T> {
    expecting: &'static str,
    number: fn(i128) -> Result<T, String>,
}

impl<T: std::str::FromStr<Err = String>> serde::de::Visitor<'_> for TextOrNumber<T> {
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
        s.parse().map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<T, E> {
        (self.number)(n.into()).map_err(E::custom)
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<T, E> {
        (self.number)(n.into()).map_err(E::custom)
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<T, E> {
        Err(E::custom(format!("{n}: {}", self.expecting)))
    }
}

/// A size in bytes, written as a number of bytes or with a unit: `512KiB`,
/// `16MiB`, `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (n, unit) = number_and_unit(s, "a size like 16MiB, 512KiB or 1048576")?;
        let scale: u64 = match unit {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {s:?} (use B, KiB, MiB or GiB)"
                ));
            }
        };
        n.checked_mul(scale)
            .map(Size)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextOrNumber {
            expecting: "a size: bytes, or in quotes with a unit, like \"16MiB\"",
            number: |n| {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| format!("{n} is not a size (bytes, from 0)"))
            },
        })
    }
}

/// The link's tuning knobs, in both files.
struct Tuning {
    ping_interval: Option<Span>,
    ping_timeout: Option<Span>,
    max_window: Option<Size>,
    window_budget: Option<Size>,
    inbound_budget: Option<Size>,
    socket_buffer: Option<Size>,
}

impl Tuning {
    fn apply(
        &self,
        mux: &mut MuxConfig,
        stream: &mut rejoin::stream::Config,
    ) -> anyhow::Result<()> {
        if let Some(Size(v)) = self.socket_buffer {
            if !(4096..=1 << 30).contains(&v) {
                bail!("socket_buffer must be from 4KiB to 1GiB (leave it out for the default)");
            }
            stream.socket_buffer = Some(v as usize);
        }
        if let Some(v) = self.ping_interval {
            mux.ping_interval = v.0;
        }
        if let Some(v) = self.ping_timeout {
            mux.ping_timeout = v.0;
        }
        mux.validate()?;
        if let Some(Size(v)) = self.max_window {
            if !(u64::from(INITIAL_WINDOW)..=1 << 30).contains(&v) {
                bail!("max_window must be from 1MiB to 1GiB");
            }
            mux.max_window = v as u32;
        }
        if let Some(Size(v)) = self.window_budget {
            mux.window_budget = v;
        }
        if let Some(Size(v)) = self.inbound_budget {
            if v < u64::from(INITIAL_WINDOW) {
                bail!("inbound_budget must be at least 1MiB (one stream's initial window)");
            }
            mux.inbound_budget = v;
        }
        Ok(())
    }
}

/// The admin endpoint's settings from a file.
#[derive(Default, Clone, PartialEq)]
pub struct AdminFile {
    /// `admin = "ADDR"`.
    pub addr: Option<String>,
    /// `admin_token` or `admin_token_file`.
    pub token: Option<String>,
}

/// A token given inline or in a file. `Debug` hides it.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    token: Option<String>,
    token_file: Option<PathBuf>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl Secret {
    fn new(token: Option<String>, token_file: Option<PathBuf>) -> Self {
        Secret { token, token_file }
    }

    fn resolve(&self, base: &Path, what: &str) -> anyhow::Result<Option<Token>> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => bail!("{what}: give `token` or `token_file`, not both"),
            (Some(t), None) => Ok(Some(Token::new(check_token(t)?))),
            (None, Some(path)) => {
                let token =
                    super::read_token_file(&base.join(path)).with_context(|| what.to_string())?;
                Ok(Some(Token::new(token)))
            }
            (None, None) => Ok(None),
        }
    }
}

fn check_token(t: &str) -> anyhow::Result<&str> {
    if t.is_empty() {
        bail!("the token is empty");
    }
    Ok(t)
}

/// `rejoin server`'s config file. `Debug` hides the tokens.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    listen: SocketAddr,
    token: Option<String>,
    token_file: Option<PathBuf>,
    bind: Option<IpAddr>,
    #[serde(default)]
    ports: Vec<String>,
    keep: Option<Span>,
    login_failures_per_minute: Option<u32>,
    login_timeout: Option<Span>,
    max_pending_logins_per_source: Option<usize>,
    max_sessions: Option<usize>,
    max_services: Option<usize>,
    max_visitors: Option<usize>,
    max_visitors_per_source: Option<usize>,
    udp_idle: Option<Span>,
    udp_max_associations: Option<usize>,
    udp_max_associations_per_source: Option<usize>,
    #[serde(default)]
    clients: HashMap<String, Secret>,
    key_file: Option<PathBuf>,
    admin: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    ping_interval: Option<Span>,
    ping_timeout: Option<Span>,
    max_window: Option<Size>,
    window_budget: Option<Size>,
    inbound_budget: Option<Size>,
    socket_buffer: Option<Size>,
    threads: Option<usize>,
}

/// The server's threads for links, unless its file says otherwise: one per
/// CPU the process may use, as counted the first time it is asked (so that
/// a reload sees the number the server started with, not one changed since
/// by an affinity or a CPU quota, which a reload would refuse).
pub fn link_threads() -> usize {
    static AT_START: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AT_START.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS))
    })
}

/// `rejoin client`'s config file. `Debug` hides the token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    server: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    name: Option<String>,
    server_key: Option<String>,
    #[serde(default, rename = "service")]
    services: Vec<ServiceFile>,
    // The admin and tuning fields repeat ServerFile's: serde cannot
    // `flatten` a shared struct into one that denies unknown fields.
    admin: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    ping_interval: Option<Span>,
    ping_timeout: Option<Span>,
    max_window: Option<Size>,
    window_budget: Option<Size>,
    inbound_budget: Option<Size>,
    socket_buffer: Option<Size>,
    give_up_after: Option<u32>,
}

impl std::fmt::Debug for ServerFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFile")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .field("bind", &self.bind)
            .field("ports", &self.ports)
            .field("clients", &self.clients)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientFile")
            .field("server", &self.server)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .field("name", &self.name)
            .field("services", &self.services)
            .finish()
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ServiceFile {
    name: Option<String>,
    #[serde(default)]
    protocol: Protocol,
    local: String,
    #[serde(default)]
    port: u16,
}

#[derive(Deserialize, Debug, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl From<Protocol> for ServiceKind {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => ServiceKind::Tcp,
            Protocol::Udp => ServiceKind::Udp,
        }
    }
}

/// Reads and parses a TOML file; errors name the file, line and column.
pub fn load<T: ConfigFile>(path: &Path) -> anyhow::Result<T> {
    let text = super::read_small(path, super::CONFIG_FILE)
        .with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        // The other command's file says so, not which of its fields is
        // unknown here.
        let (other, other_mark) = (
            <T::Other as ConfigFile>::FOR,
            <T::Other as ConfigFile>::MARK,
        );
        let table = toml::from_str::<toml::Table>(&text).unwrap_or_default();
        if table.contains_key(other_mark) && !table.contains_key(T::MARK) {
            anyhow::anyhow!(
                "{}: a config for `rejoin {other}` (it has `{other_mark}`), not for `rejoin {}`",
                path.display(),
                T::FOR
            )
        } else {
            anyhow::anyhow!("{}: {e}", path.display())
        }
    })
}

/// A config file: the command it is for, and the field every file of its
/// kind has and the other kind's never does.
pub trait ConfigFile: serde::de::DeserializeOwned {
    /// `server` or `client`.
    const FOR: &'static str;
    /// `listen` or `server`.
    const MARK: &'static str;
    /// The other command's file.
    type Other: ConfigFile;
}

impl ConfigFile for ServerFile {
    const FOR: &'static str = "server";
    const MARK: &'static str = "listen";
    type Other = ClientFile;
}

impl ConfigFile for ClientFile {
    const FOR: &'static str = "client";
    const MARK: &'static str = "server";
    type Other = ServerFile;
}

/// Parses `10000-10999` or `8080`.
pub fn parse_range(s: &str) -> anyhow::Result<RangeInclusive<u16>> {
    let s = s.trim();
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a
        .trim()
        .parse()
        .with_context(|| format!("bad port range {s:?}"))?;
    let b: u16 = b
        .trim()
        .parse()
        .with_context(|| format!("bad port range {s:?}"))?;
    if a == 0 || a > b {
        bail!("bad port range {s:?}: ports run from 1 to 65535, low to high");
    }
    Ok(a..=b)
}

/// Parses `LOCAL_ADDR[@PUBLIC_PORT]`.
pub fn parse_service(spec: &str, kind: ServiceKind) -> anyhow::Result<ServiceConfig> {
    let (local, port) = match spec.rsplit_once('@') {
        Some((local, port)) => (
            local,
            port.parse::<u16>()
                .with_context(|| format!("bad public port in {spec:?}"))?,
        ),
        None => (spec, 0),
    };
    let local = local_address(local)?;
    Ok(ServiceConfig {
        name: wire_name(&local)?,
        kind,
        local,
        port,
    })
}

fn taken(services: &[ServiceConfig], s: &ServiceConfig) -> bool {
    services
        .iter()
        .any(|o| o.name == s.name && o.kind == s.kind)
}

/// Adds `service`, renamed `NAME#2`, `NAME#3`, … if another of its kind has
/// its name already (`--tcp 8080 --tcp 8080@9000` names both after the
/// local address): a client's services must be told apart by name, in the
/// server's metrics and in the ports it keeps for them across a reconnect.
pub fn add_service(services: &mut Vec<ServiceConfig>, mut service: ServiceConfig) {
    let base = service.name.clone();
    let mut n = 2;
    while taken(services, &service) {
        let suffix = format!("#{n}");
        service.name = clip_to(&base, MAX_NAME - suffix.len()) + &suffix;
        n += 1;
    }
    services.push(service);
}

/// A local service's address, `HOST:PORT`; a bare port (as bore users type
/// it) means that port on 127.0.0.1.
fn local_address(local: &str) -> anyhow::Result<String> {
    let local = local.trim();
    if !local.is_empty() && local.bytes().all(|b| b.is_ascii_digit()) {
        return match local.parse::<u16>() {
            Ok(port) if port != 0 => Ok(format!("127.0.0.1:{port}")),
            _ => bail!("local port {local:?} must be from 1 to 65535"),
        };
    }
    let Some((host, port)) = local.rsplit_once(':') else {
        bail!("local address {local:?} needs a port, as in 127.0.0.1:8080 (or just 8080)");
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("local address {local:?} must be HOST:PORT with a port from 1 to 65535");
    }
    Ok(local.to_string())
}

/// A client or service name as the wire carries it: refused if it holds a
/// control character, a line separator or a bidirectional formatting
/// character (the server refuses those, see [`unsafe_char`]), else
/// [`clip`]ped.
pub fn wire_name(s: &str) -> anyhow::Result<String> {
    if s.chars().any(unsafe_char) {
        bail!(
            "the name {s:?} holds a control character, a line separator or a bidirectional formatting character"
        );
    }
    Ok(clip(s))
}

/// At most `MAX_NAME` bytes (the wire's limit), cut at a character
/// boundary, so the name the handshake and the login use is the one sent.
fn clip(s: &str) -> String {
    clip_to(s, MAX_NAME)
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip_to(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// This machine's name, the default client name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| clip(h.trim()))
        .filter(|h| !h.is_empty() && !h.contains(unsafe_char))
        .unwrap_or_else(|| "client".into())
}

/// A server's public key as `rejoin server --show-key` prints it.
pub fn parse_server_key(text: &str) -> anyhow::Result<[u8; 32]> {
    rejoin::proto::sealed::parse_key_hex(text)
        .context("server_key must be 64 hex digits, as `rejoin server --show-key` prints it")
}

impl ServerFile {
    /// Where the server's static key is kept: `key_file` (relative to
    /// `base`), or `config` with the extension `.key`.
    pub fn key_file(&self, base: &Path, config: &Path) -> PathBuf {
        match &self.key_file {
            Some(path) => base.join(path),
            None => config.with_extension("key"),
        }
    }

    /// The library settings, with paths in the file taken relative to `base`.
    pub fn into_config(self, base: &Path) -> anyhow::Result<ServerConfig> {
        let token = Secret::new(self.token, self.token_file).resolve(base, "token")?;
        let mut clients = HashMap::new();
        for (name, secret) in &self.clients {
            // A name no client can send would never log in.
            anyhow::ensure!(
                wire_name(name).with_context(|| format!("[clients.{name:?}]"))? == *name,
                "[clients.{name:?}]: a client name is at most {MAX_NAME} bytes"
            );
            let t = secret
                .resolve(base, &format!("clients.{name}"))?
                .with_context(|| format!("clients.{name} needs a token or token_file"))?;
            clients.insert(name.clone(), t);
        }
        if token.is_none() && clients.is_empty() {
            bail!("set `token` (or `token_file`), or per-client tokens under [clients.NAME]");
        }
        let ports = self
            .ports
            .iter()
            .map(|r| parse_range(r))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut config = ServerConfig::new(self.listen, token);
        config.clients = clients;
        config.bind = self.bind;
        config.ports = ports;
        if let Some(keep) = self.keep {
            config.stream.reconnect_wait = keep.0;
        }
        if let Some(n) = self.login_failures_per_minute {
            config.stream.auth_failures_per_minute = n;
        }
        if let Some(t) = self.login_timeout {
            anyhow::ensure!(!t.0.is_zero(), "login_timeout must be above zero");
            config.login_timeout = t.0;
        }
        if let Some(n) = self.max_pending_logins_per_source {
            anyhow::ensure!(n > 0, "max_pending_logins_per_source must be at least 1");
            config.max_pending_logins_per_source = n;
        }
        if let Some(n) = self.max_sessions {
            anyhow::ensure!(n > 0, "max_sessions must be at least 1");
            config.stream.max_sessions = n;
        }
        config.stream.threads = match self.threads {
            Some(n) => {
                anyhow::ensure!(
                    (1..=MAX_THREADS).contains(&n),
                    "threads must be from 1 to {MAX_THREADS} (leave it out for one per CPU)"
                );
                n
            }
            None => link_threads(),
        };
        if let Some(n) = self.max_services {
            config.max_services = n;
        }
        if let Some(n) = self.max_visitors {
            config.max_visitors = n;
        }
        if let Some(n) = self.max_visitors_per_source {
            config.max_visitors_per_source = n;
        }
        if let Some(idle) = self.udp_idle {
            config.udp.idle = idle.0;
        }
        // Here too, so that `rejoin check` sees what the server would refuse.
        config.udp.validate()?;
        if let Some(n) = self.udp_max_associations {
            config.udp.max_associations = n;
        }
        if let Some(n) = self.udp_max_associations_per_source {
            config.udp.max_associations_per_source = n;
        }
        Tuning {
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_window: self.max_window,
            window_budget: self.window_budget,
            inbound_budget: self.inbound_budget,
            socket_buffer: self.socket_buffer,
        }
        .apply(&mut config.mux, &mut config.stream)?;
        rejoin::tunnel::validate_link_stream(&config.stream)?;
        Ok(config)
    }

    /// The admin endpoint's settings.
    pub fn admin(&self, base: &Path) -> anyhow::Result<AdminFile> {
        admin_settings(&self.admin, &self.admin_token, &self.admin_token_file, base)
    }
}

fn admin_settings(
    addr: &Option<String>,
    token: &Option<String>,
    token_file: &Option<PathBuf>,
    base: &Path,
) -> anyhow::Result<AdminFile> {
    let token = Secret::new(token.clone(), token_file.clone())
        .resolve(base, "admin_token")?
        .map(|t| t.expose().to_string());
    if let Some(addr) = addr {
        // Checked here, so that `rejoin check` and a reload see a bad one
        // too, not only the start (after the tunnel is up).
        super::admin::parse_addr(addr).context("admin")?;
    }
    Ok(AdminFile {
        addr: addr.clone(),
        token,
    })
}

impl ClientFile {
    /// The library settings, with paths in the file taken relative to `base`.
    pub fn into_config(self, base: &Path) -> anyhow::Result<ClientConfig> {
        let token = Secret::new(self.token, self.token_file)
            .resolve(base, "token")?
            .context("set `token` or `token_file`")?;
        let name = match self.name {
            Some(n) => wire_name(&n)?,
            None => hostname(),
        };
        let mut config = ClientConfig::new(self.server, token, name);
        if let Some(key) = &self.server_key {
            config.server_key = Some(parse_server_key(key)?);
        }
        Tuning {
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            max_window: self.max_window,
            window_budget: self.window_budget,
            inbound_budget: self.inbound_budget,
            socket_buffer: self.socket_buffer,
        }
        .apply(&mut config.mux, &mut config.stream)?;
        if self.give_up_after == Some(0) {
            bail!("give_up_after must be at least 1 (leave it out to retry forever)");
        }
        config.give_up_after = self.give_up_after;
        for (i, s) in self.services.into_iter().enumerate() {
            let local = local_address(&s.local).with_context(|| format!("service #{}", i + 1))?;
            let named = s.name.is_some();
            let service = ServiceConfig {
                name: wire_name(s.name.as_deref().unwrap_or(&local))
                    .with_context(|| format!("service #{}", i + 1))?,
                kind: s.protocol.into(),
                local,
                port: s.port,
            };
            if named && taken(&config.services, &service) {
                bail!(
                    "service #{}: another {} service is named {:?} (the server's metrics and the ports it keeps across a reconnect go by name)",
                    i + 1,
                    service.kind.name(),
                    service.name
                );
            }
            add_service(&mut config.services, service);
        }
        Ok(config)
    }

    /// The admin endpoint's settings.
    pub fn admin(&self, base: &Path) -> anyhow::Result<AdminFile> {
        admin_settings(&self.admin, &self.admin_token, &self.admin_token_file, base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's config file: a server and a token, then `text`.
    fn client_file(text: &str) -> anyhow::Result<ClientConfig> {
        toml::from_str::<ClientFile>(&format!("server = \"127.0.0.1:1\"\ntoken = \"t\"\n{text}"))
            .unwrap()
            .into_config(Path::new("."))
    }

    /// A server's config file: where it listens, then `text`.
    fn server_file(text: &str) -> anyhow::Result<ServerConfig> {
        toml::from_str::<ServerFile>(&format!("listen = \"127.0.0.1:0\"\n{text}"))
            .unwrap()
            .into_config(Path::new("."))
    }

    #[test]
    fn names_are_clipped_to_the_wire_limit_in_bytes() {
        let long = "é".repeat(40); // 80 bytes
        let clipped = clip(&long);
        assert_eq!(clipped.len(), 64);
        assert_eq!(clipped, "é".repeat(32));
        assert_eq!(clip("short"), "short");
    }

    /// A client or service name with a control character is refused with
    /// the name shown (the server would refuse the frame carrying it).
    #[test]
    fn names_with_control_characters_are_refused() {
        let (file, server) = (client_file, server_file);
        assert!(file("name = \"home\"\n").is_ok());
        let err = format!(
            "{:#}",
            server("[clients.\"a\\u0007b\"]\ntoken = \"t\"\n").unwrap_err()
        );
        assert!(err.contains("holds a control character"), "{err}");
        let long = format!("[clients.{}]\ntoken = \"t\"\n", "n".repeat(65));
        let err = format!("{:#}", server(&long).unwrap_err());
        assert!(err.contains("at most 64 bytes"), "{err}");
        for text in [
            "name = \"home\\nWARN forged\"\n",
            "[[service]]\nlocal = \"127.0.0.1:22\"\nname = \"ssh\\r\"\n",
        ] {
            let err = format!("{:#}", file(text).unwrap_err());
            assert!(err.contains("holds a control character"), "{text}: {err}");
        }
    }

    /// Services of one kind are told apart by name: a second one named
    /// after the same local address (flags) is renamed `#2`, within the
    /// wire's limit; two a file names alike are refused.
    #[test]
    fn service_names_are_kept_apart() {
        let svc = |name: &str, kind| ServiceConfig {
            name: name.into(),
            kind,
            local: "127.0.0.1:8080".into(),
            port: 0,
        };
        let mut services = Vec::new();
        for _ in 0..3 {
            add_service(&mut services, svc("127.0.0.1:8080", ServiceKind::Tcp));
        }
        add_service(&mut services, svc("127.0.0.1:8080", ServiceKind::Udp));
        let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "127.0.0.1:8080",
                "127.0.0.1:8080#2",
                "127.0.0.1:8080#3",
                "127.0.0.1:8080"
            ]
        );
        let long = "é".repeat(32); // 64 bytes, the limit
        add_service(&mut services, svc(&long, ServiceKind::Tcp));
        add_service(&mut services, svc(&long, ServiceKind::Tcp));
        let last = &services.last().unwrap().name;
        assert!(last.len() <= MAX_NAME && last.ends_with("#2"), "{last}");
        let file = client_file;
        let two = "[[service]]\nname = \"web\"\nlocal = \"80\"\n[[service]]\nname = \"web\"\nlocal = \"81\"\n";
        let err = format!("{:#}", file(two).unwrap_err());
        assert!(
            err.contains("another tcp service is named \"web\""),
            "{err}"
        );
        let unnamed = "[[service]]\nlocal = \"80\"\n[[service]]\nlocal = \"80\"\nport = 9000\n";
        let config = file(unnamed).unwrap();
        assert_eq!(config.services[1].name, "127.0.0.1:80#2");
    }

    /// A `udp_idle` under a second would end every association between a
    /// request and its reply: refused, by the check, the start and a reload
    /// alike (they all read the file through here).
    #[test]
    fn a_udp_idle_under_a_second_is_refused() {
        let server = |idle: &str| server_file(&format!("token = \"t\"\nudp_idle = \"{idle}\"\n"));
        for idle in ["0s", "1ms", "999ms"] {
            let err = format!("{:#}", server(idle).unwrap_err());
            assert!(
                err.contains("udp_idle must be at least 1s"),
                "{idle}: {err}"
            );
        }
        let config = server("1s").unwrap();
        assert_eq!(config.udp.idle, Duration::from_secs(1));
    }

    /// `token_file` in a config reads a file as `--token-file` does: its
    /// first line, trimmed.
    #[test]
    fn token_files_give_their_first_line() {
        let dir = std::env::temp_dir().join(format!("rejoin-token-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "  tok-1 \nnot the token\n").unwrap();
        std::fs::write(dir.join("empty"), "\n\n").unwrap();
        let read = |file: &str| Secret::new(None, Some(file.into())).resolve(&dir, "token");
        let token = read("token").unwrap().unwrap();
        assert_eq!(token.expose(), "tok-1");
        assert_eq!(
            super::super::read_token_file(&dir.join("token")).unwrap(),
            "tok-1"
        );
        let err = format!("{:#}", read("empty").unwrap_err());
        assert!(
            err.starts_with("token: ") && err.contains("is empty"),
            "{err}"
        );
        let err = format!("{:#}", read("missing").unwrap_err());
        assert!(err.contains("cannot read the token file"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The login limits are settings of the file, and zero is refused.
    #[test]
    fn login_limits_are_set_in_the_file() {
        let file = |extra: &str| server_file(&format!("token = \"t\"\n{extra}"));
        let c = file(
            "login_timeout = \"30s\"\nmax_pending_logins_per_source = 4\nmax_sessions = 500\n",
        )
        .unwrap();
        assert_eq!(c.login_timeout, Duration::from_secs(30));
        assert_eq!(c.max_pending_logins_per_source, 4);
        assert_eq!(c.stream.max_sessions, 500);
        for (zero, name) in [
            ("login_timeout = \"0s\"", "login_timeout"),
            (
                "max_pending_logins_per_source = 0",
                "max_pending_logins_per_source",
            ),
            ("max_sessions = 0", "max_sessions"),
        ] {
            let err = file(zero).unwrap_err().to_string();
            assert!(err.contains(name), "{zero}: {err}");
        }
    }

    #[test]
    fn spans() {
        assert_eq!("30s".parse::<Span>().unwrap().0, Duration::from_secs(30));
        assert_eq!(
            "500ms".parse::<Span>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("5m".parse::<Span>().unwrap().0, Duration::from_secs(300));
        assert!("5".parse::<Span>().is_err());
        assert!("s".parse::<Span>().is_err());
        assert!("5 weeks".parse::<Span>().is_err());
        assert!("99999999999999999999h".parse::<Span>().is_err());
        assert!(
            "9999999999999999999h".parse::<Span>().is_err(),
            "overflow is an error, not a panic"
        );
        assert!("8760h".parse::<Span>().is_ok());
        let long = "2562047788015215h".parse::<Span>().unwrap_err();
        assert!(long.contains("longer than a year"), "{long}");
    }

    #[test]
    fn services_and_ranges() {
        let s = parse_service("127.0.0.1:8080@9000", ServiceKind::Tcp).unwrap();
        assert_eq!((s.local.as_str(), s.port), ("127.0.0.1:8080", 9000));
        let s = parse_service("[::1]:22", ServiceKind::Udp).unwrap();
        assert_eq!((s.local.as_str(), s.port), ("[::1]:22", 0));
        assert!(parse_service("localhost", ServiceKind::Tcp).is_err());
        let s = parse_service("8080", ServiceKind::Tcp).unwrap();
        assert_eq!((s.local.as_str(), s.port), ("127.0.0.1:8080", 0));
        let s = parse_service("8080@9000", ServiceKind::Tcp).unwrap();
        assert_eq!((s.local.as_str(), s.port), ("127.0.0.1:8080", 9000));
        assert!(parse_service("0", ServiceKind::Tcp).is_err());
        assert!(parse_service("70000", ServiceKind::Tcp).is_err());
        assert!(parse_service("127.0.0.1:80@x", ServiceKind::Tcp).is_err());
        assert!(parse_service("127.0.0.1:0", ServiceKind::Tcp).is_err());
        assert_eq!(parse_range("10-20").unwrap(), 10..=20);
        assert_eq!(parse_range("8080").unwrap(), 8080..=8080);
        assert!(parse_range("20-10").is_err());
        assert!(parse_range("0-10").is_err());
    }

    #[test]
    fn durations_without_a_unit_say_how_to_write_them() {
        let text = "listen = \"127.0.0.1:7000\"\ntoken = \"x\"\nkeep = 60\n";
        let err = toml::from_str::<ServerFile>(text).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("\"60s\""), "{err}");
        let text = "listen = \"127.0.0.1:7000\"\ntoken = \"x\"\nkeep = \"60 seconds\"\n";
        let err = toml::from_str::<ServerFile>(text).unwrap_err().to_string();
        assert!(err.contains("use ms, s, m or h"), "{err}");
    }

    #[test]
    fn services_default_to_tcp() {
        let text = "server = \"h:1\"\ntoken = \"t\"\n[[service]]\nlocal = \"8080\"\n";
        let file: ClientFile = toml::from_str(text).unwrap();
        let config = file.into_config(Path::new(".")).unwrap();
        assert_eq!(config.services[0].kind, ServiceKind::Tcp);
        assert_eq!(config.services[0].local, "127.0.0.1:8080");
    }

    #[test]
    fn files_refuse_unknown_fields_with_the_line() {
        let text = "listen = \"127.0.0.1:7000\"\ntoken = \"x\"\nlisten_port = 3\n";
        let err = toml::from_str::<ServerFile>(text).unwrap_err().to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("listen_port"), "{err}");
    }

    /// The example configs shipped in examples/ parse and convert.
    #[test]
    fn shipped_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let server: ServerFile = load(&dir.join("server.toml")).unwrap();
        let server = server.into_config(&dir).unwrap();
        assert_eq!(server.ports.len(), 3);
        assert!(server.clients.contains_key("office"));
        assert_eq!(server.stream.reconnect_wait, Duration::from_secs(120));
        let client: ClientFile = load(&dir.join("client.toml")).unwrap();
        let client = client.into_config(&dir).unwrap();
        assert_eq!(client.name, "homelab");
        assert_eq!(client.services.len(), 3);
        assert_eq!(client.services[2].kind, ServiceKind::Udp);
        assert_eq!(server.udp.max_associations, 4096);
        assert_eq!(server.udp.max_associations_per_source, 128);
        assert_eq!(client.services[0].port, 10022);
    }

    /// The shipped client logs in to the shipped server and every one of
    /// its services is allowed.
    #[test]
    fn shipped_examples_work_together() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let server: ServerFile = load(&dir.join("server.toml")).unwrap();
        let server = server.into_config(&dir).unwrap();
        let client: ClientFile = load(&dir.join("client.toml")).unwrap();
        let client = client.into_config(&dir).unwrap();
        let token = server.clients.get(&client.name).or(server.token.as_ref());
        assert!(
            token == Some(&client.token),
            "the client's token is the one the server wants for its name"
        );
        for s in &client.services {
            assert!(
                s.port == 0 || server.ports.iter().any(|r| r.contains(&s.port)),
                "{} asks for port {}, which the server does not allow",
                s.name,
                s.port
            );
        }
    }

    #[test]
    fn sizes_and_tuning() {
        assert_eq!("16MiB".parse::<Size>().unwrap().0, 16 << 20);
        assert_eq!("1048576".parse::<Size>().unwrap().0, 1 << 20);
        assert!("16MB".parse::<Size>().is_err());
        let text = "server = \"h:1\"\ntoken = \"t\"\nping_interval = \"2s\"\nping_timeout = \"6s\"\nmax_window = \"4MiB\"\n";
        let c = toml::from_str::<ClientFile>(text)
            .unwrap()
            .into_config(Path::new("."))
            .unwrap();
        assert_eq!(c.mux.ping_interval, Duration::from_secs(2));
        assert_eq!(c.mux.max_window, 4 << 20);
        let text = "server = \"h:1\"\ntoken = \"t\"\nping_interval = \"20s\"\n";
        let err = toml::from_str::<ClientFile>(text)
            .unwrap()
            .into_config(Path::new("."))
            .unwrap_err();
        assert!(err.to_string().contains("ping_timeout"), "{err}");
    }

    #[test]
    fn the_link_socket_buffer_is_the_kernels_unless_set() {
        let client = |extra: &str| {
            toml::from_str::<ClientFile>(&format!("server = \"h:1\"\ntoken = \"t\"\n{extra}"))
                .unwrap()
                .into_config(Path::new("."))
        };
        let c = client("").unwrap();
        assert_eq!(c.stream.socket_buffer, rejoin::stream::KERNEL_SIZED);
        let c = client("socket_buffer = \"256KiB\"\n").unwrap();
        assert_eq!(c.stream.socket_buffer, Some(256 << 10));
        for bad in ["100", "2GiB"] {
            let err = client(&format!("socket_buffer = \"{bad}\"\n")).unwrap_err();
            assert!(err.to_string().contains("socket_buffer"), "{err}");
        }
        let text = "listen = \"127.0.0.1:0\"\ntoken = \"t\"\nsocket_buffer = \"64KiB\"\n";
        let s = toml::from_str::<ServerFile>(text)
            .unwrap()
            .into_config(Path::new("."))
            .unwrap();
        assert_eq!(s.stream.socket_buffer, Some(64 << 10));
    }

    /// A server runs its links on one thread per CPU unless its file says
    /// otherwise; 0 and more than 1,024 are refused.
    #[test]
    fn the_server_has_a_thread_per_cpu_for_links_unless_set() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(server_file("token = \"t\"\n").unwrap().stream.threads, cpus);
        let s = server_file("token = \"t\"\nthreads = 3\n").unwrap();
        assert_eq!(s.stream.threads, 3);
        for bad in ["0", "1025"] {
            let err = server_file(&format!("token = \"t\"\nthreads = {bad}\n")).unwrap_err();
            assert!(err.to_string().contains("threads"), "{err}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        let f: ClientFile = toml::from_str("server = \"h:1\"\ntoken = \"hunter2\"\n").unwrap();
        assert!(!format!("{f:?}").contains("hunter2"));
        let c = f.into_config(Path::new(".")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
