//! The gateway's exit policy values: the `[exit]` table with its ordered
//! `[[exit.rules]]` (action, domain, CIDR network, port range) and the name rules shared
//! with the `[hosts]` overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::de::KeyPath;
use crate::error::ConfigError;

/// The gateway's `[exit]` table. By default the exit refuses loopback, private,
/// link-local, CGNAT, multicast, broadcast, unspecified, special-purpose (192.0.0.0/24,
/// 198.18.0.0/15, 192.88.99.0/24) and cloud-metadata destinations, the mail ports 25, 465
/// and 587 (and the addresses of every node in the directory and of the gateway's host,
/// always); `rules` add allow or deny decisions before those built-in classes are applied.
/// A mail port opens only through an allow rule whose `ports` name it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitConfig {
    /// Allow loopback destinations (127.0.0.0/8, ::1). For tests and demos.
    #[serde(default)]
    pub allow_loopback: bool,
    /// Allow private, link-local and CGNAT destinations (not cloud metadata).
    #[serde(default)]
    pub allow_private: bool,
    /// Ordered `[[exit.rules]]`; the first rule that matches decides. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<ExitRule>,
}

impl ExitConfig {
    /// Each rule's domain is a plain lower-case name, and no allow rule opens every
    /// internal address (`0.0.0.0/0`, `::/0`). Keys are under `exit.rules`.
    pub(crate) fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        for (i, rule) in self.rules.iter().enumerate() {
            let at = |field: &str| {
                KeyPath::dotted("exit.rules")
                    .index(i)
                    .key(field)
                    .to_string()
            };
            if let Some(d) = &rule.domain {
                check_rule_domain(d).map_err(|m| ConfigError::invalid(file, at("domain"), m))?;
            }
            if let (ExitAction::Allow, Some(net)) = (rule.action, &rule.cidr) {
                if net.prefix() == 0 {
                    return Err(ConfigError::invalid(
                        file,
                        at("cidr"),
                        format!(
                            "allow {net} would open every internal address (loopback, private, metadata): public addresses are allowed by default; name the internal range to open"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What an exit rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitAction {
    /// Let the stream through. An allow rule with a `cidr` also opens the built-in
    /// refused classes for the addresses inside it; one without a `cidr` does not.
    Allow,
    /// Refuse the stream.
    Deny,
}

/// One `[[exit.rules]]` entry. It matches when every matcher it has matches (a rule with
/// none matches every destination):
///
/// * `domain`: the requested host name is this domain or one of its subdomains
///   (`example.com` covers `a.example.com`, not `notexample.com`); never matches a
///   target given as an address;
/// * `cidr`: the resolved address is in this network (`10.0.0.0/8`, `fd12::/16`, or a
///   bare address); IPv4-mapped and NAT64 forms of an IPv4 address match too;
/// * `ports`: the target port is in this range (`443`, `"8000-8999"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitRule {
    /// `"allow"` or `"deny"`.
    pub action: ExitAction,
    /// A domain suffix matched on label boundaries (lower-case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// An IPv4 or IPv6 network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Cidr>,
    /// A port or an inclusive port range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
}

impl ExitRule {
    /// A rule with `action` and no matchers (it matches everything until narrowed).
    pub fn new(action: ExitAction) -> Self {
        ExitRule {
            action,
            domain: None,
            cidr: None,
            ports: None,
        }
    }

    /// `allow`, no matchers yet.
    pub fn allow() -> Self {
        Self::new(ExitAction::Allow)
    }

    /// `deny`, no matchers yet.
    pub fn deny() -> Self {
        Self::new(ExitAction::Deny)
    }

    /// Narrowed to `domain` and its subdomains.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Narrowed to a network.
    pub fn cidr(mut self, cidr: Cidr) -> Self {
        self.cidr = Some(cidr);
        self
    }

    /// Narrowed to a port range.
    pub fn ports(mut self, ports: PortRange) -> Self {
        self.ports = Some(ports);
        self
    }
}

impl fmt::Display for ExitRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.action {
            ExitAction::Allow => "allow",
            ExitAction::Deny => "deny",
        })?;
        if let Some(d) = &self.domain {
            write!(f, " domain {d}")?;
        }
        if let Some(c) = &self.cidr {
            write!(f, " cidr {c}")?;
        }
        if let Some(p) = &self.ports {
            write!(f, " ports {p}")?;
        }
        if self.domain.is_none() && self.cidr.is_none() && self.ports.is_none() {
            f.write_str(" all")?;
        }
        Ok(())
    }
}

/// An IP network: an address with its host bits zero and a prefix length. Written
/// `10.0.0.0/8`, `fd00:ec2::/32`, or a bare address for a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`; refused if the prefix is too long for the family or host bits are
    /// set (the message suggests the network meant).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, String> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max} bits"));
        }
        let net = Cidr { addr, prefix };
        let masked = net.network_of(addr);
        if masked != addr {
            return Err(format!(
                "{addr}/{prefix} has host bits set: did you mean {masked}/{prefix}?"
            ));
        }
        Ok(net)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn network_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }

