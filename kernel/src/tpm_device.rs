//! The TPM inside the appliance: TIS registers over MMIO, and the kernel image digest that the
//! measured boot (`kernel::boot_tpm`, docs/ARCHITECTURE.md §4) extends into PCR 12.
//!
//! Registers: TCG PC Client Platform TPM Profile, "TPM Register Space" — locality 0 at
//! 0xFED40000, mapped uncached and non-executable by `memory::init`. The FIFO protocol itself
//! is the host-tested `tpm::tis` driver; this file only moves bytes to and from the registers.

use kernel::boot_tpm::{self, TpmError};
use sha2::{Digest, Sha256};
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

/// Probes the TPM and makes sure it has been started (firmware usually did).
pub fn open(clock: &Clock) -> Result<KernelTpm<'_>, TpmError> {
    let mut tis = Tis::new(MmioRegisters, TisClock(clock), Timeouts::PTP);
    tis.probe().map_err(TpmError::Transport)?;
    boot_tpm::startup(&mut tis)?;
    Ok(tis)
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
