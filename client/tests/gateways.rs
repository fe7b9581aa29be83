//! Several gateways, chosen per stream: a dead one is routed around, and a stream is never
//! handed to a gateway the client did not name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
