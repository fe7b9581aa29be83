//! Overlay benchmark: bulk download and upload throughput, time to first byte of a new
//! stream, and peak memory of `braid demo`, per cell size, against direct loopback TCP.
//!
//! Run:  cargo bench -p braid --bench overlay
//!
//! Environment:
//! - `BRAID_BENCH_MB`     bulk transfer size in MiB (default 128)
//! - `BRAID_BENCH_CELLS`  comma-separated cell sizes (default 1024,4096,8192,16384)
//! - `BRAID_BENCH_TTFB_N` time-to-first-byte samples per configuration (default 20)
//! - `BRAID_BENCH_BIN`    the `braid` binary to measure (default: this build's)
//! - `BRAID_BENCH_REPS`   bulk transfers per direction and configuration; the best counts
//!   (default 3: on a shared 2-core machine a single run is easily disturbed)
//!
//! Method. Every transfer, direct or through the overlay, is one curl process (a new TCP
//! connection, so through the overlay a new stream) whose body is piped into this process
//! and sha256-checked on the fly; throughput and TTFB are curl's own `speed_*` and
//! `time_starttransfer`, so the overlay/direct ratios compare like with like. The origin is
//! `tests/support`'s HTTP server, running in this process on 127.0.0.1. The overlay is the
//! release `braid demo` binary as a child process with its default topology (2 upstreams,
//! 2 downstreams, 1 relay, no mixing delay), started afresh for each cell size; its logs go
//! to `target/bench-overlay-logs/`. The table is printed and appended to
//! `target/bench-overlay.md`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use braid_testkit as support;

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
/// Throughput unit in the table: MB/s with MB = 10^6 bytes.
const MB: f64 = 1e6;
/// The demo must print its SOCKS5 line within this long.
const DEMO_START_TIMEOUT: Duration = Duration::from_secs(30);
/// ... and carry a first request within this long (the gateway links on its own schedule).
const DEMO_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A transfer making less than 1 KiB/s for this many seconds is declared hung.
const STALL_SECS: u64 = 30;

struct Config {
    mb: u64,
    bytes: u64,
    cells: Vec<usize>,
    ttfb_n: usize,
    reps: usize,
}

fn env_or<T: FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}={v:?} is not valid")),
        Err(_) => Ok(default),
    }
}

