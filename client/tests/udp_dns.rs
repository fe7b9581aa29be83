//! UDP and DNS through the overlay: a Python SOCKS5 UDP client (DNS to a local server,
//! 1,000 echoed datagrams, a forbidden destination, a fragment, a stranger), and `dig`
//! against the client's DNS port resolving a name only the gateway knows.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Output};

use braid_client::demo::{Demo, DemoOptions};
use braid_config::{ExitRule, PortRange, Role};
use braid_driver::Metrics;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

fn opts() -> DemoOptions {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        ..DemoOptions::default()
    }
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("the program is installed"))
        .await
        .unwrap()
}

fn gateway_metric(demo: &Demo, f: impl Fn(&Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    demo.nodes
        .iter()
        .filter(|n| n.role == Role::Gateway)
        .map(|n| Metrics::get(f(&n.metrics)))
        .sum()
}

/// A UDP echo server on loopback.
async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A DNS server on loopback answering every A question with 192.0.2.77 (hickory-proto
/// messages, as a real server would send).
async fn dns_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut r = Message::new();
            r.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::NoError);
            for question in q.queries() {
                r.add_query(question.clone());
                if question.query_type() == RecordType::A {
                    r.add_answer(Record::from_rdata(
                        question.name().clone(),
                        300,
                        RData::A(A(Ipv4Addr::new(192, 0, 2, 77))),
                    ));
                }
            }
            let _ = s.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    addr
}

const SOCKS_UDP_CLIENT: &str = r#"
import socket, struct, sys, time, random

proxy_host, proxy_port = sys.argv[1], int(sys.argv[2])
echo = ("127.0.0.1", int(sys.argv[3]))
dns = ("127.0.0.1", int(sys.argv[4]))
forbidden = ("127.0.0.1", int(sys.argv[5]))

ctl = socket.create_connection((proxy_host, proxy_port))
ctl.sendall(b"\x05\x01\x00")
assert ctl.recv(2) == b"\x05\x00"
ctl.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
rep = ctl.recv(10)
assert rep[:2] == b"\x05\x00", rep
relay = (socket.inet_ntoa(rep[4:8]), struct.unpack(">H", rep[8:10])[0])

u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)

def header(addr, frag=0):
    return b"\x00\x00" + bytes([frag]) + b"\x01" + socket.inet_aton(addr[0]) + struct.pack(">H", addr[1])

def exchange(addr, payload, tries=3):
    for _ in range(tries):
        u.sendto(header(addr) + payload, relay)
        try:
            data, _ = u.recvfrom(70000)
        except socket.timeout:
            continue
        assert data[:3] == b"\x00\x00\x00", data[:10]
        assert data[3] == 1 and socket.inet_ntoa(data[4:8]) == addr[0], data[:10]
        assert struct.unpack(">H", data[8:10])[0] == addr[1]
        return data[10:]
    return None

# A DNS query for example.com A, answered by the local server.
query = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack(">HH", 1, 1)
t0 = time.monotonic()
answer = exchange(dns, query)
dns_ms = (time.monotonic() - t0) * 1000
assert answer is not None, "no DNS answer"
assert answer[:2] == b"\x42\x42" and answer[-4:] == bytes([192, 0, 2, 77]), answer
print(f"dns_ms {dns_ms:.2f}")

# 1,000 datagrams of varied sizes, each echoed intact.
rng = random.Random(7)
rtts = []
for i in range(1000):
    size = rng.choice([1, 2, 17, 100, 512, 1200, 1400, 4000, 8192, 16000, 30000])
    payload = struct.pack(">I", i) + bytes(rng.getrandbits(8) for _ in range(size - 4)) if size >= 4 else bytes([i % 256] * size)
    t = time.monotonic()
    got = exchange(echo, payload)
    rtts.append((time.monotonic() - t) * 1000)
    assert got == payload, f"datagram {i} ({size} bytes) came back {None if got is None else len(got)} bytes"
rtts.sort()
print(f"echo_ok 1000 p50_ms {rtts[500]:.2f} p99_ms {rtts[990]:.2f}")

# A fragment and a forbidden destination: nothing comes back.
u.sendto(header(echo, frag=1) + b"fragment", relay)
u.sendto(header(forbidden) + b"forbidden", relay)
u.settimeout(1)
try:
    data, _ = u.recvfrom(70000)
    print("unexpected", data)
    sys.exit(1)
except socket.timeout:
    pass

# A stranger (another socket) is not relayed.
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.sendto(header(echo) + b"stranger", relay)
try:
    s.recvfrom(100)
    print("stranger answered")
    sys.exit(1)
except socket.timeout:
    pass
