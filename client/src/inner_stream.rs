//! An app connection's journey through the overlay, whatever front end accepted it: open an
//! inner stream to the gateway (Noise NK, the open request and up to 1 KiB of early data in
//! message 1, the rest in the first records),
//! wait for the gateway's sealed answer, then relay sealed records both ways with the
//! driver's pump. When the carrier dies (the central went), the stream resumes through the
//! next session: same gateway, same target connection, nothing lost.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use braid_config::RouteVia;
use braid_driver::pump::{self, LegEnd, SharedStream};
use braid_driver::session_task::StreamEvent;
use braid_driver::stream::{self, StreamReceiver, StreamSender};
use braid_driver::Metrics;
use braid_proto::inner::{
    self, InnerError, MessageDecoder, OpenRequest, Record, ReliableStream, StreamKind,
};
use braid_proto::{Reason, TargetAddr};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::gateways::{Gateway, NoGateway};
use crate::overlay::ClientHandle;

/// How long the gateway may take to answer an open.
pub const OPEN_DEADLINE: Duration = Duration::from_secs(30);

/// Why an open did not give a stream. The stream has been reset already.
#[derive(Debug, thiserror::Error)]
pub enum OpenFailure {
    #[error("the gateway refused the stream ({status}): {reason}")]
    Refused { status: Reason, reason: String },
    #[error("the stream was reset before the gateway answered ({0})")]
    Reset(Reason),
    #[error("the stream ended before the gateway answered")]
    NoAnswer,
    #[error("the gateway did not answer within {0:?}")]
    TimedOut(Duration),
    #[error("the gateway's answer did not authenticate: {0}")]
    BadAnswer(inner::InnerError),
    #[error("the session has ended")]
    SessionGone,
    #[error("no session with the central (one is being opened)")]
    NoSession,
    #[error("{0}")]
    UserRefused(String),
    #[error("no gateway for the stream: {0}")]
    NoGateway(#[from] NoGateway),
    #[error("{0}")]
    Isolation(String),
    #[error("blocked by routing rule {0}")]
    Blocked(usize),
    #[error("routing rule {rule} sends this to {routed}, but the stream is pinned to {pinned}")]
    RouteConflict {
        rule: usize,
        routed: String,
        pinned: String,
    },
    #[error("direct connection failed: {1}")]
    Direct(Reason, String),
}

impl OpenFailure {
    /// Why, as a stream-end reason: what the stream is reset with, and what every front
    /// end maps to its own answer (`Reason::socks5_reply`, `Reason::http_status`).
    pub fn reason(&self) -> Reason {
        match self {
            OpenFailure::Refused { status, .. } => *status,
            OpenFailure::Reset(r) => *r,
            OpenFailure::NoAnswer => Reason::GENERAL_FAILURE,
            OpenFailure::TimedOut(_) => Reason::TIMED_OUT,
            OpenFailure::BadAnswer(_) => Reason::PROTOCOL_ERROR,
            OpenFailure::SessionGone | OpenFailure::NoSession => Reason::SESSION_CLOSED,
            OpenFailure::UserRefused(_) => Reason::NOT_ALLOWED,
            OpenFailure::NoGateway(e) => e.reason(),
            OpenFailure::Isolation(_) => Reason::RESOURCE_LIMIT,
            OpenFailure::Blocked(_) | OpenFailure::RouteConflict { .. } => Reason::NOT_ALLOWED,
            OpenFailure::Direct(r, _) => *r,
        }
    }
}

/// A stream's far end: an inner stream through the overlay, or (by a routing rule's
/// `via = "direct"`) a TCP connection from this machine.
pub enum Opened {
    Overlay(Box<OpenedStream>),
    Direct(TcpStream),
}

/// How long a direct connection may take.
pub const DIRECT_CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// Opens a TCP stream to `target` where the client's routing rules say: through the
/// overlay (by the gateway a rule names, or `pinned`, or the usual choice), directly, or
/// not at all.
pub async fn connect(
    h: &ClientHandle,
    target: &TargetAddr,
    pinned: Option<&str>,
    early_data: Vec<u8>,
) -> Result<Opened, OpenFailure> {
    let Some((index, rule)) = h.routes.decide(target) else {
        return open(h, target, pinned, early_data)
            .await
            .map(|s| Opened::Overlay(Box::new(s)));
    };
    match rule.via() {
        RouteVia::Block => Err(OpenFailure::Blocked(index)),
        RouteVia::Gateway(g) => match pinned {
            Some(p) if p != g => Err(OpenFailure::RouteConflict {
                rule: index,
                routed: g.to_owned(),
                pinned: p.to_owned(),
            }),
            _ => open(h, target, Some(g), early_data)
                .await
                .map(|s| Opened::Overlay(Box::new(s))),
        },
        // A stream the app pinned to a gateway never leaves from the laptop.
        RouteVia::Direct if pinned.is_some() => Err(OpenFailure::RouteConflict {
            rule: index,
            routed: "direct".to_owned(),
            pinned: pinned.unwrap_or_default().to_owned(),
        }),
        RouteVia::Direct => {
            let dial = async {
                match target {
                    TargetAddr::Ip(a) => TcpStream::connect(*a).await,
                    TargetAddr::Domain(name, port) => {
                        TcpStream::connect((name.as_str(), *port)).await
                    }
                }
            };
            let mut tcp = match tokio::time::timeout(DIRECT_CONNECT_DEADLINE, dial).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    return Err(OpenFailure::Direct(
                        Reason::from_io_error_kind(e.kind()),
                        e.to_string(),
                    ))
                }
                Err(_) => {
                    return Err(OpenFailure::Direct(
                        Reason::TIMED_OUT,
                        "timed out".to_owned(),
                    ))
                }
            };
            let _ = tcp.set_nodelay(true);
            tcp.write_all(&early_data)
                .await
                .map_err(|e| OpenFailure::Direct(Reason::GENERAL_FAILURE, e.to_string()))?;
            Ok(Opened::Direct(tcp))
        }
    }
}

