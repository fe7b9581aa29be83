//! Relay: a Poisson mix in front of clients' mailboxes. Downstreams push cells addressed to
//! a mailbox (under the address as their link carries it: each downstream rewrites it per
//! link, `envelope::hop_address`); each waits an exponentially distributed delay in the pool, then goes to the
//! client that registered the mailbox. The relay knows the client's address, never what
//! the cells hold or where the streams go.
//!
//! A client registers a mailbox by sending a secret (over its TLS link, so only the relay
//! sees it); the relay files it under the address the secret hashes to, which is what the
//! central and the downstreams know. An address held by a live registration goes to a
//! newcomer only if it sent the same secret (the same client, reconnected): knowing the
//! address is not enough to take a client's return path. Registrations are capped per
//! connection and in all, must arrive within a deadline, and what the mailboxes queue is
//! capped per mailbox and by one byte budget for all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use braid_config::Role;
use braid_net::{read_frame, write_frame, ClientAuth, PinSet};
use braid_proto::envelope::{
    address_of, delivery_len, via_address, Delivery, HopKey, Registration, HOP_KEY_LABEL,
};
use braid_proto::frame::MailboxId;
use braid_proto::mix::MixPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::users::Allowance;
use crate::NodeContext;
use braid_driver::metrics::Metrics;
use braid_driver::tap::{tap, TapPoint};

pub struct RelayParams {
    /// Joined downstreams held at once.
    pub max_joined: usize,
    /// The credential check for clients, when the directory has an operator key.
    pub auth: Option<Arc<crate::users::FirstHopAuth>>,
    /// Which client sources it serves (downstreams are not filtered).
    pub sources: crate::users::SourceFilter,
    pub listen: SocketAddr,
    /// How many client and downstream connections it takes.
    pub accept: crate::AcceptLimits,
    pub mix_delay: Duration,
    /// Cells the mixing pool holds at most; beyond that, new cells are dropped.
    pub pool_cells: usize,
    /// Cells queued per mailbox (between the pool and the client's stream).
    pub mailbox_cells: usize,
    /// Bytes all mailbox queues together may hold.
    pub mailbox_budget: usize,
    /// Mailboxes registered at once, in all.
    pub max_mailboxes: usize,
    /// Mailboxes one client connection may hold (and registrations it may have pending).
    pub max_mailboxes_per_connection: usize,
    /// How long a registration stream may take to deliver its secret, and a connection
    /// to register its first mailbox.
    pub registration_timeout: Duration,
}

/// QUIC error code for a refused registration or a connection that never registered.
const REFUSED: u32 = 1;

/// What every client connection shares: the registrations and the queue budget.
struct Mailboxes {
    registry: Mutex<Registry>,
    budget: Arc<Budget>,
    mailbox_cells: usize,
    max_per_connection: usize,
    registration_timeout: Duration,
}

impl Mailboxes {
    /// The registry; a panic elsewhere while it was held leaves it consistent (every
    /// update is one insert or remove), so poisoning is ignored.
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The bytes all mailbox queues hold, against their budget.
struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    /// Charges `cell` to the budget; None (the cell is dropped) if it does not fit.
    fn charge(self: &Arc<Self>, cell: Vec<u8>) -> Option<Queued> {
        let n = cell.len();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.max)
            })
            .ok()?;
        Some(Queued {
            cell,
            budget: self.clone(),
        })
    }
}

/// A cell in a mailbox queue, charged to the budget until it is written out or dropped.
struct Queued {
    cell: Vec<u8>,
    budget: Arc<Budget>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.cell.len(), Ordering::AcqRel);
    }
}

/// The live registration of one address.
struct Holder {
    /// `SHA-256("braid mailbox" ‖ secret)`: the same digest means the same secret.
    digest: [u8; 32],
    /// The connection (its `stable_id`) holding it.
    conn: usize,
    /// Tells this registration from a later one of the same address.
    reg: u64,
    tx: mpsc::Sender<Queued>,
    /// Cancelled when the same secret registers again: the newer registration serves.
    evicted: CancellationToken,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A live registration with another secret holds the address.
    Held,
    /// The connection holds its cap of mailboxes.
    ConnectionCap,
    /// The relay holds its cap of mailboxes.
    RelayCap,
}

