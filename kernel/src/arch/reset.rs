//! Resetting the machine on a panic or fatal exception (issue 12 item 8; docs/ARCHITECTURE.md §2): one copy for
//! the kernel and the EFI stub, which includes this file by path, so both binaries of the release image fail
//! closed the same way.

use core::arch::asm;

/// The chipset's Reset Control Register (Intel ICH9 and PIIX datasheets, "RST_CNT", I/O port 0xCF9).
const RESET_CONTROL: u16 = 0xCF9;
/// RST_CNT bits: SYS_RST (a full, not a CPU-only, reset) and RST_CPU (its 0-to-1 edge starts the reset).
const SYSTEM_RESET: u8 = 0x02;
const RESET_CPU: u8 = 0x04;

/// Resets the machine, for a panic or a fatal exception (docs/ARCHITECTURE.md §2): a hypervisor restarts the
/// VM with fresh keys, and QEMU under `-no-reboot` exits instead, which the runner reports. First the chipset's
/// reset register; if that has no effect (a platform without one), a triple fault: an empty IDT, then an
/// exception that cannot be delivered, which no CPU survives (Intel SDM Vol. 3A §6.15, "Double Fault Exception",
/// "a triple fault ... causes the processor to enter shutdown", and the platform resets on shutdown).
pub fn reset() -> ! {
    // SAFETY: port 0xCF9 is the reset register nothing else in the kernel drives; the write starts a reset and
    // touches no memory.
    unsafe {
        asm!("out dx, al", in("dx") RESET_CONTROL, in("al") SYSTEM_RESET, options(nomem, nostack));
        asm!("out dx, al", in("dx") RESET_CONTROL, in("al") SYSTEM_RESET | RESET_CPU, options(nomem, nostack));
    }
    // Give the chipset time to act before falling back (a few microseconds at most on real hardware).
    for _ in 0..1_000_000 {
        core::hint::spin_loop();
    }
    let empty = [0u16; 5];
    // SAFETY: loads an IDT of limit 0 from a local (LIDT reads 10 bytes, the local has 10), then raises #UD;
    // with no gate the CPU shuts down and the machine resets: nothing after this runs.
    unsafe {
        asm!("cli", "lidt [{table}]", "ud2", table = in(reg) empty.as_ptr(), options(noreturn, nostack));
    }
}
