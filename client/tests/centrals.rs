//! Several centrals: every dialing node links to each, the client runs its session through
//! one and moves to another when it dies, its open streams resume through the other with
//! nothing lost, and `central_choice = "rtt"` takes the first to answer. Over separate
//! processes, so a central can be killed with -9.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_config::Layout;
use braid_testkit as support;
use support::procs::{ProcOptions, ProcOverlay};
use support::socks::{echo, socks_connect, start_counting_echo, start_counting_server};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// How long after `since` a new stream first fetched `url` (which answers "after"),
/// trying for 10 s. A new probe starts every 100 ms while earlier ones are still waiting,
/// so the answer is when streams started working, to 100 ms, and not rounded up to a
/// probe's own timeout.
async fn first_served(ov: &ProcOverlay, url: &str, since: Instant) -> Option<Duration> {
    let mut probes = tokio::task::JoinSet::new();
    let mut next_probe = tokio::time::interval(Duration::from_millis(100));
    while since.elapsed() < Duration::from_secs(10) {
        tokio::select! {
            _ = next_probe.tick() => {
                let (socks, url) = (ov.socks, url.to_string());
                probes.spawn(async move {
                    let (ok, body) = curl(socks, &["--max-time", "3", &url]).await;
                    ok && body == b"after"
                });
            }
            Some(Ok(served)) = probes.join_next() => {
                if served {
                    return Some(since.elapsed());
                }
            }
        }
    }
    None
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
    let served = first_served(&ov, &url, killed).await;
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
    // The slower central answers the Hello after the session already runs elsewhere.
    for c in ["central-1", "central-2"] {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ov.metric(c, "braid_sessions_opened_total") == 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            ov.metric(c, "braid_sessions_opened_total"),
            1,
            "{c} got a Hello"
        );
    }
    let out = |ov: &ProcOverlay, c: &str| ov.metric(c, "braid_cells_out_total");
    let before = [out(&ov, "central-1"), out(&ov, "central-2")];
    let url = format!("http://{origin}/bytes/2000000");
    let (ok, body) = curl(ov.socks, &[&url]).await;
    assert!(ok && body.len() == 2_000_000);
    // The central in use is the one that carried the download.
    let grew = [
        out(&ov, "central-1") - before[0],
        out(&ov, "central-2") - before[1],
    ];
    let (used, other, idle) = if grew[0] > grew[1] {
        ("central-1", "central-2", before[1])
    } else {
        ("central-2", "central-1", before[0])
    };
    assert!(ov.metric(used, "braid_cells_out_total") > 200);
    assert_eq!(
        ov.metric(other, "braid_cells_out_total"),
        idle,
        "{other} carries nothing"
    );
    ov.assert_no_panics();
}

/// A TCP server on 127.0.0.1 that sends `n` bytes of the origin's body pattern to each
/// connection and closes it; and how many connections it has accepted.
async fn start_counting_bulk(n: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    start_counting_server(move |mut s: tokio::net::TcpStream| async move {
        if write_body(&mut s, n).await.is_ok() {
            let _ = s.shutdown().await;
        }
    })
    .await
}

/// Two centrals, and `kill -9` of the one in use while a 256 MiB download and an
/// interactive echo stream run through it. Both streams resume through the other central:
/// the download completes byte-identical, the echo keeps echoing after a gap, new streams
/// work within 2 s, and the targets saw one connection each (the gateway kept its sockets:
/// resumed, not reopened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_outlive_a_killed_central() {
    const BULK: u64 = 256 << 20;
    let (bulk_addr, bulk_accepts) = start_counting_bulk(BULK).await;
    let (echo_addr, echo_accepts) = start_counting_echo().await;
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov =
        two_centrals("keepalive_ms = 200\npeer_timeout_ms = 500\nsession_wait_ms = 10000\n");

    let mut interactive = socks_connect(ov.socks, echo_addr).await;
    echo(&mut interactive, b"before").await;
    let mut bulk = socks_connect(ov.socks, bulk_addr).await;
    let got = Arc::new(AtomicU64::new(0));
    let download = tokio::spawn({
        let got = got.clone();
        async move {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = bulk.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                got.fetch_add(n as u64, Ordering::SeqCst);
            }
            hex::encode(h.finalize())
        }
    });
    // Kill the central mid-download.
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.load(Ordering::SeqCst) < BULK / 8 {
        assert!(
            Instant::now() < deadline && !download.is_finished(),
            "the download stalled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (used, other) = central_in_use(&ov);
    let at_kill = got.load(Ordering::SeqCst);
    ov.kill9(used);
    let killed = Instant::now();

    // The interactive stream: one echo every 20 ms; the gap is the longest round trip.
    let ticking = tokio::spawn(async move {
        let mut gap = Duration::ZERO;
        let mut k = 0;
        while killed.elapsed() < Duration::from_secs(3) || k < 20 {
            let t = Instant::now();
            let text = format!("tick-{k}");
            let echoed = echo(&mut interactive, text.as_bytes());
            if tokio::time::timeout(Duration::from_secs(30), echoed)
                .await
                .is_err()
            {
                return Err(format!("no echo of {text} within 30 s"));
            }
            gap = gap.max(t.elapsed());
            k += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((gap, interactive))
    });

    // New streams work within 2 s of the kill.
    let url = format!("http://{origin}/echo/after");
    let served = first_served(&ov, &url, killed).await;

    let sha = tokio::time::timeout(Duration::from_secs(120), download)
        .await
        .expect("the download finished")
        .unwrap();
    let total = got.load(Ordering::SeqCst);
    let (gap, mut interactive) = ticking
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}\n--- client:\n{}", ov.log("client")));
    eprintln!(
        "kill -9 of {used} at {} MiB of {} MiB: download {} MiB, sha256 {}; interactive gap {gap:?}; new streams after {served:?}",
        at_kill >> 20,
        BULK >> 20,
        total >> 20,
        if sha == expected_sha256(BULK) { "identical" } else { "DIFFERENT" },
    );
    assert_eq!(total, BULK, "every byte arrived");
    assert_eq!(sha, expected_sha256(BULK), "byte-identical");
    assert!(at_kill < BULK, "the kill came mid-download");
    echo(&mut interactive, b"still there").await;
    let took = served.expect("a new stream within 10 s");
    assert!(took < Duration::from_secs(2), "new streams after {took:?}");
    // Resumed, not reopened: each target saw one connection, and the gateway counts both
    // resumes.
    assert_eq!(
        bulk_accepts.load(Ordering::SeqCst),
        1,
        "bulk target connections"
    );
    assert_eq!(
        echo_accepts.load(Ordering::SeqCst),
        1,
        "echo target connections"
    );
    assert!(ov.metric("gateway-1", "braid_streams_resumed_total") >= 2);
    let log = ov.log("client");
    assert!(
        log.matches("stream resumed on a new carrier").count() >= 2,
        "{log}"
    );
    assert!(!log.contains("stream lost with its carrier"), "{log}");
    let _ = other;
    ov.assert_no_panics();
}
