//! The sans-IO SOCKS5 server handshake (`braid_proto::socks5`).
//!
//! Input: `policy | extra command | chunk seed | client bytes`. `policy % 3` picks no
//! authentication, username/password (`user`/`pass`), or no authentication with BIND,
//! UDP ASSOCIATE and the extra command also allowed. The client bytes are fed the way a
//! real caller would (append, feed until `NeedMore`), once all at once and once in chunks
//! drawn from the seed. Checked:
//!
//! * the outcome (bytes written to the client, request, early data, error) is the same for
//!   every chunking;
//! * `consumed` never exceeds the input; a `Reply` consumes something and writes one of the
//!   documented answers; `NeedMore` only while less than `MAX_MESSAGE_LEN` bytes are held;
//!   `Done` accounts for every byte (`consumed + early_data`);
//! * after `Done` or an error every `feed` is `Finished` (no reply);
//! * an error's `reply()` is exactly the documented bytes for that error;
//! * on `Done`, `Request::encode` gives the request as sent (up to the ignored RSV byte),
//!   and a fresh handshake parses the encoding back to the same request;
//! * `reply(code, bound)` encodes the documented layout.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use braid_fuzz::{FuzzRng, Input};
use braid_proto::socks5::testing::{drive, no_auth, Outcome, GREET_NO_AUTH, POLICIES};
use braid_proto::socks5::{
    reply, Command, Progress, ReplyCode, Request, Socks5Error, Socks5Handshake,
};
use libfuzzer_sys::fuzz_target;
use rand_core::RngCore;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let policy = inp.u8() % 3;
    let extra = Command(inp.u8());
    let seed = inp.u8();
    let bytes = inp.rest();
    let make = || handshake(policy, extra);

    let all = drive(make(), &[bytes]);
    let mut rng = FuzzRng::new(u64::from(seed));
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = match rng.next_u32() % 3 {
            0 => 1,
            1 => 1 + rng.next_u32() as usize % 8,
            _ => 1 + rng.next_u32() as usize % 300,
        };
        let end = (at + n).min(bytes.len());
        chunks.push(&bytes[at..end]);
        at = end;
    }
    let chunked = drive(make(), &chunks);
    assert_eq!(all, chunked, "chunking changed the outcome");

    // Every written answer is one of the documented ones, in protocol order.
    let (written, outcome) = all;
    check_written(policy, &written, &outcome);
    if let Outcome::Failed(e) = &outcome {
        assert_eq!(e.reply(), documented_reply(e));
    }

    if let Outcome::Done(req, _) = &outcome {
        round_trip(req, bytes);
    }

    // The reply encoder, with parameters from the input.
    let code = ReplyCode(seed);
    let v4 = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::from(u32::from(policy) << 8 | u32::from(extra.0))),
        u16::from(seed) * 3,
    );
    let r = reply(code, Some(v4));
    assert_eq!(r.len(), 10);
    assert_eq!(&r[..4], &[5, seed, 0, 1]);
    let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(u128::from(seed) << 64)), 1);
    let r = reply(code, Some(v6));
    assert_eq!(r.len(), 22);
    assert_eq!(&r[..4], &[5, seed, 0, 4]);
    assert_eq!(reply(code, None), [5, seed, 0, 1, 0, 0, 0, 0, 0, 0]);
});

/// `POLICIES[policy]`; the extra command is also allowed under the third.
fn handshake(policy: u8, extra: Command) -> Socks5Handshake {
    let hs = POLICIES[usize::from(policy)]();
    if policy == 2 {
        hs.allow_command(extra)
    } else {
        hs
    }
}

/// The module documentation's table, written out independently.
fn documented_reply(e: &Socks5Error) -> Option<&'static [u8]> {
    use Socks5Error::*;
    const FAIL_01: [u8; 10] = [5, 1, 0, 1, 0, 0, 0, 0, 0, 0];
    const FAIL_07: [u8; 10] = [5, 7, 0, 1, 0, 0, 0, 0, 0, 0];
    const FAIL_08: [u8; 10] = [5, 8, 0, 1, 0, 0, 0, 0, 0, 0];
    match e {
        BadVersion(_) | Finished => None,
        NoMethods | NoAcceptableMethod => Some(&[5, 0xFF]),
        BadAuthVersion(_) | EmptyUsername | EmptyPassword | BadCredentials => Some(&[1, 1]),
        BadRequestVersion(_) | EmptyDomain | DomainNotUtf8 | ZeroPort => Some(&FAIL_01),
        CommandNotSupported(_) => Some(&FAIL_07),
        AddressTypeNotSupported(_) => Some(&FAIL_08),
    }
}

/// The written bytes are the method selection, then (with a password) the auth answer,
/// then an error's reply if it failed; nothing else.
fn check_written(policy: u8, written: &[u8], outcome: &Outcome) {
    let select: &[u8] = if policy == 1 { &[5, 2] } else { &[5, 0] };
    let mut expected_ok: Vec<&[u8]> = vec![select];
    if policy == 1 {
        expected_ok.push(&[1, 0]);
    }
    let mut w = written;
    let mut steps = 0;
    for e in &expected_ok {
        if w.starts_with(e) {
            w = &w[e.len()..];
            steps += 1;
        } else {
            break;
        }
    }
    match outcome {
        Outcome::Failed(e) => assert_eq!(w, e.reply().unwrap_or_default()),
        Outcome::Done(..) => {
            assert!(w.is_empty());
            assert_eq!(steps, expected_ok.len(), "Done before the auth steps");
        }
        Outcome::Pending => assert!(w.is_empty()),
    }
}

fn round_trip(req: &Request, input: &[u8]) {
    let enc = req.encode().expect("a parsed request encodes");
    // The encoding is the request as sent, except RSV which is written as 0: find it at the
    // end of the consumed input (the request is the last message before the early data).
    assert_eq!(enc[0], 5);
    assert_eq!(enc[2], 0);
    let found = input
        .windows(enc.len())
        .any(|w| w[0] == enc[0] && w[1] == enc[1] && w[3..] == enc[3..]);
    assert!(found, "encoded request {enc:?} not in the input");
    // A fresh handshake parses it back.
    let mut hs = no_auth().allow_command(req.command);
    assert!(matches!(
        hs.feed(GREET_NO_AUTH),
        Ok(Progress::Reply { consumed: 3, .. })
    ));
    match hs.feed(&enc) {
        Ok(Progress::Done {
            consumed,
            request,
            early_data,
        }) => {
            assert_eq!(consumed, enc.len());
            assert_eq!(early_data, 0);
            assert_eq!(&request, req);
        }
        other => panic!("re-parse of {enc:?} gave {other:?}"),
    }
}
