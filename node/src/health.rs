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

/// The `/health` answer: status line and JSON body.
pub fn response(result: Result<(), &'static str>) -> (&'static str, String) {
    match result {
        Ok(()) => ("200 OK", "{\"status\":\"ok\"}\n".to_string()),
        Err(why) => (
            "503 Service Unavailable",
            format!("{{\"status\":\"unavailable\",\"reason\":\"{why}\"}}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_needs_its_links_and_no_drain() {
        let m = Metrics::default();
        assert_eq!(check(Role::Relay, &m, false), Ok(()));
        assert_eq!(check(Role::Relay, &m, true), Err("draining"));
        for role in [Role::Upstream, Role::Downstream, Role::Gateway] {
            assert_eq!(check(role, &m, false), Err("no central linked"));
        }
        Metrics::inc(&m.links_up);
        assert_eq!(check(Role::Gateway, &m, false), Ok(()));
        assert_eq!(check(Role::Central, &m, false), Err("no downstream linked"));
        Metrics::inc(&m.downstreams_up);
        assert_eq!(check(Role::Central, &m, false), Err("no gateway linked"));
        Metrics::inc(&m.gateways_up);
        assert_eq!(check(Role::Central, &m, false), Ok(()));
        assert_eq!(check(Role::Central, &m, true), Err("draining"));
        let (status, body) = response(Err("no gateway linked"));
        assert!(status.starts_with("503"));
        assert_eq!(
            body,
            "{\"status\":\"unavailable\",\"reason\":\"no gateway linked\"}\n"
        );
    }
}
