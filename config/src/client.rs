//! The client config (`braid run --config FILE`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use braid_proto::session::PathScheduler;
use serde::{Deserialize, Serialize};

use crate::check;
use crate::directory::{check_id, Directory, NodeEntry, Role};
use crate::env;
use crate::error::ConfigError;
use crate::node::LogFormat;
use crate::parse::{parse_config, ConfigFile};

/// `scheduler = "round-robin" | "rtt"`: proto's [`PathScheduler`] by its names.
mod scheduler_name {
    use braid_proto::session::PathScheduler;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &PathScheduler, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathScheduler, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// How the client picks the central a new session runs through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CentralChoice {
    /// One at random among the centrals not known to be down (spreads users).
    #[default]
    Random,
    /// The one that answers first: the Hello goes to every central not known to be down
    /// and the first Welcome wins (the others' half-open sessions idle out).
    Rtt,
}

/// How the client picks the gateway of a new stream (when the app did not pin one by its
/// SOCKS5 username and the config names none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayChoice {
    /// One at random among the gateways not known to be unreachable, per stream.
    #[default]
    Random,
    /// The same destination host exits through the same gateway for `sticky_secs`, as long
    /// as that gateway is not known to be unreachable (sites see one exit address).
    Sticky,
}

/// The client's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The directory file. Resolved against the config file's folder when loaded.
    pub directory: PathBuf,
    /// The operator's public key (hex) the directory must be signed by (and be unexpired).
    /// Unset: an unsigned directory is taken (a signed one must still verify).
    #[serde(
        default,
        with = "crate::directory::hex32_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub directory_key: Option<[u8; 32]>,
    /// This user's credential file, from the operator (`braid-node user add`). Needed when
    /// the directory has an `operator_key`; refused if others may read it (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<PathBuf>,
    /// The local proxy port (default 127.0.0.1:1080): SOCKS5, SOCKS4/4a and HTTP on one
    /// port, told apart by the first byte.
    #[serde(default = "default_socks_listen")]
    pub socks_listen: SocketAddr,
    /// A second port that speaks only HTTP (CONNECT and `http://` forwarding); none by
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// Longest HTTP request head, in bytes (default 32768): 431 beyond.
    #[serde(default = "default_http_max_header_bytes")]
    pub http_max_header_bytes: u32,
    /// Most header fields in an HTTP request (default 100): 431 beyond.
    #[serde(default = "default_http_max_headers")]
    pub http_max_headers: u32,
    /// A kept-alive HTTP connection with no new request for this long is closed
    /// (default 90 s).
    #[serde(default = "default_http_keepalive_secs")]
    pub http_keepalive_secs: u64,
    /// Longest HTTP request body forwarded, in MiB: 413 beyond. 0 (default): no limit.
    #[serde(default)]
    pub http_max_body_mib: u64,
    /// A local DNS port (UDP and TCP) whose queries are resolved at a gateway, through the
    /// overlay; none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_listen: Option<SocketAddr>,
    /// DNS queries being resolved at once, at most (default 256; UDP ones past it are
    /// dropped, as a busy resolver drops them).
    #[serde(default = "default_dns_max_inflight")]
    pub dns_max_inflight: u32,
    /// A DNS-over-TCP connection with no query for this long is closed (default 10 s).
    #[serde(default = "default_dns_tcp_idle_secs")]
    pub dns_tcp_idle_secs: u64,
    /// A SOCKS5 UDP association with no datagram either way for this long ends (default
    /// 120 s; it also ends with its TCP control connection).
    #[serde(default = "default_udp_idle_secs")]
    pub udp_idle_secs: u64,
    /// SOCKS5 UDP associations open at once, at most (default 256; each may hold about
    /// 0.5 MiB). Past it, UDP ASSOCIATE is answered 01.
    #[serde(default = "default_max_udp_associations")]
    pub max_udp_associations: u32,
    /// Streams with different SOCKS usernames or HTTP proxy users, or on different ports,
    /// get sessions of their own (their own links, session and gateway choice): at most
    /// this many besides the first (default 32; past it a new user's stream is refused).
    #[serde(default = "default_max_isolated_sessions")]
    pub max_isolated_sessions: u32,
    /// An isolated session with no stream for this long is closed (default 600 s).
    #[serde(default = "default_isolation_idle_secs")]
    pub isolation_idle_secs: u64,
    /// The admin port `braid status` reads (default 127.0.0.1:1081). Loopback only: it
    /// shows the session's central, paths and streams to whoever connects.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Gateway node id to exit through; `None` (default) means any gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// How a stream's gateway is picked: `"random"` (default) per stream, or `"sticky"`:
    /// one destination host, one gateway, for `sticky_secs`.
    #[serde(default)]
    pub gateway_choice: GatewayChoice,
    /// With `gateway_choice = "sticky"`, how long a destination host stays on its gateway
    /// (default 600 s).
    #[serde(default = "default_sticky_secs")]
    pub sticky_secs: u64,
    /// How long a gateway the central said it cannot reach is skipped by new streams
    /// (default 5000 ms).
    #[serde(default = "default_gateway_rest_ms")]
    pub gateway_rest_ms: u64,
    /// How long a central that went silent is skipped when a new session picks its central
    /// (default 30000 ms; when every central rests, all are tried).
    #[serde(default = "default_central_rest_ms")]
    pub central_rest_ms: u64,
    /// How cells are spread over the upstreams: `"round-robin"` (default, the even
    /// spread) or `"rtt"` (lowest expected delivery time).
    #[serde(default, with = "scheduler_name")]
    pub scheduler: PathScheduler,
    /// How a session picks its central: `"random"` (default) among those not known to be
    /// down, or `"rtt"`, the first to answer. A session whose central dies moves to another.
    #[serde(default)]
    pub central_choice: CentralChoice,
    /// Per-stream window, in cells (default 1024).
    #[serde(default = "default_window_cells")]
    pub window_cells: u32,
    /// Log format.
    #[serde(default)]
    pub log: LogFormat,
    /// Seconds a SOCKS5 client has for its whole handshake (greeting, RFC 1929
    /// authentication and request) before it is closed (default 10; the slowloris guard).
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// Most SOCKS5 connections open at once (default 16384). Beyond it a connection is
    /// refused with a proper SOCKS5 reply, never left hanging. Each is a socket: keep it
    /// under the open-file limit (`braid run` raises its soft limit to the hard one and
    /// warns when this does not fit).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Most SOCKS5 connections open at once from one non-loopback source IP address
    /// (default 256).
    #[serde(default = "default_max_connections_per_source")]
    pub max_connections_per_source: u32,
    /// Whether `max_connections_per_source` also applies to loopback sources (default
    /// false: on a laptop every application comes from 127.0.0.1, and only
    /// `max_connections` bounds them).
    #[serde(default)]
    pub limit_loopback_sources: bool,
    /// With nothing in flight for this long, the session sends a keepalive cell (sealed and
    /// full-size like data), so the central's idle timeout never closes a quiet session
    /// (default 15000 ms; keep it well inside the central's `idle_timeout_secs`).
    #[serde(default = "default_keepalive_ms")]
    pub keepalive_ms: u64,
    /// The central counts as gone when a cell has waited this long for its answer (and at
    /// least 3 RTOs) with nothing from the central meanwhile; a new session is then opened
    /// (default 10000 ms).
    #[serde(default = "default_peer_timeout_ms")]
    pub peer_timeout_ms: u64,
    /// While a new session is being opened, how long a new stream waits for it before its
    /// SOCKS5 request is answered with a failure (default 10000 ms).
    #[serde(default = "default_session_wait_ms")]
    pub session_wait_ms: u64,
    /// A session is replaced by a fresh one (new keys, labels and mailboxes; its streams
    /// resume on the next) after about this long, ±10% so clients do not rotate in step
    /// (default 3600 s; 1 s to a week). Bounds what any hop can link to one session.
    #[serde(default = "default_session_lifetime_secs")]
    pub session_lifetime_secs: u64,
    /// Upstreams that joined after the directory was written (the central tells of them,
    /// each signed) the client links to at most (default 32).
    #[serde(default = "default_max_joined_upstreams")]
    pub max_joined_upstreams: u32,
    /// How long a stream whose central died keeps trying to resume through another
    /// (default 30000 ms; the gateway's own `resume_grace_ms` bounds it too).
    #[serde(default = "crate::check::default_resume_grace_ms")]
    pub resume_grace_ms: u64,
    /// Sealed bytes each stream keeps until the gateway acknowledges them, to send again
    /// after a resume (default 2048 KiB; at least 512). Past it the stream stops reading
    /// its application until acknowledgements free room.
    #[serde(default = "crate::check::default_resume_buffer_kib")]
    pub resume_buffer_kib: u64,
    /// Sealed bytes all streams together may keep for resending (default 512 MiB): past
    /// it, streams stop reading their apps until acknowledgements free room, so memory stays
    /// bounded however many streams are open.
    #[serde(default = "crate::check::default_resume_budget_mib")]
    pub resume_budget_mib: u64,
    /// Name destinations (host and port) in the client's log lines, e.g. when a gateway
    /// refuses a stream (default false: logs show `[redacted]:PORT`).
    #[serde(default)]
    pub log_destinations: bool,
    /// Routing rules, first match wins: a destination (domain suffix, CIDR, ports) goes
    /// through a named gateway, directly from this machine, or nowhere. None by default.
    /// Not overridable from the environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<RouteRule>,
    /// RFC 1929 username/password the SOCKS5 port requires; none (default) means no
    /// authentication. Not overridable from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SocksAuthConfig>,
}

