//! `role = "relay"`: the mix; delays and batches response cells into client mailboxes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// Cells queued per client mailbox (default 4096); beyond that, new cells for it are
    /// dropped (and resent end to end). Before issue 8 this key sized the mixing pool.
    #[serde(default = "default_mailbox_cells")]
    pub mailbox_cells: u32,
    /// Cells the mixing pool holds for all mailboxes together (default 16384).
    #[serde(default = "default_pool_cells")]
    pub pool_cells: u32,
    /// Bytes all mailbox queues together may hold, in MiB (default 256).
    #[serde(default = "default_mailbox_budget_mib")]
    pub mailbox_budget_mib: u64,
    /// Mailboxes registered at once, all clients together (default 65536).
    #[serde(default = "default_max_mailboxes")]
    pub max_mailboxes: u32,
    /// Mailboxes one client connection may hold at once (default 8; a client holds one per
    /// session, two while it changes sessions).
    #[serde(default = "default_max_mailboxes_per_connection")]
    pub max_mailboxes_per_connection: u32,
    /// How long a client may take to send a registration once it opened its stream, and
    /// to register its first mailbox once connected; then the stream or the connection is
    /// closed (default 5000 ms).
    #[serde(default = "default_registration_timeout_ms")]
    pub registration_timeout_ms: u64,
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

fn default_mailbox_cells() -> u32 {
    4096
}

fn default_pool_cells() -> u32 {
    16_384
}

fn default_mailbox_budget_mib() -> u64 {
    256
}

fn default_max_mailboxes() -> u32 {
    65_536
}

fn default_max_mailboxes_per_connection() -> u32 {
    8
}

fn default_registration_timeout_ms() -> u64 {
    5000
}

impl RelayConfig {
    /// A relay on `listen` with every other setting at its default (no mixing).
    pub fn new(listen: SocketAddr, node: NodeCommon) -> Self {
        RelayConfig {
            listen,
            mix_delay_ms: 0.0,
            mailbox_cells: default_mailbox_cells(),
            pool_cells: default_pool_cells(),
            mailbox_budget_mib: default_mailbox_budget_mib(),
            max_mailboxes: default_max_mailboxes(),
            max_mailboxes_per_connection: default_max_mailboxes_per_connection(),
            registration_timeout_ms: default_registration_timeout_ms(),
            allow_sources: Vec::new(),
            deny_sources: Vec::new(),
            revoked: None,
            per_user_usage: false,
            node,
        }
    }

    /// Largest allowed `mix_delay_ms`.
    pub const MAX_MIX_DELAY_MS: f64 = 60_000.0;

    /// [`Self::mix_delay_ms`] as a `Duration` (the mean delay).
    pub fn mix_delay(&self) -> Duration {
        Duration::from_secs_f64(self.mix_delay_ms.clamp(0.0, Self::MAX_MIX_DELAY_MS) / 1000.0)
    }

    /// Largest allowed `registration_timeout_ms` (10 minutes).
    pub const MAX_REGISTRATION_TIMEOUT_MS: u64 = 600_000;

    /// Largest allowed `mailbox_budget_mib` (1 TiB).
    pub const MAX_MAILBOX_BUDGET_MIB: u64 = 1024 * 1024;

    /// [`Self::registration_timeout_ms`] as a `Duration`.
    pub fn registration_timeout(&self) -> Duration {
        Duration::from_millis(self.registration_timeout_ms)
    }

    /// [`Self::mailbox_budget_mib`] in bytes.
    pub fn mailbox_budget(&self) -> usize {
        check::bytes(self.mailbox_budget_mib, 1 << 20)
    }

    /// The mix delay is finite and in range; every cap holds at least one; the timeout and
    /// budget are in range.
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
        check::positive(
            file,
            &[
                ("mailbox_cells", u64::from(self.mailbox_cells)),
                ("pool_cells", u64::from(self.pool_cells)),
                ("mailbox_budget_mib", self.mailbox_budget_mib),
                ("max_mailboxes", u64::from(self.max_mailboxes)),
                (
                    "max_mailboxes_per_connection",
                    u64::from(self.max_mailboxes_per_connection),
                ),
                ("registration_timeout_ms", self.registration_timeout_ms),
            ],
        )?;
        if self.registration_timeout_ms > Self::MAX_REGISTRATION_TIMEOUT_MS {
            return Err(ConfigError::invalid(
                file,
                "registration_timeout_ms",
                format!(
                    "{} is out of range: must be 1 ..= {}",
                    self.registration_timeout_ms,
                    Self::MAX_REGISTRATION_TIMEOUT_MS
                ),
            ));
        }
        if self.mailbox_budget_mib > Self::MAX_MAILBOX_BUDGET_MIB {
            return Err(ConfigError::invalid(
                file,
                "mailbox_budget_mib",
                format!(
                    "{} is out of range: must be 1 ..= {}",
                    self.mailbox_budget_mib,
                    Self::MAX_MAILBOX_BUDGET_MIB
                ),
            ));
        }
        check::not_below(
            file,
            ("max_mailboxes", u64::from(self.max_mailboxes)),
            (
                "max_mailboxes_per_connection",
                u64::from(self.max_mailboxes_per_connection),
            ),
            Some("one connection could never reach its own cap"),
        )
    }
}
