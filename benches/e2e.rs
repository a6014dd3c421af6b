//! End-to-end benchmarks on loopback, each against a baseline measured in the
//! same run, printed as ratios:
//!
//! ```sh
//! cargo bench --bench e2e            # everything (a few minutes)
//! cargo bench --bench e2e -- --quick # smaller transfers, fewer samples
//! cargo bench --bench e2e -- --only tunnel
//! ```
//!
//! Sections: the plain-TCP baselines against iperf3 (run beside them), stream throughput (plain and sealed vs TCP, RC4 vs RC4+TCP),
//! tunnel throughput both ways (sealed link, as users run it, vs direct
//! TCP), time to a first byte
//! through the tunnel (vs direct), time from a link reset to the first byte
//! after the resume, the memory of server and client processes holding
//! 1,000 and 10,000 idle visitor connections, and resends against a model of
//! a Go snet peer under cuts (bytes per resume, time to resume). `docs/benchmarks.md` has the
//! figures and what they mean.

mod common;
#[path = "../tests/common/gosnet.rs"]
mod gosnet;

use common::{CHUNK, recv_n, send_n};

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rc4::{KeyInit, Rc4, StreamCipher};
use rejoin::chaos::{CutKind, CutProxy, ProxyConfig};
use rejoin::proto::sealed::Psk;
use rejoin::stream::{self, Config, Listener};
use rejoin::tunnel::auth::Token;
use rejoin::tunnel::client::{Client, ClientConfig, ClientEvent, ServiceConfig};
use rejoin::tunnel::frame::ServiceKind;
use rejoin::tunnel::server::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// The allocator the `rejoin` binary uses (the default `mimalloc` feature);
// `--no-default-features` measures with the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Opts {
    quick: bool,
    only: Option<String>,
}

impl Opts {
    /// Whether `section` runs: all without `--only`; with it, sections whose
    /// name starts with the filter, or that the filter starts with.
    fn wants(&self, section: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|o| section.starts_with(o) || o.starts_with(section))
    }
    fn bytes(&self, full: u64) -> u64 {
        if self.quick { full / 8 } else { full }
    }
    fn samples(&self) -> usize {
        if self.quick { 1 } else { 5 }
    }
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("  .. {msg}");
}

/// Runs the baseline and ours alternately, `n` times each, and returns the
/// medians of each (MB/s for `bytes`) and of the per-pair ratios. Pairing
/// runs that sit side by side in time cancels the machine's slow drift.
async fn paired<B, BF, O, OF>(
    n: usize,
    bytes: u64,
    what: &str,
    mut base: B,
    mut ours: O,
) -> (f64, f64, f64)
where
    B: FnMut() -> BF,
    BF: std::future::Future<Output = ()>,
    O: FnMut() -> OF,
    OF: std::future::Future<Output = ()>,
{
    let timed = |start: Instant| bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    let (mut bs, mut os, mut rs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let start = Instant::now();
        base().await;
        let b = timed(start);
        let start = Instant::now();
        ours().await;
        let o = timed(start);
        progress(format!(
            "{what} {}/{n}: {o:.0} MB/s vs baseline {b:.0} MB/s ({:.2})",
            i + 1,
            o / b
        ));
        bs.push(b);
        os.push(o);
        rs.push(o / b);
    }
    (median(bs), median(os), median(rs))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    name: String,
    value: String,
    baseline: String,
    ratio: Option<f64>,
    target: String,
}

