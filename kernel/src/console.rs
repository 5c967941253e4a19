//! The debug console on COM1 (16550 UART at 0x3F8), compiled only with the `debug-console`
//! feature. A release image has no console driver and no log strings: the [`debug!`] macro
//! expands to nothing there, so its format strings never reach the binary.

#[cfg(feature = "debug-console")]
mod uart {
    use core::fmt::{self, Write};

    use crate::arch::cpu;

    const COM1: u16 = 0x3F8;

    /// Writes bytes to COM1, polling the line status register (16550 data sheet, LSR bit 5).
    pub struct Serial;

    impl Write for Serial {
        fn write_str(&mut self, text: &str) -> fmt::Result {
            for byte in text.bytes() {
                if byte == b'\n' {
                    send(b'\r');
                }
                send(byte);
            }
            Ok(())
        }
    }

    fn send(byte: u8) {
        let mut spins = 0u32;
        // SAFETY: COM1's line status register; only this console drives COM1, and reading the
        // status clears nothing the console relies on.
        while unsafe { cpu::inb(COM1 + 5) } & 0x20 == 0 && spins < 100_000 {
            spins += 1;
        }
        // SAFETY: COM1's transmit register; only this console drives COM1.
        unsafe { cpu::outb(COM1, byte) };
    }

    /// Sets 115200 8N1, FIFOs on.
    pub fn init() {
        // SAFETY: COM1's configuration registers; only this console drives COM1, and the UART
        // does no DMA.
        unsafe {
            cpu::outb(COM1 + 1, 0x00); // no interrupts
            cpu::outb(COM1 + 3, 0x80); // DLAB
            cpu::outb(COM1, 0x01); // divisor 1: 115200 baud
            cpu::outb(COM1 + 1, 0x00);
            cpu::outb(COM1 + 3, 0x03); // 8N1
            cpu::outb(COM1 + 2, 0xC7); // FIFO on, cleared
        }
    }

    pub fn print(args: fmt::Arguments) {
        let _ = Serial.write_fmt(args);
        let _ = Serial.write_str("\n");
    }
}

#[cfg(feature = "debug-console")]
pub use uart::{init, print};

/// Prints the panic message and location.
#[cfg(feature = "debug-console")]
pub fn print_panic(info: &core::panic::PanicInfo) {
    print(format_args!("kernel panic: {info}"));
}

/// Prints a line on the debug console; compiles to nothing without `debug-console`.
#[cfg(feature = "debug-console")]
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Without `debug-console` the arguments are still type-checked, inside a branch that is never
/// taken, so the release image holds neither the format strings nor any printing code.
#[cfg(not(feature = "debug-console"))]
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {{
        if false {
            let _ = format_args!($($arg)*);
        }
    }};
}
