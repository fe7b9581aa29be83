//! The central over real QUIC: a node whose key is not in the directory is refused; the
//! session cap and the idle timeout hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use braid_config::Role;
use braid_driver::Metrics;
use braid_net::NodeIdentity;
use braid_node::central;
use braid_proto::session::{PendingSession, SessionConfig, SessionHello};
use tokio_util::sync::CancellationToken;

mod common;
use common::TestNet;

struct Net {
    central_addr: SocketAddr,
    central: NodeIdentity,
    upstream: NodeIdentity,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

async fn start_central() -> Net {
    start_central_with(10, Duration::from_secs(60)).await
}

async fn start_central_with(max_sessions: usize, idle_timeout: Duration) -> Net {
    start_central_admitting(
        max_sessions,
        idle_timeout,
        central::AdmissionParams::default(),
    )
    .await
}

async fn start_central_admitting(
    max_sessions: usize,
    idle_timeout: Duration,
    admission: central::AdmissionParams,
) -> Net {
    let net = TestNet::new(
        4096,
        [127, 31, 9],
        &[Role::Central, Role::Upstream, Role::Relay],
    );
    let central_addr = net.addr(Role::Central);
    let directory = net.directory.clone();
    let (ctx, metrics, stop) = net.context(Role::Central);
    tokio::spawn(central::run(
        ctx,
        central::CentralParams {
            listen: central_addr,
            max_joined: 16,
            session: braid_node::central_session_config(&directory, 64, 16 << 20),
            idle_timeout,
            reassembly_timeout: Duration::from_secs(60),
            global_reorder_bytes: 256 << 20,
            max_sessions,
            max_streams_per_session: 4096,
            stream_open_rate: 200,
            stream_open_burst: 1000,
            gateway_link: braid_net::LinkTuning::per_stream_credit(1024, 1 << 20),
            session_stalled_streams: 64,
            global_stalled_streams: 1024,
            admission,
            global_send_bytes: 256 << 20,
            mailbox_change_interval: Duration::from_secs(1),
        },
    ));
    // Wait for the central's socket.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Net {
        central_addr,
        central: net.identity(Role::Central).clone(),
        upstream: net.identity(Role::Upstream).clone(),
        metrics,
        stop,
    }
}

/// Dials the central as `who` and tries to use the link; true if a stream could be used.
async fn link_works(net: &Net, who: &NodeIdentity) -> bool {
    let ep = braid_net::client_endpoint("127.31.9.99:0".parse().unwrap(), Some(who)).unwrap();
    let attempt = async {
        let conn = braid_net::connect(&ep, net.central_addr, net.central.tls_public())
            .await
            .ok()?;
        let mut s = conn.open_uni().await.ok()?;
        s.write_all(&[0u8; 4096]).await.ok()?;
        // A refused peer's connection is closed by the server right after the handshake.
        tokio::time::sleep(Duration::from_millis(300)).await;
        conn.close_reason().is_none().then_some(())
    };
    let ok = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .is_some();
    ep.close(0u32.into(), b"");
    ok
}

#[tokio::test]
async fn central_refuses_a_key_not_in_the_directory() {
    let net = start_central().await;
    assert!(
        link_works(&net, &net.upstream).await,
        "a listed upstream must get in"
    );
    let rogue = NodeIdentity::generate(&mut rand::rng()).unwrap();
    assert!(
        !link_works(&net, &rogue).await,
        "an unlisted key must be refused"
    );
    assert!(Metrics::get(&net.metrics.peers_refused) >= 1);
    net.stop.cancel();
}

#[tokio::test]
async fn a_client_refuses_a_central_with_another_key() {
    let net = start_central().await;
    let ep =
        braid_net::client_endpoint("127.31.9.98:0".parse().unwrap(), Some(&net.upstream)).unwrap();
    let impostor_key = NodeIdentity::generate(&mut rand::rng())
        .unwrap()
        .tls_public();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        braid_net::connect(&ep, net.central_addr, impostor_key),
    )
    .await
    .unwrap();
    assert!(r.is_err(), "the dialer pins the key it expects");
    net.stop.cancel();
}

/// A new session's Hello cell, sent at `unix_secs`.
fn hello_cell(net: &Net, unix_secs: u64) -> Vec<u8> {
    let hello = SessionHello {
        window_cells: 64,
        mailboxes: Vec::new(),
        limits_pass: Vec::new(),
    };
    PendingSession::start(
        &mut rand::rng(),
        SessionConfig::with_cell_size(4096),
        &net.central.noise_public(),
        &hello,
        unix_secs,
        0,
    )
    .unwrap()
    .hello_cell()
    .to_vec()
}

