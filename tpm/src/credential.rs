//! TPM2_MakeCredential done in software, for the verifying client (feature `credential`; never in the kernel).
//!
//! Follows TCG TPM 2.0 Library Part 1, "Credential Protection" (§24) and the "Protected Storage" secret sharing
//! it builds on, for an RSA EK (Part 3 §12.6 describes the same computation inside a TPM):
//! a random seed the size of the EK's nameAlg digest is RSA-OAEP encrypted to the EK with label "IDENTITY\0";
//! symKey = KDFa(nameAlg, seed, "STORAGE", name of the credentialed object, empty, 128 bits) encrypts the
//! credential, marshalled as a TPM2B_DIGEST, with AES-128-CFB and a zero IV; HMACkey = KDFa(nameAlg, seed,
//! "INTEGRITY", empty, empty, 256 bits) computes outerHMAC = HMAC(HMACkey, encIdentity ‖ name). The
//! credentialBlob (TPM2B_ID_OBJECT contents) is TPM2B(outerHMAC) ‖ encIdentity. KDFa is Part 1 §11.4.10.2 (SP
//! 800-108 counter mode with HMAC): HMAC(key, [i]₃₂ ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖ [bits]₃₂).
//!
//! Only EKs of cloister's shape are accepted: RSA, nameAlg SHA-256, symmetric AES-128-CFB (the TCG default
//! RSA-2048 template and its larger siblings).

use crate::public::{Name, PublicArea};
use aes::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2_10::Sha256;
use std::vec::Vec;
use tpm2_protocol::data::{
    TpmAlgId, TpmtPublic, TpmuPublicId, TpmuPublicParms, TpmuSymKeyBits, TpmuSymMode,
};
use tpm2_protocol::TpmUnmarshal;

/// Why a credential could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialError {
    /// The EK public area is not RSA with a SHA-256 nameAlg and AES-128-CFB symmetric parameters.
    UnsupportedKey,
    /// The modulus or exponent is not a usable RSA public key.
    BadKey,
    /// The credential is empty or longer than a TPM2B_DIGEST of SHA-256 (32 bytes).
    BadCredential,
    /// RSA-OAEP encryption failed.
    Encryption,
}

impl core::fmt::Display for CredentialError {
    fn fmt(&self, out: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        out.write_str(match self {
            Self::UnsupportedKey => {
                "the EK is not an RSA key with a SHA-256 name algorithm and AES-128-CFB parameters"
            }
            Self::BadKey => "the EK's modulus or exponent is not a usable RSA public key",
            Self::BadCredential => "the credential is empty or longer than 32 bytes",
            Self::Encryption => "RSA-OAEP encryption of the seed failed",
        })
    }
}

/// What the verifier sends to the appliance, which passes both to TPM2_ActivateCredential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT contents: TPM2B(outerHMAC) ‖ encIdentity.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the OAEP-encrypted seed.
    pub secret: Vec<u8>,
}

