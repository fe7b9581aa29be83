//! The local SOCKS5 front: parse the handshake (sans-IO parser in `braid_proto::socks5`),
//! open an inner stream to the gateway, answer with the gateway's status, then pump sealed
//! records both ways.
//!
//! # Pinning a stream to a gateway
//!
//! Without `[auth]`, the port also takes RFC 1929 username/password with any credentials
//! ([`AuthPolicy::AnyUserPass`]; clients that send none get method 00 as before). A username
//! that names a gateway in the directory pins the stream to it
//! (`curl --proxy socks5h://gateway-2:x@127.0.0.1:1080 ...`): it exits there or fails —
//! reply 03 when the central cannot reach that gateway, 02 when the config's `gateway`
//! allows another — and never goes elsewhere. Other usernames pin nothing. With `[auth]`,
//! the username is the login and pins nothing.
//!
//! # Defences against hostile local peers
//!
//! [`SocksLimits`] bounds what a peer can hold, and every refusal is a proper SOCKS5 answer
//! followed by a prompt close, never a hang:
//!
//! - **Malformed input** gets the exact reply of [`braid_proto::socks5::Socks5Error::reply`]
//!   (`05 FF` for a greeting without an acceptable method, `01 01` for a failed RFC 1929
//!   sub-negotiation, `05 07`/`05 08`/`05 01 ...` for bad requests, nothing for a first byte
//!   that is not 5), then the close below.
//! - **Handshake deadline** (slowloris): the greeting, the RFC 1929 sub-negotiation and the
//!   request must all arrive within [`SocksLimits::handshake_deadline`] of the accept. On
//!   expiry the connection is closed *without* a reply, at every stage: at the greeting and
//!   authentication stages no RFC 1928/1929 message means "too slow" (`05 FF` or `01 01`
//!   would misreport a method or credential problem), and at the request stage a `05 01`
//!   would answer a request that never arrived whole. The peer sees EOF.
//! - **Connection limits**: at most [`SocksLimits::max_connections`] connections in all and
//!   [`SocksLimits::max_per_source`] from one source IP address (IPv4-mapped IPv6 counts as
//!   IPv4; loopback sources count only with [`SocksLimits::limit_loopback`], since on a
//!   laptop every application is 127.0.0.1). A connection over either limit is *refused as by a ruleset*: its handshake runs
//!   as usual (same authentication policy, same replies to malformed input) within
//!   [`REFUSAL_DEADLINE`] (or the handshake deadline if shorter), and a complete request is
//!   answered `05 02 00 01 00 00 00 00 00 00` — "connection not allowed by ruleset" — instead
//!   of being connected. `05 FF` at once was rejected as the normal answer: it claims that
//!   none of the client's authentication methods is acceptable, so clients report an
//!   authentication problem (curl: "No authentication method was acceptable"), while REP 02
//!   is the RFC's code for a server rule refusing the connection, which is what happened.
//!   The refusal path is bounded too ([`REFUSAL_SLOTS`] at once); when it is full, the
//!   connection gets `05 FF` written at once without reading anything (the only SOCKS5
//!   answer that can precede the greeting) and is dropped.
//! - **Closing**: after any reply that ends a connection, the write side is shut down at once
//!   (the peer reads the reply, then EOF), whatever the peer already sent is drained for at
//!   most [`LINGER`] / [`LINGER_BYTES`] so that the kernel ends the connection with a FIN
//!   rather than an RST that could destroy the reply in flight, and the socket is dropped.
//!   The connection's slot is released only then.
//! - **Memory**: a connection in its handshake holds at most
//!   [`socks5::MAX_MESSAGE_LEN`] + 1 KiB of input (the parser never asks for more than one
//!   whole message); nothing a peer sends can make the SOCKS path allocate beyond that, and
//!   nothing in it indexes or unwraps on peer input.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use braid_proto::http1;
use braid_proto::socks4;
use braid_proto::socks5::{self, AuthPolicy, Command, Progress, ReplyCode, Socks5Handshake};
use braid_proto::Reason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::http_proxy::HttpLimits;
use crate::inner_stream::{self, OpenFailure, RelayEnd};
use crate::isolation::{IsolationKey, Sessions};
use crate::overlay::ClientHandle;

