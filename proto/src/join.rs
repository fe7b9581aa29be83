//! Nodes that join a running network: the operator's join credential and the descriptor a
//! joining node signs with it. Both verify offline from the operator's public key alone,
//! so centrals need no consensus to take a node, and the operator's key never sits on a
//! node.
//!
//! - A [`JoinCredential`] names a role, a validity window, whether one node or many may use
//!   it (a scaled service shares one), and a join key (Ed25519) whose secret goes to the
//!   node(s) with it. The operator signs it.
//! - A [`Descriptor`] is what a joining node says of itself: id, role, address, Noise and
//!   TLS keys, when it was published and until when it holds. The node signs it with the
//!   join key and carries the credential inside, so a central checks both in one go.
//!
//! Layouts (integers big-endian):
//! `BRDJ · v1 · id[16] · role u8 · single_use u8 · not_before u64 · not_after u64 ·
//! join_key[32] · sig[64]` and
//! `BRDN · v1 · id_len u8 · id · role u8 · addr · noise_key[32] · tls_key[32] ·
//! published u64 · expires u64 · credential_len u16 · credential · sig[64]`, `addr` being
//! `0`, `4 · ip[4] · port u16` or `6 · ip[16] · port u16`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::credential::{verify, SigningKey, ID_LEN, KEY_LEN, SIG_LEN};
use crate::frame::MAX_NODE_ID_LEN;
use crate::wire::{Reader, WireError};

const CREDENTIAL_MAGIC: &[u8; 4] = b"BRDJ";
const DESCRIPTOR_MAGIC: &[u8; 4] = b"BRDN";
const VERSION: u8 = 1;
const CREDENTIAL_CONTEXT: &[u8] = b"braid join credential v1\0";
const DESCRIPTOR_CONTEXT: &[u8] = b"braid node descriptor v1\0";

/// Bytes of an encoded join credential.
pub const JOIN_CREDENTIAL_LEN: usize = 4 + 1 + ID_LEN + 1 + 1 + 8 + 8 + KEY_LEN + SIG_LEN;
/// Longest encoded descriptor.
pub const MAX_DESCRIPTOR_LEN: usize =
    4 + 1 + 1 + MAX_NODE_ID_LEN + 1 + 19 + 32 + 32 + 8 + 8 + 2 + JOIN_CREDENTIAL_LEN + SIG_LEN;

/// Appends a node address as signed bodies carry it (descriptors here, the directory in
/// `braid-config`): `0`, `4 · ip[4] · port u16` or `6 · ip[16] · port u16`.
pub fn put_addr(b: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        None => b.push(0),
        Some(SocketAddr::V4(a)) => {
            b.push(4);
            b.extend_from_slice(&a.ip().octets());
            b.extend_from_slice(&a.port().to_be_bytes());
        }
        Some(SocketAddr::V6(a)) => {
            b.push(6);
            b.extend_from_slice(&a.ip().octets());
            b.extend_from_slice(&a.port().to_be_bytes());
        }
    }
}

/// Why a join was refused. One line in the central's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("malformed join credential or descriptor")]
    Malformed,
    #[error("join credential not signed by this network's operator")]
    Forged,
    #[error("descriptor not signed with its join credential's key")]
    BadDescriptorSignature,
    #[error("join credential not yet valid")]
    NotYetValid,
    #[error("join credential expired")]
    Expired,
    #[error("descriptor expired")]
    DescriptorExpired,
    #[error("join credential is for another role")]
    WrongRole,
    #[error("single-use join credential already used by another node")]
    Reused,
    #[error("descriptor names a TLS key other than the connection's")]
    KeyMismatch,
    #[error("node id belongs to another node")]
    IdTaken,
    #[error("the central holds as many joined nodes as it may")]
    Full,
}

impl JoinRefusal {
    const ALL: [JoinRefusal; 11] = [
        JoinRefusal::Malformed,
        JoinRefusal::Forged,
        JoinRefusal::BadDescriptorSignature,
        JoinRefusal::NotYetValid,
        JoinRefusal::Expired,
        JoinRefusal::DescriptorExpired,
        JoinRefusal::WrongRole,
        JoinRefusal::Reused,
        JoinRefusal::KeyMismatch,
        JoinRefusal::IdTaken,
        JoinRefusal::Full,
    ];

    /// The byte a central answers a refused registration with (0 is "taken").
    pub fn code(self) -> u8 {
        Self::ALL
            .iter()
            .position(|r| *r == self)
            .map_or(u8::MAX, |i| i as u8 + 1)
    }

    /// Inverse of [`JoinRefusal::code`]; `None` for 0 and unknown codes.
    pub fn from_code(code: u8) -> Option<JoinRefusal> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }
}

