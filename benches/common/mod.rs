//! Helpers shared by the benchmarks that move bytes over sockets.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The size of every read and write.
pub const CHUNK: usize = 64 << 10;

/// Writes `bytes` in `CHUNK`s, then flushes.
pub async fn send_n<W: AsyncWrite + Unpin>(w: &mut W, bytes: u64) {
    let buf = vec![0x42u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = CHUNK.min(left as usize);
        w.write_all(&buf[..n]).await.expect("write");
        left -= n as u64;
    }
    w.flush().await.expect("flush");
}

/// Reads exactly `bytes`.
pub async fn recv_n<R: AsyncRead + Unpin>(r: &mut R, bytes: u64) {
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = r
            .read(&mut buf[..CHUNK.min(left as usize)])
            .await
            .expect("read");
        assert!(n > 0, "early end of stream");
        left -= n as u64;
    }
}
