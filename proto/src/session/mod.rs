//! The outer session between a client and the central: a reliable, ordered, flow-controlled
//! channel of frames carried in sealed cells over many paths.
//!
//! Every DATA cell gets a fresh sequence number and is kept until acknowledged; a cell not
//! acknowledged in time is resent, byte for byte, over another path (same nonce, same
//! plaintext, so no nonce reuse). The receiver holds out-of-order cells in a bounded
//! [`ReorderWindow`], delivers frames in order, and grants credit only as the application
//! consumes them, so no buffer grows with what the peer sends.
//!
//! Sans-IO, like quinn-proto: the driver feeds cells in ([`Session::handle_cell`]), takes
//! cells out ([`Session::poll_transmit`]), events ([`Session::poll_event`]) and timers
//! ([`Session::poll_timeout`]). The `impl Session` is split by concern: `handshake`
//! (opening), `send` (queues and stream credit), `recv` (delivery and acks), `recovery`
//! (in-flight cells, RTT, resending), `paths` (scheduling and resting), `reorder`.
//!
//! A session can fail: when a direction's key epochs are used up it cannot seal another
//! cell. It then sends nothing more and reports [`SessionEvent::Failed`] once; the driver
//! must end it (and open a new session with a fresh handshake).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::aead::AeadAlgorithm;
use crate::cell::{self, CellError, Direction, DirectionKeys, ReplayWindow, SessionId};
use crate::frame::{Frame, Mailbox, StreamId};
use crate::noise::HandshakeError;
use crate::wire::WireError;

mod handshake;
mod labels;
mod mailbox_policy;
mod path_table;
mod paths;
mod recovery;
mod recv;
mod reorder;
mod send;
mod snapshot;

#[cfg(test)]
mod flood_tests;
#[cfg(test)]
mod path_rest_tests;
#[cfg(test)]
mod scheduler_tests;
#[cfg(test)]
mod stream_credit_tests;
#[cfg(test)]
mod tests;

pub use handshake::{
    accept, check_hello, session_id_of, Accepted, HelloClock, HelloTicket, PendingSession,
    SessionHello, MAX_EFFORT,
};
pub use labels::{LabelTable, PathLabels, LABELS_AHEAD, MAX_LABELS};
pub use mailbox_policy::MailboxPolicy;
pub use path_table::{LivePath, PathTable};
pub use paths::{PathScheduler, UnknownPathScheduler};
pub use snapshot::{PathCounters, PathSnapshot, PathState, SessionSnapshot};

use paths::PathHealth;
use recovery::{Inflight, RttEstimator};
use reorder::ReorderWindow;
use send::TxItem;

/// What an honestly packed cell costs in memory beyond its size once decoded: a few frame
/// headers and the frame vector (a full `StreamData` cell is one or two frames).
pub const HONEST_CELL_SLACK: usize = 512;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub cell_size: usize,
    /// Most unacknowledged cells in flight, and the size of the reorder window.
    pub window_cells: u64,
    /// Cells of one kind sealed under one key before the next epoch's key. Epochs are 16
    /// bits, so a direction can seal `epoch_cells << 16` cells of a kind in all.
    pub epoch_cells: u64,
    pub aead: AeadAlgorithm,
    pub ack_delay: Duration,
    pub ack_every: u32,
    pub initial_rto: Duration,
    pub min_rto: Duration,
    pub max_rto: Duration,
    /// Bytes the application may queue for sending before `send` pushes back.
    pub max_pending_bytes: usize,
    /// Delivered bytes the application has not taken before credit stops growing.
    pub max_event_bytes: usize,
    /// A path whose cells time out this many times in a row is rested: it carries only a
    /// probe cell now and then until one is acknowledged.
    pub path_failures_to_rest: u32,
    /// The longest gap between probes of a rested path (they start one RTO apart and
    /// double with each probe that times out).
    pub path_rest: Duration,
    pub scheduler: PathScheduler,
    /// Stream bytes this end lets a peer send ahead of what the application consumed, per
    /// stream (announced in the handshake).
    pub stream_window: u64,
    /// When false, a stream's bytes count as consumed as soon as `poll_event` returns them;
    /// a driver that buffers per stream sets it and calls [`Session::stream_consumed`].
    pub manual_stream_credit: bool,
    /// With nothing in flight for this long, send a keepalive: a DATA cell with no frames,
    /// sealed and full-size like any other, which the peer acknowledges. It keeps the
    /// peer's idle timer from firing and lets this end notice a dead peer. `None`: never.
    pub keepalive: Option<Duration>,
    /// The peer counts as gone when a cell has waited this long for an acknowledgement
    /// (and at least 3 RTOs) and nothing at all has come from the peer meanwhile; the
    /// session then fails with [`SessionError::PeerSilent`]. `None`: never.
    pub peer_timeout: Option<Duration>,
}

