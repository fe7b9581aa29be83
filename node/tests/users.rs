//! The first hop's credential check over real QUIC (`braid_node::users`), at an upstream: a
//! valid credential with its proof is admitted; the exact bytes it sent, captured at the
//! upstream and replayed by another client on its own connection, are refused (the proof
//! is bound to the connection it was made for); a connection that presents nothing is
//! closed at the auth timeout with the reason; a revocation list reloaded while a user is
//! connected closes that user's connection; a source outside the allow list, or inside the
//! deny list, is closed with the reason before it may present anything.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use braid_config::{Directory, Role};
use braid_driver::Metrics;
use braid_node::upstream::{self, UpstreamParams};
use braid_node::users::{FirstHopAuth, SourceFilter};
use braid_proto::credential::{
    auth_message, prove, Credential, Refusal, SigningKey, UserLimits, PROOF_EXPORTER_LABEL,
    REFUSAL_CLOSE_BASE,
};

mod common;
use common::TestNet;

const AUTH_TIMEOUT: Duration = Duration::from_millis(500);

struct Setup {
    net: TestNet,
    addr: SocketAddr,
    metrics: std::sync::Arc<Metrics>,
    auth: std::sync::Arc<FirstHopAuth>,
    revoked: tempfile::NamedTempFile,
    operator: SigningKey,
    _stop: tokio_util::sync::CancellationToken,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn upstream_with_operator(subnet: [u8; 3]) -> Setup {
    upstream_serving(subnet, SourceFilter::default()).await
}

async fn upstream_serving(subnet: [u8; 3], sources: SourceFilter) -> Setup {
    let net = TestNet::new(4096, subnet, &[Role::Central, Role::Upstream, Role::Relay]);
    let operator = SigningKey::from_seed(&[42; 32]);
    let mut dir: Directory = (*net.directory).clone();
    dir.operator_key = Some(operator.public());
    let revoked = tempfile::NamedTempFile::new().unwrap();
    let auth = FirstHopAuth::from_config(
        &dir,
        Role::Upstream,
        Some(revoked.path()),
        AUTH_TIMEOUT,
        true,
    )
    .unwrap()
    .unwrap();
    let (ctx, metrics, stop) = net.context(Role::Upstream);
    let addr = net.addr(Role::Upstream);
    tokio::spawn(upstream::run(
        ctx,
        UpstreamParams {
            auth: Some(auth.clone()),
            sources,
            listen: addr,
            // Room for a quota's worth of cells: no central drains the queue here.
            client_queue_cells: 1024,
            central_queue_cells: 4096,
            accept: braid_node::AcceptLimits {
                max_connections: 16,
                max_per_ip: 16,
                retry_above: 16,
            },
        },
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    Setup {
        net,
        addr,
        metrics,
        auth,
        revoked,
        operator,
        _stop: stop,
    }
}

fn credential(s: &Setup, name: &str, id: u8) -> (Vec<u8>, SigningKey) {
    credential_with(s, name, id, UserLimits::default())
}

fn credential_with(s: &Setup, name: &str, id: u8, limits: UserLimits) -> (Vec<u8>, SigningKey) {
    let user = SigningKey::from_seed(&[id; 32]);
    let bytes = Credential {
        id: [id; 16],
        name: name.into(),
        user_key: user.public(),
        not_before: now() - 10,
        not_after: now() + 3600,
        limits,
    }
    .issue(&s.operator)
    .unwrap();
    (bytes, user)
}

async fn connect(s: &Setup, ip: [u8; 4]) -> quinn::Connection {
    let ep = braid_net::client_endpoint(SocketAddr::from((ip, 0)), None).unwrap();
    braid_net::connect(&ep, s.addr, s.net.identity(Role::Upstream).tls_public())
        .await
        .unwrap()
}

/// Sends `msg` as the auth message; the refusal (None: admitted).
async fn send_auth(conn: &quinn::Connection, msg: &[u8]) -> Option<Refusal> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    braid_net::write_frame(&mut send, msg).await.unwrap();
    let mut buf = Vec::new();
    match braid_net::read_frame(&mut recv, 1, &mut buf).await {
        Ok(true) if buf == [0] => None,
        Ok(true) => Some(Refusal::from_code(buf[0])),
        _ => close_refusal(conn),
    }
}

fn close_refusal(conn: &quinn::Connection) -> Option<Refusal> {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            let code = c.error_code.into_inner() - u64::from(REFUSAL_CLOSE_BASE);
            Some(Refusal::from_code(code as u8))
        }
        other => panic!("closed without a refusal: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_credential_replayed_by_another_client_is_refused() {
    let s = upstream_with_operator([127, 31, 30]).await;
    let (cred, user) = credential(&s, "alice", 1);
    let alice = connect(&s, [127, 31, 30, 90]).await;
    let binding = braid_net::link_key(&alice, PROOF_EXPORTER_LABEL).unwrap();
    // What the upstream receives from alice, byte for byte.
    let captured = auth_message(&cred, &prove(&user, &binding));
    assert_eq!(send_auth(&alice, &captured).await, None, "alice admitted");
    assert_eq!(Metrics::get(&s.metrics.users_admitted), 1);
    // Another client replays it on its own connection.
    let mallory = connect(&s, [127, 31, 30, 91]).await;
    assert_eq!(
        send_auth(&mallory, &captured).await,
        Some(Refusal::BadProof),
        "a replayed proof is refused"
    );
    // A credential signed by another operator.
    let other = SigningKey::from_seed(&[7; 32]);
    let forged = Credential::parse(&cred).unwrap().0.issue(&other).unwrap();
    let eve = connect(&s, [127, 31, 30, 92]).await;
    let b = braid_net::link_key(&eve, PROOF_EXPORTER_LABEL).unwrap();
    assert_eq!(
        send_auth(&eve, &auth_message(&forged, &prove(&user, &b))).await,
        Some(Refusal::WrongOperator)
    );
    assert_eq!(Metrics::get(&s.metrics.users_refused), 2);
    // Alice's connection is still served.
    assert!(alice.close_reason().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_auth_timeout_and_a_revoked_one_on_reload() {
    let s = upstream_with_operator([127, 31, 31]).await;
    // Presents nothing: closed with "no credential" at the timeout.
    let silent = connect(&s, [127, 31, 31, 90]).await;
    let t = Instant::now();
    let why = silent.closed().await;
    let took = t.elapsed();
    assert!(
        took >= AUTH_TIMEOUT - Duration::from_millis(50) && took < AUTH_TIMEOUT * 3,
        "{took:?}"
    );
    assert!(matches!(why, quinn::ConnectionError::ApplicationClosed(_)));
    assert_eq!(close_refusal(&silent), Some(Refusal::Missing));
    // Admitted, then revoked by a reload of the list: its connection is closed.
    let (cred, user) = credential(&s, "bob", 2);
    let bob = connect(&s, [127, 31, 31, 91]).await;
    let b = braid_net::link_key(&bob, PROOF_EXPORTER_LABEL).unwrap();
    assert_eq!(
        send_auth(&bob, &auth_message(&cred, &prove(&user, &b))).await,
        None
    );
    std::fs::write(
        s.revoked.path(),
        format!("{}  # bob\n", hex::encode([2u8; 16])),
    )
    .unwrap();
    assert_eq!(s.auth.reload().unwrap(), 1);
    tokio::time::timeout(Duration::from_secs(2), bob.closed())
        .await
        .expect("bob's connection closed");
    assert_eq!(close_refusal(&bob), Some(Refusal::Revoked));
    // A broken list keeps the old one.
    std::fs::write(s.revoked.path(), "not an id\n").unwrap();
    assert!(s.auth.reload().is_err());
    let again = connect(&s, [127, 31, 31, 92]).await;
    let b = braid_net::link_key(&again, PROOF_EXPORTER_LABEL).unwrap();
    assert_eq!(
        send_auth(&again, &auth_message(&cred, &prove(&user, &b))).await,
        Some(Refusal::Revoked),
        "the old list still holds"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_outside_the_allow_list_or_inside_the_deny_list_are_closed_with_the_reason() {
    let s = upstream_serving(
        [127, 31, 32],
        SourceFilter {
            allow: vec!["127.31.32.0/24".parse().unwrap()],
            deny: vec!["127.31.32.66/32".parse().unwrap()],
        },
    )
    .await;
    let (cred, user) = credential(&s, "dana", 3);
    // Allowed: admitted as usual.
    let ok = connect(&s, [127, 31, 32, 90]).await;
    let b = braid_net::link_key(&ok, PROOF_EXPORTER_LABEL).unwrap();
    assert_eq!(
        send_auth(&ok, &auth_message(&cred, &prove(&user, &b))).await,
        None
    );
    // Denied inside the allowed network, and outside it: closed with the reason, even with
    // a valid credential.
    for ip in [[127, 31, 32, 66], [127, 31, 99, 90]] {
        let conn = connect(&s, ip).await;
        tokio::time::timeout(Duration::from_secs(2), conn.closed())
            .await
            .expect("closed");
        assert_eq!(close_refusal(&conn), Some(Refusal::SourceDenied), "{ip:?}");
    }
    assert_eq!(Metrics::get(&s.metrics.peers_refused), 2);
    assert_eq!(Metrics::get(&s.metrics.users_admitted), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_its_session_limit_is_refused_until_one_ends() {
    let s = upstream_with_operator([127, 31, 33]).await;
    let limits = UserLimits {
        max_sessions: 2,
        ..UserLimits::default()
    };
    let (cred, user) = credential_with(&s, "erin", 4, limits);
    let present = |conn: quinn::Connection| {
        let (cred, user) = (cred.clone(), SigningKey::from_seed(user.seed()));
        async move {
            let b = braid_net::link_key(&conn, PROOF_EXPORTER_LABEL).unwrap();
            (
                send_auth(&conn, &auth_message(&cred, &prove(&user, &b))).await,
                conn,
            )
        }
    };
    let (first, a) = present(connect(&s, [127, 31, 33, 90]).await).await;
    let (second, _b) = present(connect(&s, [127, 31, 33, 91]).await).await;
    let (third, _) = present(connect(&s, [127, 31, 33, 92]).await).await;
    assert_eq!(
        (first, second, third),
        (None, None, Some(Refusal::TooManySessions))
    );
    // One ends: the next is admitted.
    a.close(0u32.into(), b"bye");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fourth, _d) = present(connect(&s, [127, 31, 33, 93]).await).await;
    assert_eq!(fourth, None, "a session ended, so another may start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_quota_closes_the_connection_and_refuses_the_next_until_renewal() {
    let s = upstream_with_operator([127, 31, 34]).await;
    let cell_size = s.net.directory.cell_size as usize;
    let limits = UserLimits {
        quota_mib: 1,
        ..UserLimits::default()
    };
    let (cred, user) = credential_with(&s, "frank", 5, limits);
    let conn = connect(&s, [127, 31, 34, 90]).await;
    let b = braid_net::link_key(&conn, PROOF_EXPORTER_LABEL).unwrap();
    assert_eq!(
        send_auth(&conn, &auth_message(&cred, &prove(&user, &b))).await,
        None
    );
    // Cells to the central: this directory has one upstream, so this one holds the whole
    // quota (1 MiB) and closes the connection past it.
    let central = s.net.directory.centrals().next().unwrap().id.clone();
    let route = braid_proto::envelope::Route { central: &central }
        .encode()
        .unwrap();
    let mut send = conn.open_uni().await.unwrap();
    braid_net::write_frame(&mut send, &route).await.unwrap();
    let cell = vec![7u8; cell_size];
    let quota_cells = (1 << 20) / cell_size;
    for _ in 0..quota_cells + 64 {
        if braid_net::write_frame(&mut send, &cell).await.is_err() {
            break;
        }
    }
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("closed past the quota");
    assert_eq!(close_refusal(&conn), Some(Refusal::QuotaSpent));
    assert_eq!(Metrics::get(&s.metrics.users_over_quota), 1);
    assert_eq!(Metrics::get(&s.metrics.user_bytes), 1 << 20);
    // Per-user usage is on in this setup: the user's bytes are counted by name.
    let text = s.metrics.render("upstream-1", "upstream");
    assert!(
        text.contains(&format!("user=\"frank\"}} {}", 1 << 20)),
        "{text}"
    );
    // Reconnecting does not refill it.
    let again = connect(&s, [127, 31, 34, 91]).await;
    let b = braid_net::link_key(&again, PROOF_EXPORTER_LABEL).unwrap();
    assert_eq!(
        send_auth(&again, &auth_message(&cred, &prove(&user, &b))).await,
        Some(Refusal::QuotaSpent)
    );
    // A renewed credential (a new id, a new window) starts a fresh quota.
    let (renewed, user) = credential_with(&s, "frank", 6, limits);
    let fresh = connect(&s, [127, 31, 34, 92]).await;
    let b = braid_net::link_key(&fresh, PROOF_EXPORTER_LABEL).unwrap();
    assert_eq!(
        send_auth(&fresh, &auth_message(&renewed, &prove(&user, &b))).await,
        None
    );
    // With per-user usage off, the names go from /metrics; the total stays.
    s.auth.set_per_user_usage(false, &s.metrics);
    let text = s.metrics.render("upstream-1", "upstream");
    assert!(!text.contains("frank"), "{text}");
    assert!(text.contains("braid_user_bytes_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_ignores_its_rate_is_held_to_its_share_here() {
    let s = upstream_with_operator([127, 31, 35]).await;
    let cell_size = s.net.directory.cell_size as usize;
    // One upstream in this directory: its share is the whole rate.
    const RATE_KIB: u32 = 1024;
    let limits = UserLimits {
        rate_kib: RATE_KIB,
        ..UserLimits::default()
    };
    let (cred, user) = credential_with(&s, "gus", 7, limits);
    let conn = connect(&s, [127, 31, 35, 90]).await;
    let b = braid_net::link_key(&conn, PROOF_EXPORTER_LABEL).unwrap();
    assert_eq!(
        send_auth(&conn, &auth_message(&cred, &prove(&user, &b))).await,
        None
    );
    let central = s.net.directory.centrals().next().unwrap().id.clone();
    let route = braid_proto::envelope::Route { central: &central }
        .encode()
        .unwrap();
    let mut send = conn.open_uni().await.unwrap();
    braid_net::write_frame(&mut send, &route).await.unwrap();
    // As fast as it can, for 2 s: the upstream takes only the rate (and a tenth of a
    // second's burst); the rest waits in the client's QUIC flow control.
    let cell = vec![7u8; cell_size];
    let flood = tokio::spawn(async move {
        loop {
            if braid_net::write_frame(&mut send, &cell).await.is_err() {
                return;
            }
        }
    });
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let took = t.elapsed().as_secs_f64();
    let taken = Metrics::get(&s.metrics.user_bytes) as f64;
    flood.abort();
    let want = f64::from(RATE_KIB) * 1024.0 * (took + 0.1);
    eprintln!("taken {:.2} of the rate's bytes", taken / want);
    assert!(
        (0.8..=1.1).contains(&(taken / want)),
        "took {taken} bytes in {took:.2} s at a rate of {RATE_KIB} KiB/s"
    );
}
