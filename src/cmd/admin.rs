//! The admin endpoint of `rejoin server` and `rejoin client`: Prometheus
//! metrics, the status as JSON, and a status page.
//!
//! - `GET /metrics`: the Prometheus (OpenMetrics) text format.
//! - `GET /api/status`: [`Status`] as JSON.
//! - `GET /`: a page that shows the status and refreshes itself.
//!
//! With a token, every request must carry `Authorization: Bearer TOKEN` (or
//! `?token=TOKEN`, which the page passes on to its own requests).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use rejoin::tunnel::client::{ClientHandle, ServiceState};
use rejoin::tunnel::server::Server;

/// The most admin connections served at once. A newcomer beyond it closes
/// the oldest that has not sent a whole request yet (see [`Slots`]); if
/// every one has, the newcomer is closed.
const MAX_CONNECTIONS: usize = 32;

/// How long a connection that has not asked yet is safe from eviction.
const FRESH: Duration = Duration::from_millis(20);

/// The admin endpoint's connections. Taking a slot never waits on what a
/// peer does: connections that send their headers slowly, or nothing, are
/// the first to go when all the slots are taken, so holding the slots
/// costs an attacker a steady stream of new connections and still cannot
/// keep out a scraper, whose request arrives with its connection.
#[derive(Default)]
struct Slots {
    table: parking_lot::Mutex<Vec<Slot>>,
    next: std::sync::atomic::AtomicU64,
}

struct Slot {
    id: u64,
    since: std::time::Instant,
    /// Set once its request's headers are in.
    asked: Arc<std::sync::atomic::AtomicBool>,
    close: CancellationToken,
}

/// A slot taken: given up when dropped.
struct Taken {
    slots: Arc<Slots>,
    id: u64,
    asked: Arc<std::sync::atomic::AtomicBool>,
    close: CancellationToken,
}

impl Slots {
    /// A slot for a new connection, closing the oldest that has not asked
    /// yet if they are all taken; `None` if every one is answering.
    fn take(self: &Arc<Self>) -> Option<Taken> {
        use std::sync::atomic::Ordering;
        let mut table = self.table.lock();
        let now = std::time::Instant::now();
        if table.len() >= MAX_CONNECTIONS {
            // Oldest first: the table is in order of arrival. One accepted
            // a moment ago may have its request waiting unread (a burst of
            // accepts comes before its task runs): it is not a candidate.
            let idle = table.iter().position(|s| {
                !s.asked.load(Ordering::Relaxed) && now.duration_since(s.since) >= FRESH
            })?;
            table.remove(idle).close.cancel();
        }
        let slot = Slot {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            since: now,
            asked: Default::default(),
            close: CancellationToken::new(),
        };
        let taken = Taken {
            slots: self.clone(),
            id: slot.id,
            asked: slot.asked.clone(),
            close: slot.close.clone(),
        };
        table.push(slot);
        Some(taken)
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.slots.table.lock().retain(|s| s.id != self.id);
    }
}
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the admin endpoint reports: the same facts for `/api/status`, the
/// page, `/metrics` and `rejoin status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// `server` or `client`.
    pub role: String,
    /// rejoin's version.
    pub version: String,
    /// Seconds since the process started.
    pub uptime_seconds: u64,
    /// Unix seconds now, by the reporter's clock (times below are on it).
    pub now: u64,
    /// Server: where clients connect. Client: the server it uses.
    pub address: String,
    /// Server: every logged-in client. Client: itself (if a session is up,
    /// or its services with no link).
    pub clients: Vec<ClientView>,
    /// Server: refused logins since start, by reason.
    #[serde(default)]
    pub logins_refused: BTreeMap<String, u64>,
}

