//! The rustls `CryptoProvider` assembled from RustCrypto crates: TLS 1.3 suites, SHA-256/HMAC, X25519, ECDSA
//! P-256, and randomness from a caller-supplied fill function (docs/ARCHITECTURE.md §2, RFC 8446 §9.1).
//!
//! RFC 8446 §9.1 makes TLS_AES_128_GCM_SHA256, ecdsa_secp256r1_sha256 and secp256r1 key exchange mandatory to
//! implement; we offer AES-128-GCM and ChaCha20-Poly1305 (both SHA-256 suites) with X25519, which every
//! client we talk to (rustls, OpenSSL) supports. Nothing here reads a clock or an OS random source: every
//! random byte comes from the [`SecureRandom`] the kernel hands in (its DRBG), per STYLE 3.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec;
use core::fmt;

use hmac::{Hmac, Mac};
use rustls::crypto::hash::{Context, Hash, HashAlgorithm, Output};
use rustls::crypto::tls13::HkdfUsingHmac;
use rustls::crypto::{
    hmac as rustls_hmac, CipherSuiteCommon, CryptoProvider, GetRandomFailed, KeyProvider,
    SecureRandom, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{PrivateKeyDer, UnixTime};
use rustls::sign::SigningKey as RustlsSigningKey;
use rustls::time_provider::TimeProvider;
use rustls::{CipherSuite, Error, SignatureScheme, SupportedCipherSuite, Tls13CipherSuite};
use sha2::{Digest, Sha256};

use super::aead::{AES_128_GCM, CHACHA20_POLY1305};
use super::kx::X25519;
use super::sign::ECDSA_P256_SHA256;

/// rustls' [`SecureRandom`] over a plain function that fills a buffer, e.g. from the kernel's DRBG.
///
/// The function returns `false` when it cannot produce random bytes (the DRBG is unseeded or failed); the
/// handshake then fails with a typed error instead of using weak randomness. A `fn` pointer is `'static`,
/// `Send` and `Sync`, so the kernel can keep one in a `static` and pass `&STATIC` to [`crypto_provider`].
#[derive(Clone, Copy)]
pub struct RandomFn(pub fn(&mut [u8]) -> bool);

impl fmt::Debug for RandomFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RandomFn")
    }
}

impl SecureRandom for RandomFn {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        if (self.0)(buf) {
            Ok(())
        } else {
            Err(GetRandomFailed)
        }
    }
}

/// SHA-256 for the transcript hash (RFC 8446 §4.4.1).
pub(crate) struct Sha256Hash;

impl Hash for Sha256Hash {
    fn start(&self) -> Box<dyn Context> {
        Box::new(Sha256Context(Sha256::new()))
    }

    fn hash(&self, data: &[u8]) -> Output {
        Output::new(&Sha256::digest(data))
    }

    fn output_len(&self) -> usize {
        32
    }

    fn algorithm(&self) -> HashAlgorithm {
        HashAlgorithm::SHA256
    }
}

struct Sha256Context(Sha256);

impl Context for Sha256Context {
    fn fork_finish(&self) -> Output {
        Output::new(&self.0.clone().finalize())
    }

    fn fork(&self) -> Box<dyn Context> {
        Box::new(Sha256Context(self.0.clone()))
    }

    fn finish(self: Box<Self>) -> Output {
        Output::new(&self.0.finalize())
    }

    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

/// HMAC-SHA256 (RFC 2104), from which rustls' [`HkdfUsingHmac`] builds HKDF (RFC 5869).
pub(crate) struct HmacSha256;

/// A keyed HMAC-SHA256 state, cloned for every tag.
struct HmacSha256Key(Hmac<Sha256>);

/// HMAC-SHA256 keyed with `key`. HMAC accepts keys of every length (RFC 2104 §2: longer keys are hashed,
/// shorter ones padded), so the `hmac` crate's length check never fails.
pub(crate) fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    #[allow(
        clippy::expect_used,
        reason = "unreachable, see the doc comment; no input can trigger it"
    )]
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

impl rustls_hmac::Hmac for HmacSha256 {
    fn with_key(&self, key: &[u8]) -> Box<dyn rustls_hmac::Key> {
        Box::new(HmacSha256Key(hmac_sha256(key)))
    }

