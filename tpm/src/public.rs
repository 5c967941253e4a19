//! Public areas (TPMT_PUBLIC): cloister's two key templates, object names, and reading keys out of public areas.
//!
//! Templates: the EK is the TCG EK Credential Profile 2.x default RSA-2048 template ("Template L-1": RSA 2048,
//! SHA-256, AES-128-CFB, attributes fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted |
//! decrypt, policy = PolicySecret(TPM_RH_ENDORSEMENT), unique = 256 zero bytes). The AK is a restricted ECC
//! NIST P-256 signing key, ECDSA-SHA256, SHA-256 name, fixedTPM | fixedParent | sensitiveDataOrigin |
//! userWithAuth | restricted | sign (docs/ARCHITECTURE.md §4). Names follow Part 1 §16: nameAlg ‖ H_nameAlg(TPMT_PUBLIC).

use sha2::{Digest as _, Sha256};
use tpm2_protocol::basic::{TpmBuffer, TpmUint16, TpmUint32};
use tpm2_protocol::data::{
    Tpm2bDigest, TpmAlgId, TpmEccCurve, TpmaObject, TpmsEccParms, TpmsEccPoint, TpmsRsaParms,
    TpmsSchemeHash, TpmtEccScheme, TpmtKdfScheme, TpmtPublic, TpmtRsaScheme, TpmtSymDef,
    TpmuAsymScheme, TpmuPublicId, TpmuPublicParms, TpmuSymKeyBits, TpmuSymMode,
};
use tpm2_protocol::{TpmMarshal, TpmUnmarshal, TpmWriter};

/// TPM_ALG_RSA.
pub const TPM_ALG_RSA: u16 = 0x0001;
/// TPM_ALG_SHA1 (refused by the verifier, listed so it can say so).
pub const TPM_ALG_SHA1: u16 = 0x0004;
/// TPM_ALG_SHA256.
pub const TPM_ALG_SHA256: u16 = 0x000B;
/// TPM_ALG_NULL.
pub const TPM_ALG_NULL: u16 = 0x0010;
/// TPM_ALG_ECDSA.
pub const TPM_ALG_ECDSA: u16 = 0x0018;
/// TPM_ALG_ECC.
pub const TPM_ALG_ECC: u16 = 0x0023;
/// TPM_ECC_NIST_P256.
pub const TPM_ECC_NIST_P256: u16 = 0x0003;

/// TPMA_OBJECT bits (Part 2 §8.3).
pub mod attributes {
    /// fixedTPM.
    pub const FIXED_TPM: u32 = 0x0000_0002;
    /// fixedParent.
    pub const FIXED_PARENT: u32 = 0x0000_0010;
    /// sensitiveDataOrigin.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 0x0000_0020;
    /// userWithAuth.
    pub const USER_WITH_AUTH: u32 = 0x0000_0040;
    /// adminWithPolicy.
    pub const ADMIN_WITH_POLICY: u32 = 0x0000_0080;
    /// restricted.
    pub const RESTRICTED: u32 = 0x0001_0000;
    /// decrypt.
    pub const DECRYPT: u32 = 0x0002_0000;
    /// sign / encrypt.
    pub const SIGN_ENCRYPT: u32 = 0x0004_0000;
}

/// The EK template's attributes: 0x000300B2.
pub const EK_ATTRIBUTES: u32 = attributes::FIXED_TPM
    | attributes::FIXED_PARENT
    | attributes::SENSITIVE_DATA_ORIGIN
    | attributes::ADMIN_WITH_POLICY
    | attributes::RESTRICTED
    | attributes::DECRYPT;

/// The AK template's attributes: 0x00050072.
pub const AK_ATTRIBUTES: u32 = attributes::FIXED_TPM
    | attributes::FIXED_PARENT
    | attributes::SENSITIVE_DATA_ORIGIN
    | attributes::USER_WITH_AUTH
    | attributes::RESTRICTED
    | attributes::SIGN_ENCRYPT;

/// The EK's authPolicy: PolicySecret(TPM_RH_ENDORSEMENT) under SHA-256 (EK Credential Profile, B.3.2).
pub const EK_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
    0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA,
];