/// Hands the central `cells`, as an upstream would.
async fn send_cells(net: &Net, cells: &[Vec<u8>]) {
    let ep =
        braid_net::client_endpoint("127.31.9.98:0".parse().unwrap(), Some(&net.upstream)).unwrap();
    let conn = braid_net::connect(&ep, net.central_addr, net.central.tls_public())
        .await
        .unwrap();
    let mut s = conn.open_uni().await.unwrap();
    for c in cells {
        braid_net::write_frame(&mut s, c).await.unwrap();
    }
    // Let the central take them before the link goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ep.close(0u32.into(), b"");
}

/// Hands the central `n` Hello cells of `n` new sessions, as an upstream would.
async fn send_hellos(net: &Net, n: usize) {
    let cells: Vec<Vec<u8>> = (0..n)
        .map(|_| hello_cell(net, braid_driver::unix_now()))
        .collect();
    send_cells(net, &cells).await;
}

#[tokio::test]
async fn central_holds_at_most_max_sessions() {
    let net = start_central_with(3, Duration::from_secs(60)).await;
    send_hellos(&net, 5).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 3);
    assert!(
        Metrics::get(&net.metrics.hellos_refused) >= 2,
        "Hellos over the cap are refused"
    );
    net.stop.cancel();
}

/// A session that stays silent past `idle_timeout` is closed, and its slot comes back.
#[tokio::test]
async fn central_closes_a_silent_session_after_its_idle_timeout() {
    let net = start_central_with(1, Duration::from_millis(400)).await;
    send_hellos(&net, 1).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while Metrics::get(&net.metrics.sessions_closed) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle session stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The cap of one has room again.
    send_hellos(&net, 1).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 2);
    net.stop.cancel();
}

/// A replayed Hello opens nothing, neither while its session lives nor after it closed.
/// Before the replay cache, a replay after the session's end opened it again (so an
/// upstream could replay a client's Hello and watch what the central does).
#[tokio::test]
async fn a_replayed_hello_opens_no_session() {
    let net = start_central_with(10, Duration::from_millis(400)).await;
    let hello = hello_cell(&net, braid_driver::unix_now());
    send_cells(&net, &[hello.clone(), hello.clone()]).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 1);
    // Once the session has closed (idle), the replay is still refused.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_closed), 1);
    send_cells(&net, &[hello]).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 1);
    assert!(Metrics::get(&net.metrics.hellos_refused) >= 1);
    // A Hello whose time is outside the window is refused too (one an old replay cache
    // could have forgotten).
    let old = hello_cell(&net, braid_driver::unix_now() - 3600);
    send_cells(&net, &[old]).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 1);
    net.stop.cancel();
}

/// An upstream that saw a client's Hello cannot take its session id: a Hello of its own
/// under the victim's id is refused (the id is the hash of the Hello's ephemeral key), a
/// Hello with the victim's key but not its secret fails the handshake and blocks nothing,
/// and the victim's real Hello, arriving after both, opens its session. Before, the forged
/// Hello was accepted and the victim's was then taken as a copy of it.
#[tokio::test]
async fn a_forged_hello_cannot_take_a_clients_session_id() {
    let net = start_central().await;
    let victim = hello_cell(&net, braid_driver::unix_now());
    let mut own_under_victims_id = hello_cell(&net, braid_driver::unix_now());
    own_under_victims_id[2..18].copy_from_slice(&victim[2..18]);
    let mut victims_key_garbage_rest = victim.clone();
    let body = braid_proto::cell::HEADER_LEN + 2 + 32;
    for b in &mut victims_key_garbage_rest[body..body + 64] {
        *b ^= 0x5a;
    }
    send_cells(&net, &[own_under_victims_id, victims_key_garbage_rest]).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 0);
    assert_eq!(Metrics::get(&net.metrics.hellos_refused), 2);
    send_cells(&net, &[victim]).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 1);
    net.stop.cancel();
}

/// A session the client never confirms with a sealed cell is half-open: dropped after
/// `half_open_timeout` (300 ms here, while the idle timeout is a minute), and beyond
/// `max_half_open` the oldest go first.
#[tokio::test]
async fn half_open_sessions_are_few_and_short_lived() {
    let net = start_central_admitting(
        100,
        Duration::from_secs(60),
        central::AdmissionParams {
            max_half_open: 3,
            half_open_timeout: Duration::from_millis(300),
            ..central::AdmissionParams::default()
        },
    )
    .await;
    send_hellos(&net, 5).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 5);
    // Two were over the cap at once.
    assert!(Metrics::get(&net.metrics.sessions_evicted) >= 2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while Metrics::get(&net.metrics.sessions_closed) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "half-open sessions stayed: {} closed",
            Metrics::get(&net.metrics.sessions_closed)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    net.stop.cancel();
}
