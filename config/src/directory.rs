//! The directory file (`directory.toml`): the network-wide cell size and every node's
//! id, role, address and pinned public keys.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use braid_proto::frame::MAX_NODE_ID_LEN;

use crate::de::toml_quote;
use crate::env;
use crate::error::ConfigError;
use crate::parse::{parse_config, ConfigFile};

/// Smallest allowed network-wide cell size, in bytes (the cell codec's bound).
pub const MIN_CELL_SIZE: u32 = braid_proto::cell::MIN_CELL_SIZE as u32;
/// Largest allowed network-wide cell size, in bytes (the cell codec's bound).
pub const MAX_CELL_SIZE: u32 = braid_proto::cell::MAX_CELL_SIZE as u32;

/// The file name used for directories that were built in memory.
pub(crate) const IN_MEMORY: &str = "<in-memory directory>";

/// A node's role. One `braid-node` binary runs any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes sealed cells from clients and forwards them to the central.
    Upstream,
    /// Reorders and reassembles; hands streams to gateways.
    Central,
    /// Carries response cells from the central to relays.
    Downstream,
    /// Mix: delays and batches response cells; clients collect from its mailboxes.
    Relay,
    /// The exit; dials the central (works behind NAT).
    Gateway,
}

impl Role {
    /// Every role, in pipeline order.
    pub const ALL: [Role; 5] = [
        Role::Upstream,
        Role::Central,
        Role::Downstream,
        Role::Relay,
        Role::Gateway,
    ];

    /// The lower-case name used in TOML (`"upstream"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Upstream => "upstream",
            Role::Central => "central",
            Role::Downstream => "downstream",
            Role::Relay => "relay",
            Role::Gateway => "gateway",
        }
    }

    /// Whether nodes of this role accept connections (and so need an `addr` in the
    /// directory): upstream, central and relay. Downstreams and gateways only dial.
    pub fn listens(self) -> bool {
        matches!(self, Role::Upstream | Role::Central | Role::Relay)
    }

    /// The role's byte in signed join credentials and descriptors: 1 to 5, pipeline order.
    pub fn code(self) -> u8 {
        Role::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8 + 1
    }

    /// Inverse of [`Role::code`].
    pub fn from_code(code: u8) -> Option<Role> {
        Role::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for [`Role::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected one of upstream, central, downstream, relay, gateway")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// One node of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Unique id: 1..=32 characters of `[a-z0-9-]`.
    pub id: String,
    /// The node's role.
    pub role: Role,
    /// Where the node listens. Required for upstream, central and relay; optional
    /// (normally absent) for downstream and gateway, which only dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<SocketAddr>,
    /// Instead of `addr`: a DNS name and port (`"central-1:7400"`) dialled by name, looked
    /// up at each dial. For orchestrators that name nodes but do not fix their addresses
    /// (a docker swarm stack). A listening node needs `addr` or `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// X25519 static public key (Noise), hex in TOML.
    #[serde(with = "hex32")]
    pub noise_key: [u8; 32],
    /// Ed25519 TLS public key (pinned for QUIC), hex in TOML.
    #[serde(with = "hex32")]
    pub tls_key: [u8; 32],
}

impl NodeEntry {
    /// The entry a verified join descriptor stands for; `None` when its role byte names no
    /// role or its id is not a valid node id.
    pub fn from_descriptor(d: &braid_proto::join::Descriptor) -> Option<NodeEntry> {
        check_id(&d.id).ok()?;
        Some(NodeEntry {
            id: d.id.clone(),
            role: Role::from_code(d.role)?,
            addr: d.addr,
            host: None,
            noise_key: d.noise_key,
            tls_key: d.tls_key,
        })
    }

    /// Build an entry (checked by [`Directory::validate`]).
    pub fn new(
        id: impl Into<String>,
        role: Role,
        addr: Option<SocketAddr>,
        noise_key: [u8; 32],
        tls_key: [u8; 32],
    ) -> Self {
        NodeEntry {
            id: id.into(),
            role,
            addr,
            host: None,
            noise_key,
            tls_key,
        }
    }

    /// Whether other nodes can dial this one (it has an `addr` or a `host`).
    pub fn dialable(&self) -> bool {
        self.addr.is_some() || self.host.is_some()
    }

    /// Where to dial this node now: its `addr`, or its `host` looked up (blocking: for
    /// start-up; links look up with tokio). `None` when it has neither or the name does
    /// not resolve.
    pub fn resolve_blocking(&self) -> Option<SocketAddr> {
        use std::net::ToSocketAddrs;
        match (&self.addr, &self.host) {
            (Some(a), _) => Some(*a),
            (None, Some(h)) => h.to_socket_addrs().ok()?.next(),
            (None, None) => None,
        }
    }
}

/// Checks a `host` value: `NAME:PORT`, NAME a DNS name (letters, digits, `-`, `.`; at
/// most 253 characters), PORT not 0.
pub fn check_host(host: &str) -> Result<(), String> {
    let Some((name, port)) = host.rsplit_once(':') else {
        return Err(format!("host `{host}` has no port (want NAME:PORT)"));
    };
    if name.is_empty()
        || name.len() > 253
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!(
            "host `{host}`: `{name}` is not a DNS name (letters, digits, '-' and '.')"
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("host `{host}` has no valid port")),
    }
}

