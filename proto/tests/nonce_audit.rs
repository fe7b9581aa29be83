//! Nonce audit: a million seals across paths, both directions, many rekeys and a restart
//! never repeat a (key, nonce) pair.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_proto::frame::Mailbox;
use braid_proto::noise::StaticKeypair;
use braid_proto::session::{self, PathId, PendingSession, Session, SessionConfig, SessionHello};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

type Seen = Arc<Mutex<(HashSet<[u8; 44]>, u64, u64)>>;

fn audit(seen: &Seen) -> braid_proto::cell::SealAudit {
    let seen = seen.clone();
    Box::new(move |key: &[u8; 32], nonce: &[u8; 12]| {
        let mut k = [0u8; 44];
        k[..32].copy_from_slice(key);
        k[32..].copy_from_slice(nonce);
        let mut g = seen.lock().unwrap();
        g.1 += 1;
        if !g.0.insert(k) {
            g.2 += 1;
        }
    })
}

fn pair(
    rng: &mut ChaCha20Rng,
    central: &StaticKeypair,
    cfg: &SessionConfig,
    now: Instant,
) -> (Session, Session) {
    let hello = SessionHello {
        window_cells: cfg.window_cells as u32,
        mailboxes: vec![Mailbox {
            relay: "r".into(),
            id: [0; 16],
        }],
        limits_pass: Vec::new(),
    };
    let p = PendingSession::start(rng, cfg.clone(), &central.public(), &hello, 0, 0).unwrap();
    let acc = session::accept(
        rng,
        cfg.clone(),
        central,
        now,
        session::HelloClock::ANY,
        p.hello_cell(),
    )
    .unwrap();
    (p.finish(now, &acc.welcome_cell).unwrap(), acc.session)
}

fn exchange(
    from: &mut Session,
    to: &mut Session,
    now: Instant,
    paths: &[PathId],
    rng: &mut ChaCha20Rng,
) {
    while let Some(mut t) = from.poll_transmit(now, paths) {
        // Path 3 loses one cell in 50: those get resent (same bytes, no re-seal).
        if t.path == PathId(3) && rng.next_u32().is_multiple_of(50) {
            continue;
        }
        let _ = to.handle_cell(now, &mut t.cell);
    }
    while to.poll_event().is_some() {}
}

#[test]
fn a_million_seals_never_repeat_a_key_nonce_pair() {
    let mut rng = ChaCha20Rng::seed_from_u64(99);
    let central = StaticKeypair::generate(&mut rng);
    let mut cfg = SessionConfig::with_cell_size(1024);
    cfg.epoch_cells = 4096; // rekey every 4096 cells of a kind
    cfg.window_cells = 512;
    let seen: Seen = Arc::default();
    let paths = [PathId(1), PathId(2), PathId(3)];
    let mut now = Instant::now();
    let chunk = vec![0x5au8; 64 * 1024];
    // Two "lives" of the client: the second is a restart with a fresh session.
    for _life in 0..2 {
        let (mut c, mut s) = pair(&mut rng, &central, &cfg, now);
        c.set_seal_audit(audit(&seen));
        s.set_seal_audit(audit(&seen));
        c.open_stream(1, "gw");
        while seen.lock().unwrap().1 < 500_000 * (_life + 1) {
            c.send(1, &chunk);
            s.send(1, &chunk);
            exchange(&mut c, &mut s, now, &paths, &mut rng);
            exchange(&mut s, &mut c, now, &paths, &mut rng);
            now += Duration::from_millis(50);
            c.handle_timeout(now);
            s.handle_timeout(now);
        }
        assert!(
            c.stats().retransmits + s.stats().retransmits > 0,
            "loss must cause resends"
        );
    }
    let g = seen.lock().unwrap();
    assert!(g.1 >= 1_000_000, "only {} seals", g.1);
    assert_eq!(
        g.2, 0,
        "{} repeated (key, nonce) pairs in {} seals",
        g.2, g.1
    );
}
