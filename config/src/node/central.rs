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
    /// Most streams one session may have open at once (default 4096); past it an open is
    /// refused (`resource_limit`).
    #[serde(default = "default_max_streams_per_session")]
    pub max_streams_per_session: u32,
    /// Stream opens per second a session may make, on average (default 200), with bursts
    /// of `stream_open_burst` (default 1000); past it an open is refused (`resource_limit`).
    #[serde(default = "default_stream_open_rate")]
    pub stream_open_rate: u32,
    /// See `stream_open_rate`.
    #[serde(default = "default_stream_open_burst")]
    pub stream_open_burst: u32,
    /// Flow-control window of each stream on a gateway link, in KiB (default 1024): what a
    /// gateway may send on a stream the client is not reading. The link's connection window
    /// is `gateway_link_streams` of these, so a stalled stream never holds another's credit.
    #[serde(default = "default_gateway_stream_window_kib")]
    pub gateway_stream_window_kib: u32,
    /// Streams a gateway link is sized for (default 16384, the gateway's own default
    /// `max_streams`).
    #[serde(default = "default_gateway_link_streams")]
    pub gateway_link_streams: u32,
    /// What one session's stalled streams (the client gives no credit, the gateway has more)
    /// may hold in their gateway windows, in MiB (default 64). Past it the stream stalled
    /// longest is reset (`resource_limit`).
    #[serde(default = "default_session_stalled_mib")]
    pub session_stalled_mib: u64,
    /// The same over all sessions, in MiB (default 1024).
    #[serde(default = "default_global_stalled_mib")]
    pub global_stalled_mib: u64,
    /// Hellos waiting for a handshake, per upstream link (default 256). Links take turns,
    /// and within a link the Hellos of most proof-of-work effort go first; a full queue
    /// drops its least effort.
    #[serde(default = "default_hello_queue_per_link")]
    pub hello_queue_per_link: u32,
    /// Tasks doing handshakes (default 1): at most this many cores go to a Hello flood.
    #[serde(default = "default_admission_workers")]
    pub admission_workers: u32,
    /// How far a Hello's time may be from the central's clock, either way (default 120 s).
    /// A Hello is remembered for twice this long, so that its replay is refused.
    #[serde(default = "default_hello_window_secs")]
    pub hello_window_secs: u64,
    /// Hello keys remembered per generation (two generations; default 262144, ~70 bytes each);
    /// when full, new sessions are refused until the older generation expires.
    #[serde(default = "default_hello_replay_cache")]
    pub hello_replay_cache: u32,
    /// Sessions answered but not yet confirmed by a sealed cell from the client (default
    /// 4096); over it, the oldest are dropped.
    #[serde(default = "default_max_half_open")]
    pub max_half_open: u32,
    /// A session whose client sends no sealed cell within this after the Welcome is dropped
    /// (default 5000 ms).
    #[serde(default = "default_half_open_timeout_ms")]
    pub half_open_timeout_ms: u64,
    /// What all sessions keep for sending, together: queued stream bytes and cells in
    /// flight (default 256 MiB). Over it a session still takes bytes up to its fair share
    /// (this over the sessions keeping any), so a client that never acknowledges cannot
    /// stall the others.
    #[serde(default = "default_global_send_bytes")]
    pub global_send_bytes: u64,
    /// Least time between two changes of a client's mailbox set (default 1000 ms); a
    /// newer set waits for its turn. Each change rebuilds the session's paths and resends
    /// what was in flight on the dropped ones.
    #[serde(default = "default_mailbox_change_interval_ms")]
    pub mailbox_change_interval_ms: u64,
    /// Common settings.
    pub node: NodeCommon,
}

fn default_max_streams_per_session() -> u32 {
    4096
}

fn default_stream_open_rate() -> u32 {
    200
}

fn default_stream_open_burst() -> u32 {
    1000
}

fn default_gateway_stream_window_kib() -> u32 {
    1024
}

fn default_gateway_link_streams() -> u32 {
    16_384
}

fn default_session_stalled_mib() -> u64 {
    64
}

fn default_global_stalled_mib() -> u64 {
    1024
}

fn default_hello_queue_per_link() -> u32 {
    256
}

fn default_admission_workers() -> u32 {
    1
}

fn default_hello_window_secs() -> u64 {
    120
}

fn default_hello_replay_cache() -> u32 {
    1 << 18
}

fn default_max_half_open() -> u32 {
    4096
}

fn default_half_open_timeout_ms() -> u64 {
    5000
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

fn default_global_send_bytes() -> u64 {
    256 * 1024 * 1024
}

fn default_mailbox_change_interval_ms() -> u64 {
    1000
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
            max_streams_per_session: default_max_streams_per_session(),
            stream_open_rate: default_stream_open_rate(),
            stream_open_burst: default_stream_open_burst(),
            gateway_stream_window_kib: default_gateway_stream_window_kib(),
            gateway_link_streams: default_gateway_link_streams(),
            session_stalled_mib: default_session_stalled_mib(),
            global_stalled_mib: default_global_stalled_mib(),
            hello_queue_per_link: default_hello_queue_per_link(),
            admission_workers: default_admission_workers(),
            hello_window_secs: default_hello_window_secs(),
            hello_replay_cache: default_hello_replay_cache(),
            max_half_open: default_max_half_open(),
            half_open_timeout_ms: default_half_open_timeout_ms(),
            global_send_bytes: default_global_send_bytes(),
            mailbox_change_interval_ms: default_mailbox_change_interval_ms(),
            node,
        }
    }

    /// [`Self::reassembly_timeout_secs`] as a `Duration`.
    pub fn reassembly_timeout(&self) -> Duration {
        Duration::from_secs(self.reassembly_timeout_secs)
    }

    /// [`Self::gateway_stream_window_kib`] in bytes.
    pub fn gateway_stream_window(&self) -> u32 {
        self.gateway_stream_window_kib.saturating_mul(1024)
    }

    /// [`Self::mailbox_change_interval_ms`] as a `Duration`.
    pub fn mailbox_change_interval(&self) -> Duration {
        Duration::from_millis(self.mailbox_change_interval_ms)
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
                (
                    "max_streams_per_session",
                    u64::from(self.max_streams_per_session),
                ),
                ("stream_open_rate", u64::from(self.stream_open_rate)),
                ("stream_open_burst", u64::from(self.stream_open_burst)),
                (
                    "gateway_stream_window_kib",
                    u64::from(self.gateway_stream_window_kib),
                ),
                ("gateway_link_streams", u64::from(self.gateway_link_streams)),
                ("session_stalled_mib", self.session_stalled_mib),
                ("global_stalled_mib", self.global_stalled_mib),
                ("hello_queue_per_link", u64::from(self.hello_queue_per_link)),
                ("admission_workers", u64::from(self.admission_workers)),
                ("hello_window_secs", self.hello_window_secs),
                ("hello_replay_cache", u64::from(self.hello_replay_cache)),
                ("max_half_open", u64::from(self.max_half_open)),
                ("half_open_timeout_ms", self.half_open_timeout_ms),
                ("global_send_bytes", self.global_send_bytes),
            ],
        )?;
        check::not_below(
            file,
            ("global_stalled_mib", self.global_stalled_mib),
            ("session_stalled_mib", self.session_stalled_mib),
            Some("the global cap must hold at least one session's"),
        )?;
        check::not_below(
            file,
            ("global_reorder_bytes", self.global_reorder_bytes),
            ("session_reorder_bytes", self.session_reorder_bytes),
            Some("the global cap must hold at least one session"),
        )
    }
}