impl Opened {
    /// Relays `tcp` to the far end until both directions are done.
    pub async fn relay(self, h: &ClientHandle, tcp: &mut TcpStream) -> RelayEnd {
        match self {
            Opened::Overlay(s) => s.relay(h, tcp).await,
            Opened::Direct(mut d) => {
                let _ = tokio::io::copy_bidirectional(tcp, &mut d).await;
                RelayEnd::Closed
            }
        }
    }

    /// [`relay`](Self::relay) over any byte stream's halves.
    pub async fn relay_halves<R, W>(self, h: &ClientHandle, r: &mut R, w: &mut W) -> RelayEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        match self {
            Opened::Overlay(s) => s.relay_halves(h, r, w).await,
            Opened::Direct(mut d) => {
                let (mut dr, mut dw) = d.split();
                let up = async {
                    let _ = tokio::io::copy(r, &mut dw).await;
                    let _ = dw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut dr, w).await;
                    let _ = w.shutdown().await;
                };
                tokio::join!(up, down);
                RelayEnd::Closed
            }
        }
    }
}

/// How long one resume attempt waits for the gateway's answer.
const RESUME_ANSWER_DEADLINE: Duration = Duration::from_secs(5);

/// An inner stream the gateway accepted: its halves, its state and its gateway.
pub struct OpenedStream {
    tx: StreamSender,
    rx: StreamReceiver,
    /// Bytes after the gateway's answer that arrived with it.
    dec: MessageDecoder,
    stream: SharedStream,
    gateway: Gateway,
}

