//! The simulated network: directed links between nodes and what travels on them.

use std::time::Duration;

use super::{GATEWAY_BYTES_PER_SEC, LINK_BYTES_PER_SEC, MS};
use crate::frame::{Mailbox, StreamId};

/// One direction of a connection between two nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Link {
    ClientUpstream(usize),
    UpstreamCentral(usize),
    CentralDownstream(usize),
    DownstreamRelay(usize, usize),
    RelayClient(usize),
    CentralGateway,
    GatewayCentral,
}

impl Link {
    /// Different per path, so cells of one session overtake each other.
    pub fn latency(self) -> Duration {
        let n = |i: usize| u32::try_from(i).unwrap();
        match self {
            Link::ClientUpstream(i) => MS * (1 + n(i)),
            Link::UpstreamCentral(i) => MS * (1 + 2 * n(i)),
            Link::CentralDownstream(j) => MS * (1 + n(j)),
            Link::DownstreamRelay(j, r) => MS * (1 + 2 * n(r)) + MS / 3 * n(j),
            Link::RelayClient(r) => MS * (1 + n(r)),
            Link::CentralGateway | Link::GatewayCentral => MS,
        }
    }

    pub fn bytes_per_sec(self) -> u64 {
        if self.carries_cells() {
            LINK_BYTES_PER_SEC
        } else {
            GATEWAY_BYTES_PER_SEC
        }
    }

    /// The gateway link is one ordered QUIC stream per proxied stream: it never reorders,
    /// loses or duplicates. Cell links may.
    pub fn carries_cells(self) -> bool {
        !matches!(self, Link::CentralGateway | Link::GatewayCentral)
    }
}

#[derive(Debug, Clone)]
pub(super) enum GwMsg {
    Open(StreamId),
    Data(StreamId, Vec<u8>),
    End(StreamId),
}

/// What is in flight on a link, named by where it lands.
#[derive(Debug, Clone)]
pub(super) enum Msg {
    AtUpstream(usize, Vec<u8>),
    AtCentral(Vec<u8>),
    /// The central addresses each response cell to one of the client's mailboxes.
    AtDownstream(usize, Mailbox, Vec<u8>),
    AtRelay(usize, [u8; 16], Vec<u8>),
    AtClient([u8; 16], Vec<u8>),
    AtGateway(GwMsg),
    FromGateway(GwMsg),
}

impl Msg {
    pub(super) fn wire_len(&self) -> usize {
        match self {
            Msg::AtUpstream(_, c)
            | Msg::AtCentral(c)
            | Msg::AtDownstream(_, _, c)
            | Msg::AtRelay(_, _, c)
            | Msg::AtClient(_, c) => c.len(),
            Msg::AtGateway(g) | Msg::FromGateway(g) => match g {
                GwMsg::Data(_, d) => d.len(),
                _ => 8,
            },
        }
    }
}

pub(super) type Outbox = Vec<(Link, Msg)>;
