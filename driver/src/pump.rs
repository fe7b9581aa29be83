//! The one sealed-record pump: moves bytes between an application's byte stream (a TCP
//! socket at the client's front ends and at the gateway's exit) and an inner stream's
//! sealed records (`braid_proto::inner`), whatever carries those records: the outer session
//! (client side, [`StreamSender`] / [`StreamReceiver`]) or a QUIC stream (gateway side).

use std::future::Future;
use std::io;

use braid_proto::inner::{self, MessageDecoder, Record, RecordOpener, RecordSealer};
use braid_proto::Reason;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::session_task::StreamEvent;
use crate::stream::{StreamReceiver, StreamSender};

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

/// How the application → overlay direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// The application closed its side; the sealed half-close went out.
    Finished,
    /// Reading the application failed; a sealed error record went out.
    AppFailed,
    /// The carrier refused a record (or sealing failed): the stream is gone.
    CarrierFailed,
}

/// How the overlay → application direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// The peer's sealed half-close (or close) arrived; the application's write side is
    /// shut down.
    Finished,
    /// An error record, a record that failed to open, or a carrier that ended without the
    /// sealed close (which is treated as an abort, so nobody between can truncate).
    Aborted,
    /// Writing to the application failed.
    AppFailed,
}

/// Reads the application and sends each read as one sealed data record; its end as a
/// half-close (then `finish`), a read error as an error record. `seen` is shown each
/// plaintext chunk read (counters, the test tap).
pub async fn app_to_overlay<R, S>(
    app: &mut R,
    sealer: &mut RecordSealer,
    sink: &mut S,
    mut seen: impl FnMut(&[u8]),
) -> Outbound
where
    R: AsyncRead + Unpin,
    S: SealedSink,
{
    let mut buf = vec![0u8; inner::MAX_RECORD_DATA];
    let mut out = Vec::with_capacity(inner::MAX_RECORD_DATA + 64);
    loop {
        let rec = match app.read(&mut buf).await {
            Ok(0) => Record::HalfClose,
            Ok(n) => {
                let data = buf.get(..n).unwrap_or_default();
                seen(data);
                Record::Data(data.to_vec())
            }
            Err(_) => Record::Error(Reason::GENERAL_FAILURE.code()),
        };
        let last = !matches!(rec, Record::Data(_));
        out.clear();
        if sealer.seal(&rec, &mut out).is_err() || sink.write_sealed(&mut out).await.is_err() {
            return Outbound::CarrierFailed;
        }
        if last {
            if sink.finish().await.is_err() {
                return Outbound::CarrierFailed;
            }
            return match rec {
                Record::HalfClose => Outbound::Finished,
                _ => Outbound::AppFailed,
            };
        }
    }
}

/// Opens the sealed records from `source` (after whatever `dec` already holds) and writes
/// their data to the application; on the sealed half-close shuts the application's write
/// side. `seen` is shown each plaintext chunk written.
pub async fn overlay_to_app<W, S>(
    source: &mut S,
    dec: &mut MessageDecoder,
    opener: &mut RecordOpener,
    app: &mut W,
    mut seen: impl FnMut(&[u8]),
) -> Inbound
where
    W: AsyncWrite + Unpin,
    S: SealedSource,
{
    loop {
        loop {
            let msg = match dec.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => return Inbound::Aborted,
            };
            match opener.open(&msg) {
                Ok(Record::Data(d)) => {
                    if app.write_all(&d).await.is_err() {
                        return Inbound::AppFailed;
                    }
                    seen(&d);
                }
                Ok(Record::HalfClose) | Ok(Record::Close) => {
                    let _ = app.shutdown().await;
                    return Inbound::Finished;
                }
                Ok(Record::Error(_)) | Err(_) => return Inbound::Aborted,
            }
        }
        if !source.read_into(dec).await {
            return Inbound::Aborted;
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
            // The session ended the stream without the gateway's sealed close: abort.
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
