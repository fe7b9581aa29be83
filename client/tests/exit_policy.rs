//! The exit policy, end to end: raw SOCKS5 CONNECTs through a real overlay, each test run
//! inside a fresh network namespace that has only loopback (see `support/netns.rs`).
//!
//! In there, an address the policy fails to refuse cannot be reached at all: 10.0.0.1 and
//! 169.254.169.254 give "network unreachable" (reply 0x03), and loopback targets are
//! listeners the test owns and counts. So "not allowed" (0x02) with no accepted
//! connection means the policy refused before any packet was sent; a positive control in
//! the same namespace shows the path works (0x00, connection accepted) and that an
//! unrefused internal address really does come back 0x03.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use braid_testkit as support;
use support::socks::{connect_request, Dest};

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_client::demo::{Demo, DemoOptions};
use braid_config::{Cidr, ExitRule, PortRange};
use support::netns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const OK: u8 = 0x00;
const NOT_ALLOWED: u8 = 0x02;
const NETWORK_UNREACHABLE: u8 = 0x03;

fn reply_name(code: u8) -> &'static str {
    match code {
        0 => "succeeded",
        1 => "general failure",
        2 => "not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        _ => "other",
    }
}

fn addr(ip: impl Into<IpAddr>, port: u16) -> Dest {
    Dest::Addr(SocketAddr::new(ip.into(), port))
}

fn name(n: &str, port: u16) -> Dest {
    Dest::Name(n.to_owned(), port)
}

/// One SOCKS5 CONNECT written by hand; returns the reply code (REP).
async fn socks_connect(proxy: SocketAddr, dest: &Dest) -> u8 {
    let attempt = async {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(&[5, 1, 0]).await.unwrap();
        let mut m = [0u8; 2];
        s.read_exact(&mut m).await.unwrap();
        assert_eq!(m, [5, 0], "method selection");
        s.write_all(&connect_request(dest)).await.unwrap();
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], 5, "reply version");
        head[1]
    };
    tokio::time::timeout(Duration::from_secs(40), attempt)
        .await
        .unwrap_or_else(|_| panic!("no SOCKS reply for {dest} within 40 s"))
}

/// A TCP listener that counts the connections it accepts.
struct Trap {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Trap {
    async fn bind(at: SocketAddr) -> std::io::Result<Trap> {
        let l = TcpListener::bind(at).await?;
        let addr = l.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let n = accepted.clone();
        tokio::spawn(async move {
            while l.accept().await.is_ok() {
                n.fetch_add(1, Ordering::SeqCst);
            }
        });
        Ok(Trap { addr, accepted })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Everything logged at info and above in this process (the client's log included).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        std::io::stderr().write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn capture() -> Log {
        Log::capture_filter("info")
    }

    /// Everything the filter (an `EnvFilter` directive) lets through.
    fn capture_filter(directive: &str) -> Log {
        let log = Log::default();
        let w = log.clone();
        tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new(directive))
            .try_init()
            .expect("one subscriber per process (one test per namespace)");
        log
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Asserts a client log line says the gateway refused `target` with a reason
    /// containing `reason`, and that the reason does not name the address it refused.
    #[track_caller]
    fn assert_refusal(&self, target: &str, reason: &str) {
        let text = self.text();
        let line = text.lines().find(|l| {
            l.contains("gateway refused the stream")
                && l.contains(&format!("target={target} "))
                && l.contains(reason)
        });
        let Some(line) = line else {
            panic!("no client log line says {target} was refused with {reason:?}:\n{text}");
        };
        let said = line.split("reason=").nth(1).unwrap_or_default();
        let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        assert!(!said.contains(host), "the reason names {host}: {line}");
    }
}

/// Runs test `name`'s body inside a fresh network namespace (the test re-runs itself there)
/// on a two-thread runtime, and says how long it took.
fn in_netns<F: Future<Output = ()>>(name: &str, body: impl FnOnce() -> F) {
    if netns::run_in_fresh_netns(name) {
        return;
    }
    let started = Instant::now();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body());
    eprintln!("{name}: {:?}", started.elapsed());
}

/// The demo with destinations in the logs, so that refusals can be matched to targets.
fn opts() -> DemoOptions {
    DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        log_destinations: true,
        ..DemoOptions::default()
    }
}

