//! The sealed-record pump between an application socket and an inner stream, with the
//! carrier in memory: what goes through, what counts as an abort, and a stream that moves
//! to a new carrier after its first one is cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::sync::Arc;

use braid_driver::pump::{run_leg, LegEnd, ResendBudget, SealedSink, SealedSource, SharedStream};
use braid_proto::inner::{
    self, FirstMessage, MessageDecoder, OpenRequest, OpenStatus, Record, ReliableStream,
};
use braid_proto::noise::StaticKeypair;
use braid_proto::TargetAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One direction of an in-memory carrier; it fails after `budget` records.
struct ChanSink {
    tx: Option<mpsc::UnboundedSender<Vec<u8>>>,
    budget: usize,
}

impl SealedSink for ChanSink {
    async fn write_sealed(&mut self, sealed: &mut Vec<u8>) -> io::Result<()> {
        if self.budget == 0 {
            self.tx = None;
        }
        self.budget = self.budget.saturating_sub(1);
        match &self.tx {
            Some(tx) => tx.send(std::mem::take(sealed)).map_err(io::Error::other),
            None => Err(io::Error::other("cut")),
        }
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.tx = None;
        Ok(())
    }
}

struct ChanSource(mpsc::UnboundedReceiver<Vec<u8>>);

impl SealedSource for ChanSource {
    async fn read_into(&mut self, dec: &mut MessageDecoder) -> bool {
        match self.0.recv().await {
            Some(c) => {
                dec.push(&c);
                true
            }
            None => false,
        }
    }
}

/// A carrier both ways: (client's sink, gateway's source, gateway's sink, client's source),
/// the client's sink cut after `cut_up` records, the gateway's after `cut_down`.
fn carrier(cut_up: usize, cut_down: usize) -> (ChanSink, ChanSource, ChanSink, ChanSource) {
    let (a, b) = mpsc::unbounded_channel();
    let (c, d) = mpsc::unbounded_channel();
    (
        ChanSink {
            tx: Some(a),
            budget: cut_up,
        },
        ChanSource(b),
        ChanSink {
            tx: Some(c),
            budget: cut_down,
        },
        ChanSource(d),
    )
}

/// The two ends of one inner stream after an honest open: (client, gateway), with a
/// budget that never binds.
fn ends() -> (SharedStream, SharedStream) {
    ends_within(Arc::new(ResendBudget::new(usize::MAX)))
}

/// The two ends of one inner stream, both charging `budget`.
fn ends_within(budget: Arc<ResendBudget>) -> (SharedStream, SharedStream) {
    ends_charging(budget.clone(), budget)
}

/// The two ends of one inner stream, the client's charging `client`, the gateway's `gateway`
/// (two processes).
fn ends_charging(
    client: Arc<ResendBudget>,
    gateway: Arc<ResendBudget>,
) -> (SharedStream, SharedStream) {
    let mut rng = rand::rng();
    let gateway_key = StaticKeypair::generate(&mut rng);
    let req = OpenRequest {
        kind: Default::default(),
        target: TargetAddr::Domain("example.com".into(), 80),
        early_data: Vec::new(),
    };
    let (open, first) = inner::client_open(&mut rng, &gateway_key.public(), &req, 0).unwrap();
    let (accepted, _) = inner::gateway_accept(&gateway_key, &first[2..]).unwrap();
    let mut reply = Vec::new();
    let g = accepted
        .reply(&mut rng, OpenStatus::OK, &mut reply)
        .unwrap();
    let (_, _, c) = open.finish(&reply[2..]).unwrap();
    (
        SharedStream::new(ReliableStream::new(c, 0), client),
        // As the gateway does: it reads ahead by the client's whole resend buffer.
        SharedStream::new(ReliableStream::new(g, 0), gateway)
            .reading_ahead(inner::reliable::MIN_BUFFER + inner::MAX_RECORD_DATA),
    )
}

