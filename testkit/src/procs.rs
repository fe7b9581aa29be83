//! An overlay of separate processes: every node is a `braid-node` process with its own
//! config, keys and 127.a.b.N address, and the client is a `braid run` process. Tests use it
//! where a process boundary matters: kill -9, SIGTERM, per-process RSS.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use braid_config::{Directory, Layout, NodeEntry, Role};
use braid_net::NodeIdentity;

use crate::free_port;

pub struct ProcOptions {
    pub layout: Layout,
    pub cell_size: u32,
    /// Extra TOML lines for the central's config (caps, timeouts).
    pub central_extra: String,
    /// Extra top-level TOML lines for every node (e.g. drain settings).
    pub node_extra: String,
    /// Extra TOML lines for the client's config (keepalive, timeouts).
    pub client_extra: String,
    /// Extra top-level TOML lines for every gateway's config (grace, buffers).
    pub gateway_extra: String,
    /// An operator key in the directory (made by `braid-node operator init` in the
    /// overlay's `operator` folder): first hops want credentials, and the client gets one
    /// (`braid-node user add client`).
    pub operator: bool,
}

impl Default for ProcOptions {
    fn default() -> Self {
        ProcOptions {
            layout: Layout::default(),
            cell_size: 8192,
            central_extra: String::new(),
            node_extra: String::new(),
            client_extra: String::new(),
            gateway_extra: String::new(),
            operator: false,
        }
    }
}

pub struct ProcNode {
    pub id: String,
    pub role: Role,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    child: Option<Child>,
}

pub struct ProcOverlay {
    pub dir: tempfile::TempDir,
    pub net: [u8; 3],
    pub nodes: Vec<ProcNode>,
    pub directory: Directory,
    pub socks: SocketAddr,
    /// The client's admin port (`braid status`).
    pub client_admin: SocketAddr,
    client: Option<Child>,
    /// More client processes (`add_client`), killed with the overlay.
    extra_clients: Vec<(String, Child)>,
}

/// A workspace binary (`braid-node`, `braid`): it sits beside the test binary's folder
/// (`target/<profile>/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace` (or `cargo build --workspace`) first",
        bin.display()
    );
    bin
}

pub fn braid_node_bin() -> PathBuf {
    workspace_bin("braid-node")
}

