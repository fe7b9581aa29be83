//! The client's side of the overlay: links to every upstream (cells out, one stream per
//! central on each) and a mailbox at every relay (cells in), the outer session with one
//! central at a time, and stream ids.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use braid_config::{CentralChoice, Directory, NodeEntry, Role};
use braid_driver::session_task::{EndReason, SessionCmd, SessionRole, SessionTask};
use braid_driver::tap::Tap;
use braid_driver::{
    keep_dialing, publish_link, status_channel, Backoff, Link, Metrics, StatusPublisher,
    StatusReader,
};
use braid_net::{read_frame, write_frame};
use braid_proto::cell::{self, CellKind};
use braid_proto::envelope::{MailboxSecret, Registration, Route};
use braid_proto::frame::Mailbox;
use braid_proto::session::{PendingSession, Session, SessionConfig, SessionHello};
use rand::seq::IndexedRandom;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::first_hop::{present, Presenter, Refusals};
use crate::gateways::{ChoicePolicy, Gateway, Gateways};
use crate::resting::Resting;

#[derive(Clone)]
pub struct ClientParams {
    pub directory: Arc<Directory>,
    /// Gateway to use; any gateway in the directory when None.
    pub gateway: Option<String>,
    pub bind: SocketAddr,
    pub window_cells: u64,
    /// How cells are spread over the upstreams.
    pub scheduler: braid_proto::session::PathScheduler,
    /// How a session picks its central.
    pub central_choice: CentralChoice,
    pub tap: Option<Tap>,
    /// A keepalive goes out after this long with nothing in flight.
    pub keepalive: Duration,
    /// The central counts as gone after this long without an answer (then a new session
    /// is opened).
    pub peer_timeout: Duration,
    /// How long a new stream waits for a session while none is open.
    pub session_wait: Duration,
    /// A session is replaced after about this long (±10%); its streams resume on the next.
    pub session_lifetime: Duration,
    /// How long a stream whose carrier died keeps trying to resume.
    pub resume_grace: Duration,
    /// Sealed bytes a stream keeps until the gateway acknowledges them.
    pub resume_buffer: usize,
    /// Sealed bytes all streams together may keep for resending.
    pub resume_budget: usize,
    /// How streams' gateways are chosen, and how long an unreachable one rests.
    pub gateway_choice: ChoicePolicy,
    /// How long a central that went silent is skipped by new sessions.
    pub central_rest: Duration,
    /// Log lines name destinations (off: `[redacted]:PORT`).
    pub log_destinations: bool,
    /// The user's credential, presented at first hops when the directory has an operator
    /// key.
    pub credential: Option<Arc<Presenter>>,
    /// Joined upstreams (told of by the central) linked to at most.
    pub max_joined_upstreams: usize,
    /// Where streams go by destination (`[[route]]`).
    pub routes: Arc<crate::routing::Routes>,
    pub shutdown: CancellationToken,
}

/// What SOCKS connections use to reach the session.
#[derive(Clone)]
pub struct ClientHandle {
    pub cmd: mpsc::Sender<SessionCmd>,
    next_stream: Arc<AtomicU32>,
    /// The gateways streams may exit through, and what the central said of them.
    pub gateways: Arc<Gateways>,
    pub metrics: Arc<Metrics>,
    pub tap: Option<Tap>,
    /// The central of the open session; None while the next one is handshaken.
    session_central: watch::Receiver<Option<String>>,
    session_wait: Duration,
    /// How long a stream whose carrier died keeps trying to resume.
    pub resume_grace: Duration,
    /// Sealed bytes a stream keeps until the gateway acknowledges them.
    pub resume_buffer: usize,
    /// What all streams together may keep.
    pub resend_budget: Arc<braid_driver::pump::ResendBudget>,
    /// Asks the session task for a snapshot (the admin port, `braid status`).
    pub status: StatusReader,
    /// Log lines name destinations (off: `[redacted]:PORT`).
    pub log_destinations: bool,
    /// "upstream-1 refused: credential revoked" while every upstream refuses this user.
    refused: watch::Receiver<Option<String>>,
    /// Where streams go by destination (`[[route]]`).
    pub routes: Arc<crate::routing::Routes>,
}