/// One client and its link.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientView {
    pub name: String,
    /// Server: where the client's link comes from. Client: the server's
    /// address on the link.
    pub peer: Option<String>,
    pub link_up: bool,
    /// Unix seconds when the session logged in.
    pub since: Option<u64>,
    /// Unix seconds of the link's last resume.
    pub last_resume: Option<u64>,
    pub resumes: u64,
    pub resent_bytes: u64,
    /// Server: the thread the client's link runs on (`rj-session-N`).
    #[serde(default)]
    pub thread: Option<String>,
    pub services: Vec<ServiceView>,
}

/// One published service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceView {
    pub name: String,
    /// `tcp` or `udp`.
    pub kind: String,
    /// Where visitors reach it (once published).
    pub public: Option<String>,
    /// Client: the local address.
    pub local: Option<String>,
    /// `published`, `pending`, or `failed: REASON`.
    pub state: String,
    pub visitors: u64,
    pub visits: u64,
    pub bytes_to_service: u64,
    pub bytes_to_visitors: u64,
    pub udp_dropped: u64,
    /// Server: TCP visitors turned away at a visitor limit.
    #[serde(default)]
    pub visitors_refused: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn service_view(
    name: &str,
    kind: &str,
    public: Option<String>,
    local: Option<String>,
    state: String,
    s: &rejoin::tunnel::ServiceStats,
) -> ServiceView {
    ServiceView {
        name: name.to_string(),
        kind: kind.to_string(),
        public,
        local,
        state,
        visitors: s.visitors,
        visits: s.visits,
        bytes_to_service: s.bytes_to_service,
        bytes_to_visitors: s.bytes_to_visitors,
        udp_dropped: s.udp_dropped,
        visitors_refused: s.visitors_refused,
    }
}

/// Where the facts come from.
#[derive(Clone)]
pub enum Source {
    Server(Arc<Server>),
    Client(ClientHandle),
}

