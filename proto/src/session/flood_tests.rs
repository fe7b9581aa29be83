//! Tiny frames a client may pack by the thousand into one cell must not grow the central's
//! memory past what it charges: credit for streams that were never opened creates no
//! state, and the reorder window charges what decoded frames really take.

use super::tests::{pair_seeded, pump, P};
use super::*;

const CELL: usize = 16 * 1024;

/// 160 cells of `StreamCredit` frames, each for a stream never opened: on the old code
/// every frame left a flow-control entry that nothing freed (about 200,000 of them).
#[test]
fn credit_for_unknown_streams_leaves_no_state() {
    let (mut c, mut s, now) = pair_seeded(SessionConfig::with_cell_size(CELL), 31);
    c.open_stream(1, "gw");
    pump(&mut c, &mut s, now, |_| true);
    while s.poll_event().is_some() {}
    let per_cell = sealed_capacity_frames(&Frame::StreamCredit { stream: 0, max: 0 });
    let mut next_stream = 1_000u32;
    let mut frames = 0usize;
    let mut leaked_events = 0;
    for _ in 0..160 {
        for _ in 0..per_cell {
            c.control.push_back(Frame::StreamCredit {
                stream: next_stream,
                max: u64::MAX,
            });
            next_stream += 1;
        }
        frames += per_cell;
        pump(&mut c, &mut s, now, |_| true);
        while let Some(ev) = s.poll_event() {
            if matches!(ev, SessionEvent::StreamCredit { stream, .. } if stream >= 1_000) {
                leaked_events += 1;
            }
        }
        pump(&mut s, &mut c, now, |_| true);
    }
    assert!(frames > 150_000, "the flood was {frames} frames");
    assert!(c.control.is_empty(), "every frame was sent");
    // Only the stream the client opened has flow-control state.
    assert_eq!(s.tx_credit.len(), 1, "entries after {frames} credit frames");
    assert_eq!(
        leaked_events, 0,
        "credit for unknown streams reached the application"
    );
    // Credit for the open stream still counts.
    c.control.push_back(Frame::StreamCredit {
        stream: 1,
        max: 9 << 20,
    });
    pump(&mut c, &mut s, now, |_| true);
    assert_eq!(s.tx_credit.get(&1).map(|c| c.1), Some(9 << 20));
    assert_eq!(
        s.poll_event(),
        Some(SessionEvent::StreamCredit {
            stream: 1,
            max: 9 << 20
        })
    );
}

/// How many copies of `f` fit in one cell after a bare ack block.
fn sealed_capacity_frames(f: &Frame) -> usize {
    (crate::cell::sealed_capacity(CELL) - crate::frame::MAX_ACK_LEN) / f.encoded_len()
}

/// A cell packed with 5-byte `StreamEnd` frames decodes into thousands of frames: held out
/// of order it is charged what they take in memory (the old code charged one cell size,
/// about a sixteenth), and the window's cap in bytes refuses such cells past it.
#[test]
fn the_reorder_window_charges_decoded_frames_real_bytes() {
    let mut cfg = SessionConfig::with_cell_size(CELL);
    cfg.window_cells = 64;
    let (mut c, mut s, now) = pair_seeded(cfg.clone(), 32);
    let end = Frame::StreamEnd { stream: 9 };
    let per_cell = sealed_capacity_frames(&end);
    let mut cells = Vec::new();
    for _ in 0..20 {
        for _ in 0..per_cell {
            c.control.push_back(end.clone());
        }
        let t = c.poll_transmit(now, &P).expect("a cell");
        cells.push(t.cell);
    }
    // The first cell is withheld: the next one waits in the reorder window.
    s.handle_cell(now, &mut cells[1]).unwrap();
    let one = s.reorder_bytes();
    let real = per_cell * std::mem::size_of::<Frame>();
    assert!(
        one >= real,
        "a cell of {per_cell} frames is charged {one} bytes, they take at least {real}"
    );
    assert!(one > 4 * CELL, "{one}");
    // Past the cap in bytes further such cells are refused, though the window has room
    // in cells; what is held stays under the cap.
    let mut refused = 0;
    for cell in cells.iter_mut().skip(2) {
        if s.handle_cell(now, cell) == Err(CellError::OutOfWindow) {
            refused += 1;
        }
        assert!(s.reorder_bytes() <= cfg.max_reorder_bytes());
    }
    assert!(refused > 0);
    // The gap filled, everything held is delivered and the charge returns to zero.
    s.handle_cell(now, &mut cells[0]).unwrap();
    assert_eq!(s.reorder_bytes(), 0);
    let mut delivered = 0;
    while let Some(ev) = s.poll_event() {
        assert_eq!(ev, SessionEvent::StreamEnd { stream: 9 });
        delivered += 1;
    }
    assert_eq!(delivered, per_cell * (20 - refused));
}