impl SessionConfig {
    /// Memory the reorder window may hold, counted as decoded frames take it (see
    /// [`crate::frame::Frame::mem_size`]): the window's cells plus [`HONEST_CELL_SLACK`]
    /// each, so only cells packed with tiny frames meet it. An out-of-order cell past it
    /// is dropped unacknowledged.
    pub fn max_reorder_bytes(&self) -> usize {
        let cells = usize::try_from(self.window_cells.max(1)).unwrap_or(usize::MAX);
        cells.saturating_mul(self.cell_size + HONEST_CELL_SLACK)
    }

    pub fn with_cell_size(cell_size: usize) -> Self {
        SessionConfig {
            cell_size,
            window_cells: 1024,
            epoch_cells: cell::DEFAULT_EPOCH_CELLS,
            aead: AeadAlgorithm::Aes256Gcm,
            ack_delay: Duration::from_millis(5),
            ack_every: 16,
            initial_rto: Duration::from_millis(1000),
            min_rto: Duration::from_millis(200),
            max_rto: Duration::from_secs(5),
            max_pending_bytes: 4 << 20,
            max_event_bytes: 4 << 20,
            path_failures_to_rest: 2,
            path_rest: Duration::from_secs(2),
            scheduler: PathScheduler::RoundRobin,
            stream_window: 4 << 20,
            manual_stream_credit: false,
            keepalive: None,
            peer_timeout: None,
        }
    }
}

/// A way for cells to leave this end (an upstream; or a downstream/relay pair). The driver
/// decides what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u32);

#[derive(Debug)]
pub struct Transmit {
    pub path: PathId,
    pub cell: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    StreamOpened {
        stream: StreamId,
        gateway: String,
    },
    /// The peer raised this stream's send limit to `max` bytes (cumulative).
    StreamCredit {
        stream: StreamId,
        max: u64,
    },
    StreamData {
        stream: StreamId,
        data: Vec<u8>,
    },
    StreamEnd {
        stream: StreamId,
    },
    StreamReset {
        stream: StreamId,
        code: u8,
    },
    Mailboxes(Vec<Mailbox>),
    /// Client side: the central passed on a member's signed descriptor (unverified here).
    Descriptor(Vec<u8>),
    /// The session cannot go on (e.g. [`SessionError::KeysExhausted`]) and sends nothing
    /// more. Reported once; the driver must end the session and, to carry on, handshake a
    /// new one.
    Failed(SessionError),
}

