//! `braid-driver`: the async half of Braid's sessions, shared by the client and the nodes
//! (quinn's split: `braid_proto::session::Session` is the state machine, this crate feeds
//! it). It holds the session task, link dialing and publishing, the stream-owner contract
//! ([`stream`]), the one sealed-record pump ([`pump`]), metrics, the test tap and signal
//! handling. It knows no role: the roles live in `braid-node`, the front ends in `braid`.

pub mod drop_queue;
pub mod fd_limit;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod pump;
pub mod session_task;
pub mod signal;
pub mod status;
pub mod stream;
pub mod tap;

pub use link::{keep_dialing, publish_link, sleep_or_shutdown, Backoff, Link};
pub use metrics::Metrics;
pub use signal::wait_for_signal;
pub use status::{status_channel, SessionView, StatusPublisher, StatusReader};
pub use tap::{Tap, TapPoint};

/// Seconds since the Unix epoch by the system clock (0 if it is set before 1970): the time
/// a Hello carries.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
