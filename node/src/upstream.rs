//! Upstream: takes sealed cells from clients and forwards them, unchanged, to the central
//! each client stream is routed to (its first message names it). It knows the client's
//! address and which central it uses, nothing else: every cell is sealed to that central.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use braid_net::{read_frame, ClientAuth, PinSet};
use braid_proto::envelope::Route;
use tokio::sync::mpsc;
use tracing::info;

use braid_driver::metrics::Metrics;
use braid_driver::tap::{tap, TapPoint};
use braid_driver::Backoff;

use crate::NodeContext;

pub async fn run(ctx: NodeContext, listen: SocketAddr) -> anyhow::Result<()> {
    // Clients have no certificate; nodes never dial an upstream, so no pins are needed.
    let ep =
        braid_net::server_endpoint(listen, &ctx.identity, PinSet::new(), ClientAuth::Optional)?;
    info!(node = %ctx.id, %listen, "upstream listening");
    // One queue per central, drained by the link to it.
    let mut queues = HashMap::new();
    let mut receivers = HashMap::new();
    for central in ctx.directory.centrals() {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(1024);
        queues.insert(central.id.clone(), tx);
        receivers.insert(central.id.clone(), Arc::new(tokio::sync::Mutex::new(rx)));
    }
    let queues = Arc::new(queues);
    let link = tokio::spawn(central_links(&ctx, ep.clone(), receivers)?);
    let c = ctx.clone();
    ctx.accept_until_drain(&ep, move |conn| {
        let (ctx, queues) = (c.clone(), queues.clone());
        async move {
            if let Some(k) = braid_net::peer_tls_key(&conn) {
                // A node with a certificate has no business here unless it is listed.
                if ctx.directory.by_tls_key(&k).is_none() {
                    Metrics::inc(&ctx.metrics.peers_refused);
                    conn.close(1u32.into(), b"unknown key");
                    return;
                }
            }
            serve_client(ctx, conn, queues).await;
        }
    })
    .await;
    // Draining: no new clients; live ones keep forwarding until traffic stops.
    ctx.wait_quiet().await;
    ep.close(0u32.into(), b"shutdown");
    link.abort();
    Ok(())
}

type CentralQueues = Arc<HashMap<String, mpsc::Sender<Vec<u8>>>>;

async fn serve_client(ctx: NodeContext, conn: quinn::Connection, queues: CentralQueues) {
    let cell_size = ctx.cell_size();
    loop {
        let mut recv = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            s = conn.accept_uni() => match s { Ok(s) => s, Err(_) => return },
        };
        let ctx = ctx.clone();
        let queues = queues.clone();
        tokio::spawn(async move {
            // The stream's first message routes its cells to one central.
            let mut buf = Vec::with_capacity(cell_size);
            let cell_tx = match read_frame(&mut recv, Route::MAX_LEN, &mut buf).await {
                Ok(true) => match Route::parse(&buf).ok().and_then(|r| queues.get(r.central)) {
                    Some(tx) => tx.clone(),
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
                        Metrics::inc(&ctx.metrics.cells_in);
                        tap(&ctx.tap, &ctx.id, TapPoint::Received, &buf);
                        if cell_tx.send(std::mem::take(&mut buf)).await.is_err() {
                            return;
                        }
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
    receivers: HashMap<String, Arc<tokio::sync::Mutex<mpsc::Receiver<Vec<u8>>>>>,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let receivers = Arc::new(receivers);
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let c = ctx.clone();
    ctx.central_links(ep, backoff, move |central, conn| {
        let rx = receivers.get(&central.id).cloned();
        let ctx = c.clone();
        async move {
            let Some(rx) = rx else { return };
            let mut rx = rx.lock().await;
            ctx.forward_queue(&conn, &mut rx).await;
        }
    })
}
