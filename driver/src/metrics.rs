//! Counters every node keeps, exported as Prometheus text on the admin port. Tests read
//! them to check where cells went rather than assuming it.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    /// Cells (or envelopes) received from the previous hop.
    pub cells_in: AtomicU64,
    /// Cells sent on to the next hop.
    pub cells_out: AtomicU64,
    /// Cells dropped: malformed, wrong size, unknown session, queue full.
    pub cells_dropped: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_closed: AtomicU64,
    /// Client: sessions replaced at the end of their lifetime.
    pub sessions_rotated: AtomicU64,
    pub streams_opened: AtomicU64,
    pub streams_refused: AtomicU64,
    pub retransmits: AtomicU64,
    pub peers_refused: AtomicU64,
    /// First hops: client connections refused for their credential (missing, expired,
    /// revoked, forged, replayed). Not per user: that would record who used the network.
    pub users_refused: AtomicU64,
    /// First hops: client connections admitted with a valid credential.
    pub users_admitted: AtomicU64,
    pub bytes_to_targets: AtomicU64,
    pub bytes_from_targets: AtomicU64,
    /// Links to the next hop that are up now (a gauge).
    pub links_up: AtomicU64,
    /// Central: downstreams linked now (a gauge).
    pub downstreams_up: AtomicU64,
    /// Central: gateways linked now (a gauge).
    pub gateways_up: AtomicU64,
    /// Sealed cells dropped as duplicates or replays (after a retransmission, or an attack).
    pub cells_duplicate: AtomicU64,
    /// Cells that failed authentication, parsing or the window check.
    pub cells_rejected: AtomicU64,
    /// Sessions torn down to keep reassembly memory under the global cap or the timeout.
    pub sessions_evicted: AtomicU64,
    /// Hellos refused: malformed, replayed, stale, over a queue or cap.
    pub hellos_refused: AtomicU64,
    /// QUIC connection attempts answered with a Retry (address validation under load).
    pub quic_retries: AtomicU64,
    /// Inner streams moved to a new carrier (a resume accepted).
    pub streams_resumed: AtomicU64,
    /// Inner streams waiting for a resume now (a gauge).
    pub streams_detached: AtomicU64,
    /// UDP datagrams relayed (client: from apps; gateway: to targets).
    pub datagrams_sent: AtomicU64,
    /// UDP datagrams dropped: fragmented, malformed, from a stranger, queue full, too big.
    pub datagrams_dropped: AtomicU64,
    /// Gateway: UDP datagrams refused by the exit policy.
    pub datagrams_refused: AtomicU64,
    /// DNS queries answered (client: on its DNS port; gateway: resolved).
    pub dns_queries: AtomicU64,
    /// Stream bytes (sealed inner records) handed to sessions to send.
    pub stream_bytes_sent: AtomicU64,
    /// Stream bytes sessions delivered to their streams' owners.
    pub stream_bytes_received: AtomicU64,
    /// First hops: bytes carried for admitted users, all users together.
    pub user_bytes: AtomicU64,
    /// First hops: client connections closed because their user's quota was spent.
    pub users_over_quota: AtomicU64,
    /// First hops with per-user usage on (`per_user_usage`): bytes by user name. Off (None)
    /// by default: per-user counters are a record of who used how much.
    pub per_user_bytes: std::sync::Mutex<Option<std::collections::BTreeMap<String, u64>>>,
}

/// Counts one link in a gauge while it lives: dropping it (also when the task serving the
/// link is cancelled) takes the link back out.
pub struct LinkUpGuard {
    metrics: std::sync::Arc<Metrics>,
    gauge: fn(&Metrics) -> &AtomicU64,
}

impl LinkUpGuard {
    /// A link to the next hop, in `links_up`.
    pub fn new(m: std::sync::Arc<Metrics>) -> LinkUpGuard {
        LinkUpGuard::counted_in(m, |m| &m.links_up)
    }

    /// A link counted in `gauge` (the central's `downstreams_up`, `gateways_up`).
    pub fn counted_in(
        metrics: std::sync::Arc<Metrics>,
        gauge: fn(&Metrics) -> &AtomicU64,
    ) -> LinkUpGuard {
        Metrics::inc(gauge(&metrics));
        LinkUpGuard { metrics, gauge }
    }
}

impl Drop for LinkUpGuard {
    fn drop(&mut self) {
        Metrics::dec((self.gauge)(&self.metrics));
    }
}

/// Panics anywhere in the process (counted by the hook the binaries install).
pub static PANICS: AtomicU64 = AtomicU64::new(0);

/// Installs the panic counter once per process (for library users such as the demo).
pub fn install_panic_counter_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(install_panic_counter);
}

/// Counts panics, then runs the default hook (which prints them).
pub fn install_panic_counter() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        default(info);
    }));
}

