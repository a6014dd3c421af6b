//! The tunnel end to end on loopback: login, publishing, visitors.

mod common;

use std::time::Duration;

use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{Client, ClientConfig, ClientEvent, ServiceConfig};
use rejoin::tunnel::frame::ServiceKind;
use rejoin::tunnel::server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

async fn echo_service() -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_reaches_the_local_service() {
    common::logs();
    let local = echo_service().await;
    let token = Token::new("s3cret");
    let server = Server::bind(ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(token.clone()),
    ))
    .await
    .unwrap();
    let mut config = ClientConfig::new(server.local_addr().to_string(), token, "home");
    config.services.push(ServiceConfig {
        name: "echo".into(),
        kind: ServiceKind::Tcp,
        local: local.clone(),
        port: 0,
    });
    let (client, mut events) = Client::new(config);
    let running = tokio::spawn(async move { client.run().await });
    let public = loop {
        match timeout(LIMIT, events.recv()).await.unwrap().unwrap() {
            ClientEvent::Published { public, .. } => break public,
            ClientEvent::SessionUp => {}
            other => panic!("{other:?}"),
        }
    };
    let mut visitor = TcpStream::connect(&public).await.unwrap();
    visitor
        .write_all(b"hello through the tunnel")
        .await
        .unwrap();
    let mut buf = [0u8; 24];
    timeout(LIMIT, visitor.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello through the tunnel");
    visitor.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(LIMIT, visitor.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty());
    running.abort();
}
