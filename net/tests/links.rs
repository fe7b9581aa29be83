//! Real QUIC links over loopback: pinning both ways, client-auth modes, frames.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use braid_net::{
    client_endpoint, connect, peer_tls_key, read_frame, server_endpoint, write_frame, ClientAuth,
    NetError, NodeIdentity, PinSet,
};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn identity(seed: u64) -> NodeIdentity {
    NodeIdentity::generate(&mut StdRng::seed_from_u64(seed)).unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Guards against a hang turning into a stuck test run; nothing here should take long.
async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("test step timed out")
}

fn server(id: &NodeIdentity, pins: &[[u8; 32]], auth: ClientAuth) -> (quinn::Endpoint, SocketAddr) {
    let ep = server_endpoint(loopback(), id, pins.iter().copied().collect(), auth).unwrap();
    let addr = ep.local_addr().unwrap();
    (ep, addr)
}

/// Accepts one connection attempt and returns how its handshake ended.
async fn accept_one(ep: &quinn::Endpoint) -> Result<quinn::Connection, quinn::ConnectionError> {
    bounded(async { ep.accept().await.expect("endpoint closed").await }).await
}

/// How one handshake ended on the server side and on the client side.
type Sides = (
    Result<quinn::Connection, quinn::ConnectionError>,
    Result<quinn::Connection, NetError>,
);

/// Dials `s_addr` from `c_ep` pinning `key` while `s_ep` accepts one connection.
async fn handshake(
    s_ep: &quinn::Endpoint,
    c_ep: &quinn::Endpoint,
    s_addr: SocketAddr,
    key: [u8; 32],
) -> Sides {
    tokio::join!(accept_one(s_ep), bounded(connect(c_ep, s_addr, key)))
}

/// Asserts that the server refused the dial of `what` (a client description) and that
/// the client side ends up refused too.
async fn assert_refused((server_side, client_side): Sides, what: &str) {
    assert!(server_side.is_err(), "server accepted {what}");
    assert_client_refused(client_side).await;
}

/// Asserts that a client-side dial ends up refused: either the handshake fails, or (TLS
/// 1.3 client auth) it completes and the server closes the connection right after.
async fn assert_client_refused(result: Result<quinn::Connection, NetError>) {
    let Ok(conn) = result else { return };
    let reason = bounded(conn.closed()).await;
    assert!(
        !matches!(reason, quinn::ConnectionError::LocallyClosed),
        "{reason}"
    );
    let mut send = match conn.open_uni().await {
        Ok(send) => send,
        Err(_) => return,
    };
    assert!(write_frame(&mut send, b"x").await.is_err());
}

#[tokio::test]
async fn pinned_link_round_trips_frames() {
    let (s_id, c_id) = (identity(1), identity(2));
    let (s_ep, s_addr) = server(&s_id, &[c_id.tls_public()], ClientAuth::Required);

    let c_key = c_id.tls_public();
    let echo = tokio::spawn(async move {
        let conn = accept_one(&s_ep).await.unwrap();
        assert_eq!(peer_tls_key(&conn), Some(c_key));
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        let mut buf = Vec::new();
        while read_frame(&mut recv, 1 << 20, &mut buf).await.unwrap() {
            write_frame(&mut send, &buf).await.unwrap();
        }
        send.finish().unwrap();
        // Keep the connection up until the client has read everything and closes.
        conn.closed().await;
    });

    let c_ep = client_endpoint(loopback(), Some(&c_id)).unwrap();
    let conn = bounded(connect(&c_ep, s_addr, s_id.tls_public()))
        .await
        .unwrap();
    assert_eq!(peer_tls_key(&conn), Some(s_id.tls_public()));

    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    let frames: [&[u8]; 3] = [b"hello", b"", &big];
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    for f in frames {
        write_frame(&mut send, f).await.unwrap();
    }
    send.finish().unwrap();
    let mut buf = Vec::new();
    for f in frames {
        assert!(bounded(read_frame(&mut recv, 1 << 20, &mut buf))
            .await
            .unwrap());
        assert_eq!(buf, f);
    }
    assert!(!bounded(read_frame(&mut recv, 1 << 20, &mut buf))
        .await
        .unwrap());
    conn.close(0u32.into(), b"done");
    bounded(echo).await.unwrap();
}

