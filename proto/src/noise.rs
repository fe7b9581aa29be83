//! Noise NK (`Noise_NK_25519_AESGCM_SHA256`), written out as pure functions.
//!
//! ```text
//! NK:  <- s
//!      ...
//!      -> e, es     (payload sealed to the responder's static key: 0-RTT)
//!      <- e, ee     (payload and everything after it has forward secrecy)
//! ```
//! Hand-written over x25519-dalek and ring rather than `snow` so that the ephemeral key
//! comes from the caller's RNG (deterministic tests), the split keys come out raw for our
//! own per-cell nonces and associated data, and the only AEAD is the one cells use. The
//! tests check it against `snow` byte for byte.

use rand_core::CryptoRng;
use ring::{aead, hmac};
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::aead::TAG_LEN;

const PROTOCOL_NAME: &[u8] = b"Noise_NK_25519_AESGCM_SHA256";
const DH_LEN: usize = 32;
/// Noise caps a message at 65535 bytes.
pub const MAX_MESSAGE: usize = 65535;
/// Bytes a handshake message adds around its payload.
pub const MESSAGE_OVERHEAD: usize = DH_LEN + TAG_LEN;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    #[error("handshake message truncated")]
    Truncated,
    #[error("handshake message too long")]
    TooLong,
    #[error("handshake message failed authentication")]
    Decrypt,
    #[error("peer sent a low-order public key")]
    WeakKey,
}

/// The keys a finished handshake yields, one per direction, plus the transcript hash
/// (a session binding both sides agree on; the inner layer derives its resume key from
/// it). Wiped on drop; a caller that copies a key out owns wiping its copy.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct TransportKeys {
    pub initiator_to_responder: [u8; 32],
    pub responder_to_initiator: [u8; 32],
    pub handshake_hash: [u8; 32],
}

impl std::fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TransportKeys([redacted])")
    }
}

/// The chaining key, hash and cipher key are wiped on drop (every handshake state and
/// every intermediate copy of it).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
struct SymmetricState {
    ck: [u8; 32],
    h: [u8; 32],
    k: Option<[u8; 32]>,
    n: u64,
}

pub(crate) fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// Noise's HKDF with two outputs.
fn hkdf2(ck: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32]) {
    let temp = Zeroizing::new(hmac256(ck, &[ikm]));
    let o1 = hmac256(&temp[..], &[&[1u8]]);
    let o2 = hmac256(&temp[..], &[&o1, &[2u8]]);
    (o1, o2)
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn noise_nonce(n: u64) -> aead::Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&n.to_be_bytes());
    aead::Nonce::assume_unique_for_key(nonce)
}

fn aes_key(k: &[u8; 32]) -> aead::LessSafeKey {
    match aead::UnboundKey::new(&aead::AES_256_GCM, k) {
        Ok(u) => aead::LessSafeKey::new(u),
        Err(_) => unreachable!("AES-256 key is 32 bytes"),
    }
}

impl SymmetricState {
    fn new(prologue: &[u8]) -> Self {
        let mut h = [0u8; 32];
        h[..PROTOCOL_NAME.len()].copy_from_slice(PROTOCOL_NAME);
        let mut s = SymmetricState {
            ck: h,
            h,
            k: None,
            n: 0,
        };
        s.mix_hash(prologue);
        s
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = sha256(&[&self.h, data]);
    }

    fn mix_key(&mut self, ikm: &[u8]) {
        let (mut ck, mut k) = hkdf2(&self.ck, ikm);
        self.ck.copy_from_slice(&ck);
        self.k = Some(k);
        ck.zeroize();
        k.zeroize();
        self.n = 0;
    }

    fn encrypt_and_hash(&mut self, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(plaintext);
        if let Some(k) = &self.k {
            let key = aes_key(k);
            let tag = match key.seal_in_place_separate_tag(
                noise_nonce(self.n),
                aead::Aad::from(&self.h),
                &mut out[start..],
            ) {
                Ok(t) => t,
                Err(_) => unreachable!("handshake payloads are far below ring's limit"),
            };
            out.extend_from_slice(tag.as_ref());
            self.n += 1;
        }
        let ct = out[start..].to_vec();
        self.mix_hash(&ct);
    }