/// The directory: network-wide cell size plus every node.
///
/// Build one by loading a file ([`crate::load_directory`]), parsing text
/// ([`Directory::from_toml_str`]), or in memory ([`Directory::new`] then
/// [`Directory::validate`], or [`Directory::validated`] for both at once).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    /// Cell size in bytes, the same for the whole network: 1024..=16384.
    pub cell_size: u32,
    /// The operator's Ed25519 public key, hex. When set, first hops (upstreams and relays)
    /// serve only clients with a credential it signed (`braid_proto::credential`); when
    /// absent, anyone who has the directory may use the network.
    #[serde(default, with = "hex32_opt", skip_serializing_if = "Option::is_none")]
    pub operator_key: Option<[u8; 32]>,
    /// The directory's version: a node refuses one older than the newest it has taken.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// Unix seconds from which the directory is refused (0: never; a signed directory
    /// should expire, so that an old one cannot be replayed for ever).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expires: u64,
    /// The operator's Ed25519 signature (hex) over the directory's canonical body
    /// ([`Directory::signed_body`]: everything above and every node), made by
    /// `braid-node directory sign`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Every node, in file order (`[[nodes]]` tables).
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Why a directory is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryTrust {
    #[error("the directory is not signed (directory_key is set: sign it with `braid-node directory sign`)")]
    Unsigned,
    #[error("the directory's signature is malformed")]
    MalformedSignature,
    #[error("the directory's signature does not verify with the operator key (a bad signature, or an edited directory)")]
    BadSignature,
    #[error("the directory names operator_key {named} but directory_key pins {pinned}")]
    OtherOperator { named: String, pinned: String },
    #[error("the directory expired at {expires} (Unix seconds; now {now})")]
    Expired { expires: u64, now: u64 },
    #[error("the directory is version {got}, older than version {held} taken before")]
    Older { got: u64, held: u64 },
}

impl Directory {
    /// A directory from parts, not yet validated.
    pub fn new(cell_size: u32, nodes: Vec<NodeEntry>) -> Self {
        Directory {
            cell_size,
            operator_key: None,
            version: 0,
            expires: 0,
            signature: None,
            nodes,
        }
    }

    /// A directory from parts, validated.
    pub fn validated(cell_size: u32, nodes: Vec<NodeEntry>) -> Result<Self, ConfigError> {
        let dir = Directory::new(cell_size, nodes);
        dir.validate()?;
        Ok(dir)
    }

    /// Parse and validate directory TOML text (no environment overrides). Errors name
    /// the file as `<directory>`.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        parse_directory(text, Path::new("<directory>"), &|_: &str| None)
    }

    /// Check every rule: cell size range, id syntax and uniqueness, role counts (at
    /// least one of each role), addresses
    /// where required and unique, keys unique and non-zero.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_in(Path::new(IN_MEMORY))
    }
}

