//! Routing rules on the client: a gateway placed "in a LAN" (its exit allows only the
//! listed internal service and knows `wiki.corp`) is reached for `*.corp` and for one
//! internal address and port. A blocked domain is refused, and a direct rule connects
//! from the laptop, outside the overlay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;

use braid_client::demo::{Demo, DemoOptions};
use braid_config::{ExitRule, Layout, PortRange, RouteRule};
use braid_driver::Metrics;
use braid_testkit::http_origin::{pattern, PyOrigin};
use braid_testkit::socks::{echo, start_echo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn route(domain: Option<&str>, cidr: Option<&str>, port: Option<u16>, via: &str) -> RouteRule {
    RouteRule {
        domain: domain.map(str::to_owned),
        cidr: cidr.map(|c| c.parse().unwrap()),
        ports: port.map(PortRange::single),
        via: via.to_owned(),
    }
}

async fn curl(args: Vec<String>) -> (bool, Vec<u8>, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-sS", "--max-time", "60"])
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn opened(demo: &Demo, id: &str) -> u64 {
    Metrics::get(&demo.node(id).unwrap().metrics.streams_opened)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reach_a_lan_gateway_block_and_go_direct() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let root = tempfile::tempdir().unwrap();
    let wiki = PyOrigin::start(LOCAL, root.path());
    let ssh = start_echo().await;
    let outside = PyOrigin::start(LOCAL, root.path());
    let (wiki_port, ssh_port) = (wiki.addr.port(), ssh.port());
    let mut o = DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        layout: Layout {
            gateways: 2,
            ..Layout::default()
        },
        ..DemoOptions::default()
    };
    // gateway-2 sits "in the LAN": it knows wiki.corp and lets out only the wiki and the
    // ssh service. gateway-1 is an ordinary exit that refuses loopback, as by default.
    o.tune_gateway = Some(Arc::new(move |g| {
        if g.node.id == "gateway-2" {
            g.hosts.insert("wiki.corp".into(), LOCAL);
            g.exit.rules = vec![
                ExitRule::allow()
                    .cidr("127.0.0.1/32".parse().unwrap())
                    .ports(PortRange::single(wiki_port)),
                ExitRule::allow()
                    .cidr("127.0.0.1/32".parse().unwrap())
                    .ports(PortRange::single(ssh_port)),
                ExitRule::deny(),
            ];
        } else {
            g.exit.allow_loopback = false;
        }
    }));
    o.routes = vec![
        route(Some("ads.example"), None, None, "block"),
        route(Some("corp"), None, None, "gateway-2"),
        route(None, Some("127.0.0.1/32"), Some(ssh_port), "gateway-2"),
        route(
            None,
            Some("127.0.0.1/32"),
            Some(outside.addr.port()),
            "direct",
        ),
    ];
    let demo = Demo::start(o).await.unwrap();
    let p = demo.socks;
    assert!(demo.node("gateway-2").is_some(), "two gateways");

    // http://wiki.corp/ by every proxy form: always gateway-2 (gateway-1 could not even
    // resolve the name).
    let url = format!("http://wiki.corp:{wiki_port}/bytes/5000");
    for proxy in [
        format!("socks5h://{p}"),
        format!("http://{p}"),
        format!("socks4a://{p}"),
    ] {
        for _ in 0..5 {
            let (ok, body, err) = curl(vec!["--proxy".into(), proxy.clone(), url.clone()]).await;
            assert!(ok, "{proxy}: {err}");
            assert!(body == pattern(5000), "{proxy}: body");
        }
    }
    let (ok, _, err) = curl(vec![
        "-p".into(),
        "--proxy".into(),
        format!("http://{p}"),
        url.clone(),
    ])
    .await;
    assert!(ok, "CONNECT: {err}");
    assert_eq!(opened(&demo, "gateway-1"), 0, "nothing went to gateway-1");
    let via_lan = opened(&demo, "gateway-2");
    assert!(via_lan >= 16, "{via_lan}");

    // "ssh 127.0.0.1:PORT": an internal address and port, through gateway-2.
    let mut s = braid_testkit::socks::socks_connect(p, ssh).await;
    echo(&mut s, b"SSH-2.0-braid-test\r\n").await;
    drop(s);
    assert_eq!(opened(&demo, "gateway-2"), via_lan + 1);

    // Blocked: SOCKS5 reply 02, HTTP 403, and nothing reaches a gateway.
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    s.write_all(&braid_testkit::socks::connect_domain(b"x.ads.example", 80))
        .await
        .unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(
        &reply[..4],
        &[5, 0, 5, 2],
        "greeting accepted, then 02 not allowed"
    );
    let (_, body, _) = curl(vec![
        "--proxy".into(),
        format!("http://{p}"),
        "-w".into(),
        "%{http_code}".into(),
        "http://ads.example/".into(),
    ])
    .await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.ends_with("403") && text.contains("routing rule 0"),
        "{text}"
    );

    // Direct: from this machine, no gateway involved.
    let before: u64 = ["gateway-1", "gateway-2"]
        .iter()
        .map(|g| opened(&demo, g))
        .sum();
    let direct = format!("http://{}/bytes/100000", outside.addr);
    for proxy in [format!("socks5h://{p}"), format!("http://{p}")] {
        let (ok, body, err) = curl(vec!["--proxy".into(), proxy.clone(), direct.clone()]).await;
        assert!(ok && body == pattern(100_000), "{proxy}: {err}");
    }
    let after: u64 = ["gateway-1", "gateway-2"]
        .iter()
        .map(|g| opened(&demo, g))
        .sum();
    assert_eq!(after, before, "direct streams never reach a gateway");
    // A stream the app pinned to a gateway never leaves from the laptop.
    let (ok, _, err) = curl(vec![
        "--proxy".into(),
        format!("socks5h://gateway-1:x@{p}"),
        direct.clone(),
    ])
    .await;
    assert!(
        !ok && err.contains("(97)"),
        "pinned and direct: refused ({err})"
    );
    demo.shutdown().await;
}