/// Traps on every node's own address (TCP on the node's UDP port).
async fn node_traps(demo: &Demo) -> Vec<(String, Trap)> {
    let mut traps = Vec::new();
    for n in &demo.nodes {
        traps.push((n.id.clone(), Trap::bind(n.addr).await.unwrap()));
    }
    traps
}

/// Connects to each destination in turn and asserts every reply code.
async fn expect_replies(socks: SocketAddr, cases: &[(Dest, u8)]) {
    let mut wrong = Vec::new();
    for (dest, want) in cases {
        let got = socks_connect(socks, dest).await;
        eprintln!("{dest}: reply {got:#04x} ({})", reply_name(got));
        if got != *want {
            wrong.push(format!(
                "{dest}: got {got:#04x} ({}), want {want:#04x} ({})",
                reply_name(got),
                reply_name(*want)
            ));
        }
    }
    assert!(wrong.is_empty(), "wrong replies:\n  {}", wrong.join("\n  "));
}

/// Lets any connection the gateway might have started land before counting.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

/// With the gateway's default policy (not the demo's), every forbidden target is refused
/// with 0x02 and no connection reaches any of them.
#[test]
fn default_policy_refuses_forbidden_targets() {
    in_netns("default_policy_refuses_forbidden_targets", || async {
        let log = Log::capture();
        let v4 = Trap::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = v4.addr.port();
        let v6 = Trap::bind(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port))
            .await
            .ok();
        let mut hosts = BTreeMap::new();
        hosts.insert("trap.braid.test".to_owned(), IpAddr::from([127, 0, 0, 1]));
        let demo = Demo::start(DemoOptions {
            exit_allow_loopback: false,
            hosts,
            ..opts()
        })
        .await
        .unwrap();
        let nodes = node_traps(&demo).await;

        let lo4 = Ipv4Addr::LOCALHOST;
        let mut cases = vec![
            (addr(lo4, port), NOT_ALLOWED),
            (addr([10, 0, 0, 1], 80), NOT_ALLOWED),
            (addr([169, 254, 169, 254], 80), NOT_ALLOWED),
            (addr(Ipv6Addr::LOCALHOST, port), NOT_ALLOWED),
            (addr(lo4.to_ipv6_mapped(), port), NOT_ALLOWED),
            (addr(Ipv4Addr::UNSPECIFIED, port), NOT_ALLOWED),
            (addr(Ipv6Addr::UNSPECIFIED, port), NOT_ALLOWED),
            (
                addr("fd00:ec2::254".parse::<Ipv6Addr>().unwrap(), 80),
                NOT_ALLOWED,
            ),
            (
                addr("64:ff9b::7f00:1".parse::<Ipv6Addr>().unwrap(), port),
                NOT_ALLOWED,
            ),
            (name("0177.0.0.1", port), NOT_ALLOWED),
            (name("2130706433", port), NOT_ALLOWED),
            (name("0x7f.1", port), NOT_ALLOWED),
            (name("127.0.0.1", port), NOT_ALLOWED),
            (name("localhost", port), NOT_ALLOWED),
            (name("trap.braid.test", port), NOT_ALLOWED),
            (name("169.254.169.254", 80), NOT_ALLOWED),
            (Dest::Addr(demo.socks), NOT_ALLOWED),
            // Special-purpose ranges and Azure's host endpoint (0x03 if not refused).
            (addr([192, 0, 0, 8], 80), NOT_ALLOWED),
            (addr([198, 18, 0, 1], 80), NOT_ALLOWED),
            (addr([198, 19, 255, 254], 80), NOT_ALLOWED),
            (addr([192, 88, 99, 1], 80), NOT_ALLOWED),
            (addr([168, 63, 129, 16], 80), NOT_ALLOWED),
            (
                addr(Ipv4Addr::new(198, 18, 0, 1).to_ipv6_mapped(), 80),
                NOT_ALLOWED,
            ),
        ];
        for n in &demo.nodes {
            cases.push((Dest::Addr(n.addr), NOT_ALLOWED));
        }
        expect_replies(demo.socks, &cases).await;
        settle().await;

        assert_eq!(v4.accepted(), 0, "a connection reached 127.0.0.1:{port}");
        if let Some(v6) = &v6 {
            assert_eq!(v6.accepted(), 0, "a connection reached [::1]:{port}");
        }
        for (id, t) in &nodes {
            assert_eq!(
                t.accepted(),
                0,
                "a connection reached node {id} at {}",
                t.addr
            );
        }
        // The reason reaches the client's log.
        // The reason reaches the client's log, naming the class and never the address.
        log.assert_refusal(&format!("127.0.0.1:{port}"), "destination is loopback");
        log.assert_refusal("10.0.0.1:80", "destination is private (RFC 1918)");
        log.assert_refusal("169.254.169.254:80", "destination is cloud metadata");
        log.assert_refusal(&format!("[::ffff:127.0.0.1]:{port}"), "is loopback");
        log.assert_refusal(&format!("2130706433:{port}"), "destination is loopback");
        log.assert_refusal(&format!("0177.0.0.1:{port}"), "destination is loopback");
        log.assert_refusal("198.18.0.1:80", "benchmarking");
        log.assert_refusal("192.0.0.8:80", "IETF protocol assignments");
        log.assert_refusal("192.88.99.1:80", "6to4 relay");
        log.assert_refusal("168.63.129.16:80", "cloud metadata");
        let text = log.text();
        assert!(
            !text.contains("127.0.0.1 is"),
            "a reason names a resolved address:\n{text}"
        );
        demo.shutdown().await;
    });
}

