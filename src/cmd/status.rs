//! `rejoin status`: what a running server or client reports on its admin
//! endpoint, as tables.

use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::Request;
use hyper::body::Bytes;

use super::admin::Status;
use rejoin::tunnel::frame::unsafe_char;

use super::say;

/// The admin endpoint `rejoin status` asks when not told otherwise.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:7070";
/// The most a status reply may hold.
const MAX_REPLY: usize = 16 << 20;
/// The whole request must be answered within this.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(clap::Args)]
pub struct Args {
    /// The admin endpoint of a running `rejoin server` or `rejoin client`
    /// (its `--admin`): a URL like http://127.0.0.1:7070, HOST:PORT, or a
    /// port on 127.0.0.1.
    #[arg(long, env = "REJOIN_ADMIN", hide_env_values = true, default_value = DEFAULT_ADMIN)]
    admin: String,
    /// The admin endpoint's token, if it has one.
    #[arg(long, env = "REJOIN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Print the JSON as the endpoint gives it (`/api/status`).
    #[arg(long)]
    json: bool,
}

/// `host:port` from `http://host:port/`, `host:port` or `port`.
fn authority(admin: &str) -> anyhow::Result<String> {
    let text = admin.trim();
    if text.starts_with("https://") {
        bail!(
            "{text}: the admin endpoint speaks plain http (keep it on loopback, or put a TLS proxy in front)"
        );
    }
    let rest = text.strip_prefix("http://").unwrap_or(text);
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() {
        bail!(
            "{text:?} is not an admin address: give a URL like {DEFAULT_ADMIN}, HOST:PORT or a port"
        );
    }
    if host.parse::<u16>().is_ok() {
        return Ok(format!("127.0.0.1:{host}"));
    }
    if !host.contains(':') {
        bail!("{text:?} has no port: give a URL like {DEFAULT_ADMIN}");
    }
    Ok(host.to_string())
}

