//! Nodes that join a running network (DESIGN §6).
//!
//! - [`Members`] is a central's view of who may link to it: the directory's nodes, and
//!   the nodes that registered a descriptor their operator's join credential vouches for,
//!   each held until its descriptor lapses. It passes every descriptor it takes on to the
//!   sessions, so clients learn of new nodes (and verify them themselves).
//! - [`Joiner`] is the joining node's side: it signs its descriptor with the join key and
//!   registers it on each link to a central, refreshes it every third of its life, and on
//!   drain signs a short-lived one that says it is leaving.
//!
//! Registration is one frame on a bidirectional stream the joining node opens: its
//! descriptor, answered by one byte (0: taken, else a [`JoinRefusal`] code). A node whose
//! key is not pinned gets `REGISTRATION_TIMEOUT` to register before it is closed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_config::{Directory, NodeEntry, NodeJoin, Role};
use braid_net::{read_frame, write_frame, PinSet};
use braid_proto::credential::SigningKey;
use braid_proto::join::{Descriptor, JoinLedger, JoinRefusal, MAX_DESCRIPTOR_LEN};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long an unpinned peer has to register before the central closes it.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer byte of a registration that was taken.
const TAKEN: u8 = 0;

/// QUIC close code for a refused registration: this plus the refusal's code.
const JOIN_REFUSED_CLOSE: u32 = 0x200;

/// One joined node, as its newest descriptor says.
struct Joined {
    entry: NodeEntry,
    descriptor: Vec<u8>,
    published: u64,
    expires: u64,
    /// The join credential's id: a node that rotates its key keeps its id only under the
    /// same credential.
    credential: [u8; braid_proto::credential::ID_LEN],
}

/// A central's members beyond the directory (see the module docs).
pub struct Members {
    directory: Arc<Directory>,
    /// Keys the central's TLS accepts without a registration: the directory's, then each
    /// joined node's while it holds.
    pins: PinSet,
    /// By TLS key: during a key rotation one id has two entries, old and new.
    joined: Mutex<HashMap<[u8; 32], Joined>>,
    ledger: Mutex<JoinLedger>,
    max_joined: usize,
    /// The roles that may join to link to this node.
    roles: &'static [Role],
    updates: broadcast::Sender<Vec<u8>>,
}

impl Members {
    /// `pins` are the directory keys the node's endpoint accepts; joined keys are added
    /// to and removed from it. Nodes of `roles` may join (a central takes upstreams,
    /// downstreams and gateways, a relay downstreams). Forgets lapsed nodes every second
    /// until `shutdown`.
    pub fn new(
        directory: Arc<Directory>,
        pins: PinSet,
        max_joined: usize,
        roles: &'static [Role],
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let members = Arc::new(Members {
            directory,
            pins,
            joined: Mutex::default(),
            ledger: Mutex::default(),
            max_joined,
            roles,
            // A session that falls this far behind gets the rest on its next refresh.
            updates: broadcast::channel(256).0,
        });
        if members.joinable() {
            let m = members.clone();
            tokio::spawn(async move {
                while braid_driver::sleep_or_shutdown(Duration::from_secs(1), &shutdown).await {
                    for id in m.prune(braid_driver::unix_now()) {
                        info!(node = %id, "joined node's descriptor lapsed");
                    }
                }
            });
        }
        members
    }

    /// Whether nodes may join: the directory names an operator key to verify them with.
    pub fn joinable(&self) -> bool {
        self.directory.operator_key.is_some()
    }

    /// The node linked with `key`: a directory node, or a joined one whose descriptor holds.
    pub fn by_tls_key(&self, key: &[u8; 32], now: u64) -> Option<NodeEntry> {
        if let Some(e) = self.directory.by_tls_key(key) {
            return Some(e.clone());
        }
        let joined = self.joined.lock().ok()?;
        joined
            .get(key)
            .filter(|j| j.expires > now)
            .map(|j| j.entry.clone())
    }

