//! Session tests: delivery under loss, duplicates and foreign cells, the reorder bound.

use super::*;
use crate::noise::StaticKeypair;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn pair(cfg: SessionConfig) -> (Session, Session, Instant) {
    pair_seeded(cfg, 7)
}

pub(super) fn pair_seeded(cfg: SessionConfig, seed: u64) -> (Session, Session, Instant) {
    let mailboxes = vec![Mailbox {
        relay: "relay-1".into(),
        id: [1; 16],
    }];
    pair_with_mailboxes(cfg, seed, mailboxes)
}

/// A client and a central session after an honest handshake (keys and randomness from
/// `seed`); the client's Hello offers `cfg`'s window and these mailboxes.
pub(super) fn pair_with_mailboxes(
    cfg: SessionConfig,
    seed: u64,
    mailboxes: Vec<Mailbox>,
) -> (Session, Session, Instant) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let central = StaticKeypair::generate(&mut rng);
    let now = Instant::now();
    let hello = SessionHello {
        window_cells: cfg.window_cells as u32,
        mailboxes,
        limits_pass: Vec::new(),
    };
    let pending =
        PendingSession::start(&mut rng, cfg.clone(), &central.public(), &hello, 0, 0).unwrap();
    let acc = accept(
        &mut rng,
        cfg,
        &central,
        now,
        super::HelloClock::ANY,
        pending.hello_cell(),
    )
    .unwrap();
    assert_eq!(acc.hello, hello);
    let client = pending.finish(now, &acc.welcome_cell).unwrap();
    (client, acc.session, now)
}

/// Cells on their way from the client to the central, each with the time it arrives.
pub(super) type Wire = Vec<(Instant, Vec<u8>)>;

/// One tick of a transfer over delayed paths: the central `s` gets every cell on `wire` due
/// by `now`, its events are dropped, its answers reach the client `c` at once, and then both
/// run their timers at `next`.
pub(super) fn tick(
    c: &mut Session,
    s: &mut Session,
    wire: &mut Wire,
    paths: &[PathId],
    now: Instant,
    next: Instant,
) {
    let (due, later): (Wire, Wire) = wire.drain(..).partition(|(at, _)| *at <= now);
    *wire = later;
    for (_, mut cell) in due {
        let _ = s.handle_cell(now, &mut cell);
    }
    while s.poll_event().is_some() {}
    while let Some(mut t) = s.poll_transmit(now, paths) {
        let _ = c.handle_cell(now, &mut t.cell);
    }
    c.handle_timeout(next);
    s.handle_timeout(next);
}

pub(super) const P: [PathId; 2] = [PathId(0), PathId(1)];

/// Moves every cell across, dropping those the filter refuses; returns cells moved.
pub(super) fn pump(
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
    // Another session's keys unmask garbage and its seal fails: nothing is delivered.
    assert!(other.handle_cell(now, &mut c2).is_err());
    assert!(other.poll_event().is_none());
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
    // Charged as the decoded frames take memory: about a cell each for honest cells.
    let held = s.reorder_bytes();
    assert!(
        (7 * 900..=7 * (1024 + HONEST_CELL_SLACK)).contains(&held),
        "{held}"
    );
    assert!(s.poll_event().is_none());
    s.handle_cell(now, &mut cells[0]).unwrap();
    assert!(s.poll_event().is_some());
}

/// With one cell per epoch the 2^16 epochs last exactly 65,536 DATA cells: the next one
/// cannot be sealed, so the session reports `Failed(KeysExhausted)` once and then sends
/// nothing (no data, no acks, no resends) and asks for no timer.
#[test]
fn running_out_of_key_epochs_fails_the_session() {
    let mut cfg = SessionConfig::with_cell_size(1024);
    cfg.epoch_cells = 1;
    let (mut c, mut s, mut now) = pair(cfg);
    c.open_stream(1, "gw");
    let data = vec![9u8; 1 << 20];
    let mut failures = Vec::new();
    for _round in 0..200 {
        c.send(1, &data);
        pump(&mut c, &mut s, now, |_| true);
        drain(&mut s);
        pump(&mut s, &mut c, now, |_| true);
        while let Some(ev) = c.poll_event() {
            if let SessionEvent::Failed(e) = ev {
                failures.push(e);
            }
        }
        if !failures.is_empty() {
            break;
        }
        now += Duration::from_millis(10);
        c.handle_timeout(now);
        s.handle_timeout(now);
    }
    assert_eq!(failures, vec![SessionError::KeysExhausted]);
    assert_eq!(c.stats().data_cells_sent, 1 << 16, "every epoch was used");
    assert_eq!(c.stats().retransmits, 0);
    // Failed: still data queued and a stream to serve, yet nothing goes out, ever.
    assert!(!c.is_idle());
    c.set_mailboxes(vec![]);
    now += Duration::from_secs(60);
    c.handle_timeout(now);
    assert!(c.poll_transmit(now, &P).is_none());
    assert_eq!(c.poll_timeout(), None);
    assert!(c.poll_event().is_none(), "the failure is reported once");
    // The peer is unaffected: it has everything sealed before the end.
    assert_eq!(s.stats().cells_received, 1 << 16);
}

