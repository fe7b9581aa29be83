//! The gateway's end of a UDP association (an inner stream of kind `UDP`): datagrams
//! framed by `braid_proto::datagram` come from the client and leave from a UDP socket of
//! the gateway, one destination at a time, each checked against the exit policy. Replies
//! go back to the client framed the same way, with their source.
//!
//! - **Policy on every destination.** A name is resolved (overrides first, then the
//!   lookup slots), and every address must pass, as for a TCP open. Refused datagrams are
//!   dropped and counted (`datagrams_refused`).
//! - **Replies only from where the client sent.** Datagrams from any other source are
//!   dropped: the association is no open port on the gateway.
//! - **Bounded, dropping.** Sends never wait (a full socket buffer drops the datagram),
//!   and replies wait in a queue of [`QUEUE`] datagrams and [`QUEUE_BYTES`], dropped
//!   beyond it. Memory per association is that queue, its receive buffers, one frame being
//!   decoded, and [`MAX_PEERS`] addresses; `max_udp_associations` bounds how many.
//! - **Idle.** With nothing either way for the gateway's `udp_idle_secs`, the
//!   association ends.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use braid_driver::drop_queue::{drop_queue, DropQueue};
use braid_driver::Metrics;
use braid_proto::datagram::{self, DatagramDecoder};
use braid_proto::TargetAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::UdpSocket;
use tracing::debug;

use crate::exit::ExitPolicy;
use crate::gateway::{resolve, system_lookup, DnsLimit, GatewayParams};

/// Replies queued for the client, at most, by count and by bytes (so an association holds
/// at most about 0.5 MiB: these and its receive buffers).
pub const QUEUE: usize = 256;
pub const QUEUE_BYTES: usize = 256 * 1024;
/// Destinations an association remembers (replies are taken from these only).
pub const MAX_PEERS: usize = 256;
/// Resolved names an association remembers.
const MAX_NAMES: usize = 64;

/// What one association needs of its gateway.
pub(crate) struct UdpExit {
    /// The association's place under `max_udp_associations`, held until it ends.
    pub slot: tokio::sync::OwnedSemaphorePermit,
    pub params: GatewayParams,
    pub policy: Arc<ExitPolicy>,
    pub dns: DnsLimit,
    pub metrics: Arc<Metrics>,
    pub idle: Duration,
}