/// With the demo's own policy (loopback admitted) the path works — the positive control
/// — yet every node of the overlay is still refused, in every form.
#[test]
fn demo_policy_admits_loopback_but_refuses_overlay_nodes() {
    in_netns(
        "demo_policy_admits_loopback_but_refuses_overlay_nodes",
        || async {
            let log = Log::capture();
            let target = Trap::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let mut hosts = BTreeMap::new();
            hosts.insert("trap.braid.test".to_owned(), IpAddr::from([127, 0, 0, 1]));
            // The demo's policy, plus one rule that lets 10/8 through (for the 0x03 control).
            let demo = Demo::start(DemoOptions {
                hosts,
                exit_rules: vec![ExitRule::allow().cidr("10.0.0.0/8".parse::<Cidr>().unwrap())],
                ..opts()
            })
            .await
            .unwrap();
            assert!(
                DemoOptions::default().exit_allow_loopback,
                "the demo admits loopback"
            );
            let nodes = node_traps(&demo).await;
            let port = target.addr.port();

            // Positive control: the overlay reaches a loopback target from inside the netns...
            expect_replies(
                demo.socks,
                &[
                    (addr(Ipv4Addr::LOCALHOST, port), OK),
                    (name("trap.braid.test", port), OK),
                ],
            )
            .await;
            settle().await;
            assert_eq!(target.accepted(), 2, "the control connections arrived");
            // ...and an internal address the policy lets through is unreachable here (0x03):
            // this is what a policy failure would look like for 10.0.0.1 and metadata.
            expect_replies(
                demo.socks,
                &[(addr([10, 0, 0, 1], 80), NETWORK_UNREACHABLE)],
            )
            .await;

            // Every node, by address, IPv4-mapped and NAT64 form, is refused.
            let mut cases = Vec::new();
            for n in &demo.nodes {
                cases.push((Dest::Addr(n.addr), NOT_ALLOWED));
                let IpAddr::V4(v4) = n.addr.ip() else {
                    panic!("demo nodes are on IPv4")
                };
                cases.push((addr(v4.to_ipv6_mapped(), n.addr.port()), NOT_ALLOWED));
                let o = v4.octets();
                let nat64 = Ipv6Addr::new(
                    0x64,
                    0xff9b,
                    0,
                    0,
                    0,
                    0,
                    u16::from_be_bytes([o[0], o[1]]),
                    u16::from_be_bytes([o[2], o[3]]),
                );
                cases.push((addr(nat64, n.addr.port()), NOT_ALLOWED));
                // Any port of a node's address.
                cases.push((addr(v4, port), NOT_ALLOWED));
                // The node's address given as a name.
                cases.push((name(&v4.to_string(), n.addr.port()), NOT_ALLOWED));
            }
            expect_replies(demo.socks, &cases).await;
            settle().await;
            for (id, t) in &nodes {
                assert_eq!(
                    t.accepted(),
                    0,
                    "a connection reached node {id} at {}",
                    t.addr
                );
            }
            for n in &demo.nodes {
                log.assert_refusal(&n.addr.to_string(), "is an overlay node");
            }
            demo.shutdown().await;
        },
    );
}

