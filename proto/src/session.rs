//! The outer session between a client and the central: a reliable, ordered, flow-controlled
//! channel of frames carried in sealed cells over many paths.
//!
//! Every DATA cell gets a fresh sequence number and is kept until acknowledged; a cell not
//! acknowledged in time is resent, byte for byte, over another path (same nonce, same
//! plaintext, so no nonce reuse). The receiver holds out-of-order cells in a bounded
//! [`ReorderWindow`], delivers frames in order, and grants credit only as the application
//! consumes them, so no buffer grows with what the peer sends.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand_core::CryptoRng;

use crate::aead::AeadAlgorithm;
use crate::cell::{
    self, handshake_cell, handshake_message, sealed_capacity, CellError, CellHeader, CellKind,
    Direction, DirectionKeys, ReplayWindow, SessionId,
};
use crate::frame::{self, AckBlock, Frame, Mailbox, StreamId, MAX_SACK_RANGES};
use crate::noise::{self, HandshakeError, NkInitiator, StaticKeypair};
use crate::wire::{Reader, WireError, Writer};

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub cell_size: usize,
    /// Most unacknowledged cells in flight, and the size of the reorder window.
    pub window_cells: u64,
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
}

impl SessionConfig {
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
}

impl SessionEvent {
    fn weight(&self) -> usize {
        match self {
            SessionEvent::StreamData { data, .. } => data.len() + 16,
            _ => 16,
        }
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

struct Inflight {
    cell: Vec<u8>,
    sent_at: Instant,
    path: PathId,
    /// Where the copy before this one went (the same as `path` until it is resent).
    prev_path: PathId,
    retransmitted: bool,
    backoff: u32,
}

enum TxItem {
    Open(String),
    Data(Vec<u8>, usize),
    End,
    Reset(u8),
}

/// Whether a path takes cells. A rested path carries only a probe cell now and then until
/// one is acked: a path that was slow for a moment (a CPU stall, a queue) comes back within
/// an RTT of its probe; a dead one costs one delayed cell per probe, the probes backing off
/// to one per `path_rest`.
#[derive(Debug, Clone, Copy, Default)]
enum Rest {
    #[default]
    InUse,
    /// The next probe may go at `at`; `gap` is the current spacing.
    ProbeDue { at: Instant, gap: Duration },
    /// A probe sent at `sent` is out: no other cell until it is acked or times out.
    Probing { sent: Instant, gap: Duration },
}

#[derive(Default)]
struct PathHealth {
    timeouts: u32,
    rest: Rest,
    /// Smoothed RTT of cells sent on this path (for [`PathScheduler::LowestDelay`]).
    srtt: Option<Duration>,
    /// Cells sent on this path and not yet acknowledged.
    inflight: u32,
}

/// How new cells are spread over the paths that can take one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathScheduler {
    /// Every path in turn: the most even spread (each node sees the least).
    #[default]
    RoundRobin,
    /// The path with the lowest expected delivery time, `(inflight + 1) × srtt`: fast
    /// paths carry more, slow ones still carry their share.
    LowestDelay,
}

/// RFC 6298 smoothed RTT.
struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    /// The smallest sample seen: no copy sent later than this before an ack can be the one
    /// acknowledged.
    min_rtt: Option<Duration>,
}

impl RttEstimator {
    fn sample(&mut self, rtt: Duration) {
        self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
    }
}

/// The bounded out-of-order buffer: cells from `next` up to `next + window`.
struct ReorderWindow {
    next: u64,
    window: u64,
    held: BTreeMap<u64, Vec<Frame>>,
    held_bytes: usize,
    /// The most recently received sequence number held out of order.
    latest: Option<u64>,
}

impl ReorderWindow {
    fn accepts(&self, seq: u64) -> Result<(), CellError> {
        if seq < self.next || self.held.contains_key(&seq) {
            Err(CellError::Replay)
        } else if seq >= self.next + self.window {
            Err(CellError::OutOfWindow)
        } else {
            Ok(())
        }
    }

    fn insert(&mut self, seq: u64, frames: Vec<Frame>, weight: usize) {
        self.latest = Some(seq);
        self.held_bytes += weight;
        self.held.insert(seq, frames);
    }

    fn pop_ready(&mut self, cell_size: usize) -> Option<Vec<Frame>> {
        let frames = self.held.remove(&self.next)?;
        self.held_bytes = self.held_bytes.saturating_sub(cell_size);
        self.next += 1;
        Some(frames)
    }

    /// Up to `MAX_SACK_RANGES` received ranges above `next`: the one holding the latest
    /// arrival first, then the highest others (RFC 2018 §4), so that cells far above a run of
    /// gaps (a dead path under round-robin) are still acknowledged.
    fn sack_ranges(&self) -> Vec<(u64, u64)> {
        let mut all: Vec<(u64, u64)> = Vec::new();
        for &s in self.held.keys() {
            match all.last_mut() {
                Some((_, e)) if *e == s => *e = s + 1,
                _ => all.push((s, s + 1)),
            }
        }
        let mut out = Vec::with_capacity(MAX_SACK_RANGES);
        if let Some(i) = self
            .latest
            .and_then(|l| all.iter().position(|&(s, e)| s <= l && l < e))
        {
            out.push(all.remove(i));
        }
        let room = MAX_SACK_RANGES - out.len();
        out.extend(all.into_iter().rev().take(room));
        out
    }
}

pub struct Session {
    id: SessionId,
    cfg: SessionConfig,
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

    reorder: ReorderWindow,
    ack_replay: ReplayWindow,
    unacked_received: u32,
    ack_due: Option<Instant>,
    credit_sent: u64,
    events: VecDeque<SessionEvent>,
    event_bytes: usize,

