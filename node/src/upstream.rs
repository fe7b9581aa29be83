//! Upstream: takes sealed cells from clients and forwards them, unchanged, to the central.
//! It knows the client's address and nothing else: every cell is sealed to the central.

use std::net::SocketAddr;
use std::time::Duration;

use braid_net::{read_frame, ClientAuth, PinSet};
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
    let (cell_tx, cell_rx) = mpsc::channel::<Vec<u8>>(1024);
    let link = tokio::spawn(central_link(&ctx, ep.clone(), cell_rx)?);
    let c = ctx.clone();
    ctx.accept_until_drain(&ep, move |conn| {
        let (ctx, cell_tx) = (c.clone(), cell_tx.clone());
        async move {
            if let Some(k) = braid_net::peer_tls_key(&conn) {
                // A node with a certificate has no business here unless it is listed.
                if ctx.directory.by_tls_key(&k).is_none() {
                    Metrics::inc(&ctx.metrics.peers_refused);
                    conn.close(1u32.into(), b"unknown key");
                    return;
                }
            }
            serve_client(ctx, conn, cell_tx).await;
        }
    })
    .await;
    // Draining: no new clients; live ones keep forwarding until traffic stops.
    ctx.wait_quiet().await;
    ep.close(0u32.into(), b"shutdown");
    link.abort();
    Ok(())
}

async fn serve_client(ctx: NodeContext, conn: quinn::Connection, cell_tx: mpsc::Sender<Vec<u8>>) {
    let cell_size = ctx.cell_size();
    loop {
        let mut recv = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            s = conn.accept_uni() => match s { Ok(s) => s, Err(_) => return },
        };
        let ctx = ctx.clone();
        let cell_tx = cell_tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(cell_size);
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

/// Forwards the clients' cells to the central, redialing it while the node runs.
fn central_link(
    ctx: &NodeContext,
    ep: quinn::Endpoint,
    cell_rx: mpsc::Receiver<Vec<u8>>,
) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(cell_rx));
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let c = ctx.clone();
    ctx.central_link(ep, backoff, move |conn| {
        let rx = rx.clone();
        let ctx = c.clone();
        async move {
            let mut rx = rx.lock().await;
            ctx.forward_queue(&conn, &mut rx).await;
        }
    })
}
