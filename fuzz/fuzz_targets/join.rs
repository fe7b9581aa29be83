//! Join credentials and node descriptors (`braid_proto::join`), as a central reads them from
//! a node it does not know yet.
//!
//! Input: `mode u8 | bytes`.
//!
//! 0. `bytes` is a signed descriptor. `Descriptor::verify` against the fuzz operator key
//!    never panics, and accepts only a descriptor whose credential the operator signed and
//!    whose fields re-sign (with the fuzz join key) to the input.
//! 1. `bytes` is `id_len u8 · id · flip u16 · rest`: an honest descriptor for that id under
//!    an honest credential verifies; with bit `flip` flipped it is refused.
#![no_main]

use braid_proto::credential::SigningKey;
use braid_proto::join::{Descriptor, JoinCredential};
use libfuzzer_sys::fuzz_target;

fn keys() -> (SigningKey, SigningKey) {
    (SigningKey::from_seed(&[0x5a; 32]), SigningKey::from_seed(&[0x6b; 32]))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let (op, join) = keys();
    match mode % 2 {
        0 => {
            if let Ok((d, c)) = Descriptor::verify(bytes, &op.public(), 2000) {
                let cred = c.issue(&op);
                if c.join_key == join.public() {
                    assert_eq!(d.sign(&cred, &join).as_deref(), Ok(bytes), "only what was signed");
                }
            }
            let _ = JoinCredential::verify(bytes, &op.public(), 2000);
        }
        _ => {
            let Some((&n, rest)) = bytes.split_first() else {
                return;
            };
            let Some(id) = rest.get(..usize::from(n)) else {
                return;
            };
            let Ok(id) = std::str::from_utf8(id) else {
                return;
            };
            let tail = &rest[usize::from(n)..];
            let flip = tail
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .unwrap_or(0);
            let c = JoinCredential {
                id: [n; 16],
                role: 1,
                single_use: flip % 2 == 0,
                not_before: 1000,
                not_after: 5000,
                join_key: join.public(),
            };
            let cred = c.issue(&op);
            let d = Descriptor {
                id: id.to_string(),
                role: 1,
                addr: None,
                noise_key: [n; 32],
                tls_key: [n ^ 0xff; 32],
                published: 1500,
                expires: 2500,
            };
            let Ok(signed) = d.sign(&cred, &join) else {
                return;
            };
            assert_eq!(Descriptor::verify(&signed, &op.public(), 2000), Ok((d, c)));
            let mut t = signed.clone();
            let bit = usize::from(flip) % (t.len() * 8);
            t[bit / 8] ^= 1 << (bit % 8);
            assert!(Descriptor::verify(&t, &op.public(), 2000).is_err());
        }
    }
});
