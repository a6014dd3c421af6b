//! Reusable read buffers.
//!
//! Bulk data moves through the tunnel in 256 KiB reads whose bytes are handed
//! down the pipeline as `Bytes` and dropped once written out. Allocating each
//! buffer anew makes the allocator return memory to the system and take it
//! back, and every page then faults in again (with huge pages, 2 MiB cleared at
//! a time): the most expensive thing on the path. So buffers come from a pool
//! and go back to it when their last slice is dropped. The pool keeps at most
//! [`MAX_POOLED`] idle buffers; an idle tunnel holds no others.

use std::sync::LazyLock;

use bytes::Bytes;
use parking_lot::Mutex;

/// Size of a pooled buffer.
pub const BUF_SIZE: usize = 256 * 1024;
/// Most idle buffers kept (16 MiB).
const MAX_POOLED: usize = 64;

static POOL: LazyLock<Mutex<Vec<Vec<u8>>>> = LazyLock::new(|| Mutex::new(Vec::new()));

/// A buffer of [`BUF_SIZE`] bytes, from the pool if one is idle.
pub fn take() -> Vec<u8> {
    POOL.lock().pop().unwrap_or_else(|| vec![0u8; BUF_SIZE])
}

fn give_back(buf: Vec<u8>) {
    let mut pool = POOL.lock();
    if pool.len() < MAX_POOLED && buf.len() == BUF_SIZE {
        pool.push(buf);
    }
}

/// Owns a pooled buffer behind `Bytes`; returns it when dropped.
struct Owner {
    buf: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

/// The first `len` bytes of `buf` as `Bytes`; the buffer goes back to the pool
/// when the last slice of them is dropped.
pub fn freeze(buf: Vec<u8>, len: usize) -> Bytes {
    let len = len.min(buf.len());
    Bytes::from_owner(Owner { buf, len })
}

/// Bytes at least this many are passed on as a slice of their pooled buffer;
/// one held pins the buffer, at most four times its size. Fewer are copied
/// out and the buffer goes back at once, so that small reads (a chatty
/// visitor's, during an outage) never pin a buffer each.
pub const SHARE_AT_LEAST: usize = BUF_SIZE / 4;

/// Like [`freeze`], but copies the bytes out when they are fewer than
/// [`SHARE_AT_LEAST`].
pub fn freeze_or_copy(buf: Vec<u8>, len: usize) -> Bytes {
    let len = len.min(buf.len());
    if len >= SHARE_AT_LEAST {
        return freeze(buf, len);
    }
    let bytes = Bytes::copy_from_slice(&buf[..len]);
    give_back(buf);
    bytes
}

/// Idle buffers in the pool now.
#[cfg(test)]
fn idle() -> usize {
    POOL.lock().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back() {
        let mut buf = take();
        buf[..5].copy_from_slice(b"hello");
        let before = idle();
        let bytes = freeze(buf, 5);
        let part = bytes.slice(1..3);
        drop(bytes);
        assert_eq!(&part[..], b"el");
        assert_eq!(idle(), before, "still in use");
        drop(part);
        assert_eq!(idle(), before + 1, "back in the pool");
    }

    #[test]
    fn small_reads_pin_no_buffer() {
        let buf = take();
        let before = idle();
        let small = freeze_or_copy(buf, 100);
        assert_eq!(idle(), before + 1, "back in the pool at once");
        assert_eq!(small.len(), 100);
        let buf = take();
        let before = idle();
        let large = freeze_or_copy(buf, SHARE_AT_LEAST);
        assert_eq!(idle(), before, "shared, so held");
        drop(large);
        assert_eq!(idle(), before + 1);
    }
}