impl Source {
    pub async fn status(&self, started: SystemTime) -> Status {
        let uptime_seconds = SystemTime::now()
            .duration_since(started)
            .map_or(0, |d| d.as_secs());
        let version = env!("CARGO_PKG_VERSION").to_string();
        match self {
            Source::Server(server) => {
                let status = server.status().await;
                let clients = status
                    .clients
                    .iter()
                    .map(|c| ClientView {
                        name: c.name.clone(),
                        peer: c.peer.map(|a| a.to_string()),
                        link_up: c.link.connected,
                        since: Some(unix(c.since)),
                        last_resume: c.last_resume.map(unix),
                        resumes: c.link.reconnects,
                        resent_bytes: c.link.resent,
                        thread: c.thread.clone(),
                        services: c
                            .services
                            .iter()
                            .map(|s| {
                                service_view(
                                    &s.name,
                                    s.kind.name(),
                                    Some(s.public.to_string()),
                                    None,
                                    "published".into(),
                                    &s.stats,
                                )
                            })
                            .collect(),
                    })
                    .collect();
                Status {
                    role: "server".into(),
                    version,
                    uptime_seconds,
                    now: unix(SystemTime::now()),
                    address: status.listen.to_string(),
                    clients,
                    logins_refused: status
                        .logins_refused
                        .iter()
                        .map(|(r, n)| (r.name().to_string(), *n))
                        .collect(),
                }
            }
            Source::Client(handle) => {
                let status = handle.status();
                let services = status
                    .services
                    .iter()
                    .map(|s| {
                        let (public, state) = match &s.state {
                            ServiceState::Published { public } => {
                                (Some(public.clone()), "published".to_string())
                            }
                            ServiceState::Failed { reason, .. } => {
                                (None, format!("failed: {reason}"))
                            }
                            _ => (None, "pending".to_string()),
                        };
                        service_view(
                            &s.config.name,
                            s.config.kind.name(),
                            public,
                            Some(s.config.local.clone()),
                            state,
                            &s.stats,
                        )
                    })
                    .collect();
                let link = status.link.clone().unwrap_or_default();
                Status {
                    role: "client".into(),
                    version,
                    uptime_seconds,
                    now: unix(SystemTime::now()),
                    address: status.server.clone(),
                    clients: vec![ClientView {
                        name: status.name.clone(),
                        peer: status.server_addr.map(|a| a.to_string()),
                        link_up: link.connected,
                        since: status.since.map(unix),
                        last_resume: status.last_resume.map(unix),
                        resumes: link.reconnects,
                        resent_bytes: link.resent,
                        thread: None,
                        services,
                    }],
                    logins_refused: BTreeMap::new(),
                }
            }
        }
    }
}

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The status in the Prometheus text format.
pub fn metrics(status: &Status) -> anyhow::Result<String> {
    let mut registry = Registry::default();
    let clients = Gauge::<i64>::default();
    let services = Gauge::<i64>::default();
    let visitors = Family::<Labels, Gauge<i64>>::default();
    let link_up = Family::<Labels, Gauge<i64>>::default();
    let resumes = Family::<Labels, Counter>::default();
    let resent = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let udp_dropped = Family::<Labels, Counter>::default();
    let visitors_refused = Family::<Labels, Counter>::default();
    let refused = Family::<Labels, Counter>::default();
    let thread_links = Family::<Labels, Gauge<i64>>::default();
    let connected = status.clients.iter().filter(|c| c.since.is_some()).count();
    clients.set(connected as i64);
    let mut published = 0;
    for c in &status.clients {
        let client = c.name.as_str();
        link_up
            .get_or_create(&labels(&[("client", client)]))
            .set(i64::from(c.link_up));
        resumes
            .get_or_create(&labels(&[("client", client)]))
            .inc_by(c.resumes);
        resent
            .get_or_create(&labels(&[("client", client)]))
            .inc_by(c.resent_bytes);
        if let Some(thread) = &c.thread {
            thread_links
                .get_or_create(&labels(&[("thread", thread)]))
                .inc();
        }
        for s in &c.services {
            if s.state == "published" {
                published += 1;
            }
            // (A TCP and a UDP service on one local port share a name:
            // the kind tells their series apart.)
            let service = [
                ("client", client),
                ("service", s.name.as_str()),
                ("kind", s.kind.as_str()),
            ];
            visitors
                .get_or_create(&labels(&service))
                .set(s.visitors as i64);
            for (direction, n) in [
                ("to_service", s.bytes_to_service),
                ("to_visitors", s.bytes_to_visitors),
            ] {
                let mut l = service.to_vec();
                l.push(("direction", direction));
                bytes.get_or_create(&labels(&l)).inc_by(n);
            }
            udp_dropped
                .get_or_create(&labels(&service))
                .inc_by(s.udp_dropped);
            if status.role == "server" && s.kind == "tcp" {
                visitors_refused
                    .get_or_create(&labels(&service))
                    .inc_by(s.visitors_refused);
            }
        }
    }
    services.set(published);
    for (reason, n) in &status.logins_refused {
        refused
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(*n);
    }
    let (who, side) = match status.role.as_str() {
        "server" => ("Clients logged in", "the server"),
        _ => ("1 while this client is logged in", "this client"),
    };
    registry.register("rejoin_clients", who, clients);
    registry.register(
        "rejoin_services",
        format!("Services published on {side}"),
        services,
    );
    registry.register(
        "rejoin_visitors",
        "Visitors connected now (TCP connections, UDP associations)",
        visitors,
    );
    registry.register(
        "rejoin_link_up",
        "1 while the client's link has a transport",
        link_up,
    );
    registry.register(
        "rejoin_link_resumes",
        "Times the client's link resumed after a break",
        resumes,
    );
    registry.register(
        "rejoin_link_resent_bytes",
        "Bytes resent after link breaks",
        resent,
    );
    registry.register(
        "rejoin_bytes",
        "Bytes carried, to the service or to its visitors",
        bytes,
    );
    registry.register("rejoin_udp_dropped", "UDP datagrams dropped", udp_dropped);
    if status.role == "server" {
        registry.register(
            "rejoin_visitors_refused",
            "TCP visitors turned away at a visitor limit (per service or per source address)",
            visitors_refused,
        );
        registry.register(
            "rejoin_logins_refused",
            "Logins refused, by reason",
            refused,
        );
        registry.register(
            "rejoin_thread_links",
            "Logged-in clients' links on each of the server's link threads (threads with none are left out)",
            thread_links,
        );
    }
    let mut text = String::new();
    encode(&mut text, &registry).context("encoding metrics")?;
    Ok(text)
}

