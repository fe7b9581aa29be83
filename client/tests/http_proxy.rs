//! The mixed port's HTTP and SOCKS4 sides, driven by real clients (curl, git, pip, raw
//! sockets) through a real overlay of separate nodes to a real HTTP server
//! (`testkit/http_origin.py`) on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use braid_client::demo::{Demo, DemoOptions};
use braid_client::http_proxy::HttpLimits;
use braid_client::socks::{SocksAuth, SocksLimits};
use braid_config::{ExitRule, PortRange};
use braid_proto::http1::HeadLimits;
use braid_testkit::http_origin::{pattern, sha256_hex, PyOrigin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

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

/// Runs a command to completion off the runtime, with no proxy settings inherited.
async fn run(mut cmd: Command) -> Output {
    for v in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        cmd.env_remove(v);
    }
    tokio::task::spawn_blocking(move || cmd.output().expect("the program is installed"))
        .await
        .unwrap()
}

fn curl() -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "120"]);
    c
}

/// One request on a fresh connection: the status line and the whole answer.
async fn raw_exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

/// Many downloads on one curl command line (so one kept-alive connection), through each
/// form of the mixed port: each body byte-identical, and one connection in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_every_form_keeps_alive_and_moves_bodies_intact() {
    let root = tempfile::tempdir().unwrap();
    let origin = PyOrigin::start(LOCAL, root.path());
    let demo = Demo::start(opts()).await.unwrap();
    let p = demo.socks;
    let sizes = [
        0usize, 1, 250, 251, 4096, 100_000, 17, 65_536, 1_000_000, 2_500_000,
    ];
    let forms: [(&str, &[&str]); 5] = [
        ("socks5h", &[]),
        ("socks4a", &[]),
        ("socks4", &[]),
        ("http", &["--proxytunnel"]),
        ("http", &[]),
    ];
    for (scheme, extra) in forms {
        let dir = tempfile::tempdir().unwrap();
        let mut c = curl();
        c.arg("--proxy")
            .arg(format!("{scheme}://{p}"))
            .args(extra)
            .args(["-w", "%{stderr}%{num_connects} %{http_code}\n"]);
        for (i, n) in sizes.iter().enumerate() {
            c.arg(format!("http://{}/bytes/{n}", origin.addr))
                .arg("-o")
                .arg(dir.path().join(i.to_string()));
        }
        let out = run(c).await;
        let what = format!("{scheme} {extra:?}");
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (i, n) in sizes.iter().enumerate() {
            let got = std::fs::read(dir.path().join(i.to_string())).unwrap();
            assert!(
                got == pattern(*n),
                "{what}: /bytes/{n} differs ({} bytes)",
                got.len()
            );
        }
        let lines = String::from_utf8_lossy(&out.stderr).into_owned();
        let connects: u32 = lines
            .lines()
            .map(|l| l.split(' ').next().unwrap().parse::<u32>().unwrap())
            .sum();
        assert_eq!(
            connects, 1,
            "{what}: one kept-alive connection for all: {lines}"
        );
        assert!(
            lines.lines().all(|l| l.ends_with(" 200")),
            "{what}: {lines}"
        );
        eprintln!("{what}: {} requests on one connection", sizes.len());
    }

    // Chunked both ways, and HEAD then GET on one connection, through the HTTP forms.
    let upload: Vec<u8> = (0..3_000_001u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let file = root.path().join("upload.bin");
    std::fs::write(&file, &upload).unwrap();
    for extra in [&["--proxytunnel"][..], &[]] {
        let out = run({
            let mut c = curl();
            c.args(["--proxy", &format!("http://{p}")])
                .args(extra)
                .args(["-H", "Transfer-Encoding: chunked", "--data-binary"])
                .arg(format!("@{}", file.display()))
                .arg(format!("http://{}/sha256", origin.addr));
            c
        })
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            sha256_hex(&upload),
            "chunked upload {extra:?}"
        );
        let n = 3_000_000;
        let out = run({
            let mut c = curl();
            c.args(["--proxy", &format!("http://{p}")])
                .args(extra)
                .arg(format!("http://{}/chunked/{n}", origin.addr));
            c
        })
        .await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == pattern(n),
            "chunked download {extra:?} differs"
        );
    }
    let out = run({
        let mut c = curl();
        c.args([
            "--proxy",
            &format!("http://{p}"),
            "-w",
            "%{stderr}%{num_connects}\n",
            "-I",
        ])
        .arg(format!("http://{}/bytes/12345", origin.addr))
        .arg("--next")
        .args([
            "--proxy",
            &format!("http://{p}"),
            "-w",
            "%{stderr}%{num_connects}\n",
        ])
        .arg(format!("http://{}/bytes/777", origin.addr));
        c
    })
    .await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("Content-Length: 12345"),
        "HEAD keeps the length: {text}"
    );
    assert!(out.stdout.ends_with(&pattern(777)), "the GET after HEAD");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "1\n0\n",
        "HEAD, then GET on the same connection"
    );
    demo.shutdown().await;
}