/// Default for [`SocksLimits::handshake_deadline`] (slowloris guard).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Default for [`SocksLimits::max_connections`] (the config's `max_connections`): a
/// laptop's every application, under a 20,000-descriptor process limit.
pub const MAX_CONNECTIONS: usize = 16_384;
/// Default for [`SocksLimits::max_per_source`]; loopback sources are exempt unless
/// [`SocksLimits::limit_loopback`] says otherwise.
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 256;
/// Most over-limit connections being refused at once (each runs a short handshake to be
/// answered `05 02`); beyond it they get `05 FF` without being read.
pub const REFUSAL_SLOTS: usize = 256;
/// Longest an over-limit connection may take over the handshake it is refused at the end of.
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);
/// After the write side is shut down, how long what the peer already sent is drained.
pub const LINGER: Duration = Duration::from_millis(500);
/// ... and at most how many bytes of it.
pub const LINGER_BYTES: usize = 64 * 1024;
/// `05 02 00 01 0.0.0.0:0`: the answer to a request over a connection limit.
const REPLY_NOT_ALLOWED: [u8; 10] = [5, 2, 0, 1, 0, 0, 0, 0, 0, 0];
/// `05 FF`: the last-resort refusal, sent before anything is read.
const SELECT_NONE: [u8; 2] = [socks5::VERSION, socks5::METHOD_NO_ACCEPTABLE];

/// The one RFC 1929 username/password pair the SOCKS5 port accepts. `Debug` never shows the
/// password.
#[derive(Clone)]
pub struct SocksAuth {
    username: Arc<[u8]>,
    password: Arc<[u8]>,
}

impl SocksAuth {
    /// Each must be 1 to 255 bytes (the RFC 1929 length fields; 0 is refused on the wire).
    pub fn new(
        username: impl Into<Vec<u8>>,
        password: impl Into<Vec<u8>>,
    ) -> anyhow::Result<SocksAuth> {
        let (username, password) = (username.into(), password.into());
        anyhow::ensure!(
            (1..=255).contains(&username.len()) && (1..=255).contains(&password.len()),
            "SOCKS5 username and password must each be 1 to 255 bytes (RFC 1929)"
        );
        Ok(SocksAuth {
            username: username.into(),
            password: password.into(),
        })
    }

    pub fn username(&self) -> &[u8] {
        &self.username
    }

    /// Whether `username`/`password` are the pair (HTTP `Proxy-Authorization`).
    pub fn check(&self, username: &[u8], password: &[u8]) -> bool {
        // `&`, not `&&`: both are compared, so timing says little about which one failed.
        ct_eq(username, &self.username) & ct_eq(password, &self.password)
    }

    fn policy(&self) -> AuthPolicy {
        let (u, p) = (self.username.clone(), self.password.clone());
        // `&`, not `&&`: both are compared, so timing says little about which one failed.
        AuthPolicy::UserPass(Box::new(move |cu: &[u8], cp: &[u8]| {
            ct_eq(cu, &u) & ct_eq(cp, &p)
        }))
    }
}

impl fmt::Debug for SocksAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SocksAuth")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Equality whose time depends on the lengths but not on where the contents differ.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the SOCKS5 port lets peers hold; see the module documentation for what happens at
/// each limit.
#[derive(Clone, Debug)]
pub struct SocksLimits {
    /// Greeting + authentication + request must be complete within this of the accept.
    pub handshake_deadline: Duration,
    /// Connections open at once, in all.
    pub max_connections: usize,
    /// Connections open at once from one source IP address.
    pub max_per_source: usize,
    /// Whether `max_per_source` also counts loopback sources. Off by default: on a laptop
    /// every application comes from 127.0.0.1, so only `max_connections` bounds them.
    pub limit_loopback: bool,
    /// RFC 1929 username/password to require (HTTP: `Proxy-Authorization: Basic`);
    /// `None` asks for no authentication.
    pub auth: Option<SocksAuth>,
    /// The HTTP side of the port.
    pub http: HttpLimits,
    /// A UDP association with no datagram either way for this long ends.
    pub udp_idle: Duration,
    /// One permit per open UDP association (`max_udp_associations`), shared by the ports.
    pub udp_slots: Arc<Semaphore>,
}

impl Default for SocksLimits {
    fn default() -> Self {
        SocksLimits {
            handshake_deadline: HANDSHAKE_DEADLINE,
            max_connections: MAX_CONNECTIONS,
            max_per_source: MAX_CONNECTIONS_PER_SOURCE,
            limit_loopback: false,
            auth: None,
            http: HttpLimits::default(),
            udp_idle: crate::udp::IDLE,
            udp_slots: Arc::new(Semaphore::new(crate::udp::MAX_ASSOCIATIONS)),
        }
    }
}

