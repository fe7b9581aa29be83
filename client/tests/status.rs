//! The client's admin port and `braid status`, over real sockets: a demo overlay carries
//! traffic, and what the port says is checked against what the test knows (the directory's
//! centrals and upstreams, the bytes it moved, the stream it holds open).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use braid_client::demo::{Demo, DemoOptions};
use braid_client::status::{self, PathState, Status};
use braid_config::Role;
use braid_testkit as support;
use support::*;

const MIB: u64 = 1024 * 1024;

fn opts() -> DemoOptions {
    DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        ..DemoOptions::default()
    }
}

fn admin(demo: &Demo) -> SocketAddr {
    demo.admin.expect("the demo was asked for an admin port")
}

/// Asks the admin port until `ok` holds (at most 10 s); the last answer.
async fn status_until(demo: &Demo, ok: impl Fn(&Status) -> bool) -> Status {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status::fetch(admin(demo)).await.unwrap();
        if ok(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "never so: {s:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn upstreams(demo: &Demo) -> Vec<String> {
    demo.directory
        .nodes_with_role(Role::Upstream)
        .map(|n| n.id.clone())
        .collect()
}

/// Runs the `braid` binary with `args`.
async fn braid(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_braid"));
    cmd.args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// After a download: the session and its central (one of the directory's), a path per
/// upstream, each in use with cells sent and acknowledged, every gateway healthy, no stream
/// left open and the bytes counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_session_its_paths_gateways_and_streams() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(opts()).await.unwrap();
    let n = 2 * MIB;
    let got = curl_sha256(demo.socks, &format!("http://{origin}/bytes/{n}")).await;
    assert_eq!(got, expected_sha256(n));

    let ups = upstreams(&demo);
    let s = status_until(&demo, |s| s.paths.len() == ups.len() && s.streams.open == 0).await;
    let session = s.session.as_ref().expect("a session is open");
    assert!(
        demo.directory.centrals().any(|c| c.id == session.central),
        "{} is not a central of the directory",
        session.central
    );
    assert_eq!(Some(session.central.clone()), demo.client.central());
    assert_eq!(session.id.len(), 12, "the id as the logs show it");
    assert!(
        session.cells_sent > 0 && session.cells_received > 0,
        "{session:?}"
    );
    assert!(session.rtt_ms.is_some_and(|r| r > 0.0 && r < 1000.0));
    let mut names: Vec<String> = s.paths.iter().map(|p| p.upstream.clone()).collect();
    names.sort();
    assert_eq!(names, ups);
    for p in &s.paths {
        assert_eq!(p.state, PathState::InUse, "{p:?}");
        assert!(p.cells_sent > 0 && p.cells_acked > 0, "{p:?}");
        assert!(p.cells_acked <= p.cells_sent, "{p:?}");
    }
    let sent: u64 = s.paths.iter().map(|p| p.cells_sent).sum();
    assert!(sent >= session.cells_sent, "every cell went on some path");
    let gateways: Vec<String> = demo
        .directory
        .nodes_with_role(Role::Gateway)
        .map(|n| n.id.clone())
        .collect();
    assert_eq!(
        s.gateways.iter().map(|g| g.id.clone()).collect::<Vec<_>>(),
        gateways
    );
    assert!(s
        .gateways
        .iter()
        .all(|g| g.healthy && g.resting_ms.is_none()));
    assert!(s.streams.opened_total >= 1, "{:?}", s.streams);
    assert!(
        s.streams.bytes_received_total >= n,
        "the download's bytes (and record overhead) came in: {:?}",
        s.streams
    );
    assert!(s.streams.bytes_sent_total > 0, "the request went out");
    demo.shutdown().await;
}

/// While a download runs, its stream shows as open and the receive rate is above zero;
/// once it is done, the stream is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_download_shows_as_an_open_stream_with_throughput() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(opts()).await.unwrap();
    // 16 MiB at 4 MiB/s: about four seconds (the stream window lets 4 MiB ahead at most).
    let n = 16 * MIB;
    let url = format!("http://{origin}/bytes/{n}");
    let socks = demo.socks;
    let download = tokio::spawn(async move {
        let (ok, body) = curl(socks, &["--limit-rate", "4M", &url]).await;
        assert!(ok, "curl failed");
        body.len() as u64
    });
    let s = status_until(&demo, |s| {
        s.streams.open >= 1 && s.streams.receive_bytes_per_sec > 0.0
    })
    .await;
    assert!(!download.is_finished(), "the download ran while asked");
    eprintln!("while downloading: {:?}", s.streams);
    assert!(s.streams.receive_bytes_per_sec < 1e10, "{:?}", s.streams);
    assert_eq!(download.await.unwrap(), n);
    status_until(&demo, |s| s.streams.open == 0).await;
    demo.shutdown().await;
}

