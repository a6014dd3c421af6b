//! Who holds the listener's handshake slots: the bounded phase before a
//! peer has proved anything.
//!
//! A connection takes a slot when it is accepted and gives it back when its
//! handshake ends. The slots are bounded in total (`max_handshakes`) and per
//! source address (`max_handshakes_per_source`); when either bound is
//! reached, a newcomer is let in and an older connection makes room, so
//! that connections held open by someone else can delay an honest client by
//! at most one round trip, never lock it out:
//!
//! - a source at its own bound loses its own oldest connection;
//! - a full table loses its oldest connection that has sent nothing, else
//!   its oldest one still talking;
//! - a connection that asked to resume a live session is protected (up to
//!   half the table, the reserve for reconnects), so a flood of new
//!   connections cannot push an established session's reconnect out.
//!
//! Plain data with no IO: the listener holds it under a lock, and passes
//! each slot's cancel handle in; what is evicted comes back to be cancelled.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// Where a connection comes from, as far as the per-source bound goes: an
/// IPv4 address, or an IPv6 /64 (what one host is usually given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Source {
    V4([u8; 4]),
    V6([u8; 8]),
    /// A transport without an address (`Listener::serve` with `None`).
    Unknown,
}

impl Source {
    pub(crate) fn of(peer: Option<SocketAddr>) -> Source {
        match peer.map(|p| p.ip()) {
            None => Source::Unknown,
            Some(IpAddr::V4(v4)) => Source::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let mut prefix = [0; 8];
                    prefix.copy_from_slice(&v6.octets()[..8]);
                    Source::V6(prefix)
                }
            },
        }
    }
}

/// How far a connection in a slot has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Accepted; nothing received yet. Evicted first.
    Silent,
    /// Sending its handshake.
    Talking,
    /// Resuming a live session: not evicted by newcomers.
    Protected,
}

struct Slot<H> {
    source: Source,
    phase: Phase,
    handle: H,
}

/// The slots. `H` is what the owner needs to cancel an evicted connection.
pub(crate) struct Admission<H> {
    max: usize,
    per_source: usize,
    next: u64,
    /// By ticket, which grows with age: the first entry is the oldest.
    slots: BTreeMap<u64, Slot<H>>,
    by_source: HashMap<Source, usize>,
    protected: usize,
}

/// The outcome of [`Admission::admit`].
#[derive(Debug)]
pub(crate) struct Admitted<H> {
    /// The newcomer's ticket, for [`Admission::release`].
    pub ticket: u64,
    /// The connection that made room, to be cancelled.
    pub evicted: Option<H>,
}

impl<H> Admission<H> {
    pub(crate) fn new(max: usize, per_source: usize) -> Self {
        Admission {
            max: max.max(1),
            per_source: per_source.max(1),
            next: 0,
            slots: BTreeMap::new(),
            by_source: HashMap::new(),
            protected: 0,
        }
    }

    /// Slots in use.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The most connections that may resume at once without being evicted.
    fn reserve(&self) -> usize {
        self.max / 2
    }

    /// Lets a connection from `source` in, making room if needed. `None`
    /// only when every slot is a protected reconnect.
    pub(crate) fn admit(&mut self, source: Source, handle: H) -> Option<Admitted<H>> {
        let own = self.by_source.get(&source).copied().unwrap_or(0);
        let victim = if own >= self.per_source {
            self.oldest(|s| s.source == source)
        } else if self.slots.len() >= self.max {
            self.oldest(|_| true)
        } else {
            None
        };
        if victim.is_none() && (own >= self.per_source || self.slots.len() >= self.max) {
            return None;
        }
        let evicted = victim.and_then(|t| self.remove(t));
        let ticket = self.next;
        self.next += 1;
        self.slots.insert(
            ticket,
            Slot {
                source,
                phase: Phase::Silent,
                handle,
            },
        );
        *self.by_source.entry(source).or_default() += 1;
        Some(Admitted { ticket, evicted })
    }

    /// The ticket to evict among those `matching`: the oldest silent one,
    /// else the oldest talking one; never a protected one.
    fn oldest(&self, matching: impl Fn(&Slot<H>) -> bool) -> Option<u64> {
        [Phase::Silent, Phase::Talking]
            .into_iter()
            .find_map(|phase| {
                self.slots
                    .iter()
                    .find(|(_, s)| s.phase == phase && matching(s))
                    .map(|(&t, _)| t)
            })
    }