impl Config {
    fn from_env() -> Result<Config> {
        let mb: u64 = env_or("BRAID_BENCH_MB", 128)?;
        ensure!(mb >= 1, "BRAID_BENCH_MB must be at least 1");
        let cells = env_or("BRAID_BENCH_CELLS", "1024,4096,8192,16384".to_string())?
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(|c| {
                c.trim()
                    .parse::<usize>()
                    .with_context(|| format!("cell size {c:?}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let ttfb_n: usize = env_or("BRAID_BENCH_TTFB_N", 20)?;
        ensure!(ttfb_n >= 1, "BRAID_BENCH_TTFB_N must be at least 1");
        let reps: usize = env_or("BRAID_BENCH_REPS", 3)?;
        ensure!(reps >= 1, "BRAID_BENCH_REPS must be at least 1");
        Ok(Config {
            mb,
            bytes: mb * MIB,
            cells,
            ttfb_n,
            reps,
        })
    }

    /// curl's hard limit for a bulk transfer: generous (0.25 MB/s), the stall check
    /// usually fires first.
    fn bulk_max_time(&self) -> u64 {
        60 + 4 * self.mb
    }
}

// ---------------------------------------------------------------------------------------
// curl

/// What one curl run reported, plus the sha256 and length of what it wrote to stdout.
struct CurlOut {
    sha256: String,
    len: u64,
    /// The first bytes of the body (for the upload digest reply).
    head: Vec<u8>,
    speed_download: f64,
    speed_upload: f64,
    ttfb: f64,
}

const WRITE_OUT: &str = "%{stderr}\nBRAIDW %{speed_download} %{speed_upload} \
                         %{time_starttransfer} %{time_total}\n";

/// Runs one curl (directly, or through `socks5h://proxy`), streaming its stdout through
/// sha256. Fails if curl fails.
fn curl(proxy: Option<SocketAddr>, args: &[&str], max_time: u64) -> Result<CurlOut> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", &max_time.to_string()])
        .args([
            "--speed-limit",
            "1024",
            "--speed-time",
            &STALL_SECS.to_string(),
        ])
        .args(["-o", "-", "-w", WRITE_OUT]);
    match proxy {
        Some(p) => cmd.arg("--proxy").arg(format!("socks5h://{p}")),
        None => cmd.arg("--noproxy").arg("*"),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("running curl (is it installed?)")?;

    let mut stdout = child.stdout.take().expect("piped");
    let mut hasher = Sha256::new();
    let mut head = Vec::new();
    let mut len = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stdout.read(&mut buf).context("reading curl's output")?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if head.len() < 256 {
            head.extend_from_slice(&buf[..n.min(256 - head.len())]);
        }
        len += n as u64;
    }
    // The write-out and any error are a few lines at most: reading them last cannot block.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)?;
    let status = child.wait()?;
    let wo = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("BRAIDW "))
        .ok_or_else(|| anyhow!("curl printed no write-out: {stderr}"))?;
    let f: Vec<f64> = wo
        .split_whitespace()
        .map(|v| {
            v.parse::<f64>()
                .with_context(|| format!("curl write-out {wo:?}"))
        })
        .collect::<Result<_>>()?;
    ensure!(f.len() == 4, "curl write-out {wo:?}");
    if !status.success() {
        let msg: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.starts_with("BRAIDW "))
            .collect();
        bail!(
            "curl {status} after {:.1} s, {len} bytes received: {}",
            f[3],
            msg.join(" ").trim()
        );
    }
    Ok(CurlOut {
        sha256: hex::encode(hasher.finalize()),
        len,
        head,
        speed_download: f[0],
        speed_upload: f[1],
        ttfb: f[2],
    })
}

/// The best of `cfg.reps` runs of a bulk transfer (each logged), in MB/s.
fn best_of(cfg: &Config, what: &str, mut run: impl FnMut() -> Result<f64>) -> Result<f64> {
    let mut best = 0.0f64;
    for i in 1..=cfg.reps {
        let speed = run().with_context(|| format!("{what}, run {i}/{}", cfg.reps))?;
        eprintln!("    {what} run {i}/{}: {speed:.1} MB/s", cfg.reps);
        best = best.max(speed);
    }
    Ok(best)
}

/// Bulk download of `GET /bytes/N`; the body must hash to the expected digest. MB/s.
fn download(
    cfg: &Config,
    proxy: Option<SocketAddr>,
    origin: SocketAddr,
    expected: &str,
) -> Result<f64> {
    let url = format!("http://{origin}/bytes/{}", cfg.bytes);
    let out = curl(proxy, &[&url], cfg.bulk_max_time()).context("bulk download")?;
    ensure!(
        out.len == cfg.bytes && out.sha256 == expected,
        "DOWNLOAD CORRUPTED: got {} bytes with sha256 {}, expected {} bytes with sha256 {}",
        out.len,
        out.sha256,
        cfg.bytes,
        expected
    );
    Ok(out.speed_download / MB)
}

/// Bulk `PUT /upload` of the file; the origin's reply (the sha256 of what it received)
/// must equal the local file's digest. MB/s.
fn upload(
    cfg: &Config,
    proxy: Option<SocketAddr>,
    origin: SocketAddr,
    file: &Path,
    file_sha: &str,
) -> Result<f64> {
    let url = format!("http://{origin}/upload");
    let path = file.to_str().context("upload path is not UTF-8")?;
    let out = curl(proxy, &["-T", path, &url], cfg.bulk_max_time()).context("bulk upload")?;
    let reply = String::from_utf8_lossy(&out.head).trim().to_string();
    ensure!(
        reply == file_sha,
        "UPLOAD CORRUPTED: the origin hashed {reply:?}, the local file is {file_sha}"
    );
    Ok(out.speed_upload / MB)
}

/// Median time to first byte, in ms, of `n` sequential small requests, each its own curl
/// and connection (through the overlay: each a new stream).
fn ttfb_ms(n: usize, proxy: Option<SocketAddr>, origin: SocketAddr) -> Result<f64> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let marker = format!("ttfb-{i}");
        let url = format!("http://{origin}/echo/{marker}");
        let out = curl(proxy, &[&url], 30).with_context(|| format!("TTFB sample {i}"))?;
        ensure!(
            out.head == marker.as_bytes(),
            "TTFB sample {i}: echo came back as {:?}",
            String::from_utf8_lossy(&out.head)
        );
        samples.push(out.ttfb * 1000.0);
    }
    Ok(median(samples))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------
// The demo child process

