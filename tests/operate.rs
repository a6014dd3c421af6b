//! Operating the tunnel through the real binary: the admin endpoint, reload
//! on SIGHUP, names, failures you can see, logs, `rejoin check`.

#[path = "common/examples.rs"]
mod examples;
#[path = "common/ports.rs"]
mod ports;
#[path = "common/procs.rs"]
mod procs;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use examples::cut_proxy;
use ports::unclaimed_port;
use procs::{Proc, Scratch, echo_service};

const TOKEN: &str = "op-token-5d1e";

/// A GET over plain HTTP/1.1; the status code and body.
fn get(admin: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let host = admin.trim_start_matches("http://");
    let mut s = TcpStream::connect(host).expect("admin endpoint reachable");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).expect("a reply");
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let code = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    // hyper may answer chunked; undo it.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    (code, body)
}

/// The line that starts with `prefix`, among the next few.
fn line_with(p: &Proc, prefix: &str) -> String {
    for _ in 0..10 {
        let line = p.line();
        if line.starts_with(prefix) {
            return line;
        }
    }
    panic!("no line starting with {prefix:?}");
}

fn start_server(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["server", "--listen", "127.0.0.1:0", "--token", TOKEN];
    args.extend_from_slice(extra);
    let server = Proc::start(&args, None);
    let addr = line_with(&server, "listening on ").replace("listening on ", "");
    (server, addr)
}

/// Echoes `n` bytes through `public` and checks them.
/// A `rejoin client` named `name` publishing `local`; and where it is published.
fn start_client(server: &str, name: &str, local: &str) -> (Proc, String) {
    start_client_with(server, name, local, &[])
}

/// [`start_client`] with more flags.
fn start_client_with(server: &str, name: &str, local: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "client", "--server", server, "--token", TOKEN, "--name", name, "--tcp", local,
    ];
    args.extend_from_slice(extra);
    let client = Proc::start(&args, None);
    let public = line_with(&client, "tcp ")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    (client, public)
}

fn echo(public: &str, n: usize) {
    let mut v = TcpStream::connect(public).expect("visitor connects");
    v.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let data: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
    let writer = {
        let mut w = v.try_clone().unwrap();
        let data = data.clone();
        std::thread::spawn(move || w.write_all(&data))
    };
    let mut back = vec![0u8; n];
    v.read_exact(&mut back).expect("echo comes back");
    writer.join().unwrap().unwrap();
    assert!(back == data, "echoed bytes differ");
}

fn metrics(admin: &str) -> prometheus_parse::Scrape {
    let (code, body) = get(admin, "/metrics", None);
    assert_eq!(code, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("a Prometheus text exposition")
}

/// The value of the first sample of `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

/// Waits (bounded) until `check` holds.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn the_admin_endpoint_reports_what_happens() {
    let echo_addr = echo_service();
    let echo_port = echo_addr.rsplit(':').next().unwrap().to_string();
    let (server, addr) = start_server(&["--admin", "127.0.0.1:0"]);
    let admin = line_with(&server, "admin at ").replace("admin at ", "");
    assert!(admin.starts_with("http://127.0.0.1:"), "{admin}");
    // The client's link goes through a proxy that cuts it every ~600 KB.
    let (_proxy, via) = cut_proxy(&addr, "500000-700000");
    let client = Proc::start(
        &[
            "client", "--server", &via, "--token", TOKEN, "--name", "office", "--tcp",
            // A bare port means 127.0.0.1.
            &echo_port, "--admin", "0",
        ],
        None,
    );
    let client_admin = line_with(&client, "admin at ").replace("admin at ", "");
    let published = line_with(&client, "tcp ");
    assert!(published.contains("published at"), "{published}");
    let public = published.rsplit(' ').next().unwrap().to_string();

    let before = metrics(&admin);
    assert_eq!(sample(&before, "rejoin_clients", &[]), 1.0);
    assert_eq!(sample(&before, "rejoin_services", &[]), 1.0);
    assert_eq!(
        sample(&before, "rejoin_link_up", &[("client", "office")]),
        1.0
    );
    assert_eq!(
        sample(
            &before,
            "rejoin_link_resumes_total",
            &[("client", "office")]
        ),
        0.0
    );
    // 3 MB each way through the cut link: it resumes several times.
    echo(&public, 3_000_000);
    let after = metrics(&admin);
    let to_service = sample(
        &after,
        "rejoin_bytes_total",
        &[("client", "office"), ("direction", "to_service")],
    );
    assert!(to_service >= 3_000_000.0, "{to_service}");
    let resumes = sample(&after, "rejoin_link_resumes_total", &[("client", "office")]);
    assert!(resumes >= 1.0, "the proxy cut the link: {resumes}");
    let resent = sample(
        &after,
        "rejoin_link_resent_bytes_total",
        &[("client", "office")],
    );
    assert!(resent > 0.0, "{resent}");
    for reason in ["bad_token", "unknown_client", "name_in_use", "timeout"] {
        assert_eq!(
            sample(&after, "rejoin_logins_refused_total", &[("reason", reason)]),
            0.0
        );
    }
    // The echo's visitor is gone once its stream has closed both ways
    // (through the cut link, that can take a resume): wait for it, so that
    // it cannot pass for the next one.
    eventually("the echo's visitor no longer counted", || {
        sample(&metrics(&admin), "rejoin_visitors", &[("client", "office")]) == 0.0
    });
    // A visitor that stays: counted while it is there.
    let stay = TcpStream::connect(&public).unwrap();
    eventually("a visitor counted", || {
        sample(&metrics(&admin), "rejoin_visitors", &[("client", "office")]) == 1.0
    });
    // The client's side names the same things.
    let mine = metrics(&client_admin);
    assert!(
        sample(
            &mine,
            "rejoin_bytes_total",
            &[("client", "office"), ("direction", "to_visitors")]
        ) >= 3_000_000.0
    );
    assert_eq!(
        sample(&mine, "rejoin_link_up", &[("client", "office")]),
        1.0
    );

    // The same facts as JSON.
    let (code, json) = get(&admin, "/api/status", None);
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(status["role"], "server");
    let office = &status["clients"][0];
    assert_eq!(office["name"], "office");
    assert_eq!(office["link_up"], true);
    assert!(office["resumes"].as_u64().unwrap() >= 1);
    assert!(office["last_resume"].as_u64().is_some());
    assert_eq!(office["services"][0]["public"], public.as_str());
    assert_eq!(office["services"][0]["visitors"], 1);
    // The thread its link runs on, and the count of links on that thread.
    let thread = office["thread"].as_str().expect("a link thread");
    assert!(thread.starts_with("rj-session-"), "{thread}");
    assert_eq!(
        sample(
            &metrics(&admin),
            "rejoin_thread_links",
            &[("thread", thread)]
        ),
        1.0
    );

    // `rejoin status` prints it as tables.
    for (endpoint, role) in [(&admin, "server"), (&client_admin, "client")] {
        let out = Command::new(env!("CARGO_BIN_EXE_rejoin"))
            .args(["status", "--admin", endpoint])
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(&format!("rejoin {role} ")), "{text}");
        assert!(text.contains("CLIENT") && text.contains("office"), "{text}");
        if role == "server" {
            // Which thread carries the client's link.
            assert!(text.contains("THREAD") && text.contains(thread), "{text}");
        }
        let service_row = text
            .lines()
            .find(|l| l.contains(&public))
            .unwrap_or_else(|| panic!("a row for {public}: {text}"));
        assert!(service_row.contains("published"), "{service_row}");
    }
    // And says clearly when nothing is there.
    let out = Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["status", "--admin", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot reach the admin endpoint at 127.0.0.1:9")
    );
    drop(stay);
    // The page itself is served (the browser test looks at it).
    let (code, page) = get(&admin, "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("<title>rejoin status</title>"));
    assert_eq!(get(&admin, "/nothing", None).0, 404);
}