impl From<WireError> for JoinRefusal {
    fn from(_: WireError) -> Self {
        JoinRefusal::Malformed
    }
}

/// The operator's permission for nodes of one role to join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinCredential {
    pub id: [u8; ID_LEN],
    /// The role's code (`braid_config::Role` maps it).
    pub role: u8,
    /// One node may use it (a second node id is refused), or many (a scaled service).
    pub single_use: bool,
    /// Unix seconds, inclusive.
    pub not_before: u64,
    /// Unix seconds, exclusive.
    pub not_after: u64,
    /// The key that signs descriptors under this credential.
    pub join_key: [u8; KEY_LEN],
}

impl JoinCredential {
    fn body(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(JOIN_CREDENTIAL_LEN);
        b.extend_from_slice(CREDENTIAL_MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&self.id);
        b.push(self.role);
        b.push(u8::from(self.single_use));
        b.extend_from_slice(&self.not_before.to_be_bytes());
        b.extend_from_slice(&self.not_after.to_be_bytes());
        b.extend_from_slice(&self.join_key);
        b
    }

    /// The signed encoding the operator hands to the node(s).
    pub fn issue(&self, operator: &SigningKey) -> Vec<u8> {
        let mut b = self.body();
        let sig = operator.sign(CREDENTIAL_CONTEXT, &b);
        b.extend_from_slice(&sig);
        b
    }

    /// Parses without checking the signature or dates (tools that show one).
    pub fn parse(bytes: &[u8]) -> Result<JoinCredential, JoinRefusal> {
        let mut r = Reader::new(bytes);
        if r.bytes(4)? != CREDENTIAL_MAGIC || r.u8()? != VERSION {
            return Err(JoinRefusal::Malformed);
        }
        let c = JoinCredential {
            id: r.array()?,
            role: r.u8()?,
            single_use: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(JoinRefusal::Malformed),
            },
            not_before: r.u64()?,
            not_after: r.u64()?,
            join_key: r.array()?,
        };
        let _sig = r.bytes(SIG_LEN)?;
        if r.remaining() != 0 {
            return Err(JoinRefusal::Malformed);
        }
        Ok(c)
    }

    /// Checks the operator's signature and the clock (`now`, Unix seconds).
    pub fn verify(
        bytes: &[u8],
        operator: &[u8; KEY_LEN],
        now: u64,
    ) -> Result<JoinCredential, JoinRefusal> {
        let c = JoinCredential::parse(bytes)?;
        let body_len = bytes
            .len()
            .checked_sub(SIG_LEN)
            .ok_or(JoinRefusal::Malformed)?;
        let (body, sig) = bytes.split_at(body_len);
        if !verify(operator, CREDENTIAL_CONTEXT, body, sig) {
            return Err(JoinRefusal::Forged);
        }
        if now < c.not_before {
            return Err(JoinRefusal::NotYetValid);
        }
        if now >= c.not_after {
            return Err(JoinRefusal::Expired);
        }
        Ok(c)
    }
}

/// What a joining node says of itself, signed with its join key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub id: String,
    pub role: u8,
    pub addr: Option<SocketAddr>,
    pub noise_key: [u8; 32],
    pub tls_key: [u8; 32],
    /// Unix seconds; a newer descriptor of the same node replaces an older one (a key
    /// rotation, a new address).
    pub published: u64,
    /// Unix seconds from which the descriptor no longer holds, unless refreshed.
    pub expires: u64,
}

/// A descriptor whose whole life (published to expires) is this short says the node is
/// leaving: clients stop using it at once rather than when it expires.
pub const LEAVING_SECS: u64 = 5;

impl Descriptor {
    /// Whether the node signed this descriptor to say it is leaving (see [`LEAVING_SECS`]).
    pub fn is_leaving(&self) -> bool {
        self.expires.saturating_sub(self.published) <= LEAVING_SECS
    }

