//! What a successful verification established, as readable text and as JSON (`cloister verify [--json]`).

use std::fmt;

use net::proto::ChannelBinding;
use serde::Serialize;
use tpm::eventlog::EventKind;

use super::certificate::CertificateSummary;
use super::firmware::{RootOfTrust, RootOfTrustReport};
use super::VerifiedEvidence;
use crate::digest::hex;
use crate::manifest::{FirmwarePcrs, Manifest, FIRMWARE_PCRS};

/// The checks a passing verification ran, in order (the names [`super::VerifyError::check`] uses); a `uefi`
/// manifest adds [`FIRMWARE_LOG_CHECK`] after "root of trust".
pub const CHECKS: [&str; 21] = [
    "structure sizes",
    "magic TPM_GENERATED_VALUE",
    "type TPM_ST_ATTEST_QUOTE",
    "SHA-256 only (SHA-1 refused)",
    "AK attributes",
    "signature scheme matches the AK",
    "quote signature",
    "qualifiedSigner is the AK",
    "extraData (nonce and TLS channel binding)",
    "clock safe and counters sane",
    "PCR selection",
    "PCR digest",
    "firmware PCRs",
    "root of trust",
    "image kind",
    "event log replay",
    "manifest",
    "EK template",
    "EK certificate chain",
    "EK certificate key",
    "credential activation",
];

/// The check a `uefi` manifest adds: the whole boot's TCG log against PCRs 0-7, 4's application and 12-14.
pub const FIRMWARE_LOG_CHECK: &str = "firmware event log";

/// Round-trip times.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Timing {
    /// TCP connect and TLS 1.3 handshake.
    pub tls_handshake_ms: f64,
    /// Attest request to Evidence answer.
    pub attest_round_trip_ms: f64,
    /// ActivateCredential request to Credential answer.
    pub activation_round_trip_ms: f64,
}

/// The quote's clock fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuoteReport {
    /// clockInfo.clock (ms since the TPM's clock was last cleared).
    pub clock_ms: u64,
    /// clockInfo.resetCount.
    pub reset_count: u32,
    /// clockInfo.restartCount.
    pub restart_count: u32,
    /// clockInfo.safe (always true in a passing report).
    pub safe: bool,
    /// firmwareVersion, hex.
    pub firmware_version: String,
}

/// One quoted PCR.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PcrReport {
    /// The index.
    pub pcr: u8,
    /// The SHA-256 bank value, hex.
    pub value: String,
    /// What it was checked against.
    pub checked: String,
}

/// One replayed event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventReport {
    /// The PCR extended.
    pub pcr: u8,
    /// What was measured.
    pub kind: &'static str,
    /// The digest extended, hex.
    pub digest: String,
    /// The appliance's description.
    pub description: String,
}

/// The attestation key and why it is trusted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AkReport {
    /// The AK's name (nameAlg ‖ SHA-256 of its public area), hex.
    pub name: String,
    /// Its P-256 public key, SEC1 uncompressed, hex.
    pub public_key: String,
    /// TPMA_OBJECT, hex.
    pub attributes: String,
    /// How the AK is tied to the certified EK.
    pub provenance: String,
}

/// The endorsement key and its certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EkReport {
    /// The EK's name, hex.
    pub name: String,
    /// The validated certificate.
    pub certificate: CertificateSummary,
}

/// The manifest the evidence matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManifestReport {
    /// SHA-256 of the kernel ELF file.
    pub kernel_file_sha256: String,
    /// SHA-256 of its measured segments (PCR 12 event).
    pub kernel_measured_sha256: String,
    /// SHA-256 of the model (PCR 13 event).
    pub model_sha256: String,
    /// The model's length.
    pub model_length: u64,
    /// The kernel command line (PCR 14 event is its SHA-256).
    pub command_line: String,
    /// The firmware policy.
    pub firmware: String,
}

/// The TLS session the quote is bound to (docs/ARCHITECTURE.md §4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BindingReport {
    /// SHA-256 of the server certificate's SubjectPublicKeyInfo (the key the appliance generated at boot), hex.
    pub spki_sha256: String,
    /// The session's exporter value (RFC 8446 §7.5), hex.
    pub exporter: String,
    /// The exporter label.
    pub exporter_label: String,
    /// What the binding means.
    pub meaning: &'static str,
}

