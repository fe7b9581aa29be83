//! User credentials: who may use a network, proven to the first hop only.
//!
//! The operator holds an Ed25519 key. It issues each user a [`Credential`]: the user's own
//! public key, a name, limits and a validity window, signed by the operator key. Nodes
//! verify credentials offline against the operator's public key (from the directory); they
//! keep no user database, only a revocation list of credential ids.
//!
//! A credential is not a bearer token. The client proves possession of the user key by
//! signing a value bound to the one connection it is sent on (the TLS exporter of that QUIC
//! connection, [`PROOF_EXPORTER_LABEL`]), so a node that sees the proof cannot replay it on
//! a connection of its own: the exporter there differs. Only first hops (upstreams and
//! relays, which see the client's address anyway) ever receive it; the central, the
//! downstreams and the gateways never do.
//!
//! On the wire, once per connection, on the first bidirectional stream the client opens:
//! `len u16 · credential · proof[64]`, answered by one byte, `0` or a [`Refusal`] code.

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::wire::{Reader, WireError};

/// Bytes of an Ed25519 public key, of a secret seed, of a signature.
pub const KEY_LEN: usize = 32;
pub const SIG_LEN: usize = 64;
/// Bytes of a credential id (random, the handle revocations name).
pub const ID_LEN: usize = 16;
/// Longest user name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Longest encoded credential (with its signature).
pub const MAX_CREDENTIAL_LEN: usize =
    4 + 1 + ID_LEN + 1 + MAX_NAME_LEN + KEY_LEN + 8 + 8 + LIMITS_LEN + SIG_LEN;
/// Longest auth message a node reads.
pub const MAX_AUTH_LEN: usize = 2 + MAX_CREDENTIAL_LEN + SIG_LEN;
/// The QUIC application close code of a refused client: this plus the [`Refusal`] code.
pub const REFUSAL_CLOSE_BASE: u32 = 0x100;
/// The label of the TLS exporter value a proof signs.
pub const PROOF_EXPORTER_LABEL: &[u8] = b"braid user proof v1";

const MAGIC: &[u8; 4] = b"BRDC";
const VERSION: u8 = 1;
const LIMITS_LEN: usize = 4 + 4 + 4 + 8;
const CREDENTIAL_CONTEXT: &[u8] = b"braid credential v1\0";
const PROOF_CONTEXT: &[u8] = b"braid user proof v1\0";
const DIRECTORY_CONTEXT: &[u8] = b"braid directory v1\0";

/// What a user may do; zero means no limit. Enforced at the first hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    /// Bytes per second over the whole network, KiB (each first hop takes its share).
    pub rate_kib: u32,
    /// Concurrent sessions (client connections to one first hop).
    pub max_sessions: u32,
    /// Concurrent streams.
    pub max_streams: u32,
    /// Bytes per validity window, MiB (renewal starts a new window).
    pub quota_mib: u64,
}

/// A user's credential, as the operator signed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: [u8; ID_LEN],
    pub name: String,
    pub user_key: [u8; KEY_LEN],
    /// Unix seconds, inclusive.
    pub not_before: u64,
    /// Unix seconds, exclusive.
    pub not_after: u64,
    pub limits: UserLimits,
}

/// Why a first hop refused a client. One code on the wire, one line in the client's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[repr(u8)]
pub enum Refusal {
    #[error("no credential")]
    Missing = 1,
    #[error("malformed credential")]
    Malformed = 2,
    #[error("credential not signed by this network's operator")]
    WrongOperator = 3,
    #[error("credential not yet valid")]
    NotYetValid = 4,
    #[error("credential expired")]
    Expired = 5,
    #[error("credential revoked")]
    Revoked = 6,
    #[error("proof of possession failed")]
    BadProof = 7,
    #[error("user over its session limit")]
    TooManySessions = 8,
    #[error("source address not allowed")]
    SourceDenied = 9,
    #[error("user quota spent")]
    QuotaSpent = 10,
}