fn print_rows(rows: &[Row]) {
    println!();
    println!("| measure | rejoin | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    for r in rows {
        let ratio = r.ratio.map_or("".to_string(), |x| format!("{x:.2}"));
        println!(
            "| {} | {} | {} | {} | {} |",
            r.name, r.value, r.baseline, ratio, r.target
        );
    }
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- baseline

/// One iperf3 run of `bytes` over loopback; MB/s as iperf3 reports it, or
/// `None` if iperf3 is not installed.
fn iperf3(bytes: u64) -> Option<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port()
        .to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // Bounded: a few tries while the server comes up.
    let mut result = None;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        let out = Command::new("iperf3")
            .args([
                "-c",
                "127.0.0.1",
                "-p",
                &port,
                "-n",
                &bytes.to_string(),
                "-J",
            ])
            .output()
            .ok()?;
        let json: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        if let Some(bps) = json.and_then(|j| j["end"]["sum_received"]["bits_per_second"].as_f64()) {
            result = Some(bps / 8.0 / 1e6);
            break;
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// The plain-TCP baseline every other section divides by, against iperf3
/// in the same run: a ratio near 1 says the baseline is as strong as the
/// best simple program, so ratios against it are honest.
async fn baseline_section(o: &Opts, rows: &mut Vec<Row>) {
    let n = o.samples();
    let bytes = o.bytes(1 << 30);
    eprintln!("plain-TCP baseline vs iperf3");
    let direct = service().await.to_string();
    let (mut is, mut os, mut rs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ds, mut drs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let Some(reference) = tokio::task::spawn_blocking(move || iperf3(bytes))
            .await
            .unwrap()
        else {
            eprintln!("  iperf3 is not installed (apt-get install iperf3): no comparison");
            return;
        };
        let start = Instant::now();
        plain_tcp(bytes).await;
        let ours = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
        progress(format!(
            "baseline {}/{n}: {ours:.0} MB/s vs iperf3 {reference:.0} MB/s ({:.2})",
            i + 1,
            ours / reference
        ));
        is.push(reference);
        os.push(ours);
        rs.push(ours / reference);
        // The tunnel section's direct path: a visitor uploading to the
        // benchmark's service.
        let start = Instant::now();
        upload(&direct, bytes).await;
        let d = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
        progress(format!(
            "direct visitor → service {}/{n}: {d:.0} MB/s",
            i + 1
        ));
        ds.push(d);
        drs.push(d / reference);
    }
    let (reference, ours, ratio) = (median(is), median(os), median(rs));
    rows.push(Row {
        name: "direct TCP, visitor → service (the tunnel's baseline)".into(),
        value: format!("{:.0} MB/s", median(ds)),
        baseline: format!("iperf3 {reference:.0} MB/s"),
        ratio: Some(median(drs)),
        target: "≥ 0.9".into(),
    });
    rows.push(Row {
        name: "plain-TCP baseline (the one all ratios use)".into(),
        value: format!("{ours:.0} MB/s"),
        baseline: format!("iperf3 {reference:.0} MB/s"),
        ratio: Some(ratio),
        target: "≥ 0.9".into(),
    });
}

// ---------------------------------------------------------------- stream

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    let c = c.unwrap();
    c.set_nodelay(true).unwrap();
    let s = s.unwrap().0;
    s.set_nodelay(true).unwrap();
    (c, s)
}

/// Plain TCP as the best simple program does it (iperf3's way): blocking
/// sockets, a sender thread and a receiver thread, 128 KiB writes and reads.
async fn plain_tcp(bytes: u64) {
    tokio::task::spawn_blocking(move || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let receiver = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            blocking::recv_n(&mut s, bytes);
        });
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        blocking::send_n(&mut c, bytes);
        receiver.join().unwrap();
    })
    .await
    .unwrap();
}

/// The TCP endpoints of the direct and tunnel paths: blocking sockets on
/// their own threads, as a real service and a real visitor (iperf3, a web
/// server) are, so that only the path between them differs.
mod blocking {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// The size of every read and write (iperf3's default).
    const CHUNK: usize = 128 << 10;

    pub fn send_n(w: &mut TcpStream, bytes: u64) {
        let buf = vec![0x42u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = CHUNK.min(left as usize);
            w.write_all(&buf[..n]).expect("write");
            left -= n as u64;
        }
    }

    pub fn recv_n(r: &mut TcpStream, bytes: u64) {
        let mut buf = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = r.read(&mut buf[..CHUNK.min(left as usize)]).expect("read");
            assert!(n > 0, "early end of stream");
            left -= n as u64;
        }
    }
}

/// The minimal RC4 + TCP program: encrypt, write; read, decrypt. No snet.
async fn rc4_tcp(bytes: u64) {
    let (mut c, mut s) = tcp_pair().await;
    let key = [7u8; 8];
    let reader = tokio::spawn(async move {
        let mut rc4 = Rc4::new_from_slice(&key).unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = s.read(&mut buf[..CHUNK.min(left as usize)]).await.unwrap();
            assert!(n > 0);
            rc4.apply_keystream(&mut buf[..n]);
            left -= n as u64;
        }
    });
    let mut rc4 = Rc4::new_from_slice(&key).unwrap();
    let plain = vec![0x42u8; CHUNK];
    let mut out = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = CHUNK.min(left as usize);
        rc4.apply_keystream_b2b(&plain[..n], &mut out[..n]);
        c.write_all(&out[..n]).await.unwrap();
        left -= n as u64;
    }
    reader.await.unwrap();
}

