//! The verifying client's checks: an appliance's TPM evidence against a manifest and the EK CA the user trusts,
//! then the proof the AK lives in the certified TPM by credential activation (docs/ARCHITECTURE.md §4).
//!
//! The checks run in a fixed order, cheapest and most structural first, and the first failure is returned as a
//! [`VerifyError`] naming the check: sizes; TPMS_ATTEST magic, type and SHA-256-only selection; the AK's type and
//! attributes; the signature's scheme and its ECDSA P-256 validity; qualifiedSigner; extraData against this
//! verifier's nonce and TLS channel binding; clock safety; the PCR selection; pcrDigest over the reported values; firmware PCRs; the root of trust (a
//! `direct` manifest only with `trust_host`; for `uefi`, the whole boot's TCG log replayed against PCRs 0-7 and
//! 12-14 with exactly the manifest's boot application in PCR 4, [`firmware`]); the image kind (a debug-console
//! manifest only with `allow_debug_image`); event log
//! replay against PCRs 12-14; the events and PCRs against the manifest; the EK template, certificate chain and
//! certified key. Credential activation (TPM2_MakeCredential in software, TCG Part 1 §24, then the appliance's
//! TPM2_ActivateCredential) comes last, over the same connection.
//!
//! Type-state: [`verify_evidence`] returns [`CheckedEvidence`] (the offline checks passed); only
//! [`CredentialChallenge::check`], on the appliance's correct answer, turns it into [`VerifiedEvidence`], which is
//! what a [`Report`] is made from. Code outside this module cannot make a `VerifiedEvidence` any other way (the
//! doctest checks it):
//!
//! ```compile_fail
//! fn forge(claims: client::verify::EvidenceClaims) -> client::verify::VerifiedEvidence {
//!     client::verify::VerifiedEvidence(claims)
//! }
//! ```
//!
//! while the way through activation compiles:
//!
//! ```
//! use client::verify::{CredentialChallenge, VerifiedEvidence, VerifyError};
//! fn activate(challenge: &CredentialChallenge, answer: &net::proto::Response) -> Result<VerifiedEvidence, VerifyError> {
//!     challenge.check(answer)
//! }
//! ```

pub mod certificate;
pub mod checks;
pub mod error;
pub mod export;
pub mod firmware;
pub mod observations;
pub mod report;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use net::proto::{ChannelBinding, Evidence, Request, Response};
use subtle::ConstantTimeEq as _;
use tpm::commands::{PcrSelection, PCR_COUNT};
use tpm::credential::{make_credential, MadeCredential};
use tpm::eventlog::Event;
use tpm::public::PublicArea;

pub use certificate::{CertificateError, CertificateSummary, TrustAnchors};
pub use error::{ClockCounters, Field, ManifestItem, VerifyError};
pub use export::{export_evidence, CheckquoteCommand};
pub use firmware::RootOfTrust;
pub use observations::Observations;
pub use report::Report;

use crate::manifest::Manifest;

/// How long each step may take (a quote under TCG takes well under a second; the EK is created at boot).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to verify.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Timeout for the connection and every read and write.
    pub timeout: Duration,
    /// Where to write the evidence for tpm2_checkquote (before it is checked, so failures can be examined).
    pub export_evidence: Option<PathBuf>,
    /// The TPM clock counters from an earlier verification of this appliance, if kept.
    pub previous_clock: Option<ClockCounters>,
    /// Where the counters of every accepted quote are remembered per AK, so the next verification of the same
    /// TPM refuses counters that went back (the CLI uses the runner's cache; `None` remembers nothing).
    pub observations: Option<Observations>,
    /// Accept a `direct` manifest, whose kernel nothing measured before it ran: the host operator is then trusted,
    /// and every report says so (docs/ARCHITECTURE.md §4, "Roots of trust: what each path proves and what it does
    /// not"). Never needed for a `uefi` manifest.
    pub trust_host: bool,
    /// Accept a manifest of a debug-console image (`"console": true`); every report then names it.
    pub allow_debug_image: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            export_evidence: None,
            previous_clock: None,
            observations: None,
            trust_host: false,
            allow_debug_image: false,
        }
    }
}

