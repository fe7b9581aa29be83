//! The central's admission path and the client's `Mailboxes` frames, what a hostile client
//! or forwarding node controls before and after a session opens.
//!
//! The first input byte picks a mode (`mode % 2`); the rest is:
//!
//! 0. a Hello cell (wire format v2: its label is its session id) for `check_hello` (the
//!    checks before any public-key work) and, if it passes, `accept`. `check_hello` gives
//!    exactly what an independent model of its checks gives, in order (version, kind,
//!    message length, nonce, canonical header and padding, ephemeral key, label = the
//!    SHA-256 (`sha2`) id of the ephemeral key), and on success the ticket's id, ephemeral
//!    key and proof-of-work effort are the model's; the same Hello under any other label is
//!    refused as `ForeignId`. `accept` takes only honest Hellos
//!    ([`braid_fuzz::known_hello_cells`]), only ones `check_hello` passes, opens the
//!    session under the Hello's label, and answers with a Welcome of kind WELCOME, label
//!    `Label::NONE`, zero epoch, seq and padding, in which the session id appears nowhere.
//! 1. a stream of frame bytes decoded as frames; every `Mailboxes` frame goes through the
//!    central's `MailboxPolicy` (sanitize, offer, poll at arbitrary times): the set applied
//!    never holds a relay outside the directory or two mailboxes of one relay, and changes
//!    apply at most once per interval.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use braid_fuzz::*;
use braid_proto::cell::{
    clear_kind, peek_label, set_label, CellError, CellHeader, CellKind, Label, SessionId,
    HEADER_LEN, VERSION,
};
use braid_proto::frame::{Frame, Mailbox};
use braid_proto::session::{self, MailboxPolicy, SessionError};
use braid_proto::wire::WireError;
use braid_proto::wire::Reader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 2 {
        0 => hello(rest),
        _ => mailboxes(rest),
    }
});

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What `check_hello` should say about a cell of the configured size: (id, ephemeral key,
/// effort) or the first check it fails.
fn model_check(cell: &[u8]) -> Result<(SessionId, [u8; 32], u8), SessionError> {
    if cell[1] != VERSION {
        return Err(CellError::Version.into());
    }
    if cell[0] != CellKind::HELLO.0 {
        return Err(CellError::Kind(CellKind(cell[0])).into());
    }
    let len = usize::from(u16::from_be_bytes([cell[HEADER_LEN], cell[HEADER_LEN + 1]]));
    let msg_end = HEADER_LEN + 2 + len;
    if msg_end > cell.len() {
        return Err(CellError::Wire(WireError::Truncated).into());
    }
    let msg = &cell[HEADER_LEN + 2..msg_end];
    if msg_end + 8 > cell.len() {
        return Err(WireError::Truncated.into());
    }
    let nonce = &cell[msg_end..msg_end + 8];
    if cell[18..HEADER_LEN].iter().any(|b| *b != 0) || cell[msg_end + 8..].iter().any(|b| *b != 0)
    {
        return Err(SessionError::NotCanonical);
    }
    let Some(eph) = msg.get(..32) else {
        return Err(WireError::Truncated.into());
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&sha256(&[b"braid session id", eph])[..16]);
    if cell[2..18] != id {
        return Err(SessionError::ForeignId);
    }
    let d = sha256(&[b"braid hello pow", &id, nonce]);
    let mut effort = 0u32;
    for b in d {
        effort += b.leading_zeros();
        if b != 0 {
            break;
        }
    }
    Ok((SessionId(id), eph.try_into().expect("32 bytes"), effort as u8))
}

fn hello(data: &[u8]) {
    let cfg = session_cfg();
    // Pad or cut to a cell: most inputs then reach the checks past the size.
    let mut cell = data.to_vec();
    cell.resize(SESSION_CELL_SIZE, 0);
    let ticket = session::check_hello(&cfg, &cell);
    assert_eq!(
        ticket.clone().map(|t| (t.id, t.ephemeral, t.effort)),
        model_check(&cell),
        "check_hello disagrees with the model"
    );
    if let Ok(t) = &ticket {
        let h = CellHeader::take_from(&cell).expect("a checked Hello has a header");
        assert_eq!((h.kind, h.epoch, h.seq), (CellKind::HELLO, 0, 0));
        assert_eq!(clear_kind(&cell), Some(CellKind::HELLO));
        // The label is the id, the hash of the ephemeral key.
        assert_eq!(peek_label(&cell), Some(Label::from(t.id)));
        let msg = braid_proto::cell::handshake_message(&cell).expect("and a message");
        assert_eq!(t.id, session::session_id_of(&msg[..32]));
        // Under any other label the same Hello names a session that is not its own.
        let mut other = t.id.0;
        let b = usize::from(data.last().copied().unwrap_or(0));
        other[b / 8 % 16] ^= 1 << (b % 8);
        let mut relabelled = cell.clone();
        set_label(&mut relabelled, Label(other));
        assert_eq!(
            session::check_hello(&cfg, &relabelled).err(),
            Some(SessionError::ForeignId)
        );
    }
    let accepted = session::accept(
        &mut FuzzRng::new(3),
        cfg,
        &central_key(),
        Instant::now(),
        session::HelloClock::ANY,
        &cell,
    );
    if let Ok(acc) = accepted {
        let t = ticket.expect("accept took a Hello check_hello refused");
        let msg = braid_proto::cell::handshake_message(&cell).expect("a message");
        assert!(
            known_hello_cells()
                .iter()
                .any(|k| braid_proto::cell::handshake_message(k) == Ok(msg)),
            "accept took a Hello the client did not make"
        );
        assert_eq!(acc.session.id(), t.id);
        // The Welcome: no label, zero header and padding, no trace of the id.
        let w = &acc.welcome_cell;
        assert_eq!(w.len(), SESSION_CELL_SIZE);
        let wh = CellHeader::take_from(w).expect("a Welcome header");
        assert_eq!(
            (wh.kind, Label(wh.session.0), wh.epoch, wh.seq),
            (CellKind::WELCOME, Label::NONE, 0, 0)
        );
        let wend = handshake_msg_end(w);
        assert!(w[wend..].iter().all(|b| *b == 0), "Welcome padding");
        assert!(
            !w.windows(16).any(|x| x == t.id.0),
            "the Welcome carries the session id"
        );
    }
}

fn mailboxes(data: &[u8]) {
    let known = |r: &str| matches!(r, "relay-1" | "relay-2" | "relay-3");
    let interval = Duration::from_millis(100);
    let mut policy = MailboxPolicy::new(interval);
    let mut current: Vec<Mailbox> = Vec::new();
    let t0 = Instant::now();
    let mut now = t0;
    let mut last_applied: Option<Instant> = None;
    let mut r = Reader::new(data);
    let mut apply = |set: Vec<Mailbox>, at: Instant, current: &mut Vec<Mailbox>| {
        let mut relays = HashSet::new();
        for b in &set {
            assert!(known(&b.relay), "a relay outside the directory: {}", b.relay);
            assert!(relays.insert(b.relay.clone()), "two mailboxes of {}", b.relay);
        }
        if let Some(prev) = last_applied {
            assert!(at.duration_since(prev) >= interval, "changes too close");
        }
        last_applied = Some(at);
        *current = set;
    };
    while let Ok(step) = r.u8() {
        now += Duration::from_millis(u64::from(step));
        match Frame::take_from(&mut r) {
            Ok(Some(Frame::Mailboxes { boxes })) => {
                let boxes = MailboxPolicy::sanitize(boxes, known);
                if let Some(set) = policy.offer(now, &current, boxes) {
                    apply(set, now, &mut current);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
        if let Some(set) = policy.poll(now) {
            apply(set, now, &mut current);
        }
    }
}
