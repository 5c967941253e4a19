//! What the precompiled `core` expects from a freestanding binary: the C memory functions (the kernel's own,
//! `kernel/src/rt_mem.rs`) and the panic handler, which resets the machine as the kernel's does (issue 12
//! item 8; docs/ARCHITECTURE.md §2).

// The kernel's memory functions, one copy for both binaries.
#[path = "../../src/rt_mem.rs"]
mod mem;

#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[unsafe(no_mangle)]
extern "C" fn _Unwind_Resume() -> ! {
    crate::halt()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    crate::reset::reset()
}
