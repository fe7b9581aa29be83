//! Several centrals: every dialing node links to each, the client runs its session through
//! one and moves to another when it dies, and `central_choice = "rtt"` takes the first to
//! answer. Over separate processes, so a central can be killed with -9.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use braid_config::Layout;
use braid_testkit as support;
use support::procs::{ProcOptions, ProcOverlay};
use support::*;

fn two_centrals(client_extra: &str) -> ProcOverlay {
    ProcOverlay::start(ProcOptions {
        layout: Layout {
            centrals: 2,
            ..Layout::default()
        },
        client_extra: client_extra.into(),
        ..ProcOptions::default()
    })
}

/// The central the client's session runs through: the one that opened a session and
/// carries its cells.
fn central_in_use(ov: &ProcOverlay) -> (&'static str, &'static str) {
    let a = ov.metric("central-1", "braid_cells_in_total");
    let b = ov.metric("central-2", "braid_cells_in_total");
    if a > b {
        ("central-1", "central-2")
    } else {
        ("central-2", "central-1")
    }
}

/// Two centrals; `kill -9` of the one in use. New streams go through the other within 2 s,
/// every dialing node stays healthy (it is still linked to the live central), and nothing
/// about the session moved: the other central opened a new one from a new handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_move_to_the_other_central_within_2_s_of_a_kill() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov =
        two_centrals("keepalive_ms = 200\npeer_timeout_ms = 500\nsession_wait_ms = 10000\n");
    // Every upstream, downstream and gateway links to both centrals.
    for n in [
        "upstream-1",
        "upstream-2",
        "downstream-1",
        "downstream-2",
        "gateway-1",
    ] {
        assert_eq!(ov.metric(n, "braid_links_up"), 2, "{n}");
    }
    let url = format!("http://{origin}/echo/before");
    let (ok, body) = curl(ov.socks, &[&url]).await;
    assert!(ok && body == b"before", "the overlay works before the kill");
    let (used, other) = central_in_use(&ov);
    let opened_before = ov.metric(other, "braid_sessions_opened_total");

    ov.kill9(used);
    let killed = Instant::now();
    let url = format!("http://{origin}/echo/after");
    let mut served = None;
    while killed.elapsed() < Duration::from_secs(10) {
        let (ok, body) = curl(ov.socks, &["--max-time", "1", &url]).await;
        if ok && body == b"after" {
            served = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = served.unwrap_or_else(|| {
        panic!(
            "no stream served within 10 s of the kill\n--- client:\n{}",
            ov.log("client")
        )
    });
    eprintln!("new streams served {took:?} after kill -9 of {used}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(
        ov.metric(other, "braid_sessions_opened_total"),
        opened_before + 1
    );
    let log = ov.log("client");
    assert!(log.contains(&format!("central={other}")), "{log}");
    // (Their links to the dead central close at the QUIC idle timeout; the live one is
    // enough to do their job.)
    for n in ["upstream-1", "downstream-1", "gateway-1"] {
        let (code, body) = ov.health(n).unwrap();
        assert_eq!(code, 200, "{n}: {body}");
    }
    ov.assert_no_panics();
}

/// `central_choice = "rtt"`: the Hello goes to both centrals and the session runs through
/// the first to answer; traffic flows through that one only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtt_choice_asks_every_central_and_keeps_the_first() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let ov = two_centrals("central_choice = \"rtt\"\n");
    let log = ov.log("client");
    assert_eq!(
        log.matches("session open with a central").count(),
        1,
        "{log}"
    );
    for c in ["central-1", "central-2"] {
        assert_eq!(
            ov.metric(c, "braid_sessions_opened_total"),
            1,
            "{c} got a Hello"
        );
    }
    let (used, other) = central_in_use(&ov);
    let idle = ov.metric(other, "braid_cells_out_total");
    let url = format!("http://{origin}/bytes/2000000");
    let (ok, body) = curl(ov.socks, &[&url]).await;
    assert!(ok && body.len() == 2_000_000);
    assert!(ov.metric(used, "braid_cells_out_total") > 200);
    assert_eq!(
        ov.metric(other, "braid_cells_out_total"),
        idle,
        "{other} carries nothing"
    );
    ov.assert_no_panics();
}
