//! The gateway's exit policy: which destinations a stream may reach.
//!
//! A destination is the host name the client asked for (if it asked by name), the port,
//! and every address that name resolved to. Each address is decided in this order:
//!
//! 1. **Overlay nodes and the gateway itself.** An address of any node in the directory,
//!    the gateway's bind address, or an address of one of the gateway host's interfaces
//!    (it usually binds 0.0.0.0 and has no address in the directory), in any form (plain,
//!    IPv4-mapped, NAT64), is refused. Nothing opens it: not `allow_loopback` (the
//!    one-host demo's nodes are on loopback), not a rule.
//! 2. **Rules**, in order; the first that matches decides. A rule matches when all of its
//!    matchers match: `domain` (the requested name is the domain or a subdomain of it, on
//!    label boundaries), `cidr` (the address, or the IPv4 address inside its mapped or
//!    NAT64 form), `ports`. A `deny` refuses. An `allow` skips the remaining rules and,
//!    **only if it has a `cidr`**, also opens the built-in classes for the addresses that
//!    CIDR covers.
//! 3. **Built-in classes** ([`AddrClass`]): loopback (opened by `allow_loopback`);
//!    private, link-local, CGNAT, ULA, site-local (opened by `allow_private`); cloud
//!    metadata, unspecified, "this network", multicast, broadcast, reserved and the
//!    deprecated IPv4-compatible form (opened by nothing but an allow rule's `cidr`).
//!    IPv4-mapped, NAT64 and 6to4 addresses are classified by the IPv4 address they
//!    embed.
//! 4. **Mail ports** 25, 465 and 587 are refused (as in Tor's default exit policy: an
//!    exit must not become an open spam relay) unless the allow rule that matched names
//!    `ports` covering the port: an allow without `ports` does not open them.
//!
//! Refusal reasons ([`Refusal`]'s `Display`) go back to the client and into the gateway's
//! log, so they name a class, a rule number or a port, never an address the gateway
//! resolved (which could map the exit's internal network).
//! Why a domain `allow` cannot open an internal address: whoever controls a name's DNS
//! controls where it points, so an allow by name that also bypassed the classes would let
//! any such name be pointed at 127.0.0.1 or 169.254.169.254 (DNS rebinding). Domain rules
//! can therefore deny anything but can only allow what is already allowed by address;
//! reaching an internal range takes an explicit `allow` with a `cidr` (optionally
//! narrowed by `domain` and `ports` as well). Config validation refuses an allow of
//! `0.0.0.0/0` or `::/0`.
//!
//! A stream is refused if **any** resolved address is refused; the gateway then connects
//! only to addresses that passed ([`Checked`] can only be made here).

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use braid_config::Directory;
pub use braid_config::{Cidr, ExitAction, ExitRule, PortRange};

#[derive(Debug, Clone, Default)]
pub struct ExitPolicy {
    /// Open the loopback class (127.0.0.0/8, ::1). For one-host demos and tests.
    pub allow_loopback: bool,
    /// Open the private, link-local, CGNAT, ULA and site-local classes (not metadata).
    pub allow_private: bool,
    /// Ordered rules; the first that matches decides.
    pub rules: Vec<ExitRule>,
    /// Addresses of overlay nodes, always refused. The gateway adds its directory's.
    pub node_addrs: BTreeSet<IpAddr>,
    /// The gateway host's own interface addresses, always refused (the gateway fills
    /// them in from [`interface_addrs`] at start and refreshes them).
    pub local_addrs: BTreeSet<IpAddr>,
}

/// Ports refused by default whatever the address: SMTP relay, SMTPS and mail submission.
pub const MAIL_PORTS: [u16; 3] = [25, 465, 587];

/// A built-in class of addresses the default policy refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 100.64/10 (CGNAT shared address space).
    SharedCgnat,
    /// fc00::/7.
    UniqueLocal,
    /// fec0::/10 (deprecated, still routed by some stacks).
    SiteLocal,
    /// 64:ff9b:1::/48 (local-use NAT64, RFC 8215).
    LocalNat64,
    /// 169.254.169.254, fd00:ec2::254, 168.63.129.16 (Azure's host endpoint).
    CloudMetadata,
    /// 192.0.0.0/24 (IETF protocol assignments: DS-Lite, NAT64 discovery, ...).
    ProtocolAssignments,
    /// 198.18.0.0/15 (benchmarking; often used for internal test networks).
    Benchmarking,
    /// 192.88.99.0/24 (the deprecated 6to4 relay anycast).
    SixToFourRelay,
    /// 0.0.0.0, :: (a connect to it reaches the local host).
    Unspecified,
    /// 0.0.0.0/8.
    ThisNetwork,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240/4.
    Reserved,
    /// ::a.b.c.d (deprecated IPv4-compatible).
    Ipv4Compatible,
}

