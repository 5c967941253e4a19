//! Strict views of what a quote carries: TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE and an ECDSA TPMT_SIGNATURE,
//! for the verifier, which reads them from untrusted evidence.
//!
//! Layouts from TCG TPM 2.0 Library Part 2: TPMS_ATTEST §10.12.12 (magic TPM_GENERATED_VALUE 0xFF544347, type,
//! qualifiedSigner, extraData, TPMS_CLOCK_INFO §10.11.1, firmwareVersion, attested), TPMS_QUOTE_INFO §10.12.4
//! (TPML_PCR_SELECTION, pcrDigest), TPMT_SIGNATURE §11.3.4 with TPMS_SIGNATURE_ECDSA §11.3.2. Parsing checks every
//! length before use and rejects trailing bytes, other attestation types, banks other than SHA-256 (SHA-1 included,
//! docs/ARCHITECTURE.md §4) and more than one bank. Signature verification itself is the caller's (it owns the crypto).

use crate::commands::{PcrSelection, PCR_COUNT};
use crate::public::{pad32, TPM_ALG_ECDSA, TPM_ALG_SHA256};
use sha2::{Digest as _, Sha256};

/// TPM_GENERATED_VALUE.
pub const TPM_GENERATED_VALUE: u32 = 0xFF54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// Why attestation bytes were refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestError {
    /// The bytes end before the structure does.
    Truncated,
    /// Bytes follow the structure.
    TrailingBytes,
    /// magic is not TPM_GENERATED_VALUE.
    BadMagic(u32),
    /// type is not TPM_ST_ATTEST_QUOTE.
    NotAQuote(u16),
    /// clockInfo.safe is neither 0 nor 1.
    BadSafe(u8),
    /// The PCR selection names no bank, or more than one.
    BankCount(u32),
    /// The selected bank is not SHA-256 (SHA-1 is refused here).
    UnsupportedHash(u16),
    /// sizeofSelect is 0 or above 3, or selects a PCR above 23, or selects nothing.
    BadSelection,
    /// pcrDigest is not 32 bytes.
    DigestLength(u16),
    /// The signature is not ECDSA.
    NotEcdsa(u16),
    /// An ECDSA r or s is empty or longer than 32 bytes.
    BadScalar,
}

/// A parsed TPMS_ATTEST of a quote, borrowing from the bytes it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuoteInfo<'a> {
    /// qualifiedSigner: the AK's qualified name.
    pub qualified_signer: &'a [u8],
    /// extraData: the qualifying data the quote was asked for.
    pub extra_data: &'a [u8],
    /// clockInfo.clock (ms).
    pub clock: u64,
    /// clockInfo.resetCount.
    pub reset_count: u32,
    /// clockInfo.restartCount.
    pub restart_count: u32,
    /// clockInfo.safe.
    pub safe: bool,
    /// firmwareVersion.
    pub firmware_version: u64,
    /// The quoted PCRs of the SHA-256 bank.
    pub selection: PcrSelection,
    /// pcrDigest: SHA-256 over the selected PCR values in ascending order.
    pub pcr_digest: [u8; 32],
}

/// A forward-only reader over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], AttestError> {
        if self.bytes.len() < count {
            return Err(AttestError::Truncated);
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, AttestError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, AttestError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Result<u32, AttestError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, AttestError> {
        Ok(u64::from(self.u32()?) << 32 | u64::from(self.u32()?))
    }

    fn tpm2b(&mut self) -> Result<&'a [u8], AttestError> {
        let size = self.u16()?;
        self.take(usize::from(size))
    }

    fn finish(&self) -> Result<(), AttestError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(AttestError::TrailingBytes)
        }
    }
}

