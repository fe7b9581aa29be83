//! The cell codec (wire format v2), header protection and the outer sealing layer
//! (`braid_proto::cell`), and the central's label table (`braid_proto::session::LabelTable`).
//!
//! The first input byte picks a mode (`mode % 5`):
//!
//! 0. raw: the rest is a cell. `CellHeader::take_from` fails exactly when it should and,
//!    on success, `write_onto` reproduces the first 28 bytes; `peek_label` is bytes 2..18
//!    (the parsed header's label field), `clear_kind` byte 0, `set_label` changes bytes
//!    2..18 and nothing else; `handshake_message` returns exactly the length-prefixed bytes
//!    it claims, and `handshake_cell` rebuilds a cell carrying the same kind, label and
//!    message. Header protection under the fixed keys ([`braid_fuzz::cell_keys`]) against an
//!    independent HMAC-SHA256 (`sha2`): `unprotect` XORs exactly kind and epoch+seq (bytes 0
//!    and 18..28) with `HMAC(header key, body[..16])[..11]`, touches nothing else, and
//!    twice restores the cell. `DirectionKeys::open` under the fixed session id fails with
//!    exactly the error the unmasked header calls for (version, kind, epoch, then `Auth`),
//!    and succeeds only on a cell that re-seals to the identical bytes up to its label (one
//!    the sealer produced: the seeds hold some, relabelled ones too); such a cell fails
//!    under another session id (`Auth`) and under the other direction's keys.
//! 1. seal: arbitrary keys, algorithm, direction, epoch length, cell size, kind, session,
//!    seq and payload. `seal` fails exactly when it should; otherwise the cell has a zero
//!    label, its wire kind/epoch/seq are the real ones XOR the independent mask, `unprotect`
//!    recovers the header, and `open` (fresh keys and the sealing keys) round-trips header
//!    and zero-padded payload, also after an arbitrary relabel. One flipped bit opens (same
//!    header and payload) exactly when it is in the label; any flipped non-label header
//!    bit fails; another session id and the other algorithm fail with `Auth`; the other
//!    direction's keys, another base key and another cell size fail.
//! 2. replay: a sequence of received sequence numbers run through `ReplayWindow`
//!    (check, then commit if accepted) against a model that remembers every accepted seq:
//!    nothing is accepted twice, and the window answers exactly as the model does.
//! 3. epochs: cells sealed at arbitrary seqs are opened, each under an arbitrary label, in
//!    an arbitrary order by one receiver, exercising the two-slot epoch key cache: every
//!    one must open.
//! 4. labels: insert / remove / lookup sequences on a `LabelTable` (path labels of four real
//!    sessions, under arbitrary session ids) against a model of what it documents: a new
//!    session holds indices `0..LABELS_AHEAD`; a lookup of a held index `i` marks it seen
//!    and registers every index up to `i + LABELS_AHEAD`; over `MAX_LABELS` the label seen
//!    least recently goes (the lowest index on a tie). A lookup answers exactly as the model
//!    does (held labels find their session; others, removed sessions' and arbitrary labels
//!    find none), the label just found is found again at once (a live path keeps its
//!    label), `len()` is exactly the model's count (so never over `MAX_LABELS` per
//!    session), removing every session empties the table, and labels are never
//!    `Label::NONE`.
#![no_main]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Instant;

use arbitrary::Arbitrary;
use braid_fuzz::{
    cell_keys, cell_size, central_key, known_session_hello, session_cfg, structured, FuzzRng,
    CELL_BASE, CELL_DIR, CELL_EPOCH_CELLS,
};
use braid_proto::aead::AeadAlgorithm;
use braid_proto::cell::{
    clear_kind, handshake_capacity, handshake_cell, handshake_message,
    peek_label, sealed_capacity, set_label, CellError, CellHeader, CellKind, Direction,
    DirectionKeys, Label, ReplayWindow, SessionId, HEADER_LEN, LABEL_AT, MIN_CELL_SIZE,
    VERSION,
};
use braid_proto::session::{
    self, LabelTable, PathLabels, PendingSession, LABELS_AHEAD, MAX_LABELS,
};
use braid_proto::wire::WireError;
use libfuzzer_sys::fuzz_target;

