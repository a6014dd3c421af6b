//! Threads of a listener's own for its sessions' drivers
//! ([`Config::threads`](super::Config::threads)).
//!
//! Each thread runs a single-threaded runtime. A session's driver goes to
//! the thread with the fewest sessions and stays there, its transport
//! registered with that thread's reactor (a resumed one is moved there too),
//! and [`Stream::home`](super::Stream::home) tells the application where to
//! run its own tasks for the stream. A session's work then stays on one
//! thread instead of being handed between the threads of a multi-threaded
//! runtime, which costs the receiving side about a third of its CPU time per
//! byte (docs/benchmarks.md); sessions still spread over every thread.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// The most threads a listener may have.
pub const MAX_THREADS: usize = 1024;

/// One thread: its runtime and how many sessions it drives.
struct Thread {
    handle: Handle,
    load: Arc<AtomicUsize>,
    /// Dropped with the pool: the thread's runtime then stops, and with it
    /// whatever still runs there.
    _stop: oneshot::Sender<()>,
}

/// The threads. Every driver holds the pool (through its [`Place`]), so it
/// lives as long as any session it drives.
pub(crate) struct Threads {
    threads: Vec<Thread>,
}

/// A session's thread, held by its driver; its count goes down when the
/// driver is done.
pub(crate) struct Place {
    pub handle: Handle,
    load: Arc<AtomicUsize>,
    _pool: Arc<Threads>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Threads {
    /// Starts `n` threads (at least one), named `{name}-{i}`.
    pub fn start(n: usize, name: &str) -> io::Result<Arc<Self>> {
        let mut threads = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Until the pool is dropped; the runtime, and what still
                    // runs on it, is dropped here (outside of it).
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            threads.push(Thread {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
                _stop: stop,
            });
        }
        Ok(Arc::new(Threads { threads }))
    }

    /// The thread with the fewest sessions, for one more.
    pub fn place(self: &Arc<Self>) -> Place {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.load.load(Ordering::Relaxed))
            .unwrap_or_else(|| unreachable!("a pool has at least one thread"));
        thread.load.fetch_add(1, Ordering::Relaxed);
        Place {
            handle: thread.handle.clone(),
            load: thread.load.clone(),
            _pool: self.clone(),
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

/// Moves a TCP transport's registration to the reactor of the runtime this
/// runs on (a listener's thread), so its readiness wakes that thread alone.
pub(crate) fn rehome(io: tokio::net::TcpStream) -> io::Result<tokio::net::TcpStream> {
    tokio::net::TcpStream::from_std(io.into_std()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_loaded_thread_and_leave_it() {
        let pool = Threads::start(3, "rejoin-test").expect("threads");
        let a = pool.place();
        let b = pool.place();
        let c = pool.place();
        assert_eq!(pool.loads(), vec![1, 1, 1]);
        drop(b);
        assert_eq!(pool.loads(), vec![1, 0, 1]);
        let d = pool.place();
        assert_eq!(pool.loads(), vec![1, 1, 1], "the emptied thread first");
        let names: Vec<String> = [&a, &c, &d]
            .iter()
            .map(|p| {
                let (tx, rx) = std::sync::mpsc::channel();
                p.handle.spawn(async move {
                    let _ = tx.send(std::thread::current().name().map(String::from));
                });
                rx.recv_timeout(std::time::Duration::from_secs(5))
                    .expect("ran")
                    .expect("named")
            })
            .collect();
        assert_eq!(names, ["rejoin-test-0", "rejoin-test-2", "rejoin-test-1"]);
    }

    /// Once the pool and every place are gone, the threads stop, and with
    /// them what still ran there.
    #[test]
    fn the_threads_stop_with_the_last_holder() {
        let pool = Threads::start(2, "rejoin-test").expect("threads");
        let place = pool.place();
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
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "the task was dropped with its thread's runtime"
        );
    }
}
