//! The EK certificate chain: X.509 path validation from the EK certificate up to the runner's CA root.
//!
//! Follows RFC 5280 §6.1 in the subset a TPM EK chain needs: each certificate's issuer name equals the next
//! one's subject (compared as DER), its signature verifies under the next one's key with the algorithm it
//! names (sha256/384/512WithRSAEncryption as RFC 8017 RSASSA-PKCS1-v1_5, or ecdsa-with-SHA256 over P-256,
//! RFC 5758), the inner and outer signature algorithms agree (§4.1.1.2), every certificate is inside its
//! validity period at the time given, and every issuer is a CA (basicConstraints cA, §4.2.1.9). The root is
//! the trust anchor and is taken as it is; intermediates come from the verifier's own files, never from the
//! evidence. swtpm_localca (docs/ARCHITECTURE.md §3) issues EK certificates from a signing CA under a self-signed root, both
//! RSA-3072 with sha256WithRSAEncryption.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use p256::ecdsa::signature::Verifier as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use rsa::{Pkcs1v15Sign, RsaPublicKey};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode as _, DecodePem as _, Encode as _};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

/// Longest chain accepted (EK certificate, intermediates, root).
pub const MAX_CHAIN: usize = 5;

const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

/// Why a certificate chain was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateError {
    /// Not a DER X.509 certificate (or bytes after it).
    Malformed,
    /// No trusted certificate's subject is this certificate's issuer.
    UnknownIssuer,
    /// The signature does not verify under the issuer's key.
    BadSignature,
    /// A signature algorithm or key type this verifier does not accept (SHA-1 among them).
    UnsupportedAlgorithm,
    /// The certificate's signatureAlgorithm and its TBS signature field differ.
    AlgorithmMismatch,
    /// Before notBefore.
    NotYetValid,
    /// After notAfter.
    Expired,
    /// An issuer in the chain is not a CA.
    IssuerNotCa,
    /// More than [`MAX_CHAIN`] certificates.
    ChainTooLong,
}

impl fmt::Display for CertificateError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Malformed => "not a DER X.509 certificate",
            Self::UnknownIssuer => "issued by a CA this verifier does not trust",
            Self::BadSignature => "its signature does not verify under the issuer's key",
            Self::UnsupportedAlgorithm => "signed with an algorithm this verifier refuses",
            Self::AlgorithmMismatch => "its two signature algorithm fields differ",
            Self::NotYetValid => "not valid yet",
            Self::Expired => "expired",
            Self::IssuerNotCa => "an issuer in the chain is not a CA",
            Self::ChainTooLong => "the chain is too long",
        };
        formatter.write_str(text)
    }
}

impl std::error::Error for CertificateError {}

/// The CA certificates the verifier trusts for EK certificates.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    root: Certificate,
    intermediates: Vec<Certificate>,
}

/// What a validated EK certificate said.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertificateSummary {
    /// The EK certificate's subject (RFC 4514; often empty for EK certificates).
    pub subject: String,
    /// Its serial number, hex.
    pub serial: String,
    /// The chain's subjects from the EK certificate's issuer up to the root.
    pub chain: Vec<String>,
    /// The certified RSA modulus, big-endian.
    #[serde(skip)]
    pub modulus: Vec<u8>,
    /// The certified RSA exponent.
    #[serde(skip)]
    pub exponent: u32,
}

impl TrustAnchors {
    /// Anchors from parsed certificates.
    pub fn new(root: Certificate, intermediates: Vec<Certificate>) -> Self {
        Self {
            root,
            intermediates,
        }
    }

    /// Reads a PEM root and PEM intermediates.
    pub fn from_pem_files(root: &Path, intermediates: &[&Path]) -> Result<Self> {
        let read = |path: &Path| -> Result<Certificate> {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            Certificate::from_pem(&text).map_err(|error| {
                anyhow::anyhow!("{} is not a PEM certificate: {error}", path.display())
            })
        };
        Ok(Self::new(
            read(root)?,
            intermediates
                .iter()
                .map(|path| read(path))
                .collect::<Result<_>>()?,
        ))
    }

