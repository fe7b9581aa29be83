//! The async driver of one outer session (quinn's split: `braid_proto::session::Session` is
//! the state machine, this task feeds it cells, commands and time, and moves what it
//! produces). The client runs one; the central runs one per client session.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use braid_proto::envelope::{encode_envelope_prefix, via_address};
use braid_proto::frame::{Mailbox, StreamId};
use braid_proto::session::{
    LivePath, MailboxPolicy, PathTable, Session, SessionError, SessionEvent, SessionStats,
};
use braid_proto::Reason;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::link::Link;
use crate::metrics::Metrics;
use crate::status::{SessionView, StatusPublisher};
use crate::stream::{StreamReceiver, StreamSender};
use crate::tap::{tap, Tap, TapPoint};

/// What a stream's owner receives from the session.
#[derive(Debug)]
pub enum StreamEvent {
    Data(Vec<u8>),
    End,
    /// The stream was aborted, by the peer or because the session ended.
    Reset(Reason),
}

/// What a stream's owner asks of the session.
#[derive(Debug)]
pub enum SessionCmd {
    Open {
        stream: StreamId,
        gateway: String,
        events: mpsc::Sender<StreamEvent>,
        /// The stream's send budget in bytes: the owner takes permits before each `Data`;
        /// the session adds the peer's window now and its credit as it arrives.
        credit: Arc<Semaphore>,
    },
    Data {
        stream: StreamId,
        bytes: Vec<u8>,
    },
    End {
        stream: StreamId,
    },
    Reset {
        stream: StreamId,
        reason: Reason,
    },
    /// The stream's owner is gone; forget its event channel.
    Forget {
        stream: StreamId,
    },
    /// Client side: the relay mailboxes now reachable.
    Mailboxes(Vec<Mailbox>),
    /// Central side: pass a member's signed descriptor on to the client.
    Descriptor(Vec<u8>),
}

/// The central's hook: the client opened a stream to the named gateway; the hook takes
/// ownership of the stream's two halves, or returns false to refuse it.
pub type StreamOpener = Box<dyn FnMut(String, StreamSender, StreamReceiver) -> bool + Send>;

/// Delivered bytes a session holds for streams whose owners are slow, across all its
/// streams; past it the session stops taking events (and so stops granting cell credit).
pub const MAX_PENDING_STREAM_BYTES: usize = 16 << 20;

/// How often the session looks over all its streams for owners that left without a word
/// (dropped their receiver without `Forget` or `Reset`). Only then: a pass over every
/// stream on every cell would cost O(streams) per cell, which 10,000 streams make the
/// session's main cost.
pub const OWNER_SWEEP: Duration = Duration::from_millis(100);

/// How often a session held back by the central's send budget looks again (other
/// sessions free it; nothing wakes this one when they do).
pub const BUDGET_RETRY: Duration = Duration::from_millis(10);

/// One stream as the session task sees it.
struct StreamSlot {
    tx: mpsc::Sender<StreamEvent>,
    credit: Arc<Semaphore>,
    /// The highest send limit the peer granted (cumulative bytes).
    granted: u64,
    /// Events waiting for room in the owner's queue, in order.
    pending: VecDeque<StreamEvent>,
    /// A waiter is watching the owner's queue for room.
    waiting: bool,
}

impl StreamSlot {
    fn new(tx: mpsc::Sender<StreamEvent>, credit: Arc<Semaphore>, window: u64) -> Self {
        StreamSlot {
            tx,
            credit,
            granted: window,
            pending: VecDeque::new(),
            waiting: false,
        }
    }
}

