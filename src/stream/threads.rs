//! Threads of a listener's own for its sessions' drivers
//! ([`Config::threads`](super::Config::threads)).
//!
//! Each thread runs a single-threaded runtime. A session's driver goes to
//! the thread with the fewest sessions and stays there, its transport
//! registered with that thread's reactor (a resumed one is moved there too),
//! and [`Stream::home`](super::Stream::home) tells the application where to
//! run its own tasks for the stream. A session's work then stays on one
//! thread instead of being handed between the threads of a multi-threaded
//! runtime, which cost the receiving side 29–42% more CPU time per byte
//! through the tunnel (docs/benchmarks.md); sessions still spread over every
//! thread.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The most threads a listener may have ([`Config::threads`](super::Config::threads)).
pub const MAX_THREADS: usize = 1024;

/// One thread: its runtime and how many sessions it drives.
struct Thread {
    handle: Handle,
    load: Arc<AtomicUsize>,
    /// Dropped with the pool: the thread's runtime then stops, and with it
    /// whatever still runs there.
    _stop: oneshot::Sender<()>,
}

/// The threads. Every driver holds the pool (through its [`Place`]), and
/// every session's shared state (through its [`Home`]), so it lives as long
/// as any session it drives or any stream of one.
pub(crate) struct Threads {
    threads: Vec<Thread>,
}

/// A session's thread; its count goes down when the driver is done with
/// it.
pub(crate) struct Place {
    pub handle: Handle,
    load: Arc<AtomicUsize>,
    pool: Arc<Threads>,
}

impl Place {
    /// The session's runtime, keeping the threads running while it is held
    /// (by the session's `Shared`, so by every `Stream` of it).
    pub fn home(&self) -> Home {
        Home {
            handle: self.handle.clone(),
            _pool: self.pool.clone(),
        }
    }
}

/// A session's runtime, and the pool it belongs to kept running.
pub(crate) struct Home {
    pub handle: Handle,
    _pool: Arc<Threads>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Threads {
    /// Starts `n` threads (at least one), named `{name}-{i}` (Linux shows
    /// the first 15 bytes of a thread's name).
    pub fn start(n: usize, name: &str) -> io::Result<Arc<Self>> {
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (built, handle) = std::sync::mpsc::channel();
            // The runtime is made on its thread: one that failed to start
            // drops nothing on the caller's (an async context, where
            // dropping a runtime panics).
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    let runtime = match Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = built.send(Err(e));
                            return;
                        }
                    };
                    let _ = built.send(Ok(runtime.handle().clone()));
                    // Until the pool is dropped; the runtime, and what still
                    // runs on it, is dropped here (outside of it).
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            let handle = handle
                .recv()
                .map_err(|_| io::Error::other("a listener thread stopped as it started"))??;
            threads.push(Thread {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Arc::new(Threads { threads }))
    }

    /// The thread with the fewest sessions (one of them at random, if
    /// several), for one more.
    pub fn place(self: &Arc<Self>) -> Place {
        let loads: Vec<usize> = self
            .threads
            .iter()
            .map(|t| t.load.load(Ordering::Relaxed))
            .collect();
        let least = loads.iter().copied().min().unwrap_or(0);
        let tied = loads.iter().filter(|&&l| l == least).count();
        let pick = rand::random_range(0..tied.max(1));
        let thread = self
            .threads
            .iter()
            .zip(&loads)
            .filter(|(_, l)| **l == least)
            .nth(pick)
            .map(|(t, _)| t)
            .unwrap_or_else(|| unreachable!("a pool has at least one thread"));
        thread.load.fetch_add(1, Ordering::Relaxed);
        Place {
            handle: thread.handle.clone(),
            load: thread.load.clone(),
            pool: self.clone(),
        }
    }

    /// Sessions per thread, in thread order.
    #[cfg(test)]
    pub fn loads(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|t| t.load.load(Ordering::Relaxed))
            .collect()
    }
}

/// Moves a transport's registration to the reactor of the runtime this runs
/// on (a listener's thread), so that its readiness wakes that thread alone:
/// TCP and Unix sockets; a transport of any other kind stays registered
/// where it was made. If the move fails the transport is gone.
pub(crate) fn rehome<T: 'static>(io: T) -> io::Result<T> {
    let mut slot = Some(io);
    let any: &mut dyn std::any::Any = &mut slot;
    if let Some(tcp) = any.downcast_mut::<Option<tokio::net::TcpStream>>()
        && let Some(io) = tcp.take()
    {
        *tcp = Some(tokio::net::TcpStream::from_std(io.into_std()?)?);
    }
    #[cfg(unix)]
    if let Some(unix) = any.downcast_mut::<Option<tokio::net::UnixStream>>()
        && let Some(io) = unix.take()
    {
        *unix = Some(tokio::net::UnixStream::from_std(io.into_std()?)?);
    }
    slot.ok_or_else(|| io::Error::other("the transport was lost moving it"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name of the thread `handle` runs on.
    fn thread_of(handle: &Handle) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let _ = tx.send(std::thread::current().name().map(String::from));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("ran")
            .expect("named")
    }

    #[test]
    fn sessions_go_to_the_least_loaded_thread_and_leave_it() {
        let pool = Threads::start(3, "rj-test").expect("threads");
        let a = pool.place();
        let b = pool.place();
        let c = pool.place();
        assert_eq!(pool.loads(), vec![1, 1, 1]);
        let mut names: Vec<String> = [&a, &b, &c].iter().map(|p| thread_of(&p.handle)).collect();
        let b_name = names[1].clone();
        names.sort();
        assert_eq!(names, ["rj-test-0", "rj-test-1", "rj-test-2"], "one each");
        drop(b);
        assert_eq!(pool.loads().iter().sum::<usize>(), 2);
        let d = pool.place();
        assert_eq!(pool.loads(), vec![1, 1, 1], "the emptied thread first");
        assert_eq!(thread_of(&d.handle), b_name);
    }

    /// Once the pool and every place and home are gone, the threads stop,
    /// and with them what still ran there.
    #[test]
    fn the_threads_stop_with_the_last_holder() {
        let pool = Threads::start(2, "rj-test").expect("threads");
        let place = pool.place();
        let home = place.home();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        place.handle.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(pool);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_millis(200)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "a place keeps its thread running"
        );
        drop(place);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_millis(200)),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout),
            "so does a home (a session's, which its streams hold)"
        );
        drop(home);
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "the task was dropped with its thread's runtime"
        );
    }
}
