//! Starting tunnels, local services and visitors for the tunnel tests.

use std::net::SocketAddr;
use std::time::Duration;

use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{
    Client, ClientConfig, ClientError, ClientEvent, ClientHandle, ServiceConfig,
};
use rejoin::tunnel::frame::ServiceKind;
use rejoin::tunnel::server::{Server, ServerConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

pub const LIMIT: Duration = Duration::from_secs(60);

pub fn token() -> Token {
    Token::new("correct horse battery staple")
}

/// Short timers, so dead links are found within a couple of seconds.
pub fn fast(client: &mut ClientConfig) {
    client.stream.idle_timeout = Some(Duration::from_millis(1500));
    client.stream.user_timeout = Some(Duration::from_secs(2));
    client.stream.redial.initial = Duration::from_millis(20);
    client.stream.redial.max = Duration::from_millis(200);
    client.mux.ping_interval = Duration::from_millis(300);
    client.mux.ping_timeout = Duration::from_millis(1500);
    client.retry.initial = Duration::from_millis(20);
    client.retry.max = Duration::from_millis(200);
}

pub fn fast_server(server: &mut ServerConfig) {
    server.stream.idle_timeout = Some(Duration::from_millis(1500));
    server.stream.user_timeout = Some(Duration::from_secs(2));
    server.mux.ping_interval = Duration::from_millis(300);
    server.mux.ping_timeout = Duration::from_millis(1500);
}

/// As `rejoin server` runs: each link on a thread of the server's own.
pub fn server_config() -> ServerConfig {
    let mut c = ServerConfig::new("127.0.0.1:0".parse().unwrap(), Some(token()));
    fast_server(&mut c);
    c.stream.threads = 2;
    c
}

pub fn client_config(
    server: impl Into<String>,
    name: &str,
    services: &[(&str, u16)],
) -> ClientConfig {
    let mut c = ClientConfig::new(server, token(), name);
    fast(&mut c);
    for (local, port) in services {
        c.services.push(ServiceConfig {
            name: local.to_string(),
            kind: ServiceKind::Tcp,
            local: local.to_string(),
            port: *port,
        });
    }
    c
}

/// A running client.
pub struct RunningClient {
    pub events: mpsc::UnboundedReceiver<ClientEvent>,
    pub stop: ClientHandle,
    pub task: JoinHandle<Result<(), ClientError>>,
}

impl RunningClient {
    /// Starts `config` over TCP.
    pub fn start(config: ClientConfig) -> Self {
        let (client, events) = Client::new(config);
        let stop = client.handle();
        let task = tokio::spawn(async move { client.run().await });
        RunningClient { events, stop, task }
    }

    /// Starts `config` with a custom dialer.
    pub fn start_with<D: rejoin::stream::Dialer + Clone>(config: ClientConfig, dialer: D) -> Self {
        let (client, events) = Client::new(config);
        let stop = client.handle();
        let task = tokio::spawn(async move { client.run_with(dialer).await });
        RunningClient { events, stop, task }
    }

    /// Waits for the client to stop, and says how it ended.
    pub async fn outcome(mut self) -> Result<(), ClientError> {
        timeout(LIMIT, &mut self.task)
            .await
            .expect("client stopped in time")
            .expect("client task did not panic")
    }

    /// The public addresses of the first `n` services to go live, in the
    /// order they went live.
    pub async fn published(&mut self, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        while out.len() < n {
            match timeout(LIMIT, self.events.recv())
                .await
                .expect("published in time")
            {
                Some(ClientEvent::Published { public, .. }) => out.push(public),
                Some(ClientEvent::PublishFailed { reason, local, .. }) => {
                    panic!("{local} not published: {reason}")
                }
                Some(_) => {}
                None => panic!("client ended: {:?}", (&mut self.task).await),
            }
        }
        out
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server and one client publishing `services`; returns their public
/// addresses too.
pub async fn tunnel(services: &[(&str, u16)]) -> (Server, RunningClient, Vec<String>) {
    let server = Server::bind(server_config()).await.unwrap();
    let mut client = RunningClient::start(client_config(
        server.local_addr().to_string(),
        "home",
        services,
    ));
    let public = client.published(services.len()).await;
    (server, client, public)
}

/// A TCP service that echoes everything, half-closes when the visitor does.
pub async fn echo_service() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A local address nothing listens on.
pub async fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a: SocketAddr = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

/// A link-cutting proxy in front of `server`, with `config`.
pub async fn proxy_to(
    server: &Server,
    config: rejoin::chaos::ProxyConfig,
) -> rejoin::chaos::CutProxy {
    rejoin::chaos::CutProxy::start("127.0.0.1:0".parse().unwrap(), server.local_addr(), config)
        .await
        .unwrap()
}
