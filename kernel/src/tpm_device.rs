//! The TPM inside the appliance: TIS registers over MMIO, and the kernel image digest (text, rodata and the
//! initial data) that the measured boot (`kernel::boot_tpm`, docs/ARCHITECTURE.md §4) extends into PCR 12.
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
    static __data_start: u8;
    static __data_file_end: u8;
}

/// The writable segment holds more initial bytes than the kernel can copy and measure
/// ([`tpm::measurement::MAX_DATA_FILE_BYTES`]); the runner refuses to build a manifest for such a kernel, and the
/// kernel refuses to run it.
#[derive(Clone, Copy, Debug)]
#[allow(
    dead_code,
    reason = "read only through Debug, which the debug console prints and dead-code analysis ignores"
)]
pub struct DataTooLarge(pub usize);

/// SHA-256 over the kernel's text, its rodata and its initial data, as loaded: the same bytes as the ELF's
/// PT_LOAD segments' file bytes (the runner hashes those from the file for the manifest).
///
/// Must run first thing at entry, before anything writes the data segment: it copies `.data` onto the stack
/// before hashing, because the hash itself writes it (sha2's CPU-feature cache lives there), and so does every
/// other dependency's first dispatch (docs/ARCHITECTURE.md §4, "What is measured, and by whom").
#[inline(never)]
pub fn kernel_image_digest() -> Result<[u8; 32], DataTooLarge> {
    let data_start = &raw const __data_start;
    let data_len = &raw const __data_file_end as usize - data_start as usize;
    if data_len > tpm::measurement::MAX_DATA_FILE_BYTES {
        return Err(DataTooLarge(data_len));
    }
    let mut data = [0u8; tpm::measurement::MAX_DATA_FILE_BYTES];
    for (offset, byte) in data[..data_len].iter_mut().enumerate() {
        // SAFETY: [__data_start, __data_file_end) is the loaded .data, mapped and readable; volatile reads keep
        // the copy here, ahead of every write that follows this call.
        *byte = unsafe { data_start.add(offset).read_volatile() };
    }
    let read_only = [
        (&raw const __text_start, &raw const __text_end),
        (&raw const __rodata_start, &raw const __rodata_file_end),
    ];
    let mut hasher = Sha256::new();
    for (start, end) in read_only {
        let len = end as usize - start as usize;
        // SAFETY: linker symbols bound the kernel's text and rodata, which are mapped read-only
        // (text RX) for the kernel's whole life and never written.
        hasher.update(unsafe { core::slice::from_raw_parts(start, len) });
    }
    hasher.update(&data[..data_len]);
    Ok(hasher.finalize().into())
}