/// A mailbox's address as a link from `downstream` carries it: the central's per-downstream
/// address, rewritten by the downstream for its link.
fn link_address(key: &HopKey, downstream: &str, address: &MailboxId) -> MailboxId {
    key.address(&via_address(address, downstream))
}

/// Mailboxes by address, how many each connection holds, and each address as it arrives
/// on each downstream link (rewritten there: `envelope::hop_address`).
struct Registry {
    boxes: HashMap<MailboxId, Holder>,
    per_conn: HashMap<usize, usize>,
    /// Downstream links (by `stable_id`): their hop key and the downstream's id.
    hop_keys: HashMap<usize, (HopKey, String)>,
    /// (downstream link, address as that link carries it) → address.
    hops: HashMap<(usize, MailboxId), MailboxId>,
    next_reg: u64,
    max_total: usize,
    max_per_conn: usize,
}

impl Registry {
    fn new(max_total: usize, max_per_conn: usize) -> Self {
        Registry {
            boxes: HashMap::new(),
            per_conn: HashMap::new(),
            hop_keys: HashMap::new(),
            hops: HashMap::new(),
            next_reg: 0,
            max_total,
            max_per_conn,
        }
    }

    /// Files a registration under the address `digest` stands for; returns its number (for
    /// [`withdraw`](Self::withdraw)). The same secret takes over from its live holder (which
    /// is told through its `evicted` token); another secret for a held address is refused.
    fn register(
        &mut self,
        digest: [u8; 32],
        conn: usize,
        tx: mpsc::Sender<Queued>,
        evicted: CancellationToken,
    ) -> Result<u64, Refusal> {
        let address = address_of(&digest);
        let holder_conn = match self.boxes.get(&address) {
            Some(h) if h.digest != digest => return Err(Refusal::Held),
            Some(h) => Some(h.conn),
            None => None,
        };
        // A takeover on the same connection changes no count.
        if holder_conn != Some(conn)
            && self.per_conn.get(&conn).copied().unwrap_or(0) >= self.max_per_conn
        {
            return Err(Refusal::ConnectionCap);
        }
        if holder_conn.is_none() && self.boxes.len() >= self.max_total {
            return Err(Refusal::RelayCap);
        }
        self.next_reg += 1;
        let reg = self.next_reg;
        let holder = Holder {
            digest,
            conn,
            reg,
            tx,
            evicted,
        };
        if let Some(old) = self.boxes.insert(address, holder) {
            self.release(old.conn);
            old.evicted.cancel();
        } else {
            for (link, (key, downstream)) in &self.hop_keys {
                self.hops
                    .insert((*link, link_address(key, downstream, &address)), address);
            }
        }
        *self.per_conn.entry(conn).or_default() += 1;
        Ok(reg)
    }

    /// Removes registration `reg` of `address`, if it still holds it.
    fn withdraw(&mut self, address: &MailboxId, reg: u64) {
        if self.boxes.get(address).is_some_and(|h| h.reg == reg) {
            if let Some(h) = self.boxes.remove(address) {
                self.release(h.conn);
                for (link, (key, downstream)) in &self.hop_keys {
                    self.hops
                        .remove(&(*link, link_address(key, downstream, address)));
                }
            }
        }
    }

    fn release(&mut self, conn: usize) {
        if let Some(n) = self.per_conn.get_mut(&conn) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_conn.remove(&conn);
            }
        }
    }

    /// A downstream link came up: its hop addresses for every mailbox held.
    fn add_link(&mut self, link: usize, key: HopKey, downstream: String) {
        for address in self.boxes.keys() {
            self.hops
                .insert((link, link_address(&key, &downstream, address)), *address);
        }
        self.hop_keys.insert(link, (key, downstream));
    }

    fn remove_link(&mut self, link: usize) {
        if self.hop_keys.remove(&link).is_some() {
            self.hops.retain(|(l, _), _| *l != link);
        }
    }

    /// The mailbox a delivery on `link` is for, from the address that link carries.
    fn resolve(&self, link: usize, hop: &MailboxId) -> Option<MailboxId> {
        self.hops.get(&(link, *hop)).copied()
    }

    /// Where cells for `address` go, if it is registered.
    fn sender(&self, address: &MailboxId) -> Option<mpsc::Sender<Queued>> {
        self.boxes.get(address).map(|h| h.tx.clone())
    }
}

