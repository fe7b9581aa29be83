//! The gateway over real QUIC, driven by a stand-in central (this test: the gateway dials it
//! as it dials any central, and it opens streams to the gateway as a central does). An open
//! is 0-RTT, so a central could replay one it carried: the replay must be refused before the
//! target sees a second connection, and so must opens from far off the gateway's clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use braid_config::Role;
use braid_net::{ClientAuth, PinSet};
use braid_node::exit::ExitPolicy;
use braid_node::gateway::{self, GatewayParams};
use braid_proto::inner::{self, MessageDecoder, OpenRequest, OpenStatus};
use braid_proto::TargetAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod common;
use common::TestNet;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A gateway linked to this test, which plays its central.
struct Net {
    conn: quinn::Connection,
    gateway_key: [u8; 32],
    stop: CancellationToken,
    _ep: quinn::Endpoint,
}

async fn start_gateway(window_secs: u64, cache: usize) -> Net {
    let net = TestNet::new(
        4096,
        [127, 31, 10],
        &[Role::Central, Role::Upstream, Role::Relay],
    );
    let central_addr = net.addr(Role::Central);
    let pins = PinSet::new();
    pins.insert(net.identity(Role::Gateway).tls_public());
    let ep = braid_net::server_endpoint(
        central_addr,
        net.identity(Role::Central),
        pins,
        ClientAuth::Required,
    )
    .unwrap();
    let (ctx, _, stop) = net.context(Role::Gateway);
    let params = GatewayParams {
        bind: "127.31.10.20:0".parse().unwrap(),
        connect_timeout: Duration::from_secs(5),
        policy: ExitPolicy {
            allow_loopback: true,
            ..ExitPolicy::default()
        },
        hosts: Default::default(),
        reconnect_min: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(100),
        max_streams: 64,
        link_idle_timeout: Duration::from_secs(30),
        link_stream_window: 1 << 20,
        handshake_timeout: Duration::from_secs(10),
        stream_idle_timeout: Duration::from_secs(3600),
        resume_grace: Duration::from_secs(1),
        resume_buffer: 1 << 20,
        resume_budget: 1 << 26,
        open_replay_window_secs: window_secs,
        open_replay_cache: cache,
        max_dns_lookups: 64,
        dns_timeout: Duration::from_secs(10),
        local_addrs_refresh: Duration::from_secs(60),
        log_destinations: false,
        udp: true,
        udp_idle: Duration::from_secs(120),
        max_udp_associations: 16,
        dns_ttl: 60,
    };
    tokio::spawn(gateway::run(ctx, params));
    let conn = tokio::time::timeout(Duration::from_secs(10), async {
        ep.accept().await.unwrap().await.unwrap()
    })
    .await
    .expect("the gateway dials its central");
    Net {
        conn,
        gateway_key: net.identity(Role::Gateway).noise_public(),
        stop,
        _ep: ep,
    }
}

/// A TCP target on 127.0.0.1 that counts the connections it accepts.
async fn counting_target() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            // Held open: the stream stays up while the test runs.
            tokio::spawn(async move {
                let _s = s;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    (addr, n)
}

/// Sends `first` on a new stream, as a central forwards an open; the gateway's first
/// message back, framed.
async fn send_open(net: &Net, first: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = net.conn.open_bi().await.unwrap();
    send.write_all(first).await.unwrap();
    let mut dec = MessageDecoder::default();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(m) = dec.next_message().unwrap() {
                let mut framed = (m.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&m);
                return framed;
            }
            let n = recv.read(&mut buf).await.unwrap().expect("a reply");
            dec.push(&buf[..n]);
        }
    })
    .await
    .expect("the gateway answers")
}

fn open_to(target: SocketAddr, net: &Net, sent_at: u64) -> (inner::ClientOpen, Vec<u8>) {
    let req = OpenRequest {
        kind: Default::default(),
        target: TargetAddr::Ip(target),
        early_data: b"hello".to_vec(),
    };
    inner::client_open(&mut rand::rng(), &net.gateway_key, &req, sent_at).unwrap()
}

/// A central records an honest open and sends it again on a new stream: the gateway
/// refuses it with a reply of the usual length, and the target sees one connection.
#[tokio::test]
async fn a_replayed_open_is_refused_and_the_target_sees_one_connection() {
    let (target, conns) = counting_target().await;
    let net = start_gateway(120, 1000).await;
    let (open, first) = open_to(target, &net, unix_now());
    let reply = send_open(&net, &first).await;
    let (status, _, _) = open.finish(&reply[2..]).unwrap();
    assert_eq!(status, OpenStatus::OK);

    for _ in 0..3 {
        let again = send_open(&net, &first).await;
        assert_eq!(again.len(), reply.len(), "a refusal looks like any reply");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the replays reached the target"
    );
    net.stop.cancel();
}

/// The window and the cache's cap come from the gateway's config: with a 2 s window an
/// open sent 5 s ago or ahead is refused as stale, and with room for 2 keys a third fresh
/// open is refused as over a limit; neither reaches the target.
#[tokio::test]
async fn stale_opens_and_a_full_cache_are_refused() {
    let (target, conns) = counting_target().await;
    let net = start_gateway(2, 2).await;
    for skew in [-5i64, 5] {
        let (open, first) = open_to(target, &net, unix_now().saturating_add_signed(skew));
        let reply = send_open(&net, &first).await;
        let (status, why, _) = open.finish(&reply[2..]).unwrap();
        assert_eq!(status, OpenStatus::PROTOCOL_ERROR, "{why}");
        assert!(why.contains("more than 2 s"), "{why}");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 0);
    for _ in 0..2 {
        let (open, first) = open_to(target, &net, unix_now());
        let (status, _, _) = open.finish(&send_open(&net, &first).await[2..]).unwrap();
        assert_eq!(status, OpenStatus::OK);
    }
    let (open, first) = open_to(target, &net, unix_now());
    let (status, _, _) = open.finish(&send_open(&net, &first).await[2..]).unwrap();
    assert_eq!(status, OpenStatus::RESOURCE_LIMIT);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    net.stop.cancel();
}
