//! `braid demo`: the seven-server minimum (or more) in one process. Every node is its own
//! task with its own 127.x.y.z address and its own keys, talking real QUIC; the client's
//! SOCKS5 port sits in front.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use braid_config::{
    CentralConfig, DownstreamConfig, GatewayConfig, Layout, NodeCommon, NodeConfig, RelayConfig,
    UpstreamConfig,
};
use braid_config::{ClientConfig, Directory, NodeEntry, Role};
use braid_driver::{Metrics, Tap};
use braid_net::NodeIdentity;
use braid_node::exit::ExitRule;
use braid_node::NodeContext;
use rand::Rng;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::gateways::ChoicePolicy;
use crate::overlay::{self, ClientHandle, ClientParams};
use crate::socks::SocksLimits;

/// A change to the demo gateways' config ([`DemoOptions::tune_gateway`]).
pub type TuneGateway = Arc<dyn Fn(&mut GatewayConfig) + Send + Sync>;

#[derive(Clone)]
pub struct DemoOptions {
    pub socks: SocketAddr,
    /// The client's admin port (`braid status`), loopback only; none by default (tests
    /// start many demos at once).
    pub admin: Option<SocketAddr>,
    /// How many nodes of each role.
    pub layout: Layout,
    pub cell_size: usize,
    pub mix_delay: Duration,
    pub window_cells: u64,
    pub scheduler: braid_proto::session::PathScheduler,
    /// How the client picks its central when there are several.
    pub central_choice: braid_config::CentralChoice,
    /// Static names the gateway resolves without DNS.
    pub hosts: BTreeMap<String, IpAddr>,
    pub tap: Option<Tap>,
    /// The exit admits loopback targets (default true: the demo's targets are local).
    /// False gives the gateway's default policy. Node addresses are refused either way.
    pub exit_allow_loopback: bool,
    /// Exit rules, tried before the built-in classes (default none).
    pub exit_rules: Vec<ExitRule>,
    /// The SOCKS5 port's handshake deadline, connection limits and authentication.
    pub socks_limits: SocksLimits,
    /// A DNS port (UDP and TCP) resolving at the gateways; none by default.
    pub dns: Option<SocketAddr>,
    pub dns_limits: crate::dns::DnsLimits,
    /// The client's routing rules (`[[route]]`); none by default.
    pub routes: Vec<braid_config::RouteRule>,
    /// Isolated sessions at most, and how long one without streams lives
    /// (`max_isolated_sessions`, `isolation_idle_secs`).
    pub max_isolated_sessions: usize,
    pub isolation_idle: Duration,
    /// The client's keepalive, peer timeout and wait for a session (`braid run`'s
    /// `keepalive_ms`, `peer_timeout_ms`, `session_wait_ms`).
    pub keepalive: Duration,
    pub peer_timeout: Duration,
    pub session_wait: Duration,
    /// The client's `session_lifetime_secs`.
    pub session_lifetime: Duration,
    /// How long a stream whose central died may resume (the client's and the gateway's
    /// `resume_grace_ms`).
    pub resume_grace: Duration,
    /// The central's idle timeout (`idle_timeout_secs`).
    pub central_idle_timeout: Duration,
    /// The one gateway the client may use (`braid run`'s `gateway`); any when `None`.
    pub gateway: Option<String>,
    /// How streams' gateways are chosen (`gateway_choice`, `sticky_secs`,
    /// `gateway_rest_ms`).
    pub gateway_choice: ChoicePolicy,
    /// How long a silent central is skipped (`central_rest_ms`).
    pub central_rest: Duration,
    /// The client and the gateways name destinations in their logs (`log_destinations`;
    /// default false).
    pub log_destinations: bool,
    /// Changes the gateways' config after the demo's settings (DNS limits, refresh...).
    pub tune_gateway: Option<TuneGateway>,
    /// A user name: the demo makes an operator key (first hops then want credentials) and
    /// a credential for this user, which the client presents. None: an open network.
    pub user: Option<String>,
}

impl Default for DemoOptions {
    fn default() -> Self {
        let client_defaults = ClientConfig::with_directory("<demo>");
        DemoOptions {
            socks: SocketAddr::from(([127, 0, 0, 1], 1080)),
            admin: None,
            layout: Layout::default(),
            cell_size: 8192,
            mix_delay: Duration::ZERO,
            window_cells: 1024,
            scheduler: braid_proto::session::PathScheduler::RoundRobin,
            central_choice: braid_config::CentralChoice::default(),
            hosts: BTreeMap::new(),
            tap: None,
            exit_allow_loopback: true,
            exit_rules: Vec::new(),
            socks_limits: SocksLimits::default(),
            dns: None,
            dns_limits: crate::dns::DnsLimits::default(),
            routes: Vec::new(),
            max_isolated_sessions: crate::isolation::MAX_SESSIONS,
            isolation_idle: crate::isolation::IDLE,
            keepalive: client_defaults.keepalive(),
            peer_timeout: client_defaults.peer_timeout(),
            session_wait: client_defaults.session_wait(),
            session_lifetime: client_defaults.session_lifetime(),
            resume_grace: client_defaults.resume_grace(),
            central_idle_timeout: Duration::from_secs(60),
            gateway: None,
            gateway_choice: ChoicePolicy {
                choice: client_defaults.gateway_choice,
                sticky: client_defaults.sticky(),
                rest: client_defaults.gateway_rest(),
            },
            central_rest: client_defaults.central_rest(),
            log_destinations: false,
            user: None,
            tune_gateway: None,
        }
    }
}

