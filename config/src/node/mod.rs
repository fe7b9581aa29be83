//! The node config (`braid-node --config FILE`): a `role` key picks the variant, a
//! `[node]` table holds what every role has, and the role's own keys sit at top level.
//!
//! This module holds what every role shares ([`NodeConfig`], [`NodeCommon`],
//! [`LogFormat`], the identity file names) and the role dispatch of parsing and
//! validation; each role's own keys, defaults and rules live in its submodule. The
//! gateway's exit policy value types are in `crate::exit`.

mod central;
mod downstream;
mod gateway;
mod relay;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

pub use central::CentralConfig;
pub use downstream::DownstreamConfig;
pub use gateway::GatewayConfig;
pub use relay::RelayConfig;
pub use upstream::UpstreamConfig;

use crate::check;
use crate::de::{scalar_repr, toml_quote, KeyPath};
use crate::directory::{check_id, Directory, NodeEntry, Role};
use crate::env;
use crate::error::ConfigError;
use crate::parse::{parse_config, ConfigFile, Source};

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
    /// The operator's public key (hex) this node trusts the directory from: the directory
    /// must be signed by it, unexpired, and no older than the last one taken. Unset: an
    /// unsigned directory is taken (a signed one must still verify).
    #[serde(
        default,
        with = "crate::directory::hex32_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub directory_key: Option<[u8; 32]>,
    /// Admin HTTP address (`/health`, `/metrics`); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// Log format.
    #[serde(default)]
    pub log: LogFormat,
    /// What to log, as `tracing` filter directives (`"info"`, `"debug,quinn=warn"`).
    /// Unset: `BRAID_LOG_FILTER`, else `info`. Reloadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// How often the node looks at its config file (and its revocation list) for a change,
    /// and reloads as on SIGHUP when one changed, in milliseconds (default 2000; 0: only
    /// on SIGHUP).
    #[serde(default = "default_reload_watch_ms")]
    pub reload_watch_ms: u64,
    /// On SIGTERM the node stops accepting, lets live streams finish for at most this
    /// long, then closes.
    #[serde(default = "default_drain_timeout_secs")]
    pub drain_timeout_secs: u64,
    /// Connections a listening node (upstream, relay) holds at once (default 16384); past
    /// it a new one is refused.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections one address may hold at once (default 256).
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: u32,
    /// While more than this many QUIC handshakes are in flight, a peer whose address is not
    /// yet validated is sent a Retry first (default 64; 0 validates every address).
    #[serde(default = "default_retry_above_handshakes")]
    pub retry_above_handshakes: u32,
    /// A join file (`braid-node operator join`): this node is not in the directory but
    /// joins the running network. It makes its keys in `identity` if there are none, signs
    /// a descriptor with the file's join key and registers it with every central. Resolved
    /// against the config file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<PathBuf>,
    /// The address a joining listener (upstream) announces. Unset: its listen port on the
    /// address it reaches its centrals from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<SocketAddr>,
    /// How long a joining node's descriptor holds, in seconds (default 120); the node
    /// refreshes it every third of that, and a central forgets it once it lapses.
    #[serde(default = "default_descriptor_lifetime_secs")]
    pub descriptor_lifetime_secs: u64,
    /// Nodes that joined (not in the directory) a central or relay holds at once (default
    /// 1024); past it a new one is refused until one leaves or lapses.
    #[serde(default = "default_max_joined_nodes")]
    pub max_joined_nodes: u32,
}

fn default_max_joined_nodes() -> u32 {
    1024
}

/// The shortest descriptor life a node may set: three refreshes must fit, and a life of
/// `braid_proto::join::LEAVING_SECS` or less means "leaving".
pub const MIN_DESCRIPTOR_LIFETIME_SECS: u64 = 15;

fn default_descriptor_lifetime_secs() -> u64 {
    120
}

fn default_reload_watch_ms() -> u64 {
    2000
}

fn default_drain_timeout_secs() -> u64 {
    30
}

fn default_max_connections() -> u32 {
    16_384
}

fn default_max_connections_per_ip() -> u32 {
    256
}

fn default_retry_above_handshakes() -> u32 {
    64
}

impl NodeCommon {
    /// [`Self::drain_timeout_secs`] as a `Duration`.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }

    /// How often to look for a changed config file; None: only on SIGHUP.
    pub fn reload_watch(&self) -> Option<Duration> {
        (self.reload_watch_ms > 0).then(|| Duration::from_millis(self.reload_watch_ms))
    }

