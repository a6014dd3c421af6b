//! The tunnel's behaviour end to end on loopback.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::tunnel::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rejoin::tunnel::auth::{BAD_TOKEN, Token};
use rejoin::tunnel::client::{ClientError, ClientEvent};
use rejoin::tunnel::mux::MuxConfig;
use rejoin::tunnel::server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

/// An HTTP/1.1 server: `GET /<n>/<size>` answers `size` bytes derived from
/// `n`; `POST` echoes the body. Counts the connections it accepted.
async fn http_service() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), hyper::service::service_fn(answer))
                    .await;
            });
        }
    });
    (addr, conns)
}

fn body_for(n: usize, size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 7 + n * 13) as u8).collect()
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() == hyper::Method::POST {
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Ok(Response::new(Full::new(body)));
    }
    let parts: Vec<usize> = req
        .uri()
        .path()
        .split('/')
        .filter_map(|p| p.parse().ok())
        .collect();
    let (n, size) = (
        parts.first().copied().unwrap_or(0),
        parts.get(1).copied().unwrap_or(0),
    );
    Ok(Response::new(Full::new(Bytes::from(body_for(n, size)))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_through_the_tunnel() {
    common::logs();
    let (local, conns) = http_service().await;
    let (_server, _client, public) = tunnel(&[(&local, 0)]).await;

    // Keep-alive: one connection through the tunnel serves request after
    // request (driven by hand, so no client pool decides to open another).
    let visitor = TcpStream::connect(&public[0]).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(visitor))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    for n in 0..150 {
        let size = (n * 997) % 70_000;
        let req = Request::get(format!("/{n}/{size}"))
            .header("host", &public[0])
            .body(Full::new(Bytes::new()))
            .unwrap();
        timeout(LIMIT, sender.ready()).await.unwrap().unwrap();
        let resp = timeout(LIMIT, sender.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], &body_for(n, size)[..], "request {n}");
    }
    drop(sender);
    timeout(LIMIT, conn).await.unwrap().unwrap().unwrap();
    assert_eq!(
        conns.load(Ordering::Relaxed),
        1,
        "150 requests on one kept-alive connection"
    );
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();

    // Not keep-alive: a fresh connection per request, some in parallel.
    let mut tasks = Vec::new();
    for n in 0..100usize {
        let http = http.clone();
        let public = public[0].clone();
        tasks.push(tokio::spawn(async move {
            let body = body_for(n, 3000 + n);
            let req = Request::post(format!("http://{public}/echo"))
                .header("connection", "close")
                .body(Full::new(Bytes::from(body.clone())))
                .unwrap();
            let resp = timeout(LIMIT, http.request(req)).await.unwrap().unwrap();
            assert_eq!(resp.status(), 200);
            let got = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&got[..], &body[..], "post {n}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every closed request needed a connection of its own.
    let total = conns.load(Ordering::Relaxed);
    assert_eq!(total, 101, "one connection per closed request");
}

/// A UDP idle time under a second (every association would end between a
/// request and its reply) is refused by the library itself, at bind and at
/// a reload, not only by the CLI's config file.
#[tokio::test]
async fn a_udp_idle_under_a_second_is_refused_at_bind_and_reload() {
    let mut bad = server_config();
    bad.udp.idle = Duration::from_millis(999);
    let err = Server::bind(bad.clone()).await.err().expect("refused");
    assert!(
        err.to_string().contains("udp_idle must be at least 1s"),
        "{err}"
    );
    let server = Server::bind(server_config()).await.unwrap();
    let err = server.reload(bad).await.unwrap_err();
    assert!(
        err.to_string().contains("udp_idle must be at least 1s"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_and_services_at_once() {
    let server = Server::bind(server_config()).await.unwrap();
    let addr = server.local_addr().to_string();
    let (a, b) = (echo_service().await, echo_service().await);
    let mut one = RunningClient::start(client_config(addr.clone(), "one", &[(&a, 0), (&b, 0)]));
    let mut two = RunningClient::start(client_config(addr.clone(), "two", &[(&a, 0)]));
    let mut public = one.published(2).await;
    public.extend(two.published(1).await);
    for (i, p) in public.iter().enumerate() {
        let mut v = TcpStream::connect(p).await.unwrap();
        let msg = format!("visitor {i}");
        v.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        timeout(LIMIT, v.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
    assert_eq!(server.stats().await.clients, 2);
}

#[tokio::test]
async fn ports_outside_the_rules_are_refused_clearly() {
    let mut sc = server_config();
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let free_port = common::ports::unclaimed_port();
    sc.ports = vec![taken_port..=taken_port, free_port..=free_port];
    let server = Server::bind(sc).await.unwrap();
    let local = echo_service().await;
    let mut client = RunningClient::start(client_config(
        server.local_addr().to_string(),
        "home",
        &[(&local, 1), (&local, taken_port), (&local, free_port)],
    ));
    let mut outcomes = Vec::new();
    while outcomes.len() < 3 {
        match timeout(LIMIT, client.events.recv()).await.unwrap().unwrap() {
            ClientEvent::Published { public, .. } => outcomes.push(Ok(public)),
            ClientEvent::PublishFailed { reason, .. } => outcomes.push(Err(reason)),
            _ => {}
        }
    }
    outcomes.sort();
    assert_eq!(
        outcomes[0],
        Ok(format!("127.0.0.1:{free_port}")),
        "{outcomes:?}"
    );
    let reasons: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("port 1 is not in the server's allowed ports")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("port {taken_port} is taken"))),
        "{reasons:?}"
    );
}

/// Every time, the client learns why: the refusal goes out before the link
/// closes, however the server's tasks are scheduled. (A refusal lost when the
/// mux ended just as its writer finished a write was seen under load; a run
/// of attempts on two threads gives such races a chance to show.)
/// Settings the server's listener was built with cannot change at a
/// reload: a reload that changes one is refused whole, naming it, rather
/// than accepted with no effect; what applies per login does change.
#[tokio::test]
async fn a_reload_refuses_what_only_a_restart_changes() {
    let base = server_config();
    let server = Server::bind(base.clone()).await.unwrap();
    type Change = fn(&mut ServerConfig);
    let changes: [(&str, Change); 4] = [
        ("keep", |c| {
            c.stream.reconnect_wait += Duration::from_secs(1)
        }),
        ("login_failures_per_minute", |c| {
            c.stream.auth_failures_per_minute += 1
        }),
        ("max_sessions", |c| c.stream.max_sessions += 1),
        ("max_pending_logins_per_source", |c| {
            c.max_pending_logins_per_source += 1
        }),
    ];
    for (name, change) in changes {
        let mut sc = base.clone();
        change(&mut sc);
        let e = server.reload(sc).await.expect_err(name);
        assert!(
            e.to_string().contains(&format!("`{name}` cannot change")),
            "{name}: {e}"
        );
    }
    let mut sc = base.clone();
    sc.login_timeout += Duration::from_secs(1);
    sc.max_services += 1;
    server.reload(sc).await.expect("applies to the next logins");
}

/// Pings that cannot work are refused when the server binds or the client
/// starts, with the reason; a year-long timeout once panicked each session.
#[tokio::test]
async fn unworkable_ping_settings_are_refused_up_front() {
    let mut sc = server_config();
    sc.mux.ping_interval = Duration::from_secs(u64::MAX / 4);
    sc.mux.ping_timeout = Duration::from_secs(u64::MAX / 2);
    let e = Server::bind(sc.clone()).await.err().expect("refused");
    assert!(e.to_string().contains("longer than a year"), "{e}");
    // And at a reload.
    let server = Server::bind(server_config()).await.unwrap();
    let e = server.reload(sc).await.expect_err("refused");
    assert!(e.to_string().contains("longer than a year"), "{e}");

    // Queues too small to hold one frame: a stream would wait for ever.
    for (what, change) in [
        (
            "stream_queue",
            (|m| m.stream_queue = 64) as fn(&mut MuxConfig),
        ),
        ("udp_queue", |m| m.udp_queue = 1000),
        ("udp_inbound", |m| m.udp_inbound = 65_507),
    ] {
        let mut sc = server_config();
        change(&mut sc.mux);
        let e = Server::bind(sc).await.err().expect(what);
        assert!(e.to_string().contains(what), "{e}");
    }

    let mut cc = client_config("127.0.0.1:9", "pings", &[]);
    cc.mux.ping_timeout = cc.mux.ping_interval;
    let (client, _events) = rejoin::tunnel::client::Client::new(cc);
    let e = timeout(LIMIT, client.run()).await.expect("at once");
    assert!(
        matches!(&e, Err(ClientError::Config(why)) if why.0.contains("ping_timeout")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_on_both_sides() {
    let mut sc = server_config();
    // Thirty wrong tokens from one address would be throttled after ten.
    sc.stream.auth_failures_per_minute = 0;
    let server = Server::bind(sc).await.unwrap();
    let local = echo_service().await;
    let mut bad = client_config(server.local_addr().to_string(), "mallory", &[(&local, 0)]);
    bad.token = Token::new("not the token");
    for attempt in 0..30 {
        let err = RunningClient::start(bad.clone())
            .outcome()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Refused(r) if r == BAD_TOKEN),
            "attempt {attempt}: {err}"
        );
    }
    assert_eq!(server.stats().await.clients, 0);
    // The server goes on serving others.
    let mut good = RunningClient::start(client_config(
        server.local_addr().to_string(),
        "alice",
        &[(&local, 0)],
    ));
    good.published(1).await;
}

#[tokio::test]
async fn per_client_tokens() {
    let mut sc = server_config();
    sc.token = None;
    sc.clients.insert("alice".into(), Token::new("alice's"));
    let server = Server::bind(sc).await.unwrap();
    let local = echo_service().await;
    let mut alice = client_config(server.local_addr().to_string(), "alice", &[(&local, 0)]);
    alice.token = Token::new("alice's");
    RunningClient::start(alice).published(1).await;
    let mut bob = client_config(server.local_addr().to_string(), "bob", &[(&local, 0)]);
    bob.token = Token::new("alice's");
    let err = RunningClient::start(bob).outcome().await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(r) if r == BAD_TOKEN),
        "{err}"
    );
}

/// A server that cannot prove it knows the token: it answers the link's
/// handshake with a welcome of the right shape that does not open.
#[tokio::test]
async fn a_server_that_cannot_prove_the_token_is_refused() {
    use tokio::io::AsyncReadExt;
    let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = fake.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut io, _) = fake.accept().await.unwrap();
        let mut hello = [0u8; 64];
        let _ = io.read(&mut hello).await;
        let mut welcome = vec![89, 0];
        welcome.extend_from_slice(&[0x5a; 89]);
        io.write_all(&welcome).await.unwrap();
        let _ = io.read(&mut hello).await;
    });
    let local = echo_service().await;
    let err = RunningClient::start(client_config(addr, "home", &[(&local, 0)]))
        .outcome()
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::ServerUnproven), "{err}");
}