/// A running admin endpoint's settings.
pub struct Admin {
    source: Source,
    token: Option<String>,
    started: SystemTime,
}

/// `ADDR` for `--admin`: `HOST:PORT`, or a bare port on 127.0.0.1.
pub fn parse_addr(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().with_context(|| {
        format!("admin address {text:?} must be PORT or IP:PORT, like 7070 or 127.0.0.1:7070")
    })
}

/// Binds the admin endpoint and serves it in the background; returns the
/// address it is bound to.
pub async fn start(
    addr: SocketAddr,
    token: Option<String>,
    source: Source,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the admin endpoint at {addr}"))?;
    let bound = listener.local_addr()?;
    if token.as_deref() == Some("") {
        anyhow::bail!("the admin token is empty: give a real one, or none");
    }
    if !bound.ip().is_loopback() && token.is_none() {
        tracing::warn!(%bound, "the admin endpoint is reachable beyond this machine without a token (set admin_token)");
    }
    let admin = Arc::new(Admin {
        source,
        token,
        started: SystemTime::now(),
    });
    let slots = Arc::new(Slots::default());
    tokio::spawn(async move {
        loop {
            let (sock, _) = match listener.accept().await {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, %bound, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Every slot answering a request: closed at once, so a scraper
            // fails fast instead of waiting in the backlog.
            let Some(slot) = slots.take() else {
                let _ = sock.set_zero_linger();
                continue;
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let asked = slot.asked.clone();
                let service = hyper::service::service_fn(move |req| {
                    asked.store(true, std::sync::atomic::Ordering::Relaxed);
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                // One request per connection: an idle keep-alive never
                // holds a slot.
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), service);
                // A connection lives at most 15 s, whatever it does, and
                // goes at once if a newcomer needs its slot before it asked.
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(15), conn) => {}
                    () = slot.close.cancelled() => {}
                }
                drop(slot);
            });
        }
    });
    Ok(bound)
}

fn reply(code: StatusCode, kind: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = code;
    if let Ok(v) = kind.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "no-store".parse() {
        r.headers_mut().insert(hyper::header::CACHE_CONTROL, v);
    }
    r
}

impl Admin {
    fn authorised(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.token else {
            // No token: only requests addressed by IP or as localhost, so
            // a web page cannot rebind its own domain name to this port and
            // read the status through the operator's browser.
            return req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(host_is_an_address);
        };
        let bearer = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let query = req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(percent_decode)
        });
        let given = bearer.map(str::to_string).or(query).unwrap_or_default();
        // Constant time in the token's content.
        given.len() == token.len()
            && given
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        {
            const TEXT: &str = "text/plain; charset=utf-8";
            if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
                return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n");
            }
            if !self.authorised(&req) {
                if self.token.is_none() {
                    return reply(
                        StatusCode::FORBIDDEN,
                        TEXT,
                        "address this endpoint by IP (or localhost), or set an admin token\n",
                    );
                }
                let mut r = reply(StatusCode::UNAUTHORIZED, TEXT, "a bearer token is needed\n");
                if let Ok(v) = "Bearer".parse() {
                    r.headers_mut().insert(hyper::header::WWW_AUTHENTICATE, v);
                }
                return r;
            }
            match req.uri().path() {
                "/" => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE),
                "/metrics" => {
                    let status = self.source.status(self.started).await;
                    match metrics(&status) {
                        Ok(text) => reply(
                            StatusCode::OK,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            text,
                        ),
                        Err(e) => {
                            reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e:#}\n"))
                        }
                    }
                }
                "/api/status" => {
                    let status = self.source.status(self.started).await;
                    match serde_json::to_vec_pretty(&status) {
                        Ok(json) => reply(StatusCode::OK, "application/json", json),
                        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
                    }
                }
                _ => reply(
                    StatusCode::NOT_FOUND,
                    TEXT,
                    "not found: try /, /metrics or /api/status\n",
                ),
            }
        }
    }
}