    rtt: RttEstimator,
    last_activity: Instant,
    /// When the reorder window last delivered in order (for the reassembly timeout).
    last_progress: Instant,
    /// Per-stream flow control. Sending: (bytes sent, peer's limit) per stream, and the
    /// streams parked with data but no credit. Receiving: (bytes consumed, limit granted).
    peer_stream_window: u64,
    tx_credit: HashMap<StreamId, (u64, u64)>,
    credit_blocked: std::collections::HashSet<StreamId>,
    rx_credit: HashMap<StreamId, (u64, u64)>,
    stats: SessionStats,
}

/// What a client says when opening a session (sealed to the central in Hello).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHello {
    pub window_cells: u32,
    pub mailboxes: Vec<Mailbox>,
}

/// Handshake payloads: `window u32 | Mailboxes frame | stream_window u32` (Hello) and
/// `window u32 | stream_window u32` (Welcome).
impl SessionHello {
    fn encode(&self, stream_window: u64) -> Result<Vec<u8>, WireError> {
        let f = Frame::Mailboxes {
            boxes: self.mailboxes.clone(),
        };
        let mut buf = vec![0u8; 8 + f.encoded_len()];
        let mut w = Writer::new(&mut buf);
        w.u32(self.window_cells)?;
        f.write_onto(&mut w)?;
        w.u32(clamp_u32(stream_window))?;
        Ok(buf)
    }

