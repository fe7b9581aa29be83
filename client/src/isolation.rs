//! Stream isolation: streams that give different SOCKS usernames or HTTP proxy users, or
//! that come in on different listening ports, never share an outer session or a gateway
//! choice, as Tor's `IsolateSOCKSAuth` and per-port isolation keep them apart.
//!
//! Each isolation key (listening port, username) gets its own overlay client: its own
//! QUIC connections to the first hops and relays, its own session, its own gateway choice.
//! Streams with no username on the main proxy port use the client's first session.
//!
//! Bounds: at most `max` isolated sessions at once. A session with no stream for `idle`
//! is closed, and its key starts afresh on its next stream. When all `max` are busy, a
//! new key's stream is refused (`RESOURCE_LIMIT`: SOCKS 01, HTTP 503), as is one whose
//! session does not start within the client's `session_wait`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::inner_stream::OpenFailure;
use crate::overlay::ClientHandle;

/// Default for the config's `max_isolated_sessions`.
pub const MAX_SESSIONS: usize = 32;
/// Default for the config's `isolation_idle_secs`.
pub const IDLE: Duration = Duration::from_secs(600);

/// What keeps streams apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IsolationKey {
    /// The local port the app connected to.
    pub port: u16,
    /// The SOCKS username, SOCKS4 user id or HTTP proxy user, if any.
    pub user: Option<Vec<u8>>,
}

/// Starts one more overlay client (its own links and session) under a stop token.
pub type StartClient = Arc<
    dyn Fn(CancellationToken) -> Pin<Box<dyn Future<Output = anyhow::Result<ClientHandle>> + Send>>
        + Send
        + Sync,
>;

struct Group {
    /// Set once the group's client has started; streams of the key wait on it together.
    handle: Arc<tokio::sync::OnceCell<ClientHandle>>,
    stop: CancellationToken,
    users: Arc<AtomicUsize>,
    last_used: Arc<Mutex<Instant>>,
}

/// The client's sessions, one per isolation key.
pub struct Sessions {
    default: ClientHandle,
    /// The main proxy port: streams on it without a user take `default`.
    main_port: u16,
    start: Option<StartClient>,
    /// A plain lock, never held across an await: starting one key's client does not hold
    /// up the others.
    groups: Mutex<HashMap<IsolationKey, Group>>,
    max: usize,
    idle: Duration,
    shutdown: CancellationToken,
}

/// One stream's use of a session; dropping it marks the stream gone.
struct Use {
    users: Arc<AtomicUsize>,
    last_used: Arc<Mutex<Instant>>,
}

