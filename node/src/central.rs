//! Central: opens every client session's outer seal, puts the cells of each session back in
//! order, and moves the still-sealed inner stream bytes to and from the gateway, one QUIC
//! stream per proxied stream. Responses are cut into cells again and spread over
//! (downstream, relay mailbox) paths. The central never sees a client address (cells come
//! through upstreams) nor a destination or payload (the inner layer is sealed to the
//! gateway).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_config::Role;
use braid_net::{read_frame, ClientAuth, PinSet};
use braid_proto::cell::{self, CellKind, SessionId};
use braid_proto::noise::StaticKeypair;
use braid_proto::session::{self, SessionConfig};
use braid_proto::Reason;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::members::Members;
use crate::NodeContext;
use braid_driver::metrics::{LinkUpGuard, Metrics};
use braid_driver::session_task::{
    CentralSession, RelayFilter, SendBudget, SessionCmd, SessionGauge, SessionRole, SessionTask,
    StreamEvent, StreamLimits,
};
use braid_proto::rate::TokenBucket;

use crate::admission::{HelloQueues, Queued, QueuedHello};
use crate::stall::StallBudget;
use braid_driver::stream::{StreamError, StreamReceiver, StreamSender};
use braid_driver::tap::{tap, TapPoint};
use braid_driver::{publish_link, Link};
use braid_proto::replay::ReplayCache;
use braid_proto::session::HelloClock;

pub struct CentralParams {
    pub listen: SocketAddr,
    /// Joined nodes held at once.
    pub max_joined: usize,
    pub session: SessionConfig,
    /// A session with no cell from its client for this long is closed.
    pub idle_timeout: Duration,
    /// A session whose out-of-order cells wait this long for a missing one is closed.
    pub reassembly_timeout: Duration,
    /// Out-of-order bytes held across all sessions; above it the sessions stalled longest
    /// are evicted first.
    pub global_reorder_bytes: usize,
    pub max_sessions: usize,
    /// Streams one session may hold open, and opens per second (with bursts).
    pub max_streams_per_session: usize,
    pub stream_open_rate: u32,
    pub stream_open_burst: u32,
    /// Tuning of the gateway links (accepted by this endpoint): each stream's window, and a
    /// connection window covering them all.
    pub gateway_link: braid_net::LinkTuning,
    /// Stalled streams one session, and all sessions, may hold at once.
    pub session_stalled_streams: usize,
    pub global_stalled_streams: usize,
    pub admission: AdmissionParams,
    /// What all sessions keep for sending (queued stream bytes, cells in flight), together.
    pub global_send_bytes: usize,
    /// How often a client's mailbox set may change.
    pub mailbox_change_interval: Duration,
}

/// How Hellos are admitted.
#[derive(Debug, Clone)]
pub struct AdmissionParams {
    /// Hellos waiting per upstream link.
    pub queue_per_link: usize,
    /// Tasks doing handshakes.
    pub workers: usize,
    /// How far a Hello's time may be from the central's.
    pub hello_window: Duration,
    /// Hello ids remembered per generation (two generations of twice the window).
    pub replay_cache: usize,
    /// Sessions answered but not yet confirmed by a sealed cell from the client; over it,
    /// the oldest are dropped.
    pub max_half_open: usize,
    /// A session not confirmed within this is dropped.
    pub half_open_timeout: Duration,
}

impl Default for AdmissionParams {
    fn default() -> Self {
        AdmissionParams {
            queue_per_link: 256,
            workers: 1,
            hello_window: Duration::from_secs(120),
            replay_cache: 1 << 18,
            max_half_open: 4096,
            half_open_timeout: Duration::from_secs(5),
        }
    }
}

/// A session answered and not yet confirmed, in order of answer.
struct HalfOpen {
    id: SessionId,
    since: std::time::Instant,
    gauge: Arc<SessionGauge>,
    stop: tokio_util::sync::CancellationToken,
}