/// Opens an inner stream for `target` through a gateway chosen by the client's gateway
/// choice (`crate::gateways`), or through `pinned` only (the app named it), `early_data`
/// riding in the first handshake message.
pub async fn open(
    h: &ClientHandle,
    target: &TargetAddr,
    pinned: Option<&str>,
    early_data: Vec<u8>,
) -> Result<OpenedStream, OpenFailure> {
    open_kind(h, target, pinned, early_data, StreamKind::CONNECT).await
}

/// [`open`] for a stream of any kind: a TCP connection, a UDP association or a DNS
/// stream (the target then only steers the gateway choice).
pub async fn open_kind(
    h: &ClientHandle,
    target: &TargetAddr,
    pinned: Option<&str>,
    early_data: Vec<u8>,
    kind: StreamKind,
) -> Result<OpenedStream, OpenFailure> {
    // Every upstream refused this user: no stream can work, say so at once.
    if let Some(line) = h.refused() {
        return Err(OpenFailure::UserRefused(line));
    }
    // While a new session is being opened, wait for it (a bounded time).
    if !h.wait_for_session().await {
        return Err(OpenFailure::NoSession);
    }
    // A gateway the central cannot reach refuses before anything reaches it, so the next
    // one can be tried with the same request.
    // Early data past the open's fixed budget goes in the first records.
    let mut early_data = early_data;
    let rest = early_data.split_off(early_data.len().min(inner::MAX_EARLY_DATA));
    let req = OpenRequest {
        kind,
        target: target.clone(),
        early_data,
    };
    let mut tried = Vec::new();
    loop {
        let gateway = h.gateways.pick(target, pinned, &tried).inspect_err(|e| {
            // No destination here: the log must not link a stream's target to anything.
            info!(error = %e, "no gateway for a stream");
        })?;
        match open_via(h, &gateway, &req, &rest).await {
            // Unlinked, or its link died before it answered (as Tor retries a stream whose
            // circuit closed before it was connected). A pinned stream is not moved.
            Err(OpenFailure::Reset(r)) if r == Reason::NO_GATEWAY || r == Reason::GATEWAY_LOST => {
                if pinned.is_some() {
                    info!(gateway = %gateway.id, "the central has no link to the pinned gateway; the stream fails");
                } else {
                    info!(gateway = %gateway.id, "the central has no link to this gateway; trying another");
                }
                h.gateways.mark_down(&gateway.id);
                tried.push(gateway.id);
            }
            other => return other,
        }
    }
}

/// The clock in unix seconds, as the gateway's replay check reads it.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Opens the stream through `gateway`; `rest` is early data past the open's budget, sent
/// as the first records.
async fn open_via(
    h: &ClientHandle,
    gateway: &Gateway,
    req: &OpenRequest,
    rest: &[u8],
) -> Result<OpenedStream, OpenFailure> {
    let target = &req.target;
    let (open, first) = inner::client_open(&mut rand::rng(), &gateway.noise_key, req, unix_now())
        .map_err(OpenFailure::BadAnswer)?;
    let (tx, mut rx) = stream::open(&h.cmd, h.next_stream_id(), &gateway.id)
        .await
        .map_err(|_| OpenFailure::SessionGone)?;
    let opened = async {
        let (dec, keys) = answer(&tx, &mut rx, open, first).await?;
        let stream = SharedStream::new(
            ReliableStream::new(keys, h.resume_buffer),
            h.resend_budget.clone(),
        );
        for chunk in rest.chunks(inner::MAX_RECORD_DATA) {
            let sealed = stream
                .lock()
                .seal(&Record::Data(chunk.to_vec()))
                .map_err(OpenFailure::BadAnswer)?;
            tx.send(sealed)
                .await
                .map_err(|_| OpenFailure::SessionGone)?;
        }
        Ok((dec, stream))
    };
    match opened.await {
        Ok((dec, stream)) => Ok(OpenedStream {
            tx,
            rx,
            dec,
            stream,
            gateway: gateway.clone(),
        }),
        Err(e) => {
            if let OpenFailure::Refused { status, reason } = &e {
                let target = target.logged(h.log_destinations);
                info!(stream = tx.id(), %target, code = status.code(), %reason, "gateway refused the stream");
            }
            tx.reset(e.reason()).await;
            Err(e)
        }
    }
}