impl<'a> QuoteInfo<'a> {
    /// Parses TPMS_ATTEST bytes (the message the AK signed).
    ///
    /// # Errors
    ///
    /// [`AttestError`].
    pub fn parse(attest: &'a [u8]) -> Result<Self, AttestError> {
        let mut reader = Reader { bytes: attest };
        let magic = reader.u32()?;
        if magic != TPM_GENERATED_VALUE {
            return Err(AttestError::BadMagic(magic));
        }
        let kind = reader.u16()?;
        if kind != TPM_ST_ATTEST_QUOTE {
            return Err(AttestError::NotAQuote(kind));
        }
        let qualified_signer = reader.tpm2b()?;
        let extra_data = reader.tpm2b()?;
        let clock = reader.u64()?;
        let reset_count = reader.u32()?;
        let restart_count = reader.u32()?;
        let safe = match reader.u8()? {
            0 => false,
            1 => true,
            other => return Err(AttestError::BadSafe(other)),
        };
        let firmware_version = reader.u64()?;
        let banks = reader.u32()?;
        if banks != 1 {
            return Err(AttestError::BankCount(banks));
        }
        let hash = reader.u16()?;
        if hash != TPM_ALG_SHA256 {
            return Err(AttestError::UnsupportedHash(hash));
        }
        let size = reader.u8()?;
        if size == 0 || size > 3 {
            return Err(AttestError::BadSelection);
        }
        let mut mask = [0u8; 4];
        mask[..usize::from(size)].copy_from_slice(reader.take(usize::from(size))?);
        let selection =
            PcrSelection::from_mask(u32::from_le_bytes(mask)).ok_or(AttestError::BadSelection)?;
        if selection.is_empty() {
            return Err(AttestError::BadSelection);
        }
        let digest = reader.tpm2b()?;
        let pcr_digest: [u8; 32] = digest
            .try_into()
            .map_err(|_| AttestError::DigestLength(digest.len() as u16))?;
        reader.finish()?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            selection,
            pcr_digest,
        })
    }
}

/// The pcrDigest a quote over `selection` must carry: SHA-256 over the selected values in ascending PCR order
/// (Part 3 §18.4, TPM2_Quote; `values[i]` is PCR `i`).
#[must_use]
pub fn pcr_digest(values: &[[u8; 32]; PCR_COUNT], selection: PcrSelection) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for pcr in selection.indices() {
        hasher.update(values[usize::from(pcr)]);
    }
    hasher.finalize().into()
}

/// An ECDSA signature read from a TPMT_SIGNATURE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EcdsaSignature {
    /// The signature's hash algorithm (TPM_ALG_SHA256 expected; the caller decides).
    pub hash: u16,
    /// r, big-endian, left-padded to 32 bytes.
    pub r: [u8; 32],
    /// s, big-endian, left-padded to 32 bytes.
    pub s: [u8; 32],
}

impl EcdsaSignature {
    /// Parses TPMT_SIGNATURE bytes holding an ECDSA signature on a 256-bit curve.
    ///
    /// # Errors
    ///
    /// [`AttestError::NotEcdsa`], [`AttestError::BadScalar`], `Truncated`, `TrailingBytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, AttestError> {
        let mut reader = Reader { bytes };
        let algorithm = reader.u16()?;
        if algorithm != TPM_ALG_ECDSA {
            return Err(AttestError::NotEcdsa(algorithm));
        }
        let hash = reader.u16()?;
        let r = reader.tpm2b()?;
        let s = reader.tpm2b()?;
        reader.finish()?;
        if r.is_empty() || s.is_empty() {
            return Err(AttestError::BadScalar);
        }
        Ok(Self {
            hash,
            r: pad32(r).ok_or(AttestError::BadScalar)?,
            s: pad32(s).ok_or(AttestError::BadScalar)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A quote over PCRs 12-14 with 32 bytes of extraData, laid out by hand from Part 2.
    fn fixture() -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0xFF54_4347u32.to_be_bytes());
        bytes.extend_from_slice(&0x8018u16.to_be_bytes());
        bytes.extend_from_slice(&34u16.to_be_bytes()); // qualifiedSigner
        bytes.extend_from_slice(&[0x00, 0x0B]);
        bytes.extend_from_slice(&[0xA1; 32]);
        bytes.extend_from_slice(&32u16.to_be_bytes()); // extraData
        bytes.extend_from_slice(&[0xE5; 32]);
        bytes.extend_from_slice(&123_456u64.to_be_bytes()); // clock
        bytes.extend_from_slice(&7u32.to_be_bytes()); // resetCount
        bytes.extend_from_slice(&2u32.to_be_bytes()); // restartCount
        bytes.push(1); // safe
        bytes.extend_from_slice(&0x2019_1023_0016_3636u64.to_be_bytes());
        bytes.extend_from_slice(&1u32.to_be_bytes()); // one bank
        bytes.extend_from_slice(&0x000Bu16.to_be_bytes());
        bytes.extend_from_slice(&[3, 0x00, 0x70, 0x00]); // PCRs 12, 13, 14
        bytes.extend_from_slice(&32u16.to_be_bytes());
        bytes.extend_from_slice(&[0xD1; 32]);
        bytes
    }

    /// Offsets into the fixture.
    const TYPE: usize = 4;
    const SAFE: usize = 4 + 2 + 36 + 34 + 8 + 4 + 4;
    const BANKS: usize = SAFE + 1 + 8;