    /// The connection has sent its first bytes.
    pub(crate) fn talking(&mut self, ticket: u64) {
        if let Some(slot) = self.slots.get_mut(&ticket) {
            slot.phase = slot.phase.max(Phase::Talking);
        }
    }

    /// The connection asks to resume a live session: protect it from
    /// eviction if the reserve has room. Returns whether it is protected.
    pub(crate) fn protect(&mut self, ticket: u64) -> bool {
        let reserve = self.reserve();
        let Some(slot) = self.slots.get_mut(&ticket) else {
            return false;
        };
        if slot.phase == Phase::Protected {
            return true;
        }
        if self.protected >= reserve {
            return false;
        }
        slot.phase = Phase::Protected;
        self.protected += 1;
        true
    }

    /// The handshake ended (or was cancelled): its slot is free.
    pub(crate) fn release(&mut self, ticket: u64) {
        self.remove(ticket);
    }

    fn remove(&mut self, ticket: u64) -> Option<H> {
        let slot = self.slots.remove(&ticket)?;
        if slot.phase == Phase::Protected {
            self.protected -= 1;
        }
        if let Some(n) = self.by_source.get_mut(&slot.source) {
            *n -= 1;
            if *n == 0 {
                self.by_source.remove(&slot.source);
            }
        }
        Some(slot.handle)
    }
}

/// Failed proofs (a wrong key, a forged reconnect) per source: a token
/// bucket each, so that guessing a key online costs a source a minute per
/// `per_minute` guesses. A source whose bucket is empty has its connections
/// closed at once, before any work is done for them. The bucket is checked
/// when a connection is let in and charged when its proof fails, so a
/// source that opens many connections while it has one token left fails
/// them all: each failure past the budget is a debt (down to
/// [`MOST_DEBT_MINUTES`] of the budget), repaid at the same rate before it
/// may try again, and the long-run rate stays `per_minute`.
pub(crate) struct Throttle {
    per_minute: u32,
    buckets: HashMap<Source, Bucket>,
    most_sources: usize,
    /// Passes over the whole table made to make room (see
    /// [`Throttle::make_room`]).
    sweeps: u64,
}