impl SessionEvent {
    /// What the event takes in memory (as [`crate::frame::Frame::mem_size`] counts it).
    fn weight(&self) -> usize {
        let heap = match self {
            SessionEvent::StreamData { data, .. } => data.capacity(),
            SessionEvent::StreamOpened { gateway, .. } => gateway.capacity(),
            SessionEvent::Descriptor(bytes) => bytes.capacity(),
            SessionEvent::Mailboxes(boxes) => {
                boxes.capacity() * std::mem::size_of::<Mailbox>()
                    + boxes.iter().map(|b| b.relay.capacity()).sum::<usize>()
            }
            _ => 0,
        };
        std::mem::size_of::<SessionEvent>() + heap
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Central,
}

/// Counters a node exports; they are the test's evidence, not its assumption.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionStats {
    pub data_cells_sent: u64,
    pub ack_cells_sent: u64,
    pub retransmits: u64,
    pub cells_received: u64,
    pub duplicates: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Cell(#[from] CellError),
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("malformed session payload: {0}")]
    Wire(#[from] WireError),
    /// Every key epoch of a sequence space is used up: no further cell can be sealed
    /// without reusing a nonce. Only a new session (a new handshake) can go on.
    #[error("session keys exhausted: every key epoch is used up")]
    KeysExhausted,
    /// Cells went unacknowledged past the peer timeout and nothing came from the peer: it
    /// has gone (a central that restarted no longer knows the session).
    #[error("the peer stopped answering")]
    PeerSilent,
    /// A handshake cell with header fields or padding that are not zero.
    #[error("handshake cell not in canonical form")]
    NotCanonical,
    /// A Hello whose session id is not the hash of its ephemeral key.
    #[error("hello names a session id that is not its own")]
    ForeignId,
    /// A Hello whose time is outside the central's replay window.
    #[error("hello too old or from the future")]
    Stale,
}

pub struct Session {
    id: SessionId,
    side: Side,
    cfg: SessionConfig,
    /// Client side: the label each path's cells carry (`labels` of the next index), drawn
    /// anew after the path is lost.
    labels: PathLabels,
    path_labels: HashMap<PathId, cell::Label>,
    next_label: u64,
    tx_keys: DirectionKeys,
    rx_keys: DirectionKeys,

    next_seq: u64,
    next_ack_seq: u64,
    inflight: BTreeMap<u64, Inflight>,
    lost: BTreeSet<u64>,
    peer_cum: u64,
    peer_credit: u64,
    control: VecDeque<Frame>,
    streams: HashMap<StreamId, VecDeque<TxItem>>,
    ready: VecDeque<StreamId>,
    pending_bytes: usize,
    rr: usize,
    paths: HashMap<PathId, PathHealth>,
    /// What each path carried, for [`Session::snapshot`] (kept when a path is lost).
    path_counters: HashMap<PathId, PathCounters>,

    reorder: ReorderWindow,
    ack_replay: ReplayWindow,
    unacked_received: u32,
    ack_due: Option<Instant>,
    credit_sent: u64,
    events: VecDeque<SessionEvent>,
    event_bytes: usize,

    rtt: RttEstimator,
    last_activity: Instant,
    /// When a DATA cell last went out (for keepalives).
    last_data_sent: Instant,
    /// When the reorder window last delivered in order (for the reassembly timeout).
    last_progress: Instant,
    /// Per-stream flow control. Sending: (bytes sent, peer's limit) per stream, and the
    /// streams parked with data but no credit. Receiving: (bytes consumed, limit granted).
    peer_stream_window: u64,
    tx_credit: HashMap<StreamId, (u64, u64)>,
    credit_blocked: HashSet<StreamId>,
    rx_credit: HashMap<StreamId, (u64, u64)>,
    stats: SessionStats,

    /// A DATA cell should go now even with nothing to say (the client's first, which
    /// confirms a new session to the central).
    confirm_due: bool,
    /// Why the session cannot go on; once set, nothing more is sent.
    failed: Option<SessionError>,
    /// `failed` is set and `poll_event` has not returned it yet.
    failure_unreported: bool,
}

impl Session {
    fn new(
        id: SessionId,
        side: Side,
        cfg: SessionConfig,
        tx: [u8; 32],
        rx: [u8; 32],
        peer_window: u64,
        now: Instant,
    ) -> Self {
        let (tx_dir, rx_dir) = match side {
            Side::Client => (Direction::ClientToCentral, Direction::CentralToClient),
            Side::Central => (Direction::CentralToClient, Direction::ClientToCentral),
        };
        let window = cfg.window_cells.max(1);
        let labels = PathLabels::from_base(match side {
            Side::Client => &tx,
            Side::Central => &rx,
        });
        Session {
            id,
            side,
            labels,
            path_labels: HashMap::new(),
            next_label: 0,
            tx_keys: DirectionKeys::new(tx, cfg.aead, tx_dir, cfg.epoch_cells),
            rx_keys: DirectionKeys::new(rx, cfg.aead, rx_dir, cfg.epoch_cells),
            next_seq: 0,
            next_ack_seq: 0,
            inflight: BTreeMap::new(),
            lost: BTreeSet::new(),
            peer_cum: 0,
            peer_credit: peer_window,
            control: VecDeque::new(),
            streams: HashMap::new(),
            ready: VecDeque::new(),
            pending_bytes: 0,
            rr: 0,
            paths: HashMap::new(),
            path_counters: HashMap::new(),
            reorder: ReorderWindow::new(window),
            ack_replay: ReplayWindow::default(),
            unacked_received: 0,
            ack_due: None,
            credit_sent: window,
            events: VecDeque::new(),
            event_bytes: 0,
            rtt: RttEstimator::default(),
            last_activity: now,
            last_data_sent: now,
            last_progress: now,
            peer_stream_window: cfg.stream_window,
            tx_credit: HashMap::new(),
            credit_blocked: HashSet::new(),
            rx_credit: HashMap::new(),
            stats: SessionStats::default(),
            confirm_due: false,
            failed: None,
            failure_unreported: false,
            cfg,
        }
    }

