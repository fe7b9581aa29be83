//! The node-to-node framings around a response cell (`braid_proto::envelope`): the central →
//! downstream `Envelope`, the downstream → relay `Delivery`, the client's `Registration` and
//! its `Route` to an upstream.
//!
//! Input: `cell size u8 | message bytes`. The message goes into every parser, with the cell
//! size from the first byte (0 to 255: the parsers treat the cell as opaque, only its length
//! matters, and a small size lets the fuzzer reach whole messages). Checked:
//!
//! * `Envelope::parse`, `Delivery::parse` and `Registration::parse` give exactly what an
//!   independent model of the layout says: the same value, or the same typed error (first
//!   failing check in wire order);
//! * what parses re-encodes to the input byte for byte (`to_vec`, `encode_into`, the prefix
//!   encoders plus the cell), `encoded_len` is exact, an envelope is within
//!   `max_envelope_len` and a delivery is `delivery_len` long;
//! * an envelope's `delivery()` is its tail, and parses back as a delivery;
//! * the encoders, given a relay id cut from the message (lossy UTF-8), a mailbox and a cell,
//!   succeed exactly for ids of 1 to `MAX_NODE_ID_LEN` bytes, write nothing otherwise, and
//!   what they write parses back to the same envelope.
#![no_main]

use braid_fuzz::Input;
use braid_proto::envelope::{
    address_of, delivery_len, encode_envelope_prefix, envelope_prefix_len, max_envelope_len,
    write_envelope_prefix, Delivery, Envelope, EnvelopeError, MailboxSecret, Registration,
    Route,
};
use braid_proto::frame::{Mailbox, MailboxId, MAILBOX_ID_LEN, MAX_NODE_ID_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let cell_size = usize::from(inp.u8());
    let msg = inp.rest();
    envelope(msg, cell_size);
    delivery(msg, cell_size);
    registration(msg);
    route(msg);
    encoders(msg);
});

fn mailbox_at(b: &[u8]) -> MailboxId {
    let mut id = [0u8; MAILBOX_ID_LEN];
    let n = b.len().min(MAILBOX_ID_LEN);
    id[..n].copy_from_slice(&b[..n]);
    id
}

/// The envelope layout, written independently of the parser: what it must return.
fn envelope_model(msg: &[u8], cell_size: usize) -> Result<(&str, MailboxId, &[u8]), EnvelopeError> {
    let Some((&n, rest)) = msg.split_first() else {
        return Err(EnvelopeError::Truncated);
    };
    let n = usize::from(n);
    if n == 0 {
        return Err(EnvelopeError::EmptyNodeId);
    }
    if n > MAX_NODE_ID_LEN {
        return Err(EnvelopeError::NodeIdTooLong(n));
    }
    if rest.len() < n {
        return Err(EnvelopeError::Truncated);
    }
    let relay = std::str::from_utf8(&rest[..n]).map_err(|_| EnvelopeError::NodeIdNotUtf8)?;
    if rest.len() < n + MAILBOX_ID_LEN {
        return Err(EnvelopeError::Truncated);
    }
    let cell = &rest[n + MAILBOX_ID_LEN..];
    if cell.len() != cell_size {
        return Err(EnvelopeError::WrongCellSize {
            got: cell.len(),
            want: cell_size,
        });
    }
    Ok((relay, mailbox_at(&rest[n..]), cell))
}

fn envelope(msg: &[u8], cell_size: usize) {
    let got = Envelope::parse(msg, cell_size);
    let want = envelope_model(msg, cell_size);
    match (&got, want) {
        (Ok(env), Ok((relay, mailbox, cell))) => {
            assert_eq!((env.relay, env.mailbox, env.cell), (relay, mailbox, cell));
        }
        (Err(e), Err(w)) => {
            assert_eq!(*e, w);
            assert!(!e.to_string().is_empty());
            return;
        }
        (g, w) => panic!("parse {g:?}, model {w:?}"),
    }
    let Ok(env) = got else { return };
    // Re-encodes to the input, by every encoder.
    assert_eq!(env.encoded_len(), msg.len());
    assert!(msg.len() <= max_envelope_len(cell_size));
    assert_eq!(env.to_vec().expect("encode parsed envelope"), msg);
    let mut out = vec![0xEE];
    env.encode_into(&mut out).expect("encode_into");
    assert_eq!(&out[1..], msg);
    let to = Mailbox {
        relay: env.relay.to_owned(),
        id: env.mailbox,
    };
    let prefix = encode_envelope_prefix(&to).expect("prefix");
    assert_eq!(prefix.len(), envelope_prefix_len(env.relay));
    let mut joined = Vec::new();
    write_envelope_prefix(&to, &mut joined).expect("write prefix");
    assert_eq!(joined, prefix);
    joined.extend_from_slice(env.cell);
    assert_eq!(joined, msg);
    // The downstream forwards the tail as the delivery.
    let d = env.delivery();
    let tail = &msg[1 + env.relay.len()..];
    assert_eq!(d.to_vec(), tail);
    assert_eq!(Delivery::parse(tail, cell_size), Ok(d));
}