    /// Whether `ip` (of the same family) is inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.network_of(ip) == self.addr
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not a network: expected an address/prefix such as \"10.0.0.0/8\" or \"fd00::/8\""))?;
        let prefix = match p {
            None => match addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| format!("{s:?}: the prefix length {p:?} is not a number"))?,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An inclusive port range: `443` or `"8000-8999"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// The first port in the range.
    pub first: u16,
    /// The last port in the range (`>= first`).
    pub last: u16,
}

impl PortRange {
    /// `first..=last`; refused if `first > last`.
    pub fn new(first: u16, last: u16) -> Result<Self, String> {
        if first > last {
            return Err(format!(
                "port range {first}-{last} is empty: the first port is above the last"
            ));
        }
        Ok(PortRange { first, last })
    }

    /// One port.
    pub fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("{s:?} is not a port range: expected a port (443) or a range (\"8000-8999\") of 0..=65535"))
        };
        match s.split_once('-') {
            Some((a, b)) => PortRange::new(port(a)?, port(b)?),
            None => Ok(PortRange::single(port(s)?)),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.first == self.last {
            s.serialize_u16(self.first)
        } else {
            s.collect_str(self)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (443) or a port range (\"8000-8999\")")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .map(PortRange::single)
                    .map_err(|_| E::custom(format!("port {v} is out of range 0..=65535")))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortRange, E> {
                u16::try_from(v)
                    .map(PortRange::single)
                    .map_err(|_| E::custom(format!("port {v} is out of range 0..=65535")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Every name of a gateway's `[hosts]` overrides is a lower-case DNS name (keys are
/// `hosts.<name>`).
pub(crate) fn validate_hosts(
    hosts: &BTreeMap<String, IpAddr>,
    file: &Path,
) -> Result<(), ConfigError> {
    for name in hosts.keys() {
        check_host_name(name).map_err(|m| {
            ConfigError::invalid(file, KeyPath::dotted("hosts").key(name).to_string(), m)
        })?;
    }
    Ok(())
}

/// A `hosts` name: lower-case DNS name characters, 1..=253 long.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "host name {name:?} must be 1..=253 characters long"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')))
    {
        return Err(format!(
            "host name {name:?} contains {c:?}: use lower-case letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

/// An exit rule's `domain`: a lower-case DNS name; it covers its subdomains already, so
/// no leading `.` or `*.`.
fn check_rule_domain(d: &str) -> Result<(), String> {
    if d.starts_with('.') || d.starts_with("*.") {
        return Err(format!(
            "domain {d:?}: write it without a leading \".\" or \"*.\" (a rule for example.com already covers its subdomains)"
        ));
    }
    if d.ends_with('.') || d.contains("..") {
        return Err(format!("domain {d:?} has an empty label"));
    }
    check_host_name(d)
}

fn normalized_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// `name` is `domain` or a subdomain of it (label boundary: `notexample.com` is not under
/// `example.com`). Both are normalized (case, a trailing dot).
pub fn domain_covers(domain: &str, name: &str) -> bool {
    let d = normalized_name(domain);
    let n = normalized_name(name);
    if d.is_empty() {
        return false;
    }
    n == d || (n.len() > d.len() && n.ends_with(&d) && n.as_bytes()[n.len() - d.len() - 1] == b'.')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cidr_contains_by_family() {
        let n: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.255.1.2".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::a00:1".parse().unwrap()));
        let all: Cidr = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert!(!all.contains("1.2.3.4".parse().unwrap()));
        let host: Cidr = "fd00:ec2::254".parse().unwrap();
        assert_eq!(host.prefix(), 128);
        assert!(host.contains("fd00:ec2::254".parse().unwrap()));
        assert!(!host.contains("fd00:ec2::255".parse().unwrap()));
    }
}
