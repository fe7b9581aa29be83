//! `braid-node --config FILE` runs one role; `braid-node keygen --out DIR` makes an identity;
//! `braid-node operator init` and `braid-node user ...` are the operator's credential tools.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use braid_config::{load_node_config, load_trusted_directory};
use braid_net::NodeIdentity;
use braid_node::NodeContext;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "braid-node",
    version,
    about = "Runs one Braid node (any role, chosen by its config)"
)]
struct Cli {
    /// The node's TOML config (role, addresses, identity, directory).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a new node identity (Noise static key, TLS key and certificate) to DIR and
    /// prints its public half for the directory.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// The operator key, which signs user credentials.
    Operator {
        /// The operator folder.
        #[arg(long, default_value = "operator")]
        dir: PathBuf,
        #[command(subcommand)]
        cmd: OperatorCmd,
    },
    /// The directory: sign it with the operator key.
    Directory {
        /// The operator folder (`operator init` made it).
        #[arg(long, default_value = "operator")]
        dir: PathBuf,
        #[command(subcommand)]
        cmd: DirectoryCmd,
    },
    /// Asks a node's admin port: prints its /health (exit 0 when healthy, 1 if not) or,
    /// with --metrics, its /metrics. For health checks where no HTTP client exists (the
    /// FROM scratch image: `docker exec NODE braid-node admin 127.0.0.1:9100`).
    Admin {
        addr: std::net::SocketAddr,
        #[arg(long)]
        metrics: bool,
    },
    /// Users: credentials to hand out, and their revocation.
    User {
        /// The operator folder (`operator init` made it).
        #[arg(long, default_value = "operator")]
        dir: PathBuf,
        #[command(subcommand)]
        cmd: UserCmd,
    },
}

#[derive(Subcommand)]
enum DirectoryCmd {
    /// Signs FILE in place: its version goes up by one (or to --version), it expires
    /// --valid-secs from now, and it names this operator's key.
    Sign {
        file: PathBuf,
        #[arg(long)]
        version: Option<u64>,
        /// How long the signed directory is taken, in seconds (0: no expiry).
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        valid_secs: u64,
    },
}

#[derive(Subcommand)]
enum OperatorCmd {
    /// Makes DIR/operator.key (0600), an empty users.toml and revoked.txt; prints the
    /// `operator_key` line for the directory.
    Init,
    /// Issues a join credential: nodes of ROLE with `[node] join = "FILE"` join the running
    /// network (register with every central) without being in the directory.
    Join {
        /// upstream, downstream or gateway.
        #[arg(long)]
        role: braid_config::Role,
        /// Where the join file goes (0600).
        #[arg(long)]
        out: PathBuf,
        /// Only one node id may use it (default: any number, for a scaled service).
        #[arg(long)]
        single: bool,
        /// How long it is valid, in seconds (default 30 days).
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        valid_secs: u64,
        /// When validity starts, in seconds from now (negative: in the past).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        starts_in_secs: i64,
    },
}

#[derive(clap::Args)]
struct IssueArgs {
    /// How long the credential is valid, in seconds (default 30 days).
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    valid_secs: u64,
    /// When validity starts, in seconds from now (negative: in the past).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    starts_in_secs: i64,
    /// Bytes per second over the whole network, in KiB (0: no limit).
    #[arg(long, default_value_t = 0)]
    rate_kib: u32,
    /// Concurrent sessions (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_sessions: u32,
    /// Concurrent streams (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_streams: u32,
    /// MiB per validity window (0: no limit).
    #[arg(long, default_value_t = 0)]
    quota_mib: u64,
}

impl IssueArgs {
    fn options(&self) -> braid_node::operator::IssueOptions {
        braid_node::operator::IssueOptions {
            valid_secs: self.valid_secs,
            starts_in_secs: self.starts_in_secs,
            limits: braid_proto::credential::UserLimits {
                rate_kib: self.rate_kib,
                max_sessions: self.max_sessions,
                max_streams: self.max_streams,
                quota_mib: self.quota_mib,
            },
        }
    }
}

