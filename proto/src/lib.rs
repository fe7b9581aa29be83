//! Braid's protocol core. No sockets, no tokio, no clock: time and randomness are arguments,
//! output is pulled, so every state machine here is tested deterministically in memory.
#![forbid(unsafe_code)]

pub mod aead;
pub mod cell;
pub mod credential;
pub mod datagram;
pub mod envelope;
pub mod frame;
pub mod http1;
pub mod inner;
pub mod join;
pub mod mix;
pub mod noise;
mod open_enum;
pub mod rate;
pub mod reason;
pub mod replay;
pub mod session;
#[cfg(feature = "test-util")]
pub mod sim;
pub mod socks4;
pub mod socks5;
pub mod target;
pub mod wire;

pub use reason::Reason;
pub use target::TargetAddr;