/// Which switch opens a class, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opener {
    AllowLoopback,
    AllowPrivate,
    CidrRuleOnly,
}

impl AddrClass {
    pub fn describe(self) -> &'static str {
        match self {
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private (RFC 1918)",
            AddrClass::LinkLocal => "link-local",
            AddrClass::SharedCgnat => "CGNAT shared space (100.64.0.0/10)",
            AddrClass::UniqueLocal => "IPv6 unique local (fc00::/7)",
            AddrClass::SiteLocal => "IPv6 site-local (fec0::/10)",
            AddrClass::LocalNat64 => "local-use NAT64 (64:ff9b:1::/48)",
            AddrClass::CloudMetadata => "cloud metadata",
            AddrClass::ProtocolAssignments => "IETF protocol assignments (192.0.0.0/24)",
            AddrClass::Benchmarking => "benchmarking (198.18.0.0/15)",
            AddrClass::SixToFourRelay => "6to4 relay anycast (192.88.99.0/24)",
            AddrClass::Unspecified => "unspecified",
            AddrClass::ThisNetwork => "\"this network\" (0.0.0.0/8)",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Reserved => "reserved (240.0.0.0/4)",
            AddrClass::Ipv4Compatible => "IPv4-compatible IPv6 (deprecated)",
        }
    }

    fn opener(self) -> Opener {
        match self {
            AddrClass::Loopback => Opener::AllowLoopback,
            AddrClass::Private
            | AddrClass::LinkLocal
            | AddrClass::SharedCgnat
            | AddrClass::UniqueLocal
            | AddrClass::SiteLocal
            | AddrClass::LocalNat64 => Opener::AllowPrivate,
            AddrClass::CloudMetadata
            | AddrClass::ProtocolAssignments
            | AddrClass::Benchmarking
            | AddrClass::SixToFourRelay
            | AddrClass::Unspecified
            | AddrClass::ThisNetwork
            | AddrClass::Multicast
            | AddrClass::Broadcast
            | AddrClass::Reserved
            | AddrClass::Ipv4Compatible => Opener::CidrRuleOnly,
        }
    }
}

/// Why a destination was refused; its `Display` is the reason sent to the client (and
/// logged), and names no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The address is in a built-in refused class.
    Class { addr: IpAddr, class: AddrClass },
    /// The address belongs to a node of this overlay.
    OverlayNode { addr: IpAddr },
    /// The address is one of the gateway host's own.
    OwnAddress { addr: IpAddr },
    /// A mail port ([`MAIL_PORTS`]) that no allow rule's `ports` opened.
    MailPort { port: u16 },
    /// A deny rule matched (`index` counts from 0 in `exit.rules`). `addr` is `None`
    /// when the rule refused the name before any lookup.
    Rule {
        addr: Option<IpAddr>,
        index: usize,
        rule: ExitRule,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No address, resolved or requested, and no rule text (a CIDR in it would map the
        // exit's network): the class, the rule's number or the port is enough to act on.
        match self {
            Refusal::Class { class, .. } => {
                write!(
                    f,
                    "exit policy: destination is {} and refused",
                    class.describe()
                )
            }
            Refusal::OverlayNode { .. } => {
                f.write_str("exit policy: destination is an overlay node and refused")
            }
            Refusal::OwnAddress { .. } => {
                f.write_str("exit policy: destination is the gateway's own address and refused")
            }
            Refusal::MailPort { port } => {
                write!(f, "exit policy: mail port {port} is refused by default")
            }
            Refusal::Rule { index, .. } => write!(f, "exit policy: refused by rule {index}"),
        }
    }
}

impl std::error::Error for Refusal {}

/// An address that passed the policy. Only [`ExitPolicy::check`] makes one, so a
/// connection that takes a `Checked` goes to exactly the address that was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked(SocketAddr);

impl Checked {
    pub fn addr(&self) -> SocketAddr {
        self.0
    }
}

/// The IPv4 address an IPv6 address stands for on the wire to the same host: the
/// IPv4-mapped `::ffff:a.b.c.d` and the NAT64 well-known prefix `64:ff9b::a.b.c.d`.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(low_v4(ip));
    }
    None
}

