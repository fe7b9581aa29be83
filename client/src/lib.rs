//! The Braid client: a local SOCKS5 proxy whose streams ride the overlay, and `braid demo`,
//! a whole overlay in one process.

pub mod demo;
pub mod overlay;
pub mod socks;

pub use overlay::{ClientHandle, ClientParams};
