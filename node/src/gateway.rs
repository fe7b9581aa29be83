//! Gateway (exit): dials every central and keeps those links up (it works behind NAT), accepts
//! one QUIC stream per proxied stream, completes the inner Noise handshake, applies the
//! exit policy to every resolved address, connects, and pumps sealed records both ways.
//! It sees destinations and payloads, never who the client is.
//!
//! A stream outlives its carrier: when the QUIC stream (or the whole link to a central) goes,
//! the target connection is kept for `resume_grace`, filed under the id of the stream's next
//! resume. A QUIC stream through any central whose first message is that resume takes the
//! stream over (also while the old carrier still looks alive: the client knows better).
//!
//! An open is 0-RTT, so a central could replay one it carried: the gateway refuses opens
//! sent more than `open_replay_window_secs` from its clock and any whose ephemeral key it
//! has seen (`inner::ReplayCache`, bounded by `open_replay_cache`), before any lookup or
//! connection.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use braid_driver::pump::{
    self, LegEnd, QuicSource, ResendBudget, SealedSink, SealedSource, SharedStream,
};
use braid_proto::inner::reliable::{self, ID_LEN};
use braid_proto::inner::ResumeRequest;
use braid_proto::inner::{
    self, FirstMessage, MessageDecoder, OpenStatus, ReliableStream, ReplayCache, ReplayRefusal,
    StreamKind,
};
use braid_proto::noise::StaticKeypair;
use braid_proto::target::TargetAddr;
use braid_proto::Reason;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::exit::{Checked, ExitPolicy, Refusal};
use braid_driver::metrics::Metrics;
use braid_driver::tap::{tap, TapPoint};
use braid_driver::Backoff;

use crate::NodeContext;

#[derive(Clone)]
pub struct GatewayParams {
    pub bind: SocketAddr,
    pub connect_timeout: Duration,
    /// The exit policy. The gateway adds its directory's node addresses to it at start.
    pub policy: ExitPolicy,
    /// Static name → address overrides, consulted before DNS (like /etc/hosts).
    pub hosts: BTreeMap<String, IpAddr>,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Most proxied streams open at once over all centrals (each holds a target socket);
    /// also the QUIC streams each central may open on its link.
    pub max_streams: u32,
    /// A link to a central silent this long is dead.
    pub link_idle_timeout: Duration,
    /// Flow-control window of each stream on a central link (the connection window is
    /// `max_streams` of them, so a stalled stream holds only its own).
    pub link_stream_window: u32,
    /// The first inner message must have arrived this long after the stream opened.
    pub handshake_timeout: Duration,
    /// A stream with nothing from the client's side for this long is closed.
    pub stream_idle_timeout: Duration,
    /// How long a stream whose carrier died keeps its target connection for a resume.
    pub resume_grace: Duration,
    /// Sealed bytes a stream keeps until the client acknowledges them.
    pub resume_buffer: usize,
    /// Sealed bytes all streams together may keep.
    pub resume_budget: usize,
    /// An open sent further than this from the gateway's clock is refused, and an open's
    /// ephemeral key is remembered at least twice this long (replays are refused).
    pub open_replay_window_secs: u64,
    /// Most ephemeral keys each of the replay cache's two generations holds.
    pub open_replay_cache: usize,
    /// Most name lookups at once.
    pub max_dns_lookups: usize,
    /// How long an open may wait for its name, the wait for a lookup slot included.
    pub dns_timeout: Duration,
    /// How often the host's interface addresses (refused by the exit) are re-read.
    pub local_addrs_refresh: Duration,
    /// Log lines name destinations (off: `[redacted]:PORT`).
    pub log_destinations: bool,
    /// Serve UDP associations.
    pub udp: bool,
    /// An association idle this long ends.
    pub udp_idle: Duration,
    /// Associations open at once, at most.
    pub max_udp_associations: usize,
    /// The TTL of DNS answers to clients.
    pub dns_ttl: u32,
}

/// The host's interface addresses, or none (with a warning) when they cannot be read.
fn read_local_addrs(node: &str) -> BTreeSet<std::net::IpAddr> {
    match crate::exit::interface_addrs() {
        Ok(a) => a,
        Err(e) => {
            warn!(node = %node, error = %e, "cannot read this host's interface addresses; the exit cannot refuse them");
            BTreeSet::new()
        }
    }
}

/// Re-reads the host's interface addresses every `every` and publishes a policy that
/// refuses them whenever they change (an address added by DHCP or a new interface).
async fn refresh_local_addrs(
    ctx: NodeContext,
    every: Duration,
    policy: Arc<watch::Sender<Arc<ExitPolicy>>>,
) {
    while braid_driver::sleep_or_shutdown(every, &ctx.shutdown).await {
        let now = read_local_addrs(&ctx.id);
        if now != policy.borrow().local_addrs {
            info!(node = %ctx.id, count = now.len(), "this host's addresses changed; the exit refuses the new set");
            let mut p = ExitPolicy::clone(&policy.borrow());
            p.local_addrs = now;
            policy.send_replace(Arc::new(p));
        }
    }
}

