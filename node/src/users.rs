//! Who may use the network, checked at the first hop (upstreams and relays): a client
//! connection's first bidirectional stream carries its credential and a proof bound to
//! this connection (`braid_proto::credential`). Until it passes, nothing else on the
//! connection is read. The credential is checked offline against the operator key in the
//! directory and this node's revocation list; nothing about the user goes further than
//! this node.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use braid_config::Directory;
use braid_driver::metrics::Metrics;
use braid_net::{read_frame, write_frame};
use braid_proto::credential::{
    parse_auth_message, Credential, Refusal, ID_LEN, KEY_LEN, MAX_AUTH_LEN, PROOF_EXPORTER_LABEL,
    REFUSAL_CLOSE_BASE,
};
use tracing::debug;

/// Which client source addresses a first hop serves (`allow_sources`, `deny_sources`).
#[derive(Debug, Clone, Default)]
pub struct SourceFilter {
    pub allow: Vec<braid_config::Cidr>,
    pub deny: Vec<braid_config::Cidr>,
}

impl SourceFilter {
    /// Whether a client from `ip` may connect: not denied, and allowed (an empty allow
    /// list allows all).
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        // A v4-mapped v6 address is the v4 client it stands for.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }

    /// Closes `conn` with the reason if its source is not served; false then.
    pub fn check(this: &RwLock<SourceFilter>, conn: &quinn::Connection, metrics: &Metrics) -> bool {
        let admits = this
            .read()
            .map(|s| s.admits(conn.remote_address().ip()))
            .unwrap_or(false);
        if admits {
            return true;
        }
        Metrics::inc(&metrics.peers_refused);
        close_refused(conn, Refusal::SourceDenied);
        false
    }
}

/// What one credential may still use at this node, in the direction this node carries
/// (upstreams: client to network; relays: network to client).
///
/// A user's rate and quota are for the whole network, each way. A client links to every
/// upstream and every relay of its directory, and the central spreads cells over all of
/// them, so each first hop takes an equal share: `1/k` of the rate and of the quota, for
/// the `k` nodes of its role in the directory. k first hops together give the user its
/// rate, never k times it, and there are no more first hops to open. A client that reaches
/// fewer of them gets less. The quota is counted per credential over its validity window
/// and kept while the node runs (a restart forgets it): the operator bounds what a user can
/// take past that with short-lived credentials it stops renewing.
pub struct Allowance {
    name: String,
    /// Paces the user's bytes at its share of the rate; None without a rate limit.
    rate: Option<Mutex<braid_proto::rate::TokenBucket>>,
    /// Bytes of quota at this node; 0: none.
    quota: u64,
    used: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
    per_user: Arc<std::sync::atomic::AtomicBool>,
}

impl Allowance {
    fn new(
        c: &Credential,
        share: usize,
        metrics: Arc<Metrics>,
        per_user: Arc<std::sync::atomic::AtomicBool>,
    ) -> Allowance {
        let k = share.max(1) as f64;
        let rate = (c.limits.rate_kib > 0).then(|| {
            let bytes_per_sec = f64::from(c.limits.rate_kib) * 1024.0 / k;
            // A tenth of a second of burst: enough to keep a link busy, too little to
            // show in a rate measured over seconds.
            Mutex::new(braid_proto::rate::TokenBucket::with_rate(
                bytes_per_sec,
                bytes_per_sec / 10.0,
                std::time::Instant::now(),
            ))
        });
        Allowance {
            name: c.name.clone(),
            rate,
            quota: (c.limits.quota_mib.saturating_mul(1 << 20) as f64 / k) as u64,
            used: Default::default(),
            metrics,
            per_user,
        }
    }