async fn fetch(host: &str, token: Option<&str>) -> anyhow::Result<String> {
    let sock = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot reach the admin endpoint at {host} (is the server or client running with --admin?)"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock))
            .await
            .with_context(|| format!("admin endpoint at {host}"))?;
    tokio::spawn(conn);
    let mut req = Request::get("/api/status").header(hyper::header::HOST, host);
    if let Some(token) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let reply = sender
        .send_request(req.body(Empty::<Bytes>::new())?)
        .await
        .with_context(|| format!("admin endpoint at {host}"))?;
    let code = reply.status();
    let body = Limited::new(reply.into_body(), MAX_REPLY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("admin endpoint at {host}: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    match code.as_u16() {
        200 => Ok(text),
        401 if token.is_some() => bail!(
            "the admin endpoint at {host} refused the admin token given (--admin-token or REJOIN_ADMIN_TOKEN)"
        ),
        401 => bail!("the admin endpoint at {host} wants a token: give --admin-token"),
        _ => bail!(
            "the admin endpoint at {host} answered {code}: {}",
            text.trim()
        ),
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let host = authority(&args.admin)?;
    let text = tokio::time::timeout(DEADLINE, fetch(&host, args.admin_token.as_deref()))
        .await
        .with_context(|| {
            format!("the admin endpoint at {host} did not answer within {DEADLINE:?}")
        })??;
    if args.json {
        say!("{}", text.trim_end());
        return Ok(());
    }
    let status: Status = serde_json::from_str(&text).with_context(|| {
        format!("the admin endpoint at {host} sent something that is not rejoin's status")
    })?;
    for line in render(&status, at(status.now)) {
        // Every line, not just the names: the endpoint's answer is not
        // trusted to keep escape sequences out of the terminal.
        say!("{}", clean(&line));
    }
    Ok(())
}

fn ago(unix: Option<u64>, now: SystemTime) -> String {
    let Some(t) = unix else {
        return "-".into();
    };
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(t);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The time `secs` after the Unix epoch (the epoch itself if that is past
/// what the clock can hold: the figures come from the endpoint).
fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Text with unsafe characters shown escaped: names come from remote
/// clients (and an older server may pass them on), and a name must not be
/// able to drive the operator's terminal or reorder the line it is on.
fn clean(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if unsafe_char(c) {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Lines of a table, columns padded to their widest cell.
fn table(head: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(head.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out
}

/// The status as a person reads it: a summary line, clients, services.
pub fn render(s: &Status, now: SystemTime) -> Vec<String> {
    let mut out = Vec::new();
    let place = match s.role.as_str() {
        "server" => format!("listening on {}", s.address),
        _ => format!("server {}", s.address),
    };
    out.push(format!(
        "rejoin {} {} (version {}, up {})",
        s.role,
        place,
        s.version,
        ago(Some(0), at(s.uptime_seconds)).trim_end_matches(" ago")
    ));
    out.push(String::new());
    let clients: Vec<Vec<String>> = s
        .clients
        .iter()
        .map(|c| {
            let link = match (c.since, c.link_up) {
                (None, _) => "no session",
                (_, true) => "up",
                (_, false) => "down (resuming)",
            };
            vec![
                c.name.clone(),
                link.into(),
                c.peer.clone().unwrap_or_else(|| "-".into()),
                c.thread.clone().unwrap_or_else(|| "-".into()),
                ago(c.since, now),
                ago(c.last_resume, now),
                c.resumes.to_string(),
                bytes(c.resent_bytes),
            ]
        })
        .collect();
    if clients.is_empty() {
        out.push("no client logged in".into());
    } else {
        out.extend(table(
            &[
                "CLIENT",
                "LINK",
                "ADDRESS",
                "THREAD",
                "LOGGED IN",
                "LAST RESUME",
                "RESUMES",
                "RESENT",
            ],
            &clients,
        ));
    }
    let services: Vec<Vec<String>> = s
        .clients
        .iter()
        .flat_map(|c| {
            c.services.iter().map(|v| {
                vec![
                    c.name.clone(),
                    v.name.clone(),
                    v.kind.clone(),
                    v.public.clone().unwrap_or_else(|| "-".into()),
                    v.local.clone().unwrap_or_else(|| "-".into()),
                    v.state.clone(),
                    v.visitors.to_string(),
                    bytes(v.bytes_to_service),
                    bytes(v.bytes_to_visitors),
                ]
            })
        })
        .collect();
    if !services.is_empty() {
        out.push(String::new());
        out.extend(table(
            &[
                "CLIENT",
                "SERVICE",
                "KIND",
                "PUBLIC",
                "LOCAL",
                "STATE",
                "VISITORS",
                "TO SERVICE",
                "TO VISITORS",
            ],
            &services,
        ));
    }
    let turned_away: Vec<String> = s
        .clients
        .iter()
        .flat_map(|c| {
            c.services
                .iter()
                .filter(|v| v.visitors_refused > 0)
                .map(move |v| format!("{}/{} {}", c.name, v.name, v.visitors_refused))
        })
        .collect();
    if !turned_away.is_empty() {
        out.push(String::new());
        out.push(format!(
            "visitors refused at a limit: {}",
            turned_away.join(", ")
        ));
    }
    let refused = s
        .logins_refused
        .values()
        .fold(0u64, |a, n| a.saturating_add(*n));
    if refused > 0 {
        let by: Vec<String> = s
            .logins_refused
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        out.push(String::new());
        out.push(format!("logins refused: {refused} ({})", by.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_in_every_form() {
        assert_eq!(
            authority("http://127.0.0.1:7070/").unwrap(),
            "127.0.0.1:7070"
        );
        assert_eq!(authority("127.0.0.1:9").unwrap(), "127.0.0.1:9");
        assert_eq!(authority("9090").unwrap(), "127.0.0.1:9090");
        assert!(authority("https://x:1").is_err());
        assert!(authority("http://host").is_err());
        assert!(authority("").is_err());
    }

    #[test]
    fn names_cannot_drive_the_terminal() {
        let lines = table(
            &["NAME"],
            &[vec!["evil\u{1b}]52;c;aGk=\u{7}\u{1b}[2J".into()]],
        );
        assert!(
            !lines[1].contains('\u{1b}') && !lines[1].contains('\u{7}'),
            "{:?}",
            lines[1]
        );
        assert!(lines[1].starts_with("evil\\u{1b}]52"), "{:?}", lines[1]);
    }

    /// An endpoint that answers with impossible figures and escape
    /// sequences outside the names (a hostile one, or one in the middle of
    /// plain HTTP): no panic, and nothing reaches the terminal unescaped.
    #[test]
    fn a_hostile_status_neither_panics_nor_drives_the_terminal() {
        let evil = "x\u{1b}[2J\u{202e}y".to_string();
        let status = Status {
            role: evil.clone(),
            version: evil.clone(),
            uptime_seconds: u64::MAX,
            now: u64::MAX,
            address: evil.clone(),
            clients: Vec::new(),
            logins_refused: [(evil.clone(), u64::MAX), ("b".into(), u64::MAX)]
                .into_iter()
                .collect(),
        };
        let lines = render(&status, at(status.now));
        assert!(!lines.is_empty());
        for line in lines.iter().map(|l| clean(l)) {
            assert!(!line.chars().any(unsafe_char), "{line:?}");
        }
        assert_eq!(clean("a\u{2066}b"), "a\\u{2066}b");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
