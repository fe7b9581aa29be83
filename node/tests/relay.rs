//! The relay over real QUIC: a peer that knows a mailbox's address (every downstream does)
//! cannot take the mailbox over; registrations are capped per connection and in all and
//! must arrive within the deadline; a mailbox queues at most `mailbox_cells` cells, and all
//! mailboxes together at most the byte budget.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_config::Role;
use braid_driver::Metrics;
use braid_net::{read_frame, write_frame, LinkTuning, NodeIdentity};
use braid_node::relay;
use braid_proto::envelope::{
    hop_address, via_address, Delivery, MailboxSecret, Registration, HOP_KEY_LABEL,
};
use braid_proto::frame::MailboxId;
use tokio_util::sync::CancellationToken;

const CELL: usize = 1024;

mod common;
use common::TestNet;

struct Net {
    relay_addr: SocketAddr,
    relay: NodeIdentity,
    downstream: NodeIdentity,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The relay's limits a test sets (the rest of [`relay::RelayParams`] stays fixed).
struct Limits {
    mailbox_cells: usize,
    mailbox_budget: usize,
    max_mailboxes: usize,
    max_mailboxes_per_connection: usize,
    registration_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            mailbox_cells: 4096,
            mailbox_budget: 64 << 20,
            max_mailboxes: 1000,
            max_mailboxes_per_connection: 8,
            registration_timeout: Duration::from_secs(5),
        }
    }
}

fn params(listen: SocketAddr, l: Limits) -> relay::RelayParams {
    relay::RelayParams {
        max_joined: 16,
        auth: None,
        sources: Default::default(),
        listen,
        accept: braid_node::AcceptLimits {
            max_connections: 64,
            max_per_ip: 64,
            retry_above: 64,
        },
        mix_delay: Duration::ZERO,
        pool_cells: 4096,
        mailbox_cells: l.mailbox_cells,
        mailbox_budget: l.mailbox_budget,
        max_mailboxes: l.max_mailboxes,
        max_mailboxes_per_connection: l.max_mailboxes_per_connection,
        registration_timeout: l.registration_timeout,
    }
}