async fn rejoin_stream(bytes: u64, encrypt: bool) {
    let mut config = Config::default();
    config.encrypt = encrypt;
    rejoin_stream_with(bytes, config).await;
}

/// The stream with the sealed suite's defaults.
async fn sealed_stream(bytes: u64) {
    let config = Config::sealed(Psk::from_passphrase("bench"));
    rejoin_stream_with(bytes, config).await;
}

async fn rejoin_stream_with(bytes: u64, config: Config) {
    let listener = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let reader = tokio::spawn(async move {
        let mut s = listener.accept().await.unwrap();
        recv_n(&mut s, bytes).await;
        (s, listener)
    });
    let mut c = stream::connect(addr, config).await.unwrap();
    send_n(&mut c, bytes).await;
    let _ = reader.await.unwrap();
}

async fn stream_section(o: &Opts, rows: &mut Vec<Row>) {
    let n = o.samples();
    let plain_bytes = o.bytes(1 << 30);
    eprintln!("stream throughput");
    if o.wants("stream-plain-only") && o.only.as_deref() == Some("stream-plain-only") {
        for i in 0..n {
            let start = Instant::now();
            rejoin_stream(plain_bytes, false).await;
            let r = plain_bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
            progress(format!(
                "stream, no encryption, alone {}/{n}: {r:.0} MB/s",
                i + 1
            ));
        }
        return;
    }
    if o.only.as_deref() == Some("stream-sealed") {
        return sealed_stream_rows(o, rows).await;
    }
    if o.only.as_deref() == Some("stream-rc4") {
        return rc4_stream_rows(o, rows).await;
    }
    let (tcp, ours, ratio) = paired(
        n,
        plain_bytes,
        "stream, no encryption",
        || plain_tcp(plain_bytes),
        || rejoin_stream(plain_bytes, false),
    )
    .await;
    rows.push(Row {
        name: "stream throughput, no encryption".into(),
        value: format!("{ours:.0} MB/s"),
        baseline: format!("plain TCP {tcp:.0} MB/s"),
        ratio: Some(ratio),
        target: "≥ 0.80".into(),
    });
    rc4_stream_rows(o, rows).await;
    sealed_stream_rows(o, rows).await;
}

/// The compatible stream with RC4 beside the minimal RC4 + TCP program
/// (`--only stream-rc4` runs this alone).
async fn rc4_stream_rows(o: &Opts, rows: &mut Vec<Row>) {
    let (n, rc4_bytes) = (o.samples(), o.bytes(256 << 20));
    let (base, ours, ratio) = paired(
        n,
        rc4_bytes,
        "stream, RC4",
        || rc4_tcp(rc4_bytes),
        || rejoin_stream(rc4_bytes, true),
    )
    .await;
    rows.push(Row {
        name: "stream throughput, RC4".into(),
        value: format!("{ours:.0} MB/s"),
        baseline: format!("RC4 + TCP {base:.0} MB/s"),
        ratio: Some(ratio),
        target: "≥ 0.90".into(),
    });
}

/// The sealed stream beside plain TCP (`--only stream-sealed` runs this
/// alone).
async fn sealed_stream_rows(o: &Opts, rows: &mut Vec<Row>) {
    let (n, plain_bytes) = (o.samples(), o.bytes(1 << 30));
    let (tcp, ours, ratio) = paired(
        n,
        plain_bytes,
        "stream, sealed",
        || plain_tcp(plain_bytes),
        || sealed_stream(plain_bytes),
    )
    .await;
    rows.push(Row {
        name: "stream throughput, sealed (AES-256-GCM)".into(),
        value: format!("{ours:.0} MB/s"),
        baseline: format!("plain TCP {tcp:.0} MB/s"),
        ratio: Some(ratio),
        target: "≥ 0.60".into(),
    });
}

// ---------------------------------------------------------------- tunnel

