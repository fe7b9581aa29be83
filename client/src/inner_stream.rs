//! An app connection's journey through the overlay, whatever front end accepted it: open an
//! inner stream to the gateway (Noise NK, the open request and early data in message 1),
//! wait for the gateway's sealed answer, then relay sealed records both ways with the
//! driver's pump.

use std::time::Duration;

use braid_driver::pump::{self, Inbound};
use braid_driver::session_task::StreamEvent;
use braid_driver::stream::{self, StreamReceiver, StreamSender};
use braid_proto::inner::{self, MessageDecoder, OpenRequest, RecordOpener, RecordSealer};
use braid_proto::{Reason, TargetAddr};
use tokio::net::TcpStream;
use tracing::info;

use crate::gateways::Gateway;
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
        }
    }
}

/// An inner stream the gateway accepted: its halves and its record keys.
pub struct OpenedStream {
    tx: StreamSender,
    rx: StreamReceiver,
    /// Bytes after the gateway's answer that arrived with it.
    dec: MessageDecoder,
    sealer: RecordSealer,
    opener: RecordOpener,
}

/// Opens an inner stream to the client's gateway for `target`, `early_data` riding in the
/// first handshake message.
pub async fn open(
    h: &ClientHandle,
    target: &TargetAddr,
    early_data: Vec<u8>,
) -> Result<OpenedStream, OpenFailure> {
    // While a new session is being opened, wait for it (a bounded time).
    if !h.wait_for_session().await {
        return Err(OpenFailure::NoSession);
    }
    // A gateway the central cannot reach refuses before anything reaches it, so the next
    // one can be tried with the same request.
    let req = OpenRequest {
        target: target.clone(),
        early_data,
    };
    let mut tried = Vec::new();
    loop {
        let Some(gateway) = h.gateways.pick(&tried) else {
            return Err(OpenFailure::Reset(Reason::NO_GATEWAY));
        };
        match open_via(h, &gateway, &req).await {
            Err(OpenFailure::Reset(r)) if r == Reason::NO_GATEWAY => {
                info!(gateway = %gateway.id, "the central has no link to this gateway; trying another");
                h.gateways.mark_down(&gateway.id);
                tried.push(gateway.id);
            }
            other => return other,
        }
    }
}

/// Opens the stream through `gateway`.
async fn open_via(
    h: &ClientHandle,
    gateway: &Gateway,
    req: &OpenRequest,
) -> Result<OpenedStream, OpenFailure> {
    let target = &req.target;
    let (open, first) = inner::client_open(&mut rand::rng(), &gateway.noise_key, req)
        .map_err(OpenFailure::BadAnswer)?;
    let (tx, mut rx) = stream::open(&h.cmd, h.next_stream_id(), &gateway.id)
        .await
        .map_err(|_| OpenFailure::SessionGone)?;
    match answer(&tx, &mut rx, open, first).await {
        Ok((dec, sealer, opener)) => Ok(OpenedStream {
            tx,
            rx,
            dec,
            sealer,
            opener,
        }),
        Err(e) => {
            if let OpenFailure::Refused { status, reason } = &e {
                info!(stream = tx.id(), %target, code = status.code(), %reason, "gateway refused the stream");
            }
            tx.reset(e.reason()).await;
            Err(e)
        }
    }
}

/// Sends the first handshake message and waits for the gateway's sealed answer: the
/// stream's record keys, and whatever arrived after the answer.
async fn answer(
    tx: &StreamSender,
    rx: &mut StreamReceiver,
    open: inner::ClientOpen,
    first: Vec<u8>,
) -> Result<(MessageDecoder, RecordSealer, RecordOpener), OpenFailure> {
    tx.send(first).await.map_err(|_| OpenFailure::SessionGone)?;
    let mut dec = MessageDecoder::default();
    let msg2 = tokio::time::timeout(OPEN_DEADLINE, async {
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
    .map_err(|_| OpenFailure::TimedOut(OPEN_DEADLINE))??;
    let (status, reason, sealer, opener) = open.finish(&msg2).map_err(OpenFailure::BadAnswer)?;
    if !status.is_ok() {
        return Err(OpenFailure::Refused { status, reason });
    }
    Ok((dec, sealer, opener))
}

impl OpenedStream {
    /// Relays `tcp` over the stream until both directions are done, then leaves the stream
    /// cleanly, or resets it if the gateway's side did not end with its sealed close.
    pub async fn relay(self, tcp: &mut TcpStream) {
        let OpenedStream {
            mut tx,
            mut rx,
            mut dec,
            mut sealer,
            mut opener,
        } = self;
        let leave = tx.clone();
        let (mut tcp_r, mut tcp_w) = tcp.split();
        let up = pump::app_to_overlay(&mut tcp_r, &mut sealer, &mut tx, |_| {});
        let down = pump::overlay_to_app(&mut rx, &mut dec, &mut opener, &mut tcp_w, |_| {});
        let (_, inbound) = tokio::join!(up, down);
        match inbound {
            Inbound::Finished => leave.forget().await,
            Inbound::Aborted => leave.reset(Reason::GENERAL_FAILURE).await,
            Inbound::AppFailed => leave.reset(Reason::APP_CLOSED).await,
        }
    }
}