/// Takes each reloaded config's exit policy (its classes and rules; the node and host
/// addresses stay refused). Streams already open keep the policy they were opened under;
/// the next opens are decided by the new one.
async fn apply_policy_reloads(ctx: NodeContext, policy: Arc<watch::Sender<Arc<ExitPolicy>>>) {
    let mut rx = ctx.reloaded.clone();
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
        let Some(cfg) = rx.borrow_and_update().clone() else {
            continue;
        };
        let braid_config::NodeConfig::Gateway(c) = &*cfg else {
            continue;
        };
        let new = crate::roles::exit_policy(c);
        let mut p = ExitPolicy::clone(&policy.borrow());
        p.allow_loopback = new.allow_loopback;
        p.allow_private = new.allow_private;
        p.rules = new.rules;
        policy.send_replace(Arc::new(p));
        info!(node = %ctx.id, "exit policy reloaded");
    }
}

/// At most `max_dns_lookups` lookups run at once. A system lookup is a blocking
/// `getaddrinfo` on tokio's thread pool that cannot be cancelled, so the slot is held by the
/// lookup itself (a task), not by the open waiting for it: an open that gives up at its
/// deadline does not free a slot that a stuck resolver still holds.
#[derive(Clone)]
pub(crate) struct DnsLimit {
    slots: Arc<Semaphore>,
    timeout: Duration,
}

impl DnsLimit {
    pub(crate) fn new(max: usize, timeout: Duration) -> Self {
        DnsLimit {
            slots: Arc::new(Semaphore::new(max.max(1))),
            timeout,
        }
    }

    /// Runs `lookup(name, port)` in a slot, everything within the timeout.
    async fn run<L, F>(
        &self,
        name: String,
        port: u16,
        lookup: L,
    ) -> Result<std::io::Result<Vec<SocketAddr>>, OpenFailure>
    where
        L: FnOnce(String, u16) -> F,
        F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let permit =
            match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => {
                    return Err(OpenFailure::new(
                        OpenStatus::RESOURCE_LIMIT,
                        "name lookups: every slot stayed busy",
                    ))
                }
            };
        let running = lookup(name, port);
        let task = tokio::spawn(async move {
            let r = running.await;
            drop(permit);
            r
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(OpenFailure::new(
                OpenStatus::GENERAL_FAILURE,
                "name lookup failed",
            )),
            Err(_) => Err(OpenFailure::new(
                OpenStatus::HOST_UNREACHABLE,
                "name lookup timed out",
            )),
        }
    }
}