/// A query value as the browser sent it: `%XX` escapes and `+` decoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a `Host` header names this endpoint by IP address or as
/// localhost (not by some other name, which DNS rebinding would use).
fn host_is_an_address(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[') {
        return v6
            .split_once(']')
            .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
    }
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// The status page: no build step, no external resources.
const PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            role: "server".into(),
            version: "0".into(),
            uptime_seconds: 5,
            now: 10,
            address: "127.0.0.1:7000".into(),
            clients: vec![ClientView {
                name: "home \"lab\"".into(),
                peer: Some("127.0.0.1:5000".into()),
                link_up: true,
                since: Some(1),
                last_resume: None,
                resumes: 3,
                resent_bytes: 100,
                thread: Some("rj-session-1".into()),
                services: vec![
                    ServiceView {
                        name: "web".into(),
                        kind: "tcp".into(),
                        public: Some("127.0.0.1:8080".into()),
                        local: None,
                        state: "published".into(),
                        visitors: 2,
                        visits: 7,
                        bytes_to_service: 10,
                        bytes_to_visitors: 20,
                        udp_dropped: 0,
                        visitors_refused: 6,
                    },
                    // A UDP service of the same name (both on local port 53).
                    ServiceView {
                        name: "web".into(),
                        kind: "udp".into(),
                        public: Some("127.0.0.1:8080".into()),
                        local: None,
                        state: "published".into(),
                        visitors: 5,
                        visits: 9,
                        bytes_to_service: 1,
                        bytes_to_visitors: 2,
                        udp_dropped: 3,
                        visitors_refused: 0,
                    },
                ],
            }],
            logins_refused: [("bad_token".to_string(), 4)].into_iter().collect(),
        }
    }

    #[test]
    fn metrics_carry_every_family_and_escape_labels() {
        let text = metrics(&sample()).unwrap();
        for line in [
            "rejoin_clients 1",
            "rejoin_services 2",
            "rejoin_visitors{client=\"home \\\"lab\\\"\",service=\"web\",kind=\"tcp\"} 2",
            "rejoin_visitors{client=\"home \\\"lab\\\"\",service=\"web\",kind=\"udp\"} 5",
            "rejoin_udp_dropped_total{client=\"home \\\"lab\\\"\",service=\"web\",kind=\"udp\"} 3",
            "rejoin_visitors_refused_total{client=\"home \\\"lab\\\"\",service=\"web\",kind=\"tcp\"} 6",
            "rejoin_link_resumes_total{client=\"home \\\"lab\\\"\"} 3",
            "rejoin_logins_refused_total{reason=\"bad_token\"} 4",
            "rejoin_thread_links{thread=\"rj-session-1\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn query_tokens_are_decoded() {
        assert_eq!(percent_decode("a%2Bb%3D%3D+c"), "a+b== c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn only_addresses_pass_without_a_token() {
        for ok in [
            "127.0.0.1:7070",
            "127.0.0.1",
            "localhost:7070",
            "[::1]:7070",
            "10.0.0.5:80",
        ] {
            assert!(host_is_an_address(ok), "{ok}");
        }
        for bad in [
            "evil.example:7070",
            "evil.example",
            "127.0.0.1.evil.example:7070",
            "[::1",
            "",
        ] {
            assert!(!host_is_an_address(bad), "{bad}");
        }
    }

    #[test]
    fn admin_addresses() {
        assert_eq!(
            parse_addr("7070").unwrap(),
            "127.0.0.1:7070".parse().unwrap()
        );
        assert_eq!(parse_addr("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert!(parse_addr("localhost:9").is_err());
    }
}