/// Rules: deny by domain covers subdomains and not look-alikes, deny by port range,
/// allow by CIDR opens an internal range (but not the overlay's nodes inside it).
#[test]
fn rules_deny_by_domain_and_port_and_allow_by_cidr() {
    in_netns(
        "rules_deny_by_domain_and_port_and_allow_by_cidr",
        || async {
            let log = Log::capture();
            let open = Trap::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let closed = Trap::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let v6 = Trap::bind(SocketAddr::new(
                Ipv6Addr::LOCALHOST.into(),
                open.addr.port(),
            ))
            .await
            .ok();
            let (p_open, p_closed) = (open.addr.port(), closed.addr.port());
            let lo = IpAddr::from([127, 0, 0, 1]);
            let hosts: BTreeMap<String, IpAddr> = [
                "blocked.braid.test",
                "www.blocked.braid.test",
                "notblocked.braid.test",
            ]
            .iter()
            .map(|n| (n.to_string(), lo))
            .collect();
            let demo = Demo::start(DemoOptions {
                exit_allow_loopback: false,
                hosts,
                exit_rules: vec![
                    ExitRule::deny().domain("blocked.braid.test"),
                    ExitRule::deny().ports(PortRange::single(p_closed)),
                    ExitRule::allow().cidr("127.0.0.0/8".parse().unwrap()),
                ],
                ..opts()
            })
            .await
            .unwrap();
            let nodes = node_traps(&demo).await;
            let mut cases = vec![
                // allow cidr 127.0.0.0/8 opens loopback, which the default policy refuses.
                (addr(lo, p_open), OK),
                (name("notblocked.braid.test", p_open), OK),
                // deny domain: the domain and its subdomains.
                (name("blocked.braid.test", p_open), NOT_ALLOWED),
                (name("www.blocked.braid.test", p_open), NOT_ALLOWED),
                // deny port, before the allow.
                (addr(lo, p_closed), NOT_ALLOWED),
                // ::1 is not inside the IPv4 CIDR: still loopback, still refused.
                (addr(Ipv6Addr::LOCALHOST, p_open), NOT_ALLOWED),
            ];
            // The CIDR covers the demo's nodes, but nodes are refused whatever the rules.
            for n in &demo.nodes {
                cases.push((Dest::Addr(n.addr), NOT_ALLOWED));
            }
            expect_replies(demo.socks, &cases).await;
            settle().await;
            assert_eq!(open.accepted(), 2, "the two allowed connections arrived");
            assert_eq!(closed.accepted(), 0, "the denied port was reached");
            if let Some(v6) = &v6 {
                assert_eq!(v6.accepted(), 0, "[::1] was reached");
            }
            for (id, t) in &nodes {
                assert_eq!(
                    t.accepted(),
                    0,
                    "a connection reached node {id} at {}",
                    t.addr
                );
            }
            log.assert_refusal(
                &format!("www.blocked.braid.test:{p_open}"),
                "refused by rule 0",
            );
            log.assert_refusal(&format!("127.0.0.1:{p_closed}"), "refused by rule 1");
            demo.shutdown().await;
        },
    );
}