impl Refusal {
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The refusal a code names; unknown codes read as malformed (a newer node's reason).
    pub fn from_code(code: u8) -> Refusal {
        [
            Refusal::Missing,
            Refusal::Malformed,
            Refusal::WrongOperator,
            Refusal::NotYetValid,
            Refusal::Expired,
            Refusal::Revoked,
            Refusal::BadProof,
            Refusal::TooManySessions,
            Refusal::SourceDenied,
            Refusal::QuotaSpent,
        ]
        .into_iter()
        .find(|r| r.code() == code)
        .unwrap_or(Refusal::Malformed)
    }
}

impl From<WireError> for Refusal {
    fn from(_: WireError) -> Self {
        Refusal::Malformed
    }
}

/// A secret Ed25519 key (the operator's or a user's), from its 32-byte seed.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: zeroize::Zeroizing<[u8; KEY_LEN]>,
}

impl SigningKey {
    pub fn generate(rng: &mut impl rand_core::CryptoRng) -> SigningKey {
        let mut seed = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut seed[..]);
        SigningKey::from_seed(&seed)
    }

    pub fn from_seed(seed: &[u8; KEY_LEN]) -> SigningKey {
        SigningKey {
            // Any 32 bytes are a valid Ed25519 seed.
            pair: match Ed25519KeyPair::from_seed_unchecked(seed) {
                Ok(p) => p,
                Err(_) => unreachable!("every 32-byte seed is an Ed25519 key"),
            },
            seed: zeroize::Zeroizing::new(*seed),
        }
    }

    pub fn seed(&self) -> &[u8; KEY_LEN] {
        &self.seed
    }

    pub fn public(&self) -> [u8; KEY_LEN] {
        let mut k = [0u8; KEY_LEN];
        k.copy_from_slice(self.pair.public_key().as_ref());
        k
    }

    pub(crate) fn sign(&self, context: &[u8], msg: &[u8]) -> [u8; SIG_LEN] {
        let mut m = Vec::with_capacity(context.len() + msg.len());
        m.extend_from_slice(context);
        m.extend_from_slice(msg);
        let mut s = [0u8; SIG_LEN];
        s.copy_from_slice(self.pair.sign(&m).as_ref());
        s
    }
}

pub(crate) fn verify(key: &[u8; KEY_LEN], context: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let mut m = Vec::with_capacity(context.len() + msg.len());
    m.extend_from_slice(context);
    m.extend_from_slice(msg);
    UnparsedPublicKey::new(&signature::ED25519, key)
        .verify(&m, sig)
        .is_ok()
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Why a credential could not be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("user name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ - @")]
    BadName(String),
    #[error("the validity window is empty")]
    EmptyWindow,
}

