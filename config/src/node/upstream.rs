//! `role = "upstream"`: takes sealed cells from clients and forwards them to the central.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::NodeCommon;

/// `role = "upstream"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Where to accept client connections.
    pub listen: SocketAddr,
    /// Common settings.
    pub node: NodeCommon,
}
