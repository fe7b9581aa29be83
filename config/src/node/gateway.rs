//! `role = "gateway"`: the exit. It dials the central (so it works behind NAT) and
//! connects to targets on the users' behalf, under the `[exit]` policy (value types in
//! `crate::exit`) and the `[hosts]` overrides.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NodeCommon;
use crate::check;
use crate::error::ConfigError;
use crate::exit::{validate_hosts, ExitConfig};

/// `role = "gateway"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Timeout for connecting to a target (default 10 s).
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// First delay before redialling the central (default 200 ms).
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Largest delay between redials (default 30000 ms).
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Most proxied streams open at once, over all centrals (default 16384). Each holds a
    /// target socket, so it should fit under the process's open-file limit; it is also how
    /// many QUIC streams a central may open on its link to this gateway. Past it a stream is
    /// refused (`resource_limit`, SOCKS reply 01).
    #[serde(default = "default_max_streams")]
    pub max_streams: u32,
    /// A link to a central silent this long is dead (default 30000 ms; keep-alives go out at
    /// a quarter of it, at most every second). A gateway killed without a goodbye is noticed
    /// by its centrals this fast, and they route around it.
    #[serde(default = "default_link_idle_timeout_ms")]
    pub link_idle_timeout_ms: u64,
    /// How long a stream whose carrier died (its central went) keeps its target connection
    /// while waiting for the client to resume it through another central (default 30000 ms).
    #[serde(default = "crate::check::default_resume_grace_ms")]
    pub resume_grace_ms: u64,
    /// Sealed bytes each stream keeps until the client acknowledges them, so that they can
    /// be sent again after a resume (default 2048 KiB; at least 512). Past it the stream
    /// stops reading its target until acknowledgements free room.
    #[serde(default = "crate::check::default_resume_buffer_kib")]
    pub resume_buffer_kib: u64,
    /// Sealed bytes all streams together may keep for resending (default 512 MiB): past
    /// it, streams stop reading their apps until acknowledgements free room, so memory stays
    /// bounded however many streams are open.
    #[serde(default = "crate::check::default_resume_budget_mib")]
    pub resume_budget_mib: u64,
    /// Flow-control window of each stream on a central link, in KiB (default 1024). The
    /// link's connection window is `max_streams` of these, so a stream whose target stops
    /// reading holds only its own window and never stalls another user's streams; what the
    /// links may buffer is bounded by `max_streams × link_stream_window_kib`.
    #[serde(default = "default_link_stream_window_kib")]
    pub link_stream_window_kib: u32,
    /// A stream whose first inner message (an open or a resume) has not fully arrived this
    /// long after the central opened it is reset (default 10000 ms).
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// A stream with no bytes from the client's side for this long is closed, and its
    /// target connection with it (default 3600 s). An active download is not idle: the
    /// client acknowledges what it receives.
    #[serde(default = "default_stream_idle_timeout_secs")]
    pub stream_idle_timeout_secs: u64,
    /// An open (its 0-RTT first message) sent more than this from the gateway's clock is
    /// refused, and the gateway remembers every open's ephemeral key at least twice this
    /// long to refuse replays (default 120 s; at most 86400). Clients' clocks must be this
    /// close to the gateway's.
    #[serde(default = "default_open_replay_window_secs")]
    pub open_replay_window_secs: u64,
    /// Most ephemeral keys each of the replay cache's two generations holds (default
    /// 131072; about 70 bytes each, so at most ~18 MB). A generation lasts twice the window;
    /// past the cap, new opens are refused (`resource_limit`) until it rotates, so size it
    /// for the opens per `2 × open_replay_window_secs` the gateway must take.
    #[serde(default = "default_open_replay_cache")]
    pub open_replay_cache: u64,
    /// Most name lookups the gateway runs at once (default 64; at least 1). Each system
    /// lookup holds a thread until the resolver answers, so a client that opens streams to
    /// names that never resolve must not take every thread: past the cap an open waits for
    /// a free slot, within `dns_timeout_ms`. `[hosts]` names take no slot.
    #[serde(default = "default_max_dns_lookups")]
    pub max_dns_lookups: u32,
    /// How long an open may wait for its name to resolve, the wait for a lookup slot
    /// included (default 10000 ms). Past it the open is refused: SOCKS reply 04 when the
    /// lookup itself was slow, 01 (`resource_limit`) when no slot came free. A lookup that
    /// outlives it keeps its slot until the resolver returns.
    #[serde(default = "default_dns_timeout_ms")]
    pub dns_timeout_ms: u64,
    /// How often the gateway re-reads its host's interface addresses, which its exit
    /// refuses (default 60 s; they are read at start too).
    #[serde(default = "default_local_addrs_refresh_secs")]
    pub local_addrs_refresh_secs: u64,
    /// Name destinations (host and port) in the gateway's log lines (default false: logs
    /// show `[redacted]:PORT`).
    #[serde(default)]
    pub log_destinations: bool,
    /// Serve UDP associations (SOCKS5 UDP ASSOCIATE), each datagram's destination checked
    /// against the exit policy (default true).
    #[serde(default = "default_true")]
    pub udp: bool,
    /// A UDP association with no datagram either way for this long ends (default 120 s).
    #[serde(default = "default_udp_idle_secs")]
    pub udp_idle_secs: u64,
    /// UDP associations open at once, at most (default 1024; each may hold about 0.5 MiB:
    /// its receive buffers and 256 KiB of queued replies). Past it an association is
    /// refused (`resource_limit`).
    #[serde(default = "default_max_udp_associations")]
    pub max_udp_associations: u32,
    /// The TTL of every DNS answer given to clients (default 60 s; the system resolver
    /// gives none, and a short one keeps sites from tagging users by their cached answers).
    #[serde(default = "default_dns_ttl_secs")]
    pub dns_ttl_secs: u32,
    /// Exit policy switches.
    #[serde(default)]
    pub exit: ExitConfig,
    /// Static name overrides, like /etc/hosts (lower-case names). Default empty.
    #[serde(default)]
    pub hosts: BTreeMap<String, IpAddr>,
    /// Common settings.
    pub node: NodeCommon,
}

