//! The appliance's TPM procedures, over any TPM transport: startup, the RNG seed, the measured boot
//! (docs/ARCHITECTURE.md §4) and the attestation keys. The kernel binary runs them over its MMIO TIS driver; the
//! host tests run them over swtpm.
//!
//! Measurements, each extended into the SHA-256 bank and appended to the event log before any
//! port opens: PCR 12 the kernel's loadable segments (text, rodata, then the initial data as it was
//! before the kernel's first write: exactly the file bytes of the ELF's PT_LOAD segments), PCR 13 the model blob and the serving
//! parameters, PCR 14 the effective configuration and the kernel command line.

use alloc::vec::Vec;

use net::serving::ApplianceConfig;
use sha2::{Digest, Sha256};
use tpm::eventlog::{self, EventLog};
use tpm::measurement::BootDigests;
use tpm::transport::Transport;

/// Why the TPM could not be brought up or a measurement failed. The appliance does not serve
/// without its measurements.
#[derive(Clone, Copy, Debug)]
pub enum TpmError {
    /// No TPM answers.
    Transport(tpm::transport::TransportError),
    /// A command failed.
    Command(tpm::commands::Error),
    /// A measurement failed.
    Measure(eventlog::MeasureError),
}

/// Makes sure the TPM has been started (firmware usually did).
pub fn startup<T: Transport>(tpm: &mut T) -> Result<(), TpmError> {
    tpm::commands::startup(tpm).map_err(TpmError::Command)?;
    Ok(())
}

/// 32 bytes from TPM2_GetRandom, to join the RNG seed.
pub fn random_seed<T: Transport>(tpm: &mut T) -> Result<[u8; 32], TpmError> {
    let mut seed = [0u8; 32];
    tpm::commands::get_random(tpm, &mut seed).map_err(TpmError::Command)?;
    Ok(seed)
}

/// Extends PCRs 12-14 and records each event, exactly as the measurement contract
/// (`tpm::measurement`) lists them: kernel (12), model and serving parameters (13), effective
/// configuration and command line (14). `kernel_digest` is SHA-256 over the kernel's text, rodata
/// and initial data, as loaded (the binary hashes them between its linker symbols, the data from a copy made at
/// entry). The two texts are
/// `net::serving`'s canonical ones, which the verifier hashes the same way.
pub fn measure_boot<T: Transport>(
    tpm: &mut T,
    kernel_digest: [u8; 32],
    model_digest: [u8; 32],
    config: &ApplianceConfig,
    cmdline: &str,
) -> Result<EventLog, TpmError> {
    let sha256 = |bytes: &[u8]| -> [u8; 32] { Sha256::digest(bytes).into() };
    let digests = BootDigests {
        kernel: kernel_digest,
        model: model_digest,
        serving: sha256(config.serving_text().as_bytes()),
        configuration: sha256(config.configuration_text().as_bytes()),
        command_line: sha256(cmdline.as_bytes()),
    };
    let mut log = EventLog::new();
    for event in digests.events() {
        eventlog::measure(
            tpm,
            &mut log,
            event.pcr,
            event.kind,
            event.digest,
            event.description,
        )
        .map_err(TpmError::Measure)?;
    }
    Ok(log)
}

/// The keys the appliance attests with, created once at boot (docs/ARCHITECTURE.md §4).
pub struct Identity {
    /// The endorsement key (TCG default RSA-2048 template), loaded for credential activation.
    pub ek: tpm::commands::CreatedPrimary,
    /// The attestation key: restricted ECC P-256 signing key under the endorsement hierarchy.
    pub ak: tpm::commands::CreatedPrimary,
    /// The EK certificate (DER) from NV index 0x01C00002.
    pub ek_certificate: Vec<u8>,
}

/// Largest EK certificate read from NV.
const MAX_EK_CERTIFICATE: usize = 4096;

/// Creates the EK and the AK and reads the EK certificate.
pub fn create_identity<T: Transport>(tpm: &mut T) -> Result<Identity, TpmError> {
    use tpm::commands::{create_primary, read_ek_certificate};
    use tpm::public::KeyTemplate;
    let ek = create_primary(tpm, KeyTemplate::EkRsa2048).map_err(TpmError::Command)?;
    let ak = create_primary(tpm, KeyTemplate::AkEccP256).map_err(TpmError::Command)?;
    let mut certificate = alloc::vec![0u8; MAX_EK_CERTIFICATE];
    let len = read_ek_certificate(tpm, &mut certificate).map_err(TpmError::Command)?;
    certificate.truncate(len);
    Ok(Identity {
        ek,
        ak,
        ek_certificate: certificate,
    })
}