impl Metrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn dec(c: &AtomicU64) {
        c.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// Prometheus text exposition format.
    pub fn render(&self, node: &str, role: &str) -> String {
        let rows: [(&str, &AtomicU64, &str); 33] = [
            (
                "braid_datagrams_sent_total",
                &self.datagrams_sent,
                "UDP datagrams relayed",
            ),
            (
                "braid_datagrams_dropped_total",
                &self.datagrams_dropped,
                "UDP datagrams dropped (fragmented, malformed, stranger, queue full)",
            ),
            (
                "braid_datagrams_refused_total",
                &self.datagrams_refused,
                "UDP datagrams refused by the exit policy",
            ),
            (
                "braid_dns_queries_total",
                &self.dns_queries,
                "DNS queries answered",
            ),
            (
                "braid_streams_resumed_total",
                &self.streams_resumed,
                "inner streams moved to a new carrier",
            ),
            (
                "braid_streams_detached",
                &self.streams_detached,
                "inner streams waiting for a resume",
            ),
            (
                "braid_cells_duplicate_total",
                &self.cells_duplicate,
                "duplicate or replayed cells dropped",
            ),
            (
                "braid_cells_rejected_total",
                &self.cells_rejected,
                "cells failing authentication or checks",
            ),
            (
                "braid_sessions_evicted_total",
                &self.sessions_evicted,
                "sessions evicted for memory or timeout",
            ),
            (
                "braid_hellos_refused_total",
                &self.hellos_refused,
                "hellos refused: malformed, replayed, stale, or over a queue or cap",
            ),
            (
                "braid_quic_retries_total",
                &self.quic_retries,
                "connection attempts sent a QUIC Retry to validate their address",
            ),
            ("braid_panics_total", &PANICS, "panics in this process"),
            (
                "braid_links_up",
                &self.links_up,
                "links to the next hop that are up",
            ),
            (
                "braid_downstreams_up",
                &self.downstreams_up,
                "downstreams linked to this central",
            ),
            (
                "braid_gateways_up",
                &self.gateways_up,
                "gateways linked to this central",
            ),
            (
                "braid_cells_in_total",
                &self.cells_in,
                "cells received from the previous hop",
            ),
            (
                "braid_cells_out_total",
                &self.cells_out,
                "cells sent to the next hop",
            ),
            (
                "braid_cells_dropped_total",
                &self.cells_dropped,
                "cells dropped",
            ),
            (
                "braid_sessions_opened_total",
                &self.sessions_opened,
                "sessions opened",
            ),
            (
                "braid_sessions_closed_total",
                &self.sessions_closed,
                "sessions closed",
            ),
            (
                "braid_sessions_rotated_total",
                &self.sessions_rotated,
                "sessions replaced at the end of their lifetime",
            ),
            (
                "braid_streams_opened_total",
                &self.streams_opened,
                "streams opened",
            ),
            (
                "braid_streams_refused_total",
                &self.streams_refused,
                "streams refused",
            ),
            (
                "braid_retransmits_total",
                &self.retransmits,
                "cells retransmitted",
            ),
            (
                "braid_peers_refused_total",
                &self.peers_refused,
                "peers refused",
            ),
            (
                "braid_users_refused_total",
                &self.users_refused,
                "client connections refused for their credential",
            ),
            (
                "braid_users_admitted_total",
                &self.users_admitted,
                "client connections admitted with a valid credential",
            ),
            (
                "braid_user_bytes_total",
                &self.user_bytes,
                "bytes carried for admitted users, all together",
            ),
            (
                "braid_users_over_quota_total",
                &self.users_over_quota,
                "client connections closed for a spent quota",
            ),
            (
                "braid_target_bytes_out_total",
                &self.bytes_to_targets,
                "bytes written to targets",
            ),
            (
                "braid_target_bytes_in_total",
                &self.bytes_from_targets,
                "bytes read from targets",
            ),
            (
                "braid_stream_bytes_sent_total",
                &self.stream_bytes_sent,
                "stream bytes handed to sessions to send",
            ),
            (
                "braid_stream_bytes_received_total",
                &self.stream_bytes_received,
                "stream bytes delivered by sessions",
            ),
        ];
        let mut out = String::new();
        for (name, v, help) in rows {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{node=\"{node}\",role=\"{role}\"}} {}\n",
                Self::get(v)
            ));
        }
        if let Ok(guard) = self.per_user_bytes.lock() {
            if let Some(users) = guard.as_ref() {
                let name = "braid_user_bytes_by_user_total";
                out.push_str(&format!(
                    "# HELP {name} bytes carried per user (per_user_usage is on)\n# TYPE {name} counter\n"
                ));
                for (user, bytes) in users {
                    out.push_str(&format!(
                        "{name}{{node=\"{node}\",role=\"{role}\",user=\"{user}\"}} {bytes}\n"
                    ));
                }
            }
        }
        out
    }
}
