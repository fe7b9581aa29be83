//! The one sealed-record pump: moves bytes between an application's byte stream (a TCP
//! socket at the client's front ends and at the gateway's exit) and an inner stream's
//! sealed records (`braid_proto::inner`), whatever carries those records: the outer session
//! (client side, [`StreamSender`] / [`StreamReceiver`]) or a QUIC stream (gateway side).
//!
//! The stream's state ([`ReliableStream`]: resend buffer, counts, acks) outlives a carrier:
//! [`run_leg`] pumps over one carrier until the stream is done, fails, or the carrier goes;
//! then the owner may move the stream to a new carrier ([`SharedStream::resend`]) and run
//! the next leg with the same application socket.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::session_task::StreamEvent;
use crate::stream::{StreamReceiver, StreamSender};
use braid_proto::inner::reliable::Delivery;
use braid_proto::inner::{self, MessageDecoder, Record, ReliableStream};
use braid_proto::Reason;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Where sealed records go.
pub trait SealedSink: Send {
    /// Sends one sealed record. It may take the buffer (`std::mem::take`) or leave it.
    fn write_sealed(&mut self, sealed: &mut Vec<u8>)
        -> impl Future<Output = io::Result<()>> + Send;
    /// No more records follow.
    fn finish(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// Where sealed records come from, in order, as byte chunks of any cut.
pub trait SealedSource: Send {
    /// Pushes the next chunk into `dec`; false when the carrier has ended.
    fn read_into(&mut self, dec: &mut MessageDecoder) -> impl Future<Output = bool> + Send;
}

/// How a leg ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegEnd {
    /// Both directions are over and the peer has everything: the stream is finished.
    Done,
    /// The peer failed the stream (a sealed error record), or a record did not open: the
    /// stream is over, nothing can resume it.
    Aborted,
    /// Reading or writing the application failed; the stream is over.
    AppFailed,
    /// The carrier ended or failed, or the leg was stopped from outside: the stream may
    /// resume on another carrier.
    CarrierLost,
}

/// The sealed bytes all of a process's streams may keep for resending, together: each
/// stream has its own cap (`resume_buffer_kib`), and this bounds their sum
/// (`resume_budget_mib`), so memory stays bounded however many streams are open. Over the
/// budget, a stream still keeps up to its fair share (the budget over the streams keeping
/// anything), so one peer that never acknowledges cannot stall every other stream; what
/// is kept stays under twice the budget. A stream held back stops reading its application
/// until acknowledgements free room; acks, closes and errors are never held back, so the
/// budget cannot deadlock the streams.
#[derive(Debug)]
pub struct ResendBudget {
    limit: usize,
    used: AtomicUsize,
    /// Streams keeping at least one byte.
    holders: AtomicUsize,
}

impl ResendBudget {
    pub fn new(limit: usize) -> Self {
        ResendBudget {
            limit,
            used: AtomicUsize::new(0),
            holders: AtomicUsize::new(0),
        }
    }

    /// Bytes kept now, over all streams.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether a holder keeping `mine` bytes may take more: while the total is under the
    /// limit, or while it keeps less than its fair share (limit / holders).
    pub fn has_room(&self, mine: usize) -> bool {
        let holders = self.holders.load(Ordering::Relaxed).max(1);
        self.used() < self.limit || mine < self.limit / holders
    }

