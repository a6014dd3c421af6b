//! The subcommands of the `rejoin` binary.

pub mod admin;
pub mod check;
pub mod client;
pub mod config;
pub mod demo;
pub mod server;
pub mod status;

/// What a running server or client is asked to do by a signal.
pub enum Signal {
    /// Ctrl-C or SIGTERM: say goodbye and exit.
    Stop,
    /// SIGHUP: re-read the config file.
    Reload,
}

/// The signals a server or client listens for. Made once at start, so a
/// SIGHUP that arrives at any point after is a reload, never the end of
/// the process, and a Ctrl-C or SIGTERM is never missed between two waits
/// for them; SIGUSR1 and SIGUSR2 are ignored (logged) for the same reason.
pub struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    #[cfg(unix)]
    usr: [tokio::signal::unix::Signal; 2],
}

impl Signals {
    pub fn new() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
                hup: signal(SignalKind::hangup())?,
                usr: [
                    signal(SignalKind::user_defined1())?,
                    signal(SignalKind::user_defined2())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next stop or reload.
    pub async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        loop {
            let [usr1, usr2] = &mut self.usr;
            tokio::select! {
                _ = self.int.recv() => return Signal::Stop,
                _ = self.term.recv() => return Signal::Stop,
                _ = self.hup.recv() => return Signal::Reload,
                _ = usr1.recv() => tracing::info!("SIGUSR1 ignored (SIGHUP reloads the config)"),
                _ = usr2.recv() => tracing::info!("SIGUSR2 ignored (SIGHUP reloads the config)"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

/// How long a reload may take to read its files: a FIFO with no writer, or
/// a hung network mount, must not keep the process from its signals.
const REREAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGHUP's first half: the config file read again through `settings`, on
/// a thread of its own, within [`REREAD_TIMEOUT`]. `None` (with the reason
/// logged) when there is no file or it is broken: the running config then
/// stays in force.
pub async fn reread<T: Send + 'static>(
    file: Option<&std::path::Path>,
    settings: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Option<T> {
    let Some(path) = file else {
        tracing::warn!("SIGHUP: no config file to reload (started with flags only)");
        return None;
    };
    // One reader at a time: SIGHUPs sent while one is stuck on a file must
    // not leave a thread each behind.
    static READING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    use std::sync::atomic::Ordering;
    if READING.swap(true, Ordering::AcqRel) {
        tracing::error!(file = %path.display(), "reload failed, the old config stays in force: the last reload is still reading its files (stuck on a FIFO or a hung mount?)");
        return None;
    }
    /// Clears `READING` when the read ends, however it ends.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            READING.store(false, Ordering::Release);
        }
    }
    let done = Done;
    let spawned = on_a_thread("reload", move || {
        let _done = done;
        settings()
    });
    let result = match spawned {
        // (The closure, and `done` in it, went with the failed spawn.)
        Err(e) => Err(e),
        Ok(rx) => match tokio::time::timeout(REREAD_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(anyhow::anyhow!("reading the files failed")),
            // (The thread stays blocked until the file gives way; the
            // process goes on.)
            Err(_) => Err(anyhow::anyhow!(
                "reading the files took longer than {REREAD_TIMEOUT:?} (a FIFO, or a hung mount?)"
            )),
        },
    };
    match result {
        Ok(config) => Some(config),
        Err(e) => {
            tracing::error!(file = %path.display(), "reload failed, the old config stays in force: {e:#}");
            None
        }
    }
}

/// Runs `work` (reading files) on a thread of its own, not the runtime's
/// blocking pool: a runtime waits for its blocking tasks when it shuts down,
/// and one stuck on a FIFO would keep the process from exiting.
fn on_a_thread<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<anyhow::Result<T>>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| anyhow::anyhow!("cannot start a thread to read the files: {e}"))?;
    Ok(rx)
}

/// The start's reading of its files (token file, config, key) through
/// `work`, on a thread of its own: a token file that is a FIFO may take its
/// time (`<(pass show …)` waiting for a passphrase) or never be written,
/// and Ctrl-C and SIGTERM must still end the process meanwhile. `None` if
/// one did.
pub async fn at_start<T: Send + 'static>(
    signals: &mut Signals,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<Option<T>> {
    let mut read = on_a_thread("start", work)?;
    loop {
        tokio::select! {
            result = &mut read => {
                return result
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("reading the files failed")))
                    .map(Some);
            }
            signal = signals.next() => match signal {
                Signal::Stop => {
                    tracing::warn!("stopped while still reading the files at the start (a FIFO nobody writes?)");
                    return Ok(None);
                }
                Signal::Reload => tracing::warn!("SIGHUP ignored: still reading the files at the start"),
            },
        }
    }
}

/// A reload's check that the admin endpoint's settings in the file are as
/// they were at the start: the endpoint is set up once, so a changed
/// address or token (say, a leaked one rotated) would silently not apply.
pub fn admin_as_started(
    started: &config::AdminFile,
    now: anyhow::Result<config::AdminFile>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        now? == *started,
        "`admin`, `admin_token` and `admin_token_file` cannot change while running (restart for that)"
    );
    Ok(())
}

/// The exit status of an error that starting again unchanged cannot mend
/// (`EX_CONFIG` of sysexits.h): settings or a key file that cannot work, or
/// every service refused by the server (an answer on the authenticated
/// link). The systemd units do not restart on it. A refused login is not
/// among them: the handshake's refusal travels before anything is
/// authenticated, so anyone on the path could forge one, and a name held by
/// another login can be let go a moment later; those exit 1, and a unit
/// starts the client again.
pub const EXIT_NO_RETRY: u8 = 78;

