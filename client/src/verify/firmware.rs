//! The root of trust below the kernel (docs/ARCHITECTURE.md §4, "Roots of trust: what each path proves and what it
//! does not"): for a `uefi` manifest, the whole boot's crypto-agile log (`Evidence::firmware_log`) replayed against
//! the quoted PCRs 0-7 and 12-14, and exactly the manifest's boot application in PCR 4; a `direct` manifest is
//! refused unless the user trusts the host.

use net::proto::Evidence;
use serde::Serialize;
use tpm::commands::PCR_COUNT;
use tpm::measurement::PCRS;
use tpm::tcg_log::{self, SecureBoot, TcgLog};

use super::error::VerifyError;
use crate::manifest::{BootMode, Manifest, FIRMWARE_PCRS};

/// What measured the kernel before it ran, as the checks established it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootOfTrust {
    /// The firmware measured exactly the manifest's boot application (PCR 4), and its log replays to the quote.
    Firmware {
        /// PCR 7's Secure Boot state.
        secure_boot: SecureBoot,
    },
    /// Direct boot: nothing measured the kernel before it ran; the user trusts the host operator.
    TrustedHost,
}

/// The one line every report on a direct manifest carries.
pub const HOST_TRUSTED: &str =
    "HOST OPERATOR TRUSTED: direct boot, nothing measured the kernel before it ran \
    (--trust-host); anyone who can send commands to this TPM could have produced this evidence";

/// How a report names the root of trust.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RootOfTrustReport {
    /// `uefi` or `direct`.
    pub boot: &'static str,
    /// Whether the host operator is trusted (a direct manifest with `--trust-host`).
    pub host_trusted: bool,
    /// PCR 7's Secure Boot state (`enabled`, `disabled`, `absent`); `None` on the direct path.
    pub secure_boot: Option<&'static str>,
    /// One line saying what the root of trust is.
    pub statement: String,
}

impl RootOfTrust {
    /// The report's view of it.
    pub fn report(&self, manifest: &Manifest) -> RootOfTrustReport {
        match self {
            Self::Firmware { secure_boot } => {
                let state = secure_boot_name(*secure_boot);
                let application = manifest
                    .boot_application
                    .as_ref()
                    .map_or_else(String::new, |app| app.authenticode_sha256.to_string());
                RootOfTrustReport {
                    boot: BootMode::Uefi.name(),
                    host_trusted: false,
                    secure_boot: Some(state),
                    statement: format!(
                        "firmware: the UEFI event log replays to the quoted PCRs 0-7 and 12-14, and PCR 4 records \
                         exactly one boot application, Authenticode SHA-256 {application}; Secure Boot {state}"
                    ),
                }
            }
            Self::TrustedHost => RootOfTrustReport {
                boot: BootMode::Direct.name(),
                host_trusted: true,
                secure_boot: None,
                statement: HOST_TRUSTED.to_string(),
            },
        }
    }
}

/// PCR 7's Secure Boot state as a word.
pub const fn secure_boot_name(state: SecureBoot) -> &'static str {
    match state {
        SecureBoot::Enabled => "enabled",
        SecureBoot::Disabled => "disabled",
        SecureBoot::Absent => "absent",
    }
}

/// A `direct` manifest (its `boot`) is accepted only when the user trusts the host (`--trust-host`).
///
/// # Errors
///
/// [`VerifyError::HostNotTrusted`].
pub fn check_root_of_trust(boot: BootMode, trust_host: bool) -> Result<(), VerifyError> {
    match boot {
        BootMode::Uefi => Ok(()),
        BootMode::Direct if trust_host => Ok(()),
        BootMode::Direct => Err(VerifyError::HostNotTrusted),
    }
}

/// Parses `Evidence::firmware_log` as a crypto-agile TCG log.
///
/// # Errors
///
/// [`VerifyError::FirmwareLogMalformed`].
pub fn parse_firmware_log(evidence: &Evidence) -> Result<TcgLog<'_>, VerifyError> {
    TcgLog::parse(&evidence.firmware_log).map_err(VerifyError::FirmwareLogMalformed)
}

/// Replays the log's PCR 0-7 events and compares them with the quoted PCRs 0-7.
///
/// # Errors
///
/// [`VerifyError::FirmwareReplayMismatch`] naming the first PCR that differs.
pub fn check_firmware_replay(
    log: &TcgLog,
    pcrs: &[[u8; 32]; PCR_COUNT],
) -> Result<(), VerifyError> {
    replay(log, pcrs, &FIRMWARE_PCRS)
}

