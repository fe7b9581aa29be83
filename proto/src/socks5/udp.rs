//! The SOCKS5 UDP request header (RFC 1928 §7): `RSV u16 | FRAG u8 | ATYP | DST.ADDR |
//! DST.PORT | DATA`, on every datagram between the application and the proxy's UDP port.

use thiserror::Error;

use crate::target::TargetAddr;
use crate::wire::{Reader, WireError, Writer};

/// Why a datagram from the application was dropped.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UdpHeaderError {
    /// Fragmentation is optional (RFC 1928 §7) and not implemented: dropped and counted.
    #[error("fragmented datagram (FRAG {0})")]
    Fragmented(u8),
    #[error("malformed UDP request header: {0}")]
    Malformed(WireError),
}

/// The destination and payload of a datagram from the application.
pub fn parse_datagram(buf: &[u8]) -> Result<(TargetAddr, &[u8]), UdpHeaderError> {
    let mut r = Reader::new(buf);
    let _rsv = r.u16().map_err(UdpHeaderError::Malformed)?;
    let frag = r.u8().map_err(UdpHeaderError::Malformed)?;
    if frag != 0 {
        return Err(UdpHeaderError::Fragmented(frag));
    }
    let target = TargetAddr::take_from(&mut r).map_err(UdpHeaderError::Malformed)?;
    Ok((target, r.rest()))
}

/// A datagram to the application: the header naming its source, then the payload.
pub fn encode_datagram(source: &TargetAddr, payload: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut buf = vec![0u8; 3 + 1 + 1 + 255 + 2 + payload.len()];
    let mut w = Writer::new(&mut buf);
    w.bytes(&[0, 0, 0])?;
    source.write_onto(&mut w)?;
    w.bytes(payload)?;
    let n = w.position();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_refusals() {
        let t = TargetAddr::Domain("dns.example".into(), 53);
        let d = encode_datagram(&t, b"payload").unwrap();
        assert_eq!(parse_datagram(&d).unwrap(), (t, &b"payload"[..]));
        let mut frag = d.clone();
        frag[2] = 1;
        assert_eq!(parse_datagram(&frag), Err(UdpHeaderError::Fragmented(1)));
        assert!(matches!(
            parse_datagram(&d[..5]),
            Err(UdpHeaderError::Malformed(_))
        ));
        assert!(matches!(
            parse_datagram(&[0, 0, 0, 9]),
            Err(UdpHeaderError::Malformed(_))
        ));
        let v4 = encode_datagram(&TargetAddr::Ip("127.0.0.1:5".parse().unwrap()), b"").unwrap();
        assert_eq!(v4, [0, 0, 0, 1, 127, 0, 0, 1, 0, 5]);
    }
}
