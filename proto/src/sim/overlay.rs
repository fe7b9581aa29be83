//! The overlay: every node, the links between them and the virtual clock that drives them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use super::net::{Link, Msg, Outbox};
use super::{
    relay_index, relay_name, ByteLog, Central, Client, ClientStream, Forwarder, Gateway, Node,
    Opts, Relay, LINK_BUFFER, MS,
};
use crate::frame::{Mailbox, StreamId};
use crate::inner::OpenStatus;
use crate::mix::MixPool;
use crate::noise::StaticKeypair;
use crate::session::{PendingSession, Session, SessionConfig, SessionHello, SessionStats};
use crate::TargetAddr;

pub struct Overlay {
    opts: Opts,
    start: Instant,
    now: Instant,
    /// Keys, handshakes: what the nodes themselves would draw.
    rng: ChaCha20Rng,
    /// Link jitter, duplication and mixing delays: what the network does.
    net: ChaCha20Rng,
    /// Deliveries by (time, order sent): ties keep FIFO order.
    queue: BTreeMap<(Instant, u64), Msg>,
    sent: u64,
    /// When each link finishes sending what it already took.
    busy_until: BTreeMap<Link, Instant>,
    pub client: Client,
    pub central: Central,
    pub gateway: Gateway,
    pub upstreams: Vec<Forwarder>,
    pub downstreams: Vec<Forwarder>,
    pub relays: Vec<Relay>,
}