/// What the verifier expects of one piece of evidence.
#[derive(Clone, Copy, Debug)]
pub struct Expectation<'a> {
    /// The nonce this verifier sent in `Request::Attest`.
    pub nonce: [u8; 32],
    /// The TLS session the request went over (server key and exporter): the quote must be bound to it.
    pub binding: ChannelBinding,
    /// The image's manifest; its `pcr_mask()` is the selection that was requested.
    pub manifest: &'a Manifest,
    /// The CA the EK certificate must chain to.
    pub trust: &'a TrustAnchors,
    /// The time certificates are checked at.
    pub now: SystemTime,
    /// The TPM clock counters seen at an earlier verification of the same appliance, if any.
    pub previous_clock: Option<ClockCounters>,
    /// Whether a `direct` manifest is accepted (`VerifyOptions::trust_host`).
    pub trust_host: bool,
    /// Whether a debug-console manifest is accepted (`VerifyOptions::allow_debug_image`).
    pub allow_debug_image: bool,
}

/// What a piece of evidence says about the appliance, as read by the checks. On its own it proves nothing: it is
/// read through a [`CheckedEvidence`] (every offline check passed) or a [`VerifiedEvidence`] (and the AK was then
/// shown to live in the certified TPM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceClaims {
    /// The quote's clock counters.
    pub clock: ClockCounters,
    /// TPMS_ATTEST.firmwareVersion.
    pub firmware_version: u64,
    /// The quoted PCRs.
    pub selection: PcrSelection,
    /// The quoted PCR values by index (zero where not quoted).
    pub pcrs: [[u8; 32]; PCR_COUNT],
    /// The replayed events, in order.
    pub events: Vec<Event>,
    /// The AK public area.
    pub ak: PublicArea,
    /// The AK's public key point, SEC1 uncompressed.
    pub ak_point: Vec<u8>,
    /// The EK public area.
    pub ek: PublicArea,
    /// The validated EK certificate.
    pub ek_certificate: CertificateSummary,
    /// What measured the kernel before it ran.
    pub root_of_trust: RootOfTrust,
}

/// Evidence that passed every offline check of [`verify_evidence`], but whose AK has not yet been shown to live in
/// the TPM the EK certificate names: the attestation is not complete until a [`CredentialChallenge`] made from it
/// is answered. Only [`verify_evidence`] makes one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedEvidence(EvidenceClaims);

impl std::ops::Deref for CheckedEvidence {
    type Target = EvidenceClaims;

    fn deref(&self) -> &EvidenceClaims {
        &self.0
    }
}

/// Evidence that passed every check, credential activation included (docs/ARCHITECTURE.md §4, "The attestation
/// exchange"). Only [`CredentialChallenge::check`] makes one, so a value of this type means the whole attestation
/// passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEvidence(EvidenceClaims);

impl std::ops::Deref for VerifiedEvidence {
    type Target = EvidenceClaims;

    fn deref(&self) -> &EvidenceClaims {
        &self.0
    }
}