pub async fn run(ctx: NodeContext, p: GatewayParams) -> anyhow::Result<()> {
    // The exit never connects to the overlay's own nodes, nor to its own bind address or
    // any address of its host (it usually binds 0.0.0.0 and is not in the directory).
    let mut policy = p.policy.clone().with_nodes_of(&ctx.directory);
    if !p.bind.ip().is_unspecified() {
        policy.node_addrs.insert(p.bind.ip());
    }
    policy.local_addrs.extend(read_local_addrs(&ctx.id));
    let (policy_tx, policy) = watch::channel(Arc::new(policy));
    let policy_tx = Arc::new(policy_tx);
    tokio::spawn(refresh_local_addrs(
        ctx.clone(),
        p.local_addrs_refresh,
        policy_tx.clone(),
    ));
    tokio::spawn(apply_policy_reloads(ctx.clone(), policy_tx));
    let dns = DnsLimit::new(p.max_dns_lookups, p.dns_timeout);
    let tuning = braid_net::LinkTuning {
        idle_timeout: p.link_idle_timeout,
        ..braid_net::LinkTuning::per_stream_credit(p.max_streams, p.link_stream_window)
    };
    let ep = braid_net::client_endpoint_with(p.bind, Some(&ctx.identity), tuning)?;
    info!(node = %ctx.id, "gateway dialing the centrals");
    let backoff = Backoff::new(p.reconnect_min, p.reconnect_max);
    let c = ctx.clone();
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let live_streams = live.clone();
    let resumable = Resumable::default();
    let budget = Arc::new(ResendBudget::new(p.resume_budget));
    let udp_slots = Arc::new(Semaphore::new(p.max_udp_associations));
    let replay = Arc::new(Mutex::new(ReplayCache::new(
        p.open_replay_window_secs,
        p.open_replay_cache,
        unix_now(),
    )));
    let link = ctx.central_links(ep.clone(), backoff, move |central, conn| {
        let ctx = c.clone();
        let p = p.clone();
        let policy = policy.clone();
        let dns = dns.clone();
        let live = live.clone();
        let resumable = resumable.clone();
        let budget = budget.clone();
        let replay = replay.clone();
        let udp_slots = udp_slots.clone();
        async move {
            info!(node = %ctx.id, central = %central.id, "gateway linked to a central");
            while let Ok((mut send, recv)) = conn.accept_bi().await {
                if ctx.drain.is_cancelled() {
                    // Draining: no new streams.
                    let _ = send.reset(u32::from(Reason::DRAINING.code()).into());
                    continue;
                }
                // Each central may hold `max_streams` (QUIC's limit); together they may not.
                if live.load(std::sync::atomic::Ordering::SeqCst) >= p.max_streams as usize {
                    debug!(node = %ctx.id, max_streams = p.max_streams, "stream over the cap: refused");
                    let _ = send.reset(u32::from(Reason::RESOURCE_LIMIT.code()).into());
                    continue;
                }
                let (ctx, p, live) = (ctx.clone(), p.clone(), live.clone());
                let policy = policy.borrow().clone();
                let dns = dns.clone();
                let resumable = resumable.clone();
                let budget = budget.clone();
                let replay = replay.clone();
                let udp_slots = udp_slots.clone();
                live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let shared = Shared {
                        exit: Exit { policy, dns },
                        resumable,
                        budget,
                        replay,
                        udp_slots,
                    };
                    serve_stream(ctx, p, shared, send, recv).await;
                    live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        }
    })?;
    // Draining: live streams run to their end (or the deadline), then the link closes.
    let drained = async {
        ctx.drain.cancelled().await;
        while live_streams.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if !braid_driver::sleep_or_shutdown(Duration::from_millis(50), &ctx.shutdown).await {
                break;
            }
        }
    };
    tokio::select! {
        _ = link => {}
        _ = drained => {}
    }
    ep.close(0u32.into(), b"shutdown");
    Ok(())
}

/// What a stream's open is decided by: the policy as it stood when the stream came, and
/// the shared lookup slots.
struct Exit {
    policy: Arc<ExitPolicy>,
    dns: DnsLimit,
}

/// Why an open failed: the SOCKS status and a reason for the client's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenFailure {
    status: OpenStatus,
    reason: String,
}

impl OpenFailure {
    fn new(status: OpenStatus, reason: impl Into<String>) -> Self {
        OpenFailure {
            status,
            reason: reason.into(),
        }
    }
}

impl From<Refusal> for OpenFailure {
    fn from(r: Refusal) -> Self {
        OpenFailure::new(OpenStatus::NOT_ALLOWED, r.to_string())
    }
}

/// The application side of a gateway stream: a target's TCP socket, or a pipe to the
/// UDP or DNS service of the gateway.
type AppRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
type AppWrite = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;

/// Bytes in flight between a stream's pump and the gateway's UDP or DNS service.
const PIPE_BYTES: usize = 64 * 1024;

fn split_boxed(near: tokio::io::DuplexStream) -> (AppRead, AppWrite) {
    let (r, w) = tokio::io::split(near);
    (Box::new(r), Box::new(w))
}

/// The system resolver: one `getaddrinfo` call.
pub(crate) async fn system_lookup(name: String, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    Ok(tokio::net::lookup_host((name, port)).await?.collect())
}

/// Resolves a target to addresses: overrides first, then `lookup` in a slot of `dns`.
/// `lookup` is `FnOnce`: a name is looked up at most once per open, and the addresses
/// returned are the ones that get checked and connected to (no second lookup to rebind
/// between them). Failure reasons name neither the name nor an address.
pub(crate) async fn resolve<L, F>(
    p: &GatewayParams,
    dns: &DnsLimit,
    target: &TargetAddr,
    lookup: L,
) -> Result<Vec<SocketAddr>, OpenFailure>
where
    L: FnOnce(String, u16) -> F,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static,
{
    match target {
        TargetAddr::Ip(a) => Ok(vec![*a]),
        TargetAddr::Domain(name, port) => {
            let lower = name.to_ascii_lowercase();
            if let Some(ip) = p.hosts.get(&lower) {
                return Ok(vec![SocketAddr::new(*ip, *port)]);
            }
            match dns.run(lower, *port, lookup).await? {
                Ok(v) if !v.is_empty() => Ok(v),
                Ok(_) => Err(OpenFailure::new(
                    OpenStatus::HOST_UNREACHABLE,
                    "the name has no address",
                )),
                Err(e) => Err(OpenFailure::new(
                    OpenStatus::HOST_UNREACHABLE,
                    format!("cannot resolve the name: {e}"),
                )),
            }
        }
    }
}