/// The most a source's failures may put its bucket in debt, in minutes of
/// its budget (so that no burst locks a source out for longer than this).
pub(crate) const MOST_DEBT_MINUTES: u32 = 60;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Throttle {
    /// `per_minute` failures a minute per source (0: no limit), tracking
    /// at most `most_sources` sources at once.
    pub(crate) fn new(per_minute: u32, most_sources: usize) -> Self {
        Throttle {
            per_minute,
            buckets: HashMap::new(),
            most_sources: most_sources.max(1),
            sweeps: 0,
        }
    }

    fn refill(&self, b: Bucket, now: Instant) -> f64 {
        let rate = f64::from(self.per_minute) / 60.0;
        let grown = b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate;
        grown.min(f64::from(self.per_minute))
    }

    /// Forgets the sources that have their whole minute back and, if that
    /// frees less than an eighth of the table, those with the most of it
    /// back until an eighth is free. So a flood of failures from ever new
    /// sources (more than the table holds) costs a pass over the table once
    /// per eighth of it, not once per failure, under the lock every
    /// accepted connection takes.
    fn make_room(&mut self, now: Instant) {
        self.sweeps += 1;
        let full = f64::from(self.per_minute);
        let rate = full / 60.0;
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(full)
        };
        self.buckets.retain(|_, b| refill(b) < full);
        let keep = self.most_sources - (self.most_sources / 8).max(1);
        let excess = self.buckets.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let mut by_tokens: Vec<(f64, Source)> =
            self.buckets.iter().map(|(s, b)| (refill(b), *s)).collect();
        by_tokens.select_nth_unstable_by(excess - 1, |a, b| b.0.total_cmp(&a.0));
        for (_, source) in &by_tokens[..excess] {
            self.buckets.remove(source);
        }
    }

    /// Whether `source` may try now.
    pub(crate) fn allows(&self, source: Source, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        self.buckets
            .get(&source)
            .is_none_or(|&b| self.refill(b, now) >= 1.0)
    }

    /// `source` failed a proof.
    pub(crate) fn failed(&mut self, source: Source, now: Instant) {
        if self.per_minute == 0 {
            return;
        }
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.most_sources {
            self.make_room(now);
        }
        let fresh = Bucket {
            tokens: f64::from(self.per_minute),
            at: now,
        };
        let b = self.buckets.get(&source).copied().unwrap_or(fresh);
        let most_debt = f64::from(self.per_minute) * f64::from(MOST_DEBT_MINUTES);
        let tokens = (self.refill(b, now) - 1.0).max(-most_debt);
        self.buckets.insert(source, Bucket { tokens, at: now });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(last: u8) -> Source {
        Source::of(Some(SocketAddr::from(([10, 0, 0, last], 1))))
    }

    #[test]
    fn a_source_at_its_bound_loses_its_own_oldest() {
        let mut a = Admission::new(100, 3);
        for i in 0..3 {
            assert!(a.admit(src(1), i).unwrap().evicted.is_none());
        }
        let other = a.admit(src(2), 100).unwrap();
        assert!(other.evicted.is_none());
        // The fourth from the same source pushes out that source's first.
        assert_eq!(a.admit(src(1), 3).unwrap().evicted, Some(0));
        assert_eq!(a.admit(src(1), 4).unwrap().evicted, Some(1));
        assert_eq!(a.len(), 4);
    }

    #[test]
    fn a_full_table_loses_the_oldest_silent_first() {
        let mut a = Admission::new(3, 10);
        let first = a.admit(src(1), 'a').unwrap().ticket;
        a.admit(src(2), 'b').unwrap();
        a.admit(src(3), 'c').unwrap();
        a.talking(first);
        // 'a' is older but talking; 'b' is the oldest silent one.
        assert_eq!(a.admit(src(4), 'd').unwrap().evicted, Some('b'));
        assert_eq!(a.admit(src(5), 'e').unwrap().evicted, Some('c'));
        assert_eq!(a.admit(src(6), 'f').unwrap().evicted, Some('d'));
        // Once every other one is talking, the oldest talking one goes.
        for t in 0..10 {
            a.talking(t);
        }
        assert_eq!(a.admit(src(7), 'g').unwrap().evicted, Some('a'));
    }

    #[test]
    fn reconnects_are_protected_up_to_the_reserve() {
        let mut a = Admission::new(4, 10);
        let r1 = a.admit(src(1), 1).unwrap().ticket;
        let r2 = a.admit(src(1), 2).unwrap().ticket;
        let r3 = a.admit(src(1), 3).unwrap().ticket;
        assert!(a.protect(r1));
        assert!(a.protect(r2));
        assert!(a.protect(r2), "protecting twice is harmless");
        assert!(!a.protect(r3), "the reserve is half the table");
        a.admit(src(2), 4).unwrap();
        // A flood of newcomers cycles through the two unprotected slots.
        for i in 5..100 {
            let e = a.admit(src(9), i).unwrap().evicted.unwrap();
            assert!(e != 1 && e != 2, "evicted a protected reconnect");
        }
        a.release(r1);
        a.release(r2);
        assert_eq!(a.len(), 2);
        assert_eq!(a.protected, 0);
    }

    #[test]
    fn a_table_of_protected_reconnects_sheds_newcomers() {
        let mut a = Admission::new(2, 10);
        let r1 = a.admit(src(1), 1).unwrap().ticket;
        assert!(a.protect(r1));
        let t = a.admit(src(1), 2).unwrap().ticket;
        a.talking(t);
        assert_eq!(a.admit(src(2), 3).unwrap().evicted, Some(2));
        // Per-source bound with only protected slots of that source left.
        let mut b = Admission::new(10, 1);
        let r = b.admit(src(1), 1).unwrap().ticket;
        b.max = 2;
        assert!(b.protect(r));
        assert!(b.admit(src(1), 2).is_none());
        assert!(b.admit(src(2), 3).is_some());
    }

    #[test]
    fn releases_keep_the_counts_true() {
        let mut a = Admission::new(8, 2);
        let mut held = Vec::new();
        for i in 0..1000u32 {
            let s = src((i % 5) as u8);
            let ad = a.admit(s, i).unwrap();
            held.push(ad.ticket);
            if let Some(e) = ad.evicted {
                assert!(e < i);
            }
            if i % 3 == 0 {
                let t = held.remove(0);
                a.release(t);
                a.release(t);
            }
            assert!(a.len() <= 8);
            assert_eq!(a.by_source.values().sum::<usize>(), a.len());
            assert!(a.by_source.values().all(|&n| (1..=2).contains(&n)));
        }
    }

    #[test]
    fn sources_group_ipv6_by_64() {
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:5".parse().unwrap();
        let b: SocketAddr = "[2001:db8:1:2:bbbb::9]:6".parse().unwrap();
        let c: SocketAddr = "[2001:db8:1:3::1]:6".parse().unwrap();
        let m: SocketAddr = "[::ffff:10.0.0.1]:7".parse().unwrap();
        assert_eq!(Source::of(Some(a)), Source::of(Some(b)));
        assert_ne!(Source::of(Some(a)), Source::of(Some(c)));
        assert_eq!(Source::of(Some(m)), src(1));
        assert_eq!(Source::of(None), Source::Unknown);
    }

    #[test]
    fn failures_are_throttled_per_source_and_refill() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let mut t = Throttle::new(6, 100);
        for _ in 0..6 {
            assert!(t.allows(src(1), t0));
            t.failed(src(1), t0);
        }
        assert!(!t.allows(src(1), t0), "six a minute, all spent");
        assert!(t.allows(src(2), t0), "another source is not affected");
        // One comes back every ten seconds.
        assert!(!t.allows(src(1), at(9_900)));
        assert!(t.allows(src(1), at(10_000)));
        t.failed(src(1), at(10_000));
        assert!(!t.allows(src(1), at(15_000)));
        // Never more than the minute's worth back.
        assert!(t.allows(src(1), at(3_600_000)));
        for _ in 0..6 {
            t.failed(src(1), at(3_600_000));
        }
        assert!(!t.allows(src(1), at(3_600_000)));
    }

    /// Connections let in together while one token was left, all failing:
    /// every failure is paid for (before, the bucket stopped at empty, and
    /// a source got its budget many times over by opening its connections
    /// in bursts).
    #[test]
    fn failures_in_a_burst_are_all_paid_for() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + std::time::Duration::from_secs(s);
        let mut t = Throttle::new(10, 100);
        for _ in 0..9 {
            t.failed(src(1), t0);
        }
        // One token left: sixteen connections are let in at once.
        assert!(t.allows(src(1), t0));
        for _ in 0..16 {
            t.failed(src(1), t0);
        }
        // 16 owed against 1 held: 15 in debt, and one more to try again,
        // at one every six seconds.
        assert!(!t.allows(src(1), at(6)));
        assert!(!t.allows(src(1), at(95)));
        assert!(t.allows(src(1), at(96)));
        // A burst never costs more than an hour of the budget.
        for _ in 0..10_000 {
            t.failed(src(2), t0);
        }
        assert!(!t.allows(src(2), at(3_600)));
        assert!(t.allows(src(2), at(3_666)));
    }

    #[test]
    fn the_throttle_table_is_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(2, 10);
        for i in 0..=255u8 {
            t.failed(src(i), t0);
            t.failed(src(i), t0);
            assert!(t.buckets.len() <= 10);
        }
        assert!(!t.allows(src(255), t0));
        // Off: everything allowed, nothing kept.
        // Sources past the table's size: room is made an eighth of the
        // table at a time, those with the most of their minute back first.
        let mut t = Throttle::new(10, 800);
        let sources = |from: u32, n: u32| {
            (from..from + n).map(|i| {
                Source::of(Some(SocketAddr::from((
                    [10, 9, (i >> 8) as u8, i as u8],
                    1,
                ))))
            })
        };
        // 800 sources, each at 9 of its 10 tokens; one, later, at 0.
        for s in sources(0, 800) {
            t.failed(s, t0);
        }
        let spent = Source::of(Some(SocketAddr::from(([10, 9, 0, 7], 1))));
        for _ in 0..9 {
            t.failed(spent, t0);
        }
        for s in sources(10_000, 8_000) {
            t.failed(s, t0);
            assert!(t.buckets.len() <= 800);
        }
        assert!(
            t.sweeps <= 8_000 / 100 + 1,
            "{} passes over the table",
            t.sweeps
        );
        assert!(!t.allows(spent, t0), "the source that failed most is kept");

        let mut off = Throttle::new(0, 10);
        off.failed(src(1), t0);
        assert!(off.allows(src(1), t0));
        assert!(off.buckets.is_empty());
    }
}