/// A local service: `sink` reads everything; `source` writes what it is asked
/// for (an 8-byte count) and closes; `echo` echoes.
async fn service() -> SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || {
                // First byte: the mode.
                let mut mode = [0u8; 1];
                if s.read_exact(&mut mode).is_err() {
                    return;
                }
                let mut n = [0u8; 8];
                match mode[0] {
                    b'u' => {
                        let _ = s.read_exact(&mut n);
                        blocking::recv_n(&mut s, u64::from_le_bytes(n));
                        let _ = s.write_all(b"k");
                    }
                    b'd' => {
                        let _ = s.read_exact(&mut n);
                        blocking::send_n(&mut s, u64::from_le_bytes(n));
                    }
                    _ => {
                        // Echo one byte at a time (latency).
                        let mut b = [0u8; 1];
                        let _ = s.write_all(&mode);
                        while s.read_exact(&mut b).is_ok() {
                            if s.write_all(&b).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A visitor's session with the service, on its own thread.
async fn visit(to: &str, mode: u8, bytes: u64) {
    use std::io::{Read, Write};
    let to = to.to_string();
    tokio::task::spawn_blocking(move || {
        let mut v = std::net::TcpStream::connect(&to).unwrap();
        v.set_nodelay(true).unwrap();
        v.write_all(&[mode]).unwrap();
        v.write_all(&bytes.to_le_bytes()).unwrap();
        if mode == b'u' {
            blocking::send_n(&mut v, bytes);
            let mut k = [0u8; 1];
            v.read_exact(&mut k).unwrap();
        } else {
            blocking::recv_n(&mut v, bytes);
        }
    })
    .await
    .unwrap();
}

/// Upload: the visitor sends `bytes`, the service confirms with one byte.
async fn upload(to: &str, bytes: u64) {
    visit(to, b'u', bytes).await
}

/// Download: the service sends `bytes` to the visitor.
async fn download(to: &str, bytes: u64) {
    visit(to, b'd', bytes).await
}

struct Tunnel {
    _server: Server,
    _client: tokio::task::JoinHandle<()>,
    public: String,
}

/// The tunnel with its defaults (the link is always sealed).
async fn tunnel(local: SocketAddr) -> Tunnel {
    let token = Token::new("bench");
    let mut sc = ServerConfig::new("127.0.0.1:0".parse().unwrap(), Some(token.clone()));
    if let Ok(b) = std::env::var("BENCH_SOCKBUF") {
        let b: usize = b.parse().unwrap();
        sc.stream.socket_buffer = Some(b);
        sc.stream.history = 8 * b;
    }
    if let Ok(w) = std::env::var("BENCH_WINDOW") {
        sc.mux.max_window = w.parse().unwrap();
    }
    let server = Server::bind(sc).await.unwrap();
    let mut cc = ClientConfig::new(server.local_addr().to_string(), token, "bench");
    if let Ok(b) = std::env::var("BENCH_SOCKBUF") {
        let b: usize = b.parse().unwrap();
        cc.stream.socket_buffer = Some(b);
        cc.stream.history = 8 * b;
    }
    if let Ok(w) = std::env::var("BENCH_WINDOW") {
        cc.mux.max_window = w.parse().unwrap();
    }
    cc.services.push(ServiceConfig {
        name: "bench".into(),
        kind: ServiceKind::Tcp,
        local: local.to_string(),
        port: 0,
    });
    let (client, mut events) = Client::new(cc);
    let task = tokio::spawn(async move {
        let _ = client.run().await;
    });
    let public = loop {
        if let Some(ClientEvent::Published { public, .. }) = events.recv().await {
            break public;
        }
    };
    Tunnel {
        _server: server,
        _client: task,
        public,
    }
}

async fn tunnel_section(o: &Opts, rows: &mut Vec<Row>) {
    let n = o.samples();
    let local = service().await;
    let direct = local.to_string();
    let bytes = o.bytes(1 << 30);
    let t = tunnel(local).await;
    eprintln!("tunnel throughput (sealed link)");
    for (dir, up, section) in [
        ("visitor → service", true, "tunnel-up"),
        ("service → visitor", false, "tunnel-down"),
    ] {
        if !o.wants(section) {
            continue;
        }
        let run = |to: String| async move {
            if up {
                upload(&to, bytes).await
            } else {
                download(&to, bytes).await
            }
        };
        let (base, ours, ratio) = paired(
            n,
            bytes,
            &format!("tunnel, {dir}"),
            || run(direct.clone()),
            || run(t.public.clone()),
        )
        .await;
        rows.push(Row {
            name: format!("tunnel throughput (sealed), {dir}"),
            value: format!("{ours:.0} MB/s"),
            baseline: format!("direct TCP {base:.0} MB/s"),
            ratio: Some(ratio),
            target: "≥ 0.35".into(),
        });
    }
}

// ---------------------------------------------------------------- latency

/// p50 and p99 of a sample, in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    (at(0.50), at(0.99))
}

/// Connect, send one byte, read it back.
async fn first_byte(to: &str) -> Duration {
    let start = Instant::now();
    let mut v = TcpStream::connect(to).await.unwrap();
    v.set_nodelay(true).unwrap();
    v.write_all(b"e").await.unwrap();
    let mut b = [0u8; 1];
    v.read_exact(&mut b).await.unwrap();
    start.elapsed()
}

async fn latency_section(o: &Opts, rows: &mut Vec<Row>) {
    eprintln!("time to a first byte");
    let trials = if o.quick { 200 } else { 2000 };
    let local = service().await;
    let t = tunnel(local).await;
    let direct = local.to_string();
    let (mut d, mut ours) = (Vec::new(), Vec::new());
    for i in 0..trials {
        d.push(first_byte(&direct).await);
        ours.push(first_byte(&t.public).await);
        if (i + 1) % 500 == 0 {
            progress(format!("{}/{trials} connections", i + 1));
        }
    }
    let (d50, d99) = percentiles(d);
    let (o50, o99) = percentiles(ours);
    rows.push(Row {
        name: "open a tunnelled connection and get a first byte, p50".into(),
        value: format!("{o50:.3} ms"),
        baseline: format!("direct {d50:.3} ms"),
        ratio: Some(o50 / d50),
        target: "".into(),
    });
    rows.push(Row {
        name: "open a tunnelled connection and get a first byte, p99".into(),
        value: format!("{o99:.3} ms"),
        baseline: format!("direct {d99:.3} ms"),
        ratio: Some(o99 / d99),
        target: "".into(),
    });
}

// ---------------------------------------------------------------- resume

/// Resets the link, then times until a byte written right after the reset
/// reaches the reader (through the reconnect and the resume).
async fn resume_section(o: &Opts, rows: &mut Vec<Row>) {
    for (suite, config) in [
        ("sealed", Config::sealed(Psk::from_passphrase("bench"))),
        ("compatible", Config::default()),
    ] {
        resume_times(o, rows, suite, config).await;
    }
}

async fn resume_times(o: &Opts, rows: &mut Vec<Row>, suite: &str, config: Config) {
    eprintln!("time from a link reset to the first byte after the resume ({suite})");
    let trials = if o.quick { 30 } else { 200 };
    let listener = Listener::bind("127.0.0.1:0", config.clone()).await.unwrap();
    let proxy = CutProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        listener.local_addr().unwrap(),
        ProxyConfig::default(),
    )
    .await
    .unwrap();
    let mut client = stream::connect(proxy.local_addr().to_string(), config)
        .await
        .unwrap();
    let mut server = listener.accept().await.unwrap();
    let mut b = [0u8; 1];
    let mut times = Vec::new();
    for i in 0..trials {
        // Let the link settle, then break it and write at once.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(proxy.cut_all(CutKind::Reset), 1, "one live link");
        let start = Instant::now();
        server.write_all(&[i as u8]).await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut b).await.unwrap();
        times.push(start.elapsed());
        assert_eq!(b[0], i as u8);
    }
    let (p50, p99) = percentiles(times);
    progress(format!(
        "{trials} resets, {} resumes",
        client.stats().reconnects
    ));
    rows.push(Row {
        name: format!("link reset to first byte after the resume, {suite}, p50"),
        value: format!("{p50:.2} ms"),
        baseline: "".into(),
        ratio: None,
        target: if suite == "sealed" {
            "≤ 5 ms"
        } else {
            "≤ 20 ms"
        }
        .into(),
    });
    rows.push(Row {
        name: format!("link reset to first byte after the resume, {suite}, p99"),
        value: format!("{p99:.2} ms"),
        baseline: "".into(),
        ratio: None,
        target: "".into(),
    });
}

// ---------------------------------------------------------------- interop

/// Bytes forwarded between cuts: an echo forwards each byte twice, so this
/// resets the link about every 645 KB the server reads.
const INTEROP_CUTS: std::ops::RangeInclusive<u64> = 1_230_000..=1_350_000;

/// What one pairing did: resumes, bytes each side resent, time to resume.
struct Interop {
    resumes: u64,
    client_resent: u64,
    server_resent: u64,
    /// From a break to the model's session being up again.
    times: Vec<Duration>,
}

async fn interop_proxy(target: SocketAddr, seed: u64) -> CutProxy {
    CutProxy::start(
        "127.0.0.1:0".parse().unwrap(),
        target,
        ProxyConfig {
            plan: Some(rejoin::chaos::Plan {
                every: INTEROP_CUTS,
                silent: 0.0,
                seed,
            }),
            ..ProxyConfig::default()
        },
    )
    .await
    .unwrap()
}

fn go_config() -> gosnet::GoConfig {
    gosnet::GoConfig {
        version: rejoin::proto::Version::V2,
        encrypt: true,
        buffer: 4 << 20,
        stock: false,
    }
}

/// A model echo server behind a proxy cutting as `INTEROP_CUTS` says.
async fn model_server(seed: u64) -> gosnet::behind::Served {
    let plan = rejoin::chaos::Plan {
        every: INTEROP_CUTS,
        silent: 0.0,
        seed,
    };
    gosnet::behind::serve(go_config(), plan, Duration::from_secs(300), false).await
}

async fn model_client(addr: SocketAddr, bytes: u64, seed: u64) -> gosnet::net::Run {
    gosnet::net::echo_client(
        go_config(),
        addr,
        bytes,
        seed,
        Duration::from_secs(300),
        None,
    )
    .await
    .unwrap()
}

async fn interop_section(o: &Opts, rows: &mut Vec<Row>) {
    eprintln!("resends against a model of a Go snet peer, cuts about every 645 KB read");
    let bytes = o.bytes(32 << 20);
    let mut results = Vec::new();
    for seed in 0..o.samples() as u64 {
        // The baseline: the model on both ends, as Go to Go.
        let served = model_server(seed).await;
        let client = gosnet::net::echo_client(
            go_config(),
            served.proxy.local_addr(),
            bytes,
            seed,
            Duration::from_secs(300),
            None,
        )
        .await;
        let server = served.finish().await;
        let (client, server) = match (client, server) {
            (Ok(c), Ok(s)) => (c, s),
            (c, s) => panic!("model to model: client {:?}, server {:?}", c.err(), s.err()),
        };
        results.push((
            "Go model ↔ Go model",
            Interop {
                resumes: client.stats.resumes,
                client_resent: client.stats.rewritten,
                server_resent: server.stats.rewritten,
                times: client.resume_times,
            },
        ));
        // The model as client, rejoin's stream as server.
        let listener = Listener::bind("127.0.0.1:0", Config::default())
            .await
            .unwrap();
        let proxy = interop_proxy(listener.local_addr().unwrap(), seed).await;
        let echo = tokio::spawn(async move {
            let stream = listener.accept().await.unwrap();
            let handle = stream.handle();
            let (mut r, mut w) = stream.into_split();
            tokio::spawn(async move { tokio::io::copy(&mut r, &mut w).await });
            // The listener takes the reconnects: it lives as long as the session.
            (handle, listener)
        });
        let client = model_client(proxy.local_addr(), bytes, seed).await;
        let server = echo.await.unwrap().0.stats();
        results.push((
            "Go model client → rejoin server",
            Interop {
                resumes: client.stats.resumes,
                client_resent: client.stats.rewritten,
                server_resent: server.resent,
                times: client.resume_times,
            },
        ));
        // rejoin's stream as client, the model as server: with its default
        // socket buffers, and with the model's.
        for (name, socket_buffer) in [
            (
                "rejoin client → Go model server",
                Config::default().socket_buffer,
            ),
            (
                "rejoin client, model's socket buffers → Go model server",
                Some(gosnet::net::SOCKET_BUFFER as usize),
            ),
        ] {
            let served = model_server(seed).await;
            let mut config = Config::default();
            config.socket_buffer = socket_buffer;
            let stream = stream::connect(served.proxy.local_addr().to_string(), config)
                .await
                .unwrap();
            let handle = stream.handle();
            let (mut r, mut w) = stream.into_split();
            let writer = tokio::spawn(async move { send_n(&mut w, bytes).await });
            recv_n(&mut r, bytes).await;
            writer.await.unwrap();
            let server = served.finish().await.unwrap();
            results.push((
                name,
                Interop {
                    resumes: server.stats.resumes,
                    client_resent: handle.stats().resent,
                    server_resent: server.stats.rewritten,
                    times: server.resume_times,
                },
            ));
        }
        progress(format!("interop sample {}/{}", seed + 1, o.samples()));
    }
    for name in [
        "Go model ↔ Go model",
        "Go model client → rejoin server",
        "rejoin client → Go model server",
        "rejoin client, model's socket buffers → Go model server",
    ] {
        let runs: Vec<&Interop> = results
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, r)| r)
            .collect();
        let resumes: u64 = runs.iter().map(|r| r.resumes).sum();
        let per = |f: fn(&Interop) -> u64| {
            runs.iter().map(|r| f(r)).sum::<u64>() as f64 / resumes.max(1) as f64 / 1024.0
        };
        let mut times: Vec<Duration> = runs.iter().flat_map(|r| r.times.clone()).collect();
        if times.is_empty() {
            times.push(Duration::ZERO);
        }
        let (p50, p99) = percentiles(times);
        rows.push(Row {
            name: format!("{name}: resumes, KiB resent per resume (client / server)"),
            value: format!(
                "{resumes}, {:.0} / {:.0}",
                per(|r| r.client_resent),
                per(|r| r.server_resent)
            ),
            baseline: "".into(),
            ratio: None,
            target: "".into(),
        });
        rows.push(Row {
            name: format!("{name}: time to resume, p50 / p99"),
            value: format!("{p50:.1} / {p99:.1} ms"),
            baseline: "".into(),
            ratio: None,
            target: "".into(),
        });
    }
}

