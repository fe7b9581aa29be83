//! The soak: a client left running with many apps while every role is killed and restarted
//! in turn. Not part of the default run: it runs only when `BRAID_SOAK_SECS` is set.
//!
//! ```text
//! BRAID_SOAK_SECS=1860 cargo test -p braid --test soak -- --nocapture
//! ```
//! - 200 concurrent workers, each running one stream after another: 50 bulk downloads
//!   (16 MiB, every byte checked), 50 interactive echo streams (50 echoes, 200 ms apart),
//!   100 short HTTP requests (20 kB, every byte checked).
//! - Every `BRAID_SOAK_KILL_SECS` (default 120) one node is killed with -9 and started
//!   again 5 s later, in turn: upstream, central, downstream, relay, gateway, over the
//!   layout 2 upstreams, 2 centrals, 2 downstreams, 2 relays, 2 gateways. (The client is
//!   not killed: its streams would die with it by definition.)
//! - The report (stderr, and `BRAID_SOAK_REPORT` if set): streams completed, resumed and
//!   failed; bytes lost, split by whether a gateway was down during the stream (a stream on
//!   a killed gateway dies with it); each process's RSS at the start and the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_config::Layout;
use braid_testkit as support;
use support::procs::{ProcOptions, ProcOverlay};
use support::socks::try_socks_connect;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bulk,
    Interactive,
    Short,
}

/// One stream's outcome.
struct Run {
    kind: Kind,
    start: Instant,
    end: Instant,
    expected: u64,
    got: u64,
    ok: bool,
    why: String,
}

const BULK: u64 = 16 << 20;
const SHORT: u64 = 20_000;
const ECHOES: usize = 50;
const ECHO_LEN: usize = 1024;
/// A stream that takes longer than this counts as hung (failed).
const STREAM_DEADLINE: Duration = Duration::from_secs(180);

/// GET /bytes/n through the proxy; the body's bytes that arrived before anything went
/// wrong, checked against the pattern.
async fn http_bytes(socks: SocketAddr, origin: SocketAddr, n: u64) -> (u64, Result<(), String>) {
    let mut s = match try_socks_connect(socks, origin).await {
        Ok(s) => s,
        Err(e) => return (0, Err(format!("open: {e}"))),
    };
    let req = format!("GET /bytes/{n} HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return (0, Err(format!("request: {e}")));
    }
    let mut head = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let k = match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) => return (got, Err(format!("read: {e}"))),
        };
        let mut chunk = &buf[..k];
        if !head.ends_with(b"\r\n\r\n") {
            let mut used = 0;
            for b in chunk {
                used += 1;
                head.push(*b);
                if head.ends_with(b"\r\n\r\n") {
                    break;
                }
            }
            chunk = &chunk[used..];
        }
        for b in chunk {
            if *b != body_byte(got) {
                return (got, Err(format!("byte {got} differs")));
            }
            got += 1;
        }
    }
    if got == n {
        (got, Ok(()))
    } else {
        (got, Err(format!("ended at {got} of {n}")))
    }
}

