//! The appliance's TLS identity: a P-256 key generated in memory at boot and a minimal self-signed X.509 v3
//! certificate for it, written as DER here (RFC 5280 §4.1, X.690 DER, RFC 5480 §2, RFC 5758 §3.2).
//!
//! Clients accept this certificate only through attestation (docs/ARCHITECTURE.md §4): the quote binds the SHA-256 of
//! the SubjectPublicKeyInfo, so names, dates and issuer carry no trust and are fixed values. The key
//! never leaves memory; only the certificate and the public key are exposed.

use alloc::sync::Arc;
use alloc::vec::Vec;

use rustls::crypto::SecureRandom;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::sign::EcdsaP256Key;

/// The certificate's subject and issuer common name.
pub const CERTIFICATE_COMMON_NAME: &str = "cloister appliance";

// X.690 tags (universal class unless noted).
const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_UTF8_STRING: u8 = 0x0c;
const TAG_UTC_TIME: u8 = 0x17;
const TAG_GENERALIZED_TIME: u8 = 0x18;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
/// `[0] EXPLICIT` (context-specific, constructed): TBSCertificate.version.
const TAG_CONTEXT_0: u8 = 0xa0;
/// `[3] EXPLICIT`: TBSCertificate.extensions.
const TAG_CONTEXT_3: u8 = 0xa3;

// Object identifier contents (X.690 §8.19), without tag and length.
/// id-ecPublicKey, 1.2.840.10045.2.1 (RFC 5480 §2.1.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1, 1.2.840.10045.3.1.7 (RFC 5480 §2.1.1.1).
const OID_SECP256R1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// ecdsa-with-SHA256, 1.2.840.10045.4.3.2 (RFC 5758 §3.2; parameters absent).
const OID_ECDSA_WITH_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
/// id-at-commonName, 2.5.4.3.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
/// id-ce-basicConstraints, 2.5.29.19 (RFC 5280 §4.2.1.9).
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
/// id-ce-keyUsage, 2.5.29.15 (RFC 5280 §4.2.1.3).
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];

/// notBefore: the Unix epoch as UTCTime (RFC 5280 §4.1.2.5.1: years before 2050 are UTCTime). The appliance
/// has no trusted clock, and validity carries no trust here.
const NOT_BEFORE: &[u8] = b"700101000000Z";
/// notAfter: "no well-defined expiration date" (RFC 5280 §4.1.2.5).
const NOT_AFTER: &[u8] = b"99991231235959Z";

/// The appliance's key pair and certificate, generated once per boot.
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    key: EcdsaP256Key,
    certificate: Vec<u8>,
    spki_sha256: [u8; 32],
}

/// Why an identity could not be generated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentityError {
    /// The random source failed (or produced out-of-range scalars eight times running).
    Random,
    /// Signing the certificate failed.
    Signing,
}

impl ServerIdentity {
    /// A fresh P-256 key from `random` and a self-signed certificate for it. The serial number is 16
    /// random bytes (RFC 5280 §4.1.2.2: positive, at most 20 octets).
    pub fn generate(random: &dyn SecureRandom) -> Result<Self, IdentityError> {
        let key = EcdsaP256Key::generate(random).ok_or(IdentityError::Random)?;
        let mut serial = [0u8; 16];
        random
            .fill(&mut serial)
            .map_err(|_| IdentityError::Random)?;
        // Top bit clear (positive) and the next one set (the first octet is never 0x00, so the encoding is
        // minimal as DER requires).
        serial[0] = (serial[0] & 0x7f) | 0x40;

        let tbs = tbs_certificate(&serial, key.spki());
        let signature = key.sign_der(&tbs).map_err(|_| IdentityError::Signing)?;
        let mut signature_bits = Vec::with_capacity(signature.len() + 1);
        signature_bits.push(0); // No unused bits in the last octet.
        signature_bits.extend_from_slice(&signature);

        let mut body = tbs;
        body.extend_from_slice(&ecdsa_with_sha256());
        body.extend_from_slice(&tlv(TAG_BIT_STRING, &signature_bits));
        let certificate = tlv(TAG_SEQUENCE, &body);
        let spki_sha256 = Sha256::digest(key.spki()).into();
        Ok(Self {
            key,
            certificate,
            spki_sha256,
        })
    }

    /// The certificate, DER.
    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate
    }

    /// The certificate's SubjectPublicKeyInfo, DER (RFC 5480 §2): what the attestation binds.
    pub fn spki_der(&self) -> &[u8] {
        self.key.spki()
    }

    /// SHA-256 of [`Self::spki_der`] (docs/ARCHITECTURE.md §4: part of the quote's extraData).
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.spki_sha256
    }

    /// The certificate and key in the form rustls serves them.
    pub(crate) fn certified_key(&self) -> CertifiedKey {
        CertifiedKey::new(
            alloc::vec![CertificateDer::from(self.certificate.clone())],
            Arc::new(self.key.clone()),
        )
    }
}

