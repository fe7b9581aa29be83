//! The destination of a proxied stream, as a client names it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::wire::{Reader, WireError, Writer};

/// Where a stream should go. Domains stay names until the gateway resolves them, so the
/// laptop never leaks a DNS query.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    Ip(SocketAddr),
    Domain(String, u16),
}

impl TargetAddr {
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(a) => a.port(),
            TargetAddr::Domain(_, p) => *p,
        }
    }

    /// Wire form: `atyp u8 (1 = v4, 3 = domain, 4 = v6) | addr | port u16`, the SOCKS5 layout.
    pub fn write_onto(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            TargetAddr::Ip(SocketAddr::V4(a)) => {
                w.u8(1)?;
                w.bytes(&a.ip().octets())?;
                w.u16(a.port())
            }
            TargetAddr::Ip(SocketAddr::V6(a)) => {
                w.u8(4)?;
                w.bytes(&a.ip().octets())?;
                w.u16(a.port())
            }
            TargetAddr::Domain(d, p) => {
                let len = u8::try_from(d.len()).map_err(|_| WireError::TooLong)?;
                if len == 0 {
                    return Err(WireError::Invalid("empty domain"));
                }
                w.u8(3)?;
                w.u8(len)?;
                w.bytes(d.as_bytes())?;
                w.u16(*p)
            }
        }
    }

    pub fn take_from(r: &mut Reader<'_>) -> Result<Self, WireError> {
        match r.u8()? {
            1 => {
                let o: [u8; 4] = r.array()?;
                Ok(TargetAddr::Ip(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(o)),
                    r.u16()?,
                )))
            }
            4 => {
                let o: [u8; 16] = r.array()?;
                Ok(TargetAddr::Ip(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(o)),
                    r.u16()?,
                )))
            }
            3 => {
                let len = usize::from(r.u8()?);
                if len == 0 {
                    return Err(WireError::Invalid("empty domain"));
                }
                let d = std::str::from_utf8(r.bytes(len)?)
                    .map_err(|_| WireError::Invalid("domain is not UTF-8"))?
                    .to_owned();
                Ok(TargetAddr::Domain(d, r.u16()?))
            }
            _ => Err(WireError::Invalid("unknown address type")),
        }
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            TargetAddr::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}

/// Targets are logged through [`Redacted`] unless a node is told to log destinations.
impl fmt::Debug for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Wraps a value so that logs show only that it was there.
pub struct Redacted<'a, T>(pub &'a T);

impl<T> fmt::Display for Redacted<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_target() -> impl Strategy<Value = TargetAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(o, p)| TargetAddr::Ip(SocketAddr::from((o, p)))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(o, p)| TargetAddr::Ip(SocketAddr::from((o, p)))),
            ("[a-z0-9.-]{1,255}", any::<u16>()).prop_map(|(d, p)| TargetAddr::Domain(d, p)),
        ]
    }

    proptest! {
        #[test]
        fn round_trips(t in arb_target()) {
            let mut buf = [0u8; 300];
            let mut w = Writer::new(&mut buf);
            t.write_onto(&mut w).unwrap();
            let n = w.position();
            let mut r = Reader::new(&buf[..n]);
            prop_assert_eq!(TargetAddr::take_from(&mut r).unwrap(), t);
            prop_assert_eq!(r.remaining(), 0);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = TargetAddr::take_from(&mut Reader::new(&bytes));
        }
    }
}
