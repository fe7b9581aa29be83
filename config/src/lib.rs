//! Braid's typed configuration.
//!
//! * [`Directory`] — the directory file (`directory.toml`): network-wide cell size and
//!   every node with its role, address and pinned keys.
//! * [`NodeConfig`] — `braid-node --config FILE`; `role` picks the variant.
//! * [`ClientConfig`] — `braid run --config FILE`.
//!
//! Load with [`load_directory`], [`load_node_config`], [`load_client_config`] (or their
//! `_with_env` forms to inject the override source). Each reads the file, applies
//! `BRAID_<PATH>` environment overrides (`BRAID_LISTEN`, `BRAID_NODE__ID`,
//! `BRAID_EXIT__ALLOW_LOOPBACK`; see [`env_var_name`]), deserializes with every table
//! denying unknown keys, resolves relative paths against the file's folder and
//! validates. Errors ([`ConfigError`]) name the file and the key path.
//!
//! Configs are plain data: once loaded and validated, treat them as immutable (share them
//! behind `Arc` rather than mutating).

mod check;
mod client;
mod credential;
mod de;
mod directory;
mod env;
mod error;
mod exit;
mod layout;
mod load;
mod node;
mod parse;

pub use client::{
    default_admin, parse_client_config, CentralChoice, ClientConfig, GatewayChoice, RouteRule,
    RouteVia, SocksAuthConfig,
};
pub use credential::{
    load_credential, load_join, load_revocations, parse_revocations, CredentialFile, JoinFile,
    NodeJoin, UserCredential,
};
pub use directory::{
    check_host, check_id, hex32, parse_directory, Directory, DirectoryTrust, NodeEntry, Role,
    UnknownRole, MAX_CELL_SIZE, MIN_CELL_SIZE,
};
pub use env::env_var_name;
pub use error::ConfigError;
pub use exit::{domain_covers, Cidr, ExitAction, ExitConfig, ExitRule, PortRange};
pub use layout::Layout;
pub use load::{
    load_client_config, load_client_config_with_env, load_directory, load_directory_with_env,
    load_node_config, load_node_config_with_env, load_trusted_directory, no_env, process_env,
};
pub use node::{
    parse_node_config, CentralConfig, DownstreamConfig, GatewayConfig, LogFormat, NodeCommon,
    NodeConfig, RelayConfig, UpstreamConfig, NOISE_KEY_FILE, TLS_CERT_FILE, TLS_KEY_FILE,
};
