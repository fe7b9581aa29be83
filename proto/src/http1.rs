//! Sans-IO HTTP/1.x for a forward proxy: request and response heads, body framing, the
//! chunked coding, the head a proxy forwards, and its error pages.
//!
//! Heads are parsed with `httparse`, the parser under hyper: small, no allocation,
//! fuzzed upstream. Hyper's own server was not used. It answers a header timeout by closing
//! without a 408. Its error responses have no body. It would have to sit on a stream type
//! of its own over the overlay. What remains is framing, where a proxy must be strict,
//! so it is written out here and tested on its own.
//!
//! # Strictness, and why
//!
//! A proxy that reads a body's length differently from the server behind it lets one
//! request hide inside another (request smuggling). So a request is refused with 400
//! ([`HttpError::Malformed`]) when:
//! - it has both `Content-Length` and `Transfer-Encoding`;
//! - it has several `Content-Length` values that differ, or one that is not all digits;
//! - it is HTTP/1.0 with a `Transfer-Encoding`;
//! - a chunk-size line is not hex digits, an optional extension and CRLF, or a chunk's data
//!   is not followed by CRLF.
//!
//! A transfer coding other than exactly `chunked` gets 501 (RFC 9112 §6.1). The forwarded
//! head always carries framing that Braid wrote itself.
//!
//! Hop-by-hop headers are removed, with those named in `Connection`, and no `Via` or
//! `X-Forwarded-For` is added: this is an anonymity proxy (RFC 9110 §7.6.3 lets a proxy
//! leave `Via` out when it must hide itself).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

use crate::target::TargetAddr;

/// What a message head may hold; both are configurable (`http_max_header_bytes`,
/// `http_max_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Bytes of the whole head: request or status line, headers and the empty line.
    pub max_head_bytes: usize,
    /// Header fields.
    pub max_headers: usize,
}

/// Default of [`HeadLimits::max_head_bytes`]: nginx's largest default (4 × 8 KiB buffers).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Default of [`HeadLimits::max_headers`]: hyper's default.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 4096;

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_head_bytes: MAX_HEAD_BYTES,
            max_headers: MAX_HEADERS,
        }
    }
}

/// Why a message could not be taken. [`HttpError::status`] is the answer to a client; a
/// response from a server that fails here is answered 502 instead.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    #[error("message head longer than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} header fields")]
    TooManyHeaders(usize),
    #[error("transfer coding other than chunked")]
    UnsupportedCoding,
    #[error("only http:// URIs are forwarded (use CONNECT for others)")]
    UnsupportedScheme,
    #[error("request body longer than {0} bytes")]
    BodyTooLarge(u64),
    #[error("HTTP version other than 1.0 or 1.1")]
    UnsupportedVersion,
}

impl HttpError {
    /// The status a client is answered with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) => 400,
            HttpError::HeadTooLarge(_) | HttpError::TooManyHeaders(_) => 431,
            HttpError::UnsupportedCoding | HttpError::UnsupportedScheme => 501,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::UnsupportedVersion => 505,
        }
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Exactly this many bytes (0: no body).
    Length(u64),
    /// The chunked coding.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// What a request asks the proxy for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestTarget {
    /// `CONNECT host:port`: a tunnel.
    Tunnel(TargetAddr),
    /// `GET http://host[:port]/path`: forward to `target`, asking for `path`; `authority` is
    /// the `Host` the server is given.
    Forward {
        target: TargetAddr,
        authority: String,
        path: String,
    },
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: RequestTarget,
    /// 0 or 1 (HTTP/1.0 or HTTP/1.1).
    pub minor_version: u8,
    /// Every field as sent, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub framing: BodyFraming,
    /// Whether the client lets the connection stay open after this exchange.
    pub keep_alive: bool,
}

