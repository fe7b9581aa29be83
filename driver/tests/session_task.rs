//! The session driver on an in-memory overlay: a client task and a central task joined by
//! channel links (an "upstream" that may drop cells, a "downstream" that strips the
//! envelope as a relay would), no sockets. What is checked is the driver's own work:
//! stream handles, per-stream credit, resets, forgetting, idle and drain endings, and
//! recovery of lost cells.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_driver::metrics::Metrics;
use braid_driver::session_task::{
    CentralSession, EndReason, SendBudget, SessionCmd, SessionEnd, SessionGauge, SessionRole,
    SessionTask, StreamEvent, StreamLimits,
};
use braid_driver::stream::{self, StreamReceiver, StreamSender};
use braid_driver::{status_channel, Link, StatusReader};
use braid_proto::envelope::Envelope;
use braid_proto::frame::Mailbox;
use braid_proto::noise::StaticKeypair;
use braid_proto::rate::TokenBucket;
use braid_proto::session::{
    self, MailboxPolicy, PendingSession, SessionConfig, SessionError, SessionHello,
};
use braid_proto::Reason;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const CELL: usize = 4096;

/// What the central's opener hook received: one entry per stream the client opened.
type Accepted = Arc<Mutex<Vec<(String, StreamSender, StreamReceiver)>>>;

struct Pair {
    client_cmd: mpsc::Sender<SessionCmd>,
    client: JoinHandle<SessionEnd>,
    central: JoinHandle<SessionEnd>,
    accepted: Accepted,
    central_drain: CancellationToken,
    shutdown: CancellationToken,
    /// Cells the upstream link dropped.
    dropped: Arc<AtomicUsize>,
    /// Asks the client's session task for a view of its session.
    status: StatusReader,
    /// The same of the central's session task.
    central_status: StatusReader,
    central_metrics: Arc<Metrics>,
}

struct Opts {
    /// The upstream drops every n-th cell (0: none).
    drop_every: usize,
    idle_timeout: Duration,
    /// The client's keepalive and peer timeout (none by default).
    keepalive: Option<Duration>,
    peer_timeout: Option<Duration>,
    /// The central's stream limits for the session.
    max_streams: usize,
    open_rate: u32,
    open_burst: u32,
    /// The downstream delivers nothing: the central's cells are never acknowledged.
    down_blackhole: bool,
    /// The central's least interval between mailbox changes.
    mailbox_interval: Duration,
    /// The central's send budget, shared with other sessions (unlimited by default).
    send_budget: Option<Arc<SendBudget>>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            drop_every: 0,
            idle_timeout: Duration::from_secs(60),
            keepalive: None,
            peer_timeout: None,
            max_streams: 4096,
            open_rate: 100_000,
            open_burst: 100_000,
            down_blackhole: false,
            mailbox_interval: Duration::from_secs(1),
            send_budget: None,
        }
    }
}

fn config() -> SessionConfig {
    let mut c = SessionConfig::with_cell_size(CELL);
    c.manual_stream_credit = true;
    c
}

/// A link whose messages go through `f` (which may drop or rewrite them) into `to`.
fn channel_link(
    name: &str,
    to: mpsc::Sender<Vec<u8>>,
    mut f: impl FnMut(Vec<u8>) -> Option<Vec<u8>> + Send + 'static,
) -> Link {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(256);
    tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if let Some(m) = f(m) {
                if to.send(m).await.is_err() {
                    return;
                }
            }
        }
    });
    Link {
        name: name.to_string(),
        tx,
    }
}