impl Overlay {
    pub fn new(opts: Opts) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(opts.seed);
        let net = ChaCha20Rng::seed_from_u64(opts.seed ^ 0x9e37_79b9_7f4a_7c15);
        let start = Instant::now();
        let cfg = SessionConfig::with_cell_size(opts.cell_size);
        let central_key = StaticKeypair::generate(&mut rng);
        let gateway_key = StaticKeypair::generate(&mut rng);
        let mailboxes: Vec<Mailbox> = (0..opts.relays)
            .map(|r| {
                let mut id = [0u8; 16];
                rng.fill_bytes(&mut id);
                Mailbox {
                    relay: relay_name(r),
                    id,
                }
            })
            .collect();
        let hello = SessionHello {
            window_cells: u32::try_from(cfg.window_cells).unwrap(),
            mailboxes: mailboxes.clone(),
            limits_pass: Vec::new(),
        };
        let pending =
            PendingSession::start(&mut rng, cfg.clone(), &central_key.public(), &hello, 0, 0)
                .unwrap();
        let fwd = || Forwarder {
            log: ByteLog::new(opts.log_bytes),
            ..Forwarder::default()
        };
        Overlay {
            start,
            now: start,
            rng,
            net,
            queue: BTreeMap::new(),
            sent: 0,
            busy_until: BTreeMap::new(),
            client: Client::new(
                gateway_key.public(),
                pending,
                start,
                mailboxes,
                opts.upstreams,
            ),
            central: Central::new(cfg, central_key, opts.downstreams, fwd().log),
            gateway: Gateway {
                key: gateway_key,
                sites: Default::default(),
                streams: BTreeMap::new(),
                log: ByteLog::new(true),
            },
            upstreams: (0..opts.upstreams).map(|_| fwd()).collect(),
            downstreams: (0..opts.downstreams).map(|_| fwd()).collect(),
            relays: (0..opts.relays)
                .map(|_| Relay {
                    fwd: fwd(),
                    pool: MixPool::new(opts.mix_mean, 4096),
                })
                .collect(),
            opts,
        }
    }

    /// Queues a proxied stream: the client uploads `upload` to `target`, which answers `body`.
    pub fn add_stream(&mut self, id: StreamId, target: TargetAddr, upload: Vec<u8>, body: Vec<u8>) {
        self.gateway.sites.insert(target.clone(), body);
        self.client
            .streams
            .insert(id, ClientStream::new(target, upload));
    }

    /// Virtual time since the overlay was made.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Whether `link` has room in its send buffer (like a QUIC connection whose congestion
    /// window is not full). Without this, a session would queue its whole window on a link
    /// at once and every acknowledgement would wait behind megabytes of data.
    fn has_room(&self, link: Link) -> bool {
        self.busy_until
            .get(&link)
            .is_none_or(|t| *t <= self.now + LINK_BUFFER)
    }

    fn send(&mut self, link: Link, msg: Msg) {
        let tx = Duration::from_nanos(msg.wire_len() as u64 * 1_000_000_000 / link.bytes_per_sec());
        let free = self.busy_until.entry(link).or_insert(self.now);
        let depart = (*free).max(self.now) + tx;
        *free = depart;
        let mut at = depart + link.latency();
        if link.carries_cells() {
            at += self.jitter();
            if self.opts.dup_rate > 0.0 && self.chance(self.opts.dup_rate) {
                let again = at + self.jitter() + MS;
                self.schedule(again, msg.clone());
            }
        }
        self.schedule(at, msg);
    }

    fn schedule(&mut self, at: Instant, msg: Msg) {
        self.sent += 1;
        self.queue.insert((at, self.sent), msg);
    }

    fn jitter(&mut self) -> Duration {
        let j = self.opts.jitter.as_nanos() as u64;
        if j == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.net.next_u64() % j)
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.net.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn send_all(&mut self, out: Outbox) {
        for (link, msg) in out {
            self.send(link, msg);
        }
    }

    /// Lets every node act at `now` until none has anything more to do.
    fn drive(&mut self) {
        loop {
            let mut progress = self.client.pump_app(&mut self.rng);
            progress |= self.central.pump_app();
            // A session is offered only the paths whose first link can take a cell now.
            loop {
                let ready =
                    (self.client.paths).writable(|&i| self.has_room(Link::ClientUpstream(i)));
                let Some(s) = self.client.session.as_mut() else {
                    break;
                };
                let Some(t) = s.poll_transmit(self.now, &ready) else {
                    break;
                };
                let i = self.client.paths.get(t.path).expect("a live path").link;
                self.send(Link::ClientUpstream(i), Msg::AtUpstream(i, t.cell));
                progress = true;
            }
            loop {
                let ready =
                    (self.central.paths).writable(|&j| self.has_room(Link::CentralDownstream(j)));
                let Some(s) = self.central.session.as_mut() else {
                    break;
                };
                let Some(t) = s.poll_transmit(self.now, &ready) else {
                    break;
                };
                let (j, mb) = self.central.route(t.path);
                self.central.log.add(&t.cell);
                self.send(Link::CentralDownstream(j), Msg::AtDownstream(j, mb, t.cell));
                progress = true;
            }
            if !progress {
                break;
            }
        }
    }

    fn deliver(&mut self, msg: Msg) {
        let now = self.now;
        let mut out = Outbox::new();
        match msg {
            Msg::AtUpstream(i, cell) => {
                let u = &mut self.upstreams[i];
                if u.dead {
                    return;
                }
                u.cells += 1;
                u.log.add(&cell);
                out.push((Link::UpstreamCentral(i), Msg::AtCentral(cell)));
            }
            Msg::AtCentral(cell) => self.central.on_cell(now, &mut self.rng, cell, &mut out),
            Msg::AtDownstream(j, mb, cell) => {
                let d = &mut self.downstreams[j];
                if d.dead {
                    return;
                }
                d.cells += 1;
                d.log.add(mb.relay.as_bytes());
                d.log.add(&mb.id);
                d.log.add(&cell);
                let r = relay_index(&mb.relay);
                out.push((Link::DownstreamRelay(j, r), Msg::AtRelay(r, mb.id, cell)));
            }
            Msg::AtRelay(r, id, cell) => {
                let relay = &mut self.relays[r];
                if relay.fwd.dead {
                    return;
                }
                relay.fwd.cells += 1;
                relay.fwd.log.add(&id);
                relay.fwd.log.add(&cell);
                relay.pool.push(now, &mut self.net, (id, cell));
            }
            Msg::AtClient(id, cell) => {
                assert!(self.client.mailboxes.iter().any(|m| m.id == id));
                self.client.on_cell(now, cell);
            }
            Msg::AtGateway(g) => self.gateway.on_msg(&mut self.rng, g, &mut out),
            Msg::FromGateway(g) => self.central.on_gateway(g),
        }
        self.send_all(out);
    }

    /// Runs everything that is due at `now`: deliveries, mix releases, timers.
    fn fire_due(&mut self) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let msg = entry.remove();
            self.deliver(msg);
        }
        for r in 0..self.relays.len() {
            while let Some((id, cell)) = self.relays[r].pool.poll_release(self.now) {
                self.send(Link::RelayClient(r), Msg::AtClient(id, cell));
            }
        }
        let now = self.now;
        for s in [self.client.session.as_mut(), self.central.session.as_mut()]
            .into_iter()
            .flatten()
        {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        // Until the Welcome arrives the client repeats its Hello, round-robin over upstreams.
        if let Some(p) = self.client.pending.as_ref() {
            if now >= self.client.next_hello {
                let cell = p.hello_cell().to_vec();
                let paths = self.client.paths.live();
                let i = paths[self.client.hello_rr % paths.len()].link;
                self.client.hello_rr += 1;
                self.client.next_hello = now + 200 * MS;
                self.send(Link::ClientUpstream(i), Msg::AtUpstream(i, cell));
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let sessions = [self.client.session.as_ref(), self.central.session.as_ref()];
        self.queue
            .keys()
            .next()
            .map(|k| k.0)
            .into_iter()
            .chain(self.relays.iter().filter_map(|r| r.pool.poll_timeout()))
            .chain(
                sessions
                    .into_iter()
                    .flatten()
                    .filter_map(Session::poll_timeout),
            )
            .chain(self.client.pending.as_ref().map(|_| self.client.next_hello))
            // A full link gets room again.
            .chain(
                (self.busy_until.values())
                    .filter_map(|t| t.checked_sub(LINK_BUFFER))
                    .filter(|t| *t > self.now),
            )
            .min()
    }

    /// Advances the virtual clock from event to event until `done` holds.
    pub fn run_until(&mut self, limit: Duration, done: impl Fn(&Overlay) -> bool) {
        loop {
            self.drive();
            if done(self) {
                return;
            }
            let next = self
                .next_wakeup()
                .expect("nothing left to happen, yet not done");
            // Never stand still: a timer that stays due would otherwise spin forever.
            self.now = next.max(self.now + Duration::from_micros(10));
            assert!(
                self.elapsed() < limit,
                "not done after {limit:?} of virtual time; client {:?}, central {:?}",
                self.client.session.as_ref().map(Session::stats),
                self.central.session.as_ref().map(Session::stats),
            );
            self.fire_due();
        }
    }

    pub fn kill(&mut self, node: Node) {
        match node {
            Node::Upstream(i) => self.upstreams[i].dead = true,
            Node::Downstream(j) => self.downstreams[j].dead = true,
            Node::Relay(r) => {
                // Whatever waited in its pool is gone with it.
                let relay = &mut self.relays[r];
                relay.fwd.dead = true;
                relay.pool = MixPool::new(self.opts.mix_mean, 1);
            }
        }
    }

    /// Whether every stream finished in both directions, as the endpoints see it.
    pub fn all_done(&self) -> bool {
        self.client.streams.iter().all(|(id, c)| {
            let g = self.gateway.streams.get(id);
            c.peer_half_closed && c.peer_ended && g.is_some_and(|g| g.half_closed && g.ended)
        })
    }

    /// Runs to completion and checks every stream byte for byte, delivered exactly once.
    pub fn finish_and_check(&mut self, limit: Duration) {
        self.run_until(limit, Overlay::all_done);
        for (id, c) in &self.client.streams {
            let g = &self.gateway.streams[id];
            assert_eq!(c.status, Some(OpenStatus::OK));
            assert_eq!(g.target.as_ref(), Some(&c.target));
            assert!(g.received == c.upload, "stream {id}: upload differs");
            assert!(
                c.download == self.gateway.sites[&c.target],
                "stream {id}: download differs"
            );
        }
    }

    pub fn client_stats(&self) -> SessionStats {
        self.client.session.as_ref().unwrap().stats().clone()
    }

    pub fn central_stats(&self) -> SessionStats {
        self.central.session.as_ref().unwrap().stats().clone()
    }

    /// Stream bytes the client received on stream `id`.
    pub fn downloaded(&self, id: StreamId) -> usize {
        self.client.streams[&id].download.len()
    }
}
