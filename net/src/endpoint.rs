//! quinn endpoints for Braid links.
//!
//! Every endpoint carries a default client config (with the node's certificate, if it
//! has one), so both a pure client and a listening node can dial with [`connect`]. The
//! key to pin is given per dial; see [`crate::tls`] for how it reaches the verifier.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::NodeIdentity;
use crate::tls::{
    ed25519_key_of_cert, provider, server_name_for, PinSet, PinnedClientVerifier,
    PinnedServerVerifier, ALPN,
};
use crate::NetError;

/// Flow-control credit for one stream: bounds what a peer can make us buffer per stream.
pub const STREAM_RECEIVE_WINDOW: u32 = 4 << 20;
/// Flow-control credit for a whole connection (quinn's default is unbounded).
pub const CONNECTION_RECEIVE_WINDOW: u32 = 16 << 20;
/// Bytes we buffer for sending on one connection before writes wait.
pub const SEND_WINDOW: u64 = 16 << 20;
/// Bidirectional streams a peer may have open at once on links whose peer opens few of them
/// (a client's relay mailboxes). The central → gateway link, which carries one per proxied
/// stream, takes its limit from the gateway's `max_streams` ([`client_endpoint_with`]).
pub const MAX_BIDI_STREAMS: u32 = 4096;
/// Unidirectional streams a peer may have open at once.
pub const MAX_UNI_STREAMS: u32 = 64;
/// Keep-alive period: well under the idle timeout and typical NAT UDP timeouts. It is also
/// how soon a link whose far end restarted is noticed when no data flows: the next packet
/// meets the restarted node's stateless reset (see [`stateless_reset_key`]). One small
/// packet a second per link.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A link silent for this long is dead (milliseconds, as QUIC carries it).
pub const IDLE_TIMEOUT_MS: u32 = 30_000;

/// Whether a server demands a pinned client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client must present a certificate whose key is pinned (e.g. central: only
    /// directory nodes may connect).
    Required,
    /// Clients may come without a certificate (laptops, which authenticate later by
    /// access token); a certificate that is presented must still be pinned.
    Optional,
    /// Every client must present an Ed25519 certificate and prove its key, pinned or not:
    /// the central of a network nodes may join, which admits an unpinned key only once it
    /// shows a descriptor the operator's join credential vouches for.
    Joinable,
    /// Clients may come without a certificate, and a certificate with any proven Ed25519
    /// key passes: a relay, whose users come without one and whose joining downstreams
    /// come with a key it admits by descriptor.
    OptionalJoinable,
}

/// Transport parameters shared by every Braid link: bounded windows everywhere, so no
/// buffer grows with what a peer sends.
pub fn transport_config() -> TransportConfig {
    transport_config_with(LinkTuning::default())
}

/// What a dialing node may tune on its links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkTuning {
    /// Bidirectional streams the dialed peer may hold open at once.
    pub max_bidi_streams: u32,
    /// A link silent this long is dead (QUIC takes the smaller of both ends' values); the
    /// keep-alive goes out at a quarter of it, at most every [`KEEP_ALIVE`].
    pub idle_timeout: Duration,
    /// Flow-control credit for one stream the peer sends on.
    pub stream_window: u32,
    /// Flow-control credit for the whole connection. On links whose streams belong to
    /// different users (central ⇄ gateway) it covers every stream's window at once
    /// ([`LinkTuning::per_stream_credit`]), so a stream whose reader stopped holds only its
    /// own window, never the connection's.
    pub connection_window: u64,
}

impl LinkTuning {
    /// A link carrying up to `streams` streams of different users at once, `stream_window`
    /// bytes each: the connection window is their sum, so no stream can starve another.
    /// What the link may buffer is then bounded by `streams × stream_window`.
    pub fn per_stream_credit(streams: u32, stream_window: u32) -> Self {
        LinkTuning {
            max_bidi_streams: streams,
            stream_window,
            connection_window: u64::from(streams.max(1)) * u64::from(stream_window),
            ..LinkTuning::default()
        }
    }
}