    fn body(&self, credential: &[u8]) -> Result<Vec<u8>, WireError> {
        if self.id.is_empty() || self.id.len() > MAX_NODE_ID_LEN {
            return Err(WireError::Invalid("node id length"));
        }
        let len = u16::try_from(credential.len()).map_err(|_| WireError::TooLong)?;
        let mut b = Vec::with_capacity(MAX_DESCRIPTOR_LEN);
        b.extend_from_slice(DESCRIPTOR_MAGIC);
        b.push(VERSION);
        b.push(self.id.len() as u8);
        b.extend_from_slice(self.id.as_bytes());
        b.push(self.role);
        put_addr(&mut b, self.addr);
        b.extend_from_slice(&self.noise_key);
        b.extend_from_slice(&self.tls_key);
        b.extend_from_slice(&self.published.to_be_bytes());
        b.extend_from_slice(&self.expires.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(credential);
        Ok(b)
    }

    /// Signs the descriptor with the join key, carrying the credential it joins under.
    pub fn sign(&self, credential: &[u8], join_key: &SigningKey) -> Result<Vec<u8>, WireError> {
        let mut b = self.body(credential)?;
        let sig = join_key.sign(DESCRIPTOR_CONTEXT, &b);
        b.extend_from_slice(&sig);
        Ok(b)
    }

    /// Parses a signed descriptor: the descriptor, its credential's bytes, the signed
    /// body's length.
    fn parse(bytes: &[u8]) -> Result<(Descriptor, &[u8], usize), JoinRefusal> {
        let mut r = Reader::new(bytes);
        if r.bytes(4)? != DESCRIPTOR_MAGIC || r.u8()? != VERSION {
            return Err(JoinRefusal::Malformed);
        }
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_NODE_ID_LEN {
            return Err(JoinRefusal::Malformed);
        }
        let id = std::str::from_utf8(r.bytes(n)?)
            .map_err(|_| JoinRefusal::Malformed)?
            .to_string();
        let role = r.u8()?;
        let addr = match r.u8()? {
            0 => None,
            4 => {
                let ip: [u8; 4] = r.array()?;
                Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), r.u16()?))
            }
            6 => {
                let ip: [u8; 16] = r.array()?;
                Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), r.u16()?))
            }
            _ => return Err(JoinRefusal::Malformed),
        };
        let d = Descriptor {
            id,
            role,
            addr,
            noise_key: r.array()?,
            tls_key: r.array()?,
            published: r.u64()?,
            expires: r.u64()?,
        };
        let cred_len = usize::from(r.u16()?);
        let credential = r.bytes(cred_len)?;
        let body_len = r.position();
        let _sig = r.bytes(SIG_LEN)?;
        if r.remaining() != 0 {
            return Err(JoinRefusal::Malformed);
        }
        Ok((d, credential, body_len))
    }

    /// Checks a signed descriptor from the operator's key alone: its join credential (the
    /// operator's signature, its dates, its role), then the descriptor's own signature
    /// with the credential's join key, then its expiry. Returns the descriptor and the
    /// credential (a central remembers single-use ones).
    pub fn verify(
        bytes: &[u8],
        operator: &[u8; KEY_LEN],
        now: u64,
    ) -> Result<(Descriptor, JoinCredential), JoinRefusal> {
        let (d, cred, body_len) = Descriptor::parse(bytes)?;
        let c = JoinCredential::verify(cred, operator, now)?;
        let (body, sig) = bytes.split_at(body_len);
        if !verify(&c.join_key, DESCRIPTOR_CONTEXT, body, sig) {
            return Err(JoinRefusal::BadDescriptorSignature);
        }
        if c.role != d.role {
            return Err(JoinRefusal::WrongRole);
        }
        if now >= d.expires {
            return Err(JoinRefusal::DescriptorExpired);
        }
        Ok((d, c))
    }
}

/// Which node took each single-use join credential, so that a second node is refused. A
/// central keeps one; entries go when their credential expires. Only credentials the
/// operator signed reach it, so its size is the operator's to bound.
#[derive(Debug, Default)]
pub struct JoinLedger {
    /// Credential id → (node id, credential expiry).
    used: std::collections::HashMap<[u8; ID_LEN], (String, u64)>,
}