    pub fn id(&self) -> SessionId {
        self.id
    }
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }
    pub fn cell_size(&self) -> usize {
        self.cfg.cell_size
    }
    /// When a cell last arrived from the peer.
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }
    /// How long out-of-order cells have waited for a missing one (zero when none wait).
    /// A session stalled past the reassembly timeout is torn down by its driver.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        if self.reorder.held.is_empty() {
            Duration::ZERO
        } else {
            now.saturating_duration_since(self.last_progress)
        }
    }

    /// Audits every (key, nonce) pair this end seals with (tests).
    pub fn set_seal_audit(&mut self, audit: crate::cell::SealAudit) {
        self.tx_keys.set_seal_audit(audit);
    }

    /// Bytes held in the reorder window, as the decoded frames take them in memory (bounded
    /// by [`SessionConfig::max_reorder_bytes`]).
    pub fn reorder_bytes(&self) -> usize {
        self.reorder.held_bytes
    }

    /// The next cell to send, if any, on one of `paths` (the ones that can take a cell now).
    /// Nothing once the session has failed.
    pub fn poll_transmit(&mut self, now: Instant, paths: &[PathId]) -> Option<Transmit> {
        let mut t = self.poll_unlabelled(now, paths)?;
        // Toward the client the mailbox names the session: no label at all.
        if self.side == Side::Client {
            let (next, labels) = (&mut self.next_label, &self.labels);
            let label = *self.path_labels.entry(t.path).or_insert_with(|| {
                *next += 1;
                labels.label(*next - 1)
            });
            cell::set_label(&mut t.cell, label);
        }
        Some(t)
    }

    /// What a session's labels derive from: the central registers them
    /// ([`LabelTable`]).
    pub fn path_labels(&self) -> PathLabels {
        self.labels.clone()
    }

    fn poll_unlabelled(&mut self, now: Instant, paths: &[PathId]) -> Option<Transmit> {
        if paths.is_empty() || self.failed.is_some() {
            return None;
        }
        for p in paths {
            self.paths.entry(*p).or_default();
        }
        // 1. Retransmissions first: they hold the window back.
        if let Some(t) = self.poll_retransmit(now, paths) {
            return Some(t);
        }
        // 2. New data, carrying the current acknowledgement.
        if let Some(t) = self.poll_new_data(now, paths) {
            return Some(t);
        }
        if self.failed.is_some() {
            return None;
        }
        // 3. A bare acknowledgement when one is due.
        self.poll_ack(now, paths)
    }

    /// Sealing failed. Its sequence number is the only input that can make it fail (past
    /// the last epoch), and the cell's frames are already taken from their queues: the
    /// session is over either way.
    fn seal_failed(&mut self, e: CellError) {
        self.fail(match e {
            CellError::Epoch => SessionError::KeysExhausted,
            e => SessionError::Cell(e),
        });
    }

    /// The session cannot go on: nothing more is sent, and `poll_event` says why once.
    fn fail(&mut self, e: SessionError) {
        if self.failed.is_none() {
            self.failed = Some(e);
            self.failure_unreported = true;
        }
    }
}