struct DemoProc {
    child: Child,
    socks: SocketAddr,
    log: PathBuf,
    stopped: bool,
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl DemoProc {
    fn start(cell: usize, log: PathBuf) -> Result<DemoProc> {
        let socks = SocketAddr::from((
            [127, 0, 0, 1],
            support::free_port([127, 0, 0, 1].into(), false),
        ));
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        // BRAID_BENCH_BIN measures another build of `braid` (say, the one before a change)
        // under the same conditions as this one.
        let bin = std::env::var_os("BRAID_BENCH_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_braid")));
        let mut child = Command::new(bin)
            .args([
                "demo",
                "--socks",
                &socks.to_string(),
                "--cell-size",
                &cell.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawning braid demo")?;
        // Watch stdout for the ready line, and keep draining it afterwards.
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("SOCKS5 listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let mut demo = DemoProc {
            child,
            socks,
            log,
            stopped: false,
        };
        match rx.recv_timeout(DEMO_START_TIMEOUT) {
            Ok(addr) => {
                demo.socks = addr
                    .parse()
                    .with_context(|| format!("SOCKS5 address {addr:?}"))?;
                ensure!(
                    demo.socks == socks,
                    "demo listens on {} instead of {socks}",
                    demo.socks
                );
                Ok(demo)
            }
            Err(e) => bail!(
                "braid demo never printed its SOCKS5 line ({e}); log tail:\n{}",
                log_tail(&demo.log, 20)
            ),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a request through the overlay succeeds; returns how long that took.
    fn wait_ready(&self, origin: SocketAddr) -> Result<Duration> {
        let t0 = Instant::now();
        let url = format!("http://{origin}/echo/ready");
        loop {
            match curl(Some(self.socks), &[&url], 5) {
                Ok(out) if out.head == b"ready" => return Ok(t0.elapsed()),
                Ok(_) | Err(_) if t0.elapsed() < DEMO_READY_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(out) => bail!("overlay not ready: echo came back as {:?}", out.head),
                Err(e) => return Err(e.context("overlay not ready within 60 s")),
            }
        }
    }

    /// Peak resident set size (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .context("no VmHWM in /proc/<pid>/status")?;
        let kib = line.trim().trim_end_matches("kB").trim();
        kib.parse().with_context(|| format!("VmHWM {line:?}"))
    }

    /// SIGINT, then up to 5 s for a clean exit, then SIGKILL. Returns a note if it lingered.
    fn stop(&mut self) -> Option<String> {
        self.stopped = true;
        let _ = Command::new("kill")
            .args(["-INT", &self.pid().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Some("demo ignored SIGINT for 5 s, killed".into())
    }
}

impl Drop for DemoProc {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The run

struct Baseline {
    down: f64,
    up: f64,
    ttfb: f64,
}

struct Row {
    ready: Duration,
    down: f64,
    up: f64,
    ttfb: f64,
    rss_mib: f64,
}

struct Env<'a> {
    cfg: &'a Config,
    origin: SocketAddr,
    expected: &'a str,
    upload_file: &'a Path,
}

fn measure_cell(env: &Env<'_>, demo: &DemoProc, cell: usize) -> Result<Row> {
    let ready = demo.wait_ready(env.origin)?;
    eprintln!(
        "  cell {cell}: overlay ready after {:.2} s",
        ready.as_secs_f64()
    );
    let down = best_of(env.cfg, "download", || {
        download(env.cfg, Some(demo.socks), env.origin, env.expected)
    })?;
    eprintln!("  cell {cell}: download {down:.1} MB/s");
    let up = best_of(env.cfg, "upload", || {
        upload(
            env.cfg,
            Some(demo.socks),
            env.origin,
            env.upload_file,
            env.expected,
        )
    })?;
    eprintln!("  cell {cell}: upload {up:.1} MB/s");
    let ttfb = ttfb_ms(env.cfg.ttfb_n, Some(demo.socks), env.origin)?;
    eprintln!("  cell {cell}: TTFB median {ttfb:.2} ms");
    let rss_mib = demo.peak_rss_kib()? as f64 / 1024.0;
    eprintln!("  cell {cell}: peak RSS {rss_mib:.1} MiB");
    Ok(Row {
        ready,
        down,
        up,
        ttfb,
        rss_mib,
    })
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

/// The commit, marked when the working tree has uncommitted changes (read-only git calls).
fn git_rev() -> String {
    let rev = command_line("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = command_line("git", &["status", "--porcelain", "--untracked-files=no"]);
    if dirty.is_empty() || dirty == "?" {
        rev
    } else {
        format!("{rev} (+uncommitted changes)")
    }
}

fn main() -> Result<()> {
    let cfg = Config::from_env()?;
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // target/ is two levels above target/<profile>/braid.
    let target = Path::new(env!("CARGO_BIN_EXE_braid"))
        .parent()
        .and_then(Path::parent)
        .context("locating target/")?
        .to_path_buf();
    let logs = target.join("bench-overlay-logs");
    std::fs::create_dir_all(&logs)?;

    let rt = tokio::runtime::Runtime::new()?;
    let origin = rt.block_on(support::start_origin([127, 0, 0, 1]));
    eprintln!("origin on {origin}; bulk size {} MiB", cfg.mb);

    let expected = support::expected_sha256(cfg.bytes);
    let upload_file = target.join("bench-overlay-upload.bin");
    support::write_body_file(&upload_file, cfg.bytes);
    let file_sha = sha256_file(&upload_file)?;
    ensure!(
        file_sha == expected,
        "the upload file does not hash as /bytes/N does"
    );
    let env = Env {
        cfg: &cfg,
        origin,
        expected: &expected,
        upload_file: &upload_file,
    };

    eprintln!("baseline (direct loopback TCP)...");
    let base = Baseline {
        down: best_of(&cfg, "download", || download(&cfg, None, origin, &expected))?,
        up: best_of(&cfg, "upload", || {
            upload(&cfg, None, origin, &upload_file, &expected)
        })?,
        ttfb: ttfb_ms(cfg.ttfb_n, None, origin)?,
    };
    eprintln!(
        "  direct: download {:.1} MB/s, upload {:.1} MB/s, TTFB {:.3} ms",
        base.down, base.up, base.ttfb
    );

    let mut rows: Vec<(usize, Result<Row>, Option<String>)> = Vec::new();
    for &cell in &cfg.cells {
        eprintln!("cell size {cell}: starting braid demo...");
        let log = logs.join(format!("demo-cell-{cell}.log"));
        let (result, note) = match DemoProc::start(cell, log) {
            Ok(mut demo) => {
                let r = measure_cell(&env, &demo, cell);
                if let Err(e) = &r {
                    eprintln!(
                        "  cell {cell}: FAILED: {e:#}\n  demo log tail ({}):\n{}",
                        demo.log.display(),
                        log_tail(&demo.log, 15)
                    );
                }
                (r, demo.stop())
            }
            Err(e) => (Err(e), None),
        };
        rows.push((cell, result, note));
    }
    let _ = std::fs::remove_file(&upload_file);

    // The report.
    let mut md = String::new();
    writeln!(
        md,
        "\n## braid overlay bench — {} — rev {} — {} MiB bulk (best of {}), {} TTFB samples\n",
        command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        git_rev(),
        cfg.mb,
        cfg.reps,
        cfg.ttfb_n
    )?;
    writeln!(
        md,
        "Baseline (direct loopback TCP, curl): download {:.1} MB/s, upload {:.1} MB/s, \
         TTFB median {:.3} ms\n",
        base.down, base.up, base.ttfb
    )?;
    md.push_str(
        "| cell size | download MB/s | ratio vs direct | upload MB/s | TTFB ms (ratio vs direct) | peak RSS MiB |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    let mut failures = 0;
    let mut notes = Vec::new();
    for (cell, result, note) in &rows {
        match result {
            Ok(r) => {
                writeln!(
                    md,
                    "| {cell} | {:.1} | {:.3} | {:.1} | {:.2} ({:.1}x) | {:.1} |",
                    r.down,
                    r.down / base.down,
                    r.up,
                    r.ttfb,
                    r.ttfb / base.ttfb,
                    r.rss_mib
                )?;
                notes.push(format!(
                    "cell {cell}: first request carried after {:.2} s",
                    r.ready.as_secs_f64()
                ));
            }
            Err(e) => {
                failures += 1;
                let msg = format!("{e:#}").replace('|', "/").replace('\n', " ");
                writeln!(md, "| {cell} | FAILED: {msg} | | | | |")?;
            }
        }
        if let Some(n) = note {
            notes.push(format!("cell {cell}: {n}"));
        }
    }
    writeln!(
        md,
        "\nMB = 10^6 bytes; throughput is curl's speed_download/speed_upload, the best of \
         {} transfers of {} MiB each (every one sha256-checked); TTFB is the median time_starttransfer of new \
         connections (new overlay streams); demo topology: 2 upstreams, 2 downstreams, \
         1 relay, no mixing; peak RSS is the demo process's VmHWM after the transfers.",
        cfg.reps, cfg.mb
    )?;
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    notes.push(format!(
        "load average (1/5/15 min) before: {}, after: {} ({} CPUs)",
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        std::thread::available_parallelism().map_or(0, usize::from)
    ));
    for n in notes {
        writeln!(md, "- {n}")?;
    }

    print!("{md}");
    let report = target.join("bench-overlay.md");
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&report)
        .and_then(|mut f| f.write_all(md.as_bytes()))
        .with_context(|| format!("appending to {}", report.display()))?;
    eprintln!("appended to {}", report.display());
    drop(rt);
    ensure!(failures == 0, "{failures} cell size(s) failed, see above");
    Ok(())
}