struct SessionEntry {
    cells: mpsc::Sender<Vec<u8>>,
    gauge: Arc<SessionGauge>,
    stop: tokio_util::sync::CancellationToken,
}

struct Shared {
    ctx: NodeContext,
    noise: StaticKeypair,
    params: CentralParams,
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    /// Which session each path label belongs to (no cell carries a session id).
    labels: Mutex<session::LabelTable>,
    downstreams: watch::Sender<Vec<Link>>,
    gateways: Mutex<HashMap<String, quinn::Connection>>,
    /// What stalled gateway streams hold over all sessions.
    stalled: Arc<StallBudget>,
    hellos: Mutex<HelloQueues>,
    hello_ready: tokio::sync::Notify,
    replay: Mutex<ReplayCache>,
    half_open: Mutex<std::collections::VecDeque<HalfOpen>>,
    send_budget: Arc<SendBudget>,
    known_relay: RelayFilter,
    members: Arc<Members>,
}

pub async fn run(ctx: NodeContext, params: CentralParams) -> anyhow::Result<()> {
    let pins: PinSet = ctx
        .directory
        .nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Upstream | Role::Downstream | Role::Gateway))
        .map(|n| n.tls_key)
        .collect();
    let members = Members::new(
        ctx.directory.clone(),
        pins.clone(),
        params.max_joined,
        &[Role::Upstream, Role::Downstream, Role::Gateway],
        ctx.shutdown.clone(),
    );
    // Peers of the central open unidirectional streams (cells), and joining nodes one
    // bidirectional stream at a time (registrations); the gateway streams are opened by
    // the central, and the tuning sizes their windows.
    let mut tuning = params.gateway_link;
    let auth = if members.joinable() {
        tuning.max_bidi_streams = tuning.max_bidi_streams.max(1);
        ClientAuth::Joinable
    } else {
        ClientAuth::Required
    };
    let ep = braid_net::server_endpoint_with(params.listen, &ctx.identity, pins, auth, tuning)?;
    info!(node = %ctx.id, listen = %params.listen, "central listening");
    let dir = ctx.directory.clone();
    let known_relay: RelayFilter =
        Arc::new(move |id| dir.by_id(id).is_some_and(|n| n.role == Role::Relay));
    let shared = Arc::new(Shared {
        send_budget: Arc::new(SendBudget::new(params.global_send_bytes)),
        known_relay,
        noise: StaticKeypair::from_secret(ctx.identity.noise_secret()),
        ctx: ctx.clone(),
        sessions: Mutex::default(),
        labels: Mutex::default(),
        downstreams: watch::channel(Vec::new()).0,
        gateways: Mutex::default(),
        stalled: StallBudget::new(params.global_stalled_streams),
        hellos: Mutex::new(HelloQueues::new(params.admission.queue_per_link)),
        hello_ready: tokio::sync::Notify::new(),
        replay: Mutex::new(ReplayCache::new(
            params.admission.hello_window.as_secs(),
            params.admission.replay_cache,
            braid_driver::unix_now(),
        )),
        half_open: Mutex::default(),
        params,
        members,
    });

    tokio::spawn(evict_over_cap(shared.clone()));
    for _ in 0..shared.params.admission.workers.max(1) {
        tokio::spawn(admit(shared.clone()));
    }
    // Links keep being accepted while draining (a peer may reconnect to finish a transfer);
    // only new sessions and streams are refused.
    let drained = {
        let shared = shared.clone();
        async move {
            shared.ctx.drain.cancelled().await;
            info!(node = %shared.ctx.id, "draining: no new sessions or streams");
            loop {
                let live = shared.sessions.lock().map(|s| s.len()).unwrap_or(0);
                if live == 0
                    || !braid_driver::sleep_or_shutdown(
                        Duration::from_millis(50),
                        &shared.ctx.shutdown,
                    )
                    .await
                {
                    break;
                }
            }
        }
    };
    tokio::pin!(drained);
    loop {
        let incoming = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = &mut drained => break,
            i = ep.accept() => match i { Some(i) => i, None => break },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    Metrics::inc(&shared.ctx.metrics.peers_refused);
                    debug!(error = %e, "peer refused");
                    return;
                }
            };
            let Some(entry) = shared.members.identify(&conn).await else {
                Metrics::inc(&shared.ctx.metrics.peers_refused);
                conn.close(1u32.into(), b"unknown key");
                return;
            };
            debug!(peer = %entry.id, role = %entry.role, "peer connected");
            match entry.role {
                Role::Upstream => from_upstream(shared, conn).await,
                Role::Downstream => {
                    let _up =
                        LinkUpGuard::counted_in(shared.ctx.metrics.clone(), |m| &m.downstreams_up);
                    to_downstream(shared, conn, entry.id).await
                }
                Role::Gateway => {
                    let _up =
                        LinkUpGuard::counted_in(shared.ctx.metrics.clone(), |m| &m.gateways_up);
                    if let Ok(mut g) = shared.gateways.lock() {
                        g.insert(entry.id.clone(), conn.clone());
                    }
                    let _ = conn.closed().await;
                    if let Ok(mut g) = shared.gateways.lock() {
                        if g.get(&entry.id)
                            .is_some_and(|c| c.stable_id() == conn.stable_id())
                        {
                            g.remove(&entry.id);
                        }
                    }
                }
                _ => conn.close(1u32.into(), b"role not served"),
            }
        });
    }
    ep.close(0u32.into(), b"shutdown");
    Ok(())
}