/// A listener whose accept queue is full: new SYNs are dropped, so connecting times out.
async fn black_hole() -> (SocketAddr, Vec<TcpStream>, tokio::net::TcpListener) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => held.push(s),
            _ => break,
        }
    }
    (addr, held, listener)
}

/// Every error status the proxy answers, each from its cause, as a small page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_statuses_come_from_their_causes() {
    let root = tempfile::tempdir().unwrap();
    let origin = PyOrigin::start(LOCAL, root.path());
    let closed = braid_testkit::free_port(LOCAL, false);
    let (hole, _held, _l) = black_hole().await;
    let mut o = opts();
    o.socks_limits = SocksLimits {
        handshake_deadline: Duration::from_secs(1),
        http: HttpLimits {
            head: HeadLimits {
                max_head_bytes: 4096,
                max_headers: 20,
            },
            keepalive_idle: Duration::from_secs(2),
            max_body: Some(1 << 20),
        },
        ..SocksLimits::default()
    };
    o.exit_rules = vec![ExitRule::deny().ports(PortRange::single(9))];
    o.tune_gateway = Some(std::sync::Arc::new(|g| g.connect_timeout_secs = 1));
    o.keepalive = Duration::from_millis(200);
    o.peer_timeout = Duration::from_secs(1);
    o.session_wait = Duration::from_secs(1);
    let demo = Demo::start(o).await.unwrap();
    let p = demo.socks;
    let o = origin.addr;

    let cases: Vec<(u16, String, Vec<u8>)> = vec![
        (400, "origin-form request".into(), b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            400,
            "Content-Length with Transfer-Encoding".into(),
            format!("POST http://{o}/sha256 HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(),
        ),
        (
            400,
            "bad chunk size in the body".into(),
            format!("POST http://{o}/sha256 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").into_bytes(),
        ),
        (403, "exit policy (port 9)".into(), b"GET http://127.0.0.1:9/ HTTP/1.1\r\n\r\n".to_vec()),
        (403, "exit policy on CONNECT".into(), b"CONNECT 127.0.0.1:9 HTTP/1.1\r\n\r\n".to_vec()),
        (
            413,
            "body over http max_body".into(),
            format!("POST http://{o}/sha256 HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n").into_bytes(),
        ),
        (
            431,
            "head over max_head_bytes".into(),
            format!("GET http://{o}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(5000)).into_bytes(),
        ),
        (
            431,
            "more header fields than max_headers".into(),
            format!("GET http://{o}/ HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(25)).into_bytes(),
        ),
        (501, "https:// absolute URI".into(), b"GET https://example.com/ HTTP/1.1\r\n\r\n".to_vec()),
        (
            501,
            "transfer coding other than chunked".into(),
            format!("POST http://{o}/sha256 HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").into_bytes(),
        ),
        (502, "target refuses the connection".into(), format!("GET http://127.0.0.1:{closed}/ HTTP/1.1\r\n\r\n").into_bytes()),
        (504, "target connect times out".into(), format!("GET http://{hole}/ HTTP/1.1\r\n\r\n").into_bytes()),
        (505, "HTTP/2.0 request line".into(), format!("GET http://{o}/ HTTP/2.0\r\n\r\n").into_bytes()),
    ];
    for (want, cause, request) in &cases {
        let answer = raw_exchange(p, request).await;
        assert_eq!(status_of(&answer), *want, "{cause}: {answer}");
        assert!(
            answer.contains("<html>") && answer.contains("braid"),
            "{cause}: a small page: {answer}"
        );
        eprintln!("{want} <- {cause}");
    }
    // 403 says why.
    let answer = raw_exchange(p, b"GET http://127.0.0.1:9/ HTTP/1.1\r\n\r\n").await;
    assert!(
        answer.contains("not_allowed") || answer.contains("refused"),
        "{answer}"
    );

    // 408: a head that never completes.
    let started = Instant::now();
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(format!("GET http://{o}/ HTTP/1.1\r\nHost: x\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&answer), 408, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "408 within the deadline"
    );
    eprintln!("408 <- head not complete in 1 s");

    // A kept connection that stays idle past keepalive_idle is closed without a word.
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(format!("GET http://{o}/bytes/10 HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.ends_with(&pattern(10)) {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let idle = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, with nothing written");
    assert!(
        idle.elapsed() >= Duration::from_millis(1900),
        "not before keepalive_idle"
    );

    // 503: no central, no session to carry the request.
    let central = demo
        .nodes
        .iter()
        .find(|n| n.role == braid_config::Role::Central)
        .unwrap()
        .id
        .clone();
    demo.kill(&central);
    let deadline = Instant::now() + Duration::from_secs(30);
    while demo.client.central().is_some() {
        assert!(
            Instant::now() < deadline,
            "the client never noticed the central went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = raw_exchange(
        p,
        format!("GET http://{o}/bytes/10 HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    eprintln!("503 <- no session (central gone)");
    demo.shutdown().await;
}

/// `[auth]` applies to every protocol of the port: HTTP asks with 407 and takes Basic
/// credentials, SOCKS5 takes the same pair, SOCKS4 (no password) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authorization_against_the_same_local_user() {
    let root = tempfile::tempdir().unwrap();
    let origin = PyOrigin::start(LOCAL, root.path());
    let mut o = opts();
    o.socks_limits.auth = Some(SocksAuth::new("alice", "s3cret").unwrap());
    let demo = Demo::start(o).await.unwrap();
    let p = demo.socks;
    let url = format!("http://{}/bytes/1000", origin.addr);
    let code = |args: Vec<String>| {
        let url = url.clone();
        async move {
            let out = run({
                let mut c = curl();
                c.args(&args)
                    .args(["-o", "/dev/null", "-w", "%{http_code}"])
                    .arg(url);
                c
            })
            .await;
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert_eq!(
        code(vec!["--proxy".into(), format!("http://{p}")]).await,
        "407"
    );
    assert_eq!(
        code(vec!["--proxy".into(), format!("http://alice:wrong@{p}")]).await,
        "407"
    );
    assert_eq!(
        code(vec!["--proxy".into(), format!("http://alice:s3cret@{p}")]).await,
        "200"
    );
    assert_eq!(
        code(vec![
            "--proxy".into(),
            format!("socks5h://alice:s3cret@{p}")
        ])
        .await,
        "200"
    );
    let answer = raw_exchange(p, format!("GET {url} HTTP/1.1\r\n\r\n").as_bytes()).await;
    assert!(
        answer.contains("Proxy-Authenticate: Basic realm=\"braid\""),
        "{answer}"
    );
    let out = run({
        let mut c = curl();
        c.args([
            "--proxy",
            &format!("socks4a://alice@{p}"),
            &url,
            "-o",
            "/dev/null",
        ]);
        c
    })
    .await;
    assert!(
        !out.status.success(),
        "SOCKS4 cannot log in, so it is refused under [auth]"
    );
    demo.shutdown().await;
}

/// git clone (smart protocol not needed: the dumb HTTP protocol over a static folder) and
/// pip download from a local index, through `http_proxy` / `HTTP_PROXY`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_and_pip_download_through_the_http_proxy() {
    let root = tempfile::tempdir().unwrap();
    make_repo(root.path());
    make_index(root.path());
    let origin = PyOrigin::start(LOCAL, root.path());
    let demo = Demo::start(opts()).await.unwrap();
    let proxy = format!("http://{}", demo.socks);

    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("clone");
    let out = run({
        let mut c = Command::new("git");
        c.args(["-c", &format!("http.proxy={proxy}"), "clone", "-q"])
            .arg(format!("http://{}/repo.git", origin.addr))
            .arg(&dest);
        c
    })
    .await;
    assert!(
        out.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let readme = std::fs::read_to_string(dest.join("README")).unwrap();
    assert_eq!(readme, "cloned through braid\n");
    let big = std::fs::read(dest.join("big.bin")).unwrap();
    assert!(big == pattern(300_000), "the clone's binary file is intact");

    let out = run({
        let mut c = Command::new("python3");
        c.args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-q",
        ])
        .args(["--index-url", &format!("http://{}/simple/", origin.addr)])
        .args(["--trusted-host", &origin.addr.ip().to_string()])
        .arg("-d")
        .arg(work.path().join("wheels"))
        .arg("braid-demo-pkg==1.0")
        .env("HTTP_PROXY", &proxy)
        .env("http_proxy", &proxy);
        c
    })
    .await;
    assert!(
        out.status.success(),
        "pip download: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wheel = work
        .path()
        .join("wheels/braid_demo_pkg-1.0-py3-none-any.whl");
    assert_eq!(
        std::fs::read(&wheel).unwrap(),
        std::fs::read(
            root.path()
                .join("simple/braid-demo-pkg/braid_demo_pkg-1.0-py3-none-any.whl")
        )
        .unwrap()
    );
    // Both went through the proxy: the origin saw only the gateway's connections, and the
    // overlay carried them.
    let opened: u64 = demo
        .nodes
        .iter()
        .filter(|n| n.role == braid_config::Role::Gateway)
        .map(|n| braid_driver::Metrics::get(&n.metrics.streams_opened))
        .sum();
    assert!(opened >= 2, "the gateways opened {opened} streams");
    demo.shutdown().await;
}

fn sh(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bare repository under `root/repo.git`, ready for dumb HTTP.
fn make_repo(root: &Path) {
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("README"), "cloned through braid\n").unwrap();
    std::fs::write(src.join("big.bin"), pattern(300_000)).unwrap();
    sh(&src, &["git", "init", "-q", "-b", "main"]);
    sh(&src, &["git", "add", "."]);
    sh(
        &src,
        &[
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "-m",
            "one",
        ],
    );
    sh(root, &["git", "clone", "-q", "--bare", "src", "repo.git"]);
    sh(&root.join("repo.git"), &["git", "update-server-info"]);
}

/// A PEP 503 index under `root/simple/` with one small wheel.
fn make_index(root: &Path) {
    let dir = root.join("simple/braid-demo-pkg");
    std::fs::create_dir_all(&dir).unwrap();
    let script = r#"
import sys, zipfile, hashlib, base64
path = sys.argv[1]
files = {
    "braid_demo_pkg/__init__.py": b"VALUE = 1\n",
    "braid_demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: braid-demo-pkg\nVersion: 1.0\n",
    "braid_demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: braid-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = ""
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record += f"{name},sha256={digest},{len(data)}\n"
record += "braid_demo_pkg-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(path, "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
    z.writestr("braid_demo_pkg-1.0.dist-info/RECORD", record)
"#;
    let wheel = dir.join("braid_demo_pkg-1.0-py3-none-any.whl");
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&wheel)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        dir.join("index.html"),
        "<!DOCTYPE html><html><body><a href=\"braid_demo_pkg-1.0-py3-none-any.whl\">braid_demo_pkg-1.0-py3-none-any.whl</a></body></html>\n",
    )
    .unwrap();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// The malformed inputs of the flood: truncations of a valid request at every offset,
/// oversize heads, bad chunk sizes, smuggling attempts, garbage.
fn malformed_requests(o: SocketAddr) -> Vec<Vec<u8>> {
    let valid = format!(
        "POST http://{o}/sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let mut all: Vec<Vec<u8>> = (1..valid.len())
        .map(|cut| valid.as_bytes()[..cut].to_vec())
        .collect();
    for kib in [5, 16, 33, 64, 100] {
        all.push(
            format!(
                "GET http://{o}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(kib * 1024)
            )
            .into_bytes(),
        );
        all.push(
            format!(
                "GET http://{o}/ HTTP/1.1\r\n{}\r\n",
                "X-A: 1\r\n".repeat(kib * 10)
            )
            .into_bytes(),
        );
    }
    for size in [
        "zz",
        "-1",
        "0x5",
        "ffffffffffffffffff",
        " 5",
        "5 5",
        "",
        "5\n",
    ] {
        all.push(format!("POST http://{o}/sha256 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n").into_bytes());
    }
    let smuggles = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
        "Transfer-Encoding : chunked",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Transfer-Encoding:\tchunked\r\nContent-Length: 0",
        " Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked, chunked",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5, 6",
        "Content-Length: -5",
        "Content-Length: 5\r\n Transfer-Encoding: chunked",
        "X: y\nTransfer-Encoding: chunked",
        "Transfer-Encoding: \u{0b}chunked",
    ];
    for s in smuggles {
        all.push(format!("POST http://{o}/sha256 HTTP/1.1\r\n{s}\r\n\r\n0\r\n\r\nGET http://{o}/bytes/1 HTTP/1.1\r\n\r\n").into_bytes());
    }
    let mut x = 0x2545F4914F6CDD1Du64;
    while all.len() < 1000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = (x % 300) as usize;
        let mut g = b"G".to_vec();
        for i in 0..n {
            g.push((x.rotate_left(i as u32) % 256) as u8);
        }
        all.push(g);
    }
    all
}

/// 1,000 malformed requests get a status or a close, never a panic, with RSS bounded,
/// while an honest 64 MiB download runs beside them intact. (Heads within the limits,
/// and a head whose lines end in a bare LF, which RFC 9112 §2.2 lets a recipient take,
/// are answered 200: the forwarded head is Braid's own, CRLF throughout, so nothing can
/// be smuggled through them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_flood_beside_an_honest_download() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let root = tempfile::tempdir().unwrap();
    let origin = PyOrigin::start(LOCAL, root.path());
    let mut o = opts();
    o.socks_limits.handshake_deadline = Duration::from_secs(2);
    let demo = Demo::start(o).await.unwrap();
    let p = demo.socks;
    let n = 64 << 20;
    let file = root.path().join("honest.bin");
    let honest = tokio::spawn({
        let url = format!("http://{}/bytes/{n}", origin.addr);
        let file = file.clone();
        async move {
            run({
                let mut c = curl();
                c.args(["--proxy", &format!("http://{p}"), &url, "-o"])
                    .arg(file);
                c
            })
            .await
        }
    });
    let rss_before = rss_kib();
    let requests = malformed_requests(origin.addr);
    assert!(requests.len() >= 1000);
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for batch in requests.chunks(50) {
        let tasks: Vec<_> = batch
            .iter()
            .cloned()
            .map(|r| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(p).await.unwrap();
                    let _ = s.write_all(&r).await;
                    let _ = s.shutdown().await;
                    let mut out = Vec::new();
                    let done =
                        tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
                            .await;
                    assert!(
                        done.is_ok(),
                        "no answer nor close within 30 s for {:?}",
                        String::from_utf8_lossy(&r[..r.len().min(120)])
                    );
                    let text = String::from_utf8_lossy(&out).into_owned();
                    if text.starts_with("HTTP/1.1 502") {
                        eprintln!(
                            "502 for {:?} ({} bytes): {text}",
                            String::from_utf8_lossy(&r[..r.len().min(60)]),
                            r.len()
                        );
                    }
                    if text.is_empty() {
                        "close".to_owned()
                    } else {
                        text.get(..12).unwrap_or(&text).to_owned()
                    }
                })
            })
            .collect();
        for t in tasks {
            *statuses.entry(t.await.unwrap()).or_default() += 1;
        }
    }
    eprintln!(
        "answers to {} malformed requests: {statuses:?}",
        requests.len()
    );
    for k in statuses.keys() {
        assert!(
            k == "close"
                || [
                    "HTTP/1.1 400",
                    "HTTP/1.1 431",
                    "HTTP/1.1 501",
                    "HTTP/1.1 505",
                    "HTTP/1.1 408",
                    "HTTP/1.1 200"
                ]
                .contains(&k.as_str()),
            "unexpected answer {k:?}"
        );
    }
    assert!(
        statuses.get("HTTP/1.1 400").copied().unwrap_or(0) >= 10,
        "smuggling attempts get 400"
    );
    let out = honest.await.unwrap();
    // Before the download is read back into this process.
    let grown = rss_kib().saturating_sub(rss_before);
    eprintln!("RSS grew {grown} KiB over the flood and the 64 MiB download (the whole overlay is this process)");
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&file).unwrap();
    assert_eq!(got.len(), n, "the honest download is whole");
    assert!(got == pattern(n), "the honest download is intact");
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "no panic anywhere");
    demo.shutdown().await;
}

/// Over `max_connections`, each protocol of the mixed port is refused in its own terms:
/// HTTP gets a 503 page, SOCKS4 gets 91 (SOCKS5's `05 02` is in socks_edge.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_connection_limit_http_gets_503_and_socks4_gets_91() {
    let mut o = opts();
    o.socks_limits.max_connections = 1;
    let demo = Demo::start(o).await.unwrap();
    let p = demo.socks;
    // One admitted connection, idle in its handshake.
    let held = TcpStream::connect(p).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answer = raw_exchange(p, b"GET http://example.com/ HTTP/1.1\r\n\r\n").await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    let mut s = TcpStream::connect(p).await.unwrap();
    s.write_all(&[4, 1, 0, 80, 1, 2, 3, 4, 0]).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert_eq!(out, [0, 91, 0, 0, 0, 0, 0, 0]);
    drop(held);
    demo.shutdown().await;
}