/// Waits for the gateway's first message on a carrier (the open's answer or the resume's),
/// at most `deadline`.
async fn first_answer(
    rx: &mut StreamReceiver,
    dec: &mut MessageDecoder,
    deadline: Duration,
) -> Result<Vec<u8>, OpenFailure> {
    tokio::time::timeout(deadline, async {
        loop {
            match dec.next_message() {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(_) => return Err(OpenFailure::NoAnswer),
            }
            match rx.recv().await {
                Some(StreamEvent::Data(d)) => dec.push(&d),
                Some(StreamEvent::Reset(r)) => return Err(OpenFailure::Reset(r)),
                _ => return Err(OpenFailure::NoAnswer),
            }
        }
    })
    .await
    .map_err(|_| OpenFailure::TimedOut(deadline))?
}

/// Sends the first handshake message and waits for the gateway's sealed answer: the
/// stream's keys, and whatever arrived after the answer.
async fn answer(
    tx: &StreamSender,
    rx: &mut StreamReceiver,
    open: inner::ClientOpen,
    first: Vec<u8>,
) -> Result<(MessageDecoder, inner::StreamKeys), OpenFailure> {
    tx.send(first).await.map_err(|_| OpenFailure::SessionGone)?;
    let mut dec = MessageDecoder::default();
    let msg2 = first_answer(rx, &mut dec, OPEN_DEADLINE).await?;
    let (status, reason, keys) = open.finish(&msg2).map_err(OpenFailure::BadAnswer)?;
    if !status.is_ok() {
        return Err(OpenFailure::Refused { status, reason });
    }
    Ok((dec, keys))
}

/// One carrier of a stream: its halves and what arrived after the gateway's answer.
type Carrier = (StreamSender, StreamReceiver, MessageDecoder);

