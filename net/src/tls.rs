//! Key pinning for rustls: the peer's raw Ed25519 key is its identity.
//!
//! Certificates are self-signed and only carry the key; names, issuers and validity
//! dates are ignored on purpose. What is checked: the certificate parses as X.509, its
//! SubjectPublicKeyInfo is Ed25519, that key is the pinned one, and the peer proves it
//! holds the private key by signing the TLS 1.3 handshake (checked with ring).

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// ALPN protocol id spoken on every Braid link.
pub const ALPN: &[u8] = b"braid/1";

/// DNS suffix of the (never sent) server name that carries the expected key; see
/// [`server_name_for`].
const NAME_SUFFIX: &str = ".braid";

/// The rustls crypto provider used everywhere (ring), installed per config so that no
/// process-wide default is needed.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a certificate's key could not be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The certificate is not valid X.509 DER.
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    /// The SubjectPublicKeyInfo is malformed.
    #[error("malformed SubjectPublicKeyInfo")]
    BadSpki,
    /// The key is not Ed25519 (only Ed25519 identities exist in Braid).
    #[error("certificate key is not Ed25519")]
    NotEd25519,
}

/// Returns the raw 32-byte Ed25519 public key of an X.509 certificate.
///
/// The certificate is parsed by webpki and its SubjectPublicKeyInfo by a strict DER
/// reader; the algorithm must be id-Ed25519 (1.3.101.112) with absent parameters
/// (RFC 8410).
pub fn ed25519_key_of_cert(cert: &CertificateDer<'_>) -> Result<[u8; 32], KeyError> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| KeyError::BadCertificate(format!("{e:?}")))?;
    ed25519_key_of_spki(&ee.subject_public_key_info())
}

/// DER encoding of the OID 1.3.101.112 (id-Ed25519), value bytes only.
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_BIT_STRING: u8 = 0x03;

/// Parses `SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier,
/// subjectPublicKey BIT STRING }` and returns the Ed25519 key.
fn ed25519_key_of_spki(spki: &[u8]) -> Result<[u8; 32], KeyError> {
    let mut outer = Der(spki);
    let mut body = Der(outer.read(TAG_SEQUENCE)?);
    outer.end()?;
    let mut alg = Der(body.read(TAG_SEQUENCE)?);
    let bits = body.read(TAG_BIT_STRING)?;
    body.end()?;
    if alg.read(TAG_OID)? != OID_ED25519 {
        return Err(KeyError::NotEd25519);
    }
    // RFC 8410: parameters MUST be absent for Ed25519.
    alg.end()?;
    // A BIT STRING starts with its count of unused bits, which must be 0 here.
    match bits.split_first() {
        Some((0, key)) => key.try_into().map_err(|_| KeyError::BadSpki),
        _ => Err(KeyError::BadSpki),
    }
}

/// A minimal strict DER reader: definite, minimally encoded lengths only.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// Reads one element with the given tag and returns its contents.
    fn read(&mut self, tag: u8) -> Result<&'a [u8], KeyError> {
        let (&t, rest) = self.0.split_first().ok_or(KeyError::BadSpki)?;
        if t != tag {
            return Err(KeyError::BadSpki);
        }
        let (&first, mut rest) = rest.split_first().ok_or(KeyError::BadSpki)?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            // Long form; an SPKI never needs more than two length bytes.
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 2 {
                return Err(KeyError::BadSpki);
            }
            let (bytes, after) = rest.split_at_checked(n).ok_or(KeyError::BadSpki)?;
            rest = after;
            let len = bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            if bytes[0] == 0 || len < 0x80 {
                return Err(KeyError::BadSpki); // not minimal
            }
            len
        };
        let (value, after) = rest.split_at_checked(len).ok_or(KeyError::BadSpki)?;
        self.0 = after;
        Ok(value)
    }

    /// Fails if anything is left over.
    fn end(&self) -> Result<(), KeyError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(KeyError::BadSpki)
        }
    }
}