/// Largest TPMT_PUBLIC kept (RSA-4096 with a SHA-512 policy fits).
pub const MAX_PUBLIC: usize = 640;
/// Largest TPM2B_NAME contents: a 2-byte algorithm and a 64-byte digest.
pub const MAX_NAME: usize = 66;

/// Which of cloister's keys to create.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTemplate {
    /// The endorsement key, TCG default RSA-2048 template (its certificate sits at NV 0x01C00002).
    EkRsa2048,
    /// The attestation key, restricted ECDSA P-256 signing key.
    AkEccP256,
}

impl KeyTemplate {
    /// The TPMT_PUBLIC this template stands for.
    #[must_use]
    pub fn public(self) -> TpmtPublic {
        match self {
            Self::EkRsa2048 => TpmtPublic {
                object_type: TpmAlgId::Rsa,
                name_alg: TpmAlgId::Sha256,
                object_attributes: TpmaObject::from_bits_truncate(EK_ATTRIBUTES),
                auth_policy: Tpm2bDigest::try_from(EK_POLICY.as_slice()).unwrap_or_default(),
                parameters: TpmuPublicParms::Rsa(TpmsRsaParms {
                    symmetric: TpmtSymDef {
                        algorithm: TpmAlgId::Aes,
                        key_bits: TpmuSymKeyBits::Aes(TpmUint16::new(128)),
                        mode: TpmuSymMode::Aes(TpmAlgId::Cfb),
                    },
                    scheme: TpmtRsaScheme::default(),
                    key_bits: TpmUint16::new(2048),
                    exponent: TpmUint32::new(0),
                }),
                unique: TpmuPublicId::Rsa(
                    TpmBuffer::try_from([0u8; 256].as_slice()).unwrap_or_default(),
                ),
            },
            Self::AkEccP256 => TpmtPublic {
                object_type: TpmAlgId::Ecc,
                name_alg: TpmAlgId::Sha256,
                object_attributes: TpmaObject::from_bits_truncate(AK_ATTRIBUTES),
                auth_policy: Tpm2bDigest::default(),
                parameters: TpmuPublicParms::Ecc(TpmsEccParms {
                    symmetric: TpmtSymDef::default(),
                    scheme: TpmtEccScheme {
                        scheme: TpmAlgId::Ecdsa,
                        details: TpmuAsymScheme::Hash(TpmsSchemeHash {
                            hash_alg: TpmAlgId::Sha256,
                        }),
                    },
                    curve_id: TpmEccCurve::NistP256,
                    kdf: TpmtKdfScheme::default(),
                }),
                unique: TpmuPublicId::Ecc(TpmsEccPoint::default()),
            },
        }
    }
}

/// A TPM object name (TPM2B_NAME contents).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    bytes: [u8; MAX_NAME],
    len: u8,
}

impl Name {
    /// A name from its bytes; `None` when longer than [`MAX_NAME`].
    #[must_use]
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_NAME {
            return None;
        }
        let mut name = Self {
            bytes: [0; MAX_NAME],
            len: bytes.len() as u8,
        };
        name.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(name)
    }

    /// The name's bytes (nameAlg ‖ digest for an object).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Why a public area was not understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicError {
    /// Longer than [`MAX_PUBLIC`].
    TooLarge,
    /// Not a well-formed TPMT_PUBLIC, or bytes after it.
    Malformed,
    /// A nameAlg other than SHA-256.
    UnsupportedNameAlg(u16),
}

/// A public key read from a public area.
#[allow(
    clippy::large_enum_variant,
    reason = "without alloc the RSA modulus is held inline; boxing the big variant is not an option here"
)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// An RSA key: big-endian modulus and the exponent (0 in the area means 65537).
    Rsa {
        /// Modulus bytes, `modulus_len` of them used.
        modulus: [u8; 512],
        /// Used length of `modulus`.
        modulus_len: u16,
        /// Public exponent.
        exponent: u32,
    },
    /// An ECC key: curve and affine point, big-endian, left-padded to 32 bytes (P-256 only).
    Ecc {
        /// TPM_ECC_CURVE.
        curve: u16,
        /// x coordinate.
        x: [u8; 32],
        /// y coordinate.
        y: [u8; 32],
    },
}

