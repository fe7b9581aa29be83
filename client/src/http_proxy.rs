//! The HTTP proxy front: `CONNECT` tunnels and forwarding of `http://` requests, on the
//! mixed port (after the first byte showed a letter) or on the HTTP-only port.
//!
//! Parsing and framing are `braid_proto::http1` (sans-IO, httparse underneath). This
//! module only moves bytes:
//!
//! - **CONNECT** opens an inner stream to the authority. Bytes the client sent after the
//!   head ride as early data. The client gets `200 Connection established`, then the
//!   stream is relayed as a SOCKS one is.
//! - **Forwarding** opens an inner stream to the URI's host, and sends the rewritten head
//!   as early data. The request body is sent as it arrives (`Content-Length` or
//!   chunked, passed through after validation). The response is read with its own
//!   framing and written back. The overlay stream stays open for the next request to the
//!   same host, as a keep-alive connection to the server would. The client's connection
//!   stays open as long as both sides allow it. A `100 Continue` from the server reaches
//!   the client, so `Expect: 100-continue` works end to end.
//! - **Errors** are the proxy's own small pages: [`HttpError::status`] for what the client
//!   sent, and [`Reason::http_status`] for what the overlay or the target did. Both
//!   mappings live in `braid_proto`.
//! - **Deadlines**: a request head must be complete within the handshake deadline of its
//!   first byte (else 408). A kept-alive connection with no new request for
//!   `keepalive_idle` is closed without a word, as servers do.
//!
//! Authentication: with `[auth]`, every request must carry
//! `Proxy-Authorization: Basic` with the SOCKS pair, else 407. Without it, a Basic username
//! that names a gateway pins the request to it, as a SOCKS5 username does.

use std::time::Duration;

use braid_proto::http1::{
    self, BodyFraming, ChunkedDecoder, HeadLimits, HttpError, RequestHead, RequestTarget,
};
use braid_proto::{Reason, TargetAddr};
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::inner_stream::{self, RelayEnd};
use crate::isolation::Sessions;
use crate::overlay::ClientHandle;
use crate::socks::{isolation_key, SocksLimits};

/// What the HTTP side of a front lets a client hold.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub head: HeadLimits,
    /// A kept-alive connection with no new request for this long is closed.
    pub keepalive_idle: Duration,
    /// Longest request body forwarded (413 beyond); `None`: no limit.
    pub max_body: Option<u64>,
}

/// Default for [`HttpLimits::keepalive_idle`]: Chromium keeps idle sockets 90 s at most.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(90);

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            head: HeadLimits::default(),
            keepalive_idle: KEEPALIVE_IDLE,
            max_body: None,
        }
    }
}

/// Bytes read from a socket at once, and the size of the pipe to a forwarding stream.
const IO_CHUNK: usize = 16 * 1024;
const PIPE_BYTES: usize = 64 * 1024;

/// How a connection ends.
enum Ending {
    /// Close normally (FIN after what was written).
    Close,
    /// Cut: a stream died mid-message, the client must not take it for a whole one.
    Reset,
}

/// What a kept forwarding stream may be reused for: the destination, the pinned gateway,
/// and the session (a stream is never shared across isolated sessions).
type UpstreamKey = (TargetAddr, Option<String>, usize);

/// Which session a handle is.
fn lease_id(h: &ClientHandle) -> usize {
    std::sync::Arc::as_ptr(&h.metrics) as usize
}

/// A forwarding stream kept for the next request to the same place.
struct Upstream {
    key: UpstreamKey,
    r: ReadHalf<DuplexStream>,
    w: WriteHalf<DuplexStream>,
    /// Bytes read past the last response (none, on a healthy server).
    buf: Vec<u8>,
    relay: JoinHandle<RelayEnd>,
}

