//! The send history: the last bytes a side wrote, kept so a resume can
//! resend what the peer missed.
//!
//! Positioned by absolute stream counts: it holds the bytes `[end − len,
//! end)` of everything ever written, in one of two stores.
//!
//! - **A ring** of fixed capacity (the compatible suite, whose history is
//!   ciphertext, encrypted into it as written). Memory is taken as bytes are
//!   written (never more than the capacity), so a session that has sent
//!   little holds little, and nothing is allocated before the session is
//!   established.
//! - **A rope** of chunks (the sealed suite, whose history is plaintext,
//!   sealed per connection as it goes out). Small writes are copied into a
//!   tail buffer; a large one given as [`Bytes`] is kept as it is, without a
//!   copy: the tunnel's payloads, read from a visitor into a buffer that is
//!   then held here until the peer acknowledges it. Acknowledged chunks are
//!   dropped at once, so memory follows what the peer has not confirmed.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// Send history, positioned by stream counts.
#[derive(Debug)]
pub struct History {
    store: Store,
    capacity: usize,
    end: u64,
}

#[derive(Debug)]
enum Store {
    /// Grows up to `capacity`; once full, `head` marks the oldest byte.
    Ring { buf: Vec<u8>, head: usize },
    /// `chunks` (each with the stream count of its first byte), then `tail`,
    /// `len` bytes in all.
    Rope {
        chunks: VecDeque<(u64, Bytes)>,
        tail: BytesMut,
        len: usize,
    },
}

/// A rope's tail is frozen into a chunk at this size, so that acknowledged
/// bytes can be let go of a chunk at a time.
const TAIL_CHUNK: usize = 64 * 1024;

/// The least a rope's tail allocates at a time: the few header bytes
/// between two shared chunks share one allocation.
const TAIL_ALLOC: usize = 16 * 1024;

impl History {
    /// An empty ring history that will hold up to `capacity` bytes (at
    /// least 1).
    pub fn new(capacity: usize) -> Self {
        History {
            store: Store::Ring {
                buf: Vec::new(),
                head: 0,
            },
            capacity: capacity.max(1),
            end: 0,
        }
    }

    /// An empty rope history that will hold up to `capacity` bytes (at
    /// least 1).
    pub fn rope(capacity: usize) -> Self {
        History {
            store: Store::Rope {
                chunks: VecDeque::new(),
                tail: BytesMut::new(),
                len: 0,
            },
            capacity: capacity.max(1),
            end: 0,
        }
    }