/// Without a token the endpoint answers only requests that name it by IP
/// or as localhost: a page that rebinds its own domain to 127.0.0.1 gets
/// nothing. Connections that hold its slots without asking anything give
/// them up to a newcomer, so a scrape is answered through such a flood.
#[test]
fn the_admin_endpoint_resists_rebinding_and_floods() {
    let (server, _) = start_server(&["--admin", "0"]);
    let admin = line_with(&server, "admin at ").replace("admin at ", "");
    let host = admin.trim_start_matches("http://").to_string();
    let ask = |host_header: &str| {
        let mut s = TcpStream::connect(&host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /api/status HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    };
    assert!(
        ask("evil.example:7070").starts_with("HTTP/1.1 403"),
        "a name is refused"
    );
    assert!(ask(&host).starts_with("HTTP/1.1 200"));
    assert!(ask(&host.replace("127.0.0.1", "localhost")).starts_with("HTTP/1.1 200"));
    // 40 connections that send nothing, or half a request (more than its
    // 32 slots), 8 more before every scrape: each scrape is answered at
    // its first try, the silent ones making room.
    let mut idle: Vec<TcpStream> = Vec::new();
    let mut hold = |n: usize| {
        for i in 0..n {
            if let Ok(mut s) = TcpStream::connect(&host) {
                if i % 2 == 0 {
                    let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: {host}\r\n");
                }
                idle.push(s);
            }
        }
        // Let the server take them up before the scrape.
        std::thread::sleep(Duration::from_millis(100));
    };
    hold(40);
    let mut codes = Vec::new();
    for _ in 0..5 {
        hold(8);
        codes.push(get_or_refused(&admin, "/metrics").0);
    }
    assert_eq!(codes, [200; 5], "every scrape answered at once");
    drop(idle);
}

/// Like `get`, but a connection refused or reset counts as code 0.
fn get_or_refused(admin: &str, path: &str) -> (u16, String) {
    let host = admin.trim_start_matches("http://");
    let Ok(mut s) = TcpStream::connect(host) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return (0, String::new());
    }
    let mut reply = String::new();
    if s.read_to_string(&mut reply).is_err() {
        return (0, reply);
    }
    let code = reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, reply)
}