print("done")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_udp_associate_carries_dns_and_1000_echoes_and_drops_what_it_must() {
    let echo = udp_echo().await;
    let dns = dns_server().await;
    let forbidden = braid_testkit::free_port(IpAddr::V4(Ipv4Addr::LOCALHOST), true);
    let mut o = opts();
    o.exit_rules = vec![ExitRule::deny().ports(PortRange::single(forbidden))];
    let demo = Demo::start(o).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("udp_client.py");
    std::fs::write(&script, SOCKS_UDP_CLIENT).unwrap();
    let out = run({
        let mut c = Command::new("python3");
        c.arg(&script)
            .arg(demo.socks.ip().to_string())
            .arg(demo.socks.port().to_string())
            .arg(echo.port().to_string())
            .arg(dns.port().to_string())
            .arg(forbidden.to_string());
        c
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("echo_ok 1000") && stdout.ends_with("done\n"));
    let refused = gateway_metric(&demo, |m| &m.datagrams_refused);
    assert!(
        refused >= 1,
        "the forbidden datagram is counted at the gateway"
    );
    let dropped = Metrics::get(&demo.client.metrics.datagrams_dropped);
    assert!(
        dropped >= 2,
        "the fragment and the stranger are counted at the client ({dropped})"
    );
    assert!(gateway_metric(&demo, |m| &m.datagrams_sent) >= 1001);
    demo.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_resolves_through_the_gateway_with_clipped_ttls_and_policy() {
    let mut o = opts();
    o.dns = Some("127.0.0.1:0".parse().unwrap());
    o.hosts = BTreeMap::from([
        (
            "only-the-gateway.braid.test".to_owned(),
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 42)),
        ),
        (
            "private.braid.test".to_owned(),
            IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7)),
        ),
    ]);
    o.tune_gateway = Some(std::sync::Arc::new(|g| g.dns_ttl_secs = 30));
    o.dns_limits.tcp_idle = std::time::Duration::from_secs(1);
    o.dns_limits.max_inflight = 1;
    let demo = Demo::start(o).await.unwrap();
    let port = demo.dns.unwrap().port().to_string();
    // A DNS-over-TCP connection that sends nothing is closed after dns_tcp_idle_secs.
    {
        use tokio::io::AsyncReadExt;
        let mut idle = tokio::net::TcpStream::connect(demo.dns.unwrap())
            .await
            .unwrap();
        let t = std::time::Instant::now();
        // dns_max_inflight (1) TCP connections at once: a second is closed at once.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut second = tokio::net::TcpStream::connect(demo.dns.unwrap())
            .await
            .unwrap();
        let mut c = [0u8; 4];
        let n = tokio::time::timeout(std::time::Duration::from_millis(500), second.read(&mut c))
            .await
            .expect("closed at once, not at the idle timeout")
            .unwrap_or(0);
        assert_eq!(n, 0);
        let mut b = [0u8; 4];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), idle.read(&mut b))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }
    let dig = |args: &[&str]| {
        let mut c = Command::new("dig");
        c.args(["@127.0.0.1", "-p", &port, "+tries=1", "+time=10"])
            .args(args);
        c
    };
    for transport in ["+notcp", "+tcp"] {
        let out = run(dig(&[
            transport,
            "+noall",
            "+answer",
            "only-the-gateway.braid.test",
            "A",
        ]))
        .await;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{transport}: {text}");
        assert!(out.status.success());
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "only-the-gateway.braid.test.",
                "30",
                "IN",
                "A",
                "127.0.0.42"
            ],
            "{transport}: the gateway's answer, TTL clipped to dns_ttl_secs"
        );
    }
    // A private address for a name is left out by the exit policy: REFUSED.
    let out = run(dig(&["private.braid.test", "A"])).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("status: REFUSED"), "{text}");
    assert!(!text.contains("10.9.8.7"), "{text}");
    // A name nobody can resolve: NXDOMAIN, decided at the gateway.
    let out = run(dig(&["no-such-name.invalid", "A"])).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("status: NXDOMAIN"), "{text}");
    // A response (QR set) is not answered: resolvers must not ping-pong.
    let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut response = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
    response.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
    u.send_to(&response, demo.dns.unwrap()).await.unwrap();
    let mut b = [0u8; 512];
    let got = tokio::time::timeout(std::time::Duration::from_secs(1), u.recv_from(&mut b)).await;
    assert!(got.is_err(), "a response got an answer");
    // Other types are not served.
    let out = run(dig(&["only-the-gateway.braid.test", "MX"])).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("status: NOTIMP"));
    assert!(gateway_metric(&demo, |m| &m.dns_queries) >= 5);
    demo.shutdown().await;
}

/// SOCKS5 UDP ASSOCIATE by hand: the control connection and the relay address.
async fn associate(proxy: SocketAddr) -> (tokio::net::TcpStream, SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ctl = tokio::net::TcpStream::connect(proxy).await.unwrap();
    ctl.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut rep = [0u8; 12];
    ctl.read_exact(&mut rep).await.unwrap();
    assert_eq!(
        &rep[..4],
        &[5, 0, 5, 0],
        "greeting and association accepted"
    );
    let relay = SocketAddr::from((
        [rep[6], rep[7], rep[8], rep[9]],
        u16::from_be_bytes([rep[10], rep[11]]),
    ));
    (ctl, relay)
}