fn default_true() -> bool {
    true
}

fn default_max_udp_associations() -> u32 {
    1024
}

fn default_udp_idle_secs() -> u64 {
    120
}

fn default_dns_ttl_secs() -> u32 {
    60
}

fn default_connect_timeout_secs() -> u64 {
    10
}

fn default_link_idle_timeout_ms() -> u64 {
    30_000
}

fn default_open_replay_window_secs() -> u64 {
    120
}

fn default_open_replay_cache() -> u64 {
    131_072
}

/// The largest replay window: a day.
const MAX_OPEN_REPLAY_WINDOW_SECS: u64 = 86_400;
/// The largest replay cache generation (~1 GB at the cap: larger is a typo).
const MAX_OPEN_REPLAY_CACHE: u64 = 1 << 24;

fn default_max_streams() -> u32 {
    16_384
}

fn default_link_stream_window_kib() -> u32 {
    1024
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
}

fn default_stream_idle_timeout_secs() -> u64 {
    3600
}

fn default_max_dns_lookups() -> u32 {
    64
}

fn default_dns_timeout_ms() -> u64 {
    10_000
}

fn default_local_addrs_refresh_secs() -> u64 {
    60
}

fn default_reconnect_min_ms() -> u64 {
    200
}

fn default_reconnect_max_ms() -> u64 {
    30_000
}