    fn decrypt_and_hash(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let plain = match &self.k {
            Some(k) => {
                if ciphertext.len() < TAG_LEN {
                    return Err(HandshakeError::Truncated);
                }
                let key = aes_key(k);
                let mut buf = ciphertext.to_vec();
                let plain_len = key
                    .open_in_place(noise_nonce(self.n), aead::Aad::from(&self.h), &mut buf)
                    .map_err(|_| HandshakeError::Decrypt)?
                    .len();
                buf.truncate(plain_len);
                self.n += 1;
                buf
            }
            None => ciphertext.to_vec(),
        };
        self.mix_hash(ciphertext);
        Ok(plain)
    }

    fn split(&self) -> ([u8; 32], [u8; 32]) {
        hkdf2(&self.ck, &[])
    }
}

fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, HandshakeError> {
    // `SharedSecret` wipes itself on drop; so does the copy returned.
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(HandshakeError::WeakKey);
    }
    Ok(Zeroizing::new(*shared.as_bytes()))
}

fn random_secret(rng: &mut impl CryptoRng) -> StaticSecret {
    let mut b = [0u8; 32];
    rng.fill_bytes(&mut b);
    let secret = StaticSecret::from(b);
    b.zeroize();
    secret
}

/// A static X25519 key pair (a node's Noise identity).
#[derive(Clone)]
pub struct StaticKeypair {
    secret: StaticSecret,
    public: [u8; 32],
}

impl StaticKeypair {
    pub fn from_secret(mut bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        bytes.zeroize();
        let public = PublicKey::from(&secret).to_bytes();
        StaticKeypair { secret, public }
    }
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        Self::from_secret(b)
    }
    pub fn public(&self) -> [u8; 32] {
        self.public
    }
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }
}

impl std::fmt::Debug for StaticKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StaticKeypair(public={:02x?}, secret=[redacted])",
            &self.public[..4]
        )
    }
}

/// The initiator after sending message 1, waiting for message 2.
pub struct NkInitiator {
    state: SymmetricState,
    e: StaticSecret,
}

/// Starts a handshake with the responder whose static key is known; `payload` rides in
/// message 1, sealed to that key (0-RTT: no forward secrecy for it).
pub fn initiate(
    rng: &mut impl CryptoRng,
    responder_static: &[u8; 32],
    prologue: &[u8],
    payload: &[u8],
) -> Result<(NkInitiator, Vec<u8>), HandshakeError> {
    if payload.len() + MESSAGE_OVERHEAD > MAX_MESSAGE {
        return Err(HandshakeError::TooLong);
    }
    let mut state = SymmetricState::new(prologue);
    state.mix_hash(responder_static);
    let e = random_secret(rng);
    let e_pub = PublicKey::from(&e).to_bytes();
    let mut msg = Vec::with_capacity(payload.len() + MESSAGE_OVERHEAD);
    msg.extend_from_slice(&e_pub);
    state.mix_hash(&e_pub);
    state.mix_key(&dh(&e, responder_static)?[..]);
    state.encrypt_and_hash(payload, &mut msg);
    Ok((NkInitiator { state, e }, msg))
}

impl NkInitiator {
    /// Reads message 2; returns its payload and the transport keys. The initiator is left
    /// as it was, so a message 2 of another handshake fails here without spoiling this one
    /// (a client tries a Welcome against each Hello it has out).
    pub fn finish(&self, msg2: &[u8]) -> Result<(Vec<u8>, TransportKeys), HandshakeError> {
        if msg2.len() < MESSAGE_OVERHEAD {
            return Err(HandshakeError::Truncated);
        }
        let mut state = self.state.clone();
        let mut re = [0u8; 32];
        re.copy_from_slice(&msg2[..DH_LEN]);
        state.mix_hash(&re);
        state.mix_key(&dh(&self.e, &re)?[..]);
        let payload = state.decrypt_and_hash(&msg2[DH_LEN..])?;
        let (k1, k2) = state.split();
        Ok((
            payload,
            TransportKeys {
                initiator_to_responder: k1,
                responder_to_initiator: k2,
                handshake_hash: state.h,
            },
        ))
    }
}