async fn from_upstream(shared: Arc<Shared>, conn: quinn::Connection) {
    let cell_size = shared.ctx.cell_size();
    let link = conn.stable_id() as u64;
    while let Ok(mut recv) = conn.accept_uni().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(cell_size);
            while let Ok(true) = read_frame(&mut recv, cell_size, &mut buf).await {
                Metrics::inc(&shared.ctx.metrics.cells_in);
                tap(&shared.ctx.tap, &shared.ctx.id, TapPoint::Received, &buf);
                if buf.len() != cell_size {
                    Metrics::inc(&shared.ctx.metrics.cells_dropped);
                    continue;
                }
                dispatch(&shared, link, std::mem::take(&mut buf));
            }
        });
    }
}

/// Routes a cell to its session's task by its path label; a Hello (a label no session
/// holds, the Hello kind in clear) that passes the cheap checks (id bound to its key,
/// canonical, not seen before) waits in its link's admission queue.
fn dispatch(shared: &Arc<Shared>, link: u64, cell: Vec<u8>) {
    let Some(label) = cell::peek_label(&cell) else {
        Metrics::inc(&shared.ctx.metrics.cells_dropped);
        return;
    };
    let owner = shared.labels.lock().ok().and_then(|mut l| l.lookup(label));
    if let (Some(id), Ok(sessions)) = (owner, shared.sessions.lock()) {
        if let Some(s) = sessions.get(&id) {
            if s.cells.try_send(cell).is_err() {
                Metrics::inc(&shared.ctx.metrics.cells_dropped);
            }
            return;
        }
    }
    if cell::clear_kind(&cell) != Some(CellKind::HELLO) || shared.ctx.drain.is_cancelled() {
        Metrics::inc(&shared.ctx.metrics.cells_dropped);
        return;
    }
    let ticket = match session::check_hello(&shared.params.session, &cell) {
        Ok(t) => t,
        Err(e) => {
            debug!(error = %e, "hello refused");
            Metrics::inc(&shared.ctx.metrics.hellos_refused);
            return;
        }
    };
    if shared
        .replay
        .lock()
        .map_or(true, |r| r.seen(&ticket.ephemeral))
    {
        Metrics::inc(&shared.ctx.metrics.hellos_refused);
        return;
    }
    let queued = match shared.hellos.lock() {
        Ok(mut q) => q.push(link, QueuedHello { ticket, cell }),
        Err(_) => return,
    };
    if queued != Queued::Waiting {
        // A Hello was dropped: this one, or one of less effort it displaced.
        Metrics::inc(&shared.ctx.metrics.hellos_refused);
    }
    if queued != Queued::Dropped {
        shared.hello_ready.notify_one();
    }
}

