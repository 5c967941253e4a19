//! The verifier's checks, one function per check of docs/ARCHITECTURE.md §4, each returning the [`VerifyError`] that names it.
//!
//! Structures follow TCG TPM 2.0 Library Part 2: TPMS_ATTEST §10.12.12 and TPMS_QUOTE_INFO §10.12.4 (parsed by
//! `tpm::attest`), TPMT_SIGNATURE §11.3.4, TPMT_PUBLIC §12.2.4 and TPMA_OBJECT §8.3; the qualified name is Part 1
//! §16 ("Names"): QN(object) = nameAlg ‖ H(QN(parent) ‖ Name(object)), where a hierarchy's QN is its handle.
//! Every input is untrusted: sizes are checked before parsing, and parsers reject truncated and trailing bytes.

use std::time::SystemTime;

use p256::ecdsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tpm::attest::{self, AttestError, EcdsaSignature, QuoteInfo};
use tpm::commands::{PcrSelection, MAX_ATTEST, MAX_SIGNATURE, PCR_COUNT, TPM_RH_ENDORSEMENT};
use tpm::eventlog::{Event, EventKind, EventLog, EventLogError, MAX_DESCRIPTION, MAX_EVENTS};
use tpm::public::{
    attributes, KeyTemplate, PublicArea, PublicError, PublicInfo, PublicKey, MAX_PUBLIC,
    TPM_ALG_ECC, TPM_ALG_ECDSA, TPM_ALG_RSA, TPM_ALG_SHA1, TPM_ALG_SHA256, TPM_ECC_NIST_P256,
};

use super::certificate::{CertificateSummary, TrustAnchors};
use super::error::{ClockCounters, Field, ManifestItem, VerifyError};
use crate::manifest::{Manifest, FIRMWARE_PCRS};
use net::proto::{ChannelBinding, Evidence};

/// Largest EK certificate accepted (what the appliance reads from NV at most).
pub const MAX_EK_CERTIFICATE: usize = 4096;
/// Largest serialised event log: header and [`MAX_EVENTS`] events with the longest descriptions.
pub const MAX_EVENT_LOG: usize = 8 + MAX_EVENTS * (35 + MAX_DESCRIPTION);

/// The attributes an AK must have (docs/ARCHITECTURE.md §4).
pub const AK_REQUIRED: u32 = attributes::FIXED_TPM
    | attributes::FIXED_PARENT
    | attributes::SENSITIVE_DATA_ORIGIN
    | attributes::RESTRICTED
    | attributes::SIGN_ENCRYPT;

/// Refuses any evidence field larger than an honest appliance sends, before anything is parsed.
pub fn check_sizes(evidence: &Evidence) -> Result<(), VerifyError> {
    let limits = [
        (Field::Attest, evidence.attest.len(), MAX_ATTEST),
        (Field::Signature, evidence.signature.len(), MAX_SIGNATURE),
        (Field::AkPublic, evidence.ak_public.len(), MAX_PUBLIC),
        (Field::EkPublic, evidence.ek_public.len(), MAX_PUBLIC),
        (
            Field::EkCertificate,
            evidence.ek_certificate.len(),
            MAX_EK_CERTIFICATE,
        ),
        (Field::PcrValues, evidence.pcr_values.len(), PCR_COUNT),
        (Field::EventLog, evidence.event_log.len(), MAX_EVENT_LOG),
        (
            Field::FirmwareLog,
            evidence.firmware_log.len(),
            tpm::tcg_log::MAX_LOG_BYTES,
        ),
    ];
    for (what, len, max) in limits {
        if len > max {
            return Err(VerifyError::Oversized { what, len, max });
        }
    }
    Ok(())
}

fn hash_error(algorithm: u16) -> VerifyError {
    if algorithm == TPM_ALG_SHA1 {
        VerifyError::Sha1Refused
    } else {
        VerifyError::UnsupportedHash(algorithm)
    }
}

