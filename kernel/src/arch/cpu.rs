//! Thin wrappers over single privileged instructions: port I/O, MSRs, control registers, CPUID,
//! TSC and the hardware random number instructions (Intel SDM Vol. 2). Port I/O and MSR access
//! are `unsafe fn`: whether they are sound depends on the device or register the caller names.

use core::arch::asm;
use core::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};

/// Reads a byte from an I/O port.
///
/// # Safety
/// `port` must belong to a device this code owns, and reading it must not disturb another
/// driver's state (some device registers clear on read). The read itself touches no memory.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: the caller owns the port; IN has no effect on Rust-visible memory.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a byte to an I/O port.
///
/// # Safety
/// `port` must belong to a device this code owns, and the write must not make that device
/// touch memory (for example by starting DMA) that Rust code still uses.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: the caller owns the port and the device effect of the write.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a 32-bit value from an I/O port.
///
/// # Safety
/// As for [`inb`].
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as for `inb`.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// CPUID leaf `leaf`, subleaf `subleaf`.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    if subleaf == 0 {
        __cpuid(leaf)
    } else {
        __cpuid_count(leaf, subleaf)
    }
}

/// The highest standard CPUID leaf.
pub fn max_leaf() -> u32 {
    cpuid(0, 0).eax
}

/// Reads a model-specific register.
///
/// # Safety
/// `msr` must exist on this CPU (RDMSR of an unknown register raises #GP) and reading it must
/// have no side effect the caller does not own.
pub unsafe fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: the caller guarantees the register exists and the read is side-effect free.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (low, high): (u32, u32);
    // SAFETY: RDTSC only reads a counter.
    unsafe {
        asm!("rdtsc", out("eax") low, out("edx") high, options(nomem, nostack, preserves_flags))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// Reads CR3 (the physical address of the live root page table).
pub fn read_cr3() -> u64 {
    let value: u64;
    // SAFETY: reading CR3 has no side effects.
    unsafe { asm!("mov {}, cr3", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Switches to the page tables rooted at `root`.
///
/// # Safety
/// The new tables must map the running code, its stack, and every static the kernel touches
/// afterwards, with the permissions they are used with.
pub unsafe fn write_cr3(root: u64) {
    // SAFETY: the caller guarantees the new tables keep the kernel's working set mapped.
    unsafe { asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags)) };
}

/// Reads CR4.
pub fn read_cr4() -> u64 {
    let value: u64;
    // SAFETY: reading CR4 has no side effects.
    unsafe { asm!("mov {}, cr4", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Sets CR4 bits.
///
/// # Safety
/// The bits must be supported by this CPU (CPUID) and compatible with the running state.
pub unsafe fn set_cr4_bits(bits: u64) {
    let value = read_cr4() | bits;
    // SAFETY: the caller checked support for each bit.
    unsafe { asm!("mov cr4, {}", in(reg) value, options(nostack, preserves_flags)) };
}

/// Reads CR0.
pub fn read_cr0() -> u64 {
    let value: u64;
    // SAFETY: reading CR0 has no side effects.
    unsafe { asm!("mov {}, cr0", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Reads EFER.
pub fn read_efer() -> u64 {
    // SAFETY: EFER (0xC000_0080) exists on every x86_64 CPU (long mode needs it) and reading it
    // has no side effects.
    unsafe { rdmsr(0xC000_0080) }
}

/// One RDRAND result, retried a few times as the SDM recommends (Vol. 1 §7.3.17.1).
pub fn rdrand() -> Option<u64> {
    for _ in 0..10 {
        let value: u64;
        let ok: u8;
        // SAFETY: RDRAND only writes its register and CF; the caller checked CPUID support.
        unsafe {
            asm!("rdrand {}", "setc {}", out(reg) value, out(reg_byte) ok, options(nomem, nostack))
        };
        if ok == 1 {
            return Some(value);
        }
    }
    None
}

/// One RDSEED result, retried with PAUSE as the SDM recommends.
pub fn rdseed() -> Option<u64> {
    for _ in 0..100 {
        let value: u64;
        let ok: u8;
        // SAFETY: RDSEED only writes its register and CF; the caller checked CPUID support.
        unsafe {
            asm!("rdseed {}", "setc {}", out(reg) value, out(reg_byte) ok, options(nomem, nostack))
        };
        if ok == 1 {
            return Some(value);
        }
        core::hint::spin_loop();
    }
    None
}

/// Stops this CPU for good: interrupts off, then HLT in a loop.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: disabling interrupts and halting touch no memory.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

pub use super::reset::reset;

/// Sleeps until the next interrupt: `sti; hlt` is atomic with respect to interrupt delivery
/// (STI's one-instruction shadow), so a wake-up cannot be lost; interrupts are off again after.
pub fn wait_for_interrupt() {
    // SAFETY: the only enabled interrupt sources have handlers that save what they use
    // (see `interrupts`), and interrupts are disabled again before Rust code continues.
    unsafe { asm!("sti", "hlt", "cli", options(nomem, nostack)) };
}
