//! Several gateways, chosen per stream: a dead one is routed around, a stream is never
//! handed to a gateway the client did not name, and an app names one by its SOCKS5 username.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_client::demo::{Demo, DemoOptions};
use braid_config::Layout;
use braid_driver::Metrics;
use braid_testkit as support;
use support::*;

fn two_gateways(gateway: Option<&str>) -> DemoOptions {
    DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        layout: Layout {
            gateways: 2,
            ..Layout::default()
        },
        gateway: gateway.map(str::to_string),
        ..DemoOptions::default()
    }
}

fn streams_opened(demo: &Demo, id: &str) -> u64 {
    Metrics::get(&demo.node(id).unwrap().metrics.streams_opened)
}

async fn get(demo: &Demo, url: &str) -> bool {
    let (ok, body) = curl(demo.socks, &["--max-time", "5", url]).await;
    ok && url.ends_with(&*String::from_utf8_lossy(&body))
}

/// Streams spread over both gateways; with one killed, new streams go through the other
/// at once, every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_gateway_is_routed_around() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(two_gateways(None)).await.unwrap();
    let url = format!("http://{origin}/echo/spread");
    for _ in 0..20 {
        assert!(get(&demo, &url).await);
    }
    let (g1, g2) = (
        streams_opened(&demo, "gateway-1"),
        streams_opened(&demo, "gateway-2"),
    );
    assert!(g1 > 0 && g2 > 0, "both gateways carry streams: {g1} / {g2}");

    demo.kill("gateway-1");
    let killed = Instant::now();
    let url = format!("http://{origin}/echo/after");
    assert!(get(&demo, &url).await, "the first stream after the kill");
    let first = killed.elapsed();
    for _ in 0..10 {
        assert!(get(&demo, &url).await);
    }
    assert!(
        first < Duration::from_secs(1),
        "first stream took {first:?}"
    );
    assert!(streams_opened(&demo, "gateway-2") >= g2 + 11);
    demo.shutdown().await;
}

/// A client that names gateway-1 is refused when gateway-1 is gone, promptly, and nothing
/// of its goes to gateway-2: the central hands a stream only to the gateway named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_goes_only_to_the_gateway_named() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(two_gateways(Some("gateway-1"))).await.unwrap();
    let url = format!("http://{origin}/echo/pinned");
    for _ in 0..5 {
        assert!(get(&demo, &url).await);
    }
    assert_eq!(streams_opened(&demo, "gateway-1"), 5);
    demo.kill("gateway-1");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    assert!(!get(&demo, &url).await, "refused without its gateway");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        streams_opened(&demo, "gateway-2"),
        0,
        "nothing went elsewhere"
    );
    demo.shutdown().await;
}

