//! Copying large blocks in pieces.
//!
//! Large `memcpy`/`memmove` calls go to glibc's `rep movsb` path, which on some
//! AMD CPUs runs several times slower for unlucky relative alignments of source
//! and destination: measured here, a stream's throughput fell from 2.7 to
//! 1.1 GB/s once the heap's addresses shifted (`docs/benchmarks.md`). Pieces
//! below glibc's threshold take its vector loop instead, which has no such case
//! and costs the same elsewhere. Every bulk copy on the data path goes through
//! these functions.

/// Bytes per piece: below glibc's `rep movsb` threshold (2,112 bytes on the
/// machine measured, `ld.so --list-tunables`).
pub const PIECE: usize = 2048;

/// Copies `src` into `dst` (the same length).
pub fn copy(src: &[u8], dst: &mut [u8]) {
    debug_assert_eq!(src.len(), dst.len());
    for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
        d.copy_from_slice(s);
    }
}

/// Appends `src` to `dst` (reserve the room first where growing matters).
pub fn extend(dst: &mut impl bytes::BufMut, src: &[u8]) {
    for piece in src.chunks(PIECE) {
        dst.put_slice(piece);
    }
}

/// Moves `buf[from..from + len]` down to `buf[to..]`, `to <= from` (the
/// regions may overlap): front to back, each piece moved before the next is
/// read, so no byte is overwritten before it has moved.
pub fn move_down(buf: &mut [u8], from: usize, to: usize, len: usize) {
    debug_assert!(to <= from);
    let mut done = 0;
    while done < len {
        let n = PIECE.min(len - done);
        buf.copy_within(from + done..from + done + n, to + done);
        done += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_moves_like_the_plain_versions() {
        let src: Vec<u8> = (0..20_000u32).map(|i| (i * 7) as u8).collect();
        let mut dst = vec![0u8; src.len()];
        copy(&src, &mut dst);
        assert_eq!(src, dst);
        for (from, to, len) in [
            (100, 0, 9000),
            (5000, 4999, 10_000),
            (3, 3, 100),
            (9000, 1, 0),
        ] {
            let mut a = src.clone();
            let mut b = src.clone();
            a.copy_within(from..from + len, to);
            move_down(&mut b, from, to, len);
            assert_eq!(a, b, "from {from} to {to} len {len}");
        }
    }
}