/// A handshake worker: serves the admission queues, doing the public-key work with no lock
/// held.
async fn admit(shared: Arc<Shared>) {
    loop {
        let next = shared.hellos.lock().ok().and_then(|mut q| q.pop());
        match next {
            Some(h) => {
                admit_one(&shared, h);
                // Let the links' readers and the sessions run between handshakes.
                tokio::task::yield_now().await;
            }
            None => tokio::select! {
                _ = shared.ctx.shutdown.cancelled() => return,
                _ = shared.hello_ready.notified() => {}
            },
        }
    }
}

fn admit_one(shared: &Arc<Shared>, hello: QueuedHello) {
    let id = hello.ticket.id;
    let now = tokio::time::Instant::now().into_std();
    let unix_now = braid_driver::unix_now();
    let clock = HelloClock {
        unix_secs: unix_now,
        window_secs: shared.params.admission.hello_window.as_secs(),
    };
    let accepted = match session::accept(
        &mut rand::rng(),
        shared.params.session.clone(),
        &shared.noise,
        now,
        clock,
        &hello.cell,
    ) {
        Ok(a) => a,
        Err(e) => {
            debug!(error = %e, "hello refused");
            Metrics::inc(&shared.ctx.metrics.hellos_refused);
            return;
        }
    };
    // In a network with an operator key, the Hello shows the user's limits pass: the
    // session's stream limit and rate, and nothing of who the user is.
    let (max_streams, rate) = match session_limits(shared, &accepted.hello.limits_pass, unix_now) {
        Ok(l) => l,
        Err(e) => {
            debug!(error = %e, "hello refused");
            Metrics::inc(&shared.ctx.metrics.hellos_refused);
            return;
        }
    };
    // Only an authenticated Hello is remembered: a forged one with a copied key must not
    // block the real client's.
    // `accept` checked the Hello's time against the same window.
    if !shared
        .replay
        .lock()
        .is_ok_and(|mut r| r.admit(hello.ticket.ephemeral, unix_now, unix_now).is_ok())
    {
        Metrics::inc(&shared.ctx.metrics.hellos_refused);
        return;
    }
    let Ok(mut sessions) = shared.sessions.lock() else {
        return;
    };
    if sessions.len() >= shared.params.max_sessions
        || sessions.contains_key(&id)
        || shared.ctx.drain.is_cancelled()
    {
        Metrics::inc(&shared.ctx.metrics.hellos_refused);
        return;
    }
    Metrics::inc(&shared.ctx.metrics.sessions_opened);
    let (cells_tx, cells_rx) = mpsc::channel(4096);
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let gauge = Arc::new(SessionGauge::default());
    let stop = shared.ctx.shutdown.child_token();
    sessions.insert(
        id,
        SessionEntry {
            cells: cells_tx,
            gauge: gauge.clone(),
            stop: stop.clone(),
        },
    );
    drop(sessions);
    if let Ok(mut labels) = shared.labels.lock() {
        labels.insert(id, accepted.session.path_labels());
    }
    if let Ok(mut half) = shared.half_open.lock() {
        half.push_back(HalfOpen {
            id,
            since: now,
            gauge: gauge.clone(),
            stop: stop.clone(),
        });
        // Over the cap, the oldest go at once (not only at the next sweep).
        while half.len() > shared.params.admission.max_half_open {
            if let Some(old) = half.pop_front() {
                if !old
                    .gauge
                    .established
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    old.stop.cancel();
                    Metrics::inc(&shared.ctx.metrics.sessions_evicted);
                }
            }
        }
    }

    let (members_tx, members_stop) = (cmd_tx.clone(), stop.clone());
    let opener_shared = shared.clone();
    let session_stalled = StallBudget::new(shared.params.session_stalled_streams);
    let task = SessionTask {
        session: accepted.session,
        node: shared.ctx.id.clone(),
        metrics: shared.ctx.metrics.clone(),
        tap: shared.ctx.tap.clone(),
        cells_rx,
        cmd_tx,
        cmd_rx,
        links: shared.downstreams.subscribe(),
        first_stream: 0,
        role: SessionRole::Central(CentralSession {
            mailboxes: accepted.hello.mailboxes,
            known_relay: shared.known_relay.clone(),
            mailbox_policy: session::MailboxPolicy::new(shared.params.mailbox_change_interval),
            send_budget: shared.send_budget.clone(),
            welcome: accepted.welcome_cell,
            opener: Box::new(move |gateway, sender, receiver| {
                open_gateway_stream(
                    &opener_shared,
                    &gateway,
                    sender,
                    receiver,
                    [session_stalled.clone(), opener_shared.stalled.clone()],
                )
            }),
            gauge,
            drain: shared.ctx.drain.clone(),
            limits: StreamLimits {
                max_streams,
                opens: TokenBucket::new(
                    shared.params.stream_open_rate,
                    shared.params.stream_open_burst,
                    now,
                ),
            },
        }),
        idle_timeout: shared.params.idle_timeout,
        reassembly_timeout: shared.params.reassembly_timeout,
        status: None,
        pace: rate.map(|r| braid_proto::rate::TokenBucket::with_rate(r, r / 10.0, now)),
        members: None,
        shutdown: stop,
    };
    if shared.members.joinable() {
        tokio::spawn(pass_on_members(shared.clone(), members_tx, members_stop));
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        task.run().await;
        if let Ok(mut s) = shared.sessions.lock() {
            s.remove(&id);
        }
        if let Ok(mut l) = shared.labels.lock() {
            l.remove(id);
        }
    });
}

