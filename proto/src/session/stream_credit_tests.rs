//! Per-stream flow control: one stalled stream does not block the others.

use super::tests::pair_with_mailboxes;
use super::*;

/// A receiver that stops consuming one stream stops only that stream, at its window;
/// another stream of the same session keeps flowing, and the stalled one resumes when
/// consumed.
#[test]
fn a_stalled_stream_does_not_block_the_others() {
    let mut cfg = SessionConfig::with_cell_size(1024);
    cfg.stream_window = 64 * 1024;
    cfg.manual_stream_credit = true;
    let (mut c, mut s, t0) = pair_with_mailboxes(cfg, 21, vec![]);
    assert_eq!(c.peer_stream_window(), 64 * 1024);
    c.open_stream(1, "gw");
    c.open_stream(2, "gw");
    let data = vec![1u8; 1 << 20];
    let (mut got1, mut got2) = (0usize, 0usize);
    let paths = [PathId(0)];
    let pump =
        |c: &mut Session, s: &mut Session, consume1: bool, got1: &mut usize, got2: &mut usize| {
            for _ in 0..200 {
                while let Some(mut t) = c.poll_transmit(t0, &paths) {
                    let _ = s.handle_cell(t0, &mut t.cell);
                }
                while let Some(ev) = s.poll_event() {
                    if let SessionEvent::StreamData { stream, data } = ev {
                        if stream == 1 {
                            *got1 += data.len();
                            if consume1 {
                                s.stream_consumed(1, data.len());
                            }
                        } else {
                            *got2 += data.len();
                            s.stream_consumed(2, data.len());
                        }
                    }
                }
                while let Some(mut t) = s.poll_transmit(t0 + Duration::from_secs(1), &paths) {
                    let _ = c.handle_cell(t0, &mut t.cell);
                }
                let cap = c.send_capacity().min(8192);
                if cap > 0 {
                    c.send(1, &data[..cap / 2]);
                    c.send(2, &data[..cap / 2]);
                }
            }
        };
    pump(&mut c, &mut s, false, &mut got1, &mut got2);
    assert_eq!(got1, 64 * 1024, "stream 1 stops at its window");
    assert!(got2 > 256 * 1024, "stream 2 keeps flowing ({got2})");
    let before = got1;
    s.stream_consumed(1, got1);
    pump(&mut c, &mut s, true, &mut got1, &mut got2);
    assert!(got1 > before, "stream 1 resumes once consumed");
}
