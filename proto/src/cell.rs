//! Fixed-size cells and the outer (client ⇄ central) sealing layer.
//!
//! ```text
//! offset  size  field
//! 0       1     kind      CellKind; masked (header protection) in sealed cells
//! 1       1     version   2
//! 2       16    label     what forwarders route by (see below); never the session id
//! 18      2     epoch     key epoch (rekey counter) for sealed kinds; masked
//! 20      8     seq       sequence number within (direction, kind); masked
//! 28      ..    body      sealed: ciphertext || 16-byte tag; handshake: u16 len || message
//! ```
//! The seal's associated data is the same 28 bytes with the real [`SessionId`] in place of
//! the label and nothing masked: the id never travels, yet a cell opens only in its own
//! session. The nonce is `direction | kind | epoch | seq`: a (key, nonce) pair can repeat
//! only if a sequence number does, and senders never reuse one. Padding lives inside the
//! seal.
//!
//! **Labels** are per hop, like Tor's circuit ids. Toward the central each client path
//! (one upstream connection) carries its own label `HMAC(label key, index)`, a fresh index
//! after every reconnect, so two upstreams (or one upstream before and after the client
//! moved) see unrelated labels; only the central maps them to a session. Toward the
//! client the label is zero: the relay mailbox, fresh per session and rewritten between
//! downstream and relay, names the session. A Hello's label is its session id (a hash of
//! its ephemeral key, which the Hello shows anyway); a Welcome's is zero (the client tries
//! it against each Hello it has out), so nothing links a Welcome to its Hello.
//!
//! **Header protection**, as QUIC's: kind, epoch and seq of a sealed cell are XORed with
//! `HMAC(header key, first 16 ciphertext bytes)`, so forwarders cannot read sequence
//! numbers (cell counts) or tell data from acknowledgements.

use std::fmt;

use crate::aead::{AeadAlgorithm, CellAead, RingAead, NONCE_LEN, TAG_LEN};
use crate::noise::epoch_key;
use crate::open_enum::open_enum;
use crate::wire::{Reader, WireError, Writer};

pub const HEADER_LEN: usize = 28;
pub const VERSION: u8 = 2;
/// Where the label sits in a cell.
pub const LABEL_AT: std::ops::Range<usize> = 2..18;
/// Ciphertext bytes the header-protection mask is computed from (the first of the body).
const SAMPLE_LEN: usize = 16;
pub const MIN_CELL_SIZE: usize = 1024;
pub const MAX_CELL_SIZE: usize = 16 * 1024;

open_enum! {
    /// Cell kinds. Open so that an unknown value is a policy decision, not a parse failure.
    pub struct CellKind(u8) {
        /// Client → central: Noise NK message 1 opening a session.
        HELLO = 1 => "Hello",
        /// Central → client: Noise NK message 2.
        WELCOME = 2 => "Welcome",
        /// Sealed, reliable, ordered by `seq`.
        DATA = 3 => "Data",
        /// Sealed acknowledgement/credit only; never retransmitted, never acknowledged.
        ACK = 4 => "Ack",
    }
    unknown = "Unknown({})";
    debug = display;
}

