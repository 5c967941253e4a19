//! What the precompiled `core`/`alloc` expect from a freestanding binary (docs/ARCHITECTURE.md §2): the C memory
//! functions (shared with the EFI entry stub, `rt_mem.rs`), an (unused) unwinding personality, and the panic
//! handler, which resets the machine.

#[path = "rt_mem.rs"]
mod mem;

/// Never called: everything is built with `panic = "abort"`, but precompiled `core` names it.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}

/// Never called, for the same reason as [`rust_eh_personality`].
#[unsafe(no_mangle)]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::arch::cpu::reset()
}

/// A panic resets the machine (docs/ARCHITECTURE.md §2): the appliance fails closed and, on a cloud VM, comes
/// back with fresh keys. Only the debug console prints the message; a release image never reads `info`, so no
/// message or location is formatted.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    #[cfg(feature = "debug-console")]
    crate::console::print_panic(info);
    #[cfg(not(feature = "debug-console"))]
    let _ = info;
    crate::arch::cpu::reset()
}
