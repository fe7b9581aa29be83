//! Runs a test inside a fresh network namespace that has only loopback, so a test that
//! aims at a forbidden address cannot reach anything else: if the exit policy failed,
//! the gateway's connect would get "network unreachable" (SOCKS reply 0x03) instead of
//! the policy's "not allowed" (0x02), and the test fails.
//!
//! ```ignore
//! #[test]
//! fn my_test() {
//!     if netns::run_in_fresh_netns("my_test") {
//!         return; // the body ran (and passed) inside the namespace
//!     }
//!     // ... body, inside the namespace ...
//! }
//! ```
//!
//! Needs root and iproute2's `ip` (Linux only).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Set (to "1") in the child that runs inside the namespace.
pub const IN_NETNS: &str = "BRAID_IN_NETNS";

/// How long the test inside the namespace may run before it is killed.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(300);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// True when this process is the copy running inside a namespace.
pub fn inside() -> bool {
    std::env::var_os(IN_NETNS).is_some()
}

/// If this process is not inside a namespace: makes one with only `lo` up, runs
/// `test_name` (the exact libtest name) of this test binary inside it, asserts that it ran
/// and passed, deletes the namespace (also on failure) and returns true: the caller
/// returns. Inside the namespace, returns false: the caller runs the body.
pub fn run_in_fresh_netns(test_name: &str) -> bool {
    run_in_fresh_netns_with(test_name, None)
}

/// [`run_in_fresh_netns`], and inside the namespace `/etc/resolv.conf` reads
/// `resolv_conf` when given (`ip netns exec` bind-mounts `/etc/netns/NAME/resolv.conf`
/// over it), so the system resolver can be pointed at a server the test runs.
pub fn run_in_fresh_netns_with(test_name: &str, resolv_conf: Option<&str>) -> bool {
    if inside() {
        return false;
    }
    preflight();
    let ns = Namespace::create();
    if let Some(text) = resolv_conf {
        let dir = ns.etc_dir();
        std::fs::create_dir_all(&dir).expect("creating /etc/netns/NAME");
        std::fs::write(dir.join("resolv.conf"), text).expect("writing the namespace's resolv.conf");
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    run_child(&ns.name, &exe, test_name);
    true
}

/// Fails with a clear message if the namespace machinery is missing.
fn preflight() {
    let ip = Command::new("ip").arg("-V").output();
    assert!(
        ip.as_ref().is_ok_and(|o| o.status.success()),
        "these tests run in a network namespace and need iproute2's `ip` \
         (apt-get install iproute2): {ip:?}"
    );
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    assert_eq!(
        euid, "0",
        "these tests create network namespaces (`ip netns add`) and must run as root \
         (effective uid is {euid})"
    );
}

/// A named network namespace, deleted on drop.
struct Namespace {
    name: String,
}

impl Namespace {
    fn create() -> Namespace {
        let name = format!(
            "braid-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        // From here on, Drop deletes it, whatever happens next.
        let ns = Namespace { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Namespace {
    /// `/etc/netns/NAME`: files here replace their `/etc` namesakes inside the namespace.
    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.etc_dir());
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            other => eprintln!(
                "could not delete network namespace {}: {other:?}",
                self.name
            ),
        }
    }
}

#[track_caller]
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn run_child(ns: &str, exe: &PathBuf, test_name: &str) {
    // `ip netns exec` execs the program in place (after entering the namespace), so the
    // child's pid is the test binary's and killing it on a timeout stops the test.
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(IN_NETNS, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the test inside the namespace");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + CHILD_DEADLINE;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    // Show what happened inside (libtest captures this unless --nocapture).
    println!("----- {test_name} in netns {ns}: stdout -----\n{out}");
    eprintln!("----- {test_name} in netns {ns}: stderr -----\n{err}");
    let status = status.unwrap_or_else(|| {
        panic!("{test_name} did not finish within {CHILD_DEADLINE:?} inside netns {ns}")
    });
    assert!(
        status.success(),
        "{test_name} failed inside netns {ns}: {status}"
    );
    // A misspelt name runs zero tests and "passes": make sure exactly this one ran.
    assert!(
        out.contains(&format!("test {test_name} ..."))
            && out.contains("test result: ok. 1 passed;"),
        "{test_name} did not run inside netns {ns} (is the name exact?)"
    );
}