/// The fields of a TPMT_PUBLIC a verifier checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicInfo {
    /// TPMI_ALG_PUBLIC: [`TPM_ALG_RSA`] or [`TPM_ALG_ECC`].
    pub object_type: u16,
    /// nameAlg.
    pub name_alg: u16,
    /// TPMA_OBJECT bits.
    pub attributes: u32,
    /// The signing scheme and its hash (TPM_ALG_NULL, TPM_ALG_NULL when none).
    pub scheme: (u16, u16),
    /// The key.
    pub key: PublicKey,
}

/// A public area exactly as the TPM sent it (TPMT_PUBLIC, the contents of a TPM2B_PUBLIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicArea {
    bytes: [u8; MAX_PUBLIC],
    len: u16,
}

/// Left-pads a big-endian integer to 32 bytes; `None` when it is longer.
pub(crate) fn pad32(value: &[u8]) -> Option<[u8; 32]> {
    let start = 32usize.checked_sub(value.len())?;
    let mut out = [0u8; 32];
    out[start..].copy_from_slice(value);
    Some(out)
}

impl PublicArea {
    /// Wraps TPMT_PUBLIC bytes, checking that they parse, use a SHA-256 nameAlg, and have no trailing bytes.
    ///
    /// # Errors
    ///
    /// [`PublicError`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PublicError> {
        if bytes.len() > MAX_PUBLIC {
            return Err(PublicError::TooLarge);
        }
        let (public, rest) = TpmtPublic::unmarshal(bytes).map_err(|_| PublicError::Malformed)?;
        if !rest.is_empty() {
            return Err(PublicError::Malformed);
        }
        if public.name_alg != TpmAlgId::Sha256 {
            return Err(PublicError::UnsupportedNameAlg(public.name_alg.value()));
        }
        let mut area = Self {
            bytes: [0; MAX_PUBLIC],
            len: bytes.len() as u16,
        };
        area.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(area)
    }

    /// Marshals a template into a public area (what the TPM's answer is compared against).
    ///
    /// # Errors
    ///
    /// [`PublicError::TooLarge`] when it does not fit.
    pub fn from_template(public: &TpmtPublic) -> Result<Self, PublicError> {
        let mut bytes = [0u8; MAX_PUBLIC];
        let mut writer = TpmWriter::new(&mut bytes);
        public
            .marshal(&mut writer)
            .map_err(|_| PublicError::TooLarge)?;
        let len = writer.len();
        Self::from_bytes(&bytes[..len])
    }

    /// The TPMT_PUBLIC bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// The object's name: TPM_ALG_SHA256 ‖ SHA-256(TPMT_PUBLIC) (Part 1 §16).
    #[must_use]
    pub fn name(&self) -> Name {
        let mut bytes = [0u8; 34];
        bytes[..2].copy_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        bytes[2..].copy_from_slice(&Sha256::digest(self.as_bytes()));
        Name::from_bytes(&bytes).unwrap_or(Name {
            bytes: [0; MAX_NAME],
            len: 0,
        })
    }

    /// Reads out type, nameAlg, attributes, scheme and key.
    ///
    /// # Errors
    ///
    /// [`PublicError::Malformed`] when the key does not fit the supported shapes (RSA up to 4096 bits, ECC with
    /// coordinates up to 32 bytes).
    pub fn info(&self) -> Result<PublicInfo, PublicError> {
        let (public, _) =
            TpmtPublic::unmarshal(self.as_bytes()).map_err(|_| PublicError::Malformed)?;
        let scheme_of = |scheme: TpmAlgId, details: &TpmuAsymScheme| match details {
            TpmuAsymScheme::Hash(hash) => (scheme.value(), hash.hash_alg.value()),
            _ => (scheme.value(), TPM_ALG_NULL),
        };
        let (scheme, key) = match (&public.parameters, &public.unique) {
            (TpmuPublicParms::Rsa(parameters), TpmuPublicId::Rsa(modulus)) => {
                let mut bytes = [0u8; 512];
                bytes
                    .get_mut(..modulus.len())
                    .ok_or(PublicError::Malformed)?
                    .copy_from_slice(modulus);
                let exponent = match parameters.exponent.value() {
                    0 => 65_537,
                    other => other,
                };
                (
                    scheme_of(parameters.scheme.scheme, &parameters.scheme.details),
                    PublicKey::Rsa {
                        modulus: bytes,
                        modulus_len: modulus.len() as u16,
                        exponent,
                    },
                )
            }
            (TpmuPublicParms::Ecc(parameters), TpmuPublicId::Ecc(point)) => (
                scheme_of(parameters.scheme.scheme, &parameters.scheme.details),
                PublicKey::Ecc {
                    curve: parameters.curve_id.value(),
                    x: pad32(&point.x).ok_or(PublicError::Malformed)?,
                    y: pad32(&point.y).ok_or(PublicError::Malformed)?,
                },
            ),
            _ => return Err(PublicError::Malformed),
        };
        Ok(PublicInfo {
            object_type: public.object_type.value(),
            name_alg: public.name_alg.value(),
            attributes: public.object_attributes.bits(),
            scheme,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ek_template_bytes_match_the_profile() {
        let area = PublicArea::from_template(&KeyTemplate::EkRsa2048.public()).unwrap();
        let bytes = area.as_bytes();
        // type RSA, nameAlg SHA-256, attributes 0x000300B2, policy (32 bytes).
        assert_eq!(
            &bytes[..10],
            &[0x00, 0x01, 0x00, 0x0B, 0x00, 0x03, 0x00, 0xB2, 0x00, 0x20]
        );
        assert_eq!(&bytes[10..42], &EK_POLICY);
        // AES 128 CFB, scheme NULL, 2048 bits, exponent 0, unique 256 zero bytes.
        assert_eq!(
            &bytes[42..58],
            &[0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00, 0, 0, 0, 0, 0x01, 0x00]
        );
        assert_eq!(bytes.len(), 58 + 256);
        assert!(bytes[58..].iter().all(|&b| b == 0));
    }

    #[test]
    fn ak_template_bytes() {
        let area = PublicArea::from_template(&KeyTemplate::AkEccP256.public()).unwrap();
        assert_eq!(
            area.as_bytes(),
            &[
                0x00, 0x23, 0x00, 0x0B, 0x00, 0x05, 0x00, 0x72, 0x00,
                0x00, // ECC, SHA-256, attributes, no policy
                0x00, 0x10, // symmetric NULL
                0x00, 0x18, 0x00, 0x0B, // ECDSA with SHA-256
                0x00, 0x03, // NIST P-256
                0x00, 0x10, // kdf NULL
                0x00, 0x00, 0x00, 0x00, // unique: empty x, empty y
            ]
        );
        let info = area.info().unwrap();
        assert_eq!(info.attributes, AK_ATTRIBUTES);
        assert_eq!(info.scheme, (TPM_ALG_ECDSA, TPM_ALG_SHA256));
    }

    #[test]
    fn name_is_alg_and_digest() {
        let area = PublicArea::from_template(&KeyTemplate::AkEccP256.public()).unwrap();
        let name = area.name();
        assert_eq!(&name.as_bytes()[..2], &[0x00, 0x0B]);
        assert_eq!(
            &name.as_bytes()[2..],
            Sha256::digest(area.as_bytes()).as_slice()
        );
    }

    #[test]
    fn hostile_public_areas_are_rejected() {
        let area = PublicArea::from_template(&KeyTemplate::EkRsa2048.public()).unwrap();
        let good = area.as_bytes().to_vec();
        for cut in 0..good.len() {
            assert!(PublicArea::from_bytes(&good[..cut]).is_err());
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            PublicArea::from_bytes(&trailing),
            Err(PublicError::Malformed)
        );
        let mut sha1 = good.clone();
        sha1[3] = 0x04;
        assert_eq!(
            PublicArea::from_bytes(&sha1),
            Err(PublicError::UnsupportedNameAlg(4))
        );
        let mut state = 7u64;
        for _ in 0..20_000 {
            let mut bytes = good.clone();
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (state >> 33) as usize % bytes.len();
            bytes[at] = (state >> 11) as u8;
            if let Ok(area) = PublicArea::from_bytes(&bytes) {
                let _ = area.info();
            }
        }
    }
}
