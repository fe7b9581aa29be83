//! `braid-node`: every server role of Braid over shared QUIC transport code. Each role is a
//! module with a `run` function that takes a [`NodeContext`] and its parameters, binds,
//! serves until the context's shutdown token fires, and returns.

pub mod admin;
pub mod admission;
pub mod central;
pub mod downstream;
pub mod exit;
mod exit_dns;
mod exit_udp;
pub mod fair_queue;
pub mod gateway;
pub mod health;
pub mod members;
pub mod operator;
pub mod relay;
pub mod roles;
pub mod stall;
pub mod upstream;
pub mod users;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use braid_config::{Directory, NodeEntry};
use braid_driver::metrics::LinkUpGuard;
use braid_driver::tap::{tap, TapPoint};
use braid_driver::{keep_dialing, sleep_or_shutdown, Backoff, Metrics, Tap};
use braid_net::NodeIdentity;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What every role needs: who it is, the directory, counters, and when to stop.
#[derive(Clone)]
pub struct NodeContext {
    pub id: String,
    pub identity: NodeIdentity,
    pub directory: Arc<Directory>,
    pub metrics: Arc<Metrics>,
    pub tap: Option<Tap>,
    /// Fired first on SIGTERM: stop accepting new work, let live work finish.
    pub drain: CancellationToken,
    /// Fired last (drain deadline, or at once): stop everything now.
    pub shutdown: CancellationToken,
    /// The node's config as last reloaded (SIGHUP, `braid-node`): None until a reload
    /// succeeds. Roles apply what they can of it while running (`users::apply_reloads`).
    pub reloaded: tokio::sync::watch::Receiver<Option<Arc<braid_config::NodeConfig>>>,
    /// Set when this node joined the network rather than being in the directory: it
    /// registers its descriptor on each link to a central.
    pub joiner: Option<Arc<members::Joiner>>,
}

impl NodeContext {
    /// Keeps this node's links to every central up, each in its own task: dials with
    /// `backoff`, runs `serve` on each connection (with the central it reaches), counts the
    /// link in `links_up` while it is up, until shutdown. Fails at once if the directory
    /// names no central. Dropping the returned future stops every link.
    pub fn central_links<F, Fut>(
        &self,
        ep: quinn::Endpoint,
        backoff: Backoff,
        serve: F,
    ) -> anyhow::Result<impl Future<Output = ()> + Send + 'static>
    where
        F: Fn(NodeEntry, quinn::Connection) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let centrals: Vec<NodeEntry> = self.directory.centrals().cloned().collect();
        anyhow::ensure!(!centrals.is_empty(), "the directory names no central");
        let mut links = tokio::task::JoinSet::new();
        for central in centrals {
            let metrics = self.metrics.clone();
            let serve = serve.clone();
            let peer = central.clone();
            let joiner = self.joiner.clone();
            let drain = self.drain.clone();
            links.spawn(keep_dialing(
                ep.clone(),
                central,
                self.shutdown.clone(),
                backoff.clone(),
                move |conn| {
                    let (serve, peer, joiner, drain, metrics) = (
                        serve.clone(),
                        peer.clone(),
                        joiner.clone(),
                        drain.clone(),
                        metrics.clone(),
                    );
                    async move {
                        if let Some(j) = joiner {
                            // Registered before anything else: the central serves an
                            // unknown key nothing until then.
                            if let Err(e) = j.register(&conn, false).await {
                                tracing::error!(central = %peer.id, error = %e, "joining failed");
                                return;
                            }
                            tracing::info!(central = %peer.id, "registered with the central");
                            let conn2 = conn.clone();
                            tokio::spawn(async move { j.keep_registered(&conn2, &drain).await });
                        }
                        let _up = LinkUpGuard::new(metrics);
                        serve(peer, conn).await
                    }
                },
            ));
        }
        Ok(async move { while links.join_next().await.is_some() {} })
    }

    /// Writes what `queue` holds to a new uni stream on `conn`, each message tapped as sent
    /// and counted in `cells_out`, until the queue closes or the link fails (the message in
    /// hand is then counted as dropped; the end-to-end layer resends it).
    pub async fn forward_queue(
        &self,
        conn: &quinn::Connection,
        queue: &mut mpsc::Receiver<Vec<u8>>,
        rewrite: impl Fn(&mut [u8]),
    ) {
        let Ok(mut send) = conn.open_uni().await else {
            return;
        };
        while let Some(mut msg) = queue.recv().await {
            rewrite(&mut msg);
            if braid_net::write_frame(&mut send, &msg).await.is_err() {
                tracing::debug!(node = %self.id, "link lost; message dropped");
                Metrics::inc(&self.metrics.cells_dropped);
                return;
            }
            tap(&self.tap, &self.id, TapPoint::Sent, &msg);
            Metrics::inc(&self.metrics.cells_out);
        }
    }

    /// Accepts connections on `ep` until drain (or the endpoint closes), each handshaken
    /// and served by `serve` in its own task, within `limits`: past `max_connections` in all
    /// or `max_per_ip` from one address a connection is refused, and while more than
    /// `retry_above` handshakes are in flight a peer whose address QUIC has not validated is
    /// sent a Retry first (a stateless round trip), so spoofed Initials cost the node no
    /// handshake state.
    pub async fn accept_until_drain<F, Fut>(
        &self,
        ep: &quinn::Endpoint,
        limits: AcceptLimits,
        serve: F,
    ) where
        F: Fn(quinn::Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        let peers = Arc::new(PeerCount::default());
        let handshaking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        loop {
            let incoming = tokio::select! {
                _ = self.drain.cancelled() => return,
                i = ep.accept() => match i { Some(i) => i, None => return },
            };
            use std::sync::atomic::Ordering::Relaxed;
            if !incoming.remote_address_validated()
                && incoming.may_retry()
                && handshaking.load(Relaxed) >= limits.retry_above
            {
                Metrics::inc(&self.metrics.quic_retries);
                let _ = incoming.retry();
                continue;
            }
            let Some(slot) = peers.enter(incoming.remote_address().ip(), limits) else {
                Metrics::inc(&self.metrics.peers_refused);
                incoming.refuse();
                continue;
            };
            let (serve, handshaking) = (serve.clone(), handshaking.clone());
            handshaking.fetch_add(1, Relaxed);
            tokio::spawn(async move {
                let conn = incoming.await;
                handshaking.fetch_sub(1, Relaxed);
                if let Ok(conn) = conn {
                    serve(conn).await;
                }
                drop(slot);
            });
        }
    }

    pub fn cell_size(&self) -> usize {
        self.directory.cell_size as usize
    }

    /// After drain began: waits until no cell has moved through this node for a second (its
    /// live traffic is done), or until shutdown.
    pub async fn wait_quiet(&self) {
        let mut last = Metrics::get(&self.metrics.cells_in);
        loop {
            if !sleep_or_shutdown(Duration::from_secs(1), &self.shutdown).await {
                return;
            }
            let now = Metrics::get(&self.metrics.cells_in);
            if now == last {
                return;
            }
            last = now;
        }
    }
}

