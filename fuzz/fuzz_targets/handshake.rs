//! The handshakes: Noise NK (`braid_proto::noise`), the outer session's Hello/Welcome
//! (`braid_proto::session`) and the inner stream open (`braid_proto::inner`).
//!
//! The first input byte picks a mode (`mode % 6`); the rest is:
//!
//! 0. a Noise message 1 for the fixed responder: `respond` accepts it only if it is one of
//!    the honest messages `initiate` made for the seeds ([`braid_fuzz::known_msg1s`]), and
//!    then returns that message's payload.
//! 1. a Noise message 2 for the fixed initiator: `finish` accepts it only if it is the
//!    honest responder's reply carrying the payload `finish` returned; `finish` takes
//!    `&self`, so after a refused message 2 the same initiator still finishes the honest
//!    reply.
//! 2. structured: arbitrary keys, RNG seeds, prologues and payloads through
//!    initiate → respond → reply → finish: both sides agree on payloads, keys and
//!    handshake hash; a different prologue or static key, or any flipped bit in either
//!    message, is refused; a refused message 2 leaves the initiator able to finish the
//!    honest one, twice, with the same keys; oversize payloads are refused; an arbitrary
//!    responder key never panics (low-order points are refused).
//! 3. a Hello cell for `session::accept` with the fixed central key: accepted only if its
//!    label (its session id) and handshake message are those of an honest Hello
//!    ([`braid_fuzz::known_hello_cells`]), giving that Hello's contents and a Welcome of
//!    kind WELCOME, label `Label::NONE`, epoch and seq 0, in which the session id appears
//!    nowhere; the Hello's own client finishes it, the other known clients do not.
//! 4. structured session: `PendingSession::start` → (one bit flipped) → `accept` →
//!    `finish`. The Hello's label is its session id; an accepted Hello carries what the
//!    client sent; a flipped bit anywhere but the work nonce is refused. The Welcome is
//!    kind WELCOME with label NONE and a zero header, and does not contain the session id.
//!    A flipped bit in the Welcome fails with the error of its place (kind: `Kind`,
//!    version: `Version`, label: `UnknownSession`, epoch/seq/padding: `NotCanonical`,
//!    message: a handshake error); a Welcome of another client's handshake fails both ways;
//!    after those failed tries both pending sessions still finish with their own Welcome
//!    under their own ids. Then the sessions talk: the client's first cells on two paths
//!    carry the two distinct, non-zero path labels `PathLabels::label(0)`, `label(1)` (never
//!    the id; both ends derive the same ones), the central's `LabelTable` maps each to the
//!    session and the central opens them; the central's answer carries label NONE and the
//!    client opens it.
//! 5. an inner message 1 for `gateway_accept` with the fixed gateway key: accepted only if
//!    it is an honest `client_open` message; or (when it starts with 0xFF) structured:
//!    arbitrary open requests, statuses and reasons through client_open → gateway_accept →
//!    reply_with_reason → finish.
#![no_main]

use arbitrary::Arbitrary;
use braid_fuzz::*;
use braid_proto::cell::{peek_label, CellError, CellHeader, CellKind, Label, HEADER_LEN};
use braid_proto::frame::{Mailbox, MAX_NODE_ID_LEN};
use braid_proto::inner::{
    self, OpenRequest, OpenStatus, MAX_EARLY_DATA, MAX_REASON, OPEN_MESSAGE_LEN, REPLY_MESSAGE_LEN,
};
use braid_proto::noise::{self, HandshakeError, StaticKeypair, MAX_MESSAGE, MESSAGE_OVERHEAD};
use braid_proto::session::{
    self, LabelTable, PathId, PendingSession, SessionConfig, SessionError, SessionHello,
};
use braid_proto::TargetAddr;
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => raw_msg1(rest),
        1 => raw_msg2(rest),
        2 => structured(rest, nk),
        3 => raw_hello(rest),
        4 => structured(rest, sess),
        _ => match rest.split_first() {
            Some((&0xFF, open_input)) => structured(open_input, open),
            _ => raw_open(rest),
        },
    }
});