/// The responder after reading message 1: it knows the payload and must answer.
pub struct NkResponder {
    state: SymmetricState,
    re: [u8; 32],
}

/// Reads message 1 with the responder's static key; returns the responder state and
/// message 1's payload.
pub fn respond(
    static_key: &StaticKeypair,
    prologue: &[u8],
    msg1: &[u8],
) -> Result<(NkResponder, Vec<u8>), HandshakeError> {
    if msg1.len() < MESSAGE_OVERHEAD {
        return Err(HandshakeError::Truncated);
    }
    if msg1.len() > MAX_MESSAGE {
        return Err(HandshakeError::TooLong);
    }
    let mut state = SymmetricState::new(prologue);
    state.mix_hash(&static_key.public);
    let mut re = [0u8; 32];
    re.copy_from_slice(&msg1[..DH_LEN]);
    state.mix_hash(&re);
    state.mix_key(&dh(&static_key.secret, &re)?[..]);
    let payload = state.decrypt_and_hash(&msg1[DH_LEN..])?;
    Ok((NkResponder { state, re }, payload))
}

impl NkResponder {
    /// Writes message 2 carrying `payload`; returns it and the transport keys.
    pub fn reply(
        mut self,
        rng: &mut impl CryptoRng,
        payload: &[u8],
    ) -> Result<(Vec<u8>, TransportKeys), HandshakeError> {
        if payload.len() + MESSAGE_OVERHEAD > MAX_MESSAGE {
            return Err(HandshakeError::TooLong);
        }
        let e = random_secret(rng);
        let e_pub = PublicKey::from(&e).to_bytes();
        let mut msg = Vec::with_capacity(payload.len() + MESSAGE_OVERHEAD);
        msg.extend_from_slice(&e_pub);
        self.state.mix_hash(&e_pub);
        self.state.mix_key(&dh(&e, &self.re)?[..]);
        self.state.encrypt_and_hash(payload, &mut msg);
        let (k1, k2) = self.state.split();
        Ok((
            msg,
            TransportKeys {
                initiator_to_responder: k1,
                responder_to_initiator: k2,
                handshake_hash: self.state.h,
            },
        ))
    }
}

/// Derives the key of one rekey epoch from a handshake key, so that no key seals more
/// than one epoch's worth of cells (the AEAD's usage limit).
pub fn epoch_key(base: &[u8; 32], label: &[u8], epoch: u32) -> [u8; 32] {
    hmac256(base, &[b"braid epoch key", label, &epoch.to_be_bytes()])
}

