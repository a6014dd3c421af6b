//! The `rejoin` binary as a child process, for tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::examples::Running;

/// A running `rejoin` whose stdout lines and stderr are drained on threads
/// from the start, so neither a silent child nor a chatty one (a full pipe)
/// can hang the test.
pub struct Proc {
    pub child: Running,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Signalled when stderr reaches its end (the child has exited).
    stderr_done: std::sync::mpsc::Receiver<()>,
}

impl Proc {
    pub fn start(args: &[&str], token_env: Option<&str>) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rejoin"));
        cmd.args(args)
            .env("RUST_LOG", "trace")
            .env_remove("REJOIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token_env {
            cmd.env("REJOIN_TOKEN", token);
        }
        let mut child = cmd.spawn().expect("rejoin starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut errpipe = child.stderr.take().expect("stderr piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let (done, stderr_done) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 8192];
            while let Ok(n) = errpipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
            let _ = done.send(());
        });
        Proc {
            child: Running(child),
            lines,
            stderr,
            stderr_done,
        }
    }

    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .expect("a line in time")
    }

    /// Every stdout line not yet taken, up to the end of stdout (call once
    /// the process has exited; at most 10 s a line).
    pub fn printed(&self) -> Vec<String> {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            lines.push(line);
        }
        lines
    }

    pub fn terminate(&self) {
        self.signal("-TERM");
    }

    /// What Ctrl-C in a terminal sends.
    pub fn interrupt(&self) {
        self.signal("-INT");
    }

    pub fn signal(&self, which: &str) {
        let _ = Command::new("kill")
            .args([which, &self.child.0.id().to_string()])
            .status();
    }

    /// Waits (bounded) until stderr contains `text`.
    pub fn await_stderr(&self, text: &str) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if self.stderr().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits (bounded) for the exit, and for all the child wrote to stderr
    /// to be read; true on success.
    pub fn wait(&mut self) -> bool {
        self.wait_status().success()
    }

    /// Waits for the process to exit (at most 30 s); its exit code.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.wait_status().code()
    }

    fn wait_status(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.0.try_wait().expect("wait") {
                // The pipe ends with the child; a loaded machine may take a
                // while to run the thread that reads its last lines.
                let _ = self.stderr_done.recv_timeout(Duration::from_secs(10));
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "ran too long");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A std echo service on its own threads.
pub fn echo_service() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let mut w = s;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    addr
}

/// A directory for a test's files (configs, keys, a browser's profile),
/// emptied first and removed when dropped, so that no run leaves anything
/// behind, even one that fails.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// `rejoin-{name}-{pid}` in the system's temporary directory.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("rejoin-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;

    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
