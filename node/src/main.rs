//! `braid-node --config FILE` runs one role; `braid-node keygen --out DIR` makes an identity.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use braid_config::{load_directory, load_node_config};
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
}

fn main() -> anyhow::Result<()> {
    braid_driver::metrics::install_panic_counter();
    let cli = Cli::parse();
    match (cli.cmd, cli.config) {
        (Some(Cmd::Keygen { out }), _) => keygen(&out),
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

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg = load_node_config(&path)?;
    let common = cfg.common().clone();
    braid_driver::logs::init_logs(common.log);
    // A gateway holds a target socket per stream; the other roles hold a few sockets.
    let streams = match &cfg {
        braid_config::NodeConfig::Gateway(g) => u64::from(g.max_streams),
        _ => 0,
    };
    braid_driver::fd_limit::raise_for("max_streams", streams);
    let directory = Arc::new(load_directory(&common.directory)?);
    cfg.directory_entry(&directory)?;
    let identity = NodeIdentity::load(&common.identity)?;
    let entry = cfg.directory_entry(&directory)?.clone();
    if entry.tls_key != identity.tls_public() || entry.noise_key != identity.noise_public() {
        anyhow::bail!(
            "the keys in {} do not match the directory entry for {}",
            common.identity.display(),
            common.id
        );
    }
    let shutdown = CancellationToken::new();
    let drain = CancellationToken::new();
    let ctx = NodeContext {
        id: common.id.clone(),
        identity,
        directory: directory.clone(),
        metrics: Arc::new(braid_driver::Metrics::default()),
        tap: None,
        drain: drain.clone(),
        shutdown: shutdown.clone(),
    };
    if let Some(admin) = common.admin {
        let l = braid_node::admin::bind(admin)
            .await
            .with_context(|| format!("binding the admin port {admin}"))?;
        tokio::spawn(braid_node::admin::serve(
            l,
            common.id.clone(),
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
