//! The admin port: `GET /health` (200, or 503 with the reason as JSON; see `health`) and
//! Prometheus `GET /metrics`, bound to loopback by
//! default. A deliberately tiny HTTP/1.1 responder: one request per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use braid_config::Role;
use braid_driver::metrics::Metrics;

use crate::health;

pub async fn serve(
    listener: TcpListener,
    node: String,
    role: Role,
    metrics: Arc<Metrics>,
    drain: CancellationToken,
    shutdown: CancellationToken,
) {
    loop {
        let (mut sock, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
        };
        let body_metrics = metrics.render(&node, role.as_str());
        let health = health::response(health::check(role, &metrics, drain.is_cancelled()));
        tokio::spawn(async move {
            // Read the request head (bounded: 1 KiB, 5 s).
            let mut buf = [0u8; 1024];
            let mut n = 0;
            let read_head = async {
                while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), read_head)
                .await
                .is_err()
            {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, ctype, body) = match path {
                "/health" => (health.0, "application/json", health.1),
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", body_metrics),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