    /// A holder that kept `from` bytes now keeps `to`.
    pub fn adjust(&self, from: usize, to: usize) {
        if to > from {
            self.used.fetch_add(to - from, Ordering::Relaxed);
        } else {
            self.used.fetch_sub(from - to, Ordering::Relaxed);
        }
        match (from, to) {
            (0, t) if t > 0 => {
                self.holders.fetch_add(1, Ordering::Relaxed);
            }
            (f, 0) if f > 0 => {
                self.holders.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

struct State {
    stream: ReliableStream,
    to_app: ToApp,
    /// What this stream has charged to the budget (what it kept at the last sync).
    charged: usize,
}

/// Data opened from the carrier that the application has not taken yet, oldest first. The
/// inbound side opens records ahead of a slow application, so the peer's acknowledgements
/// among them are seen even while the application is not reading: otherwise a target that
/// stops reading because it cannot write (an echo, once this end's budget holds back its
/// replies) would keep those acknowledgements, and the room they free, behind its data
/// forever. The queue is bounded by what the peer may send unacknowledged, since queued
/// records are not acknowledged ([`ReliableStream::hold_from`]). It is part of the
/// stream, so it outlives a carrier.
#[derive(Default)]
struct ToApp {
    /// (record index, data, bytes of it already written).
    chunks: VecDeque<(u64, Vec<u8>, usize)>,
    /// The record index of the chunk the inbound side took out to write (it is still
    /// counted in `bytes`, and goes back to the front if the leg stops mid-write).
    writing: Option<u64>,
    bytes: usize,
    /// The peer's half-close, to pass on once the chunks are written.
    shutdown_owed: bool,
}

impl ToApp {
    /// Nothing left to write or to pass on.
    fn is_idle(&self) -> bool {
        self.chunks.is_empty() && self.writing.is_none() && !self.shutdown_owed
    }
}

impl State {
    fn kept(&self) -> usize {
        self.stream.buffered() + self.to_app.bytes
    }

    /// Acknowledgements stop at the first chunk the application has not taken.
    fn hold_acks(&mut self) {
        let q = &self.to_app;
        let first = q.writing.or(q.chunks.front().map(|c| c.0));
        self.stream.hold_from(first);
    }
}

/// An inner stream's state, shared by the two directions of a leg and kept across legs.
pub struct SharedStream {
    state: Mutex<State>,
    budget: Arc<ResendBudget>,
    /// Wakes the outbound direction: an ack is owed, the buffer has room, or the stream is
    /// done.
    wake_out: Notify,
    /// Bytes the inbound side may open ahead of the application ([`Self::reading_ahead`]).
    read_ahead: usize,
}

/// The stream's state while locked; on release, what it keeps is charged to the budget.
pub struct StreamGuard<'a> {
    state: MutexGuard<'a, State>,
    budget: &'a ResendBudget,
}

impl std::ops::Deref for StreamGuard<'_> {
    type Target = ReliableStream;
    fn deref(&self) -> &ReliableStream {
        &self.state.stream
    }
}

impl std::ops::DerefMut for StreamGuard<'_> {
    fn deref_mut(&mut self) -> &mut ReliableStream {
        &mut self.state.stream
    }
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        let now = self.state.kept();
        if now != self.state.charged {
            self.budget.adjust(self.state.charged, now);
            self.state.charged = now;
        }
    }
}

impl Drop for SharedStream {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.budget.adjust(st.charged, 0);
    }
}

impl SharedStream {
    /// A stream whose kept bytes count against `budget`.
    pub fn new(stream: ReliableStream, budget: Arc<ResendBudget>) -> Self {
        SharedStream {
            state: Mutex::new(State {
                stream,
                to_app: ToApp::default(),
                charged: 0,
            }),
            budget,
            wake_out: Notify::new(),
            read_ahead: 1,
        }
    }

    /// Lets the inbound side open up to `bytes` ahead of the application (by default it
    /// opens the next record only once the last one is written). The gateway reads ahead
    /// by the client's whole resend buffer, so the client's acks are always seen: a target
    /// that stops reading while it cannot write (an echo, once the gateway's budget holds
    /// back its replies) would otherwise keep them behind its data forever. The client does
    /// not: there an application that never reads must stall its stream where the central
    /// sees it (`node/src/stall.rs`), not pull the stream's whole window across the
    /// overlay into a queue.
    pub fn reading_ahead(mut self, bytes: usize) -> Self {
        self.read_ahead = bytes.max(1);
        self
    }

    /// The state, for a moment (never held across an await).
    pub fn lock(&self) -> StreamGuard<'_> {
        StreamGuard {
            // The state stays consistent whatever panicked while holding it.
            state: self.state.lock().unwrap_or_else(PoisonError::into_inner),
            budget: &self.budget,
        }
    }

    /// The sealed records the peer has not acknowledged, to send first on a new carrier.
    pub fn resend(&self) -> Vec<Vec<u8>> {
        self.lock().resend().map(<[u8]>::to_vec).collect()
    }

    /// A sealed error record telling the peer the stream failed for `reason`.
    pub fn seal_error(&self, reason: Reason) -> Option<Vec<u8>> {
        self.lock().seal(&Record::Error(reason.code())).ok()
    }
}