/// Tells a session's client of every joined node, then of each registration as it comes
/// (joins, refreshes, leavings), until the session ends.
async fn pass_on_members(
    shared: Arc<Shared>,
    cmd: mpsc::Sender<SessionCmd>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut updates = shared.members.subscribe();
    for d in shared.members.descriptors() {
        if cmd.send(SessionCmd::Descriptor(d)).await.is_err() {
            return;
        }
    }
    loop {
        let d = tokio::select! {
            _ = stop.cancelled() => return,
            d = updates.recv() => d,
        };
        let d = match d {
            Ok(d) => d,
            // Fell behind: the nodes it missed refresh within a third of their life.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if cmd.send(SessionCmd::Descriptor(d)).await.is_err() {
            return;
        }
    }
}

async fn to_downstream(shared: Arc<Shared>, conn: quinn::Connection, name: String) {
    // Sessions already tap what they hand the link, so this writer does not tap again.
    publish_link(
        &shared.downstreams,
        &name,
        &conn,
        None,
        1024,
        &shared.ctx.id,
        &None,
    )
    .await;
}

fn open_gateway_stream(
    shared: &Arc<Shared>,
    gateway: &str,
    sender: StreamSender,
    receiver: StreamReceiver,
    budgets: [Arc<StallBudget>; 2],
) -> bool {
    let conn = {
        let Ok(g) = shared.gateways.lock() else {
            return false;
        };
        // Only the gateway the client named: the inner stream is sealed to its key, and
        // handing it to another would tell that one about the stream. Not linked: refused
        // (NO_GATEWAY), and the client tries another.
        match g.get(gateway) {
            Some(c) => c.clone(),
            None => return false,
        }
    };
    Metrics::inc(&shared.ctx.metrics.streams_opened);
    tokio::spawn(gateway_stream(conn, sender, receiver, budgets));
    true
}

