//! From a node's config to its running role: the one mapping of each role's config to its
//! runtime parameters, used by `braid-node` and by `braid demo` alike.

use std::net::SocketAddr;

use braid_config::{CentralConfig, GatewayConfig, NodeConfig, RelayConfig};

use crate::exit::ExitPolicy;
use crate::{central, downstream, gateway, relay, upstream, NodeContext};

/// Runs the role `cfg` names until `ctx` stops it. `bind` is where a node that only dials
/// (downstream, gateway) binds its endpoint.
pub async fn run(ctx: NodeContext, cfg: NodeConfig, bind: SocketAddr) -> anyhow::Result<()> {
    match cfg {
        NodeConfig::Upstream(c) => upstream::run(ctx, c.listen).await,
        NodeConfig::Central(c) => {
            let params = central_params(&c, &ctx);
            central::run(ctx, params).await
        }
        NodeConfig::Downstream(_) => downstream::run(ctx, bind).await,
        NodeConfig::Relay(c) => relay::run(ctx, relay_params(&c)).await,
        NodeConfig::Gateway(c) => gateway::run(ctx, gateway_params(&c, bind)).await,
    }
}

pub fn central_params(c: &CentralConfig, ctx: &NodeContext) -> central::CentralParams {
    central::CentralParams {
        listen: c.listen,
        session: crate::central_session_config(
            &ctx.directory,
            c.reorder_window_cells,
            c.session_reorder_bytes,
        ),
        idle_timeout: c.idle_timeout(),
        reassembly_timeout: c.reassembly_timeout(),
        global_reorder_bytes: usize::try_from(c.global_reorder_bytes).unwrap_or(usize::MAX),
        max_sessions: usize::try_from(c.max_sessions).unwrap_or(usize::MAX),
    }
}

pub fn relay_params(c: &RelayConfig) -> relay::RelayParams {
    relay::RelayParams {
        listen: c.listen,
        mix_delay: c.mix_delay(),
        pool_cells: c.mailbox_cells as usize,
    }
}

pub fn gateway_params(c: &GatewayConfig, bind: SocketAddr) -> gateway::GatewayParams {
    gateway::GatewayParams {
        bind,
        connect_timeout: c.connect_timeout(),
        policy: ExitPolicy {
            allow_loopback: c.exit.allow_loopback,
            allow_private: c.exit.allow_private,
            rules: c.exit.rules.clone(),
            // gateway::run adds the directory's node addresses.
            node_addrs: Default::default(),
            // gateway::run reads the host's interfaces.
            local_addrs: Default::default(),
        },
        hosts: c.hosts.clone(),
        reconnect_min: c.reconnect_min(),
        reconnect_max: c.reconnect_max(),
        max_streams: c.max_streams,
        link_idle_timeout: c.link_idle_timeout(),
        resume_grace: c.resume_grace(),
        resume_buffer: c.resume_buffer(),
        resume_budget: c.resume_budget(),
        max_dns_lookups: usize::try_from(c.max_dns_lookups).unwrap_or(usize::MAX),
        dns_timeout: c.dns_timeout(),
        local_addrs_refresh: c.local_addrs_refresh(),
        log_destinations: c.log_destinations,
    }
}
