//! Upstreams that joined the network after its directory was written. The central passes
//! on each node's signed descriptor through the session; the client verifies it here from
//! the operator key its directory names (so a central cannot make members up), links to a
//! new upstream at once, stops using one that says it is leaving, and drops one whose
//! descriptor lapsed without a refresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use braid_config::{Directory, NodeEntry, Role};
use braid_proto::join::Descriptor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// One joined upstream the client links to.
struct Joined {
    id: String,
    expires: u64,
    stop: CancellationToken,
}

/// What the client keeps of joined upstreams, by TLS key (a node rotating its key has two
/// for a while; the newer link takes over the name's place).
pub(crate) struct JoinedUpstreams {
    directory: Arc<Directory>,
    max: usize,
    joined: HashMap<[u8; 32], Joined>,
}

/// What a descriptor did.
pub(crate) enum Change {
    /// A new upstream: link to it, stopping with the token.
    Link(NodeEntry, CancellationToken),
    /// Known already (a refresh), refused, or of no use to a client.
    Nothing,
}

impl JoinedUpstreams {
    pub(crate) fn new(directory: Arc<Directory>, max: usize) -> Self {
        JoinedUpstreams {
            directory,
            max,
            joined: HashMap::new(),
        }
    }

    /// Takes one descriptor the central passed on, at `now` (unix seconds).
    pub(crate) fn take(&mut self, bytes: &[u8], now: u64, shutdown: &CancellationToken) -> Change {
        let Some(operator) = self.directory.operator_key else {
            return Change::Nothing;
        };
        let d = match Descriptor::verify(bytes, &operator, now) {
            Ok((d, _)) => d,
            Err(e) => {
                debug!(error = %e, "a descriptor from the central does not verify");
                return Change::Nothing;
            }
        };
        let Some(entry) = NodeEntry::from_descriptor(&d) else {
            return Change::Nothing;
        };
        if entry.role != Role::Upstream
            || !entry.dialable()
            || self.directory.by_id(&entry.id).is_some()
        {
            return Change::Nothing;
        }
        if d.is_leaving() {
            if let Some(j) = self.joined.remove(&d.tls_key) {
                info!(upstream = %j.id, "joined upstream is leaving: no longer used");
                j.stop.cancel();
            }
            return Change::Nothing;
        }
        if let Some(j) = self.joined.get_mut(&d.tls_key) {
            j.expires = j.expires.max(d.expires);
            return Change::Nothing;
        }
        if self.joined.len() >= self.max {
            debug!(upstream = %entry.id, "joined upstream not used: max_joined_upstreams reached");
            return Change::Nothing;
        }
        info!(upstream = %entry.id, "joined upstream: linking to it");
        let stop = shutdown.child_token();
        self.joined.insert(
            d.tls_key,
            Joined {
                id: entry.id.clone(),
                expires: d.expires,
                stop: stop.clone(),
            },
        );
        Change::Link(entry, stop)
    }

    /// Stops using the upstreams whose descriptors lapsed by `now`.
    pub(crate) fn expire(&mut self, now: u64) {
        self.joined.retain(|_, j| {
            let keep = j.expires > now;
            if !keep {
                info!(upstream = %j.id, "joined upstream's descriptor lapsed: no longer used");
                j.stop.cancel();
            }
            keep
        });
    }

    /// Joined upstreams in use.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.joined.len()
    }
}