/// Parses TPMS_ATTEST: magic, type ATTEST_QUOTE, one SHA-256 bank (SHA-1 refused), no missing or extra bytes.
pub fn parse_quote(attest: &[u8]) -> Result<QuoteInfo<'_>, VerifyError> {
    QuoteInfo::parse(attest).map_err(|error| match error {
        AttestError::Truncated => VerifyError::Truncated(Field::Attest),
        AttestError::TrailingBytes => VerifyError::TrailingBytes(Field::Attest),
        AttestError::BadMagic(magic) => VerifyError::BadMagic(magic),
        AttestError::NotAQuote(kind) => VerifyError::WrongType(kind),
        AttestError::UnsupportedHash(algorithm) => hash_error(algorithm),
        AttestError::BadSafe(_) => VerifyError::Malformed {
            what: Field::Attest,
            detail: "clockInfo.safe is neither YES nor NO",
        },
        AttestError::BankCount(_) => VerifyError::Malformed {
            what: Field::Attest,
            detail: "the quote does not cover exactly one PCR bank",
        },
        AttestError::BadSelection => VerifyError::Malformed {
            what: Field::Attest,
            detail: "the PCR selection is empty or out of range",
        },
        AttestError::DigestLength(_) => VerifyError::Malformed {
            what: Field::Attest,
            detail: "pcrDigest is not 32 bytes",
        },
        AttestError::NotEcdsa(_) | AttestError::BadScalar => VerifyError::Malformed {
            what: Field::Attest,
            detail: "unexpected structure",
        },
    })
}

/// The attestation key as the verifier accepts it.
#[derive(Clone, Debug)]
pub struct AttestationKey {
    /// The public area as sent.
    pub area: PublicArea,
    /// Its fields.
    pub info: PublicInfo,
    /// The P-256 verifying key.
    pub key: p256::ecdsa::VerifyingKey,
}

fn public_area(bytes: &[u8], what: Field) -> Result<PublicArea, VerifyError> {
    PublicArea::from_bytes(bytes).map_err(|error| match error {
        PublicError::TooLarge => VerifyError::Oversized {
            what,
            len: bytes.len(),
            max: MAX_PUBLIC,
        },
        PublicError::Malformed => VerifyError::Malformed {
            what,
            detail: "not exactly one TPMT_PUBLIC",
        },
        PublicError::UnsupportedNameAlg(algorithm) => hash_error(algorithm),
    })
}

/// The AK: a TPMT_PUBLIC with SHA-256 nameAlg, ECC NIST P-256, scheme ECDSA-SHA256, and the attributes
/// restricted, sign, fixedTPM, fixedParent and sensitiveDataOrigin, without decrypt.
pub fn check_ak(ak_public: &[u8]) -> Result<AttestationKey, VerifyError> {
    let area = public_area(ak_public, Field::AkPublic)?;
    let info = area.info().map_err(|_| VerifyError::Malformed {
        what: Field::AkPublic,
        detail: "the key does not fit its type",
    })?;
    let PublicKey::Ecc { curve, x, y } = info.key else {
        return Err(VerifyError::AkKeyType);
    };
    if info.object_type != TPM_ALG_ECC || curve != TPM_ECC_NIST_P256 {
        return Err(VerifyError::AkKeyType);
    }
    if info.attributes & AK_REQUIRED != AK_REQUIRED || info.attributes & attributes::DECRYPT != 0 {
        return Err(VerifyError::AkAttributes(info.attributes));
    }
    if info.scheme.0 != TPM_ALG_ECDSA {
        return Err(VerifyError::AkKeyType);
    }
    if info.scheme.1 != TPM_ALG_SHA256 {
        return Err(hash_error(info.scheme.1));
    }
    let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
    let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point).map_err(|_| {
        VerifyError::Malformed {
            what: Field::AkPublic,
            detail: "the point is not on P-256",
        }
    })?;
    Ok(AttestationKey { area, info, key })
}

