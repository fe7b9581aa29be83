//! The node config (`braid-node --config FILE`): a `role` key picks the variant, a
//! `[node]` table holds what every role has, and the role's own keys sit at top level.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::directory::{check_id, Directory, NodeEntry, Role};
use crate::error::ConfigError;

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Name of the Noise static private key file inside an identity folder.
pub const NOISE_KEY_FILE: &str = "noise.key";
/// Name of the TLS private key file inside an identity folder.
pub const TLS_KEY_FILE: &str = "tls.key";
/// Name of the TLS certificate file inside an identity folder.
pub const TLS_CERT_FILE: &str = "tls.crt";

/// The `[node]` table, common to every role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeCommon {
    /// This node's id; must appear in the directory with the same role.
    pub id: String,
    /// The directory file. Resolved against the config file's folder when loaded.
    pub directory: PathBuf,
    /// Folder holding `noise.key`, `tls.key` and `tls.crt`. Resolved against the config
    /// file's folder when loaded.
    pub identity: PathBuf,
    /// Admin HTTP address (`/health`, `/metrics`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// Log format.
    #[serde(default)]
    pub log: LogFormat,
    /// On SIGTERM the node stops accepting, lets live streams finish for at most this
    /// long, then closes.
    #[serde(default = "defaults::drain_timeout_secs")]
    pub drain_timeout_secs: u64,
}

impl NodeCommon {
    /// [`Self::drain_timeout_secs`] as a `Duration`.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// `identity/noise.key`.
    pub fn noise_key_path(&self) -> PathBuf {
        self.identity.join(NOISE_KEY_FILE)
    }

    /// `identity/tls.key`.
    pub fn tls_key_path(&self) -> PathBuf {
        self.identity.join(TLS_KEY_FILE)
    }

    /// `identity/tls.crt`.
    pub fn tls_cert_path(&self) -> PathBuf {
        self.identity.join(TLS_CERT_FILE)
    }
}

/// `role = "upstream"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Where to accept client connections.
    pub listen: SocketAddr,
    /// Common settings.
    pub node: NodeCommon,
}

/// `role = "central"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// Where to accept upstreams, downstreams and gateways.
    pub listen: SocketAddr,
    /// Per-session reorder window, in cells (default 1024).
    #[serde(default = "defaults::reorder_window_cells")]
    pub reorder_window_cells: u32,
    /// Per-session cap on buffered out-of-order bytes (default 16 MiB).
    #[serde(default = "defaults::session_reorder_bytes")]
    pub session_reorder_bytes: u64,
    /// Cap on buffered out-of-order bytes over all sessions (default 256 MiB).
    #[serde(default = "defaults::global_reorder_bytes")]
    pub global_reorder_bytes: u64,
    /// How long a gap may stay open before the session is dropped (default 60 s).
    #[serde(default = "defaults::reassembly_timeout_secs")]
    pub reassembly_timeout_secs: u64,
    /// Common settings.
    pub node: NodeCommon,
}

impl CentralConfig {
    /// [`Self::reassembly_timeout_secs`] as a `Duration`.
    pub fn reassembly_timeout(&self) -> Duration {
        Duration::from_secs(self.reassembly_timeout_secs)
    }
}

/// `role = "downstream"` (nothing beyond `[node]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamConfig {
    /// Common settings.
    pub node: NodeCommon,
}

/// `role = "relay"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Where to accept downstreams and clients.
    pub listen: SocketAddr,
    /// Mean of the exponential (Poisson-process) per-cell delay, in milliseconds;
    /// 0.0 (default) disables mixing. At most 60000.
    #[serde(default)]
    pub mix_delay_ms: f64,
    /// Cells held per client mailbox (default 4096).
    #[serde(default = "defaults::mailbox_cells")]
    pub mailbox_cells: u32,
    /// Common settings.
    pub node: NodeCommon,
}

impl RelayConfig {
    /// Largest allowed `mix_delay_ms`.
    pub const MAX_MIX_DELAY_MS: f64 = 60_000.0;

    /// [`Self::mix_delay_ms`] as a `Duration` (the mean delay).
    pub fn mix_delay(&self) -> Duration {
        Duration::from_secs_f64(self.mix_delay_ms.clamp(0.0, Self::MAX_MIX_DELAY_MS) / 1000.0)
    }
}