/// Records opened but not yet acknowledged are acknowledged after this long, even fewer than
/// an ack interval: the peer may be held back until they are.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// How often a stream held back by the process's resend budget looks again.
const BUDGET_RECHECK: Duration = Duration::from_millis(10);

/// What one direction of a leg came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    End(LegEnd),
    /// The other direction (or the owner) ended the leg.
    Stopped,
}

/// Pumps one leg: the application's bytes out as sealed records over `sink`, the records
/// from `source` (after whatever `dec` holds) into the application, acknowledgements both
/// ways. Ends when the stream is done or fails, when the carrier goes, or when `stop` is
/// cancelled (what was opened and not yet written to the application stays queued in the
/// stream for the next leg). `seen_out` / `seen_in` are shown each
/// plaintext chunk (counters, the test tap).
#[allow(clippy::too_many_arguments)]
pub async fn run_leg<R, W, K, S>(
    app_r: &mut R,
    app_w: &mut W,
    stream: &SharedStream,
    sink: &mut K,
    source: &mut S,
    dec: &mut MessageDecoder,
    stop: &CancellationToken,
    seen_out: impl FnMut(&[u8]),
    seen_in: impl FnMut(&[u8]),
) -> LegEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    K: SealedSink,
    S: SealedSource,
{
    let leg_over = stop.child_token();
    let out = async {
        let r = outbound(app_r, stream, sink, &leg_over, seen_out).await;
        // Done, the inbound side still writes out what it queued for the application and
        // then sees the stream done too.
        if r != Half::End(LegEnd::Done) {
            leg_over.cancel();
        }
        r
    };
    let inb = async {
        let r = inbound(source, dec, stream, app_w, &leg_over, seen_in).await;
        if r != Half::End(LegEnd::Done) {
            leg_over.cancel();
        }
        r
    };
    let (o, i) = tokio::join!(out, inb);
    let ends = [o, i];
    for worst in [LegEnd::AppFailed, LegEnd::Aborted] {
        if ends.contains(&Half::End(worst)) {
            return worst;
        }
    }
    if o == Half::End(LegEnd::Done) {
        LegEnd::Done
    } else {
        LegEnd::CarrierLost
    }
}

/// Sends `sealed` unless the leg ends first; false if the carrier refused it.
async fn send<K: SealedSink>(
    sink: &mut K,
    sealed: &mut Vec<u8>,
    leg_over: &CancellationToken,
) -> bool {
    tokio::select! {
        r = sink.write_sealed(sealed) => r.is_ok(),
        // The record stays in the resend buffer; the next carrier takes it.
        _ = leg_over.cancelled() => false,
    }
}