/// Parses TPMT_SIGNATURE and checks that its scheme and hash are the AK's (ECDSA, SHA-256).
pub fn check_signature_scheme(
    signature: &[u8],
    ak: &AttestationKey,
) -> Result<EcdsaSignature, VerifyError> {
    let parsed = EcdsaSignature::parse(signature).map_err(|error| match error {
        AttestError::Truncated => VerifyError::Truncated(Field::Signature),
        AttestError::TrailingBytes => VerifyError::TrailingBytes(Field::Signature),
        AttestError::NotEcdsa(algorithm) => VerifyError::SignatureSchemeMismatch {
            signature: (algorithm, 0),
            key: ak.info.scheme,
        },
        _ => VerifyError::Malformed {
            what: Field::Signature,
            detail: "r or s is empty or longer than 32 bytes",
        },
    })?;
    if parsed.hash == TPM_ALG_SHA1 {
        return Err(VerifyError::Sha1Refused);
    }
    if (TPM_ALG_ECDSA, parsed.hash) != ak.info.scheme {
        return Err(VerifyError::SignatureSchemeMismatch {
            signature: (TPM_ALG_ECDSA, parsed.hash),
            key: ak.info.scheme,
        });
    }
    Ok(parsed)
}

/// ECDSA P-256 with SHA-256 over the attest bytes under the AK.
pub fn check_signature(
    attest: &[u8],
    signature: &EcdsaSignature,
    ak: &AttestationKey,
) -> Result<(), VerifyError> {
    let signature = p256::ecdsa::Signature::from_scalars(signature.r, signature.s)
        .map_err(|_| VerifyError::BadSignature)?;
    ak.key
        .verify(attest, &signature)
        .map_err(|_| VerifyError::BadSignature)
}

/// The AK's qualified name as a primary key of the endorsement hierarchy.
pub fn ak_qualified_name(ak: &PublicArea) -> [u8; 34] {
    let mut hasher = Sha256::new();
    hasher.update(TPM_RH_ENDORSEMENT.to_be_bytes());
    hasher.update(ak.name().as_bytes());
    let mut name = [0u8; 34];
    name[..2].copy_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    name[2..].copy_from_slice(&hasher.finalize());
    name
}

/// qualifiedSigner must be the AK's qualified name (the signer the quote claims is the key that signed it).
pub fn check_qualified_signer(quote: &QuoteInfo, ak: &AttestationKey) -> Result<(), VerifyError> {
    if quote.qualified_signer == ak_qualified_name(&ak.area) {
        Ok(())
    } else {
        Err(VerifyError::QualifiedSignerMismatch)
    }
}

/// extraData must equal `net::proto::qualifying_data(nonce, binding)` in length and bytes (constant time): the
/// quote was made for this verifier's nonce, inside this TLS session, by the appliance holding this session's
/// server key. A quote for another session (other exporter) or relayed from another appliance (other key) fails.
pub fn check_extra_data(
    quote: &QuoteInfo,
    nonce: &[u8; 32],
    binding: &ChannelBinding,
) -> Result<(), VerifyError> {
    let expected = net::proto::qualifying_data(nonce, binding);
    if bool::from(quote.extra_data.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(VerifyError::ExtraDataMismatch)
    }
}

/// clockInfo.safe must be set; with an earlier observation of the same TPM, the counters must not go back.
pub fn check_clock(
    quote: &QuoteInfo,
    previous: Option<ClockCounters>,
) -> Result<ClockCounters, VerifyError> {
    let quoted = ClockCounters {
        clock: quote.clock,
        reset_count: quote.reset_count,
        restart_count: quote.restart_count,
    };
    if !quote.safe {
        return Err(VerifyError::ClockNotSafe);
    }
    if let Some(previous) = previous {
        let earlier = (previous.reset_count, previous.restart_count, previous.clock);
        let now = (quoted.reset_count, quoted.restart_count, quoted.clock);
        // resetCount and restartCount only grow (Part 1 "TPM Reset"/"TPM Restart"); within one
        // restart, clock only grows while safe is set.
        if now < earlier {
            return Err(VerifyError::ClockRollback { previous, quoted });
        }
    }
    Ok(quoted)
}