/// Hands `bytes` to the session once the client has room for them. While it has none the
/// stream is stalled: it holds its gateway window, charged to the session's budget and the
/// global one, and either may cut it (then the stream is reset).
async fn send_when_credited(
    tx: &StreamSender,
    bytes: Vec<u8>,
    budgets: &[Arc<StallBudget>; 2],
) -> Result<(), Stalled> {
    if tx.has_credit(bytes.len()) {
        return tx.send(bytes).await.map_err(Stalled::Stream);
    }
    let [session, global] = budgets;
    let (a, b) = (session.enter(), global.enter());
    tokio::select! {
        r = tx.send(bytes) => r.map_err(Stalled::Stream),
        _ = a.cut.cancelled() => Err(Stalled::Cut),
        _ = b.cut.cancelled() => Err(Stalled::Cut),
    }
}

/// Why bytes from the gateway could not be handed to the session.
enum Stalled {
    Stream(StreamError),
    /// Stalled over a budget.
    Cut,
}

/// Bridges one proxied stream between the session and its QUIC stream to the gateway.
async fn gateway_stream(
    conn: quinn::Connection,
    tx: StreamSender,
    mut rx: StreamReceiver,
    budgets: [Arc<StallBudget>; 2],
) {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(_) => {
            tx.reset(Reason::GATEWAY_LOST).await;
            return;
        }
    };
    let mut up_done = false;
    let mut down_done = false;
    let mut buf = vec![0u8; 16 * 1024];
    // Events are read all along, also after the client's End: a reset may follow it, and a
    // stream that missed it would wait on credit or on the gateway until the session ends.
    while !(up_done && down_done) {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(StreamEvent::Data(d)) if !up_done => {
                    if send.write_all(&d).await.is_err() {
                        tx.reset(Reason::GATEWAY_LOST).await;
                        return;
                    }
                }
                Some(StreamEvent::Data(_)) => {} // after End: the peer broke the protocol
                Some(StreamEvent::End) => {
                    let _ = send.finish();
                    up_done = true;
                }
                Some(StreamEvent::Reset(reason)) => {
                    let _ = send.reset(quic_code(reason));
                    let _ = recv.stop(quic_code(reason));
                    return;
                }
                None => return,
            },
            n = recv.read(&mut buf), if !down_done => match n {
                Ok(Some(n)) => {
                    // Waits for the client's room for these bytes (per-stream credit).
                    let bytes = buf.get(..n).unwrap_or_default().to_vec();
                    match send_when_credited(&tx, bytes, &budgets).await {
                        Ok(()) => {}
                        Err(Stalled::Stream(StreamError::Reset)) => {
                            let _ = send.reset(quic_code(Reason::GENERAL_FAILURE));
                            let _ = recv.stop(quic_code(Reason::GENERAL_FAILURE));
                            return;
                        }
                        Err(Stalled::Cut) => {
                            debug!("a stalled stream over its budget: reset");
                            tx.reset(Reason::RESOURCE_LIMIT).await;
                            let _ = send.reset(quic_code(Reason::RESOURCE_LIMIT));
                            let _ = recv.stop(quic_code(Reason::RESOURCE_LIMIT));
                            return;
                        }
                        Err(Stalled::Stream(_)) => return,
                    }
                }
                Ok(None) => {
                    let _ = tx.end().await;
                    down_done = true;
                }
                Err(_) => {
                    tx.reset(Reason::GATEWAY_LOST).await;
                    return;
                }
            },
        }
    }
    // Every byte acknowledged to the client must reach the gateway before this stream
    // counts as done (a draining central waits on it); a reset meanwhile ends the wait.
    let acked = tokio::time::timeout(Duration::from_secs(30), send.stopped());
    tokio::pin!(acked);
    loop {
        tokio::select! {
            _ = &mut acked => break,
            ev = rx.recv() => match ev {
                Some(StreamEvent::Reset(reason)) => {
                    let _ = send.reset(quic_code(reason));
                    return;
                }
                Some(_) => {}
                None => return,
            },
        }
    }
    tx.forget().await;
}