    /// The most bytes this history holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many bytes it holds now.
    pub fn len(&self) -> usize {
        match &self.store {
            Store::Ring { buf, .. } => buf.len(),
            Store::Rope { len, .. } => *len,
        }
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stream count after the newest byte: everything ever written.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// The stream count of the oldest byte still held.
    pub fn start(&self) -> u64 {
        self.end - self.len() as u64
    }

    /// Bytes of memory currently allocated for it: for a rope, the bytes
    /// held and the tail's spare room (a shared chunk may pin more: the
    /// rest of the buffer it was read into).
    pub fn allocated(&self) -> usize {
        match &self.store {
            Store::Ring { buf, .. } => buf.capacity(),
            Store::Rope { tail, len, .. } => len + (tail.capacity() - tail.len()),
        }
    }

    /// Appends `n` bytes, letting `fill` write them: it is called once or
    /// twice (when the ring wraps) with consecutive pieces, in order. If
    /// `n` exceeds the capacity only the last `capacity` bytes are kept,
    /// but `fill` still sees all of them, in order, so a cipher stays in step.
    pub fn append_with(&mut self, mut n: usize, mut fill: impl FnMut(&mut [u8])) {
        let Store::Ring { buf, head } = &mut self.store else {
            let mut bytes = vec![0; n];
            fill(&mut bytes);
            self.append(&bytes);
            return;
        };
        self.end += n as u64;
        // Grow towards capacity first.
        if buf.len() < self.capacity {
            let grow = n.min(self.capacity - buf.len());
            let len = buf.len();
            if len + grow > buf.capacity() {
                let want = (len + grow).max(2 * buf.capacity()).max(4096);
                buf.reserve_exact(want.min(self.capacity) - len);
            }
            buf.resize(len + grow, 0);
            fill(&mut buf[len..]);
            n -= grow;
        }
        // Then overwrite the oldest bytes.
        while n > 0 {
            let piece = n.min(self.capacity - *head);
            fill(&mut buf[*head..*head + piece]);
            *head = (*head + piece) % self.capacity;
            n -= piece;
        }
    }

    /// Appends `data` as it is. Beyond the capacity, the oldest bytes go.
    pub fn append(&mut self, data: &[u8]) {
        if matches!(self.store, Store::Ring { .. }) {
            let mut done = 0;
            return self.append_with(data.len(), |out| {
                out.copy_from_slice(&data[done..done + out.len()]);
                done += out.len();
            });
        }
        let data = &data[self.skip_beyond_capacity(data.len())..];
        self.make_room(data.len());
        let Store::Rope { chunks, tail, len } = &mut self.store else {
            return;
        };
        if tail.capacity() - tail.len() < data.len() {
            freeze_tail(chunks, tail, self.end);
            *tail = BytesMut::with_capacity(data.len().max(TAIL_ALLOC));
        }
        crate::proto::copy::extend(tail, data);
        *len += data.len();
        self.end += data.len() as u64;
        if tail.len() >= TAIL_CHUNK {
            freeze_tail(chunks, tail, self.end);
        }
    }

    /// Appends `data`: a rope keeps it as it is (a slice of a buffer
    /// shared with whoever gave it), a ring copies it. Beyond the capacity,
    /// the oldest bytes go.
    pub fn append_shared(&mut self, mut data: Bytes) {
        if matches!(self.store, Store::Ring { .. }) || data.is_empty() {
            return self.append(&data);
        }
        data.advance(self.skip_beyond_capacity(data.len()));
        self.make_room(data.len());
        let Store::Rope { chunks, tail, len } = &mut self.store else {
            return;
        };
        freeze_tail(chunks, tail, self.end);
        *len += data.len();
        chunks.push_back((self.end, data.clone()));
        self.end += data.len() as u64;
    }

    /// A rope, before a write of `n` bytes: if they are more than the
    /// capacity, lets go of everything held and counts the write's first
    /// bytes, which it will not hold either. Returns how many those are.
    fn skip_beyond_capacity(&mut self, n: usize) -> usize {
        let skip = n.saturating_sub(self.capacity);
        if skip > 0 {
            self.release_before(self.end);
            self.end += skip as u64;
        }
        skip
    }

    /// A rope: drops its oldest bytes until `n` more fit in the capacity.
    fn make_room(&mut self, n: usize) {
        let over = (self.len() + n).saturating_sub(self.capacity);
        if over > 0 {
            let from = self.start() + over as u64;
            self.release_before(from);
        }
    }

    /// Lets go of the bytes before stream count `from` and of the memory
    /// they took. A rope drops them at once (and its tail's buffer, once
    /// it holds nothing), and returns `true`. A ring moves what it keeps
    /// into a buffer of about its own size, which grows again as bytes are
    /// written. Returns whether nothing more is worth letting go of: it
    /// keeps the buffer as it is (and returns `false`) while most of it is
    /// still held from `from` on, so that a history whose bytes are still
    /// asked for is not copied over and over for little; and as it is
    /// (returning `true`) when less than [`History::SPARE`] would be given
    /// back, or `from` is not held.
    pub fn release_before(&mut self, from: u64) -> bool {
        let start = self.start();
        if from < start || from > self.end {
            return true;
        }
        if let Store::Rope { chunks, tail, len } = &mut self.store {
            let mut drop = (from - start) as usize;
            *len -= drop;
            while let Some((at, front)) = chunks.front_mut() {
                if drop < front.len() {
                    front.advance(drop);
                    *at += drop as u64;
                    drop = 0;
                    break;
                }
                drop -= front.len();
                chunks.pop_front();
            }
            tail.advance(drop);
            if *len == 0 {
                *tail = BytesMut::new();
            }
            return true;
        }
        let Some((a, b)) = self.slices_from(from) else {
            return true;
        };
        let keep = a.len() + b.len();
        let allocated = self.allocated();
        if allocated - keep < Self::SPARE {
            return true;
        }
        if keep > allocated / 4 {
            return false;
        }
        let mut buf = if keep == 0 {
            Vec::new()
        } else {
            Vec::with_capacity(keep.next_power_of_two().max(4096).min(self.capacity))
        };
        buf.extend_from_slice(a);
        buf.extend_from_slice(b);
        self.store = Store::Ring { buf, head: 0 };
        true
    }

    /// Memory below which [`History::release_before`] leaves a ring be.
    pub const SPARE: usize = 64 * 1024;

    /// The held bytes from stream count `from` on, as two slices, or `None`
    /// if `from` is older than what is held or in the future. A ring gives
    /// all of them (in two slices where it wraps); a rope gives the rest of
    /// the chunk holding `from` and the piece after it, so a caller goes on
    /// from where they end.
    pub fn slices_from(&self, from: u64) -> Option<(&[u8], &[u8])> {
        if from < self.start() || from > self.end {
            return None;
        }
        let skip = (from - self.start()) as usize;
        let (a, b) = match &self.store {
            Store::Ring { buf, .. } if buf.len() < self.capacity => (&buf[..], &[][..]),
            Store::Ring { buf, head } => (&buf[*head..], &buf[..*head]),
            Store::Rope { chunks, tail, .. } => {
                // The first chunk starting after `from`; the one before it
                // (if any) holds it.
                let i = chunks.partition_point(|(at, _)| *at <= from);
                let Some(held) = i.checked_sub(1) else {
                    return Some((&tail[(from - self.tail_start()) as usize..], &[]));
                };
                let (at, chunk) = &chunks[held];
                let off = (from - at) as usize;
                if off < chunk.len() {
                    let next = chunks.get(i).map_or(&tail[..], |(_, c)| &c[..]);
                    return Some((&chunk[off..], next));
                }
                // Past the last chunk: in the tail.
                return Some((&tail[(from - self.tail_start()) as usize..], &[]));
            }
        };
        Some(if skip < a.len() {
            (&a[skip..], b)
        } else {
            (&b[skip - a.len()..], &[][..])
        })
    }

    /// A rope: the stream count of its tail's first byte.
    fn tail_start(&self) -> u64 {
        match &self.store {
            Store::Rope { tail, .. } => self.end - tail.len() as u64,
            Store::Ring { .. } => self.end,
        }
    }
}

/// Moves a rope's tail bytes (ending at stream count `end`) into a chunk of
/// their own; the tail keeps the spare room of its buffer.
fn freeze_tail(chunks: &mut VecDeque<(u64, Bytes)>, tail: &mut BytesMut, end: u64) {
    if !tail.is_empty() {
        let at = end - tail.len() as u64;
        chunks.push_back((at, tail.split().freeze()));
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

    /// A rope keeps a shared chunk without copying it, copies small writes
    /// into its tail, and gives all its memory back once nothing is held.
    #[test]
    fn a_rope_keeps_shared_bytes_and_lets_them_go() {
        let mut h = History::rope(1 << 20);
        h.append(b"head");
        let payload = Bytes::from(vec![7u8; 100_000]);
        h.append_shared(payload.slice(..));
        h.append(b"tail");
        assert_eq!((h.start(), h.end(), h.len()), (0, 100_008, 100_008));
        let (a, b) = h.slices_from(4).unwrap();
        assert_eq!(a.as_ptr(), payload.as_ptr(), "not copied");
        assert_eq!((a.len(), b), (100_000, &b"tail"[..]));
        assert_eq!(h.slices_from(2).unwrap(), (&b"ad"[..], &payload[..]));
        assert_eq!(walk(&h, 100_006).unwrap(), b"il");
        // Acknowledged bytes go at once, the shared buffer with them.
        assert!(h.release_before(100_004));
        assert_eq!((h.start(), h.len()), (100_004, 4));
        assert_eq!(walk(&h, 100_004).unwrap(), b"tail");
        assert!(payload.is_unique(), "the history let go of the payload");
        assert!(h.release_before(h.end()));
        assert_eq!((h.len(), h.allocated()), (0, 0));
        assert_eq!(h.slices_from(h.end()), Some((&[][..], &[][..])));
        // Bytes before the start or after the end are not held.
        assert_eq!(h.slices_from(0), None);
        assert_eq!(h.slices_from(h.end() + 1), None);
    }

    proptest! {
        /// A rope holds the same bytes as the stream written into it, however
        /// the writes are split between copies and shared chunks and the
        /// releases fall: the last `capacity` bytes, less what was let go of.
        #[test]
        fn a_rope_holds_what_was_written(
            cap in 1usize..300,
            ops in prop::collection::vec((0usize..200, 0u8..3), 0..40),
        ) {
            let mut h = History::rope(cap);
            let mut all: Vec<u8> = Vec::new();
            let mut start = 0u64;
            for (n, kind) in ops {
                if kind == 2 {
                    let held = all.len() as u64 - start;
                    let from = start + n as u64 % (held + 1);
                    prop_assert!(h.release_before(from));
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
            }
            for from in h.start()..=h.end() {
                prop_assert_eq!(walk(&h, from).unwrap(), all[from as usize..].to_vec());
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