/// The session the raw-mode seeds were sealed in (`examples/gen_seeds.rs`).
const SID: SessionId = SessionId(*b"fuzz-session-id!");
/// Ciphertext bytes the header mask is computed from.
const SAMPLE_LEN: usize = 16;
/// Header bytes under the mask: kind, then epoch and seq.
const MASKED: [usize; 11] = [0, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27];
/// Header bytes a sealed cell binds: all but the label.
const BOUND_HEADER: [usize; 12] = [0, 1, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => raw(rest),
        1 => structured(rest, seal),
        2 => structured(rest, |ops: Vec<ReplayOp>| replay(&ops)),
        3 => structured(rest, epochs),
        _ => structured(rest, |ops: Vec<LabelOp>| labels(&ops)),
    }
});

/// HMAC-SHA256 over the concatenated `parts`, independent of proto's (ring).
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let ih = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(ih);
    outer.finalize().into()
}

/// The header-protection mask of `cell` as the format documents it (`None` if the cell is
/// too short to sample): `HMAC(HMAC(base, "braid header protection" ‖ dir), body[..16])`.
fn model_mask(base: &[u8; 32], dir: Direction, cell: &[u8]) -> Option<[u8; 11]> {
    let sample = cell.get(HEADER_LEN..HEADER_LEN + SAMPLE_LEN)?;
    let hk = hmac_sha256(base, &[b"braid header protection", &[dir as u8]]);
    let t = hmac_sha256(&hk, &[sample]);
    let mut m = [0u8; 11];
    m.copy_from_slice(&t[..11]);
    Some(m)
}

/// `cell` with `mask` XORed over the masked header bytes.
fn toggled(cell: &[u8], mask: &[u8; 11]) -> Vec<u8> {
    let mut c = cell.to_vec();
    for (i, m) in MASKED.iter().zip(mask) {
        c[*i] ^= m;
    }
    c
}

