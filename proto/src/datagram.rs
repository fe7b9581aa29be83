//! Datagrams on a byte stream: how a UDP association's datagrams ride an inner stream,
//! whose pump (and resume) know only bytes.
//!
//! Each datagram is one frame, `target | len u16 | payload`, where `target` is the SOCKS5
//! address layout of [`TargetAddr`] (the destination, from the client; the source, from
//! the gateway). [`DatagramDecoder`] takes the stream's bytes in any split and gives whole
//! datagrams. It holds at most one frame and the bytes pushed past it.

use crate::target::TargetAddr;
use crate::wire::{Reader, WireError, Writer};

/// Largest payload a frame carries: the largest UDP payload over IPv4.
pub const MAX_PAYLOAD: usize = 65_507;
/// Longest address part: `atyp | len | 255-byte name | port`.
const MAX_TARGET: usize = 1 + 1 + 255 + 2;

/// One frame: `target | len u16 | payload`.
pub fn encode(target: &TargetAddr, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLong);
    }
    let mut buf = vec![0u8; MAX_TARGET + 2 + payload.len()];
    let mut w = Writer::new(&mut buf);
    target.write_onto(&mut w)?;
    w.u16(payload.len() as u16)?;
    w.bytes(payload)?;
    let n = w.position();
    buf.truncate(n);
    Ok(buf)
}

/// Whole frames out of a byte stream.
#[derive(Debug, Default)]
pub struct DatagramDecoder {
    buf: Vec<u8>,
}

impl DatagramDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole datagram, `None` until one has arrived. An error (a bad address
    /// type, an empty or non-UTF-8 name, a payload over [`MAX_PAYLOAD`]) leaves the stream
    /// unreadable: the caller ends it.
    pub fn next_datagram(&mut self) -> Result<Option<(TargetAddr, Vec<u8>)>, WireError> {
        let mut r = Reader::new(&self.buf);
        let parsed = TargetAddr::take_from(&mut r).and_then(|t| {
            let n = usize::from(r.u16()?);
            if n > MAX_PAYLOAD {
                return Err(WireError::TooLong);
            }
            Ok((t, r.bytes(n)?.to_vec()))
        });
        match parsed {
            Ok(d) => {
                let used = r.position();
                self.buf.drain(..used);
                Ok(Some(d))
            }
            Err(WireError::Truncated) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Bytes held (at most one frame and what was pushed past it).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip_in_any_split() {
        let a = TargetAddr::Ip("10.1.2.3:53".parse().unwrap());
        let b = TargetAddr::Domain("example.com".into(), 443);
        let c = TargetAddr::Ip("[2001:db8::1]:9".parse().unwrap());
        let mut bytes = encode(&a, b"query").unwrap();
        bytes.extend(encode(&b, &[7u8; 1200]).unwrap());
        bytes.extend(encode(&c, b"").unwrap());
        for split in 0..bytes.len() {
            let mut d = DatagramDecoder::default();
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                d.push(part);
                while let Some(x) = d.next_datagram().unwrap() {
                    got.push(x);
                }
            }
            assert_eq!(got.len(), 3, "split {split}");
            assert_eq!(got[0], (a.clone(), b"query".to_vec()));
            assert_eq!(got[1].1.len(), 1200);
            assert_eq!(got[2], (c.clone(), Vec::new()));
            assert_eq!(d.buffered(), 0);
        }
        assert_eq!(
            encode(&a, &vec![0; MAX_PAYLOAD + 1]),
            Err(WireError::TooLong)
        );
        let mut d = DatagramDecoder::default();
        d.push(&[9, 0, 0]);
        assert!(d.next_datagram().is_err(), "unknown address type");
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut d = DatagramDecoder::default();
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_datagram() {}
        }
    }
}
