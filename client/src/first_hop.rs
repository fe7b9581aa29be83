//! The client's side of the first-hop credential check (`braid_proto::credential`): on every
//! connection to an upstream or a relay of a network with an operator key, the first
//! bidirectional stream carries the user's credential and a proof bound to that
//! connection. Refusals are remembered per node and logged once each, with the reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use braid_net::{read_frame, write_frame};
use braid_proto::credential::{
    auth_message, prove, Refusal, SigningKey, PROOF_EXPORTER_LABEL, REFUSAL_CLOSE_BASE,
};
use tokio::sync::watch;
use tracing::{info, warn};

/// What the client presents at first hops.
pub struct Presenter {
    /// The operator-signed credential; empty when the user has none (the node then says
    /// so, and the client logs it).
    credential: Vec<u8>,
    key: SigningKey,
    /// What the client shows its central in the Hello: the stream limit, not the user.
    limits_pass: Vec<u8>,
}

impl Presenter {
    pub fn new(credential: Vec<u8>, user_secret: &[u8; 32], limits_pass: Vec<u8>) -> Self {
        Presenter {
            credential,
            key: SigningKey::from_seed(user_secret),
            limits_pass,
        }
    }

    pub fn limits_pass(&self) -> &[u8] {
        &self.limits_pass
    }

    /// Whether there is a credential to present.
    pub fn has_credential(&self) -> bool {
        !self.credential.is_empty()
    }

    /// The user's rate limit (bytes per second, each way), which the first hops enforce
    /// and the client keeps to; None without one.
    pub fn rate(&self) -> Option<f64> {
        let (c, _) = braid_proto::credential::Credential::parse(&self.credential).ok()?;
        (c.limits.rate_kib > 0).then(|| f64::from(c.limits.rate_kib) * 1024.0)
    }

    /// For a network that wants credentials when the user has none: presents nothing, so
    /// each first hop answers "no credential".
    pub fn none() -> Self {
        Presenter {
            credential: Vec::new(),
            key: SigningKey::from_seed(&[0; 32]),
            limits_pass: Vec::new(),
        }
    }
}

/// Which first hops refused this client, and why.
#[derive(Default)]
pub struct Refusals {
    /// Node → (why, whether it is an upstream).
    by_node: Mutex<HashMap<String, (Refusal, bool)>>,
    /// "upstream-1 refused: credential revoked" while every upstream refuses; None once one
    /// admits the client.
    all_upstreams: watch::Sender<Option<String>>,
    /// The directory's upstreams.
    upstreams: usize,
    /// Upstreams that joined and are in use (they count towards "every upstream").
    joined: std::sync::atomic::AtomicUsize,
}

impl Refusals {
    pub fn new(upstreams: usize) -> Arc<Self> {
        Arc::new(Refusals {
            upstreams,
            ..Refusals::default()
        })
    }

    /// How many joined upstreams the client uses now.
    pub fn set_joined_upstreams(&self, n: usize) {
        self.joined.store(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The refusal of every upstream, while they all refuse.
    pub fn every_upstream(&self) -> watch::Receiver<Option<String>> {
        self.all_upstreams.subscribe()
    }

    fn note(&self, node: &str, upstream: bool, r: Option<Refusal>) {
        let Ok(mut m) = self.by_node.lock() else {
            return;
        };
        let before = m.get(node).map(|e| e.0);
        match r {
            Some(r) => {
                m.insert(node.to_string(), (r, upstream));
                if before != Some(r) {
                    warn!("{node} refused: {r}");
                }
            }
            None => {
                if m.remove(node).is_some() {
                    info!("{node} admitted this client again");
                }
            }
        }
        let refused_upstreams = m.values().filter(|e| e.1).count();
        let upstreams = self.upstreams + self.joined.load(std::sync::atomic::Ordering::Relaxed);
        let line = match r {
            Some(r) if upstream && self.upstreams > 0 && refused_upstreams >= upstreams => {
                Some(format!("{node} refused: {r}"))
            }
            _ if refused_upstreams >= upstreams && self.upstreams > 0 => {
                self.all_upstreams.borrow().clone()
            }
            _ => None,
        };
        self.all_upstreams.send_if_modified(|cur| {
            let changed = *cur != line;
            *cur = line;
            changed
        });
    }
}

/// How a first hop answered.
enum Answer {
    Admitted,
    Refused(Refusal),
    /// The connection went without an answer.
    Lost,
}

/// Presents the credential on `conn` to `node`; false if the node refused (logged) or the
/// connection went. `upstream` says whether `node` is an upstream (every upstream refusing
/// means no stream can work).
pub async fn present(
    conn: &quinn::Connection,
    node: &str,
    upstream: bool,
    presenter: &Presenter,
    refusals: &Refusals,
) -> bool {
    let reply = async {
        let binding = braid_net::link_key(conn, PROOF_EXPORTER_LABEL)?;
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        let msg = auth_message(&presenter.credential, &prove(&presenter.key, &binding));
        write_frame(&mut send, &msg).await.ok()?;
        let mut buf = Vec::new();
        match read_frame(&mut recv, 1, &mut buf).await {
            Ok(true) => buf.first().copied(),
            _ => None,
        }
    };
    let answer = match reply.await {
        Some(0) => Answer::Admitted,
        Some(code) => Answer::Refused(Refusal::from_code(code)),
        // No answer: the close may carry the reason.
        None => match conn.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(c)) => c
                .error_code
                .into_inner()
                .checked_sub(u64::from(REFUSAL_CLOSE_BASE))
                .and_then(|c| u8::try_from(c).ok())
                .filter(|c| *c > 0)
                .map_or(Answer::Lost, |c| Answer::Refused(Refusal::from_code(c))),
            _ => Answer::Lost,
        },
    };
    match answer {
        Answer::Admitted => {
            refusals.note(node, upstream, None);
            true
        }
        Answer::Refused(r) => {
            refusals.note(node, upstream, Some(r));
            false
        }
        Answer::Lost => false,
    }
}