fn raw(cell: &[u8]) {
    // Header codec.
    let parsed = CellHeader::take_from(cell);
    let wire_label = cell.get(LABEL_AT).map(|b| Label(b.try_into().expect("16 bytes")));
    assert_eq!(peek_label(cell), wire_label);
    assert_eq!(clear_kind(cell), cell.first().map(|k| CellKind(*k)));
    match &parsed {
        Ok(h) => {
            assert!(cell.len() >= HEADER_LEN && cell[1] == VERSION);
            let mut buf = [0u8; HEADER_LEN];
            h.write_onto(&mut buf).expect("a header fits 28 bytes");
            assert_eq!(&buf[..], &cell[..HEADER_LEN]);
            // A short buffer is refused, not overrun.
            let mut short = [0u8; HEADER_LEN - 1];
            assert!(h.write_onto(&mut short).is_err());
            // Read off the wire, the header's "session" is the label.
            assert_eq!(wire_label, Some(Label(h.session.0)));
            assert_eq!(clear_kind(cell), Some(h.kind));
        }
        Err(e) => {
            if cell.len() >= 2 && cell[1] != VERSION {
                assert_eq!(*e, CellError::Version);
            } else {
                assert!(cell.len() < HEADER_LEN);
                assert_eq!(*e, CellError::Wire(WireError::Truncated));
            }
        }
    }

    // Relabelling touches the label and nothing else.
    let new_label = Label(std::array::from_fn(|i| {
        cell.get(HEADER_LEN + i).copied().unwrap_or(i as u8) ^ 0x5a
    }));
    let mut relabelled = cell.to_vec();
    set_label(&mut relabelled, new_label);
    if cell.len() >= LABEL_AT.end {
        assert_eq!(peek_label(&relabelled), Some(new_label));
        assert_eq!(relabelled[..LABEL_AT.start], cell[..LABEL_AT.start]);
        assert_eq!(relabelled[LABEL_AT.end..], cell[LABEL_AT.end..]);
    } else {
        assert_eq!(relabelled, cell, "set_label changed a cell without a label");
    }

    // Handshake message codec.
    if let Ok(msg) = handshake_message(cell) {
        let len = usize::from(u16::from_be_bytes([cell[HEADER_LEN], cell[HEADER_LEN + 1]]));
        assert_eq!(msg.len(), len);
        assert_eq!(msg, &cell[HEADER_LEN + 2..HEADER_LEN + 2 + len]);
        if let Ok(h) = parsed {
            let size = cell.len();
            let label = Label(h.session.0);
            let rebuilt = handshake_cell(size, h.kind, label, msg)
                .expect("the message fitted in a cell of this size");
            assert_eq!(rebuilt.len(), size);
            assert_eq!(handshake_message(&rebuilt).ok(), Some(msg));
            assert_eq!(rebuilt[..18], cell[..18]);
            assert_eq!(peek_label(&rebuilt), Some(label));
            let rh = CellHeader::take_from(&rebuilt).expect("a rebuilt header");
            assert_eq!((rh.kind, rh.epoch, rh.seq), (h.kind, 0, 0));
            assert!(len <= handshake_capacity(size));
        }
    } else {
        assert!(
            cell.len() < HEADER_LEN + 2
                || cell.len()
                    < HEADER_LEN
                        + 2
                        + usize::from(u16::from_be_bytes([cell[HEADER_LEN], cell[HEADER_LEN + 1]]))
        );
    }

    // Header protection under the fixed keys, against the model.
    let mask = model_mask(&CELL_BASE, CELL_DIR, cell);
    let rx = cell_keys();
    let mut un = cell.to_vec();
    let unprotected = rx.unprotect(SID, &mut un);
    let Some(mask) = mask else {
        assert_eq!(
            unprotected,
            Err(CellError::Wire(WireError::Truncated)),
            "unprotect of a cell without a sample"
        );
        assert_eq!(un, cell, "a refused unprotect changed the cell");
        let mut buf = cell.to_vec();
        assert_eq!(
            cell_keys().open(cell.len(), SID, &mut buf).err(),
            Some(CellError::Wire(WireError::Truncated))
        );
        return;
    };
    let plain_header = toggled(cell, &mask);
    assert_eq!(un, plain_header, "unprotect is not the documented mask");
    // Unprotecting again puts the mask back: nothing else changed the sample.
    let mut again = un.clone();
    let _ = rx.unprotect(SID, &mut again);
    assert_eq!(again, cell);
    // What the unmasked header calls for, in `open`'s check order.
    let expect_header = CellHeader::take_from(&plain_header).map(|h| CellHeader {
        session: SID,
        ..h
    });
    assert_eq!(unprotected, expect_header);
    let expect_open: Result<(), CellError> = match expect_header.clone() {
        Err(e) => Err(e),
        Ok(h) if !h.kind.is_sealed() => Err(CellError::Kind(h.kind)),
        Ok(h) => match u16::try_from(h.seq / CELL_EPOCH_CELLS) {
            Ok(e) if e == h.epoch => Err(CellError::Auth), // unless the sealer made it
            _ => Err(CellError::Epoch),
        },
    };

    // Opening with the fixed keys.
    let size = cell.len();
    let mut buf = cell.to_vec();
    let mut rx = cell_keys();
    let wrong_size = if size == MIN_CELL_SIZE {
        size + 1
    } else {
        MIN_CELL_SIZE
    };
    assert!(matches!(
        rx.open(wrong_size, SID, &mut buf.clone()),
        Err(CellError::Size { .. })
    ));
    match rx.open(size, SID, &mut buf) {
        Ok((h, plain)) => {
            assert_eq!(expect_open, Err(CellError::Auth), "opened: {h:?}");
            assert_eq!(h.session, SID);
            assert_eq!(Ok(h), expect_header);
            // Only the sealer can have made it: sealing the same plaintext at the same
            // header gives the same bytes, up to the label (which the seal leaves zero).
            let plain = plain.to_vec();
            let resealed = cell_keys()
                .seal(size, h.kind, SID, h.seq, &plain)
                .expect("re-seal");
            assert_eq!(peek_label(&resealed), Some(Label::NONE));
            let mut unlabelled = cell.to_vec();
            set_label(&mut unlabelled, Label::NONE);
            assert_eq!(
                resealed, unlabelled,
                "open accepted a cell the sealer did not produce"
            );
            assert!(h.kind.is_sealed());
            assert_eq!(u64::from(h.epoch), h.seq / CELL_EPOCH_CELLS);
            // Bound to its session though the id never travels.
            let mut other_sid = SID;
            other_sid.0[cell[LABEL_AT.start] as usize % 16] ^= 1 << (cell[0] % 8);
            let mut c = cell.to_vec();
            assert_eq!(
                cell_keys().open(size, other_sid, &mut c).err(),
                Some(CellError::Auth),
                "opened under another session id"
            );
            // The other direction's keys never open it.
            let mut c = cell.to_vec();
            let mut other = DirectionKeys::new(
                CELL_BASE,
                AeadAlgorithm::Aes256Gcm,
                Direction::CentralToClient,
                CELL_EPOCH_CELLS,
            );
            assert!(other.open(size, SID, &mut c).is_err());
        }
        Err(e) => assert_eq!(Err(e), expect_open, "errors out of check order"),
    }
}