/// Serves an association on `far` (the other end is the stream's pump) until the client
/// ends it or it idles out.
pub(crate) async fn serve(exit: UdpExit, far: DuplexStream) {
    let (mut from_client, mut to_client) = tokio::io::split(far);
    let (queue, mut queue_rx) = drop_queue(QUEUE, QUEUE_BYTES);
    let writer = tokio::spawn(async move {
        while let Some(frame) = queue_rx.recv().await {
            if to_client.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut v4: Option<UdpSocket> = None;
    let mut v6: Option<UdpSocket> = None;
    let mut peers = Peers::default();
    let mut names: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    let mut dec = DatagramDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut rbuf4 = vec![0u8; 64 * 1024];
    let mut rbuf6 = vec![0u8; 64 * 1024];
    let m = &exit.metrics;
    // Only datagrams that pass (either way) keep the association alive.
    let mut deadline = tokio::time::Instant::now() + exit.idle;
    'association: loop {
        let idle = tokio::time::sleep_until(deadline);
        tokio::select! {
            n = from_client.read(&mut buf) => {
                let n = match n { Ok(0) | Err(_) => break, Ok(n) => n };
                dec.push(&buf[..n]);
                loop {
                    let (target, payload) = match dec.next_datagram() {
                        Ok(Some(d)) => d,
                        Ok(None) => break,
                        Err(e) => {
                            debug!(error = %e, "malformed datagram frame: association ended");
                            break 'association;
                        }
                    };
                    let Some(dest) = destination(&exit, &mut names, &target).await else {
                        Metrics::inc(&m.datagrams_refused);
                        continue;
                    };
                    let sock = match dest {
                        SocketAddr::V4(_) => &mut v4,
                        SocketAddr::V6(_) => &mut v6,
                    };
                    if sock.is_none() {
                        let any: SocketAddr = if dest.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                            .parse()
                            .unwrap_or(dest);
                        *sock = UdpSocket::bind(any).await.ok();
                        // A new socket is writable only once the reactor has said so;
                        // until then `try_send_to` would fail.
                        if let Some(s) = sock.as_ref() {
                            let _ = tokio::time::timeout(Duration::from_millis(100), s.writable()).await;
                        }
                    }
                    match sock.as_ref().map(|s| s.try_send_to(&payload, dest)) {
                        Some(Ok(_)) => {
                            deadline = tokio::time::Instant::now() + exit.idle;
                            peers.insert(dest);
                            Metrics::inc(&m.datagrams_sent);
                            Metrics::add(&m.bytes_to_targets, payload.len() as u64);
                        }
                        _ => Metrics::inc(&m.datagrams_dropped),
                    }
                }
            }
            r = recv(&v4, &mut rbuf4) => {
                if reply(r, &rbuf4, &peers, &queue, m) {
                    deadline = tokio::time::Instant::now() + exit.idle;
                }
            }
            r = recv(&v6, &mut rbuf6) => {
                if reply(r, &rbuf6, &peers, &queue, m) {
                    deadline = tokio::time::Instant::now() + exit.idle;
                }
            }
            _ = idle => {
                debug!("UDP association idle: ended");
                break;
            }
        }
    }
    drop(queue);
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(1), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    drop(exit.slot);
}

/// Receives on `sock`, or waits forever if there is none yet.
async fn recv(sock: &Option<UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// Queues a reply for the client if it comes from a destination it sent to; whether it
/// was taken.
fn reply(
    r: std::io::Result<(usize, SocketAddr)>,
    buf: &[u8],
    peers: &Peers,
    queue: &DropQueue,
    m: &Metrics,
) -> bool {
    let Ok((n, from)) = r else { return false };
    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
    if !peers.contains(&from) {
        Metrics::inc(&m.datagrams_dropped);
        return false;
    }
    let Ok(frame) = datagram::encode(&TargetAddr::Ip(from), &buf[..n]) else {
        Metrics::inc(&m.datagrams_dropped);
        return false;
    };
    Metrics::add(&m.bytes_from_targets, n as u64);
    if !queue.offer(frame) {
        Metrics::inc(&m.datagrams_dropped);
        return false;
    }
    true
}

/// Where a datagram for `target` goes: the first address, if the policy passes them all.
async fn destination(
    exit: &UdpExit,
    names: &mut HashMap<String, Vec<SocketAddr>>,
    target: &TargetAddr,
) -> Option<SocketAddr> {
    let (name, addrs) = match target {
        TargetAddr::Ip(a) => (None, vec![*a]),
        TargetAddr::Domain(name, port) => {
            let lower = name.to_ascii_lowercase();
            let addrs = match names.get(&lower) {
                Some(a) => a.iter().map(|a| SocketAddr::new(a.ip(), *port)).collect(),
                None => {
                    let a = resolve(&exit.params, &exit.dns, target, system_lookup)
                        .await
                        .ok()?;
                    if names.len() >= MAX_NAMES {
                        names.clear();
                    }
                    names.insert(lower, a.clone());
                    a
                }
            };
            (Some(name.as_str()), addrs)
        }
    };
    let checked = exit.policy.check(name, &addrs).ok()?;
    checked.first().map(|c| c.addr())
}

/// The destinations sent to, oldest forgotten first.
#[derive(Default)]
struct Peers {
    set: HashSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
}

impl Peers {
    fn insert(&mut self, a: SocketAddr) {
        let a = SocketAddr::new(a.ip().to_canonical(), a.port());
        if self.set.insert(a) {
            self.order.push_back(a);
            if self.order.len() > MAX_PEERS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, a: &SocketAddr) -> bool {
        self.set.contains(a)
    }
}