impl CellKind {
    pub fn is_sealed(self) -> bool {
        self == Self::DATA || self == Self::ACK
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a forwarding node routes a cell by on one hop (see the module notes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Label(pub [u8; 16]);

impl Label {
    pub const NONE: Label = Label([0; 16]);
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl From<SessionId> for Label {
    fn from(id: SessionId) -> Self {
        Label(id.0)
    }
}

/// A cell's label (what forwarders and the central route by).
pub fn peek_label(cell: &[u8]) -> Option<Label> {
    cell.get(LABEL_AT)
        .and_then(|b| b.try_into().ok())
        .map(Label)
}

/// Puts `label` on a cell for its next hop. The label is outside the seal, so a sealed cell
/// can be relabelled (a retransmission on another path, a hop's rewrite).
pub fn set_label(cell: &mut [u8], label: Label) {
    if let Some(b) = cell.get_mut(LABEL_AT) {
        b.copy_from_slice(&label.0);
    }
}

/// The kind byte as it travels: true for Hello and Welcome, masked for sealed cells.
pub fn clear_kind(cell: &[u8]) -> Option<CellKind> {
    cell.first().map(|k| CellKind(*k))
}

/// Which way a cell travels; part of every nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    ClientToCentral = 0,
    CentralToClient = 1,
}

/// A cell's header fields. As the seal's associated data `session` is the real session id;
/// read off the wire (`take_from`) it is the label, and a sealed cell's other fields are
/// masked until [`DirectionKeys::unprotect`] removes the mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellHeader {
    pub kind: CellKind,
    pub session: SessionId,
    pub epoch: u16,
    pub seq: u64,
}

impl CellHeader {
    pub fn write_onto(&self, out: &mut [u8]) -> Result<(), WireError> {
        let mut w = Writer::new(out);
        w.u8(self.kind.0)?;
        w.u8(VERSION)?;
        w.bytes(&self.session.0)?;
        w.u16(self.epoch)?;
        w.u64(self.seq)
    }

    pub fn take_from(cell: &[u8]) -> Result<Self, CellError> {
        let mut r = Reader::new(cell);
        let kind = CellKind(r.u8()?);
        if r.u8()? != VERSION {
            return Err(CellError::Version);
        }
        Ok(CellHeader {
            kind,
            session: SessionId(r.array()?),
            epoch: r.u16()?,
            seq: r.u64()?,
        })
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum CellError {
    #[error("cell has the wrong size ({got}, expected {expected})")]
    Size { got: usize, expected: usize },
    #[error("malformed cell: {0}")]
    Wire(#[from] WireError),
    #[error("unsupported cell version")]
    Version,
    #[error("unexpected cell kind {0:?}")]
    Kind(CellKind),
    #[error("cell failed authentication")]
    Auth,
    #[error("cell epoch does not match its sequence number")]
    Epoch,
    #[error("replayed or duplicate cell")]
    Replay,
    #[error("cell outside the receive window")]
    OutOfWindow,
    #[error("cell for an unknown session")]
    UnknownSession,
}

/// Validates a cell size from configuration.
pub fn check_cell_size(size: usize) -> bool {
    (MIN_CELL_SIZE..=MAX_CELL_SIZE).contains(&size)
}

/// Room for plaintext in a sealed cell of `cell_size` bytes.
pub fn sealed_capacity(cell_size: usize) -> usize {
    cell_size - HEADER_LEN - TAG_LEN
}

/// Room for a handshake message in a Hello/Welcome cell.
pub fn handshake_capacity(cell_size: usize) -> usize {
    cell_size - HEADER_LEN - 2
}

/// Builds a Hello or Welcome cell around a handshake message.
pub fn handshake_cell(
    cell_size: usize,
    kind: CellKind,
    label: Label,
    msg: &[u8],
) -> Result<Vec<u8>, CellError> {
    let mut cell = vec![0u8; cell_size];
    CellHeader {
        kind,
        session: SessionId(label.0),
        epoch: 0,
        seq: 0,
    }
    .write_onto(&mut cell)?;
    let len = u16::try_from(msg.len()).map_err(|_| WireError::TooLong)?;
    let mut w = Writer::new(&mut cell[HEADER_LEN..]);
    w.u16(len)?;
    w.bytes(msg)?;
    Ok(cell)
}

/// The handshake message inside a Hello/Welcome cell.
pub fn handshake_message(cell: &[u8]) -> Result<&[u8], CellError> {
    let mut r = Reader::new(cell.get(HEADER_LEN..).ok_or(WireError::Truncated)?);
    let len = usize::from(r.u16()?);
    Ok(r.bytes(len)?)
}

/// Cells per key before the sender moves to the next epoch. 2^20 keeps every AES-GCM key
/// far below its usage limit (2^23 full cells is the conservative bound).
pub const DEFAULT_EPOCH_CELLS: u64 = 1 << 20;

/// Sees every (key, nonce) pair a [`DirectionKeys`] seals with: the nonce-reuse audit.
pub type SealAudit = Box<dyn FnMut(&[u8; 32], &[u8; NONCE_LEN]) + Send>;

/// The keys of one direction of a session, with the epoch schedule.
pub struct DirectionKeys {
    audit: Option<SealAudit>,
    base: [u8; 32],
    /// Header protection: the mask over kind, epoch and seq.
    header_key: ring::hmac::Key,
    alg: AeadAlgorithm,
    dir: Direction,
    epoch_cells: u64,
    /// Cached AEAD for the newest epoch used, and one before it for stragglers.
    current: Option<(u16, RingAead)>,
    previous: Option<(u16, RingAead)>,
}

impl DirectionKeys {
    pub fn new(base: [u8; 32], alg: AeadAlgorithm, dir: Direction, epoch_cells: u64) -> Self {
        let header_key = zeroize::Zeroizing::new(crate::noise::hmac256(
            &base,
            &[b"braid header protection", &[dir as u8]],
        ));
        DirectionKeys {
            audit: None,
            header_key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &header_key[..]),
            base,
            alg,
            dir,
            epoch_cells: epoch_cells.max(1),
            current: None,
            previous: None,
        }
    }

    /// Installs an audit that sees every (key, nonce) pair sealed from now on.
    pub fn set_seal_audit(&mut self, audit: SealAudit) {
        self.audit = Some(audit);
    }

    pub fn epoch_for(&self, seq: u64) -> Result<u16, CellError> {
        u16::try_from(seq / self.epoch_cells).map_err(|_| CellError::Epoch)
    }

    /// The AEAD of `epoch`, deriving it on first use. The two newest epochs are cached, so
    /// cells sealed just before a rekey still open without deriving again.
    fn aead(&mut self, epoch: u16) -> &RingAead {
        let holds = |slot: &Option<(u16, RingAead)>| matches!(slot, Some((e, _)) if *e == epoch);
        if !holds(&self.current) && !holds(&self.previous) {
            let key = epoch_key(&self.base, &[self.dir as u8], u32::from(epoch));
            let fresh = Some((epoch, RingAead::new(self.alg, &key)));
            if self.current.as_ref().is_some_and(|(e, _)| *e > epoch) {
                self.previous = fresh;
            } else {
                self.previous = self.current.take();
                self.current = fresh;
            }
        }
        match (&self.current, &self.previous) {
            (Some((e, a)), _) if *e == epoch => a,
            (_, Some((e, a))) if *e == epoch => a,
            _ => unreachable!("the epoch's key was installed just above"),
        }
    }

    fn nonce(&self, kind: CellKind, epoch: u16, seq: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[0] = self.dir as u8;
        n[1] = kind.0;
        n[2..4].copy_from_slice(&epoch.to_be_bytes());
        n[4..].copy_from_slice(&seq.to_be_bytes());
        n
    }

    /// The mask over a sealed cell's kind (1 byte) and epoch and seq (10 bytes), from the
    /// first ciphertext bytes.
    fn header_mask(&self, cell: &[u8]) -> Result<[u8; 11], CellError> {
        let sample = cell
            .get(HEADER_LEN..HEADER_LEN + SAMPLE_LEN)
            .ok_or(WireError::Truncated)?;
        let tag = ring::hmac::sign(&self.header_key, sample);
        let mut mask = [0u8; 11];
        mask.copy_from_slice(&tag.as_ref()[..11]);
        Ok(mask)
    }

    /// XORs the header mask over kind, epoch and seq: protects and unprotects alike.
    fn toggle_mask(&self, cell: &mut [u8]) -> Result<(), CellError> {
        let mask = self.header_mask(cell)?;
        cell[0] ^= mask[0];
        for (b, m) in cell[LABEL_AT.end..HEADER_LEN].iter_mut().zip(&mask[1..]) {
            *b ^= m;
        }
        Ok(())
    }

    /// Seals `plaintext` (at most `sealed_capacity` bytes, zero-padded) into a new cell of
    /// `session`, header protected, with no label yet ([`set_label`] puts one on per path).
    pub fn seal(
        &mut self,
        cell_size: usize,
        kind: CellKind,
        session: SessionId,
        seq: u64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CellError> {
        let epoch = self.epoch_for(seq)?;
        let cap = sealed_capacity(cell_size);
        if plaintext.len() > cap {
            return Err(WireError::NoSpace.into());
        }
        let header = CellHeader {
            kind,
            session,
            epoch,
            seq,
        };
        let mut aad = [0u8; HEADER_LEN];
        header.write_onto(&mut aad)?;
        let mut cell = vec![0u8; cell_size];
        CellHeader {
            session: SessionId(Label::NONE.0),
            ..header
        }
        .write_onto(&mut cell)?;
        let body = &mut cell[HEADER_LEN..];
        body[..plaintext.len()].copy_from_slice(plaintext);
        let nonce = self.nonce(kind, epoch, seq);
        if let Some(audit) = self.audit.as_mut() {
            let key = epoch_key(&self.base, &[self.dir as u8], u32::from(epoch));
            audit(&key, &nonce);
        }
        let (ct, tag_out) = body.split_at_mut(cap);
        let tag = self.aead(epoch).seal(nonce, &aad, ct);
        tag_out.copy_from_slice(&tag);
        self.toggle_mask(&mut cell)?;
        Ok(cell)
    }

    /// Removes header protection in place and returns the header, with `session` (the id
    /// of the session the caller routed the cell to) in place of the label. A cell of
    /// another session yields garbage fields, and its seal fails later.
    pub fn unprotect(&self, session: SessionId, cell: &mut [u8]) -> Result<CellHeader, CellError> {
        self.toggle_mask(cell)?;
        let header = CellHeader::take_from(cell)?;
        Ok(CellHeader { session, ..header })
    }

    /// Opens a sealed cell in place once [`Self::unprotect`] gave its header; returns the
    /// padded plaintext.
    pub fn open_unprotected<'c>(
        &mut self,
        cell_size: usize,
        header: &CellHeader,
        cell: &'c mut [u8],
    ) -> Result<&'c [u8], CellError> {
        if cell.len() != cell_size {
            return Err(CellError::Size {
                got: cell.len(),
                expected: cell_size,
            });
        }
        if !header.kind.is_sealed() {
            return Err(CellError::Kind(header.kind));
        }
        if self.epoch_for(header.seq)? != header.epoch {
            return Err(CellError::Epoch);
        }
        let mut aad = [0u8; HEADER_LEN];
        header.write_onto(&mut aad)?;
        let nonce = self.nonce(header.kind, header.epoch, header.seq);
        let cap = sealed_capacity(cell_size);
        let (ct, tag) = cell[HEADER_LEN..].split_at_mut(cap);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.aead(header.epoch)
            .open(nonce, &aad, ct, &t)
            .map_err(|_| CellError::Auth)?;
        Ok(&*ct)
    }

    /// Unprotects and opens a sealed cell of `session` in place; returns its header and the
    /// padded plaintext.
    pub fn open<'c>(
        &mut self,
        cell_size: usize,
        session: SessionId,
        cell: &'c mut [u8],
    ) -> Result<(CellHeader, &'c [u8]), CellError> {
        if cell.len() != cell_size {
            return Err(CellError::Size {
                got: cell.len(),
                expected: cell_size,
            });
        }
        let header = self.unprotect(session, cell)?;
        let plain = self.open_unprotected(cell_size, &header, cell)?;
        Ok((header, plain))
    }
}

/// Sliding replay window over sequence numbers (RFC 4303 style, 1024 wide).
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest sequence number accepted, plus one (0 = nothing yet).
    top: u64,
    bits: [u64; Self::WORDS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; Self::WORDS],
        }
    }
}