fn failures(s: &mut Session) -> Vec<SessionError> {
    let mut out = Vec::new();
    while let Some(ev) = s.poll_event() {
        if let SessionEvent::Failed(e) = ev {
            out.push(e);
        }
    }
    out
}

fn live_cfg() -> SessionConfig {
    let mut cfg = SessionConfig::with_cell_size(1024);
    cfg.keepalive = Some(Duration::from_secs(1));
    cfg.peer_timeout = Some(Duration::from_secs(2));
    cfg
}

/// A quiet session with a live peer: a keepalive goes out every second, is acknowledged,
/// and the session neither fails nor lets the peer's idle clock run for long.
#[test]
fn keepalives_keep_a_quiet_session_alive() {
    let (mut c, mut s, t0) = pair(live_cfg());
    let mut now = t0;
    while now < t0 + Duration::from_secs(60) {
        now += Duration::from_millis(100);
        c.handle_timeout(now);
        s.handle_timeout(now);
        pump(&mut c, &mut s, now, |_| true);
        pump(&mut s, &mut c, now, |_| true);
        assert_eq!(failures(&mut c), vec![], "at {:?}", now - t0);
        assert!(
            now.saturating_duration_since(s.last_activity()) <= Duration::from_millis(1100),
            "the central heard nothing for too long at {:?}",
            now - t0
        );
    }
    let keepalives = c.stats().data_cells_sent;
    assert!(
        (55..=62).contains(&keepalives),
        "{keepalives} keepalives in 60 s"
    );
    assert_eq!(c.stats().retransmits, 0);
}

/// A peer that stopped answering (a central that restarted and lost the session) is
/// noticed: the client's first cell (the one that confirms a new session, sent at once)
/// goes unacknowledged, and 3 RTOs (the initial 1 s each, with no sample) after it the
/// session fails with `PeerSilent`, not before, and sends no more.
#[test]
fn a_silent_peer_fails_the_session() {
    let (mut c, _s, t0) = pair(live_cfg());
    let mut now = t0;
    let mut failed_at = None;
    while now < t0 + Duration::from_secs(10) {
        now += Duration::from_millis(100);
        c.handle_timeout(now);
        while c.poll_transmit(now, &P).is_some() {}
        let f = failures(&mut c);
        if !f.is_empty() {
            assert_eq!(f, vec![SessionError::PeerSilent]);
            failed_at = Some(now - t0);
            break;
        }
    }
    let at = failed_at.expect("the silent peer was never noticed");
    assert!(
        (Duration::from_millis(3000)..=Duration::from_millis(3300)).contains(&at),
        "noticed at {at:?}, expected 3 s after the first cell"
    );
    assert!(c.poll_transmit(now, &P).is_none());
    assert_eq!(c.poll_timeout(), None);
}

/// Without the settings, neither keepalives nor the verdict happen (the central's end).
#[test]
fn no_keepalive_and_no_verdict_unless_configured() {
    let (_c, mut c, t0) = pair(SessionConfig::with_cell_size(1024));
    let now = t0 + Duration::from_secs(3600);
    c.handle_timeout(now);
    assert!(c.poll_transmit(now, &P).is_none());
    assert_eq!(failures(&mut c), vec![]);
    assert_eq!(c.poll_timeout(), None);
}