fn status_of(e: &std::io::Error) -> OpenStatus {
    OpenStatus::from_io_error_kind(e.kind())
}

/// Applies the policy to the name (before any lookup), resolves once, checks every
/// address, and connects to a checked address.
async fn connect_target<L, F>(
    p: &GatewayParams,
    policy: &ExitPolicy,
    dns: &DnsLimit,
    target: &TargetAddr,
    lookup: L,
) -> Result<TcpStream, OpenFailure>
where
    L: FnOnce(String, u16) -> F,
    F: Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'static,
{
    let name = match target {
        TargetAddr::Domain(name, port) => {
            policy.check_name(name, *port)?;
            Some(name.as_str())
        }
        TargetAddr::Ip(_) => None,
    };
    let addrs = resolve(p, dns, target, lookup).await?;
    let checked = policy.check(name, &addrs)?;
    connect_checked(p.connect_timeout, &checked).await
}

/// The only place the gateway opens a target connection: to addresses that passed the
/// policy, in the resolver's order.
async fn connect_checked(timeout: Duration, addrs: &[Checked]) -> Result<TcpStream, OpenFailure> {
    let mut last = OpenFailure::new(OpenStatus::HOST_UNREACHABLE, "no address to connect to");
    for a in addrs {
        let a = a.addr();
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            // No address in the reason: an allow by CIDR can make it an internal one.
            Ok(Err(e)) => last = OpenFailure::new(status_of(&e), format!("connecting: {e}")),
            Err(_) => last = OpenFailure::new(OpenStatus::TIMED_OUT, "connecting: timed out"),
        }
    }
    Err(last)
}

/// A new carrier for a stream: the QUIC stream that brought its resume.
struct Carrier {
    send: quinn::SendStream,
    source: TapSource,
    /// When the client's side last sent on it.
    heard: Heard,
    /// What arrived after the resume.
    dec: MessageDecoder,
    req: ResumeRequest,
}

/// Every stream the gateway holds, by the id of its next resume: where to hand the carrier
/// that brings it.
#[derive(Clone, Default)]
struct Resumable(Arc<Mutex<HashMap<[u8; ID_LEN], mpsc::Sender<Carrier>>>>);

impl Resumable {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; ID_LEN], mpsc::Sender<Carrier>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A stream filed under one resume id; dropping it takes the id back out.
struct Filed {
    resumable: Resumable,
    id: [u8; ID_LEN],
}

impl Drop for Filed {
    fn drop(&mut self) {
        self.resumable.map().remove(&self.id);
    }
}

/// The gateway's carriers read through the tap.
type TapSource = QuicSource<Box<dyn FnMut(&[u8]) + Send>>;

fn tap_source(ctx: &NodeContext, recv: quinn::RecvStream, heard: Heard) -> TapSource {
    let (t, id) = (ctx.tap.clone(), ctx.id.clone());
    QuicSource::new(
        recv,
        Box::new(move |chunk: &[u8]| {
            heard.now();
            tap(&t, &id, TapPoint::Received, chunk)
        }),
    )
}

/// When a stream's carrier last brought bytes from the client's side, for the idle rule.
#[derive(Clone)]
struct Heard(Arc<std::sync::Mutex<tokio::time::Instant>>);

impl Heard {
    fn new() -> Self {
        Heard(Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())))
    }

    fn now(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = tokio::time::Instant::now();
        }
    }

    fn last(&self) -> tokio::time::Instant {
        self.0
            .lock()
            .map(|t| *t)
            .unwrap_or_else(|_| tokio::time::Instant::now())
    }

    /// Returns once nothing was heard for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let due = self.last() + idle;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

/// The clock in unix seconds, as opens carry it.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What every stream of the gateway shares.
struct Shared {
    exit: Exit,
    resumable: Resumable,
    budget: Arc<ResendBudget>,
    replay: Arc<Mutex<ReplayCache>>,
    /// One permit per open UDP association.
    udp_slots: Arc<Semaphore>,
}

