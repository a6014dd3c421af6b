//! Per-service counters: visitors and bytes, shared by a service's bridges
//! and UDP tasks, read by status and metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A published service's counters, as a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Visitors connected now (TCP connections, or UDP associations).
    pub visitors: u64,
    /// Visitors since the service was published.
    pub visits: u64,
    /// Bytes from visitors to the service.
    pub bytes_to_service: u64,
    /// Bytes from the service to visitors.
    pub bytes_to_visitors: u64,
    /// UDP datagrams dropped (queue full, association limit, oversize, a
    /// socket that would not take one).
    pub udp_dropped: u64,
    /// TCP visitors turned away at a visitor limit (per service or per
    /// source address).
    pub visitors_refused: u64,
}

/// The live counters behind [`ServiceStats`].
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    visitors: AtomicU64,
    visits: AtomicU64,
    to_service: AtomicU64,
    to_visitors: AtomicU64,
    udp_dropped: AtomicU64,
    visitors_refused: AtomicU64,
}

impl Traffic {
    pub(crate) fn snapshot(&self) -> ServiceStats {
        ServiceStats {
            visitors: self.visitors.load(Ordering::Relaxed),
            visits: self.visits.load(Ordering::Relaxed),
            bytes_to_service: self.to_service.load(Ordering::Relaxed),
            bytes_to_visitors: self.to_visitors.load(Ordering::Relaxed),
            udp_dropped: self.udp_dropped.load(Ordering::Relaxed),
            visitors_refused: self.visitors_refused.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn to_service(&self, n: usize) {
        self.to_service.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn to_visitors(&self, n: usize) {
        self.to_visitors.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn visitor_refused(&self) {
        self.visitors_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn udp_dropped(&self) {
        self.udp_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a visitor in; it is counted out when the guard drops.
    pub(crate) fn visitor(self: &Arc<Self>) -> Visitor {
        self.visitors.fetch_add(1, Ordering::Relaxed);
        self.visits.fetch_add(1, Ordering::Relaxed);
        Visitor(self.clone())
    }
}

/// One visitor, counted while it lives.
#[derive(Debug)]
pub(crate) struct Visitor(Arc<Traffic>);

impl Drop for Visitor {
    fn drop(&mut self) {
        self.0.visitors.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Which way a bridge's socket faces, so its bytes are counted the right way.
#[derive(Debug)]
pub(crate) struct Meter {
    visitor: Visitor,
    /// The socket is the visitor's (on the server), not the service's.
    faces_visitor: bool,
}

impl Meter {
    /// A meter for a bridge whose socket is the visitor's (`true`, on the
    /// server) or the local service's (`false`, on the client).
    pub(crate) fn new(traffic: &Arc<Traffic>, faces_visitor: bool) -> Meter {
        Meter {
            visitor: traffic.visitor(),
            faces_visitor,
        }
    }

    /// Bytes read from the socket.
    pub(crate) fn read(&self, n: usize) {
        let t = &self.visitor.0;
        if self.faces_visitor {
            t.to_service(n)
        } else {
            t.to_visitors(n)
        }
    }

    /// Bytes written to the socket.
    pub(crate) fn wrote(&self, n: usize) {
        let t = &self.visitor.0;
        if self.faces_visitor {
            t.to_visitors(n)
        } else {
            t.to_service(n)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meters_count_each_way_and_visitors_while_they_live() {
        let t = Arc::new(Traffic::default());
        let server = Meter::new(&t, true);
        let client = Meter::new(&t, false);
        server.read(10);
        server.wrote(3);
        client.read(5);
        client.wrote(7);
        let s = t.snapshot();
        assert_eq!((s.visitors, s.visits), (2, 2));
        assert_eq!((s.bytes_to_service, s.bytes_to_visitors), (17, 8));
        drop(server);
        assert_eq!(t.snapshot().visitors, 1);
        drop(client);
        assert_eq!((t.snapshot().visitors, t.snapshot().visits), (0, 2));
    }
}
