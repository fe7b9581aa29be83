//! The cell codec and the outer sealing layer (`braid_proto::cell`).
//!
//! The first input byte picks a mode (`mode % 4`):
//!
//! 0. raw: the rest is a cell. `CellHeader::take_from` fails exactly when it should and,
//!    on success, `write_onto` reproduces the first 28 bytes; `peek_session` agrees;
//!    `handshake_message` returns exactly the length-prefixed bytes it claims, and
//!    `handshake_cell` rebuilds a cell carrying the same message; `DirectionKeys::open` with
//!    the fixed keys ([`braid_fuzz::cell_keys`]) succeeds only on a cell that re-seals to the
//!    identical bytes (i.e. one the sealer produced: the seeds hold some).
//! 1. seal: arbitrary keys, algorithm, direction, epoch length, cell size, kind, session,
//!    seq and payload. `seal` fails exactly when it should; otherwise `open` (with fresh
//!    keys and with the sealing keys) round-trips the header and the zero-padded payload,
//!    and any single flipped bit, the other direction's keys, another cell size or another
//!    base key make `open` fail.
//! 2. replay: a sequence of received sequence numbers run through `ReplayWindow`
//!    (check, then commit if accepted) against a model that remembers every accepted seq:
//!    nothing is accepted twice, and the window answers exactly as the model does.
//! 3. epochs: cells sealed at arbitrary seqs are opened in an arbitrary order by one
//!    receiver, exercising the two-slot epoch key cache: every one must open.
#![no_main]

use std::collections::HashSet;

use arbitrary::Arbitrary;
use braid_fuzz::{cell_keys, cell_size, structured, CELL_BASE, CELL_DIR, CELL_EPOCH_CELLS};
use braid_proto::aead::AeadAlgorithm;
use braid_proto::cell::{
    check_cell_size, handshake_capacity, handshake_cell, handshake_message, peek_session,
    sealed_capacity, CellError, CellHeader, CellKind, Direction, DirectionKeys, ReplayWindow,
    SessionId, HEADER_LEN, MIN_CELL_SIZE, VERSION,
};
use braid_proto::wire::WireError;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => raw(rest),
        1 => structured(rest, seal),
        2 => structured(rest, |ops: Vec<ReplayOp>| replay(&ops)),
        _ => structured(rest, epochs),
    }
});