/// What the binding proves, in one sentence.
const BINDING_MEANING: &str = "the quote's extraData covers this TLS session's exporter and the server key it \
    ended at, so the session terminates inside the attested image (a quote from another session or relayed from \
    another appliance fails)";

/// The line every report on a debug-console image carries.
pub const DEBUG_IMAGE: &str =
    "DEBUG IMAGE: the kernel was built with the debug console (--allow-debug-image); \
    it prints its boot and errors on the serial port to whoever holds it";
/// The line of a report on a release image.
pub const RELEASE_IMAGE: &str = "release image: no console";

/// The kind of image the manifest describes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ImageReport {
    /// Whether the kernel has the debug console (accepted only with `--allow-debug-image`).
    pub debug_console: bool,
    /// [`DEBUG_IMAGE`] or [`RELEASE_IMAGE`].
    pub statement: &'static str,
}

/// What a passing verification established.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The appliance's address.
    pub endpoint: String,
    /// Always true: a report exists only for evidence that passed every check.
    pub verified: bool,
    /// The nonce sent, hex.
    pub nonce: String,
    /// The extraData expected and found, hex.
    pub qualifying_data: String,
    /// The TLS session the quote is bound to.
    pub channel_binding: BindingReport,
    /// The quote's clock fields.
    pub quote: QuoteReport,
    /// Quoted PCRs.
    pub pcrs: Vec<PcrReport>,
    /// Replayed events.
    pub events: Vec<EventReport>,
    /// The AK.
    pub attestation_key: AkReport,
    /// The EK.
    pub endorsement_key: EkReport,
    /// The manifest.
    pub manifest: ManifestReport,
    /// What measured the kernel before it ran (PCR 7's Secure Boot state on the UEFI path), or that the host
    /// operator is trusted.
    pub root_of_trust: RootOfTrustReport,
    /// Release or debug-console image.
    pub image: ImageReport,
    /// The checks that passed, in order.
    pub checks: Vec<&'static str>,
    /// Round trips.
    pub timing: Timing,
    /// Size of the Evidence frame in bytes.
    pub evidence_bytes: usize,
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::KernelImage => "kernel image",
        EventKind::Model => "model",
        EventKind::ServingParameters => "serving parameters",
        EventKind::Configuration => "configuration",
        EventKind::CommandLine => "command line",
        EventKind::Other => "other",
    }
}

