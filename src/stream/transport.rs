//! Transports: what a client dials, and the TCP socket options both sides set.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::Config;

/// A freshly dialled transport and, if known, the address of its peer.
#[derive(Debug)]
pub struct Dialed<T> {
    /// The transport.
    pub io: T,
    /// The peer's address, reported by [`super::Stream::peer_addr`].
    pub peer: Option<SocketAddr>,
}

/// Opens a new transport to the server: once for the first connection and
/// again for every reconnect.
///
/// Any closure returning a future of `io::Result<T>` is a dialer (the peer
/// address is then unknown), so a stream can run over TLS, a Unix socket or
/// an in-memory pipe:
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use rejoin::stream::{connect_with, Config};
/// let stream = connect_with(
///     || tokio::net::UnixStream::connect("/run/app.sock"),
///     Config::default(),
/// )
/// .await?;
/// # Ok(()) }
/// ```
pub trait Dialer: Send + Sync + 'static {
    /// The transport this dialer opens.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Opens one transport.
    fn dial(&self) -> impl Future<Output = io::Result<Dialed<Self::Io>>> + Send;
}

impl<F, Fut, T> Dialer for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<T>> + Send,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = T;

    fn dial(&self) -> impl Future<Output = io::Result<Dialed<T>>> + Send {
        let connecting = self();
        async move {
            Ok(Dialed {
                io: connecting.await?,
                peer: None,
            })
        }
    }
}

/// Socket options for TCP transports, taken from a [`Config`].
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// `None`: the kernel sizes the buffers.
    buffer: Option<usize>,
    nodelay: bool,
    keepalive: Option<super::Keepalive>,
    user_timeout: Option<std::time::Duration>,
}

/// Bounds the bytes the kernel holds written but not yet sent
/// ([`super::KERNEL_UNSENT`]), on every TCP socket a stream uses. Best
/// effort: a kernel that refuses the option keeps its own unsent bytes, and
/// the connection is no less usable for it.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn bound_unsent(sock: &SockRef<'_>) {
    let _ = sock.set_tcp_notsent_lowat(super::KERNEL_UNSENT as u32);
}

/// Elsewhere the option is not at hand; [`super::KERNEL_SIZED`] is a fixed
/// size there, so the buffers themselves stay bounded.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn bound_unsent(_sock: &SockRef<'_>) {}

impl SocketOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        SocketOptions {
            buffer: config.socket_buffer,
            nodelay: config.nodelay,
            keepalive: config.keepalive,
            user_timeout: config.user_timeout,
        }
    }

    /// The requested buffer size, as the system call takes it.
    fn buffer(&self) -> Option<u32> {
        self.buffer.map(|b| u32::try_from(b).unwrap_or(u32::MAX))
    }

    /// Sizes the buffers of a socket that is not yet connected (window
    /// scaling is agreed at connect time, so this must come first).
    pub fn size(&self, socket: &TcpSocket) -> io::Result<()> {
        if let Some(buffer) = self.buffer() {
            socket.set_send_buffer_size(buffer)?;
            socket.set_recv_buffer_size(buffer)?;
        }
        Ok(())
    }

    /// Applies the remaining options to a connected stream.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        let sock = SockRef::from(stream);
        // Accepted sockets inherit the listener's sizes; set them anyway, in
        // case the listener came from elsewhere.
        if let Some(buffer) = self.buffer() {
            sock.set_send_buffer_size(buffer as usize)?;
            sock.set_recv_buffer_size(buffer as usize)?;
        }
        // With pinned buffers too: a large one would otherwise be all queue.
        bound_unsent(&sock);
        if let Some(k) = &self.keepalive {
            let params = TcpKeepalive::new()
                .with_time(k.idle)
                .with_interval(k.interval);
            #[cfg(any(target_os = "linux", target_os = "android", target_os = "macos"))]
            let params = params.with_retries(k.retries);
            sock.set_tcp_keepalive(&params)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(t) = self.user_timeout {
            sock.set_tcp_user_timeout(Some(t))?;
        }
        Ok(())
    }

    /// Binds a listener with these options.
    pub fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        self.size(&socket)?;
        socket.bind(addr)?;
        socket.listen(1024)
    }
}

/// Dials TCP, resolving the target anew on every dial (so a changed DNS
/// answer is picked up on reconnect) and applying [`SocketOptions`].
#[derive(Debug, Clone)]
pub struct TcpDialer {
    target: String,
    local: Option<IpAddr>,
    options: SocketOptions,
}

/// Where to dial, in any of the forms [`super::Listener::bind`] takes:
/// `"host:port"`, a `SocketAddr`, `(ip, port)` or `("host", port)`. The
/// name is resolved again at every dial, so a reconnect follows a DNS change.
pub trait Target {
    /// The target as `host:port`.
    fn into_target(self) -> String;
}

