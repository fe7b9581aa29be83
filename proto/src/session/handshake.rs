//! Opening a session: the Noise NK exchange carried in one Hello and one Welcome cell, and
//! the session parameters each side announces in it.

use std::time::Instant;

use rand_core::CryptoRng;

use super::{Session, SessionConfig, SessionError, Side};
use crate::cell::{
    handshake_cell, handshake_message, CellError, CellHeader, CellKind, Label, SessionId,
    HEADER_LEN,
};
use crate::frame::{Frame, Mailbox};
use crate::noise::{self, NkInitiator, StaticKeypair};
use crate::wire::{Reader, WireError, Writer};

/// What a client says when opening a session (sealed to the central in Hello).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHello {
    pub window_cells: u32,
    pub mailboxes: Vec<Mailbox>,
    /// The user's limits pass (`credential::LimitsPass`), empty without one. It names no
    /// user: the central only learns the stream limit.
    pub limits_pass: Vec<u8>,
}

/// Handshake payloads: `window u32 | Mailboxes frame | stream_window u32 | unix_secs u64 |
/// pass_len u16 | limits_pass` (Hello) and `window u32 | stream_window u32` (Welcome). The Hello's time bounds how long
/// a central must remember it to refuse a replay.
/// The longest limits pass a Hello carries (room for a newer pass layout).
const MAX_PASS_LEN: usize = 256;

impl SessionHello {
    fn encode(&self, stream_window: u64, unix_secs: u64) -> Result<Vec<u8>, WireError> {
        let f = Frame::Mailboxes {
            boxes: self.mailboxes.clone(),
        };
        if self.limits_pass.len() > MAX_PASS_LEN {
            return Err(WireError::Invalid("limits pass too long"));
        }
        let mut buf = vec![0u8; 18 + f.encoded_len() + self.limits_pass.len()];
        let mut w = Writer::new(&mut buf);
        w.u32(self.window_cells)?;
        f.write_onto(&mut w)?;
        w.u32(clamp_u32(stream_window))?;
        w.u64(unix_secs)?;
        w.u16(self.limits_pass.len() as u16)?;
        w.bytes(&self.limits_pass)?;
        Ok(buf)
    }

    fn decode(b: &[u8]) -> Result<(Self, u64, u64), WireError> {
        let mut r = Reader::new(b);
        let window_cells = r.u32()?;
        let mailboxes = match Frame::take_from(&mut r)? {
            Some(Frame::Mailboxes { boxes }) => boxes,
            _ => return Err(WireError::Invalid("hello without mailboxes")),
        };
        let stream_window = u64::from(r.u32()?);
        let unix_secs = r.u64()?;
        let pass_len = usize::from(r.u16()?);
        if pass_len > MAX_PASS_LEN {
            return Err(WireError::Invalid("limits pass too long"));
        }
        let limits_pass = r.bytes(pass_len)?.to_vec();
        Ok((
            SessionHello {
                window_cells,
                mailboxes,
                limits_pass,
            },
            stream_window,
            unix_secs,
        ))
    }
}

/// The id of the session a Hello opens: a hash of the client's ephemeral key (the first 32
/// bytes of Noise message 1). A Hello can therefore not carry another client's id: an
/// upstream that saw a client's Hello cannot open a session of its own under that id.
pub fn session_id_of(ephemeral: &[u8]) -> SessionId {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        &[b"braid session id".as_slice(), ephemeral].concat(),
    );
    let mut id = [0u8; 16];
    id.copy_from_slice(d.as_ref().get(..16).unwrap_or(&[0; 16]));
    SessionId(id)
}

/// Leading zero bits of the Hello's proof of work: `SHA-256("braid hello pow" ‖ id ‖
/// nonce)`. The client puzzle: a central under load serves Hellos of higher effort first,
/// and a client whose Hello went unanswered tries again with more effort.
fn pow_effort(id: SessionId, nonce: u64) -> u8 {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        &[b"braid hello pow".as_slice(), &id.0, &nonce.to_be_bytes()].concat(),
    );
    let mut bits = 0u32;
    for b in d.as_ref() {
        bits += b.leading_zeros();
        if *b != 0 {
            break;
        }
    }
    u8::try_from(bits).unwrap_or(u8::MAX)
}