#[test]
fn an_admin_token_is_required_when_set() {
    // Spaces around it are not part of it (HTTP trims a header's value:
    // kept, the token could never be presented).
    let (server, _) = start_server(&["--admin", "0", "--admin-token", " adm1n "]);
    let admin = line_with(&server, "admin at ").replace("admin at ", "");
    assert_eq!(get(&admin, "/metrics", None).0, 401);
    assert_eq!(get(&admin, "/api/status", Some("wrong")).0, 401);
    assert_eq!(get(&admin, "/metrics", Some("adm1n")).0, 200);
    assert_eq!(get(&admin, "/?token=adm1n", None).0, 200);
    let out = Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["status", "--admin", &admin])
        .env_remove("REJOIN_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --admin-token"));
    let out = Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["status", "--admin", &admin, "--admin-token", "adm1n"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bad admin setting stops the start before the tunnel is bound or
/// anything is printed (before, the server printed `listening on` and its
/// key, then exited).
#[test]
fn a_bad_admin_token_stops_the_start_before_anything_is_printed() {
    let mut server = Proc::start(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--admin",
            "0",
            "--admin-token",
            "   ",
        ],
        None,
    );
    assert_eq!(server.exit_code(), Some(78));
    assert!(
        server.stderr().contains("the admin token is empty"),
        "{}",
        server.stderr()
    );
    assert_eq!(server.printed(), Vec::<String>::new());
}

/// A second client with a name a live client holds is refused and exits
/// non-zero; the first keeps serving. A client whose process died is
/// replaced at once, and the new one gets the old public port back.
#[test]
fn names_are_held_by_live_clients() {
    let echo_addr = echo_service();
    let (_server, addr) = start_server(&[]);
    let first_args = [
        "client", "--server", &addr, "--token", TOKEN, "--name", "shared", "--tcp", &echo_addr,
    ];
    let mut first = Proc::start(&first_args, None);
    let public = line_with(&first, "tcp ")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    for attempt in 0..3 {
        let mut second = Proc::start(&first_args, None);
        assert!(
            !second.wait(),
            "attempt {attempt}: the second client exits non-zero"
        );
        let err = second.stderr();
        assert!(
            err.contains("in use") && err.contains("by a live client at 127.0.0.1:"),
            "{err}"
        );
        assert!(err.contains("--name"), "says what to do: {err}");
        echo(&public, 10_000);
    }
    // The first client dies without a goodbye; its restart takes over at
    // once, on the same public port.
    first.signal("-KILL");
    first.wait();
    let restarted = Proc::start(&first_args, None);
    let again = line_with(&restarted, "tcp ");
    assert!(
        again.ends_with(&format!(" published at {public}")),
        "{again} vs {public}"
    );
    echo(&public, 10_000);
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// SIGHUP on the client adds and removes services; a visitor of a service
/// that stays keeps its connection. A broken file changes nothing.
#[test]
fn sighup_reloads_the_client_services() {
    let echo_addr = echo_service();
    let (_server, addr) = start_server(&[]);
    let dir = Scratch::new("reload-client");
    let config = dir.join("client.toml");
    let head = format!("server = \"{addr}\"\ntoken = \"the flag's wins\"\nname = \"reloader\"\n");
    let service = |name: &str| format!("[[service]]\nname = \"{name}\"\nlocal = \"{echo_addr}\"\n");
    write(
        &config,
        &(head.clone() + &service("keep") + &service("drop")),
    );
    // The token from --token-file, read once: the file is gone before the
    // reloads (as a pipe, `<(pass show …)`, is empty when read again).
    let token_file = dir.join("token");
    write(&token_file, TOKEN);
    let client = Proc::start(
        &[
            "client",
            "--config",
            config.to_str().unwrap(),
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        None,
    );
    let mut lines = vec![client.line(), client.line()];
    std::fs::remove_file(&token_file).unwrap();
    lines.sort();
    assert!(
        lines[0].starts_with("drop: tcp ") && lines[1].starts_with("keep: tcp "),
        "{lines:?}"
    );
    let public = |line: &str| line.rsplit(' ').next().unwrap().to_string();
    let (dropped, kept) = (public(&lines[0]), public(&lines[1]));

    // A visitor of `keep`, mid-conversation across the reload.
    let mut visitor = TcpStream::connect(&kept).unwrap();
    visitor
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 5];
    visitor.write_all(b"one..").unwrap();
    visitor.read_exact(&mut buf).unwrap();

    write(
        &config,
        &(head.clone() + &service("keep") + &service("added")),
    );
    client.signal("-HUP");
    let mut lines = vec![client.line(), client.line()];
    lines.sort();
    assert!(
        lines[0].starts_with("added: tcp ") && lines[0].contains("published at"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "drop: removed");
    echo(&public(&lines[0]), 50_000);
    eventually("the removed service's port closes", || {
        TcpStream::connect(&dropped).is_err()
    });
    visitor.write_all(b"two..").unwrap();
    visitor.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"two..", "the kept service's visitor is untouched");

    // A tuning knob changed: it needs a restart, so the reload is refused
    // whole and says so (before, it said "config reloaded" and applied
    // nothing of it). So does the link's socket size (its sockets are set up
    // as it dials).
    for (setting, named) in [
        (
            "ping_interval = \"2s\"\n",
            "`ping_interval, ping_timeout, max_window, window_budget or inbound_budget` cannot change",
        ),
        (
            "socket_buffer = \"64KiB\"\n",
            "`socket_buffer` cannot change",
        ),
    ] {
        write(
            &config,
            &(head.clone() + setting + &service("keep") + &service("added")),
        );
        client.signal("-HUP");
        assert!(client.await_stderr(named), "{}", client.stderr());
    }

    // A broken file: reported with its line; everything stays.
    write(
        &config,
        &(head + "[[service]]\nlocal = \"nowhere\"\nprot = 1\n"),
    );
    client.signal("-HUP");
    // (Its report names the line; the refusal above does not.)
    assert!(client.await_stderr("line "), "{}", client.stderr());
    assert!(
        client
            .stderr()
            .contains("reload failed, the old config stays in force"),
        "{}",
        client.stderr()
    );
    visitor.write_all(b"three").unwrap();
    visitor.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"three");
    echo(&kept, 10_000);
}