fn low_v4(ip: Ipv6Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[12], o[13], o[14], o[15])
}

fn v4_class(ip: Ipv4Addr) -> Option<AddrClass> {
    let o = ip.octets();
    Some(if ip.is_loopback() {
        AddrClass::Loopback
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(168, 63, 129, 16) {
        AddrClass::CloudMetadata
    } else if o[..3] == [192, 0, 0] {
        AddrClass::ProtocolAssignments
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        AddrClass::Benchmarking
    } else if o[..3] == [192, 88, 99] {
        AddrClass::SixToFourRelay
    } else if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if o[0] == 0 {
        AddrClass::ThisNetwork
    } else if ip.is_private() {
        AddrClass::Private
    } else if ip.is_link_local() {
        AddrClass::LinkLocal
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        AddrClass::SharedCgnat
    } else if ip.is_multicast() {
        AddrClass::Multicast
    } else if ip.is_broadcast() {
        AddrClass::Broadcast
    } else if o[0] >= 240 {
        AddrClass::Reserved
    } else {
        return None;
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<AddrClass> {
    if let Some(v4) = embedded_v4(ip) {
        return v4_class(v4);
    }
    let s = ip.segments();
    // 6to4 2002:a.b.c.d::/48 embeds an IPv4 address in bits 16..48.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        if let Some(c) = v4_class(v4) {
            return Some(c);
        }
    }
    Some(if ip.is_loopback() {
        AddrClass::Loopback
    } else if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        AddrClass::CloudMetadata
    } else if ip.is_multicast() {
        AddrClass::Multicast
    } else if (s[0] & 0xfe00) == 0xfc00 {
        AddrClass::UniqueLocal
    } else if (s[0] & 0xffc0) == 0xfe80 {
        AddrClass::LinkLocal
    } else if (s[0] & 0xffc0) == 0xfec0 {
        AddrClass::SiteLocal
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        AddrClass::LocalNat64
    } else if s[0..6] == [0; 6] {
        // ::a.b.c.d (the loopback and unspecified addresses were handled above).
        AddrClass::Ipv4Compatible
    } else {
        return None;
    })
}

/// The built-in class of `ip`, if the default policy refuses it.
pub fn classify(ip: IpAddr) -> Option<AddrClass> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// `name` is `domain` or a subdomain of it (one definition, shared with the client's
/// routing rules).
pub use braid_config::domain_covers;

/// The IP addresses of every node in `directory`, for [`ExitPolicy::node_addrs`].
pub fn node_addrs(directory: &Directory) -> BTreeSet<IpAddr> {
    directory
        .nodes
        .iter()
        .filter_map(|n| n.addr)
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified())
        .collect()
}

/// The addresses of this host's interfaces, for [`ExitPolicy::local_addrs`]: everything
/// but loopback (which `allow_loopback` governs, and which the one-host demo's targets
/// use) and the unspecified address.
pub fn interface_addrs() -> std::io::Result<BTreeSet<IpAddr>> {
    Ok(if_addrs::get_if_addrs()?
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect())
}

/// `ip` is in `set`, in any form: plain, or the IPv4 address inside an IPv4-mapped or
/// NAT64 address, or an IPv4 address listed in its mapped form.
fn in_set(set: &BTreeSet<IpAddr>, ip: IpAddr) -> bool {
    if set.contains(&ip) {
        return true;
    }
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).is_some_and(|v4| set.contains(&v4.into())),
        IpAddr::V4(v4) => set.contains(&v4.to_ipv6_mapped().into()),
    }
}

fn is_mail_port(port: u16) -> bool {
    MAIL_PORTS.contains(&port)
}

/// Whether the allow rule that decided (if any) opens a mail port: only by naming it.
fn opens_mail(allow: Option<&ExitRule>) -> bool {
    allow.is_some_and(|r| r.ports.is_some())
}

fn cidr_matches(cidr: &Cidr, ip: IpAddr) -> bool {
    cidr.contains(ip)
        || match ip {
            IpAddr::V6(v6) => embedded_v4(v6).is_some_and(|v4| cidr.contains(IpAddr::V4(v4))),
            IpAddr::V4(_) => false,
        }
}

impl ExitPolicy {
    /// The default policy with every address of `directory`'s nodes refused.
    pub fn with_nodes_of(mut self, directory: &Directory) -> Self {
        self.node_addrs.extend(node_addrs(directory));
        self
    }