impl SocksLimits {
    /// Without `auth`, any RFC 1929 credentials are taken (or none): the username may
    /// name a gateway to pin the stream to. With `auth`, the pair is checked and the
    /// username is only a login.
    fn policy(&self) -> AuthPolicy {
        match &self.auth {
            None => AuthPolicy::AnyUserPass,
            Some(a) => a.policy(),
        }
    }
}

/// Which limit a connection was over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Total,
    PerSource,
}

/// Counts open connections, in all and per source address.
struct Gate {
    max_total: usize,
    max_per_source: usize,
    /// Whether loopback sources count per source (else only in all).
    limit_loopback: bool,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    total: usize,
    /// Only sources with at least one open connection: at most `max_total` entries.
    per_source: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees the slot.
struct Ticket {
    gate: Arc<Gate>,
    source: IpAddr,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // Nothing panics while holding the lock; should it ever, the counts are still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Over> {
        let mut st = self.lock();
        if st.total >= self.max_total {
            return Err(Over::Total);
        }
        if self.limit_loopback || !source.is_loopback() {
            let n = st.per_source.entry(source).or_insert(0);
            if *n >= self.max_per_source {
                return Err(Over::PerSource);
            }
            *n += 1;
        }
        st.total += 1;
        Ok(Ticket {
            gate: self.clone(),
            source,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.total = st.total.saturating_sub(1);
        if let Some(n) = st.per_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.per_source.remove(&self.source);
            }
        }
    }
}

/// Listen backlog of [`bind`]. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the SOCKS5 port with a listen backlog of [`LISTEN_BACKLOG`]. (`TcpListener::bind`
/// uses 128, which a burst of a few hundred connects overflows; the kernel then drops SYNs
/// and honest clients wait for their 1 s, 3 s, ... SYN retries.)
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves SOCKS5 on `listener` until `shutdown`, within `limits`.
pub async fn serve(
    listener: TcpListener,
    sessions: Arc<Sessions>,
    limits: SocksLimits,
    front: Front,
    shutdown: CancellationToken,
) {
    let gate = Arc::new(Gate {
        max_total: limits.max_connections.max(1),
        max_per_source: limits.max_per_source.max(1),
        limit_loopback: limits.limit_loopback,
        state: Mutex::new(GateState::default()),
    });
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let limits = Arc::new(limits);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    warn!(error = %e, "SOCKS5 accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let source = peer.ip().to_canonical();
        match gate.admit(source) {
            Ok(ticket) => {
                let sessions = sessions.clone();
                let limits = limits.clone();
                tokio::spawn(async move {
                    serve_conn(tcp, peer, &sessions, &limits, front).await;
                    drop(ticket);
                });
            }
            Err(over) => match refusals.clone().try_acquire_owned() {
                Ok(slot) => {
                    debug!(%peer, ?over, "SOCKS5 connection over the limit: refusing (05 02)");
                    let limits = limits.clone();
                    tokio::spawn(refuse(tcp, limits, front, slot));
                }
                Err(_) => {
                    debug!(%peer, ?over, "SOCKS5 refusals saturated: 05 FF and drop");
                    // Two bytes always fit an empty send buffer; drop closes at once.
                    let _ = tcp.try_write(&SELECT_NONE);
                }
            },
        }
    }
}

/// What a connection speaks, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Socks5,
    Socks4,
    Http,
}

impl Protocol {
    /// 5 and 4 are SOCKS versions; an HTTP request starts with its method's first letter.
    fn from_first_byte(b: u8) -> Option<Protocol> {
        match b {
            socks5::VERSION => Some(Protocol::Socks5),
            socks4::VERSION => Some(Protocol::Socks4),
            b'A'..=b'Z' | b'a'..=b'z' => Some(Protocol::Http),
            _ => None,
        }
    }
}

/// Which protocols a listening port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// SOCKS5, SOCKS4/4a and HTTP: the first byte decides (`socks_listen`).
    Mixed,
    /// HTTP only (`http_listen`).
    Http,
}

