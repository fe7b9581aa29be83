//! Fresh mailboxes per session: when the client opens a new session (here after its
//! central dies), it registers new mailbox secrets at every relay, so no relay's mailbox id
//! outlives a session and a relay or downstream cannot link the sessions by it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use braid_testkit as support;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_client::demo::{Demo, DemoOptions};
use braid_config::Layout;
use braid_driver::{Tap, TapPoint};
use braid_proto::frame::{MailboxId, MAILBOX_ID_LEN};
use support::*;

type Seen = Arc<Mutex<HashSet<(String, MailboxId)>>>;

/// The (relay, mailbox id) pairs the relays received deliveries for since the last call.
fn take(seen: &Seen) -> HashSet<(String, MailboxId)> {
    std::mem::take(&mut *seen.lock().unwrap())
}

/// Fetches `/echo/{word}` through the client until it works (10 s at most).
async fn fetch(demo: &Demo, origin: std::net::SocketAddr, word: &str) {
    let url = format!("http://{origin}/echo/{word}");
    let t0 = Instant::now();
    loop {
        let (ok, body) = curl(demo.socks, &["--max-time", "2", &url]).await;
        if ok && body == word.as_bytes() {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{url} never worked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_registers_fresh_mailboxes() {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    // A delivery at a relay is `mailbox[16] · cell`.
    let tap: Tap = Arc::new(move |node: &str, point: TapPoint, bytes: &[u8]| {
        if node.starts_with("relay") && point == TapPoint::Received {
            if let Ok(id) = MailboxId::try_from(&bytes[..MAILBOX_ID_LEN.min(bytes.len())]) {
                s.lock().unwrap().insert((node.to_string(), id));
            }
        }
    });
    let origin = start_origin([127, 0, 0, 1]).await;
    let demo = Demo::start(DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        layout: Layout {
            centrals: 2,
            relays: 2,
            ..Layout::default()
        },
        tap: Some(tap),
        keepalive: Duration::from_millis(200),
        peer_timeout: Duration::from_millis(1500),
        ..DemoOptions::default()
    })
    .await
    .unwrap();

    fetch(&demo, origin, "first").await;
    let first = demo.client.central().unwrap();
    let before = take(&seen);
    assert!(!before.is_empty(), "the relays delivered nothing");

    // The central in use dies; the client opens a session with the other.
    assert!(demo.kill(&first));
    let t0 = Instant::now();
    while demo.client.central().is_none_or(|c| c == first) {
        assert!(t0.elapsed() < Duration::from_secs(15), "no new session");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fetch(&demo, origin, "second").await;
    take(&seen);
    fetch(&demo, origin, "third").await;
    let after = take(&seen);
    assert!(!after.is_empty(), "the relays delivered nothing");
    let reused: Vec<_> = after.intersection(&before).collect();
    assert!(
        reused.is_empty(),
        "mailbox ids of the first session still used by the second: {reused:?}"
    );
    // One mailbox per relay in the new session, which each relay sees under one address
    // per downstream link (each downstream rewrites it for its link).
    let downstreams = demo
        .nodes
        .iter()
        .filter(|n| n.role == braid_config::Role::Downstream)
        .count();
    let relays: HashSet<&String> = after.iter().map(|(r, _)| r).collect();
    assert!(after.len() <= relays.len() * downstreams, "{after:?}");
    demo.shutdown().await;
}
