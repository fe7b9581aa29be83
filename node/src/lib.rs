//! `braid-node`: every server role of Braid over shared QUIC transport code. Each role is a
//! module with a `run` function that takes a [`NodeContext`] and its parameters, binds,
//! serves until the context's shutdown token fires, and returns.

pub mod admin;
pub mod admission;
pub mod central;
pub mod downstream;
pub mod exit;
pub mod fair_queue;
pub mod gateway;
pub mod health;
pub mod relay;
pub mod roles;
pub mod stall;
pub mod upstream;

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
            links.spawn(keep_dialing(
                ep.clone(),
                central,
                self.shutdown.clone(),
                backoff.clone(),
                move |conn| {
                    let up = LinkUpGuard::new(metrics.clone());
                    let served = serve(peer.clone(), conn);
                    async move {
                        let _up = up;
                        served.await
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
    ) {
        let Ok(mut send) = conn.open_uni().await else {
            return;
        };
        while let Some(msg) = queue.recv().await {
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
    /// and served by `serve` in its own task.
    pub async fn accept_until_drain<F, Fut>(&self, ep: &quinn::Endpoint, serve: F)
    where
        F: Fn(quinn::Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        loop {
            let incoming = tokio::select! {
                _ = self.drain.cancelled() => return,
                i = ep.accept() => match i { Some(i) => i, None => return },
            };
            let serve = serve.clone();
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    serve(conn).await;
                }
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