impl Default for LinkTuning {
    fn default() -> Self {
        LinkTuning {
            max_bidi_streams: MAX_BIDI_STREAMS,
            idle_timeout: Duration::from_millis(u64::from(IDLE_TIMEOUT_MS)),
            stream_window: STREAM_RECEIVE_WINDOW,
            connection_window: u64::from(CONNECTION_RECEIVE_WINDOW),
        }
    }
}

/// [`transport_config`], letting the peer hold `max_bidi_streams` bidirectional streams at
/// once. A stream costs its state (a few hundred bytes) until it carries data; what it may
/// buffer is bounded by the connection's receive window, not by the number of streams.
pub fn transport_config_with(tuning: LinkTuning) -> TransportConfig {
    let idle_ms = u32::try_from(tuning.idle_timeout.as_millis())
        .unwrap_or(IDLE_TIMEOUT_MS)
        .max(100);
    let keep_alive = KEEP_ALIVE.min(tuning.idle_timeout / 4);
    let connection_window = VarInt::from_u64(tuning.connection_window).unwrap_or(VarInt::MAX);
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(tuning.stream_window))
        .receive_window(connection_window)
        .send_window(SEND_WINDOW)
        .max_concurrent_bidi_streams(VarInt::from_u32(tuning.max_bidi_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(idle_ms))));
    t
}

/// The quinn client config: pins the server per dial, presents `id`'s certificate.
///
/// Resumption is off so that every connection re-checks the pin with a full handshake
/// (links are long-lived, so this costs nothing that matters).
fn client_config(
    id: Option<&NodeIdentity>,
    tuning: LinkTuning,
) -> Result<quinn::ClientConfig, NetError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerVerifier::new()));
    let mut tls = match id {
        Some(id) => builder.with_client_auth_cert(cert_chain(id), private_key(id))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // The server name only carries the pin to our own verifier; never send it.
    tls.enable_sni = false;
    tls.resumption = rustls::client::Resumption::disabled();
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config_with(tuning)));
    Ok(config)
}

fn server_config(
    id: &NodeIdentity,
    pins: PinSet,
    client_auth: ClientAuth,
    tuning: LinkTuning,
) -> Result<quinn::ServerConfig, NetError> {
    let verifier = PinnedClientVerifier::new(
        pins,
        matches!(client_auth, ClientAuth::Required | ClientAuth::Joinable),
        matches!(
            client_auth,
            ClientAuth::Joinable | ClientAuth::OptionalJoinable
        ),
    );
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(cert_chain(id), private_key(id))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: a resumed session would skip the PinSet check, and pins change.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls)?));
    config.transport_config(Arc::new(transport_config_with(tuning)));
    Ok(config)
}

fn cert_chain(id: &NodeIdentity) -> Vec<CertificateDer<'static>> {
    vec![id.tls_certificate().clone()]
}

fn private_key(id: &NodeIdentity) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(id.tls_private_key())
}

/// A key derived from the node's identity for `label`.
fn derived_key(id: &NodeIdentity, label: &[u8]) -> ring::hmac::Tag {
    let secret = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &id.noise_secret());
    ring::hmac::sign(&secret, label)
}

