//! The verifier's typed errors: one variant per check of docs/ARCHITECTURE.md §4, each naming what failed.

use std::fmt;

use net::proto::ErrorCode;

use super::certificate::CertificateError;

/// A field of the evidence (`net::proto::Evidence`), or an answer of the appliance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// TPMS_ATTEST.
    Attest,
    /// TPMT_SIGNATURE.
    Signature,
    /// The AK's TPMT_PUBLIC.
    AkPublic,
    /// The EK's TPMT_PUBLIC.
    EkPublic,
    /// The EK certificate (DER).
    EkCertificate,
    /// The quoted PCR values.
    PcrValues,
    /// The event log.
    EventLog,
    /// The whole boot's crypto-agile log.
    FirmwareLog,
    /// The appliance's answer to a request.
    Response,
}

impl Field {
    /// The field's name as `Evidence` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Attest => "attest",
            Self::Signature => "signature",
            Self::AkPublic => "ak_public",
            Self::EkPublic => "ek_public",
            Self::EkCertificate => "ek_certificate",
            Self::PcrValues => "pcr_values",
            Self::EventLog => "event_log",
            Self::FirmwareLog => "firmware_log",
            Self::Response => "response",
        }
    }
}

/// Which manifest entry the evidence disagrees with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestItem {
    /// The kernel's measured segments (PCR 12 event).
    Kernel,
    /// The model blob (PCR 13, first event).
    Model,
    /// The serving parameters (PCR 13, second event).
    ServingParameters,
    /// The effective configuration (PCR 14, first event).
    Configuration,
    /// The kernel command line (PCR 14, second event).
    CommandLine,
    /// The log holds other events, fewer, more, or in another order than the manifest's five.
    EventSequence,
    /// A quoted PCR differs from the manifest's replayed value.
    Pcr(u8),
}

impl fmt::Display for ManifestItem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Kernel => write!(formatter, "kernel image (PCR 12)"),
            Self::Model => write!(formatter, "model (PCR 13)"),
            Self::ServingParameters => write!(formatter, "serving parameters (PCR 13)"),
            Self::Configuration => write!(formatter, "configuration (PCR 14)"),
            Self::CommandLine => write!(formatter, "command line (PCR 14)"),
            Self::EventSequence => write!(formatter, "event sequence"),
            Self::Pcr(pcr) => write!(formatter, "PCR {pcr} value"),
        }
    }
}

/// TPMS_CLOCK_INFO's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClockCounters {
    /// clock (ms).
    pub clock: u64,
    /// resetCount.
    pub reset_count: u32,
    /// restartCount.
    pub restart_count: u32,
}

impl fmt::Display for ClockCounters {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "clock {} ms, resetCount {}, restartCount {}",
            self.clock, self.reset_count, self.restart_count
        )
    }
}