/// One `[[route]]` table: which destinations it matches (every matcher given must match;
/// none given matches everything) and where they go.
///
/// A `domain` matches names as the app gave them (the laptop resolves nothing), so a
/// `cidr` matches only destinations given as addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A domain suffix, matched on label boundaries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<crate::Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<crate::PortRange>,
    /// `"direct"` (connect from this machine, outside the overlay), `"block"` (refuse), or
    /// the id of the gateway to exit through.
    pub via: String,
}

/// Where a [`RouteRule`] sends what it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteVia<'a> {
    Direct,
    Block,
    Gateway(&'a str),
}

impl RouteRule {
    pub fn via(&self) -> RouteVia<'_> {
        match self.via.as_str() {
            "direct" => RouteVia::Direct,
            "block" => RouteVia::Block,
            g => RouteVia::Gateway(g),
        }
    }

    /// Whether the rule matches a destination given as `name` (None for an address) at
    /// `ip` (None for a name) and `port`.
    pub fn matches(&self, name: Option<&str>, ip: Option<std::net::IpAddr>, port: u16) -> bool {
        let domain_ok = match (&self.domain, name) {
            (None, _) => true,
            (Some(d), Some(n)) => crate::domain_covers(d, n),
            (Some(_), None) => false,
        };
        let cidr_ok = match (&self.cidr, ip) {
            (None, _) => true,
            (Some(c), Some(ip)) => c.contains(ip),
            (Some(_), None) => false,
        };
        domain_ok && cidr_ok && self.ports.is_none_or(|p| p.contains(port))
    }
}

