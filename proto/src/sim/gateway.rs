//! The simulated gateway, acting as the target servers too.

use std::collections::{BTreeMap, HashMap};

use rand_chacha::ChaCha20Rng;

use super::net::{GwMsg, Link, Msg, Outbox};
use super::ByteLog;
use crate::frame::StreamId;
use crate::inner::{self, MessageDecoder, OpenStatus, Record, RecordOpener, MAX_RECORD_DATA};
use crate::noise::StaticKeypair;
use crate::TargetAddr;

#[derive(Default)]
pub struct GwStream {
    decoder: MessageDecoder,
    opener: Option<RecordOpener>,
    pub target: Option<TargetAddr>,
    pub received: Vec<u8>,
    pub half_closed: bool,
    pub ended: bool,
}

/// The exit, acting as the target servers too: each known target answers with a fixed body.
pub struct Gateway {
    pub(super) key: StaticKeypair,
    pub sites: HashMap<TargetAddr, Vec<u8>>,
    pub streams: BTreeMap<StreamId, GwStream>,
    /// Plaintext the gateway learned (targets, data): what it is allowed to know.
    pub log: ByteLog,
}

impl Gateway {
    pub(super) fn on_msg(&mut self, rng: &mut ChaCha20Rng, g: GwMsg, out: &mut Outbox) {
        match g {
            GwMsg::Open(stream) => {
                assert!(self.streams.insert(stream, GwStream::default()).is_none());
            }
            GwMsg::End(stream) => self.streams.get_mut(&stream).unwrap().ended = true,
            GwMsg::Data(stream, bytes) => {
                let st = self.streams.get_mut(&stream).unwrap();
                st.decoder.push(&bytes);
                while let Some(msg) = st.decoder.next_message().unwrap() {
                    let Some(opener) = st.opener.as_mut() else {
                        let (open, req) = inner::gateway_accept(&self.key, &msg).unwrap();
                        self.log.add(req.target.reveal().to_string().as_bytes());
                        self.log.add(&req.early_data);
                        st.received.extend_from_slice(&req.early_data);
                        let body = self.sites.get(&req.target).expect("known target").clone();
                        st.target = Some(req.target);
                        // The target answers at once: both directions flow together.
                        let mut reply = Vec::new();
                        let keys = open.reply(rng, OpenStatus::OK, &mut reply).unwrap();
                        let (mut sealer, opener) = (keys.sealer, keys.opener);
                        for chunk in body.chunks(MAX_RECORD_DATA) {
                            sealer
                                .seal(&Record::Data(chunk.to_vec()), &mut reply)
                                .unwrap();
                        }
                        sealer.seal(&Record::HalfClose, &mut reply).unwrap();
                        st.opener = Some(opener);
                        out.push((
                            Link::GatewayCentral,
                            Msg::FromGateway(GwMsg::Data(stream, reply)),
                        ));
                        out.push((Link::GatewayCentral, Msg::FromGateway(GwMsg::End(stream))));
                        continue;
                    };
                    match opener.open(&msg).unwrap() {
                        Record::Data(d) => {
                            self.log.add(&d);
                            st.received.extend_from_slice(&d);
                        }
                        Record::HalfClose => st.half_closed = true,
                        other => panic!("unexpected record {other:?}"),
                    }
                }
            }
        }
    }
}