    fn mail_refusal(&self, allow: Option<&ExitRule>, port: u16) -> Result<(), Refusal> {
        if is_mail_port(port) && !opens_mail(allow) {
            return Err(Refusal::MailPort { port });
        }
        Ok(())
    }

    /// The rules that can be decided from the name and port alone, before any lookup: a
    /// deny by domain/port refuses without sending a DNS query for the name. Stops at the
    /// first rule that needs an address, so the order of rules is respected.
    pub fn check_name(&self, name: &str, port: u16) -> Result<(), Refusal> {
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.cidr.is_some() {
                // Undecidable by name; a mail port is still refused now if no allow rule
                // from here on could open it.
                let could_open = self.rules[index..].iter().any(|r| {
                    r.action == ExitAction::Allow && r.ports.is_some_and(|p| p.contains(port))
                });
                return match could_open {
                    true => Ok(()),
                    false => self.mail_refusal(None, port),
                };
            }
            if rule_matches_name(rule, Some(name), port) {
                return match rule.action {
                    ExitAction::Allow => self.mail_refusal(Some(rule), port),
                    ExitAction::Deny => Err(Refusal::Rule {
                        addr: None,
                        index,
                        rule: rule.clone(),
                    }),
                };
            }
        }
        self.mail_refusal(None, port)
    }

    /// Decides one resolved address of a destination requested as `name` (None when the
    /// client gave an address).
    pub fn check_addr(&self, name: Option<&str>, addr: SocketAddr) -> Result<(), Refusal> {
        let ip = addr.ip();
        if in_set(&self.node_addrs, ip) {
            return Err(Refusal::OverlayNode { addr: ip });
        }
        if in_set(&self.local_addrs, ip) {
            return Err(Refusal::OwnAddress { addr: ip });
        }
        let mut allow = None;
        for (index, rule) in self.rules.iter().enumerate() {
            let cidr_ok = rule.cidr.as_ref().is_none_or(|c| cidr_matches(c, ip));
            if !(cidr_ok && rule_matches_name(rule, name, addr.port())) {
                continue;
            }
            match rule.action {
                ExitAction::Deny => {
                    return Err(Refusal::Rule {
                        addr: Some(ip),
                        index,
                        rule: rule.clone(),
                    })
                }
                ExitAction::Allow => {
                    allow = Some(rule);
                    break;
                }
            }
        }
        let opened = allow.is_some_and(|r| r.cidr.is_some());
        if let (false, Some(class)) = (opened, classify(ip)) {
            let open = match class.opener() {
                Opener::AllowLoopback => self.allow_loopback,
                Opener::AllowPrivate => self.allow_private,
                Opener::CidrRuleOnly => false,
            };
            if !open {
                return Err(Refusal::Class { addr: ip, class });
            }
        }
        self.mail_refusal(allow, addr.port())
    }

    /// Decides a destination: every address must pass, or the whole is refused. The
    /// result keeps the resolver's order.
    pub fn check(&self, name: Option<&str>, addrs: &[SocketAddr]) -> Result<Vec<Checked>, Refusal> {
        if let (Some(n), Some(a)) = (name, addrs.first()) {
            self.check_name(n, a.port())?;
        }
        addrs
            .iter()
            .map(|a| self.check_addr(name, *a).map(|()| Checked(*a)))
            .collect()
    }
}