/// Moves `stream` to a new carrier through whatever session is open (waiting for one),
/// retrying until `h.resume_grace` has passed or the gateway says it no longer holds it.
/// While the central says it has no link to the gateway, it retries at most the shorter of
/// `session_wait` and the grace: a gateway that is alive links to every central within its
/// redial backoff, and a stream on a dead one must not hang.
async fn resume(
    h: &ClientHandle,
    gateway: &Gateway,
    stream: &SharedStream,
) -> Result<Carrier, OpenFailure> {
    let deadline = Instant::now() + h.resume_grace;
    let mut unlinked_since = None;
    let mut pause = Duration::from_millis(20);
    loop {
        let e = match resume_once(h, gateway, stream).await {
            Ok(c) => {
                Metrics::inc(&h.metrics.streams_resumed);
                return Ok(c);
            }
            Err(e) => e,
        };
        let refused = matches!(
            e,
            OpenFailure::BadAnswer(InnerError::ResumeRefused | InnerError::ResumeAuth)
        );
        let unlinked = matches!(e, OpenFailure::Reset(r) if r == Reason::NO_GATEWAY || r == Reason::GATEWAY_LOST)
            && unlinked_since.get_or_insert_with(Instant::now).elapsed()
                >= h.session_wait().min(h.resume_grace);
        if refused || unlinked || Instant::now() + pause >= deadline {
            return Err(e);
        }
        debug!(gateway = %gateway.id, error = %e, "resume attempt failed; trying again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

async fn resume_once(
    h: &ClientHandle,
    gateway: &Gateway,
    stream: &SharedStream,
) -> Result<Carrier, OpenFailure> {
    if !h.wait_for_session().await {
        return Err(OpenFailure::NoSession);
    }
    let (tx, mut rx) = stream::open(&h.cmd, h.next_stream_id(), &gateway.id)
        .await
        .map_err(|_| OpenFailure::SessionGone)?;
    let attempt = async {
        let req = stream.lock().resume_request();
        tx.send(req).await.map_err(|_| OpenFailure::SessionGone)?;
        let mut dec = MessageDecoder::default();
        let msg = first_answer(&mut rx, &mut dec, RESUME_ANSWER_DEADLINE).await?;
        stream
            .lock()
            .finish_resume(&msg)
            .map_err(OpenFailure::BadAnswer)?;
        for r in stream.resend() {
            tx.send(r).await.map_err(|_| OpenFailure::SessionGone)?;
        }
        Ok::<_, OpenFailure>(dec)
    };
    match attempt.await {
        Ok(dec) => Ok((tx, rx, dec)),
        Err(e) => {
            tx.reset(e.reason()).await;
            Err(e)
        }
    }
}

/// How an app connection's stream ended, and so how the connection must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Finished, or the app itself failed: close it as usual.
    Closed,
    /// The stream was cut (the gateway failed it, or it could not resume): the connection
    /// has been set to reset on drop, so the app cannot take a cut stream for a finished
    /// one. Drop it without a FIN.
    Reset,
}

impl OpenedStream {
    /// Relays `tcp` over the stream until both directions are done, then leaves the stream
    /// cleanly, or resets it if the gateway's side failed. When the carrier dies, resumes
    /// the stream on a new one (see [`resume`]).
    pub async fn relay(self, h: &ClientHandle, tcp: &mut TcpStream) -> RelayEnd {
        let (mut tcp_r, mut tcp_w) = tcp.split();
        let end = self.relay_halves(h, &mut tcp_r, &mut tcp_w).await;
        if end == RelayEnd::Reset {
            // No FIN: the app must not take a cut stream for a finished one.
            let _ = tcp.set_zero_linger();
        }
        end
    }

    /// [`relay`](Self::relay) over any byte stream's halves (the HTTP proxy's forwarding
    /// side uses an in-memory pipe). On [`RelayEnd::Reset`] the caller cuts its side.
    pub async fn relay_halves<R, W>(
        self,
        h: &ClientHandle,
        tcp_r: &mut R,
        tcp_w: &mut W,
    ) -> RelayEnd
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let OpenedStream {
            mut tx,
            mut rx,
            mut dec,
            stream,
            gateway,
        } = self;
        let stop = CancellationToken::new();
        loop {
            let end = pump::run_leg(
                tcp_r,
                tcp_w,
                &stream,
                &mut tx,
                &mut rx,
                &mut dec,
                &stop,
                |_| {},
                |_| {},
            )
            .await;
            match end {
                LegEnd::Done => {
                    tx.forget().await;
                    return RelayEnd::Closed;
                }
                LegEnd::Aborted => {
                    tx.reset(Reason::GENERAL_FAILURE).await;
                    return RelayEnd::Reset;
                }
                LegEnd::AppFailed => {
                    // Tell the gateway, so it closes the target now rather than after its
                    // grace period; the carrier may be gone, so not for long.
                    if let Some(e) = stream.seal_error(Reason::APP_CLOSED) {
                        let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(e)).await;
                    }
                    tx.reset(Reason::APP_CLOSED).await;
                    return RelayEnd::Closed;
                }
                LegEnd::CarrierLost => {
                    let old = tx.id();
                    tx.reset(Reason::SESSION_CLOSED).await;
                    match resume(h, &gateway, &stream).await {
                        Ok(c) => {
                            info!(stream = old, now = c.0.id(), gateway = %gateway.id, "stream resumed on a new carrier");
                            (tx, rx, dec) = c;
                        }
                        Err(e) => {
                            info!(stream = old, gateway = %gateway.id, error = %e, "stream lost with its carrier");
                            return RelayEnd::Reset;
                        }
                    }
                }
            }
        }
    }
}