/// Runs `braid-node ARGS --dir DIR` (`operator init`, `user ...`); its standard output.
fn run_tool(dir: &Path, args: &[&str]) -> String {
    let (group, rest) = args.split_first().unwrap();
    let out = Command::new(braid_node_bin())
        .arg(group)
        .arg("--dir")
        .arg(dir)
        .args(rest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "braid-node {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn spawn(bin: &Path, args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin)
        .args(args)
        // BRAID_TEST_LOG=debug (or a filter) shows more of the nodes' logs in a failure.
        .env(
            "BRAID_LOG_FILTER",
            std::env::var("BRAID_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// A tiny HTTP GET against an admin port.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

impl ProcOverlay {
    pub fn start(o: ProcOptions) -> ProcOverlay {
        let dir = tempfile::tempdir().unwrap();
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        };
        let net = [127, 64 + (seed % 180) as u8, 1 + ((seed >> 8) % 250) as u8];
        let ip = |host: u8| IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], host));
        let layout = o.layout.nodes();
        let operator_key = o.operator.then(|| {
            let out = run_tool(&dir.path().join("operator"), &["operator", "init"]);
            let hex = out
                .trim()
                .strip_prefix("operator_key = \"")
                .and_then(|s| s.strip_suffix('"'))
                .expect("operator init prints the key");
            braid_config::hex32::decode(hex).unwrap()
        });

        let mut entries = Vec::new();
        let mut nodes = Vec::new();
        for (i, (id, role)) in layout.into_iter().enumerate() {
            let host = (i + 2) as u8;
            let identity = NodeIdentity::generate(&mut rand::rng()).unwrap();
            let keydir = dir.path().join("keys").join(&id);
            identity.save(&keydir).unwrap();
            let addr = SocketAddr::new(ip(host), free_port(ip(host), true));
            let admin = SocketAddr::new(ip(host), free_port(ip(host), false));
            entries.push(NodeEntry::new(
                id.clone(),
                role,
                Some(addr),
                identity.noise_public(),
                identity.tls_public(),
            ));
            let mut cfg = format!("role = \"{}\"\n", role.as_str());
            match role {
                Role::Upstream | Role::Relay => {
                    cfg += &format!("listen = \"{addr}\"\n");
                    if o.operator {
                        cfg += "revoked = \"operator/revoked.txt\"\n";
                    }
                }
                Role::Central => cfg += &format!("listen = \"{addr}\"\n{}\n", o.central_extra),
                Role::Gateway => cfg += &format!("{}\n", o.gateway_extra),
                Role::Downstream => {}
            }
            cfg += &o.node_extra;
            cfg += &format!(
                "\n[node]\nid = \"{id}\"\ndirectory = \"directory.toml\"\nidentity = \"keys/{id}\"\nadmin = \"{admin}\"\n"
            );
            // With an operator, the directory is signed and every node pins its key.
            if let Some(k) = operator_key {
                cfg += &format!("directory_key = \"{}\"\n", hex::encode(k));
            }
            if role == Role::Gateway {
                cfg += "\n[exit]\nallow_loopback = true\n";
            }
            let config = dir.path().join(format!("{id}.toml"));
            std::fs::write(&config, cfg).unwrap();
            nodes.push(ProcNode {
                id,
                role,
                addr,
                admin,
                config,
                child: None,
            });
        }
        let mut directory = Directory::validated(o.cell_size, entries).unwrap();
        directory.operator_key = operator_key;
        let directory_file = dir.path().join("directory.toml");
        std::fs::write(&directory_file, directory.to_toml_string()).unwrap();
        if o.operator {
            run_tool(
                &dir.path().join("operator"),
                &[
                    "directory",
                    "sign",
                    directory_file.to_str().unwrap(),
                    "--version",
                    "1",
                ],
            );
            directory = braid_config::load_directory(&directory_file).unwrap();
        }
        let bin = braid_node_bin();
        for n in &mut nodes {
            let log = dir.path().join(format!("{}.log", n.id));
            n.child = Some(spawn(&bin, &["--config", n.config.to_str().unwrap()], &log));
        }
        let mut ov = ProcOverlay {
            dir,
            net,
            nodes,
            directory,
            socks: SocketAddr::new(ip(1), 0),
            client_admin: SocketAddr::new(ip(1), 0),
            client: None,
            extra_clients: Vec::new(),
        };
        // Ready: every admin port answers, and every dialing node has linked to every central.
        let deadline = Instant::now() + Duration::from_secs(30);
        let centrals = ov.directory.centrals().count() as u64;
        for i in 0..ov.nodes.len() {
            loop {
                let n = &ov.nodes[i];
                let ok = match n.role {
                    Role::Upstream | Role::Downstream | Role::Gateway => {
                        ov.metric(&n.id, "braid_links_up") >= centrals
                    }
                    _ => {
                        http_get(n.admin, "/health").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
                    }
                };
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never became ready:\n{}",
                    n.id,
                    ov.log(&n.id)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if o.operator {
            ov.user(&["add", "client"]);
            ov.start_client(&format!(
                "credential = \"operator/client.cred\"\n{}",
                o.client_extra
            ));
        } else {
            ov.start_client(&o.client_extra);
        }
        ov
    }

    /// Issues a join credential (`braid-node operator join --role ROLE ARGS`) from the
    /// overlay's operator folder, or from `operator` (another folder, e.g. a forger's);
    /// returns the join file's path.
    pub fn issue_join(
        &self,
        name: &str,
        role: Role,
        args: &[&str],
        operator: Option<&Path>,
    ) -> PathBuf {
        let out = self.dir.path().join(format!("{name}.join"));
        let op = operator
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir.path().join("operator"));
        let mut all = vec![
            "operator",
            "join",
            "--role",
            role.as_str(),
            "--out",
            out.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run_tool(&op, &all);
        out
    }

    /// Starts a node that is not in the directory and joins with `join` (a join file):
    /// id `id`, role `role`, a fresh host address, keys it makes itself in `keys/ID`
    /// (or in `keys/KEYS` when given: a second process of one id rotates its key), `extra`
    /// more `[node]` lines. Does not wait for it.
    pub fn join_node(
        &mut self,
        id: &str,
        keys: &str,
        role: Role,
        join: &Path,
        extra: &str,
    ) -> &ProcNode {
        let host = (self.nodes.len() + 2) as u8;
        let ip = IpAddr::V4(Ipv4Addr::new(self.net[0], self.net[1], self.net[2], host));
        let addr = SocketAddr::new(ip, free_port(ip, true));
        let admin = SocketAddr::new(ip, free_port(ip, false));
        let mut cfg = format!("role = \"{}\"\n", role.as_str());
        if role == Role::Upstream {
            cfg += &format!("listen = \"{addr}\"\nrevoked = \"operator/revoked.txt\"\n");
        }
        cfg += &format!(
            "\n[node]\nid = \"{id}\"\ndirectory = \"directory.toml\"\nidentity = \"keys/{keys}\"\nadmin = \"{admin}\"\njoin = \"{}\"\n{extra}\n",
            join.display()
        );
        if let Some(k) = self.directory.operator_key {
            cfg += &format!("directory_key = \"{}\"\n", hex::encode(k));
        }
        let name = if keys == id {
            id.to_string()
        } else {
            keys.to_string()
        };
        let config = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&config, cfg).unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let child = spawn(
            &braid_node_bin(),
            &["--config", config.to_str().unwrap()],
            &log,
        );
        self.nodes.push(ProcNode {
            id: name,
            role,
            addr,
            admin,
            config,
            child: Some(child),
        });
        self.nodes.last().unwrap()
    }

    /// Runs `braid-node user ARGS` on the overlay's operator folder; its output.
    pub fn user(&self, args: &[&str]) -> String {
        let mut all = vec!["user"];
        all.extend_from_slice(args);
        run_tool(&self.dir.path().join("operator"), &all)
    }

    /// Starts `braid run` as NAME with `extra` config lines and waits for it to exit, at
    /// most `deadline`: (whether it exited, how long it ran, its log).
    pub fn client_until_exit(
        &self,
        name: &str,
        extra: &str,
        deadline: Duration,
    ) -> (bool, Duration, String) {
        let ip = IpAddr::V4(Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 1));
        let socks = SocketAddr::new(ip, free_port(ip, false));
        let admin = SocketAddr::new(ip, free_port(ip, false));
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "directory = \"directory.toml\"\nsocks_listen = \"{socks}\"\nadmin = \"{admin}\"\n{extra}\n"
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let start = Instant::now();
        let mut child = spawn(
            &workspace_bin("braid"),
            &["run", "--config", path.to_str().unwrap()],
            &log,
        );
        let exited = loop {
            if child.try_wait().unwrap().is_some() {
                break true;
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        (exited, start.elapsed(), self.log(name))
    }

    fn start_client(&mut self, extra: &str) {
        let (child, socks, admin) = self.spawn_client("client", extra);
        self.client = Some(child);
        self.socks = socks;
        self.client_admin = admin;
    }

    /// Starts one more `braid run` process (its log is `NAME.log`) beside the first, with
    /// its own session; returns its SOCKS5 address.
    pub fn add_client(&mut self, name: &str, extra: &str) -> SocketAddr {
        let (child, socks, _) = self.spawn_client(name, extra);
        self.extra_clients.push((name.to_string(), child));
        socks
    }

    /// The process id of the client `add_client` started as `name`.
    pub fn client_pid(&self, name: &str) -> Option<u32> {
        self.extra_clients
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.id())
    }

    fn spawn_client(&self, name: &str, extra: &str) -> (Child, SocketAddr, SocketAddr) {
        let ip = IpAddr::V4(Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 1));
        let socks = SocketAddr::new(ip, free_port(ip, false));
        let admin = SocketAddr::new(ip, free_port(ip, false));
        let pin = match self.directory.operator_key {
            Some(k) => format!("directory_key = \"{}\"\n", hex::encode(k)),
            None => String::new(),
        };
        let cfg = format!(
            "directory = \"directory.toml\"\n{pin}socks_listen = \"{socks}\"\nadmin = \"{admin}\"\n{extra}\n"
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, cfg).unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let bin = workspace_bin("braid");
        let child = spawn(&bin, &["run", "--config", path.to_str().unwrap()], &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&socks, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{name} never served SOCKS5:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (child, socks, admin)
    }

    pub fn node(&self, id: &str) -> &ProcNode {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    /// A node's pid; `"client"` names the `braid run` process.
    pub fn pid(&self, id: &str) -> u32 {
        if id == "client" {
            return self.client.as_ref().unwrap().id();
        }
        self.node(id).child.as_ref().unwrap().id()
    }

    /// The value of a counter on a node's `/metrics`, 0 if absent or the node is down.
    pub fn metric(&self, id: &str, name: &str) -> u64 {
        let Some(body) = http_get(self.node(id).admin, "/metrics") else {
            return 0;
        };
        body.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resident set size (VmRSS) and its peak (VmHWM) of a node, in KiB.
    pub fn rss_kib(&self, id: &str) -> (u64, u64) {
        rss_of(self.pid(id))
    }

    /// The client process's current RSS in KiB.
    pub fn client_rss_kib(&self) -> u64 {
        rss_of(self.client.as_ref().unwrap().id()).0
    }

    /// The ids of the overlay's nodes, in directory order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.iter().map(|n| n.id.as_str())
    }

    fn signal(&self, id: &str, sig: &str) {
        let pid = self.pid(id).to_string();
        let st = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(st.success());
    }

    /// SIGHUP: the node reloads what it can (its revocation list).
    pub fn sighup(&self, id: &str) {
        self.signal(id, "-HUP");
    }

    /// SIGTERM, without waiting: the node drains.
    pub fn sigterm(&self, id: &str) {
        self.signal(id, "-TERM");
    }

    /// Waits until node `id` has taken in `n` cells (`braid_cells_in_total`), for at most
    /// 60 s; fails at once when `running` says the transfer meant to feed it has ended.
    pub async fn wait_cells(&self, id: &str, n: u64, running: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric(id, "braid_cells_in_total") < n {
            assert!(
                Instant::now() < deadline && running(),
                "{id} did not carry {n} cells while the transfer ran"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `id`'s log has `line` `times` times (at most `limit`); how long it took.
    pub async fn wait_for_log(
        &self,
        id: &str,
        line: &str,
        times: usize,
        limit: Duration,
    ) -> Duration {
        let t = Instant::now();
        while self.log(id).matches(line).count() < times {
            assert!(
                t.elapsed() < limit,
                "{id} never logged {line:?}:\n{}",
                self.log(id)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        t.elapsed()
    }

    /// A node's `/health` answer: the status line's code and the body.
    pub fn health(&self, id: &str) -> Option<(u16, String)> {
        let r = http_get(self.node(id).admin, "/health")?;
        let code = r.split_whitespace().nth(1)?.parse().ok()?;
        let body = r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        Some((code, body))
    }

    /// Starts a stopped node again from its config (same keys, same address); returns once
    /// its admin port answers.
    pub fn restart(&mut self, id: &str) {
        let bin = braid_node_bin();
        let log = self.dir.path().join(format!("{id}.log.restart"));
        let n = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        n.child = Some(spawn(&bin, &["--config", n.config.to_str().unwrap()], &log));
        let admin = n.admin;
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(admin, "/health").is_none() {
            assert!(Instant::now() < deadline, "{id} did not come back");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// kill -9 of the client process.
    pub fn kill9_client(&mut self) {
        let c = self.client.as_mut().unwrap();
        let st = Command::new("kill")
            .args(["-KILL", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let _ = c.wait();
    }

    /// kill -9: the node vanishes without a goodbye.
    pub fn kill9(&mut self, id: &str) {
        self.signal(id, "-KILL");
        let n = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        let _ = n.child.as_mut().unwrap().wait();
    }

    /// SIGTERM, then wait for the process to exit; returns how long it took.
    pub fn terminate(&mut self, id: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        self.signal(id, "-TERM");
        let n = self.nodes.iter_mut().find(|n| n.id == id).unwrap();
        let child = n.child.as_mut().unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                return t0.elapsed();
            }
            if t0.elapsed() >= limit {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = self.log(id);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        panic!("{id} did not exit within {limit:?}; its log ends:\n{tail}");
    }

    pub fn log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{id}.log"))).unwrap_or_default()
    }

    /// Every node still alive has counted no panic.
    pub fn assert_no_panics(&self) {
        for n in &self.nodes {
            if n.child.is_some() && http_get(n.admin, "/health").is_some() {
                assert_eq!(
                    self.metric(&n.id, "braid_panics_total"),
                    0,
                    "{} panicked",
                    n.id
                );
            }
            assert!(
                !self.log(&n.id).contains("panicked"),
                "{} panicked:\n{}",
                n.id,
                self.log(&n.id)
            );
        }
        assert!(
            !self.log("client").contains("panicked"),
            "the client panicked"
        );
    }
}

impl Drop for ProcOverlay {
    fn drop(&mut self) {
        for c in self
            .nodes
            .iter_mut()
            .filter_map(|n| n.child.as_mut())
            .chain(self.client.as_mut())
            .chain(self.extra_clients.iter_mut().map(|(_, c)| c))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// (VmRSS, VmHWM) of process `pid`, in KiB.
fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
