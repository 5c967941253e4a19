//! The TPM inside the appliance: TIS registers over MMIO, and the measured boot (DESIGN §4).
//!
//! Registers: TCG PC Client Platform TPM Profile, "TPM Register Space" — locality 0 at
//! 0xFED40000, mapped uncached and non-executable by `memory::init`. The FIFO protocol itself
//! is the host-tested `tpm::tis` driver; this file only moves bytes to and from the registers.
//! Measurements, each extended into the SHA-256 bank and appended to the event log before any
//! port opens: PCR 12 the kernel's read-only loadable segments (text, then rodata, exactly the
//! bytes of the ELF's non-writable PT_LOAD segments), PCR 13 the model blob and the serving
//! parameters, PCR 14 the effective configuration and the kernel command line.

use net::serving::ApplianceConfig;
use sha2::{Digest, Sha256};
use tpm::eventlog::{self, EventLog};
use tpm::measurement::BootDigests;
use tpm::tis::{Timeouts, Tis, TisRegisters};

use crate::clock::Clock;
use crate::memory::TPM_MMIO_BASE;

/// Bytes of locality 0's register window.
const LOCALITY_WINDOW: u32 = 0x1000;

/// Locality 0's TIS registers.
pub struct MmioRegisters;

impl MmioRegisters {
    fn address(offset: u32, width: u32) -> u64 {
        // Offsets come from the driver's register constants; anything outside locality 0's window
        // would be a driver bug, so it is clamped to a harmless register instead of reaching other
        // localities or unmapped memory.
        let offset = if offset + width <= LOCALITY_WINDOW {
            offset
        } else {
            0
        };
        TPM_MMIO_BASE + u64::from(offset)
    }
}

impl TisRegisters for MmioRegisters {
    fn read8(&mut self, offset: u32) -> u8 {
        // SAFETY: the address lies in locality 0's window, mapped uncached by `memory::init`.
        unsafe { (Self::address(offset, 1) as *const u8).read_volatile() }
    }

    fn write8(&mut self, offset: u32, value: u8) {
        // SAFETY: as for `read8`.
        unsafe { (Self::address(offset, 1) as *mut u8).write_volatile(value) }
    }

    fn read32(&mut self, offset: u32) -> u32 {
        // SAFETY: as for `read8`; TIS registers are 4-byte aligned where 32-bit access is allowed.
        unsafe { (Self::address(offset, 4) as *const u32).read_volatile() }
    }

    fn write32(&mut self, offset: u32, value: u32) {
        // SAFETY: as for `read32`.
        unsafe { (Self::address(offset, 4) as *mut u32).write_volatile(value) }
    }
}

/// The driver's view of time: the calibrated TSC.
pub struct TisClock<'a>(pub &'a Clock);

impl tpm::tis::Clock for TisClock<'_> {
    fn now_us(&mut self) -> u64 {
        self.0.now_us()
    }

    fn delay_us(&mut self, us: u32) {
        let until = self.0.now_us() + u64::from(us);
        while self.0.now_us() < until {
            core::hint::spin_loop();
        }
    }
}

/// The kernel's TPM transport.
pub type KernelTpm<'a> = Tis<MmioRegisters, TisClock<'a>>;

/// Why the TPM could not be brought up or a measurement failed. The appliance does not serve
/// without its measurements.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code, reason = "the details are shown only on the debug console")]
pub enum TpmError {
    /// No TPM answers at 0xFED40000.
    Transport(tpm::transport::TransportError),
    /// A command failed.
    Command(tpm::commands::Error),
    /// A measurement failed.
    Measure(eventlog::MeasureError),
}

/// Probes the TPM and makes sure it has been started (firmware usually did).
pub fn open(clock: &Clock) -> Result<KernelTpm<'_>, TpmError> {
    let mut tis = Tis::new(MmioRegisters, TisClock(clock), Timeouts::PTP);
    tis.probe().map_err(TpmError::Transport)?;
    tpm::commands::startup(&mut tis).map_err(TpmError::Command)?;
    Ok(tis)
}

/// 32 bytes from TPM2_GetRandom, to join the RNG seed.
pub fn random_seed(tpm: &mut KernelTpm) -> Result<[u8; 32], TpmError> {
    let mut seed = [0u8; 32];
    tpm::commands::get_random(tpm, &mut seed).map_err(TpmError::Command)?;
    Ok(seed)
}

unsafe extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_file_end: u8;
}

/// SHA-256 over the kernel's text and then its rodata, as loaded: the same bytes as the ELF's
/// read-only PT_LOAD segments (the runner hashes those from the file for the manifest).
pub fn kernel_image_digest() -> [u8; 32] {
    let segments = [
        (&raw const __text_start, &raw const __text_end),
        (&raw const __rodata_start, &raw const __rodata_file_end),
    ];
    let mut hasher = Sha256::new();
    for (start, end) in segments {
        let len = end as usize - start as usize;
        // SAFETY: linker symbols bound the kernel's text and rodata, which are mapped read-only
        // (text RX) for the kernel's whole life and never written.
        hasher.update(unsafe { core::slice::from_raw_parts(start, len) });
    }
    hasher.finalize().into()
}

/// Extends PCRs 12-14 and records each event, exactly as the measurement contract
/// (`tpm::measurement`) lists them: kernel (12), model and serving parameters (13), effective
/// configuration and command line (14). The two texts are `net::serving`'s canonical ones, which the
/// verifier hashes the same way.
pub fn measure_boot(
    tpm: &mut KernelTpm,
    model_digest: [u8; 32],
    config: &ApplianceConfig,
    cmdline: &str,
) -> Result<EventLog, TpmError> {
    let sha256 = |bytes: &[u8]| -> [u8; 32] { Sha256::digest(bytes).into() };
    let digests = BootDigests {
        kernel: kernel_image_digest(),
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

/// The keys the appliance attests with, created once at boot (DESIGN §4).
pub struct Identity {
    /// The endorsement key (TCG default RSA-2048 template), loaded for credential activation.
    pub ek: tpm::commands::CreatedPrimary,
    /// The attestation key: restricted ECC P-256 signing key under the endorsement hierarchy.
    pub ak: tpm::commands::CreatedPrimary,
    /// The EK certificate (DER) from NV index 0x01C00002.
    pub ek_certificate: alloc::vec::Vec<u8>,
}

/// Largest EK certificate read from NV.
const MAX_EK_CERTIFICATE: usize = 4096;

/// Creates the EK and the AK and reads the EK certificate.
pub fn create_identity(tpm: &mut KernelTpm) -> Result<Identity, TpmError> {
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
