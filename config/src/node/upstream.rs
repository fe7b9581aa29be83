//! `role = "upstream"`: takes sealed cells from clients and forwards them to the central.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::NodeCommon;
use crate::check;
use crate::error::ConfigError;

/// `role = "upstream"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Where to accept client connections.
    pub listen: SocketAddr,
    /// Cells one client may have queued toward one central (default 256). Clients are
    /// served in turn, so one that floods fills only its own queue.
    #[serde(default = "default_client_queue_cells")]
    pub client_queue_cells: u32,
    /// Cells queued toward one central over all clients (default 4096).
    #[serde(default = "default_central_queue_cells")]
    pub central_queue_cells: u32,
    /// How long a client has to present its credential once connected, in milliseconds
    /// (default 5000; only with an `operator_key` in the directory).
    #[serde(default = "default_auth_timeout_ms")]
    pub auth_timeout_ms: u64,
    /// Client source networks allowed to connect (CIDR, e.g. `"203.0.113.0/24"`); empty
    /// (default) allows every source. Directory peers are not filtered.
    #[serde(default)]
    pub allow_sources: Vec<crate::Cidr>,
    /// Client source networks refused, even inside `allow_sources` (default none).
    #[serde(default)]
    pub deny_sources: Vec<crate::Cidr>,
    /// The revocation list: credential ids (hex, one per line, `#` comments) this first
    /// hop refuses even though the operator signed them. Read at start. Only used when the
    /// directory has an `operator_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<PathBuf>,
    /// Count each user's bytes by name in `/metrics` (`braid_user_bytes_by_user_total`).
    /// Off by default: per-user counters are a record of who used how much; the aggregate
    /// `braid_user_bytes_total` is always there. Reloadable.
    #[serde(default)]
    pub per_user_usage: bool,
    /// Common settings.
    pub node: NodeCommon,
}

fn default_client_queue_cells() -> u32 {
    256
}

fn default_central_queue_cells() -> u32 {
    4096
}

fn default_auth_timeout_ms() -> u64 {
    5000
}

impl UpstreamConfig {
    /// An upstream on `listen` with every other setting at its default.
    pub fn new(listen: SocketAddr, node: NodeCommon) -> Self {
        UpstreamConfig {
            listen,
            client_queue_cells: default_client_queue_cells(),
            central_queue_cells: default_central_queue_cells(),
            auth_timeout_ms: default_auth_timeout_ms(),
            allow_sources: Vec::new(),
            deny_sources: Vec::new(),
            revoked: None,
            per_user_usage: false,
            node,
        }
    }

    /// [`Self::auth_timeout_ms`] as a duration.
    pub fn auth_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.auth_timeout_ms)
    }

    /// Queues hold at least one cell; the whole queue holds at least one client's.
    pub(super) fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        check::positive(
            file,
            &[
                ("client_queue_cells", u64::from(self.client_queue_cells)),
                ("central_queue_cells", u64::from(self.central_queue_cells)),
                ("auth_timeout_ms", self.auth_timeout_ms),
            ],
        )?;
        check::not_below(
            file,
            ("central_queue_cells", u64::from(self.central_queue_cells)),
            ("client_queue_cells", u64::from(self.client_queue_cells)),
            Some("the whole queue must hold at least one client's"),
        )
    }
}
