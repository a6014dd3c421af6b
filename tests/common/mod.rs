//! Helpers shared by the integration tests.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Logs rejoin's events (`info`, or what `RUST_LOG` says) to the test's
/// output, which the test runner shows only for a failing test.
pub fn logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("rejoin=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Writes `len` bytes drawn from a seeded generator in chunks of varying
/// size; returns their SHA-256.
pub async fn send_random<W: AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> std::io::Result<[u8; 32]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut left = len;
    while left > 0 {
        let n = (1 + (rng.next_u32() as usize) % buf.len()).min(left as usize);
        rng.fill_bytes(&mut buf[..n]);
        sha.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    w.flush().await?;
    Ok(sha.finalize().into())
}

/// Reads exactly `len` bytes; returns their SHA-256.
pub async fn recv_digest<R: AsyncRead + Unpin>(r: &mut R, len: u64) -> std::io::Result<[u8; 32]> {
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(left as usize);
        let n = r.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("end of stream with {left} bytes to go"),
            ));
        }
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(sha.finalize().into())
}

/// The SHA-256 of what `send_random(seed, len)` writes.
pub fn digest_of(seed: u64, len: u64) -> [u8; 32] {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut left = len;
    while left > 0 {
        let n = (1 + (rng.next_u32() as usize) % buf.len()).min(left as usize);
        rng.fill_bytes(&mut buf[..n]);
        sha.update(&buf[..n]);
        left -= n as u64;
    }
    sha.finalize().into()
}
/// This process's resident memory, in KiB (0 where /proc is missing).
pub fn rss_kib() -> u64 {
    rss_kib_of("self")
}

/// The resident memory of process `pid` ("self" for this one), in KiB; 0 if
/// it cannot be read.
pub fn rss_kib_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub mod ports;
pub mod sealed;
pub mod tunnel;