impl GatewayConfig {
    /// A gateway with every setting at its default (the default exit policy).
    pub fn new(node: NodeCommon) -> Self {
        GatewayConfig {
            connect_timeout_secs: default_connect_timeout_secs(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_ms: default_reconnect_max_ms(),
            max_streams: default_max_streams(),
            link_idle_timeout_ms: default_link_idle_timeout_ms(),
            resume_grace_ms: crate::check::default_resume_grace_ms(),
            resume_buffer_kib: crate::check::default_resume_buffer_kib(),
            resume_budget_mib: crate::check::default_resume_budget_mib(),
            link_stream_window_kib: default_link_stream_window_kib(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            stream_idle_timeout_secs: default_stream_idle_timeout_secs(),
            open_replay_window_secs: default_open_replay_window_secs(),
            open_replay_cache: default_open_replay_cache(),
            max_dns_lookups: default_max_dns_lookups(),
            dns_timeout_ms: default_dns_timeout_ms(),
            local_addrs_refresh_secs: default_local_addrs_refresh_secs(),
            log_destinations: false,
            udp: true,
            udp_idle_secs: default_udp_idle_secs(),
            max_udp_associations: default_max_udp_associations(),
            dns_ttl_secs: default_dns_ttl_secs(),
            exit: ExitConfig::default(),
            hosts: BTreeMap::new(),
            node,
        }
    }

    /// [`Self::udp_idle_secs`] as a `Duration`.
    pub fn udp_idle(&self) -> Duration {
        Duration::from_secs(self.udp_idle_secs)
    }

    /// [`Self::connect_timeout_secs`] as a `Duration`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// [`Self::link_idle_timeout_ms`] as a `Duration`.
    pub fn link_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.link_idle_timeout_ms)
    }

    /// [`Self::dns_timeout_ms`] as a `Duration`.
    pub fn dns_timeout(&self) -> Duration {
        Duration::from_millis(self.dns_timeout_ms)
    }

    /// [`Self::local_addrs_refresh_secs`] as a `Duration`.
    pub fn local_addrs_refresh(&self) -> Duration {
        Duration::from_secs(self.local_addrs_refresh_secs)
    }

    /// [`Self::resume_grace_ms`] as a `Duration`.
    pub fn resume_grace(&self) -> Duration {
        Duration::from_millis(self.resume_grace_ms)
    }

    /// [`Self::resume_budget_mib`] in bytes.
    pub fn resume_budget(&self) -> usize {
        crate::check::bytes(self.resume_budget_mib, 1 << 20)
    }

    /// [`Self::resume_buffer_kib`] in bytes.
    pub fn resume_buffer(&self) -> usize {
        crate::check::bytes(self.resume_buffer_kib, 1024)
    }

    /// [`Self::link_stream_window_kib`] in bytes (within QUIC's u32 stream windows).
    pub fn link_stream_window(&self) -> u32 {
        self.link_stream_window_kib.saturating_mul(1024)
    }