pub struct DemoNode {
    pub id: String,
    pub role: Role,
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

pub struct Demo {
    pub socks: SocketAddr,
    /// The client's sessions: the first, and one per isolation key in use.
    pub sessions: Arc<crate::isolation::Sessions>,
    /// Where the admin port listens, if the options asked for one.
    /// The DNS port, if one was asked for.
    pub dns: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub directory: Arc<Directory>,
    pub nodes: Vec<DemoNode>,
    pub client: ClientHandle,
    /// With `DemoOptions::user`: the user's public key (tests look for it in what nodes
    /// see).
    pub user_key: Option<[u8; 32]>,
    shutdown: CancellationToken,
    socks_task: JoinHandle<()>,
}

/// A random 127.a.b.0/24 so that several demos (parallel tests) never share addresses.
fn base_net() -> [u8; 3] {
    let mut r = rand::rng();
    [127, r.random_range(64..=250), r.random_range(1..=250)]
}

impl Demo {
    pub async fn start(opts: DemoOptions) -> anyhow::Result<Demo> {
        // Bound first: a refused or busy admin address stops the demo before it starts.
        let admin_listener = match opts.admin {
            Some(a) => Some(crate::status::bind(a).await?),
            None => None,
        };
        let net = base_net();
        let ip = |host: u8| IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], host));
        // Free UDP ports are found by binding and releasing on each node's own address.
        let port_for = |host: u8| -> anyhow::Result<u16> {
            let s = std::net::UdpSocket::bind(SocketAddr::new(ip(host), 0))?;
            Ok(s.local_addr()?.port())
        };
        let layout = opts.layout.nodes();

        let mut rng = rand::rng();
        let mut entries = Vec::new();
        let mut idents = Vec::new();
        for (i, (id, role)) in layout.iter().enumerate() {
            let host = u8::try_from(i + 2).context("too many nodes for one /24")?;
            let identity = NodeIdentity::generate(&mut rng)?;
            let addr = SocketAddr::new(ip(host), port_for(host)?);
            entries.push(NodeEntry::new(
                id.clone(),
                *role,
                Some(addr),
                identity.noise_public(),
                identity.tls_public(),
            ));
            idents.push((id.clone(), *role, addr, identity));
        }
        let mut directory = Directory::validated(opts.cell_size as u32, entries)?;
        // With a user: an operator key in the directory, and the user's credential.
        let mut user_key = None;
        let credential = match &opts.user {
            Some(name) => {
                use braid_proto::credential::{Credential, LimitsPass, SigningKey, UserLimits};
                let operator = SigningKey::generate(&mut rng);
                let user = SigningKey::generate(&mut rng);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs();
                let mut id = [0u8; 16];
                rand::RngCore::fill_bytes(&mut rng, &mut id);
                let credential = Credential {
                    id,
                    name: name.clone(),
                    user_key: user.public(),
                    not_before: now.saturating_sub(60),
                    not_after: now + 30 * 24 * 3600,
                    limits: UserLimits::default(),
                };
                let bytes = credential.issue(&operator)?;
                let pass = LimitsPass::for_credential(&credential).issue(&operator);
                // The demo signs its own directory, as an operator does.
                directory.version = 1;
                directory.sign(&operator);
                user_key = Some(user.public());
                Some(Arc::new(crate::first_hop::Presenter::new(
                    bytes,
                    user.seed(),
                    pass,
                )))
            }
            None => None,
        };
        let directory = Arc::new(directory);
        let shutdown = CancellationToken::new();
        let mut nodes = Vec::new();
        for (id, role, addr, identity) in idents {
            let stop = shutdown.child_token();
            let metrics = Arc::new(Metrics::default());
            let ctx = NodeContext {
                id: id.clone(),
                identity,
                directory: directory.clone(),
                metrics: metrics.clone(),
                tap: opts.tap.clone(),
                drain: stop.clone(),
                shutdown: stop.clone(),
                reloaded: tokio::sync::watch::channel(None).1,
                joiner: None,
            };
            let dial_bind = SocketAddr::new(addr.ip(), 0);
            // The same config types and mapping as `braid-node`, with the demo's settings.
            let node =
                NodeCommon::new(id.clone(), PathBuf::from("<demo>"), PathBuf::from("<demo>"));
            let cfg = match role {
                Role::Upstream => NodeConfig::Upstream(UpstreamConfig::new(addr, node)),
                Role::Central => {
                    let mut c = CentralConfig::new(addr, node);
                    c.reorder_window_cells = u32::try_from(opts.window_cells).unwrap_or(u32::MAX);
                    c.max_sessions = 10_000;
                    c.idle_timeout_secs = opts.central_idle_timeout.as_secs().max(1);
                    NodeConfig::Central(c)
                }
                Role::Downstream => NodeConfig::Downstream(DownstreamConfig { node }),
                Role::Relay => {
                    let mut c = RelayConfig::new(addr, node);
                    c.mix_delay_ms = opts.mix_delay.as_secs_f64() * 1e3;
                    c.pool_cells = 65_536;
                    NodeConfig::Relay(c)
                }
                Role::Gateway => {
                    let mut c = GatewayConfig::new(node);
                    // The demo runs on one machine, so its exit admits loopback targets.
                    c.exit.allow_loopback = opts.exit_allow_loopback;
                    c.exit.rules = opts.exit_rules.clone();
                    c.hosts = opts.hosts.clone();
                    c.reconnect_min_ms = 50;
                    c.reconnect_max_ms = 2000;
                    c.resume_grace_ms = opts.resume_grace.as_millis() as u64;
                    c.log_destinations = opts.log_destinations;
                    if let Some(tune) = &opts.tune_gateway {
                        tune(&mut c);
                    }
                    NodeConfig::Gateway(c)
                }
            };
            let task = tokio::spawn(braid_node::roles::run(ctx, cfg, dial_bind));
            nodes.push(DemoNode {
                id,
                role,
                addr,
                metrics,
                stop,
                task,
            });
        }
        // Ready means every dialing node (upstreams, downstreams, gateways) has linked to
        // every central: a client cell handed to an upstream still dialing would wait there (the
        // first QUIC Initial can land before the central's socket is bound and is resent
        // only after ~1 s), and the client would rest that path for its first seconds.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let centrals = directory.centrals().count() as u64;
        for n in nodes
            .iter()
            .filter(|n| matches!(n.role, Role::Upstream | Role::Downstream | Role::Gateway))
        {
            while Metrics::get(&n.metrics.links_up) < centrals {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{} did not link to every central within 20 s",
                    n.id
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let params = ClientParams {
            directory: directory.clone(),
            gateway: opts.gateway.clone(),
            bind: SocketAddr::new(ip(1), 0),
            window_cells: opts.window_cells,
            scheduler: opts.scheduler,
            central_choice: opts.central_choice,
            tap: opts.tap.clone(),
            keepalive: opts.keepalive,
            peer_timeout: opts.peer_timeout,
            session_wait: opts.session_wait,
            session_lifetime: opts.session_lifetime,
            resume_grace: opts.resume_grace,
            resume_buffer: ClientConfig::with_directory("<demo>").resume_buffer(),
            resume_budget: ClientConfig::with_directory("<demo>").resume_budget(),
            gateway_choice: opts.gateway_choice,
            central_rest: opts.central_rest,
            log_destinations: opts.log_destinations,
            max_joined_upstreams: ClientConfig::with_directory("<demo>").max_joined_upstreams
                as usize,
            credential,
            routes: Arc::new(crate::routing::Routes::new(opts.routes.clone())),
            shutdown: shutdown.child_token(),
        };
        let client = overlay::connect(params.clone()).await?;
        let listener = crate::socks::bind(opts.socks)
            .with_context(|| format!("binding the SOCKS5 port {}", opts.socks))?;
        let socks = listener.local_addr()?;
        let sessions = crate::isolation::Sessions::isolating(
            client.clone(),
            socks.port(),
            crate::isolation::start_like(params),
            opts.max_isolated_sessions,
            opts.isolation_idle,
            shutdown.child_token(),
        );
        let socks_task = tokio::spawn(crate::socks::serve(
            listener,
            sessions.clone(),
            opts.socks_limits.clone(),
            crate::socks::Front::Mixed,
            shutdown.clone(),
        ));
        let dns = match opts.dns {
            Some(addr) => {
                let (udp, tcp) = crate::dns::bind(addr)
                    .await
                    .with_context(|| format!("binding the DNS port {addr}"))?;
                let bound = udp.local_addr()?;
                tokio::spawn(crate::dns::serve(
                    udp,
                    tcp,
                    client.clone(),
                    opts.dns_limits,
                    shutdown.clone(),
                ));
                Some(bound)
            }
            None => None,
        };
        let admin = match admin_listener {
            Some(l) => {
                let addr = l.local_addr()?;
                tokio::spawn(crate::status::serve(l, client.clone(), shutdown.clone()));
                Some(addr)
            }
            None => None,
        };
        Ok(Demo {
            socks,
            sessions,
            dns,
            admin,
            directory,
            nodes,
            client,
            user_key,
            shutdown,
            socks_task,
        })
    }

    pub fn node(&self, id: &str) -> Option<&DemoNode> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Stops one node at once: it stops serving and its endpoint closes every link.
    pub fn kill(&self, id: &str) -> bool {
        match self.node(id) {
            Some(n) => {
                n.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// A table of the overlay for people.
    pub fn topology(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!(
                "  {:<14} {:<11} {}\n",
                n.id,
                n.role.as_str(),
                n.addr
            ));
        }
        s
    }

    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.socks_task.abort();
        for n in self.nodes {
            n.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), n.task).await;
        }
    }
}