/// Replays the log's PCR 12-14 events (the kernel's, appended after the firmware's) and compares them with the
/// quoted PCRs 12-14, so the one log covers the whole boot.
///
/// # Errors
///
/// [`VerifyError::FirmwareReplayMismatch`] naming the first PCR that differs.
pub fn check_kernel_replay(log: &TcgLog, pcrs: &[[u8; 32]; PCR_COUNT]) -> Result<(), VerifyError> {
    replay(log, pcrs, &PCRS)
}

fn replay(log: &TcgLog, pcrs: &[[u8; 32]; PCR_COUNT], which: &[u8]) -> Result<(), VerifyError> {
    let quoted: Vec<(u8, [u8; 32])> = which
        .iter()
        .map(|&pcr| (pcr, pcrs[usize::from(pcr)]))
        .collect();
    tcg_log::check_replay(log, &quoted).map_err(VerifyError::FirmwareLog)
}

/// PCR 4 must record exactly one boot application, the manifest's (`expected`, its Authenticode SHA-256).
///
/// # Errors
///
/// [`VerifyError::FirmwareLog`] with the reason (a `uefi` manifest that names no application counts as the wrong
/// application: nothing the firmware measured can match it).
pub fn check_boot_application(
    log: &TcgLog,
    expected: Option<&[u8; 32]>,
) -> Result<(), VerifyError> {
    let Some(expected) = expected else {
        return Err(VerifyError::FirmwareLog(
            tcg_log::FirmwareError::WrongBootApplication,
        ));
    };
    tcg_log::check_boot_application(log, expected).map_err(VerifyError::FirmwareLog)
}

