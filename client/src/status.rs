//! `braid status`: the client's admin port and the command that reads it.
//!
//! The admin port (`admin`, loopback only) answers `GET /status` with one JSON document,
//! [`Status`]: the session and its central, each path (an upstream link) with its state and
//! counters, the gateways with what the central said of them, and the streams. The shape is
//! defined once here and used by both ends. Everything in it is this machine's own view: it
//! names no destination and nothing another node told in confidence.
//!
//! Where it comes from: the session task publishes a snapshot of the sans-IO session when
//! asked (`braid_driver::status`), the gateways from [`crate::gateways`], stream counters
//! from [`Metrics`]; throughput is the change of those counters over the last second or
//! two, sampled here.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use braid_driver::Metrics;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::overlay::ClientHandle;

/// The one path the admin port serves.
pub const STATUS_PATH: &str = "/status";

/// How long a request waits for the session task's fresh snapshot (it may be busy moving
/// cells); after it, the newest one published is shown.
const FRESH_WAIT: Duration = Duration::from_millis(300);
/// How often stream byte counters are sampled for throughput.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// A request head larger than this, or slower than `HEAD_DEADLINE`, is dropped.
const MAX_HEAD: usize = 1024;
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// The largest answer `braid status` reads.
const MAX_ANSWER: u64 = 1 << 20;

/// What `GET /status` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The open session; `null` while the next one is being handshaken.
    pub session: Option<SessionStatus>,
    /// The session's paths (one per upstream link that is up), by name; empty without a
    /// session.
    pub paths: Vec<PathStatus>,
    pub gateways: Vec<GatewayStatus>,
    pub streams: StreamsStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    /// The session id as the logs show it.
    pub id: String,
    /// The central the session runs through.
    pub central: String,
    /// Smoothed RTT over all paths; `null` until measured.
    pub rtt_ms: Option<f64>,
    /// The retransmission timeout now.
    pub rto_ms: f64,
    /// DATA cells sent and not acknowledged yet.
    pub cells_in_flight: u64,
    /// New DATA cells sent (resends not included).
    pub cells_sent: u64,
    pub cells_resent: u64,
    pub cells_received: u64,
    /// Cells dropped as duplicates (a resend whose first copy arrived too).
    pub cells_duplicate: u64,
    /// Cells that failed authentication or a check.
    pub cells_rejected: u64,
}

/// One path: an upstream link and what the session sent on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    pub upstream: String,
    pub state: PathState,
    /// Smoothed RTT of cells on this path; `null` until measured.
    pub rtt_ms: Option<f64>,
    pub cells_in_flight: u32,
    /// DATA cell copies sent on the path, resends included.
    pub cells_sent: u64,
    /// Cells whose acknowledged copy went on the path.
    pub cells_acked: u64,
    /// Copies resent on the path.
    pub cells_resent: u64,
}

/// Whether a path takes cells: in use, rested (its cells timed out; it waits for its next
/// probe) or probing (one probe cell is out on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathState {
    InUse,
    Rested,
    Probing,
}

impl From<braid_proto::session::PathState> for PathState {
    fn from(s: braid_proto::session::PathState) -> Self {
        use braid_proto::session::PathState as P;
        match s {
            P::InUse => PathState::InUse,
            P::Rested => PathState::Rested,
            P::Probing => PathState::Probing,
        }
    }
}

impl PathState {
    pub fn as_str(self) -> &'static str {
        match self {
            PathState::InUse => "in use",
            PathState::Rested => "rested",
            PathState::Probing => "probing",
        }
    }
}

/// A gateway streams may exit through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub id: String,
    /// False while it rests: the central said lately that it cannot reach it.
    pub healthy: bool,
    /// While it rests, milliseconds until new streams try it again.
    pub resting_ms: Option<u64>,
}

/// The client's streams (counters across sessions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamsStatus {
    /// Streams open in the session now.
    pub open: u64,
    pub opened_total: u64,
    /// Stream bytes (sealed inner records) sent and received.
    pub bytes_sent_total: u64,
    pub bytes_received_total: u64,
    /// Over the last second or two.
    pub send_bytes_per_sec: f64,
    pub receive_bytes_per_sec: f64,
}