/// The `[auth]` table: the one username/password pair the local SOCKS5 port accepts
/// (RFC 1929). Each is 1 to 255 bytes. `Debug` never shows the password. (Not to be
/// confused with `braid_net::ClientAuth`, the TLS client-certificate mode of a link.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocksAuthConfig {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SocksAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocksAuthConfig")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Parse and validate client config text, except for file existence; `file` names it in
/// errors and its folder is the base for relative paths.
pub fn parse_client_config(
    text: &str,
    file: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ClientConfig, ConfigError> {
    parse_config(text, file, env)
}

fn default_handshake_timeout_secs() -> u64 {
    10
}

fn default_http_max_header_bytes() -> u32 {
    32 * 1024
}

fn default_http_max_headers() -> u32 {
    100
}

fn default_max_isolated_sessions() -> u32 {
    32
}

fn default_isolation_idle_secs() -> u64 {
    600
}

fn default_dns_max_inflight() -> u32 {
    256
}

fn default_dns_tcp_idle_secs() -> u64 {
    10
}

fn default_max_udp_associations() -> u32 {
    256
}

fn default_udp_idle_secs() -> u64 {
    120
}

fn default_http_keepalive_secs() -> u64 {
    90
}

fn default_max_connections() -> u32 {
    16_384
}

fn default_max_connections_per_source() -> u32 {
    256
}

fn default_socks_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 1080))
}

/// Where `braid run` serves its admin port and `braid status` looks for it.
pub fn default_admin() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 1081))
}

fn default_sticky_secs() -> u64 {
    600
}

fn default_gateway_rest_ms() -> u64 {
    5_000
}

fn default_central_rest_ms() -> u64 {
    30_000
}

fn default_window_cells() -> u32 {
    1024
}

