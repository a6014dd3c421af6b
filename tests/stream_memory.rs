//! What a stream session costs in memory while it is idle, counted by a
//! wrapper around the system allocator (what the sessions hold, not what an
//! allocator caches or the kernel keeps resident). Many servers hold many
//! idle sessions; each must cost little more than what it buffers.

use std::time::Duration;

use rejoin::proto::sealed::Psk;
use rejoin::stream::{self, Config, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Session pairs opened, both ends in this process.
const PAIRS: usize = 100;

/// One measure at a time: under `cargo test` the tests share the process
/// and its heap. (What a finished measure's sessions free while closing
/// only makes the next one's figure smaller.)
static MEASURING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Heap bytes per pair that `PAIRS` connected pairs, each having echoed a
/// few bytes, hold in `config`'s suite.
async fn per_pair(config: Config) -> usize {
    let _alone = MEASURING.lock().await;
    let listener = Listener::bind("127.0.0.1:0", config.clone())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let base = HEAP.allocated();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..PAIRS {
            let mut s = listener.accept().await.expect("accept");
            let mut hello = [0u8; 5];
            s.read_exact(&mut hello).await.expect("hello");
            s.write_all(&hello).await.expect("echo");
            s.flush().await.expect("flush");
            held.push(s);
        }
        (listener, held)
    });
    let mut clients = Vec::new();
    for _ in 0..PAIRS {
        let mut c = stream::connect(addr.to_string(), config.clone())
            .await
            .expect("connect");
        c.write_all(b"hello").await.expect("hello");
        c.flush().await.expect("flush");
        let mut back = [0u8; 5];
        c.read_exact(&mut back).await.expect("echo");
        clients.push(c);
    }
    let held = tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server side within 30 s")
        .expect("the server side");
    let per_pair = HEAP.allocated().saturating_sub(base) / PAIRS;
    drop((clients, held));
    per_pair
}

/// An idle sealed session pair that has moved a few bytes holds about
/// 25 KiB (both ends, each with its 4 KiB of read room, its driver's task
/// and state); it held 90 KiB while every server session carried a
/// channel of 32 resume slots of over a kilobyte each, every session a
/// 64-slot event channel whether or not anybody listened (12 KiB), and
/// every driver the states of a resume or a reconnect inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sealed_session_costs_little_memory() {
    let bytes = per_pair(Config::sealed(Psk::from_passphrase("memory"))).await;
    eprintln!("sealed: {} KiB per idle pair", bytes / 1024);
    assert!(bytes < 40 << 10, "{bytes} bytes per idle pair");
}

/// The same for the compatible suite: about 31 KiB (96 before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_compatible_session_costs_little_memory() {
    let bytes = per_pair(Config::default()).await;
    eprintln!("compatible: {} KiB per idle pair", bytes / 1024);
    assert!(bytes < 48 << 10, "{bytes} bytes per idle pair");
}