impl Target for &str {
    fn into_target(self) -> String {
        self.to_string()
    }
}

impl Target for String {
    fn into_target(self) -> String {
        self
    }
}

impl Target for &String {
    fn into_target(self) -> String {
        self.clone()
    }
}

impl Target for SocketAddr {
    fn into_target(self) -> String {
        self.to_string()
    }
}

impl Target for (IpAddr, u16) {
    fn into_target(self) -> String {
        SocketAddr::from(self).to_string()
    }
}

impl Target for (std::net::Ipv4Addr, u16) {
    fn into_target(self) -> String {
        SocketAddr::from(self).to_string()
    }
}

impl Target for (std::net::Ipv6Addr, u16) {
    fn into_target(self) -> String {
        SocketAddr::from(self).to_string()
    }
}

impl Target for (&str, u16) {
    fn into_target(self) -> String {
        match self.0.contains(':') && !self.0.starts_with('[') {
            // An IPv6 literal needs brackets before the port.
            true => format!("[{}]:{}", self.0, self.1),
            false => format!("{}:{}", self.0, self.1),
        }
    }
}

impl TcpDialer {
    /// Dials `target` with the socket options of `config`.
    pub fn new(target: impl Target, config: &Config) -> Self {
        TcpDialer {
            target: target.into_target(),
            local: None,
            options: SocketOptions::from_config(config),
        }
    }

    /// Binds outgoing connections to this local address.
    pub fn bind(mut self, local: IpAddr) -> Self {
        self.local = Some(local);
        self
    }

    async fn dial_one(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        self.options.size(&socket)?;
        if let Some(ip) = self.local {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        self.options.apply(&stream)?;
        Ok(stream)
    }
}

impl Dialer for TcpDialer {
    type Io = TcpStream;

    async fn dial(&self) -> io::Result<Dialed<TcpStream>> {
        let mut last = None;
        for addr in tokio::net::lookup_host(&self.target).await? {
            match self.dial_one(addr).await {
                Ok(io) => {
                    return Ok(Dialed {
                        io,
                        peer: Some(addr),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.target),
            )
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair through a listener bound with `options`, both ends
    /// with the options applied.
    async fn pair(options: &SocketOptions) -> (TcpStream, TcpStream) {
        let listener = options.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let socket = TcpSocket::new_v4().unwrap();
        options.size(&socket).unwrap();
        let (dialed, accepted) = tokio::join!(
            socket.connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        let (dialed, accepted) = (dialed.unwrap(), accepted.unwrap().0);
        options.apply(&dialed).unwrap();
        options.apply(&accepted).unwrap();
        (dialed, accepted)
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn a_bound_pins_the_buffers_and_the_unsent_bytes_are_bounded_always() {
        // What the kernel makes of a request (Linux doubles it, capped by
        // net.core.rmem_max / wmem_max), and a fresh socket's own sizes.
        let asked = TcpSocket::new_v4().unwrap();
        asked.set_recv_buffer_size(256 << 10).unwrap();
        asked.set_send_buffer_size(256 << 10).unwrap();
        let pinned = (
            asked.recv_buffer_size().unwrap(),
            asked.send_buffer_size().unwrap(),
        );
        let plain = TcpSocket::new_v4().unwrap().recv_buffer_size().unwrap();
        assert_ne!(pinned.0, plain, "the kernel's default is the pinned size");

        let bounded = SocketOptions::from_config(&Config::default());
        let (a, b) = pair(&bounded).await;
        for s in [&a, &b] {
            let s = SockRef::from(s);
            let sizes = (s.recv_buffer_size().unwrap(), s.send_buffer_size().unwrap());
            assert_eq!(sizes, (pinned.0 as usize, pinned.1 as usize));
            assert_eq!(
                s.tcp_notsent_lowat().unwrap(),
                super::super::KERNEL_UNSENT as u32
            );
        }
        let sealed = Config::sealed(crate::proto::sealed::Psk::from_bytes([7; 32]));
        assert_eq!(sealed.socket_buffer, None);
        let kernel = SocketOptions::from_config(&sealed);
        let (a, b) = pair(&kernel).await;
        for s in [&a, &b] {
            let s = SockRef::from(s);
            // Left to the kernel (a fresh socket's size), and the unsent
            // bytes it may hold bounded instead.
            assert_eq!(s.recv_buffer_size().unwrap(), plain as usize);
            assert_eq!(
                s.tcp_notsent_lowat().unwrap(),
                super::super::KERNEL_UNSENT as u32
            );
        }
    }
}
