//! The DNS port (`dns_listen`, UDP and TCP): queries are resolved at a gateway, through the
//! overlay, so nothing leaves the laptop directly.
//!
//! Each query opens an inner stream of kind `DNS` and rides in the open as early data.
//! The gateway answers over the same stream, which then closes. That costs one round trip,
//! like Tor's RESOLVE. Queries are parsed with hickory-proto first. What is not a query
//! gets `FORMERR`. A query the overlay cannot carry (no session, no gateway, timeout) gets
//! `SERVFAIL`. Nothing is answered from the laptop.
//!
//! Bounds ([`DnsLimits`], from the config): at most `dns_max_inflight` queries at once
//! (UDP queries past it are dropped, as a busy resolver drops them), as many TCP
//! connections (more are closed at once), and a TCP connection idle for
//! `dns_tcp_idle_secs` is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use braid_driver::Metrics;
use braid_proto::inner::StreamKind;
use braid_proto::TargetAddr;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::inner_stream;
use crate::overlay::ClientHandle;

/// Default of [`DnsLimits::max_inflight`] (`dns_max_inflight`).
pub const MAX_INFLIGHT: usize = 256;
/// Default of [`DnsLimits::tcp_idle`] (`dns_tcp_idle_secs`).
pub const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the DNS port lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct DnsLimits {
    /// Queries being resolved at once, at most (UDP queries past it are dropped; TCP ones
    /// wait).
    pub max_inflight: usize,
    /// A TCP connection with no query for this long is closed.
    pub tcp_idle: Duration,
}

impl Default for DnsLimits {
    fn default() -> Self {
        DnsLimits {
            max_inflight: MAX_INFLIGHT,
            tcp_idle: TCP_IDLE,
        }
    }
}
/// How long a query may take through the overlay.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(15);

/// Binds the DNS port's UDP socket and TCP listener on `addr`.
/// With port 0, the UDP port the kernel picks may be taken for TCP: another is tried.
pub async fn bind(addr: SocketAddr) -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 && tries < 16 => {
                tries += 1;
                debug!(error = %e, "DNS port: the TCP side of a picked port is taken; another");
            }
            Err(e) => return Err(e),
        }
    }
}

/// Serves DNS on both until `shutdown`.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    h: ClientHandle,
    limits: DnsLimits,
    shutdown: CancellationToken,
) {
    let udp = Arc::new(udp);
    let slots = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
    let connections = Arc::new(Semaphore::new(limits.max_inflight.max(1)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = udp.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    debug!("DNS port busy: query dropped");
                    continue;
                };
                let query = buf[..n].to_vec();
                let (udp, h) = (udp.clone(), h.clone());
                tokio::spawn(async move {
                    if let Some(answer) = resolve(&h, &query).await {
                        let _ = udp.send_to(&answer, from).await;
                    }
                    drop(slot);
                });
            }
            a = tcp.accept() => {
                let Ok((conn, _)) = a else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                // As many TCP connections as queries in flight: past it, closed at once.
                let Ok(held) = connections.clone().try_acquire_owned() else {
                    debug!("DNS port: TCP connections at their limit; closed");
                    continue;
                };
                let (h, slots) = (h.clone(), slots.clone());
                tokio::spawn(async move {
                    serve_tcp(conn, h, slots, limits.tcp_idle).await;
                    drop(held);
                });
            }
        }
    }
}

/// DNS over TCP: length-prefixed queries, answered in order.
async fn serve_tcp(mut conn: TcpStream, h: ClientHandle, slots: Arc<Semaphore>, idle: Duration) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, conn.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if tokio::time::timeout(idle, conn.read_exact(&mut query))
            .await
            .map_or(true, |r| r.is_err())
        {
            return;
        }
        let Ok(_slot) = slots.acquire().await else {
            return;
        };
        let Some(answer) = resolve(&h, &query).await else {
            return;
        };
        let mut out = (answer.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&answer);
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The answer to one query: `None` for a response (QR set) or a message too short for
/// an id, `FORMERR` for one that is not a single-question query.
pub async fn resolve(h: &ClientHandle, query: &[u8]) -> Option<Vec<u8>> {
    // A response (QR set) is never answered: two resolvers must not ping-pong.
    if query.get(2).is_none_or(|flags| flags & 0x80 != 0) {
        return None;
    }
    let msg = match Message::from_vec(query) {
        Ok(m) if m.message_type() == MessageType::Query && m.queries().len() == 1 => m,
        _ => {
            let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
            let mut m = Message::new();
            m.set_id(id)
                .set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::FormErr);
            return m.to_vec().ok();
        }
    };
    Metrics::inc(&h.metrics.dns_queries);
    match tokio::time::timeout(ANSWER_DEADLINE, through_overlay(h, query)).await {
        Ok(Some(answer)) => Some(answer),
        _ => {
            let mut m = Message::new();
            m.set_id(msg.id())
                .set_message_type(MessageType::Response)
                .set_recursion_desired(msg.recursion_desired())
                .set_response_code(ResponseCode::ServFail);
            for q in msg.queries() {
                m.add_query(q.clone());
            }
            m.to_vec().ok()
        }
    }
}

/// Sends the query to a gateway in a DNS stream's open and reads its answer.
async fn through_overlay(h: &ClientHandle, query: &[u8]) -> Option<Vec<u8>> {
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    // The gateway choice goes by target; the name is not sent anywhere as a destination.
    let steer = TargetAddr::Domain("dns.braid".into(), 53);
    let stream = inner_stream::open_kind(h, &steer, None, framed, StreamKind::DNS)
        .await
        .ok()?;
    let (near, far) = tokio::io::duplex(16 * 1024);
    let relay = tokio::spawn({
        let h = h.clone();
        async move {
            let (mut r, mut w) = tokio::io::split(far);
            stream.relay_halves(&h, &mut r, &mut w).await
        }
    });
    let (mut r, mut w) = tokio::io::split(near);
    let mut len = [0u8; 2];
    let answer = async {
        r.read_exact(&mut len).await.ok()?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        r.read_exact(&mut answer).await.ok()?;
        Some(answer)
    }
    .await;
    // Done: the gateway sees the end and closes its side.
    let _ = w.shutdown().await;
    drop((r, w));
    let _ = tokio::time::timeout(Duration::from_secs(2), relay).await;
    answer
}