#[derive(Subcommand)]
enum UserCmd {
    /// Issues NAME a credential; writes DIR/NAME.cred (0600) to hand to the user.
    Add {
        name: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
    /// Every credential issued.
    List,
    /// NAME's credentials.
    Show { name: String },
    /// Revokes NAME's credentials; rewrites DIR/revoked.txt for the first hops.
    Revoke { name: String },
    /// Issues NAME a new credential (new key, new validity); the old one runs out.
    Renew {
        name: String,
        #[command(flatten)]
        issue: IssueArgs,
    },
}

fn operator_cmd(dir: &std::path::Path, cmd: OperatorCmd) -> anyhow::Result<()> {
    match cmd {
        OperatorCmd::Init => {
            let key = braid_node::operator::Operator::init(dir)?;
            println!("operator_key = \"{key}\"");
            Ok(())
        }
        OperatorCmd::Join {
            role,
            out,
            single,
            valid_secs,
            starts_in_secs,
        } => {
            let op = braid_node::operator::Operator::open(dir)?;
            op.issue_join(role, single, valid_secs, starts_in_secs, &out)?;
            println!("{}: join credential for {role} nodes", out.display());
            Ok(())
        }
    }
}

fn user_cmd(dir: &std::path::Path, cmd: UserCmd) -> anyhow::Result<()> {
    use braid_node::operator::{describe, Operator};
    let op = Operator::open(dir)?;
    match cmd {
        UserCmd::Add { name, issue } => {
            println!("{}", op.issue(&name, issue.options(), false)?.display());
        }
        UserCmd::Renew { name, issue } => {
            println!("{}", op.issue(&name, issue.options(), true)?.display());
        }
        UserCmd::List => {
            for c in op.list()? {
                println!("{}", describe(&c));
            }
        }
        UserCmd::Show { name } => {
            let mine: Vec<_> = op.list()?.into_iter().filter(|c| c.name == name).collect();
            anyhow::ensure!(!mine.is_empty(), "no user {name}");
            for c in mine {
                println!("{}", describe(&c));
            }
        }
        UserCmd::Revoke { name } => {
            let n = op.revoke(&name)?;
            println!(
                "{name}: {n} credential(s) revoked; {} lists them",
                dir.join("revoked.txt").display()
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    braid_driver::metrics::install_panic_counter();
    let cli = Cli::parse();
    match (cli.cmd, cli.config) {
        (Some(Cmd::Keygen { out }), _) => keygen(&out),
        (Some(Cmd::Admin { addr, metrics }), _) => admin_get(addr, metrics),
        (Some(Cmd::Operator { dir, cmd }), _) => operator_cmd(&dir, cmd),
        (Some(Cmd::User { dir, cmd }), _) => user_cmd(&dir, cmd),
        (Some(Cmd::Directory { dir, cmd }), _) => {
            let op = braid_node::operator::Operator::open(&dir)?;
            match cmd {
                DirectoryCmd::Sign {
                    file,
                    version,
                    valid_secs,
                } => {
                    let v = op.sign_directory(&file, version, valid_secs)?;
                    println!(
                        "{}: version {v}, signed by {}",
                        file.display(),
                        op.public_hex()
                    );
                }
            }
            Ok(())
        }
        (None, Some(config)) => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(run(config))
        }
        (None, None) => {
            anyhow::bail!("nothing to do: pass --config FILE or a subcommand (see --help)")
        }
    }
}

fn keygen(out: &std::path::Path) -> anyhow::Result<()> {
    let id = NodeIdentity::generate(&mut rand::rng())?;
    id.save(out)
        .with_context(|| format!("writing the identity to {}", out.display()))?;
    let p = id.public();
    println!("noise_key = \"{}\"", p.noise_hex());
    println!("tls_key = \"{}\"", p.tls_hex());
    Ok(())
}

/// On SIGHUP, and when the config file or its revocation list changes (looked at every
/// `reload_watch_ms`), reads the config file again. One that does not load, that names
/// another role or id, or whose `log_level` does not parse is refused: the node keeps
/// running on the old one and logs why. One that loads sets the log level and goes to the
/// roles, which apply what they can while running (revocation list, source lists, per-user
/// usage, the exit policy); the rest needs a restart.
fn reload_on_hangup_or_change(
    path: PathBuf,
    mut running: braid_config::NodeConfig,
    tx: tokio::sync::watch::Sender<Option<Arc<braid_config::NodeConfig>>>,
    logs: braid_driver::logs::LogControl,
) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(h) => Some(h),
            Err(_) => {
                tracing::warn!("SIGHUP cannot be caught: reloads only on a file change");
                None
            }
        };
        let mut seen = watched_state(&path, &running);
        loop {
            let every = running.common().reload_watch();
            tokio::select! {
                got = async { match &mut hup { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    if got.is_none() {
                        hup = None;
                        continue;
                    }
                }
                _ = async { match every { Some(d) => tokio::time::sleep(d).await, None => std::future::pending().await } } => {
                    let now = watched_state(&path, &running);
                    if now == seen {
                        continue;
                    }
                    tracing::info!(config = %path.display(), "a watched file changed; reloading");
                }
            }
            seen = watched_state(&path, &running);
            let new = match load_node_config(&path) {
                Ok(new) => new,
                Err(e) => {
                    tracing::warn!("config reload failed; keeping the old config: {e}");
                    continue;
                }
            };
            if new.role() != running.role() || new.common().id != running.common().id {
                tracing::warn!(
                    config = %path.display(),
                    "config reload refused: the role or id changed (that needs a restart); keeping the old config"
                );
                continue;
            }
            let level = new.common().log_level.clone();
            if level != running.common().log_level {
                let set = match &level {
                    Some(l) => logs.set(l),
                    None => logs.set(&std::env::var("BRAID_LOG_FILTER").unwrap_or("info".into())),
                };
                if let Err(e) = set {
                    tracing::warn!("config reload failed; keeping the old config: {e}");
                    continue;
                }
            }
            tracing::info!(config = %path.display(), "config reloaded");
            running = new.clone();
            seen = watched_state(&path, &running);
            let _ = tx.send(Some(Arc::new(new)));
        }
    });
}

