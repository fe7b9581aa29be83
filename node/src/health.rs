//! Whether a node can do its job now, for `/health`: not draining, and linked to the peers
//! its role needs (a dialing role: at least one central). A load balancer or a deploy
//! script reads 200 or 503 and the reason.

use braid_config::Role;
use braid_driver::Metrics;

/// `Ok` when the node can do its job; otherwise why not.
pub fn check(role: Role, metrics: &Metrics, draining: bool) -> Result<(), &'static str> {
    if draining {
        return Err("draining");
    }
    let up = |gauge: &std::sync::atomic::AtomicU64| Metrics::get(gauge) > 0;
    match role {
        Role::Upstream | Role::Downstream | Role::Gateway if !up(&metrics.links_up) => {
            Err("no central linked")
        }
        Role::Central if !up(&metrics.downstreams_up) => Err("no downstream linked"),
        Role::Central if !up(&metrics.gateways_up) => Err("no gateway linked"),
        _ => Ok(()),
    }
}

/// The `/health` answer: status line and JSON body, `{"ok":true}` or
/// `{"ok":false,"reason":"no central linked"}`. (Reasons are the fixed strings above: no
/// quote or backslash to escape.)
pub fn response(result: Result<(), &'static str>) -> (&'static str, String) {
    match result {
        Ok(()) => ("200 OK", "{\"ok\":true}\n".to_string()),
        Err(why) => (
            "503 Service Unavailable",
            format!("{{\"ok\":false,\"reason\":\"{why}\"}}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node whose role's links are all up and that is not draining.
    fn linked() -> Metrics {
        let m = Metrics::default();
        Metrics::inc(&m.links_up);
        Metrics::inc(&m.downstreams_up);
        Metrics::inc(&m.gateways_up);
        m
    }

    const ROLES: [Role; 5] = [
        Role::Upstream,
        Role::Central,
        Role::Downstream,
        Role::Relay,
        Role::Gateway,
    ];

    #[test]
    fn every_role_is_ok_when_linked_and_says_so_in_json() {
        for role in ROLES {
            assert_eq!(check(role, &linked(), false), Ok(()), "{role}");
        }
        // A relay dials nothing: it needs no link.
        assert_eq!(check(Role::Relay, &Metrics::default(), false), Ok(()));
        assert_eq!(response(Ok(())), ("200 OK", "{\"ok\":true}\n".to_string()));
    }

    #[test]
    fn draining_is_unavailable_for_every_role() {
        for role in ROLES {
            assert_eq!(check(role, &linked(), true), Err("draining"), "{role}");
        }
    }

    #[test]
    fn a_dialing_role_without_a_central_is_unavailable() {
        let m = Metrics::default();
        Metrics::inc(&m.downstreams_up);
        Metrics::inc(&m.gateways_up);
        for role in [Role::Upstream, Role::Downstream, Role::Gateway] {
            assert_eq!(check(role, &m, false), Err("no central linked"), "{role}");
        }
        let (status, body) = response(check(Role::Gateway, &m, false));
        assert_eq!(status, "503 Service Unavailable");
        assert_eq!(body, "{\"ok\":false,\"reason\":\"no central linked\"}\n");
    }

    #[test]
    fn a_central_without_a_downstream_is_unavailable() {
        let m = linked();
        Metrics::dec(&m.downstreams_up);
        assert_eq!(check(Role::Central, &m, false), Err("no downstream linked"));
        let (status, body) = response(check(Role::Central, &m, false));
        assert!(status.starts_with("503"));
        assert_eq!(body, "{\"ok\":false,\"reason\":\"no downstream linked\"}\n");
    }

    #[test]
    fn a_central_without_a_gateway_is_unavailable() {
        let m = linked();
        Metrics::dec(&m.gateways_up);
        assert_eq!(check(Role::Central, &m, false), Err("no gateway linked"));
        let (status, body) = response(check(Role::Central, &m, false));
        assert!(status.starts_with("503"));
        assert_eq!(body, "{\"ok\":false,\"reason\":\"no gateway linked\"}\n");
    }
}