impl Credential {
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_CREDENTIAL_LEN);
        b.extend_from_slice(MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&self.id);
        b.push(self.name.len() as u8);
        b.extend_from_slice(self.name.as_bytes());
        b.extend_from_slice(&self.user_key);
        b.extend_from_slice(&self.not_before.to_be_bytes());
        b.extend_from_slice(&self.not_after.to_be_bytes());
        let l = &self.limits;
        b.extend_from_slice(&l.rate_kib.to_be_bytes());
        b.extend_from_slice(&l.max_sessions.to_be_bytes());
        b.extend_from_slice(&l.max_streams.to_be_bytes());
        b.extend_from_slice(&l.quota_mib.to_be_bytes());
        b
    }

    /// The signed encoding the operator hands out.
    pub fn issue(&self, operator: &SigningKey) -> Result<Vec<u8>, IssueError> {
        if !name_ok(&self.name) {
            return Err(IssueError::BadName(self.name.clone()));
        }
        if self.not_after <= self.not_before {
            return Err(IssueError::EmptyWindow);
        }
        let mut b = self.body();
        let sig = operator.sign(CREDENTIAL_CONTEXT, &b);
        b.extend_from_slice(&sig);
        Ok(b)
    }

    /// Parses a signed credential without checking its signature or dates (for tools that
    /// show one; nodes use [`Credential::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<(Credential, usize), Refusal> {
        let mut r = Reader::new(bytes);
        if r.bytes(4)? != MAGIC || r.u8()? != VERSION {
            return Err(Refusal::Malformed);
        }
        let id = r.array()?;
        let n = usize::from(r.u8()?);
        let name = std::str::from_utf8(r.bytes(n)?).map_err(|_| Refusal::Malformed)?;
        if !name_ok(name) {
            return Err(Refusal::Malformed);
        }
        let c = Credential {
            id,
            name: name.to_string(),
            user_key: r.array()?,
            not_before: r.u64()?,
            not_after: r.u64()?,
            limits: UserLimits {
                rate_kib: r.u32()?,
                max_sessions: r.u32()?,
                max_streams: r.u32()?,
                quota_mib: r.u64()?,
            },
        };
        let body_len = r.position();
        let _sig = r.bytes(SIG_LEN)?;
        if r.remaining() != 0 {
            return Err(Refusal::Malformed);
        }
        Ok((c, body_len))
    }

    /// Checks a signed credential against the operator's key, the clock (`now`, Unix
    /// seconds) and the revocation list.
    pub fn verify(
        bytes: &[u8],
        operator: &[u8; KEY_LEN],
        now: u64,
        revoked: impl Fn(&[u8; ID_LEN]) -> bool,
    ) -> Result<Credential, Refusal> {
        let (c, body_len) = Credential::parse(bytes)?;
        let (body, sig) = bytes.split_at(body_len);
        if !verify(operator, CREDENTIAL_CONTEXT, body, sig) {
            return Err(Refusal::WrongOperator);
        }
        if now < c.not_before {
            return Err(Refusal::NotYetValid);
        }
        if now >= c.not_after {
            return Err(Refusal::Expired);
        }
        if revoked(&c.id) {
            return Err(Refusal::Revoked);
        }
        Ok(c)
    }

    /// Checks the client's proof that it holds this credential's user key, for the
    /// connection whose exporter value is `binding`.
    pub fn check_proof(&self, binding: &[u8], proof: &[u8; SIG_LEN]) -> Result<(), Refusal> {
        if verify(&self.user_key, PROOF_CONTEXT, binding, proof) {
            Ok(())
        } else {
            Err(Refusal::BadProof)
        }
    }
}

/// The operator's signature over a directory's canonical body (built by `braid-config`).
pub fn sign_directory(operator: &SigningKey, body: &[u8]) -> [u8; SIG_LEN] {
    operator.sign(DIRECTORY_CONTEXT, body)
}

/// Whether `sig` is the operator's signature over a directory body.
pub fn directory_signed_by(operator: &[u8; KEY_LEN], body: &[u8], sig: &[u8; SIG_LEN]) -> bool {
    verify(operator, DIRECTORY_CONTEXT, body, sig)
}

/// The client's proof of possession for the connection whose exporter value is `binding`.
pub fn prove(user: &SigningKey, binding: &[u8]) -> [u8; SIG_LEN] {
    user.sign(PROOF_CONTEXT, binding)
}

/// The auth message: `len u16 · credential · proof`.
pub fn auth_message(credential: &[u8], proof: &[u8; SIG_LEN]) -> Vec<u8> {
    let mut m = Vec::with_capacity(2 + credential.len() + SIG_LEN);
    m.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    m.extend_from_slice(credential);
    m.extend_from_slice(proof);
    m
}

/// Splits an auth message into the credential and the proof.
pub fn parse_auth_message(m: &[u8]) -> Result<(&[u8], [u8; SIG_LEN]), Refusal> {
    let mut r = Reader::new(m);
    let n = usize::from(r.u16()?);
    if n > MAX_CREDENTIAL_LEN {
        return Err(Refusal::Malformed);
    }
    let cred = r.bytes(n)?;
    let proof = r.array()?;
    if r.remaining() != 0 {
        return Err(Refusal::Malformed);
    }
    Ok((cred, proof))
}

/// A user's limits as the central sees them, with nothing of who the user is: the operator
/// signs only the stream limit, the rate and a validity end rounded up to a whole UTC day,
/// so every user with the same limits whose credential ends on the same day carries the
/// same pass, byte for byte (Ed25519 signatures are deterministic). The client puts it in
/// its session Hello (sealed to the central). The central caps the session's concurrent
/// streams by it (first hops cannot count streams: they never see inside the cells), and
/// paces what it sends the session at the rate, so the relays that enforce the rate find
/// nothing over it to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitsPass {
    pub max_streams: u32,
    /// KiB per second, each way; 0: none.
    pub rate_kib: u32,
    /// Unix seconds, exclusive; a multiple of [`LimitsPass::DAY`].
    pub not_after: u64,
}