impl ConfigFile for Directory {
    const ENV_KEYS: &'static [(&'static str, env::Kind)] = env::DIRECTORY_KEYS;

    fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            message,
        };
        if !(MIN_CELL_SIZE..=MAX_CELL_SIZE).contains(&self.cell_size) {
            return Err(invalid(
                "cell_size".into(),
                format!(
                    "cell size {} is out of range: must be {MIN_CELL_SIZE}..={MAX_CELL_SIZE} bytes",
                    self.cell_size
                ),
            ));
        }

        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut noise: BTreeMap<[u8; 32], &str> = BTreeMap::new();
        let mut tls: BTreeMap<[u8; 32], &str> = BTreeMap::new();
        let mut addrs: BTreeMap<SocketAddr, &str> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let at = |field: &str| format!("nodes[{i}].{field}");
            check_id(&n.id).map_err(|m| invalid(at("id"), m))?;
            if let Some(first) = ids.insert(&n.id, i) {
                return Err(invalid(
                    at("id"),
                    format!("duplicate node id `{}` (also used by nodes[{first}])", n.id),
                ));
            }
            if let Some(h) = &n.host {
                check_host(h).map_err(|m| invalid(at("host"), m))?;
                if n.addr.is_some() {
                    return Err(invalid(
                        at("host"),
                        format!("node `{}` has both addr and host: give one", n.id),
                    ));
                }
            }
            match n.addr {
                None if n.role.listens() && n.host.is_none() => {
                    return Err(invalid(
                        at("addr"),
                        format!(
                            "node `{}` is a {} and listens for connections, so it needs an addr (or a host)",
                            n.id, n.role
                        ),
                    ))
                }
                None => {}
                Some(a) => {
                    if a.ip().is_unspecified() || a.port() == 0 {
                        return Err(invalid(
                            at("addr"),
                            format!(
                                "node `{}` has addr {a}: other nodes dial it, so it needs a concrete IP and a non-zero port",
                                n.id
                            ),
                        ));
                    }
                    if let Some(other) = addrs.insert(a, &n.id) {
                        return Err(invalid(
                            at("addr"),
                            format!(
                                "node `{}` has addr {a}, already used by node `{other}`",
                                n.id
                            ),
                        ));
                    }
                }
            }
            for (field, key, seen) in [
                ("noise_key", &n.noise_key, &mut noise),
                ("tls_key", &n.tls_key, &mut tls),
            ] {
                if key.iter().all(|b| *b == 0) {
                    return Err(invalid(
                        at(field),
                        format!("node `{}` has an all-zero {field}", n.id),
                    ));
                }
                if let Some(other) = seen.insert(*key, &n.id) {
                    return Err(invalid(
                        at(field),
                        format!("node `{}` has the same {field} as node `{other}`", n.id),
                    ));
                }
            }
        }

        for role in Role::ALL {
            let count = self.nodes_with_role(role).count();
            if count == 0 {
                return Err(invalid(
                    "nodes".into(),
                    format!("the directory must hold at least one {role} node, found none"),
                ));
            }
        }
        Ok(())
    }
}

impl Directory {
    /// The bytes the operator signs: `BRDD · v1 · cell_size u32 · version u64 · expires u64 ·
    /// operator_key[32] (zeros if none) · n u16 · n × (id_len u8 · id · role u8 · addr ·
    /// noise_key[32] · tls_key[32])`, `addr` being `0`, `4 · ip[4] · port u16` or
    /// `6 · ip[16] · port u16`. Built from the parsed directory, so the file's layout,
    /// comments and key order do not matter.
    pub fn signed_body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.nodes.len() * 110);
        b.extend_from_slice(b"BRDD\x02");
        b.extend_from_slice(&self.cell_size.to_be_bytes());
        b.extend_from_slice(&self.version.to_be_bytes());
        b.extend_from_slice(&self.expires.to_be_bytes());
        b.extend_from_slice(&self.operator_key.unwrap_or([0; 32]));
        b.extend_from_slice(&(self.nodes.len() as u16).to_be_bytes());
        for n in &self.nodes {
            b.push(n.id.len() as u8);
            b.extend_from_slice(n.id.as_bytes());
            b.push(Role::ALL.iter().position(|r| *r == n.role).unwrap_or(0) as u8);
            braid_proto::join::put_addr(&mut b, n.addr);
            let host = n.host.as_deref().unwrap_or_default().as_bytes();
            b.push(host.len().min(255) as u8);
            b.extend_from_slice(&host[..host.len().min(255)]);
            b.extend_from_slice(&n.noise_key);
            b.extend_from_slice(&n.tls_key);
        }
        b
    }

    /// Signs the directory with the operator key (whose public half it names from now on).
    pub fn sign(&mut self, operator: &braid_proto::credential::SigningKey) {
        self.operator_key = Some(operator.public());
        let sig = braid_proto::credential::sign_directory(operator, &self.signed_body());
        self.signature = Some(hex::encode(sig));
    }

    /// Checks the directory against the operator key a node or client pins
    /// (`directory_key`), the clock (`now`, Unix seconds) and the newest version taken
    /// before (`held`).
    pub fn verify(&self, pinned: &[u8; 32], now: u64, held: u64) -> Result<(), DirectoryTrust> {
        let sig = self.signature.as_deref().ok_or(DirectoryTrust::Unsigned)?;
        let mut s = [0u8; braid_proto::credential::SIG_LEN];
        hex::decode_to_slice(sig, &mut s).map_err(|_| DirectoryTrust::MalformedSignature)?;
        if let Some(named) = self.operator_key.filter(|k| k != pinned) {
            return Err(DirectoryTrust::OtherOperator {
                named: hex::encode(named),
                pinned: hex::encode(pinned),
            });
        }
        if !braid_proto::credential::directory_signed_by(pinned, &self.signed_body(), &s) {
            return Err(DirectoryTrust::BadSignature);
        }
        if self.expires != 0 && now >= self.expires {
            return Err(DirectoryTrust::Expired {
                expires: self.expires,
                now,
            });
        }
        if self.version < held {
            return Err(DirectoryTrust::Older {
                got: self.version,
                held,
            });
        }
        Ok(())
    }

    /// The nodes of one role, in file order.
    pub fn nodes_with_role(&self, role: Role) -> impl Iterator<Item = &NodeEntry> + '_ {
        self.nodes.iter().filter(move |n| n.role == role)
    }

    /// The central nodes (at least one in a validated directory), in file order.
    pub fn centrals(&self) -> impl Iterator<Item = &NodeEntry> + '_ {
        self.nodes_with_role(Role::Central)
    }

    /// The node with this id.
    pub fn by_id(&self, id: &str) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The node whose TLS key this is (to identify an authenticated peer).
    pub fn by_tls_key(&self, key: &[u8; 32]) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| &n.tls_key == key)
    }

    /// The node whose Noise static key this is.
    pub fn by_noise_key(&self, key: &[u8; 32]) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| &n.noise_key == key)
    }

    /// Every node's TLS key (the pin set for QUIC links), in file order.
    pub fn all_tls_keys(&self) -> impl Iterator<Item = &[u8; 32]> + '_ {
        self.nodes.iter().map(|n| &n.tls_key)
    }

    /// The set of ids (handy for membership checks).
    pub fn ids(&self) -> BTreeSet<&str> {
        self.nodes.iter().map(|n| n.id.as_str()).collect()
    }

    /// The directory as TOML text in the file format, loadable by
    /// [`crate::load_directory`]. Does not validate.
    pub fn to_toml_string(&self) -> String {
        let mut out = String::new();
        out.push_str("# Braid directory: every node of the network and its pinned keys.\n");
        out.push_str(&format!("cell_size = {}\n", self.cell_size));
        if let Some(k) = self.operator_key {
            out.push_str(&format!("operator_key = \"{}\"\n", hex::encode(k)));
        }
        if self.version != 0 {
            out.push_str(&format!("version = {}\n", self.version));
        }
        if self.expires != 0 {
            out.push_str(&format!("expires = {}\n", self.expires));
        }
        if let Some(sig) = &self.signature {
            out.push_str(&format!("signature = {}\n", toml_quote(sig)));
        }
        for n in &self.nodes {
            out.push_str("\n[[nodes]]\n");
            out.push_str(&format!("id = {}\n", toml_quote(&n.id)));
            out.push_str(&format!("role = \"{}\"\n", n.role));
            if let Some(addr) = n.addr {
                out.push_str(&format!("addr = \"{addr}\"\n"));
            }
            if let Some(host) = &n.host {
                out.push_str(&format!("host = {}\n", toml_quote(host)));
            }
            out.push_str(&format!("noise_key = \"{}\"\n", hex::encode(n.noise_key)));
            out.push_str(&format!("tls_key = \"{}\"\n", hex::encode(n.tls_key)));
        }
        out
    }
}

