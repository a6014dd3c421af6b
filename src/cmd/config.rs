//! Config files (TOML) and one-line flags for `rejoin server` and
//! `rejoin client`, turned into the library's settings.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{ClientConfig, ServiceConfig};
use rejoin::tunnel::frame::{MAX_NAME, ServiceKind};
use rejoin::tunnel::server::ServerConfig;
use serde::Deserialize;

/// A duration written as `500ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl std::str::FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a duration like 30s, 500ms, 5m or 1h"))?;
        let d = match unit.trim() {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            other => {
                return Err(format!(
                    "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
                ));
            }
        };
        Ok(Span(d))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
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
                let path = base.join(path);
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{what}: reading {}", path.display()))?;
                Ok(Some(Token::new(check_token(text.trim())?)))
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
    max_services: Option<usize>,
    udp_idle: Option<Span>,
    udp_max_associations: Option<usize>,
    #[serde(default)]
    clients: HashMap<String, Secret>,
    key_file: Option<PathBuf>,
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
    protocol: Protocol,
    local: String,
    #[serde(default)]
    port: u16,
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Protocol {
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
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
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
    check_local(local)?;
    Ok(ServiceConfig {
        name: clip(local),
        kind,
        local: local.to_string(),
        port,
    })
}

fn check_local(local: &str) -> anyhow::Result<()> {
    let Some((host, port)) = local.rsplit_once(':') else {
        bail!("local address {local:?} needs a port, as in 127.0.0.1:8080");
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        bail!("local address {local:?} must be HOST:PORT with a port from 1 to 65535");
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(MAX_NAME).collect()
}

/// This machine's name, the default client name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| clip(h.trim()))
        .filter(|h| !h.is_empty())
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
        if let Some(n) = self.max_services {
            config.max_services = n;
        }
        if let Some(idle) = self.udp_idle {
            config.udp.idle = idle.0;
        }
        if let Some(n) = self.udp_max_associations {
            config.udp.max_associations = n;
        }
        config.stream.validate()?;
        Ok(config)
    }
}

impl ClientFile {
    /// The library settings, with paths in the file taken relative to `base`.
    pub fn into_config(self, base: &Path) -> anyhow::Result<ClientConfig> {
        let token = Secret::new(self.token, self.token_file)
            .resolve(base, "token")?
            .context("set `token` or `token_file`")?;
        let name = self.name.map(|n| clip(&n)).unwrap_or_else(hostname);
        let mut config = ClientConfig::new(self.server, token, name);
        if let Some(key) = &self.server_key {
            config.server_key = Some(parse_server_key(key)?);
        }
        for (i, s) in self.services.into_iter().enumerate() {
            check_local(&s.local).with_context(|| format!("service #{}", i + 1))?;
            config.services.push(ServiceConfig {
                name: clip(s.name.as_deref().unwrap_or(&s.local)),
                kind: s.protocol.into(),
                local: s.local,
                port: s.port,
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn services_and_ranges() {
        let s = parse_service("127.0.0.1:8080@9000", ServiceKind::Tcp).unwrap();
        assert_eq!((s.local.as_str(), s.port), ("127.0.0.1:8080", 9000));
        let s = parse_service("[::1]:22", ServiceKind::Udp).unwrap();
        assert_eq!((s.local.as_str(), s.port), ("[::1]:22", 0));
        assert!(parse_service("localhost", ServiceKind::Tcp).is_err());
        assert!(parse_service("127.0.0.1:80@x", ServiceKind::Tcp).is_err());
        assert!(parse_service("127.0.0.1:0", ServiceKind::Tcp).is_err());
        assert_eq!(parse_range("10-20").unwrap(), 10..=20);
        assert_eq!(parse_range("8080").unwrap(), 8080..=8080);
        assert!(parse_range("20-10").is_err());
        assert!(parse_range("0-10").is_err());
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
        assert_eq!(server.ports.len(), 2);
        assert!(server.clients.contains_key("homelab"));
        assert_eq!(server.stream.reconnect_wait, Duration::from_secs(120));
        let client: ClientFile = load(&dir.join("client.toml")).unwrap();
        let client = client.into_config(&dir).unwrap();
        assert_eq!(client.name, "homelab");
        assert_eq!(client.services.len(), 3);
        assert_eq!(client.services[2].kind, ServiceKind::Udp);
        assert_eq!(server.udp.max_associations, 4096);
        assert_eq!(client.services[0].port, 10022);
    }

    #[test]
    fn secrets_are_masked() {
        let f: ClientFile = toml::from_str("server = \"h:1\"\ntoken = \"hunter2\"\n").unwrap();
        assert!(!format!("{f:?}").contains("hunter2"));
        let c = f.into_config(Path::new(".")).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
