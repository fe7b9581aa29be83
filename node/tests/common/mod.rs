//! What the node integration tests share: a directory with one node of each role
//! (`<role>-1`, fresh identities) and the context of the node under test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use braid_config::{Directory, NodeEntry, Role};
use braid_driver::Metrics;
use braid_net::NodeIdentity;
use braid_node::NodeContext;
use tokio_util::sync::CancellationToken;

pub const ROLES: [Role; 5] = [
    Role::Central,
    Role::Upstream,
    Role::Downstream,
    Role::Relay,
    Role::Gateway,
];

/// A free UDP address on `ip` (bound and released: good enough for a test).
pub fn free_udp(ip: [u8; 4]) -> SocketAddr {
    std::net::UdpSocket::bind(SocketAddr::from((ip, 0)))
        .unwrap()
        .local_addr()
        .unwrap()
}

/// One node of each role; the roles in `listening` have an address on `subnet.*`.
pub struct TestNet {
    pub directory: Arc<Directory>,
    ids: HashMap<Role, NodeIdentity>,
    addrs: HashMap<Role, SocketAddr>,
}

impl TestNet {
    pub fn new(cell_size: u32, subnet: [u8; 3], listening: &[Role]) -> Self {
        let mut rng = rand::rng();
        let mut ids = HashMap::new();
        let mut addrs = HashMap::new();
        let mut entries = Vec::new();
        for (i, role) in ROLES.into_iter().enumerate() {
            let id = NodeIdentity::generate(&mut rng).unwrap();
            let addr = listening
                .contains(&role)
                .then(|| free_udp([subnet[0], subnet[1], subnet[2], 10 + i as u8]));
            entries.push(NodeEntry::new(
                format!("{}-1", role.as_str()),
                role,
                addr,
                id.noise_public(),
                id.tls_public(),
            ));
            if let Some(a) = addr {
                addrs.insert(role, a);
            }
            ids.insert(role, id);
        }
        TestNet {
            directory: Arc::new(Directory::validated(cell_size, entries).unwrap()),
            ids,
            addrs,
        }
    }

    pub fn identity(&self, role: Role) -> &NodeIdentity {
        &self.ids[&role]
    }

    pub fn addr(&self, role: Role) -> SocketAddr {
        self.addrs[&role]
    }

    /// The context of `role`'s node, with fresh metrics and one token for drain and
    /// shutdown.
    pub fn context(&self, role: Role) -> (NodeContext, Arc<Metrics>, CancellationToken) {
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let ctx = NodeContext {
            id: format!("{}-1", role.as_str()),
            identity: self.identity(role).clone(),
            directory: self.directory.clone(),
            metrics: metrics.clone(),
            tap: None,
            drain: stop.clone(),
            shutdown: stop.clone(),
            reloaded: tokio::sync::watch::channel(None).1,
            joiner: None,
        };
        (ctx, metrics, stop)
    }
}
