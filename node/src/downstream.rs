//! Downstream: takes response cells from the central and hands each to the relay its
//! envelope names, under the mailbox address rewritten for that link. It sees neither the
//! client's address nor anything inside the cells.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use braid_config::{NodeEntry, Role};
use braid_net::read_frame;
use braid_proto::envelope::{max_envelope_len, Envelope, HopKey, HOP_KEY_LABEL};
use tokio::sync::{mpsc, Mutex};
use tracing::info;

use braid_driver::metrics::Metrics;
use braid_driver::tap::{tap, TapPoint};
use braid_driver::{keep_dialing, Backoff};

use crate::NodeContext;

pub async fn run(ctx: NodeContext, bind: SocketAddr) -> anyhow::Result<()> {
    let ep = braid_net::client_endpoint(bind, Some(&ctx.identity))?;
    info!(node = %ctx.id, "downstream starting");

    // One queue per relay; each relay link drains its queue (dropping while it is down, so a
    // dead relay never blocks the others: the end-to-end layer resends those cells).
    let mut relays: HashMap<String, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut tasks = Vec::new();
    for relay in ctx.directory.nodes_with_role(Role::Relay) {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4096);
        relays.insert(relay.id.clone(), tx);
        tasks.push(tokio::spawn(relay_link(
            ctx.clone(),
            ep.clone(),
            relay.clone(),
            rx,
        )));
    }
    let relays = Arc::new(relays);
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let c = ctx.clone();
    // Every central's cells go to the same relay queues.
    let link = ctx.central_links(ep.clone(), backoff, move |_central, conn| {
        from_central(c.clone(), conn, relays.clone())
    })?;
    // Draining: keep forwarding until the central stops sending, then go.
    tokio::select! {
        _ = link => {}
        _ = async { ctx.drain.cancelled().await; ctx.wait_quiet().await } => {}
    }
    for t in tasks {
        t.abort();
    }
    ep.close(0u32.into(), b"shutdown");
    Ok(())
}

async fn from_central(
    ctx: NodeContext,
    conn: quinn::Connection,
    relays: Arc<HashMap<String, mpsc::Sender<Vec<u8>>>>,
) {
    let max = max_envelope_len(ctx.cell_size());
    while let Ok(mut recv) = conn.accept_uni().await {
        let ctx = ctx.clone();
        let relays = relays.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Ok(true) = read_frame(&mut recv, max, &mut buf).await {
                Metrics::inc(&ctx.metrics.cells_in);
                tap(&ctx.tap, &ctx.id, TapPoint::Received, &buf);
                let Ok(env) = Envelope::parse(&buf, ctx.cell_size()) else {
                    Metrics::inc(&ctx.metrics.cells_dropped);
                    continue;
                };
                let Some(tx) = relays.get(env.relay) else {
                    Metrics::inc(&ctx.metrics.cells_dropped);
                    continue;
                };
                // Never wait on one relay: a hung relay must not stall the others. A cell
                // dropped here is resent end to end over another path.
                if tx.try_send(env.delivery().to_vec()).is_err() {
                    Metrics::inc(&ctx.metrics.cells_dropped);
                }
            }
        });
    }
}

async fn relay_link(
    ctx: NodeContext,
    ep: quinn::Endpoint,
    relay: NodeEntry,
    rx: mpsc::Receiver<Vec<u8>>,
) {
    let rx = Arc::new(Mutex::new(rx));
    // While the link is down, drain and drop so the central's sender never stalls.
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(true));
    {
        let rx = rx.clone();
        let draining = draining.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if ctx.shutdown.is_cancelled() {
                    return;
                }
                if draining.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(mut rx) = rx.try_lock() {
                        while rx.try_recv().is_ok() {
                            Metrics::inc(&ctx.metrics.cells_dropped);
                        }
                    }
                }
            }
        });
    }
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let shutdown = ctx.shutdown.clone();
    let relay_id = relay.id.clone();
    keep_dialing(ep, relay, shutdown, backoff, |conn| {
        let rx = rx.clone();
        let ctx = ctx.clone();
        let draining = draining.clone();
        let relay_id = relay_id.clone();
        async move {
            if let Some(j) = ctx.joiner.clone() {
                // A joined downstream shows the relay its descriptor first.
                if let Err(e) = j.register(&conn, false).await {
                    tracing::error!(relay = %relay_id, error = %e, "joining failed");
                    return;
                }
                let (conn, drain) = (conn.clone(), ctx.drain.clone());
                tokio::spawn(async move { j.keep_registered(&conn, &drain).await });
            }
            // Mailbox addresses are rewritten for this link: the relay never sees the
            // address the central wrote (`envelope::hop_address`).
            let Some(key) = braid_net::link_key(&conn, HOP_KEY_LABEL) else {
                return;
            };
            let key = HopKey::new(&key);
            let mut rx = rx.lock().await;
            draining.store(false, std::sync::atomic::Ordering::Relaxed);
            ctx.forward_queue(&conn, &mut rx, |d| key.rewrite_delivery(d))
                .await;
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .await;
}