    /// [`Self::handshake_timeout_ms`] as a `Duration`.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// [`Self::stream_idle_timeout_secs`] as a `Duration`.
    pub fn stream_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.stream_idle_timeout_secs)
    }

    /// [`Self::open_replay_cache`] as a count.
    pub fn open_replay_cache(&self) -> usize {
        usize::try_from(self.open_replay_cache).unwrap_or(usize::MAX)
    }

    /// [`Self::reconnect_min_ms`] as a `Duration`.
    pub fn reconnect_min(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_ms)
    }

    /// [`Self::reconnect_max_ms`] as a `Duration`.
    pub fn reconnect_max(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_ms)
    }

    /// Positive timeouts, a redial backoff whose max is at least its min, then the
    /// exit rules and the `[hosts]` names.
    pub(super) fn validate_in(&self, file: &Path) -> Result<(), ConfigError> {
        check::positive(
            file,
            &[
                ("connect_timeout_secs", self.connect_timeout_secs),
                ("reconnect_min_ms", self.reconnect_min_ms),
                ("max_streams", u64::from(self.max_streams)),
                ("link_idle_timeout_ms", self.link_idle_timeout_ms),
                ("resume_grace_ms", self.resume_grace_ms),
                (
                    "link_stream_window_kib",
                    u64::from(self.link_stream_window_kib),
                ),
                ("handshake_timeout_ms", self.handshake_timeout_ms),
                ("stream_idle_timeout_secs", self.stream_idle_timeout_secs),
                ("open_replay_window_secs", self.open_replay_window_secs),
                ("open_replay_cache", self.open_replay_cache),
                ("max_dns_lookups", u64::from(self.max_dns_lookups)),
                ("dns_timeout_ms", self.dns_timeout_ms),
                ("local_addrs_refresh_secs", self.local_addrs_refresh_secs),
            ],
        )?;
        for (key, value, max) in [
            (
                "open_replay_window_secs",
                self.open_replay_window_secs,
                MAX_OPEN_REPLAY_WINDOW_SECS,
            ),
            (
                "open_replay_cache",
                self.open_replay_cache,
                MAX_OPEN_REPLAY_CACHE,
            ),
        ] {
            if value > max {
                return Err(ConfigError::invalid(
                    file,
                    key,
                    format!("{value} is more than {max}"),
                ));
            }
        }
        check::resume_buffer(file, self.resume_buffer_kib)?;
        check::resume_budget(file, self.resume_budget_mib)?;
        check::not_below(
            file,
            ("reconnect_max_ms", self.reconnect_max_ms),
            ("reconnect_min_ms", self.reconnect_min_ms),
            None,
        )?;
        self.exit.validate_in(file)?;
        validate_hosts(&self.hosts, file)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use super::*;
    use crate::exit::{ExitRule, PortRange};
    use crate::NodeConfig;

    const GATEWAY: &str =
        "role = \"gateway\"\n[node]\nid = \"g\"\ndirectory = \"d\"\nidentity = \"k\"\n";

    fn gateway(extra: &str) -> Result<GatewayConfig, ConfigError> {
        let text = format!("{GATEWAY}{extra}");
        match crate::parse_node_config(&text, Path::new("/x/g.toml"), &crate::no_env)? {
            NodeConfig::Gateway(g) => Ok(g),
            other => panic!("not a gateway: {other:?}"),
        }
    }

    #[test]
    fn max_streams_defaults_and_is_positive() {
        let top = |line: &str| {
            let text = format!("{line}\n{GATEWAY}");
            crate::parse_node_config(&text, Path::new("/x/g.toml"), &crate::no_env)
        };
        assert_eq!(gateway("").unwrap().max_streams, 16_384);
        match top("max_streams = 20000").unwrap() {
            NodeConfig::Gateway(g) => assert_eq!(g.max_streams, 20_000),
            other => panic!("not a gateway: {other:?}"),
        }
        let e = top("max_streams = 0").unwrap_err().to_string();
        assert!(e.contains("max_streams"), "{e}");
    }

    #[test]
    fn open_replay_keys_default_and_are_bounded() {
        let g = gateway("").unwrap();
        assert_eq!(g.open_replay_window_secs, 120);
        assert_eq!(g.open_replay_cache(), 131_072);
        let top = |line: &str| {
            let text = format!("{line}\n{GATEWAY}");
            crate::parse_node_config(&text, Path::new("/x/g.toml"), &crate::no_env)
        };
        match top("open_replay_window_secs = 5\nopen_replay_cache = 10").unwrap() {
            NodeConfig::Gateway(g) => {
                assert_eq!((g.open_replay_window_secs, g.open_replay_cache), (5, 10))
            }
            other => panic!("not a gateway: {other:?}"),
        }
        for bad in [
            "open_replay_window_secs = 0",
            "open_replay_window_secs = 86401",
            "open_replay_cache = 0",
            "open_replay_cache = 99999999",
        ] {
            let e = top(bad).unwrap_err().to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{bad}: {e}");
        }
        // The environment overrides them like the other keys.
        let env = |k: &str| (k == "BRAID_OPEN_REPLAY_WINDOW_SECS").then(|| "7".to_string());
        let text = GATEWAY.to_string();
        match crate::parse_node_config(&text, Path::new("/x/g.toml"), &env).unwrap() {
            NodeConfig::Gateway(g) => assert_eq!(g.open_replay_window_secs, 7),
            other => panic!("not a gateway: {other:?}"),
        }
    }

    #[test]
    fn dns_and_local_address_keys_default_and_are_positive() {
        let g = gateway("").unwrap();
        assert_eq!(g.max_dns_lookups, 64);
        assert_eq!(g.dns_timeout(), Duration::from_secs(10));
        assert_eq!(g.local_addrs_refresh(), Duration::from_secs(60));
        assert!(!g.log_destinations);
        let top = |line: &str| {
            let text = format!("{line}\n{GATEWAY}");
            crate::parse_node_config(&text, Path::new("/x/g.toml"), &crate::no_env)
        };
        match top("max_dns_lookups = 2\ndns_timeout_ms = 1500\nlog_destinations = true").unwrap() {
            NodeConfig::Gateway(g) => {
                assert_eq!(g.max_dns_lookups, 2);
                assert_eq!(g.dns_timeout_ms, 1500);
                assert!(g.log_destinations);
            }
            other => panic!("not a gateway: {other:?}"),
        }
        for key in [
            "max_dns_lookups",
            "dns_timeout_ms",
            "local_addrs_refresh_secs",
        ] {
            let e = top(&format!("{key} = 0")).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    #[test]
    fn exit_rules_parse_in_order() {
        let g = gateway(
            r#"
[[exit.rules]]
action = "deny"
ports = 25
[[exit.rules]]
action = "deny"
domain = "tracker.example"
[[exit.rules]]
action = "allow"
cidr = "10.20.0.0/16"
ports = "8000-8999"
[[exit.rules]]
action = "deny"
cidr = "fd00::/8"
[[exit.rules]]
action = "deny"
cidr = "192.0.2.7"
"#,
        )
        .unwrap();
        let r = &g.exit.rules;
        assert_eq!(r.len(), 5);
        assert_eq!(r[0], ExitRule::deny().ports(PortRange::single(25)));
        assert_eq!(r[1], ExitRule::deny().domain("tracker.example"));
        assert_eq!(
            r[2],
            ExitRule::allow()
                .cidr("10.20.0.0/16".parse().unwrap())
                .ports(PortRange::new(8000, 8999).unwrap())
        );
        assert_eq!(r[3].cidr.unwrap().prefix(), 8);
        assert_eq!(r[4].cidr.unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(r[2].to_string(), "allow cidr 10.20.0.0/16 ports 8000-8999");
        // Round trip through the serializer.
        let cfg = NodeConfig::Gateway(g.clone());
        let text = cfg.to_toml_string().unwrap();
        let back = crate::parse_node_config(&text, Path::new("/x/g.toml"), &crate::no_env).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_exit_rules_name_the_key() {
        for (rule, fragments) in [
            (
                "action = \"deny\"\ncidr = \"10.0.0.1/8\"",
                &["exit.rules[0].cidr", "did you mean 10.0.0.0/8"][..],
            ),
            (
                "action = \"deny\"\ncidr = \"10.0.0.0/33\"",
                &["exit.rules[0].cidr", "/33"],
            ),
            (
                "action = \"deny\"\ncidr = \"nope\"",
                &["exit.rules[0].cidr", "not a network"],
            ),
            (
                "action = \"deny\"\nports = \"90-80\"",
                &["exit.rules[0].ports", "empty"],
            ),
            (
                "action = \"deny\"\nports = 70000",
                &["exit.rules[0].ports", "out of range"],
            ),
            ("action = \"maybe\"", &["exit.rules[0].action"]),
            ("action = \"deny\"\nhost = \"a\"", &["exit.rules[0].host"]),
            (
                "action = \"deny\"\ndomain = \".example.com\"",
                &["exit.rules[0].domain", "leading"],
            ),
            (
                "action = \"deny\"\ndomain = \"Example.com\"",
                &["exit.rules[0].domain", "lower-case"],
            ),
            (
                "action = \"allow\"\ncidr = \"0.0.0.0/0\"",
                &["exit.rules[0].cidr", "every internal address"],
            ),
            (
                "action = \"allow\"\ncidr = \"::/0\"",
                &["exit.rules[0].cidr", "every internal address"],
            ),
        ] {
            let e = gateway(&format!("[[exit.rules]]\n{rule}\n"))
                .unwrap_err()
                .to_string();
            for f in fragments {
                assert!(e.contains(f), "{rule:?}: {e:?} lacks {f:?}");
            }
        }
        // A deny of everything is fine.
        gateway("[[exit.rules]]\naction = \"deny\"\ncidr = \"0.0.0.0/0\"\n").unwrap();
    }
}
