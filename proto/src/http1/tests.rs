use super::*;
use proptest::prelude::*;

fn req(text: &str) -> Result<Option<(RequestHead, usize)>, HttpError> {
    parse_request_head(text.as_bytes(), HeadLimits::default())
}

fn head(text: &str) -> RequestHead {
    req(text).unwrap().unwrap().0
}

#[test]
fn connect_and_absolute_forms() {
    let h = head("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_eq!(
        h.target,
        RequestTarget::Tunnel(TargetAddr::Domain("example.com".into(), 443))
    );
    let h = head("CONNECT [::1]:22 HTTP/1.1\r\n\r\n");
    assert_eq!(
        h.target,
        RequestTarget::Tunnel(TargetAddr::Ip("[::1]:22".parse().unwrap()))
    );
    let h = head("GET http://Wiki.Corp/a/b?x=1#frag HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_eq!(
        h.target,
        RequestTarget::Forward {
            target: TargetAddr::Domain("wiki.corp".into(), 80),
            authority: "Wiki.Corp".into(),
            path: "/a/b?x=1".into(),
        }
    );
    let h = head("GET http://10.1.2.3:8080?q HTTP/1.0\r\n\r\n");
    assert_eq!(
        h.target,
        RequestTarget::Forward {
            target: TargetAddr::Ip("10.1.2.3:8080".parse().unwrap()),
            authority: "10.1.2.3:8080".into(),
            path: "/?q".into(),
        }
    );
    assert!(!h.keep_alive, "HTTP/1.0 closes by default");
}