#[tokio::test]
async fn required_mode_refuses_unpinned_client() {
    let (s_id, c_id, pinned) = (identity(10), identity(11), identity(12));
    let (s_ep, s_addr) = server(&s_id, &[pinned.tls_public()], ClientAuth::Required);

    // A client with a certificate that is not pinned.
    let c_ep = client_endpoint(loopback(), Some(&c_id)).unwrap();
    assert_refused(
        handshake(&s_ep, &c_ep, s_addr, s_id.tls_public()).await,
        "an unpinned client",
    )
    .await;

    // A client with no certificate at all.
    let anon_ep = client_endpoint(loopback(), None).unwrap();
    assert_refused(
        handshake(&s_ep, &anon_ep, s_addr, s_id.tls_public()).await,
        "a cert-less client",
    )
    .await;
}

#[tokio::test]
async fn client_refuses_server_with_other_key() {
    let (s_id, c_id, expected) = (identity(20), identity(21), identity(22));
    let (s_ep, s_addr) = server(&s_id, &[c_id.tls_public()], ClientAuth::Required);
    let c_ep = client_endpoint(loopback(), Some(&c_id)).unwrap();

    let (server_side, client_side) = handshake(&s_ep, &c_ep, s_addr, expected.tls_public()).await;
    assert!(
        matches!(client_side, Err(NetError::Connection(_))),
        "client accepted the wrong server: {client_side:?}"
    );
    assert!(server_side.is_err());
}

#[tokio::test]
async fn optional_mode_accepts_certless_and_pinned_clients_only() {
    let (s_id, node_id, stranger) = (identity(30), identity(31), identity(32));
    let (s_ep, s_addr) = server(&s_id, &[node_id.tls_public()], ClientAuth::Optional);

    // A laptop without a certificate.
    let laptop = client_endpoint(loopback(), None).unwrap();
    let (server_side, client_side) = handshake(&s_ep, &laptop, s_addr, s_id.tls_public()).await;
    let conn = server_side.unwrap();
    assert_eq!(peer_tls_key(&conn), None);
    let client_conn = client_side.unwrap();
    assert_eq!(peer_tls_key(&client_conn), Some(s_id.tls_public()));

    // A pinned node dialling from its own listening endpoint.
    let (node_ep, _) = server(&node_id, &[], ClientAuth::Required);
    let (server_side, client_side) = handshake(&s_ep, &node_ep, s_addr, s_id.tls_public()).await;
    assert_eq!(
        peer_tls_key(&server_side.unwrap()),
        Some(node_id.tls_public())
    );
    client_side.unwrap();

    // A certificate that is presented must be pinned, even when optional.
    let stranger_ep = client_endpoint(loopback(), Some(&stranger)).unwrap();
    assert_refused(
        handshake(&s_ep, &stranger_ep, s_addr, s_id.tls_public()).await,
        "a presented but unpinned certificate",
    )
    .await;
}

#[tokio::test]
async fn pins_update_live() {
    let (s_id, c_id) = (identity(40), identity(41));
    let pins = PinSet::new();
    let s_ep = server_endpoint(loopback(), &s_id, pins.clone(), ClientAuth::Required).unwrap();
    let s_addr = s_ep.local_addr().unwrap();
    let c_ep = client_endpoint(loopback(), Some(&c_id)).unwrap();

    assert_refused(
        handshake(&s_ep, &c_ep, s_addr, s_id.tls_public()).await,
        "a client before its key was pinned",
    )
    .await;

    pins.insert(c_id.tls_public());
    let (server_side, client_side) = handshake(&s_ep, &c_ep, s_addr, s_id.tls_public()).await;
    assert_eq!(peer_tls_key(&server_side.unwrap()), Some(c_id.tls_public()));
    client_side.unwrap();
}

