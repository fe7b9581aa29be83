//! `role = "relay"`: the mix; delays and batches response cells into client mailboxes.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NodeCommon;
use crate::check;
use crate::error::ConfigError;

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
    #[serde(default = "default_mailbox_cells")]
    pub mailbox_cells: u32,
    /// Common settings.
    pub node: NodeCommon,
}

fn default_mailbox_cells() -> u32 {
    4096
}

impl RelayConfig {
    /// A relay on `listen` with every other setting at its default (no mixing).
    pub fn new(listen: SocketAddr, node: NodeCommon) -> Self {
        RelayConfig {
            listen,
            mix_delay_ms: 0.0,
            mailbox_cells: default_mailbox_cells(),
            node,
        }
    }

    /// Largest allowed `mix_delay_ms`.
    pub const MAX_MIX_DELAY_MS: f64 = 60_000.0;

    /// [`Self::mix_delay_ms`] as a `Duration` (the mean delay).
    pub fn mix_delay(&self) -> Duration {
        Duration::from_secs_f64(self.mix_delay_ms.clamp(0.0, Self::MAX_MIX_DELAY_MS) / 1000.0)
    }

    /// The mix delay is finite and in range; mailboxes hold at least one cell.
    pub(super) fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        if !(self.mix_delay_ms.is_finite()
            && (0.0..=Self::MAX_MIX_DELAY_MS).contains(&self.mix_delay_ms))
        {
            return Err(ConfigError::invalid(
                file,
                "mix_delay_ms",
                format!(
                    "{} is out of range: must be 0.0 (no mixing) ..= {}",
                    self.mix_delay_ms,
                    Self::MAX_MIX_DELAY_MS
                ),
            ));
        }
        check::positive(file, &[("mailbox_cells", u64::from(self.mailbox_cells))])
    }
}