async fn pair(o: Opts) -> Pair {
    let mut rng = rand::rng();
    let central_key = StaticKeypair::generate(&mut rng);
    let mailbox = Mailbox {
        relay: "relay-1".into(),
        id: [7; 16],
    };
    let hello = SessionHello {
        window_cells: 1024,
        mailboxes: vec![mailbox],
        limits_pass: Vec::new(),
    };
    let mut client_cfg = config();
    client_cfg.keepalive = o.keepalive;
    client_cfg.peer_timeout = o.peer_timeout;
    let pending =
        PendingSession::start(&mut rng, client_cfg, &central_key.public(), &hello, 0, 0).unwrap();
    let now = tokio::time::Instant::now().into_std();
    let accepted_hs = session::accept(
        &mut rng,
        config(),
        &central_key,
        now,
        session::HelloClock::ANY,
        pending.hello_cell(),
    )
    .unwrap();
    let client_session = pending.finish(now, &accepted_hs.welcome_cell).unwrap();

    let (client_cells_tx, client_cells_rx) = mpsc::channel(4096);
    let (central_cells_tx, central_cells_rx) = mpsc::channel(4096);
    let dropped = Arc::new(AtomicUsize::new(0));
    let (drop_every, counter, seen) = (o.drop_every, dropped.clone(), AtomicUsize::new(0));
    let up = channel_link("upstream-1", central_cells_tx, move |cell| {
        let k = seen.fetch_add(1, Ordering::Relaxed) + 1;
        if drop_every > 0 && k % drop_every == 0 {
            counter.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(cell)
    });
    // The downstream and relay in one: unwrap the envelope, deliver the cell.
    let blackhole = o.down_blackhole;
    let down = channel_link("downstream-1", client_cells_tx, move |env| {
        if blackhole {
            return None;
        }
        Envelope::parse(&env, CELL).ok().map(|e| e.cell.to_vec())
    });
    let (_client_links_tx, client_links) = watch::channel(vec![up]);
    let (_central_links_tx, central_links) = watch::channel(vec![down]);
    let shutdown = CancellationToken::new();
    let central_drain = CancellationToken::new();
    let accepted: Accepted = Arc::default();

    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (status, status_reader) = status_channel();
    let client = SessionTask {
        session: client_session,
        node: "client".into(),
        metrics: Arc::new(Metrics::default()),
        tap: None,
        cells_rx: client_cells_rx,
        cmd_tx: cmd_tx.clone(),
        cmd_rx,
        links: client_links,
        role: SessionRole::Client,
        first_stream: 0,
        idle_timeout: Duration::from_secs(3600),
        reassembly_timeout: Duration::from_secs(60),
        status: Some(status),
        pace: None,
        members: None,
        shutdown: shutdown.clone(),
    };
    let (central_cmd_tx, central_cmd_rx) = mpsc::channel(256);
    let (central_status, central_status_reader) = status_channel();
    let central_metrics = Arc::new(Metrics::default());
    let sink = accepted.clone();
    let central = SessionTask {
        session: accepted_hs.session,
        node: "central".into(),
        metrics: central_metrics.clone(),
        tap: None,
        cells_rx: central_cells_rx,
        cmd_tx: central_cmd_tx,
        cmd_rx: central_cmd_rx,
        links: central_links,
        first_stream: 0,
        role: SessionRole::Central(CentralSession {
            mailboxes: accepted_hs.hello.mailboxes,
            // The directory's relays.
            known_relay: Arc::new(|r| r.starts_with("relay-")),
            mailbox_policy: MailboxPolicy::new(o.mailbox_interval),
            send_budget: o
                .send_budget
                .clone()
                .unwrap_or_else(|| Arc::new(SendBudget::new(usize::MAX))),
            welcome: accepted_hs.welcome_cell,
            opener: Box::new(move |gateway, tx, rx| {
                sink.lock().unwrap().push((gateway, tx, rx));
                true
            }),
            gauge: Arc::new(SessionGauge::default()),
            drain: central_drain.clone(),
            limits: StreamLimits {
                max_streams: o.max_streams,
                opens: TokenBucket::new(o.open_rate, o.open_burst, std::time::Instant::now()),
            },
        }),
        idle_timeout: o.idle_timeout,
        reassembly_timeout: Duration::from_secs(60),
        status: Some(central_status),
        pace: None,
        members: None,
        shutdown: shutdown.clone(),
    };
    let client = tokio::spawn(async move {
        // The links' senders must outlive the task.
        let _keep = (_client_links_tx, _central_links_tx);
        client.run().await
    });
    let central = tokio::spawn(central.run());
    Pair {
        client_cmd: cmd_tx,
        client,
        central,
        accepted,
        central_drain,
        shutdown,
        dropped,
        status: status_reader,
        central_status: central_status_reader,
        central_metrics,
    }
}

impl Pair {
    /// Waits until the central has been handed `n` streams.
    async fn accepted(&self, n: usize) -> Vec<(String, StreamSender, StreamReceiver)> {
        for _ in 0..500 {
            if self.accepted.lock().unwrap().len() >= n {
                return std::mem::take(&mut *self.accepted.lock().unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the central was not handed {n} streams");
    }
}

/// Reads a stream's data until `End`; `None` if it was reset or dropped first.
async fn read_to_end(rx: &mut StreamReceiver) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        match rx.recv().await? {
            StreamEvent::Data(d) => out.extend_from_slice(&d),
            StreamEvent::End => return Some(out),
            StreamEvent::Reset(_) => return None,
        }
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn send_all(tx: &StreamSender, data: &[u8]) {
    for chunk in data.chunks(16 * 1024) {
        tx.send(chunk.to_vec()).await.unwrap();
    }
    tx.end().await.unwrap();
}

/// A status reader gets a fresh view of the client's session when it asks: its path by
/// link name, the open stream, the cells sent and acknowledged on the path.
#[tokio::test]
async fn a_status_reader_gets_a_view_of_the_session_when_it_asks() {
    let mut p = pair(Opts::default()).await;
    let (ctx, _crx) = stream::open(&p.client_cmd, 1, "gateway-1").await.unwrap();
    let (_, _gtx, mut grx) = p.accepted(1).await.pop().unwrap();
    let up = pattern(200_000, 3);
    ctx.send(up.clone()).await.unwrap();
    let mut got = 0;
    while got < up.len() {
        match grx.recv().await.unwrap() {
            StreamEvent::Data(d) => got += d.len(),
            e => panic!("{e:?}"),
        }
    }
    let mut asked = 0;
    let view = loop {
        let view = p.status.fresh(Duration::from_secs(1)).await.unwrap();
        asked += 1;
        if view.snapshot.paths[0].counters.acked > 0 || asked > 100 {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(view.path_names, ["upstream-1"]);
    assert_eq!(view.streams_open, 1);
    let path = &view.snapshot.paths[0];
    assert!(path.counters.acked > 0 && path.counters.sent >= path.counters.acked);
    let stats = &view.snapshot.stats;
    assert_eq!(
        path.counters.sent,
        stats.data_cells_sent + stats.retransmits
    );
    p.shutdown.cancel();
    p.client.await.unwrap();
    assert!(
        p.status.fresh(Duration::from_millis(50)).await.is_some(),
        "the last view stays until the supervisor clears it"
    );
}

#[tokio::test]
async fn bytes_cross_both_ways_through_the_stream_handles() {
    let p = pair(Opts::default()).await;
    let (ctx, mut crx) = stream::open(&p.client_cmd, 1, "gateway-1").await.unwrap();
    let up = pattern(3 << 20, 1);
    let sender = tokio::spawn({
        let up = up.clone();
        async move { send_all(&ctx, &up).await }
    });
    let (gateway, gtx, mut grx) = p.accepted(1).await.pop().unwrap();
    assert_eq!(
        gateway, "gateway-1",
        "the central learns the gateway the client named"
    );
    let down = pattern(5 << 20, 2);
    let reply = tokio::spawn({
        let down = down.clone();
        async move { send_all(&gtx, &down).await }
    });
    assert_eq!(read_to_end(&mut grx).await.unwrap(), up);
    assert_eq!(read_to_end(&mut crx).await.unwrap(), down);
    sender.await.unwrap();
    reply.await.unwrap();
    p.shutdown.cancel();
}

#[tokio::test]
async fn lost_cells_are_resent_and_nothing_is_lost() {
    let p = pair(Opts {
        drop_every: 7,
        ..Opts::default()
    })
    .await;
    let (ctx, _crx) = stream::open(&p.client_cmd, 1, "gateway-1").await.unwrap();
    let up = pattern(2 << 20, 3);
    let sender = tokio::spawn({
        let up = up.clone();
        async move { send_all(&ctx, &up).await }
    });
    let (_, _gtx, mut grx) = p.accepted(1).await.pop().unwrap();
    assert_eq!(read_to_end(&mut grx).await.unwrap(), up);
    sender.await.unwrap();
    assert!(
        p.dropped.load(Ordering::Relaxed) >= 50,
        "the link dropped cells"
    );
    p.shutdown.cancel();
}

/// An owner that never reads holds up only its own stream: the other stream of the same
/// session still moves megabytes.
#[tokio::test]
async fn a_stalled_owner_stalls_only_its_own_stream() {
    let p = pair(Opts::default()).await;
    let (_stalled_tx, _stalled_rx) = stream::open(&p.client_cmd, 1, "g").await.unwrap();
    let (live_tx, mut live_rx) = stream::open(&p.client_cmd, 2, "g").await.unwrap();
    let mut got = p.accepted(2).await;
    got.sort_by_key(|(_, tx, _)| tx.id());
    let (_, live_gtx, _live_grx) = got.pop().unwrap();
    let (_, stalled_gtx, _stalled_grx) = got.pop().unwrap();
    // Far more than a stream window toward the client that never reads...
    let flood = tokio::spawn(async move {
        let chunk = vec![0u8; 16 * 1024];
        loop {
            if stalled_gtx.send(chunk.clone()).await.is_err() {
                return;
            }
        }
    });
    // ... while the other stream delivers 8 MiB.
    let data = pattern(8 << 20, 4);
    let sender = tokio::spawn({
        let data = data.clone();
        async move { send_all(&live_gtx, &data).await }
    });
    let got = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut live_rx))
        .await
        .expect("the live stream was held up by the stalled one");
    assert_eq!(got.unwrap(), data);
    sender.await.unwrap();
    assert!(
        !flood.is_finished(),
        "the stalled stream is held by its credit"
    );
    drop(live_tx);
    p.shutdown.cancel();
}

#[tokio::test]
async fn a_reset_reaches_the_other_owner_and_stops_its_sending() {
    let p = pair(Opts::default()).await;
    let (ctx, _crx) = stream::open(&p.client_cmd, 1, "g").await.unwrap();
    ctx.send(b"hello".to_vec()).await.unwrap();
    let (_, gtx, mut grx) = p.accepted(1).await.pop().unwrap();
    assert!(matches!(grx.recv().await, Some(StreamEvent::Data(d)) if d == b"hello"));
    ctx.reset(Reason::CONNECTION_REFUSED).await;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), grx.recv()).await {
            Ok(Some(StreamEvent::Reset(code))) => {
                assert_eq!(code, Reason::CONNECTION_REFUSED);
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("no reset reached the central's owner: {other:?}"),
        }
    }
    // Its credit is closed: a send fails at once instead of waiting forever.
    let big = vec![0u8; 8 << 20];
    let r = tokio::time::timeout(Duration::from_secs(5), gtx.send(big)).await;
    assert_eq!(r.expect("send returned"), Err(stream::StreamError::Reset));
    p.shutdown.cancel();
}

#[tokio::test]
async fn an_idle_session_ends_after_its_idle_timeout() {
    let p = pair(Opts {
        idle_timeout: Duration::from_millis(300),
        ..Opts::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), p.central)
        .await
        .expect("the central's task ended")
        .unwrap();
    assert_eq!(end.reason, EndReason::Idle);
    assert!(started.elapsed() >= Duration::from_millis(250));
    p.shutdown.cancel();
    p.client.await.unwrap();
}

/// Draining: a session with a live stream lives on until the stream is done and forgotten,
/// then ends by itself.
#[tokio::test]
async fn a_draining_session_ends_when_its_streams_are_done() {
    let p = pair(Opts::default()).await;
    let (ctx, mut crx) = stream::open(&p.client_cmd, 1, "g").await.unwrap();
    send_all(&ctx, b"last words").await;
    let (_, gtx, mut grx) = p.accepted(1).await.pop().unwrap();
    p.central_drain.cancel();
    // A stream opened while draining is refused with a reset.
    let (_late_tx, mut late_rx) = stream::open(&p.client_cmd, 2, "g").await.unwrap();
    assert_eq!(
        read_to_end(&mut late_rx).await,
        None,
        "refused while draining"
    );
    assert_eq!(read_to_end(&mut grx).await.unwrap(), b"last words");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!p.central.is_finished(), "a live stream keeps the session");
    send_all(&gtx, b"bye").await;
    assert_eq!(read_to_end(&mut crx).await.unwrap(), b"bye");
    gtx.forget().await;
    ctx.forget().await;
    let end = tokio::time::timeout(Duration::from_secs(10), p.central)
        .await
        .expect("the drained session ended")
        .unwrap();
    assert_eq!(end.reason, EndReason::Drained);
    p.shutdown.cancel();
}

/// Keepalives from the client keep a quiet session past the central's idle timeout (three
/// times over), and the session still carries a stream afterwards.
#[tokio::test]
async fn keepalives_keep_a_quiet_session_past_the_idle_timeout() {
    let p = pair(Opts {
        idle_timeout: Duration::from_millis(300),
        keepalive: Some(Duration::from_millis(100)),
        peer_timeout: Some(Duration::from_secs(5)),
        ..Opts::default()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !p.central.is_finished(),
        "the central closed a session kept alive"
    );
    let (ctx, _crx) = stream::open(&p.client_cmd, 1, "g").await.unwrap();
    send_all(&ctx, b"still here").await;
    let (_, _gtx, mut grx) = p.accepted(1).await.pop().unwrap();
    assert_eq!(read_to_end(&mut grx).await.unwrap(), b"still here");
    p.shutdown.cancel();
}

/// A central that vanished (its task gone, cells unanswered) ends the client's session
/// with `PeerSilent` after the peer timeout, so that the client opens a new one.
#[tokio::test]
async fn a_vanished_central_ends_the_client_session() {
    let p = pair(Opts {
        keepalive: Some(Duration::from_millis(100)),
        peer_timeout: Some(Duration::from_millis(300)),
        ..Opts::default()
    })
    .await;
    // A first exchange gives the client an RTT sample (so 3 RTOs are the 200 ms minimum).
    let (ctx, _crx) = stream::open(&p.client_cmd, 1, "g").await.unwrap();
    send_all(&ctx, b"hello").await;
    let (_, _gtx, mut grx) = p.accepted(1).await.pop().unwrap();
    assert_eq!(read_to_end(&mut grx).await.unwrap(), b"hello");
    // Let the central's acknowledgement reach the client before it goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    p.central.abort();
    let gone = tokio::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), p.client)
        .await
        .expect("the client noticed")
        .unwrap();
    assert_eq!(end.reason, EndReason::Failed(SessionError::PeerSilent));
    let took = gone.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "noticed {took:?} after the central went"
    );
    p.shutdown.cancel();
}

