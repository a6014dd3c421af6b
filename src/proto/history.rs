//! The send history: the last bytes a side wrote, kept so a resume can
//! resend what the peer missed.
//!
//! Positioned by absolute stream counts: it holds the bytes `[end − len,
//! end)` of everything ever written, as a list of spans. Bytes written by
//! copy (all of the compatible suite's, encrypted on their way in) go into
//! a ring of fixed capacity; memory is taken as they are written (never more
//! than the capacity), so a session that has sent little holds little, and
//! nothing is allocated before the session is established. Large pieces
//! given as [`Bytes`] (the tunnel's payloads, in the sealed suite) are kept
//! as they are, sharing the buffer they were read into instead of being
//! copied, until the peer acknowledges them.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// Bytes given as [`Bytes`] are kept as they are from this many on (a
/// whole record's payload: what bulk data fills); fewer are copied into
/// the ring. A kept piece holds its whole buffer (the tunnel reads into
/// 256 KiB ones): this much per piece bounds what held pieces can keep
/// allocated at four times the history, and how many spans there can be.
pub const MIN_SHARED: usize = super::record::MAX_DATA;

/// Memory below which [`History::release_before`] leaves the ring be.
const SPARE: usize = 64 * 1024;

/// Send history, positioned by stream counts.
#[derive(Debug)]
pub struct History {
    /// Every held byte, in order: `spans[0].at` is the start.
    spans: VecDeque<Span>,
    /// The copied bytes.
    ring: Ring,
    capacity: usize,
    end: u64,
}

/// A run of held bytes starting at stream count `at`.
#[derive(Debug)]
struct Span {
    at: u64,
    bytes: Held,
}

#[derive(Debug)]
enum Held {
    /// `len` bytes in the ring, from ring count `from`.
    Copied { from: u64, len: usize },
    /// Bytes kept as they were given.
    Shared(Bytes),
}

impl Span {
    fn len(&self) -> usize {
        match &self.bytes {
            Held::Copied { len, .. } => *len,
            Held::Shared(b) => b.len(),
        }
    }

    /// Drops the first `n` bytes (fewer than it holds).
    fn advance(&mut self, n: usize) {
        self.at += n as u64;
        match &mut self.bytes {
            Held::Copied { from, len } => {
                *from += n as u64;
                *len -= n;
            }
            Held::Shared(b) => b.advance(n),
        }
    }
}

