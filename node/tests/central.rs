//! The central over real QUIC: a node whose key is not in the directory is refused; the
//! session cap and the idle timeout hold.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use braid_config::{Directory, NodeEntry, Role};
use braid_driver::Metrics;
use braid_net::NodeIdentity;
use braid_node::{central, NodeContext};
use braid_proto::session::{PendingSession, SessionConfig, SessionHello};
use tokio_util::sync::CancellationToken;

fn free_udp(ip: [u8; 4]) -> SocketAddr {
    std::net::UdpSocket::bind(SocketAddr::from((ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
}

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
    let mut rng = rand::rng();
    let ids: Vec<NodeIdentity> = (0..5)
        .map(|_| NodeIdentity::generate(&mut rng).unwrap())
        .collect();
    let central_addr = free_udp([127, 31, 9, 4]);
    let roles = [
        Role::Central,
        Role::Upstream,
        Role::Downstream,
        Role::Relay,
        Role::Gateway,
    ];
    let entries = ids
        .iter()
        .zip(roles)
        .enumerate()
        .map(|(i, (id, role))| {
            let addr = match role {
                Role::Central => Some(central_addr),
                Role::Downstream | Role::Gateway => None,
                _ => Some(free_udp([127, 31, 9, 10 + i as u8])),
            };
            NodeEntry::new(
                format!("{}-1", role.as_str()),
                role,
                addr,
                id.noise_public(),
                id.tls_public(),
            )
        })
        .collect();
    let directory = Arc::new(Directory::validated(4096, entries).unwrap());
    let metrics = Arc::new(Metrics::default());
    let stop = CancellationToken::new();
    let ctx = NodeContext {
        id: "central-1".into(),
        identity: ids[0].clone(),
        directory: directory.clone(),
        metrics: metrics.clone(),
        tap: None,
        drain: stop.clone(),
        shutdown: stop.clone(),
    };
    tokio::spawn(central::run(
        ctx,
        central::CentralParams {
            listen: central_addr,
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
        },
    ));
    // Wait for the central's socket.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Net {
        central_addr,
        central: ids[0].clone(),
        upstream: ids[1].clone(),
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

/// Hands the central `n` Hello cells of `n` new sessions, as an upstream would.
async fn send_hellos(net: &Net, n: usize) {
    let ep =
        braid_net::client_endpoint("127.31.9.98:0".parse().unwrap(), Some(&net.upstream)).unwrap();
    let conn = braid_net::connect(&ep, net.central_addr, net.central.tls_public())
        .await
        .unwrap();
    let mut s = conn.open_uni().await.unwrap();
    let hello = SessionHello {
        window_cells: 64,
        mailboxes: Vec::new(),
    };
    for _ in 0..n {
        let pending = PendingSession::start(
            &mut rand::rng(),
            SessionConfig::with_cell_size(4096),
            &net.central.noise_public(),
            &hello,
        )
        .unwrap();
        braid_net::write_frame(&mut s, pending.hello_cell())
            .await
            .unwrap();
    }
    // Let the central take them before the link goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    ep.close(0u32.into(), b"");
}

#[tokio::test]
async fn central_holds_at_most_max_sessions() {
    let net = start_central_with(3, Duration::from_secs(60)).await;
    send_hellos(&net, 5).await;
    assert_eq!(Metrics::get(&net.metrics.sessions_opened), 3);
    assert!(
        Metrics::get(&net.metrics.cells_dropped) >= 2,
        "Hellos over the cap are dropped"
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