/// How a stream the client opened fared at the central: refused with `resource_limit`, or
/// still open after a moment.
async fn refused(rx: &mut StreamReceiver) -> bool {
    match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
        Ok(Some(StreamEvent::Reset(r))) => {
            assert_eq!(r, Reason::RESOURCE_LIMIT);
            true
        }
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => false,
    }
}

/// A session holds at most `max_streams` streams at the central: more opens are refused
/// (`resource_limit`) until one ends. Before the limit, a session could open streams
/// without end, each a task and a QUIC stream on the gateway link all sessions share.
#[tokio::test]
async fn a_session_holds_at_most_its_stream_limit() {
    let p = pair(Opts {
        max_streams: 3,
        ..Opts::default()
    })
    .await;
    let mut rxs = Vec::new();
    for id in 1..=5 {
        let (tx, rx) = stream::open(&p.client_cmd, id, "g").await.unwrap();
        let _ = tx.send(b"x".to_vec()).await;
        rxs.push((tx, rx));
    }
    let mut outcome = Vec::new();
    for (_, rx) in &mut rxs {
        outcome.push(refused(rx).await);
    }
    assert_eq!(outcome, [false, false, false, true, true]);
    let mut open = p.accepted(3).await;
    // One ends: a new open fits again.
    let (_, gtx, _grx) = open.pop().unwrap();
    let (ctx, _) = &rxs[2];
    ctx.reset(Reason::APP_CLOSED).await;
    gtx.forget().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (tx, mut rx) = stream::open(&p.client_cmd, 6, "g").await.unwrap();
    let _ = tx.send(b"x".to_vec()).await;
    assert!(!refused(&mut rx).await, "room again after a stream ended");
    p.shutdown.cancel();
}