fn default_keepalive_ms() -> u64 {
    15_000
}

fn default_peer_timeout_ms() -> u64 {
    10_000
}

fn default_session_wait_ms() -> u64 {
    10_000
}

fn default_max_joined_upstreams() -> u32 {
    32
}

fn default_session_lifetime_secs() -> u64 {
    3600
}

impl ClientConfig {
    /// A config with every default and the given directory file.
    pub fn with_directory(directory: impl Into<PathBuf>) -> Self {
        ClientConfig {
            directory: directory.into(),
            directory_key: None,
            credential: None,
            socks_listen: default_socks_listen(),
            http_listen: None,
            http_max_header_bytes: default_http_max_header_bytes(),
            http_max_headers: default_http_max_headers(),
            http_keepalive_secs: default_http_keepalive_secs(),
            http_max_body_mib: 0,
            dns_listen: None,
            dns_max_inflight: default_dns_max_inflight(),
            dns_tcp_idle_secs: default_dns_tcp_idle_secs(),
            udp_idle_secs: default_udp_idle_secs(),
            max_udp_associations: default_max_udp_associations(),
            max_isolated_sessions: default_max_isolated_sessions(),
            isolation_idle_secs: default_isolation_idle_secs(),
            admin: default_admin(),
            gateway: None,
            gateway_choice: GatewayChoice::default(),
            sticky_secs: default_sticky_secs(),
            gateway_rest_ms: default_gateway_rest_ms(),
            central_rest_ms: default_central_rest_ms(),
            scheduler: PathScheduler::default(),
            central_choice: CentralChoice::default(),
            window_cells: default_window_cells(),
            log: LogFormat::default(),
            handshake_timeout_secs: default_handshake_timeout_secs(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
            limit_loopback_sources: false,
            keepalive_ms: default_keepalive_ms(),
            peer_timeout_ms: default_peer_timeout_ms(),
            session_wait_ms: default_session_wait_ms(),
            session_lifetime_secs: default_session_lifetime_secs(),
            max_joined_upstreams: default_max_joined_upstreams(),
            resume_grace_ms: crate::check::default_resume_grace_ms(),
            resume_buffer_kib: crate::check::default_resume_buffer_kib(),
            resume_budget_mib: crate::check::default_resume_budget_mib(),
            log_destinations: false,
            route: Vec::new(),
            auth: None,
        }
    }

    /// [`isolation_idle_secs`](Self::isolation_idle_secs) as a duration.
    pub fn isolation_idle(&self) -> Duration {
        Duration::from_secs(self.isolation_idle_secs)
    }

    /// [`dns_tcp_idle_secs`](Self::dns_tcp_idle_secs) as a duration.
    pub fn dns_tcp_idle(&self) -> Duration {
        Duration::from_secs(self.dns_tcp_idle_secs)
    }

    /// [`udp_idle_secs`](Self::udp_idle_secs) as a duration.
    pub fn udp_idle(&self) -> Duration {
        Duration::from_secs(self.udp_idle_secs)
    }

    /// [`http_keepalive_secs`](Self::http_keepalive_secs) as a duration.
    pub fn http_keepalive(&self) -> Duration {
        Duration::from_secs(self.http_keepalive_secs)
    }

    /// [`http_max_body_mib`](Self::http_max_body_mib) in bytes; `None`: no limit.
    pub fn http_max_body(&self) -> Option<u64> {
        (self.http_max_body_mib > 0).then(|| self.http_max_body_mib.saturating_mul(1 << 20))
    }

    /// [`handshake_timeout_secs`](Self::handshake_timeout_secs) as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// [`keepalive_ms`](Self::keepalive_ms) as a duration.
    pub fn keepalive(&self) -> Duration {
        Duration::from_millis(self.keepalive_ms)
    }

    /// [`peer_timeout_ms`](Self::peer_timeout_ms) as a duration.
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(self.peer_timeout_ms)
    }

    /// [`session_lifetime_secs`](Self::session_lifetime_secs) as a duration.
    pub fn session_lifetime(&self) -> Duration {
        Duration::from_secs(self.session_lifetime_secs)
    }

    /// [`resume_grace_ms`](Self::resume_grace_ms) as a duration.
    pub fn resume_grace(&self) -> Duration {
        Duration::from_millis(self.resume_grace_ms)
    }

