//! Upstream: takes sealed cells from clients and forwards them, unchanged, to the central
//! each client stream is routed to (its first message names it). It knows the client's
//! address and which central it uses, nothing else: every cell is sealed to that central.
//! Clients share each central's queue fairly ([`FairQueue`]): one that floods holds back
//! only itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use braid_net::{read_frame, ClientAuth, PinSet};
use braid_proto::envelope::Route;
use tracing::info;

use braid_driver::metrics::Metrics;
use braid_driver::tap::{tap, TapPoint};
use braid_driver::Backoff;

use crate::fair_queue::{ClientSlot, FairQueue};
use crate::users::{close_refused, Allowance, FirstHop, FirstHopAuth, SourceFilter};
use crate::NodeContext;

pub struct UpstreamParams {
    /// The credential check, when the directory has an operator key.
    pub auth: Option<Arc<FirstHopAuth>>,
    /// Which client sources it serves.
    pub sources: SourceFilter,
    pub listen: SocketAddr,
    /// How many client connections it takes.
    pub accept: crate::AcceptLimits,
    /// Cells one client may have queued toward one central.
    pub client_queue_cells: usize,
    /// Cells queued toward one central over all clients.
    pub central_queue_cells: usize,
}

pub async fn run(ctx: NodeContext, params: UpstreamParams) -> anyhow::Result<()> {
    let listen = params.listen;
    // Clients have no certificate; nodes never dial an upstream, so no pins are needed.
    let ep =
        braid_net::server_endpoint(listen, &ctx.identity, PinSet::new(), ClientAuth::Optional)?;
    info!(node = %ctx.id, %listen, "upstream listening");
    // One fair queue per central, drained by the link to it.
    let queues: CentralQueues = Arc::new(
        ctx.directory
            .centrals()
            .map(|c| {
                let q = FairQueue::new(params.client_queue_cells, params.central_queue_cells);
                (c.id.clone(), Arc::new(q))
            })
            .collect(),
    );
    let link = tokio::spawn(central_links(&ctx, ep.clone(), queues.clone())?);

    let c = ctx.clone();
    let gate = FirstHop::new(&ctx, params.auth.clone(), params.sources.clone());
    ctx.accept_until_drain(&ep, params.accept, move |conn| {
        let (ctx, queues, gate) = (c.clone(), queues.clone(), gate.clone());
        async move {
            if let Some(k) = braid_net::peer_tls_key(&conn) {
                // A node with a certificate has no business here unless it is listed.
                if ctx.directory.by_tls_key(&k).is_none() {
                    Metrics::inc(&ctx.metrics.peers_refused);
                    conn.close(1u32.into(), b"unknown key");
                    return;
                }
            }
            let (c, conn2) = (ctx.clone(), conn.clone());
            gate.serve(&ctx, &conn, move |allowance| {
                serve_client(c, conn2, queues, allowance)
            })
            .await;
        }
    })
    .await;
    // Draining: no new clients; live ones keep forwarding until traffic stops.
    ctx.wait_quiet().await;
    ep.close(0u32.into(), b"shutdown");
    link.abort();
    Ok(())
}

type CentralQueues = Arc<HashMap<String, Arc<FairQueue>>>;

async fn serve_client(
    ctx: NodeContext,
    conn: quinn::Connection,
    queues: CentralQueues,
    allowance: Option<Arc<Allowance>>,
) {
    let cell_size = ctx.cell_size();
    // All of this connection's streams share its place in each central's queue.
    let client = ClientSlot::new(conn.stable_id() as u64);
    loop {
        let mut recv = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            s = conn.accept_uni() => match s { Ok(s) => s, Err(_) => return },
        };
        let ctx = ctx.clone();
        let queues = queues.clone();
        let client = client.clone();
        let (allowance, conn) = (allowance.clone(), conn.clone());
        tokio::spawn(async move {
            // The stream's first message routes its cells to one central.
            let mut buf = Vec::with_capacity(cell_size);
            let queue = match read_frame(&mut recv, Route::MAX_LEN, &mut buf).await {
                Ok(true) => match Route::parse(&buf).ok().and_then(|r| queues.get(r.central)) {
                    Some(q) => q.clone(),
                    None => {
                        Metrics::inc(&ctx.metrics.cells_dropped);
                        let _ = recv.stop(1u32.into());
                        return;
                    }
                },
                Ok(false) | Err(_) => return,
            };
            loop {
                match read_frame(&mut recv, cell_size, &mut buf).await {
                    Ok(true) if buf.len() == cell_size => {
                        // The user's share of its rate here holds back the reading, so the
                        // client's QUIC flow control slows it down; nothing is dropped.
                        if let Some(a) = &allowance {
                            if let Err(r) = a.spend(cell_size).await {
                                Metrics::inc(&ctx.metrics.users_over_quota);
                                close_refused(&conn, r);
                                return;
                            }
                        }
                        Metrics::inc(&ctx.metrics.cells_in);
                        tap(&ctx.tap, &ctx.id, TapPoint::Received, &buf);
                        // Waits while this client's share of the queue is full.
                        queue.push(&client, std::mem::take(&mut buf)).await;
                    }
                    Ok(true) => Metrics::inc(&ctx.metrics.cells_dropped),
                    Ok(false) | Err(_) => return,
                }
            }
        });
    }
}

/// Forwards the clients' cells to their centrals, redialing each while the node runs.
fn central_links(
    ctx: &NodeContext,
    ep: quinn::Endpoint,
    queues: CentralQueues,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let c = ctx.clone();
    ctx.central_links(ep, backoff, move |central, conn| {
        let queue = queues.get(&central.id).cloned();
        let ctx = c.clone();
        async move {
            if let Some(queue) = queue {
                forward(&ctx, &conn, &queue).await;
            }
        }
    })
}

/// Writes the queue's cells, clients in turn, on one stream to the central until the
/// link fails (the cell being written then is lost, as a link loss loses cells).
async fn forward(ctx: &NodeContext, conn: &quinn::Connection, queue: &FairQueue) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    loop {
        let msg = tokio::select! {
            m = queue.pop() => m,
            _ = conn.closed() => return,
        };
        if braid_net::write_frame(&mut send, &msg).await.is_err() {
            tracing::debug!(node = %ctx.id, "link lost; message dropped");
            Metrics::inc(&ctx.metrics.cells_dropped);
            return;
        }
        tap(&ctx.tap, &ctx.id, TapPoint::Sent, &msg);
        Metrics::inc(&ctx.metrics.cells_out);
    }
}