const PASS_MAGIC: &[u8; 4] = b"BRDP";
const PASS_CONTEXT: &[u8] = b"braid limits pass v1\0";

/// Why a limits pass was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PassError {
    #[error("malformed limits pass")]
    Malformed,
    #[error("limits pass not signed by this network's operator")]
    WrongOperator,
    #[error("limits pass expired")]
    Expired,
}

impl LimitsPass {
    /// The rounding of a pass's validity end.
    pub const DAY: u64 = 86_400;
    /// Bytes of an encoded pass.
    pub const LEN: usize = 4 + 1 + 4 + 4 + 8 + SIG_LEN;

    /// The pass for a credential: its stream limit, valid to the end of the UTC day its
    /// validity ends in.
    pub fn for_credential(c: &Credential) -> LimitsPass {
        LimitsPass {
            max_streams: c.limits.max_streams,
            rate_kib: c.limits.rate_kib,
            not_after: c.not_after.div_ceil(Self::DAY).saturating_mul(Self::DAY),
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::LEN);
        b.extend_from_slice(PASS_MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&self.max_streams.to_be_bytes());
        b.extend_from_slice(&self.rate_kib.to_be_bytes());
        b.extend_from_slice(&self.not_after.to_be_bytes());
        b
    }

    /// The signed encoding the operator hands out with a credential.
    pub fn issue(&self, operator: &SigningKey) -> Vec<u8> {
        let mut b = self.body();
        let sig = operator.sign(PASS_CONTEXT, &b);
        b.extend_from_slice(&sig);
        b
    }