    /// Takes a descriptor `peer_key`'s node registered: it must verify from the operator
    /// key, name that very key, a role that may join, and an id no other node holds.
    pub fn admit(
        &self,
        bytes: &[u8],
        peer_key: &[u8; 32],
        now: u64,
    ) -> Result<NodeEntry, JoinRefusal> {
        let operator = self.directory.operator_key.ok_or(JoinRefusal::Forged)?;
        let (d, c) = Descriptor::verify(bytes, &operator, now)?;
        if &d.tls_key != peer_key {
            return Err(JoinRefusal::KeyMismatch);
        }
        let entry = NodeEntry::from_descriptor(&d).ok_or(JoinRefusal::Malformed)?;
        // Centrals and relays are where clients and nodes start from: they stay in the
        // signed directory, and no node takes them by join.
        if !self.roles.contains(&entry.role) {
            return Err(JoinRefusal::WrongRole);
        }
        if self.directory.by_id(&entry.id).is_some() {
            return Err(JoinRefusal::IdTaken);
        }
        let mut joined = self.joined.lock().map_err(|_| JoinRefusal::Full)?;
        joined.retain(|_, j| j.expires > now);
        if joined
            .iter()
            .any(|(k, j)| k != peer_key && j.entry.id == entry.id && j.credential != c.id)
        {
            return Err(JoinRefusal::IdTaken);
        }
        if !joined.contains_key(peer_key) && joined.len() >= self.max_joined {
            return Err(JoinRefusal::Full);
        }
        self.ledger
            .lock()
            .map_err(|_| JoinRefusal::Full)?
            .admit(&c, &entry.id, now)?;
        // A refresh goes to every session, so a node may not send them faster than its own
        // pace (a third of its descriptor's life): quicker or older ones are answered but
        // neither kept nor passed on. Leaving always is.
        if let Some(held) = joined.get(peer_key) {
            let pace = held.expires.saturating_sub(held.published) / 3;
            if !d.is_leaving() && d.published < held.published.saturating_add(pace.max(1)) {
                return Ok(entry);
            }
        }
        let fresh = joined
            .insert(
                *peer_key,
                Joined {
                    entry: entry.clone(),
                    descriptor: bytes.to_vec(),
                    published: d.published,
                    expires: d.expires,
                    credential: c.id,
                },
            )
            .is_none();
        drop(joined);
        self.pins.insert(*peer_key);
        if fresh {
            info!(node = %entry.id, role = %entry.role, addr = ?entry.addr, "node joined");
        } else if d.is_leaving() {
            info!(node = %entry.id, "node leaving");
        }
        let _ = self.updates.send(bytes.to_vec());
        Ok(entry)
    }

    /// Forgets the joined nodes whose descriptors lapsed; returns their ids.
    pub fn prune(&self, now: u64) -> Vec<String> {
        let Ok(mut joined) = self.joined.lock() else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        joined.retain(|key, j| {
            let keep = j.expires > now;
            if !keep {
                self.pins.remove(key);
                gone.push(j.entry.id.clone());
            }
            keep
        });
        gone
    }

    /// Every joined node's newest descriptor, for a session that just opened.
    pub fn descriptors(&self) -> Vec<Vec<u8>> {
        self.joined
            .lock()
            .map(|j| j.values().map(|j| j.descriptor.clone()).collect())
            .unwrap_or_default()
    }

    /// Descriptors as they are taken.
    pub fn subscribe(&self) -> broadcast::Receiver<Vec<u8>> {
        self.updates.subscribe()
    }

    /// Joined nodes held now.
    pub fn joined_count(&self) -> usize {
        self.joined.lock().map(|j| j.len()).unwrap_or(0)
    }