/// The gateway's `[exit]` table. By default the exit refuses loopback, private,
/// link-local, CGNAT, multicast, broadcast, unspecified and cloud-metadata destinations
/// (and the addresses of every node in the directory, always); `rules` add allow or deny
/// decisions before those built-in classes are applied.
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

/// `role = "gateway"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Timeout for connecting to a target (default 10 s).
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// First delay before redialling the central (default 200 ms).
    #[serde(default = "defaults::reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Largest delay between redials (default 30000 ms).
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Exit policy switches.
    #[serde(default)]
    pub exit: ExitConfig,
    /// Static name overrides, like /etc/hosts (lower-case names). Default empty.
    #[serde(default)]
    pub hosts: BTreeMap<String, IpAddr>,
    /// Common settings.
    pub node: NodeCommon,
}

impl GatewayConfig {
    /// [`Self::connect_timeout_secs`] as a `Duration`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// [`Self::reconnect_min_ms`] as a `Duration`.
    pub fn reconnect_min(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_ms)
    }

    /// [`Self::reconnect_max_ms`] as a `Duration`.
    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }
}

/// A node's configuration; `role` in the file picks the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum NodeConfig {
    /// `role = "upstream"`.
    Upstream(UpstreamConfig),
    /// `role = "central"`.
    Central(CentralConfig),
    /// `role = "downstream"`.
    Downstream(DownstreamConfig),
    /// `role = "relay"`.
    Relay(RelayConfig),
    /// `role = "gateway"`.
    Gateway(GatewayConfig),
}

impl NodeConfig {
    /// The `[node]` table.
    pub fn common(&self) -> &NodeCommon {
        match self {
            NodeConfig::Upstream(c) => &c.node,
            NodeConfig::Central(c) => &c.node,
            NodeConfig::Downstream(c) => &c.node,
            NodeConfig::Relay(c) => &c.node,
            NodeConfig::Gateway(c) => &c.node,
        }
    }

