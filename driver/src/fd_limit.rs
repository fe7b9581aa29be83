//! The open-file limit. Every proxied stream costs a socket at the client (the application's
//! connection) and at the gateway (the target's), so a process's `RLIMIT_NOFILE` is the real
//! ceiling on its streams. Both binaries raise the soft limit to the hard one at start, and
//! warn when the configured stream cap cannot fit under it.

use tracing::{info, warn};

/// File descriptors kept aside for everything that is not a proxied stream: the QUIC
/// sockets, the admin port, the listener, logs, the resolver.
pub const FD_RESERVE: u64 = 256;

/// The process's open-file limits before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub was: u64,
    pub now: u64,
    pub hard: u64,
}

impl FdLimit {
    /// Streams that fit under the (raised) soft limit, one socket each, past [`FD_RESERVE`].
    pub fn streams(&self) -> u64 {
        self.now.saturating_sub(FD_RESERVE)
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. A limit that cannot be raised stays
/// as it was; nothing here is fatal.
pub fn raise() -> FdLimit {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let r = getrlimit(Resource::Nofile);
    let was = r.current.unwrap_or(u64::MAX);
    let hard = r.maximum.unwrap_or(u64::MAX);
    if was < hard {
        let raised = Rlimit {
            current: r.maximum,
            maximum: r.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            warn!(error = %e, soft = was, hard, "could not raise the open-file limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    FdLimit { was, now, hard }
}

/// [`raise`], then one log line, and a warning when `streams` (the configured cap on what
/// this process holds open at once, one socket each) does not fit under the limit.
pub fn raise_for(what: &str, streams: u64) -> FdLimit {
    let l = raise();
    info!(
        soft_was = l.was,
        soft = l.now,
        hard = l.hard,
        "open-file limit"
    );
    if streams > l.streams() {
        warn!(
            key = what,
            cap = streams,
            fits = l.streams(),
            reserve = FD_RESERVE,
            "stream cap above what the open-file limit holds; streams past it fail to open a socket"
        );
    }
    l
}