/// The rule's domain and port matchers (its CIDR is checked by the caller).
fn rule_matches_name(rule: &ExitRule, name: Option<&str>, port: u16) -> bool {
    let domain_ok = match (&rule.domain, name) {
        (None, _) => true,
        (Some(d), Some(n)) => domain_covers(d, n),
        (Some(_), None) => false,
    };
    domain_ok && rule.ports.as_ref().is_none_or(|p| p.contains(port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        match s.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => SocketAddr::new(s.parse().unwrap(), 80),
        }
    }

    fn refused(p: &ExitPolicy, name: Option<&str>, addr: &str) -> Option<Refusal> {
        p.check(name, &[sa(addr)]).err()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn default_refuses_internal_addresses() {
        let p = ExitPolicy::default();
        for a in [
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::10.0.0.1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fd00:ec2::254",
            "fc00::1",
            "fdff::1",
            "ff02::1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:a00:1::",
        ] {
            assert!(refused(&p, None, a).is_some(), "{a} should be refused");
        }
        for a in [
            "93.184.216.34",
            "1.1.1.1",
            "100.128.0.1",
            "100.63.255.255",
            "172.32.0.1",
            "2606:2800:220:1:248:1893:25c8:1946",
            "64:ff9b::5db8:d822",
            "::ffff:93.184.216.34",
            "2002:5db8:d822::1",
        ] {
            assert_eq!(refused(&p, None, a), None, "{a} should pass");
        }
    }

    #[test]
    fn classes_and_reasons() {
        let p = ExitPolicy::default();
        let class = |a: &str| match refused(&p, None, a) {
            Some(Refusal::Class { class, .. }) => class,
            other => panic!("{a}: {other:?}"),
        };
        assert_eq!(class("169.254.169.254"), AddrClass::CloudMetadata);
        assert_eq!(class("fd00:ec2::254"), AddrClass::CloudMetadata);
        assert_eq!(class("::ffff:169.254.169.254"), AddrClass::CloudMetadata);
        assert_eq!(class("64:ff9b::a9fe:a9fe"), AddrClass::CloudMetadata);
        assert_eq!(class("::ffff:127.0.0.1"), AddrClass::Loopback);
        assert_eq!(class("100.64.0.1"), AddrClass::SharedCgnat);
        let r = refused(&p, None, "10.0.0.1").unwrap().to_string();
        assert_eq!(
            r,
            "exit policy: destination is private (RFC 1918) and refused"
        );
    }

    #[test]
    fn switches_open_only_their_classes() {
        let p = ExitPolicy {
            allow_loopback: true,
            ..ExitPolicy::default()
        };
        assert_eq!(refused(&p, None, "127.0.0.9"), None);
        assert_eq!(refused(&p, None, "::1"), None);
        assert_eq!(refused(&p, None, "::ffff:127.0.0.1"), None);
        assert!(refused(&p, None, "10.1.1.1").is_some());
        // Unspecified reaches the local host but is not loopback: still refused.
        assert!(refused(&p, None, "0.0.0.0").is_some());
        assert!(refused(&p, None, "::").is_some());

        let p = ExitPolicy {
            allow_private: true,
            ..ExitPolicy::default()
        };
        for a in [
            "10.1.1.1",
            "192.168.0.1",
            "100.64.0.1",
            "169.254.1.1",
            "fd12::1",
            "fe80::1",
        ] {
            assert_eq!(refused(&p, None, a), None, "{a}");
        }
        for a in [
            "169.254.169.254",
            "fd00:ec2::254",
            "127.0.0.1",
            "224.0.0.1",
            "0.0.0.0",
        ] {
            assert!(refused(&p, None, a).is_some(), "{a}");
        }
    }

    #[test]
    fn overlay_nodes_are_refused_whatever_else_allows() {
        let nodes: BTreeSet<IpAddr> = ["127.9.8.2", "203.0.113.7", "2001:db8::7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let p = ExitPolicy {
            allow_loopback: true,
            allow_private: true,
            rules: vec![
                ExitRule::allow().cidr(cidr("127.0.0.0/8")),
                ExitRule::allow().cidr(cidr("203.0.113.0/24")),
                ExitRule::allow().domain("node.example"),
            ],
            node_addrs: nodes,
            local_addrs: BTreeSet::new(),
        };
        for a in [
            "127.9.8.2:7100",
            "203.0.113.7:443",
            "[::ffff:203.0.113.7]:443",
            "[64:ff9b::cb00:7107]:443",
            "[2001:db8::7]:80",
        ] {
            assert!(
                matches!(
                    refused(&p, Some("node.example"), a),
                    Some(Refusal::OverlayNode { .. })
                ),
                "{a}"
            );
        }
        assert_eq!(refused(&p, None, "127.9.8.3:7100"), None);
        assert_eq!(refused(&p, None, "203.0.113.8:443"), None);
        let r = refused(&p, None, "127.9.8.2:1").unwrap().to_string();
        assert!(r.contains("overlay node"), "{r}");
    }

    #[test]
    fn node_addrs_come_from_the_directory() {
        use braid_config::{NodeEntry, Role};
        let e = |id: &str, role, addr: Option<&str>| {
            NodeEntry::new(id, role, addr.map(|a| a.parse().unwrap()), [1; 32], [2; 32])
        };
        let dir = Directory::new(
            4096,
            vec![
                e("u", Role::Upstream, Some("198.51.100.1:7100")),
                e("c", Role::Central, Some("[2001:db8::2]:7200")),
                e("g", Role::Gateway, None),
            ],
        );
        let p = ExitPolicy::default().with_nodes_of(&dir);
        assert_eq!(p.node_addrs.len(), 2);
        assert!(matches!(
            refused(&p, None, "198.51.100.1:443"),
            Some(Refusal::OverlayNode { .. })
        ));
        assert!(matches!(
            refused(&p, None, "[2001:db8::2]:22"),
            Some(Refusal::OverlayNode { .. })
        ));
    }

    #[test]
    fn domain_rules_match_on_label_boundaries() {
        assert!(domain_covers("example.com", "example.com"));
        assert!(domain_covers("example.com", "a.b.example.com"));
        assert!(domain_covers("example.com", "WWW.Example.COM."));
        assert!(domain_covers("example.com.", "www.example.com"));
        assert!(!domain_covers("example.com", "notexample.com"));
        assert!(!domain_covers("example.com", "example.com.evil"));
        assert!(!domain_covers("example.com", "com"));
        assert!(!domain_covers("", "com"));

        let p = ExitPolicy {
            rules: vec![ExitRule::deny().domain("example.com")],
            ..ExitPolicy::default()
        };
        let public = "93.184.216.34:443";
        for n in ["example.com", "www.example.com", "a.b.example.com"] {
            assert!(
                matches!(
                    refused(&p, Some(n), public),
                    Some(Refusal::Rule { index: 0, .. })
                ),
                "{n}"
            );
            // Decided before any lookup.
            assert!(p.check_name(n, 443).is_err(), "{n}");
        }
        for n in ["notexample.com", "example.community", "example.co"] {
            assert_eq!(refused(&p, Some(n), public), None, "{n}");
        }
        // A domain rule never matches a target given as an address.
        assert_eq!(refused(&p, None, public), None);
    }

    #[test]
    fn allow_by_domain_does_not_open_internal_addresses() {
        // DNS rebinding: the allowed name resolves to loopback / metadata.
        let p = ExitPolicy {
            rules: vec![ExitRule::allow().domain("good.example")],
            ..ExitPolicy::default()
        };
        for a in [
            "127.0.0.1",
            "169.254.169.254",
            "10.0.0.1",
            "::1",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(
                matches!(
                    refused(&p, Some("good.example"), a),
                    Some(Refusal::Class { .. })
                ),
                "{a}"
            );
        }
        assert_eq!(refused(&p, Some("good.example"), "93.184.216.34"), None);
        // One bad address among good ones refuses the whole destination.
        let mixed = [sa("93.184.216.34:80"), sa("127.0.0.1:80")];
        assert!(p.check(Some("good.example"), &mixed).is_err());
    }

    #[test]
    fn allow_by_cidr_opens_an_internal_range() {
        let p = ExitPolicy {
            rules: vec![
                ExitRule::allow()
                    .cidr(cidr("10.20.0.0/16"))
                    .ports(PortRange::new(8000, 8999).unwrap()),
                ExitRule::allow()
                    .cidr(cidr("fd12:3456::/32"))
                    .domain("intra.example"),
            ],
            ..ExitPolicy::default()
        };
        assert_eq!(refused(&p, None, "10.20.1.2:8080"), None);
        assert_eq!(refused(&p, None, "[::ffff:10.20.1.2]:8080"), None);
        assert!(
            refused(&p, None, "10.20.1.2:22").is_some(),
            "port outside the rule"
        );
        assert!(
            refused(&p, None, "10.21.1.2:8080").is_some(),
            "address outside the rule"
        );
        assert_eq!(
            refused(&p, Some("db.intra.example"), "[fd12:3456::9]:5432"),
            None
        );
        assert!(refused(&p, Some("other.example"), "[fd12:3456::9]:5432").is_some());
        assert!(refused(&p, None, "[fd12:3456::9]:5432").is_some());
        // Resolution goes through the same rules.
        let ok = p
            .check(Some("svc.example"), &[sa("10.20.0.1:8000")])
            .unwrap();
        assert_eq!(ok[0].addr(), sa("10.20.0.1:8000"));
    }

    #[test]
    fn port_ranges_deny_and_first_match_wins() {
        let p = ExitPolicy {
            rules: vec![
                ExitRule::allow()
                    .domain("mail.example")
                    .ports(PortRange::single(25)),
                ExitRule::deny().ports(PortRange::new(25, 25).unwrap()),
                ExitRule::deny().ports(PortRange::new(6000, 6999).unwrap()),
                ExitRule::deny().cidr(cidr("198.51.100.0/24")),
            ],
            ..ExitPolicy::default()
        };
        let public = |port: u16| format!("93.184.216.34:{port}");
        assert!(matches!(
            refused(&p, None, &public(25)),
            Some(Refusal::Rule { index: 1, .. })
        ));
        assert_eq!(refused(&p, Some("mail.example"), &public(25)), None);
        for port in [6000, 6500, 6999] {
            assert!(matches!(
                refused(&p, None, &public(port)),
                Some(Refusal::Rule { index: 2, .. })
            ));
        }
        for port in [5999, 7000, 443] {
            assert_eq!(refused(&p, None, &public(port)), None, "{port}");
        }
        assert!(matches!(
            refused(&p, None, "[::ffff:198.51.100.3]:443"),
            Some(Refusal::Rule { index: 3, .. })
        ));
        // check_name stops at the CIDR rule: the names it cannot decide pass to the lookup.
        assert!(p.check_name("x.example", 6001).is_err());
        assert!(p.check_name("mail.example", 25).is_ok());
        let r = refused(&p, None, &public(6001)).unwrap().to_string();
        assert_eq!(r, "exit policy: refused by rule 2");
    }

    #[test]
    fn a_deny_all_rule_makes_an_allowlist() {
        let p = ExitPolicy {
            rules: vec![ExitRule::allow().domain("only.example"), ExitRule::deny()],
            ..ExitPolicy::default()
        };
        assert_eq!(refused(&p, Some("only.example"), "93.184.216.34"), None);
        assert!(refused(&p, Some("else.example"), "93.184.216.34").is_some());
        assert!(refused(&p, None, "93.184.216.34").is_some());
        assert!(p.check_name("else.example", 80).is_err());
    }

    #[test]
    fn special_purpose_ranges_and_azure_are_refused_by_default() {
        let p = ExitPolicy::default();
        for (a, want) in [
            ("192.0.0.8", AddrClass::ProtocolAssignments),
            ("192.0.0.170", AddrClass::ProtocolAssignments),
            ("192.0.0.255", AddrClass::ProtocolAssignments),
            ("198.18.0.1", AddrClass::Benchmarking),
            ("198.19.255.254", AddrClass::Benchmarking),
            ("192.88.99.1", AddrClass::SixToFourRelay),
            ("168.63.129.16", AddrClass::CloudMetadata),
            ("::ffff:168.63.129.16", AddrClass::CloudMetadata),
            ("64:ff9b::c612:1", AddrClass::Benchmarking),
            ("2002:c000:8::1", AddrClass::ProtocolAssignments),
        ] {
            match refused(&p, None, a) {
                Some(Refusal::Class { class, .. }) => assert_eq!(class, want, "{a}"),
                other => panic!("{a}: {other:?}"),
            }
        }
        for a in [
            "192.0.1.1",
            "192.0.2.1",
            "198.17.255.255",
            "198.20.0.1",
            "192.88.98.1",
            "192.88.100.1",
            "168.63.129.17",
        ] {
            assert_eq!(refused(&p, None, a), None, "{a} should pass");
        }
        // An allow by CIDR opens them on purpose, like any built-in class.
        let p = ExitPolicy {
            rules: vec![ExitRule::allow().cidr(cidr("198.18.0.0/15"))],
            ..ExitPolicy::default()
        };
        assert_eq!(refused(&p, None, "198.18.3.4"), None);
    }

    #[test]
    fn reasons_name_no_address() {
        let nodes: BTreeSet<IpAddr> = ["203.0.113.7".parse().unwrap()].into();
        let local: BTreeSet<IpAddr> = ["198.51.100.9".parse().unwrap()].into();
        let p = ExitPolicy {
            rules: vec![
                ExitRule::deny().cidr(cidr("10.99.0.0/16")),
                ExitRule::deny().domain("blocked.example"),
            ],
            node_addrs: nodes,
            local_addrs: local,
            ..ExitPolicy::default()
        };
        for (name, a) in [
            (Some("x.example"), "10.1.2.3:80"),
            (Some("x.example"), "10.99.1.2:80"),
            (Some("x.example"), "[::ffff:172.16.5.4]:80"),
            (Some("x.example"), "169.254.169.254:80"),
            (Some("x.example"), "203.0.113.7:80"),
            (Some("x.example"), "198.51.100.9:80"),
            (Some("blocked.example"), "93.184.216.34:80"),
            (None, "93.184.216.34:25"),
        ] {
            let r = p.check(name, &[sa(a)]).unwrap_err().to_string();
            let ip = sa(a).ip().to_string();
            let v4 = ip.trim_start_matches("::ffff:");
            assert!(!r.contains(v4) && !r.contains("10.99"), "{a}: {r}");
            assert!(!r.contains("x.example") && !r.contains("blocked."), "{r}");
        }
    }

    #[test]
    fn mail_ports_are_refused_unless_an_allow_rule_names_them() {
        let p = ExitPolicy::default();
        for port in MAIL_PORTS {
            let a = format!("93.184.216.34:{port}");
            assert_eq!(
                refused(&p, None, &a),
                Some(Refusal::MailPort { port }),
                "{a}"
            );
            assert_eq!(
                refused(&p, None, &format!("[2606:2800:220:1::1]:{port}")),
                Some(Refusal::MailPort { port })
            );
            // Decided before any lookup.
            assert_eq!(
                p.check_name("mail.example", port),
                Err(Refusal::MailPort { port })
            );
        }
        for port in [24, 26, 443, 464, 466, 586, 588, 2525] {
            assert_eq!(refused(&p, None, &format!("93.184.216.34:{port}")), None);
            assert_eq!(p.check_name("mail.example", port), Ok(()));
        }
        let r = refused(&p, None, "93.184.216.34:25").unwrap().to_string();
        assert_eq!(r, "exit policy: mail port 25 is refused by default");

        // An allow without `ports` does not open them, by domain or by CIDR.
        let p = ExitPolicy {
            rules: vec![
                ExitRule::allow().domain("mail.example"),
                ExitRule::allow().cidr(cidr("10.20.0.0/16")),
            ],
            ..ExitPolicy::default()
        };
        assert!(refused(&p, Some("mail.example"), "93.184.216.34:25").is_some());
        assert!(p.check_name("mail.example", 587).is_err());
        assert!(refused(&p, None, "10.20.0.5:465").is_some());
        assert_eq!(refused(&p, None, "10.20.0.5:443"), None);

        // An allow that names the port opens it (and only what it matches).
        let p = ExitPolicy {
            rules: vec![
                ExitRule::allow()
                    .domain("mail.example")
                    .ports(PortRange::single(587)),
                ExitRule::allow()
                    .cidr(cidr("10.20.0.0/16"))
                    .ports(PortRange::new(25, 25).unwrap()),
                ExitRule::allow().ports(PortRange::new(400, 500).unwrap()),
            ],
            ..ExitPolicy::default()
        };
        assert_eq!(refused(&p, Some("mail.example"), "93.184.216.34:587"), None);
        assert_eq!(p.check_name("mail.example", 587), Ok(()));
        assert!(refused(&p, Some("other.example"), "93.184.216.34:587").is_some());
        assert_eq!(refused(&p, None, "10.20.0.5:25"), None);
        // The CIDR rule cannot be decided by name: the lookup goes ahead for port 25...
        assert_eq!(p.check_name("any.example", 25), Ok(()));
        // ...and the address decides.
        assert!(refused(&p, Some("any.example"), "93.184.216.34:25").is_some());
        assert_eq!(refused(&p, None, "93.184.216.34:465"), None);
        // Nothing could open 587 for another name once only the CIDR rules remain.
        let p = ExitPolicy {
            rules: vec![ExitRule::allow().cidr(cidr("10.20.0.0/16"))],
            ..ExitPolicy::default()
        };
        assert!(p.check_name("any.example", 587).is_err());
    }

    #[test]
    fn own_addresses_are_refused_in_every_form() {
        let local: BTreeSet<IpAddr> = ["198.51.100.9", "2001:db8::9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let p = ExitPolicy {
            allow_private: true,
            rules: vec![ExitRule::allow().cidr(cidr("198.51.100.0/24"))],
            local_addrs: local,
            ..ExitPolicy::default()
        };
        for a in [
            "198.51.100.9:22",
            "[::ffff:198.51.100.9]:22",
            "[64:ff9b::c633:6409]:22",
            "[2001:db8::9]:443",
        ] {
            assert!(
                matches!(
                    refused(&p, Some("me.example"), a),
                    Some(Refusal::OwnAddress { .. })
                ),
                "{a}"
            );
        }
        assert_eq!(refused(&p, None, "198.51.100.10:22"), None);
    }

    #[test]
    fn interface_addrs_leave_out_loopback() {
        let addrs = interface_addrs().unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| !a.is_loopback() && !a.is_unspecified()),
            "{addrs:?}"
        );
    }
}