pub async fn run(ctx: NodeContext, p: RelayParams) -> anyhow::Result<()> {
    let pins: PinSet = ctx
        .directory
        .nodes_with_role(Role::Downstream)
        .map(|n| n.tls_key)
        .collect();
    let members = crate::members::Members::new(
        ctx.directory.clone(),
        pins.clone(),
        p.max_joined,
        &[Role::Downstream],
        ctx.shutdown.clone(),
    );
    // Users come without a certificate; downstreams with one, pinned or (joining) admitted
    // by descriptor.
    let auth = if members.joinable() {
        ClientAuth::OptionalJoinable
    } else {
        ClientAuth::Optional
    };
    let ep = braid_net::server_endpoint(p.listen, &ctx.identity, pins, auth)?;
    info!(node = %ctx.id, listen = %p.listen, mix_ms = p.mix_delay.as_secs_f64() * 1e3, "relay listening");
    let mailboxes = Arc::new(Mailboxes {
        registry: Mutex::new(Registry::new(
            p.max_mailboxes.max(1),
            p.max_mailboxes_per_connection.max(1),
        )),
        budget: Arc::new(Budget {
            used: AtomicUsize::new(0),
            max: p.mailbox_budget,
        }),
        mailbox_cells: p.mailbox_cells.max(1),
        max_per_connection: p.max_mailboxes_per_connection.max(1),
        registration_timeout: p.registration_timeout,
    });
    let (mix_tx, mix_rx) = mpsc::channel::<(MailboxId, Vec<u8>)>(4096);
    let mixer = tokio::spawn(mix(
        ctx.clone(),
        mix_rx,
        mailboxes.clone(),
        p.mix_delay,
        p.pool_cells,
    ));

    let gate = crate::users::FirstHop::new(&ctx, p.auth.clone(), p.sources.clone());
    let c = ctx.clone();
    ctx.accept_until_drain(&ep, p.accept, move |conn| {
        let (ctx, mix_tx, mailboxes, gate, members) = (
            c.clone(),
            mix_tx.clone(),
            mailboxes.clone(),
            gate.clone(),
            members.clone(),
        );
        async move {
            match braid_net::peer_tls_key(&conn) {
                // A downstream: pinned, or one that joined and registers now.
                Some(_) => {
                    let Some(entry) = members.identify(&conn).await else {
                        Metrics::inc(&ctx.metrics.peers_refused);
                        conn.close(1u32.into(), b"unknown key");
                        return;
                    };
                    if entry.role != Role::Downstream {
                        conn.close(1u32.into(), b"role not served");
                        return;
                    }
                    from_downstream(ctx, conn, entry.id, mix_tx, mailboxes).await
                }
                None => {
                    let (c, conn2) = (ctx.clone(), conn.clone());
                    gate.serve(&ctx, &conn, move |allowance| {
                        serve_client(c, conn2, mailboxes, allowance)
                    })
                    .await;
                }
            }
        }
    })
    .await;
    ctx.wait_quiet().await;
    mixer.abort();
    ep.close(0u32.into(), b"shutdown");
    Ok(())
}