/// SIGHUP on the server: a new token works at once, a client whose token
/// went away is told goodbye, a broken file (or a token file that is a
/// device, a key file gone, a changed admin token) changes nothing, and SIGHUP on a server
/// without a file does not end it.
#[test]
fn sighup_reloads_the_server_tokens() {
    let echo_addr = echo_service();
    let dir = Scratch::new("reload-server");
    let config = dir.join("server.toml");
    write(
        &config,
        "listen = \"127.0.0.1:0\"\n[clients.alice]\ntoken = \"a-1\"\n",
    );
    let server = Proc::start(&["server", "--config", config.to_str().unwrap()], None);
    let addr = line_with(&server, "listening on ").replace("listening on ", "");
    let client = |name: &str, token: &str| {
        Proc::start(
            &[
                "client", "--server", &addr, "--token", token, "--name", name, "--tcp", &echo_addr,
            ],
            None,
        )
    };
    let alice = client("alice", "a-1");
    line_with(&alice, "tcp ");
    // The server names the thread alice's link runs on (one per CPU).
    assert!(
        server.await_stderr("client session up") && server.stderr().contains("thread=rj-session-"),
        "{}",
        server.stderr()
    );
    let mut bob = client("bob", "b-1");
    assert!(!bob.wait(), "bob has no token yet");

    // `listen` stays as written at start (port 0: the port it got).
    write(
        &config,
        "listen = \"127.0.0.1:0\"\n[clients.alice]\ntoken = \"a-2\"\n[clients.bob]\ntoken = \"b-1\"\n",
    );
    server.signal("-HUP");
    assert!(
        server.await_stderr("config reloaded"),
        "{}",
        server.stderr()
    );
    assert!(
        alice.await_stderr("the server's token for this client changed"),
        "{}",
        alice.stderr()
    );
    let bob = client("bob", "b-1");
    line_with(&bob, "tcp ");

    write(
        &config,
        "listen = \"127.0.0.1:0\"\n[clients.bob]\ntoken = 7\n",
    );
    server.signal("-HUP");
    assert!(server.await_stderr("reload failed, the old config stays in force"));
    assert!(server.stderr().contains("line 3"), "{}", server.stderr());
    let carol = client("bob", "b-1");
    assert!(carol.await_stderr("in use"), "bob's entry still stands");

    // The admin endpoint is set up once: a changed admin token (say, a
    // leaked one rotated) is refused rather than silently not applied.
    write(
        &config,
        "listen = \"127.0.0.1:0\"\nadmin_token = \"new\"\n[clients.alice]\ntoken = \"a-2\"\n[clients.bob]\ntoken = \"b-1\"\n",
    );
    server.signal("-HUP");
    assert!(
        server.await_stderr("cannot change while running"),
        "{}",
        server.stderr()
    );
    // So are the size of its sockets and its threads for links (the
    // listeners are set up once; the default is one thread per CPU).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (field, line) in [
        ("socket_buffer", "socket_buffer = \"64KiB\"".to_string()),
        ("threads", format!("threads = {}", cpus + 1)),
    ] {
        write(
            &config,
            &format!(
                "listen = \"127.0.0.1:0\"\n{line}\n[clients.alice]\ntoken = \"a-2\"\n[clients.bob]\ntoken = \"b-1\"\n"
            ),
        );
        server.signal("-HUP");
        assert!(
            server.await_stderr(&format!("`{field}` cannot change while running")),
            "{}",
            server.stderr()
        );
    }

    // A token file that is a device, a FIFO nobody writes, and a key file
    // that went missing: each reload is refused (no endless read of
    // /dev/zero, no signal loop hung on the FIFO), and no new key is written
    // in the missing one's place.
    write(
        &config,
        "listen = \"127.0.0.1:0\"\n[clients.bob]\ntoken_file = \"/dev/zero\"\n",
    );
    server.signal("-HUP");
    assert!(
        server.await_stderr("larger than 65536 bytes"),
        "{}",
        server.stderr()
    );
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    write(
        &config,
        &format!(
            "listen = \"127.0.0.1:0\"\n[clients.bob]\ntoken_file = {:?}\n",
            fifo.to_str().unwrap()
        ),
    );
    server.signal("-HUP");
    assert!(
        server.await_stderr("took longer than 5s"),
        "{}",
        server.stderr()
    );
    // While that read is stuck, another SIGHUP starts no second one.
    server.signal("-HUP");
    assert!(
        server.await_stderr("still reading its files"),
        "{}",
        server.stderr()
    );
    // A writer comes and goes: the stuck read ends.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    write(
        &config,
        "listen = \"127.0.0.1:0\"\n[clients.alice]\ntoken = \"a-2\"\n[clients.bob]\ntoken = \"b-1\"\n",
    );
    let key = config.with_extension("key");
    std::fs::remove_file(&key).expect("the key file made at the start");
    server.signal("-HUP");
    assert!(
        server.await_stderr("cannot read the server key"),
        "{}",
        server.stderr()
    );
    assert!(!key.exists(), "no new key on a reload");
    let dave = client("bob", "b-1");
    assert!(dave.await_stderr("in use"), "the old config still stands");

    // A server started with flags only: SIGHUP is not its end.
    let (flags_only, _) = start_server(&[]);
    flags_only.signal("-HUP");
    assert!(flags_only.await_stderr("no config file to reload"));
    std::thread::sleep(Duration::from_millis(200));
    let mut flags_only = flags_only;
    assert!(
        flags_only.child.0.try_wait().unwrap().is_none(),
        "still running"
    );
    flags_only.terminate();
    assert!(flags_only.wait());
}