/// A SOCKS5 username that names a gateway pins the stream there: curl with
/// `--proxy-user gateway-2:x` exits via gateway-2 every time (its tap saw the destination,
/// gateway-1's did not); with gateway-2 killed, such a stream is refused (reply 03, curl
/// exit 97) promptly and nothing goes to gateway-1, while streams without a pin still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks_username_naming_a_gateway_pins_the_stream_to_it() {
    let origin = start_origin([127, 0, 0, 1]).await;
    // What each gateway received, emitted or decrypted.
    let seen: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let log = seen.clone();
    let tap: braid_driver::Tap = Arc::new(move |node: &str, _, bytes: &[u8]| {
        if node.starts_with("gateway") {
            let mut l = log.lock().unwrap();
            l.entry(node.to_string())
                .or_default()
                .extend_from_slice(bytes);
        }
    });
    let saw = |node: &str, needle: &str| {
        seen.lock()
            .unwrap()
            .get(node)
            .is_some_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    let host = "pinned-dest.braid.test";
    let mut opts = two_gateways(None);
    opts.tap = Some(tap);
    opts.hosts.insert(host.to_string(), origin.ip());
    let demo = Demo::start(opts).await.unwrap();
    let url = format!("http://{host}:{}/echo/pinned-by-username", origin.port());
    let pinned = ["--proxy-user", "gateway-2:x"];
    for _ in 0..8 {
        let (ok, body) = curl(demo.socks, &[&pinned[..], &[url.as_str()]].concat()).await;
        assert!(
            ok && body == b"pinned-by-username",
            "{:?}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(streams_opened(&demo, "gateway-2"), 8);
    assert_eq!(
        streams_opened(&demo, "gateway-1"),
        0,
        "all went via gateway-2"
    );
    assert!(saw("gateway-2", host), "gateway-2 saw the destination");
    assert!(!saw("gateway-1", host), "gateway-1 did not");
    // A username that names no gateway pins nothing: streams spread again.
    for _ in 0..12 {
        let (ok, _) = curl(demo.socks, &["--proxy-user", "alice:pw", &url]).await;
        assert!(ok);
    }
    assert!(streams_opened(&demo, "gateway-1") > 0);

    demo.kill("gateway-2");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let g1 = streams_opened(&demo, "gateway-1");
    let asked = Instant::now();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--proxy"])
        .arg(format!("socks5h://{}", demo.socks))
        .args(pinned)
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(97),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(
        streams_opened(&demo, "gateway-1"),
        g1,
        "nothing went elsewhere"
    );
    // Unpinned streams go through gateway-1.
    assert!(get(&demo, &format!("http://{origin}/echo/unpinned")).await);
    demo.shutdown().await;
}

/// `gateway_choice = "sticky"`: every stream to one host exits through one gateway, while
/// different hosts still spread over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_choice_keeps_a_host_on_one_gateway() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut opts = two_gateways(None);
    opts.gateway_choice.choice = braid_config::GatewayChoice::Sticky;
    let hosts: Vec<String> = (0..16).map(|i| format!("site-{i}.braid.test")).collect();
    for h in &hosts {
        opts.hosts.insert(h.clone(), origin.ip());
    }
    let demo = Demo::start(opts).await.unwrap();
    let count = |demo: &Demo| {
        (
            streams_opened(demo, "gateway-1"),
            streams_opened(demo, "gateway-2"),
        )
    };
    let url = |h: &str| format!("http://{h}:{}/echo/sticky", origin.port());
    for _ in 0..10 {
        assert!(get(&demo, &url(&hosts[0])).await);
    }
    let (a, b) = count(&demo);
    assert!(
        (a, b) == (10, 0) || (a, b) == (0, 10),
        "one host, one gateway: {a} / {b}"
    );
    for h in &hosts[1..] {
        assert!(get(&demo, &url(h)).await);
    }
    let (a2, b2) = count(&demo);
    assert!(a2 > a && b2 > b, "hosts spread: {a2} / {b2}");
    demo.shutdown().await;
}

/// Over separate processes, `kill -9` of one of two gateways (no goodbye: its links just go
/// silent). Its links are noticed dead within `link_idle_timeout_ms` (500 ms here); new
/// streams use the other gateway within 1 s, every one of them; a stream that was open on
/// the dead gateway is reset, not left hanging; nothing reaches a gateway not named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_gateway_new_streams_use_the_other_within_1_s() {
    use support::procs::{ProcOptions, ProcOverlay};
    use support::socks::{echo, socks_connect, start_counting_echo};
    use tokio::io::AsyncReadExt;

    let origin = start_origin([127, 0, 0, 1]).await;
    let (echo_addr, _) = start_counting_echo().await;
    let mut ov = ProcOverlay::start(ProcOptions {
        layout: Layout {
            gateways: 2,
            ..Layout::default()
        },
        gateway_extra: "link_idle_timeout_ms = 500\n".into(),
        client_extra: "session_wait_ms = 1000\n".into(),
        ..ProcOptions::default()
    });
    // Interactive streams until one runs through gateway-1.
    let mut on_dead = None;
    for _ in 0..20 {
        let before = ov.metric("gateway-1", "braid_streams_opened_total");
        let mut s = socks_connect(ov.socks, echo_addr).await;
        echo(&mut s, b"hi").await;
        if ov.metric("gateway-1", "braid_streams_opened_total") > before {
            on_dead = Some(s);
            break;
        }
    }
    let mut on_dead = on_dead.expect("a stream through gateway-1");
    ov.kill9("gateway-1");
    let killed = Instant::now();
    // New streams: the first success and the next 20, all through gateway-2.
    let url = format!("http://{origin}/echo/after");
    let mut first = None;
    while killed.elapsed() < Duration::from_secs(10) {
        let (ok, body) = curl(ov.socks, &["--max-time", "3", &url]).await;
        if ok && body == b"after" {
            first = Some(killed.elapsed());
            break;
        }
    }
    let first = first.expect("a new stream within 10 s");
    for i in 0..20 {
        let (ok, body) = curl(ov.socks, &["--max-time", "3", &url]).await;
        assert!(ok && body == b"after", "stream {i} after the kill");
    }
    let mut buf = [0u8; 8];
    let end = tokio::time::timeout(Duration::from_secs(10), on_dead.read(&mut buf))
        .await
        .expect("the stream on the dead gateway ended instead of hanging");
    let ended = killed.elapsed();
    eprintln!("kill -9 of gateway-1: first new stream after {first:?}; its open stream ended after {ended:?} ({end:?})");
    assert!(
        first < Duration::from_secs(1),
        "first new stream after {first:?}"
    );
    assert!(end.is_err(), "a reset, not a clean close: {end:?}");
    ov.assert_no_panics();
}