async fn outbound<R, K>(
    app: &mut R,
    stream: &SharedStream,
    sink: &mut K,
    leg_over: &CancellationToken,
    mut seen: impl FnMut(&[u8]),
) -> Half
where
    R: AsyncRead + Unpin,
    K: SealedSink,
{
    let mut buf = vec![0u8; inner::MAX_RECORD_DATA];
    let mut ack_late = false;
    loop {
        let (ack, done, room_here, can_read, pending) = {
            let mut st = stream.lock();
            let ack = if st.ack_due() || st.ack_urgent() || std::mem::take(&mut ack_late) {
                match st.seal_ack() {
                    Ok(a) => a,
                    Err(_) => return Half::End(LegEnd::Aborted),
                }
            } else {
                None
            };
            let mine = st.can_take_data();
            let room = mine && stream.budget.has_room(st.buffered());
            // Not done while the application has not taken everything: the last ack
            // (of the peer's half-close) goes out only then, and after `finish` none can.
            let done = st.is_done() && st.state.to_app.is_idle();
            (ack, done, mine, room, st.ack_pending())
        };
        if let Some(mut ack) = ack {
            if !send(sink, &mut ack, leg_over).await {
                return lost_or_stopped(leg_over);
            }
        }
        if done {
            let _ = sink.finish().await;
            return Half::End(LegEnd::Done);
        }
        tokio::select! {
            biased;
            _ = leg_over.cancelled() => return Half::Stopped,
            _ = stream.wake_out.notified() => continue,
            _ = tokio::time::sleep(ACK_DELAY), if pending => ack_late = true,
            // Over the process's budget: look again when other streams may have freed room.
            _ = tokio::time::sleep(BUDGET_RECHECK), if room_here && !can_read => continue,
            r = app.read(&mut buf), if can_read => {
                let rec = match r {
                    Ok(0) => Record::HalfClose,
                    Ok(n) => {
                        let n = fill_ready(app, &mut buf, n);
                        let data = buf.get(..n).unwrap_or_default();
                        seen(data);
                        Record::Data(data.to_vec())
                    }
                    Err(_) => Record::Error(Reason::GENERAL_FAILURE.code()),
                };
                let Ok(mut sealed) = stream.lock().seal(&rec) else {
                    return Half::End(LegEnd::Aborted);
                };
                if !send(sink, &mut sealed, leg_over).await {
                    return lost_or_stopped(leg_over);
                }
                if matches!(rec, Record::Error(_)) {
                    return Half::End(LegEnd::AppFailed);
                }
            }
        }
    }
}

/// Adds to `buf[..n]` whatever else the application has ready now, without waiting; returns
/// the new length. A record is padded to its size bucket (`inner::RECORD_BUCKETS`), so bytes
/// that are already here ride in the padding for free, and bulk records come out full.
/// An end of stream or an error is left for the next read to see (they repeat).
fn fill_ready<R: AsyncRead + Unpin>(app: &mut R, buf: &mut [u8], mut n: usize) -> usize {
    let mut cx = Context::from_waker(Waker::noop());
    while let Some(rest) = buf.get_mut(n..).filter(|r| !r.is_empty()) {
        let mut rb = ReadBuf::new(rest);
        match Pin::new(&mut *app).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if !rb.filled().is_empty() => n += rb.filled().len(),
            _ => break,
        }
    }
    n
}

fn lost_or_stopped(leg_over: &CancellationToken) -> Half {
    if leg_over.is_cancelled() {
        Half::Stopped
    } else {
        Half::End(LegEnd::CarrierLost)
    }
}