fn raw_msg1(msg1: &[u8]) {
    match noise::respond(&hs_responder(), HS_PROLOGUE, msg1) {
        Ok((resp, payload)) => {
            let i = known_msg1s()
                .iter()
                .position(|m| m == msg1)
                .expect("respond accepted a message 1 that initiate did not make");
            assert_eq!(payload, HS_PAYLOADS[i]);
            // The responder can answer.
            resp.reply(&mut FuzzRng::new(1), b"").expect("reply");
        }
        Err(e) => {
            if msg1.len() < MESSAGE_OVERHEAD {
                assert_eq!(e, HandshakeError::Truncated);
            }
            if msg1.len() > MAX_MESSAGE {
                assert_eq!(e, HandshakeError::TooLong);
            }
        }
    }
}

/// The honest message 2 for the fixed initiator, payload `ok` (made once).
fn honest_msg2_ok() -> &'static [u8] {
    static M: OnceLock<Vec<u8>> = OnceLock::new();
    M.get_or_init(|| hs_honest_msg2(b"ok"))
}

fn raw_msg2(msg2: &[u8]) {
    let (init, _) = hs_initiator();
    match init.finish(msg2) {
        Ok((payload, keys)) => {
            assert_eq!(
                msg2,
                &hs_honest_msg2(&payload)[..],
                "finish accepted a message 2 the responder did not make"
            );
            assert_ne!(keys.initiator_to_responder, keys.responder_to_initiator);
        }
        Err(e) => {
            if msg2.len() < MESSAGE_OVERHEAD {
                assert_eq!(e, HandshakeError::Truncated);
            }
            // The refused message 2 did not spoil the initiator.
            let (payload, _) = init
                .finish(honest_msg2_ok())
                .expect("the honest message 2 after a refused one");
            assert_eq!(payload, b"ok");
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Nk {
    secret: [u8; 32],
    init_seed: u64,
    resp_seed: u64,
    prologue: Vec<u8>,
    payload1: Vec<u8>,
    payload2: Vec<u8>,
    flip1: u32,
    flip2: u32,
    /// An arbitrary "static key" for an initiator that does not know a real one.
    bogus_key: [u8; 32],
    /// Pad payloads to near the Noise limit.
    huge: u8,
}

fn nk(n: Nk) {
    let server = StaticKeypair::from_secret(n.secret);
    let mut p1 = n.payload1.clone();
    let mut p2 = n.payload2.clone();
    if n.huge == 0xA5 {
        p1.resize(MAX_MESSAGE - MESSAGE_OVERHEAD + 1, 1);
    }
    if n.huge == 0x5A {
        p2.resize(MAX_MESSAGE - MESSAGE_OVERHEAD + 1, 2);
    }

    let init = noise::initiate(
        &mut FuzzRng::new(n.init_seed),
        &server.public(),
        &n.prologue,
        &p1,
    );
    if p1.len() + MESSAGE_OVERHEAD > MAX_MESSAGE {
        assert_eq!(init.err(), Some(HandshakeError::TooLong));
        return;
    }
    let (init, m1) = init.expect("initiate");
    assert_eq!(m1.len(), p1.len() + MESSAGE_OVERHEAD);

    // Tampering with message 1, or another prologue or key: refused.
    let bit = n.flip1 as usize % (m1.len() * 8);
    let mut bad = m1.clone();
    bad[bit / 8] ^= 1 << (bit % 8);
    assert!(
        noise::respond(&server, &n.prologue, &bad).is_err(),
        "message 1 with bit {bit} flipped accepted"
    );
    let mut other_prologue = n.prologue.clone();
    other_prologue.push(0);
    assert!(noise::respond(&server, &other_prologue, &m1).is_err());
    let mut other_secret = n.secret;
    other_secret[7] ^= 0x10; // a bit clamping keeps
    assert!(noise::respond(&StaticKeypair::from_secret(other_secret), &n.prologue, &m1).is_err());

    let (resp, got1) = noise::respond(&server, &n.prologue, &m1).expect("respond");
    assert_eq!(got1, p1);
    let reply = resp.reply(&mut FuzzRng::new(n.resp_seed), &p2);
    if p2.len() + MESSAGE_OVERHEAD > MAX_MESSAGE {
        assert_eq!(reply.err(), Some(HandshakeError::TooLong));
        return;
    }
    let (m2, keys_r) = reply.expect("reply");
    assert_eq!(m2.len(), p2.len() + MESSAGE_OVERHEAD);

    // Tampered message 2: refused, and the initiator (borrowed, not consumed) is unharmed.
    let bit = n.flip2 as usize % (m2.len() * 8);
    let mut bad = m2.clone();
    bad[bit / 8] ^= 1 << (bit % 8);
    assert!(
        init.finish(&bad).is_err(),
        "message 2 with bit {bit} flipped accepted"
    );

    let (got2, keys_i) = init.finish(&m2).expect("finish");
    assert_eq!(got2, p2);
    assert_eq!(keys_i.initiator_to_responder, keys_r.initiator_to_responder);
    assert_eq!(keys_i.responder_to_initiator, keys_r.responder_to_initiator);
    assert_eq!(keys_i.handshake_hash, keys_r.handshake_hash);
    assert_ne!(keys_i.initiator_to_responder, keys_i.responder_to_initiator);
    // Finishing again gives the same.
    let (again, keys_again) = init.finish(&m2).expect("finish again");
    assert_eq!(again, p2);
    assert_eq!(keys_again.initiator_to_responder, keys_i.initiator_to_responder);
    assert_eq!(keys_again.handshake_hash, keys_i.handshake_hash);

    // Any 32 bytes as the responder's key: a message or WeakKey, never a panic.
    match noise::initiate(
        &mut FuzzRng::new(n.init_seed),
        &n.bogus_key,
        &n.prologue,
        b"x",
    ) {
        Ok((_, m)) => assert_eq!(m.len(), 1 + MESSAGE_OVERHEAD),
        Err(e) => assert_eq!(e, HandshakeError::WeakKey),
    }
}

/// The clients of the known Hellos (`known_hello_cell(i)` is `known_pending()[i]`'s).
fn known_pending() -> &'static [PendingSession] {
    static P: OnceLock<Vec<PendingSession>> = OnceLock::new();
    P.get_or_init(|| {
        (0..KNOWN_HELLOS)
            .map(|i| {
                let p = PendingSession::start(
                    &mut FuzzRng::new(1000 + i as u64),
                    session_cfg(),
                    &central_key().public(),
                    &known_session_hello(i),
                    0,
                    0,
                )
                .expect("honest start");
                assert_eq!(p.hello_cell(), &known_hello_cells()[i][..]);
                p
            })
            .collect()
    })
}

/// What every Welcome is: kind WELCOME, no label, a zero header, and no trace of the
/// session id (nothing links it to its Hello).
fn check_welcome(welcome: &[u8], size: usize, id: braid_proto::cell::SessionId) {
    assert_eq!(welcome.len(), size);
    let w = CellHeader::take_from(welcome).expect("a Welcome header");
    assert_eq!(
        (w.kind, Label(w.session.0), w.epoch, w.seq),
        (CellKind::WELCOME, Label::NONE, 0, 0)
    );
    assert_eq!(peek_label(welcome), Some(Label::NONE));
    assert!(
        !welcome.windows(16).any(|x| x == id.0),
        "the Welcome carries the session id"
    );
}

fn raw_hello(cell: &[u8]) {
    let cfg = SessionConfig::with_cell_size(SESSION_CELL_SIZE);
    let now = Instant::now();
    // Anything refused is fine; what is accepted must be honest.
    if let Ok(acc) = session::accept(
        &mut FuzzRng::new(3),
        cfg,
        &central_key(),
        now,
        session::HelloClock::ANY,
        cell,
    ) {
        let h = CellHeader::take_from(cell).expect("accepted cell has a header");
        let msg = braid_proto::cell::handshake_message(cell).expect("and a message");
        let i = known_hello_cells()
            .iter()
            .position(|k| {
                peek_label(k) == peek_label(cell)
                    && braid_proto::cell::handshake_message(k) == Ok(msg)
            })
            .expect("accept took a Hello the client did not make");
        assert_eq!(acc.hello, known_session_hello(i));
        // A Hello's label is its session id.
        assert_eq!(acc.session.id(), h.session);
        assert_eq!(acc.session.id(), known_pending()[i].id());
        check_welcome(&acc.welcome_cell, SESSION_CELL_SIZE, h.session);
        // Only the Hello's own client finishes the Welcome; the others' tries fail and
        // leave them as they were.
        for (j, p) in known_pending().iter().enumerate() {
            let r = p.finish(now, &acc.welcome_cell);
            if j == i {
                assert_eq!(r.expect("the client finishes its Welcome").id(), h.session);
            } else {
                assert!(r.is_err(), "client {j} finished client {i}'s Welcome");
            }
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Sess {
    seed: u64,
    central_secret: [u8; 32],
    size: u16,
    window_cells: u32,
    mailboxes: Vec<(String, [u8; 16])>,
    /// Bit to flip in the Hello cell (none if out of range).
    hello_flip: u32,
    /// Bit to flip in the Welcome cell.
    welcome_flip: u32,
}

fn sess(s: Sess) {
    let size = cell_size(s.size);
    let cfg = SessionConfig::with_cell_size(size);
    let central = StaticKeypair::from_secret(s.central_secret);
    let hello = SessionHello {
        window_cells: s.window_cells,
        mailboxes: s
            .mailboxes
            .iter()
            .take(8)
            .map(|(relay, id)| Mailbox {
                relay: relay.clone(),
                id: *id,
            })
            .collect(),
        // Opaque to the handshake (the central checks it after): any bytes round-trip.
        limits_pass: s.window_cells.to_be_bytes().to_vec(),
    };
    let bad_names = hello
        .mailboxes
        .iter()
        .any(|m| m.relay.len() > MAX_NODE_ID_LEN);
    let start = |seed: u64| {
        PendingSession::start(
            &mut FuzzRng::new(seed),
            cfg.clone(),
            &central.public(),
            &hello,
            0,
            0,
        )
    };
    let pending = match start(s.seed) {
        Ok(p) => p,
        Err(e) => {
            // Refused only for a name too long for the wire (u8 length) or a Hello that
            // does not fit the cell.
            // (window, frame header, stream window, time, and the 8-byte work nonce after
            // the message)
            let payload = 4
                + 2
                + 4
                + 8
                + 8
                + hello
                    .mailboxes
                    .iter()
                    .map(|m| 1 + m.relay.len() + 16)
                    .sum::<usize>();
            assert!(
                hello.mailboxes.iter().any(|m| m.relay.len() > 255)
                    || payload + MESSAGE_OVERHEAD > braid_proto::cell::handshake_capacity(size),
                "honest start refused: {e}"
            );
            return;
        }
    };
    // A Hello's label is its session id.
    assert_eq!(peek_label(pending.hello_cell()), Some(pending.id().into()));
    let mut cell = pending.hello_cell().to_vec();
    assert_eq!(cell.len(), size);
    let msg_end = handshake_msg_end(&cell);
    let bit = s.hello_flip as usize;
    let flipped = bit < size * 8;
    if flipped {
        cell[bit / 8] ^= 1 << (bit % 8);
    }
    let now = Instant::now();
    let accept = |rng_seed: u64, cell: &[u8]| {
        session::accept(
            &mut FuzzRng::new(rng_seed),
            cfg.clone(),
            &central,
            now,
            session::HelloClock::ANY,
            cell,
        )
    };
    let accepted = accept(s.seed ^ 1, &cell);
    let byte = bit / 8;
    // Every byte is bound but the proof-of-work nonce after the message (which only sets
    // the effort): kind, version, the label (the id, the hash of the ephemeral key), length
    // and message; epoch, seq and padding must be zero.
    let bound = !(msg_end..msg_end + 8).contains(&byte);
    let acc = match accepted {
        Ok(acc) => {
            assert!(
                !(flipped && bound),
                "Hello with bound byte {byte} changed was accepted"
            );
            acc
        }
        Err(e) => {
            // Names longer than the 32 bytes a frame may carry are refused at decode.
            assert!(flipped && bound || bad_names, "honest Hello refused: {e}");
            return;
        }
    };
    // What the client sent arrived (unbound bytes, if flipped, changed nothing).
    assert_eq!(acc.hello, hello);
    let id = pending.id();
    assert_eq!(acc.session.id(), id);
    let welcome = acc.welcome_cell.clone();
    check_welcome(&welcome, size, id);
    let wmsg_end = handshake_msg_end(&welcome);

    // Any bit of the Welcome: header, message and padding are all bound, each refused
    // for its own reason.
    let wbit = s.welcome_flip as usize % (size * 8);
    let wb = wbit / 8;
    let mut bad = welcome.clone();
    bad[wb] ^= 1 << (wbit % 8);
    let err = match pending.finish(now, &bad) {
        Ok(_) => panic!("Welcome with byte {wb} changed accepted"),
        Err(e) => e,
    };
    match wb {
        0 => assert_eq!(err, SessionError::Cell(CellError::Kind(CellKind(bad[0])))),
        1 => assert_eq!(err, SessionError::Cell(CellError::Version)),
        2..=17 => assert_eq!(err, SessionError::Cell(CellError::UnknownSession)),
        18..=27 => assert_eq!(err, SessionError::NotCanonical),
        b if b >= wmsg_end => assert_eq!(err, SessionError::NotCanonical),
        b if b >= HEADER_LEN + 2 => assert!(
            matches!(err, SessionError::Handshake(_)),
            "Welcome message byte {b} changed: {err:?}"
        ),
        _ => {} // the length: a shorter or longer message, refused somewhere
    }

    // A Welcome of another handshake (another client of the same central) fails both ways.
    let other = start(s.seed ^ 2).expect("the same Hello fits again");
    assert_ne!(other.id(), id);
    let other_acc = accept(s.seed ^ 3, other.hello_cell()).expect("an honest Hello");
    check_welcome(&other_acc.welcome_cell, size, other.id());
    assert!(
        pending.finish(now, &other_acc.welcome_cell).is_err(),
        "finished with a foreign Welcome"
    );
    assert!(
        other.finish(now, &welcome).is_err(),
        "finished with a foreign Welcome"
    );
    // The failed tries left both pending sessions usable.
    let mut client = pending.finish(now, &welcome).expect("finish");
    assert_eq!(client.id(), id);
    let other_client = other
        .finish(now, &other_acc.welcome_cell)
        .expect("finish the other");
    assert_eq!(other_client.id(), other.id());

    // Labels: per path toward the central, none toward the client.
    let mut central_s = acc.session;
    let labels = client.path_labels();
    let mut table = LabelTable::default();
    table.insert(id, central_s.path_labels());
    table.insert(other.id(), other_acc.session.path_labels());
    let mut seen = Vec::new();
    for p in 0..2u32 {
        // Something to send on each path (the first cell may carry all that is queued).
        client.open_stream(p + 1, "gw");
        client.send(p + 1, b"x");
        let t = client
            .poll_transmit(now, &[PathId(p)])
            .expect("the client has cells to send");
        assert_eq!(t.path, PathId(p));
        let mut c = t.cell;
        let l = peek_label(&c).expect("a label");
        assert_eq!(l, labels.label(u64::from(p)), "path {p}'s label");
        assert_eq!(l, central_s.path_labels().label(u64::from(p)));
        assert_ne!(l, Label::NONE);
        assert_ne!(l, Label::from(id), "a label is the session id");
        assert!(!c.windows(16).any(|x| x == id.0), "a cell carries the session id");
        assert_eq!(table.lookup(l), Some(id), "the central's table misroutes path {p}");
        central_s
            .handle_cell(now, &mut c)
            .unwrap_or_else(|e| panic!("the central refused path {p}'s cell: {e}"));
        seen.push(l);
    }
    assert_ne!(seen[0], seen[1], "two paths, one label");
    let mut answer = None;
    for k in 1..=10u64 {
        let later = now + Duration::from_millis(100 * k);
        central_s.handle_timeout(later);
        if let Some(t) = central_s.poll_transmit(later, &[PathId(7)]) {
            answer = Some((later, t));
            break;
        }
    }
    let (later, t) = answer.expect("the central acknowledges");
    let mut c = t.cell;
    assert_eq!(peek_label(&c), Some(Label::NONE), "a label toward the client");
    client
        .handle_cell(later, &mut c)
        .unwrap_or_else(|e| panic!("the client refused the central's cell: {e}"));
}

fn raw_open(msg1: &[u8]) {
    if let Ok((g, req)) = inner::gateway_accept(&gateway_key(), msg1) {
        let i = known_open_msgs()
            .iter()
            .position(|m| m == msg1)
            .expect("gateway_accept took a message 1 the client did not make");
        assert_eq!(req, known_open_request(i));
        let mut out = Vec::new();
        g.reply(&mut FuzzRng::new(4), OpenStatus::OK, &mut out)
            .expect("reply");
    }
}

#[derive(Debug, Arbitrary)]
enum ArbTarget {
    V4([u8; 4], u16),
    V6([u8; 16], u16),
    Domain(String, u16),
}

#[derive(Debug, Arbitrary)]
struct Open {
    seed: u64,
    gw_secret: [u8; 32],
    target: ArbTarget,
    early: Vec<u8>,
    big_early: bool,
    status: u8,
    reason: String,
    /// Repeat `reason` this many times (to pass `MAX_REASON`).
    reason_repeat: u8,
}

fn open(o: Open) {
    let gw = StaticKeypair::from_secret(o.gw_secret);
    let target = match &o.target {
        ArbTarget::V4(ip, p) => TargetAddr::Ip(SocketAddr::from((*ip, *p))),
        ArbTarget::V6(ip, p) => TargetAddr::Ip(SocketAddr::from((*ip, *p))),
        ArbTarget::Domain(d, p) => TargetAddr::Domain(d.clone(), *p),
    };
    let mut early = o.early.clone();
    if o.big_early {
        early.resize(MAX_EARLY_DATA + 1 + early.len() % 16, 0x33);
    }
    let req = OpenRequest {
        kind: Default::default(),
        target,
        early_data: early,
    };
    let mut rng = FuzzRng::new(o.seed);
    let (client, bytes) = match inner::client_open(&mut rng, &gw.public(), &req, o.seed) {
        Ok(x) => x,
        Err(_) => {
            let bad_domain =
                matches!(&req.target, TargetAddr::Domain(d, _) if d.is_empty() || d.len() > 255);
            assert!(
                bad_domain || req.early_data.len() > MAX_EARLY_DATA,
                "{req:?} refused"
            );
            return;
        }
    };
    let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    assert_eq!(len + 2, bytes.len());
    // One length whatever the target and early data (the central must not learn them).
    assert_eq!(bytes.len(), OPEN_MESSAGE_LEN);
    let (g, got) = inner::gateway_accept(&gw, &bytes[2..]).expect("gateway_accept");
    assert_eq!(got, req);
    let reason = o.reason.repeat(usize::from(o.reason_repeat % 8) + 1);
    let mut out = Vec::new();
    g.reply_with_reason(&mut rng, OpenStatus(o.status), &reason, &mut out)
        .expect("reply");
    let len = usize::from(u16::from_be_bytes([out[0], out[1]]));
    assert_eq!(len + 2, out.len());
    assert_eq!(out.len(), REPLY_MESSAGE_LEN);
    let (status, why, _) = client.finish(&out[2..]).expect("finish");
    assert_eq!(status, OpenStatus(o.status));
    // The reason: control characters replaced, then cut to MAX_REASON bytes on a
    // character boundary (Finding 2, README.md, fixed: it used to be cut first).
    let mut expect = String::new();
    for c in reason.chars() {
        let c = if c.is_control() { '\u{fffd}' } else { c };
        if expect.len() + c.len_utf8() > MAX_REASON {
            break;
        }
        expect.push(c);
    }
    assert_eq!(why, expect);
    assert!(!why.chars().any(char::is_control));
    // Documented on `ClientOpen::finish`: at most MAX_REASON bytes.
    assert!(
        why.len() <= MAX_REASON,
        "reason of {} bytes: {why:?}",
        why.len()
    );
}
