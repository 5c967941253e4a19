//! What the precompiled `core` expects from a freestanding binary: the C memory functions and the
//! panic handler (the same needs as the kernel's, docs/ARCHITECTURE.md, "Build").

use core::arch::asm;

/// # Safety
/// `dest` and `src` must be valid for `len` bytes and must not overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges are valid and disjoint; DF is clear.
    unsafe {
        asm!("rep movsb", inout("rcx") len => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `dest` and `src` must be valid for `len` bytes; they may overlap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(len) {
        // SAFETY: copying forwards is correct when dest is below src or the ranges are disjoint.
        unsafe { memcpy(dest, src, len) };
    } else {
        // SAFETY: dest overlaps the tail of src: copy backwards, DF cleared again afterwards.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") len => _,
                 inout("rdi") dest.add(len - 1) => _,
                 inout("rsi") src.add(len - 1) => _,
                 options(nostack));
        }
    }
    dest
}

/// # Safety
/// `dest` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range is valid; DF is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") len => _, inout("rdi") dest => _, in("al") value as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `a` and `b` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    for index in 0..len {
        // SAFETY: index < len and the caller guarantees both ranges are readable.
        let (x, y) = unsafe { (*a.add(index), *b.add(index)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// `a` and `b` must be valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    // SAFETY: forwarded with the same contract.
    unsafe { memcmp(a, b, len) }
}

#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}

#[unsafe(no_mangle)]
extern "C" fn _Unwind_Resume() -> ! {
    crate::halt()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    crate::halt()
}