    fn decode(b: &[u8]) -> Result<(Self, u64), WireError> {
        let mut r = Reader::new(b);
        let window_cells = r.u32()?;
        let mailboxes = match Frame::take_from(&mut r)? {
            Some(Frame::Mailboxes { boxes }) => boxes,
            _ => return Err(WireError::Invalid("hello without mailboxes")),
        };
        let stream_window = u64::from(r.u32()?);
        Ok((
            SessionHello {
                window_cells,
                mailboxes,
            },
            stream_window,
        ))
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Cell(#[from] CellError),
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("malformed session payload: {0}")]
    Wire(#[from] WireError),
}

fn prologue(session: SessionId, cell_size: usize) -> Vec<u8> {
    let mut p = b"braid/1 outer".to_vec();
    p.extend_from_slice(&session.0);
    p.extend_from_slice(&(cell_size as u32).to_be_bytes());
    p
}

/// A client's session before the central answered.
pub struct PendingSession {
    id: SessionId,
    cfg: SessionConfig,
    init: NkInitiator,
    hello_cell: Vec<u8>,
}

impl PendingSession {
    /// Starts a session with the central whose static key is `central_key`.
    pub fn start(
        rng: &mut impl CryptoRng,
        cfg: SessionConfig,
        central_key: &[u8; 32],
        hello: &SessionHello,
    ) -> Result<Self, SessionError> {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let id = SessionId(id);
        let (init, msg) = noise::initiate(
            rng,
            central_key,
            &prologue(id, cfg.cell_size),
            &hello.encode(cfg.stream_window)?,
        )?;
        let hello_cell = handshake_cell(cfg.cell_size, CellKind::HELLO, id, &msg)?;
        Ok(PendingSession {
            id,
            cfg,
            init,
            hello_cell,
        })
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The Hello cell; resend it (same bytes) until a Welcome arrives.
    pub fn hello_cell(&self) -> &[u8] {
        &self.hello_cell
    }

    pub fn finish(self, now: Instant, welcome: &[u8]) -> Result<Session, SessionError> {
        let h = CellHeader::take_from(welcome)?;
        if h.kind != CellKind::WELCOME {
            return Err(CellError::Kind(h.kind).into());
        }
        if h.session != self.id || welcome.len() != self.cfg.cell_size {
            return Err(CellError::UnknownSession.into());
        }
        let (payload, keys) = self.init.finish(handshake_message(welcome)?)?;
        let mut r = Reader::new(&payload);
        let peer_window = r.u32()?;
        let peer_stream_window = u64::from(r.u32()?);
        let mut session = Session::new(
            self.id,
            Side::Client,
            self.cfg,
            keys.initiator_to_responder,
            keys.responder_to_initiator,
            u64::from(peer_window),
            now,
        );
        session.peer_stream_window = peer_stream_window;
        Ok(session)
    }
}

/// The central's answer to a Hello: the session, what the client asked for, and the Welcome
/// cell (kept by the caller and resent if the same Hello arrives again).
pub struct Accepted {
    pub session: Session,
    pub hello: SessionHello,
    pub welcome_cell: Vec<u8>,
}

pub fn accept(
    rng: &mut impl CryptoRng,
    cfg: SessionConfig,
    central: &StaticKeypair,
    now: Instant,
    hello_cell: &[u8],
) -> Result<Accepted, SessionError> {
    if hello_cell.len() != cfg.cell_size {
        return Err(CellError::Size {
            got: hello_cell.len(),
            expected: cfg.cell_size,
        }
        .into());
    }
    let h = CellHeader::take_from(hello_cell)?;
    if h.kind != CellKind::HELLO {
        return Err(CellError::Kind(h.kind).into());
    }
    let (resp, payload) = noise::respond(
        central,
        &prologue(h.session, cfg.cell_size),
        handshake_message(hello_cell)?,
    )?;
    let (hello, peer_stream_window) = SessionHello::decode(&payload)?;
    let mut welcome = (cfg.window_cells as u32).to_be_bytes().to_vec();
    welcome.extend_from_slice(&clamp_u32(cfg.stream_window).to_be_bytes());
    let (msg2, keys) = resp.reply(rng, &welcome)?;
    let welcome_cell = handshake_cell(cfg.cell_size, CellKind::WELCOME, h.session, &msg2)?;
    let peer_window = u64::from(hello.window_cells).min(cfg.window_cells.max(1) * 4);
    let mut session = Session::new(
        h.session,
        Side::Central,
        cfg,
        keys.responder_to_initiator,
        keys.initiator_to_responder,
        peer_window,
        now,
    );
    session.peer_stream_window = peer_stream_window;
    Ok(Accepted {
        session,
        hello,
        welcome_cell,
    })
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
        Session {
            id,
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
            reorder: ReorderWindow {
                next: 0,
                window,
                held: BTreeMap::new(),
                held_bytes: 0,
                latest: None,
            },
            ack_replay: ReplayWindow::default(),
            unacked_received: 0,
            ack_due: None,
            credit_sent: window,
            events: VecDeque::new(),
            event_bytes: 0,
            rtt: RttEstimator {
                srtt: None,
                rttvar: Duration::ZERO,
                min_rtt: None,
            },
            last_activity: now,
            last_progress: now,
            peer_stream_window: cfg.stream_window,
            tx_credit: HashMap::new(),
            credit_blocked: std::collections::HashSet::new(),
            rx_credit: HashMap::new(),
            stats: SessionStats::default(),
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

    /// Bytes held in the reorder window (bounded by the window times the cell size).
    pub fn reorder_bytes(&self) -> usize {
        self.reorder.held_bytes
    }

    // ---- sending side -------------------------------------------------------------------

    /// Bytes the application may still queue.
    pub fn send_capacity(&self) -> usize {
        self.cfg
            .max_pending_bytes
            .saturating_sub(self.pending_bytes)
    }

    /// Nothing queued and nothing unacknowledged.
    pub fn is_idle(&self) -> bool {
        self.pending_bytes == 0
            && self.control.is_empty()
            && self.ready.is_empty()
            && self.inflight.is_empty()
    }

    fn push_item(&mut self, stream: StreamId, item: TxItem) {
        let q = self.streams.entry(stream).or_default();
        if q.is_empty() {
            self.ready.push_back(stream);
        }
        q.push_back(item);
    }

    pub fn open_stream(&mut self, stream: StreamId, gateway: &str) {
        self.pending_bytes += 16;
        self.push_item(stream, TxItem::Open(gateway.to_owned()));
    }

    /// Queues stream bytes; returns how many were taken (0 when the queue is full).
    pub fn send(&mut self, stream: StreamId, data: &[u8]) -> usize {
        let n = data.len().min(self.send_capacity());
        if n > 0 {
            self.pending_bytes += n;
            self.push_item(stream, TxItem::Data(data[..n].to_vec(), 0));
        }
        n
    }

    /// Queues all of `data`, even past the soft cap: for a driver that checked
    /// `send_capacity` before taking one bounded chunk from a stream.
    pub fn send_all(&mut self, stream: StreamId, data: Vec<u8>) {
        if !data.is_empty() {
            self.pending_bytes += data.len();
            self.push_item(stream, TxItem::Data(data, 0));
        }
    }

    pub fn end_stream(&mut self, stream: StreamId) {
        self.pending_bytes += 16;
        self.push_item(stream, TxItem::End);
    }

    pub fn reset_stream(&mut self, stream: StreamId, code: u8) {
        self.pending_bytes += 16;
        self.push_item(stream, TxItem::Reset(code));
    }

    pub fn set_mailboxes(&mut self, boxes: Vec<Mailbox>) {
        self.control.push_back(Frame::Mailboxes { boxes });
    }

    fn rto(&self) -> Duration {
        match self.rtt.srtt {
            None => self.cfg.initial_rto,
            Some(s) => (s + self.rtt.rttvar * 4).clamp(self.cfg.min_rto, self.cfg.max_rto),
        }
    }

    fn path_usable(&self, p: PathId, now: Instant) -> bool {
        self.paths.get(&p).is_none_or(|h| match h.rest {
            Rest::InUse => true,
            Rest::ProbeDue { at, .. } => now >= at,
            Rest::Probing { .. } => false,
        })
    }

    /// Picks a path (see [`Self::choose_path`]); a rested path picked for a probe gets
    /// no other cell until the next probe is due.
    fn pick_path(&mut self, now: Instant, paths: &[PathId], avoid: Option<PathId>) -> PathId {
        let path = self.choose_path(now, paths, avoid);
        if let Some(h) = self.paths.get_mut(&path) {
            if let Rest::ProbeDue { at, gap } = h.rest {
                if now >= at {
                    h.rest = Rest::Probing { sent: now, gap };
                }
            }
        }
        path
    }

    /// Round-robin over usable paths, avoiding `avoid` if there is any other choice.
    /// Picks a path from `paths` (non-empty): usable ones before rested ones, and any other
    /// than `avoid` before it; among those, by the scheduler. Allocates nothing (per cell).
    fn choose_path(&mut self, now: Instant, paths: &[PathId], avoid: Option<PathId>) -> PathId {
        self.rr = self.rr.wrapping_add(1);
        let rr = self.rr;
        let in_tier = |p: &PathId, tier: u8| match tier {
            0 => self.path_usable(*p, now) && Some(*p) != avoid,
            1 => self.path_usable(*p, now),
            2 => Some(*p) != avoid,
            _ => true,
        };
        let tier = (0..3u8)
            .find(|t| paths.iter().any(|p| in_tier(p, *t)))
            .unwrap_or(3);
        let pool = || paths.iter().copied().filter(move |p| in_tier(p, tier));
        let n = pool().count().max(1);
        let start = rr % n;
        if self.cfg.scheduler == PathScheduler::LowestDelay {
            let known = pool()
                .filter_map(|p| self.paths.get(&p).and_then(|h| h.srtt))
                .min()
                .unwrap_or(Duration::from_millis(1));
            // An unmeasured path is tried as if it were the fastest, so it gets measured.
            let cost = |p: &PathId| {
                let h = self.paths.get(p);
                let rtt = h.and_then(|h| h.srtt).unwrap_or(known).as_nanos();
                rtt * (u128::from(h.map_or(0, |h| h.inflight)) + 1)
            };
            // Start the scan at a rotating offset so that equal costs still alternate.
            if let Some(best) = pool()
                .skip(start)
                .chain(pool().take(start))
                .min_by_key(cost)
            {
                return best;
            }
        }
        pool().nth(start).unwrap_or(paths[0])
    }

    fn note_sent(&mut self, path: PathId) {
        self.paths.entry(path).or_default().inflight += 1;
    }

    fn note_done(&mut self, path: PathId) {
        if let Some(h) = self.paths.get_mut(&path) {
            h.inflight = h.inflight.saturating_sub(1);
        }
    }

    fn sample_path_rtt(&mut self, path: PathId, rtt: Duration) {
        if let Some(h) = self.paths.get_mut(&path) {
            h.srtt = Some(match h.srtt {
                None => rtt,
                Some(s) => (s * 7 + rtt) / 8,
            });
        }
    }

    /// The driver lost a path (its link closed): everything sent on it goes out again now.
    pub fn path_lost(&mut self, path: PathId) {
        for (seq, f) in &self.inflight {
            if f.path == path {
                self.lost.insert(*seq);
            }
        }
        self.paths.remove(&path);
    }

    fn ack_block(&mut self) -> AckBlock {
        let credit = if self.event_bytes < self.cfg.max_event_bytes {
            self.reorder.next + self.reorder.window
        } else {
            self.credit_sent
        };
        self.credit_sent = self.credit_sent.max(credit);
        AckBlock {
            cum: self.reorder.next,
            credit: self.credit_sent,
            ranges: self.reorder.sack_ranges(),
        }
    }

    fn can_send_new(&self) -> bool {
        let lowest = self
            .inflight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_seq);
        self.next_seq < self.peer_credit && self.next_seq < lowest + self.cfg.window_cells
    }

    fn has_new_frames(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Packs queued frames after the ack block into `w`; returns whether any went in.
    fn pack_frames(&mut self, w: &mut Writer<'_>) -> Result<bool, WireError> {
        let mut any = false;
        while let Some(f) = self.control.front() {
            if f.encoded_len() > w.remaining() {
                break;
            }
            f.write_onto(w)?;
            self.control.pop_front();
            any = true;
        }
        while let Some(stream) = self.ready.pop_front() {
            let Some(q) = self.streams.get_mut(&stream) else {
                continue;
            };
            let room = w.remaining();
            let Some(item) = q.front_mut() else {
                self.streams.remove(&stream);
                continue;
            };
            let (frame, done, taken) = match item {
                TxItem::Open(gw) => (
                    Frame::StreamOpen {
                        stream,
                        gateway: gw.clone(),
                    },
                    true,
                    16,
                ),
                TxItem::End => (Frame::StreamEnd { stream }, true, 16),
                TxItem::Reset(code) => (
                    Frame::StreamReset {
                        stream,
                        code: *code,
                    },
                    true,
                    16,
                ),
                TxItem::Data(buf, off) => {
                    let (sent, max) = *self
                        .tx_credit
                        .entry(stream)
                        .or_insert((0, self.peer_stream_window));
                    let credit = usize::try_from(max.saturating_sub(sent)).unwrap_or(usize::MAX);
                    if credit == 0 {
                        // Parked until the peer grants more (StreamCredit).
                        self.credit_blocked.insert(stream);
                        continue;
                    }
                    let left = buf.len() - *off;
                    let n = left
                        .min(room.saturating_sub(frame::STREAM_DATA_OVERHEAD))
                        .min(credit);
                    if n == 0 {
                        self.ready.push_front(stream);
                        break;
                    }
                    if let Some(c) = self.tx_credit.get_mut(&stream) {
                        c.0 += n as u64;
                    }
                    let f = Frame::StreamData {
                        stream,
                        data: buf[*off..*off + n].to_vec(),
                    };
                    *off += n;
                    (f, *off == buf.len(), n)
                }
            };
            if frame.encoded_len() > room {
                self.ready.push_front(stream);
                break;
            }
            frame.write_onto(w)?;
            any = true;
            if matches!(frame, Frame::StreamEnd { .. } | Frame::StreamReset { .. }) {
                self.tx_credit.remove(&stream);
                self.credit_blocked.remove(&stream);
            }
            self.pending_bytes = self.pending_bytes.saturating_sub(taken);
            if done {
                q.pop_front();
            }
            if q.is_empty() {
                self.streams.remove(&stream);
            } else {
                self.ready.push_back(stream);
            }
        }
        Ok(any)
    }

    /// The next cell to send, if any, on one of `paths` (the ones that can take a cell now).
    pub fn poll_transmit(&mut self, now: Instant, paths: &[PathId]) -> Option<Transmit> {
        if paths.is_empty() {
            return None;
        }
        for p in paths {
            self.paths.entry(*p).or_default();
        }
        // 1. Retransmissions first: they hold the window back.
        while let Some(seq) = self.lost.pop_first() {
            let Some(last) = self.inflight.get(&seq).map(|f| f.path) else {
                continue;
            };
            let path = self.pick_path(now, paths, Some(last));
            self.note_done(last);
            self.note_sent(path);
            let Some(f) = self.inflight.get_mut(&seq) else {
                continue;
            };
            f.prev_path = f.path;
            f.path = path;
            f.sent_at = now;
            f.retransmitted = true;
            f.backoff = (f.backoff + 1).min(6);
            self.stats.retransmits += 1;
            return Some(Transmit {
                path,
                cell: f.cell.clone(),
            });
        }
        // 2. New data, carrying the current acknowledgement.
        if self.can_send_new() && self.has_new_frames() {
            let mut body = vec![0u8; sealed_capacity(self.cfg.cell_size)];
            let ack = self.ack_block();
            let mut w = Writer::new(&mut body);
            let packed =
                ack.write_onto(&mut w).is_ok() && matches!(self.pack_frames(&mut w), Ok(true));
            if packed {
                let seq = self.next_seq;
                match self
                    .tx_keys
                    .seal(self.cfg.cell_size, CellKind::DATA, self.id, seq, &body)
                {
                    Ok(cell) => {
                        self.next_seq += 1;
                        self.ack_due = None;
                        self.unacked_received = 0;
                        let path = self.pick_path(now, paths, None);
                        self.note_sent(path);
                        self.inflight.insert(
                            seq,
                            Inflight {
                                cell: cell.clone(),
                                sent_at: now,
                                path,
                                prev_path: path,
                                retransmitted: false,
                                backoff: 0,
                            },
                        );
                        self.stats.data_cells_sent += 1;
                        return Some(Transmit { path, cell });
                    }
                    Err(_) => return None, // epoch space exhausted: the session must end
                }
            }
        }
        // 3. A bare acknowledgement when one is due.
        let due = matches!(self.ack_due, Some(t) if t <= now)
            || self.unacked_received >= self.cfg.ack_every;
        if due {
            let ack = self.ack_block();
            let mut body = vec![0u8; frame::MAX_ACK_LEN];
            let mut w = Writer::new(&mut body);
            if ack.write_onto(&mut w).is_err() {
                return None;
            }
            let seq = self.next_ack_seq;
            let cell = self
                .tx_keys
                .seal(self.cfg.cell_size, CellKind::ACK, self.id, seq, &body)
                .ok()?;
            self.next_ack_seq += 1;
            self.ack_due = None;
            self.unacked_received = 0;
            self.stats.ack_cells_sent += 1;
            // Not `pick_path`: a bare ack is never acknowledged, so it cannot be a probe.
            let path = self.choose_path(now, paths, None);
            return Some(Transmit { path, cell });
        }
        None
    }

    /// When an in-flight cell is due for resending: its RTO (from the current estimate, so
    /// cells sent before the first sample don't wait the initial RTO) with its backoff.
    fn due(&self, f: &Inflight) -> Instant {
        f.sent_at + (self.rto() * (1 << f.backoff)).min(self.cfg.max_rto)
    }

    /// When `handle_timeout` should next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rto = self
            .inflight
            .iter()
            .filter(|(seq, _)| !self.lost.contains(seq))
            .map(|(_, f)| self.due(f))
            .min();
        match (rto, self.ack_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let rto = self.rto();
        // Per path, the latest send time among the cells that expire now.
        let mut failed: Vec<(PathId, Instant)> = Vec::new();
        for (seq, f) in &self.inflight {
            if self.due(f) <= now && !self.lost.contains(seq) {
                self.lost.insert(*seq);
                match failed.iter_mut().find(|(p, _)| *p == f.path) {
                    Some((_, t)) => *t = (*t).max(f.sent_at),
                    None => failed.push((f.path, f.sent_at)),
                }
            }
        }
        // Cells that expire together are one failure of their path, not one each: "in a
        // row" counts timeout events.
        for (p, latest) in failed {
            let h = self.paths.entry(p).or_default();
            match h.rest {
                Rest::InUse => {
                    h.timeouts += 1;
                    if h.timeouts >= self.cfg.path_failures_to_rest {
                        let gap = rto.min(self.cfg.path_rest);
                        h.rest = Rest::ProbeDue { at: now + gap, gap };
                    }
                }
                // Only the probe failing backs the probes off: cells sent before the path
                // was rested keep expiring meanwhile.
                Rest::Probing { sent, gap } if latest >= sent => {
                    let gap = (gap * 2).min(self.cfg.path_rest);
                    h.rest = Rest::ProbeDue { at: now + gap, gap };
                }
                Rest::Probing { .. } | Rest::ProbeDue { .. } => {}
            }
        }
    }

    // ---- receiving side -----------------------------------------------------------------

    fn on_ack(&mut self, now: Instant, ack: &AckBlock) {
        self.peer_credit = self.peer_credit.max(ack.credit);
        let mut newest: Option<(u64, Instant, bool, PathId)> = None;
        // Per acked cell: the path it was last sent on, and the path whose copy arrived.
        let mut done_paths: Vec<(PathId, PathId)> = Vec::new();
        // An ack sooner than half the smallest RTT after a resend acknowledges an earlier
        // copy: the path that carried it was slow, not dead, so it must not stay rested.
        let too_soon = self.rtt.min_rtt.map(|m| m / 2);
        let mut acked =
            |seq: u64, f: Inflight, newest: &mut Option<(u64, Instant, bool, PathId)>| {
                let earlier_copy = f.retransmitted
                    && too_soon.is_some_and(|t| now.saturating_duration_since(f.sent_at) < t);
                done_paths.push((f.path, if earlier_copy { f.prev_path } else { f.path }));
                if newest.is_none_or(|(s, ..)| seq > s) {
                    *newest = Some((seq, f.sent_at, f.retransmitted, f.path));
                }
            };
        if ack.cum > self.peer_cum {
            self.peer_cum = ack.cum;
            let rest = self.inflight.split_off(&ack.cum);
            let done = std::mem::replace(&mut self.inflight, rest);
            for (seq, f) in done {
                acked(seq, f, &mut newest);
            }
        }
        for &(s, e) in &ack.ranges {
            let e = e.min(self.next_seq);
            if e.saturating_sub(s) > self.cfg.window_cells * 2 {
                continue;
            }
            for seq in s..e {
                if let Some(f) = self.inflight.remove(&seq) {
                    acked(seq, f, &mut newest);
                }
            }
        }
        self.lost.retain(|s| self.inflight.contains_key(s));
        for (path, delivered) in done_paths {
            self.note_done(path);
            if let Some(h) = self.paths.get_mut(&delivered) {
                h.timeouts = 0;
                h.rest = Rest::InUse;
            }
        }
        if let Some((_, sent_at, retransmitted, path)) = newest {
            if !retransmitted {
                // Only the newest cell an ack covers was just received: older ones may have
                // waited for a cumulative ack behind a slower path, so they'd skew the sample.
                let rtt = now.saturating_duration_since(sent_at);
                self.rtt.sample(rtt);
                self.sample_path_rtt(path, rtt);
            }
        }
    }

    /// Takes one cell from the peer. Errors say why it was dropped; none is fatal.
    pub fn handle_cell(&mut self, now: Instant, cell: &mut [u8]) -> Result<(), CellError> {
        let r = self.handle_cell_inner(now, cell);
        match &r {
            Ok(()) => self.stats.cells_received += 1,
            Err(CellError::Replay) => self.stats.duplicates += 1,
            Err(_) => self.stats.rejected += 1,
        }
        r
    }

    fn handle_cell_inner(&mut self, now: Instant, cell: &mut [u8]) -> Result<(), CellError> {
        let h = CellHeader::take_from(cell)?;
        if h.session != self.id {
            return Err(CellError::UnknownSession);
        }
        let is_data = h.kind == CellKind::DATA;
        if is_data {
            if let Err(e) = self.reorder.accepts(h.seq) {
                if e == CellError::Replay {
                    // Our ack may have been lost: say again what we have.
                    self.ack_due.get_or_insert(now);
                }
                return Err(e);
            }
        } else if h.kind == CellKind::ACK {
            self.ack_replay.check(h.seq)?;
        } else {
            return Err(CellError::Kind(h.kind));
        }
        let (h, body) = self.rx_keys.open(self.cfg.cell_size, cell)?;
        let (ack, frames) = frame::parse_cell_body(body)?;
        if !is_data {
            self.ack_replay.commit(h.seq);
        }
        self.last_activity = now;
        self.on_ack(now, &ack);
        if !is_data {
            return Ok(());
        }
        let in_order = h.seq == self.reorder.next;
        if in_order || self.reorder.held.is_empty() {
            // Progress, or the first gap: the stall clock starts now.
            self.last_progress = now;
        }
        self.reorder.insert(h.seq, frames, self.cfg.cell_size);
        if in_order {
            self.last_progress = now;
        }
        while let Some(frames) = self.reorder.pop_ready(self.cfg.cell_size) {
            for f in frames {
                let ev = match f {
                    Frame::StreamOpen { stream, gateway } => {
                        SessionEvent::StreamOpened { stream, gateway }
                    }
                    Frame::StreamData { stream, data } => SessionEvent::StreamData { stream, data },
                    Frame::StreamEnd { stream } => SessionEvent::StreamEnd { stream },
                    Frame::StreamReset { stream, code } => {
                        SessionEvent::StreamReset { stream, code }
                    }
                    Frame::Mailboxes { boxes } => SessionEvent::Mailboxes(boxes),
                    Frame::StreamCredit { stream, max } => {
                        self.on_stream_credit(stream, max);
                        SessionEvent::StreamCredit { stream, max }
                    }
                };
                self.event_bytes += ev.weight();
                self.events.push_back(ev);
            }
        }
        self.unacked_received += 1;
        if in_order {
            self.ack_due.get_or_insert(now + self.cfg.ack_delay);
        } else {
            self.ack_due = Some(now);
        }
        Ok(())
    }

    fn on_stream_credit(&mut self, stream: StreamId, max: u64) {
        let window = self.peer_stream_window;
        let c = self.tx_credit.entry(stream).or_insert((0, window));
        c.1 = c.1.max(max);
        if c.1 > c.0 && self.credit_blocked.remove(&stream) && self.streams.contains_key(&stream) {
            self.ready.push_back(stream);
        }
    }

    /// The stream window the peer announced: how far a new stream may send before credit.
    pub fn peer_stream_window(&self) -> u64 {
        self.peer_stream_window
    }

    /// The application took `n` bytes of `stream`: grant the peer more once half the window
    /// is used (a `StreamCredit` frame rides in the next cell).
    pub fn stream_consumed(&mut self, stream: StreamId, n: usize) {
        let window = self.cfg.stream_window.max(1);
        let c = self.rx_credit.entry(stream).or_insert((0, window));
        c.0 += n as u64;
        if c.1.saturating_sub(c.0) <= window / 2 {
            c.1 = c.0 + window;
            let max = c.1;
            self.control.push_back(Frame::StreamCredit { stream, max });
        }
    }

    /// The stream is over in both directions: forget its flow-control state.
    pub fn stream_closed(&mut self, stream: StreamId) {
        self.rx_credit.remove(&stream);
        self.tx_credit.remove(&stream);
        self.credit_blocked.remove(&stream);
    }

    /// The next delivered frame, in order.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let ev = self.events.pop_front()?;
        if !self.cfg.manual_stream_credit {
            match &ev {
                SessionEvent::StreamData { stream, data } => {
                    let (stream, n) = (*stream, data.len());
                    self.stream_consumed(stream, n);
                }
                SessionEvent::StreamEnd { stream } | SessionEvent::StreamReset { stream, .. } => {
                    self.rx_credit.remove(stream);
                }
                _ => {}
            }
        }
        let before = self.event_bytes >= self.cfg.max_event_bytes;
        self.event_bytes = self.event_bytes.saturating_sub(ev.weight());
        // Credit was frozen and the application caught up: tell the peer soon.
        if before && self.event_bytes < self.cfg.max_event_bytes {
            self.ack_due.get_or_insert(
                self.last_activity
                    .max(self.ack_due.unwrap_or(self.last_activity)),
            );
        }
        Some(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn pair(cfg: SessionConfig) -> (Session, Session, Instant) {
        pair_seeded(cfg, 7)
    }

    pub(super) fn pair_seeded(cfg: SessionConfig, seed: u64) -> (Session, Session, Instant) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let central = StaticKeypair::generate(&mut rng);
        let now = Instant::now();
        let hello = SessionHello {
            window_cells: cfg.window_cells as u32,
            mailboxes: vec![Mailbox {
                relay: "relay-1".into(),
                id: [1; 16],
            }],
        };
        let pending =
            PendingSession::start(&mut rng, cfg.clone(), &central.public(), &hello).unwrap();
        let acc = accept(&mut rng, cfg, &central, now, pending.hello_cell()).unwrap();
        assert_eq!(acc.hello, hello);
        let client = pending.finish(now, &acc.welcome_cell).unwrap();
        (client, acc.session, now)
    }

    const P: [PathId; 2] = [PathId(0), PathId(1)];

    /// Moves every cell across, dropping those the filter refuses; returns cells moved.
    fn pump(
        from: &mut Session,
        to: &mut Session,
        now: Instant,
        mut keep: impl FnMut(&Transmit) -> bool,
    ) -> usize {
        let mut n = 0;
        while let Some(mut t) = from.poll_transmit(now, &P) {
            if keep(&t) {
                let _ = to.handle_cell(now, &mut t.cell);
                n += 1;
            }
        }
        n
    }

    fn drain(s: &mut Session) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(ev) = s.poll_event() {
            if let SessionEvent::StreamData { data, .. } = ev {
                out.extend(data);
            }
        }
        out
    }

    #[test]
    fn ordered_delivery_with_loss_and_retransmit_on_other_path() {
        let (mut c, mut s, mut now) = pair(SessionConfig::with_cell_size(1024));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        c.open_stream(1, "gw");
        let mut sent = 0;
        let mut got = Vec::new();
        for _round in 0..2000 {
            sent += c.send(1, &data[sent..]);
            // Path 1 is dead: every cell on it is lost.
            pump(&mut c, &mut s, now, |t| t.path == PathId(0));
            got.extend(drain(&mut s));
            pump(&mut s, &mut c, now, |_| true);
            now += Duration::from_millis(10);
            c.handle_timeout(now);
            s.handle_timeout(now);
            if got.len() == data.len() {
                break;
            }
        }
        assert_eq!(got, data);
        assert!(c.stats().retransmits > 0);
    }

    #[test]
    fn duplicates_and_foreign_cells_are_dropped() {
        let (mut c, mut s, now) = pair(SessionConfig::with_cell_size(1024));
        c.open_stream(1, "gw");
        c.send(1, b"hello");
        let t = c.poll_transmit(now, &P).unwrap();
        let mut a = t.cell.clone();
        s.handle_cell(now, &mut a).unwrap();
        let mut b = t.cell.clone();
        assert_eq!(s.handle_cell(now, &mut b), Err(CellError::Replay));
        let mut tampered = t.cell.clone();
        tampered[100] ^= 1;
        assert!(s.handle_cell(now, &mut tampered).is_err());
        let (_, mut other, _) = pair_seeded(SessionConfig::with_cell_size(1024), 8);
        let mut c2 = t.cell.clone();
        assert_eq!(
            other.handle_cell(now, &mut c2),
            Err(CellError::UnknownSession)
        );
        assert_eq!(
            drain(&mut s),
            b"hello".to_vec(),
            "exactly one copy delivered"
        );
    }

    #[test]
    fn reorder_window_is_bounded() {
        let mut cfg = SessionConfig::with_cell_size(1024);
        cfg.window_cells = 8;
        let (mut c, mut s, now) = pair(cfg);
        c.open_stream(1, "gw");
        c.send(1, &vec![1u8; 100_000]);
        let mut cells = Vec::new();
        while let Some(t) = c.poll_transmit(now, &P) {
            cells.push(t.cell);
        }
        assert_eq!(cells.len(), 8, "sender respects the window");
        // Withhold the first cell: the others wait, bounded by the window.
        for cell in cells.iter_mut().skip(1) {
            s.handle_cell(now, cell).unwrap();
        }
        assert_eq!(s.reorder_bytes(), 7 * 1024);
        assert!(s.poll_event().is_none());
        s.handle_cell(now, &mut cells[0]).unwrap();
        assert!(s.poll_event().is_some());
    }
}

#[cfg(test)]
mod scheduler_tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// Path 1 answers in 1 ms, path 2 in 20 ms: the lowest-delay scheduler puts most cells
    /// on path 1 and still uses path 2; round-robin splits evenly.
    #[test]
    fn lowest_delay_prefers_the_fast_path() {
        for (sched, check) in [
            (
                PathScheduler::LowestDelay,
                (|fast: u64, slow: u64| fast > 3 * slow && slow > 0) as fn(u64, u64) -> bool,
            ),
            (PathScheduler::RoundRobin, |fast: u64, slow: u64| {
                fast.abs_diff(slow) <= fast / 10 + 2
            }),
        ] {
            let mut rng = ChaCha20Rng::seed_from_u64(11);
            let central = StaticKeypair::generate(&mut rng);
            let mut cfg = SessionConfig::with_cell_size(1024);
            cfg.scheduler = sched;
            let t0 = Instant::now();
            let hello = SessionHello {
                window_cells: 1024,
                mailboxes: vec![],
            };
            let p =
                PendingSession::start(&mut rng, cfg.clone(), &central.public(), &hello).unwrap();
            let acc = accept(&mut rng, cfg, &central, t0, p.hello_cell()).unwrap();
            let mut c = p.finish(t0, &acc.welcome_cell).unwrap();
            let mut s = acc.session;
            c.open_stream(1, "gw");
            let paths = [PathId(1), PathId(2)];
            // (deliver_at, cell) queue; the slow path delays cells by 20 ms.
            let mut wire: Vec<(Instant, Vec<u8>)> = Vec::new();
            let mut sent = [0u64; 2];
            let mut now = t0;
            let data = vec![7u8; 4 << 20];
            let mut off = 0;
            for _ in 0..4000 {
                off += c.send(1, &data[off..]);
                while let Some(t) = c.poll_transmit(now, &paths) {
                    let delay = if t.path == PathId(1) { 1 } else { 20 };
                    sent[(t.path.0 - 1) as usize] += 1;
                    wire.push((now + Duration::from_millis(delay), t.cell));
                }
                let (due, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|(at, _)| *at <= now);
                wire = later;
                for (_, mut cell) in due {
                    let _ = s.handle_cell(now, &mut cell);
                }
                while s.poll_event().is_some() {}
                while let Some(mut t) = s.poll_transmit(now, &paths) {
                    let _ = c.handle_cell(now, &mut t.cell);
                }
                now += Duration::from_millis(1);
                c.handle_timeout(now);
                s.handle_timeout(now);
            }
            assert!(
                check(sent[0], sent[1]),
                "{sched:?}: fast {} slow {}",
                sent[0],
                sent[1]
            );
        }
    }
}

#[cfg(test)]
mod path_rest_tests {
    use super::*;

    /// Runs a 2-path transfer for `ms` virtual milliseconds. Path 2 holds every cell sent
    /// in `stall` until its end (a slow moment: CPU, a queue) or, with `dead`, loses every
    /// cell from the stall's start on. Returns the cells sent per path in each millisecond.
    fn run(ms: u64, stall: std::ops::Range<u64>, dead: bool) -> Vec<[u64; 2]> {
        let (mut c, mut s, t0) = super::tests::pair_seeded(SessionConfig::with_cell_size(1024), 5);
        let at = |m: u64| t0 + Duration::from_millis(m);
        c.open_stream(1, "gw");
        let paths = [PathId(1), PathId(2)];
        let mut wire: Vec<(Instant, Vec<u8>)> = Vec::new();
        let mut sent = Vec::new();
        let data = vec![7u8; 64 << 20];
        let mut off = 0;
        for m in 0..ms {
            let now = at(m);
            let mut this = [0u64; 2];
            off += c.send(1, &data[off..]);
            // Paths carry a few cells per millisecond, so the transfer takes virtual time.
            for _ in 0..8 {
                let Some(t) = c.poll_transmit(now, &[paths[0], paths[1]]) else {
                    break;
                };
                this[(t.path.0 - 1) as usize] += 1;
                let deliver = if t.path == PathId(2) && stall.contains(&m) {
                    (!dead).then(|| at(stall.end))
                } else if t.path == PathId(2) && dead && m >= stall.start {
                    None
                } else {
                    Some(now + Duration::from_millis(2))
                };
                if let Some(d) = deliver {
                    wire.push((d, t.cell));
                }
            }
            sent.push(this);
            let (due, later): (Vec<_>, Vec<_>) = wire.drain(..).partition(|(t, _)| *t <= now);
            wire = later;
            for (_, mut cell) in due {
                let _ = s.handle_cell(now, &mut cell);
            }
            while s.poll_event().is_some() {}
            while let Some(mut t) = s.poll_transmit(now, &paths) {
                let _ = c.handle_cell(now, &mut t.cell);
            }
            c.handle_timeout(at(m + 1));
            s.handle_timeout(at(m + 1));
        }
        sent
    }

    fn share(sent: &[[u64; 2]], r: std::ops::Range<usize>) -> (u64, u64) {
        sent[r]
            .iter()
            .fold((0, 0), |(a, b), x| (a + x[0], b + x[1]))
    }

    /// A path that stalls for half a second is rested, probed, and back in use within a
    /// few hundred ms of the stall's end, not after a whole rest period.
    #[test]
    fn a_slow_moment_does_not_sideline_a_path() {
        let sent = run(2000, 300..800, false);
        let (a, b) = share(&sent, 900..1400);
        assert!(a > 0 && b * 10 >= (a + b) * 4, "after the stall: {a} / {b}");
    }

    /// A path that dies silently gets a few probes and then nearly nothing: the other path
    /// carries the transfer.
    #[test]
    fn a_dead_path_gets_only_probes() {
        let sent = run(6000, 300..6000, true);
        let (a, b) = share(&sent, 1000..6000);
        assert!(a > 1000, "the live path carries on ({a})");
        eprintln!("dead path: {b} cells in 5 s, live path {a}");
        assert!(b <= 10, "the dead path got {b} cells in 5 s");
    }
}

#[cfg(test)]
mod stream_credit_tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    /// A receiver that stops consuming one stream stops only that stream, at its window;
    /// another stream of the same session keeps flowing, and the stalled one resumes when
    /// consumed.
    #[test]
    fn a_stalled_stream_does_not_block_the_others() {
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let central = StaticKeypair::generate(&mut rng);
        let mut cfg = SessionConfig::with_cell_size(1024);
        cfg.stream_window = 64 * 1024;
        cfg.manual_stream_credit = true;
        let t0 = Instant::now();
        let hello = SessionHello {
            window_cells: 1024,
            mailboxes: vec![],
        };
        let p = PendingSession::start(&mut rng, cfg.clone(), &central.public(), &hello).unwrap();
        let acc = accept(&mut rng, cfg, &central, t0, p.hello_cell()).unwrap();
        let mut c = p.finish(t0, &acc.welcome_cell).unwrap();
        let mut s = acc.session;
        assert_eq!(c.peer_stream_window(), 64 * 1024);
        c.open_stream(1, "gw");
        c.open_stream(2, "gw");
        let data = vec![1u8; 1 << 20];
        let (mut got1, mut got2) = (0usize, 0usize);
        let paths = [PathId(0)];
        let pump = |c: &mut Session,
                    s: &mut Session,
                    consume1: bool,
                    got1: &mut usize,
                    got2: &mut usize| {
            for _ in 0..200 {
                while let Some(mut t) = c.poll_transmit(t0, &paths) {
                    let _ = s.handle_cell(t0, &mut t.cell);
                }
                while let Some(ev) = s.poll_event() {
                    if let SessionEvent::StreamData { stream, data } = ev {
                        if stream == 1 {
                            *got1 += data.len();
                            if consume1 {
                                s.stream_consumed(1, data.len());
                            }
                        } else {
                            *got2 += data.len();
                            s.stream_consumed(2, data.len());
                        }
                    }
                }
                while let Some(mut t) = s.poll_transmit(t0 + Duration::from_secs(1), &paths) {
                    let _ = c.handle_cell(t0, &mut t.cell);
                }
                let cap = c.send_capacity().min(8192);
                if cap > 0 {
                    c.send(1, &data[..cap / 2]);
                    c.send(2, &data[..cap / 2]);
                }
            }
        };
        pump(&mut c, &mut s, false, &mut got1, &mut got2);
        assert_eq!(got1, 64 * 1024, "stream 1 stops at its window");
        assert!(got2 > 256 * 1024, "stream 2 keeps flowing ({got2})");
        let before = got1;
        s.stream_consumed(1, got1);
        pump(&mut c, &mut s, true, &mut got1, &mut got2);
        assert!(got1 > before, "stream 1 resumes once consumed");
    }
}