/// Every firmware check for the manifest's boot mode, in order; returns the established root of trust.
///
/// # Errors
///
/// The first failing check's [`VerifyError`].
pub fn check_boot(
    evidence: &Evidence,
    pcrs: &[[u8; 32]; PCR_COUNT],
    manifest: &Manifest,
    trust_host: bool,
) -> Result<RootOfTrust, VerifyError> {
    check_root_of_trust(manifest.boot, trust_host)?;
    if manifest.boot == BootMode::Direct {
        return Ok(RootOfTrust::TrustedHost);
    }
    let log = parse_firmware_log(evidence)?;
    check_firmware_replay(&log, pcrs)?;
    let expected = manifest
        .boot_application
        .as_ref()
        .map(|application| &application.authenticode_sha256.0);
    check_boot_application(&log, expected)?;
    check_kernel_replay(&log, pcrs)?;
    Ok(RootOfTrust::Firmware {
        secure_boot: tcg_log::secure_boot(&log),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tpm::tcg_log::{
        FirmwareError, EV_EFI_BOOT_SERVICES_APPLICATION, EV_EVENT_TAG, EV_SEPARATOR,
    };

    const APPLICATION: [u8; 32] = [0xa5; 32];

    /// A log with a SHA-256-only header and `events` (pcr, type, digest).
    fn log_of(events: &[(u32, u32, [u8; 32])]) -> Vec<u8> {
        let mut bytes = vec![0u8; tcg_log::SHA256_HEADER_LEN];
        tcg_log::emit_sha256_header(&mut bytes).unwrap();
        for (pcr, event_type, digest) in events {
            let at = bytes.len();
            bytes.resize(at + tcg_log::event_len(4), 0);
            tcg_log::emit_event(&mut bytes[at..], *pcr, *event_type, digest, b"data").unwrap();
        }
        bytes
    }

    /// An OVMF-like boot: separators on PCRs 0-7, the application in PCR 4, the kernel's events on 12-14.
    fn boot_events(applications: &[[u8; 32]]) -> Vec<(u32, u32, [u8; 32])> {
        let mut events: Vec<_> = (0..8).map(|pcr| (pcr, EV_SEPARATOR, [0; 32])).collect();
        events.extend(
            applications
                .iter()
                .map(|digest| (4, EV_EFI_BOOT_SERVICES_APPLICATION, *digest)),
        );
        for (pcr, digest) in [(12, [1; 32]), (13, [2; 32]), (13, [3; 32]), (14, [4; 32])] {
            events.push((pcr, EV_EVENT_TAG, digest));
        }
        events
    }

    /// The PCRs a TPM would hold after `bytes`' events.
    fn quoted(bytes: &[u8]) -> [[u8; 32]; PCR_COUNT] {
        TcgLog::parse(bytes).unwrap().replay_sha256()
    }

    fn all_checks(
        bytes: &[u8],
        pcrs: &[[u8; 32]; PCR_COUNT],
        expected: &[u8; 32],
    ) -> Result<(), VerifyError> {
        let log = TcgLog::parse(bytes).map_err(VerifyError::FirmwareLogMalformed)?;
        check_firmware_replay(&log, pcrs)?;
        check_boot_application(&log, Some(expected))?;
        check_kernel_replay(&log, pcrs)
    }

    #[test]
    fn the_expected_application_alone_passes() {
        let bytes = log_of(&boot_events(&[APPLICATION]));
        assert_eq!(all_checks(&bytes, &quoted(&bytes), &APPLICATION), Ok(()));
        let log = TcgLog::parse(&bytes).unwrap();
        assert_eq!(tcg_log::secure_boot(&log), SecureBoot::Absent);
    }

    #[test]
    fn another_application_is_refused() {
        let bytes = log_of(&boot_events(&[APPLICATION]));
        let error = all_checks(&bytes, &quoted(&bytes), &[0x5a; 32]).unwrap_err();
        assert_eq!(
            error,
            VerifyError::FirmwareLog(FirmwareError::WrongBootApplication)
        );
        assert_eq!(error.check(), "firmware event log");
    }

    #[test]
    fn no_application_or_two_are_refused_even_when_the_log_replays() {
        let none = log_of(&boot_events(&[]));
        assert_eq!(
            all_checks(&none, &quoted(&none), &APPLICATION),
            Err(VerifyError::FirmwareLog(FirmwareError::NoBootApplication))
        );
        let two = log_of(&boot_events(&[[0x11; 32], APPLICATION]));
        assert_eq!(
            all_checks(&two, &quoted(&two), &APPLICATION),
            Err(VerifyError::FirmwareLog(
                FirmwareError::ExtraBootApplication
            ))
        );
    }

    #[test]
    fn a_log_that_does_not_replay_to_the_quote_is_refused() {
        let bytes = log_of(&boot_events(&[APPLICATION]));
        for pcr in [0u8, 4, 7, 12, 13, 14] {
            let mut pcrs = quoted(&bytes);
            pcrs[usize::from(pcr)][0] ^= 1;
            assert_eq!(
                all_checks(&bytes, &pcrs, &APPLICATION),
                Err(VerifyError::FirmwareLog(FirmwareError::ReplayMismatch(pcr))),
                "PCR {pcr}"
            );
        }
        // The application hidden from a log whose quote recorded it.
        let hidden = log_of(&boot_events(&[]));
        let shell = log_of(&boot_events(&[[0x11; 32], APPLICATION]));
        for tampered in [hidden, shell] {
            assert_eq!(
                all_checks(&tampered, &quoted(&bytes), &APPLICATION),
                Err(VerifyError::FirmwareLog(FirmwareError::ReplayMismatch(4)))
            );
        }
    }

    #[test]
    fn a_malformed_log_is_refused() {
        let bytes = log_of(&boot_events(&[APPLICATION]));
        let error =
            all_checks(&bytes[..bytes.len() - 1], &quoted(&bytes), &APPLICATION).unwrap_err();
        assert!(
            matches!(error, VerifyError::FirmwareLogMalformed(_)),
            "{error:?}"
        );
        assert_eq!(error.check(), "firmware event log");
        assert!(matches!(
            all_checks(&[], &quoted(&bytes), &APPLICATION),
            Err(VerifyError::FirmwareLogMalformed(_))
        ));
    }

    #[test]
    fn a_uefi_manifest_without_an_application_matches_nothing() {
        let bytes = log_of(&boot_events(&[APPLICATION]));
        let log = TcgLog::parse(&bytes).unwrap();
        assert_eq!(
            check_boot_application(&log, None),
            Err(VerifyError::FirmwareLog(
                FirmwareError::WrongBootApplication
            ))
        );
    }

    #[test]
    fn a_direct_boot_needs_the_host_trusted() {
        assert_eq!(
            check_root_of_trust(BootMode::Direct, false),
            Err(VerifyError::HostNotTrusted)
        );
        assert_eq!(VerifyError::HostNotTrusted.check(), "root of trust");
        assert!(VerifyError::HostNotTrusted
            .to_string()
            .contains("--trust-host"));
        assert_eq!(check_root_of_trust(BootMode::Direct, true), Ok(()));
        assert_eq!(check_root_of_trust(BootMode::Uefi, false), Ok(()));
        assert_eq!(check_root_of_trust(BootMode::Uefi, true), Ok(()));
    }
}