    /// `[node]` for `id` with the given files and every other setting at its default.
    pub fn new(id: impl Into<String>, directory: PathBuf, identity: PathBuf) -> Self {
        NodeCommon {
            id: id.into(),
            directory,
            identity,
            directory_key: None,
            admin: None,
            log: LogFormat::default(),
            log_level: None,
            reload_watch_ms: default_reload_watch_ms(),
            drain_timeout_secs: default_drain_timeout_secs(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            retry_above_handshakes: default_retry_above_handshakes(),
            join: None,
            advertise: None,
            descriptor_lifetime_secs: default_descriptor_lifetime_secs(),
            max_joined_nodes: default_max_joined_nodes(),
        }
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

    /// Id syntax and non-empty paths.
    fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        check_id(&self.id).map_err(|m| ConfigError::invalid(file, "node.id", m))?;
        if self.descriptor_lifetime_secs < MIN_DESCRIPTOR_LIFETIME_SECS {
            return Err(ConfigError::invalid(
                file,
                "node.descriptor_lifetime_secs",
                format!("must be at least {MIN_DESCRIPTOR_LIFETIME_SECS} (a shorter life reads as leaving)"),
            ));
        }
        check::positive(
            file,
            &[
                ("node.max_connections", u64::from(self.max_connections)),
                ("node.max_joined_nodes", u64::from(self.max_joined_nodes)),
                (
                    "node.max_connections_per_ip",
                    u64::from(self.max_connections_per_ip),
                ),
            ],
        )?;
        check::non_empty(
            file,
            &[
                ("node.directory", &self.directory),
                ("node.identity", &self.identity),
            ],
        )
    }

    /// The directory file and the identity folder with its three files exist.
    fn check_files(&self, file: &Path) -> Result<(), ConfigError> {
        let missing = |key: &str, what: &'static str, path: &Path| ConfigError::MissingPath {
            file: file.to_owned(),
            key: key.to_owned(),
            what,
            path: path.to_owned(),
        };
        if !self.directory.is_file() {
            return Err(missing(
                "node.directory",
                "the directory file",
                &self.directory,
            ));
        }
        let identity_complete = [
            self.noise_key_path(),
            self.tls_key_path(),
            self.tls_cert_path(),
        ]
        .iter()
        .all(|p| p.is_file());
        if let (Some(join), false) = (&self.join, identity_complete) {
            // A joining node makes its keys when it has none, with its join file.
            if !join.is_file() {
                return Err(missing("node.join", "the join file", join));
            }
            return Ok(());
        }
        if !self.identity.is_dir() {
            return Err(missing(
                "node.identity",
                "the identity folder",
                &self.identity,
            ));
        }
        for (what, path) in [
            ("the Noise static key file", self.noise_key_path()),
            ("the TLS private key file", self.tls_key_path()),
            ("the TLS certificate file", self.tls_cert_path()),
        ] {
            if !path.is_file() {
                return Err(missing("node.identity", what, &path));
            }
        }
        Ok(())
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

    /// The config as TOML (e.g. to print the effective configuration).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Invalid {
            file: PathBuf::from("<node config>"),
            key: "<top level>".into(),
            message: format!("cannot serialize: {e}"),
        })
    }
}

/// Parse and validate node config text, except for file existence; `file` names it in
/// errors and its folder is the base for relative paths.
pub fn parse_node_config(
    text: &str,
    file: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<NodeConfig, ConfigError> {
    parse_config(text, file, env)
}

impl ConfigFile for NodeConfig {
    /// Only the role at first: it decides which keys follow.
    const ENV_KEYS: &'static [(&'static str, env::Kind)] = env::NODE_ROLE_KEY;

    /// The role first (its override included), then the `[node]` keys and the role's
    /// own, then deserialize into the role's variant.
    fn from_table(mut table: Table, src: &mut Source<'_>) -> Result<Self, ConfigError> {
        src.apply(&mut table, Self::ENV_KEYS)?;
        let role_path = KeyPath::dotted("role");
        let bad_role = |value: Option<String>, message: String| ConfigError::InvalidValue {
            file: src.file().to_owned(),
            key: "role".into(),
            value,
            message,
            env_var: src.var_for(&role_path),
        };
        let role = match table.remove("role") {
            None => {
                return Err(ConfigError::MissingKey {
                    file: src.file().to_owned(),
                    key: "role".into(),
                })
            }
            Some(Value::String(s)) => s.parse::<Role>().map_err(|_| {
                bad_role(
                    Some(toml_quote(&s)),
                    "unknown role: expected one of upstream, central, downstream, relay, gateway"
                        .into(),
                )
            })?,
            Some(other) => {
                return Err(bad_role(
                    scalar_repr(&other),
                    format!(
                        "expected a string naming the role, got a {}",
                        other.type_str()
                    ),
                ))
            }
        };
        src.apply(&mut table, env::NODE_COMMON_KEYS)?;
        let role_keys = match role {
            Role::Upstream => env::UPSTREAM_KEYS,
            Role::Central => env::CENTRAL_KEYS,
            Role::Downstream => env::DOWNSTREAM_KEYS,
            Role::Relay => env::RELAY_KEYS,
            Role::Gateway => env::GATEWAY_KEYS,
        };
        src.apply(&mut table, role_keys)?;

        let value = Value::Table(table);
        Ok(match role {
            Role::Upstream => NodeConfig::Upstream(src.typed(value)?),
            Role::Central => NodeConfig::Central(src.typed(value)?),
            Role::Downstream => NodeConfig::Downstream(src.typed(value)?),
            Role::Relay => NodeConfig::Relay(src.typed(value)?),
            Role::Gateway => NodeConfig::Gateway(src.typed(value)?),
        })
    }

    fn relative_paths(&mut self) -> Vec<&mut PathBuf> {
        let (common, revoked) = match self {
            NodeConfig::Upstream(c) => (&mut c.node, c.revoked.as_mut()),
            NodeConfig::Relay(c) => (&mut c.node, c.revoked.as_mut()),
            NodeConfig::Central(c) => (&mut c.node, None),
            NodeConfig::Downstream(c) => (&mut c.node, None),
            NodeConfig::Gateway(c) => (&mut c.node, None),
        };
        let mut paths = vec![&mut common.directory, &mut common.identity];
        paths.extend(revoked);
        paths.extend(common.join.as_mut());
        paths
    }

    /// Check the rules that need no file system: id syntax, non-empty paths, then the
    /// role's own rules (numeric ranges, exit rules, host names).
    fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        self.common().validate_in(file)?;
        match self {
            NodeConfig::Downstream(_) => Ok(()),
            NodeConfig::Upstream(c) => c.validate_in(file),
            NodeConfig::Central(c) => c.validate_in(file),
            NodeConfig::Relay(c) => c.validate_in(file),
            NodeConfig::Gateway(c) => c.validate_in(file),
        }
    }

    /// Check that the directory file and the identity folder with its three files
    /// exist.
    fn check_files(&self, file: &Path) -> Result<(), ConfigError> {
        self.common().check_files(file)
    }
}