    /// Charges `n` bytes to the user: waits while the user is over its rate here, and
    /// refuses once its quota here is spent.
    pub async fn spend(&self, n: usize) -> Result<(), Refusal> {
        use std::sync::atomic::Ordering::Relaxed;
        let n64 = n as u64;
        let used = self.used.fetch_add(n64, Relaxed).saturating_add(n64);
        if self.quota > 0 && used > self.quota {
            return Err(Refusal::QuotaSpent);
        }
        Metrics::add(&self.metrics.user_bytes, n64);
        if self.per_user.load(Relaxed) {
            if let Ok(mut m) = self.metrics.per_user_bytes.lock() {
                let users = m.get_or_insert_with(Default::default);
                // The name is copied once per user, not once per cell.
                match users.get_mut(&self.name) {
                    Some(bytes) => *bytes += n64,
                    None => {
                        users.insert(self.name.clone(), n64);
                    }
                }
            }
        }
        let wait = match &self.rate {
            Some(b) => b
                .lock()
                .map(|mut b| b.take_paced(n as f64, std::time::Instant::now()))
                .unwrap_or_default(),
            None => Duration::ZERO,
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

/// An allowance and when its credential expires (Unix seconds).
type Expiring = (u64, Arc<Allowance>);

/// An admitted connection: whose credential, and the connection.
struct Admitted {
    id: [u8; ID_LEN],
    name: String,
    conn: quinn::Connection,
}

/// The first hop's credential check.
pub struct FirstHopAuth {
    operator: [u8; KEY_LEN],
    revoked_path: Option<PathBuf>,
    revoked: RwLock<HashSet<[u8; ID_LEN]>>,
    /// How long a client has to present its credential.
    timeout: Duration,
    /// Connections admitted and still open, by QUIC stable id: the credential each
    /// presented, so a reload that revokes it closes them and a user's sessions are counted.
    live: Mutex<HashMap<usize, Admitted>>,
    /// What each credential admitted here may still use, by credential id, kept until the
    /// credential expires (so reconnecting does not refill a quota). Only credentials the
    /// operator signed get here.
    allowances: Mutex<HashMap<[u8; ID_LEN], Expiring>>,
    /// How many first hops of this node's role share each user's rate and quota.
    share: usize,
    /// Whether usage is counted per user (`per_user_usage`; reloadable).
    per_user: Arc<std::sync::atomic::AtomicBool>,
}

impl FirstHopAuth {
    /// The check for a directory with an operator key (`None` without one: an open
    /// network), with the revocation list at `revoked` (read now).
    pub fn from_config(
        directory: &Directory,
        role: braid_config::Role,
        revoked: Option<&Path>,
        timeout: Duration,
        per_user_usage: bool,
    ) -> anyhow::Result<Option<Arc<FirstHopAuth>>> {
        let Some(operator) = directory.operator_key else {
            tracing::warn!(
                "the directory has no operator_key: anyone who has it may use this network"
            );
            return Ok(None);
        };
        let auth = FirstHopAuth {
            operator,
            revoked_path: revoked.map(Path::to_path_buf),
            revoked: RwLock::default(),
            timeout,
            live: Mutex::default(),
            allowances: Mutex::default(),
            share: directory.nodes_with_role(role).count().max(1),
            per_user: Arc::new(per_user_usage.into()),
        };
        auth.reload()?;
        Ok(Some(Arc::new(auth)))
    }

    /// Reads the revocation list again; on an error the old one stays. Connections of
    /// users now revoked are closed (with the reason): their streams stop here.
    pub fn reload(&self) -> anyhow::Result<usize> {
        let ids = match &self.revoked_path {
            Some(p) => braid_config::load_revocations(p)?,
            None => HashSet::new(),
        };
        let n = ids.len();
        if let Ok(mut r) = self.revoked.write() {
            *r = ids;
        }
        let cut: Vec<quinn::Connection> = match self.live.lock() {
            Ok(mut live) => {
                let gone: Vec<usize> = live
                    .iter()
                    .filter(|(_, a)| self.is_revoked(&a.id))
                    .map(|(k, _)| *k)
                    .collect();
                gone.iter()
                    .filter_map(|k| live.remove(k))
                    .map(|a| a.conn)
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        for c in cut {
            close_refused(&c, Refusal::Revoked);
        }
        Ok(n)
    }

    /// Turns per-user usage counting on or off (off forgets what was counted).
    pub fn set_per_user_usage(&self, on: bool, metrics: &Metrics) {
        self.per_user
            .store(on, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut m) = metrics.per_user_bytes.lock() {
            if !on {
                *m = None;
            } else if m.is_none() {
                *m = Some(Default::default());
            }
        }
    }

    /// The allowance of an admitted credential (one per credential, shared by its
    /// connections); expired ones are forgotten on the way.
    fn allowance(&self, c: &Credential, metrics: &Arc<Metrics>) -> Arc<Allowance> {
        let now = braid_driver::unix_now();
        let Ok(mut all) = self.allowances.lock() else {
            return Arc::new(Allowance::new(
                c,
                self.share,
                metrics.clone(),
                self.per_user.clone(),
            ));
        };
        all.retain(|_, (not_after, _)| *not_after > now);
        all.entry(c.id)
            .or_insert_with(|| {
                let a = Allowance::new(c, self.share, metrics.clone(), self.per_user.clone());
                (c.not_after, Arc::new(a))
            })
            .1
            .clone()
    }

    /// The connection has ended: it no longer needs watching for revocation.
    pub fn forget(&self, conn: &quinn::Connection) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&conn.stable_id());
        }
    }

    fn is_revoked(&self, id: &[u8; ID_LEN]) -> bool {
        self.revoked.read().map(|r| r.contains(id)).unwrap_or(true)
    }

    /// Takes the client's credential from `conn` and checks it; answers the client either
    /// way. A refused connection is closed with the reason.
    pub async fn admit(
        &self,
        conn: &quinn::Connection,
        ctx: &crate::NodeContext,
    ) -> Result<Arc<Allowance>, Refusal> {
        let metrics = &ctx.metrics;
        let checked = tokio::time::timeout(self.timeout, self.check(conn, ctx)).await;
        let (mut result, send) = match checked {
            Ok(r) => r,
            Err(_) => (Err(Refusal::Missing), None),
        };
        // A spent quota stays spent while the credential lasts.
        let mut allowance = None;
        if let Ok(c) = &result {
            let a = self.allowance(c, &ctx.metrics);
            if a.quota > 0 && a.used.load(std::sync::atomic::Ordering::Relaxed) >= a.quota {
                result = Err(Refusal::QuotaSpent);
            } else {
                allowance = Some(a);
            }
        }
        // A user's concurrent sessions at this node: its client connections (a client
        // keeps one to each first hop).
        if let Ok(c) = &result {
            if let Ok(mut live) = self.live.lock() {
                let max = c.limits.max_sessions as usize;
                if max > 0 && live.values().filter(|a| a.name == c.name).count() >= max {
                    result = Err(Refusal::TooManySessions);
                } else {
                    live.insert(
                        conn.stable_id(),
                        Admitted {
                            id: c.id,
                            name: c.name.clone(),
                            conn: conn.clone(),
                        },
                    );
                }
            }
        }
        let code = match &result {
            Ok(_) => 0,
            Err(r) => r.code(),
        };
        if let Some(mut send) = send {
            let _ = write_frame(&mut send, &[code]).await;
            let _ = send.finish();
        }
        match (result, allowance) {
            (Ok(_), Some(a)) => {
                Metrics::inc(&metrics.users_admitted);
                Ok(a)
            }
            (Ok(_), None) => Err(Refusal::Malformed),
            (Err(r), _) => {
                Metrics::inc(&metrics.users_refused);
                debug!(reason = %r, "client refused");
                close_refused(conn, r);
                Err(r)
            }
        }
    }

    async fn check(
        &self,
        conn: &quinn::Connection,
        ctx: &crate::NodeContext,
    ) -> (Result<Credential, Refusal>, Option<quinn::SendStream>) {
        let Ok((send, mut recv)) = conn.accept_bi().await else {
            return (Err(Refusal::Missing), None);
        };
        let mut buf = Vec::new();
        if !matches!(
            read_frame(&mut recv, MAX_AUTH_LEN, &mut buf).await,
            Ok(true)
        ) {
            return (Err(Refusal::Malformed), Some(send));
        }
        // The who-knows-what test checks that this reaches no node past the first hop.
        braid_driver::tap::tap(
            &ctx.tap,
            &ctx.id,
            braid_driver::tap::TapPoint::Received,
            &buf,
        );
        (self.verify_message(conn, &buf), Some(send))
    }

    fn verify_message(&self, conn: &quinn::Connection, msg: &[u8]) -> Result<Credential, Refusal> {
        let (cred, proof) = parse_auth_message(msg)?;
        if cred.is_empty() {
            return Err(Refusal::Missing);
        }
        let c = Credential::verify(cred, &self.operator, braid_driver::unix_now(), |id| {
            self.is_revoked(id)
        })?;
        let binding = braid_net::link_key(conn, PROOF_EXPORTER_LABEL).ok_or(Refusal::BadProof)?;
        c.check_proof(&binding, &proof)?;
        Ok(c)
    }
}

/// Closes a refused client's connection; the close carries the reason (the answer on the
/// auth stream may still be in flight).
pub fn close_refused(conn: &quinn::Connection, r: Refusal) {
    conn.close(
        (REFUSAL_CLOSE_BASE + u32::from(r.code())).into(),
        r.to_string().as_bytes(),
    );
}

/// Applies each reloaded config (`NodeContext::reloaded`) to a first hop: its source lists,
/// and its revocation list read again (one that does not load leaves the old one, and says
/// why).
pub fn apply_reloads(
    ctx: &crate::NodeContext,
    auth: Option<Arc<FirstHopAuth>>,
    sources: Arc<RwLock<SourceFilter>>,
) {
    let mut rx = ctx.reloaded.clone();
    let stop = ctx.shutdown.clone();
    let ctx_metrics = ctx.metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
            let Some(cfg) = rx.borrow_and_update().clone() else {
                continue;
            };
            let (allow, deny, per_user) = match &*cfg {
                braid_config::NodeConfig::Upstream(c) => (
                    c.allow_sources.clone(),
                    c.deny_sources.clone(),
                    c.per_user_usage,
                ),
                braid_config::NodeConfig::Relay(c) => (
                    c.allow_sources.clone(),
                    c.deny_sources.clone(),
                    c.per_user_usage,
                ),
                _ => continue,
            };
            if let Ok(mut s) = sources.write() {
                *s = SourceFilter { allow, deny };
            }
            if let Some(auth) = &auth {
                auth.set_per_user_usage(per_user, &ctx_metrics);
                match auth.reload() {
                    Ok(n) => tracing::info!(revoked = n, "revocation list reloaded"),
                    Err(e) => {
                        tracing::warn!("revocation list not reloaded, the old one stays: {e:#}")
                    }
                }
            }
        }
    });
}