impl JoinLedger {
    /// Records `node` joining under `c` (at `now`); refuses a single-use credential that
    /// another node took. The same node may present it again (a restart, a refresh).
    pub fn admit(&mut self, c: &JoinCredential, node: &str, now: u64) -> Result<(), JoinRefusal> {
        self.used.retain(|_, (_, not_after)| *not_after > now);
        if !c.single_use {
            return Ok(());
        }
        match self.used.get(&c.id) {
            Some((taker, _)) if taker != node => Err(JoinRefusal::Reused),
            _ => {
                self.used.insert(c.id, (node.to_string(), c.not_after));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: u8 = 1;
    const RELAY: u8 = 4;

    fn setup() -> (SigningKey, SigningKey, JoinCredential, Descriptor) {
        let op = SigningKey::from_seed(&[1; 32]);
        let join = SigningKey::from_seed(&[2; 32]);
        let c = JoinCredential {
            id: [5; ID_LEN],
            role: UPSTREAM,
            single_use: false,
            not_before: 1000,
            not_after: 5000,
            join_key: join.public(),
        };
        let d = Descriptor {
            id: "upstream-7".into(),
            role: UPSTREAM,
            addr: Some(
                "10.0.0.7:7100"
                    .parse()
                    .unwrap_or(SocketAddr::from(([0; 4], 0))),
            ),
            noise_key: [7; 32],
            tls_key: [8; 32],
            published: 1500,
            expires: 2500,
        };
        (op, join, c, d)
    }

    #[test]
    fn a_descriptor_verifies_from_the_operator_key_alone() {
        let (op, join, c, d) = setup();
        let cred = c.issue(&op);
        assert_eq!(cred.len(), JOIN_CREDENTIAL_LEN);
        let signed = d.sign(&cred, &join).unwrap();
        assert!(signed.len() <= MAX_DESCRIPTOR_LEN);
        assert_eq!(Descriptor::verify(&signed, &op.public(), 2000), Ok((d, c)));
    }

    #[test]
    fn forged_expired_and_wrong_role_joins_are_refused_with_the_reason() {
        let (op, join, mut c, mut d) = setup();
        let cred = c.issue(&op);
        let v = |signed: &[u8], now| Descriptor::verify(signed, &op.public(), now).map(|_| ());
        // A credential signed by someone else.
        let thief = SigningKey::from_seed(&[3; 32]);
        let forged = d.sign(&c.issue(&thief), &join).unwrap();
        assert_eq!(v(&forged, 2000), Err(JoinRefusal::Forged));
        // The real credential, but the descriptor signed with another key.
        let stolen = d.sign(&cred, &thief).unwrap();
        assert_eq!(v(&stolen, 2000), Err(JoinRefusal::BadDescriptorSignature));
        // Dates.
        let signed = d.sign(&cred, &join).unwrap();
        assert_eq!(v(&signed, 999), Err(JoinRefusal::NotYetValid));
        assert_eq!(v(&signed, 5000), Err(JoinRefusal::Expired));
        assert_eq!(v(&signed, 2500), Err(JoinRefusal::DescriptorExpired));
        // A relay descriptor under an upstream credential.
        d.role = RELAY;
        let relay = d.sign(&cred, &join).unwrap();
        assert_eq!(v(&relay, 2000), Err(JoinRefusal::WrongRole));
        // Every changed byte and every cut is refused.
        d.role = UPSTREAM;
        let signed = d.sign(&cred, &join).unwrap();
        for i in 0..signed.len() {
            let mut t = signed.clone();
            t[i] ^= 1;
            assert!(v(&t, 2000).is_err(), "byte {i}");
        }
        for cut in 0..signed.len() {
            assert!(v(&signed[..cut], 2000).is_err());
        }
        c.single_use = true;
        assert!(JoinCredential::parse(&c.issue(&op)).is_ok_and(|p| p.single_use));
    }

    #[test]
    fn a_single_use_credential_takes_one_node() {
        let (_, _, mut c, _) = setup();
        let mut ledger = JoinLedger::default();
        // Many nodes under a shared one.
        assert_eq!(ledger.admit(&c, "upstream-7", 2000), Ok(()));
        assert_eq!(ledger.admit(&c, "upstream-8", 2000), Ok(()));
        c.single_use = true;
        c.id = [6; ID_LEN];
        assert_eq!(ledger.admit(&c, "upstream-7", 2000), Ok(()));
        assert_eq!(
            ledger.admit(&c, "upstream-7", 2100),
            Ok(()),
            "the same node again"
        );
        assert_eq!(
            ledger.admit(&c, "upstream-8", 2100),
            Err(JoinRefusal::Reused)
        );
        // Forgotten once the credential expired (it verifies no more anyway).
        assert_eq!(ledger.admit(&c, "upstream-8", 5000), Ok(()));
    }

    #[test]
    fn refusal_codes_round_trip_and_leaving_is_a_short_life() {
        for r in JoinRefusal::ALL {
            assert_ne!(r.code(), 0);
            assert_eq!(JoinRefusal::from_code(r.code()), Some(r));
        }
        assert_eq!(JoinRefusal::from_code(0), None);
        assert_eq!(JoinRefusal::from_code(200), None);
        let (_, _, _, mut d) = setup();
        assert!(!d.is_leaving());
        d.expires = d.published + LEAVING_SECS;
        assert!(d.is_leaving());
    }

    proptest::proptest! {
        /// Whatever bytes arrive, verifying returns a refusal or a descriptor, never panics.
        #[test]
        fn arbitrary_descriptors_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = Descriptor::verify(&b, &[1; 32], 2000);
            let _ = JoinCredential::verify(&b, &[1; 32], 2000);
        }
    }
}