/// The set of Ed25519 TLS keys a server accepts from clients.
///
/// A cheap handle: clones share one set, so the node can update the pins (after a
/// directory refresh) and live verifiers see the change on the next handshake.
#[derive(Clone, Default)]
pub struct PinSet {
    keys: Arc<RwLock<HashSet<[u8; 32]>>>,
}

impl PinSet {
    /// An empty set (accepts no client certificate).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key; returns whether it was new.
    pub fn insert(&self, key: [u8; 32]) -> bool {
        self.write().insert(key)
    }

    /// Removes a key; returns whether it was present.
    pub fn remove(&self, key: &[u8; 32]) -> bool {
        self.write().remove(key)
    }

    /// Whether `key` is pinned.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.read().contains(key)
    }

    /// Replaces the whole set at once (no window where it is half updated).
    pub fn replace(&self, keys: impl IntoIterator<Item = [u8; 32]>) {
        let new: HashSet<[u8; 32]> = keys.into_iter().collect();
        *self.write() = new;
    }

    /// Number of pinned keys.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no key is pinned.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // A poisoned lock only means a writer panicked; the set itself is always whole.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<[u8; 32]>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<[u8; 32]>> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl FromIterator<[u8; 32]> for PinSet {
    fn from_iter<I: IntoIterator<Item = [u8; 32]>>(iter: I) -> Self {
        let set = PinSet::new();
        set.replace(iter);
        set
    }
}

impl fmt::Debug for PinSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.read();
        f.debug_set().entries(keys.iter().map(hex::encode)).finish()
    }
}

/// The server name used to dial a node whose TLS key is `key`.
///
/// quinn takes the client config (with our own certificate) from the endpoint, so the
/// per-dial pin travels to the verifier in the server name: 64 hex digits split into two
/// DNS labels, then `.braid`. SNI is disabled, so this name never goes on the wire.
pub(crate) fn server_name_for(key: &[u8; 32]) -> String {
    let hex = hex::encode(key);
    format!("{}.{}{NAME_SUFFIX}", &hex[..32], &hex[32..])
}

/// Inverse of [`server_name_for`].
fn key_from_server_name(name: &ServerName<'_>) -> Option<[u8; 32]> {
    let ServerName::DnsName(dns) = name else {
        return None;
    };
    let labels = dns.as_ref().strip_suffix(NAME_SUFFIX)?;
    let (a, b) = labels.split_once('.')?;
    let mut key = [0u8; 32];
    hex::decode_to_slice(format!("{a}{b}"), &mut key).ok()?;
    Some(key)
}

/// ring's verification algorithms; the verifiers below only ever offer and accept
/// Ed25519 from them.
fn ed25519_algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// The keys a peer's certificate may carry.
enum Pinned<'a> {
    /// Exactly this key: the server a client dialled (from the server name).
    Key(&'a [u8; 32]),
    /// Any key of the set: the clients a server accepts.
    AnyOf(&'a PinSet),
}

impl Pinned<'_> {
    /// Accepts `cert` only if it carries an Ed25519 key that is pinned here; a refused
    /// certificate or key is logged at debug level.
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let key = ed25519_key_of_cert(cert).map_err(|e| {
            tracing::debug!("peer certificate refused: {e}");
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
        })?;
        match self {
            Pinned::Key(expected) if key == **expected => return Ok(()),
            Pinned::AnyOf(set) if set.contains(&key) => return Ok(()),
            Pinned::Key(expected) => tracing::debug!(
                expected = %hex::encode(expected),
                got = %hex::encode(key),
                "server key does not match the pin"
            ),
            Pinned::AnyOf(_) => {
                tracing::debug!(key = %hex::encode(key), "client key is not pinned")
            }
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }
}

/// The three signature methods [`ServerCertVerifier`] and [`ClientCertVerifier`] both
/// declare with the same signatures, written once for both: TLS 1.2 is refused, and the
/// TLS 1.3 handshake signature must be Ed25519, checked with ring (the verifier's
/// `algs`) against the certificate's key.
macro_rules! ed25519_tls13_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2 is not supported".into()))
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            if dss.scheme != SignatureScheme::ED25519 {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::BadSignature,
                ));
            }
            verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            vec![SignatureScheme::ED25519]
        }
    };
}