/// Binds the admin port; only a loopback address is accepted (the port shows the
/// session's central, paths and streams to whoever connects).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    if !addr.ip().is_loopback() {
        bail!(
            "the admin port must be on a loopback address (127.0.0.0/8 or ::1), not {addr}: it \
             shows the session's central, paths and streams to whoever connects"
        );
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin port {addr}"))
}

/// Stream byte counters at one moment.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    sent: u64,
    received: u64,
}

impl Sample {
    fn now(m: &Metrics) -> Sample {
        Sample {
            at: Instant::now(),
            sent: Metrics::get(&m.stream_bytes_sent),
            received: Metrics::get(&m.stream_bytes_received),
        }
    }

    /// Bytes per second (sent, received) from `self` to `later`.
    fn rates_to(&self, later: &Sample) -> (f64, f64) {
        let secs = later.at.saturating_duration_since(self.at).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        (
            later.sent.saturating_sub(self.sent) as f64 / secs,
            later.received.saturating_sub(self.received) as f64 / secs,
        )
    }
}

/// The two newest samples: a rate is measured from the older, one to two seconds back.
struct Samples {
    older: Sample,
    newer: Sample,
}

/// Serves `GET /status` on `listener` until `shutdown`; one request per connection.
pub async fn serve(listener: TcpListener, handle: ClientHandle, shutdown: CancellationToken) {
    let first = Sample::now(&handle.metrics);
    let samples = Arc::new(Mutex::new(Samples {
        older: first,
        newer: first,
    }));
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        let sock = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let now = Sample::now(&handle.metrics);
                if let Ok(mut s) = samples.lock() {
                    s.older = s.newer;
                    s.newer = now;
                }
                continue;
            }
            a = listener.accept() => match a {
                Ok((sock, _)) => sock,
                Err(_) => continue,
            },
        };
        let (handle, samples) = (handle.clone(), samples.clone());
        tokio::spawn(async move {
            let _ = answer(sock, handle, samples).await;
        });
    }
}