/// Why evidence was refused: the check that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// A field is larger than any honest appliance sends (checked before parsing).
    Oversized {
        /// The field.
        what: Field,
        /// Its length.
        len: usize,
        /// The most accepted.
        max: usize,
    },
    /// A structure ends early.
    Truncated(Field),
    /// Bytes follow a structure.
    TrailingBytes(Field),
    /// A structure does not parse for another reason.
    Malformed {
        /// The field.
        what: Field,
        /// What was wrong.
        detail: &'static str,
    },
    /// TPMS_ATTEST.magic is not TPM_GENERATED_VALUE (0xFF544347).
    BadMagic(u32),
    /// TPMS_ATTEST.type is not TPM_ST_ATTEST_QUOTE (0x8018).
    WrongType(u16),
    /// SHA-1 appears where a hash algorithm is chosen (PCR bank, signature, nameAlg).
    Sha1Refused,
    /// A hash algorithm other than SHA-256.
    UnsupportedHash(u16),
    /// The AK is not an ECC NIST P-256 key.
    AkKeyType,
    /// The AK lacks restricted, sign, fixedTPM, fixedParent or sensitiveDataOrigin, or can decrypt.
    AkAttributes(u32),
    /// The signature's (scheme, hash) is not the AK's (ECDSA, SHA-256).
    SignatureSchemeMismatch {
        /// The signature's scheme and hash.
        signature: (u16, u16),
        /// The key's scheme and hash.
        key: (u16, u16),
    },
    /// The ECDSA signature does not verify under the AK over the attest bytes.
    BadSignature,
    /// qualifiedSigner is not the AK's qualified name under the endorsement hierarchy.
    QualifiedSignerMismatch,
    /// extraData is not `qualifying_data(nonce, binding)` (length and bytes, compared in constant time): a stale
    /// quote, or one made for another TLS session or another appliance.
    ExtraDataMismatch,
    /// clockInfo.safe is clear: the TPM may have reported a larger clock before.
    ClockNotSafe,
    /// resetCount/restartCount/clock went backwards from an earlier observation of this TPM.
    ClockRollback {
        /// What was seen before.
        previous: ClockCounters,
        /// What the quote says.
        quoted: ClockCounters,
    },
    /// The quote covers other PCRs than requested.
    PcrSelectionMismatch {
        /// Requested mask.
        requested: u32,
        /// Quoted mask.
        quoted: u32,
    },
    /// The number of reported PCR values is not the number of quoted PCRs.
    PcrCountMismatch {
        /// PCRs quoted.
        quoted: usize,
        /// Values reported.
        reported: usize,
    },
    /// pcrDigest is not SHA-256 over the reported values.
    PcrDigestMismatch,
    /// A firmware PCR is all zero: nothing measured the platform's firmware.
    FirmwarePcrZero(u8),
    /// A firmware PCR differs from the manifest's golden value.
    FirmwarePcrMismatch(u8),
    /// The manifest is for a direct boot (nothing measured the kernel before it ran) and the user did not say
    /// `--trust-host`.
    HostNotTrusted,
    /// The manifest describes a debug-console image (`"console": true`) and the user did not say
    /// `--allow-debug-image`.
    DebugImage,
    /// The whole boot's log (`firmware_log`) is not a well-formed crypto-agile TCG log.
    FirmwareLogMalformed(tpm::tcg_log::TcgLogError),
    /// The firmware's log does not show that exactly the manifest's boot application was measured, or does not
    /// replay to the quoted PCRs (0-7 or 12-14).
    FirmwareLog(tpm::tcg_log::FirmwareError),
    /// Replaying the event log does not give the quoted value of this PCR.
    EventLogReplayMismatch {
        /// The PCR.
        pcr: u8,
    },
    /// The measurements differ from the manifest.
    ManifestMismatch {
        /// Which entry.
        what: ManifestItem,
    },
    /// The EK public area is not the TCG default RSA-2048 EK template's shape.
    EkTemplate,
    /// The EK certificate does not chain to the trusted CA.
    EkCertificateUntrusted(CertificateError),
    /// The EK certificate certifies another key than the EK public area.
    EkCertificateKeyMismatch,
    /// MakeCredential could not be computed for this EK and AK.
    CredentialSetup(tpm::credential::CredentialError),
    /// The appliance refused TPM2_ActivateCredential (its TPM failed the integrity check, or worse).
    CredentialRefused(ErrorCode),
    /// The secret the appliance recovered is not the one sent (constant-time comparison).
    CredentialMismatch,
}