/// A client process that dies without a goodbye and starts again gets its
/// ports back at once: the new session replaces the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_replaces_its_old_session() {
    use rejoin::chaos::CutKind;
    let server = Server::bind(server_config()).await.unwrap();
    let local = echo_service().await;
    // The first client reaches the server through a proxy, so that it can
    // die silently: its machine gone, no FIN and no RST.
    let proxy = proxy_to(&server, Default::default()).await;
    let mut first = RunningClient::start(client_config(
        proxy.local_addr().to_string(),
        "home",
        &[(&local, 0)],
    ));
    let public = first.published(1).await;
    assert_eq!(proxy.cut_all(CutKind::Silent), 1);
    first.task.abort();
    drop(first);
    // The server still holds the session and the port; the restarted
    // client's login finds the old link silent (no answer to a ping),
    // replaces it, and gets the same public port back.
    let mut second = RunningClient::start(client_config(
        server.local_addr().to_string(),
        "home",
        &[(&local, 0)],
    ));
    assert_eq!(second.published(1).await, public);
    let mut v = TcpStream::connect(&public[0]).await.unwrap();
    v.write_all(b"again").await.unwrap();
    let mut buf = [0u8; 5];
    timeout(LIMIT, v.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"again");
    assert_eq!(server.stats().await.clients, 1);
}

