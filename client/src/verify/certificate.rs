//! The EK certificate chain: X.509 path validation from the EK certificate up to one of the verifier's trust
//! anchors.
//!
//! Follows RFC 5280 §6.1 in the subset a TPM EK chain needs: each certificate's issuer name equals the next
//! one's subject (compared as DER), its signature verifies under the next one's key with the algorithm it
//! names (sha256/384/512WithRSAEncryption as RFC 8017 RSASSA-PKCS1-v1_5, or ecdsa-with-SHA256 over P-256,
//! RFC 5758), the inner and outer signature algorithms agree (§4.1.1.2), every certificate is inside its
//! validity period at the time given, every issuer is a CA (basicConstraints cA, §4.2.1.9) whose keyUsage, when
//! present, allows keyCertSign (§4.2.1.3, §6.1.4 (n)) and whose pathLenConstraint admits the CA certificates
//! below it (§4.2.1.9, §6.1.4 (l)-(m)), and no certificate below the anchor carries a critical extension this
//! verifier does not understand (§4.2, §6.1.4 (o)). The EK certificate itself must carry the extended key usage
//! tcg-kp-EKCertificate (2.23.133.8.1; TCG EK Credential Profile for TPM Family 2.0, §3.2.16).
//!
//! The anchors are a bundle ([`TrustAnchors::from_pem_bundle`]): several self-signed roots and intermediates
//! from PEM files, so swtpm's local CA, a TPM vendor's and a cloud's CA can be trusted side by side. CAs with
//! the same name are all tried. Intermediates come from the verifier's own files, never from the evidence.
//! swtpm_localca (docs/ARCHITECTURE.md §3) issues EK certificates from a signing CA under a self-signed root,
//! both RSA-3072 with sha256WithRSAEncryption.

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
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use x509_cert::Certificate;

/// Longest chain accepted (EK certificate, intermediates, root).
pub const MAX_CHAIN: usize = 5;

const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const SHA384_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const SHA512_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const EXTENDED_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
const SUBJECT_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.14");
const AUTHORITY_KEY_IDENTIFIER: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.35");
const SUBJECT_DIRECTORY_ATTRIBUTES: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.9");

/// tcg-kp-EKCertificate: the extended key usage that marks an EK certificate (TCG EK Credential Profile for
/// TPM Family 2.0, §3.2.16; TCG OIDs 2.23.133.8.1).
pub const EK_CERTIFICATE_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.23.133.8.1");

/// The extensions this verifier understands and so accepts when marked critical: the ones it checks
/// (basicConstraints, keyUsage, extendedKeyUsage) and the ones whose content does not change what the chain
/// proves here (names and key identifiers; the TCG EK profile marks subjectAltName critical when the subject is
/// empty, and puts the TPM's specification level in subjectDirectoryAttributes). Anything else marked critical,
/// certificatePolicies and nameConstraints among them (this verifier does no policy or name-constraint
/// processing), is refused.
const UNDERSTOOD_EXTENSIONS: [ObjectIdentifier; 7] = [
    BASIC_CONSTRAINTS,
    KEY_USAGE,
    EXTENDED_KEY_USAGE,
    SUBJECT_ALT_NAME,
    SUBJECT_KEY_IDENTIFIER,
    AUTHORITY_KEY_IDENTIFIER,
    SUBJECT_DIRECTORY_ATTRIBUTES,
];

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
    /// An issuer's keyUsage extension is present and lacks keyCertSign.
    IssuerMayNotSignCertificates,
    /// An issuer's pathLenConstraint is smaller than the number of CA certificates below it.
    PathLengthExceeded,
    /// A certificate below the trust anchor marks an extension critical that this verifier does not understand.
    UnknownCriticalExtension(ObjectIdentifier),
    /// The EK certificate does not carry the extended key usage tcg-kp-EKCertificate.
    NotAnEkCertificate,
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
            Self::IssuerMayNotSignCertificates => {
                "an issuer in the chain has a key usage that does not allow signing certificates"
            }
            Self::PathLengthExceeded => {
                "an issuer's path length constraint does not allow the CAs below it"
            }
            Self::UnknownCriticalExtension(oid) => {
                return write!(
                    formatter,
                    "it marks an extension this verifier does not understand ({oid}) as critical"
                )
            }
            Self::NotAnEkCertificate => {
                "it lacks the extended key usage of an EK certificate (tcg-kp-EKCertificate, 2.23.133.8.1)"
            }
            Self::ChainTooLong => "the chain is too long",
        };
        formatter.write_str(text)
    }
}

