//! ECDSA on P-256 with SHA-256: the server's CertificateVerify signature and the certificate's
//! self-signature, plus the matching verification algorithm (RFC 8446 §4.2.3, §4.4.3; FIPS 186-4 §6;
//! RFC 6979 deterministic nonces; RFC 5480 and RFC 3279 §2.2.3 encodings).
//!
//! Signatures are deterministic (RFC 6979), so signing draws no randomness: a weak or failing random
//! source at signing time cannot leak the key.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use rustls::crypto::SecureRandom;
use rustls::pki_types::{
    alg_id, AlgorithmIdentifier, InvalidSignature, SignatureVerificationAlgorithm,
    SubjectPublicKeyInfoDer,
};
use rustls::sign::{Signer, SigningKey as RustlsSigningKey};
use rustls::{Error, SignatureAlgorithm, SignatureScheme};
use zeroize::Zeroizing;

/// How many times key generation redraws a scalar outside [1, n-1] (each draw fails with probability
/// below 2^-32) before it blames the random source.
const KEYGEN_ATTEMPTS: usize = 8;

/// A P-256 private key generated in memory. It has no export: the scalar never leaves this type (and
/// `p256` wipes it on drop).
#[derive(Clone)]
pub(crate) struct EcdsaP256Key {
    key: Arc<SigningKey>,
    spki: Arc<[u8]>,
}

impl fmt::Debug for EcdsaP256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EcdsaP256Key").finish_non_exhaustive()
    }
}

impl EcdsaP256Key {
    /// A fresh key: a uniformly random scalar in [1, n-1] by rejection sampling (FIPS 186-4 §B.4.2).
    /// `None` when `random` fails or keeps producing out-of-range scalars.
    pub(crate) fn generate(random: &dyn SecureRandom) -> Option<Self> {
        for _ in 0..KEYGEN_ATTEMPTS {
            let mut scalar = Zeroizing::new([0u8; 32]);
            random.fill(&mut scalar[..]).ok()?;
            if let Ok(key) = SigningKey::from_bytes((&*scalar).into()) {
                let spki = super::cert::p256_spki(&public_point(key.verifying_key()));
                return Some(Self {
                    key: Arc::new(key),
                    spki: spki.into(),
                });
            }
        }
        None
    }

    /// The DER SubjectPublicKeyInfo (RFC 5480 §2) of the public key.
    pub(crate) fn spki(&self) -> &[u8] {
        &self.spki
    }

    /// An ECDSA-with-SHA256 signature of `message`, DER-encoded as ECDSA-Sig-Value (RFC 3279 §2.2.3).
    pub(crate) fn sign_der(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let signature: DerSignature = self
            .key
            .try_sign(message)
            .map_err(|_| Error::General("ECDSA signing failed".into()))?;
        Ok(signature.as_bytes().to_vec())
    }
}

/// The uncompressed SEC1 encoding (0x04 || X || Y) of a public key.
fn public_point(key: &VerifyingKey) -> [u8; 65] {
    let encoded = key.to_encoded_point(false);
    let mut point = [0u8; 65];
    // An uncompressed P-256 point is always 65 bytes; copy what is there so a mismatch cannot panic.
    let bytes = encoded.as_bytes();
    let len = bytes.len().min(point.len());
    point[..len].copy_from_slice(&bytes[..len]);
    point
}

impl RustlsSigningKey for EcdsaP256Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

impl Signer for EcdsaP256Key {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        self.sign_der(message)
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// Verification of ecdsa_secp256r1_sha256 signatures: the public key is an uncompressed or compressed SEC1
/// point, the signature DER ECDSA-Sig-Value.
#[derive(Debug)]
pub struct EcdsaP256Sha256Verify;

/// The verification algorithm the provider registers.
pub static ECDSA_P256_SHA256: EcdsaP256Sha256Verify = EcdsaP256Sha256Verify;

impl SignatureVerificationAlgorithm for EcdsaP256Sha256Verify {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key = VerifyingKey::from_sec1_bytes(public_key).map_err(|_| InvalidSignature)?;
        let signature = Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P256
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_SHA256
    }
}
