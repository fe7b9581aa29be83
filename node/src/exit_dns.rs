//! The gateway's DNS resolver for clients (an inner stream of kind `DNS`): queries framed
//! as in DNS over TCP (a u16 length each) are answered from the gateway's `hosts` and its
//! system resolver, through the same lookup slots as TCP opens. Nothing is resolved on
//! the laptop.
//!
//! - Only `A` and `AAAA` questions are answered (others get `NOTIMP`), as Tor's exits do.
//! - **TTLs are clipped** to the gateway's `dns_ttl_secs`. The system resolver gives no
//!   TTL, so every answer carries that value. A long TTL would let a site tag a user by
//!   the answer their cache keeps.
//! - **The exit policy** decides each address as it would a destination on port 0: node
//!   addresses, the gateway's own, and private or loopback ones (unless the exit allows
//!   them) are left out. When every address is left out, the answer is `REFUSED`.
//! - A name that does not resolve gets `NXDOMAIN`. A query with other than one question
//!   gets `FORMERR`. A response (QR set), or a message too short to carry an id, ends the
//!   stream unanswered.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use braid_driver::Metrics;
use braid_proto::TargetAddr;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tracing::debug;

use crate::exit::ExitPolicy;
use crate::gateway::{resolve, system_lookup, DnsLimit, GatewayParams};

/// What the resolver needs of its gateway.
pub(crate) struct DnsExit {
    pub params: GatewayParams,
    pub policy: Arc<ExitPolicy>,
    pub dns: DnsLimit,
    pub metrics: Arc<Metrics>,
    /// Every answer's TTL.
    pub ttl: u32,
}

/// Answers the queries on `far` in order until the client ends the stream.
pub(crate) async fn serve(exit: DnsExit, far: DuplexStream) {
    let (mut r, mut w) = tokio::io::split(far);
    loop {
        let mut len = [0u8; 2];
        if r.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if r.read_exact(&mut msg).await.is_err() {
            return;
        }
        let Some(answer) = answer(&exit, &msg).await else {
            debug!("DNS message that is not a query: stream ended");
            return;
        };
        Metrics::inc(&exit.metrics.dns_queries);
        let Ok(len) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(2 + answer.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&answer);
        if w.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The response to one message.
async fn answer(exit: &DnsExit, msg: &[u8]) -> Option<Vec<u8>> {
    // A response (QR set) is never answered: two resolvers must not ping-pong.
    if msg.get(2).is_none_or(|flags| flags & 0x80 != 0) {
        return None;
    }
    let query = match Message::from_vec(msg) {
        // One question per query, as every resolver sends: a message of thousands would
        // hold the lookup slots other users share.
        Ok(q) if q.message_type() == MessageType::Query && q.queries().len() == 1 => q,
        _ => {
            let id = u16::from_be_bytes([*msg.first()?, *msg.get(1)?]);
            let mut m = Message::new();
            m.set_id(id)
                .set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::FormErr);
            return m.to_vec().ok();
        }
    };
    let mut resp = Message::new();
    resp.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true);
    let mut code = ResponseCode::NoError;
    if query.op_code() != OpCode::Query {
        code = ResponseCode::NotImp;
    }
    for q in query.queries() {
        resp.add_query(q.clone());
        if code != ResponseCode::NoError {
            continue;
        }
        let want_v4 = match q.query_type() {
            RecordType::A => true,
            RecordType::AAAA => false,
            _ => {
                code = ResponseCode::NotImp;
                continue;
            }
        };
        let name = q.name().to_ascii();
        let name = name.trim_end_matches('.').to_owned();
        let target = TargetAddr::Domain(name.clone(), 0);
        let addrs = match resolve(&exit.params, &exit.dns, &target, system_lookup).await {
            Ok(a) => a,
            Err(_) => {
                code = ResponseCode::NXDomain;
                continue;
            }
        };
        let passed: Vec<IpAddr> = addrs
            .iter()
            .map(|a| a.ip().to_canonical())
            .filter(|ip| {
                exit.policy
                    .check_addr(Some(&name), SocketAddr::new(*ip, 0))
                    .is_ok()
            })
            .collect();
        if passed.is_empty() {
            code = ResponseCode::Refused;
            continue;
        }
        for ip in passed {
            let rdata = match (ip, want_v4) {
                (IpAddr::V4(v4), true) => RData::A(A(v4)),
                (IpAddr::V6(v6), false) => RData::AAAA(AAAA(v6)),
                _ => continue,
            };
            resp.add_answer(Record::from_rdata(q.name().clone(), exit.ttl, rdata));
        }
    }
    resp.set_response_code(code);
    match resp.to_vec() {
        Ok(v) if v.len() <= usize::from(u16::MAX) => Some(v),
        _ => {
            let mut fail = Message::new();
            fail.set_id(query.id())
                .set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::ServFail);
            fail.to_vec().ok()
        }
    }
}