/// While the link is down the server keeps the session, its ports and its
/// visitors; after the keep time it releases them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_client_is_kept_then_released() {
    use rejoin::chaos::CutKind;
    common::logs();
    let mut sc = server_config();
    sc.stream.reconnect_wait = Duration::from_secs(2);
    let server = Server::bind(sc).await.unwrap();
    let proxy = proxy_to(&server, Default::default()).await;
    let local = echo_service().await;
    let mut client = RunningClient::start(client_config(
        proxy.local_addr().to_string(),
        "home",
        &[(&local, 0)],
    ));
    let public = client.published(1).await;
    let mut visitor = TcpStream::connect(&public[0]).await.unwrap();
    visitor.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    visitor.read_exact(&mut buf).await.unwrap();

    // The client vanishes: its link is cut and it never comes back (cut
    // first: a dropped client says goodbye if it still can).
    proxy.cut_all(CutKind::Reset);
    drop(proxy);
    client.task.abort();
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.stats().await.clients, 1, "kept");
    assert!(TcpStream::connect(&public[0]).await.is_ok(), "port kept");

    // After reconnect_wait everything is released.
    let mut rest = Vec::new();
    let closed = timeout(Duration::from_secs(10), visitor.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "visitor closed after the keep time");
    for _ in 0..100 {
        if server.stats().await.clients == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.stats().await.clients, 0);
    assert!(
        TcpStream::connect(&public[0]).await.is_err(),
        "port released"
    );
}