impl History {
    /// An empty history that will hold up to `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        History {
            spans: VecDeque::new(),
            ring: Ring::new(capacity),
            capacity,
            end: 0,
        }
    }

    /// The most bytes this history holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many bytes it holds now.
    pub fn len(&self) -> usize {
        (self.end - self.start()) as usize
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The stream count after the newest byte: everything ever written.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The stream count of the oldest byte still held.
    pub fn start(&self) -> u64 {
        self.spans.front().map_or(self.end, |s| s.at)
    }

    /// Bytes of memory currently allocated for the ring (pieces kept as
    /// they were given are not counted: their buffers are their givers').
    pub fn allocated(&self) -> usize {
        self.ring.allocated()
    }

    /// Appends `n` bytes, letting `fill` write them into the ring: it is
    /// called once or twice (when the ring wraps) with consecutive pieces,
    /// in order. If `n` exceeds the capacity only the last `capacity` bytes
    /// are kept, but `fill` still sees all of them, in order, so a cipher
    /// stays in step. The oldest bytes go to make room.
    pub fn append_with(&mut self, n: usize, fill: impl FnMut(&mut [u8])) {
        let held = n.min(self.capacity);
        self.make_room(held);
        self.ring.append_with(n, fill);
        self.end += n as u64;
        if held == 0 {
            return;
        }
        let (at, from) = (self.end - held as u64, self.ring.end() - held as u64);
        if let Some(Span {
            at: last_at,
            bytes:
                Held::Copied {
                    from: last_from,
                    len,
                },
        }) = self.spans.back_mut()
            && *last_at + *len as u64 == at
            && *last_from + *len as u64 == from
        {
            *len += held;
            return;
        }
        self.spans.push_back(Span {
            at,
            bytes: Held::Copied { from, len: held },
        });
    }

    /// Appends `data` as it is.
    pub fn append(&mut self, data: &[u8]) {
        let mut done = 0;
        self.append_with(data.len(), |out| {
            out.copy_from_slice(&data[done..done + out.len()]);
            done += out.len();
        });
    }

    /// Appends `data`: kept as it is, sharing its buffer, if it is at least
    /// [`MIN_SHARED`] long (and fits the capacity), else copied.
    pub fn append_shared(&mut self, data: Bytes) {
        if data.len() < MIN_SHARED || data.len() > self.capacity {
            return self.append(&data);
        }
        self.make_room(data.len());
        let n = data.len();
        self.spans.push_back(Span {
            at: self.end,
            bytes: Held::Shared(data),
        });
        self.end += n as u64;
    }

    /// Drops the oldest bytes until `n` more fit in the capacity.
    fn make_room(&mut self, n: usize) {
        let over = (self.len() + n).saturating_sub(self.capacity);
        if over > 0 {
            self.forget_before(self.start() + over as u64);
        }
    }

    /// Drops the bytes before stream count `from` (if held): what was
    /// kept as given is let go of at once; the ring's memory waits for
    /// [`History::release_before`].
    pub fn forget_before(&mut self, from: u64) {
        let from = from.min(self.end);
        while let Some(front) = self.spans.front_mut() {
            if from <= front.at {
                break;
            }
            let n = (from - front.at) as usize;
            if n < front.len() {
                front.advance(n);
                break;
            }
            self.spans.pop_front();
        }
    }

    /// Lets go of the bytes before stream count `from` and of the memory
    /// they took: what the ring keeps moves into a buffer of about its own
    /// size, which grows again as bytes are written. Returns whether
    /// nothing more is worth letting go of: it keeps the ring's buffer as
    /// it is (and returns `false`) while most of it is still held from
    /// `from` on, so that a history whose bytes are still asked for is not
    /// copied over and over for little; and as it is (returning `true`)
    /// when less than 64 KiB would be given back, or `from` is not held.
    pub fn release_before(&mut self, from: u64) -> bool {
        if from < self.start() || from > self.end {
            return true;
        }
        self.forget_before(from);
        if self.spans.is_empty() {
            self.spans = VecDeque::new();
        }
        // The oldest copied byte still held, or none.
        let copied = self.spans.iter().find_map(|s| match s.bytes {
            Held::Copied { from, .. } => Some(from),
            Held::Shared(_) => None,
        });
        self.ring.release_before(copied.unwrap_or(self.ring.end()))
    }

    /// Copies the pieces kept as given into the ring, with every other
    /// held byte, in order, and lets go of their buffers: for a session
    /// gone quiet or waiting for its peer, whose held bytes are no longer
    /// on their way out soon.
    pub fn unshare(&mut self) {
        if !self
            .spans
            .iter()
            .any(|s| matches!(s.bytes, Held::Shared(_)))
        {
            return;
        }
        let start = self.start();
        let mut ring = Ring::new(self.capacity);
        let mut at = start;
        while at < self.end {
            let Some((a, b)) = self.slices_from(at) else {
                break;
            };
            for piece in [a, b] {
                let mut done = 0;
                ring.append_with(piece.len(), |out| {
                    out.copy_from_slice(&piece[done..done + out.len()]);
                    done += out.len();
                });
            }
            at += (a.len() + b.len()) as u64;
        }
        let len = ring.end() as usize;
        self.ring = ring;
        self.spans.clear();
        if len > 0 {
            self.spans.push_back(Span {
                at: start,
                bytes: Held::Copied { from: 0, len },
            });
        }
    }

    /// The held bytes from stream count `from` on, up to the end of the
    /// span that holds it, as two slices (the ring's bytes may wrap), or
    /// `None` if `from` is older than what is held or in the future. A
    /// caller goes on from where they end.
    pub fn slices_from(&self, from: u64) -> Option<(&[u8], &[u8])> {
        if from < self.start() || from > self.end {
            return None;
        }
        // The span holding `from`: the last one starting at or before it.
        let i = self.spans.partition_point(|s| s.at <= from);
        let Some(span) = i.checked_sub(1).and_then(|i| self.spans.get(i)) else {
            return Some((&[], &[]));
        };
        let skip = (from - span.at) as usize;
        let rest = span.len() - skip;
        match &span.bytes {
            Held::Shared(b) => Some((&b[skip..], &[])),
            Held::Copied { from: r, .. } => {
                let (a, b) = self.ring.slices_from(r + skip as u64)?;
                Some(if rest <= a.len() {
                    (&a[..rest], &[])
                } else {
                    (a, &b[..rest - a.len()])
                })
            }
        }
    }
}