/// Runs `ip ARGS` inside the namespace the test runs in.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The gateway binds 0.0.0.0 in production and has no address in the directory: it
/// learns its host's interface addresses (here on a veth interface, as an eth0 would
/// carry them) and refuses them in every form, also one added while it runs.
#[test]
fn the_gateways_own_addresses_are_refused() {
    in_netns("the_gateways_own_addresses_are_refused", || async {
        let log = Log::capture();
        ip(&[
            "link", "add", "braid0", "type", "veth", "peer", "name", "braid1",
        ]);
        ip(&["addr", "add", "203.0.113.7/32", "dev", "braid0"]);
        ip(&["link", "set", "braid0", "up"]);
        ip(&["link", "set", "braid1", "up"]);
        let own = Ipv4Addr::new(203, 0, 113, 7);
        let trap = Trap::bind(SocketAddr::new(own.into(), 0)).await.unwrap();
        let control = Trap::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = trap.addr.port();
        let mut hosts = BTreeMap::new();
        hosts.insert("me.braid.test".to_owned(), IpAddr::from(own));
        let demo = Demo::start(DemoOptions {
            hosts,
            // A public address is allowed by default: only the gateway's own are refused.
            exit_rules: vec![],
            tune_gateway: Some(Arc::new(|g| g.local_addrs_refresh_secs = 1)),
            ..opts()
        })
        .await
        .unwrap();
        let o = own.octets();
        let nat64 = Ipv6Addr::new(
            0x64,
            0xff9b,
            0,
            0,
            0,
            0,
            u16::from_be_bytes([o[0], o[1]]),
            u16::from_be_bytes([o[2], o[3]]),
        );
        expect_replies(
            demo.socks,
            &[
                (addr(Ipv4Addr::LOCALHOST, control.addr.port()), OK),
                (addr(own, port), NOT_ALLOWED),
                (addr(own.to_ipv6_mapped(), port), NOT_ALLOWED),
                (addr(nat64, port), NOT_ALLOWED),
                (name("me.braid.test", port), NOT_ALLOWED),
                (name("203.0.113.7", port), NOT_ALLOWED),
            ],
        )
        .await;
        // An address added while the gateway runs is refused after the next re-read.
        ip(&["addr", "add", "203.0.113.8/32", "dev", "braid0"]);
        let later = Trap::bind("203.0.113.8:0".parse().unwrap()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        expect_replies(demo.socks, &[(Dest::Addr(later.addr), NOT_ALLOWED)]).await;
        settle().await;
        assert_eq!(control.accepted(), 1, "the control connection arrived");
        assert_eq!(
            trap.accepted(),
            0,
            "a connection reached the gateway's own address"
        );
        assert_eq!(
            later.accepted(),
            0,
            "a connection reached the added address"
        );
        log.assert_refusal(&format!("203.0.113.7:{port}"), "the gateway's own address");
        demo.shutdown().await;
    });
}

/// SMTP (25), SMTPS (465) and submission (587) are refused by default, also where the
/// address is allowed (loopback here); an allow rule that names the port opens it.
#[test]
fn mail_ports_are_refused_unless_an_allow_rule_names_them() {
    in_netns(
        "mail_ports_are_refused_unless_an_allow_rule_names_them",
        || async {
            let log = Log::capture();
            let lo = Ipv4Addr::LOCALHOST;
            let smtp = Trap::bind(SocketAddr::new(lo.into(), 25)).await.unwrap();
            let smtps = Trap::bind(SocketAddr::new(lo.into(), 465)).await.unwrap();
            let submission = Trap::bind(SocketAddr::new(lo.into(), 587)).await.unwrap();
            let mut hosts = BTreeMap::new();
            hosts.insert("mail.braid.test".to_owned(), IpAddr::from(lo));
            let demo = Demo::start(DemoOptions {
                hosts,
                exit_rules: vec![ExitRule::allow().ports(PortRange::single(587))],
                ..opts()
            })
            .await
            .unwrap();
            expect_replies(
                demo.socks,
                &[
                    (addr(lo, 25), NOT_ALLOWED),
                    (name("mail.braid.test", 25), NOT_ALLOWED),
                    (addr(lo.to_ipv6_mapped(), 25), NOT_ALLOWED),
                    (addr(lo, 465), NOT_ALLOWED),
                    (addr(lo, 587), OK),
                    (name("mail.braid.test", 587), OK),
                ],
            )
            .await;
            settle().await;
            assert_eq!(smtp.accepted(), 0, "port 25 was reached");
            assert_eq!(smtps.accepted(), 0, "port 465 was reached");
            assert_eq!(submission.accepted(), 2, "the allowed port 587 was reached");
            log.assert_refusal("127.0.0.1:25", "mail port 25 is refused by default");
            demo.shutdown().await;
        },
    );
}

/// A DNS server on 127.0.0.1:53 inside the namespace that reads queries and never answers;
/// it records the names asked.
fn silent_dns() -> Arc<Mutex<Vec<String>>> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:53").unwrap();
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = names.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            // The question's name: labels from byte 12 up to a zero length.
            let mut labels = Vec::new();
            let mut at = 12;
            while at < n && buf[at] != 0 && at + 1 + usize::from(buf[at]) <= n {
                let len = usize::from(buf[at]);
                labels.push(String::from_utf8_lossy(&buf[at + 1..at + 1 + len]).into_owned());
                at += 1 + len;
            }
            seen.lock().unwrap().push(labels.join("."));
        }
    });
    names
}

