//! A node's long-term keys and the files that hold them.
//!
//! Two keys, two jobs: the Noise static X25519 key seals cells end to end (clients learn
//! it from the directory), and the Ed25519 TLS key authenticates QUIC links (peers pin
//! it). On disk, in one directory:
//!
//! - `noise.key`: the X25519 secret as 64 hex digits (mode 0600);
//! - `tls.key`: the Ed25519 key as PKCS#8 PEM (mode 0600);
//! - `tls.crt`: the self-signed certificate as PEM.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ED25519};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use thiserror::Error;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::tls::ed25519_key_of_cert;

/// File name of the Noise static secret.
pub const NOISE_KEY_FILE: &str = "noise.key";
/// File name of the TLS private key.
pub const TLS_KEY_FILE: &str = "tls.key";
/// File name of the TLS certificate.
pub const TLS_CERT_FILE: &str = "tls.crt";

/// Why an identity could not be created, saved or loaded. File errors name the file.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file's contents are not what they should be.
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    /// rcgen could not build the key pair or the certificate.
    #[error("TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// A node's secret keys. `Debug` shows only the public halves.
pub struct NodeIdentity {
    noise_secret: StaticSecret,
    noise_public: [u8; 32],
    tls_key: PrivatePkcs8KeyDer<'static>,
    tls_cert: CertificateDer<'static>,
    tls_cert_pem: String,
    tls_public: [u8; 32],
}

/// The public half of a node's identity, as listed in the directory.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicIdentity {
    /// Noise static X25519 public key.
    pub noise_key: [u8; 32],
    /// Raw Ed25519 public key of the TLS certificate.
    pub tls_key: [u8; 32],
}

impl PublicIdentity {
    /// The Noise key as 64 lowercase hex digits.
    pub fn noise_hex(&self) -> String {
        hex::encode(self.noise_key)
    }

    /// The TLS key as 64 lowercase hex digits.
    pub fn tls_hex(&self) -> String {
        hex::encode(self.tls_key)
    }
}

impl fmt::Display for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "noise={} tls={}", self.noise_hex(), self.tls_hex())
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicIdentity({self})")
    }
}

/// Parses a 32-byte key written as 64 hex digits (surrounding whitespace allowed).
pub fn parse_key_hex(s: &str) -> Result<[u8; 32], hex::FromHexError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(s.trim(), &mut key)?;
    Ok(key)
}