/// Which protocol the connection speaks: looked at, not read, within `deadline`. `None`:
/// neither SOCKS nor HTTP, or nothing came.
async fn sniff(tcp: &TcpStream, front: Front, deadline: Duration) -> Option<Protocol> {
    if front == Front::Http {
        return Some(Protocol::Http);
    }
    let mut first = [0u8; 1];
    match tokio::time::timeout(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) => Protocol::from_first_byte(first[0]),
        _ => None,
    }
}

/// One admitted connection, from accept to close.
async fn serve_conn(
    mut tcp: TcpStream,
    peer: SocketAddr,
    sessions: &Sessions,
    limits: &SocksLimits,
    front: Front,
) {
    let _ = tcp.set_nodelay(true);
    match sniff(&tcp, front, limits.handshake_deadline).await {
        Some(Protocol::Socks5) => {
            if serve_socks5(&mut tcp, peer, sessions, limits).await == RelayEnd::Reset {
                return;
            }
        }
        Some(Protocol::Socks4) => match serve_socks4(&mut tcp, sessions, limits).await {
            Ok(RelayEnd::Reset) => return,
            Ok(RelayEnd::Closed) => {}
            Err(e) => debug!(%peer, error = %e, "SOCKS4 connection ended"),
        },
        Some(Protocol::Http) => {
            if crate::http_proxy::serve(&mut tcp, sessions, limits).await == RelayEnd::Reset {
                return;
            }
        }
        None => debug!(%peer, "neither SOCKS nor HTTP, or silent: closed"),
    }
    close(tcp).await;
}

/// What keeps this connection's streams apart from others: the port it came in on and
/// the user it gave.
pub(crate) fn isolation_key(tcp: &TcpStream, user: Option<Vec<u8>>) -> IsolationKey {
    IsolationKey {
        port: tcp.local_addr().map_or(0, |a| a.port()),
        user,
    }
}

/// A SOCKS5 connection: handshake, connect, relay.
async fn serve_socks5(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    sessions: &Sessions,
    limits: &SocksLimits,
) -> RelayEnd {
    match tokio::time::timeout(limits.handshake_deadline, handshake(tcp, limits.policy())).await {
        // Closed without a reply; see the module documentation.
        Err(_) => debug!(%peer, "SOCKS5 handshake deadline passed"),
        Ok(Err(e)) => debug!(%peer, error = %e, "SOCKS5 handshake failed"),
        Ok(Ok((req, early, username))) => {
            // Another username, another session (isolation).
            let key = isolation_key(tcp, username.clone());
            let lease = match sessions.lease(key).await {
                Ok(l) => l,
                Err(e) => {
                    debug!(%peer, error = %e, "no session for the stream");
                    let reply = socks5::reply(e.reason().socks5_reply(), None);
                    let _ = tcp.write_all(&reply).await;
                    return RelayEnd::Closed;
                }
            };
            let h = lease.handle.clone();
            // A username pins the stream only where it is not a login.
            let pinned = match (&limits.auth, username) {
                (None, Some(u)) => h.gateways.pin_by_username(&u),
                _ => None,
            };
            let result = if req.command == Command::UDP_ASSOCIATE {
                match limits.udp_slots.clone().try_acquire_owned() {
                    Ok(_slot) => {
                        crate::udp::associate(tcp, &h, &req.target, pinned, limits.udp_idle).await
                    }
                    Err(_) => {
                        debug!(%peer, "UDP associations at their limit: refused (05 01)");
                        let reply = socks5::reply(Reason::RESOURCE_LIMIT.socks5_reply(), None);
                        tcp.write_all(&reply)
                            .await
                            .map(|()| RelayEnd::Closed)
                            .map_err(Into::into)
                    }
                }
            } else {
                handle_conn(tcp, h, req, pinned, early).await
            };
            match result {
                // Set to reset on drop: no FIN first.
                Ok(RelayEnd::Reset) => return RelayEnd::Reset,
                Ok(RelayEnd::Closed) => {}
                Err(e) => debug!(%peer, error = %e, "socks connection ended"),
            }
        }
    }
    RelayEnd::Closed
}

/// Reads a SOCKS4/4a request within the handshake deadline; a malformed one is answered
/// 91 (SOCKS4 has no finer code) before the error returns.
async fn socks4_request(tcp: &mut TcpStream) -> anyhow::Result<(socks4::Socks4Request, Vec<u8>)> {
    let mut buf: Vec<u8> = Vec::with_capacity(socks4::MAX_REQUEST_LEN);
    let mut chunk = [0u8; 1024];
    loop {
        match socks4::parse_request(&buf) {
            Ok(Some((req, consumed))) => {
                return Ok((req, buf.get(consumed..).unwrap_or_default().to_vec()));
            }
            Ok(None) => {
                let n = tcp.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "client closed during the SOCKS4 request");
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Err(e) => {
                if !matches!(e, socks4::Socks4Error::BadVersion(_)) {
                    tcp.write_all(&socks4::reply(false)).await?;
                }
                anyhow::bail!("bad SOCKS4 request: {e}");
            }
        }
    }
}