// ---------------------------------------------------------------- memory

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A child process whose stdout lines can be read.
struct Proc {
    child: Child,
    lines: Option<std::io::Lines<std::io::BufReader<std::process::ChildStdout>>>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let out = child.stdout.take().expect("stdout");
        use std::io::BufRead;
        Proc {
            child,
            lines: Some(std::io::BufReader::new(out).lines()),
        }
    }

    fn line(&mut self) -> String {
        let lines = self.lines.as_mut().expect("lines not taken");
        match lines.next() {
            Some(Ok(line)) => line,
            _ => fail("a child process ended before printing its line"),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--role hold`: accepts connections and holds them; prints its address,
/// then the count of held connections whenever it has changed (at most ten
/// times a second).
fn hold_service() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A deep backlog: the tunnel client opens connections in bursts.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = socket.listen(8192).unwrap();
        println!("{}", l.local_addr().unwrap());
        let _ = std::io::stdout().flush();
        let mut held = Vec::new();
        let mut told = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                accepted = l.accept() => match accepted {
                    Ok((s, _)) => held.push(s),
                    Err(e) => {
                        eprintln!("hold: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = tick.tick() => {
                    // A closed connection is no longer held.
                    held.retain(|s| s.peer_addr().is_ok());
                    if held.len() != told {
                        told = held.len();
                        println!("{told}");
                        let _ = std::io::stdout().flush();
                    }
                }
            }
        }
    });
}

/// Stops the benchmark with a message and a failing exit code: a run that
/// cannot measure what it claims must not hang or print a figure.
fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("benchmark failed: {msg}");
    std::process::exit(1);
}

async fn memory_section(rows: &mut Vec<Row>) {
    eprintln!("memory with idle visitors (server and client are separate processes)");
    let exe = std::env::current_exe().unwrap();
    let mut hold = Proc::spawn(Command::new(&exe).args(["--role", "hold"]));
    let hold_addr = hold.line();
    // The hold service's latest count, read on a thread of its own.
    let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let held = held.clone();
        let mut lines = hold.lines.take().expect("the hold service's output");
        std::thread::spawn(move || {
            while let Some(Ok(line)) = lines.next() {
                if let Ok(n) = line.parse() {
                    held.store(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    let rejoin = env!("CARGO_BIN_EXE_rejoin");
    let mut server = Proc::spawn(Command::new(rejoin).args([
        "server",
        "--listen",
        "127.0.0.1:0",
        "--token",
        "bench",
    ]));
    let server_addr = server.line().replace("listening on ", "");
    let mut client = Proc::spawn(Command::new(rejoin).args([
        "client",
        "--server",
        &server_addr,
        "--token",
        "bench",
        "--tcp",
        &hold_addr,
    ]));
    let public: SocketAddr = client.line().rsplit(' ').next().unwrap().parse().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s0, c0) = (rss_kib(server.child.id()), rss_kib(client.child.id()));
    progress(format!("idle: server {s0} KiB, client {c0} KiB"));
    let mut visitors = Vec::new();
    for target in [1000usize, 10_000] {
        while visitors.len() < target {
            // In batches, each waited for, so the service's accept queue
            // never overflows (an overflow leaves connections to time out).
            let batch = (visitors.len() + 500).min(target);
            while visitors.len() < batch {
                // Spread visitors over source addresses so ephemeral ports last.
                let n = visitors.len();
                let ip = std::net::Ipv4Addr::new(127, 0, 1, 2 + (n % 200) as u8);
                let sock = tokio::net::TcpSocket::new_v4()
                    .and_then(|s| s.bind(SocketAddr::new(ip.into(), 0)).map(|()| s))
                    .unwrap_or_else(|e| {
                        fail(format!(
                            "visitor {n}: no socket: {e} (10,000 visitors need an open-file \
                             limit above 10,000 in every process: ulimit -n)"
                        ))
                    });
                match tokio::time::timeout(Duration::from_secs(10), sock.connect(public)).await {
                    Ok(Ok(v)) => visitors.push(v),
                    Ok(Err(e)) => fail(format!("visitor {n} could not connect to {public}: {e}")),
                    Err(_) => fail(format!(
                        "visitor {n} could not connect to {public} within 10 s"
                    )),
                }
            }
            let started = Instant::now();
            let mut last = (0, Instant::now());
            loop {
                let now_held = held.load(std::sync::atomic::Ordering::Relaxed);
                if now_held >= batch {
                    break;
                }
                if now_held != last.0 {
                    last = (now_held, Instant::now());
                }
                if last.1.elapsed() > Duration::from_secs(15)
                    || started.elapsed() > Duration::from_secs(120)
                {
                    fail(format!(
                        "only {now_held} of {batch} visitors reached the service through the tunnel \
                         (no progress for 15 s): the client could not connect the rest; \
                         check the open-file limit (ulimit -n) and the client's log"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s, c) = (rss_kib(server.child.id()), rss_kib(client.child.id()));
        let per_s = s.saturating_sub(s0) as f64 / target as f64;
        let per_c = c.saturating_sub(c0) as f64 / target as f64;
        progress(format!("{target} visitors: server {s} KiB, client {c} KiB"));
        rows.push(Row {
            name: format!("memory per idle visitor, {target} visitors, server"),
            value: format!("{per_s:.2} KiB"),
            baseline: format!("RSS {s0} → {s} KiB"),
            ratio: None,
            target: "≤ 10 KiB".into(),
        });
        rows.push(Row {
            name: format!("memory per idle visitor, {target} visitors, client"),
            value: format!("{per_c:.2} KiB"),
            baseline: format!("RSS {c0} → {c} KiB"),
            ratio: None,
            target: "≤ 10 KiB".into(),
        });
    }
}

fn main() {
    if std::env::args().any(|a| a == "--role") {
        return hold_service();
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    let opts = Opts {
        quick: args.iter().any(|a| a == "--quick"),
        only: args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1).cloned()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    rt.block_on(async {
        if opts.wants("baseline") {
            baseline_section(&opts, &mut rows).await;
        }
        if opts.wants("stream") {
            stream_section(&opts, &mut rows).await;
        }
        if opts.wants("tunnel") {
            tunnel_section(&opts, &mut rows).await;
        }
        if opts.wants("latency") {
            latency_section(&opts, &mut rows).await;
        }
        if opts.wants("resume") {
            resume_section(&opts, &mut rows).await;
        }
        if opts.wants("interop") {
            interop_section(&opts, &mut rows).await;
        }
        if opts.wants("memory") {
            memory_section(&mut rows).await;
        }
    });
    print_rows(&rows);
}