async fn interactive(socks: SocketAddr, echo: SocketAddr) -> (u64, Result<(), String>) {
    let mut s = match try_socks_connect(socks, echo).await {
        Ok(s) => s,
        Err(e) => return (0, Err(format!("open: {e}"))),
    };
    let mut got = 0u64;
    for i in 0..ECHOES {
        let msg: Vec<u8> = (0..ECHO_LEN).map(|j| (i * 7 + j) as u8).collect();
        if let Err(e) = s.write_all(&msg).await {
            return (got, Err(format!("write: {e}")));
        }
        let mut back = vec![0u8; ECHO_LEN];
        if let Err(e) = s.read_exact(&mut back).await {
            return (got, Err(format!("echo {i}: {e}")));
        }
        if back != msg {
            return (got, Err(format!("echo {i} differs")));
        }
        got += ECHO_LEN as u64;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (got, Ok(()))
}

async fn one(kind: Kind, socks: SocketAddr, origin: SocketAddr, echo: SocketAddr) -> Run {
    let start = Instant::now();
    let expected = match kind {
        Kind::Bulk => BULK,
        Kind::Short => SHORT,
        Kind::Interactive => (ECHOES * ECHO_LEN) as u64,
    };
    let work = async {
        match kind {
            Kind::Bulk => http_bytes(socks, origin, BULK).await,
            Kind::Short => http_bytes(socks, origin, SHORT).await,
            Kind::Interactive => interactive(socks, echo).await,
        }
    };
    let (got, r) = match tokio::time::timeout(STREAM_DEADLINE, work).await {
        Ok(x) => x,
        Err(_) => (0, Err("hung".to_string())),
    };
    Run {
        kind,
        start,
        end: Instant::now(),
        expected,
        got,
        ok: r.is_ok(),
        why: r.err().unwrap_or_default(),
    }
}

fn env_secs(name: &str, default: u64) -> Option<Duration> {
    match std::env::var(name) {
        Ok(v) => Some(Duration::from_secs(v.parse().unwrap_or(default))),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_every_role_killed_in_turn() {
    let Some(total) = env_secs("BRAID_SOAK_SECS", 1860) else {
        eprintln!("soak skipped: set BRAID_SOAK_SECS to run it");
        return;
    };
    let kill_every = env_secs("BRAID_SOAK_KILL_SECS", 120).unwrap_or(Duration::from_secs(120));
    let origin = start_origin([127, 0, 0, 1]).await;
    let echo = support::socks::start_echo().await;
    let mut ov = ProcOverlay::start(ProcOptions {
        layout: Layout {
            upstreams: 2,
            centrals: 2,
            downstreams: 2,
            relays: 2,
            gateways: 2,
        },
        // Every app comes from 127.0.0.1: no per-source limit below the worker count.
        client_extra: "keepalive_ms = 1000\npeer_timeout_ms = 2000\nsession_wait_ms = 10000\nmax_connections_per_source = 4096\n"
            .into(),
        ..ProcOptions::default()
    });
    let ids: Vec<String> = ov.nodes().map(|n| n.to_string()).collect();
    let rss_start: Vec<(String, u64)> = ids
        .iter()
        .map(|id| (id.clone(), ov.rss_kib(id).0))
        .chain([("client".to_string(), ov.client_rss_kib())])
        .collect();

    let socks = ov.socks;
    let began = Instant::now();
    let until = began + total;
    let runs: Arc<Mutex<Vec<Run>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..200 {
        let kind = match w % 4 {
            0 => Kind::Bulk,
            1 => Kind::Interactive,
            _ => Kind::Short,
        };
        let runs = runs.clone();
        workers.push(tokio::spawn(async move {
            // Spread the starts over the first seconds.
            tokio::time::sleep(Duration::from_millis(w * 20)).await;
            while Instant::now() < until {
                let r = one(kind, socks, origin, echo).await;
                runs.lock().unwrap().push(r);
            }
        }));
    }

    // Kill one node every `kill_every`, in turn by role.
    let order: Vec<String> = {
        let by_role = |r: &str| {
            ids.iter()
                .filter(|i| i.starts_with(r))
                .cloned()
                .collect::<Vec<_>>()
        };
        let roles = ["upstream", "central", "downstream", "relay", "gateway"];
        let lists: Vec<Vec<String>> = roles.iter().map(|r| by_role(r)).collect();
        (0..2)
            .flat_map(|k| lists.iter().filter_map(move |l| l.get(k).cloned()))
            .collect()
    };
    let mut kills: Vec<(String, Instant, Instant)> = Vec::new();
    let mut k = 0;
    loop {
        tokio::time::sleep(kill_every.min(until.saturating_duration_since(Instant::now()))).await;
        if Instant::now() + Duration::from_secs(10) >= until {
            break;
        }
        let id = order[k % order.len()].clone();
        k += 1;
        let at = Instant::now();
        tokio::task::block_in_place(|| ov.kill9(&id));
        eprintln!("[{:>5.0}s] kill -9 {id}", (at - began).as_secs_f64());
        tokio::time::sleep(Duration::from_secs(5)).await;
        tokio::task::block_in_place(|| ov.restart(&id));
        kills.push((id, at, Instant::now()));
    }
    for w in workers {
        let _ = w.await;
    }

    let runs = runs.lock().unwrap();
    let gateway_down = |r: &Run| {
        kills.iter().any(|(id, at, back)| {
            id.starts_with("gateway") && r.start <= *back + Duration::from_secs(1) && r.end >= *at
        })
    };
    let mut report = String::new();
    let mut lost_live = 0u64;
    let mut lost_gw = 0u64;
    let mut failed_live = Vec::new();
    for kind in [Kind::Bulk, Kind::Interactive, Kind::Short] {
        let of: Vec<&Run> = runs.iter().filter(|r| r.kind == kind).collect();
        let ok = of.iter().filter(|r| r.ok).count();
        let failed: Vec<&&Run> = of.iter().filter(|r| !r.ok).collect();
        let on_dead_gw = failed.iter().filter(|r| gateway_down(r)).count();
        report += &format!(
            "{kind:?}: {} streams, {ok} completed, {} failed ({on_dead_gw} while a gateway was down)\n",
            of.len(),
            failed.len()
        );
        let refused = failed
            .iter()
            .filter(|r| r.why.starts_with("open: "))
            .count();
        report += &format!(
            "  of the failed, {refused} were refused at open (nothing sent, nothing lost)\n"
        );
        for r in failed {
            if r.why.starts_with("open: ") {
                if !gateway_down(r) {
                    failed_live.push(format!("{kind:?} refused: {}", r.why));
                }
                continue;
            }
            let lost = r.expected - r.got;
            if gateway_down(r) {
                lost_gw += lost;
            } else {
                lost_live += lost;
                failed_live.push(format!("{kind:?} after {:?}: {}", r.end - r.start, r.why));
            }
        }
    }
    let log = ov.log("client");
    let resumed = log.matches("stream resumed on a new carrier").count();
    let lost_with_carrier = log.matches("stream lost with its carrier").count();
    report += &format!(
        "streams resumed through another central or after a restart: {resumed}; lost with their carrier: {lost_with_carrier}\n"
    );
    report += &format!(
        "bytes lost: {lost_live} on streams whose gateway lived, {lost_gw} on streams while a gateway was down\n"
    );
    for f in failed_live.iter().take(20) {
        report += &format!("  failed with its gateway alive: {f}\n");
    }
    report += &format!(
        "kills: {}\n",
        kills
            .iter()
            .map(|k| k.0.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    );
    report += "RSS (KiB) start -> end:\n";
    for (id, start) in &rss_start {
        let end = if id == "client" {
            ov.client_rss_kib()
        } else {
            ov.rss_kib(id).0
        };
        report += &format!("  {id:<14} {start:>8} -> {end:>8}\n");
    }
    eprintln!("--- soak report ({total:?}) ---\n{report}");
    if let Ok(path) = std::env::var("BRAID_SOAK_REPORT") {
        std::fs::write(path, &report).unwrap();
    }
    ov.assert_no_panics();
    assert_eq!(
        lost_live, 0,
        "bytes lost on streams whose gateway lived:\n{report}"
    );
}