/// The most effort a client spends (2^20 hashes, well under a second).
pub const MAX_EFFORT: u8 = 20;

/// A nonce giving at least `effort` leading zero bits for `id`.
fn solve_pow(id: SessionId, effort: u8) -> u64 {
    let effort = effort.min(MAX_EFFORT);
    (0u64..).find(|n| pow_effort(id, *n) >= effort).unwrap_or(0)
}

/// What a central learns from a Hello before any public-key operation: the session id it
/// names (checked against its ephemeral key) and the effort of its proof of work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloTicket {
    pub id: SessionId,
    /// The client's ephemeral key: what the replay cache remembers.
    pub ephemeral: [u8; 32],
    pub effort: u8,
}

/// The cheap checks of a Hello: size, kind, canonical header (epoch and seq 0) and padding
/// (zeros), the id bound to the ephemeral key, and the proof of work's effort. A Hello that
/// fails them costs the central two hashes.
pub fn check_hello(cfg: &SessionConfig, cell: &[u8]) -> Result<HelloTicket, SessionError> {
    if cell.len() != cfg.cell_size {
        return Err(CellError::Size {
            got: cell.len(),
            expected: cfg.cell_size,
        }
        .into());
    }
    let h = CellHeader::take_from(cell)?;
    if h.kind != CellKind::HELLO {
        return Err(CellError::Kind(h.kind).into());
    }
    let (msg, rest) = handshake_parts(cell)?;
    let mut r = Reader::new(rest);
    let nonce = r.u64()?;
    if h.epoch != 0 || h.seq != 0 || r.rest().iter().any(|b| *b != 0) {
        return Err(SessionError::NotCanonical);
    }
    let ephemeral: [u8; 32] = msg
        .get(..32)
        .and_then(|e| e.try_into().ok())
        .ok_or(WireError::Truncated)?;
    if session_id_of(&ephemeral) != h.session {
        return Err(SessionError::ForeignId);
    }
    Ok(HelloTicket {
        id: h.session,
        ephemeral,
        effort: pow_effort(h.session, nonce),
    })
}

