//! Braid's links between nodes.
//!
//! Every node-to-node link is one long-lived QUIC connection (quinn + rustls, TLS 1.3
//! only). Neither side trusts a CA or a name: each end is identified by the raw Ed25519
//! public key inside its self-signed certificate, and that key is pinned from the
//! directory. This crate holds:
//!
//! - [`identity`]: a node's key files (Noise static X25519 key, TLS Ed25519 key + cert);
//! - [`tls`]: rustls verifiers that accept exactly the pinned keys;
//! - [`endpoint`]: quinn endpoints with bounded flow-control windows, dialing with a pin;
//! - [`frame`]: length-prefixed frames on QUIC streams, bounded before allocation.

pub mod endpoint;
pub mod frame;
pub mod identity;
pub mod tls;

pub use endpoint::{
    client_endpoint, client_endpoint_with, connect, link_key, peer_tls_key, server_endpoint,
    server_endpoint_with, transport_config, transport_config_with, ClientAuth, LinkTuning,
};
pub use frame::{read_frame, write_frame};
pub use identity::{parse_key_hex, IdentityError, NodeIdentity, PublicIdentity};
pub use tls::{ed25519_key_of_cert, PinSet, ALPN};

use thiserror::Error;

/// Everything that can go wrong on a link.
#[derive(Debug, Error)]
pub enum NetError {
    /// Binding or configuring the UDP socket failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// rustls refused the configuration (bad key, unsupported version, ...).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The rustls config lacks the cipher suite QUIC needs for initial packets.
    #[error("QUIC crypto configuration: {0}")]
    QuicCrypto(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A dial could not even start (no client config, bad address, ...).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed (includes a handshake refused by a pin).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed.
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadError),
    /// A frame announced (or a caller offered) more bytes than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: u64, max: u64 },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// Loading or creating a node identity failed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}