async fn from_downstream(
    ctx: NodeContext,
    conn: quinn::Connection,
    downstream: String,
    mix_tx: mpsc::Sender<(MailboxId, Vec<u8>)>,
    mailboxes: Arc<Mailboxes>,
) {
    let cell_size = ctx.cell_size();
    let link = conn.stable_id();
    let Some(key) = braid_net::link_key(&conn, HOP_KEY_LABEL) else {
        return;
    };
    mailboxes
        .registry()
        .add_link(link, HopKey::new(&key), downstream);
    // Forget the link's addresses when it goes, however this task ends.
    struct Unlink(Arc<Mailboxes>, usize);
    impl Drop for Unlink {
        fn drop(&mut self) {
            self.0.registry().remove_link(self.1);
        }
    }
    let _unlink = Unlink(mailboxes.clone(), link);
    while let Ok(mut recv) = conn.accept_uni().await {
        let ctx = ctx.clone();
        let mix_tx = mix_tx.clone();
        let mailboxes = mailboxes.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Ok(true) = read_frame(&mut recv, delivery_len(cell_size), &mut buf).await {
                Metrics::inc(&ctx.metrics.cells_in);
                tap(&ctx.tap, &ctx.id, TapPoint::Received, &buf);
                let Ok(d) = Delivery::parse(&buf, cell_size) else {
                    Metrics::inc(&ctx.metrics.cells_dropped);
                    continue;
                };
                let Some(mailbox) = mailboxes.registry().resolve(link, &d.mailbox) else {
                    Metrics::inc(&ctx.metrics.cells_dropped);
                    continue;
                };
                if mix_tx.send((mailbox, d.cell.to_vec())).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn mix(
    ctx: NodeContext,
    mut rx: mpsc::Receiver<(MailboxId, Vec<u8>)>,
    mailboxes: Arc<Mailboxes>,
    mean: Duration,
    pool_cells: usize,
) {
    let mut pool = MixPool::new(mean, pool_cells);
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::from_os_rng();
    loop {
        let now = tokio::time::Instant::now().into_std();
        while let Some((mailbox, cell)) = pool.poll_release(now) {
            // Unknown mailbox, over the byte budget, or its queue full: dropped (resent end
            // to end).
            let tx = mailboxes.registry().sender(&mailbox);
            let queued = tx.and_then(|tx| mailboxes.budget.charge(cell).map(|q| (tx, q)));
            let sent = queued.is_some_and(|(tx, q)| tx.try_send(q).is_ok());
            Metrics::inc(if sent {
                &ctx.metrics.cells_out
            } else {
                &ctx.metrics.cells_dropped
            });
        }
        let wake = pool.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { return };
                let now = tokio::time::Instant::now().into_std();
                if !pool.push(now, &mut rng, item) {
                    Metrics::inc(&ctx.metrics.cells_dropped);
                }
            }
            _ = async { match wake { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {}
        }
    }
}

/// A client registers each mailbox on a bidirectional stream and reads its cells from it.
async fn serve_client(
    ctx: NodeContext,
    conn: quinn::Connection,
    mailboxes: Arc<Mailboxes>,
    allowance: Option<Arc<Allowance>>,
) {
    let registered = Arc::new(AtomicBool::new(false));
    let pending = Arc::new(AtomicUsize::new(0));
    // A connection that never registers only holds a slot: it goes at the deadline.
    {
        let (conn, registered, ctx) = (conn.clone(), registered.clone(), ctx.clone());
        let deadline = mailboxes.registration_timeout;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(deadline) => {
                    if !registered.load(Ordering::Acquire) {
                        Metrics::inc(&ctx.metrics.peers_refused);
                        debug!(node = %ctx.id, "client registered nothing in time; closing");
                        conn.close(REFUSED.into(), b"no registration");
                    }
                }
                _ = conn.closed() => {}
            }
        });
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        // Streams still waiting for their secret count against the connection's cap, so
        // a client cannot hold many half-open registrations.
        if pending.fetch_add(1, Ordering::AcqRel) >= mailboxes.max_per_connection {
            pending.fetch_sub(1, Ordering::AcqRel);
            Metrics::inc(&ctx.metrics.peers_refused);
            refuse(send, recv);
            continue;
        }
        tokio::spawn(serve_mailbox(
            ctx.clone(),
            conn.clone(),
            mailboxes.clone(),
            (send, recv),
            (registered.clone(), pending.clone()),
            allowance.clone(),
        ));
    }
}

/// Resets both directions of a registration stream.
fn refuse(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let _ = send.reset(REFUSED.into());
    let _ = recv.stop(REFUSED.into());
}