/// A goodbye ends the session at once: ports close without waiting for any
/// timeout.
#[tokio::test]
async fn goodbye_closes_at_once() {
    let mut sc = server_config();
    sc.stream.reconnect_wait = Duration::from_secs(600);
    let server = Server::bind(sc).await.unwrap();
    let local = echo_service().await;
    let mut client = RunningClient::start(client_config(
        server.local_addr().to_string(),
        "home",
        &[(&local, 0)],
    ));
    let public = client.published(1).await;
    client.stop.stop();
    timeout(LIMIT, &mut client.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    for _ in 0..100 {
        if server.stats().await.clients == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.stats().await.clients, 0);
    assert!(TcpStream::connect(&public[0]).await.is_err(), "port closed");

    // And the server's goodbye reaches clients the same way.
    let mut client = RunningClient::start(client_config(
        server.local_addr().to_string(),
        "home",
        &[(&local, 0)],
    ));
    client.published(1).await;
    server.shutdown("maintenance").await;
    let down = timeout(LIMIT, async {
        loop {
            if let Some(ClientEvent::SessionDown { reason }) = client.events.recv().await {
                return reason;
            }
        }
    })
    .await
    .unwrap();
    assert!(down.contains("maintenance"), "{down}");
    // And takes no new link, nor a resume: its port is closed.
    let closed = timeout(LIMIT, async {
        while TcpStream::connect(server.local_addr()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the server's port closed");
}

#[tokio::test]
async fn a_dead_local_service_resets_the_visitor() {
    let dead = dead_address().await;
    let (_server, _client, public) = tunnel(&[(&dead, 0)]).await;
    let mut v = TcpStream::connect(&public[0]).await.unwrap();
    let _ = v.write_all(b"anyone?").await;
    let mut buf = [0u8; 16];
    let r = timeout(LIMIT, v.read(&mut buf)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "closed, not hanging: {r:?}");
}

/// The keepalive timer of the IPv4 TCP socket from `local` to `remote`, in
/// seconds to its next expiry, from /proc/net/tcp; `None` if the socket has
/// no keepalive timer armed (or is not there).
fn keepalive_timer(local: std::net::SocketAddr, remote: std::net::SocketAddr) -> Option<f64> {
    let hex = |a: std::net::SocketAddr| match a {
        std::net::SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        ),
        std::net::SocketAddr::V6(_) => unreachable!("IPv4 only"),
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != l || f[2] != r {
            return None;
        }
        // "tr:when": timer 2 is keepalive; when in clock ticks (USER_HZ 100).
        let (tr, when) = f[5].split_once(':')?;
        (tr == "02").then(|| u64::from_str_radix(when, 16).ok().map(|t| t as f64 / 100.0))?
    })
}

/// Both ends a bridge copies between keep their TCP connection alive: the
/// visitor's connection at the server and the client's connection to the
/// local service probe an idle peer (after 60 s of silence), so one that
/// vanished without a word is found and its stream ended, instead of held
/// for ever. Read from the kernel's own socket table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_connections_keep_alive() {
    let server = Server::bind(server_config()).await.unwrap();
    let service = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let service_addr = service.local_addr().unwrap();
    let mut client = RunningClient::start(client_config(
        server.local_addr().to_string(),
        "keepalive",
        &[(&service_addr.to_string(), 0)],
    ));
    let public: std::net::SocketAddr = client.published(1).await[0].parse().unwrap();
    let mut visitor = TcpStream::connect(public).await.unwrap();
    let (mut served, from_client) = timeout(LIMIT, service.accept()).await.unwrap().unwrap();
    visitor.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    timeout(LIMIT, served.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let visitor_addr = visitor.local_addr().unwrap();
    // The server's socket to the visitor, and the client's to the service.
    for (what, local, remote) in [
        (
            "the visitor's connection at the server",
            public,
            visitor_addr,
        ),
        (
            "the client's connection to the service",
            from_client,
            service_addr,
        ),
    ] {
        let timer = keepalive_timer(local, remote);
        assert!(
            timer.is_some_and(|t| t > 30.0 && t <= 61.0),
            "{what}: keepalive timer {timer:?}"
        );
    }
    // The test's own sockets, which set nothing, have none: the check can
    // tell.
    assert_eq!(keepalive_timer(visitor_addr, public), None);
    drop(visitor);
    client.stop.stop();
}
