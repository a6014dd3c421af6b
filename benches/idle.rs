//! What an idle stream connection keeps once a burst is over, both suites:
//!
//! ```sh
//! cargo bench --bench idle
//! ```
//!
//! One process opens 400 stream pairs on loopback (both ends here), echoes
//! a 256 KiB burst over each, and leaves them idle past the quiet trim
//! (two askings, 10 s apart). It prints the heap bytes allocated per pair
//! (both ends) right after the burst and once quiet, counted by a wrapper
//! around the system allocator, so the figures are what the sessions hold,
//! not what an allocator keeps cached or the kernel keeps resident. The
//! baseline for the quiet figure is what the protocol obliges each side to
//! keep: the compatible suite has no acknowledgements, so its history holds
//! the 256 KiB a side sent; the sealed suite's peer acknowledged them.

use std::time::Duration;

use rejoin::proto::sealed::Psk;
use rejoin::stream::{self, Config, Listener};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// Stream pairs held.
const PAIRS: usize = 400;
/// What each end of a pair writes, and reads back, before it goes quiet.
const BURST: usize = 256 << 10;
/// Past two askings of the quiet trim (`TRIM_EVERY`, 10 s).
const QUIET: Duration = Duration::from_secs(25);

/// Heap bytes allocated per pair above `base`, in KiB.
fn per_pair(base: usize) -> f64 {
    HEAP.allocated().saturating_sub(base) as f64 / PAIRS as f64 / 1024.0
}

async fn measure(config: Config) -> (f64, f64) {
    let listener = Listener::bind("127.0.0.1:0", config.clone())
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let base = HEAP.allocated();
    let accepting = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..PAIRS {
            let mut s = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; BURST];
            s.read_exact(&mut buf).await.expect("burst in");
            s.write_all(&buf).await.expect("echo");
            s.flush().await.expect("flush");
            held.push(s);
        }
        held
    });
    let mut clients = Vec::new();
    for _ in 0..PAIRS {
        let mut c = stream::connect(addr.to_string(), config.clone())
            .await
            .expect("connect");
        c.write_all(&vec![7u8; BURST]).await.expect("burst out");
        c.flush().await.expect("flush");
        let mut back = vec![0u8; BURST];
        c.read_exact(&mut back).await.expect("echo back");
        clients.push(c);
    }
    let held = accepting.await.expect("the accepting task");
    let burst = per_pair(base);
    tokio::time::sleep(QUIET).await;
    let quiet = per_pair(base);
    drop((clients, held));
    (burst, quiet)
}

fn main() {
    // Each suite in a process of its own: one suite's sessions still
    // closing in the background must not count in the other's figures.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--suite") {
        return suite(args.get(i + 1).map_or("", String::as_str));
    }
    println!(
        "| suite | heap per idle pair once quiet | right after the burst | ratio | the protocol's part |"
    );
    println!("|---|---|---|---|---|");
    let exe = std::env::current_exe().expect("this benchmark's path");
    for name in ["compatible", "sealed"] {
        eprintln!(
            "{name}: {PAIRS} pairs, a {} KiB burst each way",
            BURST / 1024
        );
        let status = std::process::Command::new(&exe)
            .args(["--suite", name])
            .status()
            .expect("run a suite");
        if !status.success() {
            eprintln!("the {name} suite's run failed: {status}");
            std::process::exit(1);
        }
    }
}

/// Measures one suite and prints its row.
fn suite(name: &str) {
    let (config, kept) = match name {
        "compatible" => (Config::default(), 2 * BURST / 1024),
        "sealed" => (Config::sealed(Psk::from_passphrase("bench")), 0),
        other => {
            eprintln!("no suite {other:?}: compatible or sealed");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (burst, quiet) = rt.block_on(measure(config));
    println!(
        "| {name} | {quiet:.1} KiB | {burst:.0} KiB | {:.3} | {kept} KiB (its histories) |",
        quiet / burst
    );
}