    /// [`resume_budget_mib`](Self::resume_budget_mib) in bytes.
    pub fn resume_budget(&self) -> usize {
        crate::check::bytes(self.resume_budget_mib, 1 << 20)
    }

    /// [`resume_buffer_kib`](Self::resume_buffer_kib) in bytes.
    pub fn resume_buffer(&self) -> usize {
        crate::check::bytes(self.resume_buffer_kib, 1024)
    }

    /// [`sticky_secs`](Self::sticky_secs) as a duration.
    pub fn sticky(&self) -> Duration {
        Duration::from_secs(self.sticky_secs)
    }

    /// [`gateway_rest_ms`](Self::gateway_rest_ms) as a duration.
    pub fn gateway_rest(&self) -> Duration {
        Duration::from_millis(self.gateway_rest_ms)
    }

    /// [`central_rest_ms`](Self::central_rest_ms) as a duration.
    pub fn central_rest(&self) -> Duration {
        Duration::from_millis(self.central_rest_ms)
    }

    /// [`session_wait_ms`](Self::session_wait_ms) as a duration.
    pub fn session_wait(&self) -> Duration {
        Duration::from_millis(self.session_wait_ms)
    }

    /// The gateways this client may exit through: the configured one (which must be a
    /// gateway in `dir`), or every gateway. Errors name the directory file.
    pub fn eligible_gateways<'d>(
        &self,
        dir: &'d Directory,
    ) -> Result<Vec<&'d NodeEntry>, ConfigError> {
        match &self.gateway {
            None => Ok(dir.nodes_with_role(Role::Gateway).collect()),
            Some(id) => match dir.by_id(id) {
                Some(n) if n.role == Role::Gateway => Ok(vec![n]),
                Some(n) => Err(ConfigError::Invalid {
                    file: self.directory.clone(),
                    key: "nodes".into(),
                    message: format!(
                        "node `{id}` (named by the client's gateway key) is a {}, not a gateway",
                        n.role
                    ),
                }),
                None => Err(ConfigError::Invalid {
                    file: self.directory.clone(),
                    key: "nodes".into(),
                    message: format!("no node with id `{id}` (named by the client's gateway key)"),
                }),
            },
        }
    }

    /// The config as TOML (e.g. to print the effective configuration).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Invalid {
            file: PathBuf::from("<client config>"),
            key: "<top level>".into(),
            message: format!("cannot serialize: {e}"),
        })
    }
}