/// One mailbox: the secret within the deadline, then its cells until the client ends the
/// stream, the connection goes, or the same secret registers again elsewhere.
async fn serve_mailbox(
    ctx: NodeContext,
    conn: quinn::Connection,
    mailboxes: Arc<Mailboxes>,
    (mut send, mut recv): (quinn::SendStream, quinn::RecvStream),
    (registered, pending): (Arc<AtomicBool>, Arc<AtomicUsize>),
    allowance: Option<Arc<Allowance>>,
) {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        mailboxes.registration_timeout,
        read_frame(&mut recv, Registration::LEN, &mut buf),
    )
    .await;
    pending.fetch_sub(1, Ordering::AcqRel);
    let parsed = match read {
        Ok(Ok(true)) => Registration::parse(&buf).ok(),
        _ => None,
    };
    let Some(registration) = parsed else {
        Metrics::inc(&ctx.metrics.peers_refused);
        debug!(node = %ctx.id, "registration late or malformed; refused");
        refuse(send, recv);
        return;
    };
    let digest = registration.secret.digest();
    let address = address_of(&digest);
    let (tx, mut rx) = mpsc::channel::<Queued>(mailboxes.mailbox_cells);
    let evicted = CancellationToken::new();
    let reg = match mailboxes
        .registry()
        .register(digest, conn.stable_id(), tx, evicted.clone())
    {
        Ok(reg) => reg,
        Err(why) => {
            Metrics::inc(&ctx.metrics.peers_refused);
            debug!(node = %ctx.id, ?why, "mailbox registration refused");
            refuse(send, recv);
            return;
        }
    };
    registered.store(true, Ordering::Release);
    debug!(node = %ctx.id, "mailbox registered");
    // The client sends nothing after its secret: any end, reset or byte on its side
    // withdraws the mailbox.
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            q = rx.recv() => {
                let Some(q) = q else { break };
                // The user's share of its rate here: while it waits, the mailbox queue
                // fills and the pool drops what does not fit, which the central resends.
                if let Some(a) = &allowance {
                    if let Err(r) = a.spend(q.cell.len()).await {
                        Metrics::inc(&ctx.metrics.users_over_quota);
                        crate::users::close_refused(&conn, r);
                        break;
                    }
                }
                if write_frame(&mut send, &q.cell).await.is_err() {
                    break;
                }
                tap(&ctx.tap, &ctx.id, TapPoint::Sent, &q.cell);
            }
            _ = evicted.cancelled() => break,
            _ = recv.read(&mut probe) => break,
            _ = conn.closed() => break,
        }
    }
    mailboxes.registry().withdraw(&address, reg);
    let _ = send.finish();
    debug!(node = %ctx.id, "mailbox withdrawn");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> [u8; 32] {
        braid_proto::envelope::MailboxSecret::from_bytes([n; 32]).digest()
    }

    fn chan() -> mpsc::Sender<Queued> {
        mpsc::channel(1).0
    }

    #[test]
    fn the_same_secret_takes_over_another_is_refused() {
        let mut r = Registry::new(10, 10);
        let first = CancellationToken::new();
        let reg = r.register(digest(1), 1, chan(), first.clone()).unwrap();
        // Same address, other digest (as if a second preimage were found): refused.
        let mut forged = digest(2);
        forged[..16].copy_from_slice(&digest(1)[..16]);
        assert_eq!(
            r.register(forged, 2, chan(), CancellationToken::new()),
            Err(Refusal::Held)
        );
        assert!(!first.is_cancelled());
        // The same secret from another connection takes over; the old holder is told.
        let second = r
            .register(digest(1), 2, chan(), CancellationToken::new())
            .unwrap();
        assert!(first.is_cancelled());
        assert_eq!(r.per_conn.get(&1), None);
        assert_eq!(r.per_conn.get(&2), Some(&1));
        // The old holder's withdrawal does not remove the new one.
        let address = address_of(&digest(1));
        r.withdraw(&address, reg);
        assert!(r.sender(&address).is_some());
        r.withdraw(&address, second);
        assert!(r.sender(&address).is_none());
        assert!(r.per_conn.is_empty());
    }

    #[test]
    fn caps_per_connection_and_in_all() {
        let mut r = Registry::new(3, 2);
        let tok = CancellationToken::new;
        r.register(digest(1), 1, chan(), tok()).unwrap();
        r.register(digest(2), 1, chan(), tok()).unwrap();
        assert_eq!(
            r.register(digest(3), 1, chan(), tok()),
            Err(Refusal::ConnectionCap)
        );
        // A takeover on the same connection is not a new mailbox.
        r.register(digest(2), 1, chan(), tok()).unwrap();
        r.register(digest(3), 2, chan(), tok()).unwrap();
        assert_eq!(
            r.register(digest(4), 2, chan(), tok()),
            Err(Refusal::RelayCap)
        );
        assert_eq!(r.boxes.len(), 3);
    }

    #[test]
    fn budget_charges_and_releases() {
        let b = Arc::new(Budget {
            used: AtomicUsize::new(0),
            max: 10,
        });
        let a = b.charge(vec![0; 6]).unwrap();
        assert!(b.charge(vec![0; 5]).is_none());
        let c = b.charge(vec![0; 4]).unwrap();
        assert_eq!(b.used.load(Ordering::Acquire), 10);
        drop(a);
        drop(c);
        assert_eq!(b.used.load(Ordering::Acquire), 0);
    }
}
