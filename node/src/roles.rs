//! From a node's config to its running role: the one mapping of each role's config to its
//! runtime parameters, used by `braid-node` and by `braid demo` alike.

use std::net::SocketAddr;

use braid_config::{CentralConfig, GatewayConfig, NodeConfig, RelayConfig, UpstreamConfig};

use crate::exit::ExitPolicy;
use crate::users::{FirstHopAuth, SourceFilter};
use crate::{central, downstream, gateway, relay, upstream, NodeContext};

/// Runs the role `cfg` names until `ctx` stops it. `bind` is where a node that only dials
/// (downstream, gateway) binds its endpoint.
pub async fn run(ctx: NodeContext, cfg: NodeConfig, bind: SocketAddr) -> anyhow::Result<()> {
    match cfg {
        NodeConfig::Upstream(c) => {
            let params = upstream_params(&c, &ctx)?;
            upstream::run(ctx, params).await
        }
        NodeConfig::Central(c) => {
            let params = central_params(&c, &ctx);
            central::run(ctx, params).await
        }
        NodeConfig::Downstream(_) => downstream::run(ctx, bind).await,
        NodeConfig::Relay(c) => {
            let params = relay_params(&c, &ctx)?;
            relay::run(ctx, params).await
        }
        NodeConfig::Gateway(c) => gateway::run(ctx, gateway_params(&c, bind)).await,
    }
}

pub fn central_params(c: &CentralConfig, ctx: &NodeContext) -> central::CentralParams {
    central::CentralParams {
        listen: c.listen,
        max_joined: c.node.max_joined_nodes as usize,
        session: crate::central_session_config(
            &ctx.directory,
            c.reorder_window_cells,
            c.session_reorder_bytes,
        ),
        idle_timeout: c.idle_timeout(),
        reassembly_timeout: c.reassembly_timeout(),
        global_reorder_bytes: usize::try_from(c.global_reorder_bytes).unwrap_or(usize::MAX),
        max_sessions: usize::try_from(c.max_sessions).unwrap_or(usize::MAX),
        max_streams_per_session: c.max_streams_per_session as usize,
        stream_open_rate: c.stream_open_rate,
        stream_open_burst: c.stream_open_burst,
        gateway_link: braid_net::LinkTuning {
            // Peers open no bidirectional streams on the central.
            max_bidi_streams: 0,
            ..braid_net::LinkTuning::per_stream_credit(
                c.gateway_link_streams,
                c.gateway_stream_window(),
            )
        },
        session_stalled_streams: stalled_streams(c.session_stalled_mib, c),
        global_stalled_streams: stalled_streams(c.global_stalled_mib, c),
        admission: central::AdmissionParams {
            queue_per_link: c.hello_queue_per_link as usize,
            workers: c.admission_workers as usize,
            hello_window: std::time::Duration::from_secs(c.hello_window_secs),
            replay_cache: c.hello_replay_cache as usize,
            max_half_open: c.max_half_open as usize,
            half_open_timeout: std::time::Duration::from_millis(c.half_open_timeout_ms),
        },
        global_send_bytes: usize::try_from(c.global_send_bytes).unwrap_or(usize::MAX),
        mailbox_change_interval: c.mailbox_change_interval(),
    }
}

/// How many stalled gateway streams `mib` holds (each holds its gateway window).
fn stalled_streams(mib: u64, c: &CentralConfig) -> usize {
    let window = u64::from(c.gateway_stream_window()).max(1);
    usize::try_from(mib.saturating_mul(1 << 20) / window)
        .unwrap_or(usize::MAX)
        .max(1)
}

pub fn upstream_params(
    c: &UpstreamConfig,
    ctx: &NodeContext,
) -> anyhow::Result<upstream::UpstreamParams> {
    Ok(upstream::UpstreamParams {
        auth: FirstHopAuth::from_config(
            &ctx.directory,
            braid_config::Role::Upstream,
            c.revoked.as_deref(),
            c.auth_timeout(),
            c.per_user_usage,
        )?,
        sources: SourceFilter {
            allow: c.allow_sources.clone(),
            deny: c.deny_sources.clone(),
        },
        listen: c.listen,
        accept: accept_limits(&c.node),
        client_queue_cells: c.client_queue_cells as usize,
        central_queue_cells: c.central_queue_cells as usize,
    })
}

/// `[node]`'s connection limits for a listening role.
pub fn accept_limits(n: &braid_config::NodeCommon) -> crate::AcceptLimits {
    crate::AcceptLimits {
        max_connections: n.max_connections as usize,
        max_per_ip: n.max_connections_per_ip as usize,
        retry_above: n.retry_above_handshakes as usize,
    }
}

pub fn relay_params(c: &RelayConfig, ctx: &NodeContext) -> anyhow::Result<relay::RelayParams> {
    Ok(relay::RelayParams {
        auth: FirstHopAuth::from_config(
            &ctx.directory,
            braid_config::Role::Relay,
            c.revoked.as_deref(),
            c.registration_timeout(),
            c.per_user_usage,
        )?,
        sources: SourceFilter {
            allow: c.allow_sources.clone(),
            deny: c.deny_sources.clone(),
        },
        listen: c.listen,
        accept: accept_limits(&c.node),
        max_joined: c.node.max_joined_nodes as usize,
        mix_delay: c.mix_delay(),
        pool_cells: c.pool_cells as usize,
        mailbox_cells: c.mailbox_cells as usize,
        mailbox_budget: c.mailbox_budget(),
        max_mailboxes: c.max_mailboxes as usize,
        max_mailboxes_per_connection: c.max_mailboxes_per_connection as usize,
        registration_timeout: c.registration_timeout(),
    })
}

/// The exit policy a gateway config sets (at start and on each reload).
pub fn exit_policy(c: &GatewayConfig) -> ExitPolicy {
    ExitPolicy {
        allow_loopback: c.exit.allow_loopback,
        allow_private: c.exit.allow_private,
        rules: c.exit.rules.clone(),
        // gateway::run adds the directory's node addresses.
        node_addrs: Default::default(),
        // gateway::run reads the host's interfaces.
        local_addrs: Default::default(),
    }
}

pub fn gateway_params(c: &GatewayConfig, bind: SocketAddr) -> gateway::GatewayParams {
    gateway::GatewayParams {
        bind,
        connect_timeout: c.connect_timeout(),
        policy: exit_policy(c),
        hosts: c.hosts.clone(),
        reconnect_min: c.reconnect_min(),
        reconnect_max: c.reconnect_max(),
        max_streams: c.max_streams,
        link_stream_window: c.link_stream_window(),
        handshake_timeout: c.handshake_timeout(),
        stream_idle_timeout: c.stream_idle_timeout(),
        link_idle_timeout: c.link_idle_timeout(),
        resume_grace: c.resume_grace(),
        resume_buffer: c.resume_buffer(),
        resume_budget: c.resume_budget(),
        open_replay_window_secs: c.open_replay_window_secs,
        open_replay_cache: c.open_replay_cache(),
        max_dns_lookups: usize::try_from(c.max_dns_lookups).unwrap_or(usize::MAX),
        dns_timeout: c.dns_timeout(),
        local_addrs_refresh: c.local_addrs_refresh(),
        log_destinations: c.log_destinations,
        udp: c.udp,
        udp_idle: c.udp_idle(),
        max_udp_associations: c.max_udp_associations as usize,
        dns_ttl: c.dns_ttl_secs,
    }
}
