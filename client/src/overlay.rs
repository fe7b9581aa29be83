//! The client's side of the overlay: links to every upstream (cells out) and a mailbox at
//! every relay (cells in), the outer session with the central, and stream ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use braid_config::{Directory, NodeEntry, Role};
use braid_driver::session_task::{SessionCmd, SessionRole, SessionTask};
use braid_driver::tap::Tap;
use braid_driver::{keep_dialing, publish_link, Backoff, Link, Metrics};
use braid_net::{read_frame, write_frame};
use braid_proto::cell::{CellHeader, CellKind};
use braid_proto::envelope::Registration;
use braid_proto::frame::Mailbox;
use braid_proto::session::{PendingSession, SessionConfig, SessionHello};
use rand::RngCore;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub struct ClientParams {
    pub directory: Arc<Directory>,
    /// Gateway to use; any gateway in the directory when None.
    pub gateway: Option<String>,
    pub bind: SocketAddr,
    pub window_cells: u64,
    /// How cells are spread over the upstreams.
    pub scheduler: braid_proto::session::PathScheduler,
    pub tap: Option<Tap>,
    pub shutdown: CancellationToken,
}

/// What SOCKS connections use to reach the session.
#[derive(Clone)]
pub struct ClientHandle {
    pub cmd: mpsc::Sender<SessionCmd>,
    next_stream: Arc<AtomicU32>,
    pub gateway_id: String,
    pub gateway_key: [u8; 32],
    pub metrics: Arc<Metrics>,
    pub tap: Option<Tap>,
}

impl ClientHandle {
    pub fn next_stream_id(&self) -> u32 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }
}

/// Connects to the overlay and opens the session; returns once the central has answered.
pub async fn connect(p: ClientParams) -> anyhow::Result<ClientHandle> {
    braid_driver::metrics::install_panic_counter_once();
    let dir = p.directory.clone();
    let cell_size = dir.cell_size as usize;
    let central = dir
        .central()
        .cloned()
        .context("the directory names no central")?;
    let gateway = match &p.gateway {
        Some(id) => dir
            .by_id(id)
            .filter(|n| n.role == Role::Gateway)
            .cloned()
            .with_context(|| format!("gateway {id} is not in the directory"))?,
        None => dir
            .nodes_with_role(Role::Gateway)
            .next()
            .cloned()
            .context("the directory names no gateway")?,
    };
    let ep = braid_net::client_endpoint(p.bind, None)?;
    let metrics = Arc::new(Metrics::default());
    let node = "client".to_string();

    // Mailboxes first, so the central's Welcome has somewhere to land.
    let (cells_tx, mut cells_rx) = mpsc::channel::<Vec<u8>>(4096);
    let (cmd_tx, cmd_rx) = mpsc::channel::<SessionCmd>(256);
    let live_boxes: Arc<Mutex<HashMap<String, Mailbox>>> = Arc::default();
    let mut boxes = Vec::new();
    for relay in dir.nodes_with_role(Role::Relay) {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let mailbox = Mailbox {
            relay: relay.id.clone(),
            id,
        };
        boxes.push(mailbox.clone());
        tokio::spawn(relay_link(
            ep.clone(),
            relay.clone(),
            mailbox,
            cells_tx.clone(),
            live_boxes.clone(),
            cmd_tx.clone(),
            cell_size,
            p.shutdown.clone(),
            metrics.clone(),
        ));
    }
    // Upstream links publish themselves in `links` while they are up.
    let (links_tx, links_rx) = watch::channel(Vec::<Link>::new());
    let links_tx = Arc::new(links_tx);
    for up in dir.nodes_with_role(Role::Upstream) {
        tokio::spawn(upstream_link(
            ep.clone(),
            up.clone(),
            links_tx.clone(),
            p.shutdown.clone(),
            p.tap.clone(),
        ));
    }

    // The session handshake: Hello out through an upstream, Welcome back through a relay.
    let mut cfg = SessionConfig::with_cell_size(cell_size);
    cfg.window_cells = p.window_cells;
    cfg.scheduler = p.scheduler;
    // The session task hands stream bytes to their owners and reports consumption itself.
    cfg.manual_stream_credit = true;
    let hello = SessionHello {
        window_cells: cfg.window_cells as u32,
        mailboxes: boxes,
    };
    let pending = PendingSession::start(&mut rand::rng(), cfg, &central.noise_key, &hello)?;
    let mut links_wait = links_rx.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut attempt = 0usize;
    let session = 'hs: loop {
        if tokio::time::Instant::now() > deadline {
            bail!("no answer from the central within 30 s (are the upstreams and relays up?)");
        }
        let links = links_wait.borrow_and_update().clone();
        if links.is_empty() {
            tokio::select! {
                _ = links_wait.changed() => continue,
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        }
        // The relays must also have our mailboxes before the Welcome can arrive.
        if live_boxes.lock().map(|b| b.is_empty()).unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let link = &links[attempt % links.len()];
        attempt += 1;
        let _ = link.tx.send(pending.hello_cell().to_vec()).await;
        // 250 ms, 500 ms, 1 s, then 2 s between Hellos.
        let wait = tokio::time::sleep(Duration::from_millis(
            250 << attempt.min(4).saturating_sub(1),
        ));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => continue 'hs,
                cell = cells_rx.recv() => {
                    let Some(cell) = cell else { bail!("client stopped") };
                    let Ok(h) = CellHeader::take_from(&cell) else { continue };
                    if h.kind == CellKind::WELCOME && h.session == pending.id() {
                        let now = tokio::time::Instant::now().into_std();
                        break 'hs pending.finish(now, &cell)?;
                    }
                }
            }
        }
    };
    info!(session = %session.id(), "session open with the central");
    // Tell the central which mailboxes are live now (some relay may have failed meanwhile).
    let task = SessionTask {
        session,
        node,
        metrics: metrics.clone(),
        tap: p.tap.clone(),
        cells_rx,
        cmd_tx: cmd_tx.clone(),
        cmd_rx,
        links: links_rx,
        role: SessionRole::Client,
        idle_timeout: Duration::from_secs(24 * 3600),
        reassembly_timeout: Duration::from_secs(60),
        shutdown: p.shutdown.clone(),
    };
    tokio::spawn(task.run());
    Ok(ClientHandle {
        cmd: cmd_tx,
        next_stream: Arc::new(AtomicU32::new(1)),
        gateway_id: gateway.id.clone(),
        gateway_key: gateway.noise_key,
        metrics,
        tap: p.tap,
    })
}

