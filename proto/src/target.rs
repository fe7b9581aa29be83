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

/// Redacted: `[redacted]:443`. Logs and `Debug` go through this, so a `%target` or
/// `?request` in a log line never names a destination; [`TargetAddr::reveal`] is the
/// explicit way to show it (the tap, or a node told to `log_destinations`). The port stays:
/// it tells an operator what kind of service failed without saying which host.
impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[redacted]:{}", self.port())
    }
}

impl fmt::Debug for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl TargetAddr {
    /// The destination in full (`host:port`, IPv6 in brackets).
    pub fn reveal(&self) -> Revealed<'_> {
        Revealed(self)
    }

    /// For a log line: in full when `show` (the operator opted in), else redacted.
    pub fn logged(&self, show: bool) -> Logged<'_> {
        Logged(self, show)
    }
}

/// [`TargetAddr::reveal`]: the destination in full.
pub struct Revealed<'a>(&'a TargetAddr);

impl fmt::Display for Revealed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TargetAddr::Ip(a) => write!(f, "{a}"),
            TargetAddr::Domain(d, p) => write!(f, "{d}:{p}"),
        }
    }
}

/// [`TargetAddr::logged`]: full or redacted.
pub struct Logged<'a>(&'a TargetAddr, bool);

impl fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.1 {
            self.0.reveal().fmt(f)
        } else {
            self.0.fmt(f)
        }
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

    #[test]
    fn debug_and_display_redact_unless_revealed() {
        let name = TargetAddr::Domain("secret-host.example".into(), 443);
        let ip = TargetAddr::Ip("[2001:db8::7]:8080".parse().unwrap());
        let req = Some(name.clone());
        for shown in [
            format!("{name}"),
            format!("{name:?}"),
            format!("{req:?}"),
            format!("{ip} {ip:?}"),
            name.logged(false).to_string(),
        ] {
            assert!(
                !shown.contains("secret-host") && !shown.contains("2001:db8"),
                "{shown}"
            );
            assert!(shown.contains("[redacted]:"), "{shown}");
        }
        assert_eq!(name.to_string(), "[redacted]:443");
        assert_eq!(name.reveal().to_string(), "secret-host.example:443");
        assert_eq!(ip.reveal().to_string(), "[2001:db8::7]:8080");
        assert_eq!(name.logged(true).to_string(), "secret-host.example:443");
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