async fn inbound<S, W>(
    source: &mut S,
    dec: &mut MessageDecoder,
    stream: &SharedStream,
    app: &mut W,
    leg_over: &CancellationToken,
    mut seen: impl FnMut(&[u8]),
) -> Half
where
    S: SealedSource,
    W: AsyncWrite + Unpin,
{
    // Reading ahead by the peer's buffer cap (and one record) sees every ack, since queued
    // data is not acknowledged; past that much the peer is not keeping to its cap, and only
    // its own stream waits.
    let queue_cap = stream.read_ahead;
    let mut carrier_ended = false;
    // The chunk being written, taken out of the queue (the state is never held across an
    // await): its data and how much of it is written.
    let mut out: Option<(Vec<u8>, usize)> = None;
    loop {
        // Open everything that has arrived, while the queue has room.
        loop {
            let mut st = stream.lock();
            if st.state.to_app.bytes >= queue_cap {
                break;
            }
            let msg = match dec.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => return Half::End(LegEnd::Aborted),
            };
            match st.open(&msg) {
                Ok(Delivery::Data(d)) if !d.is_empty() => {
                    let index = st.received() - 1;
                    let q = &mut st.state.to_app;
                    q.bytes += d.len();
                    q.chunks.push_back((index, d, 0));
                    st.state.hold_acks();
                }
                Ok(Delivery::Data(_) | Delivery::Nothing) => {}
                Ok(Delivery::HalfClose) => st.state.to_app.shutdown_owed = true,
                Ok(Delivery::Error(_)) | Err(_) => return Half::End(LegEnd::Aborted),
            }
            // Every record may matter to the outbound side: an ack owed now or later (its
            // delay starts here), room freed, or the end.
            stream.wake_out.notify_one();
        }
        let (room, shutdown_now, done) = {
            let mut st = stream.lock();
            let q = &mut st.state.to_app;
            if out.is_none() {
                if let Some((index, d, at)) = q.chunks.pop_front() {
                    q.writing = Some(index);
                    out = Some((d, at));
                }
            }
            let shutdown_now = out.is_none() && std::mem::take(&mut q.shutdown_owed);
            let idle = q.is_idle();
            (q.bytes < queue_cap, shutdown_now, idle && st.is_done())
        };
        if shutdown_now {
            let _ = app.shutdown().await;
            // The outbound side may have been waiting for this to finish.
            stream.wake_out.notify_one();
            continue;
        }
        if done {
            return Half::End(LegEnd::Done);
        }
        if carrier_ended && out.is_none() {
            return Half::End(LegEnd::CarrierLost);
        }
        let pending = out
            .as_ref()
            .and_then(|(d, at)| d.get(*at..))
            .unwrap_or_default();
        tokio::select! {
            biased;
            _ = leg_over.cancelled() => {
                // The next leg writes the rest of this chunk first.
                if let Some((d, at)) = out.take() {
                    let mut st = stream.lock();
                    let q = &mut st.state.to_app;
                    if let Some(index) = q.writing.take() {
                        q.chunks.push_front((index, d, at));
                    }
                }
                return Half::Stopped;
            }
            // `write` is cancel-safe: a write that loses the race wrote nothing.
            r = app.write(pending), if !pending.is_empty() => match r {
                Ok(n) if n > 0 => {
                    seen(pending.get(..n).unwrap_or_default());
                    let mut st = stream.lock();
                    st.state.to_app.bytes -= n;
                    if let Some((d, at)) = &mut out {
                        *at += n;
                        if *at >= d.len() {
                            out = None;
                            st.state.to_app.writing = None;
                            st.state.hold_acks();
                            // An ack may be owed now that the application has it.
                            stream.wake_out.notify_one();
                        }
                    }
                }
                _ => return Half::End(LegEnd::AppFailed),
            },
            more = source.read_into(dec), if room && !carrier_ended => if !more {
                carrier_ended = true;
            },
        }
    }
}

impl SealedSink for StreamSender {
    async fn write_sealed(&mut self, sealed: &mut Vec<u8>) -> io::Result<()> {
        self.send(std::mem::take(sealed))
            .await
            .map_err(io::Error::other)
    }

    async fn finish(&mut self) -> io::Result<()> {
        self.end().await.map_err(io::Error::other)
    }
}

impl SealedSource for StreamReceiver {
    async fn read_into(&mut self, dec: &mut MessageDecoder) -> bool {
        match self.recv().await {
            Some(StreamEvent::Data(d)) => {
                dec.push(&d);
                true
            }
            // The session ended the stream: the carrier is gone.
            _ => false,
        }
    }
}

impl SealedSink for quinn::SendStream {
    async fn write_sealed(&mut self, sealed: &mut Vec<u8>) -> io::Result<()> {
        self.write_all(sealed).await.map_err(io::Error::other)
    }

    async fn finish(&mut self) -> io::Result<()> {
        quinn::SendStream::finish(self).map_err(io::Error::other)
    }
}

/// A QUIC receive stream as a [`SealedSource`]; `seen` is shown every chunk received (the
/// gateway's tap).
pub struct QuicSource<F> {
    pub recv: quinn::RecvStream,
    buf: Vec<u8>,
    seen: F,
}

impl<F: FnMut(&[u8]) + Send> QuicSource<F> {
    pub fn new(recv: quinn::RecvStream, seen: F) -> Self {
        QuicSource {
            recv,
            buf: vec![0u8; inner::MAX_RECORD_DATA],
            seen,
        }
    }
}

impl<F: FnMut(&[u8]) + Send> SealedSource for QuicSource<F> {
    async fn read_into(&mut self, dec: &mut MessageDecoder) -> bool {
        match self.recv.read(&mut self.buf).await {
            Ok(Some(n)) => {
                let chunk = self.buf.get(..n).unwrap_or_default();
                (self.seen)(chunk);
                dec.push(chunk);
                true
            }
            _ => false,
        }
    }
}