    #[test]
    fn parses_the_fixture() {
        let bytes = fixture();
        let info = QuoteInfo::parse(&bytes).unwrap();
        assert_eq!(info.qualified_signer.len(), 34);
        assert_eq!(info.extra_data, &[0xE5; 32]);
        assert_eq!(info.clock, 123_456);
        assert_eq!(
            (info.reset_count, info.restart_count, info.safe),
            (7, 2, true)
        );
        assert_eq!(
            info.selection,
            PcrSelection::from_indices(&[12, 13, 14]).unwrap()
        );
        assert_eq!(info.pcr_digest, [0xD1; 32]);
    }

    #[test]
    fn tampered_fields_are_refused() {
        let good = fixture();
        let mut bad = good.clone();
        bad[0] = 0xFE;
        assert!(matches!(
            QuoteInfo::parse(&bad),
            Err(AttestError::BadMagic(_))
        ));
        let mut bad = good.clone();
        bad[TYPE + 1] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert_eq!(QuoteInfo::parse(&bad), Err(AttestError::NotAQuote(0x8017)));
        let mut bad = good.clone();
        bad[SAFE] = 2;
        assert_eq!(QuoteInfo::parse(&bad), Err(AttestError::BadSafe(2)));
        let mut bad = good.clone();
        bad[BANKS + 3] = 2;
        assert_eq!(QuoteInfo::parse(&bad), Err(AttestError::BankCount(2)));
        let mut bad = good.clone();
        bad[BANKS + 3] = 0;
        assert_eq!(QuoteInfo::parse(&bad), Err(AttestError::BankCount(0)));
        let mut sha1 = good.clone();
        sha1[BANKS + 5] = 0x04;
        assert_eq!(
            QuoteInfo::parse(&sha1),
            Err(AttestError::UnsupportedHash(0x0004))
        );
        let mut bad = good.clone();
        bad[BANKS + 6] = 4;
        assert_eq!(QuoteInfo::parse(&bad), Err(AttestError::BadSelection));
        let mut empty = good.clone();
        empty[BANKS + 7..BANKS + 10].copy_from_slice(&[0, 0, 0]);
        assert_eq!(QuoteInfo::parse(&empty), Err(AttestError::BadSelection));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(QuoteInfo::parse(&trailing), Err(AttestError::TrailingBytes));
        for cut in 0..good.len() {
            assert!(QuoteInfo::parse(&good[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn random_mutations_never_panic() {
        let good = fixture();
        let mut state = 0x1234_5678_9ABC_DEF1u64;
        for _ in 0..50_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bytes = good.clone();
            let at = (state as usize) % bytes.len();
            bytes[at] = (state >> 40) as u8;
            let cut = ((state >> 20) as usize) % (bytes.len() + 1);
            let _ = QuoteInfo::parse(&bytes[..cut]);
            let _ = EcdsaSignature::parse(&bytes[..cut.min(80)]);
        }
    }

    #[test]
    fn pcr_digest_hashes_selected_values_in_order() {
        let mut values = [[0u8; 32]; PCR_COUNT];
        values[12] = [1; 32];
        values[14] = [2; 32];
        let selection = PcrSelection::from_indices(&[14, 12]).unwrap();
        let mut concatenated = [0u8; 64];
        concatenated[..32].copy_from_slice(&[1; 32]);
        concatenated[32..].copy_from_slice(&[2; 32]);
        assert_eq!(
            pcr_digest(&values, selection),
            crate::eventlog::sha256(&concatenated)
        );
    }

    #[test]
    fn ecdsa_signature() {
        let mut bytes = vec![0x00, 0x18, 0x00, 0x0B, 0x00, 0x20];
        bytes.extend_from_slice(&[0x11; 32]);
        bytes.extend_from_slice(&[0x00, 0x1F]);
        bytes.extend_from_slice(&[0x22; 31]);
        let signature = EcdsaSignature::parse(&bytes).unwrap();
        assert_eq!(signature.hash, 0x000B);
        assert_eq!(signature.r, [0x11; 32]);
        assert_eq!(signature.s[0], 0);
        assert_eq!(&signature.s[1..], &[0x22; 31]);
        let mut rsa = bytes.clone();
        rsa[1] = 0x14;
        assert_eq!(
            EcdsaSignature::parse(&rsa),
            Err(AttestError::NotEcdsa(0x0014))
        );
        let mut long = vec![0x00, 0x18, 0x00, 0x0B, 0x00, 0x21];
        long.extend_from_slice(&[0x11; 33]);
        long.extend_from_slice(&[0x00, 0x01, 0x01]);
        assert_eq!(EcdsaSignature::parse(&long), Err(AttestError::BadScalar));
        for cut in 0..bytes.len() {
            assert!(EcdsaSignature::parse(&bytes[..cut]).is_err());
        }
    }
}