/// Opens past the session's rate (bursts of `open_burst`, then `open_rate` a second) are
/// refused; the bucket refills with time.
#[tokio::test]
async fn a_session_opens_streams_at_most_at_its_rate() {
    let p = pair(Opts {
        open_rate: 2,
        open_burst: 3,
        ..Opts::default()
    })
    .await;
    let mut keep = Vec::new();
    for id in 1..=6 {
        let (tx, rx) = stream::open(&p.client_cmd, id, "g").await.unwrap();
        let _ = tx.send(b"x".to_vec()).await;
        keep.push((tx, rx));
    }
    let mut outcome = Vec::new();
    for (_, rx) in &mut keep {
        outcome.push(refused(rx).await);
    }
    // The burst of 3 opens at once; the rest, opened within milliseconds, are refused.
    assert_eq!(outcome, [false, false, false, true, true, true]);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (tx, mut rx) = stream::open(&p.client_cmd, 7, "g").await.unwrap();
    let _ = tx.send(b"x".to_vec()).await;
    assert!(!refused(&mut rx).await, "the bucket refilled");
    p.shutdown.cancel();
}

/// A client floods the central with `Mailboxes` frames (one every 3 ms) while the central
/// has cells in flight: each lists its relay's mailbox under a fresh id, the same relay again, and 100
/// relays the directory does not have. The central uses one pair per directory relay, and
/// applies one change per interval, so the flood costs at most one window of resends. (The
/// old code made a path for every pair, and every frame resent all cells in flight.)
#[tokio::test]
async fn a_mailboxes_flood_is_filtered_and_rate_limited() {
    let mut p = pair(Opts {
        down_blackhole: true,
        mailbox_interval: Duration::from_secs(5),
        ..Opts::default()
    })
    .await;
    let (_ctx, _crx) = stream::open(&p.client_cmd, 1, "gateway-1").await.unwrap();
    let (_, gtx, _grx) = p.accepted(1).await.pop().unwrap();
    // The central fills its window: nothing is acknowledged (the downstream drops all).
    let down = pattern(2 << 20, 5);
    let _reply = tokio::spawn(async move { send_all(&gtx, &down).await });
    for _ in 0..200 {
        if Metrics::get(&p.central_metrics.cells_out) >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let in_flight = Metrics::get(&p.central_metrics.cells_out);
    assert!(in_flight >= 400, "{in_flight} cells in flight");
    for round in 0..200u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&round.to_le_bytes());
        let mut boxes = vec![
            Mailbox {
                relay: "relay-1".into(),
                id,
            },
            Mailbox {
                relay: "relay-1".into(),
                id: [9; 16],
            },
        ];
        boxes.extend((0..100).map(|i| Mailbox {
            relay: format!("x{i}"),
            id,
        }));
        p.client_cmd
            .send(SessionCmd::Mailboxes(boxes))
            .await
            .unwrap();
        // One frame at a time: each would otherwise be a change of its own.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resent = Metrics::get(&p.central_metrics.retransmits);
    eprintln!("{resent} cells resent for 200 Mailboxes frames ({in_flight} in flight)");
    assert!(
        resent <= 1024,
        "{resent} cells resent for 200 Mailboxes frames ({in_flight} were in flight)"
    );
    let view = p
        .central_status
        .fresh(Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        view.path_names.len(),
        1,
        "paths: one downstream and one directory relay"
    );
    p.shutdown.cancel();
}