async fn upstream_link(
    ep: quinn::Endpoint,
    up: NodeEntry,
    links: Arc<watch::Sender<Vec<Link>>>,
    shutdown: CancellationToken,
    tapper: Option<Tap>,
) {
    let name = up.id.clone();
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    keep_dialing(ep, up, shutdown, backoff, |conn| {
        let links = links.clone();
        let name = name.clone();
        let tapper = tapper.clone();
        async move { publish_link(&links, &name, &conn, 256, "client", &tapper).await }
    })
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn relay_link(
    ep: quinn::Endpoint,
    relay: NodeEntry,
    mailbox: Mailbox,
    cells_tx: mpsc::Sender<Vec<u8>>,
    live: Arc<Mutex<HashMap<String, Mailbox>>>,
    cmd: mpsc::Sender<SessionCmd>,
    cell_size: usize,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let name = relay.id.clone();
    let announce = |live: &Arc<Mutex<HashMap<String, Mailbox>>>, cmd: &mpsc::Sender<SessionCmd>| {
        let boxes: Vec<Mailbox> = live
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        if !boxes.is_empty() {
            let _ = cmd.try_send(SessionCmd::Mailboxes(boxes));
        }
    };
    keep_dialing(ep, relay, shutdown, backoff, |conn| {
        let mailbox = mailbox.clone();
        let cells_tx = cells_tx.clone();
        let live = live.clone();
        let cmd = cmd.clone();
        let name = name.clone();
        let metrics = metrics.clone();
        async move {
            let Ok((mut send, mut recv)) = conn.open_bi().await else {
                return;
            };
            if write_frame(&mut send, &Registration::from(&mailbox).encode())
                .await
                .is_err()
            {
                return;
            }
            if let Ok(mut m) = live.lock() {
                m.insert(name.clone(), mailbox.clone());
            }
            announce(&live, &cmd);
            debug!(relay = %name, "mailbox registered");
            let mut buf = Vec::with_capacity(cell_size);
            while let Ok(true) = read_frame(&mut recv, cell_size, &mut buf).await {
                Metrics::inc(&metrics.cells_in);
                if cells_tx.send(std::mem::take(&mut buf)).await.is_err() {
                    break;
                }
            }
            warn!(relay = %name, "relay link lost");
            if let Ok(mut m) = live.lock() {
                m.remove(&name);
            }
            announce(&live, &cmd);
        }
    })
    .await;
}