/// A SOCKS4/4a connection. SOCKS4 carries no password, so under `[auth]` it is refused
/// (91): only SOCKS5 and HTTP can log in.
async fn serve_socks4(
    tcp: &mut TcpStream,
    sessions: &Sessions,
    limits: &SocksLimits,
) -> anyhow::Result<RelayEnd> {
    let (req, early) = tokio::time::timeout(limits.handshake_deadline, socks4_request(tcp))
        .await
        .map_err(|_| anyhow::anyhow!("SOCKS4 request deadline passed"))??;
    if limits.auth.is_some() {
        tcp.write_all(&socks4::reply(false)).await?;
        anyhow::bail!("SOCKS4 refused: the port requires a password");
    }
    let user = (!req.user_id.is_empty()).then(|| req.user_id.clone());
    let lease = match sessions.lease(isolation_key(tcp, user)).await {
        Ok(l) => l,
        Err(e) => {
            tcp.write_all(&socks4::reply(false)).await?;
            return Err(e.into());
        }
    };
    let h = &lease.handle;
    let pinned = h.gateways.pin_by_username(&req.user_id);
    match inner_stream::connect(h, &req.target, pinned.as_deref(), early).await {
        Ok(stream) => {
            tcp.write_all(&socks4::reply(true)).await?;
            Ok(stream.relay(h, tcp).await)
        }
        Err(e) => {
            tcp.write_all(&socks4::reply(false)).await?;
            Err(e.into())
        }
    }
}

/// An over-limit connection: refused in its own protocol. SOCKS5 runs the usual handshake
/// and gets `05 02` instead of a connect; SOCKS4 gets 91; HTTP gets a 503 page.
async fn refuse(
    mut tcp: TcpStream,
    limits: Arc<SocksLimits>,
    front: Front,
    _slot: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = limits.handshake_deadline.min(REFUSAL_DEADLINE);
    let _ = tokio::time::timeout(deadline, async {
        match sniff(&tcp, front, deadline).await {
            Some(Protocol::Socks5) => {
                // Answered only once the request is whole; nothing after a bad handshake.
                let done = handshake(&mut tcp, limits.policy()).await.is_ok();
                let reply: &[u8] = if done { &REPLY_NOT_ALLOWED } else { &[] };
                let _ = tcp.write_all(reply).await;
            }
            Some(Protocol::Socks4) => {
                let _ = tcp.write_all(&socks4::reply(false)).await;
            }
            Some(Protocol::Http) => {
                let page = http1::error_response(503, "too many connections", true);
                let _ = tcp.write_all(&page).await;
            }
            None => {}
        }
    })
    .await;
    close(tcp).await;
}