#[derive(Debug, Arbitrary)]
struct Seal {
    base: [u8; 32],
    chacha: bool,
    central_to_client: bool,
    epoch_cells: u64,
    size: u16,
    ack: bool,
    session: [u8; 16],
    seq: u64,
    flip: u32,
    /// A bit of the bound header (kind, version, epoch, seq) to flip.
    header_flip: u8,
    other_base_bit: u8,
    other_session_bit: u8,
    label: [u8; 16],
    payload: Vec<u8>,
}

fn seal(s: Seal) {
    let alg = if s.chacha {
        AeadAlgorithm::ChaCha20Poly1305
    } else {
        AeadAlgorithm::Aes256Gcm
    };
    let dir = if s.central_to_client {
        Direction::CentralToClient
    } else {
        Direction::ClientToCentral
    };
    let keys = || DirectionKeys::new(s.base, alg, dir, s.epoch_cells);
    let size = cell_size(s.size);
    let kind = if s.ack { CellKind::ACK } else { CellKind::DATA };
    let session = SessionId(s.session);
    let mut tx = keys();
    let sealed = tx.seal(size, kind, session, s.seq, &s.payload);
    let epoch = s.seq / s.epoch_cells.max(1);
    if epoch > u64::from(u16::MAX) {
        assert_eq!(sealed.err(), Some(CellError::Epoch));
        return;
    }
    if s.payload.len() > sealed_capacity(size) {
        assert_eq!(sealed.err(), Some(CellError::Wire(WireError::NoSpace)));
        return;
    }
    let cell = sealed.expect("seal within capacity and epoch range");
    assert_eq!(cell.len(), size);
    let header = CellHeader {
        kind,
        session,
        epoch: epoch as u16,
        seq: s.seq,
    };

    // On the wire: no label, version 2, kind/epoch/seq under the documented mask.
    assert_eq!(peek_label(&cell), Some(Label::NONE));
    assert_eq!(cell[1], VERSION);
    let mask = model_mask(&s.base, dir, &cell).expect("a sealed cell has a sample");
    let plain_header = toggled(&cell, &mask);
    let mut expect = [0u8; HEADER_LEN];
    CellHeader {
        session: SessionId(Label::NONE.0),
        ..header
    }
    .write_onto(&mut expect)
    .expect("header");
    assert_eq!(
        plain_header[..HEADER_LEN],
        expect[..],
        "wire header is not the real one under the mask"
    );
    assert_eq!(clear_kind(&cell), Some(CellKind(kind.0 ^ mask[0])));
    let mut c = cell.clone();
    assert_eq!(keys().unprotect(session, &mut c), Ok(header));
    assert_eq!(c, plain_header);

    // Round trip, with fresh keys and with the sealer's own (cached epoch key), and after
    // a relabel (another path, another hop).
    let mut relabelled = cell.clone();
    set_label(&mut relabelled, Label(s.label));
    assert_eq!(peek_label(&relabelled), Some(Label(s.label)));
    for (rx, c) in [
        (&mut keys(), cell.clone()),
        (&mut tx, cell.clone()),
        (&mut keys(), relabelled.clone()),
    ] {
        let mut c = c;
        let (h, plain) = rx.open(size, session, &mut c).expect("open what was sealed");
        assert_eq!(h, header);
        assert_eq!(plain.len(), sealed_capacity(size));
        assert_eq!(&plain[..s.payload.len()], &s.payload[..]);
        assert!(plain[s.payload.len()..].iter().all(|&b| b == 0));
    }

    // Any single bit flipped: refused, unless it is in the label.
    let bit = s.flip as usize % (size * 8);
    let mut c = cell.clone();
    c[bit / 8] ^= 1 << (bit % 8);
    let opened = keys().open(size, session, &mut c).map(|(h, p)| (h, p.to_vec()));
    if LABEL_AT.contains(&(bit / 8)) {
        let (h, p) = opened.expect("a relabelled cell opens");
        assert_eq!(h, header);
        assert_eq!(&p[..s.payload.len()], &s.payload[..]);
    } else {
        assert!(opened.is_err(), "bit {bit} flipped, still opened");
    }
    // Any bound header bit flipped (also on a relabelled cell): refused.
    let hb = usize::from(s.header_flip) % (BOUND_HEADER.len() * 8);
    let byte = BOUND_HEADER[hb / 8];
    let mut c = relabelled.clone();
    c[byte] ^= 1 << (hb % 8);
    assert!(
        keys().open(size, session, &mut c).is_err(),
        "header byte {byte} bit {} flipped, still opened",
        hb % 8
    );

    // Another session id: the same header unmasks, the seal fails.
    let mut other_session = session;
    let b = usize::from(s.other_session_bit);
    other_session.0[b / 8 % 16] ^= 1 << (b % 8);
    let mut c = relabelled.clone();
    assert_eq!(
        keys().open(size, other_session, &mut c).err(),
        Some(CellError::Auth),
        "opened under another session id"
    );

    // Other direction, other base key, other size: refused (a garbage header or `Auth`).
    let refused_by = |base, alg, dir| {
        let mut c = cell.clone();
        DirectionKeys::new(base, alg, dir, s.epoch_cells)
            .open(size, session, &mut c)
            .err()
    };
    let other_dir = match dir {
        Direction::ClientToCentral => Direction::CentralToClient,
        Direction::CentralToClient => Direction::ClientToCentral,
    };
    assert!(refused_by(s.base, alg, other_dir).is_some());
    let mut other_base = s.base;
    let b = usize::from(s.other_base_bit);
    other_base[b / 8 % 32] ^= 1 << (b % 8);
    assert!(refused_by(other_base, alg, dir).is_some());
    let mut c = cell.clone();
    c.push(0);
    assert!(keys().open(size + 1, session, &mut c).is_err());
    // The other algorithm with the same key: the header key is the same (it unmasks),
    // the seal fails.
    let other_alg = match alg {
        AeadAlgorithm::Aes256Gcm => AeadAlgorithm::ChaCha20Poly1305,
        AeadAlgorithm::ChaCha20Poly1305 => AeadAlgorithm::Aes256Gcm,
    };
    assert_eq!(refused_by(s.base, other_alg, dir), Some(CellError::Auth));
}