/// An error that starting again unchanged cannot mend: it prints as the
/// error it wraps.
#[derive(Debug)]
pub struct NoRetry(pub anyhow::Error);

impl std::fmt::Display for NoRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for NoRetry {}

/// Marks an error as one that starting again cannot mend.
pub fn no_retry(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(NoRetry(e))
}

/// The process's exit status for `e`: [`EXIT_NO_RETRY`] if retrying cannot
/// mend it, else 1.
pub fn exit_status(e: &anyhow::Error) -> u8 {
    use rejoin::tunnel::client::ClientError;
    let hopeless = e.chain().any(|cause| {
        cause.is::<NoRetry>()
            || matches!(
                cause.downcast_ref::<ClientError>(),
                Some(ClientError::AllRefused(_) | ClientError::Config(_))
            )
    });
    if hopeless { EXIT_NO_RETRY } else { 1 }
}

/// Logged when a token from the command line or the environment takes the
/// place of the config file's.
pub const TOKEN_REPLACED: &str =
    "the token from --token-file, --token or REJOIN_TOKEN replaces the config file's";

/// The most a token or key file may hold.
pub const SMALL_FILE: u64 = 64 << 10;

/// The most a config file may hold.
pub const CONFIG_FILE: u64 = 1 << 20;

/// Reads a file of at most `most` bytes as UTF-8: a mistaken path (a device
/// such as /dev/zero, a huge file) gives an error, not a running server's
/// memory filled. A regular file's size is checked before it is read;
/// anything else (a pipe: `--token-file <(pass show …)`) is read up to the
/// bound. (A FIFO with no writer blocks the read: [`at_start`] and
/// [`reread`] keep that from hanging a start or a reload.) `NotFound` stays
/// recognisable.
pub fn read_small(path: &std::path::Path, most: u64) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let too_large = || Error::new(ErrorKind::InvalidInput, format!("larger than {most} bytes"));
    if std::fs::metadata(path)?.len() > most {
        return Err(too_large());
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(most + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > most {
        return Err(too_large());
    }
    Ok(text)
}

/// Reads a token from a file (`--token-file`, `token_file`): its first
/// line, trimmed, as `rejoin token > FILE` writes it.
pub fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    let text = read_small(path, SMALL_FILE)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    Ok(token)
}

/// `--token-file`, read once at the start into `token` and then forgotten:
/// a reload must not read it again (a pipe, `<(pass show …)`, is empty the
/// second time; the token cannot change while running).
pub fn token_from_file(
    token_file: &mut Option<std::path::PathBuf>,
    token: &mut Option<String>,
) -> anyhow::Result<()> {
    if let Some(path) = token_file.take() {
        *token = Some(read_token_file(&path)?);
    }
    Ok(())
}

/// The admin endpoint asked for, checked: where it listens, and its token.
pub struct AdminPlan {
    addr: std::net::SocketAddr,
    token: Option<String>,
}

/// Checks the admin endpoint's settings (the flag wins over the file), so
/// that a bad one stops the start before anything is bound or printed.
pub fn admin_plan(
    flag: Option<&str>,
    token: Option<String>,
    file: config::AdminFile,
) -> anyhow::Result<Option<AdminPlan>> {
    let Some(addr) = flag.map(str::to_string).or(file.addr) else {
        return Ok(None);
    };
    // A bad address stays bad however often the process starts again; a
    // port in use may come free.
    let addr = admin::parse_addr(&addr).map_err(no_retry)?;
    // Trimmed as a token file's is: HTTP trims a header's value, so one
    // with spaces around it could never be presented.
    let token = match token.or(file.token) {
        Some(t) if t.trim().is_empty() => {
            return Err(no_retry(anyhow::anyhow!("the admin token is empty")));
        }
        t => t.map(|t| t.trim().to_string()),
    };
    Ok(Some(AdminPlan { addr, token }))
}

impl AdminPlan {
    /// Fails if the admin endpoint would listen where the tunnel server
    /// does (`listen`): the start would bind the tunnel, then fail on the
    /// admin port for ever.
    pub fn apart_from(&self, listen: std::net::SocketAddr) -> anyhow::Result<()> {
        let (a, l) = (self.addr, listen);
        let overlap = a.ip() == l.ip() || a.ip().is_unspecified() || l.ip().is_unspecified();
        if a.port() != 0 && a.port() == l.port() && overlap {
            return Err(no_retry(anyhow::anyhow!(
                "the admin address {a} is where the tunnel listens ({l}): give it another port"
            )));
        }
        Ok(())
    }
}

/// Starts the admin endpoint if asked for, and prints where it is.
pub async fn start_admin(plan: Option<AdminPlan>, source: admin::Source) -> anyhow::Result<()> {
    let Some(AdminPlan { addr, token }) = plan else {
        return Ok(());
    };
    let bound = admin::start(addr, token, source).await?;
    say!("admin at http://{bound}");
    Ok(())
}

/// Prints a line to stdout. If stdout is gone (`rejoin demo | head`), the
/// command ends quietly instead of panicking as `println!` would.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// `println!` for the binary's output, through [`print_line`].
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::cmd::print_line(format_args!($($arg)*))
    };
}
pub(crate) use say;