    fn hash_output_len(&self) -> usize {
        32
    }
}

impl rustls_hmac::Key for HmacSha256Key {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> rustls_hmac::Tag {
        let mut mac = self.0.clone();
        mac.update(first);
        for part in middle {
            mac.update(part);
        }
        mac.update(last);
        rustls_hmac::Tag::new(&mac.finalize().into_bytes())
    }

    fn tag_len(&self) -> usize {
        32
    }
}

static HMAC_SHA256: HmacSha256 = HmacSha256;
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);

/// TLS_AES_128_GCM_SHA256 (RFC 8446 §B.4).
pub static TLS13_AES_128_GCM_SHA256: SupportedCipherSuite =
    SupportedCipherSuite::Tls13(&Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: CipherSuite::TLS13_AES_128_GCM_SHA256,
            hash_provider: &Sha256Hash,
            // 2^24 full-size records per key keeps the distinguishing advantage below 2^-60
            // (draft-irtf-cfrg-aead-limits §5.1.1); rustls updates the key before that.
            confidentiality_limit: 1 << 24,
        },
        hkdf_provider: &HKDF_SHA256,
        aead_alg: &AES_128_GCM,
        quic: None,
    });

/// TLS_CHACHA20_POLY1305_SHA256 (RFC 8446 §B.4).
pub static TLS13_CHACHA20_POLY1305_SHA256: SupportedCipherSuite =
    SupportedCipherSuite::Tls13(&Tls13CipherSuite {
        common: CipherSuiteCommon {
            suite: CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            hash_provider: &Sha256Hash,
            // ChaCha20-Poly1305 has no practical confidentiality limit (draft-irtf-cfrg-aead-limits §5.2.1).
            confidentiality_limit: u64::MAX,
        },
        hkdf_provider: &HKDF_SHA256,
        aead_alg: &CHACHA20_POLY1305,
        quic: None,
    });

/// Signature verification rustls may need (only for client certificates, which the appliance does not
/// request): ECDSA P-256 with SHA-256.
pub static SUPPORTED_SIGNATURE_ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[&ECDSA_P256_SHA256],
    mapping: &[(
        SignatureScheme::ECDSA_NISTP256_SHA256,
        &[&ECDSA_P256_SHA256],
    )],
};

/// Refuses every externally supplied private key: the appliance's only key is generated in memory at boot
/// (see [`super::cert::ServerIdentity`]) and never arrives as DER from anywhere.
#[derive(Debug)]
struct NoKeyImport;

impl KeyProvider for NoKeyImport {
    fn load_private_key(
        &self,
        _key_der: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn RustlsSigningKey>, Error> {
        Err(Error::General(
            "private keys are generated in the appliance, not imported".into(),
        ))
    }
}

static NO_KEY_IMPORT: NoKeyImport = NoKeyImport;

/// The provider: both suites, X25519, ECDSA P-256 verification, and `random` for every random byte.
///
/// Building one leaks one small allocation (the X25519 group holding `random`, which rustls needs as
/// `&'static`); build one per boot, not per connection.
pub fn crypto_provider(random: &'static dyn SecureRandom) -> CryptoProvider {
    CryptoProvider {
        cipher_suites: vec![TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256],
        kx_groups: vec![Box::leak(Box::new(X25519 { random }))],
        signature_verification_algorithms: SUPPORTED_SIGNATURE_ALGORITHMS,
        secure_random: random,
        key_provider: &NO_KEY_IMPORT,
    }
}

/// rustls' clock for a server that has none.
///
/// rustls asks for the time only to judge the age of a resumption ticket (RFC 8446 §4.6.1) and to check
/// client certificates; the appliance issues no tickets, keeps no session cache and requests no client
/// certificate, so no decision depends on the value. It reports the Unix epoch rather than `None` so that a
/// client offering a stale PSK falls back to a full handshake instead of failing with
/// `FailedToGetCurrentTime`.
#[derive(Debug)]
pub struct NoClock;

impl TimeProvider for NoClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(core::time::Duration::ZERO))
    }
}