/// Runs a leg at both ends over one carrier; returns how each ended.
async fn both_legs(
    c: &SharedStream,
    g: &SharedStream,
    c_app: &mut DuplexStream,
    g_app: &mut DuplexStream,
    (mut cs, mut gsrc, mut gs, mut csrc): (ChanSink, ChanSource, ChanSink, ChanSource),
) -> (LegEnd, LegEnd) {
    let (mut cr, mut cw) = tokio::io::split(c_app);
    let (mut gr, mut gw) = tokio::io::split(g_app);
    let stop = CancellationToken::new();
    let (mut cdec, mut gdec) = (MessageDecoder::default(), MessageDecoder::default());
    let client = run_leg(
        &mut cr,
        &mut cw,
        c,
        &mut cs,
        &mut csrc,
        &mut cdec,
        &stop,
        |_| {},
        |_| {},
    );
    let gateway = run_leg(
        &mut gr,
        &mut gw,
        g,
        &mut gs,
        &mut gsrc,
        &mut gdec,
        &stop,
        |_| {},
        |_| {},
    );
    // A leg whose carrier was cut on one side only sees it when the other side's leg ends
    // and drops its half: run them together.
    tokio::join!(client, gateway)
}

/// The bytes an application gets, and that it writes `data` then closes.
fn app(data: Vec<u8>, mut end: DuplexStream) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(&mut end);
        let write = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        let (_, n) = tokio::join!(write, read);
        n.unwrap();
        got
    })
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn a_leg_carries_both_ways_and_finishes() {
    let (c, g) = ends();
    let (c_user, mut c_app) = tokio::io::duplex(64 * 1024);
    let (g_target, mut g_app) = tokio::io::duplex(64 * 1024);
    let up = pattern(300_000, 1);
    let down = pattern(500_000, 2);
    let user = app(up.clone(), c_user);
    let target = app(down.clone(), g_target);
    let ends = both_legs(
        &c,
        &g,
        &mut c_app,
        &mut g_app,
        carrier(usize::MAX, usize::MAX),
    )
    .await;
    assert_eq!(ends, (LegEnd::Done, LegEnd::Done));
    assert_eq!(target.await.unwrap(), up);
    assert_eq!(user.await.unwrap(), down);
    // Done means the peer had everything: nothing is kept but the last few acknowledgements
    // (small records, each padded to the smallest bucket).
    let few_acks = 3 * inner::sealed_record_len(8);
    assert!(c.lock().buffered() <= few_acks, "{}", c.lock().buffered());
    assert!(g.lock().buffered() <= few_acks, "{}", g.lock().buffered());
}

/// The carrier is cut mid-transfer, both ways; a resume on a new carrier finishes the
/// stream with every byte once, in order.
#[tokio::test]
async fn a_cut_carrier_resumes_without_loss() {
    let (c, g) = ends();
    let (c_user, mut c_app) = tokio::io::duplex(64 * 1024);
    let (g_target, mut g_app) = tokio::io::duplex(64 * 1024);
    let up = pattern(400_000, 3);
    let down = pattern(900_000, 4);
    let user = app(up.clone(), c_user);
    let target = app(down.clone(), g_target);
    let ends = both_legs(&c, &g, &mut c_app, &mut g_app, carrier(7, 20)).await;
    assert_eq!(ends, (LegEnd::CarrierLost, LegEnd::CarrierLost));
    // The exchange a new carrier starts with.
    let req = c.lock().resume_request();
    let FirstMessage::Resume(req) = inner::first_message(&req[2..]).unwrap() else {
        panic!("not a resume")
    };
    let reply = g.lock().accept_resume(&req).unwrap();
    c.lock().finish_resume(&reply[2..]).unwrap();
    let (cs, gsrc, gs, csrc) = carrier(usize::MAX, usize::MAX);
    for r in c.resend() {
        cs.tx.as_ref().unwrap().send(r).unwrap();
    }
    for r in g.resend() {
        gs.tx.as_ref().unwrap().send(r).unwrap();
    }
    let ends = both_legs(&c, &g, &mut c_app, &mut g_app, (cs, gsrc, gs, csrc)).await;
    assert_eq!(ends, (LegEnd::Done, LegEnd::Done));
    assert_eq!(target.await.unwrap(), up);
    assert_eq!(user.await.unwrap(), down);
}