impl ReplayWindow {
    const WORDS: usize = 16;
    pub const WIDTH: u64 = (Self::WORDS * 64) as u64;

    fn bit(&self, seq: u64) -> bool {
        let i = (seq % Self::WIDTH) as usize;
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, seq: u64, v: bool) {
        let i = (seq % Self::WIDTH) as usize;
        if v {
            self.bits[i / 64] |= 1 << (i % 64);
        } else {
            self.bits[i / 64] &= !(1 << (i % 64));
        }
    }

    /// Would `seq` be accepted? (Check before the AEAD; commit only after it.)
    pub fn check(&self, seq: u64) -> Result<(), CellError> {
        // `top` is one past the highest seen, so the last number could never be recorded.
        if seq == u64::MAX {
            return Err(CellError::OutOfWindow);
        }
        if seq >= self.top {
            return Ok(());
        }
        if self.top - seq > Self::WIDTH {
            return Err(CellError::OutOfWindow);
        }
        if self.bit(seq) {
            Err(CellError::Replay)
        } else {
            Ok(())
        }
    }

    /// Records `seq` as seen. Call only after the cell authenticated.
    pub fn commit(&mut self, seq: u64) {
        if seq == u64::MAX {
            return; // refused by `check`
        }
        if seq >= self.top {
            let advance = seq + 1 - self.top;
            if advance >= Self::WIDTH {
                self.bits = [0; Self::WORDS];
            } else {
                for s in self.top..=seq {
                    self.set(s, false);
                }
            }
            self.top = seq + 1;
        }
        self.set(seq, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: Direction) -> DirectionKeys {
        DirectionKeys::new([9; 32], AeadAlgorithm::Aes256Gcm, dir, 4)
    }

    #[test]
    fn seal_open_round_trip_across_epochs() {
        let mut tx = keys(Direction::ClientToCentral);
        let mut rx = keys(Direction::ClientToCentral);
        let sid = SessionId([3; 16]);
        for seq in 0..20 {
            let mut cell = tx.seal(1024, CellKind::DATA, sid, seq, b"payload").unwrap();
            let (h, p) = rx.open(1024, sid, &mut cell).unwrap();
            assert_eq!(h.seq, seq);
            assert_eq!(h.epoch, (seq / 4) as u16);
            assert_eq!(&p[..7], b"payload");
            assert!(p[7..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn header_is_bound_but_the_label_is_free() {
        let mut tx = keys(Direction::ClientToCentral);
        let sid = SessionId([3; 16]);
        let cell = tx.seal(1024, CellKind::DATA, sid, 5, b"x").unwrap();
        // Any protected header byte changed: kind, version, epoch, sequence.
        for i in [0usize, 1, 19, 27] {
            let mut c = cell.clone();
            c[i] ^= 1;
            assert!(
                keys(Direction::ClientToCentral)
                    .open(1024, sid, &mut c)
                    .is_err(),
                "{i}"
            );
        }
        // Relabelled (another path, another hop), it still opens in its session...
        let mut c = cell.clone();
        set_label(&mut c, Label([0xaa; 16]));
        let (h, _) = keys(Direction::ClientToCentral)
            .open(1024, sid, &mut c)
            .unwrap();
        assert_eq!((h.kind, h.seq, h.session), (CellKind::DATA, 5, sid));
        // ...and in no other: the session id is bound though it never travels.
        let mut c = cell.clone();
        assert_eq!(
            keys(Direction::ClientToCentral)
                .open(1024, SessionId([4; 16]), &mut c)
                .err(),
            Some(CellError::Auth)
        );
        assert!(!cell.windows(16).any(|w| w == sid.0));
        // The other direction's keys don't open it.
        let mut c = cell.clone();
        assert!(keys(Direction::CentralToClient)
            .open(1024, sid, &mut c)
            .is_err());
        let mut c = cell.clone();
        c.truncate(1000);
        assert!(matches!(
            keys(Direction::ClientToCentral).open(1024, sid, &mut c),
            Err(CellError::Size { .. })
        ));
    }

    #[test]
    fn kind_epoch_and_seq_are_unreadable_in_transit() {
        let mut tx = keys(Direction::ClientToCentral);
        let sid = SessionId([3; 16]);
        let mut kinds = std::collections::HashSet::new();
        let mut seqs = std::collections::HashSet::new();
        for seq in 0..64u64 {
            let cell = tx.seal(1024, CellKind::DATA, sid, seq, b"same").unwrap();
            let wire = CellHeader::take_from(&cell).unwrap();
            assert_ne!(wire.seq, seq);
            kinds.insert(wire.kind);
            seqs.insert(wire.seq);
            let mut c = cell.clone();
            let h = keys(Direction::ClientToCentral)
                .unprotect(sid, &mut c)
                .unwrap();
            assert_eq!(
                (h.kind, h.epoch, h.seq),
                (CellKind::DATA, (seq / 4) as u16, seq)
            );
        }
        // The same kind shows as many kinds; consecutive numbers as unrelated ones.
        assert!(kinds.len() > 32, "{}", kinds.len());
        assert_eq!(seqs.len(), 64);
    }

    #[test]
    fn replay_window() {
        let mut w = ReplayWindow::default();
        for s in [0u64, 2, 1, 5] {
            w.check(s).unwrap();
            w.commit(s);
        }
        assert_eq!(w.check(2), Err(CellError::Replay));
        w.check(3).unwrap();
        w.commit(5000);
        assert_eq!(w.check(10), Err(CellError::OutOfWindow));
        w.check(4999).unwrap();
        assert_eq!(w.check(5000), Err(CellError::Replay));
        // The last sequence number is refused rather than wrapping the window (fuzz finding).
        assert_eq!(w.check(u64::MAX), Err(CellError::OutOfWindow));
        w.commit(u64::MAX);
        assert_eq!(w.check(5000), Err(CellError::Replay));
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(kind in any::<u8>(), sid in any::<[u8; 16]>(), epoch in any::<u16>(), seq in any::<u64>()) {
            let h = CellHeader { kind: CellKind(kind), session: SessionId(sid), epoch, seq };
            let mut buf = [0u8; HEADER_LEN];
            h.write_onto(&mut buf).unwrap();
            prop_assert_eq!(CellHeader::take_from(&buf).unwrap(), h);
        }

        #[test]
        fn sealed_cells_round_trip(size in MIN_CELL_SIZE..=MAX_CELL_SIZE, seq in 0u64..1 << 17,
                                   data in proptest::collection::vec(any::<u8>(), 0..1000)) {
            let mut tx = keys(Direction::CentralToClient);
            let mut rx = keys(Direction::CentralToClient);
            let mut cell = tx.seal(size, CellKind::DATA, SessionId([1; 16]), seq, &data).unwrap();
            prop_assert_eq!(cell.len(), size);
            let (h, p) = rx.open(size, SessionId([1; 16]), &mut cell).unwrap();
            prop_assert_eq!(h.seq, seq);
            prop_assert_eq!(&p[..data.len()], &data[..]);
        }

        #[test]
        fn garbage_cells_are_refused_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let mut b = bytes.clone();
            prop_assert!(keys(Direction::ClientToCentral).open(1024, SessionId([0; 16]), &mut b).is_err());
            let _ = CellHeader::take_from(&bytes);
            let _ = handshake_message(&bytes);
        }
    }
}
