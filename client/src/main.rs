//! `braid run --config FILE`: the local SOCKS5 proxy. `braid demo`: a whole overlay on
//! loopback with a SOCKS5 port in front. `braid status`: what a running client's admin port
//! says of its session, paths, gateways and streams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
#[cfg(feature = "demo")]
use std::time::Duration;

use anyhow::Context;
#[cfg(feature = "demo")]
use braid_client::demo::{Demo, DemoOptions};
use braid_client::gateways::ChoicePolicy;
use braid_client::http_proxy::HttpLimits;
use braid_client::overlay::{self, ClientParams};
use braid_client::socks::{Front, SocksAuth, SocksLimits};
#[cfg(feature = "demo")]
use braid_config::{Layout, LogFormat};
#[cfg(feature = "demo")]
use braid_proto::cell::{MAX_CELL_SIZE, MIN_CELL_SIZE};
use braid_proto::http1::HeadLimits;
#[cfg(feature = "demo")]
use braid_proto::session::PathScheduler;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "braid",
    version,
    about = "Braid client: a local SOCKS5 proxy over a multi-path anonymity overlay"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve SOCKS5 through the overlay named in the client config.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show a running client's session and its central, paths, gateways and streams (read
    /// from its admin port).
    Status {
        /// The client's admin port (its config's `admin`; `braid demo --admin`).
        #[arg(long, default_value_t = braid_config::default_admin())]
        admin: SocketAddr,
        /// JSON for scripts instead of tables.
        #[arg(long)]
        json: bool,
    },
    #[cfg(feature = "demo")]
    /// Start a whole overlay on loopback (upstreams, central, downstreams, relays, gateway)
    /// with a SOCKS5 port in front.
    Demo {
        /// Where the SOCKS5 port listens.
        #[arg(long, default_value = "127.0.0.1:1080")]
        socks: SocketAddr,
        /// Where the admin port (`braid status`) listens; loopback only.
        #[arg(long, default_value_t = braid_config::default_admin())]
        admin: SocketAddr,
        #[arg(long, default_value_t = 2)]
        upstreams: usize,
        #[arg(long, default_value_t = 2)]
        downstreams: usize,
        #[arg(long, default_value_t = 1)]
        relays: usize,
        /// Cell size in bytes (1024..=16384).
        #[arg(long, default_value_t = 8192)]
        cell_size: usize,
        /// Mean relay mixing delay in milliseconds (0 turns mixing off).
        #[arg(long, default_value_t = 0.0)]
        mix_ms: f64,
        /// How the client spreads cells over upstreams: `round-robin` (even spread) or
        /// `rtt` (lowest expected delivery time).
        #[arg(long, default_value = "round-robin")]
        scheduler: PathScheduler,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Run { config } => run(config).await,
            Cmd::Status { admin, json } => status(admin, json).await,
            #[cfg(feature = "demo")]
            Cmd::Demo {
                socks,
                admin,
                upstreams,
                downstreams,
                relays,
                cell_size,
                mix_ms,
                scheduler,
            } => {
                anyhow::ensure!(
                    (MIN_CELL_SIZE..=MAX_CELL_SIZE).contains(&cell_size),
                    "--cell-size must be within {MIN_CELL_SIZE}..={MAX_CELL_SIZE}"
                );
                anyhow::ensure!(
                    upstreams >= 1 && downstreams >= 1 && relays >= 1,
                    "--upstreams, --downstreams and --relays must each be at least 1"
                );
                anyhow::ensure!(mix_ms >= 0.0 && mix_ms.is_finite(), "--mix-ms must be >= 0");
                braid_driver::logs::init_logs(LogFormat::Text, None);
                demo(DemoOptions {
                    socks,
                    admin: Some(admin),
                    layout: Layout {
                        upstreams,
                        downstreams,
                        relays,
                        ..Layout::default()
                    },
                    cell_size,
                    mix_delay: Duration::from_secs_f64(mix_ms / 1000.0),
                    scheduler,
                    // The demo runs as a network with an operator key: first hops check
                    // the demo user's credential.
                    user: Some("demo".into()),
                    ..DemoOptions::default()
                })
                .await
            }
        }
    })
}

#[cfg(feature = "demo")]
async fn demo(opts: DemoOptions) -> anyhow::Result<()> {
    let demo = Demo::start(opts).await?;
    println!("braid demo: a whole overlay on loopback, each node with its own address and keys");
    print!("{}", demo.topology());
    println!("NOTE: the demo gateway's exit policy admits loopback targets so that it can be tried on one machine.");
    println!("SOCKS5 listening on {}", demo.socks);
    println!(
        "(the same port speaks SOCKS4/4a and HTTP: HTTP_PROXY=http://{})",
        demo.socks
    );
    if let Some(admin) = demo.admin {
        println!("admin port on {admin}: braid status --admin {admin}");
    }
    println!(
        "try:  curl --proxy socks5h://{0} http://example.com/   or   curl --proxy http://{0} http://example.com/",
        demo.socks
    );
    println!("Ctrl-C stops it.");
    braid_driver::wait_for_signal().await;
    println!("stopping");
    demo.shutdown().await;
    Ok(())
}

async fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg = braid_config::load_client_config(&path)?;
    // Logging starts once the config has said in which format.
    braid_driver::logs::init_logs(cfg.log, None);
    // Each SOCKS5 connection is a socket (and a stream through the overlay).
    braid_driver::fd_limit::raise_for("max_connections", u64::from(cfg.max_connections));
    let limits = SocksLimits {
        handshake_deadline: cfg.handshake_timeout(),
        max_connections: cfg.max_connections as usize,
        max_per_source: cfg.max_connections_per_source as usize,
        limit_loopback: cfg.limit_loopback_sources,
        auth: match &cfg.auth {
            None => None,
            Some(a) => Some(
                SocksAuth::new(a.username.as_bytes(), a.password.as_bytes())
                    .with_context(|| format!("{}: [auth]", path.display()))?,
            ),
        },
        http: HttpLimits {
            head: HeadLimits {
                max_head_bytes: cfg.http_max_header_bytes as usize,
                max_headers: cfg.http_max_headers as usize,
            },
            keepalive_idle: cfg.http_keepalive(),
            max_body: cfg.http_max_body(),
        },
        udp_idle: cfg.udp_idle(),
        udp_slots: Arc::new(tokio::sync::Semaphore::new(
            cfg.max_udp_associations as usize,
        )),
    };
    // The newest directory version taken is kept beside the directory file (best effort:
    // a read-only folder keeps none), so an older one is refused after a restart too.
    let mut version_file = cfg.directory.clone().into_os_string();
    version_file.push(".version");
    let directory = Arc::new(braid_config::load_trusted_directory(
        &cfg.directory,
        cfg.directory_key.as_ref(),
        Some(std::path::Path::new(&version_file)),
        braid_driver::unix_now(),
    )?);
    // Bound first: a port in use stops the client before it dials anything.
    let admin = braid_client::status::bind(cfg.admin).await?;
    let shutdown = CancellationToken::new();
    let params = ClientParams {
        directory,
        gateway: cfg.gateway.clone(),
        bind: SocketAddr::from(([0, 0, 0, 0], 0)),
        window_cells: u64::from(cfg.window_cells),
        scheduler: cfg.scheduler,
        central_choice: cfg.central_choice,
        tap: None,
        keepalive: cfg.keepalive(),
        peer_timeout: cfg.peer_timeout(),
        session_wait: cfg.session_wait(),
        session_lifetime: cfg.session_lifetime(),
        resume_grace: cfg.resume_grace(),
        resume_buffer: cfg.resume_buffer(),
        resume_budget: cfg.resume_budget(),
        gateway_choice: ChoicePolicy {
            choice: cfg.gateway_choice,
            sticky: cfg.sticky(),
            rest: cfg.gateway_rest(),
        },
        central_rest: cfg.central_rest(),
        log_destinations: cfg.log_destinations,
        max_joined_upstreams: cfg.max_joined_upstreams as usize,
        credential: match &cfg.credential {
            Some(path) => {
                let c = braid_config::load_credential(path)?;
                Some(Arc::new(braid_client::first_hop::Presenter::new(
                    c.bytes,
                    &c.secret,
                    c.limits_pass,
                )))
            }
            None => None,
        },
        routes: Arc::new(braid_client::routing::Routes::new(cfg.route.clone())),
        shutdown: shutdown.clone(),
    };
    let handle = overlay::connect(params.clone()).await?;
    let listener = braid_client::socks::bind(cfg.socks_listen)
        .with_context(|| format!("binding the proxy port {}", cfg.socks_listen))?;
    let http_listener = match cfg.http_listen {
        Some(addr) => Some(
            braid_client::socks::bind(addr)
                .with_context(|| format!("binding the HTTP proxy port {addr}"))?,
        ),
        None => None,
    };
    tracing::info!(
        socks = %cfg.socks_listen,
        http = ?cfg.http_listen,
        auth = limits.auth.is_some(),
        handshake_timeout_secs = cfg.handshake_timeout_secs,
        max_connections = limits.max_connections,
        max_connections_per_source = limits.max_per_source,
        limit_loopback_sources = limits.limit_loopback,
        admin = %cfg.admin,
        "proxy ready (SOCKS5, SOCKS4, HTTP)"
    );
    let admin = tokio::spawn(braid_client::status::serve(
        admin,
        handle.clone(),
        shutdown.clone(),
    ));
    let dns_serve = match cfg.dns_listen {
        Some(addr) => {
            let (udp, tcp) = braid_client::dns::bind(addr)
                .await
                .with_context(|| format!("binding the DNS port {addr}"))?;
            tracing::info!(dns = %addr, "DNS port ready (resolved at the gateways)");
            Some(tokio::spawn(braid_client::dns::serve(
                udp,
                tcp,
                handle.clone(),
                braid_client::dns::DnsLimits {
                    max_inflight: cfg.dns_max_inflight as usize,
                    tcp_idle: cfg.dns_tcp_idle(),
                },
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let sessions = braid_client::isolation::Sessions::isolating(
        handle.clone(),
        listener.local_addr()?.port(),
        braid_client::isolation::start_like(params),
        cfg.max_isolated_sessions as usize,
        cfg.isolation_idle(),
        shutdown.clone(),
    );
    let http_serve = http_listener.map(|l| {
        tokio::spawn(braid_client::socks::serve(
            l,
            sessions.clone(),
            limits.clone(),
            Front::Http,
            shutdown.clone(),
        ))
    });
    let serve = tokio::spawn(braid_client::socks::serve(
        listener,
        sessions,
        limits,
        Front::Mixed,
        shutdown.clone(),
    ));
    braid_driver::wait_for_signal().await;
    shutdown.cancel();
    let _ = serve.await;
    if let Some(s) = http_serve {
        let _ = s.await;
    }
    if let Some(s) = dns_serve {
        let _ = s.await;
    }
    let _ = admin.await;
    Ok(())
}

/// `braid status`: asks the client's admin port and prints tables, or the JSON.
async fn status(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let status = braid_client::status::fetch(admin).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", braid_client::status::render(&status));
    }
    Ok(())
}