/// Serves HTTP on `tcp` (nothing read from it yet) until the client or a limit ends it.
/// Returns how the connection must be closed: `RelayEnd::Reset` means "drop without FIN".
pub async fn serve(tcp: &mut TcpStream, sessions: &Sessions, limits: &SocksLimits) -> RelayEnd {
    let http = limits.http;
    let mut buf: Vec<u8> = Vec::with_capacity(IO_CHUNK);
    let mut upstream: Option<Upstream> = None;
    let mut first = true;
    loop {
        let idle = if first {
            limits.handshake_deadline
        } else {
            http.keepalive_idle
        };
        let read = read_head(
            tcp,
            &mut buf,
            http.head,
            idle,
            first,
            limits.handshake_deadline,
        );
        let (head, len) = match read.await {
            HeadRead::Head(head, len) => (head, len),
            HeadRead::Gone => return RelayEnd::Closed,
            HeadRead::Refuse(status, detail) => {
                let _ = tcp
                    .write_all(&http1::error_response(status, &detail, true))
                    .await;
                return RelayEnd::Closed;
            }
        };
        first = false;
        buf.drain(..len.min(buf.len()));
        let pinned = match authorize(&head, sessions.default_handle(), limits) {
            Ok(p) => p,
            Err(()) => {
                let page = http1::error_response(407, "proxy authentication required", true);
                let _ = tcp.write_all(&page).await;
                return RelayEnd::Closed;
            }
        };
        // Another proxy user, another session (isolation); each request asks, since a
        // connection may carry several users.
        let user = head.basic_credentials().map(|(u, _)| u);
        let lease = match sessions.lease(isolation_key(tcp, user)).await {
            Ok(l) => l,
            Err(e) => {
                let page = http1::error_response(e.reason().http_status(), &e.to_string(), true);
                let _ = tcp.write_all(&page).await;
                return RelayEnd::Closed;
            }
        };
        let h = &lease.handle;
        match &head.target {
            RequestTarget::Tunnel(target) => {
                return tunnel(tcp, h, target, pinned, std::mem::take(&mut buf)).await;
            }
            RequestTarget::Forward { target, .. } => {
                if let (BodyFraming::Length(n), Some(max)) = (head.framing, http.max_body) {
                    if n > max {
                        let page = http1::error_response(
                            413,
                            &HttpError::BodyTooLarge(max).to_string(),
                            true,
                        );
                        let _ = tcp.write_all(&page).await;
                        return RelayEnd::Closed;
                    }
                }
                let key = (target.clone(), pinned, lease_id(h));
                match forward(tcp, &mut buf, &mut upstream, h, &head, key, &http).await {
                    Ok(true) => {}
                    Ok(false) => return RelayEnd::Closed,
                    Err(Ending::Close) => return RelayEnd::Closed,
                    Err(Ending::Reset) => {
                        let _ = tcp.set_zero_linger();
                        return RelayEnd::Reset;
                    }
                }
            }
        }
    }
}

/// Which gateway the request is pinned to (`Ok(None)`: any), or `Err` for a 407.
fn authorize(
    head: &RequestHead,
    h: &ClientHandle,
    limits: &SocksLimits,
) -> Result<Option<String>, ()> {
    let creds = head.basic_credentials();
    match &limits.auth {
        Some(auth) => match creds {
            Some((u, p)) if auth.check(&u, &p) => Ok(None),
            _ => Err(()),
        },
        None => Ok(creds.and_then(|(u, _)| h.gateways.pin_by_username(&u))),
    }
}

enum HeadRead {
    Head(RequestHead, usize),
    /// The client closed, or stayed idle past the keep-alive limit.
    Gone,
    /// Answer with this status and close.
    Refuse(u16, String),
}