    /// The peer on `conn`: a directory node or a joined one, or (when nodes may join) one
    /// that registers within [`REGISTRATION_TIMEOUT`]. A refused or silent peer is closed
    /// and logged with the reason. Then serves the peer's later registrations (refreshes,
    /// leaving, or a new key) for as long as the link lives.
    pub async fn identify(self: &Arc<Self>, conn: &quinn::Connection) -> Option<NodeEntry> {
        let key = braid_net::peer_tls_key(conn)?;
        let entry = match self.by_tls_key(&key, braid_driver::unix_now()) {
            Some(e) => e,
            None if self.joinable() => {
                let taken =
                    tokio::time::timeout(REGISTRATION_TIMEOUT, self.take_one(conn, &key)).await;
                match taken {
                    Ok(Ok(e)) => e,
                    Ok(Err(Some(why))) => {
                        warn!(peer = %conn.remote_address(), reason = %why, "join refused");
                        conn.close(
                            (JOIN_REFUSED_CLOSE + u32::from(why.code())).into(),
                            b"join refused",
                        );
                        return None;
                    }
                    Ok(Err(None)) | Err(_) => {
                        warn!(peer = %conn.remote_address(), "unknown key and no registration: closed");
                        conn.close(1u32.into(), b"unknown key");
                        return None;
                    }
                }
            }
            None => return None,
        };
        if self.joinable() {
            let (members, conn) = (self.clone(), conn.clone());
            tokio::spawn(async move {
                loop {
                    match members.take_one(&conn, &key).await {
                        Ok(_) => {}
                        Err(Some(why)) => {
                            warn!(peer = %conn.remote_address(), reason = %why, "registration refused")
                        }
                        Err(None) => break,
                    }
                }
            });
        }
        Some(entry)
    }

    /// Reads one registration on the next bidirectional stream and answers it. `Err(None)`:
    /// the link or the stream failed before a descriptor arrived.
    async fn take_one(
        &self,
        conn: &quinn::Connection,
        key: &[u8; 32],
    ) -> Result<NodeEntry, Option<JoinRefusal>> {
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|_| None)?;
        let mut buf = Vec::with_capacity(MAX_DESCRIPTOR_LEN);
        match read_frame(&mut recv, MAX_DESCRIPTOR_LEN, &mut buf).await {
            Ok(true) => {}
            _ => return Err(None),
        }
        let taken = self.admit(&buf, key, braid_driver::unix_now());
        let answer = match &taken {
            Ok(_) => TAKEN,
            Err(r) => r.code(),
        };
        let _ = send.write_all(&[answer]).await;
        let _ = send.finish();
        taken.map_err(Some)
    }
}

/// Why a central did not take this node's registration.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("the central refused: {0}")]
    Refused(JoinRefusal),
    #[error("the central answered code {0}")]
    UnknownAnswer(u8),
    #[error("the link failed: {0}")]
    Link(String),
    #[error("signing the descriptor: {0}")]
    Sign(#[from] braid_proto::wire::WireError),
}

/// A joining node's side: its entry, its join credential and key.
pub struct Joiner {
    entry: NodeEntry,
    credential: Vec<u8>,
    key: SigningKey,
    lifetime: Duration,
}

impl Joiner {
    pub fn new(entry: NodeEntry, join: &NodeJoin, lifetime: Duration) -> Self {
        Joiner {
            entry,
            credential: join.bytes.clone(),
            key: SigningKey::from_seed(&join.secret),
            lifetime,
        }
    }

    /// The entry this node registers.
    pub fn entry(&self) -> &NodeEntry {
        &self.entry
    }

    /// A descriptor published now: for the whole lifetime, or (`leaving`) one that says
    /// the node is going.
    pub fn descriptor(&self, now: u64, leaving: bool) -> Result<Vec<u8>, RegisterError> {
        let life = if leaving {
            braid_proto::join::LEAVING_SECS
        } else {
            self.lifetime.as_secs()
        };
        let d = Descriptor {
            id: self.entry.id.clone(),
            role: self.entry.role.code(),
            addr: self.entry.addr,
            noise_key: self.entry.noise_key,
            tls_key: self.entry.tls_key,
            published: now,
            expires: now + life,
        };
        Ok(d.sign(&self.credential, &self.key)?)
    }