#[cfg(test)]
mod tests {
    /// Derived key material is wiped when dropped. The drop itself cannot be observed from
    /// safe code, so this checks at compile time that the types wipe on drop, and at run
    /// time that wiping clears every byte.
    #[test]
    fn derived_keys_are_wiped_on_drop() {
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wipes_on_drop::<TransportKeys>();
        wipes_on_drop::<SymmetricState>();
        wipes_on_drop::<zeroize::Zeroizing<[u8; 32]>>();
        let mut s = SymmetricState::new(b"p");
        s.mix_key(b"ikm");
        assert!(s.k.is_some() && s.ck != [0; 32]);
        s.zeroize();
        assert_eq!((s.ck, s.h, s.k, s.n), ([0; 32], [0; 32], None, 0));
        let mut k = TransportKeys {
            initiator_to_responder: [1; 32],
            responder_to_initiator: [2; 32],
            handshake_hash: [3; 32],
        };
        k.zeroize();
        assert_eq!(k.initiator_to_responder, [0; 32]);
        assert_eq!(k.responder_to_initiator, [0; 32]);
        assert_eq!(k.handshake_hash, [0; 32]);
    }

    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn handshake_agrees_and_carries_payloads() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let server = StaticKeypair::generate(&mut rng);
        let (init, m1) = initiate(&mut rng, &server.public(), b"p", b"open example.com").unwrap();
        let (resp, p1) = respond(&server, b"p", &m1).unwrap();
        assert_eq!(p1, b"open example.com");
        let (m2, keys_r) = resp.reply(&mut rng, b"ok").unwrap();
        let (p2, keys_i) = init.finish(&m2).unwrap();
        assert_eq!(p2, b"ok");
        assert_eq!(keys_i.initiator_to_responder, keys_r.initiator_to_responder);
        assert_eq!(keys_i.responder_to_initiator, keys_r.responder_to_initiator);
        assert_eq!(keys_i.handshake_hash, keys_r.handshake_hash);
        assert_ne!(keys_i.initiator_to_responder, keys_i.responder_to_initiator);
    }

    #[test]
    fn wrong_key_or_prologue_or_tamper_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let server = StaticKeypair::generate(&mut rng);
        let other = StaticKeypair::generate(&mut rng);
        let (_, m1) = initiate(&mut rng, &server.public(), b"p", b"x").unwrap();
        assert!(respond(&other, b"p", &m1).is_err());
        assert!(respond(&server, b"q", &m1).is_err());
        let mut bad = m1.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(respond(&server, b"p", &bad).is_err());
        assert_eq!(
            respond(&server, b"p", &m1[..10]).err(),
            Some(HandshakeError::Truncated)
        );
        // A low-order point as the ephemeral key is refused.
        let mut zero = m1.clone();
        zero[..32].fill(0);
        assert_eq!(
            respond(&server, b"p", &zero).err(),
            Some(HandshakeError::WeakKey)
        );
    }

    /// Interoperates with snow, an independent Noise implementation.
    #[test]
    fn matches_snow() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let server = StaticKeypair::generate(&mut rng);
        let params: snow::params::NoiseParams = "Noise_NK_25519_AESGCM_SHA256".parse().unwrap();

        // Ours as initiator, snow as responder.
        let mut snow_resp = snow::Builder::new(params.clone())
            .local_private_key(&server.secret_bytes())
            .prologue(b"pro")
            .build_responder()
            .unwrap();
        let (init, m1) = initiate(&mut rng, &server.public(), b"pro", b"hello").unwrap();
        let mut buf = vec![0u8; 1024];
        let n = snow_resp.read_message(&m1, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"hello");
        let n = snow_resp.write_message(b"world", &mut buf).unwrap();
        let (p2, keys) = init.finish(&buf[..n]).unwrap();
        assert_eq!(p2, b"world");
        // snow's first transport message to the initiator uses nonce 0 under k2.
        agrees_with_snow(snow_resp, &keys, &keys.responder_to_initiator, b"data");

        // snow as initiator, ours as responder.
        let mut snow_init = snow::Builder::new(params)
            .remote_public_key(&server.public())
            .prologue(b"pro")
            .build_initiator()
            .unwrap();
        let n = snow_init.write_message(b"ping", &mut buf).unwrap();
        let (resp, p1) = respond(&server, b"pro", &buf[..n]).unwrap();
        assert_eq!(p1, b"ping");
        let (m2, keys) = resp.reply(&mut rng, b"pong").unwrap();
        let n = snow_init.read_message(&m2, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        agrees_with_snow(snow_init, &keys, &keys.initiator_to_responder, b"up");
    }

    /// Our side of a finished handshake agrees with snow's: the same handshake hash, and
    /// snow's first transport message carrying `data` opens under our key for the direction
    /// snow sends in (`snow_sends`), at nonce 0.
    fn agrees_with_snow(
        snow: snow::HandshakeState,
        keys: &TransportKeys,
        snow_sends: &[u8; 32],
        data: &[u8],
    ) {
        assert_eq!(&keys.handshake_hash[..], snow.get_handshake_hash());
        let mut t = snow.into_transport_mode().unwrap();
        let mut buf = vec![0u8; 1024];
        let n = t.write_message(data, &mut buf).unwrap();
        let key = aes_key(snow_sends);
        let mut ct = buf[..n].to_vec();
        let plain = key
            .open_in_place(noise_nonce(0), aead::Aad::empty(), &mut ct)
            .unwrap();
        assert_eq!(plain, data);
    }
}
