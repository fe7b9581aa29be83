//! Opening a session: the Noise NK exchange carried in one Hello and one Welcome cell, and
//! the session parameters each side announces in it.

use std::time::Instant;

use rand_core::CryptoRng;

use super::{Session, SessionConfig, SessionError, Side};
use crate::cell::{handshake_cell, handshake_message, CellError, CellHeader, CellKind, SessionId};
use crate::frame::{Frame, Mailbox};
use crate::noise::{self, NkInitiator, StaticKeypair};
use crate::wire::{Reader, WireError, Writer};

/// What a client says when opening a session (sealed to the central in Hello).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHello {
    pub window_cells: u32,
    pub mailboxes: Vec<Mailbox>,
}

/// Handshake payloads: `window u32 | Mailboxes frame | stream_window u32` (Hello) and
/// `window u32 | stream_window u32` (Welcome).
impl SessionHello {
    fn encode(&self, stream_window: u64) -> Result<Vec<u8>, WireError> {
        let f = Frame::Mailboxes {
            boxes: self.mailboxes.clone(),
        };
        let mut buf = vec![0u8; 8 + f.encoded_len()];
        let mut w = Writer::new(&mut buf);
        w.u32(self.window_cells)?;
        f.write_onto(&mut w)?;
        w.u32(clamp_u32(stream_window))?;
        Ok(buf)
    }

    fn decode(b: &[u8]) -> Result<(Self, u64), WireError> {
        let mut r = Reader::new(b);
        let window_cells = r.u32()?;
        let mailboxes = match Frame::take_from(&mut r)? {
            Some(Frame::Mailboxes { boxes }) => boxes,
            _ => return Err(WireError::Invalid("hello without mailboxes")),
        };
        let stream_window = u64::from(r.u32()?);
        Ok((
            SessionHello {
                window_cells,
                mailboxes,
            },
            stream_window,
        ))
    }
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn prologue(session: SessionId, cell_size: usize) -> Vec<u8> {
    let mut p = b"braid/1 outer".to_vec();
    p.extend_from_slice(&session.0);
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
    /// Starts a session with the central whose static key is `central_key`.
    pub fn start(
        rng: &mut impl CryptoRng,
        cfg: SessionConfig,
        central_key: &[u8; 32],
        hello: &SessionHello,
    ) -> Result<Self, SessionError> {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let id = SessionId(id);
        let (init, msg) = noise::initiate(
            rng,
            central_key,
            &prologue(id, cfg.cell_size),
            &hello.encode(cfg.stream_window)?,
        )?;
        let hello_cell = handshake_cell(cfg.cell_size, CellKind::HELLO, id, &msg)?;
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

    /// The Hello cell; resend it (same bytes) until a Welcome arrives.
    pub fn hello_cell(&self) -> &[u8] {
        &self.hello_cell
    }

    pub fn finish(self, now: Instant, welcome: &[u8]) -> Result<Session, SessionError> {
        let h = CellHeader::take_from(welcome)?;
        if h.kind != CellKind::WELCOME {
            return Err(CellError::Kind(h.kind).into());
        }
        if h.session != self.id || welcome.len() != self.cfg.cell_size {
            return Err(CellError::UnknownSession.into());
        }
        let (payload, keys) = self.init.finish(handshake_message(welcome)?)?;
        let mut r = Reader::new(&payload);
        let peer_window = r.u32()?;
        let peer_stream_window = u64::from(r.u32()?);
        let mut session = Session::new(
            self.id,
            Side::Client,
            self.cfg,
            keys.initiator_to_responder,
            keys.responder_to_initiator,
            u64::from(peer_window),
            now,
        );
        session.peer_stream_window = peer_stream_window;
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

pub fn accept(
    rng: &mut impl CryptoRng,
    cfg: SessionConfig,
    central: &StaticKeypair,
    now: Instant,
    hello_cell: &[u8],
) -> Result<Accepted, SessionError> {
    if hello_cell.len() != cfg.cell_size {
        return Err(CellError::Size {
            got: hello_cell.len(),
            expected: cfg.cell_size,
        }
        .into());
    }
    let h = CellHeader::take_from(hello_cell)?;
    if h.kind != CellKind::HELLO {
        return Err(CellError::Kind(h.kind).into());
    }
    let (resp, payload) = noise::respond(
        central,
        &prologue(h.session, cfg.cell_size),
        handshake_message(hello_cell)?,
    )?;
    let (hello, peer_stream_window) = SessionHello::decode(&payload)?;
    let mut welcome = (cfg.window_cells as u32).to_be_bytes().to_vec();
    welcome.extend_from_slice(&clamp_u32(cfg.stream_window).to_be_bytes());
    let (msg2, keys) = resp.reply(rng, &welcome)?;
    let welcome_cell = handshake_cell(cfg.cell_size, CellKind::WELCOME, h.session, &msg2)?;
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
