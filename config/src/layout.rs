//! The node set of a generated overlay (the demo, test overlays): how many nodes of each
//! role, named `<role>-<n>` in the order the directory lists them.

use crate::directory::Role;

/// How many nodes of each role an overlay has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub upstreams: usize,
    pub centrals: usize,
    pub downstreams: usize,
    pub relays: usize,
    pub gateways: usize,
}

impl Default for Layout {
    /// The seven-server minimum: 2 upstreams, a central, 2 downstreams, a relay, a gateway.
    fn default() -> Self {
        Layout {
            upstreams: 2,
            centrals: 1,
            downstreams: 2,
            relays: 1,
            gateways: 1,
        }
    }
}

impl Layout {
    /// Every node's id and role: upstreams, centrals, downstreams, relays, gateways.
    pub fn nodes(&self) -> Vec<(String, Role)> {
        [
            (Role::Upstream, self.upstreams),
            (Role::Central, self.centrals),
            (Role::Downstream, self.downstreams),
            (Role::Relay, self.relays),
            (Role::Gateway, self.gateways),
        ]
        .into_iter()
        .flat_map(|(role, n)| (1..=n).map(move |i| (format!("{}-{i}", role.as_str()), role)))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_by_role_in_directory_order() {
        let ids: Vec<String> = Layout::default()
            .nodes()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            ids,
            [
                "upstream-1",
                "upstream-2",
                "central-1",
                "downstream-1",
                "downstream-2",
                "relay-1",
                "gateway-1"
            ]
        );
    }
}