/// A connected pair (cert-less client, Optional server) for raw stream tests.
async fn connected_pair() -> (quinn::Connection, quinn::Connection, [quinn::Endpoint; 2]) {
    let s_id = identity(50);
    let (s_ep, s_addr) = server(&s_id, &[], ClientAuth::Optional);
    let c_ep = client_endpoint(loopback(), None).unwrap();
    let (server_side, client_side) = handshake(&s_ep, &c_ep, s_addr, s_id.tls_public()).await;
    (server_side.unwrap(), client_side.unwrap(), [s_ep, c_ep])
}

#[tokio::test]
async fn oversize_frame_is_refused_before_allocation() {
    let (server_conn, client_conn, _eps) = connected_pair().await;
    let mut send = client_conn.open_uni().await.unwrap();
    write_frame(&mut send, &[7u8; 1000]).await.unwrap();
    send.finish().unwrap();

    let mut recv = bounded(server_conn.accept_uni()).await.unwrap();
    let mut buf = Vec::new();
    let err = bounded(read_frame(&mut recv, 100, &mut buf))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::FrameTooLarge {
                len: 1000,
                max: 100
            }
        ),
        "{err:?}"
    );
    assert_eq!(buf.capacity(), 0, "buffer grew for a refused frame");
}

#[tokio::test]
async fn truncated_frames_are_detected() {
    let (server_conn, client_conn, _eps) = connected_pair().await;

    // End of stream inside the payload.
    let mut send = client_conn.open_uni().await.unwrap();
    send.write_all(&100u32.to_be_bytes()).await.unwrap();
    send.write_all(&[1u8; 10]).await.unwrap();
    send.finish().unwrap();
    let mut recv = bounded(server_conn.accept_uni()).await.unwrap();
    let mut buf = Vec::new();
    let err = bounded(read_frame(&mut recv, 1000, &mut buf))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Truncated), "{err:?}");

    // End of stream inside the length prefix, after a whole frame.
    let mut send = client_conn.open_uni().await.unwrap();
    write_frame(&mut send, b"ok").await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    send.finish().unwrap();
    let mut recv = bounded(server_conn.accept_uni()).await.unwrap();
    assert!(bounded(read_frame(&mut recv, 1000, &mut buf))
        .await
        .unwrap());
    assert_eq!(buf, b"ok");
    let err = bounded(read_frame(&mut recv, 1000, &mut buf))
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Truncated), "{err:?}");
}

/// A node that restarts (same identity, same address) answers its peers' next packet on
/// the old connection with a stateless reset they trust: the peer learns at once that the
/// link is gone, within a keep-alive, instead of after the idle timeout.
#[tokio::test]
async fn a_restarted_node_resets_its_old_links_at_once() {
    let node = identity(41);
    let peer = identity(42);
    // The node runs on a runtime of its own, so that it can "crash": shutting that runtime
    // down drops its endpoint without a goodbye to the peer.
    let node_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pins = [peer.tls_public()];
    let (s_ep, addr) = {
        let _guard = node_rt.enter();
        server(&node, &pins, ClientAuth::Required)
    };
    let accepted = node_rt.spawn(async move {
        let conn = s_ep.accept().await.unwrap().await.unwrap();
        (s_ep, conn)
    });
    let c_ep = client_endpoint(loopback(), Some(&peer)).unwrap();
    let c_conn = bounded(connect(&c_ep, addr, node.tls_public()))
        .await
        .unwrap();
    let node_side = bounded(accepted).await.unwrap();
    node_rt.shutdown_background();
    // With its driver gone, dropping the node's handles sends nothing; the socket closes.
    drop(node_side);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let back = server_endpoint(
        addr,
        &node,
        pins.into_iter().collect(),
        ClientAuth::Required,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let reason = bounded(c_conn.closed()).await;
    assert!(
        matches!(reason, quinn::ConnectionError::Reset),
        "closed by {reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "noticed after {:?}",
        started.elapsed()
    );
    drop(back);
}
