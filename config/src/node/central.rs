//! `role = "central"`: reorders and reassembles the sessions' cells and hands streams to
//! gateways.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NodeCommon;
use crate::check;
use crate::error::ConfigError;

/// `role = "central"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// Where to accept upstreams, downstreams and gateways.
    pub listen: SocketAddr,
    /// Per-session reorder window, in cells (default 1024).
    #[serde(default = "default_reorder_window_cells")]
    pub reorder_window_cells: u32,
    /// Per-session cap on buffered out-of-order bytes (default 16 MiB).
    #[serde(default = "default_session_reorder_bytes")]
    pub session_reorder_bytes: u64,
    /// Cap on buffered out-of-order bytes over all sessions (default 256 MiB).
    #[serde(default = "default_global_reorder_bytes")]
    pub global_reorder_bytes: u64,
    /// How long a gap may stay open before the session is dropped (default 60 s).
    #[serde(default = "default_reassembly_timeout_secs")]
    pub reassembly_timeout_secs: u64,
    /// How long a session may stay silent (no cell from its client) before it is
    /// dropped (default 60 s). Separate from `reassembly_timeout_secs`, which bounds a
    /// gap while cells still arrive.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
    /// Most sessions held at once (default 100000); a new session beyond it is refused.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// Common settings.
    pub node: NodeCommon,
}

fn default_reorder_window_cells() -> u32 {
    1024
}

fn default_session_reorder_bytes() -> u64 {
    16 * 1024 * 1024
}

fn default_global_reorder_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_reassembly_timeout_secs() -> u64 {
    60
}

fn default_idle_timeout_secs() -> u64 {
    60
}

fn default_max_sessions() -> u32 {
    100_000
}

impl CentralConfig {
    /// A central on `listen` with every other setting at its default.
    pub fn new(listen: SocketAddr, node: NodeCommon) -> Self {
        CentralConfig {
            listen,
            reorder_window_cells: default_reorder_window_cells(),
            session_reorder_bytes: default_session_reorder_bytes(),
            global_reorder_bytes: default_global_reorder_bytes(),
            reassembly_timeout_secs: default_reassembly_timeout_secs(),
            idle_timeout_secs: default_idle_timeout_secs(),
            max_sessions: default_max_sessions(),
            node,
        }
    }

    /// [`Self::reassembly_timeout_secs`] as a `Duration`.
    pub fn reassembly_timeout(&self) -> Duration {
        Duration::from_secs(self.reassembly_timeout_secs)
    }

    /// [`Self::idle_timeout_secs`] as a `Duration`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// Every limit is at least 1; the global reorder cap holds at least one session.
    pub(super) fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        check::positive(
            file,
            &[
                ("reorder_window_cells", u64::from(self.reorder_window_cells)),
                ("session_reorder_bytes", self.session_reorder_bytes),
                ("global_reorder_bytes", self.global_reorder_bytes),
                ("reassembly_timeout_secs", self.reassembly_timeout_secs),
                ("idle_timeout_secs", self.idle_timeout_secs),
                ("max_sessions", u64::from(self.max_sessions)),
            ],
        )?;
        check::not_below(
            file,
            ("global_reorder_bytes", self.global_reorder_bytes),
            ("session_reorder_bytes", self.session_reorder_bytes),
            Some("the global cap must hold at least one session"),
        )
    }
}