/// Resolver settings inside the DNS test's namespace: the silent server, one try of 4 s.
const SILENT_RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions timeout:4 attempts:1\n";

/// Names that never resolve cannot take every lookup thread: with `max_dns_lookups = 2`,
/// six opens at once put two names to the (real, system) resolver; the others wait for a
/// slot and are refused at `dns_timeout_ms` (SOCKS 01), the two in a slot time out there
/// too (SOCKS 04), well before the resolver's own 4 s.
#[test]
fn dns_lookups_are_capped_and_bounded() {
    if netns::run_in_fresh_netns_with(
        "dns_lookups_are_capped_and_bounded",
        Some(SILENT_RESOLV_CONF),
    ) {
        return;
    }
    in_netns("dns_lookups_are_capped_and_bounded", || async {
        let _log = Log::capture();
        let asked = silent_dns();
        let demo = Demo::start(DemoOptions {
            tune_gateway: Some(Arc::new(|g| {
                g.max_dns_lookups = 2;
                g.dns_timeout_ms = 1500;
            })),
            ..opts()
        })
        .await
        .unwrap();
        let t0 = Instant::now();
        let opens: Vec<_> = (0..6)
            .map(|i| {
                let socks = demo.socks;
                tokio::spawn(async move {
                    let code =
                        socks_connect(socks, &name(&format!("slow{i}.braid.test"), 80)).await;
                    (code, t0.elapsed())
                })
            })
            .collect();
        let mut codes = Vec::new();
        for o in opens {
            codes.push(o.await.unwrap());
        }
        eprintln!("replies: {codes:?}");
        let slowest = codes.iter().map(|c| c.1).max().unwrap();
        assert!(
            slowest < Duration::from_millis(3500),
            "an open waited {slowest:?}"
        );
        let count = |code: u8| codes.iter().filter(|c| c.0 == code).count();
        assert_eq!((count(0x04), count(0x01)), (2, 4), "{codes:?}");
        let names: std::collections::BTreeSet<String> =
            asked.lock().unwrap().iter().cloned().collect();
        assert_eq!(names.len(), 2, "names sent to the resolver: {names:?}");
        demo.shutdown().await;
    });
}

/// By default neither the client's nor the gateway's log names a destination: no host
/// name, no address, in refusals (info, client) or in the gateway's debug lines.
#[test]
fn destinations_stay_out_of_the_logs_by_default() {
    in_netns("destinations_stay_out_of_the_logs_by_default", || async {
        let log =
            Log::capture_filter("info,braid_node=debug,braid_client=debug,braid_driver=debug");
        let target = Trap::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let port = target.addr.port();
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "secret-ok.braid.test".to_owned(),
            IpAddr::from([127, 0, 0, 1]),
        );
        hosts.insert(
            "secret-meta.braid.test".to_owned(),
            IpAddr::from([169, 254, 169, 254]),
        );
        let demo = Demo::start(DemoOptions {
            hosts,
            exit_rules: vec![ExitRule::deny().domain("secret-blocked.braid.test")],
            log_destinations: false,
            ..opts()
        })
        .await
        .unwrap();
        expect_replies(
            demo.socks,
            &[
                (name("secret-ok.braid.test", port), OK),
                (name("secret-meta.braid.test", 80), NOT_ALLOWED),
                (name("www.secret-blocked.braid.test", 80), NOT_ALLOWED),
                (addr([10, 0, 0, 1], 80), NOT_ALLOWED),
                (addr([10, 0, 0, 1], 25), NOT_ALLOWED),
            ],
        )
        .await;
        settle().await;
        demo.shutdown().await;
        let text = log.text();
        let refusals = text
            .lines()
            .filter(|l| l.contains("gateway refused the stream"))
            .count();
        let gateway = text
            .lines()
            .filter(|l| l.contains("stream refused"))
            .count();
        assert!(
            refusals >= 4 && gateway >= 4,
            "the refusals were not logged:\n{text}"
        );
        assert!(text.contains("target=[redacted]:80"), "{text}");
        for secret in ["secret-", "169.254.169.254", "10.0.0.1"] {
            assert!(!text.contains(secret), "the log names {secret}:\n{text}");
        }
    });
}
