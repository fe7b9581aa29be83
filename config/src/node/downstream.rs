//! `role = "downstream"`: carries response cells from the central to relays. It only
//! dials, so it has nothing beyond `[node]`.

use serde::{Deserialize, Serialize};

use super::NodeCommon;

/// `role = "downstream"` (nothing beyond `[node]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamConfig {
    /// Common settings.
    pub node: NodeCommon,
}
