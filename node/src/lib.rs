//! `braid-node`: every server role of Braid over shared QUIC transport code. Each role is a
//! module with a `run` function that takes a [`NodeContext`] and its parameters, binds,
//! serves until the context's shutdown token fires, and returns.

pub mod admin;
pub mod central;
pub mod downstream;
pub mod exit;
pub mod gateway;
pub mod metrics;
pub mod relay;
pub mod session_task;
pub mod tap;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use braid_config::{Directory, NodeEntry};
use braid_net::NodeIdentity;
use rand::Rng;
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;
pub use tap::{Tap, TapPoint};

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

/// Largest central → downstream envelope: relay id, mailbox, cell.
pub fn max_envelope(cell_size: usize) -> usize {
    braid_proto::envelope::max_envelope_len(cell_size)
}

/// Exponential backoff with jitter, as a tunnel client behind NAT reconnects.
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
    let Some(addr) = peer.addr else {
        tracing::warn!(peer = %peer.id, "peer has no address in the directory");
        return;
    };
    loop {
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

/// SIGTERM or Ctrl-C (what systemd, Docker and a terminal send to stop a process).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