#[derive(Debug, Arbitrary)]
enum ReplayOp {
    /// A seq near the highest accepted one: `top + delta` (wrapping).
    Near(i16),
    /// A seq far ahead (jumps the window).
    Jump(u32),
    /// Any seq at all.
    Any(u64),
}

fn replay(ops: &[ReplayOp]) {
    let width = u128::from(ReplayWindow::WIDTH);
    let mut w = ReplayWindow::default();
    let mut accepted: HashSet<u64> = HashSet::new();
    // Highest accepted seq + 1 (u128: the model itself must not overflow).
    let mut top: u128 = 0;
    for op in ops {
        let base = top as u64;
        let seq = match *op {
            ReplayOp::Near(d) => base.wrapping_add(d as i64 as u64),
            ReplayOp::Jump(j) => base.wrapping_add(u64::from(j)),
            ReplayOp::Any(s) => s,
        };
        // Finding 1 (README.md, fixed): the last sequence number is refused outright, since
        // one past it cannot be recorded.
        let s = u128::from(seq);
        let expect = if seq == u64::MAX {
            Err(CellError::OutOfWindow)
        } else if s >= top {
            Ok(())
        } else if top - s > width {
            Err(CellError::OutOfWindow)
        } else if accepted.contains(&seq) {
            Err(CellError::Replay)
        } else {
            Ok(())
        };
        let got = w.check(seq);
        assert_eq!(got, expect, "seq {seq} top {top}");
        if got.is_ok() {
            assert!(accepted.insert(seq), "seq {seq} accepted twice");
            w.commit(seq);
            top = top.max(s + 1);
            // Everything accepted is now refused.
            assert!(
                w.check(seq).is_err(),
                "seq {seq} accepted again right after commit"
            );
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Epochs {
    epoch_cells: u8,
    /// Seqs to seal (kept small so that they span a few epochs).
    seqs: Vec<u16>,
    /// Order to open them in: indices taken modulo the number of cells; the byte is also
    /// the label each copy travels under.
    order: Vec<u8>,
}

fn epochs(e: Epochs) {
    let epoch_cells = u64::from(e.epoch_cells.max(1));
    let mut tx = DirectionKeys::new([5; 32], AeadAlgorithm::Aes256Gcm, CELL_DIR, epoch_cells);
    let mut rx = DirectionKeys::new([5; 32], AeadAlgorithm::Aes256Gcm, CELL_DIR, epoch_cells);
    let sid = SessionId([1; 16]);
    let cells: Vec<(u64, Vec<u8>)> = e
        .seqs
        .iter()
        .take(64)
        .map(|&s| {
            let seq = u64::from(s);
            let c = tx
                .seal(MIN_CELL_SIZE, CellKind::DATA, sid, seq, &seq.to_be_bytes())
                .expect("seal");
            (seq, c)
        })
        .collect();
    if cells.is_empty() {
        return;
    }
    for &i in e.order.iter().take(256) {
        let (seq, cell) = &cells[usize::from(i) % cells.len()];
        let mut c = cell.clone();
        set_label(&mut c, Label([i; 16]));
        let (h, plain) = rx
            .open(MIN_CELL_SIZE, sid, &mut c)
            .unwrap_or_else(|err| panic!("seq {seq} did not open: {err}"));
        assert_eq!(h.seq, *seq);
        assert_eq!(&plain[..8], &seq.to_be_bytes());
    }
}

/// Sessions whose path labels the `labels` mode uses.
const LABEL_SETS: usize = 4;
/// Session ids the `labels` mode registers them under.
const LABEL_IDS: u8 = 6;

/// The path labels of `LABEL_SETS` real sessions (handshakes made once per process): the
/// client's and the central's agree.
fn label_sets() -> &'static [PathLabels] {
    static S: OnceLock<Vec<PathLabels>> = OnceLock::new();
    S.get_or_init(|| {
        let now = Instant::now();
        (0..LABEL_SETS as u64)
            .map(|i| {
                let cfg = session_cfg();
                let p = PendingSession::start(
                    &mut FuzzRng::new(5000 + i),
                    cfg.clone(),
                    &central_key().public(),
                    &known_session_hello(0),
                    0,
                    0,
                )
                .expect("start");
                let acc = session::accept(
                    &mut FuzzRng::new(6000 + i),
                    cfg,
                    &central_key(),
                    now,
                    session::HelloClock::ANY,
                    p.hello_cell(),
                )
                .expect("accept");
                let client = p.finish(now, &acc.welcome_cell).expect("finish");
                let (c, a) = (client.path_labels(), acc.session.path_labels());
                for j in [0, 1, 1000] {
                    assert_eq!(c.label(j), a.label(j), "the ends derive other labels");
                }
                a
            })
            .collect()
    })
}

#[derive(Debug, Arbitrary)]
enum LabelOp {
    /// Registers session `id` with label set `set` (replacing what `id` had).
    Insert { id: u8, set: u8 },
    Remove { id: u8 },
    /// Looks up index `base + delta` of label set `set`, where `base` is the `next` of
    /// the last session that used the set.
    Near { set: u8, delta: i16 },
    /// Looks up any index of label set `set`.
    Index { set: u8, index: u64 },
    /// Looks up an arbitrary label.
    Raw([u8; 16]),
}

/// One session in the model: its label set, the next index to register, its clock, and
/// the indices it holds with when each was last seen (or registered).
struct ModelSession {
    set: usize,
    next: u64,
    tick: u64,
    held: BTreeMap<u64, u64>,
}

/// The model of a `LabelTable`: sessions, and which label names which (session, index).
#[derive(Default)]
struct LabelModel {
    sessions: HashMap<SessionId, ModelSession>,
    by_label: HashMap<Label, (SessionId, u64)>,
}

impl LabelModel {
    fn insert(&mut self, id: SessionId, set: usize) {
        self.remove(id);
        self.sessions.insert(
            id,
            ModelSession {
                set,
                next: 0,
                tick: 0,
                held: BTreeMap::new(),
            },
        );
        self.extend(id, LABELS_AHEAD);
    }

    /// Registers indices below `until`, each seen "now"; over `MAX_LABELS` the least
    /// recently seen goes, the lowest index first on a tie.
    fn extend(&mut self, id: SessionId, until: u64) {
        let labels = &label_sets()[self.sessions[&id].set];
        let s = self.sessions.get_mut(&id).expect("live");
        while s.next < until {
            let l = labels.label(s.next);
            assert_ne!(l, Label::NONE, "label {} is NONE", s.next);
            s.held.insert(s.next, s.tick);
            self.by_label.insert(l, (id, s.next));
            s.next += 1;
            if s.held.len() > MAX_LABELS {
                let (&i, _) = s
                    .held
                    .iter()
                    .min_by_key(|(i, t)| (**t, **i))
                    .expect("non-empty");
                s.held.remove(&i);
                self.by_label.remove(&labels.label(i));
            }
        }
    }

    fn lookup(&mut self, l: Label) -> Option<SessionId> {
        let (id, i) = *self.by_label.get(&l)?;
        let s = self.sessions.get_mut(&id).expect("a held label's session is live");
        s.tick += 1;
        s.held.insert(i, s.tick);
        self.extend(id, i.saturating_add(LABELS_AHEAD + 1));
        Some(id)
    }

    /// Removes `id`; returns its set and the indices it held.
    fn remove(&mut self, id: SessionId) -> Option<(usize, Vec<u64>)> {
        let s = self.sessions.remove(&id)?;
        let labels = &label_sets()[s.set];
        for i in s.held.keys() {
            self.by_label.remove(&labels.label(*i));
        }
        Some((s.set, s.held.into_keys().collect()))
    }
}

fn labels(ops: &[LabelOp]) {
    let sets = label_sets();
    let mut t = LabelTable::default();
    let mut m = LabelModel::default();
    // The `next` of the last session that used each set (kept after its removal).
    let mut base = [0u64; LABEL_SETS];
    let sid = |x: u8| SessionId([x % LABEL_IDS + 1; 16]);
    for op in ops.iter().take(128) {
        let probes: Vec<Label> = match *op {
            LabelOp::Insert { id, set } => {
                let (id, set) = (sid(id), usize::from(set) % LABEL_SETS);
                // Two live sessions with one label set would be a 2^-128 label collision:
                // out of the model.
                if m.sessions.iter().any(|(o, s)| *o != id && s.set == set) {
                    continue;
                }
                t.insert(id, sets[set].clone());
                m.insert(id, set);
                base[set] = LABELS_AHEAD;
                // The first path's label finds the session at once.
                vec![sets[set].label(0)]
            }
            LabelOp::Remove { id } => {
                let id = sid(id);
                t.remove(id);
                // Its labels, lowest and highest held, are gone.
                match m.remove(id) {
                    Some((set, held)) => [held.first(), held.last()]
                        .into_iter()
                        .flatten()
                        .map(|i| sets[set].label(*i))
                        .collect(),
                    None => Vec::new(),
                }
            }
            LabelOp::Near { set, delta } => {
                let set = usize::from(set) % LABEL_SETS;
                let i = (base[set] as i64).saturating_add(i64::from(delta)).max(0) as u64;
                vec![sets[set].label(i)]
            }
            LabelOp::Index { set, index } => {
                vec![sets[usize::from(set) % LABEL_SETS].label(index)]
            }
            LabelOp::Raw(l) => vec![Label(l)],
        };
        for l in probes {
            let expect = m.lookup(l);
            let got = t.lookup(l);
            assert_eq!(got, expect, "lookup of {l:?} (op {op:?})");
            if l == Label::NONE {
                assert_eq!(got, None, "Label::NONE found a session");
            }
            if let Some(id) = got {
                let s = &m.sessions[&id];
                base[s.set] = s.next;
                // A path in use keeps its label.
                assert_eq!(m.lookup(l), Some(id));
                assert_eq!(t.lookup(l), Some(id), "a label just seen was dropped");
            }
        }
        // Exactly the model's labels; a session never holds more than MAX_LABELS.
        assert_eq!(t.len(), m.by_label.len(), "label count");
        assert_eq!(t.is_empty(), m.by_label.is_empty());
        let held: usize = m.sessions.values().map(|s| s.held.len()).sum();
        assert_eq!(held, m.by_label.len());
        for s in m.sessions.values() {
            assert!(s.held.len() <= MAX_LABELS);
        }
    }
    // Removing every session empties the table, and no label of theirs is found.
    let ids: HashSet<SessionId> = m.sessions.keys().copied().collect();
    for id in ids {
        let (set, held) = m.remove(id).expect("live");
        t.remove(id);
        for i in [held.first(), held.last()].into_iter().flatten() {
            assert_eq!(t.lookup(sets[set].label(*i)), None, "removed session found");
        }
    }
    assert!(t.is_empty(), "{} labels left after every session went", t.len());
}
