//! Links between nodes: dialing with backoff and jitter, and publishing an outgoing link
//! for session tasks to send cells on.

use std::future::Future;
use std::time::Duration;

use braid_config::NodeEntry;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::tap::{tap, Tap, TapPoint};

/// Exponential backoff with jitter, as a tunnel client behind NAT reconnects.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The next wait: the current step with ±25% jitter; the step then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::rng().random_range(0.75..1.25);
        base.mul_f64(jitter)
    }
}

/// Sleeps unless shutdown comes first; returns false on shutdown.
pub async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Keeps a connection to `peer` up: dials, runs `serve` on it, and dials again with backoff
/// when it ends, until shutdown.
pub async fn keep_dialing<F, Fut>(
    ep: quinn::Endpoint,
    peer: NodeEntry,
    shutdown: CancellationToken,
    mut backoff: Backoff,
    mut serve: F,
) where
    F: FnMut(quinn::Connection) -> Fut,
    Fut: Future<Output = ()>,
{
    if !peer.dialable() {
        tracing::warn!(peer = %peer.id, "peer has no address in the directory");
        return;
    }
    loop {
        // A `host` is looked up at each dial: its address may change (a rescheduled task).
        let addr = match (peer.addr, &peer.host) {
            (Some(a), _) => Some(a),
            (None, Some(h)) => match tokio::net::lookup_host(h.as_str()).await {
                Ok(mut a) => a.next(),
                Err(e) => {
                    tracing::debug!(peer = %peer.id, error = %e, "looking up the peer's host failed");
                    None
                }
            },
            (None, None) => None,
        };
        let Some(addr) = addr else {
            if !sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                return;
            }
            continue;
        };
        let dial = braid_net::connect(&ep, addr, peer.tls_key);
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = dial => c,
        };
        match conn {
            Ok(conn) => {
                tracing::debug!(peer = %peer.id, "link up");
                backoff.reset();
                let handle = conn.clone();
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        handle.close(0u32.into(), b"shutdown");
                        return;
                    }
                    _ = serve(conn) => {}
                }
                tracing::debug!(peer = %peer.id, "link down");
            }
            Err(e) => tracing::debug!(peer = %peer.id, error = %e, "dial failed"),
        }
        if !sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
            return;
        }
    }
}

/// A link cells can leave on: an upstream (client side) or a downstream (central side).
#[derive(Clone, Debug)]
pub struct Link {
    pub name: String,
    pub tx: mpsc::Sender<Vec<u8>>,
}

/// Serves one outgoing link: opens its stream (writing `first`, when given, as the stream's
/// first message: the client's route to a central), publishes it in `links` for sessions
/// to send on, writes what they hand it (each message tapped as `Sent` by `node`), and
/// withdraws it when the connection or a write fails.
pub async fn publish_link(
    links: &watch::Sender<Vec<Link>>,
    name: &str,
    conn: &quinn::Connection,
    first: Option<&[u8]>,
    queue: usize,
    node: &str,
    tapper: &Option<Tap>,
) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    if let Some(first) = first {
        if braid_net::write_frame(&mut send, first).await.is_err() {
            return;
        }
    }
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(queue);
    // Withdrawn when this ends, also when the caller drops it (a link given up): only
    // this link's entry, as a newer link of the same name may have replaced it.
    // (Weak: the list's entry is what keeps the queue open.)
    struct Published<'a> {
        links: &'a watch::Sender<Vec<Link>>,
        tx: mpsc::WeakSender<Vec<u8>>,
    }
    impl Drop for Published<'_> {
        fn drop(&mut self) {
            if let Some(tx) = self.tx.upgrade() {
                self.links
                    .send_modify(|v| v.retain(|l| !l.tx.same_channel(&tx)));
            }
        }
    }
    let _published = Published {
        links,
        tx: tx.downgrade(),
    };
    links.send_modify(|v| {
        v.retain(|l| l.name != name);
        v.push(Link {
            name: name.to_string(),
            tx,
        });
    });
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { break };
                tap(tapper, node, TapPoint::Sent, &msg);
                if braid_net::write_frame(&mut send, &msg).await.is_err() {
                    break;
                }
            }
            _ = conn.closed() => break,
        }
    }
    tracing::warn!(link = %name, "link lost");
}