impl Drop for Use {
    fn drop(&mut self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.users.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A session in use by a stream.
pub struct Lease {
    pub handle: ClientHandle,
    _use: Option<Use>,
}

impl Sessions {
    /// Every stream shares `default`: no isolation (tests, and a client without a way to
    /// start more sessions).
    pub fn shared(default: ClientHandle) -> Arc<Sessions> {
        Arc::new(Sessions {
            default,
            main_port: 0,
            start: None,
            groups: Default::default(),
            max: 0,
            idle: IDLE,
            shutdown: CancellationToken::new(),
        })
    }

    /// Isolated sessions started by `start`, at most `max`, each closed after `idle`
    /// without streams; `main_port` is the port whose user-less streams take `default`.
    pub fn isolating(
        default: ClientHandle,
        main_port: u16,
        start: StartClient,
        max: usize,
        idle: Duration,
        shutdown: CancellationToken,
    ) -> Arc<Sessions> {
        let s = Arc::new(Sessions {
            default,
            main_port,
            start: Some(start),
            groups: Default::default(),
            max,
            idle,
            shutdown,
        });
        tokio::spawn(reap(Arc::downgrade(&s)));
        s
    }

    /// The client's first session.
    pub fn default_handle(&self) -> &ClientHandle {
        &self.default
    }

    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<IsolationKey, Group>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Isolated sessions open (or starting) now.
    pub async fn isolated(&self) -> usize {
        self.groups().len()
    }

    /// The session for a stream with this key, started if need be. A start waits at most
    /// the client's `session_wait`, like any stream waiting for a session.
    pub async fn lease(&self, key: IsolationKey) -> Result<Lease, OpenFailure> {
        let Some(start) = &self.start else {
            return Ok(self.shared_lease());
        };
        if key.user.is_none() && key.port == self.main_port {
            return Ok(self.shared_lease());
        }
        let (cell, stop, stream_use) = {
            let mut groups = self.groups();
            if !groups.contains_key(&key) {
                if groups.len() >= self.max {
                    return Err(OpenFailure::Isolation(format!(
                        "all {} isolated sessions are in use",
                        self.max
                    )));
                }
                groups.insert(
                    key.clone(),
                    Group {
                        handle: Arc::default(),
                        stop: self.shutdown.child_token(),
                        users: Arc::default(),
                        last_used: Arc::new(Mutex::new(Instant::now())),
                    },
                );
                info!(isolated = groups.len(), "isolated session starting");
            }
            let g = groups.get(&key).ok_or(OpenFailure::NoSession)?;
            // Counted before the start, so the reaper leaves a starting group alone.
            g.users.fetch_add(1, Ordering::SeqCst);
            let stream_use = Use {
                users: g.users.clone(),
                last_used: g.last_used.clone(),
            };
            (g.handle.clone(), g.stop.clone(), stream_use)
        };
        let wait = self.default.session_wait();
        let started = cell
            .get_or_try_init(|| async {
                // Each attempt under its own token: a failed one stops only its own tasks.
                let attempt = stop.child_token();
                let why = match tokio::time::timeout(wait, start(attempt.clone())).await {
                    Ok(Ok(h)) => return Ok(h),
                    Ok(Err(e)) => format!("could not start an isolated session: {e:#}"),
                    Err(_) => format!("no isolated session within {wait:?}"),
                };
                attempt.cancel();
                Err(why)
            })
            .await;
        match started {
            Ok(h) => Ok(Lease {
                handle: h.clone(),
                _use: Some(stream_use),
            }),
            Err(why) => {
                // Forget the failed start (if no one has started it since), so the key's
                // next stream tries afresh.
                let mut groups = self.groups();
                if groups
                    .get(&key)
                    .is_some_and(|g| Arc::ptr_eq(&g.handle, &cell) && g.handle.get().is_none())
                {
                    groups.remove(&key);
                }
                Err(OpenFailure::Isolation(why))
            }
        }
    }

    fn shared_lease(&self) -> Lease {
        Lease {
            handle: self.default.clone(),
            _use: None,
        }
    }

    /// Closes the isolated sessions that have had no stream for `idle`.
    fn reap_idle(&self) {
        self.groups().retain(|_, g| {
            let last = *g.last_used.lock().unwrap_or_else(|e| e.into_inner());
            let keep = g.users.load(Ordering::SeqCst) > 0 || last.elapsed() < self.idle;
            if !keep {
                debug!("isolated session idle: closed");
                g.stop.cancel();
            }
            keep
        });
    }
}

async fn reap(sessions: std::sync::Weak<Sessions>) {
    loop {
        let Some(s) = sessions.upgrade() else { return };
        let pause = (s.idle / 4).max(Duration::from_millis(100));
        let stop = s.shutdown.clone();
        drop(s);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let Some(s) = sessions.upgrade() else { return };
        s.reap_idle();
    }
}

/// Starts isolated clients like the first one: the same parameters, their own stop token.
pub fn start_like(params: crate::overlay::ClientParams) -> StartClient {
    Arc::new(move |stop| {
        let mut p = params.clone();
        p.shutdown = stop;
        Box::pin(crate::overlay::connect(p))
    })
}