/// Runs every offline check of docs/ARCHITECTURE.md §4 on `evidence`, in the order of the module docs. What passes still needs
/// credential activation ([`CredentialChallenge`]) before it is [`VerifiedEvidence`].
///
/// # Errors
///
/// The first failing check's [`VerifyError`].
pub fn verify_evidence(
    evidence: &Evidence,
    expected: &Expectation,
) -> Result<CheckedEvidence, VerifyError> {
    checks::check_sizes(evidence)?;
    let quote = checks::parse_quote(&evidence.attest)?;
    let ak = checks::check_ak(&evidence.ak_public)?;
    let signature = checks::check_signature_scheme(&evidence.signature, &ak)?;
    checks::check_signature(&evidence.attest, &signature, &ak)?;
    checks::check_qualified_signer(&quote, &ak)?;
    checks::check_extra_data(&quote, &expected.nonce, &expected.binding)?;
    let clock = checks::check_clock(&quote, expected.previous_clock)?;
    let requested = PcrSelection::from_mask(expected.manifest.pcr_mask()).unwrap_or_default();
    checks::check_selection(&quote, requested)?;
    let pcrs = checks::check_pcr_digest(&quote, &evidence.pcr_values)?;
    checks::check_firmware_pcrs(&pcrs, expected.manifest)?;
    let root_of_trust =
        firmware::check_boot(evidence, &pcrs, expected.manifest, expected.trust_host)?;
    checks::check_image_kind(expected.manifest, expected.allow_debug_image)?;
    let log = checks::parse_event_log(&evidence.event_log)?;
    checks::check_event_log_replay(&log, &pcrs)?;
    checks::check_manifest(&log, &pcrs, expected.manifest)?;
    let (ek, modulus, exponent) = checks::check_ek_public(&evidence.ek_public)?;
    let ek_certificate =
        checks::check_ek_certificate(&evidence.ek_certificate, expected.trust, expected.now)?;
    checks::check_ek_certificate_key(&ek_certificate, &modulus, exponent)?;
    Ok(CheckedEvidence(EvidenceClaims {
        clock,
        firmware_version: quote.firmware_version,
        selection: quote.selection,
        pcrs,
        events: log.events().copied().collect(),
        ak: ak.area,
        ak_point: ak.key.to_encoded_point(false).as_bytes().to_vec(),
        ek,
        ek_certificate,
        root_of_trust,
    }))
}

/// A credential-activation challenge: a random secret bound to the checked EK and AK name, holding (a copy of) the
/// checked evidence until the appliance's answer turns it into [`VerifiedEvidence`].
pub struct CredentialChallenge {
    secret: [u8; 32],
    made: MadeCredential,
    checked: CheckedEvidence,
}

impl CredentialChallenge {
    /// TPM2_MakeCredential in software: a fresh 32-byte secret that only the TPM holding `checked.ek` can
    /// recover, and only for an object named like `checked.ak`.
    ///
    /// # Errors
    ///
    /// [`VerifyError::CredentialSetup`].
    pub fn new<R: rand::CryptoRng + rand::RngCore>(
        checked: &CheckedEvidence,
        rng: &mut R,
    ) -> Result<Self, VerifyError> {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let made = make_credential(&checked.ek, &checked.ak.name(), &secret, rng)
            .map_err(VerifyError::CredentialSetup)?;
        Ok(Self {
            secret,
            made,
            checked: checked.clone(),
        })
    }

    /// The request carrying the challenge.
    pub fn request(&self) -> Request {
        Request::ActivateCredential {
            credential_blob: self.made.credential_blob.clone(),
            secret: self.made.secret.clone(),
        }
    }

    /// Checks the appliance's answer: the recovered secret must equal ours (constant-time comparison). Only then is
    /// the evidence verified.
    ///
    /// # Errors
    ///
    /// [`VerifyError::CredentialRefused`], [`VerifyError::CredentialMismatch`], or `Malformed` for another answer.
    pub fn check(&self, response: &Response) -> Result<VerifiedEvidence, VerifyError> {
        match response {
            Response::Credential(recovered) => {
                if bool::from(recovered.as_slice().ct_eq(&self.secret)) {
                    Ok(VerifiedEvidence(self.checked.0.clone()))
                } else {
                    Err(VerifyError::CredentialMismatch)
                }
            }
            Response::Error(code) => Err(VerifyError::CredentialRefused(*code)),
            _ => Err(VerifyError::Malformed {
                what: Field::Response,
                detail: "not an answer to ActivateCredential",
            }),
        }
    }
}