impl Report {
    /// Builds the report of a verification that passed every check.
    pub fn new(
        endpoint: &str,
        nonce: &[u8; 32],
        binding: &ChannelBinding,
        verified: &VerifiedEvidence,
        manifest: &Manifest,
        timing: Timing,
        evidence_bytes: usize,
    ) -> Self {
        let firmware = match &manifest.firmware {
            FirmwarePcrs::NonZero => {
                "no golden values: PCRs 0-7 checked only for being non-zero".to_string()
            }
            FirmwarePcrs::Golden { platform, pcrs } => format!(
                "golden values for {platform} (PCRs {})",
                pcrs.keys().map(u8::to_string).collect::<Vec<_>>().join(",")
            ),
        };
        let golden = manifest.golden_firmware();
        let firmware_replayed = matches!(verified.root_of_trust, RootOfTrust::Firmware { .. });
        let pcrs = verified
            .selection
            .indices()
            .map(|pcr| {
                let checked = match pcr {
                    12 => "event log replay and manifest (kernel image)".to_string(),
                    13 => "event log replay and manifest (model, serving parameters)".to_string(),
                    14 => "event log replay and manifest (configuration, command line)".to_string(),
                    _ if golden.is_some_and(|golden| golden.contains_key(&pcr)) => {
                        "manifest golden value".to_string()
                    }
                    _ if FIRMWARE_PCRS.contains(&pcr) && firmware_replayed => {
                        "firmware event log replay".to_string()
                    }
                    _ if FIRMWARE_PCRS.contains(&pcr) => "firmware: not all zero".to_string(),
                    _ => "quoted".to_string(),
                };
                PcrReport {
                    pcr,
                    value: hex(&verified.pcrs[usize::from(pcr)]),
                    checked,
                }
            })
            .collect();
        let events = verified
            .events
            .iter()
            .map(|event| EventReport {
                pcr: event.pcr(),
                kind: kind_name(event.kind()),
                digest: hex(event.digest()),
                description: event.description().to_string(),
            })
            .collect();
        let ak_info = verified.ak.info().ok();
        let mut checks = CHECKS.to_vec();
        if matches!(verified.root_of_trust, RootOfTrust::Firmware { .. }) {
            let at = checks
                .iter()
                .position(|check| *check == "root of trust")
                .map_or(checks.len(), |at| at + 1);
            checks.insert(at, FIRMWARE_LOG_CHECK);
        }
        Self {
            endpoint: endpoint.to_string(),
            verified: true,
            nonce: hex(nonce),
            qualifying_data: hex(&net::proto::qualifying_data(nonce, binding)),
            channel_binding: BindingReport {
                spki_sha256: hex(&binding.spki_sha256),
                exporter: hex(&binding.exporter),
                exporter_label: String::from_utf8_lossy(net::tls::ATTESTATION_EXPORTER_LABEL)
                    .into_owned(),
                meaning: BINDING_MEANING,
            },
            quote: QuoteReport {
                clock_ms: verified.clock.clock,
                reset_count: verified.clock.reset_count,
                restart_count: verified.clock.restart_count,
                safe: true,
                firmware_version: format!("{:016x}", verified.firmware_version),
            },
            pcrs,
            events,
            attestation_key: AkReport {
                name: hex(verified.ak.name().as_bytes()),
                public_key: hex(&verified.ak_point),
                attributes: format!("{:08x}", ak_info.map_or(0, |info| info.attributes)),
                provenance: "restricted ECC P-256 signing key; credential activation proved it shares a TPM \
                             with the certified EK"
                    .to_string(),
            },
            endorsement_key: EkReport {
                name: hex(verified.ek.name().as_bytes()),
                certificate: verified.ek_certificate.clone(),
            },
            manifest: ManifestReport {
                kernel_file_sha256: manifest.kernel.file_sha256.to_string(),
                kernel_measured_sha256: manifest.kernel.measured_sha256.to_string(),
                model_sha256: manifest.model.sha256.to_string(),
                model_length: manifest.model.length,
                command_line: manifest.command_line.text.clone(),
                firmware,
            },
            root_of_trust: verified.root_of_trust.report(manifest),
            image: ImageReport {
                debug_console: manifest.console,
                statement: if manifest.console {
                    DEBUG_IMAGE
                } else {
                    RELEASE_IMAGE
                },
            },
            checks,
            timing,
            evidence_bytes,
        }
    }

    /// A few lines for `cloister up`: what was measured, which checks passed, the binding.
    pub fn short(&self) -> String {
        let mut out = format!(
            "VERIFIED {} (TLS handshake {:.0} ms, attest {:.0} ms, credential activation {:.0} ms)\n",
            self.endpoint,
            self.timing.tls_handshake_ms,
            self.timing.attest_round_trip_ms,
            self.timing.activation_round_trip_ms
        );
        out.push_str("  measured before the port opened, replayed and equal to the manifest:\n");
        for event in &self.events {
            out.push_str(&format!(
                "    PCR {:>2}  {:<18} {}  {}\n",
                event.pcr, event.kind, event.digest, event.description
            ));
        }
        out.push_str(&format!("  firmware: {}\n", self.manifest.firmware));
        out.push_str(&format!(
            "  root of trust: {}\n",
            self.root_of_trust.statement
        ));
        out.push_str(&format!("  image: {}\n", self.image.statement));
        out.push_str(&format!(
            "  checks passed ({}): {}\n",
            self.checks.len(),
            self.checks.join("; ")
        ));
        out.push_str(&format!(
            "  bound to this TLS session: server key SPKI SHA-256 {}, exporter {}\n",
            self.channel_binding.spki_sha256, self.channel_binding.exporter
        ));
        out
    }