/// Hands a stream's pending events to its owner while its queue has room; data handed over
/// counts as consumed (the session then grants the peer more). Returns the bytes handed
/// over; a stream whose owner is gone goes into `gone`.
fn flush(
    stream: StreamId,
    slot: &mut StreamSlot,
    session: &mut Session,
    gone: &mut Vec<StreamId>,
) -> usize {
    let mut moved = 0;
    while let Some(ev) = slot.pending.pop_front() {
        let n = event_bytes(&ev);
        match slot.tx.try_send(ev) {
            Ok(()) => {
                moved += n;
                if n > 0 {
                    session.stream_consumed(stream, n);
                }
            }
            Err(mpsc::error::TrySendError::Full(ev)) => {
                slot.pending.push_front(ev);
                break;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                moved += n;
                break;
            }
        }
    }
    // The owner is gone (it finished, or returned after a reset or an error): forget the
    // stream, whether or not an event was waiting for it, so that no slot outlives it.
    if slot.tx.is_closed() {
        gone.push(stream);
    }
    moved
}

fn event_bytes(ev: &StreamEvent) -> usize {
    match ev {
        StreamEvent::Data(d) => d.len(),
        _ => 0,
    }
}

pub struct SessionTask {
    pub session: Session,
    pub node: String,
    pub metrics: Arc<Metrics>,
    pub tap: Option<Tap>,
    /// Cells arriving from the peer.
    pub cells_rx: mpsc::Receiver<Vec<u8>>,
    pub cmd_tx: mpsc::Sender<SessionCmd>,
    pub cmd_rx: mpsc::Receiver<SessionCmd>,
    pub links: watch::Receiver<Vec<Link>>,
    pub role: SessionRole,
    /// Streams numbered below this that the session has not opened belong to an earlier
    /// session on the same command channel (a client's); 0 when there is none.
    pub first_stream: StreamId,
    /// Torn down after this long without a cell from the peer.
    pub idle_timeout: Duration,
    /// Torn down when out-of-order cells have waited this long for a missing one.
    pub reassembly_timeout: Duration,
    /// Where a view of the session goes when a reader asks (the client's admin port).
    pub status: Option<StatusPublisher>,
    /// Paces what this session sends (bytes per second): a client holds itself to its
    /// user's rate, so its cells wait in the session, before any clock starts on them,
    /// rather than in queues in front of the first hops that enforce it (which would time
    /// out and be resent, spending the rate twice).
    pub pace: Option<braid_proto::rate::TokenBucket>,
    /// Client side: where the descriptors the central passes on go (the client verifies
    /// them). Full or absent: dropped, as the node refreshes them anyway.
    pub members: Option<mpsc::Sender<Vec<u8>>>,
    pub shutdown: CancellationToken,
}

/// Why a session task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Shutdown, or the channels feeding the task closed.
    Shutdown,
    /// Nothing came from the peer for the idle timeout.
    Idle,
    /// Out-of-order cells waited past the reassembly timeout.
    ReassemblyTimeout,
    /// Draining, and every stream is done.
    Drained,
    /// The state machine cannot go on (peer silent, keys exhausted).
    Failed(SessionError),
}

/// What a finished session task hands back: why it ended, and its channels.
pub struct SessionEnd {
    pub reason: EndReason,
    pub cells_rx: mpsc::Receiver<Vec<u8>>,
    pub cmd_rx: mpsc::Receiver<SessionCmd>,
}

/// Which end of the session this task drives.
// One per session task, held for its life: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum SessionRole {
    /// The client's end: cells leave on upstream links; it opens the streams.
    Client,
    /// One of the central's sessions.
    Central(CentralSession),
}

/// Whether a relay id names a relay of the directory (the central's check on the
/// mailboxes a client asks for).
pub type RelayFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What all of the central's sessions keep for sending (queued stream bytes and cells in
/// flight), bounded together; one session over its fair share stops taking stream bytes.
pub type SendBudget = crate::pump::ResendBudget;