impl VerifyError {
    /// The name of the check that failed, for the report and the exit message.
    pub const fn check(&self) -> &'static str {
        match self {
            Self::Oversized { .. } | Self::Truncated(_) | Self::TrailingBytes(_) => {
                "structure sizes"
            }
            Self::Malformed { .. } => "well-formed structures",
            Self::BadMagic(_) => "magic TPM_GENERATED_VALUE",
            Self::WrongType(_) => "type TPM_ST_ATTEST_QUOTE",
            Self::Sha1Refused | Self::UnsupportedHash(_) => "SHA-256 only (SHA-1 refused)",
            Self::AkKeyType | Self::AkAttributes(_) => "AK attributes",
            Self::SignatureSchemeMismatch { .. } => "signature scheme matches the AK",
            Self::BadSignature => "quote signature",
            Self::QualifiedSignerMismatch => "qualifiedSigner is the AK",
            Self::ExtraDataMismatch => "extraData (nonce and TLS channel binding)",
            Self::ClockNotSafe | Self::ClockRollback { .. } => "clock safe and counters sane",
            Self::PcrSelectionMismatch { .. } => "PCR selection",
            Self::PcrCountMismatch { .. } | Self::PcrDigestMismatch => "PCR digest",
            Self::FirmwarePcrZero(_) | Self::FirmwarePcrMismatch(_) => "firmware PCRs",
            Self::HostNotTrusted => "root of trust",
            Self::DebugImage => "image kind",
            Self::FirmwareLogMalformed(_) | Self::FirmwareLog(_) => "firmware event log",
            Self::EventLogReplayMismatch { .. } => "event log replay",
            Self::ManifestMismatch { .. } => "manifest",
            Self::EkTemplate => "EK template",
            Self::EkCertificateUntrusted(_) => "EK certificate chain",
            Self::EkCertificateKeyMismatch => "EK certificate key",
            Self::CredentialSetup(_) | Self::CredentialRefused(_) | Self::CredentialMismatch => {
                "credential activation"
            }
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "verification failed [{}]: ", self.check())?;
        match self {
            Self::Oversized { what, len, max } => write!(
                formatter,
                "{} is {len} bytes, more than the {max} accepted",
                what.name()
            ),
            Self::Truncated(what) => write!(formatter, "{} ends early", what.name()),
            Self::TrailingBytes(what) => {
                write!(formatter, "{} has bytes after its end", what.name())
            }
            Self::Malformed { what, detail } => write!(formatter, "{}: {detail}", what.name()),
            Self::BadMagic(magic) => write!(
                formatter,
                "attest magic is {magic:#010x}, not TPM_GENERATED_VALUE 0xff544347 (not made by a TPM)"
            ),
            Self::WrongType(kind) => write!(
                formatter,
                "attest type is {kind:#06x}, not TPM_ST_ATTEST_QUOTE 0x8018"
            ),
            Self::Sha1Refused => write!(formatter, "SHA-1 is refused"),
            Self::UnsupportedHash(algorithm) => {
                write!(formatter, "hash algorithm {algorithm:#06x} is not SHA-256")
            }
            Self::AkKeyType => write!(formatter, "the AK is not an ECC NIST P-256 key"),
            Self::AkAttributes(attributes) => write!(
                formatter,
                "AK attributes {attributes:#010x} are not restricted|sign|fixedTPM|fixedParent|sensitiveDataOrigin without decrypt"
            ),
            Self::SignatureSchemeMismatch { signature, key } => write!(
                formatter,
                "signature scheme {:#06x}/{:#06x} does not match the AK's {:#06x}/{:#06x}",
                signature.0, signature.1, key.0, key.1
            ),
            Self::BadSignature => write!(
                formatter,
                "the quote's signature does not verify under the AK"
            ),
            Self::QualifiedSignerMismatch => write!(
                formatter,
                "the quote's qualifiedSigner is not the AK's qualified name"
            ),
            Self::ExtraDataMismatch => write!(
                formatter,
                "the quote's extraData is not the qualifying data of this verifier's nonce and this TLS session \
                 (a stale or replayed quote, or one relayed from another session or another appliance)"
            ),
            Self::ClockNotSafe => write!(formatter, "the quote's clockInfo.safe is clear"),
            Self::ClockRollback { previous, quoted } => write!(
                formatter,
                "TPM clock went backwards: an earlier quote had {previous}, this one has {quoted} (a rolled-back TPM \
                 or a replayed quote)"
            ),
            Self::PcrSelectionMismatch { requested, quoted } => write!(
                formatter,
                "quoted PCRs {quoted:#08x} are not the requested {requested:#08x}"
            ),
            Self::PcrCountMismatch { quoted, reported } => write!(
                formatter,
                "{quoted} PCRs quoted but {reported} values reported"
            ),
            Self::PcrDigestMismatch => write!(
                formatter,
                "the quote's pcrDigest is not the digest of the reported PCR values"
            ),
            Self::FirmwarePcrZero(pcr) => write!(
                formatter,
                "firmware PCR {pcr} is all zero: nothing measured the firmware"
            ),
            Self::FirmwarePcrMismatch(pcr) => write!(
                formatter,
                "firmware PCR {pcr} differs from the manifest's golden value"
            ),
            Self::HostNotTrusted => write!(
                formatter,
                "the manifest boots directly: nothing measured the kernel before it ran, so anyone who can send \
                 commands to the TPM can produce this evidence; pass --trust-host to trust the host operator"
            ),
            Self::DebugImage => write!(
                formatter,
                "the manifest describes a debug-console image: it prints its boot and errors on the serial port \
                 for whoever holds it, and is not built for serving; pass --allow-debug-image to accept it"
            ),
            Self::FirmwareLogMalformed(error) => {
                write!(formatter, "the boot's TCG event log does not parse: {error}")
            }
            Self::FirmwareLog(error) => match error {
                tpm::tcg_log::FirmwareError::ReplayMismatch(pcr) => write!(
                    formatter,
                    "replaying the boot's TCG event log does not give the quoted PCR {pcr}"
                ),
                tpm::tcg_log::FirmwareError::NoBootApplication => write!(
                    formatter,
                    "the firmware measured no boot application into PCR 4: nothing measured the kernel before it ran"
                ),
                tpm::tcg_log::FirmwareError::ExtraBootApplication => write!(
                    formatter,
                    "the firmware measured more than one boot application into PCR 4 (another loader or a shell ran)"
                ),
                tpm::tcg_log::FirmwareError::WrongBootApplication => write!(
                    formatter,
                    "the boot application the firmware measured into PCR 4 is not the manifest's (Authenticode SHA-256 differs)"
                ),
            },
            Self::EventLogReplayMismatch { pcr } => write!(
                formatter,
                "replaying the event log does not give the quoted PCR {pcr}"
            ),
            Self::ManifestMismatch { what } => {
                write!(formatter, "the measured {what} differs from the manifest")
            }
            Self::EkTemplate => write!(
                formatter,
                "the EK public area is not the TCG default RSA-2048 EK template"
            ),
            Self::EkCertificateUntrusted(error) => {
                write!(formatter, "the EK certificate is not trusted: {error}")
            }
            Self::EkCertificateKeyMismatch => write!(
                formatter,
                "the EK certificate certifies another key than the EK"
            ),
            Self::CredentialSetup(error) => {
                write!(formatter, "MakeCredential against the EK failed: {error}")
            }
            Self::CredentialRefused(code) => write!(
                formatter,
                "the appliance could not activate the credential (appliance error: {}): the AK and the certified EK are not in one TPM",
                code.name()
            ),
            Self::CredentialMismatch => write!(
                formatter,
                "the appliance answered the credential challenge with another secret"
            ),
        }
    }
}

impl std::error::Error for VerifyError {}
