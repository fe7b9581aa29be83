//! The HTTP/1 proxy parsers (`braid_proto::http1`): request heads, response heads, the
//! chunked coding.
//!
//! Input: `mode u8 | max_headers u8 | cut seed u8 | bytes`. `mode % 3`: 0 request head,
//! 1 response head, 2 chunked body. Checked:
//!
//! * request: a parsed head took at most the input and at most `max_head_bytes`; every
//!   shorter prefix is incomplete, never an error; its framing agrees with its fields
//!   (never both `Content-Length` and `Transfer-Encoding`); the forwarded head parses
//!   with httparse as a whole request of the same method, carries no hop-by-hop, proxy or
//!   identifying field, names its framing once, and ends at its own end;
//! * response: a parsed head's forwarded form parses back with the same status;
//! * chunked: feeding the bytes at once or split at the seed gives the same bytes taken,
//!   the same payload and the same verdict, and the payload is never longer than the input.
#![no_main]

use braid_fuzz::Input;
use braid_proto::http1::{
    parse_request_head, parse_response_head, BodyFraming, ChunkedDecoder, HeadLimits,
};
use libfuzzer_sys::fuzz_target;

const FORBIDDEN: [&str; 11] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "via",
    "x-forwarded-for",
    "forwarded",
    "proxy-authenticate",
];

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let mode = inp.u8() % 3;
    let limits = HeadLimits {
        max_head_bytes: 2048,
        max_headers: usize::from(inp.u8() % 40) + 1,
    };
    let seed = usize::from(inp.u8());
    let bytes = inp.rest();
    match mode {
        0 => request(bytes, limits, seed),
        1 => response(bytes, limits),
        _ => chunked(bytes, seed),
    }
});

fn request(bytes: &[u8], limits: HeadLimits, seed: usize) {
    let Ok(Some((head, len))) = parse_request_head(bytes, limits) else {
        return;
    };
    assert!(len <= bytes.len() && len <= limits.max_head_bytes);
    for cut in [len / 2, len.saturating_sub(1), seed % len.max(1)] {
        if cut < len {
            assert_eq!(parse_request_head(&bytes[..cut], limits), Ok(None), "cut {cut}");
        }
    }
    let has = |n: &str| head.headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(n));
    assert!(!(has("content-length") && has("transfer-encoding")));
    if head.framing == BodyFraming::Chunked {
        assert!(has("transfer-encoding"));
    }
    let Some(out) = head.forward_head() else {
        return;
    };
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers + 4];
    let mut req = httparse::Request::new(&mut fields);
    let status = req.parse(&out).expect("the forwarded head parses");
    assert_eq!(status, httparse::Status::Complete(out.len()));
    assert_eq!(req.method, Some(head.method.as_str()));
    assert!(req.path.is_some_and(|p| p.starts_with('/')));
    let mut framing_fields = 0;
    for f in req.headers.iter() {
        let name = f.name.to_ascii_lowercase();
        assert!(!FORBIDDEN.contains(&name.as_str()) || (name == "connection" && f.value == b"close"), "{name} forwarded");
        if name == "content-length" || name == "transfer-encoding" {
            framing_fields += 1;
        }
    }
    assert!(framing_fields <= 1);
}

fn response(bytes: &[u8], limits: HeadLimits) {
    let Ok(Some((head, len))) = parse_response_head(bytes, limits) else {
        return;
    };
    assert!(len <= bytes.len());
    let Ok(framing) = head.framing(false) else {
        return;
    };
    let out = head.forward_head(framing, false, true);
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers + 4];
    let mut resp = httparse::Response::new(&mut fields);
    assert_eq!(resp.parse(&out), Ok(httparse::Status::Complete(out.len())));
    assert_eq!(resp.code, Some(head.status));
}

fn chunked(bytes: &[u8], seed: usize) {
    let mut whole = ChunkedDecoder::default();
    let mut p1 = Vec::new();
    let r1 = whole.feed(bytes, &mut p1, 512);
    let at = seed % (bytes.len() + 1);
    let mut split = ChunkedDecoder::default();
    let mut p2 = Vec::new();
    let r2 = split.feed(&bytes[..at], &mut p2, 512).and_then(|a| {
        if a < at {
            // Done before the split point: nothing more is taken.
            assert!(split.is_done());
            return Ok(a);
        }
        split.feed(&bytes[at..], &mut p2, 512).map(|b| a + b)
    });
    assert_eq!(r1.is_ok(), r2.is_ok(), "{r1:?} {r2:?}");
    if let (Ok(a), Ok(b)) = (&r1, &r2) {
        assert_eq!(a, b);
        assert_eq!(p1, p2);
        assert_eq!(whole.is_done(), split.is_done());
        assert!(p1.len() <= *a);
    }
}