fn raw(cell: &[u8]) {
    // Header codec.
    let parsed = CellHeader::take_from(cell);
    match &parsed {
        Ok(h) => {
            assert!(cell.len() >= HEADER_LEN && cell[1] == VERSION);
            let mut buf = [0u8; HEADER_LEN];
            h.write_onto(&mut buf).expect("a header fits 28 bytes");
            assert_eq!(&buf[..], &cell[..HEADER_LEN]);
            // A short buffer is refused, not overrun.
            let mut short = [0u8; HEADER_LEN - 1];
            assert!(h.write_onto(&mut short).is_err());
            assert_eq!(peek_session(cell), Some(h.session));
        }
        Err(e) => {
            assert_eq!(peek_session(cell), None);
            if cell.len() >= 2 && cell[1] != VERSION {
                assert_eq!(*e, CellError::Version);
            } else {
                assert!(cell.len() < HEADER_LEN);
                assert_eq!(*e, CellError::Wire(WireError::Truncated));
            }
        }
    }

    // Handshake message codec.
    if let Ok(msg) = handshake_message(cell) {
        let len = usize::from(u16::from_be_bytes([cell[HEADER_LEN], cell[HEADER_LEN + 1]]));
        assert_eq!(msg.len(), len);
        assert_eq!(msg, &cell[HEADER_LEN + 2..HEADER_LEN + 2 + len]);
        if let Ok(h) = parsed {
            let size = cell.len();
            let rebuilt = handshake_cell(size, h.kind, h.session, msg)
                .expect("the message fitted in a cell of this size");
            assert_eq!(rebuilt.len(), size);
            assert_eq!(handshake_message(&rebuilt).ok(), Some(msg));
            assert_eq!(rebuilt[..18], cell[..18]);
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
        rx.open(wrong_size, &mut buf.clone()),
        Err(CellError::Size { .. })
    ));
    if !check_cell_size(size) {
        // Sizes the network never uses: still no panic (sizes below a header would be a
        // caller bug, so only sizes that at least hold header and tag are tried).
        if size >= HEADER_LEN + 16 {
            let _ = rx.open(size, &mut buf);
        }
        return;
    }
    match rx.open(size, &mut buf) {
        Ok((h, plain)) => {
            // Only the sealer can have made it: sealing the same plaintext at the same
            // header gives the same bytes.
            let plain = plain.to_vec();
            let resealed = cell_keys()
                .seal(size, h.kind, h.session, h.seq, &plain)
                .expect("re-seal");
            assert_eq!(
                resealed, cell,
                "open accepted a cell the sealer did not produce"
            );
            assert!(h.kind.is_sealed());
            assert_eq!(u64::from(h.epoch), h.seq / CELL_EPOCH_CELLS);
            // The other direction's keys never open it.
            let mut c = cell.to_vec();
            let mut other = DirectionKeys::new(
                CELL_BASE,
                AeadAlgorithm::Aes256Gcm,
                Direction::CentralToClient,
                CELL_EPOCH_CELLS,
            );
            assert_eq!(other.open(size, &mut c).err(), Some(CellError::Auth));
        }
        Err(e) => {
            // Errors are in check order.
            match parsed {
                Err(pe) => assert_eq!(e, pe),
                Ok(h) if !h.kind.is_sealed() => assert_eq!(e, CellError::Kind(h.kind)),
                Ok(h) if h.seq / CELL_EPOCH_CELLS != u64::from(h.epoch) => {
                    assert_eq!(e, CellError::Epoch)
                }
                Ok(_) => assert_eq!(e, CellError::Auth),
            }
        }
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
    other_base_bit: u8,
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
    assert_eq!(CellHeader::take_from(&cell), Ok(header));

    // Round trip, with fresh keys and with the sealer's own (cached epoch key).
    for rx in [&mut keys(), &mut tx] {
        let mut c = cell.clone();
        let (h, plain) = rx.open(size, &mut c).expect("open what was sealed");
        assert_eq!(h, header);
        assert_eq!(plain.len(), sealed_capacity(size));
        assert_eq!(&plain[..s.payload.len()], &s.payload[..]);
        assert!(plain[s.payload.len()..].iter().all(|&b| b == 0));
    }

    // Any single bit flipped: refused.
    let bit = s.flip as usize % (size * 8);
    let mut c = cell.clone();
    c[bit / 8] ^= 1 << (bit % 8);
    assert!(
        keys().open(size, &mut c).is_err(),
        "bit {bit} flipped, still opened"
    );

    // Other direction, other base key, other size: refused.
    let refused_by = |base, alg, dir| {
        let mut c = cell.clone();
        assert_eq!(
            DirectionKeys::new(base, alg, dir, s.epoch_cells)
                .open(size, &mut c)
                .err(),
            Some(CellError::Auth)
        );
    };
    let other_dir = match dir {
        Direction::ClientToCentral => Direction::CentralToClient,
        Direction::CentralToClient => Direction::ClientToCentral,
    };
    refused_by(s.base, alg, other_dir);
    let mut other_base = s.base;
    let b = usize::from(s.other_base_bit);
    other_base[b / 8 % 32] ^= 1 << (b % 8);
    refused_by(other_base, alg, dir);
    let mut c = cell.clone();
    c.push(0);
    assert!(keys().open(size + 1, &mut c).is_err());
    // The other algorithm with the same key does not open it either.
    let other_alg = match alg {
        AeadAlgorithm::Aes256Gcm => AeadAlgorithm::ChaCha20Poly1305,
        AeadAlgorithm::ChaCha20Poly1305 => AeadAlgorithm::Aes256Gcm,
    };
    refused_by(s.base, other_alg, dir);
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
    /// Order to open them in: indices taken modulo the number of cells.
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
        let (h, plain) = rx
            .open(MIN_CELL_SIZE, &mut c)
            .unwrap_or_else(|err| panic!("seq {seq} did not open: {err}"));
        assert_eq!(h.seq, *seq);
        assert_eq!(&plain[..8], &seq.to_be_bytes());
    }
}