/// Client side: accepts the server only if its certificate key is the expected one.
///
/// The expected key comes from the server name the connection was dialled with (see
/// [`server_name_for`]); a name that does not carry a key is refused.
#[derive(Debug)]
pub(crate) struct PinnedServerVerifier {
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedServerVerifier {
    pub(crate) fn new() -> Self {
        Self {
            algs: ed25519_algorithms(),
        }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let expected = key_from_server_name(server_name).ok_or_else(|| {
            rustls::Error::General("server name does not carry a pinned key".into())
        })?;
        Pinned::Key(&expected).check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    ed25519_tls13_signatures!();
}

/// Server side: accepts client certificates whose key is in a [`PinSet`].
///
/// With `mandatory == false` a client may also come without any certificate (laptop
/// clients, authenticated later by access token); a certificate that *is* presented
/// must still be pinned.
#[derive(Debug)]
pub(crate) struct PinnedClientVerifier {
    pins: PinSet,
    mandatory: bool,
    /// Unpinned keys pass too (still Ed25519, still proven): the application admits them.
    any_key: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl PinnedClientVerifier {
    pub(crate) fn new(pins: PinSet, mandatory: bool, any_key: bool) -> Self {
        Self {
            pins,
            mandatory,
            any_key,
            algs: ed25519_algorithms(),
        }
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.any_key {
            ed25519_key_of_cert(end_entity).map_err(|e| {
                tracing::debug!("peer certificate refused: {e}");
                rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
            })?;
        } else {
            Pinned::AnyOf(&self.pins).check(end_entity)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    ed25519_tls13_signatures!();
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Ed25519 SPKI from RFC 8410 §10.1.
    const RFC8410_SPKI: [u8; 44] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 0x19, 0xbf, 0x44,
        0x09, 0x69, 0x84, 0xcd, 0xfe, 0x85, 0x41, 0xba, 0xc1, 0x67, 0xdc, 0x3b, 0x96, 0xc8, 0x50,
        0x86, 0xaa, 0x30, 0xb6, 0xb6, 0xcb, 0x0c, 0x5c, 0x38, 0xad, 0x70, 0x31, 0x66, 0xe1,
    ];

    #[test]
    fn parses_rfc8410_spki() {
        let key = ed25519_key_of_spki(&RFC8410_SPKI).unwrap();
        assert_eq!(key[..], RFC8410_SPKI[12..]);
    }

    #[test]
    fn rejects_other_algorithms_and_garbage() {
        let mut x25519 = RFC8410_SPKI;
        x25519[8] = 0x6e; // 1.3.101.110 = X25519
        assert_eq!(ed25519_key_of_spki(&x25519), Err(KeyError::NotEd25519));

        let mut trailing = RFC8410_SPKI.to_vec();
        trailing.push(0);
        assert_eq!(ed25519_key_of_spki(&trailing), Err(KeyError::BadSpki));

        assert_eq!(
            ed25519_key_of_spki(&RFC8410_SPKI[..43]),
            Err(KeyError::BadSpki)
        );

        let mut unused_bits = RFC8410_SPKI;
        unused_bits[11] = 1;
        assert_eq!(ed25519_key_of_spki(&unused_bits), Err(KeyError::BadSpki));

        assert!(ed25519_key_of_cert(&CertificateDer::from(vec![0x30, 0x00])).is_err());
    }

    #[test]
    fn server_name_round_trips_the_key() {
        let key = [0xa5; 32];
        let name = ServerName::try_from(server_name_for(&key)).unwrap();
        assert_eq!(key_from_server_name(&name), Some(key));
        let other = ServerName::try_from("braid").unwrap();
        assert_eq!(key_from_server_name(&other), None);
    }

    #[test]
    fn pin_set_clones_share_state() {
        let a = PinSet::new();
        let b = a.clone();
        assert!(a.insert([1; 32]));
        assert!(b.contains(&[1; 32]));
        b.replace([[2; 32]]);
        assert!(!a.contains(&[1; 32]));
        assert_eq!(a.len(), 1);
        assert!(a.remove(&[2; 32]));
        assert!(a.is_empty());
    }
}
