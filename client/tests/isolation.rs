//! Stream isolation: different SOCKS usernames, SOCKS4 user ids and HTTP proxy users never
//! share an outer session (the central sees one session per user), and isolated sessions
//! are bounded and close when idle.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use braid_client::demo::{Demo, DemoOptions};
use braid_config::Role;
use braid_driver::Metrics;
use braid_testkit::*;

fn opts() -> DemoOptions {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        ..DemoOptions::default()
    }
}

/// Sessions the central has opened so far.
fn central_sessions(demo: &Demo) -> u64 {
    demo.nodes
        .iter()
        .filter(|n| n.role == Role::Central)
        .map(|n| Metrics::get(&n.metrics.sessions_opened))
        .sum()
}

/// curl through `proxy_url` to the origin; whether it succeeded.
async fn fetch(proxy_url: String, origin: SocketAddr) -> bool {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "-o",
                "/dev/null",
                "--proxy",
                &proxy_url,
            ])
            .arg(format!("http://{origin}/bytes/100000"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_gets_its_own_session_at_the_central() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(opts()).await.unwrap();
    let p = demo.socks;
    let base = central_sessions(&demo);
    assert_eq!(base, 1, "the client's first session");

    // Two users at once: two streams, two sessions.
    let (a, b) = tokio::join!(
        fetch(format!("socks5h://alice:x@{p}"), origin),
        fetch(format!("socks5h://bob:x@{p}"), origin)
    );
    assert!(a && b);
    assert_eq!(
        central_sessions(&demo),
        base + 2,
        "alice and bob arrive in two sessions"
    );
    for url in [
        format!("http://carol:x@{p}"),
        format!("socks4a://dave@{p}"),
        format!("socks5h://alice:other-password@{p}"),
        format!("socks5h://{p}"),
        format!("http://{p}"),
    ] {
        assert!(fetch(url.clone(), origin).await, "{url}");
    }
    // carol (HTTP) and dave (SOCKS4) are new; alice again and the user-less streams are not.
    assert_eq!(central_sessions(&demo), base + 4);
    assert_eq!(demo.sessions.isolated().await, 4);
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_sessions_are_capped_and_close_when_idle() {
    let origin = start_origin([127, 0, 0, 1]).await;
    let mut o = opts();
    o.max_isolated_sessions = 2;
    o.isolation_idle = Duration::from_secs(2);
    let demo = Demo::start(o).await.unwrap();
    let p = demo.socks;
    assert!(fetch(format!("socks5h://alice:x@{p}"), origin).await);
    assert!(fetch(format!("socks5h://bob:x@{p}"), origin).await);
    assert!(
        !fetch(format!("socks5h://eve:x@{p}"), origin).await,
        "a third user past max_isolated_sessions is refused"
    );
    assert!(
        fetch(format!("socks5h://{p}"), origin).await,
        "the first session still serves"
    );
    let before = central_sessions(&demo);
    // Past isolation_idle with no streams, both close; a user coming back gets a new one.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while demo.sessions.isolated().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle sessions never closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        fetch(format!("socks5h://eve:x@{p}"), origin).await,
        "room again"
    );
    assert_eq!(central_sessions(&demo), before + 1);
    demo.shutdown().await;
}

/// `braid run` with an HTTP-only port beside the mixed one: streams without any user
/// still get a session per listening port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_listening_port_gets_its_own_session() {
    use braid_testkit::procs::{ProcOptions, ProcOverlay};
    let origin = start_origin([127, 0, 0, 1]).await;
    let http_port = free_port("127.0.0.1".parse().unwrap(), false);
    let overlay = tokio::task::spawn_blocking(move || {
        ProcOverlay::start(ProcOptions {
            client_extra: format!("http_listen = \"127.0.0.1:{http_port}\"\n"),
            ..ProcOptions::default()
        })
    })
    .await
    .unwrap();
    let opened = || overlay.metric("central-1", "braid_sessions_opened_total");
    // The first session (however many Hellos it took while the overlay came up).
    assert!(fetch(format!("http://{}", overlay.socks), origin).await);
    let base = opened();
    assert!(base >= 1);
    assert!(fetch(format!("http://{}", overlay.socks), origin).await);
    assert_eq!(
        opened(),
        base,
        "the mixed port's user-less streams share the first session"
    );
    assert!(fetch(format!("http://127.0.0.1:{http_port}"), origin).await);
    assert_eq!(
        opened(),
        base + 1,
        "the HTTP-only port's streams get their own"
    );
    assert!(fetch(format!("http://127.0.0.1:{http_port}"), origin).await);
    assert!(fetch(format!("http://{}", overlay.socks), origin).await);
    assert_eq!(opened(), base + 1);
    overlay.assert_no_panics();
}
