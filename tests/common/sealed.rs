//! A sealed link driven by hand, frames sealed here, so that a test can put
//! any bytes into the stream and break the suite's rules on purpose (what a
//! holder of the key can do).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rejoin::proto::sealed::{ClientExchange, ClientOutcome, Psk};
use rejoin::stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

pub struct SealedRaw {
    pub io: TcpStream,
    pub session: rejoin::proto::Session,
    pub link: rejoin::proto::sealed::Link,
    plain: BytesMut,
}

impl SealedRaw {
    /// A new session with `psk` under the identity `name`, from the
    /// loopback address `source`.
    pub async fn connect_from(
        source: [u8; 4],
        server: SocketAddr,
        psk: Psk,
        name: &str,
    ) -> SealedRaw {
        let config = stream::Config::sealed(psk.clone());
        let mut ex =
            ClientExchange::new_session(config.params(), &psk, name.as_bytes(), None).unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        let mut io = socket.connect(server).await.unwrap();
        let mut input = BytesMut::new();
        loop {
            if let Some(out) = ex.poll_transmit() {
                io.write_all(&out).await.unwrap();
            }
            if let Some(outcome) = ex.poll_outcome() {
                let Ok(ClientOutcome::Established(e)) = outcome else {
                    panic!("not established: {outcome:?}");
                };
                return SealedRaw {
                    io,
                    session: e.session,
                    link: e.link,
                    plain: BytesMut::new(),
                };
            }
            assert!(io.read_buf(&mut input).await.unwrap() > 0, "server closed");
            ex.handle_input(&mut input).unwrap();
        }
    }

    /// Sends what is sealed and ready; then reads for up to `wait`, opening
    /// frames (their acks and windows let more out); returns the stream
    /// bytes received, or `None` once the server has closed.
    pub async fn exchange(&mut self, wait: Duration) -> Option<BytesMut> {
        let window = self.session.read_count() + (1 << 20);
        loop {
            let out = self
                .link
                .poll_transmit(&mut self.session, window)
                .unwrap()
                .to_vec();
            if out.is_empty() {
                break;
            }
            self.io.write_all(&out).await.ok()?;
            self.link.handle_transmitted(out.len());
        }
        if let Ok(Ok(0) | Err(_)) = timeout(wait, self.io.read_buf(self.link.input_buffer())).await
        {
            return None;
        }
        self.link
            .handle_input(&mut self.session, &mut self.plain)
            .unwrap();
        let mut got = self.plain.split();
        self.session.handle_input(&mut got);
        Some(got)
    }
}