/// One datagram to `to` through the relay; the reply's payload, if one came within 1 s.
async fn through(
    u: &UdpSocket,
    relay: SocketAddr,
    to: SocketAddr,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let TargetAddrV4(ip, port) = TargetAddrV4::of(to);
    let mut d = vec![0, 0, 0, 1];
    d.extend_from_slice(&ip);
    d.extend_from_slice(&port.to_be_bytes());
    d.extend_from_slice(payload);
    u.send_to(&d, relay).await.unwrap();
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(std::time::Duration::from_secs(1), u.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[10..n].to_vec()),
        _ => None,
    }
}

struct TargetAddrV4([u8; 4], u16);

impl TargetAddrV4 {
    fn of(a: SocketAddr) -> Self {
        match a {
            SocketAddr::V4(v4) => TargetAddrV4(v4.ip().octets(), v4.port()),
            SocketAddr::V6(_) => panic!("IPv4 only here"),
        }
    }
}

/// An association ends with its control connection, after `udp_idle` on the client, and
/// after `udp_idle_secs` on the gateway; each time the app's control connection is closed
/// and the relay port answers no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn associations_end_with_their_control_connection_and_when_idle() {
    use tokio::io::AsyncReadExt;
    let echo = udp_echo().await;
    let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let started = std::time::Instant::now();

    // 1. The app closes its control connection: the relay port goes quiet.
    let mut o = opts();
    o.tune_gateway = Some(std::sync::Arc::new(|g| g.udp_idle_secs = 2));
    o.socks_limits.udp_idle = std::time::Duration::from_secs(60);
    let demo = Demo::start(o).await.unwrap();
    let (ctl, relay) = associate(demo.socks).await;
    assert_eq!(
        through(&u, relay, echo, b"one").await.as_deref(),
        Some(&b"one"[..])
    );
    drop(ctl);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        through(&u, relay, echo, b"two").await,
        None,
        "gone with its control connection"
    );

    // 2. The gateway's udp_idle_secs (2 s) ends it: the client closes the control connection.
    let (mut ctl, relay) = associate(demo.socks).await;
    assert!(through(&u, relay, echo, b"three").await.is_some());
    let t = std::time::Instant::now();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), ctl.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "control connection closed");
    let waited = t.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "not before the gateway's idle: {waited:?}"
    );
    demo.shutdown().await;

    // 3. The client's udp_idle (1 s) ends it.
    let mut o = opts();
    o.socks_limits.udp_idle = std::time::Duration::from_secs(1);
    let demo = Demo::start(o).await.unwrap();
    let (mut ctl, relay) = associate(demo.socks).await;
    assert!(through(&u, relay, echo, b"four").await.is_some());
    let t = std::time::Instant::now();
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), ctl.read(&mut b))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(through(&u, relay, echo, b"five").await, None);
    eprintln!("association lifetimes checked in {:?}", started.elapsed());
    demo.shutdown().await;
}

/// The REP of a UDP ASSOCIATE, and the control connection.
async fn associate_rep(proxy: SocketAddr) -> (u8, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ctl = tokio::net::TcpStream::connect(proxy).await.unwrap();
    ctl.write_all(&[5, 1, 0, 5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let mut rep = [0u8; 12];
    ctl.read_exact(&mut rep).await.unwrap();
    (rep[3], ctl)
}

/// `max_udp_associations` on the client and on the gateway: one past either is refused
/// with REP 01, and a closed one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_associations_are_capped_on_both_ends() {
    let echo = udp_echo().await;
    let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // The client's cap.
    let mut o = opts();
    o.socks_limits.udp_slots = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
    let demo = Demo::start(o).await.unwrap();
    let (rep, first) = associate_rep(demo.socks).await;
    assert_eq!(rep, 0);
    let (rep, _) = associate_rep(demo.socks).await;
    assert_eq!(rep, 1, "over the client's max_udp_associations");
    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (ctl, relay) = associate(demo.socks).await;
    assert!(through(&u, relay, echo, b"room again").await.is_some());
    drop(ctl);
    demo.shutdown().await;

    // The gateway's cap.
    let mut o = opts();
    o.tune_gateway = Some(std::sync::Arc::new(|g| g.max_udp_associations = 1));
    let demo = Demo::start(o).await.unwrap();
    let (rep, first) = associate_rep(demo.socks).await;
    assert_eq!(rep, 0);
    let refused = gateway_metric(&demo, |m| &m.streams_refused);
    let (rep, _) = associate_rep(demo.socks).await;
    assert_eq!(
        rep, 1,
        "over the gateway's max_udp_associations (resource_limit)"
    );
    assert_eq!(gateway_metric(&demo, |m| &m.streams_refused), refused + 1);
    drop(first);
    // The gateway frees the place once the association's stream ends.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (rep, ctl) = associate_rep(demo.socks).await;
        if rep == 0 {
            drop(ctl);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never freed the place"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    demo.shutdown().await;
}
