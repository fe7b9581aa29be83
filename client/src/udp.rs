//! SOCKS5 UDP ASSOCIATE through the overlay: the app's datagrams reach the client's UDP
//! relay port, ride an inner stream of kind `UDP` to the gateway, and leave from there.
//! Replies come back the same way.
//!
//! - **Only the associating app.** Datagrams are taken only from the TCP control
//!   connection's address, from the port named in the request when it named one, and
//!   after the first datagram only from that datagram's source (as shadowsocks and
//!   Dante do when the request names no port). Others are dropped and counted.
//! - **No fragments.** `FRAG ≠ 0` is dropped and counted (RFC 1928 lets a server do so).
//! - **Bounded, dropping.** The queue toward the overlay holds [`QUEUE`] datagrams and
//!   [`QUEUE_BYTES`]. Past it they are dropped, as a router drops them, rather than
//!   letting memory grow. At most `max_udp_associations` are open at once; past it, UDP
//!   ASSOCIATE is answered 01.
//! - **Lifetime.** The association lives as long as its TCP control connection, and ends
//!   sooner when no datagram passes either way for `udp_idle_secs`.

use std::net::SocketAddr;
use std::time::Duration;

use braid_driver::drop_queue::drop_queue;
use braid_driver::Metrics;
use braid_proto::datagram::{self, DatagramDecoder};
use braid_proto::inner::StreamKind;
use braid_proto::socks5::udp::{encode_datagram, parse_datagram};
use braid_proto::socks5::{self, ReplyCode};
use braid_proto::TargetAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;
use tracing::debug;

use crate::inner_stream::{self, RelayEnd};
use crate::overlay::ClientHandle;

/// Datagrams queued toward the overlay, at most, by count and by bytes.
pub const QUEUE: usize = 256;
pub const QUEUE_BYTES: usize = 256 * 1024;
/// Default of the client's `max_udp_associations`.
pub const MAX_ASSOCIATIONS: usize = 256;
/// Default of the client's `udp_idle_secs`.
pub const IDLE: Duration = Duration::from_secs(120);
const PIPE_BYTES: usize = 256 * 1024;

/// Serves one UDP ASSOCIATE request whose handshake is done: opens the association,
/// answers with the relay port, and relays until the control connection closes or the
/// association idles out.
pub async fn associate(
    tcp: &mut TcpStream,
    h: &ClientHandle,
    requested: &TargetAddr,
    pinned: Option<String>,
    idle: Duration,
) -> anyhow::Result<RelayEnd> {
    let app_ip = tcp.peer_addr()?.ip().to_canonical();
    let sock = UdpSocket::bind(SocketAddr::new(tcp.local_addr()?.ip(), 0)).await?;
    let bound = sock.local_addr()?;
    // The gateway choice goes by target; an association has none of its own.
    let steer = TargetAddr::Ip(SocketAddr::from(([0, 0, 0, 0], 0)));
    let stream =
        match inner_stream::open_kind(h, &steer, pinned.as_deref(), Vec::new(), StreamKind::UDP)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tcp.write_all(&socks5::reply(e.reason().socks5_reply(), None))
                    .await?;
                return Ok(RelayEnd::Closed);
            }
        };
    tcp.write_all(&socks5::reply(ReplyCode::SUCCEEDED, Some(bound)))
        .await?;
    let (near, far) = tokio::io::duplex(PIPE_BYTES);
    let relay = tokio::spawn({
        let h = h.clone();
        async move {
            let (mut r, mut w) = tokio::io::split(far);
            stream.relay_halves(&h, &mut r, &mut w).await
        }
    });
    let (mut from_gateway, mut to_gateway) = tokio::io::split(near);
    let (queue, mut queue_rx) = drop_queue(QUEUE, QUEUE_BYTES);
    let writer = tokio::spawn(async move {
        while let Some(frame) = queue_rx.recv().await {
            if to_gateway.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = to_gateway.shutdown().await;
    });
    let m = &h.metrics;
    let port_named = requested.port();
    let mut app: Option<SocketAddr> = None;
    let mut dec = DatagramDecoder::default();
    let mut control = [0u8; 512];
    let mut from_app = vec![0u8; 64 * 1024];
    let mut from_gw = vec![0u8; 64 * 1024];
    // Only datagrams that pass (either way) keep the association alive.
    let mut deadline = Instant::now() + idle;
    'association: loop {
        tokio::select! {
            n = tcp.read(&mut control) => {
                if matches!(n, Ok(0) | Err(_)) {
                    debug!("UDP association: control connection closed");
                    break;
                }
            }
            r = sock.recv_from(&mut from_app) => {
                let Ok((n, from)) = r else { continue };
                // The app's address: its control connection's IP, the port it named, and
                // once a datagram has come, exactly that datagram's source.
                let stranger = from.ip().to_canonical() != app_ip
                    || (port_named != 0 && from.port() != port_named)
                    || app.is_some_and(|a| a != from);
                let frame = if stranger {
                    None
                } else {
                    parse_datagram(&from_app[..n])
                        .ok()
                        .and_then(|(target, payload)| datagram::encode(&target, payload).ok())
                };
                if frame.is_some_and(|f| queue.offer(f)) {
                    app = Some(from);
                    deadline = Instant::now() + idle;
                    Metrics::inc(&m.datagrams_sent);
                } else {
                    Metrics::inc(&m.datagrams_dropped);
                }
            }
            n = from_gateway.read(&mut from_gw) => {
                let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                dec.push(&from_gw[..n]);
                loop {
                    let (source, payload) = match dec.next_datagram() {
                        Ok(Some(d)) => d,
                        Ok(None) => break,
                        Err(e) => {
                            // The stream cannot be read past a bad frame: end it.
                            debug!(error = %e, "malformed datagram frame from the gateway");
                            break 'association;
                        }
                    };
                    deadline = Instant::now() + idle;
                    let sent = match (app, encode_datagram(&source, &payload)) {
                        (Some(to), Ok(d)) => sock.try_send_to(&d, to).is_ok(),
                        _ => false,
                    };
                    if !sent {
                        Metrics::inc(&m.datagrams_dropped);
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                debug!("UDP association idle: ended");
                break;
            }
        }
    }
    drop(queue);
    drop(from_gateway);
    // A gateway that stopped reading must not hold the association open.
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    // The pipe's ends are gone: the relay ends the stream.
    let _ = tokio::time::timeout(Duration::from_secs(5), relay).await;
    Ok(RelayEnd::Closed)
}
