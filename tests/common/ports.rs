//! A port for a test that must name it before anything listens on it.

use std::net::TcpListener;

/// A TCP port free on 127.0.0.1 right now, chosen below the kernel's
/// ephemeral range: the ports `bind(…:0)` and outgoing connections get come
/// from that range, so the tests running beside this one never take it in
/// the time between this check and its use. (A port read back from a
/// listener on port 0 and then closed could be handed out again at once.)
pub fn unclaimed_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // 1024 ports or more below the range, above the well-known ones.
    let (from, to) = (1024u16.max(low.saturating_sub(16384)), low);
    assert!(from < to, "no room below the ephemeral range ({low})");
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let span = u64::from(to - from);
    for i in 0..200u64 {
        let port = from + ((seed.wrapping_mul(2654435761).wrapping_add(i * 7919)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{to} after 200 tries");
}