fn delivery(msg: &[u8], cell_size: usize) {
    let got = Delivery::parse(msg, cell_size);
    let want = if msg.len() < MAILBOX_ID_LEN {
        Err(EnvelopeError::Truncated)
    } else if msg.len() - MAILBOX_ID_LEN != cell_size {
        Err(EnvelopeError::WrongCellSize {
            got: msg.len() - MAILBOX_ID_LEN,
            want: cell_size,
        })
    } else {
        Ok((mailbox_at(msg), &msg[MAILBOX_ID_LEN..]))
    };
    assert_eq!(got.clone().map(|d| (d.mailbox, d.cell)), want);
    if let Ok(d) = got {
        assert_eq!(msg.len(), delivery_len(cell_size));
        assert_eq!(d.encoded_len(), msg.len());
        assert_eq!(d.to_vec(), msg);
        let mut out = vec![1, 2];
        d.encode_into(&mut out);
        assert_eq!(&out[2..], msg);
    }
}

fn registration(msg: &[u8]) {
    match Registration::parse(msg) {
        Ok(r) => {
            assert_eq!(msg.len(), Registration::LEN);
            assert_eq!(r.encode(), msg);
            assert_eq!(r.secret.as_bytes(), msg);
            // The address is the secret's digest's prefix, never the secret's own bytes.
            assert_eq!(r.address(), address_of(&r.secret.digest()));
            assert_eq!(
                Registration {
                    secret: MailboxSecret::from_bytes(r.encode())
                },
                r
            );
        }
        Err(e) => {
            assert_ne!(msg.len(), Registration::LEN);
            assert_eq!(e, EnvelopeError::WrongRegistrationLen(msg.len()));
        }
    }
}

/// A route is `len u8 | id` exactly: parses iff the length matches and the id is a valid
/// node id, and then re-encodes to the input.
fn route(msg: &[u8]) {
    let want = match msg.split_first() {
        None => Err(EnvelopeError::Truncated),
        Some((&n, id)) if id.len() != usize::from(n) => Err(EnvelopeError::WrongRouteLen {
            got: msg.len(),
            named: usize::from(n),
        }),
        Some((_, [])) => Err(EnvelopeError::EmptyNodeId),
        Some((_, id)) if id.len() > MAX_NODE_ID_LEN => Err(EnvelopeError::NodeIdTooLong(id.len())),
        Some((_, id)) => std::str::from_utf8(id).map_err(|_| EnvelopeError::NodeIdNotUtf8),
    };
    let got = Route::parse(msg);
    match (&got, &want) {
        (Ok(r), Ok(w)) => assert_eq!(r.central, *w),
        (Err(e), Err(w)) => assert_eq!(e, w),
        _ => panic!("Route::parse gave {got:?}, the model {want:?}"),
    }
    if let Ok(r) = got {
        assert!(msg.len() <= Route::MAX_LEN);
        assert_eq!(r.encode().as_deref(), Ok(msg));
    }
}

/// Encoder → parser: a relay id of any length (cut from the message, lossy UTF-8, so it may
/// hold replacement characters), the next bytes as the mailbox, the rest as the cell.
fn encoders(msg: &[u8]) {
    let Some((&k, rest)) = msg.split_first() else {
        return;
    };
    let k = usize::from(k % 48).min(rest.len());
    let relay = String::from_utf8_lossy(&rest[..k]).into_owned();
    let rest = &rest[k..];
    let mailbox = mailbox_at(rest);
    let cell = &rest[rest.len().min(MAILBOX_ID_LEN)..];
    let env = Envelope {
        relay: &relay,
        mailbox,
        cell,
    };
    let to = Mailbox {
        relay: relay.clone(),
        id: mailbox,
    };
    let valid = (1..=MAX_NODE_ID_LEN).contains(&relay.len());
    let mut out = vec![0xAA];
    let mut prefix_out = vec![0xBB];
    match (
        env.encode_into(&mut out),
        write_envelope_prefix(&to, &mut prefix_out),
    ) {
        (Ok(()), Ok(())) => {
            assert!(valid);
            let bytes = &out[1..];
            assert_eq!(bytes.len(), env.encoded_len());
            assert!(bytes.len() <= max_envelope_len(cell.len()));
            assert_eq!(&prefix_out[1..], &bytes[..envelope_prefix_len(&relay)]);
            assert_eq!(Envelope::parse(bytes, cell.len()), Ok(env));
        }
        (Err(e), Err(e2)) => {
            assert!(!valid);
            assert_eq!(e, e2);
            let want = if relay.is_empty() {
                EnvelopeError::EmptyNodeId
            } else {
                EnvelopeError::NodeIdTooLong(relay.len())
            };
            assert_eq!(e, want);
            // Nothing written on refusal.
            assert_eq!(out, [0xAA]);
            assert_eq!(prefix_out, [0xBB]);
        }
        (a, b) => panic!("encode_into {a:?}, write_envelope_prefix {b:?}"),
    }
}