/// Parse and validate directory text; `file` names it in errors.
pub fn parse_directory(
    text: &str,
    file: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Directory, ConfigError> {
    parse_config(text, file, env)
}

/// Check a node id: 1..=32 characters of `[a-z0-9-]`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err(format!(
            "node id {id:?} must be 1..={MAX_NODE_ID_LEN} characters long, is {}",
            id.chars().count()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "node id {id:?} contains {c:?}: only lower-case letters, digits and '-' are allowed"
        ));
    }
    Ok(())
}

/// Serde helpers for 32-byte keys written as 64 hex digits.
/// An optional [`hex32`] key.
pub mod hex32_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
        match key {
            Some(k) => super::hex32::serialize(k, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
        let text = String::deserialize(d)?;
        super::hex32::decode(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Write a key as 64 lower-case hex digits.
    pub fn serialize<S: Serializer>(key: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(key))
    }

    /// Read a key from 64 hex digits.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        decode(&text).map_err(serde::de::Error::custom)
    }

    /// Decode 64 hex digits into a key, with an operator-facing error.
    pub fn decode(text: &str) -> Result<[u8; 32], String> {
        let mut key = [0u8; 32];
        if text.len() != 64 {
            return Err(format!(
                "bad hex key: expected 64 hex digits (a 32-byte key), got {} characters",
                text.chars().count()
            ));
        }
        hex::decode_to_slice(text, &mut key).map_err(|e| format!("bad hex key: {e}"))?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_round_trip() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("exit".parse::<Role>().is_err());
    }

    #[test]
    fn ids() {
        assert!(check_id("central-1").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("Central").is_err());
        assert!(check_id(&"a".repeat(33)).is_err());
        assert!(check_id(&"a".repeat(32)).is_ok());
    }

    #[test]
    fn hex_decode() {
        assert!(hex32::decode(&"ab".repeat(32)).is_ok());
        assert!(hex32::decode("abc").is_err_and(|e| e.contains("64 hex digits")));
        assert!(hex32::decode(&"zz".repeat(32)).is_err_and(|e| e.contains("bad hex key")));
    }
}