/// What the reload watch compares: each watched file's modification time and length (None
/// while it cannot be read).
fn watched_state(
    config: &std::path::Path,
    running: &braid_config::NodeConfig,
) -> Vec<Option<(std::time::SystemTime, u64)>> {
    let revoked = match running {
        braid_config::NodeConfig::Upstream(c) => c.revoked.clone(),
        braid_config::NodeConfig::Relay(c) => c.revoked.clone(),
        _ => None,
    };
    std::iter::once(config.to_path_buf())
        .chain(revoked)
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// `braid-node admin`: one GET on a node's admin port; the body goes to stdout.
fn admin_get(addr: std::net::SocketAddr, metrics: bool) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let path = if metrics { "/metrics" } else { "/health" };
    let timeout = std::time::Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to the admin port {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = Vec::new();
    s.take(16 << 20).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    print!("{body}");
    let ok = head
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200");
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}

/// A node that joins rather than being in the directory: its keys (made now if its
/// identity folder has none), its entry (`node.id = "auto"` names it by role and key) and
/// what registers it. What the credential says is the centrals' to judge: a node whose
/// credential is wrong here still goes, and a central logs why it refuses it.
fn prepare_join(
    cfg: &braid_config::NodeConfig,
    directory: &braid_config::Directory,
    path: &std::path::Path,
) -> anyhow::Result<(NodeIdentity, braid_node::members::Joiner)> {
    let common = cfg.common();
    let role = cfg.role();
    let join = braid_config::load_join(path)?;
    let Some(operator) = directory.operator_key else {
        anyhow::bail!(
            "{} names no operator key: nodes cannot join this network",
            common.directory.display()
        );
    };
    if join.credential.role != role.code() {
        tracing::warn!(path = %path.display(), "the join credential is not for role {role}; the centrals will refuse it");
    }
    if let Err(e) =
        braid_proto::join::JoinCredential::verify(&join.bytes, &operator, braid_driver::unix_now())
    {
        tracing::warn!(path = %path.display(), "the join credential does not verify: {e}; the centrals will refuse it");
    }
    let identity = if common.noise_key_path().is_file() {
        NodeIdentity::load(&common.identity)?
    } else {
        let identity = NodeIdentity::generate(&mut rand::rng())?;
        identity.save(&common.identity)?;
        tracing::info!(identity = %common.identity.display(), "made this node's keys");
        identity
    };
    let id = if common.id == "auto" {
        format!("{role}-{}", &hex::encode(identity.tls_public())[..8])
    } else {
        common.id.clone()
    };
    let addr = match cfg {
        braid_config::NodeConfig::Upstream(c) => Some(match common.advertise {
            Some(a) => a,
            None if !c.listen.ip().is_unspecified() => c.listen,
            None => std::net::SocketAddr::new(route_ip(directory)?, c.listen.port()),
        }),
        _ => common.advertise,
    };
    let entry = braid_config::NodeEntry {
        id,
        role,
        addr,
        host: None,
        noise_key: identity.noise_public(),
        tls_key: identity.tls_public(),
    };
    tracing::info!(node = %entry.id, addr = ?entry.addr, "joining the network");
    let joiner = braid_node::members::Joiner::new(
        entry,
        &join,
        std::time::Duration::from_secs(common.descriptor_lifetime_secs),
    );
    Ok((identity, joiner))
}

/// The local address this host reaches the first central from (no packet is sent).
fn route_ip(directory: &braid_config::Directory) -> anyhow::Result<std::net::IpAddr> {
    let central = directory
        .centrals()
        .find_map(|c| c.resolve_blocking())
        .context("no central's address in the directory resolves")?;
    let bind: std::net::SocketAddr = if central.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = std::net::UdpSocket::bind(bind)?;
    s.connect(central)?;
    Ok(s.local_addr()?.ip())
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg = load_node_config(&path)?;
    let common = cfg.common().clone();
    let logs = braid_driver::logs::init_logs(common.log, common.log_level.as_deref());
    if let Some(l) = &common.log_level {
        // A level the config names but that does not parse is an error at start.
        braid_driver::logs::parse_filter(l).map_err(anyhow::Error::msg)?;
    }
    // A gateway holds a target socket per stream; the other roles hold a few sockets.
    let streams = match &cfg {
        braid_config::NodeConfig::Gateway(g) => u64::from(g.max_streams),
        _ => 0,
    };
    braid_driver::fd_limit::raise_for("max_streams", streams);
    // The newest directory version taken is kept beside the node's keys: an older one is
    // refused, also after a restart.
    let directory = Arc::new(load_trusted_directory(
        &common.directory,
        common.directory_key.as_ref(),
        Some(&common.identity.join("directory.version")),
        braid_driver::unix_now(),
    )?);
    let (identity, entry, joiner) = match &common.join {
        Some(join) if directory.by_id(&common.id).is_none() => {
            let (identity, joiner) = prepare_join(&cfg, &directory, join)?;
            (identity, joiner.entry().clone(), Some(Arc::new(joiner)))
        }
        _ => {
            let identity = NodeIdentity::load(&common.identity)?;
            let entry = cfg.directory_entry(&directory)?.clone();
            if entry.tls_key != identity.tls_public() || entry.noise_key != identity.noise_public()
            {
                anyhow::bail!(
                    "the keys in {} do not match the directory entry for {}",
                    common.identity.display(),
                    common.id
                );
            }
            (identity, entry, None)
        }
    };
    let shutdown = CancellationToken::new();
    let drain = CancellationToken::new();
    let (reload_tx, reloaded) = tokio::sync::watch::channel(None);
    reload_on_hangup_or_change(path.clone(), cfg.clone(), reload_tx, logs);
    let ctx = NodeContext {
        id: entry.id.clone(),
        identity,
        directory: directory.clone(),
        metrics: Arc::new(braid_driver::Metrics::default()),
        tap: None,
        drain: drain.clone(),
        shutdown: shutdown.clone(),
        reloaded,
        joiner,
    };
    if let Some(admin) = common.admin {
        let l = braid_node::admin::bind(admin)
            .await
            .with_context(|| format!("binding the admin port {admin}"))?;
        tokio::spawn(braid_node::admin::serve(
            l,
            entry.id.clone(),
            cfg.role(),
            ctx.metrics.clone(),
            ctx.drain.clone(),
            shutdown.clone(),
        ));
    }
    {
        // SIGTERM/Ctrl-C: drain (stop accepting, let live streams finish), then stop at the
        // drain deadline at the latest. A second signal stops at once.
        let shutdown = shutdown.clone();
        let deadline = common.drain_timeout();
        tokio::spawn(async move {
            braid_driver::wait_for_signal().await;
            tracing::info!(deadline_secs = deadline.as_secs(), "draining");
            drain.cancel();
            tokio::select! {
                _ = tokio::time::sleep(deadline) => tracing::info!("drain deadline reached"),
                _ = braid_driver::wait_for_signal() => tracing::info!("second signal"),
            }
            shutdown.cancel();
        });
    }
    // Nodes that only dial bind on their directory address's IP (if any), any port.
    let bind_ip = entry
        .addr
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let bind = std::net::SocketAddr::new(bind_ip, 0);
    braid_node::roles::run(ctx, cfg, bind).await
}