    /// Checks a signed pass against the operator's key and the clock (`now`, Unix seconds).
    pub fn verify(
        bytes: &[u8],
        operator: &[u8; KEY_LEN],
        now: u64,
    ) -> Result<LimitsPass, PassError> {
        let mut r = Reader::new(bytes);
        let parsed = (|| -> Result<LimitsPass, WireError> {
            if r.bytes(4)? != PASS_MAGIC || r.u8()? != VERSION {
                return Err(WireError::Invalid("not a limits pass"));
            }
            Ok(LimitsPass {
                max_streams: r.u32()?,
                rate_kib: r.u32()?,
                not_after: r.u64()?,
            })
        })();
        let pass = parsed.map_err(|_| PassError::Malformed)?;
        let body_len = r.position();
        let sig = r.bytes(SIG_LEN).map_err(|_| PassError::Malformed)?;
        if r.remaining() != 0 {
            return Err(PassError::Malformed);
        }
        if !verify(operator, PASS_CONTEXT, &bytes[..body_len], sig) {
            return Err(PassError::WrongOperator);
        }
        if now >= pass.not_after {
            return Err(PassError::Expired);
        }
        Ok(pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn setup() -> (SigningKey, SigningKey, Credential) {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let op = SigningKey::generate(&mut rng);
        let user = SigningKey::generate(&mut rng);
        let c = Credential {
            id: [7; ID_LEN],
            name: "alice".into(),
            user_key: user.public(),
            not_before: 1000,
            not_after: 2000,
            limits: UserLimits {
                rate_kib: 512,
                max_sessions: 4,
                max_streams: 100,
                quota_mib: 1 << 20,
            },
        };
        (op, user, c)
    }

    #[test]
    fn an_issued_credential_verifies_and_round_trips() {
        let (op, _, c) = setup();
        let b = c.issue(&op).unwrap();
        assert!(b.len() <= MAX_CREDENTIAL_LEN);
        assert_eq!(Credential::verify(&b, &op.public(), 1500, |_| false), Ok(c));
    }

    #[test]
    fn dates_revocation_and_the_operator_key_are_checked() {
        let (op, _, c) = setup();
        let b = c.issue(&op).unwrap();
        let v = |now, revoked: bool, key: &[u8; 32]| {
            Credential::verify(&b, key, now, |_| revoked).map(|_| ())
        };
        assert_eq!(v(999, false, &op.public()), Err(Refusal::NotYetValid));
        assert_eq!(v(2000, false, &op.public()), Err(Refusal::Expired));
        assert_eq!(v(1500, true, &op.public()), Err(Refusal::Revoked));
        let other = SigningKey::from_seed(&[9; 32]);
        assert_eq!(v(1500, false, &other.public()), Err(Refusal::WrongOperator));
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let (op, _, c) = setup();
        let b = c.issue(&op).unwrap();
        for i in 0..b.len() {
            let mut t = b.clone();
            t[i] ^= 1;
            assert!(
                Credential::verify(&t, &op.public(), 1500, |_| false).is_err(),
                "byte {i}"
            );
        }
        for cut in 0..b.len() {
            assert!(Credential::verify(&b[..cut], &op.public(), 1500, |_| false).is_err());
        }
    }

    #[test]
    fn a_proof_holds_only_for_its_own_connection_and_user() {
        let (op, user, c) = setup();
        let cred = c.issue(&op).unwrap();
        let proof = prove(&user, b"exporter of connection A");
        let msg = auth_message(&cred, &proof);
        let (got, p) = parse_auth_message(&msg).unwrap();
        let c = Credential::verify(got, &op.public(), 1500, |_| false).unwrap();
        assert_eq!(c.check_proof(b"exporter of connection A", &p), Ok(()));
        // Replayed on another connection: the exporter differs.
        assert_eq!(
            c.check_proof(b"exporter of connection B", &p),
            Err(Refusal::BadProof)
        );
        // Someone else's key.
        let thief = SigningKey::from_seed(&[3; 32]);
        let forged = prove(&thief, b"exporter of connection B");
        assert_eq!(
            c.check_proof(b"exporter of connection B", &forged),
            Err(Refusal::BadProof)
        );
    }

    #[test]
    fn refusal_codes_round_trip_and_unknown_ones_read_as_malformed() {
        for code in 1..=10 {
            assert_eq!(Refusal::from_code(code).code(), code);
        }
        assert_eq!(Refusal::from_code(200), Refusal::Malformed);
    }

    #[test]
    fn bad_names_and_empty_windows_are_not_issued() {
        let (op, _, mut c) = setup();
        c.name = "has space".into();
        assert!(c.issue(&op).is_err());
        c.name = "x".repeat(65);
        assert!(c.issue(&op).is_err());
        c.name = "ok".into();
        c.not_after = c.not_before;
        assert_eq!(c.issue(&op), Err(IssueError::EmptyWindow));
    }

    #[test]
    fn a_limits_pass_names_no_user_and_verifies() {
        let (op, _, c) = setup();
        let mut other = c.clone();
        other.name = "bob".into();
        other.id = [8; ID_LEN];
        other.not_after = c.not_after + 50;
        let a = LimitsPass::for_credential(&c).issue(&op);
        // Two users with the same limit, ending the same day: the same bytes.
        assert_eq!(a, LimitsPass::for_credential(&other).issue(&op));
        assert_eq!(a.len(), LimitsPass::LEN);
        let p = LimitsPass::verify(&a, &op.public(), 1500).unwrap();
        assert_eq!(
            (p.max_streams, p.rate_kib, p.not_after),
            (100, 512, LimitsPass::DAY)
        );
        assert_eq!(
            LimitsPass::verify(&a, &op.public(), LimitsPass::DAY),
            Err(PassError::Expired)
        );
        let stranger = SigningKey::from_seed(&[9; 32]);
        assert_eq!(
            LimitsPass::verify(&a, &stranger.public(), 1500),
            Err(PassError::WrongOperator)
        );
        for i in 0..a.len() {
            let mut t = a.clone();
            t[i] ^= 1;
            assert!(
                LimitsPass::verify(&t, &op.public(), 1500).is_err(),
                "byte {i}"
            );
        }
        for cut in 0..a.len() {
            assert!(LimitsPass::verify(&a[..cut], &op.public(), 1500).is_err());
        }
    }

    proptest::proptest! {
        /// Whatever bytes arrive, parsing returns a refusal or a credential, never panics.
        #[test]
        fn arbitrary_auth_messages_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Ok((cred, _)) = parse_auth_message(&b) {
                let _ = Credential::verify(cred, &[1; 32], 0, |_| false);
            }
            let _ = LimitsPass::verify(&b, &[1; 32], 0);
        }
    }
}