/// PKCS#8 v1 prefix for an Ed25519 private key (RFC 8410 §7); the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl NodeIdentity {
    /// Creates fresh keys from `rng`; deterministic for a deterministic `rng` (tests,
    /// simulations). The certificate is signed by the new key itself.
    pub fn generate(rng: &mut impl rand::CryptoRng) -> Result<Self, IdentityError> {
        let mut noise = [0u8; 32];
        rng.fill_bytes(&mut noise);
        let mut pkcs8 = Vec::with_capacity(48);
        pkcs8.extend_from_slice(&ED25519_PKCS8_PREFIX);
        pkcs8.resize(48, 0);
        rng.fill_bytes(&mut pkcs8[16..]);
        let tls_key = PrivatePkcs8KeyDer::from(pkcs8);

        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&tls_key, &PKCS_ED25519)?;
        let mut params = CertificateParams::new(vec!["braid".to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "braid node");
        params.distinguished_name = dn;
        let cert = params.self_signed(&key_pair)?;
        let tls_public = key_pair
            .public_key_raw()
            .try_into()
            .map_err(|_| rcgen::Error::UnsupportedSignatureAlgorithm)?;

        let noise_secret = StaticSecret::from(noise);
        Ok(Self {
            noise_public: PublicKey::from(&noise_secret).to_bytes(),
            noise_secret,
            tls_key,
            tls_cert: cert.der().clone(),
            tls_cert_pem: cert.pem(),
            tls_public,
        })
    }

    /// Writes the three files into `dir` (created if missing), replacing any there.
    /// Secret files get mode 0600 on Unix.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let noise_hex = format!("{}\n", hex::encode(self.noise_secret.as_bytes()));
        write_file(&dir.join(NOISE_KEY_FILE), noise_hex.as_bytes(), true)?;
        let key_path = dir.join(TLS_KEY_FILE);
        let key_pem = KeyPair::from_pkcs8_der_and_sign_algo(&self.tls_key, &PKCS_ED25519)
            .map_err(|e| invalid(&key_path, e))?
            .serialize_pem();
        write_file(&key_path, key_pem.as_bytes(), true)?;
        write_file(
            &dir.join(TLS_CERT_FILE),
            self.tls_cert_pem.as_bytes(),
            false,
        )
    }

    /// Reads the three files from `dir` and checks that they belong together.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let noise_path = dir.join(NOISE_KEY_FILE);
        let noise_text = read_file(&noise_path)?;
        let noise = std::str::from_utf8(&noise_text)
            .map_err(|e| invalid(&noise_path, e))
            .and_then(|s| parse_key_hex(s).map_err(|e| invalid(&noise_path, e)))?;

        let key_path = dir.join(TLS_KEY_FILE);
        let tls_key = PrivatePkcs8KeyDer::from_pem_slice(&read_file(&key_path)?)
            .map_err(|e| invalid(&key_path, format!("not a PKCS#8 PEM key: {e}")))?;
        let key_pair = KeyPair::from_pkcs8_der_and_sign_algo(&tls_key, &PKCS_ED25519)
            .map_err(|e| invalid(&key_path, format!("not an Ed25519 key: {e}")))?;

        let cert_path = dir.join(TLS_CERT_FILE);
        let cert_pem = read_file(&cert_path)?;
        let tls_cert = CertificateDer::from_pem_slice(&cert_pem)
            .map_err(|e| invalid(&cert_path, format!("not a PEM certificate: {e}")))?;
        let tls_public = ed25519_key_of_cert(&tls_cert).map_err(|e| invalid(&cert_path, e))?;
        if key_pair.public_key_raw() != tls_public {
            return Err(invalid(
                &cert_path,
                format!("certificate key does not match {TLS_KEY_FILE}"),
            ));
        }
        let tls_cert_pem = String::from_utf8(cert_pem).map_err(|e| invalid(&cert_path, e))?;

        let noise_secret = StaticSecret::from(noise);
        Ok(Self {
            noise_public: PublicKey::from(&noise_secret).to_bytes(),
            noise_secret,
            tls_key,
            tls_cert,
            tls_cert_pem,
            tls_public,
        })
    }

    /// The Noise static public key.
    pub fn noise_public(&self) -> [u8; 32] {
        self.noise_public
    }

    /// The Noise static secret (for the Noise handshake code).
    pub fn noise_secret(&self) -> [u8; 32] {
        self.noise_secret.to_bytes()
    }

    /// The raw Ed25519 public key of the TLS certificate: what peers pin.
    pub fn tls_public(&self) -> [u8; 32] {
        self.tls_public
    }

    /// Both public keys, as published in the directory.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            noise_key: self.noise_public,
            tls_key: self.tls_public,
        }
    }

    /// The self-signed certificate (DER).
    pub fn tls_certificate(&self) -> &CertificateDer<'static> {
        &self.tls_cert
    }

    /// The TLS private key, for building rustls configs inside this crate.
    pub(crate) fn tls_private_key(&self) -> PrivatePkcs8KeyDer<'static> {
        self.tls_key.clone_key()
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            noise_secret: self.noise_secret.clone(),
            noise_public: self.noise_public,
            tls_key: self.tls_key.clone_key(),
            tls_cert: self.tls_cert.clone(),
            tls_cert_pem: self.tls_cert_pem.clone(),
            tls_public: self.tls_public,
        }
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("noise_public", &hex::encode(self.noise_public))
            .field("tls_public", &hex::encode(self.tls_public))
            .finish_non_exhaustive()
    }
}