    pub(crate) fn common_mut(&mut self) -> &mut NodeCommon {
        match self {
            NodeConfig::Upstream(c) => &mut c.node,
            NodeConfig::Central(c) => &mut c.node,
            NodeConfig::Downstream(c) => &mut c.node,
            NodeConfig::Relay(c) => &mut c.node,
            NodeConfig::Gateway(c) => &mut c.node,
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        match self {
            NodeConfig::Upstream(_) => Role::Upstream,
            NodeConfig::Central(_) => Role::Central,
            NodeConfig::Downstream(_) => Role::Downstream,
            NodeConfig::Relay(_) => Role::Relay,
            NodeConfig::Gateway(_) => Role::Gateway,
        }
    }

    /// The address this node listens on (upstream, central, relay).
    pub fn listen(&self) -> Option<SocketAddr> {
        match self {
            NodeConfig::Upstream(c) => Some(c.listen),
            NodeConfig::Central(c) => Some(c.listen),
            NodeConfig::Relay(c) => Some(c.listen),
            NodeConfig::Downstream(_) | NodeConfig::Gateway(_) => None,
        }
    }

    /// This node's entry in `dir`: it must exist and have the same role. Errors name
    /// the directory file (`common().directory`).
    pub fn directory_entry<'d>(&self, dir: &'d Directory) -> Result<&'d NodeEntry, ConfigError> {
        let common = self.common();
        let file = common.directory.clone();
        let entry = dir.by_id(&common.id).ok_or_else(|| ConfigError::Invalid {
            file: file.clone(),
            key: "nodes".into(),
            message: format!(
                "no node with id `{}` (named by node.id in this node's config)",
                common.id
            ),
        })?;
        if entry.role != self.role() {
            return Err(ConfigError::Invalid {
                file,
                key: "nodes".into(),
                message: format!(
                    "node `{}` has role {} here, but its config says role {}",
                    common.id,
                    entry.role,
                    self.role()
                ),
            });
        }
        Ok(entry)
    }

    /// Check the rules that need no file system: id syntax, non-empty paths, numeric
    /// ranges.
    pub(crate) fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        let common = self.common();
        check_id(&common.id).map_err(|m| invalid("node.id", m))?;
        for (key, path) in [
            ("node.directory", &common.directory),
            ("node.identity", &common.identity),
        ] {
            if path.as_os_str().is_empty() {
                return Err(invalid(key, "must not be empty".into()));
            }
        }
        match self {
            NodeConfig::Upstream(_) | NodeConfig::Downstream(_) => {}
            NodeConfig::Central(c) => {
                for (key, v) in [
                    ("reorder_window_cells", u64::from(c.reorder_window_cells)),
                    ("session_reorder_bytes", c.session_reorder_bytes),
                    ("global_reorder_bytes", c.global_reorder_bytes),
                    ("reassembly_timeout_secs", c.reassembly_timeout_secs),
                ] {
                    if v == 0 {
                        return Err(invalid(key, "must be greater than 0".into()));
                    }
                }
                if c.global_reorder_bytes < c.session_reorder_bytes {
                    return Err(invalid(
                        "global_reorder_bytes",
                        format!(
                            "{} is smaller than session_reorder_bytes ({}): the global cap must hold at least one session",
                            c.global_reorder_bytes, c.session_reorder_bytes
                        ),
                    ));
                }
            }
            NodeConfig::Relay(c) => {
                if !(c.mix_delay_ms.is_finite()
                    && (0.0..=RelayConfig::MAX_MIX_DELAY_MS).contains(&c.mix_delay_ms))
                {
                    return Err(invalid(
                        "mix_delay_ms",
                        format!(
                            "{} is out of range: must be 0.0 (no mixing) ..= {}",
                            c.mix_delay_ms,
                            RelayConfig::MAX_MIX_DELAY_MS
                        ),
                    ));
                }
                if c.mailbox_cells == 0 {
                    return Err(invalid("mailbox_cells", "must be greater than 0".into()));
                }
            }
            NodeConfig::Gateway(c) => {
                if c.connect_timeout_secs == 0 {
                    return Err(invalid(
                        "connect_timeout_secs",
                        "must be greater than 0".into(),
                    ));
                }
                if c.reconnect_min_ms == 0 {
                    return Err(invalid("reconnect_min_ms", "must be greater than 0".into()));
                }
                if c.reconnect_max_ms < c.reconnect_min_ms {
                    return Err(invalid(
                        "reconnect_max_ms",
                        format!(
                            "{} is smaller than reconnect_min_ms ({})",
                            c.reconnect_max_ms, c.reconnect_min_ms
                        ),
                    ));
                }
                for (i, rule) in c.exit.rules.iter().enumerate() {
                    let at = |field: &str| {
                        crate::de::KeyPath::dotted("exit.rules")
                            .index(i)
                            .key(field)
                            .to_string()
                    };
                    if let Some(d) = &rule.domain {
                        check_rule_domain(d).map_err(|m| invalid(&at("domain"), m))?;
                    }
                    if let (ExitAction::Allow, Some(net)) = (rule.action, &rule.cidr) {
                        if net.prefix() == 0 {
                            return Err(invalid(
                                &at("cidr"),
                                format!(
                                    "allow {net} would open every internal address (loopback, private, metadata): public addresses are allowed by default; name the internal range to open"
                                ),
                            ));
                        }
                    }
                }
                for name in c.hosts.keys() {
                    check_host_name(name).map_err(|m| {
                        invalid(
                            &crate::de::KeyPath::dotted("hosts").key(name).to_string(),
                            m,
                        )
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Check that the directory file and the identity folder with its three files
    /// exist.
    pub(crate) fn check_files(&self, file: &Path) -> Result<(), ConfigError> {
        let common = self.common();
        let missing = |key: &str, what: &'static str, path: &Path| ConfigError::MissingPath {
            file: file.to_owned(),
            key: key.to_owned(),
            what,
            path: path.to_owned(),
        };
        if !common.directory.is_file() {
            return Err(missing(
                "node.directory",
                "the directory file",
                &common.directory,
            ));
        }
        if !common.identity.is_dir() {
            return Err(missing(
                "node.identity",
                "the identity folder",
                &common.identity,
            ));
        }
        for (what, path) in [
            ("the Noise static key file", common.noise_key_path()),
            ("the TLS private key file", common.tls_key_path()),
            ("the TLS certificate file", common.tls_cert_path()),
        ] {
            if !path.is_file() {
                return Err(missing("node.identity", what, &path));
            }
        }
        Ok(())
    }

    /// The config as TOML (e.g. to print the effective configuration).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Invalid {
            file: PathBuf::from("<node config>"),
            key: "<top level>".into(),
            message: format!("cannot serialize: {e}"),
        })
    }
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

pub(crate) mod defaults {
    pub(crate) fn drain_timeout_secs() -> u64 {
        30
    }
    pub(crate) fn reorder_window_cells() -> u32 {
        1024
    }
    pub(crate) fn session_reorder_bytes() -> u64 {
        16 * 1024 * 1024
    }
    pub(crate) fn global_reorder_bytes() -> u64 {
        256 * 1024 * 1024
    }
    pub(crate) fn reassembly_timeout_secs() -> u64 {
        60
    }
    pub(crate) fn mailbox_cells() -> u32 {
        4096
    }
    pub(crate) fn connect_timeout_secs() -> u64 {
        10
    }
    pub(crate) fn reconnect_min_ms() -> u64 {
        200
    }
    pub(crate) fn reconnect_max_ms() -> u64 {
        30_000
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GATEWAY: &str =
        "role = \"gateway\"\n[node]\nid = \"g\"\ndirectory = \"d\"\nidentity = \"k\"\n";

    fn gateway(extra: &str) -> Result<GatewayConfig, ConfigError> {
        let text = format!("{GATEWAY}{extra}");
        match crate::parse_node_config(&text, Path::new("/x/g.toml"), &crate::no_env)? {
            NodeConfig::Gateway(g) => Ok(g),
            other => panic!("not a gateway: {other:?}"),
        }
    }

    #[test]
    fn exit_rules_parse_in_order() {
        let g = gateway(
            r#"
[[exit.rules]]
action = "deny"
ports = 25
[[exit.rules]]
action = "deny"
domain = "tracker.example"
[[exit.rules]]
action = "allow"
cidr = "10.20.0.0/16"
ports = "8000-8999"
[[exit.rules]]
action = "deny"
cidr = "fd00::/8"
[[exit.rules]]
action = "deny"
cidr = "192.0.2.7"
"#,
        )
        .unwrap();
        let r = &g.exit.rules;
        assert_eq!(r.len(), 5);
        assert_eq!(r[0], ExitRule::deny().ports(PortRange::single(25)));
        assert_eq!(r[1], ExitRule::deny().domain("tracker.example"));
        assert_eq!(
            r[2],
            ExitRule::allow()
                .cidr("10.20.0.0/16".parse().unwrap())
                .ports(PortRange::new(8000, 8999).unwrap())
        );
        assert_eq!(r[3].cidr.unwrap().prefix(), 8);
        assert_eq!(r[4].cidr.unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(r[2].to_string(), "allow cidr 10.20.0.0/16 ports 8000-8999");
        // Round trip through the serializer.
        let cfg = NodeConfig::Gateway(g.clone());
        let text = cfg.to_toml_string().unwrap();
        let back = crate::parse_node_config(&text, Path::new("/x/g.toml"), &crate::no_env).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_exit_rules_name_the_key() {
        for (rule, fragments) in [
            (
                "action = \"deny\"\ncidr = \"10.0.0.1/8\"",
                &["exit.rules[0].cidr", "did you mean 10.0.0.0/8"][..],
            ),
            (
                "action = \"deny\"\ncidr = \"10.0.0.0/33\"",
                &["exit.rules[0].cidr", "/33"],
            ),
            (
                "action = \"deny\"\ncidr = \"nope\"",
                &["exit.rules[0].cidr", "not a network"],
            ),
            (
                "action = \"deny\"\nports = \"90-80\"",
                &["exit.rules[0].ports", "empty"],
            ),
            (
                "action = \"deny\"\nports = 70000",
                &["exit.rules[0].ports", "out of range"],
            ),
            ("action = \"maybe\"", &["exit.rules[0].action"]),
            ("action = \"deny\"\nhost = \"a\"", &["exit.rules[0].host"]),
            (
                "action = \"deny\"\ndomain = \".example.com\"",
                &["exit.rules[0].domain", "leading"],
            ),
            (
                "action = \"deny\"\ndomain = \"Example.com\"",
                &["exit.rules[0].domain", "lower-case"],
            ),
            (
                "action = \"allow\"\ncidr = \"0.0.0.0/0\"",
                &["exit.rules[0].cidr", "every internal address"],
            ),
            (
                "action = \"allow\"\ncidr = \"::/0\"",
                &["exit.rules[0].cidr", "every internal address"],
            ),
        ] {
            let e = gateway(&format!("[[exit.rules]]\n{rule}\n"))
                .unwrap_err()
                .to_string();
            for f in fragments {
                assert!(e.contains(f), "{rule:?}: {e:?} lacks {f:?}");
            }
        }
        // A deny of everything is fine.
        gateway("[[exit.rules]]\naction = \"deny\"\ncidr = \"0.0.0.0/0\"\n").unwrap();
    }

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
