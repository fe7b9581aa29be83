//! Relay: a Poisson mix in front of clients' mailboxes. Downstreams push cells addressed to
//! a mailbox; each waits an exponentially distributed delay in the pool, then goes to the
//! client that registered the mailbox. The relay knows the client's address, never what
//! the cells hold or where the streams go.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_config::Role;
use braid_net::{read_frame, write_frame, ClientAuth, PinSet};
use braid_proto::envelope::{delivery_len, Delivery, Registration};
use braid_proto::frame::MailboxId;
use braid_proto::mix::MixPool;
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::NodeContext;
use braid_driver::metrics::Metrics;
use braid_driver::tap::{tap, TapPoint};

pub struct RelayParams {
    pub listen: SocketAddr,
    pub mix_delay: Duration,
    /// Cells the mixing pool holds at most; beyond that, new cells are dropped.
    pub pool_cells: usize,
}

type Mailboxes = Arc<Mutex<HashMap<MailboxId, mpsc::Sender<Vec<u8>>>>>;

pub async fn run(ctx: NodeContext, p: RelayParams) -> anyhow::Result<()> {
    let pins: PinSet = ctx
        .directory
        .nodes_with_role(Role::Downstream)
        .map(|n| n.tls_key)
        .collect();
    let ep = braid_net::server_endpoint(p.listen, &ctx.identity, pins, ClientAuth::Optional)?;
    info!(node = %ctx.id, listen = %p.listen, mix_ms = p.mix_delay.as_secs_f64() * 1e3, "relay listening");
    let mailboxes: Mailboxes = Arc::default();
    let (mix_tx, mix_rx) = mpsc::channel::<(MailboxId, Vec<u8>)>(4096);
    let mixer = tokio::spawn(mix(
        ctx.clone(),
        mix_rx,
        mailboxes.clone(),
        p.mix_delay,
        p.pool_cells,
    ));

    let c = ctx.clone();
    ctx.accept_until_drain(&ep, move |conn| {
        let (ctx, mix_tx, mailboxes) = (c.clone(), mix_tx.clone(), mailboxes.clone());
        async move {
            match braid_net::peer_tls_key(&conn) {
                // The TLS verifier admitted only downstream keys.
                Some(_) => from_downstream(ctx, conn, mix_tx).await,
                None => serve_client(ctx, conn, mailboxes).await,
            }
        }
    })
    .await;
    ctx.wait_quiet().await;
    mixer.abort();
    ep.close(0u32.into(), b"shutdown");
    Ok(())
}

async fn from_downstream(
    ctx: NodeContext,
    conn: quinn::Connection,
    mix_tx: mpsc::Sender<(MailboxId, Vec<u8>)>,
) {
    let cell_size = ctx.cell_size();
    while let Ok(mut recv) = conn.accept_uni().await {
        let ctx = ctx.clone();
        let mix_tx = mix_tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Ok(true) = read_frame(&mut recv, delivery_len(cell_size), &mut buf).await {
                Metrics::inc(&ctx.metrics.cells_in);
                tap(&ctx.tap, &ctx.id, TapPoint::Received, &buf);
                let Ok(d) = Delivery::parse(&buf, cell_size) else {
                    Metrics::inc(&ctx.metrics.cells_dropped);
                    continue;
                };
                if mix_tx.send((d.mailbox, d.cell.to_vec())).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn mix(
    ctx: NodeContext,
    mut rx: mpsc::Receiver<(MailboxId, Vec<u8>)>,
    mailboxes: Mailboxes,
    mean: Duration,
    pool_cells: usize,
) {
    let mut pool = MixPool::new(mean, pool_cells);
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::from_os_rng();
    loop {
        let now = tokio::time::Instant::now().into_std();
        while let Some((mailbox, cell)) = pool.poll_release(now) {
            let tx = mailboxes.lock().ok().and_then(|m| m.get(&mailbox).cloned());
            match tx {
                Some(tx) if tx.try_send(cell).is_ok() => Metrics::inc(&ctx.metrics.cells_out),
                _ => Metrics::inc(&ctx.metrics.cells_dropped),
            }
        }
        let wake = pool.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { return };
                let now = tokio::time::Instant::now().into_std();
                if !pool.push(now, &mut rng, item) {
                    Metrics::inc(&ctx.metrics.cells_dropped);
                }
            }
            _ = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
}

/// A client registers a mailbox on a bidirectional stream and reads its cells from it.
async fn serve_client(ctx: NodeContext, conn: quinn::Connection, mailboxes: Mailboxes) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        let ctx = ctx.clone();
        let mailboxes = mailboxes.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let Ok(true) = read_frame(&mut recv, Registration::LEN, &mut buf).await else {
                return;
            };
            let Ok(Registration { mailbox }) = Registration::parse(&buf) else {
                return;
            };
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2048);
            if let Ok(mut m) = mailboxes.lock() {
                // The newest registration wins: a client that reconnects takes its mailbox back.
                m.insert(mailbox, tx.clone());
            }
            debug!(node = %ctx.id, "mailbox registered");
            loop {
                tokio::select! {
                    cell = rx.recv() => {
                        let Some(cell) = cell else { break };
                        if write_frame(&mut send, &cell).await.is_err() {
                            break;
                        }
                        tap(&ctx.tap, &ctx.id, TapPoint::Sent, &cell);
                    }
                    _ = conn.closed() => break,
                }
            }
            if let Ok(mut m) = mailboxes.lock() {
                // Only withdraw our own registration, not a newer one for the same mailbox.
                if m.get(&mailbox).is_some_and(|t| t.same_channel(&tx)) {
                    m.remove(&mailbox);
                }
            }
        });
    }
}
