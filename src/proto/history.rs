//! The send history: the last bytes of ciphertext a side wrote, kept so a
//! resume can resend what the peer missed.
//!
//! A ring of fixed capacity, positioned by absolute stream counts: it holds the
//! bytes `[end − len, end)` of everything ever written. Memory is taken as
//! bytes are written (never more than the capacity), so a session that has
//! sent little holds little, and nothing is allocated before the session is
//! established.

/// Ring buffer of sent ciphertext.
#[derive(Debug)]
pub struct History {
    /// Grows up to `capacity`; once full, `head` marks the oldest byte.
    buf: Vec<u8>,
    capacity: usize,
    head: usize,
    end: u64,
}

impl History {
    /// An empty history that will hold up to `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        History {
            buf: Vec::new(),
            capacity: capacity.max(1),
            head: 0,
            end: 0,
        }
    }

    /// The most bytes this history holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many bytes it holds now.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing was ever written.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The stream count after the newest byte: everything ever written.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The stream count of the oldest byte still held.
    pub fn start(&self) -> u64 {
        self.end - self.buf.len() as u64
    }

    /// Bytes of memory currently allocated for the ring.
    pub fn allocated(&self) -> usize {
        self.buf.capacity()
    }

    /// Appends `n` bytes, letting `fill` write them: it is called once or
    /// twice (when the ring wraps) with consecutive pieces, in order. If
    /// `n` exceeds the capacity only the last `capacity` bytes are kept,
    /// but `fill` still sees all of them, in order, so a cipher stays in step.
    pub fn append_with(&mut self, mut n: usize, mut fill: impl FnMut(&mut [u8])) {
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

    /// Lets go of the bytes before stream count `from` and of the memory
    /// they took: what is kept moves into a buffer of about its own size,
    /// which grows again as bytes are written. Returns whether nothing
    /// more is worth letting go of: it keeps the buffer as it is (and
    /// returns `false`) while most of it is still held from `from` on, so
    /// that a history whose bytes are still asked for is not copied over
    /// and over for little; and as it is (returning `true`) when less than
    /// [`History::SPARE`] would be given back, or `from` is not held.
    pub fn release_before(&mut self, from: u64) -> bool {
        let Some((a, b)) = self.slices_from(from) else {
            return true;
        };
        let keep = a.len() + b.len();
        if self.buf.capacity() - keep < Self::SPARE {
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

    /// Memory below which [`History::release_before`] leaves the ring be.
    pub const SPARE: usize = 64 * 1024;

    /// The held bytes from stream count `from` to the end, as up to two
    /// slices, or `None` if `from` is older than what is held or in the future.
    pub fn slices_from(&self, from: u64) -> Option<(&[u8], &[u8])> {
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
        // Most of it still held from there on: left as it is, for now.
        assert!(!h.release_before(h.end() - (cap as u64 / 2)));
        assert_eq!((h.len(), h.allocated()), (cap, cap));
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