/// What only the central's end of a session has.
pub struct CentralSession {
    /// Response paths are (downstream, mailbox) pairs: the client's live mailboxes (only
    /// those `known_relay` accepts are used).
    pub mailboxes: Vec<Mailbox>,
    /// Which relays a mailbox may name: the directory's.
    pub known_relay: RelayFilter,
    /// How often the client's mailbox set may change (see [`MailboxPolicy`]).
    pub mailbox_policy: MailboxPolicy,
    /// Shared by all sessions: what they keep for sending.
    pub send_budget: Arc<SendBudget>,
    /// The Welcome cell, sent once: a client that misses it starts a new Hello (a Hello
    /// seen again is a replay, and answering replays would let anyone trigger sends).
    pub welcome: Vec<u8>,
    /// Takes the streams the client opens.
    pub opener: StreamOpener,
    /// Where the central reads this session's reassembly memory.
    pub gauge: Arc<SessionGauge>,
    /// Once fired, new streams are refused and the session ends when its live streams are
    /// done and everything sent is acknowledged.
    pub drain: CancellationToken,
    /// How many streams the client may hold and how fast it may open them.
    pub limits: StreamLimits,
}

/// A session's stream limits at the central: past either, an open is refused
/// (`resource_limit`), so one client cannot take the gateway links' streams from the others.
pub struct StreamLimits {
    /// Streams open at once.
    pub max_streams: usize,
    /// Opens per second, with bursts.
    pub opens: braid_proto::rate::TokenBucket,
}

impl SessionRole {
    fn central(&self) -> Option<&CentralSession> {
        match self {
            SessionRole::Client => None,
            SessionRole::Central(c) => Some(c),
        }
    }

    /// The mailboxes responses go to (central side).
    fn mailboxes(&self) -> Option<&[Mailbox]> {
        self.central().map(|c| c.mailboxes.as_slice())
    }

    fn draining(&self) -> bool {
        self.central().is_some_and(|c| c.drain.is_cancelled())
    }
}

/// `at + d`, or a year from `at` when a configured timeout is too large to add.
fn far(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(365 * 24 * 3600))
}

/// The shared origin of [`SessionGauge::stalled_since_ms`].
pub fn clock_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// What a session publishes for the central's global memory cap.
#[derive(Debug, Default)]
pub struct SessionGauge {
    pub reorder_bytes: std::sync::atomic::AtomicUsize,
    /// Milliseconds (on the central's clock) since which reassembly has been stalled; 0 = not.
    pub stalled_since_ms: std::sync::atomic::AtomicU64,
    /// A sealed cell from the client has authenticated: the session is no longer half-open.
    pub established: std::sync::atomic::AtomicBool,
}

/// The session's paths over the links now up: client side, one per upstream link; central
/// side, one per (downstream link, client mailbox) pair, each with its envelope prefix.
type Paths = PathTable<mpsc::Sender<Vec<u8>>>;

/// Rebuilds `table` from `links` and tells `session` of the paths that went away (their
/// cells go out again) and of those forgotten with their mailbox.
fn rebuild(
    table: &mut Paths,
    session: &mut Session,
    links: &[Link],
    mailboxes: Option<&[Mailbox]>,
) {
    let links: Vec<_> = links
        .iter()
        .map(|l| (l.name.clone(), l.tx.clone()))
        .collect();
    // A mailbox whose relay id cannot be put in an envelope (the Hello bounds it) gets no
    // prefix; the downstream drops its cells and the path is rested.
    // Each downstream reads its own address for the mailbox (`envelope::via_address`).
    let gone = table.rebuild(&links, mailboxes, |downstream, b| {
        let via = Mailbox {
            relay: b.relay.clone(),
            id: via_address(&b.id, downstream),
        };
        encode_envelope_prefix(&via).unwrap_or_default()
    });
    for id in gone {
        session.path_lost(id);
    }
    for id in table.take_forgotten() {
        session.path_forgotten(id);
    }
}

