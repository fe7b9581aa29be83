//! The client's routing rules (`[[route]]`): which destinations go through a named
//! gateway, directly from this machine, or nowhere. The first matching rule decides.
//! Without a match, a stream takes the usual gateway choice. Rules apply to TCP streams
//! (SOCKS CONNECT, HTTP CONNECT and forwarding). UDP datagrams and DNS queries always
//! take the overlay.
//!
//! Names are matched as the app gave them: the laptop resolves nothing to route. A `cidr`
//! rule therefore matches only destinations given as addresses, as in sing-box without
//! its resolve step.

use braid_config::RouteRule;
use braid_proto::TargetAddr;

/// The rules, in order.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    rules: Vec<RouteRule>,
}

impl Routes {
    pub fn new(rules: Vec<RouteRule>) -> Self {
        Routes { rules }
    }

    /// The first rule matching `target`, with its index.
    pub fn decide(&self, target: &TargetAddr) -> Option<(usize, &RouteRule)> {
        let (name, ip) = match target {
            TargetAddr::Ip(a) => (None, Some(a.ip().to_canonical())),
            TargetAddr::Domain(n, _) => (Some(n.as_str()), None),
        };
        self.rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches(name, ip, target.port()))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The gateways the rules name.
    pub fn gateway_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().filter_map(|r| match r.via() {
            braid_config::RouteVia::Gateway(g) => Some(g),
            _ => None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use braid_config::{PortRange, RouteVia};

    fn rule(
        domain: Option<&str>,
        cidr: Option<&str>,
        ports: Option<PortRange>,
        via: &str,
    ) -> RouteRule {
        RouteRule {
            domain: domain.map(str::to_owned),
            cidr: cidr.map(|c| c.parse().unwrap()),
            ports,
            via: via.to_owned(),
        }
    }

    #[test]
    fn first_match_wins_and_matchers_combine() {
        let routes = Routes::new(vec![
            rule(Some("ads.example"), None, None, "block"),
            rule(Some("corp"), None, None, "gateway-lan"),
            rule(
                None,
                Some("10.1.0.0/16"),
                Some(PortRange::single(22)),
                "gateway-lan",
            ),
            rule(None, Some("127.0.0.0/8"), None, "direct"),
        ]);
        let via = |t: TargetAddr| routes.decide(&t).map(|(i, r)| (i, r.via()));
        let d = |n: &str, p| TargetAddr::Domain(n.into(), p);
        let ip = |a: &str| TargetAddr::Ip(a.parse().unwrap());
        assert_eq!(via(d("x.ads.example", 80)), Some((0, RouteVia::Block)));
        assert_eq!(
            via(d("WIKI.Corp.", 80)),
            Some((1, RouteVia::Gateway("gateway-lan")))
        );
        assert_eq!(via(d("notcorp", 80)), None);
        assert_eq!(
            via(ip("10.1.2.3:22")),
            Some((2, RouteVia::Gateway("gateway-lan")))
        );
        assert_eq!(via(ip("10.1.2.3:80")), None, "port must match too");
        assert_eq!(via(ip("[::ffff:127.0.0.5]:9")), Some((3, RouteVia::Direct)));
        assert_eq!(
            via(d("localhost", 80)),
            None,
            "names are not resolved to match a cidr"
        );
        assert!(Routes::default().decide(&ip("1.2.3.4:5")).is_none());
    }
}