    /// One paragraph saying what was verified (for `cloister chat` and `cloister up`).
    pub fn summary(&self) -> String {
        let short = |hex: &str| hex.get(..16).unwrap_or(hex).to_string();
        format!(
            "Verified {}: kernel {}.., model {}.. ({} bytes) and command line {:?} as the manifest says; the \
             quote is fresh and signed by an attestation key that credential activation tied to an EK certified \
             by {}; it is bound to this TLS session (server key SPKI SHA-256 {}.., exporter {}..). {} checks \
             passed (TLS handshake {:.0} ms, attestation {:.0} ms). Root of trust: {}. Image: {}",
            self.endpoint,
            short(&self.manifest.kernel_measured_sha256),
            short(&self.manifest.model_sha256),
            self.manifest.model_length,
            self.manifest.command_line,
            self.endorsement_key
                .certificate
                .chain
                .last()
                .map_or("the trusted CA", String::as_str),
            short(&self.channel_binding.spki_sha256),
            short(&self.channel_binding.exporter),
            self.checks.len(),
            self.timing.tls_handshake_ms,
            self.timing.attest_round_trip_ms + self.timing.activation_round_trip_ms,
            self.root_of_trust.statement,
            self.image.statement,
        )
    }

    /// The report as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        // Plain data with string keys always serialises.
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

impl fmt::Display for Report {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(out, "VERIFIED: appliance at {}", self.endpoint)?;
        writeln!(out, "Root of trust: {}", self.root_of_trust.statement)?;
        writeln!(out, "Image: {}", self.image.statement)?;
        writeln!(out)?;
        writeln!(
            out,
            "Quote: fresh (nonce {}), clock {} ms, resetCount {}, restartCount {}, safe",
            self.nonce, self.quote.clock_ms, self.quote.reset_count, self.quote.restart_count
        )?;
        writeln!(
            out,
            "Bound to this TLS session: {}",
            self.channel_binding.meaning
        )?;
        writeln!(
            out,
            "  server key SPKI SHA-256 {}",
            self.channel_binding.spki_sha256
        )?;
        writeln!(
            out,
            "  exporter ({}) {}",
            self.channel_binding.exporter_label, self.channel_binding.exporter
        )?;
        writeln!(out)?;
        writeln!(out, "PCRs (SHA-256 bank):")?;
        for pcr in &self.pcrs {
            writeln!(out, "  {:>2}  {}  {}", pcr.pcr, pcr.value, pcr.checked)?;
        }
        writeln!(out)?;
        writeln!(out, "Events (replayed, each equal to the manifest):")?;
        for event in &self.events {
            writeln!(
                out,
                "  PCR {:>2}  {:<13} {}  {}",
                event.pcr, event.kind, event.digest, event.description
            )?;
        }
        writeln!(out)?;
        writeln!(out, "Manifest:")?;
        writeln!(
            out,
            "  kernel  {} (file {})",
            self.manifest.kernel_measured_sha256, self.manifest.kernel_file_sha256
        )?;
        writeln!(
            out,
            "  model   {} ({} bytes)",
            self.manifest.model_sha256, self.manifest.model_length
        )?;
        writeln!(out, "  cmdline {:?}", self.manifest.command_line)?;
        writeln!(out, "  firmware: {}", self.manifest.firmware)?;
        writeln!(out)?;
        writeln!(out, "Attestation key {}:", self.attestation_key.name)?;
        writeln!(
            out,
            "  attributes {}; {}",
            self.attestation_key.attributes, self.attestation_key.provenance
        )?;
        writeln!(out, "Endorsement key {}:", self.endorsement_key.name)?;
        let certificate = &self.endorsement_key.certificate;
        writeln!(
            out,
            "  certificate serial {} issued by {}",
            certificate.serial,
            certificate.chain.join(" <- ")
        )?;
        writeln!(out)?;
        writeln!(out, "Checks passed: {}", self.checks.join("; "))?;
        writeln!(
            out,
            "TLS handshake {:.1} ms, attest round trip {:.1} ms, activation {:.1} ms, evidence {} bytes",
            self.timing.tls_handshake_ms,
            self.timing.attest_round_trip_ms,
            self.timing.activation_round_trip_ms,
            self.evidence_bytes
        )
    }
}