fn invalid(path: &Path, reason: impl fmt::Display) -> IdentityError {
    IdentityError::Invalid {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `data` to `path`; a secret file is created 0600 and forced back to 0600 if it
/// already existed with looser permissions.
fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path).map_err(io)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        return write_all(file, data).map_err(io);
    }
    #[cfg(not(unix))]
    let _ = secret;
    write_all(options.open(path).map_err(io)?, data).map_err(io)
}

fn write_all(mut file: fs::File, data: &[u8]) -> std::io::Result<()> {
    file.write_all(data)?;
    file.sync_all()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn identity(seed: u64) -> NodeIdentity {
        NodeIdentity::generate(&mut StdRng::seed_from_u64(seed)).unwrap()
    }

    #[test]
    fn generate_is_deterministic_and_consistent() {
        let a = identity(1);
        let b = identity(1);
        let c = identity(2);
        assert_eq!(a.public(), b.public());
        assert_ne!(a.public(), c.public());
        assert_eq!(
            ed25519_key_of_cert(a.tls_certificate()).unwrap(),
            a.tls_public()
        );
        let derived = PublicKey::from(&StaticSecret::from(a.noise_secret())).to_bytes();
        assert_eq!(derived, a.noise_public());
    }

    #[test]
    fn debug_redacts_secrets() {
        let id = identity(3);
        let shown = format!("{id:?}");
        assert!(!shown.contains(&hex::encode(id.noise_secret())));
        assert!(shown.contains(&hex::encode(id.noise_public())));
    }

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let id = identity(4);
        id.save(dir.path()).unwrap();
        let back = NodeIdentity::load(dir.path()).unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.noise_secret(), id.noise_secret());
        assert_eq!(back.tls_certificate(), id.tls_certificate());
        // Saving what was loaded gives the same files.
        let dir2 = tempfile::tempdir().unwrap();
        back.save(dir2.path()).unwrap();
        for name in [NOISE_KEY_FILE, TLS_KEY_FILE, TLS_CERT_FILE] {
            assert_eq!(
                fs::read(dir.path().join(name)).unwrap(),
                fs::read(dir2.path().join(name)).unwrap(),
                "{name}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn secret_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(TLS_KEY_FILE);
        fs::write(&key, "old").unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        identity(5).save(dir.path()).unwrap();
        for name in [NOISE_KEY_FILE, TLS_KEY_FILE] {
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    fn load_err(dir: &Path) -> String {
        NodeIdentity::load(dir).unwrap_err().to_string()
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_err(dir.path()).contains(NOISE_KEY_FILE));

        identity(6).save(dir.path()).unwrap();
        fs::write(dir.path().join(NOISE_KEY_FILE), "not hex").unwrap();
        assert!(load_err(dir.path()).contains(NOISE_KEY_FILE));

        identity(6).save(dir.path()).unwrap();
        fs::write(dir.path().join(TLS_KEY_FILE), "garbage").unwrap();
        assert!(load_err(dir.path()).contains(TLS_KEY_FILE));

        identity(6).save(dir.path()).unwrap();
        fs::remove_file(dir.path().join(TLS_CERT_FILE)).unwrap();
        assert!(load_err(dir.path()).contains(TLS_CERT_FILE));

        // A certificate from another identity does not match the key.
        let other = tempfile::tempdir().unwrap();
        identity(7).save(other.path()).unwrap();
        identity(6).save(dir.path()).unwrap();
        fs::copy(
            other.path().join(TLS_CERT_FILE),
            dir.path().join(TLS_CERT_FILE),
        )
        .unwrap();
        let err = load_err(dir.path());
        assert!(
            err.contains(TLS_CERT_FILE) && err.contains("does not match"),
            "{err}"
        );
    }

    #[test]
    fn public_identity_display() {
        let p = PublicIdentity {
            noise_key: [0x11; 32],
            tls_key: [0x22; 32],
        };
        assert_eq!(
            p.to_string(),
            format!("noise={} tls={}", "11".repeat(32), "22".repeat(32))
        );
        assert_eq!(
            parse_key_hex(&format!(" {} \n", p.tls_hex())).unwrap(),
            [0x22; 32]
        );
    }
}
