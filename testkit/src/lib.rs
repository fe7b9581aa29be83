//! Test support for Braid's end-to-end tests and benchmarks (a dev-dependency only): free
//! ports, an HTTP origin with deterministic bodies, curl through a SOCKS5 proxy, SOCKS5
//! request builders, network namespaces, and an overlay of separate `braid-node` processes.
//! Test code: it panics on setup failures, which is what a test wants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod http_origin;
pub mod netns;
pub mod origin;
pub mod procs;
pub mod socks;

pub use origin::*;

use std::net::IpAddr;

/// A port that was free on `ip` a moment ago (bound and released), TCP or UDP.
pub fn free_port(ip: IpAddr, udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}
