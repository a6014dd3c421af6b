//! The binary and the examples, through the interfaces other tools use.

#[path = "common/examples.rs"]
mod examples;
#[path = "common/ports.rs"]
mod ports;
#[path = "common/procs.rs"]
mod procs;

use examples::{cut_proxy, echo_client, echo_server, example, finish};
use ports::unclaimed_port;
use procs::{Proc, Scratch, echo_service};

use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn echo_examples_work_together() {
    let sealed = &["--sealed", "correct horse"][..];
    for flags in [
        &[][..],
        &["--v1"],
        &["--plain"],
        &["--v1", "--plain"],
        sealed,
    ] {
        let (_server, addr) = echo_server(flags);
        assert!(addr.starts_with("127.0.0.1:"));
        let (ok, out) = echo_client(&addr, 3_000_000, flags);
        assert!(ok, "{flags:?}: {out}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "one summary line: {out:?}");
        assert!(lines[0].starts_with("ok: 3000000 bytes"), "{out}");
    }
}

#[test]
fn the_examples_resume_through_the_cut_proxy() {
    for flags in [&[][..], &["--v1"], &["--sealed", "correct horse"]] {
        let (_server, addr) = echo_server(flags);
        let (_proxy, via) = cut_proxy(&addr, "300000-600000");
        let (ok, out) = echo_client(&via, 4_000_000, flags);
        assert!(ok, "{flags:?}: {out}");
        let reconnects: u64 = out
            .trim()
            .strip_suffix(" reconnects")
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("summary line: {out}"));
        assert!(reconnects >= 5, "{flags:?}: the proxy cut the link: {out}");
    }
    // Bad input gets a clear error.
    let out = Command::new(example("cut_proxy"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--every",
            "9-3",
        ])
        .output()
        .expect("cut_proxy runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--every needs 0 < MIN <= MAX"), "{err}");
}

#[test]
fn echo_client_fails_on_a_mismatch() {
    let (_server, addr) = echo_server(&[]);
    let (ok, out) = echo_client(&addr, 1000, &["--v1"]);
    assert!(!ok, "a v1 client cannot talk to a v2 server: {out}");
    assert!(out.starts_with("FAILED"), "{out}");
    let (ok, out) = echo_client(&addr, 1000, &["--sealed", "x"]);
    assert!(
        !ok && out.starts_with("FAILED"),
        "sealed against compatible: {out}"
    );
    let (_sealed, addr) = echo_server(&["--sealed", "correct horse"]);
    let (ok, out) = echo_client(&addr, 1000, &["--sealed", "battery staple"]);
    assert!(
        !ok && out.starts_with("FAILED"),
        "another passphrase: {out}"
    );
}

