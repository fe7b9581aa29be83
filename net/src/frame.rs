//! Length-prefixed frames on QUIC streams: a big-endian `u32` length, then the bytes.
//!
//! The reader checks the announced length against the caller's limit before allocating
//! anything, so a peer cannot make us buffer more than `max_len` per frame.

use quinn::{ReadExactError, RecvStream, SendStream};

use crate::NetError;

/// Writes one frame. Fails with [`NetError::FrameTooLarge`] if `payload` does not fit
/// a `u32` length.
pub async fn write_frame(send: &mut SendStream, payload: &[u8]) -> Result<(), NetError> {
    let len = u32::try_from(payload.len()).map_err(|_| NetError::FrameTooLarge {
        len: payload.len() as u64,
        max: u64::from(u32::MAX),
    })?;
    send.write_all(&len.to_be_bytes()).await?;
    send.write_all(payload).await?;
    Ok(())
}

/// Reads one frame into `buf` (replacing its contents).
///
/// Returns `Ok(false)` when the stream ended cleanly between frames, `Ok(true)` when a
/// frame was read. A length above `max_len` is refused with
/// [`NetError::FrameTooLarge`] before `buf` grows; an end of stream inside a frame
/// (length prefix included) is [`NetError::Truncated`].
pub async fn read_frame(
    recv: &mut RecvStream,
    max_len: usize,
    buf: &mut Vec<u8>,
) -> Result<bool, NetError> {
    let mut header = [0u8; 4];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(false),
        Err(ReadExactError::FinishedEarly(_)) => return Err(NetError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(header);
    if u64::from(len) > max_len as u64 {
        return Err(NetError::FrameTooLarge {
            len: u64::from(len),
            max: max_len as u64,
        });
    }
    // `len <= max_len`, a usize, so this conversion is exact.
    let len = len as usize;
    buf.clear();
    buf.resize(len, 0);
    match recv.read_exact(buf).await {
        Ok(()) => Ok(true),
        Err(ReadExactError::FinishedEarly(_)) => Err(NetError::Truncated),
        Err(ReadExactError::ReadError(e)) => Err(e.into()),
    }
}