    /// Validates an EK certificate (DER) against these anchors at time `now`; returns what it certifies.
    ///
    /// # Errors
    ///
    /// [`CertificateError`].
    pub fn verify(
        &self,
        der: &[u8],
        now: SystemTime,
    ) -> Result<CertificateSummary, CertificateError> {
        let leaf = Certificate::from_der(der).map_err(|_| CertificateError::Malformed)?;
        check_validity(&leaf, now)?;
        let mut chain = Vec::new();
        let mut current = &leaf;
        loop {
            if chain.len() + 2 > MAX_CHAIN {
                return Err(CertificateError::ChainTooLong);
            }
            let issuer_name = &current.tbs_certificate.issuer;
            if names_equal(issuer_name, &self.root.tbs_certificate.subject) {
                check_issuer(&self.root, now)?;
                verify_signed_by(current, &self.root)?;
                chain.push(self.root.tbs_certificate.subject.to_string());
                break;
            }
            let issuer = self
                .intermediates
                .iter()
                .find(|candidate| names_equal(issuer_name, &candidate.tbs_certificate.subject))
                .ok_or(CertificateError::UnknownIssuer)?;
            check_issuer(issuer, now)?;
            verify_signed_by(current, issuer)?;
            chain.push(issuer.tbs_certificate.subject.to_string());
            current = issuer;
        }
        let key = rsa_key(&leaf)?;
        let exponent_bytes = key.e().to_bytes_be();
        if exponent_bytes.len() > 4 {
            return Err(CertificateError::UnsupportedAlgorithm);
        }
        let exponent = exponent_bytes
            .iter()
            .fold(0u32, |value, &byte| value << 8 | u32::from(byte));
        Ok(CertificateSummary {
            subject: leaf.tbs_certificate.subject.to_string(),
            serial: crate::digest::hex(leaf.tbs_certificate.serial_number.as_bytes()),
            chain,
            modulus: key.n().to_bytes_be(),
            exponent,
        })
    }
}

fn names_equal(a: &x509_cert::name::Name, b: &x509_cert::name::Name) -> bool {
    match (a.to_der(), b.to_der()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn check_validity(certificate: &Certificate, now: SystemTime) -> Result<(), CertificateError> {
    let validity = &certificate.tbs_certificate.validity;
    if now < validity.not_before.to_system_time() {
        return Err(CertificateError::NotYetValid);
    }
    if now > validity.not_after.to_system_time() {
        return Err(CertificateError::Expired);
    }
    Ok(())
}

/// An issuer must be valid now and carry basicConstraints with cA set.
fn check_issuer(issuer: &Certificate, now: SystemTime) -> Result<(), CertificateError> {
    check_validity(issuer, now)?;
    let is_ca = issuer
        .tbs_certificate
        .extensions
        .iter()
        .flatten()
        .filter(|extension| extension.extn_id == BASIC_CONSTRAINTS)
        .any(|extension| {
            BasicConstraints::from_der(extension.extn_value.as_bytes())
                .map(|constraints| constraints.ca)
                .unwrap_or(false)
        });
    if is_ca {
        Ok(())
    } else {
        Err(CertificateError::IssuerNotCa)
    }
}

fn rsa_key(certificate: &Certificate) -> Result<RsaPublicKey, CertificateError> {
    let spki = certificate
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|_| CertificateError::Malformed)?;
    RsaPublicKey::from_public_key_der(&spki).map_err(|_| CertificateError::UnsupportedAlgorithm)
}

/// Checks `child`'s signature under `issuer`'s public key.
fn verify_signed_by(child: &Certificate, issuer: &Certificate) -> Result<(), CertificateError> {
    if child.signature_algorithm != child.tbs_certificate.signature {
        return Err(CertificateError::AlgorithmMismatch);
    }
    let tbs = child
        .tbs_certificate
        .to_der()
        .map_err(|_| CertificateError::Malformed)?;
    let signature = child
        .signature
        .as_bytes()
        .ok_or(CertificateError::Malformed)?;
    let algorithm = child.signature_algorithm.oid;
    let rsa = |scheme: Pkcs1v15Sign, hashed: &[u8]| -> Result<(), CertificateError> {
        rsa_key(issuer)?
            .verify(scheme, hashed, signature)
            .map_err(|_| CertificateError::BadSignature)
    };
    use rsa::sha2::{Digest as _, Sha256, Sha384, Sha512};
    if algorithm == SHA256_WITH_RSA {
        rsa(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&tbs))
    } else if algorithm == SHA384_WITH_RSA {
        rsa(Pkcs1v15Sign::new::<Sha384>(), &Sha384::digest(&tbs))
    } else if algorithm == SHA512_WITH_RSA {
        rsa(Pkcs1v15Sign::new::<Sha512>(), &Sha512::digest(&tbs))
    } else if algorithm == ECDSA_WITH_SHA256 {
        let spki = issuer
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|_| CertificateError::Malformed)?;
        let key = p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
            .map_err(|_| CertificateError::UnsupportedAlgorithm)?;
        let signature = p256::ecdsa::Signature::from_der(signature)
            .map_err(|_| CertificateError::BadSignature)?;
        key.verify(&tbs, &signature)
            .map_err(|_| CertificateError::BadSignature)
    } else {
        Err(CertificateError::UnsupportedAlgorithm)
    }
}
