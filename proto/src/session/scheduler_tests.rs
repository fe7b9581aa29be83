//! The path schedulers: how cells spread over fast and slow paths.

use super::tests::{pair_with_mailboxes, tick, Wire};
use super::*;

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
        let mut cfg = SessionConfig::with_cell_size(1024);
        cfg.scheduler = sched;
        let (mut c, mut s, t0) = pair_with_mailboxes(cfg, 11, vec![]);
        c.open_stream(1, "gw");
        let paths = [PathId(1), PathId(2)];
        // (deliver_at, cell) queue; the slow path delays cells by 20 ms.
        let mut wire = Wire::new();
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
            let next = now + Duration::from_millis(1);
            tick(&mut c, &mut s, &mut wire, &paths, now, next);
            now = next;
        }
        assert!(
            check(sent[0], sent[1]),
            "{sched:?}: fast {} slow {}",
            sent[0],
            sent[1]
        );
    }
}

/// The names configuration and the command line use round-trip; anything else is refused.
#[test]
fn scheduler_names_parse_and_print() {
    for sched in [PathScheduler::RoundRobin, PathScheduler::LowestDelay] {
        assert_eq!(sched.as_str().parse::<PathScheduler>(), Ok(sched));
    }
    assert_eq!("round-robin".parse(), Ok(PathScheduler::RoundRobin));
    assert_eq!("rtt".parse(), Ok(PathScheduler::LowestDelay));
    assert_eq!(PathScheduler::default().as_str(), "round-robin");
    for bad in ["", "RTT", "roundrobin", "lowest-delay", " rtt"] {
        assert_eq!(
            bad.parse::<PathScheduler>(),
            Err(UnknownPathScheduler(bad.to_owned()))
        );
    }
    let e = "fastest".parse::<PathScheduler>().unwrap_err();
    assert!(e.to_string().contains("fastest"), "{e}");
}
