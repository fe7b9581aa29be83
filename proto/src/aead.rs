//! One small trait in front of the AEAD so a benchmark, not a guess, picks the
//! implementation. ring is already in the tree through rustls.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use thiserror::Error;

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("AEAD authentication failed")]
pub struct AeadError;

/// Seals and opens in place with an explicit nonce; callers own nonce uniqueness.
pub trait CellAead: Send + Sync {
    /// Encrypts `in_out` in place and returns the tag.
    fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN];
    /// Decrypts `in_out` (ciphertext without tag) in place if `tag` authenticates it.
    fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AeadAlgorithm {
    #[default]
    Aes256Gcm,
    ChaCha20Poly1305,
}

/// ring's AES-256-GCM or ChaCha20-Poly1305.
pub struct RingAead {
    key: LessSafeKey,
}

impl RingAead {
    pub fn new(alg: AeadAlgorithm, key: &[u8; KEY_LEN]) -> Self {
        let alg = match alg {
            AeadAlgorithm::Aes256Gcm => &aead::AES_256_GCM,
            AeadAlgorithm::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        // Both algorithms take 32-byte keys, so construction cannot fail.
        let unbound = match UnboundKey::new(alg, key) {
            Ok(k) => k,
            Err(_) => unreachable!("32-byte key for a 32-byte-key AEAD"),
        };
        RingAead {
            key: LessSafeKey::new(unbound),
        }
    }
}

impl CellAead for RingAead {
    fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], in_out: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = match self.key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            in_out,
        ) {
            Ok(t) => t,
            // ring only fails for inputs over 2^36 bytes; cells are at most 16 KiB.
            Err(_) => unreachable!("cell larger than the AEAD input limit"),
        };
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        let tag = aead::Tag::from(*tag);
        self.key
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                tag,
                in_out,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AeadError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        for alg in [AeadAlgorithm::Aes256Gcm, AeadAlgorithm::ChaCha20Poly1305] {
            let a = RingAead::new(alg, &[7u8; 32]);
            let mut buf = b"hello cells".to_vec();
            let tag = a.seal([1; 12], b"hdr", &mut buf);
            assert_ne!(&buf[..], b"hello cells");
            let mut c = buf.clone();
            a.open([1; 12], b"hdr", &mut c, &tag).unwrap();
            assert_eq!(&c[..], b"hello cells");
            let mut c = buf.clone();
            assert!(a.open([1; 12], b"hdX", &mut c, &tag).is_err());
            let mut c = buf.clone();
            assert!(a.open([2; 12], b"hdr", &mut c, &tag).is_err());
            let mut c = buf.clone();
            c[0] ^= 1;
            assert!(a.open([1; 12], b"hdr", &mut c, &tag).is_err());
        }
    }
}
