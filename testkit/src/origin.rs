//! A small HTTP/1.1 origin server on loopback with deterministic bodies, and helpers to drive
//! curl through a SOCKS5 proxy.

use std::net::SocketAddr;
use std::process::Command;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The deterministic body served for `GET /bytes/N` (byte i = a cheap hash of i).
pub fn body_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 13) as u8
}

pub fn expected_sha256(n: u64) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = 0;
    while i < n {
        let k = ((n - i) as usize).min(buf.len());
        for (j, b) in buf[..k].iter_mut().enumerate() {
            *b = body_byte(i + j as u64);
        }
        h.update(&buf[..k]);
        i += k as u64;
    }
    hex::encode(h.finalize())
}

/// Serves:
/// - `GET /bytes/N`   → N deterministic bytes;
/// - `GET /echo/TEXT` → TEXT (a marker round trip);
/// - `PUT|POST /upload` → the sha256 hex of the body (honours `Expect: 100-continue`).
pub async fn start_origin(ip: [u8; 4]) -> SocketAddr {
    let l = TcpListener::bind(SocketAddr::from((ip, 0))).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let _ = serve(s).await;
            });
        }
    });
    addr
}

/// Writes the first `n` bytes of the body pattern ([`body_byte`]).
pub async fn write_body(s: &mut TcpStream, n: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = 0u64;
    while i < n {
        let k = ((n - i) as usize).min(buf.len());
        for (j, b) in buf[..k].iter_mut().enumerate() {
            *b = body_byte(i + j as u64);
        }
        s.write_all(&buf[..k]).await?;
        i += k as u64;
    }
    Ok(())
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).await? == 0 || head.len() > 16 * 1024 {
            return Ok(());
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let req = lines.next().unwrap_or("");
    let mut parts = req.split_whitespace();
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let mut content_length = 0u64;
    let mut expect = false;
    for l in lines {
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("expect:") && lower.contains("100-continue") {
            expect = true;
        }
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        s.write_all(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        write_body(&mut s, n).await?;
    } else if let Some(t) = path.strip_prefix("/echo/") {
        s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{t}",
                t.len()
            )
            .as_bytes(),
        )
        .await?;
    } else if path == "/upload" && (method == "PUT" || method == "POST") {
        if expect {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let mut h = Sha256::new();
        let mut left = content_length;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let k = (left as usize).min(buf.len());
            let n = s.read(&mut buf[..k]).await?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            left -= n as u64;
        }
        let digest = hex::encode(h.finalize());
        s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{digest}",
                digest.len()
            )
            .as_bytes(),
        )
        .await?;
    } else {
        s.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await?;
    }
    s.shutdown().await?;
    Ok(())
}

/// Writes `n` deterministic bytes to a file, for uploads.
pub fn write_body_file(path: &std::path::Path, n: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 64 * 1024];
    let mut i = 0u64;
    while i < n {
        let k = ((n - i) as usize).min(buf.len());
        for (j, b) in buf[..k].iter_mut().enumerate() {
            *b = body_byte(i + j as u64);
        }
        f.write_all(&buf[..k]).unwrap();
        i += k as u64;
    }
}

/// Runs curl through `socks5h://proxy` and returns (exit ok, stdout).
pub async fn curl(proxy: SocketAddr, args: &[&str]) -> (bool, Vec<u8>) {
    let mut cmd = Command::new("curl");
    cmd.arg("-sS")
        .arg("--max-time")
        .arg("300")
        .arg("--proxy")
        .arg(format!("socks5h://{proxy}"))
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("curl is installed"))
        .await
        .unwrap();
    if !out.status.success() {
        eprintln!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), out.stdout)
}

/// sha256 of curl's download of `url`, computed by piping into sha256sum-like hashing.
pub async fn curl_sha256(proxy: SocketAddr, url: &str) -> String {
    let (ok, body) = curl(proxy, &[url]).await;
    assert!(ok, "curl download failed");
    hex::encode(Sha256::digest(&body))
}

/// Downloads `n` deterministic bytes from the origin through `socks5h://proxy`, in a task;
/// resolves to the sha256 of what arrived (curl must succeed).
pub fn spawn_download(
    proxy: SocketAddr,
    origin: SocketAddr,
    n: u64,
) -> tokio::task::JoinHandle<String> {
    let url = format!("http://{origin}/bytes/{n}");
    tokio::spawn(async move { curl_sha256(proxy, &url).await })
}

/// Uploads `n` deterministic bytes with `curl -T` through `socks5h://proxy` to the origin's
/// `/upload`, in a task; resolves to the sha256 the origin computed (curl must succeed).
pub fn spawn_upload(
    proxy: SocketAddr,
    origin: SocketAddr,
    n: u64,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("up.bin");
        write_body_file(&file, n);
        let url = format!("http://{origin}/upload");
        let (ok, body) = curl(proxy, &["-T", file.to_str().unwrap(), &url]).await;
        assert!(ok, "curl upload failed");
        String::from_utf8(body).unwrap()
    })
}
