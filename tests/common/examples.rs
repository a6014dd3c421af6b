//! Running the examples and other child processes from tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn example(name: &str) -> PathBuf {
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
pub fn finish(mut child: Child, limit: Duration) -> (bool, String) {
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

/// Starts an example that announces its address on its first line, after
/// `prefix`; the rest of its output is drained so it never blocks or dies on
/// a closed pipe.
fn start(name: &str, args: &[&str], prefix: &str) -> (Running, String) {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("first line");
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = first
        .trim()
        .strip_prefix(prefix)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{name}'s first line is {first:?}"))
        .to_string();
    (Running(child), addr)
}

pub fn echo_server(flags: &[&str]) -> (Running, String) {
    let mut args = vec!["--listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    start("echo_server", &args, "listening on ")
}

pub fn echo_client(addr: &str, bytes: u64, flags: &[&str]) -> (bool, String) {
    let child = Command::new(example("echo_client"))
        .args(["--connect", addr, "--bytes", &bytes.to_string()])
        .args(flags)
        .stdout(Stdio::piped())
        .spawn()
        .expect("echo_client starts");
    finish(child, Duration::from_secs(60))
}

/// Starts the `cut_proxy` example in front of `to`; returns it and its address.
pub fn cut_proxy(to: &str, every: &str) -> (Running, String) {
    let args = ["--listen", "127.0.0.1:0", "--to", to, "--every", every];
    start("cut_proxy", &args, "proxying ")
}