/// What a first hop (upstream or relay) does with each client connection, in one place:
/// its source lists, then its credential check, then the role's own serving; reloads apply
/// to both lists.
pub struct FirstHop {
    auth: Option<Arc<FirstHopAuth>>,
    sources: Arc<RwLock<SourceFilter>>,
}

impl FirstHop {
    /// The gate for `ctx`'s node, following its config reloads.
    pub fn new(
        ctx: &crate::NodeContext,
        auth: Option<Arc<FirstHopAuth>>,
        sources: SourceFilter,
    ) -> Arc<FirstHop> {
        let sources = Arc::new(RwLock::new(sources));
        if let Some(a) = &auth {
            let on = a.per_user.load(std::sync::atomic::Ordering::Relaxed);
            a.set_per_user_usage(on, &ctx.metrics);
        }
        apply_reloads(ctx, auth.clone(), sources.clone());
        Arc::new(FirstHop { auth, sources })
    }

    /// Runs `serve` for a client connection that passes the source lists and the
    /// credential check (refused ones are closed with the reason), with what its user may
    /// still use here (None in an open network), then forgets it.
    pub async fn serve<F: std::future::Future<Output = ()>>(
        &self,
        ctx: &crate::NodeContext,
        conn: &quinn::Connection,
        serve: impl FnOnce(Option<Arc<Allowance>>) -> F,
    ) {
        if !SourceFilter::check(&self.sources, conn, &ctx.metrics) {
            return;
        }
        let allowance = match &self.auth {
            Some(auth) => match auth.admit(conn, ctx).await {
                Ok(a) => Some(a),
                Err(_) => return,
            },
            None => None,
        };
        serve(allowance).await;
        if let Some(auth) = &self.auth {
            auth.forget(conn);
        }
    }
}
