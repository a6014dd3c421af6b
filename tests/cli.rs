//! The binary and the examples, through the interfaces other tools use.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn example(name: &str) -> PathBuf {
    // Test binaries live in target/<profile>/deps; examples beside it.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --examples` first (the README's test command does)",
        path.display()
    );
    path
}

/// Waits (bounded) for the child to exit; returns its status and stdout.
fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                use std::io::Read;
                let _ = stdout.read_to_string(&mut out);
            }
            return (status.success(), out);
        }
        assert!(started.elapsed() < limit, "child ran too long");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn echo_server(flags: &[&str]) -> (Running, String) {
    let mut child = Command::new(example("echo_server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(flags)
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo_server starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("first line");
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line is {first:?}"))
        .to_string();
    (Running(child), addr)
}

fn echo_client(addr: &str, bytes: u64, flags: &[&str]) -> (bool, String) {
    let child = Command::new(example("echo_client"))
        .args(["--connect", addr, "--bytes", &bytes.to_string()])
        .args(flags)
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo_client starts");
    finish(child, Duration::from_secs(60))
}

#[test]
fn echo_examples_work_together() {
    for flags in [&[][..], &["--v1"], &["--plain"], &["--v1", "--plain"]] {
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
fn echo_client_fails_on_a_mismatch() {
    let (_server, addr) = echo_server(&[]);
    let (ok, out) = echo_client(&addr, 1000, &["--v1"]);
    assert!(!ok, "a v1 client cannot talk to a v2 server: {out}");
    assert!(out.starts_with("FAILED"), "{out}");
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