/// Waits (bounded) until `p` has a thread named `name` (Linux: its
/// `/proc/PID/task/*/comm`).
fn await_thread(p: &Proc, name: &str) -> bool {
    let tasks = format!("/proc/{}/task", p.child.0.id());
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let named = std::fs::read_dir(&tasks)
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
            });
        if named {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_token_file_that_is_a_fifo_never_hangs_the_start() {
    let dir = Scratch::new("fifo-start");
    let fifo = dir.join("token");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let fifo_arg = fifo.to_str().unwrap();

    // A process started with it, once it is reading it.
    let reading = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--token-file", fifo_arg]);
        let p = Proc::start(&args, None);
        assert!(await_thread(&p, "start"), "{}", p.stderr());
        p
    };
    let server_args = ["server", "--listen", "127.0.0.1:0"];

    // Nobody writes it: SIGHUP is not the end, SIGTERM and Ctrl-C are.
    let mut server = reading(&server_args);
    server.signal("-HUP");
    assert!(
        server.await_stderr("SIGHUP ignored: still reading the files at the start"),
        "{}",
        server.stderr()
    );
    server.terminate();
    assert!(server.wait(), "{}", server.stderr());
    assert!(
        server
            .stderr()
            .contains("stopped while still reading the files at the start")
    );
    let mut client = reading(&["client", "--server", "127.0.0.1:9", "--tcp", "127.0.0.1:9"]);
    client.interrupt();
    assert!(client.wait(), "{}", client.stderr());

    // Written a while after the start (`<(pass show …)` waiting for its
    // passphrase): the server starts with that token.
    let (mut server, addr) = {
        let server = reading(&server_args);
        std::thread::sleep(Duration::from_millis(200));
        // On a thread: opening a FIFO to write waits for its reader.
        let (wrote, written) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let opened = std::fs::OpenOptions::new().write(true).open(&path);
            let _ = wrote.send(opened.and_then(|mut w| writeln!(w, "{TOKEN}")));
        });
        let written = written.recv_timeout(Duration::from_secs(30));
        assert!(matches!(written, Ok(Ok(()))), "{}", server.stderr());
        let addr = line_with(&server, "listening on ").replace("listening on ", "");
        (server, addr)
    };
    let (mut client, public) = start_client(&addr, "late", &echo_service());
    echo(&public, 1000);
    client.terminate();
    server.terminate();
    assert!(client.wait() && server.wait());
}

/// A dead local service, every service refused, a server that is not there
/// yet: each is visible, and ends the client only when retrying cannot help.
#[test]
fn failures_are_visible() {
    let (_server, addr) = start_server(&["--ports", "20000-20100"]);
    // A local service that is down: the visitor is closed, and the client
    // says which service and address.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let (client, public) = start_client(&addr, "d", &dead);
    let mut v = TcpStream::connect(&public).unwrap();
    v.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 1];
    assert!(
        matches!(v.read(&mut buf), Ok(0) | Err(_)),
        "the visitor is closed"
    );
    assert!(
        client.await_stderr("local service unreachable"),
        "{}",
        client.stderr()
    );
    let warn = client
        .stderr()
        .lines()
        .find(|l| l.contains("local service unreachable"))
        .unwrap()
        .to_string();
    assert!(warn.contains("WARN") && warn.contains(&dead), "{warn}");

    // Every service refused for good: exit 1 with the reasons.
    let mut refused = Proc::start(
        &[
            "client", "--server", &addr, "--token", TOKEN, "--name", "r", "--tcp", "9@30000",
        ],
        None,
    );
    assert!(!refused.wait(), "exits non-zero");
    let err = refused.stderr();
    assert!(
        err.contains("refused every service")
            && err.contains("port 30000 is not in the server's allowed ports"),
        "{err}"
    );

    // A server that is not there: retried with backoff, and given up after
    // --give-up-after attempts, naming the address.
    let nowhere = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut gave_up = Proc::start(
        &[
            "client",
            "--server",
            &nowhere,
            "--token",
            TOKEN,
            "--tcp",
            "9",
            "--give-up-after",
            "3",
        ],
        None,
    );
    // Exit 1, not 78: the server may be back by the next start.
    assert_eq!(gave_up.exit_code(), Some(1));
    let err = gave_up.stderr();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "error: cannot reach the server at {nowhere} after 3 attempts: "
        )),
        "{err}"
    );
    // The cause once came twice (in the message and as its source).
    let cause = last.rsplit(": ").next().unwrap_or_default();
    assert_eq!(last.matches(cause).count(), 1, "{last}");
    assert_eq!(
        err.matches("cannot reach the server; retrying").count(),
        2,
        "{err}"
    );
}

