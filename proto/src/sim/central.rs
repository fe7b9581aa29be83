//! The simulated central: accepts the client's session, braids its cells, hands stream bytes
//! to the gateway and sends responses over (downstream, mailbox) paths.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use rand_chacha::ChaCha20Rng;

use super::net::{GwMsg, Link, Msg, Outbox};
use super::{ByteLog, GATEWAY};
use crate::cell::{clear_kind, peek_label, CellKind};
use crate::frame::{Mailbox, StreamId};
use crate::noise::StaticKeypair;
use crate::session::{self, PathId, PathTable, Session, SessionConfig, SessionEvent};

pub struct Central {
    cfg: SessionConfig,
    key: StaticKeypair,
    pub(super) session: Option<Session>,
    welcome: Vec<u8>,
    labels: session::LabelTable,
    /// The mailboxes the client registered last: responses go to these.
    pub active_boxes: Vec<Mailbox>,
    /// Downstreams the central believes usable.
    downstreams: BTreeSet<usize>,
    /// One path per (downstream in `downstreams`, mailbox in `active_boxes`); the link is
    /// the downstream's index.
    pub(super) paths: PathTable<usize>,
    /// Gateway bytes waiting for room in the session, per stream.
    to_client: BTreeMap<StreamId, Vec<u8>>,
    end_after_drain: BTreeSet<StreamId>,
    /// Stream bytes the session delivered from the client, all streams.
    pub from_client: usize,
    pub log: ByteLog,
}

impl Central {
    pub(super) fn new(
        cfg: SessionConfig,
        key: StaticKeypair,
        downstreams: usize,
        log: ByteLog,
    ) -> Self {
        Central {
            cfg,
            key,
            session: None,
            welcome: Vec::new(),
            labels: session::LabelTable::default(),
            active_boxes: Vec::new(),
            downstreams: (0..downstreams).collect(),
            paths: PathTable::default(),
            to_client: BTreeMap::new(),
            end_after_drain: BTreeSet::new(),
            from_client: 0,
            log,
        }
    }

    /// Where a path's cells go: the downstream and the mailbox they are addressed to.
    pub(super) fn route(&self, p: PathId) -> (usize, Mailbox) {
        let path = self.paths.get(p).expect("a live path");
        (path.link, path.mailbox.clone().expect("a central path"))
    }

    /// The driver's half of "downstream `j` went away": stop offering its paths, and tell
    /// the session so that it resends what they carried.
    pub fn downstream_lost(&mut self, j: usize) {
        self.downstreams.remove(&j);
        self.rebuild_paths();
    }

    /// Rebuilds the path table from the downstreams and mailboxes; the paths that went away
    /// are lost to the session.
    fn rebuild_paths(&mut self) {
        let links: Vec<(String, usize)> = (self.downstreams.iter())
            .map(|&j| (format!("downstream-{j}"), j))
            .collect();
        let gone = self
            .paths
            .rebuild(&links, Some(&self.active_boxes), |_, _| Vec::new());
        if let Some(s) = self.session.as_mut() {
            for p in gone {
                s.path_lost(p);
            }
        }
    }

    fn set_mailboxes(&mut self, boxes: Vec<Mailbox>) {
        self.active_boxes = boxes;
        self.rebuild_paths();
    }

    pub(super) fn pump_app(&mut self) -> bool {
        let Some(s) = self.session.as_mut() else {
            return false;
        };
        let mut progress = false;
        for (&id, buf) in &mut self.to_client {
            if !buf.is_empty() {
                let n = s.send(id, buf);
                if n > 0 {
                    buf.drain(..n);
                    progress = true;
                }
            }
            if buf.is_empty() && self.end_after_drain.remove(&id) {
                s.end_stream(id);
                progress = true;
            }
        }
        progress
    }

    pub(super) fn on_cell(
        &mut self,
        now: Instant,
        rng: &mut ChaCha20Rng,
        mut cell: Vec<u8>,
        out: &mut Outbox,
    ) {
        self.log.add(&cell);
        let known = peek_label(&cell).and_then(|l| self.labels.lookup(l));
        if known.is_none() && clear_kind(&cell) == Some(CellKind::HELLO) {
            if self.session.is_none() {
                let acc = session::accept(
                    rng,
                    self.cfg.clone(),
                    &self.key,
                    now,
                    session::HelloClock::ANY,
                    &cell,
                )
                .unwrap();
                for b in &acc.hello.mailboxes {
                    self.log.add(b.relay.as_bytes());
                    self.log.add(&b.id);
                }
                self.set_mailboxes(acc.hello.mailboxes);
                self.welcome = acc.welcome_cell;
                self.labels
                    .insert(acc.session.id(), acc.session.path_labels());
                self.session = Some(acc.session);
            }
            // A repeated Hello means the Welcome was lost: send the same bytes again.
            let (j, mb) = self.route(self.paths.live()[0].id);
            self.log.add(&self.welcome);
            out.push((
                Link::CentralDownstream(j),
                Msg::AtDownstream(j, mb, self.welcome.clone()),
            ));
            return;
        }
        let Some(s) = self.session.as_mut() else {
            return;
        };
        // Routed by the path label, as the central node does.
        if known != Some(s.id()) {
            return;
        }
        if s.handle_cell(now, &mut cell).is_ok() {
            // Opened in place: this is everything the central could decrypt.
            self.log.add(&cell);
        }
        let mut mailboxes = None;
        while let Some(ev) = s.poll_event() {
            let g = match ev {
                SessionEvent::StreamOpened { stream, gateway } => {
                    self.log.add(gateway.as_bytes());
                    assert_eq!(gateway, GATEWAY);
                    GwMsg::Open(stream)
                }
                SessionEvent::StreamData { stream, data } => {
                    self.log.add(&data);
                    self.from_client += data.len();
                    GwMsg::Data(stream, data)
                }
                SessionEvent::StreamEnd { stream } => GwMsg::End(stream),
                SessionEvent::Mailboxes(b) => {
                    mailboxes = Some(b);
                    continue;
                }
                // Flow control is the session's business here (it consumes on delivery); a
                // client's word on members is not the central's to take.
                SessionEvent::StreamCredit { .. } | SessionEvent::Descriptor(_) => continue,
                SessionEvent::StreamReset { stream, code } => {
                    panic!("unexpected reset of {stream} ({code})")
                }
                SessionEvent::Failed(e) => panic!("central session failed: {e}"),
            };
            out.push((Link::CentralGateway, Msg::AtGateway(g)));
        }
        if let Some(b) = mailboxes {
            for m in &b {
                self.log.add(m.relay.as_bytes());
            }
            self.set_mailboxes(b);
        }
    }

    pub(super) fn on_gateway(&mut self, g: GwMsg) {
        match g {
            GwMsg::Data(stream, d) => {
                self.log.add(&d);
                self.to_client
                    .entry(stream)
                    .or_default()
                    .extend_from_slice(&d);
            }
            GwMsg::End(stream) => {
                self.to_client.entry(stream).or_default();
                self.end_after_drain.insert(stream);
            }
            GwMsg::Open(_) => unreachable!("gateways do not open streams"),
        }
    }
}