/// The endpoint config of a node: its QUIC stateless-reset key and connection-id key are
/// derived from its identity, so they survive a restart. A node that restarts then
/// recognises the connection ids it handed out before and answers its peers' next packet
/// with a stateless reset they trust, so they learn at once that the old connection is
/// gone instead of waiting out the idle timeout. Nobody without the node's secret can
/// forge a reset.
fn node_endpoint_config(id: &NodeIdentity) -> quinn::EndpointConfig {
    let reset = derived_key(id, b"braid quic stateless reset key");
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        reset.as_ref(),
    )));
    let cid = derived_key(id, b"braid quic connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(cid.as_ref().get(..8).unwrap_or(&[0; 8]));
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// A UDP socket and endpoint for a node (keys from its identity).
fn node_endpoint(
    bind: SocketAddr,
    id: &NodeIdentity,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, NetError> {
    let socket = std::net::UdpSocket::bind(bind)?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    Ok(quinn::Endpoint::new(
        node_endpoint_config(id),
        server,
        socket,
        runtime,
    )?)
}

/// A listening endpoint presenting `id`'s certificate and accepting clients per
/// `client_auth` and `pins`. `pins` is shared: updating it affects later handshakes.
/// The endpoint can also dial with [`connect`], presenting the same certificate.
///
/// Must be called within a tokio runtime.
pub fn server_endpoint(
    bind: SocketAddr,
    id: &NodeIdentity,
    pins: PinSet,
    client_auth: ClientAuth,
) -> Result<quinn::Endpoint, NetError> {
    server_endpoint_with(bind, id, pins, client_auth, LinkTuning::default())
}

/// [`server_endpoint`] with its accepted links tuned: the central, whose links to the
/// gateways carry one stream per proxied stream of every user.
pub fn server_endpoint_with(
    bind: SocketAddr,
    id: &NodeIdentity,
    pins: PinSet,
    client_auth: ClientAuth,
    tuning: LinkTuning,
) -> Result<quinn::Endpoint, NetError> {
    let mut ep = node_endpoint(
        bind,
        id,
        Some(server_config(id, pins, client_auth, tuning)?),
    )?;
    ep.set_default_client_config(client_config(Some(id), LinkTuning::default())?);
    Ok(ep)
}

/// A dial-only endpoint; presents `id`'s certificate when given one (nodes), none
/// otherwise (laptop clients).
///
/// Must be called within a tokio runtime.
pub fn client_endpoint(
    bind: SocketAddr,
    id: Option<&NodeIdentity>,
) -> Result<quinn::Endpoint, NetError> {
    client_endpoint_with(bind, id, LinkTuning::default())
}

/// [`client_endpoint`] whose links let the dialed peer open `max_bidi_streams`
/// bidirectional streams at once: the gateway's links, where the central opens one per
/// proxied stream.
///
/// Must be called within a tokio runtime.
pub fn client_endpoint_with(
    bind: SocketAddr,
    id: Option<&NodeIdentity>,
    tuning: LinkTuning,
) -> Result<quinn::Endpoint, NetError> {
    let mut ep = match id {
        Some(id) => node_endpoint(bind, id, None)?,
        None => quinn::Endpoint::client(bind)?,
    };
    ep.set_default_client_config(client_config(id, tuning)?);
    Ok(ep)
}

/// Dials `addr` and completes the handshake only if the server's TLS key is
/// `server_tls_key`.
///
/// `ep` must come from [`client_endpoint`] or [`server_endpoint`] (its default client
/// config holds the pinning verifier).
///
/// With [`ClientAuth::Required`] servers, TLS 1.3 lets the client finish its handshake
/// before the server has checked the client's certificate: a refused client sees this
/// call succeed and the connection close right after (any stream operation then fails
/// with [`quinn::ConnectionError`]).
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    server_tls_key: [u8; 32],
) -> Result<quinn::Connection, NetError> {
    let conn = ep.connect(addr, &server_name_for(&server_tls_key))?.await?;
    Ok(conn)
}

/// The peer's pinned TLS key, or `None` if it showed no certificate (an Optional-mode
/// client). Lets a server map a connection to its directory entry.
pub fn peer_tls_key(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    ed25519_key_of_cert(certs.first()?).ok()
}

/// A 32-byte key both ends of `conn` derive from its TLS session (RFC 5705 exporter) under
/// `label`, and no one else can: for values that must differ per link, such as a hop's
/// rewritten mailbox addresses.
pub fn link_key(conn: &quinn::Connection, label: &[u8]) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    conn.export_keying_material(&mut key, label, b"braid")
        .ok()?;
    Some(key)
}