/// Reads until `buf` holds a whole request head. The first byte must come within `idle`;
/// the rest within `deadline` of it (408 otherwise).
async fn read_head(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: HeadLimits,
    idle: Duration,
    first: bool,
    deadline: Duration,
) -> HeadRead {
    if buf.is_empty() {
        match tokio::time::timeout(idle, read_more(tcp, buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return HeadRead::Gone,
            Ok(Ok(_)) => {}
            Err(_) => {
                // Nothing of a request yet: the first request never came (408), or a kept
                // connection went idle (closed in silence, as servers do).
                return if first {
                    HeadRead::Refuse(408, "no request within the deadline".into())
                } else {
                    HeadRead::Gone
                };
            }
        }
    }
    let result = tokio::time::timeout(deadline, async {
        loop {
            match http1::parse_request_head(buf, limits) {
                Ok(Some((head, len))) => return HeadRead::Head(head, len),
                Err(e) => return HeadRead::Refuse(e.status(), e.to_string()),
                Ok(None) => match read_more(tcp, buf).await {
                    Ok(0) | Err(_) => return HeadRead::Gone,
                    Ok(_) => {}
                },
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| {
        HeadRead::Refuse(408, "request head not complete within the deadline".into())
    })
}

/// Appends one read's worth to `buf`; 0 at EOF.
async fn read_more<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let start = buf.len();
    buf.resize(start + IO_CHUNK, 0);
    let n = r.read(&mut buf[start..]).await;
    buf.truncate(start + *n.as_ref().unwrap_or(&0));
    n
}

/// `CONNECT`: open, answer, relay.
async fn tunnel(
    tcp: &mut TcpStream,
    h: &ClientHandle,
    target: &TargetAddr,
    pinned: Option<String>,
    early: Vec<u8>,
) -> RelayEnd {
    match inner_stream::connect(h, target, pinned.as_deref(), early).await {
        Ok(stream) => {
            if tcp
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return RelayEnd::Closed;
            }
            stream.relay(h, tcp).await
        }
        Err(e) => {
            let page = http1::error_response(e.reason().http_status(), &e.to_string(), true);
            let _ = tcp.write_all(&page).await;
            RelayEnd::Closed
        }
    }
}

/// Forwards one request and its response. `Ok(true)`: the client connection goes on.
async fn forward(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    upstream: &mut Option<Upstream>,
    h: &ClientHandle,
    head: &RequestHead,
    key: UpstreamKey,
    limits: &HttpLimits,
) -> Result<bool, Ending> {
    let Some(out_head) = head.forward_head() else {
        return Err(Ending::Close);
    };
    let head_request = head.method == "HEAD";
    // A kept stream whose relay ended (the server closed) is no use.
    if upstream
        .as_ref()
        .is_some_and(|u| u.key != key || u.relay.is_finished())
    {
        *upstream = None;
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let fresh = upstream.is_none();
        if fresh {
            match inner_stream::connect(h, &key.0, key.1.as_deref(), out_head.clone()).await {
                Ok(stream) => {
                    let (near, far) = tokio::io::duplex(PIPE_BYTES);
                    let h2 = h.clone();
                    let relay = tokio::spawn(async move {
                        let (mut r, mut w) = tokio::io::split(far);
                        stream.relay_halves(&h2, &mut r, &mut w).await
                    });
                    let (r, w) = tokio::io::split(near);
                    *upstream = Some(Upstream {
                        key: key.clone(),
                        r,
                        w,
                        buf: Vec::new(),
                        relay,
                    });
                }
                Err(e) => {
                    let status = e.reason().http_status();
                    // Nothing of the body was read: a body-less request leaves the
                    // connection usable.
                    let go_on = head.keep_alive && head.framing == BodyFraming::Length(0);
                    let page = http1::error_response(status, &e.to_string(), !go_on);
                    tcp.write_all(&page).await.map_err(|_| Ending::Close)?;
                    return Ok(go_on);
                }
            }
        }
        let Some(up) = upstream.as_mut() else {
            return Err(Ending::Close);
        };
        if !fresh && up.w.write_all(&out_head).await.is_err() {
            *upstream = None;
            continue;
        }
        let (got, body_sent) = {
            let (mut tcp_r, mut tcp_w) = tcp.split();
            let send = send_body(&mut tcp_r, buf, &mut up.w, head.framing, limits);
            let recv = relay_response(
                &mut up.r,
                &mut up.buf,
                &mut tcp_w,
                head,
                head_request,
                limits.head,
            );
            tokio::pin!(send, recv);
            tokio::select! {
                biased;
                s = &mut send => match s {
                    Ok(()) => (recv.await, true),
                    // A malformed or oversize chunked body: the client hears why.
                    Err(Some(e)) => (Err(ResponseError::BadBody(e)), false),
                    // The client's body broke off: the exchange cannot finish.
                    Err(None) => (Err(ResponseError::Cut), false),
                },
                r = &mut recv => (r, false),
            }
        };
        let detail = match got {
            Err(ResponseError::BadBody(e)) => {
                // Part of the body reached the server: its stream is of no further use.
                *upstream = None;
                let page = http1::error_response(e.status(), &e.to_string(), true);
                let _ = tcp.write_all(&page).await;
                return Err(Ending::Close);
            }
            Ok(Response {
                client_close,
                server_reusable,
            }) => {
                if !server_reusable {
                    *upstream = None;
                }
                // A response that came before the whole body leaves the rest of the body
                // unread: the connection cannot carry another request.
                return Ok(body_sent && !client_close && head.keep_alive);
            }
            Err(ResponseError::Cut) => {
                *upstream = None;
                return Err(Ending::Reset);
            }
            // Only idempotent requests are sent again (RFC 9110 §9.2.2).
            Err(ResponseError::NoResponse)
                if !fresh
                    && attempts < 2
                    && head.framing == BodyFraming::Length(0)
                    && matches!(
                        head.method.as_str(),
                        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
                    ) =>
            {
                // The kept stream's server closed it meanwhile: once more on a fresh one.
                *upstream = None;
                continue;
            }
            Err(ResponseError::NoResponse) => "the server closed without a response".to_owned(),
            Err(ResponseError::Bad(e)) => format!("bad response from the server: {e}"),
        };
        *upstream = None;
        let status = Reason::GENERAL_FAILURE.http_status();
        let _ = tcp
            .write_all(&http1::error_response(status, &detail, true))
            .await;
        return Err(Ending::Close);
    }
}

/// Copies the request body from the client (`buf` first) to the server, by `framing`.
async fn send_body<R, W>(
    r: &mut R,
    buf: &mut Vec<u8>,
    w: &mut W,
    framing: BodyFraming,
    limits: &HttpLimits,
) -> Result<(), Option<HttpError>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        BodyFraming::Length(n) => copy_exact(r, buf, w, n).await.map_err(|()| None),
        BodyFraming::Chunked => {
            let mut dec = ChunkedDecoder::default();
            let mut scratch = Vec::new();
            let mut total = 0u64;
            loop {
                if buf.is_empty() && read_more(r, buf).await.map_err(|_| None)? == 0 {
                    return Err(None);
                }
                scratch.clear();
                let n = dec
                    .feed(buf, &mut scratch, limits.head.max_head_bytes)
                    .map_err(Some)?;
                total += scratch.len() as u64;
                if let Some(max) = limits.max_body.filter(|m| total > *m) {
                    return Err(Some(HttpError::BodyTooLarge(max)));
                }
                w.write_all(&buf[..n]).await.map_err(|_| None)?;
                buf.drain(..n);
                if dec.is_done() {
                    return Ok(());
                }
            }
        }
        BodyFraming::UntilClose => Err(None),
    }
}