/// Records arriving at the client only, with its app never read: how the leg ends.
async fn client_leg_on(records: Vec<Vec<u8>>, c: &SharedStream) -> LegEnd {
    let (_user, mut c_app) = tokio::io::duplex(64 * 1024);
    let (mut r, mut w) = tokio::io::split(&mut c_app);
    let (tx, rx) = mpsc::unbounded_channel();
    for rec in records {
        tx.send(rec).unwrap();
    }
    drop(tx);
    let (stx, _srx) = mpsc::unbounded_channel();
    let mut sink = ChanSink {
        tx: Some(stx),
        budget: usize::MAX,
    };
    let mut dec = MessageDecoder::default();
    run_leg(
        &mut r,
        &mut w,
        c,
        &mut sink,
        &mut ChanSource(rx),
        &mut dec,
        &CancellationToken::new(),
        |_| {},
        |_| {},
    )
    .await
}

/// A carrier that ends without the sealed close is a lost carrier (the stream may resume),
/// never a clean end: nobody between the ends can cut a stream short unnoticed.
#[tokio::test]
async fn a_stream_cut_before_its_sealed_close_is_not_finished() {
    let (c, g) = ends();
    let one = g.lock().seal(&Record::Data(b"partial".to_vec())).unwrap();
    assert_eq!(client_leg_on(vec![one], &c).await, LegEnd::CarrierLost);
}

#[tokio::test]
async fn a_tampered_replayed_or_failed_stream_is_an_abort() {
    let (c, g) = ends();
    let mut bad = g.lock().seal(&Record::Data(b"one".to_vec())).unwrap();
    bad[6] ^= 1;
    assert_eq!(
        client_leg_on(vec![bad], &c).await,
        LegEnd::Aborted,
        "tampered"
    );

    let (c, g) = ends();
    let one = g.lock().seal(&Record::Data(b"one".to_vec())).unwrap();
    assert_eq!(
        client_leg_on(vec![one.clone(), one], &c).await,
        LegEnd::Aborted,
        "replayed"
    );

    let (c, g) = ends();
    let err = g.lock().seal(&Record::Error(5)).unwrap();
    assert_eq!(
        client_leg_on(vec![err], &c).await,
        LegEnd::Aborted,
        "sealed error"
    );
}