async fn serve_stream(
    ctx: NodeContext,
    p: GatewayParams,
    shared: Shared,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    let Shared {
        exit,
        resumable,
        budget,
        replay,
        udp_slots,
    } = shared;
    let noise = StaticKeypair::from_secret(ctx.identity.noise_secret());
    let mut dec = MessageDecoder::default();
    let heard = Heard::new();
    let mut source = tap_source(&ctx, recv, heard.clone());
    // 1. The first message: the client's handshake with the open request, or a resume. A
    // stream that never sends it all is reset at the deadline.
    let first = tokio::time::timeout(p.handshake_timeout, async {
        loop {
            match dec.next_message() {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(_) => return None,
            }
            if !source.read_into(&mut dec).await {
                return None;
            }
        }
    })
    .await;
    let msg1 = match first {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(_) => {
            debug!(node = %ctx.id, "no first message within the handshake deadline");
            Metrics::inc(&ctx.metrics.streams_refused);
            let _ = send.reset(u32::from(Reason::TIMED_OUT.code()).into());
            return;
        }
    };
    match inner::first_message(&msg1) {
        Ok(FirstMessage::Open) => {}
        Ok(FirstMessage::Resume(req)) => {
            let holder = resumable.map().get(&req.id).cloned();
            let carrier = Carrier {
                send,
                source,
                heard,
                dec,
                req,
            };
            match holder {
                Some(h) => {
                    if let Err(
                        mpsc::error::TrySendError::Full(mut c)
                        | mpsc::error::TrySendError::Closed(mut c),
                    ) = h.try_send(carrier)
                    {
                        refuse_resume(&mut c.send).await;
                    }
                }
                None => {
                    let mut c = carrier;
                    debug!(node = %ctx.id, "resume for a stream this gateway does not hold");
                    refuse_resume(&mut c.send).await;
                }
            }
            return;
        }
        Err(_) => {
            Metrics::inc(&ctx.metrics.streams_refused);
            return;
        }
    }
    let Ok((open, req)) = inner::gateway_accept(&noise, &msg1) else {
        Metrics::inc(&ctx.metrics.streams_refused);
        return;
    };
    // A replayed open (or one from far off our clock) goes no further: no lookup, no
    // connection, and the same fixed-size refusal as any other.
    let admitted = replay.lock().unwrap_or_else(PoisonError::into_inner).admit(
        open.replay_key(),
        open.sent_at(),
        unix_now(),
    );
    if let Err(r) = admitted {
        Metrics::inc(&ctx.metrics.streams_refused);
        debug!(node = %ctx.id, refusal = %r, "open refused");
        let status = match r {
            ReplayRefusal::Full => OpenStatus::RESOURCE_LIMIT,
            ReplayRefusal::Stale { .. } | ReplayRefusal::Replayed => OpenStatus::PROTOCOL_ERROR,
        };
        let mut out = Vec::new();
        if open
            .reply_with_reason(&mut rand::rng(), status, &r.to_string(), &mut out)
            .is_ok()
        {
            let _ = send.write_all(&out).await;
        }
        let _ = send.finish();
        return;
    }
    tap(
        &ctx.tap,
        &ctx.id,
        TapPoint::Decrypted,
        req.target.reveal().to_string().as_bytes(),
    );
    tap(&ctx.tap, &ctx.id, TapPoint::Decrypted, &req.early_data);
    let result = match req.kind {
        StreamKind::CONNECT => {
            connect_target(&p, &exit.policy, &exit.dns, &req.target, system_lookup)
                .await
                .map(|tcp| {
                    let _ = tcp.set_nodelay(true);
                    let (r, w) = tcp.into_split();
                    (Box::new(r) as AppRead, Box::new(w) as AppWrite)
                })
        }
        StreamKind::UDP if p.udp => match udp_slots.try_acquire_owned() {
            Err(_) => Err(OpenFailure::new(
                OpenStatus::RESOURCE_LIMIT,
                format!("all {} UDP associations are in use", p.max_udp_associations),
            )),
            Ok(slot) => {
                let (near, far) = tokio::io::duplex(PIPE_BYTES);
                tokio::spawn(crate::exit_udp::serve(
                    crate::exit_udp::UdpExit {
                        slot,
                        params: p.clone(),
                        policy: exit.policy.clone(),
                        dns: exit.dns.clone(),
                        metrics: ctx.metrics.clone(),
                        idle: p.udp_idle,
                    },
                    far,
                ));
                Ok(split_boxed(near))
            }
        },
        StreamKind::DNS => {
            let (near, far) = tokio::io::duplex(PIPE_BYTES);
            tokio::spawn(crate::exit_dns::serve(
                crate::exit_dns::DnsExit {
                    params: p.clone(),
                    policy: exit.policy.clone(),
                    dns: exit.dns.clone(),
                    metrics: ctx.metrics.clone(),
                    ttl: p.dns_ttl,
                },
                far,
            ));
            Ok(split_boxed(near))
        }
        _ => Err(OpenFailure::new(
            OpenStatus::COMMAND_NOT_SUPPORTED,
            format!("this gateway does not serve {} streams", req.kind),
        )),
    };
    let (status, reason) = match &result {
        Ok(_) => (OpenStatus::OK, ""),
        Err(f) => (f.status, f.reason.as_str()),
    };
    let mut out = Vec::new();
    let Ok(keys) = open.reply_with_reason(&mut rand::rng(), status, reason, &mut out) else {
        return;
    };
    if send.write_all(&out).await.is_err() {
        return;
    }
    let (mut tcp_r, mut tcp_w) = match result {
        Ok(t) => t,
        Err(f) => {
            Metrics::inc(&ctx.metrics.streams_refused);
            let target = req.target.logged(p.log_destinations);
            debug!(node = %ctx.id, %target, status = f.status.0, reason = %f.reason, "stream refused");
            let _ = send.finish();
            return;
        }
    };
    Metrics::inc(&ctx.metrics.streams_opened);
    if !req.early_data.is_empty() {
        if tcp_w.write_all(&req.early_data).await.is_err() {
            return;
        }
        Metrics::add(&ctx.metrics.bytes_to_targets, req.early_data.len() as u64);
    }
    let stream = SharedStream::new(ReliableStream::new(keys, p.resume_buffer), budget)
        .reading_ahead(p.resume_buffer.max(reliable::MIN_BUFFER) + inner::MAX_RECORD_DATA);
    let (carriers_tx, mut carriers) = mpsc::channel::<Carrier>(1);
    let mut leg = (send, source, dec);
    let mut heard = heard;
    loop {
        let _filed = {
            let id = stream.lock().next_resume_id();
            resumable.map().insert(id, carriers_tx.clone());
            Filed {
                resumable: resumable.clone(),
                id,
            }
        };
        let (send, source, dec) = &mut leg;
        let stop = CancellationToken::new();
        let mut next = None;
        let mut idle = false;
        let end = {
            let run = pump::run_leg(
                &mut tcp_r,
                &mut tcp_w,
                &stream,
                send,
                source,
                dec,
                &stop,
                |d| Metrics::add(&ctx.metrics.bytes_from_targets, d.len() as u64),
                |d| {
                    tap(&ctx.tap, &ctx.id, TapPoint::Decrypted, d);
                    Metrics::add(&ctx.metrics.bytes_to_targets, d.len() as u64);
                },
            );
            tokio::pin!(run);
            tokio::select! {
                end = &mut run => end,
                // The client moved the stream while this carrier still looked alive.
                c = carriers.recv() => {
                    stop.cancel();
                    run.await;
                    next = c;
                    LegEnd::CarrierLost
                }
                _ = heard.idle_for(p.stream_idle_timeout) => {
                    stop.cancel();
                    run.await;
                    idle = true;
                    LegEnd::Aborted
                }
            }
        };
        if idle {
            debug!(node = %ctx.id, "stream idle past its timeout: closed");
            let _ = send.reset(u32::from(Reason::TIMED_OUT.code()).into());
            return;
        }
        match end {
            LegEnd::Done => return,
            LegEnd::Aborted => {
                let _ = send.reset(u32::from(Reason::GENERAL_FAILURE.code()).into());
                return;
            }
            LegEnd::AppFailed => {
                if let Some(mut e) = stream.seal_error(Reason::GENERAL_FAILURE) {
                    let _ = send.write_sealed(&mut e).await;
                }
                let _ = send.finish();
                return;
            }
            LegEnd::CarrierLost => {
                let _ = send.reset(u32::from(Reason::SESSION_CLOSED.code()).into());
            }
        }
        // Detached: wait for the client's resume, at most the grace period.
        Metrics::inc(&ctx.metrics.streams_detached);
        let resumed = resume(&stream, next, &mut carriers, p.resume_grace).await;
        Metrics::dec(&ctx.metrics.streams_detached);
        let Some(c) = resumed else {
            debug!(node = %ctx.id, "no resume within the grace period; closing the target");
            return;
        };
        Metrics::inc(&ctx.metrics.streams_resumed);
        heard = c.heard;
        leg = (c.send, c.source, c.dec);
    }
}