/// KDFa with HMAC-SHA-256 (Part 1 §11.4.10.2): `bits / 8` bytes (bits a multiple of 8).
#[must_use]
pub fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let bytes = bits as usize / 8;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter = 1u32;
    while out.len() < bytes {
        // HMAC accepts keys of any length, so this cannot fail.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
            break;
        };
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// Makes a credential for the object named `object_name` (the AK), readable only by the TPM holding `ek`.
/// `credential` is the secret the appliance must give back (up to 32 bytes); `rng` must be a CSPRNG.
///
/// # Errors
///
/// [`CredentialError`].
pub fn make_credential<R: rand_core::CryptoRng + rand_core::RngCore>(
    ek: &PublicArea,
    object_name: &Name,
    credential: &[u8],
    rng: &mut R,
) -> Result<MadeCredential, CredentialError> {
    if credential.is_empty() || credential.len() > 32 {
        return Err(CredentialError::BadCredential);
    }
    let (public, _) =
        TpmtPublic::unmarshal(ek.as_bytes()).map_err(|_| CredentialError::UnsupportedKey)?;
    let (TpmuPublicParms::Rsa(parameters), TpmuPublicId::Rsa(modulus)) =
        (&public.parameters, &public.unique)
    else {
        return Err(CredentialError::UnsupportedKey);
    };
    let symmetric = &parameters.symmetric;
    if public.name_alg != TpmAlgId::Sha256
        || symmetric.algorithm != TpmAlgId::Aes
        || symmetric.key_bits != TpmuSymKeyBits::Aes(128.into())
        || symmetric.mode != TpmuSymMode::Aes(TpmAlgId::Cfb)
    {
        return Err(CredentialError::UnsupportedKey);
    }
    let exponent = match parameters.exponent.value() {
        0 => 65_537,
        other => other,
    };
    let key = RsaPublicKey::new(BigUint::from_bytes_be(modulus), BigUint::from(exponent))
        .map_err(|_| CredentialError::BadKey)?;

    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let secret = key
        .encrypt(rng, Oaep::new_with_label::<Sha256, _>("IDENTITY\0"), &seed)
        .map_err(|_| CredentialError::Encryption)?;

    let name = object_name.as_bytes();
    let symmetric_key = kdfa(&seed, "STORAGE", name, &[], 128);
    let mut encrypted = Vec::with_capacity(2 + credential.len());
    encrypted.extend_from_slice(&(credential.len() as u16).to_be_bytes());
    encrypted.extend_from_slice(credential);
    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&symmetric_key, &[0u8; 16])
        .map_err(|_| CredentialError::Encryption)?
        .encrypt(&mut encrypted);

    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], 256);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hmac_key)
        .map_err(|_| CredentialError::Encryption)?;
    mac.update(&encrypted);
    mac.update(name);
    let integrity = mac.finalize().into_bytes();

    let mut credential_blob = Vec::with_capacity(2 + integrity.len() + encrypted.len());
    credential_blob.extend_from_slice(&(integrity.len() as u16).to_be_bytes());
    credential_blob.extend_from_slice(&integrity);
    credential_blob.extend_from_slice(&encrypted);
    Ok(MadeCredential {
        credential_blob,
        secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::public::KeyTemplate;

    #[test]
    fn kdfa_lengths_and_counter_blocks() {
        let one = kdfa(b"key", "STORAGE", b"name", &[], 128);
        assert_eq!(one.len(), 16);
        let two = kdfa(b"key", "INTEGRITY", &[], &[], 512);
        assert_eq!(two.len(), 64);
        // The second block differs from the first (the counter is in the input).
        assert_ne!(two[..32], two[32..]);
        // The bit count is part of the input: 128 bits is not a prefix of 256 bits.
        assert_ne!(
            kdfa(b"key", "STORAGE", b"n", &[], 256)[..16],
            kdfa(b"key", "STORAGE", b"n", &[], 128)[..]
        );
    }

    #[test]
    fn refuses_keys_and_credentials_of_other_shapes() {
        struct Counter(u64);
        impl rand_core::RngCore for Counter {
            fn next_u32(&mut self) -> u32 {
                self.next_u64() as u32
            }
            fn next_u64(&mut self) -> u64 {
                self.0 += 1;
                self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            }
            fn fill_bytes(&mut self, dest: &mut [u8]) {
                for byte in dest {
                    *byte = self.next_u64() as u8;
                }
            }
            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
                self.fill_bytes(dest);
                Ok(())
            }
        }
        impl rand_core::CryptoRng for Counter {}
        let ak = PublicArea::from_template(&KeyTemplate::AkEccP256.public()).unwrap();
        let name = ak.name();
        assert_eq!(
            make_credential(&ak, &name, b"secret", &mut Counter(0)),
            Err(CredentialError::UnsupportedKey)
        );
        // The template's all-zero modulus is not a key.
        let ek = PublicArea::from_template(&KeyTemplate::EkRsa2048.public()).unwrap();
        assert_eq!(
            make_credential(&ek, &name, b"secret", &mut Counter(0)),
            Err(CredentialError::BadKey)
        );
        assert_eq!(
            make_credential(&ek, &name, &[], &mut Counter(0)),
            Err(CredentialError::BadCredential)
        );
        assert_eq!(
            make_credential(&ek, &name, &[1; 33], &mut Counter(0)),
            Err(CredentialError::BadCredential)
        );
    }
}