impl ClientHandle {
    /// Why every upstream refuses this user, if they all do.
    pub fn refused(&self) -> Option<String> {
        self.refused.borrow().clone()
    }

    /// Waits until a session is open, at most `session_wait`; false if none opened.
    pub async fn wait_for_session(&self) -> bool {
        let mut up = self.session_central.clone();
        tokio::time::timeout(self.session_wait, up.wait_for(|c| c.is_some()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The central the open session runs through, if one is open.
    pub fn central(&self) -> Option<String> {
        self.session_central.borrow().clone()
    }

    /// How long a new stream waits for a session.
    pub fn session_wait(&self) -> Duration {
        self.session_wait
    }

    pub fn next_stream_id(&self) -> u32 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }
}

/// Connects to the overlay and opens the session; returns once the central has answered.
pub async fn connect(p: ClientParams) -> anyhow::Result<ClientHandle> {
    braid_driver::metrics::install_panic_counter_once();
    let dir = p.directory.clone();
    let cell_size = dir.cell_size as usize;
    let centrals: Vec<NodeEntry> = dir.centrals().cloned().collect();
    anyhow::ensure!(!centrals.is_empty(), "the directory names no central");
    // The gateways streams may exit through: the configured one, or every gateway.
    let gateways: Vec<Gateway> = match &p.gateway {
        Some(id) => vec![dir
            .by_id(id)
            .filter(|n| n.role == Role::Gateway)
            .with_context(|| format!("gateway {id} is not in the directory"))?],
        None => dir.nodes_with_role(Role::Gateway).collect(),
    }
    .into_iter()
    .map(|n| Gateway {
        id: n.id.clone(),
        noise_key: n.noise_key,
    })
    .collect();
    anyhow::ensure!(!gateways.is_empty(), "the directory names no gateway");
    let named: Vec<String> = dir
        .nodes_with_role(Role::Gateway)
        .map(|n| n.id.clone())
        .collect();
    for g in p.routes.gateway_ids() {
        anyhow::ensure!(
            named.iter().any(|n| n == g),
            "a routing rule sends streams to {g}, which is not a gateway in the directory"
        );
    }
    let ep = braid_net::client_endpoint(p.bind, None)?;
    let metrics = Arc::new(Metrics::default());
    // A network with an operator key wants a credential at every first hop; without one
    // the client presents nothing, and each says so.
    let presenter = dir.operator_key.map(|_| {
        p.credential
            .clone()
            .unwrap_or_else(|| Arc::new(Presenter::none()))
    });
    if presenter
        .as_ref()
        .is_some_and(|p| p.has_credential() && p.limits_pass().is_empty())
    {
        // The central of such a network answers no Hello without a pass.
        warn!("the credential file has no limits_pass, which this network's centrals want: renew the credential (braid-node user renew)");
    }
    let refusals = Refusals::new(dir.nodes_with_role(Role::Upstream).count());
    let node = "client".to_string();

    // Relay links first, so the central's Welcome has somewhere to land. Each session's
    // mailbox secrets come from `Opener::open`; the links register them.
    let (cells_tx, mut cells_rx) = mpsc::channel::<Vec<u8>>(4096);
    let (cmd_tx, cmd_rx) = mpsc::channel::<SessionCmd>(256);
    let live_boxes: Arc<Mutex<HashMap<String, Mailbox>>> = Arc::default();
    let secrets = Arc::new(watch::channel(MailboxSecrets::default()).0);
    let mut relays = Vec::new();
    for relay in dir.nodes_with_role(Role::Relay) {
        relays.push(relay.id.clone());
        tokio::spawn(relay_link(
            ep.clone(),
            relay.clone(),
            secrets.subscribe(),
            cells_tx.clone(),
            live_boxes.clone(),
            cmd_tx.clone(),
            cell_size,
            p.shutdown.clone(),
            metrics.clone(),
            (presenter.clone(), refusals.clone()),
        ));
    }
    // Upstream links publish themselves, once per central (a stream routed to it), in that
    // central's `links` while they are up.
    let routes: Vec<CentralRoute> = centrals
        .iter()
        .map(|c| {
            let route = Route { central: &c.id }.encode()?;
            Ok(CentralRoute {
                route,
                links: Arc::new(watch::channel(Vec::<Link>::new()).0),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let paths: Vec<CentralPaths> = centrals
        .into_iter()
        .zip(&routes)
        .map(|(entry, r)| CentralPaths {
            entry,
            links: r.links.subscribe(),
        })
        .collect();
    let routes = Arc::new(routes);
    for up in dir.nodes_with_role(Role::Upstream) {
        tokio::spawn(upstream_link(
            ep.clone(),
            up.clone(),
            routes.clone(),
            p.shutdown.clone(),
            p.tap.clone(),
            (presenter.clone(), refusals.clone()),
        ));
    }
    // Upstreams that join later: the sessions pass on their descriptors.
    let (members_tx, members_rx) = mpsc::channel::<Vec<u8>>(64);
    {
        let refusals_joined = refusals.clone();
        let (ep, routes, tap, first_hop) = (
            ep.clone(),
            routes.clone(),
            p.tap.clone(),
            (presenter.clone(), refusals.clone()),
        );
        tokio::spawn(crate::members::follow(
            crate::members::JoinedUpstreams::new(dir.clone(), p.max_joined_upstreams),
            members_rx,
            move |entry, stop| {
                tokio::spawn(upstream_link(
                    ep.clone(),
                    entry,
                    routes.clone(),
                    stop,
                    tap.clone(),
                    first_hop.clone(),
                ));
            },
            move |n| refusals_joined.set_joined_upstreams(n),
            p.shutdown.clone(),
        ));
    }

    let mut cfg = SessionConfig::with_cell_size(cell_size);
    cfg.window_cells = p.window_cells;
    cfg.scheduler = p.scheduler;
    // The session task hands stream bytes to their owners and reports consumption itself.
    cfg.manual_stream_credit = true;
    cfg.keepalive = Some(p.keepalive);
    cfg.peer_timeout = Some(p.peer_timeout);
    let opener = Opener {
        cfg,
        centrals: paths,
        choice: p.central_choice,
        down: Resting::new(p.central_rest),
        relays,
        secrets,
        live_boxes,
        limits_pass: presenter
            .as_ref()
            .map(|p| p.limits_pass().to_vec())
            .unwrap_or_default(),
    };
    // The first session must open within 30 s (the caller learns of a dead overlay at once),
    // and the caller learns at once when every upstream refuses the user.
    let mut refused = refusals.every_upstream();
    let session = tokio::select! {
        s = tokio::time::timeout(FIRST_SESSION_DEADLINE, opener.open(&mut cells_rx)) => s
            .map_err(|_| {
                anyhow::anyhow!(
                    "no answer from the central within {FIRST_SESSION_DEADLINE:?} (are the upstreams and relays up?)"
                )
            })??,
        Ok(line) = refused.wait_for(Option::is_some) => {
            anyhow::bail!("{}", line.clone().unwrap_or_default())
        }
    };
    let (up_tx, up_rx) = watch::channel(Some(opener.centrals[session.1].entry.id.clone()));
    let next_stream = Arc::new(AtomicU32::new(1));
    let (status, status_reader) = status_channel();
    let handle = ClientHandle {
        cmd: cmd_tx.clone(),
        next_stream: next_stream.clone(),
        gateways: Arc::new(Gateways::new(gateways, named, p.gateway_choice)),
        metrics: metrics.clone(),
        tap: p.tap.clone(),
        session_central: up_rx,
        session_wait: p.session_wait,
        resume_grace: p.resume_grace,
        resume_buffer: p.resume_buffer,
        resend_budget: Arc::new(braid_driver::pump::ResendBudget::new(p.resume_budget)),
        status: status_reader,
        log_destinations: p.log_destinations,
        refused: refusals.every_upstream(),
        routes: p.routes.clone(),
    };
    tokio::spawn(supervise(Supervisor {
        session_lifetime: p.session_lifetime,
        next_stream,
        opener,
        first: session,
        node,
        metrics,
        tap: p.tap,
        cells_rx,
        cmd_tx,
        cmd_rx,
        up: up_tx,
        status,
        pace: presenter.as_ref().and_then(|p| p.rate()),
        members: members_tx,
        shutdown: p.shutdown,
    }));
    Ok(handle)
}

/// After this many unanswered Hellos (250 + 500 + 1000 ms) the next go to another central.
const UNANSWERED_HELLOS: usize = 3;
/// How long the first session may take to open.
const FIRST_SESSION_DEADLINE: Duration = Duration::from_secs(30);
/// The longest wait between Hellos while the central does not answer.
const MAX_HELLO_GAP: Duration = Duration::from_secs(1);
/// Unanswered Hellos whose late Welcome is still taken.
const MAX_PENDING_HELLOS: usize = 8;

/// The proof-of-work effort of the `attempt`-th Hello: none at first, then more each time
/// (2^8 hashes, 2^12, 2^16, then 2^18: under 0.1 s of one core).
fn hello_effort(attempt: usize) -> u8 {
    match attempt {
        0 => 0,
        1 => 8,
        2 => 12,
        3 => 16,
        _ => 18,
    }
}

/// A central and the upstream links whose streams are routed to it.
struct CentralPaths {
    entry: NodeEntry,
    links: watch::Receiver<Vec<Link>>,
}

/// What an upstream link opens for each central: the route message and where to publish
/// the stream's link.
struct CentralRoute {
    route: Vec<u8>,
    links: Arc<watch::Sender<Vec<Link>>>,
}

/// The session's mailbox secret at each relay (by relay id).
type MailboxSecrets = Arc<HashMap<String, MailboxSecret>>;

/// What opening a session needs: the Hello's settings, the centrals and the links to each.
struct Opener {
    cfg: SessionConfig,
    centrals: Vec<CentralPaths>,
    choice: CentralChoice,
    /// Centrals that went silent, skipped for a while by the next sessions.
    down: Resting,
    /// Every relay's id, in directory order.
    relays: Vec<String>,
    /// The open (or opening) session's mailbox secrets; the relay links register them.
    secrets: Arc<watch::Sender<MailboxSecrets>>,
    /// The mailboxes of this session registered at a relay now (by relay id).
    live_boxes: Arc<Mutex<HashMap<String, Mailbox>>>,
    /// The user's limits pass, shown to each central in the Hello.
    limits_pass: Vec<u8>,
}

impl Opener {
    /// The centrals the next Hello goes to: one at random, or (`rtt`) all, among those not
    /// resting.
    fn targets(&self) -> Vec<usize> {
        let all: Vec<usize> = (0..self.centrals.len()).collect();
        let refs: Vec<&usize> = all.iter().collect();
        let healthy = self
            .down
            .prefer_healthy(&refs, |i| self.centrals[*i].entry.id.as_str());
        match self.choice {
            CentralChoice::Random => healthy
                .choose(&mut rand::rng())
                .map(|i| vec![**i])
                .unwrap_or_default(),
            CentralChoice::Rtt => healthy.into_iter().copied().collect(),
        }
    }

    /// Draws fresh mailbox secrets for a new session (so no relay's mailbox id outlives a
    /// session) and hands them to the relay links; the old mailboxes are withdrawn as the
    /// links register the new ones. Returns the new mailboxes, in relay order.
    fn fresh_mailboxes(&self) -> Vec<Mailbox> {
        let mut rng = rand::rng();
        let fresh: Vec<(String, MailboxSecret)> = self
            .relays
            .iter()
            .map(|r| (r.clone(), MailboxSecret::generate(&mut rng)))
            .collect();
        let boxes = fresh
            .iter()
            .map(|(relay, s)| Mailbox {
                relay: relay.clone(),
                id: s.address(),
            })
            .collect();
        // Under the live lock: a link cannot then mark an old secret live after this.
        let mut live = self
            .live_boxes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        live.clear();
        self.secrets
            .send_replace(Arc::new(fresh.into_iter().collect()));
        boxes
    }

    /// Handshakes a new session with a central: Hello out through an upstream (each try
    /// through the next one), Welcome back through a relay; tries again 250 ms, 500 ms, then
    /// every second until a central answers. A central that lets three Hellos go unanswered
    /// rests, so the next try goes to another. Returns the session and its central's index.
    async fn open(
        &self,
        cells_rx: &mut mpsc::Receiver<Vec<u8>>,
    ) -> anyhow::Result<(Session, usize)> {
        let hello = SessionHello {
            window_cells: self.cfg.window_cells as u32,
            mailboxes: self.fresh_mailboxes(),
            limits_pass: self.limits_pass.clone(),
        };
        // Every Hello is new (a central answers a Hello once; a copy is a replay), with more
        // proof of work each time it goes unanswered (a central under a flood serves the
        // most effort first). A late Welcome to an earlier Hello is still good.
        let mut pending: Vec<(usize, PendingSession)> = Vec::new();
        let mut targets = self.targets();
        let mut unanswered = 0usize;
        let mut attempt = 0usize;
        loop {
            // The relays must have our mailboxes before the Welcome can arrive.
            if self.live_boxes.lock().map(|b| b.is_empty()).unwrap_or(true) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            let mut sent = false;
            for &i in &targets {
                let links = self.centrals[i].links.borrow().clone();
                if links.is_empty() {
                    continue;
                }
                let (cfg, key, hello) = (
                    self.cfg.clone(),
                    self.centrals[i].entry.noise_key,
                    hello.clone(),
                );
                let effort = hello_effort(attempt);
                let p = tokio::task::spawn_blocking(move || {
                    PendingSession::start(
                        &mut rand::rng(),
                        cfg,
                        &key,
                        &hello,
                        braid_driver::unix_now(),
                        effort,
                    )
                })
                .await??;
                let link = &links[attempt % links.len()];
                let _ = link.tx.send(p.hello_cell().to_vec()).await;
                pending.push((i, p));
                if pending.len() > MAX_PENDING_HELLOS {
                    pending.remove(0);
                }
                sent = true;
            }
            if !sent {
                // No upstream link is up yet.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            attempt += 1;
            let gap = (Duration::from_millis(250) * (1 << attempt.min(3).saturating_sub(1)))
                .min(MAX_HELLO_GAP);
            let wait = tokio::time::sleep(gap);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    cell = cells_rx.recv() => {
                        let Some(cell) = cell else { bail!("client stopped") };
                        // A Welcome names no session: it opens the Hello it answers.
                        if cell::clear_kind(&cell) != Some(CellKind::WELCOME) {
                            continue;
                        }
                        let now = tokio::time::Instant::now().into_std();
                        let Some((at, session)) = pending
                            .iter()
                            .enumerate()
                            .find_map(|(at, (_, p))| p.finish(now, &cell).ok().map(|s| (at, s)))
                        else {
                            continue;
                        };
                        let (i, _) = pending.swap_remove(at);
                        let central = &self.centrals[i].entry.id;
                        self.down.clear(central);
                        info!(session = %session.id(), %central, "session open with a central");
                        return Ok((session, i));
                    }
                }
            }
            unanswered += 1;
            if unanswered >= UNANSWERED_HELLOS {
                for &i in &targets {
                    self.down.mark(&self.centrals[i].entry.id);
                }
                targets = self.targets();
                unanswered = 0;
            }
        }
    }
}

/// Runs the client's sessions one after another: when one ends (the central went silent or
/// restarted, the keys ran out), the next is handshaken on the same channels, so the
/// front ends' handle stays valid; its streams were reset, new ones wait for the next.
struct Supervisor {
    session_lifetime: Duration,
    /// The handle's stream counter.
    next_stream: Arc<AtomicU32>,
    opener: Opener,
    /// The first session and its central's index.
    first: (Session, usize),
    node: String,
    metrics: Arc<Metrics>,
    tap: Option<Tap>,
    cells_rx: mpsc::Receiver<Vec<u8>>,
    cmd_tx: mpsc::Sender<SessionCmd>,
    cmd_rx: mpsc::Receiver<SessionCmd>,
    /// The open session's central, for the front ends.
    up: watch::Sender<Option<String>>,
    /// Where the open session publishes its snapshots.
    status: StatusPublisher,
    /// The user's rate (bytes per second), which sessions keep to.
    pace: Option<f64>,
    /// Where the sessions pass on the descriptors of joined nodes.
    members: mpsc::Sender<Vec<u8>>,
    shutdown: CancellationToken,
}

async fn supervise(s: Supervisor) {
    let Supervisor {
        session_lifetime,
        next_stream,
        opener,
        first,
        node,
        metrics,
        tap,
        mut cells_rx,
        cmd_tx,
        mut cmd_rx,
        up,
        status,
        pace,
        members,
        shutdown,
    } = s;
    let (mut session, mut central) = first;
    loop {
        let central_id = opener.centrals[central].entry.id.clone();
        let _ = up.send(Some(central_id.clone()));
        // Tell the central which mailboxes are live now (some relay may have failed).
        let boxes: Vec<Mailbox> = opener
            .live_boxes
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        if !boxes.is_empty() {
            let _ = cmd_tx.try_send(SessionCmd::Mailboxes(boxes));
        }
        // Rotation: after its lifetime the session stops as at shutdown, and the next one
        // (new keys, labels, mailboxes) takes its streams, which resume.
        let rotate = shutdown.child_token();
        let lifetime = session_lifetime.mul_f64(rand::rng().random_range(0.9..1.1));
        let timer = {
            let rotate = rotate.clone();
            tokio::spawn(async move {
                tokio::time::sleep(lifetime).await;
                rotate.cancel();
            })
        };
        let ended = SessionTask {
            session,
            node: node.clone(),
            metrics: metrics.clone(),
            tap: tap.clone(),
            cells_rx,
            cmd_tx: cmd_tx.clone(),
            cmd_rx,
            links: opener.centrals[central].links.clone(),
            role: SessionRole::Client,
            // Streams numbered before this session belong to the ones before it.
            first_stream: next_stream.load(Ordering::Relaxed),
            // The client never gives up on a quiet session: keepalives keep it alive, and a
            // dead central is noticed by the peer timeout.
            idle_timeout: Duration::from_secs(365 * 24 * 3600),
            reassembly_timeout: Duration::from_secs(60),
            status: Some(status.clone()),
            pace: pace.map(|rate| {
                braid_proto::rate::TokenBucket::with_rate(
                    rate,
                    rate / 10.0,
                    std::time::Instant::now(),
                )
            }),
            members: Some(members.clone()),
            shutdown: rotate.clone(),
        }
        .run()
        .await;
        timer.abort();
        let _ = up.send(None);
        status.clear();
        (cells_rx, cmd_rx) = (ended.cells_rx, ended.cmd_rx);
        if shutdown.is_cancelled() {
            return;
        }
        if ended.reason == EndReason::Shutdown {
            if !rotate.is_cancelled() {
                return;
            }
            Metrics::inc(&metrics.sessions_rotated);
            info!(central = %central_id, lifetime_s = lifetime.as_secs(), "session rotated; opening the next");
        } else {
            // The next session prefers another central (this one rests unless all do).
            opener.down.mark(&central_id);
            warn!(reason = ?ended.reason, central = %central_id, "session lost; opening a new one");
        }
        (session, central) = loop {
            let opened = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = opener.open(&mut cells_rx) => s,
            };
            match opened {
                Ok(s) => break s,
                Err(e) => {
                    warn!(error = %e, "opening a session failed; trying again");
                    if !braid_driver::sleep_or_shutdown(MAX_HELLO_GAP, &shutdown).await {
                        return;
                    }
                }
            }
        };
    }
}

/// What a first-hop link presents (None on an open network), and where refusals go.
type FirstHop = (Option<Arc<Presenter>>, Arc<Refusals>);

/// Keeps a link to one upstream up; on each connection, one stream per central, each
/// routed to it and published in that central's links.
async fn upstream_link(
    ep: quinn::Endpoint,
    up: NodeEntry,
    routes: Arc<Vec<CentralRoute>>,
    shutdown: CancellationToken,
    tapper: Option<Tap>,
    (presenter, refusals): FirstHop,
) {
    let name = up.id.clone();
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    keep_dialing(ep, up, shutdown, backoff, |conn| {
        let routes = routes.clone();
        let name = name.clone();
        let tapper = tapper.clone();
        let (presenter, refusals) = (presenter.clone(), refusals.clone());
        async move {
            if let Some(p) = &presenter {
                if !present(&conn, &name, true, p, &refusals).await {
                    return;
                }
            }
            let mut streams = tokio::task::JoinSet::new();
            for i in 0..routes.len() {
                let (routes, name, conn, tapper) =
                    (routes.clone(), name.clone(), conn.clone(), tapper.clone());
                streams.spawn(async move {
                    let r = &routes[i];
                    publish_link(
                        &r.links,
                        &name,
                        &conn,
                        Some(&r.route),
                        256,
                        "client",
                        &tapper,
                    )
                    .await
                });
            }
            while streams.join_next().await.is_some() {}
        }
    })
    .await;
}

/// Keeps a link to one relay up; on each connection, registers the session's mailbox
/// secret there and hands its cells on. A new session's secret replaces the old one: the
/// new mailbox is registered, then the old stream ends, which withdraws it at the relay.
#[allow(clippy::too_many_arguments)]
async fn relay_link(
    ep: quinn::Endpoint,
    relay: NodeEntry,
    secrets: watch::Receiver<MailboxSecrets>,
    cells_tx: mpsc::Sender<Vec<u8>>,
    live: Arc<Mutex<HashMap<String, Mailbox>>>,
    cmd: mpsc::Sender<SessionCmd>,
    cell_size: usize,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    (presenter, refusals): FirstHop,
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
        let mut secrets = secrets.clone();
        let cells_tx = cells_tx.clone();
        let live = live.clone();
        let cmd = cmd.clone();
        let name = name.clone();
        let metrics = metrics.clone();
        let (presenter, refusals) = (presenter.clone(), refusals.clone());
        async move {
            if let Some(p) = &presenter {
                if !present(&conn, &name, false, p, &refusals).await {
                    return;
                }
            }
            // The previous session's mailbox stream, ended once the next one is registered.
            let mut old: Option<quinn::SendStream> = None;
            loop {
                let Some(secret) = secrets.borrow_and_update().get(&name).cloned() else {
                    // No session has drawn secrets yet.
                    if secrets.changed().await.is_err() {
                        return;
                    }
                    continue;
                };
                let Ok((mut send, mut recv)) = conn.open_bi().await else {
                    break;
                };
                let registration = Registration {
                    secret: secret.clone(),
                };
                if write_frame(&mut send, &registration.encode())
                    .await
                    .is_err()
                {
                    break;
                }
                if let Some(mut s) = old.take() {
                    let _ = s.finish();
                }
                let mailbox = Mailbox {
                    relay: name.clone(),
                    id: registration.address(),
                };
                {
                    let mut m = live
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    // A newer session may have drawn other secrets meanwhile.
                    if secrets.borrow().get(&name) == Some(&secret) {
                        m.insert(name.clone(), mailbox);
                    }
                }
                announce(&live, &cmd);
                debug!(relay = %name, "mailbox registered");
                let mut buf = Vec::with_capacity(cell_size);
                let next_session = loop {
                    tokio::select! {
                        r = read_frame(&mut recv, cell_size, &mut buf) => {
                            if !matches!(r, Ok(true)) {
                                break false;
                            }
                            Metrics::inc(&metrics.cells_in);
                            if cells_tx.send(std::mem::take(&mut buf)).await.is_err() {
                                return;
                            }
                        }
                        changed = secrets.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            break true;
                        }
                    }
                };
                if !next_session {
                    break;
                }
                old = Some(send);
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