/// The real `braid status --json` reads the admin port and prints the same JSON shape; the
/// tables name the central and every upstream; a port where no client listens is a clear
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braid_status_prints_tables_and_json_from_the_admin_port() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(opts()).await.unwrap();
    let got = curl_sha256(demo.socks, &format!("http://{origin}/bytes/{MIB}")).await;
    assert_eq!(got, expected_sha256(MIB));
    let ups = upstreams(&demo);
    status_until(&demo, |s| s.paths.len() == ups.len()).await;
    let addr = admin(&demo).to_string();

    let out = braid(&["status", "--admin", &addr, "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let s: Status = serde_json::from_slice(&out.stdout).unwrap();
    let central = s.session.as_ref().unwrap().central.clone();
    assert_eq!(Some(central.clone()), demo.client.central());
    assert_eq!(s.paths.len(), ups.len());
    assert!(s.paths.iter().all(|p| p.cells_sent > 0));
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["session", "paths", "gateways", "streams"] {
        assert!(raw.get(key).is_some(), "{key} missing: {raw}");
    }
    assert_eq!(raw["paths"][0]["state"], "in_use");

    let out = braid(&["status", "--admin", &addr]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    eprintln!("{text}");
    assert!(text.contains(&format!("central {central}")), "{text}");
    for up in &ups {
        let row = text.lines().find(|l| l.starts_with(up.as_str()));
        assert!(row.is_some_and(|r| r.contains("in use")), "{up}: {text}");
    }
    assert!(
        text.contains("gateway-1") && text.contains("healthy"),
        "{text}"
    );
    assert!(text.contains("streams "), "{text}");

    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port([127, 0, 0, 1].into(), false)));
    let out = braid(&["status", "--admin", &nobody.to_string()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin port") && err.contains(&nobody.to_string()),
        "{err}"
    );
    demo.shutdown().await;
}

/// The admin port shows the session to whoever connects: a non-loopback address is refused
/// before anything starts, by the demo in-process and by the binaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_admin_address_is_refused() {
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let e = Demo::start(DemoOptions {
            admin: Some(addr.parse().unwrap()),
            ..opts()
        })
        .await
        .err()
        .expect("refused");
        let msg = format!("{e:#}");
        assert!(msg.contains("loopback") && msg.contains(addr), "{msg}");
    }
    let out = braid(&["demo", "--socks", "127.0.0.1:0", "--admin", "0.0.0.0:0"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("loopback"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("directory.toml"), "cell_size = 8192\n").unwrap();
    let cfg = dir.path().join("client.toml");
    std::fs::write(
        &cfg,
        "directory = \"directory.toml\"\nadmin = \"0.0.0.0:1081\"\n",
    )
    .unwrap();
    let out = braid(&["run", "--config", cfg.to_str().unwrap()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`admin`") && err.contains("loopback"), "{err}");
}

/// `braid run` serves its admin port too: over separate processes with two centrals,
/// `braid status --json` names the central the session runs through (the one whose
/// counters moved), and after `kill -9` of it, the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn braid_run_shows_the_central_in_use_and_the_next_after_a_kill() {
    use braid_config::Layout;
    use support::procs::{ProcOptions, ProcOverlay};

    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov = ProcOverlay::start(ProcOptions {
        layout: Layout {
            centrals: 2,
            ..Layout::default()
        },
        client_extra: "keepalive_ms = 200\npeer_timeout_ms = 500\n".into(),
        ..ProcOptions::default()
    });
    let url = format!("http://{origin}/echo/status");
    let (ok, body) = curl(ov.socks, &[&url]).await;
    assert!(ok && body == b"status");
    let admin = ov.client_admin.to_string();
    let central_now = || async {
        let out = braid(&["status", "--admin", &admin, "--json"]).await;
        assert!(out.status.success(), "{out:?}");
        let s: Status = serde_json::from_slice(&out.stdout).unwrap();
        s.session.map(|x| x.central)
    };
    let used = central_now().await.expect("a session is open");
    let cells = |id: &str| ov.metric(id, "braid_cells_in_total");
    let other = if used == "central-1" {
        "central-2"
    } else {
        "central-1"
    };
    assert!(
        cells(&used) > cells(other),
        "{used} carries the session: {} / {}",
        cells(&used),
        cells(other)
    );

    ov.kill9(&used);
    let killed = Instant::now();
    loop {
        // Traffic lets the client notice the dead central (or keepalives do).
        let _ = curl(ov.socks, &["--max-time", "1", &url]).await;
        if central_now().await.as_deref() == Some(other) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "status never named {other}\n--- client:\n{}",
            ov.log("client")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ov.assert_no_panics();
}
