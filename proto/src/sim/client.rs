//! The simulated client: the application's streams (inner handshakes and records) over one
//! outer session, one path per upstream it believes usable.

use std::collections::BTreeMap;
use std::time::Instant;

use rand_chacha::ChaCha20Rng;

use super::{EARLY_DATA, GATEWAY, SEAL_AHEAD};
use crate::cell::{clear_kind, CellKind};
use crate::frame::{Mailbox, StreamId};
use crate::inner::{
    self, ClientOpen, MessageDecoder, OpenRequest, OpenStatus, Record, RecordOpener, RecordSealer,
    MAX_RECORD_DATA,
};
use crate::session::{PathId, PathTable, PendingSession, Session, SessionEvent};
use crate::TargetAddr;

pub struct ClientStream {
    pub(super) target: TargetAddr,
    pub(super) upload: Vec<u8>,
    /// Upload bytes already sealed (early data included).
    sealed: usize,
    handshake: Option<ClientOpen>,
    sealer: Option<RecordSealer>,
    opener: Option<RecordOpener>,
    /// Sealed bytes the session has not accepted yet.
    outbox: Vec<u8>,
    started: bool,
    half_close_sealed: bool,
    ended: bool,
    decoder: MessageDecoder,
    pub(super) status: Option<OpenStatus>,
    pub(super) download: Vec<u8>,
    pub(super) peer_half_closed: bool,
    pub(super) peer_ended: bool,
}

impl ClientStream {
    pub(super) fn new(target: TargetAddr, upload: Vec<u8>) -> Self {
        ClientStream {
            target,
            upload,
            sealed: 0,
            handshake: None,
            sealer: None,
            opener: None,
            outbox: Vec::new(),
            started: false,
            half_close_sealed: false,
            ended: false,
            decoder: MessageDecoder::default(),
            status: None,
            download: Vec::new(),
            peer_half_closed: false,
            peer_ended: false,
        }
    }
}

pub struct Client {
    pub(super) gateway_key: [u8; 32],
    pub(super) pending: Option<PendingSession>,
    pub(super) next_hello: Instant,
    pub(super) session: Option<Session>,
    pub mailboxes: Vec<Mailbox>,
    /// Upstreams the client believes usable; a dead one stays here until it is told.
    upstreams: Vec<usize>,
    /// One path per upstream in `upstreams`; the link is the upstream's index.
    pub(super) paths: PathTable<usize>,
    pub(super) hello_rr: usize,
    pub(super) streams: BTreeMap<StreamId, ClientStream>,
}

impl Client {
    pub(super) fn new(
        gateway_key: [u8; 32],
        pending: PendingSession,
        now: Instant,
        mailboxes: Vec<Mailbox>,
        upstreams: usize,
    ) -> Self {
        let mut c = Client {
            gateway_key,
            pending: Some(pending),
            next_hello: now,
            session: None,
            mailboxes,
            upstreams: (0..upstreams).collect(),
            paths: PathTable::default(),
            hello_rr: 0,
            streams: BTreeMap::new(),
        };
        c.rebuild_paths();
        c
    }

    pub fn session(&mut self) -> &mut Session {
        self.session.as_mut().expect("session established")
    }

    /// The driver's half of "upstream `i` went away": stop offering its path, and tell the
    /// session so that it resends what the path carried.
    pub fn upstream_lost(&mut self, i: usize) {
        self.upstreams.retain(|u| *u != i);
        for p in self.rebuild_paths() {
            self.session().path_lost(p);
        }
    }

    fn rebuild_paths(&mut self) -> Vec<PathId> {
        let links: Vec<(String, usize)> = (self.upstreams.iter())
            .map(|&i| (format!("upstream-{i}"), i))
            .collect();
        self.paths.rebuild(&links, None, |_, _| Vec::new())
    }

    /// The application side: opens streams, seals upload records, feeds the session.
    pub(super) fn pump_app(&mut self, rng: &mut ChaCha20Rng) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let mut progress = false;
        for (&id, st) in &mut self.streams {
            if !st.started {
                st.started = true;
                progress = true;
                s.open_stream(id, GATEWAY);
                let early = st.upload[..st.upload.len().min(EARLY_DATA)].to_vec();
                st.sealed = early.len();
                let req = OpenRequest {
                    kind: Default::default(),
                    target: st.target.clone(),
                    early_data: early,
                };
                let (h, msg1) = inner::client_open(rng, &self.gateway_key, &req, 0).unwrap();
                st.handshake = Some(h);
                st.outbox = msg1;
            }
            // Records need the gateway's reply (the stream keys); then seal a little ahead.
            if let Some(sealer) = st.sealer.as_mut() {
                while st.outbox.len() < SEAL_AHEAD && st.sealed < st.upload.len() {
                    let end = (st.sealed + MAX_RECORD_DATA).min(st.upload.len());
                    let rec = Record::Data(st.upload[st.sealed..end].to_vec());
                    sealer.seal(&rec, &mut st.outbox).unwrap();
                    st.sealed = end;
                    progress = true;
                }
                if st.sealed == st.upload.len() && !st.half_close_sealed {
                    sealer.seal(&Record::HalfClose, &mut st.outbox).unwrap();
                    st.half_close_sealed = true;
                    progress = true;
                }
            }
            if !st.outbox.is_empty() {
                let n = s.send(id, &st.outbox);
                if n > 0 {
                    st.outbox.drain(..n);
                    progress = true;
                }
            }
            if st.half_close_sealed && st.outbox.is_empty() && !st.ended {
                s.end_stream(id);
                st.ended = true;
                progress = true;
            }
        }
        progress
    }

    pub(super) fn on_cell(&mut self, now: Instant, mut cell: Vec<u8>) {
        // Until the session opens only a Welcome matters; then every cell is the session's
        // (a sealed cell's kind is masked, and may read as anything).
        if self.session.is_none() {
            if clear_kind(&cell) == Some(CellKind::WELCOME) {
                if let Some(p) = self.pending.take() {
                    self.session = Some(p.finish(now, &cell).expect("welcome accepted"));
                }
            }
            return;
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // Errors (duplicates, replays) are counted in the stats; none is fatal.
        let _ = s.handle_cell(now, &mut cell);
        while let Some(ev) = s.poll_event() {
            match ev {
                SessionEvent::StreamData { stream, data } => {
                    let st = self.streams.get_mut(&stream).expect("known stream");
                    st.decoder.push(&data);
                    while let Some(msg) = st.decoder.next_message().unwrap() {
                        if let Some(h) = st.handshake.take() {
                            let (status, _reason, keys) = h.finish(&msg).unwrap();
                            st.status = Some(status);
                            st.sealer = Some(keys.sealer);
                            st.opener = Some(keys.opener);
                            continue;
                        }
                        match st.opener.as_mut().unwrap().open(&msg).unwrap() {
                            Record::Data(d) => st.download.extend_from_slice(&d),
                            Record::HalfClose => st.peer_half_closed = true,
                            other => panic!("unexpected record {other:?}"),
                        }
                    }
                }
                SessionEvent::StreamEnd { stream } => {
                    self.streams.get_mut(&stream).unwrap().peer_ended = true;
                }
                // Per-stream flow control is handled inside the session.
                SessionEvent::StreamCredit { .. } => {}
                other => panic!("client did not expect {other:?}"),
            }
        }
    }
}