/// The quote must cover exactly the requested PCRs.
pub fn check_selection(quote: &QuoteInfo, requested: PcrSelection) -> Result<(), VerifyError> {
    if quote.selection == requested {
        Ok(())
    } else {
        Err(VerifyError::PcrSelectionMismatch {
            requested: requested.mask(),
            quoted: quote.selection.mask(),
        })
    }
}

/// pcrDigest must be SHA-256 over the reported values (one per quoted PCR, ascending); returns them by index.
pub fn check_pcr_digest(
    quote: &QuoteInfo,
    reported: &[[u8; 32]],
) -> Result<[[u8; 32]; PCR_COUNT], VerifyError> {
    let quoted = quote.selection.indices().count();
    if reported.len() != quoted {
        return Err(VerifyError::PcrCountMismatch {
            quoted,
            reported: reported.len(),
        });
    }
    let mut values = [[0u8; 32]; PCR_COUNT];
    for (pcr, value) in quote.selection.indices().zip(reported) {
        values[usize::from(pcr)] = *value;
    }
    if attest::pcr_digest(&values, quote.selection) == quote.pcr_digest {
        Ok(values)
    } else {
        Err(VerifyError::PcrDigestMismatch)
    }
}

/// No firmware PCR (0-7) may be all zero, and each golden value of the manifest must match.
pub fn check_firmware_pcrs(
    values: &[[u8; 32]; PCR_COUNT],
    manifest: &Manifest,
) -> Result<(), VerifyError> {
    for pcr in FIRMWARE_PCRS {
        if values[usize::from(pcr)] == [0u8; 32] {
            return Err(VerifyError::FirmwarePcrZero(pcr));
        }
    }
    for (&pcr, golden) in manifest.golden_firmware().into_iter().flatten() {
        if values.get(usize::from(pcr)) != Some(&golden.0) {
            return Err(VerifyError::FirmwarePcrMismatch(pcr));
        }
    }
    Ok(())
}

/// A manifest of a debug-console image (`"console": true`) is accepted only when the user allows it
/// (`--allow-debug-image`): such a kernel prints its boot and errors on the serial port, to whoever holds it.
///
/// # Errors
///
/// [`VerifyError::DebugImage`].
pub fn check_image_kind(manifest: &Manifest, allow_debug_image: bool) -> Result<(), VerifyError> {
    if manifest.console && !allow_debug_image {
        return Err(VerifyError::DebugImage);
    }
    Ok(())
}

/// Parses the event log (`tpm::eventlog` format).
pub fn parse_event_log(bytes: &[u8]) -> Result<EventLog, VerifyError> {
    EventLog::parse(bytes).map_err(|error| match error {
        EventLogError::Truncated => VerifyError::Truncated(Field::EventLog),
        EventLogError::TrailingBytes => VerifyError::TrailingBytes(Field::EventLog),
        EventLogError::TooManyEvents(_) => VerifyError::Malformed {
            what: Field::EventLog,
            detail: "more events than a log holds",
        },
        EventLogError::BadMagic | EventLogError::BadVersion(_) => VerifyError::Malformed {
            what: Field::EventLog,
            detail: "not a version 1 cloister event log",
        },
        _ => VerifyError::Malformed {
            what: Field::EventLog,
            detail: "an event has a bad PCR, kind or description",
        },
    })
}

/// Replaying the log from zero must give the quoted PCRs 12, 13 and 14.
pub fn check_event_log_replay(
    log: &EventLog,
    values: &[[u8; 32]; PCR_COUNT],
) -> Result<(), VerifyError> {
    let replayed = log.replay();
    for pcr in [12u8, 13, 14] {
        if replayed[usize::from(pcr)] != values[usize::from(pcr)] {
            return Err(VerifyError::EventLogReplayMismatch { pcr });
        }
    }
    Ok(())
}