async fn start_relay(tune: impl FnOnce(&mut Limits)) -> Net {
    let net = TestNet::new(
        CELL as u32,
        [127, 31, 10],
        &[Role::Relay, Role::Central, Role::Upstream],
    );
    let relay_addr = net.addr(Role::Relay);
    let (ctx, metrics, stop) = net.context(Role::Relay);
    let mut limits = Limits::default();
    tune(&mut limits);
    tokio::spawn(relay::run(ctx, params(relay_addr, limits)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    Net {
        relay_addr,
        relay: net.identity(Role::Relay).clone(),
        downstream: net.identity(Role::Downstream).clone(),
        metrics,
        stop,
    }
}

/// A client link to the relay (no certificate), with a small receive window so what the
/// relay can push ahead of a client that does not read is a few cells.
async fn client(net: &Net) -> quinn::Connection {
    let tuning = LinkTuning {
        stream_window: 4 * (CELL as u32 + 4),
        connection_window: 64 * (CELL as u64 + 4),
        ..LinkTuning::default()
    };
    let ep =
        braid_net::client_endpoint_with("127.31.10.99:0".parse().unwrap(), None, tuning).unwrap();
    braid_net::connect(&ep, net.relay_addr, net.relay.tls_public())
        .await
        .unwrap()
}

/// Registers `secret` on a new stream of `conn`.
async fn register(conn: &quinn::Connection, secret: &MailboxSecret) -> Mailbox {
    register_raw(
        conn,
        &Registration {
            secret: secret.clone(),
        }
        .encode(),
    )
    .await
}

/// Sends `bytes` as the registration message on a new stream of `conn`.
async fn register_raw(conn: &quinn::Connection, bytes: &[u8]) -> Mailbox {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    write_frame(&mut send, bytes).await.unwrap();
    Mailbox { _send: send, recv }
}

/// The client's end of a mailbox stream.
struct Mailbox {
    _send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// What reading a mailbox stream gave within a wait.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Cell(Vec<u8>),
    /// The relay ended or reset the stream (a refusal, or the connection closed).
    Ended,
    Nothing,
}

impl Mailbox {
    async fn next(&mut self, wait: Duration) -> Got {
        let mut buf = Vec::new();
        match tokio::time::timeout(wait, read_frame(&mut self.recv, CELL, &mut buf)).await {
            Ok(Ok(true)) => Got::Cell(buf),
            Ok(_) => Got::Ended,
            Err(_) => Got::Nothing,
        }
    }

    /// Reads cells until none comes for `quiet`; how many came.
    async fn drain(&mut self, quiet: Duration) -> usize {
        let mut n = 0;
        while let Got::Cell(_) = self.next(quiet).await {
            n += 1;
        }
        n
    }
}

/// A downstream's link to the relay: deliveries to any address.
struct Downstream {
    send: quinn::SendStream,
    _conn: quinn::Connection,
    /// The link's hop key: addresses are rewritten with it, as a downstream does.
    hop_key: [u8; 32],
}

impl Downstream {
    async fn connect(net: &Net) -> Self {
        let ep =
            braid_net::client_endpoint("127.31.10.98:0".parse().unwrap(), Some(&net.downstream))
                .unwrap();
        let conn = braid_net::connect(&ep, net.relay_addr, net.relay.tls_public())
            .await
            .unwrap();
        let send = conn.open_uni().await.unwrap();
        let hop_key = braid_net::link_key(&conn, HOP_KEY_LABEL).unwrap();
        Downstream {
            send,
            _conn: conn,
            hop_key,
        }
    }

    /// Delivers `n` cells to `to`, the first byte of each being `tag`, under the address
    /// as this link carries it (the central's address for this downstream, rewritten).
    async fn deliver(&mut self, to: MailboxId, tag: u8, n: usize) {
        let hop = self.link_address(&to);
        self.deliver_as(hop, tag, n).await;
    }

    fn link_address(&self, to: &MailboxId) -> MailboxId {
        hop_address(&self.hop_key, &via_address(to, DOWNSTREAM_ID))
    }

    /// Delivers under `wire` exactly as given.
    async fn deliver_as(&mut self, wire: MailboxId, tag: u8, n: usize) {
        let mut cell = vec![0u8; CELL];
        cell[0] = tag;
        for _ in 0..n {
            let d = Delivery {
                mailbox: wire,
                cell: &cell,
            };
            write_frame(&mut self.send, &d.to_vec()).await.unwrap();
        }
    }
}

/// The test downstream's id in the directory (`start_relay`).
const DOWNSTREAM_ID: &str = "downstream-1";

fn fresh() -> MailboxSecret {
    MailboxSecret::generate(&mut rand::rng())
}

/// Knowing a victim's mailbox address — as every downstream and the central do — does not
/// let a peer claim the mailbox, however it registers: the victim keeps its cells, the
/// attacker gets none. Only the victim's own secret (a reconnect) moves the mailbox.
#[tokio::test]
async fn knowing_the_address_does_not_take_the_mailbox() {
    let net = start_relay(|_| {}).await;
    let mut down = Downstream::connect(&net).await;
    let secret = fresh();
    let address = secret.address();
    let victim = client(&net).await;
    let mut inbox = register(&victim, &secret).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    down.deliver(address, 1, 1).await;
    assert!(matches!(inbox.next(Duration::from_secs(2)).await, Got::Cell(c) if c[0] == 1));

    // The attacker registers every way it can think of from the address: the address itself
    // (what registration was before), the address twice (a secret's length), the address
    // padded with zeros, and its own random secret.
    let attacker = client(&net).await;
    let mut padded = address.to_vec();
    padded.resize(32, 0);
    let tries = [address.to_vec(), [address, address].concat(), padded];
    let mut stolen = Vec::new();
    for t in &tries {
        stolen.push(register_raw(&attacker, t).await);
    }
    stolen.push(register(&attacker, &fresh()).await);
    tokio::time::sleep(Duration::from_millis(200)).await;

    down.deliver(address, 2, 20).await;
    let mut got = 0;
    while let Got::Cell(c) = inbox.next(Duration::from_millis(500)).await {
        assert_eq!(c[0], 2);
        got += 1;
    }
    assert_eq!(got, 20, "the victim keeps receiving its cells");
    for (i, s) in stolen.iter_mut().enumerate() {
        let g = s.next(Duration::from_millis(300)).await;
        assert!(
            !matches!(g, Got::Cell(_)),
            "attempt {i} received the victim's cell"
        );
    }
    // The bare address is not a registration at all; the 32-byte tries are secrets of
    // other addresses, so they only ever see their own (empty) mailboxes.
    assert_eq!(stolen[0].next(Duration::from_millis(300)).await, Got::Ended);
    assert!(Metrics::get(&net.metrics.peers_refused) >= 1);

    // The victim reconnecting with its secret (its link dropped, the relay has not noticed
    // yet) takes the mailbox over; the old stream is ended.
    let again = client(&net).await;
    let mut inbox2 = register(&again, &secret).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    down.deliver(address, 3, 5).await;
    assert_eq!(inbox2.drain(Duration::from_millis(500)).await, 5);
    assert_eq!(inbox.next(Duration::from_millis(300)).await, Got::Ended);
}

/// Registrations past the per-connection cap or the relay's cap are refused, and a
/// withdrawn mailbox frees its slot.
#[tokio::test]
async fn registrations_are_capped() {
    let net = start_relay(|p| {
        p.max_mailboxes_per_connection = 2;
        p.max_mailboxes = 3;
    })
    .await;
    let mut down = Downstream::connect(&net).await;

    let one = client(&net).await;
    let (s1, s2, s3) = (fresh(), fresh(), fresh());
    let mut a = register(&one, &s1).await;
    let mut b = register(&one, &s2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = register(&one, &s3).await;
    assert_eq!(
        c.next(Duration::from_secs(1)).await,
        Got::Ended,
        "a third mailbox on one connection is refused"
    );

    let two = client(&net).await;
    let (s4, s5) = (fresh(), fresh());
    let mut d = register(&two, &s4).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut e = register(&two, &s5).await;
    assert_eq!(
        e.next(Duration::from_secs(1)).await,
        Got::Ended,
        "a fourth mailbox on the relay is refused"
    );
    for (s, m) in [(&s1, &mut a), (&s2, &mut b), (&s4, &mut d)] {
        down.deliver(s.address(), 7, 1).await;
        assert!(matches!(m.next(Duration::from_secs(2)).await, Got::Cell(_)));
    }
    // Withdrawing one (ending the stream) frees a slot.
    a._send.finish().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut f = register(&two, &s5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    down.deliver(s5.address(), 8, 1).await;
    assert!(matches!(f.next(Duration::from_secs(2)).await, Got::Cell(c) if c[0] == 8));
}

/// A stream that does not deliver its secret within the deadline (shortened by config) is
/// reset, and a connection that registers nothing is closed; a mailbox registered in time
/// outlives the deadline.
#[tokio::test]
async fn registration_has_a_deadline() {
    let deadline = Duration::from_millis(300);
    let net = start_relay(|p| p.registration_timeout = deadline).await;
    let mut down = Downstream::connect(&net).await;
    let one = client(&net).await;
    let secret = fresh();
    let mut good = register(&one, &secret).await;

    // Half a length prefix, then nothing.
    let (mut send, recv) = one.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    let mut slow = Mailbox { _send: send, recv };
    let t0 = Instant::now();
    assert_eq!(slow.next(Duration::from_secs(3)).await, Got::Ended);
    let took = t0.elapsed();
    assert!(
        took >= deadline - Duration::from_millis(50) && took < deadline * 4,
        "reset after {took:?}, deadline {deadline:?}"
    );

    // A connection that never registers is closed at the deadline.
    let idle = client(&net).await;
    let t0 = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(3), idle.closed()).await;
    let took = t0.elapsed();
    assert!(closed.is_ok(), "an idle connection must be closed");
    assert!(took < deadline * 4, "closed after {took:?}");
    // One that registered in time is not, and its mailbox works.
    assert!(one.close_reason().is_none());
    down.deliver(secret.address(), 5, 1).await;
    assert!(matches!(good.next(Duration::from_secs(2)).await, Got::Cell(c) if c[0] == 5));
}

/// A mailbox queues at most `mailbox_cells` cells for a client that does not read (plus
/// the few its stream window takes); the rest are dropped.
#[tokio::test]
async fn a_mailbox_queues_at_most_mailbox_cells() {
    let net = start_relay(|p| p.mailbox_cells = 8).await;
    let mut down = Downstream::connect(&net).await;
    let conn = client(&net).await;
    let secret = fresh();
    let mut inbox = register(&conn, &secret).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    down.deliver(secret.address(), 1, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = inbox.drain(Duration::from_millis(500)).await;
    eprintln!("mailbox_cells = 8: {got} of 300 cells queued for a client that did not read");
    // 8 queued, up to 4 in the stream window, 1 being written (and 1 to spare).
    assert!((8..=8 + 4 + 1 + 1).contains(&got), "received {got}");
    assert!(Metrics::get(&net.metrics.cells_dropped) >= 300 - 13);
    // Reading again, it flows.
    down.deliver(secret.address(), 2, 5).await;
    assert_eq!(inbox.drain(Duration::from_millis(500)).await, 5);
}

/// All mailboxes together queue at most the byte budget.
#[tokio::test]
async fn mailboxes_together_queue_at_most_the_budget() {
    let net = start_relay(|p| p.mailbox_budget = 10 * CELL).await;
    let mut down = Downstream::connect(&net).await;
    let mut inboxes = Vec::new();
    for _ in 0..3 {
        let conn = client(&net).await;
        let secret = fresh();
        let inbox = register(&conn, &secret).await;
        inboxes.push((conn, secret, inbox));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (_, s, _) in &inboxes {
        down.deliver(s.address(), 1, 100).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut total = 0;
    for (_, _, inbox) in &mut inboxes {
        total += inbox.drain(Duration::from_millis(300)).await;
    }
    eprintln!("budget of 10 cells: {total} of 300 cells queued for 3 clients that did not read");
    // 10 cells of budget, and per mailbox up to 4 in its window and 1 being written.
    assert!((10..=10 + 3 * 5).contains(&total), "received {total}");
}

/// The address a downstream got from the central never reaches the relay: a delivery under
/// it is dropped, and one under the address rewritten for the link arrives. Two links
/// carry the same mailbox under unrelated addresses, and a mailbox registered after a
/// link came up is reachable through it too.
#[tokio::test]
async fn the_relay_takes_only_addresses_rewritten_for_their_link() {
    let net = start_relay(|_| {}).await;
    let mut first = Downstream::connect(&net).await;
    let secret = fresh();
    let address = secret.address();
    let c = client(&net).await;
    let mut inbox = register(&c, &secret).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    first.deliver_as(address, 1, 3).await;
    assert!(
        !matches!(inbox.next(Duration::from_millis(500)).await, Got::Cell(_)),
        "a delivery under the central's address was taken"
    );
    first.deliver(address, 2, 1).await;
    assert!(matches!(inbox.next(Duration::from_secs(2)).await, Got::Cell(c) if c[0] == 2));

    let mut second = Downstream::connect(&net).await;
    let (a1, a2) = (first.link_address(&address), second.link_address(&address));
    assert!(a1 != a2 && a1 != address && a2 != address);
    // Nor does the address the downstream read from the central work.
    first
        .deliver_as(via_address(&address, DOWNSTREAM_ID), 6, 1)
        .await;
    assert!(!matches!(
        inbox.next(Duration::from_millis(500)).await,
        Got::Cell(_)
    ));
    // The first link's address is nothing on the second link.
    second.deliver_as(a1, 3, 1).await;
    assert!(!matches!(
        inbox.next(Duration::from_millis(500)).await,
        Got::Cell(_)
    ));
    second.deliver(address, 4, 1).await;
    assert!(matches!(inbox.next(Duration::from_secs(2)).await, Got::Cell(c) if c[0] == 4));

    // Registered after both links came up.
    let late = fresh();
    let mut late_inbox = register(&c, &late).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    second.deliver(late.address(), 5, 1).await;
    assert!(matches!(late_inbox.next(Duration::from_secs(2)).await, Got::Cell(c) if c[0] == 5));
}
