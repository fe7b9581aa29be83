//! The Braid client: a local SOCKS5 proxy whose streams ride the overlay, and (with the
//! `demo` feature, on by default) `braid demo`, a whole overlay in one process.

#[cfg(feature = "demo")]
pub mod demo;
pub mod dns;
pub mod first_hop;
pub mod gateways;
pub mod http_proxy;
pub mod inner_stream;
pub mod isolation;
mod members;
pub mod overlay;
pub mod resting;
pub mod routing;
pub mod socks;
pub mod status;
pub mod udp;

pub use overlay::{ClientHandle, ClientParams};
