//! Moving an inner stream to a new carrier (`braid_proto::inner::reliable`), as a hostile
//! carrier or peer would try it.
//!
//! Input: `mode u8 | bytes`. Checked, for one fixed honest stream (deterministic keys):
//!
//! * `first_message` on the bytes never panics; it says `Resume` exactly when the layout
//!   model says so (kind 2, then 16 + 8 + 32 bytes and nothing more), with the id and count
//!   taken from the bytes, and `Open` exactly for kind 1;
//! * the gateway end accepts no resume made from the bytes unless it is byte for byte the
//!   honest client's (nobody without the keys can take the stream);
//! * the client end accepts no answer made from the bytes unless it is the honest gateway's
//!   answer, and a refused answer is `ResumeRefused`;
//! * the gateway end, fed the bytes as received messages (cut by the length framing), never
//!   panics and never counts an ack for records it did not send: its resend buffer only
//!   shrinks by what it sealed.
#![no_main]

use braid_fuzz::{stream_keys_pair, Input};
use braid_proto::inner::reliable::{unknown_stream_reply, ReliableStream};
use braid_proto::inner::{first_message, FirstMessage, InnerError, MessageDecoder, Record};
use libfuzzer_sys::fuzz_target;

fn ends() -> (ReliableStream, ReliableStream) {
    let (c, g) = stream_keys_pair();
    (ReliableStream::new(c, 0), ReliableStream::new(g, 0))
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let bytes = inp.rest();
    match mode % 3 {
        0 => parse_and_forge(bytes),
        1 => forge_answer(bytes),
        _ => hostile_records(bytes),
    }
});

fn parse_and_forge(bytes: &[u8]) {
    let model_resume = bytes.first() == Some(&2) && bytes.len() == 1 + 16 + 8 + 32;
    match first_message(bytes) {
        Ok(FirstMessage::Resume(req)) => {
            assert!(model_resume, "a resume the model refuses");
            assert_eq!(&req.id[..], &bytes[1..17]);
            let count: [u8; 8] = bytes[17..25].try_into().expect("8 bytes");
            assert_eq!(req.received, u64::from_be_bytes(count));
            let (mut c, mut g) = ends();
            let honest = c.resume_request();
            match g.accept_resume(&req) {
                Ok(_) => assert_eq!(&honest[2..], bytes, "a forged resume was accepted"),
                Err(e) => assert!(matches!(e, InnerError::ResumeAuth | InnerError::BadAck)),
            }
        }
        Ok(FirstMessage::Open) => assert_eq!(bytes.first(), Some(&1)),
        Err(_) => assert!(!model_resume),
    }
}

fn forge_answer(bytes: &[u8]) {
    let (mut c, mut g) = ends();
    let req = c.resume_request();
    let Ok(FirstMessage::Resume(req)) = first_message(&req[2..]) else {
        panic!("the honest resume does not parse");
    };
    let honest = g.accept_resume(&req).expect("the honest resume");
    match c.finish_resume(bytes) {
        Ok(()) => assert_eq!(&honest[2..], bytes, "a forged answer was accepted"),
        Err(InnerError::ResumeRefused) => assert_eq!(bytes.first(), unknown_stream_reply().get(2)),
        Err(_) => {}
    }
}

fn hostile_records(bytes: &[u8]) {
    let (_, mut g) = ends();
    for i in 0..4u8 {
        g.seal(&Record::Data(vec![i; 100])).expect("seal");
    }
    let before = g.buffered();
    let mut dec = MessageDecoder::default();
    dec.push(bytes);
    while let Ok(Some(m)) = dec.next_message() {
        if g.open(&m).is_err() {
            break;
        }
    }
    assert!(g.buffered() <= before);
}