/// The central's session settings: the reorder window is the smaller of the configured
/// cells and what fits in the per-session byte cap.
pub fn central_session_config(
    directory: &Directory,
    window_cells: u32,
    session_reorder_bytes: u64,
) -> braid_proto::session::SessionConfig {
    let cell = directory.cell_size as usize;
    let mut c = braid_proto::session::SessionConfig::with_cell_size(cell);
    let by_bytes = session_reorder_bytes / cell as u64;
    c.window_cells = u64::from(window_cells).min(by_bytes).max(1);
    // The session task hands stream bytes to their owners and reports consumption itself.
    c.manual_stream_credit = true;
    c
}

/// How many connections a listening node takes (`[node]` `max_connections`,
/// `max_connections_per_ip`, `retry_above_handshakes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub retry_above: usize,
}

/// Connections held, in all and by address.
#[derive(Default)]
struct PeerCount {
    by_ip: std::sync::Mutex<(usize, std::collections::HashMap<std::net::IpAddr, usize>)>,
}

/// A connection's place in the count, given back when it ends.
struct PeerSlot {
    count: Arc<PeerCount>,
    ip: std::net::IpAddr,
}

impl PeerCount {
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, limits: AcceptLimits) -> Option<PeerSlot> {
        let mut g = self.by_ip.lock().ok()?;
        let (total, by_ip) = &mut *g;
        let n = by_ip.entry(ip).or_default();
        if *total >= limits.max_connections || *n >= limits.max_per_ip {
            if *n == 0 {
                by_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        *total += 1;
        Some(PeerSlot {
            count: self.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        if let Ok(mut g) = self.count.by_ip.lock() {
            let (total, by_ip) = &mut *g;
            *total = total.saturating_sub(1);
            if let Some(n) = by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    by_ip.remove(&self.ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let count = Arc::new(PeerCount::default());
        let limits = AcceptLimits {
            max_connections: 3,
            max_per_ip: 2,
            retry_above: 0,
        };
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = (
            "127.0.0.1"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
            "127.0.0.2"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        );
        let a1 = count.enter(a, limits);
        let a2 = count.enter(a, limits);
        assert!(a1.is_some() && a2.is_some());
        assert!(count.enter(a, limits).is_none(), "per address");
        let b1 = count.enter(b, limits);
        assert!(b1.is_some());
        assert!(count.enter(b, limits).is_none(), "in all");
        drop(a1);
        assert!(count.enter(b, limits).is_some(), "a slot came back");
        drop((a2, b1));
    }
}