    /// Registers a descriptor on `conn` and waits for the central's answer.
    pub async fn register(
        &self,
        conn: &quinn::Connection,
        leaving: bool,
    ) -> Result<(), RegisterError> {
        let d = self.descriptor(braid_driver::unix_now(), leaving)?;
        let link = |e: &dyn std::fmt::Display| RegisterError::Link(e.to_string());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| link(&e))?;
        write_frame(&mut send, &d).await.map_err(|e| link(&e))?;
        let _ = send.finish();
        let mut answer = [0u8; 1];
        recv.read_exact(&mut answer).await.map_err(|e| link(&e))?;
        match answer[0] {
            TAKEN => Ok(()),
            code => Err(JoinRefusal::from_code(code)
                .map(RegisterError::Refused)
                .unwrap_or(RegisterError::UnknownAnswer(code))),
        }
    }

    /// Keeps this node registered on `conn`: a refresh every third of the descriptor's
    /// life, and once `drain` fires, a leaving descriptor (clients stop using the node
    /// while it still serves what they have in flight). Returns when the link fails.
    pub async fn keep_registered(&self, conn: &quinn::Connection, drain: &CancellationToken) {
        let every = self.lifetime / 3;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {
                    if let Err(e) = self.register(conn, false).await {
                        warn!(node = %self.entry.id, error = %e, "refreshing the registration failed");
                        if matches!(e, RegisterError::Link(_)) {
                            return;
                        }
                    }
                }
                _ = drain.cancelled() => {
                    match self.register(conn, true).await {
                        Ok(()) => info!(node = %self.entry.id, "told the central this node is leaving"),
                        Err(e) => warn!(node = %self.entry.id, error = %e, "telling the central this node is leaving failed"),
                    }
                    let _ = conn.closed().await;
                    return;
                }
                _ = conn.closed() => return,
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use braid_proto::join::JoinCredential;

    const NOW: u64 = 1_000_000;

    struct Net {
        members: Arc<Members>,
        pins: PinSet,
        op: SigningKey,
    }

    fn net(max: usize) -> Net {
        let op = SigningKey::from_seed(&[1; 32]);
        let mut dir = Directory::new(
            1024,
            vec![NodeEntry::new(
                "upstream-1",
                Role::Upstream,
                Some(([127, 0, 0, 2], 7100).into()),
                [1; 32],
                [1; 32],
            )],
        );
        dir.operator_key = Some(op.public());
        let pins = PinSet::new();
        let members = Members::new(
            Arc::new(dir),
            pins.clone(),
            max,
            &[Role::Upstream, Role::Downstream],
            CancellationToken::new(),
        );
        Net { members, pins, op }
    }

    /// A descriptor for `id` with TLS key `[key; 32]`, under a credential for `role`.
    fn signed(n: &Net, id: &str, key: u8, role: Role, cred_id: u8, life: u64) -> Vec<u8> {
        let join = SigningKey::from_seed(&[cred_id; 32]);
        let cred = JoinCredential {
            id: [cred_id; 16],
            role: role.code(),
            single_use: false,
            not_before: 0,
            not_after: NOW + 3600,
            join_key: join.public(),
        }
        .issue(&n.op);
        Descriptor {
            id: id.into(),
            role: role.code(),
            addr: Some(([127, 0, 0, 9], 7100).into()),
            noise_key: [key; 32],
            tls_key: [key; 32],
            published: NOW,
            expires: NOW + life,
        }
        .sign(&cred, &join)
        .unwrap()
    }

    #[tokio::test]
    async fn a_verified_node_joins_is_pinned_and_forgotten_when_it_lapses() {
        let n = net(8);
        let d = signed(&n, "upstream-9", 9, Role::Upstream, 2, 60);
        let mut updates = n.members.subscribe();
        let e = n.members.admit(&d, &[9; 32], NOW).unwrap();
        assert_eq!(e.id, "upstream-9");
        assert!(n.pins.contains(&[9; 32]));
        assert_eq!(
            n.members.by_tls_key(&[9; 32], NOW).unwrap().id,
            "upstream-9"
        );
        assert_eq!(updates.try_recv().unwrap(), d, "passed on to the sessions");
        assert_eq!(n.members.descriptors(), vec![d]);
        assert!(n.members.prune(NOW + 59).is_empty());
        assert_eq!(n.members.prune(NOW + 60), vec!["upstream-9".to_string()]);
        assert!(!n.pins.contains(&[9; 32]));
        assert!(n.members.by_tls_key(&[9; 32], NOW + 60).is_none());
    }

    #[tokio::test]
    async fn registrations_that_do_not_fit_are_refused_with_their_reason() {
        let n = net(1);
        let d = signed(&n, "upstream-9", 9, Role::Upstream, 2, 60);
        // Shown on another node's connection.
        assert_eq!(
            n.members.admit(&d, &[8; 32], NOW),
            Err(JoinRefusal::KeyMismatch)
        );
        // A directory node's id.
        let d1 = signed(&n, "upstream-1", 9, Role::Upstream, 2, 60);
        assert_eq!(
            n.members.admit(&d1, &[9; 32], NOW),
            Err(JoinRefusal::IdTaken)
        );
        // A role this node does not take.
        let g = signed(&n, "gateway-9", 7, Role::Gateway, 3, 60);
        assert_eq!(
            n.members.admit(&g, &[7; 32], NOW),
            Err(JoinRefusal::WrongRole)
        );
        // Garbage.
        assert_eq!(
            n.members.admit(b"BRDN", &[9; 32], NOW),
            Err(JoinRefusal::Malformed)
        );
        n.members.admit(&d, &[9; 32], NOW).unwrap();
        // The same id under another credential.
        let other = signed(&n, "upstream-9", 6, Role::Upstream, 4, 60);
        assert_eq!(
            n.members.admit(&other, &[6; 32], NOW),
            Err(JoinRefusal::IdTaken)
        );
        // Full: one joined node at most.
        let full = signed(&n, "downstream-9", 5, Role::Downstream, 5, 60);
        assert_eq!(
            n.members.admit(&full, &[5; 32], NOW),
            Err(JoinRefusal::Full)
        );
        assert_eq!(n.members.joined_count(), 1);
        // A refresh of the one held is taken.
        assert!(n.members.admit(&d, &[9; 32], NOW).is_ok());
    }

    #[tokio::test]
    async fn refreshes_faster_than_a_third_of_the_life_are_not_passed_on() {
        let n = net(8);
        let mut updates = n.members.subscribe();
        let d = signed(&n, "upstream-9", 9, Role::Upstream, 2, 60);
        n.members.admit(&d, &[9; 32], NOW).unwrap();
        assert!(updates.try_recv().is_ok());
        // The same descriptor again (a flood of refreshes): answered, not passed on.
        for _ in 0..100 {
            n.members.admit(&d, &[9; 32], NOW).unwrap();
        }
        assert!(updates.try_recv().is_err(), "no session hears the flood");
        // Leaving is passed on at once.
        let leaving = signed(&n, "upstream-9", 9, Role::Upstream, 2, 5);
        n.members.admit(&leaving, &[9; 32], NOW).unwrap();
        assert_eq!(updates.try_recv().unwrap(), leaving);
    }

    #[tokio::test]
    async fn a_rotated_key_overlaps_the_old_one_under_the_same_credential() {
        let n = net(8);
        let old = signed(&n, "upstream-9", 9, Role::Upstream, 2, 60);
        let new = signed(&n, "upstream-9", 10, Role::Upstream, 2, 60);
        n.members.admit(&old, &[9; 32], NOW).unwrap();
        n.members.admit(&new, &[10; 32], NOW).unwrap();
        assert_eq!(n.members.joined_count(), 2);
        // The old one leaves: a 5 s life, then gone.
        let leaving = signed(&n, "upstream-9", 9, Role::Upstream, 2, 5);
        n.members.admit(&leaving, &[9; 32], NOW).unwrap();
        assert_eq!(n.members.prune(NOW + 5), vec!["upstream-9".to_string()]);
        assert!(n.pins.contains(&[10; 32]));
        assert!(!n.pins.contains(&[9; 32]));
    }
}
