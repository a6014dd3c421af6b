//! criterion benchmarks over loopback: the stream with and without RC4, and
//! a tunnel visitor, with `Throughput::Bytes`. (The ratios against direct TCP
//! are in the `e2e` benchmark, which measures both in one run.)

mod common;

use common::{recv_n, send_n};

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rejoin::stream::{self, Config, Listener};
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{Client, ClientConfig, ClientEvent, ServiceConfig};
use rejoin::tunnel::frame::ServiceKind;
use rejoin::tunnel::server::{Server, ServerConfig};
use tokio::net::{TcpListener, TcpStream};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BYTES: u64 = 32 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn stream(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("stream over loopback");
    group.throughput(Throughput::Bytes(BYTES));
    group.sample_size(10);
    for encrypt in [false, true] {
        // One session per setting, reused by every iteration.
        let (mut client, server) = rt.block_on(async {
            let mut config = Config::default();
            config.encrypt = encrypt;
            let listener = Listener::bind("127.0.0.1:0", config.clone())
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("address").to_string();
            let client = stream::connect(addr, config).await.expect("connect");
            let server = listener.accept().await.expect("accept");
            (client, server)
        });
        let name = if encrypt { "rc4" } else { "plain" };
        let mut server = Some(server);
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    // The reader is its own task, as it would be in real use.
                    let mut s = server.take().expect("the server stream");
                    let reading = tokio::spawn(async move {
                        recv_n(&mut s, BYTES).await;
                        s
                    });
                    send_n(&mut client, BYTES).await;
                    server = Some(reading.await.expect("reader"));
                })
            })
        });
    }
    group.finish();
}

fn tunnel(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("tunnel visitor over loopback");
    group.throughput(Throughput::Bytes(BYTES));
    group.sample_size(10);
    for encrypt in [false, true] {
        let (mut visitor, service, _server) = rt.block_on(async {
            let local = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let local_addr = local.local_addr().expect("address");
            let token = Token::new("bench");
            let mut sc =
                ServerConfig::new("127.0.0.1:0".parse().expect("address"), Some(token.clone()));
            sc.stream.encrypt = encrypt;
            let server = Server::bind(sc).await.expect("server");
            let mut cc = ClientConfig::new(server.local_addr().to_string(), token, "bench");
            cc.stream.encrypt = encrypt;
            cc.services.push(ServiceConfig {
                name: "bench".into(),
                kind: ServiceKind::Tcp,
                local: local_addr.to_string(),
                port: 0,
            });
            let (client, mut events) = Client::new(cc);
            tokio::spawn(async move { client.run().await });
            let public = loop {
                if let Some(ClientEvent::Published { public, .. }) = events.recv().await {
                    break public;
                }
            };
            let visitor = TcpStream::connect(&public).await.expect("visitor");
            let (service, _) = local.accept().await.expect("service");
            (visitor, service, server)
        });
        let name = if encrypt {
            "rc4, visitor to service"
        } else {
            "plain, visitor to service"
        };
        let mut service = Some(service);
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut s = service.take().expect("the service socket");
                    let reading = tokio::spawn(async move {
                        recv_n(&mut s, BYTES).await;
                        s
                    });
                    send_n(&mut visitor, BYTES).await;
                    service = Some(reading.await.expect("reader"));
                })
            })
        });
        black_box(&visitor);
    }
    group.finish();
}

criterion_group!(benches, stream, tunnel);
criterion_main!(benches);