/// A ring of the last bytes copied in, positioned by its own counts.
#[derive(Debug)]
struct Ring {
    /// Grows up to `capacity`; once full, `head` marks the oldest byte.
    buf: Vec<u8>,
    capacity: usize,
    head: usize,
    end: u64,
}

impl Ring {
    /// An empty ring that will hold up to `capacity` bytes (at least 1).
    fn new(capacity: usize) -> Self {
        Ring {
            buf: Vec::new(),
            capacity: capacity.max(1),
            head: 0,
            end: 0,
        }
    }

    /// The ring's count after its newest byte: everything ever copied in.
    fn end(&self) -> u64 {
        self.end
    }

    /// The ring's count of the oldest byte it still holds.
    fn start(&self) -> u64 {
        self.end - self.buf.len() as u64
    }

    /// Bytes of memory currently allocated for the ring.
    fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends `n` bytes, letting `fill` write them: it is called once or
    /// twice (when the ring wraps) with consecutive pieces, in order. If
    /// `n` exceeds the capacity only the last `capacity` bytes are kept,
    /// but `fill` still sees all of them, in order, so a cipher stays in step.
    fn append_with(&mut self, mut n: usize, mut fill: impl FnMut(&mut [u8])) {
        self.end += n as u64;
        // Grow towards capacity first.
        if self.buf.len() < self.capacity {
            let grow = n.min(self.capacity - self.buf.len());
            let len = self.buf.len();
            if len + grow > self.buf.capacity() {
                let want = (len + grow).max(2 * self.buf.capacity()).max(4096);
                self.buf.reserve_exact(want.min(self.capacity) - len);
            }
            self.buf.resize(len + grow, 0);
            fill(&mut self.buf[len..]);
            n -= grow;
        }
        // Then overwrite the oldest bytes.
        while n > 0 {
            let piece = n.min(self.capacity - self.head);
            fill(&mut self.buf[self.head..self.head + piece]);
            self.head = (self.head + piece) % self.capacity;
            n -= piece;
        }
    }

    /// Lets go of the bytes before ring count `from` and of the memory
    /// they took: what is kept moves into a buffer of about its own size,
    /// which grows again as bytes are written. Returns whether nothing
    /// more is worth letting go of: it keeps the buffer as it is (and
    /// returns `false`) while most of it is still held from `from` on, so
    /// that a history whose bytes are still asked for is not copied over
    /// and over for little; and as it is (returning `true`) when less than
    /// [`SPARE`] would be given back, or `from` is not held.
    fn release_before(&mut self, from: u64) -> bool {
        let Some((a, b)) = self.slices_from(from) else {
            return true;
        };
        let keep = a.len() + b.len();
        if self.buf.capacity() - keep < SPARE {
            return true;
        }
        if keep > self.buf.capacity() / 4 {
            return false;
        }
        let mut buf = if keep == 0 {
            Vec::new()
        } else {
            Vec::with_capacity(keep.next_power_of_two().max(4096).min(self.capacity))
        };
        buf.extend_from_slice(a);
        buf.extend_from_slice(b);
        self.buf = buf;
        self.head = 0;
        true
    }