/// Waits for a carrier whose resume authenticates (the first may already be here), answers
/// it and sends it what the client has not received; None when the grace period ends first.
async fn resume(
    stream: &SharedStream,
    mut next: Option<Carrier>,
    carriers: &mut mpsc::Receiver<Carrier>,
    grace: Duration,
) -> Option<Carrier> {
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let mut c = match next.take() {
            Some(c) => c,
            None => tokio::time::timeout_at(deadline, carriers.recv())
                .await
                .ok()??,
        };
        let accepted = stream.lock().accept_resume(&c.req);
        match accepted {
            Ok(mut reply) => {
                if c.send.write_all(&reply).await.is_err() {
                    // The new carrier died at once; the client will try again with the same id.
                    continue;
                }
                reply.clear();
                let mut ok = true;
                for mut r in stream.resend() {
                    if c.send.write_sealed(&mut r).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    return Some(c);
                }
            }
            Err(_) => refuse_resume(&mut c.send).await,
        }
    }
}

/// Tells a resume's sender this gateway does not hold the stream.
async fn refuse_resume(send: &mut quinn::SendStream) {
    let _ = send.write_all(&reliable::unknown_stream_reply()).await;
    let _ = send.finish();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::TcpListener;

    use super::*;
    use crate::exit::ExitRule;

    fn params(hosts: &[(&str, &str)]) -> GatewayParams {
        GatewayParams {
            bind: "127.0.0.1:0".parse().unwrap(),
            connect_timeout: Duration::from_secs(5),
            policy: ExitPolicy::default(),
            hosts: hosts
                .iter()
                .map(|(n, a)| (n.to_string(), a.parse().unwrap()))
                .collect(),
            reconnect_min: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(100),
            max_streams: 16,
            link_idle_timeout: Duration::from_secs(30),
            link_stream_window: 1 << 20,
            handshake_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(3600),
            resume_grace: Duration::from_secs(1),
            resume_buffer: 1 << 20,
            resume_budget: 1 << 30,
            open_replay_window_secs: 120,
            open_replay_cache: 1000,
            max_dns_lookups: 64,
            dns_timeout: Duration::from_secs(10),
            local_addrs_refresh: Duration::from_secs(60),
            log_destinations: false,
            udp: true,
            udp_idle: Duration::from_secs(120),
            max_udp_associations: 16,
            dns_ttl: 60,
        }
    }

    fn dns() -> DnsLimit {
        DnsLimit::new(64, Duration::from_secs(10))
    }

    /// A resolver that answers `answers[k]` on its k-th call and counts its calls.
    fn scripted(
        calls: &AtomicUsize,
        answers: Vec<Vec<SocketAddr>>,
    ) -> impl FnOnce(String, u16) -> std::future::Ready<std::io::Result<Vec<SocketAddr>>> + '_ {
        move |_, _| {
            let k = calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(answers[k.min(answers.len() - 1)].clone()))
        }
    }

    fn counting_listener(l: TcpListener) -> Arc<AtomicUsize> {
        let n = Arc::new(AtomicUsize::new(0));
        let c = n.clone();
        tokio::spawn(async move {
            while l.accept().await.is_ok() {
                c.fetch_add(1, Ordering::SeqCst);
            }
        });
        n
    }

    /// One lookup; the connection goes to the address that lookup returned and the policy
    /// checked, even when a second lookup would have answered differently (rebinding).
    #[tokio::test]
    async fn one_lookup_and_the_connection_goes_to_the_checked_address() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = l.local_addr().unwrap();
        let accepted = counting_listener(l);
        let policy = ExitPolicy {
            allow_loopback: true,
            ..ExitPolicy::default()
        };
        let p = params(&[]);
        let calls = AtomicUsize::new(0);
        // First answer: the allowed listener. A second lookup would give metadata.
        let lookup = scripted(
            &calls,
            vec![vec![good], vec!["169.254.169.254:80".parse().unwrap()]],
        );
        let target = TargetAddr::Domain("rebind.example".into(), good.port());
        let s = connect_target(&p, &policy, &dns(), &target, lookup)
            .await
            .unwrap();
        assert_eq!(s.peer_addr().unwrap(), good);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A name whose answer holds one refused address is refused as a whole, with no
    /// connection attempt to any of its addresses.
    #[tokio::test]
    async fn any_refused_address_refuses_the_open_without_connecting() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = l.local_addr().unwrap();
        let accepted = counting_listener(l);
        let policy = ExitPolicy::default();
        let p = params(&[]);
        let calls = AtomicUsize::new(0);
        let lookup = scripted(
            &calls,
            vec![vec![
                SocketAddr::new([93, 184, 216, 34].into(), local.port()),
                local,
            ]],
        );
        let target = TargetAddr::Domain("mixed.example".into(), local.port());
        let e = connect_target(&p, &policy, &dns(), &target, lookup)
            .await
            .unwrap_err();
        assert_eq!(e.status, OpenStatus::NOT_ALLOWED);
        assert!(e.reason.contains("is loopback"), "{}", e.reason);
        assert!(!e.reason.contains("127.0.0.1"), "{}", e.reason);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }

    /// Static overrides are checked like DNS answers; a deny by domain is decided before
    /// any lookup; an address target is checked without one.
    #[tokio::test]
    async fn overrides_and_names_and_addresses_are_checked() {
        let policy = ExitPolicy {
            rules: vec![ExitRule::deny().domain("blocked.example")],
            ..ExitPolicy::default()
        };
        let p = params(&[
            ("trap.example", "127.0.0.1"),
            ("meta.example", "169.254.169.254"),
        ]);
        let calls = AtomicUsize::new(0);
        for (target, says) in [
            (
                TargetAddr::Domain("trap.example".into(), 80),
                "destination is loopback",
            ),
            (
                TargetAddr::Domain("META.example".into(), 80),
                "cloud metadata",
            ),
            (
                TargetAddr::Domain("a.blocked.example".into(), 80),
                "refused by rule 0",
            ),
            (
                TargetAddr::Ip("[::ffff:10.0.0.1]:80".parse().unwrap()),
                "private",
            ),
        ] {
            let lookup = scripted(&calls, vec![vec!["93.184.216.34:80".parse().unwrap()]]);
            let e = connect_target(&p, &policy, &dns(), &target, lookup)
                .await
                .unwrap_err();
            assert_eq!(e.status, OpenStatus::NOT_ALLOWED, "{target}");
            assert!(e.reason.contains(says), "{target}: {}", e.reason);
            for secret in [
                "trap.",
                "meta.",
                "blocked.",
                "127.0.0.1",
                "169.254",
                "10.0.0.1",
            ] {
                assert!(!e.reason.contains(secret), "{target}: {}", e.reason);
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no lookup was needed");
    }

    /// The real resolver turns numeric-looking names into loopback; the check after it
    /// catches them.
    #[tokio::test]
    async fn numeric_names_from_the_system_resolver_are_checked() {
        let policy = ExitPolicy::default();
        let p = params(&[]);
        for name in ["0177.0.0.1", "2130706433", "0x7f.1", "127.1", "localhost"] {
            let target = TargetAddr::Domain(name.into(), 9);
            match connect_target(&p, &policy, &dns(), &target, system_lookup).await {
                Err(e) if e.status == OpenStatus::NOT_ALLOWED => {}
                // A resolver that does not read these forms leaves nothing to connect to.
                Err(e) if e.status == OpenStatus::HOST_UNREACHABLE => {
                    eprintln!("{name}: {}", e.reason)
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    /// A resolver that never answers (a lookup stuck in getaddrinfo): at most
    /// `max_dns_lookups` run at once, the opens past them are refused at the deadline with
    /// `resource_limit`, the ones in a slot with `host_unreachable`, and the slots stay
    /// taken until the stuck lookups really end.
    #[tokio::test]
    async fn dns_lookups_are_capped_and_bounded_in_time() {
        let policy = ExitPolicy::default();
        let p = params(&[]);
        let dns = DnsLimit::new(2, Duration::from_millis(300));
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let stuck = |running: Arc<AtomicUsize>,
                     most: Arc<AtomicUsize>,
                     release: Arc<tokio::sync::Notify>| {
            move |_: String, _: u16| async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                release.notified().await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(vec!["93.184.216.34:80".parse().unwrap()])
            }
        };
        let t0 = tokio::time::Instant::now();
        let mut opens = Vec::new();
        for i in 0..6 {
            let (p, policy, dns) = (p.clone(), policy.clone(), dns.clone());
            let lookup = stuck(running.clone(), most.clone(), release.clone());
            opens.push(tokio::spawn(async move {
                let target = TargetAddr::Domain(format!("slow{i}.example"), 80);
                connect_target(&p, &policy, &dns, &target, lookup)
                    .await
                    .map(|_| ())
            }));
        }
        let mut statuses = Vec::new();
        for o in opens {
            // Unbounded lookups would hang here: fail instead.
            let done = tokio::time::timeout(Duration::from_secs(5), o).await;
            statuses.push(
                done.expect("an open waited past its deadline")
                    .unwrap()
                    .unwrap_err(),
            );
        }
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(most.load(Ordering::SeqCst), 2, "lookups at once");
        let busy = statuses
            .iter()
            .filter(|f| f.status == OpenStatus::RESOURCE_LIMIT)
            .count();
        let slow = statuses
            .iter()
            .filter(|f| f.status == OpenStatus::HOST_UNREACHABLE)
            .count();
        assert_eq!((slow, busy), (2, 4), "{statuses:?}");
        assert!(
            statuses.iter().all(|f| !f.reason.contains("slow")),
            "{statuses:?}"
        );
        // The two stuck lookups still hold their slots: a new open finds none...
        let target = TargetAddr::Domain("next.example".into(), 80);
        let calls = AtomicUsize::new(0);
        let quick = scripted(&calls, vec![vec!["93.184.216.34:80".parse().unwrap()]]);
        let e = connect_target(&p, &policy, &dns, &target, quick)
            .await
            .unwrap_err();
        assert_eq!(e.status, OpenStatus::RESOURCE_LIMIT);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // ...until they end.
        release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(running.load(Ordering::SeqCst), 0);
        let calls = AtomicUsize::new(0);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = l.local_addr().unwrap();
        let _accepted = counting_listener(l);
        let open = ExitPolicy {
            allow_loopback: true,
            ..ExitPolicy::default()
        };
        let quick = scripted(&calls, vec![vec![good]]);
        let target = TargetAddr::Domain("next.example".into(), good.port());
        connect_target(&p, &open, &dns, &target, quick)
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