/// A budget far below what the transfer would keep unacknowledged: both directions still
/// finish, every byte arrives, and what is kept never exceeds the budget by more than the
/// one record each end may seal after its last look. Dropping the streams gives it all back.
#[tokio::test]
async fn a_shared_budget_bounds_what_streams_keep_and_they_still_finish() {
    const LIMIT: usize = 64 * 1024;
    let budget = Arc::new(ResendBudget::new(LIMIT));
    let (c, g) = ends_within(budget.clone());
    let (c_user, mut c_app) = tokio::io::duplex(64 * 1024);
    let (g_target, mut g_app) = tokio::io::duplex(64 * 1024);
    let up = pattern(2_000_000, 5);
    let down = pattern(3_000_000, 6);
    let user = app(up.clone(), c_user);
    let target = app(down.clone(), g_target);
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let watch = tokio::spawn({
        let (budget, peak) = (budget.clone(), peak.clone());
        async move {
            loop {
                peak.fetch_max(budget.used(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            }
        }
    });
    let ends = both_legs(
        &c,
        &g,
        &mut c_app,
        &mut g_app,
        carrier(usize::MAX, usize::MAX),
    )
    .await;
    watch.abort();
    assert_eq!(ends, (LegEnd::Done, LegEnd::Done));
    assert_eq!(target.await.unwrap(), up);
    assert_eq!(user.await.unwrap(), down);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let slack = 2 * (inner::MAX_MESSAGE + 2) + 1024;
    assert!(
        peak <= LIMIT + slack,
        "kept {peak} bytes under a {LIMIT}-byte budget"
    );
    drop((c, g));
    assert_eq!(budget.used(), 0);
}

/// An echo target behind a gateway whose budget is full. The gateway holds back reading the
/// target until the client acknowledges; the target, unable to write, stops reading; the
/// client's acknowledgements come after its data in the carrier. The gateway must take
/// them even while the target is not reading, or nothing moves again: it opens what the
/// carrier brings into a queue for the target (bounded by what the client may send before
/// an ack) and acknowledges only what the target took.
#[tokio::test]
async fn an_echo_target_behind_a_full_budget_does_not_deadlock() {
    const LIMIT: usize = 16 * 1024;
    let (c, g) = ends_charging(
        Arc::new(ResendBudget::new(usize::MAX)),
        Arc::new(ResendBudget::new(LIMIT)),
    );
    // Small pipes, so the target blocks writing as soon as the gateway stops reading it.
    let (c_user, mut c_app) = tokio::io::duplex(64 * 1024);
    let (mut g_target, mut g_app) = tokio::io::duplex(4 * 1024);
    let up = pattern(2_000_000, 11);
    let user = app(up.clone(), c_user);
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(&mut g_target);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let ends = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        both_legs(
            &c,
            &g,
            &mut c_app,
            &mut g_app,
            carrier(usize::MAX, usize::MAX),
        ),
    )
    .await
    .expect("the echo deadlocked");
    assert_eq!(ends, (LegEnd::Done, LegEnd::Done));
    echo.await.unwrap();
    assert_eq!(user.await.unwrap(), up);
}

/// One stream whose peer never acknowledges fills the whole budget; another stream sharing
/// it still finishes: over the budget each stream keeps its fair share, so one peer cannot
/// stall the others.
#[tokio::test]
async fn a_peer_that_never_acknowledges_cannot_stall_the_other_streams() {
    const LIMIT: usize = 200 * 1024;
    let budget = Arc::new(ResendBudget::new(LIMIT));
    // Stream A: its client end sends into a carrier nobody reads, so nothing is acked.
    let (a, _a_gateway) = ends_within(budget.clone());
    let (a_user, mut a_app) = tokio::io::duplex(64 * 1024);
    let _a_writer = app(pattern(4_000_000, 7), a_user);
    let (mut a_sink, _a_unread, _a_gs, mut a_src) = carrier(usize::MAX, usize::MAX);
    let hog = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(&mut a_app);
        let mut dec = MessageDecoder::default();
        let stop = CancellationToken::new();
        run_leg(
            &mut r,
            &mut w,
            &a,
            &mut a_sink,
            &mut a_src,
            &mut dec,
            &stop,
            |_| {},
            |_| {},
        )
        .await
    });
    while budget.used() < LIMIT {
        tokio::task::yield_now().await;
    }
    // Stream B shares the full budget and still carries everything both ways.
    let (c, g) = ends_within(budget.clone());
    let (c_user, mut c_app) = tokio::io::duplex(64 * 1024);
    let (g_target, mut g_app) = tokio::io::duplex(64 * 1024);
    let up = pattern(1_000_000, 8);
    let down = pattern(1_500_000, 9);
    let user = app(up.clone(), c_user);
    let target = app(down.clone(), g_target);
    let ends = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        both_legs(
            &c,
            &g,
            &mut c_app,
            &mut g_app,
            carrier(usize::MAX, usize::MAX),
        ),
    )
    .await
    .expect("the other stream was not stalled");
    assert_eq!(ends, (LegEnd::Done, LegEnd::Done));
    assert_eq!(target.await.unwrap(), up);
    assert_eq!(user.await.unwrap(), down);
    assert!(budget.used() < 2 * LIMIT + 2 * (inner::MAX_MESSAGE + 2));
    hog.abort();
}