/// Ends a connection promptly: FIN now, drain what the peer already sent (bounded), drop.
async fn close(mut tcp: TcpStream) {
    let _ = tokio::time::timeout(LINGER, async {
        let _ = tcp.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match tcp.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Runs the SOCKS5 handshake; any error reply is written before the error is returned.
/// Returns the request, the early data and the RFC 1929 username, if one was given.
async fn handshake(
    tcp: &mut TcpStream,
    policy: AuthPolicy,
) -> anyhow::Result<(socks5::Request, Vec<u8>, Option<Vec<u8>>)> {
    let mut hs = Socks5Handshake::new(policy).allow_command(Command::UDP_ASSOCIATE);
    // `NeedMore` only while less than one whole message is buffered, so this stays below
    // MAX_MESSAGE_LEN + one read.
    let mut buf: Vec<u8> = Vec::with_capacity(socks5::MAX_MESSAGE_LEN);
    let mut chunk = [0u8; 1024];
    loop {
        match hs.feed(&buf) {
            Ok(Progress::NeedMore) => {
                let n = tcp.read(&mut chunk).await?;
                if n == 0 {
                    anyhow::bail!("client closed during the handshake");
                }
                buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            }
            Ok(Progress::Reply { consumed, bytes }) => {
                tcp.write_all(bytes).await?;
                buf.drain(..consumed.min(buf.len()));
            }
            Ok(Progress::Done {
                consumed, request, ..
            }) => {
                let early = buf.get(consumed..).unwrap_or_default().to_vec();
                return Ok((request, early, hs.username().map(<[u8]>::to_vec)));
            }
            Err(e) => {
                if let Some(r) = e.reply() {
                    tcp.write_all(r).await?;
                }
                anyhow::bail!("bad SOCKS5 handshake: {e}");
            }
        }
    }
}

async fn handle_conn(
    tcp: &mut TcpStream,
    h: ClientHandle,
    req: socks5::Request,
    pinned: Option<String>,
    early: Vec<u8>,
) -> anyhow::Result<RelayEnd> {
    if req.command != Command::CONNECT {
        tcp.write_all(&socks5::reply(ReplyCode::COMMAND_NOT_SUPPORTED, None))
            .await?;
        return Ok(RelayEnd::Closed);
    }
    match inner_stream::connect(&h, &req.target, pinned.as_deref(), early).await {
        Ok(stream) => {
            tcp.write_all(&socks5::reply(ReplyCode::SUCCEEDED, None))
                .await?;
            Ok(stream.relay(&h, tcp).await)
        }
        Err(e) => {
            tcp.write_all(&socks5::reply(e.reason().socks5_reply(), None))
                .await?;
            match e {
                OpenFailure::BadAnswer(_) => Err(e.into()),
                _ => Ok(RelayEnd::Closed),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gate(total: usize, per_source: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max_total: total,
            max_per_source: per_source,
            limit_loopback: true,
            state: Mutex::new(GateState::default()),
        })
    }

    #[test]
    fn gate_counts_per_source_and_in_all_and_frees_on_drop() {
        let g = gate(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = g.admit(a).unwrap();
        let a2 = g.admit(a).unwrap();
        assert_eq!(g.admit(a).err(), Some(Over::PerSource));
        let b1 = g.admit(b).unwrap();
        assert_eq!(g.admit(b).err(), Some(Over::Total));
        drop(a1);
        let a3 = g.admit(a).unwrap();
        assert_eq!(g.admit(b).err(), Some(Over::Total));
        drop((a2, a3, b1));
        let st = g.lock();
        assert_eq!(st.total, 0);
        assert!(
            st.per_source.is_empty(),
            "no entry outlives its connections"
        );
    }

    #[test]
    fn loopback_sources_count_only_in_all_by_default() {
        let g = Arc::new(Gate {
            max_total: 4,
            max_per_source: 1,
            limit_loopback: false,
            state: Mutex::new(GateState::default()),
        });
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let held = [
            g.admit(lo).unwrap(),
            g.admit(lo).unwrap(),
            g.admit(lo6).unwrap(),
        ];
        let r = g.admit(remote).unwrap();
        assert_eq!(g.admit(lo).err(), Some(Over::Total));
        drop(r);
        g.admit(remote).map(drop).unwrap();
        let r = g.admit(remote).unwrap();
        drop(held);
        assert_eq!(g.admit(remote).err(), Some(Over::PerSource));
        drop(r);
        let st = g.lock();
        assert_eq!(st.total, 0);
        assert!(st.per_source.is_empty());
    }

    #[test]
    fn mapped_ipv6_counts_as_its_ipv4_source() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(mapped.to_canonical(), "10.1.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn auth_lengths_and_redaction() {
        assert!(SocksAuth::new("", "p").is_err());
        assert!(SocksAuth::new("u", "").is_err());
        assert!(SocksAuth::new(vec![b'u'; 256], "p").is_err());
        let a = SocksAuth::new(vec![b'u'; 255], "s3cret-pw").unwrap();
        let shown = format!(
            "{a:?} {:?}",
            SocksLimits {
                auth: Some(a.clone()),
                ..SocksLimits::default()
            }
        );
        assert!(
            !shown.contains("s3cret-pw") && shown.contains("<redacted>"),
            "{shown}"
        );
        let AuthPolicy::UserPass(check) = a.policy() else {
            panic!("user/pass policy expected")
        };
        assert!(check(&[b'u'; 255], b"s3cret-pw"));
        assert!(!check(&[b'u'; 255], b"s3cret-pW"));
        assert!(!check(&[b'u'; 254], b"s3cret-pw"));
        assert!(!check(b"", b""));
    }
}