/// Copies exactly `n` bytes (those in `buf` first) from `r` to `w`.
async fn copy_exact<R, W>(r: &mut R, buf: &mut Vec<u8>, w: &mut W, mut n: u64) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while n > 0 {
        if buf.is_empty() && read_more(r, buf).await.map_err(drop)? == 0 {
            return Err(());
        }
        let take = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
        w.write_all(&buf[..take]).await.map_err(drop)?;
        buf.drain(..take);
        n -= take as u64;
    }
    Ok(())
}

struct Response {
    /// The client connection must close after this response.
    client_close: bool,
    /// The forwarding stream can carry another request.
    server_reusable: bool,
}

enum ResponseError {
    /// Nothing came before the server closed.
    NoResponse,
    /// The head was malformed (nothing sent to the client yet): 502.
    Bad(HttpError),
    /// The response broke off after part of it reached the client.
    Cut,
    /// The client's chunked body was malformed or over `max_body` (400, 413).
    BadBody(HttpError),
}

/// Reads the response (interim ones first) and writes it to the client.
async fn relay_response<R, W>(
    r: &mut R,
    rbuf: &mut Vec<u8>,
    w: &mut W,
    req: &RequestHead,
    head_request: bool,
    limits: HeadLimits,
) -> Result<Response, ResponseError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut started = false;
    loop {
        let (resp, len) = loop {
            match http1::parse_response_head(rbuf, limits) {
                Ok(Some(x)) => break x,
                Ok(None) => {}
                Err(e) if !started => return Err(ResponseError::Bad(e)),
                Err(_) => return Err(ResponseError::Cut),
            }
            match read_more(r, rbuf).await {
                Ok(0) | Err(_) if !started && rbuf.is_empty() => {
                    return Err(ResponseError::NoResponse)
                }
                Ok(0) | Err(_) if !started => {
                    return Err(ResponseError::Bad(HttpError::Malformed(
                        "response head cut short",
                    )))
                }
                Ok(0) | Err(_) => return Err(ResponseError::Cut),
                Ok(_) => {}
            }
        };
        rbuf.drain(..len);
        if resp.status == 101 {
            // Upgrade was not forwarded, so a switch is a server fault.
            return Err(if started {
                ResponseError::Cut
            } else {
                ResponseError::Bad(HttpError::Malformed("unrequested protocol switch"))
            });
        }
        let framing_in = resp.framing(head_request).map_err(|e| {
            if started {
                ResponseError::Cut
            } else {
                ResponseError::Bad(e)
            }
        })?;
        if resp.is_interim() {
            // 100 Continue and friends go to an HTTP/1.1 client as they are.
            if req.minor_version >= 1 {
                w.write_all(&resp.forward_head(BodyFraming::Length(0), false, false))
                    .await
                    .map_err(|_| ResponseError::Cut)?;
                started = true;
            }
            continue;
        }
        // An HTTP/1.0 client cannot read chunks: it gets the payload, ended by the close.
        let dechunk = framing_in == BodyFraming::Chunked && req.minor_version == 0;
        let framing_out = if dechunk {
            BodyFraming::UntilClose
        } else {
            framing_in
        };
        let client_close = !req.keep_alive || framing_out == BodyFraming::UntilClose;
        let server_reusable = resp.keeps_alive() && framing_in != BodyFraming::UntilClose;
        w.write_all(&resp.forward_head(framing_out, head_request, client_close))
            .await
            .map_err(|_| ResponseError::Cut)?;
        let body = async {
            match framing_in {
                BodyFraming::Length(n) => copy_exact(r, rbuf, w, n).await,
                BodyFraming::Chunked => {
                    let mut dec = ChunkedDecoder::default();
                    let mut payload = Vec::new();
                    loop {
                        if rbuf.is_empty() && read_more(r, rbuf).await.map_err(drop)? == 0 {
                            return Err(());
                        }
                        payload.clear();
                        let n = dec
                            .feed(rbuf, &mut payload, limits.max_head_bytes)
                            .map_err(drop)?;
                        let out = if dechunk { &payload[..] } else { &rbuf[..n] };
                        w.write_all(out).await.map_err(drop)?;
                        rbuf.drain(..n);
                        if dec.is_done() {
                            return Ok(());
                        }
                    }
                }
                BodyFraming::UntilClose => {
                    w.write_all(rbuf).await.map_err(drop)?;
                    rbuf.clear();
                    tokio::io::copy(r, w).await.map(drop).map_err(drop)
                }
            }
        };
        body.await.map_err(|()| ResponseError::Cut)?;
        w.flush().await.map_err(|_| ResponseError::Cut)?;
        return Ok(Response {
            client_close,
            server_reusable: server_reusable && rbuf.is_empty(),
        });
    }
}
