//! The gateway over real QUIC, facing a central that deviates: a stream whose first message
//! never completes is reset at the handshake deadline, so a central (or a client through
//! it) cannot hold the gateway's stream slots with streams that say nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_config::Role;
use braid_driver::Metrics;
use braid_net::{ClientAuth, PinSet};
use braid_node::exit::ExitPolicy;
use braid_node::gateway;
use tokio_util::sync::CancellationToken;

mod common;
use common::TestNet;

/// A hand-driven central and a real gateway linked to it.
struct Net {
    link: quinn::Connection,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    _ep: quinn::Endpoint,
}

async fn start(handshake_timeout: Duration) -> Net {
    let net = TestNet::new(
        4096,
        [127, 31, 10],
        &[Role::Central, Role::Upstream, Role::Relay],
    );
    let central_addr = net.addr(Role::Central);
    let pins: PinSet = [net.identity(Role::Gateway).tls_public()]
        .into_iter()
        .collect();
    let ep = braid_net::server_endpoint(
        central_addr,
        net.identity(Role::Central),
        pins,
        ClientAuth::Required,
    )
    .unwrap();
    let (ctx, metrics, stop) = net.context(Role::Gateway);
    let params = gateway::GatewayParams {
        bind: "127.0.0.1:0".parse().unwrap(),
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
        handshake_timeout,
        stream_idle_timeout: Duration::from_secs(3600),
        resume_grace: Duration::from_secs(1),
        resume_buffer: 1 << 20,
        resume_budget: 1 << 30,
        open_replay_window_secs: 120,
        open_replay_cache: 1000,
        max_dns_lookups: 64,
        dns_timeout: Duration::from_secs(10),
        local_addrs_refresh: Duration::from_secs(60),
        log_destinations: false,
        udp: true,
        udp_idle: std::time::Duration::from_secs(120),
        max_udp_associations: 16,
        dns_ttl: 60,
    };
    tokio::spawn(gateway::run(ctx, params));
    let link = tokio::time::timeout(Duration::from_secs(10), async {
        ep.accept().await.unwrap().await.unwrap()
    })
    .await
    .expect("the gateway dialed the central");
    Net {
        link,
        metrics,
        stop,
        _ep: ep,
    }
}

/// How long until the gateway ends a stream the central opened, given `first` bytes of a
/// first message that never completes.
async fn ended_after(net: &Net, first: &[u8]) -> Option<Duration> {
    let (mut send, mut recv) = net.link.open_bi().await.unwrap();
    send.write_all(first).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf)).await {
        Ok(_) => Some(start.elapsed()),
        Err(_) => None,
    }
}

/// A stream with half a length prefix, and one with a length and half its message: both
/// are reset at the deadline (300 ms here), and counted as refused. Before the deadline the
/// gateway waited for the first message without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_that_never_completes_is_reset_at_the_deadline() {
    let net = start(Duration::from_millis(300)).await;
    for first in [&[0u8][..], &[0, 100, 1, 2, 3][..]] {
        let took = ended_after(&net, first)
            .await
            .expect("the gateway never ended the stream");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "ended after {took:?}"
        );
    }
    assert_eq!(Metrics::get(&net.metrics.streams_refused), 2);
    net.stop.cancel();
}
