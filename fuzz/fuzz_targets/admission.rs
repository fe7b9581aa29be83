//! The central's admission path and the client's `Mailboxes` frames, what a hostile client
//! or forwarding node controls before and after a session opens.
//!
//! The first input byte picks a mode (`mode % 2`); the rest is:
//!
//! 0. a Hello cell for `check_hello` (the checks before any public-key work) and, if it
//!    passes, `accept`: `check_hello` never panics; what it passes has an id that is the hash
//!    of its ephemeral key and a canonical header; `accept` takes only honest Hellos
//!    ([`braid_fuzz::known_hello_cells`]), and `check_hello` passes every Hello `accept` takes.
//! 1. a stream of frame bytes decoded as frames; every `Mailboxes` frame goes through the
//!    central's `MailboxPolicy` (sanitize, offer, poll at arbitrary times): the set applied
//!    never holds a relay outside the directory or two mailboxes of one relay, and changes
//!    apply at most once per interval.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use braid_fuzz::*;
use braid_proto::cell::CellHeader;
use braid_proto::frame::{Frame, Mailbox};
use braid_proto::session::{self, MailboxPolicy};
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

fn hello(data: &[u8]) {
    let cfg = session_cfg();
    // Pad or cut to a cell: most inputs then reach the checks past the size.
    let mut cell = data.to_vec();
    cell.resize(SESSION_CELL_SIZE, 0);
    let ticket = session::check_hello(&cfg, &cell);
    if let Ok(t) = &ticket {
        let h = CellHeader::take_from(&cell).expect("a checked Hello has a header");
        assert_eq!((h.epoch, h.seq), (0, 0));
        let msg = braid_proto::cell::handshake_message(&cell).expect("and a message");
        assert_eq!(t.id, session::session_id_of(&msg[..32]));
    }
    let accepted = session::accept(
        &mut FuzzRng::new(3),
        cfg,
        &central_key(),
        Instant::now(),
        session::HelloClock::ANY,
        &cell,
    );
    if accepted.is_ok() {
        assert!(ticket.is_ok(), "accept took a Hello check_hello refused");
        let msg = braid_proto::cell::handshake_message(&cell).expect("a message");
        assert!(
            known_hello_cells()
                .iter()
                .any(|k| braid_proto::cell::handshake_message(k) == Ok(msg)),
            "accept took a Hello the client did not make"
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
