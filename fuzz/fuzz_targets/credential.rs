//! User credentials and the first hop's auth message (`braid_proto::credential`), as an
//! upstream or a relay reads them from a client it does not trust yet.
//!
//! Input: `mode u8 | bytes`.
//!
//! 0. `bytes` is an auth message. `parse_auth_message` never panics; what it accepts is
//!    exactly `len u16 · credential[len] · proof[64]` with `len <= MAX_CREDENTIAL_LEN`, and
//!    re-encoding with `auth_message` gives the input back. `Credential::verify` of the
//!    credential against the fuzz operator key (at a clock taken from the input) accepts
//!    only what re-issuing with that key reproduces byte for byte, and never within a
//!    refused window; `check_proof` of a proof over arbitrary bytes never panics.
//! 1. `bytes` is `name_len u8 · name · flip u16 · rest`: an honest credential for that
//!    name (when the name is valid) is issued, verifies, and its proof holds for its own
//!    binding only; the same credential with bit `flip` flipped is refused.
//! 2. `bytes` is a limits pass, as a central reads it from a Hello: `LimitsPass::verify`
//!    never panics and accepts only what re-issuing with the fuzz key reproduces.
#![no_main]

use braid_proto::credential::{
    auth_message, parse_auth_message, prove, Credential, LimitsPass, SigningKey, UserLimits,
    MAX_CREDENTIAL_LEN, SIG_LEN,
};
use libfuzzer_sys::fuzz_target;

fn operator() -> SigningKey {
    SigningKey::from_seed(&[0x5a; 32])
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let op = operator();
    match mode % 3 {
        0 => {
            let Ok((cred, proof)) = parse_auth_message(bytes) else {
                return;
            };
            assert!(cred.len() <= MAX_CREDENTIAL_LEN);
            assert_eq!(bytes.len(), 2 + cred.len() + SIG_LEN);
            assert_eq!(auth_message(cred, &proof), bytes, "re-encodes to the input");
            let now = bytes
                .get(..8)
                .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
                .unwrap_or(0);
            if let Ok(c) = Credential::verify(cred, &op.public(), now, |_| false) {
                assert!(c.not_before <= now && now < c.not_after);
                assert_eq!(c.issue(&op).as_deref(), Ok(cred), "only what the operator signed");
                let _ = c.check_proof(bytes, &proof);
            }
        }
        2 => {
            if let Ok(p) = LimitsPass::verify(bytes, &op.public(), 0) {
                assert_eq!(p.issue(&op), bytes, "only what the operator signed");
            }
        }
        _ => {
            let Some((&n, rest)) = bytes.split_first() else {
                return;
            };
            let Some(name) = rest.get(..usize::from(n)) else {
                return;
            };
            let Ok(name) = std::str::from_utf8(name) else {
                return;
            };
            let tail = &rest[usize::from(n)..];
            let flip = tail
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .unwrap_or(0);
            let user = SigningKey::from_seed(&[n; 32]);
            let c = Credential {
                id: [n; 16],
                name: name.to_string(),
                user_key: user.public(),
                not_before: 1000,
                not_after: 2000,
                limits: UserLimits {
                    rate_kib: u32::from(flip),
                    ..UserLimits::default()
                },
            };
            let Ok(b) = c.issue(&op) else {
                return;
            };
            assert_eq!(Credential::verify(&b, &op.public(), 1500, |_| false), Ok(c.clone()));
            let proof = prove(&user, tail);
            assert_eq!(c.check_proof(tail, &proof), Ok(()));
            let mut other = tail.to_vec();
            other.push(0);
            assert!(c.check_proof(&other, &proof).is_err(), "bound to its binding");
            let mut t = b.clone();
            let bit = usize::from(flip) % (t.len() * 8);
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(Credential::verify(&t, &op.public(), 1500, |_| false).is_err());
        }
    }
});
