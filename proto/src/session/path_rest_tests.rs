//! Resting a path whose cells time out, and bringing it back.

use super::tests::{pair_seeded, tick, Wire};
use super::*;

/// Runs a 2-path transfer for `ms` virtual milliseconds. Path 2 holds every cell sent
/// in `stall` until its end (a slow moment: CPU, a queue) or, with `dead`, loses every
/// cell from the stall's start on. Returns the cells sent per path in each millisecond.
fn run(ms: u64, stall: std::ops::Range<u64>, dead: bool) -> Vec<[u64; 2]> {
    let (mut c, mut s, t0) = pair_seeded(SessionConfig::with_cell_size(1024), 5);
    let at = |m: u64| t0 + Duration::from_millis(m);
    c.open_stream(1, "gw");
    let paths = [PathId(1), PathId(2)];
    let mut wire = Wire::new();
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
        tick(&mut c, &mut s, &mut wire, &paths, now, at(m + 1));
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