/// A peer that has acknowledged everything but grants no more credit (its application is
/// not reading) is alive: no keepalive is due, and no timer fires in a loop for one.
#[test]
fn no_keepalive_timer_when_the_peer_grants_no_credit() {
    let mut cfg = live_cfg();
    cfg.max_event_bytes = 2048;
    cfg.window_cells = 16;
    let (mut c, mut s, t0) = pair(cfg);
    c.open_stream(1, "g");
    let mut now = t0;
    for _ in 0..200 {
        c.send(1, &[7u8; 900]);
        now += Duration::from_millis(10);
        c.handle_timeout(now);
        s.handle_timeout(now);
        pump(&mut c, &mut s, now, |_| true);
        pump(&mut s, &mut c, now, |_| true);
    }
    // The central's events are never taken: its credit froze; everything sent is acked.
    now += Duration::from_millis(100);
    s.handle_timeout(now);
    pump(&mut s, &mut c, now, |_| true);
    assert!(!c.can_send_new(), "the central's credit is exhausted");
    let later = now + Duration::from_secs(30);
    let sent = c.stats().data_cells_sent;
    c.handle_timeout(later);
    while c.poll_transmit(later, &P).is_some() {} // acknowledgements only
    assert_eq!(c.stats().data_cells_sent, sent, "no keepalive could go");
    assert!(
        c.poll_timeout().is_none_or(|t| t > later),
        "a timer that is always due would spin the driver"
    );
    assert_eq!(failures(&mut c), vec![]);
}

/// Each client path carries its own label, a lost path that comes back (a reconnect,
/// perhaps from a new address) carries a new one, the central's table maps them all to the
/// session, and the central's cells carry no label.
#[test]
fn labels_are_per_path_new_after_a_loss_and_known_to_the_central() {
    let (mut c, mut s, now) = pair(SessionConfig::with_cell_size(1024));
    let mut table = LabelTable::default();
    table.insert(s.id(), s.path_labels());
    fn label_on(
        c: &mut Session,
        s: &mut Session,
        table: &mut LabelTable,
        now: Instant,
        path: u32,
    ) -> cell::Label {
        let stream = c.tracked_streams() as u32 + 100;
        c.open_stream(stream, "gw");
        c.send(stream, b"x");
        let t = c.poll_transmit(now, &[PathId(path)]).unwrap();
        assert_eq!(t.path, PathId(path));
        let mut cell = t.cell;
        let label = cell::peek_label(&cell).unwrap();
        assert_eq!(table.lookup(label), Some(s.id()));
        // After a loss the first cell may be a resend the central already has.
        let r = s.handle_cell(now, &mut cell);
        assert!(
            matches!(r, Ok(()) | Err(CellError::Replay)),
            "path {path}: {r:?}"
        );
        label
    }
    let a = label_on(&mut c, &mut s, &mut table, now, 1);
    let b = label_on(&mut c, &mut s, &mut table, now, 2);
    assert_ne!(a, b);
    assert_eq!(
        label_on(&mut c, &mut s, &mut table, now, 1),
        a,
        "a path keeps its label while it lives"
    );
    assert!(
        a.0 != s.id().0 && b.0 != s.id().0,
        "no label is the session id"
    );
    c.path_lost(PathId(1));
    let a2 = label_on(&mut c, &mut s, &mut table, now, 1);
    assert!(a2 != a && a2 != b, "a path back after a loss is new");
    // Toward the client: no label.
    let mut t = None;
    for _ in 0..10 {
        s.handle_timeout(now + Duration::from_secs(1));
        t = s.poll_transmit(now + Duration::from_secs(1), &[PathId(9)]);
        if t.is_some() {
            break;
        }
    }
    let t = t.expect("the central acknowledges");
    assert_eq!(cell::peek_label(&t.cell), Some(cell::Label::NONE));
}

/// Hygiene (issue 8, item 10): a Hello whose padding carries anything is refused before
/// any public-key work, so its free bytes are no covert channel; the honest one passes.
#[test]
fn a_hello_with_anything_in_its_padding_is_refused() {
    let cfg = SessionConfig::with_cell_size(2048);
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let central = StaticKeypair::generate(&mut rng);
    let hello = SessionHello {
        window_cells: 64,
        mailboxes: Vec::new(),
        limits_pass: Vec::new(),
    };
    let pending =
        PendingSession::start(&mut rng, cfg.clone(), &central.public(), &hello, 0, 0).unwrap();
    let honest = pending.hello_cell().to_vec();
    assert!(check_hello(&cfg, &honest).is_ok());
    for at in [honest.len() - 1, honest.len() - 100] {
        let mut marked = honest.clone();
        marked[at] ^= 0x01;
        assert_eq!(
            check_hello(&cfg, &marked).map(|_| ()),
            Err(SessionError::NotCanonical),
            "padding byte {at}"
        );
    }
}