impl std::error::Error for CertificateError {}

/// The CA certificates the verifier trusts for EK certificates: self-signed roots (the trust anchors) and the
/// intermediates that may sit between them and an EK certificate.
#[derive(Clone, Debug)]
pub struct TrustAnchors {
    roots: Vec<Certificate>,
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
    /// Anchors from one root and its intermediates.
    pub fn new(root: Certificate, intermediates: Vec<Certificate>) -> Self {
        Self {
            roots: vec![root],
            intermediates,
        }
    }

    /// A bundle: every self-signed certificate (subject equals issuer and its signature verifies under its own
    /// key) becomes a root, every other one an intermediate.
    ///
    /// # Errors
    ///
    /// When no certificate is a self-signed root: nothing could end a chain.
    pub fn from_certificates(certificates: Vec<Certificate>) -> Result<Self> {
        let (roots, intermediates): (Vec<_>, Vec<_>) =
            certificates.into_iter().partition(is_self_signed);
        if roots.is_empty() {
            anyhow::bail!(
                "none of the EK CA certificates is a self-signed root: add the root CA's certificate \
                 (another --ek-ca file) as well as its intermediates"
            );
        }
        Ok(Self {
            roots,
            intermediates,
        })
    }

    /// Reads a bundle from PEM files, each holding one or more certificates (`--ek-ca`, repeatable).
    ///
    /// # Errors
    ///
    /// An unreadable file, one with no PEM certificate in it, or no self-signed root among them all.
    pub fn from_pem_bundle(files: &[&Path]) -> Result<Self> {
        let mut certificates = Vec::new();
        for path in files {
            let text =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let found = Certificate::load_pem_chain(&text).map_err(|error| {
                anyhow::anyhow!(
                    "{} does not hold PEM certificates (-----BEGIN CERTIFICATE-----): {error}",
                    path.display()
                )
            })?;
            if found.is_empty() {
                anyhow::bail!("{} holds no PEM certificate", path.display());
            }
            certificates.extend(found);
        }
        Self::from_certificates(certificates)
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

    /// How many roots and intermediates the bundle holds.
    pub fn counts(&self) -> (usize, usize) {
        (self.roots.len(), self.intermediates.len())
    }

    /// Validates an EK certificate (DER) against these anchors at time `now`; returns what it certifies.
    ///
    /// # Errors
    ///
    /// [`CertificateError`]. When several CAs carry the issuer's name and none leads to a root, the error is the
    /// first candidate's.
    pub fn verify(
        &self,
        der: &[u8],
        now: SystemTime,
    ) -> Result<CertificateSummary, CertificateError> {
        let leaf = Certificate::from_der(der).map_err(|_| CertificateError::Malformed)?;
        check_validity(&leaf, now)?;
        check_critical_extensions(&leaf)?;
        if !has_ek_usage(&leaf) {
            return Err(CertificateError::NotAnEkCertificate);
        }
        let chain = self.path_to_root(&leaf, &mut Vec::new(), now)?;
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
            chain: chain
                .iter()
                .map(|issuer| issuer.tbs_certificate.subject.to_string())
                .collect(),
            modulus: key.n().to_bytes_be(),
            exponent,
        })
    }

    /// Depth-first search for a path from `current` to a root. `below` holds the issuers already chosen between
    /// the EK certificate and `current` (intermediates only); returns the issuers from `current`'s up to the root.
    fn path_to_root<'a>(
        &'a self,
        current: &Certificate,
        below: &mut Vec<&'a Certificate>,
        now: SystemTime,
    ) -> Result<Vec<&'a Certificate>, CertificateError> {
        // The EK certificate, the intermediates so far, this issuer: MAX_CHAIN in all.
        if below.len() + 2 > MAX_CHAIN {
            return Err(CertificateError::ChainTooLong);
        }
        let issuer_name = &current.tbs_certificate.issuer;
        let named = |candidate: &&'a Certificate| {
            names_equal(issuer_name, &candidate.tbs_certificate.subject)
        };
        let mut first_error = None;
        for root in self.roots.iter().filter(named) {
            match check_issuer(root, below, now).and_then(|()| verify_signed_by(current, root)) {
                Ok(()) => return Ok(vec![root]),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        for issuer in self.intermediates.iter().filter(named) {
            // A certificate appears at most once in a path.
            if below.iter().any(|seen| std::ptr::eq(*seen, issuer)) {
                continue;
            }
            let step = check_issuer(issuer, below, now)
                .and_then(|()| check_critical_extensions(issuer))
                .and_then(|()| verify_signed_by(current, issuer));
            if let Err(error) = step {
                first_error.get_or_insert(error);
                continue;
            }
            below.push(issuer);
            let rest = self.path_to_root(issuer, below, now);
            below.pop();
            match rest {
                Ok(mut path) => {
                    path.insert(0, issuer);
                    return Ok(path);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Err(first_error.unwrap_or(CertificateError::UnknownIssuer))
    }
}

/// Subject equals issuer and the signature verifies under the certificate's own key.
fn is_self_signed(certificate: &Certificate) -> bool {
    names_equal(
        &certificate.tbs_certificate.subject,
        &certificate.tbs_certificate.issuer,
    ) && verify_signed_by(certificate, certificate).is_ok()
}

fn extensions(certificate: &Certificate) -> impl Iterator<Item = &x509_cert::ext::Extension> {
    certificate.tbs_certificate.extensions.iter().flatten()
}

/// RFC 5280 §4.2: a certificate with a critical extension the verifier does not process must be rejected.
fn check_critical_extensions(certificate: &Certificate) -> Result<(), CertificateError> {
    match extensions(certificate)
        .find(|extension| extension.critical && !UNDERSTOOD_EXTENSIONS.contains(&extension.extn_id))
    {
        Some(extension) => Err(CertificateError::UnknownCriticalExtension(
            extension.extn_id,
        )),
        None => Ok(()),
    }
}

/// The EK certificate's extendedKeyUsage names tcg-kp-EKCertificate.
fn has_ek_usage(certificate: &Certificate) -> bool {
    extensions(certificate)
        .filter(|extension| extension.extn_id == EXTENDED_KEY_USAGE)
        .any(|extension| {
            ExtendedKeyUsage::from_der(extension.extn_value.as_bytes())
                .map(|usage| usage.0.contains(&EK_CERTIFICATE_USAGE))
                .unwrap_or(false)
        })
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

/// An issuer must be valid now, carry basicConstraints with cA set and a pathLenConstraint (if any) no smaller
/// than the number of CA certificates between it and the EK certificate that are not self-issued (RFC 5280
/// §6.1.4 (l)-(m)), and, when it has a keyUsage extension, allow keyCertSign (§6.1.4 (n)).
fn check_issuer(
    issuer: &Certificate,
    below: &[&Certificate],
    now: SystemTime,
) -> Result<(), CertificateError> {
    check_validity(issuer, now)?;
    let mut constraints = None;
    for extension in extensions(issuer) {
        if extension.extn_id == BASIC_CONSTRAINTS {
            let parsed = BasicConstraints::from_der(extension.extn_value.as_bytes())
                .map_err(|_| CertificateError::Malformed)?;
            constraints = Some(parsed);
        } else if extension.extn_id == KEY_USAGE {
            let usage = KeyUsage::from_der(extension.extn_value.as_bytes())
                .map_err(|_| CertificateError::Malformed)?;
            if !usage.key_cert_sign() {
                return Err(CertificateError::IssuerMayNotSignCertificates);
            }
        }
    }
    let constraints = match constraints {
        Some(constraints) if constraints.ca => constraints,
        _ => return Err(CertificateError::IssuerNotCa),
    };
    if let Some(limit) = constraints.path_len_constraint {
        let counted = below
            .iter()
            .filter(|ca| !names_equal(&ca.tbs_certificate.subject, &ca.tbs_certificate.issuer))
            .count();
        if counted > usize::from(limit) {
            return Err(CertificateError::PathLengthExceeded);
        }
    }
    Ok(())
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
