//! SOCKS5 requests written by hand for real addresses, byte for byte as a test means them
//! (the proxy's own encoder is not used, so a bug there cannot hide in a test). The fixed
//! messages (greetings, sample requests) are `braid_proto::socks5::testing`'s.

pub use braid_proto::socks5::testing::GREET_NO_AUTH;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A SOCKS5 destination, as it goes on the wire: an address or a name.
#[derive(Clone, Debug)]
pub enum Dest {
    Addr(SocketAddr),
    Name(String, u16),
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dest::Addr(a) => write!(f, "{a}"),
            Dest::Name(n, p) => write!(f, "{n}:{p} (by name)"),
        }
    }
}

/// `05 01 00 ATYP DST.ADDR DST.PORT`: a CONNECT request.
pub fn connect_request(dest: &Dest) -> Vec<u8> {
    let mut req = vec![5, 1, 0];
    match dest {
        Dest::Addr(SocketAddr::V4(a)) => {
            req.push(1);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Addr(SocketAddr::V6(a)) => {
            req.push(4);
            req.extend_from_slice(&a.ip().octets());
            req.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Name(n, p) => {
            req.push(3);
            req.push(u8::try_from(n.len()).expect("a SOCKS5 name is at most 255 bytes"));
            req.extend_from_slice(n.as_bytes());
            req.extend_from_slice(&p.to_be_bytes());
        }
    }
    req
}

/// A CONNECT to an IPv4 address.
pub fn connect_ipv4(addr: SocketAddr) -> Vec<u8> {
    assert!(addr.is_ipv4(), "IPv4 only");
    connect_request(&Dest::Addr(addr))
}

/// A CONNECT to a name given as raw bytes (which may be anything, for hostile tests).
pub fn connect_domain(name: &[u8], port: u16) -> Vec<u8> {
    let len = u8::try_from(name.len()).expect("a SOCKS5 name is at most 255 bytes");
    let mut req = vec![5, 1, 0, 3, len];
    req.extend_from_slice(name);
    req.extend_from_slice(&port.to_be_bytes());
    req
}

/// A TCP echo server on 127.0.0.1.
pub async fn start_echo() -> SocketAddr {
    start_counting_echo().await.0
}

/// A TCP echo server on 127.0.0.1, and how many connections it has accepted.
pub async fn start_counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    start_counting_server(|mut s: TcpStream| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    })
    .await
}

/// A TCP server on 127.0.0.1 that serves each connection with `serve`, and how many
/// connections it has accepted (a test checks a stream was resumed, not reopened).
pub async fn start_counting_server<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (addr, accepted)
}

/// A SOCKS5 CONNECT by hand (no authentication); the stream after a successful reply.
pub async fn socks_connect(proxy: SocketAddr, to: SocketAddr) -> TcpStream {
    try_socks_connect(proxy, to).await.unwrap()
}

/// A SOCKS5 CONNECT by hand (no authentication): the stream after a successful reply, or
/// what went wrong (the reply code, or the I/O error).
pub async fn try_socks_connect(proxy: SocketAddr, to: SocketAddr) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    s.write_all(GREET_NO_AUTH)
        .await
        .map_err(|e| e.to_string())?;
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.map_err(|e| e.to_string())?;
    if m != [5, 0] {
        return Err(format!("method answer {m:?}"));
    }
    s.write_all(&connect_ipv4(to))
        .await
        .map_err(|e| e.to_string())?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).await.map_err(|e| e.to_string())?;
    if reply[1] != 0 {
        return Err(format!("SOCKS5 reply {}", reply[1]));
    }
    Ok(s)
}

/// Writes `text` and reads it back (within 10 s).
pub async fn echo(s: &mut TcpStream, text: &[u8]) {
    s.write_all(text).await.unwrap();
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("the echo came back")
        .unwrap();
    assert_eq!(back, text);
}
