//! User credentials over real processes (issue 9): a network whose directory has an
//! operator key serves only clients with a credential that key signed, checked at the first
//! hops. With one, a download is byte-identical; with none, an expired one or a revoked
//! one, the client is refused within 1 s with the reason in its log; a revocation by SIGHUP
//! stops the revoked user's new streams within 2 s while another user's download goes on;
//! a broken config on SIGHUP leaves every node running on the old one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use braid_config::Role;
use braid_testkit as support;
use support::procs::{ProcOptions, ProcOverlay};
use support::*;

/// The tests time refusals; run alone, they do not share the two cores with another
/// overlay's 64 MiB download.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn with_operator() -> ProcOverlay {
    ProcOverlay::start(ProcOptions {
        operator: true,
        ..ProcOptions::default()
    })
}

fn first_hops(ov: &ProcOverlay) -> Vec<String> {
    ov.directory
        .nodes
        .iter()
        .filter(|n| matches!(n.role, Role::Upstream | Role::Relay))
        .map(|n| n.id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_credential_a_64_mib_download_is_byte_identical() {
    const N: u64 = 64 << 20;
    let _serial = SERIAL.lock().await;
    let origin = start_origin([127, 0, 0, 1]).await;
    let ov = with_operator();
    let sha = curl_sha256(ov.socks, &format!("http://{origin}/bytes/{N}")).await;
    assert_eq!(sha, expected_sha256(N), "byte-identical");
    // Every first hop checked the credential (the client links to all of them).
    for id in first_hops(&ov) {
        assert!(
            ov.metric(&id, "braid_users_admitted_total") >= 1,
            "{id} admitted no one"
        );
        assert_eq!(ov.metric(&id, "braid_users_refused_total"), 0, "{id}");
    }
    ov.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_expired_or_revoked_credential_is_refused_within_1_s_with_the_reason() {
    let _serial = SERIAL.lock().await;
    let ov = with_operator();
    // Issued already expired: valid for an hour, two hours ago.
    ov.user(&[
        "add",
        "old",
        "--starts-in-secs",
        "-7200",
        "--valid-secs",
        "3600",
    ]);
    ov.user(&["add", "carol"]);
    ov.user(&["revoke", "carol"]);
    for id in first_hops(&ov) {
        ov.sighup(&id);
    }
    // SIGHUP is asynchronous: let the nodes read the list.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (name, extra, reason) in [
        ("nobody", String::new(), "refused: no credential"),
        (
            "old",
            "credential = \"operator/old.cred\"".to_string(),
            "refused: credential expired",
        ),
        (
            "carol",
            "credential = \"operator/carol.cred\"".to_string(),
            "refused: credential revoked",
        ),
    ] {
        let (exited, took, log) = ov.client_until_exit(name, &extra, Duration::from_secs(10));
        eprintln!("{name}: exited {exited} after {took:?}");
        assert!(exited, "{name} did not give up:\n{log}");
        assert!(log.contains(reason), "{name}: no {reason:?} in\n{log}");
        assert!(took < Duration::from_secs(1), "{name} took {took:?}");
    }
    assert!(ov.metric("upstream-1", "braid_users_refused_total") >= 3);
    ov.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_by_sighup_stops_new_streams_within_2_s_and_spares_the_others() {
    const N: u64 = 64 << 20;
    let _serial = SERIAL.lock().await;
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov = with_operator();
    ov.user(&["add", "bob"]);
    let bob = ov.add_client("bob", "credential = \"operator/bob.cred\"");
    let url = format!("http://{origin}/echo/bob");
    let (ok, body) = curl(bob, &["--max-time", "10", &url]).await;
    assert!(ok && body == b"bob", "bob works before");
    // Both download; then bob is revoked.
    let theirs = spawn_download(ov.socks, origin, N);
    // Bob's own download dies with his revocation: it is not checked.
    let bobs =
        tokio::spawn(async move { curl(bob, &[&format!("http://{origin}/bytes/{N}")]).await.0 });
    tokio::time::sleep(Duration::from_millis(500)).await;
    ov.user(&["revoke", "bob"]);
    for id in first_hops(&ov) {
        ov.sighup(&id);
    }
    let revoked = Instant::now();
    // A probe every 100 ms, each waiting up to 3 s: the first refused at once (a SOCKS
    // reply within 0.5 s of asking) says when bob's new streams stopped, to 100 ms.
    let mut probes = tokio::task::JoinSet::new();
    let mut next_probe = tokio::time::interval(Duration::from_millis(100));
    let refused_after = loop {
        assert!(
            revoked.elapsed() < Duration::from_secs(10),
            "bob's streams still not refused 10 s after his revocation"
        );
        tokio::select! {
            _ = next_probe.tick() => {
                let url = url.clone();
                probes.spawn(async move {
                    let t = Instant::now();
                    let (ok, _) = curl(bob, &["--max-time", "3", &url]).await;
                    !ok && t.elapsed() < Duration::from_millis(500)
                });
            }
            Some(Ok(refused)) = probes.join_next() => {
                if refused {
                    break revoked.elapsed();
                }
            }
        }
    };
    probes.abort_all();
    // Refused, not just slow: a SOCKS reply, at once.
    let t = Instant::now();
    let (ok, _) = curl(bob, &["--max-time", "5", &url]).await;
    assert!(
        !ok && t.elapsed() < Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
    assert!(
        ov.log("bob").contains("refused: credential revoked"),
        "{}",
        ov.log("bob")
    );
    eprintln!("bob's new streams refused {refused_after:?} after the SIGHUP");
    assert!(refused_after < Duration::from_secs(2), "{refused_after:?}");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(120), theirs)
            .await
            .expect("the other user's download finished")
            .unwrap(),
        expected_sha256(N),
        "the other user's download is byte-identical"
    );
    drop(bobs);
    ov.assert_no_panics();
}

/// A broken config on SIGHUP: the node keeps running on the old one, logs why, `/health`
/// stays 200 and streams go on; a good one is then taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_on_sighup_keeps_the_old_one_and_health_stays_200() {
    let _serial = SERIAL.lock().await;
    let origin = start_origin([127, 0, 0, 1]).await;
    let ov = with_operator();
    let url = format!("http://{origin}/echo/still");
    for id in ["upstream-1", "relay-1", "central-1", "gateway-1"] {
        let path = ov.node(id).config.clone();
        let good = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, "role = \"upstream\"\nlisten = 5\n").unwrap();
        ov.sighup(id);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ov
            .log(id)
            .contains("config reload failed; keeping the old config")
        {
            assert!(
                Instant::now() < deadline,
                "{id} logged nothing:\n{}",
                ov.log(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(ov.health(id).map(|h| h.0), Some(200), "{id} /health");
        let (ok, body) = curl(ov.socks, &["--max-time", "10", &url]).await;
        assert!(
            ok && body == b"still",
            "streams go on after {id}'s broken reload"
        );
        std::fs::write(&path, good).unwrap();
        ov.sighup(id);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ov.log(id).contains("config reloaded") {
            assert!(
                Instant::now() < deadline,
                "{id} did not reload:\n{}",
                ov.log(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ov.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_its_stream_limit_gets_a_socks_refusal_and_keeps_its_streams() {
    use support::socks::{echo, socks_connect, start_echo, try_socks_connect};
    let _serial = SERIAL.lock().await;
    let target = start_echo().await;
    let mut ov = with_operator();
    ov.user(&["add", "dave", "--max-streams", "3"]);
    let dave = ov.add_client("dave", "credential = \"operator/dave.cred\"");
    let mut held = Vec::new();
    for i in 0..3 {
        let mut s = socks_connect(dave, target).await;
        echo(&mut s, format!("stream {i}").as_bytes()).await;
        held.push(s);
    }
    // The central counts the session's streams; the fourth is over the pass's limit.
    let refused = try_socks_connect(dave, target).await;
    assert_eq!(
        refused.err().as_deref(),
        Some("SOCKS5 reply 1"),
        "the fourth stream is refused with a SOCKS reply"
    );
    assert!(ov.metric("central-1", "braid_streams_refused_total") >= 1);
    for s in &mut held {
        echo(s, b"still here").await;
    }
    // One ends: a new one may open (once the central has counted the close).
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        match try_socks_connect(dave, target).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "no stream after one closed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    echo(&mut again, b"room again").await;
    // The default user ("client", no stream limit) is not held to dave's.
    let mut others = Vec::new();
    for _ in 0..5 {
        others.push(socks_connect(ov.socks, target).await);
    }
    for s in &mut others {
        echo(s, b"unlimited").await;
    }
    ov.assert_no_panics();
}

/// Bytes per second of `run`, a transfer of `n` bytes.
async fn timed(n: u64, run: tokio::task::JoinHandle<String>) -> f64 {
    let t = Instant::now();
    let sha = run.await.unwrap();
    assert_eq!(sha, expected_sha256(n), "byte-identical");
    n as f64 / t.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_r_moves_between_0_8_and_1_1_r_over_two_upstreams() {
    const R_KIB: u64 = 2048;
    const N: u64 = 16 << 20;
    let r = (R_KIB * 1024) as f64;
    let _serial = SERIAL.lock().await;
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov = with_operator();
    assert_eq!(ov.directory.nodes_with_role(Role::Upstream).count(), 2);
    ov.user(&["add", "rita", "--rate-kib", &R_KIB.to_string()]);
    let rita = ov.add_client("rita", "credential = \"operator/rita.cred\"");
    // Another user, alone first, for the baseline.
    let alone = timed(N, spawn_upload(ov.socks, origin, N)).await;
    // Rita's upload and the other's side by side.
    let other = tokio::spawn(timed(N, spawn_upload(ov.socks, origin, N)));
    let up = timed(N, spawn_upload(rita, origin, N)).await;
    let beside = other.await.unwrap();
    // Rita's download: the relays take their shares.
    let down = timed(N, spawn_download(rita, origin, N)).await;
    eprintln!(
        "rate limit R = {R_KIB} KiB/s: rita's upload {:.2} R, download {:.2} R; the other \
         user's upload {:.1} MiB/s alone, {:.1} MiB/s beside rita's ({:.2}x)",
        up / r,
        down / r,
        alone / (1 << 20) as f64,
        beside / (1 << 20) as f64,
        beside / alone
    );
    assert!((0.8..=1.1).contains(&(up / r)), "upload at {:.2} R", up / r);
    assert!(
        (0.8..=1.1).contains(&(down / r)),
        "download at {:.2} R",
        down / r
    );
    assert!(
        beside > 2.0 * r && beside > 0.5 * alone,
        "the other user is held back: {beside:.0} B/s beside, {alone:.0} alone"
    );
    ov.assert_no_panics();
}