impl ConfigFile for ClientConfig {
    const ENV_KEYS: &'static [(&'static str, env::Kind)] = env::CLIENT_KEYS;

    fn relative_paths(&mut self) -> Vec<&mut PathBuf> {
        let mut paths = vec![&mut self.directory];
        paths.extend(self.credential.as_mut());
        paths
    }

    fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        check::non_empty(file, &[("directory", &self.directory)])?;
        if !self.admin.ip().is_loopback() {
            return Err(invalid(
                "admin",
                format!(
                    "must be a loopback address (127.0.0.0/8 or ::1), not {}: the admin port \
                     shows the session's central, paths and streams to whoever connects",
                    self.admin
                ),
            ));
        }
        if let Some(id) = &self.gateway {
            check_id(id).map_err(|m| invalid("gateway", m))?;
        }
        for r in &self.route {
            if let RouteVia::Gateway(id) = r.via() {
                check_id(id).map_err(|m| {
                    invalid(
                        "route",
                        format!("via must be \"direct\", \"block\" or a gateway id: {m}"),
                    )
                })?;
            }
        }
        check::positive(file, &[("window_cells", u64::from(self.window_cells))])?;
        if !(1..=86_400).contains(&self.handshake_timeout_secs) {
            return Err(invalid(
                "handshake_timeout_secs",
                "must be within 1..=86400 seconds".into(),
            ));
        }
        if !(1..=86_400 * 7).contains(&self.isolation_idle_secs) {
            return Err(invalid(
                "isolation_idle_secs",
                "must be within 1..=604800 seconds".into(),
            ));
        }
        if !(1..=3600).contains(&self.dns_tcp_idle_secs) {
            return Err(invalid(
                "dns_tcp_idle_secs",
                "must be within 1..=3600 seconds".into(),
            ));
        }
        check::positive(
            file,
            &[("dns_max_inflight", u64::from(self.dns_max_inflight))],
        )?;
        if !(1..=86_400).contains(&self.udp_idle_secs) {
            return Err(invalid(
                "udp_idle_secs",
                "must be within 1..=86400 seconds".into(),
            ));
        }
        if !(1..=86_400).contains(&self.http_keepalive_secs) {
            return Err(invalid(
                "http_keepalive_secs",
                "must be within 1..=86400 seconds".into(),
            ));
        }
        if !(1024..=1 << 20).contains(&self.http_max_header_bytes) {
            return Err(invalid(
                "http_max_header_bytes",
                "must be within 1024..=1048576 bytes".into(),
            ));
        }
        if !(1..=10_000).contains(&self.http_max_headers) {
            return Err(invalid(
                "http_max_headers",
                "must be within 1..=10000".into(),
            ));
        }
        if self.http_listen == Some(self.socks_listen) {
            return Err(invalid(
                "http_listen",
                "must differ from socks_listen (which serves HTTP too)".into(),
            ));
        }
        check::positive(
            file,
            &[
                ("max_connections", u64::from(self.max_connections)),
                (
                    "max_connections_per_source",
                    u64::from(self.max_connections_per_source),
                ),
            ],
        )?;
        for (key, ms) in [
            ("keepalive_ms", self.keepalive_ms),
            ("peer_timeout_ms", self.peer_timeout_ms),
            ("session_wait_ms", self.session_wait_ms),
            ("resume_grace_ms", self.resume_grace_ms),
            ("gateway_rest_ms", self.gateway_rest_ms),
            ("central_rest_ms", self.central_rest_ms),
        ] {
            if !(1..=86_400_000).contains(&ms) {
                return Err(invalid(
                    key,
                    "must be within 1..=86400000 ms (a day)".into(),
                ));
            }
        }
        check::resume_buffer(file, self.resume_buffer_kib)?;
        check::resume_budget(file, self.resume_budget_mib)?;
        if !(1..=604_800).contains(&self.session_lifetime_secs) {
            return Err(invalid(
                "session_lifetime_secs",
                "must be within 1..=604800 seconds (a week)".into(),
            ));
        }
        if !(1..=86_400).contains(&self.sticky_secs) {
            return Err(invalid(
                "sticky_secs",
                "must be within 1..=86400 seconds".into(),
            ));
        }
        if let Some(auth) = &self.auth {
            // RFC 1929 carries each in a one-byte length field, and 0 is refused.
            for (key, value) in [
                ("auth.username", &auth.username),
                ("auth.password", &auth.password),
            ] {
                if !(1..=255).contains(&value.len()) {
                    return Err(invalid(
                        key,
                        format!(
                            "must be 1 to 255 bytes long (RFC 1929), not {}",
                            value.len()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_files(&self, file: &Path) -> Result<(), ConfigError> {
        if !self.directory.is_file() {
            return Err(ConfigError::MissingPath {
                file: file.to_owned(),
                key: "directory".into(),
                what: "the directory file",
                path: self.directory.clone(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{no_env, parse_client_config};
    use std::path::Path;

    const FILE: &str = "/etc/braid/client.toml";

    fn parse(text: &str) -> Result<super::ClientConfig, crate::ConfigError> {
        parse_client_config(text, Path::new(FILE), &no_env)
    }

    #[test]
    fn socks_defences_default_and_parse() {
        let cfg = parse("directory = \"d\"\n").unwrap();
        assert_eq!(cfg.admin, "127.0.0.1:1081".parse().unwrap());
        assert_eq!(cfg.handshake_timeout().as_secs(), 10);
        assert_eq!(cfg.max_connections, 16_384);
        assert!(!cfg.limit_loopback_sources);
        assert_eq!(cfg.max_connections_per_source, 256);
        assert_eq!(cfg.auth, None);
        let cfg = parse(
            "directory = \"d\"\nhandshake_timeout_secs = 3\nmax_connections = 9\n\
             max_connections_per_source = 2\nlimit_loopback_sources = true\n[auth]\nusername = \"alice\"\npassword = \"hunter2\"\n",
        )
        .unwrap();
        assert_eq!(cfg.handshake_timeout().as_secs(), 3);
        assert_eq!(
            (cfg.max_connections, cfg.max_connections_per_source),
            (9, 2)
        );
        assert!(cfg.limit_loopback_sources);
        let auth = cfg.auth.as_ref().unwrap();
        assert_eq!(
            (auth.username.as_str(), auth.password.as_str()),
            ("alice", "hunter2")
        );
        // The password never shows in Debug output, alone or nested.
        for dbg in [format!("{auth:?}"), format!("{cfg:?}"), format!("{cfg:#?}")] {
            assert!(!dbg.contains("hunter2"), "{dbg}");
            assert!(dbg.contains("<redacted>"), "{dbg}");
        }
        // It round-trips through TOML (the effective config is the operator's to print).
        let back = parse(&cfg.to_toml_string().unwrap()).unwrap();
        assert_eq!(back.auth, cfg.auth);
    }

    #[test]
    fn gateway_choice_and_rests_default_parse_and_validate() {
        use super::GatewayChoice;
        let cfg = parse("directory = \"d\"\n").unwrap();
        assert_eq!(cfg.gateway_choice, GatewayChoice::Random);
        assert_eq!(cfg.sticky().as_secs(), 600);
        assert_eq!(cfg.gateway_rest().as_millis(), 5_000);
        assert_eq!(cfg.central_rest().as_millis(), 30_000);
        let cfg = parse(
            "directory = \"d\"\ngateway_choice = \"sticky\"\nsticky_secs = 60\n\
             gateway_rest_ms = 250\ncentral_rest_ms = 1500\n",
        )
        .unwrap();
        assert_eq!(cfg.gateway_choice, GatewayChoice::Sticky);
        assert_eq!(cfg.sticky().as_secs(), 60);
        assert_eq!((cfg.gateway_rest_ms, cfg.central_rest_ms), (250, 1500));
        assert_eq!(parse(&cfg.to_toml_string().unwrap()).unwrap(), cfg);
        for (extra, key) in [
            ("gateway_choice = \"rtt\"\n", "gateway_choice"),
            ("sticky_secs = 0\n", "`sticky_secs`"),
            ("gateway_rest_ms = 0\n", "`gateway_rest_ms`"),
            ("central_rest_ms = 0\n", "`central_rest_ms`"),
        ] {
            let msg = parse(&format!("directory = \"d\"\n{extra}"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key) && msg.contains(FILE), "{extra}: {msg}");
        }
        // From the environment, like every other key.
        let env = |k: &str| match k {
            "BRAID_GATEWAY_CHOICE" => Some("sticky".to_string()),
            "BRAID_STICKY_SECS" => Some("30".to_string()),
            "BRAID_GATEWAY_REST_MS" => Some("100".to_string()),
            "BRAID_CENTRAL_REST_MS" => Some("200".to_string()),
            _ => None,
        };
        let cfg = parse_client_config("directory = \"d\"\n", Path::new(FILE), &env).unwrap();
        assert_eq!(cfg.gateway_choice, GatewayChoice::Sticky);
        assert_eq!(
            (cfg.sticky_secs, cfg.gateway_rest_ms, cfg.central_rest_ms),
            (30, 100, 200)
        );
    }

    #[test]
    fn socks_defences_are_validated() {
        let long = "x".repeat(256);
        let cases = [
            ("handshake_timeout_secs = 0\n", "`handshake_timeout_secs`"),
            ("max_connections = 0\n", "`max_connections`"),
            (
                "max_connections_per_source = 0\n",
                "`max_connections_per_source`",
            ),
            (
                "[auth]\nusername = \"\"\npassword = \"p\"\n",
                "`auth.username`",
            ),
            (
                "[auth]\nusername = \"u\"\npassword = \"\"\n",
                "`auth.password`",
            ),
            (
                &*format!("[auth]\nusername = \"u\"\npassword = \"{long}\"\n"),
                "`auth.password`",
            ),
            ("[auth]\nusername = \"u\"\n", "password"),
            (
                "[auth]\nusername = \"u\"\npassword = \"p\"\ntoken = 1\n",
                "token",
            ),
        ];
        for (extra, key) in cases {
            let e = parse(&format!("directory = \"d\"\n{extra}")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(key) && msg.contains(FILE), "{extra}: {msg}");
            assert!(!msg.contains(&long), "{msg}");
        }
        let max = "y".repeat(255);
        let cfg = parse(&format!(
            "directory = \"d\"\n[auth]\nusername = \"{max}\"\npassword = \"{max}\"\n"
        ))
        .unwrap();
        assert_eq!(cfg.auth.unwrap().password.len(), 255);
    }
}