/// The SubjectPublicKeyInfo of a P-256 public key given as an uncompressed SEC1 point (RFC 5480 §2).
pub(crate) fn p256_spki(point: &[u8; 65]) -> Vec<u8> {
    let mut algorithm = tlv(TAG_OID, OID_EC_PUBLIC_KEY);
    algorithm.extend_from_slice(&tlv(TAG_OID, OID_SECP256R1));
    let mut key_bits = Vec::with_capacity(66);
    key_bits.push(0); // No unused bits.
    key_bits.extend_from_slice(point);
    let mut body = tlv(TAG_SEQUENCE, &algorithm);
    body.extend_from_slice(&tlv(TAG_BIT_STRING, &key_bits));
    tlv(TAG_SEQUENCE, &body)
}

/// TBSCertificate (RFC 5280 §4.1): v3, serial, ecdsa-with-SHA256, issuer = subject = CN, fixed validity,
/// the key, and two critical extensions: basicConstraints cA=FALSE and keyUsage digitalSignature.
fn tbs_certificate(serial: &[u8], spki: &[u8]) -> Vec<u8> {
    let name = common_name();
    let mut validity = tlv(TAG_UTC_TIME, NOT_BEFORE);
    validity.extend_from_slice(&tlv(TAG_GENERALIZED_TIME, NOT_AFTER));

    let mut body = tlv(TAG_CONTEXT_0, &tlv(TAG_INTEGER, &[2])); // version v3 (value 2)
    body.extend_from_slice(&tlv(TAG_INTEGER, serial));
    body.extend_from_slice(&ecdsa_with_sha256());
    body.extend_from_slice(&name);
    body.extend_from_slice(&tlv(TAG_SEQUENCE, &validity));
    body.extend_from_slice(&name);
    body.extend_from_slice(spki);
    body.extend_from_slice(&tlv(TAG_CONTEXT_3, &tlv(TAG_SEQUENCE, &extensions())));
    tlv(TAG_SEQUENCE, &body)
}

/// basicConstraints (empty SEQUENCE: cA defaults to FALSE) and keyUsage with only digitalSignature
/// (bit 0: BIT STRING 07 80, seven unused bits), both critical.
fn extensions() -> Vec<u8> {
    let mut out = extension(OID_BASIC_CONSTRAINTS, &tlv(TAG_SEQUENCE, &[]));
    out.extend_from_slice(&extension(
        OID_KEY_USAGE,
        &tlv(TAG_BIT_STRING, &[0x07, 0x80]),
    ));
    out
}

/// Extension ::= SEQUENCE { extnID, critical TRUE, extnValue OCTET STRING }.
fn extension(oid: &[u8], value: &[u8]) -> Vec<u8> {
    let mut body = tlv(TAG_OID, oid);
    body.extend_from_slice(&tlv(TAG_BOOLEAN, &[0xff]));
    body.extend_from_slice(&tlv(TAG_OCTET_STRING, value));
    tlv(TAG_SEQUENCE, &body)
}

/// Name ::= SEQUENCE OF SET OF AttributeTypeAndValue, with one commonName.
fn common_name() -> Vec<u8> {
    let mut attribute = tlv(TAG_OID, OID_COMMON_NAME);
    attribute.extend_from_slice(&tlv(TAG_UTF8_STRING, CERTIFICATE_COMMON_NAME.as_bytes()));
    tlv(TAG_SEQUENCE, &tlv(TAG_SET, &tlv(TAG_SEQUENCE, &attribute)))
}

/// AlgorithmIdentifier for ecdsa-with-SHA256 with the parameters field absent (RFC 5758 §3.2).
fn ecdsa_with_sha256() -> Vec<u8> {
    tlv(TAG_SEQUENCE, &tlv(TAG_OID, OID_ECDSA_WITH_SHA256))
}

/// One DER tag-length-value with a definite, minimal length (X.690 §8.1.3, §10.1).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let len_bytes = (len as u64).to_be_bytes();
        let skip = len_bytes.iter().take_while(|&&byte| byte == 0).count();
        out.push(0x80 | (len_bytes.len() - skip) as u8);
        out.extend_from_slice(&len_bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_lengths_are_minimal() {
        assert_eq!(tlv(0x04, &[]), [0x04, 0x00]);
        assert_eq!(tlv(0x04, &[0; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[0; 0xff])[..3], [0x04, 0x81, 0xff]);
        assert_eq!(tlv(0x04, &[0; 0x100])[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(
            tlv(0x04, &[0; 0x1_0000])[..5],
            [0x04, 0x83, 0x01, 0x00, 0x00]
        );
    }

    #[test]
    fn spki_has_the_rfc5480_prefix() {
        let mut point = [0x11u8; 65];
        point[0] = 0x04;
        let spki = p256_spki(&point);
        // The 26-byte header every P-256 SPKI shares (RFC 5480 §2 with id-ecPublicKey, secp256r1).
        let prefix = [
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        assert_eq!(spki.len(), 91);
        assert_eq!(spki[..26], prefix);
        assert_eq!(spki[26..], point);
    }
}