    /// The held bytes from ring count `from` to the end, as up to two
    /// slices, or `None` if `from` is older than what is held or in the future.
    fn slices_from(&self, from: u64) -> Option<(&[u8], &[u8])> {
        if from < self.start() || from > self.end {
            return None;
        }
        let skip = (from - self.start()) as usize;
        let (a, b) = if self.buf.len() < self.capacity {
            (&self.buf[..], &[][..])
        } else {
            (&self.buf[self.head..], &self.buf[..self.head])
        };
        Some(if skip < a.len() {
            (&a[skip..], b)
        } else {
            (&b[skip - a.len()..], &[][..])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn collect(h: &History, from: u64) -> Option<Vec<u8>> {
        h.slices_from(from).map(|(a, b)| [a, b].concat())
    }

    #[test]
    fn grows_then_wraps() {
        let mut h = History::new(8);
        let mut next = 0u8;
        let mut put = |h: &mut History, n: usize| {
            h.append_with(n, |s| {
                for b in s {
                    *b = next;
                    next += 1;
                }
            })
        };
        put(&mut h, 5);
        assert_eq!(collect(&h, 0), Some(vec![0, 1, 2, 3, 4]));
        put(&mut h, 6);
        assert_eq!((h.start(), h.end()), (3, 11));
        assert_eq!(collect(&h, 3), Some((3..11).collect()));
        assert_eq!(collect(&h, 9), Some(vec![9, 10]));
        assert_eq!(collect(&h, 11), Some(vec![]));
        assert_eq!(collect(&h, 2), None);
        assert_eq!(collect(&h, 12), None);
        put(&mut h, 20);
        assert_eq!(collect(&h, 23), Some((23..31).collect()));
        assert!(h.allocated() <= 4096);
    }

    /// Released, a history keeps the bytes asked for (in order, across the
    /// ring's wrap) in a buffer of their size, and grows and wraps again as
    /// before.
    #[test]
    fn released_bytes_give_their_memory_back() {
        let cap = 256 * 1024;
        let mut h = History::new(cap);
        let mut all: Vec<u8> = Vec::new();
        let put = |h: &mut History, all: &mut Vec<u8>, n: usize| {
            let base = all.len();
            let mut next = base;
            h.append_with(n, |s| {
                s.fill_with(|| {
                    next += 1;
                    ((next - 1) % 251) as u8
                })
            });
            all.extend((base..base + n).map(|x| (x % 251) as u8));
        };
        put(&mut h, &mut all, cap + cap / 2);
        assert_eq!(h.allocated(), cap);
        // Too little to give back: left as it is.
        assert!(h.release_before(h.end() - (cap as u64 - 1000)));
        assert_eq!(h.allocated(), cap);
        // Most of it still held from there on: the bytes before are let
        // go of, the buffer left as it is, for now.
        assert!(!h.release_before(h.end() - (cap as u64 / 2)));
        assert_eq!((h.len(), h.allocated()), (cap / 2, cap));
        // The last 3000 bytes span the ring's wrap point.
        let from = h.end() - 3000;
        assert!(h.release_before(from));
        assert_eq!((h.start(), h.len(), h.allocated()), (from, 3000, 4096));
        assert_eq!(collect(&h, from).unwrap(), all[from as usize..].to_vec());
        // Not held (or in the future): nothing happens.
        assert!(h.release_before(from - 1));
        assert!(h.release_before(h.end() + 1));
        assert_eq!(h.len(), 3000);
        put(&mut h, &mut all, 2 * cap + 77);
        assert_eq!(h.len(), cap);
        assert_eq!(h.allocated(), cap);
        let start = h.start();
        assert_eq!(collect(&h, start).unwrap(), all[start as usize..].to_vec());
        assert!(h.release_before(h.end()));
        assert_eq!((h.len(), h.allocated()), (0, 0));
        assert_eq!(collect(&h, h.end()), Some(vec![]));
    }

    /// Everything from `from` on, read the way a sender does: a piece at a
    /// time, going on from where each ends.
    fn walk(h: &History, from: u64) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = from;
        loop {
            let (a, _) = h.slices_from(at)?;
            if a.is_empty() {
                return Some(out);
            }
            out.extend_from_slice(a);
            at += a.len() as u64;
        }
    }

    /// A large piece given as `Bytes` is kept as it is between copied
    /// bytes, read a span at a time, and let go of once forgotten; a small
    /// one is copied.
    #[test]
    fn large_pieces_are_kept_as_given_and_let_go_of() {
        let mut h = History::new(1 << 20);
        h.append(b"head");
        let payload = Bytes::from(vec![7u8; 100_000]);
        h.append_shared(payload.slice(..));
        let small = Bytes::from(vec![9u8; MIN_SHARED - 1]);
        h.append_shared(small.slice(..));
        h.append(b"tail");
        assert!(small.is_unique(), "a small piece is copied");
        let end = 100_004 + MIN_SHARED as u64 + 3;
        assert_eq!((h.start(), h.end(), h.len()), (0, end, end as usize));
        let (a, b) = h.slices_from(4).unwrap();
        assert_eq!(a.as_ptr(), payload.as_ptr(), "not copied");
        assert_eq!((a.len(), b.len()), (100_000, 0));
        assert_eq!(h.slices_from(2).unwrap(), (&b"ad"[..], &[][..]));
        // The small piece and the tail were copied into one span.
        assert_eq!(h.slices_from(100_004).unwrap().0.len(), MIN_SHARED - 1 + 4);
        assert_eq!(walk(&h, end - 2).unwrap(), b"il");
        // Copied into the ring, everything held lets its buffers go.
        let other = Bytes::from(vec![5u8; 70_000]);
        let mut copy = History::new(1 << 20);
        copy.append(b"head");
        copy.append_shared(other.slice(..));
        assert!(!other.is_unique());
        copy.unshare();
        assert!(other.is_unique(), "copied out");
        assert_eq!(walk(&copy, 0).unwrap(), [&b"head"[..], &other[..]].concat());
        // Forgotten bytes go at once, the shared buffer with them.
        h.forget_before(100_004);
        assert_eq!(h.start(), 100_004);
        assert!(payload.is_unique(), "the history let go of the payload");
        assert_eq!(walk(&h, end - 4).unwrap(), b"tail");
        assert!(h.release_before(h.end()));
        assert_eq!((h.len(), h.allocated()), (0, 0));
        assert_eq!(h.slices_from(h.end()), Some((&[][..], &[][..])));
        assert_eq!(h.slices_from(0), None);
        assert_eq!(h.slices_from(h.end() + 1), None);
    }

    proptest! {
        /// The history holds the bytes of the stream written into it,
        /// however the writes are split between copies and pieces kept as
        /// given and the releases fall: the last `capacity` bytes, less
        /// what was let go of. The spans stay few: no more than two per
        /// piece kept, plus one.
        #[test]
        fn it_holds_what_was_written_copied_or_kept(
            cap in prop::sample::select(vec![1usize, 300, MIN_SHARED, MIN_SHARED + 300, 3 * MIN_SHARED, 1 << 20]),
            ops in prop::collection::vec((0usize..2000, any::<bool>(), 0u8..5), 0..40),
        ) {
            let mut h = History::new(cap);
            let mut all: Vec<u8> = Vec::new();
            let mut start = 0u64;
            for (n, large, kind) in ops {
                let n = if large { MIN_SHARED - 100 + (n % 200) * 100 } else { n };
                if kind == 4 {
                    h.unshare();
                    prop_assert!(h.spans.len() <= 1);
                } else if kind == 3 {
                    let held = all.len() as u64 - start;
                    let from = start + (n as u64 * 997) % (held + 1);
                    if n % 2 == 0 {
                        h.release_before(from);
                    } else {
                        h.forget_before(from);
                    }
                    start = from;
                } else {
                    let bytes: Vec<u8> = (all.len()..all.len() + n).map(|x| (x % 251) as u8).collect();
                    if kind == 0 {
                        h.append(&bytes);
                    } else {
                        h.append_shared(Bytes::from(bytes.clone()));
                    }
                    all.extend_from_slice(&bytes);
                    start = start.max((all.len() as u64).saturating_sub(cap as u64));
                }
                prop_assert_eq!((h.start(), h.end()), (start, all.len() as u64));
                prop_assert!(h.len() <= cap);
                let kept = h.spans.iter().filter(|s| matches!(s.bytes, Held::Shared(_))).count();
                prop_assert!(h.spans.len() <= 2 * kept + 1);
            }
            let step = (h.len() / 50).max(1);
            for from in (h.start()..=h.end()).step_by(step).chain([h.end()]) {
                prop_assert!(walk(&h, from).unwrap() == all[from as usize..]);
                // Both slices (the ring may wrap inside a span).
                let (a, b) = h.slices_from(from).unwrap();
                let to = from as usize + a.len() + b.len();
                prop_assert!([a, b].concat() == all[from as usize..to]);
            }
        }
    }

    proptest! {
        #[test]
        fn holds_the_last_bytes(cap in 1usize..64, writes in prop::collection::vec(0usize..100, 0..20)) {
            let mut h = History::new(cap);
            let mut all = Vec::new();
            for n in writes {
                let base = all.len();
                let mut next = base;
                h.append_with(n, |s| s.fill_with(|| { next += 1; ((next - 1) % 251) as u8 }));
                all.extend((base..base + n).map(|x| (x % 251) as u8));
            }
            let held = all.len().min(cap);
            prop_assert_eq!(h.len(), held);
            prop_assert_eq!(h.end(), all.len() as u64);
            for from in h.start()..=h.end() {
                prop_assert_eq!(collect(&h, from).unwrap(), all[from as usize..].to_vec());
            }
        }
    }
}