/// The log must hold exactly the manifest's five events, in order, with its digests; the quoted PCRs 12-14 must
/// equal the manifest's replayed values.
pub fn check_manifest(
    log: &EventLog,
    values: &[[u8; 32]; PCR_COUNT],
    manifest: &Manifest,
) -> Result<(), VerifyError> {
    let events: Vec<&Event> = log.events().collect();
    let expected = manifest.expected_events();
    if events.len() != expected.len() {
        return Err(VerifyError::ManifestMismatch {
            what: ManifestItem::EventSequence,
        });
    }
    for (event, expected) in events.iter().zip(&expected) {
        if event.pcr() != expected.pcr || event.kind() != expected.kind {
            return Err(VerifyError::ManifestMismatch {
                what: ManifestItem::EventSequence,
            });
        }
        if event.digest() != &expected.digest {
            let what = match expected.kind {
                EventKind::KernelImage => ManifestItem::Kernel,
                EventKind::Model => ManifestItem::Model,
                EventKind::ServingParameters => ManifestItem::ServingParameters,
                EventKind::Configuration => ManifestItem::Configuration,
                _ => ManifestItem::CommandLine,
            };
            return Err(VerifyError::ManifestMismatch { what });
        }
    }
    for pcr in [12u8, 13, 14] {
        if manifest.expected_pcr(pcr) != Some(values[usize::from(pcr)]) {
            return Err(VerifyError::ManifestMismatch {
                what: ManifestItem::Pcr(pcr),
            });
        }
    }
    Ok(())
}

/// The EK public area: the TCG default RSA-2048 template (everything but the modulus equal to the template).
/// Returns the area and its modulus.
pub fn check_ek_public(ek_public: &[u8]) -> Result<(PublicArea, Vec<u8>, u32), VerifyError> {
    let area = public_area(ek_public, Field::EkPublic)?;
    let template = PublicArea::from_template(&KeyTemplate::EkRsa2048.public())
        .map_err(|_| VerifyError::EkTemplate)?;
    // The template's bytes up to the unique field's size (type .. keyBits, exponent) are fixed; then unique is
    // a TPM2B of 256 bytes.
    let fixed = template.as_bytes().len() - 256 - 2;
    if area.as_bytes().len() != template.as_bytes().len()
        || area.as_bytes()[..fixed + 2] != template.as_bytes()[..fixed + 2]
    {
        return Err(VerifyError::EkTemplate);
    }
    let info = area.info().map_err(|_| VerifyError::EkTemplate)?;
    let PublicKey::Rsa {
        modulus,
        modulus_len,
        exponent,
    } = info.key
    else {
        return Err(VerifyError::EkTemplate);
    };
    if info.object_type != TPM_ALG_RSA {
        return Err(VerifyError::EkTemplate);
    }
    let modulus = modulus[..usize::from(modulus_len)].to_vec();
    Ok((area, modulus, exponent))
}

/// The EK certificate must chain to the trusted CA at time `now`.
pub fn check_ek_certificate(
    der: &[u8],
    trust: &TrustAnchors,
    now: SystemTime,
) -> Result<CertificateSummary, VerifyError> {
    trust
        .verify(der, now)
        .map_err(VerifyError::EkCertificateUntrusted)
}

/// The certified key must be the EK: same modulus (leading zeros ignored) and exponent.
pub fn check_ek_certificate_key(
    certificate: &CertificateSummary,
    modulus: &[u8],
    exponent: u32,
) -> Result<(), VerifyError> {
    let strip = |bytes: &[u8]| -> Vec<u8> {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        bytes[start..].to_vec()
    };
    if strip(&certificate.modulus) == strip(modulus) && certificate.exponent == exponent {
        Ok(())
    } else {
        Err(VerifyError::EkCertificateKeyMismatch)
    }
}
