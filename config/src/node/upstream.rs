//! `role = "upstream"`: takes sealed cells from clients and forwards them to the central.

use std::net::SocketAddr;
use std::path::Path;

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
    /// Common settings.
    pub node: NodeCommon,
}

fn default_client_queue_cells() -> u32 {
    256
}

fn default_central_queue_cells() -> u32 {
    4096
}

impl UpstreamConfig {
    /// An upstream on `listen` with every other setting at its default.
    pub fn new(listen: SocketAddr, node: NodeCommon) -> Self {
        UpstreamConfig {
            listen,
            client_queue_cells: default_client_queue_cells(),
            central_queue_cells: default_central_queue_cells(),
            node,
        }
    }

    /// Queues hold at least one cell; the whole queue holds at least one client's.
    pub(super) fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        check::positive(
            file,
            &[
                ("client_queue_cells", u64::from(self.client_queue_cells)),
                ("central_queue_cells", u64::from(self.central_queue_cells)),
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