/// Parses a request head at the start of `buf`: `Ok(None)` while incomplete, else the head
/// and its length.
pub fn parse_request_head(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(RequestHead, usize)>, HttpError> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers.max(1)];
    let mut req = httparse::Request::new(&mut fields);
    let Some(len) = head_len(req.parse(buf), buf, limits, "request head")? else {
        return Ok(None);
    };
    let (Some(method), Some(uri), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HttpError::Malformed("request line"));
    };
    let headers = owned(req.headers);
    let target = if method == "CONNECT" {
        RequestTarget::Tunnel(parse_authority(uri, None)?)
    } else {
        parse_absolute(uri)?
    };
    let framing = request_framing(&headers, minor)?;
    Ok(Some((
        RequestHead {
            method: method.to_owned(),
            target,
            minor_version: minor,
            keep_alive: keeps_alive(&headers, minor),
            headers,
            framing,
        },
        len,
    )))
}

/// What httparse said of a head, in the proxy's terms, for requests and responses alike:
/// `Ok(None)` while incomplete and under `max_head_bytes`, `Ok(Some(len))` when whole and
/// within the limits.
fn head_len(
    parsed: httparse::Result<usize>,
    buf: &[u8],
    limits: HeadLimits,
    what: &'static str,
) -> Result<Option<usize>, HttpError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) if n <= limits.max_head_bytes => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buf.len() < limits.max_head_bytes => Ok(None),
        Ok(_) => Err(HttpError::HeadTooLarge(limits.max_head_bytes)),
        Err(httparse::Error::TooManyHeaders) => Err(HttpError::TooManyHeaders(limits.max_headers)),
        Err(httparse::Error::Version) if names_other_version(buf) => {
            Err(HttpError::UnsupportedVersion)
        }
        Err(_) => Err(HttpError::Malformed(what)),
    }
}

/// Whether a request line that httparse refused is well formed but for its version
/// (`GET http://a/ HTTP/2.0`), rather than garbage.
fn names_other_version(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let parts: Vec<&[u8]> = line.trim_ascii().split(|&b| b == b' ').collect();
    parts.len() == 3 && parts[2].starts_with(b"HTTP/")
}

fn owned(fields: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    fields
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect()
}

/// `host:port` (or `host` with `default_port`), where host is a name, an IPv4 literal or
/// a bracketed IPv6 literal.
fn parse_authority(authority: &str, default_port: Option<u16>) -> Result<TargetAddr, HttpError> {
    let bad = HttpError::Malformed("authority");
    if authority.contains('@') {
        return Err(HttpError::Malformed("user info in the URI"));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(bad.clone())?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad),
        };
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad.clone())?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, p) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let host = match h.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => Host::Ip(IpAddr::V4(ip)),
            Err(_) => Host::Name(h),
        };
        (host, p)
    };
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u16>().map_err(|_| bad.clone())?
        }
        None => default_port.ok_or(HttpError::Malformed("no port"))?,
        Some(_) => return Err(bad),
    };
    if port == 0 {
        return Err(HttpError::Malformed("port 0"));
    }
    Ok(match host {
        Host::Ip(ip) => TargetAddr::Ip(SocketAddr::new(ip, port)),
        Host::Name(name) => {
            let ok = !name.is_empty()
                && name.len() <= 255
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !ok {
                return Err(HttpError::Malformed("host name"));
            }
            TargetAddr::Domain(name.to_ascii_lowercase(), port)
        }
    })
}

enum Host<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// `http://authority[/path][?query]`; an origin-form path is for a server, not a proxy.
fn parse_absolute(uri: &str) -> Result<RequestTarget, HttpError> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(HttpError::Malformed("not an absolute URI"));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        let valid = !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        return Err(if valid {
            HttpError::UnsupportedScheme
        } else {
            HttpError::Malformed("URI scheme")
        });
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let target = parse_authority(authority, Some(80))?;
    // A fragment is never sent to a server.
    let tail = tail.split('#').next().unwrap_or_default();
    let path = match tail.strip_prefix('?') {
        Some(_) => format!("/{tail}"),
        None if tail.is_empty() => "/".to_owned(),
        None => tail.to_owned(),
    };
    Ok(RequestTarget::Forward {
        target,
        authority: authority.to_owned(),
        path,
    })
}

/// The values of every field named `name`, split at commas, trimmed, lowercased.
fn tokens<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'a str,
) -> impl Iterator<Item = String> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