#[test]
fn demo_runs_and_verifies() {
    let child = Command::new(env!("CARGO_BIN_EXE_rejoin"))
        .args(["demo", "--bytes", "8000000"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("rejoin demo starts");
    let (ok, out) = finish(child, Duration::from_secs(120));
    assert!(ok, "{out}");
    assert!(
        out.contains("\nverified: 7.6 MiB sent and echoed back intact"),
        "{out}"
    );
}

#[test]
fn tunnel_one_line_forms() {
    use std::io::{Read, Write};
    const TOKEN: &str = "tok-3f9a1c7e5b";
    let echo = echo_service();
    let mut server = Proc::start(
        &["server", "--listen", "127.0.0.1:0", "--token", TOKEN],
        None,
    );
    let first = server.line();
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line is {first:?}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"));

    let fixed = unclaimed_port();
    let fixed_spec = format!("{echo}@{fixed}");
    // The client takes its token from the environment this time.
    let mut client = Proc::start(
        &[
            "client",
            "--server",
            &addr,
            "--tcp",
            &echo,
            "--tcp",
            &fixed_spec,
        ],
        Some(TOKEN),
    );
    let mut published = vec![client.line(), client.line()];
    published.sort();
    // Two services named after one local address: the second is told
    // apart as `#2` (in the metrics, and in the ports kept for it).
    let want_fixed = format!("{echo}#2: tcp {echo} published at 127.0.0.1:{fixed}");
    assert!(published.contains(&want_fixed), "{published:?}");
    let other = published.iter().find(|l| **l != want_fixed).unwrap();
    let prefix = format!("tcp {echo} published at 127.0.0.1:");
    assert!(other.starts_with(&prefix), "{other}");

    for public in [
        other.rsplit(' ').next().unwrap().to_string(),
        format!("127.0.0.1:{fixed}"),
    ] {
        let mut v = std::net::TcpStream::connect(&public).unwrap();
        v.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        v.write_all(b"hi there").unwrap();
        let mut buf = [0u8; 8];
        v.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi there");
    }

    // SIGTERM: the client says goodbye and exits cleanly; so does the server.
    client.terminate();
    assert!(client.wait(), "client exits 0 on SIGTERM");
    assert!(
        server.await_stderr("client session closed by the client"),
        "{}",
        server.stderr()
    );
    server.terminate();
    assert!(server.wait(), "server exits 0 on SIGTERM");
    let (server_log, client_log) = (server.stderr(), client.stderr());
    assert!(
        server_log.contains("client session closed by the client"),
        "{server_log}"
    );
    assert!(server_log.contains("service published"), "{server_log}");
    // Trace-level logs of both sides, and not a trace of the token.
    for (who, log) in [("server", &server_log), ("client", &client_log)] {
        assert!(!log.contains(TOKEN), "{who} logged the token");
        assert!(log.contains("TRACE"), "{who} logged at trace level");
    }
}

/// Ctrl-C on the server: every client is told at once (it does not wait for
/// a timeout to notice) and goes back to dialing; Ctrl-C on the client stops
/// it cleanly.
#[test]
fn ctrl_c_says_goodbye() {
    let echo = echo_service();
    let mut server = Proc::start(
        &["server", "--listen", "127.0.0.1:0", "--token", "t0k"],
        None,
    );
    let addr = server.line().replace("listening on ", "");
    let mut client = Proc::start(
        &[
            "client", "--server", &addr, "--token", "t0k", "--tcp", &echo,
        ],
        None,
    );
    let published = client.line();
    assert!(published.starts_with(&format!("tcp {echo} published at ")));
    server.interrupt();
    assert!(server.wait(), "server exits 0 on Ctrl-C");
    assert!(
        server
            .stderr()
            .contains("shutting down: saying goodbye to every client"),
        "{}",
        server.stderr()
    );
    assert!(
        client.await_stderr("peer said goodbye: server shutting down"),
        "{}",
        client.stderr()
    );
    client.interrupt();
    assert!(client.wait(), "client exits 0 on Ctrl-C");
}

#[test]
fn tunnel_errors_are_clear() {
    // A wrong token: the client says why and exits 1 (not 78: a refusal in
    // the handshake is not authenticated, so a unit starts it again).
    let mut server = Proc::start(
        &["server", "--listen", "127.0.0.1:0", "--token", "right"],
        None,
    );
    let addr = server.line().replace("listening on ", "");
    let mut client = Proc::start(
        &[
            "client",
            "--server",
            &addr,
            "--token",
            "wrong",
            "--tcp",
            "127.0.0.1:9",
        ],
        None,
    );
    assert_eq!(client.exit_code(), Some(1));
    let err = client.stderr();
    assert!(
        err.contains("error: login refused by the server: bad token"),
        "{err}"
    );
    server.terminate();
    assert!(server.wait());
    let log = server.stderr();
    assert!(
        log.contains("handshake refused") && log.contains("wrong key"),
        "{log}"
    );

    // Config mistakes name the file and the line.
    let dir = Scratch::new("cli");
    let bad = dir.join("server.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\ntoken = \"x\"\nport = 5\n").unwrap();
    let mut run = Proc::start(&["server", "--config", bad.to_str().unwrap()], None);
    assert_eq!(run.exit_code(), Some(78));
    let err = run.stderr();
    assert!(
        err.contains("server.toml") && err.contains("line 3") && err.contains("port"),
        "{err}"
    );

    // A flag value that cannot be parsed is a config error too (78, which
    // the units do not restart on; clap's own status would be 2), and so
    // is --show-key with no key to show.
    for args in [
        &["server", "--listen", "nonsense", "--token", "t"][..],
        &[
            "client",
            "--server",
            "127.0.0.1:1",
            "--token",
            "t",
            "--give-up-after",
            "x",
            "--tcp",
            "22",
        ],
        &["server", "--no-such-flag"],
        &["server", "--show-key"],
    ] {
        let mut run = Proc::start(args, None);
        assert_eq!(run.exit_code(), Some(78), "{args:?}: {}", run.stderr());
        assert!(run.stderr().contains("error"), "{args:?}: {}", run.stderr());
    }
    let mut help = Proc::start(&["server", "--help"], None);
    assert_eq!(help.exit_code(), Some(0));

    // The other command's config file is named as such, not reported as a
    // field this one does not know.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for (command, file, says) in [
        (
            "client",
            "server.toml",
            "a config for `rejoin server` (it has `listen`)",
        ),
        (
            "server",
            "client.toml",
            "a config for `rejoin client` (it has `server`)",
        ),
    ] {
        let path = examples.join(file);
        let mut run = Proc::start(&[command, "--config", path.to_str().unwrap()], None);
        assert_eq!(run.exit_code(), Some(78), "{command} {file}");
        assert!(
            run.stderr().contains(says),
            "{command} {file}: {}",
            run.stderr()
        );
    }

    // Missing pieces of the one-line form are named.
    let mut run = Proc::start(&["client", "--server", "127.0.0.1:1", "--token", "t"], None);
    assert_eq!(run.exit_code(), Some(78));
    assert!(run.stderr().contains("nothing to publish"));

    // A name the server would refuse is refused here, saying why: a line
    // break (it would forge a line in the server's log), a bidirectional
    // override (it would reorder one).
    for name in ["home\nWARN forged", "home\u{202e}nimda"] {
        let mut run = Proc::start(
            &[
                "client",
                "--server",
                "127.0.0.1:1",
                "--token",
                "t",
                "--name",
                name,
                "--tcp",
                "22",
            ],
            None,
        );
        assert_eq!(run.exit_code(), Some(78));
        let err = run.stderr();
        assert!(
            err.contains("--name")
                && err.contains("holds a control character, a line separator or a bidirectional"),
            "{err}"
        );
    }

    // A thread count tokio cannot take is an error that says so, not a
    // panic (the client reads the variable too: set, it runs on that many).
    for value in ["0", "", "many"] {
        let out = Command::new(env!("CARGO_BIN_EXE_rejoin"))
            .args(["client", "--server", "127.0.0.1:1", "--token", "t"])
            .args(["--give-up-after", "1", "--tcp", "22"])
            .env("TOKIO_WORKER_THREADS", value)
            .output()
            .expect("rejoin runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && err.contains("TOKIO_WORKER_THREADS must be a whole number above 0")
                && !err.contains("panicked"),
            "{value:?}: {err}"
        );
    }
}

#[test]
fn tunnel_udp_one_line_form() {
    let echo = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
        addr
    };
    let mut server = Proc::start(
        &["server", "--listen", "127.0.0.1:0", "--token", "t0k"],
        None,
    );
    let addr = server.line().replace("listening on ", "");
    let mut client = Proc::start(
        &[
            "client", "--server", &addr, "--token", "t0k", "--udp", &echo,
        ],
        None,
    );
    let line = client.line();
    let prefix = format!("udp {echo} published at 127.0.0.1:");
    assert!(line.starts_with(&prefix), "{line}");
    let public = line.rsplit(' ').next().unwrap().to_string();
    let v = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    v.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    let mut echoed = None;
    for _ in 0..20 {
        v.send_to(b"datagram", &public).unwrap();
        if let Ok(n) = v.recv(&mut buf) {
            echoed = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(echoed.as_deref(), Some(&b"datagram"[..]));
    client.terminate();
    assert!(client.wait());
    server.terminate();
    assert!(server.wait());
}

/// The server's static key: created once and kept, `--show-key` prints its
/// public half, a client that pins it gets through, a client that pins
/// another key refuses the server, and a broken key file is a clear error.
#[test]
fn server_key_is_kept_shown_and_pinned() {
    use std::os::unix::fs::PermissionsExt;
    const TOKEN: &str = "tok-keys-81d2";
    let dir = Scratch::new("keys");
    let key_file = dir.join("server.key");
    let key_path = key_file.to_str().unwrap();

    let mut show = Proc::start(&["server", "--show-key", "--key-file", key_path], None);
    let public = show.line();
    assert!(show.wait());
    assert_eq!(public.len(), 64, "{public}");
    assert!(public.bytes().all(|b| b.is_ascii_hexdigit()), "{public}");
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key readable by the owner only");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        ["server.key"],
        "written under a temporary name, then linked"
    );
    let mut again = Proc::start(&["server", "--show-key", "--key-file", key_path], None);
    assert_eq!(again.line(), public, "the key is kept");
    assert!(again.wait());

    let echo = echo_service();
    let mut server = Proc::start(
        &["server", "--listen", "127.0.0.1:0", "--key-file", key_path],
        Some(TOKEN),
    );
    let addr = server.line().replace("listening on ", "");
    assert_eq!(server.line(), format!("server key {public}"));

    // A client pinning `key`, with `token`.
    let client = |key: &str, token: &str| {
        Proc::start(
            &[
                "client",
                "--server",
                &addr,
                "--server-key",
                key,
                "--tcp",
                &echo,
            ],
            Some(token),
        )
    };
    let mut pinned = client(&public, TOKEN);
    let line = pinned.line();
    assert!(
        line.starts_with(&format!("tcp {echo} published at ")),
        "{line}"
    );
    pinned.terminate();
    assert!(pinned.wait());

    let other = "ab".repeat(32);
    let mut wrong = client(&other, TOKEN);
    assert!(!wrong.wait());
    assert!(
        wrong
            .stderr()
            .contains("the pinned server key is not this server's"),
        "{}",
        wrong.stderr()
    );

    // The right key and a wrong token: the server reads the hello (it holds
    // the key) and its answer does not open under this token.
    let mut wrong_token = client(&public, "tok-not-the-servers");
    assert!(!wrong_token.wait());
    let said = wrong_token.stderr();
    assert!(
        said.contains("login refused by the server: bad token")
            && !said.contains("pinned server key is not"),
        "{said}"
    );

    let mut bad = Proc::start(
        &[
            "client",
            "--server",
            &addr,
            "--server-key",
            "xyz",
            "--tcp",
            &echo,
        ],
        Some(TOKEN),
    );
    assert!(!bad.wait());
    assert!(bad.stderr().contains("64 hex digits"), "{}", bad.stderr());
    server.terminate();
    assert!(server.wait());

    std::fs::write(&key_file, "not a key\n").unwrap();
    let mut broken = Proc::start(&["server", "--show-key", "--key-file", key_path], None);
    assert!(!broken.wait());
    assert!(
        broken.stderr().contains("not a server key"),
        "{}",
        broken.stderr()
    );
}

/// Bytes each way of one proxied connection, as the client and the server
/// sent them.
#[derive(Default, Clone)]
struct Recorded {
    c2s: Vec<u8>,
    s2c: Vec<u8>,
}

/// A proxy in front of a tunnel server that records every connection and,
/// once per connection, flips one bit somewhere past its first 64 KiB (well
/// after the handshake and the login), alternating the direction.
struct FlipProxy {
    addr: String,
    conns: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    flips: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FlipProxy {
    fn start(target: String) -> FlipProxy {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conns: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let flips = Arc::new(AtomicUsize::new(0));
        let (c, f) = (conns.clone(), flips.clone());
        std::thread::spawn(move || {
            for (index, client) in l.incoming().flatten().enumerate() {
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                c.lock().unwrap().push(Recorded::default());
                // Somewhere in 64 KiB..2 MiB of this connection.
                let at = 65_536 + (index as u64 * 2_654_435_761) % (2 << 20);
                for (to_server, from, to) in [
                    (
                        true,
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                    ),
                    (
                        false,
                        server.try_clone().unwrap(),
                        client.try_clone().unwrap(),
                    ),
                ] {
                    let flip_here = (index % 2 == 0) == to_server;
                    let (c, f) = (c.clone(), f.clone());
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let (mut from, mut to) = (from, to);
                        let mut buf = vec![0u8; 64 << 10];
                        let mut seen = 0u64;
                        let mut flipped = !flip_here;
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            {
                                let mut conns = c.lock().unwrap();
                                let rec = &mut conns[index];
                                let side = if to_server {
                                    &mut rec.c2s
                                } else {
                                    &mut rec.s2c
                                };
                                side.extend_from_slice(&buf[..n]);
                            }
                            if !flipped && seen + n as u64 > at {
                                buf[(at - seen) as usize] ^= 0x10;
                                flipped = true;
                                f.fetch_add(1, Ordering::Relaxed);
                            }
                            seen += n as u64;
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        FlipProxy { addr, conns, flips }
    }
}

/// Sends `bytes` to `addr` and reads back what comes (an echo) on one TCP
/// connection; returns what came back.
fn echo_through(addr: &str, bytes: Vec<u8>) -> Vec<u8> {
    use std::io::{Read, Write};
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut w = s.try_clone().unwrap();
    let len = bytes.len();
    let writer = std::thread::spawn(move || w.write_all(&bytes).unwrap());
    let mut back = vec![0u8; len];
    (&s).read_exact(&mut back).unwrap();
    writer.join().unwrap();
    back
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The tunnel on the wire, as an attacker sees it: a proxy flips one bit per
/// link connection after login while a visitor echoes 32 MiB, and records
/// everything. The echo is intact, the recording holds neither the
/// visitor's plaintext nor the token, and replaying or forging what it
/// recorded gets nowhere: no new session, no resume, and the live session
/// runs on.
#[test]
fn the_sealed_link_resists_flips_replays_and_forgeries() {
    const TOKEN: &str = "tok-wire-5e0c94a1";
    const MARKER: &[u8] = b"VISITOR-PLAINTEXT-MARKER";
    let echo = echo_service();
    let mut server = Proc::start(&["server", "--listen", "127.0.0.1:0"], Some(TOKEN));
    let server_addr = server.line().replace("listening on ", "");
    let proxy = FlipProxy::start(server_addr.clone());
    let mut client = Proc::start(
        &[
            "client",
            "--server",
            &proxy.addr,
            "--name",
            "home",
            "--tcp",
            &echo,
        ],
        Some(TOKEN),
    );
    let published = client.line();
    let public = published.rsplit(' ').next().unwrap().to_string();

    // 32 MiB with the marker every 4 KiB, the rest varied.
    let mut data = Vec::with_capacity(32 << 20);
    let mut x = 0x9e3779b97f4a7c15u64;
    while data.len() < 32 << 20 {
        if data.len() % 4096 == 0 {
            data.extend_from_slice(MARKER);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.push(x as u8);
    }
    let back = echo_through(&public, data.clone());
    assert!(back == data, "the echo came back intact");
    let flips = proxy.flips.load(std::sync::atomic::Ordering::Relaxed);
    let recorded = proxy.conns.lock().unwrap().clone();
    println!(
        "32 MiB echoed intact through {} link connections and {flips} flipped bits",
        recorded.len()
    );
    assert!(flips >= 3, "only {flips} flips");
    for (i, conn) in recorded.iter().enumerate() {
        for side in [&conn.c2s, &conn.s2c] {
            assert!(!find(side, MARKER), "connection {i}: plaintext on the wire");
            assert!(
                !find(side, TOKEN.as_bytes()),
                "connection {i}: the token on the wire"
            );
        }
    }

    // Replays, straight to the server.
    let sessions_up = |s: &Proc| s.stderr().matches("session up").count();
    let before = sessions_up(&server);
    let replay = |bytes: &[u8]| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&server_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(bytes);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    };
    // The first connection's hello, confirm and login, replayed: no session.
    let first = &recorded[0].c2s;
    assert_eq!(first[0], 0x10, "a new-session hello");
    replay(&first[..first.len().min(64 << 10)]);
    // A resume's hello and confirm, replayed: refused.
    let resume = recorded
        .iter()
        .find(|c| c.c2s.first() == Some(&0x12))
        .expect("a resume was recorded");
    replay(&resume.c2s[..resume.c2s.len().min(4096)]);
    // A forged resume: the right conn ID and plausible counts, keyed by a
    // guess instead of the session's secret.
    let mut hello = vec![0x12];
    hello.extend_from_slice(&resume.c2s[1..9]);
    let mut prologue = b"rejoin sealed v1".to_vec();
    prologue.extend_from_slice(&hello);
    let guess = [7u8; 32];
    let mut hs = snow::Builder::new("Noise_NNpsk0_25519_AESGCM_SHA256".parse().unwrap())
        .psk(0, &guess)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut msg = [0u8; 256];
    let mut counts = [0u8; 16];
    counts[..8].copy_from_slice(&(40u64 << 20).to_le_bytes());
    counts[8..].copy_from_slice(&(40u64 << 20).to_le_bytes());
    let n = hs.write_message(&counts, &mut msg).unwrap();
    hello.extend_from_slice(&(n as u16).to_le_bytes());
    hello.extend_from_slice(&msg[..n]);
    replay(&hello);

    // Nothing new came up, and the live session carries on.
    assert_eq!(sessions_up(&server), before, "no session from a replay");
    let again = echo_through(&public, data[..1 << 20].to_vec());
    assert!(again == data[..1 << 20], "the live session runs on");
    assert!(
        server.await_stderr("reconnect refused"),
        "{}",
        server.stderr()
    );
    client.terminate();
    assert!(client.wait());
    server.terminate();
    assert!(server.wait());
}

/// A library user who turns the default features off gets the stream and
/// the tunnel without the binary's dependencies.
#[test]
fn the_library_does_not_pay_for_the_binary() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |features: &[&str]| {
        let out = Command::new(&cargo)
            .args(["tree", "-e", "normal", "--prefix", "none", "--locked"])
            .args(features)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("cargo tree runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let crates = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect()
    };
    let lean = crates(&tree(&["--no-default-features"]));
    let full = crates(&tree(&[]));
    for binary_only in [
        "clap",
        "toml",
        "tracing-subscriber",
        "anyhow",
        "mimalloc",
        "serde",
        "hyper",
        "prometheus-client",
    ] {
        assert!(
            !lean.contains(binary_only),
            "{binary_only} without the cli feature"
        );
        assert!(
            full.contains(binary_only),
            "{binary_only} with the defaults"
        );
    }
    println!(
        "{} crates without the cli feature, {} with it",
        lean.len(),
        full.len()
    );
}
