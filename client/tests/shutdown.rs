//! Graceful shutdown over separate processes: SIGTERM makes a node stop accepting, lets
//! live streams finish (up to `drain_timeout_secs`), then exit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use braid_testkit as support;

use std::time::{Duration, Instant};

use support::procs::{ProcOptions, ProcOverlay};
use support::*;

const MIB: u64 = 1024 * 1024;

/// A central stopped with SIGTERM mid-upload refuses new streams but finishes the live one:
/// every byte it acknowledged reaches the destination, then it exits on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_sigterm_mid_upload_loses_no_acknowledged_byte() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov = ProcOverlay::start(ProcOptions {
        node_extra: String::new(),
        ..ProcOptions::default()
    });
    let n = 48 * MIB;
    let transfer = spawn_upload(ov.socks, origin, n);
    ov.wait_cells("central-1", 1500, || !transfer.is_finished())
        .await;
    ov.sigterm("central-1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new stream during the drain is refused promptly, not hung.
    let t0 = Instant::now();
    let (ok, _) = curl(ov.socks, &[&format!("http://{origin}/bytes/1000")]).await;
    assert!(!ok, "a draining central must refuse new streams");
    assert!(t0.elapsed() < Duration::from_secs(35));

    // The live upload finishes, byte-identical.
    assert_eq!(transfer.await.unwrap(), expected_sha256(n));
    // Then the central exits by itself, well before the 30 s drain deadline.
    let took = ov.terminate("central-1", Duration::from_secs(30));
    eprintln!("central exited {took:?} after the upload finished");
    assert!(ov.log("central-1").contains("draining"));
    ov.assert_no_panics();
}

/// A gateway stopped mid-download lets the live stream finish, then exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigterm_mid_download_finishes_the_stream() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov = ProcOverlay::start(ProcOptions::default());
    let n = 48 * MIB;
    let transfer = spawn_download(ov.socks, origin, n);
    ov.wait_cells("downstream-1", 1000, || !transfer.is_finished())
        .await;
    ov.sigterm("gateway-1");
    assert_eq!(transfer.await.unwrap(), expected_sha256(n));
    let took = ov.terminate("gateway-1", Duration::from_secs(30));
    eprintln!("gateway exited {took:?} after the download finished");
    ov.assert_no_panics();
}

/// Idle nodes of every role exit promptly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_nodes_exit_promptly_on_sigterm() {
    let mut ov = ProcOverlay::start(ProcOptions::default());
    let ids: Vec<String> = ov.nodes.iter().map(|n| n.id.clone()).collect();
    for id in ids {
        let took = ov.terminate(&id, Duration::from_secs(10));
        eprintln!("{id} exited in {took:?}");
    }
}

/// Streams that ended every way (a finished download, a refused open, a reset by the
/// client) leave nothing behind at the central: SIGTERM'd afterwards, it finds no live
/// stream and exits at once instead of waiting out its 30 s drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_with_only_finished_streams_exits_at_once() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov = ProcOverlay::start(ProcOptions::default());
    let url = format!("http://{origin}/bytes/{}", 4 * MIB);
    assert_eq!(curl_sha256(ov.socks, &url).await, expected_sha256(4 * MIB));
    // Refused by the gateway (a node's own address is never an exit target).
    let central = ov.node("central-1").addr;
    let (ok, _) = curl(ov.socks, &[&format!("http://{central}/")]).await;
    assert!(!ok, "the central's address must be refused");
    // Reset by the client: curl gives up after 1 s of a 64 MiB download.
    let big = format!("http://{origin}/bytes/{}", 64 * MIB);
    let (ok, _) = curl(ov.socks, &["--max-time", "1", "--limit-rate", "1M", &big]).await;
    assert!(!ok, "curl was meant to give up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = ov.terminate("central-1", Duration::from_secs(10));
    eprintln!("central exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(5), "central took {took:?}");
    ov.assert_no_panics();
}