/// Follows the descriptors the sessions pass on until shutdown, linking to each new
/// upstream with `link`; `in_use` hears how many joined upstreams are in use.
pub(crate) async fn follow(
    mut joined: JoinedUpstreams,
    mut descriptors: mpsc::Receiver<Vec<u8>>,
    link: impl Fn(NodeEntry, CancellationToken),
    in_use: impl Fn(usize),
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => joined.expire(braid_driver::unix_now()),
            d = descriptors.recv() => {
                let Some(d) = d else { return };
                if let Change::Link(entry, stop) = joined.take(&d, braid_driver::unix_now(), &shutdown) {
                    link(entry, stop);
                }
            }
        }
        in_use(joined.joined.len());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use braid_proto::credential::SigningKey;
    use braid_proto::join::JoinCredential;

    fn setup() -> (Arc<Directory>, SigningKey, Vec<u8>, SigningKey) {
        let op = SigningKey::from_seed(&[1; 32]);
        let mut dir = Directory::new(1024, Vec::new());
        dir.operator_key = Some(op.public());
        let join = SigningKey::from_seed(&[2; 32]);
        let cred = JoinCredential {
            id: [3; 16],
            role: Role::Upstream.code(),
            single_use: false,
            not_before: 0,
            not_after: 10_000,
            join_key: join.public(),
        }
        .issue(&op);
        (Arc::new(dir), op, cred, join)
    }

    fn descriptor(cred: &[u8], join: &SigningKey, key: u8, published: u64, life: u64) -> Vec<u8> {
        Descriptor {
            id: "upstream-9".into(),
            role: Role::Upstream.code(),
            addr: Some(([127, 0, 0, 9], 7100).into()),
            noise_key: [key; 32],
            tls_key: [key; 32],
            published,
            expires: published + life,
        }
        .sign(cred, join)
        .unwrap()
    }

    #[test]
    fn a_new_upstream_is_linked_refreshed_and_dropped_when_leaving_or_lapsed() {
        let (dir, _, cred, join) = setup();
        let shutdown = CancellationToken::new();
        let mut j = JoinedUpstreams::new(dir, 4);
        let Change::Link(entry, stop) =
            j.take(&descriptor(&cred, &join, 7, 100, 60), 100, &shutdown)
        else {
            panic!("not linked")
        };
        assert_eq!(entry.id, "upstream-9");
        // A refresh links nothing new and extends the life.
        assert!(matches!(
            j.take(&descriptor(&cred, &join, 7, 130, 60), 130, &shutdown),
            Change::Nothing
        ));
        j.expire(170);
        assert!(!stop.is_cancelled(), "refreshed until 190");
        // Key rotation: the same id with a new key is a second link.
        let Change::Link(_, stop2) = j.take(&descriptor(&cred, &join, 8, 130, 60), 130, &shutdown)
        else {
            panic!("rotated key not linked")
        };
        // The old key says it is leaving: its link stops at once, the new one stays.
        assert!(matches!(
            j.take(&descriptor(&cred, &join, 7, 140, 3), 140, &shutdown),
            Change::Nothing
        ));
        assert!(stop.is_cancelled());
        assert!(!stop2.is_cancelled());
        j.expire(190);
        assert!(stop2.is_cancelled(), "lapsed");
        assert_eq!(j.len(), 0);
    }

    #[test]
    fn descriptors_the_operator_did_not_vouch_for_are_ignored() {
        let (dir, _, _, join) = setup();
        let other = SigningKey::from_seed(&[9; 32]);
        let forged = JoinCredential {
            id: [3; 16],
            role: Role::Upstream.code(),
            single_use: false,
            not_before: 0,
            not_after: 10_000,
            join_key: join.public(),
        }
        .issue(&other);
        let shutdown = CancellationToken::new();
        let mut j = JoinedUpstreams::new(dir, 4);
        assert!(matches!(
            j.take(&descriptor(&forged, &join, 7, 100, 60), 100, &shutdown),
            Change::Nothing
        ));
        assert!(matches!(
            j.take(b"garbage", 100, &shutdown),
            Change::Nothing
        ));
        assert_eq!(j.len(), 0);
    }

    #[test]
    fn no_more_than_max_joined_upstreams_are_used() {
        let (dir, _, cred, join) = setup();
        let shutdown = CancellationToken::new();
        let mut j = JoinedUpstreams::new(dir, 2);
        for key in 1..=5u8 {
            let _ = j.take(&descriptor(&cred, &join, key, 100, 60), 100, &shutdown);
        }
        assert_eq!(j.len(), 2);
    }
}