fn has(headers: &[(String, Vec<u8>)], name: &str) -> bool {
    headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// Every `Content-Length` value, which must agree: `None` when there is none.
fn content_length(headers: &[(String, Vec<u8>)]) -> Result<Option<u64>, HttpError> {
    let mut found = None;
    for (_, v) in headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        for part in v.split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(HttpError::Malformed("Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(HttpError::Malformed("Content-Length"))?;
            if found.is_some_and(|f| f != n) {
                return Err(HttpError::Malformed("differing Content-Length values"));
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// The transfer codings named, in order.
fn transfer_codings(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    tokens(headers, "transfer-encoding").collect()
}

fn request_framing(headers: &[(String, Vec<u8>)], minor: u8) -> Result<BodyFraming, HttpError> {
    let te = has(headers, "transfer-encoding");
    let cl = content_length(headers)?;
    if te {
        if cl.is_some() {
            return Err(HttpError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if minor == 0 {
            return Err(HttpError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        return match transfer_codings(headers).as_slice() {
            [only] if only == "chunked" => Ok(BodyFraming::Chunked),
            _ => Err(HttpError::UnsupportedCoding),
        };
    }
    Ok(BodyFraming::Length(cl.unwrap_or(0)))
}

fn keeps_alive(headers: &[(String, Vec<u8>)], minor: u8) -> bool {
    let mut close = false;
    let mut keep = false;
    for t in tokens(headers, "connection").chain(tokens(headers, "proxy-connection")) {
        close |= t == "close";
        keep |= t == "keep-alive";
    }
    !close && (minor >= 1 || keep)
}

/// Fields a proxy never forwards (RFC 9110 §7.6.1), plus those it writes itself.
const HOP_BY_HOP: [&str; 11] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
];

/// Whether a field is forwarded: not hop-by-hop, not named in `Connection`, and not one
/// that would give the user away (`Via`, `X-Forwarded-For`, `Forwarded` are dropped even
/// if an application added them itself).
fn forwarded<'a>(
    headers: &'a [(String, Vec<u8>)],
) -> impl Iterator<Item = &'a (String, Vec<u8>)> + 'a {
    let named: Vec<String> = tokens(headers, "connection").collect();
    headers.iter().filter(move |(n, _)| {
        let n = n.to_ascii_lowercase();
        !HOP_BY_HOP.contains(&n.as_str())
            && !matches!(n.as_str(), "via" | "x-forwarded-for" | "forwarded")
            && !named.contains(&n)
    })
}

fn push_fields<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = &'a (String, Vec<u8>)>) {
    for (n, v) in fields {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_framing(out: &mut Vec<u8>, framing: BodyFraming, always_length: bool) {
    match framing {
        BodyFraming::Length(0) if !always_length => {}
        BodyFraming::Length(n) => {
            let _ = write!(StrSink(out), "Content-Length: {n}\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::UntilClose => {}
    }
}

/// `fmt::Write` onto bytes.
struct StrSink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for StrSink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

impl RequestHead {
    /// The head to send the server: origin-form, `Host` from the URI, end-to-end fields
    /// only, Braid's own framing, and `Connection: close` when the client will not keep
    /// the connection. `None` for a tunnel.
    pub fn forward_head(&self) -> Option<Vec<u8>> {
        let RequestTarget::Forward {
            authority, path, ..
        } = &self.target
        else {
            return None;
        };
        let mut out = Vec::with_capacity(256);
        let _ = write!(
            StrSink(&mut out),
            "{} {path} HTTP/1.1\r\nHost: {authority}\r\n",
            self.method
        );
        push_fields(&mut out, forwarded(&self.headers));
        let body_method = matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
        push_framing(&mut out, self.framing, body_method);
        if !self.keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Some(out)
    }

    /// The value of the first field named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// `Proxy-Authorization: Basic ...` as (username, password).
    pub fn basic_credentials(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        let v = self.header("proxy-authorization")?.trim_ascii();
        let (scheme, b64) = v.split_at(v.iter().position(|&b| b == b' ')?);
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return None;
        }
        let raw = base64_decode(b64.trim_ascii())?;
        let colon = raw.iter().position(|&b| b == b':')?;
        Some((raw[..colon].to_vec(), raw[colon + 1..].to_vec()))
    }
}

/// Standard base64 with padding (RFC 4648 §4), as Basic credentials use.
fn base64_decode(s: &[u8]) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    if !s.len().is_multiple_of(4) || s.len() > 4 * 256 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for (i, quad) in s.chunks(4).enumerate() {
        let last = i + 1 == s.len() / 4;
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub minor_version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Parses a response head at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_response_head(
    buf: &[u8],
    limits: HeadLimits,
) -> Result<Option<(ResponseHead, usize)>, HttpError> {
    let mut fields = vec![httparse::EMPTY_HEADER; limits.max_headers.max(1)];
    let mut resp = httparse::Response::new(&mut fields);
    let Some(len) = head_len(resp.parse(buf), buf, limits, "response head")? else {
        return Ok(None);
    };
    let (Some(minor), Some(status)) = (resp.version, resp.code) else {
        return Err(HttpError::Malformed("status line"));
    };
    Ok(Some((
        ResponseHead {
            minor_version: minor,
            status,
            reason: resp.reason.unwrap_or_default().to_owned(),
            headers: owned(resp.headers),
        },
        len,
    )))
}

impl ResponseHead {
    /// Whether this is an interim (1xx) response; another head follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// How the body is delimited (RFC 9112 §6.3), given whether the request was HEAD.
    pub fn framing(&self, head_request: bool) -> Result<BodyFraming, HttpError> {
        if head_request || self.is_interim() || self.status == 204 || self.status == 304 {
            return Ok(BodyFraming::Length(0));
        }
        if has(&self.headers, "transfer-encoding") {
            // Transfer-Encoding overrides Content-Length; a coding the proxy cannot read
            // leaves only the close to end the body.
            // Codings before `chunked` (gzip...) stay in the forwarded header.
            return Ok(match transfer_codings(&self.headers).last() {
                Some(last) if last == "chunked" => BodyFraming::Chunked,
                _ => BodyFraming::UntilClose,
            });
        }
        Ok(match content_length(&self.headers)? {
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        })
    }

    /// Whether the server keeps the connection after this response.
    pub fn keeps_alive(&self) -> bool {
        keeps_alive(&self.headers, self.minor_version)
    }

    /// The head to send the client: end-to-end fields, `framing` as the body will be sent,
    /// and `Connection: close` when the proxy closes after it. For a HEAD request, the
    /// server's `Content-Length` is kept as it was (it describes the GET body).
    pub fn forward_head(&self, framing: BodyFraming, head_request: bool, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        let _ = write!(
            StrSink(&mut out),
            "HTTP/1.1 {:03} {}\r\n",
            self.status,
            self.reason
        );
        push_fields(&mut out, forwarded(&self.headers));
        if head_request || self.status == 304 {
            let cl = self
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"));
            push_fields(&mut out, cl);
        } else if !self.is_interim() && self.status != 204 {
            let codings = transfer_codings(&self.headers);
            match (framing, codings.split_last()) {
                // `gzip, chunked`: the codings under the chunking are the body's own.
                (BodyFraming::Chunked, Some((_, under))) if !under.is_empty() => {
                    let _ = write!(
                        StrSink(&mut out),
                        "Transfer-Encoding: {}, chunked\r\n",
                        under.join(", ")
                    );
                }
                _ => push_framing(&mut out, framing, true),
            }
        }
        if close && !self.is_interim() {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// The chunked coding, read incrementally: validates and finds the end of a chunked body,
/// and yields its payload when the proxy must send it unchunked.
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of the current framing line (size line or trailer field).
    line: usize,
    /// Bytes of the trailer section so far.
    trailer: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading hex digits of a chunk size (`digits` so far).
    #[default]
    SizeStart,
    Size {
        value: u64,
        digits: u8,
    },
    /// After the digits, in whitespace before a `;`.
    SizeWs {
        value: u64,
    },
    /// In a chunk extension, until CR.
    Ext {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section, at the start of a line.
    TrailerStart,
    TrailerLine,
    TrailerLf {
        empty: bool,
    },
    Done,
}

impl ChunkedDecoder {
    /// Reads from `input`; appends chunk data to `payload`; returns how many bytes were
    /// taken. Stops at the end of the body, leaving what follows (the next message).
    pub fn feed(
        &mut self,
        input: &[u8],
        payload: &mut Vec<u8>,
        max_trailer: usize,
    ) -> Result<usize, HttpError> {
        use ChunkState::*;
        let bad = |what| Err(HttpError::Malformed(what));
        let mut i = 0;
        while i < input.len() && self.state != Done {
            if let Data(left) = self.state {
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(input.len() - i);
                payload.extend_from_slice(&input[i..i + n]);
                i += n;
                let left = left - n as u64;
                self.state = if left == 0 { DataCr } else { Data(left) };
                continue;
            }
            let b = input[i];
            i += 1;
            if matches!(
                self.state,
                SizeStart | Size { .. } | SizeWs { .. } | Ext { .. }
            ) {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return bad("chunk-size line too long");
                }
            }
            self.state = match (self.state, b) {
                (SizeStart, _) => match hex(b) {
                    Some(d) => Size {
                        value: d,
                        digits: 1,
                    },
                    None => return bad("chunk size"),
                },
                (Size { value, digits }, _) if hex(b).is_some() => {
                    if digits >= 16 {
                        return bad("chunk size too large");
                    }
                    Size {
                        value: value << 4 | hex(b).unwrap_or(0),
                        digits: digits + 1,
                    }
                }
                (Size { value, .. } | SizeWs { value } | Ext { value }, b'\r') => SizeLf { value },
                (Size { value, .. } | SizeWs { value }, b' ' | b'\t') => SizeWs { value },
                (Size { value, .. } | SizeWs { value }, b';') => Ext { value },
                (Ext { value }, _) if (b >= 0x20 && b != 0x7f) || b == b'\t' => Ext { value },
                (SizeLf { value }, b'\n') => {
                    self.line = 0;
                    if value == 0 {
                        TrailerStart
                    } else {
                        Data(value)
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => SizeStart,
                (TrailerStart, b'\r') => TrailerLf { empty: true },
                (TrailerLine, b'\r') => TrailerLf { empty: false },
                // Lines end in CRLF only, and hold no control bytes: a bare LF that a
                // client would take for a line end could end the message early for it.
                (TrailerStart | TrailerLine, _) if b >= 0x20 && b != 0x7f || b == b'\t' => {
                    TrailerLine
                }
                (TrailerLf { empty: true }, b'\n') => Done,
                (TrailerLf { empty: false }, b'\n') => TrailerStart,
                _ => return bad("chunked framing"),
            };
            if matches!(self.state, TrailerStart | TrailerLine | TrailerLf { .. }) {
                self.trailer += 1;
                if self.trailer > max_trailer {
                    return Err(HttpError::HeadTooLarge(max_trailer));
                }
            }
        }
        Ok(i)
    }

    /// Whether the whole body (with its trailer) has been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// The reason phrase of a status the proxy itself answers with.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// The proxy's own answer: a small HTML page saying `detail`, with `Connection: close`
/// when `close`. 407 asks for Basic credentials.
pub fn error_response(status: u16, detail: &str, close: bool) -> Vec<u8> {
    let phrase = reason_phrase(status);
    let detail: String = detail
        .chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            c => c.to_string(),
        })
        .collect();
    let body = format!(
        "<!DOCTYPE html>\n<html><head><title>{status} {phrase}</title></head>\n\
         <body><h1>{status} {phrase}</h1>\n<p>{detail}</p>\n<hr><p>braid</p></body></html>\n"
    );
    let mut out = format!(
        "HTTP/1.1 {status} {phrase}\r\nContent-Type: text/html; charset=utf-8\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\n",
        body.len()
    );
    if status == 407 {
        out.push_str("Proxy-Authenticate: Basic realm=\"braid\"\r\n");
    }
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
