//! Headless Chromium through the mixed port, as an HTTP proxy and then as a SOCKS5 proxy:
//! a local page with subresources (script, stylesheet, image), a `fetch()` and a
//! WebSocket loads whole, and a screenshot of it is kept
//! (`target/chromium-<form>.png`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use braid_client::demo::{Demo, DemoOptions};
use braid_testkit::http_origin::PyOrigin;

const PAGE: &str = r#"<!DOCTYPE html>
<html><head><title>braid page</title>
<link rel="stylesheet" href="/style.css">
<script src="/app.js"></script>
</head>
<body>
<h1 id="banner">Braid through Chromium</h1>
<img id="logo" src="/logo.svg" width="200" height="100" onload="mark('img ok')">
<ul id="result"></ul>
<script>
function mark(text) {
  const li = document.createElement('li');
  li.textContent = text;
  document.getElementById('result').appendChild(li);
}
mark(typeof fromScript === 'function' ? fromScript() : 'script missing');
const color = getComputedStyle(document.getElementById('banner')).color;
mark(color === 'rgb(0, 128, 0)' ? 'css ok' : 'css missing ' + color);
fetch('/bytes/1000').then(r => r.arrayBuffer()).then(b => mark('fetch ok ' + b.byteLength));
const ws = new WebSocket('ws://' + location.host + '/ws');
ws.onopen = () => ws.send('hello over braid');
ws.onmessage = (e) => { mark('ws ok ' + e.data); ws.close(); };
ws.onerror = () => mark('ws error');
</script>
</body></html>
"#;

const LOGO: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="200" height="100">
<rect width="200" height="100" fill="#3060c0"/><text x="20" y="60" font-size="32" fill="white">braid</text></svg>
"##;

fn site(root: &Path) {
    std::fs::write(root.join("index.html"), PAGE).unwrap();
    std::fs::write(
        root.join("app.js"),
        "function fromScript() { return 'script ok'; }\n",
    )
    .unwrap();
    std::fs::write(
        root.join("style.css"),
        "#banner { color: rgb(0, 128, 0); }\nbody { background: #f4f0e0; }\n",
    )
    .unwrap();
    std::fs::write(root.join("logo.svg"), LOGO).unwrap();
}

/// Chromium with `proxy` for everything, loopback included.
fn chromium(proxy: &str, profile: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=10000",
        "--window-size=900,700",
    ])
    .arg(format!("--proxy-server={proxy}"))
    // Chromium sends loopback past any proxy unless told otherwise.
    .arg("--proxy-bypass-list=<-loopback>")
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

fn screenshot_path(form: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target")
        .join(format!("chromium-{form}.png"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_loads_a_page_with_fetch_and_websocket_through_both_proxy_forms() {
    assert!(
        Command::new("chromium").arg("--version").output().is_ok(),
        "this test needs Chromium (apt-get install chromium; .ci/run installs it)"
    );
    let root = tempfile::tempdir().unwrap();
    site(root.path());
    let origin = PyOrigin::start(IpAddr::V4(Ipv4Addr::LOCALHOST), root.path());
    let demo = Demo::start(DemoOptions {
        socks: "127.0.0.1:0".parse().unwrap(),
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    let url = format!("http://{}/", origin.addr);
    for (form, proxy) in [
        ("http", format!("http://{}", demo.socks)),
        ("socks5", format!("socks5://{}", demo.socks)),
    ] {
        let profile = tempfile::tempdir().unwrap();
        let before = opened(&demo);
        let out = {
            let mut c = chromium(&proxy, profile.path());
            c.arg("--dump-dom").arg(&url);
            tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap()
        };
        let dom = String::from_utf8_lossy(&out.stdout).into_owned();
        for want in [
            "<li>script ok</li>",
            "<li>css ok</li>",
            "<li>img ok</li>",
            "<li>fetch ok 1000</li>",
            "<li>ws ok hello over braid</li>",
        ] {
            assert!(
                dom.contains(want),
                "{form}: {want} missing from the page:\n{dom}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            opened(&demo) > before,
            "{form}: the page came through the overlay"
        );
        let shot = screenshot_path(form);
        let _ = std::fs::remove_file(&shot);
        let profile = tempfile::tempdir().unwrap();
        let out = {
            let mut c = chromium(&proxy, profile.path());
            c.arg(format!("--screenshot={}", shot.display())).arg(&url);
            tokio::task::spawn_blocking(move || c.output().unwrap())
                .await
                .unwrap()
        };
        let png = std::fs::read(&shot).unwrap_or_else(|e| {
            panic!(
                "{form}: no screenshot ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5_000,
            "{form}: a rendered page, {} bytes",
            png.len()
        );
        eprintln!(
            "{form}: page whole; screenshot {} ({} bytes)",
            shot.display(),
            png.len()
        );
    }
    demo.shutdown().await;
}

fn opened(demo: &Demo) -> u64 {
    demo.nodes
        .iter()
        .filter(|n| n.role == braid_config::Role::Gateway)
        .map(|n| braid_driver::Metrics::get(&n.metrics.streams_opened))
        .sum()
}
