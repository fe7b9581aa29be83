//! Nodes that join a running network (issue 10), over real processes: an upstream that is
//! not in the directory joins with the operator's join credential, the central passes its
//! descriptor to the client through the session, and the client carries cells over it
//! within 10 s; it leaves (SIGTERM) and its key rotates without a byte lost; forged,
//! expired and wrong-role credentials are refused with the reason in the central's log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use braid_config::Role;
use braid_testkit as support;
use support::procs::{ProcOptions, ProcOverlay};

/// Waits until node `id` has taken in a cell; how long it took (at most `limit`).
async fn wait_used(ov: &ProcOverlay, id: &str, limit: Duration) -> Duration {
    let t = Instant::now();
    while ov.metric(id, "braid_cells_in_total") == 0 {
        assert!(
            t.elapsed() < limit,
            "{id} carried no cell within {limit:?}:\n{}\nclient:\n{}",
            ov.log(id),
            ov.log("client")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.elapsed()
}

/// An upload and a download of `n` bytes each at about 1.5 MB/s, in tasks: each resolves
/// to whether what arrived is what was sent.
fn transfers(socks: SocketAddr, origin: SocketAddr, n: u64) -> [tokio::task::JoinHandle<bool>; 2] {
    let down = tokio::spawn(async move {
        let url = format!("http://{origin}/bytes/{n}");
        let (ok, body) = support::curl(socks, &["--limit-rate", "1500K", &url]).await;
        ok && body.len() as u64 == n
            && body
                .iter()
                .enumerate()
                .all(|(i, b)| *b == support::body_byte(i as u64))
    });
    let up = tokio::spawn(async move {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("up.bin");
        support::write_body_file(&file, n);
        let url = format!("http://{origin}/upload");
        let (ok, body) = support::curl(
            socks,
            &["--limit-rate", "1500K", "-T", file.to_str().unwrap(), &url],
        )
        .await;
        ok && String::from_utf8(body).unwrap() == support::expected_sha256(n)
    });
    [down, up]
}

fn options() -> ProcOptions {
    ProcOptions {
        operator: true,
        ..ProcOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_upstream_carries_cells_within_10_s_and_leaves_without_losing_a_byte() {
    let origin = support::start_origin([127, 0, 0, 1]).await;
    let mut ov = ProcOverlay::start(options());
    let [down, up] = transfers(ov.socks, origin, 24 << 20);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let join = ov.issue_join("upstream-9", Role::Upstream, &[], None);
    let started = Instant::now();
    ov.join_node("upstream-9", "upstream-9", Role::Upstream, &join, "");
    ov.wait_for_log("central-1", "node joined", 1, Duration::from_secs(10))
        .await;
    let registered = started.elapsed();
    let used = wait_used(&ov, "upstream-9", Duration::from_secs(10)).await;
    eprintln!(
        "upstream-9 registered {registered:?} after start; carried its first cell {:?} after start",
        started.elapsed()
    );
    assert!(used < Duration::from_secs(10));
    assert_eq!(
        ov.metric("upstream-9", "braid_links_up"),
        1,
        "linked to the central"
    );
    let running = || !down.is_finished() || !up.is_finished();
    ov.wait_cells("upstream-9", 100, running).await;

    // A downstream joins too, one use only: the central and the relay take it, and the
    // central sends replies over it.
    let join = ov.issue_join("downstream-9", Role::Downstream, &["--single"], None);
    let started = Instant::now();
    ov.join_node("downstream-9", "downstream-9", Role::Downstream, &join, "");
    let used = wait_used(&ov, "downstream-9", Duration::from_secs(10)).await;
    eprintln!("downstream-9 carried its first cell {used:?} after start");
    ov.wait_cells("downstream-9", 50, running).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    ov.sigterm("downstream-9");

    // It leaves: on SIGTERM it tells the central, which tells the client, which stops using
    // it while it still drains what it has.
    let carried = ov.metric("upstream-9", "braid_cells_in_total");
    ov.sigterm("upstream-9");
    let took = ov
        .wait_for_log(
            "client",
            "joined upstream is leaving",
            1,
            Duration::from_secs(5),
        )
        .await;
    eprintln!(
        "the client stopped using upstream-9 {took:?} after SIGTERM ({carried} cells carried)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_leave = ov.metric("upstream-9", "braid_cells_in_total");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = ov.metric("upstream-9", "braid_cells_in_total");
    assert!(
        later <= at_leave,
        "cells kept coming after it left: {at_leave} then {later}"
    );

    assert!(down.await.unwrap(), "the download differs");
    assert!(up.await.unwrap(), "the upload differs");
    ov.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_a_joined_upstreams_key_during_transfers_loses_no_byte() {
    let origin = support::start_origin([127, 0, 0, 1]).await;
    let mut ov = ProcOverlay::start(options());
    let join = ov.issue_join("upstream-9", Role::Upstream, &[], None);
    ov.join_node("upstream-9", "upstream-9", Role::Upstream, &join, "");
    let [down, up] = transfers(ov.socks, origin, 16 << 20);
    wait_used(&ov, "upstream-9", Duration::from_secs(10)).await;

    // The new key: the same node id under the same credential, with keys it makes itself.
    // Old and new overlap until the client has moved, then the old one leaves.
    ov.join_node("upstream-9", "upstream-9-new", Role::Upstream, &join, "");
    let moved = wait_used(&ov, "upstream-9-new", Duration::from_secs(10)).await;
    eprintln!("the new key carried cells {moved:?} after it started");
    ov.sigterm("upstream-9");
    ov.wait_for_log(
        "client",
        "joined upstream is leaving",
        1,
        Duration::from_secs(5),
    )
    .await;
    let before = ov.metric("upstream-9-new", "braid_cells_in_total");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        ov.metric("upstream-9-new", "braid_cells_in_total") > before,
        "the new key carries on"
    );

    assert!(down.await.unwrap(), "the download differs");
    assert!(up.await.unwrap(), "the upload differs");
    ov.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_wrong_role_joins_are_refused_with_the_reason_in_the_central_log() {
    let mut ov = ProcOverlay::start(options());
    // A forger with an operator key of their own.
    let forger = ov.dir.path().join("forger");
    let out = std::process::Command::new(support::procs::braid_node_bin())
        .args(["operator", "--dir", forger.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert!(out.status.success());

    let cases = [
        (
            "upstream-forged",
            ov.issue_join("forged", Role::Upstream, &[], Some(&forger)),
            "join credential not signed by this network's operator",
        ),
        (
            "upstream-expired",
            ov.issue_join(
                "expired",
                Role::Upstream,
                &["--starts-in-secs", "-100", "--valid-secs", "10"],
                None,
            ),
            "join credential expired",
        ),
        (
            "upstream-wrong",
            ov.issue_join("wrong-role", Role::Gateway, &[], None),
            "join credential is for another role",
        ),
    ];
    for (id, file, reason) in &cases {
        ov.join_node(id, id, Role::Upstream, file, "");
        let took = ov
            .wait_for_log("central-1", reason, 1, Duration::from_secs(10))
            .await;
        eprintln!("{id}: refused after {took:?}: {reason}");
        ov.wait_for_log(id, "joining failed", 1, Duration::from_secs(5))
            .await;
        assert_eq!(ov.metric(id, "braid_links_up"), 0);
    }
    assert!(!ov.log("central-1").contains("node joined"));
    // The client never heard of them.
    assert!(!ov.log("client").contains("joined upstream"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_upstream_outlives_its_descriptor_by_refreshing_and_lapses_when_it_dies() {
    let mut ov = ProcOverlay::start(options());
    let join = ov.issue_join("upstream-9", Role::Upstream, &[], None);
    // A 15 s descriptor, refreshed every 5 s.
    ov.join_node(
        "upstream-9",
        "upstream-9",
        Role::Upstream,
        &join,
        "descriptor_lifetime_secs = 15",
    );
    ov.wait_for_log(
        "client",
        "joined upstream: linking to it",
        1,
        Duration::from_secs(10),
    )
    .await;
    // Past its first descriptor's life it is still a member: the refreshes hold it.
    tokio::time::sleep(Duration::from_secs(18)).await;
    assert!(!ov.log("central-1").contains("descriptor lapsed"));
    assert!(!ov.log("client").contains("descriptor lapsed"));
    assert!(
        ov.log("upstream-9")
            .matches("registered with the central")
            .count()
            >= 1
    );
    // Killed without a word: no refresh, so within one life the central and the client
    // forget it.
    ov.kill9("upstream-9");
    let killed = Instant::now();
    ov.wait_for_log("client", "descriptor lapsed", 1, Duration::from_secs(20))
        .await;
    ov.wait_for_log("central-1", "descriptor lapsed", 1, Duration::from_secs(5))
        .await;
    let took = killed.elapsed();
    eprintln!("the killed upstream's descriptor lapsed {took:?} after kill -9");
    assert!(took <= Duration::from_secs(17), "took {took:?}");
}