#[test]
fn refusals_and_their_statuses() {
    let cases: &[(&str, u16)] = &[
        ("GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("OPTIONS * HTTP/1.1\r\n\r\n", 400),
        ("GET https://example.com/ HTTP/1.1\r\n\r\n", 501),
        ("GET ftp://example.com/ HTTP/1.1\r\n\r\n", 501),
        ("GET http://user@example.com/ HTTP/1.1\r\n\r\n", 400),
        ("GET http://exa mple.com/ HTTP/1.1\r\n\r\n", 400),
        ("GET http://example.com:0/ HTTP/1.1\r\n\r\n", 400),
        ("GET http://example.com:99999/ HTTP/1.1\r\n\r\n", 400),
        ("CONNECT example.com HTTP/1.1\r\n\r\n", 400),
        ("CONNECT [::1:22 HTTP/1.1\r\n\r\n", 400),
        (
            "POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            400,
        ),
        (
            "POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            400,
        ),
        (
            "POST http://a/ HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n",
            400,
        ),
        ("POST http://a/ HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
        (
            "POST http://a/ HTTP/1.1\r\nContent-Length: 0x5\r\n\r\n",
            400,
        ),
        (
            "POST http://a/ HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
            400,
        ),
        (
            "POST http://a/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            501,
        ),
        (
            "POST http://a/ HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            501,
        ),
        ("POST http://a/ HTTP/1.1\r\nContent-Length : 5\r\n\r\n", 400),
        ("GET http://a/ HTTP/2.0\r\n\r\n", 505),
        ("\x16\x03\x01\x00\x05\x01\x00\x00", 400),
    ];
    for (text, status) in cases {
        match req(text) {
            Err(e) => assert_eq!(e.status(), *status, "{text:?}: {e}"),
            Ok(r) => panic!("{text:?} accepted: {r:?}"),
        }
    }
    // Equal repeated lengths are one length.
    let h = head("POST http://a/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::Length(5));
    let h = head("POST http://a/ HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert_eq!(h.framing, BodyFraming::Chunked);
}

#[test]
fn head_limits() {
    let limits = HeadLimits {
        max_head_bytes: 256,
        max_headers: 4,
    };
    let long = format!("GET http://a/ HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(300));
    let e = parse_request_head(long.as_bytes(), limits).unwrap_err();
    assert_eq!(e.status(), 431);
    // Still incomplete and already over: refused before the end arrives.
    let e = parse_request_head(&long.as_bytes()[..260], limits).unwrap_err();
    assert_eq!(e.status(), 431);
    assert_eq!(
        parse_request_head(&long.as_bytes()[..200], limits).unwrap(),
        None
    );
    let many = "GET http://a/ HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\n\r\n";
    assert_eq!(
        parse_request_head(many.as_bytes(), limits)
            .unwrap_err()
            .status(),
        431
    );
}

#[test]
fn forwarded_head_keeps_only_end_to_end_fields() {
    let h = head(
        "POST http://example.com:8080/up HTTP/1.1\r\nHost: wrong\r\nUser-Agent: curl\r\n\
         Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic dTpw\r\n\
         Via: 1.1 leak\r\nX-Forwarded-For: 192.0.2.1\r\nForwarded: for=x\r\nKeep-Alive: 5\r\n\
         TE: trailers\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    );
    let out = String::from_utf8(h.forward_head().unwrap()).unwrap();
    assert_eq!(
        out,
        "POST /up HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: curl\r\n\
         Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let h = head("GET http://a/ HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(
        h.forward_head().unwrap(),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    );
    let h = head("PUT http://a/ HTTP/1.1\r\n\r\n");
    assert!(String::from_utf8(h.forward_head().unwrap())
        .unwrap()
        .contains("Content-Length: 0\r\n"));
    assert_eq!(head("CONNECT a:1 HTTP/1.1\r\n\r\n").forward_head(), None);
}

#[test]
fn basic_credentials() {
    let h = head("GET http://a/ HTTP/1.1\r\nProxy-Authorization: Basic YWxpY2U6czNjcjp0\r\n\r\n");
    assert_eq!(
        h.basic_credentials(),
        Some((b"alice".to_vec(), b"s3cr:t".to_vec()))
    );
    for bad in [
        "Bearer abc",
        "Basic ###",
        "Basic YWxpY2U",
        "Basic YQ==YQ==",
        "Basic",
    ] {
        let h = head(&format!(
            "GET http://a/ HTTP/1.1\r\nProxy-Authorization: {bad}\r\n\r\n"
        ));
        assert_eq!(h.basic_credentials(), None, "{bad}");
    }
    assert_eq!(base64_decode(b"YQ==").unwrap(), b"a");
    assert_eq!(base64_decode(b"YWI=").unwrap(), b"ab");
    assert_eq!(base64_decode(b"").unwrap(), b"");
}

fn resp(text: &str) -> ResponseHead {
    parse_response_head(text.as_bytes(), HeadLimits::default())
        .unwrap()
        .unwrap()
        .0
}

#[test]
fn response_framing() {
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(r.framing(false).unwrap(), BodyFraming::Length(12));
    assert_eq!(r.framing(true).unwrap(), BodyFraming::Length(0));
    let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n");
    assert_eq!(r.framing(false).unwrap(), BodyFraming::Chunked);
    let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_eq!(r.framing(false).unwrap(), BodyFraming::UntilClose);
    let r = resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    assert_eq!(r.framing(false).unwrap(), BodyFraming::Chunked);
    assert_eq!(
        r.forward_head(BodyFraming::Chunked, false, false),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    );
    let r = resp("HTTP/1.0 200 OK\r\n\r\n");
    assert_eq!(r.framing(false).unwrap(), BodyFraming::UntilClose);
    assert!(!r.keeps_alive());
    for s in [204, 304, 100] {
        let r = resp(&format!("HTTP/1.1 {s} X\r\nContent-Length: 5\r\n\r\n"));
        assert_eq!(r.framing(false).unwrap(), BodyFraming::Length(0));
    }
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n");
    assert!(r.framing(false).is_err());
    let r =
        resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\nX: y\r\n\r\n");
    assert_eq!(
        r.forward_head(BodyFraming::UntilClose, false, true),
        b"HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n"
    );
    let r = resp("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n");
    assert_eq!(
        r.forward_head(BodyFraming::Length(0), true, false),
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"
    );
}

fn dechunk_whole(body: &[u8]) -> Result<(Vec<u8>, usize), HttpError> {
    let mut d = ChunkedDecoder::default();
    let mut out = Vec::new();
    let n = d.feed(body, &mut out, 1024)?;
    assert!(d.is_done(), "not done after {n} of {}", body.len());
    Ok((out, n))
}

#[test]
fn chunked_bodies() {
    let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
    let (out, n) = dechunk_whole(body).unwrap();
    assert_eq!(out, b"hello world0123456789");
    assert_eq!(&body[n..], b"NEXT");
    for bad in [
        &b"g\r\n"[..],
        b"5\r\nhelloX\r\n",
        b"5\nhello\r\n",
        b"5\r\nhello\n0\r\n",
        b"11111111111111111\r\n",
        b"-5\r\n",
        b" 5\r\n",
        b"5 x\r\n",
        b"5\x00\r\n",
        b"0\r\n\nHTTP/1.1 200 OK\n\n",
        b"0\r\nX: y\nZ: w\r\n\r\n",
        b"0\r\nX: \x01\r\n\r\n",
    ] {
        let mut d = ChunkedDecoder::default();
        assert!(
            d.feed(bad, &mut Vec::new(), 1024).is_err(),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let mut d = ChunkedDecoder::default();
    let huge = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
    assert!(d.feed(huge.as_bytes(), &mut Vec::new(), 1024).is_err());
    let mut d = ChunkedDecoder::default();
    let trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(100));
    assert_eq!(
        d.feed(trailer.as_bytes(), &mut Vec::new(), 50),
        Err(HttpError::HeadTooLarge(50))
    );
}

#[test]
fn error_pages() {
    let page = String::from_utf8(error_response(403, "refused: <not_allowed>", true)).unwrap();
    assert!(page.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{page}");
    assert!(page.contains("Connection: close\r\n"));
    assert!(page.contains("&lt;not_allowed&gt;"));
    let (h, n) = parse_response_head(page.as_bytes(), HeadLimits::default())
        .unwrap()
        .unwrap();
    assert_eq!(
        h.framing(false).unwrap(),
        BodyFraming::Length((page.len() - n) as u64)
    );
    let page = String::from_utf8(error_response(407, "", false)).unwrap();
    assert!(page.contains("Proxy-Authenticate: Basic realm=\"braid\"\r\n"));
    assert!(!page.contains("Connection: close"));
}

proptest! {
    /// Garbage never panics; a whole request cut anywhere is incomplete, never an error.
    #[test]
    fn request_heads_at_any_cut(garbage in proptest::collection::vec(any::<u8>(), 0..512),
                                path in "/[a-z0-9/]{0,40}", n in 0u64..100_000) {
        let _ = parse_request_head(&garbage, HeadLimits::default());
        let _ = parse_response_head(&garbage, HeadLimits::default());
        let text = format!("POST http://example.com{path} HTTP/1.1\r\nContent-Length: {n}\r\nUser-Agent: x\r\n\r\n");
        let (h, len) = req(&text).unwrap().unwrap();
        prop_assert_eq!(len, text.len());
        prop_assert_eq!(h.framing, BodyFraming::Length(n));
        for cut in 0..text.len() {
            prop_assert_eq!(req(&text[..cut]).unwrap(), None);
        }
    }

    /// A chunked body decodes to the same payload and end however it is split, and garbage
    /// never panics.
    #[test]
    fn chunked_at_any_split(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..6),
                            split in any::<proptest::sample::Index>(),
                            garbage in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = ChunkedDecoder::default().feed(&garbage, &mut Vec::new(), 1024);
        let mut body = Vec::new();
        let mut want = Vec::new();
        for c in &chunks {
            body.extend_from_slice(format!("{:X}\r\n", c.len()).as_bytes());
            body.extend_from_slice(c);
            body.extend_from_slice(b"\r\n");
            want.extend_from_slice(c);
        }
        body.extend_from_slice(b"0\r\n\r\nNEXT");
        let at = split.index(body.len() - 4);
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let a = d.feed(&body[..at], &mut out, 1024).unwrap();
        prop_assert_eq!(a, at);
        let b = d.feed(&body[at..], &mut out, 1024).unwrap();
        prop_assert!(d.is_done());
        prop_assert_eq!(&body[at + b..], b"NEXT");
        prop_assert_eq!(out, want);
    }
}

/// Found by the `http` fuzz target: a status under 100 lost its leading zero when forwarded.
#[test]
fn forwarded_status_keeps_three_digits() {
    let r = resp("HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n");
    assert!(r
        .forward_head(BodyFraming::Length(0), false, false)
        .starts_with(b"HTTP/1.1 099 Odd\r\n"));
}
