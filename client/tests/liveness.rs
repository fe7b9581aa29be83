//! A client left running: quiet sessions outlive the central's idle timeout, silent streams
//! keep working, and a restarted central is taken up again without being asked. Timeouts
//! are shortened by config so that the tests take seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use braid_client::demo::{Demo, DemoOptions};
use braid_testkit as support;
use support::procs::{ProcOptions, ProcOverlay};
use support::socks::{connect_ipv4, echo, socks_connect, start_echo, GREET_NO_AUTH};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The central's idle timeout (1 s) passes twice while nothing is sent: the client's
/// keepalives keep the session, so a new stream works at once and an interactive stream
/// that was silent all along still carries data both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_client_outlives_the_central_idle_timeout() {
    let echo_addr = start_echo().await;
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        central_idle_timeout: Duration::from_secs(1),
        keepalive: Duration::from_millis(200),
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    let mut interactive = socks_connect(demo.socks, echo_addr).await;
    echo(&mut interactive, b"ping").await;

    tokio::time::sleep(Duration::from_millis(2500)).await;

    let started = Instant::now();
    let url = format!("http://{origin}/echo/after-idle");
    let (ok, body) = curl(demo.socks, &[&url]).await;
    assert!(
        ok && body == b"after-idle",
        "a new stream after the idle time"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the new stream took {took:?}"
    );
    echo(&mut interactive, b"pong").await;
    for n in &demo.nodes {
        assert_eq!(
            braid_driver::Metrics::get(&n.metrics.sessions_evicted),
            0,
            "{}",
            n.id
        );
    }
    demo.shutdown().await;
}

/// The only central is killed and started again from its config: the client notices that
/// its session is gone (its keepalive goes unanswered), opens a new one, and serves new
/// streams within 2 s of the central's return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_central_is_taken_up_again() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov = ProcOverlay::start(ProcOptions {
        client_extra: "keepalive_ms = 200\npeer_timeout_ms = 500\nsession_wait_ms = 10000\n".into(),
        ..ProcOptions::default()
    });
    let url = format!("http://{origin}/echo/before");
    let (ok, _) = curl(ov.socks, &[&url]).await;
    assert!(ok, "the overlay works before the restart");

    ov.kill9("central-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    ov.restart("central-1");
    let back = Instant::now();
    let url = format!("http://{origin}/echo/after");
    let mut served = None;
    while back.elapsed() < Duration::from_secs(10) {
        let (ok, body) = curl(ov.socks, &["--max-time", "1", &url]).await;
        if ok && body == b"after" {
            served = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = served.unwrap_or_else(|| {
        let logs: String = ["client", "upstream-1", "downstream-1", "gateway-1"]
            .iter()
            .map(|id| format!("--- {id}:\n{}\n", ov.log(id)))
            .collect();
        panic!("no stream served within 10 s of the central's return\n{logs}")
    });
    eprintln!("served again {took:?} after the central's return");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Every node relinks (a dialer learns of the restart at its next packet, a keep-alive
    // at most a second away) and says so on /health.
    for n in &ov.nodes {
        let asked = Instant::now();
        loop {
            let (code, body) = ov.health(&n.id).unwrap();
            if code == 200 {
                break;
            }
            assert!(
                asked.elapsed() < Duration::from_secs(5),
                "{}: {code} {body}",
                n.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(ov.log("client").contains("session lost"));
    ov.assert_no_panics();
}

/// With the central gone for good, a new stream waits `session_wait_ms` for a session and
/// then gets a clear SOCKS5 refusal (01), not a 06 after 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_central_a_new_stream_is_refused_after_the_session_wait() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut ov = ProcOverlay::start(ProcOptions {
        client_extra: "keepalive_ms = 200\npeer_timeout_ms = 500\nsession_wait_ms = 700\n".into(),
        ..ProcOptions::default()
    });
    ov.kill9("central-1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ov.log("client").contains("session lost") {
        assert!(Instant::now() < deadline, "the client never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    let mut s = TcpStream::connect(ov.socks).await.unwrap();
    s.write_all(GREET_NO_AUTH).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    s.write_all(&connect_ipv4(origin)).await.unwrap();
    let mut reply = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut reply))
        .await
        .expect("a reply came")
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(reply[1], 1, "general failure: no session");
    assert!(
        (Duration::from_millis(600)..Duration::from_secs(3)).contains(&took),
        "answered after {took:?}"
    );
    ov.assert_no_panics();
}