/// A stream-end reason as a QUIC application error code (to the gateway).
fn quic_code(reason: Reason) -> quinn::VarInt {
    u32::from(reason.code()).into()
}

/// Keeps the reassembly memory of all sessions under the global cap: when over it, the
/// sessions whose out-of-order data has waited longest are torn down first.
async fn evict_over_cap(shared: Arc<Shared>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shared.ctx.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        close_half_open(&shared);
        let Ok(sessions) = shared.sessions.lock() else {
            return;
        };
        let mut total: usize = sessions
            .values()
            .map(|e| e.gauge.reorder_bytes.load(Relaxed))
            .sum();
        if total <= shared.params.global_reorder_bytes {
            continue;
        }
        let mut stalled: Vec<(u64, usize, &SessionEntry)> = sessions
            .values()
            .filter(|e| !e.stop.is_cancelled())
            .map(|e| {
                (
                    e.gauge.stalled_since_ms.load(Relaxed),
                    e.gauge.reorder_bytes.load(Relaxed),
                    e,
                )
            })
            .filter(|(since, bytes, _)| *since > 0 && *bytes > 0)
            .collect();
        stalled.sort_by_key(|(since, ..)| *since);
        let mut evicted = 0;
        for (_, bytes, e) in stalled {
            if total <= shared.params.global_reorder_bytes {
                break;
            }
            e.stop.cancel();
            total = total.saturating_sub(bytes);
            evicted += 1;
            Metrics::inc(&shared.ctx.metrics.sessions_evicted);
        }
        if evicted > 0 {
            debug!(
                evicted,
                "sessions evicted to keep reassembly memory under the global cap"
            );
        }
    }
}

/// A session's limits: this central's own stream limit, lowered by the user's limits pass
/// when the network has an operator key (which then wants a valid pass; zero in it means
/// no limit of the user's own), and the user's rate (bytes per second) if it has one.
fn session_limits(
    shared: &Shared,
    pass: &[u8],
    unix_now: u64,
) -> Result<(usize, Option<f64>), braid_proto::credential::PassError> {
    use braid_proto::credential::{LimitsPass, PassError};
    let own = shared.params.max_streams_per_session;
    let Some(operator) = shared.ctx.directory.operator_key else {
        return Ok((own, None));
    };
    if pass.is_empty() {
        return Err(PassError::Malformed);
    }
    let p = LimitsPass::verify(pass, &operator, unix_now)?;
    let streams = match p.max_streams {
        0 => own,
        n => own.min(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    let rate = (p.rate_kib > 0).then(|| f64::from(p.rate_kib) * 1024.0);
    Ok((streams, rate))
}

/// Drops the sessions answered but not confirmed in time, and the oldest of them while
/// there are more than the cap: a Hello flood costs at most `max_half_open` sessions, each
/// for at most `half_open_timeout`, and an honest client confirms within a round trip.
fn close_half_open(shared: &Shared) {
    use std::sync::atomic::Ordering::Relaxed;
    let a = &shared.params.admission;
    let Ok(mut half) = shared.half_open.lock() else {
        return;
    };
    half.retain(|h| !h.gauge.established.load(Relaxed) && !h.stop.is_cancelled());
    let now = std::time::Instant::now();
    while let Some(h) = half.front() {
        let expired = now.saturating_duration_since(h.since) >= a.half_open_timeout;
        if !expired && half.len() <= a.max_half_open {
            break;
        }
        debug!(session = %h.id, "half-open session dropped");
        h.stop.cancel();
        Metrics::inc(&shared.ctx.metrics.sessions_evicted);
        half.pop_front();
    }
}