/// A client started before its server logs in once the server is up.
#[test]
fn the_first_login_is_retried() {
    let echo_addr = echo_service();
    let port = unclaimed_port();
    let addr = format!("127.0.0.1:{port}");
    let client = Proc::start(
        &[
            "client", "--server", &addr, "--token", TOKEN, "--tcp", &echo_addr,
        ],
        None,
    );
    assert!(client.await_stderr("cannot reach the server; retrying"));
    let _server = Proc::start(&["server", "--listen", &addr, "--token", TOKEN], None);
    let public = line_with(&client, "tcp ")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    echo(&public, 10_000);
}

/// Logs written to a file carry no colour codes; JSON logs are JSON.
#[test]
fn logs_suit_files_and_shippers() {
    let (mut server, _) = start_server(&[]);
    server.terminate();
    server.wait();
    let text = server.stderr();
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\u{1b}'), "no escape bytes: {text:?}");

    let server = Proc::start(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--token",
            TOKEN,
            "--log-format",
            "json",
        ],
        None,
    );
    line_with(&server, "listening on ");
    server.terminate();
    let mut server = server;
    server.wait();
    let text = server.stderr();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        lines += 1;
    }
    assert!(lines >= 1, "{text}");
}

#[test]
fn check_validates_configs() {
    let check = |path: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_rejoin"))
            .args(["check", path.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        // 0 for a valid file, 1 for any mistake (not the start's 78).
        let code = out.status.code();
        assert!(matches!(code, Some(0 | 1)), "exit {code:?}: {text}");
        (code == Some(0), text)
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let (ok, text) = check(&examples.join("server.toml"));
    assert!(ok && text.contains("a valid server config"), "{text}");
    assert!(
        text.contains("warning: a token is still the example's placeholder"),
        "{text}"
    );
    let (ok, text) = check(&examples.join("client.toml"));
    assert!(
        ok && text.contains("a valid client config") && text.contains("3 service(s)"),
        "{text}"
    );

    let dir = Scratch::new("check");
    for (name, body, says) in [
        (
            "a.toml",
            "listen = \"127.0.0.1:7000\"\ntoken = \"t\"\nkeep = 60\n",
            "\"60s\"",
        ),
        (
            "b.toml",
            "server = \"h:1\"\ntoken = \"t\"\n[[service]]\nlocal = \"nope\"\n",
            "needs a port",
        ),
        ("c.toml", "server = \"h:1\"\n", "set `token`"),
        ("d.toml", "hello = 1\n", "neither a server config"),
        (
            "e.toml",
            "listen = \"127.0.0.1:7000\"\ntoken = \"t\"\nping_interval = \"30s\"\n",
            "ping_timeout",
        ),
        (
            // Once accepted, then a panic in every session's set-up.
            "f.toml",
            "listen = \"127.0.0.1:7000\"\ntoken = \"t\"\nping_interval = \"2562047788015215h\"\nping_timeout = \"2562047788015216h\"\n",
            "longer than a year",
        ),
        (
            "g.toml",
            "listen = \"127.0.0.1:7000\"\ntoken = \"t\"\nkeep = \"9000h\"\n",
            "longer than a year",
        ),
        (
            // Once passed by the check, then refused by the start after
            // the tunnel was up, with an exit status that asks for a retry.
            "h.toml",
            "listen = \"127.0.0.1:0\"\ntoken = \"t\"\nadmin = \"localhost:7070\"\n",
            "admin",
        ),
        (
            "i.toml",
            "listen = \"127.0.0.1:0\"\ntoken = \"t\"\nudp_idle = \"0s\"\n",
            "udp_idle must be at least 1s",
        ),
        (
            // Once passed by the check ("created on first start"), then
            // refused by the start.
            "j.toml",
            "listen = \"127.0.0.1:0\"\ntoken = \"t\"\nkey_file = \"no/such/dir/server.key\"\n",
            "the key file cannot be created",
        ),
        (
            // A directory nobody may create files in (even root: /proc).
            "l.toml",
            "listen = \"127.0.0.1:0\"\ntoken = \"t\"\nkey_file = \"/proc/server.key\"\n",
            "cannot be created in /proc",
        ),
        (
            // Once passed by the check, then the tunnel bound and the start
            // failed on the admin port with a status that asks for a retry.
            "k.toml",
            "listen = \"0.0.0.0:7000\"\ntoken = \"t\"\nadmin = \"127.0.0.1:7000\"\n",
            "where the tunnel listens",
        ),
    ] {
        let path = dir.join(name);
        write(&path, body);
        let (ok, text) = check(&path);
        assert!(!ok, "{name} is refused");
        assert!(text.contains(says), "{name}: {text}");
    }
    // A key file that is a link to nothing: the start would not create a
    // key through it.
    let dangling = dir.join("dangling.key");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    let path = dir.join("m.toml");
    write(
        &path,
        &format!(
            "listen = \"127.0.0.1:0\"\ntoken = \"t\"\nkey_file = \"{}\"\n",
            dangling.display()
        ),
    );
    let (ok, text) = check(&path);
    assert!(
        !ok && text.contains("a link to a file that does not exist"),
        "{text}"
    );
    // A key to be created next to the config: the check tries a file and
    // a link there, and leaves nothing behind.
    let path = dir.join("n.toml");
    write(
        &path,
        "listen = \"127.0.0.1:0\"\ntoken = \"t\"\nkey_file = \"new.key\"\n",
    );
    let (ok, text) = check(&path);
    assert!(ok && text.contains("created on first start"), "{text}");
    assert!(!dir.join("new.key").exists());
    let left: Vec<_> = std::fs::read_dir(&*dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".rejoin-check"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let (ok, text) = check(&dir.join("missing.toml"));
    assert!(!ok && text.contains("missing.toml"), "{text}");
    // The start refuses the bad admin address as a config error: exit 78,
    // which the shipped units do not restart.
    let mut server = Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["server", "--config", dir.join("h.toml").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.and_then(|s| s.code()), Some(78), "{status:?}");
}

/// A public port taken on the server is asked for again, with backoff,
/// until it is free; the client keeps running meanwhile.
#[test]
fn a_taken_port_is_asked_for_again() {
    let echo_addr = echo_service();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let (_server, addr) = start_server(&["--ports", &port.to_string()]);
    let spec = format!("{echo_addr}@{port}");
    let client = Proc::start(
        &[
            "client", "--server", &addr, "--token", TOKEN, "--tcp", &spec,
        ],
        None,
    );
    let first = line_with(&client, "tcp ");
    assert!(
        first.ends_with(&format!(
            "not published: port {port} is taken (asking again)"
        )),
        "{first}"
    );
    drop(squatter);
    // Further "asking again" lines may come before the port is seen free.
    let published = format!(" published at 127.0.0.1:{port}");
    let mut seen: Vec<String> = Vec::new();
    while !seen.last().is_some_and(|l| l.ends_with(&published)) {
        assert!(seen.len() < 10, "never published: {seen:?}");
        seen.push(line_with(&client, "tcp "));
    }
    echo(&format!("127.0.0.1:{port}"), 10_000);
}

/// Unauthenticated noise: handshakes with a wrong token, one after another
/// for 2.5 s, are logged about once a second, each line saying how many it
/// left out, not one line each.
#[test]
fn refused_handshakes_are_logged_once_a_second() {
    // The limit on failed logins would close this flood's connections
    // before they are refused (see `failed_logins_are_throttled`).
    let (server, addr) = start_server(&["--login-failures-per-minute", "0"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let started = Instant::now();
    let attempts = runtime.block_on(async {
        let psk = rejoin::tunnel::auth::Token::new("not the token")
            .key()
            .psk();
        let mut attempts = 0u64;
        while started.elapsed() < Duration::from_millis(2500) && attempts < 100_000 {
            let config = rejoin::stream::Config::sealed(psk.clone());
            let attempt = rejoin::stream::connect(addr.clone(), config);
            let refused = tokio::time::timeout(Duration::from_secs(5), attempt).await;
            assert!(matches!(refused, Ok(Err(_))), "a wrong token is refused");
            attempts += 1;
        }
        attempts
    });
    let seconds = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let log = server.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("handshake refused"))
        .collect();
    println!(
        "{attempts} refused handshakes in {seconds:.1} s: {} log lines",
        lines.len()
    );
    assert!(attempts >= 20, "the flood ran ({attempts} attempts)");
    assert!(
        (lines.len() as f64) <= seconds + 2.0,
        "{} lines for {attempts} attempts in {seconds:.1} s",
        lines.len()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("left_out=") && !l.contains("left_out=0")),
        "a line says how many it left out:\n{}",
        lines.join("\n")
    );
}

/// Issue 10's attack 8: guessing tokens online. One address tries wrong
/// tokens as fast as it can; after the default ten a minute its connections
/// are closed before any handshake work, and a wrong token and an unknown
/// name get the same answer. A client from another address logs in and is
/// served meanwhile.
#[test]
fn failed_logins_are_throttled() {
    use rejoin::stream;
    let echo_addr = echo_service();
    let (server, addr) = start_server(&["--admin", "127.0.0.1:0"]);
    let admin = line_with(&server, "admin at ").replace("admin at ", "");
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // The guesser's address: 127.0.0.2.
    let from_guesser = move || async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(([127, 0, 0, 2], 0).into())?;
        socket.connect(target).await
    };
    let (refused, closed) = runtime.block_on(async {
        let (mut refused, mut closed) = (Vec::new(), 0u32);
        for attempt in 0..40u32 {
            // Half name a client the server has no token for.
            let token = rejoin::tunnel::auth::Token::new(format!("guess {attempt}"));
            let mut keys = stream::Sealed::new(token.key().psk());
            if attempt % 2 == 1 {
                keys.psk_id = b"nobody".to_vec();
            }
            let mut config = stream::Config::sealed(token.key().psk());
            config.suite = stream::Suite::Sealed(keys);
            let result = tokio::time::timeout(
                Duration::from_secs(10),
                stream::connect_with(from_guesser, config),
            )
            .await
            .expect("an answer in time");
            let Err(e) = result else {
                panic!("a guess never gets in")
            };
            match stream::Error::from_io(&e) {
                Some(stream::Error::Handshake(rejoin::proto::Error::KeyRejected(code))) => {
                    refused.push(code.to_owned())
                }
                _ => closed += 1,
            }
        }
        (refused, closed)
    });
    println!(
        "40 guesses: {} refused after a handshake (codes {refused:?}), {closed} closed at once",
        refused.len()
    );
    assert!(
        (10..=12).contains(&refused.len()),
        "ten a minute get a handshake: {refused:?}"
    );
    assert!(
        refused.iter().all(|&c| c == 2),
        "an unknown name is answered as a wrong token: {refused:?}"
    );
    assert_eq!(closed as usize, 40 - refused.len());
    // The metrics count both kinds.
    let (_, metrics) = get(&admin, "/metrics", None);
    let count = |reason: &str| -> u64 {
        let prefix = format!("rejoin_logins_refused_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {reason} in {metrics}"))
    };
    assert_eq!(
        count("bad_token") + count("unknown_client"),
        refused.len() as u64
    );
    assert_eq!(count("throttled"), u64::from(closed));
    // Someone else, from 127.0.0.1, is not affected.
    let (_client, public) = start_client(&addr, "honest", &echo_addr);
    echo(&public, 10_000);
    drop(server);
}

/// An attacker who knows only the server's public key (which is not a
/// secret: the server prints it, every pinned client holds it) sends pinned
/// hellos under a wrong token as fast as it can. Message 1 of IKpsk2 holds
/// no PSK, so each one earns an answer, two Diffie–Hellman operations of the
/// server's, and only the confirm, which never comes, would show the token
/// wrong. Those answered and never confirmed count as failed proofs, whether
/// the attacker closes them or holds them open until newer connections of
/// its own push them out of their handshake slots: after the minute's ten
/// the source's connections are closed unanswered. A pinned client from
/// another address logs in meanwhile.
#[test]
fn answered_hellos_that_never_confirm_are_throttled() {
    use rejoin::proto::Params;
    use rejoin::proto::sealed::{ClientExchange, Psk, parse_key_hex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo_addr = echo_service();
    let (server, addr) = start_server(&["--admin", "127.0.0.1:0"]);
    let key = line_with(&server, "server key ").replace("server key ", "");
    let key = key.split(' ').next().unwrap().to_string();
    let admin = line_with(&server, "admin at ").replace("admin at ", "");
    let public = parse_key_hex(&key).expect("the server prints its key");
    let target: std::net::SocketAddr = addr.parse().unwrap();
    let hello = ClientExchange::new_session(
        Params::default(),
        &Psk::from_passphrase("not the token"),
        b"",
        Some(&public),
    )
    .unwrap()
    .poll_transmit()
    .unwrap()
    .to_vec();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // The attacker's addresses: 127.0.0.3 closes each connection once
    // answered, 127.0.0.4 holds them all open.
    let attack = |source: [u8; 4], hold: bool| {
        runtime.block_on(async {
            let (mut answered, mut closed, mut held) = (0u32, 0u32, Vec::new());
            for _ in 0..40 {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind((source, 0).into()).unwrap();
                let mut io = socket.connect(target).await.unwrap();
                // The same hello every time: a replay needs no key either.
                let _ = io.write_all(&hello).await;
                let mut reply = [0u8; 256];
                let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut reply))
                    .await
                    .expect("an answer or a close in time")
                    .unwrap_or(0);
                if n == 0 {
                    closed += 1;
                } else if hold {
                    answered += 1;
                    held.push(io);
                } else {
                    answered += 1;
                    // Give up on it, and wait for the server to close: by
                    // then it has counted the failure.
                    let _ = io.shutdown().await;
                    let mut rest = Vec::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut rest))
                            .await
                            .expect("the server closes in time");
                }
            }
            (answered, closed)
        })
    };
    let (answered, closed) = attack([127, 0, 0, 3], false);
    println!("40 pinned hellos under a wrong token: {answered} answered, {closed} closed at once");
    assert!(
        (10..=12).contains(&answered),
        "ten a minute get an answer: {answered}"
    );
    assert_eq!(answered + closed, 40);
    let scrape = metrics(&admin);
    let count = |reason: &str| {
        sample(
            &scrape,
            "rejoin_logins_refused_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(count("unconfirmed"), f64::from(answered));
    assert_eq!(count("throttled"), f64::from(closed));
    // Held open: 16 handshakes in progress per source, then each newcomer
    // pushes out the oldest, which counts.
    let (held, closed_too) = attack([127, 0, 0, 4], true);
    println!("40 more, held open: {held} answered, {closed_too} closed at once");
    assert!(held <= 16 + 12, "ten pushed out, then closed: {held}");
    assert_eq!(held + closed_too, 40);
    // A pinned client from 127.0.0.1 is not affected.
    let (client, public) = start_client_with(&addr, "pinned", &echo_addr, &["--server-key", &key]);
    echo(&public, 10_000);
    drop((client, server));
}