/// A handshake cell's message and what follows it.
fn handshake_parts(cell: &[u8]) -> Result<(&[u8], &[u8]), SessionError> {
    let msg = handshake_message(cell)?;
    let rest = cell
        .get(HEADER_LEN + 2 + msg.len()..)
        .ok_or(WireError::Truncated)?;
    Ok((msg, rest))
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The prologue binds the cell size; the session id needs no binding, being a hash of the
/// ephemeral key the handshake already covers.
fn prologue(cell_size: usize) -> Vec<u8> {
    let mut p = b"braid/1 outer".to_vec();
    p.extend_from_slice(&(cell_size as u32).to_be_bytes());
    p
}

/// A client's session before the central answered.
pub struct PendingSession {
    id: SessionId,
    cfg: SessionConfig,
    init: NkInitiator,
    hello_cell: Vec<u8>,
}

impl PendingSession {
    /// Starts a session with the central whose static key is `central_key`: a fresh
    /// ephemeral key (so a fresh session id), the time `unix_secs`, and a proof of work of
    /// `effort` leading zero bits (0 costs nothing; at most [`MAX_EFFORT`]).
    pub fn start(
        rng: &mut impl CryptoRng,
        cfg: SessionConfig,
        central_key: &[u8; 32],
        hello: &SessionHello,
        unix_secs: u64,
        effort: u8,
    ) -> Result<Self, SessionError> {
        let (init, msg) = noise::initiate(
            rng,
            central_key,
            &prologue(cfg.cell_size),
            &hello.encode(cfg.stream_window, unix_secs)?,
        )?;
        let id = session_id_of(msg.get(..32).ok_or(WireError::Truncated)?);
        let mut hello_cell = handshake_cell(cfg.cell_size, CellKind::HELLO, id.into(), &msg)?;
        let nonce = solve_pow(id, effort);
        let at = HEADER_LEN + 2 + msg.len();
        hello_cell
            .get_mut(at..at + 8)
            .ok_or(WireError::TooLong)?
            .copy_from_slice(&nonce.to_be_bytes());
        Ok(PendingSession {
            id,
            cfg,
            init,
            hello_cell,
        })
    }

    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The Hello cell. A central answers a Hello once (a copy is a replay); a client whose
    /// Hello went unanswered starts a new one.
    pub fn hello_cell(&self) -> &[u8] {
        &self.hello_cell
    }

    /// Opens the session if `welcome` answers this Hello. A Welcome carries no id (its label
    /// is zero: a forwarder of the Hello must not be able to spot its answer), so a client
    /// with several Hellos out tries each; a failed try leaves this one as it was.
    pub fn finish(&self, now: Instant, welcome: &[u8]) -> Result<Session, SessionError> {
        let h = CellHeader::take_from(welcome)?;
        if h.kind != CellKind::WELCOME {
            return Err(CellError::Kind(h.kind).into());
        }
        if Label(h.session.0) != Label::NONE || welcome.len() != self.cfg.cell_size {
            return Err(CellError::UnknownSession.into());
        }
        // Nothing a forwarding node could read beyond the message: header fields zero,
        // padding zero (no covert channel from the central to a downstream or relay).
        let (msg, rest) = handshake_parts(welcome)?;
        if h.epoch != 0 || h.seq != 0 || rest.iter().any(|b| *b != 0) {
            return Err(SessionError::NotCanonical);
        }
        let (payload, keys) = self.init.finish(msg)?;
        let mut r = Reader::new(&payload);
        let peer_window = r.u32()?;
        let peer_stream_window = u64::from(r.u32()?);
        let mut session = Session::new(
            self.id,
            Side::Client,
            self.cfg.clone(),
            keys.initiator_to_responder,
            keys.responder_to_initiator,
            u64::from(peer_window),
            now,
        );
        session.peer_stream_window = peer_stream_window;
        // The central keeps a session half-open until a sealed cell proves the client got
        // the Welcome: send one at once.
        session.confirm_due = true;
        Ok(session)
    }
}

/// The central's answer to a Hello: the session, what the client asked for, and the Welcome
/// cell (kept by the caller and resent if the same Hello arrives again).
pub struct Accepted {
    pub session: Session,
    pub hello: SessionHello,
    pub welcome_cell: Vec<u8>,
}

/// How far a Hello's time may be from the central's, either way: what the central must
/// remember of the Hellos it answered to refuse replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloClock {
    pub unix_secs: u64,
    pub window_secs: u64,
}

impl HelloClock {
    /// Any time passes: for simulations and tests with a virtual clock.
    pub const ANY: HelloClock = HelloClock {
        unix_secs: 0,
        window_secs: u64::MAX,
    };
}

/// Answers a Hello that passed [`check_hello`]: the Noise exchange (the public-key work),
/// and the Hello's time checked against `clock`. The caller refuses ids it has seen.
pub fn accept(
    rng: &mut impl CryptoRng,
    cfg: SessionConfig,
    central: &StaticKeypair,
    now: Instant,
    clock: HelloClock,
    hello_cell: &[u8],
) -> Result<Accepted, SessionError> {
    let ticket = check_hello(&cfg, hello_cell)?;
    let (resp, payload) = noise::respond(
        central,
        &prologue(cfg.cell_size),
        handshake_message(hello_cell)?,
    )?;
    let (hello, peer_stream_window, sent_at) = SessionHello::decode(&payload)?;
    if sent_at.abs_diff(clock.unix_secs) > clock.window_secs {
        return Err(SessionError::Stale);
    }
    let h = CellHeader {
        kind: CellKind::HELLO,
        session: ticket.id,
        epoch: 0,
        seq: 0,
    };
    let mut welcome = (cfg.window_cells as u32).to_be_bytes().to_vec();
    welcome.extend_from_slice(&clamp_u32(cfg.stream_window).to_be_bytes());
    let (msg2, keys) = resp.reply(rng, &welcome)?;
    let welcome_cell = handshake_cell(cfg.cell_size, CellKind::WELCOME, Label::NONE, &msg2)?;
    let peer_window = u64::from(hello.window_cells).min(cfg.window_cells.max(1) * 4);
    let mut session = Session::new(
        h.session,
        Side::Central,
        cfg,
        keys.responder_to_initiator,
        keys.initiator_to_responder,
        peer_window,
        now,
    );
    session.peer_stream_window = peer_stream_window;
    Ok(Accepted {
        session,
        hello,
        welcome_cell,
    })
}
