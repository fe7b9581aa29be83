//! The stream-owner contract, written once (in the manner of quinn's `SendStream` /
//! `RecvStream`): an owner spends per-stream credit before handing the session bytes, says
//! `End` when its direction is done, and leaves with `Forget` (clean) or `Reset`.
//!
//! The client's front ends own the streams they open; the central owns the streams its
//! clients open (and bridges each to a gateway).

use std::sync::Arc;

use braid_proto::frame::StreamId;
use braid_proto::Reason;
use tokio::sync::{mpsc, Semaphore};

use crate::session_task::{SessionCmd, StreamEvent};

/// Events a stream owner can fall behind on before the session parks them for it.
pub const STREAM_EVENT_QUEUE: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    /// The session task has ended (its command channel is closed).
    #[error("the session has ended")]
    SessionGone,
    /// The stream was reset: no more credit will come.
    #[error("the stream was reset")]
    Reset,
    /// One write larger than a credit semaphore can count.
    #[error("a write of {0} bytes is larger than a stream window")]
    TooLarge(usize),
}

/// The sending half: credit, `Data`, `End`, and the ways to leave.
#[derive(Debug, Clone)]
pub struct StreamSender {
    id: StreamId,
    cmd: mpsc::Sender<SessionCmd>,
    /// The stream's send budget in bytes; the session adds the peer's window and credit.
    credit: Arc<Semaphore>,
}

/// The receiving half: what the session delivers for this stream, in order.
#[derive(Debug)]
pub struct StreamReceiver {
    events: mpsc::Receiver<StreamEvent>,
}

impl StreamSender {
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Whether `n` bytes of credit are there now (a send of them would not wait).
    pub fn has_credit(&self, n: usize) -> bool {
        self.credit.available_permits() >= n
    }

    /// Waits for `bytes.len()` of the stream's credit, spends it, and hands the bytes over.
    pub async fn send(&self, bytes: Vec<u8>) -> Result<(), StreamError> {
        let n = u32::try_from(bytes.len()).map_err(|_| StreamError::TooLarge(bytes.len()))?;
        // A reset closes the semaphore, so this never outlives the stream.
        self.credit
            .acquire_many(n)
            .await
            .map_err(|_| StreamError::Reset)?
            .forget();
        self.cmd
            .send(SessionCmd::Data {
                stream: self.id,
                bytes,
            })
            .await
            .map_err(|_| StreamError::SessionGone)
    }

    /// This side sends no more bytes (the peer still may).
    pub async fn end(&self) -> Result<(), StreamError> {
        self.cmd
            .send(SessionCmd::End { stream: self.id })
            .await
            .map_err(|_| StreamError::SessionGone)
    }

    /// Aborts the stream for `reason`; the peer is told.
    pub async fn reset(&self, reason: Reason) {
        let _ = self
            .cmd
            .send(SessionCmd::Reset {
                stream: self.id,
                reason,
            })
            .await;
    }

    /// The owner is done with a stream that ended cleanly: the session forgets it.
    pub async fn forget(&self) {
        let _ = self.cmd.send(SessionCmd::Forget { stream: self.id }).await;
    }
}

impl StreamReceiver {
    /// The next event, or `None` once the session has dropped the stream.
    pub async fn recv(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }
}

/// Opens stream `id` to `gateway` through the session behind `cmd` (client side). The
/// session fills the send budget with the peer's stream window.
pub async fn open(
    cmd: &mpsc::Sender<SessionCmd>,
    id: StreamId,
    gateway: &str,
) -> Result<(StreamSender, StreamReceiver), StreamError> {
    let (events_tx, events) = mpsc::channel(STREAM_EVENT_QUEUE);
    let credit = Arc::new(Semaphore::new(0));
    cmd.send(SessionCmd::Open {
        stream: id,
        gateway: gateway.to_string(),
        events: events_tx,
        credit: credit.clone(),
    })
    .await
    .map_err(|_| StreamError::SessionGone)?;
    Ok((
        StreamSender {
            id,
            cmd: cmd.clone(),
            credit,
        },
        StreamReceiver { events },
    ))
}

/// A stream the peer opened (central side): what the session's opener hook is given,
/// turned into the two halves, and the event sender the session keeps.
pub fn accepted(
    id: StreamId,
    cmd: mpsc::Sender<SessionCmd>,
    credit: Arc<Semaphore>,
) -> (StreamSender, StreamReceiver, mpsc::Sender<StreamEvent>) {
    let (events_tx, events) = mpsc::channel(STREAM_EVENT_QUEUE);
    (
        StreamSender { id, cmd, credit },
        StreamReceiver { events },
        events_tx,
    )
}