impl SessionTask {
    /// Drives the session until it ends; hands back its channels (a client opens its next
    /// session on them) and why it ended.
    pub async fn run(mut self) -> SessionEnd {
        let mut table = Paths::default();
        let links = self.links.borrow_and_update().clone();
        if let SessionRole::Central(c) = &mut self.role {
            // The Hello's mailboxes pass the same check as later changes.
            let known = c.known_relay.clone();
            c.mailboxes = MailboxPolicy::sanitize(std::mem::take(&mut c.mailboxes), &*known);
        }
        rebuild(&mut table, &mut self.session, &links, self.role.mailboxes());
        // What this session has charged to the central's send budget.
        let mut send_charged = 0usize;
        let mut streams: HashMap<StreamId, StreamSlot> = HashMap::new();
        // The streams with events parked for a slow owner: the only ones step 1 visits.
        let mut backlog: HashSet<StreamId> = HashSet::new();
        let mut swept = Instant::now();
        // Bytes parked in the streams' pending queues, and the wake-up for queues with room.
        let mut pending_bytes = 0usize;
        let room = Arc::new(Notify::new());
        let id = self.session.id();
        let mut reported = SessionStats::default();
        let mut send_welcome = self.role.central().is_some();
        // When the pacer lets the next cell go.
        let mut paced_until = Instant::now();
        debug!(node = %self.node, session = %id, "session running");
        self.publish_status(&table, streams.len());

        let reason = 'session: loop {
            let now = Instant::now().into_std();
            // 0. A mailbox set that waited for the rate limit, when its turn has come.
            let due = match &mut self.role {
                SessionRole::Central(c) => c.mailbox_policy.poll(now),
                SessionRole::Client => None,
            };
            if let Some(boxes) = due {
                self.use_mailboxes(&mut table, boxes);
            }
            // 1. Deliver events: each stream in its own order, a slow owner holding up only
            //    its own stream (per-stream credit bounds what it can pile up).
            let mut gone = Vec::new();
            for stream in std::mem::take(&mut backlog) {
                let Some(slot) = streams.get_mut(&stream) else {
                    continue;
                };
                pending_bytes -= flush(stream, slot, &mut self.session, &mut gone);
                if slot.pending.is_empty() {
                    // The queue took everything: a waiter still out is not needed.
                    slot.waiting = false;
                } else {
                    backlog.insert(stream);
                }
            }
            // An owner that left without a word is found when an event meets its closed
            // queue (in `flush`), or here.
            if !streams.is_empty() && swept.elapsed() >= OWNER_SWEEP {
                swept = Instant::now();
                gone.extend(
                    streams
                        .iter()
                        .filter(|(_, slot)| slot.tx.is_closed())
                        .map(|(id, _)| *id),
                );
            }
            while pending_bytes < MAX_PENDING_STREAM_BYTES {
                let Some(ev) = self.session.poll_event() else {
                    break;
                };
                if let SessionEvent::Failed(e) = ev {
                    // The state machine can send nothing more (its keys ran out): end the
                    // session; the client opens a new one.
                    warn!(node = %self.node, session = %id, error = %e, "session failed");
                    break 'session EndReason::Failed(e);
                }
                let Some((stream, ev)) = self.route_event(ev, &mut streams, &mut table) else {
                    continue;
                };
                let Some(slot) = streams.get_mut(&stream) else {
                    continue;
                };
                pending_bytes += event_bytes(&ev);
                slot.pending.push_back(ev);
                pending_bytes -= flush(stream, slot, &mut self.session, &mut gone);
                if !slot.pending.is_empty() {
                    backlog.insert(stream);
                }
            }
            for stream in gone {
                // `gone` may name a stream twice (flush and sweep); it is closed once.
                if let Some(slot) = streams.remove(&stream) {
                    pending_bytes -= slot.pending.iter().map(event_bytes).sum::<usize>();
                    backlog.remove(&stream);
                    self.session.stream_closed(stream);
                }
            }
            for id in &backlog {
                let Some(slot) = streams.get_mut(id) else {
                    continue;
                };
                if slot.pending.is_empty() || slot.waiting {
                    continue;
                }
                slot.waiting = true;
                let (tx, room) = (slot.tx.clone(), room.clone());
                tokio::spawn(async move {
                    // The permit is dropped at once: this only says "there is room now".
                    drop(tx.reserve().await);
                    room.notify_one();
                });
            }
            // 2. Send what the session has, on paths that can take it.
            if send_welcome {
                if let Some(w) = self.role.central().map(|c| &c.welcome) {
                    if let Some(LivePath {
                        link: tx, prefix, ..
                    }) = table.live().iter().find(|p| p.link.capacity() > 0)
                    {
                        let mut m = prefix.clone();
                        m.extend_from_slice(w);
                        if tx.try_send(m).is_ok() {
                            send_welcome = false;
                        }
                    }
                }
            }
            let mut blocked_on_paths = send_welcome;
            let mut writable = table.writable(|tx| tx.capacity() > 0);
            loop {
                if writable.is_empty() {
                    blocked_on_paths = !table.live().is_empty();
                    break;
                }
                if self.pace.is_some() && Instant::now() < paced_until {
                    break;
                }
                let Some(t) = self.session.poll_transmit(now, &writable) else {
                    break;
                };
                if let Some(LivePath {
                    link: tx, prefix, ..
                }) = table.get(t.path)
                {
                    let msg = if prefix.is_empty() {
                        t.cell
                    } else {
                        let mut m = Vec::with_capacity(prefix.len() + t.cell.len());
                        m.extend_from_slice(prefix);
                        m.extend_from_slice(&t.cell);
                        m
                    };
                    tap(&self.tap, &self.node, TapPoint::Sent, &msg);
                    let msg_len = msg.len();
                    // Links are shared (the central's sessions share each downstream), so the
                    // room seen above may be gone: wait for it rather than drop the cell. A
                    // closed link is withdrawn from `links`, and its cells are resent then.
                    let sent = match tx.try_send(msg) {
                        Ok(()) => true,
                        Err(mpsc::error::TrySendError::Full(msg)) => tx.send(msg).await.is_ok(),
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    };
                    if sent {
                        Metrics::inc(&self.metrics.cells_out);
                        if let Some(p) = &mut self.pace {
                            let now = Instant::now();
                            paced_until = now + p.take_paced(msg_len as f64, now.into_std());
                        }
                    }
                    if !sent || tx.capacity() == 0 {
                        writable.retain(|p| *p != t.path);
                    }
                }
            }

            // 3. Wait for something to do.
            let timeout = self.session.poll_timeout().map(Instant::from_std);
            // Links full: look again shortly (they drain at link speed).
            let retry = blocked_on_paths.then(|| Instant::now() + Duration::from_millis(1));
            // Held back by the shared send budget: other sessions free it, so look again.
            let budget_retry = (self.session.send_capacity() > 0
                && !self.budget_room(send_charged))
            .then(|| Instant::now() + BUDGET_RETRY);

            let stall_check = {
                let stalled = self.session.stalled_for(Instant::now().into_std());
                (!stalled.is_zero()).then(|| {
                    far(
                        Instant::now(),
                        self.reassembly_timeout.saturating_sub(stalled),
                    ) + Duration::from_millis(1)
                })
            };
            let sweep = (!streams.is_empty()).then(|| swept + OWNER_SWEEP);
            let mailboxes_due = self
                .role
                .central()
                .and_then(|c| c.mailbox_policy.due())
                .map(Instant::from_std);
            let paced =
                (self.pace.is_some() && paced_until > Instant::now()).then_some(paced_until);
            let wake = [
                timeout,
                retry,
                paced,
                stall_check,
                sweep,
                mailboxes_due,
                budget_retry,
            ]
            .into_iter()
            .flatten()
            .min();
            let idle_deadline = far(
                Instant::from_std(self.session.last_activity()),
                self.idle_timeout,
            );
            let accept_cmds = self.session.send_capacity() > 0 && self.budget_room(send_charged);
            let draining = self.role.draining();
            if draining && streams.is_empty() && self.session.is_idle() {
                break EndReason::Drained;
            }
            let drain_signal = self.role.central().map(|c| c.drain.clone());
            let status_asked = self.status.as_ref().map(|s| s.asked());
            tokio::select! {
                _ = self.shutdown.cancelled() => break EndReason::Shutdown,
                _ = room.notified() => {
                    for id in &backlog {
                        if let Some(slot) = streams.get_mut(id) {
                            slot.waiting = false;
                        }
                    }
                }
                _ = async { match drain_signal { Some(d) => d.cancelled_owned().await, None => std::future::pending().await } }, if !draining => {
                    debug!(node = %self.node, session = %id, streams = streams.len(), idle = self.session.is_idle(), "draining");
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    debug!(node = %self.node, session = %id, "session idle, closing");
                    break EndReason::Idle;
                }
                cell = self.cells_rx.recv() => {
                    let Some(cell) = cell else { break EndReason::Shutdown };
                    let now = Instant::now().into_std();
                    // This cell, then whatever else is queued (at most the queue's bound).
                    let mut next = Some(cell);
                    while let Some(mut cell) = next {
                        // Routed here by label or mailbox: a sealed cell (its kind is masked,
                        // so it may read as any kind) or garbage the seal refuses.
                        if let Err(e) = self.session.handle_cell(now, &mut cell) {
                            trace!(node = %self.node, session = %id, error = %e, "cell dropped");
                        } else if let Some(c) = self.role.central() {
                            c.gauge
                                .established
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        next = self.cells_rx.try_recv().ok();
                    }
                }
                cmd = self.cmd_rx.recv(), if accept_cmds => {
                    let Some(cmd) = cmd else { break EndReason::Shutdown };
                    self.handle_cmd(cmd, &mut streams, &mut pending_bytes);
                    // Charged as each command lands, so one batch cannot overrun the budget.
                    self.charge_budget(&mut send_charged);
                    while self.session.send_capacity() > 0 && self.budget_room(send_charged) {
                        match self.cmd_rx.try_recv() {
                            Ok(cmd) => {
                                self.handle_cmd(cmd, &mut streams, &mut pending_bytes);
                                self.charge_budget(&mut send_charged);
                            }
                            Err(_) => break,
                        }
                    }
                }
                changed = self.links.changed() => {
                    if changed.is_err() { break EndReason::Shutdown; }
                    let links = self.links.borrow_and_update().clone();
                    let mailboxes = self.role.mailboxes();
                    rebuild(&mut table, &mut self.session, &links, mailboxes);
                }
                _ = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                    self.session.handle_timeout(Instant::now().into_std());
                }
                _ = async { match status_asked { Some(n) => n.notified().await, None => std::future::pending().await } } => {
                    self.publish_status(&table, streams.len());
                }
            }
            let st = self.session.stats().clone();
            Metrics::add(
                &self.metrics.retransmits,
                st.retransmits - reported.retransmits,
            );
            Metrics::add(
                &self.metrics.cells_duplicate,
                st.duplicates - reported.duplicates,
            );
            Metrics::add(
                &self.metrics.cells_rejected,
                st.rejected - reported.rejected,
            );
            reported = st;
            let now = Instant::now();
            let stalled = self.session.stalled_for(now.into_std());
            self.charge_budget(&mut send_charged);
            if let Some(g) = self.role.central().map(|c| &c.gauge) {
                use std::sync::atomic::Ordering::Relaxed;
                g.reorder_bytes.store(self.session.reorder_bytes(), Relaxed);
                let since = if stalled.is_zero() {
                    0
                } else {
                    let start = now.checked_sub(stalled).unwrap_or(now);
                    start.saturating_duration_since(clock_origin()).as_millis() as u64 + 1
                };
                g.stalled_since_ms.store(since, Relaxed);
            }
            if stalled > self.reassembly_timeout {
                debug!(node = %self.node, session = %id, "reassembly timed out, closing");
                Metrics::inc(&self.metrics.sessions_evicted);
                break EndReason::ReassemblyTimeout;
            }
        };
        for (_, slot) in streams {
            let _ = slot.tx.try_send(StreamEvent::Reset(Reason::SESSION_CLOSED));
        }
        if let Some(c) = self.role.central() {
            c.send_budget.adjust(send_charged, 0);
        }
        Metrics::inc(&self.metrics.sessions_closed);
        debug!(node = %self.node, session = %id, ?reason, stats = ?self.session.stats(), "session ended");
        SessionEnd {
            reason,
            cells_rx: self.cells_rx,
            cmd_rx: self.cmd_rx,
        }
    }

    /// Publishes a view of the session, if anyone reads them.
    fn publish_status(&self, table: &Paths, streams_open: usize) {
        if let Some(status) = &self.status {
            status.publish(SessionView {
                snapshot: self.session.snapshot(table.ids()),
                path_names: table.live().iter().map(|p| p.name.clone()).collect(),
                streams_open,
            });
        }
    }

    /// Turns a session event into a stream event, handling the session-level ones here.
    fn route_event(
        &mut self,
        ev: SessionEvent,
        streams: &mut HashMap<StreamId, StreamSlot>,
        table: &mut Paths,
    ) -> Option<(StreamId, StreamEvent)> {
        match ev {
            SessionEvent::StreamData { stream, data } => {
                tap(&self.tap, &self.node, TapPoint::Decrypted, &data);
                Metrics::add(&self.metrics.stream_bytes_received, data.len() as u64);
                Some((stream, StreamEvent::Data(data)))
            }
            SessionEvent::StreamEnd { stream } => Some((stream, StreamEvent::End)),
            SessionEvent::StreamReset { stream, code } => {
                // Nothing more may be sent on a reset stream: an owner waiting for credit
                // wakes up (with an error) and sees the reset.
                if let Some(slot) = streams.get(&stream) {
                    slot.credit.close();
                }
                Some((stream, StreamEvent::Reset(Reason::from(code))))
            }
            SessionEvent::StreamCredit { stream, max } => {
                if let Some(slot) = streams.get_mut(&stream) {
                    let more = max.saturating_sub(slot.granted);
                    slot.granted = slot.granted.max(max);
                    // The peer controls `max`: never push the semaphore past its limit.
                    let room = Semaphore::MAX_PERMITS - slot.credit.available_permits();
                    slot.credit
                        .add_permits(usize::try_from(more).unwrap_or(usize::MAX).min(room));
                }
                None
            }
            SessionEvent::StreamOpened { stream, gateway } => {
                if self.role.draining() {
                    self.session.reset_stream(stream, Reason::DRAINING.code());
                    return None;
                }
                if let SessionRole::Central(c) = &mut self.role {
                    let now = Instant::now().into_std();
                    if streams.len() >= c.limits.max_streams || !c.limits.opens.try_take(now) {
                        Metrics::inc(&self.metrics.streams_refused);
                        self.session
                            .reset_stream(stream, Reason::RESOURCE_LIMIT.code());
                        return None;
                    }
                }
                tap(
                    &self.tap,
                    &self.node,
                    TapPoint::Decrypted,
                    gateway.as_bytes(),
                );
                let window = self.session.peer_stream_window();
                let credit = Arc::new(Semaphore::new(usize::try_from(window).unwrap_or(0)));
                let (sender, receiver, events) =
                    crate::stream::accepted(stream, self.cmd_tx.clone(), credit.clone());
                let opened = match &mut self.role {
                    SessionRole::Central(c) => (c.opener)(gateway, sender, receiver),
                    SessionRole::Client => false,
                };
                if opened {
                    streams.insert(stream, StreamSlot::new(events, credit, window));
                } else {
                    // The central has no link to the gateway the client named.
                    self.session.reset_stream(stream, Reason::NO_GATEWAY.code());
                }
                None
            }
            // Handled before routing.
            SessionEvent::Failed(_) => None,
            SessionEvent::Descriptor(bytes) => {
                // Only a central tells of members; a client's word on them is ignored.
                if let (SessionRole::Client, Some(members)) = (&self.role, &self.members) {
                    let _ = members.try_send(bytes);
                }
                None
            }
            SessionEvent::Mailboxes(boxes) => {
                if let SessionRole::Central(c) = &mut self.role {
                    let boxes = MailboxPolicy::sanitize(boxes, &*c.known_relay);
                    let now = Instant::now().into_std();
                    if let Some(boxes) = c.mailbox_policy.offer(now, &c.mailboxes, boxes) {
                        self.use_mailboxes(table, boxes);
                    }
                }
                None
            }
        }
    }

    /// Central side: responses go to `boxes` from now on.
    fn use_mailboxes(&mut self, table: &mut Paths, boxes: Vec<Mailbox>) {
        if let SessionRole::Central(c) = &mut self.role {
            c.mailboxes = boxes;
            let links = self.links.borrow().clone();
            let mailboxes = self.role.mailboxes();
            rebuild(table, &mut self.session, &links, mailboxes);
        }
    }

    /// Charges what the session keeps for sending now to the central's send budget;
    /// `charged` is what it was charged before.
    fn charge_budget(&self, charged: &mut usize) {
        if let Some(c) = self.role.central() {
            let keeps = self.session.send_bytes();
            c.send_budget.adjust(*charged, keeps);
            *charged = keeps;
        }
    }

    /// Whether the session may take more stream bytes under the central's send budget,
    /// keeping `charged` now (the client's end has no shared budget).
    fn budget_room(&self, charged: usize) -> bool {
        self.role
            .central()
            .is_none_or(|c| c.send_budget.has_room(charged))
    }

    fn handle_cmd(
        &mut self,
        cmd: SessionCmd,
        streams: &mut HashMap<StreamId, StreamSlot>,
        pending_bytes: &mut usize,
    ) {
        let mut forget = |streams: &mut HashMap<StreamId, StreamSlot>, stream: StreamId| {
            if let Some(slot) = streams.remove(&stream) {
                *pending_bytes -= slot.pending.iter().map(event_bytes).sum::<usize>();
            }
        };
        // A client's commands outlive its sessions (the next session takes the same channel):
        // one for a stream of an earlier session (numbered below `first_stream` and not
        // opened here) is dropped; that stream has ended. (A stream of this session whose
        // owner just left still gets its last command, such as its reset.)
        let stale = match &cmd {
            SessionCmd::Data { stream, .. }
            | SessionCmd::End { stream }
            | SessionCmd::Reset { stream, .. } => {
                *stream < self.first_stream && !streams.contains_key(stream)
            }
            _ => false,
        };
        if stale {
            trace!(node = %self.node, "command for a stream this session does not know: dropped");
            return;
        }
        match cmd {
            SessionCmd::Open {
                stream,
                gateway,
                events,
                credit,
            } => {
                let window = self.session.peer_stream_window();
                credit.add_permits(usize::try_from(window).unwrap_or(0));
                streams.insert(stream, StreamSlot::new(events, credit, window));
                self.session.open_stream(stream, &gateway);
                Metrics::inc(&self.metrics.streams_opened);
            }
            SessionCmd::Data { stream, bytes } => {
                // Capacity was checked before receiving; a command larger than what is left
                // is still taken whole so that no byte is lost (the cap is soft by one chunk).
                Metrics::add(&self.metrics.stream_bytes_sent, bytes.len() as u64);
                self.session.send_all(stream, bytes);
            }
            SessionCmd::End { stream } => self.session.end_stream(stream),
            SessionCmd::Reset { stream, reason } => {
                self.session.reset_stream(stream, reason.code());
                forget(streams, stream);
                self.session.stream_closed(stream);
            }
            SessionCmd::Forget { stream } => {
                forget(streams, stream);
                self.session.stream_closed(stream);
            }
            SessionCmd::Mailboxes(boxes) => self.session.set_mailboxes(boxes),
            SessionCmd::Descriptor(bytes) => {
                if matches!(self.role, SessionRole::Central(_)) {
                    self.session.send_descriptor(bytes);
                }
            }
        }
    }
}