async fn answer(
    mut sock: TcpStream,
    handle: ClientHandle,
    samples: Arc<Mutex<Samples>>,
) -> std::io::Result<()> {
    let mut buf = [0u8; MAX_HEAD];
    let mut n = 0;
    let read_head = async {
        while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            match sock.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    };
    if tokio::time::timeout(HEAD_DEADLINE, read_head)
        .await
        .is_err()
    {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (code, ctype, body) = match (method, path) {
        ("GET", STATUS_PATH) => {
            let older = samples.lock().map(|s| s.older).ok();
            let now = Sample::now(&handle.metrics);
            let rates = older.map_or((0.0, 0.0), |o| o.rates_to(&now));
            let status = collect(&handle, now, rates).await;
            match serde_json::to_string_pretty(&status) {
                Ok(json) => ("200 OK", "application/json", json + "\n"),
                Err(e) => ("500 Internal Server Error", "text/plain", format!("{e}\n")),
            }
        }
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {code}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.shutdown().await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The client's status now: a fresh snapshot of the session, the gateways, the counters.
async fn collect(handle: &ClientHandle, now: Sample, rates: (f64, f64)) -> Status {
    let mut reader = handle.status.clone();
    let view = reader.fresh(FRESH_WAIT).await;
    let central = handle.central();
    let (session, paths, open) = match (view, central) {
        (Some(v), Some(central)) => {
            let s = &v.snapshot;
            let session = SessionStatus {
                id: s.id.to_string(),
                central,
                rtt_ms: s.srtt.map(ms),
                rto_ms: ms(s.rto),
                cells_in_flight: s.in_flight as u64,
                cells_sent: s.stats.data_cells_sent,
                cells_resent: s.stats.retransmits,
                cells_received: s.stats.cells_received,
                cells_duplicate: s.stats.duplicates,
                cells_rejected: s.stats.rejected,
            };
            let mut paths: Vec<PathStatus> = s
                .paths
                .iter()
                .zip(&v.path_names)
                .map(|(p, name)| PathStatus {
                    upstream: name.clone(),
                    state: p.state.into(),
                    rtt_ms: p.srtt.map(ms),
                    cells_in_flight: p.in_flight,
                    cells_sent: p.counters.sent,
                    cells_acked: p.counters.acked,
                    cells_resent: p.counters.resent,
                })
                .collect();
            // By name: links come up in any order.
            paths.sort_by(|a, b| a.upstream.cmp(&b.upstream));
            (Some(session), paths, v.streams_open as u64)
        }
        _ => (None, Vec::new(), 0),
    };
    let at = Instant::now();
    let gateways = handle
        .gateways
        .health()
        .into_iter()
        .map(|(id, resting)| GatewayStatus {
            id,
            healthy: resting.is_none(),
            resting_ms: resting.map(|t| t.saturating_duration_since(at).as_millis() as u64),
        })
        .collect();
    Status {
        session,
        paths,
        gateways,
        streams: StreamsStatus {
            open,
            opened_total: Metrics::get(&handle.metrics.streams_opened),
            bytes_sent_total: now.sent,
            bytes_received_total: now.received,
            send_bytes_per_sec: rates.0,
            receive_bytes_per_sec: rates.1,
        },
    }
}

/// `braid status`: asks the admin port at `addr`. Errors say what to check.
pub async fn fetch(addr: SocketAddr) -> anyhow::Result<Status> {
    let ask = async {
        let mut sock = TcpStream::connect(addr).await.with_context(|| {
            format!(
                "no braid client answers on its admin port {addr} (is `braid run` or \
                 `braid demo` running? its `admin` address, or --admin, says where)"
            )
        })?;
        sock.write_all(format!("GET {STATUS_PATH} HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut answer = Vec::new();
        (&mut sock)
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), ask)
        .await
        .with_context(|| format!("the admin port {addr} did not answer within 10 s"))??;
    let text = String::from_utf8_lossy(&answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{addr} answered something other than HTTP");
    };
    let status_line = head.lines().next().unwrap_or("");
    if !status_line.starts_with("HTTP/1.1 200") {
        bail!("{addr} answered {status_line:?}: is it a braid client's admin port?");
    }
    serde_json::from_str(body).with_context(|| format!("{addr} answered JSON braid cannot read"))
}

/// A byte rate for people: `0 B/s`, `12.3 KiB/s`, `4.5 MiB/s`.
fn rate(bytes_per_sec: f64) -> String {
    const UNITS: [&str; 4] = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let mut v = bytes_per_sec.max(0.0);
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn rtt(ms: Option<f64>) -> String {
    ms.map_or_else(|| "-".to_string(), |m| format!("{m:.1} ms"))
}

/// The status as tables for people.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    match &s.session {
        None => out.push_str("session   none open (a new one is being handshaken)\n"),
        Some(x) => {
            let _ = writeln!(out, "session   {}  central {}", x.id, x.central);
            let _ = writeln!(
                out,
                "          rtt {}  rto {:.0} ms  cells: {} sent, {} resent, {} received, {} in flight",
                rtt(x.rtt_ms),
                x.rto_ms,
                x.cells_sent,
                x.cells_resent,
                x.cells_received,
                x.cells_in_flight
            );
        }
    }
    out.push('\n');
    let width = s
        .paths
        .iter()
        .map(|p| p.upstream.len())
        .chain(s.gateways.iter().map(|g| g.id.len()))
        .max()
        .unwrap_or(0)
        .max(8);
    let _ = writeln!(
        out,
        "{:<width$}  {:<8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
        "path", "state", "rtt", "in flight", "sent", "acked", "resent"
    );
    if s.paths.is_empty() {
        out.push_str("(no path up)\n");
    }
    for p in &s.paths {
        let _ = writeln!(
            out,
            "{:<width$}  {:<8}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}",
            p.upstream,
            p.state.as_str(),
            rtt(p.rtt_ms),
            p.cells_in_flight,
            p.cells_sent,
            p.cells_acked,
            p.cells_resent
        );
    }
    out.push('\n');
    let _ = writeln!(out, "{:<width$}  health", "gateway");
    for g in &s.gateways {
        let health = match (g.healthy, g.resting_ms) {
            (true, _) => "healthy".to_string(),
            (false, Some(ms)) => format!(
                "resting ({:.1} s left: the central could not reach it)",
                ms as f64 / 1e3
            ),
            (false, None) => "resting".to_string(),
        };
        let _ = writeln!(out, "{:<width$}  {health}", g.id);
    }
    out.push('\n');
    let t = &s.streams;
    let _ = writeln!(
        out,
        "streams   {} open, {} opened  up {}  down {}  ({} sent, {} received in all)",
        t.open,
        t.opened_total,
        rate(t.send_bytes_per_sec),
        rate(t.receive_bytes_per_sec),
        bytes(t.bytes_sent_total),
        bytes(t.bytes_received_total)
    );
    out
}

fn bytes(n: u64) -> String {
    rate(n as f64).trim_end_matches("/s").to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            session: Some(SessionStatus {
                id: "0a1b2c3d4e5f".into(),
                central: "central-1".into(),
                rtt_ms: Some(1.3),
                rto_ms: 200.0,
                cells_in_flight: 3,
                cells_sent: 1200,
                cells_resent: 4,
                cells_received: 9000,
                cells_duplicate: 1,
                cells_rejected: 0,
            }),
            paths: vec![
                PathStatus {
                    upstream: "upstream-1".into(),
                    state: PathState::InUse,
                    rtt_ms: Some(1.1),
                    cells_in_flight: 2,
                    cells_sent: 604,
                    cells_acked: 600,
                    cells_resent: 4,
                },
                PathStatus {
                    upstream: "upstream-2".into(),
                    state: PathState::Probing,
                    rtt_ms: None,
                    cells_in_flight: 1,
                    cells_sent: 600,
                    cells_acked: 596,
                    cells_resent: 0,
                },
            ],
            gateways: vec![
                GatewayStatus {
                    id: "gateway-1".into(),
                    healthy: true,
                    resting_ms: None,
                },
                GatewayStatus {
                    id: "gateway-2".into(),
                    healthy: false,
                    resting_ms: Some(3200),
                },
            ],
            streams: StreamsStatus {
                open: 2,
                opened_total: 17,
                bytes_sent_total: 4096,
                bytes_received_total: 3 << 20,
                send_bytes_per_sec: 100.0,
                receive_bytes_per_sec: 2.5 * 1024.0 * 1024.0,
            },
        }
    }

    #[test]
    fn the_json_shape_round_trips_and_names_states_plainly() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"state\":\"in_use\""), "{json}");
        assert!(json.contains("\"state\":\"probing\""), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
        let none = Status {
            session: None,
            paths: Vec::new(),
            ..s
        };
        let json = serde_json::to_string(&none).unwrap();
        assert!(json.contains("\"session\":null"), "{json}");
    }

    #[test]
    fn the_table_shows_every_part() {
        let text = render(&sample());
        for part in [
            "session   0a1b2c3d4e5f  central central-1",
            "rtt 1.3 ms",
            "upstream-1",
            "in use",
            "probing",
            "gateway-2   resting (3.2 s left",
            "healthy",
            "2 open, 17 opened",
            "down 2.5 MiB/s",
            "up 100 B/s",
        ] {
            assert!(text.contains(part), "{part:?} missing from\n{text}");
        }
        let line = text.lines().find(|l| l.starts_with("upstream-2")).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols, ["upstream-2", "probing", "-", "1", "600", "596", "0"]);
    }

    #[tokio::test]
    async fn a_non_loopback_admin_address_is_refused() {
        for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:1081"] {
            let e = bind(addr.parse().unwrap()).await.unwrap_err().to_string();
            assert!(e.contains("loopback") && e.contains(addr), "{e}");
        }
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert!(l.local_addr().unwrap().ip().is_loopback());
    }
}
