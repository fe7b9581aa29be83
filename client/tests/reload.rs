//! Hot reload over real processes (issue 9): a node reloads its config when the file (or
//! its revocation list) changes, with no SIGHUP, within `reload_watch_ms` (2 s by default):
//! the exit policy and the log level change while a stream opened before goes on, and a
//! revocation written by `braid-node user revoke` stops the user's new streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use braid_testkit as support;
use support::procs::{ProcOptions, ProcOverlay};
use support::socks::{echo, socks_connect, start_echo, try_socks_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_reloads_the_exit_policy_and_log_level_and_drops_no_stream() {
    let target = start_echo().await;
    let ov = ProcOverlay::start(ProcOptions::default());
    let mut before = socks_connect(ov.socks, target).await;
    echo(&mut before, b"opened under the old policy").await;

    // The gateway's file changes: loopback targets closed, debug logs on. No SIGHUP.
    let path = ov.node("gateway-1").config.clone();
    let good = std::fs::read_to_string(&path).unwrap();
    let closed = good
        .replace("allow_loopback = true", "allow_loopback = false")
        .replace("[node]\n", "[node]\nlog_level = \"debug\"\n");
    assert_ne!(closed, good);
    std::fs::write(&path, &closed).unwrap();
    let took = ov
        .wait_for_log(
            "gateway-1",
            "exit policy reloaded",
            1,
            Duration::from_secs(5),
        )
        .await;
    eprintln!("the gateway took the changed file after {took:?}");
    // New streams to loopback are refused by the policy (SOCKS 02: not allowed)...
    assert_eq!(
        try_socks_connect(ov.socks, target).await.err().as_deref(),
        Some("SOCKS5 reply 2")
    );
    // ...the stream opened before goes on...
    echo(&mut before, b"still here").await;
    // ...and the gateway logs at debug now.
    let log = ov.log("gateway-1");
    let after = &log[log.find("exit policy reloaded").unwrap()..];
    assert!(
        after.contains("DEBUG"),
        "no debug line after the reload:\n{after}"
    );

    // Back as it was: opens pass again.
    std::fs::write(&path, &good).unwrap();
    ov.wait_for_log(
        "gateway-1",
        "exit policy reloaded",
        2,
        Duration::from_secs(5),
    )
    .await;
    let mut again = socks_connect(ov.socks, target).await;
    echo(&mut again, b"open again").await;
    echo(&mut before, b"and still here").await;
    ov.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_changed_file_keeps_the_old_config() {
    let target = start_echo().await;
    let ov = ProcOverlay::start(ProcOptions::default());
    let path = ov.node("gateway-1").config.clone();
    let good = std::fs::read_to_string(&path).unwrap();
    // A log level that does not parse fails validation: nothing of the file applies.
    let broken = good
        .replace("allow_loopback = true", "allow_loopback = false")
        .replace("[node]\n", "[node]\nlog_level = \"=[\"\n");
    std::fs::write(&path, &broken).unwrap();
    ov.wait_for_log(
        "gateway-1",
        "config reload failed; keeping the old config",
        1,
        Duration::from_secs(5),
    )
    .await;
    assert!(!ov.log("gateway-1").contains("exit policy reloaded"));
    let mut s = socks_connect(ov.socks, target).await;
    echo(&mut s, b"the old policy holds").await;
    assert_eq!(ov.health("gateway-1").map(|h| h.0), Some(200));
    ov.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_written_to_the_list_stops_new_streams_without_sighup() {
    let target = start_echo().await;
    let mut ov = ProcOverlay::start(ProcOptions {
        operator: true,
        ..ProcOptions::default()
    });
    ov.user(&["add", "hank"]);
    let hank = ov.add_client("hank", "credential = \"operator/hank.cred\"");
    let mut s = socks_connect(hank, target).await;
    echo(&mut s, b"hank works").await;
    ov.user(&["revoke", "hank"]);
    let revoked = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), try_socks_connect(hank, target)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(6),
            "hank's streams still open 6 s after the list changed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "hank refused {:?} after the list changed",
        revoked.elapsed()
    );
    // The default user goes on.
    let mut other = socks_connect(ov.socks, target).await;
    echo(&mut other, b"the others go on").await;
    ov.assert_no_panics();
}