/// Sessions share the central's send budget: one whose client never acknowledges keeps
/// no more than its share, what all keep stays within twice the budget, and another
/// session's transfer still completes beside it.
#[tokio::test]
async fn a_global_send_budget_bounds_what_sessions_keep() {
    const BUDGET: usize = 256 << 10;
    let budget = Arc::new(SendBudget::new(BUDGET));
    let hostile = pair(Opts {
        down_blackhole: true,
        send_budget: Some(budget.clone()),
        ..Opts::default()
    })
    .await;
    let (_hctx, _hcrx) = stream::open(&hostile.client_cmd, 1, "gateway-1")
        .await
        .unwrap();
    let (_, hgtx, _hgrx) = hostile.accepted(1).await.pop().unwrap();
    let flood = pattern(8 << 20, 6);
    let _flood = tokio::spawn(async move { send_all(&hgtx, &flood).await });
    let watch_budget = {
        let budget = budget.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..300 {
                most = most.max(budget.used());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let honest = pair(Opts {
        send_budget: Some(budget.clone()),
        ..Opts::default()
    })
    .await;
    let (_ctx, mut crx) = stream::open(&honest.client_cmd, 1, "gateway-1")
        .await
        .unwrap();
    let (_, gtx, _grx) = honest.accepted(1).await.pop().unwrap();
    let down = pattern(1 << 20, 7);
    let reply = tokio::spawn({
        let down = down.clone();
        async move { send_all(&gtx, &down).await }
    });
    let got = tokio::time::timeout(Duration::from_secs(20), read_to_end(&mut crx))
        .await
        .expect("the honest transfer finishes beside the hostile session");
    assert_eq!(got.unwrap(), down);
    reply.await.unwrap();
    let most = watch_budget.await.unwrap();
    eprintln!("sessions kept at most {most} bytes under a {BUDGET}-byte budget");
    assert!(
        most > BUDGET / 2 && most <= 2 * BUDGET + 64 * 1024,
        "sessions kept up to {most} bytes under a {BUDGET}-byte budget"
    );
    hostile.shutdown.cancel();
    honest.shutdown.cancel();
}
