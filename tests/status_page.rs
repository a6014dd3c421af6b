//! The status page in a real browser: headless Chromium (Debian's
//! `chromium` package, installed here when missing) opens the admin
//! endpoint's page while a client and visitors are connected, the test reads
//! what the page shows, and saves a screenshot.

#[path = "common/examples.rs"]
mod examples;
#[path = "common/procs.rs"]
mod procs;

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use procs::{Proc, Scratch, echo_service};

/// The browser, installed with apt-get if it is missing (as root).
fn chromium() -> PathBuf {
    let found = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = found() {
        return p;
    }
    let install = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install(&["install", "-y", "-q", "chromium"]) {
        install(&["update", "-q"]);
        install(&["install", "-y", "-q", "chromium"]);
    }
    found().expect(
        "this test needs Debian's chromium package (apt-get install chromium), and could not install it",
    )
}

/// Runs headless Chromium on `url` with `what` (`--dump-dom` or
/// `--screenshot=…`), letting the page run its scripts for a few seconds.
fn browse(browser: &PathBuf, url: &str, what: &str) -> String {
    let profile = Scratch::new("chromium");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=7000",
            &format!("--user-data-dir={}", profile.display()),
            what,
            url,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            panic!("chromium ran for more than 90 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    out
}

#[test]
fn the_status_page_shows_clients_services_and_visitors() {
    let browser = chromium();
    let echo = echo_service();
    let server = Proc::start(
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--token",
            "page",
            "--admin",
            "0",
        ],
        None,
    );
    let addr = server.line().replace("listening on ", "");
    let mut admin = server.line();
    while !admin.starts_with("admin at ") {
        admin = server.line();
    }
    let admin = admin.replace("admin at ", "");
    let client = Proc::start(
        &[
            "client", "--server", &addr, "--token", "page", "--name", "laptop-7", "--tcp", &echo,
        ],
        None,
    );
    let public = client.line().rsplit(' ').next().unwrap().to_string();
    // Two visitors stay connected while the page is looked at; one sends
    // a little, so the byte counters move.
    let mut visitors: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&public).unwrap())
        .collect();
    {
        use std::io::{Read, Write};
        let v = &mut visitors[0];
        v.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        v.write_all(&[7u8; 100_000]).unwrap();
        let mut back = vec![0u8; 100_000];
        v.read_exact(&mut back).unwrap();
    }

    let dom = browse(&browser, &format!("{admin}/"), "--dump-dom");
    assert!(
        dom.contains("<td>laptop-7</td>"),
        "the client is listed: {dom}"
    );
    assert!(
        dom.contains(&format!("<td>{echo}</td>")),
        "its service: {dom}"
    );
    assert!(
        dom.contains(&format!("<td>{public}</td>")),
        "its public address: {dom}"
    );
    assert!(
        dom.contains(r#"<b id="n-visitors">2</b>"#),
        "two visitors: {dom}"
    );
    assert!(
        dom.contains(r#"<b id="n-clients">1</b>"#),
        "one client: {dom}"
    );
    assert!(dom.contains(">up</span>"), "its link is up: {dom}");
    assert!(
        dom.contains("<td>rj-session-"),
        "the thread its link runs on: {dom}"
    );
    assert!(
        dom.contains(r#"<section id="error" style="display: none;"></section>"#),
        "no error shown: {dom}"
    );

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        &format!("{admin}/"),
        &format!("--screenshot={}", shot.display()),
    );
    let png = std::fs::read(&shot).expect("a screenshot was saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real picture"
    );
    println!("screenshot: {}", shot.display());
    drop(visitors);
}
