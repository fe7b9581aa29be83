//! Streams that outlive their carrier, and the limits of that: a stream survives a restart
//! of the only central; the gateway keeps a target only for its grace period when no resume
//! comes; a stream whose gateway died is reset promptly rather than left hanging. Over
//! separate processes where a process must die, the in-process demo otherwise; timeouts
//! are shortened by config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use braid_client::demo::{Demo, DemoOptions};
use braid_config::Layout;
use braid_testkit as support;
use support::procs::{ProcOptions, ProcOverlay};
use support::socks::{echo, socks_connect, start_counting_echo};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const QUICK: &str = "keepalive_ms = 200\npeer_timeout_ms = 500\nsession_wait_ms = 10000\n";

/// The only central is killed and started again: an interactive stream opened before keeps
/// echoing, over the same target connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_restart_of_the_only_central() {
    let (echo_addr, accepts) = start_counting_echo().await;
    let mut ov = ProcOverlay::start(ProcOptions {
        client_extra: QUICK.into(),
        ..ProcOptions::default()
    });
    let mut s = socks_connect(ov.socks, echo_addr).await;
    echo(&mut s, b"before").await;
    ov.kill9("central-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ov.restart("central-1");
    let back = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), echo(&mut s, b"after"))
        .await
        .unwrap_or_else(|_| panic!("no echo after the restart\n{}", ov.log("client")));
    eprintln!(
        "echo answered {:?} after the central came back",
        back.elapsed()
    );
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "the same target connection"
    );
    assert!(ov.metric("gateway-1", "braid_streams_resumed_total") >= 1);
    ov.assert_no_panics();
}

/// A target that reports, once, when its one connection is closed by the far side.
async fn target_that_reports_its_close() -> (SocketAddr, oneshot::Receiver<Instant>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        // Echo what comes, until the gateway closes the connection.
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    use tokio::io::AsyncWriteExt;
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Instant::now());
    });
    (addr, rx)
}

/// The client dies (kill -9), so no resume ever comes: the central drops its session after
/// the idle timeout, the gateway's carrier goes, and the gateway keeps the target
/// connection for its grace period (1 s here), then closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_resume_the_gateway_closes_the_target_after_its_grace() {
    let (target, closed) = target_that_reports_its_close().await;
    let mut ov = ProcOverlay::start(ProcOptions {
        central_extra: "idle_timeout_secs = 1\n".into(),
        gateway_extra: "resume_grace_ms = 1000\n".into(),
        client_extra: QUICK.into(),
        ..ProcOptions::default()
    });
    let mut s = socks_connect(ov.socks, target).await;
    echo(&mut s, b"hello").await;
    ov.kill9_client();
    // The carrier goes when the central drops the session.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ov.metric("gateway-1", "braid_streams_detached") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stream never lost its carrier"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let detached = Instant::now();
    let closed_at = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the gateway closed the target")
        .unwrap();
    let held = closed_at.saturating_duration_since(detached);
    eprintln!("target held {held:?} after its stream lost its carrier");
    assert!(
        held >= Duration::from_millis(800) && held < Duration::from_secs(3),
        "held {held:?} for a grace of 1 s"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while ov.metric("gateway-1", "braid_streams_detached") != 0 {
        assert!(
            Instant::now() < deadline,
            "the detached stream was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ov.metric("gateway-1", "braid_streams_resumed_total"), 0);
    ov.assert_no_panics();
}

/// A stream on a gateway that dies: the resume finds no link to that gateway, and the app
/// connection is reset within the session wait (1 s here), not left hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_dead_gateway_is_reset_promptly() {
    let (echo_addr, _) = start_counting_echo().await;
    let demo = Demo::start(DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        layout: Layout {
            gateways: 2,
            ..Layout::default()
        },
        gateway: Some("gateway-1".into()),
        session_wait: Duration::from_secs(1),
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    let mut s = socks_connect(demo.socks, echo_addr).await;
    echo(&mut s, b"hello").await;
    assert!(demo.kill("gateway-1"));
    let killed = Instant::now();
    let mut buf = [0u8; 16];
    let end = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("the stream ended instead of hanging");
    let took = killed.elapsed();
    eprintln!("stream on the dead gateway ended after {took:?}: {end:?}");
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a reset, not a clean close: {end:?}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
    demo.shutdown().await;
}

/// Sessions rotate on `session_lifetime`: each next session has new keys, labels and
/// mailboxes, and the streams resume on it. Over several rotations an interactive stream
/// keeps echoing on the same target connection, and a rate-limited download that spans
/// them arrives intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_live_through_session_rotations() {
    let (echo_addr, accepts) = start_counting_echo().await;
    let origin = support::start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        session_lifetime: Duration::from_millis(1500),
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    let n: u64 = 4 << 20;
    let url = format!("http://{origin}/bytes/{n}");
    let socks = demo.socks;
    // ~1 MB/s: the download spans three or four sessions.
    let download =
        tokio::spawn(async move { support::curl(socks, &["--limit-rate", "1M", &url]).await });
    let mut s = socks_connect(demo.socks, echo_addr).await;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut i = 0u32;
    while started.elapsed() < Duration::from_secs(6) {
        let t = Instant::now();
        echo(&mut s, format!("line {i}").as_bytes()).await;
        slowest = slowest.max(t.elapsed());
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, body) = download.await.unwrap();
    assert!(ok, "the download failed");
    assert_eq!(body.len() as u64, n);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == support::body_byte(i as u64)),
        "the download differs"
    );
    let rotated = braid_driver::Metrics::get(&demo.client.metrics.sessions_rotated);
    let central = demo.nodes.iter().find(|n| n.id == "central-1").unwrap();
    // The client counts a rotation before its next session reaches the central, so the
    // central's count may trail by one for a moment.
    let waited = Instant::now();
    let mut opened = braid_driver::Metrics::get(&central.metrics.sessions_opened);
    while opened <= rotated && waited.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        opened = braid_driver::Metrics::get(&central.metrics.sessions_opened);
    }
    eprintln!("{i} echoes, slowest {slowest:?}; {rotated} rotations, {opened} sessions opened");
    assert!(rotated >= 3, "only {rotated} rotations in 6 s");
    assert!(
        opened > rotated,
        "{opened} sessions opened for {rotated} rotations"
    );
    assert_eq!(
        accepts.load(Ordering::SeqCst),
        1,
        "the same target connection"
    );
    demo.shutdown().await;
}
